//! One pass of a provisioning source: every kind read to its last page, persons whose list
//! view changed looked up whole, changed records written a page at a time, and, only when
//! every kind was read to its end, the records not seen marked removed (within
//! `max_removed_share`, see [`super::decide`]), the pass's row and the source's state
//! committed together.
//!
//! A kind is read in three stages joined by bounded channels (listing, comparing and looking up,
//! writing), so the limiter always has a request waiting: the pass runs at the rate limit, not at
//! the sum of latency and write time. Memory is a few pages (and their lookups) at a time plus
//! the ids seen and written, 16 bytes each a record: flat in the register's size but for those.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::civic::Keyed;
use super::client::{Api, ApiError};
use super::decide::{self, Confirmed, Removals};
use super::model::{self, Record, RecordError};
use super::store::{self as prov_store, Known, PassRow, Written};
use super::Kind;
use crate::store::{Store, StoreError};

/// The most pages of one kind a pass reads: a server that never says "last page" is stopped
/// (100 million records at 100 a page).
pub const MAX_PAGES: u64 = 1_000_000;

/// The longest `pageToken` sent back.
pub const MAX_PAGE_TOKEN_BYTES: usize = 4096;

/// Live ids read per query while looking for the unseen.
const LIVE_IDS_PER_QUERY: i64 = 10_000;

/// A pass's settings.
pub struct PassSpec<'a> {
    pub source: &'a str,
    pub page_size: u32,
    pub max_removed_share: f64,
}

/// How a pass ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassOutcome {
    /// Every kind read; removals applied.
    Complete,
    /// Every kind read; the removals of some kinds held back (too large a share).
    Refused,
    /// Stopped part way: nothing removed.
    Failed,
}

impl PassOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            PassOutcome::Complete => "complete",
            PassOutcome::Refused => "refused",
            PassOutcome::Failed => "failed",
        }
    }
}

/// What a pass did.
pub struct PassReport {
    pub outcome: PassOutcome,
    /// seen, added, changed, removed per kind, in [`Kind::ALL`]'s order.
    pub counts: [[u64; 4]; 4],
    /// Per kind, in [`Kind::ALL`]'s order: (live before the removals, removals refused).
    pub refused: Vec<(Kind, u64, u64)>,
    pub requests: u64,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub error: Option<String>,
    /// Whether the failure may pass on its own (a later pass may succeed).
    pub transient: bool,
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("{} page {page}, record {index}{}: {error}", kind.plural(), id.as_deref().map(|i| format!(" (id {i})")).unwrap_or_default())]
    Record {
        kind: Kind,
        page: u64,
        /// 0-based position on the page.
        index: usize,
        /// The record's id, when it is a uuid (never anything else: it could be personal data).
        id: Option<String>,
        error: RecordError,
    },
    #[error("{} page {page}: {message}", kind.plural())]
    Paging {
        kind: Kind,
        page: u64,
        message: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A page as read: the records' ids, and either the persons' list hashes (to look up what
/// changed) or the other kinds' whole records.
struct ReadPage {
    items: Items,
    page_token: Option<String>,
}

enum Items {
    Persons(Vec<(String, String)>),
    Records(Vec<Record>),
}

/// A page compared with the mirror: the records to write and what the mirror held of the page.
#[derive(Default)]
struct Prepared {
    records: Vec<Record>,
    known: HashMap<String, Known>,
}

struct Pass<'a> {
    api: &'a Api,
    store: &'a dyn Store,
    keyed: &'a Keyed,
    spec: &'a PassSpec<'a>,
    seen: Mutex<[HashSet<u128>; 4]>,
    counts: Mutex<[[u64; 4]; 4]>,
    now: DateTime<Utc>,
}

/// Runs one pass and records it.
///
/// # Errors
/// Only when the pass's own row cannot be written (the database is gone); every other failure
/// is the report's.
pub async fn run(
    api: &Api,
    store: &dyn Store,
    keyed: &Keyed,
    spec: &PassSpec<'_>,
) -> Result<PassReport, StoreError> {
    let started = Instant::now();
    let started_at = Utc::now();
    let requests_before = api
        .counters
        .requests
        .load(std::sync::atomic::Ordering::Relaxed);
    let pass = Pass {
        api,
        store,
        keyed,
        spec,
        seen: Mutex::new(Default::default()),
        counts: Mutex::new([[0; 4]; 4]),
        now: started_at,
    };
    // The four kinds at once, through the one limiter: no kind's pipeline drains while another
    // waits its turn (measured: one after another, a first pass of 100 000 persons took 1.13x
    // the rate limit's bound). The first kind to fail stops the others.
    let read = futures_util::future::try_join_all(Kind::ALL.map(|k| pass.read_kind(k)))
        .await
        .map(|_| ());
    let requests = |api: &Api| {
        api.counters
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
            - requests_before
    };
    let finished_at = started_at
        + chrono::Duration::from_std(started.elapsed()).unwrap_or(chrono::Duration::zero());
    let mut counts = pass.counts()?;
    for kind in Kind::ALL {
        counts[kind.index()][0] = pass.seen_count(kind)? as u64;
    }
    if let Err(e) = read {
        let transient = match &e {
            PassError::Api(a) => a.is_transient(),
            PassError::Store(s) => s.is_transient(),
            PassError::Record { .. } | PassError::Paging { .. } => false,
        };
        let error = e.to_string();
        let row = PassRow {
            source: spec.source,
            started_at,
            finished_at,
            outcome: PassOutcome::Failed.as_str(),
            requests: requests(api),
            counts,
            error: Some(&error),
        };
        let mut tx = store
            .begin_sql("recording a failed provisioning pass")
            .await?;
        prov_store::record_pass(&mut *tx, &row, None).await?;
        tx.commit("recording a failed provisioning pass").await?;
        return Ok(PassReport {
            outcome: PassOutcome::Failed,
            counts,
            refused: Vec::new(),
            requests: row.requests,
            started_at,
            finished_at,
            error: Some(error),
            transient,
        });
    }
    pass.finish(counts, started_at, finished_at, requests(api))
        .await
}

impl Pass<'_> {
    fn counts(&self) -> Result<[[u64; 4]; 4], StoreError> {
        Ok(*self.counts.lock().map_err(|_| poisoned())?)
    }

    fn seen_count(&self, kind: Kind) -> Result<usize, StoreError> {
        Ok(self.seen.lock().map_err(|_| poisoned())?[kind.index()].len())
    }

    /// Reads a kind to its last page in three stages joined by bounded channels: the list
    /// chain runs ahead (a page or two), a page is compared and its changed persons looked up,
    /// and a page is written, each stage on its own page. The limiter so always has a request
    /// waiting (a list page and a lookup), and a page's write never holds up the next request.
    async fn read_kind(&self, kind: Kind) -> Result<(), PassError> {
        let (pages_tx, mut pages_rx) = tokio::sync::mpsc::channel::<(u64, ReadPage)>(2);
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Prepared>(2);
        let list = async move {
            let mut page_no = 1;
            let mut token: Option<String> = None;
            loop {
                let mut page = self.read_page(kind, token.as_deref(), page_no).await?;
                let next = page.page_token.take();
                if next.is_some() && next == token {
                    return Err(PassError::Paging {
                        kind,
                        page: page_no,
                        message:
                            "the API answered the same pageToken again: the pass would never end",
                    });
                }
                // A later stage that stopped has its own error to report.
                if pages_tx.send((page_no, page)).await.is_err() {
                    return Ok(());
                }
                let Some(next) = next else {
                    return Ok(());
                };
                token = Some(next);
                page_no += 1;
                if page_no > MAX_PAGES {
                    return Err(PassError::Paging {
                        kind,
                        page: page_no,
                        message: "more pages than a pass reads (1 000 000)",
                    });
                }
            }
        };
        let prepare = async move {
            while let Some((page_no, page)) = pages_rx.recv().await {
                let prepared = self.prepare(kind, page, page_no).await?;
                if ready_tx.send(prepared).await.is_err() {
                    break;
                }
            }
            Ok(())
        };
        let write = async move {
            // Ids written in this pass: a record a shifting list shows on two pages was
            // compared before its first write committed, and must replace its lists the second
            // time.
            let mut written = HashSet::new();
            while let Some(prepared) = ready_rx.recv().await {
                self.write_page(kind, prepared, &mut written).await?;
            }
            Ok(())
        };
        let (listed, prepared, wrote) = tokio::join!(list, prepare, write);
        // A stage stops quietly when a later one stopped: any error is the cause.
        listed.and(prepared).and(wrote)
    }

    async fn read_page(
        &self,
        kind: Kind,
        token: Option<&str>,
        page: u64,
    ) -> Result<ReadPage, PassError> {
        let limit = self.spec.page_size;
        let record_err = |index: usize, id: &str, error: RecordError| PassError::Record {
            kind,
            page,
            index,
            id: model::uuid("id", id).ok(),
            error,
        };
        let (items, page_token) = match kind {
            Kind::Person => {
                let p = self
                    .api
                    .list::<model::Person>(kind, token, page, limit)
                    .await?;
                let items = p
                    .data
                    .iter()
                    .enumerate()
                    .map(|(i, person)| {
                        let id = model::uuid("id", &person.id)
                            .map_err(|e| record_err(i, &person.id, e))?;
                        let hash = person
                            .list_hash(self.keyed)
                            .map_err(|e| record_err(i, &person.id, e))?;
                        Ok((id, hash))
                    })
                    .collect::<Result<Vec<_>, PassError>>()?;
                (Items::Persons(items), p.page_token)
            }
            Kind::Duty => {
                let p = self
                    .api
                    .list::<model::Duty>(kind, token, page, limit)
                    .await?;
                let items = p
                    .data
                    .iter()
                    .enumerate()
                    .map(|(i, d)| {
                        d.record()
                            .map(Record::Duty)
                            .map_err(|e| record_err(i, &d.id, e))
                    })
                    .collect::<Result<Vec<_>, PassError>>()?;
                (Items::Records(items), p.page_token)
            }
            Kind::Group => {
                let p = self
                    .api
                    .list::<model::Group>(kind, token, page, limit)
                    .await?;
                let items = p
                    .data
                    .iter()
                    .enumerate()
                    .map(|(i, g)| {
                        g.record()
                            .map(Record::Group)
                            .map_err(|e| record_err(i, &g.id, e))
                    })
                    .collect::<Result<Vec<_>, PassError>>()?;
                (Items::Records(items), p.page_token)
            }
            Kind::Activity => {
                let p = self
                    .api
                    .list::<model::Activity>(kind, token, page, limit)
                    .await?;
                let items = p
                    .data
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        a.record()
                            .map(Record::Activity)
                            .map_err(|e| record_err(i, &a.id, e))
                    })
                    .collect::<Result<Vec<_>, PassError>>()?;
                (Items::Records(items), p.page_token)
            }
        };
        // The spec ends paging with null; an empty token can only mean the same.
        let page_token = page_token.filter(|t| !t.is_empty());
        if let Some(t) = &page_token {
            if t.len() > MAX_PAGE_TOKEN_BYTES || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(PassError::Paging {
                    kind,
                    page,
                    message: "the pageToken is longer than 4096 bytes or not printable ASCII",
                });
            }
        }
        Ok(ReadPage { items, page_token })
    }

    /// Compares a page with the mirror and looks up the persons that changed: what the page
    /// must write (nothing, for an unchanged page).
    async fn prepare(
        &self,
        kind: Kind,
        page: ReadPage,
        page_no: u64,
    ) -> Result<Prepared, PassError> {
        let ids: Vec<String> = match &page.items {
            Items::Persons(p) => p.iter().map(|(id, _)| id.clone()).collect(),
            Items::Records(r) => r.iter().map(|r| r.id().to_owned()).collect(),
        };
        {
            let mut seen = self.seen.lock().map_err(|_| poisoned())?;
            for id in &ids {
                seen[kind.index()].insert(model::uuid_bits(id));
            }
        }
        let mut prepared = Prepared::default();
        if ids.is_empty() {
            return Ok(prepared);
        }
        prepared.known = prov_store::known(self.store, self.spec.source, kind, &ids).await?;
        let known = &prepared.known;
        let differs = |id: &str, hash: &str| match known.get(id) {
            None => true,
            Some(k) => k.removed || k.compared != hash,
        };
        prepared.records = match page.items {
            Items::Persons(list) => {
                let wanted: HashMap<String, String> = list
                    .into_iter()
                    .filter(|(id, hash)| differs(id, hash))
                    .collect();
                if wanted.is_empty() {
                    return Ok(prepared);
                }
                let ids: Vec<String> = wanted.keys().cloned().collect();
                let found = self
                    .api
                    .lookup::<model::Person>(kind, &ids, page_no)
                    .await?;
                let mut records = Vec::with_capacity(found.len());
                let mut done = HashSet::new();
                for (i, person) in found.iter().enumerate() {
                    let record_err = |error| PassError::Record {
                        kind,
                        page: page_no,
                        index: i,
                        id: model::uuid("id", &person.id).ok(),
                        error,
                    };
                    let record = person.record(self.keyed).map_err(record_err)?;
                    // A person the lookup returns that the page did not ask for, or twice, is
                    // not written: the list is what the pass mirrors.
                    let Some(list_sha256) = wanted.get(&record.id) else {
                        continue;
                    };
                    if !done.insert(record.id.clone()) {
                        continue;
                    }
                    records.push(Record::Person {
                        list_sha256: list_sha256.clone(),
                        record,
                    });
                }
                records
            }
            Items::Records(records) => records
                .into_iter()
                .filter(|r| differs(r.id(), &r.content_hash(self.keyed)))
                .collect(),
        };
        Ok(prepared)
    }

    /// Writes what a page changed in one transaction; an unchanged page writes nothing.
    async fn write_page(
        &self,
        kind: Kind,
        prepared: Prepared,
        written: &mut HashSet<u128>,
    ) -> Result<(), PassError> {
        if prepared.records.is_empty() {
            return Ok(());
        }
        let mut tx = self.store.begin_sql("writing a provisioning page").await?;
        let mut added = 0;
        let mut changed = 0;
        for record in &prepared.records {
            let hash = record.content_hash(self.keyed);
            let bits = model::uuid_bits(record.id());
            let k: Option<&Known> = prepared.known.get(record.id());
            let again = written.contains(&bits);
            let outcome = if again {
                // Written earlier in this pass: its lists are there to replace.
                let held = Known {
                    compared: String::new(),
                    content_sha256: hash.clone(),
                    removed: false,
                };
                prov_store::write(
                    &mut *tx,
                    self.spec.source,
                    record,
                    &hash,
                    Some(&held),
                    self.now,
                )
                .await?
            } else {
                prov_store::write(&mut *tx, self.spec.source, record, &hash, k, self.now).await?
            };
            written.insert(bits);
            match outcome {
                Written::Added => added += 1,
                Written::Changed => changed += 1,
                Written::Refreshed => {}
            }
        }
        tx.commit("writing a provisioning page").await?;
        let mut counts = self.counts.lock().map_err(|_| poisoned())?;
        counts[kind.index()][1] += added;
        counts[kind.index()][2] += changed;
        Ok(())
    }

    /// The end of a pass every kind of which was read: removals decided and applied, the pass
    /// and the source's state recorded, in one transaction.
    async fn finish(
        &self,
        mut counts: [[u64; 4]; 4],
        started_at: DateTime<Utc>,
        finished_at: DateTime<Utc>,
        requests: u64,
    ) -> Result<PassReport, StoreError> {
        let source = self.spec.source;
        let mut tx = self
            .store
            .begin_sql("applying a provisioning pass's removals")
            .await?;
        let state = prov_store::state(&mut *tx, source).await?;
        let mut refused = Vec::new();
        for kind in Kind::ALL {
            let mut after = String::new();
            let mut live = 0u64;
            let mut unseen = Vec::new();
            loop {
                let ids =
                    prov_store::live_ids_after(&mut *tx, source, kind, &after, LIVE_IDS_PER_QUERY)
                        .await?;
                let Some(last) = ids.last().cloned() else {
                    break;
                };
                live += ids.len() as u64;
                {
                    let seen = self.seen.lock().map_err(|_| poisoned())?;
                    unseen.extend(
                        ids.into_iter()
                            .filter(|id| !seen[kind.index()].contains(&model::uuid_bits(id))),
                    );
                }
                after = last;
            }
            let held_before = live.saturating_sub(counts[kind.index()][1]);
            let confirmed = if state.accept_removals {
                Confirmed::ByOperator
            } else if state.refused.contains(&kind) {
                Confirmed::ByPreviousPass
            } else {
                Confirmed::No
            };
            let removing = unseen.len() as u64;
            match decide::removals(
                held_before,
                removing,
                self.spec.max_removed_share,
                confirmed,
            ) {
                Removals::Apply => {
                    if removing > 0 {
                        match confirmed {
                            Confirmed::ByOperator | Confirmed::ByPreviousPass => {
                                tracing::warn!(source, kind = kind.as_str(), removing, live = held_before, confirmed = ?confirmed, "applying removals beyond max_removed_share, as confirmed");
                            }
                            Confirmed::No => {}
                        }
                    }
                    counts[kind.index()][3] =
                        prov_store::mark_removed(&mut *tx, source, kind, &unseen, self.now).await?;
                }
                Removals::Refuse => {
                    tracing::error!(source, kind = kind.as_str(), removing, live = held_before, max_removed_share = self.spec.max_removed_share, "a complete pass would remove more than max_removed_share of a kind: refused until `nprov-sync provisioning accept-removals` or the next pass agrees");
                    refused.push((kind, held_before, removing));
                }
            }
        }
        let outcome = if refused.is_empty() {
            PassOutcome::Complete
        } else {
            PassOutcome::Refused
        };
        let error = (!refused.is_empty()).then(|| {
            let said: Vec<String> = refused
                .iter()
                .map(|(k, live, n)| format!("{n} of {live} {}", k.plural()))
                .collect();
            format!(
                "removals refused: the pass did not see {} (more than max_removed_share {}); \
                 run `nprov-sync provisioning accept-removals {source}` to apply them with the \
                 next pass, or wait for the next pass to agree",
                said.join(", "),
                self.spec.max_removed_share
            )
        });
        let refused_kinds: Vec<Kind> = refused.iter().map(|(k, _, _)| *k).collect();
        let row = PassRow {
            source,
            started_at,
            finished_at,
            outcome: outcome.as_str(),
            requests,
            counts,
            error: error.as_deref(),
        };
        prov_store::record_pass(&mut *tx, &row, Some(&refused_kinds)).await?;
        tx.commit("applying a provisioning pass's removals").await?;
        Ok(PassReport {
            outcome,
            counts,
            refused,
            requests,
            started_at,
            finished_at,
            error,
            transient: false,
        })
    }
}

fn poisoned() -> StoreError {
    StoreError::Corrupt("a pass's bookkeeping lock was poisoned by a panic".into())
}

impl PassReport {
    /// One line for people: the outcome, per kind seen/added/changed/removed, requests, time.
    pub fn summary(&self, source: &str) -> String {
        let kinds: Vec<String> = Kind::ALL
            .iter()
            .map(|k| {
                let [seen, added, changed, removed] = self.counts[k.index()];
                format!(
                    "{} {seen} seen, {added} added, {changed} changed, {removed} removed",
                    k.plural()
                )
            })
            .collect();
        let secs = (self.finished_at - self.started_at).num_milliseconds() as f64 / 1000.0;
        format!(
            "{source}: provisioning pass {}: {}; {} requests in {secs:.1} s",
            self.outcome.as_str(),
            kinds.join("; "),
            self.requests
        )
    }
}

impl PassReport {
    /// Reports the pass and its client's counts to a source's metrics.
    pub fn record(
        &self,
        metrics: &crate::metrics::ProvMetrics,
        counters: &super::client::Counters,
    ) {
        use std::sync::atomic::Ordering;
        let kinds = Kind::ALL.map(|k| {
            let held = self
                .refused
                .iter()
                .find(|(r, _, _)| *r == k)
                .map_or(0, |(_, _, n)| *n);
            (k.as_str(), self.counts[k.index()][0], held)
        });
        let requests: [(&str, u64); 5] = std::array::from_fn(|i| {
            (
                super::client::STATUS_LABELS[i],
                counters.by_status[i].load(Ordering::Relaxed),
            )
        });
        metrics.pass(&crate::metrics::PassFigures {
            outcome: self.outcome.as_str(),
            read_whole: match self.outcome {
                PassOutcome::Complete | PassOutcome::Refused => true,
                PassOutcome::Failed => false,
            },
            completed_at: match self.outcome {
                PassOutcome::Complete => Some(self.finished_at),
                PassOutcome::Refused | PassOutcome::Failed => None,
            },
            duration_secs: (self.finished_at - self.started_at).num_milliseconds() as f64 / 1000.0,
            kinds: &kinds,
            requests: &requests,
            token_refreshes: counters.token_refreshes.load(Ordering::Relaxed),
        });
    }
}
