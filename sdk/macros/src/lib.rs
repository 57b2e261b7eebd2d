//! `plugin_world!`: generates the bindings of a plugin's own WIT world, which exports
//! `lifecycle` and exactly the hooks the plugin implements, and imports the host services.
//!
//! A component's world decides what it exports, and the host derives what a plugin does from
//! its exports; so each plugin crate gets a world of its own instead of one world for all. The
//! shared interfaces (`types` and the imports) are mapped to the SDK's bindings, so every plugin
//! uses the SDK's types. Plugin authors use `sluice_sdk::export_plugin!`, which calls this.
//!
//! The contract's files are compiled into this crate, so the bindings do not depend on where
//! the SDK sits on disk (a shared target folder, a git checkout, a vendored copy).

use proc_macro::TokenStream;

/// Version of the WIT package the SDK is built against.
const VERSION: &str = "1.0.0";

/// The files of the contract's package (`wit/v1`), one interface (or the worlds) each.
const PACKAGE: [&str; 16] = [
    include_str!("../../../wit/v1/types.wit"),
    include_str!("../../../wit/v1/lifecycle.wit"),
    include_str!("../../../wit/v1/transform.wit"),
    include_str!("../../../wit/v1/exporter.wit"),
    include_str!("../../../wit/v1/scheduled.wit"),
    include_str!("../../../wit/v1/jobs.wit"),
    include_str!("../../../wit/v1/log.wit"),
    include_str!("../../../wit/v1/metrics.wit"),
    include_str!("../../../wit/v1/storage.wit"),
    include_str!("../../../wit/v1/cache.wit"),
    include_str!("../../../wit/v1/geoip.wit"),
    include_str!("../../../wit/v1/http.wit"),
    include_str!("../../../wit/v1/object-store.wit"),
    include_str!("../../../wit/v1/job-queue.wit"),
    include_str!("../../../wit/v1/recordings.wit"),
    include_str!("../../../wit/v1/worlds.wit"),
];

/// The contract as one nested package, for a WIT document of its own: each file without its
/// `package` line (and the package's doc comment above it).
fn nested_package() -> Result<String, String> {
    let mut body = String::new();
    for file in PACKAGE {
        let (_, items) = file
            .split_once(&format!("package sluice:plugin@{VERSION};"))
            .ok_or_else(|| format!("a contract file does not declare sluice:plugin@{VERSION}"))?;
        body += items;
    }
    Ok(format!("package sluice:plugin@{VERSION} {{\n{body}\n}}"))
}

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
    let wit = format!(
        "package sluice:composed;\n{}\nworld plugin {{ include sluice:plugin/host-services@{VERSION}; {exports} }}",
        nested_package()?
    );
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
                inline: {wit:?},
                world: "sluice:composed/plugin",
                with: {{ {with} }},
                runtime_path: "::sluice_sdk::__private::wit_bindgen::rt",
            }});
        }}"#,
        with = with.join(", "),
    ))
}
