//! Writes domain records as a nationellaprov document of a chosen version.
//!
//! Streaming: the caller writes records one by one, so a generated document of any size never
//! sits in memory. The output follows the XSD's element order; callers keep all ämnesresultat
//! before all kursresultat, as the XSD requires.

use std::io::{self, Write};

use quick_xml::escape::escape;

use crate::domain::{Omrade, Provomrade, ProvtillfalleResultat, Utfall, Varde};
use crate::xml::version::{VersionRules, NAMESPACE_PREFIX};

pub struct DocumentWriter<W: Write> {
    out: W,
}

impl<W: Write> DocumentWriter<W> {
    /// Writes the prolog and the root's start tag. `from`/`tom` are xs:dateTime text.
    pub fn begin(mut out: W, version: &VersionRules, from: &str, tom: &str) -> io::Result<Self> {
        write!(
            out,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<provresultat xmlns=\"{NAMESPACE_PREFIX}{}\" from=\"{}\" tom=\"{}\">\n",
            version.name,
            escape(from),
            escape(tom)
        )?;
        Ok(DocumentWriter { out })
    }

    pub fn record(&mut self, p: &Provomrade) -> io::Result<()> {
        let o = &mut self.out;
        let elev = escape(&p.key.elev);
        let skolform = escape(p.skolform.as_ref());
        let element = match &p.key.omrade {
            Omrade::Amne { amne, arskurs } => {
                write!(
                    o,
                    "\t<ämnesresultat elev=\"{elev}\" ämne=\"{}\" årskurs=\"{arskurs}\" skolform=\"{skolform}\"",
                    escape(amne)
                )?;
                "ämnesresultat"
            }
            Omrade::Kurs { kurs } => {
                write!(
                    o,
                    "\t<kursresultat elev=\"{elev}\" kurs=\"{}\" skolform=\"{skolform}\"",
                    escape(kurs)
                )?;
                "kursresultat"
            }
        };
        if p.provtillfallen.is_empty() {
            return o.write_all(b"/>\n");
        }
        o.write_all(b">\n")?;
        for pt in &p.provtillfallen {
            o.write_all("\t\t<provtillfälle".as_bytes())?;
            if let Some(g) = pt.genomfort {
                write!(o, " genomfört=\"{g}\"")?;
            }
            writeln!(o, " uppdaterat=\"{}\">", pt.uppdaterat)?;
            match &pt.resultat {
                ProvtillfalleResultat::Intedeltagit => o.write_all(b"\t\t\t<intedeltagit/>\n")?,
                ProvtillfalleResultat::Resultat {
                    sammanvagt_provbetyg,
                    delprovsresultat,
                } => {
                    if let Some(b) = sammanvagt_provbetyg {
                        writeln!(
                            o,
                            "\t\t\t<sammanvägtprovbetyg>{}</sammanvägtprovbetyg>",
                            escape(b.as_ref())
                        )?;
                    }
                    for d in delprovsresultat {
                        o.write_all(b"\t\t\t<delprovsresultat>\n")?;
                        match &d.utfall {
                            Utfall::Intedeltagit => o.write_all(b"\t\t\t\t<intedeltagit/>\n")?,
                            Utfall::Borttappat => o.write_all(b"\t\t\t\t<borttappat/>\n")?,
                            Utfall::Resultat {
                                varde,
                                maluppfyllnad,
                            } => {
                                match varde {
                                    Some(Varde::Betyg(b)) => writeln!(
                                        o,
                                        "\t\t\t\t<betyg>{}</betyg>",
                                        escape(b.as_ref())
                                    )?,
                                    Some(Varde::Poang(p)) => {
                                        writeln!(o, "\t\t\t\t<poäng>{p}</poäng>")?
                                    }
                                    None => {}
                                }
                                if let Some(m) = maluppfyllnad {
                                    writeln!(o, "\t\t\t\t<måluppfyllnad>{m}</måluppfyllnad>")?;
                                }
                            }
                        }
                        writeln!(o, "\t\t\t\t<typ>{}</typ>", escape(d.typ.as_ref()))?;
                        o.write_all(b"\t\t\t</delprovsresultat>\n")?;
                    }
                }
            }
            o.write_all("\t\t</provtillfälle>\n".as_bytes())?;
        }
        writeln!(o, "\t</{element}>")
    }

    /// Closes the root and returns the writer.
    pub fn end(mut self) -> io::Result<W> {
        self.out.write_all(b"</provresultat>\n")?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Gives the output back *without* closing the root, for the simulator's faults: a body cut
    /// short or ended with a broken end tag.
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Renders a whole document into memory (tests and small fixtures).
pub fn render_to_string(
    version: &VersionRules,
    from: &str,
    tom: &str,
    records: &[Provomrade],
) -> String {
    let mut w = DocumentWriter::begin(Vec::new(), version, from, tom).expect("writing to a Vec");
    for r in records {
        w.record(r).expect("writing to a Vec");
    }
    String::from_utf8(w.end().expect("writing to a Vec")).expect("we write UTF-8")
}
