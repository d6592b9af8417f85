//! `host new`: a new function from a template — a handler, a projector or a
//! resolver, in Rust, Python or JavaScript — with its scenario file. As
//! generated it builds (`make guest`), passes `host test`, and loads into a
//! shell; the three kinds named alike (`book-room`, `book-room-projector`,
//! `book-room-resolver`) work together.
//!
//! The templates are the same function in each language and share one
//! scenario file per kind, so the scenarios prove the languages agree.

use std::fmt;
use std::path::{Path, PathBuf};

/// What a function does (the contract's three kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Decides on commands: emits events or rejects.
    Handler,
    /// Keeps a read model from events.
    Projector,
    /// Answers a command's request from the notifications it caused.
    Resolver,
}

/// The language of the generated function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Handler => "handler",
            Kind::Projector => "projector",
            Kind::Resolver => "resolver",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error(
        "`{0}` is not a valid function name: use lower-case letters, digits and single dashes, \
         starting with a letter (e.g. book-room), at most 48 characters"
    )]
    InvalidName(String),
    #[error("`{name}` exists already ({path}): pick another name")]
    Exists { name: String, path: String },
    #[error("`{0}` is a name the project uses for something else: pick another name")]
    Reserved(String),
    #[error(
        "{0} is not a lowshell project (no guest-functions/ and wit/ there): run `host new` at its root, or pass --root"
    )]
    NotAProject(String),
    #[error("cannot add `{member}` to the workspace in {file}: {reason}")]
    Workspace { member: String, file: String, reason: String },
    #[error("cannot write {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// What `host new` made.
#[derive(Debug)]
pub struct Created {
    /// The function's folder.
    pub dir: PathBuf,
    /// Every file written, the folder's and the workspace's.
    pub files: Vec<PathBuf>,
    /// How to build, test and run it, for the terminal.
    pub next: String,
}

/// Names the project's own folders and crates use.
const RESERVED: &[&str] =
    &["sdk", "fixtures", "host", "contract", "low-contract", "wit", "modules", "target"];

/// Writes the function `name` of `kind` in `lang` into `root`'s
/// `guest-functions/` (and, for Rust, adds it to the workspace). Nothing is
/// left behind when it fails.
pub fn create(root: &Path, name: &str, kind: Kind, lang: Lang) -> Result<Created, ScaffoldError> {
    check_name(name)?;
    let functions = root.join("guest-functions");
    if !functions.is_dir() || !root.join("wit").join("functions.wit").is_file() {
        return Err(ScaffoldError::NotAProject(root.display().to_string()));
    }
    let dir = functions.join(name);
    if dir.exists() {
        return Err(ScaffoldError::Exists { name: name.into(), path: dir.display().to_string() });
    }
    let module = root.join("modules").join(format!("{name}.wasm"));
    if module.exists() {
        return Err(ScaffoldError::Exists { name: name.into(), path: module.display().to_string() });
    }
    let names = Names::of(name, kind);
    let source = match (lang, kind) {
        (Lang::Rust, Kind::Handler) => ("src/lib.rs", include_str!("templates/handler.rs")),
        (Lang::Rust, Kind::Projector) => ("src/lib.rs", include_str!("templates/projector.rs")),
        (Lang::Rust, Kind::Resolver) => ("src/lib.rs", include_str!("templates/resolver.rs")),
        (Lang::Js, Kind::Handler) => ("function.js", include_str!("templates/handler.js")),
        (Lang::Js, Kind::Projector) => ("function.js", include_str!("templates/projector.js")),
        (Lang::Js, Kind::Resolver) => ("resolver.js", include_str!("templates/resolver.js")),
        (Lang::Python, Kind::Handler) => ("function.py", include_str!("templates/handler.py")),
        (Lang::Python, Kind::Projector) => ("function.py", include_str!("templates/projector.py")),
        (Lang::Python, Kind::Resolver) => ("resolver.py", include_str!("templates/resolver.py")),
    };
    let scenarios = match kind {
        Kind::Handler => include_str!("templates/handler.toml"),
        Kind::Projector => include_str!("templates/projector.toml"),
        Kind::Resolver => include_str!("templates/resolver.toml"),
    };
    let mut files = vec![(source.0.to_string(), names.fill(source.1))];
    files.push((format!("scenarios/{name}.toml"), names.fill(scenarios)));
    if lang == Lang::Rust {
        files.push(("Cargo.toml".into(), names.fill(include_str!("templates/Cargo.toml.txt"))));
    }

    // Written beside, then renamed: a half-written function never appears.
    let staging = functions.join(format!(".{name}.new"));
    let written = write_all(&staging, &files).and_then(|()| {
        std::fs::rename(&staging, &dir)
            .map_err(|source| ScaffoldError::Io { path: dir.display().to_string(), source })
    });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    let mut written: Vec<PathBuf> = files.iter().map(|(path, _)| dir.join(path)).collect();
    if lang == Lang::Rust {
        let manifest = root.join("Cargo.toml");
        if let Err(e) = add_member(&manifest, &format!("guest-functions/{name}")) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        written.push(manifest);
    }
    Ok(Created { next: next_steps(name, kind, lang), dir, files: written })
}

/// Lower-case words joined by single dashes, starting with a letter: a
/// crate, folder, module file and function name all at once.
fn check_name(name: &str) -> Result<(), ScaffoldError> {
    let valid = !name.is_empty()
        && name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.split('-').all(|word| {
            !word.is_empty() && word.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        });
    if !valid {
        return Err(ScaffoldError::InvalidName(name.into()));
    }
    if RESERVED.contains(&name) {
        return Err(ScaffoldError::Reserved(name.into()));
    }
    Ok(())
}

/// The names a template is filled with.
struct Names {
    name: String,
    /// The name without its kind's suffix: `book-room` for
    /// `book-room-projector`, so that a trio named alike fits together.
    base: String,
    /// `BookRoom`: the command a handler takes and a resolver answers.
    pascal: String,
    /// The model's GraphQL type.
    model: String,
    /// The collection a handler or projector writes.
    collection: String,
    world: &'static str,
}

impl Names {
    fn of(name: &str, kind: Kind) -> Self {
        let base = ["-projector", "-resolver", "-handler"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name)
            .to_string();
        let pascal: String = base
            .split('-')
            .map(|word| {
                let mut chars = word.chars();
                chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
            })
            .collect();
        // GraphQL serves a model by its name (one) and its collection (a
        // page): `bookRoomEntry(id)`, `bookRoomEntries(first, after)`.
        let (model, collection) = match kind {
            Kind::Projector => (format!("{pascal}Entry"), format!("{base}-entries")),
            _ => (format!("{pascal}Record"), format!("{base}-records")),
        };
        let world = if kind == Kind::Resolver { "resolver" } else { "function" };
        Self { name: name.into(), base, pascal, model, collection, world }
    }

    fn fill(&self, template: &str) -> String {
        template
            .replace("{{name}}", &self.name)
            .replace("{{base}}", &self.base)
            .replace("{{Base}}", &self.pascal)
            .replace("{{Model}}", &self.model)
            .replace("{{collection}}", &self.collection)
            .replace("{{world}}", self.world)
    }
}

fn write_all(dir: &Path, files: &[(String, String)]) -> Result<(), ScaffoldError> {
    for (path, text) in files {
        let path = dir.join(path);
        let io = |source| ScaffoldError::Io { path: path.display().to_string(), source };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, text).map_err(io)?;
    }
    Ok(())
}

/// Adds `member` to `[workspace] members`, keeping the file's comments and layout.
fn add_member(manifest: &Path, member: &str) -> Result<(), ScaffoldError> {
    let fail = |reason: String| ScaffoldError::Workspace {
        member: member.into(),
        file: manifest.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(manifest).map_err(|e| fail(e.to_string()))?;
    let mut doc: toml_edit::DocumentMut =
        text.parse().map_err(|e: toml_edit::TomlError| fail(e.to_string()))?;
    let members = doc
        .get_mut("workspace")
        .and_then(|w| w.get_mut("members"))
        .and_then(|m| m.as_array_mut())
        .ok_or_else(|| fail("it has no `[workspace] members` list".into()))?;
    if !members.iter().any(|m| m.as_str() == Some(member)) {
        members.push(member);
        // One member per line, like the rest of the list.
        if let Some(last) = members.iter_mut().last() {
            last.decor_mut().set_prefix("\n    ");
        }
    }
    std::fs::write(manifest, doc.to_string()).map_err(|e| fail(e.to_string()))
}

fn next_steps(name: &str, kind: Kind, lang: Lang) -> String {
    let built = format!("modules/{name}.wasm");
    let build = match lang {
        Lang::Rust => format!(
            "make guest                  # builds {built} (or: cargo test -p {name} for its unit tests)"
        ),
        Lang::Python | Lang::Js => {
            format!("make guest                  # builds {built} with the pinned componentize tools")
        }
    };
    let pairs = match kind {
        Kind::Handler => format!(
            "its events go to the topic `{name}`: `host new {name}-projector --kind projector` reads them, \
             `host new {name}-resolver --kind resolver` answers its command"
        ),
        Kind::Projector | Kind::Resolver => String::new(),
    };
    let mut next = format!(
        "next:\n  {build}\n  cargo run -p host -- test {built} guest-functions/{name}/scenarios\n  \
         add \"{name}\" to `functions` in your project (e.g. projects/basic.toml), then `cargo run -p host` \
         (or `cargo run -p host -- dev` to rebuild and swap it as you edit)"
    );
    if !pairs.is_empty() {
        next.push_str(&format!("\n  {pairs}"));
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for bad in
            ["", "Book", "book_room", "-book", "book-", "book--room", "1book", "book room", &"a".repeat(49)]
        {
            assert!(matches!(check_name(bad), Err(ScaffoldError::InvalidName(_))), "{bad:?} was accepted");
        }
        assert!(matches!(check_name("sdk"), Err(ScaffoldError::Reserved(_))));
        for good in ["book-room", "a", "room2-booker"] {
            check_name(good).unwrap();
        }
    }

    #[test]
    fn a_trio_named_alike_shares_its_command_and_topic() {
        let handler = Names::of("book-room", Kind::Handler);
        let projector = Names::of("book-room-projector", Kind::Projector);
        let resolver = Names::of("book-room-resolver", Kind::Resolver);
        assert_eq!((handler.pascal.as_str(), handler.base.as_str()), ("BookRoom", "book-room"));
        assert_eq!(projector.base, "book-room");
        assert_eq!(resolver.pascal, "BookRoom");
        assert_eq!(
            (projector.model.as_str(), projector.collection.as_str()),
            ("BookRoomEntry", "book-room-entries")
        );
        assert_eq!(handler.world, "function");
        assert_eq!(resolver.world, "resolver");
    }

    #[test]
    fn every_placeholder_is_filled() {
        let names = Names::of("book-room", Kind::Handler);
        for template in [
            include_str!("templates/handler.rs"),
            include_str!("templates/projector.rs"),
            include_str!("templates/resolver.rs"),
            include_str!("templates/handler.js"),
            include_str!("templates/projector.js"),
            include_str!("templates/resolver.js"),
            include_str!("templates/handler.py"),
            include_str!("templates/projector.py"),
            include_str!("templates/resolver.py"),
            include_str!("templates/handler.toml"),
            include_str!("templates/projector.toml"),
            include_str!("templates/resolver.toml"),
            include_str!("templates/Cargo.toml.txt"),
        ] {
            assert!(!names.fill(template).contains("{{"), "a placeholder is left in:\n{template}");
        }
    }

    #[test]
    fn a_member_is_added_keeping_the_manifest() {
        let dir = std::env::temp_dir().join(format!("lowshell-scaffold-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = dir.join("Cargo.toml");
        std::fs::write(
            &manifest,
            "[workspace]\n# the crates\nmembers = [\n    \"a\",\n    # bench\n    \"b\",\n]\n",
        )
        .unwrap();
        add_member(&manifest, "guest-functions/c").unwrap();
        add_member(&manifest, "guest-functions/c").unwrap();
        let text = std::fs::read_to_string(&manifest).unwrap();
        assert!(text.contains("# the crates") && text.contains("# bench"), "{text}");
        assert_eq!(text.matches("guest-functions/c").count(), 1, "{text}");
        assert!(text.contains("\n    \"guest-functions/c\""), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
