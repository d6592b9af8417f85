//! Benchmark 1: one full LOW cycle of `invite-customer` (a fresh instance,
//! `meta` cached; lookup, the lookup plan against the memory store, operate,
//! write) — WebAssembly component against the same logic compiled natively,
//! through the same `executor::run_cycle`.
//!
//! `cargo bench -p host --features native-baseline --bench low_cycle`

use criterion::{Criterion, criterion_group, criterion_main};
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

fn component(runtime: &Arc<Runtime>, rt: &tokio::runtime::Runtime) -> Arc<Function> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../modules/invite-customer.wasm");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run `make guest`)", path.display()));
    rt.block_on(runtime.load(&bytes)).expect("the component loads")
}

fn low_cycle(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
    let runtime = Runtime::new(Limits::default()).expect("runtime");
    let wasm = component(&runtime, &rt);
    let native = runtime.native(catalogue("invite-customer").expect("compiled in")).expect("native");
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(MemoryBus::new()));
    let n = AtomicU64::new(0);
    let mut group = c.benchmark_group("low_cycle");
    for (name, function) in [("wasm", &wasm), ("native", &native)] {
        let functions = Functions::new([Arc::clone(function)]).expect("functions");
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let i = n.fetch_add(1, Ordering::Relaxed);
                let command = Message::new(
                    format!("c-{i}"),
                    "InviteCustomer",
                    json!({ "email": format!("u{i}@example.com") }),
                )
                .correlated(format!("c-{i}"));
                let (functions, function, store) = (&functions, function, &store);
                async move { run_cycle(functions, function, store, &command).await.expect("a cycle") }
            })
        });
    }
    group.finish();

    // The part of the cycle that is WebAssembly's own: a fresh store and
    // instance, then dropped (the slot back to the pool).
    let mut group = c.benchmark_group("instance");
    group.bench_function("wasm", |b| {
        b.to_async(&rt).iter(|| async { drop(wasm.start(None).await.expect("an instance")) })
    });
    group.finish();
}

criterion_group!(benches, low_cycle);
criterion_main!(benches);
