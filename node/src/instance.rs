//! One instance: its sockets, its process in the sandbox, and its readiness.

use super::*;

/// The python3 bootstrap shipped in the binary.
pub(super) const PYTHON_BOOTSTRAP: &str = include_str!("../runtimes/python_bootstrap.py");
/// The nodejs bootstrap shipped in the binary.
pub(super) const NODE_BOOTSTRAP: &str = include_str!("../runtimes/node_bootstrap.js");

/// The listeners of an instance with a network of its own.
pub(super) struct Sockets {
    pub(super) api: tokio::net::UnixListener,
    pub(super) egress: Option<(tokio::net::UnixListener, Arc<egress::Rules>)>,
}

/// Binds an instance's sockets in `dir`, reachable by the sandbox's user.
pub(super) fn open_sockets(
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
pub(super) const INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A running instance.
pub(super) struct Instance {
    /// Feeds `GET /next`.
    pub(super) tx: mpsc::Sender<Invocation>,
    /// The API server's state.
    pub(super) shared: Arc<ApiShared>,
    /// The process id (also its process group).
    pub(super) pid: u32,
    /// True once the process has exited.
    pub(super) exited: watch::Receiver<bool>,
    /// When it last finished a call.
    pub(super) last_used: Mutex<Instant>,
    /// The API server task.
    pub(super) server: tokio::task::JoinHandle<()>,
    /// The egress proxy task, if the instance may reach out.
    pub(super) egress: Option<tokio::task::JoinHandle<()>>,
    /// The directory of its sockets, if it has a network of its own.
    pub(super) run_dir: Option<PathBuf>,
    /// Its own task root, if it started as a spare (the code is linked in).
    pub(super) task_dir: Option<PathBuf>,
    /// Its cgroups (a spare's memory limit changes when it is specialised).
    pub(super) cgroups: Option<Arc<sandbox::InstanceCgroups>>,
}

impl Instance {
    pub(super) fn alive(&self) -> bool {
        !*self.exited.borrow()
    }

    /// Kills the whole process group and stops the API server.
    pub(super) fn kill(&self) {
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

pub(super) fn resolve(cmd: &str, probe: &[&str]) -> PathBuf {
    std::process::Command::new(cmd)
        .args(probe)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| PathBuf::from(cmd))
}

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
        Self::await_ready(inst).await
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

    /// Waits for a started instance to initialise (its first `GET /next`).
    pub(super) async fn await_ready(inst: Arc<Instance>) -> Result<Arc<Instance>, NodeError> {
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
}
