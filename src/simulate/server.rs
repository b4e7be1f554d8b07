//! The simulated platform over HTTP: `GET /api/skolplattform/nationellaprov?from=…&tom=…`.
//!
//! It answers as the real service does (the current state of every student changed within the
//! window) on a virtual clock, optionally behind HTTP basic authentication, and can misbehave on
//! purpose: a per-second arrival limit answered with `429` and `Retry-After`, random `500`s, and
//! bodies cut short or made malformed. Fault decisions come from a seeded generator so a test
//! run is reproducible. It listens where it is told (tests and the demo pass a loopback port 0).
//!
//! Bodies stream: a blocking thread renders the answer one student at a time into 64 KiB chunks
//! that a bounded channel hands to the response, so a window over a whole year of a large
//! population costs the simulator a few chunks of memory, not the document. A body cut short
//! sends about half of the records and then breaks the connection (an error in the body stream:
//! hyper closes without the closing chunk), as a real connection dropping mid-transfer would.
//!
//! [`serve`] speaks plain HTTP; [`serve_tls`] speaks HTTPS and, like the platform, demands a
//! client certificate signed by a configured CA (mutual TLS): a client without one fails in the
//! handshake and never reaches the handler. The TLS listener accepts with tokio-rustls and serves
//! each connection with hyper-util, handshakes on the connection's own task under a timeout.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::platform::Platform;
use super::render::DocumentWriter;
use crate::source::ENDPOINT_PATH;
use crate::window::parse_local;

/// Misbehaviour, each a probability per request (0 = never).
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub server_error: f64,
    pub truncated: f64,
    pub malformed: f64,
    /// Probability that an answer starts only after `slow_delay` (headers included), as from a
    /// platform under load: a client with a shorter timeout must retry or split the window.
    pub slow: f64,
    pub slow_delay: Duration,
    /// Answer `429` with `Retry-After: 1` to requests beyond this many in the last second.
    pub rate_limit_per_second: Option<u32>,
    pub seed: u64,
}

/// How the platform behaves under load, as a real one does: every answer waits `latency` before
/// it starts, rendering costs `render_per_mb` per MiB sent, and a window with more changed
/// students than `max_students_per_response` is refused with `413`. All off by default: a
/// loopback server that answers in microseconds is what the tests of correctness want; a
/// benchmark of catching up wants the platform's pace.
#[derive(Clone, Debug, Default)]
pub struct Load {
    pub latency: Duration,
    pub render_per_mb: Duration,
    pub max_students_per_response: Option<usize>,
}

/// What the simulator saw, for tests and the demo.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub ok: AtomicU64,
    /// Windows refused with 413 (more students than `max_students_per_response`).
    pub too_large: AtomicU64,
    /// The largest body sent, in bytes.
    pub largest_response: AtomicU64,
    pub rate_limited: AtomicU64,
    pub faults: AtomicU64,
    pub unauthorized: AtomicU64,
    /// TLS handshakes that failed: no client certificate, an unknown one, or no TLS at all.
    pub tls_refused: AtomicU64,
    /// Arrival times, so a test can check the client's rate.
    pub arrivals: Mutex<Vec<Instant>>,
}

/// The platform's "now", shared so a test can let time pass while a client syncs.
#[derive(Clone, Debug)]
pub struct VirtualClock(Arc<std::sync::atomic::AtomicI64>);

impl VirtualClock {
    pub fn new(now: DateTime<Utc>) -> VirtualClock {
        VirtualClock(Arc::new(std::sync::atomic::AtomicI64::new(now.timestamp())))
    }

    pub fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.0.load(Ordering::SeqCst), 0).expect("in range")
    }

    pub fn set(&self, now: DateTime<Utc>) {
        self.0.store(now.timestamp(), Ordering::SeqCst);
    }
}

pub struct Simulator {
    pub platform: Arc<Platform>,
    /// What has happened by the clock's time is visible.
    pub clock: VirtualClock,
    pub faults: Faults,
    pub load: Load,
    /// HTTP basic credentials the simulator demands, if any.
    pub basic: Option<(String, String)>,
}

struct AppState {
    sim: Simulator,
    stats: Arc<Stats>,
    rng: Mutex<ChaCha8Rng>,
    recent: Mutex<VecDeque<Instant>>,
}

#[derive(serde::Deserialize)]
struct WindowQuery {
    from: Option<String>,
    tom: Option<String>,
}

/// Serves until `shutdown` completes; returns the statistics handle at once through `stats`.
///
/// # Errors
/// When serving fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sim: Simulator,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, sim, stats, Router::new(), shutdown).await
}

/// As [`serve`], with `extra` routes beside the platform's (the provisioning API's).
///
/// # Errors
/// When serving fails.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    sim: Simulator,
    stats: Arc<Stats>,
    extra: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // No Nagle: an answer goes out as headers and body chunks in separate writes, and with
    // Nagle each small write waits for the client's delayed ACK (measured: about 12 ms of
    // idle per window, most of a day-by-day re-read's wall time).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "simulator: TCP_NODELAY not set");
        }
    });
    axum::serve(listener, router(sim, stats).merge(extra))
        .with_graceful_shutdown(shutdown)
        .await
}

/// How long a client may take over its TLS handshake before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The platform's documented authentication: TLS with a client certificate that it requires.
///
/// The crypto provider is *ring*, named explicitly, the one reqwest uses: no process-wide default
/// provider is installed, so nothing here can panic over an ambiguous or repeated one.
#[derive(Clone)]
pub struct TlsSettings {
    config: Arc<rustls::ServerConfig>,
}

/// Why TLS settings cannot be used; names the file or the part, never key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: std::path::PathBuf,
        error: io::Error,
    },
    #[error("{what}: {message}")]
    Pem { what: &'static str, message: String },
    #[error("{what}: no certificate in it")]
    NoCertificate { what: &'static str },
    #[error("client CA: {0}")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
    #[error("server certificate and key: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsSettings {
    /// From PEM: the server's certificate chain (leaf first) and private key, and the CA
    /// certificates one of which must have signed a client's certificate.
    ///
    /// # Errors
    /// PEM that does not parse, no certificate where one is needed, a key that does not fit.
    pub fn from_pem(
        cert_chain: &[u8],
        key: &[u8],
        client_ca: &[u8],
    ) -> Result<TlsSettings, TlsError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = |what: &'static str, pem: &[u8]| {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsError::Pem {
                    what,
                    message: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(TlsError::NoCertificate { what });
            }
            Ok(certs)
        };
        let chain = certs("server certificate", cert_chain)?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Pem {
            what: "server key",
            message: e.to_string(),
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in certs("client CA", client_ca)? {
            roots.add(ca)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        // HTTP/1.1 only, as on the plain listener.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsSettings {
            config: Arc::new(config),
        })
    }

    /// As [`TlsSettings::from_pem`], from files.
    ///
    /// # Errors
    /// A file that cannot be read (named in the error), or what `from_pem` refuses.
    pub fn from_pem_files(
        cert_chain: &std::path::Path,
        key: &std::path::Path,
        client_ca: &std::path::Path,
    ) -> Result<TlsSettings, TlsError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|error| TlsError::Read {
                path: path.to_owned(),
                error,
            })
        };
        TlsSettings::from_pem(&read(cert_chain)?, &read(key)?, &read(client_ca)?)
    }
}

/// As [`serve`], over TLS with a required client certificate. A client whose handshake fails
/// (no certificate, or one the client CA did not sign) is counted in [`Stats::tls_refused`] and
/// never reaches a handler.
///
/// # Errors
/// When the listener fails.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    sim: Simulator,
    stats: Arc<Stats>,
    tls: TlsSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_tls_with(listener, sim, stats, tls, Router::new(), shutdown).await
}

/// As [`serve_tls`], with `extra` routes beside the platform's.
///
/// # Errors
/// When the listener fails.
pub async fn serve_tls_with(
    listener: tokio::net::TcpListener,
    sim: Simulator,
    stats: Arc<Stats>,
    tls: TlsSettings,
    extra: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(sim, stats.clone()).merge(extra);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config);
    let stop = tokio_util::sync::CancellationToken::new();
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        tracing::warn!(error = %e, "simulator: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // As in `serve`: no Nagle delay on small writes.
                tcp.set_nodelay(true).ok();
                connections.spawn(serve_tls_connection(
                    tcp,
                    peer,
                    acceptor.clone(),
                    app.clone(),
                    stats.clone(),
                    stop.clone(),
                ));
            }
        }
    }
    // Stop accepting, let responses in flight finish, then return.
    stop.cancel();
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn serve_tls_connection(
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    stats: Arc<Stats>,
    stop: tokio_util::sync::CancellationToken,
) {
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
    let stream = tokio::select! {
        () = stop.cancelled() => return,
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                stats.tls_refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, error = %e, "simulator: TLS handshake failed");
                return;
            }
            Err(_) => {
                stats.tls_refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "simulator: TLS handshake timed out");
                return;
            }
        },
    };
    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let connection = builder.serve_connection(
        hyper_util::rt::TokioIo::new(stream),
        hyper_util::service::TowerToHyperService::new(app),
    );
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "simulator: connection ended with an error");
    }
}

fn router(sim: Simulator, stats: Arc<Stats>) -> Router {
    let state = Arc::new(AppState {
        rng: Mutex::new(ChaCha8Rng::seed_from_u64(sim.faults.seed)),
        sim,
        stats,
        recent: Mutex::new(VecDeque::new()),
    });
    Router::new()
        .route(ENDPOINT_PATH, get(answer))
        .with_state(state)
}

async fn answer(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<WindowQuery>,
) -> Response {
    let stats = &state.stats;
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let arrived = Instant::now();
    stats.arrivals.lock().expect("stats lock").push(arrived);
    if let Some((user, password)) = &state.sim.basic {
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        if headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some(&expected)
        {
            stats.unauthorized.fetch_add(1, Ordering::Relaxed);
            return StatusCode::UNAUTHORIZED.into_response();
        }
    }
    if let Some(limit) = state.sim.faults.rate_limit_per_second {
        let mut recent = state.recent.lock().expect("rate lock");
        while recent
            .front()
            .is_some_and(|t| arrived.duration_since(*t) >= Duration::from_secs(1))
        {
            recent.pop_front();
        }
        if recent.len() >= limit as usize {
            stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            return (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "1")]).into_response();
        }
        recent.push_back(arrived);
    }
    let (Some(from), Some(tom)) = (q.from.as_deref(), q.tom.as_deref()) else {
        return (StatusCode::BAD_REQUEST, "from and tom are required").into_response();
    };
    let (Ok(from), Ok(tom)) = (parse_local(from), parse_local(tom)) else {
        return (
            StatusCode::BAD_REQUEST,
            "from and tom must be yyyy-MM-ddTHH:mm",
        )
            .into_response();
    };
    let now = state.sim.clock.now();
    if let Some(max) = state.sim.load.max_students_per_response {
        let platform = state.sim.platform.clone();
        let students =
            tokio::task::spawn_blocking(move || platform.changed_students(from, tom, now).len())
                .await
                .unwrap_or(usize::MAX);
        if students > max {
            stats.too_large.fetch_add(1, Ordering::Relaxed);
            return StatusCode::PAYLOAD_TOO_LARGE.into_response();
        }
    }
    if !state.sim.load.latency.is_zero() {
        tokio::time::sleep(state.sim.load.latency).await;
    }
    let (fail, cut, garble, slow) = {
        let mut rng = state.rng.lock().expect("rng lock");
        let f = &state.sim.faults;
        (
            rng.random_bool(f.server_error.clamp(0.0, 1.0)),
            rng.random_bool(f.truncated.clamp(0.0, 1.0)),
            rng.random_bool(f.malformed.clamp(0.0, 1.0)),
            rng.random_bool(f.slow.clamp(0.0, 1.0)),
        )
    };
    if slow {
        stats.faults.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(state.sim.faults.slow_delay).await;
    }
    if fail {
        stats.faults.fetch_add(1, Ordering::Relaxed);
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let fault = if cut {
        BodyFault::Cut
    } else if garble {
        BodyFault::Garbled
    } else {
        BodyFault::None
    };
    if fault == BodyFault::None {
        stats.ok.fetch_add(1, Ordering::Relaxed);
    } else {
        stats.faults.fetch_add(1, Ordering::Relaxed);
    }
    let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_IN_FLIGHT);
    let platform = state.sim.platform.clone();
    let render_per_mb = state.sim.load.render_per_mb;
    let stats = state.stats.clone();
    tokio::task::spawn_blocking(move || {
        let mut out = ChunkSender {
            tx,
            buf: Vec::with_capacity(CHUNK_BYTES),
            render_per_mb,
            sent: 0,
        };
        if let Err(e) = render(&platform, from, tom, now, fault, &mut out) {
            // Headers are gone already: all that is left is to break the body. (Usually the
            // client went away and nobody hears it.)
            out.abort(e);
        }
        stats
            .largest_response
            .fetch_max(out.sent, Ordering::Relaxed);
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    (
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        Body::from_stream(body),
    )
        .into_response()
}

/// What is wrong with a body on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyFault {
    None,
    /// About half is sent, then the connection breaks (no closing chunk).
    Cut,
    /// The root's end tag lacks its `>`.
    Garbled,
}

/// Bytes per body chunk.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks rendered ahead of the client: a slow reader slows the renderer, memory stays bounded.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Writes the answer to `[from, tom]` as of `now`, one student at a time.
fn render(
    platform: &Platform,
    from: chrono::NaiveDateTime,
    tom: chrono::NaiveDateTime,
    now: DateTime<Utc>,
    fault: BodyFault,
    out: &mut ChunkSender,
) -> io::Result<()> {
    let fmt = |t: chrono::NaiveDateTime| t.format("%Y-%m-%dT%H:%M:00").to_string();
    let students = platform.changed_students(from, tom, now);
    // Counting costs a second generation pass, paid only by the rare cut response.
    let cut_before =
        (fault == BodyFault::Cut).then(|| platform.records_of(&students, now).count() / 2);
    let mut w = DocumentWriter::begin(
        &mut *out,
        platform.population.version,
        &fmt(from),
        &fmt(tom),
    )?;
    for (n, record) in platform.records_of(&students, now).enumerate() {
        if cut_before == Some(n) {
            break;
        }
        w.record(&record)?;
    }
    match fault {
        BodyFault::None => {
            w.end()?;
        }
        BodyFault::Cut => w.into_inner().cut(),
        BodyFault::Garbled => {
            let out = w.into_inner();
            out.write_all(b"</provresultat\n")?;
            out.flush()?;
        }
    }
    Ok(())
}

/// A `Write` on the rendering thread whose bytes leave in chunks through a bounded channel, as
/// the items of a streaming body.
struct ChunkSender {
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
    /// The platform's rendering cost, paid before each chunk leaves.
    render_per_mb: Duration,
    /// Bytes sent so far.
    sent: u64,
}

impl ChunkSender {
    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
        if !self.render_per_mb.is_zero() {
            std::thread::sleep(
                self.render_per_mb
                    .mul_f64(chunk.len() as f64 / f64::from(1u32 << 20)),
            );
        }
        self.sent += chunk.len() as u64;
        self.tx
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }

    /// Sends the first half of what is buffered (so the cut usually falls inside an element,
    /// never inside a UTF-8 sequence), then breaks the body.
    fn cut(&mut self) {
        let mut keep = self.buf.len() / 2;
        while keep > 0 && self.buf[keep] & 0xC0 == 0x80 {
            keep -= 1;
        }
        self.buf.truncate(keep);
        if self.send().is_ok() {
            self.abort(io::Error::other(
                "body cut short on purpose (simulated fault)",
            ));
        }
    }

    /// Ends the body with an error: hyper then closes the connection without the closing chunk,
    /// so the client sees a body that broke, not one that ended.
    fn abort(&mut self, error: io::Error) {
        // Nobody to tell when the client is gone already.
        let _ = self.tx.blocking_send(Err(error));
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send()
    }
}
