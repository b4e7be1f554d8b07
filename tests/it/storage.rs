//! When the database misbehaves: a SQLite file another process has locked (at start-up and
//! during a catch-up), and a database that a newer build migrated further. The service waits
//! for the first and refuses the second before writing anything.

use std::time::{Duration, Instant};

use crate::helpers::*;

const OK_WINDOWS: &str = r#"nprov_sync_windows_total{kind="sync",outcome="ok",source="default"}"#;
const FAILED_WINDOWS: &str =
    r#"nprov_sync_windows_total{kind="sync",outcome="failed",source="default"}"#;

/// Waits until the daemon on `port` exports `series` at `at_least` or more; fails the test with
/// `what` after `limit`.
async fn wait_for_series(port: u16, series: &str, at_least: f64, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    while crate::daemon::value(&metrics(port).await, series) < at_least {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Holds SQLite's write lock on `path` (as a backup, `VACUUM INTO` or an analyst's open write
/// transaction does) until dropped, on a thread of its own.
struct WriteLock {
    release: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WriteLock {
    fn take(path: &std::path::Path) -> WriteLock {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (taken, is_taken) = std::sync::mpsc::channel::<()>();
        let path = path.to_owned();
        let thread = std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&path).expect("open for the lock");
            // The daemon may be in the middle of a window: wait for its commit, as any other
            // writer would (rusqlite's default is not to wait at all).
            conn.busy_timeout(std::time::Duration::from_secs(30))
                .expect("busy timeout");
            conn.execute_batch("BEGIN IMMEDIATE")
                .expect("take the write lock");
            taken.send(()).expect("tell");
            let _ = released.recv();
            conn.execute_batch("ROLLBACK").expect("release the lock");
        });
        is_taken.recv().expect("lock taken");
        WriteLock {
            release: Some(release),
            thread: Some(thread),
        }
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(t) = self.thread.take() {
            t.join().expect("lock thread");
        }
    }
}

/// `run` started while another process holds the SQLite write lock: it does not exit, /readyz
/// answers 503 saying it waits for the database, the log says the database is locked; once the
/// lock is released it migrates and becomes ready. A lock taken again during operation fails
/// only the windows that meet it: the service stays up and syncs again after its back-off.
#[tokio::test]
async fn a_locked_sqlite_at_start_is_waited_for_and_a_lock_during_operation_fails_only_windows() {
    let (sim_url, _platform) = crate::daemon::simulator(200, 30, None).await;
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("nprov.db");
    // A database that exists (the lock needs a file), migrated by an earlier start.
    {
        let store = nprov_sync::store::SqliteStore::connect(&format!("sqlite://{}", db.display()))
            .await
            .expect("open");
        nprov_sync::store::Store::migrate(&store)
            .await
            .expect("migrate");
        nprov_sync::store::Store::close(&store).await;
    }
    let port = free_port();
    let cfg = dir.path().join("nprov.toml");
    let start = (chrono::Utc::now() - chrono::Duration::hours(30))
        .with_timezone(&chrono_tz::Europe::Stockholm)
        .format("%Y-%m-%dT%H:%M");
    std::fs::write(
        &cfg,
        format!(
            "[database]\nurl = \"sqlite://{}\"\nbusy_timeout = \"1s\"\n\
             [daemon]\nstartup_database_wait = \"2m\"\nfailure_backoff_max = \"1s\"\nshutdown_grace = \"10s\"\n\
             [metrics]\nlisten = \"127.0.0.1:{port}\"\n\
             [[source]]\nurl = \"{sim_url}\"\nstart = \"{start}\"\nmax_window = \"6h\"\nrate_limit_per_second = 50\nschedule = \"* * * * * *\"\n",
            db.display()
        ),
    )
    .expect("config");
    let lock = WriteLock::take(&db);
    let mut child = spawn_run(&cfg);
    // Waiting: 503 naming the lock, and still running well past one busy timeout.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((503, body)) = readyz(port).await {
            if body.contains("locked") {
                assert!(body.contains("waiting for the database"), "{body}");
                break;
            }
        }
        assert!(Instant::now() < deadline, "no 503 naming the lock");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        child.try_wait().expect("wait").is_none(),
        "exited while the lock was held"
    );
    drop(lock);
    wait_for_series(
        port,
        OK_WINDOWS,
        1.0,
        Duration::from_secs(60),
        "no window after the lock went",
    )
    .await;
    // During operation: a lock held for a few runs fails those windows, not the process.
    let lock = WriteLock::take(&db);
    wait_for_series(
        port,
        FAILED_WINDOWS,
        1.0,
        Duration::from_secs(30),
        "no failed window under the lock",
    )
    .await;
    assert!(
        child.try_wait().expect("wait").is_none(),
        "exited under the lock"
    );
    drop(lock);
    let ok_before = crate::daemon::value(&metrics(port).await, OK_WINDOWS);
    wait_for_series(
        port,
        OK_WINDOWS,
        ok_before + 1.0,
        Duration::from_secs(30),
        "no window after the second lock went",
    )
    .await;
    let log = stop_run(child).await;
    assert!(
        log.contains("the database is locked by another process"),
        "{log}"
    );
}

/// The version a newer build's migration would have.
const FUTURE: i64 = 20991231000001;

/// Marks `db` as migrated by a newer build, and leaves a sentinel where this build's migration
/// would write (the data contract): if it is still there, nothing was written.
async fn from_the_future(db: &Db) {
    db.execute(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ({FUTURE}, 'from a newer build', TRUE, {}, 1)",
        match db.backend() {
            Backend::Sqlite => "X'00'",
            Backend::Postgres => "'\\x00'::bytea",
        }
    ))
    .await
    .expect("a newer migration");
    match db.backend() {
        Backend::Sqlite => {
            db.execute(
                "INSERT INTO data_contract (object, column_name, description) \
                 VALUES ('sentinel', NULL, 'untouched')",
            )
            .await
            .expect("sentinel");
        }
        Backend::Postgres => {
            db.execute("COMMENT ON TABLE provomrade IS 'untouched'")
                .await
                .expect("sentinel");
        }
    }
}

async fn untouched(db: &Db) -> bool {
    let sql = match db.backend() {
        Backend::Sqlite => "SELECT description FROM data_contract WHERE object = 'sentinel'",
        Backend::Postgres => "SELECT obj_description('provomrade'::regclass, 'pg_class')",
    };
    db.texts(sql).await == vec![vec!["untouched".to_string()]]
}

/// A database a newer nprov-sync migrated is refused before anything is written, by the store
/// and by every command (exit 2, naming both schema versions and what to do); `status` says so.
async fn a_database_newer_than_the_build_is_refused_before_anything_is_written(backend: Backend) {
    let db = backend.fresh().await;
    from_the_future(&db).await;
    let e = db.store.migrate().await.expect_err("refused");
    let text = e.to_string();
    assert!(
        text.contains(&FUTURE.to_string()) && text.contains("this build knows up to 2026"),
        "{text}"
    );
    assert!(
        text.contains("Run the newer version, or restore a backup"),
        "{text}"
    );
    let schema = db.store.schema_state().await.expect("state");
    assert!(schema.newer(), "{schema:?}");
    assert!(untouched(&db).await);
    // The commands, as an operator meets them.
    let dir = tempfile::tempdir().expect("dir");
    let cfg = dir.path().join("nprov.toml");
    std::fs::write(
        &cfg,
        format!(
            "[database]\nurl = \"{}\"\nschema = \"{}\"\n[[source]]\nurl = \"http://127.0.0.1:9\"\nstart = \"2026-01-05T00:00\"\n",
            db.url(),
            db.schema_or_empty()
        ),
    )
    .expect("config");
    for args in [
        vec!["migrate"],
        vec!["status"],
        vec!["source", "list"],
        vec!["sync", "--once"],
        vec!["run"],
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_nprov-sync"))
            .args(&args)
            .args(["--config", cfg.to_str().expect("path")])
            .env_remove("NPROV_DATABASE_URL")
            .output()
            .await
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("written by a newer nprov-sync")
                && stderr.contains(&FUTURE.to_string()),
            "{args:?}: {stderr}"
        );
    }
    assert!(untouched(&db).await);
}

/// `status` shows how the schema stands: this build's newest migration applied, nothing pending.
async fn status_shows_the_schema_against_the_build(backend: Backend) {
    let db = backend.fresh().await;
    let state = db.store.schema_state().await.expect("state");
    assert_eq!(state.pending, 0);
    assert_eq!(state.applied, Some(state.known));
    assert!(!state.newer());
}

for_each_backend!(
    a_database_newer_than_the_build_is_refused_before_anything_is_written,
    status_shows_the_schema_against_the_build,
    a_first_generation_database_is_upgraded_with_its_history_kept,
);

/// A small filesystem of its own (tmpfs, so root only), unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u32) -> Result<SmallDisk, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(SmallDisk { dir })
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fills the disk but for `left` bytes, with a file that [`SmallDisk::make_room`] removes.
    fn fill(&self, left: u64) {
        let free = rustix::fs::statvfs(self.path()).expect("statvfs");
        let free = free.f_bavail * free.f_frsize;
        let ballast = free.saturating_sub(left);
        let file = std::fs::File::create(self.path().join("ballast")).expect("ballast");
        // Written, not sparse: tmpfs counts only the pages that hold data.
        let chunk = vec![0x55u8; 1 << 16];
        let mut w = std::io::BufWriter::new(file);
        let mut written = 0u64;
        while written < ballast {
            let n = chunk.len().min((ballast - written) as usize);
            std::io::Write::write_all(&mut w, &chunk[..n]).expect("fill");
            written += n as u64;
        }
        std::io::Write::flush(&mut w).expect("flush");
    }

    fn make_room(&self) {
        std::fs::remove_file(self.path().join("ballast")).expect("remove ballast");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// SQLite on a full disk: `sync --once` fails at once saying so (exit 3), the file passes
/// `integrity_check` with the watermark where it was; the daemon on the same full disk stays up,
/// counts its failed windows and, once there is room, catches up by itself to the platform.
#[tokio::test]
async fn a_full_disk_fails_a_sync_at_once_and_the_daemon_catches_up_once_there_is_room() {
    let test =
        "storage::a_full_disk_fails_a_sync_at_once_and_the_daemon_catches_up_once_there_is_room";
    if !rustix::process::geteuid().is_root() {
        skip(test, "mounting a small tmpfs needs root");
        return;
    }
    let disk = match SmallDisk::mount(32) {
        Ok(d) => d,
        Err(e) => {
            skip(test, &format!("cannot mount a tmpfs: {e}"));
            return;
        }
    };
    let (sim_url, platform) = crate::daemon::simulator(3000, 20 * 24, None).await;
    let db = disk.path().join("nprov.db");
    let url = format!("sqlite://{}", db.display());
    {
        let store = nprov_sync::store::SqliteStore::connect(&url)
            .await
            .expect("open");
        nprov_sync::store::Store::migrate(&store)
            .await
            .expect("migrate");
        nprov_sync::store::Store::close(&store).await;
    }
    disk.fill(256 << 10);
    let port = free_port();
    let cfg_dir = tempfile::tempdir().expect("config dir");
    let cfg = cfg_dir.path().join("nprov.toml");
    let start = (chrono::Utc::now() - chrono::Duration::hours(20 * 24))
        .with_timezone(&chrono_tz::Europe::Stockholm)
        .format("%Y-%m-%dT%H:%M");
    std::fs::write(
        &cfg,
        format!(
            "[database]\nurl = \"{url}\"\n\
             [daemon]\nfailure_backoff_max = \"1s\"\nshutdown_grace = \"10s\"\n\
             [metrics]\nlisten = \"127.0.0.1:{port}\"\n\
             [[source]]\nurl = \"{sim_url}\"\nstart = \"{start}\"\nrate_limit_per_second = 50\nschedule = \"* * * * * *\"\n"
        ),
    )
    .expect("config");
    let began = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_nprov-sync"))
        .args(["sync", "--once", "--config", cfg.to_str().expect("path")])
        .env_remove("NPROV_DATABASE_URL")
        .output()
        .await
        .expect("sync");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("full"), "{stderr}");
    assert!(
        began.elapsed() < Duration::from_secs(60),
        "{:?}",
        began.elapsed()
    );
    {
        let conn = rusqlite::Connection::open(&db).expect("open");
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(check, "ok");
    }
    // The daemon on the same full disk.
    let mut child = spawn_run(&cfg);
    wait_for_series(
        port,
        FAILED_WINDOWS,
        2.0,
        Duration::from_secs(60),
        "no failed windows on a full disk",
    )
    .await;
    assert!(
        child.try_wait().expect("wait").is_none(),
        "exited on a full disk"
    );
    disk.make_room();
    let now = chrono::Utc::now();
    let expected = crate::simulated::reference(&platform, now).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let store = nprov_sync::store::SqliteStore::connect(&url)
            .await
            .expect("open");
        let got = dump(&store).await;
        nprov_sync::store::Store::close(&store).await;
        if got == expected {
            break;
        }
        if Instant::now() > deadline {
            child.start_kill().expect("kill");
            let out = child.wait_with_output().await.expect("output");
            panic!(
                "not caught up two minutes after there was room ({} rows of {}):\n{}",
                got.len(),
                expected.len(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop_run(child).await;
}

/// The first generation's migrations (before the replace engine of 2026-12-01), as a migrator
/// of their own: what a database made by the first release holds.
async fn first_generation(backend: Backend) -> (sqlx::migrate::Migrator, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(match backend {
        Backend::Sqlite => "migrations/sqlite",
        Backend::Postgres => "migrations/postgres",
    });
    for entry in std::fs::read_dir(&from).expect("migrations") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.as_str() < "20261201" {
            std::fs::copy(entry.path(), dir.path().join(&name)).expect("copy");
        }
    }
    let migrator = sqlx::migrate::Migrator::new(dir.path())
        .await
        .expect("first-generation migrator");
    (migrator, dir)
}

/// A database the first release made and wrote (a provområde with its change_log entry, a
/// committed window and the watermark) is taken over by this build: migrated, its history kept,
/// and synced on to equal the platform.
async fn a_first_generation_database_is_upgraded_with_its_history_kept(backend: Backend) {
    let db = backend.empty().await;
    let (first, _dir) = first_generation(backend).await;
    db.run_migrator(&first).await;
    let ts = |s: &str| match backend {
        Backend::Sqlite => format!("'{s}'"),
        Backend::Postgres => format!("TIMESTAMPTZ '{s}'"),
    };
    let local = |s: &str| match backend {
        Backend::Sqlite => format!("'{s}'"),
        Backend::Postgres => format!("TIMESTAMP '{s}'"),
    };
    for sql in [
        format!(
            "INSERT INTO provomrade (source, elev, kind, kurs, namespace, content_sha256, changed_at, synced_at) \
             VALUES ('default', 'e-old', 'kurs', 'MATMAT01a', 'http://www.pingpong.se/nationellaprov/v12.0', 'abc', {}, {})",
            ts("2026-01-05T10:00:00.000000Z"),
            ts("2026-01-05T10:00:00.000000Z")
        ),
        "INSERT INTO provtillfalle (provomrade_id, ordinal, skolform, uppdaterat, intedeltagit, sammanvagt_provbetyg) \
         VALUES ((SELECT id FROM provomrade WHERE elev = 'e-old'), 0, 'GY', '2026-01-05', FALSE, 'C')"
            .to_string(),
        format!(
            "INSERT INTO change_log (provomrade_id, op, at) VALUES ((SELECT id FROM provomrade WHERE elev = 'e-old'), 'upsert', {})",
            ts("2026-01-05T10:00:00.000000Z")
        ),
        format!(
            "INSERT INTO sync_run (source, kind, from_local, tom_local, from_utc, tom_utc, started_at, finished_at, outcome, http_status, records, changed) \
             VALUES ('default', 'sync', {}, {}, {}, {}, {}, {}, 'ok', 200, 1, 1)",
            local("2026-01-05T00:00"),
            local("2026-01-05T12:00"),
            ts("2026-01-04T23:00:00.000000Z"),
            ts("2026-01-05T11:00:00.000000Z"),
            ts("2026-01-05T11:00:01.000000Z"),
            ts("2026-01-05T11:00:02.000000Z")
        ),
    ] {
        db.execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let history_before = db.change_log().await;
    db.store.migrate().await.expect("upgrade");
    let state = db.store.schema_state().await.expect("state");
    assert_eq!((state.pending, state.applied), (0, Some(state.known)));
    // History kept: the window and the change_log entry of the first release.
    assert_eq!(db.change_log().await, history_before);
    assert_eq!(history_before, vec!["e-old MATMAT01a upsert".to_string()]);
    assert_eq!(
        db.runs().await,
        vec!["sync 2026-01-05T00:00..2026-01-05T12:00 ok 1".to_string()]
    );
    // And the mirror goes on: a document replaces the old pupil's set and adds a new one.
    let next = doc(&[
        kurs("e-old", "MATMAT01a", "GY", vec![pt("2026-01-10", "A", &[])]),
        kurs("e-new", "MATMAT01a", "GY", vec![pt("2026-01-10", "B", &[])]),
    ]);
    import_at(db.store.as_ref(), "default", &next, at(3))
        .await
        .expect("import after the upgrade");
    let reference = backend.fresh().await;
    import_at(reference.store.as_ref(), "default", &next, at(3))
        .await
        .expect("reference");
    assert_eq!(db.dump().await, reference.dump().await);
    let log = db.change_log().await;
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(log[0], "e-old MATMAT01a upsert");
}
