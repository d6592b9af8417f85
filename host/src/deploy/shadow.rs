//! Shadow deploys: a candidate version of a function runs beside the live
//! one on every input the live one commits in this shell — lookup, operate
//! and write, on the data the live step found — and its outcome and write
//! plans are compared with the live step's. Nothing the candidate decides is
//! ever committed or appended.
//!
//! The live step only clones what it decided and offers it to a bounded
//! queue after its commit; one task per candidate runs the queue. A full
//! queue counts the input `skipped` and never makes the live step wait.
//!
//! What legitimately differs between two runs is normalised before the
//! comparison: ids (UUIDs, numbered in order of appearance on each side) and
//! times near now (integers within [`TIME_WINDOW_MS`] of the run, as the
//! env's `now` gives them).
//!
//! A shadow lives in the shell it was started in: on Postgres with several
//! shells, it sees the steps that shell's consumers commit.

use crate::backend::store::lookup_rest;
use crate::backend::{Commit, Parked, Store, StoreError};
use crate::deploy::{DeployError, Deployer};
use crate::executor::{Cycle, now_ms, run_cycle};
use crate::registry::{Functions, Registry, RegistryError};
use crate::runtime::{Function, Version};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use low_contract::{Data, Document, FunctionKind, Lookup, Message, Outcome, Query, Value, WritePlan};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Inputs waiting for the candidate, at most; more are counted `skipped`.
pub const QUEUE: usize = 256;
/// Differences (and failures) kept as samples, the latest.
pub const SAMPLES: usize = 20;
/// An integer this close to the time of its run (ms) is taken for a time
/// from the env, and compared as "now".
pub const TIME_WINDOW_MS: u64 = 10 * 60 * 1000;

/// How one input compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The same outcome and write plans, ids and times aside.
    Same,
    /// Another outcome or other write plans.
    Different,
    /// The candidate's step failed where the live one committed.
    Failed,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Same => "same",
            Verdict::Different => "different",
            Verdict::Failed => "failed",
        }
    }
}

/// What one version decided for one input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Decision {
    pub outcome: Outcome,
    /// One write plan per emitted message.
    pub plans: Vec<WritePlan>,
}

/// One input on which the candidate differed or failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Sample {
    /// When the candidate ran (RFC 3339).
    pub at: String,
    pub verdict: Verdict,
    pub input: Message,
    pub live: Decision,
    /// What the candidate decided; `None` when it failed.
    pub candidate: Option<Decision>,
    /// Why the candidate failed.
    pub error: Option<String>,
}

/// `GET /admin/functions/{name}/shadow`: how the candidate compares so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ShadowReport {
    pub function: String,
    pub candidate_version: String,
    /// The version serving now, which the candidate is compared with.
    pub live_version: Option<String>,
    /// When the shadow started (RFC 3339).
    pub since: String,
    pub same: u64,
    pub different: u64,
    pub failed: u64,
    /// Inputs not compared: the queue was full.
    pub skipped: u64,
    /// Inputs waiting for the candidate now.
    pub queued: usize,
    /// The latest differences and failures, oldest first (at most [`SAMPLES`]).
    pub samples: Vec<Sample>,
}

impl ShadowReport {
    /// Inputs the shadow has settled: compared, failed or skipped.
    pub fn settled(&self) -> u64 {
        self.same + self.different + self.failed + self.skipped
    }
}

#[derive(Default)]
struct Tally {
    same: u64,
    different: u64,
    failed: u64,
    skipped: u64,
    samples: VecDeque<Sample>,
}

/// One live step, as the candidate gets it.
struct Job {
    input: Message,
    lookups: Vec<Lookup>,
    data: Data,
    live: Decision,
    /// When the live step ended (ms), to recognise its times.
    at_ms: u64,
}

/// A candidate running beside the live version.
struct Shadow {
    function: String,
    candidate: Arc<Function>,
    bytes: Arc<[u8]>,
    since: SystemTime,
    queue: mpsc::Sender<Job>,
    tally: Arc<Mutex<Tally>>,
    worker: JoinHandle<()>,
}

impl Drop for Shadow {
    fn drop(&mut self) {
        // Dropped (aborted, promoted, replaced): whatever is queued is moot.
        self.worker.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shadow {
    fn report(&self, live_version: Option<String>) -> ShadowReport {
        let tally = lock(&self.tally);
        ShadowReport {
            function: self.function.clone(),
            candidate_version: self.candidate.version.0.clone(),
            live_version,
            since: humantime::format_rfc3339_millis(self.since).to_string(),
            same: tally.same,
            different: tally.different,
            failed: tally.failed,
            skipped: tally.skipped,
            queued: QUEUE - self.queue.capacity(),
            samples: tally.samples.iter().cloned().collect(),
        }
    }
}

/// A live step handed to its function's shadow: see [`Shadows::take`].
pub struct Offer {
    shadow: Arc<Shadow>,
    job: Job,
}

impl Offer {
    /// Queues the step for the candidate, after the live step committed;
    /// never waits: a full queue counts it `skipped`.
    pub fn send(self) {
        let Offer { shadow, job } = self;
        match shadow.queue.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                lock(&shadow.tally).skipped += 1;
                crate::metrics::shadow(&shadow.function, "skipped");
            }
            // Its worker is gone: the shadow was just dropped.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// The shadows of this shell, by function.
pub struct Shadows {
    registry: Arc<Registry>,
    store: Arc<dyn Store>,
    /// Read on every live step: no lock there.
    by_name: ArcSwap<HashMap<String, Arc<Shadow>>>,
    /// Serialises changes.
    changing: Mutex<()>,
}

impl Shadows {
    pub fn new(registry: Arc<Registry>, store: Arc<dyn Store>) -> Self {
        Self { registry, store, by_name: ArcSwap::default(), changing: Mutex::default() }
    }

    /// What `function`'s shadow needs from a live step that is about to be
    /// committed; `None` (and nothing cloned) when it has none. Send it once
    /// the step is committed.
    pub fn take(&self, function: &str, input: &Message, cycle: &Cycle) -> Option<Offer> {
        let shadow = Arc::clone(self.by_name.load().get(function)?);
        // A step that started before the shadow was deployed kept no decision.
        let live = cycle.decision.clone()?;
        let job = Job {
            input: input.clone(),
            lookups: cycle.lookups.clone(),
            data: cycle.data.clone(),
            live,
            at_ms: now_ms(),
        };
        Some(Offer { shadow, job })
    }

    /// Whether `function` has a shadow: its live steps keep their decision
    /// for [`Shadows::take`].
    pub fn watching(&self, function: &str) -> bool {
        self.by_name.load().contains_key(function)
    }

    fn change(&self, change: impl FnOnce(&mut HashMap<String, Arc<Shadow>>)) {
        let _changing = lock(&self.changing);
        let mut next = HashMap::clone(&self.by_name.load());
        change(&mut next);
        self.by_name.store(Arc::new(next));
    }

    /// Runs `candidate` (checked by [`Deployer::candidate`]) beside the live
    /// version of its function from now on, in place of any earlier
    /// candidate.
    pub fn start(&self, candidate: Arc<Function>, bytes: &[u8]) -> ShadowReport {
        let function = candidate.name().to_owned();
        let (queue, queued) = mpsc::channel(QUEUE);
        let tally = Arc::new(Mutex::new(Tally::default()));
        let worker = tokio::spawn(compare_all(
            Arc::clone(&candidate),
            Arc::clone(&self.registry),
            Arc::clone(&self.store),
            Arc::clone(&tally),
            queued,
        ));
        let shadow = Arc::new(Shadow {
            function: function.clone(),
            candidate,
            bytes: Arc::from(bytes),
            since: SystemTime::now(),
            queue,
            tally,
            worker,
        });
        tracing::info!(%function, candidate = %shadow.candidate.version, "shadow started: the candidate runs beside the live version, nothing it decides is applied");
        let report = shadow.report(self.live_version(&function));
        self.change(|shadows| {
            shadows.insert(function, shadow);
        });
        report
    }

    fn live_version(&self, function: &str) -> Option<String> {
        self.registry.current().get(function).map(|f| f.version.0.clone())
    }

    /// How `function`'s candidate compares so far.
    pub fn report(&self, function: &str) -> Option<ShadowReport> {
        let shadow = Arc::clone(self.by_name.load().get(function)?);
        Some(shadow.report(self.live_version(function)))
    }

    /// The candidate's version and bytes, to deploy it.
    pub fn candidate(&self, function: &str) -> Option<(Version, Arc<[u8]>)> {
        let by_name = self.by_name.load();
        let shadow = by_name.get(function)?;
        Some((shadow.candidate.version.clone(), Arc::clone(&shadow.bytes)))
    }

    /// Drops `function`'s candidate (only if it is `version`, when given);
    /// its final report.
    pub fn stop(&self, function: &str, version: Option<&Version>) -> Option<ShadowReport> {
        let mut stopped = None;
        self.change(|shadows| {
            if shadows.get(function).is_some_and(|s| version.is_none_or(|v| *v == s.candidate.version)) {
                stopped = shadows.remove(function);
            }
        });
        let stopped = stopped?;
        let report = stopped.report(self.live_version(function));
        tracing::info!(
            function,
            candidate = %stopped.candidate.version,
            same = report.same,
            different = report.different,
            failed = report.failed,
            skipped = report.skipped,
            "shadow stopped"
        );
        Some(report)
    }
}

/// The candidate's side: each queued live step in turn.
async fn compare_all(
    candidate: Arc<Function>,
    registry: Arc<Registry>,
    store: Arc<dyn Store>,
    tally: Arc<Mutex<Tally>>,
    mut queued: mpsc::Receiver<Job>,
) {
    while let Some(job) = queued.recv().await {
        let ran = run_candidate(&candidate, &registry, &store, &job).await;
        let ran_at = now_ms();
        let (verdict, decision, error) = match ran {
            Ok(decision) => {
                let same = normalised(&job.live, job.at_ms) == normalised(&decision, ran_at);
                (if same { Verdict::Same } else { Verdict::Different }, Some(decision), None)
            }
            Err(e) => (Verdict::Failed, None, Some(e)),
        };
        crate::metrics::shadow(candidate.name(), verdict.label());
        let mut tally = lock(&tally);
        match verdict {
            Verdict::Same => tally.same += 1,
            Verdict::Different => tally.different += 1,
            Verdict::Failed => tally.failed += 1,
        }
        if verdict == Verdict::Same {
            continue;
        }
        tracing::debug!(function = candidate.name(), kind = %job.input.kind, id = %job.input.id, "shadow: the candidate {}", verdict.label());
        if tally.samples.len() == SAMPLES {
            tally.samples.pop_front();
        }
        let at = UNIX_EPOCH + std::time::Duration::from_millis(ran_at);
        tally.samples.push_back(Sample {
            at: humantime::format_rfc3339_millis(at).to_string(),
            verdict,
            input: job.input,
            live: job.live,
            candidate: decision,
            error,
        });
    }
}

/// Lookup, operate and write with the candidate, in the set of functions it
/// would make, reading what the live step read.
async fn run_candidate(
    candidate: &Arc<Function>,
    registry: &Registry,
    store: &Arc<dyn Store>,
    job: &Job,
) -> Result<Decision, String> {
    let current = registry.current();
    let others = current.iter().filter(|f| f.name() != candidate.name()).cloned();
    let functions = Functions::new(others.chain([Arc::clone(candidate)]))
        .map_err(|e| format!("the candidate no longer fits the running functions: {e}"))?;
    let found = job.lookups.iter().filter_map(|lookup| {
        let documents = job.data.0.iter().find(|f| f.name == lookup.name)?.documents.clone();
        Some((lookup.query.clone(), documents))
    });
    let view: Arc<dyn Store> = Arc::new(AsLiveFound { found: found.collect(), base: Arc::clone(store) });
    let decided = run_cycle(&functions, candidate, &view, &job.input).await.map_err(|e| e.to_string())?;
    Ok(decided.decision)
}

/// The store as the live step found it: a query the live lookup plan made
/// answers what it found then; any other read sees the store as it is now
/// (the live step's writes included). Read-only.
struct AsLiveFound {
    found: Vec<(Query, Vec<Document>)>,
    base: Arc<dyn Store>,
}

impl AsLiveFound {
    fn found(&self, query: &Query) -> Option<&[Document]> {
        self.found.iter().find(|(q, _)| q == query).map(|(_, documents)| documents.as_slice())
    }
}

#[async_trait]
impl Store for AsLiveFound {
    async fn get(&self, collection: &str, key: &str) -> Result<Option<Document>, StoreError> {
        let query = Query::Key { collection: collection.to_owned(), key: key.to_owned() };
        match self.found(&query) {
            Some(documents) => Ok(documents.first().cloned()),
            None => self.base.get(collection, key).await,
        }
    }

    async fn find(
        &self,
        collection: &str,
        field: &str,
        value: &Value,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError> {
        let query =
            Query::Field { collection: collection.to_owned(), field: field.to_owned(), value: value.clone() };
        match self.found(&query) {
            Some(documents) => Ok(documents.iter().take(limit).cloned().collect()),
            None => self.base.find(collection, field, value, limit).await,
        }
    }

    /// What the live step found answered here, the rest asked of the
    /// store together.
    async fn lookup(&self, queries: &[&Query], limit: usize) -> Result<Vec<Vec<Document>>, StoreError> {
        let found = queries
            .iter()
            .map(|query| {
                let most = if matches!(query, Query::Key { .. }) { 1 } else { limit };
                self.found(query).map(|documents| documents.iter().take(most).cloned().collect())
            })
            .collect();
        lookup_rest(self.base.as_ref(), queries, found, limit).await
    }

    fn reads_are_remote(&self) -> bool {
        self.base.reads_are_remote()
    }

    async fn list(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError> {
        self.base.list(collection, after, limit).await
    }

    async fn commit(&self, _commit: Commit) -> Result<(), StoreError> {
        Err(StoreError::Invalid("a shadow's view of the store is read-only".into()))
    }

    async fn parked(&self, consumer: Option<&str>) -> Result<Vec<Parked>, StoreError> {
        self.base.parked(consumer).await
    }

    async fn parked_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        self.base.parked_counts().await
    }

    async fn parked_failed(&self, _: &str, _: u64, _: &str) -> Result<(), StoreError> {
        Err(StoreError::Invalid("a shadow's view of the store is read-only".into()))
    }
}

/// A decision as compared: ids numbered in order of appearance, times near
/// `at_ms` as "now".
fn normalised(decision: &Decision, at_ms: u64) -> serde_json::Value {
    let mut value = serde_json::to_value(decision).unwrap_or(serde_json::Value::Null);
    let mut ids = HashMap::new();
    normalise(&mut value, &mut ids, at_ms);
    value
}

fn normalise(value: &mut serde_json::Value, ids: &mut HashMap<String, String>, at_ms: u64) {
    use serde_json::Value as V;
    match value {
        V::String(s) if uuid::Uuid::try_parse(s).is_ok() => {
            let next = format!("<id {}>", ids.len() + 1);
            *s = ids.entry(s.clone()).or_insert(next).clone();
        }
        V::Number(n) if n.as_u64().is_some_and(|ms| ms.abs_diff(at_ms) <= TIME_WINDOW_MS) => {
            *value = V::String("<now>".into());
        }
        V::Array(items) => items.iter_mut().for_each(|v| normalise(v, ids, at_ms)),
        V::Object(fields) => fields.values_mut().for_each(|v| normalise(v, ids, at_ms)),
        _ => {}
    }
}

impl Deployer {
    /// Loads `bytes` as a candidate for `name`, with the checks of a deploy
    /// (the same name, kind, inputs and output as the running version, a
    /// schema that builds with it), without swapping anything.
    pub async fn candidate(&self, name: &str, bytes: &[u8]) -> Result<Arc<Function>, DeployError> {
        let Some(running) = self.registry.current().get(name).cloned() else {
            return Err(DeployError::NoSuchFunction(name.into()));
        };
        if running.meta.kind == FunctionKind::Resolver {
            return Err(RegistryError(format!(
                "`{name}` is a resolver: only handlers and projectors (the functions with a LOW cycle) can be shadowed"
            ))
            .into());
        }
        let function = self.runtime.load(bytes).await?;
        if function.name() != name {
            return Err(DeployError::WrongName { expected: name.into(), got: function.name().into() });
        }
        // The candidate runs on the live version's inputs: no force.
        self.validate(&function, false)?;
        Ok(function)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use low_contract::json;

    fn decision(id: &str, customer: &str, at: u64, email: &str) -> Decision {
        let message = Message::new(
            id,
            "CustomerInvited",
            json!({ "customer-id": customer, "email": email, "at": at, "n": 3 }),
        );
        Decision { outcome: Outcome::emit(message), plans: vec![WritePlan::default()] }
    }

    #[test]
    fn ids_and_times_are_not_differences_but_anything_else_is() {
        let (a, b, c, d) = (
            uuid::Uuid::new_v4().to_string(),
            uuid::Uuid::new_v4().to_string(),
            uuid::Uuid::new_v4().to_string(),
            uuid::Uuid::new_v4().to_string(),
        );
        let now = now_ms();
        let live = normalised(&decision(&a, &b, now, "x@y.z"), now);
        assert_eq!(live, normalised(&decision(&c, &d, now + 1500, "x@y.z"), now + 2000));
        assert_ne!(live, normalised(&decision(&c, &d, now, "X@y.z"), now), "another email");
        assert_ne!(live, normalised(&decision(&c, &c, now, "x@y.z"), now), "one id where there were two");
    }

    #[tokio::test]
    async fn a_candidate_finds_what_the_live_step_found_and_reads_the_rest_now() {
        use crate::backend::memory::{MemoryBus, MemoryStore};
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(MemoryBus::new()));
        let put = |key: &str, n| low_contract::WriteOp::Put {
            collection: "c".into(),
            key: key.into(),
            body: json!({ "n": n }),
        };
        store
            .commit(Commit { ops: vec![put("a", 2), put("b", 2)], ..Commit::default() })
            .await
            .expect("seeded");
        let key = |key: &str| Query::Key { collection: "c".into(), key: key.into() };
        let then = Document { collection: "c".into(), key: "a".into(), version: 1, body: json!({ "n": 1 }) };
        let view = AsLiveFound { found: vec![(key("a"), vec![then.clone()])], base: store };
        let found = view.lookup(&[&key("a"), &key("b"), &key("none")], 10).await.expect("read");
        let bodies: Vec<Vec<&Value>> =
            found.iter().map(|docs| docs.iter().map(|d| &d.body).collect()).collect();
        assert_eq!(bodies, vec![vec![&json!({ "n": 1 })], vec![&json!({ "n": 2 })], vec![]]);
    }
}
