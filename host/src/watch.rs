//! Hot swap by file: watches the project's modules folder and deploys a
//! component whenever its file changes (debounced, so a copy in progress is
//! read once it has settled).

use crate::deploy::Deployer;
use notify_debouncer_mini::notify::RecursiveMode;
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a file must stay unchanged before it is read.
const SETTLE: Duration = Duration::from_millis(300);

/// Watching stops when this is dropped.
pub struct ModulesWatcher {
    _debouncer: Debouncer<notify_debouncer_mini::notify::RecommendedWatcher>,
}

/// Watches `dir`; a changed `<name>.wasm` is deployed as `name` when `names`
/// allows it (every name when `names` is `None`).
pub fn watch(dir: &Path, names: Option<Vec<String>>, deployer: Deployer) -> anyhow::Result<ModulesWatcher> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut debouncer = new_debouncer(SETTLE, move |result: DebounceEventResult| match result {
        Ok(events) => {
            let _ = tx.send(events.into_iter().map(|e| e.path).collect());
        }
        Err(e) => tracing::warn!("watching the modules folder: {e}"),
    })?;
    debouncer
        .watcher()
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|e| anyhow::anyhow!("cannot watch the modules folder {}: {e}", dir.display()))?;
    tracing::info!(dir = %dir.display(), "watching for new versions of the functions");
    tokio::spawn(async move {
        while let Some(paths) = rx.recv().await {
            let changed: BTreeSet<PathBuf> = paths.into_iter().collect();
            for path in changed {
                let Some(name) = module_name(&path) else { continue };
                if names.as_ref().is_some_and(|names| !names.iter().any(|n| n == name)) {
                    continue;
                }
                match tokio::fs::read(&path).await {
                    // Refusals are logged by the deployer.
                    Ok(bytes) => {
                        let _ = deployer.deploy(name, &bytes, false).await;
                    }
                    Err(e) => tracing::debug!(file = %path.display(), "not deployed: {e}"),
                }
            }
        }
    });
    Ok(ModulesWatcher { _debouncer: debouncer })
}

/// `…/invite-customer.wasm` → `invite-customer`.
fn module_name(path: &Path) -> Option<&str> {
    (path.extension()? == "wasm").then_some(())?;
    path.file_stem()?.to_str()
}
