//! The live set of functions, by name. Readers take a snapshot
//! ([`Registry::current`]) and keep using it, so a swap never disturbs a step
//! in flight; the indexes (who owns which collection, who handles which
//! command) are rebuilt and checked with every change.

use crate::maps::Map;
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
    models: Map<String, (String, ModelSpec)>,
    /// command → (handler, spec)
    commands: BTreeMap<String, (String, CommandSpec)>,
    /// command → resolver
    resolvers: Map<String, String>,
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
    /// The version each function had before its last swap, for rollback.
    previous: std::sync::Mutex<HashMap<String, Arc<Function>>>,
    /// Serialises changes so that two deploys cannot lose one another.
    changing: tokio::sync::Mutex<()>,
    changed: watch::Sender<u64>,
}

/// What a swap did.
#[derive(Debug, Clone)]
pub struct Swapped {
    pub name: String,
    pub old: Option<Arc<Function>>,
    pub new: Arc<Function>,
}

impl Registry {
    pub fn new(functions: Functions) -> Self {
        Self {
            current: ArcSwap::from_pointee(functions),
            previous: Default::default(),
            changing: Default::default(),
            changed: watch::Sender::new(0),
        }
    }

    /// A consistent snapshot; keep it for the duration of one step.
    pub fn current(&self) -> Arc<Functions> {
        self.current.load_full()
    }

    /// Wakes whenever the set changes (to rebuild the GraphQL schema, say).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// How many times the set has changed. Read before [`current`](Self::current),
    /// the snapshot is at least this new.
    pub fn generation(&self) -> u64 {
        *self.changed.borrow()
    }

    /// The version a function had before its last swap.
    pub fn previous(&self, name: &str) -> Option<Arc<Function>> {
        self.previous.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// Whether [`swap`](Self::swap) would take `new` now, without swapping;
    /// the set it would make, for further checks.
    pub fn check(&self, new: &Arc<Function>, force: bool) -> Result<Functions, RegistryError> {
        let current = self.current();
        if let Some(old) = current.get(new.name())
            && !force
        {
            compatible(old, new)?;
        }
        Functions::new(current.iter().filter(|f| f.name() != new.name()).cloned().chain([Arc::clone(new)]))
    }

    /// Puts `new` in place of the function of the same name (or adds it).
    /// Unless `force`, a replacement must keep the kind, inputs and output of
    /// the version it replaces. Steps in flight finish on the old version.
    pub async fn swap(&self, new: Arc<Function>, force: bool) -> Result<Swapped, RegistryError> {
        let _changing = self.changing.lock().await;
        let current = self.current();
        let name = new.name().to_owned();
        let old = current.get(&name).cloned();
        if let Some(old) = &old
            && !force
        {
            compatible(old, &new)?;
        }
        let functions = current.iter().filter(|f| f.name() != name).cloned().chain([Arc::clone(&new)]);
        let next = Functions::new(functions)?;
        self.current.store(Arc::new(next));
        if let Some(old) = &old {
            self.previous.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), Arc::clone(old));
        }
        self.changed.send_modify(|generation| *generation += 1);
        Ok(Swapped { name, old, new })
    }

    /// Swaps the function back to the version it had before its last swap.
    pub async fn rollback(&self, name: &str) -> Result<Swapped, RegistryError> {
        let previous = self
            .previous(name)
            .ok_or_else(|| RegistryError(format!("`{name}` has no previous version to roll back to")))?;
        // Forced: the previous version was compatible with what it replaced.
        self.swap(previous, true).await
    }
}

/// A new version must consume and produce what the old one did.
fn compatible(old: &Function, new: &Function) -> Result<(), RegistryError> {
    let (o, n) = (&old.meta, &new.meta);
    let mut changes = vec![];
    if o.kind != n.kind {
        changes.push(format!("kind {:?} → {:?}", o.kind, n.kind));
    }
    if o.inputs != n.inputs {
        changes.push(format!("inputs {:?} → {:?}", o.inputs, n.inputs));
    }
    if o.output != n.output {
        changes.push(format!("output {:?} → {:?}", o.output, n.output));
    }
    if changes.is_empty() {
        Ok(())
    } else {
        Err(RegistryError(format!(
            "`{}` {} is not compatible with the running version ({}); deploy with force to replace it anyway",
            n.name,
            new.version,
            changes.join(", ")
        )))
    }
}
