//! Keep-alive and pre-warm policies, and the trace simulator that scores them.
//!
//! The `hybrid` policy follows *Serverless in the Wild* (Shahrad et al., USENIX ATC
//! 2020): per function, a histogram of idle times (from the end of one execution to
//! the next arrival, 1-minute bins up to 4 hours). When the histogram is informative,
//! an instance that goes idle is unloaded, re-loaded just before the head of the
//! distribution (its 5th percentile, less a margin: the pre-warm window) and kept
//! until its tail (the 99th percentile, plus a margin: the keep-alive window). When it
//! is not — too few idle times, or too many beyond 4 hours — it falls back to the
//! fixed 10-minute keep-alive.
//!
//! [`simulate`] replays per-minute invocation counts (the Azure Functions 2019 trace
//! format): invocations are spread evenly within each minute, each runs for the
//! function's average duration, and one instance serves one invocation at a time.

use std::collections::BTreeMap;

/// Width of an idle-time histogram bin.
const BIN_MS: i64 = 10_000;
/// Idle-time histogram bins: up to 4 hours.
const BINS: usize = (4 * 3_600_000 / BIN_MS) as usize;
/// Idle times needed before the histogram is trusted.
const MIN_SAMPLES: u32 = 5;
/// Beyond this share of idle times out of the histogram's range, it is not trusted.
const MAX_OUT_OF_BOUNDS: f64 = 0.05;
/// The fallback (and the `fixed:10m` baseline) keep-alive.
pub const DEFAULT_KEEP_ALIVE_MS: i64 = 10 * 60 * 1000;

/// What to do with an instance that just went idle: unload it now and load it again
/// `prewarm_ms` later (0: keep it loaded), and unload it `keep_alive_ms` after it went
/// idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// When to (re)load it, after it went idle.
    pub prewarm_ms: i64,
    /// When to unload it, after it went idle.
    pub keep_alive_ms: i64,
}

/// A keep-alive policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// Unload at once.
    None,
    /// Keep loaded this long after each execution.
    Fixed(i64),
    /// The idle-time histogram policy.
    Hybrid,
}

impl std::str::FromStr for Policy {
    type Err = String;

    /// `none`, `fixed:10m` (or `fixed:90s`, `fixed:600000ms`), `hybrid`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Policy::None),
            "hybrid" => Ok(Policy::Hybrid),
            _ => {
                let d = s
                    .strip_prefix("fixed:")
                    .ok_or_else(|| format!("policy '{s}': use none, fixed:10m or hybrid"))?;
                let (n, unit) =
                    d.split_at(d.find(|c: char| !c.is_ascii_digit()).unwrap_or(d.len()));
                let n: i64 = n
                    .parse()
                    .map_err(|_| format!("policy '{s}': bad duration"))?;
                let ms = match unit {
                    "ms" => n,
                    "s" => n * 1000,
                    "m" | "" => n * 60_000,
                    "h" => n * 3_600_000,
                    _ => return Err(format!("policy '{s}': the unit is ms, s, m or h")),
                };
                Ok(Policy::Fixed(ms))
            }
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Policy::None => write!(f, "none"),
            Policy::Hybrid => write!(f, "hybrid"),
            Policy::Fixed(ms) if ms % 60_000 == 0 => write!(f, "fixed:{}m", ms / 60_000),
            Policy::Fixed(ms) => write!(f, "fixed:{ms}ms"),
        }
    }
}

/// One function's idle-time history.
#[derive(Debug, Clone)]
pub struct Predictor {
    bins: Vec<u32>,
    out_of_bounds: u32,
    samples: u32,
}

impl Default for Predictor {
    fn default() -> Self {
        Predictor {
            bins: vec![0; BINS],
            out_of_bounds: 0,
            samples: 0,
        }
    }
}

impl Predictor {
    /// Records an idle time (ms from the end of an execution to the next arrival).
    pub fn observe(&mut self, idle_ms: i64) {
        let bin = (idle_ms.max(0) / BIN_MS) as usize;
        match self.bins.get_mut(bin) {
            Some(b) => *b += 1,
            None => self.out_of_bounds += 1,
        }
        self.samples += 1;
    }

    /// The bin (minute) at percentile `p` of the in-range idle times.
    fn percentile_bin(&self, p: f64) -> usize {
        let total: u32 = self.bins.iter().sum();
        let want = (total as f64 * p).ceil().max(1.0) as u32;
        let mut seen = 0;
        for (i, n) in self.bins.iter().enumerate() {
            seen += n;
            if seen >= want {
                return i;
            }
        }
        BINS - 1
    }

    /// The window under `policy` for an instance that just went idle.
    pub fn window(&self, policy: Policy) -> Window {
        match policy {
            Policy::None => Window {
                prewarm_ms: 0,
                keep_alive_ms: 0,
            },
            Policy::Fixed(ms) => Window {
                prewarm_ms: 0,
                keep_alive_ms: ms,
            },
            Policy::Hybrid => {
                let oob = self.out_of_bounds as f64 / self.samples.max(1) as f64;
                if self.samples < MIN_SAMPLES || oob > MAX_OUT_OF_BOUNDS {
                    return Window {
                        prewarm_ms: 0,
                        keep_alive_ms: DEFAULT_KEEP_ALIVE_MS,
                    };
                }
                let (head, tail) = (self.percentile_bin(0.05), self.percentile_bin(0.99));
                // Load 15 % before the head's bin starts; keep until 15 % past the
                // end of the tail's bin.
                let prewarm_ms = (head as f64 * BIN_MS as f64 * 0.85) as i64;
                let keep_alive_ms = (((tail + 1) as f64) * BIN_MS as f64 * 1.15) as i64;
                Window {
                    prewarm_ms,
                    keep_alive_ms: keep_alive_ms.max(prewarm_ms + BIN_MS),
                }
            }
        }
    }
}

/// One function of a trace.
#[derive(Debug, Clone)]
pub struct TraceFunction {
    /// Its id (the trace's hash).
    pub id: String,
    /// Invocations per minute.
    pub per_minute: Vec<u32>,
    /// Average execution time, ms.
    pub duration_ms: i64,
    /// Memory, MB.
    pub memory_mb: f64,
}

/// What a policy did to one function.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Outcome {
    /// Invocations.
    pub invocations: u64,
    /// Those that found no loaded, free instance.
    pub cold_starts: u64,
    /// Time instances were loaded and not executing, seconds.
    pub idle_instance_seconds: f64,
    /// The same weighted by memory, MB·s.
    pub idle_mb_seconds: f64,
}

/// One instance in the simulation.
struct Sim {
    busy_until: i64,
    loaded_from: i64,
    loaded_until: i64,
}

impl Sim {
    /// Idle time up to `t` (or to its unloading, whichever is first).
    fn idle_until(&self, t: i64) -> i64 {
        (t.min(self.loaded_until) - self.busy_until.max(self.loaded_from)).max(0)
    }
}

/// Replays one function under `policy` (time in ms from the trace's start).
pub fn simulate(f: &TraceFunction, policy: Policy) -> Outcome {
    let mut out = Outcome::default();
    let mut pred = Predictor::default();
    let mut pool: Vec<Sim> = Vec::new();
    let mut last_end: Option<i64> = None;
    let mut idle_ms: i64 = 0;
    let d = f.duration_ms.max(1);
    for (minute, &n) in f.per_minute.iter().enumerate() {
        for j in 0..n as i64 {
            let t = minute as i64 * 60_000 + (j * 60_000 + 30_000) / n as i64;
            out.invocations += 1;
            // The idle time this arrival ends: since the most recent end of an
            // execution that is over (concurrency is not idleness).
            if let Some(end) = pool.iter().map(|i| i.busy_until).filter(|&e| e <= t).max() {
                pred.observe(t - end);
            } else if pool.is_empty()
                && let Some(end) = last_end
                && t >= end
            {
                pred.observe(t - end);
            }
            // Instances unloaded by now leave; their idle time is counted.
            pool.retain(|i| {
                let keep = i.loaded_until >= t || i.busy_until > t;
                if !keep {
                    idle_ms += i.idle_until(i.loaded_until);
                }
                keep
            });
            let free = pool
                .iter()
                .enumerate()
                .filter(|(_, i)| i.busy_until <= t && i.loaded_from <= t && t <= i.loaded_until)
                // The one idle the shortest: the others may be unloaded sooner.
                .max_by_key(|(_, i)| i.busy_until)
                .map(|(k, _)| k);
            let k = match free {
                Some(k) => {
                    idle_ms += pool[k].idle_until(t);
                    k
                }
                None => {
                    out.cold_starts += 1;
                    pool.push(Sim {
                        busy_until: t,
                        loaded_from: t,
                        loaded_until: t,
                    });
                    pool.len() - 1
                }
            };
            let end = t + d;
            let w = pred.window(policy);
            let inst = &mut pool[k];
            inst.busy_until = end;
            inst.loaded_from = end + w.prewarm_ms;
            inst.loaded_until = end + w.keep_alive_ms;
            last_end = Some(last_end.map_or(end, |e| e.max(end)));
        }
    }
    let horizon = f.per_minute.len() as i64 * 60_000;
    for i in &pool {
        idle_ms += i.idle_until(horizon.max(i.busy_until));
    }
    out.idle_instance_seconds = idle_ms as f64 / 1000.0;
    out.idle_mb_seconds = out.idle_instance_seconds * f.memory_mb;
    out
}

/// Reads a trace directory in the Azure Functions 2019 format: `invocations.csv`
/// (HashOwner, HashApp, HashFunction, Trigger, then one column per minute),
/// `durations.csv` (HashFunction's `Average`, ms) and `memory.csv`
/// (`AverageAllocatedMb`, by HashFunction, else by HashApp). Functions are sorted by id.
pub fn read_trace(dir: &std::path::Path) -> anyhow::Result<Vec<TraceFunction>> {
    use anyhow::Context as _;
    let read = |name: &str| -> anyhow::Result<Vec<Vec<String>>> {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split(',').map(|c| c.trim().to_string()).collect())
            .collect())
    };
    let col = |header: &[String], name: &str| header.iter().position(|h| h == name);
    let inv = read("invocations.csv")?;
    let header = inv.first().context("invocations.csv is empty")?;
    let (fcol, acol) = (
        col(header, "HashFunction").context("invocations.csv has no HashFunction column")?,
        col(header, "HashApp"),
    );
    let first_minute = col(header, "Trigger").map_or(3, |c| c + 1);
    let mut durations = BTreeMap::new();
    if let Ok(rows) = read("durations.csv")
        && let Some(h) = rows.first()
        && let (Some(f), Some(a)) = (col(h, "HashFunction"), col(h, "Average"))
    {
        for r in &rows[1..] {
            if let (Some(id), Some(v)) = (r.get(f), r.get(a).and_then(|v| v.parse::<f64>().ok())) {
                durations.insert(id.clone(), v);
            }
        }
    }
    let mut memory = BTreeMap::new();
    if let Ok(rows) = read("memory.csv")
        && let Some(h) = rows.first()
        && let Some(m) = col(h, "AverageAllocatedMb")
    {
        for key in ["HashFunction", "HashApp"] {
            if let Some(k) = col(h, key) {
                for r in &rows[1..] {
                    if let (Some(id), Some(v)) =
                        (r.get(k), r.get(m).and_then(|v| v.parse::<f64>().ok()))
                    {
                        memory.entry(id.clone()).or_insert(v);
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    for r in &inv[1..] {
        let Some(id) = r.get(fcol) else { continue };
        let per_minute = r[first_minute.min(r.len())..]
            .iter()
            .map(|c| c.parse::<f64>().map_or(0, |v| v.max(0.0) as u32))
            .collect();
        let app = acol.and_then(|c| r.get(c));
        out.push(TraceFunction {
            id: id.clone(),
            per_minute,
            duration_ms: durations
                .get(id)
                .map_or(1000, |v| v.round().max(1.0) as i64),
            memory_mb: memory
                .get(id)
                .or_else(|| app.and_then(|a| memory.get(a)))
                .copied()
                .unwrap_or(128.0),
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn periodic(every_min: usize, minutes: usize) -> TraceFunction {
        TraceFunction {
            id: "timer".into(),
            per_minute: (0..minutes)
                .map(|m| u32::from(m % every_min == 0))
                .collect(),
            duration_ms: 200,
            memory_mb: 128.0,
        }
    }

    #[test]
    fn a_periodic_timer_is_prewarmed_with_far_less_idle_time() {
        let f = periodic(5, 480);
        let fixed = simulate(&f, Policy::Fixed(DEFAULT_KEEP_ALIVE_MS));
        let hybrid = simulate(&f, Policy::Hybrid);
        // Only the very first call is cold, under both.
        assert_eq!((fixed.cold_starts, hybrid.cold_starts), (1, 1));
        assert!(
            hybrid.idle_instance_seconds < 0.6 * fixed.idle_instance_seconds,
            "{hybrid:?} vs {fixed:?}"
        );
        // Keeping nothing makes every call cold.
        assert_eq!(
            simulate(&f, Policy::None).cold_starts,
            f.per_minute.iter().filter(|&&n| n > 0).count() as u64
        );
    }

    #[test]
    fn bursts_and_rare_calls_fall_back_to_the_default() {
        let mut p = Predictor::default();
        assert_eq!(
            p.window(Policy::Hybrid).keep_alive_ms,
            DEFAULT_KEEP_ALIVE_MS
        );
        for _ in 0..10 {
            p.observe(6 * 3_600_000);
        }
        assert_eq!(
            p.window(Policy::Hybrid).prewarm_ms,
            0,
            "beyond the histogram"
        );
        let mut busy = Predictor::default();
        for _ in 0..100 {
            busy.observe(500);
        }
        let w = busy.window(Policy::Hybrid);
        assert_eq!(w.prewarm_ms, 0);
        assert!(w.keep_alive_ms >= BIN_MS && w.keep_alive_ms < DEFAULT_KEEP_ALIVE_MS);
    }

    #[test]
    fn policies_parse() {
        assert_eq!("fixed:10m".parse::<Policy>(), Ok(Policy::Fixed(600_000)));
        assert_eq!("fixed:90s".parse::<Policy>(), Ok(Policy::Fixed(90_000)));
        assert_eq!("hybrid".parse::<Policy>(), Ok(Policy::Hybrid));
        assert!("sometimes".parse::<Policy>().is_err());
        assert_eq!(Policy::Fixed(600_000).to_string(), "fixed:10m");
    }

    #[test]
    fn concurrent_calls_need_more_instances() {
        let f = TraceFunction {
            id: "burst".into(),
            per_minute: vec![120, 120],
            duration_ms: 2_000,
            memory_mb: 256.0,
        };
        let o = simulate(&f, Policy::Fixed(DEFAULT_KEEP_ALIVE_MS));
        // 2 calls a second, 2 s each: about 4 instances, cold once each.
        assert!((3..=5).contains(&o.cold_starts), "{o:?}");
        assert_eq!(o.invocations, 240);
    }
}
