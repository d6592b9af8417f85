//! Hot swap by file on Postgres: a file copied in while the database is
//! away cannot be recorded, so it is not deployed then — and it is tried
//! again until it is, without the file being touched again. Runs on a
//! cluster of its own (see `support/pg.rs`), since it stops it.

#[path = "support/pg.rs"]
mod pg;
mod support;

use host::Project;
use host::runtime::Version;
use std::path::Path;
use std::time::Duration;
use support::{module, running_version, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_copied_in_during_an_outage_is_deployed_once_the_database_is_back() {
    let cluster = pg::OwnCluster::start();
    let url = cluster.database().await;
    let dir = tempfile::tempdir().expect("temp dir");
    for name in ["invite-customer", "customer-projector", "invite-resolver"] {
        std::fs::copy(module(name), dir.path().join(format!("{name}.wasm"))).expect("copy");
    }
    let text = pg::project_text(&url, "127.0.0.1:0", 5000);
    let mut project = Project::parse(&text, Path::new(".")).expect("test project");
    project.modules = dir.path().to_path_buf();
    project.watch = true;
    let (shell, client) = start(project).await;
    let v2 = Version::of(&std::fs::read(module("v2/invite-customer")).expect("v2")).0;

    cluster.stop();
    std::fs::copy(module("v2/invite-customer"), dir.path().join("invite-customer.wasm")).expect("copy v2");
    // Long enough for the watcher to try, and fail to record, at least once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_ne!(running_version(&client, "invite-customer").await, v2, "not recorded, not deployed");
    cluster.restart();

    let mut waited = Duration::ZERO;
    while running_version(&client, "invite-customer").await != v2 {
        assert!(waited < Duration::from_secs(90), "the file is deployed once the database is back");
        tokio::time::sleep(Duration::from_millis(200)).await;
        waited += Duration::from_millis(200);
    }
    shell.stop().await.expect("clean stop");
}
