//! The dev loop: a change to a guest's sources runs the build, and the
//! component it writes is swapped in by the modules watcher; a failed build
//! leaves the running version serving. The build here is a shell command
//! that installs version 2 of invite-customer, unless told to fail.

mod support;

use host::deploy::dev::{Built, rebuild_on_change};
use host::runtime::Version;
use std::time::Duration;
use support::{basic_project, module, running_version, start};

async fn settled(built: &mut tokio::sync::watch::Receiver<Built>, what: &str) -> Built {
    let waited = tokio::time::timeout(Duration::from_secs(30), built.wait_for(|b| *b != Built::Nothing));
    waited.await.unwrap_or_else(|_| panic!("{what}: no build ran")).expect("the rebuilder runs").clone()
}

#[tokio::test]
async fn a_source_change_rebuilds_and_swaps_and_a_failed_build_changes_nothing() {
    let modules = tempfile::tempdir().expect("modules folder");
    for name in ["invite-customer", "customer-projector", "invite-resolver"] {
        std::fs::copy(module(name), modules.path().join(format!("{name}.wasm"))).expect("copy");
    }
    let sources = tempfile::tempdir().expect("sources folder");
    std::fs::create_dir_all(sources.path().join("invite-customer/src")).expect("a guest's folder");
    let source = sources.path().join("invite-customer/src/lib.rs");
    std::fs::write(&source, "// v1\n").expect("a source file");
    let ok = sources.path().join("ok");

    let mut project = basic_project();
    project.modules = modules.path().to_path_buf();
    project.watch = true;
    let (shell, client) = start(project).await;
    let v1 = Version::of(&std::fs::read(module("invite-customer")).expect("v1")).0;
    let v2 = Version::of(&std::fs::read(module("v2/invite-customer")).expect("v2")).0;

    let build = format!(
        "test -f '{}' && cp '{}' '{}'",
        ok.display(),
        module("v2/invite-customer").display(),
        modules.path().join("invite-customer.wasm").display()
    );
    let rebuilder = rebuild_on_change(&[sources.path().to_path_buf()], build).expect("watch the sources");
    let mut built = rebuilder.built();

    // A build that fails: nothing changes.
    std::fs::write(&source, "// v2, not compiling yet\n").expect("edit");
    assert!(matches!(settled(&mut built, "the failing build").await, Built::Failed(..)));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(running_version(&client, "invite-customer").await, v1, "the running version keeps serving");

    // A build that succeeds: its component is swapped in.
    std::fs::write(&ok, "").expect("the build will succeed");
    std::fs::write(&source, "// v2\n").expect("edit again");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while running_version(&client, "invite-customer").await != v2 {
        assert!(tokio::time::Instant::now() < deadline, "v2 was never swapped in: {:?}", *built.borrow());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(matches!(*built.borrow(), Built::Succeeded(_)));
    let answer = client.invite("Dev@Example.com").await;
    assert_eq!(answer["data"]["InviteCustomer"]["email"], "dev@example.com", "v2 normalises: {answer}");
    shell.stop().await.expect("clean stop");
}
