//! The pools: the instances of each configuration, and how a call gets one.

use super::instance::Instance;
use super::*;

/// Most instances of one configuration starting at once. A burst queues for the
/// instances already running and these few new ones, instead of starting one process
/// per queued call (a cold-start storm that starves the node's CPU).
pub(super) const MAX_PARALLEL_STARTS: usize = 4;

/// An instance handed to a call.
pub(super) struct Granted {
    pub(super) inst: Arc<Instance>,
    pub(super) cold: bool,
    pub(super) init_ms: u32,
}

/// An instance in a call's hands. Dropped still armed — the call failed, timed out,
/// or was dropped half way because its client left — the instance is retired, so
/// the pool's counts stay true (a leaked `busy` or `live` once made a node refuse
/// every call after a burst whose clients hung up).
pub(super) struct Lease<'a> {
    pub(super) agent: &'a NodeAgent,
    pub(super) key: &'a str,
    pub(super) f: &'a FunctionRef,
    pub(super) inst: Option<Arc<Instance>>,
}

impl Lease<'_> {
    /// Takes the instance back from the lease: the caller returns it to the pool.
    pub(super) fn disarm(&mut self) -> Option<Arc<Instance>> {
        self.inst.take()
    }
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
pub(super) struct Waiting<'a> {
    pub(super) agent: &'a NodeAgent,
    pub(super) key: &'a str,
    pub(super) rx: Option<oneshot::Receiver<Result<Granted, NodeError>>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if let Ok(Ok(granted)) = rx.try_recv() {
                self.agent.hand_over(self.key, granted, true);
            }
        }
    }
}

/// The instances of one configuration.
#[derive(Default)]
pub(super) struct Pool {
    /// Ready and unused, most recently used last.
    pub(super) idle: Vec<Arc<Instance>>,
    /// Calls waiting for an instance, oldest first.
    pub(super) waiters: VecDeque<oneshot::Sender<Result<Granted, NodeError>>>,
    /// Instances being started.
    pub(super) starting: usize,
    /// Instances running a call.
    pub(super) busy: usize,
    /// Memory of each instance, MB.
    pub(super) memory_mb: u32,
    /// When an instance last finished a call.
    pub(super) last_release: Option<Instant>,
    /// Keep-alive and pre-warm decisions per concurrency level (the predictor).
    pub(super) keeper: Option<keepalive::predictor::Pool>,
    /// The concurrency autoscaler.
    pub(super) scaler: Option<keepalive::autoscaler::Autoscaler>,
    /// The configuration, for instances started ahead of calls; None once superseded.
    pub(super) func: Option<FunctionRef>,
    /// When a call last arrived, ms.
    pub(super) last_call_ms: i64,
    /// Calls in flight over time, for the autoscaler.
    pub(super) meter: Meter,
    /// A call not from a timer was seen: the function is not periodic.
    pub(super) other_calls: bool,
    /// Provisioned concurrency: instances kept alive whatever the policy says, and
    /// until when (the router renews the lease while the reservation stands).
    pub(super) floor: Option<(usize, Instant)>,
}

/// Calls in flight integrated over time: the autoscaler samples their average over
/// each reaper pass (Knative's average concurrency), not an instant's count.
#[derive(Default)]
pub(super) struct Meter {
    pub(super) running: u32,
    pub(super) since: Option<Instant>,
    pub(super) area_us: f64,
    pub(super) window_start: Option<Instant>,
}

impl Meter {
    pub(super) fn change(&mut self, delta: i32) {
        let now = Instant::now();
        if let Some(s) = self.since {
            self.area_us += self.running as f64 * now.duration_since(s).as_micros() as f64;
        }
        self.since = Some(now);
        self.running = (self.running as i32 + delta).max(0) as u32;
    }

    /// The average concurrency since the previous call.
    pub(super) fn take_average(&mut self) -> f64 {
        self.change(0);
        let now = self.since.unwrap_or_else(Instant::now);
        let span = self
            .window_start
            .replace(now)
            .map_or(0.0, |s| now.duration_since(s).as_micros() as f64);
        let area = std::mem::take(&mut self.area_us);
        if span > 0.0 {
            area / span
        } else {
            self.running as f64
        }
    }
}

/// Ends a call's accounting even if the call is dropped half way (its client left).
/// Disarmed when the call hands its instance back, which ends it too.
pub(super) struct Departure<'a> {
    pub(super) agent: &'a NodeAgent,
    pub(super) key: &'a str,
    pub(super) armed: bool,
}

impl Drop for Departure<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.agent.depart(self.key);
        }
    }
}

impl Pool {
    /// Instances alive: idle, busy or starting.
    pub(super) fn size(&self) -> usize {
        self.idle.len() + self.busy + self.starting
    }

    /// The provisioned instances this pool must keep now (0 once the lease ran out).
    pub(super) fn floor(&self, now: Instant) -> usize {
        match self.floor {
            Some((n, until)) if now < until => n,
            _ => 0,
        }
    }

    /// Idle instances the floor holds: provisioned instances not running a call.
    pub(super) fn floor_idle(&self, now: Instant) -> usize {
        self.floor(now).saturating_sub(self.busy)
    }

    /// A call of this configuration ended: the autoscaler's meter and the predictor
    /// learn of it.
    pub(super) fn call_ended(&mut self) {
        self.meter.change(-1);
        if let Some(k) = self.keeper.as_mut() {
            k.leave(nimbus_core::now_ms());
        }
    }

    /// Gives an instance to the oldest waiting call, or puts it in the idle list.
    /// `was_busy`: it just finished a call (rather than just started).
    fn release(&mut self, mut granted: Granted, was_busy: bool) {
        if was_busy {
            self.busy = self.busy.saturating_sub(1);
        }
        self.last_release = Some(Instant::now());
        while let Some(w) = self.waiters.pop_front() {
            match w.send(Ok(granted)) {
                Ok(()) => {
                    self.busy += 1;
                    return;
                }
                Err(Ok(back)) => granted = back,
                Err(Err(_)) => return,
            }
        }
        *granted.inst.last_used.lock().expect("lock") = Instant::now();
        self.idle.push(granted.inst);
    }
}

/// A pool whose function was not called for this long is forgotten with its history.
pub(super) const FORGET_AFTER_MS: i64 = 4 * 3_600_000;

/// A call that finds every instance busy waits this long for one to come free before
/// a new instance is started, if instances came free recently (short calls): most
/// micro-bursts then cost nothing, where a cold start would cost tens of ms of CPU.
pub(super) const SCALE_UP_DELAY: Duration = Duration::from_millis(20);

impl NodeAgent {
    /// An instance for `f`: an idle one at once, else the next one that is released
    /// or started, whichever comes first.
    pub(super) async fn acquire(&self, key: &str, f: &FunctionRef) -> Result<Granted, NodeError> {
        let rx = {
            let mut pools = self.pools.lock().expect("lock");
            if !pools.contains_key(key) {
                self.supersede(&mut pools, key);
            }
            let pool = pools.entry(key.to_string()).or_default();
            self.arrive(pool, f);
            pool.memory_mb = f.memory_mb;
            while let Some(inst) = pool.idle.pop() {
                if inst.alive() {
                    pool.busy += 1;
                    return Ok(Granted {
                        inst,
                        cold: false,
                        init_ms: 0,
                    });
                }
                self.live.fetch_sub(1, Ordering::SeqCst);
            }
            // Nothing of this configuration runs or starts here, and no instance can be
            // started or evicted: say so now, so the router can try another node.
            if pool.busy == 0 && pool.starting == 0 {
                let full = self.live.load(Ordering::SeqCst) >= self.cfg.max_instances;
                if full && !pools.values().any(|p| !p.idle.is_empty()) {
                    return Err(NodeError::Capacity);
                }
            }
            let pool = pools.get_mut(key).expect("present");
            let (tx, rx) = oneshot::channel();
            pool.waiters.push_back(tx);
            let cycling = pool
                .last_release
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
            (rx, cycling)
        };
        let (rx, cycling) = rx;
        if cycling {
            if let Some(me) = self.me.upgrade() {
                let (key, f) = (key.to_string(), f.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(SCALE_UP_DELAY).await;
                    me.maybe_start(&key, &f);
                });
            }
        } else {
            self.maybe_start(key, f);
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

    /// Starts another instance if calls are waiting and fewer than
    /// [`MAX_PARALLEL_STARTS`] are starting; makes room by evicting another
    /// configuration's idle instance when the node is full.
    pub(super) fn maybe_start(&self, key: &str, f: &FunctionRef) {
        let Some(me) = self.me.upgrade() else { return };
        {
            let mut pools = self.pools.lock().expect("lock");
            let Some(pool) = pools.get_mut(key) else {
                return;
            };
            pool.waiters.retain(|w| !w.is_closed());
            if pool.starting >= MAX_PARALLEL_STARTS || pool.starting >= pool.waiters.len() {
                return;
            }
            if self.live.load(Ordering::SeqCst) >= self.cfg.max_instances
                && !self.evict_one(&mut pools, key)
            {
                return;
            }
            let pool = pools.get_mut(key).expect("present");
            pool.starting += 1;
            self.live.fetch_add(1, Ordering::SeqCst);
        }
        let (key, f) = (key.to_string(), f.clone());
        tokio::spawn(async move {
            if let Err(e) = me.start_one(&key, &f).await {
                // The oldest waiter gets the failure; the others try again.
                let waiter = me
                    .pools
                    .lock()
                    .expect("lock")
                    .get_mut(&key)
                    .and_then(|p| p.waiters.pop_front());
                if let Some(w) = waiter {
                    let _ = w.send(Err(e));
                }
            }
            me.maybe_start(&key, &f);
        });
    }

    /// Starts one instance of `f` (already counted as starting and live) and hands it
    /// to a waiting call or the idle pool; on failure, uncounts it.
    pub(super) async fn start_one(&self, key: &str, f: &FunctionRef) -> Result<(), NodeError> {
        let t = Instant::now();
        let started = self.spawn_instance(f).await;
        if let Some(pool) = self.pools.lock().expect("lock").get_mut(key) {
            pool.starting -= 1;
        }
        match started {
            Ok(inst) => {
                let init_ms = t.elapsed().as_millis() as u32;
                self.hand_over(
                    key,
                    Granted {
                        inst,
                        cold: true,
                        init_ms,
                    },
                    false,
                );
                Ok(())
            }
            Err(e) => {
                self.live.fetch_sub(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// A new configuration of a version (its code or settings changed) makes the idle
    /// instances of the old one useless: they are killed now rather than at the end of
    /// their keep-alive.
    pub(super) fn supersede(&self, pools: &mut HashMap<String, Pool>, key: &str) {
        let Some((version, _)) = key.rsplit_once('/') else {
            return;
        };
        let prefix = format!("{version}/");
        let mut n = 0;
        for (k, pool) in pools.iter_mut() {
            if k.starts_with(&prefix) && k != key {
                n += pool.idle.len();
                pool.idle.clear();
                pool.func = None;
                pool.floor = None;
            }
        }
        if n > 0 {
            self.live.fetch_sub(n, Ordering::SeqCst);
            tracing::debug!(instances = n, "superseded idle instances");
        }
    }

    /// Kills the least recently used idle instance of another configuration.
    pub(super) fn evict_one(&self, pools: &mut HashMap<String, Pool>, except: &str) -> bool {
        let now = Instant::now();
        let victim = pools
            .iter()
            .filter(|(k, p)| k.as_str() != except && p.idle.len() > p.floor_idle(now))
            .flat_map(|(k, p)| {
                p.idle
                    .first()
                    .map(|i| (k.clone(), *i.last_used.lock().expect("lock")))
            })
            .min_by_key(|(_, used)| *used);
        let Some(pool) = victim.and_then(|(k, _)| pools.get_mut(&k)) else {
            return false;
        };
        // Dropping the instance kills it.
        drop(pool.idle.remove(0));
        self.live.fetch_sub(1, Ordering::SeqCst);
        true
    }

    /// Gives an instance to the oldest waiting call, or puts it in the idle pool.
    /// `was_busy`: it just finished a call (rather than just started).
    pub(super) fn hand_over(&self, key: &str, granted: Granted, was_busy: bool) {
        let mut pools = self.pools.lock().expect("lock");
        pools
            .entry(key.to_string())
            .or_default()
            .release(granted, was_busy);
    }

    /// A warm call's end, under one lock: the call's accounting ends and its instance
    /// goes to the next waiting call or the idle pool. Returns the idle instances of
    /// the configuration after (for placement).
    pub(super) fn finish_call(&self, key: &str, granted: Granted) -> u32 {
        let mut pools = self.pools.lock().expect("lock");
        let pool = pools.entry(key.to_string()).or_default();
        pool.call_ended();
        pool.release(granted, true);
        pool.idle.len() as u32
    }

    /// Kills a busy instance that will not serve again (it timed out, crashed, or was
    /// one-shot), and starts another if calls are waiting for one.
    pub(super) fn retire(&self, key: &str, f: &FunctionRef, inst: &Instance) {
        inst.kill();
        self.live.fetch_sub(1, Ordering::SeqCst);
        let waiting = {
            let mut pools = self.pools.lock().expect("lock");
            pools.get_mut(key).is_some_and(|p| {
                p.busy = p.busy.saturating_sub(1);
                !p.waiters.is_empty()
            })
        };
        if waiting {
            self.maybe_start(key, f);
        }
    }

    /// Idle instances of a configuration.
    pub(super) fn idle_count(&self, key: &str) -> u32 {
        self.pools
            .lock()
            .expect("lock")
            .get(key)
            .map_or(0, |p| p.idle.len() as u32)
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
            let (sha, handler) = (f.code_sha256.clone(), f.handler.clone());
            tokio::task::spawn_blocking(move || runtime.preload(&code_dir, &sha, &handler))
                .await
                .map_err(|e| NodeError::Internal(e.into()))?
                .map_err(|e| NodeError::Init(format!("{e:#}")))?;
            return Ok(1);
        }
        let key = instance_key(f);
        let want = {
            let mut pools = self.pools.lock().expect("lock");
            let pool = pools.entry(key.clone()).or_default();
            pool.memory_mb = f.memory_mb;
            let have = pool.idle.len() + pool.busy + pool.starting;
            let room = self
                .cfg
                .max_instances
                .saturating_sub(self.live.load(Ordering::SeqCst));
            let want = n.saturating_sub(have).min(room);
            pool.starting += want;
            self.live.fetch_add(want, Ordering::SeqCst);
            want
        };
        let starts = (0..want).map(|_| self.start_one(&key, f));
        let results = futures::future::join_all(starts).await;
        if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
            return Err(e);
        }
        let pools = self.pools.lock().expect("lock");
        Ok(pools
            .get(&key)
            .map_or(0, |p| p.idle.len() + p.busy + p.starting))
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
        {
            let mut pools = self.pools.lock().expect("lock");
            if n > 0 {
                self.supersede(&mut pools, &key);
            }
            let pool = pools.entry(key.clone()).or_default();
            pool.memory_mb = f.memory_mb;
            pool.floor = (n > 0).then(|| (n, Instant::now() + lease));
            if n > 0 {
                pool.func = Some(f.clone());
            }
        }
        if n == 0 {
            return Ok(0);
        }
        self.prewarm(f, n).await
    }
}
