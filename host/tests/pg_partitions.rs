//! A function's work shared across shells: with `partitions`, each shell on
//! the database takes its share of a function's partitions, both run its
//! steps, and when one goes the other takes its partitions over. Needs
//! `make guest`; see `support/pg.rs` for the database.

#[path = "support/pg.rs"]
mod pg;
mod support;

use host::Shell;
use host::backend::Holder;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::Client;

const TOKEN: &str = "partitions-s3cret";

async fn shell(url: &str) -> (Shell, Client) {
    let text = pg::project_text(url, "127.0.0.1:0", 60_000)
        + r#"
[consumers.invite-customer]
partitions = 4
partition-key = "email"

[consumers.customer-projector]
partitions = 2
partition-key = "customer-id"
"#;
    support::start(support::project_from(&text, TOKEN)).await
}

async fn holders(client: &Client) -> Vec<Holder> {
    client
        .http
        .get(format!("{}/admin/consumers", client.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("GET /admin/consumers")
        .json()
        .await
        .expect("holders")
}

/// How many of invite-customer's partitions each shell holds, once every
/// partition is held and `settled` says the split is right.
async fn split(
    client: &Client,
    settled: impl Fn(&BTreeMap<String, usize>) -> bool,
) -> BTreeMap<String, usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let holders = holders(client).await;
        let partitions: Vec<&Holder> =
            holders.iter().filter(|h| h.consumer.starts_with("invite-customer#")).collect();
        let mut by_shell = BTreeMap::new();
        for h in &partitions {
            if let Some(shell) = &h.shell {
                *by_shell.entry(shell.clone()).or_insert(0) += 1;
            }
        }
        if partitions.len() == 4 && by_shell.values().sum::<usize>() == 4 && settled(&by_shell) {
            return by_shell;
        }
        assert!(Instant::now() < deadline, "the partitions never settled: {holders:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `lowshell_steps_total{function="invite-customer"}` of one shell.
async fn steps(client: &Client) -> u64 {
    let text = client.http.get(format!("{}/metrics", client.base)).send().await.expect("metrics");
    let text = text.text().await.expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with("lowshell_steps_total{") && l.contains(r#"function="invite-customer""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn invite_all(clients: &[&Client], from: usize, count: usize) {
    for n in from..from + count {
        let client = clients[n % clients.len()];
        let email = format!("user{n}@example.com");
        let answer = client.invite(&email).await;
        assert_eq!(answer["data"]["InviteCustomer"]["email"], email.as_str(), "{answer}");
    }
}

#[tokio::test]
async fn two_shells_share_a_function_and_one_takes_over_when_the_other_goes() {
    let url = pg::database().await;
    let (a, client_a) = shell(&url).await;
    let (b, client_b) = shell(&url).await;
    // Two shells: two partitions each.
    let shares = split(&client_a, |s| s.len() == 2 && s.values().all(|&n| n == 2)).await;
    assert_eq!(shares.len(), 2, "{shares:?}");

    let before = steps(&client_a).await;
    invite_all(&[&client_a, &client_b], 0, 40).await;
    // Both shells ran steps: every partition moved on, and each shell holds two.
    let db = pg::client(&url).await;
    let moved: Vec<(String, i64)> = db
        .query("SELECT consumer, position FROM checkpoints WHERE consumer LIKE 'invite-customer#%' ORDER BY consumer", &[])
        .await
        .expect("read the checkpoints")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(moved.len(), 4, "{moved:?}");
    assert!(moved.iter().all(|(_, position)| *position > 0), "every partition ran steps: {moved:?}");
    // The shells of one test share the process's metrics: both counted here.
    assert_eq!(steps(&client_a).await - before, 40, "each command once");

    // B goes: A takes all four.
    b.stop().await.expect("B stops");
    let shares = split(&client_a, |s| s.len() == 1).await;
    assert_eq!(shares.values().copied().collect::<Vec<_>>(), [4], "{shares:?}");
    invite_all(&[&client_a], 40, 10).await;

    // Nothing lost or doubled.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let customers: i64 = db
            .query_one("SELECT count(*) FROM documents WHERE collection = 'customers'", &[])
            .await
            .expect("count the customers")
            .get(0);
        if customers == 50 {
            break;
        }
        assert!(customers < 50 && Instant::now() < deadline, "{customers} customers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let invited: i64 = db
        .query_one("SELECT count(*) FROM events WHERE kind = 'CustomerInvited'", &[])
        .await
        .expect("count the events")
        .get(0);
    assert_eq!(invited, 50);
    a.stop().await.expect("A stops");
}

/// Another project's shell on the same Postgres server (another database)
/// neither counts as sharing the function nor shows as holding its
/// partitions: advisory locks are per database, `pg_locks` is not.
#[tokio::test]
async fn a_shell_on_another_database_of_the_server_takes_no_share() {
    let (other, _) = shell(&pg::database().await).await;
    let url = pg::database().await;
    let (a, client_a) = shell(&url).await;
    let shares = split(&client_a, |s| s.len() == 1).await;
    assert_eq!(shares.values().copied().collect::<Vec<_>>(), [4], "{shares:?}");
    invite_all(&[&client_a], 0, 8).await;
    a.stop().await.expect("A stops");
    other.stop().await.expect("the other project's shell stops");
}
