//! The sink at scale: what the chains made is produced, as [`rows`], to the stored topics with
//! `acks=all` ([`KafkaSink`]), and the loader inserts it into ClickHouse
//! ([`crate::clickhouse::loader`]). A ClickHouse outage never stops the worker: the topics hold
//! what is stored until the loader catches up.
//!
//! How it keeps the contract of [`crate::sink`]: `store` returns once every row is acknowledged
//! by the in-sync replicas (durable); a row produced twice (a round stored again, a worker killed
//! before it acknowledged the ingest) is loaded twice and kept once by the tables'
//! `ReplacingMergeTree` sorting key `(team, uuid)` (idempotent); a round that failed halfway is
//! produced again whole.

use super::{Output, Sink, SinkError, Stored};
use crate::clickhouse::Topics;
use crate::clickhouse::rows::{self, Row};
use crate::ingest::Receipt;
use crate::kafka;
use crate::store::logs::{LogLine, LogStore};
use crate::store::{StoreError, now_ms};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Produces rows to their topics; shared by the sink and the log writer.
pub struct RowProducer {
    producer: FutureProducer,
    topics: Topics,
}

impl RowProducer {
    /// A producer to `topics` on `brokers` (see [`kafka::producer`]).
    pub fn new(
        brokers: &str,
        topics: Topics,
        delivery_timeout: std::time::Duration,
        max_message_bytes: usize,
    ) -> Result<Self, KafkaError> {
        Ok(Self {
            // A round is produced whole at once: nothing more is coming to wait for.
            producer: kafka::producer(
                brokers,
                delivery_timeout,
                max_message_bytes,
                std::time::Duration::from_millis(1),
            )?,
            topics,
        })
    }

    /// Produces `rows` and waits until every one is acknowledged.
    pub fn produce(&self, rows: &[Row]) -> Result<(), KafkaError> {
        let started = std::time::Instant::now();
        let records = rows.iter().map(|row| {
            FutureRecord::to(self.topics.of(row.table))
                .key(row.key.as_str())
                .payload(&row.json[..])
        });
        let delivered = futures::executor::block_on(kafka::deliver(&self.producer, records));
        if delivered.is_err() {
            metrics::counter!("sluice_sink_delivery_failures_total").increment(1);
        }
        metrics::histogram!("sluice_sink_produce_seconds").record(started.elapsed().as_secs_f64());
        delivered
    }
}

/// The worker's sink at scale.
pub struct KafkaSink(RowProducer);

impl KafkaSink {
    /// A sink producing with `producer`.
    pub fn new(producer: RowProducer) -> Self {
        Self(producer)
    }
}

impl Sink for KafkaSink {
    fn store(&mut self, output: &Output, _receipt: &mut dyn Receipt) -> Result<Stored, SinkError> {
        let now = now_ms();
        let mut produced = Vec::with_capacity(
            output.events.len() + output.recordings.len() + output.dead_letters.len(),
        );
        for event in &output.events {
            produced.push(rows::event(event, now)?);
        }
        for recording in &output.recordings {
            produced.push(rows::recording(recording, now)?);
        }
        for letter in &output.dead_letters {
            produced.push(rows::dead_letter(letter, now)?);
        }
        produced.extend(output.quarantined.iter().map(|q| rows::quarantined(q, now)));
        self.0.produce(&produced).map_err(|error| {
            match error.rdkafka_error_code() {
                // Sending it again cannot help: the worker sets it aside.
                Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
                    SinkError::Refused(error.to_string())
                }
                _ => SinkError::Unavailable(error.to_string()),
            }
        })?;
        Ok(Stored {
            events: output.events.len(),
            recordings: output.recordings.len(),
        })
    }
}

/// Plugin log lines at scale: produced to the logs topic, loaded into ClickHouse.
pub struct KafkaLogs(RowProducer);

impl KafkaLogs {
    /// Log lines produced with `producer`.
    pub fn new(producer: RowProducer) -> Self {
        Self(producer)
    }
}

impl LogStore for KafkaLogs {
    fn append(&mut self, lines: &[LogLine]) -> Result<(), StoreError> {
        let rows: Vec<Row> = lines.iter().map(rows::log).collect();
        self.0
            .produce(&rows)
            .map_err(|e| StoreError::Remote(format!("plugin log lines not delivered: {e}")))
    }
}
