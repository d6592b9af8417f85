//! The GraphQL API (served by [`crate::http`]). The schema is derived from the functions' metadata
//! ([`schema::build`]) and rebuilt, then swapped in, whenever the registry
//! changes; requests in flight keep the schema they started with. A deploy
//! checks first that the schema can be built with the new version
//! ([`Graphql::check`]), so the swap never leaves a stale schema serving,
//! and refreshes it before it answers.

pub mod documents;
pub mod fast;
pub mod schema;

pub use documents::{Documents, Parsed};
pub use schema::{QueryLimits, Services};

use crate::deploy::SchemaHook;
use crate::registry::{Functions, Registry};
use arc_swap::ArcSwap;
use async_graphql::ValidationMode;
use async_graphql::dynamic::Schema;
use low_contract::ModelSpec;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

/// Shapes of documents remembered as valid, per schema.
const VALIDATED: usize = 1024;

/// The schema served, and the same schema without the validation rules for
/// the documents already validated on it. Validation was a twentieth of a
/// small mutation's cost, and clients send the same few documents again and
/// again: a document whose shape (see [`Documents`]) passed validation here
/// is not validated again. Its key holds the whole document but the
/// contents of its plain string arguments, and no rule of these schemas
/// looks at a string's content (`String`, `ID` and `JSON` take any), so
/// every query of that shape passes as the first did. Requests with
/// variables are validated every time (their values are part of it); the
/// shapes of those that passed are remembered apart, for the fast path of
/// mutations ([`fast`]), which checks the values itself.
pub struct Served {
    pub schema: Arc<Schema>,
    validated_schema: Schema,
    /// Shape and operation name of documents that passed validation.
    validated: quick_cache::sync::Cache<(String, Option<String>), ()>,
    /// The same, of documents that passed it with variables: valid in
    /// structure (their values are checked on every request), which is
    /// what the fast path of mutations needs (it takes only values it can
    /// coerce exactly as async-graphql does).
    validated_with_variables: quick_cache::sync::Cache<(String, Option<String>), ()>,
    /// The commands, for the fast path of their mutations.
    pub mutations: fast::Mutations,
}

/// A request's document as [`Served::pick`] found it.
pub struct Pick<'a> {
    pub schema: &'a Schema,
    /// Its shape, to remember when it passes validation (`None`: it did
    /// not need to, or cannot be remembered).
    unvalidated: Option<(String, Option<String>)>,
    /// A document of its shape passed validation on this schema.
    pub known_valid: bool,
    /// The request has variables.
    with_variables: bool,
}

impl Served {
    fn build(functions: &Functions, services: &Services, limits: QueryLimits) -> Result<Self, String> {
        Ok(Self {
            schema: Arc::new(build(functions, services, limits)?),
            validated_schema: schema::build(functions, services, limits, ValidationMode::Fast)
                .map_err(|e| e.0)?,
            validated: quick_cache::sync::Cache::new(VALIDATED),
            validated_with_variables: quick_cache::sync::Cache::new(VALIDATED),
            mutations: fast::Mutations::of(functions, limits),
        })
    }

    /// The schema to execute `request` with: the one that skips validation
    /// when a document of `shape` (and this operation) passed it already.
    pub fn pick(&self, shape: Option<String>, request: &async_graphql::Request) -> Pick<'_> {
        let with_variables = !request.variables.is_empty();
        let key = shape.map(|s| (s, request.operation_name.clone()));
        let (schema, known_valid) = match &key {
            Some(key) if !with_variables && self.validated.get(key).is_some() => {
                (&self.validated_schema, true)
            }
            Some(key) if with_variables && self.validated_with_variables.get(key).is_some() => {
                (&*self.schema, true)
            }
            _ => (&*self.schema, false),
        };
        let unvalidated = key.filter(|_| !known_valid);
        Pick { schema, unvalidated, known_valid, with_variables }
    }

    /// How many document shapes are known to be valid on this schema.
    pub fn validated_shapes(&self) -> usize {
        self.validated.len()
    }

    /// `response` answers a request picked by `pick`: remembers its shape
    /// if it passed validation (it reached execution).
    pub fn answered(&self, pick: Pick<'_>, response: &async_graphql::Response) {
        if let Some(key) = pick.unvalidated
            && response.http_headers.contains_key(schema::EXECUTED)
        {
            match pick.with_variables {
                false => self.validated.insert(key, ()),
                true => self.validated_with_variables.insert(key, ()),
            }
        }
    }
}

pub struct Graphql {
    served: ArcSwap<Served>,
    /// The registry generation the served schema was built from: a slower
    /// rebuild of an older set never replaces a newer one.
    built: Mutex<u64>,
    registry: Arc<Registry>,
    services: Services,
    limits: QueryLimits,
    /// Parsed queries, whatever the schema: parsing needs none.
    documents: Documents,
}

impl Graphql {
    /// Builds the schema for the current functions and keeps it current.
    pub fn start(
        registry: Arc<Registry>,
        services: Services,
        limits: QueryLimits,
    ) -> anyhow::Result<Arc<Self>> {
        // Subscribed first: a change while building is not missed.
        let mut changes = registry.watch();
        let generation = registry.generation();
        let served = Served::build(&registry.current(), &services, limits).map_err(|e| {
            anyhow::anyhow!("cannot build the GraphQL schema from the functions' metadata: {e}")
        })?;
        let graphql = Arc::new(Self {
            served: ArcSwap::from_pointee(served),
            built: Mutex::new(generation),
            registry,
            services,
            limits,
            documents: Documents::default(),
        });
        let weak = Arc::downgrade(&graphql);
        // Changes made other than through the deployer, which refreshes itself.
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let Some(graphql) = weak.upgrade() else { break };
                graphql.refresh();
            }
        });
        Ok(graphql)
    }

    /// Builds the schema of the registry's current set and serves it,
    /// unless a newer one is served already.
    pub fn refresh(&self) {
        let generation = self.registry.generation();
        if *self.built.lock().unwrap_or_else(|p| p.into_inner()) >= generation {
            return;
        }
        match Served::build(&self.registry.current(), &self.services, self.limits) {
            Ok(served) => {
                let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
                if *built < generation {
                    self.served.store(Arc::new(served));
                    *built = generation;
                    tracing::info!("GraphQL schema rebuilt");
                }
            }
            Err(e) => tracing::error!("keeping the previous GraphQL schema: {e}"),
        }
    }

    pub fn schema(&self) -> Arc<Schema> {
        Arc::clone(&self.served.load().schema)
    }

    /// The schema served, with what it knows of documents validated on it.
    pub fn served(&self) -> Arc<Served> {
        self.served.load_full()
    }

    /// What the schema's resolvers use (for the fast path of mutations).
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The parsed-documents cache requests go through.
    pub fn documents(&self) -> &Documents {
        &self.documents
    }

    /// The schema in SDL, for `host schema` and docs.
    pub fn sdl(&self) -> String {
        self.served.load().schema.sdl()
    }

    /// Whether a schema can be built for `functions` (a set a deploy would
    /// make), without serving it.
    pub fn check(&self, functions: &Functions) -> Result<(), String> {
        build(functions, &self.services, self.limits).map(drop)
    }
}

impl SchemaHook for Graphql {
    fn check(&self, functions: &Functions) -> Result<(), String> {
        Graphql::check(self, functions)
    }

    fn refresh(&self) {
        Graphql::refresh(self)
    }
}

/// [`schema::build`], after checking what it cannot see: names GraphQL can
/// hold, and no two types or root fields under one name (the builder would
/// keep the last one silently).
pub fn build(functions: &Functions, services: &Services, limits: QueryLimits) -> Result<Schema, String> {
    check_names(functions)?;
    schema::build(functions, services, limits, ValidationMode::Strict).map_err(|e| e.0)
}

/// Types and fields the shell itself puts in every schema.
const BUILT_IN_TYPES: &[&str] = &[
    "Query",
    "Mutation",
    "Subscription",
    "Function",
    "LogEvent",
    "JSON",
    "String",
    "Int",
    "Float",
    "Boolean",
    "ID",
];
const BUILT_IN_QUERIES: &[&str] = &["functions"];

/// A GraphQL name: `[_A-Za-z][_0-9A-Za-z]*`, not starting with `__` (reserved).
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
        && !name.starts_with("__")
}

fn check_names(functions: &Functions) -> Result<(), String> {
    let name = |what: String, name: &str, owner: &str| {
        if valid_name(name) {
            Ok(())
        } else {
            Err(format!(
                "`{owner}` declares {what} `{name}`, which is not a GraphQL name \
                 (letters, digits and `_`, not starting with a digit or `__`)"
            ))
        }
    };
    let mut types: BTreeMap<String, String> =
        BUILT_IN_TYPES.iter().map(|t| (t.to_string(), "the shell".to_owned())).collect();
    let mut queries: BTreeMap<String, String> =
        BUILT_IN_QUERIES.iter().map(|q| (q.to_string(), "the shell".to_owned())).collect();
    for function in functions.iter() {
        let owner = function.name();
        let public = function.meta.models.iter().filter(|m| m.public);
        for model in public {
            name("model type".into(), &model.name, owner)?;
            if let Some(other) = types.insert(model.name.clone(), owner.to_owned()) {
                return Err(format!(
                    "`{owner}` declares GraphQL type `{}`, which {} declares too",
                    model.name,
                    quoted(&other)
                ));
            }
            for query in [schema::lower_first(&model.name), schema::graphql_name(&model.collection)] {
                name(format!("model `{}` with the query", model.name), &query, owner)?;
                if let Some(other) = queries.insert(query.clone(), owner.to_owned()) {
                    return Err(format!(
                        "`{owner}`'s model `{}` makes the query `{query}`, which {} makes too",
                        model.name,
                        quoted(&other)
                    ));
                }
            }
            unique_fields(owner, &format!("model `{}`", model.name), model_fields(model), &name)?;
        }
        for command in &function.meta.commands {
            name("command".into(), &command.name, owner)?;
            // `commandId` is the shell's own argument, added to every command.
            let fields = command.fields.iter().map(|f| f.name.as_str()).chain([schema::COMMAND_ID]);
            unique_fields(owner, &format!("command `{}`", command.name), fields, &name)?;
        }
    }
    Ok(())
}

fn model_fields(model: &ModelSpec) -> impl Iterator<Item = &str> {
    model.fields.iter().map(|f| f.name.as_str())
}

/// Each field's GraphQL name is a name, and only one field has it.
fn unique_fields<'a>(
    owner: &str,
    of: &str,
    fields: impl Iterator<Item = &'a str>,
    name: &impl Fn(String, &str, &str) -> Result<(), String>,
) -> Result<(), String> {
    let mut seen = HashSet::new();
    for field in fields {
        let graphql = schema::graphql_name(field);
        name(format!("in {of} the field"), &graphql, owner)?;
        if !seen.insert(graphql.clone()) {
            return Err(format!("`{owner}` declares in {of} two fields named `{graphql}` in GraphQL"));
        }
    }
    Ok(())
}

fn quoted(owner: &str) -> String {
    if owner == "the shell" { "the shell".to_owned() } else { format!("`{owner}`") }
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn graphql_names() {
        for ok in ["Customer", "customer", "_x", "a1", "InviteCustomer"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "1a", "__x", "a-b", "a b", "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
