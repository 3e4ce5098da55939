//! The `nimbus` binary as a new user meets it: redeploying with another handler and
//! runtime, exit codes that tell "not found", "refused" and "failed" apart, errors
//! that say what to do, `bench invoke` on a function that is not there, and the
//! task and invocation listings.

mod common;

use std::time::{Duration, Instant};

use common::cli::{Run, nimbus, nimbus_env};

/// `nimbus ARGS…`, which must succeed.
async fn ok(url: &str, token: &str, args: &[&str]) -> Run {
    let r = nimbus(url, token, args).await;
    assert_eq!(r.code, 0, "nimbus {args:?}: {}", r.err);
    r
}

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
    let r = ok(&url, &token, &["fn", "invoke", "r1"]).await;
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
    let r = ok(&url, &token, &["task", "list", "--function", "r1"]).await;
    let tasks = r.out["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 3, "create and two code updates: {}", r.out);
    assert_eq!(tasks[0]["kind"], "update_code");
    assert_eq!(tasks[2]["kind"], "create_function");
    assert!(tasks[2]["steps"].as_array().unwrap().len() >= 2);
    let r = nimbus(&url, &token, &["task", "list", "--state", "Bogus"]).await;
    assert_eq!(r.code, 4, "{}", r.err);
    let r = ok(&url, &token, &["fn", "invoke", "r1", "--async"]).await;
    let id = r.out["invocation_id"].as_str().unwrap().to_string();
    let r = ok(&url, &token, &["invocation", "list", "--function", "r1"]).await;
    assert_eq!(
        r.out["invocations"][0]["invocation_id"],
        id.as_str(),
        "{}",
        r.out
    );
    p.stop().await.unwrap();
}

/// Every API area from the shell: output formats, `login`, `fn init`, online and
/// offline, config and async settings, `invoke --async --watch`, buckets, queues,
/// network, tenant limits, completions and the man page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_area_from_the_shell() {
    let (p, owner, dir) = common::up(&[]).await;
    let (url, token) = (p.url.clone(), owner.token.clone().unwrap());
    let admin = p.admin_key.clone().unwrap();

    // `login` checks the key and writes the config file (0600) that later runs read.
    let config = dir.path().join("config.toml");
    let cfg = config.to_str().unwrap();
    let r = nimbus_env(
        &url,
        "",
        &["login", "--key", "nmb_not_a_key"],
        &[("NIMBUS_CONFIG", cfg)],
    )
    .await;
    assert_eq!(r.code, 4, "a bad key is refused: {}", r.err);
    assert!(!config.exists());
    let r = nimbus_env(
        &url,
        "",
        &["login", "--key", &token],
        &[("NIMBUS_CONFIG", cfg)],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert_eq!(r.out["tenant"], "acme", "{}", r.out);
    assert_eq!(r.out["role"], "owner");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&config).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nimbus"))
        .args(["fn", "list"])
        .env("NIMBUS_CONFIG", cfg)
        .env_remove("NIMBUS_URL")
        .env_remove("NIMBUS_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the saved login is used: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `fn init` writes a function that deploys and runs as it is.
    let fdir = dir.path().join("hello");
    let r = ok(
        &url,
        &token,
        &[
            "fn",
            "init",
            "hello",
            "--runtime",
            "python3",
            "--dir",
            fdir.to_str().unwrap(),
        ],
    )
    .await;
    assert!(
        r.err.contains("nimbus fn deploy"),
        "says what to do next: {}",
        r.err
    );
    let r = deploy(
        &url,
        &token,
        fdir.to_str().unwrap(),
        "python3",
        "index.handler",
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.err);
    let event = std::fs::read_to_string(fdir.join("event.json")).unwrap();
    let r = ok(&url, &token, &["fn", "invoke", "hello", "--data", &event]).await;
    assert_eq!(r.out["hello"], "nimbus", "{}", r.out);
    // The call shows in the function's metrics once the meter ships it (every second).
    let t = std::time::Instant::now();
    loop {
        let r = ok(&url, &token, &["fn", "metrics", "hello", "--since", "15m"]).await;
        if r.out["totals"]["invocations"] == 1 {
            assert_eq!(r.out["period_s"], 60, "{}", r.out);
            assert!(r.out["totals"]["duration_p50_ms"].as_f64().unwrap() > 0.0);
            break;
        }
        assert!(t.elapsed().as_secs() < 15, "no metrics: {}", r.out);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let r = nimbus(&url, &token, &["fn", "metrics", "hello", "--since", "soon"]).await;
    assert_eq!(r.code, 1, "{}", r.err);
    assert!(r.err.contains("--since soon"), "{}", r.err);
    let r = nimbus(
        &url,
        &token,
        &[
            "fn",
            "init",
            "hello",
            "--runtime",
            "python3",
            "--dir",
            fdir.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(r.code, 1, "a directory with files is not overwritten");
    for rt in ["nodejs", "provided"] {
        let d = dir.path().join(rt);
        let r = ok(
            &url,
            &token,
            &[
                "fn",
                "init",
                &format!("hi-{rt}"),
                "--runtime",
                rt,
                "--dir",
                d.to_str().unwrap(),
            ],
        )
        .await;
        let h = r.out["handler"].as_str().unwrap().to_string();
        let name = format!("hi-{rt}");
        let r = nimbus(
            &url,
            &token,
            &[
                "fn",
                "deploy",
                d.to_str().unwrap(),
                "--name",
                &name,
                "--runtime",
                rt,
                "--handler",
                &h,
            ],
        )
        .await;
        assert_eq!(r.code, 0, "{rt}: {}", r.err);
        let r = nimbus(
            &url,
            &token,
            &[
                "fn",
                "invoke",
                &format!("hi-{rt}"),
                "--data",
                "{\"name\": \"x\"}",
            ],
        )
        .await;
        assert_eq!(r.code, 0, "{rt}: {}", r.err);
    }

    // Output formats: JSON when piped; a table or YAML when asked.
    let r = ok(&url, &token, &["-o", "table", "fn", "list"]).await;
    let first = r.text.lines().next().unwrap();
    assert!(
        first.starts_with("NAME") && first.contains("STATE") && first.contains("RUNTIME"),
        "{}",
        r.text
    );
    assert!(
        r.text
            .lines()
            .any(|l| l.starts_with("hello ") && l.contains("Active")),
        "{}",
        r.text
    );
    assert!(
        !r.text.contains('\x1b'),
        "no colour when piped: {:?}",
        r.text
    );
    let r = nimbus(&url, &token, &["-o", "yaml", "fn", "get", "hello"]).await;
    assert!(
        r.text.starts_with("function:\n") && r.text.contains("  name: hello"),
        "{}",
        r.text
    );
    let r = nimbus(&url, &token, &["-o", "xml", "fn", "list"]).await;
    assert_eq!(r.code, 1);
    assert!(r.err.contains("table, json or yaml"), "{}", r.err);

    // Offline refuses calls; online takes them again.
    ok(&url, &token, &["fn", "offline", "hello"]).await;
    let r = nimbus(&url, &token, &["fn", "invoke", "hello"]).await;
    assert_eq!(r.code, 4, "409 while offline: {}", r.err);
    ok(&url, &token, &["fn", "online", "hello"]).await;

    // Config and async settings change only what is given.
    let r = ok(
        &url,
        &token,
        &[
            "fn",
            "config",
            "hello",
            "--memory",
            "256",
            "--reserved",
            "5",
        ],
    )
    .await;
    assert_eq!(r.out["memory_mb"], 256, "{}", r.out);
    assert_eq!(r.out["reserved_concurrency"], 5);
    assert_eq!(r.out["timeout_ms"], 3000, "the rest is kept");
    let r = nimbus(
        &url,
        &token,
        &["fn", "config", "hello", "--reserved", "none"],
    )
    .await;
    assert_eq!(
        r.out["reserved_concurrency"],
        serde_json::Value::Null,
        "{}",
        r.out
    );
    let r = ok(
        &url,
        &token,
        &[
            "fn",
            "async",
            "hello",
            "--max-retries",
            "0",
            "--on-failure",
            "hi-nodejs",
        ],
    )
    .await;
    assert_eq!(r.out["max_retries"], 0, "{}", r.out);
    assert_eq!(r.out["on_failure"]["function"], "hi-nodejs");
    assert_eq!(r.out["max_event_age_s"], 21600, "the rest is kept");

    // An async call, followed to its end over the watch websocket.
    let r = ok(
        &url,
        &token,
        &[
            "fn",
            "invoke",
            "hello",
            "--async",
            "--watch",
            "--data",
            "{\"name\": \"w\"}",
        ],
    )
    .await;
    assert_eq!(r.out["state"], "Succeeded", "{}", r.out);
    assert_eq!(r.out["result"]["hello"], "w", "{}", r.out);
    assert!(r.err.contains("Succeeded"), "states on stderr: {}", r.err);
    // The same behind TLS (a deployment's ingress): https for the call, wss for the
    // watch, the CA taken from SSL_CERT_FILE as other tools do.
    let (tls_url, ca) = tls_front(&url, dir.path()).await;
    let r = nimbus_env(
        &tls_url,
        &token,
        &[
            "fn", "invoke", "hello", "--async", "--watch", "--data", "{}",
        ],
        &[("SSL_CERT_FILE", ca.to_str().unwrap())],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert_eq!(r.out["state"], "Succeeded", "{}", r.out);
    let r = nimbus(&tls_url, &token, &["fn", "get", "hello"]).await;
    assert_eq!(r.code, 1, "an unknown CA is refused: {}", r.out);

    // Buckets and objects; a queue; the network.
    ok(&url, &token, &["bucket", "create", "docs"]).await;
    let file = dir.path().join("note.txt");
    std::fs::write(&file, b"hello \x00 bytes").unwrap();
    ok(
        &url,
        &token,
        &[
            "bucket",
            "put",
            "docs",
            "a/note.txt",
            file.to_str().unwrap(),
        ],
    )
    .await;
    let back = dir.path().join("back.txt");
    ok(
        &url,
        &token,
        &[
            "bucket",
            "get",
            "docs",
            "a/note.txt",
            "--to",
            back.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(std::fs::read(&back).unwrap(), b"hello \x00 bytes");
    let r = nimbus(&url, &token, &["bucket", "list"]).await;
    assert!(r.text.contains("docs"), "{}", r.text);
    ok(&url, &token, &["bucket", "delete", "docs", "a/note.txt"]).await;
    let r = nimbus(&url, &token, &["bucket", "get", "docs", "a/note.txt"]).await;
    assert_eq!(r.code, 3, "{}", r.err);
    ok(
        &url,
        &token,
        &["queue", "send", "orders", "--data", "{\"n\": 1}"],
    )
    .await;
    ok(
        &url,
        &token,
        &["network", "set", "--egress", "api.example.com"],
    )
    .await;
    let r = nimbus(&url, &token, &["network", "get"]).await;
    assert_eq!(r.out["egress"][0], "api.example.com", "{}", r.out);

    // Tenant limits (admin): shown, and changed one key at a time.
    let r = ok(&url, &admin, &["tenant", "limits", "acme"]).await;
    let before = r.out.clone();
    let r = ok(
        &url,
        &admin,
        &[
            "tenant",
            "limits",
            "acme",
            "--set",
            "max_functions=7",
            "--set",
            "monthly_requests=1000",
        ],
    )
    .await;
    assert_eq!(r.out["max_functions"], 7, "{}", r.out);
    assert_eq!(r.out["monthly_requests"], 1000);
    assert_eq!(
        r.out["rate_per_sec"], before["rate_per_sec"],
        "the rest is kept"
    );
    let r = nimbus(
        &url,
        &token,
        &["tenant", "limits", "acme", "--set", "max_functions=1000"],
    )
    .await;
    assert_eq!(r.code, 4, "an owner may not lift its own limits: {}", r.err);
    let r = nimbus(&url, &admin, &["tenant", "limits", "nope"]).await;
    assert_eq!(r.code, 3, "{}", r.err);

    // Completions and the man pages.
    for shell in ["bash", "zsh", "fish"] {
        let r = ok(&url, &token, &["completions", shell]).await;
        assert!(
            r.text.contains("nimbus") && r.text.contains("apply"),
            "{shell}"
        );
    }
    let r = nimbus(&url, &token, &["man"]).await;
    assert!(
        r.text.starts_with(".ie") || r.text.contains(".TH nimbus"),
        "{}",
        &r.text[..200.min(r.text.len())]
    );
    let mandir = dir.path().join("man");
    ok(&url, &token, &["man", "--dir", mandir.to_str().unwrap()]).await;
    assert!(mandir.join("nimbus-fn-deploy.1").is_file());
    p.stop().await.unwrap();
}

/// A TLS front for `url` (a `nimbus up` on loopback): a CA and a certificate for
/// localhost made with `openssl`, and a task that terminates TLS and passes the
/// bytes on. Returns the https URL and the CA's PEM file.
async fn tls_front(url: &str, dir: &std::path::Path) -> (String, std::path::PathBuf) {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let subj_ca = "/CN=nimbus test CA";
    run(&[
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", subj_ca,
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(dir.join("tls.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("tls.key")).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let backend = url.trim_start_matches("http://").to_string();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, backend) = (acceptor.clone(), backend.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(&backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    (format!("https://localhost:{port}"), dir.join("ca.pem"))
}
