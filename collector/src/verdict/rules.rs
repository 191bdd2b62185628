//! Rules: a window's signals → a candidate state with reasons; hysteresis turns candidates
//! into the verdict so it does not flap.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::window::Signals;

/// A workload's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Healthy,
    Degraded,
    Unhealthy,
    /// Not enough data to judge: no traffic, not instrumented, or events lost.
    Unknown,
}

impl State {
    pub const ALL: [State; 4] = [
        State::Healthy,
        State::Degraded,
        State::Unhealthy,
        State::Unknown,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Degraded => "degraded",
            State::Unhealthy => "unhealthy",
            State::Unknown => "unknown",
        }
    }

    /// Badness of a known state; Unknown has none.
    const fn severity(self) -> Option<u8> {
        match self {
            State::Healthy => Some(0),
            State::Degraded => Some(1),
            State::Unhealthy => Some(2),
            State::Unknown => None,
        }
    }
}

impl std::str::FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a state (healthy, degraded, unhealthy, unknown)"))
    }
}

/// The bounded set of reason codes (label values of `collector_verdict_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    ErrorRatio,
    LatencyP95,
    LatencyP99,
    RetransmitRatio,
    ResetRate,
    FailedConnectRate,
    NoTraffic,
    NotInstrumented,
    EventsLost,
    ProbeMismatch,
}

impl ReasonCode {
    pub const ALL: [ReasonCode; 10] = [
        ReasonCode::ErrorRatio,
        ReasonCode::LatencyP95,
        ReasonCode::LatencyP99,
        ReasonCode::RetransmitRatio,
        ReasonCode::ResetRate,
        ReasonCode::FailedConnectRate,
        ReasonCode::NoTraffic,
        ReasonCode::NotInstrumented,
        ReasonCode::EventsLost,
        ReasonCode::ProbeMismatch,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ReasonCode::ErrorRatio => "error_ratio",
            ReasonCode::LatencyP95 => "latency_p95",
            ReasonCode::LatencyP99 => "latency_p99",
            ReasonCode::RetransmitRatio => "retransmit_ratio",
            ReasonCode::ResetRate => "reset_rate",
            ReasonCode::FailedConnectRate => "failed_connect_rate",
            ReasonCode::NoTraffic => "no_traffic",
            ReasonCode::NotInstrumented => "not_instrumented",
            ReasonCode::EventsLost => "events_lost",
            ReasonCode::ProbeMismatch => "probe_mismatch",
        }
    }
}

/// One reason: a code for labels and a sentence for people.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reason {
    pub code: ReasonCode,
    /// The state this reason calls for.
    pub state: State,
    pub message: String,
}

/// Degraded and unhealthy thresholds of one signal (a value at or above `degraded` is
/// degraded, at or above `unhealthy` unhealthy).
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    pub degraded: f64,
    pub unhealthy: f64,
}

/// Rule settings (`[verdict]` in the configuration file).
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    /// Real requests per window below which HTTP rules do not judge.
    pub min_requests: u64,
    /// (5xx + panics + aborted) / requests.
    pub error_ratio: Thresholds,
    /// p95 / p99 request duration, in ms.
    pub p95_ms: Thresholds,
    pub p99_ms: Thresholds,
    /// Send calls per window below which the retransmit rule does not judge.
    pub min_send_calls: u64,
    /// retransmitted segments / send calls.
    pub retransmit_ratio: Thresholds,
    /// Resets (sent + received) per second.
    pub resets_per_second: Thresholds,
    /// Failed outgoing connects per second.
    pub failed_connects_per_second: Thresholds,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            min_requests: 20,
            error_ratio: Thresholds {
                degraded: 0.05,
                unhealthy: 0.20,
            },
            p95_ms: Thresholds {
                degraded: 500.0,
                unhealthy: 2000.0,
            },
            p99_ms: Thresholds {
                degraded: 1000.0,
                unhealthy: 5000.0,
            },
            min_send_calls: 200,
            retransmit_ratio: Thresholds {
                degraded: 0.02,
                unhealthy: 0.10,
            },
            resets_per_second: Thresholds {
                degraded: 5.0,
                unhealthy: 50.0,
            },
            failed_connects_per_second: Thresholds {
                degraded: 1.0,
                unhealthy: 10.0,
            },
        }
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

fn pct(v: f64) -> String {
    format!("{:.1} %", v * 100.0)
}

/// What the rules say about one window.
#[derive(Clone, Debug, PartialEq)]
pub struct Assessment {
    pub state: State,
    pub reasons: Vec<Reason>,
    /// Probe paths disagree with real traffic.
    pub probe_mismatch: bool,
}

/// Inputs beyond the signals: whether records were lost anywhere during the window, and
/// whether the workload was ever seen serving instrumented HTTP.
#[derive(Clone, Copy, Debug, Default)]
pub struct Context {
    pub events_lost: u64,
    pub http_seen: bool,
}

impl Rules {
    /// The candidate state of one window (before hysteresis).
    pub fn assess(&self, s: &Signals, span: Duration, ctx: Context) -> Assessment {
        let over = secs(span);
        if ctx.events_lost > 0 {
            return Assessment {
                state: State::Unknown,
                reasons: vec![Reason {
                    code: ReasonCode::EventsLost,
                    state: State::Unknown,
                    message: format!(
                        "{} events lost by the collector over {over}: signals incomplete",
                        ctx.events_lost
                    ),
                }],
                probe_mismatch: false,
            };
        }
        let mut reasons = Vec::new();
        let mut judged = false;
        let mut check =
            |code, value: Option<f64>, t: &Thresholds, msg: &dyn Fn(f64, f64) -> String| {
                let Some(v) = value else { return };
                judged = true;
                let (state, limit) = if v >= t.unhealthy {
                    (State::Unhealthy, t.unhealthy)
                } else if v >= t.degraded {
                    (State::Degraded, t.degraded)
                } else {
                    return;
                };
                reasons.push(Reason {
                    code,
                    state,
                    message: msg(v, limit),
                });
            };
        let http = s.requests >= self.min_requests;
        check(
            ReasonCode::ErrorRatio,
            s.error_ratio.filter(|_| http),
            &self.error_ratio,
            &|v, l| {
                format!(
                    "error ratio {} ≥ {} over {over} ({} of {} requests)",
                    pct(v),
                    pct(l),
                    s.errors,
                    s.requests
                )
            },
        );
        check(
            ReasonCode::LatencyP95,
            s.p95_ms.filter(|_| http),
            &self.p95_ms,
            &|v, l| format!("p95 {v:.0} ms ≥ {l:.0} ms over {over}"),
        );
        check(
            ReasonCode::LatencyP99,
            s.p99_ms.filter(|_| http),
            &self.p99_ms,
            &|v, l| format!("p99 {v:.0} ms ≥ {l:.0} ms over {over}"),
        );
        check(
            ReasonCode::RetransmitRatio,
            s.retransmit_ratio
                .filter(|_| s.send_calls >= self.min_send_calls),
            &self.retransmit_ratio,
            &|v, l| {
                format!(
                    "retransmits {} of sends ≥ {} over {over} ({} segments)",
                    pct(v),
                    pct(l),
                    s.retransmits
                )
            },
        );
        let tcp_active = s.send_calls >= self.min_send_calls || http;
        check(
            ReasonCode::ResetRate,
            tcp_active.then_some(s.resets_per_second),
            &self.resets_per_second,
            &|v, l| format!("{v:.1} resets/s ≥ {l} /s over {over}"),
        );
        check(
            ReasonCode::FailedConnectRate,
            (s.failed_connects > 0).then_some(s.failed_connects_per_second),
            &self.failed_connects_per_second,
            &|v, l| format!("{v:.1} failed connects/s ≥ {l} /s over {over}"),
        );
        if !judged {
            let (code, message) = if ctx.http_seen || s.requests > 0 || s.probe_requests > 0 {
                (
                    ReasonCode::NoTraffic,
                    format!(
                        "{} requests and {} sends over {over}: below {} requests / {} sends",
                        s.requests, s.send_calls, self.min_requests, self.min_send_calls
                    ),
                )
            } else if s.send_calls > 0 {
                (
                    ReasonCode::NotInstrumented,
                    format!(
                        "no instrumented HTTP and {} sends over {over} (below {})",
                        s.send_calls, self.min_send_calls
                    ),
                )
            } else {
                (ReasonCode::NoTraffic, format!("no traffic over {over}"))
            };
            return Assessment {
                state: State::Unknown,
                reasons: vec![Reason {
                    code,
                    state: State::Unknown,
                    message,
                }],
                probe_mismatch: false,
            };
        }
        let state = reasons
            .iter()
            .map(|r| r.state)
            .max_by_key(|st| st.severity())
            .unwrap_or(State::Healthy);
        // "/healthz lies": probes 2xx while real traffic is unhealthy, or probes failing while
        // real traffic (with volume) is healthy.
        let mut probe_mismatch = false;
        if s.probe_requests > 0 {
            if state == State::Unhealthy && s.probe_failures == 0 {
                probe_mismatch = true;
                reasons.push(Reason {
                    code: ReasonCode::ProbeMismatch,
                    state,
                    message: format!(
                        "probe paths answered 2xx ({} probes) while real traffic is unhealthy over {over}",
                        s.probe_requests
                    ),
                });
            } else if state == State::Healthy && http && s.probe_failures * 2 > s.probe_requests {
                probe_mismatch = true;
                reasons.push(Reason {
                    code: ReasonCode::ProbeMismatch,
                    state,
                    message: format!(
                        "probe paths failing ({} of {} non-2xx) while real traffic is healthy over {over}",
                        s.probe_failures, s.probe_requests
                    ),
                });
            }
        }
        Assessment {
            state,
            reasons,
            probe_mismatch,
        }
    }
}

/// Consecutive evaluations needed to change state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hysteresis {
    /// To enter a worse state.
    pub enter: u32,
    /// To leave a state for a better one.
    pub leave: u32,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Self { enter: 2, leave: 3 }
    }
}

/// The hysteresis state machine of one workload.
///
/// Unknown is entered at once (we cannot judge, so we must not keep claiming a verdict) and
/// left at once for healthy; from unknown, degraded and unhealthy still need `enter`
/// consecutive evaluations (unknown counts as healthy for that). Worsening enters the least
/// severe state of the streak; improving leaves to the most severe state of the streak.
#[derive(Clone, Debug)]
pub struct Tracker {
    pub state: State,
    streak: u32,
    /// Least severe worse candidate (worsening) or most severe better candidate (improving).
    target: Option<State>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self {
            state: State::Unknown,
            streak: 0,
            target: None,
        }
    }
}

impl Tracker {
    /// Feeds one candidate; returns the previous state when the state changed.
    pub fn step(&mut self, candidate: State, h: Hysteresis) -> Option<State> {
        let prev = self.state;
        let base = self.state.severity().unwrap_or(0);
        let change = |t: &mut Tracker, to: State| {
            t.state = to;
            t.streak = 0;
            t.target = None;
            (to != prev).then_some(prev)
        };
        let Some(cand) = candidate.severity() else {
            return change(self, State::Unknown);
        };
        if candidate == self.state {
            self.streak = 0;
            self.target = None;
            return None;
        }
        if cand == 0 && self.state == State::Unknown {
            return change(self, State::Healthy);
        }
        let worse = cand > base;
        let same_direction = self
            .target
            .and_then(State::severity)
            .is_some_and(|t| (t > base) == worse);
        if same_direction {
            self.streak += 1;
            let t = self.target.unwrap_or(candidate);
            let keep = if worse {
                t.severity() <= Some(cand)
            } else {
                t.severity() >= Some(cand)
            };
            if !keep {
                self.target = Some(candidate);
            }
        } else {
            self.streak = 1;
            self.target = Some(candidate);
        }
        let need = if worse { h.enter } else { h.leave };
        if self.streak >= need.max(1) {
            let to = self.target.unwrap_or(candidate);
            return change(self, to);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use State::*;

    fn signals(requests: u64, errors: u64) -> Signals {
        Signals {
            requests,
            errors,
            error_ratio: (requests > 0).then(|| errors as f64 / requests as f64),
            ..Signals::default()
        }
    }

    const SPAN: Duration = Duration::from_secs(60);

    #[test]
    fn rules_table() {
        let r = Rules::default();
        let http = Context {
            events_lost: 0,
            http_seen: true,
        };
        let slow = Signals {
            p95_ms: Some(640.0),
            p99_ms: Some(900.0),
            ..signals(100, 0)
        };
        let lossy = Signals {
            send_calls: 1000,
            retransmits: 150,
            retransmit_ratio: Some(0.15),
            ..Signals::default()
        };
        let few_sends = Signals {
            send_calls: 100,
            retransmits: 50,
            retransmit_ratio: Some(0.5),
            ..Signals::default()
        };
        let resets = Signals {
            resets: 600,
            resets_per_second: 10.0,
            ..signals(100, 0)
        };
        let connects = Signals {
            failed_connects: 900,
            failed_connects_per_second: 15.0,
            ..Signals::default()
        };
        let lost = Context {
            events_lost: 3,
            http_seen: true,
        };
        // (name, signals, context, state, reason codes)
        let cases: Vec<(&str, Signals, Context, State, Vec<ReasonCode>)> = vec![
            ("healthy", signals(100, 1), http, Healthy, vec![]),
            (
                "errors 5 % degraded",
                signals(100, 5),
                http,
                Degraded,
                vec![ReasonCode::ErrorRatio],
            ),
            (
                "errors 20 % unhealthy",
                signals(100, 20),
                http,
                Unhealthy,
                vec![ReasonCode::ErrorRatio],
            ),
            (
                "below min volume",
                signals(19, 19),
                http,
                Unknown,
                vec![ReasonCode::NoTraffic],
            ),
            (
                "slow p95",
                slow.clone(),
                http,
                Degraded,
                vec![ReasonCode::LatencyP95],
            ),
            (
                "retransmits",
                lossy,
                Context::default(),
                Unhealthy,
                vec![ReasonCode::RetransmitRatio],
            ),
            (
                "few sends",
                few_sends,
                Context::default(),
                Unknown,
                vec![ReasonCode::NotInstrumented],
            ),
            (
                "resets",
                resets,
                http,
                Degraded,
                vec![ReasonCode::ResetRate],
            ),
            (
                "failed connects",
                connects,
                Context::default(),
                Unhealthy,
                vec![ReasonCode::FailedConnectRate],
            ),
            (
                "nothing",
                Signals::default(),
                Context::default(),
                Unknown,
                vec![ReasonCode::NoTraffic],
            ),
            (
                "events lost",
                signals(100, 100),
                lost,
                Unknown,
                vec![ReasonCode::EventsLost],
            ),
        ];
        for (name, s, ctx, state, codes) in cases {
            let a = r.assess(&s, SPAN, ctx);
            assert_eq!(a.state, state, "{name}: {a:?}");
            let got: Vec<_> = a.reasons.iter().map(|r| r.code).collect();
            assert_eq!(got, codes, "{name}");
        }
        let a = r.assess(&slow, SPAN, http);
        assert_eq!(a.reasons[0].message, "p95 640 ms ≥ 500 ms over 60 s");
    }

    #[test]
    fn probe_mismatch_both_ways() {
        let r = Rules::default();
        let ctx = Context {
            events_lost: 0,
            http_seen: true,
        };
        let lying = Signals {
            probe_requests: 10,
            probe_failures: 0,
            ..signals(100, 100)
        };
        let a = r.assess(&lying, SPAN, ctx);
        assert!(a.probe_mismatch);
        assert_eq!(a.state, Unhealthy);
        let failing_probe = Signals {
            probe_requests: 10,
            probe_failures: 10,
            ..signals(100, 0)
        };
        let a = r.assess(&failing_probe, SPAN, ctx);
        assert!(a.probe_mismatch);
        assert_eq!(a.state, Healthy);
        let honest = Signals {
            probe_requests: 10,
            probe_failures: 10,
            ..signals(100, 100)
        };
        assert!(!r.assess(&honest, SPAN, ctx).probe_mismatch);
    }

    #[test]
    fn hysteresis_table() {
        let h = Hysteresis::default();
        // (candidates fed in order, expected state after each)
        let cases: &[(&[State], &[State])] = &[
            (&[Healthy, Healthy], &[Healthy, Healthy]),
            // Two to enter unhealthy.
            (
                &[Healthy, Unhealthy, Unhealthy],
                &[Healthy, Healthy, Unhealthy],
            ),
            // A single bad window does not flip it.
            (&[Healthy, Unhealthy, Healthy, Unhealthy], &[Healthy; 4]),
            // Three to leave.
            (
                &[Healthy, Unhealthy, Unhealthy, Healthy, Healthy, Healthy],
                &[Healthy, Healthy, Unhealthy, Unhealthy, Unhealthy, Healthy],
            ),
            // Mixed worsening streak enters the least severe.
            (
                &[Healthy, Unhealthy, Degraded],
                &[Healthy, Healthy, Degraded],
            ),
            // Mixed improving streak leaves to the most severe.
            (
                &[Healthy, Unhealthy, Unhealthy, Healthy, Degraded, Healthy],
                &[Healthy, Healthy, Unhealthy, Unhealthy, Unhealthy, Degraded],
            ),
            // Unknown: entered and left at once; bad states still need the streak.
            (&[Unknown, Healthy], &[Unknown, Healthy]),
            (&[Unhealthy, Unhealthy], &[Unknown, Unhealthy]),
            (
                &[Healthy, Unhealthy, Unhealthy, Unknown, Healthy],
                &[Healthy, Healthy, Unhealthy, Unknown, Healthy],
            ),
        ];
        for (feed, want) in cases {
            let mut t = Tracker::default();
            let got: Vec<State> = feed
                .iter()
                .map(|c| {
                    t.step(*c, h);
                    t.state
                })
                .collect();
            assert_eq!(&got, want, "{feed:?}");
        }
        let mut t = Tracker::default();
        assert_eq!(t.step(Healthy, h), Some(Unknown));
        assert_eq!(t.step(Healthy, h), None);
    }
}
