//! Benchmark 1: one full LOW cycle of `invite-customer` (`meta` cached;
//! lookup, the lookup plan against the memory store, operate, write) —
//! WebAssembly component against the same logic compiled natively, through
//! the same `executor::run_cycle`. The component runs as the shell runs it
//! (default limits: an instance kept for further executions), and on a
//! fresh instance every cycle (`executions-per-instance = 1`).
//!
//! Then the functions in Python and JavaScript (`modules/polyglot/`) against
//! the Rust ones doing the same: the projector's LOW cycle and the resolver's
//! call, under the default limits (instances kept as the shell keeps them).
//!
//! `cargo bench -p host --features native-baseline --bench low_cycle`

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use host::backend::Store;
use host::backend::memory::MemoryBus;
use host::backend::memory::MemoryStore;
use host::executor::run_cycle;
use host::registry::Functions;
use host::runtime::native::catalogue;
use host::runtime::{Function, Limits, Runtime};
use low_contract::{Message, json};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A component `make guest` built, by its path under `modules/`.
fn component(runtime: &Arc<Runtime>, rt: &tokio::runtime::Runtime, module: &str) -> Arc<Function> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../modules").join(module);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run `make guest`)", path.display()));
    rt.block_on(runtime.load(&bytes)).expect("the component loads")
}

/// One LOW cycle of `function` per iteration, through `executor::run_cycle`,
/// on its `i`-th input `input(i)` (run_cycle commits nothing, so each
/// cycle starts from the same store), correlated as a request would be.
fn bench_cycle(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    rt: &tokio::runtime::Runtime,
    function: &Arc<Function>,
    store: &Arc<dyn Store>,
    input: impl Fn(u64) -> Message,
) {
    let functions = Functions::new([Arc::clone(function)]).expect("functions");
    let n = AtomicU64::new(0);
    group.bench_function(name, |b| {
        b.to_async(rt).iter(|| {
            let i = n.fetch_add(1, Ordering::Relaxed);
            let message = input(i).correlated(format!("c-{i}"));
            let (functions, function, store) = (&functions, function, store);
            async move { run_cycle(functions, function, store, &message).await.expect("a cycle") }
        })
    });
}

fn low_cycle(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
    let runtime = Runtime::new(Limits::default()).expect("runtime");
    let wasm = component(&runtime, &rt, "invite-customer.wasm");
    let native = runtime.native(catalogue("invite-customer").expect("compiled in")).expect("native");
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(MemoryBus::new()));
    let fresh_runtime =
        Runtime::new(Limits { executions_per_instance: 1, ..Limits::default() }).expect("runtime");
    let fresh = component(&fresh_runtime, &rt, "invite-customer.wasm");
    let mut group = c.benchmark_group("low_cycle");
    for (name, function) in [("wasm", &wasm), ("wasm-fresh", &fresh), ("native", &native)] {
        bench_cycle(&mut group, name, &rt, function, &store, |i| {
            Message::new(format!("c-{i}"), "InviteCustomer", json!({ "email": format!("u{i}@example.com") }))
        });
    }
    group.finish();

    // The part of a fresh cycle that is WebAssembly's own: a fresh store
    // and instance, then dropped (the slot back to the pool).
    let mut group = c.benchmark_group("instance");
    group.bench_function("wasm", |b| {
        b.to_async(&rt).iter(|| async { drop(fresh.start(None).await.expect("an instance")) })
    });
    group.finish();
}

/// The cost per call of a function in JavaScript or Python, beside the Rust
/// one it mirrors: the projector's LOW cycle on a `CustomerInvited` (in
/// JavaScript and in Python), the resolver's answer from a
/// `ProjectionComplete`. The default limits hold
/// (64 MiB per instance): a call that broke them would fail the benchmark.
fn polyglot(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
    let runtime = Runtime::new(Limits::default()).expect("runtime");
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(MemoryBus::new()));
    let mut group = c.benchmark_group("polyglot");
    for (name, module) in [
        ("projector-rust", "customer-projector.wasm"),
        ("projector-js", "polyglot/customer-projector.wasm"),
        ("projector-python", "polyglot/python/customer-projector.wasm"),
    ] {
        let function = component(&runtime, &rt, module);
        bench_cycle(&mut group, name, &rt, &function, &store, |i| {
            let payload = json!({ "customer-id": format!("cust-{i}"), "email": format!("u{i}@example.com") });
            Message::new(format!("e-{i}"), "CustomerInvited", payload)
        });
    }
    let command = Message::new("c-1", "InviteCustomer", json!({ "email": "a@b.c" })).correlated("c-1");
    let seen =
        [Message::new("n-1", "ProjectionComplete", json!({ "collection": "customers", "key": "cust-1" }))];
    for (name, module) in
        [("resolver-rust", "invite-resolver.wasm"), ("resolver-python", "polyglot/invite-resolver.wasm")]
    {
        let function = component(&runtime, &rt, module);
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let mut call = function.start(None).await.expect("an instance");
                call.resolve(&command, &seen).await.expect("a resolution")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, low_cycle, polyglot);
criterion_main!(benches);
