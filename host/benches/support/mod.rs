//! What the end-to-end benchmarks share: the release `host` binary and the
//! hand-written baseline (`bench/handwritten`) as processes of their own, and
//! a load generator that checks every response.

#![allow(dead_code)]

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long each load level runs: 4 s, or `LOWSHELL_BENCH_SECONDS` (whole
/// seconds, at least 1) for a quick smoke run whose numbers mean little.
pub fn load_time() -> Duration {
    static LOAD: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *LOAD.get_or_init(|| match std::env::var("LOWSHELL_BENCH_SECONDS") {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(seconds) if seconds >= 1 => Duration::from_secs(seconds),
            _ => panic!("LOWSHELL_BENCH_SECONDS must be a whole number of seconds, at least 1, not `{text}`"),
        },
        Err(_) => Duration::from_secs(4),
    })
}
pub const TOKEN: &str = "bench-token";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The target directory (`CARGO_TARGET_DIR`, relative to the workspace, or `target`).
pub fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root().join("target"), |t| root().join(t))
}

/// The hand-written baseline's release binary, which `cargo bench -p host`
/// does not build: `make bench` builds it first.
fn handwritten_binary() -> PathBuf {
    let binary = target_dir().join("release/handwritten-baseline");
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build --release -p handwritten-baseline` (`make bench` does)",
        binary.display()
    );
    binary
}

/// A server under load — the shell running a project, or the hand-written
/// baseline — on a free port; killed when dropped.
pub struct Shell {
    child: Child,
    pub url: String,
}

impl Shell {
    pub fn spawn(project: &str, cache: &Path, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_host"))
            .args(["run", "--project", project, "--listen", &format!("127.0.0.1:{port}")])
            .current_dir(root())
            .env("LOWSHELL_CACHE_DIR", cache)
            .env("LOWSHELL_ADMIN_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the shell starts");
        Self { child, url: format!("http://127.0.0.1:{port}") }
    }

    /// The hand-written baseline with `store` (`--memory` or `--database-url URL`).
    pub fn handwritten(store: &[&str]) -> Self {
        let port = free_port();
        let child = Command::new(handwritten_binary())
            .args(store)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the hand-written baseline starts");
        Self { child, url: format!("http://127.0.0.1:{port}") }
    }

    /// Peak resident set size, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    /// CPU time the process has used so far (user + system), in ms.
    pub fn cpu_ms(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which may hold spaces): utime and
        // stime are the 12th and 13th, in clock ticks (100 per second).
        let fields: Vec<&str> =
            stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) + ticks(12)) * 10.0
    }

    /// Waits for `/healthz`.
    pub async fn ready(&self) {
        let http = reqwest::Client::new();
        for _ in 0..6000 {
            if http.get(format!("{}/healthz", self.url)).send().await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the server at {} did not come up", self.url);
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `InviteCustomer`; true only for a 200 whose body is the invited
/// customer with this email and an id (a 200 with `errors` is a failure).
pub async fn invite(http: &reqwest::Client, url: &str, email: &str) -> bool {
    let query = format!(r#"mutation {{ InviteCustomer(email: "{email}") {{ id email invited }} }}"#);
    let Ok(response) = http.post(format!("{url}/")).json(&json!({ "query": query })).send().await else {
        return false;
    };
    let ok = response.status().is_success();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let customer = &body["data"]["InviteCustomer"];
    ok && body["errors"].is_null()
        && customer["invited"] == true
        && customer["email"] == email
        && customer["id"].as_str().is_some_and(|id| !id.is_empty())
}

/// Before measuring: the server at `url` answers as the shell does — a new
/// email is a new customer that `customer(id)` serves, the same email again
/// is the same customer, a blank one is refused with "Email is required".
/// Panics otherwise, naming `what`.
pub async fn check_answers(url: &str, what: &str) {
    let http = reqwest::Client::new();
    let graphql = |query: String| {
        let http = http.clone();
        async move {
            let response = http.post(format!("{url}/")).json(&json!({ "query": query })).send().await;
            let response = response.unwrap_or_else(|e| panic!("{what}: {e}"));
            response.json::<Value>().await.unwrap_or_else(|e| panic!("{what}: not JSON: {e}"))
        }
    };
    let invite =
        |email: &str| format!(r#"mutation {{ InviteCustomer(email: "{email}") {{ id email invited }} }}"#);
    let address = email("check");
    let first = graphql(invite(&address)).await;
    let customer = &first["data"]["InviteCustomer"];
    assert_eq!(customer["email"], address.as_str(), "{what}: {first}");
    let id = customer["id"].as_str().unwrap_or_else(|| panic!("{what}: no id: {first}"));
    let found = graphql(format!(r#"{{ customer(id: "{id}") {{ id email invited }} }}"#)).await;
    assert_eq!(found["data"]["customer"], *customer, "{what}: customer(id): {found}");
    let again = graphql(invite(&address)).await;
    assert_eq!(again, first, "{what}: the same email again");
    let blank = graphql(invite(" ")).await;
    assert_eq!(blank["errors"][0]["message"], "Email is required", "{what}: a blank email: {blank}");
}

static EMAIL: AtomicU64 = AtomicU64::new(0);

/// A unique email.
pub fn email(tag: &str) -> String {
    format!("{tag}-{}-{}@example.com", std::process::id(), EMAIL.fetch_add(1, Ordering::Relaxed))
}

/// What one load level measured.
pub struct Measured {
    /// Latencies of the successful requests, in ms, sorted.
    pub latencies: Vec<f64>,
    pub failures: u64,
    /// CPU the server spent per successful request, in µs, when known.
    pub cpu_us: Option<f64>,
}

impl Measured {
    pub fn row(&self, mode: &str, concurrency: usize) -> Value {
        json!({
            "mode": mode,
            "concurrency": concurrency,
            "requests": self.latencies.len(),
            "failures": self.failures,
            "per_second": self.latencies.len() as f64 / load_time().as_secs_f64(),
            "p50_ms": percentile(&self.latencies, 0.50),
            "p99_ms": percentile(&self.latencies, 0.99),
            "cpu_us_per_request": self.cpu_us,
        })
    }
}

/// `concurrency` clients inviting unique emails for [`load_time`] (or until `stop`).
pub async fn load(url: &str, concurrency: usize, tag: &str, stop: Option<Arc<AtomicBool>>) -> Measured {
    let http = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().expect("http client");
    let deadline = Instant::now() + load_time();
    let failures = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (http, url, tag, failures, stop) =
                (http.clone(), url.to_owned(), tag.to_owned(), failures.clone(), stop.clone());
            tokio::spawn(async move {
                let mut latencies = vec![];
                while Instant::now() < deadline && !stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
                    let started = Instant::now();
                    if invite(&http, &url, &email(&tag)).await {
                        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies = vec![];
    for w in workers {
        latencies.extend(w.await.expect("a worker"));
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    Measured { latencies, failures: failures.load(Ordering::Relaxed), cpu_us: None }
}

/// [`load`] against `shell` (or the hand-written baseline), with the CPU it spent per request.
pub async fn load_shell(shell: &Shell, concurrency: usize, tag: &str) -> Measured {
    let before = shell.cpu_ms();
    let mut measured = load(&shell.url, concurrency, tag, None).await;
    let spent = shell.cpu_ms() - before;
    let n = measured.latencies.len();
    measured.cpu_us = (n > 0).then(|| spent * 1000.0 / n as f64);
    measured
}

/// Load levels are measured this many times, taking turns; the best run counts.
pub const ROUNDS: usize = 2;

/// Keeps, for `key`, the run with the higher throughput.
pub fn keep_best<K: Ord>(best: &mut std::collections::BTreeMap<K, Measured>, key: K, run: Measured) {
    match best.get(&key) {
        Some(kept) if kept.latencies.len() >= run.latencies.len() => {}
        _ => {
            best.insert(key, run);
        }
    }
}

/// The `p` quantile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Writes `target/bench-results/<name>.json` (read by `scripts/benchmarks.py`).
pub fn write_results(name: &str, results: &Value) {
    // A relative target dir is relative to the workspace, where `make bench` runs.
    let dir = target_dir().join("bench-results");
    std::fs::create_dir_all(&dir).expect("results dir");
    let text = serde_json::to_string_pretty(results).expect("json");
    std::fs::write(dir.join(format!("{name}.json")), &text).expect("results");
    println!("{text}");
}

/// `cargo bench -- --list` and the like: nothing to run.
pub fn listing() -> bool {
    std::env::args().any(|a| a == "--list")
}

/// A multi-threaded runtime for the load generator.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio")
}
