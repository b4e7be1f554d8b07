//! Start-up before the database is ready. A database that refuses connections for a minute (a
//! server still starting after a reboot, a restart, a network not up yet), or a SQLite file whose
//! write lock another process holds (a backup, `VACUUM INTO`, an analyst's open write
//! transaction) must not make the service exit: five quick exits use up systemd's start limit
//! and the unit stays failed. So `run` tries again with back-off for
//! `daemon.startup_database_wait`, logging what it waits for; meanwhile the metrics listener
//! answers `/readyz` with 503 and why, `/healthz` with 200 ("starting"), and systemd hears no
//! `READY=1`. What waiting cannot mend (a wrong password, a database newer than this build) ends
//! the start at once.

use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

/// The first wait after a refusal; it doubles up to [`MAX_STARTUP_BACKOFF`].
const FIRST_STARTUP_BACKOFF: Duration = Duration::from_secs(1);
const MAX_STARTUP_BACKOFF: Duration = Duration::from_secs(30);

/// How long to wait after the `attempt`-th refusal (0 for the first): 1 s, 2 s, 4 s … 30 s.
pub(super) fn startup_backoff(attempt: u32) -> Duration {
    FIRST_STARTUP_BACKOFF
        .saturating_mul(1u32 << attempt.min(16))
        .min(MAX_STARTUP_BACKOFF)
}

/// What a failed start-up attempt means: wait for the database, or give up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Startup {
    /// The server does not answer or is restarting: waited for, logged at warn.
    Unreachable,
    /// Another process holds the write lock: waited for, logged at info (backups do this).
    Locked,
    /// Waiting will not help: the start fails with this error.
    GiveUp,
}

impl Startup {
    /// What a store error at start-up means.
    pub fn of(e: &crate::store::StoreError) -> Startup {
        if !e.is_transient() {
            Startup::GiveUp
        } else if e.is_locked() {
            Startup::Locked
        } else {
            Startup::Unreachable
        }
    }
}

/// Calls `connect` until it succeeds, `wait` is used up, shutdown is asked for or `judge` says
/// an error is not worth waiting out; the last error otherwise. While it waits, `listener` (a
/// second handle on the metrics socket, when there is one) serves the "starting" answers; it is
/// closed before this returns.
pub async fn wait_for_database<T, E, F, Fut>(
    mut connect: F,
    judge: impl Fn(&E) -> Startup,
    listener: Option<tokio::net::TcpListener>,
    wait: Duration,
    shutdown: &CancellationToken,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let started = Instant::now();
    let why = Arc::new(StdMutex::new("connecting to the database".to_owned()));
    let stop = CancellationToken::new();
    let server = listener.map(|listener| {
        let app = starting_router(why.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        })
    });
    let mut attempt = 0;
    let result = loop {
        let e = match connect().await {
            Ok(value) => break Ok(value),
            Err(e) => e,
        };
        let delay = startup_backoff(attempt);
        attempt += 1;
        let verdict = judge(&e);
        if shutdown.is_cancelled() || started.elapsed() + delay > wait {
            break Err(e);
        }
        let retry_in = humantime::format_duration(delay);
        let waited = humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()));
        match verdict {
            Startup::GiveUp => break Err(e),
            Startup::Locked => tracing::info!(
                error = %e,
                attempt,
                %waited,
                %retry_in,
                "the database is locked by another process (a backup, VACUUM, an open write \
                 transaction); waiting for it (no READY=1 until it is free)"
            ),
            Startup::Unreachable => tracing::warn!(
                error = %e,
                attempt,
                %waited,
                %retry_in,
                "the database does not answer yet; waiting (no READY=1 until it does)"
            ),
        }
        *why.lock().expect("reason lock") = format!("waiting for the database: {e}");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => break Err(e),
        }
    };
    stop.cancel();
    if let Some(server) = server {
        server.await.ok();
    }
    result
}

fn starting_router(why: Arc<StdMutex<String>>) -> Router {
    let ready = move || {
        let why = why.lock().expect("reason lock").clone();
        async move {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({ "ready": false, "database": why, "sources": [] })),
            )
                .into_response()
        }
    };
    Router::new()
        .route(
            "/healthz",
            get(|| async {
                axum::Json(serde_json::json!({
                    "status": "starting",
                    "version": env!("CARGO_PKG_VERSION"),
                }))
            }),
        )
        .route("/readyz", get(ready))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_up_back_off_doubles_from_a_second_to_half_a_minute() {
        let secs: Vec<u64> = (0..8).map(|a| startup_backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(startup_backoff(u32::MAX), MAX_STARTUP_BACKOFF);
    }

    #[tokio::test]
    async fn it_retries_until_the_database_answers_and_gives_up_when_the_wait_is_used_up() {
        let shutdown = CancellationToken::new();
        let mut calls = 0;
        let got: Result<u32, String> = wait_for_database(
            || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 3 {
                        Err(format!("refused {n}"))
                    } else {
                        Ok(n)
                    }
                }
            },
            |_: &String| Startup::Unreachable,
            None,
            Duration::from_secs(10),
            &shutdown,
        )
        .await;
        assert_eq!(got, Ok(3));
        // A wait shorter than the first back-off: one attempt, its error.
        let got: Result<u32, String> = wait_for_database(
            || async { Err("refused".to_owned()) },
            |_: &String| Startup::Unreachable,
            None,
            Duration::from_millis(500),
            &shutdown,
        )
        .await;
        assert_eq!(got, Err("refused".into()));
        // Shutdown asked for: no waiting.
        shutdown.cancel();
        let t = Instant::now();
        let got: Result<u32, String> = wait_for_database(
            || async { Err("refused".to_owned()) },
            |_: &String| Startup::Unreachable,
            None,
            Duration::from_secs(60),
            &shutdown,
        )
        .await;
        assert!(got.is_err() && t.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn what_waiting_cannot_mend_ends_the_start_at_once() {
        let shutdown = CancellationToken::new();
        let mut calls = 0;
        let t = Instant::now();
        let got: Result<u32, String> = wait_for_database(
            || {
                calls += 1;
                async { Err("password authentication failed".to_owned()) }
            },
            |_: &String| Startup::GiveUp,
            None,
            Duration::from_secs(60),
            &shutdown,
        )
        .await;
        assert_eq!(got, Err("password authentication failed".into()));
        assert_eq!(calls, 1);
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
