//! How commands, events and notifications travel between functions.
//!
//! Appending events is part of a store [`Commit`](crate::backend::Commit), so
//! that an event exists exactly when its writes do; the bus delivers what was
//! appended to each consumer, in order, and carries notifications back to the
//! shell holding the request.

use super::{Event, StoreError, Written};
use async_trait::async_trait;
use low_contract::{Message, Value};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Weak};
use tokio::sync::broadcast;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Invalid(String),
}

/// The requests waiting in this shell, as a bus sees them.
pub trait Requests: Send + Sync {
    /// A notification for a request that may wait here, with the documents
    /// the commit that sent it wrote (empty when not known: another shell's
    /// commit). Called on the committing or listening task: it must return
    /// quickly and never block.
    fn notified(self: Arc<Self>, notification: Message, written: &Arc<Written>);
    /// How many requests wait here for their answers now.
    fn waiting(&self) -> usize;
}

/// Where [`Bus::notifications`] go: the taker, while it is alive.
#[derive(Default)]
pub struct NotificationSink(std::sync::Mutex<Option<Weak<dyn Requests>>>);

impl NotificationSink {
    /// Takes `requests` as the taker, unless a live one has it.
    pub fn take(&self, requests: Weak<dyn Requests>) -> Result<(), BusError> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|r| r.strong_count() > 0) {
            return Err(BusError::Invalid("notifications are already taken".into()));
        }
        *slot = Some(requests);
        Ok(())
    }

    /// Whether a live taker has them.
    pub fn taken(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|r| r.strong_count() > 0)
    }

    /// How many requests wait for their answers in the taker (none without one).
    pub fn waiting(&self) -> usize {
        let taker = self.0.lock().unwrap_or_else(|p| p.into_inner()).as_ref().and_then(Weak::upgrade);
        taker.map_or(0, |requests| requests.waiting())
    }

    /// Hands `messages` to the taker, if there is one (none while the shell
    /// starts or stops: nobody waits then), with what their commit `written`.
    pub fn send(&self, messages: impl IntoIterator<Item = Message>, written: Written) {
        let taker = self.0.lock().unwrap_or_else(|p| p.into_inner()).as_ref().and_then(Weak::upgrade);
        if let Some(requests) = taker {
            let written = Arc::new(written);
            for message in messages {
                Arc::clone(&requests).notified(message, &written);
            }
        }
    }
}

/// Appends submitted commands together with the steps they cause in this
/// shell: the executor, handed to the bus with [`Bus::chain_commands`].
#[async_trait]
pub trait CommandChain: Send + Sync {
    /// Appends `commands` in one commit with the steps of this shell's
    /// consumers on them (and on what those steps emit), where the store
    /// can apply them together; the steps that do not apply are left to
    /// their consumers, which are woken. `None`: no consumer here takes
    /// them now, and nothing was appended.
    async fn append(&self, commands: &[Event]) -> Option<Result<(), StoreError>>;
}

/// One event handed to one consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Position in the log; the consumer's checkpoint after processing it.
    pub position: u64,
    pub event: Arc<Event>,
}

/// What became of a submitted command.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// Appended to the log.
    Accepted,
    /// The same command (same id, same [`fingerprint`]) is already in the
    /// log; nothing was appended. `answer` is its first answer once one was
    /// kept ([`Bus::remember`]); until then the repeat is answered from the
    /// notifications the command causes.
    Duplicate { answer: Option<Answer> },
    /// A command with this id but another fingerprint (another kind or
    /// payload) is in the log: the idempotency key was reused for a
    /// different command. Nothing was appended.
    KeyReused,
}

/// The first answer to an idempotent command, kept with its id so that a
/// repeat gets the same answer rather than the state of things now.
/// Failures are not kept: a repeat resolves them again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Answer {
    /// The value (or document) the request was answered with.
    Ok(Value),
    /// The reason a function rejected the command with.
    Rejected(String),
}

/// What an idempotency key is bound to: sha256 of the command's kind and
/// its payload in canonical JSON (object keys sorted, no whitespace), hex.
pub fn fingerprint(kind: &str, payload: &Value) -> String {
    use sha2::Digest;
    let mut canonical = String::new();
    canonical_json(payload, &mut canonical);
    let digest = sha2::Sha256::new().chain_update(kind).chain_update([0]).chain_update(canonical).finalize();
    hex::encode(digest)
}

/// `value` as JSON with every object's keys in sorted order, whatever
/// order the map keeps them in.
fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical_json(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// One of `count` disjoint shares of a function's inputs: the events whose
/// key — the payload's `key` field, else the correlation id, else the
/// message id — hashes to `index`. Events with one key stay in one
/// partition, so their order is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub index: u32,
    pub count: u32,
    pub key: Option<String>,
}

impl Partition {
    /// The consumer name of this partition of `function`: its own
    /// checkpoint and lease.
    pub fn consumer(&self, function: &str) -> String {
        format!("{function}#{}/{}", self.index, self.count)
    }
}

/// Who processes a consumer's deliveries now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Holder {
    /// The consumer: a function's name, or one partition of it (`name#i/n`).
    pub consumer: String,
    /// The shell holding its lease (its database session's name); none
    /// while nobody does.
    pub shell: Option<String>,
}

/// The deliveries of one consumer, in log order.
#[async_trait]
pub trait Subscription: Send {
    /// The next delivery; `None` once the bus has shut down.
    async fn next(&mut self) -> Option<Delivery>;
    /// Gives back a delivery taken by [`next`](Self::next) but not
    /// processed (its consumer is stopping), for the consumer's next
    /// subscription to deliver first. A bus that reads from the consumer's
    /// stored checkpoint finds it again there and needs nothing.
    async fn put_back(&mut self, _delivery: Delivery) {}
    /// The next delivery if it is at hand now, without waiting: what a
    /// consumer adds to a group commit. Buses that do not group commits
    /// have none.
    fn try_next(&mut self) -> Option<Delivery> {
        None
    }
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Appends a command to the log, for whichever consumer handles it.
    /// An `idempotent` command's id names it for good: it is appended once,
    /// and bound to its [`fingerprint`]; a repeat appends nothing (a
    /// [`Submitted::Duplicate`], or [`Submitted::KeyReused`] when its
    /// fingerprint differs). Other commands carry fresh ids and are only
    /// appended.
    async fn submit(&self, command: Event, idempotent: bool) -> Result<Submitted, BusError>;
    /// Keeps `answer` as the first answer of the idempotent `command`, for
    /// its repeats; returns the answer kept, which is an earlier one if
    /// another request (in any shell) kept one first. Buses that keep none
    /// return `answer`.
    async fn remember(&self, _command: &Message, answer: Answer) -> Result<Answer, BusError> {
        Ok(answer)
    }
    /// Deliveries on `topics` for the consumer `consumer`, from just after
    /// what it has processed: subscribing again (other topics) while the
    /// previous subscription is still alive, and dropping that one after,
    /// hands over without losing or repeating a delivery.
    async fn subscribe(&self, consumer: &str, topics: &[String]) -> Result<Box<dyn Subscription>, BusError>;
    /// Whether several shells share this bus, so that a function's work can
    /// be split into partitions processed by different shells.
    fn shares_work(&self) -> bool {
        false
    }
    /// The deliveries of one partition of `function`'s inputs, under the
    /// consumer name [`Partition::consumer`]. A new partition starts where
    /// the function's own consumer had got to. Each shell takes its fair
    /// share of a function's partitions (the count over the shells running)
    /// and hands extra ones over when shells join.
    async fn subscribe_partition(
        &self,
        _function: &str,
        _topics: &[String],
        _partition: Partition,
    ) -> Result<Box<dyn Subscription>, BusError> {
        Err(BusError::Invalid("this bus does not split a function's work into partitions".into()))
    }
    /// Hands the commands this shell submits to `chain` to be appended with
    /// their handlers' steps (one transaction for a command, its handler
    /// and its projector), when it takes them. Buses that append commands
    /// only by themselves ignore it.
    fn chain_commands(&self, _chain: Weak<dyn CommandChain>) {}
    /// The shell stops: let go of what tells other shells it is there.
    fn close(&self) {}
    /// Who holds each consumer's lease, across the shells on this bus.
    async fn holders(&self) -> Result<Vec<Holder>, BusError> {
        Ok(vec![])
    }
    /// Hands the notifications for requests waiting in this shell to
    /// `requests` from now on, on the task that committed or heard them (no
    /// task in between: a hop less on every command's answer). One taker at
    /// a time: refused while an earlier one is alive.
    async fn notifications(&self, requests: Weak<dyn Requests>) -> Result<(), BusError>;
    /// The notifications already sent for the request `correlation_id`, for
    /// answering a repeated command. Buses that keep none return none.
    async fn notified(&self, _correlation_id: &str) -> Result<Vec<Message>, BusError> {
        Ok(vec![])
    }
    /// Whether the bus can be used now (for `/readyz`); the reason when not.
    async fn ready(&self) -> Result<(), String> {
        Ok(())
    }
    /// The audit trail: the latest `limit` commands and events appended,
    /// newest first — only those `subject` caused, when given. Buses that
    /// keep no log return an error saying so.
    async fn audit(&self, _subject: Option<&str>, _limit: usize) -> Result<Vec<Delivery>, BusError> {
        Err(BusError::Invalid("this bus keeps no audit trail".into()))
    }
    /// Every event and command appended from now on, for live watchers (the
    /// GraphQL `events` subscription). Best effort: a watcher that falls
    /// behind is told it lagged and skips ahead.
    fn watch_events(&self) -> Result<broadcast::Receiver<Arc<Event>>, BusError> {
        Err(BusError::Invalid("watching events is not supported by this bus".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::fingerprint;
    use low_contract::json;

    #[test]
    fn a_fingerprint_is_the_kind_and_the_payload_whatever_the_key_order() {
        let a = fingerprint("Invite", &json!({ "email": "a@b.c", "n": 1, "x": { "q": [1, 2], "p": null } }));
        let b = fingerprint("Invite", &json!({ "x": { "p": null, "q": [1, 2] }, "n": 1, "email": "a@b.c" }));
        assert_eq!(a, b);
        assert_ne!(
            a,
            fingerprint("Rename", &json!({ "email": "a@b.c", "n": 1, "x": { "q": [1, 2], "p": null } }))
        );
        assert_ne!(
            a,
            fingerprint("Invite", &json!({ "email": "b@b.c", "n": 1, "x": { "q": [1, 2], "p": null } }))
        );
        assert_ne!(fingerprint("Invite", &json!({ "n": 1 })), fingerprint("Invite", &json!({ "n": "1" })));
    }
}
