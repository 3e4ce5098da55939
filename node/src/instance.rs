//! One instance: its sockets, its process, its readiness; and the spares'
//! pool (instances started ahead of any function).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nimbus_core::model::Runtime;
use nimbus_core::nodes::NodeError;
use tokio::sync::{mpsc, watch};

use crate::runtime_api::{ApiShared, Invocation};
use crate::{egress, sandbox};

/// The python3 bootstrap shipped in the binary.
pub(crate) const PYTHON_BOOTSTRAP: &str = include_str!("../runtimes/python_bootstrap.py");
/// The nodejs bootstrap shipped in the binary.
pub(crate) const NODE_BOOTSTRAP: &str = include_str!("../runtimes/node_bootstrap.js");

/// The listeners of an instance with a network of its own.
pub(crate) struct Sockets {
    pub(crate) api: tokio::net::UnixListener,
    pub(crate) egress: Option<(tokio::net::UnixListener, Arc<egress::Rules>)>,
}

/// Binds an instance's sockets in `dir`, reachable by the sandbox's user.
pub(crate) fn open_sockets(
    dir: &std::path::Path,
    egress_rules: &[String],
    open: &[String],
) -> anyhow::Result<Sockets> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let bind = |name: &str| -> anyhow::Result<tokio::net::UnixListener> {
        let path = dir.join(name);
        let l = tokio::net::UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        Ok(l)
    };
    let rules = egress::Rules::parse(egress_rules, open);
    Ok(Sockets {
        api: bind("api.sock")?,
        egress: if rules.any() {
            Some((bind("egress.sock")?, Arc::new(rules)))
        } else {
            None
        },
    })
}

/// How long an instance may take to initialise (Lambda's 10 s).
pub(crate) const INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A running instance.
pub(crate) struct Instance {
    /// Feeds `GET /next`.
    pub(crate) tx: mpsc::Sender<Invocation>,
    /// The API server's state.
    pub(crate) shared: Arc<ApiShared>,
    /// The process id (also its process group).
    pub(crate) pid: u32,
    /// True once the process has exited.
    pub(crate) exited: watch::Receiver<bool>,
    /// When it last finished a call.
    pub(crate) last_used: Mutex<Instant>,
    /// The API server task.
    pub(crate) server: tokio::task::JoinHandle<()>,
    /// The egress proxy task, if the instance may reach out.
    pub(crate) egress: Option<tokio::task::JoinHandle<()>>,
    /// The directory of its sockets, if it has a network of its own.
    pub(crate) run_dir: Option<PathBuf>,
    /// Its own task root, if it started as a spare (the code is linked in).
    pub(crate) task_dir: Option<PathBuf>,
    /// Its cgroups (a spare's memory limit changes when it is specialised).
    pub(crate) cgroups: Option<Arc<sandbox::InstanceCgroups>>,
}

impl Instance {
    pub(crate) fn alive(&self) -> bool {
        !*self.exited.borrow()
    }

    /// What the instance uses now, KB: its cgroup's working set, or without cgroups
    /// (no sandbox) its process's resident set.
    pub(crate) fn memory_kb(&self) -> Option<u64> {
        if let Some(cg) = &self.cgroups {
            return cg.working_set_kb();
        }
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
        rss.trim().trim_end_matches("kB").trim().parse().ok()
    }

    /// Kills the whole process group and stops the API server.
    pub(crate) fn kill(&self) {
        if self.alive() && self.pid > 0 {
            // The group, so whatever the function forked dies too.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            // And whatever left the group: everything in the instance's cgroups.
            if let Some(cg) = &self.cgroups {
                cg.kill_all();
            }
        }
        self.server.abort();
        if let Some(e) = &self.egress {
            e.abort();
        }
        self.shared.fail_inflight();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
        for d in [&self.run_dir, &self.task_dir].into_iter().flatten() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// An instance with no process behind it, for the pools' tests.
#[cfg(test)]
pub(crate) fn test_instance() -> Arc<Instance> {
    let (shared, tx) = ApiShared::new();
    Arc::new(Instance {
        tx,
        shared,
        pid: 0,
        exited: watch::channel(false).1,
        last_used: Mutex::new(Instant::now()),
        server: tokio::spawn(async {}),
        egress: None,
        run_dir: None,
        task_dir: None,
        cgroups: None,
    })
}

pub(crate) fn resolve(cmd: &str, probe: &[&str]) -> PathBuf {
    std::process::Command::new(cmd)
        .args(probe)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| PathBuf::from(cmd))
}

/// Waits for a started instance to initialise (its first `GET /next`).
pub(crate) async fn await_ready(inst: Arc<Instance>) -> Result<Arc<Instance>, NodeError> {
    let shared = inst.shared.clone();
    let mut exited = inst.exited.clone();
    tokio::select! {
        _ = shared.ready.notified() => Ok(inst),
        _ = shared.init_failed.notified() => {
            let doc = shared.init_error.lock().expect("lock").clone().unwrap_or_default();
            Err(NodeError::Init(format!("the function failed to initialise: {}", String::from_utf8_lossy(&doc))))
        }
        _ = exited.wait_for(|e| *e) => Err(NodeError::Init("the runtime exited during initialisation".into())),
        _ = tokio::time::sleep(INIT_TIMEOUT) => Err(NodeError::Init("the runtime did not initialise within 10 s".into())),
    }
}

/// Runtimes with spares: interpreters whose start is most of a cold start, and
/// `provided`, whose sandbox is (nimbus-init holds it until the function is known;
/// only in a sandbox with nimbus-init).
pub(crate) const SPARE_RUNTIMES: [Runtime; 3] =
    [Runtime::Python3, Runtime::Nodejs, Runtime::Provided];
/// A spare's memory limit until it is specialised.
pub(crate) const SPARE_MEMORY_MB: u32 = 128;

/// One runtime's spares.
#[derive(Default)]
pub(crate) struct SparePool {
    /// Waiting to be specialised.
    pub(crate) ready: Vec<Arc<Instance>>,
    /// Being started.
    pub(crate) starting: usize,
    /// After a failed start, no retry before this.
    pub(crate) failed_until: Option<Instant>,
}

/// Links (or copies, across file systems) the tree `src` into the directory `dst`.
pub(crate) fn link_tree(src: &std::path::Path, dst: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            std::fs::create_dir(&to)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
            link_tree(&from, &to)?;
        } else if kind.is_file() && std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to)?;
        }
    }
    Ok(())
}
