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
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use saphyr::{LoadableYamlNode as _, MarkedYaml, Scalar, YamlData};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest as _;

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
    #[serde(default = "latest")]
    provisioned_qualifier: String,
    #[serde(default)]
    scheduled_warmups: Vec<Value>,
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
fn latest() -> String {
    "$LATEST".into()
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
    #[serde(default)]
    buckets: Vec<String>,
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
    triggers: Vec<(String, Value)>,
}

/// A whole spec: every file's parts, with paths resolved and packages built.
pub struct Spec {
    functions: Vec<Function>,
    machines: Vec<(MachineSpec, Value, Origin)>,
    network: Option<(NetworkSpec, Origin)>,
    /// Buckets, each once (a name in two files is one bucket).
    buckets: Vec<String>,
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
        buckets: Vec::new(),
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
        for b in parsed.buckets {
            if !spec.buckets.contains(&b) {
                spec.buckets.push(b);
            }
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
        triggers.push((v.kind.to_string(), config));
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

mod apply;
mod export;
mod plan;

pub use self::apply::apply;
pub use self::export::export;
pub use self::plan::{Change, Plan, plan};

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
