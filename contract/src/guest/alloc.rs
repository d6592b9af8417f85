//! The guests' allocator: small blocks from free lists by size class, the
//! rest from std's (wasi-libc's dlmalloc).
//!
//! A LOW call parses and builds JSON: ~180 small allocations a command
//! across the three guests. Through dlmalloc (and std's wrappers around
//! it) they were ~15% of the shell's instructions per command; talc did no
//! better (measured with callgrind, docs/performance.md). A block here is
//! one pop or push of a list. Small blocks are never given back to
//! dlmalloc: an instance's small-block memory stays at the most its calls
//! held at once, and is reused by every later call.
//!
//! A component without `atomics` runs on one thread, which is what makes the
//! unsynchronised state below sound.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// Size classes are multiples of this; every small block is aligned to it.
const GRANULE: usize = 16;
/// Largest size served from the free lists.
const SMALL: usize = 1024;
const CLASSES: usize = SMALL / GRANULE;
/// What a refill takes from dlmalloc at once.
const CHUNK: usize = 4 << 10;

struct Lists {
    /// Head of each class's list of free blocks; a free block's first word
    /// points to the next.
    free: [*mut u8; CLASSES],
    /// The unused part of the chunk blocks are carved from.
    next: *mut u8,
    end: *mut u8,
}

pub struct Allocator(UnsafeCell<Lists>);

impl Allocator {
    const fn new() -> Self {
        Self(UnsafeCell::new(Lists {
            free: [ptr::null_mut(); CLASSES],
            next: ptr::null_mut(),
            end: ptr::null_mut(),
        }))
    }
}

// SAFETY: without the `atomics` target feature a component has one thread.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl Sync for Allocator {}

#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: Allocator = Allocator::new();

/// The class of a layout served from the lists, if it is one.
#[inline]
fn class(layout: Layout) -> Option<usize> {
    (layout.size() <= SMALL && layout.align() <= GRANULE && layout.size() > 0)
        .then(|| (layout.size() - 1) / GRANULE)
}

unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class(layout) else {
            return unsafe { System.alloc(layout) };
        };
        // SAFETY: one thread, and no call below re-enters this allocator.
        let lists = unsafe { &mut *self.0.get() };
        let head = lists.free[class];
        if !head.is_null() {
            lists.free[class] = unsafe { *(head as *mut *mut u8) };
            return head;
        }
        let size = (class + 1) * GRANULE;
        if (lists.end as usize) - (lists.next as usize) < size {
            // What is left of the old chunk is smaller than this block: a
            // few bytes, at most once per chunk.
            let chunk = unsafe { System.alloc(Layout::from_size_align_unchecked(CHUNK, GRANULE)) };
            if chunk.is_null() {
                return chunk;
            }
            lists.next = chunk;
            lists.end = unsafe { chunk.add(CHUNK) };
        }
        let block = lists.next;
        lists.next = unsafe { block.add(size) };
        block
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = class(layout) else {
            return unsafe { System.dealloc(block, layout) };
        };
        // SAFETY: as in `alloc`; `block` came from this class's list or chunk.
        let lists = unsafe { &mut *self.0.get() };
        unsafe { *(block as *mut *mut u8) = lists.free[class] };
        lists.free[class] = block;
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc` makes this a valid layout.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class(layout), class(new)) {
            // Still fits its block.
            (Some(old), Some(class)) if old == class => block,
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            _ => {
                let moved = unsafe { self.alloc(new) };
                if !moved.is_null() {
                    unsafe {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Natively, on an allocator of the test's own: blocks never overlap,
    //! keep their contents through `realloc`, and are reused once freed.
    use super::*;

    /// A small deterministic generator, so a failure reproduces.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    #[test]
    fn blocks_keep_their_bytes_through_allocs_frees_and_reallocs() {
        let allocator = Allocator::new();
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        // (block, layout, the byte it is filled with)
        let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
        let check = |(block, layout, byte): &(*mut u8, Layout, u8)| {
            let bytes = unsafe { std::slice::from_raw_parts(*block, layout.size()) };
            assert!(bytes.iter().all(|b| b == byte), "a block of {layout:?} was overwritten");
        };
        for round in 0..20_000u32 {
            let byte = round as u8;
            match rng.below(3) {
                0 | 1 if live.len() < 400 => {
                    let most = if rng.below(8) == 0 { 4 * SMALL } else { SMALL };
                    let size = 1 + rng.below(most);
                    let align = 1 << rng.below(6);
                    let layout = Layout::from_size_align(size, align).expect("a layout");
                    let block = unsafe { allocator.alloc(layout) };
                    assert!(!block.is_null());
                    assert_eq!(block as usize % align, 0, "{layout:?} misaligned");
                    unsafe { block.write_bytes(byte, size) };
                    live.push((block, layout, byte));
                }
                0 => {}
                _ if live.is_empty() => {}
                2 if rng.below(2) == 0 => {
                    let entry = live.swap_remove(rng.below(live.len()));
                    check(&entry);
                    unsafe { allocator.dealloc(entry.0, entry.1) };
                }
                _ => {
                    let i = rng.below(live.len());
                    let (block, layout, old) = live[i];
                    check(&live[i]);
                    let size = 1 + rng.below(2 * SMALL);
                    let moved = unsafe { allocator.realloc(block, layout, size) };
                    assert!(!moved.is_null());
                    let kept = layout.size().min(size);
                    let bytes = unsafe { std::slice::from_raw_parts(moved, kept) };
                    assert!(bytes.iter().all(|b| *b == old), "realloc lost the contents");
                    unsafe { moved.write_bytes(byte, size) };
                    live[i] = (moved, Layout::from_size_align(size, layout.align()).expect("a layout"), byte);
                }
            }
        }
        live.iter().for_each(check);
        for (block, layout, _) in live {
            unsafe { allocator.dealloc(block, layout) };
        }
    }

    #[test]
    fn a_freed_block_serves_the_next_of_its_class() {
        let allocator = Allocator::new();
        let layout = Layout::from_size_align(40, 8).expect("a layout");
        let first = unsafe { allocator.alloc(layout) };
        unsafe { allocator.dealloc(first, layout) };
        let same_class = Layout::from_size_align(33, 4).expect("a layout");
        assert_eq!(unsafe { allocator.alloc(same_class) }, first);
    }
}
