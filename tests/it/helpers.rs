//! Shared test plumbing: throwaway databases of either backend, documents built from domain
//! values, table dumps that read the same on both backends.

use chrono::{NaiveDate, TimeZone, Utc};
use nprov_sync::domain::*;
use nprov_sync::import::{import_document, ImportError, ImportReport};
use nprov_sync::simulate::render_to_string;
use nprov_sync::store::{redact_url, ApplyContext, PostgresStore, SqliteStore, Store};
use nprov_sync::xml::version::{newest, VersionRules};
use nprov_sync::xml::Limits;
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;
use sqlx::{Connection, Row};

/// A migrated SQLite database in its own temporary directory, removed on drop.
pub struct TestDb {
    pub store: SqliteStore,
    _dir: tempfile::TempDir,
}

pub async fn fresh_sqlite() -> TestDb {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let store = SqliteStore::connect(&url).await.expect("open sqlite");
    store.migrate().await.expect("migrate");
    TestDb { store, _dir: dir }
}

/// Whether this is a CI run, where a missing prerequisite is a failure, never a silent skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Says a test is skipped for a missing prerequisite; under CI that fails the test instead.
pub fn skip(test: &str, why: &str) {
    assert!(!in_ci(), "{test}: {why}, and CI=true requires it");
    // Straight to the process's stderr: the test harness captures `eprintln!` of passing tests,
    // which would hide the skip in a plain `cargo test`.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("SKIP {test}: {why}\n").as_bytes(),
    );
}

/// The vendor's folder, when this checkout has `../shared` beside it.
pub fn vendor_spec_dir() -> Option<std::path::PathBuf> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/spec/nationellaprov");
    p.is_dir().then_some(p)
}

/// Whether `xmllint` (libxml2-utils) can be run.
pub fn xmllint_available() -> bool {
    std::process::Command::new("xmllint")
        .arg("--version")
        .output()
        .is_ok()
}

/// `xmllint --noout --schema XSD FILE`: `Err` with xmllint's report when the file is not valid.
pub fn xmllint_validate(xsd: &std::path::Path, file: &std::path::Path) -> Result<(), String> {
    let out = std::process::Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(xsd)
        .arg(file)
        .output()
        .expect("xmllint runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub fn fixture(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

pub fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("test date")
}

pub fn amne(
    elev: &str,
    amne: &str,
    arskurs: i64,
    skolform: &str,
    pts: Vec<Provtillfalle>,
) -> Provomrade {
    Provomrade {
        key: ProvomradeKey {
            elev: elev.into(),
            omrade: Omrade::Amne {
                amne: amne.into(),
                arskurs: Arskurs::try_from(arskurs).expect("3, 6 or 9"),
            },
        },
        skolform: skolform.to_string().into(),
        provtillfallen: pts,
    }
}

pub fn kurs(elev: &str, kurs: &str, skolform: &str, pts: Vec<Provtillfalle>) -> Provomrade {
    Provomrade {
        key: ProvomradeKey {
            elev: elev.into(),
            omrade: Omrade::Kurs { kurs: kurs.into() },
        },
        skolform: skolform.to_string().into(),
        provtillfallen: pts,
    }
}

/// A provtillfälle with a sammanvägt provbetyg and one delprov per (typ, betyg).
pub fn pt(uppdaterat: &str, sammanvagt: &str, delprov: &[(&str, &str)]) -> Provtillfalle {
    Provtillfalle {
        uppdaterat: date(uppdaterat),
        genomfort: None,
        resultat: ProvtillfalleResultat::Resultat {
            sammanvagt_provbetyg: Some(sammanvagt.to_string().into()),
            delprovsresultat: delprov
                .iter()
                .map(|(typ, betyg)| Delprovsresultat {
                    typ: typ.to_string().into(),
                    utfall: Utfall::Resultat {
                        varde: Some(Varde::Betyg(betyg.to_string().into())),
                        maluppfyllnad: None,
                    },
                })
                .collect(),
        },
    }
}

pub fn doc(records: &[Provomrade]) -> String {
    doc_in(newest(), records)
}

pub fn doc_in(version: &VersionRules, records: &[Provomrade]) -> String {
    render_to_string(
        version,
        "2026-01-01T00:00:00",
        "2026-01-02T00:00:00",
        records,
    )
}

/// The window covering two UTC instants (RFC 3339), in Stockholm time.
pub fn window(from: &str, tom: &str) -> nprov_sync::window::Window {
    let t = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    };
    nprov_sync::window::covering(chrono_tz::Europe::Stockholm, t(from), t(tom))
}

/// A `sync_run` of source `default` for a window, as the sync engine records one.
pub fn sync_run(
    kind: nprov_sync::store::RunKind,
    window: nprov_sync::window::Window,
    summary: nprov_sync::store::ApplySummary,
    expected_watermark: Option<chrono::DateTime<Utc>>,
) -> nprov_sync::store::SyncRun {
    nprov_sync::store::SyncRun {
        expected_watermark,
        source: "default".into(),
        kind,
        window,
        tz: chrono_tz::Europe::Stockholm,
        started_at: at(1),
        finished_at: at(2),
        http_status: Some(200),
        bytes: 123,
        summary,
        error: None,
    }
}

/// A fixed clock per step, so changed_at/synced_at can be asserted.
pub fn at(minute: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, minute, 0)
        .single()
        .expect("valid time")
}

pub async fn import_at(
    store: &dyn Store,
    source: &str,
    xml: &str,
    now: chrono::DateTime<Utc>,
) -> Result<ImportReport, ImportError> {
    let ctx = ApplyContext {
        source: source.into(),
        document: "test".into(),
        now,
    };
    import_document(
        store,
        std::io::Cursor::new(xml.as_bytes().to_vec()),
        Limits::default(),
        ctx,
    )
    .await
}

/// Records as the scanner hands them to a store: rendered into a document, scanned and built.
pub fn scan_elements(
    records: &[Provomrade],
) -> (
    std::sync::Arc<nprov_sync::xml::DocContext>,
    Vec<nprov_sync::xml::Element>,
) {
    let xml = doc(records);
    let mut scanner =
        nprov_sync::xml::Scanner::new(std::io::Cursor::new(xml.into_bytes()), Limits::default())
            .expect("a document");
    let ctx = scanner.context().clone();
    let mut out = Vec::new();
    while let Some(s) = scanner.next_element().expect("well-formed") {
        match s {
            nprov_sync::xml::Scanned::Element(e) => out.push(e),
            nprov_sync::xml::Scanned::Quarantined(q) => panic!("quarantined: {}", q.error),
        }
    }
    (ctx, out)
}

/// Every row of a SQLite mirror as text (see [`Db::dump`]).
pub async fn dump(store: &SqliteStore) -> Vec<String> {
    Pool::Sqlite(store.pool().clone()).dump().await
}

/// A database backend the behavioural suite runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server the tests use: `NPROV_TEST_POSTGRES_URL`, or the local one.
pub fn postgres_url() -> String {
    std::env::var("NPROV_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

impl Backend {
    /// Whether the test can run. PostgreSQL may be missing on a developer's machine: the test
    /// then says it skipped (and fails under CI=true, where PostgreSQL is required).
    pub async fn available(self, test: &str) -> bool {
        match self {
            Backend::Sqlite => true,
            Backend::Postgres => match postgres_reachable().await {
                Ok(()) => true,
                Err(e) => {
                    skip(
                        test,
                        &format!(
                            "PostgreSQL not reachable at {} ({e}); set NPROV_TEST_POSTGRES_URL",
                            redact_url(&postgres_url())
                        ),
                    );
                    false
                }
            },
        }
    }

    /// A fresh database with no migration applied yet (a PostgreSQL schema that exists and is
    /// empty), for tests of upgrades.
    pub async fn empty(self) -> Db {
        match self {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                let store = SqliteStore::connect(&url).await.expect("open sqlite");
                Db {
                    pool: Pool::Sqlite(store.pool().clone()),
                    store: Box::new(store),
                    _guard: Guard::Dir(dir),
                }
            }
            Backend::Postgres => {
                let schema = format!("t_{:016x}", rand::random::<u64>());
                let guard = SchemaGuard {
                    url: postgres_url(),
                    app: format!("nprov-test-{schema}"),
                    schema,
                };
                let store = guard.connect("").await;
                sqlx::query(&format!("CREATE SCHEMA \"{}\"", guard.schema))
                    .execute(store.pool())
                    .await
                    .expect("create schema");
                Db {
                    pool: Pool::Postgres(store.pool().clone()),
                    store: Box::new(store),
                    _guard: Guard::Schema(guard),
                }
            }
        }
    }

    /// A fresh, migrated database: a SQLite file in a temporary directory, or a PostgreSQL
    /// schema of its own; either is removed when the [`Db`] is dropped.
    pub async fn fresh(self) -> Db {
        let db = self.empty().await;
        db.store.migrate().await.expect("migrate");
        db
    }
}

async fn postgres_reachable() -> Result<(), String> {
    let connect = sqlx::postgres::PgConnection::connect(&postgres_url());
    match tokio::time::timeout(std::time::Duration::from_secs(5), connect).await {
        Ok(Ok(c)) => {
            c.close().await.ok();
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 5 s".into()),
    }
}

/// Writes the test once and runs it against each backend, as `sqlite::NAME` and
/// `postgres::NAME`; each test is an `async fn NAME(backend: Backend)` in the calling module.
macro_rules! for_each_backend {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    let backend = $crate::helpers::Backend::Postgres;
                    if backend.available(concat!(module_path!(), "::", stringify!($test))).await {
                        super::$test(backend).await
                    }
                }
            )*
        }
    };
}
pub(crate) use for_each_backend;

/// A fresh database of either backend; gone when dropped.
pub struct Db {
    // Fields drop in order: the store's connections before the schema they use.
    pub store: Box<dyn Store>,
    pool: Pool,
    _guard: Guard,
}

enum Guard {
    Dir(tempfile::TempDir),
    Schema(SchemaGuard),
}

/// Read access for dumps, on whichever backend.
#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// How a column should read as text, the same on both backends.
#[derive(Clone, Copy, Debug)]
pub enum Col {
    Text,
    Int,
    /// `yyyy-mm-dd`.
    Date,
    /// 0 or 1.
    Bool,
    /// RFC 3339, UTC, microseconds, `Z`: SQLite's stored form.
    Timestamp,
    /// `yyyy-mm-ddTHH:MM`: local wall-clock times (`from_local`, `watermark_local`).
    Local,
    /// Bytes as upper-case hex.
    Blob,
}

impl Db {
    /// Every row of the mirror as text, keyed by natural keys rather than ids, in a stable order.
    pub async fn dump(&self) -> Vec<String> {
        self.pool.dump().await
    }

    /// change_log as "elev omrade op" in seq order.
    pub async fn change_log(&self) -> Vec<String> {
        self.texts(
            "SELECT p.elev, COALESCE(p.amne || '/' || CAST(p.arskurs AS TEXT), p.kurs), c.op
             FROM change_log c JOIN provomrade p ON p.id = c.provomrade_id ORDER BY c.seq",
        )
        .await
        .into_iter()
        .map(|r| r.join(" "))
        .collect()
    }

    /// sync_run as "kind from..tom outcome records" in id order.
    pub async fn runs(&self) -> Vec<String> {
        self.texts(&format!(
            "SELECT kind, {}, {}, outcome, {} FROM sync_run ORDER BY id",
            self.col("from_local", Col::Local),
            self.col("tom_local", Col::Local),
            self.col("records", Col::Int)
        ))
        .await
        .into_iter()
        .map(|r| format!("{} {}..{} {} {}", r[0], r[1], r[2], r[3], r[4]))
        .collect()
    }

    /// An SQL expression reading `column` as text of the given kind, the same on both backends.
    pub fn col(&self, column: &str, kind: Col) -> String {
        match (&self.pool, kind) {
            (_, Col::Text) => column.to_owned(),
            (Pool::Sqlite(_), Col::Blob) => format!("hex({column})"),
            (Pool::Postgres(_), Col::Blob) => format!("upper(encode({column}, 'hex'))"),
            (Pool::Sqlite(_), _) => format!("CAST({column} AS TEXT)"),
            (Pool::Postgres(_), Col::Int) => format!("CAST({column} AS TEXT)"),
            (Pool::Postgres(_), Col::Bool) => format!("CAST(CAST({column} AS INTEGER) AS TEXT)"),
            (Pool::Postgres(_), Col::Date) => format!("to_char({column}, 'YYYY-MM-DD')"),
            (Pool::Postgres(_), Col::Timestamp) => {
                format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
            }
            (Pool::Postgres(_), Col::Local) => {
                format!("to_char({column}, 'YYYY-MM-DD\"T\"HH24:MI')")
            }
        }
    }

    /// Runs a query whose columns are all text (see [`Db::col`]); NULL reads as `NULL`.
    pub async fn texts(&self, sql: &str) -> Vec<Vec<String>> {
        let text = |v: Option<String>| v.unwrap_or_else(|| "NULL".into());
        match &self.pool {
            Pool::Sqlite(p) => sqlx::query(sql)
                .fetch_all(p)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .iter()
                .map(|r| (0..r.len()).map(|i| text(r.get(i))).collect())
                .collect(),
            Pool::Postgres(p) => sqlx::query(sql)
                .fetch_all(p)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .iter()
                .map(|r| (0..r.len()).map(|i| text(r.get(i))).collect())
                .collect(),
        }
    }

    /// Runs a statement without parameters.
    pub async fn execute(&self, sql: &str) -> Result<u64, sqlx::Error> {
        match &self.pool {
            Pool::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
            Pool::Postgres(p) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
        }
    }

    fn schema_guard(&self) -> &SchemaGuard {
        match &self._guard {
            Guard::Schema(g) => g,
            Guard::Dir(_) => panic!("a PostgreSQL test got a SQLite database"),
        }
    }

    /// Runs a migrator of the test's own (an older build's migrations) on this database.
    pub async fn run_migrator(&self, migrator: &sqlx::migrate::Migrator) {
        match &self.pool {
            Pool::Sqlite(p) => migrator.run(p).await.expect("older migrations"),
            Pool::Postgres(p) => migrator.run(p).await.expect("older migrations"),
        }
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// The URL a command line reaches this database at (with `schema_or_empty()`).
    pub fn url(&self) -> String {
        match &self._guard {
            Guard::Dir(dir) => format!("sqlite://{}", dir.path().join("test.db").display()),
            Guard::Schema(_) => postgres_url(),
        }
    }

    /// The PostgreSQL schema, or nothing for SQLite.
    pub fn schema_or_empty(&self) -> &str {
        match &self._guard {
            Guard::Dir(_) => "",
            Guard::Schema(g) => &g.schema,
        }
    }

    /// PostgreSQL only: the schema the tables live in.
    pub fn schema(&self) -> &str {
        &self.schema_guard().schema
    }

    /// PostgreSQL only: the `application_name` of the store under test's connections.
    pub fn application_name(&self) -> &str {
        &self.schema_guard().app
    }

    /// PostgreSQL only: a second store on the same schema, as another instance would open it;
    /// its connections are named `application_name()` + `suffix`.
    pub async fn another_store(&self, suffix: &str) -> PostgresStore {
        self.schema_guard().connect(suffix).await
    }

    /// PostgreSQL only: ends every session named exactly `application_name` (as a server
    /// restart would) and waits until they are gone; returns how many there were.
    pub async fn terminate_sessions(&self, application_name: &str) -> i64 {
        terminate(&postgres_url(), application_name, Match::Exact)
            .await
            .expect("pg_terminate_backend")
    }
}

impl Pool {
    async fn dump(&self) -> Vec<String> {
        type DumpRow = (
            String,
            String,
            String,
            String,
            i64,
            String,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<DumpRow> = match self {
            Pool::Sqlite(p) => sqlx::query_as(
                "SELECT p.source, p.elev, p.kind, COALESCE(p.amne, ''), COALESCE(p.arskurs, 0),
                        COALESCE(p.kurs, ''), t.ordinal, t.skolform, t.uppdaterat,
                        COALESCE(t.genomfort, '-'), t.intedeltagit,
                        COALESCE(t.sammanvagt_provbetyg, '-'),
                        (SELECT group_concat(d.typ || ':' || d.utfall || ':' || COALESCE(d.betyg, '-')
                                || ':' || COALESCE(d.poang, '-') || ':'
                                || COALESCE(d.maluppfyllnad, '-'), ' ')
                         FROM (SELECT * FROM delprovsresultat WHERE provtillfalle_id = t.id
                               ORDER BY ordinal) d)
                 FROM provomrade p LEFT JOIN provtillfalle t ON t.provomrade_id = p.id
                 ORDER BY 1, 2, 3, 4, 5, 6, 7",
            )
            .fetch_all(p)
            .await
            .expect("dump"),
            // The same text: dates and booleans written as SQLite stores them, and text ordered
            // bytewise (COLLATE "C") as SQLite orders it.
            Pool::Postgres(p) => sqlx::query_as(
                r#"SELECT p.source, p.elev, p.kind, COALESCE(p.amne, ''),
                        CAST(COALESCE(p.arskurs, 0) AS bigint), COALESCE(p.kurs, ''),
                        CAST(t.ordinal AS bigint), t.skolform, to_char(t.uppdaterat, 'YYYY-MM-DD'),
                        COALESCE(to_char(t.genomfort, 'YYYY-MM-DD'), '-'),
                        CAST(CAST(t.intedeltagit AS integer) AS bigint),
                        COALESCE(t.sammanvagt_provbetyg, '-'),
                        (SELECT string_agg(d.typ || ':' || d.utfall || ':' || COALESCE(d.betyg, '-')
                                || ':' || COALESCE(CAST(d.poang AS text), '-') || ':'
                                || COALESCE(CAST(CAST(d.maluppfyllnad AS integer) AS text), '-'),
                                ' ' ORDER BY d.ordinal)
                         FROM delprovsresultat d WHERE d.provtillfalle_id = t.id)
                 FROM provomrade p LEFT JOIN provtillfalle t ON t.provomrade_id = p.id
                 ORDER BY p.source COLLATE "C", p.elev COLLATE "C", p.kind COLLATE "C",
                          COALESCE(p.amne, '') COLLATE "C", COALESCE(p.arskurs, 0),
                          COALESCE(p.kurs, '') COLLATE "C", t.ordinal"#,
            )
            .fetch_all(p)
            .await
            .expect("dump"),
        };
        rows.into_iter()
            .map(|r| {
                let head = format!(
                    "{} {} {} {}{}{}",
                    r.0,
                    r.1,
                    r.2,
                    r.3,
                    match r.4 {
                        0 => String::new(),
                        n => format!("/{n}"),
                    },
                    r.5
                );
                match r.6 {
                    None => format!("{head} (empty)"),
                    Some(o) => format!(
                        "{head} #{o} {} {} g={} i={} s={} [{}]",
                        r.7.unwrap_or_default(),
                        r.8.unwrap_or_default(),
                        r.9.unwrap_or_default(),
                        r.10.unwrap_or_default(),
                        r.11.unwrap_or_default(),
                        r.12.unwrap_or_default()
                    ),
                }
            })
            .collect()
    }
}

/// A PostgreSQL schema of one test's own, dropped (with everything in it) on drop.
struct SchemaGuard {
    url: String,
    schema: String,
    /// The `application_name` of the test's connections: lets a test end exactly its own
    /// sessions while other tests run beside it.
    app: String,
}

impl SchemaGuard {
    async fn connect(&self, app_suffix: &str) -> PostgresStore {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        let url = format!("{}{sep}application_name={}{app_suffix}", self.url, self.app);
        PostgresStore::connect(&url, &self.schema)
            .await
            .expect("connect to postgres")
    }
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        // Drop is synchronous and may run inside the test's runtime: do the async work on a
        // thread with a runtime of its own. Sessions the test left behind (a transaction a
        // failed assertion abandoned) would block DROP SCHEMA, so they are ended first.
        let (url, schema, app) = (self.url.clone(), self.schema.clone(), self.app.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                terminate(&url, &app, Match::Prefix)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut c = sqlx::postgres::PgConnection::connect(&url)
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::query("SET lock_timeout = '30s'")
                    .execute(&mut c)
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .execute(&mut c)
                    .await
                    .map_err(|e| e.to_string())?;
                c.close().await.ok();
                Ok::<(), String>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("WARNING: could not drop test schema {}: {e}", self.schema),
            Err(_) => eprintln!("WARNING: dropping test schema {} panicked", self.schema),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Match {
    Exact,
    /// Also a store's further instances (`app` + suffix).
    Prefix,
}

/// Ends the sessions of an `application_name`, waiting up to 10 s for each to be gone. A store's
/// leadership connections count as its own: they are named `<application_name> leader …`.
async fn terminate(url: &str, app: &str, how: Match) -> Result<i64, sqlx::Error> {
    let mut c = sqlx::postgres::PgConnection::connect(url).await?;
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000))
         FROM pg_stat_activity
         WHERE (application_name = $1
                OR starts_with(application_name, $1 || ' leader ')
                OR ($2 AND starts_with(application_name, $1)))
           AND pid <> pg_backend_pid()",
    )
    .bind(app)
    .bind(how == Match::Prefix)
    .fetch_one(&mut c)
    .await?;
    c.close().await.ok();
    Ok(n)
}

/// A private CA, a server certificate for the loopback address it signed, and a client
/// certificate it signed: what a municipality gets from the platform, made up for the test.
pub struct Pki {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

pub fn pki(ca_name: &str) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "nprov-sync test");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        // A known end of validity, which the expiry metric must report.
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let cert = params.signed_by(&key, &issuer).expect("certificate");
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(
        vec!["localhost".into(), "127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(
        vec!["kommun.example".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    Pki {
        ca: ca_cert.pem(),
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

// ---- A `run` child and its metrics listener ---------------------------------------------------

/// A loopback port nothing listens on (yet).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `/readyz` of a daemon's listener: status and body, or `None` while nothing answers.
pub async fn readyz(port: u16) -> Option<(u16, String)> {
    let r = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.unwrap_or_default()))
}

/// `/metrics` of a daemon's listener (empty while nothing answers).
pub async fn metrics(port: u16) -> String {
    match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// `nprov-sync run --config CFG` as a child: logs at info to a pipe (read by [`stop_run`]),
/// killed if the test ends first; the database comes from the file alone.
pub fn spawn_run(cfg: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_nprov-sync"))
        .args(["run", "--config", cfg.to_str().expect("path")])
        .env_remove("NPROV_DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn")
}

/// Stops a `run` child with SIGTERM and returns its log, after checking it exited cleanly.
pub async fn stop_run(child: tokio::process::Child) -> String {
    let pid = child.id().expect("pid").to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("it stops")
        .expect("output");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{:?}\n{log}", out.status);
    log
}
