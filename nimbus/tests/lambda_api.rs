//! The Lambda-compatible API through the AWS tools themselves, against `nimbus up`:
//! the official Rust SDK (`aws-sdk-lambda`), and boto3 with the AWS CLI (a python
//! script, `tests/lambda/boto3_lifecycle.py`). Signatures are the SDKs' own.

mod common;

use std::time::{Duration, SystemTime};

use aws_sdk_lambda::Client;
use aws_sdk_lambda::client::Waiters as _;
use aws_sdk_lambda::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{Environment, InvocationType, LogType, Runtime};
use base64::Engine as _;
use common::{Api, up};
use serde_json::{Value, json};

/// A tenant's credentials for the Lambda-compatible API.
struct Keys {
    api_key: String,
    access_key_id: String,
    secret: String,
}

/// Creates a tenant through the admin API; its owner key and AWS pair.
async fn tenant(p: &nimbus::Platform, name: &str) -> Keys {
    let admin = Api::new(&p.url, p.admin_key.as_deref());
    let r = admin.post("/v1/tenants", json!({"name": name})).await;
    assert_eq!(r.status, 201, "{r:?}");
    Keys {
        api_key: r.body["api_key"].as_str().unwrap().into(),
        access_key_id: r.body["aws_access_key_id"].as_str().unwrap().into(),
        secret: r.body["aws_secret_access_key"].as_str().unwrap().into(),
    }
}

fn client(url: &str, access_key_id: &str, secret: &str) -> Client {
    let config = aws_sdk_lambda::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(url)
        .region(Region::new("local"))
        .credentials_provider(Credentials::new(access_key_id, secret, None, None, "test"))
        .build();
    Client::from_conf(config)
}

fn zip(source: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(common::py_zip(source))
        .unwrap()
}

/// The AWS error code of a failed SDK call.
fn code<E, R>(
    r: Result<R, aws_sdk_lambda::error::SdkError<E, aws_sdk_lambda::config::http::HttpResponse>>,
) -> String
where
    E: aws_sdk_lambda::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e
            .as_service_error()
            .and_then(|s| s.code())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("not a service error: {e:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_sdk_works_unmodified() {
    let (p, _acme, _dir) = up(&[]).await;
    let keys = tenant(&p, "rusty").await;
    // The same tenant on the native API.
    let native = Api::new(&p.url, Some(&keys.api_key));
    let lam = client(&p.url, &keys.access_key_id, &keys.secret);

    let created = lam
        .create_function()
        .function_name("hello")
        .runtime(Runtime::Python312)
        .role("arn:aws:iam::123456789012:role/r")
        .handler("index.handler")
        .code(
            aws_sdk_lambda::types::FunctionCode::builder()
                .zip_file(Blob::new(zip(
                    "print('hi from rust'); return {'got': event}",
                )))
                .build(),
        )
        .environment(Environment::builder().variables("K", "v").build())
        .memory_size(256)
        .send()
        .await
        .expect("CreateFunction");
    assert_eq!(created.state().map(|s| s.as_str()), Some("Pending"));
    let arn = created.function_arn().unwrap().to_string();
    assert!(arn.starts_with("arn:aws:lambda:local:"), "{arn}");

    // The SDK's own waiter.
    lam.wait_until_function_active_v2()
        .function_name("hello")
        .wait(Duration::from_secs(60))
        .await
        .expect("the function becomes Active");
    let got = lam.get_function().function_name(&arn).send().await.unwrap();
    let c = got.configuration().unwrap();
    assert_eq!(c.memory_size(), Some(256));
    assert_eq!(
        c.environment()
            .and_then(|e| e.variables())
            .and_then(|v| v.get("K"))
            .map(String::as_str),
        Some("v")
    );

    let out = lam
        .invoke()
        .function_name("hello")
        .payload(Blob::new(br#"{"a":1}"#.to_vec()))
        .log_type(LogType::Tail)
        .send()
        .await
        .expect("Invoke");
    assert_eq!(out.status_code(), 200);
    assert_eq!(out.executed_version(), Some("$LATEST"));
    let body: Value = serde_json::from_slice(out.payload().unwrap().as_ref()).unwrap();
    assert_eq!(body, json!({"got": {"a": 1}}));
    let log = base64::engine::general_purpose::STANDARD
        .decode(out.log_result().unwrap())
        .unwrap();
    let log = String::from_utf8(log).unwrap();
    assert!(log.contains("hi from rust"), "{log}");
    assert!(
        log.lines().last().unwrap().starts_with("REPORT RequestId:"),
        "{log}"
    );

    let queued = lam
        .invoke()
        .function_name("hello")
        .invocation_type(InvocationType::Event)
        .payload(Blob::new(b"{}".to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(queued.status_code(), 202);

    // Made through one API, seen and invoked through the other.
    let r = native.get("/v1/functions/hello").await;
    assert_eq!(r.body["function"]["memory_mb"], 256, "{r:?}");
    assert_eq!(r.body["function"]["arn"], arn.as_str());
    native.create_fn("native-made", json!({})).await;
    let c = lam
        .get_function_configuration()
        .function_name("native-made")
        .send()
        .await
        .unwrap();
    assert_eq!(c.state().map(|s| s.as_str()), Some("Active"));
    let out = lam
        .invoke()
        .function_name("native-made")
        .payload(Blob::new(br#"{"n":7}"#.to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(out.payload().unwrap().as_ref(), br#"{"n": 7}"#);

    let v = lam
        .publish_version()
        .function_name("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(v.version(), Some("1"));
    let alias = lam
        .create_alias()
        .function_name("hello")
        .name("prod")
        .function_version("1")
        .send()
        .await
        .unwrap();
    assert_eq!(alias.alias_arn(), Some(format!("{arn}:prod").as_str()));
    let out = lam
        .invoke()
        .function_name(format!("{arn}:prod"))
        .payload(Blob::new(b"{}".to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(out.executed_version(), Some("1"));
    let listed = lam.list_functions().send().await.unwrap();
    assert_eq!(listed.functions().len(), 2);

    // Errors arrive as the SDK's typed exceptions.
    let e = lam.get_function().function_name("missing").send().await;
    assert!(
        matches!(&e, Err(err) if err.as_service_error().is_some_and(|s| s.is_resource_not_found_exception())),
        "{e:?}"
    );
    let e = lam
        .get_function()
        .function_name("arn:aws:lambda:local:000000000000:function:hello")
        .send()
        .await;
    assert_eq!(
        code(e),
        "ResourceNotFoundException",
        "another account's ARN"
    );
    let e = lam
        .create_alias()
        .function_name("hello")
        .name("prod")
        .function_version("1")
        .send()
        .await;
    assert_eq!(code(e), "ResourceConflictException");

    lam.delete_function()
        .function_name("hello")
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_keys_and_roles() {
    let (p, _native, _dir) = up(&[]).await;
    let keys = tenant(&p, "sigs").await;
    let owner = Api::new(&p.url, Some(&keys.api_key));
    let lam = client(&p.url, &keys.access_key_id, &keys.secret);
    lam.list_functions().send().await.expect("a good signature");

    // A wrong secret, an unknown key, and no signature at all.
    let e = client(
        &p.url,
        &keys.access_key_id,
        "not-the-secret-0000000000000000000000000",
    )
    .list_functions()
    .send()
    .await;
    assert_eq!(code(e), "InvalidSignatureException");
    let e = client(
        &p.url,
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    )
    .list_functions()
    .send()
    .await;
    assert_eq!(code(e), "UnrecognizedClientException");
    let r = reqwest::get(format!("{}/2015-03-31/functions/", p.url))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.headers()["x-amzn-errortype"],
        "MissingAuthenticationTokenException"
    );

    // Signed ten minutes ago: refused (5 minutes at most).
    let signed_at = SystemTime::now() - Duration::from_secs(600);
    let r = signed_get(&p.url, "/2015-03-31/functions/", &keys, signed_at, "local").await;
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("Signature expired"),
        "{body}"
    );
    // Another region's scope: refused. Now, here: accepted.
    let r = signed_get(
        &p.url,
        "/2015-03-31/functions/",
        &keys,
        SystemTime::now(),
        "us-east-1",
    )
    .await;
    assert_eq!(r.status(), 403);
    let r = signed_get(
        &p.url,
        "/2015-03-31/functions/",
        &keys,
        SystemTime::now(),
        "local",
    )
    .await;
    assert_eq!(r.status(), 200);

    // Roles apply as on /v1: an invoker's pair may invoke, not create.
    let r = owner
        .post("/v1/api-keys", json!({"role": "invoker", "name": "ci"}))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let invoker = client(
        &p.url,
        r.body["aws_access_key_id"].as_str().unwrap(),
        r.body["aws_secret_access_key"].as_str().unwrap(),
    );
    let invoker_key_id = r.body["id"].as_str().unwrap().to_string();
    let e = invoker
        .create_function()
        .function_name("nope")
        .runtime(Runtime::Python312)
        .role("r")
        .handler("index.handler")
        .code(
            aws_sdk_lambda::types::FunctionCode::builder()
                .zip_file(Blob::new(zip("return 1")))
                .build(),
        )
        .send()
        .await;
    assert_eq!(code(e), "AccessDeniedException");
    invoker
        .list_functions()
        .send()
        .await
        .expect("invokers may read");

    // Revoking the key revokes its pair at once.
    let r = owner
        .delete(&format!("/v1/api-keys/{invoker_key_id}"))
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    let e = invoker.list_functions().send().await;
    assert_eq!(code(e), "UnrecognizedClientException");
}

/// A GET signed by `aws-sigv4` at `at` for `region`.
async fn signed_get(
    url: &str,
    path: &str,
    keys: &Keys,
    at: SystemTime,
    region: &str,
) -> reqwest::Response {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_sigv4::sign::v4;
    let host = url.trim_start_matches("http://").to_string();
    let identity =
        aws_credential_types::Credentials::new(&keys.access_key_id, &keys.secret, None, None, "t")
            .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("lambda")
        .time(at)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let headers = [("host", host.as_str())];
    let req = SignableRequest::new(
        "GET",
        format!("{url}{path}"),
        headers.iter().copied(),
        SignableBody::Bytes(b""),
    )
    .unwrap();
    let (instructions, _) = sign(req, &params).unwrap().into_parts();
    let mut r = reqwest::Client::new().get(format!("{url}{path}"));
    for (k, v) in instructions.headers() {
        r = r.header(k, v);
    }
    r.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_and_the_aws_cli_run_a_whole_lifecycle() {
    let (p, _native, _dir) = up(&[]).await;
    let keys = tenant(&p, "botos").await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/lambda/boto3_lifecycle.py"
    );
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(script)
        .env("NIMBUS_URL", &p.url)
        .env("AWS_ACCESS_KEY_ID", &keys.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &keys.secret)
        .env("AWS_DEFAULT_REGION", "local")
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    // .ci/run installs boto3 and the AWS CLI here when python3 lacks them.
    if let Ok(path) = std::env::var("NIMBUS_TEST_AWS_TOOLS") {
        cmd.env("PYTHONPATH", path);
    }
    let out = tokio::time::timeout(Duration::from_secs(600), cmd.output())
        .await
        .expect("the script finishes within 10 minutes")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the boto3 lifecycle failed (boto3 and awscli must be importable: .ci/run installs them)\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("boto3 lifecycle: all passed"), "{stdout}");
    eprintln!("{stdout}");
}
