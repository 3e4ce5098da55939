//! Multi-region, end to end, on the loopback cluster `deploy/local-cluster.sh start
//! --regions 2`: the global directory and two regions of 2 zones × 2 nodes, each
//! region on its own RabbitMQ vhost, PostgreSQL database, Redis database and s3s-fs.
//!
//! Identity is global (a key made or revoked in one region takes effect in the
//! other within 2 s; the propagation times are printed), resources are regional, a
//! region keeps serving when the directory or the other region is down, and a region
//! that comes back catches up with what it missed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Api, invoke, py_zip};
use serde_json::{Value, json};

/// The cluster, stopped (processes, databases, vhosts) when dropped.
struct LocalCluster {
    dir: tempfile::TempDir,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local-cluster.sh")
}

impl LocalCluster {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("bash")
            .arg(script())
            .args(args)
            .env("NIMBUS_BIN", env!("CARGO_BIN_EXE_nimbus"))
            .env("NIMBUS_CLUSTER_DIR", self.dir.path().join("cluster"))
            .env("NIMBUS_LOG", "info,sqlx=warn")
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "local-cluster.sh {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self) -> Value {
        let path = self.dir.path().join("cluster/cluster.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// SIGKILLs every process of a region (or of the directory).
    fn kill(&self, pids: &Value) {
        for p in pids.as_array().unwrap() {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
        }
    }

    fn dump_logs(&self) {
        let root = self.dir.path().join("cluster");
        for entry in common::walk(&root) {
            if entry.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&entry).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("===== {} =====", entry.display());
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .env("NIMBUS_CLUSTER_DIR", self.dir.path().join("cluster"))
            .status();
    }
}

/// Polls `f` every 10 ms until it holds; returns how long that took. Panics after
/// `secs`.
async fn within<F, Fut>(secs: u64, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "not within {secs} s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

async fn status(api: &Api, path: &str) -> u16 {
    api.get(path).await.status
}

async fn directory_link(api: &Api) -> Value {
    api.get("/readyz").await.body["directory"].clone()
}

/// Runs the `nimbus` CLI against `url` as `token`; returns its stdout.
fn nimbus_cli(url: &str, token: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_nimbus"))
        .args(args)
        .env("NIMBUS_URL", url)
        .env("NIMBUS_TOKEN", token)
        .env_remove("NIMBUS_REGION")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nimbus {args:?}: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn create_fn(api: &Api, name: &str, body: &str) {
    let r = api
        .post(
            "/v1/functions",
            json!({"name": name, "runtime": "python3", "handler": "index.handler",
                   "code": {"zip_base64": py_zip(body)}}),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    let t = api.wait_task(r.body["task_id"].as_str().unwrap()).await;
    assert_eq!(t["state"], "Succeeded", "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_regions_share_identity_and_survive_each_others_loss() {
    let c = LocalCluster {
        dir: tempfile::tempdir().unwrap(),
    };
    c.run(&["start", "--regions", "2"]);
    let cluster = c.json();
    let admin_key = cluster["admin_key"].as_str().unwrap().to_string();
    let (ra, rb) = (&cluster["regions"][0], &cluster["regions"][1]);
    let name_a = ra["name"].as_str().unwrap();
    let admin_a = Api::new(ra["url"].as_str().unwrap(), Some(&admin_key));
    let admin_b = Api::new(rb["url"].as_str().unwrap(), Some(&admin_key));
    assert_eq!(ra["zones"].as_array().unwrap().len(), 2);
    assert!(
        ra["pids"].as_array().unwrap().len() >= 12,
        "s3s-fs, 5 services, 2 code caches, 4 nodes: {ra}"
    );

    // Both regions follow the directory, and the admin key (made by the directory)
    // works in both.
    for admin in [&admin_a, &admin_b] {
        within(30, "the region's link to the directory is up", || async {
            directory_link(admin).await["connected"] == true
        })
        .await;
    }
    // The catalogue lists both regions, with their zones.
    within(10, "both regions in the catalogue", || async {
        admin_b.get("/v1/regions").await.body["regions"]
            .as_array()
            .is_some_and(|r| r.len() == 2)
    })
    .await;
    let regions = admin_a.get("/v1/regions").await.body;
    assert_eq!(regions["regions"][0]["name"], name_a, "{regions}");
    assert_eq!(regions["regions"][1]["url"], rb["url"], "{regions}");
    assert_eq!(regions["regions"][1]["zones"], rb["zones"], "{regions}");

    // --- A tenant made in region A works in region B within 2 s.
    let made = admin_a.post("/v1/tenants", json!({"name": "globex"})).await;
    assert_eq!(made.status, 201, "{made:?}");
    let owner = made.body["api_key"].as_str().unwrap().to_string();
    assert_eq!(made.body["aws_region"], name_a);
    let owner_b = admin_b.with_token(&owner);
    let t = within(2, "the new owner key works in region B", || async {
        status(&owner_b, "/v1/functions").await == 200
    })
    .await;
    eprintln!("propagation: a new tenant's key usable in the other region after {t:?}");

    // A key made in B works in A; revoked in A, it stops working in B within 2 s.
    let k = owner_b
        .post("/v1/api-keys", json!({"role": "developer", "name": "ci"}))
        .await;
    assert_eq!(k.status, 201, "{k:?}");
    let dev = k.body["api_key"].as_str().unwrap().to_string();
    let dev_id = k.body["id"].as_str().unwrap().to_string();
    let dev_a = admin_a.with_token(&dev);
    let dev_b = admin_b.with_token(&dev);
    assert_eq!(status(&dev_b, "/v1/functions").await, 200);
    let t = within(2, "a key made in B works in A", || async {
        status(&dev_a, "/v1/functions").await == 200
    })
    .await;
    eprintln!("propagation: a new key usable in the other region after {t:?}");
    let owner_a = admin_a.with_token(&owner);
    let r = owner_a.delete(&format!("/v1/api-keys/{dev_id}")).await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(status(&dev_a, "/v1/functions").await, 401);
    let t = within(2, "a key revoked in A is refused in B", || async {
        status(&dev_b, "/v1/functions").await == 401
    })
    .await;
    eprintln!("propagation: a revoked key refused in the other region after {t:?}");

    // Limits are global too.
    let r = admin_b
        .put(
            "/v1/tenants/globex/limits",
            json!({"max_concurrency": 50, "rate_per_sec": 500, "max_functions": 20, "max_memory_mb": 1024}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    within(2, "the new limits in region A", || async {
        admin_a.get("/v1/tenants/globex").await.body["tenant"]["limits"]["max_functions"] == 20
    })
    .await;

    // --- Resources are regional: a function made in A is A's, with A in its ARN.
    create_fn(
        &owner_a,
        "hello",
        "return {'region': 'here', 'echo': event}",
    )
    .await;
    let f = owner_a.get("/v1/functions/hello").await;
    assert!(
        f.body["function"]["arn"]
            .as_str()
            .unwrap()
            .starts_with(&format!("arn:aws:lambda:{name_a}:")),
        "{f:?}"
    );
    assert_eq!(status(&owner_b, "/v1/functions/hello").await, 404);
    let out = invoke(&owner_a, "hello", "", json!({"n": 1})).await;
    assert_eq!(out.status, 200, "{:?}", out.body);
    // The CLI deploys one package to both regions, and picks a region by name.
    let pkg = c.dir.path().join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(
        pkg.join("index.py"),
        "def handler(event, context):\n    return {'everywhere': True}\n",
    )
    .unwrap();
    let both = format!("{name_a},{}", rb["name"].as_str().unwrap());
    let deploy_both = || {
        let out = nimbus_cli(
            ra["url"].as_str().unwrap(),
            &owner,
            &[
                "fn",
                "deploy",
                pkg.to_str().unwrap(),
                "--name",
                "everywhere",
                "--runtime",
                "python3",
                "--handler",
                "index.handler",
                "--regions",
                &both,
            ],
        );
        let report: Value = serde_json::from_str(&out).unwrap();
        for r in [ra, rb] {
            let one = &report["regions"][r["name"].as_str().unwrap()];
            assert!(one.get("error").is_none(), "{report}");
        }
    };
    // Uploaded to A; B is sent the digest and copies the package from A, once: a
    // second deploy finds it in B already.
    deploy_both();
    deploy_both();
    let b_log = c.dir.path().join(format!(
        "cluster/{}/api-gateway.log",
        rb["name"].as_str().unwrap()
    ));
    let copies = std::fs::read_to_string(&b_log)
        .unwrap()
        .matches("package copied from another region")
        .count();
    assert_eq!(copies, 1, "region B copied the package once");
    let out = nimbus_cli(
        ra["url"].as_str().unwrap(),
        &owner,
        &[
            "--region",
            rb["name"].as_str().unwrap(),
            "fn",
            "get",
            "everywhere",
        ],
    );
    let f: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(f["function"]["state"], "Active", "{f}");
    assert!(
        f["function"]["arn"]
            .as_str()
            .unwrap()
            .contains(rb["name"].as_str().unwrap()),
        "{f}"
    );
    let out = invoke(&owner_b, "everywhere", "", json!({})).await;
    assert_eq!(out.body, json!({"everywhere": true}));

    // A tenant is deleted only when no region has its functions: region B asks A.
    let ini = admin_b
        .post("/v1/tenants", json!({"name": "initech"}))
        .await;
    assert_eq!(ini.status, 201, "{ini:?}");
    let ini_a = admin_a.with_token(ini.body["api_key"].as_str().unwrap());
    within(2, "initech's key works in A", || async {
        status(&ini_a, "/v1/functions").await == 200
    })
    .await;
    create_fn(&ini_a, "only-in-a", "return 1").await;
    // A digest is no way into another tenant's code: initech cannot have region A send
    // globex's package to B.
    let sha = owner_a.get("/v1/functions/everywhere").await.body["function"]["code_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let ini_b = admin_b.with_token(ini.body["api_key"].as_str().unwrap());
    let r = ini_b
        .post(
            "/v1/functions",
            json!({"name": "stolen", "runtime": "python3", "handler": "index.handler",
                   "code": {"sha256": sha, "from_region": name_a}}),
        )
        .await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.error_code(), "PackageNotFound");
    let r = admin_b.delete("/v1/tenants/initech").await;
    assert_eq!(r.status, 409, "{r:?}");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(name_a),
        "names the region that has functions: {r:?}"
    );
    let r = ini_a.delete("/v1/functions/only-in-a").await;
    assert_eq!(r.status, 202, "{r:?}");
    ini_a.wait_task(r.body["task_id"].as_str().unwrap()).await;
    let r = admin_b.delete("/v1/tenants/initech").await;
    assert_eq!(r.status, 204, "{r:?}");
    within(2, "the deleted tenant's key is refused in A", || async {
        status(&ini_a, "/v1/functions").await == 401
    })
    .await;

    // A key kept for later: revoked while region A is down.
    let k2 = owner_b
        .post("/v1/api-keys", json!({"role": "invoker", "name": "later"}))
        .await;
    assert_eq!(k2.status, 201, "{k2:?}");
    let later = k2.body["api_key"].as_str().unwrap().to_string();
    let later_id = k2.body["id"].as_str().unwrap().to_string();
    let later_a = admin_a.with_token(&later);
    within(2, "the kept key works in A", || async {
        status(&later_a, "/v1/functions").await == 200
    })
    .await;

    // --- The directory is down: both regions still authenticate; admin writes are
    // refused with 503 and a reason; /readyz says so. Nothing is lost.
    c.kill(&cluster["directory"]["pids"]);
    within(5, "region B sees the directory link down", || async {
        directory_link(&admin_b).await["connected"] == false
    })
    .await;
    assert_eq!(admin_b.get("/readyz").await.status, 200, "still ready");
    assert_eq!(status(&owner_b, "/v1/functions").await, 200);
    assert_eq!(status(&owner_a, "/v1/functions/hello").await, 200);
    let r = owner_b
        .post(
            "/v1/api-keys",
            json!({"role": "invoker", "name": "refused"}),
        )
        .await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.error_code(), "Unavailable");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("directory"),
        "{r:?}"
    );
    c.run(&["restart", "directory"]);
    let cluster = c.json();
    within(10, "region B's link is back", || async {
        directory_link(&admin_b).await["connected"] == true
    })
    .await;
    let r = owner_b
        .post("/v1/api-keys", json!({"role": "invoker", "name": "after"}))
        .await;
    assert_eq!(r.status, 201, "{r:?}");

    // --- Region A is lost (gateway, services, nodes, its object store): region B's
    // tenants still authenticate, create, invoke, and run timers.
    c.kill(&ra["pids"]);
    create_fn(
        &owner_b,
        "ticker",
        "print('tick', event.get('type')); return event",
    )
    .await;
    let out = invoke(&owner_b, "ticker", "", json!({"type": "direct"})).await;
    assert_eq!(out.status, 200, "{:?}", out.body);
    let r = owner_b
        .post(
            "/v1/functions/ticker/triggers",
            json!({"type": "timer", "cron": "* * * * * *"}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    within(20, "the timer fires in region B", || async {
        owner_b.get("/v1/functions/ticker/logs").await.body["lines"]
            .as_array()
            .is_some_and(|ls| {
                ls.iter()
                    .any(|l| l["message"].as_str().unwrap_or("").contains("tick timer"))
            })
    })
    .await;
    // Meanwhile a key is revoked (in B).
    let r = owner_b.delete(&format!("/v1/api-keys/{later_id}")).await;
    assert_eq!(r.status, 204, "{r:?}");

    // --- Region A comes back and catches up: the key revoked while it was down is
    // refused there too; its function is still there and runs.
    c.run(&["restart", name_a]);
    within(30, "region A's link is back", || async {
        directory_link(&admin_a).await["connected"] == true
    })
    .await;
    within(5, "the key revoked meanwhile is refused in A", || async {
        status(&later_a, "/v1/functions").await == 401
    })
    .await;
    within(5, "region A reports itself caught up", || async {
        let link = directory_link(&admin_a).await;
        link["applied"] == link["head"] && link["applied"].as_u64() > Some(0)
    })
    .await;
    within(30, "region A invokes again", || async {
        invoke(&owner_a, "hello", "", json!({"n": 2})).await.status == 200
    })
    .await;
    drop(cluster);
}
