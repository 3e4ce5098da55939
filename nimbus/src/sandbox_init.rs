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
//! Then it runs the runtime as its child and exits with its status.
//!
//! `nimbus-init --pass 127.0.0.1:9001=/run/nimbus/api.sock [--forward …] -- PROGRAM ARGS…`
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
        "usage: nimbus-init [--pass HOST:PORT=SOCKET] [--forward HOST:PORT=SOCKET] … -- PROGRAM [ARGS…]"
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

/// Runs `nimbus-init` with `args` (without the program name); never returns.
pub fn run(mut args: impl Iterator<Item = String>) -> ! {
    let mut forwards = Vec::new();
    loop {
        match args.next().as_deref() {
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
    let status = Command::new(&program)
        .args(args)
        .status()
        .unwrap_or_else(|e| {
            eprintln!("nimbus-init: running {program}: {e}");
            exit(127)
        });
    exit(
        status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
    )
}
