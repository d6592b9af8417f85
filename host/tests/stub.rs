//! The stub host's own tests: the harness, the scenario runner (including
//! that it fails on a wrong expectation), and `host test` misuse.
//!
//! They need the guest components; `make test` builds them first. Run alone
//! without them, the tests that need one fail, saying to run `make guest`.

use host::stub::scenario::{self, Verdict};
use host::stub::{Ids, Stub, StubError};
use low_contract::{Data, Level, Lookup, Message, Outcome, Principal, Resolution, Value, WriteOp, json};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A component built by `make guest`; a test that needs one fails without it
/// (a test that ran nothing must not pass).
fn component(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../modules").join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: run `make guest` (or `make test`, which does)", path.display());
    path
}

fn invite(email: &str) -> Message {
    Message::new("cmd-1", "InviteCustomer", json!({ "email": email }))
}

#[test]
fn a_full_cycle_returns_every_plan_as_values_and_commits_to_the_store() {
    let path = component("invite-customer");
    let stub = Stub::load(path).unwrap();
    assert_eq!(stub.meta().name, "invite-customer");
    let run = stub.when(invite("ada@example.com")).unwrap();
    assert_eq!(run.lookups, vec![Lookup::by_key("invite", "invites", "ada@example.com")]);
    assert_eq!(run.data.all("invite"), &[]);
    // Sequential ids: id-1 for the customer, id-2 for the event.
    let event =
        Message::new("id-2", "CustomerInvited", json!({ "customer-id": "id-1", "email": "ada@example.com" }));
    assert_eq!(run.outcome, Outcome::emit(event.clone()));
    assert_eq!(
        run.events,
        vec![Message { correlation_id: Some("cmd-1".into()), causation_id: Some("cmd-1".into()), ..event }]
    );
    assert_eq!(
        run.writes,
        vec![WriteOp::Insert {
            collection: "invites".into(),
            key: "ada@example.com".into(),
            body: json!({ "email": "ada@example.com", "customer-id": "id-1" }),
        }]
    );
    assert_eq!(run.plans.len(), 1);
    assert!(run.notify.is_empty());
    let stored = stub.document("invites", "ada@example.com").unwrap().unwrap();
    assert_eq!((stored.version, &stored.body["customer-id"]), (1, &json!("id-1")));

    // The second invite sees the first one's write, and logs.
    let again = stub.when(invite("ada@example.com")).unwrap();
    again
        .then_emits(json!([{ "kind": "CustomerInviteFailed", "payload": { "customer-id": "id-1" } }]))
        .then_writes(json!([]))
        .then_logs(json!([{ "level": "info", "message": "ada@example.com was already invited" }]));
    assert_eq!(again.logs[0].function, "invite-customer");
    assert_eq!(stub.env().logs().len(), 1);
}

#[test]
fn each_phase_runs_on_its_own() {
    let path = component("invite-customer");
    let stub = Stub::load(path).unwrap().given_document(
        "invites",
        "ada@example.com",
        json!({ "email": "ada@example.com", "customer-id": "c-7" }),
    );
    assert_eq!(stub.call_meta().unwrap(), *stub.meta());
    let input = invite("ada@example.com");
    let plan = stub.lookup(&input).unwrap();
    let data = stub.run_lookups(&plan).unwrap();
    assert_eq!(data.first("invite").map(|d| d.key.as_str()), Some("ada@example.com"));
    // `operate` takes any data, not only the store's.
    let fresh = stub.operate(&input, &Data::default()).unwrap();
    assert!(matches!(&fresh, Outcome::Emit(m) if m[0].kind == "CustomerInvited"));
    let Outcome::Emit(emitted) = stub.operate(&input, &data).unwrap() else { panic!("expected emit") };
    assert_eq!(emitted[0].payload["customer-id"], json!("c-7"));
    assert_eq!(stub.write(&emitted[0]).unwrap().ops, vec![]);
    // A handler has no `resolve`.
    let err = stub.resolve(&input, &[]).unwrap_err();
    assert!(matches!(err, StubError::Guest(_)), "{err}");
}

#[test]
fn seeded_ids_and_the_clock_are_deterministic() {
    let path = component("invite-customer");
    let ids = |seed| {
        let stub = Stub::load(&path).unwrap().with_ids(Ids::Seeded { seed }).at(42);
        assert_eq!(stub.env().ids_issued(), 0);
        let run = stub.when(invite("a@b.c")).unwrap();
        run.events[0].payload["customer-id"].as_str().unwrap().to_owned()
    };
    assert_eq!(ids(1), ids(1));
    assert_ne!(ids(1), ids(2));
    assert_eq!(ids(1).len(), 36);
}

#[test]
fn a_peer_makes_its_collections_readable() {
    let (handler, projector) = (component("invite-customer"), component("customer-projector"));
    // The projector reads `customers`, which it owns: fine alone.
    let stub = Stub::load(&projector).unwrap();
    let event = Message::new("e-1", "CustomerInvited", json!({ "customer-id": "c-1", "email": "a@b.c" }));
    stub.when(event).unwrap().then_writes(json!([{ "op": "put", "key": "c-1" }]));
    // With the handler as a peer, both sets of collections are known, and
    // only the projector runs.
    let stub = Stub::load(&projector).unwrap().with_peer(&handler).unwrap();
    assert_eq!(stub.meta().name, "customer-projector");
    let event = Message::new("e-1", "CustomerInvited", json!({ "customer-id": "c-1", "email": "a@b.c" }));
    stub.when(event).unwrap().then_emits(json!([{ "kind": "Customer" }]));
    assert!(Stub::load(&projector).unwrap().with_peer(&projector).is_err(), "two functions named alike");
}

#[test]
fn a_resolver_resolves() {
    let path = component("invite-resolver");
    let stub = Stub::load(path).unwrap();
    let command = invite("a@b.c");
    assert_eq!(stub.resolve(&command, &[]).unwrap(), Resolution::Pending);
    let done = Message::new("n-1", "ProjectionComplete", json!({ "collection": "customers", "key": "c-1" }));
    assert_eq!(
        stub.resolve(&command, &[done]).unwrap(),
        Resolution::RespondDocument { collection: "customers".into(), key: "c-1".into() }
    );
    assert!(stub.when(command).is_err(), "a resolver has no LOW cycle");
}

#[test]
#[should_panic(expected = "emitted messages differ")]
fn a_wrong_then_panics_with_a_diff() {
    let path = component("invite-customer");
    let stub = Stub::load(path).unwrap();
    stub.when(invite("a@b.c")).unwrap().then_emits(json!([{ "kind": "CustomerInviteFailed" }]));
}

#[test]
#[should_panic(expected = "outcome differ")]
fn then_rejects_fails_on_an_emit() {
    let path = component("invite-customer");
    Stub::load(path).unwrap().when(invite("a@b.c")).unwrap().then_rejects("Email is required");
}

#[test]
fn the_log_level_is_kept() {
    let path = component("invite-customer");
    let stub = Stub::load(path).unwrap().given_document("invites", "a@b.c", json!({ "customer-id": "c" }));
    stub.when(invite("a@b.c")).unwrap();
    assert_eq!(stub.env().logs()[0].level, Level::Info);
}

// ---- scenarios -------------------------------------------------------------

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const WRONG: &str = r#"
[[scenario]]
name = "right"
[scenario.when]
kind = "InviteCustomer"
payload = { email = "a@b.c" }
[scenario.then]
events = [{ kind = "CustomerInvited", payload = { customer-id = "<id:c>" } }]
writes = [{ op = "insert", body = { customer-id = "<id:c>" } }]

[[scenario]]
name = "wrong"
[scenario.when]
kind = "InviteCustomer"
payload = { email = "a@b.c" }
[scenario.then]
outcome = { reject = "Email is required" }
"#;

#[test]
fn the_runner_fails_a_wrong_expectation_with_a_diff() {
    let path = component("invite-customer");
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "wrong.toml", WRONG);
    let mut out = vec![];
    let report = scenario::run_paths(&path, &[file], &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert_eq!((report.passed, report.failed), (1, 1), "{out}");
    assert!(out.contains("PASS  right"), "{out}");
    assert!(out.contains("FAIL  wrong"), "{out}");
    assert!(out.contains("wrong.toml:11"), "{out}");
    assert!(out.contains("-  \"reject\": \"Email is required\""), "{out}");
    assert!(out.lines().last() == Some("1 passed, 1 failed"), "{out}");
}

#[test]
fn named_placeholders_must_agree_across_the_scenario() {
    let path = component("invite-customer");
    let mut stub = Stub::load(path).unwrap();
    let text = r#"
[[scenario]]
name = "the event id is not the customer id"
[scenario.when]
kind = "InviteCustomer"
payload = { email = "a@b.c" }
[scenario.then]
events = [{ id = "<id:x>", payload = { customer-id = "<id:x>" } }]
"#;
    let scenarios = scenario::parse(Path::new("inline.toml"), text).unwrap();
    let Verdict::Fail(failures) = scenario::run_scenario(&mut stub, &scenarios[0].scenario) else {
        panic!("should fail")
    };
    assert!(failures[0].contains("events differ"), "{failures:?}");
}

#[test]
fn an_expected_error_passes_only_when_the_cycle_fails() {
    let path = component("invite-customer");
    let mut stub = Stub::load(path).unwrap();
    let text = r#"
[[scenario]]
name = "expects an error that does not come"
[scenario.when]
kind = "InviteCustomer"
payload = { email = "a@b.c" }
[scenario.then]
error = "conflict"
"#;
    let scenarios = scenario::parse(Path::new("inline.toml"), text).unwrap();
    assert!(matches!(scenario::run_scenario(&mut stub, &scenarios[0].scenario), Verdict::Fail(_)));
}

#[test]
fn a_malformed_scenario_is_reported_with_its_line() {
    let err =
        scenario::parse(Path::new("bad.toml"), "[[scenario]]\nname = \"x\"\n[scenario.when]\nkind = 3\n")
            .unwrap_err();
    assert_eq!(err.to_string(), "bad.toml:4: invalid type: integer `3`, expected a string");
    let err = scenario::parse(
        Path::new("typo.toml"),
        "[[scenario]]\nname = \"x\"\nwhen = { kind = \"A\" }\n[scenario.then]\noutcom = \"emit\"\n",
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("typo.toml:5: unknown field `outcom`"), "{err}");
    let err = scenario::parse(Path::new("empty.toml"), "# nothing\n").unwrap_err();
    assert!(err.to_string().contains("no scenarios"), "{err}");
}

#[test]
fn an_unknown_write_op_is_refused_with_its_line() {
    let path = component("invite-customer");
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "upsert.toml",
        "# a typo in an op\n[[scenario]]\nname = \"upserts\"\n[scenario.when]\nkind = \"InviteCustomer\"\n\
         payload = { email = \"a@b.c\" }\n[scenario.then]\nwrites = [{ op = \"upsert\", key = \"a@b.c\" }]\n",
    );
    let (ok, out) = host_test(&[&path, &file]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("upsert.toml:2: scenario `upserts`: `then.writes` has an unknown op \"upsert\""),
        "{out}"
    );
}

// ---- `host test` -----------------------------------------------------------

fn host_test(args: &[&Path]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_host")).arg("test").args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn host_test_passes_the_guests_scenarios() {
    let path = component("invite-resolver");
    let scenarios =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-functions/invite-resolver/scenarios");
    let (ok, out) = host_test(&[&path, &scenarios]);
    assert!(ok, "{out}");
    assert!(out.lines().any(|l| l == "7 passed, 0 failed"), "{out}");
}

#[test]
fn host_test_fails_on_a_missing_component() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "s.toml", WRONG);
    let missing = dir.path().join("missing.wasm");
    let (ok, out) = host_test(&[&missing, &file]);
    assert!(!ok, "{out}");
    assert!(out.contains("cannot read the component") && out.contains("missing.wasm"), "{out}");
}

#[test]
fn host_test_fails_on_a_scenario_for_another_function_or_a_malformed_one() {
    let path = component("invite-customer");
    let dir = tempfile::tempdir().unwrap();
    let other = write(
        dir.path(),
        "other.toml",
        "[[scenario]]\nname = \"for the projector\"\nfunction = \"customer-projector\"\n[scenario.when]\nkind = \"CustomerInvited\"\n",
    );
    let (ok, out) = host_test(&[&path, &other]);
    assert!(!ok, "{out}");
    assert!(out.contains("other.toml:1: scenario `for the projector`: names function `customer-projector`, but the component is `invite-customer`"), "{out}");
    assert!(out.contains("0 passed, 1 failed"), "{out}");

    let command = write(
        dir.path(),
        "command.toml",
        "[[scenario]]\nname = \"n\"\n[scenario.when]\nkind = \"RemoveCustomer\"\n",
    );
    let (ok, out) = host_test(&[&path, &command]);
    assert!(!ok, "{out}");
    assert!(out.contains("`RemoveCustomer` is not a command of `invite-customer`"), "{out}");

    let malformed = write(dir.path(), "malformed.toml", "[[scenario]]\nname = \"x\"\n[scenario.when\n");
    let (ok, out) = host_test(&[&path, &malformed]);
    assert!(!ok, "{out}");
    assert!(out.contains("malformed.toml:3:"), "{out}");

    let (ok, out) = host_test(&[&path, &dir.path().join("nowhere")]);
    assert!(!ok, "{out}");
    assert!(out.contains("nowhere: cannot read"), "{out}");
}

/// What the shell asks on each step, `operate-and-write`, answers as
/// `operate` and then `write` on each message as the shell stamps it would:
/// the same outcome, the same plans.
#[test]
fn operate_and_write_answers_as_operate_then_write_would() {
    let inviter = Principal::new("ada", json!({ "roles": ["inviter"] }));
    let invited = json!({ "email": "ada@example.com", "customer-id": "cust-1" });
    let event = Message::new("e-1", "CustomerInvited", json!({ "customer-id": "cust-1", "email": "a@b.c" }));
    let cases = [
        ("invite-customer", invite("ada@example.com").correlated("req-1").by(inviter), None),
        ("invite-customer", invite(""), None),
        ("invite-customer", invite("ada@example.com"), Some(("invites", "ada@example.com", invited))),
        ("customer-projector", event.correlated("req-2"), None),
        ("customer-projector", Message::new("e-2", "CustomerArchived", json!({})), None),
    ];
    for (name, input, document) in cases {
        let stub = |document: &Option<(&str, &str, Value)>| {
            let stub = Stub::load(component(name)).unwrap();
            match document {
                Some((collection, key, body)) => stub.given_document(collection, key, body.clone()),
                None => stub,
            }
        };
        let at_once = stub(&document);
        assert!(at_once.function().operates_and_writes_at_once(), "{name} is built against the contract");
        let run = at_once.cycle(input).unwrap();

        let by_one = stub(&document);
        let input = &run.input;
        let data = by_one.run_lookups(&by_one.lookup(input).unwrap()).unwrap();
        let outcome = by_one.operate(input, &data).unwrap();
        let plans: Vec<_> = match &outcome {
            Outcome::Emit(messages) => messages
                .iter()
                .map(|m| by_one.write(&m.clone().stamped(input, || unreachable!("operate gave it an id"))))
                .collect::<Result<_, _>>()
                .unwrap(),
            _ => vec![],
        };
        assert_eq!(run.outcome, outcome, "{name} on {input:?}");
        assert_eq!(run.plans, plans, "{name} on {input:?}");
    }
}

/// A component built before the contract had `operate-and-write` (the
/// misbehaving projector is built so) still loads, and its steps call
/// `operate` and `write` one by one.
#[test]
fn a_component_built_before_operate_and_write_runs_export_by_export() {
    let stub = Stub::load(component("fixtures/misbehave-projector")).unwrap();
    assert!(!stub.function().operates_and_writes_at_once());
    let happened =
        Message::new("e-1", "Happened", json!({ "id": "t-1", "action": "ok", "phase": "operate" }));
    let run = stub.when(happened).unwrap();
    assert_eq!(run.emitted().len(), 1);
    assert_eq!(run.writes.len(), 1, "{:?}", run.writes);
    assert_eq!(
        stub.document("thing-views", "t-1").unwrap().map(|d| d.body["action"].clone()),
        Some(json!("ok"))
    );
}
