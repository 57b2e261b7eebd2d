//! Process-wide telemetry: logs to stderr and a Prometheus recorder for `/metrics`.
//!
//! Every metric is named `sluice_<area>_<what>[_<unit>]`, described here ([`METRICS`], which
//! gives each its `# HELP`), and labelled only by bounded sets (installation, team, topic,
//! partition, kind, outcome, code). Durations and sizes are histograms with buckets that fit
//! them ([`buckets`]), not summaries.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Installs the `tracing` subscriber (filter from `RUST_LOG`, default `info`). Idempotent.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

use Kind::{Counter, Gauge, Histogram};

/// Every metric sluice records: name, kind, help.
const METRICS: &[(&str, Kind, &str)] = &[
    (
        "sluice_admin_unauthorized_total",
        Counter,
        "Admin requests refused for a missing or wrong token.",
    ),
    (
        "sluice_capture_distinct_ids_truncated_total",
        Counter,
        "Distinct ids cut to the longest length kept.",
    ),
    (
        "sluice_capture_errors_total",
        Counter,
        "Capture requests refused, by error code.",
    ),
    (
        "sluice_capture_events_total",
        Counter,
        "Events captured and acknowledged, by team.",
    ),
    (
        "sluice_capture_in_flight_bytes",
        Gauge,
        "Bytes of capture request bodies being decoded now.",
    ),
    (
        "sluice_export_batches_total",
        Counter,
        "Export batches delivered, by installation.",
    ),
    (
        "sluice_export_call_duration_seconds",
        Histogram,
        "Duration of one export plugin call, by installation.",
    ),
    (
        "sluice_export_dead_letters_total",
        Counter,
        "Export batches moved to the export dead letters, by installation.",
    ),
    (
        "sluice_export_events_total",
        Counter,
        "Events exported, by installation.",
    ),
    (
        "sluice_export_lag_events",
        Gauge,
        "Stored events an export installation has not exported yet.",
    ),
    (
        "sluice_export_lag_seconds",
        Gauge,
        "How long the oldest event an export installation has not exported has waited.",
    ),
    (
        "sluice_export_retries_total",
        Counter,
        "Export batches sent again after a failure, by installation.",
    ),
    (
        "sluice_geoip_reloads_total",
        Counter,
        "Times the GeoIP database was reloaded after its file changed.",
    ),
    (
        "sluice_housekeeping_pass_seconds",
        Histogram,
        "Duration of one housekeeping pass over a store (embedded, clickhouse, redis).",
    ),
    (
        "sluice_housekeeping_pruned_total",
        Counter,
        "Rows (or entries) housekeeping deleted, by store and table.",
    ),
    (
        "sluice_ingest_delivery_failures_total",
        Counter,
        "Events the Kafka ingest could not deliver to the brokers.",
    ),
    (
        "sluice_ingest_produce_seconds",
        Histogram,
        "Time to produce a capture request's events to the ingest topic.",
    ),
    (
        "sluice_jobs_total",
        Counter,
        "Jobs run, by installation and outcome.",
    ),
    (
        "sluice_kafka_consumer_lag_events",
        Gauge,
        "Messages a consumer has not read yet, by topic and partition.",
    ),
    (
        "sluice_loader_batch_bytes",
        Histogram,
        "Bytes of one loader insert into ClickHouse.",
    ),
    (
        "sluice_loader_batch_rows",
        Histogram,
        "Rows of one loader insert into ClickHouse.",
    ),
    (
        "sluice_loader_insert_failures_total",
        Counter,
        "Loader inserts ClickHouse failed or refused.",
    ),
    (
        "sluice_loader_insert_seconds",
        Histogram,
        "Duration of one loader insert into ClickHouse.",
    ),
    (
        "sluice_loader_rows_total",
        Counter,
        "Rows the loader inserted into ClickHouse, by table.",
    ),
    (
        "sluice_loader_unreadable_total",
        Counter,
        "Messages on a stored topic that are not rows sluice wrote.",
    ),
    (
        "sluice_plugin_breaker_open",
        Gauge,
        "Whether an installation's circuit breaker is open (1) or not (0).",
    ),
    (
        "sluice_plugin_breaker_transitions_total",
        Counter,
        "Health changes of an installation, by state: open, closed, degraded, healthy, disabled, enabled.",
    ),
    (
        "sluice_plugin_call_duration_seconds",
        Histogram,
        "Duration of one transform call, by installation.",
    ),
    (
        "sluice_plugin_budget_left_ratio",
        Gauge,
        "The share of an installation's budget of time and errors left (0 to 1).",
    ),
    (
        "sluice_plugin_calls_total",
        Counter,
        "Transform calls, by installation.",
    ),
    (
        "sluice_plugin_custom",
        Histogram,
        "Values plugins record with the metrics capability, by installation and name.",
    ),
    (
        "sluice_plugin_custom_total",
        Counter,
        "Counts plugins add with the metrics capability, by installation and name.",
    ),
    (
        "sluice_plugin_dropped_by_reason_total",
        Counter,
        "Events a plugin dropped, by installation and reason (its first 16 reasons; later ones as `other`).",
    ),
    (
        "sluice_plugin_events_dropped_total",
        Counter,
        "Events dropped by a plugin or by its on_error policy, by installation.",
    ),
    (
        "sluice_plugin_failures_total",
        Counter,
        "Events a plugin failed on, by installation and kind.",
    ),
    (
        "sluice_plugin_instances_evicted_total",
        Counter,
        "Plugin instances torn down to stay within the instance budget.",
    ),
    (
        "sluice_plugin_instances_started_total",
        Counter,
        "Plugin instances started, by installation.",
    ),
    (
        "sluice_plugin_isolation_splits_total",
        Counter,
        "Failed batch calls split to find the events responsible, by installation.",
    ),
    (
        "sluice_plugin_log_lines_dropped_total",
        Counter,
        "Plugin log lines not stored (the log writer was full), by installation.",
    ),
    (
        "sluice_plugin_log_lines_suppressed_total",
        Counter,
        "Plugin log lines over the per-call cap or the per-installation rate, by installation.",
    ),
    (
        "sluice_queue_depth_events",
        Gauge,
        "Events in the embedded queue not processed yet.",
    ),
    (
        "sluice_queue_quarantined_total",
        Counter,
        "Queued payloads set aside because they could not be read.",
    ),
    (
        "sluice_reloads_total",
        Counter,
        "Config reloads, by outcome (ok or refused).",
    ),
    (
        "sluice_capture_historical_events_total",
        Counter,
        "Events captured with `historical_migration`, by team (kept out of sluice_capture_events_total).",
    ),
    (
        "sluice_import_events_total",
        Counter,
        "Events read by `sluice import`, by team.",
    ),
    (
        "sluice_failure_bundles_total",
        Counter,
        "Failure bundles written, by installation.",
    ),
    (
        "sluice_rollbacks_total",
        Counter,
        "Installations returned to an earlier plugin version (by the operator or auto_rollback), by installation.",
    ),
    (
        "sluice_shadow_rounds_skipped_total",
        Counter,
        "Sampled rounds the shadow installations skipped because they were behind.",
    ),
    (
        "sluice_sink_delivery_failures_total",
        Counter,
        "Stored rows the Kafka sink could not deliver.",
    ),
    (
        "sluice_sink_produce_seconds",
        Histogram,
        "Time to produce one round's rows to the stored topics.",
    ),
    (
        "sluice_store_dead_letters_total",
        Counter,
        "Dead letters stored.",
    ),
    ("sluice_store_events_total", Counter, "Events stored."),
    (
        "sluice_store_failures_total",
        Counter,
        "Rounds the store failed to write (retried).",
    ),
    (
        "sluice_store_refused_events_total",
        Counter,
        "Events the store refused (set aside as dead letters).",
    ),
    (
        "sluice_task_missed_total",
        Counter,
        "Scheduled task ticks not run, by installation and task.",
    ),
    (
        "sluice_task_runs_total",
        Counter,
        "Scheduled task runs, by installation, task and outcome.",
    ),
    (
        "sluice_worker_events_in_total",
        Counter,
        "Events the worker took from the ingest.",
    ),
    (
        "sluice_worker_lane_panics_total",
        Counter,
        "Worker lanes that panicked (their round was isolated).",
    ),
    (
        "sluice_worker_round_duration_seconds",
        Histogram,
        "Duration of one worker round (chains and store).",
    ),
];

/// Buckets of the histograms, by unit: durations from 100 µs to 60 s, rows and bytes by
/// powers, plugin values by decades.
fn buckets(builder: PrometheusBuilder) -> PrometheusBuilder {
    let seconds = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0, 30.0, 60.0,
    ];
    let rows: Vec<f64> = (0..=7).map(|p| 10f64.powi(p)).collect();
    let bytes: Vec<f64> = (10..=28).step_by(2).map(|p| 2f64.powi(p)).collect();
    let values: Vec<f64> = (-3..=9).map(|p| 10f64.powi(p)).collect();
    [
        ("_seconds", seconds.as_slice()),
        ("_rows", rows.as_slice()),
        ("_bytes", bytes.as_slice()),
    ]
    .into_iter()
    .fold(builder, |builder, (suffix, values)| {
        builder
            .set_buckets_for_metric(Matcher::Suffix(suffix.into()), values)
            .unwrap_or_else(|_| unreachable!("the buckets are not empty"))
    })
    .set_buckets_for_metric(Matcher::Full("sluice_plugin_custom".into()), &values)
    .unwrap_or_else(|_| unreachable!("the buckets are not empty"))
}

/// The Prometheus handle, installing the recorder (with every metric described) on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = buckets(PrometheusBuilder::new()).build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (e.g. by an embedding test); then this
        // handle simply renders nothing.
        if metrics::set_global_recorder(recorder).is_ok() {
            for (name, kind, help) in METRICS {
                match kind {
                    Counter => metrics::describe_counter!(*name, *help),
                    Gauge => metrics::describe_gauge!(*name, *help),
                    Histogram => metrics::describe_histogram!(*name, *help),
                }
            }
        }
        handle
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::Path;

    /// Every `sluice_...` name recorded through a `metrics` macro in the sources under `dir`.
    fn recorded(dir: &Path, names: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                recorded(&path, names);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for macro_name in ["counter!(", "gauge!(", "histogram!("] {
                    for (at, _) in text.match_indices(macro_name) {
                        let rest = &text[at + macro_name.len()..];
                        if let Some(name) = rest.strip_prefix("\"sluice_") {
                            let end = name.find('"').unwrap();
                            names.insert(format!("sluice_{}", &name[..end]));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_metric_recorded_is_described_named_by_its_unit_and_durations_are_histograms() {
        let mut names = BTreeSet::new();
        recorded(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut names,
        );
        let described: BTreeSet<String> = METRICS.iter().map(|(n, ..)| n.to_string()).collect();
        let undescribed: Vec<&String> = names.difference(&described).collect();
        assert!(
            undescribed.is_empty(),
            "not described in METRICS: {undescribed:?}"
        );
        for (name, kind, help) in METRICS {
            assert!(!help.is_empty() && name.starts_with("sluice_"), "{name}");
            let unit = [
                "_total", "_seconds", "_bytes", "_rows", "_events", "_open", "_ratio",
            ]
            .iter()
            .any(|suffix| name.ends_with(suffix));
            assert!(
                unit || *name == "sluice_plugin_custom",
                "{name} names no unit"
            );
            assert_eq!(name.ends_with("_total"), *kind == Counter, "{name}");
            if name.ends_with("_seconds") {
                assert!(
                    *kind == Histogram || name.starts_with("sluice_export_lag"),
                    "{name}"
                );
            }
        }
    }
}
