//! The in-memory store: collections of versioned JSON documents behind one
//! lock. A commit appends its events to the [`MemoryBus`] while holding that
//! lock, so consumers see events in the order their writes were applied.
//! Parked events are kept here too (the memory bus keeps no log, so each
//! record holds its event), changed under the same lock as the documents.

use crate::backend::memory::MemoryBus;
use crate::backend::{Commit, Parked, Store, StoreError};
use async_trait::async_trait;
use low_contract::{Document, Value, WriteOp};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

type Collection = BTreeMap<String, (u64, Value)>;

pub struct MemoryStore {
    collections: Mutex<HashMap<String, Collection>>,
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

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Collection>> {
        // A panic while holding the lock cannot leave a half-applied commit
        // (commits are staged first), so a poisoned lock is still consistent.
        self.collections.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn document(collection: &str, key: &str, (version, body): &(u64, Value)) -> Document {
    Document { collection: collection.into(), key: key.into(), version: *version, body: body.clone() }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, collection: &str, key: &str) -> Result<Option<Document>, StoreError> {
        Ok(self.lock().get(collection).and_then(|c| c.get(key)).map(|d| document(collection, key, d)))
    }

    async fn find(
        &self,
        collection: &str,
        field: &str,
        value: &Value,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError> {
        let collections = self.lock();
        let Some(c) = collections.get(collection) else { return Ok(vec![]) };
        Ok(c.iter()
            .filter(|(_, (_, body))| body.get(field) == Some(value))
            .take(limit)
            .map(|(k, d)| document(collection, k, d))
            .collect())
    }

    async fn list(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError> {
        use std::ops::Bound::{Excluded, Unbounded};
        let collections = self.lock();
        let Some(c) = collections.get(collection) else { return Ok(vec![]) };
        let start = after.map_or(Unbounded, |a| Excluded(a.to_owned()));
        Ok(c.range((start, Unbounded)).take(limit).map(|(k, d)| document(collection, k, d)).collect())
    }

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let written = commit.written();
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
            return Ok(());
        }
        // Stage every op against the current state (and earlier ops of this
        // commit) before touching anything: all or nothing.
        let mut staged: HashMap<(String, String), Option<(u64, Value)>> = HashMap::new();
        for op in &commit.ops {
            let slot = (op.collection().to_owned(), op.key().to_owned());
            let current = match staged.get(&slot) {
                Some(s) => s.clone(),
                None => collections.get(&slot.0).and_then(|c| c.get(&slot.1)).cloned(),
            };
            let version = current.as_ref().map_or(0, |(v, _)| *v);
            let next = match op {
                WriteOp::Insert { collection, key, body } => {
                    if current.is_some() {
                        return Err(StoreError::Conflict(format!("`{collection}/{key}` already exists")));
                    }
                    Some((1, body.clone()))
                }
                WriteOp::Put { body, .. } => Some((version + 1, body.clone())),
                WriteOp::UpdateIfVersion { collection, key, body, expected_version } => {
                    if version != *expected_version {
                        return Err(StoreError::Conflict(format!(
                            "`{collection}/{key}` is at version {version}, not {expected_version}"
                        )));
                    }
                    Some((version + 1, body.clone()))
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
        for ((collection, key), next) in staged {
            let c = collections.entry(collection).or_default();
            match next {
                Some(d) => {
                    c.insert(key, d);
                }
                None => {
                    c.remove(&key);
                }
            }
        }
        if let Some(settled) = &commit.unpark {
            parked.remove(&(settled.consumer.clone(), settled.position));
        }
        if let Some(record) = commit.park {
            parked.insert((record.consumer.clone(), record.position), record);
        }
        drop(parked);
        self.bus.append(commit.events, commit.notify, written);
        Ok(())
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
