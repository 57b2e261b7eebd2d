//! Edits of an event, returned as [`crate::Outcome::Edit`]: only what changed crosses back to
//! the host, which applies it natively when the event is stored (`sluice_abi::patch`).

use crate::PluginError;
use serde::Serialize;
use sluice_abi::patch::{Mode, PatchWriter, Target};
use std::sync::Arc;

/// The edits a plugin makes to one event, in order. Later plugins of the chain see them.
/// Cloning is cheap (the edits are shared until one of the copies changes), so a plugin may
/// keep an `Edit` and return it again for other events.
///
/// ```
/// # use sluice_sdk::{Edit, Outcome};
/// let mut edit = Edit::default();
/// edit.set("$geoip_city_name", "Linköping")
///     .set_person_if_absent("$geoip_city_name", "Linköping")
///     .remove("password");
/// let outcome = Outcome::from(edit);
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Edit {
    patch: Arc<PatchWriter>,
    error: Option<String>,
}

impl Edit {
    /// No edits yet, with room for `bytes` bytes of them.
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            patch: Arc::new(PatchWriter::with_capacity(bytes)),
            error: None,
        }
    }

    fn push(&mut self, target: Target, mode: Mode, key: &str, value: impl Serialize) -> &mut Self {
        let mut failed = None;
        Arc::make_mut(&mut self.patch).push(target, mode, key, |out| {
            if let Err(error) = serde_json::to_writer(&mut *out, &value) {
                failed = Some(format!(
                    "cannot write the value of `{key}` as JSON: {error}"
                ));
                out.extend_from_slice(b"null");
            }
        });
        if self.error.is_none() {
            self.error = failed;
        }
        self
    }

    /// Sets property `key` to `value`.
    pub fn set(&mut self, key: &str, value: impl Serialize) -> &mut Self {
        self.push(Target::Properties, Mode::Set, key, value)
    }

    /// Sets property `key` to `value` unless the event has it.
    pub fn set_if_absent(&mut self, key: &str, value: impl Serialize) -> &mut Self {
        self.push(Target::Properties, Mode::SetIfAbsent, key, value)
    }

    /// Removes property `key`.
    pub fn remove(&mut self, key: &str) -> &mut Self {
        Arc::make_mut(&mut self.patch).remove(Target::Properties, key);
        self
    }

    /// Sets person property `key` in `properties.$set`.
    pub fn set_person(&mut self, key: &str, value: impl Serialize) -> &mut Self {
        self.push(Target::Set, Mode::Set, key, value)
    }

    /// Sets person property `key` in `properties.$set` unless the producer set it (there or in
    /// the event's top-level `$set`): the producer's value wins.
    pub fn set_person_if_absent(&mut self, key: &str, value: impl Serialize) -> &mut Self {
        self.push(Target::Set, Mode::SetIfAbsent, key, value)
    }

    /// Removes person property `key` from `properties.$set`.
    pub fn remove_person(&mut self, key: &str) -> &mut Self {
        Arc::make_mut(&mut self.patch).remove(Target::Set, key);
        self
    }

    /// Sets person property `key` in `properties.$set_once`.
    pub fn set_person_once(&mut self, key: &str, value: impl Serialize) -> &mut Self {
        self.push(Target::SetOnce, Mode::Set, key, value)
    }

    /// Sets person property `key` in `properties.$set_once` unless the producer set it (there
    /// or in the event's top-level `$set_once`).
    pub fn set_person_once_if_absent(&mut self, key: &str, value: impl Serialize) -> &mut Self {
        self.push(Target::SetOnce, Mode::SetIfAbsent, key, value)
    }

    /// Removes person property `key` from `properties.$set_once`.
    pub fn remove_person_once(&mut self, key: &str) -> &mut Self {
        Arc::make_mut(&mut self.patch).remove(Target::SetOnce, key);
        self
    }

    /// Sets the event's IP address.
    pub fn set_ip(&mut self, ip: &str) -> &mut Self {
        self.push(Target::Ip, Mode::Set, "", ip)
    }

    /// Removes the event's IP address.
    pub fn remove_ip(&mut self) -> &mut Self {
        Arc::make_mut(&mut self.patch).remove(Target::Ip, "");
        self
    }

    /// Number of edits.
    pub fn len(&self) -> usize {
        self.patch.len()
    }

    /// Whether there is no edit.
    pub fn is_empty(&self) -> bool {
        self.patch.is_empty()
    }

    /// The encoded patch, or why the edits could not be written.
    pub(crate) fn patch(&self) -> Result<&[u8], PluginError> {
        match &self.error {
            Some(error) => Err(PluginError::new(error.clone())),
            None => Ok(self.patch.as_bytes()),
        }
    }

    /// An edit of the patch the host would receive (decoding what a plugin returned).
    #[cfg(not(target_family = "wasm"))]
    pub(crate) fn from_patch(bytes: &[u8]) -> Result<Self, PluginError> {
        let mut edit = Self::default();
        let ops = sluice_abi::patch::ops(bytes).map_err(|e| PluginError::new(e.to_string()))?;
        for op in ops {
            match op.value {
                Some(json) => {
                    Arc::make_mut(&mut edit.patch).push_json(op.target, op.mode, op.key, json)
                }
                None => Arc::make_mut(&mut edit.patch).remove(op.target, op.key),
            }
        }
        Ok(edit)
    }
}
