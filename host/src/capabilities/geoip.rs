//! `geoip`: `locate(ip)` from the operator's MaxMind City database (`[geoip]`), read with the
//! `maxminddb` crate, loaded once and shared by every instance, and reloaded when the file
//! changes. The last [`CACHED_ADDRESSES`] answers are kept decoded (as MaxMind's own readers
//! do): most traffic comes from addresses seen moments ago.

use super::{Capability, HasCapabilities, HasView, StartError, View, to_wit};
use crate::bindings::sluice::plugin::geoip::{self, Host, Location, Subdivision};
use crate::bindings::types;
use crate::config::Collector;
use crate::net;
use maxminddb::{Reader, geoip2};
use serde::Deserialize;
use sluice_abi::limits::{ErrorKind, HostError};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};
use wasmtime::component::Linker;

/// The `geoip` capability.
pub const CAPABILITY: Capability = Capability {
    name: "geoip",
    interface: "sluice:plugin/geoip",
};

/// Addresses whose location is kept decoded.
pub const CACHED_ADDRESSES: usize = 10_000;

/// `[geoip]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// MaxMind City database (`GeoLite2-City.mmdb`, `GeoIP2-City.mmdb`); required to grant `geoip`.
    pub database: Option<PathBuf>,
    /// How often the file is checked for a new version, in seconds.
    pub check_interval_seconds: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database: None,
            check_interval_seconds: 60,
        }
    }
}

impl Settings {
    /// Reads `[geoip]` of `table`; a relative database path is against `base`.
    pub(super) fn load(c: &mut Collector, table: &toml::Table, base: &Path) -> Self {
        let mut settings: Self = c.section(table, "geoip");
        settings.database = settings.database.map(|path| base.join(path));
        if settings.check_interval_seconds == 0 {
            c.add("geoip.check_interval_seconds", "must be at least 1");
        }
        settings
    }

    /// Refuses a `geoip` grant at `key` when no database is configured.
    pub(super) fn check_grant(&self, c: &mut Collector, key: &str, granted: bool) {
        if granted && self.database.is_none() {
            c.add(
                format!("{key}.grants"),
                "`geoip` is granted but no `[geoip] database` is configured",
            );
        }
    }

    /// Opens the configured database and starts watching it for new versions.
    pub(super) fn open(&self) -> Result<Option<Arc<Database>>, StartError> {
        let Some(path) = &self.database else {
            return Ok(None);
        };
        let database = Database::open(path).map_err(|reason| StartError::Config {
            key: "geoip.database".into(),
            reason: format!("cannot use {}: {reason}", path.display()),
        })?;
        database
            .watch(Duration::from_secs(self.check_interval_seconds))
            .map_err(|source| StartError::Thread {
                what: "the GeoIP watcher",
                source,
            })?;
        Ok(Some(database))
    }
}

/// What identifies one version of the file: modification time and length.
type Stamp = (Option<SystemTime>, u64);

/// The shared City database.
pub struct Database {
    path: PathBuf,
    reader: RwLock<Arc<Reader<Vec<u8>>>>,
    stamp: Mutex<Stamp>,
    /// Which version of the file is loaded; cached answers of older versions are misses.
    version: AtomicU64,
    cache: quick_cache::sync::Cache<IpAddr, (u64, Option<Location>)>,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.modified().ok(), meta.len()))
}

fn read(path: &Path) -> Result<(Reader<Vec<u8>>, Stamp), String> {
    let before = stamp(path).map_err(|e| e.to_string())?;
    let reader = Reader::open_readfile(path).map_err(|e| e.to_string())?;
    if !reader.metadata().database_type.contains("City") {
        return Err(format!(
            "it is a `{}` database, not a City database",
            reader.metadata().database_type
        ));
    }
    Ok((reader, before))
}

impl Database {
    /// Opens the database at `path`; the error says why it cannot be used.
    pub fn open(path: &Path) -> Result<Arc<Self>, String> {
        let (reader, stamp) = read(path)?;
        Ok(Arc::new(Self {
            path: path.to_owned(),
            reader: RwLock::new(Arc::new(reader)),
            stamp: Mutex::new(stamp),
            version: AtomicU64::new(0),
            cache: quick_cache::sync::Cache::new(CACHED_ADDRESSES),
        }))
    }

    /// Reloads the file if it changed since it was read; a file that cannot be read keeps the
    /// previous version in use. Returns whether a new version was loaded.
    pub fn reload_if_changed(&self) -> bool {
        let Ok(current) = stamp(&self.path) else {
            return false;
        };
        let Ok(mut known) = self.stamp.lock() else {
            return false;
        };
        if *known == current {
            return false;
        }
        match read(&self.path) {
            Ok((reader, stamp)) => {
                if let Ok(mut slot) = self.reader.write() {
                    *slot = Arc::new(reader);
                    self.version.fetch_add(1, Ordering::SeqCst);
                    self.cache.clear();
                }
                *known = stamp;
                tracing::info!(path = %self.path.display(), "GeoIP database reloaded");
                metrics::counter!("sluice_geoip_reloads_total").increment(1);
                true
            }
            Err(error) => {
                *known = current;
                tracing::error!(path = %self.path.display(), %error, "GeoIP database changed but cannot be read; keeping the previous version");
                false
            }
        }
    }

    /// Checks the file every `interval` on a thread that ends when the database is dropped.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> std::io::Result<JoinHandle<()>> {
        let database: Weak<Self> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("sluice-geoip-watch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    match database.upgrade() {
                        Some(database) => database.reload_if_changed(),
                        None => break,
                    };
                }
            })
    }

    /// Which version of the file is loaded (0 for the first, then one more per reload).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    /// Locates `ip`; private, reserved, unparseable and unknown addresses give `None`.
    pub fn locate(&self, ip: &str) -> Result<Option<Location>, HostError> {
        let Ok(ip) = ip.trim().parse::<IpAddr>() else {
            return Ok(None);
        };
        if !net::is_public(ip) {
            return Ok(None);
        }
        let (reader, version) = {
            let reader = self.reader.read().map_err(|_| {
                HostError::new(ErrorKind::Unavailable, "GeoIP database lock poisoned")
            })?;
            (reader.clone(), self.version.load(Ordering::SeqCst))
        };
        if let Some((cached, location)) = self.cache.get(&ip)
            && cached == version
        {
            return Ok(location);
        }
        let found = reader
            .lookup(ip)
            .and_then(|result| result.decode::<geoip2::City>())
            .map_err(|e| {
                HostError::new(ErrorKind::Unavailable, format!("GeoIP lookup failed: {e}"))
            })?;
        let location = found.map(|city| to_location(&city));
        self.cache.insert(ip, (version, location.clone()));
        Ok(location)
    }
}

fn owned(text: Option<&str>) -> Option<String> {
    text.map(str::to_owned)
}

fn to_location(city: &geoip2::City<'_>) -> Location {
    Location {
        city_name: owned(city.city.names.english),
        country_name: owned(city.country.names.english),
        country_code: owned(city.country.iso_code),
        continent_name: owned(city.continent.names.english),
        continent_code: owned(city.continent.code),
        postal_code: owned(city.postal.code),
        latitude: city.location.latitude,
        longitude: city.location.longitude,
        accuracy_radius: city.location.accuracy_radius,
        time_zone: owned(city.location.time_zone),
        subdivisions: city
            .subdivisions
            .iter()
            .map(|s| Subdivision {
                code: owned(s.iso_code),
                name: owned(s.names.english),
            })
            .collect(),
    }
}

impl View<'_, ()> {
    fn database(&self) -> Result<&Database, types::HostError> {
        self.ctx.check(&CAPABILITY).map_err(to_wit)?;
        self.ctx.services.geoip.as_deref().ok_or_else(|| {
            to_wit(HostError::new(
                ErrorKind::Unavailable,
                "no GeoIP database is configured",
            ))
        })
    }
}

impl Host for View<'_, ()> {
    fn locate(&mut self, ip: String) -> Result<Option<Location>, types::HostError> {
        self.journaled("geoip.locate", &ip, || {
            self.ctx.check(&CAPABILITY).map_err(to_wit)?;
            if let Some(faked) = self
                .ctx
                .services
                .sandbox
                .as_ref()
                .and_then(|s| s.locate(&ip))
            {
                return Ok(faked);
            }
            self.database()?.locate(&ip).map_err(to_wit)
        })
    }

    fn version(&mut self) -> Result<u64, types::HostError> {
        self.journaled("geoip.version", (), || Ok(self.database()?.version()))
    }
}

/// Adds `geoip` to `linker`.
pub(super) fn add_to_linker<T: HasCapabilities>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    geoip::add_to_linker::<T, HasView<()>>(linker, |data| data.capabilities().serving())
}
