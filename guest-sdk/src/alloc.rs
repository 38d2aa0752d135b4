//! The guests' allocator: free lists of small blocks in front of the system
//! allocator.
//!
//! A stream function allocates and frees the same few small objects for every
//! record (a `Vec<Output>`, a parsed JSON value, a `String`). In wasm the
//! system allocator (wasi-libc's dlmalloc) spends ~13 ns on each
//! allocation-and-free of such an object, longer than the rest of an identity
//! map. [`SizeClasses`] keeps freed blocks of up to [`SMALL`] bytes on a list
//! per size class (16, 32, … 256 bytes) and hands them out again in a few
//! instructions; everything else goes to the system allocator.
//!
//! With the `allocator` feature (on by default) it is the global allocator of
//! every guest built for single-threaded wasm. A crate that sets its own
//! `#[global_allocator]` turns the feature off:
//! `runnel-sdk = { version = "…", default-features = false }`.
//! Native builds (an author's unit tests) keep the system allocator.
//!
//! Memory: a class keeps at most [`KEPT_PER_CLASS`] free blocks and returns
//! the rest to the system allocator, so the lists hold at most 4.25 MiB
//! (`KEPT_PER_CLASS` × 2,176 bytes, the 16 class sizes added up), and usually
//! far less: what a batch frees, the next batch reuses.

// The one place in runnel-sdk that needs `unsafe`: an allocator hands out
// raw memory. The lists are plain singly linked lists threaded through the
// free blocks themselves.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::ptr;

/// Granularity of the size classes, and the alignment of their blocks.
const CLASS_BYTES: usize = 16;
/// Number of size classes.
const CLASSES: usize = 16;
/// Blocks of at most this many bytes (and alignment at most
/// [`CLASS_BYTES`]) come from the free lists.
pub const SMALL: usize = CLASS_BYTES * CLASSES;
/// Free blocks a class keeps; more go back to the system allocator.
pub const KEPT_PER_CLASS: u32 = 2048;

/// A free block: the next free block of its class is stored in its first word.
type Link = *mut u8;

struct Lists {
    heads: [Link; CLASSES],
    counts: [u32; CLASSES],
}

/// Free lists of small blocks in front of the allocator `A`.
///
/// Not thread-safe: it is only `Sync` (and so only usable as a global
/// allocator) on targets without threads. Tests use it through a local value.
pub struct SizeClasses<A: GlobalAlloc> {
    inner: A,
    lists: UnsafeCell<Lists>,
}

// SAFETY: on wasm without the `atomics` feature there is exactly one thread,
// so the lists are never touched by two threads.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
unsafe impl<A: GlobalAlloc + Sync> Sync for SizeClasses<A> {}

impl<A: GlobalAlloc> std::fmt::Debug for SizeClasses<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SizeClasses")
            .field("kept", &self.kept())
            .finish_non_exhaustive()
    }
}

impl<A: GlobalAlloc> SizeClasses<A> {
    pub const fn new(inner: A) -> Self {
        Self {
            inner,
            lists: UnsafeCell::new(Lists {
                heads: [ptr::null_mut(); CLASSES],
                counts: [0; CLASSES],
            }),
        }
    }

    /// How many free blocks the lists hold, per class: for tests.
    pub fn kept(&self) -> [u32; CLASSES] {
        // SAFETY: single-threaded (see the type's doc); no list operation is
        // in progress while this reads.
        unsafe { (*self.lists.get()).counts }
    }
}

impl<A: GlobalAlloc> Drop for SizeClasses<A> {
    /// Gives the kept blocks back to `inner` (a global allocator is never
    /// dropped; a local one, as in the tests, would otherwise leak them).
    fn drop(&mut self) {
        let lists = self.lists.get_mut();
        for (c, head) in lists.heads.iter_mut().enumerate() {
            while !head.is_null() {
                let block = *head;
                // SAFETY: `block` is a free block of class `c`, allocated by
                // `inner` with `class_layout(c)`; its first word links the next.
                unsafe {
                    *head = block.cast::<Link>().read();
                    self.inner.dealloc(block, class_layout(c));
                }
            }
            lists.counts[c] = 0;
        }
    }
}

/// The size class of `layout`, if it is small.
#[inline]
fn class(layout: Layout) -> Option<usize> {
    if layout.size() <= SMALL && layout.align() <= CLASS_BYTES {
        Some(layout.size().saturating_sub(1) / CLASS_BYTES)
    } else {
        None
    }
}

/// The layout every block of class `c` is allocated from `inner` with.
#[inline]
fn class_layout(c: usize) -> Layout {
    // A multiple of 16, at most 256, aligned to 16: always a valid layout.
    match Layout::from_size_align((c + 1) * CLASS_BYTES, CLASS_BYTES) {
        Ok(l) => l,
        Err(_) => unreachable!("size classes are valid layouts"),
    }
}

unsafe impl<A: GlobalAlloc> GlobalAlloc for SizeClasses<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(c) = class(layout) else {
            // SAFETY: the caller's layout, passed on as it came.
            return unsafe { self.inner.alloc(layout) };
        };
        // SAFETY: single-threaded (see the type's doc), and the allocator
        // calls nothing that could re-enter it while it holds `lists`.
        let lists = unsafe { &mut *self.lists.get() };
        let head = lists.heads[c];
        if head.is_null() {
            // SAFETY: a valid, non-zero-sized layout.
            return unsafe { self.inner.alloc(class_layout(c)) };
        }
        // SAFETY: `head` is a free block of this class, at least 16 bytes
        // and 16-aligned, whose first word `dealloc` set to the next link.
        lists.heads[c] = unsafe { head.cast::<Link>().read() };
        lists.counts[c] -= 1;
        head
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(c) = class(layout) else {
            // SAFETY: allocated by `inner` with this layout (see `alloc`).
            return unsafe { self.inner.dealloc(block, layout) };
        };
        // SAFETY: as in `alloc`.
        let lists = unsafe { &mut *self.lists.get() };
        if lists.counts[c] >= KEPT_PER_CLASS {
            // SAFETY: blocks of class `c` come from `inner` with `class_layout(c)`.
            return unsafe { self.inner.dealloc(block, class_layout(c)) };
        }
        // SAFETY: the block is ours again, 16-aligned and at least 16 bytes:
        // its first word can hold the link.
        unsafe { block.cast::<Link>().write(lists.heads[c]) };
        lists.heads[c] = block;
        lists.counts[c] += 1;
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if class(layout).is_none() {
            // SAFETY: the caller's layout; fresh pages need no zeroing there.
            return unsafe { self.inner.alloc_zeroed(layout) };
        }
        // SAFETY: the caller's layout; the block has at least `size` bytes.
        unsafe {
            let block = self.alloc(layout);
            if !block.is_null() {
                block.write_bytes(0, layout.size());
            }
            block
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` rounded up to the
        // alignment does not overflow, which is what `from_size_align` checks.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class(layout), class(new_layout)) {
            // The block already has room: a class is a block size.
            (Some(a), Some(b)) if a == b => block,
            // SAFETY: allocated by `inner` with `layout`.
            (None, None) => unsafe { self.inner.realloc(block, layout, new_size) },
            // SAFETY: a new block, the common prefix copied, the old one freed.
            _ => unsafe {
                let new = self.alloc(new_layout);
                if !new.is_null() {
                    ptr::copy_nonoverlapping(block, new, layout.size().min(new_size));
                    self.dealloc(block, layout);
                }
                new
            },
        }
    }
}

#[cfg(all(
    feature = "allocator",
    target_family = "wasm",
    not(target_feature = "atomics")
))]
#[global_allocator]
static ALLOCATOR: SizeClasses<std::alloc::System> = SizeClasses::new(std::alloc::System);

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).unwrap()
    }

    /// The system allocator, counting the blocks it has out.
    struct Counting(std::sync::Arc<std::sync::atomic::AtomicIsize>);

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            unsafe { System.alloc(l) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            unsafe { System.dealloc(p, l) }
        }
    }

    #[test]
    fn dropping_gives_every_kept_block_back() {
        let out = std::sync::Arc::new(std::sync::atomic::AtomicIsize::new(0));
        {
            let a = SizeClasses::new(Counting(out.clone()));
            unsafe {
                let blocks: Vec<_> = (1..=600).map(|n| (a.alloc(layout(n)), n)).collect();
                for (b, n) in blocks {
                    a.dealloc(b, layout(n));
                }
            }
            // Blocks over 256 bytes went straight back; the small ones are kept.
            assert_eq!(a.kept().iter().sum::<u32>(), 256);
            assert_eq!(out.load(std::sync::atomic::Ordering::Relaxed), 256);
        }
        assert_eq!(out.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[test]
    fn sizes_fall_into_classes_of_16_bytes() {
        assert_eq!(class(layout(1)), Some(0));
        assert_eq!(class(layout(16)), Some(0));
        assert_eq!(class(layout(17)), Some(1));
        assert_eq!(class(layout(256)), Some(15));
        assert_eq!(class(layout(257)), None);
        assert_eq!(class(Layout::from_size_align(64, 32).unwrap()), None);
    }

    #[test]
    fn a_freed_block_is_reused_by_its_class_only() {
        let a = SizeClasses::new(System);
        unsafe {
            let x = a.alloc(layout(24));
            x.write_bytes(0xaa, 24);
            a.dealloc(x, layout(24));
            assert_eq!(a.kept()[1], 1);
            // Another class does not get it; the same class does.
            let y = a.alloc(layout(8));
            assert_ne!(x, y);
            let z = a.alloc(layout(32));
            assert_eq!(x, z);
            assert_eq!(a.kept()[1], 0);
            a.dealloc(y, layout(8));
            a.dealloc(z, layout(32));
        }
    }

    #[test]
    fn blocks_stay_distinct_and_keep_their_bytes() {
        let a = SizeClasses::new(System);
        let mut blocks = Vec::new();
        unsafe {
            for round in 0..3u8 {
                for size in (1..=300).step_by(7) {
                    let b = a.alloc(layout(size));
                    assert!(!b.is_null());
                    assert_eq!(b as usize % 8, 0);
                    b.write_bytes(round ^ size as u8, size);
                    blocks.push((b, size, round ^ size as u8));
                }
                // Free every other block, so that the next round reuses them.
                let mut kept = Vec::new();
                for (i, (b, size, fill)) in blocks.drain(..).enumerate() {
                    if i % 2 == 0 {
                        a.dealloc(b, layout(size));
                    } else {
                        kept.push((b, size, fill));
                    }
                }
                blocks = kept;
            }
            for (b, size, fill) in blocks {
                let bytes = std::slice::from_raw_parts(b, size);
                assert!(bytes.iter().all(|&x| x == fill), "a block was overwritten");
                a.dealloc(b, layout(size));
            }
        }
    }

    #[test]
    fn a_class_keeps_a_bounded_number_of_free_blocks() {
        let a = SizeClasses::new(System);
        let n = KEPT_PER_CLASS as usize + 10;
        unsafe {
            let blocks: Vec<_> = (0..n).map(|_| a.alloc(layout(40))).collect();
            for b in blocks {
                a.dealloc(b, layout(40));
            }
        }
        assert_eq!(a.kept()[2], KEPT_PER_CLASS);
    }

    #[test]
    fn realloc_keeps_the_bytes_across_classes_and_sizes() {
        let a = SizeClasses::new(System);
        unsafe {
            let mut b = a.alloc(layout(10));
            for i in 0..10 {
                b.add(i).write(i as u8);
            }
            // Within the class: the same block.
            let same = a.realloc(b, layout(10), 16);
            assert_eq!(same, b);
            let mut size = 16;
            // Up through the classes, into the system allocator, and back.
            for new_size in [40, 256, 1000, 100_000, 300, 12] {
                b = a.realloc(b, layout(size), new_size);
                assert!(!b.is_null());
                let head = std::slice::from_raw_parts(b, 10);
                assert_eq!(head, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
                size = new_size;
            }
            a.dealloc(b, layout(size));
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_even_when_reused() {
        let a = SizeClasses::new(System);
        unsafe {
            let b = a.alloc(layout(48));
            b.write_bytes(0xff, 48);
            a.dealloc(b, layout(48));
            let z = a.alloc_zeroed(layout(48));
            assert_eq!(z, b);
            assert!(std::slice::from_raw_parts(z, 48).iter().all(|&x| x == 0));
            a.dealloc(z, layout(48));
            let big = a.alloc_zeroed(layout(4096));
            assert!(
                std::slice::from_raw_parts(big, 4096)
                    .iter()
                    .all(|&x| x == 0)
            );
            a.dealloc(big, layout(4096));
        }
    }
}
