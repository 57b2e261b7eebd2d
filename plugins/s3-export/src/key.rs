//! Object keys from a template whose variables are the batch's own, so a re-sent batch gets the
//! same key.

use chrono::{DateTime, Datelike, Timelike};
use sluice_sdk::{ExportBatch, PluginError};

/// PostHog's layout: `{prefix}{YYYY-MM-DD}/{YYYYMMDD-HHMMSS}-{id}.jsonl.gz`.
pub const DEFAULT_TEMPLATE: &str =
    "{prefix}{year}-{month}-{day}/{year}{month}{day}-{hour}{minute}{second}-{id}{ext}";

const VARIABLES: [&str; 10] = [
    "prefix", "year", "month", "day", "hour", "minute", "second", "team", "id", "ext",
];

/// A parsed key template: literal text and variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate(Vec<Part>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Variable(&'static str),
}

impl KeyTemplate {
    /// Parses `template`, which must name `{id}` and only known variables.
    pub fn parse(template: &str) -> Result<Self, PluginError> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(start) = rest.find('{') {
            parts.push(Part::Text(rest[..start].to_owned()));
            let end = rest[start..].find('}').ok_or_else(|| {
                PluginError::new(format!("key_template: unclosed `{{` in {template:?}"))
            })?;
            let name = &rest[start + 1..start + end];
            let variable = VARIABLES.iter().find(|v| **v == name).ok_or_else(|| {
                PluginError::new(format!(
                    "key_template: unknown variable {{{name}}} (known: {})",
                    VARIABLES.map(|v| format!("{{{v}}}")).join(" ")
                ))
            })?;
            parts.push(Part::Variable(variable));
            rest = &rest[start + end + 1..];
        }
        parts.push(Part::Text(rest.to_owned()));
        if !parts.contains(&Part::Variable("id")) {
            return Err(PluginError::new(
                "key_template must contain {id}, so that a batch sent again overwrites its own object",
            ));
        }
        Ok(Self(parts))
    }

    /// The key of `batch`, with date parts of when it was formed (UTC).
    pub fn render(&self, batch: &ExportBatch, prefix: &str, ext: &str) -> String {
        let formed = DateTime::from_timestamp_millis(batch.created_at_ms).unwrap_or_default();
        let two = |n: u32| format!("{n:02}");
        self.0
            .iter()
            .map(|part| match part {
                Part::Text(text) => text.clone(),
                Part::Variable("prefix") => prefix.to_owned(),
                Part::Variable("year") => format!("{:04}", formed.year()),
                Part::Variable("month") => two(formed.month()),
                Part::Variable("day") => two(formed.day()),
                Part::Variable("hour") => two(formed.hour()),
                Part::Variable("minute") => two(formed.minute()),
                Part::Variable("second") => two(formed.second()),
                Part::Variable("team") => batch.team_id.to_string(),
                Part::Variable("ext") => ext.to_owned(),
                Part::Variable(_) => batch.id.clone(),
            })
            .collect()
    }
}
