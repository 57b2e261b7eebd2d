//! The Kafka ingest: capture produces each event to the ingest topic ([`KafkaAppend`]), workers
//! consume it as one consumer group ([`KafkaIngest`]). How it keeps the contract of
//! [`crate::ingest`]:
//!
//! - **Durable before acknowledged.** The producer has `acks=all` and idempotence on; `append`
//!   resolves only once every event of the request is acknowledged by the in-sync replicas, and
//!   fails (capture answers `503`) if any is not within `delivery_timeout`. Events of a request
//!   that were delivered before one failed are delivered again by the client's retry: the sink's
//!   idempotence on `(team, uuid)` absorbs them.
//! - **Arrival order per key.** Each event is one message keyed `token:distinct_id`, so one
//!   user's events stay in one partition, read in offset order.
//! - **At-least-once.** Offsets are committed only by `ack`, after the sink stored the round;
//!   a receipt commits the offset after the last message of each partition it covers, which
//!   acknowledges every message before it. A poll after a round that was not acknowledged reads
//!   that round again (the consumer seeks back), and a worker that dies or loses its partitions
//!   leaves them uncommitted, so their next owner reads them again.
//! - Each message is the event in the wire encoding (without its length prefix); the team is in
//!   the event itself.

use super::{
    Append, AppendError, Appended, Appending, Ingest, IngestError, Ingested, Polled, Receipt,
};
use crate::kafka::{self, GroupConsumer, Offsets};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sluice_abi::wire::{self, BatchReader, Field};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Where the ingest topic is and how it is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The ingest topic.
    pub topic: String,
    /// The workers' consumer group.
    pub group: String,
    /// Largest event (encoded) the topic takes; a larger one is refused with `413`.
    pub max_event_bytes: usize,
    /// How long an event may take to be acknowledged before capture answers `503`.
    pub delivery_timeout: Duration,
    /// How long a worker may go silent before the group gives its partitions to the others
    /// (a killed worker's partitions move after this).
    pub session_timeout: Duration,
}

/// The capture side: a producer to the ingest topic.
pub struct KafkaAppend {
    producer: FutureProducer,
    topic: String,
    max_event_bytes: usize,
    delivery_timeout: Duration,
    in_flight: Arc<AtomicU64>,
}

impl KafkaAppend {
    /// A producer for `settings`.
    pub fn new(settings: &KafkaSettings) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: kafka::producer(
                &settings.brokers,
                settings.delivery_timeout,
                settings.max_event_bytes,
                // Concurrent requests' events share a produce request (PostHog's capture: 20 ms).
                Duration::from_millis(20),
            )?,
            topic: settings.topic.clone(),
            max_event_bytes: settings.max_event_bytes,
            delivery_timeout: settings.delivery_timeout,
            in_flight: Arc::default(),
        })
    }
}

/// What a failed delivery means for capture.
fn append_error(error: &KafkaError) -> AppendError {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::QueueFull) => AppendError::Full(0),
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => AppendError::TooLarge(error.to_string()),
        _ => AppendError::Unavailable(error.to_string()),
    }
}

/// Counts events in flight until dropped.
struct InFlight(Arc<AtomicU64>, u64);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::SeqCst);
    }
}

impl Append for KafkaAppend {
    fn append(&self, appended: Appended) -> Appending<'_> {
        Box::pin(async move {
            let unreadable = |e: wire::WireError| AppendError::Unavailable(e.to_string());
            let events = BatchReader::new(&appended.payload)
                .and_then(|reader| reader.collect::<Result<Vec<_>, _>>())
                .map_err(unreadable)?;
            if let Some(large) = events
                .iter()
                .find(|e| e.body().len() > self.max_event_bytes)
            {
                return Err(AppendError::TooLarge(format!(
                    "event {} is {} bytes encoded; the ingest takes at most {}",
                    uuid::Uuid::from_bytes(large.uuid()),
                    large.body().len(),
                    self.max_event_bytes
                )));
            }
            self.in_flight
                .fetch_add(events.len() as u64, Ordering::SeqCst);
            let _counted = InFlight(self.in_flight.clone(), events.len() as u64);
            let started = std::time::Instant::now();
            let keys = events
                .iter()
                .map(|event| {
                    let distinct_id = event.text(Field::DistinctId).map_err(unreadable)?;
                    Ok(format!(
                        "{}:{}",
                        appended.token,
                        distinct_id.unwrap_or_default()
                    ))
                })
                .collect::<Result<Vec<_>, AppendError>>()?;
            let records = events.iter().zip(&keys).map(|(event, key)| {
                FutureRecord::to(&self.topic)
                    .key(key.as_str())
                    .payload(event.body())
            });
            // librdkafka times messages out on its own, but one in flight to a broker that went
            // away can outlive `message.timeout.ms`; capture never waits past the bound it
            // promises (a late delivery is a duplicate the sink absorbs).
            let bound = self.delivery_timeout + Duration::from_secs(1);
            let delivered = tokio::time::timeout(bound, kafka::deliver(&self.producer, records))
                .await
                .unwrap_or_else(|_| {
                    Err(KafkaError::MessageProduction(
                        RDKafkaErrorCode::MessageTimedOut,
                    ))
                });
            if let Err(error) = delivered {
                metrics::counter!("sluice_ingest_delivery_failures_total").increment(1);
                return Err(append_error(&error));
            }
            metrics::histogram!("sluice_ingest_produce_seconds")
                .record(started.elapsed().as_secs_f64());
            Ok(())
        })
    }

    fn depth(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Whether a broker answers with the ingest topic's metadata.
    fn reachable(&self) -> Result<(), String> {
        topic_reachable(&self.producer, &self.topic)
    }
}

/// Whether a broker of `producer` answers with `topic`'s metadata, within a second.
pub fn topic_reachable(producer: &FutureProducer, topic: &str) -> Result<(), String> {
    let metadata = producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(1))
        .map_err(|e| format!("the Kafka brokers do not answer: {e}"))?;
    match metadata.topics().first().and_then(|t| t.error()) {
        None => Ok(()),
        Some(error) => Err(format!(
            "topic {topic}: {:?}",
            RDKafkaErrorCode::from(error)
        )),
    }
}

/// The worker side: one member of the workers' consumer group.
pub struct KafkaIngest {
    consumer: GroupConsumer,
}

/// Commits the offset after the last message of each partition of one round.
#[derive(Debug)]
pub struct KafkaReceipt(Offsets);

impl Receipt for KafkaReceipt {}

fn unavailable(error: KafkaError) -> IngestError {
    IngestError::Unavailable(error.to_string())
}

impl KafkaIngest {
    /// Joins the consumer group of `settings` on its topic.
    pub fn new(settings: &KafkaSettings) -> Result<Self, KafkaError> {
        Ok(Self {
            consumer: GroupConsumer::join(
                &settings.brokers,
                &settings.group,
                &[&settings.topic],
                settings.session_timeout,
            )?,
        })
    }

    /// This worker's consumer lag, as last measured (-1 until measured).
    pub fn lag(&self) -> Arc<AtomicI64> {
        self.consumer.lag()
    }
}

impl Ingest for KafkaIngest {
    type Receipt = KafkaReceipt;

    fn poll(
        &mut self,
        max_events: usize,
        wait: Duration,
    ) -> Result<Option<Polled<KafkaReceipt>>, IngestError> {
        // A round not acknowledged is read again.
        self.consumer.rewind().map_err(unavailable)?;
        let mut offsets = Offsets::default();
        let batches = self
            .consumer
            .poll(max_events, wait, &mut offsets, |position, body| {
                // A batch of this one event, built in place: count, length prefix, event.
                let mut payload = Vec::with_capacity(body.len() + 8);
                payload.extend_from_slice(&1u32.to_le_bytes());
                payload.extend_from_slice(&(body.len() as u32).to_le_bytes());
                payload.extend_from_slice(body);
                // An unreadable message still goes to the worker, which quarantines it.
                let team_id = wire::parse_encoded(&payload[4..]).map_or(0, |raw| raw.team_id());
                Ingested {
                    position: format!("{}:{}", position.partition, position.offset),
                    team_id,
                    events: 1,
                    payload,
                }
            })
            .map_err(unavailable)?;
        if batches.is_empty() {
            return Ok(None);
        }
        Ok(Some(Polled {
            events: batches.len() as u64,
            batches,
            receipt: KafkaReceipt(offsets),
        }))
    }

    fn ack(&mut self, receipt: KafkaReceipt) -> Result<(), IngestError> {
        self.consumer.commit(receipt.0).map_err(unavailable)
    }
}

/// The contract, against librdkafka's mock cluster: a Kafka-protocol broker on localhost TCP.
#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use sluice_abi::wire::BatchWriter;
    use std::collections::BTreeMap;

    fn settings(brokers: String) -> KafkaSettings {
        KafkaSettings {
            brokers,
            topic: "ingest".into(),
            group: "workers".into(),
            max_event_bytes: 1_000,
            delivery_timeout: Duration::from_secs(2),
            session_timeout: Duration::from_secs(6),
        }
    }

    /// A batch of the events of `team`: one per `(distinct_id, n)`, uuid bytes all `n`.
    fn appended(team: u64, events: &[(&str, u8)]) -> Appended {
        let mut batch = BatchWriter::default();
        for (distinct_id, n) in events {
            batch
                .push(&wire::EventFields {
                    uuid: [*n; 16],
                    team_id: team,
                    timestamp_ms: 0,
                    event: "e",
                    distinct_id,
                    ip: None,
                    properties: "{}",
                    set: None,
                    set_once: None,
                })
                .unwrap();
        }
        Appended {
            team_id: team,
            token: format!("phc_{team}"),
            events: events.len() as u64,
            payload: batch.finish(),
            historical: false,
        }
    }

    /// The uuid byte and distinct id of each polled event, per user in the order polled.
    fn by_user(polled: &Polled<KafkaReceipt>) -> BTreeMap<String, Vec<u8>> {
        let mut users: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for batch in &polled.batches {
            for raw in BatchReader::new(&batch.payload).unwrap() {
                let raw = raw.unwrap();
                let user = raw.text(Field::DistinctId).unwrap().unwrap().to_owned();
                users.entry(user).or_default().push(raw.uuid()[0]);
            }
        }
        users
    }

    fn poll_all(ingest: &mut KafkaIngest, expected: u64) -> Polled<KafkaReceipt> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(polled) = ingest.poll(1_000, Duration::from_millis(500)).unwrap() {
                assert_eq!(polled.events, expected, "one round holds them all");
                return polled;
            }
            assert!(std::time::Instant::now() < deadline, "nothing to poll");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_are_delivered_in_order_per_user_read_again_until_acknowledged_and_refused_when_too_large_or_undeliverable()
     {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("ingest", 4, 1).unwrap();
        let settings = settings(cluster.bootstrap_servers());
        let append = KafkaAppend::new(&settings).unwrap();
        let users = ["ann", "bob", "cid", "dee", "eve"];
        for n in 0..4u8 {
            let events: Vec<(&str, u8)> = users.iter().map(|u| (*u, n)).collect();
            append.append(appended(1, &events)).await.unwrap();
        }

        // Order per key: each user's events come in the order they were appended.
        let worker_settings = settings.clone();
        let (first, again, rest) = tokio::task::spawn_blocking(move || {
            let mut ingest = KafkaIngest::new(&worker_settings).unwrap();
            let first = poll_all(&mut ingest, 20);
            // Not acknowledged: the same round comes again.
            let again = poll_all(&mut ingest, 20);
            let read_again = by_user(&again);
            ingest.ack(again.receipt).unwrap();
            let rest = ingest.poll(1_000, Duration::from_millis(500)).unwrap();
            (by_user(&first), read_again, rest.map(|p| p.events))
        })
        .await
        .unwrap();
        for user in users {
            assert_eq!(first[user], [0, 1, 2, 3], "{user}");
        }
        assert_eq!(first, again);
        assert_eq!(rest, None, "acknowledged");

        // A new member of the group starts after what was committed.
        append.append(appended(2, &[("ann", 9)])).await.unwrap();
        let next = tokio::task::spawn_blocking(move || {
            let mut ingest = KafkaIngest::new(&settings).unwrap();
            by_user(&poll_all(&mut ingest, 1))
        })
        .await
        .unwrap();
        assert_eq!(next, BTreeMap::from([("ann".to_owned(), vec![9])]));

        // Too large: refused whole, with a reason, before anything is produced.
        let mut large = appended(1, &[("ann", 1)]);
        let big = "x".repeat(2_000);
        let mut batch = BatchWriter::default();
        batch
            .push(&wire::EventFields {
                uuid: [7; 16],
                team_id: 1,
                timestamp_ms: 0,
                event: "e",
                distinct_id: "ann",
                ip: None,
                properties: &format!("{{\"big\":\"{big}\"}}"),
                set: None,
                set_once: None,
            })
            .unwrap();
        large.payload = batch.finish();
        assert!(matches!(
            append.append(large).await,
            Err(AppendError::TooLarge(_))
        ));

        // The broker down: the append fails within the delivery timeout, never resolves Ok.
        cluster.broker_down(1).unwrap();
        let started = std::time::Instant::now();
        let down = append.append(appended(1, &[("bob", 5)])).await;
        assert!(matches!(down, Err(AppendError::Unavailable(_))), "{down:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        cluster.broker_up(1).unwrap();
    }
}
