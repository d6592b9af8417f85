//! Host-side bindings of the worlds in `wit/functions.wit` (and of the
//! older one in `wit/older.wit`).

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

/// The `function` world as components built before `operate-and-write`
/// existed export it (`wit/older.wit`): still loaded, and called export by
/// export.
pub mod function_before_operate_and_write {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "function-before-operate-and-write",
        exports: { default: async },
        with: {
            "low:functions/types": super::function::low::functions::types,
            "low:functions/env": super::function::low::functions::env,
            "low:functions/store": super::function::low::functions::store,
        },
    });
}

/// The `function-lean` world: `operate-and-write` without `operate` and
/// `write` of their own (Python's handlers and projectors).
pub mod function_lean {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "function-lean",
        exports: { default: async },
        with: {
            "low:functions/types": super::function::low::functions::types,
            "low:functions/env": super::function::low::functions::env,
            "low:functions/store": super::function::low::functions::store,
        },
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
