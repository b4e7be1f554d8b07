//! A seeded, deterministic population of students and their national-test results.
//!
//! Every student's records are a pure function of (seed, student index, revision), so a document
//! of any size can be written in two streaming passes (all ämnesresultat, then all kursresultat,
//! as the XSD orders them) without holding the population, and a later revision of a student
//! models a change on the platform. Values are drawn from the enumerations of the chosen schema
//! version, so generated documents validate against its XSD.

use std::io::{self, Write};

use chrono::NaiveDate;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::render::DocumentWriter;
use crate::domain::{
    Arskurs, Delprovsresultat, Omrade, Provomrade, ProvomradeKey, Provtillfalle,
    ProvtillfalleResultat, Text, Utfall, Varde,
};
use crate::xml::version::VersionRules;

/// Subjects with national tests per årskurs (abbreviations as the platform sends them).
const AMNEN: &[(u8, &[&str])] = &[
    (3, &["MA", "SV", "SVA"]),
    (6, &["MA", "SV", "SVA", "EN"]),
    (
        9,
        &[
            "MA", "SV", "SVA", "EN", "BI", "FY", "KE", "GE", "HI", "RE", "SH",
        ],
    ),
];

/// Courses with national tests, with the skolform they are usually taken in.
const KURSER: &[(&str, &str)] = &[
    ("MATMAT01a", "GY"),
    ("MATMAT01b", "GY"),
    ("MATMAT01c", "GY"),
    ("MATMAT02b", "GY"),
    ("MATMAT02c", "GY"),
    ("SVESVE01", "GY"),
    ("SVESVE03", "GY"),
    ("SVASVA01", "GY"),
    ("ENGENG05", "GY"),
    ("ENGENG06", "GY"),
    ("MATMAT01a", "VUX"),
    ("SVESVE01", "VUX"),
    ("SFIKUB9", "SFI"),
    ("SFIKUD9", "SFI"),
];

const LANGUAGE_TYP: &[&str] = &["LÄSA", "TALA", "SKRIVA", "LYSSNA"];

#[derive(Clone, Copy, Debug)]
pub struct Population {
    pub students: u64,
    pub seed: u64,
    pub version: &'static VersionRules,
    /// The calendar year the `uppdaterat` dates fall in.
    pub year: i32,
}

impl Population {
    /// A stable, UUID-like student id (`{…}` as in the vendor examples).
    pub fn elev_id(&self, index: u64) -> String {
        let mut rng =
            ChaCha8Rng::seed_from_u64(self.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let a: u32 = rng.random();
        let b: u16 = rng.random();
        let c: u16 = rng.random();
        let d: u16 = rng.random();
        let e: u64 = rng.random::<u64>() & 0xFFFF_FFFF_FFFF;
        format!("{{{a:08x}-{b:04x}-{c:04x}-{d:04x}-{e:012x}}}")
    }

    /// The student's records at a revision; revision 0 is the first state, each later one a
    /// different state of the same provområden (some cleared).
    pub fn student(&self, index: u64, revision: u32) -> Vec<Provomrade> {
        let elev = self.elev_id(index);
        // The shape (which provområden) depends on the student only, the content on the revision.
        let mut shape = ChaCha8Rng::seed_from_u64(self.seed.rotate_left(17) ^ index);
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.seed ^ index.rotate_left(32) ^ (u64::from(revision) << 48) ^ 0xA5A5,
        );
        let mut out = Vec::new();
        if shape.random_bool(0.7) {
            let (arskurs, amnen) = AMNEN[shape.random_range(0..AMNEN.len())];
            let skolform = if shape.random_bool(0.05) {
                "GRSAR"
            } else {
                "GR"
            };
            let n = shape.random_range(1..=amnen.len().min(4));
            let start = shape.random_range(0..amnen.len());
            for k in 0..n {
                let amne = amnen[(start + k) % amnen.len()];
                out.push(Provomrade {
                    key: ProvomradeKey {
                        elev: elev.clone(),
                        omrade: Omrade::Amne {
                            amne: amne.into(),
                            arskurs: Arskurs::try_from(i64::from(arskurs)).expect("3, 6 or 9"),
                        },
                    },
                    skolform: skolform.into(),
                    provtillfallen: self.provtillfallen(&mut rng, amne, revision),
                });
            }
        } else {
            let n = shape.random_range(1..=3);
            let start = shape.random_range(0..KURSER.len());
            for k in 0..n {
                let (kurs, skolform) = KURSER[(start + k * 3) % KURSER.len()];
                out.push(Provomrade {
                    key: ProvomradeKey {
                        elev: elev.clone(),
                        omrade: Omrade::Kurs { kurs: kurs.into() },
                    },
                    skolform: skolform.into(),
                    provtillfallen: self.provtillfallen(&mut rng, kurs, revision),
                });
            }
        }
        out
    }

    fn provtillfallen(
        &self,
        rng: &mut ChaCha8Rng,
        omrade: &str,
        revision: u32,
    ) -> Vec<Provtillfalle> {
        // Later revisions clear a few provområden: the platform then sends an empty element.
        if revision > 0 && rng.random_bool(0.08) {
            return Vec::new();
        }
        let n = if rng.random_bool(0.06) { 2 } else { 1 };
        (0..n).map(|_| self.provtillfalle(rng, omrade)).collect()
    }

    fn provtillfalle(&self, rng: &mut ChaCha8Rng, omrade: &str) -> Provtillfalle {
        let v = self.version;
        let day = rng.random_range(0..365);
        let uppdaterat = NaiveDate::from_ymd_opt(self.year, 1, 1)
            .expect("valid year")
            .checked_add_days(chrono::Days::new(day))
            .expect("within range");
        let genomfort = (v.genomfort && rng.random_bool(0.6))
            .then(|| uppdaterat - chrono::Days::new(rng.random_range(0..30)));
        if rng.random_bool(0.03) {
            return Provtillfalle {
                uppdaterat,
                genomfort,
                resultat: ProvtillfalleResultat::Intedeltagit,
            };
        }
        let language =
            omrade.starts_with("SV") || omrade.starts_with("EN") || omrade.starts_with("SFI");
        let typer: Vec<&str> = if language {
            LANGUAGE_TYP.to_vec()
        } else if v.typ.contains(&"PROVRESULTAT")
            && omrade.starts_with("MAT")
            && rng.random_bool(0.5)
        {
            vec!["PROVRESULTAT"]
        } else {
            // Lettered delprov (A, B, …) where the version has them; v1.1 only knows ANNAN.
            let lettered: Vec<&str> = v
                .typ
                .iter()
                .copied()
                .filter(|t| !LANGUAGE_TYP.contains(t) && *t != "PROVRESULTAT")
                .collect();
            let n = rng.random_range(2..=lettered.len().clamp(2, 6));
            lettered.into_iter().cycle().take(n).collect()
        };
        let delprov = typer
            .into_iter()
            .map(|typ| Delprovsresultat {
                typ: typ.into(),
                utfall: self.utfall(rng),
            })
            .collect();
        // I and G (v12.0) are SFI grades; elsewhere the A–F scale applies.
        let scale: Vec<&str> = v
            .sammanvagt_provbetyg
            .iter()
            .copied()
            .filter(|b| omrade.starts_with("SFI") || !matches!(*b, "I" | "G"))
            .collect();
        let sammanvagt = rng
            .random_bool(0.85)
            .then(|| Text::Borrowed(pick(rng, &scale)));
        Provtillfalle {
            uppdaterat,
            genomfort,
            resultat: ProvtillfalleResultat::Resultat {
                sammanvagt_provbetyg: sammanvagt,
                delprovsresultat: delprov,
            },
        }
    }

    fn utfall(&self, rng: &mut ChaCha8Rng) -> Utfall {
        let r: f64 = rng.random();
        if r < 0.03 {
            return Utfall::Intedeltagit;
        }
        if r < 0.04 {
            return Utfall::Borttappat;
        }
        let varde = match rng.random_range(0..10) {
            0..=5 => Some(Varde::Betyg(Text::Borrowed(pick(rng, self.version.betyg)))),
            6..=8 => Some(Varde::Poang(rng.random_range(0..=80))),
            _ => None,
        };
        let maluppfyllnad = rng.random_bool(0.3).then(|| rng.random_bool(0.8));
        Utfall::Resultat {
            varde,
            maluppfyllnad,
        }
    }

    /// Writes one document with the given students (each at the revision `revision_of` gives),
    /// ämnesresultat first. Returns the number of records written.
    pub fn write_document<W: Write>(
        &self,
        out: W,
        from: &str,
        tom: &str,
        students: impl Iterator<Item = u64> + Clone,
        revision_of: impl Fn(u64) -> u32,
    ) -> io::Result<u64> {
        let mut w = DocumentWriter::begin(out, self.version, from, tom)?;
        let mut n = 0;
        for want_amne in [true, false] {
            for i in students.clone() {
                for r in self.student(i, revision_of(i)) {
                    if matches!(r.key.omrade, Omrade::Amne { .. }) == want_amne {
                        w.record(&r)?;
                        n += 1;
                    }
                }
            }
        }
        w.end()?;
        Ok(n)
    }
}

fn pick<'a>(rng: &mut ChaCha8Rng, from: &[&'a str]) -> &'a str {
    from[rng.random_range(0..from.len())]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::version::{newest, VERSIONS};

    #[test]
    fn the_same_seed_gives_the_same_students() {
        let p = Population {
            students: 10,
            seed: 7,
            version: newest(),
            year: 2025,
        };
        assert_eq!(p.student(3, 0), p.student(3, 0));
        assert_ne!(p.elev_id(3), p.elev_id(4));
    }

    #[test]
    fn a_revision_keeps_the_provomraden_and_changes_content() {
        let p = Population {
            students: 100,
            seed: 1,
            version: &VERSIONS[0],
            year: 2016,
        };
        let changed = (0..100)
            .filter(|i| p.student(*i, 0) != p.student(*i, 1))
            .count();
        assert!(changed > 90, "{changed}");
        for i in 0..100 {
            let keys = |r: u32| {
                p.student(i, r)
                    .into_iter()
                    .map(|x| x.key)
                    .collect::<Vec<_>>()
            };
            assert_eq!(keys(0), keys(1));
        }
    }
}
