//! What the load-driving benchmarks share: sending `/batch` bodies to a server of this
//! process, and finding the built plugins.

use crate::common::Served;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Posts `bodies` (gzip `/batch` bodies) to `served` with `concurrency` clients, at most
/// `per_second` requests each second if set; returns once every one was answered `200`.
pub fn send(served: &Served, bodies: Vec<Vec<u8>>, concurrency: usize, per_second: Option<usize>) {
    let url = format!("http://{}/batch", served.addr);
    let started = Instant::now();
    served.runtime.block_on(async {
        let client = reqwest::Client::new();
        let bodies = std::sync::Arc::new(bodies);
        let tasks: Vec<_> = (0..concurrency)
            .map(|t| {
                let (client, url, bodies) = (client.clone(), url.clone(), bodies.clone());
                tokio::spawn(async move {
                    for r in (t..bodies.len()).step_by(concurrency) {
                        if let Some(rate) = per_second {
                            let due = started + Duration::from_secs_f64(r as f64 / rate as f64);
                            tokio::time::sleep_until(due.into()).await;
                        }
                        let response = client
                            .post(&url)
                            .header("content-encoding", "gzip")
                            .body(bodies[r].clone())
                            .send()
                            .await
                            .unwrap();
                        let status = response.status();
                        assert_eq!(status, 200, "{}", response.text().await.unwrap_or_default());
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
}

/// Where `plugins/build.sh` put the plugins: `SLUICE_PLUGIN_DIR`, else `<target>/plugins`; it
/// must hold each of `needed` (file names).
pub fn plugin_dir(needed: &[&str]) -> PathBuf {
    let dir = std::env::var_os("SLUICE_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target"))
                });
            target.join("plugins")
        });
    assert!(
        needed.iter().all(|file| dir.join(file).is_file()),
        "no plugins in {}: run `plugins/build.sh {}` first",
        dir.display(),
        dir.display()
    );
    dir
}
