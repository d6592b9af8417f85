//! One collection of the in-memory store: its documents by key, each held
//! as its JSON text, and an index for each field it is searched by (made at
//! the first search by that field, kept up to date by every write after).
//!
//! Text rather than a `serde_json::Value`: a small object as a `Value` is a
//! B-tree node of ~600 bytes and an allocation per string, as text it is its
//! length — a memory-mode shell holds every document it was ever given. A
//! document is parsed when read; reads are rare beside writes here (a
//! lookup mostly finds nothing), and a guest is handed the text again.

use crate::backend::StoreError;
use low_contract::{Document, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound::{Excluded, Unbounded};

/// A document as held: its version and JSON text.
struct Held {
    version: u64,
    body: Box<str>,
}

/// The keys of the documents holding each value of one field (by the
/// value's JSON text, which equal values share).
type Index = HashMap<Box<str>, BTreeSet<Box<str>>>;

/// The documents of one collection by key, and its indexes by field.
#[derive(Default)]
pub(super) struct Collection {
    documents: BTreeMap<Box<str>, Held>,
    indexes: HashMap<String, Index>,
}

impl Collection {
    /// The version of the document at `key`, if there is one.
    pub(super) fn version(&self, key: &str) -> Option<u64> {
        self.documents.get(key).map(|held| held.version)
    }

    /// Writes `body` at `key` as version `version`.
    pub(super) fn set(&mut self, key: &str, version: u64, body: &Value) {
        // `to_string` on a `Value` goes through `fmt::Write`, about twice the cost.
        let held = Held { version, body: serde_json::to_string(body).unwrap_or_default().into() };
        let old = self.documents.insert(key.into(), held);
        if self.indexes.is_empty() {
            return;
        }
        let old = old.and_then(|held| serde_json::from_str::<Value>(&held.body).ok());
        for (field, index) in &mut self.indexes {
            let before = old.as_ref().and_then(|o| o.get(field)).map(Value::to_string);
            let after = body.get(field).map(Value::to_string);
            if before != after {
                unindex(index, before, key);
                if let Some(value) = after {
                    index.entry(value.into()).or_default().insert(key.into());
                }
            }
        }
    }

    /// Deletes the document at `key`, if there is one.
    pub(super) fn remove(&mut self, key: &str) {
        let Some(held) = self.documents.remove(key) else { return };
        if self.indexes.is_empty() {
            return;
        }
        let old = serde_json::from_str::<Value>(&held.body).ok();
        for (field, index) in &mut self.indexes {
            unindex(index, old.as_ref().and_then(|o| o.get(field)).map(Value::to_string), key);
        }
    }

    pub(super) fn get(&self, name: &str, key: &str) -> Result<Option<Document>, StoreError> {
        self.documents.get(key).map(|held| document(name, key, held)).transpose()
    }

    /// Up to `limit` documents whose `field` is `value`, in key order.
    pub(super) fn find(
        &mut self,
        name: &str,
        field: &str,
        value: &Value,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError> {
        let documents = &self.documents;
        let index = self.indexes.entry(field.to_owned()).or_insert_with(|| index(documents, field));
        let Some(keys) = index.get(value.to_string().as_str()) else { return Ok(vec![]) };
        let mut found = Vec::with_capacity(keys.len().min(limit));
        for key in keys {
            if found.len() == limit {
                break;
            }
            let Some(held) = documents.get(key) else { continue };
            let doc = document(name, key, held)?;
            // The index only narrows the search: what is answered is checked.
            if doc.body.get(field) == Some(value) {
                found.push(doc);
            }
        }
        Ok(found)
    }

    /// Up to `limit` documents in key order, after the key `after`.
    pub(super) fn list(
        &self,
        name: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError> {
        let start = after.map_or(Unbounded, Excluded);
        self.documents
            .range::<str, _>((start, Unbounded))
            .take(limit)
            .map(|(k, held)| document(name, k, held))
            .collect()
    }
}

/// An index of `field` over `documents`.
fn index(documents: &BTreeMap<Box<str>, Held>, field: &str) -> Index {
    let mut index = Index::new();
    for (key, held) in documents {
        let value = serde_json::from_str::<Value>(&held.body)
            .ok()
            .and_then(|body| body.get(field).map(Value::to_string));
        if let Some(value) = value {
            index.entry(value.into()).or_default().insert(key.clone());
        }
    }
    index
}

/// Takes `key` out of `index` under `value`.
fn unindex(index: &mut Index, value: Option<String>, key: &str) {
    let Some(value) = value else { return };
    if let Some(keys) = index.get_mut(value.as_str()) {
        keys.remove(key);
        if keys.is_empty() {
            index.remove(value.as_str());
        }
    }
}

fn document(collection: &str, key: &str, held: &Held) -> Result<Document, StoreError> {
    let body = serde_json::from_str(&held.body).map_err(|e| {
        StoreError::Invalid(format!("the document `{collection}/{key}` held in memory does not parse: {e}"))
    })?;
    Ok(Document { collection: collection.into(), key: key.into(), version: held.version, body })
}

#[cfg(test)]
mod tests {
    //! Whatever the writes, a search by field answers what a scan of the
    //! documents would, before its index exists and after.
    use super::*;
    use low_contract::json;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Set(&'static str, Value),
        Remove(&'static str),
        Find(&'static str, Value),
    }

    fn key() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just("a"), Just("b"), Just("c"), Just("d")]
    }

    /// Values that are equal, or look alike and are not (`1` and `1.0`).
    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(json!(1)),
            Just(json!(1.0)),
            Just(json!("1")),
            Just(json!(null)),
            Just(json!({ "x": [1, 2] })),
        ]
    }

    fn body() -> impl Strategy<Value = Value> {
        (proptest::option::of(value()), proptest::option::of(value())).prop_map(|(n, m)| {
            let mut body = serde_json::Map::new();
            n.map(|n| body.insert("n".into(), n));
            m.map(|m| body.insert("m".into(), m));
            Value::Object(body)
        })
    }

    fn op() -> impl Strategy<Value = Op> {
        let field = prop_oneof![Just("n"), Just("m")];
        prop_oneof![
            (key(), body()).prop_map(|(k, b)| Op::Set(k, b)),
            key().prop_map(Op::Remove),
            (field, value()).prop_map(|(f, v)| Op::Find(f, v)),
        ]
    }

    proptest! {
        #[test]
        fn a_search_answers_what_a_scan_would(ops in proptest::collection::vec(op(), 0..40), limit in 1usize..4) {
            let mut collection = Collection::default();
            let mut model: BTreeMap<&str, (u64, Value)> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Set(key, body) => {
                        let version = model.get(key).map_or(1, |(v, _)| v + 1);
                        collection.set(key, version, &body);
                        model.insert(key, (version, body));
                    }
                    Op::Remove(key) => {
                        collection.remove(key);
                        model.remove(key);
                    }
                    Op::Find(field, value) => {
                        let found = collection.find("things", field, &value, limit).expect("find");
                        let scanned: Vec<(String, u64, Value)> = model
                            .iter()
                            .filter(|(_, (_, body))| body.get(field) == Some(&value))
                            .take(limit)
                            .map(|(k, (v, b))| (k.to_string(), *v, b.clone()))
                            .collect();
                        let found: Vec<(String, u64, Value)> =
                            found.into_iter().map(|d| (d.key, d.version, d.body)).collect();
                        prop_assert_eq!(found, scanned);
                    }
                }
            }
            let listed = collection.list("things", None, 10).expect("list");
            let listed: Vec<(String, u64, Value)> = listed.into_iter().map(|d| (d.key, d.version, d.body)).collect();
            let all: Vec<(String, u64, Value)> = model.iter().map(|(k, (v, b))| (k.to_string(), *v, b.clone())).collect();
            prop_assert_eq!(listed, all);
        }
    }

    #[test]
    fn a_document_reads_back_as_written() {
        let mut collection = Collection::default();
        let body = json!({ "big": u64::MAX, "neg": -3, "f": 0.1, "s": "é\"\n", "a": [null, true, {}] });
        collection.set("k", 7, &body);
        let doc = collection.get("things", "k").expect("get").expect("present");
        assert_eq!(
            (doc.collection.as_str(), doc.key.as_str(), doc.version, doc.body),
            ("things", "k", 7, body)
        );
        assert_eq!(collection.version("k"), Some(7));
        assert!(collection.get("things", "other").expect("get").is_none());
    }
}
