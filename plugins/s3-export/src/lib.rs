//! Exports stored events to an object store (S3, any S3-compatible server, or the local folder
//! store), one object per batch, like PostHog's S3 export plugin but without its losses and
//! copies:
//!
//! - **Named after the batch.** The key comes from a template whose variables are the batch's own
//!   (its id, and date parts of when it was formed), so a batch sent again after a failure or a
//!   crash overwrites its earlier object instead of adding a copy. The default template is
//!   PostHog's layout: `{prefix}{year}-{month}-{day}/{year}{month}{day}-{hour}{minute}{second}-{id}{ext}`.
//! - **Only what it should.** The host applies the installation's `events_to_ignore` per event
//!   before the plugin sees a batch (PostHog uploaded ignored events whenever one other event
//!   survived); batching by size and age is the installation's `export` table too (PostHog's
//!   `uploadMegabytes` / `uploadMinutes`).
//! - **Formats.** `jsonl`: one event per line in PostHog's exported shape (`uuid`, `event`,
//!   `properties`, `distinct_id`, `team_id`, `timestamp` as ISO-8601 UTC, `ip`, `$set`,
//!   `$set_once`, `elements`), compressed with `gzip` (default), `zstd` or `none`. `parquet`:
//!   one row per event with the same columns (`set`, `set_once`; JSON columns as text),
//!   Snappy-compressed.
//! - Failures of the store that may pass (unavailable, timeout) are retryable; the host backs
//!   off and retries. Refusals (not granted, too large, a bad key) are not.

mod format;
mod key;

use format::Format;
use key::KeyTemplate;
use sluice_sdk::host::object_store;
use sluice_sdk::host::{ErrorKind, HostError};
use sluice_sdk::{
    Config, ConfigField, ConfigType, Event, ExportBatch, Exporter, Manifest, Plugin, PluginError,
};

/// The S3 export plugin.
#[derive(Debug)]
pub struct S3Export {
    store: String,
    prefix: String,
    format: Format,
    key: KeyTemplate,
}

impl Plugin for S3Export {
    fn manifest() -> Manifest {
        Manifest::new(
            "s3-export",
            env!("CARGO_PKG_VERSION"),
            "Exports stored events to S3 or another object store as JSON lines or Parquet",
        )
        .needs(&["object_store"])
        .stateless()
        .config(vec![
            ConfigField::new(
                "store",
                ConfigType::Text,
                "The object store to write to (`[object_stores.NAME]`, granted to the installation)",
            )
            .with_default("exports"),
            ConfigField::new(
                "prefix",
                ConfigType::Text,
                "Prepended to every key, e.g. `posthog/events/`",
            )
            .with_default(""),
            ConfigField::choice(
                "format",
                "`jsonl` (one event per line) or `parquet`",
                &["jsonl", "parquet"],
            )
            .with_default("jsonl"),
            ConfigField::choice(
                "compression",
                "Compression of `jsonl` objects (Parquet is always Snappy-compressed inside)",
                &["gzip", "zstd", "none"],
            )
            .with_default("gzip"),
            ConfigField::new(
                "key_template",
                ConfigType::Text,
                "The object key; variables {prefix} {year} {month} {day} {hour} {minute} {second} {team} {id} {ext}; must contain {id}",
            )
            .with_default(key::DEFAULT_TEMPLATE),
        ])
    }

    fn setup(config: &Config) -> Result<Self, PluginError> {
        let export = Self {
            format: Format::new(config.text("format")?, config.text("compression")?),
            store: config.text("store")?.to_owned(),
            prefix: config.text("prefix")?.to_owned(),
            key: KeyTemplate::parse(config.text("key_template")?)?,
        };
        // A store the installation may not use (a typo in `store`) fails now, at start, rather
        // than at the first batch.
        let probe = format!("{}.sluice-setup-check", export.prefix);
        if let Err(error) = object_store::head(&export.store, &probe)
            && error.kind == ErrorKind::Refused
        {
            return Err(PluginError::new(format!("config `store`: {error}")));
        }
        Ok(export)
    }
}

impl Exporter for S3Export {
    fn export(&mut self, batch: &ExportBatch, events: &[Event<'_>]) -> Result<(), PluginError> {
        let body = self.format.encode(events)?;
        let key = self
            .key
            .render(batch, &self.prefix, self.format.extension());
        object_store::put(&self.store, &key, &body).map_err(|error| store_error(&key, error))
    }
}

/// A store failure as a plugin error: retryable when the store may answer later.
fn store_error(key: &str, error: HostError) -> PluginError {
    let message = format!("cannot write {key}: {error}");
    match error.kind {
        ErrorKind::Unavailable | ErrorKind::Timeout => PluginError::retryable(message),
        ErrorKind::Invalid | ErrorKind::TooLarge | ErrorKind::Refused => PluginError::new(message),
    }
}

sluice_sdk::export_plugin!(S3Export: exporter);

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use sluice_sdk::testing::{Harness, TestEvent};
    use sluice_sdk::{Value, json};
    use std::io::Read;

    /// 2024-01-02T03:04:05.678Z
    const FORMED_AT: i64 = 1_704_164_645_678;

    fn events() -> Vec<TestEvent> {
        vec![
            TestEvent::new("$pageview")
                .distinct_id("u1")
                .ip("1.2.3.4")
                .property("$current_url", "https://x"),
            TestEvent::new("signed_up").distinct_id("u2"),
        ]
    }

    fn gunzip(bytes: &[u8]) -> String {
        let mut text = String::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_string(&mut text)
            .unwrap();
        text
    }

    #[test]
    fn a_batch_becomes_one_gzip_jsonl_object_named_after_the_batch() {
        let mut harness = Harness::<S3Export>::new(json!({"prefix": "posthog/"})).unwrap();
        harness.export("7-9", FORMED_AT, events()).unwrap();
        let objects = harness.objects("exports");
        let key = "posthog/2024-01-02/20240102-030405-7-9.jsonl.gz";
        let lines: Vec<Value> = gunzip(&objects[key])
            .lines()
            .map(|line| line.parse().unwrap())
            .collect();
        assert_eq!(objects.len(), 1, "{:?}", objects.keys());
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "$pageview");
        assert_eq!(lines[0]["distinct_id"], "u1");
        assert_eq!(lines[0]["team_id"], 1);
        assert_eq!(lines[0]["ip"], "1.2.3.4");
        assert_eq!(lines[0]["timestamp"], "2023-11-14T22:13:20.000Z");
        assert_eq!(lines[0]["properties"], json!({"$current_url": "https://x"}));
        assert_eq!(lines[0]["elements"], json!([]));
        assert_eq!(lines[1]["ip"], Value::Null);
        // Sent again (a retry): the same key, not a second object.
        harness.export("7-9", FORMED_AT, events()).unwrap();
        assert_eq!(harness.objects("exports").len(), 1);
    }

    #[test]
    fn zstd_plain_and_parquet_objects() {
        for (format, compression, ext) in [
            ("jsonl", "zstd", ".jsonl.zst"),
            ("jsonl", "none", ".jsonl"),
            ("parquet", "gzip", ".parquet"),
        ] {
            let mut harness = Harness::<S3Export>::new(
                json!({"format": format, "compression": compression, "key_template": "{team}/{id}{ext}"}),
            )
            .unwrap();
            harness.export("1-2", FORMED_AT, events()).unwrap();
            let objects = harness.objects("exports");
            let body = &objects[&format!("1/1-2{ext}")];
            match ext {
                ".jsonl.zst" => {
                    let mut text = String::new();
                    ruzstd::decoding::StreamingDecoder::new(&body[..])
                        .unwrap()
                        .read_to_string(&mut text)
                        .unwrap();
                    assert_eq!(text.lines().count(), 2);
                }
                ".jsonl" => assert!(std::str::from_utf8(body).unwrap().contains("signed_up")),
                _ => {
                    assert_eq!(&body[..4], b"PAR1");
                    let reader =
                        SerializedFileReader::new(bytes::Bytes::copy_from_slice(body)).unwrap();
                    assert_eq!(reader.metadata().file_metadata().num_rows(), 2);
                }
            }
        }
    }

    #[test]
    fn templates_without_the_batch_id_are_refused() {
        let error =
            Harness::<S3Export>::new(json!({"key_template": "{prefix}{year}.jsonl"})).unwrap_err();
        assert!(error.message.contains("{id}"), "{error}");
        let error = Harness::<S3Export>::new(json!({"key_template": "{id}{nope}"})).unwrap_err();
        assert!(error.message.contains("{nope}"), "{error}");
    }

    #[test]
    fn refusals_are_permanent_and_outages_retryable() {
        assert!(!store_error("k", HostError::new(ErrorKind::Refused, "no")).retryable);
        assert!(store_error("k", HostError::new(ErrorKind::Unavailable, "down")).retryable);
    }
}
