//! Applying one document to the mirror: parse on a blocking thread, write on the async side.
//!
//! The parser reads a `BufRead` (a file, or later an HTTP body bridged into one) on a blocking
//! thread and hands records over a bounded channel, so parsing and database writes overlap on two
//! cores and memory stays bounded by the channel's capacity. A document error rolls the whole
//! document back; a record error quarantines that record in the same transaction.

use std::io::Read;

use tokio::sync::mpsc;

use crate::store::{ApplyContext, ApplySummary, DocumentTx, Store, StoreError};
use crate::xml::{DocumentError, DocumentHeader, Item, Limits, ParseStats, Parser};

/// Batches in flight between the parser thread and the writer.
const CHANNEL_CAPACITY: usize = 4;
/// Items per message: one message per item would wake the writer (and switch threads) for
/// every record, which cost more than parsing and writing together (measured: 60 % of an
/// all-unchanged re-import). Memory stays bounded: capacity × batch items.
const ITEMS_PER_MESSAGE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Document(#[from] DocumentError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the parser thread failed: {0}")]
    Parser(String),
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
    Header(Box<DocumentHeader>),
    Items(Vec<Item>),
    Done { stats: Box<ParseStats>, bytes: u64 },
    Failed(DocumentError),
}

/// Parses `input` and applies it in one transaction which is left open (finished, not committed)
/// so the caller can add to it — the sync engine writes its watermark there — and then commit.
///
/// `ctx.namespace` is filled from the document.
///
/// # Errors
/// A document error or a store error; the transaction is rolled back and nothing is written.
pub async fn apply_document<R>(
    store: &dyn Store,
    input: R,
    limits: Limits,
    mut ctx: ApplyContext,
) -> Result<(Box<dyn DocumentTx>, ImportReport), ImportError>
where
    R: Read + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel(CHANNEL_CAPACITY);
    let parser = tokio::task::spawn_blocking(move || parse_into(input, limits, tx));

    let header = match rx.recv().await {
        Some(Msg::Header(h)) => *h,
        Some(Msg::Failed(e)) => return Err(e.into()),
        _ => return Err(join_error(parser.await)),
    };
    ctx.namespace = header.version.namespace.clone();
    let mut doc = store.begin(ctx).await?;
    let outcome = async {
        loop {
            match rx.recv().await {
                Some(Msg::Items(items)) => {
                    for item in items {
                        match item {
                            Item::Record(r) => doc.apply(r.provomrade).await?,
                            Item::Quarantined(q) => doc.quarantine(&q).await?,
                        }
                    }
                }
                Some(Msg::Done { stats, bytes }) => return Ok((*stats, bytes)),
                Some(Msg::Failed(e)) => return Err(ImportError::Document(e)),
                Some(Msg::Header(_)) | None => {
                    return Err(ImportError::Parser(
                        "the parser stopped without a result".into(),
                    ))
                }
            }
        }
    }
    .await;
    let (stats, bytes) = match outcome {
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

fn parse_into<R: Read>(input: R, limits: Limits, tx: mpsc::Sender<Msg>) {
    let mut parser = match Parser::new(input, limits) {
        Ok(p) => p,
        Err(e) => {
            let _ = tx.blocking_send(Msg::Failed(e));
            return;
        }
    };
    if tx
        .blocking_send(Msg::Header(Box::new(parser.header().clone())))
        .is_err()
    {
        return;
    }
    let mut items = Vec::with_capacity(ITEMS_PER_MESSAGE);
    loop {
        let end = match parser.next_item() {
            Ok(Some(item)) => {
                items.push(item);
                if items.len() < ITEMS_PER_MESSAGE {
                    continue;
                }
                None
            }
            Ok(None) => Some(Msg::Done {
                stats: Box::new(parser.stats().clone()),
                bytes: parser.bytes_read(),
            }),
            Err(e) => Some(Msg::Failed(e)),
        };
        if !items.is_empty() {
            let batch = std::mem::replace(&mut items, Vec::with_capacity(ITEMS_PER_MESSAGE));
            if tx.blocking_send(Msg::Items(batch)).is_err() {
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
