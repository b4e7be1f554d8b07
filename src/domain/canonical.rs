//! The canonical content of a provområde and its SHA-256.
//!
//! `content_sha256` lets a re-read of an overlapping window skip unchanged provområden without
//! reading any child rows. It must therefore be a pure function of exactly the values stored in
//! `provtillfalle` and `delprovsresultat`, in order, so that a hash computed from parsed XML and one
//! computed from stored rows agree. The encoding is unambiguous (every field is tagged or
//! length-prefixed) and versioned: changing it would make every stored hash differ once, which
//! shows up as one spurious change per provområde, so it must not change casually.

use sha2::{Digest, Sha256};

use super::{Provtillfalle, ProvtillfalleResultat, Utfall, Varde};

/// A SHA-256 over canonical content, stored as lowercase hex.
pub type ContentHash = String;

/// Prefix that versions the encoding below.
const ENCODING_TAG: &[u8] = b"nprov-sync/content/v1\0";

/// The hash of a provområde with no provtillfällen (a cleared one).
pub const EMPTY_CONTENT_SHA256: &str =
    "b087844d70a291b821abd068480d17308fae607a31907c94be501f5ceec4a532";

/// Hashes the ordered list of (skolform, provtillfälle).
pub fn content_sha256<'a, I>(items: I) -> ContentHash
where
    I: IntoIterator<Item = (&'a str, &'a Provtillfalle)>,
{
    let mut h = ContentHasher::new();
    for (skolform, pt) in items {
        h.push(skolform, pt);
    }
    h.finish()
}

/// [`content_sha256`] one provtillfälle at a time: a key's set can be hashed as its elements
/// arrive, or as its stored rows are read page by page, in time linear in the set and memory
/// independent of it.
#[derive(Clone)]
pub struct ContentHasher(Sha256);

impl Default for ContentHasher {
    fn default() -> Self {
        ContentHasher::new()
    }
}

impl ContentHasher {
    pub fn new() -> ContentHasher {
        let mut h = Sha256::new();
        h.update(ENCODING_TAG);
        ContentHasher(h)
    }

    /// Adds the next provtillfälle of the set, with the skolform of the element it came in.
    pub fn push(&mut self, skolform: &str, pt: &Provtillfalle) {
        let h = &mut self.0;
        h.update(b"P");
        str_field(h, skolform);
        str_field(h, date_text(&pt.uppdaterat).as_str());
        opt_str(
            h,
            pt.genomfort
                .as_ref()
                .map(date_text)
                .as_ref()
                .map(|d| d.as_str()),
        );
        match &pt.resultat {
            ProvtillfalleResultat::Intedeltagit => h.update(b"I"),
            ProvtillfalleResultat::Resultat {
                sammanvagt_provbetyg,
                delprovsresultat,
            } => {
                h.update(b"R");
                opt_str(h, sammanvagt_provbetyg.as_deref());
                h.update((delprovsresultat.len() as u64).to_le_bytes());
                for d in delprovsresultat {
                    str_field(h, &d.typ);
                    match &d.utfall {
                        Utfall::Intedeltagit => h.update(b"i"),
                        Utfall::Borttappat => h.update(b"b"),
                        Utfall::Resultat {
                            varde,
                            maluppfyllnad,
                        } => {
                            h.update(b"r");
                            match varde {
                                None => h.update(b"-"),
                                Some(Varde::Betyg(b)) => {
                                    h.update(b"g");
                                    str_field(h, b);
                                }
                                Some(Varde::Poang(p)) => {
                                    h.update(b"p");
                                    h.update(p.to_le_bytes());
                                }
                            }
                            match maluppfyllnad {
                                None => h.update(b"-"),
                                Some(true) => h.update(b"t"),
                                Some(false) => h.update(b"f"),
                            }
                        }
                    }
                }
            }
        }
    }

    pub fn finish(self) -> ContentHash {
        hex32(&self.0.finalize().into())
    }
}

/// A 32-byte hash as lowercase hex. (`hex::encode` goes through a `char` iterator, which showed
/// in the writer's profile; this writes the 64 bytes at once.)
pub fn hex32(bytes: &[u8; 32]) -> String {
    let mut out = [0u8; 64];
    // Neither can fail: 64 bytes hold 32 in hex, and hex digits are ASCII.
    let _ = hex::encode_to_slice(bytes, &mut out);
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

/// A date as `yyyy-mm-dd`, on the stack: what `NaiveDate`'s `Display` writes for the years the
/// data has (0 to 9999), without allocating for every provtillfälle hashed.
struct DateText([u8; 10]);

impl DateText {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

fn date_text(d: &chrono::NaiveDate) -> DateText {
    use chrono::Datelike;
    let (y, m, day) = (d.year().clamp(0, 9999) as u32, d.month(), d.day());
    let digit = |v: u32| b'0' + (v % 10) as u8;
    DateText([
        digit(y / 1000),
        digit(y / 100),
        digit(y / 10),
        digit(y),
        b'-',
        digit(m / 10),
        digit(m),
        b'-',
        digit(day / 10),
        digit(day),
    ])
}

fn str_field(h: &mut Sha256, s: &str) {
    h.update((s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

fn opt_str(h: &mut Sha256, s: Option<&str>) {
    match s {
        None => h.update(b"-"),
        Some(s) => {
            h.update(b"+");
            str_field(h, s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Delprovsresultat;
    use chrono::NaiveDate;

    fn pt(betyg: &'static str) -> Provtillfalle {
        Provtillfalle {
            uppdaterat: NaiveDate::from_ymd_opt(2024, 5, 1).expect("valid date"),
            genomfort: None,
            resultat: ProvtillfalleResultat::Resultat {
                sammanvagt_provbetyg: Some(betyg.into()),
                delprovsresultat: vec![Delprovsresultat {
                    typ: "LÄSA".into(),
                    utfall: Utfall::Resultat {
                        varde: Some(Varde::Poang(12)),
                        maluppfyllnad: Some(true),
                    },
                }],
            },
        }
    }

    #[test]
    fn dates_are_hashed_as_display_writes_them() {
        for (y, m, d) in [(2026, 1, 2), (1999, 12, 31), (5, 6, 7)] {
            let date = chrono::NaiveDate::from_ymd_opt(y, m, d).expect("a date");
            assert_eq!(date_text(&date).as_str(), date.to_string());
        }
    }

    #[test]
    fn empty_content_has_the_published_constant_hash() {
        assert_eq!(content_sha256(std::iter::empty()), EMPTY_CONTENT_SHA256);
    }

    #[test]
    fn hash_depends_on_order_skolform_and_values() {
        let (a, b) = (pt("A"), pt("B"));
        let ab = content_sha256([("GR", &a), ("GR", &b)]);
        assert_ne!(ab, content_sha256([("GR", &b), ("GR", &a)]));
        assert_ne!(ab, content_sha256([("GR", &a), ("GRSAR", &b)]));
        assert_eq!(ab, content_sha256([("GR", &a), ("GR", &b)]));
    }

    #[test]
    fn fields_cannot_run_into_each_other() {
        // Without length prefixes "AB"+"C" and "A"+"BC" would hash alike.
        let mut x = pt("A");
        x.resultat = ProvtillfalleResultat::Resultat {
            sammanvagt_provbetyg: None,
            delprovsresultat: vec![],
        };
        assert_ne!(content_sha256([("GRS", &x)]), content_sha256([("GR", &x)]));
    }
}
