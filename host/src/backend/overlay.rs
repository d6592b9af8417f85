//! A store as the next step of a group commit sees it: the stored
//! documents with the writes of the group's earlier steps on top, which are
//! not committed yet. The versions are those the store will give on commit,
//! so a step can `update-if-version` what an earlier step of its group wrote.

use super::store::{lookup_rest, read_each};
use super::{Commit, Parked, Store, StoreError};
use crate::maps::Map;
use async_trait::async_trait;
use low_contract::{Document, Query, Value, WriteOp};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// The version a pending write will have.
#[derive(Debug, Clone, Copy)]
enum Version {
    Known(u64),
    /// `n` puts on a document the group has not otherwise written: the
    /// stored version (0 when absent) plus `n`, looked up when read.
    AfterStored(u64),
}

#[derive(Debug, Clone)]
enum Pending {
    Written { body: Value, version: Version },
    Deleted,
}

/// `base` with pending writes on top; reads only (see [`Overlay::apply`]).
pub struct Overlay {
    base: Arc<dyn Store>,
    pending: Mutex<Map<(String, String), Pending>>,
    /// Stored documents the group has read (`None`: absent), ahead of its
    /// steps or by them, served instead of asking `base` again: each
    /// document is read once. As fresh as reading it step by step would be
    /// — a read outside the commit's transaction either way, its version
    /// checked at commit.
    ahead: Mutex<Map<(String, String), Option<Document>>>,
}

impl Overlay {
    pub fn new(base: Arc<dyn Store>) -> Self {
        Self { base, pending: Mutex::default(), ahead: Mutex::default() }
    }

    fn pending(&self) -> MutexGuard<'_, Map<(String, String), Pending>> {
        lock(&self.pending)
    }

    fn ahead(&self) -> MutexGuard<'_, Map<(String, String), Option<Document>>> {
        lock(&self.ahead)
    }

    /// A document as `base` holds it: read ahead, else asked for — and, from
    /// a remote store, kept, so that the group reads each document once.
    async fn stored(&self, collection: &str, key: &str) -> Result<Option<Document>, StoreError> {
        let at = (collection.to_owned(), key.to_owned());
        if let Some(document) = self.ahead().get(&at).cloned() {
            return Ok(document);
        }
        let document = self.base.get(collection, key).await?;
        if !self.base.reads_are_remote() {
            // A read in the process costs less than keeping it.
            return Ok(document);
        }
        Ok(self.ahead().entry(at).or_insert(document).clone())
    }

    /// Adds a step's write ops, in order, on top of what is pending. Ops
    /// that will fail at commit (an insert of an existing key, a stale
    /// version) are shown as if they succeed: the commit refuses the group
    /// then, and its steps are committed one by one.
    pub fn apply(&self, ops: &[WriteOp]) {
        let mut pending = self.pending();
        for op in ops {
            let at = (op.collection().to_owned(), op.key().to_owned());
            let next = match op {
                WriteOp::Insert { body, .. } => {
                    Pending::Written { body: body.clone(), version: Version::Known(1) }
                }
                WriteOp::UpdateIfVersion { body, expected_version, .. } => Pending::Written {
                    body: body.clone(),
                    version: Version::Known(expected_version.saturating_add(1)),
                },
                WriteOp::Put { body, .. } => {
                    let version = match pending.get(&at) {
                        None => Version::AfterStored(1),
                        Some(Pending::Deleted) => Version::Known(1),
                        Some(Pending::Written { version: Version::Known(v), .. }) => Version::Known(v + 1),
                        Some(Pending::Written { version: Version::AfterStored(n), .. }) => {
                            Version::AfterStored(n + 1)
                        }
                    };
                    Pending::Written { body: body.clone(), version }
                }
                WriteOp::Delete { .. } | WriteOp::DeleteIfVersion { .. } => Pending::Deleted,
            };
            pending.insert(at, next);
        }
    }

    /// A pending document as the store will hold it.
    async fn resolve(
        &self,
        collection: &str,
        key: &str,
        pending: Pending,
    ) -> Result<Option<Document>, StoreError> {
        let (body, version) = match pending {
            Pending::Deleted => return Ok(None),
            Pending::Written { body, version } => (body, version),
        };
        let version = match version {
            Version::Known(v) => v,
            Version::AfterStored(n) => self.stored(collection, key).await?.map_or(0, |d| d.version) + n,
        };
        Ok(Some(Document { collection: collection.to_owned(), key: key.to_owned(), version, body }))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl Store for Overlay {
    async fn get(&self, collection: &str, key: &str) -> Result<Option<Document>, StoreError> {
        let pending = self.pending().get(&(collection.to_owned(), key.to_owned())).cloned();
        match pending {
            Some(pending) => self.resolve(collection, key, pending).await,
            None => self.stored(collection, key).await,
        }
    }

    async fn find(
        &self,
        collection: &str,
        field: &str,
        value: &Value,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError> {
        let mine: Vec<(String, Pending)> = self
            .pending()
            .iter()
            .filter(|((c, _), _)| c == collection)
            .map(|((_, k), p)| (k.clone(), p.clone()))
            .collect();
        // Stored documents the group rewrote or deleted are replaced by the
        // pending ones: ask for enough more to still fill `limit`.
        let stored = self.base.find(collection, field, value, limit.saturating_add(mine.len())).await?;
        let mut found: BTreeMap<String, Document> = stored
            .into_iter()
            .filter(|d| !mine.iter().any(|(k, _)| *k == d.key))
            .map(|d| (d.key.clone(), d))
            .collect();
        for (key, pending) in mine {
            if let Some(doc) = self.resolve(collection, &key, pending).await?
                && doc.body.get(field) == Some(value)
            {
                found.insert(key, doc);
            }
        }
        Ok(found.into_values().take(limit).collect())
    }

    /// On a remote store: keys pending or read already are answered here,
    /// the others asked of `base` together (one round trip), and kept.
    async fn lookup(&self, queries: &[&Query], limit: usize) -> Result<Vec<Vec<Document>>, StoreError> {
        if !self.base.reads_are_remote() {
            return read_each(self, queries, limit).await;
        }
        let mut found: Vec<Option<Vec<Document>>> = Vec::with_capacity(queries.len());
        for query in queries {
            found.push(match query {
                Query::Key { collection, key } => {
                    let at = (collection.clone(), key.clone());
                    if self.pending().contains_key(&at) || self.ahead().contains_key(&at) {
                        Some(self.get(collection, key).await?.into_iter().collect())
                    } else {
                        None
                    }
                }
                Query::Field { collection, field, value } => {
                    Some(self.find(collection, field, value, limit).await?)
                }
            });
        }
        let asked: Vec<usize> = (0..found.len()).filter(|i| found[*i].is_none()).collect();
        let found = lookup_rest(self.base.as_ref(), queries, found, limit).await?;
        for index in asked {
            if let Query::Key { collection, key } = queries[index] {
                self.ahead()
                    .entry((collection.clone(), key.clone()))
                    .or_insert_with(|| found[index].first().cloned());
            }
        }
        Ok(found)
    }

    async fn list(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError> {
        // Steps do not list; readers of the API see what is committed.
        self.base.list(collection, after, limit).await
    }

    async fn commit(&self, _commit: Commit) -> Result<(), StoreError> {
        Err(StoreError::Invalid("a group's view of the store is read-only".into()))
    }

    async fn parked(&self, consumer: Option<&str>) -> Result<Vec<Parked>, StoreError> {
        self.base.parked(consumer).await
    }

    async fn parked_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        self.base.parked_counts().await
    }

    async fn parked_failed(&self, consumer: &str, position: u64, error: &str) -> Result<(), StoreError> {
        self.base.parked_failed(consumer, position, error).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBus;
    use crate::backend::memory::MemoryStore;
    use low_contract::json;

    /// The memory store, taken for a remote one (whose reads an overlay keeps).
    struct Remote(MemoryStore);

    #[async_trait]
    impl Store for Remote {
        fn reads_are_remote(&self) -> bool {
            true
        }
        async fn get(&self, collection: &str, key: &str) -> Result<Option<Document>, StoreError> {
            self.0.get(collection, key).await
        }
        async fn find(&self, c: &str, f: &str, v: &Value, limit: usize) -> Result<Vec<Document>, StoreError> {
            self.0.find(c, f, v, limit).await
        }
        async fn list(
            &self,
            c: &str,
            after: Option<&str>,
            limit: usize,
        ) -> Result<Vec<Document>, StoreError> {
            self.0.list(c, after, limit).await
        }
        async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
            self.0.commit(commit).await
        }
        async fn parked(&self, consumer: Option<&str>) -> Result<Vec<Parked>, StoreError> {
            self.0.parked(consumer).await
        }
        async fn parked_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
            self.0.parked_counts().await
        }
        async fn parked_failed(&self, consumer: &str, position: u64, error: &str) -> Result<(), StoreError> {
            self.0.parked_failed(consumer, position, error).await
        }
    }

    fn put(key: &str, body: Value) -> WriteOp {
        WriteOp::Put { collection: "c".into(), key: key.into(), body }
    }

    #[tokio::test]
    async fn reads_see_pending_writes_with_the_versions_the_store_will_give() {
        let base: Arc<dyn Store> = Arc::new(MemoryStore::new(MemoryBus::new()));
        base.commit(Commit {
            ops: vec![put("a", json!({ "n": 1 })), put("b", json!({ "n": 1 }))],
            ..Commit::default()
        })
        .await
        .expect("seeded");
        base.commit(Commit { ops: vec![put("a", json!({ "n": 1 }))], ..Commit::default() })
            .await
            .expect("a at 2");
        let overlay = Overlay::new(Arc::clone(&base));
        overlay.apply(&[
            put("a", json!({ "n": 2 })),
            WriteOp::Delete { collection: "c".into(), key: "b".into() },
            WriteOp::Insert { collection: "c".into(), key: "d".into(), body: json!({ "n": 1 }) },
        ]);
        overlay.apply(&[WriteOp::UpdateIfVersion {
            collection: "c".into(),
            key: "d".into(),
            body: json!({ "n": 2 }),
            expected_version: 1,
        }]);
        let a = overlay.get("c", "a").await.expect("get").expect("a");
        assert_eq!((a.version, &a.body), (3, &json!({ "n": 2 })));
        assert!(overlay.get("c", "b").await.expect("get").is_none(), "deleted");
        let d = overlay.get("c", "d").await.expect("get").expect("d");
        assert_eq!((d.version, &d.body), (2, &json!({ "n": 2 })));
        let found = overlay.find("c", "n", &json!(2), 10).await.expect("find");
        let keys: Vec<(&str, u64)> = found.iter().map(|d| (d.key.as_str(), d.version)).collect();
        assert_eq!(keys, [("a", 3), ("d", 2)]);
        assert!(overlay.find("c", "n", &json!(1), 10).await.expect("find").is_empty());
        // Nothing reached the store.
        assert_eq!(base.get("c", "a").await.expect("get").map(|d| d.version), Some(2));
    }

    /// What was read from a remote store answers reads without asking it again (here
    /// the store has changed since: the read wins, as a read earlier in the
    /// step would have); pending writes still come first, with versions
    /// counted from the document read.
    #[tokio::test]
    async fn reads_are_kept_and_answer_in_place_of_the_store_and_pending_writes_come_first() {
        let base: Arc<dyn Store> = Arc::new(Remote(MemoryStore::new(MemoryBus::new())));
        base.commit(Commit { ops: vec![put("b", json!({ "n": 0 }))], ..Commit::default() })
            .await
            .expect("seeded");
        let overlay = Overlay::new(Arc::clone(&base));
        let key = |key: &str| Query::Key { collection: "c".into(), key: key.into() };
        let (qa, qb) = (key("a"), key("b"));
        let found = overlay.lookup(&[&qa, &qb], 1).await.expect("lookup");
        assert_eq!(found.iter().map(Vec::len).collect::<Vec<_>>(), [0, 1]);
        base.commit(Commit {
            ops: vec![put("a", json!({ "n": 9 })), put("b", json!({ "n": 9 })), put("b", json!({ "n": 9 }))],
            ..Commit::default()
        })
        .await
        .expect("changed since");
        assert!(overlay.get("c", "a").await.expect("get").is_none(), "read as absent");
        let b = overlay.get("c", "b").await.expect("get").expect("b");
        assert_eq!((b.version, &b.body), (1, &json!({ "n": 0 })));
        overlay.apply(&[put("b", json!({ "n": 2 })), put("a", json!({ "n": 2 }))]);
        let b = overlay.get("c", "b").await.expect("get").expect("b");
        assert_eq!((b.version, &b.body), (2, &json!({ "n": 2 })), "a put after the version read");
        let a = overlay.get("c", "a").await.expect("get").expect("a");
        assert_eq!(a.version, 1, "a put on what was read as absent");
        // One lookup plan: pending writes and the store's documents together.
        let (z, n) = (key("z"), Query::Field { collection: "c".into(), field: "n".into(), value: json!(2) });
        let found = overlay.lookup(&[&qb, &z, &qa, &n], 10).await.expect("lookup");
        let versions: Vec<Vec<(&str, u64)>> =
            found.iter().map(|docs| docs.iter().map(|d| (d.key.as_str(), d.version)).collect()).collect();
        assert_eq!(versions, [vec![("b", 2)], vec![], vec![("a", 1)], vec![("a", 1), ("b", 2)]]);
    }
}
