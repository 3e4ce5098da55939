//! The CLI's commands beyond one call each: `apply`, `export`, `login`, `fn init`,
//! buckets, queues, network, tenant limits, and following an invocation.

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use nimbus::cli::Client;
use nimbus::output::{self, Format};
use nimbus::spec;
use reqwest::Method;
use serde_json::{Value, json};

use crate::args::{BucketCmd, FnCmd, NetworkCmd, QueueCmd};
use nimbus::output::{print, show};

/// `nimbus apply -f PATH [--dry-run] [--prune]`.
pub(crate) async fn apply(
    c: &Client,
    path: &Path,
    dry_run: bool,
    prune: bool,
    format: Format,
) -> anyhow::Result<()> {
    let spec = spec::load(path)?;
    let plan = spec::plan(c, &spec, prune).await?;
    match format {
        Format::Table => print!("{}", plan.render()),
        f => output::print_as(f, &plan.to_json(), &[]),
    }
    if dry_run || plan.changes.is_empty() {
        if dry_run && !plan.changes.is_empty() {
            eprintln!("dry run: nothing was changed");
        }
        return Ok(());
    }
    spec::apply(c, &plan).await?;
    eprintln!("applied {} change(s)", plan.changes.len());
    Ok(())
}

/// `nimbus export [-d DIR]`.
pub(crate) async fn export(c: &Client, dir: Option<&Path>, format: Format) -> anyhow::Result<()> {
    if let Some(d) = dir {
        std::fs::create_dir_all(d).with_context(|| format!("making {}", d.display()))?;
    }
    let spec = spec::export(c, dir).await?;
    let text = match format {
        Format::Json => serde_json::to_string_pretty(&spec)? + "\n",
        _ => output::to_yaml(&spec),
    };
    match dir {
        Some(d) => {
            let name = if format == Format::Json {
                "nimbus.json"
            } else {
                "nimbus.yaml"
            };
            let p = d.join(name);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
            eprintln!(
                "wrote {} and the code of each function beside it; `nimbus apply -f {}` makes the same again",
                p.display(),
                d.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// `nimbus login [--url U] [--key K]`: checks the key against the endpoint, then
/// saves both (mode 0600).
pub(crate) async fn login(c: &Client, key: Option<String>) -> anyhow::Result<()> {
    let key = match key.or_else(|| c.token.clone()) {
        Some(k) => k,
        None => {
            if std::io::stdin().is_terminal() {
                eprint!("API key for {}: ", c.url);
                std::io::stderr().flush()?;
            }
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim().to_string()
        }
    };
    anyhow::ensure!(
        !key.is_empty(),
        "no API key given: pass --key or type it when asked"
    );
    let checked = Client::new(c.url.clone(), Some(key.clone()));
    let (_, who) = checked
        .call(Method::GET, "/v1/whoami", None)
        .await
        .context("the key was not accepted")?;
    let path = nimbus::cli::config_path()
        .context("no HOME: set NIMBUS_CONFIG to the config file's path")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
    }
    let text = format!(
        "# Written by `nimbus login`. NIMBUS_URL, NIMBUS_TOKEN and flags override it.\nurl = {}\ntoken = {}\n",
        toml_string(&c.url),
        toml_string(&key)
    );
    nimbus::write_private(&path, &text)?;
    print(&json!({
        "url": c.url,
        "tenant": who["tenant"],
        "role": who["role"],
        "config": path.display().to_string(),
    }));
    Ok(())
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `nimbus fn init NAME --runtime R [--dir D]`.
pub(crate) fn init(name: &str, runtime: &str, dir: Option<PathBuf>) -> anyhow::Result<()> {
    nimbus_core::model::validate_name("the function name", name)?;
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() {
        let empty = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_none();
        anyhow::ensure!(empty, "{} exists and is not empty", dir.display());
    }
    let (files, handler): (Vec<(&str, String, u32)>, &str) = match runtime {
        "python3" => (
            vec![(
                "index.py",
                format!(
                    "import json\n\n\ndef handler(event, context):\n    \"\"\"Called once per invocation with the event (parsed JSON).\"\"\"\n    print(\"{name} got\", json.dumps(event))\n    return {{\"hello\": event.get(\"name\", \"world\"), \"request_id\": context.aws_request_id}}\n"
                ),
                0o644,
            )],
            "index.handler",
        ),
        "nodejs" => (
            vec![(
                "index.js",
                format!(
                    "// Called once per invocation with the event (parsed JSON).\nexports.handler = async (event, context) => {{\n  console.log(\"{name} got\", JSON.stringify(event));\n  return {{ hello: event.name || \"world\", request_id: context.awsRequestId }};\n}};\n"
                ),
                0o644,
            )],
            "index.handler",
        ),
        "provided" => (
            vec![(
                "bootstrap",
                "#!/bin/sh\n# A custom runtime: fetch the next event from the runtime API, answer it, repeat.\nset -eu\napi=\"http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation\"\nwhile true; do\n  headers=$(mktemp)\n  event=$(curl -sS -D \"$headers\" \"$api/next\")\n  id=$(grep -i '^lambda-runtime-aws-request-id:' \"$headers\" | cut -d' ' -f2 | tr -d '\\r')\n  rm -f \"$headers\"\n  echo \"got $event\" >&2\n  curl -sS -X POST \"$api/$id/response\" -d \"{\\\"echo\\\": $event}\" >/dev/null\ndone\n".to_string(),
                0o755,
            )],
            "bootstrap",
        ),
        "wasm" => anyhow::bail!(
            "fn init writes python3, nodejs and provided functions; a wasm function is a WASI \
             module you build (e.g. `cargo build --target wasm32-wasip1`), deployed with \
             --runtime wasm --handler MODULE.wasm"
        ),
        other => anyhow::bail!("--runtime {other}: expected python3, nodejs or provided"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("making {}", dir.display()))?;
    for (file, text, mode) in files {
        use std::os::unix::fs::PermissionsExt as _;
        let p = dir.join(file);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
    }
    let event = dir.join("event.json");
    std::fs::write(&event, "{\"name\": \"nimbus\"}\n")
        .with_context(|| format!("writing {}", event.display()))?;
    let d = dir.display();
    eprintln!(
        "wrote {d}. Next:\n  nimbus fn deploy {d} --name {name} --runtime {runtime} --handler {handler}\n  nimbus fn invoke {name} --data \"$(cat {d}/event.json)\""
    );
    print(&json!({"function": name, "runtime": runtime, "handler": handler, "dir": d.to_string()}));
    Ok(())
}

/// `nimbus tenant limits NAME [--set K=V]…`.
pub(crate) async fn limits(c: &Client, name: &str, set: &[String]) -> anyhow::Result<()> {
    let (_, all) = c.call(Method::GET, "/v1/tenants", None).await?;
    let tenant = all["tenants"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == name))
        .cloned()
        .ok_or_else(|| nimbus::cli::ApiError {
            status: 404,
            code: "TenantNotFound".into(),
            message: format!("no tenant {name}"),
            retry_after: None,
        })?;
    let mut limits = tenant["limits"].as_object().cloned().unwrap_or_default();
    if set.is_empty() {
        print(&Value::Object(limits));
        return Ok(());
    }
    for kv in set {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--set {kv}: expected KEY=VALUE"))?;
        let value = none_or_number(&format!("--set {k}"), v)?;
        limits.insert(k.to_string(), value);
    }
    let (_, r) = c
        .call(
            Method::PUT,
            &format!("/v1/tenants/{name}/limits"),
            Some(Value::Object(limits)),
        )
        .await?;
    print(&r["tenant"]["limits"]);
    Ok(())
}

/// `nimbus bucket …`.
pub(crate) async fn bucket(c: &Client, cmd: BucketCmd) -> anyhow::Result<()> {
    match cmd {
        BucketCmd::Create { bucket } => {
            let (status, v) = c
                .call(Method::PUT, &format!("/v1/buckets/{bucket}"), None)
                .await?;
            let mut v = if v.is_null() { json!({}) } else { v };
            v["created"] = json!(status == 201);
            print(&v);
        }
        BucketCmd::List => show(&c.call(Method::GET, "/v1/buckets", None).await?.1, &[]),
        BucketCmd::Put { bucket, key, file } => {
            let bytes = if file.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::stdin().read_to_end(&mut b)?;
                b
            } else {
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let size = bytes.len();
            c.put_bytes(&format!("/v1/buckets/{bucket}/objects/{key}"), bytes)
                .await?;
            print(&json!({"bucket": bucket, "key": key, "size": size}));
        }
        BucketCmd::Get { bucket, key, to } => {
            let bytes = c
                .bytes(&format!("/v1/buckets/{bucket}/objects/{key}"))
                .await?;
            match to {
                Some(p) => std::fs::write(&p, &bytes)
                    .with_context(|| format!("writing {}", p.display()))?,
                None => std::io::stdout().write_all(&bytes)?,
            }
        }
        BucketCmd::Delete { bucket, key } => {
            c.call(
                Method::DELETE,
                &format!("/v1/buckets/{bucket}/objects/{key}"),
                None,
            )
            .await?;
            print(&json!({"deleted": key, "bucket": bucket}));
        }
    }
    Ok(())
}

/// `nimbus queue …`.
pub(crate) async fn queue(c: &Client, cmd: QueueCmd) -> anyhow::Result<()> {
    match cmd {
        QueueCmd::Send { queue, data } => {
            let message: Value = serde_json::from_str(&data).context("--data is not JSON")?;
            let (_, v) = c
                .call(
                    Method::POST,
                    &format!("/v1/queues/{queue}/messages"),
                    Some(message),
                )
                .await?;
            print(&v);
        }
    }
    Ok(())
}

/// `nimbus network …`.
pub(crate) async fn network(c: &Client, cmd: NetworkCmd) -> anyhow::Result<()> {
    let v = match cmd {
        NetworkCmd::Get => c.call(Method::GET, "/v1/network", None).await?.1,
        NetworkCmd::Set { egress } => {
            c.call(Method::PUT, "/v1/network", Some(json!({"egress": egress})))
                .await?
                .1
        }
    };
    print(&v["network"]);
    Ok(())
}

/// Follows an asynchronous invocation over its watch websocket, saying each state on
/// stderr; returns the invocation once it has ended.
pub(crate) async fn watch(c: &Client, id: &str) -> anyhow::Result<Value> {
    use futures::StreamExt as _;
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};
    let ws_url = format!(
        "{}/v1/invocations/{id}/watch",
        c.url
            .replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1)
    );
    let mut req = ws_url.as_str().into_client_request()?;
    if let Some(t) = &c.token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse()?);
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .with_context(|| format!("watching invocation {id}"))?;
    let mut last = Value::Null;
    let mut said = String::new();
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg? else {
            continue;
        };
        let v: Value = serde_json::from_str(&text)?;
        let state = v["state"].as_str().unwrap_or("").to_string();
        if state != said {
            eprintln!(
                "{id}: {state}{}",
                match v["attempts"].as_u64() {
                    Some(n) if n > 0 => format!(" (attempt {n})"),
                    _ => String::new(),
                }
            );
            said = state;
        }
        last = v;
    }
    anyhow::ensure!(
        !last.is_null(),
        "the watch of {id} closed before saying anything"
    );
    Ok(last)
}

/// `nimbus fn config` and `nimbus fn async`: change only what is given, and wait.
pub(crate) async fn configure(c: &Client, cmd: FnCmd) -> anyhow::Result<()> {
    match cmd {
        FnCmd::Config {
            name,
            memory,
            timeout,
            env,
            reserved,
            provisioned,
            description,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(m) = memory {
                body.insert("memory_mb".into(), json!(m));
            }
            if let Some(t) = timeout {
                body.insert("timeout_ms".into(), json!(t));
            }
            if !env.is_empty() {
                body.insert("env".into(), json!(nimbus::cli::parse_env(&env)?));
            }
            if let Some(r) = reserved {
                body.insert(
                    "reserved_concurrency".into(),
                    none_or_number("--reserved", &r)?,
                );
            }
            if let Some(p) = provisioned {
                body.insert("provisioned_concurrency".into(), json!(p));
            }
            if let Some(d) = description {
                body.insert("description".into(), json!(d));
            }
            anyhow::ensure!(
                !body.is_empty(),
                "nothing to change: give --memory, --timeout, --env, --reserved, --provisioned or --description"
            );
            let path = format!("/v1/functions/{name}");
            let (_, r) = c
                .call(Method::PATCH, &path, Some(Value::Object(body)))
                .await?;
            c.wait_task(r["task_id"].as_str().unwrap_or_default(), "configuring")
                .await?;
            print(&c.call(Method::GET, &path, None).await?.1["function"]);
        }
        FnCmd::Async {
            name,
            max_retries,
            retry_base_delay_ms,
            max_event_age_s,
            on_success,
            on_failure,
            callback_url,
        } => {
            let path = format!("/v1/functions/{name}");
            let (_, f) = c.call(Method::GET, &path, None).await?;
            let mut settings = match &f["function"]["async"] {
                Value::Object(o) => o.clone(),
                _ => serde_json::Map::new(),
            };
            let before = settings.clone();
            for (k, v) in [
                ("max_retries", max_retries.map(|x| json!(x))),
                ("retry_base_delay_ms", retry_base_delay_ms.map(|x| json!(x))),
                ("max_event_age_s", max_event_age_s.map(|x| json!(x))),
            ] {
                if let Some(v) = v {
                    settings.insert(k.into(), v);
                }
            }
            for (k, v) in [("on_success", on_success), ("on_failure", on_failure)] {
                match v.as_deref() {
                    None => {}
                    Some("none") => {
                        settings.remove(k);
                    }
                    Some(f) => {
                        settings.insert(k.into(), json!({"function": f}));
                    }
                }
            }
            match callback_url.as_deref() {
                None => {}
                Some("none") => {
                    settings.remove("callback_url");
                }
                Some(u) => {
                    settings.insert("callback_url".into(), json!(u));
                }
            }
            if settings != before {
                let (_, r) = c
                    .call(Method::PATCH, &path, Some(json!({"async": settings})))
                    .await?;
                c.wait_task(r["task_id"].as_str().unwrap_or_default(), "configuring")
                    .await?;
            }
            print(&Value::Object(settings));
        }
        _ => unreachable!("only config and async are passed here"),
    }
    Ok(())
}

/// `none` as JSON null, else a whole number.
fn none_or_number(flag: &str, s: &str) -> anyhow::Result<Value> {
    if s == "none" {
        return Ok(Value::Null);
    }
    s.parse::<u64>()
        .map(|n| json!(n))
        .map_err(|_| anyhow::anyhow!("{flag} {s}: expected a whole number or `none`"))
}
