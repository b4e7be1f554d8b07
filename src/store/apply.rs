//! One document's transaction, the same for every backend: elements in, batches decided by the
//! replace core ([`super::replace`]), writes executed by the backend's [`Dialect`].
//!
//! The shell owns the order of things and nothing else: gather a batch, ask the backend what
//! is stored for its keys, let the core decide and plan, have the backend write the plan; at the
//! end, settle the keys several batches wrote (their stored sets hashed again, page by page) and
//! let the backend write the bookkeeping. It also tells the scanner whether building ahead pays
//! off: while most elements need building, the scanner builds them on its own thread; once most
//! are skipped by their raw hash, it only scans.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use super::replace::{
    self, Batch, BatchLimits, BatchPlan, DocState, Fingerprint, Group, Op, Stored,
};
use super::sql::Sql;
use super::{ApplySummary, DocumentTx, StoreError, SyncRun};
use crate::domain::{ContentHash, ContentHasher, ProvomradeKey, StoredProvtillfalle};
use crate::xml::{DocContext, Element, ParseStats, Quarantined, RawHash};

/// Quarantined elements (from the scanner) gathered before they are written with a batch.
const LOOSE_QUARANTINE: usize = 500;
/// Tracking rows settled per round trip at the end.
const SETTLE_PAGE: i64 = 200;
/// Provtillfällen read per round trip when a settled key's set is hashed again.
const CHILDREN_PAGE: i64 = 1000;

/// What every write of a document shares.
#[derive(Clone, Debug)]
pub struct DocInfo {
    pub source: String,
    pub namespace: String,
    /// Names the document in quarantine rows: a file name, or a window.
    pub document: String,
    pub now: chrono::DateTime<chrono::Utc>,
}

/// A key to settle: its id, content hash before the document, raw hash of its elements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settle {
    pub id: i64,
    pub prev_content: Option<ContentHash>,
    pub raw: Option<RawHash>,
}

impl Settle {
    /// From a tracking row as both dialects select it: `(provomrade_id, prev_content, raw)`.
    pub fn from_row((id, prev_content, raw): (i64, Option<ContentHash>, Option<Vec<u8>>)) -> Self {
        Settle {
            id,
            prev_content,
            raw: raw.as_deref().and_then(super::replace::raw_from_bytes),
        }
    }
}

/// A settled key: its content hash and raw hash now, and its `change_log` operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    pub id: i64,
    pub content: ContentHash,
    pub raw: Option<RawHash>,
    pub op: Option<Op>,
}

/// One backend's side of a document's transaction: reads and writes in its own SQL, no decisions.
#[async_trait]
pub trait Dialect: Send {
    /// What is stored for each key, in order, with this document's tracking row; `raws` are the
    /// batch's raw hashes of the keys, which the lookup compares with the stored ones.
    async fn lookup(
        &mut self,
        keys: &[&ProvomradeKey],
        raws: &[RawHash],
    ) -> Result<Vec<Option<Stored>>, StoreError>;

    /// Which of these held keys the tracking store holds (asked only once some spilled there).
    async fn held(&mut self, fps: &[Fingerprint]) -> Result<HashSet<Fingerprint>, StoreError>;

    /// Provtillfällen stored per key.
    async fn children_counts(&mut self, ids: &[i64]) -> Result<HashMap<i64, i64>, StoreError>;

    /// Executes one batch's writes in the plan's order ([`replace::Write`] says why that order),
    /// each with an exhaustive match over the kinds of write. The ids of new keys are the
    /// backend's to assign; the plan names them by position ([`replace::Target::New`]).
    async fn write(&mut self, plan: &BatchPlan, doc: &DocInfo) -> Result<(), StoreError>;

    /// Keys still to settle (written by several batches), by id above `after`.
    async fn to_settle(&mut self, after: i64, limit: i64) -> Result<Vec<Settle>, StoreError>;

    /// A key's stored provtillfällen from `ordinal` on, in order, at most `limit`.
    async fn children(
        &mut self,
        id: i64,
        ordinal: i64,
        limit: i64,
    ) -> Result<Vec<StoredProvtillfalle>, StoreError>;

    /// Writes the settled keys: their `provomrade` rows' hashes (and `changed_at` where they
    /// changed, and the namespace), and their operations into their tracking rows.
    async fn settled(&mut self, rows: &[Settled], doc: &DocInfo) -> Result<(), StoreError>;

    /// Appends what the tracking rows say to `change_log`.
    async fn finish(&mut self, doc: &DocInfo) -> Result<(), StoreError>;

    /// The document's transaction, for the SQL the store core writes once (the window's
    /// `sync_run` row and watermark, [`super::sql::record_window`]).
    fn sql(&mut self) -> &mut dyn Sql;

    async fn commit(self: Box<Self>) -> Result<(), StoreError>;

    async fn rollback(self: Box<Self>) -> Result<(), StoreError>;
}

/// A document's transaction over any backend.
pub struct Applier {
    dialect: Box<dyn Dialect>,
    ctx: Arc<DocContext>,
    doc: DocInfo,
    state: DocState,
    batch: Batch,
    loose: Vec<Quarantined>,
    loose_bytes: usize,
    stats: ParseStats,
    /// Read by the scanner before each element.
    build_ahead: Arc<AtomicBool>,
}

impl Applier {
    /// `build_ahead` is the store's advice to the scanner, kept across documents: a window of a
    /// few hundred elements never fills a batch, so it goes by what the documents before it found.
    pub fn new(
        dialect: Box<dyn Dialect>,
        ctx: Arc<DocContext>,
        doc: DocInfo,
        limits: BatchLimits,
        state: DocState,
        build_ahead: Arc<AtomicBool>,
    ) -> Applier {
        Applier {
            dialect,
            ctx,
            doc,
            state,
            batch: Batch::new(limits),
            loose: Vec::new(),
            loose_bytes: 0,
            stats: ParseStats::default(),
            build_ahead,
        }
    }

    async fn flush(&mut self) -> Result<(), StoreError> {
        if self.batch.is_empty() && self.loose.is_empty() {
            return Ok(());
        }
        let groups: Vec<Group> = self.batch.take();
        let loose = std::mem::take(&mut self.loose);
        self.loose_bytes = 0;
        // Fingerprints only matter once some key is held back (most documents hold none).
        let fps: Vec<Fingerprint> = if self.state.any_held() {
            groups
                .iter()
                .map(|g| replace::fingerprint(&g.key))
                .collect()
        } else {
            Vec::new()
        };
        let mut held: Vec<bool> = if fps.is_empty() {
            vec![false; groups.len()]
        } else {
            fps.iter()
                .map(|fp| self.state.held_in_memory(*fp))
                .collect()
        };
        if self.state.held_spilled() {
            let ask: Vec<Fingerprint> = fps
                .iter()
                .zip(&held)
                .filter(|(_, h)| !**h)
                .map(|(fp, _)| *fp)
                .collect();
            let spilled = self.dialect.held(&ask).await?;
            for (h, fp) in held.iter_mut().zip(&fps) {
                *h = *h || spilled.contains(fp);
            }
        }
        let keys: Vec<&ProvomradeKey> = groups.iter().map(|g| &g.key).collect();
        let raws: Vec<RawHash> = groups.iter().map(|g| g.raw_after(None)).collect();
        let stored = self.dialect.lookup(&keys, &raws).await?;
        drop(keys);
        let decisions: Vec<replace::Decision> = groups
            .iter()
            .zip(&stored)
            .zip(&held)
            .map(|((g, s), h)| replace::decide(&self.state, g, s.as_ref(), replace::Hold::of(*h)))
            .collect();
        let need = replace::children_needed(&decisions);
        let counts = if need.is_empty() {
            HashMap::new()
        } else {
            self.dialect.children_counts(&need).await?
        };
        let elements: u64 = groups.iter().map(|g| g.elements.len() as u64).sum();
        let plan = replace::plan(
            &mut self.state,
            &self.ctx,
            groups,
            decisions,
            &counts,
            loose,
        )
        .map_err(StoreError::Document)?;
        // Build ahead while most elements of a batch had to be built.
        let built = plan.built.len() as u64;
        self.build_ahead
            .store(2 * built >= elements, Ordering::Relaxed);
        self.dialect.write(&plan, &self.doc).await?;
        // Pupil ids are personal data: they appear in logs at debug level only, here, where an
        // operator chasing a broken element needs them (the README's "Logs" says so).
        if tracing::enabled!(tracing::Level::DEBUG) {
            for q in plan.quarantined() {
                tracing::debug!(
                    document = %self.doc.document,
                    elev = q.elev.as_deref().unwrap_or("-"),
                    code = q.error_code,
                    line = q.location.line,
                    column = q.location.column,
                    "quarantined an element"
                );
            }
        }
        let (pt, dp) = plan.child_rows;
        let s = &mut self.state.summary;
        s.provomrade_rows += plan.new_keys as u64;
        s.provtillfalle_rows += pt;
        s.delprovsresultat_rows += dp;
        let version = self.ctx.version.rules.name;
        for b in &plan.built {
            self.stats.absorb_element(b, version);
        }
        Ok(())
    }

    /// Hashes again the stored sets of keys several batches wrote, and decides their outcome.
    async fn settle(&mut self) -> Result<(), StoreError> {
        let mut after = 0;
        loop {
            let page = self.dialect.to_settle(after, SETTLE_PAGE).await?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = last.id;
            let mut settled = Vec::with_capacity(page.len());
            for Settle {
                id,
                prev_content: prev,
                raw,
            } in page
            {
                let mut h = ContentHasher::new();
                let mut ordinal = 0;
                loop {
                    let rows = self.dialect.children(id, ordinal, CHILDREN_PAGE).await?;
                    if rows.is_empty() {
                        break;
                    }
                    ordinal += rows.len() as i64;
                    for r in &rows {
                        h.push(&r.skolform, &r.provtillfalle);
                    }
                }
                let content = h.finish();
                let op = self.state.settle(prev.as_deref(), &content);
                settled.push(Settled {
                    id,
                    content,
                    raw,
                    op,
                });
            }
            self.dialect.settled(&settled, &self.doc).await?;
        }
    }
}

#[async_trait]
impl DocumentTx for Applier {
    async fn element(&mut self, element: Element) -> Result<(), StoreError> {
        if self.batch.push(element) {
            self.flush().await?;
        }
        Ok(())
    }

    async fn quarantine(&mut self, q: Quarantined) -> Result<(), StoreError> {
        self.loose_bytes += q.raw.len();
        self.loose.push(q);
        if self.loose.len() >= LOOSE_QUARANTINE || self.loose_bytes >= 8 << 20 {
            self.flush().await?;
        }
        Ok(())
    }

    fn build_ahead(&self) -> Arc<AtomicBool> {
        self.build_ahead.clone()
    }

    fn parse_stats(&self) -> &ParseStats {
        &self.stats
    }

    async fn finish(&mut self) -> Result<ApplySummary, StoreError> {
        self.flush().await?;
        // A document that wrote no key (an unchanged re-read) has nothing to settle or log.
        if self.state.tracked() {
            self.settle().await?;
            self.dialect.finish(&self.doc).await?;
        }
        Ok(self.state.summary.clone())
    }

    async fn record_window(&mut self, run: &SyncRun) -> Result<(), StoreError> {
        super::sql::record_window(self.dialect.sql(), run, self.doc.now).await
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.dialect.commit().await
    }

    async fn rollback(self: Box<Self>) -> Result<(), StoreError> {
        self.dialect.rollback().await
    }
}
