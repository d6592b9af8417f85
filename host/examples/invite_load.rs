//! Load for profiling the command path by hand (`perf record -p <shell>`
//! beside it): `concurrency` clients send `InviteCustomer` with unique emails
//! to a running shell for `seconds`, checking every answer.
//!
//! `cargo run --release -p host --example invite_load -- URL [CONCURRENCY] [SECONDS]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "http://127.0.0.1:8080/".into());
    let concurrency: usize = args.next().and_then(|c| c.parse().ok()).unwrap_or(8);
    let seconds: u64 = args.next().and_then(|c| c.parse().ok()).unwrap_or(10);
    let http =
        reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().expect("an HTTP client");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (http, url, done, failed) = (http.clone(), url.clone(), done.clone(), failed.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    let query = format!(
                        r#"mutation {{ InviteCustomer(email: "load-{}-{worker}-{n}@example.com") {{ id email invited }} }}"#,
                        std::process::id()
                    );
                    let answer = http.post(&url).json(&serde_json::json!({ "query": query })).send().await;
                    let invited = match answer {
                        Ok(response) => response.json::<serde_json::Value>().await.ok().is_some_and(|body| {
                            body["data"]["InviteCustomer"]["invited"] == serde_json::Value::Bool(true)
                        }),
                        Err(_) => false,
                    };
                    if invited { &done } else { &failed }.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let (done, failed) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "{done} invited, {failed} failed, {:.0}/s at concurrency {concurrency}",
        done as f64 / seconds as f64
    );
}
