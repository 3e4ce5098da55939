//! The CLI on a real terminal, driven through tmux: a deploy shows its spinner, a
//! listing is a table with a bold header, and the same commands piped print JSON
//! with no colour.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux server of the test's own (its socket in the test's directory), with one
/// window running a shell.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(dir: &Path, env: &[(&str, &str)]) -> Tmux {
        let t = Tmux {
            socket: dir.join("tmux.sock").to_string_lossy().into_owned(),
        };
        let mut cmd = t.cmd();
        cmd.args(["new-session", "-d", "-s", "t", "-x", "180", "-y", "50"]);
        for (k, v) in env {
            cmd.args(["-e", &format!("{k}={v}")]);
        }
        cmd.args(["sh"]);
        let out = cmd.output().expect("tmux runs (the CI installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-S", &self.socket]);
        c
    }

    /// Types a command line and presses Enter.
    fn run(&self, line: &str) {
        let ok = self
            .cmd()
            .args(["send-keys", "-t", "t", line, "Enter"])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Copies everything the window's programs write (escapes included) to `log`.
    fn record(&self, log: &Path) {
        let ok = self
            .cmd()
            .args(["pipe-pane", "-t", "t", &format!("cat >> {}", log.display())])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits until `log` holds the line a command ended with (`echo MARKER-$?-$((6*7))`
    /// prints `MARKER-<status>-42`, which the typed line does not hold), then returns it.
    async fn wait_for(&self, log: &Path, marker: &str) -> String {
        let marker = format!("{marker}-");
        let marker = marker.as_str();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.match_indices(marker).any(|(i, _)| {
                text[i..]
                    .lines()
                    .next()
                    .is_some_and(|l| l.trim_end().ends_with("-42"))
            }) {
                return text;
            }
            assert!(Instant::now() < deadline, "no {marker:?} in:\n{text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().args(["kill-server"]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_output_on_a_terminal_and_plain_when_piped() {
    let (p, owner, dir) = common::up(&[]).await;
    let token = owner.token.clone().unwrap();
    let bin = env!("CARGO_BIN_EXE_nimbus");
    let src = dir.path().join("tty");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("index.py"),
        "def handler(event, context):\n    return {'ok': True}\n",
    )
    .unwrap();
    let tmux = Tmux::start(
        dir.path(),
        &[
            ("NIMBUS_URL", &p.url),
            ("NIMBUS_TOKEN", &token),
            ("TERM", "xterm-256color"),
            ("NO_COLOR", ""),
            ("PS1", "$ "),
        ],
    );
    let log = dir.path().join("pane.log");
    tmux.record(&log);

    // A deploy on a terminal: the spinner says what the task is doing.
    tmux.run(&format!(
        "{bin} fn deploy {} --runtime python3 --handler index.handler; echo DEPLOYED-$?-$((6*7))",
        src.display()
    ));
    let text = tmux.wait_for(&log, "DEPLOYED").await;
    assert!(text.contains("DEPLOYED-0-42"), "{text}");
    assert!(
        text.contains("creating") || text.contains("updating"),
        "the spinner's message: {text}"
    );

    // A listing on a terminal: a table with a bold header, not JSON.
    tmux.run(&format!("{bin} fn list; echo LISTED-$?-$((6*7))"));
    let text = tmux.wait_for(&log, "LISTED").await;
    let listing = &text[text.rfind("fn list").unwrap()..];
    assert!(listing.contains("\x1b[1mNAME"), "bold header: {listing:?}");
    assert!(
        listing.contains("tty") && listing.contains("Active"),
        "{listing}"
    );
    assert!(!listing.contains("\"functions\""), "not JSON: {listing}");

    // The same piped: JSON, and no escape sequence at all.
    let piped = dir.path().join("piped.out");
    tmux.run(&format!(
        "{bin} fn list | cat > {}; echo PIPED-$?-$((6*7))",
        piped.display()
    ));
    tmux.wait_for(&log, "PIPED").await;
    let out = std::fs::read_to_string(&piped).unwrap();
    assert!(!out.contains('\x1b'), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["functions"][0]["name"], "tty");

    // NO_COLOR set to something: a table without colour, even on a terminal.
    tmux.run(&format!("NO_COLOR=1 {bin} fn list; echo PLAIN-$?-$((6*7))"));
    let text = tmux.wait_for(&log, "PLAIN").await;
    let plain = &text[text.rfind("NO_COLOR=1").unwrap()..];
    assert!(
        plain.contains("NAME") && !plain.contains("\x1b[1mNAME"),
        "{plain:?}"
    );
    p.stop().await.unwrap();
}
