//! Pure domain types of the nationellaprov API, named after the API's own Swedish words.
//!
//! Values are built once, at the XML boundary, through constructors that return `Result`; past
//! that boundary an `Arskurs` that is not 3, 6 or 9 cannot exist. Enumerations that *grow* between
//! schema versions (delprov `typ`, `betyg`, sammanvägt provbetyg, skolform) are kept as text on
//! purpose: a value a newer vendor release adds must reach the warehouse, not be rejected. Whether a
//! value is known for the document's version is judged in [`crate::xml::version`], which counts it.
//!
//! This module imports neither tokio nor sqlx.

mod canonical;

pub use canonical::{content_sha256, hex32, ContentHash, ContentHasher, EMPTY_CONTENT_SHA256};

use std::borrow::Cow;
use std::fmt;

use chrono::NaiveDate;

/// Text of an enumeration that grows between versions (typ, betyg, skolform, …). Known values
/// borrow the version table's `'static` strings, so the common case allocates nothing; values a
/// version does not list are owned.
pub type Text = Cow<'static, str>;

/// Årskurs in grundskolan in which a national test is written. The XSD allows 3, 6 and 9 only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Arskurs(u8);

impl Arskurs {
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<i64> for Arskurs {
    type Error = String;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        match value {
            3 | 6 | 9 => Ok(Arskurs(value as u8)),
            other => Err(format!("årskurs must be 3, 6 or 9, found {other}")),
        }
    }
}

impl std::str::FromStr for Arskurs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // xs:positiveInteger allows surrounding whitespace and a leading '+' or zeros.
        let t = s.trim();
        let t = t.strip_prefix('+').unwrap_or(t);
        let n: i64 = t
            .parse()
            .map_err(|_| format!("årskurs must be 3, 6 or 9, found {s:?}"))?;
        Arskurs::try_from(n)
    }
}

impl fmt::Display for Arskurs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a provområde is: a grundskoleämne in an årskurs, or a course.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Omrade {
    /// `<ämnesresultat ämne=".." årskurs="..">`
    Amne { amne: String, arskurs: Arskurs },
    /// `<kursresultat kurs="..">`
    Kurs { kurs: String },
}

impl Omrade {
    /// The `kind` column: `amne` or `kurs`.
    pub fn kind(&self) -> &'static str {
        match self {
            Omrade::Amne { .. } => "amne",
            Omrade::Kurs { .. } => "kurs",
        }
    }
    pub fn amne(&self) -> Option<&str> {
        match self {
            Omrade::Amne { amne, .. } => Some(amne),
            Omrade::Kurs { .. } => None,
        }
    }
    pub fn arskurs(&self) -> Option<Arskurs> {
        match self {
            Omrade::Amne { arskurs, .. } => Some(*arskurs),
            Omrade::Kurs { .. } => None,
        }
    }
    pub fn kurs(&self) -> Option<&str> {
        match self {
            Omrade::Kurs { kurs } => Some(kurs),
            Omrade::Amne { .. } => None,
        }
    }
}

impl fmt::Display for Omrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Omrade::Amne { amne, arskurs } => write!(f, "ämne {amne} åk {arskurs}"),
            Omrade::Kurs { kurs } => write!(f, "kurs {kurs}"),
        }
    }
}

/// The unit of replacement within a source: one student's provområde. `skolform` is deliberately
/// not part of it: a student may hold provtillfällen of one provområde under several skolformer,
/// and the API always sends the provområde's full current list.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProvomradeKey {
    pub elev: String,
    pub omrade: Omrade,
}

impl fmt::Display for ProvomradeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "elev {} {}", self.elev, self.omrade)
    }
}

/// One `<ämnesresultat>` or `<kursresultat>` element: the current full list of provtillfällen of a
/// provområde under one skolform. Several elements with the same key in one document together form
/// the key's current set, in document order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provomrade {
    pub key: ProvomradeKey,
    pub skolform: Text,
    pub provtillfallen: Vec<Provtillfalle>,
}

/// One `<provtillfälle>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provtillfalle {
    pub uppdaterat: NaiveDate,
    /// `genomfört`, an optional attribute from v2.0b on.
    pub genomfort: Option<NaiveDate>,
    pub resultat: ProvtillfalleResultat,
}

/// The XSD's choice inside `<provtillfälle>`: either the student did not take part, or an optional
/// sammanvägt provbetyg followed by any number of delprovsresultat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProvtillfalleResultat {
    Intedeltagit,
    Resultat {
        sammanvagt_provbetyg: Option<Text>,
        delprovsresultat: Vec<Delprovsresultat>,
    },
}

impl ProvtillfalleResultat {
    pub fn intedeltagit(&self) -> bool {
        matches!(self, ProvtillfalleResultat::Intedeltagit)
    }
    pub fn sammanvagt_provbetyg(&self) -> Option<&str> {
        match self {
            ProvtillfalleResultat::Resultat {
                sammanvagt_provbetyg,
                ..
            } => sammanvagt_provbetyg.as_deref(),
            ProvtillfalleResultat::Intedeltagit => None,
        }
    }
    pub fn delprovsresultat(&self) -> &[Delprovsresultat] {
        match self {
            ProvtillfalleResultat::Resultat {
                delprovsresultat, ..
            } => delprovsresultat,
            ProvtillfalleResultat::Intedeltagit => &[],
        }
    }
}

/// One `<delprovsresultat>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delprovsresultat {
    pub typ: Text,
    pub utfall: Utfall,
}

/// How a delprov turned out: a result (possibly empty), not taken, or lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Utfall {
    Resultat {
        varde: Option<Varde>,
        maluppfyllnad: Option<bool>,
    },
    Intedeltagit,
    Borttappat,
}

impl Utfall {
    /// The `utfall` column.
    pub fn as_str(&self) -> &'static str {
        match self {
            Utfall::Resultat { .. } => "resultat",
            Utfall::Intedeltagit => "intedeltagit",
            Utfall::Borttappat => "borttappat",
        }
    }
    pub fn betyg(&self) -> Option<&str> {
        match self {
            Utfall::Resultat {
                varde: Some(Varde::Betyg(b)),
                ..
            } => Some(b),
            _ => None,
        }
    }
    pub fn poang(&self) -> Option<i64> {
        match self {
            Utfall::Resultat {
                varde: Some(Varde::Poang(p)),
                ..
            } => Some(*p),
            _ => None,
        }
    }
    pub fn maluppfyllnad(&self) -> Option<bool> {
        match self {
            Utfall::Resultat { maluppfyllnad, .. } => *maluppfyllnad,
            _ => None,
        }
    }
    /// Rebuilds an utfall from the stored columns (used when re-hashing stored content).
    pub fn from_columns(
        utfall: &str,
        betyg: Option<String>,
        poang: Option<i64>,
        maluppfyllnad: Option<bool>,
    ) -> Result<Utfall, String> {
        match utfall {
            "intedeltagit" => Ok(Utfall::Intedeltagit),
            "borttappat" => Ok(Utfall::Borttappat),
            "resultat" => {
                let varde = match (betyg, poang) {
                    (Some(b), None) => Some(Varde::Betyg(b.into())),
                    (None, Some(p)) => Some(Varde::Poang(p)),
                    (None, None) => None,
                    (Some(_), Some(_)) => return Err("both betyg and poang stored".into()),
                };
                Ok(Utfall::Resultat {
                    varde,
                    maluppfyllnad,
                })
            }
            other => Err(format!("unknown utfall {other:?}")),
        }
    }
}

/// A delprov's value: a grade or points (the XSD's choice between `<betyg>` and `<poäng>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Varde {
    Betyg(Text),
    /// `xs:integer` is unbounded; values outside i64 are a record error, not a silent wrap.
    Poang(i64),
}

/// A provtillfälle together with the skolform of the element it came in: the stored row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredProvtillfalle {
    pub skolform: Text,
    pub provtillfalle: Provtillfalle,
}
