//! Concurrency autoscaling after Knative's pod autoscaler (KPA).
//!
//! The observed concurrency (calls in flight, sampled every tick) is averaged over
//! two windows: a stable window (60 s) and a panic window (6 s, a tenth of it). The
//! stable average decides the instance count, so a function scales down slowly and
//! to zero only after a whole quiet stable window. When the panic average asks for
//! at least twice the instances that are ready, the autoscaler panics: it scales up
//! at once to the panic average and does not scale down until a stable window has
//! passed without another panic. Scale-down is also limited to halving per decision.

use std::collections::VecDeque;

/// Autoscaler settings (Knative's defaults).
#[derive(Debug, Clone, Copy)]
pub struct AutoscalerConfig {
    /// Calls one instance serves at once at the target (1: one call at a time).
    pub target: f64,
    /// The stable window, ms.
    pub stable_window_ms: i64,
    /// The panic window, ms.
    pub panic_window_ms: i64,
    /// Panic when the panic window wants this many times the ready instances.
    pub panic_threshold: f64,
    /// Scale down by at most this factor per decision.
    pub max_scale_down_rate: f64,
    /// Scale up by at most this factor per decision (of the ready instances, at least 1).
    pub max_scale_up_rate: f64,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        AutoscalerConfig {
            target: 1.0,
            stable_window_ms: 60_000,
            panic_window_ms: 6_000,
            panic_threshold: 2.0,
            max_scale_down_rate: 2.0,
            max_scale_up_rate: 1000.0,
        }
    }
}

/// A decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    /// Instances wanted.
    pub desired: u32,
    /// Whether the autoscaler is in panic mode.
    pub panic: bool,
}

/// One function's autoscaler.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    cfg: AutoscalerConfig,
    /// (time ms, concurrency) samples within the stable window, oldest first.
    samples: VecDeque<(i64, f64)>,
    /// When panic mode was last (re)entered.
    panic_since: Option<i64>,
    /// The most instances wanted during this panic.
    max_panic: u32,
}

impl Autoscaler {
    /// An autoscaler with `cfg`.
    pub fn new(cfg: AutoscalerConfig) -> Self {
        Autoscaler {
            cfg,
            samples: VecDeque::new(),
            panic_since: None,
            max_panic: 0,
        }
    }

    /// Records the concurrency observed at `t` (ms): samples come in time order.
    pub fn record(&mut self, t: i64, concurrency: f64) {
        self.samples.push_back((t, concurrency.max(0.0)));
        while self
            .samples
            .front()
            .is_some_and(|&(s, _)| s <= t - self.cfg.stable_window_ms)
        {
            self.samples.pop_front();
        }
    }

    /// Average concurrency over the window ending at `t`; a window with no sample
    /// averages 0.
    fn average(&self, t: i64, window: i64) -> f64 {
        let (sum, n) = self
            .samples
            .iter()
            .rev()
            .take_while(|&&(s, _)| s > t - window)
            .fold((0.0, 0u32), |(sum, n), &(_, c)| (sum + c, n + 1));
        if n == 0 { 0.0 } else { sum / n as f64 }
    }

    /// Whether it is in panic mode.
    pub fn panicking(&self) -> bool {
        self.panic_since.is_some()
    }

    /// The instances wanted at `t`, with `ready` instances running.
    pub fn decide(&mut self, t: i64, ready: u32) -> Scale {
        let cfg = self.cfg;
        let stable = self.average(t, cfg.stable_window_ms) / cfg.target;
        let panic = self.average(t, cfg.panic_window_ms) / cfg.target;
        let (want_stable, want_panic) = (stable.ceil() as u32, panic.ceil() as u32);
        if panic / ready.max(1) as f64 >= cfg.panic_threshold {
            // Entered, or extended: panic lasts a stable window after the last burst.
            self.panic_since = Some(t);
        } else if self
            .panic_since
            .is_some_and(|since| t - since >= cfg.stable_window_ms)
        {
            self.panic_since = None;
            self.max_panic = 0;
        }
        let mut desired = if self.panicking() {
            // Never scale down while panicking.
            self.max_panic = self.max_panic.max(want_panic).max(ready);
            self.max_panic
        } else {
            want_stable
        };
        if ready > 0 {
            let up = (ready as f64 * cfg.max_scale_up_rate).ceil() as u32;
            let down = (ready as f64 / cfg.max_scale_down_rate).floor() as u32;
            desired = desired.clamp(down, up.max(down));
        }
        Scale {
            desired,
            panic: self.panicking(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds a concurrency per second for `secs` seconds from `start`, deciding each
    /// second with the instances the previous decision asked for, as a controller
    /// would. Returns the decisions.
    fn run(a: &mut Autoscaler, start: i64, secs: i64, c: f64, ready: &mut u32) -> Vec<Scale> {
        (0..secs)
            .map(|s| {
                let t = start + s * 1000;
                a.record(t, c);
                let d = a.decide(t, *ready);
                *ready = d.desired;
                d
            })
            .collect()
    }

    #[test]
    fn bursts_trigger_panic_mode() {
        let mut a = Autoscaler::new(AutoscalerConfig::default());
        let mut ready = 0;
        // A steady 2 calls at once for two minutes: 2 instances, no panic.
        let steady = run(&mut a, 0, 120, 2.0, &mut ready);
        assert!(steady.iter().all(|d| !d.panic || d.desired <= 2));
        assert_eq!(
            *steady.last().unwrap(),
            Scale {
                desired: 2,
                panic: false
            }
        );
        // A burst to 20: panic within a couple of seconds, scaled to the burst at
        // once (the stable window alone would take most of a minute).
        let burst = run(&mut a, 120_000, 10, 20.0, &mut ready);
        let first_panic = burst.iter().position(|d| d.panic).expect("no panic");
        assert!(first_panic <= 1, "{burst:?}");
        assert!(burst[first_panic..].iter().all(|d| d.panic));
        assert!(burst.last().unwrap().desired >= 20, "{burst:?}");
        // The burst ends: panic holds the instances for a stable window after the
        // load last crossed the threshold (early in the burst, while few instances
        // were ready)...
        let calm = run(&mut a, 130_000, 120, 2.0, &mut ready);
        let out = calm
            .iter()
            .position(|d| !d.panic)
            .expect("panic never ended");
        let ends_at = 130_000 + out as i64 * 1000;
        let entered_at = 120_000 + first_panic as i64 * 1000;
        assert!(ends_at - entered_at >= 60_000, "{out}");
        assert!(calm[..out].iter().all(|d| d.desired >= 20), "{calm:?}");
        // ...then scales down slowly (at most halving per decision) to the load.
        for w in calm[out..].windows(2) {
            assert!(w[1].desired * 2 >= w[0].desired, "{w:?}");
        }
        assert_eq!(calm.last().unwrap().desired, 2);
    }

    #[test]
    fn scales_to_zero_after_a_quiet_stable_window() {
        let mut a = Autoscaler::new(AutoscalerConfig::default());
        let mut ready = 0;
        run(&mut a, 0, 30, 1.0, &mut ready);
        assert_eq!(ready, 1);
        let quiet = run(&mut a, 30_000, 90, 0.0, &mut ready);
        // Still 1 while the stable window holds any traffic, then 0.
        let zero = quiet.iter().position(|d| d.desired == 0).unwrap();
        assert!((58..=60).contains(&zero), "{zero}");
        assert!(quiet[zero..].iter().all(|d| d.desired == 0));
        // From zero, the first call asks for an instance at once, and a sustained
        // burst reaches its size within seconds.
        let d = run(&mut a, 120_000, 6, 3.0, &mut ready);
        assert!(d[0].desired >= 1, "{d:?}");
        assert!(d.iter().any(|d| d.panic && d.desired >= 3), "{d:?}");
    }
}
