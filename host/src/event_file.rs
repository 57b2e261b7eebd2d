//! Files of events, read as the objects `/capture` takes: JSON lines (plain, gzip or zstd, told
//! apart by their first bytes) and Parquet in the S3 export's shape (`uuid`, `event`,
//! `distinct_id`, `timestamp`, `properties`, `ip`, `set`, `set_once` as JSON text...), so that
//! what sluice exported can be replayed. Each event comes with its line (or row) number; a line
//! that is not an event is reported with its number, and the file goes on.

use anyhow::Context as _;
use parquet::file::reader::SerializedFileReader;
use parquet::record::{Field, Row};
use serde_json::{Map, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// One item of a file: an event object, or why line `n` is not one.
pub type Item = Result<(usize, Value), (usize, String)>;

/// An open file of events.
pub struct EventFile {
    path: PathBuf,
    rows: Rows,
    number: usize,
}

enum Rows {
    Lines(Box<dyn BufRead + Send>),
    Parquet(parquet::record::reader::RowIter<'static>),
}

impl EventFile {
    /// Opens `path`: Parquet if it starts with `PAR1`, else JSON lines (gzip or zstd if
    /// compressed).
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let cannot = || format!("cannot read {}", path.display());
        let mut file = std::fs::File::open(path).with_context(cannot)?;
        let mut magic = [0u8; 4];
        let read = file.read(&mut magic).with_context(cannot)?;
        let file = std::fs::File::open(path).with_context(cannot)?;
        let rows = match &magic[..read] {
            b"PAR1" => Rows::Parquet(
                SerializedFileReader::new(file)
                    .with_context(|| format!("{}: not a readable Parquet file", path.display()))?
                    .into_iter(),
            ),
            [0x1f, 0x8b, ..] => Rows::Lines(Box::new(BufReader::new(
                flate2::read::MultiGzDecoder::new(file),
            ))),
            [0x28, 0xb5, 0x2f, 0xfd] => Rows::Lines(Box::new(BufReader::new(
                zstd::Decoder::new(file).with_context(cannot)?,
            ))),
            _ => Rows::Lines(Box::new(BufReader::new(file))),
        };
        Ok(Self {
            path: path.to_owned(),
            rows,
            number: 0,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Iterator for EventFile {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        match &mut self.rows {
            Rows::Lines(lines) => loop {
                let mut line = String::new();
                self.number += 1;
                match lines.read_line(&mut line) {
                    Ok(0) => return None,
                    Ok(_) if line.trim().is_empty() => continue,
                    Ok(_) => {
                        return Some(match serde_json::from_str::<Value>(&line) {
                            Ok(value @ Value::Object(_)) => Ok((self.number, value)),
                            Ok(_) => Err((self.number, "not a JSON object".into())),
                            Err(e) => Err((self.number, format!("not JSON: {e}"))),
                        });
                    }
                    // A damaged compressed stream ends the file.
                    Err(e) => return Some(Err((self.number, format!("cannot read: {e}")))),
                }
            },
            Rows::Parquet(rows) => {
                let row = rows.next()?;
                self.number += 1;
                Some(
                    row.map_err(|e| e.to_string())
                        .and_then(|row| exported(&row))
                        .map(|value| (self.number, value))
                        .map_err(|reason| (self.number, reason)),
                )
            }
        }
    }
}

/// A row of the S3 export's Parquet as a `/capture` object.
fn exported(row: &Row) -> Result<Value, String> {
    let mut event = Map::new();
    for (name, field) in row.get_column_iter() {
        let value = match (name.as_str(), field) {
            (_, Field::Null) => continue,
            ("properties" | "set" | "set_once" | "elements", Field::Str(text)) => {
                serde_json::from_str(text).map_err(|e| format!("column `{name}`: not JSON: {e}"))?
            }
            ("timestamp", Field::TimestampMillis(ms) | Field::Long(ms)) => {
                let time = chrono::DateTime::from_timestamp_millis(*ms)
                    .ok_or_else(|| format!("column `timestamp`: {ms} is out of range"))?;
                Value::from(time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            }
            (_, Field::Str(text)) => Value::from(text.as_str()),
            (_, Field::Long(n)) => Value::from(*n),
            (_, other) => Value::from(other.to_string()),
        };
        let key = match name.as_str() {
            "set" => "$set",
            "set_once" => "$set_once",
            // What capture keeps of an event, not what a producer sends.
            "team_id" | "elements" => continue,
            other => other,
        };
        event.insert(key.to_owned(), value);
    }
    Ok(Value::Object(event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn json_lines_plain_gzip_and_zstd_give_events_and_numbered_rejects() {
        let text = "{\"event\": \"a\"}\n\nnot json\n[1]\n{\"event\": \"b\"}\n";
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(text.as_bytes()).unwrap();
        let bodies = [
            ("plain.jsonl", text.as_bytes().to_vec()),
            ("events.jsonl.gz", gz.finish().unwrap()),
            (
                "events.jsonl.zst",
                zstd::encode_all(text.as_bytes(), 1).unwrap(),
            ),
        ];
        for (name, body) in bodies {
            let path = dir.path().join(name);
            std::fs::write(&path, body).unwrap();
            let items: Vec<Item> = EventFile::open(&path).unwrap().collect();
            assert_eq!(items.len(), 4, "{name}");
            assert_eq!(items[0], Ok((1, serde_json::json!({"event": "a"}))));
            assert!(matches!(&items[1], Err((3, reason)) if reason.starts_with("not JSON")));
            assert_eq!(items[2], Err((4, "not a JSON object".into())));
            assert_eq!(items[3].as_ref().unwrap().0, 5);
        }
    }
}
