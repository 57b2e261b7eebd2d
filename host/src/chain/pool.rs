//! One worker lane's live instances, by [`InstanceKey`], at most `capacity` of them: the least
//! recently used is torn down beyond that, a trapped one is discarded and rebuilt on next use,
//! and one that grew its memory too far is recycled.

use super::Installation;
use crate::capabilities::Grants;
use crate::config::InstallationConfig;
use crate::runtime::{CallError, Instance};
use serde_json::Value;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// Which live instance serves an installation: its own, or one shared by every installation
/// with the same [`super::SharingKey`]. Each key is unique in the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InstanceKey(u64);

impl InstanceKey {
    /// A key no other instance has.
    pub fn unique() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// What makes installations of a stateless plugin interchangeable: the same plugin file, config,
/// limits and grants. Installations with equal keys share one instance per worker lane; any
/// difference (including in grants) gives them separate instances, so per-instance capability
/// state is never shared across grants.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SharingKey {
    /// The plugin file.
    pub plugin: PathBuf,
    /// The resolved config, as JSON text (object keys in sorted order).
    pub config: String,
    /// Deadline of one call, in milliseconds, as configured.
    pub timeout_ms: Option<u64>,
    /// Memory cap, in MiB.
    pub memory_mb: u64,
    /// What the installation was granted.
    pub grants: Grants,
}

impl SharingKey {
    /// The key of `installation` whose resolved config is `config`.
    pub fn of(installation: &InstallationConfig, config: &Value) -> Self {
        Self {
            plugin: installation.plugin.clone(),
            config: config.to_string(),
            timeout_ms: installation.timeout_ms,
            memory_mb: installation.memory_mb,
            grants: installation.grants.clone(),
        }
    }
}

/// A live instance and when it was last used.
struct Live {
    instance: Instance,
    last_used: u64,
}

pub(super) struct InstancePool {
    instances: HashMap<InstanceKey, Live>,
    capacity: usize,
    clock: u64,
}

impl InstancePool {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            instances: HashMap::new(),
            capacity: capacity.max(1),
            clock: 0,
        }
    }

    pub(super) fn live(&self) -> usize {
        self.instances.len()
    }

    /// The instance serving `installation`, started if needed, switched to serve it.
    pub(super) fn instance(
        &mut self,
        installation: &Installation,
    ) -> Result<&mut Instance, CallError> {
        self.clock += 1;
        let key = installation.instance_key;
        if !self.instances.contains_key(&key) && self.instances.len() >= self.capacity {
            self.evict_least_recent();
        }
        let live = match self.instances.entry(key) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                metrics::counter!("sluice_plugin_instances_started_total", "installation" => installation.id.to_string())
                    .increment(1);
                entry.insert(Live {
                    instance: Instance::start(&installation.plugin, &installation.settings)?,
                    last_used: 0,
                })
            }
        };
        live.last_used = self.clock;
        live.instance.enter(&installation.settings.context);
        Ok(&mut live.instance)
    }

    fn evict_least_recent(&mut self) {
        let oldest = self
            .instances
            .iter()
            .min_by_key(|(_, live)| live.last_used)
            .map(|(key, _)| *key);
        if let Some(live) = oldest.and_then(|key| self.instances.remove(&key)) {
            metrics::counter!("sluice_plugin_instances_evicted_total").increment(1);
            live.instance.teardown();
        }
    }

    /// The host calls the live instance of `installation` recorded, if it has one that records.
    pub(super) fn recorded(
        &self,
        installation: &Installation,
    ) -> Option<crate::capabilities::journal::Recorded> {
        self.instances
            .get(&installation.instance_key)?
            .instance
            .recorded()
    }

    /// Drops the instance of `installation` after `error` made it unusable.
    pub(super) fn discard(&mut self, installation: &Installation, error: &CallError) {
        tracing::debug!(installation = %installation.id, %error, "plugin instance trapped; it will be rebuilt");
        self.instances.remove(&installation.instance_key);
    }

    /// Linear memory never shrinks, so an instance that grew past three quarters of its cap is
    /// replaced by a fresh one before it runs out.
    pub(super) fn recycle_if_bloated(&mut self, installation: &Installation) {
        let key = &installation.instance_key;
        let bloated = self.instances.get(key).is_some_and(|live| {
            live.instance.memory_high_water() > installation.settings.memory_bytes / 4 * 3
        });
        if bloated && let Some(live) = self.instances.remove(key) {
            tracing::info!(installation = %installation.id, "recycling plugin instance after memory growth");
            live.instance.teardown();
        }
    }

    /// Tears down the instances no installation of `chains` is served by any more (after a
    /// reload removed or changed them).
    pub(super) fn retain(&mut self, chains: &super::Chains) {
        let serving: std::collections::HashSet<InstanceKey> =
            chains.all().map(|i| i.instance_key).collect();
        let gone: Vec<InstanceKey> = self
            .instances
            .keys()
            .filter(|key| !serving.contains(key))
            .copied()
            .collect();
        for key in gone {
            if let Some(live) = self.instances.remove(&key) {
                live.instance.teardown();
            }
        }
    }

    pub(super) fn teardown(self) {
        for (_, live) in self.instances {
            live.instance.teardown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::Grants;
    use crate::config::InstallationId;
    use std::path::PathBuf;

    fn installation(grants: &[&str]) -> InstallationConfig {
        InstallationConfig {
            key: "teams[0].plugins[0]".into(),
            id: InstallationId::parse("geoip").unwrap(),
            plugin: PathBuf::from("/plugins/geoip.wasm"),
            config: toml::Table::new(),
            timeout_ms: None,
            memory_mb: 64,
            on_error: None,
            breaker: Default::default(),
            export: None,
            schedule: None,
            jobs: None,
            grants: Grants::of(grants),
            bundles: false,
            shadow: None,
            auto_rollback: false,
        }
    }

    #[test]
    fn installations_share_only_with_equal_config_limits_and_grants() {
        let config = serde_json::json!({"a": 1});
        let base = SharingKey::of(&installation(&["geoip"]), &config);
        assert_eq!(base, SharingKey::of(&installation(&["geoip"]), &config));
        assert_ne!(
            base,
            SharingKey::of(&installation(&["geoip", "log"]), &config)
        );
        assert_ne!(
            base,
            SharingKey::of(&installation(&["geoip"]), &serde_json::json!({"a": 2}))
        );
        let mut slower = installation(&["geoip"]);
        slower.timeout_ms = Some(2_000);
        assert_ne!(base, SharingKey::of(&slower, &config));
    }
}
