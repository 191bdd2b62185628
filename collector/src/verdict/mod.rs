//! Per-workload health verdicts: sliding windows of signals (window), rules with hysteresis
//! (rules), and the engine the aggregator drives: it records what the aggregator sees and, each
//! time a bucket closes, evaluates every workload and publishes the verdicts for the API and
//! Prometheus.
//!
//! The engine lives inside the aggregator's task (one owner); time is passed in (`now`, and
//! `wall` for the time of last change shown to people).

pub mod rules;
pub mod window;

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::{Arc, RwLock},
    time::{Duration, Instant, SystemTime},
};

use collector_common::tcp::TcpStats;
use serde::Serialize;

use crate::export::{
    prometheus::WorkloadLabels,
    verdict::{MismatchLabels, ReasonGaugeLabels, StateLabels, TransitionLabels, VerdictMetrics},
};
use rules::{Context, Hysteresis, Reason, ReasonCode, Rules, State, Tracker};
use window::{Geometry, Series, Signals};

pub const DEFAULT_BUCKET: Duration = Duration::from_secs(10);
pub const DEFAULT_BUCKETS: usize = 6;
/// Windows without any data before a workload is forgotten.
pub const DEFAULT_EXPIRE_WINDOWS: u32 = 5;

/// Verdict settings (`[verdict]` in the configuration file, `--verdict-*` options).
#[derive(Clone, Debug, PartialEq)]
pub struct VerdictConfig {
    pub geometry: Geometry,
    pub rules: Rules,
    pub hysteresis: Hysteresis,
    pub expire_windows: u32,
    /// States for which the per-workload readiness endpoint answers 503.
    pub readiness_fail_on: Vec<State>,
}

impl Default for VerdictConfig {
    fn default() -> Self {
        Self {
            geometry: Geometry {
                bucket: DEFAULT_BUCKET,
                count: DEFAULT_BUCKETS,
            },
            rules: Rules::default(),
            hysteresis: Hysteresis::default(),
            expire_windows: DEFAULT_EXPIRE_WINDOWS,
            readiness_fail_on: vec![State::Unhealthy],
        }
    }
}

/// The window a verdict was computed over.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WindowInfo {
    pub bucket_seconds: f64,
    pub buckets: usize,
    pub seconds: f64,
}

/// HTTP record sampling in effect.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sampling {
    /// 1 in `http_sample_every` requests carries a record (method, route, duration).
    pub http_sample_every: u32,
    /// Request and error counts come from exact kernel counters.
    pub counts_exact: bool,
    /// Latency quantiles and the probe/real split come from records.
    pub records_sampled: bool,
}

/// One workload's published verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkloadHealth {
    pub kind: &'static str,
    pub name: String,
    pub pod_uid: String,
    pub container_id: String,
    pub state: State,
    pub reasons: Vec<Reason>,
    pub probe_mismatch: bool,
    pub signals: Signals,
    pub window: WindowInfo,
    pub sampling: Sampling,
    /// RFC 3339 UTC.
    pub last_change: String,
    /// RFC 3339 UTC, time of this evaluation.
    pub evaluated_at: String,
}

/// Verdicts of every known workload, as of the last evaluation.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub workloads: Vec<WorkloadHealth>,
}

pub type SharedVerdicts = Arc<RwLock<Snapshot>>;

/// One harvest's exact HTTP counters of a workload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpDelta {
    /// Every request that ended, probes included.
    pub total: u64,
    pub r5xx: u64,
    /// Panics and aborted requests.
    pub failed: u64,
    /// Requests or responses lost to this workload's own stream (`HttpCounts::lost`).
    pub lost: u64,
}

struct Entry {
    series: Series,
    tracker: Tracker,
    http_seen: bool,
    /// Wall-clock time of the last state change (the first evaluation until one happens).
    last_change: Option<SystemTime>,
    reasons: BTreeSet<ReasonCode>,
    mismatch: bool,
    /// Epoch the entry was created at (so a new workload is not expired before it had data).
    born: u64,
}

pub struct Engine {
    config: VerdictConfig,
    sample_every: u32,
    metrics: Option<VerdictMetrics>,
    origin: Option<Instant>,
    /// Epoch of the open bucket.
    open: u64,
    entries: HashMap<WorkloadLabels, Entry>,
    /// Records lost per epoch (kernel drops, rejected or dropped records), any workload.
    lost: VecDeque<(u64, u64)>,
    shared: SharedVerdicts,
    /// Workloads expired since the last `take_forgotten`: the aggregator forgets their metric
    /// label sets and kernel keys with them.
    forgotten: Vec<WorkloadLabels>,
}

impl Engine {
    pub fn new(config: VerdictConfig, sample_every: u32, metrics: Option<VerdictMetrics>) -> Self {
        Self {
            config,
            sample_every: sample_every.max(1),
            metrics,
            origin: None,
            open: 0,
            entries: HashMap::new(),
            lost: VecDeque::new(),
            shared: SharedVerdicts::default(),
            forgotten: Vec::new(),
        }
    }

    /// Workloads expired since the last call.
    pub fn take_forgotten(&mut self) -> Vec<WorkloadLabels> {
        std::mem::take(&mut self.forgotten)
    }

    /// What the API reads.
    /// The record sampling now in effect (adaptive sampling changed it).
    pub fn set_sample_every(&mut self, every: u32) {
        self.sample_every = every.max(1);
    }

    pub fn shared(&self) -> SharedVerdicts {
        self.shared.clone()
    }

    fn epoch(&mut self, now: Instant) -> u64 {
        let origin = *self.origin.get_or_insert(now);
        self.config
            .geometry
            .epoch(now.saturating_duration_since(origin))
    }

    fn bucket(&mut self, w: &WorkloadLabels, now: Instant) -> &mut window::Bucket {
        let epoch = self.epoch(now).max(self.open);
        let entry = self.entries.entry(w.clone()).or_insert_with(|| Entry {
            series: Series::default(),
            tracker: Tracker::default(),
            http_seen: false,
            last_change: None,
            reasons: BTreeSet::new(),
            mismatch: false,
            born: epoch,
        });
        entry.series.at(epoch)
    }

    /// One per-request record (possibly sampled). `status` None: panic, aborted or unobserved.
    pub fn on_request(
        &mut self,
        w: &WorkloadLabels,
        probe: bool,
        status: Option<u16>,
        duration: Duration,
        now: Instant,
    ) {
        let b = self.bucket(w, now);
        if probe {
            b.probe_records += 1;
            if !status.is_some_and(|s| (200..300).contains(&s)) {
                b.probe_bad_records += 1;
            }
            if status.is_some_and(|s| s >= 500) {
                b.probe_5xx_records += 1;
            }
        } else {
            b.latency.observe(duration.as_secs_f64() * 1e3);
        }
        if let Some(e) = self.entries.get_mut(w) {
            e.http_seen = true;
        }
    }

    /// Exact request counters of one harvest: all requests, 5xx, panics + aborted, and what
    /// the kernel could not follow for this workload.
    pub fn on_http_counts(&mut self, w: &WorkloadLabels, c: HttpDelta, now: Instant) {
        let b = self.bucket(w, now);
        b.http_total += c.total;
        b.http_5xx += c.r5xx;
        b.http_failed += c.failed;
        b.lost += c.lost;
        if let Some(e) = self.entries.get_mut(w) {
            e.http_seen = true;
        }
    }

    /// Exact TCP deltas of one harvest.
    pub fn on_tcp(&mut self, w: &WorkloadLabels, d: &TcpStats, now: Instant) {
        let b = self.bucket(w, now);
        b.send_calls += d.send_calls;
        b.retransmits += d.retransmit_segs;
        b.resets += d.resets_sent + d.resets_received;
        b.failed_connects += d.connects_refused + d.connects_timed_out + d.connects_failed_other;
    }

    /// Records lost anywhere (kernel drops, rejected or dropped records): every workload's
    /// window containing this bucket is unknown, since the lost record could be anyone's.
    pub fn on_lost(&mut self, n: u64, now: Instant) {
        if n == 0 {
            return;
        }
        let epoch = self.epoch(now).max(self.open);
        match self.lost.back_mut() {
            Some((e, c)) if *e == epoch => *c += n,
            _ => self.lost.push_back((epoch, n)),
        }
    }

    /// Closes buckets that ended before `now` and evaluates once per closed bucket (only the
    /// newest window is published). Returns whether an evaluation ran.
    pub fn tick(&mut self, now: Instant, wall: SystemTime) -> bool {
        let epoch = self.epoch(now);
        if epoch <= self.open {
            return false;
        }
        // Catch-up after a stall: each missed bucket is one evaluation, as if on time; beyond a
        // whole window the results are identical, so stop there.
        let first = self
            .open
            .max(epoch.saturating_sub(self.config.geometry.count as u64 + 1));
        for closed in first..epoch {
            self.evaluate(closed, wall);
        }
        self.open = epoch;
        true
    }

    fn evaluate(&mut self, closed: u64, wall: SystemTime) {
        let g = self.config.geometry;
        let first = (closed + 1).saturating_sub(g.count as u64);
        while self.lost.front().is_some_and(|(e, _)| *e < first) {
            self.lost.pop_front();
        }
        let lost: u64 = self
            .lost
            .iter()
            .filter(|(e, _)| *e <= closed)
            .map(|(_, n)| n)
            .sum();
        let expire = u64::from(self.config.expire_windows.max(1)) * g.count as u64;
        let span = g.span();
        let mut out = Vec::with_capacity(self.entries.len());
        let mut expired = Vec::new();
        for (w, e) in &mut self.entries {
            let last = e.series.last_active().unwrap_or(e.born);
            if closed >= last + expire {
                expired.push(w.clone());
                continue;
            }
            let sum = e.series.window(closed, g.count);
            let signals = Signals::from_bucket(&sum, span, self.sample_every);
            let ctx = Context {
                events_lost: lost + sum.lost,
                http_seen: e.http_seen,
            };
            let a = self.config.rules.assess(&signals, span, ctx);
            if let Some(from) = e.tracker.step(a.state, self.config.hysteresis) {
                e.last_change = Some(wall);
                if let Some(m) = &self.metrics {
                    m.transitions
                        .get_or_create(&TransitionLabels {
                            workload: w.clone(),
                            from: from.as_str(),
                            to: e.tracker.state.as_str(),
                        })
                        .inc();
                }
            }
            // Reasons shown are the candidate's; the state is the hysteresis state.
            let codes: BTreeSet<ReasonCode> = a.reasons.iter().map(|r| r.code).collect();
            if let Some(m) = &self.metrics {
                for st in State::ALL {
                    m.state
                        .get_or_create(&StateLabels {
                            workload: w.clone(),
                            state: st.as_str(),
                        })
                        .set(i64::from(st == e.tracker.state));
                }
                for code in e.reasons.union(&codes) {
                    m.reason
                        .get_or_create(&ReasonGaugeLabels {
                            workload: w.clone(),
                            reason: code.as_str(),
                        })
                        .set(i64::from(codes.contains(code)));
                }
                if a.probe_mismatch && !e.mismatch {
                    m.probe_mismatch
                        .get_or_create(&MismatchLabels {
                            workload: w.clone(),
                        })
                        .inc();
                }
            }
            e.reasons = codes;
            e.mismatch = a.probe_mismatch;
            out.push(WorkloadHealth {
                kind: w.workload_kind,
                name: w.workload.clone(),
                pod_uid: w.pod_uid.clone(),
                container_id: w.container_id.clone(),
                state: e.tracker.state,
                reasons: a.reasons,
                probe_mismatch: a.probe_mismatch,
                signals,
                window: WindowInfo {
                    bucket_seconds: g.bucket.as_secs_f64(),
                    buckets: g.count,
                    seconds: span.as_secs_f64(),
                },
                sampling: Sampling {
                    http_sample_every: self.sample_every,
                    counts_exact: true,
                    records_sampled: self.sample_every > 1,
                },
                last_change: rfc3339(*e.last_change.get_or_insert(wall)),
                evaluated_at: rfc3339(wall),
            });
        }
        self.forgotten.extend(expired.iter().cloned());
        for w in expired {
            if let Some(e) = self.entries.remove(&w)
                && let Some(m) = &self.metrics
            {
                for st in State::ALL {
                    m.state.remove(&StateLabels {
                        workload: w.clone(),
                        state: st.as_str(),
                    });
                }
                for code in e.reasons {
                    m.reason.remove(&ReasonGaugeLabels {
                        workload: w.clone(),
                        reason: code.as_str(),
                    });
                }
            }
        }
        out.sort_by(|a, b| {
            (a.kind, &a.name, &a.container_id).cmp(&(b.kind, &b.name, &b.container_id))
        });
        *self.shared.write().unwrap_or_else(|e| e.into_inner()) = Snapshot { workloads: out };
    }
}

/// RFC 3339 UTC with second precision ("2026-11-22T05:24:21Z").
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> WorkloadLabels {
        WorkloadLabels {
            workload_kind: "pod",
            workload: name.into(),
            pod_uid: name.into(),
            container_id: String::new(),
            kubernetes: Default::default(),
        }
    }

    fn config() -> VerdictConfig {
        VerdictConfig {
            geometry: Geometry {
                bucket: Duration::from_secs(1),
                count: 5,
            },
            ..VerdictConfig::default()
        }
    }

    fn state_of(e: &Engine, name: &str) -> Option<State> {
        e.shared()
            .read()
            .ok()?
            .workloads
            .iter()
            .find(|w| w.name == name)
            .map(|w| w.state)
    }

    #[test]
    fn rfc3339_formats_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_325_061);
        assert_eq!(rfc3339(t), "2026-11-22T05:24:21Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }

    /// One second of traffic per bucket: `errors` of 50 requests are 5xx.
    fn second(e: &mut Engine, w: &WorkloadLabels, t0: Instant, s: u64, errors: u64) {
        let now = t0 + Duration::from_secs(s) + Duration::from_millis(500);
        e.on_http_counts(
            w,
            HttpDelta {
                total: 50,
                r5xx: errors,
                ..HttpDelta::default()
            },
            now,
        );
        for _ in 0..50 {
            e.on_request(w, false, Some(200), Duration::from_millis(3), now);
        }
        e.tick(now, SystemTime::UNIX_EPOCH);
    }

    #[test]
    fn faults_enter_within_two_evaluations_and_leave_after_three() {
        let mut e = Engine::new(config(), 1, None);
        let (a, b) = (pod("a"), pod("b"));
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH;
        e.tick(t0, wall);
        // (second, errors of b, expected state of b after the tick at the end of that second);
        // seconds left out are quiet for b's errors but carry traffic (filled in below).
        let plan: &[(u64, u64, Option<State>)] = &[
            (0, 0, Some(State::Healthy)),
            (1, 0, Some(State::Healthy)),
            (2, 0, Some(State::Healthy)),
            // b fails: the window's error ratio crosses 20 % at once; two evaluations to enter.
            (3, 50, Some(State::Healthy)),
            (4, 50, Some(State::Unhealthy)),
            (5, 50, Some(State::Unhealthy)),
            // The failing seconds stay in the 5 s window until second 9 (50/250 = 20 %)…
            (6, 0, Some(State::Unhealthy)),
            (9, 0, Some(State::Unhealthy)),
            // …then three healthy evaluations to leave.
            (10, 0, Some(State::Unhealthy)),
            (11, 0, Some(State::Unhealthy)),
            (12, 0, Some(State::Healthy)),
        ];
        let mut next = 0;
        for (s, errors, want) in plan {
            for quiet in next..*s {
                second(&mut e, &a, t0, quiet, 0);
                second(&mut e, &b, t0, quiet, 0);
            }
            next = s + 1;
            second(&mut e, &a, t0, *s, 0);
            second(&mut e, &b, t0, *s, *errors);
            // The tick at the start of the next second closes this one.
            e.tick(t0 + Duration::from_secs(s + 1), wall);
            assert_eq!(state_of(&e, "b"), *want, "b at {s}");
            assert_eq!(state_of(&e, "a"), Some(State::Healthy), "a at {s}");
        }
    }

    #[test]
    fn loss_charged_to_one_workload_makes_only_that_one_unknown() {
        let mut e = Engine::new(config(), 1, None);
        let (a, b) = (pod("a"), pod("b"));
        let t0 = Instant::now();
        e.tick(t0, SystemTime::UNIX_EPOCH);
        for s in 0..3 {
            second(&mut e, &a, t0, s, 0);
            second(&mut e, &b, t0, s, 0);
        }
        e.tick(t0 + Duration::from_secs(3), SystemTime::UNIX_EPOCH);
        let at3 = t0 + Duration::from_secs(3) + Duration::from_millis(100);
        e.on_http_counts(
            &b,
            HttpDelta {
                lost: 2,
                ..HttpDelta::default()
            },
            at3,
        );
        second(&mut e, &a, t0, 3, 0);
        second(&mut e, &b, t0, 3, 0);
        e.tick(t0 + Duration::from_secs(4), SystemTime::UNIX_EPOCH);
        assert_eq!(state_of(&e, "a"), Some(State::Healthy));
        assert_eq!(state_of(&e, "b"), Some(State::Unknown));
        let snap = e.shared();
        let snap = snap.read().unwrap_or_else(|p| p.into_inner());
        let bh = snap.workloads.iter().find(|w| w.name == "b").expect("b");
        assert_eq!(
            bh.reasons.iter().map(|r| r.code).collect::<Vec<_>>(),
            vec![ReasonCode::EventsLost]
        );
    }

    #[test]
    fn lost_events_make_every_workload_unknown_for_the_window() {
        let mut e = Engine::new(config(), 1, None);
        let a = pod("a");
        let t0 = Instant::now();
        e.tick(t0, SystemTime::UNIX_EPOCH);
        for s in 0..3 {
            second(&mut e, &a, t0, s, 0);
        }
        e.tick(t0 + Duration::from_secs(3), SystemTime::UNIX_EPOCH);
        assert_eq!(state_of(&e, "a"), Some(State::Healthy));
        e.on_lost(1, t0 + Duration::from_secs(3));
        second(&mut e, &a, t0, 3, 0);
        e.tick(t0 + Duration::from_secs(4), SystemTime::UNIX_EPOCH);
        assert_eq!(state_of(&e, "a"), Some(State::Unknown));
        // Five buckets later the loss left the window.
        for s in 4..9 {
            second(&mut e, &a, t0, s, 0);
        }
        e.tick(t0 + Duration::from_secs(9), SystemTime::UNIX_EPOCH);
        assert_eq!(state_of(&e, "a"), Some(State::Healthy));
    }

    #[test]
    fn idle_workloads_turn_unknown_then_expire() {
        let mut e = Engine::new(config(), 1, None);
        let a = pod("a");
        let t0 = Instant::now();
        e.tick(t0, SystemTime::UNIX_EPOCH);
        for s in 0..3 {
            second(&mut e, &a, t0, s, 0);
        }
        // Idle for one window: no traffic → unknown.
        e.tick(t0 + Duration::from_secs(9), SystemTime::UNIX_EPOCH);
        assert_eq!(state_of(&e, "a"), Some(State::Unknown));
        // Idle for expire_windows windows: gone.
        e.tick(t0 + Duration::from_secs(40), SystemTime::UNIX_EPOCH);
        assert_eq!(state_of(&e, "a"), None);
    }

    #[test]
    fn probes_answering_while_traffic_fails_are_flagged() {
        let mut e = Engine::new(config(), 1, None);
        let w = pod("liar");
        let t0 = Instant::now();
        e.tick(t0, SystemTime::UNIX_EPOCH);
        for s in 0..4 {
            let now = t0 + Duration::from_secs(s);
            // 40 requests: 30 real 503s, 10 probe 200s.
            e.on_http_counts(
                &w,
                HttpDelta {
                    total: 40,
                    r5xx: 30,
                    ..HttpDelta::default()
                },
                now,
            );
            for _ in 0..10 {
                e.on_request(&w, true, Some(200), Duration::from_millis(1), now);
            }
            e.tick(now + Duration::from_millis(999), SystemTime::UNIX_EPOCH);
        }
        e.tick(t0 + Duration::from_secs(4), SystemTime::UNIX_EPOCH);
        let snap = e
            .shared()
            .read()
            .map(|s| s.workloads.clone())
            .unwrap_or_default();
        let h = &snap[0];
        assert_eq!(h.state, State::Unhealthy);
        assert!(h.probe_mismatch);
        assert_eq!(h.signals.requests, 120);
        assert!(
            h.reasons
                .iter()
                .any(|r| r.code == ReasonCode::ProbeMismatch),
            "{:?}",
            h.reasons
        );
    }
}
