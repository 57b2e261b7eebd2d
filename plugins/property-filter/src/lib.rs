//! Property filtering with the observable behaviour of PostHog's property filter plugin.
//!
//! - `properties` is a comma-separated list of property names to remove from every event
//!   (spaces around names are ignored, empty names skipped). A dotted name removes a nested key:
//!   `$set.email` removes `email` from the `$set` object; a path through something that is not
//!   an object removes nothing.
//! - Naming `$ip` also removes the event's IP address, as PostHog's plugin does.
//! - **Person data too.** A name without dots also removes that key wherever the event carries
//!   it as person data: `properties.$set`, `properties.$set_once`, and the event's top-level
//!   `$set` and `$set_once` (an `$identify` carries an email there). A PII filter of `email`
//!   thus leaves no email in storage. `person_data = false` restores PostHog's behaviour
//!   (properties only).
//! - Events that have none of the properties are kept unchanged; the others come back as edits
//!   (removals), not as whole events.

use sluice_sdk::{
    Config, ConfigField, ConfigType, Event, FailureMode, Manifest, Map, Outcome, Plugin,
    PluginError, Transform, Value,
};

/// The property filter plugin.
#[derive(Debug)]
pub struct PropertyFilter {
    /// Each name to remove, split at its dots.
    paths: Vec<Vec<String>>,
    /// Whether `$ip` is one of them.
    removes_ip: bool,
    /// Names without dots, also removed from person data.
    person_keys: Vec<String>,
}

impl Plugin for PropertyFilter {
    fn manifest() -> Manifest {
        Manifest::new(
            "property-filter",
            env!("CARGO_PKG_VERSION"),
            "Removes the configured properties from every event",
        )
        .stateless()
        // A filter that fails must not let the event through with what it was to remove: the
        // event waits in the dead letters, unfiltered data never reaches storage or exports.
        .on_error(FailureMode::DeadLetter)
        .config(vec![
            ConfigField::new(
                "properties",
                ConfigType::Text,
                "Comma-separated properties to remove; `a.b` removes key `b` of object `a`; `$ip` also removes the event's IP",
            )
            .required(),
            ConfigField::new(
                "person_data",
                ConfigType::Boolean,
                "Also remove each name without dots from person data (`$set`, `$set_once`, top level or in properties)",
            )
            .with_default(true),
        ])
    }

    fn setup(config: &Config) -> Result<Self, PluginError> {
        let paths: Vec<Vec<String>> = config
            .text("properties")?
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(|name| name.split('.').map(str::to_owned).collect())
            .collect();
        if paths.iter().flatten().any(String::is_empty) {
            return Err(PluginError::new(
                "properties: a dotted name has an empty part (e.g. `a..b` or `a.`)",
            ));
        }
        let removes_ip = paths.iter().any(|path| path.len() == 1 && path[0] == "$ip");
        let person_keys: Vec<String> = if config.boolean("person_data")? {
            paths
                .iter()
                .filter(|path| path.len() == 1)
                .map(|path| path[0].clone())
                .collect()
        } else {
            Vec::new()
        };
        let mut paths = paths;
        for key in &person_keys {
            for person in ["$set", "$set_once"] {
                let path = vec![person.to_owned(), key.clone()];
                if !paths.contains(&path) {
                    paths.push(path);
                }
            }
        }
        Ok(Self {
            paths,
            removes_ip,
            person_keys,
        })
    }
}

impl PropertyFilter {
    /// Whether the event's top-level `$set` or `$set_once` holds a key to remove.
    fn in_top_level_person_data(&self, event: &Event<'_>) -> bool {
        [event.set_json(), event.set_once_json()]
            .into_iter()
            .flatten()
            .filter(|json| {
                self.person_keys
                    .iter()
                    .any(|key| json.contains(&format!("\"{key}\"")))
            })
            .filter_map(|json| serde_json::from_str::<Map<String, Value>>(json).ok())
            .any(|object| self.person_keys.iter().any(|key| object.contains_key(key)))
    }

    /// The event with every configured name removed everywhere, as a whole event: edits do not
    /// reach the top-level `$set` and `$set_once`.
    fn replaced(&self, event: &Event<'_>) -> Outcome {
        let mut buf = match event.to_buf() {
            Ok(buf) => buf,
            Err(error) => return Outcome::Error(error),
        };
        for path in &self.paths {
            remove(&mut buf.properties, path);
        }
        for person in [&mut buf.set, &mut buf.set_once].into_iter().flatten() {
            for key in &self.person_keys {
                person.remove(key);
            }
        }
        if self.removes_ip {
            buf.ip = None;
        }
        Outcome::Replace(buf)
    }
}

/// Removes `path` from `object`; returns whether anything was removed.
fn remove(object: &mut Map<String, Value>, path: &[String]) -> bool {
    match path {
        [] => false,
        [key] => object.remove(key).is_some(),
        [key, rest @ ..] => match object.get_mut(key) {
            Some(Value::Object(inner)) => remove(inner, rest),
            _ => false,
        },
    }
}

impl Transform for PropertyFilter {
    fn transform(&mut self, event: &Event<'_>) -> Outcome {
        if self.in_top_level_person_data(event) {
            return self.replaced(event);
        }
        let mut edit = event.edit();
        // Objects that lose a nested key are rewritten whole, once, with every such key gone.
        let mut rewritten: Vec<(&str, Map<String, Value>, bool)> = Vec::new();
        for path in &self.paths {
            let [key, rest @ ..] = path.as_slice() else {
                continue;
            };
            if rest.is_empty() {
                if event.property_json(key).is_some() {
                    edit.remove(key);
                }
                continue;
            }
            let at = match rewritten.iter().position(|(k, _, _)| k == key) {
                Some(at) => at,
                None => match event.property(key) {
                    Some(Value::Object(object)) => {
                        rewritten.push((key, object, false));
                        rewritten.len() - 1
                    }
                    _ => continue,
                },
            };
            let (_, object, changed) = &mut rewritten[at];
            *changed |= remove(object, rest);
        }
        for (key, object, changed) in rewritten {
            let removed = self.paths.iter().any(|p| p.len() == 1 && p[0] == key);
            if changed && !removed {
                edit.set(key, object);
            }
        }
        if self.removes_ip && event.ip().is_some() {
            edit.remove_ip();
        }
        Outcome::from(edit)
    }
}

sluice_sdk::export_transform!(PropertyFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::json;
    use sluice_sdk::testing::{Harness, TestEvent};

    fn filter(properties: &str) -> Harness<PropertyFilter> {
        Harness::<PropertyFilter>::new(json!({ "properties": properties })).unwrap()
    }

    fn stored(filter: &mut Harness<PropertyFilter>, event: TestEvent) -> sluice_sdk::EventBuf {
        filter.stored(event).unwrap().expect("kept")
    }

    #[test]
    fn removes_top_level_and_nested_properties() {
        let event = TestEvent::new("e")
            .property("password", "hunter2")
            .property("plan", "pro")
            .property("$set", json!({"email": "a@b.c", "name": "A", "phone": "1"}));
        let mut filter = filter("password, $set.email,missing.key,$set.missing,$set.phone");
        assert!(matches!(filter.transform(event.clone()), Outcome::Edit(_)));
        let buf = stored(&mut filter, event);
        assert_eq!(
            Value::Object(buf.properties),
            json!({"plan": "pro", "$set": {"name": "A"}})
        );
    }

    #[test]
    fn ip_goes_with_the_ip_property() {
        let event = TestEvent::new("e").ip("1.2.3.4").property("$ip", "1.2.3.4");
        let buf = stored(&mut filter("$ip"), event);
        assert_eq!(buf.ip, None);
        assert!(buf.properties.is_empty());
        let only_ip = TestEvent::new("e").ip("1.2.3.4");
        assert_eq!(stored(&mut filter("$ip"), only_ip).ip, None);
    }

    #[test]
    fn a_plain_name_is_removed_from_person_data_everywhere() {
        let event = TestEvent::new("$identify")
            .property("email", "a@b.c")
            .property("$set", json!({"email": "a@b.c", "name": "A"}))
            .property("$set_once", json!({"email": "first@b.c"}))
            .set(json!({"email": "top@b.c", "plan": "pro"}))
            .set_once(json!({"email": "top-once@b.c"}));
        let buf = stored(&mut filter("email"), event.clone());
        assert_eq!(
            Value::Object(buf.properties),
            json!({"$set": {"name": "A"}, "$set_once": {}})
        );
        assert_eq!(buf.set.map(Value::Object), Some(json!({"plan": "pro"})));
        assert_eq!(buf.set_once.map(Value::Object), Some(json!({})));
        // Only in properties: edits, no whole event.
        let inside = TestEvent::new("e").property("$set", json!({"email": "a@b.c"}));
        assert!(matches!(
            filter("email").transform(inside),
            Outcome::Edit(_)
        ));
        // As PostHog's plugin: properties only.
        let posthog =
            Harness::<PropertyFilter>::new(json!({"properties": "email", "person_data": false}));
        let buf = stored(&mut posthog.unwrap(), event);
        assert_eq!(
            buf.properties["$set"],
            json!({"email": "a@b.c", "name": "A"})
        );
        assert_eq!(
            buf.set.map(Value::Object),
            Some(json!({"email": "top@b.c", "plan": "pro"}))
        );
    }

    #[test]
    fn events_without_the_properties_are_kept() {
        let event = TestEvent::new("e").ip("1.2.3.4").property("plan", "pro");
        assert_eq!(filter("password,email").transform(event), Outcome::Keep);
        let error = Harness::<PropertyFilter>::new(json!({"properties": "a..b"})).unwrap_err();
        assert!(error.message.contains("empty part"), "{error}");
    }
}
