//! PostHog capture compatibility over HTTP: methods, CORS, body encodings, special paths, v1.

use crate::support::{Sluice, gzip, plain_team, team_with_plugin};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

fn event(name: &str, distinct_id: &str) -> Value {
    json!({"event": name, "distinct_id": distinct_id, "token": "phc_one", "properties": {"k": "v"}})
}

#[test]
fn cors_preflight_mirrors_origin_and_headers_and_allows_credentials() {
    let sluice = Sluice::start(&plain_team(1, "phc_one"));
    let response = reqwest::blocking::Client::new()
        .request(reqwest::Method::OPTIONS, format!("{}/e/", sluice.url))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,x-custom")
        .send()
        .unwrap();
    assert!(response.status().is_success());
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(
        header("access-control-allow-origin").as_deref(),
        Some("https://shop.example")
    );
    assert_eq!(
        header("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert!(
        header("access-control-allow-headers")
            .unwrap()
            .contains("x-custom")
    );

    let plain = reqwest::blocking::Client::new()
        .request(reqwest::Method::OPTIONS, format!("{}/batch", sluice.url))
        .send()
        .unwrap();
    assert_eq!(plain.status(), 200);
}

#[test]
fn every_path_accepts_get_with_data_in_the_query() {
    let sluice = Sluice::start(&plain_team(1, "phc_one"));
    let paths = ["/e", "/capture", "/track", "/engage", "/i/v0/e", "/batch"];
    for path in paths {
        for variant in [path.to_owned(), format!("{path}/")] {
            let data = STANDARD.encode(event("get", &variant).to_string());
            let url = format!("{}{variant}?data={}", sluice.url, urlencode(&data));
            let response = reqwest::blocking::get(url).unwrap();
            assert_eq!(
                response.status(),
                200,
                "{variant}: {}",
                response.text().unwrap()
            );
        }
    }
    sluice.drain();
    assert_eq!(sluice.events(1).len(), paths.len() * 2);
}

fn urlencode(text: &str) -> String {
    serde_urlencoded::to_string([("x", text)]).unwrap()[2..].to_owned()
}

#[test]
fn a_base64_form_beacon_is_accepted_with_204() {
    let sluice = Sluice::start(&plain_team(1, "phc_one"));
    let data = STANDARD.encode(json!([event("left page", "u")]).to_string());
    let form = serde_urlencoded::to_string([("data", data.as_str())]).unwrap();
    let (status, _) = sluice.post(
        "/e/?compression=base64&beacon=1",
        form.into_bytes(),
        &[("content-type", "application/x-www-form-urlencoded")],
    );
    assert_eq!(status, 204);
    sluice.drain();
    assert_eq!(sluice.events(1)[0]["event"], "left page");
}

#[test]
fn lz64_and_gzip_js_bodies_from_older_posthog_js_are_accepted() {
    let sluice = Sluice::start(&plain_team(1, "phc_one"));
    let lz = lz_str::compress_to_base64(&json!([event("lz", "u")]).to_string());
    let form = serde_urlencoded::to_string([("data", lz.as_str())]).unwrap();
    let (status, body) = sluice.post(
        "/e/?compression=lz64",
        form.into_bytes(),
        &[("content-type", "application/x-www-form-urlencoded")],
    );
    assert_eq!(status, 200, "{body}");
    let gz = gzip(json!(event("gz", "u")).to_string().as_bytes());
    let (status, _) = sluice.post(
        "/e/?compression=gzip-js",
        gz,
        &[("content-type", "text/plain")],
    );
    assert_eq!(status, 200);
    sluice.drain();
    let names: Vec<Value> = sluice
        .events(1)
        .iter()
        .map(|e| e["event"].clone())
        .collect();
    assert_eq!(names, [json!("lz"), json!("gz")]);
}

#[test]
fn a_single_event_on_engage_is_an_identify() {
    let sluice = Sluice::start(&plain_team(1, "phc_one"));
    let body = json!({"distinct_id": "u", "token": "phc_one", "$set": {"email": "a@b.c"}});
    assert_eq!(sluice.post_json("/engage/", &body).0, 200);
    sluice.drain();
    let stored = &sluice.events(1)[0];
    assert_eq!(stored["event"], "$identify");
    assert_eq!(stored["$set"], json!({"email": "a@b.c"}));
}

#[test]
fn snapshots_are_stored_as_recordings_and_skip_the_chain() {
    // The chain drops every `$snapshot` it sees, so a recording stored proves it skipped it.
    let config = team_with_plugin(
        1,
        "phc_one",
        "adversary",
        "config = { mode = \"drop\", trigger = \"$snapshot\" }",
    );
    let sluice = Sluice::start(&config);
    let snapshot = |window: &str, ts: &str| {
        json!({"event": "$snapshot", "distinct_id": "u", "timestamp": ts,
               "properties": {"$session_id": "s1", "$window_id": window, "$snapshot_data": {"type": 2}}})
    };
    let batch = json!({"api_key": "phc_one", "batch": [
        snapshot("w1", "2024-01-01T00:00:01Z"),
        snapshot("w2", "2024-01-01T00:00:02Z"),
        {"event": "$snapshot", "distinct_id": "u", "properties": {"$snapshot_data": {}}}
    ]});
    let (status, body) = sluice.post_json("/s/", &batch);
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("missing_session_id")),
        "{body}"
    );
    let good = json!({"api_key": "phc_one", "batch": [snapshot("w1", "2024-01-01T00:00:01Z"), snapshot("w2", "2024-01-01T00:00:02Z")]});
    assert_eq!(
        sluice.post("/s/", gzip(good.to_string().as_bytes()), &[]).0,
        200
    );
    // A snapshot sent to an ordinary path is a recording too.
    let single = json!({"token": "phc_one", "event": "$snapshot", "distinct_id": "u",
                         "properties": {"$session_id": "s2", "$snapshot_data": {}}});
    assert_eq!(sluice.post_json("/e", &single).0, 200);
    sluice.drain();
    assert!(sluice.events(1).is_empty());
    let recordings = sluice.recordings(1, Some("s1"));
    let windows: Vec<&Value> = recordings.iter().map(|r| &r["window_id"]).collect();
    assert_eq!(windows, [&json!("w1"), &json!("w2")]);
    assert_eq!(recordings[0]["timestamp"], "2024-01-01T00:00:01.000Z");
    assert_eq!(
        recordings[0]["properties"]["$snapshot_data"],
        json!({"type": 2})
    );
    assert_eq!(sluice.recordings(1, None).len(), 3);
}

#[test]
fn the_v1_endpoint_answers_per_event_and_keeps_the_good_ones() {
    let sluice = Sluice::start(&plain_team(1, "phc_one"));
    let body = json!({"created_at": "2024-01-01T00:00:00Z", "batch": [
        {"event": "ok", "uuid": "0190d2f5-6bd4-7c3e-9a51-2b1f0e4c8d01", "distinct_id": "u",
         "timestamp": "2024-01-01T00:00:00Z", "options": {"disable_skew_correction": true},
         "properties": {"k": 1, "$set": {"plan": "pro"}}, "session_id": "s1"},
        {"event": "bad", "uuid": "0190d2f5-6bd4-7c3e-9a51-2b1f0e4c8d02", "timestamp": "2024-01-01T00:00:00Z",
         "options": {}, "properties": {}}
    ]});
    let zstd = zstd::encode_all(body.to_string().as_bytes(), 3).unwrap();
    let headers = [
        ("authorization", "Bearer phc_one"),
        ("content-encoding", "zstd"),
        ("content-type", "application/json"),
        ("posthog-sdk-info", "posthog-python/7.91.1"),
    ];
    let (status, answer) = sluice.post("/i/v1/analytics/events", zstd, &headers);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["results"]["0190d2f5-6bd4-7c3e-9a51-2b1f0e4c8d01"],
        json!({"result": "ok"})
    );
    assert_eq!(
        answer["results"]["0190d2f5-6bd4-7c3e-9a51-2b1f0e4c8d02"]["result"],
        "drop"
    );
    sluice.drain();
    let stored = sluice.events(1);
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0]["timestamp"], "2024-01-01T00:00:00.000Z",
        "skew correction disabled"
    );
    assert_eq!(stored[0]["$set"], json!({"plan": "pro"}));
    assert_eq!(stored[0]["properties"]["$session_id"], "s1");
    assert_eq!(stored[0]["properties"]["$lib"], "posthog-python");

    let (status, answer) =
        sluice.post("/i/v1/analytics/events", body.to_string().into_bytes(), &[]);
    assert_eq!(
        (status, answer["code"].as_str()),
        (401, Some("missing_token"))
    );
    let (status, answer) = sluice.post(
        "/i/v1/analytics/events",
        body.to_string().into_bytes(),
        &[("authorization", "Bearer phc_nope")],
    );
    assert_eq!(
        (status, answer["code"].as_str()),
        (401, Some("unknown_token"))
    );
}
