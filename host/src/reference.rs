//! A plugin's reference page, generated from its manifest (`sluice plugin reference
//! FILE.wasm`): what it does, its hooks, the capabilities an operator must grant, its config
//! (types, defaults, choices, secrets), its tasks and its failure default. The first-party
//! plugins' pages are `plugins/<name>/REFERENCE.md`, checked against their builds by the tests.

use crate::runtime::Plugin;
use serde_json::Value;
use sluice_abi::manifest::{ConfigField, ConfigType, FailureMode};
use std::fmt::Write;

/// The reference page of `plugin`, in Markdown.
pub fn markdown(plugin: &Plugin) -> String {
    let manifest = &plugin.manifest;
    let mut page = format!(
        "# {} {}\n\n{}\n\nGenerated from the plugin's manifest by `sluice plugin reference`.\n\n",
        manifest.name, manifest.version, manifest.description
    );
    let hooks: Vec<String> = plugin.hooks().iter().map(|h| format!("`{h}`")).collect();
    let _ = writeln!(page, "- **Hooks**: {}", hooks.join(", "));
    let _ = writeln!(page, "- **Contract**: {}", plugin.contract.label());
    let grants: Vec<String> = plugin
        .needs()
        .iter()
        .map(|need| format!("`\"{need}\"`"))
        .collect();
    let _ = writeln!(
        page,
        "- **Grants it needs**: {}",
        if grants.is_empty() {
            "none".to_owned()
        } else {
            format!("{} (in the installation's `grants`)", grants.join(", "))
        }
    );
    let failure = match manifest.on_error {
        FailureMode::Skip => "`skip` (an event it fails on goes on as it was)",
        FailureMode::Drop => "`drop`",
        FailureMode::DeadLetter => "`dead_letter`",
    };
    if plugin.transforms() {
        let _ = writeln!(
            page,
            "- **Failure default** (`on_error` unless the installation sets it): {failure}"
        );
        if manifest.stateless {
            page.push_str("- **Stateless**: installations with the same config share instances\n");
        }
    }
    page.push_str("\n## Config\n\n");
    if manifest.config.is_empty() {
        page.push_str("None.\n");
    } else {
        page.push_str("| Key | Type | Default | Description |\n|---|---|---|---|\n");
        for field in &manifest.config {
            let kind = kind(field);
            let default = match &field.default {
                Some(value) => shown(value),
                None if field.required => "required".to_owned(),
                None => "unset".to_owned(),
            };
            let secret = if field.secret {
                " (secret: never printed)"
            } else {
                ""
            };
            let _ = writeln!(
                page,
                "| `{}` | {kind} | {default} | {}{secret} |",
                field.key,
                field.description.replace('|', "\\|")
            );
        }
    }
    if !manifest.tasks.is_empty() {
        page.push_str(
            "\n## Tasks\n\nEach may be given another schedule in the installation's `schedule.tasks`.\n\n\
             | Task | Default schedule | Description |\n|---|---|---|\n",
        );
        for task in &manifest.tasks {
            let _ = writeln!(
                page,
                "| `{}` | `{}` | {} |",
                task.name, task.schedule, task.description
            );
        }
    }
    page
}

/// A default value as the page shows it: text without its quotes, in code, or "empty".
fn shown(value: &Value) -> String {
    match value {
        Value::String(text) if text.is_empty() => "empty".to_owned(),
        Value::String(text) => format!("`{text}`"),
        other => format!("`{other}`"),
    }
}

/// The type of a config field, in words.
pub fn kind(field: &ConfigField) -> String {
    match field.kind {
        ConfigType::Text => "text".to_owned(),
        ConfigType::Integer => "integer".to_owned(),
        ConfigType::Number => "number".to_owned(),
        ConfigType::Boolean => "boolean".to_owned(),
        ConfigType::Json => "JSON".to_owned(),
        ConfigType::Choice => format!("one of {}", field.choices.join(", ")),
    }
}
