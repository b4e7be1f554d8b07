//! Shared by the benches: a generated document, cached in the target directory so repeated runs
//! do not pay for generating it.

use std::path::PathBuf;

// Not every bench measures against the floor.
#[allow(dead_code)]
pub mod floor;

use nprov_sync::simulate::Population;
use nprov_sync::xml::version::newest;

pub const SEED: u64 = 20_261_123;

pub fn population(students: u64) -> Population {
    Population {
        students,
        seed: SEED,
        version: newest(),
        year: 2026,
    }
}

/// A document with every student of the population, generated once per size.
pub fn document(students: u64) -> PathBuf {
    let path =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-{SEED}-{students}.xml"));
    if !path.exists() {
        let tmp = path.with_extension("tmp");
        let out = std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&tmp).expect("create"),
        );
        population(students)
            .write_document(
                out,
                "2026-01-01T00:00:00",
                "2026-12-31T23:59:00",
                0..students,
                |_| 0,
            )
            .expect("generate");
        std::fs::rename(&tmp, &path).expect("rename");
    }
    path
}

/// Peak resident memory of this process so far (VmHWM), in MiB.
#[allow(dead_code)] // used by the import bench only
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
