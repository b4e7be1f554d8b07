//! The `nprov-sync` binary: parse the command line, set up logging, run, and turn the class of a
//! failure into the exit code (see `cli::failure`): 1 bad input data, 2 bad configuration or
//! usage (a database newer than this build included), 3 database or system failure, 4 a source
//! not ready (`status`).

use std::process::ExitCode;

use clap::Parser;
use nprov_sync::cli::{self, Cli};

// jemalloc rather than glibc's malloc: the parse-and-write path allocates and frees many small
// values per record, which jemalloc's thread caches serve for 0.88 of the CPU (see Cargo.toml).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(result) = cli::run_without_settings(&cli, &mut std::io::stdout().lock()) {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(failure) => fail(&failure),
        };
    }
    let settings = match cli::load_settings(&cli) {
        Ok(s) => s,
        Err(failure) => return fail(&failure),
    };
    nprov_sync::telemetry::init(&settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&cli::Failure::Runtime(e.into())),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match runtime.block_on(cli::run(cli, settings, &mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => fail(&failure),
    }
}

fn fail(failure: &cli::Failure) -> ExitCode {
    eprintln!("error: {failure}");
    ExitCode::from(failure.exit_code() as u8)
}
