//! The plugin natively, and its output against what it returned before it used edits.

use super::*;
use sluice_sdk::host::geoip::Subdivision;
use sluice_sdk::testing::{Harness, TestEvent};
use sluice_sdk::{EventBuf, Map, json};

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

/// The event as the host stores it after the plugin.
fn stored(event: TestEvent) -> EventBuf {
    harness().stored(event).unwrap().expect("kept")
}

#[test]
fn writes_properties_set_and_set_once() {
    let buf = stored(TestEvent::new("$pageview").ip("89.160.20.112"));
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
    let buf = stored(TestEvent::new("e").ip("89.160.20.112"));
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
    let buf = stored(event);
    assert_eq!(buf.properties["$geoip_country_name"], "Sweden");
    let fallback = TestEvent::new("e").ip("89.160.20.112").property("$ip", "");
    assert!(matches!(harness().transform(fallback), Outcome::Edit(_)));
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
    assert!(matches!(h.transform(not_disabled), Outcome::Edit(_)));
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
    let buf = stored(TestEvent::from(event));
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

/// What the plugin stored before it returned edits: the whole event, rebuilt from `Map`s. Kept
/// here as the oracle that the edits must match.
fn reference(event: &EventBuf, location: &Location) -> EventBuf {
    fn object<'m>(properties: &'m mut Map<String, Value>, key: &str) -> &'m mut Map<String, Value> {
        let slot = properties
            .entry(key.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        slot.as_object_mut().unwrap()
    }
    let value = |field: &Field<'_>| match *field {
        Field::Text(text) => json!(text),
        Field::Number(number) => json!(number),
        Field::Integer(number) => json!(number),
    };
    let mut buf = event.clone();
    let fields = fields(location);
    let top_set = buf.set.clone().unwrap_or_default();
    let top_set_once = buf.set_once.clone().unwrap_or_default();
    for (names, field) in &fields {
        buf.properties
            .insert(names.property.to_string(), value(field));
    }
    let set = object(&mut buf.properties, "$set");
    let stale = STANDARD_KEYS
        .iter()
        .filter(|key| !fields.iter().any(|(names, _)| names.key == **key))
        .map(|key| (format!("$geoip_{key}"), Value::Null));
    let located = fields
        .iter()
        .map(|(names, field)| (names.property.to_string(), value(field)));
    for (key, value) in located.chain(stale) {
        if !set.contains_key(&key) && !top_set.contains_key(&key) {
            set.insert(key, value);
        }
    }
    let set_once = object(&mut buf.properties, "$set_once");
    for (names, field) in &fields {
        let key = names.initial.to_string();
        if !set_once.contains_key(&key) && !top_set_once.contains_key(&key) {
            set_once.insert(key, value(field));
        }
    }
    buf
}

#[test]
fn edits_store_exactly_what_the_whole_event_replacement_stored() {
    let sparse = Location {
        city_name: None,
        postal_code: Some("582 22".into()),
        subdivisions: vec![
            Subdivision {
                code: Some("E".into()),
                name: None,
            },
            Subdivision {
                code: Some("X".into()),
                name: Some("Two".into()),
            },
            Subdivision {
                code: None,
                name: Some("Three \"quoted\"".into()),
            },
            Subdivision {
                code: Some("4".into()),
                name: Some("Four".into()),
            },
        ],
        ..linkoping()
    };
    let events = [
        TestEvent::new("e")
            .ip("89.160.20.112")
            .property("plan", "pro")
            .into_buf(),
        TestEvent::new("e")
            .ip("89.160.20.112")
            .property(
                "$set",
                json!({"$geoip_city_name": "Mine", "email": "a@b.c"}),
            )
            .property("$set_once", json!("not an object"))
            .property("$geoip_city_name", "stale")
            .into_buf(),
        EventBuf {
            set: Some(
                json!({"$geoip_country_code": "XX"})
                    .as_object()
                    .cloned()
                    .unwrap(),
            ),
            set_once: Some(
                json!({"$initial_geoip_latitude": 1})
                    .as_object()
                    .cloned()
                    .unwrap(),
            ),
            ..TestEvent::new("e")
                .ip("89.160.20.112")
                .property("$set", json!(null))
                .into_buf()
        },
    ];
    for location in [linkoping(), sparse] {
        for event in &events {
            let answer = location.clone();
            let mut harness = Harness::<GeoIp>::new(json!({"cache_size": 0}))
                .unwrap()
                .with_geoip(move |_| Some(answer.clone()));
            let stored = harness
                .stored(TestEvent::from(event.clone()))
                .unwrap()
                .unwrap();
            assert_eq!(stored, reference(event, &location), "{event:?}");
        }
    }
}

#[test]
fn the_written_out_names_are_the_standard_ones() {
    for [key, property, initial] in NAMES {
        assert_eq!(property, format!("$geoip_{key}"));
        assert_eq!(initial, format!("$initial_geoip_{key}"));
    }
    let mut standard: Vec<&str> = NAMES[..STANDARD_KEYS.len()]
        .iter()
        .map(|[k, _, _]| *k)
        .collect();
    let mut expected = STANDARD_KEYS.to_vec();
    standard.sort_unstable();
    expected.sort_unstable();
    assert_eq!(standard, expected);
    assert_eq!(subdivision(4, "name").property, "$geoip_subdivision_4_name");
    assert_eq!(
        subdivision(2, "code").initial,
        "$initial_geoip_subdivision_2_code"
    );
}

#[test]
fn kept_edits_are_used_until_the_database_changes() {
    let mut h = harness();
    let event = TestEvent::new("e").ip("89.160.20.112");
    let first = h.stored(event.clone()).unwrap().unwrap();
    let again = h.stored(event).unwrap().unwrap();
    assert_eq!(first, again);
    assert_eq!(h.plugin().known.len(), 1);
    h.reload_geoip(|_| {
        Some(Location {
            city_name: Some("Moved".into()),
            ..linkoping()
        })
    });
    let moved = h
        .stored(TestEvent::new("e").ip("89.160.20.112"))
        .unwrap()
        .unwrap();
    assert_eq!(moved.properties["$geoip_city_name"], "Moved");
    // Unknown addresses are remembered as unknown, and the memory stays bounded.
    let mut small = Harness::<GeoIp>::new(json!({"cache_size": 2}))
        .unwrap()
        .with_geoip(|ip| (ip == "89.160.20.112").then(linkoping));
    for ip in ["1.1.1.1", "2.2.2.2", "3.3.3.3", "89.160.20.112"] {
        small.transform(TestEvent::new("e").ip(ip));
        assert!(small.plugin().known.len() <= 2);
    }
    let error = Harness::<GeoIp>::new(json!({"cache_size": -1})).unwrap_err();
    assert!(error.message.contains("cache_size"), "{error}");
}
