//! `sluice import`: history from files into a team's store, through its chain (or not).
//!
//! Files are JSON lines (plain, gzip or zstd), Parquet (the S3 export's shape, so an export
//! imports back as it was), and PostHog `/batch` bodies one per line ([`crate::event_file`]).
//! Each event is normalized as capture does it; one without a `uuid` gets one made from its
//! content, so an import run twice stores nothing twice (the sink keeps one event per
//! `(team, uuid)`).
//!
//! A reader thread reads, normalizes and encodes batches; this thread runs them through the
//! team's chain (the server's own code and capabilities) and stores them with the server's sink.
//! After each batch is stored, the import's place in its files is recorded (the `imports`
//! table); killed and started again with the same files, an import goes on from there (a plain
//! file by seeking, a Parquet file by row group; a compressed stream is decompressed up to its
//! place, without being processed again). A batch stored but not yet recorded comes again and
//! is absorbed by the sink.
//!
//! Lines that are not events are counted, written to a rejects file with their file and line,
//! and the import goes on, unless `--strict`.

use crate::backends;
use crate::chain::ChainRunner;
use crate::config::Config;
use crate::event_file::{EventFile, Position};
use crate::sink::kafka::KafkaSink;
use crate::sink::sqlite::SqliteSink;
use crate::sink::{Output, Sink};
use crate::store;
use anyhow::{Context as _, bail};
use rusqlite::Connection;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Events per batch.
const BATCH: usize = 1_000;
/// Where imports' progress is recorded.
const TABLE: &str = "imports";
/// Batches the reader may be ahead.
const AHEAD: usize = 4;

/// What to import and how.
#[derive(Debug, Clone)]
pub struct ImportSettings {
    /// The sluice.toml of the store.
    pub config: PathBuf,
    /// The team the events are for.
    pub team: u64,
    /// The files, in order.
    pub files: Vec<PathBuf>,
    /// Store the events as they are, without the team's chain.
    pub skip_chain: bool,
    /// At most this many events a second.
    pub rate: Option<u64>,
    /// Stop at the first line that is not an event.
    pub strict: bool,
    /// Where rejected lines go (default `<data_dir>/imports/<id>.rejects.jsonl`).
    pub rejects: Option<PathBuf>,
}

/// An import's progress, as recorded and as `sluice imports` prints it.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Progress {
    /// The import (made from the team and the files).
    pub id: String,
    /// The team.
    pub team_id: u64,
    /// The files.
    pub files: Vec<String>,
    /// `running`, `done` or `failed`.
    pub status: String,
    /// The file being read (its index in `files`).
    pub file: usize,
    /// Where in it the next event is.
    pub position: Position,
    /// Events read (rejected lines not included).
    pub read: u64,
    /// Events stored that were not stored before.
    pub stored: u64,
    /// Events read that were stored before (this import run again, or a resumed batch).
    pub already_stored: u64,
    /// Events the chain dropped.
    pub dropped: u64,
    /// Events the chain dead-lettered.
    pub dead_lettered: u64,
    /// Lines that were not events.
    pub rejected: u64,
    /// Bytes of the files read (compressed, as on disk).
    pub bytes: u64,
    /// Bytes of all the files.
    pub total_bytes: u64,
    /// Events a second over the last run so far.
    pub events_per_second: f64,
    /// When it started, epoch ms.
    pub started_at_ms: i64,
    /// When it was last recorded, epoch ms.
    pub updated_at_ms: i64,
    /// Where rejected lines are.
    pub rejects: String,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// A batch the reader made: encoded events, where the files are after it, and what it read.
struct Batch {
    events: Vec<Vec<u8>>,
    file: usize,
    position: Position,
    rejected: u64,
    /// Bytes of its file read so far.
    file_bytes: u64,
}

/// Runs an import, calling `report` after each batch.
pub fn run(
    settings: &ImportSettings,
    report: &mut dyn FnMut(&Progress),
) -> anyhow::Result<Progress> {
    let config = Config::load(&settings.config, &|key| std::env::var(key).ok())?;
    if !config.teams.iter().any(|t| t.id == settings.team) {
        bail!("{}: no team {}", settings.config.display(), settings.team);
    }
    if settings.files.is_empty() {
        bail!("no files to import");
    }
    let files: Vec<PathBuf> = settings
        .files
        .iter()
        .map(|f| std::path::absolute(f).with_context(|| format!("cannot resolve {}", f.display())))
        .collect::<anyhow::Result<_>>()?;
    let total_bytes = files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .map(|m| m.len())
                .with_context(|| format!("cannot read {}", f.display()))
        })
        .sum::<anyhow::Result<u64>>()?;
    std::fs::create_dir_all(&config.server.data_dir)
        .with_context(|| format!("cannot create {}", config.server.data_dir.display()))?;
    let conn = store::open(&config.server.data_dir)?;
    let id = import_id(settings.team, &files);
    let recorded = load(&conn, &id)?.filter(|r| r.status != "done");
    let resumed = recorded.is_some();
    let mut progress = match recorded {
        // Killed before it was done: on from where it was.
        Some(recorded) => recorded,
        None => Progress {
            id: id.clone(),
            team_id: settings.team,
            files: files.iter().map(|f| f.display().to_string()).collect(),
            total_bytes,
            started_at_ms: store::now_ms(),
            rejects: settings
                .rejects
                .clone()
                .unwrap_or_else(|| {
                    config
                        .server
                        .data_dir
                        .join("imports")
                        .join(format!("{id}.rejects.jsonl"))
                })
                .display()
                .to_string(),
            ..Progress::default()
        },
    };
    progress.status = "running".into();
    progress.error = None;
    save(&conn, &progress)?;

    let (output, background) = Pipeline::start(&config, settings.skip_chain)?;
    let result = Rejects::open(Path::new(&progress.rejects), resumed).and_then(|rejects| {
        import(
            settings,
            &files,
            &conn,
            &mut progress,
            output,
            rejects,
            report,
        )
    });
    background.join();
    match result {
        Ok(()) => {
            progress.status = "done".into();
            save(&conn, &progress)?;
            report(&progress);
            Ok(progress)
        }
        Err(error) => {
            progress.status = "failed".into();
            progress.error = Some(format!("{error:#}"));
            save(&conn, &progress)?;
            Err(error)
        }
    }
}

/// Reads the files on a thread, runs and stores each batch here, and records the progress.
fn import(
    settings: &ImportSettings,
    files: &[PathBuf],
    conn: &Connection,
    progress: &mut Progress,
    mut pipeline: Pipeline,
    rejects: Rejects,
    report: &mut dyn FnMut(&Progress),
) -> anyhow::Result<()> {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<anyhow::Result<Batch>>(AHEAD);
    let reader = Reader {
        files: files.to_vec(),
        team: settings.team,
        file: progress.file,
        position: progress.position.clone(),
        strict: settings.strict,
        rejects,
    };
    let sizes: Vec<u64> = files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .collect();
    let started = Instant::now();
    let read_before = progress.read;
    std::thread::scope(|scope| {
        scope.spawn(move || reader.run(&sender));
        for batch in receiver {
            let batch = batch?;
            let count = batch.events.len() as u64;
            let out = pipeline.run(settings.team, batch.events)?;
            progress.read += count;
            progress.stored += out.new;
            progress.already_stored += out.stored - out.new;
            progress.dropped += count - out.stored - out.dead_lettered;
            progress.dead_lettered += out.dead_lettered;
            progress.rejected += batch.rejected;
            progress.bytes =
                sizes[..batch.file.min(sizes.len())].iter().sum::<u64>() + batch.file_bytes;
            progress.file = batch.file;
            progress.position = batch.position;
            let elapsed = started.elapsed().as_secs_f64();
            progress.events_per_second = (progress.read - read_before) as f64 / elapsed.max(1e-9);
            save(conn, progress)?;
            metrics::counter!("sluice_import_events_total", "team" => settings.team.to_string())
                .increment(count);
            report(progress);
            if let Some(rate) = settings.rate {
                let due =
                    Duration::from_secs_f64((progress.read - read_before) as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        anyhow::Ok(())
    })
}

/// What storing a batch did.
struct Stored {
    /// Events stored (new or not).
    stored: u64,
    /// Of them, new.
    new: u64,
    /// Events dead-lettered.
    dead_lettered: u64,
}

/// The team's chain and the sink, as the server runs them.
struct Pipeline {
    chain: Option<(crate::deployment::Deployment, ChainRunner)>,
    sink: Box<dyn Sink>,
}

/// What outlives the pipeline: the log writer of its capabilities.
struct Background(Option<crate::capabilities::Background>);

impl Background {
    fn join(mut self) {
        if let Some(background) = self.0.take() {
            background.join();
        }
    }
}

impl Pipeline {
    /// The chains of `config` (unless `skip_chain`) and its sink. Blocking.
    fn start(config: &Config, skip_chain: bool) -> anyhow::Result<(Self, Background)> {
        let sink: Box<dyn Sink> = match backends::row_producer(config)? {
            Some(rows) => Box::new(KafkaSink::new(rows)),
            None => Box::new(SqliteSink::open(&config.server.data_dir)?),
        };
        if skip_chain {
            return Ok((Self { chain: None, sink }, Background(None)));
        }
        let (_, _, deployment, background, _) = crate::server::load(config.clone())?;
        let runner = ChainRunner::new(config.server.max_instances.max(4));
        Ok((
            Self {
                chain: Some((deployment, runner)),
                sink,
            },
            Background(Some(background)),
        ))
    }

    /// Runs `events` of `team` through the chain and stores what it keeps.
    fn run(&mut self, team: u64, events: Vec<Vec<u8>>) -> anyhow::Result<Stored> {
        let mut out = Output::default();
        let (recordings, events): (Vec<Vec<u8>>, Vec<Vec<u8>>) = events
            .into_iter()
            .partition(|e| crate::worker::is_recording(e));
        out.recordings = recordings;
        match &mut self.chain {
            Some((deployment, runner)) => runner.run(deployment.chains.of(team), events, &mut out),
            None => out.events = events,
        }
        let stored = (out.events.len() + out.recordings.len()) as u64;
        let dead_lettered = out.dead_letters.len() as u64;
        let mut attempt = 0;
        let new = loop {
            match self.sink.store(&out, &mut crate::worker::Unsettled) {
                Ok(new) => break (new.events + new.recordings) as u64,
                // The store is busy or away for a moment: the batch waits, as the worker's do.
                Err(crate::sink::SinkError::Unavailable(reason)) if attempt < 20 => {
                    attempt += 1;
                    tracing::warn!(%reason, attempt, "the store is unavailable; trying again");
                    std::thread::sleep(Duration::from_millis(250 * attempt));
                }
                Err(error) => return Err(error.into()),
            }
        };
        Ok(Stored {
            stored,
            new,
            dead_lettered,
        })
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Some((deployment, runner)) = self.chain.take() {
            runner.teardown();
            deployment.stop_runners();
        }
    }
}

/// The reader: files from a place on, as batches of encoded events.
struct Reader {
    files: Vec<PathBuf>,
    team: u64,
    file: usize,
    position: Position,
    strict: bool,
    rejects: Rejects,
}

impl Reader {
    fn run(mut self, sender: &std::sync::mpsc::SyncSender<anyhow::Result<Batch>>) {
        if let Err(error) = self.read(sender) {
            let _ = sender.send(Err(error));
        }
    }

    fn read(
        &mut self,
        sender: &std::sync::mpsc::SyncSender<anyhow::Result<Batch>>,
    ) -> anyhow::Result<()> {
        let context = crate::capture::normalize::RequestContext {
            now_ms: store::now_ms(),
            ..Default::default()
        };
        while self.file < self.files.len() {
            let path = self.files[self.file].clone();
            let bytes = Arc::new(AtomicU64::new(0));
            let mut file = EventFile::open_at(&path, &self.position, bytes.clone())?;
            let mut batch = Vec::with_capacity(BATCH);
            let mut rejected = 0;
            let index = self.file;
            let next = |events: &mut Vec<Vec<u8>>, rejected: &mut u64, position: Position| {
                let done = Batch {
                    events: std::mem::take(events),
                    file: index,
                    position,
                    rejected: std::mem::take(rejected),
                    file_bytes: bytes.load(Ordering::Relaxed),
                };
                sender.send(Ok(done)).is_ok()
            };
            while let Some(item) = file.next() {
                let events = item.and_then(|(line, object)| {
                    encode(object, self.team, &context).map_err(|reason| (line, reason))
                });
                match events {
                    Ok(events) => batch.extend(events),
                    Err((line, reason)) => {
                        if self.strict {
                            bail!("{}:{line}: {reason} (--strict)", path.display());
                        }
                        self.rejects.write(&path, line, &reason)?;
                        rejected += 1;
                    }
                }
                if batch.len() >= BATCH && !next(&mut batch, &mut rejected, file.position()) {
                    return Ok(());
                }
            }
            let position = file.position();
            if !next(&mut batch, &mut rejected, position) {
                return Ok(());
            }
            self.file += 1;
            self.position = Position::default();
        }
        // The end: an empty batch that moves the import past the last file.
        let _ = sender.send(Ok(Batch {
            events: Vec::new(),
            file: self.files.len(),
            position: Position::default(),
            rejected: 0,
            file_bytes: 0,
        }));
        Ok(())
    }
}

/// `object` (one event, or a `/batch` body) as encoded events of `team`; or why not.
fn encode(
    object: Value,
    team: u64,
    context: &crate::capture::normalize::RequestContext,
) -> Result<Vec<Vec<u8>>, String> {
    let Value::Object(mut object) = object else {
        return Err("not a JSON object".into());
    };
    let (items, sent_at) = match object.remove("batch") {
        Some(Value::Array(items)) => {
            let sent_at = object
                .get("sent_at")
                .and_then(crate::capture::time::parse_time);
            (items, sent_at)
        }
        Some(_) => return Err("`batch` must be an array".into()),
        None => (vec![Value::Object(object)], None),
    };
    let mut events = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let Value::Object(mut item) = item else {
            return Err(format!("event {}: not a JSON object", i + 1));
        };
        if !matches!(item.get("uuid"), Some(Value::String(_))) {
            item.insert("uuid".into(), Value::from(content_uuid(team, &item)));
        }
        events.push(crate::trial::event_of(i, item, context, sent_at)?);
    }
    let payload = crate::capture::normalize::encode(&events, team).map_err(|e| e.to_string())?;
    let mut encoded = Vec::with_capacity(events.len());
    for raw in sluice_abi::wire::BatchReader::new(&payload).map_err(|e| e.to_string())? {
        let raw = raw.map_err(|e| e.to_string())?;
        encoded.push(crate::worker::framed(raw.body()));
    }
    Ok(encoded)
}

/// A uuid made from an event's content (its JSON, keys sorted) and team: the same event
/// imported again gets the same uuid.
pub fn content_uuid(team: u64, event: &Map<String, Value>) -> String {
    let mut hash = Sha256::new();
    hash.update(team.to_le_bytes());
    hash.update(Value::Object(event.clone()).to_string().as_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// The id of an import of `files` for `team`.
fn import_id(team: u64, files: &[PathBuf]) -> String {
    let mut hash = Sha256::new();
    hash.update(team.to_le_bytes());
    for file in files {
        hash.update(file.display().to_string().as_bytes());
        hash.update([0]);
    }
    let digest = hash.finalize();
    format!(
        "team-{team}-{}",
        crate::runtime::sha256_hex(&digest)[..12].to_owned()
    )
}

/// Where rejected lines go, one JSON object each: file, line and reason.
struct Rejects {
    file: std::io::BufWriter<std::fs::File>,
}

impl Rejects {
    /// The rejects file at `path`, continued if `resumed`, else started anew.
    fn open(path: &Path, resumed: bool) -> anyhow::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(resumed)
            .write(true)
            .truncate(!resumed)
            .open(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self {
            file: std::io::BufWriter::new(file),
        })
    }

    fn write(&mut self, path: &Path, line: usize, reason: &str) -> anyhow::Result<()> {
        let record = serde_json::json!({"file": path, "line": line, "reason": reason});
        writeln!(self.file, "{record}")?;
        // Written before the batch it belongs to is recorded as done.
        self.file.flush()?;
        Ok(())
    }
}

/// Records `progress`.
fn save(conn: &Connection, progress: &Progress) -> anyhow::Result<()> {
    let mut progress = progress.clone();
    progress.updated_at_ms = store::now_ms();
    store::progress::save(conn, TABLE, &progress.id, &progress)
}

/// The recorded progress of import `id`.
fn load(conn: &Connection, id: &str) -> anyhow::Result<Option<Progress>> {
    store::progress::load(conn, TABLE, id)
}

/// Every import recorded in `conn`, the most recently active first.
pub fn list(conn: &Connection) -> anyhow::Result<Vec<Progress>> {
    store::progress::all(conn, TABLE)
}
