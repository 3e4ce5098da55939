//! Spares: instances started ahead of any function, specialised on a cold start.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nimbus_core::model::Runtime;
use nimbus_core::nodes::NodeError;
use proto::node::FunctionRef;

use crate::instance::INIT_TIMEOUT;
use crate::instance::{Instance, SPARE_MEMORY_MB, SPARE_RUNTIMES, await_ready, link_tree};
use crate::{NodeAgent, runtime_of};

impl NodeAgent {
    /// Cold starts served by a spare so far.
    pub fn spares_used(&self) -> usize {
        self.spares_used.load(Ordering::SeqCst)
    }

    /// Spares waiting, per runtime.
    pub fn spares_ready(&self) -> Vec<(String, usize)> {
        self.spares
            .lock()
            .expect("lock")
            .iter()
            .map(|(rt, p)| (rt.as_str().to_string(), p.ready.len()))
            .collect()
    }

    /// Turns a spare into an instance of `f`, if one fits: the function's code is
    /// linked into its task root, its memory limit set, and its environment and
    /// handler handed over; the runtime then imports the handler as usual.
    pub(super) async fn specialize_spare(
        &self,
        f: &FunctionRef,
        code_dir: &std::path::Path,
    ) -> Result<Option<Arc<Instance>>, NodeError> {
        if self.cfg.spares == 0 || !f.egress.is_empty() {
            return Ok(None);
        }
        let Some(rt) = self.spare_runtimes().find(|r| Some(*r) == runtime_of(f)) else {
            return Ok(None);
        };
        let inst = {
            let mut spares = self.spares.lock().expect("lock");
            let Some(pool) = spares.get_mut(&rt) else {
                return Ok(None);
            };
            pool.ready.retain(|i| i.alive());
            pool.ready.pop()
        };
        // Replaced now (one start per spare taken), so back-to-back cold starts
        // find one too.
        self.top_up_spares();
        let Some(inst) = inst else { return Ok(None) };
        let dir = inst.task_dir.clone().expect("a spare has a task root");
        let src = code_dir.to_path_buf();
        tokio::task::spawn_blocking(move || link_tree(&src, &dir))
            .await
            .map_err(|e| NodeError::Internal(e.into()))?
            .map_err(|e| NodeError::Internal(anyhow::Error::from(e).context("linking the code")))?;
        if let Some(cg) = &inst.cgroups {
            cg.set_memory(f.memory_mb)
                .map_err(|e| NodeError::Internal(anyhow::Error::from(e).context("memory limit")))?;
        }
        inst.shared.specialize(
            (f.tenant_id.clone(), f.function_name.clone()),
            self.function_spec(f, false),
        );
        self.spares_used.fetch_add(1, Ordering::SeqCst);
        await_ready(inst).await.map(Some)
    }

    /// The runtimes this node keeps spares of.
    pub(super) fn spare_runtimes(&self) -> impl Iterator<Item = Runtime> {
        let jailed = self.sandbox.isolated();
        let usable = self.sandbox.unavailable().is_none();
        SPARE_RUNTIMES
            .into_iter()
            .filter(move |rt| usable && (*rt != Runtime::Provided || jailed))
    }

    /// Starts a spare for each runtime that has fewer than `spares` of them (one per
    /// runtime per call: a burst's replacements are spread out; after a failed
    /// start, that runtime waits 30 s).
    pub fn top_up_spares(&self) {
        if self.cfg.spares == 0 {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        let mut todo = Vec::new();
        {
            let mut spares = self.spares.lock().expect("lock");
            for rt in self.spare_runtimes() {
                let pool = spares.entry(rt).or_default();
                pool.ready.retain(|i| i.alive());
                if pool.failed_until.is_some_and(|t| Instant::now() < t) {
                    continue;
                }
                if pool.ready.len() + pool.starting < self.cfg.spares {
                    pool.starting += 1;
                    todo.push(rt);
                }
            }
        }
        for rt in todo {
            let me = me.clone();
            tokio::spawn(async move {
                let started = me.start_spare(rt).await;
                let mut spares = me.spares.lock().expect("lock");
                let pool = spares.entry(rt).or_default();
                pool.starting -= 1;
                match started {
                    Ok(inst) => pool.ready.push(inst),
                    Err(e) => {
                        tracing::debug!(runtime = rt.as_str(), error = %e, "a spare did not start");
                        pool.failed_until = Some(Instant::now() + Duration::from_secs(30));
                    }
                }
            });
        }
    }

    /// Starts one spare of runtime `rt` and waits until it asks for its function.
    pub(super) async fn start_spare(&self, rt: Runtime) -> Result<Arc<Instance>, NodeError> {
        use std::os::unix::fs::PermissionsExt as _;
        let f = FunctionRef {
            runtime: rt.as_str().to_string(),
            memory_mb: SPARE_MEMORY_MB,
            ..Default::default()
        };
        let dir = self.cfg.work_dir.join("spare").join(nimbus_core::new_id());
        std::fs::create_dir_all(&dir).map_err(anyhow::Error::from)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .map_err(anyhow::Error::from)?;
        let inst = self.launch(&f, &dir, Some(dir.clone())).await?;
        let mut exited = inst.exited.clone();
        tokio::select! {
            _ = inst.shared.spare_waiting.notified() => Ok(inst),
            _ = exited.wait_for(|e| *e) => Err(NodeError::Init("the spare exited".into())),
            _ = tokio::time::sleep(INIT_TIMEOUT) => Err(NodeError::Init("the spare did not start within 10 s".into())),
        }
    }
}
