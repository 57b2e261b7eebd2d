//! Capture over HTTP: paths, bodies, errors, and what gets stored.

use crate::support::{Sluice, gzip, plain_team};
use serde_json::{Value, json};

#[test]
fn a_gzip_batch_is_stored_with_properties_and_client_uuid_intact() {
    let sluice = Sluice::start(&plain_team(1, "phc_one"));
    let uuid = "0190d2f5-6bd4-7c3e-9a51-2b1f0e4c8d77";
    let batch = json!({
        "api_key": "phc_one",
        "batch": [
            {"event": "$pageview", "distinct_id": "u1", "uuid": uuid,
             "properties": {"$current_url": "https://example.com/", "nested": {"a": [1, 2]}},
             "timestamp": "2024-01-02T03:04:05.678Z"},
            {"event": "signed_up", "properties": {"distinct_id": "u2", "plan": "pro"}, "$set": {"email": "a@b.c"}}
        ]
    });
    let (status, body) = sluice.post(
        "/batch",
        gzip(batch.to_string().as_bytes()),
        &[("content-encoding", "gzip")],
    );
    assert_eq!((status, body), (200, json!({"status": 1})));
    sluice.drain();
    let events = sluice.events(1);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["uuid"], uuid);
    assert_eq!(events[0]["event"], "$pageview");
    assert_eq!(events[0]["properties"]["nested"], json!({"a": [1, 2]}));
    assert_eq!(events[0]["timestamp"], "2024-01-02T03:04:05.678Z");
    assert_eq!(events[0]["ip"], "127.0.0.1");
    assert_eq!(events[1]["distinct_id"], "u2");
    assert_eq!(events[1]["properties"]["plan"], "pro");
    assert_eq!(events[1]["$set"], json!({"email": "a@b.c"}));
    uuid::Uuid::parse_str(events[1]["uuid"].as_str().unwrap()).unwrap();
}

#[test]
fn every_capture_path_takes_events_with_and_without_trailing_slash() {
    let sluice = Sluice::start(&plain_team(1, "phc_one"));
    let paths = ["/e", "/capture", "/track", "/engage", "/i/v0/e", "/batch"];
    for path in paths {
        for variant in [path.to_owned(), format!("{path}/")] {
            let event = json!({"event": "hit", "distinct_id": variant, "token": "phc_one"});
            let (status, body) = sluice.post_json(&variant, &event);
            assert_eq!(status, 200, "{variant}: {body}");
        }
    }
    sluice.drain();
    let stored: Vec<Value> = sluice
        .events(1)
        .iter()
        .map(|e| e["distinct_id"].clone())
        .collect();
    assert_eq!(stored.len(), paths.len() * 2, "{stored:?}");
}

#[test]
fn gzip_is_recognised_by_query_hint_and_by_magic_bytes() {
    let sluice = Sluice::start(&plain_team(1, "phc_one"));
    let event = json!({"event": "e", "distinct_id": "u", "token": "phc_one"}).to_string();
    let (status, _) = sluice.post(
        "/e?compression=gzip-js",
        gzip(event.as_bytes()),
        &[("content-type", "text/plain")],
    );
    assert_eq!(status, 200);
    let (status, _) = sluice.post("/e", gzip(event.as_bytes()), &[]);
    assert_eq!(status, 200);
    sluice.drain();
    assert_eq!(sluice.events(1).len(), 2);
}

#[test]
fn bad_requests_get_json_errors_with_stable_codes_and_the_server_keeps_serving() {
    let sluice = Sluice::start(&plain_team(1, "phc_one"));
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("/e", b"{not json".to_vec(), 400, "invalid_payload"),
        (
            "/e",
            br#"{"event":"e","distinct_id":"u","token":"phc_unknown"}"#.to_vec(),
            401,
            "unknown_token",
        ),
        (
            "/e",
            br#"{"event":"e","distinct_id":"u"}"#.to_vec(),
            401,
            "missing_token",
        ),
        (
            "/e",
            br#"{"distinct_id":"u","token":"phc_one"}"#.to_vec(),
            400,
            "missing_event_name",
        ),
        (
            "/e",
            br#"{"event":"e","token":"phc_one"}"#.to_vec(),
            400,
            "missing_distinct_id",
        ),
        (
            "/e",
            br#"{"event":"e","distinct_id":"u","uuid":"x","token":"phc_one"}"#.to_vec(),
            400,
            "invalid_uuid",
        ),
        (
            "/batch",
            br#"{"api_key":"phc_one","batch":[]}"#.to_vec(),
            400,
            "empty_batch",
        ),
        ("/e", vec![b' '; 3 * 1024 * 1024], 413, "payload_too_large"),
        (
            "/batch",
            gzip(&vec![b' '; 30 * 1024 * 1024]),
            413,
            "payload_too_large",
        ),
    ];
    for (path, body, status, code) in cases {
        let (got, body) = sluice.post(path, body, &[]);
        assert_eq!((got, body["code"].as_str()), (status, Some(code)), "{body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{body}"
        );
    }
    let (status, _) = sluice.post_json(
        "/e",
        &json!({"event": "ok", "distinct_id": "u", "token": "phc_one"}),
    );
    assert_eq!(status, 200);
    sluice.drain();
    assert_eq!(sluice.events(1).len(), 1, "only the valid event is stored");
}

#[test]
fn health_ready_and_metrics_answer() {
    let sluice = Sluice::start(&plain_team(1, "phc_one"));
    sluice.post_json(
        "/e",
        &json!({"event": "e", "distinct_id": "u", "token": "phc_one"}),
    );
    sluice.drain();
    assert_eq!(sluice.get("/health").0, 200);
    let (status, metrics) = sluice.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("sluice_capture_events_total{team=\"1\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_store_events_total 1"), "{metrics}");
}

#[test]
fn json_labelled_as_a_form_like_plain_curl_sends_it_is_accepted() {
    let sluice = Sluice::start(&plain_team(1, "phc_one"));
    let body = json!({"event": "curl", "distinct_id": "u", "token": "phc_one"}).to_string();
    let form = [("content-type", "application/x-www-form-urlencoded")];
    assert_eq!(sluice.post("/e", body.into_bytes(), &form).0, 200);
    sluice.drain();
    assert_eq!(sluice.events(1)[0]["event"], "curl");
}

#[test]
fn gzip_sent_as_a_form_is_read_as_the_raw_body() {
    // What `curl --data-binary @events.gz -H 'Content-Encoding: gzip'` sends: curl labels it
    // `application/x-www-form-urlencoded`. Once with the header, once sniffed by magic bytes.
    let sluice = Sluice::start(&plain_team(1, "phc_one"));
    for (i, encoding) in [Some("gzip"), None].into_iter().enumerate() {
        let batch = json!({"api_key": "phc_one", "batch": [{"event": "gz", "distinct_id": format!("u{i}")}]});
        let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
        headers.extend(encoding.map(|e| ("content-encoding", e)));
        let (status, body) = sluice.post("/batch", gzip(batch.to_string().as_bytes()), &headers);
        assert_eq!((status, body), (200, json!({"status": 1})));
    }
    sluice.drain();
    let ids: Vec<Value> = sluice
        .events(1)
        .iter()
        .map(|e| e["distinct_id"].clone())
        .collect();
    assert_eq!(ids, [json!("u0"), json!("u1")]);
}

#[test]
fn an_overlong_distinct_id_is_cut_to_200_characters_as_posthog_does() {
    let sluice = Sluice::start(&plain_team(1, "phc_one"));
    let long = "x".repeat(100_000);
    let with_nul = format!("a\u{0}b{}", "é".repeat(300));
    for id in [&long, &with_nul] {
        let event = json!({"event": "e", "distinct_id": id, "token": "phc_one"});
        assert_eq!(sluice.post_json("/e", &event).0, 200);
    }
    sluice.drain();
    let events = sluice.events(1);
    let stored: Vec<&str> = events
        .iter()
        .map(|e| e["distinct_id"].as_str().unwrap())
        .collect();
    assert_eq!(stored[0], "x".repeat(200));
    assert_eq!(stored[1].chars().count(), 200);
    assert!(stored[1].starts_with("a\u{FFFD}béé"), "{}", stored[1]);
    let (_, metrics) = sluice.get("/metrics");
    assert!(
        metrics.contains("sluice_capture_distinct_ids_truncated_total 2"),
        "{metrics}"
    );
}
