//! Which backend each seam uses for a config: the embedded ones (this process's memory and its
//! data folder's SQLite) unless the config names the engines that replace them: `[kafka]` and
//! `[clickhouse]` for stored events (and the events exports read), recordings and plugin
//! logs, `[redis]`
//! for the cache, plugin storage, the run lock, the task history, the job queue and the export
//! state. The one place that chooses, for the server and the commands alike.

use crate::capabilities::Shared;
use crate::capabilities::cache::MemoryBackend;
use crate::capabilities::recordings::{RecordingStore, SqliteRecordings};
use crate::capabilities::storage::SqliteStorage;
use crate::clickhouse::recordings::ClickHouseRecordings;
use crate::clickhouse::retention::ClickHouseRetention;
use crate::clickhouse::source::ClickHouseSource;
use crate::clickhouse::{ClickHouse, ClickHouseSettings};
use crate::config::{Config, ConfigError, Problem};
use crate::export::source::{Source, SqliteSource};
use crate::export::state::ExportState;
use crate::export::state::sqlite::SqliteExportState;
use crate::housekeeping::{Embedded, Prune};
use crate::redis::Redis;
use crate::redis::cache::RedisCache;
use crate::redis::exports::RedisExportState;
use crate::redis::history::RedisHistory;
use crate::redis::jobs::RedisJobs;
use crate::redis::lock::RedisLock;
use crate::redis::retention::RedisRetention;
use crate::redis::storage::RedisStorage;
use crate::schedule::history::{SqliteHistory, TaskHistory};
use crate::schedule::jobs::{JobQueue, SqliteJobs};
use crate::schedule::lock::{LocalLock, RunLock};
use crate::signal::Signal;
use crate::sink::kafka::{KafkaLogs, RowProducer};
use crate::store::StoreError;
use crate::store::logs::{LogStore, SqliteLogs};
use std::path::PathBuf;
use std::sync::Arc;

/// The backends of one config, connected (clones share the connections).
#[derive(Clone)]
pub struct Backends {
    data_dir: PathBuf,
    redis: Option<Redis>,
    clickhouse: Option<ClickHouseSettings>,
}

impl Backends {
    /// Connects to what `config` names (Redis answers, or this fails naming `redis.url`).
    /// Blocking.
    pub fn connect(config: &Config) -> Result<Self, ConfigError> {
        let redis = config
            .redis
            .as_ref()
            .map(|redis| Redis::connect(&redis.settings()))
            .transpose()
            .map_err(|reason| ConfigError {
                path: config.path.clone(),
                problems: vec![Problem {
                    key: "redis.url".into(),
                    reason,
                }],
            })?;
        Ok(Self {
            data_dir: config.server.data_dir.clone(),
            redis,
            clickhouse: config.clickhouse.as_ref().map(|c| c.settings()),
        })
    }

    /// Where the capabilities keep their state. Blocking.
    pub fn shared(&self, config: &Config) -> anyhow::Result<Shared> {
        let logs: Box<dyn LogStore> = match row_producer(config)? {
            Some(rows) => Box::new(KafkaLogs::new(rows)),
            None => Box::new(SqliteLogs::open(&self.data_dir)?),
        };
        let recordings: Arc<dyn RecordingStore> = match &self.clickhouse {
            Some(settings) => {
                // The loader creates the tables too; until one of them has, `recordings`
                // answers `unavailable`.
                if let Err(error) = ClickHouse::new(settings).and_then(|c| c.create_tables()) {
                    tracing::warn!(%error, "cannot create the ClickHouse tables yet");
                }
                Arc::new(ClickHouseRecordings::new(settings.clone()))
            }
            None => Arc::new(SqliteRecordings::open(&self.data_dir)?),
        };
        Ok(match &self.redis {
            Some(redis) => Shared {
                logs,
                cache: Arc::new(RedisCache::new(redis.clone())),
                storage: Arc::new(RedisStorage::new(redis.clone())),
                jobs: self.job_queue()?,
                recordings,
            },
            None => Shared {
                logs,
                cache: Arc::new(MemoryBackend::default()),
                storage: Arc::new(SqliteStorage::open(&self.data_dir)?),
                jobs: self.job_queue()?,
                recordings,
            },
        })
    }

    /// The live `storage` and `cache` a sandboxed run reads through to: Redis's, or the
    /// embedded storage of the data folder if a server made one (the embedded cache lives in
    /// the server's memory, out of reach). Blocking.
    pub fn live(&self) -> Result<crate::capabilities::sandbox::Live, StoreError> {
        Ok(match &self.redis {
            Some(redis) => crate::capabilities::sandbox::Live {
                storage: Some(Arc::new(RedisStorage::new(redis.clone()))),
                cache: Some(Arc::new(RedisCache::new(redis.clone()))),
                data_dir: Some(self.data_dir.clone()),
            },
            // A server that never ran has no state to read.
            None if !self.data_dir.join(crate::store::DB_FILE).is_file() => {
                crate::capabilities::sandbox::Live {
                    data_dir: Some(self.data_dir.clone()),
                    ..Default::default()
                }
            }
            None => crate::capabilities::sandbox::Live {
                storage: Some(Arc::new(SqliteStorage::open(&self.data_dir)?)),
                cache: None,
                data_dir: Some(self.data_dir.clone()),
            },
        })
    }

    /// The job queue.
    pub fn job_queue(&self) -> Result<Arc<dyn JobQueue>, StoreError> {
        Ok(match &self.redis {
            Some(redis) => Arc::new(RedisJobs::new(redis.clone())),
            None => Arc::new(SqliteJobs::open(&self.data_dir)?),
        })
    }

    /// The run lock scheduler nodes share.
    pub fn run_lock(&self) -> Result<Arc<dyn RunLock>, StoreError> {
        Ok(match &self.redis {
            Some(redis) => Arc::new(RedisLock::new(redis.clone())),
            None => Arc::new(LocalLock::open(&self.data_dir)?),
        })
    }

    /// A handle on the export state (one per runner).
    pub fn export_state(&self) -> Result<Box<dyn ExportState>, StoreError> {
        Ok(match &self.redis {
            Some(redis) => Box::new(RedisExportState::new(redis.clone())),
            None => Box::new(SqliteExportState::open(&self.data_dir)?),
        })
    }

    /// Where export runners read stored events (one per runner); `stored` is notified when
    /// this process stores events.
    pub fn export_source(&self, stored: Arc<Signal>) -> anyhow::Result<Box<dyn Source>> {
        Ok(match &self.clickhouse {
            Some(settings) => Box::new(ClickHouseSource::new(ClickHouse::new(settings)?)),
            None => Box::new(SqliteSource::open(&self.data_dir, stored)?),
        })
    }

    /// The stores housekeeping prunes.
    pub fn prunes(&self) -> anyhow::Result<Vec<Box<dyn Prune>>> {
        let mut prunes: Vec<Box<dyn Prune>> = vec![Box::new(Embedded::open(&self.data_dir)?)];
        if let Some(settings) = &self.clickhouse {
            prunes.push(Box::new(ClickHouseRetention::new(settings)?));
        }
        if let Some(redis) = &self.redis {
            prunes.push(Box::new(RedisRetention::new(redis.clone())));
        }
        Ok(prunes)
    }

    /// A handle on the task history (one per runner).
    pub fn task_history(&self) -> Result<Box<dyn TaskHistory>, StoreError> {
        Ok(match &self.redis {
            Some(redis) => Box::new(RedisHistory::new(redis.clone())),
            None => Box::new(SqliteHistory::open(&self.data_dir)?),
        })
    }
}

/// What produces the stored topics when `config` names ClickHouse (else the embedded database
/// stores).
pub fn row_producer(config: &Config) -> anyhow::Result<Option<RowProducer>> {
    let (Some(kafka), Some(clickhouse)) = (&config.kafka, &config.clickhouse) else {
        return Ok(None);
    };
    // A row is an event as JSON inside JSON (escaped) or a dead letter's bytes in base64.
    let max_row_bytes = kafka.max_event_bytes * 3;
    Ok(Some(RowProducer::new(
        &kafka.brokers,
        clickhouse.topics(),
        kafka.settings().delivery_timeout,
        max_row_bytes,
    )?))
}
