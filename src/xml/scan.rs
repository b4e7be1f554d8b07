//! The scanning stage: a document's bytes in, one [`Scanned`] per top-level element out, each
//! with its key, its raw bytes and their hash.
//!
//! The scanner reads the prolog and the root, then every top-level element whole: it takes the
//! key (`elev` and the provområde) from the start tag and reads on to the element's end, through
//! the same [`Lexer`] (and so the same well-formedness and character rules) whether or not it
//! builds. Building into domain values ([`super::build`]) is optional here: while most elements
//! turn out new or changed (a first sync), the scanner builds as it goes, on its own thread; once
//! most elements match what is stored, the writer turns that off and builds only the elements
//! whose raw hash differs ([`super::build::build_element`]). Either way the results are the same.
//!
//! The raw hash of an element is SHA-256 over its bytes exactly as received, seeded with what
//! those bytes mean in this document: the namespace, the prefix bindings in scope, and the
//! version of the building rules ([`BUILD_RULES`]). Equal hashes therefore mean equal content.
//!
//! Memory holds one top-level element (capped by `max_record_bytes`); the caller takes each
//! element before asking for the next.

use std::io::Read;
use std::sync::Arc;

use chrono::NaiveDateTime;
use sha2::{Digest, Sha256};

use super::build::{read_key, Builder, Built, ElementStats, Fault, Warning};
use super::counter::{CountingReader, Location};
use super::error::{DocumentError, RecordError, RecordErrorKind as K};
use super::lexer::{At, Binding, El, Lexer, Tok};
use super::parser::{parse_date_time, Limits};
use super::version::{SchemaVersion, NAMESPACE_PREFIX};
use crate::domain::ProvomradeKey;

/// The version of the rules that turn bytes into values. A raw hash seeds with it, so a release
/// that reads some element differently makes every stored raw hash differ once (each element is
/// then built again and compared by content): bump it with any change to [`super::build`].
pub const BUILD_RULES: u32 = 1;

/// How many document-level warnings are kept verbatim; the rest are only counted.
const MAX_KEPT_WARNINGS: usize = 50;

/// SHA-256 of an element's raw bytes (seeded, see the module docs).
pub type RawHash = [u8; 32];

/// The root element's facts.
#[derive(Clone, Debug)]
pub struct DocumentHeader {
    pub version: SchemaVersion,
    /// `from` and `tom` as the vendor wrote them (they are informational: the window we asked for
    /// is what counts).
    pub from: Option<NaiveDateTime>,
    pub tom: Option<NaiveDateTime>,
}

/// What an element's bytes mean in this document: enough to build it again on its own, and the
/// seed of its raw hash.
pub struct DocContext {
    pub namespace: String,
    pub version: SchemaVersion,
    /// The namespace declarations in scope for top-level elements (those of the root).
    pub bindings: Vec<Binding>,
    /// The hasher with the seed already absorbed: each element's hash starts from a clone.
    seed: Sha256,
}

impl DocContext {
    fn new(namespace: String, version: SchemaVersion, bindings: Vec<Binding>) -> DocContext {
        let mut seed = Sha256::new();
        seed.update(b"nprov-sync/raw/v1\0");
        seed.update(BUILD_RULES.to_le_bytes());
        let field = |h: &mut Sha256, b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        field(&mut seed, namespace.as_bytes());
        // In a fixed order: only what is bound matters, not the order it was declared in. An
        // inner redeclaration of a prefix shadows the outer one, so the last one wins.
        let mut in_scope: Vec<&Binding> = Vec::new();
        for b in &bindings {
            in_scope.retain(|x| x.prefix != b.prefix);
            in_scope.push(b);
        }
        in_scope.sort_by(|a, b| a.prefix.cmp(&b.prefix));
        seed.update((in_scope.len() as u64).to_le_bytes());
        for b in in_scope {
            field(&mut seed, &b.prefix);
            field(&mut seed, &b.uri);
        }
        DocContext {
            namespace,
            version,
            bindings,
            seed,
        }
    }

    /// The raw hash of an element's bytes in this document.
    pub fn raw_sha256(&self, raw: &[u8]) -> RawHash {
        let mut h = self.seed.clone();
        h.update(raw);
        h.finalize().into()
    }
}

impl std::fmt::Debug for DocContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocContext")
            .field("namespace", &self.namespace)
            .field("bindings", &self.bindings.len())
            .finish()
    }
}

/// A top-level element whose key could be read.
#[derive(Clone, Debug)]
pub struct Element {
    pub key: ProvomradeKey,
    /// Where the element starts.
    pub location: Location,
    /// The element's bytes exactly as received (UTF-8: the scanner let nothing else through).
    pub raw: Box<[u8]>,
    pub raw_sha256: RawHash,
    /// The element built, when the scanner built as it went.
    pub built: Option<Result<Built, RecordError>>,
}

/// A top-level element that broke the XSD, with its raw XML.
#[derive(Clone, Debug)]
pub struct Quarantined {
    pub error: RecordError,
    /// Where the element starts.
    pub record_location: Location,
    /// The element's bytes as received.
    pub raw: String,
    pub raw_sha256: RawHash,
    /// The key it claims, when that much could be read.
    pub key: Option<ProvomradeKey>,
}

/// What the scanner hands over for each top-level element.
#[derive(Clone, Debug)]
pub enum Scanned {
    Element(Element),
    /// An element that cannot even be named by a key (an unexpected element, a missing `elev`,
    /// årskurs not 3, 6 or 9, …).
    Quarantined(Quarantined),
}

/// Running counts of a scan.
#[derive(Clone, Debug, Default)]
pub struct ScanStats {
    /// Top-level elements with a key.
    pub elements: u64,
    /// Top-level elements without one (quarantined here).
    pub quarantined: u64,
    /// Document-level warnings (the root's attributes, text between elements, order).
    pub warning_count: u64,
    pub warnings: Vec<Warning>,
}

/// Streams the top-level elements of one nationellaprov document.
pub struct Scanner<R: Read> {
    lex: Lexer<R>,
    header: DocumentHeader,
    context: Arc<DocContext>,
    stats: ScanStats,
    build_ahead: bool,
    finished: bool,
    failed: bool,
    seen_kursresultat: bool,
}

impl<R: Read> Scanner<R> {
    /// Reads the prolog and the root element.
    ///
    /// # Errors
    /// A [`DocumentError`] when the document is empty, not well-formed, declares a DOCTYPE, or its
    /// root is not `<provresultat>` in a vendor namespace.
    pub fn new(input: R, limits: Limits) -> Result<Self, DocumentError> {
        let counting =
            CountingReader::new(input, limits.max_record_bytes, limits.max_document_bytes);
        let mut lex = Lexer::new(counting);
        let mut stats = ScanStats::default();
        let header = read_root(&mut lex, &mut stats)?;
        let context = Arc::new(DocContext::new(
            header.version.namespace.clone(),
            header.version.clone(),
            lex.bindings(),
        ));
        Ok(Scanner {
            lex,
            header,
            context,
            stats,
            build_ahead: true,
            finished: false,
            failed: false,
            seen_kursresultat: false,
        })
    }

    pub fn header(&self) -> &DocumentHeader {
        &self.header
    }

    /// What the document's elements mean, for building them later and for their raw hashes.
    pub fn context(&self) -> &Arc<DocContext> {
        &self.context
    }

    pub fn stats(&self) -> &ScanStats {
        &self.stats
    }

    /// Bytes consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.lex.counter().consumed()
    }

    /// Whether elements are built as they are scanned (the default), or only scanned.
    pub fn set_build_ahead(&mut self, on: bool) {
        self.build_ahead = on;
    }

    /// The next top-level element; `None` after the root element closed.
    ///
    /// # Errors
    /// A [`DocumentError`] ends the document; calling again after one returns `None`.
    pub fn next_element(&mut self) -> Result<Option<Scanned>, DocumentError> {
        if self.finished || self.failed {
            return Ok(None);
        }
        let r = self.next_inner();
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn next_inner(&mut self) -> Result<Option<Scanned>, DocumentError> {
        loop {
            let pos = self.lex.pos();
            match self.lex.next_tok()? {
                Tok::Text { blank } => {
                    if !blank {
                        warn(
                            &mut self.stats,
                            &self.lex,
                            pos,
                            "text directly inside <provresultat> ignored".into(),
                        );
                    }
                }
                Tok::Start { el } => return self.read_top_level(el).map(Some),
                Tok::End => {
                    read_epilog(&mut self.lex)?;
                    self.finished = true;
                    return Ok(None);
                }
                Tok::Eof => return Err(self.lex.truncated()),
            }
        }
    }

    fn read_top_level(&mut self, el: El) -> Result<Scanned, DocumentError> {
        let start = self.lex.tok_pos;
        // Forget the bytes before this element: memory holds one top-level element at a time.
        self.lex.counter_mut().checkpoint(start);
        let location = self.lex.loc(start);
        let outcome: Result<(ProvomradeKey, Option<Result<Built, RecordError>>), RecordError> =
            match el {
                El::Amnesresultat | El::Kursresultat => {
                    if el == El::Amnesresultat && self.seen_kursresultat {
                        warn(
                            &mut self.stats,
                            &self.lex,
                            start,
                            "<ämnesresultat> after <kursresultat>: the XSD puts all ämnesresultat first"
                                .into(),
                        );
                    }
                    if el == El::Kursresultat {
                        self.seen_kursresultat = true;
                    }
                    match read_key(&mut self.lex, el) {
                        Err(e) => Err(e),
                        Ok(key) if self.build_ahead => {
                            let mut stats = ElementStats::default();
                            let built = Builder {
                                lex: &mut self.lex,
                                rules: self.header.version.rules,
                                stats: &mut stats,
                            }
                            .read_record(el, key.clone());
                            match built {
                                Ok(provomrade) => Ok((key, Some(Ok(Built { provomrade, stats })))),
                                Err(Fault::Rec(e)) => Ok((key, Some(Err(e)))),
                                Err(Fault::Doc(e)) => return Err(e),
                            }
                        }
                        Ok(key) => Ok((key, None)),
                    }
                }
                _ => Err(RecordError {
                    kind: K::UnexpectedElement,
                    location,
                    element: "provresultat".into(),
                    elev: None,
                    message: format!("unexpected element <{}>", self.lex.display_name(el)),
                }),
            };
        // Read to the element's end: the rest of it after a record error, or all of it when
        // it was not built. Its bytes are then all in the buffer, checked.
        self.lex.attrs.clear();
        while self.lex.depth() > 1 {
            if self.lex.next_tok()? == Tok::Eof {
                return Err(self.lex.truncated());
            }
        }
        let end = self.lex.pos();
        let raw = self.lex.counter().slice(start, end);
        let raw_sha256 = self.context.raw_sha256(raw);
        let scanned = match outcome {
            Ok((key, built)) => {
                self.stats.elements += 1;
                Scanned::Element(Element {
                    key,
                    location,
                    raw: raw.into(),
                    raw_sha256,
                    built,
                })
            }
            Err(error) => {
                self.stats.quarantined += 1;
                Scanned::Quarantined(Quarantined {
                    error,
                    record_location: location,
                    raw: String::from_utf8_lossy(raw).into_owned(),
                    raw_sha256,
                    key: None,
                })
            }
        };
        // What follows (whitespace, comments) counts against a budget of its own and is located
        // from here, not from the element before.
        self.lex.counter_mut().checkpoint(end);
        Ok(scanned)
    }
}

fn warn<R: Read>(stats: &mut ScanStats, lex: &Lexer<R>, pos: u64, message: String) {
    stats.warning_count += 1;
    if stats.warnings.len() < MAX_KEPT_WARNINGS {
        let location = lex.loc(pos);
        stats.warnings.push(Warning { location, message });
    }
}

fn read_root<R: Read>(
    lex: &mut Lexer<R>,
    stats: &mut ScanStats,
) -> Result<DocumentHeader, DocumentError> {
    loop {
        match lex.next_tok()? {
            Tok::Text { blank: true } => {}
            Tok::Text { blank: false } => {
                return Err(DocumentError::Malformed {
                    location: lex.loc(lex.tok_pos),
                    message: "text before the root element".into(),
                })
            }
            Tok::Eof => return Err(DocumentError::Empty),
            Tok::End => unreachable!("no element is open before the root"),
            Tok::Start { el } => {
                let location = lex.loc(lex.tok_pos);
                if el != El::Provresultat {
                    return Err(DocumentError::WrongRoot {
                        location,
                        found: lex.display_name(el),
                    });
                }
                let version = lex
                    .version()
                    .cloned()
                    .expect("a recognised root has a version");
                return Ok(root_attributes(lex, stats, version, location));
            }
        }
    }
}

fn root_attributes<R: Read>(
    lex: &mut Lexer<R>,
    stats: &mut ScanStats,
    version: SchemaVersion,
    location: Location,
) -> DocumentHeader {
    let mut header = DocumentHeader {
        version,
        from: None,
        tom: None,
    };
    for which in [At::From, At::Tom] {
        let parsed = match lex.take_attr(which) {
            None => {
                warn(
                    stats,
                    lex,
                    location.offset,
                    format!("<provresultat> has no {} attribute", which.name()),
                );
                None
            }
            Some((v, pos)) => match parse_date_time(&v) {
                Some(t) => Some(t),
                None => {
                    warn(
                        stats,
                        lex,
                        pos,
                        format!(
                            "<provresultat {}={:?}> is not an xs:dateTime",
                            which.name(),
                            super::chars::printable(&v)
                        ),
                    );
                    None
                }
            },
        };
        match which {
            At::From => header.from = parsed,
            _ => header.tom = parsed,
        }
    }
    if let (Some(from), Some(tom)) = (header.from, header.tom) {
        if from > tom {
            // The vendor's own v1.1 example does this; keep the data as sent.
            warn(
                stats,
                lex,
                location.offset,
                format!("<provresultat> has from ({from}) later than tom ({tom})"),
            );
        }
    }
    if header.version.unknown {
        warn(
            stats,
            lex,
            location.offset,
            format!(
                "unknown schema namespace {}: parsed with the rules of {}",
                super::chars::printable(&header.version.namespace),
                header.version.rules.name
            ),
        );
    }
    for (at, value, pos) in std::mem::take(&mut lex.attrs) {
        let name = if at == At::Other {
            value
        } else {
            at.name().to_owned()
        };
        warn(
            stats,
            lex,
            pos,
            format!(
                "attribute {} on <provresultat> is not in the schema; ignored",
                super::chars::printable(&name)
            ),
        );
    }
    debug_assert!(header.version.namespace.starts_with(NAMESPACE_PREFIX));
    header
}

fn read_epilog<R: Read>(lex: &mut Lexer<R>) -> Result<(), DocumentError> {
    loop {
        match lex.next_tok()? {
            Tok::Eof => return Ok(()),
            Tok::Text { blank: true } => {}
            Tok::Text { blank: false } => {
                return Err(DocumentError::TrailingContent {
                    location: lex.loc(lex.tok_pos),
                    what: "text".into(),
                })
            }
            Tok::Start { el } => {
                return Err(DocumentError::TrailingContent {
                    location: lex.loc(lex.tok_pos),
                    what: format!("element <{}>", lex.display_name(el)),
                })
            }
            Tok::End => unreachable!("no element is open after the root"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{build_element, DocumentError, Item, Parser};

    const NS: &str = "http://pingpong.se/schemas/nationellaprov/v12.0";

    fn doc(records: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<provresultat xmlns=\"{NS}\" from=\"2026-01-01T00:00:00\" tom=\"2026-01-02T00:00:00\">\n{records}</provresultat>\n"
        )
    }

    fn element(elev: &str, typ: &str) -> String {
        format!(
            "\t<kursresultat elev=\"{elev}\" kurs=\"MATMAT01a\" skolform=\"GY\">\n\t\t<provtillfälle uppdaterat=\"2026-01-01\">\n\t\t\t<sammanvägtprovbetyg>C</sammanvägtprovbetyg>\n\t\t\t<delprovsresultat><betyg>B</betyg><typ>{typ}</typ></delprovsresultat>\n\t\t</provtillfälle>\n\t</kursresultat>\n"
        )
    }

    /// Parses a whole document, every element built; the document error, if any.
    fn parse(bytes: &[u8]) -> Result<Vec<Item>, DocumentError> {
        let mut p = Parser::new(bytes, Limits::default())?;
        let mut items = Vec::new();
        while let Some(i) = p.next_item()? {
            items.push(i);
        }
        Ok(items)
    }

    fn doc_error(bytes: &[u8]) -> DocumentError {
        parse(bytes).expect_err("a document error")
    }

    #[test]
    fn forbidden_characters_anywhere_are_document_errors_at_their_place() {
        let cases: &[(&str, Vec<u8>, u64, u64)] = &[
            (
                "NUL in elev",
                doc(&element("a\0b", "A")).into_bytes(),
                3,
                23,
            ),
            (
                "escape in a name",
                doc("\t<kurs\u{1b}resultat/>\n").into_bytes(),
                3,
                7,
            ),
            ("NUL in text", doc(&element("a", "A\0")).into_bytes(), 6, 44),
            (
                "U+FFFF in a comment",
                doc("<!-- \u{FFFF} -->\n").into_bytes(),
                3,
                6,
            ),
            (
                "control in the prolog",
                b"\x07<?xml version=\"1.0\"?>".to_vec(),
                1,
                1,
            ),
        ];
        for (what, bytes, line, column) in cases {
            let e = doc_error(bytes);
            assert_eq!(e.code(), "character", "{what}: {e}");
            let l = e.location().expect("located");
            assert_eq!((l.line, l.column), (*line, *column), "{what}: {e}");
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_are_a_document_error_wherever_they_are() {
        let latin1 = doc(&element("a", "A")).replace("ä", "\u{0}").into_bytes();
        let latin1: Vec<u8> = latin1
            .iter()
            .map(|&b| if b == 0 { 0xE4 } else { b })
            .collect();
        let in_name = {
            let mut d = doc("\t<kursresultat/>\n").into_bytes();
            let at = d.windows(4).position(|w| w == b"kurs").expect("name") + 2;
            d[at] = 0xFF;
            d
        };
        let in_cdata = doc(&element("a", "<![CDATA[A\u{0}]]>"))
            .into_bytes()
            .iter()
            .map(|&b| if b == 0 { 0xC3 } else { b })
            .collect::<Vec<u8>>();
        for (what, bytes) in [
            ("undeclared Latin-1", latin1),
            ("in a name", in_name),
            ("in CDATA", in_cdata),
        ] {
            let e = doc_error(&bytes);
            assert_eq!(e.code(), "character", "{what}: {e}");
            assert!(e.to_string().contains("not UTF-8"), "{what}: {e}");
        }
    }

    #[test]
    fn character_references_may_only_name_allowed_characters() {
        for (what, records) in [
            ("&#0;", element("a", "A&#0;")),
            ("&#1;", element("a", "A&#1;")),
            ("&#xFFFE; in an attribute", element("a&#xFFFE;", "A")),
        ] {
            let e = doc_error(doc(&records).as_bytes());
            assert!(matches!(e.code(), "character" | "malformed"), "{what}: {e}");
        }
        // Allowed ones are fine.
        let items = parse(doc(&element("a&#229;", "A&#x41;")).as_bytes()).expect("valid");
        let Item::Record(r) = &items[0] else {
            panic!("a record")
        };
        assert_eq!(r.provomrade.key.elev, "aå");
    }

    #[test]
    fn the_prolog_and_comments_follow_xml() {
        let body = doc(&element("a", "A"));
        let cases = [
            (
                "a second declaration",
                body.replacen(
                    "\n<provresultat",
                    "\n<?xml version=\"1.0\"?><provresultat",
                    1,
                ),
            ),
            (
                "a comment before the declaration",
                format!("<!-- x -->{body}"),
            ),
            (
                "-- inside a comment",
                body.replacen("\n<provresultat", "\n<!-- a -- b --><provresultat", 1),
            ),
            ("XML 1.1", body.replacen("1.0", "1.1", 1)),
            (
                "the reserved PI target",
                body.replacen("\n<provresultat", "\n<?XML x?><provresultat", 1),
            ),
            ("]]> in text", doc(&element("a", "A]]>"))),
            ("a name that is not a name", doc("\t<1kurs/>\n")),
        ];
        for (what, text) in cases {
            let e = doc_error(text.as_bytes());
            assert_eq!(e.code(), "malformed", "{what}: {e}");
        }
        // A comment or PI after the declaration is fine.
        let ok = body.replacen(
            "\n<provresultat",
            "\n<!-- fine --><?pi fine?><provresultat",
            1,
        );
        assert_eq!(parse(ok.as_bytes()).expect("valid").len(), 1);
    }

    #[test]
    fn attributes_are_capped_before_they_cost_anything() {
        let many: String = (0..100_000).map(|i| format!(" a{i}=\"x\"")).collect();
        let e = doc_error(doc(&format!("\t<kursresultat{many}/>\n")).as_bytes());
        assert_eq!(e.code(), "too_many_attributes", "{e}");
        let decls: String = (0..100_000)
            .map(|i| format!(" xmlns:p{i}=\"u{i}\""))
            .collect();
        let text = doc("").replacen("<provresultat ", &format!("<provresultat{decls} "), 1);
        let Err(e) = Scanner::new(text.as_bytes(), Limits::default()) else {
            panic!("100 000 namespace declarations were accepted")
        };
        assert_eq!(e.code(), "too_many_attributes", "{e}");
        // A duplicate is refused.
        let e = doc_error(doc("\t<kursresultat elev=\"a\" elev=\"b\"/>\n").as_bytes());
        assert_eq!(e.code(), "malformed", "{e}");
    }

    #[test]
    fn scanning_without_building_then_building_gives_what_building_ahead_gives() {
        let mut records = element("a", "A");
        records.push_str(&element("b", "UNKNOWN-TYP"));
        records.push_str("\t<kursresultat elev=\"c\" kurs=\"K\" skolform=\"GY\"><provtillfälle uppdaterat=\"2026-13-01\"/></kursresultat>\n");
        records.push_str("\t<främmande/>\n");
        let text = doc(&records);
        let scan = |ahead: bool| {
            let mut s = Scanner::new(text.as_bytes(), Limits::default()).expect("root");
            s.set_build_ahead(ahead);
            let ctx = s.context().clone();
            let mut out = Vec::new();
            while let Some(x) = s.next_element().expect("well-formed") {
                out.push(match x {
                    Scanned::Element(e) => {
                        let built = match e.built {
                            Some(b) => b,
                            None => build_element(&e.raw, e.location, &ctx).expect("bytes read"),
                        };
                        format!("{:?} {:?} {}", e.location, built, hex::encode(e.raw_sha256))
                    }
                    Scanned::Quarantined(q) => format!("{:?}", q.error),
                });
            }
            out
        };
        let (ahead, later) = (scan(true), scan(false));
        assert_eq!(ahead.len(), 4);
        assert_eq!(ahead, later);
        assert!(
            ahead[2].contains("BadDate") && ahead[2].contains("line: 15"),
            "{}",
            ahead[2]
        );
    }

    #[test]
    fn the_raw_hash_is_equal_bytes_in_equal_context_only() {
        let hashes = |text: &str| -> Vec<RawHash> {
            let mut s = Scanner::new(text.as_bytes(), Limits::default()).expect("root");
            s.set_build_ahead(false);
            let mut out = Vec::new();
            while let Some(Scanned::Element(e)) = s.next_element().expect("scan") {
                out.push(e.raw_sha256);
            }
            out
        };
        let one = element("a", "A");
        let base = hashes(&doc(&format!("{one}{one}")));
        // The same bytes twice: one hash.
        assert_eq!(base[0], base[1]);
        // Another document with the same namespace and bindings, other from/tom: the same.
        let other = doc(&one).replace("2026-01-02T00:00:00", "2026-03-02T00:00:00");
        assert_eq!(hashes(&other)[0], base[0]);
        // Another version's namespace, or one more binding in scope: different.
        let v11 = doc(&one).replace("v12.0", "v1.1");
        assert_ne!(hashes(&v11)[0], base[0]);
        let bound = doc(&one).replacen("<provresultat ", "<provresultat xmlns:x=\"urn:x\" ", 1);
        assert_ne!(hashes(&bound)[0], base[0]);
        // One changed byte: different.
        assert_ne!(hashes(&doc(&element("a", "B")))[0], base[0]);
    }

    #[test]
    fn a_limit_between_elements_points_where_the_gap_starts() {
        // Longer than a read chunk: the cap is checked as bytes are read.
        let gap = " ".repeat(200_000);
        let text = doc(&format!("{}{gap}{}", element("a", "A"), element("b", "A")));
        let limits = Limits {
            max_record_bytes: 2048,
            max_document_bytes: None,
        };
        let mut p = Parser::new(text.as_bytes(), limits).expect("root");
        assert!(matches!(p.next_item(), Ok(Some(Item::Record(_)))));
        let e = p.next_item().expect_err("the gap is too long");
        assert_eq!(e.code(), "limit");
        // The first element ends on line 8, column 17; the gap starts right after it.
        let l = e.location().expect("located");
        assert_eq!((l.line, l.column), (8, 17), "{e}");
    }
}
