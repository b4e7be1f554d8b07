//! Active/passive high availability: two real `nprov-sync run` processes on one PostgreSQL
//! schema and the simulator. Only the leader fetches; when it is killed the standby takes over,
//! and the tables end equal to the platform's state with no window committed twice.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use chrono_tz::Europe::Stockholm;
use nprov_sync::simulate::render_to_string;
use nprov_sync::xml::version::newest;

use crate::daemon::{simulator, value};
use crate::helpers::*;

/// A daemon process, killed when dropped.
struct Instance {
    child: Child,
    metrics: String,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Instance {
    fn start(config: &std::path::Path) -> Instance {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_nprov-sync"))
            .args(["run", "--config"])
            .arg(config)
            .env("NPROV_METRICS_LISTEN", format!("127.0.0.1:{port}"))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start an instance");
        Instance {
            child,
            metrics: format!("http://127.0.0.1:{port}/metrics"),
        }
    }

    async fn scrape(&self) -> String {
        match reqwest::get(&self.metrics).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Scrapes until `ready` holds, at most `limit`; returns the scrape and how long it took.
    async fn until(&self, limit: Duration, ready: impl Fn(&str) -> bool) -> (String, Duration) {
        let started = Instant::now();
        loop {
            let text = self.scrape().await;
            if ready(&text) {
                return (text, started.elapsed());
            }
            assert!(
                started.elapsed() < limit,
                "not reached within {limit:?}; last scrape:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

const LEADER: &str = r#"nprov_leader{source="default"}"#;
const OK_WINDOWS: &str = r#"nprov_sync_windows_total{kind="sync",outcome="ok",source="default"}"#;
const LAG: &str = r#"nprov_sync_lag_seconds{source="default"}"#;

fn requests(text: &str) -> f64 {
    ["2xx", "3xx", "4xx", "5xx", "error"]
        .iter()
        .map(|c| {
            value(
                text,
                &format!(r#"nprov_sync_http_requests_total{{class="{c}",source="default"}}"#),
            )
        })
        .sum()
}

#[tokio::test]
async fn of_two_instances_only_the_leader_syncs_and_the_standby_takes_over_when_it_dies() {
    let backend = Backend::Postgres;
    if !backend
        .available("ha::of_two_instances_only_the_leader_syncs")
        .await
    {
        return;
    }
    let db = backend.fresh().await;

    // A platform whose changes lie in the last three days: a catch-up of about 70 windows.
    let now = Utc::now();
    let (url, platform) = simulator(150, 70, None).await;

    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("nprov.toml");
    let start = (now - chrono::Duration::hours(72))
        .with_timezone(&Stockholm)
        .format("%Y-%m-%dT%H:%M");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{}\"\nschema = \"{}\"\n[daemon]\nfailure_backoff_max = \"1s\"\n\
             [[source]]\nurl = \"{url}\"\nstart = \"{start}\"\nmax_window = \"1h\"\n\
             rate_limit_per_second = 6\nschedule = \"* * * * * *\"\n",
            postgres_url(),
            db.schema()
        ),
    )
    .expect("config");

    let a = Instance::start(&config);
    a.until(Duration::from_secs(30), |t| {
        value(t, LEADER) == 1.0 && value(t, OK_WINDOWS) >= 3.0
    })
    .await;
    let b = Instance::start(&config);
    // B runs, ticks every second, and stands by: it has not sent a single request.
    let (text, _) = b
        .until(Duration::from_secs(30), |t| t.contains("nprov_leader"))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text_b = b.scrape().await;
    assert_eq!(value(&text_b, LEADER), 0.0, "{text}");
    assert_eq!(requests(&text_b), 0.0, "the standby fetched:\n{text_b}");
    let a_text = a.scrape().await;
    assert!(
        value(&a_text, LAG) > 3600.0,
        "A caught up before it could be killed mid-way; make the catch-up longer"
    );

    // The leader dies mid catch-up.
    drop(a);
    let (_, took) = b
        .until(Duration::from_secs(20), |t| value(t, LEADER) == 1.0)
        .await;
    eprintln!("the standby took the lead {took:?} after the leader was killed");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let (text_b, _) = b
        .until(Duration::from_secs(60), |t| {
            let lag = value(t, LAG);
            lag > 0.0 && lag < 600.0
        })
        .await;
    assert!(value(&text_b, OK_WINDOWS) >= 1.0);
    // `status` names the instance that leads, by host and process id.
    let status = Command::new(env!("CARGO_BIN_EXE_nprov-sync"))
        .args(["status", "--json", "--config"])
        .arg(&config)
        .output()
        .expect("status");
    assert!(status.status.success());
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    let leader = json["sources"][0]["leader"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        leader.contains(&format!("pid {}", b.child.id())),
        "{leader}"
    );
    drop(b);

    // No window committed twice.
    let twice = db
        .texts(
            "SELECT from_local, tom_local, COUNT(*) FROM sync_run
             WHERE kind = 'sync' AND outcome = 'ok'
             GROUP BY from_local, tom_local HAVING COUNT(*) > 1",
        )
        .await;
    assert!(twice.is_empty(), "committed twice: {twice:?}");
    // And the mirror is the platform's state, row for row.
    let reference = Backend::Sqlite.fresh().await;
    let xml = render_to_string(
        newest(),
        "2000-01-01T00:00:00",
        "2100-01-01T00:00:00",
        &platform.current_state(Utc::now()),
    );
    import_at(&*reference.store, "default", &xml, at(0))
        .await
        .expect("reference");
    assert_eq!(db.dump().await, reference.dump().await);
}

/// `source rewind` and `source drop` change what the leader works from: they refuse, naming the
/// leader, while another real instance leads the source, and work once it has stopped.
#[tokio::test]
async fn rewind_and_drop_refuse_while_another_instance_leads_the_source() {
    let backend = Backend::Postgres;
    if !backend
        .available("ha::rewind_and_drop_refuse_while_another_instance_leads_the_source")
        .await
    {
        return;
    }
    let db = backend.fresh().await;
    let now = Utc::now();
    let (url, _platform) = simulator(50, 71, None).await;
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("nprov.toml");
    let start = (now - chrono::Duration::hours(6))
        .with_timezone(&Stockholm)
        .format("%Y-%m-%dT%H:%M");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{}\"\nschema = \"{}\"\n[[source]]\nurl = \"{url}\"\n\
             start = \"{start}\"\nschedule = \"* * * * * *\"\n",
            postgres_url(),
            db.schema()
        ),
    )
    .expect("config");
    let cli = |args: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_nprov-sync"));
        command
            .args(args)
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG");
        async move {
            let out = command.output().await.expect("runs");
            (
                out.status.code(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        }
    };

    let a = Instance::start(&config);
    a.until(Duration::from_secs(30), |t| {
        value(t, LEADER) == 1.0 && value(t, OK_WINDOWS) >= 1.0
    })
    .await;
    let to = (now - chrono::Duration::hours(5))
        .with_timezone(&Stockholm)
        .format("%Y-%m-%dT%H:%M")
        .to_string();
    let pid = format!("pid {}", a.child.id());
    for args in [
        vec!["source", "rewind", "default", "--to", to.as_str()],
        vec!["source", "drop", "default", "--yes"],
    ] {
        let (code, text) = cli(&args).await;
        assert_eq!(code, Some(3), "{args:?}: {text}");
        assert!(
            text.contains("source default is being synced by") && text.contains(&pid),
            "{args:?}: {text}"
        );
    }
    // Nothing changed meanwhile but what the leader itself did: the source is still there.
    let (code, text) = cli(&["source", "list"]).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("default: configured") && text.contains(&pid),
        "{text}"
    );

    drop(a);
    let (code, text) = cli(&["source", "rewind", "default", "--to", &to]).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("moved back from") && text.contains(&to),
        "{text}"
    );
    let (code, text) = cli(&["source", "drop", "default", "--yes"]).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("removed source default:"), "{text}");
    assert_eq!(
        db.texts("SELECT CAST(count(*) AS TEXT) FROM sync_watermark")
            .await,
        [["0"]]
    );
}
