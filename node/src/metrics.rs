//! What the node reports: its warm pools, its use, its counters and metrics.

use std::sync::atomic::Ordering;
use std::sync::{LazyLock, Mutex, Weak};

use nimbus_core::metrics::{self, Collector, DescriptorEncoder, Labels};

use crate::counters::Counters;
use crate::{NodeAgent, code_cache};

/// Cold starts per node and runtime.
static COLD_STARTS: LazyLock<metrics::Counters> = LazyLock::new(|| {
    metrics::counters(
        "node_cold_starts",
        "Calls that started an instance (or loaded a wasm module), by runtime",
    )
});

/// The node agents of this process, read at each scrape.
static AGENTS: LazyLock<Mutex<Vec<Weak<NodeAgent>>>> = LazyLock::new(|| {
    metrics::register_collector(Box::new(NodeCollector));
    Mutex::default()
});

/// Reports the node agents' state at scrape time.
#[derive(Debug)]
struct NodeCollector;

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let agents: Vec<_> = AGENTS
            .lock()
            .expect("lock")
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let node = |a: &NodeAgent| -> Labels { vec![("node", a.cfg.node_id.clone())] };
        let with = |a: &NodeAgent, k: &'static str, v: &str| -> Labels {
            vec![("node", a.cfg.node_id.clone()), (k, v.to_string())]
        };
        let (mut instances, mut memory, mut spares) = (vec![], vec![], vec![]);
        let mut measured = vec![];
        let (mut warm, mut idle_s, mut idle_mb_s, mut spares_used) =
            (vec![], vec![], vec![], vec![]);
        let (mut fetches, mut failures) = (vec![], vec![]);
        for a in &agents {
            let (mb, n) = a.used();
            instances.push((node(a), n as f64));
            memory.push((node(a), mb as f64));
            measured.push((node(a), a.measured_memory_kb() as f64 / 1024.0));
            for (runtime, ready) in a.spares_ready() {
                spares.push((with(a, "runtime", &runtime), ready as f64));
            }
            let c = a.counters();
            warm.push((node(a), c.warm_starts));
            idle_s.push((node(a), c.idle_instance_seconds));
            idle_mb_s.push((node(a), c.idle_mb_seconds));
            spares_used.push((node(a), a.spares_used() as u64));
            let t = a.code_fetches();
            fetches.push((with(a, "tier", "zone"), t.zone.0));
            fetches.push((with(a, "tier", "object"), t.object.0));
            failures.push((with(a, "tier", "zone"), t.zone_failures));
        }
        metrics::encode_gauge(
            &mut e,
            "node_instances",
            "Instances alive (and wasm calls running)",
            &instances,
        )?;
        metrics::encode_gauge(
            &mut e,
            "node_memory_mb",
            "Memory of the instances alive, MB",
            &memory,
        )?;
        metrics::encode_gauge(
            &mut e,
            "node_memory_used_mb",
            "Memory the instances alive are expected to use at the average measured of \
             idle ones (what admits new instances), MB",
            &measured,
        )?;
        metrics::encode_gauge(
            &mut e,
            "node_spares",
            "Spares started and waiting, by runtime",
            &spares,
        )?;
        metrics::encode_counter(
            &mut e,
            "node_warm_starts",
            "Calls served by an instance already loaded",
            &warm,
        )?;
        metrics::encode_counter(
            &mut e,
            "node_idle_instance_seconds",
            "Time instances were loaded and not running a call",
            &idle_s,
        )?;
        metrics::encode_counter(
            &mut e,
            "node_idle_mb_seconds",
            "Idle instance time weighted by memory, MB-s",
            &idle_mb_s,
        )?;
        metrics::encode_counter(
            &mut e,
            "node_spares_used",
            "Cold starts served by a spare",
            &spares_used,
        )?;
        metrics::encode_counter(
            &mut e,
            "node_code_fetches",
            "Code packages fetched on a node-cache miss, by tier",
            &fetches,
        )?;
        metrics::encode_counter(
            &mut e,
            "node_code_fetch_failures",
            "Fetches from a tier that failed and fell back to the next",
            &failures,
        )?;
        Ok(())
    }
}

impl NodeAgent {
    /// Adds this agent to the process's metrics (`nimbus_node_*`, labelled with its
    /// id), read at each scrape for as long as it lives.
    pub fn expose_metrics(self: &std::sync::Arc<Self>) {
        let mut agents = AGENTS.lock().expect("lock");
        agents.retain(|a| a.strong_count() > 0);
        agents.push(std::sync::Arc::downgrade(self));
    }

    /// Instances per configuration: what a heartbeat reports for placement.
    pub fn pools(&self) -> Vec<proto::node::WarmPool> {
        self.pools.lock().expect("lock").warm()
    }

    /// Memory the instances alive are expected to use, KB, at the average their idle
    /// ones were last measured to use (what admits new instances).
    pub fn measured_memory_kb(&self) -> u64 {
        self.pools.lock().expect("lock").expected_memory_kb()
    }

    /// Memory (MB) and instances in use on this node; a running wasm call counts as
    /// an instance of its memory limit.
    pub fn used(&self) -> (u64, u32) {
        let (m, n) = self.pools.lock().expect("lock").used();
        // Running wasm calls, at their memory limits.
        (
            m + self.wasm_running.1.load(Ordering::SeqCst) as u64,
            n + self.wasm_running.0.load(Ordering::SeqCst) as u32,
        )
    }

    pub(super) fn count_start(&self, cold: bool, runtime: &str) {
        let c = if cold { &self.starts.0 } else { &self.starts.1 };
        c.fetch_add(1, Ordering::Relaxed);
        if cold {
            COLD_STARTS
                .get_or_create(&vec![
                    ("node", self.cfg.node_id.clone()),
                    ("runtime", runtime.to_string()),
                ])
                .inc();
        }
    }

    /// What the node has done since it started.
    pub fn counters(&self) -> Counters {
        let idle = self.idle.lock().expect("lock");
        Counters {
            cold_starts: self.starts.0.load(Ordering::Relaxed),
            warm_starts: self.starts.1.load(Ordering::Relaxed),
            idle_instance_seconds: idle.instance_seconds,
            idle_mb_seconds: idle.mb_seconds,
        }
    }

    /// What each code tier (zone cache, object storage) has served this node.
    pub fn code_fetches(&self) -> code_cache::TierStats {
        self.cache.stats()
    }

    /// Digests of the packages unpacked on this node.
    pub fn cached_code(&self) -> Vec<String> {
        self.cache.digests()
    }
}
