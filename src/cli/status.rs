//! `status`: per source watermark, lag, leader and latest windows, and the tables' sizes; as text
//! for people or as JSON for scripts, both printed from the same typed snapshot.

use std::io::Write;

use chrono::{DateTime, Utc};

use super::failure::{io_failure, Failure};
use crate::config::Settings;
use crate::store::{RunRow, Store, TableCounts};

/// What `status` reports. Serialized as `status --json` prints it; the field order is the JSON's.
#[derive(serde::Serialize)]
struct Status {
    sources: Vec<SourceStatus>,
    tables: TableCounts,
    #[serde(serialize_with = "rfc3339")]
    at: DateTime<Utc>,
}

#[derive(serde::Serialize)]
struct SourceStatus {
    source: String,
    /// None: a single-instance database (SQLite); otherwise which instance leads, if any.
    leader: Option<String>,
    watermark_local: Option<String>,
    watermark_utc: Option<String>,
    lag_seconds: Option<i64>,
    recent_windows: Vec<RunRow>,
}

fn rfc3339<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339())
}

/// Every configured source, then any other the database knows.
async fn snapshot(store: &dyn Store, settings: &Settings) -> Result<Status, Failure> {
    let runtime = |e: crate::store::StoreError| Failure::Runtime(e.into());
    let mut names: Vec<String> = settings.source.iter().map(|s| s.name.clone()).collect();
    for known in store.known_sources().await.map_err(runtime)? {
        if !names.contains(&known) {
            names.push(known);
        }
    }
    let now = Utc::now();
    let mut sources = Vec::new();
    for name in names {
        let wm = store.watermark(&name).await.map_err(runtime)?;
        let recent_windows = store.recent_runs(&name, 5).await.map_err(runtime)?;
        let leader = store.leader(&name).await.map_err(runtime)?;
        sources.push(SourceStatus {
            leader: leader.map(|l| {
                l.holder
                    .unwrap_or_else(|| "none: no instance leads it".into())
            }),
            watermark_local: wm
                .as_ref()
                .map(|w| w.local.format("%Y-%m-%dT%H:%M").to_string()),
            watermark_utc: wm.as_ref().map(|w| w.utc.to_rfc3339()),
            lag_seconds: wm.as_ref().map(|w| (now - w.utc).num_seconds()),
            recent_windows,
            source: name,
        });
    }
    let tables = store.table_counts().await.map_err(runtime)?;
    Ok(Status {
        sources,
        tables,
        at: now,
    })
}

pub(crate) async fn status(
    store: &dyn Store,
    settings: &Settings,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let status = snapshot(store, settings).await?;
    if json {
        // Through a `Value`, so keys come out as they always have (serde_json's map order).
        let doc = serde_json::to_value(&status).expect("status serializes");
        return writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&doc).expect("JSON values serialize")
        )
        .map_err(io_failure);
    }
    for s in &status.sources {
        let lag = s
            .lag_seconds
            .map(|l| format!("{}h{:02}m", l / 3600, (l % 3600) / 60));
        writeln!(
            out,
            "source {}: watermark {} (lag {})",
            s.source,
            s.watermark_local.as_deref().unwrap_or("not set"),
            lag.as_deref().unwrap_or("-")
        )
        .map_err(io_failure)?;
        if let Some(leader) = &s.leader {
            writeln!(out, "  leader: {leader}").map_err(io_failure)?;
        }
        for r in &s.recent_windows {
            writeln!(
                out,
                "  {} {} {}..{} {} records {} changed {}{}",
                r.finished_at,
                r.kind,
                r.from_local,
                r.tom_local,
                r.outcome,
                r.records,
                r.changed,
                r.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )
            .map_err(io_failure)?;
        }
    }
    let c = &status.tables;
    writeln!(
        out,
        "tables: provomrade {}, provtillfalle {}, delprovsresultat {}, change_log {}, quarantine {}",
        c.provomrade, c.provtillfalle, c.delprovsresultat, c.change_log, c.quarantine
    )
    .map_err(io_failure)?;
    Ok(())
}
