//! Applying one document to the mirror: scan on a blocking thread, write on the async side.
//!
//! The scanner reads a `Read` (a file, or an HTTP body bridged into one) on a blocking thread and
//! hands elements over a bounded channel, so scanning and database writes overlap on two cores
//! and memory stays bounded by the channel's capacity. Whether the scanner also builds each
//! element (while most are new or changed) or only scans (while most are skipped by their raw
//! hash) the writer decides as it goes; the result is the same either way. A document error
//! rolls the whole document back; a record error quarantines that element in the same
//! transaction.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::store::{ApplyContext, ApplySummary, DocumentTx, Store, StoreError};
use crate::xml::{
    DocContext, DocumentError, DocumentHeader, Item, Limits, ParseStats, Parser, ScanStats,
    Scanned, Scanner,
};

/// Messages in flight between the scanner thread and the writer.
const CHANNEL_CAPACITY: usize = 4;
/// Elements per message: one message per element would wake the writer (and switch threads)
/// for every record, which cost more than parsing and writing together (measured: 60 % of an
/// all-unchanged re-import). With the channel's capacity the scanner may run 4096 elements ahead:
/// more than a PostgreSQL batch (2000 keys), so while the server writes one batch the next is
/// already scanned and built. With 1024 in flight the scanner stalled behind every write and the
/// server then waited for it (PostgreSQL, one window of 100 000 students: 25.6 s against 19.9 s
/// with 4096).
const ELEMENTS_PER_MESSAGE: usize = 1024;
/// Raw bytes per message, whichever limit comes first: with the channel's capacity, this bounds
/// the memory in flight whatever the elements' sizes.
const BYTES_PER_MESSAGE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Document(#[from] DocumentError),
    #[error(transparent)]
    Store(StoreError),
    #[error("the parser thread failed: {0}")]
    Parser(String),
}

impl From<StoreError> for ImportError {
    /// A malformed element found while the writer built it is the document's fault, and is
    /// reported as such (with its location), not as a database failure.
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Document(e) => ImportError::Document(e),
            e => ImportError::Store(e),
        }
    }
}

/// What applying one document did.
#[derive(Clone, Debug)]
pub struct ImportReport {
    pub header: DocumentHeader,
    pub stats: ParseStats,
    pub summary: ApplySummary,
    pub bytes: u64,
}

enum Msg {
    Header(Box<DocumentHeader>, Arc<DocContext>),
    Elements(Vec<Scanned>),
    Done { stats: Box<ScanStats>, bytes: u64 },
    Failed(DocumentError),
}

/// Parses `input` and applies it in one transaction which is left open (finished, not committed)
/// so the caller can add to it — the sync engine writes its watermark there — and then commit.
///
/// # Errors
/// A document error or a store error; the transaction is rolled back and nothing is written.
pub async fn apply_document<R>(
    store: &dyn Store,
    input: R,
    limits: Limits,
    ctx: ApplyContext,
) -> Result<(Box<dyn DocumentTx>, ImportReport), ImportError>
where
    R: Read + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (hint_tx, hint_rx) = oneshot::channel();
    let parser = tokio::task::spawn_blocking(move || scan_into(input, limits, tx, hint_rx));

    let (header, doc_ctx) = match rx.recv().await {
        Some(Msg::Header(h, c)) => (*h, c),
        Some(Msg::Failed(e)) => return Err(e.into()),
        _ => return Err(join_error(parser.await)),
    };
    let mut doc = store.begin(ctx, doc_ctx).await?;
    // The scanner follows the writer's advice from here on.
    let _ = hint_tx.send(doc.build_ahead());
    let outcome = async {
        loop {
            match rx.recv().await {
                Some(Msg::Elements(items)) => {
                    for item in items {
                        match item {
                            Scanned::Element(e) => doc.element(e).await?,
                            Scanned::Quarantined(q) => doc.quarantine(q).await?,
                        }
                    }
                }
                Some(Msg::Done { stats, bytes }) => return Ok((*stats, bytes)),
                Some(Msg::Failed(e)) => return Err(ImportError::Document(e)),
                Some(Msg::Header(..)) | None => {
                    return Err(ImportError::Parser(
                        "the parser stopped without a result".into(),
                    ))
                }
            }
        }
    }
    .await;
    let (scan, bytes) = match outcome {
        Ok(done) => done,
        Err(e) => {
            // Dropping the receiver stops the parser thread at its next send.
            drop(rx);
            doc.rollback().await.ok();
            return Err(e);
        }
    };
    let summary = match doc.finish().await {
        Ok(s) => s,
        Err(e) => {
            doc.rollback().await.ok();
            return Err(e.into());
        }
    };
    let mut stats = ParseStats::combine(&scan, doc.parse_stats());
    stats.records = summary.records;
    stats.quarantined = summary.quarantined;
    Ok((
        doc,
        ImportReport {
            header,
            stats,
            summary,
            bytes,
        },
    ))
}

/// Parses and applies one document and commits it.
///
/// # Errors
/// As [`apply_document`], plus a failed commit.
pub async fn import_document<R>(
    store: &dyn Store,
    input: R,
    limits: Limits,
    ctx: ApplyContext,
) -> Result<ImportReport, ImportError>
where
    R: Read + Send + 'static,
{
    let (doc, report) = apply_document(store, input, limits, ctx).await?;
    doc.commit().await?;
    Ok(report)
}

/// The outcome of parsing a document without a database.
#[derive(Debug)]
pub struct ParsedDocument {
    /// `None` when the root element could not be read.
    pub header: Option<DocumentHeader>,
    pub stats: ParseStats,
    /// The document error that ended the parse, if any.
    pub error: Option<DocumentError>,
}

/// Parses a document without a database (for `validate`), calling `on_item` for each item.
pub fn parse_document<R: Read>(
    input: R,
    limits: Limits,
    mut on_item: impl FnMut(&Item),
) -> ParsedDocument {
    let mut parser = match Parser::new(input, limits) {
        Ok(p) => p,
        Err(e) => {
            return ParsedDocument {
                header: None,
                stats: ParseStats::default(),
                error: Some(e),
            }
        }
    };
    let error = loop {
        match parser.next_item() {
            Ok(Some(item)) => on_item(&item),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    ParsedDocument {
        header: Some(parser.header().clone()),
        stats: parser.stats().clone(),
        error,
    }
}

fn scan_into<R: Read>(
    input: R,
    limits: Limits,
    tx: mpsc::Sender<Msg>,
    hint: oneshot::Receiver<Arc<AtomicBool>>,
) {
    let mut scanner = match Scanner::new(input, limits) {
        Ok(p) => p,
        Err(e) => {
            let _ = tx.blocking_send(Msg::Failed(e));
            return;
        }
    };
    let header = Box::new(scanner.header().clone());
    if tx
        .blocking_send(Msg::Header(header, scanner.context().clone()))
        .is_err()
    {
        return;
    }
    // The writer's advice, once its transaction has begun (a writer that failed to begin
    // drops the sender, and the scan stops at its first send).
    let Ok(build_ahead) = hint.blocking_recv() else {
        return;
    };
    let mut items = Vec::with_capacity(ELEMENTS_PER_MESSAGE);
    let mut bytes = 0usize;
    loop {
        scanner.set_build_ahead(build_ahead.load(Ordering::Relaxed));
        let end = match scanner.next_element() {
            Ok(Some(item)) => {
                bytes += match &item {
                    Scanned::Element(e) => e.raw.len(),
                    Scanned::Quarantined(q) => q.raw.len(),
                };
                items.push(item);
                if items.len() < ELEMENTS_PER_MESSAGE && bytes < BYTES_PER_MESSAGE {
                    continue;
                }
                None
            }
            Ok(None) => Some(Msg::Done {
                stats: Box::new(scanner.stats().clone()),
                bytes: scanner.bytes_read(),
            }),
            Err(e) => Some(Msg::Failed(e)),
        };
        if !items.is_empty() {
            let batch = std::mem::replace(&mut items, Vec::with_capacity(ELEMENTS_PER_MESSAGE));
            bytes = 0;
            if tx.blocking_send(Msg::Elements(batch)).is_err() {
                return;
            }
        }
        if let Some(last) = end {
            let _ = tx.blocking_send(last);
            return;
        }
    }
}

fn join_error(r: Result<(), tokio::task::JoinError>) -> ImportError {
    match r {
        Ok(()) => ImportError::Parser("the parser stopped without a result".into()),
        Err(e) => ImportError::Parser(e.to_string()),
    }
}
