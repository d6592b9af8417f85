//! Deterministic stand-ins for the shell's capabilities, for native unit
//! tests of a function's logic.

use crate::function::{Env, Level, StoreRead};
use crate::types::Document;
use serde_json::Value;
use std::cell::{Cell, RefCell};

/// Sequential ids (`id-1`, `id-2`, …), a fixed clock, and the log lines kept.
#[derive(Debug)]
pub struct TestEnv {
    next_id: Cell<u64>,
    /// What `now_ms` answers.
    pub now_ms: u64,
    logs: RefCell<Vec<(Level, String)>>,
}

impl Default for TestEnv {
    fn default() -> Self {
        Self { next_id: Cell::new(1), now_ms: 1_700_000_000_000, logs: RefCell::default() }
    }
}

impl TestEnv {
    /// The lines logged so far.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.logs.borrow().clone()
    }
}

impl Env for TestEnv {
    fn new_id(&self) -> String {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        format!("id-{id}")
    }

    fn now_ms(&self) -> u64 {
        self.now_ms
    }

    fn log(&self, level: Level, message: &str) {
        self.logs.borrow_mut().push((level, message.to_owned()));
    }
}

/// A store seeded with documents.
#[derive(Debug, Default, Clone)]
pub struct TestStore {
    pub documents: Vec<Document>,
}

impl TestStore {
    pub fn with(mut self, collection: &str, key: &str, body: Value) -> Self {
        self.documents.push(Document { collection: collection.into(), key: key.into(), version: 1, body });
        self
    }
}

impl StoreRead for TestStore {
    fn get(&self, collection: &str, key: &str) -> Result<Option<Document>, String> {
        Ok(self.documents.iter().find(|d| d.collection == collection && d.key == key).cloned())
    }

    fn find(&self, collection: &str, field: &str, value: &Value) -> Result<Vec<Document>, String> {
        Ok(self
            .documents
            .iter()
            .filter(|d| d.collection == collection && d.body.get(field) == Some(value))
            .cloned()
            .collect())
    }
}
