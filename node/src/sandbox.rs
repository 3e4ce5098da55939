//! The instance sandbox, node side: what a node checks at start, and the command it
//! runs for each instance. The sandbox itself is built by `nimbus-init --jail` (the
//! `nimbus` crate's `jail`), with system calls only: no helper package.
//!
//! What it gives an instance:
//! - its own mount, PID, network, IPC, UTS and cgroup namespaces; a root made of the
//!   system's `/usr` (and `/lib*`, `/bin`, a few files of `/etc`) read-only, its own
//!   code read-only at `/var/task`, the runtime bootstraps read-only at
//!   `/opt/nimbus`, its sockets at `/run/nimbus`, a `/tmp` and `/dev/shm` of
//!   `memory_mb` at most (counted in its memory), a minimal `/dev`, a `/proc` that
//!   shows only its own processes; nothing of the platform or other functions;
//! - loopback only: the Runtime API (`127.0.0.1:9001` inside) and, if the tenant allows
//!   egress, the egress proxy (`127.0.0.1:3128`) are forwarded to Unix sockets of the
//!   node by `nimbus-init`;
//! - uid/gid 65534 (nobody), no capabilities, `no_new_privs`, and a seccomp filter
//!   (no `ptrace`, `mount`, `bpf`, `keyctl`, `perf_event_open`, new namespaces, …);
//! - through cgroups (v1 or v2): the memory limit of the function (`memory_mb`), at
//!   most 256 processes, and a CPU weight proportional to its memory (as Lambda
//!   gives CPU by memory; a weight, so an idle node's CPU is not wasted);
//! - death with the node, and with its first process.
//!
//! It fails closed: a node that cannot build it (not root, no writable cgroups, no
//! `nimbus-init`, or a kernel that refuses the namespaces) starts no process instance
//! and says why. Only `node.sandbox = "none"`, a deliberate development setting that
//! is logged as an error at start, runs functions as plain processes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Most processes (and threads) one instance may have.
pub const MAX_PIDS: u32 = 256;

/// Where the function's code appears inside the sandbox.
pub const TASK_ROOT: &str = "/var/task";
/// Where the runtime bootstraps appear inside the sandbox.
pub const RUNTIME_ROOT: &str = "/opt/nimbus";
/// The Runtime API's address inside a sandbox.
pub const API_ADDR: &str = "127.0.0.1:9001";
/// The egress proxy's address inside a sandbox.
pub const PROXY_ADDR: &str = "127.0.0.1:3128";
/// The user and group instances run as.
const NOBODY: u32 = 65534;
/// Memory (MB) whose instance gets the CPU weight of one full CPU (Lambda's 1,769).
const MB_PER_CPU: u64 = 1769;

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
    /// The directory of the instance's sockets (`api.sock`, maybe `egress.sock`),
    /// bound at `/run/nimbus`.
    pub run_dir: &'a Path,
    /// Whether the Runtime API is passed in (not for the start-up probe).
    pub api: bool,
    /// Whether the egress proxy is forwarded.
    pub egress: bool,
    /// Whether `nimbus-init` asks the node for the function (handler and environment)
    /// before running the program (every instance but an interpreter's spare, whose
    /// bootstrap asks itself).
    pub function: bool,
    /// The program's environment before the function's: the node's own constants,
    /// never anything of the tenant's.
    pub env: &'a [(&'a str, String)],
}

/// Which cgroup layout the node can write.
#[derive(Debug, Clone)]
enum Cgroups {
    /// v1: separate hierarchies (`cpu` when it is there).
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: Option<PathBuf>,
    },
    /// v2: one unified hierarchy (with `cpu` when it is enabled).
    V2 { root: PathBuf, cpu: bool },
}

/// How instances are confined on this node.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// `nimbus-init` and its leading argument; None: `node.sandbox = "none"`.
    init: Option<(PathBuf, Option<String>)>,
    /// Why no instance can start here, when the sandbox is required but cannot be
    /// built (fail closed).
    unavailable: Option<String>,
    /// Writable cgroup parents.
    cgroups: Option<Cgroups>,
    /// The empty directory each sandbox mounts its own root on (in its own mount
    /// namespace: the node's stays empty).
    root: PathBuf,
}

/// The cgroup directories of one instance; removed when it is dropped.
#[derive(Debug)]
pub struct InstanceCgroups {
    dirs: Vec<PathBuf>,
    /// The memory limit's files (the limit, and the swap limit if any).
    memory: (PathBuf, Option<PathBuf>),
    /// The CPU weight's file and its format (v1 `cpu.shares` or v2 `cpu.weight`).
    cpu: Option<(PathBuf, bool)>,
    /// The peak memory's file, opened at the first read (every call's REPORT line
    /// reads it) and read again in place after.
    peak: std::sync::OnceLock<Option<std::fs::File>>,
}

impl InstanceCgroups {
    /// Changes the memory limit and the CPU weight (a spare becoming a function).
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
        if let Some((file, v2)) = &self.cpu {
            std::fs::write(file, cpu_weight(memory_mb, *v2))?;
        }
        Ok(())
    }

    /// The most memory the instance has used so far, MB (v1
    /// `memory.max_usage_in_bytes`, v2 `memory.peak`), if the kernel says.
    pub fn peak_memory_mb(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt as _;
        let file = self
            .peak
            .get_or_init(|| {
                let dir = self.memory.0.parent()?;
                ["memory.max_usage_in_bytes", "memory.peak"]
                    .iter()
                    .find_map(|f| std::fs::File::open(dir.join(f)).ok())
            })
            .as_ref()?;
        let mut buf = [0u8; 32];
        let n = file.read_at(&mut buf, 0).ok()?;
        std::str::from_utf8(&buf[..n])
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
            .map(|b| b.div_ceil(1024 * 1024))
    }

    /// What the instance uses now, KB: its memory cgroup's usage less the file
    /// cache the kernel would reclaim first (inactive files), as kubelet's working
    /// set. None if the kernel does not say.
    pub fn working_set_kb(&self) -> Option<u64> {
        let dir = self.memory.0.parent()?;
        let usage: u64 = ["memory.usage_in_bytes", "memory.current"]
            .iter()
            .find_map(|f| std::fs::read_to_string(dir.join(f)).ok())?
            .trim()
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
        let inactive = stat
            .lines()
            .find_map(|l| {
                l.strip_prefix("total_inactive_file ")
                    .or_else(|| l.strip_prefix("inactive_file "))
            })
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        Some(usage.saturating_sub(inactive) / 1024)
    }

    /// Kills every process in the instance's cgroups (whatever session or group it
    /// moved to).
    pub fn kill_all(&self) {
        for d in &self.dirs {
            let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) else {
                continue;
            };
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

impl Drop for InstanceCgroups {
    fn drop(&mut self) {
        drop(self.peak.take());
        for d in &self.dirs {
            // Empty once the sandbox's processes are gone; a busy cgroup is retried by
            // the kernel's own cleanup when the last process exits.
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The CPU weight of an instance of `memory_mb`: v1 `cpu.shares` (1,024 = one CPU's
/// worth), v2 `cpu.weight` (100 = one CPU's worth); never below a tenth of a CPU.
fn cpu_weight(memory_mb: u32, v2: bool) -> String {
    let unit = if v2 { 100 } else { 1024 };
    let w = (memory_mb as u64 * unit / MB_PER_CPU).max(unit / 10);
    w.min(if v2 { 10_000 } else { 262_144 }).to_string()
}

fn euid_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn detect_cgroups() -> Option<Cgroups> {
    let base = Path::new("/sys/fs/cgroup");
    let (mem, pids, cpu) = (base.join("memory"), base.join("pids"), base.join("cpu"));
    if mem.join("cgroup.procs").exists() && pids.join("cgroup.procs").exists() {
        let (m, p, c) = (mem.join("nimbus"), pids.join("nimbus"), cpu.join("nimbus"));
        if std::fs::create_dir_all(&m).is_ok() && std::fs::create_dir_all(&p).is_ok() {
            let cpu = (cpu.join("cpu.shares").exists() && std::fs::create_dir_all(&c).is_ok())
                .then_some(c);
            return Some(Cgroups::V1 {
                memory: m,
                pids: p,
                cpu,
            });
        }
    }
    let controllers = std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
    if controllers.contains("memory") && controllers.contains("pids") {
        let root = base.join("nimbus");
        let ok = std::fs::write(base.join("cgroup.subtree_control"), "+memory +pids").is_ok()
            && std::fs::create_dir_all(&root).is_ok()
            && std::fs::write(root.join("cgroup.subtree_control"), "+memory +pids").is_ok();
        if ok {
            let cpu = controllers.contains("cpu")
                && std::fs::write(base.join("cgroup.subtree_control"), "+cpu").is_ok()
                && std::fs::write(root.join("cgroup.subtree_control"), "+cpu").is_ok();
            return Some(Cgroups::V2 { root, cpu });
        }
    }
    None
}

impl Sandbox {
    /// Detects what this node can do. `mode` is `namespaces` (the default; `auto` and
    /// `bwrap`, older names, mean the same: required) or `none` (plain processes:
    /// trusted code only, logged as an error). `init` is `nimbus-init`.
    /// `work_dir` holds the code the sandboxes bind.
    pub fn detect(
        mode: &str,
        work_dir: &Path,
        init: Option<(PathBuf, Option<String>)>,
    ) -> anyhow::Result<Sandbox> {
        let root = work_dir.join("jail-root");
        std::fs::create_dir_all(&root)?;
        match mode {
            "none" => {
                tracing::error!(
                    "node.sandbox = \"none\": functions run as plain processes of the node's user, \
                     with its network and files. Development with trusted code only."
                );
                return Ok(Sandbox {
                    init: None,
                    unavailable: None,
                    cgroups: None,
                    root,
                });
            }
            "namespaces" | "auto" | "bwrap" => {}
            other => anyhow::bail!("node.sandbox must be namespaces or none (got '{other}')"),
        }
        let mut sandbox = Sandbox {
            init: None,
            unavailable: None,
            cgroups: None,
            root,
        };
        let why = if !euid_is_root() {
            Some(
                "the node must run as root to build sandboxes (each instance then runs as \
                 nobody, without capabilities)"
                    .to_string(),
            )
        } else if init.as_ref().is_none_or(|(p, _)| !p.is_file()) {
            Some(format!(
                "nimbus-init was not found{} (build it: cargo build --release -p nimbus, \
                 or set node.init_path)",
                init.as_ref()
                    .map(|(p, _)| format!(" at {}", p.display()))
                    .unwrap_or_default()
            ))
        } else {
            sandbox.init = init;
            sandbox.cgroups = detect_cgroups();
            if sandbox.cgroups.is_none() {
                Some(
                    "no writable cgroup memory and pids controllers (mount cgroup2 at \
                     /sys/fs/cgroup, or the v1 memory and pids hierarchies, writable by root)"
                        .to_string(),
                )
            } else {
                sandbox.probe(work_dir).err()
            }
        };
        if why.is_none() && sandbox.init.is_some() {
            match landlock_abi() {
                Some(abi) => tracing::info!(landlock_abi = abi, "instances are sandboxed"),
                None => tracing::warn!(
                    "instances are sandboxed without Landlock (the kernel lacks it: Linux \
                     5.13+ with lsm=landlock); namespaces, cgroups and seccomp still apply"
                ),
            }
        }
        if let Some(why) = &why {
            tracing::error!(
                "instances cannot be sandboxed on this node, so none will start: {why}. \
                 (wasm functions still run.)"
            );
        }
        sandbox.unavailable = why;
        Ok(sandbox)
    }

    /// Builds one sandbox that runs `true`: the kernel allows what the jail needs.
    fn probe(&self, work_dir: &Path) -> Result<(), String> {
        let id = format!("probe-{}", nimbus_core::new_id());
        let (cmd, _cgroups) = self
            .command(Launch {
                id: &id,
                program: Path::new("/usr/bin/true"),
                args: &[],
                code_dir: work_dir,
                runtime_dir: work_dir,
                memory_mb: 64,
                run_dir: work_dir,
                api: false,
                egress: false,
                function: false,
                env: &[],
            })
            .map_err(|e| format!("{e:#}"))?;
        let out = cmd
            .into_std()
            .output()
            .map_err(|e| format!("running nimbus-init: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "a test sandbox failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Whether instances run sandboxed (false only with `node.sandbox = "none"`).
    pub fn isolated(&self) -> bool {
        self.init.is_some() || self.unavailable.is_some()
    }

    /// Whether memory, process and CPU limits apply.
    pub fn limited(&self) -> bool {
        self.cgroups.is_some()
    }

    /// Why no process instance can start on this node, if so.
    pub fn unavailable(&self) -> Option<&str> {
        self.unavailable.as_deref()
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
        let made = match cg {
            Cgroups::V1 { memory, pids, cpu } => {
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
                let mut dirs = vec![m, p];
                let mut weight = None;
                if let Some(cpu) = cpu {
                    let c = cpu.join(id);
                    std::fs::create_dir_all(&c)?;
                    let file = c.join("cpu.shares");
                    std::fs::write(&file, cpu_weight(memory_mb, false))?;
                    weight = Some((file, false));
                    dirs.push(c);
                }
                InstanceCgroups {
                    dirs,
                    memory,
                    cpu: weight,
                    peak: Default::default(),
                }
            }
            Cgroups::V2 { root, cpu } => {
                let d = root.join(id);
                std::fs::create_dir_all(&d)?;
                std::fs::write(d.join("memory.max"), bytes.to_string())?;
                let _ = std::fs::write(d.join("memory.swap.max"), "0");
                std::fs::write(d.join("pids.max"), MAX_PIDS.to_string())?;
                let weight = if *cpu {
                    let file = d.join("cpu.weight");
                    std::fs::write(&file, cpu_weight(memory_mb, true))?;
                    Some((file, true))
                } else {
                    None
                };
                InstanceCgroups {
                    memory: (d.join("memory.max"), None),
                    dirs: vec![d],
                    cpu: weight,
                    peak: Default::default(),
                }
            }
        };
        Ok(Some(made))
    }

    /// The command that runs one instance, confined, and its cgroups (kept alive as
    /// long as the instance). Its environment is fixed: only `PATH` reaches the
    /// launcher; the program gets `launch.env` and, inside, the function's own.
    pub fn command(
        &self,
        launch: Launch<'_>,
    ) -> anyhow::Result<(tokio::process::Command, Option<InstanceCgroups>)> {
        if let Some(why) = &self.unavailable {
            anyhow::bail!("instances cannot be sandboxed on this node: {why}");
        }
        let Some((init, init_arg)) = &self.init else {
            anyhow::bail!("node.sandbox = \"none\" runs instances without nimbus-init");
        };
        let cgroups = self.make_cgroups(launch.id, launch.memory_mb)?;
        let mut cmd = tokio::process::Command::new(init);
        if let Some(a) = init_arg {
            cmd.arg(a);
        }
        let bind = |src: &Path, dst: &str| {
            let mut s = OsString::from(src);
            s.push("=");
            s.push(dst);
            s
        };
        cmd.arg("--jail").arg(&self.root);
        cmd.arg("--ro").arg(bind(launch.code_dir, TASK_ROOT));
        cmd.arg("--ro").arg(bind(launch.runtime_dir, RUNTIME_ROOT));
        cmd.arg("--ro").arg(bind(launch.run_dir, "/run/nimbus"));
        for d in cgroups.iter().flat_map(|c| c.dirs.iter()) {
            cmd.arg("--cgroup").arg(d);
        }
        cmd.arg("--user").arg(format!("{NOBODY}:{NOBODY}"));
        // Half the memory: tmpfs pages count in the memory limit, so /tmp fills
        // (ENOSPC) before the function is killed for memory.
        cmd.arg("--tmp-mb")
            .arg((launch.memory_mb / 2).max(16).to_string());
        for (k, v) in launch.env {
            cmd.arg("--env").arg(format!("{k}={v}"));
        }
        if launch.function {
            cmd.arg("--function");
        }
        if launch.api {
            cmd.arg("--pass")
                .arg(format!("{API_ADDR}=/run/nimbus/api.sock"));
        }
        if launch.egress {
            cmd.arg("--forward")
                .arg(format!("{PROXY_ADDR}=/run/nimbus/egress.sock"));
        }
        cmd.arg("--").arg(launch.program).args(launch.args);
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .current_dir("/");
        Ok((cmd, cgroups))
    }
}

/// The Landlock ABI this kernel offers, if any (the jail enforces what it offers).
#[allow(unsafe_code)]
fn landlock_abi() -> Option<i64> {
    const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
    // SAFETY: with a null attribute and this flag, the call only returns the version.
    let v = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (v > 0).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_follows_memory() {
        assert_eq!(cpu_weight(1769, false), "1024");
        assert_eq!(cpu_weight(3538, true), "200");
        // Small functions keep a tenth of a CPU's weight.
        assert_eq!(cpu_weight(128, false), "102");
        assert_eq!(cpu_weight(128, true), "10");
    }

    /// Needs writable cgroups, as the sandbox does (CI runs as root).
    #[test]
    fn peak_memory_is_read_again_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sandbox {
            init: None,
            unavailable: None,
            cgroups: Some(detect_cgroups().expect("writable cgroups")),
            root: dir.path().to_path_buf(),
        };
        let id = format!("peak-test-{}", nimbus_core::new_id());
        let cg = s.make_cgroups(&id, 128).unwrap().expect("made");
        // No process has run in it: nothing used, read twice from one open file.
        assert_eq!(cg.peak_memory_mb(), Some(0));
        assert_eq!(cg.peak_memory_mb(), Some(0));
        let dirs = cg.dirs.clone();
        drop(cg);
        assert!(
            dirs.iter().all(|d| !d.exists()),
            "removed with its file open before"
        );
    }

    #[test]
    fn an_unknown_mode_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Sandbox::detect("bwarp", dir.path(), None).is_err());
    }

    #[test]
    fn without_init_nothing_starts() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sandbox::detect("namespaces", dir.path(), None).unwrap();
        assert!(s.isolated(), "required, not silently dropped");
        assert!(s.unavailable().is_some());
        let launch = Launch {
            id: "x",
            program: Path::new("/usr/bin/true"),
            args: &[],
            code_dir: dir.path(),
            runtime_dir: dir.path(),
            memory_mb: 128,
            run_dir: dir.path(),
            api: true,
            egress: false,
            function: true,
            env: &[],
        };
        assert!(s.command(launch).is_err());
    }
}
