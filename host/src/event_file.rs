//! Files of events, read as the objects `/capture` takes: JSON lines (plain, gzip or zstd, told
//! apart by their first bytes) and Parquet in the S3 export's shape (`uuid`, `event`,
//! `distinct_id`, `timestamp`, `properties`, `ip`, `set`, `set_once` as JSON text...), so that
//! what sluice exported can be replayed. Each event comes with its line (or row) number; a line
//! that is not an event is reported with its number, and the file goes on.

use anyhow::Context as _;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A place in a file of events: the next line (or row) and, for lines, its byte offset in the
/// (decompressed) text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Lines (or rows) before it.
    pub line: usize,
    /// Bytes of text before it.
    pub offset: u64,
}

/// Counts the bytes read from a file, for progress.
struct Counted<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// One item of a file: an event object, or why line `n` is not one.
pub type Item = Result<(usize, Value), (usize, String)>;

/// An open file of events.
pub struct EventFile {
    path: PathBuf,
    rows: Rows,
    number: usize,
    offset: u64,
}

enum Rows {
    Lines(Box<dyn BufRead + Send>),
    /// The rows, and the file's size and counter: a Parquet file counts as read when its rows
    /// are.
    Parquet(
        Box<dyn Iterator<Item = parquet::errors::Result<Row>> + Send>,
        u64,
        Arc<AtomicU64>,
    ),
}

impl EventFile {
    /// Opens `path`: Parquet if it starts with `PAR1`, else JSON lines (gzip or zstd if
    /// compressed).
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Self::open_at(path, &Position::default(), Arc::default())
    }

    /// Opens `path` at `position` (a plain file by seeking to it, a Parquet file by skipping
    /// whole row groups, a compressed one by decompressing up to it); `bytes` counts the bytes
    /// of the file read so far, from its start.
    pub fn open_at(
        path: &Path,
        position: &Position,
        bytes: Arc<AtomicU64>,
    ) -> anyhow::Result<Self> {
        let cannot = || format!("cannot read {}", path.display());
        let mut file = std::fs::File::open(path).with_context(cannot)?;
        let mut magic = [0u8; 4];
        let read = file.read(&mut magic).with_context(cannot)?;
        file.seek(SeekFrom::Start(0)).with_context(cannot)?;
        let counted = |file| Counted {
            inner: file,
            count: bytes.clone(),
        };
        let mut opened = Self {
            path: path.to_owned(),
            rows: Rows::Lines(Box::new(std::io::empty())),
            number: position.line,
            offset: position.offset,
        };
        opened.rows = match &magic[..read] {
            b"PAR1" => {
                let reader = SerializedFileReader::new(file)
                    .with_context(|| format!("{}: not a readable Parquet file", path.display()))?;
                let size = std::fs::metadata(path).with_context(cannot)?.len();
                Rows::Parquet(rows_from(reader, position.line)?, size, bytes.clone())
            }
            [0x1f, 0x8b, ..] => {
                let mut lines = BufReader::new(flate2::read::MultiGzDecoder::new(counted(file)));
                skip(&mut lines, position.offset).with_context(cannot)?;
                Rows::Lines(Box::new(lines))
            }
            [0x28, 0xb5, 0x2f, 0xfd] => {
                let mut lines =
                    BufReader::new(zstd::Decoder::new(counted(file)).with_context(cannot)?);
                skip(&mut lines, position.offset).with_context(cannot)?;
                Rows::Lines(Box::new(lines))
            }
            _ => {
                file.seek(SeekFrom::Start(position.offset))
                    .with_context(cannot)?;
                Rows::Lines(Box::new(BufReader::new(counted(file))))
            }
        };
        Ok(opened)
    }

    /// Where the next event is.
    pub fn position(&self) -> Position {
        Position {
            line: self.number,
            offset: self.offset,
        }
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
                let read = lines.read_line(&mut line);
                self.number += 1;
                match read {
                    Ok(0) => {
                        self.number -= 1;
                        return None;
                    }
                    Ok(n) => self.offset += n as u64,
                    Err(e) => {
                        // A damaged stream ends the file.
                        self.rows = Rows::Lines(Box::new(std::io::empty()));
                        return Some(Err((self.number, format!("cannot read: {e}"))));
                    }
                }
                if line.trim().is_empty() {
                    continue;
                }
                return Some(match serde_json::from_str::<Value>(&line) {
                    Ok(value @ Value::Object(_)) => Ok((self.number, value)),
                    Ok(_) => Err((self.number, "not a JSON object".into())),
                    Err(e) => Err((self.number, format!("not JSON: {e}"))),
                });
            },
            Rows::Parquet(rows, size, bytes) => {
                let Some(row) = rows.next() else {
                    bytes.fetch_add(std::mem::take(size), Ordering::Relaxed);
                    return None;
                };
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

/// The rows of `reader` from row `from` on, skipping whole row groups before it.
fn rows_from(
    reader: SerializedFileReader<std::fs::File>,
    from: usize,
) -> anyhow::Result<Box<dyn Iterator<Item = parquet::errors::Result<Row>> + Send>> {
    let reader = Arc::new(reader);
    let mut skipped = 0usize;
    let mut first_group = 0;
    for group in reader.metadata().row_groups() {
        let rows = group.num_rows() as usize;
        if skipped + rows > from {
            break;
        }
        skipped += rows;
        first_group += 1;
    }
    let groups = reader.num_row_groups();
    let within = from - skipped;
    let rows = (first_group..groups)
        .flat_map(
            move |g| -> Box<dyn Iterator<Item = parquet::errors::Result<Row>> + Send> {
                match reader.get_row_group(g).and_then(|group| {
                    let rows: Vec<parquet::errors::Result<Row>> =
                        group.get_row_iter(None)?.collect();
                    Ok(rows)
                }) {
                    Ok(rows) => Box::new(rows.into_iter()),
                    Err(e) => Box::new(std::iter::once(Err(e))),
                }
            },
        )
        .skip(within);
    Ok(Box::new(rows))
}

/// Reads and forgets the first `bytes` bytes of `reader`.
fn skip(reader: &mut impl Read, bytes: u64) -> std::io::Result<()> {
    let skipped = std::io::copy(&mut reader.take(bytes), &mut std::io::sink())?;
    if skipped < bytes {
        return Err(std::io::Error::other(format!(
            "the file is shorter than where the import was ({bytes} bytes)"
        )));
    }
    Ok(())
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
