//! Scenario files: given / when / then, in TOML, run against a component.
//!
//! ```toml
//! [[scenario]]
//! name = "an invited email fails with the existing customer"
//! function = "invite-customer"          # optional: the component's meta name
//!
//! [scenario.given]                      # all optional
//! documents = [
//!   { collection = "invites", key = "a@b.c", body = { email = "a@b.c", customer-id = "cust-7" } },
//! ]
//! events = []          # messages the function processes (and commits) first
//! notifications = []   # for a resolver: the notifications seen so far
//! now-ms = 1700000000000
//! ids = "sequential"   # or { prefix = "cust-" }, or { seed = 42 }
//! # who sends `when` (and `events` without their own), as the shell would
//! # from a verified token; none: a shell with `auth = "none"`
//! principal = { subject = "ada", claims = { roles = ["inviter"] } }
//!
//! [scenario.when]
//! kind = "InviteCustomer"
//! payload = { email = "a@b.c" }
//! # id = "when-1", correlation-id = <the id>, causation-id, principal: optional
//!
//! [scenario.then]      # any of these; each is checked only when present
//! lookups = [{ name = "invite", query = { by = "key", collection = "invites", key = "a@b.c" } }]
//! outcome = "emit"     # or "ignore", "reject", { reject = "Email is required" }
//! events = [{ kind = "CustomerInviteFailed", payload = { customer-id = "cust-7" } }]
//! writes = []
//! notify = []
//! logs = [{ level = "info", message = "a@b.c was already invited" }]
//! documents = [{ collection = "invites", key = "a@b.c", body = { customer-id = "cust-7" } }]
//! absent = [{ collection = "invites", key = "b@b.c" }]
//! # resolution = "pending" | { respond-document = { collection, key } } | { respond = … } | { fail = "…" }
//! # error = "text the cycle's error contains"
//! ```
//!
//! Expectations match partially (see [`super::matching`]): objects on a
//! subset of keys, `"<any>"` for any value, `"<id:name>"` for a value that
//! must be the same everywhere it appears in the scenario.

use super::matching::{self, Bindings};
use super::{Ids, Run, Stub, StubError};
use low_contract::{FunctionKind, Message, Principal, Value};
use serde::Deserialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Why scenarios could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error(transparent)]
    Component(#[from] StubError),
    /// `line` is 1-based; 0 when the problem is the file itself.
    #[error("{}: {message}", location(.path, *.line))]
    File { path: PathBuf, line: usize, message: String },
    #[error("cannot write the report: {0}")]
    Output(#[from] std::io::Error),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    #[serde(default)]
    scenario: Vec<Spanned<Scenario>>,
}

/// One given / when / then.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// The function the scenario is for; must be the component's.
    #[serde(default)]
    pub function: Option<Spanned<String>>,
    #[serde(default)]
    pub given: Given,
    pub when: Input,
    #[serde(default)]
    pub then: Then,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Given {
    #[serde(default)]
    pub documents: Vec<Fixture>,
    /// Messages the function processes first, committing what it writes.
    #[serde(default)]
    pub events: Vec<Input>,
    /// For a resolver: the notifications seen so far.
    #[serde(default)]
    pub notifications: Vec<Input>,
    #[serde(default)]
    pub now_ms: Option<u64>,
    #[serde(default)]
    pub ids: Option<IdsSpec>,
    /// Who sends the input (and the given events without their own).
    #[serde(default)]
    pub principal: Option<Principal>,
}

/// A document's address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocRef {
    pub collection: String,
    pub key: String,
}

/// A stored document.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    pub collection: String,
    pub key: String,
    pub body: Value,
    /// The version the store gives it (default 1), for `update-if-version`.
    #[serde(default)]
    pub version: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum IdsSpec {
    /// `"sequential"`: `id-1`, `id-2`, …
    Named(String),
    Prefix {
        prefix: String,
    },
    Seed {
        seed: u64,
    },
}

/// A command, event or notification.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Input {
    pub kind: String,
    #[serde(default = "empty_object")]
    pub payload: Value,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub correlation_id: Option<String>,
    #[serde(default)]
    pub causation_id: Option<String>,
    #[serde(default)]
    pub principal: Option<Principal>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

impl Input {
    fn message(&self, default_id: String) -> Message {
        Message {
            id: self.id.clone().unwrap_or(default_id),
            kind: self.kind.clone(),
            payload: self.payload.clone(),
            correlation_id: self.correlation_id.clone(),
            causation_id: self.causation_id.clone(),
            principal: self.principal.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Then {
    pub lookups: Option<Value>,
    pub outcome: Option<Value>,
    pub events: Option<Value>,
    pub writes: Option<Value>,
    pub notify: Option<Value>,
    pub logs: Option<Value>,
    pub documents: Option<Vec<Value>>,
    /// Documents that must not be in the store afterwards.
    pub absent: Option<Vec<DocRef>>,
    pub resolution: Option<Value>,
    pub error: Option<String>,
}

/// A scenario read from a file, with where it starts.
#[derive(Debug, Clone)]
pub struct Located {
    pub path: PathBuf,
    pub line: usize,
    pub scenario: Scenario,
}

fn location(path: &Path, line: usize) -> String {
    if line == 0 { path.display().to_string() } else { format!("{}:{line}", path.display()) }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// Reads the scenarios of one file.
pub fn read_file(path: &Path) -> Result<Vec<Located>, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::File {
        path: path.into(),
        line: 0,
        message: format!("cannot read: {e}"),
    })?;
    parse(path, &text)
}

/// Parses scenarios from `text` (read from `path`, for messages).
pub fn parse(path: &Path, text: &str) -> Result<Vec<Located>, ScenarioError> {
    let file: ScenarioFile = toml::from_str(text).map_err(|e| ScenarioError::File {
        path: path.into(),
        line: e.span().map_or(0, |s| line_of(text, s.start)),
        message: e.message().trim().to_owned(),
    })?;
    if file.scenario.is_empty() {
        return Err(ScenarioError::File {
            path: path.into(),
            line: 1,
            message: "no scenarios (expected `[[scenario]]` tables)".into(),
        });
    }
    Ok(file
        .scenario
        .into_iter()
        .map(|s| {
            let line = line_of(text, s.span().start);
            Located { path: path.into(), line, scenario: s.into_inner() }
        })
        .collect())
}

/// Every `*.toml` under `path` (recursively, in name order), or `path` itself if a file.
pub fn scenario_files(path: &Path) -> Result<Vec<PathBuf>, ScenarioError> {
    let not_found = |e: std::io::Error| ScenarioError::File {
        path: path.into(),
        line: 0,
        message: format!("cannot read: {e}"),
    };
    if !std::fs::metadata(path).map_err(not_found)?.is_dir() {
        return Ok(vec![path.into()]);
    }
    let mut files = vec![];
    let mut entries: Vec<_> =
        std::fs::read_dir(path).map_err(not_found)?.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            files.extend(scenario_files(&entry)?);
        } else if entry.extension().is_some_and(|e| e == "toml") {
            files.push(entry);
        }
    }
    if files.is_empty() {
        return Err(ScenarioError::File {
            path: path.into(),
            line: 0,
            message: "no scenario files (*.toml) in this folder".into(),
        });
    }
    Ok(files)
}

impl Stub {
    /// Forgets the store and starts the env over, for the next scenario.
    pub fn reset(&mut self) {
        self.store = std::sync::Arc::new(crate::backend::memory::MemoryStore::new(
            crate::backend::memory::MemoryBus::new(),
        ));
        self.env.reset(Ids::default(), super::DEFAULT_NOW_MS);
    }
}

/// Checks that `scenario` suits the loaded function: its name, and `then`
/// keys that the function's kind can produce.
fn validate(stub: &Stub, located: &Located) -> Result<(), ScenarioError> {
    let scenario = &located.scenario;
    let at = |line: usize, message: String| ScenarioError::File {
        path: located.path.clone(),
        line,
        message: format!("scenario `{}`: {message}", scenario.name),
    };
    let meta = stub.meta();
    if let Some(function) = &scenario.function
        && function.get_ref() != &meta.name
    {
        return Err(at(
            located.line,
            format!("names function `{}`, but the component is `{}`", function.get_ref(), meta.name),
        ));
    }
    let then = &scenario.then;
    if let Some(message) = then.writes.as_ref().and_then(unknown_write_op) {
        return Err(at(located.line, message));
    }
    if meta.kind == FunctionKind::Resolver {
        let cycle_only = [
            ("lookups", then.lookups.is_some()),
            ("outcome", then.outcome.is_some()),
            ("events", then.events.is_some()),
            ("writes", then.writes.is_some()),
            ("notify", then.notify.is_some()),
            ("documents", then.documents.is_some()),
            ("absent", then.absent.is_some()),
        ];
        if let Some((key, _)) = cycle_only.iter().find(|(_, set)| *set) {
            return Err(at(
                located.line,
                format!("`then.{key}` is for handlers and projectors, not resolvers"),
            ));
        }
        if !scenario.given.events.is_empty() || !scenario.given.documents.is_empty() {
            return Err(at(
                located.line,
                "a resolver reads no store: use `given.notifications`, not events or documents".into(),
            ));
        }
    } else {
        if then.resolution.is_some() {
            return Err(at(located.line, "`then.resolution` is for resolvers".into()));
        }
        if !scenario.given.notifications.is_empty() {
            return Err(at(located.line, "`given.notifications` is for resolvers".into()));
        }
        if let Some(message) = undeclared_command(meta, &scenario.when.kind) {
            return Err(at(located.line, message));
        }
    }
    Ok(())
}

/// The write ops a plan can hold, as `then.writes` names them.
const WRITE_OPS: &[&str] = &["insert", "put", "update-if-version", "delete", "delete-if-version"];

/// An expected write whose `op` no plan can have would only ever show as a
/// diff: say so where it is written.
fn unknown_write_op(writes: &Value) -> Option<String> {
    let Value::Array(writes) = writes else {
        return Some("`then.writes` must be a list of write ops".into());
    };
    writes.iter().find_map(|write| match write.get("op") {
        Some(Value::String(op)) if WRITE_OPS.contains(&op.as_str()) => None,
        Some(op) => Some(format!("`then.writes` has an unknown op {op}; one of: {}", WRITE_OPS.join(", "))),
        // Partial matching: an expected write may leave the op out.
        None => None,
    })
}

/// A handler that consumes only the commands topic receives only the
/// commands it declares: a scenario sending it another kind tests nothing
/// the shell would do. (Event kinds are not declared, so are not checked.)
fn undeclared_command(meta: &low_contract::Meta, kind: &str) -> Option<String> {
    let commands_only = meta.kind == FunctionKind::Handler
        && meta.inputs.len() == 1
        && meta.inputs.iter().any(|i| i == low_contract::COMMANDS_TOPIC);
    (commands_only && !meta.commands.iter().any(|c| c.name == kind)).then(|| {
        let known: Vec<_> = meta.commands.iter().map(|c| c.name.as_str()).collect();
        format!("`when.kind` `{kind}` is not a command of `{}` (it has: {})", meta.name, known.join(", "))
    })
}

/// The outcome of one scenario: pass, or the failures found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(Vec<String>),
}

/// The highest version a fixture may ask for (it is reached by putting the
/// document that many times).
const MAX_FIXTURE_VERSION: u64 = 10_000;

/// Runs one scenario on a freshly reset stub.
pub fn run_scenario(stub: &mut Stub, scenario: &Scenario) -> Verdict {
    stub.reset();
    let given = &scenario.given;
    if let Some(ids) = &given.ids {
        stub.env.set_ids(match ids {
            IdsSpec::Named(_) => Ids::default(),
            IdsSpec::Prefix { prefix } => Ids::Sequential { prefix: prefix.clone() },
            IdsSpec::Seed { seed } => Ids::Seeded { seed: *seed },
        });
    }
    if let Some(now) = given.now_ms {
        stub.env.set_now_ms(now);
    }
    for doc in &given.documents {
        // Each put adds one to the version.
        for _ in 0..doc.version.unwrap_or(1).clamp(1, MAX_FIXTURE_VERSION) {
            stub.put_document(&doc.collection, &doc.key, doc.body.clone());
        }
    }
    // The given principal sends what does not name its own.
    let sent = |input: &Input, id: String| {
        let mut message = input.message(id);
        if message.principal.is_none() {
            message.principal = given.principal.clone();
        }
        message
    };
    for (i, event) in given.events.iter().enumerate() {
        if let Err(e) = stub.when(sent(event, format!("given-{}", i + 1))) {
            return Verdict::Fail(vec![format!("given event #{} (`{}`) failed: {e}", i + 1, event.kind)]);
        }
    }
    // What the function logs while processing given events is not the scenario's.
    stub.env.take_logs();
    let input = sent(&scenario.when, "when-1".into());
    let then = &scenario.then;
    let mut checker = Checker::default();

    if stub.meta().kind == FunctionKind::Resolver {
        let seen: Vec<Message> = given
            .notifications
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut m = n.message(format!("seen-{}", i + 1));
                m.correlation_id.get_or_insert_with(|| input.id.clone());
                m
            })
            .collect();
        match (stub.resolve(&input, &seen), &then.error) {
            (Ok(resolution), None) => {
                if let Some(expected) = &then.resolution {
                    checker.check("resolution", expected, &to_json(&resolution));
                }
                if let Some(expected) = &then.logs {
                    checker.check("logs", expected, &to_json(&stub.env.logs()));
                }
            }
            (Ok(resolution), Some(error)) => checker.failures.push(format!(
                "expected an error containing {error:?}, but `resolve` answered {}",
                to_json(&resolution)
            )),
            (Err(e), expected) => expect_error(&mut checker.failures, expected.as_deref(), &e),
        }
        return checker.verdict();
    }

    let run = match (stub.when(input), &then.error) {
        (Ok(run), None) => run,
        (Ok(run), Some(error)) => {
            checker.failures.push(format!(
                "expected an error containing {error:?}, but the cycle succeeded with outcome {}",
                to_json(&run.outcome)
            ));
            return checker.verdict();
        }
        (Err(e), expected) => {
            expect_error(&mut checker.failures, expected.as_deref(), &e);
            return checker.verdict();
        }
    };
    if let Some(expected) = &then.lookups {
        checker.check("lookups", expected, &to_json(&run.lookups));
    }
    if let Some(expected) = &then.outcome {
        // A bare kind (`"emit"`) checks the kind only.
        let actual =
            if expected.is_string() { super::outcome_kind(&run.outcome) } else { to_json(&run.outcome) };
        checker.check("outcome", expected, &actual);
    }
    if let Some(expected) = &then.events {
        checker.check("events", expected, &to_json(&events(stub, &run)));
    }
    if let Some(expected) = &then.writes {
        checker.check("writes", expected, &to_json(&run.writes));
    }
    if let Some(expected) = &then.notify {
        checker.check("notifications", expected, &to_json(&run.notify));
    }
    if let Some(expected) = &then.logs {
        checker.check("logs", expected, &to_json(&run.logs));
    }
    for expected in then.documents.iter().flatten() {
        let (collection, key) = (expected.get("collection"), expected.get("key"));
        let (Some(Value::String(collection)), Some(Value::String(key))) = (collection, key) else {
            checker
                .failures
                .push(format!("`then.documents` entry needs a `collection` and a `key`: {expected}"));
            continue;
        };
        match stub.document(collection, key) {
            Ok(Some(doc)) => checker.check(&format!("document {collection}/{key}"), expected, &to_json(&doc)),
            Ok(None) => checker.failures.push(format!("document {collection}/{key} is not in the store")),
            Err(e) => checker.failures.push(format!("document {collection}/{key}: {e}")),
        }
    }
    for DocRef { collection, key } in then.absent.iter().flatten() {
        match stub.document(collection, key) {
            Ok(None) => {}
            Ok(Some(doc)) => checker
                .failures
                .push(format!("document {collection}/{key} should be absent, but is {}", doc.body)),
            Err(e) => checker.failures.push(format!("document {collection}/{key}: {e}")),
        }
    }
    checker.verdict()
}

/// What `then.events` is checked against: the messages as appended, or, for
/// a projector (whose output is not appended), as emitted.
fn events(stub: &Stub, run: &Run) -> Vec<Message> {
    if stub.meta().output.is_some() { run.events.clone() } else { run.emitted().to_vec() }
}

fn expect_error(failures: &mut Vec<String>, expected: Option<&str>, e: &StubError) {
    let message = e.to_string();
    match expected {
        Some(expected) if message.contains(expected) => {}
        Some(expected) => failures.push(format!("expected an error containing {expected:?}, got: {message}")),
        None => failures.push(format!("error: {message}")),
    }
}

/// The checks of one scenario: placeholders bound across them, failures collected.
#[derive(Default)]
struct Checker {
    bindings: Bindings,
    failures: Vec<String>,
}

impl Checker {
    fn check(&mut self, what: &str, expected: &Value, actual: &Value) {
        if let Err(diff) = matching::check(expected, actual, &mut self.bindings) {
            self.failures.push(format!("{what} differ:\n{diff}"));
        }
    }

    fn verdict(self) -> Verdict {
        if self.failures.is_empty() { Verdict::Pass } else { Verdict::Fail(self.failures) }
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or_else(|e| Value::String(format!("<unserializable: {e}>")))
}

/// Counts of a run of scenario files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    pub passed: usize,
    pub failed: usize,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.failed == 0
    }
}

/// Loads `component` and runs every scenario in `paths` (files or folders),
/// writing a line per scenario (with a diff on failure) and a closing
/// `N passed, N failed` to `out`. An unreadable or unsuitable scenario file
/// counts as one failure. Only an unloadable component is an `Err`.
pub fn run_paths(component: &Path, paths: &[PathBuf], out: &mut dyn Write) -> Result<Report, ScenarioError> {
    let mut stub = Stub::load(component)?;
    writeln!(out, "{} ({}, {})", stub.meta().name, component.display(), stub.function().version)?;
    let mut report = Report::default();
    let error = |out: &mut dyn Write, report: &mut Report, e: ScenarioError| -> std::io::Result<()> {
        report.failed += 1;
        writeln!(out, "ERROR {e}")
    };
    let mut files = vec![];
    for path in paths {
        match scenario_files(path) {
            Ok(found) => files.extend(found),
            Err(e) => error(out, &mut report, e)?,
        }
    }
    let mut scenarios = vec![];
    for file in &files {
        match read_file(file) {
            Ok(found) => scenarios.extend(found),
            Err(e) => error(out, &mut report, e)?,
        }
    }
    for located in &scenarios {
        if let Err(e) = validate(&stub, located) {
            error(out, &mut report, e)?;
            continue;
        }
        let at = location(&located.path, located.line);
        match run_scenario(&mut stub, &located.scenario) {
            Verdict::Pass => {
                report.passed += 1;
                writeln!(out, "PASS  {}  ({at})", located.scenario.name)?;
            }
            Verdict::Fail(failures) => {
                report.failed += 1;
                writeln!(out, "FAIL  {}  ({at})", located.scenario.name)?;
                for failure in failures {
                    for line in failure.lines() {
                        writeln!(out, "      {line}")?;
                    }
                }
            }
        }
    }
    writeln!(out, "{} passed, {} failed", report.passed, report.failed)?;
    Ok(report)
}

/// `host test <component.wasm> <scenario files or folders>…`
#[derive(Debug, Clone, clap::Args)]
pub struct TestArgs {
    /// The component to test (a `.wasm` file).
    #[arg(value_name = "COMPONENT")]
    pub component: PathBuf,
    /// Scenario files (`*.toml`) or folders of them.
    #[arg(value_name = "SCENARIOS", required = true)]
    pub scenarios: Vec<PathBuf>,
}

/// Runs `host test`; an error when any scenario failed or could not be read.
pub async fn run_cli(args: TestArgs) -> anyhow::Result<()> {
    // The stub drives its own runtime: run it off this one's workers.
    let report = tokio::task::spawn_blocking(move || {
        let stdout = std::io::stdout();
        run_paths(&args.component, &args.scenarios, &mut stdout.lock())
    })
    .await??;
    anyhow::ensure!(report.ok(), "{} failed", report.failed);
    Ok(())
}
