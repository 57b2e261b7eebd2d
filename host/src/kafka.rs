//! What sluice's Kafka clients share: a producer that waits for every in-sync replica
//! ([`producer`], [`deliver`]) and one member of a consumer group that commits only what its
//! owner acknowledges ([`GroupConsumer`]). Capture and the worker's sink produce; the worker (on
//! the ingest topic) and the loader (on the stored topics) consume.

use futures::future::join_all;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// A producer to `brokers` with `acks=all`, idempotence and lz4 compression, which fails a
/// message not acknowledged within `delivery_timeout`, takes messages of up to
/// `max_message_bytes` and waits up to `linger` for more messages to send with one.
pub fn producer(
    brokers: &str,
    delivery_timeout: Duration,
    max_message_bytes: usize,
    linger: Duration,
) -> Result<FutureProducer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", linger.as_millis().to_string())
        .set(
            "message.timeout.ms",
            delivery_timeout.as_millis().to_string(),
        )
        // Room for the message's own framing beyond its payload.
        .set(
            "message.max.bytes",
            (max_message_bytes + 64 * 1024).to_string(),
        )
        .create()
}

/// Sends every record, then waits until each is acknowledged; the first failure, if any.
/// Records that were delivered before one failed stay delivered (the caller sends them again,
/// and whoever reads them is idempotent).
pub async fn deliver<'a>(
    producer: &FutureProducer,
    records: impl IntoIterator<Item = FutureRecord<'a, str, [u8]>>,
) -> Result<(), KafkaError> {
    let mut deliveries = Vec::new();
    for record in records {
        deliveries.push(producer.send_result(record).map_err(|(error, _)| error)?);
    }
    for delivery in join_all(deliveries).await {
        match delivery {
            Ok(Ok(_)) => {}
            Ok(Err((error, _))) => return Err(error),
            Err(_) => return Err(KafkaError::Canceled),
        }
    }
    Ok(())
}

/// Where a message read by a [`GroupConsumer`] was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Which of the consumer's topics it came from (index into the topics it joined with).
    pub topic: usize,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}

/// The offsets to commit after what was read: per topic and partition, the offset after the
/// last message read.
#[derive(Debug, Default)]
pub struct Offsets {
    next: BTreeMap<(usize, i32), i64>,
}

impl Offsets {
    fn saw(&mut self, position: Position) {
        self.next
            .insert((position.topic, position.partition), position.offset + 1);
    }

    /// Whether nothing was read.
    pub fn is_empty(&self) -> bool {
        self.next.is_empty()
    }
}

/// How often a consumer measures its lag.
const LAG_EVERY: Duration = Duration::from_secs(5);

/// One member of a consumer group on some topics, reading at least once: nothing is committed
/// until its owner says so ([`GroupConsumer::commit`]); what was read and not committed can be
/// read again ([`GroupConsumer::rewind`]); a member that dies or loses partitions leaves them
/// uncommitted, so their next owner reads them again.
pub struct GroupConsumer {
    consumer: BaseConsumer,
    topics: Vec<String>,
    /// Where each partition read and not committed began.
    unacknowledged: BTreeMap<(usize, i32), i64>,
    lag_measured: Option<Instant>,
    lag: Arc<AtomicI64>,
}

impl GroupConsumer {
    /// Joins `group` on `brokers`, subscribed to `topics`. A member silent for `session_timeout`
    /// loses its partitions to the others.
    pub fn join(
        brokers: &str,
        group: &str,
        topics: &[&str],
        session_timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set(
                "session.timeout.ms",
                session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (session_timeout.as_millis() / 4).max(100).to_string(),
            )
            .create()?;
        consumer.subscribe(topics)?;
        Ok(Self {
            consumer,
            topics: topics.iter().map(|t| t.to_string()).collect(),
            unacknowledged: BTreeMap::new(),
            lag_measured: None,
            // Unknown until measured.
            lag: Arc::new(AtomicI64::new(-1)),
        })
    }

    /// The messages after this member's position in all its partitions, as last measured (-1
    /// until measured), shared for readiness checks.
    pub fn lag(&self) -> Arc<AtomicI64> {
        self.lag.clone()
    }

    /// Up to `max` messages, waiting at most `wait` for the first, each made into a `T` by
    /// `read` from its position and payload (borrowed from the client: no copy is made here);
    /// adds them to `offsets`.
    pub fn poll<T>(
        &mut self,
        max: usize,
        wait: Duration,
        offsets: &mut Offsets,
        mut read: impl FnMut(Position, &[u8]) -> T,
    ) -> Result<Vec<T>, KafkaError> {
        /// How long a poll waits for more messages once it has one.
        const FILL_WAIT: Duration = Duration::from_millis(10);
        self.measure_lag();
        let mut read_all = Vec::new();
        let mut timeout = wait;
        while read_all.len() < max {
            let Some(message) = self.consumer.poll(timeout) else {
                break;
            };
            let message = message?;
            // Take what is arriving with it too, but do not wait for more.
            timeout = FILL_WAIT;
            let position = Position {
                topic: self
                    .topics
                    .iter()
                    .position(|t| t == message.topic())
                    .unwrap_or_default(),
                partition: message.partition(),
                offset: message.offset(),
            };
            self.unacknowledged
                .entry((position.topic, position.partition))
                .or_insert(position.offset);
            offsets.saw(position);
            read_all.push(read(position, message.payload().unwrap_or_default()));
        }
        Ok(read_all)
    }

    /// Moves each partition read and not committed back to where its reading began. A
    /// partition this member no longer has is left to its next owner (which reads it from the
    /// last commit); one that cannot be moved back yet is tried again by the next call, and
    /// until a call returns `Ok` the caller must not poll, or it would read past what it has
    /// not acknowledged.
    pub fn rewind(&mut self) -> Result<(), KafkaError> {
        if self.unacknowledged.is_empty() {
            return Ok(());
        }
        let assigned = self.consumer.assignment()?;
        let (consumer, topics) = (&self.consumer, &self.topics);
        let mut failed = None;
        self.unacknowledged.retain(|(topic, partition), offset| {
            let name = &topics[*topic];
            if assigned.find_partition(name, *partition).is_none() {
                return false;
            }
            let moved = consumer.seek(
                name,
                *partition,
                Offset::Offset(*offset),
                Duration::from_secs(5),
            );
            match moved {
                Ok(()) => false,
                Err(error) => {
                    failed.get_or_insert(error);
                    true
                }
            }
        });
        failed.map_or(Ok(()), Err)
    }

    /// Commits `offsets`, which acknowledges everything read before them.
    pub fn commit(&mut self, offsets: Offsets) -> Result<(), KafkaError> {
        let mut list = TopicPartitionList::new();
        for ((topic, partition), next) in &offsets.next {
            list.add_partition_offset(&self.topics[*topic], *partition, Offset::Offset(*next))?;
            self.unacknowledged.remove(&(*topic, *partition));
        }
        self.consumer.commit(&list, CommitMode::Sync)
    }

    /// Sets `sluice_kafka_consumer_lag_events` for each assigned partition (the messages after
    /// this member's position), at most every [`LAG_EVERY`]; a failure only skips a sample.
    fn measure_lag(&mut self) {
        if self.lag_measured.is_some_and(|at| at.elapsed() < LAG_EVERY) {
            return;
        }
        self.lag_measured = Some(Instant::now());
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        let mut total = 0;
        for element in positions.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            let Ok((low, high)) =
                self.consumer
                    .fetch_watermarks(topic, partition, Duration::from_secs(1))
            else {
                return;
            };
            let position = match element.offset() {
                Offset::Offset(offset) => offset,
                _ => low,
            };
            let lag = (high - position).max(0);
            total += lag;
            metrics::gauge!("sluice_kafka_consumer_lag_events", "topic" => topic.to_owned(), "partition" => partition.to_string())
                .set(lag as f64);
        }
        self.lag.store(total, Ordering::SeqCst);
    }
}
