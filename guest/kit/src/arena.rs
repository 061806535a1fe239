//! A bump allocator for guests whose instance lives for one job.
//!
//! matchbox gives every job a fresh instance and throws it away afterwards,
//! with all of its memory. A guest that allocates a bounded amount per job
//! therefore gains nothing from reusing freed memory, and pays for it on
//! every allocation: the host lowers a job's input by calling the guest's
//! allocator once per string and list (thousands of calls for 1,000
//! postings). This allocator only moves a pointer forward; `dealloc` does
//! nothing, and `realloc` grows the last allocation in place.
//!
//! Use it where allocations per job are bounded by the input:
//! `#[global_allocator] static A: matchbox_guest_kit::arena::Arena = matchbox_guest_kit::arena::Arena::new();`
//! A guest that allocates and frees in a loop should keep the default one.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;

const PAGE: usize = 64 << 10;
/// Grow memory at least this many pages at a time.
const MIN_GROWTH_PAGES: usize = 16;

pub struct Arena {
    next: Cell<usize>,
    end: Cell<usize>,
    /// Start of the most recent allocation, which `realloc` can extend.
    last: Cell<usize>,
}

// SAFETY: wasm32-wasip2 guests are single-threaded, so the cells are never
// touched from two threads.
#[allow(unsafe_code)]
unsafe impl Sync for Arena {}

impl Arena {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Arena { next: Cell::new(0), end: Cell::new(0), last: Cell::new(0) }
    }

    fn bump(&self, layout: Layout) -> *mut u8 {
        let align = layout.align();
        let mut start = (self.next.get() + align - 1) & !(align - 1);
        if start + layout.size() > self.end.get() || self.end.get() == 0 {
            let pages = (layout.size() + align).div_ceil(PAGE).max(MIN_GROWTH_PAGES);
            let previous = core::arch::wasm32::memory_grow(0, pages);
            if previous == usize::MAX {
                return core::ptr::null_mut();
            }
            let base = previous * PAGE;
            // Someone else (wasi-libc) may have grown memory since our last
            // growth: then the new pages do not follow ours, so start over
            // at them and leave the old tail unused.
            if base != self.end.get() {
                self.next.set(base);
            }
            self.end.set(base + pages * PAGE);
            start = (self.next.get() + align - 1) & !(align - 1);
        }
        self.next.set(start + layout.size());
        self.last.set(start);
        start as *mut u8
    }
}

// SAFETY: `bump` hands out disjoint, suitably aligned ranges of memory the
// arena obtained from `memory.grow` and never hands any out twice.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.bump(layout)
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let at = ptr as usize;
        if at == self.last.get() && at + new_size <= self.end.get() {
            self.next.set(at + new_size);
            return ptr;
        }
        if new_size <= layout.size() {
            return ptr;
        }
        // SAFETY: `layout.align()` is a valid alignment (it came from a Layout).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let new = self.bump(new_layout);
        if !new.is_null() {
            // SAFETY: both ranges are valid for `layout.size()` bytes and the
            // new one was just handed out, so they do not overlap.
            unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size()) };
        }
        new
    }
}
