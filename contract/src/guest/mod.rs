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

/// The conversions between the generated WIT types of one world and this
/// crate's plain types (the one mapping, [`wit_conversions!`](crate::wit_conversions)),
/// plus the `env` import as an [`Env`](crate::Env) and the panic hook. Both
/// worlds generate their own copy of the shared types, hence a macro.
#[cfg(target_arch = "wasm32")]
macro_rules! boundary {
    () => {
        use self::low::functions::{env as wit_env, types as wit};
        use crate::types as plain;

        $crate::wit_conversions!(self::low::functions::types);

        /// A value the shell handed over (an export's argument). The shell
        /// only hands over values it checked or produced itself, so an
        /// invalid one is a bug in the shell: trap, saying what it was.
        fn from_shell<T>(value: Result<T, String>) -> T {
            value.unwrap_or_else(|e| panic!("the shell sent an invalid value: {e}"))
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

#[cfg(any(test, all(target_arch = "wasm32", not(target_feature = "atomics"))))]
mod alloc;
