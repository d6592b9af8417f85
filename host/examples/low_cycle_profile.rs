//! A fixed number of LOW cycles of `invite-customer`, for profilers
//! (`valgrind --tool=callgrind`, `perf record`): criterion's own work and
//! its timing loop would blur an instruction count.
//!
//! ```sh
//! cargo build --release -p host --features native-baseline --example low_cycle_profile
//! valgrind --tool=callgrind target/release/examples/low_cycle_profile wasm 2000
//! ```
//!
//! Modes: `wasm` (a component cycle), `native` (the baseline), `instance`
//! (a fresh instance created and dropped). The count is cycles to run after
//! 50 warm-up ones; subtract a run with a smaller count to cancel start-up.

use host::backend::Store;
use host::backend::memory::{MemoryBus, MemoryStore};
use host::executor::run_cycle;
use host::registry::Functions;
use host::runtime::native::catalogue;
use host::runtime::{Limits, Runtime, SystemEnv};
use low_contract::{Message, json};
use std::path::Path;
use std::sync::Arc;

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "wasm".into());
    let n: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
    // Compiled components are cached, so a profile is not mostly Cranelift.
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/profile-cache");
    // Valgrind cannot reserve the address space of 256 pooled instances:
    // `INSTANCES=1` for it.
    let mut limits = Limits::default();
    if let Some(n) = std::env::var("INSTANCES").ok().and_then(|n| n.parse().ok()) {
        limits.instances = n;
    }
    let runtime = Runtime::with(limits, Arc::new(SystemEnv), Some(cache)).expect("runtime");
    let function = if mode == "native" {
        runtime.native(catalogue("invite-customer").expect("compiled in")).expect("native")
    } else {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../modules/invite-customer.wasm");
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run `make guest`)", path.display()));
        rt.block_on(runtime.load(&bytes)).expect("the component loads")
    };
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(MemoryBus::new()));
    let functions = Functions::new([Arc::clone(&function)]).expect("functions");
    rt.block_on(async {
        for i in 0..n + 50 {
            if mode == "instance" {
                drop(function.start(None).await.expect("an instance"));
                continue;
            }
            let command = Message::new(
                format!("c-{i}"),
                "InviteCustomer",
                json!({ "email": format!("u{i}@example.com") }),
            )
            .correlated(format!("c-{i}"));
            run_cycle(&functions, &function, &store, &command).await.expect("a cycle");
        }
    });
    eprintln!("{mode}: {n} (+50) done");
}
