//! Tasks and jobs for the scheduler's tests. Each logs what it does (`sluice logs`), which is how
//! the tests see it:
//!
//! - task `tick`: logs `tick <scheduled-at>`;
//! - task `slow`: logs `slow start <scheduled-at>`, works for `slow_ms`, logs `slow end`;
//! - task `forever`: logs `forever <scheduled-at>`, then never returns;
//! - task `hog`: logs `hog <scheduled-at>`, then allocates 256 MiB;
//! - job `echo`: logs `echo <id> <attempt> <payload>`;
//! - job `flaky`: fails (retryably) until attempt `payload.succeed_on`, logging each attempt;
//! - job `busy`: logs `busy <id> <attempt>`, then works for `slow_ms`;
//! - job `chain`: queues an `echo` job one second later with its own payload.
//!
//! Only `tick` has a real default schedule; the others fire when a test schedules them.

use sluice_sdk::host::{self, Level, jobs};
use sluice_sdk::{
    Config, ConfigField, ConfigType, Job, Jobs, Manifest, Plugin, PluginError, Scheduled, TimeUnit,
    Value,
};
use std::time::{Duration, Instant};

/// A schedule that never fires in a test run.
const NEVER: &str = "0 0 0 1 1 * 2099";

/// The ticker.
#[derive(Debug)]
pub struct Ticker {
    slow: Duration,
}

impl Plugin for Ticker {
    fn manifest() -> Manifest {
        Manifest::new("ticker", env!("CARGO_PKG_VERSION"), "Ticks for the tests")
            .needs(&["log", "jobs"])
            .task("tick", "every minute", "Logs its tick")
            .task("slow", NEVER, "Takes `slow_ms`")
            .task("forever", NEVER, "Never returns")
            .task("hog", NEVER, "Allocates 256 MiB")
            .config(vec![
                ConfigField::new("slow_ms", ConfigType::Integer, "How long slow work takes")
                    .with_default(1_500),
            ])
    }

    fn setup(config: &Config) -> Result<Self, PluginError> {
        Ok(Self {
            slow: Duration::from_millis(config.integer("slow_ms")?.max(0) as u64),
        })
    }
}

fn log(message: String) {
    host::log(Level::Info, &message);
}

impl Ticker {
    fn work(&self) {
        let started = Instant::now();
        while started.elapsed() < self.slow {
            std::hint::black_box(started.elapsed());
        }
    }
}

impl Scheduled for Ticker {
    fn run(&mut self, task: &str, scheduled_at_ms: i64) -> Result<(), PluginError> {
        match task {
            "tick" => log(format!("tick {scheduled_at_ms}")),
            "slow" => {
                log(format!("slow start {scheduled_at_ms}"));
                self.work();
                log(format!("slow end {scheduled_at_ms}"));
            }
            "forever" => {
                log(format!("forever {scheduled_at_ms}"));
                loop {
                    std::hint::black_box(Instant::now());
                }
            }
            "hog" => {
                log(format!("hog {scheduled_at_ms}"));
                let hog = vec![1u8; 256 << 20];
                log(format!("hog got {} bytes", std::hint::black_box(hog).len()));
            }
            other => return Err(PluginError::new(format!("no task `{other}`"))),
        }
        Ok(())
    }
}

impl Jobs for Ticker {
    fn run_job(&mut self, job: &Job) -> Result<(), PluginError> {
        match job.name.as_str() {
            "echo" => log(format!("echo {} {} {}", job.id, job.attempt, job.payload)),
            "flaky" => {
                let payload: Value = serde_json::from_str(&job.payload).unwrap_or_default();
                let succeed_on = payload["succeed_on"].as_u64().unwrap_or(u64::MAX);
                log(format!("flaky {} attempt {}", job.id, job.attempt));
                if u64::from(job.attempt) < succeed_on {
                    return Err(PluginError::retryable(format!(
                        "flaky fails attempt {}",
                        job.attempt
                    )));
                }
            }
            "busy" => {
                log(format!("busy {} {}", job.id, job.attempt));
                self.work();
            }
            "chain" => {
                jobs::enqueue_in("echo", &job.payload, 1, TimeUnit::Seconds)?;
            }
            other => return Err(PluginError::new(format!("no job `{other}`"))),
        }
        Ok(())
    }
}

sluice_sdk::export_plugin!(Ticker: scheduled, jobs);
