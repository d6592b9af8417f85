//! Benchmark 3: end-to-end `InviteCustomer` in Postgres mode
//! (`projects/postgres.toml`, WebAssembly components) beside the
//! hand-written service (`bench/handwritten --database-url`: the invite in
//! one transaction) and `pgbench` running the same SQL per command as the
//! shell (`benches/pgbench/invite.sql`), on the same server: the ceiling on
//! this machine for the shell's design.
//!
//! Uses `DATABASE_URL` when set, else a throwaway cluster (as the tests do).
//! Writes `target/bench-results/postgres.json`; `scripts/benchmarks.py` renders it.
//! `cargo build --release -p handwritten-baseline &&
//! cargo bench -p host --features native-baseline --bench postgres`

#[path = "../tests/support/pg.rs"]
mod pg;
mod support;

use serde_json::{Value, json};
use std::process::Command;
use support::{Shell, load, load_time, root};

const CONCURRENCY: [usize; 3] = [1, 8, 64];

/// pgbench at `clients`, for as long as the shell was loaded; the
/// transactions per second and per-transaction latencies from its log.
fn pgbench(url: &str, clients: usize) -> support::Measured {
    let logs = tempfile::tempdir().expect("log dir");
    let script = root().join("host/benches/pgbench/invite.sql");
    let output = Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-l", "--log-prefix"])
        .arg(logs.path().join("tx"))
        .arg("-f")
        .arg(&script)
        .args(["-c", &clients.to_string(), "-j", &clients.min(2).to_string()])
        .args(["-T", &load_time().as_secs().to_string()])
        .arg(url)
        .output()
        .expect("pgbench runs (is it installed?)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "pgbench failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    let failed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    // Each log line: client, transaction, latency (µs), script, epoch s, µs.
    let mut latencies: Vec<f64> = std::fs::read_dir(logs.path())
        .expect("pgbench logs")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .flat_map(|text| {
            text.lines().filter_map(|l| l.split_whitespace().nth(2)?.parse::<f64>().ok()).collect::<Vec<_>>()
        })
        .map(|us| us / 1000.0)
        .collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    support::Measured { latencies, failures: failed, cpu_us: None }
}

fn main() {
    if support::listing() {
        return;
    }
    let rt = support::runtime();
    // The shell, the hand-written service and pgbench each on a database of
    // its own (the shell would consume the commands pgbench appends); the
    // shell migrates its own and pgbench's.
    let (url, handwritten_url, ceiling_url) =
        rt.block_on(async { (pg::database().await, pg::database().await, pg::database().await) });
    let cache = tempfile::tempdir().expect("cache dir");
    drop(rt.block_on(async {
        let migrator =
            Shell::spawn("projects/postgres.toml", cache.path(), &[("DATABASE_URL", &ceiling_url)]);
        migrator.ready().await;
        migrator
    }));
    // The checkpoints invite.sql moves, as the shell's first steps make them.
    rt.block_on(async {
        pg::client(&ceiling_url)
            .await
            .batch_execute(
                "INSERT INTO checkpoints (consumer) VALUES ('invite-customer'), ('customer-projector')
                 ON CONFLICT (consumer) DO NOTHING",
            )
            .await
            .expect("the checkpoints invite.sql moves");
    });
    let shell = Shell::spawn("projects/postgres.toml", cache.path(), &[("DATABASE_URL", &url)]);
    let handwritten = Shell::handwritten(&["--database-url", &handwritten_url]);
    let mut best = std::collections::BTreeMap::new();
    rt.block_on(async {
        for (mode, server) in [("shell", &shell), ("handwritten", &handwritten)] {
            server.ready().await;
            support::check_answers(&server.url, mode).await;
            load(&server.url, 8, "warmup", None).await;
        }
    });
    // Taking turns, so that a noisy spell of the machine falls on all alike.
    for _ in 0..support::ROUNDS {
        for concurrency in CONCURRENCY {
            for (mode, server) in [("shell", &shell), ("handwritten", &handwritten)] {
                let measured = rt.block_on(support::load_shell(server, concurrency, "pg"));
                eprintln!("postgres {}", measured.row(mode, concurrency));
                support::keep_best(&mut best, (mode, concurrency), measured);
            }
            let measured = pgbench(&ceiling_url, concurrency);
            eprintln!("postgres {}", measured.row("pgbench", concurrency));
            support::keep_best(&mut best, ("pgbench", concurrency), measured);
        }
    }
    let rss = shell.peak_rss_mib();
    let handwritten_rss = handwritten.peak_rss_mib();
    drop((shell, handwritten));
    let rows: Vec<Value> = best.iter().map(|((mode, c), m)| m.row(mode, *c)).collect();
    let server = rt.block_on(async {
        let client = pg::client(&url).await;
        let settings = client
            .query(
                "SELECT name, setting FROM pg_settings
                 WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'shared_buffers', 'server_version')",
                &[],
            )
            .await
            .expect("server settings");
        settings.iter().map(|r| format!("{}={}", r.get::<_, String>(0), r.get::<_, String>(1))).collect::<Vec<_>>()
    });
    support::write_results(
        "postgres",
        &json!({
            "rows": rows,
            "server": server,
            "peak_rss_mib": rss,
            "handwritten_peak_rss_mib": handwritten_rss,
        }),
    );
}
