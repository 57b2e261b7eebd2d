use super::*;
use serde_json::{Value, json};

fn patch(ops: &[(Target, Mode, &str, Option<Value>)]) -> Vec<u8> {
    let mut writer = PatchWriter::default();
    for (target, mode, key, value) in ops {
        match value {
            Some(value) => writer.push_json(*target, *mode, key, &value.to_string()),
            None => writer.remove(*target, key),
        }
    }
    writer.finish()
}

fn applied(properties: &str, set: Option<&str>, patch: &[u8]) -> Value {
    check(patch).unwrap();
    let applied = apply(properties, None, set, None, patch).unwrap();
    serde_json::from_str(&applied.properties).unwrap()
}

use Mode::{Remove, Set as Put, SetIfAbsent};
use Target::{Ip, Properties, Set, SetOnce};

#[test]
fn untouched_properties_keep_their_text_and_new_keys_follow() {
    let base = r#"{"b":1,"a":{"x": [1,2]},"c":"three"}"#;
    let ops = patch(&[
        (Properties, Put, "a", Some(json!(2))),
        (Properties, Put, "new", Some(json!("n"))),
        (Properties, Remove, "c", None),
        (Properties, Remove, "absent", None),
    ]);
    let applied = apply(base, None, None, None, &ops).unwrap();
    assert_eq!(applied.properties, r#"{"b":1,"a":2,"new":"n"}"#);
    let nothing = PatchWriter::default().finish();
    assert_eq!(
        apply(base, None, None, None, &nothing).unwrap().properties,
        r#"{"b":1,"a":{"x": [1,2]},"c":"three"}"#
    );
}

#[test]
fn person_properties_the_producer_set_win() {
    let base = r#"{"$set":{"city":"Mine"},"$set_once":"not an object"}"#;
    let top_level_set = r#"{"country":"XX"}"#;
    let ops = patch(&[
        (Set, SetIfAbsent, "city", Some(json!("Linköping"))),
        (Set, SetIfAbsent, "country", Some(json!("SE"))),
        (Set, SetIfAbsent, "zone", Some(json!(null))),
        (
            SetOnce,
            SetIfAbsent,
            "initial_city",
            Some(json!("Linköping")),
        ),
        (Set, Put, "forced", Some(json!(1))),
    ]);
    assert_eq!(
        applied(base, Some(top_level_set), &ops),
        json!({"$set": {"city": "Mine", "zone": null, "forced": 1},
               "$set_once": {"initial_city": "Linköping"}})
    );
}

#[test]
fn a_person_op_makes_the_person_object_even_when_nothing_is_set() {
    let ops = patch(&[(Set, SetIfAbsent, "city", Some(json!("X")))]);
    let applied = apply("{}", None, Some(r#"{"city":"Mine"}"#), None, &ops).unwrap();
    assert_eq!(applied.properties, r#"{"$set":{}}"#);
    let untouched = r#"{"$set":{"city": "Mine"}}"#;
    assert_eq!(
        apply(untouched, None, None, None, &ops).unwrap().properties,
        untouched,
        "an object left as it was keeps its text"
    );
}

#[test]
fn ops_apply_in_order_across_plugins() {
    // The first plugin sets a property and a person property; the second sets both again.
    let first = patch(&[
        (Properties, Put, "$geoip_city_name", Some(json!("A"))),
        (Set, SetIfAbsent, "$geoip_city_name", Some(json!("A"))),
        (Properties, SetIfAbsent, "only_first", Some(json!(1))),
    ]);
    let second = patch(&[
        (Properties, Put, "$geoip_city_name", Some(json!("B"))),
        (Set, SetIfAbsent, "$geoip_city_name", Some(json!("B"))),
        (Properties, SetIfAbsent, "only_first", Some(json!(2))),
        (Properties, Remove, "gone", None),
        (Properties, SetIfAbsent, "gone", Some(json!("back"))),
    ]);
    let merged = merge(Some(&first), &second);
    assert_eq!(check(&merged), Ok(8));
    assert_eq!(
        applied(r#"{"gone":0}"#, None, &merged),
        json!({"$geoip_city_name": "B", "$set": {"$geoip_city_name": "A"}, "only_first": 1, "gone": "back"})
    );
    assert_eq!(merge(None, &second), second);
}

#[test]
fn setting_a_person_object_as_a_property_replaces_earlier_person_edits() {
    let ops = patch(&[
        (Set, Put, "a", Some(json!(1))),
        (Properties, Put, "$set", Some(json!({"b": 2}))),
        (Set, SetIfAbsent, "b", Some(json!(3))),
        (Set, Put, "c", Some(json!(4))),
    ]);
    assert_eq!(applied("{}", None, &ops), json!({"$set": {"b": 2, "c": 4}}));
    let dropped = patch(&[
        (Set, Put, "a", Some(json!(1))),
        (Properties, Remove, "$set", None),
    ]);
    assert_eq!(applied("{}", None, &dropped), json!({}));
}

#[test]
fn keys_match_however_they_were_escaped_and_are_written_escaped() {
    let ops = patch(&[
        (Properties, Put, "$ip", Some(json!("x"))),
        (Properties, Put, "quote\"d", Some(json!(true))),
    ]);
    let applied = apply(r#"{"\u0024ip":"1.2.3.4"}"#, None, None, None, &ops).unwrap();
    assert_eq!(applied.properties, r#"{"$ip":"x","quote\"d":true}"#);
}

#[test]
fn the_ip_is_set_removed_or_kept() {
    let set = patch(&[(Ip, Put, "", Some(json!("5.6.7.8")))]);
    let remove = patch(&[(Ip, Remove, "", None)]);
    let if_absent = patch(&[(Ip, SetIfAbsent, "", Some(json!("9.9.9.9")))]);
    let ip = |patch: &[u8], ip| apply("{}", ip, None, None, patch).unwrap().ip;
    assert_eq!(ip(&set, Some("1.1.1.1")).as_deref(), Some("5.6.7.8"));
    assert_eq!(ip(&remove, Some("1.1.1.1")), None);
    assert_eq!(ip(&if_absent, Some("1.1.1.1")).as_deref(), Some("1.1.1.1"));
    assert_eq!(ip(&if_absent, None).as_deref(), Some("9.9.9.9"));
    assert!(check(&set).is_ok() && check(&remove).is_ok());
}

#[test]
fn bad_patches_are_refused_with_the_reason() {
    // A set without a value, and a remove with one.
    let mut no_value = vec![1, 0, 0, 0, 0, 0, 1, 0, 0, 0, b'a'];
    no_value.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        check(&no_value),
        Err(PatchError::Value {
            why: "a set needs a value",
            ..
        })
    ));
    let mut with_value = vec![1, 0, 0, 0, 0, 2, 1, 0, 0, 0, b'a', 1, 0, 0, 0, b'1'];
    assert!(matches!(
        check(&with_value),
        Err(PatchError::Value {
            why: "a remove has no value",
            ..
        })
    ));
    with_value[5] = 0;
    assert_eq!(check(&with_value), Ok(1));
    let mut writer = PatchWriter::default();
    writer.push_json(Properties, Put, "a", "{not json");
    assert!(matches!(
        check(&writer.finish()),
        Err(PatchError::Value { .. })
    ));
    let mut writer = PatchWriter::default();
    writer.push_json(Properties, Put, "", "1");
    assert!(matches!(check(&writer.finish()), Err(PatchError::Key(_))));
    let mut writer = PatchWriter::default();
    writer.push_json(Ip, Put, "", "12");
    assert!(matches!(
        check(&writer.finish()),
        Err(PatchError::Value { .. })
    ));
    let mut writer = PatchWriter::default();
    writer.push_json(Ip, Put, "key", r#""1.2.3.4""#);
    assert!(matches!(check(&writer.finish()), Err(PatchError::Key(_))));

    let good = patch(&[(Properties, Put, "a", Some(json!([1])))]);
    for cut in 0..good.len() {
        assert!(check(&good[..cut]).is_err(), "cut at {cut}");
    }
    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(check(&trailing), Err(PatchError::Trailing(1)));
    let mut unknown = good.clone();
    unknown[4] = 9;
    assert_eq!(check(&unknown), Err(PatchError::Target(9)));
    unknown[4] = 0;
    unknown[5] = 7;
    assert_eq!(check(&unknown), Err(PatchError::Mode(7)));
    assert_eq!(
        apply("[1]", None, None, None, &good),
        Err(PatchError::NotObject)
    );
}
