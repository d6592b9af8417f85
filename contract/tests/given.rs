//! The given / when / then helper itself: that it runs the cycle as the shell
//! would, and that a wrong expectation fails, saying what differs.

use low_contract::testing::{Given, TestStore};
use low_contract::*;
use std::panic::{UnwindSafe, catch_unwind};

/// Greets a name once; `Greet { name, by }` reads who else `by` greeted.
struct Greeter;

impl Function for Greeter {
    fn meta() -> Meta {
        Meta::handler("greeter", [COMMANDS_TOPIC], "greetings").model(ModelSpec {
            name: "Greeted".into(),
            collection: "greeted".into(),
            key: "name".into(),
            fields: vec![FieldSpec::new("name", FieldKind::Text, true)],
            public: false,
            authenticated: false,
            description: None,
        })
    }

    fn lookup(input: &Message, _store: &dyn StoreRead, _env: &dyn Env) -> Vec<Lookup> {
        match (input.text("name"), input.text("by")) {
            (Some(name), by) => {
                let mut plan = vec![Lookup::by_key("greeted", "greeted", name)];
                if let Some(by) = by {
                    plan.push(Lookup::by_field("by", "greeted", "by", json!(by)));
                }
                plan
            }
            _ => vec![],
        }
    }

    fn operate(input: &Message, data: &Data, env: &dyn Env) -> Outcome {
        match (input.kind.as_str(), input.text("name")) {
            ("Greet", None) => Outcome::Reject("Name is required".into()),
            ("Greet", Some(name)) => match data.first("greeted") {
                Some(earlier) => {
                    Outcome::Reject(format!("{name} was greeted at version {}", earlier.version))
                }
                None => {
                    env.log(Level::Info, &format!("greeting {name}"));
                    let others = data.all("by").len();
                    Outcome::emit(
                        env.message("Greeted", json!({ "name": name, "others": others, "at": env.now_ms() })),
                    )
                }
            },
            // A bug on purpose: writes a collection it does not declare.
            ("Scribble", _) => Outcome::emit(env.message("Scribbled", json!({}))),
            _ => Outcome::Ignore,
        }
    }

    fn write(output: &Message, env: &dyn Env) -> WritePlan {
        match output.kind.as_str() {
            "Greeted" => WritePlan {
                ops: vec![WriteOp::Insert {
                    collection: "greeted".into(),
                    key: output.text("name").unwrap_or_default().into(),
                    body: output.payload.clone(),
                }],
                // The shell gives `write` the message stamped: caused by the input.
                notify: vec![
                    env.message("Done", json!({ "event": output.id, "cause": output.causation_id })),
                ],
            },
            _ => WritePlan {
                ops: vec![WriteOp::Put { collection: "elsewhere".into(), key: "k".into(), body: json!({}) }],
                notify: vec![],
            },
        }
    }
}

fn greet(name: &str) -> Message {
    Message::new("c-1", "Greet", json!({ "name": name }))
}

/// The panic message of `f`, which must panic.
fn failure(f: impl FnOnce() + UnwindSafe) -> String {
    let payload = catch_unwind(f).expect_err("the expectation should have failed");
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => payload.downcast_ref::<&str>().map(|s| s.to_string()).unwrap_or_default(),
    }
}

#[test]
fn a_cycle_runs_lookup_operate_and_write_with_one_env() {
    let then = Given::<Greeter>::store(TestStore::default().with(
        "greeted",
        "Bob",
        json!({ "name": "Bob", "by": "Cy" }),
    ))
    .at(42)
    .when(Message::new("c-1", "Greet", json!({ "name": "Ada", "by": "Cy" })));
    then.then_looks_up([
        Lookup::by_key("greeted", "greeted", "Ada"),
        Lookup::by_field("by", "greeted", "by", json!("Cy")),
    ])
    // The lookup plan ran against the given documents.
    .then_emits([Message::new("id-1", "Greeted", json!({ "name": "Ada", "others": 1, "at": 42 }))])
    .then_writes([WriteOp::Insert {
        collection: "greeted".into(),
        key: "Ada".into(),
        body: json!({ "name": "Ada", "others": 1, "at": 42 }),
    }])
    // `write` draws the next id from the same env, and sees the event as
    // the shell records it (caused by the command).
    .then_notifies([Message::new("id-2", "Done", json!({ "event": "id-1", "cause": "c-1" }))])
    .then_logs([(Level::Info, "greeting Ada")]);
    assert_eq!(then.data().all("by").len(), 1);
    assert_eq!(then.plans().len(), 1);
    assert_eq!(then.input(), &Message::new("c-1", "Greet", json!({ "name": "Ada", "by": "Cy" })));
}

#[test]
fn given_documents_keep_their_versions() {
    let earlier = Document { version: 4, ..Document::new("greeted", "Ada", json!({ "name": "Ada" })) };
    Given::<Greeter>::documents([earlier])
        .when(greet("Ada"))
        .then_rejects("Ada was greeted at version 4")
        .then_writes([])
        .then_notifies([])
        .then_logs([]);
    Given::<Greeter>::nothing().when(Message::new("c-1", "Wave", json!({}))).then_ignores().then_writes([]);
}

#[test]
fn matching_is_partial_and_opt_in() {
    let then = Given::<Greeter>::nothing().when(greet("Ada"));
    then.then_emits_matching(json!([{ "kind": "Greeted", "payload": { "name": "Ada" } }]))
        .then_writes_matching(json!([{ "op": "insert", "key": "Ada" }]))
        .then_notifies_matching(json!([{ "kind": "Done" }]));
    // Exact by default: a subset is not enough.
    let message = failure(|| {
        Given::<Greeter>::nothing().when(greet("Ada")).then_emits([Message::new(
            "id-1",
            "Greeted",
            json!({ "name": "Ada" }),
        )]);
    });
    assert!(
        message.starts_with("greeter, when `Greet` (c-1): the outcome differs\nexpected:\n"),
        "{message}"
    );
    assert!(message.contains("\"others\": 0"), "the actual value is shown: {message}");
}

#[test]
fn a_wrong_expectation_shows_expected_and_actual() {
    let message = failure(|| {
        Given::<Greeter>::nothing().when(greet("Ada")).then_emits_matching(json!([{ "kind": "Waved" }]));
    });
    assert!(
        message.contains("the emitted messages do not match (expected is a subset of actual)"),
        "{message}"
    );
    let (expected, actual) = message.split_once("actual:").expect("both are shown");
    assert!(expected.contains("\"Waved\""), "{message}");
    assert!(actual.contains("\"Greeted\""), "{message}");

    let message = failure(|| {
        Given::<Greeter>::nothing().when(greet("Ada")).then_rejects("Ada was greeted at version 1");
    });
    assert!(message.contains("the outcome differs"), "{message}");
    assert!(message.contains("\"reject\": \"Ada was greeted at version 1\""), "{message}");

    let message = failure(|| {
        Given::<Greeter>::nothing()
            .when(Message::new("c-2", "Greet", json!({})))
            .then_emits_matching(json!([{ "kind": "Greeted" }]));
    });
    assert!(message.starts_with("greeter, when `Greet` (c-2): the outcome differs"), "{message}");
    assert!(message.contains("\"reject\": \"Name is required\""), "{message}");

    let message = failure(|| {
        Given::<Greeter>::nothing().when(greet("Ada")).then_writes([]);
    });
    assert!(message.contains("the writes differ"), "{message}");
    let message = failure(|| {
        Given::<Greeter>::nothing().when(greet("Ada")).then_logs([(Level::Warn, "greeting Ada")]);
    });
    assert!(message.contains("the logs differ"), "{message}");
}

#[test]
#[should_panic(expected = "when `Scribble` (c-9): writes to collection `elsewhere`, which its meta does not")]
fn writing_an_undeclared_collection_fails_as_the_shell_would() {
    Given::<Greeter>::nothing().when(Message::new("c-9", "Scribble", json!({})));
}

/// Answers once a `Done` arrives; fails on a `No`.
struct Answer;

impl Resolver for Answer {
    fn meta() -> Meta {
        Meta::resolver("answer", ["Greet"])
    }

    fn resolve(_command: &Message, seen: &[Message], env: &dyn Env) -> Resolution {
        env.log(Level::Debug, &format!("{} seen", seen.len()));
        match seen.last().map(|m| m.kind.as_str()) {
            Some("Done") => Resolution::RespondDocument { collection: "greeted".into(), key: "Ada".into() },
            Some("No") => Resolution::Fail("no".into()),
            Some(_) => Resolution::Respond(json!({ "at": env.now_ms() })),
            None => Resolution::Pending,
        }
    }
}

#[test]
fn a_resolver_answers_from_what_it_has_seen() {
    let seen = |kind: &str| Message::new("n-1", kind, json!({}));
    Given::<Answer>::notifications([]).when(greet("Ada")).then_waits().then_logs([(Level::Debug, "0 seen")]);
    Given::<Answer>::notifications([seen("Done")])
        .when(greet("Ada"))
        .then_responds_with_document("greeted", "Ada");
    Given::<Answer>::notifications([seen("No")]).when(greet("Ada")).then_fails("no");
    let answered = Given::<Answer>::notifications([seen("Other")]).at(7).when(greet("Ada"));
    answered.then_responds(json!({ "at": 7 }));
    assert_eq!(answered.resolution(), &Resolution::Respond(json!({ "at": 7 })));
    let message = failure(|| {
        Given::<Answer>::notifications([]).when(greet("Ada")).then_fails("no");
    });
    assert!(message.starts_with("answer, when `Greet` (c-1): the resolution differs"), "{message}");
}
