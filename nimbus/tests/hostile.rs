//! The hostile-tenant suite: a tenant who has read the source tries to get out of its
//! sandbox, to reach the platform or another tenant, and to starve the others. Every
//! test runs `nimbus up` with its real sandbox (`docs/security.md` maps each threat
//! to its test here).

mod common;

use std::time::{Duration, Instant};

use common::{Api, deploy, deploy_bytes, invoke};
use serde_json::{Value, json};

async fn start(overrides: &[(&str, &str)]) -> (nimbus::Platform, Api, Api, tempfile::TempDir) {
    let (p, owner, dir) = common::up(overrides).await;
    assert_eq!(
        p.node.sandbox.unavailable(),
        None,
        "the suite needs the real sandbox (root, writable cgroups)"
    );
    let admin = Api::new(&p.url, p.admin_key.as_deref());
    (p, owner, admin, dir)
}

/// A second tenant, the bystander whose service must not suffer.
async fn bystander(admin: &Api) -> Api {
    admin.with_token(&admin.tenant("bystander").await)
}

/// Sends `{}` to a function asynchronously.
async fn send_async(api: &Api, name: &str) -> common::Out {
    common::invoke_raw(
        api,
        name,
        "",
        b"{}".to_vec(),
        &[("x-nimbus-invocation-type", "async")],
    )
    .await
}

/// Queues `{}` for a function; its invocation id.
async fn queued(api: &Api, name: &str) -> String {
    let r = send_async(api, name).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    r.body["invocation_id"].as_str().unwrap().to_string()
}

/// The resident set of this process (the node, in `nimbus up`), MB.
fn rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024
}

/// `LD_PRELOAD` in a function's environment reaches only the function's own process,
/// inside its sandbox: the library's constructor runs there (it leaves a marker in
/// the sandbox's /tmp), and nothing runs on the host side (no marker on the host).
#[tokio::test]
async fn env_injection_stays_inside_the_sandbox() {
    let (p, api, _admin, dir) = start(&[]).await;
    let host_marker = dir.path().join("preload-ran-on-the-host");
    let lib_src = dir.path().join("evil.c");
    let lib = dir.path().join("evil.so");
    std::fs::write(
        &lib_src,
        format!(
            r#"#include <stdio.h>
__attribute__((constructor)) static void evil(void) {{
    FILE *f = fopen("{}", "w"); if (f) {{ fputs("host", f); fclose(f); }}
    FILE *g = fopen("/tmp/preload-ran", "w"); if (g) {{ fputs("inside", g); fclose(g); }}
}}"#,
            host_marker.display()
        ),
    )
    .unwrap();
    let cc = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&lib_src)
        .status()
        .expect("a C compiler (cc) builds the hostile library");
    assert!(cc.success());
    let so = std::fs::read(&lib).unwrap();
    let handler = b"import os\ndef handler(event, context):\n    return {\"inside\": os.path.exists(\"/tmp/preload-ran\"), \"preload\": os.environ.get(\"LD_PRELOAD\")}\n";
    for (name, var) in [("pre", "LD_PRELOAD"), ("audit", "LD_AUDIT")] {
        deploy_bytes(
            &api,
            name,
            "python3",
            "index.handler",
            &[("index.py", handler), ("evil.so", &so)],
            json!({"env": {var: "/var/task/evil.so", "LD_LIBRARY_PATH": "/var/task", "GCONV_PATH": "/var/task"}}),
        )
        .await;
        let r = invoke(&api, name, "", json!({})).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let r = invoke(&api, "pre", "", json!({})).await;
    assert_eq!(
        r.body["inside"], true,
        "the preload ran, inside: {:?}",
        r.body
    );
    assert!(
        !host_marker.exists(),
        "tenant code ran on the host side of the sandbox"
    );
    // Names the runtime sets are refused outright.
    for var in [
        "_HANDLER",
        "LAMBDA_TASK_ROOT",
        "AWS_LAMBDA_RUNTIME_API",
        "NIMBUS_SPARE",
    ] {
        let r = api
            .patch("/v1/functions/pre", json!({"env": {var: "x"}}))
            .await;
        assert_eq!(r.status, 400, "{var}: {r:?}");
    }
    p.stop().await.unwrap();
}

/// Inside: no capabilities, `no_new_privs`, the seccomp filter (no `unshare`,
/// `mount`, `ptrace`, `bpf`, `keyctl`), a `/proc` of its own processes only, none of
/// the node's files, another instance's Runtime API out of reach, and a bounded /tmp.
#[tokio::test]
async fn the_inside_is_confined() {
    let (p, api, _admin, dir) = start(&[]).await;
    let probe = r#"
import ctypes, errno, os, socket
libc = ctypes.CDLL(None, use_errno=True)
def call(f, *args):
    r = f(*args)
    return "ok" if r == 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return line.split()[1]
def write(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def handler(event, context):
    out = {
        "proc_comm": write("/proc/self/comm"),
        "dev_null": write("/dev/null"),
        "tmp_write": write("/tmp/probe"),
        "uid": os.getuid(),
        "cap_eff": status("CapEff"),
        "no_new_privs": status("NoNewPrivs"),
        "seccomp": status("Seccomp"),
        "unshare_user": call(libc.unshare, 0x10000000),
        "unshare_net": call(libc.unshare, 0x40000000),
        "mount": call(libc.mount, b"none", b"/tmp", b"tmpfs", 0, None),
        "ptrace": call(libc.ptrace, 0, 0, None, None),
        "bpf": call(libc.syscall, 321, 0, None, 0),
        "keyctl": call(libc.syscall, 250, 0, 0, 0),
        "pid1": open("/proc/1/cmdline", "rb").read().split(b"\0")[0].decode(),
        "pids": sorted(int(d) for d in os.listdir("/proc") if d.isdigit()),
        "run": os.listdir("/run/nimbus"),
        "hostname": socket.gethostname(),
    }
    for name, path in event["paths"].items():
        try:
            open(path).read(); out[name] = "READABLE"
        except OSError as e:
            out[name] = type(e).__name__
    try:
        with open("/tmp/fill", "wb") as f:
            for _ in range(300):
                f.write(b"x" * (1 << 20))
        out["tmp"] = "filled 300 MB"
    except OSError as e:
        out["tmp"] = errno.errorcode.get(e.errno, str(e.errno))
    os.remove("/tmp/fill") if os.path.exists("/tmp/fill") else None
    return out
"#;
    deploy(
        &api,
        "probe",
        "python3",
        "index.handler",
        &[("index.py", probe)],
        json!({"memory_mb": 256}),
    )
    .await;
    let data = dir.path();
    let r = invoke(
        &api,
        "probe",
        "",
        json!({"paths": {
            "admin_key": data.join("admin.key"),
            "secrets_key": data.join("secrets.key"),
            "database": data.join("nimbus.db"),
            "node_environ": format!("/proc/{}/environ", std::process::id()),
            "shadow": "/etc/shadow",
        }}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let b = &r.body;
    assert_eq!(b["uid"], 65534, "{b}");
    assert_eq!(b["cap_eff"], "0000000000000000", "{b}");
    assert_eq!(b["no_new_privs"], "1", "{b}");
    assert_eq!(b["seccomp"], "2", "filtered: {b}");
    for call in [
        "unshare_user",
        "unshare_net",
        "mount",
        "ptrace",
        "bpf",
        "keyctl",
    ] {
        assert_eq!(b[call], "EPERM", "{call}: {b}");
    }
    assert!(
        b["pid1"].as_str().unwrap().contains("nimbus"),
        "PID 1 is the sandbox's own init: {b}"
    );
    assert!(
        b["pids"].as_array().unwrap().len() < 10,
        "only the instance's processes: {b}"
    );
    assert_eq!(
        b["run"],
        json!(["api.sock"]),
        "only its own Runtime API: {b}"
    );
    assert_eq!(b["hostname"], "nimbus");
    for k in [
        "admin_key",
        "secrets_key",
        "database",
        "node_environ",
        "shadow",
    ] {
        assert_eq!(b[k], "FileNotFoundError", "{k}: {b}");
    }
    assert_eq!(b["tmp"], "ENOSPC", "/tmp is half the memory: {b}");
    assert_eq!(b["dev_null"], "ok", "{b}");
    assert_eq!(b["tmp_write"], "ok", "{b}");
    // Landlock: the instance writes only to /tmp, /dev/shm and its devices, so not
    // even its own /proc entries (which its user could otherwise write).
    let landlock = landlock_abi() > 0;
    assert_eq!(
        b["proc_comm"],
        if landlock { "EACCES" } else { "ok" },
        "landlock {landlock}: {b}"
    );
    p.stop().await.unwrap();
}

/// The Landlock ABI of this machine's kernel (0 without Landlock).
#[allow(unsafe_code)]
fn landlock_abi() -> i64 {
    // SAFETY: with a null attribute and flag 1 the call only returns the version.
    let v = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    v.max(0)
}

/// Egress rules cannot open the platform: loopback, private, link-local and the
/// metadata address are refused through the proxy whatever the rules allow, by IP
/// and by name, plain and tunnelled; the gateway's own port never answers.
#[tokio::test]
async fn egress_never_reaches_the_platform() {
    let (p, api, _admin, _dir) = start(&[]).await;
    let gw_port = p.addr.port();
    let reg_port = p.registry_addr.port();
    let r = api
        .put(
            "/v1/network",
            json!({"egress": ["0.0.0.0/0", "::/0", "localhost", "127.0.0.0/8", "169.254.169.254"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let probe = r#"
import os, socket, urllib.request
def via_proxy(url):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": os.environ["HTTP_PROXY"]}))
    try:
        return str(opener.open(url, timeout=3).status)
    except urllib.error.HTTPError as e:
        return str(e.code)
    except Exception as e:
        return "failed: " + type(e).__name__
def tunnel(host, port):
    h, pp = os.environ["HTTP_PROXY"][len("http://"):].split(":")
    s = socket.create_connection((h, int(pp)), timeout=3)
    s.sendall(b"CONNECT %s:%d HTTP/1.1\r\n\r\n" % (host.encode(), port))
    return s.recv(100).decode().split("\r\n")[0]
def direct(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1)
        return "connected"
    except OSError as e:
        return "failed"
def handler(event, context):
    gw, reg = event["gw"], event["reg"]
    return {
        "gw_ip": via_proxy("http://127.0.0.1:%d/healthz" % gw),
        "gw_name": via_proxy("http://localhost:%d/healthz" % gw),
        "gw_mapped": via_proxy("http://[::ffff:127.0.0.1]:%d/healthz" % gw),
        "gw_decimal": via_proxy("http://2130706433:%d/healthz" % gw),
        "metadata": via_proxy("http://169.254.169.254/latest/meta-data/"),
        "private": via_proxy("http://10.0.0.1/"),
        "tunnel_gw": tunnel("127.0.0.1", gw),
        "tunnel_registry": tunnel("localhost", reg),
        "direct_gw": direct(gw),
    }
"#;
    deploy(
        &api,
        "egress",
        "python3",
        "index.handler",
        &[("index.py", probe)],
        json!({"timeout_ms": 20000}),
    )
    .await;
    let r = invoke(&api, "egress", "", json!({"gw": gw_port, "reg": reg_port})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let b = r.body.as_object().unwrap();
    for (k, v) in b {
        let v = v.as_str().unwrap();
        assert!(!v.contains("200"), "{k} got through: {v}");
        if k != "direct_gw" {
            assert!(v.contains("403"), "{k}: {v}");
        }
    }
    assert_eq!(b["direct_gw"], "failed");
    p.stop().await.unwrap();
}

/// The registry refuses anyone without the region's token, and a live node's id to
/// anyone at another address.
#[tokio::test]
async fn the_registry_cannot_be_hijacked() {
    use proto::node::{NodeCapacity, RegisterRequest};
    let (p, _api, _admin, _dir) = start(&[]).await;
    let url = format!("http://{}", p.registry_addr);
    let hijack = |session: &str| RegisterRequest {
        node_id: "local".into(),
        address: "10.66.66.66:1".into(),
        region: "local".into(),
        zone: "x".into(),
        capacity: Some(NodeCapacity {
            memory_mb: 1 << 20,
            instance_slots: 1000,
        }),
        session: session.into(),
    };
    let mut anonymous = common::registry_client(&url, None).await.unwrap();
    let e = anonymous.register(hijack("evil")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let e = anonymous
        .list_nodes(proto::node::ListNodesRequest { include_dead: true })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // Even with the token, the in-process node's id stays its own while it lives.
    let mut insider = common::registry_client(&url, p.config.secrets.key.as_deref())
        .await
        .unwrap();
    common::cluster::eventually(20, "the in-process node registered", || {
        let mut c = insider.clone();
        async move {
            c.list_nodes(proto::node::ListNodesRequest {
                include_dead: false,
            })
            .await
            .is_ok_and(|l| l.into_inner().nodes.iter().any(|n| n.node_id == "local"))
        }
    })
    .await;
    let e = insider.register(hijack("evil")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    p.stop().await.unwrap();
}

/// A function printing an endless line, then a flood of lines: the node's memory
/// stays bounded, the flood is cut at the tenant's log rate, and the other tenant's
/// calls are served as usual meanwhile.
#[tokio::test]
async fn an_output_flood_hurts_only_its_tenant() {
    let (p, api, admin, _dir) = start(&[("NIMBUS_NODE__LOG_LINES_PER_SEC", "200")]).await;
    let other = bystander(&admin).await;
    deploy(
        &api,
        "flood",
        "python3",
        "index.handler",
        &[(
            "index.py",
            "import sys\ndef handler(event, context):\n    for _ in range(200):\n        sys.stdout.write('x' * (1 << 20))\n    sys.stdout.write('\\n')\n    for i in range(200000):\n        print(i)\n    sys.stdout.flush()\n    return 'done'\n",
        )],
        json!({"timeout_ms": 60000, "memory_mb": 256}),
    )
    .await;
    deploy(
        &other,
        "calm",
        "python3",
        "index.handler",
        &[(
            "index.py",
            "def handler(event, context):\n    return 'calm'\n",
        )],
        json!({}),
    )
    .await;
    assert_eq!(invoke(&other, "calm", "", json!({})).await.status, 200);
    let before = rss_mb();
    let flood = {
        let api = api.clone();
        tokio::spawn(async move { invoke(&api, "flood", "", json!({})).await })
    };
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        let r = invoke(&other, "calm", "", json!({})).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body, "calm");
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = flood.await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    let grown = rss_mb().saturating_sub(before);
    assert!(
        grown < 150,
        "the node grew by {grown} MB reading 200 MB of one line"
    );
    assert!(
        worst < Duration::from_secs(1),
        "the other tenant's warm calls took up to {worst:?} during the flood"
    );
    // The flood's log says what was dropped; the bystander's log is untouched.
    common::cluster::eventually(20, "the dropped-lines note", || {
        let api = api.clone();
        async move {
            let l = api.get("/v1/functions/flood/logs?limit=1000").await;
            l.body["lines"].as_array().is_some_and(|ls| {
                ls.iter().any(|x| {
                    x["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("lines were dropped"))
                })
            })
        }
    })
    .await;
    let l = other.get("/v1/functions/calm/logs").await;
    assert!(
        !l.body.to_string().contains("dropped"),
        "another tenant's note leaked: {}",
        l.body
    );
    p.stop().await.unwrap();
}

/// A tenant flooding async events behind `reserved_concurrency = 1`: its backlog is
/// capped (429), it holds no more than its share of the workers, and the other
/// tenant's event finishes within seconds.
#[tokio::test]
async fn an_async_flood_leaves_the_others_their_share() {
    let (p, api, admin, _dir) = start(&[]).await;
    let r = admin
        .put(
            "/v1/tenants/acme/limits",
            json!({"max_concurrency": 100, "rate_per_sec": 1000, "max_functions": 50,
                   "max_memory_mb": 1024, "max_queued_events": 400}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let other = bystander(&admin).await;
    deploy(
        &api,
        "slow",
        "python3",
        "index.handler",
        &[(
            "index.py",
            "import time\ndef handler(event, context):\n    time.sleep(2)\n    return 1\n",
        )],
        json!({"reserved_concurrency": 1, "timeout_ms": 10000}),
    )
    .await;
    deploy(
        &other,
        "quick",
        "python3",
        "index.handler",
        &[(
            "index.py",
            "def handler(event, context):\n    return 'quick'\n",
        )],
        json!({}),
    )
    .await;
    let mut accepted = 0;
    let mut throttled = 0;
    for _ in 0..450 {
        let r = send_async(&api, "slow").await;
        match r.status {
            202 => accepted += 1,
            429 => {
                assert_eq!(
                    r.body["error"]["code"], "TooManyRequestsException",
                    "{:?}",
                    r.body
                );
                throttled += 1;
            }
            s => panic!("{s}: {:?}", r.body),
        }
    }
    // Events that finished while the flood was sent made room for as many more.
    assert!(
        accepted <= 420,
        "{accepted} accepted past the backlog limit of 400"
    );
    assert!(throttled >= 30, "{throttled}");
    let t = Instant::now();
    let id = queued(&other, "quick").await;
    loop {
        let s = other.get(&format!("/v1/invocations/{id}")).await;
        if s.body["state"] == "Succeeded" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the bystander's event waited {:?} behind the flood: {}",
            t.elapsed(),
            s.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("bystander's async event done in {:?}", t.elapsed());
    p.stop().await.unwrap();
}

/// Queues, buckets, triggers and watches are counted per tenant.
#[tokio::test]
async fn per_tenant_resources_are_bounded() {
    let (p, api, admin, _dir) = start(&[]).await;
    let r = admin
        .put(
            "/v1/tenants/acme/limits",
            json!({"max_concurrency": 100, "rate_per_sec": 1000, "max_functions": 50,
                   "max_memory_mb": 1024, "max_queues": 2, "max_buckets": 1, "max_triggers": 1,
                   "max_queued_events": 10, "max_objects": 2}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    for q in ["a", "b"] {
        let r = api
            .raw(
                reqwest::Method::POST,
                &format!("/v1/queues/{q}/messages"),
                Some(b"m".to_vec().into()),
                None,
            )
            .await;
        assert_eq!(r.status, 202, "{r:?}");
    }
    let r = api
        .raw(
            reqwest::Method::POST,
            "/v1/queues/c/messages",
            Some(b"m".to_vec().into()),
            None,
        )
        .await;
    assert_eq!(r.status, 400, "a third queue: {r:?}");
    assert!(r.body.to_string().contains("queues"), "{r:?}");
    // Known queues still take messages.
    let r = api
        .raw(
            reqwest::Method::POST,
            "/v1/queues/a/messages",
            Some(b"m".to_vec().into()),
            None,
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");

    assert_eq!(api.put("/v1/buckets/one", json!({})).await.status, 201);
    let r = api.put("/v1/buckets/two", json!({})).await;
    assert_eq!(r.status, 400, "{r:?}");
    let put = |key: &str| {
        let (api, key) = (api.clone(), key.to_string());
        async move {
            api.raw(
                reqwest::Method::PUT,
                &format!("/v1/buckets/one/objects/{key}"),
                Some(b"o".to_vec().into()),
                None,
            )
            .await
        }
    };
    assert_eq!(put("a").await.status, 201);
    assert_eq!(put("b").await.status, 201);
    assert_eq!(
        put("a").await.status,
        201,
        "overwriting is not a new object"
    );
    let r = put("c").await;
    assert_eq!(r.status, 400, "a third object: {r:?}");
    let r = api
        .raw(
            reqwest::Method::DELETE,
            "/v1/buckets/one/objects/b",
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(put("c").await.status, 201, "deleting made room");

    deploy(
        &api,
        "t",
        "python3",
        "index.handler",
        &[("index.py", "def handler(e, c):\n    return 1\n")],
        json!({}),
    )
    .await;
    let trig = json!({"type": "timer", "cron": "0 0 1 1 *"});
    assert_eq!(
        api.post("/v1/functions/t/triggers", trig.clone())
            .await
            .status,
        201
    );
    let r = api.post("/v1/functions/t/triggers", trig).await;
    assert_eq!(r.status, 400, "{r:?}");

    // Provisioned concurrency within max_concurrency.
    let r = api
        .patch("/v1/functions/t", json!({"provisioned_concurrency": 101}))
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    let r = api
        .patch(
            "/v1/functions/t",
            json!({"scheduled_warmups": [{"cron": "0 9 * * *", "instances": 500, "duration_s": 60}]}),
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");

    // Watches: a tenant's share of the gateway's websockets, on an event that runs
    // for a while.
    deploy(
        &api,
        "sleepy",
        "python3",
        "index.handler",
        &[(
            "index.py",
            "import time\ndef handler(e, c):\n    time.sleep(30)\n",
        )],
        json!({"timeout_ms": 60000}),
    )
    .await;
    let id = queued(&api, "sleepy").await;
    let url = format!(
        "{}/v1/invocations/{id}/watch",
        p.url.replace("http://", "ws://")
    );
    let connect = || {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", api.token.as_ref().unwrap())
                .parse()
                .unwrap(),
        );
        tokio_tungstenite::connect_async(req)
    };
    let mut open = Vec::new();
    for _ in 0..api_gateway::watchers::PER_TENANT {
        open.push(connect().await.expect("a watch within the share").0);
    }
    let refused = connect().await.unwrap_err();
    assert!(refused.to_string().contains("429"), "{refused}");
    drop(open);
    p.stop().await.unwrap();
}

/// A client that sends its request head slowly is cut off; one that opens more
/// connections than the gateway holds gets the extra ones closed at once.
#[tokio::test]
async fn slow_and_greedy_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (p, _api, _admin, _dir) = start(&[]).await;
    let mut slow = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 256];
    // The rest of the head never comes: the gateway closes within its head timeout.
    let n = tokio::time::timeout(
        api_gateway::HEAD_TIMEOUT + Duration::from_secs(5),
        slow.read(&mut buf),
    )
    .await
    .expect("the gateway must close a slow head")
    .unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(t.elapsed() >= api_gateway::HEAD_TIMEOUT - Duration::from_secs(1));

    // The connection cap, on a gateway serving a trivial app with room for two.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (sd, shutdown) = nimbus_core::shutdown::channel();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let server = tokio::spawn(api_gateway::serve(
        listener,
        app,
        2,
        Duration::from_secs(30),
        shutdown,
    ));
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let n = c.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).contains("200"));
        held.push(c);
    }
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "a third connection is closed unanswered");
    drop(held);
    sd.fire();
    let _ = server.await;
    p.stop().await.unwrap();
}

/// With no usable sandbox (here: nimbus-init is missing), process functions do not
/// run at all — the error says why — and wasm is unaffected.
#[tokio::test]
async fn without_a_sandbox_nothing_runs_unsandboxed() {
    let (p, api, dir) = common::up(&[("NIMBUS_NODE__INIT_PATH", "/nonexistent/nimbus-init")]).await;
    assert!(p.node.sandbox.unavailable().is_some());
    let marker = dir.path().join("ran-unsandboxed");
    deploy(
        &api,
        "escape",
        "python3",
        "index.handler",
        &[(
            "index.py",
            &format!(
                "def handler(event, context):\n    open({:?}, 'w').write('x')\n    return 1\n",
                marker.display().to_string()
            ),
        )],
        json!({}),
    )
    .await;
    let r = invoke(&api, "escape", "", json!({})).await;
    assert_ne!(r.body, Value::from(1), "it ran: {:?}", r.body);
    assert!(
        r.body.to_string().contains("sandbox"),
        "the error says why: {:?}",
        r.body
    );
    assert!(!marker.exists(), "the function ran without its sandbox");
    p.stop().await.unwrap();
}

/// The invoker role runs functions but does not read their secrets; a request id
/// that would break the Runtime API's paths is replaced.
#[tokio::test]
async fn invokers_see_no_secrets_and_request_ids_are_clean() {
    let (p, api, _admin, _dir) = start(&[]).await;
    deploy(
        &api,
        "s",
        "python3",
        "index.handler",
        &[(
            "index.py",
            "def handler(e, c):\n    return c.aws_request_id\n",
        )],
        json!({"env": {"DB_PASSWORD": "hunter2"}}),
    )
    .await;
    let r = api
        .post("/v1/api-keys", json!({"role": "invoker", "name": "ci"}))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let invoker = api.with_token(r.body["api_key"].as_str().unwrap());
    for path in ["/v1/functions/s", "/v1/functions"] {
        let r = invoker.get(path).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            !r.body.to_string().contains("hunter2"),
            "{path}: {}",
            r.body
        );
        assert!(
            r.body.to_string().contains("DB_PASSWORD"),
            "names stay visible"
        );
    }
    assert!(
        api.get("/v1/functions/s")
            .await
            .body
            .to_string()
            .contains("hunter2")
    );
    let r = common::invoke_raw(
        &invoker,
        "s",
        "",
        b"{}".to_vec(),
        &[("x-request-id", "../../runtime/invocation/next")],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let rid = r.h("x-request-id").unwrap();
    assert!(!rid.contains('/'), "{rid}");
    assert_eq!(r.body, rid, "the function saw the clean id");
    let r = common::invoke_raw(
        &invoker,
        "s",
        "",
        b"{}".to_vec(),
        &[("x-request-id", "trace-42.a_b")],
    )
    .await;
    assert_eq!(r.body, "trace-42.a_b", "a clean id is kept end to end");
    p.stop().await.unwrap();
}

/// Finished events do not accumulate: past the retention they are deleted.
#[tokio::test]
async fn finished_invocations_are_pruned_after_retention() {
    let (p, api, _admin, _dir) = start(&[("NIMBUS_ROUTER__INVOCATION_RETENTION_S", "1")]).await;
    deploy(
        &api,
        "f",
        "python3",
        "index.handler",
        &[("index.py", "def handler(e, c):\n    return 1\n")],
        json!({}),
    )
    .await;
    let id = queued(&api, "f").await;
    common::cluster::eventually(20, "the event done", || {
        let (api, id) = (api.clone(), id.clone());
        async move { api.get(&format!("/v1/invocations/{id}")).await.body["state"] == "Succeeded" }
    })
    .await;
    common::cluster::eventually(20, "the finished event pruned", || {
        let (api, id) = (api.clone(), id.clone());
        async move { api.get(&format!("/v1/invocations/{id}")).await.status == 404 }
    })
    .await;
    p.stop().await.unwrap();
}
