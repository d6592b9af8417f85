//! The in-memory store: collections of versioned JSON documents behind one
//! lock. A commit appends its events to the [`MemoryBus`] while holding that
//! lock, so consumers see events in the order their writes were applied.

use super::{Commit, Store, StoreError};
use crate::bus::MemoryBus;
use async_trait::async_trait;
use low_contract::{Document, Value, WriteOp};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

type Collection = BTreeMap<String, (u64, Value)>;

pub struct MemoryStore {
    collections: Mutex<HashMap<String, Collection>>,
    bus: MemoryBus,
}

impl MemoryStore {
    pub fn new(bus: MemoryBus) -> Self {
        Self { collections: Mutex::default(), bus }
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
        let mut collections = self.lock();
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
        self.bus.append(commit.events, commit.notify);
        Ok(())
    }
}
