//! `plugin_world!`: generates the bindings of a plugin's own WIT world, which exports
//! `lifecycle` and exactly the hooks the plugin implements, and imports the host services.
//!
//! A component's world decides what it exports, and the host derives what a plugin does from
//! its exports; so each plugin crate gets a world of its own instead of one world for all. The
//! shared interfaces (`types` and the imports) are mapped to the SDK's bindings, so every plugin
//! uses the SDK's types. Plugin authors use `sluice_sdk::export_plugin!`, which calls this.

use proc_macro::TokenStream;
use std::path::Path;

/// Version of the WIT package the SDK is built against.
const VERSION: &str = "0.5.0";

/// Hooks a plugin may export, besides `lifecycle` (which every plugin exports).
const HOOKS: [&str; 4] = ["transform", "exporter", "scheduled", "jobs"];

/// Interfaces shared with the SDK's bindings (`sluice_sdk::bindings`).
const SHARED: [&str; 10] = [
    "types",
    "log",
    "metrics",
    "storage",
    "cache",
    "geoip",
    "http",
    "object-store",
    "job-queue",
    "recordings",
];

/// `plugin_world!(name; hook, hook...)`: a module `name` with the generated bindings of a world
/// exporting `lifecycle` and the listed hooks (`transform`, `exporter`, `scheduled`, `jobs`), and
/// its `export!` macro.
#[proc_macro]
pub fn plugin_world(input: TokenStream) -> TokenStream {
    match expand(&input.to_string()) {
        Ok(code) => code.parse().unwrap_or_else(|e| error(&format!("{e}"))),
        Err(message) => error(&message),
    }
}

fn error(message: &str) -> TokenStream {
    format!("compile_error!({message:?});")
        .parse()
        .unwrap_or_default()
}

fn expand(input: &str) -> Result<String, String> {
    let (name, hooks) = input
        .split_once(';')
        .ok_or("expected `plugin_world!(module_name; hook, ...)`")?;
    let name = name.trim();
    let hooks: Vec<&str> = hooks
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    if hooks.is_empty() {
        return Err(format!("name at least one hook: {}", HOOKS.join(", ")));
    }
    let mut exports = format!("export sluice:plugin/lifecycle@{VERSION};");
    for hook in &hooks {
        if !HOOKS.contains(hook) {
            return Err(format!(
                "`{hook}` is not a hook (hooks: {})",
                HOOKS.join(", ")
            ));
        }
        exports += &format!(" export sluice:plugin/{hook}@{VERSION};");
    }
    let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../wit/v{VERSION}"));
    let wit = wit
        .canonicalize()
        .map_err(|e| format!("cannot find the WIT contract at {}: {e}", wit.display()))?;
    let with: Vec<String> = SHARED
        .iter()
        .map(|interface| {
            format!(
                "\"sluice:plugin/{interface}@{VERSION}\": ::sluice_sdk::bindings::sluice::plugin::{}",
                interface.replace('-', "_")
            )
        })
        .collect();
    Ok(format!(
        r#"#[allow(missing_docs, unsafe_code, clippy::all)]
        pub mod {name} {{
            ::sluice_sdk::__private::wit_bindgen::generate!({{
                inline: "package sluice:composed; world plugin {{ include sluice:plugin/host-services@{VERSION}; {exports} }}",
                path: {path:?},
                world: "sluice:composed/plugin",
                with: {{ {with} }},
                runtime_path: "::sluice_sdk::__private::wit_bindgen::rt",
            }});
        }}"#,
        path = wit.display().to_string(),
        with = with.join(", "),
    ))
}
