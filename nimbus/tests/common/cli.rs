//! Runs the `nimbus` binary as a user would, against a running platform.

use serde_json::Value;

/// What one run of the binary left: exit code, stdout (as text and as JSON, Null if
/// it is not JSON), stderr.
pub struct Run {
    pub code: i32,
    pub out: Value,
    pub text: String,
    pub err: String,
}

/// `nimbus --url URL --token TOKEN ARGS…`, with `env` set (stdout is a pipe, so
/// answers are JSON unless `-o` says otherwise).
pub async fn nimbus_env(url: &str, token: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nimbus"));
    cmd.args(["--url", url, "--token", token]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        out: serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        text: String::from_utf8_lossy(&out.stdout).to_string(),
        err: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// [`nimbus_env`] without extra environment.
pub async fn nimbus(url: &str, token: &str, args: &[&str]) -> Run {
    nimbus_env(url, token, args, &[]).await
}
