//! A project: which functions, which bus and store, where to listen.
//! Read from TOML; relative paths are relative to the project file.

use crate::runtime::Limits;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default project, also compiled in so `host run` works without files.
pub const DEFAULT_PROJECT: &str = include_str!("../../projects/basic.toml");
/// Where the default project is looked for first, relative to the working directory.
pub const DEFAULT_PROJECT_PATH: &str = "projects/basic.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    Memory,
    /// The durable event log and documents in Postgres (`database-url` / `DATABASE_URL`).
    Postgres,
}

/// The environment variable naming the Postgres database when the project has no `database-url`.
pub const DATABASE_URL_ENV: &str = "DATABASE_URL";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Project {
    /// Shown in logs.
    #[serde(default = "default_name")]
    pub name: String,
    /// Address of the HTTP server.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Folder of the components (`<name>.wasm`).
    #[serde(default = "default_modules")]
    pub modules: PathBuf,
    /// The functions to load from `modules`; every `*.wasm` there when absent.
    #[serde(default)]
    pub functions: Option<Vec<String>>,
    #[serde(default = "default_backend")]
    pub bus: Backend,
    #[serde(default = "default_backend")]
    pub store: Backend,
    /// Postgres connection URL when `bus`/`store` is `postgres`; when
    /// absent, the `DATABASE_URL` environment variable.
    #[serde(default)]
    pub database_url: Option<String>,
    /// How long a request waits for its response.
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// Attempts of a step whose commit conflicts (each with a fresh lookup).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub graphql: GraphqlConfig,
    /// Deploy a component when its file in `modules` changes.
    #[serde(default = "yes")]
    pub watch: bool,
    /// Where compiled components are cached, keyed by content hash, so a
    /// restart does not recompile. Default: `$XDG_CACHE_HOME/lowshell` or
    /// `~/.cache/lowshell`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    #[serde(default)]
    pub admin: AdminConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token of the admin endpoints; `LOWSHELL_ADMIN_TOKEN` overrides it.
    /// Without one the admin endpoints refuse every request.
    pub token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Wall-clock budget of one guest call, in milliseconds.
    pub deadline_ms: u64,
    /// Linear memory of one guest instance, in MiB.
    pub memory_mib: usize,
    /// Guest instances alive at once.
    pub instances: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = Limits::default();
        Self {
            deadline_ms: d.deadline.as_millis() as u64,
            memory_mib: d.memory_bytes >> 20,
            instances: d.instances,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct GraphqlConfig {
    pub max_depth: usize,
    pub max_complexity: usize,
}

impl Default for GraphqlConfig {
    fn default() -> Self {
        Self { max_depth: 16, max_complexity: 1000 }
    }
}

fn yes() -> bool {
    true
}
fn default_name() -> String {
    "lowshell".into()
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_modules() -> PathBuf {
    "modules".into()
}
fn default_backend() -> Backend {
    Backend::Memory
}
fn default_response_timeout_ms() -> u64 {
    5000
}
fn default_attempts() -> u32 {
    5
}

impl Project {
    /// Parses `text`, resolving relative paths against `dir`.
    pub fn parse(text: &str, dir: &Path) -> anyhow::Result<Self> {
        let mut project: Project = toml::from_str(text)?;
        if project.modules.is_relative() {
            project.modules = dir.join(&project.modules);
        }
        if let Some(cache) = project.cache_dir.as_mut().filter(|c| c.is_relative()) {
            *cache = dir.join(&*cache);
        }
        if project.limits.instances == 0 || project.limits.memory_mib == 0 || project.limits.deadline_ms == 0
        {
            anyhow::bail!(
                "limits.instances, limits.memory-mib and limits.deadline-ms must be greater than 0"
            );
        }
        Ok(project)
    }

    /// Reads a project file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read project file {}: {e}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, dir).map_err(|e| anyhow::anyhow!("project file {}: {e}", path.display()))
    }

    /// `projects/basic.toml` when it exists here, else the compiled-in copy
    /// (as if it were there).
    pub fn default_project() -> anyhow::Result<Self> {
        let path = Path::new(DEFAULT_PROJECT_PATH);
        if path.exists() { Self::load(path) } else { Self::parse(DEFAULT_PROJECT, Path::new("projects")) }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            deadline: Duration::from_millis(self.limits.deadline_ms),
            memory_bytes: self.limits.memory_mib << 20,
            instances: self.limits.instances,
        }
    }

    /// The Postgres URL: the project's `database-url`, else `DATABASE_URL`.
    pub fn database_url(&self) -> anyhow::Result<String> {
        if let Some(url) = &self.database_url {
            return Ok(url.clone());
        }
        match std::env::var(DATABASE_URL_ENV) {
            Ok(url) if !url.trim().is_empty() => Ok(url),
            _ => anyhow::bail!(
                "this project uses Postgres: set {DATABASE_URL_ENV} (e.g. postgres://user@localhost/lowshell; \
                 `make pg` starts a local one) or `database-url` in the project file"
            ),
        }
    }

    /// The admin token: `LOWSHELL_ADMIN_TOKEN`, else `[admin] token`; empty means none.
    pub fn admin_token(&self) -> Option<String> {
        std::env::var("LOWSHELL_ADMIN_TOKEN")
            .ok()
            .or_else(|| self.admin.token.clone())
            .filter(|t| !t.trim().is_empty())
    }

    /// The compiled-component cache folder, if there is one.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        self.cache_dir.clone().or_else(|| {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
            Some(base.join("lowshell"))
        })
    }

    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_project_parses() {
        let p = Project::parse(DEFAULT_PROJECT, Path::new("projects")).expect("default project");
        assert_eq!(p.bus, Backend::Memory);
        assert_eq!(p.modules, Path::new("projects/../modules"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = Project::parse("bsu = \"memory\"", Path::new(".")).expect_err("typo refused");
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
