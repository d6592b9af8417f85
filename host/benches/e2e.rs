//! Benchmarks 2, 4, 5 and 6, against the release `host` binary as a separate
//! process over real HTTP on loopback:
//! - end-to-end `InviteCustomer` (unique emails) at concurrency 1, 8 and 64,
//!   WebAssembly (`projects/basic.toml`) against the native baseline
//!   (`projects/native.toml`) and the hand-written service
//!   (`bench/handwritten --memory`), every response body checked;
//! - hot swap under load: failed requests, and deploy request → new version live;
//! - cold start: process start → first successful mutation, with and without
//!   the compiled-component cache;
//! - the shell's peak RSS (VmHWM) under the load above.
//!
//! Writes `target/bench-results/e2e.json`; `scripts/benchmarks.py` renders it.
//! `cargo build --release -p handwritten-baseline &&
//! cargo bench -p host --features native-baseline --bench e2e`

mod support;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::{Shell, TOKEN, email, invite, load, percentile, root};

/// Both shells and the hand-written service run side by side; the modes take
/// turns at each level, in [`support::ROUNDS`] rounds, so that a noisy spell
/// of the machine falls on all alike.
async fn throughput(results: &mut Vec<Value>, rss: &mut Vec<Value>) {
    let cache = tempfile::tempdir().expect("cache dir");
    let shells = [
        ("wasm", Shell::spawn("projects/basic.toml", cache.path(), &[])),
        ("native", Shell::spawn("projects/native.toml", cache.path(), &[])),
        ("handwritten", Shell::handwritten(&["--memory"])),
    ];
    for (mode, shell) in &shells {
        shell.ready().await;
        support::check_answers(&shell.url, mode).await;
        // Warm up: connections, allocator, caches.
        load(&shell.url, 8, "warmup", None).await;
    }
    let mut best = std::collections::BTreeMap::new();
    // Memory mode keeps every document in the process: RSS grows with them.
    let mut served = std::collections::BTreeMap::new();
    for _ in 0..support::ROUNDS {
        for concurrency in [1, 8, 64] {
            for (mode, shell) in &shells {
                let measured = support::load_shell(shell, concurrency, mode).await;
                eprintln!("e2e {}", measured.row(mode, concurrency));
                *served.entry(*mode).or_insert(0) += measured.latencies.len();
                support::keep_best(&mut best, (*mode, concurrency), measured);
            }
        }
    }
    results.extend(best.iter().map(|((mode, concurrency), m)| m.row(mode, *concurrency)));
    for (mode, shell) in &shells {
        let invited = served.get(mode).copied().unwrap_or(0);
        rss.push(json!({ "mode": mode, "peak_rss_mib": shell.peak_rss_mib(), "customers": invited }));
    }
}

async fn swap_under_load() -> Value {
    let cache = tempfile::tempdir().expect("cache dir");
    let shell = Shell::spawn("projects/basic.toml", cache.path(), &[]);
    shell.ready().await;
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
    let measured = loader.await.expect("load");
    swaps.sort_by(|a, b| a.total_cmp(b));
    json!({
        "requests": measured.latencies.len(),
        "failures": measured.failures,
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
        let shell = Shell::spawn("projects/basic.toml", cache.path(), &[]);
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
    if support::listing() {
        return;
    }
    let rt = support::runtime();
    let (mut e2e, mut rss) = (vec![], vec![]);
    rt.block_on(throughput(&mut e2e, &mut rss));
    let swap = rt.block_on(swap_under_load());
    eprintln!("swap {swap}");
    let cold = rt.block_on(cold_start());
    eprintln!("cold {cold}");
    let seconds = support::load_time().as_secs();
    support::write_results(
        "e2e",
        &json!({ "e2e": e2e, "rss": rss, "swap": swap, "cold_start": cold, "load_seconds": seconds }),
    );
}
