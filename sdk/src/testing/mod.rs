//! A native test harness: run a plugin's logic under plain `cargo test`, no wasm involved.
//!
//! Host capabilities are in-memory fakes per test thread: `storage` and `cache` behave like the
//! host's (same caps, same Redis semantics), `geoip` and `http` answer with what the test
//! registers ([`Harness::with_geoip`], [`Harness::with_http`]), and `object_store` fails where
//! the test says ([`Harness::with_put_errors`]); tests read and seed them
//! ([`Harness::cache_get`], [`Harness::storage_get`], [`Harness::queue_job`]...).
//!
//! What the host enforces, the harness enforces the same way: config checked against the
//! manifest, the same batch encoding and the host's own code applying edits, a capability used
//! without being declared in the manifest (a test panics saying so, as the server refuses to
//! load such a plugin), at most 100 log lines per call (the rest reported in one line, as the
//! server does) and lines cut at 4 KiB, job names and payloads checked.
//!
//! What it cannot: the sandbox. Memory caps, call deadlines, fuel, the breaker, the grants an
//! operator gives, and how the server batches (it splits each round into lanes by distinct id,
//! so a batch holds some users' events, each user's in order) exist only in the host. Run the
//! same tests against the built component with [`Harness::wasm`], which runs it in the real
//! host through `sluice plugin run`.
//!
//! `sdk/README.md` shows it in use; `sdk/examples/tagger.rs` is that code, compiled and tested.

mod wasm;

pub use wasm::WasmHarness;

use crate::event::format_uuid;
use crate::host::geoip::Location;
use crate::host::http::{Request, Response};
use crate::host::recordings::{Archive, Snapshot};
use crate::host::{HostError, Level};
use crate::{
    Config, EventBuf, ExportBatch, Exporter, Job, Jobs, Outcome, Plugin, PluginError, Scheduled,
    Transform, export_batch, process_batch,
};
use serde_json::{Map, Value};
use sluice_abi::limits;
use sluice_abi::wire::{self, BatchWriter};
use std::cell::RefCell;
use std::collections::BTreeMap;

/// Something a plugin sent to the host while running under the harness.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// A log line.
    Log(Level, String),
    /// A counter increment.
    Counter(String, u64),
    /// A histogram observation.
    Histogram(String, f64),
}

thread_local! {
    static RECORDED: RefCell<Vec<Recorded>> = const { RefCell::new(Vec::new()) };
    /// Log lines recorded and suppressed in the current call.
    static CALL_LOG: std::cell::Cell<(u32, u32)> = const { std::cell::Cell::new((0, 0)) };
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Records what the plugin sent, held to the host's rules: the capability declared, at most
/// [`limits::MAX_LOG_LINES_PER_CALL`] lines a call, each cut to [`limits::MAX_LOG_LINE_BYTES`].
pub(crate) fn record(item: Recorded) {
    let item = match item {
        Recorded::Log(level, mut line) => {
            fakes::require("log");
            let (lines, suppressed) = CALL_LOG.get();
            if lines >= limits::MAX_LOG_LINES_PER_CALL {
                CALL_LOG.set((lines, suppressed + 1));
                return;
            }
            CALL_LOG.set((lines + 1, suppressed));
            let mut end = line.len().min(limits::MAX_LOG_LINE_BYTES);
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
            Recorded::Log(level, line)
        }
        metric => {
            fakes::require("metrics");
            metric
        }
    };
    RECORDED.with_borrow_mut(|r| r.push(item));
}

/// Runs one plugin call (`f`) as the host does: its log lines past the per-call cap are
/// counted and reported in one line at its end, in the host's words.
fn call<R>(f: impl FnOnce() -> R) -> R {
    CALL_LOG.set((0, 0));
    let result = f();
    let (_, suppressed) = CALL_LOG.replace((0, 0));
    if suppressed > 0 {
        RECORDED.with_borrow_mut(|r| {
            r.push(Recorded::Log(
                Level::Warn,
                format!(
                    "{suppressed} log lines suppressed (limit {} per call)",
                    limits::MAX_LOG_LINES_PER_CALL
                ),
            ))
        });
    }
    result
}

/// The native stand-ins for host capabilities, one set per test thread.
pub(crate) mod fakes {
    use crate::Job;
    use crate::host::HostError;
    use crate::host::geoip::Location;
    use crate::host::http::{Request, Response};
    use crate::host::recordings::{Archive, Snapshot};
    use sluice_abi::cache::Namespace;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// A registered GeoIP lookup.
    pub type Locate = Box<dyn Fn(&str) -> Option<Location>>;
    /// A registered HTTP responder.
    pub type Respond = Box<dyn FnMut(&Request) -> Result<Response, HostError>>;
    /// A registered object-store failure: for (store, key, size), the error to answer, if any.
    pub type PutError = Box<dyn Fn(&str, &str, usize) -> Option<HostError>>;

    /// One stored `$snapshot` event of a session, at its storage position.
    pub struct StoredRecording {
        pub session_id: String,
        pub position: u64,
        pub snapshot: Snapshot,
    }

    #[derive(Default)]
    pub struct Fakes {
        /// The capabilities the manifest declares (`None` outside a harness: not checked).
        pub declared: Option<Vec<String>>,
        pub storage: BTreeMap<String, Vec<u8>>,
        pub objects: BTreeMap<(String, String), Vec<u8>>,
        pub cache: Namespace,
        pub geoip: Option<Locate>,
        pub geoip_version: u64,
        pub http: Option<Respond>,
        pub put_error: Option<PutError>,
        pub jobs: Vec<Job>,
        pub queued_jobs: u64,
        pub recordings: Vec<StoredRecording>,
        pub archives: Vec<Archive>,
    }

    impl Fakes {
        /// Queues job `name` with `payload`, due at `at_ms`; its id.
        pub fn queue(&mut self, name: &str, payload: &str, at_ms: i64) -> String {
            self.queued_jobs += 1;
            let id = format!("job-{}", self.queued_jobs);
            self.jobs.push(Job {
                id: id.clone(),
                name: name.to_owned(),
                payload: payload.to_owned(),
                attempt: 1,
                run_at_ms: at_ms,
            });
            id
        }
    }

    thread_local! {
        static FAKES: RefCell<Fakes> = RefCell::new(Fakes::default());
    }

    pub fn with<R>(f: impl FnOnce(&mut Fakes) -> R) -> R {
        FAKES.with_borrow_mut(f)
    }

    /// Checks, as the host does when it loads a plugin, that the plugin's manifest declares
    /// `capability` before it is used (the host refuses a plugin importing a capability it does
    /// not declare, whatever its tests did).
    pub fn require(capability: &str) {
        let undeclared = with(|f| {
            f.declared
                .as_ref()
                .is_some_and(|declared| !declared.iter().any(|d| d == capability))
        });
        assert!(
            !undeclared,
            "the plugin uses the `{capability}` capability, but its manifest does not declare it: \
             sluice refuses to load it. Add `.needs(&[\"{capability}\"])` to its `Manifest`."
        );
    }

    /// [`with`] for a call of the plugin to `capability`.
    pub fn using<R>(capability: &str, f: impl FnOnce(&mut Fakes) -> R) -> R {
        require(capability);
        with(f)
    }
}

/// Runs one plugin natively.
#[derive(Debug)]
pub struct Harness<T> {
    plugin: T,
}

impl<T: Plugin> Harness<T> {
    /// Validates `config` (a JSON object) against the manifest, then runs `setup`.
    pub fn new(config: Value) -> Result<Self, PluginError> {
        let manifest = T::manifest();
        let invalid = |problems: Vec<sluice_abi::manifest::Problem>| {
            let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
            PluginError::new(text.join("; "))
        };
        manifest.validate().map_err(invalid)?;
        let Value::Object(given) = config else {
            return Err(PluginError::new("config must be a JSON object"));
        };
        let resolved = manifest.resolve_config(&given).map_err(invalid)?;
        fakes::with(|f| {
            *f = fakes::Fakes {
                declared: Some(manifest.capabilities.clone()),
                ..fakes::Fakes::default()
            }
        });
        Ok(Self {
            plugin: call(|| T::setup(&Config::new(resolved)))?,
        })
    }

    /// Answers the plugin's [`crate::host::geoip::locate`] calls with `locate`.
    pub fn with_geoip(mut self, locate: impl Fn(&str) -> Option<Location> + 'static) -> Self {
        self.reload_geoip(locate);
        self
    }

    /// Answers [`crate::host::geoip::locate`] with `locate` from now on, as after the host
    /// loaded a new version of the database ([`crate::host::geoip::version`] changes).
    pub fn reload_geoip(&mut self, locate: impl Fn(&str) -> Option<Location> + 'static) {
        fakes::with(|f| {
            f.geoip = Some(Box::new(locate));
            f.geoip_version += 1;
        });
    }

    /// Answers the plugin's [`crate::host::http::fetch`] calls with `respond`.
    pub fn with_http(
        self,
        respond: impl FnMut(&Request) -> Result<Response, HostError> + 'static,
    ) -> Self {
        fakes::with(|f| f.http = Some(Box::new(respond)));
        self
    }

    /// Makes [`crate::host::object_store::put`] fail with what `fail` returns for (store, key,
    /// size in bytes), to test outages (`unavailable`) and refusals (`too-large`).
    pub fn with_put_errors(
        self,
        fail: impl Fn(&str, &str, usize) -> Option<HostError> + 'static,
    ) -> Self {
        fakes::with(|f| f.put_error = Some(Box::new(fail)));
        self
    }

    /// The plugin, for inspecting its state.
    pub fn plugin(&mut self) -> &mut T {
        &mut self.plugin
    }

    /// The objects the plugin stored in `store` (`host::object_store`), by key.
    pub fn objects(&self, store: &str) -> BTreeMap<String, Vec<u8>> {
        fakes::with(|f| {
            f.objects
                .iter()
                .filter(|((s, _), _)| s == store)
                .map(|((_, key), body)| (key.clone(), body.clone()))
                .collect()
        })
    }

    /// Stores a `$snapshot` event of `session_id` at `timestamp_ms` with `properties` (JSON
    /// text), as `host::recordings` will see it.
    pub fn add_recording(&mut self, session_id: &str, timestamp_ms: i64, properties: &str) {
        fakes::with(|f| {
            let position = f.recordings.last().map_or(1, |r| r.position + 1);
            f.recordings.push(fakes::StoredRecording {
                session_id: session_id.to_owned(),
                position,
                snapshot: Snapshot {
                    uuid: format!("00000000-0000-0000-0000-{position:012x}"),
                    window_id: None,
                    distinct_id: "user".to_owned(),
                    timestamp_ms,
                    properties: properties.to_owned(),
                },
            });
        });
    }

    /// The stored recordings left, by session id.
    pub fn recordings(&self) -> Vec<(String, Snapshot)> {
        fakes::with(|f| {
            f.recordings
                .iter()
                .map(|r| (r.session_id.clone(), r.snapshot.clone()))
                .collect()
        })
    }

    /// The archives the plugin recorded.
    pub fn archives(&self) -> Vec<Archive> {
        fakes::with(|f| f.archives.clone())
    }

    /// The value of `key` in the plugin's cache (`host::cache`), if it is there and alive, as
    /// the plugin would read it.
    pub fn cache_get(&self, key: &str) -> Option<Vec<u8>> {
        fakes::with(|f| f.cache.get(key, std::time::Instant::now()).ok().flatten())
    }

    /// Puts `value` in the plugin's cache before a test (a warm cache).
    pub fn cache_set(&mut self, key: &str, value: &[u8]) {
        fakes::with(|f| {
            f.cache
                .set(key, value.to_vec(), None, std::time::Instant::now())
                .expect("Harness::cache_set: a value within the host's cache limits")
        });
    }

    /// The value of `key` in the plugin's storage (`host::storage`), if set.
    pub fn storage_get(&self, key: &str) -> Option<Vec<u8>> {
        fakes::with(|f| f.storage.get(key).cloned())
    }

    /// Puts `value` in the plugin's storage before a test (state of an earlier run).
    pub fn storage_set(&mut self, key: &str, value: &[u8]) {
        fakes::with(|f| f.storage.insert(key.to_owned(), value.to_vec()));
    }

    /// Queues job `name` with `payload` (JSON text), due now, as an operator's `sluice jobs
    /// enqueue` would; [`Harness::drain_jobs`] runs it.
    pub fn queue_job(&mut self, name: &str, payload: &str) {
        fakes::with(|f| f.queue(name, payload, now_ms()));
    }

    /// The jobs queued and not run yet, in the order they are due.
    pub fn queued_jobs(&self) -> Vec<Job> {
        fakes::with(|f| f.jobs.clone())
    }

    /// Takes what the plugin logged and counted since the last call.
    pub fn take_recorded(&mut self) -> Vec<Recorded> {
        RECORDED.with_borrow_mut(std::mem::take)
    }
}

impl<T: Transform> Harness<T> {
    /// Runs one event through the plugin.
    pub fn transform(&mut self, event: TestEvent) -> Outcome {
        match self.transform_batch(vec![event]) {
            Ok(mut outcomes) => outcomes.remove(0),
            Err(error) => Outcome::Error(error),
        }
    }

    /// Runs one event through the plugin and returns it as the host would store it: unchanged,
    /// replaced, or with its edits applied by the host's own code (`None` if dropped).
    pub fn stored(&mut self, event: TestEvent) -> Result<Option<EventBuf>, PluginError> {
        let mut encoded = Vec::new();
        event.0.encode_into(&mut encoded)?;
        let mut batch = BatchWriter::default();
        batch.push_encoded(&encoded);
        let bytes = call(|| process_batch(&mut self.plugin, &batch.finish()))?;
        let outcomes = wire::read_outcomes(&bytes, 1).map_err(wire_error)?;
        let continued = match outcomes[0] {
            wire::Outcome::Keep => encoded,
            wire::Outcome::Drop(_) => return Ok(None),
            wire::Outcome::Error { message, retryable } => {
                return Err(PluginError {
                    message: message.to_owned(),
                    retryable,
                });
            }
            wire::Outcome::Replace(replacement) => replacement.to_vec(),
            wire::Outcome::Patch(patch) => {
                sluice_abi::patch::check(patch).map_err(wire_error)?;
                wire::append_patch(&encoded, patch).map_err(wire_error)?
            }
        };
        let raw = wire::parse_encoded(&continued).map_err(wire_error)?;
        raw.with_patch_applied(EventBuf::from_fields)
            .map_err(wire_error)?
            .map(Some)
    }

    /// Runs a batch through the plugin's encoded path and decodes the outcomes.
    pub fn transform_batch(&mut self, events: Vec<TestEvent>) -> Result<Vec<Outcome>, PluginError> {
        let mut batch = BatchWriter::default();
        let mut encoded = Vec::new();
        for event in &events {
            encoded.clear();
            event.0.encode_into(&mut encoded)?;
            batch.push_encoded(&encoded);
        }
        let count = events.len();
        let bytes = call(|| process_batch(&mut self.plugin, &batch.finish()))?;
        let outcomes =
            wire::read_outcomes(&bytes, count).map_err(|e| PluginError::new(e.to_string()))?;
        outcomes.into_iter().map(decode_outcome).collect()
    }
}

impl<T: Exporter> Harness<T> {
    /// Exports `events` as one batch, as the host does (same encoding), described by `batch`.
    pub fn export_batch(
        &mut self,
        batch: &ExportBatch,
        events: Vec<TestEvent>,
    ) -> Result<(), PluginError> {
        let mut encoded = BatchWriter::default();
        let mut event = Vec::new();
        for test_event in &events {
            event.clear();
            test_event.0.encode_into(&mut event)?;
            encoded.push_encoded(&event);
        }
        call(|| export_batch(&mut self.plugin, batch, &encoded.finish()))
    }

    /// Exports `events` as the first attempt of batch `id` of team 1, formed at
    /// `created_at_ms`.
    pub fn export(
        &mut self,
        id: &str,
        created_at_ms: i64,
        events: Vec<TestEvent>,
    ) -> Result<(), PluginError> {
        let batch = ExportBatch {
            id: id.to_owned(),
            team_id: 1,
            attempt: 1,
            created_at_ms,
        };
        self.export_batch(&batch, events)
    }
}

impl<T: Scheduled> Harness<T> {
    /// Runs `task` as if its tick at `scheduled_at_ms` had come.
    pub fn run_task(&mut self, task: &str, scheduled_at_ms: i64) -> Result<(), PluginError> {
        call(|| self.plugin.run(task, scheduled_at_ms))
    }
}

impl<T: Jobs> Harness<T> {
    /// Runs queued jobs in the order they are due, whatever the time, including the jobs they
    /// queue, until none is left or one fails (its error is returned and it stays queued).
    /// Returns how many ran.
    pub fn drain_jobs(&mut self) -> Result<usize, PluginError> {
        let mut ran = 0;
        loop {
            let next = fakes::with(|f| {
                let i = (0..f.jobs.len()).min_by_key(|i| (f.jobs[*i].run_at_ms, *i))?;
                Some(f.jobs.remove(i))
            });
            let Some(job) = next else {
                return Ok(ran);
            };
            if let Err(error) = call(|| self.plugin.run_job(&job)) {
                fakes::with(|f| f.jobs.insert(0, job));
                return Err(error);
            }
            ran += 1;
        }
    }
}

fn decode_outcome(outcome: wire::Outcome<'_>) -> Result<Outcome, PluginError> {
    Ok(match outcome {
        wire::Outcome::Keep => Outcome::Keep,
        wire::Outcome::Drop(reason) => Outcome::Drop(reason.to_owned().into()),
        wire::Outcome::Error { message, retryable } => Outcome::Error(PluginError {
            message: message.to_owned(),
            retryable,
        }),
        wire::Outcome::Replace(encoded) => {
            let raw = wire::parse_encoded(encoded).map_err(|e| PluginError::new(e.to_string()))?;
            Outcome::Replace(crate::Event::new(raw).to_buf()?)
        }
        wire::Outcome::Patch(patch) => Outcome::Edit(crate::Edit::from_patch(patch)?),
    })
}

fn wire_error(error: impl std::fmt::Display) -> PluginError {
    PluginError::new(error.to_string())
}

/// An event to feed the harness, built field by field.
#[derive(Debug, Clone, PartialEq)]
pub struct TestEvent(EventBuf);

impl From<EventBuf> for TestEvent {
    fn from(event: EventBuf) -> Self {
        Self(event)
    }
}

/// `value` as an object; a test that passes anything else is wrong, so it panics.
fn object(value: Value, what: &str) -> Map<String, Value> {
    match value {
        Value::Object(object) => object,
        other => panic!("TestEvent: {what} must be a JSON object, got {other}"),
    }
}

impl TestEvent {
    /// An event called `name` with distinct id `user`, team 1, empty properties, and a uuid of
    /// its own (the host stores one event per uuid and team: events sharing one would be
    /// de-duplicated).
    pub fn new(name: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut uuid = [0u8; 16];
        uuid[..8].copy_from_slice(&0x0000_0000_0000_7000_u64.to_be_bytes());
        uuid[8] = 0x80;
        uuid[10..].copy_from_slice(&n.to_be_bytes()[2..]);
        Self(EventBuf {
            uuid,
            team_id: 1,
            timestamp_ms: 1_700_000_000_000,
            event: name.to_owned(),
            distinct_id: "user".to_owned(),
            ip: None,
            properties: Map::new(),
            set: None,
            set_once: None,
        })
    }

    /// Sets the uuid (text, as in `8f1b...-...`); a test of idempotence gives two events the
    /// same one. Panics on text that is not a uuid.
    pub fn uuid_text(mut self, uuid: &str) -> Self {
        let hex: String = uuid.chars().filter(|c| *c != '-').collect();
        assert!(
            hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()),
            "TestEvent: `{uuid}` is not a uuid"
        );
        for (i, byte) in self.0.uuid.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or_default();
        }
        self
    }

    /// Sets the event's time, in epoch milliseconds.
    pub fn timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.0.timestamp_ms = timestamp_ms;
        self
    }

    /// Sets the distinct id.
    pub fn distinct_id(mut self, id: &str) -> Self {
        self.0.distinct_id = id.to_owned();
        self
    }

    /// Sets the client IP.
    pub fn ip(mut self, ip: &str) -> Self {
        self.0.ip = Some(ip.to_owned());
        self
    }

    /// Sets one property.
    pub fn property(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.properties.insert(key.to_owned(), value.into());
        self
    }

    /// Sets the event's top-level `$set` (person properties to set, as `$identify` sends
    /// them); `value` must be an object. Person properties inside the properties are set with
    /// [`TestEvent::property`]`("$set", ...)`.
    pub fn set(mut self, value: Value) -> Self {
        self.0.set = Some(object(value, "$set"));
        self
    }

    /// Sets the event's top-level `$set_once`; `value` must be an object.
    pub fn set_once(mut self, value: Value) -> Self {
        self.0.set_once = Some(object(value, "$set_once"));
        self
    }

    /// Sets the team id.
    pub fn team_id(mut self, team_id: u64) -> Self {
        self.0.team_id = team_id;
        self
    }

    /// The event as the plugin would return it unchanged, for comparing with a `Replace`.
    pub fn into_buf(self) -> EventBuf {
        self.0
    }

    /// The UUID as text.
    pub fn uuid(&self) -> String {
        format_uuid(self.0.uuid)
    }
}
