//! The metrics recorder does not hold on to what it records: a shell that
//! nobody scrapes keeps its memory flat however many commands it runs.
//!
//! The exporter keeps every histogram sample until it is folded into its
//! buckets; this binary counts the bytes allocated and not yet freed, records
//! many guest-call durations as the shell does, and expects the samples'
//! memory back without a scrape.

use host::metrics::{GuestMetrics, UPKEEP};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

/// The system allocator, counting the bytes it has lent out.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

#[test]
fn samples_are_folded_without_a_scrape() {
    assert!(host::metrics::install(), "the recorder installs");
    let metrics = GuestMetrics::new("invite-customer");
    // Registered, and folded once, before the baseline.
    drop(metrics.timer("lookup"));
    std::thread::sleep(UPKEEP * 2);
    let before = live();

    const SAMPLES: usize = 200_000;
    for _ in 0..SAMPLES {
        drop(metrics.timer("lookup"));
    }
    let held = live() - before;
    assert!(held > 4 * SAMPLES as isize, "the samples are held until folded ({held} bytes)");

    let patience = UPKEEP * 20 + Duration::from_secs(10);
    let until = Instant::now() + patience;
    while live() - before > held / 10 {
        assert!(
            Instant::now() < until,
            "{} bytes of {held} still held {patience:?} after recording them",
            live() - before
        );
        // The shell goes on recording, a little (what it frees is
        // reclaimed once later recordings have moved the exporter's epoch on).
        for _ in 0..1_000 {
            drop(metrics.timer("lookup"));
        }
        std::thread::sleep(UPKEEP / 4);
    }
}
