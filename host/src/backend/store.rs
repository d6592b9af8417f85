//! Where functions' documents live, and where events are appended.
//!
//! A [`Commit`] — a step's write plans, the events it emitted, the
//! notifications for the requester and the consumer's checkpoint — is applied
//! all or nothing. Integrity conditions (`insert` of an existing key, a stale
//! `update-if-version`) are checked by the store at commit, never by reading
//! first, and fail the whole commit with [`StoreError::Conflict`].
//!
//! The store also keeps the *parked* events: events a consumer could not
//! process, set aside (with the checkpoint advance past them, in one commit)
//! until a retry applies them ([`Parked`]).

use async_trait::async_trait;
use low_contract::{Document, Message, Query, Value, WriteOp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// An integrity condition failed; a fresh lookup may succeed.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The commit can never succeed as written.
    #[error("invalid write: {0}")]
    Invalid(String),
    /// The store cannot be reached now; nothing was applied.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// A message as the log holds it: where it went and who produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub topic: String,
    pub message: Message,
    /// The function (and its version) that emitted it; none for commands.
    pub function: Option<String>,
    pub version: Option<String>,
    pub at_ms: u64,
}

/// A consumer has processed the log up to and including `position`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub consumer: String,
    pub position: u64,
    /// The id of the event processed at `position`. A store whose log can
    /// lose an unanswered event in a crash (and hand its position to the
    /// next) advances only while the event there is still this one, so a
    /// step decided on an event read before the crash never passes over
    /// another.
    pub event: String,
}

impl Checkpoint {
    /// `consumer` has processed `delivery`.
    pub fn past(consumer: impl Into<String>, delivery: &crate::backend::bus::Delivery) -> Self {
        Checkpoint {
            consumer: consumer.into(),
            position: delivery.position,
            event: delivery.event.message.id.clone(),
        }
    }
}

/// Everything one step changes, applied atomically.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    pub ops: Vec<WriteOp>,
    pub events: Vec<Event>,
    pub notify: Vec<Message>,
    pub checkpoint: Option<Checkpoint>,
    /// Group commit: the position of the first of the deliveries this
    /// commit covers (`checkpoint` is at the last). The commit applies only
    /// if the consumer's stored checkpoint is before it; otherwise some of
    /// them were processed already and the store refuses the whole commit
    /// with a [`StoreError::Conflict`], for the steps to be committed one by
    /// one. `None`: one delivery, `checkpoint`'s own. (The first
    /// delivery's position and event id, as in [`Checkpoint`].)
    pub batch_from: Option<(u64, String)>,
    /// An event set aside by its consumer (with `checkpoint` past it);
    /// replaces a record at the same consumer and position.
    pub park: Option<Parked>,
    /// The parked event this commit applies (a retry): its record is
    /// removed. When it is gone already (another retry applied it), the
    /// whole commit is dropped, as a duplicate.
    pub unpark: Option<Checkpoint>,
}

/// Another consumer's steps on the events a [`Commit`] appends, decided
/// before it commits and applied with it ([`Store::commit_chained`]): a
/// command's handler and its projector in one transaction. Parts chain on
/// each other: the second one's steps are on the first one's events (a
/// submitted command, its handler's steps, then its projector's).
#[derive(Debug, Clone, Default)]
pub struct Chained {
    /// The consumer whose steps these are, and the topics it reads.
    pub consumer: String,
    pub topics: Vec<String>,
    /// What its steps write, append and notify, as in a [`Commit`].
    pub ops: Vec<WriteOp>,
    pub events: Vec<Event>,
    pub notify: Vec<Message>,
}

/// The documents a commit wrote, by collection and key (`None`: deleted),
/// the last write of each; handed with the commit's notifications so that
/// an answer naming one of them needs no read of the store.
pub type Written = crate::maps::Map<(String, String), Option<Value>>;

/// What `ops` write, in order (a later write of a document replaces an
/// earlier one when collected into [`Written`]). Takes the ops: their
/// bodies move, not copied, once the store has applied them.
pub fn writes(ops: Vec<WriteOp>) -> impl Iterator<Item = ((String, String), Option<Value>)> {
    ops.into_iter().map(|op| match op {
        WriteOp::Insert { collection, key, body }
        | WriteOp::Put { collection, key, body }
        | WriteOp::UpdateIfVersion { collection, key, body, .. } => ((collection, key), Some(body)),
        WriteOp::Delete { collection, key } | WriteOp::DeleteIfVersion { collection, key, .. } => {
            ((collection, key), None)
        }
    })
}

/// An event a consumer could not process: a dead letter, kept until a retry
/// applies it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Parked {
    /// The function whose consumer parked it.
    pub consumer: String,
    /// Its position in the log.
    pub position: u64,
    pub event: Event,
    /// Why the last attempt failed.
    pub error: String,
    /// Attempts so far (the consumer's, then one per retry).
    pub attempts: u32,
    /// When it was parked, and when it was last attempted (ms since the epoch).
    pub parked_at_ms: u64,
    pub attempted_at_ms: u64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, collection: &str, key: &str) -> Result<Option<Document>, StoreError>;
    /// Up to `limit` documents whose top-level `field` equals `value`, in key
    /// order. Callers that must not act on a partial answer ask for one more
    /// than they accept and refuse when they get it.
    async fn find(
        &self,
        collection: &str,
        field: &str,
        value: &Value,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError>;
    /// Up to `limit` documents in key order, after the key `after`.
    async fn list(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError>;
    /// What each of `queries` finds, in order (a [`Query::Field`] up to
    /// `limit` documents, as [`find`](Self::find)): the reads of a lookup
    /// plan. A store that can have several reads under way at once sends
    /// them together; by default they run one after another.
    async fn lookup(&self, queries: &[&Query], limit: usize) -> Result<Vec<Vec<Document>>, StoreError> {
        read_each(self, queries, limit).await
    }
    async fn commit(&self, commit: Commit) -> Result<(), StoreError>;
    /// Whether [`commit_chained`](Self::commit_chained) can apply a chained
    /// part, and one is worth deciding now.
    fn chains(&self) -> bool {
        false
    }
    /// Whether a part of `consumer`'s steps would apply now, as far as the
    /// store can tell cheaply: a consumer that would be declined is not
    /// worth running steps for.
    fn may_chain(&self, _consumer: &str) -> bool {
        true
    }
    /// Applies `commit`, and with it the parts of `chained` in order, each
    /// only if its consumer had processed everything of its topics before
    /// the events this transaction appends, and no transaction that could
    /// still append some is open: then its checkpoint moves past those
    /// events, in the same transaction. A part that cannot apply leaves out
    /// the parts after it (they are steps on its events). `Ok(n)`: `commit`
    /// and the first `n` parts applied; the consumers of the others process
    /// their events as usual. A store that does not chain applies `commit`
    /// alone.
    async fn commit_chained(&self, commit: Commit, chained: Vec<Chained>) -> Result<usize, StoreError> {
        drop(chained);
        self.commit(commit).await.map(|()| 0)
    }
    /// The parked events (of `consumer`, or of all), by consumer and position.
    async fn parked(&self, consumer: Option<&str>) -> Result<Vec<Parked>, StoreError>;
    /// How many events each consumer has parked (consumers with none are absent).
    async fn parked_counts(&self) -> Result<BTreeMap<String, u64>, StoreError>;
    /// A retry of the parked event failed again: counts the attempt and
    /// keeps `error`. Nothing when the record is gone (applied meanwhile).
    async fn parked_failed(&self, consumer: &str, position: u64, error: &str) -> Result<(), StoreError>;
    /// Whether each read is a round trip to another process (a database):
    /// then the keys a group of steps will look up are worth fetching
    /// together, ahead of the steps.
    fn reads_are_remote(&self) -> bool {
        false
    }
    /// Whether the store can be used now (for `/readyz`); the reason when not.
    async fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}

/// What each of `queries` finds: the answers in `found` (by index), and
/// those still `None` asked of `store` in one [`Store::lookup`] — for a
/// store in front of another that answers some queries itself.
pub async fn lookup_rest<S: Store + ?Sized>(
    store: &S,
    queries: &[&Query],
    mut found: Vec<Option<Vec<Document>>>,
    limit: usize,
) -> Result<Vec<Vec<Document>>, StoreError> {
    found.resize_with(queries.len(), || None);
    let asked: Vec<usize> = (0..queries.len()).filter(|i| found[*i].is_none()).collect();
    if !asked.is_empty() {
        let rest: Vec<&Query> = asked.iter().map(|i| queries[*i]).collect();
        for (index, documents) in asked.into_iter().zip(store.lookup(&rest, limit).await?) {
            found[index] = Some(documents);
        }
    }
    Ok(found.into_iter().map(Option::unwrap_or_default).collect())
}

/// What each of `queries` finds in `store`, read one after another: a
/// lookup plan on a store that sends no reads together.
pub async fn read_each<S: Store + ?Sized>(
    store: &S,
    queries: &[&Query],
    limit: usize,
) -> Result<Vec<Vec<Document>>, StoreError> {
    let mut found = Vec::with_capacity(queries.len());
    for query in queries {
        found.push(match query {
            Query::Key { collection, key } => store.get(collection, key).await?.into_iter().collect(),
            Query::Field { collection, field, value } => store.find(collection, field, value, limit).await?,
        });
    }
    Ok(found)
}
