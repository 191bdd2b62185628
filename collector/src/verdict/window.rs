//! Sliding windows: a ring of fixed-length buckets per workload, a fixed-bucket latency
//! histogram, and the signal values a window adds up to.
//!
//! Bucket `e` covers `[origin + e·len, origin + (e+1)·len)`. A window is the last `count` closed
//! buckets. Nothing here reads a clock: epochs are computed from instants passed in.

use std::{collections::VecDeque, time::Duration};

use serde::Serialize;

/// Upper bounds (ms) of the latency histogram buckets; the last bucket is open-ended.
pub const LATENCY_BOUNDS_MS: [f64; 15] = [
    5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0,
    10000.0, 30000.0,
];
const LATENCY_SLOTS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// Request durations counted per fixed bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    counts: [u64; LATENCY_SLOTS],
}

impl Latency {
    pub fn observe(&mut self, ms: f64) {
        let slot = LATENCY_BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.counts[slot] += 1;
    }

    pub fn add(&mut self, other: &Latency) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q` quantile (0 < q ≤ 1) by linear interpolation inside the bucket holding it.
    /// Error: at most that bucket's width (the true value lies in the same bucket). Values in
    /// the open-ended last bucket are reported as its lower bound (30 s). None when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if (below + c) as f64 >= rank {
                let lo = if i == 0 {
                    0.0
                } else {
                    LATENCY_BOUNDS_MS[i - 1]
                };
                let Some(&hi) = LATENCY_BOUNDS_MS.get(i) else {
                    return Some(lo);
                };
                let frac = ((rank - below as f64) / c as f64).clamp(0.0, 1.0);
                return Some(lo + (hi - lo) * frac);
            }
            below += c;
        }
        LATENCY_BOUNDS_MS.last().copied()
    }
}

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
        self.http_total += o.http_total;
        self.http_5xx += o.http_5xx;
        self.http_failed += o.http_failed;
        self.lost += o.lost;
        self.probe_records += o.probe_records;
        self.probe_bad_records += o.probe_bad_records;
        self.probe_5xx_records += o.probe_5xx_records;
        self.latency.add(&o.latency);
        self.send_calls += o.send_calls;
        self.retransmits += o.retransmits;
        self.resets += o.resets;
        self.failed_connects += o.failed_connects;
    }

    pub fn is_empty(&self) -> bool {
        *self == Bucket::default()
    }
}

/// Window geometry.
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
}

/// The last buckets of one workload, newest last, each tagged with its epoch.
#[derive(Clone, Debug, Default)]
pub struct Series {
    buckets: VecDeque<(u64, Bucket)>,
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

    /// Sum of the buckets in `(closed - count, closed]`; older ones are dropped.
    pub fn window(&mut self, closed: u64, count: usize) -> Bucket {
        let first = (closed + 1).saturating_sub(count as u64);
        while self.buckets.front().is_some_and(|(e, _)| *e < first) {
            self.buckets.pop_front();
        }
        let mut sum = Bucket::default();
        for (_, b) in self.buckets.iter().filter(|(e, _)| *e <= closed) {
            sum.add(b);
        }
        sum
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

/// Values one window adds up to, as served by the API.
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
    /// `sample_every`: 1 in N requests has a record, so record counts are scaled by N.
    pub fn from_bucket(b: &Bucket, span: Duration, sample_every: u32) -> Self {
        let n = u64::from(sample_every.max(1));
        let secs = span.as_secs_f64().max(f64::MIN_POSITIVE);
        let probes = (b.probe_records * n).min(b.http_total);
        let requests = b.http_total - probes;
        let probe_errors = (b.probe_5xx_records * n).min(b.http_5xx);
        let errors = (b.http_5xx - probe_errors + b.http_failed).min(requests);
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
    fn quantiles_interpolate_within_their_bucket() {
        // (observations, q, expected, tolerance)
        let cases: &[(&[f64], f64, Option<f64>)] = &[
            (&[], 0.95, None),
            // 100 values in (500, 750]: p95 interpolates at 95 % of that bucket.
            (&[600.0; 100], 0.95, Some(500.0 + 250.0 * 0.95)),
            // 90 fast, 10 slow: p95 lies in the slow bucket, halfway.
            (
                &[[1.0; 90].as_slice(), [2000.0; 10].as_slice()].concat(),
                0.95,
                Some(1000.0 + 1500.0 * 0.5),
            ),
            (&[1.0; 10], 0.5, Some(2.5)),
            (&[60_000.0; 3], 0.99, Some(30_000.0)),
        ];
        for (obs, q, want) in cases {
            let mut h = Latency::default();
            for o in *obs {
                h.observe(*o);
            }
            let got = h.quantile(*q);
            match (got, want) {
                (None, None) => {}
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "{obs:?} q{q}: {g} ≠ {w}"),
                _ => panic!("{obs:?} q{q}: {got:?} ≠ {want:?}"),
            }
        }
    }

    #[test]
    fn quantile_error_is_within_the_bucket_width() {
        let mut h = Latency::default();
        let values: Vec<f64> = (1..=1000).map(|i| f64::from(i) * 1.7).collect();
        for v in &values {
            h.observe(*v);
        }
        let exact = values[949];
        let est = h.quantile(0.95).unwrap_or_default();
        // exact 1615 ms lies in (1000, 2500]: width 1500.
        assert!((est - exact).abs() <= 1500.0, "{est} vs {exact}");
        assert!(est > 1000.0 && est <= 2500.0);
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
        // Much later: everything old falls out.
        assert_eq!(s.window(30, 6).http_total, 0);
        assert_eq!(s.last_active(), None);
    }

    #[test]
    fn signals_take_probes_out_of_exact_counts() {
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
        // Every record: 5 probes.
        let s = Signals::from_bucket(&b, Duration::from_secs(10), 1);
        assert_eq!((s.requests, s.errors, s.probe_requests), (95, 32, 5));
        assert_eq!(s.error_ratio, Some(32.0 / 95.0));
        assert_eq!(s.retransmit_ratio, Some(0.05));
        assert!((s.requests_per_second - 9.5).abs() < 1e-9);
        // 1 in 4 sampled: 5 probe records stand for 20 probes.
        let s = Signals::from_bucket(&b, Duration::from_secs(10), 4);
        assert_eq!((s.requests, s.probe_requests), (80, 20));
    }
}
