//! Starting an instance of a function: its code, its environment, its sandbox.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nimbus_core::model::Runtime;
use nimbus_core::nodes::NodeError;
use proto::node::FunctionRef;
use tokio::sync::watch;

use crate::instance::{Instance, await_ready, open_sockets};
use crate::logs::{self, LogLine};
use crate::runtime_api::ApiShared;
use crate::{NodeAgent, egress, runtime_api, runtime_of, sandbox};

impl NodeAgent {
    /// The function's unpacked code on this node (fetched if need be).
    pub(super) async fn code_dir(&self, f: &FunctionRef) -> Result<PathBuf, NodeError> {
        self.cache
            .ensure(&f.code_sha256)
            .await
            .map(|(dir, _)| dir)
            .map_err(|e| NodeError::Init(format!("fetching the code: {e:#}")))
    }

    /// The variables the platform sets for every runtime (a function's own `env`
    /// cannot override them).
    pub(super) fn platform_env(&self, f: &FunctionRef) -> [(&'static str, String); 4] {
        [
            ("AWS_LAMBDA_FUNCTION_NAME", f.function_name.clone()),
            ("AWS_LAMBDA_FUNCTION_VERSION", f.version.clone()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", f.memory_mb.to_string()),
            ("AWS_REGION", self.cfg.region.clone()),
        ]
    }

    /// What an instance is told of its function (`GET /2018-06-01/nimbus/specialize`):
    /// its handler and environment, the platform's variables last.
    pub(super) fn function_spec(&self, f: &FunctionRef, proxy: bool) -> Bytes {
        let mut env: serde_json::Map<String, serde_json::Value> = f
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        for (k, v) in self.platform_env(f) {
            env.insert(k.into(), v.into());
        }
        if proxy {
            let proxy = format!("http://{}", sandbox::PROXY_ADDR);
            for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                env.insert(k.into(), proxy.clone().into());
            }
        }
        Bytes::from(serde_json::json!({"handler": f.handler, "env": env}).to_string())
    }

    /// A plain process (`node.sandbox = "none"`: trusted code only), which must
    /// still die with the node.
    pub(super) fn unsandboxed(
        &self,
        f: &FunctionRef,
        program: &std::path::Path,
        args: &[std::ffi::OsString],
        code_dir: &std::path::Path,
        env: &[(&str, String)],
    ) -> tokio::process::Command {
        let mut cmd = match ["/usr/bin/setpriv", "/bin/setpriv"]
            .into_iter()
            .find(|p| std::path::Path::new(p).is_file())
        {
            Some(setpriv) => {
                let mut c = tokio::process::Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"]).arg(program);
                c
            }
            None => tokio::process::Command::new(program),
        };
        cmd.args(args)
            .current_dir(code_dir)
            .env_clear()
            .envs(f.env.iter())
            .envs(self.platform_env(f))
            .envs(env.iter().cloned())
            .env("_HANDLER", &f.handler);
        cmd
    }

    pub(super) async fn spawn_instance(&self, f: &FunctionRef) -> Result<Arc<Instance>, NodeError> {
        let code_dir = self.code_dir(f).await?;
        if let Some(inst) = self.specialize_spare(f, &code_dir).await? {
            return Ok(inst);
        }
        let inst = self.launch(f, &code_dir, None).await?;
        await_ready(inst).await
    }

    /// Starts an instance's process in its sandbox, without waiting for it to
    /// initialise. `spare`: the directory bound as its (still empty) task root; it
    /// then waits to be specialised (see [`NodeAgent::specialize_spare`]).
    pub(super) async fn launch(
        &self,
        f: &FunctionRef,
        code_dir: &std::path::Path,
        spare: Option<PathBuf>,
    ) -> Result<Arc<Instance>, NodeError> {
        let code_dir = code_dir.to_path_buf();
        let (shared, tx) = ApiShared::new();
        // An interpreter's spare asks for its function itself, when it gets one.
        let runtime = runtime_of(f);
        let interpreter_spare = spare.is_some() && runtime != Some(Runtime::Provided);
        let app = runtime_api::router(shared.clone());
        let instance_id = nimbus_core::new_id();
        let jailed = self.sandbox.isolated();
        // Sandboxed: a network of its own, the Runtime API (and the egress proxy) on
        // Unix sockets that nimbus-init forwards to inside. Else a port on the node's
        // loopback (node.sandbox = "none").
        let (server, api_addr, run_dir, egress) = if jailed {
            let dir = self.cfg.work_dir.join("run").join(&instance_id);
            let net = open_sockets(&dir, &f.egress, &self.cfg.egress_open_networks)
                .map_err(NodeError::Internal)?;
            let server = tokio::spawn(async move {
                let _ = axum::serve(runtime_api::PassedConnections(net.api), app).await;
            });
            let egress = net
                .egress
                .map(|(l, rules)| tokio::spawn(egress::serve(l, rules)));
            (server, sandbox::API_ADDR.to_string(), Some(dir), egress)
        } else {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(anyhow::Error::from)?;
            let addr = listener.local_addr().map_err(anyhow::Error::from)?;
            // As on the sandboxed path: a small reply must not wait for an ACK.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let server = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            (server, addr.to_string(), None, None)
        };
        if spare.is_none() {
            // Handed over at once: nimbus-init asks for it inside the sandbox, so
            // nothing of the tenant's passes through the launcher.
            shared.specialize(
                (f.tenant_id.clone(), f.function_name.clone()),
                self.function_spec(f, egress.is_some()),
            );
        }
        let cleanup = |server: &tokio::task::JoinHandle<()>| {
            server.abort();
            if let Some(e) = &egress {
                e.abort();
            }
            if let Some(d) = &run_dir {
                let _ = std::fs::remove_dir_all(d);
            }
        };
        let rt = self.cfg.work_dir.join("runtimes");
        let (task_root, runtime_root) = self.sandbox.paths(&code_dir, &rt);
        let (program, args): (PathBuf, Vec<std::ffi::OsString>) = match runtime {
            Some(Runtime::Python3) => (
                self.python.clone(),
                vec!["-u".into(), runtime_root.join("python_bootstrap.py").into()],
            ),
            Some(Runtime::Nodejs) => (
                self.node.clone(),
                vec![runtime_root.join("node_bootstrap.js").into()],
            ),
            Some(Runtime::Provided) => (task_root.join("bootstrap"), vec![]),
            Some(Runtime::Wasm) | None => {
                cleanup(&server);
                return Err(NodeError::Init(format!(
                    "runtime '{}' does not run as a process on this node",
                    f.runtime
                )));
            }
        };
        // The node's own constants; the function's variables come with its spec.
        let mut env: Vec<(&str, String)> = vec![
            ("PATH", "/usr/local/bin:/usr/bin:/bin".into()),
            ("LANG", "C.UTF-8".into()),
            ("TZ", ":UTC".into()),
            ("HOME", "/tmp".into()),
            ("AWS_LAMBDA_RUNTIME_API", api_addr.clone()),
            ("LAMBDA_TASK_ROOT", task_root.display().to_string()),
            ("LAMBDA_RUNTIME_DIR", runtime_root.display().to_string()),
        ];
        if interpreter_spare {
            env.push(("NIMBUS_SPARE", "1".into()));
        }
        let (mut cmd, cgroups) = match &run_dir {
            Some(dir) => match self.sandbox.command(sandbox::Launch {
                id: &instance_id,
                program: &program,
                args: &args,
                code_dir: &code_dir,
                runtime_dir: &rt,
                memory_mb: f.memory_mb,
                run_dir: dir,
                api: true,
                egress: egress.is_some(),
                function: !interpreter_spare,
                env: &env,
            }) {
                Ok(c) => c,
                Err(e) => {
                    cleanup(&server);
                    return Err(NodeError::Init(format!("{e:#}")));
                }
            },
            None => (self.unsandboxed(f, &program, &args, &code_dir, &env), None),
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                cleanup(&server);
                return Err(NodeError::Init(format!(
                    "starting the {} runtime: {e}",
                    f.runtime
                )));
            }
        };
        let pid = child.id().unwrap_or(0);
        for (stream, pipe) in [
            (
                "stdout",
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            ),
            (
                "stderr",
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            ),
        ] {
            let Some(pipe) = pipe else { continue };
            let (shared, logs) = (shared.clone(), self.logs.clone());
            tokio::spawn(logs::read_lines(pipe, move |line| {
                let request_id = shared.current.lock().expect("lock").clone();
                // A spare's output before it has a function goes nowhere.
                let Some((tenant_id, function)) = shared.owner.lock().expect("lock").clone() else {
                    return;
                };
                if let Some(t) = shared.tail.lock().expect("lock").as_mut() {
                    t.push(&line);
                }
                logs.push(LogLine {
                    tenant_id,
                    function,
                    timestamp_ms: nimbus_core::now_ms(),
                    request_id,
                    stream: stream.into(),
                    message: line,
                });
            }));
        }
        let (exit_tx, exit_rx) = watch::channel(false);
        let cgroups = cgroups.map(Arc::new);
        let cg = cgroups.clone();
        tokio::spawn(async move {
            let _ = child.wait().await;
            let _ = exit_tx.send(true);
            // The cgroups go once the sandbox is empty.
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(cg);
        });
        Ok(Arc::new(Instance {
            tx,
            shared: shared.clone(),
            pid,
            exited: exit_rx.clone(),
            last_used: Mutex::new(Instant::now()),
            server,
            egress,
            run_dir,
            task_dir: spare,
            cgroups,
        }))
    }
}
