//! Prometheus metrics: one [`Metrics`] owning its own [`Registry`] (each test makes its own), and
//! per-source handles ([`SourceMetrics`]) that the HTTP client and the sync engine report to.
//!
//! Names follow Prometheus conventions: the `nprov_` prefix, base units (`_seconds`, `_bytes`),
//! `_total` for counters. Labels are bounded: source names from the configuration, outcome and
//! reason enumerations, HTTP status classes, enumeration field names. Nothing personal (no elev
//! id, no URL, no error text) is ever a label.
//!
//! The list of exported families is [`FAMILIES`]; `monitoring/metrics.txt` must match it, and
//! the alert rules and the dashboard may use nothing else (tested).
//!
//! Where an event is both logged and counted, the log line is emitted here too, so the two
//! cannot drift apart.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::store::{RunKind, RunOutcome};

/// Every metric family the daemon exports, process metrics included (on Linux). The process
/// collector also exports `process_virtual_memory_max_bytes`, but only where a memory limit is
/// set, so it is not listed: dashboards and alerts must not rely on it.
pub const FAMILIES: &[&str] = &[
    "nprov_build_info",
    "nprov_leader",
    "nprov_sync_windows_total",
    "nprov_sync_window_duration_seconds",
    "nprov_sync_last_success_timestamp_seconds",
    "nprov_sync_last_attempt_timestamp_seconds",
    "nprov_sync_watermark_timestamp_seconds",
    "nprov_sync_lag_seconds",
    "nprov_sync_consecutive_failures",
    "nprov_sync_http_requests_total",
    "nprov_sync_http_request_duration_seconds",
    "nprov_sync_http_response_bytes_total",
    "nprov_sync_http_retries_total",
    "nprov_sync_http_rate_limited_total",
    "nprov_sync_records_received_total",
    "nprov_sync_provomraden_total",
    "nprov_sync_records_quarantined_total",
    "nprov_sync_unknown_values_total",
    "nprov_sync_db_commit_duration_seconds",
    "nprov_sync_client_certificate_expiry_timestamp_seconds",
    "nprov_sync_ca_certificate_expiry_timestamp_seconds",
    "nprov_provisioning_passes_total",
    "nprov_provisioning_pass_duration_seconds",
    "nprov_provisioning_last_complete_timestamp_seconds",
    "nprov_provisioning_records",
    "nprov_provisioning_requests_total",
    "nprov_provisioning_token_refreshes_total",
    "nprov_provisioning_removals_refused",
    "nprov_provisioning_schedule_seconds",
    "nprov_config_last_reload_successful",
    "nprov_config_last_reload_success_timestamp_seconds",
    "nprov_retention_pruned_rows_total",
    "nprov_retention_last_success_timestamp_seconds",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
];

/// Request and window durations range from milliseconds (an empty window) to minutes (a day of
/// a large municipality over a slow link).
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// Commits are local to the database: milliseconds to a few seconds.
const COMMIT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// All metrics of one process.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Families>,
}

struct Families {
    registry: Registry,
    leader: IntGaugeVec,
    windows: IntCounterVec,
    window_duration: HistogramVec,
    last_success: GaugeVec,
    last_attempt: GaugeVec,
    watermark: GaugeVec,
    lag: GaugeVec,
    consecutive_failures: IntGaugeVec,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    http_bytes: IntCounterVec,
    http_retries: IntCounterVec,
    http_rate_limited: IntCounterVec,
    records_received: IntCounterVec,
    provomraden: IntCounterVec,
    quarantined: IntCounterVec,
    unknown_values: IntCounterVec,
    commit_duration: HistogramVec,
    client_certificate_expiry: GaugeVec,
    ca_certificate_expiry: GaugeVec,
    /// Without labels, as vectors so that only the daemon, which reloads, has a series: a
    /// one-shot run's textfile must not report a failed reload.
    reload_successful: IntGaugeVec,
    reload_success: GaugeVec,
    /// Daemon only, like the reload pair: a one-shot run does not prune.
    pruned_rows: IntCounterVec,
    retention_success: GaugeVec,
    prov_passes: IntCounterVec,
    prov_pass_duration: HistogramVec,
    prov_last_complete: GaugeVec,
    prov_records: IntGaugeVec,
    prov_requests: IntCounterVec,
    prov_token_refreshes: IntCounterVec,
    prov_removals_refused: IntGaugeVec,
    prov_schedule: GaugeVec,
}

/// A pass of 100 000 persons at 10 requests a second takes minutes; an unchanged small register
/// seconds.
const PASS_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

fn int_gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        &["source"],
    )
    .expect("valid metric definition")
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every family registered, `nprov_build_info` set, and (on Linux)
    /// the process collector.
    pub fn new() -> Metrics {
        Metrics::with_process(true)
    }

    /// The same without the process collector: for a node_exporter textfile, where `process_…`
    /// series would collide with node_exporter's own and describe a process that has exited.
    pub fn for_textfile() -> Metrics {
        Metrics::with_process(false)
    }

    fn with_process(process: bool) -> Metrics {
        let f = Families {
            registry: Registry::new(),
            leader: int_gauge(
                "nprov_leader",
                "1 on the instance that leads (syncs) the source, 0 on a standby",
                &["source"],
            ),
            windows: counter(
                "nprov_sync_windows_total",
                "Window attempts by kind (sync, backfill) and outcome (ok, failed)",
                &["source", "kind", "outcome"],
            ),
            window_duration: histogram(
                "nprov_sync_window_duration_seconds",
                "Time from a window's first request to its commit",
                DURATION_BUCKETS,
            ),
            last_success: gauge(
                "nprov_sync_last_success_timestamp_seconds",
                "Unix time of the last committed window",
                &["source"],
            ),
            last_attempt: gauge(
                "nprov_sync_last_attempt_timestamp_seconds",
                "Unix time of the last window attempt, committed or failed",
                &["source"],
            ),
            watermark: gauge(
                "nprov_sync_watermark_timestamp_seconds",
                "Unix time of the source's watermark: everything up to it is committed",
                &["source"],
            ),
            lag: gauge(
                "nprov_sync_lag_seconds",
                "Now minus the watermark, computed at scrape time",
                &["source"],
            ),
            consecutive_failures: int_gauge(
                "nprov_sync_consecutive_failures",
                "Sync runs that failed in a row (0 after a success)",
                &["source"],
            ),
            http_requests: counter(
                "nprov_sync_http_requests_total",
                "HTTP requests to the platform by status class (error: no response)",
                &["source", "class"],
            ),
            http_duration: histogram(
                "nprov_sync_http_request_duration_seconds",
                "Time from sending a request to its response headers",
                DURATION_BUCKETS,
            ),
            http_bytes: counter(
                "nprov_sync_http_response_bytes_total",
                "Response body bytes read from the platform",
                &["source"],
            ),
            http_retries: counter(
                "nprov_sync_http_retries_total",
                "Requests or whole window attempts repeated, by reason",
                &["source", "reason"],
            ),
            http_rate_limited: counter(
                "nprov_sync_http_rate_limited_total",
                "HTTP 429 responses received",
                &["source"],
            ),
            records_received: counter(
                "nprov_sync_records_received_total",
                "Provområde elements received and applied",
                &["source"],
            ),
            provomraden: counter(
                "nprov_sync_provomraden_total",
                "Provområden (keys) received, by what applying them did",
                &["source", "outcome"],
            ),
            quarantined: counter(
                "nprov_sync_records_quarantined_total",
                "Elements that broke the XSD and were sent to the quarantine table",
                &["source"],
            ),
            unknown_values: counter(
                "nprov_sync_unknown_values_total",
                "Enumeration values the document's schema version does not list, by field",
                &["source", "field"],
            ),
            commit_duration: histogram(
                "nprov_sync_db_commit_duration_seconds",
                "Time to commit a window's transaction",
                COMMIT_BUCKETS,
            ),
            client_certificate_expiry: gauge(
                "nprov_sync_client_certificate_expiry_timestamp_seconds",
                "When the source's client certificate expires (its notAfter), read at start and on every reload; absent without one",
                &["source"],
            ),
            ca_certificate_expiry: gauge(
                "nprov_sync_ca_certificate_expiry_timestamp_seconds",
                "When the earliest certificate of the source's ca_file expires, read at start and on every reload; absent without one",
                &["source"],
            ),
            // Registered below.
            reload_successful: int_gauge(
                "nprov_config_last_reload_successful",
                "1 when the last configuration (re)load of the daemon was used, 0 when it was refused and the previous one kept",
                &[],
            ),
            reload_success: gauge(
                "nprov_config_last_reload_success_timestamp_seconds",
                "When the daemon last loaded a configuration it uses (its start, or a reload)",
                &[],
            ),
            pruned_rows: counter(
                "nprov_retention_pruned_rows_total",
                "Rows removed by the daily prune past the [retention] horizons, by table (quarantine_raw_xml: raw XML cleared)",
                &["table"],
            ),
            retention_success: gauge(
                "nprov_retention_last_success_timestamp_seconds",
                "When the daemon's daily prune last completed",
                &[],
            ),
            prov_passes: counter(
                "nprov_provisioning_passes_total",
                "Provisioning passes by outcome (complete, refused: removals held back, failed)",
                &["source", "outcome"],
            ),
            prov_pass_duration: HistogramVec::new(
                HistogramOpts::new(
                    "nprov_provisioning_pass_duration_seconds",
                    "Wall time of a provisioning pass, whatever its outcome",
                )
                .buckets(PASS_BUCKETS.to_vec()),
                &["source"],
            )
            .expect("valid metric definition"),
            prov_last_complete: gauge(
                "nprov_provisioning_last_complete_timestamp_seconds",
                "When the source's last complete provisioning pass ended (restored from the database at start)",
                &["source"],
            ),
            prov_records: int_gauge(
                "nprov_provisioning_records",
                "Records the last complete provisioning pass saw, by kind (person, duty, group, activity)",
                &["source", "kind"],
            ),
            prov_requests: counter(
                "nprov_provisioning_requests_total",
                "Requests to the provisioning API by status class (2xx, 4xx, 429, 5xx, none)",
                &["source", "status"],
            ),
            prov_token_refreshes: counter(
                "nprov_provisioning_token_refreshes_total",
                "Access tokens requested from the authorisation server",
                &["source"],
            ),
            prov_schedule: gauge(
                "nprov_provisioning_schedule_seconds",
                "The interval of the source's schedule (between its next two passes), for the rule that wants a complete pass every few schedules",
                &["source"],
            ),
            prov_removals_refused: int_gauge(
                "nprov_provisioning_removals_refused",
                "Records of a kind the last complete pass did not see but did not remove (more than max_removed_share): 0 when none are held back",
                &["source", "kind"],
            ),
        };
        let r = &f.registry;
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(f.leader.clone()),
            Box::new(f.windows.clone()),
            Box::new(f.window_duration.clone()),
            Box::new(f.last_success.clone()),
            Box::new(f.last_attempt.clone()),
            Box::new(f.watermark.clone()),
            Box::new(f.lag.clone()),
            Box::new(f.consecutive_failures.clone()),
            Box::new(f.http_requests.clone()),
            Box::new(f.http_duration.clone()),
            Box::new(f.http_bytes.clone()),
            Box::new(f.http_retries.clone()),
            Box::new(f.http_rate_limited.clone()),
            Box::new(f.records_received.clone()),
            Box::new(f.provomraden.clone()),
            Box::new(f.quarantined.clone()),
            Box::new(f.unknown_values.clone()),
            Box::new(f.commit_duration.clone()),
            Box::new(f.client_certificate_expiry.clone()),
            Box::new(f.ca_certificate_expiry.clone()),
            Box::new(f.reload_successful.clone()),
            Box::new(f.reload_success.clone()),
            Box::new(f.pruned_rows.clone()),
            Box::new(f.retention_success.clone()),
            Box::new(f.prov_passes.clone()),
            Box::new(f.prov_pass_duration.clone()),
            Box::new(f.prov_last_complete.clone()),
            Box::new(f.prov_records.clone()),
            Box::new(f.prov_requests.clone()),
            Box::new(f.prov_token_refreshes.clone()),
            Box::new(f.prov_removals_refused.clone()),
            Box::new(f.prov_schedule.clone()),
        ];
        for c in collectors {
            r.register(c).expect("each family is registered once");
        }
        let build_info = IntGaugeVec::new(
            Opts::new(
                "nprov_build_info",
                "Always 1; the version, the commit and the compiler are labels",
            ),
            &["version", "revision", "rustc"],
        )
        .expect("valid metric definition");
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                env!("BUILD_GIT_REVISION"),
                env!("BUILD_RUSTC_VERSION"),
            ])
            .set(1);
        r.register(Box::new(build_info))
            .expect("each family is registered once");
        #[cfg(target_os = "linux")]
        if process {
            r.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("the process collector is registered once");
        }
        Metrics { inner: Arc::new(f) }
    }

    /// The handles of one source. Every per-source family gets its series at once (at zero), so
    /// dashboards and `rate()` see a source before its first event, with every label value
    /// `known` in advance.
    pub fn source(&self, name: &str, known: &KnownLabels) -> SourceMetrics {
        let f = &self.inner;
        for kind in [RunKind::Sync, RunKind::Backfill] {
            for outcome in ["ok", "failed"] {
                f.windows.with_label_values(&[name, kind.as_str(), outcome]);
            }
        }
        for class in ["2xx", "3xx", "4xx", "5xx", "error"] {
            f.http_requests.with_label_values(&[name, class]);
        }
        for reason in known.retry_reasons {
            f.http_retries.with_label_values(&[name, reason]);
        }
        for field in known.enum_fields {
            f.unknown_values.with_label_values(&[name, field]);
        }
        for outcome in ["changed", "unchanged", "cleared"] {
            f.provomraden.with_label_values(&[name, outcome]);
        }
        SourceMetrics {
            name: name.to_owned(),
            loud: true,
            families: self.inner.clone(),
            http_bytes: f.http_bytes.with_label_values(&[name]),
            http_duration: f.http_duration.with_label_values(&[name]),
            http_rate_limited: f.http_rate_limited.with_label_values(&[name]),
            records_received: f.records_received.with_label_values(&[name]),
            quarantined: f.quarantined.with_label_values(&[name]),
            commit_duration: f.commit_duration.with_label_values(&[name]),
            window_duration: f.window_duration.with_label_values(&[name]),
            last_success: f.last_success.with_label_values(&[name]),
            last_attempt: f.last_attempt.with_label_values(&[name]),
            watermark: f.watermark.with_label_values(&[name]),
            consecutive_failures: f.consecutive_failures.with_label_values(&[name]),
            leader: f.leader.with_label_values(&[name]),
        }
    }

    /// The text exposition format, with lag brought up to `now` first.
    pub fn render(&self, now: DateTime<Utc>) -> String {
        let f = &self.inner;
        let now = now.timestamp_millis() as f64 / 1000.0;
        for family in f.watermark.collect() {
            for m in family.get_metric() {
                let source = m
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "source")
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default();
                let wm = m.get_gauge().get_value();
                if wm > 0.0 {
                    f.lag.with_label_values(&[&source]).set(now - wm);
                }
            }
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&f.registry.gather(), &mut out)
            .expect("the text encoder writes to memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    /// A configuration was loaded (at start, or on SIGHUP) and is used (`ok`), or was refused and
    /// the previous one kept.
    pub fn config_loaded(&self, ok: bool, at: DateTime<Utc>) {
        let f = &self.inner;
        f.reload_successful
            .with_label_values(&[] as &[&str])
            .set(i64::from(ok));
        if ok {
            f.reload_success
                .with_label_values(&[] as &[&str])
                .set(at.timestamp_millis() as f64 / 1000.0);
        }
    }

    /// The daemon prunes: its counters start at 0 for every table, so the first prune is an
    /// increase like any other.
    pub fn pruning(&self) {
        for table in crate::store::governance::Pruned::default().by_table() {
            self.inner
                .pruned_rows
                .with_label_values(&[table.0])
                .inc_by(0);
        }
    }

    /// A prune completed at `at`, removing `pruned`.
    pub fn pruned(&self, pruned: &crate::store::governance::Pruned, at: DateTime<Utc>) {
        for (table, n) in pruned.by_table() {
            self.inner.pruned_rows.with_label_values(&[table]).inc_by(n);
        }
        self.inner
            .retention_success
            .with_label_values(&[] as &[&str])
            .set(at.timestamp_millis() as f64 / 1000.0);
    }

    /// Removes every series of `source`, in every family that has a `source` label: for a source
    /// that left the configuration, whose frozen series would otherwise keep alerts firing (a
    /// leader gauge at 0, a watermark that no longer moves) until the next restart. Handles of
    /// the source taken before are detached from the registry; take new ones with
    /// [`Metrics::source`] if it comes back.
    pub fn remove_source(&self, source: &str) {
        let f = &self.inner;
        remove_source_from(&f.leader, source);
        remove_source_from(&f.windows, source);
        remove_source_from(&f.window_duration, source);
        remove_source_from(&f.last_success, source);
        remove_source_from(&f.last_attempt, source);
        remove_source_from(&f.watermark, source);
        remove_source_from(&f.lag, source);
        remove_source_from(&f.consecutive_failures, source);
        remove_source_from(&f.http_requests, source);
        remove_source_from(&f.http_duration, source);
        remove_source_from(&f.http_bytes, source);
        remove_source_from(&f.http_retries, source);
        remove_source_from(&f.http_rate_limited, source);
        remove_source_from(&f.records_received, source);
        remove_source_from(&f.provomraden, source);
        remove_source_from(&f.quarantined, source);
        remove_source_from(&f.unknown_values, source);
        remove_source_from(&f.commit_duration, source);
        remove_source_from(&f.client_certificate_expiry, source);
        remove_source_from(&f.ca_certificate_expiry, source);
    }

    /// A provisioning source's series, every one at zero from the start (the same rule as
    /// [`Metrics::source`]), for the `kind` and `status` label values given.
    pub fn provisioning(&self, name: &str, kinds: &[&str], statuses: &[&str]) -> ProvMetrics {
        let f = &self.inner;
        for outcome in ["complete", "refused", "failed"] {
            f.prov_passes.with_label_values(&[name, outcome]);
        }
        for status in statuses {
            f.prov_requests.with_label_values(&[name, status]);
        }
        for kind in kinds {
            f.prov_records.with_label_values(&[name, kind]);
            f.prov_removals_refused.with_label_values(&[name, kind]);
        }
        f.prov_token_refreshes.with_label_values(&[name]);
        f.prov_pass_duration.with_label_values(&[name]);
        f.prov_last_complete.with_label_values(&[name]);
        f.prov_schedule.with_label_values(&[name]);
        ProvMetrics {
            name: name.to_owned(),
            families: self.inner.clone(),
            reported: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Removes a provisioning source's series (it left the configuration).
    pub fn remove_provisioning(&self, source: &str) {
        let f = &self.inner;
        remove_source_from(&f.prov_passes, source);
        remove_source_from(&f.prov_pass_duration, source);
        remove_source_from(&f.prov_last_complete, source);
        remove_source_from(&f.prov_records, source);
        remove_source_from(&f.prov_requests, source);
        remove_source_from(&f.prov_token_refreshes, source);
        remove_source_from(&f.prov_removals_refused, source);
        remove_source_from(&f.prov_schedule, source);
    }

    /// The registry, for tests that inspect it.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }
}

use prometheus::core::Collector;

/// Removes the series of one source from a family, whatever its other labels are.
fn remove_source_from<T: prometheus::core::MetricVecBuilder>(
    family: &prometheus::core::MetricVec<T>,
    source: &str,
) {
    for mf in family.collect() {
        for m in mf.get_metric() {
            let labels: std::collections::HashMap<&str, &str> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if labels.get("source") == Some(&source) {
                // Gone already (a concurrent removal) is as good.
                let _ = family.remove(&labels);
            }
        }
    }
}

/// Label values known before any event, so their counters start at zero: a rule's `increase()`
/// then sees the first event, and a rule that names the family sees it from the start. Plain
/// text: the caller knows what they stand for.
#[derive(Clone, Copy, Debug)]
pub struct KnownLabels {
    /// `reason` of `nprov_sync_http_retries_total`.
    pub retry_reasons: &'static [&'static str],
    /// `field` of `nprov_sync_unknown_values_total`.
    pub enum_fields: &'static [&'static str],
}

/// One source's metric handles; cheap to clone.
#[derive(Clone)]
pub struct SourceMetrics {
    name: String,
    /// Whether window events are logged at info (the daemon, whose log is the record) or at
    /// debug (one-shot commands, which print their own line per window).
    loud: bool,
    families: Arc<Families>,
    http_bytes: IntCounter,
    http_duration: Histogram,
    http_rate_limited: IntCounter,
    records_received: IntCounter,
    quarantined: IntCounter,
    commit_duration: Histogram,
    window_duration: Histogram,
    last_success: Gauge,
    last_attempt: Gauge,
    watermark: Gauge,
    consecutive_failures: IntGauge,
    leader: IntGauge,
}

impl std::fmt::Debug for SourceMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceMetrics")
            .field("source", &self.name)
            .finish_non_exhaustive()
    }
}

/// What a window's outcome was, for [`SourceMetrics::window`].
pub struct WindowOutcome<'a> {
    pub kind: RunKind,
    pub ok: bool,
    pub duration: Duration,
    pub summary: &'a crate::store::ApplySummary,
    /// Unknown enumeration values by field name.
    pub unknown_values: &'a [(&'static str, u64)],
    pub commit: Option<Duration>,
}

impl SourceMetrics {
    /// Handles on a registry of their own, never exported: for one-shot commands.
    pub fn detached(name: &str, known: &KnownLabels) -> SourceMetrics {
        SourceMetrics {
            loud: false,
            ..Metrics::new().source(name, known)
        }
    }

    /// The same handles, with window events logged at debug: for a command that prints its own
    /// line per window.
    pub fn quiet(self) -> SourceMetrics {
        SourceMetrics {
            loud: false,
            ..self
        }
    }

    /// Whether window events belong in the log at info level (see the field).
    pub fn loud(&self) -> bool {
        self.loud
    }

    /// One HTTP attempt: its status (`None` when no response came) and time to headers.
    pub fn http_attempt(&self, status: Option<u16>, elapsed: Duration) {
        let class = match status {
            Some(200..=299) => "2xx",
            Some(300..=399) => "3xx",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            _ => "error",
        };
        self.families
            .http_requests
            .with_label_values(&[self.name.as_str(), class])
            .inc();
        self.http_duration.observe(elapsed.as_secs_f64());
        if status == Some(429) {
            self.http_rate_limited.inc();
        }
    }

    pub fn retry(&self, reason: &str) {
        self.families
            .http_retries
            .with_label_values(&[self.name.as_str(), reason])
            .inc();
    }

    pub fn response_bytes(&self, bytes: u64) {
        self.http_bytes.inc_by(bytes);
    }

    /// A window attempt finished (committed, or failed and rolled back).
    pub fn window(&self, o: &WindowOutcome<'_>) {
        let f = &self.families;
        let now = Utc::now().timestamp_millis() as f64 / 1000.0;
        f.windows
            .with_label_values(&[
                self.name.as_str(),
                o.kind.as_str(),
                if o.ok { "ok" } else { "failed" },
            ])
            .inc();
        self.last_attempt.set(now);
        if !o.ok {
            return;
        }
        self.window_duration.observe(o.duration.as_secs_f64());
        if o.kind == RunKind::Sync {
            self.last_success.set(now);
        }
        let s = o.summary;
        self.records_received.inc_by(s.records);
        self.quarantined.inc_by(s.quarantined);
        for (outcome, n) in [
            ("changed", s.changed),
            ("unchanged", s.unchanged),
            ("cleared", s.cleared),
        ] {
            f.provomraden
                .with_label_values(&[self.name.as_str(), outcome])
                .inc_by(n);
        }
        for (field, n) in o.unknown_values {
            f.unknown_values
                .with_label_values(&[self.name.as_str(), field])
                .inc_by(*n);
        }
        if let Some(c) = o.commit {
            self.commit_duration.observe(c.as_secs_f64());
        }
    }

    /// The stored watermark (after a commit, or as read at start-up). Like the stored one it
    /// never moves back: a window half that ends inside the overlap leaves it where it is.
    pub fn watermark(&self, at: DateTime<Utc>) {
        let t = at.timestamp_millis() as f64 / 1000.0;
        if t > self.watermark.get() {
            self.watermark.set(t);
        }
    }

    /// A sync run (a catch-up) ended; a failed one counts towards the back-off, a good one
    /// clears the count.
    pub fn run_finished(&self, outcome: RunOutcome) {
        match outcome {
            RunOutcome::Failed => self.consecutive_failures.inc(),
            RunOutcome::Ok => self.consecutive_failures.set(0),
        }
    }

    pub fn consecutive_failures(&self) -> i64 {
        self.consecutive_failures.get()
    }

    /// The last committed window's time as stored (at start-up, so freshness survives a restart).
    /// What the stored watermark says at start-up: where the source is, and (unless this
    /// process has seen one already) when its last window committed, so freshness survives a
    /// restart or the gap between two timer runs.
    pub fn restore(&self, wm: &crate::store::Watermark) {
        self.watermark(wm.utc);
        self.restore_last_success(wm.updated_at);
    }

    pub fn restore_last_success(&self, at: DateTime<Utc>) {
        if self.last_success.get() == 0.0 {
            self.last_success.set(at.timestamp_millis() as f64 / 1000.0);
        }
    }

    /// Unix time of the last committed window, 0 before the first.
    pub fn last_success(&self) -> f64 {
        self.last_success.get()
    }

    /// When the source's client certificate and CA expire; a series only for each one known.
    pub fn certificate_expiry(&self, client: Option<DateTime<Utc>>, ca: Option<DateTime<Utc>>) {
        let f = &self.families;
        for (family, at) in [
            (&f.client_certificate_expiry, client),
            (&f.ca_certificate_expiry, ca),
        ] {
            match at {
                Some(at) => family
                    .with_label_values(&[self.name.as_str()])
                    .set(at.timestamp() as f64),
                // Gone (or never there) is as good.
                None => {
                    let _ = family.remove_label_values(&[self.name.as_str()]);
                }
            }
        }
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }
}

/// What one provisioning pass did, in plain values.
pub struct PassFigures<'a> {
    /// `complete`, `refused` or `failed`.
    pub outcome: &'a str,
    /// Whether every kind was read to its end (`complete` and `refused`): the records and the
    /// removals held back are then the pass's.
    pub read_whole: bool,
    /// When it ended, for a complete pass (the freshness rule's).
    pub completed_at: Option<DateTime<Utc>>,
    pub duration_secs: f64,
    /// Per `kind`: records seen, records whose removal was held back.
    pub kinds: &'a [(&'a str, u64, u64)],
    /// The client's counts since it was made, per `status` (each reported once: only what grew
    /// since the last report is added).
    pub requests: &'a [(&'a str, u64)],
    pub token_refreshes: u64,
}

/// The handles of one provisioning source.
pub struct ProvMetrics {
    name: String,
    families: Arc<Families>,
    /// The client's cumulative counts as last reported, by series.
    reported: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl ProvMetrics {
    /// A pass ended.
    pub fn pass(&self, p: &PassFigures<'_>) {
        let f = &self.families;
        let name = self.name.as_str();
        f.prov_passes.with_label_values(&[name, p.outcome]).inc();
        f.prov_pass_duration
            .with_label_values(&[name])
            .observe(p.duration_secs.max(0.0));
        if p.read_whole {
            for (kind, seen, held) in p.kinds {
                f.prov_records
                    .with_label_values(&[name, kind])
                    .set(*seen as i64);
                f.prov_removals_refused
                    .with_label_values(&[name, kind])
                    .set(*held as i64);
            }
        }
        if let Some(at) = p.completed_at {
            self.last_complete(at);
        }
        let Ok(mut reported) = self.reported.lock() else {
            return;
        };
        let mut grown = |key: String, now: u64| {
            let before = reported.insert(key, now).unwrap_or(0);
            now.saturating_sub(before)
        };
        for (status, n) in p.requests {
            let add = grown(format!("requests {status}"), *n);
            f.prov_requests
                .with_label_values(&[name, status])
                .inc_by(add);
        }
        let add = grown("token_refreshes".into(), p.token_refreshes);
        f.prov_token_refreshes
            .with_label_values(&[name])
            .inc_by(add);
    }
    /// The schedule's interval.
    pub fn schedule(&self, interval: std::time::Duration) {
        self.families
            .prov_schedule
            .with_label_values(&[&self.name])
            .set(interval.as_secs_f64());
    }

    /// The last complete pass ended at `at` (also restored from the database at start).
    pub fn last_complete(&self, at: DateTime<Utc>) {
        self.families
            .prov_last_complete
            .with_label_values(&[&self.name])
            .set(at.timestamp_millis() as f64 / 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Label values as the daemon passes them.
    const REASONS: KnownLabels = KnownLabels {
        retry_reasons: &["rate_limited", "timeout"],
        enum_fields: &["betyg"],
    };

    #[test]
    fn labelled_counters_start_at_zero_for_every_known_label_value() {
        let m = Metrics::new();
        m.source("a", &REASONS);
        let text = m.render(Utc::now());
        for series in [
            r#"nprov_sync_unknown_values_total{field="betyg",source="a"} 0"#,
            r#"nprov_sync_http_retries_total{reason="timeout",source="a"} 0"#,
            r#"nprov_sync_http_retries_total{reason="rate_limited",source="a"} 0"#,
            r#"nprov_sync_windows_total{kind="backfill",outcome="failed",source="a"} 0"#,
            r#"nprov_sync_http_requests_total{class="5xx",source="a"} 0"#,
            r#"nprov_sync_provomraden_total{outcome="cleared",source="a"} 0"#,
        ] {
            assert!(text.contains(series), "{series} missing from\n{text}");
        }
    }

    #[test]
    fn a_removed_source_leaves_no_series_and_the_others_keep_theirs() {
        let m = Metrics::new();
        for name in ["a", "b"] {
            let s = m.source(name, &REASONS);
            s.http_attempt(Some(200), Duration::from_millis(5));
            s.watermark(Utc::now());
            s.set_leader(true);
        }
        let before = m.render(Utc::now());
        assert!(before.contains(r#"source="a""#) && before.contains(r#"source="b""#));
        m.remove_source("a");
        let after = m.render(Utc::now());
        assert!(!after.contains(r#"source="a""#), "{after}");
        assert!(after.contains(r#"nprov_leader{source="b"} 1"#), "{after}");
        assert!(after.contains(r#"nprov_sync_http_requests_total{class="2xx",source="b"} 1"#));
        // Back again: fresh series at zero.
        m.source("a", &REASONS);
        assert!(m
            .render(Utc::now())
            .contains(r#"nprov_leader{source="a"} 0"#));
    }

    #[test]
    fn a_provisioning_pass_adds_only_what_the_client_counted_since_the_last() {
        let m = Metrics::new();
        let p = m.provisioning("kommun", &["person"], &["2xx", "429"]);
        for (ok, refreshes) in [(5, 1), (8, 2)] {
            p.pass(&PassFigures {
                outcome: "complete",
                read_whole: true,
                completed_at: Some(Utc::now()),
                duration_secs: 2.5,
                kinds: &[("person", 7, 0)],
                requests: &[("2xx", ok), ("429", 1)],
                token_refreshes: refreshes,
            });
        }
        let text = m.render(Utc::now());
        assert!(
            text.contains("nprov_provisioning_requests_total{source=\"kommun\",status=\"2xx\"} 8"),
            "{text}"
        );
        assert!(
            text.contains("nprov_provisioning_requests_total{source=\"kommun\",status=\"429\"} 1")
        );
        assert!(text.contains("nprov_provisioning_token_refreshes_total{source=\"kommun\"} 2"));
        assert!(text
            .contains("nprov_provisioning_passes_total{outcome=\"complete\",source=\"kommun\"} 2"));
        assert!(text
            .contains("nprov_provisioning_passes_total{outcome=\"failed\",source=\"kommun\"} 0"));
        assert!(text.contains("nprov_provisioning_records{kind=\"person\",source=\"kommun\"} 7"));
    }

    #[test]
    fn every_listed_family_is_exported_and_nothing_else() {
        let m = Metrics::new();
        let s = m.source("default", &REASONS);
        // Histograms and labelled families appear once they have a series.
        s.http_attempt(Some(200), Duration::from_millis(5));
        s.watermark(Utc::now());
        s.set_leader(true);
        s.window(&WindowOutcome {
            kind: RunKind::Sync,
            ok: true,
            duration: Duration::from_secs(1),
            summary: &crate::store::ApplySummary::default(),
            unknown_values: &[("betyg", 1)],
            commit: Some(Duration::from_millis(3)),
        });
        // The daemon's own, and the certificate dates of a source with mutual TLS and a CA.
        m.config_loaded(true, Utc::now());
        s.certificate_expiry(Some(Utc::now()), Some(Utc::now()));
        m.pruning();
        m.pruned(&Default::default(), Utc::now());
        // A provisioning source, its series at zero from the start.
        m.provisioning("kommun", &["person"], &["2xx"]);
        let text = m.render(Utc::now());
        let mut exported: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .filter(|f| *f != "process_virtual_memory_max_bytes")
            .collect();
        exported.sort_unstable();
        let mut listed: Vec<&str> = FAMILIES.to_vec();
        if !cfg!(target_os = "linux") {
            listed.retain(|f| !f.starts_with("process_"));
        }
        listed.sort_unstable();
        assert_eq!(exported, listed);
    }

    #[test]
    fn the_prune_counters_start_at_zero_for_every_table_and_count_up() {
        let m = Metrics::new();
        assert!(!m
            .render(Utc::now())
            .contains("nprov_retention_pruned_rows_total{"));
        m.pruning();
        let text = m.render(Utc::now());
        for table in ["sync_run", "quarantine_raw_xml", "quarantine", "change_log"] {
            let series = format!("nprov_retention_pruned_rows_total{{table=\"{table}\"}} 0");
            assert!(text.contains(&series), "{series} in {text}");
        }
        let pruned = crate::store::governance::Pruned {
            change_log: 7,
            ..Default::default()
        };
        m.pruned(&pruned, Utc::now());
        m.pruned(&pruned, Utc::now());
        assert!(m
            .render(Utc::now())
            .contains("nprov_retention_pruned_rows_total{table=\"change_log\"} 14"));
    }

    #[test]
    fn lag_is_now_minus_the_watermark_at_scrape_time() {
        let m = Metrics::new();
        let s = m.source("solna", &REASONS);
        let wm = DateTime::from_timestamp(1_800_000_000, 0).expect("valid");
        s.watermark(wm);
        let text = m.render(wm + chrono::Duration::seconds(754));
        assert!(
            text.contains("nprov_sync_lag_seconds{source=\"solna\"} 754"),
            "{text}"
        );
    }

    #[test]
    fn the_watermark_gauge_never_moves_back() {
        let m = Metrics::new();
        let s = m.source("default", &REASONS);
        let later = DateTime::from_timestamp(1_800_000_600, 0).expect("valid");
        s.watermark(later);
        s.watermark(later - chrono::Duration::minutes(20));
        let text = m.render(later);
        assert!(
            text.contains("nprov_sync_watermark_timestamp_seconds{source=\"default\"} 1800000600"),
            "{text}"
        );
    }

    #[test]
    fn a_429_counts_as_a_4xx_request_and_a_rate_limit() {
        let m = Metrics::new();
        let s = m.source("default", &REASONS);
        s.http_attempt(Some(429), Duration::from_millis(1));
        s.http_attempt(None, Duration::from_millis(1));
        let text = m.render(Utc::now());
        for line in [
            "nprov_sync_http_requests_total{class=\"4xx\",source=\"default\"} 1",
            "nprov_sync_http_requests_total{class=\"error\",source=\"default\"} 1",
            "nprov_sync_http_rate_limited_total{source=\"default\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }
}
