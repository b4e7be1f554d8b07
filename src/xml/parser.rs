//! The whole parse in one call: every top-level element scanned and built, as `validate`, the
//! benches and the property tests want it. The sync engine uses the two stages directly (see
//! [`super::scan`]), to skip building what is already stored.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let file = std::fs::File::open("response.xml")?;
//! let mut parser = nprov_sync::xml::Parser::new(file, Default::default())?;
//! println!("version {}", parser.header().version.label());
//! while let Some(item) = parser.next_item()? {
//!     // write the record, then ask for the next one
//! #   let _ = item;
//! }
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::io::Read;

use chrono::{NaiveDate, NaiveDateTime};

use super::build::{build_element, ElementStats, Warning, OTHER_VALUES};
use super::counter::Location;
use super::error::DocumentError;
use super::scan::{DocumentHeader, Quarantined, ScanStats, Scanned, Scanner};
use super::version::EnumField;
use crate::domain::Provomrade;

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

/// How many warnings are kept verbatim; the rest are only counted.
const MAX_KEPT_WARNINGS: usize = 50;
/// How many distinct unknown enumeration values are kept per field before lumping the rest.
const MAX_DISTINCT_UNKNOWN: usize = 50;

/// Running counts of a parse, gathered from the scanner and from each element built.
#[derive(Clone, Debug, Default)]
pub struct ParseStats {
    /// Elements built into values.
    pub records: u64,
    pub quarantined: u64,
    /// Of the elements built.
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

    fn warn(&mut self, w: Warning) {
        self.warning_count += 1;
        if self.warnings.len() < MAX_KEPT_WARNINGS {
            self.warnings.push(w);
        }
    }

    /// Adds what building one element found: its warnings, and its unknown enumeration values
    /// (the first occurrence of a value in the document is also a warning). `version` names the
    /// rules in the warning.
    pub fn absorb_element(&mut self, s: &ElementStats, version: &str) {
        self.provtillfallen += s.provtillfallen;
        self.delprovsresultat += s.delprovsresultat;
        let mut warnings: Vec<Warning> = s.warnings.clone();
        for (field, value, location, n) in &s.unknown_values {
            let distinct = self
                .unknown_values
                .range((*field, String::new())..)
                .take_while(|((f, _), _)| f == field)
                .count();
            let key = (*field, value.clone());
            if distinct >= MAX_DISTINCT_UNKNOWN && !self.unknown_values.contains_key(&key) {
                *self
                    .unknown_values
                    .entry((*field, OTHER_VALUES.into()))
                    .or_insert(0) += n;
                continue;
            }
            let count = self.unknown_values.entry(key).or_insert(0);
            if *count == 0 {
                warnings.push(Warning {
                    location: *location,
                    message: format!(
                        "{} {:?} is not in the {version} enumeration; kept",
                        field.as_str(),
                        super::chars::printable(value)
                    ),
                });
            }
            *count += n;
        }
        warnings.sort_by_key(|w| w.location.offset);
        let unlisted = s.warning_count.saturating_sub(s.warnings.len() as u64);
        for w in warnings {
            self.warn(w);
        }
        self.warning_count += unlisted;
    }

    /// The stats of a document whose scanner and builder ran apart (the writer built what it
    /// needed): the scanner's warnings and the builder's, in document order.
    pub fn combine(scan: &ScanStats, built: &ParseStats) -> ParseStats {
        let mut out = built.clone();
        let mut warnings = scan.warnings.clone();
        warnings.append(&mut out.warnings);
        warnings.sort_by_key(|w| w.location.offset);
        warnings.truncate(MAX_KEPT_WARNINGS);
        out.warnings = warnings;
        out.warning_count += scan.warning_count;
        out
    }

    /// Adds the scanner's warnings that came since `seen` (how many of them were absorbed
    /// before), returning the new `seen`.
    pub fn absorb_scan(&mut self, scan: &ScanStats, seen: (usize, u64)) -> (usize, u64) {
        for w in &scan.warnings[seen.0.min(scan.warnings.len())..] {
            self.warn(w.clone());
        }
        let listed = (scan.warnings.len() - seen.0.min(scan.warnings.len())) as u64;
        let unlisted = scan.warning_count.saturating_sub(seen.1) - listed;
        self.warning_count += unlisted;
        (scan.warnings.len(), scan.warning_count)
    }
}

/// A parsed top-level element.
#[derive(Clone, Debug)]
pub struct Record {
    pub provomrade: Provomrade,
    pub location: Location,
}

#[derive(Clone, Debug)]
pub enum Item {
    Record(Record),
    Quarantined(Quarantined),
}

/// Streams the records of one nationellaprov document, every element built.
pub struct Parser<R: Read> {
    scanner: Scanner<R>,
    stats: ParseStats,
    /// Scanner warnings absorbed so far: (listed, counted).
    scan_seen: (usize, u64),
}

impl<R: Read> Parser<R> {
    /// Reads the prolog and the root element.
    ///
    /// # Errors
    /// A [`DocumentError`] when the document is empty, not well-formed, declares a DOCTYPE, or its
    /// root is not `<provresultat>` in a vendor namespace.
    pub fn new(input: R, limits: Limits) -> Result<Self, DocumentError> {
        let scanner = Scanner::new(input, limits)?;
        let mut stats = ParseStats::default();
        let scan_seen = stats.absorb_scan(scanner.stats(), (0, 0));
        Ok(Parser {
            scanner,
            stats,
            scan_seen,
        })
    }

    pub fn header(&self) -> &DocumentHeader {
        self.scanner.header()
    }

    pub fn stats(&self) -> &ParseStats {
        &self.stats
    }

    /// Bytes consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.scanner.bytes_read()
    }

    /// The next record or quarantined element; `None` after the root element closed.
    ///
    /// # Errors
    /// A [`DocumentError`] ends the document; calling again after one returns `None`.
    pub fn next_item(&mut self) -> Result<Option<Item>, DocumentError> {
        let next = self.scanner.next_element();
        self.scan_seen = self.stats.absorb_scan(self.scanner.stats(), self.scan_seen);
        let element = match next? {
            None => return Ok(None),
            Some(Scanned::Quarantined(q)) => {
                self.stats.quarantined += 1;
                return Ok(Some(Item::Quarantined(q)));
            }
            Some(Scanned::Element(e)) => e,
        };
        let built = match element.built {
            Some(b) => b,
            // Not built while scanning (only when building ahead is turned off).
            None => build_element(&element.raw, element.location, self.scanner.context())?,
        };
        match built {
            Ok(b) => {
                self.stats.records += 1;
                let version = self.scanner.header().version.rules.name;
                self.stats.absorb_element(&b.stats, version);
                Ok(Some(Item::Record(Record {
                    provomrade: b.provomrade,
                    location: element.location,
                })))
            }
            Err(error) => {
                self.stats.quarantined += 1;
                Ok(Some(Item::Quarantined(Quarantined {
                    error,
                    record_location: element.location,
                    raw: String::from_utf8_lossy(&element.raw).into_owned(),
                    raw_sha256: element.raw_sha256,
                    key: Some(element.key),
                })))
            }
        }
    }
}

impl<R: Read> Iterator for Parser<R> {
    type Item = Result<Item, DocumentError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_item().transpose()
    }
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

pub(crate) fn is_integer_lexical(v: &str) -> bool {
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
