//! The control plane end to end, in one process (`nimbus up`): SQLite, the
//! in-process bus, the local object store, the real HTTP server on port 0.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::{Api, b64, py_zip};
use nimbus::{Platform, UpOptions};
use nimbus_core::bus::{Broadcast, Bus, BusError, Delivery, DynBus, memory::MemoryBus};
use serde_json::{Value, json};
use tokio::sync::mpsc;

async fn start(overrides: Vec<(&str, &str)>) -> (Platform, Api, tempfile::TempDir) {
    start_with_bus(overrides, None).await
}

async fn start_with_bus(
    overrides: Vec<(&str, &str)>,
    bus: Option<DynBus>,
) -> (Platform, Api, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(UpOptions {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        bus,
        overrides: overrides
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
    .await
    .unwrap();
    let admin = p
        .admin_key
        .clone()
        .expect("first start creates the admin key");
    let api = Api::new(&p.url, Some(&admin));
    (p, api, dir)
}

#[tokio::test]
async fn admin_key_is_written_private_and_only_once() {
    use std::os::unix::fs::PermissionsExt as _;
    let (p, api, dir) = start(vec![]).await;
    let path = dir.path().join("admin.key");
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap().trim(),
        api.token.clone().unwrap()
    );
    p.stop().await.unwrap();
    // A restart keeps the same key and does not mint another.
    let p2 = Platform::start(UpOptions {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        bus: None,
        overrides: vec![],
    })
    .await
    .unwrap();
    assert!(p2.admin_key.is_none());
    let api2 = Api::new(&p2.url, api.token.as_deref());
    assert_eq!(api2.get("/v1/tenants").await.status, 200);
    p2.stop().await.unwrap();
}

#[tokio::test]
async fn function_lifecycle() {
    let (p, admin, dir) = start(vec![]).await;
    let owner = admin.with_token(&admin.tenant("acme").await);

    let t = owner
        .create_fn(
            "hello",
            json!({"memory_mb": 256, "env": {"GREETING": "hi", "DB_PASSWORD": "s3cr3t-Pa55"}}),
        )
        .await;
    assert_eq!(t["state"], "Succeeded", "{t}");
    assert_eq!(t["kind"], "create_function");
    let services: Vec<&str> = t["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["service"].as_str().unwrap())
        .collect();
    assert_eq!(services, ["code", "network", "resource", "workflow"]);

    let f = owner.get("/v1/functions/hello").await;
    assert_eq!(f.status, 200);
    let f = &f.body["function"];
    assert_eq!(f["state"], "Active");
    assert_eq!(f["memory_mb"], 256);
    assert_eq!(f["env"]["GREETING"], "hi");
    assert_eq!(f["env"]["DB_PASSWORD"], "s3cr3t-Pa55");
    let sha1 = f["code_sha256"].as_str().unwrap().to_string();
    assert_eq!(sha1.len(), 64);
    assert!(f["code_size"].as_i64().unwrap() > 0);

    // Secrets never reach the disk in clear: not in the function row, not in the task.
    for f in ["nimbus.db", "nimbus.db-wal"] {
        let bytes = std::fs::read(dir.path().join(f)).unwrap_or_default();
        assert!(
            !bytes.windows(11).any(|w| w == b"s3cr3t-Pa55"),
            "{f} holds the secret in clear"
        );
    }

    // New code.
    let r = owner
        .put(
            "/v1/functions/hello/code",
            json!({"zip_base64": py_zip("return {'v': 2}")}),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(
        owner.wait_task(r.body["task_id"].as_str().unwrap()).await["state"],
        "Succeeded"
    );
    let f = owner.get("/v1/functions/hello").await.body["function"].clone();
    assert_ne!(f["code_sha256"].as_str().unwrap(), sha1);

    // Config.
    let r = owner
        .patch(
            "/v1/functions/hello",
            json!({"timeout_ms": 10000, "env": {"A": "b"}, "reserved_concurrency": 5}),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(
        owner.wait_task(r.body["task_id"].as_str().unwrap()).await["state"],
        "Succeeded"
    );
    let f = owner.get("/v1/functions/hello").await.body["function"].clone();
    assert_eq!(f["timeout_ms"], 10000);
    assert_eq!(f["env"], json!({"A": "b"}));
    assert_eq!(f["reserved_concurrency"], 5);
    assert_eq!(f["memory_mb"], 256, "untouched fields stay");
    let r = owner
        .patch("/v1/functions/hello", json!({"reserved_concurrency": null}))
        .await;
    owner.wait_task(r.body["task_id"].as_str().unwrap()).await;
    assert_eq!(
        owner.get("/v1/functions/hello").await.body["function"]["reserved_concurrency"],
        Value::Null
    );

    // Versions 1 and 2, immutable snapshots.
    for (i, d) in ["first", "second"].iter().enumerate() {
        let r = owner
            .post("/v1/functions/hello/versions", json!({"description": d}))
            .await;
        assert_eq!(r.status, 202, "{r:?}");
        let t = owner.wait_task(r.body["task_id"].as_str().unwrap()).await;
        assert_eq!(t["result"]["version"], (i + 1).to_string(), "{t}");
    }
    // Publishing with no body works too.
    let r = owner
        .raw(
            reqwest::Method::POST,
            "/v1/functions/hello/versions",
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    owner.wait_task(r.body["task_id"].as_str().unwrap()).await;
    let vs = owner.get("/v1/functions/hello/versions").await.body["versions"].clone();
    let nums: Vec<&str> = vs
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(nums, ["1", "2", "3"]);
    assert_eq!(vs[0]["description"], "first");
    assert_eq!(
        owner.get("/v1/functions/hello").await.body["function"]["latest_version"],
        "3"
    );

    // Aliases with a gray release.
    let r = owner
        .put(
            "/v1/functions/hello/aliases/live",
            json!({"version": "1", "additional_version_weights": {"2": 0.1}}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["alias"]["additional_version_weights"]["2"], 0.1);
    let r = owner
        .put("/v1/functions/hello/aliases/live", json!({"version": "2"}))
        .await;
    assert_eq!(r.status, 200, "moving an alias: {r:?}");
    let r = owner.get("/v1/functions/hello/aliases").await;
    assert_eq!(r.body["aliases"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["aliases"][0]["version"], "2");
    for (body, why) in [
        (json!({"version": "9"}), "unknown version"),
        (
            json!({"version": "1", "additional_version_weights": {"2": 1.5}}),
            "weight above 1",
        ),
        (
            json!({"version": "1", "additional_version_weights": {"1": 0.5}}),
            "main version weighted",
        ),
        (
            json!({"version": "1", "additional_version_weights": {"2": 0.5, "3": 0.6}}),
            "two extra versions",
        ),
    ] {
        let r = owner.put("/v1/functions/hello/aliases/bad", body).await;
        assert!(r.status == 400 || r.status == 404, "{why}: {r:?}");
        r.error_code();
    }
    assert_eq!(
        owner
            .put("/v1/functions/hello/aliases/123", json!({"version": "1"}))
            .await
            .status,
        400
    );
    assert_eq!(
        owner
            .delete("/v1/functions/hello/aliases/live")
            .await
            .status,
        204
    );
    assert_eq!(
        owner
            .get("/v1/functions/hello/aliases/live")
            .await
            .error_code(),
        "AliasNotFound"
    );

    // Offline and back.
    let r = owner.post("/v1/functions/hello/offline", json!({})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["function"]["online"], false);
    assert_eq!(
        owner
            .post("/v1/functions/hello/online", json!({}))
            .await
            .body["function"]["online"],
        true
    );

    // Delete.
    let r = owner.delete("/v1/functions/hello").await;
    assert_eq!(r.status, 202);
    let t = owner.wait_task(r.body["task_id"].as_str().unwrap()).await;
    assert_eq!(t["state"], "Succeeded", "{t}");
    assert_eq!(
        owner.get("/v1/functions/hello").await.error_code(),
        "FunctionNotFound"
    );
    assert_eq!(
        owner.get("/v1/functions").await.body["functions"],
        json!([])
    );
    p.stop().await.unwrap();
}

#[tokio::test]
async fn authentication_and_roles() {
    let (p, admin, dir) = start(vec![]).await;
    let owner_key = admin.tenant("acme").await;
    let owner = admin.with_token(&owner_key);
    let other = admin.with_token(&admin.tenant("globex").await);
    let anon = Api::new(&p.url, None);

    // No token, junk token.
    let r = anon.get("/v1/functions").await;
    assert_eq!((r.status, r.error_code()), (401, "Unauthenticated"));
    let r = anon
        .with_token("nmb_0000000000000000_ffff")
        .get("/v1/functions")
        .await;
    assert_eq!((r.status, r.error_code()), (401, "Unauthenticated"));
    let r = anon.with_token("not-a-jwt").get("/v1/functions").await;
    assert_eq!(r.status, 401);

    // JWT from an API key.
    let r = owner.post("/v1/auth/token", json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let jwt = r.body["token"].as_str().unwrap().to_string();
    assert!(r.body["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(anon.with_token(&jwt).get("/v1/functions").await.status, 200);
    // A token cannot mint tokens.
    assert_eq!(
        anon.with_token(&jwt)
            .post("/v1/auth/token", json!({}))
            .await
            .status,
        403
    );

    // An expired JWT, signed with the right secret.
    let secret = std::fs::read_to_string(dir.path().join("jwt.secret")).unwrap();
    let sub = owner_key.split('_').nth(1).unwrap();
    let claims = json!({"sub": sub, "tenant": "", "role": "owner", "iat": 1, "exp": 2});
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.trim().as_bytes()),
    )
    .unwrap();
    let r = anon.with_token(&expired).get("/v1/functions").await;
    assert_eq!((r.status, r.error_code()), (401, "Unauthenticated"));
    // A forged JWT (another secret).
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "tenant": "", "role": "owner", "iat": 1, "exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-xx"),
    )
    .unwrap();
    assert_eq!(
        anon.with_token(&forged).get("/v1/functions").await.status,
        401
    );

    // Roles: invoker reads but cannot create; developer cannot manage keys.
    let r = owner
        .post("/v1/api-keys", json!({"role": "invoker", "name": "inv"}))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let invoker = anon.with_token(r.body["api_key"].as_str().unwrap());
    let r = owner
        .post("/v1/api-keys", json!({"role": "developer", "name": "ci"}))
        .await;
    let dev_id = r.body["id"].as_str().unwrap().to_string();
    let developer = anon.with_token(r.body["api_key"].as_str().unwrap());
    assert_eq!(invoker.get("/v1/functions").await.status, 200);
    let r = invoker.post("/v1/functions", json!({"name": "x", "runtime": "python3", "handler": "index.handler", "code": {"zip_base64": py_zip("return 1")}})).await;
    assert_eq!((r.status, r.error_code()), (403, "Forbidden"));
    assert_eq!(
        developer
            .post("/v1/api-keys", json!({"role": "invoker", "name": "x"}))
            .await
            .status,
        403
    );
    assert_eq!(
        owner
            .post("/v1/api-keys", json!({"role": "admin", "name": "x"}))
            .await
            .status,
        403
    );
    assert_eq!(owner.get("/v1/tenants").await.status, 403);
    assert_eq!(
        developer.create_fn("mine", json!({})).await["state"],
        "Succeeded"
    );

    // Tenants never see each other: 404, not 403.
    let r = other.get("/v1/functions/mine").await;
    assert_eq!((r.status, r.error_code()), (404, "FunctionNotFound"));
    assert_eq!(other.delete("/v1/functions/mine").await.status, 404);
    assert_eq!(
        other.get("/v1/functions").await.body["functions"],
        json!([])
    );
    let task = owner
        .post("/v1/functions/mine/versions", json!({}))
        .await
        .body["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        other.get(&format!("/v1/tasks/{task}")).await.error_code(),
        "TaskNotFound"
    );
    assert_eq!(
        other.delete(&format!("/v1/api-keys/{dev_id}")).await.status,
        404
    );
    assert_eq!(other.get("/v1/tenants/acme").await.status, 404);
    // The admin reaches a tenant's functions by naming it.
    let r = admin
        .raw(reqwest::Method::GET, "/v1/functions/mine", None, None)
        .await;
    assert_eq!(r.status, 403, "an admin must name the tenant");

    // Revocation works at once, for the key and for tokens minted from it.
    let dev_jwt = developer.post("/v1/auth/token", json!({})).await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        anon.with_token(&dev_jwt).get("/v1/functions").await.status,
        200
    );
    assert_eq!(
        owner.delete(&format!("/v1/api-keys/{dev_id}")).await.status,
        204
    );
    let r = developer.get("/v1/functions").await;
    assert_eq!((r.status, r.error_code()), (401, "Unauthenticated"));
    assert_eq!(
        anon.with_token(&dev_jwt).get("/v1/functions").await.status,
        401
    );
    let keys = owner.get("/v1/api-keys").await.body["api_keys"].clone();
    assert!(
        keys.as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == dev_id && k["revoked"] == true)
    );
    assert!(
        keys.as_array()
            .unwrap()
            .iter()
            .all(|k| k.get("api_key").is_none() && k.get("secret_sha256").is_none())
    );
    p.stop().await.unwrap();
}

#[tokio::test]
async fn admin_acts_for_a_tenant_with_a_header() {
    let (p, admin, _dir) = start(vec![]).await;
    let owner = admin.with_token(&admin.tenant("acme").await);
    owner.create_fn("f", json!({})).await;
    let mut req = reqwest::Client::new().get(format!("{}/v1/functions/f", p.url));
    req = req
        .bearer_auth(admin.token.as_ref().unwrap())
        .header("x-nimbus-tenant", "acme");
    assert_eq!(req.send().await.unwrap().status(), 200);
    p.stop().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_a_clear_4xx() {
    let (p, admin, _dir) = start(vec![]).await;
    let owner = admin.with_token(&admin.tenant("acme").await);
    let ok = |over: Value| {
        let mut b = json!({"name": "f", "runtime": "python3", "handler": "index.handler", "code": {"zip_base64": py_zip("return 1")}});
        for (k, v) in over.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let zeros = vec![0u8; 30 * 1024 * 1024];
    let bomb = b64(&code_service::package::build_zip(&[
        ("index.py", b"x"),
        ("z.bin", &zeros),
    ]));
    let slip = b64(&code_service::package::build_zip(&[
        ("index.py", b"x"),
        ("../../evil.py", b"x"),
    ]));
    let cases: Vec<(Value, u16, &str)> = vec![
        (ok(json!({"name": "bad name!"})), 400, "InvalidRequest"),
        (ok(json!({"name": ""})), 400, "InvalidRequest"),
        (ok(json!({"runtime": "cobol"})), 400, "InvalidRequest"),
        (ok(json!({"memory_mb": 32})), 400, "InvalidRequest"),
        (ok(json!({"memory_mb": 4096})), 400, "InvalidRequest"),
        (ok(json!({"timeout_ms": 50})), 400, "InvalidRequest"),
        (ok(json!({"timeout_ms": 1_000_000})), 400, "InvalidRequest"),
        (ok(json!({"handler": "index"})), 400, "InvalidRequest"),
        (
            ok(json!({"env": {"AWS_SECRET": "x"}})),
            400,
            "InvalidRequest",
        ),
        (ok(json!({"surprise": 1})), 400, "InvalidRequest"),
        (ok(json!({"memory_mb": "big"})), 400, "InvalidRequest"),
        (
            ok(json!({"code": {"zip_base64": "%%%not base64"}})),
            400,
            "InvalidCode",
        ),
        (
            ok(json!({"code": {"zip_base64": b64(b"this is not a zip")}})),
            400,
            "InvalidCode",
        ),
        (
            ok(json!({"code": {"zip_base64": slip}})),
            400,
            "InvalidCode",
        ),
        (
            ok(json!({"code": {"zip_base64": bomb}})),
            400,
            "InvalidCode",
        ),
        (
            ok(
                json!({"code": {"zip_base64": b64(&code_service::package::build_zip(&[("main.py", b"x")]))}}),
            ),
            400,
            "InvalidCode",
        ),
        (json!({"name": "f"}), 400, "InvalidRequest"),
    ];
    for (body, status, code) in cases {
        let r = owner.post("/v1/functions", body.clone()).await;
        assert_eq!(
            (r.status, r.error_code()),
            (status, code),
            "body {}: {r:?}",
            &body.to_string()[..body.to_string().len().min(200)]
        );
    }
    // Not JSON at all, and JSON without its content type.
    let r = owner
        .raw(
            reqwest::Method::POST,
            "/v1/functions",
            Some("{not json".into()),
            Some("application/json"),
        )
        .await;
    assert_eq!((r.status, r.error_code()), (400, "InvalidRequest"));
    let r = owner
        .raw(
            reqwest::Method::POST,
            "/v1/functions",
            Some("{}".into()),
            None,
        )
        .await;
    assert_eq!((r.status, r.error_code()), (400, "InvalidRequest"));
    // Oversized package: 413.
    let big: Vec<u8> = (0..51 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let r = owner
        .post(
            "/v1/functions",
            ok(json!({"code": {"zip_base64": b64(&big)}})),
        )
        .await;
    assert_eq!((r.status, r.error_code()), (413, "PayloadTooLarge"));
    // Nothing was created by any of that.
    assert_eq!(
        owner.get("/v1/functions").await.body["functions"],
        json!([])
    );
    // Other endpoints.
    assert_eq!(
        owner.get("/v1/functions/no-such").await.error_code(),
        "FunctionNotFound"
    );
    assert_eq!(owner.get("/v1/functions/bad%20name").await.status, 404);
    assert_eq!(
        owner.get("/v1/tasks/nope").await.error_code(),
        "TaskNotFound"
    );
    assert_eq!(owner.get("/v1/nothing-here").await.status, 404);
    let r = owner.patch("/v1/functions/none", json!({})).await;
    assert_eq!(r.status, 404);
    owner.create_fn("f", json!({})).await;
    assert_eq!(
        owner.patch("/v1/functions/f", json!({})).await.error_code(),
        "InvalidRequest"
    );
    assert_eq!(
        owner
            .patch("/v1/functions/f", json!({"memory_mb": 1}))
            .await
            .status,
        400
    );
    assert_eq!(
        owner
            .patch("/v1/functions/f", json!({"runtime": "nodejs"}))
            .await
            .status,
        400
    );
    assert_eq!(
        owner
            .put("/v1/functions/f/code", json!({"zip_base64": slip}))
            .await
            .error_code(),
        "InvalidCode"
    );
    assert_eq!(
        admin
            .post("/v1/tenants", json!({"name": "no spaces"}))
            .await
            .status,
        400
    );
    assert_eq!(admin.put("/v1/tenants/acme/limits", json!({"max_concurrency": 0, "rate_per_sec": 1, "max_functions": 1, "max_memory_mb": 128})).await.status, 400);
    assert_eq!(
        admin
            .post("/v1/api-keys", json!({"role": "root", "name": "x"}))
            .await
            .status,
        400
    );
    p.stop().await.unwrap();
}

/// A real in-process bus that holds code-service commands back for a while, so a
/// task is reliably still running when the test needs it to be.
struct SlowCode(MemoryBus);

#[async_trait]
impl Bus for SlowCode {
    async fn publish_traced(
        &self,
        queue: &str,
        payload: Vec<u8>,
        traceparent: Option<String>,
    ) -> Result<(), BusError> {
        if queue == "step.code" {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        self.0.publish_traced(queue, payload, traceparent).await
    }
    async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> Result<mpsc::Receiver<Delivery>, BusError> {
        self.0.consume(queue, prefetch).await
    }
    async fn broadcast(&self, topic: &str, payload: Vec<u8>) -> Result<(), BusError> {
        self.0.broadcast(topic, payload).await
    }
    async fn subscribe(&self, topic: &str) -> Result<mpsc::Receiver<Broadcast>, BusError> {
        self.0.subscribe(topic).await
    }
}

#[tokio::test]
async fn conflicts_and_limits() {
    let (p, admin, _dir) = start_with_bus(vec![], Some(Arc::new(SlowCode(MemoryBus::new())))).await;
    let owner = admin.with_token(&admin.tenant("acme").await);
    assert_eq!(
        admin
            .post("/v1/tenants", json!({"name": "acme"}))
            .await
            .status,
        409
    );
    owner.create_fn("f", json!({})).await;
    let r = owner.post("/v1/functions", json!({"name": "f", "runtime": "python3", "handler": "index.handler", "code": {"zip_base64": py_zip("return 1")}})).await;
    assert_eq!((r.status, r.error_code()), (409, "Conflict"));
    // One change at a time.
    let a = owner
        .put(
            "/v1/functions/f/code",
            json!({"zip_base64": py_zip("return 2")}),
        )
        .await;
    assert_eq!(a.status, 202);
    let b = owner.post("/v1/functions/f/versions", json!({})).await;
    assert_eq!((b.status, b.error_code()), (409, "Conflict"));
    owner.wait_task(a.body["task_id"].as_str().unwrap()).await;
    // A tenant with functions cannot be deleted.
    assert_eq!(admin.delete("/v1/tenants/acme").await.status, 409);
    // Function-count and memory limits.
    let r = admin.put("/v1/tenants/acme/limits", json!({"max_concurrency": 10, "rate_per_sec": 1000, "max_functions": 1, "max_memory_mb": 512})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["tenant"]["limits"]["max_functions"], 1);
    let r = owner.post("/v1/functions", json!({"name": "g", "runtime": "python3", "handler": "index.handler", "code": {"zip_base64": py_zip("return 1")}})).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit")
    );
    assert_eq!(
        owner
            .patch("/v1/functions/f", json!({"memory_mb": 1024}))
            .await
            .status,
        400
    );
    // Deleting the function frees the tenant for deletion.
    let t = owner.delete("/v1/functions/f").await.body["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    owner.wait_task(&t).await;
    assert_eq!(admin.delete("/v1/tenants/acme").await.status, 204);
    assert_eq!(
        owner.get("/v1/functions").await.status,
        401,
        "a deleted tenant's keys die"
    );
    p.stop().await.unwrap();
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let (p, admin, _dir) = start(vec![]).await;
    let owner = admin.with_token(&admin.tenant("acme").await);
    let r = admin.put("/v1/tenants/acme/limits", json!({"max_concurrency": 10, "rate_per_sec": 3, "max_functions": 10, "max_memory_mb": 512})).await;
    assert_eq!(r.status, 200);
    let mut statuses = vec![];
    for _ in 0..6 {
        statuses.push(owner.get("/v1/functions").await);
    }
    let limited: Vec<_> = statuses.iter().filter(|r| r.status == 429).collect();
    assert!(
        !limited.is_empty(),
        "{:?}",
        statuses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(limited[0].error_code(), "TooManyRequests");
    assert!(
        limited[0]
            .retry_after
            .as_deref()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(owner.get("/v1/functions").await.status, 200);
    p.stop().await.unwrap();
}

#[tokio::test]
async fn failed_step_compensates_and_reports() {
    // The one node (the in-process one) is bounded to 64 instances: reserving 100
    // provisioned instances must fail.
    let (p, admin, _dir) = start(vec![("NIMBUS_NODE__MAX_INSTANCES", "64")]).await;
    let owner = admin.with_token(&admin.tenant("acme").await);
    let t = owner
        .create_fn("f", json!({"provisioned_concurrency": 100}))
        .await;
    assert_eq!(t["state"], "Failed", "{t}");
    assert!(t["error"].as_str().unwrap().contains("capacity"), "{t}");
    let states: Vec<&str> = t["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["Compensated", "Compensated", "Failed", "Pending"],
        "{t}"
    );
    let f = owner.get("/v1/functions/f").await.body["function"].clone();
    assert_eq!(f["state"], "Failed");
    assert!(f["state_reason"].as_str().unwrap().contains("capacity"));
    // The network was released by the compensation.
    assert_eq!(
        owner.get("/v1/network").await.body["network"]["proxy_endpoint"],
        Value::Null
    );
    // A failed function can be deleted.
    let r = owner.delete("/v1/functions/f").await;
    assert_eq!(
        owner.wait_task(r.body["task_id"].as_str().unwrap()).await["state"],
        "Succeeded"
    );
    p.stop().await.unwrap();
}

#[tokio::test]
async fn provisioned_concurrency_reserves_on_registered_nodes() {
    use proto::node::{HeartbeatRequest, ListNodesRequest, NodeCapacity, RegisterRequest};
    // The in-process node offers 64 MB: no 128 MB instance fits on it, so only the
    // two nodes registered here take reservations.
    let (p, admin, _dir) = start(vec![
        ("NIMBUS_RESOURCE__NODE_TIMEOUT_MS", "1000"),
        ("NIMBUS_NODE__MEMORY_MB", "64"),
    ])
    .await;
    let owner = admin.with_token(&admin.tenant("acme").await);
    let mut reg = common::registry_client(
        &format!("http://{}", p.registry_addr),
        p.config.secrets.key.as_deref(),
    )
    .await
    .unwrap();
    for (id, mem) in [("node-a", 1024u64), ("node-b", 512)] {
        reg.register(RegisterRequest {
            node_id: id.into(),
            address: format!("127.0.0.1:{}", if id == "node-a" { 9001 } else { 9002 }),
            region: "local".into(),
            zone: "local-a".into(),
            capacity: Some(NodeCapacity {
                memory_mb: mem,
                instance_slots: 8,
            }),
            session: format!("test-{id}"),
        })
        .await
        .unwrap();
    }
    // 10 × 128 MB fits across both nodes (8 + 2 slots), 13 would not.
    let t = owner
        .create_fn("f", json!({"provisioned_concurrency": 10}))
        .await;
    assert_eq!(t["state"], "Succeeded", "{t}");
    let nodes = reg
        .list_nodes(ListNodesRequest {
            include_dead: false,
        })
        .await
        .unwrap()
        .into_inner()
        .nodes;
    let reserved: u32 = nodes
        .iter()
        .map(|n| n.reserved.unwrap().instance_slots)
        .sum();
    assert_eq!(reserved, 10);
    let r = owner
        .patch("/v1/functions/f", json!({"provisioned_concurrency": 13}))
        .await;
    let t = owner.wait_task(r.body["task_id"].as_str().unwrap()).await;
    assert_eq!(t["state"], "Failed", "{t}");
    assert_eq!(
        owner.get("/v1/functions/f").await.body["function"]["provisioned_concurrency"],
        10,
        "a failed update leaves the config"
    );
    let nodes = reg
        .list_nodes(ListNodesRequest {
            include_dead: false,
        })
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(
        nodes
            .iter()
            .map(|n| n.reserved.unwrap().instance_slots)
            .sum::<u32>(),
        10,
        "the old reservation is kept"
    );
    // A node that stops heartbeating is declared dead; one that goes on stays alive.
    for _ in 0..14 {
        reg.heartbeat(HeartbeatRequest {
            node_id: "node-a".into(),
            used: None,
            session: "test-node-a".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let alive: Vec<String> = reg
        .list_nodes(ListNodesRequest {
            include_dead: false,
        })
        .await
        .unwrap()
        .into_inner()
        .nodes
        .into_iter()
        .map(|n| n.node_id)
        .filter(|id| id != "local")
        .collect();
    assert_eq!(alive, ["node-a"]);
    let r = reg
        .heartbeat(HeartbeatRequest {
            node_id: "node-b".into(),
            used: None,
            session: "test-node-b".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.known, "a dead node is told to register again");
    // Deleting the function releases its capacity.
    let r = owner.delete("/v1/functions/f").await;
    owner.wait_task(r.body["task_id"].as_str().unwrap()).await;
    let nodes = reg
        .list_nodes(ListNodesRequest { include_dead: true })
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(
        nodes
            .iter()
            .map(|n| n.reserved.unwrap().instance_slots)
            .sum::<u32>(),
        0
    );
    p.stop().await.unwrap();
}

/// The in-process bus, with faults for the tests: every step command published
/// twice (`double`), or their delivery held back until `held` has permits.
#[derive(Default)]
struct TestBus {
    inner: MemoryBus,
    double: bool,
    duplicated: AtomicUsize,
    held: Option<Arc<tokio::sync::Semaphore>>,
}

#[async_trait]
impl Bus for TestBus {
    async fn publish_traced(
        &self,
        queue: &str,
        payload: Vec<u8>,
        traceparent: Option<String>,
    ) -> Result<(), BusError> {
        if self.double && queue.starts_with("step.") {
            self.duplicated.fetch_add(1, Ordering::SeqCst);
            self.inner
                .publish_traced(queue, payload.clone(), traceparent.clone())
                .await?;
        }
        self.inner.publish_traced(queue, payload, traceparent).await
    }
    async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> Result<mpsc::Receiver<Delivery>, BusError> {
        let mut rx = self.inner.consume(queue, prefetch).await?;
        let Some(held) = self.held.clone().filter(|_| queue.starts_with("step.")) else {
            return Ok(rx);
        };
        let (tx, out) = mpsc::channel(1);
        tokio::spawn(async move {
            let _open = held.acquire().await;
            while let Some(d) = rx.recv().await {
                if tx.send(d).await.is_err() {
                    return;
                }
            }
        });
        Ok(out)
    }
    async fn broadcast(&self, topic: &str, payload: Vec<u8>) -> Result<(), BusError> {
        self.inner.broadcast(topic, payload).await
    }
    async fn subscribe(&self, topic: &str) -> Result<mpsc::Receiver<Broadcast>, BusError> {
        self.inner.subscribe(topic).await
    }
}

#[tokio::test]
async fn every_step_delivered_twice_has_the_effect_of_once() {
    use proto::node::{ListNodesRequest, NodeCapacity, RegisterRequest};
    let bus = Arc::new(TestBus {
        double: true,
        ..Default::default()
    });
    let (p, admin, dir) = start_with_bus(vec![], Some(bus.clone())).await;
    let owner = admin.with_token(&admin.tenant("acme").await);
    let mut reg = common::registry_client(
        &format!("http://{}", p.registry_addr),
        p.config.secrets.key.as_deref(),
    )
    .await
    .unwrap();
    reg.register(RegisterRequest {
        node_id: "n".into(),
        address: "127.0.0.1:1".into(),
        region: "local".into(),
        zone: "local-a".into(),
        capacity: Some(NodeCapacity {
            memory_mb: 4096,
            instance_slots: 32,
        }),
        session: "test".into(),
    })
    .await
    .unwrap();

    // Two functions with the same code: one package; both share the tenant's proxy.
    assert_eq!(
        owner
            .create_fn("a", json!({"provisioned_concurrency": 3}))
            .await["state"],
        "Succeeded"
    );
    assert_eq!(owner.create_fn("b", json!({})).await["state"], "Succeeded");
    for _ in 0..2 {
        let r = owner.post("/v1/functions/a/versions", json!({})).await;
        assert_eq!(
            owner.wait_task(r.body["task_id"].as_str().unwrap()).await["state"],
            "Succeeded"
        );
    }
    let r = owner
        .patch("/v1/functions/a", json!({"provisioned_concurrency": 5}))
        .await;
    assert_eq!(
        owner.wait_task(r.body["task_id"].as_str().unwrap()).await["state"],
        "Succeeded"
    );
    // The commands that go through the bus: two `code.store`, two `code.verify`.
    // The network and resource steps run inline here (`nimbus up`: in the engine's
    // own transaction, which cannot take effect twice); their consumers are the same
    // `step::serve` as the code service's.
    assert!(
        bus.duplicated.load(Ordering::SeqCst) >= 4,
        "every step command was sent twice"
    );

    let packages = std::fs::read_dir(dir.path().join("objects/packages"))
        .unwrap()
        .count();
    assert_eq!(packages, 1, "one stored package per digest");
    let staging = std::fs::read_dir(dir.path().join("objects/staging"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(staging, 0, "staged uploads are cleaned up");
    let vs = owner.get("/v1/functions/a/versions").await.body["versions"].clone();
    assert_eq!(
        vs.as_array().unwrap().len(),
        2,
        "two publishes, two versions: {vs}"
    );
    let nodes = reg
        .list_nodes(ListNodesRequest {
            include_dead: false,
        })
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(
        nodes
            .iter()
            .map(|n| n.reserved.unwrap().instance_slots)
            .sum::<u32>(),
        5,
        "reservations are exact, not doubled"
    );
    let net = owner.get("/v1/network").await.body["network"].clone();
    assert!(net["proxy_endpoint"].as_str().is_some(), "{net}");
    // Each function was activated exactly once per task: revision counts the commits.
    assert_eq!(
        owner.get("/v1/functions/b").await.body["function"]["revision"],
        2
    );
    assert_eq!(
        owner.get("/v1/functions/a").await.body["function"]["revision"],
        5
    );
    p.stop().await.unwrap();
}

#[tokio::test]
async fn operations_endpoints() {
    let (p, admin, _dir) = start(vec![]).await;
    let anon = Api::new(&p.url, None);
    assert_eq!(anon.get("/healthz").await.status, 200);
    assert_eq!(anon.get("/readyz").await.status, 200);
    admin.get("/v1/tenants").await;
    let text = common::metrics_text(&p.url).await;
    assert!(
        text.contains(
            "nimbus_http_requests_total{method=\"GET\",route=\"/v1/tenants\",status=\"200\"}"
        ),
        "{text}"
    );
    let r = anon
        .raw(reqwest::Method::DELETE, "/healthz", None, None)
        .await;
    assert_eq!(r.status, 405);
    p.stop().await.unwrap();
}

#[tokio::test]
async fn every_documented_route_is_served() {
    let (p, admin, _dir) = start(vec![]).await;
    let doc = reqwest::get(format!("{}/openapi.json", p.url))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        doc,
        serde_json::from_str::<Value>(&api_gateway::openapi_json()).unwrap()
    );
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let concrete = path.replace('{', "x").replace('}', "");
        for method in ops.as_object().unwrap().keys() {
            let m: reqwest::Method = method.to_uppercase().parse().unwrap();
            let r = admin.raw(m, &concrete, None, None).await;
            // Anything but the router's own "no such endpoint" or "wrong method".
            let code = r.body["error"]["code"].as_str().unwrap_or("");
            assert!(
                code != "NotFound" && r.status != 405,
                "{method} {path} is documented but not served: {r:?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 29, "checked {checked} routes");
    p.stop().await.unwrap();
}

/// Runs the real `nimbus` binary as a user would.
async fn cli(url: &str, token: &str, args: &[&str]) -> (bool, Value, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nimbus"));
    cmd.args(["--url", url, "--token", token]).args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let v = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.success(),
        v,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn cli_drives_the_control_plane() {
    let (p, admin, dir) = start(vec![]).await;
    let admin_key = admin.token.clone().unwrap();
    let (ok, v, err) = cli(&p.url, &admin_key, &["tenant", "create", "acme"]).await;
    assert!(ok, "{err}");
    let owner = v["api_key"].as_str().unwrap().to_string();
    let (ok, v, _) = cli(&p.url, &admin_key, &["tenant", "list"]).await;
    assert!(ok);
    assert_eq!(v["tenants"][0]["name"], "acme");

    let src = dir.path().join("hello");
    std::fs::create_dir_all(src.join("lib")).unwrap();
    std::fs::write(
        src.join("index.py"),
        "def handler(event, context):\n    return event\n",
    )
    .unwrap();
    std::fs::write(src.join("lib/util.py"), "X = 1\n").unwrap();
    let dir_arg = src.to_str().unwrap();
    let (ok, v, err) = cli(
        &p.url,
        &owner,
        &[
            "fn",
            "deploy",
            dir_arg,
            "--runtime",
            "python3",
            "--handler",
            "index.handler",
            "--env",
            "A=1",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(v["function"]["name"], "hello");
    assert_eq!(v["function"]["state"], "Active");
    assert_eq!(v["function"]["env"]["A"], "1");
    let (ok, v, err) = cli(&p.url, &owner, &["fn", "publish", "hello"]).await;
    assert!(ok, "{err}");
    assert_eq!(v["version"], "1");
    // Deploying again updates the code and the config.
    std::fs::write(
        src.join("index.py"),
        "def handler(event, context):\n    return 2\n",
    )
    .unwrap();
    let (ok, v, err) = cli(
        &p.url,
        &owner,
        &[
            "fn",
            "deploy",
            dir_arg,
            "--runtime",
            "python3",
            "--handler",
            "index.handler",
            "--memory",
            "256",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(v["function"]["memory_mb"], 256);
    let (ok, v, _) = cli(&p.url, &owner, &["fn", "publish", "hello"]).await;
    assert!(ok);
    assert_eq!(v["version"], "2");
    let (ok, v, err) = cli(
        &p.url,
        &owner,
        &[
            "alias",
            "set",
            "hello",
            "live",
            "--version",
            "1",
            "--weight",
            "2=0.1",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(v["alias"]["additional_version_weights"]["2"], 0.1);
    let (ok, v, err) = cli(
        &p.url,
        &owner,
        &[
            "fn",
            "invoke",
            "hello",
            "--qualifier",
            "live",
            "--data",
            "{\"k\": 1}",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(v == json!({"k": 1}) || v == json!(2), "{v}");
    let (ok, v, err) = cli(
        &p.url,
        &owner,
        &[
            "fn",
            "invoke",
            "hello",
            "--qualifier",
            "1",
            "--data",
            "{\"k\": 1}",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(v, json!({"k": 1}));
    let (ok, _, err) = cli(&p.url, &owner, &["fn", "logs", "hello"]).await;
    assert!(ok, "{err}");
    // Asynchronous invocation and triggers from the CLI.
    let (ok, v, err) = cli(
        &p.url,
        &owner,
        &["fn", "invoke", "hello", "--async", "--data", "{\"a\": 1}"],
    )
    .await;
    assert!(ok, "{err}");
    let inv = v["invocation_id"].as_str().unwrap().to_string();
    let t = std::time::Instant::now();
    loop {
        let (ok, v, err) = cli(&p.url, &owner, &["invocation", "get", &inv]).await;
        assert!(ok, "{err}");
        if v["state"] == "Succeeded" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, v, err) = cli(
        &p.url,
        &owner,
        &[
            "trigger", "add", "hello", "--type", "http", "--path", "/hi", "--method", "GET",
            "--public",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(v["trigger"]["auth"], "none");
    let (ok, _, err) = cli(
        &p.url,
        &owner,
        &[
            "trigger",
            "add",
            "hello",
            "--type",
            "timer",
            "--cron",
            "0 0 * * * *",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &p.url,
        &owner,
        &[
            "trigger", "add", "hello", "--type", "queue", "--queue", "jobs",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, v, _) = cli(&p.url, &owner, &["trigger", "list", "hello"]).await;
    assert!(ok);
    assert_eq!(v["triggers"].as_array().unwrap().len(), 3);
    let (ok, _, err) = cli(
        &p.url,
        &owner,
        &[
            "trigger", "add", "hello", "--type", "timer", "--cron", "soon",
        ],
    )
    .await;
    assert!(!ok && err.contains("InvalidRequest"), "{err}");
    let (ok, v, _) = cli(&p.url, &owner, &["invocation", "dead-letters", "hello"]).await;
    assert!(ok);
    assert_eq!(v["dead_letters"], json!([]));
    let (ok, v, _) = cli(&p.url, &owner, &["fn", "list"]).await;
    assert!(ok);
    assert_eq!(v["functions"].as_array().unwrap().len(), 1);
    let (ok, v, _) = cli(
        &p.url,
        &owner,
        &["key", "create", "--role", "invoker", "--name", "reader"],
    )
    .await;
    assert!(ok);
    let key_id = v["id"].as_str().unwrap().to_string();
    let (ok, _, _) = cli(&p.url, &owner, &["key", "revoke", &key_id]).await;
    assert!(ok);
    let (ok, v, _) = cli(&p.url, &owner, &["key", "list"]).await;
    assert!(ok);
    assert!(
        v["api_keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == key_id.as_str() && k["revoked"] == true)
    );
    // Errors are clear and exit non-zero.
    let (ok, _, err) = cli(&p.url, &owner, &["fn", "get", "nope"]).await;
    assert!(!ok);
    assert!(err.contains("404 FunctionNotFound"), "{err}");
    let (ok, _, err) = cli(&p.url, &owner, &["tenant", "list"]).await;
    assert!(!ok && err.contains("403"), "{err}");
    let (ok, v, err) = cli(&p.url, &owner, &["fn", "delete", "hello"]).await;
    assert!(ok, "{err}");
    assert_eq!(v["deleted"], "hello");
    p.stop().await.unwrap();
}

#[tokio::test]
async fn a_task_is_waited_for_in_one_request() {
    let open = Arc::new(tokio::sync::Semaphore::new(0));
    let bus = Arc::new(TestBus {
        held: Some(open.clone()),
        ..Default::default()
    });
    let (p, admin, _dir) = start_with_bus(vec![], Some(bus)).await;
    let owner = admin.with_token(&admin.tenant("acme").await);
    let r = owner
        .post(
            "/v1/functions",
            json!({"name": "f", "runtime": "python3", "handler": "index.handler",
                   "code": {"zip_base64": py_zip("return event")}}),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    let task = r.body["task_id"].as_str().unwrap().to_string();

    // Bad waits are refused in the contract's format.
    for bad in ["21", "-1", "soon"] {
        assert_eq!(
            owner
                .get(&format!("/v1/tasks/{task}?wait={bad}"))
                .await
                .error_code(),
            "InvalidRequest",
            "wait={bad}"
        );
    }
    assert_eq!(
        owner.get("/v1/tasks/nope?wait=5").await.error_code(),
        "TaskNotFound"
    );

    // Its first step is held: a wait of 1 s ends with the task still running.
    let t0 = std::time::Instant::now();
    let r = owner.get(&format!("/v1/tasks/{task}?wait=1")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        matches!(r.body["state"].as_str(), Some("Pending" | "Running")),
        "{r:?}"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );

    // One request, sent while the task cannot end, answers with its end.
    let waiting = {
        let owner = owner.clone();
        let task = task.clone();
        tokio::spawn(async move {
            let t0 = std::time::Instant::now();
            (
                owner.get(&format!("/v1/tasks/{task}?wait=20")).await,
                t0.elapsed(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    open.add_permits(100);
    let (r, took) = waiting.await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["state"], "Succeeded", "{r:?}");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    // An ended task is answered at once, wait or not.
    let t0 = std::time::Instant::now();
    assert_eq!(
        owner.get(&format!("/v1/tasks/{task}?wait=20")).await.body["state"],
        "Succeeded"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    p.stop().await.unwrap();
}
