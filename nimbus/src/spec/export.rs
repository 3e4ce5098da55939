//! `nimbus export`: the spec of what exists.

use std::path::Path;

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde_json::{Value, json};

use super::plan::{list, part};
use crate::cli::Client;

/// The spec of what exists in the caller's tenant. With `dir`, each function's
/// code is unpacked into `dir/NAME/` and the spec's `code` fields point there;
/// without, they name those directories but nothing is written.
pub async fn export(c: &Client, dir: Option<&Path>) -> anyhow::Result<Value> {
    let (_, all) = c
        .call_patiently(Method::GET, "/v1/functions", None, &[])
        .await?;
    let mut functions = Vec::new();
    for f in list(&all, "functions") {
        let name = f["name"].as_str().unwrap_or_default().to_string();
        let mut out = serde_json::Map::new();
        out.insert("name".into(), json!(name));
        for k in ["runtime", "handler"] {
            out.insert(k.into(), f[k].clone());
        }
        out.insert("code".into(), json!(format!("./{name}")));
        if f["description"].as_str().is_some_and(|d| !d.is_empty()) {
            out.insert("description".into(), f["description"].clone());
        }
        for (k, default) in [
            ("memory_mb", json!(128)),
            ("timeout_ms", json!(3000)),
            ("provisioned_concurrency", json!(0)),
        ] {
            if f[k] != default {
                out.insert(k.into(), f[k].clone());
            }
        }
        if f["provisioned_qualifier"]
            .as_str()
            .is_some_and(|q| q != "$LATEST")
        {
            out.insert(
                "provisioned_qualifier".into(),
                f["provisioned_qualifier"].clone(),
            );
        }
        if f["scheduled_warmups"]
            .as_array()
            .is_some_and(|w| !w.is_empty())
        {
            out.insert("scheduled_warmups".into(), f["scheduled_warmups"].clone());
        }
        if !f["reserved_concurrency"].is_null() {
            out.insert(
                "reserved_concurrency".into(),
                f["reserved_concurrency"].clone(),
            );
        }
        if f["env"].as_object().is_some_and(|e| !e.is_empty()) {
            out.insert("env".into(), f["env"].clone());
        }
        if f["online"] == false {
            out.insert("online".into(), json!(false));
        }
        let default_async = serde_json::to_value(nimbus_core::model::AsyncConfig::default())?;
        if !f["async"].is_null() && f["async"] != default_async {
            out.insert("async".into(), f["async"].clone());
        }
        let versions = part(c, &name, "versions", true).await?;
        if !versions.is_empty() {
            out.insert("publish".into(), json!(true));
        }
        let aliases = part(c, &name, "aliases", true).await?;
        let aliases: Vec<Value> = aliases
            .iter()
            .map(|a| {
                let mut x = json!({"name": a["name"], "version": a["version"]});
                if a["additional_version_weights"]
                    .as_object()
                    .is_some_and(|w| !w.is_empty())
                {
                    x["weights"] = a["additional_version_weights"].clone();
                }
                x
            })
            .collect();
        if !aliases.is_empty() {
            out.insert("aliases".into(), json!(aliases));
        }
        let triggers = part(c, &name, "triggers", true).await?;
        let triggers: Vec<Value> = triggers
            .iter()
            .map(|t| {
                let mut o = t.as_object().cloned().unwrap_or_default();
                for k in ["id", "function", "created_at", "url_path"] {
                    o.remove(k);
                }
                Value::Object(o)
            })
            .collect();
        if !triggers.is_empty() {
            out.insert("triggers".into(), json!(triggers));
        }
        if let Some(dir) = dir
            && let Some(sha) = f["code_sha256"].as_str()
        {
            let zip = c.bytes(&format!("/v1/packages/{sha}")).await?;
            unzip(&zip, &dir.join(&name))?;
        }
        functions.push(Value::Object(out));
    }
    let mut spec = serde_json::Map::new();
    if !functions.is_empty() {
        spec.insert("functions".into(), json!(functions));
    }
    let (_, machines) = c
        .call_patiently(Method::GET, "/v1/state-machines", None, &[])
        .await?;
    let mut out = Vec::new();
    for m in list(&machines, "state_machines") {
        let name = m["name"].as_str().unwrap_or_default();
        let (_, full) = c
            .call_patiently(
                Method::GET,
                &format!("/v1/state-machines/{name}"),
                None,
                &[],
            )
            .await?;
        out.push(json!({"name": name, "definition": full["state_machine"]["definition"]}));
    }
    if !out.is_empty() {
        spec.insert("state_machines".into(), json!(out));
    }
    let (_, buckets) = c
        .call_patiently(Method::GET, "/v1/buckets", None, &[])
        .await?;
    let names: Vec<Value> = list(&buckets, "buckets")
        .iter()
        .map(|b| b["name"].clone())
        .collect();
    if !names.is_empty() {
        spec.insert("buckets".into(), json!(names));
    }
    let (_, network) = c
        .call_patiently(Method::GET, "/v1/network", None, &[])
        .await?;
    if network["network"]["egress"]
        .as_array()
        .is_some_and(|e| !e.is_empty())
    {
        spec.insert(
            "network".into(),
            json!({"egress": network["network"]["egress"]}),
        );
    }
    Ok(Value::Object(spec))
}

/// Unpacks a package into `dir` (made if missing), refusing paths that leave it.
fn unzip(zip: &[u8], dir: &Path) -> anyhow::Result<()> {
    use std::io::Read as _;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip))?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i)?;
        let Some(rel) = entry.enclosed_name() else {
            bail!("the package has an entry outside its root (#{i})");
        };
        let path = dir.join(rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&path)?;
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("making {}", parent.display()))?;
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        if let Some(mode) = entry.unix_mode() {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o777))?;
        }
    }
    Ok(())
}
