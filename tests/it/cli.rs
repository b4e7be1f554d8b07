//! The real binary: output, exit codes (1 bad data, 2 bad configuration, 3 database/system).

use crate::helpers::fixture;
use std::process::{Command, Output};

fn nprov(args: &[&str], dir: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nprov-sync"))
        .args(args)
        .current_dir(dir)
        .env_remove("NPROV_CONFIG")
        .env_remove("NPROV_DATABASE_URL")
        .env_remove("RUST_LOG")
        .output()
        .expect("the binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn validate_reports_version_and_counts_and_exits_zero_for_a_good_document() {
    let dir = tempfile::tempdir().expect("dir");
    let f = fixture("good/v2.0b.xml");
    let o = nprov(&["validate", f.to_str().expect("utf-8 path")], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("v2.0b (http://pingpong.se/schemas/nationellaprov/v2.0b)"),
        "{out}"
    );
    assert!(out.contains("0 record errors"), "{out}");
}

#[test]
fn validate_prints_each_error_with_its_location_and_exits_one() {
    let dir = tempfile::tempdir().expect("dir");
    let bad = fixture("bad/record-bad-poang.xml");
    let doc = fixture("bad/doc-truncated-open-element.xml");
    let o = nprov(
        &[
            "validate",
            bad.to_str().expect("path"),
            doc.to_str().expect("path"),
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("record error: line "), "{out}");
    assert!(
        out.contains("in <poäng> of elev {a1b2c3d4-0000-4000-8000-000000000102}"),
        "{out}"
    );
    assert!(
        out.contains("document error: line ") && out.contains("truncated"),
        "{out}"
    );
    assert!(out.contains("2 of 2 documents have errors"), "{out}");
}

#[test]
fn import_creates_and_migrates_the_database_and_reimport_changes_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let f = fixture("good/v12.0.xml");
    let f = f.to_str().expect("path");
    let o = nprov(&["import", "--source", "stockholm", f], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        dir.path().join("nprov.db").exists(),
        "default database file"
    );
    let first = text(&o);
    assert!(first.contains(" 0 unchanged"), "{first}");
    let o = nprov(&["import", "--source", "stockholm", f], dir.path());
    let again = text(&o);
    assert!(
        again.contains("0 changed") && again.contains("0 cleared"),
        "{again}"
    );
}

#[test]
fn import_of_a_broken_document_says_nothing_was_applied_and_exits_one() {
    let dir = tempfile::tempdir().expect("dir");
    let f = fixture("bad/doc-doctype-billion-laughs.xml");
    let o = nprov(
        &[
            "import",
            "--database",
            "sqlite://x.db",
            f.to_str().expect("path"),
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("DOCTYPE") && out.contains("nothing from this document was applied"),
        "{out}"
    );
}

#[test]
fn the_shipped_example_configuration_passes_the_check() {
    let dir = tempfile::tempdir().expect("dir");
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let o = nprov(
        &[
            "config",
            "check",
            "--config",
            example.to_str().expect("path"),
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let printed = nprov(&["config", "example"], dir.path());
    assert_eq!(
        String::from_utf8_lossy(&printed.stdout),
        std::fs::read_to_string(example).expect("example")
    );
}

#[test]
fn a_bad_configuration_names_the_key_and_exits_two() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[database]\nurll = \"sqlite://x.db\"\n").expect("write");
    let o = nprov(
        &["config", "check", "--config", cfg.to_str().expect("path")],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("urll"), "{}", text(&o));

    let o = Command::new(env!("CARGO_BIN_EXE_nprov-sync"))
        .args(["config", "check"])
        .env("NPROV_PARSER_MAX_RECORD_BYTES", "many")
        .output()
        .expect("runs");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("NPROV_PARSER_MAX_RECORD_BYTES"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_database_that_cannot_be_opened_exits_three() {
    let dir = tempfile::tempdir().expect("dir");
    let f = fixture("good/v1.1.xml");
    let o = nprov(
        &[
            "import",
            "--database",
            "sqlite:///nonexistent-dir/x.db",
            f.to_str().expect("path"),
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("cannot open the database sqlite:///nonexistent-dir/x.db"),
        "{}",
        text(&o)
    );
}

mod sync_commands {
    use super::*;
    use wiremock::{Mock, MockServer, Request, ResponseTemplate};

    /// What `sync --once --textfile` wrote: the run's series for node_exporter, readable by it,
    /// no process series, and (where promtool is installed, always under CI) a valid exposition.
    fn check_textfile(path: &std::path::Path) {
        use std::os::unix::fs::PermissionsExt;
        let body = std::fs::read_to_string(path).expect("the textfile is written");
        let mode = std::fs::metadata(path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "node_exporter must be able to read it");
        let line = |prefix: &str| -> f64 {
            body.lines()
                .find(|l| l.starts_with(prefix))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {prefix} in\n{body}"))
        };
        assert!(
            line(r#"nprov_sync_windows_total{kind="sync",outcome="ok",source="stockholm"}"#) >= 4.0
        );
        assert_eq!(line(r#"nprov_leader{source="stockholm"}"#), 1.0);
        assert_eq!(
            line(r#"nprov_sync_consecutive_failures{source="stockholm"}"#),
            0.0
        );
        assert!(line(r#"nprov_sync_watermark_timestamp_seconds{source="stockholm"}"#) > 0.0);
        assert!(!body.contains("process_"), "{body}");
        // Only the finished file: no temporary one left beside it.
        let dir = path.parent().expect("dir");
        let leftovers: Vec<_> = std::fs::read_dir(dir)
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        match Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::fs::File::open(path).expect("open"))
            .output()
        {
            Ok(o) => assert!(o.status.success(), "promtool: {}", text(&o)),
            Err(_) => crate::helpers::skip(
                "check_textfile",
                "promtool is not installed (monitoring/check.sh installs it)",
            ),
        }
    }

    fn config(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
        let cfg = dir.join("nprov.toml");
        std::fs::write(
            &cfg,
            format!(
                "[database]\nurl = \"sqlite://{}/db.sqlite\"\n\n[[source]]\nname = \"stockholm\"\nurl = \"{url}\"\nstart = \"2026-01-10T00:00\"\nmax_window = \"6h\"\nrate_limit_per_second = 50\n",
                dir.display()
            ),
        )
        .expect("write config");
        cfg
    }

    fn answering(req: &Request) -> ResponseTemplate {
        let q: std::collections::HashMap<_, _> = req.url.query_pairs().into_owned().collect();
        ResponseTemplate::new(200).set_body_string(crate::helpers::doc(&[crate::helpers::kurs(
            &format!("e-{}", q["from"]),
            "MATMAT01a",
            "GY",
            vec![],
        )]))
    }

    #[tokio::test]
    async fn sync_once_until_catches_up_and_status_reports_the_watermark() {
        let server = MockServer::start().await;
        Mock::given(wiremock::matchers::method("GET"))
            .respond_with(answering)
            .mount(&server)
            .await;
        let dir = tempfile::tempdir().expect("dir");
        let cfg = config(dir.path(), &server.uri());
        let cfg = cfg.to_str().expect("path");
        let textfile = dir.path().join("nprov-sync.prom");
        let o = nprov(
            &[
                "sync",
                "--once",
                "--until",
                "2026-01-11T00:00",
                "--config",
                cfg,
                "--textfile",
                textfile.to_str().expect("path"),
            ],
            dir.path(),
        );
        assert!(o.status.success(), "{}", text(&o));
        let out = text(&o);
        assert!(
            out.contains("stockholm 2026-01-10T00:00..2026-01-10T05:59: HTTP 200"),
            "{out}"
        );
        assert!(
            out.contains("windows synced; watermark 2026-01-11T00:00"),
            "{out}"
        );
        check_textfile(&textfile);

        // Before anything created the database, status says so, exits 3 and creates nothing.
        let elsewhere = tempfile::tempdir().expect("dir");
        let missing = elsewhere.path().join("none.db");
        let o = nprov(
            &[
                "status",
                "--config",
                cfg,
                "--database",
                &format!("sqlite://{}", missing.display()),
            ],
            dir.path(),
        );
        assert_eq!(o.status.code(), Some(3), "{}", text(&o));
        assert!(text(&o).contains("no database at"), "{}", text(&o));
        assert!(!missing.exists());

        let o = nprov(&["status", "--json", "--config", cfg], dir.path());
        assert!(o.status.success(), "{}", text(&o));
        let status: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        assert_eq!(status["sources"][0]["watermark_local"], "2026-01-11T00:00");
        assert_eq!(status["sources"][0]["recent_windows"][0]["outcome"], "ok");
        assert_eq!(status["ready"], true);

        // The same rule as /readyz: a source whose last commit is older than
        // metrics.ready_max_age is not ready, and status exits 4 naming it.
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let o = Command::new(env!("CARGO_BIN_EXE_nprov-sync"))
            .args(["status", "--json", "--config", cfg])
            .current_dir(dir.path())
            .env_remove("NPROV_DATABASE_URL")
            .env("NPROV_METRICS_READY_MAX_AGE", "1s")
            .output()
            .expect("status");
        assert_eq!(o.status.code(), Some(4), "{}", text(&o));
        let status: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        assert_eq!(status["ready"], false);
        assert_eq!(status["sources"][0]["ready"], false);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            stderr.contains("not ready: source stockholm: no window committed for ")
                && stderr.contains("(bound 1s)"),
            "{stderr}"
        );

        let o = nprov(&["config", "check", "--config", cfg], dir.path());
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("source stockholm: "), "{}", text(&o));
    }

    #[tokio::test]
    async fn a_refused_sync_exits_three_and_says_what_to_check() {
        let server = MockServer::start().await;
        Mock::given(wiremock::matchers::method("GET"))
            .respond_with(ResponseTemplate::new(401))
            .mount(&server)
            .await;
        let dir = tempfile::tempdir().expect("dir");
        let cfg = config(dir.path(), &server.uri());
        let o = nprov(
            &[
                "sync",
                "--once",
                "--until",
                "2026-01-10T03:00",
                "--config",
                cfg.to_str().expect("path"),
            ],
            dir.path(),
        );
        assert_eq!(o.status.code(), Some(3), "{}", text(&o));
        let out = text(&o);
        assert!(
            out.contains("HTTP 401") && out.contains("client certificate"),
            "{out}"
        );
        assert!(out.contains("the watermark stays where it was"), "{out}");
    }

    #[tokio::test]
    async fn the_service_serves_health_and_exits_zero_on_sigterm() {
        let server = MockServer::start().await;
        Mock::given(wiremock::matchers::method("GET"))
            .respond_with(answering)
            .mount(&server)
            .await;
        let dir = tempfile::tempdir().expect("dir");
        let cfg = config(dir.path(), &server.uri());
        // Port 0 is not configurable for a listener the test must find, so take a free one.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nprov-sync"))
            .args(["run", "--config"])
            .arg(&cfg)
            .env("NPROV_METRICS_LISTEN", format!("127.0.0.1:{port}"))
            // A day back: a handful of windows.
            .env(
                "NPROV_SOURCE_STOCKHOLM_START",
                (chrono::Utc::now() - chrono::Duration::days(1))
                    .with_timezone(&chrono_tz::Europe::Stockholm)
                    .format("%Y-%m-%dT%H:%M")
                    .to_string(),
            )
            .env_remove("RUST_LOG")
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the service");
        // Wait until it answers and has caught up to now.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let ready = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await;
            if let Ok(r) = ready {
                let text = r.text().await.expect("body");
                let lag = text
                    .lines()
                    .find_map(|l| l.strip_prefix("nprov_sync_lag_seconds{source=\"stockholm\"} "))
                    .and_then(|v| v.parse::<f64>().ok());
                if lag.is_some_and(|l| l > 0.0 && l < 600.0) {
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the service did not catch up"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let pid = child.id().expect("pid").to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(killed.success());
        let out =
            tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
                .await
                .expect("it stops within its grace period")
                .expect("output");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{:?}\n{log}", out.status);
        assert!(
            log.contains("SIGTERM received") && log.contains("stopped"),
            "{log}"
        );
        // Journald-friendly: no colour codes when stderr is not a terminal.
        assert!(!log.contains('\u{1b}'), "{log}");
    }
}

#[test]
fn the_database_file_is_created_for_its_owner_only_unless_configured() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let f = fixture("good/v12.0.xml");
    let f = f.to_str().expect("path");
    let dir = tempfile::tempdir().expect("dir");
    let o = nprov(&["import", "--source", "stockholm", f], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(mode(&dir.path().join("nprov.db")), 0o600);

    let dir = tempfile::tempdir().expect("dir");
    let o = Command::new(env!("CARGO_BIN_EXE_nprov-sync"))
        .args(["import", "--source", "stockholm", f])
        .current_dir(dir.path())
        .env_remove("NPROV_CONFIG")
        .env_remove("NPROV_DATABASE_URL")
        .env_remove("RUST_LOG")
        .env("NPROV_DATABASE_FILE_MODE", "0640")
        .output()
        .expect("the binary runs");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(mode(&dir.path().join("nprov.db")), 0o640);
}

#[test]
fn validate_prints_a_bounded_sample_of_record_errors_and_counts_the_rest() {
    use crate::helpers::{doc, kurs, pt};
    let dir = tempfile::tempdir().expect("dir");
    let records: Vec<_> = (0..300)
        .map(|i| {
            kurs(
                &format!("e-{i}"),
                "MATMAT01a",
                "GY",
                vec![pt("2026-01-10", "A", &[])],
            )
        })
        .collect();
    let broken = doc(&records).replace("2026-01-10", "2026-13-10");
    let path = dir.path().join("broken.xml");
    std::fs::write(&path, broken).expect("write");
    let o = nprov(&["validate", path.to_str().expect("path")], dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("300 record errors"), "{out}");
    assert_eq!(out.matches("  record error: ").count(), 100);
    assert!(out.contains("… and 200 more record errors"), "{out}");
}

#[test]
fn config_check_warns_about_a_password_file_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    let pw = dir.path().join("password");
    std::fs::write(&pw, "hemligt\n").expect("write");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let config = dir.path().join("nprov.toml");
    std::fs::write(
        &config,
        "[[source]]\nname = \"solna\"\nurl = \"https://platform.example.se\"\nstart = \"2026-08-01T00:00\"\nbasic_user = \"kommun\"\npassword_file = \"password\"\n",
    )
    .expect("write");
    let o = nprov(
        &[
            "config",
            "check",
            "--config",
            config.to_str().expect("path"),
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("source.solna.password_file") && out.contains("mode 0644"),
        "{out}"
    );
    assert!(!out.contains("hemligt"), "{out}");
}

#[tokio::test]
async fn sqlite_gives_its_wal_and_shm_files_the_mode_of_the_database_file() {
    use nprov_sync::store::{SqliteStore, Store};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("mirror.db");
    // A clean close removes the WAL: look while the pool holds it open, after a write.
    let store = SqliteStore::connect_with_mode(&format!("sqlite://{}", db.display()), 0o640)
        .await
        .expect("open");
    store.migrate().await.expect("migrate");
    for suffix in ["", "-wal", "-shm"] {
        let path = dir.path().join(format!("mirror.db{suffix}"));
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o640, "{}", path.display());
    }
    store.close().await;
}

/// What the Debian package installs beside the binary: a man page per command and completions
/// for bash, zsh and fish, generated from the clap definition. Checked as far as this machine's
/// tools allow: groff renders every page without a warning, bash parses its completion.
#[test]
fn man_pages_and_completions_generate_from_the_command_line_definition() {
    let dir = tempfile::tempdir().expect("dir");
    let man = dir.path().join("man");
    // A stray NPROV_ variable (an error for every other command) does not stop a packager.
    let o = Command::new(env!("CARGO_BIN_EXE_nprov-sync"))
        .arg("manpages")
        .arg(&man)
        .env("NPROV_NOT_A_SETTING", "1")
        .output()
        .expect("runs");
    assert!(o.status.success(), "{}", text(&o));
    let mut pages: Vec<String> = std::fs::read_dir(&man)
        .expect("man dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for expected in [
        "nprov-sync.1",
        "nprov-sync-run.1",
        "nprov-sync-sync.1",
        "nprov-sync-backfill.1",
        "nprov-sync-status.1",
        "nprov-sync-config.1",
        "nprov-sync-config-check.1",
        "nprov-sync-completions.1",
    ] {
        assert!(
            pages.iter().any(|p| p == expected),
            "{expected} in {pages:?}"
        );
    }
    // Packaging tools are not pages of their own.
    assert!(
        !pages
            .iter()
            .any(|p| p.contains("manpages") || p.contains("help")),
        "{pages:?}"
    );
    let main = std::fs::read_to_string(man.join("nprov-sync.1")).expect("main page");
    assert!(
        main.starts_with(".ie") || main.contains(".TH nprov-sync 1"),
        "{main}"
    );
    for section in [
        "EXIT STATUS",
        "ENVIRONMENT",
        "FILES",
        "SSL_CERT_FILE",
        "/etc/nprov-sync/nprov.toml",
    ] {
        assert!(
            main.contains(section),
            "{section} missing from the main page"
        );
    }
    let check = std::fs::read_to_string(man.join("nprov-sync-config-check.1")).expect("page");
    assert!(
        check.contains("nprov\\-sync\\-config\\-check")
            || check.contains("nprov-sync-config-check")
    );
    if let Ok(groff) = which("groff") {
        for page in &pages {
            let o = Command::new(&groff)
                // -k: UTF-8 input through preconv, as man-db reads pages.
                .args(["-k", "-man", "-Tutf8", "-ww", "-z"])
                .arg(man.join(page))
                .output()
                .expect("groff runs");
            assert!(
                o.status.success() && o.stderr.is_empty(),
                "{page}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    } else {
        crate::helpers::skip("man page rendering", "groff is not installed");
    }

    for (shell, needle) in [
        ("bash", "complete -F _nprov__sync"),
        ("zsh", "#compdef nprov-sync"),
        ("fish", "complete -c nprov-sync"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_nprov-sync"))
            .args(["completions", shell])
            .output()
            .expect("runs");
        assert!(o.status.success(), "{}", text(&o));
        let script = String::from_utf8(o.stdout).expect("utf-8");
        assert!(script.contains(needle), "{shell}: {script}");
        assert!(
            script.contains("backfill") && script.contains("--config"),
            "{shell}"
        );
        if shell == "bash" {
            let file = dir.path().join("nprov-sync.bash");
            std::fs::write(&file, &script).expect("write");
            let o = Command::new("bash")
                .arg("-n")
                .arg(&file)
                .output()
                .expect("bash");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
    }
}

fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or(())
}

/// Pupil ids are personal data: no log line or output at the default level names one (a
/// quarantined element's id is logged at debug only), and `forget` reports counts, not the id.
#[test]
fn pupil_ids_stay_out_of_logs_and_output_and_forget_reports_counts_only() {
    use crate::helpers::{doc, kurs, pt};
    let dir = tempfile::tempdir().expect("dir");
    let id = "hemlig-elev-4711";
    let xml = doc(&[
        kurs(id, "MATMAT01a", "GY", vec![pt("2026-02-28", "A", &[])]),
        kurs(id, "SVESVE01", "GY", vec![pt("2026-01-10", "B", &[])]),
        kurs(
            "annan-elev",
            "MATMAT01a",
            "GY",
            vec![pt("2026-01-10", "C", &[])],
        ),
    ])
    .replace("2026-02-28", "2026-02-30");
    let file = dir.path().join("window.xml");
    std::fs::write(&file, xml).expect("write");
    let db = format!("sqlite://{}", dir.path().join("m.db").display());
    let run = |args: &[&str], rust_log: Option<&str>, stdin: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_nprov-sync"));
        command
            .args(args)
            .args(["--database", &db])
            .current_dir(dir.path())
            .env_remove("NPROV_CONFIG")
            .env_remove("NPROV_DATABASE_URL")
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Some(filter) = rust_log {
            command.env("RUST_LOG", filter);
        }
        let mut child = command.spawn().expect("runs");
        if let Some(text) = stdin {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write stdin");
        } else {
            drop(child.stdin.take());
        }
        child.wait_with_output().expect("output")
    };
    let path = file.to_str().expect("utf-8");

    let o = run(&["import", path], None, None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("1 quarantined"), "{}", text(&o));
    assert!(!text(&o).contains(id), "{}", text(&o));
    // At debug, the quarantined element is logged with its id, for whoever chases it.
    let o = run(&["import", path], Some("nprov_sync=debug"), None);
    assert!(o.status.success(), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("quarantined an element") && stderr.contains(id),
        "{stderr}"
    );

    // Without --yes, forget counts; the output names tables and counts only.
    let o = run(&["forget", "--elev", id], None, None);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("would remove from every source: 1 provomrade, 1 provtillfalle")
            && out.contains("1 quarantine")
            && out.contains("nothing removed"),
        "{out}"
    );
    assert!(!out.contains(id), "{out}");
    // The id from standard input, out of the process list; with --yes it is erased.
    let o = run(
        &[
            "forget",
            "--elev",
            "-",
            "--yes",
            "--reason",
            "ärende 2026-17",
        ],
        None,
        Some(&format!("{id}\n")),
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("removed from every source: 1 provomrade"),
        "{out}"
    );
    assert!(out.contains("brings the data back"), "{out}");
    assert!(!out.contains(id), "{out}");
    let o = run(&["forget", "--elev", id], None, None);
    assert!(
        text(&o).contains("would remove from every source: 0 provomrade"),
        "{}",
        text(&o)
    );

    // Retention, counted and then applied (nothing is old enough here).
    let o = run(&["prune", "--dry-run"], None, None);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    for table in ["sync_run", "quarantine_raw_xml", "quarantine", "change_log"] {
        assert!(
            out.contains(&format!("would prune {table}: 0 (older than ")),
            "{out}"
        );
    }
    let o = run(&["source", "list"], None, None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("default: NOT configured (rows only), watermark none, 1 provomrade rows"),
        "{}",
        text(&o)
    );
}
