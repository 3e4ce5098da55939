//! The web console: served from the binary with a strict content policy, reached
//! by websockets that authenticate through the subprotocol header, open to the
//! configured CORS origins only, and walked end to end in a real headless Chromium
//! (Debian's `chromium`, driven by Playwright for Python, which `.ci/run` installs
//! into `$NIMBUS_TEST_PLAYWRIGHT`; `tests/console/walk.py`).

mod common;

use std::path::PathBuf;

use futures::StreamExt as _;
use serde_json::json;

/// GET `base` + `path`.
async fn get(http: &reqwest::Client, base: &str, path: &str) -> reqwest::Response {
    http.get(format!("{base}{path}")).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_safely() {
    let (p, owner, _dir) =
        common::up(&[("NIMBUS_API__CORS_ORIGINS", "[\"https://ops.example.com\"]")]).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = get(&http, &p.url, "/console").await;
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "/console/");
    let r = get(&http, &p.url, "/console/").await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let page = r.text().await.unwrap();
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "nothing from elsewhere"
    );
    // Every script is Nimbus's own: the bundled editor is served too.
    let r = get(&http, &p.url, "/console/vendor/editor.js").await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );
    let r = get(&http, &p.url, "/console/../Cargo.toml").await;
    assert_eq!(r.status(), 404);
    let r = get(&http, &p.url, "/console/nope.js").await;
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "NotFound");

    // CORS: the configured origin may call from a browser; another may not.
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, format!("{}/v1/functions", p.url))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let r = preflight("https://ops.example.com").await.unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://ops.example.com"
    );
    let r = preflight("https://evil.example.com").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());

    // A websocket authenticated by the subprotocol header, as browsers can send it;
    // the server answers with the `nimbus` protocol.
    common::deploy(
        &owner,
        "ws",
        "python3",
        "index.handler",
        &[("index.py", "def handler(e, c):\n    return {'ok': True}\n")],
        json!({}),
    )
    .await;
    let r = common::invoke_raw(
        &owner,
        "ws",
        "",
        b"{}".to_vec(),
        &[("x-nimbus-invocation-type", "async")],
    )
    .await;
    let id = r.body["invocation_id"].as_str().unwrap().to_string();
    let token = owner.token.clone().unwrap();
    let ws_url = format!(
        "{}/v1/invocations/{id}/watch",
        p.url.replacen("http", "ws", 1)
    );
    let open = |protocols: String| {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut req = ws_url.as_str().into_client_request().unwrap();
        req.headers_mut()
            .insert("sec-websocket-protocol", protocols.parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    let (mut ws, resp) = open(format!("nimbus, bearer.{token}")).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "nimbus");
    let mut last = serde_json::Value::Null;
    while let Some(Ok(m)) = ws.next().await {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            last = serde_json::from_str(&t).unwrap();
        }
    }
    assert_eq!(last["state"], "Succeeded", "{last}");
    let _ = ws.close(None).await;
    // A bad key in the subprotocol is refused before the upgrade.
    let e = open("nimbus, bearer.nmb_bad".into()).await.err().unwrap();
    assert!(e.to_string().contains("401"), "{e}");
    p.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_walks_the_console_in_chromium() {
    let (p, owner, dir) = common::up(&[]).await;
    let invoker = owner
        .post("/v1/api-keys", json!({"role": "invoker", "name": "viewer"}))
        .await;
    assert_eq!(invoker.status, 201, "{:?}", invoker.body);
    let walk = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console/walk.py");
    let shots = std::env::var("NIMBUS_CONSOLE_SHOTS")
        .unwrap_or_else(|_| dir.path().join("shots").to_string_lossy().into_owned());
    std::fs::create_dir_all(&shots).unwrap();
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(walk)
        .env(
            "PYTHONPATH",
            common::python_package("NIMBUS_TEST_PLAYWRIGHT", "playwright", "playwright==1.65.3"),
        )
        .env("NIMBUS_URL", &p.url)
        .env("NIMBUS_OWNER_KEY", owner.token.clone().unwrap())
        .env(
            "NIMBUS_INVOKER_KEY",
            invoker.body["api_key"].as_str().unwrap(),
        )
        .env("NIMBUS_ADMIN_KEY", p.admin_key.clone().unwrap())
        .env("NIMBUS_SHOTS", &shots);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "the console walk failed (needs Debian's chromium at /usr/bin/chromium):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(PathBuf::from(&shots).join("invoke.png").is_file());
    p.stop().await.unwrap();
}
