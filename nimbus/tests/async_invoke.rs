//! Asynchronous invocation in `nimbus up`: accepted at once, run from the queue,
//! retried with backoff, dead-lettered, handed to the disaster-recovery handler,
//! replayed; destinations and callbacks; a burst drained at the function's
//! concurrency; events survive a restart.

mod common;

use std::time::{Duration, Instant};

use common::{Api, deploy, invoke_raw};
use nimbus::{Platform, UpOptions};
use serde_json::{Value, json};

async fn start(dir: &std::path::Path) -> Platform {
    Platform::start(UpOptions {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        bus: None,
        // The tests' callback receivers listen on loopback.
        overrides: vec![(
            "NIMBUS_ROUTER__CALLBACK_PRIVATE_NETWORKS".into(),
            "true".into(),
        )],
    })
    .await
    .unwrap()
}

/// Queues an event; returns the invocation id.
async fn queue(api: &Api, name: &str, event: Value) -> String {
    let r = invoke_raw(
        api,
        name,
        "",
        event.to_string().into_bytes(),
        &[("x-nimbus-invocation-type", "async")],
    )
    .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    r.body["invocation_id"].as_str().unwrap().to_string()
}

/// Waits until the invocation reaches one of `states`; returns it.
async fn wait_for(api: &Api, id: &str, states: &[&str], secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = api.get(&format!("/v1/invocations/{id}")).await;
        assert_eq!(r.status, 200, "{r:?}");
        if states.contains(&r.body["state"].as_str().unwrap()) {
            return r.body;
        }
        assert!(Instant::now() < deadline, "{id} is still {:?}", r.body);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Log lines of a function.
async fn log_lines(api: &Api, name: &str) -> Vec<String> {
    let r = api
        .get(&format!("/v1/functions/{name}/logs?limit=1000"))
        .await;
    r.body["lines"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .map(|l| l["message"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

const FLAKY: &str = r#"
import json
def handler(event, context):
    if event.get("fail"):
        raise ValueError("asked to fail: " + str(event.get("n")))
    return {"ok": event.get("n")}
"#;

const PRINTER: &str = r#"
import json
def handler(event, context):
    print("RECEIVED " + json.dumps(event, sort_keys=True))
    return "noted"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_dead_letters_destinations_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path()).await;
    let admin = Api::new(&p.url, p.admin_key.as_deref());
    let api = admin.with_token(&admin.tenant("acme").await);
    // A receiver for callbacks.
    let (tx, mut callbacks) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let callback_url = format!("http://{}/hook", server.local_addr().unwrap());
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(v);
                    "ok"
                }
            }),
        );
        axum::serve(server, app).await.unwrap();
    });
    for name in ["dr", "audit"] {
        deploy(
            &api,
            name,
            "python3",
            "index.handler",
            &[("index.py", PRINTER)],
            json!({}),
        )
        .await;
    }
    deploy(
        &api,
        "flaky",
        "python3",
        "index.handler",
        &[("index.py", FLAKY)],
        json!({"async": {"max_retries": 2, "retry_base_delay_ms": 300,
                         "on_success": {"function": "audit"}, "on_failure": {"function": "dr"},
                         "callback_url": callback_url}}),
    )
    .await;

    // Success: the result is readable, the success destination and the callback get it.
    let ok = queue(&api, "flaky", json!({"n": 1})).await;
    let done = wait_for(&api, &ok, &["Succeeded"], 20).await;
    assert_eq!(done["result"], json!({"ok": 1}));
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["executed_version"], "$LATEST");
    let cb = tokio::time::timeout(Duration::from_secs(10), callbacks.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (cb["invocation_id"].as_str(), cb["state"].as_str()),
        (Some(ok.as_str()), Some("Succeeded"))
    );

    // Failure: 1 + 2 attempts, 300 ms then 600 ms apart, then a dead letter.
    let bad = queue(&api, "flaky", json!({"n": 2, "fail": true})).await;
    let dead = wait_for(&api, &bad, &["DeadLettered"], 30).await;
    assert_eq!(dead["attempts"], 3, "{dead}");
    let errors = dead["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 3, "{dead}");
    assert!(
        errors[0]["error"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("asked to fail: 2")
    );
    let at = |i: usize| nimbus_core::parse_rfc3339(errors[i]["at"].as_str().unwrap()).unwrap();
    assert!(at(1) - at(0) >= 300, "backoff 1: {dead}");
    assert!(at(2) - at(1) >= 600, "backoff 2: {dead}");
    let cb = tokio::time::timeout(Duration::from_secs(10), callbacks.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cb["state"], "DeadLettered");

    // The disaster-recovery handler got the failure; the success destination the result.
    let t = Instant::now();
    loop {
        let dr = log_lines(&api, "dr").await;
        let audit = log_lines(&api, "audit").await;
        let dr_ok = dr.iter().any(|l| {
            l.starts_with("RECEIVED ")
                && l.contains(&bad)
                && l.contains("\"attempts\": 3")
                && l.contains("asked to fail: 2")
                && l.contains("\"fail\": true")
        });
        let audit_ok = audit
            .iter()
            .any(|l| l.contains(&ok) && l.contains("\"result\": {\"ok\": 1}"));
        if dr_ok && audit_ok {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "dr: {dr:?}\naudit: {audit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The dead letter is listed with its event; replaying it runs it again.
    let r = api.get("/v1/functions/flaky/dead-letters").await;
    assert_eq!(r.status, 200, "{r:?}");
    let letters = r.body["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["id"], bad.as_str());
    assert_eq!(letters[0]["event"], json!({"n": 2, "fail": true}));
    // Fix the function, then replay.
    let r = api
        .put(
            "/v1/functions/flaky/code",
            json!({"zip_base64": common::py_zip("return {'fixed': event['n']}")}),
        )
        .await;
    api.wait_task(r.body["task_id"].as_str().unwrap()).await;
    let r = api
        .post(&format!("/v1/dead-letters/{bad}/replay"), json!({}))
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    let replayed = r.body["invocation_id"].as_str().unwrap().to_string();
    let done = wait_for(&api, &replayed, &["Succeeded"], 20).await;
    assert_eq!(done["result"], json!({"fixed": 2}));
    assert_eq!(done["replay_of"], bad.as_str());
    // Only dead letters replay.
    assert_eq!(
        api.post(&format!("/v1/dead-letters/{ok}/replay"), json!({}))
            .await
            .error_code(),
        "Conflict"
    );

    // An event whose next retry would be past its maximum age expires at once.
    deploy(
        &api,
        "aging",
        "python3",
        "index.handler",
        &[("index.py", FLAKY)],
        json!({"async": {"max_retries": 2, "retry_base_delay_ms": 2000, "max_event_age_s": 1}}),
    )
    .await;
    let old = queue(&api, "aging", json!({"n": 3, "fail": true})).await;
    let dead = wait_for(&api, &old, &["DeadLettered"], 20).await;
    assert_eq!(dead["attempts"], 1, "no retry past the event's age: {dead}");

    // Bad input: unknown function, another tenant's invocation, unknown invocation.
    let r = invoke_raw(
        &api,
        "nope",
        "",
        b"{}".to_vec(),
        &[("x-nimbus-invocation-type", "async")],
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (404, Some("FunctionNotFound"))
    );
    let other = admin.with_token(&admin.tenant("other").await);
    assert_eq!(
        other.get(&format!("/v1/invocations/{ok}")).await.status,
        404
    );
    assert_eq!(api.get("/v1/invocations/nope").await.status, 404);
    assert_eq!(api.get("/v1/functions/nope/dead-letters").await.status, 404);
    p.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_drains_at_the_functions_concurrency_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path()).await;
    let admin = Api::new(&p.url, p.admin_key.as_deref());
    let owner_key = admin.tenant("acme").await;
    admin.lift_limits("acme").await;
    let api = admin.with_token(&owner_key);
    deploy(
        &api,
        "slow",
        "python3",
        "index.handler",
        &[(
            "index.py",
            "import time\ndef handler(event, context):\n    time.sleep(0.001)\n    return event\n",
        )],
        json!({"reserved_concurrency": 4}),
    )
    .await;
    // 10,000 events from 8 senders: every one accepted (no 429), none runs beyond 4 at
    // a time (instances are never more than the function's concurrency).
    let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (most, watching, node) = (most.clone(), watching.clone(), p.node.clone());
        tokio::spawn(async move {
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                most.fetch_max(node.instances(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut senders = Vec::new();
    for s in 0..8 {
        let api = api.clone();
        senders.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in (s..10_000).step_by(8) {
                ids.push(queue(&api, "slow", json!({"n": n})).await);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for s in senders {
        ids.extend(s.await.unwrap());
    }
    assert_eq!(ids.len(), 10_000);
    // Stop in the middle of the drain.
    let t = Instant::now();
    loop {
        let r = api.get(&format!("/v1/invocations/{}", ids[2_000])).await;
        if r.body["state"] == "Succeeded" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "{:?}", r.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    watcher.await.unwrap();
    let most = most.load(std::sync::atomic::Ordering::Relaxed);
    assert!(most <= 4, "at most 4 instances ran: {most}");
    // Stop mid-run and start again on the same data: nothing is lost.
    p.stop().await.unwrap();
    let p = start(dir.path()).await;
    let api = Api::new(&p.url, Some(&owner_key));
    for id in &ids {
        let done = wait_for(&api, id, &["Succeeded"], 120).await;
        assert!(done["attempts"].as_i64().unwrap() >= 1);
    }
    assert!(p.node.instances() <= 4);
    p.stop().await.unwrap();
}

const HTTP_ECHO: &str = r#"
import base64, json
def handler(event, context):
    body = event["body"]
    if event["isBase64Encoded"]:
        body = base64.b64decode(body).hex()
    return {"statusCode": 201, "headers": {"x-echo-method": event["httpMethod"], "content-type": "application/json"},
            "body": json.dumps({"path": event["path"], "query": event["queryStringParameters"],
                                "h": event["headers"].get("x-custom"), "body": body,
                                "auth_seen": "authorization" in event["headers"]})}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_timer_triggers() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path()).await;
    let admin = Api::new(&p.url, p.admin_key.as_deref());
    let key = admin.tenant("acme").await;
    let api = admin.with_token(&key);
    deploy(
        &api,
        "web",
        "python3",
        "index.handler",
        &[("index.py", HTTP_ECHO)],
        json!({}),
    )
    .await;
    deploy(
        &api,
        "tick",
        "python3",
        "index.handler",
        &[("index.py", PRINTER)],
        json!({}),
    )
    .await;

    // Bad input, each a 4xx in the contract's shape.
    for (body, status) in [
        (json!({"type": "carrier-pigeon"}), 400),
        (json!({"type": "timer", "cron": "every day"}), 400),
        (json!({"type": "http", "path": "nope"}), 400),
        (json!({"type": "queue", "queue": "bad name"}), 400),
        (json!({"type": "storage", "bucket": "Bad_Name"}), 400),
    ] {
        let r = api.post("/v1/functions/web/triggers", body.clone()).await;
        assert_eq!(r.status, status, "{body}: {r:?}");
        assert_eq!(r.error_code(), "InvalidRequest");
    }
    assert_eq!(
        api.post(
            "/v1/functions/nope/triggers",
            json!({"type": "timer", "cron": "* * * * * *"})
        )
        .await
        .status,
        404
    );
    let r = api
        .post(
            "/v1/functions/web/triggers",
            json!({"type": "http", "path": "/hello", "methods": ["GET", "POST"], "auth": "none"}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["trigger"]["url_path"], "/t/acme/hello");
    let r = api
        .post(
            "/v1/functions/tick/triggers",
            json!({"type": "http", "path": "/hello"}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code()),
        (409, "Conflict"),
        "a path clash"
    );
    let r = api
        .post(
            "/v1/functions/web/triggers",
            json!({"type": "http", "path": "/private", "methods": ["PUT"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");

    // The round trip: method, path, query, headers, a binary body.
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/t/acme/hello?x=1&y=a%20b", p.url))
        .header("x-custom", "yes")
        .body(vec![0xffu8, 0x00, 0x01])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(resp.headers()["x-echo-method"], "POST");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["path"], "/hello");
    assert_eq!(v["query"], json!({"x": "1", "y": "a b"}));
    assert_eq!(v["h"], "yes");
    assert_eq!(v["body"], "ff0001");
    let resp = http
        .get(format!("{}/t/acme/hello", p.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    // Methods, unknown routes, and keys.
    let resp = http
        .delete(format!("{}/t/acme/hello", p.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    let resp = http
        .get(format!("{}/t/acme/nothing", p.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let resp = http
        .put(format!("{}/t/acme/private", p.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401, "auth \"key\" is the default");
    let resp = http
        .put(format!("{}/t/acme/private", p.url))
        .bearer_auth(&key)
        .body("plain")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        (v["body"].as_str(), v["auth_seen"].as_bool()),
        (Some("plain"), Some(false)),
        "the key is not passed to the function"
    );
    let other = admin.with_token(&admin.tenant("other").await);
    let resp = http
        .put(format!("{}/t/acme/private", p.url))
        .bearer_auth(other.token.as_ref().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404, "another tenant's key");
    let r = api.get("/v1/functions/web/triggers").await;
    assert_eq!(r.body["triggers"].as_array().unwrap().len(), 2);

    // Timer, with time controlled: two schedulers (as in two processes) over the same
    // database fire each second's tick exactly once.
    let r = api
        .post(
            "/v1/functions/tick/triggers",
            json!({"type": "timer", "cron": "* * * * * *"}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let db = nimbus_core::db::connect(&p.config.database).await.unwrap();
    let bus: nimbus_core::bus::DynBus =
        std::sync::Arc::new(nimbus_core::bus::memory::MemoryBus::new());
    let (a, b) = (
        events::triggers::TimerScheduler::new(db.clone(), bus.clone()),
        events::triggers::TimerScheduler::new(db.clone(), bus.clone()),
    );
    // Far in the future: the platform's own scheduler (on the wall clock) has not
    // reached these ticks.
    let t0 = (nimbus_core::now_ms() / 1000 + 3600) * 1000;
    let mut fired = 0;
    a.fire_due(t0 - 500).await.unwrap();
    b.fire_due(t0 - 500).await.unwrap();
    for s in 0..5 {
        let now = t0 + s * 1000 + 100;
        let (x, y) = tokio::join!(a.fire_due(now), b.fire_due(now));
        fired += x.unwrap() + y.unwrap();
    }
    // Ticks t0 … t0+4 s, once each (the 5 s catch-up window bounds how far back).
    assert_eq!(fired, 5, "one firing per tick across both schedulers");
    use sea_orm::{ColumnTrait as _, EntityTrait as _, PaginatorTrait as _, QueryFilter as _};
    let n = nimbus_core::db::trigger_fire::Entity::find()
        .filter(nimbus_core::db::trigger_fire::Column::TickMs.gte(t0))
        .count(&db)
        .await
        .unwrap();
    assert_eq!(n, 5);
    // And on the wall clock, the platform's scheduler runs the function.
    let t = Instant::now();
    while !log_lines(&api, "tick")
        .await
        .iter()
        .any(|l| l.contains("\"type\": \"timer\""))
    {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the timer fired and ran"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Deleting the trigger stops it; deleting the function deletes its triggers.
    let id = r.body["trigger"]["id"].as_str().unwrap();
    assert_eq!(
        api.delete(&format!("/v1/functions/tick/triggers/{id}"))
            .await
            .status,
        204
    );
    assert_eq!(
        api.delete(&format!("/v1/functions/tick/triggers/{id}"))
            .await
            .status,
        404
    );
    let r = api.delete("/v1/functions/web").await;
    api.wait_task(r.body["task_id"].as_str().unwrap()).await;
    let resp = http
        .get(format!("{}/t/acme/hello", p.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    p.stop().await.unwrap();
}

/// `GET /v1/invocations/{id}/watch` pushes each change and the result, then closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_pushes_state_changes_over_a_websocket() {
    use futures::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path()).await;
    let admin = Api::new(&p.url, p.admin_key.as_deref());
    let key = admin.tenant("acme").await;
    let api = admin.with_token(&key);
    deploy(
        &api,
        "sleepy",
        "python3",
        "index.handler",
        &[("index.py", "import time\ndef handler(event, context):\n    time.sleep(1)\n    return {'done': event['n']}\n")],
        json!({}),
    )
    .await;
    let id = queue(&api, "sleepy", json!({"n": 7})).await;
    let url = format!(
        "{}/v1/invocations/{id}/watch",
        p.url.replacen("http", "ws", 1)
    );
    let mut req = url.clone().into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut states = Vec::new();
    let mut last = Value::Null;
    while let Some(m) = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .unwrap()
    {
        match m.unwrap() {
            Message::Text(t) => {
                last = serde_json::from_str(&t).unwrap();
                states.push(last["state"].as_str().unwrap().to_string());
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert_eq!(
        states.last().map(String::as_str),
        Some("Succeeded"),
        "{states:?}"
    );
    assert!(states.contains(&"Running".to_string()), "{states:?}");
    assert_eq!(last["result"], json!({"done": 7}));
    // Without a key, or for another tenant: no websocket.
    let err = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    // Not a websocket request: the contract's 400.
    let r = api.get(&format!("/v1/invocations/{id}/watch")).await;
    assert_eq!((r.status, r.error_code()), (400, "InvalidRequest"));
    p.stop().await.unwrap();
}

/// Buckets, storage triggers (put and delete, prefix and suffix filters) and the S3
/// webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_triggers_fire_on_uploads_and_s3_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path()).await;
    let admin = Api::new(&p.url, p.admin_key.as_deref());
    let key = admin.tenant("acme").await;
    let api = admin.with_token(&key);
    deploy(
        &api,
        "thumb",
        "python3",
        "index.handler",
        &[("index.py", PRINTER)],
        json!({}),
    )
    .await;
    // A trigger on a bucket that does not exist is a 404.
    let r = api
        .post(
            "/v1/functions/thumb/triggers",
            json!({"type": "storage", "bucket": "uploads"}),
        )
        .await;
    assert_eq!((r.status, r.error_code()), (404, "BucketNotFound"));
    assert_eq!(api.put("/v1/buckets/uploads", json!({})).await.status, 201);
    assert_eq!(
        api.put("/v1/buckets/uploads", json!({})).await.status,
        200,
        "it exists"
    );
    assert_eq!(api.put("/v1/buckets/No", json!({})).await.status, 400);
    let r = api
        .post(
            "/v1/functions/thumb/triggers",
            json!({"type": "storage", "bucket": "uploads", "events": ["put", "delete"], "prefix": "img/", "suffix": ".png"}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");

    // Objects: put, get, delete. A matching put fires; a non-matching one does not.
    let http = reqwest::Client::new();
    let put = |k: &str, body: &'static [u8]| {
        http.put(format!("{}/v1/buckets/uploads/objects/{k}", p.url))
            .bearer_auth(&key)
            .body(body)
            .send()
    };
    let r = put("img/cat.png", b"PNG-bytes").await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["size"].as_u64(), v["triggered"].as_u64()),
        (Some(9), Some(1))
    );
    let r = put("docs/cat.png", b"x").await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["triggered"], 0, "other prefix");
    let r = put("img/cat.jpg", b"x").await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["triggered"], 0, "other suffix");
    let r = http
        .get(format!("{}/v1/buckets/uploads/objects/img/cat.png", p.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], b"PNG-bytes");
    let r = http
        .delete(format!("{}/v1/buckets/uploads/objects/img/cat.png", p.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        api.get("/v1/buckets/uploads/objects/img/cat.png")
            .await
            .status,
        404
    );
    assert_eq!(api.get("/v1/buckets/missing/objects/a").await.status, 404);

    // An S3 (or MinIO) webhook fires the same trigger.
    let r = api
        .post(
            "/v1/events/s3",
            json!({"EventName": "s3:ObjectCreated:Put", "Key": "uploads/img/dog%20one.png",
                   "Records": [{"eventVersion": "2.0", "eventSource": "minio:s3", "eventName": "s3:ObjectCreated:Put",
                                "eventTime": "2026-11-22T10:00:00.000Z",
                                "s3": {"bucket": {"name": "uploads"},
                                       "object": {"key": "img/dog%20one.png", "size": 42, "eTag": "abc"}}}]}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["fired"].as_u64()),
        (202, Some(1)),
        "{r:?}"
    );
    let r = api
        .post("/v1/events/s3", json!({"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "nope"}, "object": {"key": "a"}}}]}))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        api.post("/v1/events/s3", json!({"hello": 1})).await.status,
        400
    );

    // The function saw three events with S3's shape: the put, the delete, the webhook.
    let t = Instant::now();
    loop {
        let lines = log_lines(&api, "thumb").await;
        let got = |needle: &str| lines.iter().any(|l| l.contains(needle));
        if got("\"eventName\": \"ObjectCreated:Put\"")
            && got("\"key\": \"img/cat.png\", \"size\": 9")
            && got("\"eventName\": \"ObjectRemoved:Delete\"")
            && got("\"key\": \"img/dog one.png\", \"size\": 42")
        {
            assert!(!got("docs/cat.png") && !got("img/cat.jpg"), "{lines:?}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{lines:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = api.get("/v1/buckets").await;
    assert_eq!(r.body["buckets"][0]["name"], "uploads");
    p.stop().await.unwrap();
}

const CONSUMER: &str = r#"
def handler(event, context):
    body = event["Records"][0]["body"]
    print("GOT " + body)
    if body == "poison":
        raise ValueError("cannot digest " + body)
    return body
"#;

/// A queue trigger consumes the tenant's queue; a poison message ends as a dead
/// letter after the retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_triggers_consume_and_dead_letter_poison() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path()).await;
    let admin = Api::new(&p.url, p.admin_key.as_deref());
    let key = admin.tenant("acme").await;
    let api = admin.with_token(&key);
    deploy(
        &api,
        "orders",
        "python3",
        "index.handler",
        &[("index.py", CONSUMER)],
        json!({"async": {"max_retries": 1, "retry_base_delay_ms": 100}}),
    )
    .await;
    deploy(
        &api,
        "other",
        "python3",
        "index.handler",
        &[("index.py", CONSUMER)],
        json!({}),
    )
    .await;
    let r = api
        .post(
            "/v1/functions/orders/triggers",
            json!({"type": "queue", "queue": "orders"}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = api
        .post(
            "/v1/functions/other/triggers",
            json!({"type": "queue", "queue": "orders"}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code()),
        (409, "Conflict"),
        "one consumer per queue"
    );
    let http = reqwest::Client::new();
    for body in ["first", "second", "poison"] {
        let r = http
            .post(format!("{}/v1/queues/orders/messages", p.url))
            .bearer_auth(&key)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
    }
    assert_eq!(
        api.post("/v1/queues/bad%20name/messages", json!({}))
            .await
            .status,
        400
    );
    let t = Instant::now();
    loop {
        let lines = log_lines(&api, "orders").await;
        let count = |m: &str| lines.iter().filter(|l| l.as_str() == m).count();
        let letters =
            api.get("/v1/functions/orders/dead-letters").await.body["dead_letters"].clone();
        // Output lines reach the log store in batches, so the retry's line may land
        // just after the dead letter: wait for both.
        if count("GOT first") == 1
            && count("GOT second") == 1
            && count("GOT poison") >= 2
            && letters.as_array().is_some_and(|l| l.len() == 1)
        {
            assert_eq!(count("GOT poison"), 2, "1 + 1 retry: {lines:?}");
            assert_eq!(letters[0]["attempts"], 2);
            assert_eq!(letters[0]["event"]["Records"][0]["body"], "poison");
            assert_eq!(letters[0]["origin"], "queue");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{lines:?} {letters}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.stop().await.unwrap();
}
