//! The control-plane CLI: a thin client of the REST API.
//!
//! It reads `NIMBUS_URL` and `NIMBUS_TOKEN`, or `~/.config/nimbus/config.toml`
//! (`url = "…"`, `token = "…"`); flags override both.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

/// What the API answered when it did not do what was asked. The CLI's exit code
/// tells the kinds apart ([`exit_code`]).
#[derive(Debug, thiserror::Error)]
#[error("{status} {code}: {message}{}", hint(*status))]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// The contract's error code.
    pub code: String,
    /// The contract's message.
    pub message: String,
    /// `Retry-After`, in seconds, when the API sent one.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// The error an answer's contract body describes.
    fn from_body(status: u16, body: &Value, retry_after: Option<u64>) -> ApiError {
        ApiError {
            status,
            code: body["error"]["code"]
                .as_str()
                .unwrap_or("Error")
                .to_string(),
            message: body["error"]["message"].as_str().unwrap_or("").to_string(),
            retry_after,
        }
    }
}

/// What to do next, for the statuses where the message alone does not say.
fn hint(status: u16) -> &'static str {
    match status {
        401 => {
            "\nhint: run `nimbus login` or set NIMBUS_TOKEN to an API key; \
             `nimbus up` printed the admin key on its first start"
        }
        403 => "\nhint: this key's role may not do this; ask a tenant owner or an admin",
        _ => "",
    }
}

/// The function ran and raised (or timed out): the call failed.
#[derive(Debug, thiserror::Error)]
#[error("the function failed ({kind}); its error is printed above")]
pub struct FunctionFailed {
    /// `Handled` or `Unhandled`.
    pub kind: String,
}

/// The process exit code for an error: 3 when what was named does not exist, 4 when
/// the request was refused (invalid, unauthorized, conflicting, over a limit), 1 for
/// every other failure (the function raised, a task failed, the platform failed or
/// could not be reached). Clap's usage errors exit with 2.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    match e.downcast_ref::<ApiError>() {
        Some(a) if a.status == 404 => 3,
        Some(a) if (400..500).contains(&a.status) => 4,
        _ => 1,
    }
}

/// A failed request, said with what to check.
fn unreachable(url: &str, e: reqwest::Error) -> anyhow::Error {
    if e.is_connect() {
        anyhow::anyhow!(
            "cannot reach Nimbus at {url}: is it running (`nimbus up`)? To use another, \
             run `nimbus login --url URL` or set NIMBUS_URL ({e})"
        )
    } else {
        anyhow::Error::new(e).context(format!("calling {url}"))
    }
}

/// The CLI's config file: `$NIMBUS_CONFIG`, else `~/.config/nimbus/config.toml`
/// (None without a HOME).
pub fn config_path() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("NIMBUS_CONFIG") {
        return Some(p.into());
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".config/nimbus/config.toml"))
}

/// Where and as whom the CLI talks.
#[derive(Debug, Clone)]
pub struct Client {
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// API key or JWT.
    pub token: Option<String>,
    /// The HTTP client (connections are reused).
    http: reqwest::Client,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    url: Option<String>,
    token: Option<String>,
}

impl Client {
    /// A client from flags, else the environment, else the config file.
    pub fn resolve(url: Option<String>, token: Option<String>) -> anyhow::Result<Client> {
        let path = config_path();
        let file: FileConfig = path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|s| toml::from_str(&s))
            .transpose()
            .with_context(|| {
                format!(
                    "reading {}",
                    path.as_deref().unwrap_or(Path::new("")).display()
                )
            })?
            .unwrap_or_default();
        let url = url
            .or_else(|| std::env::var("NIMBUS_URL").ok())
            .or(file.url)
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let token = token
            .or_else(|| std::env::var("NIMBUS_TOKEN").ok())
            .or(file.token);
        Ok(Client::new(url, token))
    }

    /// The region catalogue of this endpoint: (name, url, zones) of each region.
    pub async fn regions(&self) -> anyhow::Result<Vec<(String, String, Vec<String>)>> {
        let (_, r) = self.call(reqwest::Method::GET, "/v1/regions", None).await?;
        Ok(r["regions"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                let zones = r["zones"]
                    .as_array()
                    .map(|z| {
                        z.iter()
                            .filter_map(|z| z.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                (s("name"), s("url"), zones)
            })
            .collect())
    }

    /// The same credentials at the endpoint of `region`, from the catalogue.
    pub async fn in_region(&self, region: &str) -> anyhow::Result<Client> {
        let regions = self.regions().await?;
        match regions.iter().find(|(name, _, _)| name == region) {
            Some((_, url, _)) => Ok(Client {
                url: url.trim_end_matches('/').to_string(),
                ..self.clone()
            }),
            None => anyhow::bail!(
                "no region '{region}' in the catalogue of {}: it has {}",
                self.url,
                regions
                    .iter()
                    .map(|r| r.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// A client for `url` with `token`.
    pub fn new(url: String, token: Option<String>) -> Client {
        Client {
            url: url.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("HTTP client"),
        }
    }

    /// Sends a request; a non-2xx answer becomes an error with the API's message.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        self.call_with(method, path, body, &[]).await
    }

    /// [`Client::call_with`], waiting out `429`s as the API's `Retry-After` says
    /// (1 s when it says nothing), for up to a minute in all.
    pub async fn call_patiently(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, Value)> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match self
                .call_with(method.clone(), path, body.clone(), headers)
                .await
            {
                Err(e) => match e.downcast_ref::<ApiError>() {
                    Some(a) if a.status == 429 && std::time::Instant::now() < deadline => {
                        let wait = Duration::from_secs(a.retry_after.unwrap_or(1).clamp(1, 10));
                        tokio::time::sleep(wait).await;
                    }
                    _ => return Err(e),
                },
                ok => return ok,
            }
        }
    }

    /// [`Client::call`] with extra request headers.
    pub async fn call_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, Value)> {
        let (status, _, v) = self.send(self.request(method, path, body, headers)).await?;
        Ok((status, v))
    }

    /// A request to `path` with the client's credentials, `headers` and a JSON body.
    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req
    }

    /// Sends a request; an error answer becomes an [`ApiError`].
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<(u16, reqwest::header::HeaderMap, Value)> {
        let resp = req.send().await.map_err(|e| unreachable(&self.url, e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await?;
        let v: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status >= 400 {
            let retry_after = headers
                .get("retry-after")
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.trim().parse().ok());
            return Err(ApiError::from_body(status, &v, retry_after).into());
        }
        Ok((status, headers, v))
    }

    /// PUTs raw bytes to `path` (an object).
    pub async fn put_bytes(&self, path: &str, bytes: Vec<u8>) -> anyhow::Result<Value> {
        let req = self
            .request(reqwest::Method::PUT, path, None, &[])
            .header("content-type", "application/octet-stream")
            .body(bytes);
        Ok(self.send(req).await?.2)
    }

    /// GETs `path` as raw bytes (e.g. a code package).
    pub async fn bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let resp = self
            .request(reqwest::Method::GET, path, None, &[])
            .send()
            .await
            .map_err(|e| unreachable(&self.url, e))?;
        let status = resp.status().as_u16();
        if status >= 400 {
            let v: Value = resp.json().await.unwrap_or_default();
            return Err(ApiError::from_body(status, &v, None).into());
        }
        Ok(resp.bytes().await?.to_vec())
    }

    /// Invokes at `path` (`sync` or `async`) and returns the answer, with the
    /// function's error kind (`Handled`, `Unhandled`) if it raised.
    pub async fn invoke(
        &self,
        path: &str,
        event: Value,
        kind: &str,
    ) -> anyhow::Result<(Value, Option<String>)> {
        let req = self.request(
            reqwest::Method::POST,
            path,
            Some(event),
            &[("x-nimbus-invocation-type", kind)],
        );
        let (_, headers, v) = self.send(req).await?;
        let failed = headers
            .get("x-nimbus-function-error")
            .and_then(|h| h.to_str().ok())
            .map(str::to_string);
        Ok((v, failed))
    }

    /// Reads server-sent events from `path` until the server ends the stream, calling
    /// `on_event` with each event's data (JSON).
    pub async fn follow(&self, path: &str, mut on_event: impl FnMut(&Value)) -> anyhow::Result<()> {
        let req = self.request(
            reqwest::Method::GET,
            path,
            None,
            &[("accept", "text/event-stream")],
        );
        let mut resp = req.send().await.map_err(|e| unreachable(&self.url, e))?;
        let status = resp.status().as_u16();
        if status >= 400 {
            let v: Value = resp.json().await.unwrap_or_default();
            return Err(ApiError::from_body(status, &v, None).into());
        }
        let mut buf = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            buf.extend_from_slice(&chunk);
            // Events end with a blank line; `data:` lines carry the payload.
            while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = buf.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&event);
                let data: String = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect::<Vec<_>>()
                    .join("\n");
                if let Ok(v) = serde_json::from_str::<Value>(&data) {
                    on_event(&v);
                }
            }
        }
        Ok(())
    }

    /// Polls a task until it finishes, with a spinner on a terminal.
    pub async fn wait_task(&self, task_id: &str, what: &str) -> anyhow::Result<Value> {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(format!("{what}: task {task_id}"));
        bar.enable_steady_tick(Duration::from_millis(100));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            // A long poll of 2 s: the answer comes as the task ends, and the spinner
            // shows the running step at least that often.
            let asked = tokio::time::Instant::now();
            let (_, t) = self
                .call_patiently(
                    reqwest::Method::GET,
                    &format!("/v1/tasks/{task_id}?wait=2"),
                    None,
                    &[],
                )
                .await?;
            let state = t["state"].as_str().unwrap_or("");
            if let Some(step) = t["steps"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["state"] == "Running"))
            {
                bar.set_message(format!(
                    "{what}: {}.{}",
                    step["service"].as_str().unwrap_or(""),
                    step["action"].as_str().unwrap_or("")
                ));
            }
            match state {
                "Succeeded" => {
                    bar.finish_and_clear();
                    return Ok(t);
                }
                "Failed" => {
                    bar.finish_and_clear();
                    anyhow::bail!(
                        "{what} failed: {}",
                        t["error"].as_str().unwrap_or("unknown error")
                    );
                }
                _ => {}
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "task {task_id} did not finish in 5 minutes"
            );
            // A server that answered at once (its waits are all taken) is polled.
            if asked.elapsed() < Duration::from_millis(150) {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
    }
}

/// Zips a directory (files only, relative paths, mode bits kept).
pub fn zip_dir(dir: &Path) -> anyhow::Result<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.sort();
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut w = zip::ZipWriter::new(&mut buf);
    for rel in files {
        let path = dir.join(&rel);
        let mode = std::fs::metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .permissions()
            .mode();
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(mode & 0o777);
        w.start_file(rel.replace('\\', "/"), opts)?;
        w.write_all(&std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?)?;
    }
    w.finish()?;
    Ok(buf.into_inner())
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let path = entry.path();
        if ty.is_dir() {
            collect(root, &path, out)?;
        } else if ty.is_file() {
            out.push(path.strip_prefix(root)?.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// Options of `nimbus fn deploy`.
#[derive(Clone)]
pub struct Deploy {
    /// The directory to zip.
    pub dir: std::path::PathBuf,
    /// Function name (default: the directory's name).
    pub name: Option<String>,
    /// Runtime.
    pub runtime: String,
    /// Handler.
    pub handler: String,
    /// Memory, MB.
    pub memory_mb: Option<u32>,
    /// Timeout, ms.
    pub timeout_ms: Option<u32>,
    /// Environment, K=V.
    pub env: Vec<String>,
    /// Return after 202 without waiting.
    pub no_wait: bool,
    /// Send the package's digest instead of the package: this region has it, or
    /// fetches it once from this other region, where it was deployed.
    pub from_region: Option<String>,
}

/// [`deploy`] to each of `regions` (names from the catalogue): the package is
/// uploaded to the first; every other region, all at once, is sent its digest and
/// copies it from the first, region to region (with `no_wait`, each is uploaded to:
/// the first may not have stored it yet). The report has each region's result or
/// error; the count is of the regions that failed.
pub async fn deploy_regions(
    c: &Client,
    d: Deploy,
    regions: &[String],
) -> anyhow::Result<(Value, usize)> {
    let mut clients = Vec::with_capacity(regions.len());
    for r in regions {
        clients.push((r.clone(), c.in_region(r).await?));
    }
    let mut report = serde_json::Map::new();
    let mut failed = 0;
    let mut results = Vec::with_capacity(clients.len());
    let Some(((first, first_client), rest)) = clients.split_first() else {
        return Ok((json!({ "regions": report }), 0));
    };
    let uploaded = deploy(first_client, d.clone()).await;
    let copy_from = (uploaded.is_ok() && !d.no_wait).then(|| first.clone());
    results.push((first.clone(), uploaded));
    let runs = rest.iter().map(|(r, rc)| {
        let d = Deploy {
            from_region: copy_from.clone(),
            ..d.clone()
        };
        async move { (r.clone(), deploy(rc, d).await) }
    });
    results.extend(futures::future::join_all(runs).await);
    for (region, result) in results {
        let v = match result {
            Ok(v) => v,
            Err(e) => {
                failed += 1;
                json!({"error": e.to_string()})
            }
        };
        report.insert(region, v);
    }
    Ok((json!({ "regions": report }), failed))
}

/// `--env K=V` flags as a map; an empty flag (`--env ''`) adds nothing, so that it
/// alone clears the environment.
pub fn parse_env(kvs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for kv in kvs.iter().filter(|kv| !kv.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env {kv}: expected K=V"))?;
        env.insert(k.to_string(), v.to_string());
    }
    Ok(env)
}

/// Creates the function, or updates its code (and config) if it exists.
pub async fn deploy(c: &Client, d: Deploy) -> anyhow::Result<Value> {
    let name = match d.name {
        Some(n) => n,
        None => d
            .dir
            .canonicalize()
            .with_context(|| format!("{}", d.dir.display()))?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .context("cannot name the function after this directory; pass --name")?,
    };
    let zip = zip_dir(&d.dir)?;
    let code = match &d.from_region {
        Some(region) => {
            use sha2::Digest as _;
            json!({"sha256": hex::encode(sha2::Sha256::digest(&zip)), "from_region": region})
        }
        None => json!({"zip_base64": base64::engine::general_purpose::STANDARD.encode(&zip)}),
    };
    let env = parse_env(&d.env)?;
    let exists = match c
        .call(reqwest::Method::GET, &format!("/v1/functions/{name}"), None)
        .await
    {
        Ok(_) => true,
        Err(e)
            if e.downcast_ref::<ApiError>()
                .is_some_and(|a| a.status == 404) =>
        {
            false
        }
        Err(e) => return Err(e),
    };
    let mut tasks = Vec::new();
    if exists {
        // The package is checked against the runtime and handler it comes with.
        let mut update = code.clone();
        update["runtime"] = json!(d.runtime);
        update["handler"] = json!(d.handler);
        let (_, r) = c
            .call(
                reqwest::Method::PUT,
                &format!("/v1/functions/{name}/code"),
                Some(update),
            )
            .await?;
        tasks.push((
            "updating code",
            r["task_id"].as_str().unwrap_or_default().to_string(),
        ));
        let mut patch = serde_json::Map::new();
        if let Some(m) = d.memory_mb {
            patch.insert("memory_mb".into(), json!(m));
        }
        if let Some(t) = d.timeout_ms {
            patch.insert("timeout_ms".into(), json!(t));
        }
        if !env.is_empty() {
            patch.insert("env".into(), json!(env));
        }
        if !patch.is_empty() {
            if !d.no_wait {
                c.wait_task(&tasks[0].1, tasks[0].0).await?;
            }
            let (_, r) = c
                .call(
                    reqwest::Method::PATCH,
                    &format!("/v1/functions/{name}"),
                    Some(Value::Object(patch)),
                )
                .await?;
            tasks.push((
                "updating config",
                r["task_id"].as_str().unwrap_or_default().to_string(),
            ));
        }
    } else {
        let mut body = json!({"name": name, "runtime": d.runtime, "handler": d.handler, "env": env, "code": code});
        if let Some(m) = d.memory_mb {
            body["memory_mb"] = json!(m);
        }
        if let Some(t) = d.timeout_ms {
            body["timeout_ms"] = json!(t);
        }
        let (_, r) = c
            .call(reqwest::Method::POST, "/v1/functions", Some(body))
            .await?;
        tasks.push((
            "creating",
            r["task_id"].as_str().unwrap_or_default().to_string(),
        ));
    }
    if !d.no_wait {
        let (what, id) = tasks.last().expect("one task");
        c.wait_task(id, what).await?;
    }
    let (_, f) = c
        .call(reqwest::Method::GET, &format!("/v1/functions/{name}"), None)
        .await?;
    Ok(json!({"function": f["function"], "tasks": tasks.iter().map(|t| &t.1).collect::<Vec<_>>()}))
}
