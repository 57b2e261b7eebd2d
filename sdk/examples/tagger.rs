//! The plugin of `sdk/README.md`, compiled and tested so the guide never rots.
//! (`sdk/tests/guide.rs` checks that every Rust block of the guide appears here verbatim.)

use sluice_sdk::{
    Config, ConfigField, ConfigType, Event, Manifest, Outcome, Plugin, PluginError, Transform,
};

/// Adds a configurable `tag` property to events.
#[derive(Debug)]
pub struct Tagger {
    tag: String,
    only: Option<String>,
}

impl Plugin for Tagger {
    // Declared once; the host shows it to operators and checks their config against it.
    fn manifest() -> Manifest {
        Manifest::new("tagger", env!("CARGO_PKG_VERSION"), "Adds a `tag` property").config(vec![
            ConfigField::new("tag", ConfigType::Text, "Value of the `tag` property").required(),
            ConfigField::new(
                "only_event",
                ConfigType::Text,
                "Tag only events with this name",
            ),
        ])
    }

    // Values arrive already checked against the schema, defaults filled in.
    // Check ranges and relations here; an error stops sluice from starting, with your message.
    fn setup(config: &Config) -> Result<Self, PluginError> {
        let tag = config.text("tag")?.to_owned();
        if tag.is_empty() {
            return Err(PluginError::new("tag must not be empty"));
        }
        let only = config
            .get("only_event")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        Ok(Self { tag, only })
    }
}

impl Transform for Tagger {
    fn transform(&mut self, event: &Event<'_>) -> Outcome {
        if self
            .only
            .as_deref()
            .is_some_and(|name| name != event.name())
        {
            return Outcome::Keep; // unchanged: nothing is copied back to the host
        }
        // Only the edit goes back to the host, which applies it when the event is stored.
        let mut edit = event.edit();
        edit.set("tag", &self.tag);
        Outcome::Edit(edit)
    }
}

sluice_sdk::export_transform!(Tagger);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::json;
    use sluice_sdk::testing::{Harness, TestEvent};

    #[test]
    fn tags_only_the_chosen_event() {
        let mut h = Harness::<Tagger>::new(json!({"tag": "beta", "only_event": "signup"})).unwrap();
        let signup = TestEvent::new("signup").distinct_id("u1");
        let expected = signup.clone().into_buf().with_property("tag", "beta");
        assert_eq!(h.stored(signup).unwrap(), Some(expected)); // what storage gets
        assert_eq!(h.transform(TestEvent::new("$pageview")), Outcome::Keep);
    }

    #[test]
    fn config_is_checked_like_the_host_does() {
        let err = Harness::<Tagger>::new(json!({})).unwrap_err();
        assert_eq!(err.message, "`tag`: is required");
    }
}
