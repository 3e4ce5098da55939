//! `nimbus-init`: the first process of an instance (the `nimbus-init` binary, or
//! `nimbus __sandbox-init` when only the `nimbus` binary was built).
//!
//! With `--jail`, it first builds the sandbox itself ([`crate::jail`]: namespaces,
//! a root of its own, an unprivileged user, seccomp). The sandbox has a network
//! namespace of its own, with nothing but loopback: the function cannot reach the
//! node, its neighbours or the internet. What it may reach comes through Unix sockets
//! the node agent bound into the sandbox:
//!
//! - `--pass ADDR=SOCKET`: the Lambda Runtime API (`AWS_LAMBDA_RUNTIME_API=
//!   127.0.0.1:9001`). Each TCP connection accepted on ADDR is handed to the node
//!   itself (the descriptor, over SOCKET with `SCM_RIGHTS`): the node's HTTP server
//!   then talks to the runtime directly, with no copy and no extra hop per call.
//!   Only this instance's processes can connect to it (its own network namespace).
//! - `--forward ADDR=SOCKET`: the tenant's egress proxy (`HTTP(S)_PROXY=
//!   http://127.0.0.1:3128`), when the tenant's network allows egress; bytes are
//!   copied both ways.
//!
//! Then it runs the program as its child, with `--env` variables only, and exits
//! with its status (as PID 1 of the sandbox, it also reaps orphans). With
//! `--function`, it first asks the node for the function (`GET
//! /2018-06-01/nimbus/specialize` on the Runtime API answers with its handler and
//! environment, at once for a new instance; for a `provided` spare, once the node
//! gives the sandbox a function and links its code in).
//!
//! `nimbus-init --jail ROOT --ro CODE=/var/task … --user 65534:65534 --tmp-mb 512
//! --env PATH=… --function --pass 127.0.0.1:9001=/run/nimbus/api.sock [--forward …]
//! -- PROGRAM ARGS…`

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt as _;
use std::process::{Command, exit};
use std::thread;

fn usage() -> ! {
    eprintln!(
        "usage: nimbus-init [--jail ROOT [--ro SRC=DST]… [--rw SRC=DST]… [--cgroup DIR]… [--user UID:GID] [--tmp-mb N]] [--env K=V]… [--function] [--pass HOST:PORT=SOCKET] [--forward HOST:PORT=SOCKET] … -- PROGRAM [ARGS…]"
    );
    exit(2)
}

/// Hands an accepted connection to the node.
fn pass(tcp: TcpStream, socket: &str) {
    use std::os::fd::AsFd as _;
    use withfd::WithFdExt as _;
    let _ = tcp.set_nodelay(true);
    match UnixStream::connect(socket) {
        Ok(u) => {
            if let Err(e) = u.with_fd().write_with_fd(b"\0", &[tcp.as_fd()]) {
                eprintln!("nimbus-init: passing a connection to {socket}: {e}");
            }
        }
        Err(e) => eprintln!("nimbus-init: {socket}: {e}"),
    }
    // The node holds its own copy now.
}

/// Copies one direction until EOF, then half-closes the other side.
fn copy_then_close(mut from: impl io::Read, mut to: impl io::Write, close: impl FnOnce()) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.flush();
    close();
}

fn serve(tcp: TcpStream, socket: &str) {
    let unix = match UnixStream::connect(socket) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("nimbus-init: {socket}: {e}");
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let (Ok(tcp_r), Ok(unix_w)) = (tcp.try_clone(), unix.try_clone()) else {
        return;
    };
    let up = thread::spawn(move || {
        copy_then_close(&tcp_r, &unix_w, || {
            let _ = unix_w.shutdown(Shutdown::Write);
        })
    });
    copy_then_close(&unix, &tcp, || {
        let _ = tcp.shutdown(Shutdown::Write);
    });
    let _ = up.join();
}

/// A spare's function, as the node hands it over: (handler, environment).
fn specialization(api: &str) -> io::Result<(String, Vec<(String, String)>)> {
    use io::{Read as _, Write as _};
    let mut conn = TcpStream::connect(api)?;
    write!(
        conn,
        "GET /2018-06-01/nimbus/specialize HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(bad(head.lines().next().unwrap_or("")));
    }
    let spec: serde_json::Value =
        serde_json::from_str(body).map_err(|e| bad(&format!("specialization: {e}")))?;
    let env = spec["env"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Ok((spec["handler"].as_str().unwrap_or("").to_string(), env))
}

/// What `nimbus-init` was asked to do.
#[derive(Default)]
struct Options {
    /// Build the jail first (see [`crate::jail`]).
    jail: Option<crate::jail::Spec>,
    /// `--pass` (hand over) or `--forward` (copy): (hand over, address, socket).
    forwards: Vec<(bool, String, String)>,
    /// Ask the node for the function (handler and environment) before running the
    /// program.
    function: bool,
    /// The program's environment, before the function's.
    env: Vec<(String, String)>,
}

fn pair(spec: Option<String>) -> (String, String) {
    let spec = spec.unwrap_or_else(|| usage());
    match spec.split_once('=') {
        Some((a, b)) => (a.to_string(), b.to_string()),
        None => usage(),
    }
}

fn parse(args: &mut impl Iterator<Item = String>) -> Options {
    let mut o = Options::default();
    loop {
        let flag = args.next();
        let spec = o.jail.get_or_insert_with(Default::default);
        match flag.as_deref() {
            Some("--function") => o.function = true,
            Some(flag @ ("--forward" | "--pass")) => {
                let (addr, socket) = pair(args.next());
                o.forwards.push((flag == "--pass", addr, socket));
            }
            Some("--env") => o.env.push(pair(args.next())),
            Some("--jail") => spec.root = args.next().unwrap_or_else(|| usage()).into(),
            Some(flag @ ("--ro" | "--rw")) => {
                let (src, dst) = pair(args.next());
                spec.binds.push((src.into(), dst.into(), flag == "--rw"));
            }
            Some("--cgroup") => spec
                .cgroups
                .push(args.next().unwrap_or_else(|| usage()).into()),
            Some("--user") => {
                let ids = args.next().unwrap_or_else(|| usage());
                let parsed = ids
                    .split_once(':')
                    .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)));
                let Some((uid, gid)) = parsed else { usage() };
                (spec.uid, spec.gid) = (uid, gid);
            }
            Some("--tmp-mb") => {
                spec.tmp_mb = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            Some("--") => break,
            _ => usage(),
        }
    }
    if o.jail
        .as_ref()
        .is_some_and(|j| j.root.as_os_str().is_empty())
    {
        o.jail = None;
    }
    o
}

/// Runs `nimbus-init` with `args` (without the program name); never returns.
pub fn run(mut args: impl Iterator<Item = String>) -> ! {
    let opts = parse(&mut args);
    let Some(program) = args.next() else { usage() };
    if let Some(spec) = &opts.jail {
        if std::env::var_os(crate::jail::STAGE_ENV).is_none() {
            match crate::jail::outside(spec) {
                Ok(code) => exit(code),
                Err(e) => {
                    eprintln!("nimbus-init: sandbox: {e}");
                    exit(125)
                }
            }
        }
        if let Err(e) = crate::jail::enter(spec) {
            eprintln!("nimbus-init: sandbox: {e}");
            exit(125)
        }
    }
    let api = opts
        .forwards
        .iter()
        .find(|(hand_over, _, _)| *hand_over)
        .map(|(_, addr, _)| addr.clone());
    for (hand_over, addr, socket) in opts.forwards {
        let listener = TcpListener::bind(&addr).unwrap_or_else(|e| {
            eprintln!("nimbus-init: binding {addr}: {e}");
            exit(1)
        });
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                if hand_over {
                    pass(conn, &socket);
                } else {
                    let socket = socket.clone();
                    thread::spawn(move || serve(conn, &socket));
                }
            }
        });
    }
    let mut command = Command::new(&program);
    command.args(args).env_clear().envs(opts.env);
    if opts.jail.is_some() {
        command.current_dir("/var/task");
    }
    if opts.function {
        // The function's handler and environment come from the node, inside: they
        // never pass through anything outside the sandbox.
        let Some(api) = api else { usage() };
        let (handler, env) = specialization(&api).unwrap_or_else(|e| {
            eprintln!("nimbus-init: waiting for a function: {e}");
            exit(1)
        });
        command.env("_HANDLER", handler).envs(env);
    }
    // As PID 1 of a jail, `reap` waits for the program (with every orphan) through
    // waitpid(-1) rather than through `Child::wait`.
    #[allow(clippy::zombie_processes)]
    let child = command.spawn().unwrap_or_else(|e| {
        eprintln!("nimbus-init: running {program}: {e}");
        exit(127)
    });
    if opts.jail.is_none() {
        exit(wait(child))
    }
    reap(nix::unistd::Pid::from_raw(child.id() as i32))
}

/// PID 1 of the instance: reaps every orphan, and ends with the program `main`.
fn reap(main: nix::unistd::Pid) -> ! {
    use nix::sys::wait::{WaitStatus, waitpid};
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == main => exit(code),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == main => exit(128 + signal as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => exit(1),
        }
    }
}

fn wait(mut child: std::process::Child) -> i32 {
    match child.wait() {
        Ok(status) => status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        Err(_) => 1,
    }
}
