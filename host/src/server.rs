//! `sluice serve`: wires config, runtime, chains, ingest, worker, sink and the HTTP API together.

use crate::capabilities::{Background, Services, StartError};
use crate::capture::{self, CaptureState};
use crate::config::{Config, ConfigError, Problem};
use crate::deployment::{Current, Deployment};
use crate::export;
use crate::ingest::Append;
use crate::ingest::kafka::{KafkaAppend, KafkaIngest};
use crate::ingest::sqlite::Queue;
use crate::installations;
use crate::roles::{Role, Roles};
use crate::runtime::{Runtime, RuntimeSettings};
use crate::schedule::{self, lock::LocalLock};
use crate::signal::Signal;
use crate::sink::sqlite::SqliteSink;
use crate::store;
use crate::telemetry;
use crate::worker::{self, WorkerSettings};
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Runs the `roles` of sluice until `shutdown` resolves, then stops accepting, lets the queue
/// commit what it was given, lets the worker finish its round, and tears plugins down.
/// `on_listening` is called with the bound address once requests are accepted.
pub async fn serve(
    config: Config,
    roles: Roles,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    roles.check(&config).map_err(anyhow::Error::msg)?;
    let prometheus = telemetry::prometheus();
    let lanes = config.workers();
    // Plugins' `setup` calls capabilities that block (object stores, http, storage): it runs on
    // a blocking thread, never on the server's async threads.
    let (config, runtime, deployment, background) =
        tokio::task::spawn_blocking(move || load(config))
            .await
            .map_err(|_| anyhow::anyhow!("loading the plugins panicked"))??;
    tracing::info!(
        transforms = deployment.chains.installations(),
        exports = deployment.exports.len(),
        tasks = deployment.tasks.len(),
        lanes,
        %roles,
        "plugins loaded"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let stored = Arc::new(Signal::default());
    if roles.has(Role::Exporter) {
        deployment.adopt(export::start(
            &deployment.exports,
            &config.server.data_dir,
            &stored,
        )?);
    }
    if roles.has(Role::Scheduler) {
        let lock: Arc<dyn schedule::lock::RunLock> =
            Arc::new(LocalLock::open(&config.server.data_dir)?);
        deployment.adopt(schedule::start(
            &deployment.tasks,
            &config.server.data_dir,
            &lock,
            &store::node_id(&config.server.data_dir)?,
        )?);
    }
    let current = Arc::new(Current::new(deployment));
    let settings = WorkerSettings {
        deployment: current.clone(),
        lanes,
        max_instances: config.server.max_instances,
        batch_events: config.queue.batch_events,
        stop: stop.clone(),
        stored: stored.clone(),
    };
    // The ingest: the embedded queue (capture and worker in this process), or the Kafka topic
    // when the config names one (each side only where this node runs it).
    let (queue, writer, worker): (Option<Arc<dyn Append>>, _, _) = match &config.kafka {
        None if roles.has(Role::Capture) => {
            let (queue, writer, reader) =
                Queue::start(&config.server.data_dir, config.queue.max_depth_events)?;
            let sink = SqliteSink::open(&config.server.data_dir)?;
            let worker = worker::start(settings, reader, sink)?;
            (Some(Arc::new(queue)), Some(writer), Some(worker))
        }
        None => (None, None, None),
        Some(kafka) => {
            let kafka = kafka.settings();
            let worker = if roles.has(Role::Worker) {
                let sink = SqliteSink::open(&config.server.data_dir)?;
                Some(worker::start(settings, KafkaIngest::new(&kafka)?, sink)?)
            } else {
                None
            };
            let queue: Option<Arc<dyn Append>> = if roles.has(Role::Capture) {
                Some(Arc::new(KafkaAppend::new(&kafka)?))
            } else {
                None
            };
            (queue, None, worker)
        }
    };

    let ready_queue = queue.clone();
    let mut app = Router::new();
    if let Some(queue) = queue {
        let state = CaptureState::new(current.clone(), queue, config.capture.clone());
        app = app.merge(capture::routes(Arc::new(state)));
    }
    let app = app
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route("/ready", get(move || ready(ready_queue.clone())))
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    prometheus.render(),
                )
                    .into_response()
            }),
        );
    let listener = tokio::net::TcpListener::bind(config.server.listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %config.server.data_dir.display(), "sluice is listening");
    on_listening(addr);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;

    tracing::info!("shutting down: committing the queue and finishing the current round");
    // The router (and with it every queue handle) is gone once serve returns.
    if let Some(writer) = writer {
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    }
    stop.store(true, Ordering::SeqCst);
    if let Some(worker) = worker {
        let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    }
    // Runners finish the call they are in; an unfinished batch is sent again after a restart, an
    // unfinished job runs again. Then every installation (and its services) goes, and the log
    // writer stores what is left.
    let _ = tokio::task::spawn_blocking(move || {
        current.get().stop_runners();
        drop(current);
        drop(runtime);
        background.join();
    })
    .await;
    Ok(())
}

/// `/ready`: `200` with the queue depth when the ingest this node appends to can take events,
/// else `503` with the reason.
async fn ready(queue: Option<Arc<dyn Append>>) -> axum::response::Response {
    let Some(queue) = queue else {
        return axum::Json(serde_json::json!({ "status": "ready", "queue_depth": 0 }))
            .into_response();
    };
    let depth = queue.depth();
    let reachable = tokio::task::spawn_blocking(move || queue.reachable())
        .await
        .unwrap_or_else(|_| Err("the readiness check panicked".into()));
    match reachable {
        Ok(()) => axum::Json(serde_json::json!({ "status": "ready", "queue_depth": depth }))
            .into_response(),
        Err(reason) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "status": "unavailable", "reason": reason })),
        )
            .into_response(),
    }
}

/// Starts the engine and the capability services, and loads every installation (running each
/// plugin's `setup`). Blocking: never call it on an async thread.
fn load(config: Config) -> anyhow::Result<(Config, Runtime, Deployment, Background)> {
    let runtime = Runtime::new(&RuntimeSettings {
        // Sized by the process's limits, not by this config's installations, so that a later
        // config fits the same engine; plus the instances used while loading.
        max_instances: u32::try_from(config.server.max_instances + 2).unwrap_or(u32::MAX),
        max_memory_bytes: (config.server.max_instance_memory_mb as usize) << 20,
        cache_dir: Some(config.server.data_dir.join("compiled")),
    })?;
    let config_error = |problems| ConfigError {
        path: config.path.clone(),
        problems,
    };
    let (services, background) = Services::start(&config.capabilities, &config.server.data_dir)
        .map_err(|error| match error {
            StartError::Config { key, reason } => {
                anyhow::Error::from(config_error(vec![Problem { key, reason }]))
            }
            other => other.into(),
        })?;
    let installed = installations::load(&runtime, &config, &services).map_err(config_error)?;
    let teams = config
        .teams
        .iter()
        .map(|t| (t.token.clone(), t.id))
        .collect();
    let deployment = Deployment::new(teams, installed, services);
    Ok((config, runtime, deployment, background))
}
