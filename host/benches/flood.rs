//! Capture under a flood of large batches: the real `sluice` binary, `CONCURRENT` clients each
//! posting one gzip `/batch` of about 18 MB at once, while `/health` is probed every 50 ms with a
//! 2 s timeout. Prints the server's peak resident memory, the probes answered, and how many
//! batches were accepted (`200`, every one stored) or refused (`503` with `Retry-After`).
//!
//! `cargo bench -p sluice --bench flood`

use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const CONCURRENT: usize = 96;
const EVENTS: usize = 2_600;

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        "[admin]\nlisten = \"127.0.0.1:0\"\n[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\
         [capture]\nmax_batch_body_bytes = 25000000\n\
         [[teams]]\nid = 1\ntoken = \"phc_flood\"\n",
    )
    .expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .expect("sluice starts");
    let stdout = child.stdout.take().expect("stdout");
    let url = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("listening on ").map(str::to_owned))
        .expect("sluice listens");
    let body = batch();
    println!(
        "sluice capture flood: {CONCURRENT} concurrent gzip batches of {:.1} MB ({EVENTS} events each), /health probed every 50 ms",
        body.len() as f64 / 1e6
    );
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("client");
    let done = AtomicBool::new(false);
    let started = Instant::now();
    let (statuses, probes) = std::thread::scope(|scope| {
        let prober = scope.spawn(|| {
            let health = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("client");
            let mut probes = (0, 0);
            while !done.load(Ordering::SeqCst) {
                probes.0 += 1;
                if health
                    .get(format!("{url}/health"))
                    .send()
                    .is_ok_and(|r| r.status() == 200)
                {
                    probes.1 += 1;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            probes
        });
        let senders: Vec<_> = (0..CONCURRENT)
            .map(|_| {
                scope.spawn(|| {
                    client
                        .post(format!("{url}/batch"))
                        .header("content-type", "application/json")
                        .header("content-encoding", "gzip")
                        .body(body.clone())
                        .send()
                        .map(|r| (r.status().as_u16(), r.headers().contains_key("retry-after")))
                        .unwrap_or((0, false))
                })
            })
            .collect();
        let statuses: Vec<(u16, bool)> = senders
            .into_iter()
            .map(|s| s.join().expect("sender"))
            .collect();
        done.store(true, Ordering::SeqCst);
        (statuses, prober.join().expect("prober"))
    });
    let elapsed = started.elapsed();
    let peak = peak_rss_mib(child.id());
    let accepted = statuses.iter().filter(|(s, _)| *s == 200).count();
    let busy = statuses
        .iter()
        .filter(|(s, retry)| *s == 503 && *retry)
        .count();
    println!("  answered in {:.1} s", elapsed.as_secs_f64());
    println!("  peak RSS: {peak} MiB");
    println!(
        "  /health: {} of {} probes answered within 2 s",
        probes.1, probes.0
    );
    println!(
        "  batches: {accepted} accepted (200), {busy} refused (503 + Retry-After), {} other",
        CONCURRENT - accepted - busy
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// A `/batch` of [`EVENTS`] events with about 9 KB of random base64 each, gzipped (random text
/// barely compresses, like the replay payloads that make batches this large).
fn batch() -> Vec<u8> {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut json = String::from("{\"api_key\":\"phc_flood\",\"batch\":[");
    for i in 0..EVENTS {
        let blob: String = (0..9_000)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                char::from(alphabet[(seed % 64) as usize])
            })
            .collect();
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!(
            "{{\"event\":\"big\",\"distinct_id\":\"u{i}\",\"properties\":{{\"blob\":\"{blob}\"}}}}"
        ));
    }
    json.push_str("]}");
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(json.as_bytes()).expect("gzip");
    gz.finish().expect("gzip")
}

fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}
