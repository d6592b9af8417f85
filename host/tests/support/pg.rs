//! A Postgres for the tests. With `DATABASE_URL` set, that server is used;
//! otherwise a throwaway cluster is started once per test binary with the
//! installed binaries, as the `postgres` user when running as root.
//!
//! The cluster is owned by a small `sh` watchdog whose stdin is a pipe from
//! the test process: when the test process ends — normally, by a failed
//! test, or killed — the pipe closes and the watchdog stops the cluster and
//! removes its directory. Each test gets a database of its own.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

struct Cluster {
    /// URL of the maintenance database (`postgres`), where test databases are created.
    admin_url: String,
    /// `pg_ctl` (as the `postgres` user when running as root).
    pg_ctl: String,
    dir: PathBuf,
    port: u16,
    /// Keeps the watchdog's stdin open for the life of the test process.
    _watchdog: Mutex<(Child, ChildStdin)>,
}

enum Server {
    External(String),
    Local(Cluster),
}

static SERVER: OnceLock<Server> = OnceLock::new();

fn pg_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    candidates.retain(|p| p.join("initdb").exists());
    candidates.sort_by_key(|p| {
        p.parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    });
    // Else rely on PATH.
    candidates.pop().unwrap_or_default()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.trim_ascii() == b"0").unwrap_or(false)
}

/// The shared clusters' settings: fast rather than durable (a test's
/// database is thrown away; nothing here survives a crash).
const FAST: &str = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400";

/// An [`OwnCluster`]'s settings: a commit is durable once answered, as on a
/// production server (`synchronous_commit` on), against the crash the tests
/// cause — a killed server, not a lost machine: the WAL a commit wrote is in
/// the operating system's cache, so `fsync` and full page writes can stay off.
const DURABLE: &str = "-c fsync=off -c full_page_writes=off -c max_connections=400";

fn start_cluster(settings: &str) -> Cluster {
    let dir = std::env::temp_dir().join(format!("lowshell-pg-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).expect("create the cluster directory");
    let port = free_port();
    let bin = pg_bin();
    let bin = if bin.as_os_str().is_empty() { String::new() } else { format!("{}/", bin.display()) };
    let as_pg = if is_root() {
        let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status();
        assert!(status.is_ok_and(|s| s.success()), "chown the cluster directory to postgres");
        "runuser -u postgres --"
    } else {
        ""
    };
    let d = dir.display();
    let script = format!(
        r#"set -e
{as_pg} {bin}initdb -D {d}/data -A trust -U postgres --no-sync >{d}/initdb.log 2>&1 || {{ cat {d}/initdb.log >&2; exit 1; }}
{as_pg} {bin}pg_ctl -D {d}/data -l {d}/server.log -w -t 60 -o "-p {port} -k {d} -c listen_addresses=127.0.0.1 {settings}" start >/dev/null || {{ cat {d}/server.log >&2; exit 1; }}
echo ready
cat >/dev/null || true
{as_pg} {bin}pg_ctl -D {d}/data -m immediate stop >/dev/null 2>&1 || true
rm -rf {d}
"#
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sh for the Postgres watchdog");
    let stdin = child.stdin.take().expect("watchdog stdin");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("watchdog stdout");
    BufReader::new(stdout).read_line(&mut line).expect("read the watchdog");
    if line.trim() != "ready" {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        panic!("could not start a throwaway Postgres in {d}: {err}");
    }
    Cluster {
        admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        pg_ctl: format!("{as_pg} {bin}pg_ctl"),
        dir,
        port,
        _watchdog: Mutex::new((child, stdin)),
    }
}

fn server() -> &'static Server {
    SERVER.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => Server::External(url),
        _ => Server::Local(start_cluster(FAST)),
    })
}

/// A cluster of the test's own, which it may stop and start again (an
/// outage). Always local, whatever `DATABASE_URL` says; removed when
/// dropped or when the test process ends. Durable as a production server
/// is (see [`DURABLE`]), since tests crash it.
pub struct OwnCluster(Cluster, String);

impl OwnCluster {
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// A cluster with `settings` (`-c name=value …`) besides [`DURABLE`]'s.
    pub fn start_with(settings: &str) -> Self {
        let settings = format!("{DURABLE} {settings}");
        OwnCluster(start_cluster(&settings), settings)
    }

    /// A fresh, empty database on this cluster; its URL.
    pub async fn database(&self) -> String {
        create_database(&self.0.admin_url).await
    }

    fn pg_ctl(&self, args: &str) {
        let (dir, port) = (self.0.dir.display(), self.0.port);
        let script = format!(
            r#"{} -D {dir}/data -l {dir}/server.log -w -t 60 -o "-p {port} -k {dir} -c listen_addresses=127.0.0.1 {}" {args}"#,
            self.0.pg_ctl, self.1
        );
        let output = Command::new("sh").arg("-c").arg(&script).output().expect("run pg_ctl");
        assert!(
            output.status.success(),
            "pg_ctl {args}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `pg_ctl stop -m fast`: sessions are ended, the server shuts down.
    pub fn stop(&self) {
        self.pg_ctl("-m fast stop");
    }

    /// `pg_ctl stop -m immediate`: a crash — no shutdown checkpoint, and
    /// WAL not yet written out (asynchronous commits: the shell's command
    /// appends) is lost; the restart recovers.
    pub fn crash(&self) {
        self.pg_ctl("-m immediate stop");
    }

    /// Starts the stopped cluster again, on the same data and port.
    pub fn restart(&self) {
        self.pg_ctl("start");
    }
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// A fresh, empty database; returns its URL.
pub async fn database() -> String {
    let admin = match server() {
        Server::External(url) => url.clone(),
        Server::Local(cluster) => cluster.admin_url.clone(),
    };
    create_database(&admin).await
}

async fn create_database(admin: &str) -> String {
    let name = format!("lowshell_test_{}", uuid::Uuid::new_v4().simple());
    let (client, connection) =
        tokio_postgres::connect(admin, tokio_postgres::NoTls).await.expect("connect to the test Postgres");
    let driver = tokio::spawn(connection);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create a test database");
    drop(client);
    let _ = driver.await;
    with_database(admin, &name)
}

/// A plain client on `url` (its driver on a task).
pub async fn client(url: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect to the test database");
    tokio::spawn(connection);
    client
}

#[test]
fn database_names_are_replaced() {
    assert_eq!(with_database("postgres://u@h:1/db", "x"), "postgres://u@h:1/x");
    assert_eq!(with_database("postgres://u@h:1", "x"), "postgres://u@h:1/x");
    assert_eq!(with_database("postgres://u@h/db?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
}

/// A project running the example's functions on the Postgres at `url`.
pub fn project_text(url: &str, listen: &str, response_timeout_ms: u128) -> String {
    let modules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../modules");
    format!(
        r#"name = "pg-test"
listen = "{listen}"
modules = "{}"
functions = ["invite-customer", "customer-projector", "invite-resolver"]
backend = "postgres"
database-url = "{url}"
response-timeout-ms = {response_timeout_ms}
attempts = 5
"#,
        modules.display()
    )
}
