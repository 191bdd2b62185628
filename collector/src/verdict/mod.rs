//! Per-workload health verdicts: sliding windows of signals (window), the statistics that
//! decide when evidence is conclusive (evidence), rules with hysteresis (rules), and the engine the aggregator drives: it records what the aggregator sees and, each
//! time a bucket closes, evaluates every workload and publishes the verdicts for the API and
//! Prometheus.
//!
//! The engine lives inside the aggregator's task (one owner); time is passed in (`now`, and
//! `wall` for the time of last change shown to people).

pub mod evidence;
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
use evidence::{Count, RatioEvidence, dispersion};
use rules::{Assessment, Context, Evidence, Hysteresis, Reason, ReasonCode, Rules, State, Tracker};
use window::{Bucket, Geometry, Series, Signals};

/// One evaluation a second; a 30 s long window (fast windows 3, 6 and 10 s, recent 5 s).
/// Why: ARCHITECTURE.md, "Health verdicts".
pub const DEFAULT_BUCKET: Duration = Duration::from_secs(1);
pub const DEFAULT_BUCKETS: usize = 30;
/// Long windows without any data before a workload is forgotten (5 min by default): until
/// then an idle workload is answered as unknown, with its reason.
pub const DEFAULT_EXPIRE_WINDOWS: u32 = 10;

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
    /// Time the window's data actually spans: less than `seconds` while a new workload's
    /// window fills. Rates are over this.
    pub covered_seconds: f64,
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
    /// Namespace, pod, container, workload and Services, when the Kubernetes API named the pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<crate::identity::PodNames>,
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

/// One per-request record's verdict input (`Engine::on_requests`).
#[derive(Clone, Copy, Debug)]
pub struct RequestInput {
    /// A probe path: counted apart from real traffic.
    pub probe: bool,
    /// None: panic, aborted or unobserved.
    pub status: Option<u16>,
    pub duration: Duration,
}

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
    /// Wall-clock time of the last state change (the first evaluation until one happens),
    /// formatted once (RFC 3339), not at every evaluation.
    last_change: Option<String>,
    reasons: BTreeSet<ReasonCode>,
    mismatch: bool,
    /// Epoch the entry was created at (so a new workload is not expired before it had data).
    born: u64,
    /// Epoch the workload was last registered as known without data (`Engine::register`):
    /// it is not expired before `expire_windows` windows after that either.
    known: u64,
    /// Newest bucket with data, remembered past the window (the series forgets it once it
    /// leaves the long window, and expiry counts from it).
    last_data: Option<u64>,
    /// Consecutive evaluations in which long-window evidence alone called for a worse state.
    sustained: u64,
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

    fn entry(&mut self, w: &WorkloadLabels, now: Instant) -> (&mut Entry, u64) {
        let epoch = self.epoch(now).max(self.open);
        // Looked up before `entry`: that takes an owned key, a clone of four strings, on every
        // call, and the workload is almost always there.
        if self.entries.contains_key(w) {
            let entry = self.entries.get_mut(w).expect("checked above");
            return (entry, epoch);
        }
        let entry = self.entries.entry(w.clone()).or_insert_with(|| Entry {
            series: Series::default(),
            tracker: Tracker::default(),
            http_seen: false,
            last_change: None,
            reasons: BTreeSet::new(),
            mismatch: false,
            born: epoch,
            known: epoch,
            last_data: None,
            sustained: 0,
        });
        (entry, epoch)
    }

    fn bucket(&mut self, w: &WorkloadLabels, now: Instant) -> &mut window::Bucket {
        let (entry, epoch) = self.entry(w, now);
        entry.series.at(epoch)
    }

    /// A workload the collector knows without traffic of its own yet (a Go server it
    /// instrumented, a process the kernel announced): from the next evaluation on it answers
    /// `unknown` with its reason (`no_traffic`) instead of not at all. `http` says it serves
    /// instrumented HTTP. Registering again keeps it known; once no longer registered and
    /// without data, it expires like any workload (`expire_windows`).
    pub fn register(&mut self, w: &WorkloadLabels, http: bool, now: Instant) {
        let (entry, epoch) = self.entry(w, now);
        entry.known = entry.known.max(epoch);
        entry.http_seen |= http;
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
        self.on_requests(
            w,
            &[RequestInput {
                probe,
                status,
                duration,
            }],
            now,
        );
    }

    /// Per-request records of one workload, as the aggregator gathers them per batch: one
    /// workload lookup for all of them.
    pub fn on_requests(&mut self, w: &WorkloadLabels, requests: &[RequestInput], now: Instant) {
        if requests.is_empty() {
            return;
        }
        let thresholds = self.config.rules.latency_thresholds_ms();
        let (entry, epoch) = self.entry(w, now);
        entry.http_seen = true;
        let b = entry.series.at(epoch);
        for r in requests {
            if r.probe {
                b.probe_records += 1;
                if !r.status.is_some_and(|s| (200..300).contains(&s)) {
                    b.probe_bad_records += 1;
                }
                if r.status.is_some_and(|s| s >= 500) {
                    b.probe_5xx_records += 1;
                }
                continue;
            }
            b.latency.observe(r.duration);
            let ms = r.duration.as_secs_f64() * 1e3;
            for (slow, t) in b.slow.iter_mut().zip(thresholds) {
                *slow += u64::from(ms > t);
            }
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
        let evaluated_at = rfc3339(wall);
        let mut out = Vec::with_capacity(self.entries.len());
        let mut expired = Vec::new();
        for (w, e) in &mut self.entries {
            // Before the window is trimmed: the series only holds the long window.
            e.last_data = e.series.last_active().max(e.last_data);
            let last = e.last_data.unwrap_or(e.born).max(e.known);
            if closed >= last + expire {
                expired.push(w.clone());
                continue;
            }
            e.series.advance(closed, g.count);
            let sum = e.series.sum();
            // Buckets of data the window spans: since the workload was first seen.
            let covered = (closed + 1).saturating_sub(e.born).clamp(1, g.count as u64);
            let covered_time = g.bucket * covered as u32;
            let every = self.sample_every;
            let evidence = Evidence {
                signals: Signals::from_bucket(sum, covered_time, every),
                covered_seconds: covered_time.as_secs_f64(),
                errors: ratio_evidence(&e.series, g, closed, covered, |b| {
                    let (requests, errors) = b.requests_errors(every);
                    (errors, requests)
                }),
                retransmits: ratio_evidence(&e.series, g, closed, covered, |b| {
                    (b.retransmits, b.send_calls)
                }),
                slow: std::array::from_fn(|i| {
                    ratio_evidence(&e.series, g, closed, covered, |b| {
                        (b.slow[i], b.latency.count())
                    })
                }),
            };
            let ctx = Context {
                events_lost: lost + sum.lost,
                http_seen: e.http_seen,
            };
            let mut a = self.config.rules.assess(&evidence, ctx);
            let signals = evidence.signals;
            let candidate = sustain(&mut a, e, g.sustain());
            if let Some(from) = e.tracker.step(candidate, self.config.hysteresis) {
                e.last_change = Some(evaluated_at.clone());
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
            // Reasons shown are the candidate's; the state is the hysteresis state, and when
            // hysteresis holds it worse than the candidate, a reason says so.
            if let Some(r) = hold_reason(&e.tracker, candidate, self.config.hysteresis) {
                a.reasons.insert(0, r);
            }
            let codes: BTreeSet<ReasonCode> = a
                .reasons
                .iter()
                .filter(|r| !r.watching)
                .map(|r| r.code)
                .collect();
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
                kubernetes: w.kubernetes.0.clone(),
                state: e.tracker.state,
                reasons: a.reasons,
                probe_mismatch: a.probe_mismatch,
                signals,
                window: WindowInfo {
                    bucket_seconds: g.bucket.as_secs_f64(),
                    buckets: g.count,
                    seconds: span.as_secs_f64(),
                    covered_seconds: covered_time.as_secs_f64(),
                },
                sampling: Sampling {
                    http_sample_every: self.sample_every,
                    counts_exact: true,
                    records_sampled: self.sample_every > 1,
                },
                last_change: e
                    .last_change
                    .get_or_insert_with(|| evaluated_at.clone())
                    .clone(),
                evaluated_at: evaluated_at.clone(),
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

/// The reason a state worse than the candidate is held by hysteresis: "recovering to
/// healthy, 2 more evaluations". None when the state is not worse than the candidate.
fn hold_reason(t: &Tracker, candidate: State, h: Hysteresis) -> Option<Reason> {
    let (to, more) = t.recovering(h).or_else(|| {
        // The state was just entered by a mixed improving streak (to the most severe state
        // of it) while the candidate is better still: the count starts again.
        let worse = match (t.state.severity(), candidate.severity()) {
            (Some(s), Some(c)) => s > c,
            _ => false,
        };
        worse.then_some((candidate, h.leave.max(1)))
    })?;
    Some(Reason {
        code: ReasonCode::Recovering,
        state: t.state,
        message: format!(
            "recovering to {}, {more} more evaluation{}",
            to.as_str(),
            if more == 1 { "" } else { "s" },
        ),
        watching: false,
    })
}

/// A worse state that no prompt decision (unhealthy from a fast window) calls for must be
/// called for in `need` more evaluations than not before it is the candidate (a leaky
/// count: +1 when called for, −1 when not). A background near a threshold crosses it by
/// chance now and then, but only briefly; a fault, even one whose thin evidence flickers
/// over and under the bar, keeps being called for. Until then its reasons are marked as
/// watching and say how far the count is; the candidate is the state the prompt evidence
/// calls for (never better than the current one, so a hold is not read as a recovery).
fn sustain(a: &mut Assessment, e: &mut Entry, need: u64) -> State {
    let current = e.tracker.state.severity().unwrap_or(0);
    let worse = a.state.severity().is_some_and(|s| s > current);
    if !worse || a.prompt_state == a.state {
        e.sustained = e.sustained.saturating_sub(1);
        return a.state;
    }
    e.sustained += 1;
    if e.sustained >= need {
        e.sustained = 0;
        return a.state;
    }
    let held = a.prompt_state.severity().unwrap_or(0).max(current);
    for r in &mut a.reasons {
        if !r.watching && r.state.severity().is_some_and(|s| s > held) {
            r.watching = true;
            r.message
                .push_str(&format!(" (sustained {} of {need})", e.sustained));
        }
    }
    if e.tracker.state == State::Unknown || a.prompt_state.severity() >= e.tracker.state.severity()
    {
        a.prompt_state
    } else {
        e.tracker.state
    }
}

/// One ratio's counts over the fast, long and recent windows ending at `closed`; `f` gives a
/// bucket's (hits, trials). Window lengths are capped at the `covered` buckets.
fn ratio_evidence(
    series: &Series,
    g: Geometry,
    closed: u64,
    covered: u64,
    f: impl Fn(&Bucket) -> (u64, u64),
) -> RatioEvidence {
    let pair = |b: &Bucket| {
        let (k, n) = f(b);
        (k.min(n), n)
    };
    let count = |n: usize| {
        let (hits, total) = series
            .iter_window(closed, n)
            .map(pair)
            .fold((0, 0), |(a, b), (k, t)| (a + k, b + t));
        Count {
            hits,
            total,
            secs: (g.bucket * (n as u64).min(covered) as u32).as_secs_f64(),
        }
    };
    RatioEvidence {
        fast: g.fast().into_iter().map(count).collect(),
        long: count(g.count),
        dispersion: dispersion(series.iter_window(closed, g.count).map(pair)),
        recent: count(g.recent()),
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

    fn reasons_of(e: &Engine, name: &str) -> Vec<(ReasonCode, bool)> {
        e.shared()
            .read()
            .map(|s| {
                s.workloads
                    .iter()
                    .filter(|w| w.name == name)
                    .flat_map(|w| w.reasons.iter().map(|r| (r.code, r.watching)))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn faults_enter_at_once_and_leave_after_three() {
        let mut e = Engine::new(config(), 1, None);
        let (a, b) = (pod("a"), pod("b"));
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH;
        e.tick(t0, wall);
        // (second, errors of b, expected state of b after the tick at the end of that second,
        // its reasons); 1 s × 5: fast windows 1 and 2 s, recent 1 s.
        let hold = |n| vec![(ReasonCode::Recovering, false), (ReasonCode::ErrorRatio, n)];
        type Step = (u64, u64, State, Vec<(ReasonCode, bool)>);
        let plan: Vec<Step> = vec![
            (0, 0, State::Healthy, vec![]),
            (2, 0, State::Healthy, vec![]),
            // b fails: 50 of 50 in one second is conclusive at once (CI 88–100 %).
            (
                3,
                50,
                State::Unhealthy,
                vec![(ReasonCode::ErrorRatio, false)],
            ),
            (
                5,
                50,
                State::Unhealthy,
                vec![(ReasonCode::ErrorRatio, false)],
            ),
            // The 2 s fast window still holds second 5.
            (
                6,
                0,
                State::Unhealthy,
                vec![(ReasonCode::ErrorRatio, false)],
            ),
            // The long window still shows the fault, the recent one does not: watched, and
            // hysteresis says what holds the state.
            (7, 0, State::Unhealthy, hold(true)),
            (8, 0, State::Unhealthy, hold(true)),
            (9, 0, State::Healthy, vec![(ReasonCode::ErrorRatio, true)]),
            (10, 0, State::Healthy, vec![]),
        ];
        let mut next = 0;
        for (s, errors, want, reasons) in plan {
            for quiet in next..s {
                second(&mut e, &a, t0, quiet, 0);
                second(&mut e, &b, t0, quiet, 0);
            }
            next = s + 1;
            second(&mut e, &a, t0, s, 0);
            second(&mut e, &b, t0, s, errors);
            // The tick at the start of the next second closes this one.
            e.tick(t0 + Duration::from_secs(s + 1), wall);
            assert_eq!(state_of(&e, "b"), Some(want), "b at {s}");
            assert_eq!(reasons_of(&e, "b"), reasons, "b at {s}");
            assert_eq!(state_of(&e, "a"), Some(State::Healthy), "a at {s}");
        }
        let snap = e.shared();
        let snap = snap.read().unwrap_or_else(|p| p.into_inner());
        let bh = snap.workloads.iter().find(|w| w.name == "b").expect("b");
        assert_eq!(bh.window.covered_seconds, 5.0);
    }

    #[test]
    fn recovering_says_how_many_evaluations_remain() {
        let mut e = Engine::new(config(), 1, None);
        let b = pod("b");
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH;
        e.tick(t0, wall);
        for s in 0..3 {
            second(&mut e, &b, t0, s, 50);
        }
        for s in 3..6 {
            second(&mut e, &b, t0, s, 0);
        }
        e.tick(t0 + Duration::from_secs(6), wall);
        let snap = e.shared();
        let snap = snap.read().unwrap_or_else(|p| p.into_inner());
        let r = &snap.workloads[0].reasons[0];
        assert_eq!(
            (r.code, r.state, r.message.as_str()),
            (
                ReasonCode::Recovering,
                State::Unhealthy,
                "recovering to healthy, 1 more evaluation"
            )
        );
    }

    #[test]
    fn a_state_held_by_hysteresis_always_says_so() {
        let h = Hysteresis::default();
        let mut t = Tracker::default();
        // (candidate, state after, hold reason's message)
        let steps = [
            (State::Unhealthy, State::Unhealthy, None),
            (
                State::Degraded,
                State::Unhealthy,
                Some("recovering to degraded, 2 more evaluations"),
            ),
            (
                State::Healthy,
                State::Unhealthy,
                Some("recovering to degraded, 1 more evaluation"),
            ),
            // Third better evaluation: to the most severe of the streak (degraded), while the
            // candidate is healthy: still held, and said so.
            (
                State::Healthy,
                State::Degraded,
                Some("recovering to healthy, 3 more evaluations"),
            ),
            (
                State::Healthy,
                State::Degraded,
                Some("recovering to healthy, 2 more evaluations"),
            ),
            (State::Degraded, State::Degraded, None),
        ];
        for (candidate, state, message) in steps {
            t.step(candidate, h);
            let r = hold_reason(&t, candidate, h);
            assert_eq!(
                (t.state, r.as_ref().map(|r| r.message.as_str())),
                (state, message),
                "{candidate:?}"
            );
            if let Some(r) = r {
                assert_eq!(
                    (r.code, r.state, r.watching),
                    (ReasonCode::Recovering, state, false)
                );
            }
        }
    }

    #[test]
    fn rates_are_over_the_time_covered() {
        // A 30 s window, 19 req/s for 4 s: 19 req/s, not 76 / 30.
        let mut e = Engine::new(VerdictConfig::default(), 1, None);
        let w = pod("new");
        let t0 = Instant::now();
        e.tick(t0, SystemTime::UNIX_EPOCH);
        for s in 0..4 {
            let now = t0 + Duration::from_secs(s) + Duration::from_millis(500);
            e.on_http_counts(
                &w,
                HttpDelta {
                    total: 19,
                    ..HttpDelta::default()
                },
                now,
            );
        }
        e.tick(t0 + Duration::from_secs(4), SystemTime::UNIX_EPOCH);
        let snap = e.shared();
        let snap = snap.read().unwrap_or_else(|p| p.into_inner());
        let h = &snap.workloads[0];
        assert_eq!(h.signals.requests, 76);
        assert_eq!(h.signals.requests_per_second, 19.0);
        assert_eq!((h.window.seconds, h.window.covered_seconds), (30.0, 4.0));
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
        assert_eq!(reasons_of(&e, "a"), vec![(ReasonCode::NoTraffic, false)]);
        // Idle for almost expire_windows (10) windows of 5 s: still known, still unknown.
        e.tick(t0 + Duration::from_secs(50), SystemTime::UNIX_EPOCH);
        assert_eq!(state_of(&e, "a"), Some(State::Unknown));
        // Idle for expire_windows windows: gone.
        e.tick(t0 + Duration::from_secs(60), SystemTime::UNIX_EPOCH);
        assert_eq!(state_of(&e, "a"), None);
    }

    /// Catches: a workload the collector knows (an instrumented Go server, an announced
    /// process) but that has no traffic answering nothing (404 on `/v1/workload`) instead of
    /// `unknown` with its reason; a registered idle workload never expiring once it is no
    /// longer registered, or expiring while it still is.
    #[test]
    fn registered_workloads_without_traffic_are_unknown_for_no_traffic() {
        let mut e = Engine::new(config(), 1, None);
        let w = pod("idle");
        let t0 = Instant::now();
        e.tick(t0, SystemTime::UNIX_EPOCH);
        e.register(&w, true, t0 + Duration::from_millis(100));
        e.tick(t0 + Duration::from_secs(1), SystemTime::UNIX_EPOCH);
        assert_eq!(state_of(&e, "idle"), Some(State::Unknown));
        assert_eq!(reasons_of(&e, "idle"), vec![(ReasonCode::NoTraffic, false)]);
        // Registered again and again (as at every harvest): known well past the expiry of
        // 10 windows of 5 s.
        for s in 1..80 {
            let now = t0 + Duration::from_secs(s);
            e.register(&w, true, now);
            e.tick(now, SystemTime::UNIX_EPOCH);
        }
        assert_eq!(state_of(&e, "idle"), Some(State::Unknown));
        // Traffic: judged.
        for s in 80..83 {
            second(&mut e, &w, t0, s, 0);
        }
        e.tick(t0 + Duration::from_secs(83), SystemTime::UNIX_EPOCH);
        assert_eq!(state_of(&e, "idle"), Some(State::Healthy));
        assert_eq!(reasons_of(&e, "idle"), vec![]);
        // No longer registered and no data: expires with the usual expiry (its last data in
        // bucket 82, its last registration in 79).
        e.tick(t0 + Duration::from_secs(82 + 50), SystemTime::UNIX_EPOCH);
        assert_eq!(state_of(&e, "idle"), Some(State::Unknown));
        e.tick(t0 + Duration::from_secs(82 + 51), SystemTime::UNIX_EPOCH);
        assert_eq!(state_of(&e, "idle"), None);
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

    /// SplitMix64: seeded, so every simulation below is the same on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn uniform(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }

        /// Knuth's method (λ per harvest stays small).
        fn poisson(&mut self, lambda: f64) -> u64 {
            let l = (-lambda).exp();
            let (mut k, mut p) = (0, 1.0);
            loop {
                p *= self.uniform();
                if p <= l {
                    return k;
                }
                k += 1;
            }
        }

        fn binomial(&mut self, n: u64, p: f64) -> u64 {
            (0..n).filter(|_| self.uniform() < p).count() as u64
        }
    }

    /// Traffic of one workload for `secs` seconds: requests/s, error probability, send
    /// calls/s, retransmit probability per send.
    #[derive(Clone, Copy, Debug)]
    struct Phase {
        secs: u64,
        rps: f64,
        error: f64,
        sends: f64,
        retransmit: f64,
    }

    /// Noise on top of the phases: per-second error probability spread ±40 %, and bursts of
    /// 3× the request rate (5 s, about once a minute).
    #[derive(Clone, Copy, PartialEq)]
    enum Noise {
        Poisson,
        Bursty,
    }

    /// Drives one workload through `phases` with 200 ms harvests (as the collector does),
    /// starting 300 ms into a bucket so faults begin mid-bucket. Per request: a record with a
    /// heavy-tailed duration (Pareto, α 2.5 from 20 ms: p95 ≈ 66 ms, p99.99 ≈ 800 ms).
    /// Returns (ms since start, state) after each harvest.
    fn simulate(
        config: VerdictConfig,
        phases: &[Phase],
        seed: u64,
        noise: Noise,
    ) -> Vec<(u64, State)> {
        let mut e = Engine::new(config, 1, None);
        let w = pod("sim");
        let mut rng = Rng(seed);
        let t0 = Instant::now();
        e.tick(t0, SystemTime::UNIX_EPOCH);
        let start = t0 + Duration::from_millis(300);
        let mut out = Vec::new();
        let (mut ms, mut burst_until, mut second_error) = (0u64, 0u64, 0.0);
        for ph in phases {
            for _ in 0..ph.secs * 5 {
                ms += 200;
                if ms % 1000 == 200 {
                    second_error = match noise {
                        Noise::Poisson => ph.error,
                        Noise::Bursty => ph.error * (0.6 + 0.8 * rng.uniform()),
                    };
                    if noise == Noise::Bursty && rng.uniform() < 1.0 / 60.0 {
                        burst_until = ms + 5000;
                    }
                }
                let rate = if ms < burst_until {
                    3.0 * ph.rps
                } else {
                    ph.rps
                };
                let now = start + Duration::from_millis(ms);
                let n = rng.poisson(rate * 0.2);
                let errors = rng.binomial(n, second_error);
                e.on_http_counts(
                    &w,
                    HttpDelta {
                        total: n,
                        r5xx: errors,
                        ..HttpDelta::default()
                    },
                    now,
                );
                for i in 0..n {
                    let ms = 20.0 * (1.0 - rng.uniform()).powf(-1.0 / 2.5);
                    let status = if i < errors { 503 } else { 200 };
                    e.on_request(
                        &w,
                        false,
                        Some(status),
                        Duration::from_secs_f64(ms / 1e3),
                        now,
                    );
                }
                let sends = rng.poisson(ph.sends * 0.2);
                let stats = TcpStats {
                    send_calls: sends,
                    retransmit_segs: rng.binomial(sends, ph.retransmit),
                    ..TcpStats::default()
                };
                e.on_tcp(&w, &stats, now);
                e.tick(now, SystemTime::UNIX_EPOCH);
                if let Some(st) = state_of(&e, "sim") {
                    out.push((ms, st));
                }
            }
        }
        out
    }

    /// Seconds from `from` ms until the first state matching `pred`.
    fn time_to(trace: &[(u64, State)], from: u64, pred: impl Fn(State) -> bool) -> Option<f64> {
        trace
            .iter()
            .find(|(t, st)| *t > from && pred(*st))
            .map(|(t, _)| (t - from) as f64 / 1e3)
    }

    /// State changes after `from` ms.
    fn transitions(trace: &[(u64, State)], from: u64) -> Vec<(u64, State, State)> {
        trace
            .windows(2)
            .filter(|w| w[0].0 >= from && w[0].1 != w[1].1)
            .map(|w| (w[1].0, w[0].1, w[1].1))
            .collect()
    }

    const HEALTHY: Phase = Phase {
        secs: 60,
        rps: 20.0,
        error: 0.01,
        sends: 20.0,
        retransmit: 0.002,
    };

    /// Seeds of the simulations: `VERDICT_SIM_SEEDS` runs more (the figures in
    /// ARCHITECTURE.md are from 200 fault sequences and 40 half-hour soaks).
    fn sim_seeds(default: u64) -> u64 {
        std::env::var("VERDICT_SIM_SEEDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// (median, 95th percentile, max).
    fn spread(v: &mut [f64]) -> (f64, f64, f64) {
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        (at(0.5), at(0.95), at(1.0))
    }

    #[test]
    fn defaults_meet_the_timing_targets_on_simulated_faults() {
        // 20 req/s, one send per response: 60 s healthy (1 % errors, 0.2 % retransmits),
        // 30 s of 30 % errors, 60 s healthy, 30 s of 10 % packet loss (10 % of sends
        // retransmitted), 60 s healthy. Targets: unhealthy within 10 s of the error fault, at
        // least degraded within 15 s of the loss, healthy within 20 s of each end, no change
        // while healthy. Errors and retransmits are drawn, so the realised ratio of a seed can
        // sit well under the fault's (a 30 % fault reads 19–23 % over 6 s in seed 14): the
        // detection targets are asserted on the 95th percentile, every seed must get there
        // while the fault lasts, and recovery is asserted on every seed.
        let phases = [
            HEALTHY,
            Phase {
                secs: 30,
                error: 0.30,
                ..HEALTHY
            },
            HEALTHY,
            Phase {
                secs: 30,
                retransmit: 0.10,
                ..HEALTHY
            },
            HEALTHY,
        ];
        // Seconds to unhealthy, to degraded or worse, to healthy again.
        let mut times: [Vec<f64>; 3] = Default::default();
        let seeds = sim_seeds(40);
        for seed in 1..=seeds {
            let trace = simulate(VerdictConfig::default(), &phases, seed, Noise::Poisson);
            let changes = transitions(&trace, 0);
            assert!(
                changes
                    .iter()
                    .filter(|c| c.0 <= 60_000)
                    .all(|c| c.1 == State::Unknown),
                "seed {seed}: changed while healthy: {changes:?}"
            );
            let unhealthy_now = |s: State| s == State::Unhealthy;
            let worse = |s: State| matches!(s, State::Degraded | State::Unhealthy);
            let healthy = |s: State| s == State::Healthy;
            type Check<'a> = (u64, &'a dyn Fn(State) -> bool, usize);
            let checks: [Check<'_>; 4] = [
                (60_000, &unhealthy_now, 0),
                (90_000, &healthy, 2),
                (150_000, &worse, 1),
                (180_000, &healthy, 2),
            ];
            for (from, pred, slot) in checks {
                let t = time_to(&trace, from, pred);
                assert!(
                    t.is_some_and(|t| t <= 30.0),
                    "seed {seed}: not within 30 s of {from} ms: {changes:?}"
                );
                times[slot].push(t.unwrap_or(f64::INFINITY));
            }
            assert_eq!(trace.last().map(|(_, s)| *s), Some(State::Healthy));
        }
        let [u, d, h] = times.map(|mut v| spread(&mut v));
        eprintln!(
            "{seeds} seeds, (median, p95, max) s: unhealthy {u:?}, degraded {d:?}, healthy again {h:?}"
        );
        assert!(u.1 <= 10.0, "unhealthy p95 {u:?}");
        assert!(d.1 <= 15.0, "degraded p95 {d:?}");
        assert!(h.2 <= 20.0, "healthy again, max {h:?}");
    }

    #[test]
    fn no_flaps_on_stationary_noisy_traffic() {
        // 30 minutes of a 5 % error background (at the degraded threshold), heavy-tailed
        // latencies, bursts of 3× the rate and per-second error rates spread ±40 %, at 20 and
        // 100 req/s; 0.5 % retransmits. No change but unknown → healthy at the start.
        // (Over 40 such half-hours, one had a transition pair: a stretch whose drawn errors
        // reached 208 of 3,017 requests in 30 s, 4.8 binomial standard errors over 5 %.)
        let mut bad = Vec::new();
        for i in 0..sim_seeds(4) {
            let (seed, rps) = (11 + i, if i % 2 == 0 { 20.0 } else { 100.0 });
            let phase = Phase {
                secs: 1800,
                rps,
                error: 0.05,
                sends: rps,
                retransmit: 0.005,
            };
            let trace = simulate(VerdictConfig::default(), &[phase], seed, Noise::Bursty);
            // The first evaluation may already be healthy (no unknown to leave).
            let changes: Vec<_> = transitions(&trace, 0)
                .into_iter()
                .filter(|c| c.1 != State::Unknown)
                .collect();
            if !changes.is_empty() {
                bad.push((seed, rps, changes));
            }
        }
        assert_eq!(bad, vec![]);
    }
}
