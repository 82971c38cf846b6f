//! [`CountingAllocator`]: counts the heap allocations a piece of code makes on this thread.

// Implementing `GlobalAlloc` needs `unsafe`; this module is the only place the workspace uses
// it, and it only forwards to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// A global allocator that forwards to the system allocator and counts allocations and
/// reallocations made on the current thread while [`count_allocations`] runs.
///
/// Install it in a test or bench binary, then measure:
///
/// ```
/// use tierkit_testkit::{CountingAllocator, count_allocations};
///
/// #[global_allocator]
/// static ALLOCATOR: CountingAllocator = CountingAllocator;
///
/// let n = count_allocations(|| {
///     let v: Vec<u8> = Vec::with_capacity(16);
///     drop(v);
/// });
/// assert_eq!(n, 1);
/// assert_eq!(count_allocations(|| ()), 0);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct CountingAllocator;

fn record(size: usize) {
    // `try_with`: thread locals may be gone while a thread shuts down.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are
// const-initialised thread locals, which never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The allocations `f` makes on this thread, as counted by a [`CountingAllocator`] installed
/// as the global allocator (always 0 when it is not installed).
pub fn count_allocations(f: impl FnOnce()) -> u64 {
    measure_allocations(f).1.count
}

/// What [`measure_allocations`] saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allocations {
    /// Allocations and reallocations.
    pub count: u64,
    /// The largest of them, in bytes.
    pub largest: usize,
}

/// Runs `f` and returns its result with the allocations it made on this thread, as counted by
/// a [`CountingAllocator`] installed as the global allocator (none when it is not installed).
pub fn measure_allocations<R>(f: impl FnOnce() -> R) -> (R, Allocations) {
    ALLOCATIONS.with(|n| n.set(0));
    LARGEST.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    let result = f();
    COUNTING.with(|c| c.set(false));
    let seen = Allocations {
        count: ALLOCATIONS.with(Cell::get),
        largest: LARGEST.with(Cell::get),
    };
    (result, seen)
}
