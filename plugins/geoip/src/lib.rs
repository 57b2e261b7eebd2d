//! GeoIP enrichment with the observable behaviour of PostHog's GeoIP plugin.
//!
//! - The address is `properties.$ip` if truthy, else the event's IP. Events without one, or with
//!   a truthy `$geoip_disable`, are kept unchanged, as are addresses the database does not know
//!   (the host answers none for private and reserved ones).
//! - Every known field of the location is written as `properties.$geoip_<key>`, into
//!   `properties.$set` as `$geoip_<key>` and into `properties.$set_once` as
//!   `$initial_geoip_<key>`. Keys are `city_name`, `country_name`, `country_code`,
//!   `continent_name`, `continent_code`, `postal_code`, `latitude`, `longitude`,
//!   `accuracy_radius`, `time_zone` and `subdivision_<n>_code` / `subdivision_<n>_name`.
//! - A person property the producer set itself wins: a key already present in
//!   `properties.$set` / `$set_once` or in the event's top-level `$set` / `$set_once` (clients
//!   differ on where they put them) is left alone.
//! - Stale values: like PostHog, `$set` also receives `null` for each of PostHog's standard keys
//!   this lookup did not produce (e.g. `$geoip_subdivision_2_name` after a move to a city with one
//!   subdivision level), so a person's old values do not linger. Unlike PostHog, `$set_once` and
//!   the event's own properties get no nulls: a set-once `null` would pin `$initial_geoip_*` to
//!   null forever, and null properties are noise.
//! - The database is the host's (`geoip` capability), shared by every team; the plugin keeps no
//!   state and declares itself stateless, so one instance pool serves all installations.
//! - It returns edits ([`sluice_sdk::Edit`]), not the event: the host applies them natively, and
//!   "the producer's value wins" is the host's `set_if_absent`, so the plugin never reads `$set`.
//!   The edits depend only on the location, so they are kept for the next `cache_size` (1,000)
//!   addresses, as MaxMind's own readers keep decoded answers, until the host loads a new
//!   version of the database.

use sluice_sdk::host::HostError;
use sluice_sdk::host::geoip::{self, Location};
use sluice_sdk::{
    Config, ConfigField, ConfigType, Edit, Event, Manifest, Outcome, Plugin, PluginError,
    Serialize, Transform, Value,
};
use std::borrow::Cow;
use std::collections::HashMap;

/// PostHog's standard keys, seeded as `null` in `$set` when a lookup does not produce them.
pub const STANDARD_KEYS: [&str; 14] = [
    "city_name",
    "subdivision_2_name",
    "subdivision_2_code",
    "subdivision_1_name",
    "subdivision_1_code",
    "country_name",
    "country_code",
    "continent_name",
    "continent_code",
    "postal_code",
    "latitude",
    "longitude",
    "accuracy_radius",
    "time_zone",
];

/// Most addresses whose edits an instance keeps.
pub const MAX_CACHE_SIZE: i64 = 100_000;

/// The GeoIP plugin.
#[derive(Debug)]
pub struct GeoIp {
    /// Addresses whose edits are kept (0: none).
    capacity: usize,
    /// The database version the kept edits were made from.
    version: Option<u64>,
    /// The edits of recently seen addresses (`None`: the database does not know it).
    known: HashMap<String, Option<Edit>>,
}

impl Plugin for GeoIp {
    fn manifest() -> Manifest {
        Manifest::new(
            "geoip",
            env!("CARGO_PKG_VERSION"),
            "Adds $geoip_* properties and person properties from the client's IP address",
        )
        .needs(&["geoip"])
        .stateless()
        .config(vec![
            ConfigField::new(
                "cache_size",
                ConfigType::Integer,
                "Addresses whose edits are kept for the next event from them (0: none)",
            )
            .with_default(1_000),
        ])
    }

    fn setup(config: &Config) -> Result<Self, PluginError> {
        let size = config.integer("cache_size")?;
        if !(0..=MAX_CACHE_SIZE).contains(&size) {
            return Err(PluginError::new(format!(
                "cache_size must be between 0 and {MAX_CACHE_SIZE}, got {size}"
            )));
        }
        Ok(Self {
            capacity: size as usize,
            version: None,
            known: HashMap::new(),
        })
    }
}

impl GeoIp {
    /// The edits for the location of `ip`, `None` if the database does not know it: kept from
    /// an earlier event if the same version of the database answered.
    fn edits_for(&mut self, ip: &str) -> Result<Option<Edit>, HostError> {
        let located = |ip| {
            Ok(geoip::locate(ip)?.map(|location| {
                let mut edit = Edit::with_capacity(1024);
                edits(&mut edit, &location);
                edit
            }))
        };
        if self.capacity == 0 {
            return located(ip);
        }
        let version = geoip::version()?;
        if self.version != Some(version) {
            self.known.clear();
            self.version = Some(version);
        }
        if let Some(known) = self.known.get(ip) {
            return Ok(known.clone());
        }
        let edit = located(ip)?;
        if self.known.len() >= self.capacity {
            self.known.clear();
        }
        self.known.insert(ip.to_owned(), edit.clone());
        Ok(edit)
    }
}

/// JavaScript truthiness, as PostHog's plugin tests its inputs.
fn truthy(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

/// The address to locate: a truthy `properties.$ip` (as text), else the event's IP.
fn address(event: &Event<'_>) -> Option<String> {
    match event.property("$ip").filter(|v| truthy(Some(v))) {
        Some(Value::String(ip)) => Some(ip),
        Some(other) => Some(other.to_string()),
        None => event.ip().filter(|ip| !ip.is_empty()).map(str::to_owned),
    }
}

/// A field of the location.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Field<'a> {
    /// Text.
    Text(&'a str),
    /// A number.
    Number(f64),
    /// A whole number.
    Integer(u16),
}

/// The names a field is written under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// `<key>`, e.g. `city_name`.
    pub key: Cow<'static, str>,
    /// `$geoip_<key>`: the property, and the person property in `$set`.
    pub property: Cow<'static, str>,
    /// `$initial_geoip_<key>`: the person property in `$set_once`.
    pub initial: Cow<'static, str>,
}

/// The names of the fields in the order [`fields`] reads them (the first 14 are PostHog's
/// standard keys), written out so that no event pays for formatting them.
const NAMES: [[&str; 3]; 16] = [
    ["city_name", "$geoip_city_name", "$initial_geoip_city_name"],
    [
        "country_name",
        "$geoip_country_name",
        "$initial_geoip_country_name",
    ],
    [
        "country_code",
        "$geoip_country_code",
        "$initial_geoip_country_code",
    ],
    [
        "continent_name",
        "$geoip_continent_name",
        "$initial_geoip_continent_name",
    ],
    [
        "continent_code",
        "$geoip_continent_code",
        "$initial_geoip_continent_code",
    ],
    [
        "postal_code",
        "$geoip_postal_code",
        "$initial_geoip_postal_code",
    ],
    ["latitude", "$geoip_latitude", "$initial_geoip_latitude"],
    ["longitude", "$geoip_longitude", "$initial_geoip_longitude"],
    [
        "accuracy_radius",
        "$geoip_accuracy_radius",
        "$initial_geoip_accuracy_radius",
    ],
    ["time_zone", "$geoip_time_zone", "$initial_geoip_time_zone"],
    [
        "subdivision_1_code",
        "$geoip_subdivision_1_code",
        "$initial_geoip_subdivision_1_code",
    ],
    [
        "subdivision_1_name",
        "$geoip_subdivision_1_name",
        "$initial_geoip_subdivision_1_name",
    ],
    [
        "subdivision_2_code",
        "$geoip_subdivision_2_code",
        "$initial_geoip_subdivision_2_code",
    ],
    [
        "subdivision_2_name",
        "$geoip_subdivision_2_name",
        "$initial_geoip_subdivision_2_name",
    ],
    [
        "subdivision_3_code",
        "$geoip_subdivision_3_code",
        "$initial_geoip_subdivision_3_code",
    ],
    [
        "subdivision_3_name",
        "$geoip_subdivision_3_name",
        "$initial_geoip_subdivision_3_name",
    ],
];

/// The names of entry `at` of [`NAMES`].
fn named(at: usize) -> Names {
    let [key, property, initial] = NAMES[at];
    Names {
        key: Cow::Borrowed(key),
        property: Cow::Borrowed(property),
        initial: Cow::Borrowed(initial),
    }
}

/// The names of subdivision `n` (from 1), `code` or `name`.
fn subdivision(n: usize, what: &str) -> Names {
    let at = 10 + 2 * (n - 1) + usize::from(what == "name");
    match NAMES.get(at) {
        Some(_) if n <= 3 => named(at),
        _ => {
            let key = format!("subdivision_{n}_{what}");
            Names {
                property: Cow::Owned(format!("$geoip_{key}")),
                initial: Cow::Owned(format!("$initial_geoip_{key}")),
                key: Cow::Owned(key),
            }
        }
    }
}

/// The location's fields with their names, without the fields the database left empty.
pub fn fields(location: &Location) -> Vec<(Names, Field<'_>)> {
    fn text(value: &Option<String>) -> Option<Field<'_>> {
        value.as_deref().map(Field::Text)
    }
    let mut fields: Vec<_> = [
        text(&location.city_name),
        text(&location.country_name),
        text(&location.country_code),
        text(&location.continent_name),
        text(&location.continent_code),
        text(&location.postal_code),
        location.latitude.map(Field::Number),
        location.longitude.map(Field::Number),
        location.accuracy_radius.map(Field::Integer),
        text(&location.time_zone),
    ]
    .into_iter()
    .enumerate()
    .filter_map(|(at, field)| Some((named(at), field?)))
    .collect();
    for (i, division) in location.subdivisions.iter().enumerate() {
        if let Some(code) = &division.code {
            fields.push((subdivision(i + 1, "code"), Field::Text(code)));
        }
        if let Some(name) = &division.name {
            fields.push((subdivision(i + 1, "name"), Field::Text(name)));
        }
    }
    fields
}

/// Writes `value` under `names`: as a property, and as person properties unless the producer
/// set them.
fn write(edit: &mut Edit, names: &Names, value: impl Serialize + Copy) {
    edit.set(&names.property, value)
        .set_person_if_absent(&names.property, value)
        .set_person_once_if_absent(&names.initial, value);
}

/// The edits for `location`: every field as a property, in `$set` and in `$set_once` (unless
/// the producer set it), and `null` in `$set` for the standard keys it lacks.
pub fn edits(edit: &mut Edit, location: &Location) {
    let fields = fields(location);
    for (names, value) in &fields {
        match *value {
            Field::Text(text) => write(edit, names, text),
            Field::Number(number) => write(edit, names, number),
            Field::Integer(number) => write(edit, names, number),
        }
    }
    for [key, property, _] in &NAMES[..STANDARD_KEYS.len()] {
        if !fields.iter().any(|(names, _)| names.key == *key) {
            edit.set_person_if_absent(property, ());
        }
    }
}

impl Transform for GeoIp {
    fn transform(&mut self, event: &Event<'_>) -> Outcome {
        if truthy(event.property("$geoip_disable").as_ref()) {
            return Outcome::Keep;
        }
        let Some(ip) = address(event) else {
            return Outcome::Keep;
        };
        match self.edits_for(&ip) {
            Ok(Some(edit)) => Outcome::Edit(edit),
            Ok(None) => Outcome::Keep,
            Err(error) => Outcome::Error(error.into()),
        }
    }
}

sluice_sdk::export_transform!(GeoIp);

#[cfg(test)]
mod tests;
