//! What two chains made of the same events, compared event by event: which each stored,
//! dropped or dead-lettered, which property keys the second added, removed or changed and how
//! often, and a few sample events of each kind of difference. `sluice replay` and shadow
//! installations accumulate one [`Diff`] each.

use crate::sink::Output;
use crate::store::read::StoredEvent;
use crate::trial::{Change, changes};
use serde::{Deserialize, Serialize};
use sluice_abi::wire;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Samples kept per kind of difference.
pub const SAMPLES: usize = 3;
/// Property keys counted; further keys are counted under `(other keys)`.
const MAX_KEYS: usize = 200;

/// What became of one event in one chain.
#[derive(Debug, Clone, PartialEq)]
pub enum Fate {
    /// Stored, as this.
    Stored(StoredEvent),
    /// Dropped.
    Dropped,
    /// Dead-lettered, for this reason.
    DeadLettered(String),
}

impl Fate {
    fn label(&self) -> &'static str {
        match self {
            Fate::Stored(_) => "stored",
            Fate::Dropped => "dropped",
            Fate::DeadLettered(_) => "dead-lettered",
        }
    }

    fn stored(&self) -> Option<&StoredEvent> {
        match self {
            Fate::Stored(event) => Some(event),
            _ => None,
        }
    }
}

/// The fate of each event of a run's output, by uuid (an event absent was dropped).
pub fn fates(out: &Output) -> HashMap<String, Fate> {
    fates_where(out, |_| true)
}

/// The fate of the events of `out` whose uuid is in `uuids`.
pub fn fates_of(out: &Output, uuids: &HashSet<&str>) -> HashMap<String, Fate> {
    fates_where(out, |uuid| uuids.contains(uuid))
}

fn fates_where(out: &Output, wanted: impl Fn(&str) -> bool) -> HashMap<String, Fate> {
    let mut fates = HashMap::new();
    for encoded in &out.events {
        let Ok(raw) = wire::parse_encoded(encoded) else {
            continue;
        };
        let uuid = crate::store::uuid_text(&raw.uuid());
        if !wanted(&uuid) {
            continue;
        }
        if let Ok(stored) = raw.with_patch_applied(StoredEvent::from_fields) {
            fates.insert(uuid, Fate::Stored(stored));
        }
    }
    for letter in &out.dead_letters {
        if let Ok(event) = wire::parse_encoded(&letter.encoded) {
            let uuid = crate::store::uuid_text(&event.uuid());
            if wanted(&uuid) {
                fates.insert(uuid, Fate::DeadLettered(letter.error.clone()));
            }
        }
    }
    fates
}

/// The uuid and name of an event in the chain's form.
pub fn identity(event: &[u8]) -> (String, String) {
    wire::parse_encoded(event)
        .map(|raw| {
            (
                crate::store::uuid_text(&raw.uuid()),
                raw.text(wire::Field::Event)
                    .ok()
                    .flatten()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .unwrap_or_default()
}

/// How many events each chain stored, dropped and dead-lettered.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Fates {
    /// Stored.
    pub stored: u64,
    /// Dropped.
    pub dropped: u64,
    /// Dead-lettered.
    pub dead_lettered: u64,
}

impl Fates {
    fn count(&mut self, fate: &Fate) {
        match fate {
            Fate::Stored(_) => self.stored += 1,
            Fate::Dropped => self.dropped += 1,
            Fate::DeadLettered(_) => self.dead_lettered += 1,
        }
    }
}

/// How often the second chain added, removed or changed one key.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KeyCount {
    /// Events where only the second chain has it.
    pub added: u64,
    /// Events where only the first chain has it.
    pub removed: u64,
    /// Events where both have it, with other values.
    pub changed: u64,
}

/// One event that differs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    /// Its uuid.
    pub uuid: String,
    /// Its name.
    pub event: String,
    /// What the first chain made of it (`stored`, `dropped`, `dead-lettered: why`).
    pub first: String,
    /// What the second chain made of it.
    pub second: String,
    /// The fields that differ when both stored it.
    pub changes: Vec<Change>,
}

/// One kind of difference: how often, with samples.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Difference {
    /// Events of this kind.
    pub count: u64,
    /// The first few.
    pub samples: Vec<Sample>,
}

/// The comparison of two chains on the same events.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Diff {
    /// Events compared.
    pub events: u64,
    /// What the first chain (the current one, or the live one) did.
    pub first: Fates,
    /// What the second chain (the candidate, or the shadow) did.
    pub second: Fates,
    /// Events both chains made the same of.
    pub same: u64,
    /// Kinds of difference (`stored → dropped`, `changed`...), by name.
    pub differences: BTreeMap<String, Difference>,
    /// Keys the second chain stored differently, by key (`properties.$ip`, `$set.email`).
    pub keys: BTreeMap<String, KeyCount>,
}

impl Diff {
    /// Adds one event: `name` and `uuid`, and what each chain made of it.
    pub fn add(&mut self, uuid: &str, name: &str, first: &Fate, second: &Fate) {
        self.events += 1;
        self.first.count(first);
        self.second.count(second);
        let (kind, changed) = match (first.stored(), second.stored()) {
            (Some(a), Some(b)) => {
                let changed = changes(a, b);
                if changed.is_empty() {
                    self.same += 1;
                    return;
                }
                ("changed".to_owned(), changed)
            }
            _ if first.label() == second.label() => {
                self.same += 1;
                return;
            }
            _ => (
                format!("{} → {}", first.label(), second.label()),
                Vec::new(),
            ),
        };
        for change in &changed {
            let key = if self.keys.len() < MAX_KEYS || self.keys.contains_key(&change.key) {
                change.key.clone()
            } else {
                "(other keys)".to_owned()
            };
            let count = self.keys.entry(key).or_default();
            match (&change.before, &change.after) {
                (None, _) => count.added += 1,
                (_, None) => count.removed += 1,
                _ => count.changed += 1,
            }
        }
        let difference = self.differences.entry(kind).or_default();
        difference.count += 1;
        if difference.samples.len() < SAMPLES {
            let describe = |fate: &Fate| match fate {
                Fate::DeadLettered(why) => format!("dead-lettered: {why}"),
                other => other.label().to_owned(),
            };
            difference.samples.push(Sample {
                uuid: uuid.to_owned(),
                event: name.to_owned(),
                first: describe(first),
                second: describe(second),
                changes: changed,
            });
        }
    }

    /// Adds every event of `inputs` (their uuid and name), as `first` and `second` made them.
    pub fn add_all(
        &mut self,
        inputs: &[(String, String)],
        first: &HashMap<String, Fate>,
        second: &HashMap<String, Fate>,
    ) {
        for (uuid, name) in inputs {
            let a = first.get(uuid).unwrap_or(&Fate::Dropped);
            let b = second.get(uuid).unwrap_or(&Fate::Dropped);
            self.add(uuid, name, a, b);
        }
    }

    /// The diff as terminal lines: outcomes side by side, kinds of difference, keys.
    pub fn render(&self, first: &str, second: &str) -> String {
        let mut out = String::new();
        out.push_str(&format!("{:<16} {:>12} {:>12}\n", "events", first, second));
        for (label, a, b) in [
            ("stored", self.first.stored, self.second.stored),
            ("dropped", self.first.dropped, self.second.dropped),
            (
                "dead-lettered",
                self.first.dead_lettered,
                self.second.dead_lettered,
            ),
        ] {
            out.push_str(&format!("{label:<16} {a:>12} {b:>12}\n"));
        }
        out.push_str(&format!(
            "\n{} of {} events the same; {} differ\n",
            self.same,
            self.events,
            self.events - self.same
        ));
        for (kind, difference) in &self.differences {
            out.push_str(&format!("  {kind}: {}\n", difference.count));
        }
        if !self.keys.is_empty() {
            out.push_str(&format!(
                "\n{:<40} {:>9} {:>9} {:>9}\n",
                format!("key ({second} vs {first})"),
                "added",
                "removed",
                "changed"
            ));
            for (key, count) in &self.keys {
                out.push_str(&format!(
                    "{key:<40} {:>9} {:>9} {:>9}\n",
                    count.added, count.removed, count.changed
                ));
            }
        }
        for (kind, difference) in &self.differences {
            for sample in &difference.samples {
                out.push_str(&format!(
                    "\nsample ({kind}): {} {} — {first}: {}, {second}: {}\n",
                    sample.event, sample.uuid, sample.first, sample.second
                ));
                for change in &sample.changes {
                    out.push_str(&format!(
                        "    {}: {} → {}\n",
                        change.key,
                        show(change.before.as_ref()),
                        show(change.after.as_ref())
                    ));
                }
            }
        }
        out
    }
}

fn show(value: Option<&serde_json::Value>) -> String {
    value.map_or_else(|| "(absent)".to_owned(), ToString::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(properties: serde_json::Value) -> Fate {
        Fate::Stored(StoredEvent {
            uuid: "u".into(),
            event: "$pageview".into(),
            distinct_id: "d".into(),
            timestamp: "t".into(),
            ip: None,
            properties,
            set: None,
            set_once: None,
            team_id: 1,
        })
    }

    #[test]
    fn keys_and_kinds_are_counted_with_samples() {
        let mut diff = Diff::default();
        for i in 0..5 {
            diff.add(
                &format!("u{i}"),
                "$pageview",
                &stored(json!({"$ip": "1.2.3.4", "a": 1})),
                &stored(json!({"a": 2})),
            );
        }
        diff.add("v", "$pageview", &stored(json!({})), &Fate::Dropped);
        diff.add("w", "$pageview", &Fate::Dropped, &Fate::Dropped);
        assert_eq!(diff.events, 7);
        assert_eq!(diff.same, 1);
        assert_eq!(diff.keys["properties.$ip"].removed, 5);
        assert_eq!(diff.keys["properties.a"].changed, 5);
        assert_eq!(diff.differences["changed"].count, 5);
        assert_eq!(diff.differences["changed"].samples.len(), SAMPLES);
        assert_eq!(diff.differences["stored → dropped"].count, 1);
        assert_eq!((diff.first.stored, diff.second.dropped), (6, 2));
        assert!(
            diff.render("current", "candidate")
                .contains("properties.$ip")
        );
    }
}
