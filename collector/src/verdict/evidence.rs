//! The statistics behind the ratio rules (errors, retransmits, slow requests): Wilson score
//! intervals, a dispersion correction for bursty traffic, and the multi-window judgement.
//!
//! A level (degraded, unhealthy) fires only when the evidence excludes the threshold:
//! - **fast path** (strong failures at volume, judged in seconds): over any fast window (a
//!   tenth, a fifth or a third of the long window), the 99.9 % interval lies wholly at or
//!   above the threshold, and at or above 1.5 × the degraded threshold (so a background near
//!   the degraded threshold cannot enter through a short window);
//! - **long path** (weak but sustained failures): over the long window, the 99.99 % interval,
//!   widened by the window's measured dispersion, lies wholly at or above the threshold, and
//!   the recent window's estimate is still at or above it (the fault is still going on, so
//!   recovery does not wait for the long window to empty).
//!
//! Why these numbers: `ARCHITECTURE.md`, "Health verdicts".

/// z of the fast path: 99.9 % two-sided.
pub const Z_FAST: f64 = 2.58;
pub const FAST_CONFIDENCE: &str = "99 %";
/// z of the long path: 99.999 % two-sided. The long window is evaluated every bucket, so a
/// background at the threshold is tested about 1,800 times in 30 minutes over overlapping
/// windows, and real counts vary more than binomially (bursts the dispersion estimate cannot
/// see in 30 s at low volume); at 99.99 % a simulated 5 % background at the 5 % threshold
/// still crossed it in 3 of 40 half-hours (see ARCHITECTURE.md).
pub const Z_LONG: f64 = 4.42;
pub const LONG_CONFIDENCE: &str = "99.999 %";

/// The fast path's bar is at least this multiple of the degraded threshold: with 99.9 %
/// confidence it keeps a background at the degraded threshold from entering through a short
/// window (its estimate would have to be half as large again, many standard errors away).
pub const FAST_MARGIN: f64 = 2.0;

/// Fewest trials any window judges on (below, even a 99.9 % interval rests on too little).
pub const MIN_TRIALS: u64 = 20;

/// Hits of `total` trials over `secs` seconds of one window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Count {
    pub hits: u64,
    pub total: u64,
    pub secs: f64,
}

impl Count {
    pub fn ratio(&self) -> Option<f64> {
        (self.total > 0).then(|| self.hits as f64 / self.total as f64)
    }
}

/// Wilson score interval of `hits` successes in `total` trials (real numbers, so an
/// effective sample after a dispersion correction can be used). None without trials.
pub fn wilson(hits: f64, total: f64, z: f64) -> Option<(f64, f64)> {
    if total.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) || !hits.is_finite() {
        return None;
    }
    let p = (hits / total).clamp(0.0, 1.0);
    let z2 = z * z;
    let d = 1.0 + z2 / total;
    let centre = (p + z2 / (2.0 * total)) / d;
    let half = z * (p * (1.0 - p) / total + z2 / (4.0 * total * total)).sqrt() / d;
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// Expected hits per chunk before successive chunks are compared (below it, a difference
/// is mostly the noise of a handful of counts and the estimate would be skewed).
const CHUNK_EXPECTED_HITS: f64 = 5.0;

/// Overdispersion of per-bucket counts (at least 1): bursts make buckets differ more than
/// binomial noise, and the long window's interval is widened by √φ (an effective sample of
/// n/φ trials).
///
/// Estimated from successive differences (von Neumann): adjacent buckets are merged into
/// chunks of at least `CHUNK_EXPECTED_HITS` expected hits, and each pair of adjacent chunks
/// contributes (r_i − r_{i−1})² over its binomial variance p(1−p)(1/n_i + 1/n_{i−1}) at the
/// pooled ratio p. Unlike the χ² around the pooled ratio, a fault that starts inside the
/// window is one large difference among many, so it does not read as burstiness and slow its
/// own detection. The mean of m such terms has a standard deviation of about √(2/m) when
/// counts are binomial; two of those are subtracted, so only evident burstiness widens the
/// interval. 1 with fewer than two chunks or a pooled ratio of 0 or 1.
///
/// Two passes over `buckets` (pooled ratio, then chunks), no allocation: it runs for every
/// ratio of every workload at every evaluation (collecting the buckets first was 18 % of an
/// evaluation's instructions).
pub fn dispersion<I>(buckets: I) -> f64
where
    I: IntoIterator<Item = (u64, u64)>,
    I::IntoIter: Clone,
{
    let b = buckets.into_iter().filter(|(_, n)| *n > 0);
    let (k, n) = b
        .clone()
        .fold((0u64, 0u64), |(k, n), (bk, bn)| (k + bk, n + bn));
    if n == 0 {
        return 1.0;
    }
    let p = k as f64 / n as f64;
    if p <= 0.0 || p >= 1.0 {
        return 1.0;
    }
    let (mut chunks, mut sum) = (0usize, -0.0f64);
    let mut prev: Option<(f64, f64)> = None;
    let mut open = (0.0, 0.0);
    for (bk, bn) in b {
        open = (open.0 + bk as f64, open.1 + bn as f64);
        if open.1 * p >= CHUNK_EXPECTED_HITS {
            if let Some((k0, n0)) = prev {
                let (k1, n1) = open;
                let d = k1 / n1 - k0 / n0;
                sum += d * d / (p * (1.0 - p) * (1.0 / n0 + 1.0 / n1));
            }
            prev = Some(open);
            chunks += 1;
            open = (0.0, 0.0);
        }
    }
    if chunks < 2 {
        return 1.0;
    }
    let m = (chunks - 1) as f64;
    (sum / m - 2.0 * (2.0 / m).sqrt()).max(1.0)
}

/// One ratio's counts over every window the judgement uses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RatioEvidence {
    /// Fast windows, shortest first.
    pub fast: Vec<Count>,
    pub long: Count,
    /// Dispersion of the long window's buckets.
    pub dispersion: f64,
    pub recent: Count,
}

/// Which evidence decided, with its interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub window: Count,
    pub low: f64,
    pub high: f64,
    pub confidence: &'static str,
    /// The dispersion the interval was widened by (1: counts as variable as binomial).
    pub dispersion: f64,
    /// Decided over the long window (the engine wants such a decision sustained).
    pub long: bool,
}

/// The judgement of one level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Finding {
    /// The interval excludes the threshold from below.
    Conclusive(Decision),
    /// The estimate is at or over the threshold but the evidence does not (yet) exclude it.
    Watching(Decision),
    /// The long window's evidence excludes the threshold, the recent window's estimate is
    /// under it: the fault is over (or paused) and the long window has yet to forget it.
    Subsiding(Decision),
    Clear,
}

impl RatioEvidence {
    /// Judges one level: `threshold` is the level's, `degraded` the lowest level's (the fast
    /// path needs twice it); windows with fewer than `min` trials do not judge.
    pub fn judge(&self, threshold: f64, degraded: f64, min: u64) -> Finding {
        let fast_bar = threshold.max(FAST_MARGIN * degraded);
        for w in &self.fast {
            // The floor is per long window: a fast window needs its share of it (at least
            // `MIN_TRIALS`), so a workload with enough traffic for the long window is judged
            // on its short windows too.
            let share = (min as f64 * w.secs / self.long.secs.max(w.secs)).ceil() as u64;
            if w.total < share.max(MIN_TRIALS.min(min)) {
                continue;
            }
            if let Some((low, high)) = wilson(w.hits as f64, w.total as f64, Z_FAST)
                && low >= fast_bar
            {
                return Finding::Conclusive(Decision {
                    window: *w,
                    low,
                    high,
                    confidence: FAST_CONFIDENCE,
                    dispersion: 1.0,
                    long: false,
                });
            }
        }
        let phi = self.dispersion.max(1.0);
        let long = if self.long.total >= min {
            wilson(
                self.long.hits as f64 / phi,
                self.long.total as f64 / phi,
                Z_LONG,
            )
        } else {
            None
        };
        let Some((low, high)) = long else {
            return Finding::Clear;
        };
        let decision = Decision {
            window: self.long,
            low,
            high,
            confidence: LONG_CONFIDENCE,
            dispersion: phi,
            long: true,
        };
        let recent_over =
            self.recent.total > 0 && self.recent.ratio().is_some_and(|r| r >= threshold);
        if low >= threshold {
            return if recent_over {
                Finding::Conclusive(decision)
            } else {
                Finding::Subsiding(decision)
            };
        }
        let estimate_over = self.long.ratio().is_some_and(|r| r >= threshold);
        if estimate_over || recent_over {
            return Finding::Watching(decision);
        }
        Finding::Clear
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 5e-4
    }

    #[test]
    fn wilson_matches_published_values() {
        // (hits, total, z, low, high): 95 % rows from Newcombe (1998), table I, and the issue's
        // example (38 % of 160 → 31–45 %).
        let cases: &[(f64, f64, f64, f64, f64)] = &[
            (81.0, 263.0, 1.96, 0.2553, 0.3662),
            (15.0, 148.0, 1.96, 0.0624, 0.1605),
            (0.0, 20.0, 1.96, 0.0, 0.1611),
            (1.0, 29.0, 1.96, 0.0061, 0.1718),
            (60.8, 160.0, 1.96, 0.3084, 0.4572),
        ];
        for &(k, n, z, lo, hi) in cases {
            let (l, h) = wilson(k, n, z).expect("trials");
            assert!(close(l, lo) && close(h, hi), "{k}/{n}: ({l}, {h})");
        }
        assert_eq!(wilson(0.0, 0.0, 1.96), None);
        assert_eq!(wilson(1.0, f64::NAN, 1.96), None);
    }

    #[test]
    fn dispersion_is_one_for_binomial_counts_and_steps_and_grows_with_bursts() {
        // Every bucket at the pooled ratio: no differences → 1.
        assert_eq!(dispersion([(5, 100), (5, 100), (5, 100)]), 1.0);
        // One bucket: nothing to compare.
        assert_eq!(dispersion([(50, 100)]), 1.0);
        assert_eq!(dispersion([(0, 100), (0, 100)]), 1.0);
        // A fault starting mid-window (0 % then 10 %): one difference of 0.1 among 29 at
        // p = 0.05 → 0.01 / (0.05·0.95·0.02) / 29 = 0.36 → 1.
        let step: Vec<(u64, u64)> = (0..30)
            .map(|i| (if i < 15 { 0 } else { 10 }, 100))
            .collect();
        assert_eq!(dispersion(step), 1.0);
        // Bursts: 20 % and 0 % alternating at p = 0.1 (10 expected hits per bucket, so each
        // bucket is a chunk): each difference 0.2, 0.04 / (0.1·0.9·0.02) = 22.2 per pair,
        // less 2·√(2/29).
        let bursts: Vec<(u64, u64)> = (0..30)
            .map(|i| (if i % 2 == 0 { 20 } else { 0 }, 100))
            .collect();
        let phi = dispersion(bursts);
        let want = 0.04 / (0.1 * 0.9 * 0.02) - 2.0 * (2.0f64 / 29.0).sqrt();
        assert!((phi - want).abs() < 1e-9, "{phi} vs {want}");
        // Small counts are merged: 1 expected hit per bucket → chunks of 5 buckets.
        let sparse: Vec<(u64, u64)> = (0..30).map(|i| (u64::from(i % 5 == 0) * 5, 100)).collect();
        assert_eq!(
            dispersion(sparse),
            1.0,
            "one burst per chunk is no burstiness"
        );
    }

    /// The estimate as first written (collecting the buckets and the chunks), kept to show
    /// the allocation-free one computes the very same value.
    fn dispersion_reference(buckets: impl IntoIterator<Item = (u64, u64)>) -> f64 {
        let b: Vec<(u64, u64)> = buckets.into_iter().filter(|(_, n)| *n > 0).collect();
        let (k, n) = b
            .iter()
            .fold((0u64, 0u64), |(k, n), (bk, bn)| (k + bk, n + bn));
        if n == 0 {
            return 1.0;
        }
        let p = k as f64 / n as f64;
        if p <= 0.0 || p >= 1.0 {
            return 1.0;
        }
        let mut chunks: Vec<(f64, f64)> = Vec::new();
        let mut open = (0.0, 0.0);
        for (bk, bn) in b {
            open = (open.0 + bk as f64, open.1 + bn as f64);
            if open.1 * p >= CHUNK_EXPECTED_HITS {
                chunks.push(open);
                open = (0.0, 0.0);
            }
        }
        if chunks.len() < 2 {
            return 1.0;
        }
        let m = (chunks.len() - 1) as f64;
        let sum: f64 = chunks
            .windows(2)
            .map(|w| {
                let ((k0, n0), (k1, n1)) = (w[0], w[1]);
                let d = k1 / n1 - k0 / n0;
                d * d / (p * (1.0 - p) * (1.0 / n0 + 1.0 / n1))
            })
            .sum();
        (sum / m - 2.0 * (2.0 / m).sqrt()).max(1.0)
    }

    /// Catches: the allocation-free dispersion drifting from the definition (a chunk lost or
    /// counted twice, differences taken in another order): bit-identical over seeded windows.
    #[test]
    fn dispersion_is_the_same_as_its_reference() {
        let mut seed = 7u64;
        let mut next = |m: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % m
        };
        for _ in 0..2_000 {
            let len = next(40) as usize;
            let rate = 1 + next(300);
            let buckets: Vec<(u64, u64)> = (0..len)
                .map(|_| {
                    let n = next(rate);
                    (next(n / 4 + 1).min(n), n)
                })
                .collect();
            let got = dispersion(buckets.clone());
            let want = dispersion_reference(buckets.clone());
            assert_eq!(got.to_bits(), want.to_bits(), "{buckets:?}");
        }
    }

    fn c(hits: u64, total: u64, secs: f64) -> Count {
        Count { hits, total, secs }
    }

    #[test]
    fn judgement_table() {
        // (name, evidence, threshold, degraded, min, expected: 'c' conclusive, 'w' watching,
        // '-' clear, and the window seconds that decided)
        let steady = |k, n| RatioEvidence {
            fast: vec![c(k * 3 / 30, n * 3 / 30, 3.0), c(k / 3, n / 3, 10.0)],
            long: c(k, n, 30.0),
            dispersion: 1.0,
            recent: c(k / 6, n / 6, 5.0),
        };
        let cases: Vec<(&str, RatioEvidence, f64, f64, u64, char, f64)> = vec![
            // 33 % over 3 s at 20 req/s (60 requests): 99 % CI 20–50 % excludes 15 %.
            (
                "strong fault, fast window",
                RatioEvidence {
                    fast: vec![c(20, 60, 3.0)],
                    long: c(20, 600, 30.0),
                    dispersion: 1.0,
                    recent: c(20, 100, 5.0),
                },
                0.15,
                0.05,
                20,
                'c',
                3.0,
            ),
            // The same 3 s against the degraded level: the fast bar is 7.5 %, passed too.
            (
                "strong fault, degraded",
                RatioEvidence {
                    fast: vec![c(20, 60, 3.0)],
                    long: c(20, 600, 30.0),
                    dispersion: 1.0,
                    recent: c(20, 100, 5.0),
                },
                0.05,
                0.05,
                20,
                'c',
                3.0,
            ),
            // Below the volume floor: the fast window does not judge.
            (
                "too few requests",
                RatioEvidence {
                    fast: vec![c(10, 10, 3.0)],
                    long: c(10, 10, 30.0),
                    dispersion: 1.0,
                    recent: c(10, 10, 5.0),
                },
                0.15,
                0.05,
                20,
                '-',
                0.0,
            ),
            // 8 % sustained at 100 req/s: conclusive over the long window only.
            (
                "weak sustained",
                steady(240, 3000),
                0.05,
                0.05,
                20,
                'c',
                30.0,
            ),
            // 5 % stationary: estimate at the threshold, not conclusive.
            ("at threshold", steady(150, 3000), 0.05, 0.05, 20, 'w', 30.0),
            ("clear", steady(30, 3000), 0.05, 0.05, 20, '-', 0.0),
            // The same 8 % but bursty (φ = 9): the interval triples in width.
            (
                "weak but bursty",
                RatioEvidence {
                    dispersion: 9.0,
                    ..steady(240, 3000)
                },
                0.05,
                0.05,
                20,
                'w',
                30.0,
            ),
            // A fault that ended: the long window still says so, the recent window does not.
            (
                "fault over",
                RatioEvidence {
                    fast: vec![c(0, 300, 3.0), c(0, 1000, 10.0)],
                    long: c(600, 3000, 30.0),
                    dispersion: 1.0,
                    recent: c(0, 500, 5.0),
                },
                0.05,
                0.05,
                20,
                's',
                30.0,
            ),
        ];
        for (name, ev, t, d, min, want, secs) in cases {
            let got = ev.judge(t, d, min);
            let (kind, window) = match got {
                Finding::Conclusive(d) => ('c', d.window.secs),
                Finding::Watching(d) => ('w', d.window.secs),
                Finding::Subsiding(d) => ('s', d.window.secs),
                Finding::Clear => ('-', 0.0),
            };
            assert_eq!((kind, window), (want, secs), "{name}: {got:?}");
        }
    }
}
