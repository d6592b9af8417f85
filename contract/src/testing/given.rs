//! Given / when / then: one LOW cycle of a function's logic, natively, with
//! the deterministic [`TestEnv`] and the documents of a [`TestStore`].

use super::matching::{matches, pretty, to_json};
use super::{TestEnv, TestStore};
use crate::{
    Data, Document, Env, Function, Level, Lookup, Message, Outcome, Resolution, Resolver, WriteOp, WritePlan,
};
use serde::Serialize;
use serde_json::{Value, json};
use std::marker::PhantomData;

/// What is true before the input arrives: the documents in the store (for a
/// handler or projector) or the notifications seen so far (for a resolver,
/// through [`Given::notifications`]), and the clock.
///
/// ```
/// # use low_contract::*;
/// # use low_contract::testing::Given;
/// # struct Greeter;
/// # impl Function for Greeter {
/// #     fn meta() -> Meta { Meta::handler("greeter", [COMMANDS_TOPIC], "greetings") }
/// #     fn lookup(_: &Message, _: &dyn StoreRead, _: &dyn Env) -> Vec<Lookup> { vec![] }
/// #     fn operate(_: &Message, _: &Data, _: &dyn Env) -> Outcome { Outcome::Ignore }
/// #     fn write(_: &Message, _: &dyn Env) -> WritePlan { WritePlan::default() }
/// # }
/// Given::<Greeter>::nothing().at(42).when(Message::new("c-1", "Wave", json!({}))).then_ignores();
/// ```
pub struct Given<F> {
    store: TestStore,
    env: TestEnv,
    function: PhantomData<fn() -> F>,
}

impl<F> Given<F> {
    /// An empty store.
    pub fn nothing() -> Self {
        Self::store(TestStore::default())
    }

    /// A store holding these documents (each at its own version).
    pub fn documents(documents: impl IntoIterator<Item = Document>) -> Self {
        Self::store(TestStore { documents: documents.into_iter().collect() })
    }

    /// A store built beforehand.
    pub fn store(store: TestStore) -> Self {
        Self { store, env: TestEnv::default(), function: PhantomData }
    }

    /// The clock reads `now_ms` (by default [`TestEnv`]'s fixed time).
    pub fn at(mut self, now_ms: u64) -> Self {
        self.env.now_ms = now_ms;
        self
    }
}

impl<F: Function> Given<F> {
    /// Runs one LOW cycle for `input` as the shell would: `lookup` (with the
    /// store readable), the lookup plan against the store, `operate`, and
    /// `write` for each emitted message as the shell stamps it (the input's
    /// request, principal and id as its cause) — one [`TestEnv`] throughout, so ids
    /// run `id-1`, `id-2`, … across the phases. Nothing is committed.
    ///
    /// Panics, as the shell would refuse the step, when a write plan writes a
    /// collection the function's `meta` does not declare, or an empty key.
    #[track_caller]
    pub fn when(self, input: Message) -> Then {
        let Given { store, env, .. } = self;
        let meta = F::meta();
        let lookups = F::lookup(&input, &store, &env);
        let data = store.data(&lookups);
        let outcome = F::operate(&input, &data, &env);
        let plans: Vec<WritePlan> = match &outcome {
            // `write` is given each message as the shell records it.
            Outcome::Emit(messages) => messages
                .iter()
                .map(|m| F::write(&m.clone().stamped(&input, || Env::new_id(&env)), &env))
                .collect(),
            Outcome::Reject(_) | Outcome::Ignore => vec![],
        };
        let then = Then {
            header: header(&meta.name, &input),
            writes: plans.iter().flat_map(|p| p.ops.iter().cloned()).collect(),
            notify: plans.iter().flat_map(|p| p.notify.iter().cloned()).collect(),
            input,
            lookups,
            data,
            outcome,
            plans,
            env,
        };
        for op in &then.writes {
            let collection = op.collection();
            if !meta.models.iter().any(|m| m.collection == collection) {
                panic!(
                    "{}: writes to collection `{collection}`, which its meta does not declare \
                     (the shell refuses the step)",
                    then.header
                );
            }
            if op.key().is_empty() {
                panic!("{}: writes a document with an empty key to `{collection}`", then.header);
            }
        }
        then
    }
}

impl<R: Resolver> Given<R> {
    /// A resolver has seen these notifications for the command so far.
    pub fn notifications(seen: impl IntoIterator<Item = Message>) -> GivenNotifications<R> {
        GivenNotifications {
            seen: seen.into_iter().collect(),
            env: TestEnv::default(),
            resolver: PhantomData,
        }
    }
}

fn header(function: &str, input: &Message) -> String {
    format!("{function}, when `{}` ({})", input.kind, input.id)
}

/// The notifications a resolver has seen; see [`Given::notifications`].
pub struct GivenNotifications<R> {
    seen: Vec<Message>,
    env: TestEnv,
    resolver: PhantomData<fn() -> R>,
}

impl<R: Resolver> GivenNotifications<R> {
    /// The clock reads `now_ms`.
    pub fn at(mut self, now_ms: u64) -> Self {
        self.env.now_ms = now_ms;
        self
    }

    /// Calls `resolve` for `command` with the notifications seen.
    pub fn when(self, command: Message) -> Resolved {
        let resolution = R::resolve(&command, &self.seen, &self.env);
        Resolved { header: header(&R::meta().name, &command), resolution, env: self.env }
    }
}

/// Fails the test, showing what was expected and what happened.
#[track_caller]
fn differ(header: &str, what: &str, expected: &Value, actual: &Value) -> ! {
    panic!("{header}: {what}\nexpected:\n{}\nactual:\n{}", pretty(expected), pretty(actual))
}

/// Compares exactly; on a difference, fails with `what` (say, "the outcome
/// differs"), showing both as JSON.
#[track_caller]
fn exactly<T: PartialEq + Serialize + ?Sized>(header: &str, what: &str, expected: &T, actual: &T) {
    if expected != actual {
        differ(header, what, &to_json(expected), &to_json(actual));
    }
}

/// Compares partially (see [`Then::then_emits_matching`]); on a mismatch,
/// fails showing both.
#[track_caller]
fn partially<T: Serialize + ?Sized>(header: &str, what: &str, expected: &Value, actual: &T) {
    let actual = to_json(actual);
    if !matches(expected, &actual) {
        differ(header, &format!("{what} do not match (expected is a subset of actual)"), expected, &actual);
    }
}

/// What one cycle did, as plain values, with assertions that read like the
/// domain. Every `then_*` compares exactly unless it says `matching`, and
/// returns `&Self` so they chain; a failure panics with expected vs actual.
#[derive(Debug)]
pub struct Then {
    header: String,
    input: Message,
    lookups: Vec<Lookup>,
    data: Data,
    outcome: Outcome,
    plans: Vec<WritePlan>,
    writes: Vec<WriteOp>,
    notify: Vec<Message>,
    env: TestEnv,
}

impl Then {
    /// The input, as given.
    pub fn input(&self) -> &Message {
        &self.input
    }

    /// The lookup plan `lookup` returned.
    pub fn lookups(&self) -> &[Lookup] {
        &self.lookups
    }

    /// What the lookup plan found in the store, as `operate` saw it.
    pub fn data(&self) -> &Data {
        &self.data
    }

    /// What `operate` decided, as it returned it (the shell sets correlation
    /// and causation ids afterwards; here they are as the function left them).
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// The emitted messages; none unless the outcome is `Emit`.
    pub fn emitted(&self) -> &[Message] {
        match &self.outcome {
            Outcome::Emit(messages) => messages,
            Outcome::Reject(_) | Outcome::Ignore => &[],
        }
    }

    /// One write plan per emitted message, in order.
    pub fn plans(&self) -> &[WritePlan] {
        &self.plans
    }

    /// Every write op of every plan, in order.
    pub fn writes(&self) -> &[WriteOp] {
        &self.writes
    }

    /// Every notification of every plan, in order.
    pub fn notifications(&self) -> &[Message] {
        &self.notify
    }

    /// The lines logged during the cycle.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.env.logs()
    }

    /// The environment the cycle ran with.
    pub fn env(&self) -> &TestEnv {
        &self.env
    }

    /// The lookup plan is exactly `expected`.
    #[track_caller]
    pub fn then_looks_up(&self, expected: impl IntoIterator<Item = Lookup>) -> &Self {
        let expected: Vec<Lookup> = expected.into_iter().collect();
        exactly(&self.header, "the lookups differ", &expected, &self.lookups);
        self
    }

    /// The outcome is `Emit` of exactly these messages.
    #[track_caller]
    pub fn then_emits(&self, expected: impl IntoIterator<Item = Message>) -> &Self {
        exactly(
            &self.header,
            "the outcome differs",
            &Outcome::Emit(expected.into_iter().collect()),
            &self.outcome,
        );
        self
    }

    /// The outcome is `Emit`, and the emitted messages match `expected`, a
    /// JSON array with one entry per message, in order, each a subset of the
    /// message as JSON (`id`, `kind`, `payload`, `correlation-id`,
    /// `causation-id`): an object matches an object that has at least its
    /// keys (each matching), an array one of the same length, element by
    /// element; anything else an equal value.
    ///
    /// ```
    /// # use low_contract::*;
    /// # use low_contract::testing::Given;
    /// # struct Greeter;
    /// # impl Function for Greeter {
    /// #     fn meta() -> Meta { Meta::handler("greeter", [COMMANDS_TOPIC], "greetings") }
    /// #     fn lookup(_: &Message, _: &dyn StoreRead, _: &dyn Env) -> Vec<Lookup> { vec![] }
    /// #     fn operate(input: &Message, _: &Data, env: &dyn Env) -> Outcome {
    /// #         let name = &input.payload["name"];
    /// #         Outcome::emit(env.message("Greeted", json!({ "name": name, "at": env.now_ms() })))
    /// #     }
    /// #     fn write(_: &Message, _: &dyn Env) -> WritePlan { WritePlan::default() }
    /// # }
    /// Given::<Greeter>::nothing()
    ///     .when(Message::new("c-1", "Greet", json!({ "name": "Ada" })))
    ///     .then_emits_matching(json!([{ "kind": "Greeted", "payload": { "name": "Ada" } }]));
    /// ```
    #[track_caller]
    pub fn then_emits_matching(&self, expected: Value) -> &Self {
        if !matches!(self.outcome, Outcome::Emit(_)) {
            differ(
                &self.header,
                "the outcome differs",
                &json!({ "emit": expected }),
                &to_json(&self.outcome),
            );
        }
        partially(&self.header, "the emitted messages", &expected, self.emitted());
        self
    }

    /// The outcome is `Reject` with exactly this reason.
    #[track_caller]
    pub fn then_rejects(&self, reason: &str) -> &Self {
        exactly(&self.header, "the outcome differs", &Outcome::Reject(reason.into()), &self.outcome);
        self
    }

    /// The outcome is `Ignore`.
    #[track_caller]
    pub fn then_ignores(&self) -> &Self {
        exactly(&self.header, "the outcome differs", &Outcome::Ignore, &self.outcome);
        self
    }

    /// The write ops of all plans are exactly `expected`, in order (`[]`:
    /// nothing is stored).
    #[track_caller]
    pub fn then_writes(&self, expected: impl IntoIterator<Item = WriteOp>) -> &Self {
        let expected: Vec<WriteOp> = expected.into_iter().collect();
        exactly(&self.header, "the writes differ", &expected, &self.writes);
        self
    }

    /// The write ops match `expected`, a JSON array of ops as in scenario
    /// files (`{ "op": "insert", "collection", "key", "body" }`, …), partially
    /// as [`then_emits_matching`](Self::then_emits_matching) does.
    #[track_caller]
    pub fn then_writes_matching(&self, expected: Value) -> &Self {
        partially(&self.header, "the writes", &expected, &self.writes);
        self
    }

    /// The notifications of all plans are exactly `expected`, in order.
    #[track_caller]
    pub fn then_notifies(&self, expected: impl IntoIterator<Item = Message>) -> &Self {
        let expected: Vec<Message> = expected.into_iter().collect();
        exactly(&self.header, "the notifications differ", &expected, &self.notify);
        self
    }

    /// The notifications match `expected` (a JSON array), partially.
    #[track_caller]
    pub fn then_notifies_matching(&self, expected: Value) -> &Self {
        partially(&self.header, "the notifications", &expected, &self.notify);
        self
    }

    /// The lines logged during the cycle are exactly `expected`, in order.
    #[track_caller]
    pub fn then_logs<'a>(&self, expected: impl IntoIterator<Item = (Level, &'a str)>) -> &Self {
        let expected: Vec<(Level, String)> = expected.into_iter().map(|(l, m)| (l, m.to_owned())).collect();
        exactly(&self.header, "the logs differ", &expected, &self.env.logs());
        self
    }
}

/// What `resolve` answered; see [`Given::notifications`].
#[derive(Debug)]
pub struct Resolved {
    header: String,
    resolution: Resolution,
    env: TestEnv,
}

impl Resolved {
    /// The answer, as `resolve` returned it.
    pub fn resolution(&self) -> &Resolution {
        &self.resolution
    }

    /// The lines logged while resolving.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.env.logs()
    }

    /// The resolution is exactly `expected`.
    #[track_caller]
    pub fn then_resolves(&self, expected: Resolution) -> &Self {
        exactly(&self.header, "the resolution differs", &expected, &self.resolution);
        self
    }

    /// Nothing is known yet: `Pending`.
    #[track_caller]
    pub fn then_waits(&self) -> &Self {
        self.then_resolves(Resolution::Pending)
    }

    /// The answer is the document `collection/key` from the store.
    #[track_caller]
    pub fn then_responds_with_document(&self, collection: &str, key: &str) -> &Self {
        self.then_resolves(Resolution::RespondDocument { collection: collection.into(), key: key.into() })
    }

    /// The answer is this JSON value.
    #[track_caller]
    pub fn then_responds(&self, value: Value) -> &Self {
        self.then_resolves(Resolution::Respond(value))
    }

    /// The request fails with exactly this message.
    #[track_caller]
    pub fn then_fails(&self, reason: &str) -> &Self {
        self.then_resolves(Resolution::Fail(reason.into()))
    }

    /// The lines logged while resolving are exactly `expected`, in order.
    #[track_caller]
    pub fn then_logs<'a>(&self, expected: impl IntoIterator<Item = (Level, &'a str)>) -> &Self {
        let expected: Vec<(Level, String)> = expected.into_iter().map(|(l, m)| (l, m.to_owned())).collect();
        exactly(&self.header, "the logs differ", &expected, &self.env.logs());
        self
    }
}
