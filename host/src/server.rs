//! `sluice serve`: wires config, runtime, chains, ingest, worker, sink and the HTTP API together.

use crate::admin::{self, AdminState};
use crate::backends::{self, Backends};
use crate::capabilities::{Background, Services, StartError};
use crate::capture::{self, CaptureState};
use crate::clickhouse::loader::Loader;
use crate::config::{Config, ConfigError, Problem};
use crate::deployment::{Current, Deployment};
use crate::effective;
use crate::housekeeping;
use crate::ingest::kafka::{KafkaAppend, KafkaIngest};
use crate::ingest::sqlite::Queue;
use crate::installations;
use crate::ready::{Readiness, StoreCheck};
use crate::reload::{self, Launcher, Reloader};
use crate::roles::{Role, Roles};
use crate::runtime::{Runtime, RuntimeSettings};
use crate::signal::Signal;
use crate::sink::kafka::KafkaSink;
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
    let (config, runtime, deployment, background, backends) =
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

    reload::check_exports(&config, &roles, &deployment.exports).map_err(anyhow::Error::msg)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stored = Arc::new(Signal::default());
    let launcher = Launcher {
        roles: roles.clone(),
        lock: backends.run_lock()?,
        node: store::node_id(&config.server.data_dir)?,
        stored: stored.clone(),
        backends: backends.clone(),
    };
    // Event sources may hold blocking HTTP clients, which are made off the async threads.
    let (deployment, launcher) = tokio::task::spawn_blocking(move || {
        let runners = launcher.start(&deployment.exports, &deployment.tasks)?;
        deployment.adopt(runners);
        anyhow::Ok((deployment, launcher))
    })
    .await??;
    let current = Arc::new(Current::new(deployment));
    // Made only where a worker starts: settings left unused would hold the deployment (and
    // with it the log writer) past shutdown.
    let settings = || WorkerSettings {
        deployment: current.clone(),
        lanes,
        max_instances: config.server.max_instances,
        batch_events: config.queue.batch_events,
        stop: stop.clone(),
        stored: stored.clone(),
    };
    // The ingest: the embedded queue (capture and worker in this process), or the Kafka topic
    // when the config names one (each side only where this node runs it). The sink: the
    // embedded database, or the stored topics when the config names ClickHouse.
    let mut readiness = Readiness {
        max_lag: config.kafka.as_ref().map_or(0, |kafka| kafka.ready_max_lag),
        stores: current
            .get()
            .services
            .object_stores
            .clone()
            .map(StoreCheck::new),
        ..Readiness::default()
    };
    let (writer, worker) = match &config.kafka {
        None if roles.has(Role::Capture) => {
            let (queue, writer, reader) = Queue::start(
                &config.server.data_dir,
                config.queue.max_depth_events,
                config.retention.captured_hours > 0,
            )?;
            let sink = SqliteSink::open(&config.server.data_dir)?;
            let worker = worker::start(settings(), reader, sink)?;
            readiness.append = Some(Arc::new(queue));
            (Some(writer), Some(worker))
        }
        None => (None, None),
        Some(kafka) => {
            let worker = if roles.has(Role::Worker) {
                let ingest = KafkaIngest::new(&kafka.settings())?;
                readiness.lags.push(("worker", ingest.lag()));
                Some(match backends::row_producer(&config)? {
                    Some(rows) => worker::start(settings(), ingest, KafkaSink::new(rows))?,
                    None => worker::start(
                        settings(),
                        ingest,
                        SqliteSink::open(&config.server.data_dir)?,
                    )?,
                })
            } else {
                None
            };
            if roles.has(Role::Capture) {
                readiness.append = Some(Arc::new(KafkaAppend::new(&kafka.settings())?));
            }
            (None, worker)
        }
    };
    let prunes = {
        let backends = backends.clone();
        tokio::task::spawn_blocking(move || backends.prunes()).await??
    };
    let housekeeping = housekeeping::start(
        prunes,
        backends.run_lock()?,
        config.retention.clone(),
        stop.clone(),
    )?;
    let loader = match (&config.kafka, &config.clickhouse) {
        (Some(kafka), Some(clickhouse)) if roles.has(Role::Loader) => {
            readiness.clickhouse = Some(clickhouse.settings());
            let running = Loader {
                brokers: kafka.brokers.clone(),
                session_timeout: kafka.settings().session_timeout,
                topics: clickhouse.topics(),
                clickhouse: clickhouse.settings(),
                settings: clickhouse.loader(),
            }
            .start(stop.clone())?;
            readiness.lags.push(("loader", running.lag));
            Some(running.thread)
        }
        _ => None,
    };

    let append = readiness.append.clone();
    let mut app = Router::new();
    if let Some(queue) = readiness.append.clone() {
        let state = CaptureState::new(current.clone(), queue, config.capture.clone());
        app = app.merge(capture::routes(Arc::new(state)));
    }
    let app = app
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route("/ready", get(move || readiness.clone().answer()))
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
    let reloader = Arc::new(Reloader::new(
        runtime.clone(),
        current.clone(),
        launcher,
        config.clone(),
    ));
    let admin = Admin::start(
        &config,
        AdminState {
            token: admin::token(&config)?,
            current: current.clone(),
            reloader: reloader.clone(),
            prometheus,
            node: store::node_id(&config.server.data_dir)?,
            roles: roles.clone(),
            backends,
            append,
        },
    )
    .await?;
    let hangups = reload_on_hangup(reloader.clone())?;
    let watcher = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            ticks.tick().await;
            let reloader = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || reload::auto_rollback(&reloader)).await;
        }
    });

    let listen = config.server.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("server.listen: cannot listen on {listen}: {e}"))?;
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
    hangups.abort();
    watcher.abort();
    let _ = hangups.await;
    let _ = watcher.await;
    admin.stop().await;
    // The router (and with it every queue handle) is gone once serve returns.
    if let Some(writer) = writer {
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    }
    stop.store(true, Ordering::SeqCst);
    for thread in worker.into_iter().chain(loader).chain([housekeeping]) {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
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

/// What `sluice config check` found in a config that is fine.
#[derive(Debug, serde::Serialize)]
pub struct Checked {
    /// Teams.
    pub teams: usize,
    /// Installations in the chains.
    pub transforms: usize,
    /// Export installations.
    pub exports: usize,
    /// Installations that run tasks or jobs.
    pub tasks: usize,
}

/// Checks `config` as `sluice serve` would start it, without serving: every problem of the
/// file, every plugin compiled, configured and started once, Redis and the object stores
/// reachable, and the listen addresses free. Blocking.
pub fn check(config: Config) -> anyhow::Result<Checked> {
    for (key, address) in [
        ("server.listen", config.server.listen),
        ("admin.listen", config.admin.listen),
    ] {
        if address.port() != 0 {
            std::net::TcpListener::bind(address)
                .map_err(|e| anyhow::anyhow!("{key}: cannot listen on {address}: {e}"))?;
        }
    }
    offline(config, |config, deployment| Checked {
        teams: config.teams.len(),
        transforms: deployment.chains.installations(),
        exports: deployment.exports.len(),
        tasks: deployment.tasks.len(),
    })
}

/// The effective config of `config` (see [`crate::effective`]), without serving. Blocking.
pub fn show(config: Config) -> anyhow::Result<serde_json::Value> {
    offline(config, effective::effective)
}

/// Loads `config` as `sluice serve` would (for every role), hands it and its deployment to
/// `inspect`, and tears everything down again. Blocking.
fn offline<T>(
    config: Config,
    inspect: impl FnOnce(&Config, &Deployment) -> T,
) -> anyhow::Result<T> {
    let roles = Roles::of(&[], &config);
    roles.check(&config).map_err(anyhow::Error::msg)?;
    let (config, runtime, deployment, background, _) = load(config)?;
    reload::check_exports(&config, &roles, &deployment.exports).map_err(anyhow::Error::msg)?;
    let inspected = inspect(&config, &deployment);
    drop(deployment);
    drop(runtime);
    background.join();
    Ok(inspected)
}

/// Starts the engine and the capability services, and loads every installation (running each
/// plugin's `setup`). Blocking: never call it on an async thread.
pub(crate) fn load(
    config: Config,
) -> anyhow::Result<(Config, Arc<Runtime>, Deployment, Background, Backends)> {
    let runtime = Arc::new(Runtime::new(&RuntimeSettings {
        // Sized by the process's limits, not by this config's installations, so that a later
        // config fits the same engine; plus the instances used while loading.
        max_instances: u32::try_from(config.server.max_instances + 2).unwrap_or(u32::MAX),
        max_memory_bytes: (config.server.max_instance_memory_mb as usize) << 20,
        cache_dir: Some(config.server.data_dir.join("compiled")),
    })?);
    let config_error = |problems| ConfigError {
        path: config.path.clone(),
        problems,
    };
    let backends = Backends::connect(&config)?;
    let (services, background) = Services::start(
        &config.capabilities,
        &config.server.data_dir,
        backends.shared(&config)?,
    )
    .map_err(|error| match error {
        StartError::Config { key, reason } => {
            anyhow::Error::from(config_error(vec![Problem { key, reason }]))
        }
        other => other.into(),
    })?;
    let installed = installations::load(&runtime, &config, &services).map_err(config_error)?;
    crate::versions::record(&config.server.data_dir, &installed)?;
    let teams = config
        .teams
        .iter()
        .map(|t| (t.token.clone(), t.id))
        .collect();
    let mut deployment = Deployment::new(teams, installed, services);
    deployment.shadows = crate::shadow::Shadows::start(&config, &runtime, &deployment.services)?;
    Ok((config, runtime, deployment, background, backends))
}

/// The admin API, served on its own listener until stopped.
struct Admin {
    stop: tokio::sync::watch::Sender<bool>,
    serving: tokio::task::JoinHandle<()>,
}

impl Admin {
    /// Listens on `[admin] listen` (recording the address for the commands) and serves the
    /// admin routes of `state`.
    async fn start(config: &Config, state: AdminState) -> anyhow::Result<Self> {
        let listen = config.admin.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("admin.listen: cannot listen on {listen}: {e}"))?;
        let addr = listener.local_addr()?;
        admin::record_address(&config.server.data_dir, addr)?;
        tracing::info!(%addr, "the admin API is listening");
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let app = admin::routes(Arc::new(state));
        let serving = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.changed().await;
                })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "the admin API stopped");
            }
        });
        Ok(Self { stop, serving })
    }

    /// Stops serving and waits for the requests in progress.
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.serving.await;
    }
}

/// Reloads the config in force on every `SIGHUP`, until the task is aborted.
fn reload_on_hangup(reloader: Arc<Reloader>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config");
            let reloader = reloader.clone();
            match tokio::task::spawn_blocking(move || reloader.reload(None)).await {
                Ok(Ok(_)) => {}
                Ok(Err(failure)) => {
                    admin::reload_failed(&failure);
                }
                Err(_) => tracing::error!("the reload panicked; the config in force is unchanged"),
            }
        }
    }))
}
