//! Capture over HTTP: paths, bodies, errors, and what gets stored.

use crate::support::{Sluice, gzip, plain_team, team_with_plugin};
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

#[test]
fn numbers_are_stored_exactly_as_sent() {
    let sluice = Sluice::start(&plain_team(1, "phc_one"));
    // Each of these is changed by a float parser that is not correctly rounded, or by a
    // round trip through f64 or u64. Sent and stored: the digits are kept as sent; only an
    // exponent is written with its sign.
    let numbers = [
        ("1.6714285714285715", "1.6714285714285715"),
        ("0.30000000000000004", "0.30000000000000004"),
        ("2.2250738585072014e-308", "2.2250738585072014e-308"),
        (
            "123456789012345678901234567890",
            "123456789012345678901234567890",
        ),
        ("-0.0", "-0.0"),
        ("1e400", "1e+400"),
        ("1.50", "1.50"),
        ("9007199254740993", "9007199254740993"),
    ];
    let properties = numbers
        .iter()
        .enumerate()
        .map(|(i, (n, _))| format!("\"p{i}\": {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let body = format!(
        "{{\"event\": \"e\", \"distinct_id\": \"u\", \"token\": \"phc_one\", \"properties\": {{{properties}}}}}"
    );
    let (status, reply) = sluice.post(
        "/e",
        body.into_bytes(),
        &[("content-type", "application/json")],
    );
    assert_eq!(status, 200, "{reply}");
    sluice.drain();
    let (ok, stdout, stderr) = sluice.run(&["events", "--team", "1"]);
    assert!(ok, "{stderr}");
    for (i, (sent, stored)) in numbers.iter().enumerate() {
        assert!(
            stdout.contains(&format!("\"p{i}\":{stored}")),
            "p{i} = {sent} was not stored as sent: {stdout}"
        );
    }
}

/// A `/batch` body of `events` events whose properties hold `bytes_each` bytes of hex text
/// (compressing to about half), gzipped.
fn big_gzip_batch(events: usize, bytes_each: usize) -> Vec<u8> {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let batch: Vec<Value> = (0..events)
        .map(|i| {
            let text: String = (0..bytes_each / 16)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    format!("{seed:016x}")
                })
                .collect();
            json!({"event": "big", "distinct_id": format!("u{i}"), "properties": {"blob": text}})
        })
        .collect();
    gzip(
        json!({"api_key": "phc_one", "batch": batch})
            .to_string()
            .as_bytes(),
    )
}

#[test]
fn a_flood_of_big_batches_is_bounded_in_memory_and_every_200_is_stored() {
    let config = format!(
        "[capture]\nmax_in_flight_bytes = {}\n{}",
        64 << 20,
        plain_team(1, "phc_one")
    );
    let sluice = Sluice::start(&config);
    const EVENTS: usize = 1_000;
    let body = big_gzip_batch(EVENTS, 6_000);
    let baseline = sluice.peak_rss_bytes();
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (answers, probes) = std::thread::scope(|scope| {
        let prober = scope.spawn(|| {
            let health = reqwest::blocking::Client::builder()
                .timeout(std::time::Duration::from_secs(2))
                .build()
                .unwrap();
            let mut probes = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let answer = health.get(format!("{}/health", sluice.url)).send();
                probes.push(
                    answer
                        .map(|r| r.status().as_u16())
                        .map_err(|e| e.to_string()),
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            probes
        });
        let senders: Vec<_> = (0..24)
            .map(|_| {
                scope.spawn(|| {
                    let response = client
                        .post(format!("{}/batch", sluice.url))
                        .header("content-type", "application/json")
                        .header("content-encoding", "gzip")
                        .body(body.clone())
                        .send()
                        .unwrap();
                    let status = response.status().as_u16();
                    let retry_after = response.headers().get("retry-after").is_some();
                    let reply: Value = serde_json::from_str(&response.text().unwrap_or_default())
                        .unwrap_or_default();
                    (status, retry_after, reply)
                })
            })
            .collect();
        let answers: Vec<_> = senders.into_iter().map(|s| s.join().unwrap()).collect();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (answers, prober.join().unwrap())
    });
    let accepted = answers.iter().filter(|(status, ..)| *status == 200).count();
    let busy: Vec<_> = answers
        .iter()
        .filter(|(status, ..)| *status != 200)
        .collect();
    assert!(accepted > 0, "{answers:?}");
    assert!(
        !busy.is_empty(),
        "24 concurrent 11 MB batches fit in 64 MiB?"
    );
    for (status, retry_after, reply) in &busy {
        assert_eq!(*status, 503, "{reply}");
        assert!(*retry_after, "503 without Retry-After: {reply}");
        assert_eq!(reply["code"], "busy", "{reply}");
    }
    assert!(
        probes.iter().all(|p| *p == Ok(200)),
        "/health did not answer every probe: {probes:?}"
    );
    let grown = sluice.peak_rss_bytes().saturating_sub(baseline);
    assert!(grown < 400 << 20, "peak memory grew by {} MiB", grown >> 20);
    sluice.drain();
    assert_eq!(sluice.events(1).len(), accepted * EVENTS);
}

#[test]
fn a_full_queue_answers_503_queue_full_and_takes_events_again_once_it_drains() {
    // A plugin that loops on `attack` until its deadline holds the worker, so the queue fills.
    let config = format!(
        "[queue]\nmax_depth_events = 10\n{}",
        team_with_plugin(
            1,
            "phc_one",
            "adversary",
            "config = { mode = \"loop\" }\ntimeout_ms = 300",
        )
    );
    let sluice = Sluice::start(&config);
    let batch = |name: &str, count: usize| {
        let events: Vec<Value> = (0..count)
            .map(|i| json!({"event": name, "distinct_id": format!("u{i}")}))
            .collect();
        sluice.post_json("/batch", &json!({"api_key": "phc_one", "batch": events}))
    };
    let (status, body) = batch("attack", 10);
    assert_eq!(status, 200, "{body}");
    let (status, body) = batch("normal", 1);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "queue_full", "{body}");
    sluice.drain();
    let (status, body) = batch("normal", 1);
    assert_eq!(status, 200, "{body}");
    sluice.drain();
    assert_eq!(sluice.events(1).len(), 11, "every accepted event is stored");
}
