//! The plugin against a fake BigQuery answering through the harness's `http`.

use super::*;
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use sluice_sdk::host::http::Response;
use sluice_sdk::json;
use sluice_sdk::testing::{Harness, TestEvent};
use std::cell::RefCell;
use std::rc::Rc;

/// What the fake saw and how it answers.
#[derive(Default)]
struct Fake {
    tokens: usize,
    table_exists: bool,
    created: Option<Value>,
    inserted: Vec<Value>,
    /// Per insertAll request: row indexes to answer with `(index, reason)`.
    row_errors: Vec<Vec<(usize, &'static str)>>,
    status: Option<u16>,
}

fn key_json() -> String {
    let key = rsa::RsaPrivateKey::new(&mut rand08::thread_rng(), 2048).unwrap();
    let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
    json!({
        "type": "service_account",
        "project_id": "proj",
        "client_email": "export@proj.iam.gserviceaccount.com",
        "private_key": pem.as_str(),
        "token_uri": "https://oauth.test/token",
    })
    .to_string()
}

fn respond(fake: &Rc<RefCell<Fake>>, request: &sluice_sdk::host::http::Request) -> Response {
    let mut fake = fake.borrow_mut();
    let ok = |body: Value| Response {
        status: 200,
        headers: vec![],
        body: body.to_string().into_bytes(),
    };
    if request.url == "https://oauth.test/token" {
        let body = String::from_utf8(request.body.clone()).unwrap();
        assert!(body.starts_with(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion="
        ));
        fake.tokens += 1;
        return ok(json!({"access_token": format!("t{}", fake.tokens), "expires_in": 3600}));
    }
    let auth = request
        .headers
        .iter()
        .find(|(n, _)| n == "Authorization")
        .unwrap();
    assert!(auth.1.starts_with("Bearer t"));
    let table = "https://bq.test/bigquery/v2/projects/proj/datasets/ds/tables/events";
    match (request.method.as_str(), request.url.as_str()) {
        ("GET", url) if url == table => {
            if fake.table_exists {
                ok(json!({"schema": {"fields": [{"name": "uuid", "type": "STRING"}]}}))
            } else {
                Response {
                    status: 404,
                    headers: vec![],
                    body: b"{}".to_vec(),
                }
            }
        }
        ("POST", "https://bq.test/bigquery/v2/projects/proj/datasets/ds/tables") => {
            fake.created = Some(serde_json::from_slice(&request.body).unwrap());
            fake.table_exists = true;
            ok(json!({}))
        }
        ("PATCH", url) if url == table => {
            fake.created = Some(serde_json::from_slice(&request.body).unwrap());
            ok(json!({}))
        }
        ("POST", url) if url == format!("{table}/insertAll") => {
            if let Some(status) = fake.status {
                return Response {
                    status,
                    headers: vec![],
                    body: json!({"error": {"message": "busy", "errors": [{"reason": "backendError"}]}})
                        .to_string()
                        .into_bytes(),
                };
            }
            let body: Value = serde_json::from_slice(&request.body).unwrap();
            let rows = body["rows"].as_array().unwrap().clone();
            let errors = if fake.row_errors.is_empty() {
                vec![]
            } else {
                fake.row_errors.remove(0)
            };
            if errors.is_empty() {
                fake.inserted.extend(rows);
                return ok(json!({"kind": "bigquery#tableDataInsertAllResponse"}));
            }
            // As BigQuery: with a row failing, no row of the request is inserted.
            let invalid = errors.iter().any(|(_, reason)| *reason == "invalid");
            let answer: Vec<Value> = (0..rows.len())
                .filter_map(|i| {
                    let reason = errors
                        .iter()
                        .find(|(index, _)| *index == i)
                        .map(|(_, reason)| *reason)
                        .or(invalid.then_some("stopped"))?;
                    Some(json!({"index": i, "errors": [{"reason": reason, "message": reason}]}))
                })
                .collect();
            if !invalid {
                for (i, row) in rows.into_iter().enumerate() {
                    if !errors.iter().any(|(index, _)| *index == i) {
                        fake.inserted.push(row);
                    }
                }
            }
            ok(json!({"insertErrors": answer}))
        }
        other => panic!("unexpected request {other:?}"),
    }
}

fn harness(fake: &Rc<RefCell<Fake>>) -> Harness<BigQueryExport> {
    let fake = fake.clone();
    Harness::<BigQueryExport>::new(json!({
        "key_json": key_json(),
        "dataset_id": "ds",
        "table_id": "events",
        "api_base": "https://bq.test",
    }))
    .unwrap()
    .with_http(move |request| Ok(respond(&fake, request)))
}

fn events(n: usize) -> Vec<TestEvent> {
    (0..n)
        .map(|i| {
            let mut event = TestEvent::new("$pageview")
                .distinct_id(&format!("u{i}"))
                .property("$ip", "5.6.7.8")
                .into_buf();
            event.uuid[15] = i as u8;
            event.uuid[14] = (i >> 8) as u8;
            event.into()
        })
        .collect()
}

#[test]
fn creates_the_table_then_streams_rows_with_team_and_uuid_as_insert_id() {
    let fake = Rc::new(RefCell::new(Fake::default()));
    let mut harness = harness(&fake);
    harness.export("1-3", 1_704_164_645_678, events(3)).unwrap();
    harness.export("4-4", 1_704_164_645_678, events(1)).unwrap();
    let fake = fake.borrow();
    assert_eq!(fake.tokens, 1, "the token is kept");
    let created = fake.created.as_ref().unwrap();
    assert_eq!(
        created["timePartitioning"],
        json!({"type": "DAY", "field": "timestamp"})
    );
    assert_eq!(created["schema"]["fields"].as_array().unwrap().len(), 12);
    assert_eq!(fake.inserted.len(), 4);
    let row = &fake.inserted[0];
    assert_eq!(
        row["insertId"],
        format!(
            "{}:{}",
            row["json"]["team_id"],
            row["json"]["uuid"].as_str().unwrap()
        )
    );
    assert_eq!(row["json"]["ip"], "5.6.7.8");
    assert_eq!(row["json"]["properties"], r#"{"$ip":"5.6.7.8"}"#);
    assert_eq!(row["json"]["set"], "{}");
    assert_eq!(row["json"]["timestamp"], "2023-11-14T22:13:20.000Z");
    assert_eq!(
        row["json"]["bq_ingested_timestamp"],
        "2024-01-02T03:04:05.678Z"
    );
}

#[test]
fn an_existing_table_gets_its_missing_columns() {
    let fake = Rc::new(RefCell::new(Fake {
        table_exists: true,
        ..Fake::default()
    }));
    harness(&fake).export("1-1", 0, events(1)).unwrap();
    let patched = fake.borrow().created.clone().unwrap();
    let names: Vec<&str> = patched["schema"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 12);
    assert_eq!(names[0], "uuid");
}

#[test]
fn only_failed_rows_are_sent_again_and_invalid_rows_fail_for_good() {
    let fake = Rc::new(RefCell::new(Fake {
        row_errors: vec![vec![(1, "backendError")]],
        ..Fake::default()
    }));
    harness(&fake).export("1-3", 0, events(3)).unwrap();
    let inserted: Vec<Value> = fake
        .borrow()
        .inserted
        .iter()
        .map(|r| r["insertId"].clone())
        .collect();
    assert_eq!(inserted.len(), 3, "row 1 sent again, rows 0 and 2 once");

    let fake = Rc::new(RefCell::new(Fake {
        row_errors: vec![vec![(2, "invalid")]],
        ..Fake::default()
    }));
    let error = harness(&fake).export("1-4", 0, events(4)).unwrap_err();
    assert!(!error.retryable, "{error}");
    assert!(error.message.contains("1 invalid rows"), "{error}");
    assert_eq!(
        fake.borrow().inserted.len(),
        3,
        "the valid rows were inserted"
    );
}

#[test]
fn outages_and_limits_are_retryable() {
    for status in [429, 500, 503] {
        let fake = Rc::new(RefCell::new(Fake {
            status: Some(status),
            ..Fake::default()
        }));
        let error = harness(&fake).export("1-1", 0, events(1)).unwrap_err();
        assert!(error.retryable, "{status}: {error}");
    }
    assert!(
        api_error(
            "x",
            403,
            &json!({"error": {"errors": [{"reason": "quotaExceeded"}]}})
        )
        .retryable
    );
    assert!(
        !api_error(
            "x",
            403,
            &json!({"error": {"errors": [{"reason": "accessDenied"}]}})
        )
        .retryable
    );
    assert!(!api_error("x", 400, &json!({})).retryable);
}

#[test]
fn requests_stay_within_bigquerys_limits() {
    let rows: Vec<Value> = (0..1_201).map(|i| json!({"insertId": i})).collect();
    let sizes: Vec<usize> = rows::requests(rows).unwrap().iter().map(Vec::len).collect();
    assert_eq!(sizes, [500, 500, 201]);
    let big = "x".repeat(4 * 1024 * 1024);
    let rows: Vec<Value> = (0..3)
        .map(|i| json!({"insertId": i, "json": {"p": big}}))
        .collect();
    assert_eq!(rows::requests(rows).unwrap().len(), 2, "9 MB per request");
    let huge = json!({"insertId": 0, "json": {"p": "x".repeat(10 * 1024 * 1024)}});
    assert!(!rows::requests(vec![huge]).unwrap_err().retryable);
}
