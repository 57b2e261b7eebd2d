//! Export runners' events from ClickHouse, keeping the contract of
//! [`crate::export::source`].
//!
//! **Order.** A team's events are in the order of the processed-events topic, per partition:
//! each row carries the partition and offset it was loaded from, and the loader inserts a
//! partition's rows in offset order, each batch in one insert. So a read never finds a gap that
//! a later read fills: within a partition, whatever is readable is a prefix. Reads merge the
//! partitions by time stored (fairly: each partition's next rows, `LIMIT n BY` partition),
//! keeping each partition's offset order.
//!
//! **Cursors** name, per partition, the last offset read, and which partition the event itself
//! is in: `<partition>.<p>-<offset>_<p>-<offset>...` (`0`: before everything). Reading after a
//! cursor takes, per partition, the offsets above it. A range starts just before its first
//! event's offset in that event's partition, and the other partitions where the first event's
//! cursor has them.
//!
//! **Copies.** Rows are read with `FINAL`, one per `(team, uuid)`. An event the worker stored
//! twice (it was killed before acknowledging) has two rows, the later kept: if an export read the
//! first before the second was loaded, it reads the event again at the second's place. Exports
//! are at least once in that case, as the export contract allows.

use super::rows::{EventRow, event_fields};
use super::{ClickHouse, Table};
use crate::export::source::{Cursor, Lag, Source, SourceError, StoredEvent};
use serde::Deserialize;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// How long [`Source::wait`] waits at most before the runner reads again.
const POLL: Duration = Duration::from_millis(500);

/// Per partition, the last offset read.
type Offsets = BTreeMap<i32, i64>;

/// An events row read with where it was loaded from.
struct PositionedRow {
    row: EventRow,
    kafka_partition: i32,
    kafka_offset: i64,
}

impl From<EventRow> for PositionedRow {
    fn from(row: EventRow) -> Self {
        Self {
            kafka_partition: row.kafka_partition.unwrap_or_default(),
            kafka_offset: row.kafka_offset.unwrap_or_default(),
            row,
        }
    }
}

/// The stored events in ClickHouse.
pub struct ClickHouseSource {
    clickhouse: ClickHouse,
}

impl ClickHouseSource {
    /// Reads the events table of `clickhouse`.
    pub fn new(clickhouse: ClickHouse) -> Self {
        Self { clickhouse }
    }

    /// The rows of `team` after `above` (through `through`, if given) per partition, at most
    /// `per_partition` of each, merged in export order.
    fn read(
        &self,
        team: u64,
        above: &Offsets,
        through: Option<&Offsets>,
        per_partition: usize,
    ) -> Result<Vec<PositionedRow>, SourceError> {
        let Some(filter) = filter(above, through) else {
            return Ok(Vec::new());
        };
        let rows: Vec<EventRow> = self.select(&format!(
            "SELECT team_id, uuid, event, distinct_id, timestamp_ms, ip, properties, set_json, \
             set_once_json, stored_at_ms, kafka_partition, kafka_offset FROM {} FINAL \
             WHERE team_id = {team} AND ({filter}) ORDER BY kafka_partition, kafka_offset \
             LIMIT {per_partition} BY kafka_partition",
            self.table()
        ))?;
        Ok(merge(rows.into_iter().map(PositionedRow::from).collect()))
    }

    fn table(&self) -> String {
        format!("{}.{}", self.clickhouse.database(), Table::Events.name())
    }

    fn select<T: serde::de::DeserializeOwned>(&self, query: &str) -> Result<Vec<T>, SourceError> {
        self.clickhouse
            .select(query)
            .map_err(|e| SourceError::Unavailable(e.to_string()))
    }
}

/// The condition on `kafka_partition` and `kafka_offset` of the rows after `above` (through
/// `through`, if given; partitions `above` does not name start from their beginning); `None`
/// if no row can match.
fn filter(above: &Offsets, through: Option<&Offsets>) -> Option<String> {
    let partitions: Vec<i32> = through.unwrap_or(above).keys().copied().collect();
    let mut conditions: Vec<String> = partitions
        .iter()
        .map(|p| {
            let low = above.get(p).copied().unwrap_or(-1);
            let high = through
                .and_then(|t| t.get(p))
                .map_or_else(String::new, |h| format!(" AND kafka_offset <= {h}"));
            format!("(kafka_partition = {p} AND kafka_offset > {low}{high})")
        })
        .collect();
    if through.is_none() {
        let known: Vec<String> = partitions.iter().map(i32::to_string).collect();
        conditions.push(if known.is_empty() {
            "1".to_owned()
        } else {
            format!("kafka_partition NOT IN ({})", known.join(", "))
        });
    }
    (!conditions.is_empty()).then(|| conditions.join(" OR "))
}

/// `rows` (in partition, offset order) merged by time stored, each partition's order kept.
fn merge(rows: Vec<PositionedRow>) -> Vec<PositionedRow> {
    let mut lanes: BTreeMap<i32, VecDeque<PositionedRow>> = BTreeMap::new();
    for row in rows {
        lanes.entry(row.kafka_partition).or_default().push_back(row);
    }
    let mut merged = Vec::new();
    while let Some(lane) = lanes
        .values_mut()
        .filter(|lane| !lane.is_empty())
        .min_by_key(|lane| {
            lane.front()
                .map(|r| (r.row.stored_at_ms, r.kafka_partition))
        })
    {
        merged.extend(lane.pop_front());
    }
    merged
}

/// The offsets and own partition a cursor names.
fn parse(cursor: &Cursor) -> Result<(Option<i32>, Offsets), SourceError> {
    let invalid = || SourceError::InvalidCursor(cursor.as_str().to_owned());
    let text = cursor.as_str();
    if text == "0" {
        return Ok((None, Offsets::new()));
    }
    let (own, offsets) = text.split_once('.').ok_or_else(invalid)?;
    let offsets = offsets
        .split('_')
        .map(|pair| {
            let (p, o) = pair.split_once('-')?;
            Some((p.parse().ok()?, o.parse().ok()?))
        })
        .collect::<Option<Offsets>>()
        .ok_or_else(invalid)?;
    let own: i32 = own.parse().map_err(|_| invalid())?;
    if !offsets.contains_key(&own) {
        return Err(invalid());
    }
    Ok((Some(own), offsets))
}

/// The cursor of an event in partition `own` once `offsets` are read.
fn cursor(own: i32, offsets: &Offsets) -> Cursor {
    let pairs: Vec<String> = offsets.iter().map(|(p, o)| format!("{p}-{o}")).collect();
    Cursor::from_recorded(format!("{own}.{}", pairs.join("_")))
}

/// `rows` as exports read them, each with its cursor after `start`; at most `max_events`, and
/// (but for the first) at most `max_bytes` of encoded events.
fn stored(
    rows: Vec<PositionedRow>,
    start: Offsets,
    max_events: usize,
    max_bytes: usize,
) -> Result<Vec<StoredEvent>, SourceError> {
    let mut offsets = start;
    let mut events = Vec::new();
    let mut bytes = 0;
    for positioned in rows.into_iter().take(max_events) {
        let encoded = event_fields(&positioned.row)
            .encode()
            .map_err(|e| SourceError::Corrupt(e.to_string()))?;
        bytes += encoded.len();
        if !events.is_empty() && bytes > max_bytes {
            break;
        }
        offsets.insert(positioned.kafka_partition, positioned.kafka_offset);
        events.push(StoredEvent {
            cursor: cursor(positioned.kafka_partition, &offsets),
            stored_at_ms: positioned.row.stored_at_ms,
            event: positioned.row.event.clone(),
            encoded,
        });
    }
    Ok(events)
}

impl Source for ClickHouseSource {
    fn after(
        &mut self,
        team: u64,
        after: &Cursor,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, SourceError> {
        let (_, offsets) = parse(after)?;
        let rows = self.read(team, &offsets, None, max_events.max(1))?;
        stored(rows, offsets, max_events, max_bytes)
    }

    fn range(
        &mut self,
        team: u64,
        first: &Cursor,
        last: &Cursor,
    ) -> Result<Vec<StoredEvent>, SourceError> {
        let (own, mut start) = parse(first)?;
        let (_, through) = parse(last)?;
        // Just before the first event, in its own partition.
        if let Some(own) = own
            && let Some(offset) = start.get_mut(&own)
        {
            *offset -= 1;
        }
        let rows = self.read(team, &start, Some(&through), usize::MAX >> 1)?;
        stored(rows, start, usize::MAX, usize::MAX)
    }

    fn lag(&mut self, team: u64, after: &Cursor) -> Result<Lag, SourceError> {
        #[derive(Deserialize)]
        struct Counted {
            events: u64,
            oldest: i64,
        }
        let (_, offsets) = parse(after)?;
        let Some(filter) = filter(&offsets, None) else {
            return Ok(Lag::default());
        };
        let counted: Vec<Counted> = self.select(&format!(
            "SELECT count() AS events, min(stored_at_ms) AS oldest FROM {} FINAL \
             WHERE team_id = {team} AND ({filter})",
            self.table()
        ))?;
        Ok(counted.first().map_or_else(Lag::default, |c| Lag {
            events: c.events,
            oldest_stored_at_ms: (c.events > 0).then_some(c.oldest),
        }))
    }

    fn wait(&mut self, timeout: Duration) {
        std::thread::sleep(timeout.min(POLL));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickhouse::ClickHouseSettings;
    use crate::clickhouse::clickhouse_server::ClickHouseServer;
    use crate::store::uuid_text;

    /// An events row of `team`, uuid bytes all `n`, loaded from `partition` at `offset`.
    fn row(team: u64, n: u8, partition: i32, offset: i64, stored_at_ms: i64) -> String {
        let row = EventRow {
            team_id: team,
            uuid: uuid_text(&[n; 16]),
            event: format!("e{n}"),
            distinct_id: "u".into(),
            timestamp_ms: 0,
            ip: None,
            properties: "{}".into(),
            set_json: None,
            set_once_json: None,
            stored_at_ms,
            kafka_partition: Some(partition),
            kafka_offset: Some(offset),
        };
        serde_json::to_string(&row).unwrap() + "\n"
    }

    fn names(events: &[StoredEvent]) -> Vec<&str> {
        events.iter().map(|e| e.event.as_str()).collect()
    }

    #[test]
    fn reads_each_partition_in_offset_order_fairly_and_ranges_read_the_same_events_again() {
        let server = ClickHouseServer::start();
        let clickhouse = ClickHouse::new(&ClickHouseSettings {
            url: server.url.clone(),
            database: "source_test".into(),
            user: "default".into(),
            password: None,
        })
        .unwrap();
        clickhouse.create_tables().unwrap();
        let insert = |rows: &[String]| {
            clickhouse
                .insert(Table::Events, rows.concat().as_bytes())
                .unwrap()
        };
        // Team 1 in partitions 0 and 1; team 2 between them; one row loaded twice.
        insert(&[
            row(1, 1, 0, 0, 10),
            row(2, 9, 0, 1, 11),
            row(1, 3, 0, 2, 30),
            row(1, 2, 1, 0, 20),
            row(1, 4, 1, 1, 40),
        ]);
        insert(&[row(1, 1, 0, 0, 10)]);
        let mut source = ClickHouseSource::new(clickhouse.clone());
        let all = usize::MAX;

        // Fair: the first two come from both partitions, by time stored.
        let first = source.after(1, &Cursor::start(), 2, all).unwrap();
        assert_eq!(names(&first), ["e1", "e2"]);
        let rest = source.after(1, &first[1].cursor, 10, all).unwrap();
        assert_eq!(names(&rest), ["e3", "e4"], "each row once, team 2 apart");
        assert!(
            source
                .after(1, &rest[1].cursor, 10, all)
                .unwrap()
                .is_empty()
        );

        // A range reads the same events again, in the same order.
        let range = source.range(1, &first[0].cursor, &rest[1].cursor).unwrap();
        assert_eq!(names(&range), ["e1", "e2", "e3", "e4"]);
        let tail = source.range(1, &rest[0].cursor, &rest[1].cursor).unwrap();
        assert_eq!(names(&tail), ["e3", "e4"]);
        assert_eq!(tail[1].cursor, rest[1].cursor);

        // Lag, and new rows after a read come after it, a new partition too.
        let lag = source.lag(1, &first[1].cursor).unwrap();
        assert_eq!((lag.events, lag.oldest_stored_at_ms), (2, Some(30)));
        insert(&[row(1, 5, 1, 7, 50), row(1, 6, 2, 0, 5)]);
        let new = source.after(1, &rest[1].cursor, 10, all).unwrap();
        assert_eq!(names(&new), ["e6", "e5"]);
        assert_eq!(source.lag(1, &new[1].cursor).unwrap(), Lag::default());

        // Bytes bound a read (the first event always fits); cursors are checked.
        let one = source.after(1, &Cursor::start(), 10, 1).unwrap();
        assert_eq!(names(&one), ["e6"]);
        for bad in ["x", "1.0-5", "0.0-x"] {
            assert!(matches!(
                source.after(1, &Cursor::from_recorded(bad.into()), 1, 1),
                Err(SourceError::InvalidCursor(_))
            ));
        }
    }
}
