//! The `host` binary: help, and errors at start (one line on stderr, what to
//! do, a non-zero exit).

mod support;

use std::process::{Command, Output};
use support::workspace;

fn host(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_host"));
    command.args(args).current_dir(workspace()).env_remove("RUST_LOG");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("host runs")
}

/// The error line: stderr must be exactly one line starting with `error: `.
fn error_line(output: &Output) -> String {
    assert!(!output.status.success(), "a failure exit");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_owned()
}

#[test]
fn help_describes_every_option() {
    let help = String::from_utf8_lossy(&host(&["--help"], &[]).stdout).into_owned();
    for expected in ["run", "--log-format", "RUST_LOG", "LOWSHELL_", "/metrics"] {
        assert!(help.contains(expected), "{expected} in:\n{help}");
    }
    let run = String::from_utf8_lossy(&host(&["run", "--help"], &[]).stdout).into_owned();
    for expected in ["--project", "--listen", "--log-format"] {
        assert!(run.contains(expected), "{expected} in:\n{run}");
    }
}

#[test]
fn a_bad_project_file_is_one_line_naming_the_place() {
    let dir = std::env::temp_dir().join(format!("lowshell-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "name = \"x\"\nattempts = \"many\"\n").expect("write");
    let line = error_line(&host(&["run", "--project", &file.to_string_lossy()], &[]));
    assert!(line.contains("bad.toml: line 2, column 12"), "{line}");
    let line = error_line(&host(&["run", "--project", "/no/such/project.toml"], &[]));
    assert!(line.contains("cannot read project file"), "{line}");
    let line = error_line(&host(&["run"], &[("LOWSHELL_ATTEMPTS", "many")]));
    assert!(line.starts_with("error: LOWSHELL_ATTEMPTS=many: invalid type"), "not the file's fault: {line}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_missing_module_says_to_build_it() {
    let line = error_line(&host(
        &["run", "--listen", "127.0.0.1:0"],
        &[("LOWSHELL_FUNCTIONS", "[\"no-such-function\"]")],
    ));
    assert!(line.contains("no-such-function.wasm") && line.contains("make guest"), "{line}");
}

#[test]
fn a_taken_port_says_to_pick_another() {
    support::module("invite-customer");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = taken.local_addr().expect("address").to_string();
    let line = error_line(&host(&["run", "--listen", &addr], &[]));
    assert!(line.contains(&format!("cannot listen on {addr}")) && line.contains("--listen"), "{line}");
}

#[test]
fn the_default_command_takes_the_options_of_run() {
    let line = error_line(&host(&["--project", "/no/such/project.toml"], &[]));
    assert!(line.contains("cannot read project file /no/such/project.toml"), "{line}");
}

#[test]
fn admin_commands_say_what_is_wrong_with_the_url_and_the_arguments() {
    let output = host(&["functions", "--to", "notaurl"], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success());
    assert!(stderr.contains("`notaurl` is not the URL of a shell"), "{stderr}");
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let url = format!("http://{}", free.local_addr().expect("address"));
    drop(free);
    let line = error_line(&host(&["functions", "--to", &url], &[]));
    assert!(line.contains("cannot reach the shell") && line.to_lowercase().contains("refused"), "{line}");
    let help = String::from_utf8_lossy(&host(&["rollback", "--help"], &[]).stdout).into_owned();
    assert!(help.contains("The function to roll back"), "{help}");
}

#[test]
fn a_memory_limit_too_small_for_a_component_says_so() {
    let line =
        error_line(&host(&["run", "--listen", "127.0.0.1:0"], &[("LOWSHELL_LIMITS__MEMORY_MIB", "1")]));
    assert!(line.contains("memory limit of 1 MiB") && line.contains("limits.memory-mib"), "{line}");
    assert!(!line.contains("not a WebAssembly component"), "{line}");
}

#[test]
fn a_project_listing_no_functions_says_so() {
    let line = error_line(&host(&["run", "--listen", "127.0.0.1:0"], &[("LOWSHELL_FUNCTIONS", "[]")]));
    assert!(line.contains("lists no functions"), "{line}");
    assert!(!line.contains("make guest"), "{line}");
}
