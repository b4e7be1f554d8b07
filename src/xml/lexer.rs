//! The token layer both stages read from: quick-xml events turned into the few tokens the schema
//! needs, with namespaces resolved and XML's well-formedness rules that quick-xml leaves to its
//! caller enforced here.
//!
//! quick-xml checks tag structure, end-tag names and (configured here) `--` in comments. This
//! layer adds: the XML declaration only at the very start; no DOCTYPE; no reserved `xml` PI
//! target; no `]]>` in text; character references only to characters XML allows; names that
//! are XML names; at most [`MAX_ATTRIBUTES`] attributes per element (duplicates refused), and a
//! nesting depth of at most [`MAX_DEPTH`]. Bytes themselves (UTF-8, no forbidden characters)
//! are checked below, by [`CountingReader`], before quick-xml sees them. Everything here costs
//! time linear in the input: the caps bound the per-element work (quick-xml's duplicate check is
//! quadratic in the attributes of one element, so their number is capped before it matters).
//!
//! Namespaces are resolved here (cheaper than quick-xml's `NsReader`, which pushes a scope for
//! every element), so any prefix or a default namespace works; all schema elements must be in
//! the root's namespace. Attributes are unqualified as in the XSD; prefixed ones (`xsi:…`) are
//! not data.

use quick_xml::events::Event;
use quick_xml::Reader;

use super::chars;
use super::counter::{BadCharAt, LimitExceeded, Location, Source};
use super::error::DocumentError;
use super::version::SchemaVersion;

/// Nesting in the schema is five levels; anything much deeper is an attack or garbage.
pub const MAX_DEPTH: usize = 32;
/// The schema's elements carry at most six attributes; a document adds a few namespace
/// declarations and `xsi:` attributes to its root. More than this is garbage or an attack.
pub const MAX_ATTRIBUTES: usize = 64;

/// Local names of the schema's elements (in the document's namespace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum El {
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
    pub(crate) fn from_local(local: &[u8]) -> El {
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

    pub(crate) fn name(self) -> &'static str {
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
pub(crate) enum At {
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
    pub(crate) fn from_local(local: &[u8]) -> At {
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

    pub(crate) fn name(self) -> &'static str {
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// Empty for the default namespace.
    pub prefix: Vec<u8>,
    pub uri: Vec<u8>,
    /// Depth of the declaring element; the declaration ends with it (0: given from outside, for
    /// an element read again on its own, and never ends).
    depth: usize,
    /// Whether `uri` is the document's namespace, decided once here rather than per element.
    is_document: bool,
}

impl Binding {
    pub fn new(prefix: Vec<u8>, uri: Vec<u8>) -> Binding {
        Binding {
            prefix,
            uri,
            depth: 0,
            is_document: false,
        }
    }
}

/// A simplified event. Attributes of a start tag go to `Lexer::attrs`, text to `Lexer::text`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Tok {
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

/// One schema attribute of the last start tag: which, its value, where its element starts.
pub(crate) type Attr = (At, String, u64);

/// Positions are absolute offsets in the document, from the source (quick-xml's own count
/// leaves out a byte-order mark, and starts at 0 for an element read again).
pub(crate) struct Lexer<S: Source> {
    reader: Reader<S>,
    buf: Vec<u8>,
    /// Attributes of the last start tag (unqualified ones only); bounded by [`MAX_ATTRIBUTES`].
    pub(crate) attrs: Vec<Attr>,
    /// Text since the last start tag.
    pub(crate) text: String,
    /// Offset of the last token's first byte.
    pub(crate) tok_pos: u64,
    /// The open elements (for depth and truncation messages); bounded by [`MAX_DEPTH`].
    open: Vec<El>,
    /// Display names of the open `El::Other` elements, innermost last.
    open_other: Vec<String>,
    /// Display name of the last `El::Other` start tag.
    other_name: String,
    /// In-scope prefixed namespace declarations, innermost last; bounded by depth × attributes,
    /// searched from the end so a redeclaration wins.
    ns_bindings: Vec<Binding>,
    /// Default-namespace declarations, the same way (prefix left empty).
    default_ns: Vec<Binding>,
    /// The last start tag was an empty element (`<x/>`): its end comes next.
    pending_end: bool,
    /// Whether text is being collected (inside a simple element); elsewhere only its
    /// blankness matters and it is not copied.
    pub(crate) collect_text: bool,
    /// The document's namespace, once the root is read.
    namespace: Vec<u8>,
    /// The schema version of the root's namespace, once the root is read.
    version: Option<SchemaVersion>,
    /// Whether any markup or text came before: the XML declaration must come first.
    started: bool,
    /// The root's qualified name as written (for finding its end tag).
    root_name: Vec<u8>,
}

impl<S: Source> Lexer<S> {
    /// A lexer for a whole document.
    pub(crate) fn new(input: S) -> Lexer<S> {
        let mut reader = Reader::from_reader(input);
        {
            let cfg = reader.config_mut();
            // Empty elements are expanded by us (see `pending_end`) so that a start tag's
            // length, and so its position, is known exactly.
            cfg.expand_empty_elements = false;
            cfg.check_end_names = true;
            // XML forbids `--` inside a comment.
            cfg.check_comments = true;
            // Not trim_text: it would also trim text next to an entity reference ("A &amp; B").
            cfg.trim_text(false);
        }
        Lexer {
            reader,
            buf: Vec::with_capacity(1024),
            attrs: Vec::with_capacity(8),
            text: String::new(),
            tok_pos: 0,
            open: Vec::new(),
            open_other: Vec::new(),
            other_name: String::new(),
            ns_bindings: Vec::new(),
            default_ns: Vec::new(),
            pending_end: false,
            collect_text: false,
            namespace: Vec::new(),
            version: None,
            started: false,
            root_name: Vec::new(),
        }
    }

    /// A lexer for one top-level element read again from its raw bytes, as if it stood at
    /// `start` inside a document in `namespace` with `bindings` declared on the root.
    pub(crate) fn for_element(
        input: S,
        namespace: &[u8],
        version: SchemaVersion,
        bindings: &[Binding],
    ) -> Lexer<S> {
        let mut lex = Lexer::new(input);
        lex.started = true;
        lex.namespace = namespace.to_vec();
        lex.version = Some(version);
        // The root is open around the element, so depths are those of the document.
        lex.open.push(El::Provresultat);
        for b in bindings {
            let binding = Binding {
                is_document: b.uri == namespace,
                depth: 0,
                ..b.clone()
            };
            if b.prefix.is_empty() {
                lex.default_ns.push(binding);
            } else {
                lex.ns_bindings.push(binding);
            }
        }
        lex
    }

    pub(crate) fn source(&self) -> &S {
        self.reader.get_ref()
    }

    /// The source back, for reading on without the lexer.
    pub(crate) fn into_source(self) -> S {
        self.reader.into_inner()
    }

    /// The absolute offset the lexer stands at.
    pub(crate) fn pos(&self) -> u64 {
        self.reader.get_ref().consumed()
    }

    /// Whether the last start tag was an empty element (`<x/>`), whose end is still to come.
    pub(crate) fn pending_end(&self) -> bool {
        self.pending_end
    }

    /// The root's qualified name as written, once the root start tag was read.
    pub(crate) fn root_name(&self) -> &[u8] {
        &self.root_name
    }

    /// The root's namespace and schema version, once the root start tag was read.
    pub(crate) fn version(&self) -> Option<&SchemaVersion> {
        self.version.as_ref()
    }

    /// The namespace declarations in scope, outermost first.
    pub(crate) fn bindings(&self) -> Vec<Binding> {
        self.default_ns
            .iter()
            .chain(&self.ns_bindings)
            .cloned()
            .collect()
    }

    pub(crate) fn loc(&self, offset: u64) -> Location {
        self.source().locate(offset)
    }

    pub(crate) fn next_tok(&mut self) -> Result<Tok, DocumentError> {
        if self.pending_end {
            self.pending_end = false;
            self.close_element();
            return Ok(Tok::End);
        }
        loop {
            self.buf.clear();
            self.tok_pos = self.reader.get_ref().consumed();
            // quick-xml counts from 0 and leaves a byte-order mark out.
            let skew = self.tok_pos - self.reader.buffer_position();
            let event = match self.reader.read_event_into(&mut self.buf) {
                Ok(e) => e,
                Err(e) => {
                    let at = self.reader.error_position() + skew;
                    return Err(self.xml_error(e, at));
                }
            };
            let first = !std::mem::replace(&mut self.started, true);
            let empty = matches!(event, Event::Empty(_));
            match event {
                Event::Start(start) | Event::Empty(start) => {
                    // The tag is `<` content `>` (or `/>`) and ends where the reader stands.
                    let tag_len = start.len() as u64 + if empty { 3 } else { 2 };
                    self.tok_pos = self.reader.get_ref().consumed().saturating_sub(tag_len);
                    let depth = self.open.len() + 1;
                    if depth > MAX_DEPTH {
                        return Err(DocumentError::TooDeep {
                            location: self.reader.get_ref().locate(self.tok_pos),
                            max: MAX_DEPTH,
                        });
                    }
                    let qname = start.name();
                    // One pass over the attributes: namespace declarations (which apply to this
                    // element already) and the schema's unqualified attributes.
                    self.attrs.clear();
                    let attr_base = self.tok_pos;
                    for (n, attr) in start.attributes().enumerate() {
                        if n == MAX_ATTRIBUTES {
                            return Err(DocumentError::TooManyAttributes {
                                location: self.reader.get_ref().locate(self.tok_pos),
                                max: MAX_ATTRIBUTES,
                            });
                        }
                        let attr = match attr {
                            Ok(a) => a,
                            Err(e) => {
                                return Err(malformed(
                                    self.reader.get_ref(),
                                    self.tok_pos,
                                    e.to_string(),
                                ))
                            }
                        };
                        let key = attr.key.as_ref();
                        let at = At::from_local(key);
                        // The schema's own names need no check (most of those in a document).
                        if at == At::Other && !chars::is_name(key) {
                            return Err(malformed(
                                self.reader.get_ref(),
                                self.tok_pos,
                                format!(
                                    "{:?} is not an XML attribute name",
                                    String::from_utf8_lossy(key)
                                ),
                            ));
                        }
                        let value = || {
                            let v = attr.unescape_value().map_err(|e| {
                                entity_error(
                                    e,
                                    self.reader.get_ref().locate(self.tok_pos),
                                    format!("attribute {}", String::from_utf8_lossy(key)),
                                )
                            })?;
                            // The raw bytes were checked; a character reference can still
                            // name a character XML does not allow.
                            if let std::borrow::Cow::Owned(s) = &v {
                                if let Some((_, c)) = chars::first_forbidden_in_str(s) {
                                    return Err(DocumentError::Character {
                                        location: self.reader.get_ref().locate(self.tok_pos),
                                        bad: chars::BadChar::Forbidden(c),
                                    });
                                }
                            }
                            Ok(v)
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
                        // Qualified attributes (xsi:…) are not data; still, they are
                        // well-formed only with declared entities and allowed characters.
                        if key.contains(&b':') {
                            value()?;
                            continue;
                        }
                        if at == At::Other {
                            value()?;
                            // Kept by name only, so the element's reader can warn about it.
                            let name = String::from_utf8_lossy(key).into_owned();
                            self.attrs.push((at, name, attr_base));
                            continue;
                        }
                        let v = value()?.into_owned();
                        self.attrs.push((at, v, attr_base));
                    }
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
                            return Err(malformed(
                                self.reader.get_ref(),
                                self.tok_pos,
                                format!(
                                    "the prefix {:?} is not bound to a namespace",
                                    String::from_utf8_lossy(prefix)
                                ),
                            ))
                        }
                        _ => None,
                    };
                    let el = match ns {
                        Some(n) if depth == 1 => {
                            let ns_str = String::from_utf8_lossy(n).into_owned();
                            match SchemaVersion::from_namespace(&ns_str) {
                                Some(v) if local == b"provresultat" => {
                                    self.namespace = n.to_vec();
                                    self.version = Some(v);
                                    self.root_name = qname.as_ref().to_vec();
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
                        // Only a name that is not the schema's own needs checking.
                        if !chars::is_name(qname.as_ref()) {
                            return Err(malformed(
                                self.reader.get_ref(),
                                self.tok_pos,
                                format!(
                                    "{:?} is not an XML element name",
                                    String::from_utf8_lossy(qname.as_ref())
                                ),
                            ));
                        }
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
                    if memchr::memmem::find(&t, b"]]>").is_some() {
                        return Err(malformed(
                            self.reader.get_ref(),
                            self.tok_pos,
                            "\"]]>\" in text (it may only end a CDATA section)".into(),
                        ));
                    }
                    // The bytes were checked as UTF-8 on arrival.
                    let s = t.decode().map_err(|e| {
                        malformed(self.reader.get_ref(), self.tok_pos, e.to_string())
                    })?;
                    let blank = is_blank(&s);
                    if self.collect_text || !blank {
                        self.text.push_str(&s);
                    }
                    return Ok(Tok::Text { blank });
                }
                Event::CData(t) => {
                    let s = t.decode().map_err(|e| {
                        malformed(self.reader.get_ref(), self.tok_pos, e.to_string())
                    })?;
                    let blank = is_blank(&s);
                    self.text.push_str(&s);
                    return Ok(Tok::Text { blank });
                }
                Event::GeneralRef(r) => {
                    let resolved = match r.resolve_char_ref() {
                        Ok(Some(c)) if !chars::is_char(c) => {
                            return Err(DocumentError::Character {
                                location: self.reader.get_ref().locate(self.tok_pos),
                                bad: chars::BadChar::Forbidden(u32::from(c)),
                            })
                        }
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
                            return Err(malformed(
                                self.reader.get_ref(),
                                self.tok_pos,
                                e.to_string(),
                            ))
                        }
                    };
                    let Some(c) = resolved else {
                        return Err(DocumentError::Entity {
                            location: self.reader.get_ref().locate(self.tok_pos),
                            name: chars::printable(&String::from_utf8_lossy(r.as_ref()))
                                .into_owned(),
                        });
                    };
                    self.text.push(c);
                    return Ok(Tok::Text {
                        blank: matches!(c, ' ' | '\t' | '\r' | '\n'),
                    });
                }
                Event::Decl(d) => {
                    if !first {
                        return Err(malformed(
                            self.reader.get_ref(),
                            self.tok_pos,
                            "an XML declaration may only stand at the very start of the document"
                                .into(),
                        ));
                    }
                    match d.version() {
                        Ok(v) if v.as_ref() == b"1.0" => {}
                        Ok(v) => {
                            return Err(malformed(
                                self.reader.get_ref(),
                                self.tok_pos,
                                format!(
                                    "XML version {:?}: only 1.0 is read",
                                    String::from_utf8_lossy(&v)
                                ),
                            ))
                        }
                        Err(e) => {
                            return Err(malformed(
                                self.reader.get_ref(),
                                self.tok_pos,
                                e.to_string(),
                            ))
                        }
                    }
                    if let Some(enc) = d.encoding() {
                        let enc = enc.map_err(|e| {
                            malformed(self.reader.get_ref(), self.tok_pos, e.to_string())
                        })?;
                        let enc = String::from_utf8_lossy(&enc).into_owned();
                        if !enc.eq_ignore_ascii_case("utf-8") && !enc.eq_ignore_ascii_case("utf8") {
                            return Err(DocumentError::Encoding {
                                location: self.reader.get_ref().locate(self.tok_pos),
                                encoding: chars::printable(&enc).into_owned(),
                            });
                        }
                    }
                }
                Event::DocType(_) => {
                    return Err(DocumentError::Doctype {
                        location: self.reader.get_ref().locate(self.tok_pos),
                    })
                }
                Event::PI(pi) => {
                    if pi.target().eq_ignore_ascii_case(b"xml") {
                        return Err(malformed(
                            self.reader.get_ref(),
                            self.tok_pos,
                            "the processing-instruction target \"xml\" is reserved".into(),
                        ));
                    }
                }
                Event::Comment(_) => {}
                Event::Eof => return Ok(Tok::Eof),
            }
        }
    }

    fn xml_error(&self, e: quick_xml::Error, at: u64) -> DocumentError {
        if let quick_xml::Error::Io(io) = &e {
            if let Some(inner) = io.get_ref() {
                if let Some(limit) = inner.downcast_ref::<LimitExceeded>() {
                    // An element (or the gap between two) too long is named by where it starts.
                    let location = match limit {
                        LimitExceeded::Record(_) => self.source().mark(),
                        LimitExceeded::Document(_) => self.loc(at),
                    };
                    return DocumentError::Limit {
                        location,
                        limit: *limit,
                    };
                }
                if let Some(bad) = inner.downcast_ref::<BadCharAt>() {
                    return DocumentError::Character {
                        location: self.loc(bad.offset),
                        bad: bad.bad,
                    };
                }
            }
            return DocumentError::Io {
                location: self.loc(at),
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
                    location: self.loc(at),
                    open: self.open_name(),
                };
            }
        }
        DocumentError::Malformed {
            location: self.loc(at),
            message: chars::printable(&e.to_string()).into_owned(),
        }
    }

    pub(crate) fn truncated(&self) -> DocumentError {
        DocumentError::Truncated {
            location: self.loc(self.pos()),
            open: self.open_name(),
        }
    }

    pub(crate) fn take_attr(&mut self, at: At) -> Option<(String, u64)> {
        let i = self.attrs.iter().position(|(a, _, _)| *a == at)?;
        let (_, v, pos) = self.attrs.swap_remove(i);
        Some((v, pos))
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
    pub(crate) fn display_name(&self, el: El) -> String {
        if el == El::Other {
            chars::printable(&self.other_name).into_owned()
        } else {
            el.name().to_owned()
        }
    }

    fn open_name(&self) -> String {
        match self.open.last() {
            Some(El::Other) => self
                .open_other
                .last()
                .map(|n| chars::printable(n).into_owned())
                .unwrap_or_default(),
            Some(el) => el.name().to_owned(),
            None => String::new(),
        }
    }
}

/// A not-well-formed document, at `at`; the message is made safe for a terminal.
fn malformed<S: Source>(counter: &S, at: u64, message: String) -> DocumentError {
    DocumentError::Malformed {
        location: counter.locate(at),
        message: chars::printable(&message).into_owned(),
    }
}

/// quick-xml's unescaping error, as ours: an unknown entity is its own kind of error.
fn entity_error(e: quick_xml::Error, location: Location, what: String) -> DocumentError {
    match e {
        quick_xml::Error::Escape(quick_xml::escape::EscapeError::UnrecognizedEntity(_, name)) => {
            DocumentError::Entity {
                location,
                name: chars::printable(&name).into_owned(),
            }
        }
        other => DocumentError::Malformed {
            location,
            message: chars::printable(&format!("{what}: {other}")).into_owned(),
        },
    }
}

/// Whitespace only, in the XML sense (space, tab, CR, LF); other Unicode spaces are content.
pub(crate) fn is_blank(s: &str) -> bool {
    is_blank_bytes(s.as_bytes())
}

fn is_blank_bytes(b: &[u8]) -> bool {
    b.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
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
}
