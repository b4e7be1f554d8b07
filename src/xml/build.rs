//! The building stage: one top-level element's tokens into domain values, by the XSD's rules.
//!
//! It reads from a [`Lexer`]: the scanner's own while a document streams in (when it builds as
//! it goes), or one over an element's raw bytes read again later ([`build_element`]), when the
//! writer finds the element's raw hash is not what is stored. Both read the same tokens, so both
//! give the same values, the same record errors and the same locations.
//!
//! A record error condemns the element only; a document error (which cannot come from bytes the
//! scanner already read whole) ends the document.

use chrono::NaiveDate;

use super::counter::{Location, SliceSource, Source};
use super::error::{DocumentError, RecordError, RecordErrorKind as K};
use super::lexer::{At, Attr, El, Lexer, Tok};
use super::parser::{parse_boolean, parse_date, parse_integer};
use super::scan::DocContext;
use super::version::{EnumField, VersionRules};
use crate::domain::{
    Arskurs, Delprovsresultat, Omrade, Provomrade, ProvomradeKey, Provtillfalle,
    ProvtillfalleResultat, Text, Utfall, Varde,
};

/// Warnings kept with their location per element; more are only counted.
const MAX_ELEMENT_WARNINGS: usize = 20;
/// Distinct unknown enumeration values kept per element; the rest are lumped together.
const MAX_ELEMENT_UNKNOWN: usize = 16;
/// What values beyond a cap are counted as.
pub const OTHER_VALUES: &str = "(other values)";

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

/// What building one element found besides its values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElementStats {
    pub provtillfallen: u64,
    pub delprovsresultat: u64,
    pub warning_count: u64,
    /// The first warnings, verbatim.
    pub warnings: Vec<Warning>,
    /// Values outside the version's enumerations: field, value, where it first occurs, how often.
    pub unknown_values: Vec<(EnumField, String, Location, u64)>,
}

/// One element built: its values, and what building it noticed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Built {
    pub provomrade: Provomrade,
    pub stats: ElementStats,
    /// The content hash of this element's provtillfällen alone: a key's whole set when the key
    /// comes in one element, as most do. Computed here so that the scanner's thread does it
    /// while building ahead, not the writer.
    pub content: crate::domain::ContentHash,
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

/// A top-level element's key from its start tag's attributes: `elev`, and `ämne` + `årskurs` or
/// `kurs`, taken out of `attrs`. `start` is where the element starts; `locate` turns offsets into
/// locations. The scanner needs only this to name an element, whether or not it builds it.
pub(crate) fn key_from_attrs(
    el: El,
    attrs: &mut Vec<Attr>,
    start: u64,
    locate: impl Fn(u64) -> Location,
) -> Result<ProvomradeKey, RecordError> {
    let element = el.name();
    let take = |attrs: &mut Vec<Attr>, at: At| {
        let i = attrs.iter().position(|(a, _, _)| *a == at)?;
        let (_, v, pos) = attrs.swap_remove(i);
        Some((v, pos))
    };
    let rec = |kind, at: u64, elev: Option<&str>, message: String| RecordError {
        kind,
        location: locate(at),
        element: element.into(),
        elev: elev.map(Into::into),
        message,
    };
    let elev = match take(attrs, At::Elev) {
        None => {
            return Err(rec(
                K::MissingAttribute,
                start,
                None,
                "required attribute elev is missing".into(),
            ))
        }
        Some((v, pos)) if v.trim().is_empty() => {
            return Err(rec(
                K::EmptyAttribute,
                pos,
                Some(&v),
                "attribute elev is empty".into(),
            ))
        }
        Some((v, _)) => v,
    };
    let required = |attrs: &mut Vec<Attr>, at: At| -> Result<(String, u64), RecordError> {
        match take(attrs, at) {
            None => Err(rec(
                K::MissingAttribute,
                start,
                Some(&elev),
                format!("required attribute {} is missing", at.name()),
            )),
            Some((v, pos)) if v.trim().is_empty() => Err(rec(
                K::EmptyAttribute,
                pos,
                Some(&elev),
                format!("attribute {} is empty", at.name()),
            )),
            Some(found) => Ok(found),
        }
    };
    let omrade = if el == El::Amnesresultat {
        let (amne, _) = required(attrs, At::Amne)?;
        let (arskurs, pos) = required(attrs, At::Arskurs)?;
        let arskurs: Arskurs = arskurs
            .parse()
            .map_err(|m: String| rec(K::BadArskurs, pos, Some(&elev), m))?;
        Omrade::Amne { amne, arskurs }
    } else {
        let (kurs, _) = required(attrs, At::Kurs)?;
        Omrade::Kurs { kurs }
    };
    Ok(ProvomradeKey { elev, omrade })
}

/// [`key_from_attrs`] for the start tag the lexer just read.
fn read_key<S: Source>(lex: &mut Lexer<S>, el: El) -> Result<ProvomradeKey, RecordError> {
    let mut attrs = std::mem::take(&mut lex.attrs);
    let key = key_from_attrs(el, &mut attrs, lex.tok_pos, |o| lex.loc(o));
    lex.attrs = attrs;
    key
}

/// Builds one element read again from its raw bytes, as it stood at `location` in a document
/// of `ctx`.
///
/// # Errors
/// The outer `Err` is a document error, which bytes the scanner accepted cannot produce; the
/// inner one is the element's record error.
pub fn build_element(
    raw: &[u8],
    location: Location,
    ctx: &DocContext,
) -> Result<Result<Built, RecordError>, DocumentError> {
    let mut lex = Lexer::for_element(
        SliceSource::new(raw, location),
        ctx.namespace.as_bytes(),
        ctx.version.clone(),
        &ctx.bindings,
    );
    let el = match lex.next_tok()? {
        Tok::Start {
            el: el @ (El::Amnesresultat | El::Kursresultat),
        } => el,
        _ => {
            return Err(DocumentError::Malformed {
                location,
                message: "the element read again is not a provområde element".into(),
            })
        }
    };
    let key = match read_key(&mut lex, el) {
        Ok(k) => k,
        Err(e) => return Ok(Err(e)),
    };
    let mut stats = ElementStats::default();
    let mut b = Builder {
        lex: &mut lex,
        rules: ctx.version.rules,
        stats: &mut stats,
    };
    match b.read_record(el, key) {
        Ok(provomrade) => {
            let content = crate::domain::content_sha256(
                provomrade
                    .provtillfallen
                    .iter()
                    .map(|pt| (provomrade.skolform.as_ref(), pt)),
            );
            Ok(Ok(Built {
                provomrade,
                stats,
                content,
            }))
        }
        Err(Fault::Rec(e)) => Ok(Err(e)),
        Err(Fault::Doc(e)) => Err(e),
    }
}

/// The XSD's rules for one top-level element, reading from a lexer that stands just after the
/// element's start tag (whose key attributes [`read_key`] took).
struct Builder<'a, S: Source> {
    lex: &'a mut Lexer<S>,
    rules: &'static VersionRules,
    stats: &'a mut ElementStats,
}

impl<S: Source> Builder<'_, S> {
    fn read_record(&mut self, el: El, key: ProvomradeKey) -> Result<Provomrade, Fault> {
        let element = el.name();
        let start = self.lex.tok_pos;
        let (skolform, pos) = match self.lex.take_attr(At::Skolform) {
            None => {
                return Err(self.rec(
                    K::MissingAttribute,
                    start,
                    element,
                    &key.elev,
                    "required attribute skolform is missing".into(),
                ))
            }
            Some((v, pos)) if v.trim().is_empty() => {
                return Err(self.rec(
                    K::EmptyAttribute,
                    pos,
                    element,
                    &key.elev,
                    "attribute skolform is empty".into(),
                ))
            }
            Some(found) => found,
        };
        let skolform: Text = match self.rules.intern(EnumField::Skolform, &skolform) {
            Some(known) => Text::Borrowed(known),
            None => {
                self.note_unknown(EnumField::Skolform, &skolform, pos);
                Text::Owned(skolform)
            }
        };
        self.warn_leftover_attrs(element);

        let mut provtillfallen = Vec::new();
        loop {
            match self.lex.next_tok()? {
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
                Tok::Eof => return Err(self.lex.truncated().into()),
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
        let start = self.lex.tok_pos;
        let uppdaterat = match self.lex.take_attr(At::Uppdaterat) {
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
        let genomfort = match self.lex.take_attr(At::Genomfort) {
            None => None,
            Some((v, pos)) => {
                if !self.rules.genomfort {
                    self.warn(
                        pos,
                        format!(
                            "attribute genomfört is not part of {}; kept",
                            self.rules.name
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
            match self.lex.next_tok()? {
                Tok::Text { blank: true } => {}
                Tok::Text { blank: false } => return Err(self.unexpected_text(E, elev)),
                Tok::Start { el } => {
                    let pos = self.lex.tok_pos;
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
                Tok::Eof => return Err(self.lex.truncated().into()),
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
        let start = self.lex.tok_pos;
        self.warn_leftover_attrs(E);
        // The XSD: ((betyg | poäng)?, måluppfyllnad?) | intedeltagit | borttappat, then typ.
        let mut betyg: Option<Text> = None;
        let mut poang: Option<i64> = None;
        let mut maluppfyllnad: Option<bool> = None;
        let mut marker: Option<Utfall> = None;
        let mut typ: Option<Text> = None;
        loop {
            match self.lex.next_tok()? {
                Tok::Text { blank: true } => {}
                Tok::Text { blank: false } => return Err(self.unexpected_text(E, elev)),
                Tok::Start { el } => {
                    let pos = self.lex.tok_pos;
                    if typ.is_some() {
                        return Err(self.rec(
                            K::Order,
                            pos,
                            E,
                            elev,
                            format!(
                                "<{}> after <typ>: <typ> comes last, once",
                                self.lex.display_name(el)
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
                            let v = &self.lex.text[range];
                            poang = Some(parse_integer(v).ok_or_else(|| {
                                let message = if super::parser::is_integer_lexical(v) {
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
                            let v = &self.lex.text[range];
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
                Tok::Eof => return Err(self.lex.truncated().into()),
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

    /// Reads a simple element's text; the trimmed, non-empty value is `self.lex.text[range]`.
    fn read_value(&mut self, el: El, elev: &str) -> Result<std::ops::Range<usize>, Fault> {
        let start = self.lex.tok_pos;
        self.warn_leftover_attrs(el.name());
        self.lex.collect_text = true;
        let end = self.read_value_end(el, elev);
        self.lex.collect_text = false;
        end?;
        let text = &self.lex.text;
        let trimmed = text.trim_start();
        let from = text.len() - trimmed.len();
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
        let pos = self.lex.tok_pos;
        let range = self.read_value(el, elev)?;
        if let Some(known) = self.rules.intern(field, &self.lex.text[range.clone()]) {
            return Ok(Text::Borrowed(known));
        }
        let value = self.lex.text[range].to_owned();
        self.note_unknown(field, &value, pos);
        Ok(Text::Owned(value))
    }

    fn read_value_end(&mut self, el: El, elev: &str) -> Result<(), Fault> {
        loop {
            match self.lex.next_tok()? {
                Tok::Text { .. } => {}
                Tok::Start { el: child } => return Err(self.unexpected(el.name(), child, elev)),
                Tok::End => return Ok(()),
                Tok::Eof => return Err(self.lex.truncated().into()),
            }
        }
    }

    /// Reads an element declared with empty content (`<intedeltagit/>`).
    fn read_empty(&mut self, el: El, elev: &str) -> Result<(), Fault> {
        self.warn_leftover_attrs(el.name());
        loop {
            match self.lex.next_tok()? {
                Tok::Text { blank: true } => {}
                Tok::Text { blank: false } => return Err(self.unexpected_text(el.name(), elev)),
                Tok::Start { el: child } => return Err(self.unexpected(el.name(), child, elev)),
                Tok::End => return Ok(()),
                Tok::Eof => return Err(self.lex.truncated().into()),
            }
        }
    }

    /// Warns about attributes of the current element that its reader did not take: the XSD does
    /// not declare them, and they carry nothing we store.
    fn warn_leftover_attrs(&mut self, element: &str) {
        if self.lex.attrs.is_empty() {
            return;
        }
        let left = std::mem::take(&mut self.lex.attrs);
        for (at, value, pos) in left {
            let name = if at == At::Other {
                value
            } else {
                at.name().to_owned()
            };
            self.warn(
                pos,
                format!(
                    "attribute {} on <{element}> is not in the schema; ignored",
                    super::chars::printable(&name)
                ),
            );
        }
    }

    fn rec(&self, kind: K, at: u64, element: &str, elev: &str, message: String) -> Fault {
        Fault::Rec(RecordError {
            kind,
            location: self.lex.loc(at),
            element: element.into(),
            elev: Some(elev.into()),
            message: super::chars::printable(&message).into_owned(),
        })
    }

    fn unexpected(&self, parent: &str, child: El, elev: &str) -> Fault {
        self.rec(
            K::UnexpectedElement,
            self.lex.tok_pos,
            parent,
            elev,
            format!("unexpected element <{}>", self.lex.display_name(child)),
        )
    }

    fn unexpected_text(&self, parent: &str, elev: &str) -> Fault {
        self.rec(
            K::UnexpectedText,
            self.lex.tok_pos,
            parent,
            elev,
            format!("unexpected text {:?}", self.lex.text.trim()),
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
        // Bounded, so that an element full of distinct odd values costs linear time.
        let value = if self.stats.unknown_values.len() >= MAX_ELEMENT_UNKNOWN
            && !self
                .stats
                .unknown_values
                .iter()
                .any(|(f, v, _, _)| *f == field && v == value)
        {
            OTHER_VALUES
        } else {
            value
        };
        if let Some(entry) = self
            .stats
            .unknown_values
            .iter_mut()
            .find(|(f, v, _, _)| *f == field && v == value)
        {
            entry.3 += 1;
            return;
        }
        let location = self.lex.loc(pos);
        self.stats
            .unknown_values
            .push((field, value.to_owned(), location, 1));
    }

    fn warn(&mut self, pos: u64, message: String) {
        self.stats.warning_count += 1;
        if self.stats.warnings.len() < MAX_ELEMENT_WARNINGS {
            let location = self.lex.loc(pos);
            self.stats.warnings.push(Warning { location, message });
        }
    }
}
