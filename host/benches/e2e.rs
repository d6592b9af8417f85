//! Benchmarks 2, 4, 5 and 6, against the release `host` binary as a separate
//! process over real HTTP on loopback:
//! - end-to-end `InviteCustomer` (unique emails) at concurrency 1, 8 and 64,
//!   WebAssembly (`projects/basic.toml`) against the native baseline
//!   (`projects/native.toml`), every response body checked;
//! - hot swap under load: failed requests, and deploy request → new version live;
//! - cold start: process start → first successful mutation, with and without
//!   the compiled-component cache;
//! - the shell's peak RSS (VmHWM) under the load above.
//!
//! Writes `target/bench-results/e2e.json`; `scripts/benchmarks.py` renders it.
//! `cargo bench -p host --features native-baseline --bench e2e`

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const LOAD: Duration = Duration::from_secs(4);
const TOKEN: &str = "bench-token";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Shell {
    child: Child,
    url: String,
}

impl Shell {
    fn spawn(project: &str, cache: &Path) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_host"))
            .args(["run", "--project", project, "--listen", &format!("127.0.0.1:{port}")])
            .current_dir(root())
            .env("LOWSHELL_CACHE_DIR", cache)
            .env("LOWSHELL_ADMIN_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the shell starts");
        Self { child, url: format!("http://127.0.0.1:{port}") }
    }

    /// Peak resident set size, in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn invite(http: &reqwest::Client, url: &str, email: &str) -> bool {
    let query = format!(r#"mutation {{ InviteCustomer(email: "{email}") {{ id email invited }} }}"#);
    let Ok(response) = http.post(format!("{url}/")).json(&json!({ "query": query })).send().await else {
        return false;
    };
    let ok = response.status().is_success();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    // A 200 with `errors` is a failure too.
    ok && body["errors"].is_null() && body["data"]["InviteCustomer"]["invited"] == true
}

async fn wait_ready(url: &str) {
    let http = reqwest::Client::new();
    for _ in 0..6000 {
        if http.get(format!("{url}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the shell at {url} did not come up");
}

static EMAIL: AtomicU64 = AtomicU64::new(0);

fn email(tag: &str) -> String {
    format!("{tag}-{}@example.com", EMAIL.fetch_add(1, Ordering::Relaxed))
}

/// `concurrency` clients for `LOAD`; latencies in ms of the successful ones.
async fn load(url: &str, concurrency: usize, tag: &str, stop: Option<Arc<AtomicBool>>) -> (Vec<f64>, u64) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + LOAD;
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
    (latencies, failures.load(Ordering::Relaxed))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn throughput(results: &mut Vec<Value>, rss: &mut Vec<Value>) {
    let cache = tempfile::tempdir().expect("cache dir");
    for (mode, project) in [("wasm", "projects/basic.toml"), ("native", "projects/native.toml")] {
        let shell = Shell::spawn(project, cache.path());
        wait_ready(&shell.url).await;
        invite(&reqwest::Client::new(), &shell.url, &email("warmup")).await;
        for concurrency in [1, 8, 64] {
            let (latencies, failures) = load(&shell.url, concurrency, mode, None).await;
            let row = json!({
                "mode": mode,
                "concurrency": concurrency,
                "requests": latencies.len(),
                "failures": failures,
                "per_second": latencies.len() as f64 / LOAD.as_secs_f64(),
                "p50_ms": percentile(&latencies, 0.50),
                "p99_ms": percentile(&latencies, 0.99),
            });
            eprintln!("e2e {row}");
            results.push(row);
        }
        rss.push(json!({ "mode": mode, "peak_rss_mib": shell.peak_rss_mib() }));
    }
}

async fn swap_under_load() -> Value {
    let cache = tempfile::tempdir().expect("cache dir");
    let shell = Shell::spawn("projects/basic.toml", cache.path());
    wait_ready(&shell.url).await;
    let v1 = std::fs::read(root().join("modules/invite-customer.wasm")).expect("v1");
    let v2 = std::fs::read(root().join("modules/v2/invite-customer.wasm")).expect("v2");
    let http = reqwest::Client::new();
    let deploy = |bytes: Vec<u8>| {
        let (http, url) = (http.clone(), shell.url.clone());
        async move {
            let started = Instant::now();
            let response = http
                .put(format!("{url}/admin/functions/invite-customer"))
                .bearer_auth(TOKEN)
                .body(bytes)
                .send()
                .await
                .expect("deploy");
            assert!(response.status().is_success(), "deploy refused: {}", response.status());
            started.elapsed().as_secs_f64() * 1000.0
        }
    };
    // Compile both once, so the swaps measure a precompiled component.
    deploy(v2.clone()).await;
    deploy(v1.clone()).await;
    let loader = tokio::spawn({
        let url = shell.url.clone();
        async move { load(&url, 8, "swap", None).await }
    });
    let mut swaps = vec![];
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        swaps.push(deploy(if i % 2 == 0 { v2.clone() } else { v1.clone() }).await);
    }
    let (latencies, failures) = loader.await.expect("load");
    swaps.sort_by(|a, b| a.total_cmp(b));
    json!({
        "requests": latencies.len(),
        "failures": failures,
        "swaps": swaps.len(),
        "swap_to_live_median_ms": percentile(&swaps, 0.5),
        "swap_to_live_max_ms": swaps.last().copied().unwrap_or(0.0),
    })
}

async fn cold_start() -> Value {
    let cache = tempfile::tempdir().expect("cache dir");
    let mut runs = vec![];
    for label in ["without_cache", "with_cache", "with_cache_again"] {
        let started = Instant::now();
        let shell = Shell::spawn("projects/basic.toml", cache.path());
        let http = reqwest::Client::new();
        loop {
            if invite(&http, &shell.url, &email("cold")).await {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "the shell never answered");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        runs.push((label, started.elapsed().as_secs_f64() * 1000.0));
    }
    json!({
        "without_cache_ms": runs[0].1,
        "with_cache_ms": (runs[1].1 + runs[2].1) / 2.0,
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list`
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    let (mut e2e, mut rss) = (vec![], vec![]);
    rt.block_on(throughput(&mut e2e, &mut rss));
    let swap = rt.block_on(swap_under_load());
    eprintln!("swap {swap}");
    let cold = rt.block_on(cold_start());
    eprintln!("cold {cold}");
    let results = json!({ "e2e": e2e, "rss": rss, "swap": swap, "cold_start": cold });
    let dir = root().join("target/bench-results");
    std::fs::create_dir_all(&dir).expect("results dir");
    std::fs::write(dir.join("e2e.json"), serde_json::to_string_pretty(&results).expect("json"))
        .expect("results");
    println!("{}", serde_json::to_string_pretty(&results).expect("json"));
}
