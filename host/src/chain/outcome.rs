//! What a plugin decided for each event, checked and applied; and the installation's `on_error`
//! policy for the events it failed on, each failure logged once.

use super::Installation;
use crate::capabilities::log::{self, Level};
use crate::config::OnError;
use crate::runtime::{CallError, TrapKind};
use crate::sink::{DeadLetter, Output};
use crate::tap;
use sluice_abi::wire::{self, Outcome};

/// Largest `properties` a plugin may return, in bytes.
pub const MAX_PROPERTIES_BYTES: usize = 1024 * 1024;

/// The hook the chain drives, as failures name it.
const HOOK: &str = "transform";

/// Why an event takes the installation's `on_error` path.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    /// Stable label (`panic`, `timeout`, `plugin_error`, `circuit_open`...).
    kind: &'static str,
    /// One line for operators.
    message: String,
    /// Where in the plugin it happened, when known.
    backtrace: Option<String>,
}

impl Failure {
    /// The failure of a call.
    pub(super) fn of(error: &CallError) -> Self {
        Self {
            kind: error.kind_label(),
            message: error.to_string(),
            backtrace: error.backtrace().map(str::to_owned),
        }
    }

    /// Events refused by an open circuit breaker, for `reason`.
    pub(super) fn circuit_open(reason: String) -> Self {
        Self {
            kind: "circuit_open",
            message: reason,
            backtrace: None,
        }
    }
}

/// Patches checked lately, by content: a plugin that returns the same edits for many events
/// (GeoIP for one place) has them checked once.
#[derive(Debug, Default)]
pub(super) struct CheckedPatches {
    recent: std::collections::VecDeque<Vec<u8>>,
}

impl CheckedPatches {
    /// Patches remembered.
    const KEPT: usize = 8;

    /// Checks `patch` unless the same bytes were checked lately.
    fn check(&mut self, patch: &[u8]) -> Result<(), String> {
        if self.recent.iter().any(|known| known.as_slice() == patch) {
            return Ok(());
        }
        sluice_abi::patch::check(patch)
            .map_err(|e| format!("plugin returned an invalid patch: {e}"))?;
        if self.recent.len() == Self::KEPT {
            self.recent.pop_back();
        }
        self.recent.push_front(patch.to_vec());
        Ok(())
    }
}

/// What applying one call's outcomes found.
pub(super) struct Applied {
    /// Whether the plugin failed every event of the call.
    pub(super) all_failed: bool,
    /// The first error the plugin reported for an event, if it reported any.
    pub(super) first_error: Option<String>,
}

/// Applies the encoded `outcomes` of one call to `events`, appending the events that continue to
/// `next`. Outcomes that cannot be decoded are a contract violation; the events come back with it.
#[allow(clippy::type_complexity)]
pub(super) fn apply(
    installation: &Installation,
    events: Vec<Vec<u8>>,
    outcomes: &[u8],
    checked: &mut CheckedPatches,
    next: &mut Vec<Vec<u8>>,
    out: &mut Output,
) -> Result<Applied, (Vec<Vec<u8>>, CallError)> {
    let outcomes = match wire::read_outcomes(outcomes, events.len()) {
        Ok(outcomes) => outcomes,
        Err(e) => {
            let error = CallError::Trap {
                kind: TrapKind::Contract,
                message: format!("undecodable outcomes: {e}"),
                backtrace: None,
            };
            return Err((events, error));
        }
    };
    let count = events.len();
    let mut dropped = 0u64;
    let mut failed = 0;
    let mut changes = 0u64;
    let mut first_error = None;
    let tap = tap::hub();
    let tapped = tap.active();
    for (event, outcome) in events.into_iter().zip(outcomes) {
        if tapped {
            record(tap, installation, &event, &outcome);
        }
        let changed = match outcome {
            Outcome::Keep => {
                next.push(event);
                continue;
            }
            Outcome::Drop(reason) => {
                tracing::trace!(installation = %installation.id, reason, "event dropped by plugin");
                dropped += 1;
                if installation.metrics.drop_reason(reason) {
                    log::record(
                        &installation.settings.context,
                        Level::Info,
                        &format!(
                            "dropped an event: {reason} (the first with this reason; each is counted in sluice_plugin_dropped_by_reason_total)"
                        ),
                    );
                }
                continue;
            }
            Outcome::Error { message, .. } => {
                failed += 1;
                first_error.get_or_insert_with(|| message.to_owned());
                let failure = Failure {
                    kind: "plugin_error",
                    message: format!("plugin error: {message}"),
                    backtrace: None,
                };
                fail(installation, event, &failure, next, out);
                continue;
            }
            Outcome::Replace(replacement) => checked_replacement(installation, &event, replacement),
            Outcome::Patch(patch) => checked.check(patch).and_then(|()| patched(&event, patch)),
        };
        match changed {
            Ok(changed) => {
                changes += 1;
                next.push(changed);
            }
            Err(message) => {
                failed += 1;
                let failure = Failure {
                    kind: "invalid_event",
                    message,
                    backtrace: None,
                };
                fail(installation, event, &failure, next, out);
            }
        }
    }
    if dropped > 0 {
        installation.metrics.dropped(dropped);
    }
    if changes > 0 {
        installation.metrics.changed(changes);
    }
    Ok(Applied {
        all_failed: count > 0 && failed == count,
        first_error,
    })
}

/// Records on the tap what `installation` decided for `event` (a failure is recorded where the
/// installation's policy is applied).
fn record(
    tap: &tap::Hub<tap::TapRecord>,
    installation: &Installation,
    event: &[u8],
    outcome: &Outcome<'_>,
) {
    let (name, detail) = match outcome {
        Outcome::Keep => ("kept", None),
        Outcome::Drop(reason) => ("dropped", Some((*reason).to_owned())),
        Outcome::Patch(patch) => ("patched", Some(tap::patched_keys(patch))),
        Outcome::Replace(_) => ("replaced", None),
        Outcome::Error { .. } => return,
    };
    tap.record(&installation.label, event, name, detail);
}

/// The event with the edits of `patch` added to it (applied when it is stored), once the patch
/// is checked: well-formed ops with JSON values, and no more than the properties' size cap.
fn patched(event: &[u8], patch: &[u8]) -> Result<Vec<u8>, String> {
    sluice_abi::patch::check(patch)
        .map_err(|e| format!("plugin returned an invalid patch: {e}"))?;
    let corrupt = |e: wire::WireError| format!("host event is corrupt: {e}");
    let raw = wire::parse_encoded(event).map_err(corrupt)?;
    let size = raw
        .required_text(wire::Field::Properties)
        .map_err(corrupt)?
        .len();
    let pending = raw.patch().map_or(0, <[u8]>::len);
    if size + pending + patch.len() > MAX_PROPERTIES_BYTES {
        return Err(format!(
            "plugin's edits would make properties larger than {MAX_PROPERTIES_BYTES} bytes"
        ));
    }
    wire::append_patch(event, patch).map_err(corrupt)
}

/// Checks an event a plugin returned: valid fields, properties a JSON object within the size cap,
/// any patch well-formed, and the envelope (`uuid`, `team_id`) unchanged; a changed envelope is
/// restored and reported.
fn checked_replacement(
    installation: &Installation,
    original: &[u8],
    replacement: &[u8],
) -> Result<Vec<u8>, String> {
    let raw = wire::parse_encoded(replacement)
        .map_err(|e| format!("plugin returned an invalid event: {e}"))?;
    let fields = raw
        .fields()
        .map_err(|e| format!("plugin returned an invalid event: {e}"))?;
    if let Some(patch) = raw.patch() {
        sluice_abi::patch::check(patch)
            .map_err(|e| format!("plugin returned an event with an invalid patch: {e}"))?;
    }
    if fields.properties.len() > MAX_PROPERTIES_BYTES {
        return Err(format!(
            "plugin returned properties of {} bytes (cap {MAX_PROPERTIES_BYTES})",
            fields.properties.len()
        ));
    }
    for (name, json) in [
        ("properties", Some(fields.properties)),
        ("$set", fields.set),
        ("$set_once", fields.set_once),
    ] {
        if let Some(json) = json
            && !is_json_object(json)
        {
            return Err(format!("plugin returned {name} that are not a JSON object"));
        }
    }
    let before =
        wire::parse_encoded(original).map_err(|e| format!("host event is corrupt: {e}"))?;
    let mut replacement = replacement.to_vec();
    if fields.uuid != before.uuid() || fields.team_id != before.team_id() {
        tracing::warn!(installation = %installation.id, "plugin tried to change uuid or team_id; restored");
        installation.metrics.failure(
            "envelope_changed",
            "the plugin tried to change uuid or team_id; restored",
        );
        wire::restore_envelope(&mut replacement, before.uuid(), before.team_id());
    }
    Ok(replacement)
}

fn is_json_object(text: &str) -> bool {
    text.trim_start().starts_with('{')
        && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// Applies the `on_error` policy to every event in `events` for `failure`, appending the events
/// that continue to `next`.
pub(super) fn fail_all(
    installation: &Installation,
    events: Vec<Vec<u8>>,
    failure: &Failure,
    next: &mut Vec<Vec<u8>>,
    out: &mut Output,
) {
    if failure.kind == "circuit_open" && !events.is_empty() {
        tracing::debug!(installation = %installation.id, events = events.len(), "{}", failure.message);
    }
    for event in events {
        fail(installation, event, failure, next, out);
    }
}

/// Applies the installation's `on_error` policy to one event, and reports the failure: one line
/// in the server log, one in the plugin's log (`sluice logs`), the backtrace at debug level.
/// Events refused by an open breaker are only counted; the breaker reported its opening.
fn fail(
    installation: &Installation,
    event: Vec<u8>,
    failure: &Failure,
    next: &mut Vec<Vec<u8>>,
    out: &mut Output,
) {
    installation.metrics.failure(failure.kind, &failure.message);
    if failure.kind != "circuit_open" {
        installation
            .breaker
            .spend(std::time::Duration::ZERO, 1, std::time::Instant::now());
    }
    let tap = tap::hub();
    if tap.active() {
        let policy = match installation.on_error {
            OnError::Skip => "skipped",
            OnError::Drop => "dropped",
            OnError::DeadLetter => "dead-lettered",
        };
        let detail = format!("{} ({policy}): {}", failure.kind, failure.message);
        tap.record(&installation.label, &event, "failed", Some(detail));
    }
    if failure.kind != "circuit_open" {
        let uuid = wire::parse_encoded(&event)
            .map(|raw| crate::store::uuid_text(&raw.uuid()))
            .unwrap_or_default();
        let installation_id = &*installation.id;
        let kind = failure.kind;
        tracing::warn!(
            installation = installation_id,
            hook = HOOK,
            kind,
            uuid,
            "{}",
            failure.message
        );
        if let Some(backtrace) = &failure.backtrace {
            tracing::debug!(
                installation = installation_id,
                hook = HOOK,
                kind,
                uuid,
                "backtrace:\n{backtrace}"
            );
        }
        log::record(
            &installation.settings.context,
            Level::Error,
            &format!("{HOOK} failed on event {uuid}: {}", failure.message),
        );
    }
    match installation.on_error {
        OnError::Skip => next.push(event),
        OnError::Drop => installation.metrics.dropped_on_error(),
        OnError::DeadLetter => out.dead_letters.push(DeadLetter {
            installation: installation.id.to_string(),
            encoded: event,
            error: failure.message.clone(),
            backtrace: failure.backtrace.clone(),
        }),
    }
}
