//! `host new`: functions made from the templates, as a user would, in a copy
//! of the project — built with the real toolchains, their generated
//! scenarios run by `host test`, and the Rust trio served over HTTP.

mod support;

use host::Project;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::{error, start, workspace};

const HOST: &str = env!("CARGO_BIN_EXE_host");

/// A fresh copy of what a function needs from the project: the contract, the
/// WIT, the SDKs, the Makefile, and a workspace with only the contract in it.
fn project_copy(test: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("host-new").join(test);
    let _ = std::fs::remove_dir_all(&root);
    for dir in ["contract", "wit", "guest-functions/sdk"] {
        copy_dir(&workspace().join(dir), &root.join(dir));
    }
    for file in ["Cargo.lock", "Makefile", "rustfmt.toml"] {
        std::fs::copy(workspace().join(file), root.join(file)).expect("copy a project file");
    }
    let manifest = std::fs::read_to_string(workspace().join("Cargo.toml")).expect("Cargo.toml");
    let mut manifest: toml_edit::DocumentMut = manifest.parse().expect("Cargo.toml parses");
    manifest["workspace"]["members"] = toml_edit::value(toml_edit::Array::from_iter(["contract"]));
    manifest["workspace"].as_table_mut().expect("[workspace]").remove("default-members");
    std::fs::write(root.join("Cargo.toml"), manifest.to_string()).expect("write Cargo.toml");
    std::fs::create_dir_all(root.join("modules")).expect("modules/");
    root
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create a folder");
    for entry in std::fs::read_dir(from).expect("read a folder") {
        let entry = entry.expect("a folder entry");
        let name = entry.file_name();
        if name == "target" || name == "node_modules" || name == "__pycache__" {
            continue;
        }
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &to.join(&name));
        } else {
            std::fs::copy(entry.path(), to.join(&name)).expect("copy a file");
        }
    }
}

fn host(root: &Path, args: &[&str]) -> Output {
    Command::new(HOST).args(args).current_dir(root).output().expect("run host")
}

fn new(root: &Path, name: &str, kind: &str, lang: &str) {
    let out = host(root, &["new", name, "--kind", kind, "--lang", lang]);
    assert!(out.status.success(), "host new {name}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `host test` of the function's generated scenarios against its component.
fn passes_its_scenarios(root: &Path, name: &str) {
    let module = format!("modules/{name}.wasm");
    let scenarios = format!("guest-functions/{name}/scenarios");
    let out = host(root, &["test", &module, &scenarios]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{name}'s scenarios: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("3 passed, 0 failed"), "{name}: {stdout}");
}

/// Builds a Rust function as `make guest` does. Its own target dir: the
/// outer `cargo test` may hold the workspace's.
fn build_rust(root: &Path, name: &str) {
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("host-new-target");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "--profile", "guest", "--target", "wasm32-wasip2", "-p", name])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(root)
        .status()
        .expect("run cargo");
    assert!(status.success(), "{name} does not build");
    let built = target.join("wasm32-wasip2/guest").join(format!("{}.wasm", name.replace('-', "_")));
    std::fs::copy(built, root.join("modules").join(format!("{name}.wasm"))).expect("copy the component");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rust_trio_from_host_new_builds_passes_its_scenarios_and_serves_its_command() {
    let root = project_copy("rust");
    new(&root, "book-room", "handler", "rust");
    new(&root, "book-room-projector", "projector", "rust");
    new(&root, "book-room-resolver", "resolver", "rust");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    assert!(
        manifest.contains("\"guest-functions/book-room-resolver\""),
        "not a workspace member:\n{manifest}"
    );

    for name in ["book-room", "book-room-projector", "book-room-resolver"] {
        build_rust(&root, name);
        passes_its_scenarios(&root, name);
    }

    let text = r#"
        listen = "127.0.0.1:0"
        modules = "modules"
        functions = ["book-room", "book-room-projector", "book-room-resolver"]
    "#;
    let project = Project::parse(text, &root).expect("the project");
    let (shell, client) = start(project).await;
    let booked = client.graphql(r#"mutation { BookRoom(id: "r-1") { id } }"#).await;
    assert_eq!(booked["data"]["BookRoom"], json!({ "id": "r-1" }), "{booked}");
    let again = client.graphql(r#"mutation { BookRoom(id: "r-1") { id } }"#).await;
    assert_eq!(error(&again), Some("r-1 is taken already"), "{again}");
    // The handler answers from its own document; the projector's read model
    // follows from the event, a moment later.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let entry = loop {
        let entry = client.graphql(r#"{ bookRoomEntry(id: "r-1") { id last events } }"#).await;
        if !entry["data"]["bookRoomEntry"].is_null() || std::time::Instant::now() > deadline {
            break entry;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        entry["data"]["bookRoomEntry"],
        json!({ "id": "r-1", "last": "BookRoomAccepted", "events": 1 }),
        "{entry}"
    );
    shell.stop().await.expect("the shell stops");
}

/// With the pinned componentize tools `make guest` installed (its Makefile
/// rules build what `host new` made in JavaScript and Python).
#[test]
fn javascript_and_python_functions_from_host_new_build_and_pass_their_scenarios() {
    let tools = workspace().join("target/polyglot-tools");
    let tools = std::env::var_os("CARGO_TARGET_DIR")
        .map(|dir| PathBuf::from(dir).join("polyglot-tools"))
        .filter(|dir| dir.is_dir())
        .unwrap_or(tools);
    assert!(
        tools.join("js/node_modules").is_dir(),
        "no componentize tools in {}: run `make guest`",
        tools.display()
    );
    let root = project_copy("polyglot");
    new(&root, "greet", "handler", "js");
    new(&root, "greet-resolver", "resolver", "python");
    new(&root, "greet-projector", "projector", "python");
    new(&root, "hello", "handler", "python");
    let status = Command::new("make")
        .args(["--no-print-directory", "modules/greet.wasm", "modules/greet-resolver.wasm"])
        .args(["modules/greet-projector.wasm", "modules/hello.wasm"])
        // The tools are there already: do not reinstall them for the copy.
        .arg(format!("TOOLS={}", tools.display()))
        .args(["JS_TOOL=", "PY_TOOL="])
        .current_dir(&root)
        .status()
        .expect("run make");
    assert!(status.success(), "make does not build the JavaScript and Python functions");
    passes_its_scenarios(&root, "greet");
    passes_its_scenarios(&root, "greet-resolver");
    passes_its_scenarios(&root, "greet-projector");
    passes_its_scenarios(&root, "hello");
}

#[test]
fn host_new_refuses_a_taken_or_invalid_name_and_writes_nothing() {
    let root = project_copy("refusals");
    new(&root, "book-room", "handler", "rust");
    let before = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    for (args, says) in [
        (&["new", "book-room", "--kind", "projector"][..], "`book-room` exists already"),
        (&["new", "Book_Room", "--kind", "handler"][..], "is not a valid function name"),
        (&["new", "sdk", "--kind", "handler"][..], "a name the project uses"),
    ] {
        let out = host(&root, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{args:?}: {stderr}");
    }
    assert!(!root.join("guest-functions/greet").exists() && !root.join("guest-functions/Book_Room").exists());
    assert_eq!(std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml"), before);
    let out = host(&root.join("guest-functions"), &["new", "x", "--kind", "handler"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a lowshell project"), "{out:?}");
}
