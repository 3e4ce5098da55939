//! The data path end to end in `nimbus up`: real runtimes (python3, nodejs, a
//! `provided` bootstrap), real processes, the real HTTP API.

mod common;

use std::time::{Duration, Instant};

use common::{Api, b64, deploy, invoke, invoke_raw};
use nimbus::{Platform, UpOptions};
use serde_json::json;

async fn start(overrides: Vec<(&str, &str)>) -> (Platform, Api, tempfile::TempDir) {
    common::up(&overrides).await
}

const PY_ECHO: &str = r#"
import os
COUNT = 0
def handler(event, context):
    global COUNT
    COUNT += 1
    print("handling", context.aws_request_id)
    return {"event": event, "request_id": context.aws_request_id, "name": context.function_name,
            "version": context.function_version, "memory": context.memory_limit_in_mb,
            "remaining": context.get_remaining_time_in_millis(), "env": os.environ.get("GREETING"),
            "calls": COUNT}
"#;

#[tokio::test]
async fn python_invoke_headers_reuse_and_logs() {
    let (p, api, _dir) = start(vec![]).await;
    deploy(
        &api,
        "echo",
        "python3",
        "index.handler",
        &[("index.py", PY_ECHO)],
        json!({"env": {"GREETING": "hi"}, "memory_mb": 256}),
    )
    .await;
    let first = invoke(&api, "echo", "", json!({"n": 1})).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.h("x-nimbus-cold-start"), Some("true"));
    assert!(first.h("x-nimbus-init-ms").unwrap().parse::<u32>().is_ok());
    assert_eq!(first.h("x-nimbus-executed-version"), Some("$LATEST"));
    assert!(first.h("x-nimbus-function-error").is_none());
    let rid = first.h("x-nimbus-request-id").unwrap().to_string();
    assert_eq!(first.body["event"], json!({"n": 1}));
    assert_eq!(first.body["request_id"], rid.as_str());
    assert_eq!(first.body["name"], "echo");
    assert_eq!(first.body["memory"], 256);
    assert_eq!(first.body["env"], "hi");
    let remaining = first.body["remaining"].as_i64().unwrap();
    assert!(remaining > 0 && remaining <= 3000, "{remaining}");

    // Resident: the same instance serves the next call.
    let second = invoke(&api, "echo", "", json!({"n": 2})).await;
    assert_eq!(second.h("x-nimbus-cold-start"), Some("false"));
    assert!(second.h("x-nimbus-init-ms").is_none());
    assert_eq!(second.body["calls"], 2);

    // Logs carry the request ids (stored in batches: wait for the line to land).
    let mut lines = vec![];
    for _ in 0..50 {
        let logs = api.get("/v1/functions/echo/logs").await;
        assert_eq!(logs.status, 200);
        lines = logs.body["lines"].as_array().unwrap().clone();
        if lines.iter().any(|l| {
            l["request_id"] == rid.as_str() && l["message"].as_str().unwrap().contains(&rid)
        }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        lines
            .iter()
            .any(|l| l["request_id"] == rid.as_str()
                && l["message"].as_str().unwrap().contains(&rid)),
        "{lines:?}"
    );
    let limited = api.get("/v1/functions/echo/logs?limit=1").await;
    assert_eq!(limited.body["lines"].as_array().unwrap().len(), 1);
    assert_eq!(
        api.get("/v1/functions/echo/logs?since=yesterday")
            .await
            .status,
        400
    );

    // Dry run validates only.
    let dry = invoke_raw(
        &api,
        "echo",
        "",
        b"{}".to_vec(),
        &[("x-nimbus-invocation-type", "dry-run")],
    )
    .await;
    assert_eq!(dry.status, 204);
    let bad = invoke_raw(
        &api,
        "echo",
        "",
        b"{}".to_vec(),
        &[("x-nimbus-invocation-type", "sometimes")],
    )
    .await;
    assert_eq!(bad.status, 400);

    // New code supersedes the old instance at once; deleting the function kills its
    // instances without waiting for the keep-alive.
    assert_eq!(p.node.instances(), 1);
    let r = api
        .put(
            "/v1/functions/echo/code",
            json!({"zip_base64": common::py_zip("return 'v2'")}),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    api.wait_task(r.body["task_id"].as_str().unwrap()).await;
    let r = invoke(&api, "echo", "", json!({})).await;
    assert_eq!((r.status, r.body.clone()), (200, json!("v2")));
    assert_eq!(
        p.node.instances(),
        1,
        "the old configuration's instance is gone"
    );
    let r = api.delete("/v1/functions/echo").await;
    api.wait_task(r.body["task_id"].as_str().unwrap()).await;
    let t = Instant::now();
    while p.node.instances() > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "instances outlived their function"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.stop().await.unwrap();
}

#[tokio::test]
async fn errors_crashes_timeouts_and_limits() {
    let (p, api, _dir) = start(vec![]).await;
    let src = r#"
import os, time
INSTANCE = os.urandom(8).hex()
def handler(event, context):
    if event.get("raise"):
        raise ValueError("bad input: " + event["raise"])
    if event.get("exit"):
        os._exit(1)
    if event.get("sleep"):
        time.sleep(event["sleep"])
    return {"ok": True, "pid": INSTANCE}
"#;
    deploy(
        &api,
        "f",
        "python3",
        "index.handler",
        &[("index.py", src)],
        json!({"timeout_ms": 1000}),
    )
    .await;

    // A raised error: 200 with the error document, or 502 if asked.
    let r = invoke(&api, "f", "", json!({"raise": "x"})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.h("x-nimbus-function-error"), Some("Unhandled"));
    assert_eq!(r.body["errorType"], "ValueError");
    assert_eq!(r.body["errorMessage"], "bad input: x");
    let r = invoke(&api, "f", "?error_status=true", json!({"raise": "y"})).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.body["error"]["code"], "FunctionError");
    // The instance survived its function's error.
    let ok = invoke(&api, "f", "", json!({})).await;
    assert_eq!(ok.h("x-nimbus-cold-start"), Some("false"));
    let pid = ok.body["pid"].clone();

    // A crash fails only its own call; the next call gets a fresh instance.
    let r = invoke(&api, "f", "", json!({"exit": true})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.h("x-nimbus-function-error"), Some("Unhandled"));
    assert_eq!(r.body["errorType"], "Runtime.ExitError");
    let r = invoke(&api, "f", "", json!({})).await;
    assert_eq!((r.status, r.h("x-nimbus-cold-start")), (200, Some("true")));
    assert_ne!(r.body["pid"], pid);

    // A timeout: 504 within the timeout (plus slack), the instance is killed.
    let t = Instant::now();
    let r = invoke(&api, "f", "", json!({"sleep": 30})).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (504, Some("FunctionTimeout"))
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let r = invoke(&api, "f", "", json!({})).await;
    assert_eq!((r.status, r.h("x-nimbus-cold-start")), (200, Some("true")));

    // 6 MiB events.
    let big = vec![b'1'; 6 * 1024 * 1024 + 1];
    let r = invoke_raw(&api, "f", "", big, &[]).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (413, Some("PayloadTooLarge"))
    );

    // Offline refuses with 409; online serves again.
    assert_eq!(
        api.post("/v1/functions/f/offline", json!({})).await.status,
        200
    );
    let r = invoke(&api, "f", "", json!({})).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (409, Some("Conflict"))
    );
    assert_eq!(
        api.post("/v1/functions/f/online", json!({})).await.status,
        200
    );
    assert_eq!(invoke(&api, "f", "", json!({})).await.status, 200);

    // Unknown things are 404s; another tenant's function too.
    assert_eq!(
        invoke(&api, "nope", "", json!({})).await.body["error"]["code"],
        "FunctionNotFound"
    );
    assert_eq!(
        invoke(&api, "f", "?qualifier=7", json!({})).await.body["error"]["code"],
        "VersionNotFound"
    );
    assert_eq!(
        invoke(&api, "f", "?qualifier=beta", json!({})).await.body["error"]["code"],
        "AliasNotFound"
    );
    let admin = Api::new(&p.url, p.admin_key.as_deref());
    let other = admin.with_token(&admin.tenant("globex").await);
    assert_eq!(invoke(&other, "f", "", json!({})).await.status, 404);
    p.stop().await.unwrap();
}

#[tokio::test]
async fn versions_aliases_and_weights() {
    let (p, api, _dir) = start(vec![]).await;
    let v = |n: u32| format!("def handler(event, context):\n    return {{\"v\": {n}}}\n");
    deploy(
        &api,
        "f",
        "python3",
        "index.handler",
        &[("index.py", &v(1))],
        json!({}),
    )
    .await;
    let r = api.post("/v1/functions/f/versions", json!({})).await;
    api.wait_task(r.body["task_id"].as_str().unwrap()).await;
    let r = api.put("/v1/functions/f/code", json!({"zip_base64": b64(&code_service::package::build_zip(&[("index.py", v(2).as_bytes())]))})).await;
    api.wait_task(r.body["task_id"].as_str().unwrap()).await;
    let r = api.post("/v1/functions/f/versions", json!({})).await;
    api.wait_task(r.body["task_id"].as_str().unwrap()).await;

    let r = invoke(&api, "f", "?qualifier=1", json!({})).await;
    assert_eq!(
        (r.body["v"].as_i64(), r.h("x-nimbus-executed-version")),
        (Some(1), Some("1"))
    );
    assert_eq!(
        invoke(&api, "f", "?qualifier=2", json!({})).await.body["v"],
        2
    );
    assert_eq!(invoke(&api, "f", "", json!({})).await.body["v"], 2);

    // Moving an alias takes effect on the next call.
    api.put("/v1/functions/f/aliases/live", json!({"version": "1"}))
        .await;
    assert_eq!(
        invoke(&api, "f", "?qualifier=live", json!({})).await.body["v"],
        1
    );
    api.put("/v1/functions/f/aliases/live", json!({"version": "2"}))
        .await;
    assert_eq!(
        invoke(&api, "f", "?qualifier=live", json!({})).await.body["v"],
        2
    );

    // A 10 % gray release, counted over 10,000 calls: far above the tenant's default
    // API rate of 50/s, which does not apply to invocations.
    api.put(
        "/v1/functions/f/aliases/live",
        json!({"version": "1", "additional_version_weights": {"2": 0.1}}),
    )
    .await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut twos = 0;
            for _ in 0..1250 {
                let r = invoke(&api, "f", "?qualifier=live", json!({})).await;
                assert_eq!(r.status, 200);
                if r.h("x-nimbus-executed-version") == Some("2") {
                    twos += 1;
                }
            }
            twos
        }));
    }
    let mut twos = 0;
    for t in tasks {
        twos += t.await.unwrap();
    }
    let share = twos as f64 / 10_000.0;
    assert!((0.08..=0.12).contains(&share), "version 2 got {share}");
    p.stop().await.unwrap();
}

#[tokio::test]
async fn concurrency_quotas() {
    let (p, api, _dir) = start(vec![]).await;
    let src = "import time\ndef handler(event, context):\n    time.sleep(0.8)\n    return 1\n";
    deploy(
        &api,
        "slow",
        "python3",
        "index.handler",
        &[("index.py", src)],
        json!({"reserved_concurrency": 1}),
    )
    .await;
    let (a, b) = tokio::join!(invoke(&api, "slow", "", json!({})), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        invoke(&api, "slow", "", json!({})).await
    });
    assert_eq!(a.status, 200);
    assert_eq!(
        (b.status, b.body["error"]["code"].as_str()),
        (429, Some("ConcurrencyLimitExceeded"))
    );
    // The slot is free again.
    assert_eq!(invoke(&api, "slow", "", json!({})).await.status, 200);
    p.stop().await.unwrap();
}

#[tokio::test]
async fn nodejs_and_provided_runtimes() {
    let (p, api, _dir) = start(vec![]).await;
    let js = "exports.handler = async (event, context) => ({ node: true, event, id: context.awsRequestId, left: context.getRemainingTimeInMillis() > 0 });\n";
    deploy(
        &api,
        "js",
        "nodejs",
        "index.handler",
        &[("index.js", js)],
        json!({}),
    )
    .await;
    let r = invoke(&api, "js", "", json!({"a": 1})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["node"], true);
    assert_eq!(r.body["event"], json!({"a": 1}));
    assert_eq!(r.body["id"], r.h("x-nimbus-request-id").unwrap());
    assert_eq!(r.body["left"], true);
    let js_err = "exports.handler = async () => { throw new TypeError('nope'); };\n";
    deploy(
        &api,
        "jserr",
        "nodejs",
        "index.handler",
        &[("index.js", js_err)],
        json!({}),
    )
    .await;
    let r = invoke(&api, "jserr", "", json!({})).await;
    assert_eq!(
        (r.h("x-nimbus-function-error"), r.body["errorType"].as_str()),
        (Some("Unhandled"), Some("TypeError"))
    );

    // `provided`: the package's own bootstrap speaks the Runtime API (here with curl).
    let bootstrap = r#"#!/bin/sh
set -eu
API="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime"
while true; do
  HEADERS=$(mktemp)
  EVENT=$(curl -sS -D "$HEADERS" "$API/invocation/next")
  ID=$(grep -i '^lambda-runtime-aws-request-id:' "$HEADERS" | cut -d' ' -f2 | tr -d '\r')
  curl -sS -X POST "$API/invocation/$ID/response" -d "{\"provided\":true,\"handler\":\"$_HANDLER\",\"event\":$EVENT}" > /dev/null
  rm -f "$HEADERS"
done
"#;
    let zip = {
        use std::io::Write;
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut w = zip::ZipWriter::new(&mut buf);
        w.start_file(
            "bootstrap",
            zip::write::SimpleFileOptions::default().unix_permissions(0o755),
        )
        .unwrap();
        w.write_all(bootstrap.as_bytes()).unwrap();
        w.finish().unwrap();
        buf.into_inner()
    };
    let r = api.post("/v1/functions", json!({"name": "sh", "runtime": "provided", "handler": "my.handler", "code": {"zip_base64": b64(&zip)}})).await;
    assert_eq!(
        api.wait_task(r.body["task_id"].as_str().unwrap()).await["state"],
        "Succeeded"
    );
    let r = invoke(&api, "sh", "", json!({"b": 2})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body,
        json!({"provided": true, "handler": "my.handler", "event": {"b": 2}})
    );
    p.stop().await.unwrap();
}

#[tokio::test]
async fn idle_instances_scale_to_zero_and_init_errors_are_reported() {
    let (p, api, _dir) = start(vec![("NIMBUS_NODE__KEEP_ALIVE_MS", "300")]).await;
    deploy(
        &api,
        "f",
        "python3",
        "index.handler",
        &[("index.py", PY_ECHO)],
        json!({}),
    )
    .await;
    assert_eq!(
        invoke(&api, "f", "", json!({}))
            .await
            .h("x-nimbus-cold-start"),
        Some("true")
    );
    assert_eq!(p.node.instances(), 1);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(p.node.instances(), 0, "the idle instance was reaped");
    assert_eq!(
        invoke(&api, "f", "", json!({}))
            .await
            .h("x-nimbus-cold-start"),
        Some("true")
    );

    // A module that fails to import: the call reports it as the function's error.
    deploy(
        &api,
        "broken",
        "python3",
        "index.handler",
        &[("index.py", "import no_such_module\n")],
        json!({}),
    )
    .await;
    assert_failed_import(&api, "broken").await;
    p.stop().await.unwrap();
}

#[tokio::test]
async fn a_burst_queues_for_instances_instead_of_failing() {
    // Two instances at most on this node: ten parallel calls share them.
    let (p, api, _dir) = start(vec![("NIMBUS_NODE__MAX_INSTANCES", "2")]).await;
    let src = "import time, os\nINSTANCE = os.urandom(8).hex()\ndef handler(event, context):\n    time.sleep(0.1)\n    return INSTANCE\n";
    deploy(
        &api,
        "burst",
        "python3",
        "index.handler",
        &[("index.py", src)],
        json!({}),
    )
    .await;
    let calls: Vec<_> = (0..10)
        .map(|_| invoke(&api, "burst", "", json!({})))
        .collect();
    let outs = futures::future::join_all(calls).await;
    let mut pids = std::collections::HashSet::new();
    for o in &outs {
        assert_eq!(o.status, 200, "{:?}", o.body);
        pids.insert(o.body.to_string());
    }
    assert!(
        pids.len() <= 2,
        "at most two instances served the burst: {pids:?}"
    );
    let cold = outs
        .iter()
        .filter(|o| o.h("x-nimbus-cold-start") == Some("true"))
        .count();
    assert_eq!(
        cold,
        pids.len(),
        "only the calls that got a new instance report a cold start"
    );
    assert!(p.node.instances() <= 2);
    p.stop().await.unwrap();
}

#[tokio::test]
async fn the_sandbox_confines_functions() {
    let (p, api, dir) = start(vec![]).await;
    assert!(p.node.sandbox.isolated(), "sandboxed by default");
    assert_eq!(
        p.node.sandbox.unavailable(),
        None,
        "the test machine runs the node as root with writable cgroups"
    );
    assert!(
        p.node.sandbox.limited(),
        "cgroup memory and pids controllers are writable here"
    );
    let probe = r#"
import os
def handler(event, context):
    out = {"cwd": os.getcwd(), "root": sorted(os.listdir("/")), "uid": os.getuid(), "own": open("index.py").read()[:6]}
    for name, path in event.items():
        try:
            open(path).read(); out[name] = "READABLE"
        except OSError as e:
            out[name] = type(e).__name__
    return out
"#;
    deploy(
        &api,
        "probe",
        "python3",
        "index.handler",
        &[("index.py", probe)],
        json!({}),
    )
    .await;
    deploy(
        &api,
        "secret",
        "python3",
        "index.handler",
        &[(
            "index.py",
            "TOKEN = 'other-function-secret'\ndef handler(e, c):\n    return TOKEN\n",
        )],
        json!({}),
    )
    .await;
    let secret_sha = api.get("/v1/functions/secret").await.body["function"]["code_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let data = dir.path();
    let r = invoke(
        &api,
        "probe",
        "",
        json!({
            "other_code": data.join(format!("node/code/{secret_sha}/index.py")),
            "database": data.join("nimbus.db"),
            "admin_key": data.join("admin.key"),
            "root_home": "/root/.bashrc",
            "shadow": "/etc/shadow",
        }),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let b = &r.body;
    assert_eq!(b["cwd"], "/var/task");
    assert_eq!(b["own"], "\nimpor");
    assert_eq!(b["uid"], 65534, "runs as nobody");
    for k in ["other_code", "database", "admin_key", "root_home", "shadow"] {
        assert_eq!(b[k], "FileNotFoundError", "{k}: {b}");
    }
    let root: Vec<&str> = b["root"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(!root.contains(&"root"), "{root:?}");

    // 10 GB in a 128 MB function fails in the function; the node goes on.
    let hog =
        "def handler(event, context):\n    b = bytearray(10 * 1024 ** 3)\n    return len(b)\n";
    deploy(
        &api,
        "hog",
        "python3",
        "index.handler",
        &[("index.py", hog)],
        json!({"memory_mb": 128, "timeout_ms": 20000}),
    )
    .await;
    let r = invoke(&api, "hog", "", json!({})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.h("x-nimbus-function-error"),
        Some("Unhandled"),
        "{:?}",
        r.body
    );

    // A fork bomb meets the process limit.
    let bomb = r#"
import os, time
def handler(event, context):
    n = 0
    try:
        for _ in range(100000):
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
            n += 1
    except OSError as e:
        return {"forked": n, "error": e.strerror}
    return {"forked": n}
"#;
    deploy(
        &api,
        "bomb",
        "python3",
        "index.handler",
        &[("index.py", bomb)],
        json!({"timeout_ms": 20000}),
    )
    .await;
    let r = invoke(&api, "bomb", "", json!({})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let forked = r.body["forked"].as_u64().unwrap();
    assert!(forked < 300, "{:?}", r.body);
    assert!(r.body["error"].is_string(), "{:?}", r.body);

    // Everything else still works.
    assert_eq!(
        invoke(&api, "secret", "", json!({})).await.body,
        "other-function-secret"
    );
    p.stop().await.unwrap();
}

/// The official AWS runtime interface client for python, unmodified, as `provided`.
/// `.ci/run` installs it into `$NIMBUS_TEST_AWSLAMBDARIC`; otherwise the test
/// installs it with pip (from PyPI) itself.
#[tokio::test]
async fn the_official_python_runtime_client_works_unmodified() {
    let dir = common::python_package(
        "NIMBUS_TEST_AWSLAMBDARIC",
        "awslambdaric",
        "awslambdaric==4.2.2",
    );
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    fn walk(root: &std::path::Path, d: &std::path::Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().unwrap() != "__pycache__" {
                    walk(root, &p, out);
                }
            } else {
                out.push((
                    p.strip_prefix(root).unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    walk(&dir, &dir, &mut files);
    files.push(("index.py".into(), b"def handler(event, context):\n    return {'ric': True, 'event': event, 'id': context.aws_request_id}\n".to_vec()));
    let bootstrap = "#!/bin/sh\ncd \"$LAMBDA_TASK_ROOT\"\nexport PYTHONPATH=\"$LAMBDA_TASK_ROOT\"\nexec /usr/bin/python3 -m awslambdaric index.handler\n";
    let zip = {
        use std::io::Write;
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut w = zip::ZipWriter::new(&mut buf);
        let exec = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
        w.start_file("bootstrap", exec).unwrap();
        w.write_all(bootstrap.as_bytes()).unwrap();
        for (name, data) in &files {
            w.start_file(name.as_str(), exec).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap();
        buf.into_inner()
    };
    let (p, api, _tmp) = start(vec![]).await;
    let r = api.post("/v1/functions", json!({"name": "ric", "runtime": "provided", "handler": "index.handler", "code": {"zip_base64": b64(&zip)}})).await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(
        api.wait_task(r.body["task_id"].as_str().unwrap()).await["state"],
        "Succeeded"
    );
    for i in 0..3 {
        let r = invoke(&api, "ric", "", json!({"i": i})).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body["ric"], true, "{:?}", r.body);
        assert_eq!(r.body["event"], json!({"i": i}));
        assert_eq!(r.body["id"], r.h("x-nimbus-request-id").unwrap());
    }
    p.stop().await.unwrap();
}

/// `nimbus up` with a relative data directory (the default is `./nimbus-data`).
#[tokio::test]
async fn a_relative_data_dir_works() {
    // A directory under the test's working directory, named relatively.
    let dir = tempfile::Builder::new()
        .prefix("reltest")
        .tempdir_in(".")
        .unwrap();
    let relative = std::path::PathBuf::from(".").join(dir.path().file_name().unwrap());
    assert!(relative.is_relative());
    let p = Platform::start(UpOptions {
        data_dir: relative,
        listen: "127.0.0.1:0".parse().unwrap(),
        bus: None,
        overrides: vec![],
    })
    .await
    .unwrap();
    let admin = Api::new(&p.url, p.admin_key.as_deref());
    let api = admin.with_token(&admin.tenant("acme").await);
    deploy(
        &api,
        "rel",
        "python3",
        "index.handler",
        &[("index.py", "def handler(e, c):\n    return 'ok'\n")],
        json!({}),
    )
    .await;
    let r = invoke(&api, "rel", "", json!({})).await;
    assert_eq!(
        (r.status, r.body.clone()),
        (200, json!("ok")),
        "{:?}",
        r.h("x-nimbus-function-error")
    );
    p.stop().await.unwrap();
}

/// A sandboxed instance has a network of its own: nothing of the node is reachable
/// (not even its loopback), until the tenant allows egress, and then only through the
/// egress proxy and only to what the rules allow.
#[tokio::test]
async fn the_network_is_the_tenants() {
    // The operator opens the node's 127.0.0.1 to tenants' rules (closed by default:
    // see the hostile-tenant suite).
    let (p, api, _dir) = start(vec![(
        "NIMBUS_NODE__EGRESS_OPEN_NETWORKS",
        r#"["127.0.0.1/32"]"#,
    )])
    .await;
    assert_eq!(p.node.sandbox.unavailable(), None);
    // A server on the node's loopback, standing for anything outside the sandbox.
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = server.local_addr().unwrap().port();
    tokio::spawn(async move {
        let app =
            axum::Router::new().route("/", axum::routing::get(|| async { "hello-from-host" }));
        axum::serve(server, app).await.unwrap();
    });
    let probe = r#"
import os, socket, urllib.request
def attempt(f):
    try:
        return f()
    except Exception as e:
        return "failed: " + type(e).__name__ + " " + str(e)[:80]
def direct(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=1)
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    return s.recv(1000).decode().split("\r\n\r\n", 1)[-1]
def via_proxy(url):
    proxy = os.environ.get("HTTP_PROXY")
    if not proxy:
        return "no proxy"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
    return opener.open(url, timeout=2).read().decode()
def tunnel(port):
    host, pport = os.environ["HTTP_PROXY"][len("http://"):].split(":")
    s = socket.create_connection((host, int(pport)), timeout=2)
    s.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n" % port)
    if not s.recv(1000).startswith(b"HTTP/1.1 200"):
        return "refused"
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(1000)
        if not chunk:
            break
        data += chunk
    return data.decode().split("\r\n\r\n", 1)[-1]
def handler(event, context):
    port = event["port"]
    out = {
        "direct": attempt(lambda: direct(port)),
        "allowed": attempt(lambda: via_proxy("http://127.0.0.1:%d/" % port)),
        "denied": attempt(lambda: via_proxy("http://127.0.0.2:%d/" % port)),
    }
    if os.environ.get("HTTP_PROXY"):
        out["tunnel"] = attempt(lambda: tunnel(port))
    return out
"#;
    deploy(
        &api,
        "net",
        "python3",
        "index.handler",
        &[("index.py", probe)],
        json!({}),
    )
    .await;
    let r = invoke(&api, "net", "", json!({"port": port})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(
        r.body["direct"].as_str().unwrap().starts_with("failed"),
        "no egress: the node's loopback is out of reach: {:?}",
        r.body
    );
    assert_eq!(r.body["allowed"], "no proxy", "{:?}", r.body);

    // Allow the node's 127.0.0.1 only.
    let r = api
        .put("/v1/network", json!({"egress": ["127.0.0.1/32"]}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = invoke(&api, "net", "", json!({"port": port})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.h("x-nimbus-cold-start"),
        Some("true"),
        "new rules, new instance"
    );
    assert!(
        r.body["direct"].as_str().unwrap().starts_with("failed"),
        "still nothing but the proxy: {:?}",
        r.body
    );
    assert_eq!(r.body["allowed"], "hello-from-host", "{:?}", r.body);
    assert!(
        r.body["denied"].as_str().unwrap().contains("403"),
        "{:?}",
        r.body
    );
    assert_eq!(r.body["tunnel"], "hello-from-host", "{:?}", r.body);
    p.stop().await.unwrap();
}

/// The official AWS Rust runtime client (`lambda_runtime`), unmodified, as `provided`:
/// the example `lambda_rust_echo` is the zip's `bootstrap`.
#[tokio::test]
async fn the_official_rust_runtime_client_works_unmodified() {
    // cargo puts examples beside `deps/`, where this test binary is.
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples/lambda_rust_echo");
    let bytes = std::fs::read(&bin).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; `cargo test --workspace` builds it (or cargo build -p nimbus --example lambda_rust_echo)",
            bin.display()
        )
    });
    let (p, api, _dir) = start(vec![]).await;
    let zip = code_service::package::build_zip(&[("bootstrap", &bytes)]);
    let r = api
        .post(
            "/v1/functions",
            json!({"name": "rusty", "runtime": "provided", "handler": "bootstrap", "memory_mb": 256,
                   "code": {"zip_base64": b64(&zip)}}),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    let t = api.wait_task(r.body["task_id"].as_str().unwrap()).await;
    assert_eq!(t["state"], "Succeeded", "{t}");
    let r = invoke(&api, "rusty", "", json!({"hello": "rust"})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["echo"], json!({"hello": "rust"}));
    assert_eq!(
        r.body["request_id"].as_str(),
        r.h("x-nimbus-request-id"),
        "{:?}",
        r.body
    );
    assert!(
        r.body["arn"].as_str().unwrap().contains(":function:rusty"),
        "{:?}",
        r.body
    );
    assert_eq!(r.body["function"], "rusty");
    assert_eq!(r.body["memory"], 256);
    let deadline = r.body["deadline_ms"].as_u64().unwrap() as i64;
    assert!(deadline > nimbus_core::now_ms(), "{deadline}");
    // Warm, and errors reported the Lambda way.
    let r = invoke(&api, "rusty", "", json!({"fail": true})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.h("x-nimbus-cold-start"), Some("false"));
    assert_eq!(r.h("x-nimbus-function-error"), Some("Unhandled"));
    assert_eq!(
        r.body["errorMessage"], "the event asked to fail",
        "{:?}",
        r.body
    );
    let r = invoke(&api, "rusty", "", json!({"again": 1})).await;
    assert_eq!(r.body["echo"], json!({"again": 1}));
    p.stop().await.unwrap();
}

/// The shipped runtimes send a call's answer and the request for the next call in
/// one write: after an error, a large answer and a large event, the same instance
/// goes on serving.
#[tokio::test]
async fn shipped_runtimes_keep_serving_on_one_connection() {
    let (p, api, _dir) = start(vec![]).await;
    let py = "def handler(event, context):\n    if event.get('fail'):\n        raise ValueError('asked to')\n    if event.get('big'):\n        return {'big': 'x' * event['big']}\n    return {'n': len(str(event))}\n";
    let js = "exports.handler = async (event) => {\n  if (event.fail) throw new RangeError('asked to');\n  if (event.big) return { big: 'x'.repeat(event.big) };\n  return { n: JSON.stringify(event).length };\n};\n";
    deploy(
        &api,
        "py",
        "python3",
        "index.handler",
        &[("index.py", py)],
        json!({}),
    )
    .await;
    deploy(
        &api,
        "js",
        "nodejs",
        "index.handler",
        &[("index.js", js)],
        json!({}),
    )
    .await;
    for (name, error) in [("py", "ValueError"), ("js", "RangeError")] {
        let first = invoke(&api, name, "", json!({})).await;
        assert_eq!(first.status, 200, "{name}: {:?}", first.body);
        let r = invoke(&api, name, "", json!({"fail": true})).await;
        assert_eq!(
            (r.h("x-nimbus-function-error"), r.body["errorType"].as_str()),
            (Some("Unhandled"), Some(error)),
            "{name}"
        );
        // Larger than any one read of the socket, both ways.
        let r = invoke(&api, name, "", json!({"big": 3_000_000})).await;
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(
            r.body["big"].as_str().map(str::len),
            Some(3_000_000),
            "{name}"
        );
        let pad = "y".repeat(2_000_000);
        let r = invoke(&api, name, "", json!({ "pad": pad })).await;
        assert_eq!(r.status, 200, "{name}");
        assert!(
            r.body["n"].as_u64().unwrap() > 2_000_000,
            "{name}: {:?}",
            r.body
        );
        for _ in 0..20 {
            let r = invoke(&api, name, "", json!({"k": 1})).await;
            assert_eq!(
                (r.status, r.h("x-nimbus-cold-start")),
                (200, Some("false")),
                "{name}: every call after the first ran on the same warm instance"
            );
        }
    }
    // nodejs reports a module that fails to load on the same connection.
    let broken = "require('no_such_module');\nexports.handler = async () => 1;\n";
    deploy(
        &api,
        "jsbroken",
        "nodejs",
        "index.handler",
        &[("index.js", broken)],
        json!({}),
    )
    .await;
    assert_failed_import(&api, "jsbroken").await;
    p.stop().await.unwrap();
}

/// A call of a function whose module imports `no_such_module` reports that as the
/// function's error.
async fn assert_failed_import(api: &Api, name: &str) {
    let r = invoke(api, name, "", json!({})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.h("x-nimbus-function-error"), Some("Unhandled"));
    let message = r.body["errorMessage"].as_str().unwrap_or_default();
    assert!(message.contains("no_such_module"), "{:?}", r.body);
}
