//! The jail `nimbus-init` builds around an instance, in the manner of Firecracker's
//! jailer: no helper program, only system calls, so a fresh machine needs nothing
//! installed to run tenants' code confined.
//!
//! `nimbus-init --jail ROOT …` runs in two stages:
//!
//! 1. **Outside** (started by the node, as root, with a fixed environment): joins the
//!    instance's cgroups (memory, pids, cpu), asks to die with the node, and unshares
//!    the mount, PID, network, IPC, UTS and cgroup namespaces. It then starts itself
//!    again ([`STAGE_ENV`]): that child is PID 1 of the new PID namespace.
//! 2. **Inside** ([`enter`]): makes every mount private, mounts a tmpfs on `ROOT` and
//!    builds the instance's file system there — the system's `/usr` (and `/lib*`,
//!    `/bin`, `/sbin`, a few files of `/etc`) read-only, the function's code
//!    read-only at `/var/task`, the bootstraps at `/opt/nimbus`, its sockets at
//!    `/run/nimbus`, a fresh `/proc` of its own PID namespace, a minimal `/dev`, and a
//!    size-limited `/tmp` — then `pivot_root`s into it and detaches the host's tree.
//!    It brings loopback up (the only interface), sets the hostname, lowers rlimits,
//!    drops to the unprivileged user (which clears every capability), confines file
//!    access with Landlock ([`landlock`]: read and execute everywhere in the jail,
//!    write only to `/tmp`, `/dev/shm` and the few devices; no signals or abstract
//!    sockets beyond the instance), sets `no_new_privs` and installs the seccomp
//!    filter ([`filter`]) that every process of the instance inherits.
//!
//! What a tenant controls (its environment, handler and code) never reaches stage 1:
//! the node passes only its own paths and ids on the command line, and the function's
//! environment arrives later, inside, over the Runtime API.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;

/// Set (to `2`) in the environment of the second stage.
pub const STAGE_ENV: &str = "NIMBUS_INIT_STAGE";

/// What the jail is made of (from `nimbus-init`'s arguments; all of it the node's).
#[derive(Debug, Default)]
pub struct Spec {
    /// An empty directory of the node's that becomes the instance's root (a tmpfs is
    /// mounted on it inside the instance's own mount namespace).
    pub root: PathBuf,
    /// Host paths bound into the root: (source, destination inside, writable).
    pub binds: Vec<(PathBuf, PathBuf, bool)>,
    /// cgroup directories to join before anything else.
    pub cgroups: Vec<PathBuf>,
    /// The user and group the instance runs as.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// The size of `/tmp` (and `/dev/shm`), MB.
    pub tmp_mb: u32,
}

/// Directories of the host shown read-only (symlinks, as on merged-/usr systems, are
/// recreated as symlinks).
const SYSTEM_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib64", "lib32", "libx32"];

/// Files and directories of the host's `/etc` shown read-only, when present.
const ETC: &[&str] = &[
    "alternatives",
    "ssl",
    "ca-certificates",
    "resolv.conf",
    "hosts",
    "nsswitch.conf",
    "localtime",
    "mime.types",
];

/// Device nodes bound from the host's `/dev`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];

fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

/// Stage 1: joins the cgroups, unshares the namespaces and runs stage 2 (this same
/// program, with the same arguments) as the first process of the new PID namespace.
/// Returns its exit code.
pub fn outside(spec: &Spec) -> io::Result<i32> {
    // Die with the node (bubblewrap's --die-with-parent).
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| err("pdeathsig", e))?;
    if !nix::unistd::geteuid().is_root() {
        return Err(io::Error::other(
            "the sandbox needs root (the node drops each instance to an unprivileged user)",
        ));
    }
    let me = nix::unistd::getpid().to_string();
    for cg in &spec.cgroups {
        std::fs::write(cg.join("cgroup.procs"), &me)
            .map_err(|e| err(format!("joining {}", cg.display()), e))?;
    }
    nix::sched::unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWCGROUP,
    )
    .map_err(|e| err("unshare", e))?;
    use std::os::unix::process::CommandExt as _;
    let status = std::process::Command::new("/proc/self/exe")
        .arg0("nimbus-init")
        .args(std::env::args_os().skip(1))
        .env_clear()
        .env(STAGE_ENV, "2")
        .status()
        .map_err(|e| err("starting the sandbox's init", e))?;
    use std::os::unix::process::ExitStatusExt as _;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// A read-only (or writable) bind of `src` at `dst`, which is created to match.
fn bind(src: &Path, dst: &Path, writable: bool) -> io::Result<()> {
    let meta = std::fs::metadata(src).map_err(|e| err(src.display(), e))?;
    if meta.is_dir() {
        std::fs::create_dir_all(dst)?;
    } else {
        if let Some(p) = dst.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::File::create(dst)?;
    }
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| err(format!("binding {}", src.display()), e))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID;
    if !writable {
        flags |= MsFlags::MS_RDONLY;
    }
    if !meta.file_type().is_char_device() {
        flags |= MsFlags::MS_NODEV;
    }
    mount(None::<&str>, dst, None::<&str>, flags, None::<&str>)
        .map_err(|e| err(format!("remounting {}", dst.display()), e))
}

use std::os::unix::fs::FileTypeExt as _;

/// A tmpfs at `dst` with `options`.
fn tmpfs(dst: &Path, options: &str) -> io::Result<()> {
    std::fs::create_dir_all(dst)?;
    mount(
        Some("tmpfs"),
        dst,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options),
    )
    .map_err(|e| err(format!("tmpfs at {}", dst.display()), e))
}

/// Stage 2, as PID 1 of the instance's namespaces: builds its file system, enters it,
/// and confines this process (and so everything it starts). Returns once the
/// process is the unprivileged, filtered first process of the instance.
pub fn enter(spec: &Spec) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| err("pdeathsig", e))?;
    // A session of its own: no terminal of the node's reaches the function.
    nix::unistd::setsid().map_err(|e| err("setsid", e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| err("making mounts private", e))?;
    let root = &spec.root;
    tmpfs(root, "mode=0755,size=1m")?;
    for d in SYSTEM_DIRS {
        let host = Path::new("/").join(d);
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                std::os::unix::fs::symlink(std::fs::read_link(&host)?, root.join(d))?
            }
            Ok(m) if m.is_dir() => bind(&host, &root.join(d), false)?,
            _ => {}
        }
    }
    for name in ETC {
        let host = Path::new("/etc").join(name);
        // Follow links (resolv.conf often points into /run).
        if let Ok(real) = std::fs::canonicalize(&host) {
            bind(&real, &root.join("etc").join(name), false)?;
        }
    }
    for (src, dst, writable) in &spec.binds {
        let inside = root.join(dst.strip_prefix("/").unwrap_or(dst));
        bind(src, &inside, *writable)?;
    }
    let proc_dir = root.join("proc");
    std::fs::create_dir_all(&proc_dir)?;
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| err("mounting /proc", e))?;
    let dev = root.join("dev");
    tmpfs(&dev, "mode=0755,size=64k")?;
    for d in DEVICES {
        bind(&Path::new("/dev").join(d), &dev.join(d), true)?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))?;
    }
    let sized = format!("mode=1777,size={}m", spec.tmp_mb.max(1));
    tmpfs(&dev.join("shm"), &sized)?;
    tmpfs(&root.join("tmp"), &sized)?;
    nix::unistd::sethostname("nimbus").map_err(|e| err("hostname", e))?;
    loopback_up().map_err(|e| err("bringing loopback up", e))?;

    // Into the new root; the host's tree is detached.
    nix::unistd::chdir(root.as_path()).map_err(|e| err("chdir", e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| err("pivot_root", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| err("detaching the host's root", e))?;
    nix::unistd::chdir("/").map_err(|e| err("chdir", e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| err("read-only root", e))?;

    use nix::sys::resource::{Resource, setrlimit};
    setrlimit(Resource::RLIMIT_NOFILE, 1024, 1024).map_err(|e| err("rlimit", e))?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|e| err("rlimit", e))?;

    // Unprivileged from here on: leaving uid 0 clears every capability.
    let (uid, gid) = (
        nix::unistd::Uid::from_raw(spec.uid),
        nix::unistd::Gid::from_raw(spec.gid),
    );
    nix::unistd::setgroups(&[]).map_err(|e| err("setgroups", e))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| err("setresgid", e))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| err("setresuid", e))?;
    // Setting the uid resets this; the instance must die with its outer stage.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| err("pdeathsig", e))?;
    landlock(spec)?;
    for program in filter()? {
        seccompiler::apply_filter(&program).map_err(|e| err("seccomp", e))?;
    }
    Ok(())
}

/// Landlock, a second wall behind the mounts: should a bind ever be writable by
/// mistake, or a file of the system's be reachable that should not, the instance
/// still writes only where [`landlock_rules`] say. It also keeps signals and abstract
/// Unix sockets within the instance. Needs Linux 5.13 (scopes 6.12); on an older
/// kernel it does what the kernel supports, which the node reports at start.
fn landlock(spec: &Spec) -> io::Result<()> {
    use landlock::{
        Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, Scope,
    };
    let abi = LANDLOCK_ABI;
    let wrap = |e: landlock::RulesetError| err("landlock", e);
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(wrap)?
        .scope(Scope::AbstractUnixSocket | Scope::Signal)
        .map_err(wrap)?
        .create()
        .map_err(wrap)?;
    for (path, access) in landlock_rules(spec) {
        let Ok(fd) = PathFd::new(&path) else {
            continue; // Not in this jail (a device this machine lacks).
        };
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .map_err(wrap)?;
    }
    ruleset.restrict_self().map_err(wrap)?;
    Ok(())
}

/// The Landlock ABI whose rights the jail handles (Linux 6.12): newer kernels keep
/// to it, older ones enforce what they know.
const LANDLOCK_ABI: landlock::ABI = landlock::ABI::V6;

/// Where an instance may do what, once inside the jail (paths as the instance sees
/// them).
fn landlock_rules(spec: &Spec) -> Vec<(PathBuf, landlock::BitFlags<landlock::AccessFs>)> {
    use landlock::{Access, AccessFs};
    let abi = LANDLOCK_ABI;
    let read = AccessFs::from_read(abi);
    let all = AccessFs::from_all(abi);
    let mut rules = vec![
        (PathBuf::from("/"), read),
        (PathBuf::from("/tmp"), all),
        (PathBuf::from("/dev/shm"), all),
    ];
    for d in DEVICES {
        rules.push((
            Path::new("/dev").join(d),
            read | AccessFs::WriteFile | AccessFs::IoctlDev,
        ));
    }
    for (_, dst, writable) in &spec.binds {
        if *writable {
            rules.push((dst.clone(), all));
        }
    }
    rules
}

/// Sets `lo` up in this network namespace (RTM_NEWLINK over rtnetlink; loopback is
/// interface 1 in every new namespace).
fn loopback_up() -> io::Result<()> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
        socket,
    };
    use std::os::fd::AsRawFd as _;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    const RTM_NEWLINK: u16 = 16;
    const NLM_F_REQUEST_ACK: u16 = 1 | 4;
    const IFF_UP: u32 = 1;
    let mut msg = Vec::with_capacity(32);
    msg.extend_from_slice(&32u32.to_ne_bytes()); // nlmsg_len
    msg.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST_ACK.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    msg.extend_from_slice(&[0, 0, 0, 0]); // ifi_family (AF_UNSPEC), pad, ifi_type
    msg.extend_from_slice(&1i32.to_ne_bytes()); // ifi_index: lo
    msg.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_flags
    msg.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_change
    sendto(
        fd.as_raw_fd(),
        &msg,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let mut ack = [0u8; 256];
    let n = recv(fd.as_raw_fd(), &mut ack, MsgFlags::empty())?;
    // NLMSG_ERROR (2) with error 0 is the acknowledgement.
    if n >= 20 && u16::from_ne_bytes([ack[4], ack[5]]) == 2 {
        let code = i32::from_ne_bytes([ack[16], ack[17], ack[18], ack[19]]);
        if code != 0 {
            return Err(io::Error::from_raw_os_error(-code));
        }
        return Ok(());
    }
    Err(io::Error::other("no acknowledgement from rtnetlink"))
}

/// System calls no function needs, which reach the kernel's riskiest surfaces or
/// other processes: they fail with `EPERM`.
fn denied() -> Vec<i64> {
    use nix::libc;
    #[allow(unused_mut)]
    let mut calls = vec![
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_pidfd_getfd,
        libc::SYS_kcmp,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_syslog,
        libc::SYS_vhangup,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([libc::SYS_iopl, libc::SYS_ioperm, libc::SYS_uselib]);
    calls
}

/// The seccomp programs every process of an instance runs under: the [`denied`]
/// calls fail with `EPERM`; `clone` with any new-namespace flag too (no new user
/// namespaces, whose capabilities open more of the kernel); `clone3`, whose flags a
/// filter cannot read, fails with `ENOSYS` so the C library falls back to `clone`.
pub fn filter() -> io::Result<Vec<seccompiler::BpfProgram>> {
    use nix::libc;
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    let arch: TargetArch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| err("seccomp architecture", e))?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        denied().into_iter().map(|c| (c, vec![])).collect();
    let new_namespace = [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWNS,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWCGROUP,
    ]
    .into_iter()
    .map(|flag| {
        let flag = flag as u64;
        SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(flag),
            flag,
        )
        .and_then(|c| SeccompRule::new(vec![c]))
    })
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| err("seccomp rule", e))?;
    rules.insert(libc::SYS_clone, new_namespace);
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| err("seccomp filter", e))?;
    let clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(|e| err("seccomp filter", e))?;
    [deny, clone3]
        .into_iter()
        .map(|f| f.try_into().map_err(|e| err("seccomp program", e)))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_filter_compiles_for_this_machine() {
        let programs = super::filter().expect("filter");
        assert_eq!(programs.len(), 2);
        assert!(programs.iter().all(|p| !p.is_empty()));
    }
}
