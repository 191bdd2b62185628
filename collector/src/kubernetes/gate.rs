//! Readiness gates, sans IO: what condition each opted-in pod of this node should carry.
//!
//! A pod opts in by declaring `readinessGates: [{conditionType: collector.dev/traffic-healthy}]`;
//! the kubelet then counts it Ready only while that condition is `True`. The condition means
//! "not known to be unhealthy", so the gate fails open:
//!
//! * `True` as soon as the pod is seen, whatever the verdict (`Unknown` while there is no
//!   traffic yet): collector warm-up never holds a new pod back;
//! * `False` only for a verdict in `false_on` (`unhealthy` by default; `unknown` is refused by
//!   the configuration) and only in `enforce` mode;
//! * two caps keep a bad verdict (or a collector fault) from emptying a Service: a pod is not
//!   flipped when that would leave one of its Services with fewer than `service_floor` of its
//!   endpoints ready (counted over every slice and node, minus the pods this collector already
//!   holds `False` that the slices still list ready), nor when more than `node_share` of this
//!   node's gated pods would be `False` or have flipped within `flip_window` (many pods failing
//!   at once on one node smells of the node or of the collector). A held pod stays `True` with
//!   the cap as its reason and is reported (`/v1/kubernetes`, log).
//!
//! Modes: `enforce` writes the above; `advisory` (default) writes the same decisions except that
//! a pod enforce would set `False` stays `True` with reason `Advisory` and the verdict in its
//! message — a dry run that lets an operator see what enforce would do before switching it on,
//! while opted-in pods become Ready as they would without the gate; `off` writes `True`
//! (`GateOff`) on every gated pod, so a bad verdict can be switched off in one step.
//!
//! A condition is written when its status or reason changes, never for a message alone, so a
//! pod's status is patched on transitions only.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    time::{Duration, Instant},
};

use serde::Serialize;

use super::index::ObservedCondition;
use crate::verdict::rules::State;

/// The condition type a pod names in `spec.readinessGates` to opt in.
pub const CONDITION_TYPE: &str = "collector.dev/traffic-healthy";

/// Reasons this module writes; a `False` with one of these was written by a collector (so a
/// restarted collector adopts it as its own).
pub const REASON_FALSE: &str = "Unhealthy";

/// `off | advisory | enforce`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Off,
    Advisory,
    Enforce,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Mode::Off),
            "advisory" => Ok(Mode::Advisory),
            "enforce" => Ok(Mode::Enforce),
            other => Err(format!("{other:?} (expected off, advisory or enforce)")),
        }
    }
}

impl Mode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Advisory => "advisory",
            Mode::Enforce => "enforce",
        }
    }
}

/// `[readiness]` settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadinessConfig {
    pub mode: Mode,
    /// Verdicts that set `False` (never `unknown`, never `healthy`).
    pub false_on: Vec<State>,
    /// A Service keeps at least this fraction of its endpoints ready (0–1).
    pub service_floor: f64,
    /// At most this fraction of this node's gated pods is `False` or flipped within
    /// `flip_window` (at least one pod may always flip: one pod failing is no node fault).
    pub node_share: f64,
    pub flip_window: Duration,
    /// How often conditions are reconciled against verdicts.
    pub interval: Duration,
    /// The per-node Lease the watchdog reads: namespace, renewal period, duration.
    pub lease_namespace: String,
    pub lease_renew: Duration,
    pub lease_duration: Duration,
}

pub const DEFAULT_SERVICE_FLOOR: f64 = 0.5;
pub const DEFAULT_NODE_SHARE: f64 = 0.5;
pub const DEFAULT_FLIP_WINDOW: Duration = Duration::from_secs(300);
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_LEASE_NAMESPACE: &str = "collector";
pub const DEFAULT_LEASE_RENEW: Duration = Duration::from_secs(10);
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(40);

impl Default for ReadinessConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Advisory,
            false_on: vec![State::Unhealthy],
            service_floor: DEFAULT_SERVICE_FLOOR,
            node_share: DEFAULT_NODE_SHARE,
            flip_window: DEFAULT_FLIP_WINDOW,
            interval: DEFAULT_INTERVAL,
            lease_namespace: DEFAULT_LEASE_NAMESPACE.into(),
            lease_renew: DEFAULT_LEASE_RENEW,
            lease_duration: DEFAULT_LEASE_DURATION,
        }
    }
}

/// A gated pod of this node, as the index knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatedPod {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub observed: Option<ObservedCondition>,
    /// `namespace/name` of the Services listing it on this node.
    pub services: Vec<String>,
}

/// A Service's endpoints over all its EndpointSlices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceEndpoints {
    pub total: usize,
    pub ready: usize,
    /// This node's pods among the ready endpoints.
    pub ready_local: BTreeSet<String>,
}

/// A pod's verdict: the worst state of its containers, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodVerdict {
    pub state: State,
    pub message: String,
}

/// Which cap held a pod `True`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cap {
    ServiceFloor,
    NodeShare,
}

impl Cap {
    pub const fn reason(self) -> &'static str {
        match self {
            Cap::ServiceFloor => "ServiceFloor",
            Cap::NodeShare => "NodeShare",
        }
    }

    /// The metric label: the same words as in `/v1/kubernetes`.
    pub const fn label(self) -> &'static str {
        match self {
            Cap::ServiceFloor => "service_floor",
            Cap::NodeShare => "node_share",
        }
    }
}

/// The condition a pod should carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Decision {
    /// Whether the pod's status must be patched: status or reason differ (not the message).
    pub fn differs(&self, observed: Option<&ObservedCondition>) -> bool {
        observed.is_none_or(|o| o.status != status_str(self.status) || o.reason != self.reason)
    }
}

pub const fn status_str(status: bool) -> &'static str {
    if status { "True" } else { "False" }
}

/// A pod held `True` by a cap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Held {
    /// `namespace/name`.
    pub pod: String,
    pub cap: Cap,
    pub detail: String,
}

/// The last round, for `/v1/kubernetes`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub mode: Mode,
    /// Pods of this node that declare the gate.
    pub gated: usize,
    /// Of them, decided False.
    pub r#false: usize,
    /// Held True by a cap: what enforce would have flipped, reported instead.
    pub held: Vec<Held>,
    /// The last failed patch of the round, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The gate's memory between rounds: which pods it holds `False`, and recent flips.
#[derive(Debug, Default)]
pub struct Gate {
    /// Pods decided `False` (in advisory mode: those enforce would hold `False`).
    falsed: BTreeSet<String>,
    /// Flips to `False` within the window: (when, uid).
    flips: VecDeque<(Instant, String)>,
}

/// PascalCase of a state, as condition reasons are spelled.
fn state_reason(s: State) -> &'static str {
    match s {
        State::Healthy => "Healthy",
        State::Degraded => "Degraded",
        State::Unhealthy => "Unhealthy",
        State::Unknown => "Unknown",
    }
}

/// The most a condition message carries (the API server allows 32 KiB; a reader wants a line).
const MAX_MESSAGE: usize = 512;

fn bounded(mut m: String) -> String {
    if m.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        m.truncate(cut);
    }
    m
}

impl Gate {
    pub fn new() -> Self {
        Self::default()
    }

    /// One round: the conditions every gated pod should carry, and the pods a cap held.
    /// `verdicts` by pod UID; a pod without one is `Unknown`.
    pub fn decide(
        &mut self,
        config: &ReadinessConfig,
        pods: &[GatedPod],
        verdicts: &HashMap<String, PodVerdict>,
        services: &dyn Fn(&str) -> ServiceEndpoints,
        now: Instant,
    ) -> (Vec<Decision>, Vec<Held>) {
        let live: BTreeSet<&str> = pods.iter().map(|p| p.uid.as_str()).collect();
        self.falsed.retain(|u| live.contains(u.as_str()));
        // A False written by a collector before this one started (a restart) is ours.
        for p in pods {
            if p.observed
                .as_ref()
                .is_some_and(|o| o.status == "False" && o.reason.as_str() == REASON_FALSE)
                && config.mode == Mode::Enforce
            {
                self.falsed.insert(p.uid.clone());
            }
        }
        while self
            .flips
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= config.flip_window)
        {
            self.flips.pop_front();
        }
        if config.mode == Mode::Off {
            self.falsed.clear();
            let d = pods
                .iter()
                .map(|p| decision(p, true, "GateOff", "readiness gate switched off".into()))
                .collect();
            return (d, Vec::new());
        }
        // At least one pod may flip: a single failing pod is not a node fault.
        let node_max = ((config.node_share * pods.len() as f64).floor() as usize).max(1);
        let mut decisions = Vec::with_capacity(pods.len());
        let mut held = Vec::new();
        let mut cache: BTreeMap<String, ServiceEndpoints> = BTreeMap::new();
        for p in pods {
            let v = verdicts.get(&p.uid).cloned().unwrap_or(PodVerdict {
                state: State::Unknown,
                message: "no traffic seen from this pod yet".into(),
            });
            let message = bounded(format!("{}: {}", v.state.as_str(), v.message));
            let wants_false = v.state != State::Unknown && config.false_on.contains(&v.state);
            if !wants_false {
                self.falsed.remove(&p.uid);
                decisions.push(decision(p, true, state_reason(v.state), message));
                continue;
            }
            if !self.falsed.contains(&p.uid) {
                let cap = self.cap(config, p, (node_max, pods.len()), &mut cache, services);
                if let Some((cap, detail)) = cap {
                    held.push(Held {
                        pod: format!("{}/{}", p.namespace, p.name),
                        cap,
                        detail: detail.clone(),
                    });
                    decisions.push(decision(
                        p,
                        true,
                        cap.reason(),
                        bounded(format!("held True ({detail}); {message}")),
                    ));
                    continue;
                }
                self.falsed.insert(p.uid.clone());
                self.flips.push_back((now, p.uid.clone()));
            }
            decisions.push(if config.mode == Mode::Enforce {
                decision(p, false, REASON_FALSE, message)
            } else {
                decision(
                    p,
                    true,
                    "Advisory",
                    bounded(format!("enforce mode would set False; {message}")),
                )
            });
        }
        (decisions, held)
    }

    /// The cap that forbids flipping `p` to False now, with the numbers behind it.
    fn cap(
        &self,
        config: &ReadinessConfig,
        p: &GatedPod,
        (node_max, gated): (usize, usize),
        cache: &mut BTreeMap<String, ServiceEndpoints>,
        services: &dyn Fn(&str) -> ServiceEndpoints,
    ) -> Option<(Cap, String)> {
        let recent: BTreeSet<&str> = self
            .falsed
            .iter()
            .map(String::as_str)
            .chain(self.flips.iter().map(|(_, u)| u.as_str()))
            .collect();
        if !recent.contains(p.uid.as_str()) && recent.len() + 1 > node_max {
            return Some((
                Cap::NodeShare,
                format!(
                    "{} of this node's {gated} gated pods False or flipped within {:?}, at most \
                     {node_max}",
                    recent.len(),
                    config.flip_window
                ),
            ));
        }
        for s in &p.services {
            let e = cache.entry(s.clone()).or_insert_with(|| services(s));
            if !e.ready_local.contains(&p.uid) || e.total == 0 {
                // Not a ready endpoint of this Service: flipping it takes nothing away.
                continue;
            }
            // Pods this collector holds False that the slices still list ready (the endpoint
            // controller has not caught up): they are as good as gone.
            let pending = e
                .ready_local
                .iter()
                .filter(|u| self.falsed.contains(*u))
                .count();
            let ready = e.ready.saturating_sub(pending);
            let after = ready.saturating_sub(1);
            if (after as f64) < config.service_floor * e.total as f64 {
                return Some((
                    Cap::ServiceFloor,
                    format!(
                        "service {s}: {ready} of {} endpoints ready, floor {}",
                        e.total, config.service_floor
                    ),
                ));
            }
        }
        None
    }
}

fn decision(p: &GatedPod, status: bool, reason: &str, message: String) -> Decision {
    Decision {
        uid: p.uid.clone(),
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        status,
        reason: reason.into(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, services: &[&str]) -> GatedPod {
        GatedPod {
            uid: uid.into(),
            namespace: "shop".into(),
            name: format!("p-{uid}"),
            observed: None,
            services: services.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn verdicts(states: &[(&str, State)]) -> HashMap<String, PodVerdict> {
        states
            .iter()
            .map(|(u, s)| {
                (
                    u.to_string(),
                    PodVerdict {
                        state: *s,
                        message: "error_ratio".into(),
                    },
                )
            })
            .collect()
    }

    fn enforce() -> ReadinessConfig {
        ReadinessConfig {
            mode: Mode::Enforce,
            node_share: 1.0,
            ..ReadinessConfig::default()
        }
    }

    fn summary(d: &[Decision]) -> Vec<(String, bool, String)> {
        d.iter()
            .map(|d| (d.uid.clone(), d.status, d.reason.clone()))
            .collect()
    }

    fn row(uid: &str, status: bool, reason: &str) -> (String, bool, String) {
        (uid.into(), status, reason.into())
    }

    fn no_services(_: &str) -> ServiceEndpoints {
        ServiceEndpoints::default()
    }

    /// Catches: a new pod held back until a verdict exists, unknown setting False, degraded
    /// setting False when only unhealthy is configured, a recovered pod left False.
    #[test]
    fn true_on_first_sight_false_only_for_configured_states() {
        let t = Instant::now();
        let mut g = Gate::new();
        let pods = [pod("a", &[]), pod("b", &[]), pod("c", &[]), pod("d", &[])];
        let v = verdicts(&[
            ("b", State::Unknown),
            ("c", State::Degraded),
            ("d", State::Unhealthy),
        ]);
        let (d, held) = g.decide(&enforce(), &pods, &v, &no_services, t);
        assert_eq!(
            summary(&d),
            vec![
                row("a", true, "Unknown"),
                row("b", true, "Unknown"),
                row("c", true, "Degraded"),
                row("d", false, "Unhealthy"),
            ]
        );
        assert!(held.is_empty());
        assert_eq!(d[3].message, "unhealthy: error_ratio");
        let v = verdicts(&[("d", State::Healthy)]);
        let (d, _) = g.decide(&enforce(), &pods, &v, &no_services, t);
        assert!(d[3].status);
        assert_eq!(d[3].reason, "Healthy");
    }

    /// Catches: both pods of a two-endpoint Service taken out under a 50 % floor; pods held
    /// False but still listed ready by the slice not counted (the second flip allowed).
    #[test]
    fn service_floor_holds_the_second_of_two() {
        let t = Instant::now();
        let mut g = Gate::new();
        let pods = [pod("a", &["shop/web"]), pod("b", &["shop/web"])];
        let web = |_: &str| ServiceEndpoints {
            total: 2,
            ready: 2,
            ready_local: ["a".to_string(), "b".to_string()].into(),
        };
        let v = verdicts(&[("a", State::Unhealthy), ("b", State::Unhealthy)]);
        let (d, held) = g.decide(&enforce(), &pods, &v, &web, t);
        assert_eq!(
            summary(&d),
            vec![row("a", false, "Unhealthy"), row("b", true, "ServiceFloor")]
        );
        assert_eq!(
            held,
            vec![Held {
                pod: "shop/p-b".into(),
                cap: Cap::ServiceFloor,
                detail: "service shop/web: 1 of 2 endpoints ready, floor 0.5".into(),
            }]
        );
        // Next round, same: a stays False (already counted), b still held.
        let (d, _) = g.decide(&enforce(), &pods, &v, &web, t);
        assert_eq!(
            summary(&d),
            vec![row("a", false, "Unhealthy"), row("b", true, "ServiceFloor")]
        );
        // a recovers: b may go.
        let v = verdicts(&[("a", State::Healthy), ("b", State::Unhealthy)]);
        let (d, held) = g.decide(&enforce(), &pods, &v, &web, t);
        assert_eq!(
            summary(&d),
            vec![row("a", true, "Healthy"), row("b", false, "Unhealthy")]
        );
        assert!(held.is_empty());
    }

    /// Catches: a node fault flipping every gated pod; the window forgotten (a flapping pod
    /// re-counted as new); the at-least-one rule missing (a lone failing pod never flips).
    #[test]
    fn node_share_caps_flips_per_window() {
        let t = Instant::now();
        let config = ReadinessConfig {
            mode: Mode::Enforce,
            node_share: 0.5,
            flip_window: Duration::from_secs(60),
            ..ReadinessConfig::default()
        };
        let mut g = Gate::new();
        let pods: Vec<GatedPod> = ["a", "b", "c", "d"].iter().map(|u| pod(u, &[])).collect();
        let all_bad = verdicts(&[
            ("a", State::Unhealthy),
            ("b", State::Unhealthy),
            ("c", State::Unhealthy),
            ("d", State::Unhealthy),
        ]);
        let (d, held) = g.decide(&config, &pods, &all_bad, &no_services, t);
        assert_eq!(
            summary(&d),
            vec![
                row("a", false, "Unhealthy"),
                row("b", false, "Unhealthy"),
                row("c", true, "NodeShare"),
                row("d", true, "NodeShare"),
            ]
        );
        assert_eq!(held.len(), 2);
        // a recovers, but its flip is in the window: c and d stay held.
        let v = verdicts(&[
            ("b", State::Unhealthy),
            ("c", State::Unhealthy),
            ("d", State::Unhealthy),
        ]);
        let (d, _) = g.decide(
            &config,
            &pods,
            &v,
            &no_services,
            t + Duration::from_secs(30),
        );
        assert_eq!(d[2].reason, "NodeShare");
        // Past the window: one more may flip (b False + c).
        let (d, _) = g.decide(
            &config,
            &pods,
            &v,
            &no_services,
            t + Duration::from_secs(61),
        );
        assert_eq!(
            summary(&d)[1..],
            [
                row("b", false, "Unhealthy"),
                row("c", false, "Unhealthy"),
                row("d", true, "NodeShare"),
            ]
        );
        // One gated pod on a node: it may flip.
        let mut g = Gate::new();
        let (d, _) = g.decide(&config, &pods[..1], &all_bad, &no_services, t);
        assert_eq!(summary(&d), vec![row("a", false, "Unhealthy")]);
    }

    /// Catches: advisory mode writing False; off leaving a False; a restarted collector not
    /// adopting a False it wrote before (its caps would then count from zero).
    #[test]
    fn advisory_never_false_off_all_true_restart_adopts() {
        let t = Instant::now();
        let pods = [pod("a", &["shop/web"]), pod("b", &["shop/web"])];
        let web = |_: &str| ServiceEndpoints {
            total: 2,
            ready: 2,
            ready_local: ["a".to_string(), "b".to_string()].into(),
        };
        let v = verdicts(&[("a", State::Unhealthy), ("b", State::Unhealthy)]);
        let advisory = ReadinessConfig {
            node_share: 1.0,
            ..ReadinessConfig::default()
        };
        let (d, _) = Gate::new().decide(&advisory, &pods, &v, &web, t);
        assert_eq!(
            summary(&d),
            vec![row("a", true, "Advisory"), row("b", true, "ServiceFloor")]
        );
        let off = ReadinessConfig {
            mode: Mode::Off,
            ..enforce()
        };
        let (d, _) = Gate::new().decide(&off, &pods, &v, &web, t);
        assert_eq!(
            summary(&d),
            vec![row("a", true, "GateOff"), row("b", true, "GateOff")]
        );
        // Restart: b carries a False from the previous collector; a must be held.
        let mut restarted = pods.clone();
        restarted[1].observed = Some(ObservedCondition {
            status: "False".into(),
            reason: REASON_FALSE.into(),
        });
        let (d, _) = Gate::new().decide(&enforce(), &restarted, &v, &web, t);
        assert_eq!(
            summary(&d),
            vec![row("a", true, "ServiceFloor"), row("b", false, "Unhealthy")]
        );
        assert!(!d[0].differs(Some(&ObservedCondition {
            status: "True".into(),
            reason: "ServiceFloor".into()
        })));
        assert!(d[1].differs(None));
    }
}
