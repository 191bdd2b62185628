//! Serving the API router: optional bearer token for `/v1/*` (a static one, and/or Kubernetes
//! TokenReview + SubjectAccessReview: `kube_auth`), optional TLS, and the limits that
//! keep a hostile or broken client from starving `/metrics` (header read timeout, idle timeout,
//! a connection cap that sheds the longest-idle connection first, request size limits).
//!
//! axum's own `serve` has none of these knobs, so connections are accepted here and driven by
//! hyper's HTTP/1 connection directly.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Body,
    extract::{DefaultBodyLimit, Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::oneshot,
};
use tower::ServiceExt;
use tracing::{debug, info, warn};

use super::kube_auth::{self, AuthTelemetry, Decision, KubeAuth};
use crate::export::Metrics;

/// Connections served at once by default; past it the longest-idle one is closed, or the new one
/// if every connection is busy in a request.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Time a client has to send a request's headers, from the moment the server waits for them
/// (so it also bounds how long an idle keep-alive connection is kept). Slowloris clients
/// trickling headers byte by byte are cut off here.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is closed after this long whatever it does: bounds every other slow path
/// (slow readers of a response, TLS handshakes that never finish are cut by the header timeout).
pub const DEFAULT_CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// Request bodies: no handler reads one today (the API only answers GETs, and an unread body is
/// never buffered); any extractor that would is refused past this (413).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Request line + headers. hyper answers 431 past it.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Longest accepted token file.
const MAX_TOKEN_BYTES: u64 = 4096;

/// How the API is served (`[api]` in the configuration file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// File holding the bearer token required for `/v1/*`; None: no authentication.
    pub token_file: Option<PathBuf>,
    /// `/v1/*` also (or only) accepts tokens the Kubernetes API server authenticates, for paths
    /// RBAC lets their user read (`kube_auth`).
    pub kubernetes_auth: bool,
    /// PEM certificate chain and private key; None: plain HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub connection_lifetime: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            token_file: None,
            kubernetes_auth: false,
            tls: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            connection_lifetime: DEFAULT_CONNECTION_LIFETIME,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("API token file {path}: {why}")]
    BadToken { path: PathBuf, why: &'static str },
    #[error("TLS certificate or key: {0}")]
    Tls(String),
    #[error(
        "--api-auth-kubernetes needs the Kubernetes API (--node-name or NODE_NAME, and a \
         kubeconfig or the in-cluster service account)"
    )]
    KubernetesAuthWithoutKubernetes,
    #[error("--api-auth-kubernetes: the server must be prepared on a tokio runtime")]
    NoRuntime,
    #[error("accepting connections: {0}")]
    Accept(#[source] std::io::Error),
}

/// A bearer token, compared in constant time.
#[derive(Clone)]
pub struct ApiToken(Arc<Vec<u8>>);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl ApiToken {
    pub fn new(token: &str) -> Option<Self> {
        let t = token.trim();
        (!t.is_empty() && t.is_ascii() && !t.contains(char::is_whitespace))
            .then(|| Self(Arc::new(t.as_bytes().to_vec())))
    }

    /// Reads a token file (e.g. a mounted Kubernetes Secret): surrounding whitespace ignored.
    pub fn from_file(path: &Path) -> Result<Self, ServerError> {
        let read = |source| ServerError::Read {
            path: path.into(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read)?.len();
        if len > MAX_TOKEN_BYTES {
            return Err(ServerError::BadToken {
                path: path.into(),
                why: "longer than 4096 bytes",
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Self::new(&text).ok_or(ServerError::BadToken {
            path: path.into(),
            why: "empty, not ASCII or containing whitespace",
        })
    }

    /// Constant-time in the token's content: a timing difference would let a client guess it
    /// byte by byte. (Its length is not secret.)
    fn matches(&self, presented: &[u8]) -> bool {
        bool::from(self.0.as_slice().ct_eq(presented))
    }
}

/// Who may call `/v1/*`: the bearer of the static token, and/or whoever the Kubernetes API
/// server authenticates and RBAC allows. Neither: anyone.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    pub token: Option<ApiToken>,
    pub kubernetes: Option<Arc<KubeAuth>>,
}

/// Requires `Authorization: Bearer <token>` on `/v1/*`; `/metrics`, `/healthz` and `/readyz`
/// stay open so scrapers and kubelet probes need no secret. 401 otherwise.
pub fn with_auth(router: Router, token: Option<ApiToken>) -> Router {
    with_authenticator(
        router,
        Auth {
            token,
            kubernetes: None,
        },
    )
}

/// [`with_auth`] with Kubernetes reviews: 401 for a token that authenticates no one, 403 for a
/// user RBAC does not allow the path, 503 when the API server cannot be asked.
pub fn with_authenticator(router: Router, auth: Auth) -> Router {
    let router = router.layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    if auth.token.is_none() && auth.kubernetes.is_none() {
        return router;
    }
    router.layer(middleware::from_fn_with_state(auth, require_token))
}

/// Whether a path needs the token: everything but the scrape and liveness endpoints (unknown
/// paths too, so a client without the token learns nothing about what exists).
pub fn protected(path: &str) -> bool {
    !matches!(path, "/metrics" | "/healthz" | "/readyz")
}

fn refused(status: StatusCode, message: String) -> Response {
    let mut r = (status, Json(json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

async fn require_token(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    if !protected(req.uri().path()) {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let unauthorized = || {
        refused(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required".into(),
        )
    };
    let Some(presented) = presented.filter(|p| !p.is_empty()) else {
        return unauthorized();
    };
    if auth
        .token
        .as_ref()
        .is_some_and(|t| t.matches(presented.as_bytes()))
    {
        return next.run(req).await;
    }
    let Some(kube) = &auth.kubernetes else {
        return unauthorized();
    };
    let verb = kube_auth::verb(req.method());
    let path = req.uri().path().to_owned();
    match kube.decide(presented, verb, &path).await {
        Decision::Allowed => next.run(req).await,
        Decision::Unauthenticated => unauthorized(),
        Decision::Forbidden { user } => refused(
            StatusCode::FORBIDDEN,
            format!("{user} may not {verb} {path}"),
        ),
        Decision::Unavailable => refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "the Kubernetes API server could not review the token; try again".into(),
        ),
    }
}

/// A rustls server configuration from PEM files (HTTP/1.1 only, the ring provider used by the
/// rest of the collector).
pub fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, ServerError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| ServerError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ServerError::Tls(format!(
            "{}: no certificate found",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Everything loaded before the first connection: a bad token file or certificate is a start-up
/// error, not a surprise at the first request.
pub struct Server {
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    config: ServerConfig,
    telemetry: Telemetry,
}

/// The server's own metrics (registered with the others in `export::prometheus`).
#[derive(Clone, Default)]
pub struct Telemetry {
    pub open: Gauge,
    pub rejected: Counter,
    pub shed: Counter,
    /// Kubernetes reviews and cache hits (`--api-auth-kubernetes`).
    pub auth: AuthTelemetry,
}

impl Server {
    pub fn prepare(
        router: Router,
        config: &ServerConfig,
        listen: SocketAddr,
        metrics: &Metrics,
    ) -> Result<Self, ServerError> {
        Self::prepare_with_kubernetes(router, config, listen, metrics, None)
    }

    /// `kubernetes`: the collector's client, required by `config.kubernetes_auth`; to be called
    /// on the runtime that made it (reviews run there).
    pub fn prepare_with_kubernetes(
        router: Router,
        config: &ServerConfig,
        listen: SocketAddr,
        metrics: &Metrics,
        kubernetes: Option<kube::Client>,
    ) -> Result<Self, ServerError> {
        let kubernetes = match (config.kubernetes_auth, kubernetes) {
            (false, _) => None,
            (true, None) => return Err(ServerError::KubernetesAuthWithoutKubernetes),
            (true, Some(client)) => {
                let runtime =
                    tokio::runtime::Handle::try_current().map_err(|_| ServerError::NoRuntime)?;
                Some(Arc::new(KubeAuth::new(
                    client,
                    runtime,
                    metrics.collector.api.auth.clone(),
                )))
            }
        };
        let token = config
            .token_file
            .as_deref()
            .map(ApiToken::from_file)
            .transpose()?;
        let tls = match &config.tls {
            Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(
                cert, key,
            )?))),
            None => None,
        };
        if !listen.ip().is_loopback() && token.is_none() && kubernetes.is_none() && tls.is_none() {
            warn!(
                %listen,
                "the API listens beyond loopback with neither --api-token-file, \
                 --api-auth-kubernetes nor TLS: anyone who can reach it reads process ids, \
                 executable and cgroup paths"
            );
        }
        info!(
            %listen,
            token = token.is_some(),
            kubernetes_auth = kubernetes.is_some(),
            tls = tls.is_some(),
            max_connections = config.max_connections,
            "API server"
        );
        Ok(Self {
            router: with_authenticator(router, Auth { token, kubernetes }),
            tls,
            config: config.clone(),
            telemetry: metrics.collector.api.clone(),
        })
    }

    /// Accepts until `stop` resolves, then lets requests in progress finish.
    pub async fn run(
        self,
        listener: TcpListener,
        stop: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        let Server {
            router,
            tls,
            config,
            telemetry,
        } = self;
        // A fresh connection gets a moment to send its request before it can be shed.
        let grace = (config.header_timeout / 4).min(Duration::from_secs(1));
        let slots = Arc::new(Slots::new(config.max_connections.max(1), grace));
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout)
            .max_buf_size(MAX_HEADER_BYTES)
            .max_header_size(MAX_HEADER_BYTES);
        let http = Arc::new(http);
        let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
        tokio::pin!(stop);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut stop => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    // Out of file descriptors and the like: back off instead of spinning.
                    Err(e) => {
                        debug!(error = %e, "accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Some(slot) = slots.admit(peer.ip(), &telemetry) else {
                // At a limit with nobody to shed: this one is closed at once.
                telemetry.rejected.inc();
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let conn = Connection {
                http: http.clone(),
                router: router.clone(),
                tls: tls.clone(),
                header_timeout: config.header_timeout,
                lifetime: config.connection_lifetime,
                closing: closing_rx.clone(),
            };
            tokio::spawn(async move {
                conn.serve(stream, peer, slot).await;
            });
        }
        let _ = closing_tx.send(true);
        // Give requests in progress a moment; connections end on their own once idle.
        let deadline = Instant::now() + Duration::from_secs(2);
        while slots.open() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// The slice the API thread asks the scheduler for (`sched_setattr`, honoured for normal tasks
/// since Linux 6.12, ignored before). EEVDF lets a waking task with a shorter slice than the
/// running one preempt it; with the default slice an API request arriving while a busy workload
/// holds both CPUs waited for the workload's slice to run out (p99 4–8 ms, max > 100 ms measured
/// with a saturated Go server on this 2-CPU machine; BENCHMARKS.md). 0.1 ms is the kernel's
/// floor; the API's bursts of work are far shorter than a slice anyway.
pub const API_SLICE: Duration = Duration::from_micros(100);

impl Server {
    /// Serves on a thread of its own (a current-thread runtime) instead of the collector's
    /// shared workers: an API answer then waits neither for a harvest or a record batch in
    /// progress on those workers nor, thanks to its short slice ([`API_SLICE`]), for the
    /// workloads' slices. `done` receives the server's result when it stops.
    pub fn spawn_thread(
        self,
        listener: std::net::TcpListener,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<oneshot::Receiver<Result<(), ServerError>>> {
        let (done_tx, done_rx) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                if let Err(e) = request_slice(API_SLICE) {
                    debug!(error = %e, "the API thread keeps the default scheduler slice");
                }
                let result = runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).map_err(ServerError::Accept)?;
                    self.run(listener, stop).await
                });
                let _ = done_tx.send(result);
            })?;
        Ok(done_rx)
    }
}

/// Asks for a custom slice for the calling thread, keeping its policy (normal) and nice value.
fn request_slice(slice: Duration) -> std::io::Result<()> {
    /// `struct sched_attr`, first version (48 bytes).
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
    }
    // SAFETY: plain syscall; errno is read right after. -1 is also a valid nice value, so only
    // errno tells a failure apart.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, 0)
    };
    if nice == -1 && std::io::Error::last_os_error().raw_os_error() != Some(0) {
        return Err(std::io::Error::last_os_error());
    }
    let attr = SchedAttr {
        size: size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice,
        priority: 0,
        runtime: slice.as_nanos() as u64,
        deadline: 0,
        period: 0,
    };
    // SAFETY: `attr` is a valid sched_attr of the size it declares; pid 0 = this thread.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, std::ptr::from_ref(&attr), 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

struct Connection {
    http: Arc<hyper::server::conn::http1::Builder>,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    header_timeout: Duration,
    lifetime: Duration,
    closing: tokio::sync::watch::Receiver<bool>,
}

impl Connection {
    async fn serve(self, stream: tokio::net::TcpStream, peer: SocketAddr, mut slot: Slot) {
        let shed = slot.shed.take();
        let work = async {
            match &self.tls {
                Some(acceptor) => {
                    // The handshake is bounded like headers: a client that never finishes it
                    // holds a slot for no more than the header timeout.
                    match tokio::time::timeout(self.header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => self.drive(tls, &slot).await,
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => self.drive(stream, &slot).await,
            }
        };
        tokio::select! {
            _ = work => {}
            // Shed to admit a newer connection while it was idle or still sending headers.
            _ = async { if let Some(rx) = shed { let _ = rx.await; } else { std::future::pending::<()>().await } } => {
                debug!(%peer, "idle connection shed");
            }
        }
    }

    async fn drive<IO>(&self, io: IO, slot: &Slot)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let router = self.router.clone();
        let state = slot.state.clone();
        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let router = router.clone();
            let state = state.clone();
            async move {
                state.busy();
                let resp = router.oneshot(req.map(Body::new)).await;
                state.idle();
                resp
            }
        });
        let conn = self.http.serve_connection(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let mut closing = self.closing.clone();
        let mut draining = false;
        let lifetime = tokio::time::sleep(self.lifetime);
        tokio::pin!(lifetime);
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        debug!(error = %e, "API connection");
                    }
                    return;
                }
                // Shutting down: finish the request in progress, take no other. Once only: a
                // closed channel would wake this branch forever.
                _ = closing.changed(), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = &mut lifetime => return,
            }
        }
    }
}

/// Connection slots: at most `max` connections, and at most `max / 4` from one client address,
/// so one client (a tenant's pod trying slowloris) cannot take the places of others (a
/// Prometheus on another address). When a limit is reached, the connection of that client (or,
/// at the global cap, of anyone) that has waited longest for a complete request is shed, but
/// only once it had `grace` to send one; otherwise the new connection is closed at once.
struct Slots {
    max: usize,
    per_client: usize,
    grace: Duration,
    next_id: Mutex<u64>,
    conns: Arc<Mutex<HashMap<u64, SlotEntry>>>,
}

struct SlotEntry {
    client: std::net::IpAddr,
    /// Since when it waits for a request; None while a request is being answered.
    idle_since: Option<Instant>,
    admitted: Instant,
    shed: Option<oneshot::Sender<()>>,
}

struct Slot {
    state: SlotState,
    shed: Option<oneshot::Receiver<()>>,
}

/// Handle a connection uses to say whether it is in a request; frees the slot when dropped.
#[derive(Clone)]
struct SlotState {
    id: u64,
    conns: Arc<Mutex<HashMap<u64, SlotEntry>>>,
    _drop: Arc<SlotGuard>,
}

struct SlotGuard {
    id: u64,
    conns: Arc<Mutex<HashMap<u64, SlotEntry>>>,
    open: Gauge,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut c = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        c.remove(&self.id);
        self.open.set(c.len() as i64);
    }
}

impl SlotState {
    fn set(&self, idle: Option<Instant>) {
        if let Some(e) = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&self.id)
        {
            e.idle_since = idle;
        }
    }
    fn busy(&self) {
        self.set(None);
    }
    fn idle(&self) {
        self.set(Some(Instant::now()));
    }
}

impl Slots {
    fn new(max: usize, grace: Duration) -> Self {
        Self {
            max,
            per_client: (max / 4).max(1),
            grace,
            next_id: Mutex::new(0),
            conns: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn open(&self) -> usize {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The connection to shed among those `eligible`: idle (no request in progress), admitted at
    /// least `grace` ago, waiting the longest.
    fn victim(
        conns: &HashMap<u64, SlotEntry>,
        now: Instant,
        grace: Duration,
        eligible: impl Fn(&SlotEntry) -> bool,
    ) -> Option<u64> {
        conns
            .iter()
            .filter(|(_, e)| eligible(e) && now.saturating_duration_since(e.admitted) >= grace)
            .filter_map(|(id, e)| e.idle_since.map(|t| (t, *id)))
            .min()
            .map(|(_, id)| id)
    }

    fn admit(&self, client: std::net::IpAddr, telemetry: &Telemetry) -> Option<Slot> {
        let now = Instant::now();
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let from_client = conns.values().filter(|e| e.client == client).count();
        let victim = if from_client >= self.per_client {
            Some(Self::victim(&conns, now, self.grace, |e| {
                e.client == client
            })?)
        } else if conns.len() >= self.max {
            Some(Self::victim(&conns, now, self.grace, |_| true)?)
        } else {
            None
        };
        if let Some(v) = victim {
            if let Some(mut e) = conns.remove(&v)
                && let Some(tx) = e.shed.take()
            {
                let _ = tx.send(());
            }
            telemetry.shed.inc();
        }
        let id = {
            let mut n = self.next_id.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            *n
        };
        let (tx, rx) = oneshot::channel();
        conns.insert(
            id,
            SlotEntry {
                client,
                idle_since: Some(now),
                admitted: now,
                shed: Some(tx),
            },
        );
        telemetry.open.set(conns.len() as i64);
        let state = SlotState {
            id,
            conns: self.conns.clone(),
            _drop: Arc::new(SlotGuard {
                id,
                conns: self.conns.clone(),
                open: telemetry.open.clone(),
            }),
        };
        Some(Slot {
            state,
            shed: Some(rx),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches: a full server shedding a connection that had no time to send its request, a
    /// client taking more than its share, a busy connection shed.
    #[test]
    fn slots_shed_the_longest_idle_of_the_crowding_client() {
        let t = Telemetry::default();
        let slots = Slots::new(8, Duration::ZERO);
        let a: std::net::IpAddr = [10, 0, 0, 1].into();
        let b: std::net::IpAddr = [10, 0, 0, 2].into();
        let mut held: Vec<Slot> = (0..2).map(|_| slots.admit(a, &t).expect("slot")).collect();
        // a's oldest is busy: the next-oldest idle one goes.
        held[0].state.busy();
        let third = slots.admit(a, &t).expect("slot");
        assert!(
            held[0]
                .shed
                .as_mut()
                .is_some_and(|rx| rx.try_recv().is_err()),
            "busy kept"
        );
        assert!(
            held[1]
                .shed
                .as_mut()
                .is_some_and(|rx| rx.try_recv().is_ok()),
            "idle shed"
        );
        assert_eq!(t.shed.get(), 1);
        // b is not affected by a's limit.
        let _b: Vec<Slot> = (0..2).map(|_| slots.admit(b, &t).expect("slot")).collect();
        assert_eq!(t.shed.get(), 1);
        // All of a's connections busy: the new one is refused.
        third.state.busy();
        assert!(slots.admit(a, &t).is_none());
        held.push(third);

        // Within the grace period nothing is shed.
        let slots = Slots::new(4, Duration::from_secs(3600));
        let _one = slots.admit(a, &t).expect("slot");
        assert!(slots.admit(a, &t).is_none());
    }
}
