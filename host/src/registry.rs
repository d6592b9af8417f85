//! The live set of functions, by name. Readers take a snapshot
//! ([`Registry::current`]) and keep using it, so a swap never disturbs a step
//! in flight; the indexes (who owns which collection, who handles which
//! command) are rebuilt and checked with every change.

use crate::runtime::Function;
use arc_swap::ArcSwap;
use low_contract::{CommandSpec, FunctionKind, ModelSpec};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RegistryError(pub String);

/// One consistent set of functions and what they declare.
#[derive(Default)]
pub struct Functions {
    by_name: BTreeMap<String, Arc<Function>>,
    /// collection → (owner, spec)
    models: HashMap<String, (String, ModelSpec)>,
    /// command → (handler, spec)
    commands: BTreeMap<String, (String, CommandSpec)>,
    /// command → resolver
    resolvers: HashMap<String, String>,
}

impl Functions {
    pub fn new(functions: impl IntoIterator<Item = Arc<Function>>) -> Result<Self, RegistryError> {
        let mut set = Functions::default();
        for f in functions {
            let name = f.name().to_owned();
            if set.by_name.insert(name.clone(), f).is_some() {
                return Err(RegistryError(format!("two functions are named `{name}`")));
            }
        }
        for (name, f) in &set.by_name {
            for model in &f.meta.models {
                if let Some((owner, _)) = set.models.get(&model.collection) {
                    return Err(RegistryError(format!(
                        "collection `{}` is owned by both `{owner}` and `{name}`",
                        model.collection
                    )));
                }
                set.models.insert(model.collection.clone(), (name.clone(), model.clone()));
            }
            match f.meta.kind {
                FunctionKind::Handler => {
                    for command in &f.meta.commands {
                        if let Some((other, _)) = set.commands.get(&command.name) {
                            return Err(RegistryError(format!(
                                "command `{}` is handled by both `{other}` and `{name}`",
                                command.name
                            )));
                        }
                        set.commands.insert(command.name.clone(), (name.clone(), command.clone()));
                    }
                }
                FunctionKind::Resolver => {
                    for command in &f.meta.inputs {
                        if let Some(other) = set.resolvers.insert(command.clone(), name.clone()) {
                            return Err(RegistryError(format!(
                                "command `{command}` is resolved by both `{other}` and `{name}`"
                            )));
                        }
                    }
                }
                FunctionKind::Projector => {}
            }
        }
        Ok(set)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Function>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Function>> {
        self.by_name.values()
    }

    /// Handlers and projectors: the functions that consume topics.
    pub fn consumers(&self) -> impl Iterator<Item = &Arc<Function>> {
        self.iter().filter(|f| f.meta.kind != FunctionKind::Resolver)
    }

    /// The collection's owner and spec.
    pub fn model(&self, collection: &str) -> Option<&(String, ModelSpec)> {
        self.models.get(collection)
    }

    pub fn models(&self) -> impl Iterator<Item = &ModelSpec> {
        self.models.values().map(|(_, m)| m)
    }

    /// Every command with the handler that accepts it, by name.
    pub fn commands(&self) -> impl Iterator<Item = (&str, &CommandSpec)> {
        self.commands.values().map(|(h, c)| (h.as_str(), c))
    }

    pub fn resolver_for(&self, command: &str) -> Option<&Arc<Function>> {
        self.resolvers.get(command).and_then(|name| self.by_name.get(name))
    }
}

/// The live set, swappable while it is being read.
pub struct Registry {
    current: ArcSwap<Functions>,
    changed: watch::Sender<u64>,
}

impl Registry {
    pub fn new(functions: Functions) -> Self {
        Self { current: ArcSwap::from_pointee(functions), changed: watch::Sender::new(0) }
    }

    /// A consistent snapshot; keep it for the duration of one step.
    pub fn current(&self) -> Arc<Functions> {
        self.current.load_full()
    }

    /// Replaces the whole set (already validated by [`Functions::new`]).
    pub fn replace(&self, functions: Functions) {
        self.current.store(Arc::new(functions));
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// Wakes whenever the set changes (to rebuild the GraphQL schema, say).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
