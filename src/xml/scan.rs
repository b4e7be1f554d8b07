//! The scanning stage: a document's bytes in, one [`Scanned`] per top-level element out, each
//! with its key, its raw bytes and their hash.
//!
//! The scanner reads the prolog and the root's start tag with the full [`Lexer`]. Below the root
//! it only has to find where each element ends: a small byte-level state machine (tags and
//! their quoted values, comments, CDATA, processing instructions) delimits it, the key
//! (`elev` and the provområde) is read from its start tag, and its bytes are hashed. The rest of
//! XML's rules are the lexer's, applied when an element is built ([`super::build`]): by the
//! scanner as it goes while most elements turn out new or changed (a first sync, on the
//! scanner's own thread), else by the writer for the elements whose raw hash differs from the
//! stored one. An element that is not built has bytes equal to ones that were built, in the same
//! context: they passed every rule then. Every byte of the document, built or not, passes the
//! character check ([`super::counter`]), and what stands between elements (whitespace, comments,
//! processing instructions, the root's end tag, the epilog) is checked here.
//!
//! The raw hash of an element is SHA-256 over its bytes exactly as received, seeded with what
//! those bytes mean in this document: the namespace, the prefix bindings in scope, and the
//! version of the building rules ([`BUILD_RULES`]). Equal hashes therefore mean equal content.
//!
//! Memory holds one top-level element (capped by `max_record_bytes`); the caller takes each
//! element before asking for the next.

use std::io::{BufRead, Read};
use std::sync::Arc;

use chrono::NaiveDateTime;
use sha2::{Digest, Sha256};

use super::build::{build_element, key_from_attrs, Built, Warning};
use super::chars;
use super::counter::{BadCharAt, CountingReader, LimitExceeded, Location};
use super::error::{DocumentError, RecordError, RecordErrorKind as K};
use super::lexer::{At, Attr, Binding, El, Lexer, Tok, MAX_ATTRIBUTES, MAX_DEPTH};
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

// ---- What a scan yields -------------------------------------------------------------------------

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

/// Where the scanner is in the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// Inside the root, between its children.
    Content,
    /// After the root's end: only whitespace, comments and processing instructions may follow.
    Epilog,
    Done,
}

/// Streams the top-level elements of one nationellaprov document.
pub struct Scanner<R: Read> {
    src: CountingReader<R>,
    header: DocumentHeader,
    context: Arc<DocContext>,
    stats: ScanStats,
    build_ahead: bool,
    /// The root's qualified name as written, which its end tag must repeat.
    root_name: Vec<u8>,
    part: Part,
    failed: bool,
    seen_kursresultat: bool,
}

impl<R: Read> Scanner<R> {
    /// Reads the prolog and the root element's start tag.
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
        let root_name = lex.root_name().to_vec();
        // `<provresultat …/>`: the root is already closed.
        let part = if lex.pending_end() {
            Part::Epilog
        } else {
            Part::Content
        };
        Ok(Scanner {
            src: lex.into_source(),
            header,
            context,
            stats,
            build_ahead: true,
            root_name,
            part,
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
        self.src.consumed()
    }

    /// Whether elements are built as they are scanned (the default), or only delimited and
    /// hashed.
    pub fn set_build_ahead(&mut self, on: bool) {
        self.build_ahead = on;
    }

    /// The next top-level element; `None` after the document ended well.
    ///
    /// # Errors
    /// A [`DocumentError`] ends the document; calling again after one returns `None`.
    pub fn next_element(&mut self) -> Result<Option<Scanned>, DocumentError> {
        if self.part == Part::Done || self.failed {
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
            let here = self.src.consumed();
            let ahead = self.peek(9)?;
            let Some(&first) = ahead.first() else {
                if self.part == Part::Epilog {
                    self.part = Part::Done;
                    return Ok(None);
                }
                return Err(self.truncated(here, "provresultat"));
            };
            match first {
                b' ' | b'\t' | b'\r' | b'\n' => {
                    let chunk = self.fill()?;
                    let n = chunk.iter().take_while(|b| is_space(b)).count();
                    self.src.consume(n);
                }
                b'<' if ahead.starts_with(b"<!--") => self.comment(here)?,
                b'<' if ahead.starts_with(b"<![CDATA[") => {
                    let end = self.until(here, b"]]>", "provresultat")?;
                    let blank = self.src.slice(here + 9, end - 3).iter().all(is_space);
                    self.text_at_top(here, blank)?;
                }
                b'<' if ahead.starts_with(b"<!") => {
                    return Err(if ahead.starts_with(b"<!DOCTYPE") {
                        DocumentError::Doctype {
                            location: self.src.locate(here),
                        }
                    } else {
                        self.malformed(here, "\"<!\" that starts neither a comment nor CDATA")
                    })
                }
                b'<' if ahead.starts_with(b"<?") => self.pi(here)?,
                b'<' if ahead.starts_with(b"</") => {
                    if self.part == Part::Epilog {
                        return Err(DocumentError::TrailingContent {
                            location: self.src.locate(here),
                            what: "an end tag".into(),
                        });
                    }
                    self.root_end(here)?;
                    self.part = Part::Epilog;
                }
                b'<' => {
                    if self.part == Part::Epilog {
                        let (name, _) = self.name_at(here + 1)?;
                        return Err(DocumentError::TrailingContent {
                            location: self.src.locate(here),
                            what: format!("element <{}>", chars::printable(&name)),
                        });
                    }
                    return self.element(here).map(Some);
                }
                _ => {
                    // Text up to the next markup.
                    let end = self.until_byte(here, b'<', "provresultat")?;
                    let text = self.src.slice(here, end);
                    let blank = text.iter().all(is_space);
                    check_references(text)
                        .map_err(|(at, m)| self.malformed(here + at as u64, &m))?;
                    self.text_at_top(here, blank)?;
                }
            }
        }
    }

    // ---- Between elements: text, comments, processing instructions, the root end ----------------

    /// Text (or CDATA) directly inside the root, or after it.
    fn text_at_top(&mut self, at: u64, blank: bool) -> Result<(), DocumentError> {
        if blank {
            return Ok(());
        }
        if self.part == Part::Epilog {
            return Err(DocumentError::TrailingContent {
                location: self.src.locate(at),
                what: "text".into(),
            });
        }
        warn(
            &mut self.stats,
            self.src.locate(at),
            "text directly inside <provresultat> ignored".into(),
        );
        Ok(())
    }

    /// A comment, checked: XML forbids `--` inside one.
    fn comment(&mut self, at: u64) -> Result<(), DocumentError> {
        let end = self.until(at + 4, b"-->", "provresultat")?;
        let body = self.src.slice(at + 4, end - 3);
        if let Some(i) = memchr::memmem::find(body, b"--") {
            return Err(self.malformed(at + 4 + i as u64, "\"--\" inside a comment"));
        }
        if body.last() == Some(&b'-') {
            return Err(self.malformed(end - 4, "a comment may not end in \"--->\""));
        }
        Ok(())
    }

    /// A processing instruction: any target but the reserved `xml`.
    fn pi(&mut self, at: u64) -> Result<(), DocumentError> {
        let end = self.until(at + 2, b"?>", "provresultat")?;
        let body = self.src.slice(at + 2, end - 2);
        let target_len = body.iter().position(is_space).unwrap_or(body.len());
        let target = &body[..target_len];
        if target.eq_ignore_ascii_case(b"xml") {
            return Err(self.malformed(
                at,
                "an XML declaration (or the reserved processing-instruction target xml) may only stand at the very start of the document",
            ));
        }
        if !chars::is_name(target) {
            return Err(self.malformed(at, "a processing instruction without a target name"));
        }
        Ok(())
    }

    /// The root's end tag, which must name the root as its start tag did.
    fn root_end(&mut self, at: u64) -> Result<(), DocumentError> {
        let end = self.until_byte(at, b'>', "provresultat")? + 1;
        self.src.consume(1);
        let tag = self.src.slice(at + 2, end - 1);
        let name_len = tag.iter().position(is_space).unwrap_or(tag.len());
        let (name, rest) = tag.split_at(name_len);
        if name != self.root_name.as_slice() || !rest.iter().all(is_space) {
            return Err(self.malformed(
                at,
                &format!(
                    "the end tag </{}> does not close <{}>",
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(&self.root_name)
                ),
            ));
        }
        Ok(())
    }

    // ---- One element, delimited and keyed -------------------------------------------------------

    /// One top-level element: delimited, hashed, named by its key, built if asked to.
    fn element(&mut self, start: u64) -> Result<Scanned, DocumentError> {
        // Forget what came before: memory holds one top-level element at a time.
        self.src.checkpoint(start);
        let location = self.src.locate(start);
        let (tag_end, end) = self.delimit(start)?;
        let raw = self.src.slice(start, end);
        let raw_sha256 = self.context.raw_sha256(raw);
        let tag = &raw[..(tag_end - start) as usize];
        let (el, display, mut attrs) =
            start_tag(tag, start, &self.context, |o| self.src.locate(o))?;
        let outcome: Result<ProvomradeKey, RecordError> = match el {
            El::Amnesresultat | El::Kursresultat => {
                if el == El::Amnesresultat && self.seen_kursresultat {
                    warn(
                        &mut self.stats,
                        location,
                        "<ämnesresultat> after <kursresultat>: the XSD puts all ämnesresultat first"
                            .into(),
                    );
                }
                if el == El::Kursresultat {
                    self.seen_kursresultat = true;
                }
                key_from_attrs(el, &mut attrs, start, |_| location)
            }
            _ => Err(RecordError {
                kind: K::UnexpectedElement,
                location,
                element: "provresultat".into(),
                elev: None,
                message: format!("unexpected element <{display}>"),
            }),
        };
        let scanned = match outcome {
            Ok(key) => {
                let built = if self.build_ahead {
                    Some(build_element(raw, location, &self.context)?)
                } else {
                    None
                };
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
        self.src.checkpoint(end);
        Ok(scanned)
    }

    /// Finds where the element starting at `start` (at its `<`) ends, consuming it: tags and
    /// their quoted values, end tags, comments, CDATA and processing instructions, counted to the
    /// element's own end. Returns the offsets just past its start tag and just past its end.
    /// Only the structure is followed here; the rest is the lexer's when the element is built.
    fn delimit(&mut self, start: u64) -> Result<(u64, u64), DocumentError> {
        #[derive(Clone, Copy)]
        enum St {
            Text,
            Lt,
            Bang,
            BangDash,
            Comment(u8),
            Cdata(u8),
            CdataOpen(u8),
            Pi(bool),
            EndTag,
            Tag { quote: u8, slash: bool },
        }
        const CDATA: &[u8] = b"[CDATA[";
        let mut st = St::Lt;
        // Elements open inside this one (0: only its own start tag is being read).
        let mut depth = 0usize;
        let mut tag_end = None;
        // The `<` was seen by the caller.
        self.src.consume(1);
        loop {
            let at = self.src.consumed();
            let chunk = self.fill()?;
            if chunk.is_empty() {
                let open = self.element_name(start);
                return Err(self.truncated(at, &open));
            }
            let len = chunk.len();
            let mut i = 0;
            let mut done = None;
            while i < len {
                let b = chunk[i];
                st = match st {
                    St::Text => match memchr::memchr(b'<', &chunk[i..]) {
                        Some(j) => {
                            i += j;
                            St::Lt
                        }
                        None => {
                            i = len;
                            continue;
                        }
                    },
                    St::Lt => match b {
                        b'!' => St::Bang,
                        b'?' => St::Pi(false),
                        b'/' => St::EndTag,
                        _ => {
                            // The name's first byte belongs to the tag.
                            st = St::Tag {
                                quote: 0,
                                slash: false,
                            };
                            continue;
                        }
                    },
                    St::Bang => match b {
                        b'-' => St::BangDash,
                        b'[' => St::CdataOpen(1),
                        _ => {
                            let pos = at + i as u64;
                            return Err(if b == b'D' {
                                DocumentError::Doctype {
                                    location: self.src.locate(pos),
                                }
                            } else {
                                self.malformed(
                                    pos,
                                    "\"<!\" that starts neither a comment nor CDATA",
                                )
                            });
                        }
                    },
                    St::BangDash if b == b'-' => St::Comment(0),
                    St::BangDash => {
                        return Err(self.malformed(at + i as u64, "\"<!-\" that starts no comment"))
                    }
                    St::CdataOpen(n) if b == CDATA[n as usize] => {
                        if n as usize + 1 == CDATA.len() {
                            St::Cdata(0)
                        } else {
                            St::CdataOpen(n + 1)
                        }
                    }
                    St::CdataOpen(_) => {
                        return Err(self.malformed(at + i as u64, "\"<![\" that starts no CDATA"))
                    }
                    St::Comment(0) => match memchr::memchr(b'-', &chunk[i..]) {
                        Some(j) => {
                            i += j;
                            St::Comment(1)
                        }
                        None => {
                            i = len;
                            continue;
                        }
                    },
                    St::Comment(n) => match b {
                        b'-' => St::Comment(n.saturating_add(1).min(2)),
                        b'>' if n >= 2 => St::Text,
                        _ => St::Comment(0),
                    },
                    St::Cdata(0) => match memchr::memchr(b']', &chunk[i..]) {
                        Some(j) => {
                            i += j;
                            St::Cdata(1)
                        }
                        None => {
                            i = len;
                            continue;
                        }
                    },
                    St::Cdata(n) => match b {
                        b']' => St::Cdata(n.saturating_add(1).min(2)),
                        b'>' if n >= 2 => St::Text,
                        _ => St::Cdata(0),
                    },
                    St::Pi(q) => match b {
                        b'>' if q => St::Text,
                        _ => St::Pi(b == b'?'),
                    },
                    St::EndTag => match memchr::memchr(b'>', &chunk[i..]) {
                        Some(j) => {
                            i += j;
                            if depth == 0 {
                                done = Some(at + i as u64 + 1);
                                break;
                            }
                            depth -= 1;
                            if depth == 0 {
                                done = Some(at + i as u64 + 1);
                                break;
                            }
                            St::Text
                        }
                        None => {
                            i = len;
                            continue;
                        }
                    },
                    St::Tag { quote, .. } if quote != 0 => match memchr::memchr(quote, &chunk[i..])
                    {
                        Some(j) => {
                            i += j;
                            St::Tag {
                                quote: 0,
                                slash: false,
                            }
                        }
                        None => {
                            i = len;
                            continue;
                        }
                    },
                    St::Tag { slash, .. } => {
                        match memchr::memchr3(b'>', b'"', b'\'', &chunk[i..]) {
                            Some(j) => {
                                // A `/` just before `>` makes the tag empty.
                                let slash = if j > 0 {
                                    chunk[i + j - 1] == b'/'
                                } else {
                                    slash
                                };
                                i += j;
                                match chunk[i] {
                                    b'>' => {
                                        let pos = at + i as u64 + 1;
                                        if tag_end.is_none() {
                                            tag_end = Some(pos);
                                        }
                                        if slash {
                                            if depth == 0 {
                                                done = Some(pos);
                                                break;
                                            }
                                        } else {
                                            depth += 1;
                                            // The root and this element are open around it.
                                            if depth + 1 > MAX_DEPTH {
                                                return Err(DocumentError::TooDeep {
                                                    location: self.src.locate(pos - 1),
                                                    max: MAX_DEPTH,
                                                });
                                            }
                                        }
                                        St::Text
                                    }
                                    q => St::Tag {
                                        quote: q,
                                        slash: false,
                                    },
                                }
                            }
                            None => {
                                let slash = chunk[len - 1] == b'/' || (len == i && slash);
                                i = len;
                                st = St::Tag { quote: 0, slash };
                                continue;
                            }
                        }
                    }
                };
                i += 1;
            }
            match done {
                Some(end) => {
                    self.src.consume((end - at) as usize);
                    let tag_end = tag_end.unwrap_or(end);
                    return Ok((tag_end, end));
                }
                None => self.src.consume(len),
            }
        }
    }

    // ---- Reading ahead in the buffer ------------------------------------------------------------

    /// Consumes up to and including the next `pattern` at or after `from`, returning the
    /// offset just past it.
    fn until(&mut self, from: u64, pattern: &[u8], open: &str) -> Result<u64, DocumentError> {
        let mut search = from;
        loop {
            let at = self.src.consumed();
            if self.fill()?.is_empty() {
                return Err(self.truncated(at, open));
            }
            // What is held runs on without a seam from what was consumed to what was read
            // ahead, so a pattern split between two reads is found too.
            let held = self.src.held_from(search);
            if let Some(i) = memchr::memmem::find(held, pattern) {
                let end = search + (i + pattern.len()) as u64;
                let n = (end - self.src.consumed()) as usize;
                self.src.consume(n);
                return Ok(end);
            }
            let ahead_end = search + held.len() as u64;
            search = ahead_end
                .saturating_sub(pattern.len() as u64 - 1)
                .max(search);
            let n = (ahead_end - self.src.consumed()) as usize;
            self.src.consume(n);
        }
    }

    /// Consumes up to (not including) the next `byte`, returning its offset.
    fn until_byte(&mut self, from: u64, byte: u8, open: &str) -> Result<u64, DocumentError> {
        debug_assert_eq!(from, self.src.consumed());
        loop {
            let at = self.src.consumed();
            let chunk = self.fill()?;
            if chunk.is_empty() {
                return Err(self.truncated(at, open));
            }
            match memchr::memchr(byte, chunk) {
                Some(i) => {
                    self.src.consume(i);
                    return Ok(at + i as u64);
                }
                None => {
                    let n = chunk.len();
                    self.src.consume(n);
                }
            }
        }
    }

    /// The element name at `at` (just after a `<`), for messages.
    fn name_at(&mut self, at: u64) -> Result<(String, usize), DocumentError> {
        let skip = (at - self.src.consumed()) as usize;
        let ahead = self.peek(skip + 64)?;
        let from = skip.min(ahead.len());
        let name: Vec<u8> = ahead[from..]
            .iter()
            .copied()
            .take_while(|b| !is_space(b) && !matches!(b, b'>' | b'/'))
            .collect();
        Ok((String::from_utf8_lossy(&name).into_owned(), name.len()))
    }

    /// The name of the top-level element that starts at `start`, from the bytes held.
    fn element_name(&self, start: u64) -> String {
        let held = self.src.slice(start + 1, self.src.consumed());
        let name: Vec<u8> = held
            .iter()
            .copied()
            .take_while(|b| !is_space(b) && !matches!(b, b'>' | b'/'))
            .collect();
        chars::printable(&String::from_utf8_lossy(&name)).into_owned()
    }

    fn peek(&mut self, n: usize) -> Result<&[u8], DocumentError> {
        let at = self.src.consumed();
        match self.src.peek(n) {
            Ok(_) => Ok(self.src.peek(n).unwrap_or_default()),
            Err(e) => Err(self.io_error(e, at)),
        }
    }

    fn fill(&mut self) -> Result<&[u8], DocumentError> {
        let at = self.src.consumed();
        match std::io::BufRead::fill_buf(&mut self.src) {
            Ok(_) => Ok(std::io::BufRead::fill_buf(&mut self.src).unwrap_or_default()),
            Err(e) => Err(self.io_error(e, at)),
        }
    }

    // ---- Errors with their location -------------------------------------------------------------

    /// An error reading the bytes, as the document error it means.
    fn io_error(&self, e: std::io::Error, at: u64) -> DocumentError {
        if let Some(inner) = e.get_ref() {
            if let Some(limit) = inner.downcast_ref::<LimitExceeded>() {
                let location = match limit {
                    // An element (or the gap between two) too long is named by where it starts.
                    LimitExceeded::Record(_) => self.src.mark(),
                    LimitExceeded::Document(_) => self.src.locate(at),
                };
                return DocumentError::Limit {
                    location,
                    limit: *limit,
                };
            }
            if let Some(bad) = inner.downcast_ref::<BadCharAt>() {
                return DocumentError::Character {
                    location: self.src.locate(bad.offset),
                    bad: bad.bad,
                };
            }
        }
        DocumentError::Io {
            location: self.src.locate(at),
            source: e,
        }
    }

    fn truncated(&self, at: u64, open: &str) -> DocumentError {
        DocumentError::Truncated {
            location: self.src.locate(at),
            open: open.to_owned(),
        }
    }

    fn malformed(&self, at: u64, message: &str) -> DocumentError {
        DocumentError::Malformed {
            location: self.src.locate(at),
            message: chars::printable(message).into_owned(),
        }
    }
}

// ---- Checks on raw bytes: references, start tags, the root --------------------------------------

fn is_space(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Checks the references in text between elements: only the five predefined entities and
/// character references to allowed characters. `Err`: the byte index and what is wrong.
fn check_references(text: &[u8]) -> Result<(), (usize, String)> {
    let mut at = 0;
    while let Some(i) = memchr::memchr(b'&', &text[at..]) {
        let from = at + i;
        let Some(len) = memchr::memchr(b';', &text[from..]) else {
            return Err((from, "\"&\" that starts no reference".into()));
        };
        let name = &text[from + 1..from + len];
        let ok = match name {
            b"lt" | b"gt" | b"amp" | b"apos" | b"quot" => true,
            [b'#', b'x', hex @ ..] => std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .and_then(char::from_u32)
                .is_some_and(chars::is_char),
            [b'#', dec @ ..] => std::str::from_utf8(dec)
                .ok()
                .and_then(|d| d.parse::<u32>().ok())
                .and_then(char::from_u32)
                .is_some_and(chars::is_char),
            _ => false,
        };
        if !ok {
            return Err((
                from,
                format!(
                    "&{}; is not a reference XML allows here",
                    String::from_utf8_lossy(name)
                ),
            ));
        }
        at = from + len + 1;
    }
    Ok(())
}

/// A top-level element's start tag (`<` to `>`): which element it is, its name as messages
/// show it, and its schema attributes (each placed at the element's start, as the lexer places
/// them).
fn start_tag(
    tag: &[u8],
    start: u64,
    ctx: &DocContext,
    locate: impl Fn(u64) -> Location,
) -> Result<(El, String, Vec<Attr>), DocumentError> {
    let malformed = |message: String| DocumentError::Malformed {
        location: locate(start),
        message: chars::printable(&message).into_owned(),
    };
    let inner = &tag[1..tag.len() - 1];
    let inner = inner.strip_suffix(b"/").unwrap_or(inner);
    let name_len = inner.iter().position(is_space).unwrap_or(inner.len());
    let qname = &inner[..name_len];
    // Checked as UTF-8 on arrival; borrowed, not copied.
    let content = std::str::from_utf8(inner).map_err(|e| malformed(e.to_string()))?;
    let start_event = quick_xml::events::BytesStart::from_content(content, name_len);
    let mut attrs: Vec<Attr> = Vec::new();
    // Declarations on the element itself come before the document's.
    let mut own: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (n, attr) in start_event.attributes().enumerate() {
        if n == MAX_ATTRIBUTES {
            return Err(DocumentError::TooManyAttributes {
                location: locate(start),
                max: MAX_ATTRIBUTES,
            });
        }
        let attr = attr.map_err(|e| malformed(e.to_string()))?;
        let key = attr.key.as_ref();
        let at = At::from_local(key);
        if at == At::Other && !chars::is_name(key) {
            return Err(malformed(format!(
                "{:?} is not an XML attribute name",
                String::from_utf8_lossy(key)
            )));
        }
        let value = attr.unescape_value().map_err(|e| match e {
            quick_xml::Error::Escape(quick_xml::escape::EscapeError::UnrecognizedEntity(
                _,
                name,
            )) => DocumentError::Entity {
                location: locate(start),
                name: chars::printable(&name).into_owned(),
            },
            other => malformed(format!(
                "attribute {}: {other}",
                String::from_utf8_lossy(key)
            )),
        })?;
        if let Some((_, c)) = chars::first_forbidden_in_str(&value) {
            return Err(DocumentError::Character {
                location: locate(start),
                bad: chars::BadChar::Forbidden(c),
            });
        }
        if let Some(prefix) = key.strip_prefix(b"xmlns") {
            match prefix {
                [] => own.push((Vec::new(), value.as_bytes().to_vec())),
                [b':', p @ ..] => own.push((p.to_vec(), value.as_bytes().to_vec())),
                _ => {}
            }
            continue;
        }
        if key.contains(&b':') {
            continue;
        }
        let kept = if at == At::Other {
            String::from_utf8_lossy(key).into_owned()
        } else {
            value.into_owned()
        };
        attrs.push((at, kept, start));
    }
    let (prefix, local) = match memchr::memchr(b':', qname) {
        Some(i) => (&qname[..i], &qname[i + 1..]),
        None => (&[][..], qname),
    };
    let uri: Option<&[u8]> = own
        .iter()
        .rev()
        .find(|(p, _)| p.as_slice() == prefix)
        .map(|(_, u)| u.as_slice())
        .or_else(|| {
            ctx.bindings
                .iter()
                .rev()
                .find(|b| b.prefix.as_slice() == prefix)
                .map(|b| b.uri.as_slice())
        })
        .filter(|u| !u.is_empty());
    if uri.is_none() && !prefix.is_empty() {
        return Err(malformed(format!(
            "the prefix {:?} is not bound to a namespace",
            String::from_utf8_lossy(prefix)
        )));
    }
    let el = match uri {
        Some(u) if u == ctx.namespace.as_bytes() => match El::from_local(local) {
            El::Provresultat => El::Other,
            el => el,
        },
        _ => El::Other,
    };
    if el == El::Other && !chars::is_name(qname) {
        return Err(malformed(format!(
            "{:?} is not an XML element name",
            String::from_utf8_lossy(qname)
        )));
    }
    let q = String::from_utf8_lossy(qname);
    let display = match (el, uri) {
        (El::Other, Some(u)) => format!("{q} xmlns=\"{}\"", String::from_utf8_lossy(u)),
        (El::Other, None) => format!("{q} (no namespace)"),
        _ => el.name().to_owned(),
    };
    Ok((el, chars::printable(&display).into_owned(), attrs))
}

fn warn(stats: &mut ScanStats, location: Location, message: String) {
    stats.warning_count += 1;
    if stats.warnings.len() < MAX_KEPT_WARNINGS {
        stats.warnings.push(Warning { location, message });
    }
}

fn read_root<R: Read>(
    lex: &mut Lexer<CountingReader<R>>,
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
    lex: &mut Lexer<CountingReader<R>>,
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
                    location,
                    format!("<provresultat> has no {} attribute", which.name()),
                );
                None
            }
            Some((v, pos)) => match parse_date_time(&v) {
                Some(t) => Some(t),
                None => {
                    warn(
                        stats,
                        lex.loc(pos),
                        format!(
                            "<provresultat {}={:?}> is not an xs:dateTime",
                            which.name(),
                            chars::printable(&v)
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
                location,
                format!("<provresultat> has from ({from}) later than tom ({tom})"),
            );
        }
    }
    if header.version.unknown {
        warn(
            stats,
            location,
            format!(
                "unknown schema namespace {}: parsed with the rules of {}",
                chars::printable(&header.version.namespace),
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
            lex.loc(pos),
            format!(
                "attribute {} on <provresultat> is not in the schema; ignored",
                chars::printable(&name)
            ),
        );
    }
    debug_assert!(header.version.namespace.starts_with(NAMESPACE_PREFIX));
    header
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
