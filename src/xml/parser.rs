//! The streaming parser: bytes in, one [`Item`] per top-level element out.
//!
//! It holds the reader, one reusable event buffer and the element in progress, never the document:
//! a caller writes each record before asking for the next. Namespaces are resolved here (cheaper
//! than quick-xml's `NsReader`, which pushes a scope for every element), so any prefix or a default
//! namespace works; all elements of a document must be in the root's namespace. Attributes are unqualified as in the XSD; prefixed ones (`xsi:…`) are
//! ignored. Values are trimmed as the XSD's whitespace facets do for dates, numbers and booleans
//! (and, leniently, for the string enumerations).

use std::collections::BTreeMap;
use std::io::Read;

use chrono::{NaiveDate, NaiveDateTime};
use quick_xml::events::Event;
use quick_xml::Reader;

use super::counter::{CountingReader, LimitExceeded, Location};
use super::error::{DocumentError, RecordError, RecordErrorKind as K};
use super::version::{EnumField, SchemaVersion};
use crate::domain::{
    Arskurs, Delprovsresultat, Omrade, Provomrade, ProvomradeKey, Provtillfalle,
    ProvtillfalleResultat, Text, Utfall, Varde,
};

/// Caps that keep a hostile document from costing unbounded memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest single top-level element (one provområde) in bytes.
    pub max_record_bytes: u64,
    /// The largest document in bytes, if capped.
    pub max_document_bytes: Option<u64>,
}

/// A real provområde element is a few kilobytes; 4 MiB is far beyond any student's results and
/// still small enough to hold.
pub const DEFAULT_MAX_RECORD_BYTES: u64 = 4 * 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            max_document_bytes: None,
        }
    }
}

/// Nesting in the schema is five levels; anything much deeper is an attack or garbage.
const MAX_DEPTH: usize = 32;
/// How many warnings are kept verbatim; the rest are only counted.
const MAX_KEPT_WARNINGS: usize = 50;
/// How many distinct unknown enumeration values are kept per field before lumping the rest.
const MAX_DISTINCT_UNKNOWN: usize = 50;

/// The root element's facts.
#[derive(Clone, Debug)]
pub struct DocumentHeader {
    pub version: SchemaVersion,
    /// `from` and `tom` as the vendor wrote them (they are informational: the window we asked for
    /// is what counts).
    pub from: Option<NaiveDateTime>,
    pub tom: Option<NaiveDateTime>,
}

/// Something odd but harmless, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub location: Location,
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Running counts of a parse.
#[derive(Clone, Debug, Default)]
pub struct ParseStats {
    pub records: u64,
    pub quarantined: u64,
    pub provtillfallen: u64,
    pub delprovsresultat: u64,
    /// Values outside the known enumeration of the document's version: (field, value) → count.
    pub unknown_values: BTreeMap<(EnumField, String), u64>,
    pub warning_count: u64,
    /// The first warnings verbatim.
    pub warnings: Vec<Warning>,
}

impl ParseStats {
    /// Unknown values per field, summed.
    pub fn unknown_by_field(&self) -> BTreeMap<EnumField, u64> {
        let mut out = BTreeMap::new();
        for ((field, _), n) in &self.unknown_values {
            *out.entry(*field).or_insert(0) += n;
        }
        out
    }
}

/// A parsed top-level element.
#[derive(Clone, Debug)]
pub struct Record {
    pub provomrade: Provomrade,
    pub location: Location,
}

/// A top-level element that broke the XSD, with its raw XML.
#[derive(Clone, Debug)]
pub struct Quarantined {
    pub error: RecordError,
    /// Where the element starts.
    pub record_location: Location,
    /// The element's bytes as received (lossily decoded if they were not UTF-8).
    pub raw: String,
}

#[derive(Clone, Debug)]
pub enum Item {
    Record(Record),
    Quarantined(Quarantined),
}

/// Local names of the schema's elements (in the document's namespace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum El {
    Provresultat,
    Amnesresultat,
    Kursresultat,
    Provtillfalle,
    Sammanvagtprovbetyg,
    Delprovsresultat,
    Intedeltagit,
    Borttappat,
    Betyg,
    Poang,
    Maluppfyllnad,
    Typ,
    /// Any other element, or a schema name in another namespace.
    Other,
}

impl El {
    fn from_local(local: &[u8]) -> El {
        // One comparison per element: the length (and a first byte) picks the only candidate.
        let candidate = match local.len() {
            3 => El::Typ,
            5 => El::Betyg,
            6 => El::Poang,
            10 => El::Borttappat,
            12 => match local[0] {
                b'p' => El::Provresultat,
                b'k' => El::Kursresultat,
                _ => El::Intedeltagit,
            },
            14 => match local[0] {
                b'p' => El::Provtillfalle,
                b'm' => El::Maluppfyllnad,
                _ => El::Amnesresultat,
            },
            16 => El::Delprovsresultat,
            20 => El::Sammanvagtprovbetyg,
            _ => return El::Other,
        };
        if local == candidate.name().as_bytes() {
            candidate
        } else {
            El::Other
        }
    }

    /// The plain table `from_local` must agree with (checked in the tests).
    #[cfg(test)]
    fn from_local_by_table(local: &[u8]) -> El {
        const AMNESRESULTAT: &[u8] = "ämnesresultat".as_bytes();
        const PROVTILLFALLE: &[u8] = "provtillfälle".as_bytes();
        const SAMMANVAGT: &[u8] = "sammanvägtprovbetyg".as_bytes();
        const POANG: &[u8] = "poäng".as_bytes();
        const MALUPPFYLLNAD: &[u8] = "måluppfyllnad".as_bytes();
        match local {
            b"provresultat" => El::Provresultat,
            AMNESRESULTAT => El::Amnesresultat,
            b"kursresultat" => El::Kursresultat,
            PROVTILLFALLE => El::Provtillfalle,
            SAMMANVAGT => El::Sammanvagtprovbetyg,
            b"delprovsresultat" => El::Delprovsresultat,
            b"intedeltagit" => El::Intedeltagit,
            b"borttappat" => El::Borttappat,
            b"betyg" => El::Betyg,
            POANG => El::Poang,
            MALUPPFYLLNAD => El::Maluppfyllnad,
            b"typ" => El::Typ,
            _ => El::Other,
        }
    }

    fn name(self) -> &'static str {
        match self {
            El::Provresultat => "provresultat",
            El::Amnesresultat => "ämnesresultat",
            El::Kursresultat => "kursresultat",
            El::Provtillfalle => "provtillfälle",
            El::Sammanvagtprovbetyg => "sammanvägtprovbetyg",
            El::Delprovsresultat => "delprovsresultat",
            El::Intedeltagit => "intedeltagit",
            El::Borttappat => "borttappat",
            El::Betyg => "betyg",
            El::Poang => "poäng",
            El::Maluppfyllnad => "måluppfyllnad",
            El::Typ => "typ",
            El::Other => "?",
        }
    }
}

/// Unqualified attribute names of the schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    Elev,
    Amne,
    Arskurs,
    Skolform,
    Kurs,
    Uppdaterat,
    Genomfort,
    From,
    Tom,
    Other,
}

impl At {
    fn from_local(local: &[u8]) -> At {
        const AMNE: &[u8] = "ämne".as_bytes();
        const ARSKURS: &[u8] = "årskurs".as_bytes();
        const GENOMFORT: &[u8] = "genomfört".as_bytes();
        match local {
            b"elev" => At::Elev,
            AMNE => At::Amne,
            ARSKURS => At::Arskurs,
            b"skolform" => At::Skolform,
            b"kurs" => At::Kurs,
            b"uppdaterat" => At::Uppdaterat,
            GENOMFORT => At::Genomfort,
            b"from" => At::From,
            b"tom" => At::Tom,
            _ => At::Other,
        }
    }

    fn name(self) -> &'static str {
        match self {
            At::Elev => "elev",
            At::Amne => "ämne",
            At::Arskurs => "årskurs",
            At::Skolform => "skolform",
            At::Kurs => "kurs",
            At::Uppdaterat => "uppdaterat",
            At::Genomfort => "genomfört",
            At::From => "from",
            At::Tom => "tom",
            At::Other => "?",
        }
    }
}

/// A namespace declaration in scope.
struct Binding {
    /// Empty for the default namespace.
    prefix: Vec<u8>,
    uri: Vec<u8>,
    /// Depth of the declaring element; the declaration ends with it.
    depth: usize,
    /// Whether `uri` is the document's namespace, decided once here rather than per element.
    is_document: bool,
}

/// A simplified event. Attributes of a start tag go to `Parser::attrs`, text to `Parser::text`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Start {
        el: El,
    },
    End,
    /// Text or CDATA; `blank` when it is only whitespace.
    Text {
        blank: bool,
    },
    Eof,
}

/// Internal: either the document or only the current record is broken.
enum Fault {
    Doc(DocumentError),
    Rec(RecordError),
}

impl From<DocumentError> for Fault {
    fn from(e: DocumentError) -> Self {
        Fault::Doc(e)
    }
}

/// Streams the records of one nationellaprov document.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let file = std::fs::File::open("response.xml")?;
/// let mut parser = nprov_sync::xml::Parser::new(file, Default::default())?;
/// println!("version {}", parser.header().version.label());
/// while let Some(item) = parser.next_item()? {
///     // write the record, then ask for the next one
/// #   let _ = item;
/// }
/// # Ok(()) }
/// ```
pub struct Parser<R: Read> {
    reader: Reader<CountingReader<R>>,
    buf: Vec<u8>,
    /// Attributes of the last start tag (unqualified ones only).
    attrs: Vec<(At, String, u64)>,
    /// Text since the last start tag.
    text: String,
    /// Offset of the last token's first byte.
    tok_pos: u64,
    /// The open elements (for depth and truncation messages); bounded by `MAX_DEPTH`.
    open: Vec<El>,
    /// Display names of the open `El::Other` elements, innermost last.
    open_other: Vec<String>,
    /// Display name of the last `El::Other` start tag.
    other_name: String,
    /// In-scope prefixed namespace declarations: (prefix, URI, depth of the declaring element). Documents declare them on the root only, so this
    /// is tiny; a linear search from the end honours redeclaration.
    ns_bindings: Vec<Binding>,
    /// Default-namespace declarations, the same way (prefix left empty).
    default_ns: Vec<Binding>,
    /// The last start tag was an empty element (`<x/>`): its end comes next.
    pending_end: bool,
    /// Whether text is being collected (inside a simple element); elsewhere only its
    /// blankness matters and it is not copied.
    collect_text: bool,
    namespace: Vec<u8>,
    header: DocumentHeader,
    stats: ParseStats,
    finished: bool,
    failed: bool,
    seen_kursresultat: bool,
}

impl<R: Read> Parser<R> {
    /// Reads the prolog and the root element.
    ///
    /// # Errors
    /// A [`DocumentError`] when the document is empty, not well-formed, declares a DOCTYPE, or its
    /// root is not `<provresultat>` in a vendor namespace.
    pub fn new(input: R, limits: Limits) -> Result<Self, DocumentError> {
        let counting =
            CountingReader::new(input, limits.max_record_bytes, limits.max_document_bytes);
        let mut reader = Reader::from_reader(counting);
        {
            let cfg = reader.config_mut();
            // Empty elements are expanded by us (see `pending_end`) so that a start tag's
            // length, and so its position, is known exactly.
            cfg.expand_empty_elements = false;
            cfg.check_end_names = true;
            // Not trim_text: it would also trim text next to an entity reference ("A &amp; B").
            cfg.trim_text(false);
        }
        let mut p = Parser {
            reader,
            buf: Vec::with_capacity(1024),
            attrs: Vec::with_capacity(8),
            text: String::new(),
            tok_pos: 0,
            open: Vec::new(),
            open_other: Vec::new(),
            other_name: String::new(),
            collect_text: false,
            pending_end: false,
            ns_bindings: Vec::new(),
            default_ns: Vec::new(),
            namespace: Vec::new(),
            header: DocumentHeader {
                version: SchemaVersion::from_namespace(super::version::NAMESPACE_PREFIX)
                    .expect("the prefix itself is under the prefix"),
                from: None,
                tom: None,
            },
            stats: ParseStats::default(),
            finished: false,
            failed: false,
            seen_kursresultat: false,
        };
        p.read_root()?;
        Ok(p)
    }

    pub fn header(&self) -> &DocumentHeader {
        &self.header
    }

    pub fn stats(&self) -> &ParseStats {
        &self.stats
    }

    /// Bytes consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.reader.get_ref().consumed()
    }

    /// The next record or quarantined element; `None` after the root element closed.
    ///
    /// # Errors
    /// A [`DocumentError`] ends the document; calling again after one returns `None`.
    pub fn next_item(&mut self) -> Result<Option<Item>, DocumentError> {
        if self.finished || self.failed {
            return Ok(None);
        }
        let r = self.next_item_inner();
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn next_item_inner(&mut self) -> Result<Option<Item>, DocumentError> {
        loop {
            let pos = self.reader.buffer_position();
            match self.next_tok()? {
                Tok::Text { blank } => {
                    if !blank {
                        self.warn(pos, "text directly inside <provresultat> ignored".into());
                    }
                }
                Tok::Start { el } => {
                    return self.read_top_level(el, pos).map(Some);
                }
                Tok::End => {
                    self.read_epilog()?;
                    self.finished = true;
                    return Ok(None);
                }
                Tok::Eof => return Err(self.truncated()),
            }
        }
    }

    // ----- the prolog, the root and the epilog -------------------------------------------------

    fn read_root(&mut self) -> Result<(), DocumentError> {
        loop {
            match self.next_tok()? {
                Tok::Text { blank: true } => {}
                Tok::Text { blank: false } => {
                    return Err(DocumentError::Malformed {
                        location: self.loc(self.tok_pos),
                        message: "text before the root element".into(),
                    })
                }
                Tok::Eof => return Err(DocumentError::Empty),
                Tok::End => unreachable!("no element is open before the root"),
                Tok::Start { el } => {
                    let location = self.loc(self.tok_pos);
                    if el != El::Provresultat {
                        return Err(DocumentError::WrongRoot {
                            location,
                            found: self.display_name(el),
                        });
                    }
                    return self.root_attributes(location);
                }
            }
        }
    }

    fn root_attributes(&mut self, location: Location) -> Result<(), DocumentError> {
        let attrs = std::mem::take(&mut self.attrs);
        for which in [At::From, At::Tom] {
            let value = attrs.iter().find(|(a, _, _)| *a == which);
            let parsed = match value {
                None => {
                    self.warn(
                        location.offset,
                        format!("<provresultat> has no {} attribute", which.name()),
                    );
                    None
                }
                Some((_, v, pos)) => match parse_date_time(v) {
                    Some(t) => Some(t),
                    None => {
                        self.warn(
                            *pos,
                            format!(
                                "<provresultat {}={v:?}> is not an xs:dateTime",
                                which.name()
                            ),
                        );
                        None
                    }
                },
            };
            match which {
                At::From => self.header.from = parsed,
                _ => self.header.tom = parsed,
            }
        }
        if let (Some(from), Some(tom)) = (self.header.from, self.header.tom) {
            if from > tom {
                // The vendor's own v1.1 example does this; keep the data as sent.
                self.warn(
                    location.offset,
                    format!("<provresultat> has from ({from}) later than tom ({tom})"),
                );
            }
        }
        if self.header.version.unknown {
            self.warn(
                location.offset,
                format!(
                    "unknown schema namespace {}: parsed with the rules of {}",
                    self.header.version.namespace, self.header.version.rules.name
                ),
            );
        }
        self.attrs = attrs
            .into_iter()
            .filter(|(a, _, _)| !matches!(a, At::From | At::Tom))
            .collect();
        self.warn_leftover_attrs("provresultat");
        Ok(())
    }

    fn read_epilog(&mut self) -> Result<(), DocumentError> {
        loop {
            match self.next_tok()? {
                Tok::Eof => return Ok(()),
                Tok::Text { blank: true } => {}
                Tok::Text { blank: false } => {
                    return Err(DocumentError::TrailingContent {
                        location: self.loc(self.tok_pos),
                        what: "text".into(),
                    })
                }
                Tok::Start { el } => {
                    return Err(DocumentError::TrailingContent {
                        location: self.loc(self.tok_pos),
                        what: format!("element <{}>", self.display_name(el)),
                    })
                }
                Tok::End => unreachable!("no element is open after the root"),
            }
        }
    }

    // ----- records -----------------------------------------------------------------------------

    fn read_top_level(&mut self, el: El, start: u64) -> Result<Item, DocumentError> {
        // Forget the bytes before this element: memory holds one top-level element at a time.
        self.reader.get_mut().checkpoint(start);
        let location = self.loc(start);
        let result = match el {
            El::Amnesresultat | El::Kursresultat => {
                if el == El::Amnesresultat && self.seen_kursresultat {
                    self.warn(
                        start,
                        "<ämnesresultat> after <kursresultat>: the XSD puts all ämnesresultat first"
                            .into(),
                    );
                }
                if el == El::Kursresultat {
                    self.seen_kursresultat = true;
                }
                self.read_record(el)
            }
            _ => Err(Fault::Rec(RecordError {
                kind: K::UnexpectedElement,
                location,
                element: "provresultat".into(),
                elev: None,
                message: format!("unexpected element <{}>", self.display_name(el)),
            })),
        };
        match result {
            Ok(provomrade) => {
                self.stats.records += 1;
                Ok(Item::Record(Record {
                    provomrade,
                    location,
                }))
            }
            Err(Fault::Doc(e)) => Err(e),
            Err(Fault::Rec(error)) => {
                // Skip the rest of the element; the raw fragment is everything from its start.
                while self.open.len() > 1 {
                    if self.next_tok()? == Tok::Eof {
                        return Err(self.truncated());
                    }
                }
                let end = self.reader.buffer_position();
                let raw =
                    String::from_utf8_lossy(self.reader.get_ref().slice(start, end)).into_owned();
                self.stats.quarantined += 1;
                Ok(Item::Quarantined(Quarantined {
                    error,
                    record_location: location,
                    raw,
                }))
            }
        }
    }

    fn read_record(&mut self, el: El) -> Result<Provomrade, Fault> {
        let element = el.name();
        let start = self.tok_pos;
        let elev = self.take_attr(At::Elev);
        let elev_name = elev.as_ref().map(|(v, _)| v.clone());
        let rec_err = |p: &Self, kind, at: u64, message: String| {
            Fault::Rec(RecordError {
                kind,
                location: p.loc(at),
                element: element.into(),
                elev: elev_name.clone(),
                message,
            })
        };
        let required = |p: &mut Self, at: At| -> Result<(String, u64), Fault> {
            match p.take_attr(at) {
                None => Err(rec_err(
                    p,
                    K::MissingAttribute,
                    start,
                    format!("required attribute {} is missing", at.name()),
                )),
                Some((v, pos)) if v.trim().is_empty() => Err(rec_err(
                    p,
                    K::EmptyAttribute,
                    pos,
                    format!("attribute {} is empty", at.name()),
                )),
                Some(found) => Ok(found),
            }
        };
        let elev = match elev {
            None => {
                return Err(rec_err(
                    self,
                    K::MissingAttribute,
                    start,
                    "required attribute elev is missing".into(),
                ))
            }
            Some((v, pos)) if v.trim().is_empty() => {
                return Err(rec_err(
                    self,
                    K::EmptyAttribute,
                    pos,
                    "attribute elev is empty".into(),
                ))
            }
            Some((v, _)) => v,
        };
        let omrade = if el == El::Amnesresultat {
            let (amne, _) = required(self, At::Amne)?;
            let (arskurs, pos) = required(self, At::Arskurs)?;
            let arskurs: Arskurs = arskurs
                .parse()
                .map_err(|m: String| rec_err(self, K::BadArskurs, pos, m))?;
            Omrade::Amne { amne, arskurs }
        } else {
            let (kurs, _) = required(self, At::Kurs)?;
            Omrade::Kurs { kurs }
        };
        let (skolform, pos) = required(self, At::Skolform)?;
        let skolform: Text = match self
            .header
            .version
            .rules
            .intern(EnumField::Skolform, &skolform)
        {
            Some(known) => Text::Borrowed(known),
            None => {
                self.note_unknown(EnumField::Skolform, &skolform, pos);
                Text::Owned(skolform)
            }
        };
        self.warn_leftover_attrs(element);
        let key = ProvomradeKey { elev, omrade };

        let mut provtillfallen = Vec::new();
        loop {
            match self.next_tok()? {
                Tok::Text { blank: true } => {}
                Tok::Text { blank: false } => {
                    return Err(self.unexpected_text(element, &key.elev));
                }
                Tok::Start {
                    el: El::Provtillfalle,
                } => provtillfallen.push(self.read_provtillfalle(&key.elev)?),
                Tok::Start { el } => {
                    return Err(self.unexpected(element, el, &key.elev));
                }
                Tok::End => break,
                Tok::Eof => return Err(self.truncated().into()),
            }
        }
        Ok(Provomrade {
            key,
            skolform,
            provtillfallen,
        })
    }

    fn read_provtillfalle(&mut self, elev: &str) -> Result<Provtillfalle, Fault> {
        const E: &str = "provtillfälle";
        let start = self.tok_pos;
        let uppdaterat = match self.take_attr(At::Uppdaterat) {
            None => {
                return Err(self.rec(
                    K::MissingAttribute,
                    start,
                    E,
                    elev,
                    "required attribute uppdaterat is missing".into(),
                ))
            }
            Some((v, pos)) => self.date(&v, pos, E, "uppdaterat", elev)?,
        };
        let genomfort = match self.take_attr(At::Genomfort) {
            None => None,
            Some((v, pos)) => {
                if !self.header.version.rules.genomfort {
                    self.warn(
                        pos,
                        format!(
                            "attribute genomfört is not part of {}; kept",
                            self.header.version.rules.name
                        ),
                    );
                }
                Some(self.date(&v, pos, E, "genomfört", elev)?)
            }
        };
        self.warn_leftover_attrs(E);
        let mut intedeltagit = false;
        let mut sammanvagt: Option<Text> = None;
        let mut delprov: Vec<Delprovsresultat> = Vec::new();
        loop {
            match self.next_tok()? {
                Tok::Text { blank: true } => {}
                Tok::Text { blank: false } => return Err(self.unexpected_text(E, elev)),
                Tok::Start { el } => {
                    let pos = self.tok_pos;
                    let misplaced = match el {
                        El::Intedeltagit => {
                            sammanvagt.is_some() || !delprov.is_empty() || intedeltagit
                        }
                        El::Sammanvagtprovbetyg => {
                            intedeltagit || sammanvagt.is_some() || !delprov.is_empty()
                        }
                        El::Delprovsresultat => intedeltagit,
                        _ => return Err(self.unexpected(E, el, elev)),
                    };
                    if misplaced {
                        return Err(self.rec(
                            K::Order,
                            pos,
                            E,
                            elev,
                            format!(
                                "<{}> is out of place: a provtillfälle holds either <intedeltagit/> alone, or an optional <sammanvägtprovbetyg> followed by <delprovsresultat>",
                                el.name()
                            ),
                        ));
                    }
                    match el {
                        El::Intedeltagit => {
                            self.read_empty(El::Intedeltagit, elev)?;
                            intedeltagit = true;
                        }
                        El::Sammanvagtprovbetyg => {
                            sammanvagt = Some(self.read_enum(
                                El::Sammanvagtprovbetyg,
                                EnumField::SammanvagtProvbetyg,
                                elev,
                            )?);
                        }
                        _ => delprov.push(self.read_delprov(elev)?),
                    }
                }
                Tok::End => break,
                Tok::Eof => return Err(self.truncated().into()),
            }
        }
        self.stats.provtillfallen += 1;
        self.stats.delprovsresultat += delprov.len() as u64;
        Ok(Provtillfalle {
            uppdaterat,
            genomfort,
            resultat: if intedeltagit {
                ProvtillfalleResultat::Intedeltagit
            } else {
                ProvtillfalleResultat::Resultat {
                    sammanvagt_provbetyg: sammanvagt,
                    delprovsresultat: delprov,
                }
            },
        })
    }

    fn read_delprov(&mut self, elev: &str) -> Result<Delprovsresultat, Fault> {
        const E: &str = "delprovsresultat";
        let start = self.tok_pos;
        self.warn_leftover_attrs(E);
        // The XSD: ((betyg | poäng)?, måluppfyllnad?) | intedeltagit | borttappat, then typ.
        let mut betyg: Option<Text> = None;
        let mut poang: Option<i64> = None;
        let mut maluppfyllnad: Option<bool> = None;
        let mut marker: Option<Utfall> = None;
        let mut typ: Option<Text> = None;
        loop {
            match self.next_tok()? {
                Tok::Text { blank: true } => {}
                Tok::Text { blank: false } => return Err(self.unexpected_text(E, elev)),
                Tok::Start { el } => {
                    let pos = self.tok_pos;
                    if typ.is_some() {
                        return Err(self.rec(
                            K::Order,
                            pos,
                            E,
                            elev,
                            format!(
                                "<{}> after <typ>: <typ> comes last, once",
                                self.display_name(el)
                            ),
                        ));
                    }
                    let value_seen = betyg.is_some() || poang.is_some();
                    let misplaced = match el {
                        El::Betyg | El::Poang => {
                            if value_seen {
                                let both = (el == El::Betyg && poang.is_some())
                                    || (el == El::Poang && betyg.is_some());
                                return Err(self.rec(
                                    if both { K::BothBetygAndPoang } else { K::Order },
                                    pos,
                                    E,
                                    elev,
                                    if both {
                                        "both <betyg> and <poäng>: the XSD allows one of them"
                                            .into()
                                    } else {
                                        format!("<{}> repeated", el.name())
                                    },
                                ));
                            }
                            marker.is_some() || maluppfyllnad.is_some()
                        }
                        El::Maluppfyllnad => marker.is_some() || maluppfyllnad.is_some(),
                        El::Intedeltagit | El::Borttappat => {
                            marker.is_some() || value_seen || maluppfyllnad.is_some()
                        }
                        El::Typ => false,
                        _ => return Err(self.unexpected(E, el, elev)),
                    };
                    if misplaced {
                        return Err(self.rec(
                            K::Order,
                            pos,
                            E,
                            elev,
                            format!("<{}> is out of place: a delprovsresultat holds <betyg> or <poäng> and <måluppfyllnad>, or <intedeltagit/>, or <borttappat/>, then <typ>", el.name()),
                        ));
                    }
                    match el {
                        El::Betyg => {
                            betyg = Some(self.read_enum(El::Betyg, EnumField::Betyg, elev)?);
                        }
                        El::Poang => {
                            let range = self.read_value(El::Poang, elev)?;
                            let v = &self.text[range];
                            poang = Some(parse_integer(v).ok_or_else(|| {
                                let message = if is_integer_lexical(v) {
                                    format!(
                                        "{v} is an xs:integer beyond the range kept (±9.2·10¹⁸)"
                                    )
                                } else {
                                    format!("{v:?} is not an integer")
                                };
                                self.rec(K::BadPoang, pos, "poäng", elev, message)
                            })?);
                        }
                        El::Maluppfyllnad => {
                            let range = self.read_value(El::Maluppfyllnad, elev)?;
                            let v = &self.text[range];
                            maluppfyllnad = Some(parse_boolean(v).ok_or_else(|| {
                                self.rec(
                                    K::BadBoolean,
                                    pos,
                                    "måluppfyllnad",
                                    elev,
                                    format!("{v:?} is not an xs:boolean (true, false, 1, 0)"),
                                )
                            })?);
                        }
                        El::Intedeltagit => {
                            self.read_empty(el, elev)?;
                            marker = Some(Utfall::Intedeltagit);
                        }
                        El::Borttappat => {
                            self.read_empty(el, elev)?;
                            marker = Some(Utfall::Borttappat);
                        }
                        _ => {
                            typ = Some(self.read_enum(El::Typ, EnumField::Typ, elev)?);
                        }
                    }
                }
                Tok::End => break,
                Tok::Eof => return Err(self.truncated().into()),
            }
        }
        let Some(typ) = typ else {
            return Err(self.rec(
                K::MissingElement,
                start,
                E,
                elev,
                "required element <typ> is missing".into(),
            ));
        };
        let utfall = marker.unwrap_or(Utfall::Resultat {
            varde: match (betyg, poang) {
                (Some(b), _) => Some(Varde::Betyg(b)),
                (None, Some(p)) => Some(Varde::Poang(p)),
                (None, None) => None,
            },
            maluppfyllnad,
        });
        Ok(Delprovsresultat { typ, utfall })
    }

    /// Reads the text content of a simple element up to its end tag, trimmed and non-empty.
    /// Reads a simple element's text; the trimmed value is `self.text[range]`.
    fn read_value(&mut self, el: El, elev: &str) -> Result<std::ops::Range<usize>, Fault> {
        let start = self.tok_pos;
        self.warn_leftover_attrs(el.name());
        self.collect_text = true;
        let end = self.read_value_end(el, elev);
        self.collect_text = false;
        end?;
        let trimmed = self.text.trim_start();
        let from = self.text.len() - trimmed.len();
        let to = from + trimmed.trim_end().len();
        if from == to {
            return Err(self.rec(
                K::EmptyValue,
                start,
                el.name(),
                elev,
                format!("<{}> is empty", el.name()),
            ));
        }
        Ok(from..to)
    }

    /// Reads a value of a growing enumeration: interned when the version knows it, kept (and
    /// counted) when it does not.
    fn read_enum(&mut self, el: El, field: EnumField, elev: &str) -> Result<Text, Fault> {
        let pos = self.tok_pos;
        let range = self.read_value(el, elev)?;
        Ok(self.enum_text(field, range, pos))
    }

    fn enum_text(&mut self, field: EnumField, range: std::ops::Range<usize>, pos: u64) -> Text {
        if let Some(known) = self
            .header
            .version
            .rules
            .intern(field, &self.text[range.clone()])
        {
            return Text::Borrowed(known);
        }
        let value = self.text[range].to_owned();
        self.note_unknown(field, &value, pos);
        Text::Owned(value)
    }

    fn read_value_end(&mut self, el: El, elev: &str) -> Result<(), Fault> {
        loop {
            match self.next_tok()? {
                Tok::Text { .. } => {}
                Tok::Start { el: child } => return Err(self.unexpected(el.name(), child, elev)),
                Tok::End => return Ok(()),
                Tok::Eof => return Err(self.truncated().into()),
            }
        }
    }

    /// Reads an element declared with empty content (`<intedeltagit/>`).
    fn read_empty(&mut self, el: El, elev: &str) -> Result<(), Fault> {
        self.warn_leftover_attrs(el.name());
        loop {
            match self.next_tok()? {
                Tok::Text { blank: true } => {}
                Tok::Text { blank: false } => return Err(self.unexpected_text(el.name(), elev)),
                Tok::Start { el: child } => return Err(self.unexpected(el.name(), child, elev)),
                Tok::End => return Ok(()),
                Tok::Eof => return Err(self.truncated().into()),
            }
        }
    }

    // ----- the token layer ---------------------------------------------------------------------

    fn next_tok(&mut self) -> Result<Tok, DocumentError> {
        if self.pending_end {
            self.pending_end = false;
            self.close_element();
            return Ok(Tok::End);
        }
        loop {
            self.buf.clear();
            self.tok_pos = self.reader.buffer_position();
            let event = match self.reader.read_event_into(&mut self.buf) {
                Ok(e) => e,
                Err(e) => {
                    let at = self.reader.error_position();
                    return Err(self.xml_error(e, at));
                }
            };
            let empty = matches!(event, Event::Empty(_));
            match event {
                Event::Start(start) | Event::Empty(start) => {
                    // The tag is `<` content `>` (or `/>`) and ends where the reader stands.
                    let tag_len = start.len() as u64 + if empty { 3 } else { 2 };
                    self.tok_pos = self.reader.buffer_position().saturating_sub(tag_len);
                    let depth = self.open.len() + 1;
                    if depth > MAX_DEPTH {
                        return Err(DocumentError::TooDeep {
                            location: self.reader.get_ref().locate(self.tok_pos),
                            max: MAX_DEPTH,
                        });
                    }
                    // One pass over the attributes: namespace declarations (which apply to this
                    // element already) and the schema's unqualified attributes.
                    self.attrs.clear();
                    let attr_base = self.tok_pos;
                    for attr in start.attributes() {
                        let attr = match attr {
                            Ok(a) => a,
                            Err(e) => {
                                return Err(DocumentError::Malformed {
                                    location: self.reader.get_ref().locate(self.tok_pos),
                                    message: e.to_string(),
                                })
                            }
                        };
                        let key = attr.key.as_ref();
                        let value = || {
                            attr.unescape_value().map_err(|e| DocumentError::Malformed {
                                location: self.reader.get_ref().locate(self.tok_pos),
                                message: format!("attribute {}: {e}", String::from_utf8_lossy(key)),
                            })
                        };
                        if let Some(prefix) = key.strip_prefix(b"xmlns") {
                            let prefix = match prefix {
                                [] => &[][..],
                                [b':', p @ ..] => p,
                                _ => continue,
                            };
                            let uri = value()?.into_owned().into_bytes();
                            let binding = Binding {
                                is_document: !self.namespace.is_empty() && uri == self.namespace,
                                prefix: prefix.to_vec(),
                                uri,
                                depth,
                            };
                            if prefix.is_empty() {
                                self.default_ns.push(binding);
                            } else {
                                self.ns_bindings.push(binding);
                            }
                            continue;
                        }
                        // Qualified attributes (xsi:…) are not data.
                        if key.contains(&b':') {
                            continue;
                        }
                        let at = At::from_local(key);
                        if at == At::Other {
                            // Kept by name only, so the element's reader can warn about it.
                            let name = String::from_utf8_lossy(key).into_owned();
                            self.attrs.push((at, name, attr_base));
                            continue;
                        }
                        let v = value()?.into_owned();
                        self.attrs.push((at, v, attr_base));
                    }
                    let qname = start.name();
                    let (prefix, local) = match memchr::memchr(b':', qname.as_ref()) {
                        Some(i) => (&qname.as_ref()[..i], &qname.as_ref()[i + 1..]),
                        None => (&[][..], qname.as_ref()),
                    };
                    let binding = if prefix.is_empty() {
                        // The common case needs no comparison at all.
                        self.default_ns.last()
                    } else {
                        self.ns_bindings
                            .iter()
                            .rev()
                            .find(|b| b.prefix.as_slice() == prefix)
                    };
                    let is_document = binding.is_some_and(|b| b.is_document);
                    let ns = match binding {
                        Some(b) if !b.uri.is_empty() => Some(b.uri.as_slice()),
                        None if !prefix.is_empty() => {
                            return Err(DocumentError::Malformed {
                                location: self.reader.get_ref().locate(self.tok_pos),
                                message: format!(
                                    "the prefix {:?} is not bound to a namespace",
                                    String::from_utf8_lossy(prefix)
                                ),
                            })
                        }
                        _ => None,
                    };
                    let el = match ns {
                        Some(n) if depth == 1 => {
                            let ns_str = String::from_utf8_lossy(n).into_owned();
                            match SchemaVersion::from_namespace(&ns_str) {
                                Some(v) if local == b"provresultat" => {
                                    self.namespace = n.to_vec();
                                    self.header.version = v;
                                    El::Provresultat
                                }
                                _ => El::Other,
                            }
                        }
                        Some(_) if is_document => match El::from_local(local) {
                            El::Provresultat => El::Other,
                            el => el,
                        },
                        _ => El::Other,
                    };
                    if el == El::Other {
                        // Spell foreign names out with their namespace so the message is useful.
                        let q = String::from_utf8_lossy(qname.as_ref()).into_owned();
                        self.other_name = match ns {
                            Some(n) => format!("{q} xmlns=\"{}\"", String::from_utf8_lossy(n)),
                            None => format!("{q} (no namespace)"),
                        };
                        self.open_other.push(self.other_name.clone());
                    }
                    if el == El::Provresultat {
                        // The document's namespace is known from here on.
                        let ns = &self.namespace;
                        for b in self.default_ns.iter_mut().chain(&mut self.ns_bindings) {
                            b.is_document = b.uri == *ns;
                        }
                    }
                    self.open.push(el);
                    self.text.clear();
                    self.pending_end = empty;
                    return Ok(Tok::Start { el });
                }
                Event::End(_) => {
                    self.close_element();
                    return Ok(Tok::End);
                }
                Event::Text(t) => {
                    if !self.collect_text && is_blank_bytes(&t) {
                        // Indentation between elements: nothing to decode or keep.
                        return Ok(Tok::Text { blank: true });
                    }
                    let s = t.decode().map_err(|e| DocumentError::Malformed {
                        location: self.reader.get_ref().locate(self.tok_pos),
                        message: e.to_string(),
                    })?;
                    let blank = is_blank(&s);
                    if self.collect_text || !blank {
                        self.text.push_str(&s);
                    }
                    return Ok(Tok::Text { blank });
                }
                Event::CData(t) => {
                    let s = String::from_utf8_lossy(&t);
                    let blank = is_blank(&s);
                    self.text.push_str(&s);
                    return Ok(Tok::Text { blank });
                }
                Event::GeneralRef(r) => {
                    let resolved = match r.resolve_char_ref() {
                        Ok(Some(c)) => Some(c),
                        Ok(None) => match &*r as &[u8] {
                            b"lt" => Some('<'),
                            b"gt" => Some('>'),
                            b"amp" => Some('&'),
                            b"apos" => Some('\''),
                            b"quot" => Some('"'),
                            _ => None,
                        },
                        Err(e) => {
                            return Err(DocumentError::Malformed {
                                location: self.reader.get_ref().locate(self.tok_pos),
                                message: e.to_string(),
                            })
                        }
                    };
                    let Some(c) = resolved else {
                        return Err(DocumentError::Entity {
                            location: self.reader.get_ref().locate(self.tok_pos),
                            name: String::from_utf8_lossy(r.as_ref()).into_owned(),
                        });
                    };
                    self.text.push(c);
                    return Ok(Tok::Text {
                        blank: c.is_whitespace(),
                    });
                }
                Event::Decl(d) => {
                    if let Some(Ok(enc)) = d.encoding() {
                        let enc = String::from_utf8_lossy(&enc).into_owned();
                        if !enc.eq_ignore_ascii_case("utf-8") && !enc.eq_ignore_ascii_case("utf8") {
                            return Err(DocumentError::Encoding {
                                location: self.reader.get_ref().locate(self.tok_pos),
                                encoding: enc,
                            });
                        }
                    }
                }
                Event::DocType(_) => {
                    return Err(DocumentError::Doctype {
                        location: self.reader.get_ref().locate(self.tok_pos),
                    })
                }
                Event::Comment(_) | Event::PI(_) => {}
                Event::Eof => return Ok(Tok::Eof),
            }
        }
    }

    fn xml_error(&self, e: quick_xml::Error, at: u64) -> DocumentError {
        let location = self.loc(at);
        if let quick_xml::Error::Io(io) = &e {
            if let Some(limit) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<LimitExceeded>())
            {
                return DocumentError::Limit {
                    location,
                    limit: *limit,
                };
            }
            return DocumentError::Io {
                location,
                source: std::io::Error::new(io.kind(), io.to_string()),
            };
        }
        if let quick_xml::Error::Syntax(syntax) = &e {
            use quick_xml::errors::SyntaxError as S;
            // Markup still open at the end of input is what a cut-off body looks like.
            if matches!(
                syntax,
                S::UnclosedTag | S::UnclosedComment | S::UnclosedCData | S::UnclosedPIOrXmlDecl
            ) {
                return DocumentError::Truncated {
                    location,
                    open: self.open_name(),
                };
            }
        }
        DocumentError::Malformed {
            location,
            message: e.to_string(),
        }
    }

    // ----- helpers -----------------------------------------------------------------------------

    fn loc(&self, offset: u64) -> Location {
        self.reader.get_ref().locate(offset)
    }

    fn truncated(&self) -> DocumentError {
        DocumentError::Truncated {
            location: self.loc(self.reader.buffer_position()),
            open: self.open_name(),
        }
    }

    /// Warns about attributes of the current element that its reader did not take: the XSD does
    /// not declare them, and they carry nothing we store.
    fn warn_leftover_attrs(&mut self, element: &str) {
        if self.attrs.is_empty() {
            return;
        }
        let left: Vec<_> = self.attrs.drain(..).collect();
        for (at, value, pos) in left {
            let name = if at == At::Other {
                value
            } else {
                at.name().to_owned()
            };
            self.warn(
                pos,
                format!("attribute {name} on <{element}> is not in the schema; ignored"),
            );
        }
    }

    fn take_attr(&mut self, at: At) -> Option<(String, u64)> {
        let i = self.attrs.iter().position(|(a, _, _)| *a == at)?;
        let (_, v, pos) = self.attrs.swap_remove(i);
        Some((v, pos))
    }

    fn rec(&self, kind: K, at: u64, element: &str, elev: &str, message: String) -> Fault {
        Fault::Rec(RecordError {
            kind,
            location: self.loc(at),
            element: element.into(),
            elev: Some(elev.into()),
            message,
        })
    }

    fn unexpected(&self, parent: &str, child: El, elev: &str) -> Fault {
        self.rec(
            K::UnexpectedElement,
            self.tok_pos,
            parent,
            elev,
            format!("unexpected element <{}>", self.display_name(child)),
        )
    }

    /// Ends the innermost element: its name and the namespace declarations made on it.
    fn close_element(&mut self) {
        if self.open.pop() == Some(El::Other) {
            self.open_other.pop();
        }
        let depth = self.open.len();
        for scope in [&mut self.ns_bindings, &mut self.default_ns] {
            while scope.last().is_some_and(|b| b.depth > depth) {
                scope.pop();
            }
        }
    }

    /// The name of an element for messages; foreign ones are spelled out with their namespace.
    fn display_name(&self, el: El) -> String {
        if el == El::Other {
            self.other_name.clone()
        } else {
            el.name().to_owned()
        }
    }

    fn open_name(&self) -> String {
        match self.open.last() {
            Some(El::Other) => self.open_other.last().cloned().unwrap_or_default(),
            Some(el) => el.name().to_owned(),
            None => String::new(),
        }
    }

    fn unexpected_text(&self, parent: &str, elev: &str) -> Fault {
        self.rec(
            K::UnexpectedText,
            self.tok_pos,
            parent,
            elev,
            format!("unexpected text {:?}", self.text.trim()),
        )
    }

    fn date(
        &self,
        v: &str,
        pos: u64,
        element: &str,
        attr: &str,
        elev: &str,
    ) -> Result<NaiveDate, Fault> {
        parse_date(v).ok_or_else(|| {
            self.rec(
                K::BadDate,
                pos,
                element,
                elev,
                format!("attribute {attr}={v:?} is not an xs:date (yyyy-mm-dd)"),
            )
        })
    }

    fn note_unknown(&mut self, field: EnumField, value: &str, pos: u64) {
        let distinct = self
            .stats
            .unknown_values
            .keys()
            .filter(|(f, _)| *f == field)
            .count();
        let key = (field, value.to_owned());
        if distinct >= MAX_DISTINCT_UNKNOWN && !self.stats.unknown_values.contains_key(&key) {
            *self
                .stats
                .unknown_values
                .entry((field, "(other values)".into()))
                .or_insert(0) += 1;
            return;
        }
        let n = self.stats.unknown_values.entry(key).or_insert(0);
        *n += 1;
        if *n == 1 {
            self.warn(
                pos,
                format!(
                    "{} {value:?} is not in the {} enumeration; kept",
                    field.as_str(),
                    self.header.version.rules.name
                ),
            );
        }
    }

    fn warn(&mut self, pos: u64, message: String) {
        self.stats.warning_count += 1;
        if self.stats.warnings.len() < MAX_KEPT_WARNINGS {
            let location = self.loc(pos);
            self.stats.warnings.push(Warning { location, message });
        }
    }
}

impl<R: Read> Iterator for Parser<R> {
    type Item = Result<Item, DocumentError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_item().transpose()
    }
}

/// Whitespace only, in the XML sense (space, tab, CR, LF); other Unicode spaces are content.
fn is_blank(s: &str) -> bool {
    is_blank_bytes(s.as_bytes())
}

fn is_blank_bytes(b: &[u8]) -> bool {
    b.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// xs:date, optionally with a time zone (which a date carries only as decoration).
pub fn parse_date(v: &str) -> Option<NaiveDate> {
    let v = v.trim();
    let (core, rest) = match (v.get(..10), v.get(10..)) {
        (Some(core), Some(rest)) => (core, rest),
        _ => return None,
    };
    // chrono accepts "2024-5-2"; the XSD's lexical form is zero-padded yyyy-mm-dd.
    let b = core.as_bytes();
    let padded = b.iter().enumerate().all(|(i, c)| match i {
        4 | 7 => *c == b'-',
        _ => c.is_ascii_digit(),
    });
    if !padded || !(rest.is_empty() || rest == "Z" || is_offset(rest)) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| core[r].parse::<u32>().ok();
    NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)
}

fn is_offset(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 6
        && (b[0] == b'+' || b[0] == b'-')
        && b[1].is_ascii_digit()
        && b[2].is_ascii_digit()
        && b[3] == b':'
        && b[4].is_ascii_digit()
        && b[5].is_ascii_digit()
}

/// xs:dateTime as the vendor writes it (local time, optional fraction and zone), or the API's own
/// `yyyy-MM-ddTHH:mm`.
pub fn parse_date_time(v: &str) -> Option<NaiveDateTime> {
    let v = v.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        return Some(t.naive_local());
    }
    let v = v.strip_suffix('Z').unwrap_or(v);
    NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M"))
        .ok()
}

/// xs:integer (optional sign, decimal digits), within i64.
pub fn parse_integer(v: &str) -> Option<i64> {
    if !is_integer_lexical(v) {
        return None;
    }
    let v = v.trim();
    v.strip_prefix('+').unwrap_or(v).parse().ok()
}

fn is_integer_lexical(v: &str) -> bool {
    let v = v.trim();
    let digits = v.strip_prefix(['+', '-']).unwrap_or(v);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// xs:boolean.
pub fn parse_boolean(v: &str) -> Option<bool> {
    match v.trim() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_names_are_recognised_by_length_and_bytes() {
        let names = [
            "provresultat",
            "ämnesresultat",
            "kursresultat",
            "provtillfälle",
            "sammanvägtprovbetyg",
            "delprovsresultat",
            "intedeltagit",
            "borttappat",
            "betyg",
            "poäng",
            "måluppfyllnad",
            "typ",
            "provresultaT",
            "kursresultaX",
            "ämnesresultaT",
            "typx",
            "",
            "x",
            "amnesresultat",
            "provtillfalle",
            "poang",
        ];
        for n in names {
            assert_eq!(
                El::from_local(n.as_bytes()),
                El::from_local_by_table(n.as_bytes()),
                "{n}"
            );
        }
        assert_eq!(
            El::from_local("provtillfälle".as_bytes()),
            El::Provtillfalle
        );
        assert_eq!(El::from_local("provtillfalle".as_bytes()), El::Other);
    }

    #[test]
    fn lexical_forms_follow_the_xsd() {
        assert_eq!(parse_integer(" +24 "), Some(24));
        assert_eq!(parse_integer("-3"), Some(-3));
        assert_eq!(parse_integer("2.5"), None);
        assert_eq!(parse_integer("99999999999999999999"), None);
        assert_eq!(parse_boolean("1"), Some(true));
        assert_eq!(parse_boolean("True"), None);
        assert!(parse_date("2016-09-01").is_some());
        assert!(parse_date("2016-09-01+02:00").is_some());
        assert!(parse_date("2016-9-1").is_none());
        assert!(parse_date("2024-5-02").is_none());
        assert!(parse_date("2016-02-30").is_none());
        assert!(parse_date_time("2016-09-01T00:00:00").is_some());
        assert!(parse_date_time("2016-09-01T00:00:00.5+01:00").is_some());
        assert!(parse_date_time("2016-09-01T12:30").is_some());
    }
}
