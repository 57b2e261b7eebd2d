//! What a plugin decided for each event, checked and applied; and the installation's `on_error`
//! policy for the events it failed on.

use super::Installation;
use crate::config::OnError;
use crate::runtime::{CallError, TrapKind};
use crate::sink::{DeadLetter, Output};
use sluice_abi::wire::{self, Outcome};

/// Largest `properties` a plugin may return, in bytes.
pub const MAX_PROPERTIES_BYTES: usize = 1024 * 1024;

/// Applies the encoded `outcomes` of one call to `events` and returns the events that continue.
/// Outcomes that cannot be decoded are a contract violation; the events come back with it.
#[allow(clippy::type_complexity)]
pub(super) fn apply(
    installation: &Installation,
    events: Vec<Vec<u8>>,
    outcomes: &[u8],
    out: &mut Output,
) -> Result<Vec<Vec<u8>>, (Vec<Vec<u8>>, CallError)> {
    let outcomes = match wire::read_outcomes(outcomes, events.len()) {
        Ok(outcomes) => outcomes,
        Err(e) => {
            let error = CallError::Trap {
                kind: TrapKind::Contract,
                message: format!("undecodable outcomes: {e}"),
            };
            return Err((events, error));
        }
    };
    let mut next = Vec::with_capacity(events.len());
    let mut dropped = 0u64;
    for (event, outcome) in events.into_iter().zip(outcomes) {
        match outcome {
            Outcome::Keep => next.push(event),
            Outcome::Drop(reason) => {
                tracing::trace!(installation = %installation.id, reason, "event dropped by plugin");
                dropped += 1;
            }
            Outcome::Replace(replacement) => {
                match checked_replacement(installation, &event, replacement) {
                    Ok(replacement) => next.push(replacement),
                    Err(message) => fail(
                        installation,
                        event,
                        &message,
                        "invalid_event",
                        &mut next,
                        out,
                    ),
                }
            }
            Outcome::Error { message, .. } => fail(
                installation,
                event,
                &format!("plugin error: {message}"),
                "plugin_error",
                &mut next,
                out,
            ),
        }
    }
    if dropped > 0 {
        installation.metrics.dropped(dropped);
    }
    Ok(next)
}

/// Checks an event a plugin returned: valid fields, properties a JSON object within the size cap,
/// and the envelope (`uuid`, `team_id`) unchanged; a changed envelope is restored and reported.
fn checked_replacement(
    installation: &Installation,
    original: &[u8],
    replacement: &[u8],
) -> Result<Vec<u8>, String> {
    let fields = wire::parse_encoded(replacement)
        .and_then(|raw| raw.fields())
        .map_err(|e| format!("plugin returned an invalid event: {e}"))?;
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
        installation.metrics.failure("envelope_changed");
        wire::restore_envelope(&mut replacement, before.uuid(), before.team_id());
    }
    Ok(replacement)
}

fn is_json_object(text: &str) -> bool {
    text.trim_start().starts_with('{')
        && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// Applies the `on_error` policy to every event of a call that failed as a whole; returns the
/// events that continue.
pub(super) fn fail_all(
    installation: &Installation,
    events: Vec<Vec<u8>>,
    error: &CallError,
    out: &mut Output,
) -> Vec<Vec<u8>> {
    let message = error.to_string();
    let mut next = Vec::new();
    for event in events {
        fail(
            installation,
            event,
            &message,
            error.kind_label(),
            &mut next,
            out,
        );
    }
    next
}

/// Applies the installation's `on_error` policy to one event.
fn fail(
    installation: &Installation,
    event: Vec<u8>,
    message: &str,
    kind: &'static str,
    next: &mut Vec<Vec<u8>>,
    out: &mut Output,
) {
    installation.metrics.failure(kind);
    match installation.on_error {
        OnError::Skip => next.push(event),
        OnError::Drop => installation.metrics.dropped(1),
        OnError::DeadLetter => out.dead_letters.push(DeadLetter {
            installation: installation.id.to_string(),
            encoded: event,
            error: message.to_owned(),
        }),
    }
}
