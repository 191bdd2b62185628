//! Per-request records → bounded, comparable series: route normalisation, a route cap per
//! workload, probe traffic kept apart.

use std::collections::{HashMap, HashSet};

use collector_common::{http::HttpCounts, maps::KernelDrop};

use super::harvest::Counters;
use super::templates::Templates;
use crate::events::{HttpRequest, Outcome};

impl Counters for HttpCounts {
    fn delta(&self, prev: &Self) -> Self {
        let d = |c: u64, p: u64| c.checked_sub(p).unwrap_or(c);
        let mut by_class = [0; 5];
        for (i, v) in by_class.iter_mut().enumerate() {
            *v = d(self.by_class[i], prev.by_class[i]);
        }
        HttpCounts {
            requests: d(self.requests, prev.requests),
            unrecorded: d(self.unrecorded, prev.unrecorded),
            panics: d(self.panics, prev.panics),
            aborted: d(self.aborted, prev.aborted),
            unobserved: d(self.unobserved, prev.unobserved),
            by_class,
            lost: d(self.lost, prev.lost),
        }
    }
}

/// Whether kernel drops exported with this `reason` label make every verdict unknown
/// (`super::loses_signal`); `None` for a label no drop has. For readers of /metrics (tests).
pub fn drop_reason_loses_signal(reason: &str) -> Option<bool> {
    KernelDrop::ALL
        .iter()
        .find(|d| d.reason() == reason)
        .map(|d| super::loses_signal(*d))
}

/// Route when the workload already has `max_routes` routes.
pub const OVERFLOW_ROUTE: &str = "__overflow__";
/// Path segments kept before the rest is folded into "/…".
const MAX_SEGMENTS: usize = 6;

/// Bounded normalisation of a URL path when no `Request.Pattern` is available: identifiers
/// (numbers, UUIDs, long hex or long tokens) become `{id}`, depth is capped.
pub fn normalize_path(path: &str) -> String {
    if path.is_empty() || !path.starts_with('/') {
        return "/".into();
    }
    let mut out = String::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        if i == MAX_SEGMENTS {
            out.push_str("/…");
            break;
        }
        out.push('/');
        if is_identifier(seg) {
            out.push_str("{id}");
        } else {
            out.push_str(seg);
        }
    }
    if out.is_empty() { "/".into() } else { out }
}

/// The path template of a Go 1.22+ mux pattern (`[METHOD ][HOST]/PATH`): `GET /items/{id}`
/// → `/items/{id}`. OTel's `http.route` is the template alone (the method is its own
/// attribute), and a normalised path of the same template reads the same, so a route has one
/// value whichever way it was found. A pattern without a `/` (not one net/http accepts) is
/// kept whole rather than guessed at.
pub fn pattern_route(pattern: &str) -> &str {
    let rest = pattern.trim_start();
    let rest = match rest.split_once([' ', '\t']) {
        Some((method, path)) if !method.contains('/') => path.trim_start(),
        _ => rest,
    };
    rest.find('/').map_or(rest, |i| &rest[i..])
}

fn is_identifier(seg: &str) -> bool {
    if seg.is_empty() {
        return false;
    }
    let all_digits = seg.bytes().all(|b| b.is_ascii_digit());
    let hexish = seg.len() >= 8 && seg.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    all_digits || hexish || seg.len() > 32
}

/// What the aggregator does with one request.
#[derive(Debug, PartialEq, Eq)]
pub struct Classified {
    pub route: String,
    pub probe: bool,
    pub capped: bool,
}

pub struct RouteTable {
    probe_paths: FastSet<String>,
    max_routes: usize,
    routes: HashMap<String, FastSet<String>, foldhash::fast::RandomState>,
    /// Route templates learned per workload (`templates`), at most `max_routes` each.
    learned: HashMap<String, Templates, foldhash::fast::RandomState>,
}

/// Looked up on every record. Seeded fast hashing (SipHash of the workload name and the route
/// was 5 % of the per-record instructions): the sets are bounded (`max_routes` per workload,
/// the configured probe paths), so colliding keys cost at most a bounded scan.
type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;

impl RouteTable {
    pub fn new(probe_paths: &[String], max_routes: usize) -> Self {
        Self {
            probe_paths: probe_paths.iter().cloned().collect(),
            max_routes,
            routes: HashMap::default(),
            learned: HashMap::default(),
        }
    }

    /// Drops the routes of a forgotten workload (see `Metrics::forget`).
    pub fn forget(&mut self, workload: &str) {
        self.routes.remove(workload);
        self.learned.remove(workload);
    }

    /// A route template the workload's router matched (`Event::RouteLearned`): its paths are
    /// counted under it from now on. True when it is new.
    pub fn learn(&mut self, workload: &str, template: &str, mux: bool) -> bool {
        if !self.learned.contains_key(workload) {
            self.learned
                .insert(workload.to_string(), Templates::default());
        }
        let t = self.learned.get_mut(workload).expect("inserted above");
        t.len() < self.max_routes && t.insert(pattern_route(template), mux)
    }

    /// `workload` is the workload's stable name (its label value).
    pub fn classify(&mut self, workload: &str, r: &HttpRequest) -> Classified {
        let learned = || {
            self.learned
                .get(workload)?
                .matching(&r.route)
                .map(|t| pattern_route(t).to_string())
        };
        let route = if r.route_is_pattern {
            pattern_route(&r.route).to_string()
        } else {
            learned().unwrap_or_else(|| normalize_path(&r.route))
        };
        // Probe paths are matched on the raw path (or the pattern's path part).
        let path = if r.route_is_pattern {
            route.as_str()
        } else {
            r.route.as_str()
        };
        let probe = self.probe_paths.contains(path);
        // Looked up first: `entry` would copy the workload's name on every record.
        if !self.routes.contains_key(workload) {
            self.routes.insert(workload.to_string(), FastSet::default());
        }
        let routes = self.routes.get_mut(workload).expect("inserted above");
        if routes.contains(&route) {
            return Classified {
                route,
                probe,
                capped: false,
            };
        }
        if routes.len() >= self.max_routes {
            return Classified {
                route: OVERFLOW_ROUTE.into(),
                probe,
                capped: true,
            };
        }
        routes.insert(route.clone());
        Classified {
            route,
            probe,
            capped: false,
        }
    }
}

/// Label values for an outcome: (status_code, error_type, exact-counter outcome).
pub fn outcome_labels(o: Outcome) -> (String, &'static str) {
    match o {
        Outcome::Completed { status } => (status.to_string(), ""),
        Outcome::Panic => (String::new(), "panic"),
        Outcome::Aborted => (String::new(), "aborted"),
        Outcome::UnobservedProtocol => (String::new(), "unobserved_protocol"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(route: &str, pattern: bool) -> HttpRequest {
        HttpRequest {
            tgid: 1,
            cgroup_id: 1,
            duration_ns: 1,
            method: "GET".into(),
            route: route.into(),
            route_is_pattern: pattern,
            outcome: Outcome::Completed { status: 200 },
        }
    }

    #[test]
    fn paths_normalise_to_bounded_routes() {
        for (path, want) in [
            ("/users/42", "/users/{id}"),
            (
                "/orders/9f86d081-884c-4d63-9f2b-3c2d5e1a0b7c/items",
                "/orders/{id}/items",
            ),
            ("/blob/deadbeefcafe", "/blob/{id}"),
            ("/a/b/c/d/e/f/g/h", "/a/b/c/d/e/f/…"),
            ("/", "/"),
            ("", "/"),
            ("relative", "/"),
            ("/ok", "/ok"),
            ("/tok/abcdefghijklmnopqrstuvwxyzabcdefghij", "/tok/{id}"),
        ] {
            assert_eq!(normalize_path(path), want, "{path}");
        }
    }

    /// Catches: the method (or a host) left in the route of pattern-matched requests, so one
    /// template had two label values (`GET /items/{id}` matched, `/items/{id}` normalised).
    #[test]
    fn pattern_routes_are_path_templates() {
        for (pattern, want) in [
            ("GET /items/{id}", "/items/{id}"),
            ("POST /items/", "/items/"),
            ("/items/{id}", "/items/{id}"),
            ("example.com/a/{x...}", "/a/{x...}"),
            ("GET example.com/a", "/a"),
            ("GET  /spaced", "/spaced"),
            ("DELETE\t/tab", "/tab"),
            ("/", "/"),
            ("GET /{$}", "/{$}"),
            ("", ""),
            ("GET", "GET"),
        ] {
            assert_eq!(pattern_route(pattern), want, "{pattern:?}");
        }
    }

    /// Catches: learned templates not applied to the parser's paths (normalised instead),
    /// applied to another workload, a probe path hidden behind a template, or more templates
    /// kept than the route cap.
    #[test]
    fn learned_templates_name_the_paths_of_their_workload() {
        let mut t = RouteTable::new(&["/healthz".into()], 3);
        assert!(t.learn("w", "/items/:id", false));
        assert!(!t.learn("w", "/items/:id", false));
        assert!(t.learn("w", "GET /{path...}", true));
        assert_eq!(
            t.classify("w", &req("/items/42", false)).route,
            "/items/:id"
        );
        assert_eq!(
            t.classify("v", &req("/items/42", false)).route,
            "/items/{id}"
        );
        let c = t.classify("w", &req("/healthz", false));
        assert_eq!((c.route.as_str(), c.probe), ("/{path...}", true));
        assert!(t.learn("w", "/a", false));
        assert!(!t.learn("w", "/b", false), "over the route cap");
        t.forget("w");
        assert_eq!(
            t.classify("w", &req("/items/42", false)).route,
            "/items/{id}"
        );
    }

    #[test]
    fn patterns_win_probes_are_flagged_and_routes_are_capped() {
        let mut t = RouteTable::new(&["/healthz".into()], 4);
        // One value per template: matched (with its method) or normalised.
        assert_eq!(
            t.classify("w", &req("GET /items/{id}", true)).route,
            "/items/{id}"
        );
        assert_eq!(
            t.classify("w", &req("/items/42", false)).route,
            "/items/{id}"
        );
        assert!(!t.classify("w", &req("/items/7", false)).capped);
        assert!(t.classify("w", &req("/healthz", false)).probe);
        assert!(t.classify("w", &req("GET /healthz", true)).probe);
        // A pattern and a raw path of one template are one route: 3 so far.
        t.classify("w", &req("/a", false));
        assert!(!t.classify("w", &req("/b", false)).capped);
        let c = t.classify("w", &req("/c", false));
        assert_eq!((c.route.as_str(), c.capped), (OVERFLOW_ROUTE, true));
        assert!(
            !t.classify("w", &req("/a", false)).capped,
            "known routes keep their series"
        );
        assert!(
            !t.classify("other", &req("/b", false)).capped,
            "caps are per workload"
        );
    }
}
