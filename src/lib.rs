//! # nprov-sync
//!
//! Keeps a data warehouse in step with the national-test results ("nationella prov") a school
//! platform publishes at `GET /api/skolplattform/nationellaprov?from=…&tom=…`.
//!
//! ## Architecture
//!
//! Data flows one way: [`window`] decides what to ask, [`source`] fetches bytes, [`xml`] makes
//! domain records, [`sync`] applies them through [`store`] and commits them with the watermark.
//!
//! * [`window`] plans `from`/`tom` windows from the watermark (an instant) so that no change is
//!   missed across daylight-saving transitions, whatever way the platform reads local times,
//!   and sizes a catch-up's windows by what the platform answered (`Pacer`).
//! * [`source`] is the HTTP client: rate-limited (every request spaced, retries included),
//!   retrying by a pure policy, credentials held as secrets.
//! * [`xml`] streams a response into domain records ([`domain`]) one provområde element at a
//!   time, for every published schema version, with located errors: a *document* error rejects
//!   the document, a *record* error quarantines one element.
//! * [`import`] runs the parser on a blocking thread and hands records over a bounded channel to
//!   the [`store`], which applies them in one transaction per document with the replace semantics
//!   (each element replaces its key's provtillfällen; unchanged content is skipped by hash;
//!   real changes go to `change_log`).
//! * [`sync`] drives a window: fetch, parse while the body streams in, apply, record the run and
//!   move the watermark in the same transaction; retries broken bodies, splits large windows;
//!   during a catch-up fetches the next window while the last is written, committing in order.
//! * [`store`] is one trait with a backend per database (SQLite, PostgreSQL); nothing above it
//!   knows which one it has. The replace core plans a batch as an ordered list of writes
//!   ([`store::replace::Write`]) that each backend executes in its bulk SQL; everything else
//!   (run rows and the watermark fence, retention, erasure, a source's state) is written once
//!   in `$N` SQL over values ([`store::sql`]) and only run by a backend.
//! * [`provisioning`] is the second source kind: the provtjänst provisioning API read back in
//!   full passes (persons, duties, groups, activities) into `prov_*` tables, through the same
//!   [`source`] client, limiter and back-off, and the same [`store::sql`] core; it keeps no
//!   personnummer in clear (an HMAC) and no protected person's names.
//! * [`simulate`] generates populations, writes documents of any version and serves a simulated
//!   platform over HTTP, for the demo, the benches and the tests.
//! * [`metrics`] keeps the Prometheus families; it takes plain labels and imports nothing of the
//!   HTTP client, which reports attempts and retries as [`source::Event`]s to the sync engine.
//! * [`config`] reads settings (file, then `NPROV_…` variables derived from the settings types)
//!   and checks them; a `[[source]]` becomes a typed [`config::SourceSpec`] with its credentials
//!   read, from which [`sync::SyncSource::from_spec`] builds the HTTP client. A source's
//!   [`schedule`] is read by one parser for both configuration and the daemon.
//! * [`daemon`] is the service: one scheduled job per source, leadership, back-off, readiness,
//!   the health and metrics endpoints, reload and shutdown.
//! * [`cli`] holds the commands, one struct each with its own `run`, in one file per group
//!   (`files`, `sync`, `status`, `daemon`, `simulate`, `demo`, `admin`, `govern`, `generate`,
//!   `provisioning`),
//!   and [`cli::Failure`] with its exit codes; nothing but `main.rs` imports it.
//! * [`telemetry`] sets up logging; [`error`] prints an error with its causes in one line, the
//!   same way everywhere.
//!
//! Imports point one way: no module imports one that imports it back (checked by
//! `tests/it/layout.rs`).
//!
//! Deciding code (`domain`, `xml`, the hash) imports neither tokio nor sqlx and is tested
//! without a runtime or database.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod domain;
pub mod error;
pub mod import;
pub mod metrics;
pub mod provisioning;
pub mod schedule;
pub mod simulate;
pub mod source;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod window;
pub mod xml;
