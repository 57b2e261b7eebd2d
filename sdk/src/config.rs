//! The validated config a plugin receives in `setup`.

use crate::PluginError;
use serde_json::{Map, Value};

/// Config values, already checked against the manifest's schema with defaults filled in.
///
/// Getters fail only when the key is not declared in the manifest (or is optional and unset),
/// which is a plugin bug; the error names the key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config(Map<String, Value>);

impl Config {
    /// Wraps resolved values.
    pub fn new(values: Map<String, Value>) -> Self {
        Self(values)
    }

    /// The raw value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// A `text` or `choice` value.
    pub fn text(&self, key: &str) -> Result<&str, PluginError> {
        self.typed(key, "text", Value::as_str)
    }

    /// An `integer` value.
    pub fn integer(&self, key: &str) -> Result<i64, PluginError> {
        self.typed(key, "integer", Value::as_i64)
    }

    /// A `number` value.
    pub fn number(&self, key: &str) -> Result<f64, PluginError> {
        self.typed(key, "number", Value::as_f64)
    }

    /// A `boolean` value.
    pub fn boolean(&self, key: &str) -> Result<bool, PluginError> {
        self.typed(key, "boolean", Value::as_bool)
    }

    /// A `json` value, read as `T` (any type serde can read: a map of rates, a list of rules):
    /// `let rates: HashMap<String, f64> = config.json("rates")?;`. The error names the key and
    /// what does not fit.
    pub fn json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<T, PluginError> {
        let value = self
            .0
            .get(key)
            .ok_or_else(|| PluginError::new(format!("config `{key}` is not set")))?;
        T::deserialize(value)
            .map_err(|e| PluginError::new(format!("config `{key}` does not fit: {e}")))
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        kind: &str,
        read: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<T, PluginError> {
        self.0
            .get(key)
            .and_then(read)
            .ok_or_else(|| PluginError::new(format!("config `{key}` is not set or not a {kind}")))
    }
}
