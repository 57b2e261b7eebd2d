//! Comes after other plugins in the tests' chains, to show how edits compose:
//!
//! - `mode = "edit"`: copies what it sees of `$geoip_city_name` (earlier plugins' edits
//!   included) to `seen_city`, sets `$geoip_city_name` to `Override`, removes
//!   `$geoip_country_code`, sets `$geoip_time_zone` in `$set` (overwriting), and sets
//!   `$geoip_city_name` in `$set` and `$initial_geoip_city_name` in `$set_once` only if absent;
//! - `mode = "replace"`: returns the whole event with `seen_city` and `replaced = true` added.

use sluice_sdk::{
    Config, ConfigField, Event, Manifest, Outcome, Plugin, PluginError, Transform, Value,
};

/// The patcher.
#[derive(Debug)]
pub struct Patcher {
    replace: bool,
}

impl Plugin for Patcher {
    fn manifest() -> Manifest {
        Manifest::new(
            "patcher",
            env!("CARGO_PKG_VERSION"),
            "Edits or replaces events",
        )
        .config(vec![
            ConfigField::choice("mode", "How to change events", &["edit", "replace"]).required(),
        ])
    }

    fn setup(config: &Config) -> Result<Self, PluginError> {
        Ok(Self {
            replace: config.text("mode")? == "replace",
        })
    }
}

impl Transform for Patcher {
    fn transform(&mut self, event: &Event<'_>) -> Outcome {
        let seen = event.property("$geoip_city_name").unwrap_or(Value::Null);
        if self.replace {
            return match event.to_buf() {
                Ok(buf) => Outcome::Replace(
                    buf.with_property("seen_city", seen)
                        .with_property("replaced", true),
                ),
                Err(error) => Outcome::Error(error),
            };
        }
        let mut edit = event.edit();
        edit.set("seen_city", seen)
            .set("$geoip_city_name", "Override")
            .remove("$geoip_country_code")
            .set_person("$geoip_time_zone", "UTC")
            .set_person_if_absent("$geoip_city_name", "Other")
            .set_person_once_if_absent("$initial_geoip_city_name", "Other");
        Outcome::Edit(edit)
    }
}

sluice_sdk::export_transform!(Patcher);
