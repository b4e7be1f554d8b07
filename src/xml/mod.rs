//! Streaming parser for every published version of the nationellaprov XML.
//!
//! * [`counter`] wraps the byte source: line/column for errors, the raw bytes of the current
//!   record for quarantine, and hard caps on record and document size.
//! * [`version`] is the table of schema versions (namespace → known enumerations, attributes).
//! * [`parser`] turns events into domain records, one top-level element at a time.
//!
//! Error policy: a [`DocumentError`] (not well-formed, truncated, DOCTYPE, wrong root, over a cap)
//! means nothing from the document may be applied. A [`RecordError`] (one element breaks the XSD)
//! sends that element to quarantine and the parse goes on.

pub mod counter;
pub mod error;
pub mod parser;
pub mod version;

pub use counter::Location;
pub use error::{DocumentError, RecordError, RecordErrorKind};
pub use parser::{DocumentHeader, Item, Limits, ParseStats, Parser, Quarantined, Record, Warning};
pub use version::{EnumField, SchemaVersion};
