//! Parser errors. A [`DocumentError`] ends the document: nothing from it may be applied. A
//! [`RecordError`] condemns one top-level element only; it goes to quarantine with its raw XML and
//! the rest of the document goes on.

use super::chars::BadChar;
use super::counter::{LimitExceeded, Location};

#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("the document is empty: no root element")]
    Empty,
    #[error("{location}: the document is not well-formed XML: {message}")]
    Malformed { location: Location, message: String },
    #[error("{location}: the document ends inside <{open}>: it is truncated")]
    Truncated { location: Location, open: String },
    #[error("{location}: DOCTYPE declarations are refused: they can declare entities (and entity bombs), and the API never sends one")]
    Doctype { location: Location },
    #[error("{location}: undeclared entity reference &{name}; (only the five predefined XML entities and character references are allowed)")]
    Entity { location: Location, name: String },
    #[error(
        "{location}: the root element is {found}, expected <provresultat> in a namespace under {}",
        super::version::NAMESPACE_PREFIX
    )]
    WrongRoot { location: Location, found: String },
    #[error("{location}: unsupported encoding {encoding:?}: the API delivers UTF-8")]
    Encoding {
        location: Location,
        encoding: String,
    },
    #[error("{location}: {what} after the root element")]
    TrailingContent { location: Location, what: String },
    #[error("{location}: elements nested deeper than {max} levels")]
    TooDeep { location: Location, max: usize },
    /// A character XML does not allow (NUL, a control character) or bytes that are not UTF-8.
    #[error("{location}: {bad}")]
    Character { location: Location, bad: BadChar },
    #[error(
        "{location}: an element with more than {max} attributes (namespace declarations included)"
    )]
    TooManyAttributes { location: Location, max: usize },
    #[error("{location}: {limit}")]
    Limit {
        location: Location,
        limit: LimitExceeded,
    },
    #[error("{location}: reading the document failed: {source}")]
    Io {
        location: Location,
        #[source]
        source: std::io::Error,
    },
}

impl DocumentError {
    /// Where the error is, when it is somewhere.
    pub fn location(&self) -> Option<Location> {
        match self {
            DocumentError::Empty => None,
            DocumentError::Malformed { location, .. }
            | DocumentError::Truncated { location, .. }
            | DocumentError::Doctype { location }
            | DocumentError::Entity { location, .. }
            | DocumentError::WrongRoot { location, .. }
            | DocumentError::Encoding { location, .. }
            | DocumentError::TrailingContent { location, .. }
            | DocumentError::TooDeep { location, .. }
            | DocumentError::Character { location, .. }
            | DocumentError::TooManyAttributes { location, .. }
            | DocumentError::Limit { location, .. }
            | DocumentError::Io { location, .. } => Some(*location),
        }
    }

    /// Whether the bytes stopped early (a cut connection, a body that ends inside an element or
    /// a character) rather than being wrong. Both are retried by the sync engine; this only
    /// decides how the error is worded and counted.
    pub fn is_truncation(&self) -> bool {
        match self {
            DocumentError::Truncated { .. } | DocumentError::Io { .. } => true,
            DocumentError::Character { bad, .. } => match bad {
                BadChar::CutUtf8 => true,
                BadChar::NotUtf8 | BadChar::Forbidden(_) => false,
            },
            DocumentError::Empty
            | DocumentError::Malformed { .. }
            | DocumentError::Doctype { .. }
            | DocumentError::Entity { .. }
            | DocumentError::WrongRoot { .. }
            | DocumentError::Encoding { .. }
            | DocumentError::TrailingContent { .. }
            | DocumentError::TooDeep { .. }
            | DocumentError::TooManyAttributes { .. }
            | DocumentError::Limit { .. } => false,
        }
    }

    /// A short, stable name for metrics labels and tests.
    pub fn code(&self) -> &'static str {
        match self {
            DocumentError::Empty => "empty",
            DocumentError::Malformed { .. } => "malformed",
            DocumentError::Truncated { .. } => "truncated",
            DocumentError::Doctype { .. } => "doctype",
            DocumentError::Entity { .. } => "entity",
            DocumentError::WrongRoot { .. } => "wrong_root",
            DocumentError::Encoding { .. } => "encoding",
            DocumentError::TrailingContent { .. } => "trailing_content",
            DocumentError::TooDeep { .. } => "too_deep",
            DocumentError::Character { .. } => "character",
            DocumentError::TooManyAttributes { .. } => "too_many_attributes",
            DocumentError::Limit { .. } => "limit",
            DocumentError::Io { .. } => "io",
        }
    }
}

/// What is wrong with one record, as a stable code (tests, metrics, the quarantine table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordErrorKind {
    MissingAttribute,
    EmptyAttribute,
    BadArskurs,
    BadDate,
    BadPoang,
    BadBoolean,
    BothBetygAndPoang,
    MissingElement,
    UnexpectedElement,
    UnexpectedText,
    /// Elements in the wrong order or repeated where the XSD allows one.
    Order,
    EmptyValue,
}

impl RecordErrorKind {
    pub fn code(self) -> &'static str {
        match self {
            RecordErrorKind::MissingAttribute => "missing_attribute",
            RecordErrorKind::EmptyAttribute => "empty_attribute",
            RecordErrorKind::BadArskurs => "bad_arskurs",
            RecordErrorKind::BadDate => "bad_date",
            RecordErrorKind::BadPoang => "bad_poang",
            RecordErrorKind::BadBoolean => "bad_boolean",
            RecordErrorKind::BothBetygAndPoang => "both_betyg_and_poang",
            RecordErrorKind::MissingElement => "missing_element",
            RecordErrorKind::UnexpectedElement => "unexpected_element",
            RecordErrorKind::UnexpectedText => "unexpected_text",
            RecordErrorKind::Order => "order",
            RecordErrorKind::EmptyValue => "empty_value",
        }
    }
}

/// One record that breaks the XSD.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{location}: in <{element}>{}: {message}", elev.as_ref().map(|e| format!(" of elev {e}")).unwrap_or_default())]
pub struct RecordError {
    pub kind: RecordErrorKind,
    /// Where the offending element or attribute starts.
    pub location: Location,
    /// The element the fault is in (`provtillfälle`, `poäng`, …).
    pub element: String,
    /// The student, when the record's `elev` attribute could be read.
    pub elev: Option<String>,
    pub message: String,
}
