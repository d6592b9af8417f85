//! The dev loop (`host dev`): the shell runs with its modules watcher, and
//! a second watcher rebuilds the guests when their sources change. The
//! build (by default `make guest`) writes the components into the modules
//! folder; the modules watcher then deploys each one whose content changed.
//! A failed build, or a version the shell refuses, leaves the running
//! versions serving; both say why on the terminal.

use notify_debouncer_mini::notify::RecursiveMode;
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How long sources must stay unchanged before a build starts (an editor
/// saving several files, a `git checkout`).
const SETTLE: Duration = Duration::from_millis(300);

/// What the last build did, for whoever watches (the terminal, tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Built {
    /// Nothing built yet.
    Nothing,
    /// The `n`th build succeeded: the modules watcher takes it from here.
    Succeeded(u64),
    /// The `n`th build failed; the running versions keep serving.
    Failed(u64, String),
}

/// Rebuilding stops when this is dropped.
pub struct Rebuilder {
    _debouncer: Debouncer<notify_debouncer_mini::notify::RecommendedWatcher>,
    built: watch::Receiver<Built>,
}

impl Rebuilder {
    /// What the builds have done so far.
    pub fn built(&self) -> watch::Receiver<Built> {
        self.built.clone()
    }
}

/// Whether a change at `path` is a source change: not a build's output
/// (`target/`, `node_modules/`, `__pycache__/`) nor an editor's or VCS's
/// file.
fn is_source(path: &Path) -> bool {
    let ignored = ["target", "node_modules", "__pycache__", ".git"];
    if path.components().any(|c| matches!(c, Component::Normal(n) if ignored.iter().any(|i| n == *i))) {
        return false;
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    !(name.starts_with('.') || name.ends_with('~') || name.ends_with(".swp") || name.ends_with(".tmp"))
}

/// Watches `sources` (recursively) and runs `build` (through `sh -c`, in
/// the working directory) after each settled change; changes during a
/// build cause one more build after it.
pub fn rebuild_on_change(sources: &[PathBuf], build: String) -> anyhow::Result<Rebuilder> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut debouncer = new_debouncer(SETTLE, move |result: DebounceEventResult| match result {
        Ok(events) if events.iter().any(|e| is_source(&e.path)) => {
            let _ = tx.send(());
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("watching the guests' sources: {e}"),
    })?;
    for dir in sources {
        debouncer
            .watcher()
            .watch(dir, RecursiveMode::Recursive)
            .map_err(|e| anyhow::anyhow!("cannot watch the sources in {}: {e}", dir.display()))?;
        tracing::info!(dir = %dir.display(), %build, "rebuilding the guests when their sources change");
    }
    let (report, built) = watch::channel(Built::Nothing);
    tokio::spawn(async move {
        let mut n = 0;
        while rx.recv().await.is_some() {
            // Changes that arrived meanwhile are covered by this build.
            while rx.try_recv().is_ok() {}
            n += 1;
            tracing::info!(build = %build, "sources changed; building");
            let outcome = match tokio::process::Command::new("sh").arg("-c").arg(&build).status().await {
                Ok(status) if status.success() => Built::Succeeded(n),
                Ok(status) => Built::Failed(n, format!("`{build}` failed ({status})")),
                Err(e) => Built::Failed(n, format!("cannot run `{build}`: {e}")),
            };
            match &outcome {
                Built::Succeeded(_) => tracing::info!("built; the modules watcher deploys what changed"),
                Built::Failed(_, why) => tracing::error!("{why}; the running versions keep serving"),
                Built::Nothing => {}
            }
            report.send_replace(outcome);
        }
    });
    Ok(Rebuilder { _debouncer: debouncer, built })
}

#[cfg(test)]
mod tests {
    use super::is_source;
    use std::path::Path;

    #[test]
    fn build_outputs_and_editor_files_are_not_sources() {
        assert!(is_source(Path::new("guest-functions/invite-customer/src/lib.rs")));
        assert!(is_source(Path::new("guest-functions/customer-projector-py/app.py")));
        for path in [
            "guest-functions/x/target/debug/foo.rlib",
            "guest-functions/js/node_modules/a/index.js",
            "guest-functions/py/__pycache__/app.pyc",
            "guest-functions/x/src/.lib.rs.swp",
            "guest-functions/x/src/lib.rs~",
        ] {
            assert!(!is_source(Path::new(path)), "{path}");
        }
    }
}
