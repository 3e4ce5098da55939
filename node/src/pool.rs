//! The pools: the instances of each configuration, and how a call gets one.
//!
//! [`Pools`] is a value: its methods decide (hand out an idle instance, queue the
//! call, start an instance, evict one) and change its counts; the agent acts on the
//! decisions (spawns the starts, waits on the queue) outside the lock. The
//! instances alive on the node are counted in one place, [`Pools::live`], from the
//! pools themselves: nothing adjusts a separate counter by hand.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_core::nodes::NodeError;
use proto::node::FunctionRef;
use tokio::sync::oneshot;

use crate::counters::IdleTime;
use crate::instance::Instance;

/// Most instances of one configuration starting at once. A burst queues for the
/// instances already running and these few new ones, instead of starting one process
/// per queued call (a cold-start storm that starves the node's CPU).
const MAX_PARALLEL_STARTS: usize = 4;

/// What an instance is assumed to use before any has been measured, KB.
const ASSUMED_INSTANCE_KB: u64 = 64 * 1024;
/// The least an instance is counted as using, KB, whatever it measures.
const MIN_INSTANCE_KB: u64 = 4 * 1024;

/// A pool whose function was not called for this long is forgotten with its history.
const FORGET_AFTER_MS: i64 = 4 * 3_600_000;

/// A call that finds every instance busy waits this long for one to come free before
/// a new instance is started, if instances came free recently (short calls): most
/// micro-bursts then cost nothing, where a cold start would cost tens of ms of CPU.
pub(crate) const SCALE_UP_DELAY: Duration = Duration::from_millis(20);

/// An instance handed to a call.
pub(crate) struct Granted {
    pub(crate) inst: Arc<Instance>,
    pub(crate) cold: bool,
    pub(crate) init_ms: u32,
}

impl Granted {
    /// An instance that served before.
    pub(crate) fn warm(inst: Arc<Instance>) -> Self {
        Granted {
            inst,
            cold: false,
            init_ms: 0,
        }
    }
}

/// Where a waiting call's instance comes from.
pub(crate) type Handover = oneshot::Receiver<Result<Granted, NodeError>>;

/// What a call arriving at the pools gets.
pub(crate) enum Take {
    /// An idle instance, now.
    Hit(Granted),
    /// A place in the queue. `start_now`: ask for a new instance at once; otherwise
    /// instances came free recently, and a new one is asked for only if none has
    /// after [`SCALE_UP_DELAY`].
    Wait { rx: Handover, start_now: bool },
    /// Nothing of this configuration runs or starts here, and the node is full of
    /// busy instances: the router should try another node.
    Full,
}

/// What the keep-alive policy needs to learn of each configuration's calls.
#[derive(Clone, Copy)]
pub(crate) struct Learning {
    pub(crate) policy: keepalive::predictor::Policy,
    pub(crate) bin_ms: i64,
    pub(crate) fallback_ms: i64,
}

/// The instances of one configuration.
#[derive(Default)]
pub(crate) struct Pool {
    /// Ready and unused, most recently used last.
    idle: Vec<Arc<Instance>>,
    /// Calls waiting for an instance, oldest first.
    waiters: VecDeque<oneshot::Sender<Result<Granted, NodeError>>>,
    /// Instances being started.
    starting: usize,
    /// Instances running a call.
    busy: usize,
    /// Memory of each instance, MB.
    memory_mb: u32,
    /// When an instance last finished a call.
    last_release: Option<Instant>,
    /// Keep-alive and pre-warm decisions per concurrency level (the predictor).
    keeper: Option<keepalive::predictor::Pool>,
    /// The concurrency autoscaler.
    scaler: Option<keepalive::autoscaler::Autoscaler>,
    /// The configuration, for instances started ahead of calls; None once superseded.
    func: Option<FunctionRef>,
    /// When a call last arrived, ms.
    last_call_ms: i64,
    /// Calls in flight over time, for the autoscaler.
    meter: Meter,
    /// A call not from a timer was seen: the function is not periodic.
    other_calls: bool,
    /// Provisioned concurrency: instances kept alive whatever the policy says, and
    /// until when (the router renews the lease while the reservation stands).
    floor: Option<(usize, Instant)>,
    /// How long a call holds an instance, µs: a moving average (0 before any).
    service_us: f64,
    /// How long a start of this configuration takes, µs: a moving average (0
    /// before any).
    start_us: f64,
}

/// The weight of a new sample in the pools' moving averages.
const EWMA: f64 = 0.2;

fn ewma(avg: f64, sample: f64) -> f64 {
    if avg == 0.0 {
        sample
    } else {
        avg + EWMA * (sample - avg)
    }
}

/// Calls in flight integrated over time: the autoscaler samples their average over
/// each reaper pass (Knative's average concurrency), not an instant's count.
#[derive(Default)]
struct Meter {
    running: u32,
    since: Option<Instant>,
    area_us: f64,
    window_start: Option<Instant>,
}

impl Meter {
    fn change(&mut self, delta: i32) {
        let now = Instant::now();
        if let Some(s) = self.since {
            self.area_us += self.running as f64 * now.duration_since(s).as_micros() as f64;
        }
        self.since = Some(now);
        self.running = (self.running as i32 + delta).max(0) as u32;
    }

    /// The average concurrency since the previous call.
    fn take_average(&mut self) -> f64 {
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

impl Pool {
    /// Instances alive: idle, busy or starting.
    fn size(&self) -> usize {
        self.idle.len() + self.busy + self.starting
    }

    /// The provisioned instances this pool must keep now (0 once the lease ran out).
    fn floor(&self, now: Instant) -> usize {
        match self.floor {
            Some((n, until)) if now < until => n,
            _ => 0,
        }
    }

    /// Idle instances the floor holds: provisioned instances not running a call.
    fn floor_idle(&self, now: Instant) -> usize {
        self.floor(now).saturating_sub(self.busy)
    }

    /// A call of `f` arrived: the predictor and the autoscaler learn of it.
    fn arrive(&mut self, f: &FunctionRef, learning: Learning) {
        let now = nimbus_core::now_ms();
        // Calls only ever from a timer are periodic: the predictor trusts fewer idle
        // times. One call from anywhere else and the function is not.
        self.other_calls |= !f.from_timer;
        let keeper = self.keeper.get_or_insert_with(|| {
            keepalive::predictor::Pool::with(learning.policy, learning.bin_ms, learning.fallback_ms)
        });
        keeper.set_periodic(!self.other_calls);
        keeper.enter(now);
        self.scaler.get_or_insert_with(|| {
            keepalive::autoscaler::Autoscaler::new(
                keepalive::autoscaler::AutoscalerConfig::default(),
            )
        });
        self.func = Some(f.clone());
        self.last_call_ms = now;
        self.memory_mb = f.memory_mb;
        self.meter.change(1);
    }

    /// A call of this configuration ended: the autoscaler's meter and the predictor
    /// learn of it.
    fn call_ended(&mut self) {
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

/// What a node may hold: instances are admitted by the memory they are measured to
/// use, within a bound on their count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Room {
    /// Most instances alive at once, whatever memory says (processes, descriptors).
    pub(crate) max_instances: usize,
    /// Memory the node offers to instances, MB.
    pub(crate) memory_mb: u64,
    /// Most instances starting at once across the node: a start is mostly CPU (a
    /// sandbox, an interpreter, imports), so about one per core.
    pub(crate) max_starting: usize,
}

/// Every configuration's pool on a node, and what the node may hold.
pub(crate) struct Pools {
    by_key: HashMap<String, Pool>,
    room: Room,
    /// What an idle instance was last measured to use on average, KB
    /// ([`Pools::measured`]).
    per_instance_kb: u64,
    /// Configurations refused a start because the node was starting all it may:
    /// each gets another try when a start ends.
    deferred: Vec<String>,
    /// The machine's CPU time counters (busy, all) at the last reading, and whether
    /// it was saturated (≥ [`SATURATED`] busy) since the one before.
    cpu: ((u64, u64), bool),
    /// When the CPU time was last read.
    cpu_read: Option<Instant>,
    learning: Learning,
}

/// How old a CPU reading may be before a start reads it again: a burst is judged
/// on its own first tenth of a second, not on the calm before it.
const CPU_WINDOW: Duration = Duration::from_millis(100);

/// The share of CPU time busy at which the node counts as saturated: more
/// processes could not run more calls.
const SATURATED: f64 = 0.9;

impl Pools {
    pub(crate) fn new(room: Room, learning: Learning) -> Self {
        Pools {
            by_key: HashMap::new(),
            room,
            per_instance_kb: ASSUMED_INSTANCE_KB,
            deferred: Vec::new(),
            cpu: ((0, 0), false),
            cpu_read: None,
            learning,
        }
    }

    /// Instances alive on the node: idle, busy or starting. The one count of them.
    pub(crate) fn live(&self) -> usize {
        self.by_key.values().map(Pool::size).sum()
    }

    /// Most instances starting at once on the node.
    pub(crate) fn max_starting(&self) -> usize {
        self.room.max_starting
    }

    /// Instances starting on the node.
    fn starting(&self) -> usize {
        self.by_key.values().map(|p| p.starting).sum()
    }

    /// Memory `n` instances are expected to use, KB, at the measured average.
    fn expected_kb(&self, n: usize) -> u64 {
        n as u64 * self.per_instance_kb
    }

    /// Memory the live instances are expected to use, KB.
    pub(crate) fn expected_memory_kb(&self) -> u64 {
        self.expected_kb(self.live())
    }

    /// Whether one more instance does not fit: the count's bound, or the memory the
    /// instances would then be expected to use.
    fn full(&self) -> bool {
        let live = self.live();
        live >= self.room.max_instances || self.expected_kb(live + 1) > self.room.memory_mb * 1024
    }

    /// Instances that fit beside those alive now.
    fn free(&self) -> usize {
        let live = self.live();
        let by_memory = (self.room.memory_mb * 1024 / self.per_instance_kb) as usize;
        self.room.max_instances.min(by_memory).saturating_sub(live)
    }

    /// What the idle instances were measured to use, on average, KB (the reaper
    /// reads their cgroups).
    pub(crate) fn measured(&mut self, per_instance_kb: u64) {
        self.per_instance_kb = per_instance_kb.max(MIN_INSTANCE_KB);
    }

    /// The machine's CPU time so far (busy, all; any unit, e.g. `/proc/stat`'s
    /// ticks): whether it was saturated since the last reading.
    pub(crate) fn cpu_time(&mut self, busy: u64, all: u64) {
        let ((b0, a0), _) = self.cpu;
        let (db, da) = (busy.saturating_sub(b0), all.saturating_sub(a0));
        let saturated = da > 0 && a0 > 0 && db as f64 >= SATURATED * da as f64;
        self.cpu = ((busy, all), saturated);
        self.cpu_read = Some(Instant::now());
    }

    /// Whether the CPU reading is older than [`CPU_WINDOW`].
    pub(crate) fn cpu_stale(&self) -> bool {
        self.cpu_read.is_none_or(|t| t.elapsed() >= CPU_WINDOW)
    }

    /// Whether a busy configuration may grow. Below one instance per core, or
    /// while its instances do not come free, it may. Beyond, with instances
    /// cycling, a waiting call gets one soon, and a start must be worth it:
    /// - not on a saturated CPU, where a new process would only share the same
    ///   cores (a burst of a CPU-bound function would otherwise start one per
    ///   connection);
    /// - and only if the queue takes longer to drain than a start takes. By
    ///   Little's law the busy instances serve `busy / S` calls a second (S: how
    ///   long a call holds one), so the last waiting call has one in
    ///   `waiters × S / busy`. Short calls drain a deep queue in a few
    ///   milliseconds, far sooner than a new instance would be up.
    fn may_grow(&self, pool: &Pool) -> bool {
        let cycling = pool
            .last_release
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
        if !cycling || pool.size() < self.room.max_starting {
            return true;
        }
        if self.cpu.1 {
            return false;
        }
        let drain_us = pool.waiters.len() as f64 * pool.service_us / pool.busy.max(1) as f64;
        // A start costs at least the wait the policy accepts before one anyway.
        drain_us > pool.start_us.max(SCALE_UP_DELAY.as_micros() as f64)
    }

    /// Up to `n` idle instances, spread over the pools, to measure.
    pub(crate) fn sample_idle(&self, n: usize) -> Vec<Arc<Instance>> {
        let idle: Vec<&Arc<Instance>> = self.by_key.values().flat_map(|p| &p.idle).collect();
        let step = idle.len().div_ceil(n.max(1)).max(1);
        idle.into_iter().step_by(step).cloned().collect()
    }

    /// The configurations refused a start while the node was starting all it may,
    /// with their functions: each should ask again.
    pub(crate) fn take_deferred(&mut self) -> Vec<(String, FunctionRef)> {
        let keys = std::mem::take(&mut self.deferred);
        keys.into_iter()
            .filter_map(|k| {
                let p = self.by_key.get(&k)?;
                let f = p.func.clone().filter(|_| !p.waiters.is_empty())?;
                Some((k, f))
            })
            .collect()
    }

    /// A call of `f` (configuration `key`) arrives: an idle instance, a place in the
    /// queue, or no room on this node.
    pub(crate) fn take(&mut self, key: &str, f: &FunctionRef) -> Take {
        if !self.by_key.contains_key(key) {
            self.supersede(key);
        }
        let learning = self.learning;
        let pool = self.by_key.entry(key.to_string()).or_default();
        pool.arrive(f, learning);
        while let Some(inst) = pool.idle.pop() {
            if inst.alive() {
                pool.busy += 1;
                return Take::Hit(Granted::warm(inst));
            }
        }
        if pool.busy == 0
            && pool.starting == 0
            && self.full()
            && !self.by_key.values().any(|p| !p.idle.is_empty())
        {
            return Take::Full;
        }
        let pool = self.by_key.get_mut(key).expect("present");
        let (tx, rx) = oneshot::channel();
        pool.waiters.push_back(tx);
        let cycling = pool
            .last_release
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
        Take::Wait {
            rx,
            start_now: !cycling,
        }
    }

    /// Whether to start another instance of `key` now: calls are waiting, fewer
    /// than [`MAX_PARALLEL_STARTS`] of it are starting, and the node is starting
    /// fewer than it may (else `key` is deferred: [`Pools::take_deferred`]). Makes
    /// room by evicting another configuration's idle instance when the node is
    /// full. A yes counts the instance as starting; [`Pools::started`] must follow.
    pub(crate) fn start_slot(&mut self, key: &str) -> bool {
        let Some(pool) = self.by_key.get_mut(key) else {
            return false;
        };
        pool.waiters.retain(|w| !w.is_closed());
        if pool.starting >= MAX_PARALLEL_STARTS || pool.starting >= pool.waiters.len() {
            return false;
        }
        if !self.may_grow(self.by_key.get(key).expect("present")) {
            return false;
        }
        if self.starting() >= self.room.max_starting {
            if !self.deferred.iter().any(|k| k == key) {
                self.deferred.push(key.to_string());
            }
            return false;
        }
        if self.full() && self.evict_one(key).is_none() {
            return false;
        }
        self.by_key.get_mut(key).expect("present").starting += 1;
        true
    }

    /// Counts up to `n` instances of `f` as starting, within the node's room, ahead
    /// of calls (a pre-warm or provisioned concurrency). Returns how many to start;
    /// [`Pools::started`] must follow for each.
    pub(crate) fn reserve(&mut self, key: &str, f: &FunctionRef, n: usize) -> usize {
        let room = self.free();
        let pool = self.by_key.entry(key.to_string()).or_default();
        pool.memory_mb = f.memory_mb;
        let want = n.saturating_sub(pool.size()).min(room);
        pool.starting += want;
        want
    }

    /// An instance counted as starting is up (it goes to the oldest waiting call or
    /// the idle list), or failed to start (None).
    pub(crate) fn started(&mut self, key: &str, started: Option<Granted>) {
        let pool = self.by_key.entry(key.to_string()).or_default();
        pool.starting = pool.starting.saturating_sub(1);
        if let Some(granted) = started {
            if granted.cold {
                pool.start_us = ewma(pool.start_us, granted.init_ms as f64 * 1000.0);
            }
            pool.release(granted, false);
        }
    }

    /// The oldest call waiting for an instance of `key` gets `e` (an instance
    /// started for it failed); the others wait for the next start.
    pub(crate) fn fail_oldest(&mut self, key: &str, e: NodeError) {
        if let Some(w) = self.by_key.get_mut(key).and_then(|p| p.waiters.pop_front()) {
            let _ = w.send(Err(e));
        }
    }

    /// Sets or ends (`n` = 0) the provisioned floor of `f`, until `until`. A new
    /// configuration of the same version replaces the old one's idle instances.
    pub(crate) fn set_floor(&mut self, key: &str, f: &FunctionRef, n: usize, until: Instant) {
        if n > 0 {
            self.supersede(key);
        }
        let pool = self.by_key.entry(key.to_string()).or_default();
        pool.memory_mb = f.memory_mb;
        pool.floor = (n > 0).then_some((n, until));
        if n > 0 {
            pool.func = Some(f.clone());
        }
    }

    /// Stops asking for instances of `key` ahead of calls (they fail to start) until
    /// it is called again.
    pub(crate) fn stop_prewarming(&mut self, key: &str) {
        if let Some(pool) = self.by_key.get_mut(key) {
            pool.func = None;
        }
    }

    /// A warm call's end, which held its instance `held_us`: its accounting ends
    /// and its instance goes to the next waiting call or the idle list. Returns the
    /// idle instances after.
    pub(crate) fn finish(&mut self, key: &str, granted: Granted, held_us: u64) -> u32 {
        let pool = self.by_key.entry(key.to_string()).or_default();
        pool.service_us = ewma(pool.service_us, held_us as f64);
        pool.call_ended();
        pool.release(granted, true);
        pool.idle.len() as u32
    }

    /// An instance handed to a call that had already left goes back.
    pub(crate) fn hand_back(&mut self, key: &str, granted: Granted) {
        self.by_key
            .entry(key.to_string())
            .or_default()
            .release(granted, true);
    }

    /// A call ended without handing its instance back (it failed, or its client
    /// left).
    pub(crate) fn depart(&mut self, key: &str) {
        if let Some(pool) = self.by_key.get_mut(key) {
            pool.call_ended();
        }
    }

    /// A busy instance will not serve again (it was killed). Returns whether calls
    /// wait for an instance (then another should start).
    pub(crate) fn retire(&mut self, key: &str) -> bool {
        self.by_key.get_mut(key).is_some_and(|p| {
            p.busy = p.busy.saturating_sub(1);
            !p.waiters.is_empty()
        })
    }

    /// Instances of a configuration: (idle, busy or starting).
    pub(crate) fn count(&self, key: &str) -> (usize, usize) {
        self.by_key
            .get(key)
            .map_or((0, 0), |p| (p.idle.len(), p.busy + p.starting))
    }

    /// A new configuration of a version (its code or settings changed) makes the idle
    /// instances of the old one useless: they are killed now rather than at the end of
    /// their keep-alive.
    fn supersede(&mut self, key: &str) {
        let Some((version, _)) = key.rsplit_once('/') else {
            return;
        };
        let prefix = format!("{version}/");
        let mut n = 0;
        for (k, pool) in self.by_key.iter_mut() {
            if k.starts_with(&prefix) && k != key {
                n += pool.idle.len();
                pool.idle.clear();
                pool.func = None;
                pool.floor = None;
            }
        }
        if n > 0 {
            tracing::debug!(instances = n, "superseded idle instances");
        }
    }

    /// Takes out the least recently used idle instance of another configuration
    /// (beyond provisioned floors); dropping it kills it.
    fn evict_one(&mut self, except: &str) -> Option<Arc<Instance>> {
        let now = Instant::now();
        let victim = self
            .by_key
            .iter()
            .filter(|(k, p)| k.as_str() != except && p.idle.len() > p.floor_idle(now))
            .flat_map(|(k, p)| {
                p.idle
                    .first()
                    .map(|i| (k.clone(), *i.last_used.lock().expect("lock")))
            })
            .min_by_key(|(_, used)| *used);
        let pool = victim.and_then(|(k, _)| self.by_key.get_mut(&k))?;
        Some(pool.idle.remove(0))
    }

    /// Takes out up to `n` idle instances, least recently used first (beyond
    /// provisioned floors): the machine is short of memory.
    pub(crate) fn relieve(&mut self, n: usize) -> Vec<Arc<Instance>> {
        std::iter::from_fn(|| self.evict_one("")).take(n).collect()
    }

    /// Kills the idle instances of every configuration whose key starts with
    /// `prefix` (a function or version changed or was deleted). Returns how many.
    pub(crate) fn drain(&mut self, prefix: &str) -> usize {
        let mut n = 0;
        for (k, pool) in self.by_key.iter_mut() {
            if k.starts_with(prefix) {
                n += pool.idle.len();
                pool.idle.clear();
                pool.func = None;
            }
        }
        n
    }

    /// Forgets every pool: their idle instances die, and their waiting calls fail.
    pub(crate) fn clear(&mut self) -> Vec<Pool> {
        self.by_key.drain().map(|(_, p)| p).collect()
    }

    /// Instances per configuration: what a heartbeat reports for placement.
    pub(crate) fn warm(&self) -> Vec<proto::node::WarmPool> {
        self.by_key
            .iter()
            .map(|(k, p)| proto::node::WarmPool {
                key: k.clone(),
                idle: p.idle.len() as u32,
                busy: (p.busy + p.starting) as u32,
            })
            .collect()
    }

    /// Memory (MB) and instances alive.
    pub(crate) fn used(&self) -> (u64, u32) {
        self.by_key.values().fold((0, 0), |(m, n), p| {
            let k = p.size();
            (m + k as u64 * p.memory_mb as u64, n + k as u32)
        })
    }

    /// One pass of the keep-alive policy: takes out the idle instances the
    /// predictor (and, in a burst, the autoscaler) no longer wants, and counts as
    /// starting those they want ahead of calls. Pools made only by pre-warms keep
    /// their instances for `keep_alive`. Returns the instances to kill and the
    /// configurations to start one instance of each (already counted).
    pub(crate) fn reap(
        &mut self,
        keep_alive: Duration,
        idle_time: &mut IdleTime,
    ) -> (Vec<Arc<Instance>>, Vec<(String, FunctionRef)>) {
        let now = nimbus_core::now_ms();
        let instant = Instant::now();
        let mut room = self.free();
        let mut start_budget = self.room.max_starting.saturating_sub(self.starting());
        let (saturated, cores) = (self.cpu.1, self.room.max_starting);
        let (mut dead, mut starts) = (Vec::new(), Vec::new());
        // Idle time since the last pass, at the idle counts of now.
        if let Some(prev) = idle_time.sampled_at {
            let dt = instant.duration_since(prev).as_secs_f64();
            for p in self.by_key.values() {
                idle_time.instance_seconds += p.idle.len() as f64 * dt;
                idle_time.mb_seconds += (p.idle.len() * p.memory_mb as usize) as f64 * dt;
            }
        }
        idle_time.sampled_at = Some(instant);
        for (key, pool) in self.by_key.iter_mut() {
            pool.idle.retain(|i| {
                if !i.alive() {
                    dead.push(i.clone());
                }
                i.alive()
            });
            // Provisioned instances stay, and the missing ones start, whatever the
            // policy below says.
            let floor_idle = pool.floor_idle(instant);
            let floor_missing = pool.floor(instant).saturating_sub(pool.size());
            let to_start = if let Some(keeper) = &pool.keeper {
                let running = pool.busy + pool.waiters.len();
                let average = pool.meter.take_average();
                let mut want_idle = keeper.loaded_idle(now).len().max(floor_idle);
                // Only pre-warm intervals start instances; keep-alive intervals keep
                // the ones there are (a call that failed or crashed leaves none).
                let mut may_start = keeper.prewarms_due(now).max(floor_missing);
                let size = pool.size() as u32;
                if let Some(scaler) = &mut pool.scaler {
                    scaler.record(now, average);
                    let scale = scaler.decide(now, size);
                    // A burst: hold (and start) what the panic window asks for.
                    // Not past one per core on a saturated CPU (see `may_grow`).
                    if scale.panic && !(saturated && pool.size() >= cores) {
                        let burst = (scale.desired as usize).saturating_sub(running);
                        want_idle = want_idle.max(burst);
                        may_start = may_start.max(burst);
                    }
                }
                // The least recently used go first (`idle` is oldest first).
                while pool.idle.len() > want_idle {
                    dead.push(pool.idle.remove(0));
                }
                want_idle
                    .saturating_sub(pool.idle.len() + pool.starting)
                    .min(may_start)
            } else {
                // Made by pre-warms only: the fixed keep-alive, most recently used
                // kept first.
                let mut kept = 0;
                for i in std::mem::take(&mut pool.idle).into_iter().rev() {
                    let fresh = i.last_used.lock().expect("lock").elapsed() < keep_alive;
                    if fresh || kept < floor_idle {
                        kept += 1;
                        pool.idle.push(i);
                    } else {
                        dead.push(i);
                    }
                }
                pool.idle.reverse();
                floor_missing
            };
            if let Some(f) = &pool.func {
                for _ in 0..to_start
                    .min(room)
                    .min(start_budget)
                    .min(MAX_PARALLEL_STARTS)
                {
                    pool.starting += 1;
                    room -= 1;
                    start_budget -= 1;
                    starts.push((key.clone(), f.clone()));
                }
            }
        }
        // Under memory pressure (the instances outgrew what was measured when they
        // were admitted), the least recently used idle instances go.
        while self.expected_kb(self.live()) > self.room.memory_mb * 1024 {
            match self.evict_one("") {
                Some(i) => dead.push(i),
                None => break,
            }
        }
        self.by_key.retain(|_, p| {
            p.size() > 0
                || !p.waiters.is_empty()
                || p.floor(instant) > 0
                || (p.func.is_some() && now - p.last_call_ms < FORGET_AFTER_MS)
        });
        (dead, starts)
    }
}

#[cfg(test)]
mod tests;
