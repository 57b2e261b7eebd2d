//! `sluice plugin new NAME`: a plugin crate of its own, wherever the author wants it, that tests
//! natively and builds for `wasm32-wasip2` at once: the manifest (`Cargo.toml`, a workspace of
//! its own so no enclosing workspace claims it), the toolchain pin, a plugin with the chosen
//! hooks and a native test of each, sample events and a README with the commands that matter.
//!
//! The SDK is not on crates.io yet, so the dependency names its version (as a published crate
//! would be named) with the path of this sluice's `sdk/` (where the binary was built from; or
//! `--sdk`): it then resolves offline, and once the SDK is published, dropping `path` is all it
//! takes. `--sdk-git URL` writes a git dependency instead, for a machine without the clone.

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// The SDK's version, which the new crate asks for.
const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A hook the new plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Hook {
    /// Change, enrich or drop events.
    Transform,
    /// Send stored events elsewhere.
    Export,
    /// Tasks on a clock.
    Scheduled,
    /// Queued jobs.
    Jobs,
}

/// `sluice plugin new`.
#[derive(Args)]
pub struct New {
    /// The plugin's name (lowercase letters, digits and `-`): the crate and the component.
    name: String,
    /// Its hooks (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "transform")]
    hooks: Vec<Hook>,
    /// Where to write the crate (must not exist or be empty); default: ./NAME.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The sluice `sdk/` folder to depend on; default: the one this binary was built from.
    #[arg(long, conflicts_with = "sdk_git")]
    sdk: Option<PathBuf>,
    /// Depend on the SDK from this git repository (sluice's) instead of a folder.
    #[arg(long)]
    sdk_git: Option<String>,
}

/// Writes the crate `new` describes.
pub fn run(new: &New) -> anyhow::Result<()> {
    let name = &new.name;
    let valid = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "`{name}` cannot name a plugin: use lowercase letters, digits and `-`, starting with a letter"
        );
    }
    let dir = new.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} exists and is not empty", dir.display());
    }
    let dependency = match (&new.sdk_git, &new.sdk) {
        (Some(url), _) => format!("{{ git = \"{url}\" }}"),
        (None, sdk) => {
            let sdk = match sdk {
                Some(sdk) => sdk.clone(),
                None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk"),
            };
            let sdk = sdk.canonicalize().with_context(|| {
                format!(
                    "the SDK is not at {} (give its folder with --sdk, or --sdk-git URL)",
                    sdk.display()
                )
            })?;
            if !sdk.join("Cargo.toml").is_file() {
                bail!("{} is not the sluice SDK (no Cargo.toml)", sdk.display());
            }
            format!(
                "{{ version = \"{SDK_VERSION}\", path = \"{}\" }}",
                sdk.display()
            )
        }
    };
    let mut hooks = new.hooks.clone();
    hooks.sort_by_key(|h| *h as u8);
    hooks.dedup();
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let files = [
        ("Cargo.toml", manifest(name, &dependency)),
        ("rust-toolchain.toml", TOOLCHAIN.to_owned()),
        (".gitignore", "/target\n".to_owned()),
        ("src/lib.rs", plugin(name, &hooks)),
        ("events.jsonl", SAMPLE_EVENTS.to_owned()),
        ("README.md", readme(name, &hooks)),
    ];
    for (file, text) in files {
        let path = dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    // Laid out as `cargo fmt` would, where rustfmt is installed (the code is the same without).
    let _ = std::process::Command::new("rustfmt")
        .args(["--edition", "2024"])
        .arg(dir.join("src/lib.rs"))
        .stderr(std::process::Stdio::null())
        .status();
    println!(
        "wrote plugin `{name}` in {}; next:\n  cd {}\n  cargo test\n  cargo build --release --target wasm32-wasip2",
        dir.display(),
        dir.display()
    );
    Ok(())
}

const TOOLCHAIN: &str = "[toolchain]\nchannel = \"1.95.0\"\ntargets = [\"wasm32-wasip2\"]\n";

const SAMPLE_EVENTS: &str = r#"{"event": "$pageview", "distinct_id": "user-1", "properties": {"$current_url": "https://example.com/"}}
{"event": "signup", "distinct_id": "user-2", "properties": {"plan": "free"}}
"#;

fn manifest(name: &str, dependency: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
rust-version = "1.95"
publish = false

[lib]
# `cdylib` is the wasm component; `rlib` lets `cargo test` run the plugin natively.
crate-type = ["cdylib", "rlib"]

[dependencies]
# The sluice SDK, by version; `path` (or `git`) says where it is until it is published.
sluice-sdk = {dependency}

[profile.release]
opt-level = "s"
lto = true
strip = true

# A workspace of its own: the crate builds wherever it is.
[workspace]
"#
    )
}

/// The plugin's type name: `my-plugin` becomes `MyPlugin`.
fn type_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

/// `src/lib.rs` of a plugin with `hooks`.
fn plugin(name: &str, hooks: &[Hook]) -> String {
    let ty = type_name(name);
    let has = |hook| hooks.contains(&hook);
    let logs = hooks.iter().any(|h| *h != Hook::Transform);
    let mut uses = vec![
        "Config",
        "ConfigField",
        "ConfigType",
        "Manifest",
        "Plugin",
        "PluginError",
    ];
    if has(Hook::Transform) {
        uses.extend(["Event", "Outcome", "Transform"]);
    }
    if has(Hook::Export) {
        uses.extend(["Event", "ExportBatch", "Exporter"]);
    }
    if has(Hook::Scheduled) {
        uses.push("Scheduled");
    }
    if has(Hook::Jobs) {
        uses.extend(["Job", "Jobs"]);
    }
    uses.sort_unstable();
    uses.dedup();
    let mut code = format!(
        "//! The `{name}` sluice plugin.\n\nuse sluice_sdk::{{{}}};\n{}\n",
        uses.join(", "),
        if logs {
            "use sluice_sdk::host::{self, Level};\n"
        } else {
            ""
        }
    );
    let _ = write!(
        code,
        r#"/// What the plugin keeps between calls: its config, read once at setup.
#[derive(Debug)]
pub struct {ty} {{
    property: String,
}}

impl Plugin for {ty} {{
    fn manifest() -> Manifest {{
        Manifest::new("{name}", env!("CARGO_PKG_VERSION"), "Describe what {name} does")
            .config(vec![
                ConfigField::new("property", ConfigType::Text, "The property it sets")
                    .with_default("processed_by"),
            ])"#
    );
    if logs {
        // The host refuses a plugin that imports a capability its manifest does not declare.
        code.push_str("\n            .needs(&[\"log\"])");
    }
    if has(Hook::Scheduled) {
        code.push_str("\n            .task(\"tick\", \"every hour\", \"Says hello every hour\")");
    }
    code.push_str(
        r#"
    }

    // The config arrives checked against the manifest, defaults filled in.
    fn setup(config: &Config) -> Result<Self, PluginError> {
        Ok(Self {
            property: config.text("property")?.to_owned(),
        })
    }
}
"#,
    );
    if has(Hook::Transform) {
        let _ = write!(
            code,
            r#"
impl Transform for {ty} {{
    fn transform(&mut self, event: &Event<'_>) -> Outcome {{
        if event.name() == "$internal" {{
            return Outcome::Drop("internal events are not stored".into());
        }}
        // Only the edit goes back to the host, which applies it when the event is stored.
        let mut edit = event.edit();
        edit.set(&self.property, "{name}");
        Outcome::Edit(edit)
    }}
}}
"#
        );
    }
    if has(Hook::Export) {
        let _ = write!(
            code,
            r#"
impl Exporter for {ty} {{
    // Send the events somewhere (`host::http`, `host::object_store`), named after `batch.id`
    // so that a batch sent again replaces its earlier attempt.
    fn export(&mut self, batch: &ExportBatch, events: &[Event<'_>]) -> Result<(), PluginError> {{
        host::log(
            Level::Info,
            &format!("batch {{}}: {{}} events", batch.id, events.len()),
        );
        Ok(())
    }}
}}
"#
        );
    }
    if has(Hook::Scheduled) {
        let _ = write!(
            code,
            r#"
impl Scheduled for {ty} {{
    fn run(&mut self, task: &str, scheduled_at_ms: i64) -> Result<(), PluginError> {{
        host::log(Level::Info, &format!("{{task}} for {{scheduled_at_ms}}"));
        Ok(())
    }}
}}
"#
        );
    }
    if has(Hook::Jobs) {
        let _ = write!(
            code,
            r#"
impl Jobs for {ty} {{
    fn run_job(&mut self, job: &Job) -> Result<(), PluginError> {{
        host::log(Level::Info, &format!("job {{}}: {{}}", job.name, job.payload));
        Ok(())
    }}
}}
"#
        );
    }
    let exported: Vec<&str> = hooks
        .iter()
        .map(|h| match h {
            Hook::Transform => "transform",
            Hook::Export => "exporter",
            Hook::Scheduled => "scheduled",
            Hook::Jobs => "jobs",
        })
        .collect();
    let _ = write!(
        code,
        "\nsluice_sdk::export_plugin!({ty}: {});\n",
        exported.join(", ")
    );
    code.push_str(&tests(&ty, hooks));
    code
}

/// The native tests of a plugin with `hooks`.
fn tests(ty: &str, hooks: &[Hook]) -> String {
    let mut testing = vec!["Harness"];
    if hooks
        .iter()
        .any(|h| matches!(h, Hook::Export | Hook::Scheduled))
    {
        testing.push("Recorded");
    }
    if hooks
        .iter()
        .any(|h| matches!(h, Hook::Transform | Hook::Export))
    {
        testing.push("TestEvent");
    }
    let mut code = format!(
        r#"
#[cfg(test)]
mod tests {{
    use super::*;
    use sluice_sdk::json;
    use sluice_sdk::testing::{{{}}};

    fn harness() -> Harness<{ty}> {{
        Harness::new(json!({{}})).unwrap()
    }}
"#,
        testing.join(", ")
    );
    for hook in hooks {
        code.push_str(match hook {
            Hook::Transform => {
                r#"
    #[test]
    fn sets_the_property_and_drops_internal_events() {
        let mut h = harness();
        let event = TestEvent::new("signup").distinct_id("user-1");
        let stored = h.stored(event).unwrap().unwrap();
        assert!(stored.properties.contains_key("processed_by"));
        assert_eq!(h.stored(TestEvent::new("$internal")).unwrap(), None);
    }
"#
            }
            Hook::Export => {
                r#"
    #[test]
    fn exports_a_batch() {
        let mut h = harness();
        h.export("batch-1", 0, vec![TestEvent::new("signup")]).unwrap();
        assert!(h.take_recorded().iter().any(|r| matches!(r, Recorded::Log(_, line) if line.contains("1 events"))));
    }
"#
            }
            Hook::Scheduled => {
                r#"
    #[test]
    fn runs_its_task() {
        let mut h = harness();
        h.run_task("tick", 0).unwrap();
        assert!(h.take_recorded().iter().any(|r| matches!(r, Recorded::Log(_, line) if line.starts_with("tick"))));
    }
"#
            }
            Hook::Jobs => {
                r#"
    #[test]
    fn runs_a_queued_job() {
        let mut h = harness();
        h.queue_job("hello", "{}");
        assert_eq!(h.drain_jobs().unwrap(), 1);
    }
"#
            }
        });
    }
    code.push_str("}\n");
    code
}

/// The README of a plugin with `hooks`.
fn readme(name: &str, hooks: &[Hook]) -> String {
    let wasm = name.replace('-', "_");
    let try_it = if hooks.contains(&Hook::Transform) {
        format!("sluice plugin run target/wasm32-wasip2/release/{wasm}.wasm --events events.jsonl")
    } else if hooks.contains(&Hook::Scheduled) {
        format!("sluice plugin run target/wasm32-wasip2/release/{wasm}.wasm --task tick")
    } else {
        format!("sluice plugin check target/wasm32-wasip2/release/{wasm}.wasm")
    };
    format!(
        r#"# {name}

A sluice plugin. The three commands that matter:

```sh
cargo test                                        # the plugin's logic, natively, in the SDK's harness
cargo build --release --target wasm32-wasip2      # the component: target/wasm32-wasip2/release/{wasm}.wasm
{try_it}
```

`sluice plugin check FILE.wasm` says what the component is and what an operator must grant.
To install it, add to a sluice.toml:

```toml
[[teams.plugins]]
id = "{name}"
plugin = "path/to/{wasm}.wasm"
config = {{ property = "processed_by" }}
```

The SDK guide (`sdk/README.md` in sluice) documents every capability.
"#
    )
}
