//! The command line: help texts and config errors.

use crate::support::{output, sluice_bin};
use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let output = output(Command::new(sluice_bin()).args(args));
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (
        output.status.code(),
        text(output.stdout),
        text(output.stderr),
    )
}

#[test]
fn help_explains_each_command() {
    let (code, help, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
    for command in ["serve", "events", "dead-letters"] {
        assert!(help.contains(command), "{help}");
    }
    let (_, serve, _) = run(&["serve", "--help"]);
    assert!(
        serve.contains("SLUICE_LISTEN") && serve.contains("--config"),
        "{serve}"
    );
    let (_, events, _) = run(&["events", "--help"]);
    assert!(
        events.contains("--team") && events.contains("--limit"),
        "{events}"
    );
}

#[test]
fn config_problems_are_all_reported_with_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nworkers = 0\nport = 1\n[[teams]]\nid = 1\ntoken = \"\"\n",
    )
    .unwrap();
    let (code, _, stderr) = run(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("bad.toml: server.port: unknown field `port`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("bad.toml: teams[0].token: not a usable project token (empty)"),
        "{stderr}"
    );

    let (code, _, stderr) = run(&["serve", "--config", "/nonexistent/sluice.toml"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("/nonexistent/sluice.toml") && stderr.contains("cannot read"),
        "{stderr}"
    );
}

#[test]
fn serve_works_with_a_relative_config_path_from_any_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("conf")).unwrap();
    std::fs::write(
        dir.path().join("conf/sluice.toml"),
        "[admin]\nlisten = \"127.0.0.1:0\"\n[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n[[teams]]\nid = 1\ntoken = \"phc_rel\"\n",
    )
    .unwrap();
    let mut child = Command::new(sluice_bin())
        .args(["serve", "--config", "conf/sluice.toml"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        line.starts_with("listening on http://127.0.0.1:"),
        "{line}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        dir.path().join("conf/data/sluice.db").is_file(),
        "data lives beside the config file"
    );
}

#[test]
fn config_check_says_whether_serve_would_start_and_names_an_address_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let write = |name: &str, listen: &str, plugin_config: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[admin]\nlisten = \"127.0.0.1:0\"\n[server]\nlisten = \"{listen}\"\ndata_dir = \"data\"\n\
                 [[teams]]\nid = 1\ntoken = \"phc_one\"\n[[teams.plugins]]\nid = \"down\"\nplugin = \"{}\"\nconfig = {{ {plugin_config} }}\n",
                crate::support::plugin("downsample").display()
            ),
        )
        .unwrap();
        path.to_str().unwrap().to_owned()
    };
    let good = write("good.toml", "127.0.0.1:0", "percentage = 50");
    let (code, out, err) = run(&["config", "check", "--config", &good]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("ok (1 teams; 1 transforms, 0 exports"),
        "{out}"
    );
    let bad = write("bad.toml", "127.0.0.1:0", "percentage = 150");
    let (code, _, err) = run(&["config", "check", "--config", &bad]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("teams[0].plugins[0]") && err.contains("percentage must be between 0 and 100"),
        "{err}"
    );
    let busy = write("busy.toml", &format!("127.0.0.1:{port}"), "percentage = 50");
    let (code, _, err) = run(&["config", "check", "--config", &busy]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains(&format!("server.listen: cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    drop(taken);
}

#[test]
fn config_show_resolves_each_chain_with_defaults_and_never_prints_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let bq = crate::bigquery::FakeBigQuery::start();
    let path = dir.path().join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"an-admin-token-of-some-length\"\n\
             [server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\
             [[teams]]\nid = 1\ntoken = \"phc_one\"\n\
             [[teams.plugins]]\nid = \"down\"\nplugin = \"{}\"\nconfig = {{ percentage = 50 }}\n\
             [[teams.plugins]]\nid = \"bq\"\nplugin = \"{}\"\n\
             config = {{ key_json = '''{}''', dataset_id = \"analytics\", table_id = \"events\", api_base = \"{}\" }}\n\
             grants = [\"http\"]\nhttp = {{ allow_hosts = [\"127.0.0.1\"], allow_private_addresses = true }}\n",
            crate::support::plugin("downsample").display(),
            crate::support::plugin("bigquery-export").display(),
            bq.key_json,
            bq.url
        ),
    )
    .unwrap();
    let (code, out, err) = run(&["config", "show", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    let installations = &shown["teams"][0]["installations"];
    assert_eq!(installations[0]["id"], "team-1/down");
    assert_eq!(installations[0]["config"]["percentage"], 50);
    assert!(
        installations[0]["config"]["sampling_method"].is_string(),
        "the plugin's defaults are filled in: {}",
        installations[0]
    );
    assert_eq!(installations[0]["hash"].as_str().unwrap().len(), 64);
    assert_eq!(installations[1]["config"]["key_json"], "(redacted)");
    assert_eq!(shown["admin"]["token"], "(redacted)");
    assert!(
        !out.contains("PRIVATE KEY") && !out.contains("an-admin-token-of-some-length"),
        "{out}"
    );
}

#[test]
fn each_first_party_plugin_has_its_reference_page_generated_from_its_build() {
    let plugins = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&plugins).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("Cargo.toml").is_file() {
            continue;
        }
        let name = dir.file_name().unwrap().to_str().unwrap().to_owned();
        let wasm = crate::support::plugin(&name);
        let (code, generated, err) = run(&["plugin", "reference", wasm.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{err}");
        let page = std::fs::read_to_string(dir.join("REFERENCE.md")).unwrap_or_default();
        assert_eq!(
            page,
            generated,
            "plugins/{name}/REFERENCE.md is not what the plugin's manifest says: regenerate it with \
             `sluice plugin reference {} > plugins/{name}/REFERENCE.md`",
            wasm.display()
        );
        checked.push(name);
    }
    assert!(checked.len() >= 6, "{checked:?}");
}
