//! The live tap: what happens to events in each installation of the chain, streamed to whoever
//! watches (`sluice tap`, `GET /admin/v1/tap`).
//!
//! One hub per process, so a tap survives reloads (the chains change, the hub does not). While
//! nobody taps, the chain pays one relaxed atomic load per call ([`Hub::active`]); while someone
//! does, one record per event and installation goes into a bounded broadcast buffer
//! ([`BUFFER`]): a watcher that falls behind is told how many records it missed, and the chain
//! never waits for it.

use serde::Serialize;
use sluice_abi::patch::{self, Mode, Target};
use sluice_abi::wire;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use tokio::sync::broadcast;

/// Records a watcher may fall behind by before it misses some.
pub const BUFFER: usize = 4_096;

/// What an installation did with one event.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TapRecord {
    /// When, epoch ms.
    pub time_ms: i64,
    /// The team.
    pub team_id: u64,
    /// The installation.
    pub installation: String,
    /// The event's uuid.
    pub uuid: String,
    /// The event's name.
    pub event: String,
    /// Its distinct id.
    pub distinct_id: String,
    /// `kept`, `dropped`, `patched`, `replaced` or `failed`.
    pub outcome: &'static str,
    /// Why it was dropped, which keys a patch touched (`properties.x`, `$set.y`, `-removed`),
    /// or what failed and what became of the event.
    pub detail: Option<String>,
}

/// A live broadcast of `T`s (tap records, plugin log lines) to whoever watches: free while
/// nobody does ([`Hub::active`]), bounded while someone does ([`BUFFER`]).
pub struct Hub<T> {
    watchers: AtomicUsize,
    sender: broadcast::Sender<Arc<T>>,
}

/// The tap's hub in this process.
pub fn hub() -> &'static Hub<TapRecord> {
    static HUB: LazyLock<Hub<TapRecord>> = LazyLock::new(Hub::new);
    &HUB
}

/// A watcher of a hub: its records, and its place among the watchers (it leaves when dropped).
pub struct Watcher<T: 'static> {
    hub: &'static Hub<T>,
    /// The records, from when it started watching.
    pub records: broadcast::Receiver<Arc<T>>,
}

impl<T> Drop for Watcher<T> {
    fn drop(&mut self) {
        self.hub.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<T> Hub<T> {
    /// A hub nobody watches yet.
    pub fn new() -> Self {
        Self {
            watchers: AtomicUsize::new(0),
            sender: broadcast::channel(BUFFER).0,
        }
    }

    /// Whether anyone watches: nothing is recorded otherwise.
    pub fn active(&self) -> bool {
        self.watchers.load(Ordering::Relaxed) > 0
    }

    /// Starts watching.
    pub fn watch(&'static self) -> Watcher<T> {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        Watcher {
            hub: self,
            records: self.sender.subscribe(),
        }
    }

    /// Sends `record` to whoever watches now.
    pub fn publish(&self, record: T) {
        // No receiver left (they all went since `active`): nothing to do.
        let _ = self.sender.send(Arc::new(record));
    }
}

impl<T> Default for Hub<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub<TapRecord> {
    /// Records what `installation` did with the encoded `event` (nothing if it cannot be read).
    pub fn record(
        &self,
        installation: &str,
        event: &[u8],
        outcome: &'static str,
        detail: Option<String>,
    ) {
        let Ok(raw) = wire::parse_encoded(event) else {
            return;
        };
        let text = |field| {
            raw.text(field)
                .ok()
                .flatten()
                .unwrap_or_default()
                .to_owned()
        };
        let record = TapRecord {
            time_ms: crate::store::now_ms(),
            team_id: raw.team_id(),
            installation: installation.to_owned(),
            uuid: crate::store::uuid_text(&raw.uuid()),
            event: text(wire::Field::Event),
            distinct_id: text(wire::Field::DistinctId),
            outcome,
            detail,
        };
        self.publish(record);
    }
}

/// The keys a patch touches, as a tap shows them: `properties.x` (set), `$set.y`,
/// `$set_once.z`, `ip`, each prefixed with `-` when removed.
pub fn patched_keys(patch: &[u8]) -> String {
    let Ok(ops) = patch::ops(patch) else {
        return String::new();
    };
    ops.iter()
        .map(|op| {
            let target = match op.target {
                Target::Properties => format!("properties.{}", op.key),
                Target::Set => format!("$set.{}", op.key),
                Target::SetOnce => format!("$set_once.{}", op.key),
                Target::Ip => "ip".to_owned(),
            };
            match op.mode {
                Mode::Remove => format!("-{target}"),
                Mode::Set | Mode::SetIfAbsent => target,
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a watcher asked for: only a team, only an installation, one event in `sample` (by
/// uuid, so an event's records across the chain are shown together).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TapFilter {
    /// Only this team.
    pub team: Option<u64>,
    /// Only this installation (`team-1/geoip`).
    pub installation: Option<String>,
    /// One event in this many.
    pub sample: Option<u64>,
}

impl TapFilter {
    /// Whether `record` is shown.
    pub fn shows(&self, record: &TapRecord) -> bool {
        self.team.is_none_or(|team| team == record.team_id)
            && self
                .installation
                .as_ref()
                .is_none_or(|installation| *installation == record.installation)
            && self.sample.is_none_or(|n| {
                use std::hash::{Hash, Hasher};
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                record.uuid.hash(&mut hasher);
                n <= 1 || hasher.finish().is_multiple_of(n)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchers_get_each_record_filtered_and_nobody_watching_costs_nothing_recorded() {
        let hub = hub();
        let event = crate::sink::test_event(7, 3, "signup");
        assert!(!hub.active());
        hub.record("team-7/a", &event, "kept", None);
        let mut watcher = hub.watch();
        assert!(hub.active());
        hub.record("team-7/a", &event, "dropped", Some("sampled out".into()));
        let record = watcher.records.try_recv().unwrap();
        assert_eq!(
            (record.outcome, record.event.as_str(), record.team_id),
            ("dropped", "signup", 7)
        );
        assert!(
            watcher.records.try_recv().is_err(),
            "nothing from before it watched"
        );
        let only_other = TapFilter {
            installation: Some("team-7/b".into()),
            ..TapFilter::default()
        };
        assert!(!only_other.shows(&record));
        assert!(TapFilter::default().shows(&record));
        drop(watcher);
        assert!(!hub.active());
    }

    #[test]
    fn a_patch_shows_the_keys_it_touches() {
        let mut writer = sluice_abi::patch::PatchWriter::default();
        writer.push_json(Target::Properties, Mode::Set, "city", "\"Paris\"");
        writer.remove(Target::Properties, "email");
        writer.push_json(Target::Set, Mode::SetIfAbsent, "plan", "\"pro\"");
        assert_eq!(
            patched_keys(&writer.finish()),
            "properties.city, -properties.email, $set.plan"
        );
    }
}
