//! Spec files: `nimbus apply -f FILE|DIR` makes what a spec declares true, and
//! `nimbus export` writes the spec of what exists.
//!
//! A spec is YAML or JSON, checked against the JSON Schema the gateway publishes at
//! `/schemas/nimbus-spec.json` ([`nimbus_core::SPEC_SCHEMA`]); its errors name the file
//! and line. A field left out means its default, so a spec says everything about the
//! functions it names. Apply reads what exists, shows the difference, and (unless
//! `--dry-run`) makes the calls that close it: a second apply finds nothing to do.
//! It never deletes what the spec does not name unless `--prune` says so.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use reqwest::Method;
use saphyr::{LoadableYamlNode as _, MarkedYaml, Scalar, YamlData};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::cli::{ApiError, Client};

/// Where a part of the spec was written.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The file.
    pub file: PathBuf,
    /// Its line, from 1.
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One spec file, parsed: its JSON value and the line of every node in it, by JSON
/// pointer.
#[derive(Debug)]
struct Source {
    path: PathBuf,
    value: Value,
    lines: HashMap<String, usize>,
}

impl Source {
    /// The origin of the node at `pointer`, or of its nearest ancestor.
    fn origin(&self, pointer: &str) -> Origin {
        let mut p = pointer;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Origin {
                    file: self.path.clone(),
                    line: *l,
                };
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => {
                    return Origin {
                        file: self.path.clone(),
                        line: 1,
                    };
                }
            }
        }
    }

    /// The directory paths in the file are relative to.
    fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
}

/// Parses YAML (JSON is YAML) into a JSON value, noting each node's line.
fn parse(path: &Path, text: &str) -> anyhow::Result<Source> {
    let docs = MarkedYaml::load_from_str(text).map_err(|e| {
        anyhow::anyhow!(
            "{}:{}: not valid YAML: {}",
            path.display(),
            e.marker().line(),
            e.info()
        )
    })?;
    let mut lines = HashMap::new();
    let value = match docs.as_slice() {
        [] => json!({}),
        [one] => to_json(path, one, String::new(), &mut lines)?,
        _ => bail!(
            "{}: holds {} YAML documents; put one spec per file",
            path.display(),
            docs.len()
        ),
    };
    Ok(Source {
        path: path.to_path_buf(),
        value,
        lines,
    })
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn to_json(
    path: &Path,
    node: &MarkedYaml<'_>,
    pointer: String,
    lines: &mut HashMap<String, usize>,
) -> anyhow::Result<Value> {
    let line = node.span.start.line();
    lines.insert(pointer.clone(), line);
    let at = || format!("{}:{line}", path.display());
    Ok(match &node.data {
        YamlData::Value(s) => scalar(s),
        YamlData::Representation(s, ..) => Value::String(s.to_string()),
        YamlData::Sequence(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, x)| to_json(path, x, format!("{pointer}/{i}"), lines))
                .collect::<anyhow::Result<_>>()?,
        ),
        YamlData::Mapping(m) => {
            let mut o = serde_json::Map::new();
            for (k, x) in m {
                let key = match &k.data {
                    YamlData::Value(Scalar::String(s)) => s.to_string(),
                    YamlData::Value(s) => match scalar(s) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    },
                    YamlData::Representation(s, ..) => s.to_string(),
                    _ => bail!("{}: a key must be a plain value", at()),
                };
                let v = to_json(path, x, format!("{pointer}/{}", escape(&key)), lines)?;
                if o.insert(key.clone(), v).is_some() {
                    bail!(
                        "{}:{}: `{key}` appears twice",
                        path.display(),
                        k.span.start.line()
                    );
                }
            }
            Value::Object(o)
        }
        YamlData::Tagged(_, inner) => to_json(path, inner, pointer, lines)?,
        YamlData::Alias(_) => bail!("{}: YAML aliases are not supported in specs", at()),
        YamlData::BadValue => bail!("{}: a value that is not valid YAML", at()),
    })
}

fn scalar(s: &Scalar<'_>) -> Value {
    match s {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => json!(i),
        Scalar::FloatingPoint(f) => json!(f.into_inner()),
        Scalar::String(s) => Value::String(s.to_string()),
    }
}

/// The spec's JSON Schema, compiled.
fn validator() -> anyhow::Result<jsonschema::Validator> {
    let schema: Value = serde_json::from_str(nimbus_core::SPEC_SCHEMA)?;
    jsonschema::validator_for(&schema).map_err(|e| anyhow::anyhow!("the spec schema: {e}"))
}

/// A function as the spec declares it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionSpec {
    name: String,
    runtime: String,
    handler: String,
    code: String,
    #[serde(default)]
    description: String,
    #[serde(default = "default_memory")]
    memory_mb: u32,
    #[serde(default = "default_timeout")]
    timeout_ms: u32,
    #[serde(default)]
    env: BTreeMap<String, EnvValue>,
    #[serde(default)]
    reserved_concurrency: Option<u32>,
    #[serde(default)]
    provisioned_concurrency: u32,
    #[serde(default = "yes")]
    online: bool,
    #[serde(default, rename = "async")]
    async_config: Option<Value>,
    #[serde(default)]
    publish: bool,
    #[serde(default)]
    aliases: Vec<AliasSpec>,
    #[serde(default)]
    triggers: Vec<Value>,
}

fn default_memory() -> u32 {
    128
}
fn default_timeout() -> u32 {
    3000
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum EnvValue {
    Plain(String),
    FromEnv { from_env: String },
    FromFile { from_file: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasSpec {
    name: String,
    version: Value,
    #[serde(default)]
    weights: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct MachineSpec {
    name: String,
    definition: Value,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkSpec {
    egress: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    functions: Vec<FunctionSpec>,
    #[serde(default)]
    state_machines: Vec<MachineSpec>,
    #[serde(default)]
    network: Option<NetworkSpec>,
}

/// A function ready to compare: its package built, its env resolved.
struct Function {
    spec: FunctionSpec,
    zip: Vec<u8>,
    sha256: String,
    env: BTreeMap<String, String>,
    /// The async settings with their defaults filled in.
    async_config: Value,
    /// Each trigger as the API stores it: (kind, config).
    triggers: Vec<(String, Value, Option<String>)>,
}

/// A whole spec: every file's parts, with paths resolved and packages built.
pub struct Spec {
    functions: Vec<Function>,
    machines: Vec<(MachineSpec, Value, Origin)>,
    network: Option<(NetworkSpec, Origin)>,
}

/// The spec files of `path`: the file, or each `.yaml`, `.yml` and `.json` file of
/// the directory (not its subdirectories), in name order.
fn files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))? {
        let p = e?.path();
        let spec_like = matches!(
            p.extension().and_then(|x| x.to_str()),
            Some("yaml" | "yml" | "json")
        );
        if spec_like && p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    anyhow::ensure!(
        !out.is_empty(),
        "{}: no .yaml, .yml or .json file in this directory",
        path.display()
    );
    Ok(out)
}

/// Reads, checks and resolves the spec at `path` (a file or a directory of them).
/// Every schema error is reported, each with its file and line.
pub fn load(path: &Path) -> anyhow::Result<Spec> {
    let validator = validator()?;
    let mut spec = Spec {
        functions: Vec::new(),
        machines: Vec::new(),
        network: None,
    };
    let mut seen: HashMap<String, Origin> = HashMap::new();
    for file in files(path)? {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let src = parse(&file, &text)?;
        let errors: Vec<String> = validator
            .iter_errors(&src.value)
            .map(|e| {
                let p = e.instance_path().as_str().to_string();
                let at = if p.is_empty() {
                    "the spec".into()
                } else {
                    p.clone()
                };
                format!("{}: {at}: {}", src.origin(&p), e.masked())
            })
            .collect();
        if !errors.is_empty() {
            bail!("the spec is not valid:\n  {}", errors.join("\n  "));
        }
        let parsed: FileSpec = serde_json::from_value(src.value.clone())
            .with_context(|| format!("{}: not a spec", file.display()))?;
        for (i, f) in parsed.functions.into_iter().enumerate() {
            let origin = src.origin(&format!("/functions/{i}"));
            if let Some(first) = seen.insert(format!("function {}", f.name), origin.clone()) {
                bail!("{origin}: function {} is also declared at {first}", f.name);
            }
            spec.functions.push(resolve(&src, i, f)?);
        }
        for (i, m) in parsed.state_machines.into_iter().enumerate() {
            let origin = src.origin(&format!("/state_machines/{i}"));
            if let Some(first) = seen.insert(format!("machine {}", m.name), origin.clone()) {
                bail!(
                    "{origin}: state machine {} is also declared at {first}",
                    m.name
                );
            }
            let definition = match &m.definition {
                Value::String(rel) => {
                    let p = src.dir().join(rel);
                    let at = src.origin(&format!("/state_machines/{i}/definition"));
                    let text = std::fs::read_to_string(&p)
                        .with_context(|| format!("{at}: reading {}", p.display()))?;
                    serde_json::from_str(&text)
                        .with_context(|| format!("{at}: {} is not JSON", p.display()))?
                }
                inline => inline.clone(),
            };
            spec.machines.push((m, definition, origin));
        }
        if let Some(n) = parsed.network {
            let origin = src.origin("/network");
            if let Some((_, first)) = &spec.network {
                bail!("{origin}: the network is also declared at {first}");
            }
            spec.network = Some((n, origin));
        }
    }
    Ok(spec)
}

/// Builds the package, reads the secrets, and puts triggers in the API's stored form.
fn resolve(src: &Source, i: usize, f: FunctionSpec) -> anyhow::Result<Function> {
    let at = |field: &str| src.origin(&format!("/functions/{i}/{field}"));
    let code = src.dir().join(&f.code);
    let zip = if code.is_dir() {
        crate::cli::zip_dir(&code)
            .with_context(|| format!("{}: zipping {}", at("code"), code.display()))?
    } else {
        std::fs::read(&code)
            .with_context(|| format!("{}: reading {}", at("code"), code.display()))?
    };
    let sha256 = hex::encode(sha2::Sha256::digest(&zip));
    let mut env = BTreeMap::new();
    for (k, v) in &f.env {
        let value = match v {
            EnvValue::Plain(s) => s.clone(),
            EnvValue::FromEnv { from_env } => std::env::var(from_env).map_err(|_| {
                anyhow::anyhow!(
                    "{}: env {k} comes from ${from_env}, which is not set",
                    at(&format!("env/{}", escape(k)))
                )
            })?,
            EnvValue::FromFile { from_file } => {
                let p = src.dir().join(from_file);
                let s = std::fs::read_to_string(&p).with_context(|| {
                    format!(
                        "{}: reading {}",
                        at(&format!("env/{}", escape(k))),
                        p.display()
                    )
                })?;
                s.strip_suffix('\n').unwrap_or(&s).to_string()
            }
        };
        env.insert(k.clone(), value);
    }
    let async_config: nimbus_core::model::AsyncConfig =
        serde_json::from_value(f.async_config.clone().unwrap_or_else(|| json!({})))
            .with_context(|| format!("{}: async", at("async")))?;
    async_config
        .validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", at("async")))?;
    let mut triggers = Vec::new();
    for (j, t) in f.triggers.iter().enumerate() {
        let v = events::triggers::validate(t)
            .map_err(|e| anyhow::anyhow!("{}: {e}", at(&format!("triggers/{j}"))))?;
        // Compared with what the API lists, which shows the type beside the settings.
        let mut config = v.config;
        if let Value::Object(o) = &mut config {
            o.remove("type");
        }
        triggers.push((v.kind.to_string(), config, v.route));
    }
    Ok(Function {
        async_config: serde_json::to_value(&async_config)?,
        spec: f,
        zip,
        sha256,
        env,
        triggers,
    })
}

/// One step of a plan.
#[derive(Debug, Clone)]
enum Action {
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
    action: Action,
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
    match c.call(Method::GET, path, None).await {
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

fn list(v: &Value, key: &str) -> Vec<Value> {
    v[key].as_array().cloned().unwrap_or_default()
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
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
        let (_, now) = c.call(Method::GET, "/v1/network", None).await?;
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

    let (_, all) = c.call(Method::GET, "/v1/functions", None).await?;
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
        let versions = if current.is_some() {
            list(
                &c.call(Method::GET, &format!("/v1/functions/{name}/versions"), None)
                    .await?
                    .1,
                "versions",
            )
        } else {
            Vec::new()
        };
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
        let aliases_now = if current.is_some() {
            list(
                &c.call(Method::GET, &format!("/v1/functions/{name}/aliases"), None)
                    .await?
                    .1,
                "aliases",
            )
        } else {
            Vec::new()
        };
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
                    function: name.clone(),
                    alias: a.name.clone(),
                    body,
                },
            });
        }
        for x in &aliases_now {
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
                        function: name.clone(),
                        alias,
                    },
                });
            } else {
                kept.push(format!("alias {name}/{alias}"));
            }
        }

        // Triggers, matched by what identifies them (an http path, a cron, a queue,
        // a bucket and key filter); a changed one is replaced.
        let triggers_now = if current.is_some() {
            list(
                &c.call(Method::GET, &format!("/v1/functions/{name}/triggers"), None)
                    .await?
                    .1,
                "triggers",
            )
        } else {
            Vec::new()
        };
        let settings = |t: &Value| -> Value {
            let mut o = t.as_object().cloned().unwrap_or_default();
            for k in ["id", "function", "type", "created_at", "url_path"] {
                o.remove(k);
            }
            Value::Object(o)
        };
        let mut matched = vec![false; triggers_now.len()];
        for (kind, config, _) in &f.triggers {
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
                            function: name.clone(),
                            id: t["id"].as_str().unwrap_or_default().into(),
                        },
                    });
                    later.push(Change {
                        sign: '~',
                        what: format!("trigger {name}: {key}"),
                        detail: "added back with the new settings".into(),
                        action: Action::AddTrigger {
                            function: name.clone(),
                            body: trigger_body(kind, config),
                        },
                    });
                }
                None => later.push(Change {
                    sign: '+',
                    what: format!("trigger {name}: {key}"),
                    detail: String::new(),
                    action: Action::AddTrigger {
                        function: name.clone(),
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
                        function: name.clone(),
                        id: t["id"].as_str().unwrap_or_default().into(),
                    },
                });
            } else {
                kept.push(format!("trigger {name}: {key}"));
            }
        }
    }
    changes.append(&mut later);

    // State machines, after the functions their Tasks call.
    let (_, machines) = c.call(Method::GET, "/v1/state-machines", None).await?;
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

/// Makes each change of the plan in order, waiting for each task; says each on
/// stderr as it is done.
pub async fn apply(c: &Client, plan: &Plan) -> anyhow::Result<()> {
    for ch in &plan.changes {
        let task = |v: &Value| v["task_id"].as_str().map(String::from);
        let waited = match &ch.action {
            Action::CreateFunction { body } => task(
                &c.call(Method::POST, "/v1/functions", Some(body.clone()))
                    .await?
                    .1,
            ),
            Action::UpdateCode { name, body } => task(
                &c.call(
                    Method::PUT,
                    &format!("/v1/functions/{name}/code"),
                    Some(body.clone()),
                )
                .await?
                .1,
            ),
            Action::Patch { name, body } => task(
                &c.call(
                    Method::PATCH,
                    &format!("/v1/functions/{name}"),
                    Some(body.clone()),
                )
                .await?
                .1,
            ),
            Action::Online { name, online } => {
                let verb = if *online { "online" } else { "offline" };
                c.call(
                    Method::POST,
                    &format!("/v1/functions/{name}/{verb}"),
                    Some(json!({})),
                )
                .await?;
                None
            }
            Action::Publish { name } => task(
                &c.call(
                    Method::POST,
                    &format!("/v1/functions/{name}/versions"),
                    Some(json!({"description": "nimbus apply"})),
                )
                .await?
                .1,
            ),
            Action::PutAlias {
                function,
                alias,
                body,
            } => {
                c.call(
                    Method::PUT,
                    &format!("/v1/functions/{function}/aliases/{alias}"),
                    Some(body.clone()),
                )
                .await?;
                None
            }
            Action::DeleteAlias { function, alias } => {
                c.call(
                    Method::DELETE,
                    &format!("/v1/functions/{function}/aliases/{alias}"),
                    None,
                )
                .await?;
                None
            }
            Action::AddTrigger { function, body } => {
                c.call(
                    Method::POST,
                    &format!("/v1/functions/{function}/triggers"),
                    Some(body.clone()),
                )
                .await?;
                None
            }
            Action::DeleteTrigger { function, id } => {
                c.call(
                    Method::DELETE,
                    &format!("/v1/functions/{function}/triggers/{id}"),
                    None,
                )
                .await?;
                None
            }
            Action::DeleteFunction { name } => task(
                &c.call(Method::DELETE, &format!("/v1/functions/{name}"), None)
                    .await?
                    .1,
            ),
            Action::PutNetwork { body } => {
                c.call(Method::PUT, "/v1/network", Some(body.clone()))
                    .await?;
                None
            }
            Action::CreateMachine { body } => {
                c.call(Method::POST, "/v1/state-machines", Some(body.clone()))
                    .await?;
                None
            }
            Action::UpdateMachine { name, body } => {
                c.call(
                    Method::PUT,
                    &format!("/v1/state-machines/{name}"),
                    Some(body.clone()),
                )
                .await?;
                None
            }
            Action::DeleteMachine { name } => {
                c.call(Method::DELETE, &format!("/v1/state-machines/{name}"), None)
                    .await?;
                None
            }
        };
        if let Some(id) = waited {
            c.wait_task(&id, &ch.what)
                .await
                .with_context(|| format!("{} {}", ch.sign, ch.what))?;
        }
        eprintln!("done: {} {}", ch.sign, ch.what);
    }
    Ok(())
}

/// The spec of what exists in the caller's tenant. With `dir`, each function's
/// code is unpacked into `dir/NAME/` and the spec's `code` fields point there;
/// without, they name those directories but nothing is written.
pub async fn export(c: &Client, dir: Option<&Path>) -> anyhow::Result<Value> {
    let (_, all) = c.call(Method::GET, "/v1/functions", None).await?;
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
        let (_, versions) = c
            .call(Method::GET, &format!("/v1/functions/{name}/versions"), None)
            .await?;
        if !list(&versions, "versions").is_empty() {
            out.insert("publish".into(), json!(true));
        }
        let (_, aliases) = c
            .call(Method::GET, &format!("/v1/functions/{name}/aliases"), None)
            .await?;
        let aliases: Vec<Value> = list(&aliases, "aliases")
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
        let (_, triggers) = c
            .call(Method::GET, &format!("/v1/functions/{name}/triggers"), None)
            .await?;
        let triggers: Vec<Value> = list(&triggers, "triggers")
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
    let (_, machines) = c.call(Method::GET, "/v1/state-machines", None).await?;
    let mut out = Vec::new();
    for m in list(&machines, "state_machines") {
        let name = m["name"].as_str().unwrap_or_default();
        let (_, full) = c
            .call(Method::GET, &format!("/v1/state-machines/{name}"), None)
            .await?;
        out.push(json!({"name": name, "definition": full["state_machine"]["definition"]}));
    }
    if !out.is_empty() {
        spec.insert("state_machines".into(), json!(out));
    }
    let (_, network) = c.call(Method::GET, "/v1/network", None).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> Source {
        parse(Path::new("nimbus.yaml"), text).unwrap()
    }

    #[test]
    fn every_node_has_its_line() {
        let s = source("functions:\n  - name: a\n    memory_mb: 128\n  - name: b\n");
        assert_eq!(s.value["functions"][1]["name"], "b");
        assert_eq!(s.origin("/functions/0/memory_mb").line, 3);
        assert_eq!(s.origin("/functions/1").line, 4);
        // A node that is not there: its nearest ancestor.
        assert_eq!(s.origin("/functions/1/runtime/x").line, 4);
    }

    #[test]
    fn scalars_keep_their_yaml_types() {
        let s = source("a: 1\nb: 0.5\nc: true\nd: ~\ne: '2'\nf: \"x\"\n2: y\n");
        assert_eq!(
            s.value,
            json!({"a": 1, "b": 0.5, "c": true, "d": null, "e": "2", "f": "x", "2": "y"})
        );
    }

    #[test]
    fn a_repeated_key_and_bad_yaml_name_the_line() {
        let e = parse(Path::new("s.yaml"), "a: 1\nb: 2\na: 3\n").unwrap_err();
        assert!(e.to_string().starts_with("s.yaml:3: "), "{e}");
        assert!(e.to_string().contains("duplicated key"), "{e}");
        let e = parse(Path::new("s.yaml"), "a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.to_string().starts_with("s.yaml:"), "{e}");
    }

    #[test]
    fn schema_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nimbus.yaml");
        std::fs::write(
            &path,
            "functions:\n  - name: a\n    runtime: python3\n    handler: index.handler\n    code: ./a\n    memory_mb: 9000\n  - name: 'bad name'\n    runtime: cobol\n",
        )
        .unwrap();
        let e = load(&path).err().unwrap().to_string();
        let p = path.display();
        assert!(e.contains(&format!("{p}:6: /functions/0/memory_mb")), "{e}");
        assert!(e.contains(&format!("{p}:7: /functions/1/name")), "{e}");
        assert!(e.contains(&format!("{p}:8: /functions/1/runtime")), "{e}");
        // The missing `handler` and `code` are the item's: its first line.
        assert!(
            e.contains(&format!("{p}:7: /functions/1: \"handler\" is a required")),
            "{e}"
        );
    }

    #[test]
    fn the_published_schema_is_valid_json_schema() {
        validator().unwrap();
    }
}
