//! `nimbus-init`: the first process inside an instance's sandbox (the `nimbus-init`
//! binary, or `nimbus __sandbox-init` when only the `nimbus` binary was built).
//!
//! The sandbox has a network namespace of its own, with nothing but loopback: the
//! function cannot reach the node, its neighbours or the internet. What it may reach
//! comes through Unix sockets the node agent bound into the sandbox:
//!
//! - `--pass ADDR=SOCKET`: the Lambda Runtime API (`AWS_LAMBDA_RUNTIME_API=
//!   127.0.0.1:9001`). Each TCP connection accepted on ADDR is handed to the node
//!   itself (the descriptor, over SOCKET with `SCM_RIGHTS`): the node's HTTP server
//!   then talks to the runtime directly, with no copy and no extra hop per call.
//! - `--forward ADDR=SOCKET`: the tenant's egress proxy (`HTTP(S)_PROXY=
//!   http://127.0.0.1:3128`), when the tenant's network allows egress; bytes are
//!   copied both ways.
//!
//! Then it runs the runtime as its child and exits with its status. With `--spare`,
//! it first waits for the node to give the sandbox a function (`GET
//! /2018-06-01/nimbus/specialize` on the Runtime API answers with its handler and
//! environment): a `provided` spare is a sandbox made ahead, whose program — the
//! function's own `bootstrap` — runs once the code is linked in.
//!
//! `nimbus-init [--spare] --pass 127.0.0.1:9001=/run/nimbus/api.sock [--forward …] -- PROGRAM ARGS…`
//!
//! It starts in about a millisecond and adds one small process to each instance.

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt as _;
use std::process::{Command, exit};
use std::thread;

fn usage() -> ! {
    eprintln!(
        "usage: nimbus-init [--spare] [--pass HOST:PORT=SOCKET] [--forward HOST:PORT=SOCKET] … -- PROGRAM [ARGS…]"
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

/// Runs `nimbus-init` with `args` (without the program name); never returns.
pub fn run(mut args: impl Iterator<Item = String>) -> ! {
    let mut forwards = Vec::new();
    let mut spare = false;
    loop {
        match args.next().as_deref() {
            Some("--spare") => spare = true,
            Some(flag @ ("--forward" | "--pass")) => {
                let spec = args.next().unwrap_or_else(|| usage());
                let Some((addr, socket)) = spec.split_once('=') else {
                    usage()
                };
                forwards.push((flag == "--pass", addr.to_string(), socket.to_string()));
            }
            Some("--") => break,
            _ => usage(),
        }
    }
    let Some(program) = args.next() else { usage() };
    let api = forwards
        .iter()
        .find(|(hand_over, _, _)| *hand_over)
        .map(|(_, addr, _)| addr.clone());
    for (hand_over, addr, socket) in forwards {
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
    command.args(args);
    if spare {
        // Held until the node gives this sandbox a function; then the program runs
        // with the function's handler and environment.
        let Some(api) = api else { usage() };
        let (handler, env) = specialization(&api).unwrap_or_else(|e| {
            eprintln!("nimbus-init: waiting for a function: {e}");
            exit(1)
        });
        command
            .env_remove("NIMBUS_SPARE")
            .env("_HANDLER", handler)
            .envs(env);
    }
    let status = command.status().unwrap_or_else(|e| {
        eprintln!("nimbus-init: running {program}: {e}");
        exit(127)
    });
    exit(
        status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
    )
}
