//! A local stand-in for BigQuery's REST API, because no BigQuery emulator runs here (PyPI's
//! `bqemulator` downloads a DuckDB extension at start, which fails offline). It implements the
//! documented shapes the export plugin uses, and checks them as BigQuery does:
//!
//! - `POST /token`: the OAuth2 JWT bearer grant; the assertion's RS256 signature is verified
//!   with the test key's public key, and its `iss`, `aud`, `scope` and `exp` are checked.
//! - `tables.get`, `tables.insert` (409 if it exists), `tables.patch` (columns may only be
//!   added), all behind `Authorization: Bearer`.
//! - `tabledata.insertAll`: rows must fit the table's schema (an unknown column makes the row
//!   `invalid`, and the other rows of the request `stopped`, none inserted); rows whose
//!   `insertId` was seen within the last minute are dropped, as BigQuery's best-effort
//!   de-duplication documents.
//! - Faults on demand: the next requests can answer a status (429, 500, a 403 quota error) or
//!   mark rows `invalid`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an `insertId` is remembered for de-duplication.
const DEDUP_WINDOW: Duration = Duration::from_secs(60);

/// A fault the next `insertAll` answers with.
#[derive(Debug, Clone)]
pub enum Fault {
    /// The whole request fails with this status and reason.
    Status(u16, &'static str),
    /// The row with this uuid is `invalid` (so every other row of its request is `stopped`).
    InvalidRow(String),
}

#[derive(Default)]
struct Inner {
    public_pem: String,
    client_email: String,
    token_uri: String,
    tokens: HashSet<String>,
    tables: HashMap<String, Value>,
    rows: Vec<Value>,
    seen: HashMap<String, Instant>,
    faults: VecDeque<Fault>,
    insert_calls: usize,
}

type Shared = Arc<Mutex<Inner>>;

/// The running stand-in.
pub struct FakeBigQuery {
    /// Its base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// A service-account key JSON whose `token_uri` points here.
    pub key_json: String,
    inner: Shared,
    _runtime: tokio::runtime::Runtime,
}

impl FakeBigQuery {
    /// Starts the server with a fresh RSA key.
    pub fn start() -> Self {
        let key = rsa::RsaPrivateKey::new(&mut rand08::thread_rng(), 2048).unwrap();
        let private_pem = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        let public_pem = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let client_email = "export@sluice-test.iam.gserviceaccount.com".to_owned();
        let inner: Shared = Arc::new(Mutex::new(Inner {
            public_pem,
            client_email: client_email.clone(),
            token_uri: format!("{url}/token"),
            ..Inner::default()
        }));
        let table = "/bigquery/v2/projects/{project}/datasets/{dataset}/tables";
        let app = Router::new()
            .route("/token", post(token))
            .route(table, post(insert_table))
            .route(
                &format!("{table}/{{table}}"),
                get(get_table).patch(patch_table),
            )
            .route(&format!("{table}/{{table}}/insertAll"), post(insert_all))
            .with_state(inner.clone());
        runtime.spawn(async move { axum::serve(listener, app).await });
        let key_json = json!({
            "type": "service_account",
            "project_id": "sluice-test",
            "private_key_id": "test",
            "private_key": private_pem,
            "client_email": client_email,
            "token_uri": format!("{url}/token"),
        })
        .to_string();
        Self {
            url,
            key_json,
            inner,
            _runtime: runtime,
        }
    }

    /// Makes the next `insertAll` requests answer `faults`, in order.
    pub fn fail_next(&self, faults: impl IntoIterator<Item = Fault>) {
        self.inner.lock().unwrap().faults.extend(faults);
    }

    /// Every row inserted (after de-duplication), in order.
    pub fn rows(&self) -> Vec<Value> {
        self.inner.lock().unwrap().rows.clone()
    }

    /// The table's schema fields and partitioning, if it exists.
    pub fn table(&self, table: &str) -> Option<Value> {
        self.inner.lock().unwrap().tables.get(table).cloned()
    }

    /// `insertAll` requests received.
    pub fn insert_calls(&self) -> usize {
        self.inner.lock().unwrap().insert_calls
    }
}

fn error(status: StatusCode, reason: &str, message: &str) -> (StatusCode, Json<Value>) {
    let body = json!({"error": {"code": status.as_u16(), "message": message,
                                "errors": [{"reason": reason, "message": message}]}});
    (status, Json(body))
}

type Answer = (StatusCode, Json<Value>);

async fn token(State(inner): State<Shared>, body: Bytes) -> Answer {
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let mut inner = inner.lock().unwrap();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type",
        );
    }
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(inner.public_pem.as_bytes()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[&inner.token_uri]);
    validation.set_issuer(&[&inner.client_email]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    let assertion = form.get("assertion").cloned().unwrap_or_default();
    match jsonwebtoken::decode::<Value>(&assertion, &key, &validation) {
        Ok(claims) if claims.claims["scope"] == "https://www.googleapis.com/auth/bigquery" => {
            let token = format!("token-{}", inner.tokens.len() + 1);
            inner.tokens.insert(token.clone());
            (
                StatusCode::OK,
                Json(json!({"access_token": token, "expires_in": 3600, "token_type": "Bearer"})),
            )
        }
        Ok(_) => error(StatusCode::BAD_REQUEST, "invalid_scope", "scope"),
        Err(e) => error(StatusCode::BAD_REQUEST, "invalid_grant", &e.to_string()),
    }
}

fn authorized(inner: &Inner, headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| inner.tokens.contains(token))
}

async fn get_table(
    State(inner): State<Shared>,
    headers: HeaderMap,
    Path((_, _, table)): Path<(String, String, String)>,
) -> Answer {
    let inner = inner.lock().unwrap();
    if !authorized(&inner, &headers) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "bad token");
    }
    match inner.tables.get(&table) {
        Some(table) => (StatusCode::OK, Json(table.clone())),
        None => error(StatusCode::NOT_FOUND, "notFound", "Not found: Table"),
    }
}

async fn insert_table(
    State(inner): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Answer {
    let mut inner = inner.lock().unwrap();
    if !authorized(&inner, &headers) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "bad token");
    }
    let name = body["tableReference"]["tableId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if inner.tables.contains_key(&name) {
        return error(StatusCode::CONFLICT, "duplicate", "Already Exists: Table");
    }
    inner.tables.insert(name, body.clone());
    (StatusCode::OK, Json(body))
}

fn field_names(table: &Value) -> Vec<String> {
    table["schema"]["fields"]
        .as_array()
        .map(|fields| {
            fields
                .iter()
                .filter_map(|f| f["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn patch_table(
    State(inner): State<Shared>,
    headers: HeaderMap,
    Path((_, _, table)): Path<(String, String, String)>,
    Json(body): Json<Value>,
) -> Answer {
    let mut inner = inner.lock().unwrap();
    if !authorized(&inner, &headers) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "bad token");
    }
    let Some(existing) = inner.tables.get_mut(&table) else {
        return error(StatusCode::NOT_FOUND, "notFound", "Not found: Table");
    };
    let new = field_names(&body);
    if field_names(existing).iter().any(|name| !new.contains(name)) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "columns can only be added",
        );
    }
    existing["schema"] = body["schema"].clone();
    (StatusCode::OK, Json(existing.clone()))
}

async fn insert_all(
    State(inner): State<Shared>,
    headers: HeaderMap,
    Path((_, _, table)): Path<(String, String, String)>,
    Json(body): Json<Value>,
) -> Answer {
    let mut inner = inner.lock().unwrap();
    inner.insert_calls += 1;
    if !authorized(&inner, &headers) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "bad token");
    }
    let Some(schema) = inner.tables.get(&table).map(field_names) else {
        return error(StatusCode::NOT_FOUND, "notFound", "Not found: Table");
    };
    let rows = body["rows"].as_array().cloned().unwrap_or_default();
    let fault = inner.faults.pop_front();
    if let Some(Fault::Status(status, reason)) = fault {
        return error(
            StatusCode::from_u16(status).unwrap(),
            reason,
            "injected fault",
        );
    }
    let invalid: Vec<usize> = rows
        .iter()
        .enumerate()
        .filter(|(_, row)| {
            let unknown_column = row["json"]
                .as_object()
                .is_none_or(|json| json.keys().any(|k| !schema.contains(k)));
            let injected =
                matches!(&fault, Some(Fault::InvalidRow(uuid)) if row["json"]["uuid"] == *uuid);
            unknown_column || injected
        })
        .map(|(i, _)| i)
        .collect();
    if !invalid.is_empty() {
        let errors: Vec<Value> = (0..rows.len())
            .map(|i| {
                let reason = if invalid.contains(&i) {
                    "invalid"
                } else {
                    "stopped"
                };
                json!({"index": i, "errors": [{"reason": reason, "message": reason}]})
            })
            .collect();
        return (StatusCode::OK, Json(json!({"insertErrors": errors})));
    }
    let now = Instant::now();
    inner
        .seen
        .retain(|_, at| now.duration_since(*at) < DEDUP_WINDOW);
    for row in rows {
        let id = row["insertId"].as_str().unwrap_or_default().to_owned();
        if id.is_empty() || inner.seen.insert(id, now).is_none() {
            inner.rows.push(row["json"].clone());
        }
    }
    (
        StatusCode::OK,
        Json(json!({"kind": "bigquery#tableDataInsertAllResponse"})),
    )
}
