//! The compiled-component cache holds native code: an artifact is loaded
//! only when it verifies against the cache's key, else it is recompiled,
//! with a warning. The logs of this binary are captured to check that.

mod support;

use host::runtime::{Limits, Runtime, SystemEnv, Version};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use support::module;

/// Everything this process logs (`host` at debug).
fn logs() -> String {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    let logs = LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        tracing_subscriber::fmt()
            .with_env_filter("host=debug")
            .with_ansi(false)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .init();
        logs
    });
    String::from_utf8_lossy(&logs.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log lines that mention `path`.
fn lines_about(path: &Path) -> Vec<String> {
    let path = path.display().to_string();
    logs().lines().filter(|l| l.contains(&path)).map(str::to_owned).collect()
}

/// Loads `bytes` in a fresh runtime (nothing in memory, only the cache on disk).
async fn load(cache: &Path, bytes: &[u8]) -> Arc<host::runtime::Function> {
    let runtime =
        Runtime::with(Limits::default(), Arc::new(SystemEnv), Some(cache.to_path_buf())).expect("runtime");
    runtime.load(bytes).await.expect("loads")
}

struct Fixture {
    _dir: tempfile::TempDir,
    cache: PathBuf,
    customer: Vec<u8>,
    resolver: Vec<u8>,
}

impl Fixture {
    /// A cache holding the compiled `invite-customer` and `invite-resolver`.
    async fn new() -> Self {
        logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = dir.path().join("cache");
        let (customer, resolver) = (
            std::fs::read(module("invite-customer")).expect("component"),
            std::fs::read(module("invite-resolver")).expect("component"),
        );
        load(&cache, &customer).await;
        load(&cache, &resolver).await;
        Self { _dir: dir, cache, customer, resolver }
    }

    fn artifact(&self, bytes: &[u8]) -> PathBuf {
        self.cache.join(format!("{}.cwasm", Version::of(bytes).0))
    }
}

fn swap(a: &Path, b: &Path) {
    let aside = a.with_extension("aside");
    std::fs::rename(a, &aside).expect("rename");
    std::fs::rename(b, a).expect("rename");
    std::fs::rename(&aside, b).expect("rename");
}

fn tag(artifact: &Path) -> PathBuf {
    artifact.with_extension("cwasm.hmac")
}

#[tokio::test]
async fn the_cache_folder_and_its_key_are_private() {
    let fixture = Fixture::new().await;
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&fixture.cache), 0o700);
    assert_eq!(mode(&fixture.cache.join("key")), 0o600);
    let artifact = fixture.artifact(&fixture.customer);
    assert_eq!(mode(&artifact), 0o600);
    assert!(tag(&artifact).exists(), "a tag beside the artifact");

    // An untouched artifact is loaded from the cache, quietly.
    let loaded = load(&fixture.cache, &fixture.customer).await;
    assert_eq!(loaded.name(), "invite-customer");
    let lines = lines_about(&artifact);
    assert!(lines.iter().any(|l| l.contains("loaded the compiled component from the cache")), "{lines:#?}");
    assert!(!lines.iter().any(|l| l.contains("WARN")), "{lines:#?}");
}

#[tokio::test]
async fn swapped_artifacts_are_recompiled_and_the_right_function_loads() {
    let fixture = Fixture::new().await;
    let (customer, resolver) = (fixture.artifact(&fixture.customer), fixture.artifact(&fixture.resolver));
    // Artifacts and tags alike: each tag still matches its artifact's bytes,
    // but not the version it now sits under.
    swap(&customer, &resolver);
    if tag(&customer).exists() && tag(&resolver).exists() {
        swap(&tag(&customer), &tag(&resolver));
    }

    let loaded = load(&fixture.cache, &fixture.customer).await;

    assert_eq!(loaded.name(), "invite-customer", "not the function whose artifact was put in its place");
    let lines = lines_about(&customer);
    assert!(lines.iter().any(|l| l.contains("WARN") && l.contains("does not verify")), "{lines:#?}");
    assert_eq!(load(&fixture.cache, &fixture.resolver).await.name(), "invite-resolver");

    // Recompiled and stored again: the next load uses the cache.
    let before = lines_about(&customer).len();
    assert_eq!(load(&fixture.cache, &fixture.customer).await.name(), "invite-customer");
    let after = lines_about(&customer);
    assert!(after[before..].iter().any(|l| l.contains("from the cache")), "{after:#?}");
}

#[tokio::test]
async fn a_tampered_artifact_is_recompiled() {
    let fixture = Fixture::new().await;
    let customer = fixture.artifact(&fixture.customer);
    // Another function's native code under this version, its tag left alone.
    std::fs::copy(fixture.artifact(&fixture.resolver), &customer).expect("overwrite");

    let loaded = load(&fixture.cache, &fixture.customer).await;

    assert_eq!(loaded.name(), "invite-customer");
    let lines = lines_about(&customer);
    assert!(lines.iter().any(|l| l.contains("WARN") && l.contains("recompiling")), "{lines:#?}");
    assert_ne!(
        std::fs::read(&customer).expect("artifact"),
        std::fs::read(fixture.artifact(&fixture.resolver)).expect("artifact"),
        "the recompiled artifact replaced the planted one"
    );
}
