//! Turns a [`Function`](crate::Function) or [`Resolver`](crate::Resolver)
//! into a WebAssembly component of the contract's `function` or `resolver`
//! world. Only compiled for `wasm32` targets; the export macros expand to a
//! type check elsewhere, so a guest crate's native unit tests build unchanged.

#[cfg(all(target_arch = "wasm32", feature = "function"))]
pub mod function;
#[cfg(all(target_arch = "wasm32", feature = "resolver"))]
pub mod resolver;
#[cfg(all(target_arch = "wasm32", feature = "function", feature = "resolver"))]
compile_error!("a component exports one world: enable `function` or `resolver`, not both");

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub use wit_bindgen;

/// Exports a [`Function`](crate::Function) as the component's `function` world.
/// Needs the `function` feature of `low-contract`.
///
/// ```ignore
/// struct InviteCustomer;
/// impl low_contract::Function for InviteCustomer { /* … */ }
/// low_contract::export_function!(InviteCustomer);
/// ```
#[macro_export]
macro_rules! export_function {
    ($function:ty) => {
        const _: fn() = || {
            fn is_function<F: $crate::Function>() {}
            is_function::<$function>();
        };
        #[cfg(target_arch = "wasm32")]
        type __LowFunctionExport = $crate::guest::function::Export<$function>;
        #[cfg(target_arch = "wasm32")]
        $crate::guest::function::__export_function_world!(__LowFunctionExport with_types_in $crate::guest::function);
    };
}

/// Exports a [`Resolver`](crate::Resolver) as the component's `resolver` world.
/// Needs the `resolver` feature of `low-contract`.
#[macro_export]
macro_rules! export_resolver {
    ($resolver:ty) => {
        const _: fn() = || {
            fn is_resolver<R: $crate::Resolver>() {}
            is_resolver::<$resolver>();
        };
        #[cfg(target_arch = "wasm32")]
        type __LowResolverExport = $crate::guest::resolver::Export<$resolver>;
        #[cfg(target_arch = "wasm32")]
        $crate::guest::resolver::__export_resolver_world!(__LowResolverExport with_types_in $crate::guest::resolver);
    };
}

/// Conversions between the generated WIT types of one world (`self::plain::…`)
/// and this crate's plain types, plus the `env` import as an [`Env`](crate::Env).
/// Both worlds generate their own copy of the shared types, hence a macro.
#[cfg(target_arch = "wasm32")]
macro_rules! boundary {
    () => {
        use self::low::functions::{env as wit_env, types as wit};
        use crate::types as plain;

        fn parse(json: &str) -> serde_json::Value {
            // The shell only ever hands over JSON it produced itself.
            serde_json::from_str(json).unwrap_or_else(|e| panic!("the shell sent invalid JSON: {e}"))
        }

        fn text(value: &serde_json::Value) -> String {
            value.to_string()
        }

        impl From<wit::Message> for plain::Message {
            fn from(m: wit::Message) -> Self {
                plain::Message {
                    payload: parse(&m.payload),
                    id: m.id,
                    kind: m.kind,
                    correlation_id: m.correlation_id,
                    causation_id: m.causation_id,
                }
            }
        }

        impl From<plain::Message> for wit::Message {
            fn from(m: plain::Message) -> Self {
                wit::Message {
                    payload: text(&m.payload),
                    id: m.id,
                    kind: m.kind,
                    correlation_id: m.correlation_id,
                    causation_id: m.causation_id,
                }
            }
        }

        impl From<wit::Document> for plain::Document {
            fn from(d: wit::Document) -> Self {
                plain::Document {
                    body: parse(&d.body),
                    collection: d.collection,
                    key: d.key,
                    version: d.version,
                }
            }
        }

        fn field_spec(f: plain::FieldSpec) -> wit::FieldSpec {
            wit::FieldSpec {
                name: f.name,
                kind: match f.kind {
                    plain::FieldKind::Id => wit::FieldKind::Id,
                    plain::FieldKind::Text => wit::FieldKind::Text,
                    plain::FieldKind::Integer => wit::FieldKind::Integer,
                    plain::FieldKind::Number => wit::FieldKind::Number,
                    plain::FieldKind::Boolean => wit::FieldKind::Boolean,
                },
                required: f.required,
                description: f.description,
            }
        }

        impl From<plain::Meta> for wit::Meta {
            fn from(m: plain::Meta) -> Self {
                wit::Meta {
                    name: m.name,
                    kind: match m.kind {
                        plain::FunctionKind::Handler => wit::FunctionKind::Handler,
                        plain::FunctionKind::Projector => wit::FunctionKind::Projector,
                        plain::FunctionKind::Resolver => wit::FunctionKind::Resolver,
                    },
                    inputs: m.inputs,
                    output: m.output,
                    commands: m
                        .commands
                        .into_iter()
                        .map(|c| wit::CommandSpec {
                            name: c.name,
                            fields: c.fields.into_iter().map(field_spec).collect(),
                            returns: c.returns,
                            description: c.description,
                        })
                        .collect(),
                    models: m
                        .models
                        .into_iter()
                        .map(|s| wit::ModelSpec {
                            name: s.name,
                            collection: s.collection,
                            key: s.key,
                            fields: s.fields.into_iter().map(field_spec).collect(),
                            public: s.public,
                            description: s.description,
                        })
                        .collect(),
                }
            }
        }

        /// Reports a panic's message through `env.log` before the instance
        /// traps, so the shell can say why (std's default hook cannot print
        /// from a component). Installed on the first export call.
        fn report_panics() {
            static HOOK: std::sync::Once = std::sync::Once::new();
            HOOK.call_once(|| {
                std::panic::set_hook(Box::new(|info| {
                    wit_env::log(wit_env::Level::Error, &format!("panicked: {info}"))
                }))
            });
        }

        /// The shell's `env` import.
        struct WitEnv;

        impl crate::Env for WitEnv {
            fn new_id(&self) -> String {
                wit_env::new_id()
            }

            fn now_ms(&self) -> u64 {
                wit_env::now_ms()
            }

            fn log(&self, level: crate::Level, message: &str) {
                let level = match level {
                    crate::Level::Trace => wit_env::Level::Trace,
                    crate::Level::Debug => wit_env::Level::Debug,
                    crate::Level::Info => wit_env::Level::Info,
                    crate::Level::Warn => wit_env::Level::Warn,
                    crate::Level::Error => wit_env::Level::Error,
                };
                wit_env::log(level, message)
            }
        }
    };
}

#[cfg(target_arch = "wasm32")]
pub(crate) use boundary;
