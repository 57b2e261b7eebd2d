//! A plugin with a bug, and its fix (built with the feature `fixed`), for failure bundles.
//!
//! Each event gets `wobbly_at` (the wall clock, ms), `wobbly_draw` (a random number) and
//! `wobbly_count` (a counter in `storage`, read at setup and added to per event): everything a
//! deterministic replay must answer from its record. An event with `spin = true` makes the
//! unfixed build spin until its deadline.

use sluice_sdk::host::storage;
use sluice_sdk::{Config, Event, Manifest, Outcome, Plugin, PluginError, Transform};
use std::hash::{BuildHasher, Hasher};

/// The plugin.
#[derive(Debug)]
pub struct Wobbly {
    count: i64,
}

impl Plugin for Wobbly {
    fn manifest() -> Manifest {
        Manifest::new(
            "wobbly",
            env!("CARGO_PKG_VERSION"),
            "Stamps clock, randomness and a counter; spins on `spin` unless fixed",
        )
        .needs(&["storage"])
    }

    fn setup(_config: &Config) -> Result<Self, PluginError> {
        let stored = storage::get("count").map_err(|e| PluginError::new(e.message))?;
        let count = stored
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(Self { count })
    }
}

impl Transform for Wobbly {
    fn transform(&mut self, event: &Event<'_>) -> Outcome {
        if event.property("spin") == Some(true.into()) && !cfg!(feature = "fixed") {
            let mut spins = 0u64;
            loop {
                spins = std::hint::black_box(spins.wrapping_add(1));
            }
        }
        self.count = storage::increment("count", 1).unwrap_or(self.count + 1);
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(at);
        let mut edit = event.edit();
        edit.set("wobbly_at", at);
        edit.set("wobbly_draw", hasher.finish() >> 12);
        edit.set("wobbly_count", self.count);
        Outcome::Edit(edit)
    }
}

sluice_sdk::export_transform!(Wobbly);
