//! `validate` and `import`: documents from files or standard input.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use chrono::Utc;

use super::failure::{io_failure, Failure};
use super::{with_store, Invocation, Open};
use crate::import::{import_document, parse_document, ImportError, ImportReport};
use crate::store::{self, ApplyContext, Store};
use crate::xml::{DocumentError, Item, Limits};

/// A file, or standard input for `-`. Unbuffered: the parser reads in large chunks itself.
fn open_input(path: &Path) -> Result<Box<dyn Read + Send>, Failure> {
    if path == Path::new("-") {
        return Ok(Box::new(std::io::stdin()));
    }
    let f = File::open(path)
        .with_context(|| format!("cannot open {}", path.display()))
        .map_err(Failure::Runtime)?;
    Ok(Box::new(f))
}

#[derive(Debug, clap::Args)]
pub struct Validate {
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

impl Validate {
    pub(super) fn run(self, ctx: &Invocation<'_>, out: &mut dyn Write) -> Result<(), Failure> {
        validate(&self.files, ctx.settings.limits(), out)
    }
}

#[derive(Debug, clap::Args)]
pub struct Import {
    /// The source name written to the `source` column.
    #[arg(long, default_value = store::DEFAULT_SOURCE)]
    source: String,
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

impl Import {
    pub(super) async fn run(
        self,
        ctx: &Invocation<'_>,
        out: &mut dyn Write,
    ) -> Result<(), Failure> {
        let limits = ctx.settings.limits();
        with_store(ctx.settings, Open::Migrated, async |store| {
            import_files(store, &self.source, &self.files, limits, out).await
        })
        .await
    }
}

/// Record errors `validate` prints per document; the rest are counted.
const MAX_RECORD_ERRORS_SHOWN: usize = 100;

fn validate(files: &[PathBuf], limits: Limits, out: &mut dyn Write) -> Result<(), Failure> {
    let mut failed = 0usize;
    for path in files {
        let input = open_input(path)?;
        // A sample of the record errors, not all of them: a document of a million broken
        // records must not cost memory in proportion (the count is in the stats).
        let mut record_errors = Vec::new();
        let result = parse_document(input, limits, |item| {
            if let Item::Quarantined(q) = item {
                if record_errors.len() < MAX_RECORD_ERRORS_SHOWN {
                    record_errors.push(q.error.to_string());
                }
            }
        });
        let name = path.display();
        let (header, stats, doc_error) = (result.header, result.stats, result.error);
        let version = header
            .as_ref()
            .map(|h| format!("{} ({})", h.version.label(), h.version.namespace))
            .unwrap_or_else(|| "unknown version".into());
        let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(io_failure);
        w(
            out,
            format!(
                "{name}: {version}: {} records, {} provtillfällen, {} delprovsresultat, {} record errors, {} warnings",
                stats.records,
                stats.provtillfallen,
                stats.delprovsresultat,
                stats.quarantined,
                stats.warning_count
            ),
        )?;
        for warning in &stats.warnings {
            w(out, format!("  warning: {warning}"))?;
        }
        if stats.warning_count > stats.warnings.len() as u64 {
            w(
                out,
                format!(
                    "  … and {} more warnings",
                    stats.warning_count - stats.warnings.len() as u64
                ),
            )?;
        }
        for ((field, value), n) in &stats.unknown_values {
            w(
                out,
                format!("  unknown {} value {value:?}: {n} times", field.as_str()),
            )?;
        }
        for e in &record_errors {
            w(out, format!("  record error: {e}"))?;
        }
        if stats.quarantined > record_errors.len() as u64 {
            w(
                out,
                format!(
                    "  … and {} more record errors",
                    stats.quarantined - record_errors.len() as u64
                ),
            )?;
        }
        if let Some(e) = &doc_error {
            w(out, format!("  document error: {e}"))?;
        }
        if doc_error.is_some() || !record_errors.is_empty() {
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(Failure::Data(anyhow::anyhow!(
            "{failed} of {} documents have errors",
            files.len()
        )));
    }
    Ok(())
}

async fn import_files(
    store: &dyn Store,
    source: &str,
    files: &[PathBuf],
    limits: Limits,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let mut total = store::ApplySummary::default();
    for path in files {
        let input = open_input(path)?;
        let started = Instant::now();
        let ctx = ApplyContext {
            source: source.to_owned(),
            document: path.display().to_string(),
            now: Utc::now(),
        };
        let report = match import_document(store, input, limits, ctx).await {
            Ok(r) => r,
            Err(ImportError::Document(e)) => {
                let what = describe_document_error(path, &e);
                return Err(Failure::Data(anyhow::anyhow!(what)));
            }
            Err(e) => {
                return Err(Failure::from(e)).map_err(|f| match f {
                    Failure::Runtime(e) => {
                        Failure::Runtime(e.context(format!("importing {}", path.display())))
                    }
                    other => other,
                })
            }
        };
        print_report(out, &path.display().to_string(), &report, started.elapsed())?;
        total.add(&report.summary);
    }
    if files.len() > 1 {
        writeln!(
            out,
            "total: {} records, {} changed, {} unchanged, {} cleared, {} quarantined",
            total.records, total.changed, total.unchanged, total.cleared, total.quarantined
        )
        .map_err(io_failure)?;
    }
    Ok(())
}

fn describe_document_error(path: &Path, e: &DocumentError) -> String {
    format!(
        "{}: {e}; nothing from this document was applied",
        path.display()
    )
}

/// One line per imported document, the same for `import` and `demo`.
pub(crate) fn print_report(
    out: &mut dyn Write,
    name: &str,
    r: &ImportReport,
    elapsed: std::time::Duration,
) -> Result<(), Failure> {
    let s = &r.summary;
    writeln!(
        out,
        "{name}: {}: {} records → {} changed, {} unchanged, {} cleared, {} quarantined ({} rows written, {:.2} s)",
        r.header.version.label(),
        s.records,
        s.changed,
        s.unchanged,
        s.cleared,
        s.quarantined,
        s.rows_written(),
        elapsed.as_secs_f64()
    )
    .map_err(io_failure)?;
    for w in r.stats.warnings.iter().take(5) {
        writeln!(out, "  warning: {w}").map_err(io_failure)?;
    }
    if r.stats.warning_count > 5 {
        writeln!(out, "  … {} warnings in all", r.stats.warning_count).map_err(io_failure)?;
    }
    Ok(())
}
