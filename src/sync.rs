//! Syncing windows: fetch → parse while the body streams in → apply → record → commit.
//!
//! A window's changes, its `sync_run` row and the watermark commit in one transaction, so a
//! process killed at any instant loses nothing: the next start resumes from the watermark. A
//! window that fails is rolled back and recorded as failed in a transaction of its own; the
//! watermark stays.
//!
//! Retry policy by layer: HTTP statuses and connection errors are retried by the
//! [`Client`]; a body that is cut short or not well-formed fails the whole
//! attempt, which is repeated up to `body_attempts` times; a window the server finds too large
//! (413), that times out, or whose body passes `max_response_bytes`, is split in halves down to
//! one minute.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::time::Instant;

use chrono::{DateTime, NaiveDateTime, Utc};
use futures_util::TryStreamExt;
use tokio_util::io::{StreamReader, SyncIoBridge};
use tokio_util::sync::CancellationToken;

use crate::config::{CertificateDates, ConfigError, Settings, SourceSpec};
use crate::import::{apply_document, ImportError};
use crate::metrics::{KnownLabels, SourceMetrics, WindowOutcome};
use crate::source::{Client, Event, RetryReason, SourceError, TransportKind};
use crate::store::{ApplyContext, ApplySummary, RunKind, Store, StoreError, SyncRun};
use crate::window::{Pacer, Plan, Window};
use crate::xml::counter::LimitExceeded;
use crate::xml::{DocumentError, Limits};

// ---- A source and its windows -------------------------------------------------------------------

/// One configured source, ready to sync.
pub struct SyncSource {
    pub client: Client,
    pub plan: Plan,
    /// Local time of the first window.
    pub start: NaiveDateTime,
    /// Parser limits; `max_document_bytes` is the source's `max_response_bytes`.
    pub limits: Limits,
    /// Whole attempts per window when bodies break (cut short, not well-formed).
    pub body_attempts: u32,
    /// What a catch-up sizes its windows for (see [`Pacer`]); 0: every window is `max_window`.
    pub target_response_bytes: u64,
    /// Windows requested at once during a catch-up: 1, or 2 (the next one is fetched while the
    /// last is applied).
    pub max_in_flight: u32,
    /// When the client certificate and the CA expire (for metrics and `config check`).
    pub certificates: CertificateDates,
    /// Where this source's requests and windows are counted: detached (never exported, see
    /// [`SyncSource::detached_metrics`]) unless the daemon hands in its registry's handles.
    pub metrics: SourceMetrics,
}

impl SyncSource {
    pub fn name(&self) -> &str {
        self.client.name()
    }

    /// A source ready to sync, from its checked settings: the HTTP client is built here.
    ///
    /// # Errors
    /// What the client refuses (a URL it cannot use, credentials over plain HTTP, a key it
    /// cannot read), named by the setting as `source.<name>.<key>`.
    pub fn from_spec(spec: SourceSpec) -> Result<SyncSource, ConfigError> {
        let name = spec.client.name.clone();
        let invalid = |setting: &str, message: String| ConfigError::Invalid {
            origin: format!("source.{name}.{setting}"),
            message,
        };
        let client = Client::new(spec.client).map_err(|e| match e {
            SourceError::Config {
                setting, message, ..
            } => invalid(setting, message),
            other => invalid("url", other.to_string()),
        })?;
        Ok(SyncSource {
            client,
            plan: spec.plan,
            start: spec.start,
            limits: spec.limits,
            body_attempts: spec.body_attempts,
            target_response_bytes: spec.target_response_bytes,
            max_in_flight: spec.max_in_flight,
            certificates: spec.certificates,
            metrics: SyncSource::detached_metrics(&name),
        })
    }

    /// Metric handles on a registry of their own, for one-shot commands and tests.
    pub fn detached_metrics(name: &str) -> SourceMetrics {
        SourceMetrics::detached(name, &KNOWN_LABELS)
    }

    /// Counts what the HTTP client reports, as it happens.
    fn count(&self, event: Event) {
        match event {
            Event::Attempt { status, elapsed } => self.metrics.http_attempt(status, elapsed),
            Event::Retry { reason, .. } => self.metrics.retry(reason.as_str()),
        }
    }

    /// A fresh pacer for a catch-up or backfill of this source.
    pub fn pacer(&self) -> Pacer {
        Pacer::new(
            &self.plan,
            self.target_response_bytes,
            self.client.request_timeout(),
        )
    }
}

/// Tells the pacer what a planned window became: what each committed part's response was, and,
/// when it had to be split, that the planned span was refused.
fn pace(pacer: &mut Pacer, planned: &Window, reports: &[WindowReport]) {
    for r in reports {
        pacer.answered(r.window.span(), r.bytes, r.seconds);
    }
    if reports.len() > 1 {
        let worked = reports.iter().map(|r| r.bytes).max().unwrap_or(0);
        pacer.too_large(planned.span(), worked);
    }
}

/// What one committed window did.
#[derive(Clone, Debug)]
pub struct WindowReport {
    pub window: Window,
    pub summary: ApplySummary,
    pub bytes: u64,
    pub http_status: u16,
    /// HTTP attempts of the successful body attempt.
    pub attempts: u32,
    /// The document's schema version label.
    pub version: String,
    pub seconds: f64,
    /// Enumeration values outside the document's version, by field.
    pub unknown_values: Vec<(&'static str, u64)>,
    /// Time the commit took.
    pub commit: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("window {window}: {error}")]
    Document {
        window: String,
        #[source]
        error: DocumentError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("window {window}: {message}")]
    Internal { window: String, message: String },
}

// ---- What a failed attempt leads to -------------------------------------------------------------

/// What happens after a window attempt failed: the one decision [`next_step`] makes, for every
/// error the engine can meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// A smaller window may succeed (413, a timeout, a body over `max_response_bytes`): the
    /// window is split in halves, down to one minute.
    Split,
    /// The body broke on the way (cut short, garbled): the whole attempt (request, parse,
    /// apply) is repeated, up to `body_attempts` times; then the window fails with the located
    /// error.
    RetryBody,
    /// The window fails, and the same request may well succeed later (a platform or database
    /// that is busy, restarting or unreachable, retries used up): the daemon backs off and tries
    /// again; nothing needs fixing.
    RetryLater,
    /// The window fails, and repeating it will fail the same way until someone changes
    /// something (configuration, credentials, the platform's data, the database): the daemon
    /// still backs off and tries again, but the error says what to look at.
    Fail,
}

/// What to do after `e`. Every variant of every error the engine meets is named here, with no
/// wildcard arm, so a variant added later is a compile error until someone decides it.
pub fn next_step(e: &SyncError) -> Next {
    match e {
        SyncError::Source(e) => after_source(e),
        SyncError::Document { error, .. } => after_document(error),
        SyncError::Store(e) => after_store(e),
        // The parser's thread died: a bug, not the input's fault or the network's.
        SyncError::Internal { .. } => Next::Fail,
    }
}

fn after_source(e: &SourceError) -> Next {
    match e {
        SourceError::TooLarge { .. } => Next::Split,
        SourceError::Transport { kind, .. } => match kind {
            TransportKind::TimedOut => Next::Split,
            TransportKind::BodyCut => Next::RetryBody,
            // The client has retried it `max_attempts` times already.
            TransportKind::ConnectionFailed => Next::RetryLater,
            TransportKind::TlsRefused => Next::Fail,
        },
        // 5xx/429 until the attempts were used up, or a wait longer than max_retry_wait: the
        // platform is busy; the daemon's back-off is the better judge of when to ask again.
        SourceError::GaveUp { .. } | SourceError::WaitTooLong { .. } => Next::RetryLater,
        // 400/401/403/404, a redirect not followed, a setting the client refused.
        SourceError::Refused { .. }
        | SourceError::Redirected { .. }
        | SourceError::Config { .. } => Next::Fail,
    }
}

/// What to do after a document error (from the parser, or from building an element the scanner
/// had only delimited).
pub fn after_document(e: &DocumentError) -> Next {
    match e {
        // Every failure of well-formedness: bytes cut short (at 0 bytes: empty) or changed on the
        // way, or an intermediary's page (HTML with a DOCTYPE, another root) where the document
        // should be. The platform only sends well-formed documents, so the next attempt may well
        // bring one.
        DocumentError::Empty
        | DocumentError::Malformed { .. }
        | DocumentError::Truncated { .. }
        | DocumentError::Doctype { .. }
        | DocumentError::Entity { .. }
        | DocumentError::WrongRoot { .. }
        | DocumentError::TrailingContent { .. }
        | DocumentError::Character { .. } => Next::RetryBody,
        DocumentError::Io { source, .. } => match source.kind() {
            // The body stalled (read_timeout) or took too long (request_timeout).
            std::io::ErrorKind::TimedOut => Next::Split,
            // The connection broke while the body streamed in (reqwest's error, wrapped). The
            // kind is std's `non_exhaustive` enum: only a timeout changes the decision.
            _ => Next::RetryBody,
        },
        DocumentError::Limit { limit, .. } => match limit {
            LimitExceeded::Document(_) => Next::Split,
            // One element larger than parser.max_record_bytes: a smaller window holds the same
            // element, and the same bytes come again.
            LimitExceeded::Record(_) => Next::Fail,
        },
        // Decided by the content, not by the transfer: a declared encoding other than UTF-8,
        // nesting or attributes past the limits are sent the same way every time (and are what
        // a hostile platform sends), so repeating the request only costs the platform.
        DocumentError::Encoding { .. }
        | DocumentError::TooDeep { .. }
        | DocumentError::TooManyAttributes { .. } => Next::Fail,
    }
}

fn after_store(e: &StoreError) -> Next {
    match e {
        StoreError::Document(d) => after_document(d),
        StoreError::Connect { .. } | StoreError::Query { .. } => {
            if e.is_transient() {
                // Busy or locked (SQLite), a connection lost, a server restarting.
                Next::RetryLater
            } else {
                // A full disk, a constraint, a missing table: look at the database.
                Next::Fail
            }
        }
        // The runtime is shutting down: the next start reads the window again.
        StoreError::Cancelled => Next::RetryLater,
        // Another instance synced the source meanwhile: plan again from the stored watermark.
        StoreError::WatermarkMoved { .. } => Next::RetryLater,
        StoreError::UnsupportedUrl(_)
        | StoreError::InvalidSchema { .. }
        | StoreError::Migrate(_)
        | StoreError::NewerSchema { .. }
        | StoreError::Corrupt(_)
        | StoreError::Refused(_) => Next::Fail,
    }
}

impl SyncError {
    /// The HTTP status a failed window is recorded with: the error's own, else that of the
    /// response whose body or commit failed.
    fn http_status(&self, last_response: Option<u16>) -> Option<u16> {
        match self {
            SyncError::Source(s) => s.status().or(last_response),
            SyncError::Document { .. } | SyncError::Store(_) | SyncError::Internal { .. } => {
                last_response
            }
        }
    }
}

// ---- One window: attempts, retries, the outcome recorded ----------------------------------------

/// One window to sync, as every step of an attempt needs it.
#[derive(Clone, Copy)]
struct WindowJob<'a> {
    store: &'a dyn Store,
    source: &'a SyncSource,
    window: Window,
    kind: RunKind,
    /// See [`SyncRun::expected_watermark`].
    expected_watermark: Option<DateTime<Utc>>,
}

impl WindowJob<'_> {
    fn label(&self) -> String {
        self.window.label()
    }
}

/// A failed attempt, with the status of the response it got (a body that broke, or a database
/// that refused, after an HTTP 200), for the recorded run.
struct Failed {
    error: SyncError,
    http_status: Option<u16>,
}

/// Syncs one window (splitting it if it must) and returns the committed parts in order.
///
/// `expected_watermark` is the watermark a [`RunKind::Sync`] window was planned from; each part
/// commits only if the stored watermark still is what the parts before it left (see
/// [`SyncRun::expected_watermark`]).
///
/// # Errors
/// The error of the first part that could not be synced; parts before it stay committed, and
/// for a [`RunKind::Sync`] the watermark stands at the end of the last of them.
pub async fn sync_window(
    store: &dyn Store,
    source: &SyncSource,
    window: Window,
    kind: RunKind,
    mut expected_watermark: Option<DateTime<Utc>>,
) -> Result<Vec<WindowReport>, SyncError> {
    let mut pending = vec![window];
    let mut done = Vec::new();
    // A stack of windows still to do, earliest last, so halves are synced in time order.
    while let Some(w) = pending.pop() {
        let job = WindowJob {
            store,
            source,
            window: w,
            kind,
            expected_watermark,
        };
        match attempt_window(job).await {
            Ok(report) => {
                // The watermark never moves backwards: a first half that ends inside the overlap
                // leaves it where it was.
                if kind == RunKind::Sync {
                    expected_watermark = expected_watermark.max(Some(w.tom_utc));
                }
                done.push(report)
            }
            Err(e) => match next_step(&e) {
                Next::Split => match w.split(source.plan.tz) {
                    Some((first, second)) => {
                        tracing::info!(source = source.name(), window = %w.label(), error = %e, "splitting the window");
                        pending.push(second);
                        pending.push(first);
                    }
                    None => return Err(e),
                },
                // A body that still broke after its retries (attempt_window), or a failure
                // that a smaller window would not change.
                Next::RetryBody | Next::RetryLater | Next::Fail => return Err(e),
            },
        }
    }
    Ok(done)
}

/// One window, with whole-attempt retries for broken bodies; records a failure before returning
/// it.
async fn attempt_window(job: WindowJob<'_>) -> Result<WindowReport, SyncError> {
    let source = job.source;
    let started_at = Utc::now();
    let clock = Instant::now();
    let mut attempt = 0;
    let result = loop {
        attempt += 1;
        match try_once(job, (started_at, clock)).await {
            Err(f) if next_step(&f.error) == Next::RetryBody && attempt < source.body_attempts => {
                source
                    .metrics
                    .retry(crate::source::RetryReason::Body.as_str());
                tracing::warn!(source = source.name(), window = %job.label(), attempt, error = %f.error, "body broke; trying the window again");
            }
            other => break other,
        }
    };
    let elapsed = clock.elapsed();
    match result {
        Ok(report) => {
            observe_window(&job, Ok(&report), elapsed);
            Ok(report)
        }
        Err(f) => {
            observe_window(&job, Err(&f.error), elapsed);
            let run = SyncRun {
                source: source.name().to_owned(),
                kind: job.kind,
                window: job.window,
                tz: source.plan.tz,
                started_at,
                finished_at: Utc::now(),
                http_status: f.error.http_status(f.http_status),
                bytes: 0,
                summary: ApplySummary::default(),
                error: Some(f.error.to_string()),
                expected_watermark: job.expected_watermark,
            };
            // Recording the failure can fail for the same reason the window did (a database
            // that is locked or gone): the window's own error is the one to report, not this
            // follow-up.
            if let Err(record_error) = job.store.record_failed_run(&run).await {
                tracing::warn!(source = source.name(), window = %job.label(), error = %record_error, "the failed window could not be recorded");
            }
            Err(f.error)
        }
    }
}

/// The one place a window's outcome is logged and counted: one structured event per window
/// attempt, and the metrics from the same values.
fn observe_window(
    job: &WindowJob<'_>,
    result: Result<&WindowReport, &SyncError>,
    elapsed: std::time::Duration,
) {
    let WindowJob {
        source,
        kind,
        window,
        ..
    } = *job;
    let metrics = &source.metrics;
    match result {
        Ok(r) => {
            let s = &r.summary;
            // tracing needs the level as a constant: the macro writes the event once for both.
            macro_rules! event {
                ($level:ident) => {
                    tracing::$level!(
                        source = source.name(),
                        kind = kind.as_str(),
                        from = %window.from_param(),
                        tom = %window.tom_param(),
                        outcome = "ok",
                        http_status = r.http_status,
                        attempts = r.attempts,
                        version = %r.version,
                        bytes = r.bytes,
                        records = s.records,
                        changed = s.changed,
                        unchanged = s.unchanged,
                        cleared = s.cleared,
                        quarantined = s.quarantined,
                        duration_seconds = elapsed.as_secs_f64(),
                        "window synced"
                    )
                };
            }
            if metrics.loud() {
                event!(info);
            } else {
                event!(debug);
            }
            metrics.response_bytes(r.bytes);
            metrics.window(&WindowOutcome {
                kind,
                ok: true,
                duration: elapsed,
                summary: s,
                unknown_values: &r.unknown_values,
                commit: Some(r.commit),
            });
            if kind == RunKind::Sync {
                metrics.watermark(window.tom_utc);
            }
        }
        Err(e) => {
            tracing::warn!(
                source = source.name(),
                kind = kind.as_str(),
                from = %window.from_param(),
                tom = %window.tom_param(),
                outcome = "failed",
                duration_seconds = elapsed.as_secs_f64(),
                error = %e,
                "window failed"
            );
            metrics.window(&WindowOutcome {
                kind,
                ok: false,
                duration: elapsed,
                summary: &ApplySummary::default(),
                unknown_values: &[],
                commit: None,
            });
        }
    }
}

async fn try_once(
    job: WindowJob<'_>,
    (started_at, clock): (DateTime<Utc>, Instant),
) -> Result<WindowReport, Failed> {
    let source = job.source;
    let fetched = source
        .client
        .fetch(&job.window, |e| source.count(e))
        .await
        .map_err(|e| Failed {
            error: e.into(),
            http_status: None,
        })?;
    let received = Received {
        status: fetched.status,
        attempts: fetched.attempts,
        started_at,
        clock,
    };
    let watch = BodyWatch::default();
    let declared = fetched.response.content_length();
    let reader = body_reader(fetched.response, watch.clone());
    apply_and_commit(job, reader, received)
        .await
        .map_err(|e| Failed {
            error: match next_step(&e) {
                Next::RetryBody => watch.explain(e, &job.window, declared, received.attempts),
                Next::Split | Next::RetryLater | Next::Fail => e,
            },
            http_status: Some(received.status),
        })
}

// ---- The body as the parser reads it ------------------------------------------------------------

/// What the transport said of a body while the parser read it: how many bytes came, and the
/// error that ended it early, if one did. The parser only sees bytes stop; this tells a body
/// that the connection cut (whatever the parser tripped on at the cut) from one that arrived
/// whole and is wrong.
#[derive(Clone, Default)]
struct BodyWatch(std::sync::Arc<std::sync::Mutex<BodyState>>);

#[derive(Default)]
struct BodyState {
    bytes: u64,
    /// The transport's error (hyper's "end of file before message length reached", a chunked
    /// or gzip stream cut), with its causes.
    broke: Option<String>,
}

impl BodyWatch {
    fn state(&self) -> std::sync::MutexGuard<'_, BodyState> {
        // A panic while holding this lock can only come from a bug in the two lines that take
        // it; the counts are still meaningful.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `e` as the window's error: when the transport cut the body, it says so (with what the
    /// parser saw at the cut); otherwise `e` as it was.
    fn explain(
        &self,
        e: SyncError,
        window: &Window,
        declared: Option<u64>,
        attempts: u32,
    ) -> SyncError {
        let state = self.state();
        let Some(broke) = &state.broke else {
            return e;
        };
        let of = declared
            .map(|n| format!(" of the {n} declared"))
            .unwrap_or_default();
        SourceError::Transport {
            request: crate::source::window_request(window),
            kind: TransportKind::BodyCut,
            attempts,
            message: format!(
                "the body ended after {} bytes{of} ({broke}); the parser had stopped at: {}",
                state.bytes,
                match &e {
                    SyncError::Document { error, .. } => error.to_string(),
                    other => other.to_string(),
                }
            ),
        }
        .into()
    }
}

/// A response's body as a blocking reader, for the parser's thread (the bridge lets it read the
/// async body there). A timeout while the body streams in (`read_timeout` between bytes, or
/// `request_timeout` in all) keeps its kind through the parser, so it is reported as a timeout
/// and splits the window, instead of passing for a body cut short. `watch` hears of every chunk
/// and of the error that ends the body early.
fn body_reader(response: reqwest::Response, watch: BodyWatch) -> impl io::Read + Send + 'static {
    let on_chunk = watch.clone();
    SyncIoBridge::new(StreamReader::new(
        response
            .bytes_stream()
            .inspect_ok(move |chunk| on_chunk.state().bytes += chunk.len() as u64)
            .map_err(move |e| {
                if e.is_timeout() {
                    io::Error::new(io::ErrorKind::TimedOut, e)
                } else {
                    watch.state().broke = Some(crate::error::chain(&e));
                    io::Error::other(e)
                }
            }),
    ))
}

/// What is known of a response whose body is about to be applied.
#[derive(Clone, Copy)]
struct Received {
    status: u16,
    attempts: u32,
    started_at: DateTime<Utc>,
    clock: Instant,
}

/// Parses and applies a window's body from `reader`, records the run and commits it with the
/// watermark.
async fn apply_and_commit<R: std::io::Read + Send + 'static>(
    job: WindowJob<'_>,
    reader: R,
    fetched: Received,
) -> Result<WindowReport, SyncError> {
    let WindowJob {
        store,
        source,
        window,
        kind,
        expected_watermark,
    } = job;
    let window = &window;
    let Received {
        started_at, clock, ..
    } = fetched;
    let ctx = ApplyContext {
        source: source.name().to_owned(),
        document: format!("window {}", window.label()),
        now: Utc::now(),
    };
    let (mut tx, report) = match apply_document(store, reader, source.limits, ctx).await {
        Ok(applied) => applied,
        Err(ImportError::Document(DocumentError::Io {
            location,
            source: e,
        })) if e.kind() == io::ErrorKind::TimedOut => {
            return Err(SourceError::Transport {
                request: crate::source::window_request(window),
                kind: TransportKind::TimedOut,
                attempts: fetched.attempts,
                message: format!(
                    "the response stalled at {location} (read_timeout between bytes, \
                     request_timeout in all): {}",
                    crate::error::chain(&e)
                ),
            }
            .into())
        }
        Err(ImportError::Document(error)) => {
            return Err(SyncError::Document {
                window: window.label(),
                error,
            })
        }
        Err(ImportError::Store(e)) => return Err(e.into()),
        Err(ImportError::Parser(message)) => {
            return Err(SyncError::Internal {
                window: window.label(),
                message,
            })
        }
    };
    let run = SyncRun {
        source: source.name().to_owned(),
        kind,
        window: *window,
        tz: source.plan.tz,
        started_at,
        finished_at: Utc::now(),
        http_status: Some(fetched.status),
        bytes: report.bytes,
        summary: report.summary.clone(),
        error: None,
        expected_watermark,
    };
    if let Err(e) = tx.record_window(&run).await {
        tx.rollback().await.ok();
        return Err(e.into());
    }
    let committing = Instant::now();
    tx.commit().await?;
    let commit = committing.elapsed();
    Ok(WindowReport {
        window: *window,
        summary: report.summary,
        bytes: report.bytes,
        http_status: fetched.status,
        attempts: fetched.attempts,
        version: report.header.version.label().to_owned(),
        seconds: clock.elapsed().as_secs_f64(),
        unknown_values: report
            .stats
            .unknown_by_field()
            .into_iter()
            .map(|(field, n)| (field.as_str(), n))
            .collect(),
        commit,
    })
}

// ---- Catching up: windows one after another, the next one fetched ahead -------------------------

/// Syncs windows from the watermark until caught up with `horizon` (now, or an `--until` time),
/// calling `on_window` after each commit.
///
/// # Errors
/// The first window that could not be synced; everything before it is committed.
pub async fn catch_up(
    store: &dyn Store,
    source: &SyncSource,
    horizon: DateTime<Utc>,
    on_window: impl FnMut(&WindowReport),
) -> Result<Vec<WindowReport>, SyncError> {
    catch_up_until(store, source, horizon, &CancellationToken::new(), on_window).await
}

/// As [`catch_up`], but stops planning new windows once `stop` is cancelled. A window in flight
/// is not interrupted here: it commits or fails as a whole (the daemon bounds how long it waits).
///
/// # Errors
/// The first window that could not be synced; everything before it is committed.
pub async fn catch_up_until(
    store: &dyn Store,
    source: &SyncSource,
    horizon: DateTime<Utc>,
    stop: &CancellationToken,
    mut on_window: impl FnMut(&WindowReport),
) -> Result<Vec<WindowReport>, SyncError> {
    let mut all = Vec::new();
    let mut windows = Windows::new(source);
    while !stop.is_cancelled() {
        let watermark = store.watermark(source.name()).await?.map(|w| w.utc);
        if let Some(w) = watermark {
            source.metrics.watermark(w);
        }
        let Some(planned) =
            source
                .plan
                .next_sized(watermark, source.start, horizon, windows.pacer.span())
        else {
            break;
        };
        let (_, reports) = windows
            .run(store, planned, RunKind::Sync, watermark, |tom, span| {
                source
                    .plan
                    .next_sized(Some(tom), source.start, horizon, span)
            })
            .await?;
        for report in reports {
            on_window(&report);
            all.push(report);
        }
    }
    Ok(all)
}

/// A catch-up's or backfill's windows in turn: the pacer that sizes them, and the windows after
/// the current one, planned and requested ahead, oldest first. Up to `max_in_flight` requests
/// are in flight at once, so a platform's latency for one window overlaps its rendering of
/// another and our writing of a third. Each body waits in a spool; the windows still commit one
/// by one, in order.
struct Windows<'a> {
    source: &'a SyncSource,
    pacer: Pacer,
    ahead: VecDeque<(Window, AheadFetch<'a>)>,
}

impl<'a> Windows<'a> {
    fn new(source: &'a SyncSource) -> Self {
        Windows {
            source,
            pacer: source.pacer(),
            ahead: VecDeque::new(),
        }
    }

    /// Applies and commits the `planned` window (or the one fetched ahead for it), keeping the
    /// fetches ahead topped up meanwhile (`next` plans the window after one that ends at its
    /// first argument, with a span), and paces by what it answered. Returns the window applied
    /// and its reports (more than one when it was split).
    async fn run(
        &mut self,
        store: &'a dyn Store,
        planned: Window,
        kind: RunKind,
        expected_watermark: Option<DateTime<Utc>>,
        next: impl Fn(DateTime<Utc>, chrono::Duration) -> Option<Window>,
    ) -> Result<(Window, Vec<WindowReport>), SyncError> {
        let source = self.source;
        let (window, fetch) = take_ahead(&mut self.ahead, planned);
        top_up(
            &mut self.ahead,
            source,
            &self.pacer,
            fetch.is_none(),
            window,
            next,
        );
        let current = apply_window(
            WindowJob {
                store,
                source,
                window,
                kind,
                expected_watermark,
            },
            fetch,
        );
        let reports = while_fetching_ahead(current, &mut self.ahead).await?;
        pace(&mut self.pacer, &window, &reports);
        Ok((window, reports))
    }
}

/// A window's response being fetched ahead of its turn (`None` once fetched: it could not be).
type AheadFetch<'a> = std::pin::Pin<
    Box<
        futures_util::future::MaybeDone<
            std::pin::Pin<Box<dyn Future<Output = Option<Spooled>> + Send + 'a>>,
        >,
    >,
>;

/// The window to apply now, with its fetch when it was fetched ahead. What was fetched ahead is
/// used only if it starts where the planned window must: the window before it committed whole.
/// Otherwise every fetch ahead is stale (dropped, cancelling any still in flight).
fn take_ahead<'a>(
    ahead: &mut VecDeque<(Window, AheadFetch<'a>)>,
    planned: Window,
) -> (Window, Option<AheadFetch<'a>>) {
    match ahead.pop_front() {
        Some((w, fetch)) if w.from_utc == planned.from_utc => (w, Some(fetch)),
        Some(_) | None => {
            ahead.clear();
            (planned, None)
        }
    }
}

/// Plans and starts fetches ahead until `max_in_flight` requests are out, the current window's
/// own counting when it was not fetched ahead (`own`). `next` plans the window after one that
/// ends at its first argument, with a span. Nothing is fetched ahead while the pacer is still
/// growing the span (a window planned then would be too small and cost a request of its own).
fn top_up<'a>(
    ahead: &mut VecDeque<(Window, AheadFetch<'a>)>,
    source: &'a SyncSource,
    pacer: &Pacer,
    own: bool,
    current: Window,
    next: impl Fn(DateTime<Utc>, chrono::Duration) -> Option<Window>,
) {
    let mut last_tom = ahead.back().map_or(current.tom_utc, |(w, _)| w.tom_utc);
    while pacer.settled() && usize::from(own) + ahead.len() < source.max_in_flight as usize {
        let Some(window) = next(last_tom, pacer.span()) else {
            break;
        };
        last_tom = window.tom_utc;
        ahead.push_back((window, fetch_ahead(source, window)));
    }
}

/// Applies one window and commits it: from its spool when it was fetched ahead (waiting for the
/// fetch if it is still under way), else, or when that fails, fetched the usual way.
async fn apply_window(
    job: WindowJob<'_>,
    fetch: Option<AheadFetch<'_>>,
) -> Result<Vec<WindowReport>, SyncError> {
    if let Some(mut fetch) = fetch {
        (&mut fetch).await;
        if let Some(spooled) = fetch.as_mut().take_output().flatten() {
            if let Some(report) = apply_spooled(job, spooled).await {
                return Ok(vec![report]);
            }
        }
    }
    sync_window(
        job.store,
        job.source,
        job.window,
        job.kind,
        job.expected_watermark,
    )
    .await
}

/// Starts fetching `window`'s response into a spool, ahead of its turn.
fn fetch_ahead(source: &SyncSource, window: Window) -> AheadFetch<'_> {
    let fetch: std::pin::Pin<Box<dyn Future<Output = Option<Spooled>> + Send + '_>> =
        Box::pin(spool(source, window));
    Box::pin(futures_util::future::maybe_done(fetch))
}

/// Runs `current` (a window being applied) while every fetch ahead makes progress. A fetch
/// ahead that finishes keeps its spool until its turn; one that fails is simply not used (the
/// window is fetched again in its turn, with the usual retries, splits and records).
async fn while_fetching_ahead<T>(
    current: impl Future<Output = T>,
    ahead: &mut VecDeque<(Window, AheadFetch<'_>)>,
) -> T {
    tokio::pin!(current);
    let fetching = std::future::poll_fn(|cx| {
        for (_, fetch) in ahead.iter_mut() {
            // A finished fetch answers Ready at once and keeps its output.
            let _ = fetch.as_mut().poll(cx);
        }
        // Never ready: the fetches ahead have no end as a whole, only `current` ends this.
        std::task::Poll::<std::convert::Infallible>::Pending
    });
    tokio::pin!(fetching);
    tokio::select! {
        biased;
        r = &mut current => r,
        never = &mut fetching => match never {},
    }
}

/// The label values a source's metrics know before any event: the client's retry reasons and
/// the fields whose unknown values the parser counts.
pub const KNOWN_LABELS: KnownLabels = KnownLabels {
    retry_reasons: &RetryReason::LABELS,
    enum_fields: &crate::xml::version::EnumField::LABELS,
};

/// Builds every configured source, reading its credentials, in the configuration's order.
///
/// # Errors
/// The first source that cannot be built, named with its key.
pub fn sources(
    settings: &Settings,
    config_path: Option<&std::path::Path>,
    credentials_dir: Option<&std::path::Path>,
) -> Result<Vec<SyncSource>, ConfigError> {
    settings
        .source
        .iter()
        .map(|s| SyncSource::from_spec(s.spec(&settings.parser, config_path, credentials_dir)?))
        .collect()
}

/// Bytes of a body fetched ahead kept in memory; the rest waits in an anonymous temporary file
/// (gone when closed, or when the process dies), so a response waiting for its turn costs at
/// most this much memory whatever its size.
const SPOOL_MEMORY: usize = 1 << 20;

/// A response fetched ahead of its turn, whole.
struct Spooled {
    head: Vec<u8>,
    rest: Option<std::fs::File>,
    received: Received,
}

/// Fetches a window's whole response into a spool, or `None` when that fails for any reason
/// (the window is then fetched in its turn, where failures are retried, split and recorded).
async fn spool(source: &SyncSource, window: Window) -> Option<Spooled> {
    use futures_util::StreamExt;
    use std::io::Write;
    let started_at = Utc::now();
    let clock = Instant::now();
    let fetched = source
        .client
        .fetch(&window, |e| source.count(e))
        .await
        .ok()?;
    let limit = source.limits.max_document_bytes.unwrap_or(u64::MAX);
    let mut head = Vec::new();
    let mut rest: Option<std::fs::File> = None;
    let mut total = 0u64;
    let mut body = fetched.response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.ok()?;
        total += chunk.len() as u64;
        if total > limit {
            // Too large: its turn will split it.
            return None;
        }
        match &mut rest {
            None if head.len() + chunk.len() <= SPOOL_MEMORY => head.extend_from_slice(&chunk),
            None => {
                let mut file = tempfile::tempfile().ok()?;
                file.write_all(&chunk).ok()?;
                rest = Some(file);
            }
            // Small writes to a local file, between awaits of the network: not worth a thread.
            Some(file) => file.write_all(&chunk).ok()?,
        }
    }
    Some(Spooled {
        head,
        rest,
        received: Received {
            status: fetched.status,
            attempts: fetched.attempts,
            started_at,
            clock,
        },
    })
}

/// Applies a spooled response and commits it; `None` (logged) when that fails, so the caller
/// fetches the window again the usual way.
async fn apply_spooled(job: WindowJob<'_>, spooled: Spooled) -> Option<WindowReport> {
    use std::io::{Read, Seek};
    let rest: Box<dyn Read + Send> = match spooled.rest {
        Some(mut file) => {
            file.rewind().ok()?;
            Box::new(file)
        }
        None => Box::new(io::empty()),
    };
    let reader = io::Cursor::new(spooled.head).chain(rest);
    let clock = spooled.received.clock;
    match apply_and_commit(job, reader, spooled.received).await {
        Ok(report) => {
            observe_window(&job, Ok(&report), clock.elapsed());
            Some(report)
        }
        Err(e) => {
            tracing::warn!(source = job.source.name(), window = %job.label(), error = %e, "the window fetched ahead could not be applied; fetching it again");
            None
        }
    }
}

/// Re-reads a historic local range without moving the watermark.
///
/// # Errors
/// The first window that could not be synced.
pub async fn backfill(
    store: &dyn Store,
    source: &SyncSource,
    from: NaiveDateTime,
    to: NaiveDateTime,
    mut on_window: impl FnMut(&WindowReport),
) -> Result<Vec<WindowReport>, SyncError> {
    let mut all = Vec::new();
    let (mut at, end) = source.plan.backfill_range(from, to);
    let mut windows = Windows::new(source);
    while let Some(planned) = source.plan.backfill_window(at, end, windows.pacer.span()) {
        let (window, reports) = windows
            .run(store, planned, RunKind::Backfill, None, |tom, span| {
                source
                    .plan
                    .backfill_window(tom + chrono::Duration::minutes(1), end, span)
            })
            .await?;
        at = window.tom_utc + chrono::Duration::minutes(1);
        for report in reports {
            on_window(&report);
            all.push(report);
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::chars::BadChar;
    use crate::xml::Location;

    fn at() -> Location {
        Location {
            line: 3,
            column: 7,
            offset: 40,
        }
    }

    /// Every document error, once (the compiler keeps [`after_document`] complete; this keeps
    /// each decision what it was meant to be).
    fn document_errors() -> Vec<(DocumentError, Next)> {
        let location = at();
        vec![
            (DocumentError::Empty, Next::RetryBody),
            (
                DocumentError::Malformed {
                    location,
                    message: "mismatched end tag".into(),
                },
                Next::RetryBody,
            ),
            (
                DocumentError::Truncated {
                    location,
                    open: "provresultat".into(),
                },
                Next::RetryBody,
            ),
            (DocumentError::Doctype { location }, Next::RetryBody),
            (
                DocumentError::Entity {
                    location,
                    name: "nbsp".into(),
                },
                Next::RetryBody,
            ),
            (
                DocumentError::WrongRoot {
                    location,
                    found: "<html>".into(),
                },
                Next::RetryBody,
            ),
            (
                DocumentError::TrailingContent {
                    location,
                    what: "text".into(),
                },
                Next::RetryBody,
            ),
            (
                DocumentError::Character {
                    location,
                    bad: BadChar::NotUtf8,
                },
                Next::RetryBody,
            ),
            (
                DocumentError::Character {
                    location,
                    bad: BadChar::CutUtf8,
                },
                Next::RetryBody,
            ),
            (
                DocumentError::Character {
                    location,
                    bad: BadChar::Forbidden(0),
                },
                Next::RetryBody,
            ),
            (
                DocumentError::Io {
                    location,
                    source: io::Error::other("connection reset"),
                },
                Next::RetryBody,
            ),
            (
                DocumentError::Io {
                    location,
                    source: io::Error::new(io::ErrorKind::TimedOut, "read_timeout"),
                },
                Next::Split,
            ),
            (
                DocumentError::Limit {
                    location,
                    limit: LimitExceeded::Document(1 << 20),
                },
                Next::Split,
            ),
            (
                DocumentError::Limit {
                    location,
                    limit: LimitExceeded::Record(4 << 20),
                },
                Next::Fail,
            ),
            (
                DocumentError::Encoding {
                    location,
                    encoding: "ISO-8859-1".into(),
                },
                Next::Fail,
            ),
            (DocumentError::TooDeep { location, max: 64 }, Next::Fail),
            (
                DocumentError::TooManyAttributes { location, max: 64 },
                Next::Fail,
            ),
        ]
    }

    #[test]
    fn every_error_leads_to_its_decided_next_step() {
        let window = || "2026-01-10T00:00..2026-01-10T06:00".to_owned();
        let mut cases: Vec<(SyncError, Next)> = Vec::new();
        for (error, next) in document_errors() {
            cases.push((
                SyncError::Document {
                    window: window(),
                    error,
                },
                next,
            ));
        }
        // The same errors found while an element is built by the writer decide the same way.
        for (error, next) in document_errors() {
            cases.push((StoreError::Document(error).into(), next));
        }
        let transport = |kind| SourceError::Transport {
            request: window(),
            kind,
            attempts: 3,
            message: "…".into(),
        };
        cases.extend([
            (transport(TransportKind::TimedOut).into(), Next::Split),
            (transport(TransportKind::BodyCut).into(), Next::RetryBody),
            (
                transport(TransportKind::ConnectionFailed).into(),
                Next::RetryLater,
            ),
            (transport(TransportKind::TlsRefused).into(), Next::Fail),
            (
                SourceError::TooLarge { request: window() }.into(),
                Next::Split,
            ),
            (
                SourceError::GaveUp {
                    request: window(),
                    status: 503,
                    attempts: 6,
                }
                .into(),
                Next::RetryLater,
            ),
            (
                SourceError::WaitTooLong {
                    request: window(),
                    status: 429,
                    asked: std::time::Duration::from_secs(1 << 30),
                    max: std::time::Duration::from_secs(300),
                    header: "Retry-After".into(),
                }
                .into(),
                Next::RetryLater,
            ),
            (
                SourceError::Refused {
                    request: window(),
                    status: 401,
                    hint: "check the credentials",
                }
                .into(),
                Next::Fail,
            ),
            (
                SourceError::Redirected {
                    request: window(),
                    status: 302,
                    location: None,
                    why: "not followed",
                }
                .into(),
                Next::Fail,
            ),
            (
                SourceError::Config {
                    source_name: "default".into(),
                    setting: "url",
                    message: "…".into(),
                }
                .into(),
                Next::Fail,
            ),
            (
                StoreError::Query {
                    context: "writing",
                    source: sqlx::Error::Io(io::Error::other("connection reset")),
                }
                .into(),
                Next::RetryLater,
            ),
            (
                StoreError::Connect {
                    url: "postgres://db/wh".into(),
                    source: sqlx::Error::PoolTimedOut,
                }
                .into(),
                Next::RetryLater,
            ),
            (
                StoreError::Query {
                    context: "reading",
                    source: sqlx::Error::RowNotFound,
                }
                .into(),
                Next::Fail,
            ),
            (StoreError::Cancelled.into(), Next::RetryLater),
            (
                StoreError::WatermarkMoved {
                    source_name: "default".into(),
                    expected: "a".into(),
                    found: "b".into(),
                }
                .into(),
                Next::RetryLater,
            ),
            (
                StoreError::NewerSchema {
                    found: 20991231000001,
                    known: 20261202000001,
                }
                .into(),
                Next::Fail,
            ),
            (StoreError::Corrupt("…".into()).into(), Next::Fail),
            (StoreError::Refused("…".into()).into(), Next::Fail),
            (
                StoreError::UnsupportedUrl("mysql://x".into()).into(),
                Next::Fail,
            ),
            (
                StoreError::InvalidSchema {
                    schema: "X".into(),
                    reason: "…",
                }
                .into(),
                Next::Fail,
            ),
            (
                StoreError::Migrate(sqlx::migrate::MigrateError::VersionMissing(1)).into(),
                Next::Fail,
            ),
            (
                SyncError::Internal {
                    window: window(),
                    message: "the parser thread panicked".into(),
                },
                Next::Fail,
            ),
        ]);
        for (error, next) in &cases {
            assert_eq!(next_step(error), *next, "{error}");
        }
    }

    #[test]
    fn a_body_that_ends_inside_a_character_or_an_element_is_a_truncation() {
        for (error, _) in document_errors() {
            let expected = matches!(
                error,
                DocumentError::Truncated { .. }
                    | DocumentError::Io { .. }
                    | DocumentError::Character {
                        bad: BadChar::CutUtf8,
                        ..
                    }
            );
            assert_eq!(error.is_truncation(), expected, "{error}");
        }
    }
}
