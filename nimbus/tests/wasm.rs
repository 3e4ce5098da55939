//! The `wasm` runtime end to end in `nimbus up`: WASI command modules built from WAT
//! text, run in the node's process by wasmtime, through the real HTTP API.

mod common;

use std::time::{Duration, Instant};

use common::{Api, b64, deploy_bytes, invoke, up, walk};
use serde_json::{Value, json};

const ECHO: &str = include_str!("../../node/tests/data/echo.wat");

async fn deploy_wasm(api: &Api, name: &str, modules: &[(&str, &str)], extra: Value) {
    let bins: Vec<(&str, Vec<u8>)> = modules
        .iter()
        .map(|(n, text)| (*n, wat::parse_str(text).unwrap()))
        .collect();
    let files: Vec<(&str, &[u8])> = bins.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    deploy_bytes(api, name, "wasm", modules[0].0, &files, extra).await;
}

#[tokio::test]
async fn wasm_echo_errors_timeouts_and_logs() {
    let (p, api, dir) = up(&[]).await;

    // A handler that is not a .wasm file is refused up front.
    let r = api
        .post(
            "/v1/functions",
            json!({"name": "bad", "runtime": "wasm", "handler": "index.handler",
                   "code": {"zip_base64": b64(&code_service::package::build_zip(&[("index.handler", b"x")]))}}),
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");

    deploy_wasm(
        &api,
        "echo",
        &[("echo.wasm", ECHO)],
        json!({"memory_mb": 128}),
    )
    .await;
    let first = invoke(&api, "echo", "", json!({"hello": "wasm", "n": [1, 2, 3]})).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.body, json!({"hello": "wasm", "n": [1, 2, 3]}));
    assert_eq!(first.h("x-nimbus-cold-start"), Some("true"));
    assert!(first.h("x-nimbus-init-ms").unwrap().parse::<u32>().is_ok());
    // The deploy compiled it: the node loaded the code service's artifact (one per
    // digest and engine tag, in object storage), it did not compile.
    let artifacts: Vec<_> = walk(&dir.path().join("objects/wasm"));
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    let name = artifacts[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let f = api.get("/v1/functions/echo").await.body["function"].clone();
    assert!(
        name.starts_with(f["code_sha256"].as_str().unwrap()) && name.ends_with(".cwasm"),
        "{name}"
    );
    let metrics = reqwest::get(format!("{}/metrics", p.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("nimbus_wasm_module_loads_total{from=\"disk\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("from=\"compiled\""), "{metrics}");
    let rid = first.h("x-nimbus-request-id").unwrap().to_string();
    let second = invoke(&api, "echo", "", json!({"n": 2})).await;
    assert_eq!(second.body, json!({"n": 2}));
    assert_eq!(second.h("x-nimbus-cold-start"), Some("false"));

    // stderr lands in the function's logs under the request id.
    let mut found = false;
    for _ in 0..50 {
        let logs = api.get("/v1/functions/echo/logs").await;
        found = logs.body["lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["request_id"] == rid.as_str() && l["message"] == "hello from wasm");
        if found {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found, "stderr line not in the logs");

    // A trap is the function's error; the platform carries on.
    deploy_wasm(
        &api,
        "trap",
        &[(
            "trap.wasm",
            r#"(module (func (export "_start") unreachable))"#,
        )],
        json!({}),
    )
    .await;
    let r = invoke(&api, "trap", "", json!({})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.h("x-nimbus-function-error"), Some("Unhandled"));
    assert_eq!(r.body["errorType"], "Runtime.Trap");

    // An infinite loop: 504 within the timeout.
    deploy_wasm(
        &api,
        "spin",
        &[(
            "loop.wasm",
            r#"(module (func (export "_start") (loop $l (br $l))))"#,
        )],
        json!({"timeout_ms": 300}),
    )
    .await;
    let t = Instant::now();
    let idle_use = p.node.used();
    let (r, during) = tokio::join!(invoke(&api, "spin", "", json!({})), async {
        // While it spins (300 ms), the node counts it: an instance of 128 MB.
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if p.node.used() != idle_use {
                break;
            }
        }
        p.node.used()
    });
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (504, Some("FunctionTimeout")),
        "{:?}",
        r.body
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(during, (idle_use.0 + 128, idle_use.1 + 1), "{idle_use:?}");
    assert_eq!(p.node.used(), idle_use);

    // Memory past memory_mb is an error, not the node's problem.
    deploy_wasm(
        &api,
        "hog",
        &[(
            "hog.wasm",
            r#"(module (memory (export "memory") 1)
                 (func (export "_start") (drop (memory.grow (i32.const 3000)))))"#,
        )],
        json!({"memory_mb": 128}),
    )
    .await;
    let r = invoke(&api, "hog", "", json!({})).await;
    assert_eq!(r.h("x-nimbus-function-error"), Some("Unhandled"));
    assert_eq!(r.body["errorType"], "Runtime.OutOfMemory");

    // Modules are checked and compiled at deploy: one that is not a module, one
    // without _start and one importing beyond WASI fail their deploy, saying why,
    // and never become Active.
    let no_start = wat::parse_str(r#"(module (func (export "handler")))"#).unwrap();
    let foreign =
        wat::parse_str(r#"(module (import "env" "host_secret" (func)) (func (export "_start")))"#)
            .unwrap();
    for (name, module, why) in [
        (
            "junk",
            b"\0asmthis is not wasm".to_vec(),
            "'m.wasm' is not a valid module",
        ),
        ("lib", no_start, "exports no _start"),
        ("foreign", foreign, "cannot be linked"),
    ] {
        let zip = code_service::package::build_zip(&[("m.wasm", &module)]);
        let r = api
            .post(
                "/v1/functions",
                json!({"name": name, "runtime": "wasm", "handler": "m.wasm", "code": {"zip_base64": b64(&zip)}}),
            )
            .await;
        assert_eq!(r.status, 202, "{r:?}");
        let t = api.wait_task(r.body["task_id"].as_str().unwrap()).await;
        assert_eq!(t["state"], "Failed", "{t}");
        assert!(t["error"].as_str().unwrap().contains(why), "{name}: {t}");
        let f = api.get(&format!("/v1/functions/{name}")).await.body["function"].clone();
        assert_eq!(f["state"], "Failed", "{f}");
        assert!(f["state_reason"].as_str().unwrap().contains(why), "{f}");
    }

    // The node survived all of them; calls in parallel each get their own instance.
    let calls = (0..20).map(|i| {
        let api = api.clone();
        async move { invoke(&api, "echo", "", json!({"i": i})).await }
    });
    for (i, r) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!((r.status, r.body.clone()), (200, json!({"i": i})));
    }
    p.stop().await.unwrap();
}
