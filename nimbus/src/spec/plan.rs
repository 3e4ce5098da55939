//! Comparing a spec with what exists, and making the changes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use reqwest::Method;
use serde_json::{Value, json};

use super::Spec;
use crate::cli::{ApiError, Client};

/// One step of a plan.
#[derive(Debug, Clone)]
pub(super) enum Action {
    CreateFunction {
        body: Value,
    },
    UpdateCode {
        name: String,
        body: Value,
    },
    Patch {
        name: String,
        body: Value,
    },
    Online {
        name: String,
        online: bool,
    },
    Publish {
        name: String,
    },
    PutAlias {
        function: String,
        alias: String,
        body: Value,
    },
    DeleteAlias {
        function: String,
        alias: String,
    },
    AddTrigger {
        function: String,
        body: Value,
    },
    DeleteTrigger {
        function: String,
        id: String,
    },
    DeleteFunction {
        name: String,
    },
    PutNetwork {
        body: Value,
    },
    CreateBucket {
        name: String,
    },
    CreateMachine {
        body: Value,
    },
    UpdateMachine {
        name: String,
        body: Value,
    },
    DeleteMachine {
        name: String,
    },
}

/// A change the plan makes, as shown to the user.
#[derive(Debug, Clone)]
pub struct Change {
    /// `+` makes, `~` changes, `-` deletes.
    pub sign: char,
    /// What it is about, e.g. `function alpha`.
    pub what: String,
    /// How, e.g. `memory_mb 128 → 256`.
    pub detail: String,
    pub(super) action: Action,
}

/// What apply would do.
pub struct Plan {
    /// In the order they are made.
    pub changes: Vec<Change>,
    /// What exists and the spec does not name, kept because `--prune` was not given.
    pub kept: Vec<String>,
    /// How many functions and state machines the spec names.
    pub named: (usize, usize),
}

impl Plan {
    /// The plan as text: one line per change.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.changes {
            let _ = writeln!(
                out,
                "{} {}{}",
                c.sign,
                c.what,
                if c.detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", c.detail)
                }
            );
        }
        for k in &self.kept {
            let _ = writeln!(out, "  {k}: not in the spec, kept (--prune deletes it)");
        }
        if self.changes.is_empty() {
            let _ = writeln!(
                out,
                "no changes: {} function(s) and {} state machine(s) are as the spec says",
                self.named.0, self.named.1
            );
        }
        out
    }

    /// The plan as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "changes": self.changes.iter().map(|c| json!({
                "change": match c.sign { '+' => "create", '-' => "delete", _ => "update" },
                "what": c.what,
                "detail": c.detail,
            })).collect::<Vec<_>>(),
            "kept": self.kept,
        })
    }
}

/// GET `path`, or None on 404.
async fn get_opt(c: &Client, path: &str) -> anyhow::Result<Option<Value>> {
    match c.call_patiently(Method::GET, path, None, &[]).await {
        Ok((_, v)) => Ok(Some(v)),
        Err(e)
            if e.downcast_ref::<ApiError>()
                .is_some_and(|a| a.status == 404) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

pub(super) fn list(v: &Value, key: &str) -> Vec<Value> {
    v[key].as_array().cloned().unwrap_or_default()
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// A function's `versions`, `aliases` or `triggers` (none if it does not exist yet).
pub(super) async fn part(
    c: &Client,
    name: &str,
    what: &str,
    exists: bool,
) -> anyhow::Result<Vec<Value>> {
    if !exists {
        return Ok(Vec::new());
    }
    let (_, v) = c
        .call_patiently(
            Method::GET,
            &format!("/v1/functions/{name}/{what}"),
            None,
            &[],
        )
        .await?;
    Ok(list(&v, what))
}

/// A trigger's identity: what two triggers of one function may not share.
fn trigger_key(kind: &str, config: &Value) -> String {
    let s = |k: &str| config[k].as_str().unwrap_or("").to_string();
    match kind {
        "http" => format!("http {}", s("path")),
        "timer" => format!("timer \"{}\"", s("cron")),
        "queue" => format!("queue {}", s("queue")),
        "storage" => format!("storage {} {}*{}", s("bucket"), s("prefix"), s("suffix")),
        other => other.to_string(),
    }
}

fn trigger_body(kind: &str, config: &Value) -> Value {
    let mut body = config.clone();
    if let Value::Object(o) = &mut body {
        o.insert("type".into(), json!(kind));
    }
    body
}

/// Compares the spec with what exists and lists the changes, in the order they
/// must be made: network, functions (code and config, then versions, aliases and
/// triggers), state machines, then what `prune` deletes.
pub async fn plan(c: &Client, spec: &Spec, prune: bool) -> anyhow::Result<Plan> {
    let mut changes = Vec::new();
    let mut kept = Vec::new();
    let mut push = |sign: char, what: String, detail: String, action: Action| {
        changes.push(Change {
            sign,
            what,
            detail,
            action,
        });
    };

    if let Some((n, _)) = &spec.network {
        let (_, now) = c
            .call_patiently(Method::GET, "/v1/network", None, &[])
            .await?;
        let current: Vec<String> =
            serde_json::from_value(now["network"]["egress"].clone()).unwrap_or_default();
        if current != n.egress {
            push(
                '~',
                "network".into(),
                format!("egress {current:?} → {:?}", n.egress),
                Action::PutNetwork {
                    body: json!({"egress": n.egress}),
                },
            );
        }
    }

    // Buckets before functions: a storage trigger names one. Never deleted (the API
    // has no bucket delete: objects are data, not configuration).
    if !spec.buckets.is_empty() {
        let (_, now) = c
            .call_patiently(Method::GET, "/v1/buckets", None, &[])
            .await?;
        let have: Vec<String> = list(&now, "buckets")
            .iter()
            .filter_map(|b| b["name"].as_str().map(String::from))
            .collect();
        for b in spec.buckets.iter().filter(|b| !have.contains(b)) {
            push(
                '+',
                format!("bucket {b}"),
                String::new(),
                Action::CreateBucket { name: b.clone() },
            );
        }
    }

    let (_, all) = c
        .call_patiently(Method::GET, "/v1/functions", None, &[])
        .await?;
    let existing: Vec<String> = list(&all, "functions")
        .iter()
        .filter_map(|f| f["name"].as_str().map(String::from))
        .collect();
    // Version numbers each function will have after the plan's publishes.
    let mut later: Vec<Change> = Vec::new();
    for f in &spec.functions {
        let s = &f.spec;
        let name = s.name.clone();
        let what = format!("function {name}");
        let current = get_opt(c, &format!("/v1/functions/{name}")).await?;
        let code_changed;
        let mut patched = false;
        match &current {
            None => {
                code_changed = true;
                let mut body = json!({
                    "name": name, "runtime": s.runtime, "handler": s.handler,
                    "memory_mb": s.memory_mb, "timeout_ms": s.timeout_ms, "env": f.env,
                    "provisioned_concurrency": s.provisioned_concurrency,
                    "provisioned_qualifier": s.provisioned_qualifier,
                    "scheduled_warmups": s.scheduled_warmups,
                    "async": f.async_config, "description": s.description,
                    "code": {"zip_base64": base64::engine::general_purpose::STANDARD.encode(&f.zip)},
                });
                if let Some(r) = s.reserved_concurrency {
                    body["reserved_concurrency"] = json!(r);
                }
                push(
                    '+',
                    what.clone(),
                    format!(
                        "{} {}, {} MB, code {}",
                        s.runtime,
                        s.handler,
                        s.memory_mb,
                        short(&f.sha256)
                    ),
                    Action::CreateFunction { body },
                );
                if !s.online {
                    push(
                        '~',
                        what.clone(),
                        "offline".into(),
                        Action::Online {
                            name: name.clone(),
                            online: false,
                        },
                    );
                }
            }
            Some(v) => {
                let f_now = &v["function"];
                let mut code = Vec::new();
                let now_sha = f_now["code_sha256"].as_str().unwrap_or("");
                if now_sha != f.sha256 {
                    code.push(format!("code {} → {}", short(now_sha), short(&f.sha256)));
                }
                for (k, want) in [("runtime", &s.runtime), ("handler", &s.handler)] {
                    let have = f_now[k].as_str().unwrap_or("");
                    if have != want {
                        code.push(format!("{k} {have} → {want}"));
                    }
                }
                code_changed = !code.is_empty();
                if code_changed {
                    push(
                        '~',
                        what.clone(),
                        code.join(", "),
                        Action::UpdateCode {
                            name: name.clone(),
                            body: json!({
                                "zip_base64": base64::engine::general_purpose::STANDARD.encode(&f.zip),
                                "runtime": s.runtime, "handler": s.handler,
                            }),
                        },
                    );
                }
                let mut patch = serde_json::Map::new();
                let mut said = Vec::new();
                let mut field = |k: &str, have: &Value, want: Value, show: bool| {
                    if *have != want {
                        said.push(if show {
                            format!("{k} {} → {}", compact(have), compact(&want))
                        } else {
                            format!("{k} changed")
                        });
                        patch.insert(k.to_string(), want);
                    }
                };
                field("memory_mb", &f_now["memory_mb"], json!(s.memory_mb), true);
                field(
                    "timeout_ms",
                    &f_now["timeout_ms"],
                    json!(s.timeout_ms),
                    true,
                );
                field(
                    "description",
                    &f_now["description"],
                    json!(s.description),
                    true,
                );
                field(
                    "reserved_concurrency",
                    &f_now["reserved_concurrency"],
                    json!(s.reserved_concurrency),
                    true,
                );
                field(
                    "provisioned_concurrency",
                    &f_now["provisioned_concurrency"],
                    json!(s.provisioned_concurrency),
                    true,
                );
                field(
                    "provisioned_qualifier",
                    &f_now["provisioned_qualifier"],
                    json!(s.provisioned_qualifier),
                    true,
                );
                field(
                    "scheduled_warmups",
                    &f_now["scheduled_warmups"],
                    json!(s.scheduled_warmups),
                    true,
                );
                field("async", &f_now["async"], f.async_config.clone(), true);
                let env_now: BTreeMap<String, String> =
                    serde_json::from_value(f_now["env"].clone()).unwrap_or_default();
                if env_now != f.env {
                    // Names only: values may be secrets.
                    let mut parts = Vec::new();
                    for k in f.env.keys().filter(|k| !env_now.contains_key(*k)) {
                        parts.push(format!("env {k} added"));
                    }
                    for (k, v) in &f.env {
                        if env_now.get(k).is_some_and(|n| n != v) {
                            parts.push(format!("env {k} changed"));
                        }
                    }
                    for k in env_now.keys().filter(|k| !f.env.contains_key(*k)) {
                        parts.push(format!("env {k} removed"));
                    }
                    said.extend(parts);
                    patch.insert("env".into(), json!(f.env));
                }
                if !patch.is_empty() {
                    patched = true;
                    push(
                        '~',
                        what.clone(),
                        said.join(", "),
                        Action::Patch {
                            name: name.clone(),
                            body: Value::Object(patch),
                        },
                    );
                }
                if f_now["online"].as_bool() != Some(s.online) {
                    push(
                        '~',
                        what.clone(),
                        if s.online { "online" } else { "offline" }.into(),
                        Action::Online {
                            name: name.clone(),
                            online: s.online,
                        },
                    );
                }
            }
        }
        let changed = code_changed || patched;

        // Versions: publish when $LATEST differs from the newest version.
        let versions = part(c, &name, "versions", current.is_some()).await?;
        let newest = versions
            .iter()
            .filter_map(|v| v["version"].as_str()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        if s.publish {
            let same = versions
                .iter()
                .find(|v| v["version"].as_str() == Some(&newest.to_string()))
                .is_some_and(|v| {
                    !changed
                        && v["code_sha256"].as_str() == Some(&f.sha256)
                        && v["runtime"].as_str() == Some(&s.runtime)
                        && v["handler"].as_str() == Some(&s.handler)
                        && v["memory_mb"] == json!(s.memory_mb)
                        && v["timeout_ms"] == json!(s.timeout_ms)
                        && serde_json::from_value::<BTreeMap<String, String>>(v["env"].clone())
                            .ok()
                            .as_ref()
                            == Some(&f.env)
                });
            if !same {
                later.push(Change {
                    sign: '+',
                    what: format!("version {name}:{}", newest + 1),
                    detail: "published from $LATEST".into(),
                    action: Action::Publish { name: name.clone() },
                });
            }
        }

        // Aliases.
        let aliases_now = part(c, &name, "aliases", current.is_some()).await?;
        plan_aliases(&name, s, &aliases_now, prune, &mut later, &mut kept);

        // Triggers, matched by what identifies them (an http path, a cron, a queue,
        // a bucket and key filter); a changed one is replaced.
        let triggers_now = part(c, &name, "triggers", current.is_some()).await?;
        plan_triggers(&name, f, &triggers_now, prune, &mut later, &mut kept);
    }
    changes.append(&mut later);

    // State machines, after the functions their Tasks call.
    let (_, machines) = c
        .call_patiently(Method::GET, "/v1/state-machines", None, &[])
        .await?;
    let machines_now: Vec<String> = list(&machines, "state_machines")
        .iter()
        .filter_map(|m| m["name"].as_str().map(String::from))
        .collect();
    for (m, definition, _) in &spec.machines {
        let what = format!("state machine {}", m.name);
        match get_opt(c, &format!("/v1/state-machines/{}", m.name)).await? {
            None => changes.push(Change {
                sign: '+',
                what,
                detail: String::new(),
                action: Action::CreateMachine {
                    body: json!({"name": m.name, "definition": definition}),
                },
            }),
            Some(v) if v["state_machine"]["definition"] != *definition => changes.push(Change {
                sign: '~',
                what,
                detail: "definition changed".into(),
                action: Action::UpdateMachine {
                    name: m.name.clone(),
                    body: json!({"definition": definition}),
                },
            }),
            Some(_) => {}
        }
    }

    // What the spec no longer names: machines first (they call functions).
    for name in machines_now {
        if spec.machines.iter().any(|(m, ..)| m.name == name) {
            continue;
        }
        if prune {
            changes.push(Change {
                sign: '-',
                what: format!("state machine {name}"),
                detail: String::new(),
                action: Action::DeleteMachine { name },
            });
        } else {
            kept.push(format!("state machine {name}"));
        }
    }
    for name in existing {
        if spec.functions.iter().any(|f| f.spec.name == name) {
            continue;
        }
        if prune {
            changes.push(Change {
                sign: '-',
                what: format!("function {name}"),
                detail: "with its versions, aliases and triggers".into(),
                action: Action::DeleteFunction { name },
            });
        } else {
            kept.push(format!("function {name}"));
        }
    }
    Ok(Plan {
        changes,
        kept,
        named: (spec.functions.len(), spec.machines.len()),
    })
}

/// The changes that make a function's aliases those of the spec.
fn plan_aliases(
    name: &str,
    s: &super::FunctionSpec,
    aliases_now: &[Value],
    prune: bool,
    later: &mut Vec<Change>,
    kept: &mut Vec<String>,
) {
    for a in &s.aliases {
        let version = match &a.version {
            Value::String(v) => v.clone(),
            other => other.to_string(),
        };
        let weights: serde_json::Map<String, Value> = a
            .weights
            .iter()
            .map(|(k, w)| (k.clone(), json!(w)))
            .collect();
        let body = json!({"version": version, "additional_version_weights": weights});
        let now = aliases_now.iter().find(|x| x["name"] == a.name.as_str());
        let same = now.is_some_and(|x| {
            x["version"].as_str() == Some(&version)
                && weights_equal(
                    &x["additional_version_weights"],
                    &Value::Object(weights.clone()),
                )
        });
        if same {
            continue;
        }
        let detail = match now {
            None => format!("→ {version}{}", show_weights(&a.weights)),
            Some(x) => format!(
                "{}{} → {version}{}",
                x["version"].as_str().unwrap_or("?"),
                show_weights(
                    &serde_json::from_value(x["additional_version_weights"].clone())
                        .unwrap_or_default()
                ),
                show_weights(&a.weights)
            ),
        };
        later.push(Change {
            sign: if now.is_some() { '~' } else { '+' },
            what: format!("alias {name}/{}", a.name),
            detail,
            action: Action::PutAlias {
                function: name.to_string(),
                alias: a.name.clone(),
                body,
            },
        });
    }
    for x in aliases_now {
        let alias = x["name"].as_str().unwrap_or_default().to_string();
        if s.aliases.iter().any(|a| a.name == alias) {
            continue;
        }
        if prune {
            later.push(Change {
                sign: '-',
                what: format!("alias {name}/{alias}"),
                detail: String::new(),
                action: Action::DeleteAlias {
                    function: name.to_string(),
                    alias,
                },
            });
        } else {
            kept.push(format!("alias {name}/{alias}"));
        }
    }
}

/// The changes that make a function's triggers those of the spec: matched by what
/// identifies them (an http path, a cron, a queue, a bucket and key filter); a
/// changed one is replaced.
fn plan_triggers(
    name: &str,
    f: &super::Function,
    triggers_now: &[Value],
    prune: bool,
    later: &mut Vec<Change>,
    kept: &mut Vec<String>,
) {
    let settings = |t: &Value| -> Value {
        let mut o = t.as_object().cloned().unwrap_or_default();
        for k in ["id", "function", "type", "created_at", "url_path"] {
            o.remove(k);
        }
        Value::Object(o)
    };
    let mut matched = vec![false; triggers_now.len()];
    for (kind, config) in &f.triggers {
        let key = trigger_key(kind, config);
        let found = triggers_now.iter().enumerate().find(|(i, t)| {
            !matched[*i] && t["type"] == kind.as_str() && trigger_key(kind, &settings(t)) == key
        });
        match found {
            Some((i, t)) if settings(t) == *config => matched[i] = true,
            Some((i, t)) => {
                matched[i] = true;
                later.push(Change {
                    sign: '~',
                    what: format!("trigger {name}: {key}"),
                    detail: format!("{} → {}", compact(&settings(t)), compact(config)),
                    action: Action::DeleteTrigger {
                        function: name.to_string(),
                        id: t["id"].as_str().unwrap_or_default().into(),
                    },
                });
                later.push(Change {
                    sign: '~',
                    what: format!("trigger {name}: {key}"),
                    detail: "added back with the new settings".into(),
                    action: Action::AddTrigger {
                        function: name.to_string(),
                        body: trigger_body(kind, config),
                    },
                });
            }
            None => later.push(Change {
                sign: '+',
                what: format!("trigger {name}: {key}"),
                detail: String::new(),
                action: Action::AddTrigger {
                    function: name.to_string(),
                    body: trigger_body(kind, config),
                },
            }),
        }
    }
    for (i, t) in triggers_now.iter().enumerate() {
        if matched[i] {
            continue;
        }
        let key = trigger_key(t["type"].as_str().unwrap_or(""), &settings(t));
        if prune {
            later.push(Change {
                sign: '-',
                what: format!("trigger {name}: {key}"),
                detail: String::new(),
                action: Action::DeleteTrigger {
                    function: name.to_string(),
                    id: t["id"].as_str().unwrap_or_default().into(),
                },
            });
        } else {
            kept.push(format!("trigger {name}: {key}"));
        }
    }
}

fn compact(v: &Value) -> String {
    match v {
        Value::Null => "none".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn show_weights(w: &BTreeMap<String, f64>) -> String {
    if w.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = w.iter().map(|(k, x)| format!("{k}: {x}")).collect();
    format!(" ({})", parts.join(", "))
}

fn weights_equal(a: &Value, b: &Value) -> bool {
    let as_map = |v: &Value| -> BTreeMap<String, f64> {
        serde_json::from_value(v.clone()).unwrap_or_default()
    };
    let (a, b) = (as_map(a), as_map(b));
    a.len() == b.len()
        && a.iter()
            .all(|(k, x)| b.get(k).is_some_and(|y| (x - y).abs() < 1e-9))
}
