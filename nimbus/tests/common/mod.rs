//! Shared test helpers: an API client and code packages.
#![allow(dead_code)]

pub mod cli;
pub mod cluster;
pub mod otlp;
pub mod prom;

use std::time::Duration;

use base64::Engine as _;
use reqwest::Method;
use serde_json::{Value, json};

/// A gRPC channel whose calls carry the region's internal token.
pub type Authed = tonic::service::interceptor::InterceptedService<
    tonic::transport::Channel,
    proto::auth::AddToken,
>;

fn authed(url: &str, secrets_key: Option<&str>) -> anyhow::Result<Authed> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    let token = secrets_key.map(proto::auth::token_from_key);
    Ok(tonic::service::interceptor::InterceptedService::new(
        channel,
        proto::auth::AddToken::new(token.as_deref()),
    ))
}

/// The registry at `url`, with the token of the region whose key is `secrets_key`.
pub async fn registry_client(
    url: &str,
    secrets_key: Option<&str>,
) -> anyhow::Result<proto::node::registry_client::RegistryClient<Authed>> {
    Ok(proto::node::registry_client::RegistryClient::new(authed(
        url,
        secrets_key,
    )?))
}

/// The node at `addr` (host:port), with the region's token.
pub async fn node_client(
    addr: &str,
    secrets_key: &str,
) -> anyhow::Result<proto::node::node_client::NodeClient<Authed>> {
    Ok(proto::node::node_client::NodeClient::new(authed(
        &format!("http://{addr}"),
        Some(secrets_key),
    )?))
}

/// A response: status, request id header, and JSON body (Null if empty).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub request_id: Option<String>,
    pub retry_after: Option<String>,
    pub body: Value,
}

impl Resp {
    /// Asserts the contract's error shape and returns the code.
    pub fn error_code(&self) -> &str {
        let e = &self.body["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error without message: {:?}",
            self
        );
        assert!(
            e["request_id"].as_str().is_some_and(|m| !m.is_empty()),
            "error without request_id: {:?}",
            self
        );
        assert_eq!(
            e["request_id"].as_str(),
            self.request_id.as_deref(),
            "request ids differ"
        );
        e["code"].as_str().expect("error code")
    }
}

/// A minimal API client.
#[derive(Clone)]
pub struct Api {
    pub url: String,
    pub token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    pub fn new(url: &str, token: Option<&str>) -> Api {
        Api {
            url: url.trim_end_matches('/').to_string(),
            token: token.map(str::to_string),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        }
    }

    pub fn with_token(&self, token: &str) -> Api {
        Api {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<reqwest::Body>,
        content_type: Option<&str>,
    ) -> Resp {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let request_id = resp
            .headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_string());
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        assert!(request_id.is_some(), "every response carries x-request-id");
        Resp {
            status,
            request_id,
            retry_after,
            body,
        }
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        match body {
            Some(b) => {
                self.raw(
                    method,
                    path,
                    Some(b.to_string().into()),
                    Some("application/json"),
                )
                .await
            }
            None => self.raw(method, path, None, None).await,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.call(Method::PUT, path, Some(body)).await
    }
    pub async fn patch(&self, path: &str, body: Value) -> Resp {
        self.call(Method::PATCH, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> Resp {
        self.call(Method::DELETE, path, None).await
    }

    /// Waits for a task to finish and returns it.
    pub async fn wait_task(&self, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.get(&format!("/v1/tasks/{id}?wait=10")).await;
            assert_eq!(r.status, 200, "{r:?}");
            if matches!(r.body["state"].as_str(), Some("Succeeded" | "Failed")) {
                return r.body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {id} did not finish: {:?}",
                r.body
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Creates a tenant (as admin) and returns its owner key.
    pub async fn tenant(&self, name: &str) -> String {
        let r = self.post("/v1/tenants", json!({"name": name})).await;
        assert_eq!(r.status, 201, "{r:?}");
        r.body["api_key"].as_str().unwrap().to_string()
    }

    /// Lifts a tenant's limits (as admin) for tests that poll often or run many
    /// calls at once: 100 concurrent, 100,000 requests per second.
    pub async fn lift_limits(&self, tenant: &str) {
        let r = self
            .put(
                &format!("/v1/tenants/{tenant}/limits"),
                json!({"max_concurrency": 100, "rate_per_sec": 100000, "max_functions": 100, "max_memory_mb": 3072}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
    }

    /// Creates a python function and waits until the task ends; returns the task.
    pub async fn create_fn(&self, name: &str, extra: Value) -> Value {
        let mut body = json!({"name": name, "runtime": "python3", "handler": "index.handler", "code": {"zip_base64": py_zip("return event")}});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        let r = self.post("/v1/functions", body).await;
        assert_eq!(r.status, 202, "{r:?}");
        assert_eq!(r.body["function"]["state"], "Pending");
        self.wait_task(r.body["task_id"].as_str().unwrap()).await
    }
}

/// Starts `nimbus up` in a temporary directory with configuration `overrides`, and
/// creates the tenant `acme`: the platform, the tenant owner's API, the directory.
pub async fn up(overrides: &[(&str, &str)]) -> (nimbus::Platform, Api, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let p = nimbus::Platform::start(nimbus::UpOptions {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        bus: None,
        overrides: overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
    .await
    .unwrap();
    let admin = Api::new(&p.url, p.admin_key.as_deref());
    let owner = admin.with_token(&admin.tenant("acme").await);
    (p, owner, dir)
}

/// Creates a function from files and waits until it is Active.
pub async fn deploy(
    api: &Api,
    name: &str,
    runtime: &str,
    handler: &str,
    files: &[(&str, &str)],
    extra: Value,
) {
    let files: Vec<(&str, &[u8])> = files.iter().map(|(n, c)| (*n, c.as_bytes())).collect();
    deploy_bytes(api, name, runtime, handler, &files, extra).await
}

/// Creates a function from files (any bytes) and waits until it is Active.
pub async fn deploy_bytes(
    api: &Api,
    name: &str,
    runtime: &str,
    handler: &str,
    files: &[(&str, &[u8])],
    extra: Value,
) {
    let zip = code_service::package::build_zip(files);
    let mut body = json!({"name": name, "runtime": runtime, "handler": handler, "code": {"zip_base64": b64(&zip)}});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = api.post("/v1/functions", body).await;
    assert_eq!(r.status, 202, "{r:?}");
    let t = api.wait_task(r.body["task_id"].as_str().unwrap()).await;
    assert_eq!(t["state"], "Succeeded", "{t}");
}

pub struct Out {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Out {
    pub fn h(&self, k: &str) -> Option<&str> {
        self.headers.get(k).map(|v| v.to_str().unwrap())
    }
}

pub async fn invoke(api: &Api, name: &str, query: &str, event: Value) -> Out {
    invoke_raw(api, name, query, event.to_string().into_bytes(), &[]).await
}

pub async fn invoke_raw(
    api: &Api,
    name: &str,
    query: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> Out {
    static CLIENT: std::sync::LazyLock<reqwest::Client> =
        std::sync::LazyLock::new(reqwest::Client::new);
    let mut req = CLIENT
        .post(format!("{}/v1/functions/{name}/invoke{query}", api.url))
        .bearer_auth(api.token.as_ref().unwrap())
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    Out {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

/// The `/metrics` text of the process at `url`.
pub async fn metrics_text(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A zip holding `index.py` whose handler runs `body`.
pub fn py_zip(body: &str) -> String {
    let src = format!("def handler(event, context):\n    {body}\n");
    b64(&code_service::package::build_zip(&[(
        "index.py",
        src.as_bytes(),
    )]))
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A unique suffix for names in shared services.
pub fn unique() -> String {
    format!("{:x}{:04x}", std::process::id(), rand::random::<u16>())
}

/// A PyPI package for a test: from `$env_var`, where `.ci/run` installs it, else
/// installed once with pip into a directory of its own (`requirement` is
/// `NAME==VERSION`; `module` is what shows it is there).
pub fn python_package(env_var: &str, module: &str, requirement: &str) -> std::path::PathBuf {
    if let Some(d) = std::env::var_os(env_var) {
        return d.into();
    }
    let d = std::env::temp_dir().join(format!("nimbus-test-{}", requirement.replace("==", "-")));
    if !d.join(module).exists() {
        let st = std::process::Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--target"])
            .arg(&d)
            .arg(requirement)
            .status()
            .expect("pip");
        assert!(st.success(), "installing {requirement} failed");
    }
    d
}

/// Every file under `dir` (none if it is missing).
pub fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
