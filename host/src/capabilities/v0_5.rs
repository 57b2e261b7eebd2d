//! The capabilities of the 0.5.0 contract, for components built before 1.0: each host function
//! calls the current one and converts between the two contracts' types, which are the same
//! shapes generated twice. Only `recordings` behaves differently, because 0.5.0 pages by storage
//! position and deletes without naming a cursor:
//!
//! - `read-session` takes and returns positions (the SQLite sequence, which the 1.0 cursor
//!   wraps);
//! - `delete-session` deletes what the instance listed or read of the session, and nothing
//!   stored after that (0.5.0 promised "every stored event of the session", which deleted events
//!   that arrived while the plugin archived the session; this is the safe part of that promise).

use super::http::HttpState;
use super::log::LogState;
use super::metrics::MetricsState;
use super::recordings::RecordingsState;
use super::{HasCapabilities, HasView, View, to_wit};
use crate::bindings::sluice::plugin as current;
use crate::bindings::v0_5::sluice::plugin as legacy;
use crate::bindings::{types, v0_5};
use wasmtime::component::Linker;

/// Adds the 0.5.0 interfaces of every capability to `linker`.
pub(super) fn add_to_linker<T: HasCapabilities>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    legacy::log::add_to_linker::<T, HasView<&'static mut LogState>>(linker, |data| {
        data.capabilities().log_view()
    })?;
    legacy::metrics::add_to_linker::<T, HasView<&'static mut MetricsState>>(linker, |data| {
        data.capabilities().metrics_view()
    })?;
    legacy::storage::add_to_linker::<T, HasView<()>>(linker, |data| data.capabilities().serving())?;
    legacy::cache::add_to_linker::<T, HasView<()>>(linker, |data| data.capabilities().serving())?;
    legacy::geoip::add_to_linker::<T, HasView<()>>(linker, |data| data.capabilities().serving())?;
    legacy::http::add_to_linker::<T, HasView<&'static mut HttpState>>(linker, |data| {
        data.capabilities().http_view()
    })?;
    legacy::object_store::add_to_linker::<T, HasView<()>>(linker, |data| {
        data.capabilities().serving()
    })?;
    legacy::job_queue::add_to_linker::<T, HasView<()>>(linker, |data| {
        data.capabilities().serving()
    })?;
    legacy::recordings::add_to_linker::<T, HasView<&'static mut RecordingsState>>(linker, |data| {
        data.capabilities().recordings_view()
    })
}

/// The 0.5.0 form of a capability error.
type LegacyError = v0_5::types::HostError;

impl From<types::HostError> for LegacyError {
    fn from(error: types::HostError) -> Self {
        use types::HostErrorKind as Kind;
        use v0_5::types::HostErrorKind as Legacy;
        LegacyError {
            kind: match error.kind {
                Kind::Invalid => Legacy::Invalid,
                Kind::TooLarge => Legacy::TooLarge,
                Kind::Refused => Legacy::Refused,
                Kind::Unavailable => Legacy::Unavailable,
                Kind::Timeout => Legacy::Timeout,
            },
            message: error.message,
        }
    }
}

/// Implements the 0.5.0 `Host` trait of `$interface` for `$view` by calling the current one:
/// arguments and results converted with `Into`, which is the identity for every type the two
/// contracts share.
macro_rules! delegate {
    ($interface:ident for $view:ty { $(fn $name:ident($($arg:ident: $ty:ty),*) -> $ok:ty;)* }) => {
        impl legacy::$interface::Host for $view {
            $(fn $name(&mut self, $($arg: $ty),*) -> Result<$ok, LegacyError> {
                <Self as current::$interface::Host>::$name(self, $($arg.into()),*)
                    .map(Into::into)
                    .map_err(Into::into)
            })*
        }
    };
}

impl legacy::log::Host for View<'_, &mut LogState> {
    fn log(&mut self, level: legacy::log::Level, message: String) {
        use current::log::Level as Current;
        use legacy::log::Level as Legacy;
        let level = match level {
            Legacy::Trace => Current::Trace,
            Legacy::Debug => Current::Debug,
            Legacy::Info => Current::Info,
            Legacy::Warn => Current::Warn,
            Legacy::Error => Current::Error,
        };
        current::log::Host::log(self, level, message);
    }
}

impl legacy::metrics::Host for View<'_, &mut MetricsState> {
    fn counter_add(&mut self, name: String, value: u64) {
        current::metrics::Host::counter_add(self, name, value);
    }

    fn histogram_record(&mut self, name: String, value: f64) {
        current::metrics::Host::histogram_record(self, name, value);
    }
}

delegate!(storage for View<'_, ()> {
    fn get(key: String) -> Option<Vec<u8>>;
    fn set(key: String, value: Vec<u8>) -> ();
    fn delete(key: String) -> bool;
    fn increment(key: String, by: i64) -> i64;
    fn list_keys(prefix: String, after: Option<String>, limit: u32) -> Vec<String>;
});

delegate!(cache for View<'_, ()> {
    fn get(key: String) -> Option<Vec<u8>>;
    fn set(key: String, value: Vec<u8>, ttl_seconds: Option<u32>) -> ();
    fn delete(key: String) -> bool;
    fn increment(key: String, by: i64) -> i64;
    fn expire(key: String, ttl_seconds: u32) -> bool;
    fn list_push(key: String, values: Vec<Vec<u8>>) -> u32;
    fn list_range(key: String, start: i64, stop: i64) -> Vec<Vec<u8>>;
    fn list_length(key: String) -> u32;
    fn list_remove(key: String, count: i64, value: Vec<u8>) -> u32;
    fn list_pop(key: String, count: u32) -> Vec<Vec<u8>>;
});

delegate!(job_queue for View<'_, ()> {
    fn enqueue(name: String, payload: String, delay_ms: u64) -> String;
    fn enqueue_at(name: String, payload: String, at: i64) -> String;
});

delegate!(http for View<'_, &mut HttpState> {
    fn fetch(request: legacy::http::Request) -> legacy::http::Response;
});

impl legacy::geoip::Host for View<'_, ()> {
    fn locate(&mut self, ip: String) -> Result<Option<legacy::geoip::Location>, LegacyError> {
        current::geoip::Host::locate(self, ip)
            .map(|found| found.map(Into::into))
            .map_err(Into::into)
    }

    fn version(&mut self) -> Result<u64, LegacyError> {
        current::geoip::Host::version(self).map_err(Into::into)
    }
}

impl From<current::geoip::Location> for legacy::geoip::Location {
    fn from(l: current::geoip::Location) -> Self {
        Self {
            city_name: l.city_name,
            country_name: l.country_name,
            country_code: l.country_code,
            continent_name: l.continent_name,
            continent_code: l.continent_code,
            postal_code: l.postal_code,
            latitude: l.latitude,
            longitude: l.longitude,
            accuracy_radius: l.accuracy_radius,
            time_zone: l.time_zone,
            subdivisions: l
                .subdivisions
                .into_iter()
                .map(|s| legacy::geoip::Subdivision {
                    code: s.code,
                    name: s.name,
                })
                .collect(),
        }
    }
}

impl From<legacy::http::Request> for current::http::Request {
    fn from(r: legacy::http::Request) -> Self {
        Self {
            method: r.method,
            url: r.url,
            headers: r.headers,
            body: r.body,
            timeout_ms: r.timeout_ms,
        }
    }
}

impl From<current::http::Response> for legacy::http::Response {
    fn from(r: current::http::Response) -> Self {
        Self {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }
    }
}

impl From<current::object_store::ObjectInfo> for legacy::object_store::ObjectInfo {
    fn from(o: current::object_store::ObjectInfo) -> Self {
        Self {
            key: o.key,
            size: o.size,
            last_modified: o.last_modified,
            e_tag: o.e_tag,
        }
    }
}

impl From<current::object_store::ObjectPage> for legacy::object_store::ObjectPage {
    fn from(p: current::object_store::ObjectPage) -> Self {
        Self {
            objects: p.objects.into_iter().map(Into::into).collect(),
            next: p.next,
        }
    }
}

impl legacy::object_store::Host for View<'_, ()> {
    fn put(&mut self, store: String, key: String, body: Vec<u8>) -> Result<(), LegacyError> {
        current::object_store::Host::put(self, store, key, body).map_err(Into::into)
    }

    fn get(&mut self, store: String, key: String) -> Result<Option<Vec<u8>>, LegacyError> {
        current::object_store::Host::get(self, store, key).map_err(Into::into)
    }

    fn delete(&mut self, store: String, key: String) -> Result<bool, LegacyError> {
        current::object_store::Host::delete(self, store, key).map_err(Into::into)
    }

    fn list(
        &mut self,
        store: String,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> Result<legacy::object_store::ObjectPage, LegacyError> {
        current::object_store::Host::list(self, store, prefix, after, limit)
            .map(Into::into)
            .map_err(Into::into)
    }

    fn head(
        &mut self,
        store: String,
        key: String,
    ) -> Result<Option<legacy::object_store::ObjectInfo>, LegacyError> {
        current::object_store::Host::head(self, store, key)
            .map(|found| found.map(Into::into))
            .map_err(Into::into)
    }
}

impl legacy::recordings::Host for View<'_, &mut RecordingsState> {
    fn list_sessions(
        &mut self,
        last_before: i64,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<legacy::recordings::Session>, LegacyError> {
        let (recordings, team) = self.recordings().map_err(to_wit)?;
        let listed = recordings
            .list_sessions(team, last_before, after.as_deref(), limit)
            .map_err(to_wit)?;
        Ok(listed
            .into_iter()
            .map(|(s, last)| {
                self.state.saw(team, &s.session_id, last);
                legacy::recordings::Session {
                    team_id: s.team_id,
                    session_id: s.session_id,
                    first_timestamp: s.first_timestamp,
                    last_timestamp: s.last_timestamp,
                    events: s.events,
                }
            })
            .collect())
    }

    fn read_session(
        &mut self,
        session_id: String,
        after: u64,
        limit: u32,
    ) -> Result<Vec<legacy::recordings::Snapshot>, LegacyError> {
        let (recordings, team) = self.recordings().map_err(to_wit)?;
        let page = recordings
            .read_session(team, &session_id, after, limit)
            .map_err(to_wit)?;
        if let Some((_, last)) = page.last() {
            self.state.saw(team, &session_id, *last);
        }
        Ok(page
            .into_iter()
            .map(|(s, position)| legacy::recordings::Snapshot {
                position,
                uuid: s.uuid,
                window_id: s.window_id,
                distinct_id: s.distinct_id,
                timestamp: s.timestamp,
                properties: s.properties,
            })
            .collect())
    }

    fn record_archive(
        &mut self,
        session_id: String,
        store: String,
        key: String,
        first_timestamp: i64,
        last_timestamp: i64,
        events: u64,
    ) -> Result<(), LegacyError> {
        let mut view = View {
            ctx: self.ctx,
            state: &mut *self.state,
            journal: self.journal,
        };
        current::recordings::Host::record_archive(
            &mut view,
            session_id,
            store,
            key,
            first_timestamp,
            last_timestamp,
            events,
        )
        .map_err(Into::into)
    }

    /// Deletes what this instance listed or read of the session, nothing stored after that.
    fn delete_session(&mut self, session_id: String) -> Result<u64, LegacyError> {
        let (recordings, team) = self.recordings().map_err(to_wit)?;
        let Some(through) = self.state.take(team, &session_id) else {
            return Ok(0);
        };
        self.check_fence().map_err(to_wit)?;
        recordings
            .delete_session(team, &session_id, through)
            .map_err(|e| to_wit(e).into())
    }
}
