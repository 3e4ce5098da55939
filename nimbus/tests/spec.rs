//! Spec files through the `nimbus` binary: `apply` shows its changes and makes them,
//! a second apply changes nothing, `--dry-run` changes nothing, `--prune` alone
//! deletes, `export` gives a spec that applies back to no change, and a bad spec is
//! refused with its file and line.

mod common;

use std::path::Path;

use common::cli::{Run, nimbus, nimbus_env};

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

async fn apply(url: &str, token: &str, spec: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["-o", "table", "apply", "-f", spec.to_str().unwrap()];
    args.extend_from_slice(extra);
    nimbus_env(url, token, &args, &[("DB_PASSWORD", "s3cret")]).await
}

const SPEC: &str = r#"# The shop's functions.
functions:
  - name: orders
    runtime: python3
    handler: index.handler
    code: ./orders
    memory_mb: 256
    env:
      STAGE: prod
      DB_PASSWORD: {from_env: DB_PASSWORD}
    publish: true
    aliases:
      - {name: live, version: 1}
    triggers:
      - {type: http, path: /orders, methods: [GET, POST]}
      - {type: timer, cron: "0 0 * * * *"}
    async:
      max_retries: 1
    provisioned_qualifier: live
    scheduled_warmups:
      - {cron: "0 9 * * 1-5", instances: 2, duration_s: 3600}
  - name: audit
    runtime: nodejs
    handler: app.handler
    code: ./audit
state_machines:
  - {name: checkout, definition: ./checkout.asl.json}
network:
  egress: [api.example.com]
buckets: [uploads]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_export_and_prune() {
    let (p, owner, dir) = common::up(&[]).await;
    // The CLI and the test call the API back to back, faster than the default 50
    // requests a second: this test is not about the rate limit.
    common::Api::new(&p.url, p.admin_key.as_deref())
        .lift_limits("acme")
        .await;
    let (url, token) = (p.url.clone(), owner.token.clone().unwrap());
    let root = dir.path().join("app");
    write(
        &root.join("orders/index.py"),
        "import os\n\ndef handler(event, context):\n    return {'stage': os.environ['STAGE'], 'pw': os.environ['DB_PASSWORD']}\n",
    );
    write(
        &root.join("audit/app.js"),
        "exports.handler = async (e) => ({audited: e});\n",
    );
    write(
        &root.join("checkout.asl.json"),
        r#"{"StartAt": "Order", "States": {"Order": {"Type": "Task", "Resource": "orders", "End": true}}}"#,
    );
    let spec = root.join("nimbus.yaml");
    write(&spec, SPEC);

    // A dry run shows every change and makes none.
    let r = apply(&url, &token, &spec, &["--dry-run"]).await;
    assert_eq!(r.code, 0, "{}", r.err);
    for line in [
        "~ network: egress [] → [\"api.example.com\"]",
        "+ function orders: python3 index.handler, 256 MB, code ",
        "+ function audit: nodejs app.handler, 128 MB",
        "+ version orders:1: published from $LATEST",
        "+ alias orders/live: → 1",
        "+ trigger orders: http /orders",
        "+ trigger orders: timer \"0 0 * * * *\"",
        "+ state machine checkout",
        "+ bucket uploads",
    ] {
        assert!(r.text.contains(line), "{line:?} in:\n{}", r.text);
    }
    assert_eq!(
        owner.get("/v1/functions/orders").await.status,
        404,
        "a dry run changes nothing"
    );

    // Apply makes it all, in an order that works (the alias after its version,
    // the state machine after the function it calls).
    let r = apply(&url, &token, &spec, &[]).await;
    assert_eq!(r.code, 0, "{}\n{}", r.text, r.err);
    let f = owner.get("/v1/functions/orders").await.body["function"].clone();
    assert_eq!(f["state"], "Active", "{f}");
    assert_eq!(f["memory_mb"], 256);
    assert_eq!(
        f["env"]["DB_PASSWORD"], "s3cret",
        "the secret came from the environment"
    );
    assert_eq!(f["async"]["max_retries"], 1);
    assert_eq!(f["provisioned_qualifier"], "live");
    assert_eq!(f["scheduled_warmups"][0]["instances"], 2, "{f}");
    let buckets = owner.get("/v1/buckets").await.body;
    assert_eq!(buckets["buckets"][0]["name"], "uploads", "{buckets}");
    let r = nimbus(
        &url,
        &token,
        &["fn", "invoke", "orders", "--qualifier", "live"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert_eq!(r.out["stage"], "prod", "{}", r.out);
    let net = owner.get("/v1/network").await.body;
    assert_eq!(net["network"]["egress"][0], "api.example.com", "{net}");
    let sm = owner.get("/v1/state-machines/checkout").await;
    assert_eq!(sm.status, 200, "{:?}", sm.body);

    // Again: nothing to do, and it says so.
    let r = apply(&url, &token, &spec, &[]).await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(
        r.text
            .contains("no changes: 2 function(s) and 1 state machine(s) are as the spec says"),
        "{}",
        r.text
    );

    // A change: memory and a secret, and a trigger dropped from the spec. The
    // secret's value is never printed; the dropped trigger is kept without --prune.
    let changed = SPEC
        .replace("memory_mb: 256", "memory_mb: 512")
        .replace("      - {type: timer, cron: \"0 0 * * * *\"}\n", "");
    write(&spec, &changed);
    let r = nimbus_env(
        &url,
        &token,
        &["-o", "table", "apply", "-f", spec.to_str().unwrap()],
        &[("DB_PASSWORD", "n3w")],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(
        r.text
            .contains("~ function orders: memory_mb 256 → 512, env DB_PASSWORD changed"),
        "{}",
        r.text
    );
    assert!(
        !r.text.contains("n3w") && !r.text.contains("s3cret"),
        "{}",
        r.text
    );
    assert!(
        r.text.contains("+ version orders:2"),
        "a changed $LATEST is published again: {}",
        r.text
    );
    assert!(
        r.text
            .contains("trigger orders: timer \"0 0 * * * *\": not in the spec, kept"),
        "{}",
        r.text
    );
    let triggers = owner.get("/v1/functions/orders/triggers").await.body;
    assert_eq!(
        triggers["triggers"].as_array().map(Vec::len),
        Some(2),
        "{triggers}"
    );

    // --prune deletes what the spec no longer names: the trigger, and a function
    // made outside the spec.
    common::deploy(
        &owner,
        "stray",
        "python3",
        "index.handler",
        &[("index.py", "def handler(e, c):\n    return 1\n")],
        serde_json::json!({}),
    )
    .await;
    let r = nimbus_env(
        &url,
        &token,
        &[
            "-o",
            "table",
            "apply",
            "-f",
            spec.to_str().unwrap(),
            "--prune",
        ],
        &[("DB_PASSWORD", "n3w")],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(r.text.contains("- trigger orders: timer"), "{}", r.text);
    assert!(r.text.contains("- function stray"), "{}", r.text);
    assert_eq!(owner.get("/v1/functions/stray").await.status, 404);
    let triggers = owner.get("/v1/functions/orders/triggers").await.body;
    assert_eq!(
        triggers["triggers"].as_array().map(Vec::len),
        Some(1),
        "{triggers}"
    );

    // Export writes a spec and the code; applying it changes nothing.
    let out = dir.path().join("exported");
    let r = nimbus(&url, &token, &["export", "-d", out.to_str().unwrap()]).await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(out.join("orders/index.py").is_file());
    assert!(out.join("audit/app.js").is_file());
    assert!(
        out.join("nimbus.yaml").is_file(),
        "YAML unless -o json asks otherwise"
    );
    let r = apply(&url, &token, &out, &[]).await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(
        r.text.contains("no changes"),
        "{}\n{}",
        r.text,
        std::fs::read_to_string(out.join("nimbus.yaml")).unwrap()
    );
    // JSON output of a plan, for scripts.
    let r = nimbus(
        &url,
        &token,
        &[
            "-o",
            "json",
            "apply",
            "-f",
            out.to_str().unwrap(),
            "--dry-run",
        ],
    )
    .await;
    assert_eq!(
        r.out["changes"].as_array().map(Vec::len),
        Some(0),
        "{}",
        r.text
    );

    // A bad spec: nothing is changed, and each error names the file and line.
    let bad = root.join("bad.yaml");
    write(
        &bad,
        "functions:\n  - name: orders\n    runtime: python3\n    handler: index.handler\n    code: ./orders\n    memory_mb: 99999\n    triggers:\n      - {type: timer}\n",
    );
    let r = nimbus(&url, &token, &["apply", "-f", bad.to_str().unwrap()]).await;
    assert_eq!(r.code, 1, "{}", r.err);
    let b = bad.display();
    assert!(
        r.err.contains(&format!("{b}:6: /functions/0/memory_mb")),
        "{}",
        r.err
    );
    assert!(
        r.err.contains(&format!("{b}:8: /functions/0/triggers/0")),
        "{}",
        r.err
    );
    let f = owner.get("/v1/functions/orders").await.body;
    assert_eq!(f["function"]["memory_mb"], 512);

    // The schema the CLI checks with is the one the gateway publishes.
    let schema: serde_json::Value = reqwest::get(format!("{url}/schemas/nimbus-spec.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(schema["title"], "Nimbus spec");
    p.stop().await.unwrap();
}
