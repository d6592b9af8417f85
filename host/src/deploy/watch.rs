//! Hot swap by file: watches the project's modules folder and deploys a
//! component when its file really changes (debounced, so a copy in
//! progress is read once it has settled).
//!
//! A file event alone proves nothing: opening or reading a file is an event
//! too (the watcher's own reads included), and a file may be rewritten with
//! the same bytes. So a file is read only when its size, times or inode
//! changed since it was last seen, and deployed only when its content hash
//! differs from the last one seen *from that file* — never because the
//! running version differs: a version deployed over the API or the command
//! line stays until the file itself changes. An empty file is one being
//! written and waits for its content, as does one that changes while it
//! is read. Each content is tried once: a refused file is refused (and
//! logged, and counted) once, until it changes.
//! Only a deploy that could not be recorded (the database is away) is tried
//! again, with backoff, until it is recorded or the file changes.

use crate::deploy::{DeployError, Deployer};
use crate::runtime::Version;
use notify_debouncer_mini::notify::RecursiveMode;
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};
use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a file must stay unchanged before it is read.
const SETTLE: Duration = Duration::from_millis(300);
/// First and longest wait before trying again a deploy that could not be recorded.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Watching stops when this is dropped.
pub struct ModulesWatcher {
    _debouncer: Debouncer<notify_debouncer_mini::notify::RecommendedWatcher>,
}

/// Watches `dir`; a changed `<name>.wasm` is deployed as `name` when `names`
/// allows it (every name when `names` is `None`). `loaded` are the files
/// the shell loaded at start, with the version read from each: they count
/// as seen, and any that changed before watching began is deployed.
pub fn watch(
    dir: &Path,
    names: Option<Vec<String>>,
    loaded: impl IntoIterator<Item = (PathBuf, Version)>,
    deployer: Deployer,
) -> anyhow::Result<ModulesWatcher> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    // Weak: watching (and this task) ends when the debouncer is dropped.
    let retry = tx.downgrade();
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
    let seen = loaded
        .into_iter()
        .filter_map(|(path, version)| {
            Some((module_name(&path)?.to_owned(), Seen { fingerprint: None, version }))
        })
        .collect();
    let mut files = Files { names, seen, deployer, retry, backoff: HashMap::new() };
    let dir = dir.to_path_buf();
    tokio::spawn(async move {
        // What changed between loading and watching.
        let present: Vec<PathBuf> = files.seen.keys().map(|name| dir.join(format!("{name}.wasm"))).collect();
        for path in present {
            files.consider(&path).await;
        }
        while let Some(paths) = rx.recv().await {
            let changed: BTreeSet<PathBuf> = paths.into_iter().collect();
            for path in changed {
                files.consider(&path).await;
            }
        }
    });
    Ok(ModulesWatcher { _debouncer: debouncer })
}

/// What identifies one state of a file without reading it: reading or
/// opening it changes none of these; writing, replacing or renaming does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Fingerprint {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The last state seen of one function's file.
struct Seen {
    /// `None` until the watcher has looked at the file itself.
    fingerprint: Option<Fingerprint>,
    /// The hash of the content last read from the file.
    version: Version,
}

struct Files {
    names: Option<Vec<String>>,
    /// By function name (the file's name without `.wasm`).
    seen: HashMap<String, Seen>,
    deployer: Deployer,
    /// Where a path is sent back to be considered again.
    retry: mpsc::WeakUnboundedSender<Vec<PathBuf>>,
    /// The next wait before retrying a function's unrecorded deploy.
    backoff: HashMap<String, Duration>,
}

impl Files {
    /// Deploys `path` if it is a function's file whose content changed.
    async fn consider(&mut self, path: &Path) {
        let Some(name) = module_name(path) else { return };
        if self.names.as_ref().is_some_and(|names| !names.iter().any(|n| n == name)) {
            return;
        }
        let meta = match tokio::fs::metadata(path).await {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => return,
            Err(e) => {
                // Removed, say: the running version stays.
                tracing::debug!(file = %path.display(), "not deployed: {e}");
                return;
            }
        };
        if meta.len() == 0 {
            // Truncated and not yet written (how `cp` and most writers
            // start): never a component, so wait for the next event.
            tracing::debug!(file = %path.display(), "empty; waiting for its content");
            return;
        }
        let fingerprint = Fingerprint::of(&meta);
        let seen = self.seen.get(name);
        if seen.is_some_and(|s| s.fingerprint == Some(fingerprint)) {
            return; // opened or read, not written
        }
        let bytes = match tokio::fs::read(path).await {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::debug!(file = %path.display(), "not deployed: {e}");
                return;
            }
        };
        // Written to while it was read (truncated, or a copy still going):
        // what was read may be a part, never to be tried. The writes made
        // meanwhile are events of their own, which bring the file back.
        let unchanged =
            tokio::fs::metadata(path).await.is_ok_and(|after| Fingerprint::of(&after) == fingerprint);
        if !unchanged || bytes.is_empty() {
            tracing::debug!(file = %path.display(), "written to while read; waiting for it to settle");
            return;
        }
        let version = Version::of(&bytes);
        if seen.is_some_and(|s| s.version == version) {
            tracing::debug!(file = %path.display(), "written with the same content; nothing to deploy");
            if let Some(seen) = self.seen.get_mut(name) {
                seen.fingerprint = Some(fingerprint);
            }
            return;
        }
        // Seen before deploying: a refused content is not tried again.
        let before = self
            .seen
            .insert(name.to_owned(), Seen { fingerprint: Some(fingerprint), version: version.clone() });
        tracing::info!(file = %path.display(), %version, "the file changed; deploying it");
        // Refusals are logged and counted by the deployer.
        match self.deployer.deploy(name, &bytes, false).await {
            Err(DeployError::Record(_)) => {
                // Not refused: not recorded. Forget this content so that the
                // retry (or the next change) deploys the file again.
                match before {
                    Some(before) => self.seen.insert(name.to_owned(), before),
                    None => self.seen.remove(name),
                };
                let wait = self.backoff.get(name).copied().unwrap_or(RETRY_FIRST);
                self.backoff.insert(name.to_owned(), (wait * 2).min(RETRY_MAX));
                tracing::info!(file = %path.display(), "trying the file again in {wait:?}");
                let (retry, path) = (self.retry.clone(), path.to_path_buf());
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    if let Some(retry) = retry.upgrade() {
                        let _ = retry.send(vec![path]);
                    }
                });
            }
            _ => {
                self.backoff.remove(name);
            }
        }
    }
}

/// `…/invite-customer.wasm` → `invite-customer`.
fn module_name(path: &Path) -> Option<&str> {
    (path.extension()? == "wasm").then_some(())?;
    path.file_stem()?.to_str()
}
