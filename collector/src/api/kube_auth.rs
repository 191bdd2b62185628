//! Kubernetes authentication and authorization of `/v1/*` (`--api-auth-kubernetes`), as
//! kube-rbac-proxy does it: the bearer token is checked by the API server's TokenReview, and
//! what the authenticated user may do by a SubjectAccessReview of the non-resource URL (the
//! request path; the verb from the method as kube-rbac-proxy maps it: GET and HEAD `get`, PUT
//! `update`, POST `create`, PATCH `patch`, DELETE `delete`), so RBAC decides who reads the API
//! (and, separately, who may `update` `/v1/debug/*`):
//!
//! ```yaml
//! rules:
//!   - nonResourceURLs: ["/v1/*"]
//!     verbs: ["get"]
//! ```
//!
//! Decisions are cached by a SHA-256 of the token (and of the verb and path for access), briefly
//! and in bounded maps, so a scraper calling every few seconds costs the API server one review
//! a minute, and a flood of requests is not a flood of reviews; at most [`MAX_CONCURRENT_REVIEWS`]
//! reviews are in flight, and a request waiting for one takes the answer another request just
//! cached. A review that fails (API server unreachable, the collector not allowed to create
//! reviews) is never an allow and never cached: 503.
//!
//! Tokens are never logged, nor kept: only their digests are.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::api::{Api, PostParams};
use prometheus_client::{
    encoding::EncodeLabelSet, metrics::counter::Counter, metrics::family::Family,
};
use tracing::warn;

/// A review's name in the metrics' `review` label and its Kubernetes kind in log lines.
#[derive(Clone, Copy)]
struct Review {
    name: &'static str,
    kind: &'static str,
}

const TOKEN: Review = Review {
    name: "token",
    kind: "TokenReview",
};

const ACCESS: Review = Review {
    name: "access",
    kind: "SubjectAccessReview",
};

/// How long an authenticated token, or an allowed access, is trusted without asking again.
pub const ALLOW_TTL: Duration = Duration::from_secs(60);
/// How long a refused token or access is refused without asking again: short, so a binding
/// just created takes effect soon.
pub const DENY_TTL: Duration = Duration::from_secs(10);
/// Entries per cache; past it the expired ones go, then arbitrary ones.
pub const CACHE_ENTRIES: usize = 4096;
/// Reviews in flight at once.
pub const MAX_CONCURRENT_REVIEWS: usize = 4;
/// One review's deadline.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// `collector_api_auth_reviews_total{review, result}` and
/// `collector_api_auth_cache_hits_total{review}`.
#[derive(Clone, Default)]
pub struct AuthTelemetry {
    pub reviews: Family<ReviewLabels, Counter>,
    pub cache_hits: Family<KindLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    /// `token` (TokenReview) or `access` (SubjectAccessReview).
    pub review: &'static str,
    /// token: `authenticated`, `unauthenticated`, `error`; access: `allowed`, `denied`, `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub review: &'static str,
}

/// What the API server said about one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// The token authenticates no one (401).
    Unauthenticated,
    /// `user` may not `verb` the path (403).
    Forbidden {
        user: String,
    },
    /// No answer from the API server (503).
    Unavailable,
}

/// Who a token authenticates, as the SubjectAccessReview needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct User {
    name: String,
    uid: Option<String>,
    groups: Vec<String>,
    extra: BTreeMap<String, Vec<String>>,
}

type Digest = [u8; 32];

fn digest(parts: &[&[u8]]) -> Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        // Length-prefixed: ("ab", "c") and ("a", "bc") are different keys.
        ctx.update(&(p.len() as u64).to_le_bytes());
        ctx.update(p);
    }
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// A bounded map with an expiry per entry; the clock is passed in, so tests set it.
struct Cache<V> {
    entries: HashMap<Digest, (V, Instant)>,
    max: usize,
}

impl<V: Clone> Cache<V> {
    fn new(max: usize) -> Self {
        Self {
            entries: HashMap::new(),
            max: max.max(1),
        }
    }

    fn get(&mut self, key: &Digest, now: Instant) -> Option<V> {
        match self.entries.get(key) {
            Some((v, expires)) if *expires > now => Some(v.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(&mut self, key: Digest, value: V, ttl: Duration, now: Instant) {
        if self.entries.len() >= self.max && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (_, expires)| *expires > now);
            // Still full of live entries (a flood of distinct tokens): any one goes; the cost
            // is one more review for its owner.
            if self.entries.len() >= self.max
                && let Some(k) = self.entries.keys().next().copied()
            {
                self.entries.remove(&k);
            }
        }
        self.entries.insert(key, (value, now + ttl));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[derive(Debug, thiserror::Error)]
enum ReviewError {
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the review task ended without an answer")]
    Task,
}

/// The reviewer: a Kubernetes client, the runtime its requests run on, and the caches.
pub struct KubeAuth {
    client: kube::Client,
    /// The collector's main runtime: the API is served on a thread of its own, and the client's
    /// connections live on the runtime that made it.
    runtime: tokio::runtime::Handle,
    tokens: Mutex<Cache<Option<Arc<User>>>>,
    access: Mutex<Cache<bool>>,
    permits: tokio::sync::Semaphore,
    telemetry: AuthTelemetry,
    last_warning: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for KubeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeAuth")
    }
}

impl KubeAuth {
    /// `runtime`: where `client` was made (see [`KubeAuth::runtime`]).
    pub fn new(
        client: kube::Client,
        runtime: tokio::runtime::Handle,
        telemetry: AuthTelemetry,
    ) -> Self {
        Self {
            client,
            runtime,
            tokens: Mutex::new(Cache::new(CACHE_ENTRIES)),
            access: Mutex::new(Cache::new(CACHE_ENTRIES)),
            permits: tokio::sync::Semaphore::new(MAX_CONCURRENT_REVIEWS),
            telemetry,
            last_warning: Mutex::new(None),
        }
    }

    /// May the bearer of `token` `verb` `path`?
    pub async fn decide(&self, token: &str, verb: &str, path: &str) -> Decision {
        let token_key = digest(&[token.as_bytes()]);
        let Some(user) = self
            .reviewed(&self.tokens, &token_key, TOKEN, Option::is_some, || {
                self.token_review(token)
            })
            .await
        else {
            return Decision::Unavailable;
        };
        let Some(user) = user else {
            return Decision::Unauthenticated;
        };
        let access_key = digest(&[token.as_bytes(), verb.as_bytes(), path.as_bytes()]);
        let Some(allowed) = self
            .reviewed(
                &self.access,
                &access_key,
                ACCESS,
                |a| *a,
                || self.access_review(&user, verb, path),
            )
            .await
        else {
            return Decision::Unavailable;
        };
        if allowed {
            Decision::Allowed
        } else {
            Decision::Forbidden {
                user: user.name.clone(),
            }
        }
    }

    /// The cached answer for `key`, else one review's (`ask`), made under the concurrency
    /// permit and cached for `ALLOW_TTL` when `allows` says so, else `DENY_TTL`. None: the
    /// review failed (counted and logged), which must never read as an answer.
    async fn reviewed<V: Clone, F>(
        &self,
        cache: &Mutex<Cache<V>>,
        key: &Digest,
        review: Review,
        allows: impl Fn(&V) -> bool,
        ask: impl FnOnce() -> F,
    ) -> Option<V>
    where
        F: Future<Output = Result<V, ReviewError>>,
    {
        if let Some(v) = self.cached(cache, key, review.name) {
            return Some(v);
        }
        let _permit = self.permits.acquire().await.ok()?;
        // Another request may have asked for this key while this one waited.
        if let Some(v) = self.cached(cache, key, review.name) {
            return Some(v);
        }
        match ask().await {
            Ok(v) => {
                let ttl = if allows(&v) { ALLOW_TTL } else { DENY_TTL };
                cache.lock().unwrap_or_else(|e| e.into_inner()).insert(
                    *key,
                    v.clone(),
                    ttl,
                    Instant::now(),
                );
                Some(v)
            }
            Err(e) => {
                self.count(review.name, "error");
                self.warn(review.kind, &e);
                None
            }
        }
    }

    /// A live entry of `cache`, counted as a hit of `review`.
    fn cached<V: Clone>(
        &self,
        cache: &Mutex<Cache<V>>,
        key: &Digest,
        review: &'static str,
    ) -> Option<V> {
        let hit = cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key, Instant::now());
        if hit.is_some() {
            self.telemetry
                .cache_hits
                .get_or_create(&KindLabels { review })
                .inc();
        }
        hit
    }

    fn count(&self, review: &'static str, result: &'static str) {
        self.telemetry
            .reviews
            .get_or_create(&ReviewLabels { review, result })
            .inc();
    }

    /// At most one warning a minute: an unreachable API server under a stream of requests
    /// would otherwise fill the log (every failure is counted).
    fn warn(&self, what: &str, e: &ReviewError) {
        let now = Instant::now();
        let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(60)) {
            *last = Some(now);
            warn!(
                error = %e,
                "{what} failed: /v1/* answers 503 to tokens not already reviewed (does the \
                 collector's role allow creating tokenreviews and subjectaccessreviews? \
                 deploy/api-auth-rbac.yaml)"
            );
        }
    }

    /// Runs `f` on the main runtime with the review deadline.
    async fn on_runtime<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, kube::Error>> + Send + 'static,
    ) -> Result<T, ReviewError> {
        let task = self
            .runtime
            .spawn(async move { tokio::time::timeout(REVIEW_TIMEOUT, f).await });
        match task.await {
            Ok(Ok(r)) => r.map_err(ReviewError::Api),
            Ok(Err(_)) => Err(ReviewError::Timeout(REVIEW_TIMEOUT)),
            Err(_) => Err(ReviewError::Task),
        }
    }

    async fn token_review(&self, token: &str) -> Result<Option<Arc<User>>, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: None,
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = self
            .on_runtime(async move { api.create(&PostParams::default(), &review).await })
            .await?;
        let status = answer.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(u)) if u.username.as_deref().is_some_and(|n| !n.is_empty()) => {
                Some(Arc::new(User {
                    name: u.username.unwrap_or_default(),
                    uid: u.uid,
                    groups: u.groups.unwrap_or_default(),
                    extra: u.extra.unwrap_or_default(),
                }))
            }
            _ => None,
        };
        self.count(
            "token",
            if user.is_some() {
                "authenticated"
            } else {
                "unauthenticated"
            },
        );
        Ok(user)
    }

    async fn access_review(
        &self,
        user: &User,
        verb: &str,
        path: &str,
    ) -> Result<bool, ReviewError> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: user.uid.clone(),
                groups: Some(user.groups.clone()),
                extra: Some(user.extra.clone()),
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_owned()),
                    verb: Some(verb.to_owned()),
                }),
                resource_attributes: None,
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = self
            .on_runtime(async move { api.create(&PostParams::default(), &review).await })
            .await?;
        let allowed = answer
            .status
            .is_some_and(|s| s.allowed && s.denied != Some(true));
        self.count("access", if allowed { "allowed" } else { "denied" });
        Ok(allowed)
    }
}

/// The RBAC verb of a request, as kube-rbac-proxy maps methods (so a role written for it
/// works here): reads are `get`, a PUT is an `update`.
pub fn verb(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET | Method::HEAD => "get",
        Method::PUT => "update",
        Method::POST => "create",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        // OPTIONS, TRACE, CONNECT and extensions: a verb no sensible role grants.
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches: an expired decision served (a revoked binding honoured past its TTL), a cache
    /// that grows with every distinct token of a flood.
    #[test]
    fn cache_expires_and_stays_bounded() {
        let t0 = Instant::now();
        let mut c: Cache<bool> = Cache::new(3);
        let k = |i: u8| digest(&[&[i]]);
        c.insert(k(1), true, Duration::from_secs(60), t0);
        assert_eq!(c.get(&k(1), t0 + Duration::from_secs(59)), Some(true));
        assert_eq!(c.get(&k(1), t0 + Duration::from_secs(60)), None);
        assert_eq!(c.len(), 0, "an expired entry read is removed");
        for i in 0..10 {
            c.insert(k(i), false, Duration::from_secs(10), t0);
        }
        assert_eq!(c.len(), 3);
        // Expired entries make room before live ones go.
        let t1 = t0 + Duration::from_secs(11);
        c.insert(k(100), true, Duration::from_secs(60), t1);
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(&k(100), t1), Some(true));
    }

    /// Catches: two different (token, path) pairs sharing a cache key by concatenation.
    #[test]
    fn digest_parts_do_not_run_together() {
        assert_ne!(digest(&[b"ab", b"c"]), digest(&[b"a", b"bc"]));
        assert_eq!(digest(&[b"ab", b"c"]), digest(&[b"ab", b"c"]));
    }

    /// Catches: a PUT authorized as a read.
    #[test]
    fn verbs_are_the_api_servers_non_resource_verbs() {
        use axum::http::Method;
        assert_eq!(verb(&Method::GET), "get");
        assert_eq!(verb(&Method::HEAD), "get");
        assert_eq!(verb(&Method::PUT), "update");
        assert_eq!(verb(&Method::POST), "create");
        assert_eq!(verb(&Method::OPTIONS), "unknown");
    }
}
