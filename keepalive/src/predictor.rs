//! Keep-alive and pre-warm policies, and the trace simulator that scores them.
//!
//! The `hybrid` policy starts from *Serverless in the Wild* (Shahrad et al., USENIX
//! ATC 2020): per function, a histogram of idle times (10 s bins up to 4 hours) that
//! decides when an instance that went idle is unloaded and when it is loaded again
//! just before the next call is likely (a pre-warm). Where the paper keeps one
//! window from the histogram's 5th to its 99th percentile, we:
//! - keep one histogram per concurrency level ([`Pool`]): the `k`-th instance of a
//!   function is needed whenever `k` calls run at once, and the extra instances of a
//!   burst wait for the next burst, not for the next call;
//! - choose the loaded bins by their hazard against the worth of a cold start
//!   ([`Predictor::window`]), so a function idle for either a few seconds or half an
//!   hour is unloaded in between and pre-warmed for the second mode, and a periodic
//!   timer is loaded only around its period;
//! - load the instance on past the histogram's tail for as long as the chance of
//!   an idle time longer than any seen so far is worth (the rule of succession);
//! - trust the histogram after two idle times when they are alike (a period), and
//!   after one when a timer calls;
//! - find a schedule in the times of the calls themselves ([`phase`]), per
//!   level: a cron timer's next call (or its fan-out's `k`-th) is pre-warmed even
//!   when other calls in between break its idle times;
//! - forecast the next idle time when too many fall beyond the histogram's range,
//!   by exponential smoothing as the paper does with ARIMA, and pre-warm around it
//!   when the forecast's error is small;
//! - fall back to the fixed 10-minute keep-alive when the histogram is uninformative.
//!
//! [`simulate`] replays per-minute invocation counts (the Azure Functions 2019 trace
//! format): invocations are spread evenly within each minute, each runs for the
//! function's average duration, and one instance serves one invocation at a time.

use std::collections::BTreeMap;

mod phase;
use phase::Phase;

/// Width of an idle-time histogram bin (the default).
pub const BIN_MS: i64 = 10_000;
/// The histogram's range: 4 hours.
const RANGE_MS: i64 = 4 * 3_600_000;
/// Idle times needed before the histogram is trusted...
const MIN_SAMPLES: u32 = 5;
/// ...when they are alike (a period, whatever calls the function)...
const PERIODIC_MIN_SAMPLES: u32 = 2;
/// ...and when a timer calls the function: its first idle time is its schedule's
/// period, which says where the next call falls. (An irregular schedule is
/// learnt as any other function's idle times are.)
const TIMER_MIN_SAMPLES: u32 = 1;
/// Beyond this share of idle times out of the histogram's range, it is not trusted.
const MAX_OUT_OF_BOUNDS: f64 = 0.05;
/// Holes in a window shorter than this many bins are filled...
const HOLE_BINS: usize = 12;
/// ...or shorter than this share (%) of their distance from the window's start.
const HOLE_SHARE: usize = 12;
/// Idle times within this share (%) of the longest, or two bins, are alike: a
/// period, trusted after [`PERIODIC_MIN_SAMPLES`] of them.
const ALIKE_SHARE: i64 = 10;
/// The tail past the last loaded bin is `TAIL_WORTH × cost / (samples + 1)`: the
/// chance that the next idle time is longer than all `n` seen is `1 / (n + 1)`.
const TAIL_WORTH: i64 = 8;
/// Smoothing of the idle-time forecast (the weight of the newest idle time), and
/// of its absolute error.
const FORECAST_ALPHA: f64 = 0.5;
/// The forecast's window is `forecast ± 2 × error`, used while that margin is at
/// most this share of the forecast (the paper's 15 %).
const FORECAST_MARGIN: f64 = 0.15;
/// A schedule ([`Phase`]) is looked for in the calls that come after at least this
/// many bins of idle time, with periods at least that long...
const PHASE_BINS: i64 = 6;
/// ...and calls at most this many bins off it. (Wider, a jittery timer's schedule
/// loads its instance longer than its histogram already does, for no warm start.)
const PHASE_TOLERANCE_BINS: i64 = 3;
/// Earlier periods that must have had their scheduled call before a schedule is
/// trusted; a timer's, fewer.
const PHASE_HITS: usize = 3;
const TIMER_PHASE_HITS: usize = 2;
/// The fallback (and the `fixed:10m` baseline) keep-alive.
pub const DEFAULT_KEEP_ALIVE_MS: i64 = 10 * 60 * 1000;

/// When an instance that just went idle is loaded: a list of intervals, in ms after
/// it went idle, sorted and disjoint. Outside them it is unloaded; after the last it
/// is gone. An interval that starts after 0 is a pre-warm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// `[from, to)` in ms after the instance went idle.
    pub loaded: Vec<(i64, i64)>,
}

impl Window {
    /// Loaded from the start for `ms`.
    pub fn keep(ms: i64) -> Window {
        Window {
            loaded: if ms > 0 { vec![(0, ms)] } else { vec![] },
        }
    }

    /// When the instance is unloaded for good, in ms after it went idle.
    pub fn keep_alive_ms(&self) -> i64 {
        self.loaded.last().map_or(0, |&(_, to)| to)
    }

    /// When it is first loaded again after it went idle (0: it stays loaded); `None`
    /// if it is never loaded again.
    pub fn prewarm_ms(&self) -> Option<i64> {
        self.loaded.first().map(|&(from, _)| from)
    }

    /// Whether it is loaded `dt` ms after it went idle.
    pub fn loaded_at(&self, dt: i64) -> bool {
        self.loaded.iter().any(|&(a, b)| a <= dt && dt <= b)
    }

    /// Loaded time within `[0, dt]`, ms.
    pub fn loaded_within(&self, dt: i64) -> i64 {
        self.loaded
            .iter()
            .map(|&(a, b)| (b.min(dt) - a).max(0))
            .sum()
    }

    /// The next moment at or after `dt` at which it is loaded, if any.
    pub fn next_loaded(&self, dt: i64) -> Option<i64> {
        self.loaded
            .iter()
            .find(|&&(_, b)| b >= dt)
            .map(|&(a, _)| a.max(dt))
    }
}

/// A keep-alive policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// Unload at once.
    None,
    /// Keep loaded this long after each execution.
    Fixed(i64),
    /// The idle-time histogram policy; the number is the idle time (ms) one cold start
    /// is worth: a histogram bin is kept loaded when the cold starts it saves are
    /// worth more than the idle time it costs.
    Hybrid(i64),
}

/// The default worth of one cold start in idle instance time (5 minutes: chosen on
/// the Azure sample, see docs/benchmarks.md).
pub const DEFAULT_COLD_START_COST_MS: i64 = 5 * 60 * 1000;

fn parse_duration(d: &str, what: &str) -> Result<i64, String> {
    let (n, unit) = d.split_at(d.find(|c: char| !c.is_ascii_digit()).unwrap_or(d.len()));
    let n: i64 = n.parse().map_err(|_| format!("{what}: bad duration"))?;
    Ok(match unit {
        "ms" => n,
        "s" => n * 1000,
        "m" | "" => n * 60_000,
        "h" => n * 3_600_000,
        _ => return Err(format!("{what}: the unit is ms, s, m or h")),
    })
}

fn fmt_duration(ms: i64) -> String {
    if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

impl std::str::FromStr for Policy {
    type Err = String;

    /// `none`, `fixed:10m` (or `fixed:90s`, `fixed:600000ms`), `hybrid` (or
    /// `hybrid:5m`: the worth of a cold start).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Policy::None),
            "hybrid" => Ok(Policy::Hybrid(DEFAULT_COLD_START_COST_MS)),
            _ => {
                if let Some(d) = s.strip_prefix("fixed:") {
                    Ok(Policy::Fixed(parse_duration(d, s)?))
                } else if let Some(d) = s.strip_prefix("hybrid:") {
                    Ok(Policy::Hybrid(parse_duration(d, s)?.max(1)))
                } else {
                    Err(format!("policy '{s}': use none, fixed:10m or hybrid"))
                }
            }
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Policy::None => write!(f, "none"),
            Policy::Hybrid(ms) if *ms == DEFAULT_COLD_START_COST_MS => write!(f, "hybrid"),
            Policy::Hybrid(ms) => write!(f, "hybrid:{}", fmt_duration(*ms)),
            Policy::Fixed(ms) => write!(f, "fixed:{}", fmt_duration(*ms)),
        }
    }
}

/// One function's idle-time history.
#[derive(Debug, Clone)]
pub struct Predictor {
    /// Bin width, ms.
    bin_ms: i64,
    /// The keep-alive while the histogram is not trusted.
    fallback_ms: i64,
    bins: Vec<u32>,
    out_of_bounds: u32,
    samples: u32,
    /// Idle times needed before the histogram is trusted.
    min_samples: u32,
    /// The last window computed, and the sample count it was computed at.
    cached: Option<(u32, i64, Window)>,
    /// The shortest and longest idle times seen.
    shortest: i64,
    longest: i64,
    /// Exponentially smoothed idle time and absolute error of that forecast, ms.
    forecast: Option<(f64, f64)>,
    /// When the level was entered after an idle time: a schedule, if the calls
    /// keep one.
    phase: Phase,
}

impl Default for Predictor {
    fn default() -> Self {
        Predictor::with(BIN_MS, DEFAULT_KEEP_ALIVE_MS)
    }
}

impl Predictor {
    /// A histogram of `bin_ms` bins (at least 100 ms) over 4 hours, with a keep-alive
    /// of `fallback_ms` while it is not trusted.
    pub fn with(bin_ms: i64, fallback_ms: i64) -> Self {
        let bin_ms = bin_ms.max(100);
        Predictor {
            bin_ms,
            fallback_ms,
            bins: vec![0; (RANGE_MS / bin_ms) as usize],
            out_of_bounds: 0,
            samples: 0,
            min_samples: MIN_SAMPLES,
            cached: None,
            shortest: i64::MAX,
            longest: 0,
            forecast: None,
            phase: Phase::default(),
        }
    }

    /// Whether the calls come from a timer: then fewer idle times are enough.
    pub fn set_periodic(&mut self, periodic: bool) {
        self.min_samples = if periodic {
            TIMER_MIN_SAMPLES
        } else {
            MIN_SAMPLES
        };
    }

    /// Records an idle time (ms from the end of an execution to the next arrival).
    pub fn observe(&mut self, idle_ms: i64) {
        let bin = (idle_ms.max(0) / self.bin_ms) as usize;
        match self.bins.get_mut(bin) {
            Some(b) => *b += 1,
            None => self.out_of_bounds += 1,
        }
        self.samples += 1;
        self.shortest = self.shortest.min(idle_ms);
        self.longest = self.longest.max(idle_ms);
        let x = idle_ms.max(0) as f64;
        self.forecast = Some(match self.forecast {
            None => (x, x),
            Some((f, _)) if self.samples == 2 => (f + FORECAST_ALPHA * (x - f), (x - f).abs()),
            Some((f, e)) => (
                f + FORECAST_ALPHA * (x - f),
                e + FORECAST_ALPHA * ((x - f).abs() - e),
            ),
        });
    }

    /// Whether the idle times seen so far are alike: a period.
    fn alike(&self) -> bool {
        self.samples >= PERIODIC_MIN_SAMPLES
            && self.longest - self.shortest
                <= (2 * self.bin_ms).max(self.longest * ALIKE_SHARE / 100)
    }

    /// The window around the forecast idle time, if its error is small enough.
    fn forecast_window(&self) -> Option<Window> {
        let (f, e) = self.forecast?;
        let margin = (2.0 * e).max(2.0 * self.bin_ms as f64);
        (self.samples >= 3 && margin <= FORECAST_MARGIN * f).then(|| Window {
            loaded: vec![(
                (f - margin) as i64 - self.bin_ms,
                (f + margin) as i64 + self.bin_ms,
            )],
        })
    }

    /// The window under `policy` for an instance that just went idle.
    ///
    /// `hybrid`: each bin of the histogram is a choice. Keeping the instance loaded
    /// through bin `b` costs, per idle period, about the share of idle times that
    /// reach `b` times the bin's width; it saves the share that end in `b`, each a
    /// cold start worth `cost` of idle time. The bin is kept when
    /// `count(b) × cost ≥ reaching(b) × width` — a hazard test, so a timer's one
    /// busy bin is kept and the quiet bins before it are not (the instance is
    /// unloaded, then pre-warmed). Then, against over-fitting a sparse histogram,
    /// holes between kept bins shorter than [`HOLE_BINS`] bins or
    /// [`HOLE_SHARE`] % of their position are filled, and each interval is loaded a
    /// bin early and kept a bin late. A histogram with fewer than
    /// [`MIN_SAMPLES`] idle times, or more than 5 % beyond its range, is not
    /// trusted: the fallback keep-alive (10 minutes by default) applies.
    pub fn window(&mut self, policy: Policy) -> Window {
        let cost = match policy {
            Policy::None => return Window::keep(0),
            Policy::Fixed(ms) => return Window::keep(ms),
            Policy::Hybrid(cost) => cost,
        };
        let oob = self.out_of_bounds as f64 / self.samples.max(1) as f64;
        if oob > MAX_OUT_OF_BOUNDS {
            return self
                .forecast_window()
                .unwrap_or_else(|| Window::keep(self.fallback_ms));
        }
        if self.samples < self.min_samples && !self.alike() {
            return Window::keep(self.fallback_ms);
        }
        // Recomputed as the histogram grows by 1/64 (every sample while it is small).
        if let Some((at, c, w)) = &self.cached
            && *c == cost
            && (self.samples == *at || (self.samples > 256 && self.samples - at < at / 64))
        {
            return w.clone();
        }
        let (bins, bin_ms) = (self.bins.len(), self.bin_ms);
        let mut keep = vec![false; bins];
        let mut reaching = self.samples as i64;
        for (b, &n) in self.bins.iter().enumerate() {
            if n > 0 && n as i64 * cost >= reaching * bin_ms {
                keep[b..(b + 2).min(bins)].fill(true);
            }
            reaching -= n as i64;
        }
        let mut last: Option<usize> = None;
        for b in 0..bins {
            if keep[b] {
                if let Some(l) = last
                    && b - l - 1 <= HOLE_BINS.max(l * HOLE_SHARE / 100)
                {
                    keep[l..b].fill(true);
                }
                last = Some(b);
            }
        }
        // Past the last kept bin, for as long as an idle time longer than any seen
        // is worth (at most the fallback keep-alive).
        if let Some(last) = keep.iter().rposition(|k| *k) {
            let tail_ms = (TAIL_WORTH * cost / (self.samples as i64 + 1)).min(self.fallback_ms);
            let tail = (tail_ms + bin_ms - 1) / bin_ms;
            keep[last..(last + 1 + tail as usize).min(bins)].fill(true);
        }
        let mut loaded: Vec<(i64, i64)> = Vec::new();
        for (b, _) in keep.iter().enumerate().filter(|(_, k)| **k) {
            // Loaded a bin early (the pre-warm's lead) and kept to the bin's end.
            let from = ((b as i64 - 1) * bin_ms).max(0);
            let to = (b as i64 + 1) * bin_ms;
            match loaded.last_mut() {
                Some(last) if last.1 >= from => last.1 = to,
                _ => loaded.push((from, to)),
            }
        }
        let w = Window { loaded };
        self.cached = Some((self.samples, cost, w.clone()));
        w
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
    /// What calls it (`timer`, `http`, `queue`…), if the trace says.
    pub trigger: String,
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

/// Concurrency levels with a histogram of their own; higher levels share the last.
pub const MAX_LEVELS: usize = 32;

/// One concurrency level's instance, idle since `left_at`, loaded per `window`.
#[derive(Debug, Clone)]
struct Level {
    left_at: i64,
    window: Window,
}

/// What [`Pool::enter`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entered {
    /// The call's concurrency level (1-based).
    pub level: usize,
    /// Whether the level's instance was loaded (a warm start).
    pub warm: bool,
    /// Idle time (ms) of that instance, loaded and unused, that the call ended.
    pub idle_ms: i64,
}

/// One function's instances under a policy, as concurrency levels: the `k`-th
/// instance is needed whenever `k` calls run at once. The policy decides, when level
/// `k` goes idle (concurrency falls below `k`), when its instance is loaded until
/// it is needed again — from a histogram of that level's own idle times (the time
/// from concurrency falling below `k` to reaching `k` again). Level 1 is the
/// function's idle time; the higher levels learn how long a burst's extra instances
/// wait for the next burst.
///
/// The same code runs the simulator ([`simulate`]) and the node's live keep-alive.
#[derive(Debug, Clone)]
pub struct Pool {
    policy: Policy,
    bin_ms: i64,
    fallback_ms: i64,
    predictors: Vec<Predictor>,
    levels: Vec<Option<Level>>,
    running: usize,
    /// The calls come from a timer.
    periodic: bool,
}

impl Pool {
    /// An empty pool under `policy`.
    pub fn new(policy: Policy) -> Self {
        Pool::with(policy, BIN_MS, DEFAULT_KEEP_ALIVE_MS)
    }

    /// An empty pool under `policy` whose histograms have `bin_ms` bins and keep
    /// instances `fallback_ms` while they learn.
    pub fn with(policy: Policy, bin_ms: i64, fallback_ms: i64) -> Self {
        Pool {
            policy,
            bin_ms,
            fallback_ms,
            predictors: Vec::new(),
            levels: Vec::new(),
            running: 0,
            periodic: false,
        }
    }

    /// Whether the calls come from a timer (almost perfectly periodic): the
    /// histograms are then trusted after fewer idle times.
    pub fn set_periodic(&mut self, periodic: bool) {
        if self.periodic != periodic {
            self.periodic = periodic;
            for p in &mut self.predictors {
                p.set_periodic(periodic);
            }
        }
    }

    fn predictor(&mut self, level: usize) -> &mut Predictor {
        let i = level.clamp(1, MAX_LEVELS) - 1;
        while self.predictors.len() <= i {
            let mut p = Predictor::with(self.bin_ms, self.fallback_ms);
            p.set_periodic(self.periodic);
            self.predictors.push(p);
        }
        &mut self.predictors[i]
    }

    /// A call starts at `t` (ms).
    pub fn enter(&mut self, t: i64) -> Entered {
        self.running += 1;
        let level = self.running;
        if self.levels.len() < level {
            self.levels.resize(level, None);
        }
        let before = self.levels[level - 1].take();
        // A call that found its level idle long enough is a schedule's candidate
        // (only `hybrid` uses schedules).
        if matches!(self.policy, Policy::Hybrid(_))
            && before
                .as_ref()
                .is_none_or(|l| t - l.left_at >= PHASE_BINS * self.bin_ms)
        {
            let hits = if self.periodic {
                TIMER_PHASE_HITS
            } else {
                PHASE_HITS
            };
            let bin = self.bin_ms;
            self.predictor(level).phase.arrive(
                t,
                PHASE_TOLERANCE_BINS * bin,
                PHASE_BINS * bin,
                RANGE_MS,
                hits,
            );
        }
        match before {
            Some(l) => {
                let gap = (t - l.left_at).max(0);
                self.predictor(level).observe(gap);
                Entered {
                    level,
                    warm: l.window.loaded_at(gap),
                    idle_ms: l.window.loaded_within(gap),
                }
            }
            None => Entered {
                level,
                warm: false,
                idle_ms: 0,
            },
        }
    }

    /// A call ends at `t`: the top level goes idle.
    pub fn leave(&mut self, t: i64) {
        let level = self.running;
        if level == 0 {
            return;
        }
        self.running -= 1;
        let (policy, bin) = (self.policy, self.bin_ms);
        let p = self.predictor(level);
        let mut window = p.window(policy);
        if matches!(policy, Policy::Hybrid(_)) {
            // Loaded around each scheduled call the window misses.
            let due = p.phase.intervals(&window, t, bin, RANGE_MS);
            if !due.is_empty() {
                window.loaded = phase::union(&window.loaded, &due);
            }
        }
        self.levels[level - 1] = Some(Level { left_at: t, window });
    }

    /// Idle instances that should be loaded at `t`, by level.
    pub fn loaded_idle(&self, t: i64) -> Vec<usize> {
        self.levels
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.as_ref().map(|l| (i + 1, l)))
            .filter(|(_, l)| l.window.loaded_at(t - l.left_at))
            .map(|(k, _)| k)
            .collect()
    }

    /// Idle levels whose instance is due loaded at `t` by a pre-warm (an interval of
    /// its window that starts after it went idle), as opposed to kept loaded since.
    pub fn prewarms_due(&self, t: i64) -> usize {
        self.levels
            .iter()
            .flatten()
            .filter(|l| {
                let dt = t - l.left_at;
                l.window
                    .loaded
                    .iter()
                    .any(|&(a, b)| a > 0 && a <= dt && dt <= b)
            })
            .count()
    }

    /// The next moment after `t` at which an idle level's instance should be loaded
    /// while it is not now (a pre-warm), if any.
    pub fn next_prewarm(&self, t: i64) -> Option<i64> {
        self.levels
            .iter()
            .flatten()
            .filter(|l| !l.window.loaded_at(t - l.left_at))
            .filter_map(|l| l.window.next_loaded(t - l.left_at).map(|dt| l.left_at + dt))
            .min()
    }

    /// Idle time (ms) of every idle level from when it went idle to `t`.
    pub fn idle_until(&self, t: i64) -> i64 {
        self.levels
            .iter()
            .flatten()
            .map(|l| l.window.loaded_within(t - l.left_at))
            .sum()
    }
}

/// Replays one function under `policy` (time in ms from the trace's start).
pub fn simulate(f: &TraceFunction, policy: Policy) -> Outcome {
    use std::cmp::Reverse;
    let mut out = Outcome::default();
    let mut pool = Pool::new(policy);
    pool.set_periodic(f.trigger == "timer");
    let mut ends = std::collections::BinaryHeap::new();
    let mut idle_ms: i64 = 0;
    let d = f.duration_ms.max(1);
    for (minute, &n) in f.per_minute.iter().enumerate() {
        for j in 0..n as i64 {
            let t = minute as i64 * 60_000 + (j * 60_000 + 30_000) / n as i64;
            while let Some(&Reverse(e)) = ends.peek()
                && e <= t
            {
                ends.pop();
                pool.leave(e);
            }
            out.invocations += 1;
            let entered = pool.enter(t);
            idle_ms += entered.idle_ms;
            if !entered.warm {
                out.cold_starts += 1;
            }
            ends.push(Reverse(t + d));
        }
    }
    let horizon = f.per_minute.len() as i64 * 60_000;
    while let Some(Reverse(e)) = ends.pop() {
        pool.leave(e);
    }
    idle_ms += pool.idle_until(horizon);
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
    let tcol = col(header, "Trigger");
    let first_minute = tcol.map_or(3, |c| c + 1);
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
            trigger: tcol.and_then(|c| r.get(c)).cloned().unwrap_or_default(),
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

#[cfg(test)]
mod tests;
