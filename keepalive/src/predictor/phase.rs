//! Calls on a schedule: a timer's cron expression fires at `anchor + k × period`,
//! whatever else calls the function in between. The idle-time histogram sees such a
//! schedule only while nothing else calls: one extra call (a manual run, a queue
//! message) splits an idle time in two and the next scheduled call is cold. This
//! tracker looks at when the function was called, not at how long it was idle, and
//! says when the next scheduled calls are due.

use std::collections::VecDeque;

/// Arrivals remembered.
const HISTORY: usize = 24;
/// The latest arrivals tried as the schedule's anchor (an extra call may be the
/// latest).
const ANCHORS: usize = 3;
/// Of the periods the history spans, at least this share (%) must have a call on
/// the schedule.
const HIT_SHARE: usize = 75;
/// Scheduled calls a window prepares for ahead of an instance going idle.
const AHEAD: usize = 16;

/// A function's calls after an idle time, and the schedule they follow, if any.
#[derive(Debug, Clone, Default)]
pub(super) struct Phase {
    arrivals: VecDeque<i64>,
    /// `(period, anchor, jitter)`: calls are due at `anchor + k × period`, and
    /// those seen were off by at most `jitter`.
    schedule: Option<(i64, i64, i64)>,
}

impl Phase {
    /// A call at `t` that found the function idle. `tol` is how far off the schedule
    /// a call may be, `shortest` the shortest period worth a schedule, `hits` how
    /// many earlier periods must have had their call before it is trusted.
    pub(super) fn arrive(&mut self, t: i64, tol: i64, shortest: i64, longest: i64, hits: usize) {
        if self.arrivals.len() == HISTORY {
            self.arrivals.pop_front();
        }
        self.arrivals.push_back(t);
        self.schedule = self.detect(tol, shortest, longest, hits);
    }

    /// The shortest period, anchored at one of the latest arrivals, that at least
    /// `hits` and [`HIT_SHARE`] % of the periods the history spans had a call on.
    fn detect(
        &self,
        tol: i64,
        shortest: i64,
        longest: i64,
        hits: usize,
    ) -> Option<(i64, i64, i64)> {
        let first = *self.arrivals.front()?;
        let mut best: Option<(i64, i64, i64)> = None;
        for &anchor in self.arrivals.iter().rev().take(ANCHORS) {
            for &t in &self.arrivals {
                let period = anchor - t;
                if period < shortest.max(3 * tol)
                    || period > longest
                    || best.is_some_and(|(p, _, _)| p <= period)
                {
                    continue;
                }
                // Periods the history spans; more than the arrivals could ever hit
                // at the share asked (or a clock that went back) are no schedule.
                let spanned = (anchor - first + tol) / period;
                let most = (self.arrivals.len() as i64 - 1) * 100 / HIT_SHARE as i64;
                if spanned < hits.max(1) as i64 || spanned > most {
                    continue;
                }
                let spanned = spanned as usize;
                let mut on = vec![false; spanned];
                let mut jitter = 0;
                for &u in &self.arrivals {
                    let back = anchor - u;
                    let k = (back + tol) / period;
                    let off = (back - k * period).abs();
                    if k >= 1 && (k as usize) <= spanned && off <= tol {
                        on[k as usize - 1] = true;
                        jitter = jitter.max(off);
                    }
                }
                let n = on.iter().filter(|h| **h).count();
                if n >= hits && n * 100 >= spanned * HIT_SHARE {
                    best = Some((period, anchor, jitter));
                }
            }
        }
        best
    }

    /// The scheduled calls due after `idle_at` (when the instance went idle) that
    /// `window` does not already cover, as intervals in ms after it: from `margin`
    /// plus the jitter seen before each to as long after it.
    pub(super) fn intervals(
        &self,
        window: &super::Window,
        idle_at: i64,
        margin: i64,
        range: i64,
    ) -> Vec<(i64, i64)> {
        let Some((period, anchor, jitter)) = self.schedule else {
            return Vec::new();
        };
        let (lead, lag) = (margin + jitter, margin + jitter);
        let k = (idle_at - anchor).div_euclid(period) + 1;
        (k..k + AHEAD as i64)
            .map(|k| anchor + k * period - idle_at)
            .take_while(|&dt| dt <= range)
            .filter(|&dt| !window.loaded_at(dt))
            .map(|dt| ((dt - lead).max(0), dt + lag))
            .collect()
    }

    /// The schedule found, if any: `(period, anchor)`.
    #[cfg(test)]
    pub(super) fn schedule(&self) -> Option<(i64, i64, i64)> {
        self.schedule
    }
}

/// The union of two sorted lists of disjoint intervals, sorted and disjoint.
pub(super) fn union(a: &[(i64, i64)], b: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut all: Vec<(i64, i64)> = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(all.len());
    for (from, to) in all {
        match out.last_mut() {
            Some(last) if last.1 >= from => last.1 = last.1.max(to),
            _ => out.push((from, to)),
        }
    }
    out
}
