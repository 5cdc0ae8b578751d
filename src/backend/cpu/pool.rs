//! Recycled host buffers. Inference makes the same tensors every step (a decode step of a Llama
//! some hundred, each of a size the last step also made), and each used to cost a fresh heap
//! allocation for its data. When the last handle on a CPU storage drops, its buffer comes here
//! ([`give`]) instead of going back to the allocator, and the next buffer of exactly that element
//! type and capacity that [`super::alloc`] is asked for is taken from here ([`take`]).
//!
//! Bounded: at most [`MAX_BUFFERS`] buffers of at most [`MAX_BUFFER_BYTES`] each and
//! [`MAX_POOLED_BYTES`] in all; to make room the oldest buffer is freed, so sizes that stop being
//! used (a prompt's) age out. Buffers of at least [`LARGE_BUFFER_BYTES`] are kept only once
//! [`retain_large`] has been called (by [`super::retain_freed_memory`], which training and
//! sampling call), in a list of their own (at most [`MAX_LARGE_BUFFERS`],
//! [`MAX_LARGE_POOLED_BYTES`] in all) so that the hundreds of small buffers a training step frees
//! do not push them out: from glibc's largest mmap threshold (32 MiB) the allocator unmaps a freed
//! block at once, whatever `retain_freed_memory` asked of it, and a step that allocates it again (GPT-2's logits and
//! their gradient, 103 MB each at batch 2 × 256; its token table's gradient, 154 MB) faults in and
//! zeroes every page anew, inside the GEMM that writes it. Numerics cannot change: a taken buffer has length 0 and its op
//! writes every element it uses before reading it, exactly as with a fresh one. Thread-safe (one
//! mutex, held for a scan of at most [`MAX_BUFFERS`] entries; ops take and give on the thread
//! that runs them, not in their parallel loops).

use super::{with_cpu_storage, CpuStorage};
use crate::tensor::dtype::WithDType;
use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The most buffers the pool holds (a decode step frees fewer between two takes of one size).
pub const MAX_BUFFERS: usize = 64;
/// The largest buffer kept: larger ones (weights, a long prompt's activations) are freed.
pub const MAX_BUFFER_BYTES: usize = 4 << 20;
/// The most bytes the pool holds in all.
pub const MAX_POOLED_BYTES: usize = 32 << 20;
/// The smallest buffer the pool keeps once [`retain_large`] is called: glibc serves every smaller
/// one from its heap, which [`super::retain_freed_memory`] keeps, and maps every larger one anew.
pub const LARGE_BUFFER_BYTES: usize = 32 << 20;
/// The most buffers of [`LARGE_BUFFER_BYTES`] or more the pool holds.
pub const MAX_LARGE_BUFFERS: usize = 8;
/// The most bytes those hold in all (a buffer larger than this alone is freed).
pub const MAX_LARGE_POOLED_BYTES: usize = 2 << 30;

/// Free buffers, oldest first, and their bytes.
struct List {
    free: Vec<CpuStorage>,
    bytes: usize,
}

impl List {
    const fn new() -> List {
        List {
            free: Vec::new(),
            bytes: 0,
        }
    }
}

/// The small buffers' list and the large ones'.
struct Pool {
    small: List,
    large: List,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    small: List::new(),
    large: List::new(),
});

/// Whether buffers of [`LARGE_BUFFER_BYTES`] or more are kept.
static RETAIN_LARGE: AtomicBool = AtomicBool::new(false);

fn pool() -> MutexGuard<'static, Pool> {
    // a panic while holding the lock leaves the lists consistent (every update is one push or remove)
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// From now on, buffers of [`LARGE_BUFFER_BYTES`] or more are kept too (their own list and bounds).
pub(crate) fn retain_large() {
    RETAIN_LARGE.store(true, Ordering::Relaxed);
}

/// The bytes a storage's buffer occupies (its capacity, not its length).
fn capacity_bytes(s: &CpuStorage) -> usize {
    with_cpu_storage!(s, v => v.capacity()) * s.dtype().size_in_bytes()
}

/// An empty vector with capacity exactly `n` from the pool, if it holds one of element type `T`.
pub(crate) fn take<T: 'static>(n: usize) -> Option<Vec<T>> {
    let bytes = n.saturating_mul(std::mem::size_of::<T>());
    let large = bytes >= LARGE_BUFFER_BYTES;
    if (large && !RETAIN_LARGE.load(Ordering::Relaxed)) || (!large && bytes > MAX_BUFFER_BYTES) {
        return None;
    }
    let mut pool = pool();
    let list = if large { &mut pool.large } else { &mut pool.small };
    let fits = |s: &CpuStorage| with_cpu_storage!(s, v => v.capacity() == n && (v as &dyn Any).is::<Vec<T>>());
    let i = list.free.iter().rposition(fits)?;
    let mut storage = list.free.remove(i);
    list.bytes -= capacity_bytes(&storage);
    with_cpu_storage!(&mut storage, v => (v as &mut dyn Any).downcast_mut::<Vec<T>>().map(std::mem::take))
}

/// Takes `storage`'s buffer into the pool (leaving `storage` empty), unless it is empty, between
/// [`MAX_BUFFER_BYTES`] and [`LARGE_BUFFER_BYTES`], large before [`retain_large`], or larger than
/// [`MAX_LARGE_POOLED_BYTES`].
pub(crate) fn give(storage: &mut CpuStorage) {
    let bytes = capacity_bytes(storage);
    let large = bytes >= LARGE_BUFFER_BYTES;
    let (max_buffers, max_bytes) = if large {
        (MAX_LARGE_BUFFERS, MAX_LARGE_POOLED_BYTES)
    } else {
        (MAX_BUFFERS, MAX_POOLED_BYTES)
    };
    let kept = if large {
        bytes <= max_bytes && RETAIN_LARGE.load(Ordering::Relaxed)
    } else {
        0 < bytes && bytes <= MAX_BUFFER_BYTES
    };
    if !kept {
        return;
    }
    let mut buffer = std::mem::replace(storage, CpuStorage::F32(Vec::new()));
    with_cpu_storage!(&mut buffer, v => v.clear());
    let mut pool = pool();
    let list = if large { &mut pool.large } else { &mut pool.small };
    if list.free.capacity() == 0 {
        list.free.reserve_exact(max_buffers); // once: the list itself never reallocates
    }
    while list.free.len() == max_buffers || list.bytes + bytes > max_bytes {
        let oldest = list.free.remove(0);
        list.bytes -= capacity_bytes(&oldest);
    }
    list.bytes += bytes;
    list.free.push(buffer);
}

/// Takes a kernel's temporary vector into the pool (see [`give`]). Only a `Storage` gives its
/// buffer back by itself when dropped; a buffer that a kernel took from the pool for a temporary
/// (a widened copy, a product before its rounding) and then dropped would go to the allocator,
/// and the next call would miss it here.
pub(crate) fn give_vec<T: WithDType>(v: Vec<T>) {
    give(&mut CpuStorage::from_vec(v));
}

/// A kernel's temporary storage, given to the pool when dropped (see [`give_vec`]).
pub(crate) struct Scratch(pub(crate) CpuStorage);

impl Drop for Scratch {
    fn drop(&mut self) {
        give(&mut self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_is_taken_back_by_type_and_capacity_only() {
        let mut s = CpuStorage::F32(Vec::with_capacity(98_765));
        let ptr = super::super::typed::<f32>(&s).as_ptr();
        give(&mut s);
        assert_eq!(s.len(), 0);
        assert!(take::<u32>(98_765).is_none(), "another element type");
        assert!(take::<f32>(98_764).is_none(), "another capacity");
        let v = take::<f32>(98_765).expect("pooled");
        assert_eq!((v.len(), v.capacity(), v.as_ptr()), (0, 98_765, ptr));
    }

    #[test]
    fn a_large_buffer_is_kept_only_once_retained_and_small_ones_do_not_push_it_out() {
        // a size no other test of the process gives (the pool is global; tests run in parallel)
        let n = LARGE_BUFFER_BYTES / 4 + 12_345; // reserved, never touched
        let mut s = CpuStorage::F32(Vec::with_capacity(n));
        if !RETAIN_LARGE.load(Ordering::Relaxed) {
            give(&mut s);
            assert!(take::<f32>(n).is_none(), "kept before retain_large");
            s = CpuStorage::F32(Vec::with_capacity(n));
        }
        retain_large();
        let ptr = super::super::typed::<f32>(&s).as_ptr();
        give(&mut s);
        for i in 0..2 * MAX_BUFFERS {
            give(&mut CpuStorage::F32(Vec::with_capacity(1000 + i)));
        }
        let v = take::<f32>(n).expect("kept after retain_large, past a list's worth of small buffers");
        assert_eq!((v.capacity(), v.as_ptr()), (n, ptr));
        let medium = MAX_BUFFER_BYTES / 4 + 1; // glibc's heap keeps these
        give(&mut CpuStorage::F32(Vec::with_capacity(medium)));
        assert!(take::<f32>(medium).is_none(), "between the two lists' sizes");
        let too_large = MAX_LARGE_POOLED_BYTES / 4 + 1; // reserved, never touched
        give(&mut CpuStorage::F32(Vec::with_capacity(too_large)));
        assert!(take::<f32>(too_large).is_none(), "larger than the large list's bound");
    }
}
