//! Plugin manifests and the validation of operator config against a manifest's schema.

use serde_json::{Map, Value};
use std::collections::HashSet;
use std::fmt;

/// The type of a configuration value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    /// Any text.
    Text,
    /// A whole number.
    Integer,
    /// A number, whole or fractional.
    Number,
    /// `true` or `false`.
    Boolean,
    /// One of the field's choices.
    Choice,
    /// Any JSON value.
    Json,
}

impl ConfigType {
    fn describe(self) -> &'static str {
        match self {
            ConfigType::Text => "a string",
            ConfigType::Integer => "an integer",
            ConfigType::Number => "a number",
            ConfigType::Boolean => "a boolean",
            ConfigType::Choice => "one of the choices",
            ConfigType::Json => "any JSON value",
        }
    }
}

/// One field of a plugin's configuration schema.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigField {
    /// Key in the installation's `config` table.
    pub key: String,
    /// One line for operators.
    pub description: String,
    /// Type of the value.
    pub kind: ConfigType,
    /// Value used when none is given.
    pub default: Option<Value>,
    /// Whether a value must be given (ignored when there is a default).
    pub required: bool,
    /// Whether the value must never be printed.
    pub secret: bool,
    /// Allowed values of a `Choice` field.
    pub choices: Vec<String>,
}

impl ConfigField {
    /// An optional field of type `kind`, without default.
    pub fn new(key: impl Into<String>, kind: ConfigType, description: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            description: description.into(),
            kind,
            default: None,
            required: false,
            secret: false,
            choices: Vec::new(),
        }
    }

    /// An optional `choice` field allowing `choices`.
    pub fn choice(
        key: impl Into<String>,
        description: impl Into<String>,
        choices: &[&str],
    ) -> Self {
        Self {
            choices: choices.iter().map(|c| (*c).to_owned()).collect(),
            ..Self::new(key, ConfigType::Choice, description)
        }
    }

    /// Sets the value used when the operator gives none.
    pub fn with_default(mut self, value: impl Into<Value>) -> Self {
        self.default = Some(value.into());
        self
    }

    /// Makes the field required.
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// Marks the value as a secret that is never printed.
    pub fn secret(mut self) -> Self {
        self.secret = true;
        self
    }
}

/// A task a plugin runs on a clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    /// The name `scheduled.run` receives.
    pub name: String,
    /// Its default schedule: `every minute|hour|day`, a 5-field crontab, or a 6/7-field cron
    /// expression with seconds (the host checks it, and the operator may override it).
    pub schedule: String,
    /// One line for operators.
    pub description: String,
}

/// What the host does with an event a plugin failed on (an error, a trap, a deadline, or an open
/// breaker), unless the operator sets the installation's `on_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureMode {
    /// The event goes on as it was before the plugin: right for enrichments.
    #[default]
    Skip,
    /// The event is dropped.
    Drop,
    /// The event is kept in the dead letters with the reason, not stored.
    DeadLetter,
}

/// What a plugin declares about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// One line for operators.
    pub description: String,
    /// Configuration schema.
    pub config: Vec<ConfigField>,
    /// Host capabilities the plugin needs (names from [`CAPABILITIES`]).
    pub capabilities: Vec<String>,
    /// Whether instances keep no installation-specific state, so installations with the same
    /// config can share them.
    pub stateless: bool,
    /// Tasks the plugin runs on a clock.
    pub tasks: Vec<TaskSpec>,
    /// Its safe failure default: what happens to an event it fails on unless the operator says
    /// otherwise. A filter whose failure must not let an event through unfiltered declares
    /// [`FailureMode::Drop`] or [`FailureMode::DeadLetter`].
    pub on_error: FailureMode,
}

/// Every host capability a manifest may declare.
pub const CAPABILITIES: &[&str] = &[
    "log",
    "metrics",
    "storage",
    "cache",
    "geoip",
    "http",
    "object_store",
    "jobs",
    "recordings",
];

/// One problem found in a manifest or a config, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The config key (or manifest field) concerned.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.key, self.reason)
    }
}

fn problem(key: &str, reason: impl Into<String>) -> Problem {
    Problem {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

impl Manifest {
    /// A manifest without config, capabilities or statelessness; add them with the builders.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            description: description.into(),
            config: Vec::new(),
            capabilities: Vec::new(),
            stateless: false,
            tasks: Vec::new(),
            on_error: FailureMode::Skip,
        }
    }

    /// Sets the configuration schema.
    pub fn config(mut self, fields: Vec<ConfigField>) -> Self {
        self.config = fields;
        self
    }

    /// Declares the host capabilities the plugin needs, e.g. `&["storage", "log"]`.
    pub fn needs(mut self, capabilities: &[&str]) -> Self {
        self.capabilities = capabilities.iter().map(|c| (*c).to_owned()).collect();
        self
    }

    /// Declares the plugin stateless: its instances may serve every installation with the same
    /// config.
    pub fn stateless(mut self) -> Self {
        self.stateless = true;
        self
    }

    /// Declares the plugin's safe failure default (see [`Manifest::on_error`]).
    pub fn on_error(mut self, mode: FailureMode) -> Self {
        self.on_error = mode;
        self
    }

    /// Declares a task run on `schedule` (see [`TaskSpec::schedule`]).
    pub fn task(
        mut self,
        name: impl Into<String>,
        schedule: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        self.tasks.push(TaskSpec {
            name: name.into(),
            schedule: schedule.into(),
            description: description.into(),
        });
        self
    }

    /// Checks that the manifest itself is coherent: a name, unique keys, choices where needed, and
    /// defaults of the declared type. Reports every problem at once.
    pub fn validate(&self) -> Result<(), Vec<Problem>> {
        let mut problems = Vec::new();
        if self.name.trim().is_empty() {
            problems.push(problem("name", "is empty"));
        }
        let mut declared = HashSet::new();
        for capability in &self.capabilities {
            if !CAPABILITIES.contains(&capability.as_str()) {
                problems.push(problem(
                    "capabilities",
                    format!(
                        "`{capability}` is not a capability (known: {})",
                        CAPABILITIES.join(", ")
                    ),
                ));
            } else if !declared.insert(capability.as_str()) {
                problems.push(problem(
                    "capabilities",
                    format!("`{capability}` is declared twice"),
                ));
            }
        }
        let mut tasks = HashSet::new();
        for task in &self.tasks {
            let plain = !task.name.is_empty()
                && task
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_".contains(ch));
            if !plain {
                problems.push(problem(
                    "tasks",
                    format!(
                        "task name {:?} must use only letters, digits, `-` and `_`",
                        task.name
                    ),
                ));
            } else if !tasks.insert(task.name.as_str()) {
                problems.push(problem(
                    "tasks",
                    format!("task `{}` is declared twice", task.name),
                ));
            }
        }
        let mut seen = HashSet::new();
        for field in &self.config {
            if field.key.is_empty() {
                problems.push(problem("config", "a field has an empty key"));
            }
            if !seen.insert(field.key.as_str()) {
                problems.push(problem(&field.key, "is declared twice"));
            }
            if (field.kind == ConfigType::Choice) == field.choices.is_empty() {
                problems.push(problem(
                    &field.key,
                    "choices must be given for, and only for, a choice field",
                ));
            }
            if let Some(default) = &field.default
                && let Err(reason) = check_value(field, default)
            {
                problems.push(problem(&field.key, format!("default {reason}")));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Checks operator-given values against the schema and fills in defaults.
    ///
    /// Unknown keys, missing required keys and values of the wrong type are all reported at once.
    pub fn resolve_config(
        &self,
        given: &Map<String, Value>,
    ) -> Result<Map<String, Value>, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut resolved = Map::new();
        for key in given.keys() {
            if !self.config.iter().any(|f| &f.key == key) {
                let known: Vec<_> = self.config.iter().map(|f| f.key.as_str()).collect();
                problems.push(problem(
                    key,
                    format!("unknown key (this plugin accepts: {})", known.join(", ")),
                ));
            }
        }
        for field in &self.config {
            match given.get(&field.key).or(field.default.as_ref()) {
                Some(value) => match check_value(field, value) {
                    Ok(()) => {
                        resolved.insert(field.key.clone(), value.clone());
                    }
                    Err(reason) => problems.push(problem(&field.key, reason)),
                },
                None if field.required => problems.push(problem(&field.key, "is required")),
                None => {}
            }
        }
        if problems.is_empty() {
            Ok(resolved)
        } else {
            Err(problems)
        }
    }
}

fn check_value(field: &ConfigField, value: &Value) -> Result<(), String> {
    let ok = match field.kind {
        ConfigType::Text => value.is_string(),
        ConfigType::Integer => value.is_i64(),
        ConfigType::Number => value.is_number(),
        ConfigType::Boolean => value.is_boolean(),
        ConfigType::Json => true,
        ConfigType::Choice => {
            return match value.as_str() {
                Some(v) if field.choices.iter().any(|c| c == v) => Ok(()),
                _ => Err(format!(
                    "must be one of {}, got {}",
                    field
                        .choices
                        .iter()
                        .map(|c| format!("\"{c}\""))
                        .collect::<Vec<_>>()
                        .join(", "),
                    shown(field, value)
                )),
            };
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be {}, got {}",
            field.kind.describe(),
            shown(field, value)
        ))
    }
}

/// A value as it may appear in an error message: secrets are never echoed.
fn shown(field: &ConfigField, value: &Value) -> String {
    if field.secret {
        "a value of another type".to_owned()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest() -> Manifest {
        Manifest::new("demo", "1.0.0", "").config(vec![
            ConfigField::new("percentage", ConfigType::Number, "").with_default(100),
            ConfigField::choice("method", "", &["a", "b"]).required(),
            ConfigField::new("token", ConfigType::Text, "").secret(),
        ])
    }

    #[test]
    fn unknown_and_repeated_capabilities_are_reported() {
        let problems = manifest()
            .needs(&["storage", "teleport", "storage"])
            .validate()
            .unwrap_err();
        let reasons: Vec<_> = problems.iter().map(|p| p.reason.as_str()).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].starts_with("`teleport` is not a capability"));
        assert_eq!(reasons[1], "`storage` is declared twice");
        assert!(manifest().needs(&["geoip", "log"]).validate().is_ok());
    }

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn defaults_are_filled_in() {
        let resolved = manifest()
            .resolve_config(&map(json!({"method": "b"})))
            .unwrap();
        assert_eq!(
            Value::Object(resolved),
            json!({"percentage": 100, "method": "b"})
        );
    }

    #[test]
    fn every_problem_is_reported_at_once_and_secrets_are_not_echoed() {
        let problems = manifest()
            .resolve_config(&map(
                json!({"percentage": "50", "colour": 1, "token": 12345}),
            ))
            .unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "`colour`: unknown key (this plugin accepts: percentage, method, token)",
                "`percentage`: must be a number, got \"50\"",
                "`method`: is required",
                "`token`: must be a string, got a value of another type",
            ]
        );
    }

    #[test]
    fn incoherent_manifests_are_rejected() {
        let mut bad = manifest();
        bad.config[0].default = Some(json!("x"));
        bad.config[1].choices.clear();
        bad.config.push(bad.config[2].clone());
        let problems = bad.validate().unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(manifest().validate().is_ok());
    }
}
