//! The compiled-component cache: `<sha256>.cwasm` artifacts (native code)
//! keyed by the component's content hash, so a restart does not recompile.
//!
//! An artifact is native code the shell maps and runs, so it is loaded only
//! when it proves it was written by a shell holding this cache's key: beside
//! each artifact, `<sha256>.cwasm.hmac` holds HMAC-SHA256(key, version ‖
//! artifact). The key is 32 random bytes in `key` (0600) in the cache
//! folder (0700), made once by the first shell that uses the folder. An
//! artifact that does not verify — tampered with, another component's,
//! written without the key — is recompiled, with a warning.

use super::{LoadError, Version};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

type HmacSha256 = Hmac<Sha256>;

const KEY_FILE: &str = "key";
const KEY_LEN: usize = 32;
/// Bound into every tag, so a tag cannot be replayed for another purpose.
const DOMAIN: &[u8] = b"lowshell compiled component v1\0";

/// An open cache folder and its key.
pub(super) struct Cache {
    dir: PathBuf,
    key: [u8; KEY_LEN],
}

impl Cache {
    /// Opens (creating, 0700) the cache folder and reads (or makes) its key.
    /// Refuses a folder or key that someone else owns or can write: whoever
    /// can write there could plant native code.
    pub(super) fn open(dir: &Path) -> Result<Self, String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let meta = std::fs::metadata(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        if meta.uid() != euid() {
            return Err(format!("{} belongs to another user (uid {})", dir.display(), meta.uid()));
        }
        if meta.mode() & 0o077 != 0 {
            // Ours but open to others (made by an older shell, or by hand): close it.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("cannot make {} private (0700): {e}", dir.display()))?;
            tracing::warn!(dir = %dir.display(), "the compiled-component cache was open to other users; made it 0700");
        }
        let key = load_or_make_key(dir)?;
        Ok(Self { dir: dir.to_path_buf(), key })
    }

    fn artifact(&self, version: &Version) -> PathBuf {
        self.dir.join(format!("{}.cwasm", version.0))
    }

    fn tag_file(&self, version: &Version) -> PathBuf {
        self.dir.join(format!("{}.cwasm.hmac", version.0))
    }

    fn tag(&self, version: &Version, artifact: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(DOMAIN);
        mac.update(version.0.as_bytes());
        mac.update(b"\0");
        mac.update(artifact);
        mac
    }

    /// The cached artifact of `version`, if there is one and it verifies.
    pub(super) fn load(&self, engine: &Engine, version: &Version) -> Option<Component> {
        let path = self.artifact(version);
        // Read into memory, verify, then deserialize those very bytes: the
        // file cannot change between the check and the load.
        let artifact = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(file = %path.display(), "recompiling, cannot read the cached artifact: {e}");
                return None;
            }
        };
        let tag =
            std::fs::read_to_string(self.tag_file(version)).ok().and_then(|t| hex::decode(t.trim()).ok());
        let verified = tag.is_some_and(|tag| self.tag(version, &artifact).verify_slice(&tag).is_ok());
        if !verified {
            tracing::warn!(
                file = %path.display(),
                "recompiling: the cached artifact does not verify against the cache key \
                 (tampered with, another component's, or written by something other than a shell using this cache)"
            );
            return None;
        }
        // SAFETY: the bytes were written by a shell holding this cache's key
        // (checked just above), and wasmtime refuses an artifact built by
        // another wasmtime version or configuration.
        match unsafe { Component::deserialize(engine, &artifact) } {
            Ok(component) => {
                tracing::debug!(file = %path.display(), "loaded the compiled component from the cache");
                Some(component)
            }
            Err(e) => {
                tracing::info!(file = %path.display(), "recompiling, the cached artifact is unusable: {e}");
                None
            }
        }
    }

    /// Writes the artifact of `version` and its tag, each to a private
    /// temporary file renamed into place: readers never see half a file,
    /// and an artifact without its matching tag is only recompiled.
    pub(super) fn store(&self, component: &Component, version: &Version) -> Result<(), LoadError> {
        let artifact = component.serialize().map_err(|e| LoadError::Invalid(format!("{e}")))?;
        let tag = hex::encode(self.tag(version, &artifact).finalize().into_bytes());
        let (path, tag_path) = (self.artifact(version), self.tag_file(version));
        let io = |e: std::io::Error| LoadError::Invalid(e.to_string());
        let partial = write_private(&path, &artifact).map_err(io)?;
        let tag_partial = write_private(&tag_path, tag.as_bytes()).map_err(io)?;
        std::fs::rename(&partial, &path).map_err(io)?;
        std::fs::rename(&tag_partial, &tag_path).map_err(io)
    }
}

/// Writes `bytes` to a fresh 0600 file next to `path`; returns its name.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let partial = path.with_extension(format!("{}.partial", std::process::id()));
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&partial)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(partial)
}

/// The cache's key: read when it is there, private and well formed; else
/// made afresh (every artifact is then recompiled once).
fn load_or_make_key(dir: &Path) -> Result<[u8; KEY_LEN], String> {
    let path = dir.join(KEY_FILE);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) => {
            let private = meta.file_type().is_file() && meta.uid() == euid() && meta.mode() & 0o077 == 0;
            let key = std::fs::read(&path).ok().and_then(|k| <[u8; KEY_LEN]>::try_from(k).ok());
            match key {
                Some(key) if private => return Ok(key),
                _ => {
                    tracing::warn!(file = %path.display(), "replacing the cache key: it is not a private {KEY_LEN}-byte file");
                    std::fs::remove_file(&path)
                        .map_err(|e| format!("cannot replace the cache key {}: {e}", path.display()))?;
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read the cache key {}: {e}", path.display())),
    }
    let mut key = [0u8; KEY_LEN];
    getrandom::fill(&mut key).map_err(|e| format!("cannot make a cache key: {e}"))?;
    let partial = write_private(&path, &key).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    // A link, unlike a rename, never replaces a key another shell made meanwhile.
    let linked = std::fs::hard_link(&partial, &path);
    let _ = std::fs::remove_file(&partial);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(&path)
            .ok()
            .and_then(|k| <[u8; KEY_LEN]>::try_from(k).ok())
            .ok_or_else(|| format!("cannot read the cache key {}", path.display())),
        Err(e) => Err(format!("cannot write {}: {e}", path.display())),
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_folder_is_private_and_the_key_is_kept() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("a/cache");
        let first = Cache::open(&dir).expect("opens");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        assert_eq!(Cache::open(&dir).expect("opens again").key, first.key, "the same key next time");

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        std::fs::set_permissions(dir.join(KEY_FILE), std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let reopened = Cache::open(&dir).expect("opens");
        assert_eq!(mode(&dir), 0o700, "closed again");
        assert_ne!(reopened.key, first.key, "a key others could read is replaced");
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
    }

    #[test]
    fn a_tag_binds_the_version_and_the_bytes() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let cache = Cache::open(tmp.path()).expect("opens");
        let (a, b) = (Version("a".into()), Version("b".into()));
        let tag = cache.tag(&a, b"code").finalize().into_bytes();
        assert!(cache.tag(&a, b"code").verify_slice(&tag).is_ok());
        assert!(cache.tag(&b, b"code").verify_slice(&tag).is_err(), "another version");
        assert!(cache.tag(&a, b"cod3").verify_slice(&tag).is_err(), "other bytes");
    }
}
