//! The fast path of a command mutation: a request that is one mutation of a
//! command with scalar arguments (literals, or variables of the five scalar
//! types whose values need no coercion) and a flat selection of its
//! model's fields — what most commands are — is answered by the shell itself, not
//! by async-graphql's execution (a tenth of a command's instructions, for
//! resolving a handful of fields: docs/performance.md).
//!
//! Nothing may differ from what async-graphql would answer. Only documents
//! whose shape passed validation on the served schema take this path; the
//! command runs exactly as the schema's resolver runs it
//! ([`schema::run_command`]); and only the common answer — the document,
//! with every selected non-null field present — is written here. Any other
//! answer (a rejection, an error, a missing field) is handed to the
//! schema's resolver ([`schema::Precomputed`]), so async-graphql formats it
//! as always, without running the command again.

use super::schema::{self, COMMAND_ID, Precomputed, QueryLimits, Services, graphql_name};
use crate::registry::Functions;
use async_graphql::parser::Positioned;
use async_graphql::parser::types::{BaseType, VariableDefinition};
use async_graphql::parser::types::{DocumentOperations, ExecutableDocument, OperationType, Selection};
use async_graphql::{Name, Response, Variables};
use async_graphql_value::{ConstValue, Value as GqlValue};
use low_contract::{CommandSpec, FieldSpec, ModelSpec, Principal, Value};
use std::collections::HashMap;

/// The served commands, by mutation name, with the model each answers with
/// (none for one answering with JSON), and the schema's limits.
pub struct Mutations {
    commands: HashMap<String, (CommandSpec, Option<ModelSpec>)>,
    limits: QueryLimits,
}

impl Mutations {
    /// The commands of `functions`, as the schema serves them.
    pub fn of(functions: &Functions, limits: QueryLimits) -> Self {
        let public: Vec<&ModelSpec> = functions.models().filter(|m| m.public).collect();
        let commands = functions
            .commands()
            .map(|(_, command)| {
                let model = public.iter().find(|m| m.name == command.returns).map(|m| (*m).clone());
                (command.name.clone(), (command.clone(), model))
            })
            .collect();
        Self { commands, limits }
    }
}

/// A field of the selection: its key in the answer, and what it shows.
enum Selected<'m> {
    Typename,
    Field(&'m FieldSpec),
}

/// A request the shell answers itself.
pub struct Plan<'a> {
    /// The mutation's key in `data` (its alias, else its name).
    key: Name,
    spec: &'a CommandSpec,
    model: Option<&'a ModelSpec>,
    /// The arguments, by GraphQL name.
    arguments: HashMap<&'a str, ConstValue>,
    selection: Vec<(Name, Selected<'a>)>,
}

/// `document` as a [`Plan`], when it is one: one unnamed mutation operation
/// without directives, one field naming a served command, arguments that
/// are literals or variables given exactly (see [`coerced`]), and a flat
/// selection of the model's fields.
pub fn plan<'a>(
    document: &'a ExecutableDocument,
    operation_name: Option<&str>,
    variables: &Variables,
    mutations: &'a Mutations,
) -> Option<Plan<'a>> {
    if !document.fragments.is_empty() || operation_name.is_some() {
        return None;
    }
    let DocumentOperations::Single(operation) = &document.operations else { return None };
    let operation = &operation.node;
    if operation.ty != OperationType::Mutation || !operation.directives.is_empty() {
        return None;
    }
    let given = coerced(&operation.variable_definitions, variables)?;
    let [item] = operation.selection_set.node.items.as_slice() else { return None };
    let Selection::Field(field) = &item.node else { return None };
    let field = &field.node;
    let (spec, model) = mutations.commands.get(field.name.node.as_str())?;
    if !field.directives.is_empty() {
        return None;
    }
    let mut arguments = HashMap::new();
    for (name, value) in &field.arguments {
        let value = match &value.node {
            GqlValue::String(_) | GqlValue::Number(_) | GqlValue::Boolean(_) | GqlValue::Null => {
                value.node.clone().into_const()?
            }
            // A variable not given: the argument is absent.
            GqlValue::Variable(variable) => match given.get(variable.as_str())? {
                Some(value) => value.clone(),
                None => continue,
            },
            _ => return None,
        };
        arguments.insert(name.node.as_str(), value);
    }
    let mut selection = vec![];
    for item in &field.selection_set.node.items {
        let Selection::Field(sub) = &item.node else { return None };
        let sub = &sub.node;
        if !sub.arguments.is_empty() || !sub.directives.is_empty() || !sub.selection_set.node.items.is_empty()
        {
            return None;
        }
        let shown = match sub.name.node.as_str() {
            "__typename" => Selected::Typename,
            name => Selected::Field(model.as_ref()?.fields.iter().find(|f| graphql_name(&f.name) == name)?),
        };
        selection.push((sub.response_key().node.clone(), shown));
    }
    // A model is answered with its fields, JSON with none.
    if selection.is_empty() == model.is_some() {
        return None;
    }
    // Far from the depth and complexity limits (each field costs 1), which
    // the slow path enforces to the letter.
    let limits = &mutations.limits;
    if limits.depth < 3 || limits.complexity < selection.len() + 2 {
        return None;
    }
    Some(Plan { key: field.response_key().node.clone(), spec, model: model.as_ref(), arguments, selection })
}

impl Plan<'_> {
    /// Runs the command as the schema's resolver would, for a caller who is
    /// `principal` (none: a trusted caller), `header_key` the request's
    /// `Idempotency-Key`. The answer, or what to give the resolver.
    pub async fn run(
        &self,
        services: &Services,
        principal: Option<Principal>,
        header_key: Option<String>,
    ) -> Result<Response, Precomputed> {
        let answer =
            match schema::command_payload(&self.spec.fields, |name| self.arguments.get(name).cloned()) {
                Err(message) => Err(async_graphql::Error::new(message)),
                Ok(payload) => {
                    let key = schema::command_key(self.arguments.get(COMMAND_ID), || header_key);
                    schema::run_command(services, self.spec, principal, payload, key).await
                }
            };
        let response = answer.as_ref().ok().and_then(|value| self.respond(value));
        crate::metrics::fast(if response.is_some() { "answered" } else { "handed_over" });
        response.ok_or_else(|| Precomputed(std::sync::Mutex::new(Some(answer))))
    }

    /// The response for `value`, when it is the common case (see the module).
    fn respond(&self, value: &Value) -> Option<Response> {
        let shown = match self.model {
            None => schema::json_to_graphql(value),
            Some(model) => {
                let mut object = async_graphql::indexmap::IndexMap::with_capacity(self.selection.len());
                for (key, selected) in &self.selection {
                    let shown = match selected {
                        Selected::Typename => ConstValue::String(model.name.clone()),
                        Selected::Field(spec) => field_value(spec, value)?,
                    };
                    object.insert(key.clone(), shown);
                }
                ConstValue::Object(object)
            }
        };
        let mut data = async_graphql::indexmap::IndexMap::with_capacity(1);
        data.insert(self.key.clone(), shown);
        let mut response = Response::new(ConstValue::Object(data));
        response.http_headers.insert(schema::EXECUTED, axum::http::HeaderValue::from_static("1"));
        Some(response)
    }
}

/// A document's field as the schema's model type shows it
/// ([`schema::shown_field`]): `None` when async-graphql would report it (a
/// non-null field missing).
fn field_value(spec: &FieldSpec, document: &Value) -> Option<ConstValue> {
    match schema::shown_field(spec.kind, document.get(&spec.name)) {
        None if spec.required => None,
        shown => Some(shown.unwrap_or(ConstValue::Null)),
    }
}

/// The request's variables by name as async-graphql would coerce them to
/// their declared types (`None` for one not given and without a default:
/// its arguments are absent) — or `None` when that is not certain: a type
/// other than the five scalars, a list, a directive, a value of another
/// type, a missing non-null one, a variable not declared. The slow path
/// then answers (and refuses what is wrong) as ever.
fn coerced<'v>(
    definitions: &'v [Positioned<VariableDefinition>],
    variables: &'v Variables,
) -> Option<HashMap<&'v str, Option<ConstValue>>> {
    if variables.keys().any(|name| !definitions.iter().any(|d| d.node.name.node == *name)) {
        return None;
    }
    let mut given = HashMap::with_capacity(definitions.len());
    for definition in definitions {
        let definition = &definition.node;
        let BaseType::Named(ty) = &definition.var_type.node.base else { return None };
        if !definition.directives.is_empty() {
            return None;
        }
        let nullable = definition.var_type.node.nullable;
        let value = variables
            .get(&definition.name.node)
            .cloned()
            .or_else(|| definition.default_value.as_ref().map(|d| d.node.clone()));
        let value = match value {
            None if nullable => None,
            None => return None,
            Some(ConstValue::Null) if nullable => Some(ConstValue::Null),
            Some(value) if exactly(ty.as_str(), &value) => Some(value),
            Some(_) => return None,
        };
        given.insert(definition.name.node.as_str(), value);
    }
    Some(given)
}

/// Whether `value` is of the scalar `ty` as it is, with nothing to coerce.
fn exactly(ty: &str, value: &ConstValue) -> bool {
    match (ty, value) {
        ("String" | "ID", ConstValue::String(_)) | ("Boolean", ConstValue::Boolean(_)) => true,
        ("Int", ConstValue::Number(n)) => n.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
        // An integer given for a Float is left to async-graphql.
        ("Float", ConstValue::Number(n)) => n.is_f64(),
        _ => false,
    }
}
