//! Downsampling: keep a percentage of events, like PostHog's downsampling plugin.
//!
//! - `distinct_id` sampling (the default) keeps an event when
//!   `sha256(distinct_id)[..15 hex digits] / 0xfffffffffffffff <= percentage / 100`, so a user is
//!   either always kept or always dropped at a given percentage, and raising the percentage only
//!   adds users. This matches PostHog bit for bit.
//! - `random` sampling keeps each event with probability `percentage / 100`. (PostHog's version
//!   compared an integer 0..99 with the percentage, which kept ~1% at 0%; this one is exact.)
//! - `set_sample_rate` (off by default) sets `$sample_rate` to the kept fraction on kept events so
//!   analytics can re-weight counts; PostHog added no such marker.
//!
//! A user's decision never changes while the instance lives (the percentage is fixed at setup),
//! so the instance remembers recent decisions instead of hashing every event again: most traffic
//! comes from users who send many events. The memory is bounded by [`MAX_REMEMBERED`].

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use sluice_sdk::{
    Config, ConfigField, ConfigType, Event, Manifest, Outcome, Plugin, PluginError, Transform,
};
use std::collections::HashMap;

/// How events are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Stable per distinct id.
    DistinctId,
    /// Independently per event.
    Random,
}

/// Distinct ids whose decision is remembered; past this the memory is cleared and refilled.
pub const MAX_REMEMBERED: usize = 65_536;

/// The downsampling plugin.
#[derive(Debug)]
pub struct Downsample {
    fraction: f64,
    method: Method,
    set_sample_rate: bool,
    rng: SmallRng,
    decisions: HashMap<String, bool>,
}

/// Where a distinct id falls in `[0, 1]`: the first 15 hex digits of its SHA-256, as a fraction.
pub fn hash_fraction(distinct_id: &str) -> f64 {
    let digest = Sha256::digest(distinct_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 15 hex digits are the top 60 bits of the digest.
    let top60 = u64::from_be_bytes(first) >> 4;
    top60 as f64 / 0xfff_ffff_ffff_ffff_u64 as f64
}

impl Downsample {
    /// Whether to keep an event by `distinct_id`.
    pub fn keeps(&mut self, distinct_id: &str) -> bool {
        match self.method {
            Method::Random => self.rng.random::<f64>() < self.fraction,
            Method::DistinctId => {
                if let Some(keep) = self.decisions.get(distinct_id) {
                    return *keep;
                }
                if self.decisions.len() >= MAX_REMEMBERED {
                    self.decisions.clear();
                }
                let keep = hash_fraction(distinct_id) <= self.fraction;
                self.decisions.insert(distinct_id.to_owned(), keep);
                keep
            }
        }
    }
}

impl Plugin for Downsample {
    fn manifest() -> Manifest {
        // Stateless: the remembered decisions depend only on the config and the distinct id, so
        // installations with the same config may share instances.
        Manifest::new(
            "downsample",
            env!("CARGO_PKG_VERSION"),
            "Keeps a percentage of events, per user or at random",
        )
        .stateless()
        .config(vec![
            ConfigField::new(
                "percentage",
                ConfigType::Number,
                "Percentage of events to keep, from 0 to 100",
            )
            .with_default(100),
            ConfigField::choice(
                "sampling_method",
                "`distinct_id`: keep whole users (stable); `random`: per event",
                &["distinct_id", "random"],
            )
            .with_default("distinct_id"),
            ConfigField::new(
                "set_sample_rate",
                ConfigType::Boolean,
                "Set `$sample_rate` (the kept fraction) on kept events",
            )
            .with_default(false),
        ])
    }

    fn setup(config: &Config) -> Result<Self, PluginError> {
        let percentage = config.number("percentage")?;
        if !(0.0..=100.0).contains(&percentage) {
            return Err(PluginError::new(format!(
                "percentage must be between 0 and 100, got {percentage}"
            )));
        }
        let method = match config.text("sampling_method")? {
            "random" => Method::Random,
            _ => Method::DistinctId,
        };
        Ok(Self {
            fraction: percentage / 100.0,
            method,
            set_sample_rate: config.boolean("set_sample_rate")?,
            rng: SmallRng::from_os_rng(),
            decisions: HashMap::new(),
        })
    }
}

impl Transform for Downsample {
    fn transform(&mut self, event: &Event<'_>) -> Outcome {
        if !self.keeps(event.distinct_id()) {
            return Outcome::Drop("sampled out".into());
        }
        if !self.set_sample_rate {
            return Outcome::Keep;
        }
        let mut edit = event.edit();
        edit.set("$sample_rate", self.fraction);
        Outcome::Edit(edit)
    }
}

sluice_sdk::export_transform!(Downsample);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::json;
    use sluice_sdk::testing::{Harness, TestEvent};

    fn harness(config: sluice_sdk::Value) -> Harness<Downsample> {
        Harness::new(config).unwrap()
    }

    fn kept(percentage: f64, distinct_id: &str) -> bool {
        let mut h = harness(json!({ "percentage": percentage }));
        h.transform(TestEvent::new("$pageview").distinct_id(distinct_id)) == Outcome::Keep
    }

    #[test]
    fn posthog_vector_distinct_id_1_is_dropped_at_40_and_kept_at_50() {
        assert!(
            (hash_fraction("1") - 0.42).abs() < 0.01,
            "{}",
            hash_fraction("1")
        );
        for p in [0.0, 10.0, 20.0, 30.0, 40.0] {
            assert!(!kept(p, "1"), "kept at {p}%");
        }
        for p in [50.0, 60.0, 70.0, 80.0, 90.0, 100.0] {
            assert!(kept(p, "1"), "dropped at {p}%");
        }
    }

    #[test]
    fn distinct_id_sampling_is_stable_and_monotonic() {
        let ids: Vec<String> = (0..500).map(|i| format!("user-{i}")).collect();
        let mut previous = 0;
        for p in [0.0, 25.0, 50.0, 75.0, 100.0] {
            let mut h = harness(json!({ "percentage": p }));
            let first: Vec<bool> = ids
                .iter()
                .map(|id| h.transform(TestEvent::new("e").distinct_id(id)) == Outcome::Keep)
                .collect();
            let again: Vec<bool> = ids
                .iter()
                .map(|id| h.transform(TestEvent::new("e").distinct_id(id)) == Outcome::Keep)
                .collect();
            assert_eq!(first, again, "decisions changed at {p}%");
            let count = first.iter().filter(|k| **k).count();
            assert!(count >= previous, "fewer users kept at {p}% than below it");
            let expected = 500.0 * p / 100.0;
            assert!(
                (count as f64 - expected).abs() < 50.0,
                "{count} kept at {p}%"
            );
            previous = count;
        }
        assert_eq!(previous, 500);
    }

    #[test]
    fn remembered_decisions_stay_correct_past_the_memory_bound() {
        let mut h = harness(json!({ "percentage": 37 }));
        for round in 0..2 {
            for i in 0..MAX_REMEMBERED + 500 {
                let id = format!("u{i}");
                assert_eq!(
                    h.plugin().keeps(&id),
                    hash_fraction(&id) <= 0.37,
                    "{id} in round {round}"
                );
            }
        }
        assert!(h.plugin().decisions.len() <= MAX_REMEMBERED);
    }

    #[test]
    fn random_sampling_keeps_about_the_percentage() {
        let mut h = harness(json!({ "percentage": 30, "sampling_method": "random" }));
        let events: Vec<_> = (0..4000).map(|_| TestEvent::new("e")).collect();
        let outcomes = h.transform_batch(events).unwrap();
        let kept = outcomes.iter().filter(|o| **o == Outcome::Keep).count();
        assert!((1000..1400).contains(&kept), "kept {kept} of 4000 at 30%");
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Outcome::Keep | Outcome::Drop(_)))
        );
    }

    #[test]
    fn sample_rate_is_set_only_when_asked() {
        let event = TestEvent::new("e").distinct_id("1").property("a", 1);
        let mut plain = harness(json!({ "percentage": 50 }));
        assert_eq!(plain.transform(event.clone()), Outcome::Keep);

        let mut annotated = harness(json!({ "percentage": 50, "set_sample_rate": true }));
        assert!(matches!(
            annotated.transform(event.clone()),
            Outcome::Edit(_)
        ));
        let expected = event.clone().into_buf().with_property("$sample_rate", 0.5);
        assert_eq!(annotated.stored(event).unwrap(), Some(expected));
    }

    #[test]
    fn invalid_config_fails_setup_with_a_clear_message() {
        let err = Harness::<Downsample>::new(json!({ "percentage": 150 })).unwrap_err();
        assert_eq!(err.message, "percentage must be between 0 and 100, got 150");
        let err = Harness::<Downsample>::new(json!({ "percentage": "fifty" })).unwrap_err();
        assert_eq!(err.message, "`percentage`: must be a number, got \"fifty\"");
        let err = Harness::<Downsample>::new(json!({ "sampling_method": "coin" })).unwrap_err();
        assert!(
            err.message
                .contains("must be one of \"distinct_id\", \"random\""),
            "{err}"
        );
    }
}
