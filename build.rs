//! Build-time facts the binary reports: sqlx::migrate!() embeds the migrations (rebuild when they
//! change), and `nprov_build_info` carries the commit and the compiler it was built with.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    // Not NPROV_…: cargo also puts these into the environment of `cargo run` and of tests, and
    // the binary refuses NPROV_… variables that are not settings.
    println!("cargo:rustc-env=BUILD_GIT_REVISION={}", revision());
    println!("cargo:rustc-env=BUILD_RUSTC_VERSION={}", rustc());
}

/// The commit, from git when building a checkout; "unknown" from a source package or a tree
/// without git. Rebuilt when HEAD or the branch it names moves.
fn revision() -> String {
    let git = Path::new(".git");
    if git.is_dir() {
        println!("cargo:rerun-if-changed=.git/HEAD");
        println!("cargo:rerun-if-changed=.git/packed-refs");
        if let Some(reference) = std::fs::read_to_string(git.join("HEAD"))
            .ok()
            .and_then(|head| head.strip_prefix("ref: ").map(|r| r.trim().to_owned()))
        {
            println!("cargo:rerun-if-changed=.git/{reference}");
        }
    }
    output("git", &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
}

/// The compiler's version number ("1.95.0"), from the rustc cargo builds with.
fn rustc() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    output(&rustc, &["--version"])
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// A command's first line of output, when it ran and succeeded.
fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_owned())
}
