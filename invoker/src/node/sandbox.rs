//! The instance sandbox: bubblewrap namespaces, an unprivileged user, and cgroup
//! limits on memory and process count.
//!
//! What it gives an instance (with `bwrap` present):
//! - its own mount, PID, IPC, UTS and user namespaces; a root made of the system's
//!   `/usr` (and `/lib*`, `/bin`, a few files of `/etc`) read-only, its own code
//!   read-only at `/var/task`, the runtime bootstraps read-only at `/opt/nimbus`, a
//!   private `/tmp`, and nothing else: no other function's code, no platform data;
//! - uid/gid 65534 (nobody) when the node runs as root;
//! - the memory limit of the function (`memory_mb`) and at most 256 processes, through
//!   cgroups (v1 or v2, whichever is writable);
//! - death with the node (`--die-with-parent`): killing the sandbox's init takes every
//!   process in it along.
//!
//! - its own network namespace with loopback only, when `nimbus-init` is available:
//!   init hands the connections to the Runtime API (`127.0.0.1:9001` inside) to the
//!   node, and, if the tenant allows egress, forwards the egress proxy
//!   (`127.0.0.1:3128`), through Unix sockets the node binds at `/run/nimbus`. Nothing else of the node or the network is reachable. Without
//!   `nimbus-init` the instance shares the node's network (a warning says so).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Most processes (and threads) one instance may have.
pub const MAX_PIDS: u32 = 256;

/// Where the function's code appears inside the sandbox.
pub const TASK_ROOT: &str = "/var/task";
/// Where the runtime bootstraps appear inside the sandbox.
pub const RUNTIME_ROOT: &str = "/opt/nimbus";

/// Where `nimbus-init` appears inside the sandbox.
pub const INIT_PATH: &str = "/nimbus-init";
/// The Runtime API's address inside an isolated sandbox.
pub const API_ADDR: &str = "127.0.0.1:9001";
/// The egress proxy's address inside an isolated sandbox.
pub const PROXY_ADDR: &str = "127.0.0.1:3128";

/// An instance's own network: loopback only, with forwards to the node's sockets.
#[derive(Debug)]
pub struct IsolatedNet<'a> {
    /// The directory of the instance's sockets (`api.sock`, maybe `egress.sock`).
    pub run_dir: &'a Path,
    /// The `nimbus-init` program.
    pub init: &'a Path,
    /// Its leading argument, if it needs one (`nimbus __sandbox-init`).
    pub init_arg: Option<&'a str>,
    /// Whether the egress proxy is forwarded.
    pub egress: bool,
    /// A spare: nimbus-init waits for its function (`GET /2018-06-01/nimbus/specialize`
    /// on the Runtime API) and only then runs the program, with the function's
    /// environment.
    pub spare: bool,
}

/// What one instance runs, and where.
#[derive(Debug)]
pub struct Launch<'a> {
    /// The instance id (names its cgroups).
    pub id: &'a str,
    /// The runtime program, as seen inside the sandbox.
    pub program: &'a Path,
    /// Its arguments.
    pub args: &'a [OsString],
    /// The unpacked code, bound at [`TASK_ROOT`].
    pub code_dir: &'a Path,
    /// The bootstraps, bound at [`RUNTIME_ROOT`].
    pub runtime_dir: &'a Path,
    /// The memory limit.
    pub memory_mb: u32,
    /// A network of its own, or the node's.
    pub net: Option<IsolatedNet<'a>>,
}

/// Which cgroup layout the node can write.
#[derive(Debug, Clone)]
enum Cgroups {
    /// v1: separate `memory` and `pids` hierarchies.
    V1 { memory: PathBuf, pids: PathBuf },
    /// v2: one unified hierarchy.
    V2 { root: PathBuf },
}

/// How instances are confined on this node.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The bubblewrap binary, if used.
    bwrap: Option<PathBuf>,
    /// Drop to nobody (the node runs as root).
    drop_root: bool,
    /// Writable cgroup parents, if any.
    cgroups: Option<Cgroups>,
}

/// The cgroup directories of one instance; removed when it is dropped.
#[derive(Debug)]
pub struct InstanceCgroups {
    dirs: Vec<PathBuf>,
    /// The memory limit's files (the limit, and the swap limit if any).
    memory: (PathBuf, Option<PathBuf>),
}

impl InstanceCgroups {
    /// Changes the memory limit (a spare becoming a function).
    pub fn set_memory(&self, memory_mb: u32) -> std::io::Result<()> {
        let bytes = ((memory_mb as u64) * 1024 * 1024).to_string();
        // v1: the swap limit must stay ≥ the memory limit, so order matters.
        if let Some(sw) = &self.memory.1 {
            let _ = std::fs::write(sw, &bytes);
        }
        std::fs::write(&self.memory.0, &bytes)?;
        if let Some(sw) = &self.memory.1 {
            let _ = std::fs::write(sw, &bytes);
        }
        Ok(())
    }
}

impl Drop for InstanceCgroups {
    fn drop(&mut self) {
        for d in &self.dirs {
            // Empty once the sandbox's processes are gone; a busy cgroup is retried by
            // the kernel's own cleanup when the last process exits.
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn euid_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/local/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn detect_cgroups() -> Option<Cgroups> {
    let base = Path::new("/sys/fs/cgroup");
    let (mem, pids) = (base.join("memory"), base.join("pids"));
    if mem.join("cgroup.procs").exists() && pids.join("cgroup.procs").exists() {
        let (m, p) = (mem.join("nimbus"), pids.join("nimbus"));
        if std::fs::create_dir_all(&m).is_ok() && std::fs::create_dir_all(&p).is_ok() {
            return Some(Cgroups::V1 { memory: m, pids: p });
        }
    }
    let controllers = std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
    if controllers.contains("memory") && controllers.contains("pids") {
        let root = base.join("nimbus");
        let ok = std::fs::write(base.join("cgroup.subtree_control"), "+memory +pids").is_ok()
            && std::fs::create_dir_all(&root).is_ok()
            && std::fs::write(root.join("cgroup.subtree_control"), "+memory +pids").is_ok();
        if ok {
            return Some(Cgroups::V2 { root });
        }
    }
    None
}

impl Sandbox {
    /// Detects what this node can do. `mode` is `auto` (bubblewrap if installed),
    /// `bwrap` (required), or `none` (plain processes: trusted code only).
    /// `work_dir` holds the code the sandboxes bind.
    pub fn detect(mode: &str, work_dir: &Path) -> anyhow::Result<Sandbox> {
        let bwrap = match mode {
            "none" => None,
            "bwrap" => Some(find_on_path("bwrap").ok_or_else(|| {
                anyhow::anyhow!("node.sandbox = \"bwrap\" but bubblewrap is not installed (apt-get install bubblewrap)")
            })?),
            "auto" => find_on_path("bwrap"),
            other => anyhow::bail!("node.sandbox must be auto, bwrap or none (got '{other}')"),
        };
        if bwrap.is_none() && mode != "none" {
            tracing::warn!(
                "bubblewrap is not installed: instances run unsandboxed (trusted code only)"
            );
        }
        let cgroups = if mode == "none" {
            None
        } else {
            detect_cgroups()
        };
        if cgroups.is_none() && mode != "none" {
            tracing::warn!(
                "no writable cgroup memory/pids controllers: instances have no memory or process limit"
            );
        }
        // As root, bubblewrap itself runs as nobody, which needs to reach the code it
        // binds. If a parent of the work dir is closed to others (a 0700 data dir),
        // bubblewrap runs as root and maps the instance to nobody in its user namespace
        // instead: the instance still sees only what is bound.
        let traversable = work_dir.ancestors().all(|d| {
            std::fs::metadata(d)
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o001 != 0)
                .unwrap_or(true)
        });
        let root = euid_is_root();
        if bwrap.is_some() && root && !traversable {
            tracing::info!(dir = %work_dir.display(), "node work dir is not reachable by nobody: bubblewrap maps the instance user instead");
        }
        Ok(Sandbox {
            drop_root: bwrap.is_some() && root && traversable,
            bwrap,
            cgroups,
        })
    }

    /// Whether instances run inside bubblewrap.
    pub fn isolated(&self) -> bool {
        self.bwrap.is_some()
    }

    /// Whether memory and process limits apply.
    pub fn limited(&self) -> bool {
        self.cgroups.is_some()
    }

    /// Where the code and bootstraps appear to the instance.
    pub fn paths(&self, code_dir: &Path, runtime_dir: &Path) -> (PathBuf, PathBuf) {
        if self.isolated() {
            (PathBuf::from(TASK_ROOT), PathBuf::from(RUNTIME_ROOT))
        } else {
            (code_dir.to_path_buf(), runtime_dir.to_path_buf())
        }
    }

    /// Creates the instance's cgroups with its limits.
    fn make_cgroups(&self, id: &str, memory_mb: u32) -> anyhow::Result<Option<InstanceCgroups>> {
        let Some(cg) = &self.cgroups else {
            return Ok(None);
        };
        let bytes = (memory_mb as u64) * 1024 * 1024;
        let dirs = match cg {
            Cgroups::V1 { memory, pids } => {
                let (m, p) = (memory.join(id), pids.join(id));
                std::fs::create_dir_all(&m)?;
                std::fs::create_dir_all(&p)?;
                std::fs::write(m.join("memory.limit_in_bytes"), bytes.to_string())?;
                // Best effort: not every kernel accounts swap.
                let _ = std::fs::write(m.join("memory.memsw.limit_in_bytes"), bytes.to_string());
                std::fs::write(p.join("pids.max"), MAX_PIDS.to_string())?;
                let memory = (
                    m.join("memory.limit_in_bytes"),
                    Some(m.join("memory.memsw.limit_in_bytes")),
                );
                (vec![m, p], memory)
            }
            Cgroups::V2 { root } => {
                let d = root.join(id);
                std::fs::create_dir_all(&d)?;
                std::fs::write(d.join("memory.max"), bytes.to_string())?;
                let _ = std::fs::write(d.join("memory.swap.max"), "0");
                std::fs::write(d.join("pids.max"), MAX_PIDS.to_string())?;
                let memory = (d.join("memory.max"), None);
                (vec![d], memory)
            }
        };
        let (dirs, memory) = dirs;
        Ok(Some(InstanceCgroups { dirs, memory }))
    }

    /// The command that runs `program args` for one instance, confined, and its
    /// cgroups (kept alive as long as the instance).
    pub fn command(
        &self,
        launch: Launch<'_>,
    ) -> anyhow::Result<(tokio::process::Command, Option<InstanceCgroups>)> {
        let Launch {
            id,
            program,
            args,
            code_dir,
            runtime_dir,
            memory_mb,
            net,
        } = launch;
        let cgroups = self.make_cgroups(id, memory_mb)?;
        let mut argv: Vec<OsString> = Vec::new();
        if let Some(bwrap) = &self.bwrap {
            if self.drop_root {
                argv.extend(
                    [
                        "setpriv",
                        "--reuid=65534",
                        "--regid=65534",
                        "--clear-groups",
                        "--",
                    ]
                    .map(OsString::from),
                );
            }
            argv.push(bwrap.into());
            let mut a = |s: &str| argv.push(s.into());
            for s in ["--unshare-all", "--die-with-parent", "--new-session"] {
                a(s);
            }
            if net.is_none() {
                a("--share-net");
            }
            if !self.drop_root {
                for s in ["--unshare-user", "--uid", "65534", "--gid", "65534"] {
                    a(s);
                }
            }
            for s in [
                "--ro-bind",
                "/usr",
                "/usr",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--tmpfs",
                "/tmp",
            ] {
                a(s);
            }
            for p in [
                "/lib",
                "/lib64",
                "/bin",
                "/sbin",
                "/etc/alternatives",
                "/etc/ssl",
                "/etc/ca-certificates",
                "/etc/resolv.conf",
                "/etc/hosts",
                "/etc/nsswitch.conf",
                "/etc/localtime",
                "/etc/mime.types",
            ] {
                a("--ro-bind-try");
                a(p);
                a(p);
            }
            argv.extend(["--ro-bind".into(), code_dir.into(), TASK_ROOT.into()]);
            argv.extend(["--ro-bind".into(), runtime_dir.into(), RUNTIME_ROOT.into()]);
            if let Some(n) = &net {
                argv.extend(["--ro-bind".into(), n.run_dir.into(), "/run/nimbus".into()]);
                argv.extend(["--ro-bind".into(), n.init.into(), INIT_PATH.into()]);
            }
            argv.extend(["--chdir", TASK_ROOT, "--hostname", "nimbus", "--"].map(OsString::from));
            if let Some(n) = &net {
                argv.push(INIT_PATH.into());
                if let Some(a) = n.init_arg {
                    argv.push(a.into());
                }
                if n.spare {
                    argv.push("--spare".into());
                }
                argv.push("--pass".into());
                argv.push(format!("{API_ADDR}=/run/nimbus/api.sock").into());
                if n.egress {
                    argv.push("--forward".into());
                    argv.push(format!("{PROXY_ADDR}=/run/nimbus/egress.sock").into());
                }
                argv.push("--".into());
            }
        } else if let Some(setpriv) = find_on_path("setpriv") {
            // Unsandboxed, the instance must still die with the node.
            argv.extend([
                setpriv.into(),
                "--pdeathsig".into(),
                "KILL".into(),
                "--".into(),
            ]);
        }
        argv.push(program.into());
        argv.extend(args.iter().cloned());
        // Join the cgroups before anything of the function runs: a shell moves itself,
        // then execs the rest (its children inherit the cgroups).
        let mut cmd = match &cgroups {
            Some(cg) => {
                let mut c = tokio::process::Command::new("/bin/sh");
                let joins: Vec<String> = cg
                    .dirs
                    .iter()
                    .map(|d| format!("echo $$ > '{}/cgroup.procs'", d.display()))
                    .collect();
                c.arg("-c")
                    .arg(format!("{} && exec \"$@\"", joins.join(" && ")))
                    .arg("nimbus-instance");
                c.args(&argv);
                c
            }
            None => {
                let mut c = tokio::process::Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
        };
        cmd.current_dir(if self.isolated() {
            Path::new("/")
        } else {
            code_dir
        });
        Ok((cmd, cgroups))
    }
}
