//! The `nimbus` binary as a new user meets it: redeploying with another handler and
//! runtime, exit codes that tell "not found", "refused" and "failed" apart, errors
//! that say what to do, `bench invoke` on a function that is not there, and the
//! task and invocation listings.

mod common;

use std::time::{Duration, Instant};

use common::cli::{Run, nimbus};

/// `nimbus fn deploy DIR --runtime R --handler H`.
async fn deploy(url: &str, token: &str, dir: &str, runtime: &str, handler: &str) -> Run {
    nimbus(
        url,
        token,
        &[
            "fn",
            "deploy",
            dir,
            "--runtime",
            runtime,
            "--handler",
            handler,
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_users_path() {
    let (p, owner, dir) = common::up(&[]).await;
    let (url, token) = (p.url.clone(), owner.token.clone().unwrap());
    let src = dir.path().join("r1");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("index.py"),
        "def handler(event, context):\n    return {'from': 'python'}\n",
    )
    .unwrap();
    let d = src.to_str().unwrap();
    let r = deploy(&url, &token, d, "python3", "index.handler").await;
    assert_eq!(r.code, 0, "{}", r.err);

    // The file renamed, another runtime and handler: the new package is checked
    // against the new handler, and all three change together.
    std::fs::remove_file(src.join("index.py")).unwrap();
    std::fs::write(
        src.join("app.js"),
        "exports.handler = async () => ({from: 'node'});\n",
    )
    .unwrap();
    let r = deploy(&url, &token, d, "nodejs", "app.handler").await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert_eq!(r.out["function"]["runtime"], "nodejs", "{}", r.out);
    assert_eq!(r.out["function"]["handler"], "app.handler");
    let r = nimbus(&url, &token, &["fn", "invoke", "r1"]).await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert_eq!(r.out["from"], "node");
    // A handler whose file is not in the package is refused, and nothing changes.
    let r = deploy(&url, &token, d, "python3", "main.handler").await;
    assert_eq!(r.code, 4, "refused: {}", r.err);
    assert!(r.err.contains("400"), "{}", r.err);
    let f = owner.get("/v1/functions/r1").await;
    assert_eq!(f.body["function"]["runtime"], "nodejs", "{:?}", f.body);

    // A function that raised: its error is printed, and the exit code says failed.
    std::fs::write(
        src.join("app.js"),
        "exports.handler = async () => { throw new Error('boom'); };\n",
    )
    .unwrap();
    let r = deploy(&url, &token, d, "nodejs", "app.handler").await;
    assert_eq!(r.code, 0, "{}", r.err);
    let r = nimbus(&url, &token, &["fn", "invoke", "r1"]).await;
    assert_eq!(r.code, 1, "{}", r.err);
    assert_eq!(r.out["errorMessage"], "boom", "{}", r.out);
    assert!(r.err.contains("the function failed"), "{}", r.err);

    // Not found: 3. Refused: 4. With a hint where one helps.
    let r = nimbus(&url, &token, &["fn", "get", "nope"]).await;
    assert_eq!(r.code, 3, "{}", r.err);
    let r = nimbus(&url, "nmb_bad_key", &["fn", "list"]).await;
    assert_eq!(r.code, 4, "{}", r.err);
    assert!(r.err.contains("NIMBUS_TOKEN"), "{}", r.err);
    let r = nimbus("http://127.0.0.1:9", &token, &["fn", "list"]).await;
    assert_eq!(r.code, 1, "{}", r.err);
    assert!(r.err.contains("nimbus up"), "{}", r.err);
    let r = nimbus(
        &url,
        &token,
        &[
            "fn",
            "deploy",
            "/no/such/dir",
            "--runtime",
            "python3",
            "--handler",
            "a.b",
        ],
    )
    .await;
    assert_eq!(r.code, 1);
    assert!(
        r.err.contains("/no/such/dir"),
        "the path is named: {}",
        r.err
    );

    // bench on a function that is not there stops at once.
    let started = Instant::now();
    let r = nimbus(
        &url,
        &token,
        &["bench", "invoke", "nope", "--duration", "30", "--json"],
    )
    .await;
    assert_eq!(r.code, 3, "{}", r.err);
    assert!(started.elapsed() < Duration::from_secs(10));

    // Tasks and asynchronous invocations, listed.
    let r = nimbus(&url, &token, &["task", "list", "--function", "r1"]).await;
    assert_eq!(r.code, 0, "{}", r.err);
    let tasks = r.out["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 3, "create and two code updates: {}", r.out);
    assert_eq!(tasks[0]["kind"], "update_code");
    assert_eq!(tasks[2]["kind"], "create_function");
    assert!(tasks[2]["steps"].as_array().unwrap().len() >= 2);
    let r = nimbus(&url, &token, &["task", "list", "--state", "Bogus"]).await;
    assert_eq!(r.code, 4, "{}", r.err);
    let r = nimbus(&url, &token, &["fn", "invoke", "r1", "--async"]).await;
    assert_eq!(r.code, 0, "{}", r.err);
    let id = r.out["invocation_id"].as_str().unwrap().to_string();
    let r = nimbus(&url, &token, &["invocation", "list", "--function", "r1"]).await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert_eq!(
        r.out["invocations"][0]["invocation_id"],
        id.as_str(),
        "{}",
        r.out
    );
    p.stop().await.unwrap();
}
