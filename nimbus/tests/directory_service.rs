//! `nimbus serve directory` on its own: it answers its health endpoints (`[ops]
//! listen`), makes the first admin key, and refuses every call without its token.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{PG, Proc, free_port};
use proto::directory::directory_client::DirectoryClient;
use proto::directory::{FollowRequest, WriteRequest};

#[tokio::test]
async fn the_directory_serves_health_and_refuses_calls_without_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let schema = format!("dir_{}", common::unique());
    let (grpc, ops) = (free_port(), free_port());
    let config = dir.path().join("directory.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{PG}\"\nschema = \"{schema}\"\n\n[api]\nadmin_key_file = \"{}/admin.key\"\n\n\
             [directory]\nlisten = \"127.0.0.1:{grpc}\"\ntoken = \"the-token\"\n\n[ops]\nlisten = \"127.0.0.1:{ops}\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("directory.log")).unwrap();
    let _p = Proc {
        name: "directory".into(),
        child: Command::new(env!("CARGO_BIN_EXE_nimbus"))
            .args(["serve", "directory", "--config"])
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    };
    let http = reqwest::Client::new();
    let start = Instant::now();
    loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{ops}/readyz"))
            .send()
            .await
            && r.status() == 200
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the directory did not become ready: {}",
            std::fs::read_to_string(dir.path().join("directory.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let h: serde_json::Value = http
        .get(format!("http://127.0.0.1:{ops}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["service"], "directory");
    let admin = std::fs::read_to_string(dir.path().join("admin.key")).unwrap();
    assert!(admin.starts_with("nmb_"), "{admin}");

    // Without the token, or with another, nothing is written or read.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for token in [None, Some("not-the-token")] {
        let mut c =
            DirectoryClient::with_interceptor(channel.clone(), proto::auth::AddToken::new(token));
        let w = c
            .write(WriteRequest {
                write: br#"{"op":"delete_tenant","tenant":"x"}"#.to_vec(),
            })
            .await
            .unwrap_err();
        assert_eq!(w.code(), tonic::Code::Unauthenticated);
        let f = c
            .follow(FollowRequest {
                after: 0,
                region: "r".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(f.code(), tonic::Code::Unauthenticated);
    }
    // With it, a bad write is refused as such and a follower reads the log: the
    // admin key is its first change.
    let mut c =
        DirectoryClient::with_interceptor(channel, proto::auth::AddToken::new(Some("the-token")));
    let bad = c
        .write(WriteRequest {
            write: b"{\"op\":\"drop_everything\"}".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let missing = c
        .write(WriteRequest {
            write: br#"{"op":"delete_tenant","tenant":"nobody"}"#.to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let mut s = c
        .follow(FollowRequest {
            after: 0,
            region: "r".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = s.message().await.unwrap().unwrap();
    let Some(proto::directory::follow_item::Item::Change(ch)) = first.item else {
        panic!("the log starts with a change: {first:?}");
    };
    assert_eq!(ch.seq, 1);
    let body: serde_json::Value = serde_json::from_slice(&ch.body).unwrap();
    assert_eq!(body["kind"], "key");
    assert_eq!(body["key"]["role"], "admin");

    use sea_orm::ConnectionTrait as _;
    if let Ok(db) = sea_orm::Database::connect(PG).await {
        let _ = db
            .execute_unprepared(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .await;
    }
}
