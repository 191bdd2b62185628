//! Sliding windows: a ring of fixed-length buckets per workload, a log-linear latency
//! histogram, exact counts of slow requests, and the signal values a window adds up to.
//!
//! Bucket `e` covers `[origin + e·len, origin + (e+1)·len)`. The long window is the last
//! `count` closed buckets; shorter windows (`Geometry::fast`, `Geometry::recent`) end at the
//! same bucket. Nothing here reads a clock: epochs are computed from instants passed in.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use serde::Serialize;

/// Linear sub-buckets per power of two of the latency histogram. A value is reported as the
/// middle of its sub-bucket, whose width is at most 1/16 of its lower bound: the reported
/// value is within 1/32 (3.2 %) of every value the sub-bucket holds.
const SUB_BUCKETS: u32 = 16;
/// Durations are kept in microseconds; below 16 µs each microsecond is its own slot.
const LINEAR_BELOW: u64 = SUB_BUCKETS as u64;

/// Relative error bound of a reported quantile from the histogram's resolution alone.
pub const LATENCY_RELATIVE_ERROR: f64 = 1.0 / (2.0 * SUB_BUCKETS as f64);

/// Request durations in log-linear slots (16 per power of two, from 1 µs), sparse: a
/// workload whose requests take similar times uses a handful of slots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    counts: BTreeMap<u16, u64>,
    /// The sum of `counts`: the latency rules ask for it per bucket and window at every
    /// evaluation, and summing the map each time was half of an evaluation's instructions.
    total: u64,
}

/// Slot of a duration in µs: exact below 16 µs, then 16 slots per power of two.
fn slot_of(us: u64) -> u16 {
    if us < LINEAR_BELOW {
        return us as u16;
    }
    let exp = 63 - us.leading_zeros(); // ≥ 4
    let sub = (us >> (exp - 4)) & u64::from(SUB_BUCKETS - 1);
    ((exp - 3) * SUB_BUCKETS + sub as u32) as u16
}

/// `[low, high)` of a slot, in µs.
fn slot_bounds(slot: u16) -> (f64, f64) {
    let s = u32::from(slot);
    if s < SUB_BUCKETS {
        return (f64::from(s), f64::from(s + 1));
    }
    let exp = s / SUB_BUCKETS + 3;
    let sub = s % SUB_BUCKETS;
    let width = 2f64.powi(exp as i32 - 4);
    let low = 2f64.powi(exp as i32) + f64::from(sub) * width;
    (low, low + width)
}

impl Latency {
    pub fn observe(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        *self.counts.entry(slot_of(us)).or_default() += 1;
        self.total += 1;
    }

    pub fn add(&mut self, other: &Latency) {
        for (s, c) in &other.counts {
            *self.counts.entry(*s).or_default() += c;
        }
        self.total += other.total;
    }

    /// Takes back what `add` added: slots that fall to 0 are removed, so a running sum is
    /// the same map as summing what remains.
    pub fn sub(&mut self, other: &Latency) {
        for (s, c) in &other.counts {
            if let Some(v) = self.counts.get_mut(s) {
                *v = v.saturating_sub(*c);
                if *v == 0 {
                    self.counts.remove(s);
                }
            }
        }
        self.total = self.total.saturating_sub(other.total);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `q` quantile (0 < q ≤ 1) in ms: the middle of the slot holding the rank-⌈q·n⌉
    /// value, so within `LATENCY_RELATIVE_ERROR` of it (for durations ≥ 16 µs; ±0.5 µs below).
    /// The sample's own error (records are a sample under `--http-sample-every`) comes on top.
    /// None when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut below = 0u64;
        for (slot, c) in &self.counts {
            below += c;
            if below >= rank {
                let (lo, hi) = slot_bounds(*slot);
                return Some((lo + hi) / 2.0 / 1e3);
            }
        }
        None
    }
}

/// Latency thresholds counted exactly per request (the latency rules' evidence): index
/// `[p95 degraded, p95 unhealthy, p99 degraded, p99 unhealthy]`.
pub type SlowCounts = [u64; 4];

/// What one workload did in one bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Exact (kernel counters): every HTTP request that ended, probes included.
    pub http_total: u64,
    /// Exact: 5xx responses, probes included.
    pub http_5xx: u64,
    /// Exact: panics and aborted requests.
    pub http_failed: u64,
    /// From per-request records (sampled): probe requests, probe non-2xx, probe 5xx.
    pub probe_records: u64,
    pub probe_bad_records: u64,
    pub probe_5xx_records: u64,
    /// From per-request records: durations of real (non-probe) requests.
    pub latency: Latency,
    /// From per-request records: real requests slower than each latency threshold.
    pub slow: SlowCounts,
    /// Exact: successful `sendmsg` calls (proxy for segments sent).
    pub send_calls: u64,
    pub retransmits: u64,
    pub resets: u64,
    pub failed_connects: u64,
    /// Exact: requests or responses of this workload the socket parser could not follow
    /// (loss charged to this workload alone; unattributable loss is the engine's `lost`).
    pub lost: u64,
}

impl Bucket {
    pub fn add(&mut self, o: &Bucket) {
        let Bucket {
            http_total,
            http_5xx,
            http_failed,
            probe_records,
            probe_bad_records,
            probe_5xx_records,
            latency,
            slow,
            send_calls,
            retransmits,
            resets,
            failed_connects,
            lost,
        } = o;
        self.http_total += http_total;
        self.http_5xx += http_5xx;
        self.http_failed += http_failed;
        self.lost += lost;
        self.probe_records += probe_records;
        self.probe_bad_records += probe_bad_records;
        self.probe_5xx_records += probe_5xx_records;
        self.latency.add(latency);
        for (a, b) in self.slow.iter_mut().zip(slow) {
            *a += b;
        }
        self.send_calls += send_calls;
        self.retransmits += retransmits;
        self.resets += resets;
        self.failed_connects += failed_connects;
    }

    /// Takes back what `add` added (a bucket leaving a running sum).
    pub fn sub(&mut self, o: &Bucket) {
        let Bucket {
            http_total,
            http_5xx,
            http_failed,
            probe_records,
            probe_bad_records,
            probe_5xx_records,
            latency,
            slow,
            send_calls,
            retransmits,
            resets,
            failed_connects,
            lost,
        } = o;
        let sub = |a: &mut u64, b: &u64| *a = a.saturating_sub(*b);
        sub(&mut self.http_total, http_total);
        sub(&mut self.http_5xx, http_5xx);
        sub(&mut self.http_failed, http_failed);
        sub(&mut self.lost, lost);
        sub(&mut self.probe_records, probe_records);
        sub(&mut self.probe_bad_records, probe_bad_records);
        sub(&mut self.probe_5xx_records, probe_5xx_records);
        self.latency.sub(latency);
        for (a, b) in self.slow.iter_mut().zip(slow) {
            sub(a, b);
        }
        sub(&mut self.send_calls, send_calls);
        sub(&mut self.retransmits, retransmits);
        sub(&mut self.resets, resets);
        sub(&mut self.failed_connects, failed_connects);
    }

    pub fn is_empty(&self) -> bool {
        *self == Bucket::default()
    }

    /// Real requests and their errors (exact counts less the probes, estimated from records
    /// × `sample_every`).
    pub fn requests_errors(&self, sample_every: u32) -> (u64, u64) {
        let n = u64::from(sample_every.max(1));
        let probes = (self.probe_records * n).min(self.http_total);
        let requests = self.http_total - probes;
        let probe_errors = (self.probe_5xx_records * n).min(self.http_5xx);
        let errors = (self.http_5xx - probe_errors + self.http_failed).min(requests);
        (requests, errors)
    }
}

/// Window geometry: `count` buckets of `bucket` make the long window; the fast and recent
/// windows are fixed fractions of it (see `fast` and `recent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub bucket: Duration,
    pub count: usize,
}

impl Geometry {
    pub fn span(&self) -> Duration {
        self.bucket * self.count as u32
    }

    /// Bucket number of an instant `since` the origin.
    pub fn epoch(&self, since: Duration) -> u64 {
        (since.as_nanos() / self.bucket.as_nanos().max(1)) as u64
    }

    /// Fast windows (in buckets): a tenth, a fifth and a third of the long window (3, 6 and
    /// 10 s of the default 30 s), so a strong fault is judged on as much of its own data as
    /// has arrived, without waiting for it to fill the long window.
    pub fn fast(&self) -> Vec<usize> {
        let mut v: Vec<usize> = [10, 5, 3]
            .iter()
            .map(|d| self.count.div_ceil(*d).max(1))
            .collect();
        v.dedup();
        v
    }

    /// Evaluations a decision other than a prompt one must be sustained for (see
    /// `verdict::sustain`): half the recent window, 3 s of 30 s.
    pub fn sustain(&self) -> u64 {
        self.recent().div_ceil(2) as u64
    }

    /// The recent window (a sixth of the long one, 5 s of 30 s): evidence from the long
    /// window only counts while the recent window's estimate is still over the threshold.
    pub fn recent(&self) -> usize {
        self.count.div_ceil(6).max(1)
    }
}

/// The last buckets of one workload, newest last, each tagged with its epoch, and the running
/// sum of the long window: a closed bucket is added once when the window first reaches it and
/// taken back when it leaves (summing 30 buckets' latency maps at every evaluation was 42 %
/// of an evaluation's instructions).
#[derive(Clone, Debug, Default)]
pub struct Series {
    buckets: VecDeque<(u64, Bucket)>,
    /// Sum of the buckets in `(summed - count, summed]` as of the last `window` call.
    sum: Bucket,
    /// Newest closed epoch in `sum`.
    summed: Option<u64>,
}

impl Series {
    /// The (open) bucket of `epoch`, created when needed.
    pub fn at(&mut self, epoch: u64) -> &mut Bucket {
        if self.buckets.back().is_none_or(|(e, _)| *e != epoch) {
            self.buckets.push_back((epoch, Bucket::default()));
        }
        let last = self.buckets.len() - 1;
        &mut self.buckets[last].1
    }

    /// Drops buckets older than the window of `count` ending at `closed`, taking them out of
    /// the running sum.
    fn trim(&mut self, closed: u64, count: usize) {
        let first = (closed + 1).saturating_sub(count as u64);
        while self.buckets.front().is_some_and(|(e, _)| *e < first) {
            if let Some((e, b)) = self.buckets.pop_front()
                && self.summed.is_some_and(|s| e <= s)
            {
                self.sum.sub(&b);
            }
        }
    }

    /// Closed buckets in `(closed - count, closed]`, oldest first (empty buckets absent).
    pub fn iter_window(
        &self,
        closed: u64,
        count: usize,
    ) -> impl Iterator<Item = &Bucket> + Clone + '_ {
        let first = (closed + 1).saturating_sub(count as u64);
        self.buckets
            .iter()
            .filter(move |(e, _)| *e >= first && *e <= closed)
            .map(|(_, b)| b)
    }

    /// Sum of the buckets in `(closed - count, closed]`; older ones are dropped. `closed`
    /// never goes back from one call to the next (the engine evaluates closed buckets in
    /// order, and nothing is added to a closed bucket).
    pub fn window(&mut self, closed: u64, count: usize) -> &Bucket {
        self.advance(closed, count);
        &self.sum
    }

    /// The long window's running sum as of the last `advance` (or `window`).
    pub fn sum(&self) -> &Bucket {
        &self.sum
    }

    /// Moves the window to end at `closed`: buckets newly closed enter the running sum, those
    /// now older than `count` buckets leave it and are dropped.
    pub fn advance(&mut self, closed: u64, count: usize) {
        let summed = self.summed;
        for (_, b) in self
            .buckets
            .iter()
            .rev()
            .skip_while(|(e, _)| *e > closed)
            .take_while(|(e, _)| summed.is_none_or(|s| *e > s))
        {
            self.sum.add(b);
        }
        self.summed = Some(summed.map_or(closed, |s| s.max(closed)));
        self.trim(closed, count);
    }

    /// Epoch of the newest bucket with anything in it.
    pub fn last_active(&self) -> Option<u64> {
        self.buckets
            .iter()
            .rev()
            .find(|(_, b)| !b.is_empty())
            .map(|(e, _)| *e)
    }
}

/// Values one window adds up to, as served by the API. Rates are over the time the window
/// actually covers (a workload seen 4 s ago has 4 s of data, not a 30 s window's).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Signals {
    /// Real (non-probe) requests: exact total minus probe requests (records × sampling).
    pub requests: u64,
    pub requests_per_second: f64,
    /// (5xx + panics + aborted) of real requests.
    pub errors: u64,
    pub error_ratio: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub probe_requests: u64,
    pub probe_failures: u64,
    pub send_calls: u64,
    pub retransmits: u64,
    pub retransmit_ratio: Option<f64>,
    pub resets: u64,
    pub resets_per_second: f64,
    pub failed_connects: u64,
    pub failed_connects_per_second: f64,
}

impl Signals {
    /// `covered`: the time the window's data spans. `sample_every`: 1 in N requests has a
    /// record, so record counts are scaled by N.
    pub fn from_bucket(b: &Bucket, covered: Duration, sample_every: u32) -> Self {
        let n = u64::from(sample_every.max(1));
        let secs = covered.as_secs_f64().max(f64::MIN_POSITIVE);
        let probes = (b.probe_records * n).min(b.http_total);
        let (requests, errors) = b.requests_errors(sample_every);
        let ratio = |num: u64, den: u64| (den > 0).then(|| num as f64 / den as f64);
        Signals {
            requests,
            requests_per_second: requests as f64 / secs,
            errors,
            error_ratio: ratio(errors, requests),
            p95_ms: b.latency.quantile(0.95),
            p99_ms: b.latency.quantile(0.99),
            probe_requests: probes,
            probe_failures: (b.probe_bad_records * n).min(probes),
            send_calls: b.send_calls,
            retransmits: b.retransmits,
            retransmit_ratio: ratio(b.retransmits, b.send_calls),
            resets: b.resets,
            resets_per_second: b.resets as f64 / secs,
            failed_connects: b.failed_connects,
            failed_connects_per_second: b.failed_connects as f64 / secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_log_linear_and_contiguous() {
        // (µs, slot, bounds)
        let cases: &[(u64, u16, (f64, f64))] = &[
            (0, 0, (0.0, 1.0)),
            (15, 15, (15.0, 16.0)),
            (16, 16, (16.0, 17.0)),
            (31, 31, (31.0, 32.0)),
            (32, 32, (32.0, 34.0)),
            (1000, 111, (992.0, 1024.0)),
            (252_000, 238, (245_760.0, 253_952.0)),
        ];
        for &(us, slot, bounds) in cases {
            assert_eq!(slot_of(us), slot, "{us} µs");
            assert_eq!(slot_bounds(slot), bounds, "slot {slot}");
        }
        // Every value lies in its slot; slots tile the line.
        for us in (0..200_000u64).step_by(7).chain([1 << 40, 3_600_000_000]) {
            let (lo, hi) = slot_bounds(slot_of(us));
            assert!(lo <= us as f64 && (us as f64) < hi, "{us}: [{lo}, {hi})");
        }
        for s in 0..900u16 {
            assert_eq!(slot_bounds(s).1, slot_bounds(s + 1).0, "slot {s}");
        }
    }

    #[test]
    fn quantiles_are_within_the_stated_relative_error() {
        // (durations in µs, q, exact quantile in µs): the issue's case (true p95 252 ms,
        // read 364–391 ms with the old 250–500 ms bucket), a spread, and small values.
        let spread: Vec<u64> = (1..=1000).map(|i| i * 1_700).collect();
        let issue: Vec<u64> = (0..1000)
            .map(|i| {
                if i < 950 {
                    20_000 + i * 200
                } else {
                    252_000 + i
                }
            })
            .collect();
        let cases: Vec<(Vec<u64>, f64, u64)> = vec![
            (issue.clone(), 0.95, issue[949]),
            (issue.clone(), 0.99, issue[989]),
            (spread.clone(), 0.95, spread[949]),
            (spread.clone(), 0.99, spread[989]),
            (vec![3_000; 10], 0.5, 3_000),
            (vec![12; 5], 0.95, 12),
        ];
        for (values, q, exact) in cases {
            let mut h = Latency::default();
            for v in &values {
                h.observe(Duration::from_micros(*v));
            }
            let got = h.quantile(q).expect("non-empty") * 1e3;
            let err = (got - exact as f64).abs() / exact as f64;
            assert!(
                err <= LATENCY_RELATIVE_ERROR.max(0.5 / exact as f64),
                "q{q}: {got} µs vs {exact} µs ({:.2} %)",
                err * 100.0
            );
        }
        assert_eq!(Latency::default().quantile(0.95), None);
        assert_eq!(LATENCY_RELATIVE_ERROR, 1.0 / 32.0);
    }

    #[test]
    fn windows_keep_the_last_count_buckets() {
        let g = Geometry {
            bucket: Duration::from_secs(10),
            count: 6,
        };
        assert_eq!(g.epoch(Duration::from_millis(9_999)), 0);
        assert_eq!(g.epoch(Duration::from_secs(10)), 1);
        assert_eq!(g.span(), Duration::from_secs(60));
        let mut s = Series::default();
        for e in 0..10u64 {
            s.at(e).http_total += e + 1;
        }
        // Window closing at epoch 9: buckets 4..=9 → 5+6+…+10.
        assert_eq!(s.window(9, 6).http_total, (5..=10).sum::<u64>());
        // Open bucket (epoch 10) not counted.
        s.at(10).http_total += 100;
        assert_eq!(s.window(9, 6).http_total, (5..=10).sum::<u64>());
        assert_eq!(s.last_active(), Some(10));
        // Shorter windows end at the same bucket.
        let recent: u64 = s.iter_window(9, 2).map(|b| b.http_total).sum();
        assert_eq!(recent, 9 + 10);
        // Much later: everything old falls out.
        assert_eq!(s.window(30, 6).http_total, 0);
        assert_eq!(s.last_active(), None);
    }

    /// Catches: a running sum that drifts from the buckets it stands for — a bucket added
    /// twice or never, not taken back when it leaves, latency slots left at 0 (a map unlike
    /// the summed one), or a catch-up jump of more than a window mishandled.
    #[test]
    fn the_running_sum_is_the_sum_of_the_window() {
        let mut seed = 0x5eed_u64;
        let mut next = |m: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % m
        };
        let count = 7;
        let mut s = Series::default();
        let mut all: Vec<(u64, Bucket)> = Vec::new();
        let mut closed = 0u64;
        for step in 0..400u64 {
            // Mostly one bucket at a time; gaps (idle buckets) and jumps past a whole window.
            closed += match step % 97 {
                50 => 2 * count as u64,
                _ => 1 + u64::from(next(5) == 0),
            };
            let open = closed + 1;
            if next(4) != 0 {
                let b = s.at(open);
                let mut mine = Bucket::default();
                for target in [&mut *b, &mut mine] {
                    target.http_total += step % 13;
                    target.send_calls += step % 5;
                    target.slow[step as usize % 4] += 1;
                }
                for _ in 0..next(6) {
                    let d = Duration::from_micros(1 + next(2_000_000));
                    s.at(open).latency.observe(d);
                    mine.latency.observe(d);
                }
                all.push((open, mine));
            }
            let got = s.window(closed, count).clone();
            let first = (closed + 1).saturating_sub(count as u64);
            let mut want = Bucket::default();
            for (_, b) in all.iter().filter(|(e, _)| *e >= first && *e <= closed) {
                want.add(b);
            }
            assert_eq!(got, want, "closed {closed}");
        }
    }

    #[test]
    fn fast_and_recent_windows_are_fractions_of_the_long_one() {
        // (long buckets, fast, recent, sustain)
        let cases: &[(usize, &[usize], usize, u64)] = &[
            (30, &[3, 6, 10], 5, 3),
            (5, &[1, 2], 1, 1),
            (6, &[1, 2], 1, 1),
            (1, &[1], 1, 1),
            (60, &[6, 12, 20], 10, 5),
        ];
        for &(count, fast, recent, sustain) in cases {
            let g = Geometry {
                bucket: Duration::from_secs(1),
                count,
            };
            assert_eq!(g.fast(), fast, "{count}");
            assert_eq!(g.recent(), recent, "{count}");
            assert_eq!(g.sustain(), sustain, "{count}");
        }
    }

    #[test]
    fn signals_take_probes_out_of_exact_counts_and_rates_use_the_covered_time() {
        let b = Bucket {
            http_total: 100,
            http_5xx: 30,
            http_failed: 2,
            probe_records: 5,
            probe_bad_records: 0,
            probe_5xx_records: 0,
            send_calls: 1000,
            retransmits: 50,
            ..Bucket::default()
        };
        // Every record: 5 probes. 5 s covered (a 30 s window that is filling).
        let s = Signals::from_bucket(&b, Duration::from_secs(5), 1);
        assert_eq!((s.requests, s.errors, s.probe_requests), (95, 32, 5));
        assert_eq!(s.error_ratio, Some(32.0 / 95.0));
        assert_eq!(s.retransmit_ratio, Some(0.05));
        assert_eq!(s.requests_per_second, 19.0);
        // 1 in 4 sampled: 5 probe records stand for 20 probes.
        let s = Signals::from_bucket(&b, Duration::from_secs(10), 4);
        assert_eq!((s.requests, s.probe_requests), (80, 20));
    }
}
