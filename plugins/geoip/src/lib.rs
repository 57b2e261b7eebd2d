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

use sluice_sdk::host::geoip::{self, Location};
use sluice_sdk::{
    Config, Event, Manifest, Map, Outcome, Plugin, PluginError, Transform, Value, json,
};

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

/// The GeoIP plugin.
#[derive(Debug)]
pub struct GeoIp;

impl Plugin for GeoIp {
    fn manifest() -> Manifest {
        Manifest::new(
            "geoip",
            env!("CARGO_PKG_VERSION"),
            "Adds $geoip_* properties and person properties from the client's IP address",
        )
        .needs(&["geoip"])
        .stateless()
    }

    fn setup(_config: &Config) -> Result<Self, PluginError> {
        Ok(Self)
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
    let property = event.property("$ip").filter(|v| truthy(Some(v)));
    match property {
        Some(Value::String(ip)) => Some(ip.clone()),
        Some(other) => Some(other.to_string()),
        None => event.ip().filter(|ip| !ip.is_empty()).map(str::to_owned),
    }
}

/// The location as `(key, value)` pairs, without the fields the database left empty.
pub fn fields(location: &Location) -> Vec<(String, Value)> {
    let mut fields: Vec<(String, Value)> = [
        ("city_name", location.city_name.clone().map(Value::from)),
        (
            "country_name",
            location.country_name.clone().map(Value::from),
        ),
        (
            "country_code",
            location.country_code.clone().map(Value::from),
        ),
        (
            "continent_name",
            location.continent_name.clone().map(Value::from),
        ),
        (
            "continent_code",
            location.continent_code.clone().map(Value::from),
        ),
        ("postal_code", location.postal_code.clone().map(Value::from)),
        ("latitude", location.latitude.map(Value::from)),
        ("longitude", location.longitude.map(Value::from)),
        ("accuracy_radius", location.accuracy_radius.map(Value::from)),
        ("time_zone", location.time_zone.clone().map(Value::from)),
    ]
    .into_iter()
    .filter_map(|(key, value)| Some((key.to_owned(), value?)))
    .collect();
    for (i, subdivision) in location.subdivisions.iter().enumerate() {
        let n = i + 1;
        if let Some(code) = &subdivision.code {
            fields.push((format!("subdivision_{n}_code"), json!(code)));
        }
        if let Some(name) = &subdivision.name {
            fields.push((format!("subdivision_{n}_name"), json!(name)));
        }
    }
    fields
}

/// The object under `properties[key]`, made one if absent or not an object.
fn object<'m>(properties: &'m mut Map<String, Value>, key: &str) -> &'m mut Map<String, Value> {
    let slot = properties
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(map) => map,
        _ => unreachable!("just made an object"),
    }
}

impl Transform for GeoIp {
    fn transform(&mut self, event: &Event<'_>) -> Outcome {
        if truthy(event.property("$geoip_disable")) {
            return Outcome::Keep;
        }
        let Some(ip) = address(event) else {
            return Outcome::Keep;
        };
        let location = match geoip::locate(&ip) {
            Ok(Some(location)) => location,
            Ok(None) => return Outcome::Keep,
            Err(error) => return Outcome::Error(error.into()),
        };
        let mut buf = match event.to_buf() {
            Ok(buf) => buf,
            Err(error) => return Outcome::Error(error),
        };
        let fields = fields(&location);
        let top_set = buf.set.take().unwrap_or_default();
        let top_set_once = buf.set_once.take().unwrap_or_default();
        for (key, value) in &fields {
            buf.properties
                .insert(format!("$geoip_{key}"), value.clone());
        }
        let set = object(&mut buf.properties, "$set");
        let stale = STANDARD_KEYS
            .iter()
            .filter(|key| !fields.iter().any(|(k, _)| k == *key))
            .map(|key| ((*key).to_owned(), Value::Null));
        for (key, value) in fields.iter().cloned().chain(stale) {
            let key = format!("$geoip_{key}");
            if !set.contains_key(&key) && !top_set.contains_key(&key) {
                set.insert(key, value);
            }
        }
        let set_once = object(&mut buf.properties, "$set_once");
        for (key, value) in fields {
            let key = format!("$initial_geoip_{key}");
            if !set_once.contains_key(&key) && !top_set_once.contains_key(&key) {
                set_once.insert(key, value);
            }
        }
        buf.set = (!top_set.is_empty()).then_some(top_set);
        buf.set_once = (!top_set_once.is_empty()).then_some(top_set_once);
        Outcome::Replace(buf)
    }
}

sluice_sdk::export_transform!(GeoIp);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::host::geoip::Subdivision;
    use sluice_sdk::testing::{Harness, TestEvent};

    fn linkoping() -> Location {
        Location {
            city_name: Some("Linköping".into()),
            country_name: Some("Sweden".into()),
            country_code: Some("SE".into()),
            continent_name: Some("Europe".into()),
            continent_code: Some("EU".into()),
            postal_code: None,
            latitude: Some(58.4167),
            longitude: Some(15.6167),
            accuracy_radius: Some(76),
            time_zone: Some("Europe/Stockholm".into()),
            subdivisions: vec![Subdivision {
                code: Some("E".into()),
                name: Some("Östergötland County".into()),
            }],
        }
    }

    fn harness() -> Harness<GeoIp> {
        Harness::<GeoIp>::new(json!({}))
            .unwrap()
            .with_geoip(|ip| (ip == "89.160.20.112").then(linkoping))
    }

    fn replaced(outcome: Outcome) -> sluice_sdk::EventBuf {
        match outcome {
            Outcome::Replace(buf) => buf,
            other => panic!("expected a replacement, got {other:?}"),
        }
    }

    #[test]
    fn writes_properties_set_and_set_once() {
        let buf = replaced(harness().transform(TestEvent::new("$pageview").ip("89.160.20.112")));
        let p = &buf.properties;
        assert_eq!(p["$geoip_city_name"], "Linköping");
        assert_eq!(p["$geoip_country_code"], "SE");
        assert_eq!(p["$geoip_continent_code"], "EU");
        assert_eq!(p["$geoip_latitude"], 58.4167);
        assert_eq!(p["$geoip_accuracy_radius"], 76);
        assert_eq!(p["$geoip_time_zone"], "Europe/Stockholm");
        assert_eq!(p["$geoip_subdivision_1_code"], "E");
        assert_eq!(p["$geoip_subdivision_1_name"], "Östergötland County");
        assert!(
            !p.contains_key("$geoip_postal_code"),
            "absent fields are not written"
        );
        assert_eq!(p["$set"]["$geoip_city_name"], "Linköping");
        assert_eq!(p["$set_once"]["$initial_geoip_city_name"], "Linköping");
        assert_eq!(
            p["$set_once"]["$initial_geoip_subdivision_1_name"],
            "Östergötland County"
        );
    }

    #[test]
    fn stale_keys_are_nulled_in_set_only() {
        let buf = replaced(harness().transform(TestEvent::new("e").ip("89.160.20.112")));
        let p = &buf.properties;
        assert_eq!(p["$set"]["$geoip_subdivision_2_name"], Value::Null);
        assert_eq!(p["$set"]["$geoip_postal_code"], Value::Null);
        let set_once = p["$set_once"].as_object().unwrap();
        assert!(set_once.values().all(|v| !v.is_null()), "{set_once:?}");
        assert!(p.values().all(|v| !v.is_null()));
    }

    #[test]
    fn the_ip_property_wins_over_the_event_ip() {
        let event = TestEvent::new("e")
            .ip("10.0.0.1")
            .property("$ip", "89.160.20.112");
        let buf = replaced(harness().transform(event));
        assert_eq!(buf.properties["$geoip_country_name"], "Sweden");
        let fallback = TestEvent::new("e").ip("89.160.20.112").property("$ip", "");
        assert!(matches!(harness().transform(fallback), Outcome::Replace(_)));
    }

    #[test]
    fn skips_without_address_when_disabled_and_when_unknown() {
        let mut h = harness();
        assert_eq!(h.transform(TestEvent::new("e")), Outcome::Keep);
        let disabled = TestEvent::new("e")
            .ip("89.160.20.112")
            .property("$geoip_disable", true);
        assert_eq!(h.transform(disabled), Outcome::Keep);
        let not_disabled = TestEvent::new("e")
            .ip("89.160.20.112")
            .property("$geoip_disable", 0);
        assert!(matches!(h.transform(not_disabled), Outcome::Replace(_)));
        assert_eq!(
            h.transform(TestEvent::new("e").ip("192.168.1.1")),
            Outcome::Keep
        );
    }

    #[test]
    fn person_properties_the_producer_set_win() {
        let mut event = TestEvent::new("e")
            .ip("89.160.20.112")
            .property("$set", json!({"$geoip_city_name": "Mine"}))
            .into_buf();
        event.set_once = Some(
            json!({"$initial_geoip_country_code": "XX"})
                .as_object()
                .cloned()
                .unwrap(),
        );
        let buf = replaced(harness().transform(TestEvent::from(event)));
        assert_eq!(buf.properties["$set"]["$geoip_city_name"], "Mine");
        assert_eq!(buf.properties["$geoip_city_name"], "Linköping");
        assert!(
            !buf.properties["$set_once"]
                .as_object()
                .unwrap()
                .contains_key("$initial_geoip_country_code")
        );
        assert_eq!(buf.set_once.unwrap()["$initial_geoip_country_code"], "XX");
    }

    #[test]
    fn an_unavailable_database_is_a_retryable_error() {
        // No lookup registered: the harness answers `unavailable`, as a host without a database.
        let mut h = Harness::<GeoIp>::new(json!({})).unwrap();
        match h.transform(TestEvent::new("e").ip("89.160.20.112")) {
            Outcome::Error(error) => assert!(error.retryable, "{error:?}"),
            other => panic!("expected an error, got {other:?}"),
        }
    }
}
