//! Object bodies: JSON lines (gzip, zstd or plain) or Parquet, in PostHog's exported shape.

use chrono::{DateTime, SecondsFormat};
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use sluice_sdk::{Event, PluginError, Value};
use std::io::Write;
use std::sync::Arc;

/// The Parquet schema: one column per field of the exported shape.
const PARQUET_SCHEMA: &str = "message event {
    REQUIRED BYTE_ARRAY uuid (STRING);
    REQUIRED BYTE_ARRAY event (STRING);
    REQUIRED BYTE_ARRAY properties (JSON);
    REQUIRED BYTE_ARRAY distinct_id (STRING);
    REQUIRED INT64 team_id;
    REQUIRED INT64 timestamp (TIMESTAMP(MILLIS, true));
    OPTIONAL BYTE_ARRAY ip (STRING);
    OPTIONAL BYTE_ARRAY set (JSON);
    OPTIONAL BYTE_ARRAY set_once (JSON);
    REQUIRED BYTE_ARRAY elements (JSON);
}";

/// How a batch is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON lines, gzip-compressed.
    JsonlGzip,
    /// JSON lines, zstd-compressed (pure-Rust encoder, its fastest level).
    JsonlZstd,
    /// JSON lines.
    Jsonl,
    /// Parquet with Snappy-compressed pages.
    Parquet,
}

impl Format {
    /// The format for the `format` and `compression` config values (already checked against
    /// their choices).
    pub fn new(format: &str, compression: &str) -> Self {
        match (format, compression) {
            ("parquet", _) => Self::Parquet,
            (_, "zstd") => Self::JsonlZstd,
            (_, "none") => Self::Jsonl,
            _ => Self::JsonlGzip,
        }
    }

    /// The key's extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::JsonlGzip => ".jsonl.gz",
            Self::JsonlZstd => ".jsonl.zst",
            Self::Jsonl => ".jsonl",
            Self::Parquet => ".parquet",
        }
    }

    /// The object body of `events`.
    pub fn encode(self, events: &[Event<'_>]) -> Result<Vec<u8>, PluginError> {
        let lines = || {
            let mut lines = Vec::with_capacity(events.len() * 512);
            for event in events {
                json_line(&mut lines, event);
            }
            lines
        };
        let failed =
            |e: &dyn std::fmt::Display| PluginError::new(format!("cannot encode the batch: {e}"));
        match self {
            Self::Jsonl => Ok(lines()),
            Self::JsonlGzip => {
                let mut gz =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                gz.write_all(&lines()).map_err(|e| failed(&e))?;
                gz.finish().map_err(|e| failed(&e))
            }
            Self::JsonlZstd => Ok(ruzstd::encoding::compress_to_vec(
                &lines()[..],
                ruzstd::encoding::CompressionLevel::Fastest,
            )),
            Self::Parquet => parquet(events).map_err(|e| failed(&e)),
        }
    }
}

/// The event's time as ISO-8601 UTC with milliseconds.
fn timestamp(event: &Event<'_>) -> String {
    DateTime::from_timestamp_millis(event.timestamp_ms())
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `properties.$elements` of an `$autocapture` event (PostHog exports elements only for those),
/// else `[]`.
fn elements(event: &Event<'_>) -> String {
    match event.property("$elements") {
        Some(elements @ Value::Array(_)) if event.name() == "$autocapture" => elements.to_string(),
        _ => "[]".to_owned(),
    }
}

/// Appends `text` as a JSON string.
fn string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(Value::from(text).to_string().as_bytes());
}

/// Appends one event as a JSON line; the JSON texts of the event (properties, `$set`) are copied
/// as they are, without parsing.
fn json_line(out: &mut Vec<u8>, event: &Event<'_>) {
    out.extend_from_slice(b"{\"uuid\":");
    string(out, &event.uuid());
    out.extend_from_slice(b",\"event\":");
    string(out, event.name());
    out.extend_from_slice(b",\"properties\":");
    out.extend_from_slice(event.properties_json().as_bytes());
    out.extend_from_slice(b",\"distinct_id\":");
    string(out, event.distinct_id());
    out.extend_from_slice(format!(",\"team_id\":{}", event.team_id()).as_bytes());
    out.extend_from_slice(b",\"timestamp\":");
    string(out, &timestamp(event));
    out.extend_from_slice(b",\"ip\":");
    match event.ip() {
        Some(ip) => string(out, ip),
        None => out.extend_from_slice(b"null"),
    }
    for (key, json) in [
        ("$set", event.set_json()),
        ("$set_once", event.set_once_json()),
    ] {
        if let Some(json) = json {
            out.extend_from_slice(format!(",\"{key}\":").as_bytes());
            out.extend_from_slice(json.as_bytes());
        }
    }
    out.extend_from_slice(b",\"elements\":");
    out.extend_from_slice(elements(event).as_bytes());
    out.extend_from_slice(b"}\n");
}

fn parquet(events: &[Event<'_>]) -> parquet::errors::Result<Vec<u8>> {
    let schema = Arc::new(parse_message_type(PARQUET_SCHEMA)?);
    let properties = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let mut writer = SerializedFileWriter::new(Vec::new(), schema, properties)?;
    let mut group = writer.next_row_group()?;
    let text = |value: &str| ByteArray::from(value.as_bytes().to_vec());
    let required: [Vec<ByteArray>; 4] = [
        events.iter().map(|e| text(&e.uuid())).collect(),
        events.iter().map(|e| text(e.name())).collect(),
        events.iter().map(|e| text(e.properties_json())).collect(),
        events.iter().map(|e| text(e.distinct_id())).collect(),
    ];
    let numbers: [Vec<i64>; 2] = [
        events.iter().map(|e| e.team_id() as i64).collect(),
        events.iter().map(|e| e.timestamp_ms()).collect(),
    ];
    let optional: [Vec<Option<&str>>; 3] = [
        events.iter().map(|e| e.ip()).collect(),
        events.iter().map(|e| e.set_json()).collect(),
        events.iter().map(|e| e.set_once_json()).collect(),
    ];
    let elements: Vec<ByteArray> = events.iter().map(|e| text(&elements(e))).collect();
    let mut column = 0;
    while let Some(mut writer) = group.next_column()? {
        match column {
            0..=3 => {
                writer
                    .typed::<ByteArrayType>()
                    .write_batch(&required[column], None, None)?;
            }
            4 | 5 => {
                writer
                    .typed::<Int64Type>()
                    .write_batch(&numbers[column - 4], None, None)?;
            }
            6..=8 => {
                let values = &optional[column - 6];
                let present: Vec<ByteArray> = values.iter().flatten().map(|v| text(v)).collect();
                let levels: Vec<i16> = values.iter().map(|v| i16::from(v.is_some())).collect();
                writer
                    .typed::<ByteArrayType>()
                    .write_batch(&present, Some(&levels), None)?;
            }
            _ => {
                writer
                    .typed::<ByteArrayType>()
                    .write_batch(&elements, None, None)?;
            }
        }
        writer.close()?;
        column += 1;
    }
    group.close()?;
    writer.into_inner()
}
