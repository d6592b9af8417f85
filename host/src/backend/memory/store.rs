//! The in-memory store: collections of versioned JSON documents
//! ([`Collection`]) behind one lock. A commit appends its events to the
//! [`MemoryBus`] while holding that lock, so consumers see events in the
//! order their writes were applied.
//! Parked events are kept here too (the memory bus keeps no log, so each
//! record holds its event), changed under the same lock as the documents.

use super::collection::Collection;
use crate::backend::memory::MemoryBus;
use crate::backend::store::writes;
use crate::backend::{Chained, Commit, Parked, Store, StoreError, Written};
use crate::maps::Map;
use async_trait::async_trait;
use low_contract::{Document, Value, WriteOp};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

pub struct MemoryStore {
    collections: Mutex<Map<String, Collection>>,
    /// Parked events by (consumer, position). Locked after `collections`
    /// when both are needed.
    parked: Mutex<BTreeMap<(String, u64), Parked>>,
    bus: MemoryBus,
}

impl MemoryStore {
    pub fn new(bus: MemoryBus) -> Self {
        Self { collections: Mutex::default(), parked: Mutex::default(), bus }
    }

    fn parked_lock(&self) -> MutexGuard<'_, BTreeMap<(String, u64), Parked>> {
        // Changed only by whole-record inserts and removals: consistent even if poisoned.
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, Map<String, Collection>> {
        // A panic while holding the lock cannot leave a half-applied commit
        // (commits are staged first), so a poisoned lock is still consistent.
        self.collections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `commit`, then each part of `chained` whose consumer has
    /// processed everything sent to it and whose writes apply (the parts
    /// after one that does not are steps on its events: left out too); how
    /// many parts applied. The chained consumers are not sent the
    /// commit's events: they move past them.
    fn apply(&self, commit: Commit, chained: Vec<Chained>) -> Result<usize, StoreError> {
        let mut collections = self.lock();
        let mut parked = self.parked_lock();
        if let Some(settled) = &commit.unpark
            && !parked.contains_key(&(settled.consumer.clone(), settled.position))
        {
            tracing::info!(
                consumer = %settled.consumer,
                position = settled.position,
                "the parked event was applied already; discarding the duplicate retry"
            );
            return Ok(0);
        }
        let mut staged = stage(&collections, &Staged::default(), &commit.ops)?;
        if let Some(settled) = &commit.unpark {
            parked.remove(&(settled.consumer.clone(), settled.position));
        }
        if let Some(record) = commit.park.clone() {
            parked.insert((record.consumer.clone(), record.position), record);
        }
        drop(parked);
        let mut appending = self.bus.appending();
        let mut applied = 0;
        for part in &chained {
            if !appending.caught_up(&part.consumer) {
                break;
            }
            match stage(&collections, &staged, &part.ops) {
                Ok(more) => staged.extend(more),
                Err(e) => {
                    tracing::debug!(consumer = %part.consumer, "the chained steps do not apply, their events go to the consumer: {e}");
                    break;
                }
            }
            applied += 1;
        }
        for (index, part) in chained.iter().enumerate() {
            crate::metrics::chained(&part.consumer, index < applied);
        }
        for ((collection, key), next) in staged {
            let c = collections.entry(collection).or_default();
            match next {
                Some((version, body)) => c.set(&key, version, body),
                None => c.remove(&key),
            }
        }
        if let Some(checkpoint) = &commit.checkpoint {
            appending.processed(&checkpoint.consumer, checkpoint.position);
        }
        let mut chained = chained;
        chained.truncate(applied);
        let notifies = !commit.notify.is_empty() || chained.iter().any(|part| !part.notify.is_empty());
        // An answer may name what any part wrote (all of it is applied at once).
        let written = match notifies {
            true => std::iter::once(commit.ops)
                .chain(chained.iter_mut().map(|part| std::mem::take(&mut part.ops)))
                .flat_map(writes)
                .collect(),
            false => Written::default(),
        };
        let done: Vec<String> = chained.iter().map(|part| part.consumer.clone()).collect();
        let (mut events, mut notify) = (commit.events, commit.notify);
        for part in chained {
            events.extend(part.events);
            notify.extend(part.notify);
        }
        appending.append(events, &done, notify, written);
        Ok(applied)
    }
}

/// What a commit's write ops leave, by collection and key (`None`:
/// deleted): the version and the body of the op.
type Staged<'o> = Map<(String, String), Option<(u64, &'o Value)>>;

/// Stages `ops` against the current state, as `earlier` (staged before
/// them in the same commit) leaves it: all or nothing.
fn stage<'o>(
    collections: &Map<String, Collection>,
    earlier: &Staged<'o>,
    ops: &'o [WriteOp],
) -> Result<Staged<'o>, StoreError> {
    let mut staged = Staged::default();
    for op in ops {
        let slot = (op.collection().to_owned(), op.key().to_owned());
        // Only whether it exists and at which version: its body is not copied.
        let current = match staged.get(&slot).or_else(|| earlier.get(&slot)) {
            Some(s) => s.as_ref().map(|(v, _)| *v),
            None => collections.get(&slot.0).and_then(|c| c.version(&slot.1)),
        };
        let version = current.unwrap_or(0);
        let next = match op {
            WriteOp::Insert { collection, key, body } => {
                if current.is_some() {
                    return Err(StoreError::Conflict(format!("`{collection}/{key}` already exists")));
                }
                Some((1, body))
            }
            WriteOp::Put { body, .. } => Some((version + 1, body)),
            WriteOp::UpdateIfVersion { collection, key, body, expected_version } => {
                if version != *expected_version {
                    return Err(StoreError::Conflict(format!(
                        "`{collection}/{key}` is at version {version}, not {expected_version}"
                    )));
                }
                Some((version + 1, body))
            }
            WriteOp::Delete { .. } => None,
            WriteOp::DeleteIfVersion { collection, key, expected_version } => {
                if current.is_none() || version != *expected_version {
                    return Err(StoreError::Conflict(format!(
                        "`{collection}/{key}` is at version {version}, not {expected_version}"
                    )));
                }
                None
            }
        };
        staged.insert(slot, next);
    }
    Ok(staged)
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, collection: &str, key: &str) -> Result<Option<Document>, StoreError> {
        match self.lock().get(collection) {
            Some(c) => c.get(collection, key),
            None => Ok(None),
        }
    }

    async fn find(
        &self,
        collection: &str,
        field: &str,
        value: &Value,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError> {
        let mut collections = self.lock();
        let Some(c) = collections.get_mut(collection) else { return Ok(vec![]) };
        c.find(collection, field, value, limit)
    }

    async fn list(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError> {
        let collections = self.lock();
        let Some(c) = collections.get(collection) else { return Ok(vec![]) };
        c.list(collection, after, limit)
    }

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        self.apply(commit, vec![]).map(drop)
    }

    fn chains(&self) -> bool {
        self.bus.at_rest()
    }

    fn may_chain(&self, consumer: &str) -> bool {
        self.bus.appending().caught_up(consumer)
    }

    async fn commit_chained(&self, commit: Commit, chained: Vec<Chained>) -> Result<usize, StoreError> {
        // Never suspends: the bus relies on a chained append, once begun,
        // ending (see `MemoryBus::submit`).
        self.apply(commit, chained)
    }

    async fn parked(&self, consumer: Option<&str>) -> Result<Vec<Parked>, StoreError> {
        let parked = self.parked_lock();
        Ok(parked.values().filter(|p| consumer.is_none_or(|c| p.consumer == c)).cloned().collect())
    }

    async fn parked_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut counts = BTreeMap::new();
        for (consumer, _) in self.parked_lock().keys() {
            *counts.entry(consumer.clone()).or_default() += 1;
        }
        Ok(counts)
    }

    async fn parked_failed(&self, consumer: &str, position: u64, error: &str) -> Result<(), StoreError> {
        if let Some(record) = self.parked_lock().get_mut(&(consumer.to_owned(), position)) {
            record.attempts += 1;
            record.error = error.to_owned();
            record.attempted_at_ms = crate::executor::now_ms();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::bus::tests::event;
    use crate::backend::{Bus, Checkpoint, Event, Subscription};
    use low_contract::{COMMANDS_TOPIC, json};
    use std::time::Duration;

    fn insert(key: &str) -> WriteOp {
        WriteOp::Insert { collection: "things".into(), key: key.into(), body: json!({}) }
    }

    /// `consumer`'s steps on the events before: writing `ops`, emitting `events`.
    fn part(consumer: &str, ops: Vec<WriteOp>, events: Vec<Event>) -> Chained {
        Chained { consumer: consumer.into(), ops, events, ..Chained::default() }
    }

    /// What `sub` is sent now: (position, id).
    async fn sent(sub: &mut Box<dyn Subscription>) -> Vec<(u64, String)> {
        let mut sent = vec![];
        while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(20), sub.next()).await {
            sent.push((d.position, d.event.message.id.clone()));
        }
        sent
    }

    fn past(consumer: &str, (position, id): &(u64, String)) -> Commit {
        let checkpoint = Checkpoint { consumer: consumer.into(), position: *position, event: id.clone() };
        Commit { checkpoint: Some(checkpoint), ..Commit::default() }
    }

    #[tokio::test]
    async fn chained_steps_apply_for_consumers_that_are_caught_up_and_whose_writes_apply() {
        let bus = MemoryBus::new();
        let store = MemoryStore::new(bus.clone());
        let mut handler = bus.subscribe("h", &[COMMANDS_TOPIC.into()]).await.expect("subscribe");
        let mut projector = bus.subscribe("p", &["t".into()]).await.expect("subscribe");
        let command = |id: &str| Commit { events: vec![event(COMMANDS_TOPIC, id)], ..Commit::default() };

        // Both caught up: both parts apply, and neither consumer is sent
        // what it took.
        let parts =
            vec![part("h", vec![insert("a")], vec![event("t", "e1")]), part("p", vec![insert("b")], vec![])];
        assert_eq!(store.commit_chained(command("c1"), parts).await.expect("commit"), 2);
        assert!(sent(&mut handler).await.is_empty());
        assert!(sent(&mut projector).await.is_empty());
        assert!(store.get("things", "a").await.expect("get").is_some());
        assert!(store.get("things", "b").await.expect("get").is_some());

        // The handler was sent a command it has not committed past: its
        // steps on the next one do not apply, it is sent that one too.
        bus.append(vec![event(COMMANDS_TOPIC, "c2")], vec![], Written::default());
        let parts = vec![part("h", vec![insert("c")], vec![event("t", "e2")])];
        assert_eq!(store.commit_chained(command("c3"), parts).await.expect("commit"), 0);
        let behind = sent(&mut handler).await;
        assert_eq!(behind.iter().map(|(_, id)| id.as_str()).collect::<Vec<_>>(), ["c2", "c3"]);
        assert!(store.get("things", "c").await.expect("get").is_none());

        // Caught up again, but its writes conflict: left out, with the part
        // after it, whose consumer is sent what the handler then emits.
        store.commit(past("h", &behind[1])).await.expect("checkpoint");
        let parts = vec![part("h", vec![insert("a")], vec![event("t", "e3")]), part("p", vec![], vec![])];
        assert_eq!(store.commit_chained(command("c4"), parts).await.expect("commit"), 0);
        assert_eq!(sent(&mut handler).await.len(), 1);
        assert!(sent(&mut projector).await.is_empty(), "nothing emitted: the handler's steps did not apply");

        // The first part applies, the second's consumer is behind: it is
        // sent the handler's event.
        store.commit(past("h", &(behind[1].0 + 1, "c4".into()))).await.expect("checkpoint");
        bus.append(vec![event("t", "e4")], vec![], Written::default());
        let parts =
            vec![part("h", vec![insert("d")], vec![event("t", "e5")]), part("p", vec![insert("e")], vec![])];
        assert_eq!(store.commit_chained(command("c5"), parts).await.expect("commit"), 1);
        assert!(sent(&mut handler).await.is_empty());
        let ids: Vec<String> = sent(&mut projector).await.into_iter().map(|(_, id)| id).collect();
        assert_eq!(ids, ["e4", "e5"]);
        assert!(store.get("things", "d").await.expect("get").is_some());
        assert!(store.get("things", "e").await.expect("get").is_none());
    }

    /// Pages come in key order whatever the order of the writes; a write to
    /// an existing document keeps one entry, and a deleted one leaves them.
    #[tokio::test]
    async fn documents_are_listed_in_key_order_and_found_by_field() {
        let store = MemoryStore::new(MemoryBus::new());
        let put = |key: &str, n: i64| WriteOp::Put {
            collection: "things".into(),
            key: key.into(),
            body: json!({ "n": n }),
        };
        let commit = |ops| Commit { ops, ..Commit::default() };
        store.commit(commit(vec![put("c", 1), put("a", 1), put("d", 2), put("b", 2)])).await.expect("commit");
        store
            .commit(commit(vec![
                put("a", 2),
                WriteOp::Delete { collection: "things".into(), key: "d".into() },
            ]))
            .await
            .expect("commit");
        let keys = |docs: Vec<Document>| docs.into_iter().map(|d| (d.key, d.version)).collect::<Vec<_>>();
        let all = store.list("things", None, 10).await.expect("list");
        assert_eq!(keys(all), [("a".into(), 2), ("b".into(), 1), ("c".into(), 1)]);
        let page = store.list("things", Some("a"), 1).await.expect("list");
        assert_eq!(keys(page), [("b".into(), 1)]);
        let after_gone = store.list("things", Some("bb"), 10).await.expect("list");
        assert_eq!(keys(after_gone), [("c".into(), 1)]);
        let twos = store.find("things", "n", &json!(2), 10).await.expect("find");
        assert_eq!(keys(twos), [("a".into(), 2), ("b".into(), 1)]);
        assert_eq!(store.get("things", "a").await.expect("get").map(|d| d.body), Some(json!({ "n": 2 })));
        assert!(store.get("things", "d").await.expect("get").is_none());
    }
}
