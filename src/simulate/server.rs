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
    /// Answer `429` with `Retry-After: 1` to requests beyond this many in the last second.
    pub rate_limit_per_second: Option<u32>,
    pub seed: u64,
}

/// What the simulator saw, for tests and the demo.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub ok: AtomicU64,
    pub rate_limited: AtomicU64,
    pub faults: AtomicU64,
    pub unauthorized: AtomicU64,
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
    let state = Arc::new(AppState {
        rng: Mutex::new(ChaCha8Rng::seed_from_u64(sim.faults.seed)),
        sim,
        stats,
        recent: Mutex::new(VecDeque::new()),
    });
    let app = Router::new()
        .route(ENDPOINT_PATH, get(answer))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
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
    let (fail, cut, garble) = {
        let mut rng = state.rng.lock().expect("rng lock");
        let f = &state.sim.faults;
        (
            rng.random_bool(f.server_error.clamp(0.0, 1.0)),
            rng.random_bool(f.truncated.clamp(0.0, 1.0)),
            rng.random_bool(f.malformed.clamp(0.0, 1.0)),
        )
    };
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
    let now = state.sim.clock.now();
    tokio::task::spawn_blocking(move || {
        let mut out = ChunkSender {
            tx,
            buf: Vec::with_capacity(CHUNK_BYTES),
        };
        if let Err(e) = render(&platform, from, tom, now, fault, &mut out) {
            // Headers are gone already: all that is left is to break the body. (Usually the
            // client went away and nobody hears it.)
            out.abort(e);
        }
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
}

impl ChunkSender {
    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
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
