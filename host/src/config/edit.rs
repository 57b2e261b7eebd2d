//! Edits of the config file in force that commands make for the operator (promoting a shadow,
//! rolling an installation back), keeping the file's comments and layout (`toml_edit`). The file
//! is replaced whole, atomically, then reloaded by the caller.

use std::path::Path;
use toml_edit::{DocumentMut, Table, value};

/// Why an edit was not made.
pub type EditError = String;

/// Makes shadow installation `id` of `team` live in the file at `path`: it loses `shadow`,
/// `sample` and `replaces`, and takes the place of the installation it replaced, which goes.
/// Returns one line saying what changed.
pub fn promote(path: &Path, team: u64, id: &str) -> Result<String, EditError> {
    edit(path, team, |plugins| {
        let at = position(plugins, id)?;
        let shadow = plugins.get_mut(at).ok_or("no such installation")?;
        if !shadow
            .get("shadow")
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
        {
            return Err(format!(
                "installation `{id}` of team {team} is not a shadow"
            ));
        }
        shadow.remove("shadow");
        shadow.remove("sample");
        let replaces = shadow
            .remove("replaces")
            .and_then(|v| v.as_str().map(str::to_owned));
        let Some(replaced) = replaces else {
            return Ok(format!("team-{team}/{id} is live where it was written"));
        };
        let table = plugins.remove(at);
        let target = position(plugins, &replaced)?;
        plugins.replace(target, table);
        Ok(format!(
            "team-{team}/{id} is live in place of team-{team}/{replaced}, which is removed"
        ))
    })
}

/// Points installation `id` of `team` in the file at `path` at the plugin file `plugin`.
pub fn set_plugin(path: &Path, team: u64, id: &str, plugin: &Path) -> Result<String, EditError> {
    edit(path, team, |plugins| {
        let at = position(plugins, id)?;
        let table = plugins.get_mut(at).ok_or("no such installation")?;
        table["plugin"] = value(plugin.display().to_string());
        Ok(format!("team-{team}/{id} runs {}", plugin.display()))
    })
}

/// Applies `change` to the `[[teams.plugins]]` of `team` in the file at `path`, and writes it.
fn edit(
    path: &Path,
    team: u64,
    change: impl FnOnce(&mut toml_edit::ArrayOfTables) -> Result<String, EditError>,
) -> Result<String, EditError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| format!("{}: not valid TOML: {e}", path.display()))?;
    let teams = doc
        .get_mut("teams")
        .and_then(|t| t.as_array_of_tables_mut())
        .ok_or_else(|| format!("{}: no [[teams]]", path.display()))?;
    let table: &mut Table = teams
        .iter_mut()
        .find(|t| t.get("id").and_then(|v| v.as_integer()) == Some(team as i64))
        .ok_or_else(|| format!("{}: no team {team}", path.display()))?;
    let plugins = table
        .get_mut("plugins")
        .and_then(|p| p.as_array_of_tables_mut())
        .ok_or_else(|| {
            format!(
                "{}: team {team} has no [[teams.plugins]] tables (inline arrays cannot be edited)",
                path.display()
            )
        })?;
    let said = change(plugins)?;
    let partial = path.with_extension("toml.partial");
    std::fs::write(&partial, doc.to_string())
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(said)
}

fn position(plugins: &toml_edit::ArrayOfTables, id: &str) -> Result<usize, EditError> {
    plugins
        .iter()
        .position(|t| t.get("id").and_then(|v| v.as_str()) == Some(id))
        .ok_or_else(|| format!("no installation `{id}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_promoted_shadow_takes_the_place_of_what_it_replaces_and_comments_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(
            &path,
            "# mine\n[[teams]]\nid = 1\ntoken = \"phc_x\"\n\n[[teams.plugins]]\nid = \"a\"\nplugin = \"a.wasm\"\n\n[[teams.plugins]]\nid = \"b\"\nplugin = \"b.wasm\"\n\n# the new b\n[[teams.plugins]]\nid = \"b2\"\nplugin = \"b2.wasm\"\nshadow = true\nsample = 0.5\nreplaces = \"b\"\n",
        )
        .unwrap();
        assert!(promote(&path, 1, "a").unwrap_err().contains("not a shadow"));
        promote(&path, 1, "b2").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# mine"));
        let doc: toml::Table = text.parse().unwrap();
        let ids: Vec<&str> = doc["teams"][0]["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a", "b2"]);
        assert!(doc["teams"][0]["plugins"][1].get("shadow").is_none());
        set_plugin(&path, 1, "a", Path::new("/v/a1.wasm")).unwrap();
        let doc: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        assert_eq!(
            doc["teams"][0]["plugins"][0]["plugin"].as_str(),
            Some("/v/a1.wasm")
        );
    }
}
