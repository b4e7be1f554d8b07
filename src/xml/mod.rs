//! Streaming parser for every published version of the nationellaprov XML, in two stages.
//!
//! * [`counter`] wraps the byte source: line/column for errors, the raw bytes of the current
//!   element, hard caps on element and document size, and the character check every byte passes
//!   ([`chars`]: UTF-8, none of the characters XML forbids) before anything above sees it.
//! * [`lexer`] turns quick-xml's events into tokens, resolving namespaces and enforcing the rest
//!   of XML's well-formedness (declaration, comments, references, names, caps).
//! * [`scan`] is the first stage: one top-level element at a time, its key, its raw bytes and
//!   their hash. [`build`] is the second: an element's tokens into domain values by the XSD's
//!   rules, either while scanning or later from the raw bytes, when the writer finds them new.
//! * [`version`] is the table of schema versions (namespace → known enumerations, attributes).
//! * [`parser`] runs both stages over a whole document, for callers that want every record.
//!
//! Error policy: a [`DocumentError`] (not well-formed, truncated, a forbidden character or bytes
//! that are not UTF-8, DOCTYPE, wrong root, over a cap) means nothing from the document may be
//! applied. A [`RecordError`] (one element breaks the XSD) sends that element to quarantine and
//! the parse goes on.

pub mod build;
pub mod chars;
pub mod counter;
pub mod error;
mod lexer;
pub mod parser;
pub mod scan;
pub mod version;

pub use build::{build_element, Built, ElementStats, Warning};
pub use counter::Location;
pub use error::{DocumentError, RecordError, RecordErrorKind};
pub use lexer::{Binding, MAX_ATTRIBUTES, MAX_DEPTH};
pub use parser::{Item, Limits, ParseStats, Parser, Record};
pub use scan::{
    DocContext, DocumentHeader, Element, Quarantined, RawHash, ScanStats, Scanned, Scanner,
};
pub use version::{EnumField, SchemaVersion};
