//! A full catch-up of a simulated school year into SQLite, measured on the real binary.
//!
//! The simulator runs as one child process (`nprov-sync simulate`), the client as another
//! (`nprov-sync sync --once`, then `backfill` over the same range to re-read every window with
//! nothing changed), so the client's figures are its own: wall time, CPU time and peak resident
//! memory (VmHWM, sampled from /proc while it runs), and what it cost the disk: into SQLite the
//! bytes the client process wrote (`write_bytes` of /proc/<pid>/io, read when it has exited and
//! before it is reaped, so the last commit and checkpoint count), into PostgreSQL the WAL the
//! server generated meanwhile (`pg_current_wal_lsn()` before and after). Twice: with
//! `max_window` one day, and with one window for the whole year, which shows whether memory
//! grows with the window.
//!
//! Into SQLite, and into PostgreSQL when one answers at `NPROV_BENCH_POSTGRES_URL` (default the
//! local test server), each in a fresh schema.
//!
//! A second scenario, "realistic platform", puts the simulator at a real platform's pace (250 ms
//! per request, 50 ms per MiB rendered, at most 5 requests per second answered, 429 beyond) and
//! runs the client as shipped (5 requests per second, windows sized by `target_response_bytes`,
//! the next window fetched while the last is written), the same one request at a time
//! (`max_in_flight = 1`), and the same binary configured as the first generation ran (fixed
//! one-day windows, one at a time): wall time, requests, retries, the largest response, peak
//! memory, whether the mirrors hold the same rows, and each run against the platform's bound
//! (rendering its bytes, or answering its requests at the rate limit, plus one latency).
//!
//! A third, "fast platform", runs the client as shipped against the simulator at memory speed and
//! prints its CPU beside the floor of the same work, measured in the same run (see
//! `common/floor.rs`), and what the catch-up wrote to disk beside the database's size.
//!
//! Both the realistic and the fast scenario then run the comparison script,
//! `benches/script/baseline.py` (requests, lxml and sqlite3: what a data team would write
//! instead), over the same year from the same simulator, when the machine's `python3` (or
//! `NPROV_BENCH_PYTHON`) has lxml and requests (`python3 -m pip install lxml requests`).
//!
//! `cargo bench --bench catchup` (200 000 students; `NPROV_BENCH_STUDENTS` to change;
//! `NPROV_BENCH_SCENARIOS=engine,realistic,fast` to choose). Figures are printed, nothing is
//! asserted.

#[path = "common/floor.rs"]
mod floor;

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const START: &str = "2025-08-01T00:00";
const UNTIL: &str = "2026-06-13T00:00";
/// Linux's USER_HZ: /proc reports CPU time in these ticks.
const TICKS_PER_SECOND: f64 = 100.0;

struct Simulator(Child);

impl Drop for Simulator {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

#[derive(Debug)]
struct Measured {
    wall: f64,
    cpu: f64,
    peak_mib: f64,
    /// Provområde elements the run received, summed from its per-window lines.
    records: u64,
    /// Keys found with their content already stored, summed from the same lines: each one
    /// writes nothing.
    unchanged: u64,
    /// Bytes the process caused to be written to storage, over its whole life.
    write_bytes: u64,
    /// Windows committed, HTTP attempts they took, and the largest response, from the same lines.
    windows: u64,
    attempts: u64,
    largest: u64,
    /// Response bytes of the windows committed, summed from the same lines.
    bytes: u64,
    /// What a line `rows N` said: the comparison script's count of its three tables.
    reported_rows: Option<u64>,
}

/// `write_bytes` of /proc/<pid>/io: what the process (all its threads) sent to storage.
fn proc_write_bytes(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether the child has exited, leaving it unreaped (a zombie whose /proc
/// entry still answers); whether it has exited.
fn exited_unreaped(child: &Child) -> bool {
    use rustix::process::{waitid, Pid, WaitId, WaitIdOptions};
    let pid = Pid::from_child(child);
    matches!(
        waitid(
            WaitId::Pid(pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | WaitIdOptions::NOHANG,
        ),
        Ok(Some(_))
    )
}

fn proc_peak_kib(pid: u32) -> Option<f64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn proc_cpu_ticks(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) end at the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ") ".
    Some(fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
}

/// Runs a command to its end, sampling its peak memory and CPU time from /proc.
fn measure(cmd: &mut Command) -> Measured {
    let started = Instant::now();
    let out = tempfile::NamedTempFile::new().expect("temp file");
    // The loop below leaves only through `child.wait()`, after waitid(WNOWAIT) saw it exit,
    // which the lint cannot follow.
    #[allow(clippy::zombie_processes)]
    let mut child = cmd
        .stdout(out.reopen().expect("reopen"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (mut peak, mut ticks) = (0.0f64, 0.0f64);
    let (status, write_bytes) = loop {
        if let Some(p) = proc_peak_kib(pid) {
            peak = peak.max(p);
        }
        if let Some(t) = proc_cpu_ticks(pid) {
            ticks = ticks.max(t);
        }
        if exited_unreaped(&child) {
            // A zombie's /proc still holds its totals: the last ticks and bytes count too.
            if let Some(t) = proc_cpu_ticks(pid) {
                ticks = ticks.max(t);
            }
            let written = proc_write_bytes(pid);
            break (child.wait().expect("wait"), written);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let wall = started.elapsed().as_secs_f64();
    if !status.success() {
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err).ok();
        panic!("{cmd:?} failed: {status}\n{err}");
    }
    // Lines read "… HTTP 200 (2 attempts), v12.0, 123 bytes, 456 records → 7 changed,
    // 449 unchanged, …".
    let output = std::fs::read_to_string(out.path()).unwrap_or_default();
    let (mut records, mut unchanged, mut windows, mut attempts, mut largest) = (0, 0, 0, 0, 0);
    let mut reported_rows = None;
    let mut bytes = 0;
    for line in output.lines() {
        if let Some(n) = line.strip_prefix("rows ") {
            reported_rows = n.trim().parse().ok();
        }
        let Some((head, tail)) = line.split_once(" records → ") else {
            continue;
        };
        let number = |s: Option<&str>| s.and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        records += number(head.rsplit(' ').next());
        unchanged += number(
            tail.split(", ")
                .find_map(|part| part.strip_suffix(" unchanged")),
        );
        windows += 1;
        attempts += number(
            head.split_once(" (")
                .and_then(|(_, rest)| rest.split(' ').next()),
        );
        let body = number(
            head.split(", ")
                .find_map(|part| part.strip_suffix(" bytes")),
        );
        largest = largest.max(body);
        bytes += body;
    }
    Measured {
        wall,
        cpu: ticks / TICKS_PER_SECOND,
        peak_mib: peak / 1024.0,
        records,
        unchanged,
        windows,
        attempts,
        largest,
        bytes,
        reported_rows,
        write_bytes: write_bytes.unwrap_or_else(|| panic!("no /proc/{pid}/io for {cmd:?}")),
    }
}

/// The server's WAL position in bytes, for the WAL a run generated.
fn wal_lsn(url: &str) -> u64 {
    let out = Command::new("psql")
        .args([url, "-Atc", "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"])
        .output()
        .expect("psql");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<f64>()
        .unwrap_or_else(|_| panic!("pg_current_wal_lsn: {out:?}")) as u64
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// The binary, without this bench's own `NPROV_BENCH_*` settings in its environment: the binary
/// refuses `NPROV_…` variables it does not know (a typo in a unit file must not pass silently).
fn nprov(bin: &str) -> Command {
    let mut cmd = Command::new(bin);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("NPROV_BENCH_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

fn start_simulator(bin: &str, students: u64, pace: &[&str]) -> (Simulator, String) {
    let mut child = nprov(bin)
        .args(["simulate", "--listen", "127.0.0.1:0", "--students"])
        .arg(students.to_string())
        .args(pace)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the simulator");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the simulator's first line");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("the simulator prints its URL")
        .trim_end_matches([',', ';'])
        .to_owned();
    (Simulator(child), url)
}

/// Rows of the three mirror tables, from `status --json`, whatever the backend.
fn rows(bin: &str, config: &Path) -> u64 {
    let out = nprov(bin)
        .args(["status", "--json", "--config"])
        .arg(config)
        .output()
        .expect("status");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let t = &v["tables"];
    ["provomrade", "provtillfalle", "delprovsresultat"]
        .iter()
        .map(|k| t[k].as_u64().unwrap_or(0))
        .sum()
}

/// Removes a bench schema (left over, or done with); a failure only leaves it behind.
fn drop_schema(url: &str, schema: &str) {
    Command::new("psql")
        .args([
            url,
            "-qc",
            &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        ])
        .output()
        .ok();
}

fn postgres_reachable(url: &str) -> bool {
    Command::new("psql")
        .args([url, "-Atc", "SELECT 1"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let bin = env!("CARGO_BIN_EXE_nprov-sync");
    let students: u64 = std::env::var("NPROV_BENCH_STUDENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let scenarios =
        std::env::var("NPROV_BENCH_SCENARIOS").unwrap_or_else(|_| "engine,realistic,fast".into());
    if scenarios.split(',').any(|s| s == "engine") {
        engine(bin, students);
    }
    if scenarios.split(',').any(|s| s == "realistic") {
        realistic(bin, students);
    }
    if scenarios.split(',').any(|s| s == "fast") {
        fast(bin, students);
    }
}

/// The platform at memory speed and the client as shipped: the client's CPU for the year beside
/// the floor of the same work in the same run (a bare streaming quick-xml pass over the year's
/// final state, fetched from the simulator as one document, plus the same rows inserted through
/// SQLite's C API), and what the catch-up wrote to disk beside the size of the database it built.
fn fast(bin: &str, students: u64) {
    let (_sim, url) = start_simulator(bin, students, &[]);
    let dir = tempfile::tempdir().expect("dir");
    println!("fast platform (memory speed): catch-up of {students} students ({START} .. {UNTIL})");
    let db = dir.path().join("fast.db");
    let config = dir.path().join("fast.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"sqlite://{}\"\n[[source]]\nurl = \"{url}\"\nstart = \"{START}\"\n",
            db.display()
        ),
    )
    .expect("config");
    let m = measure(
        nprov(bin)
            .args(["sync", "--once", "--until", UNTIL, "--config"])
            .arg(&config),
    );
    let rows = rows(bin, &config);
    // The database is its file and its write-ahead log: a process that ends before SQLite
    // checkpoints leaves the newest pages in `-wal`, and the main file alone then reads as
    // nearly empty (one run printed "for a 0 MB database").
    let size = std::fs::metadata(&db).expect("database").len()
        + std::fs::metadata(db.with_extension("db-wal")).map_or(0, |m| m.len());
    println!(
        "  as shipped: {:.1} s wall, {:.1} s client CPU, {} windows, {} records, largest response \
         {:.1} MB, peak RSS {:.1} MiB, {rows} rows; {:.0} MB written by the process for a {:.0} MB \
         database ({:.1}x)",
        m.wall,
        m.cpu,
        m.windows,
        m.records,
        mb(m.largest),
        m.peak_mib,
        mb(m.write_bytes),
        mb(size),
        m.write_bytes as f64 / size as f64,
    );
    let doc = dir.path().join("year.xml");
    download(&format!("{url}{}", nprov_sync::source::ENDPOINT_PATH), &doc);
    let parse = floor::bare_pass(&doc);
    let table = floor::rows_of(&doc);
    let insert = floor::ceiling(&dir.path().join("floor.db"), &table);
    assert_eq!(insert.rows, rows, "the floor must insert the mirror's rows");
    let floor = parse + insert.seconds;
    println!(
        "  floor: bare quick-xml pass over the year as one document ({:.0} MB) {parse:.1} s + \
         SQLite C-API insert of the same {rows} rows {:.1} s = {floor:.1} s; the client's CPU is \
         {:.2}x the floor",
        mb(std::fs::metadata(&doc).expect("document").len()),
        insert.seconds,
        m.cpu / floor,
    );
    if let Some(s) = script(&url, dir.path(), rows) {
        println!(
            "  the script's CPU is {:.2}x the floor; the client uses {:.1}x less CPU than the \
             script",
            s.cpu / floor,
            s.cpu / m.cpu,
        );
    }
}

/// The comparison script (`benches/script/baseline.py`: requests, lxml and sqlite3, month-long
/// windows one at a time) run over the same year from the same simulator into a fresh file, or
/// `None`, said, when this machine's Python lacks its two packages.
fn script(url: &str, dir: &Path, expected_rows: u64) -> Option<Measured> {
    let python = std::env::var("NPROV_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let ready = Command::new(&python)
        .args(["-c", "import lxml, requests"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        println!(
            "  script: not run ({python} lacks lxml or requests: `{python} -m pip install lxml \
             requests`, or NPROV_BENCH_PYTHON names another interpreter)"
        );
        return None;
    }
    let db = dir.join("script.db");
    let m = measure(
        Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/benches/script/baseline.py"
            ))
            .arg(url)
            .arg(&db)
            .args([START, UNTIL]),
    );
    let rows = m.reported_rows.expect("the script reports its rows");
    println!(
        "  script (requests + lxml + sqlite3, benches/script/baseline.py): {:.1} s wall, {:.1} s \
         CPU, peak RSS {:.1} MiB, {rows} rows ({})",
        m.wall,
        m.cpu,
        m.peak_mib,
        if rows == expected_rows {
            "equal to the client's"
        } else {
            "DIFFER from the client's"
        }
    );
    Some(m)
}

/// The whole year as one response, streamed to a file.
fn download(endpoint: &str, to: &Path) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut response = reqwest::get(format!("{endpoint}?from={START}&tom={UNTIL}"))
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("the year from the simulator");
        let mut file = std::io::BufWriter::new(std::fs::File::create(to).expect("create"));
        while let Some(chunk) = response.chunk().await.expect("body") {
            file.write_all(&chunk).expect("write");
        }
        file.flush().expect("flush");
    });
}

/// The realistic platform's pace: its latency per request, its rendering cost per MiB of body
/// (the simulator's `--render-ms-per-mb` counts MiB), and the requests per second it answers.
const LATENCY_SECONDS: f64 = 0.25;
const RENDER_SECONDS_PER_MIB: f64 = 0.05;
const RATE_LIMIT: f64 = 5.0;

/// The platform at a real one's pace; the client as shipped beside the first generation's fixed
/// one-day windows, into SQLite.
fn realistic(bin: &str, students: u64) {
    let (_sim, url) = start_simulator(
        bin,
        students,
        &[
            "--latency",
            &format!("{}ms", LATENCY_SECONDS * 1000.0),
            "--render-ms-per-mb",
            &format!("{}", RENDER_SECONDS_PER_MIB * 1000.0),
            "--rate-limit",
            &format!("{RATE_LIMIT}"),
        ],
    );
    let dir = tempfile::tempdir().expect("dir");
    println!(
        "realistic platform (250 ms per request, 50 ms per MiB, 5 requests/s): catch-up of \
         {students} students ({START} .. {UNTIL})"
    );
    let mut row_counts = Vec::new();
    for (label, settings) in [
        ("as shipped", ""),
        (
            "as shipped but one request at a time (max_in_flight 1)",
            "max_in_flight = 1\n",
        ),
        (
            "first generation (max_window 1d, target_response_bytes 0, max_in_flight 1)",
            "max_window = \"1d\"\ntarget_response_bytes = 0\nmax_in_flight = 1\n",
        ),
    ] {
        let config = dir
            .path()
            .join(format!("realistic-{}.toml", row_counts.len()));
        std::fs::write(
            &config,
            format!(
                "[database]\nurl = \"sqlite://{}\"\n[[source]]\nurl = \"{url}\"\nstart = \"{START}\"\n{settings}",
                dir.path()
                    .join(format!("realistic-{}.db", row_counts.len()))
                    .display()
            ),
        )
        .expect("config");
        let m = measure(
            nprov(bin)
                .args(["sync", "--once", "--until", UNTIL, "--config"])
                .arg(&config),
        );
        let rows = rows(bin, &config);
        // What this platform needs at least for these windows, however the client behaves: it
        // renders every byte at its pace (or, for many small windows, lets the requests through
        // at its rate: the first at once, each next a 1/rate later), and the last answer waits
        // one latency that nothing overlaps.
        let render = m.bytes as f64 / f64::from(1 << 20) * RENDER_SECONDS_PER_MIB;
        let admitted = m.attempts.saturating_sub(1) as f64 / RATE_LIMIT;
        let bound = render.max(admitted) + LATENCY_SECONDS;
        println!(
            "  {label}: {:.1} s wall, {:.1} s client CPU, {} windows, {} requests ({} retried), \
             largest response {:.1} MB, peak RSS {:.1} MiB, {rows} rows; {:.2}x the platform's \
             bound of {bound:.2} s ({:.1} MB rendered)",
            m.wall,
            m.cpu,
            m.windows,
            m.attempts,
            m.attempts - m.windows,
            mb(m.largest),
            m.peak_mib,
            m.wall / bound,
            mb(m.bytes),
        );
        row_counts.push((m.wall, rows));
    }
    let (baseline, baseline_rows) = row_counts[row_counts.len() - 1];
    if let Some(s) = script(&url, dir.path(), baseline_rows) {
        for (i, (wall, _)) in row_counts.iter().enumerate() {
            println!(
                "  configuration {} / script: {:.3} of the script's wall time",
                i + 1,
                wall / s.wall
            );
        }
    }
    for (i, (wall, rows)) in row_counts[..row_counts.len() - 1].iter().enumerate() {
        println!(
            "  configuration {} / first generation: {:.3} of the wall time ({:.1}x faster); rows {}",
            i + 1,
            wall / baseline,
            baseline / wall,
            if *rows == baseline_rows {
                "equal"
            } else {
                "DIFFER"
            }
        );
    }
}

/// The engine on a platform that answers at memory speed: first sync and unchanged re-sync.
fn engine(bin: &str, students: u64) {
    let (_sim, url) = start_simulator(bin, students, &[]);
    let dir = tempfile::tempdir().expect("dir");
    println!("catch-up of {students} students ({START} .. {UNTIL}) from the simulator at {url}");
    let pg = std::env::var("NPROV_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut backends = vec![("SQLite", None)];
    if postgres_reachable(&pg) {
        backends.push(("PostgreSQL", Some(pg.clone())));
    } else {
        println!("PostgreSQL not reachable at {pg}: SQLite only");
    }
    for (backend, pg_url) in backends {
        for (label, max_window) in [("max_window 1d", "1d"), ("one window for the year", "400d")] {
            let schema = format!("bench_{}", std::process::id());
            let database = match &pg_url {
                None => format!(
                    "url = \"sqlite://{}\"",
                    dir.path()
                        .join(format!("catchup-{max_window}.db"))
                        .display()
                ),
                Some(url) => {
                    drop_schema(url, &schema);
                    format!("url = \"{url}\"\nschema = \"{schema}\"")
                }
            };
            let config = dir.path().join(format!("catchup-{max_window}.toml"));
            // Loopback and a simulator: the politeness limit would only measure itself here.
            std::fs::write(
                &config,
                format!(
                    "[database]\n{database}\n[[source]]\nurl = \"{url}\"\nstart = \"{START}\"\n\
                     max_window = \"{max_window}\"\ntarget_response_bytes = 0\nmax_in_flight = 1\n\
                     rate_limit_per_second = 1000\nrequest_timeout = \"30m\"\n\
                     max_response_bytes = 4294967296\n"
                ),
            )
            .expect("config");
            // Bytes to storage: the process's own for SQLite, the server's WAL for PostgreSQL
            // (the client writes nothing there, the server everything).
            let timed = |args: &[&str]| -> (Measured, u64) {
                let wal0 = pg_url.as_deref().map(wal_lsn);
                let m = measure(nprov(bin).args(args).arg("--config").arg(&config));
                let bytes = match (&pg_url, wal0) {
                    (Some(url), Some(w0)) => wal_lsn(url).saturating_sub(w0),
                    _ => m.write_bytes,
                };
                (m, bytes)
            };
            let (first, first_bytes) = timed(&["sync", "--once", "--until", UNTIL]);
            let rows = rows(bin, &config);
            let (again, again_bytes) = timed(&["backfill", "--from", START, "--to", UNTIL]);
            let what = if pg_url.is_some() {
                "WAL generated"
            } else {
                "bytes written by the process"
            };
            println!(
                "{backend}, {label}: first sync {:.1} s wall, {:.1} s client CPU, {} records = \
                 {:.0} records/s, {rows} rows = {:.0} rows/s, peak RSS {:.1} MiB, {what} {:.1} MB",
                first.wall,
                first.cpu,
                first.records,
                first.records as f64 / first.wall,
                rows as f64 / first.wall,
                first.peak_mib,
                mb(first_bytes),
            );
            println!(
                "{backend}, {label}: re-sync, nothing changed: {:.1} s wall ({:.2} of the first), \
                 {:.1} s client CPU ({:.2} of the first), peak RSS {:.1} MiB, {what} {:.2} MB \
                 ({:.2} % of the first); {} records, {} keys found unchanged",
                again.wall,
                again.wall / first.wall,
                again.cpu,
                again.cpu / first.cpu,
                again.peak_mib,
                mb(again_bytes),
                100.0 * again_bytes as f64 / first_bytes.max(1) as f64,
                again.records,
                again.unchanged
            );
            if let Some(url) = &pg_url {
                drop_schema(url, &schema);
            }
        }
    }
}
