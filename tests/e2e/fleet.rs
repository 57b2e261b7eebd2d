//! The engines a fleet of sluice nodes runs on in the tests at scale: the broker, ClickHouse,
//! Redis and an S3-compatible server (its bucket configured as object store `lake`).

use crate::broker::Broker;
use crate::clickhouse_server::ClickHouseServer;
use crate::redis_server::RedisServer;
use crate::s3::S3Server;
use crate::support::Sluice;

/// The running engines, stopped when dropped.
pub struct Engines {
    /// The Kafka-protocol broker.
    pub broker: Broker,
    /// ClickHouse.
    pub clickhouse: ClickHouseServer,
    /// Redis.
    pub redis: RedisServer,
    /// The S3-compatible server.
    pub s3: S3Server,
}

impl Engines {
    /// Starts every engine.
    pub fn start() -> Self {
        Self {
            broker: Broker::start(),
            clickhouse: ClickHouseServer::start(),
            redis: RedisServer::start(),
            s3: S3Server::start(),
        }
    }

    /// A node with `roles` on every engine, with the `[[teams]]` tables `teams`.
    pub fn node(&self, teams: &str, roles: &str) -> Sluice {
        let rest = format!(
            "[redis]\nurl = \"{}\"\n{}{teams}",
            self.redis.url,
            self.s3.store_config("lake")
        );
        crate::kafka::node(&self.broker, &self.clickhouse, &rest, roles)
    }
}
