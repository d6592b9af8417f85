//! Host-side bindings of the two worlds in `wit/functions.wit`.

/// The `function` world (handlers and projectors).
pub mod function {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "function",
        // Store reads may wait on a database.
        imports: { "low:functions/store": async },
        exports: { default: async },
    });
}

/// The `resolver` world; shares the types and `env` of the `function` world.
pub mod resolver {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "resolver",
        exports: { default: async },
        with: {
            "low:functions/types": super::function::low::functions::types,
            "low:functions/env": super::function::low::functions::env,
        },
    });
}

pub use function::low::functions::types as wit;
