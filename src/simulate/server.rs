//! The simulated platform over HTTP: `GET /api/skolplattform/nationellaprov?from=…&tom=…`.
//!
//! It answers as the real service does (the current state of every student changed within the
//! window) on a virtual clock, optionally behind HTTP basic authentication, and can misbehave on
//! purpose: a per-second arrival limit answered with `429` and `Retry-After`, random `500`s, and
//! bodies cut short or made malformed. Fault decisions come from a seeded generator so a test
//! run is reproducible. It listens where it is told (tests and the demo pass a loopback port 0).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    let records = state.sim.platform.answer(from, tom, state.sim.clock.now());
    let fmt = |t: chrono::NaiveDateTime| t.format("%Y-%m-%dT%H:%M:00").to_string();
    let mut body = Vec::new();
    let written = DocumentWriter::begin(
        &mut body,
        state.sim.platform.population.version,
        &fmt(from),
        &fmt(tom),
    )
    .and_then(|mut w| {
        for r in &records {
            w.record(r)?;
        }
        w.end().map(|_| ())
    });
    if let Err(e) = written {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    if cut {
        stats.faults.fetch_add(1, Ordering::Relaxed);
        body.truncate(body.len() / 2);
    } else if garble {
        stats.faults.fetch_add(1, Ordering::Relaxed);
        let text = String::from_utf8_lossy(&body).replacen("</provresultat>", "</provresultat", 1);
        body = text.into_bytes();
    } else {
        stats.ok.fetch_add(1, Ordering::Relaxed);
    }
    (
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        body,
    )
        .into_response()
}
