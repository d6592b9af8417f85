//! The native baseline (`--features native-baseline`): the example's logic
//! compiled into the shell answers exactly as its components do.
#![cfg(feature = "native-baseline")]

mod support;

use host::Project;
use support::{error, start, workspace};

#[tokio::test]
async fn the_native_baseline_behaves_like_the_components() {
    let mut project = Project::load(&workspace().join("projects/native.toml")).expect("projects/native.toml");
    project.listen = "127.0.0.1:0".parse().expect("address");
    let (shell, client) = start(project).await;

    let first = client.invite("native@example.com").await;
    assert_eq!(first["data"]["InviteCustomer"]["invited"], true, "{first}");
    let again = client.invite("native@example.com").await;
    assert_eq!(again["data"]["InviteCustomer"]["id"], first["data"]["InviteCustomer"]["id"]);
    let empty = client.invite("").await;
    assert!(error(&empty).is_some_and(|m| m.contains("Email is required")), "{empty}");
    let listed = client.graphql("{ functions { name version } }").await;
    assert!(listed.to_string().contains("native-invite-customer"), "{listed}");
    shell.stop().await.expect("clean stop");
}
