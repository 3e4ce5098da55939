//! How a call gets an instance: the agent acts on the pools' decisions (starts
//! instances, waits in the queue), and the guards that keep the pools' counts true
//! whatever happens to a call half way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use proto::node::FunctionRef;
use tokio::sync::oneshot;

use crate::logs::{CallEnd, CallReport};
use crate::pool::{Granted, Handover, SCALE_UP_DELAY, Take};
use crate::runtime_api::{Invocation, RuntimeOutcome};
use crate::{
    InvokeOutcome, NodeAgent, NodeError, ONE_SHOT, Runtime, instance, instance_key, runtime_of,
    take_tail,
};

/// An instance in a call's hands. Dropped still armed — the call failed, timed out,
/// or was dropped half way because its client left — the instance is retired, so
/// the pool's counts stay true (a leaked `busy` once made a node refuse every call
/// after a burst whose clients hung up).
pub(crate) struct Lease<'a> {
    pub(crate) agent: &'a NodeAgent,
    pub(crate) key: &'a str,
    pub(crate) f: &'a FunctionRef,
    pub(crate) inst: Option<Arc<instance::Instance>>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(inst) = self.inst.take() {
            self.agent.retire(self.key, self.f, &inst);
        }
    }
}

/// A call waiting for an instance. Dropped (the call gave up, or its client left)
/// after an instance was already handed to it, the instance goes back to the pool
/// instead of dying with the unread handover.
struct Waiting<'a> {
    agent: &'a NodeAgent,
    key: &'a str,
    rx: Option<Handover>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if let Ok(Ok(granted)) = rx.try_recv() {
                self.agent
                    .pools
                    .lock()
                    .expect("lock")
                    .hand_back(self.key, granted);
            }
        }
    }
}

/// Ends a call's accounting even if the call is dropped half way (its client left).
/// Disarmed when the call hands its instance back, which ends it too.
pub(crate) struct Departure<'a> {
    pub(crate) agent: &'a NodeAgent,
    pub(crate) key: &'a str,
    pub(crate) armed: bool,
}

impl Drop for Departure<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.agent.pools.lock().expect("lock").depart(self.key);
        }
    }
}

/// How a call gets an instance: the agent acts on the pools' decisions.
impl NodeAgent {
    /// Runs one call on a warm instance, or a new one.
    pub(crate) async fn invoke_on_instance(
        &self,
        key: &str,
        f: &FunctionRef,
        event: Bytes,
        request_id: &str,
    ) -> Result<InvokeOutcome, NodeError> {
        let key = key.to_string();
        // Ends the call's accounting however the call ends; a warm call ends it
        // when it hands its instance back, under the same lock.
        let mut departure = Departure {
            agent: self,
            key: &key,
            armed: true,
        };
        let Granted {
            inst,
            cold,
            init_ms,
        } = self.acquire(&key, f).await?;
        let mut lease = Lease {
            agent: self,
            key: &key,
            f,
            inst: Some(inst.clone()),
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        let deadline = nimbus_core::now_ms() + f.timeout_ms as i64;
        let inv = Invocation {
            id: request_id.to_string(),
            event,
            deadline_ms: deadline,
            arn: format!(
                "arn:nimbus:{}:{}:function:{}:{}",
                self.cfg.region, f.tenant_id, f.function_name, f.version
            ),
            reply: reply_tx,
            client_context: Some(f.client_context.clone()).filter(|c| !c.is_empty()),
            trace: nimbus_core::trace::TraceContext::parse(&f.traceparent)
                .unwrap_or_else(nimbus_core::trace::TraceContext::root),
        };
        if f.tail_log {
            *inst.shared.tail.lock().expect("lock") = Some(Default::default());
        }
        self.logs
            .call_started(&f.tenant_id, &f.function_name, request_id, &f.version);
        let started = std::time::Instant::now();
        if inst.tx.send(inv).await.is_err() {
            // The lease retires it.
            return Err(NodeError::Init(
                "the instance stopped before the call".into(),
            ));
        }
        let mut exited = inst.exited.clone();
        let outcome = tokio::select! {
            r = reply_rx => r.ok(),
            _ = tokio::time::sleep(Duration::from_millis(f.timeout_ms as u64)) => {
                self.logs.call_ended(&f.tenant_id, &f.function_name, &CallReport {
                    request_id,
                    duration_us: f.timeout_ms as u64 * 1000,
                    memory_mb: f.memory_mb,
                    max_memory_used_mb: Some(&|| inst.cgroups.as_ref().and_then(|c| c.peak_memory_mb())),
                    init_ms: cold.then_some(init_ms),
                    end: CallEnd::Timeout(f.timeout_ms),
                });
                // The lease retires it.
                return Err(NodeError::Timeout(f.timeout_ms));
            }
            _ = exited.wait_for(|e| *e) => None,
        };
        let duration_us = started.elapsed().as_micros() as u64;
        let log_tail = if f.tail_log {
            Some(take_tail(&inst).await)
        } else {
            None
        };
        let (result, function_error) = match outcome {
            Some(RuntimeOutcome::Response(b)) => (b, None),
            Some(RuntimeOutcome::Error(b)) => (b, Some("Unhandled".to_string())),
            None => {
                let doc = serde_json::json!({
                    "errorType": "Runtime.ExitError",
                    "errorMessage": format!("RequestId: {request_id} Error: the runtime exited during the invocation"),
                });
                (Bytes::from(doc.to_string()), Some("Unhandled".to_string()))
            }
        };
        self.report_call(
            f,
            request_id,
            duration_us,
            Some(&|| inst.cgroups.as_ref().and_then(|c| c.peak_memory_mb())),
            cold.then_some(init_ms),
            function_error.as_ref().map(|_| &result[..]),
        );
        let idle_after = if inst.alive() && f.process_model != ONE_SHOT {
            lease.inst = None;
            departure.armed = false;
            self.pools
                .lock()
                .expect("lock")
                .finish(&key, Granted::warm(inst), duration_us)
        } else {
            drop(lease);
            self.pools.lock().expect("lock").count(&key).0 as u32
        };
        self.count_start(cold, &f.runtime);
        Ok(InvokeOutcome {
            result,
            function_error,
            cold_start: cold,
            init_ms,
            idle_after,
            log_tail,
            duration_us,
        })
    }

    /// An instance for `f`: an idle one at once, else the next one that is released
    /// or started, whichever comes first.
    pub(crate) async fn acquire(&self, key: &str, f: &FunctionRef) -> Result<Granted, NodeError> {
        let take = self.pools.lock().expect("lock").take(key, f);
        let (rx, start_now) = match take {
            Take::Hit(granted) => return Ok(granted),
            Take::Full => return Err(NodeError::Capacity),
            Take::Wait { rx, start_now } => (rx, start_now),
        };
        if start_now {
            self.maybe_start(key, f);
        } else if let Some(me) = self.me.upgrade() {
            let (key, f) = (key.to_string(), f.clone());
            tokio::spawn(async move {
                tokio::time::sleep(SCALE_UP_DELAY).await;
                me.maybe_start(&key, &f);
            });
        }
        let mut waiting = Waiting {
            agent: self,
            key,
            rx: Some(rx),
        };
        let rx = waiting.rx.as_mut().expect("set above");
        match tokio::time::timeout(Duration::from_millis(f.timeout_ms as u64), rx).await {
            Ok(Ok(granted)) => {
                waiting.rx = None;
                granted
            }
            _ => Err(NodeError::Capacity),
        }
    }

    /// Starts another instance of `key` if the pools say so; when it is up (or has
    /// failed), asks again.
    pub(crate) fn maybe_start(&self, key: &str, f: &FunctionRef) {
        let Some(me) = self.me.upgrade() else { return };
        // Whether the CPU is saturated, as of the last tenth of a second.
        if self.pools.lock().expect("lock").cpu_stale()
            && let Some((busy, all)) = crate::reaper::machine_cpu_time()
        {
            self.pools.lock().expect("lock").cpu_time(busy, all);
        }
        if !self.pools.lock().expect("lock").start_slot(key) {
            return;
        }
        let (key, f) = (key.to_string(), f.clone());
        tokio::spawn(async move {
            if let Err(e) = me.start_one(&key, &f).await {
                me.pools.lock().expect("lock").fail_oldest(&key, e);
            }
            me.maybe_start(&key, &f);
        });
    }

    /// Starts one instance of `f` (already counted as starting) and hands it to a
    /// waiting call or the idle list; a failure goes to the oldest waiting call.
    pub(crate) async fn start_one(&self, key: &str, f: &FunctionRef) -> Result<(), NodeError> {
        let t = Instant::now();
        let started = self.spawn_instance(f).await;
        let mut pools = self.pools.lock().expect("lock");
        let result = match started {
            Ok(inst) => {
                let init_ms = t.elapsed().as_millis() as u32;
                pools.started(
                    key,
                    Some(Granted {
                        inst,
                        cold: true,
                        init_ms,
                    }),
                );
                Ok(())
            }
            Err(e) => {
                pools.started(key, None);
                Err(e)
            }
        };
        drop(pools);
        self.start_deferred();
        result
    }

    /// Asks again for the configurations refused a start while the node was
    /// starting all it may (a start just ended).
    fn start_deferred(&self) {
        let deferred = self.pools.lock().expect("lock").take_deferred();
        for (key, f) in deferred {
            self.maybe_start(&key, &f);
        }
    }

    /// Kills a busy instance that will not serve again (it timed out, crashed, or was
    /// one-shot), and starts another if calls are waiting for one.
    pub(crate) fn retire(&self, key: &str, f: &FunctionRef, inst: &instance::Instance) {
        inst.kill();
        if self.pools.lock().expect("lock").retire(key) {
            self.maybe_start(key, f);
        }
    }

    /// Starts instances of `f` until `n` exist (idle, busy or starting), within the
    /// node's room; they wait idle for calls. Returns how many exist.
    ///
    /// A `wasm` function has no resident instances: pre-warming loads its module,
    /// and answers 1.
    pub async fn prewarm(&self, f: &FunctionRef, n: usize) -> Result<usize, NodeError> {
        if runtime_of(f) == Some(Runtime::Wasm) {
            let code_dir = self.code_dir(f).await?;
            let runtime = self.wasm()?;
            runtime
                .fetch_compiled(&self.cache, &f.code_sha256, &f.handler)
                .await;
            let (sha, handler) = (f.code_sha256.clone(), f.handler.clone());
            tokio::task::spawn_blocking(move || runtime.preload(&code_dir, &sha, &handler))
                .await
                .map_err(|e| NodeError::Internal(e.into()))?
                .map_err(|e| NodeError::Init(format!("{e:#}")))?;
            return Ok(1);
        }
        let key = instance_key(f);
        let (want, at_once) = {
            let mut pools = self.pools.lock().expect("lock");
            (pools.reserve(&key, f, n), pools.max_starting())
        };
        // No more at once than the node starts at once.
        let results: Vec<_> = futures::stream::iter((0..want).map(|_| self.start_one(&key, f)))
            .buffer_unordered(at_once)
            .collect()
            .await;
        if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
            return Err(e);
        }
        let (idle, busy) = self.pools.lock().expect("lock").count(&key);
        Ok(idle + busy)
    }

    /// Provisioned concurrency: keeps at least `n` instances of `f` alive (idle or
    /// busy) until `lease` from now, starting the missing ones at once and again
    /// whenever one dies. Each call renews the lease; `n` = 0 ends it. A new
    /// configuration of the same version (new code or settings) replaces the old one's
    /// instances. Returns the instances alive now.
    pub async fn provision(
        &self,
        f: &FunctionRef,
        n: usize,
        lease: Duration,
    ) -> Result<usize, NodeError> {
        if runtime_of(f) == Some(Runtime::Wasm) {
            // One-shot instances: provisioning means the module is loaded.
            return if n > 0 {
                self.prewarm(f, 1).await
            } else {
                Ok(0)
            };
        }
        let key = instance_key(f);
        self.pools
            .lock()
            .expect("lock")
            .set_floor(&key, f, n, Instant::now() + lease);
        if n == 0 {
            return Ok(0);
        }
        self.prewarm(f, n).await
    }
}
