//! The admin API: what operators ask a running node, on a listener of its own (`[admin]`),
//! every route behind a bearer token compared in constant time. JSON, versioned under
//! `/admin/v1/`; `/metrics` is served here too. `/admin/` is the operators' page
//! ([`PAGE`]): a static page without data, which asks for the token and calls the API with it. Errors are `{"code": ..., "detail": ...}` with
//! a stable code. The reference, with an example per route, is `host/docs/admin-api.md`.

use crate::backends::Backends;
use crate::capabilities::log;
use crate::chain::Stats;
use crate::config::Config;
use crate::deployment::{Current, Deployment};
use crate::export::state::LetterAction;
use crate::ingest::{Append, Appended};
use crate::reload::{ReloadError, Reloader};
use crate::roles::Roles;
use crate::store::dead_letters::Selector;
use crate::store::logs::LogLine;
use crate::stored::Stored;
use crate::tap::{self, TapFilter};
use crate::{effective, export};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sluice_abi::wire::BatchWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio::sync::broadcast::error::RecvError;

/// The file of the data folder that holds the token the server made (when the config gives
/// none).
pub const TOKEN_FILE: &str = "admin-token";
/// The file of the data folder that holds the address the admin API listens on.
pub const ADDRESS_FILE: &str = "admin-address";

/// What the admin routes serve from.
pub struct AdminState {
    /// The bearer token.
    pub token: String,
    /// The deployment in force.
    pub current: Arc<Current>,
    /// Reloads the config.
    pub reloader: Arc<Reloader>,
    /// The metrics.
    pub prometheus: &'static PrometheusHandle,
    /// This node's id and roles.
    pub node: String,
    /// This node's roles.
    pub roles: Roles,
    /// Where this node's state is (export state, task history, job queue).
    pub backends: Backends,
    /// The ingest this node captures into, if it captures (dead letters are replayed into it).
    pub append: Option<Arc<dyn Append>>,
}

/// The token of `config`'s admin API: the configured one, or the one the server keeps in its
/// data folder (made now, readable by its user only, if there is none yet).
pub fn token(config: &Config) -> anyhow::Result<String> {
    if let Some(token) = &config.admin.token {
        return Ok(token.clone());
    }
    let path = config.server.data_dir.join(TOKEN_FILE);
    if let Ok(token) = std::fs::read_to_string(&path) {
        return Ok(token.trim().to_owned());
    }
    let token: String = {
        use rand::Rng;
        let bytes: [u8; 24] = rand::rng().random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    write_private(&path, &token)?;
    Ok(token)
}

/// Writes `text` to `path`, readable and writable by this user only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// Where the admin API of the server running `config` listens, and its token, as the commands
/// find them: the address the server wrote at start, and the configured token or the one it
/// keeps in its data folder.
pub fn client_settings(config: &Config) -> anyhow::Result<(String, String)> {
    let data_dir = &config.server.data_dir;
    let address = std::fs::read_to_string(data_dir.join(ADDRESS_FILE))
        .map(|a| a.trim().to_owned())
        .unwrap_or_else(|_| config.admin.listen.to_string());
    let token = match &config.admin.token {
        Some(token) => token.clone(),
        None => std::fs::read_to_string(data_dir.join(TOKEN_FILE))
            .map(|t| t.trim().to_owned())
            .map_err(|_| {
                anyhow::anyhow!(
                    "no admin token: set [admin] token (or SLUICE_ADMIN_TOKEN), or run this where the server's data folder {} is",
                    data_dir.display()
                )
            })?,
    };
    Ok((format!("http://{address}"), token))
}

/// Records where the admin API listens, for the commands.
pub fn record_address(data_dir: &Path, address: std::net::SocketAddr) -> anyhow::Result<()> {
    write_private(&data_dir.join(ADDRESS_FILE), &address.to_string())
}

/// An error answer.
fn error(status: StatusCode, code: &str, detail: impl Into<String>, extra: Value) -> Response {
    let mut body = json!({ "code": code, "detail": detail.into() });
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    (status, Json(body)).into_response()
}

/// Refuses every request without the bearer token.
async fn authorize(State(state): State<Arc<AdminState>>, request: Request, next: Next) -> Response {
    if bearer(request.headers())
        .is_some_and(|given| given.as_bytes().ct_eq(state.token.as_bytes()).into())
    {
        return next.run(request).await;
    }
    metrics::counter!("sluice_admin_unauthorized_total").increment(1);
    error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "send the admin token as `Authorization: Bearer <token>`",
        json!({}),
    )
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// The operators' page: chains with live rates, latency and health, reload, tap.
pub const PAGE: &str = include_str!("page.html");

/// Every admin route (all but the page behind the token).
pub fn routes(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/admin/v1/node", get(node))
        .route("/admin/v1/teams", get(teams))
        .route("/admin/v1/config", get(effective_config))
        .route("/admin/v1/reload", post(reload))
        .route("/admin/v1/tap", get(tap_stream))
        .route("/admin/v1/logs", get(logs))
        .route("/admin/v1/logs/stream", get(log_stream))
        .route("/admin/v1/dead-letters", get(dead_letters))
        .route("/admin/v1/dead-letters/replay", post(replay_dead_letters))
        .route("/admin/v1/dead-letters/discard", post(discard_dead_letters))
        .route("/admin/v1/exports", get(exports))
        .route("/admin/v1/exports/dead-letters", get(export_dead_letters))
        .route("/admin/v1/exports/replay", post(export_replay))
        .route("/admin/v1/exports/discard", post(export_discard))
        .route("/admin/v1/tasks/schedules", get(task_schedules))
        .route("/admin/v1/tasks", get(task_runs))
        .route("/admin/v1/tasks/run", post(run_task))
        .route("/admin/v1/jobs", get(jobs))
        .route("/admin/v1/jobs/retry", post(retry_jobs))
        .route("/admin/v1/installations/disable", post(disable))
        .route("/admin/v1/installations/enable", post(enable))
        .route("/admin/v1/shadow", get(shadow_report))
        .route("/admin/v1/shadow/promote", post(promote))
        .route("/admin/v1/versions", get(versions))
        .route("/admin/v1/rollback", post(rollback))
        .route("/admin/v1/rollbacks", get(rollbacks))
        .route("/admin/v1/imports", get(imports))
        .route("/metrics", get(metrics_text))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .route("/admin/", get(page))
        .route("/admin", get(page))
        .with_state(state)
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

async fn node(State(state): State<Arc<AdminState>>) -> Json<Value> {
    let config = state.reloader.config();
    Json(json!({
        "node": state.node,
        "roles": state.roles.to_string(),
        "config": config.path,
        "listen": config.server.listen,
    }))
}

/// `GET /admin/v1/config`: the config in force, every default filled in, each chain resolved,
/// every secret redacted.
async fn effective_config(State(state): State<Arc<AdminState>>) -> Json<Value> {
    Json(effective::effective(
        &state.reloader.config(),
        &state.current.get(),
    ))
}

/// One installation as `GET /admin/v1/teams` shows it.
#[derive(Serialize)]
struct InstallationView {
    id: String,
    plugin: String,
    version: String,
    hash: String,
    contract: &'static str,
    hooks: Vec<&'static str>,
    grants: Vec<String>,
    /// `healthy`, `degraded`, `breaker_open` or `disabled` (a transform); `active` otherwise.
    status: &'static str,
    /// Why, when it is not healthy.
    reason: Option<String>,
    /// The share of a transform's budget of time and errors left.
    budget_left: Option<f64>,
    /// A transform's counts, latency percentiles and last errors since it was installed.
    stats: Option<Stats>,
}

/// Each team of the config in force, with its installations in order.
async fn teams(State(state): State<Arc<AdminState>>) -> Json<Value> {
    let config = state.reloader.config();
    let deployment = state.current.get();
    let teams: Vec<Value> = config
        .teams
        .iter()
        .map(|team| {
            let installations: Vec<InstallationView> = team
                .plugins
                .iter()
                .filter_map(|i| installation(&deployment, team.id, &i.id.qualified(team.id)))
                .collect();
            json!({ "id": team.id, "name": team.name, "installations": installations })
        })
        .collect();
    Json(Value::Array(teams))
}

/// The installation `id` of `team` in `deployment`, whichever hooks it runs.
fn installation(deployment: &Deployment, team: u64, id: &str) -> Option<InstallationView> {
    let transform = deployment.chains.of(team).iter().find(|i| &*i.id == id);
    let export = deployment.exports.iter().find(|e| &*e.id == id);
    let tasks = deployment.tasks.iter().find(|t| &*t.id == id);
    let (plugin, settings) = transform
        .map(|t| (&t.plugin, &t.settings))
        .or(export.map(|e| (&e.plugin, &e.settings)))
        .or(tasks.map(|t| (&t.plugin, &t.settings)))?;
    let hooks = plugin.hooks();
    let health = transform.map(|t| t.health());
    Some(InstallationView {
        id: id.to_owned(),
        plugin: plugin.manifest.name.clone(),
        version: plugin.manifest.version.clone(),
        hash: plugin.hash.clone(),
        contract: plugin.contract.label(),
        hooks,
        grants: settings.context.grants.names().map(str::to_owned).collect(),
        status: health.as_ref().map_or("active", |h| h.state),
        budget_left: health.as_ref().map(|h| h.budget_left),
        stats: transform.map(|t| t.stats()),
        reason: health.and_then(|h| h.reason),
    })
}

/// `POST /admin/v1/reload`: the file to load (the one in force if not given).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReloadRequest {
    path: Option<PathBuf>,
}

async fn reload(State(state): State<Arc<AdminState>>, body: axum::body::Bytes) -> Response {
    let request: ReloadRequest = if body.is_empty() {
        ReloadRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("the body must be {{\"path\": \"...\"}} or empty: {e}"),
                    json!({}),
                );
            }
        }
    };
    let reloader = state.reloader.clone();
    let result =
        tokio::task::spawn_blocking(move || reloader.reload(request.path.as_deref())).await;
    match result {
        Ok(Ok(changes)) => {
            Json(json!({ "status": "reloaded", "changes": changes })).into_response()
        }
        Ok(Err(failure)) => reload_failed(&failure),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the reload panicked; the config in force is unchanged",
            json!({}),
        ),
    }
}

/// The answer to a reload that changed nothing.
pub fn reload_failed(failure: &ReloadError) -> Response {
    metrics::counter!("sluice_reloads_total", "outcome" => "refused").increment(1);
    tracing::warn!("reload refused, nothing changed: {failure}");
    match failure {
        ReloadError::Config(config) => {
            let problems: Vec<Value> = config
                .problems
                .iter()
                .map(|p| json!({ "key": p.key, "reason": p.reason }))
                .collect();
            error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_config",
                failure.to_string(),
                json!({ "problems": problems }),
            )
        }
        ReloadError::NeedsRestart { .. } => error(
            StatusCode::CONFLICT,
            "needs_restart",
            failure.to_string(),
            json!({}),
        ),
        ReloadError::Runners(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "runners_failed",
            failure.to_string(),
            json!({}),
        ),
        ReloadError::Refused(_) => error(
            StatusCode::CONFLICT,
            "refused",
            failure.to_string(),
            json!({}),
        ),
    }
}

/// Runs `work` (which blocks: databases, Redis, ClickHouse) off the async threads; its value as
/// JSON, or `503 unavailable` with the reason.
async fn blocking<T: Serialize + Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Response {
    answer(move || work().map(|value| Json(value).into_response())).await
}

/// Runs `work` (which blocks) off the async threads; its answer, or `503 unavailable` with the
/// reason.
async fn answer(work: impl FnOnce() -> anyhow::Result<Response> + Send + 'static) -> Response {
    off_thread(work).await.unwrap_or_else(|refused| refused)
}

/// Runs `work` (which blocks) off the async threads; its value, or the answer that it failed
/// (`503 unavailable` with the reason).
async fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{e:#}"),
            json!({}),
        )),
        Err(_) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the request panicked",
            json!({}),
        )),
    }
}

/// Which records a listing route returns.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Scope {
    team: Option<u64>,
    installation: Option<String>,
    limit: Option<usize>,
}

impl Scope {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(100).min(100_000)
    }
}

/// `GET /admin/v1/logs?team=&installation=&limit=`: the newest plugin log lines, oldest first.
async fn logs(State(state): State<Arc<AdminState>>, Query(scope): Query<Scope>) -> Response {
    let config = state.reloader.config();
    blocking(move || {
        Stored::of(&config)?.logs(scope.team, scope.installation.as_deref(), scope.limit())
    })
    .await
}

/// `GET /admin/v1/dead-letters?team=&limit=`: the newest dead letters of the chains.
async fn dead_letters(
    State(state): State<Arc<AdminState>>,
    Query(scope): Query<Scope>,
) -> Response {
    let config = state.reloader.config();
    blocking(move || Stored::of(&config)?.dead_letters(scope.team, scope.limit())).await
}

/// `POST /admin/v1/dead-letters/replay {team, installation?, uuid?}`: the events go back into
/// the ingest, through the team's whole chain again, and their dead letters are removed once
/// the ingest has them. An event stored meanwhile is not stored twice (`(team, uuid)`). In the
/// embedded database and in ClickHouse alike.
async fn replay_dead_letters(
    State(state): State<Arc<AdminState>>,
    Json(selector): Json<Selector>,
) -> Response {
    let config = state.reloader.config();
    let Some(append) = state.append.clone() else {
        return error(
            StatusCode::CONFLICT,
            "no_ingest",
            "this node does not capture: replay on a node with the capture role",
            json!({}),
        );
    };
    let Some(token) = config
        .teams
        .iter()
        .find(|t| t.id == selector.team)
        .map(|t| t.token.as_str().to_owned())
    else {
        return not_found(format!("no team {} in the config in force", selector.team));
    };
    let (read, team) = (config.clone(), selector.team);
    let selected = off_thread(move || Stored::of(&read)?.dead_letters_named(&selector));
    let letters = match selected.await {
        Ok(letters) if letters.is_empty() => return not_found("no such dead letter".into()),
        Ok(letters) => letters,
        Err(refused) => return refused,
    };
    let mut batch = BatchWriter::default();
    for letter in &letters {
        batch.push_encoded(&letter.event);
    }
    let appended = Appended {
        team_id: team,
        token,
        events: letters.len() as u64,
        payload: batch.finish(),
        historical: false,
    };
    if let Err(e) = append.append(appended).await {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
            json!({}),
        );
    }
    answer(move || {
        Stored::of(&config)?.remove_dead_letters(team, &letters)?;
        Ok(Json(json!({ "replayed": letters.len() })).into_response())
    })
    .await
}

/// `POST /admin/v1/dead-letters/discard {team, installation?, uuid?}`: removes them for good.
async fn discard_dead_letters(
    State(state): State<Arc<AdminState>>,
    Json(selector): Json<Selector>,
) -> Response {
    let config = state.reloader.config();
    answer(move || {
        let stored = Stored::of(&config)?;
        let letters = stored.dead_letters_named(&selector)?;
        if letters.is_empty() {
            return Ok(not_found("no such dead letter".into()));
        }
        stored.remove_dead_letters(selector.team, &letters)?;
        Ok(Json(json!({ "discarded": letters.len() })).into_response())
    })
    .await
}

/// `GET /admin/v1/exports`: each export installation's cursor, lag, holder and last outcome.
async fn exports(State(state): State<Arc<AdminState>>) -> Response {
    let backends = state.backends.clone();
    blocking(move || {
        let mut source = backends.export_source(Default::default())?;
        Ok(export::state::status(
            &mut *backends.export_state()?,
            &mut *source,
        )?)
    })
    .await
}

/// `GET /admin/v1/exports/dead-letters?installation=`: batches that failed for good.
async fn export_dead_letters(
    State(state): State<Arc<AdminState>>,
    Query(scope): Query<Scope>,
) -> Response {
    let backends = state.backends.clone();
    blocking(move || {
        Ok(backends
            .export_state()?
            .dead_letters(scope.installation.as_deref())?)
    })
    .await
}

/// What a replay or retry applies to.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    installation: String,
    /// One export batch or job only.
    id: Option<String>,
}

/// Why a request names nothing there is.
fn not_found(detail: String) -> Response {
    error(StatusCode::NOT_FOUND, "not_found", detail, json!({}))
}

/// `POST /admin/v1/exports/replay {installation, id?}`: sends dead-lettered batches again
/// (what `sluice exports replay` does).
async fn export_replay(state: State<Arc<AdminState>>, target: Json<Target>) -> Response {
    export_letters(state, target, LetterAction::Replay).await
}

/// `POST /admin/v1/exports/discard {installation, id?}`: removes dead-lettered batches for good
/// (what `sluice exports discard` does).
async fn export_discard(state: State<Arc<AdminState>>, target: Json<Target>) -> Response {
    export_letters(state, target, LetterAction::Discard).await
}

/// `action` on the export dead letters `target` names: `{"queued"|"discarded": n}`, or
/// `404 not_found`.
async fn export_letters(
    State(state): State<Arc<AdminState>>,
    Json(target): Json<Target>,
    action: LetterAction,
) -> Response {
    let backends = state.backends.clone();
    answer(move || {
        let count = action.apply(
            &mut *backends.export_state()?,
            &target.installation,
            target.id.as_deref(),
        )?;
        Ok(match count {
            0 => not_found(format!(
                "{} has no such dead-lettered batch",
                target.installation
            )),
            count => Json(json!({ action.done(): count })).into_response(),
        })
    })
    .await
}

/// `GET /admin/v1/tasks/schedules?installation=`: each task's schedule, last and next tick.
async fn task_schedules(
    State(state): State<Arc<AdminState>>,
    Query(scope): Query<Scope>,
) -> Response {
    let backends = state.backends.clone();
    blocking(move || {
        Ok(backends
            .task_history()?
            .schedules(scope.installation.as_deref())?)
    })
    .await
}

/// `GET /admin/v1/tasks?installation=&limit=`: the newest task runs.
async fn task_runs(State(state): State<Arc<AdminState>>, Query(scope): Query<Scope>) -> Response {
    let backends = state.backends.clone();
    blocking(move || {
        Ok(backends
            .task_history()?
            .runs(scope.installation.as_deref(), None, scope.limit())?)
    })
    .await
}

/// `POST /admin/v1/tasks/run {installation, task}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunTask {
    installation: String,
    task: String,
}

/// `POST /admin/v1/tasks/run`: asks the task's runner (on whichever scheduler node) to run it
/// now, as `sluice tasks run` does; answers `202` with the request's id.
async fn run_task(State(state): State<Arc<AdminState>>, Json(run): Json<RunTask>) -> Response {
    let deployment = state.current.get();
    let Some(installation) = deployment.tasks.iter().find(|t| *t.id == run.installation) else {
        let known: Vec<&str> = deployment.tasks.iter().map(|t| &*t.id).collect();
        return not_found(format!(
            "no installation {} runs tasks (those that do: {})",
            run.installation,
            known.join(", ")
        ));
    };
    if !installation.tasks.iter().any(|t| t.name == run.task) {
        let names: Vec<&str> = installation.tasks.iter().map(|t| t.name.as_str()).collect();
        return not_found(format!(
            "{} has no task `{}` (its tasks: {})",
            run.installation,
            run.task,
            names.join(", ")
        ));
    }
    let backends = state.backends.clone();
    answer(move || {
        let request = backends
            .task_history()?
            .request_run(&run.installation, &run.task)?;
        Ok((StatusCode::ACCEPTED, Json(json!({ "request": request }))).into_response())
    })
    .await
}

/// `GET /admin/v1/jobs?installation=`: jobs queued, running or failed.
async fn jobs(State(state): State<Arc<AdminState>>, Query(scope): Query<Scope>) -> Response {
    let backends = state.backends.clone();
    blocking(move || Ok(backends.job_queue()?.list(scope.installation.as_deref())?)).await
}

/// `POST /admin/v1/jobs/retry {installation, id?}`: queues failed jobs again (what `sluice jobs
/// retry` does).
async fn retry_jobs(State(state): State<Arc<AdminState>>, Json(target): Json<Target>) -> Response {
    let backends = state.backends.clone();
    blocking(move || {
        let queued = backends
            .job_queue()?
            .retry_failed(&target.installation, target.id.as_deref())?;
        Ok(json!({ "queued": queued }))
    })
    .await
}

/// `POST /admin/v1/installations/disable|enable {installation}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Installation {
    installation: String,
}

/// `POST /admin/v1/installations/disable`: events pass the transform by, untouched, until it is
/// enabled (or a reload changes it). The override of this node.
async fn disable(
    State(state): State<Arc<AdminState>>,
    Json(target): Json<Installation>,
) -> Response {
    set_disabled(&state, &target.installation, true)
}

/// `POST /admin/v1/installations/enable`: the transform runs again, its breaker closed and its
/// budget whole.
async fn enable(
    State(state): State<Arc<AdminState>>,
    Json(target): Json<Installation>,
) -> Response {
    set_disabled(&state, &target.installation, false)
}

fn set_disabled(state: &AdminState, id: &str, disabled: bool) -> Response {
    let deployment = state.current.get();
    match deployment.chains.all().find(|i| &*i.id == id) {
        Some(installation) => {
            installation.set_disabled(disabled);
            Json(json!({ "installation": id, "health": installation.health() })).into_response()
        }
        None => not_found(format!(
            "no transform installation {id} in the config in force"
        )),
    }
}

/// `GET /admin/v1/shadow`: what the shadow installations did so far, beside the live chains.
async fn shadow_report(State(state): State<Arc<AdminState>>) -> Response {
    match &state.current.get().shadows {
        Some(shadows) => Json(shadows.report()).into_response(),
        None => not_found("the config in force has no shadow installations".into()),
    }
}

/// `POST /admin/v1/shadow/promote` `{"installation": "team-N/id"}`: the shadow goes live (in
/// place of what it replaces), by an edit of the config file and a reload.
async fn promote(
    State(state): State<Arc<AdminState>>,
    Json(target): Json<Installation>,
) -> Response {
    let reloader = state.reloader.clone();
    match tokio::task::spawn_blocking(move || reloader.promote(&target.installation)).await {
        Ok(Ok((said, changes))) => {
            Json(json!({ "status": "promoted", "detail": said, "changes": changes }))
                .into_response()
        }
        Ok(Err(failure)) => reload_failed(&failure),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the promotion panicked",
            json!({}),
        ),
    }
}

/// `GET /admin/v1/versions?installation=team-N/id`: the plugin versions it ran, and the
/// rollbacks made since the start.
async fn versions(
    State(state): State<Arc<AdminState>>,
    Query(target): Query<Installation>,
) -> Response {
    let data_dir = state.reloader.config().server.data_dir;
    let rollbacks = state.reloader.rollbacks();
    blocking(move || {
        let conn = crate::store::open(&data_dir)?;
        let versions = crate::versions::list(&conn, &target.installation)?;
        Ok(json!({ "versions": versions, "rollbacks": rollbacks }))
    })
    .await
}

/// `GET /admin/v1/rollbacks`: the rollbacks made since the start (by hand or by
/// `auto_rollback`), newest last.
async fn rollbacks(State(state): State<Arc<AdminState>>) -> Response {
    Json(state.reloader.rollbacks()).into_response()
}

/// `GET /admin/v1/imports`: the imports and export backfills run on this node's data folder,
/// with their progress, newest first.
async fn imports(State(state): State<Arc<AdminState>>) -> Response {
    let data_dir = state.reloader.config().server.data_dir;
    blocking(move || {
        let conn = crate::store::open(&data_dir)?;
        Ok(json!({
            "imports": crate::import::list(&conn)?,
            "backfills": crate::export::backfill::list(&conn)?,
        }))
    })
    .await
}

/// What `POST /admin/v1/rollback` takes.
#[derive(Deserialize)]
struct RollbackRequest {
    installation: String,
    /// A version it ran (SHA-256); default: the last good one.
    to: Option<String>,
}

/// `POST /admin/v1/rollback`: the installation returns to its last good plugin version (or
/// `to`), by an edit of the config file and a reload; the version left is marked bad.
async fn rollback(
    State(state): State<Arc<AdminState>>,
    Json(request): Json<RollbackRequest>,
) -> Response {
    let reloader = state.reloader.clone();
    let work = move || {
        reloader.rollback(
            &request.installation,
            request.to.as_deref(),
            "rolled back by the operator",
        )
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(rollback)) => {
            Json(json!({ "status": "rolled_back", "rollback": rollback })).into_response()
        }
        Ok(Err(failure)) => reload_failed(&failure),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the rollback panicked",
            json!({}),
        ),
    }
}

/// How often an idle tap stream says it is alive (and finds out whether its watcher left).
const TAP_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(10);

/// `GET /admin/v1/tap?team=&installation=&sample=`: what each installation does with each event,
/// as server-sent events (`data: {record}`), from now on, across reloads; `data:
/// {"lagged": n}` when the watcher fell behind and missed `n` records.
async fn tap_stream(Query(filter): Query<TapFilter>) -> Response {
    events(tap::hub().watch(), move |record| filter.shows(record))
}

/// `GET /admin/v1/logs/stream?team=&installation=`: plugin log lines as they are stored, as
/// server-sent events (`data: {installation, level, message, time_ms}`), from now on.
async fn log_stream(Query(scope): Query<Scope>) -> Response {
    events(log::live().watch(), move |line: &LogLine| {
        scope
            .installation
            .as_ref()
            .is_none_or(|installation| *installation == line.installation)
            && scope
                .team
                .is_none_or(|team| line.installation.starts_with(&format!("team-{team}/")))
    })
}

/// The records `watcher` receives that `keep` accepts, as server-sent events: `data: {record}`
/// each, `data: {"lagged": n}` when the watcher fell behind, `: alive` when idle.
fn events<T: Serialize + Send + Sync + 'static>(
    watcher: tap::Watcher<T>,
    keep: impl Fn(&T) -> bool + Send + 'static,
) -> Response {
    let stream = futures::stream::unfold((watcher, keep), |(mut watcher, keep)| async move {
        loop {
            let line = match tokio::time::timeout(TAP_KEEP_ALIVE, watcher.records.recv()).await {
                Err(_) => ": alive\n\n".to_owned(),
                Ok(Ok(record)) if keep(&record) => {
                    format!(
                        "data: {}\n\n",
                        serde_json::to_string(&*record).unwrap_or_default()
                    )
                }
                Ok(Ok(_)) => continue,
                Ok(Err(RecvError::Lagged(missed))) => {
                    format!("data: {}\n\n", json!({ "lagged": missed }))
                }
                Ok(Err(RecvError::Closed)) => return None,
            };
            return Some((Ok::<_, std::convert::Infallible>(line), (watcher, keep)));
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

async fn metrics_text(State(state): State<Arc<AdminState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.prometheus.render(),
    )
        .into_response()
}
