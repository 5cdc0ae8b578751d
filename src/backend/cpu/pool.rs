//! Recycled host buffers. Inference makes the same tensors every step (a decode step of a Llama
//! some hundred, each of a size the last step also made), and each used to cost a fresh heap
//! allocation for its data. When the last handle on a CPU storage drops, its buffer comes here
//! ([`give`]) instead of going back to the allocator, and the next buffer of exactly that element
//! type and capacity that [`super::alloc`] is asked for is taken from here ([`take`]).
//!
//! Bounded: at most [`MAX_BUFFERS`] buffers of at most [`MAX_BUFFER_BYTES`] each and
//! [`MAX_POOLED_BYTES`] in all; to make room the oldest buffer is freed, so sizes that stop being
//! used (a prompt's) age out. Numerics cannot change: a taken buffer has length 0 and its op
//! writes every element it uses before reading it, exactly as with a fresh one. Thread-safe (one
//! mutex, held for a scan of at most [`MAX_BUFFERS`] entries; ops take and give on the thread
//! that runs them, not in their parallel loops).

use super::{with_cpu_storage, CpuStorage};
use crate::tensor::dtype::WithDType;
use std::any::Any;
use std::sync::{Mutex, MutexGuard};

/// The most buffers the pool holds (a decode step frees fewer between two takes of one size).
pub const MAX_BUFFERS: usize = 64;
/// The largest buffer kept: larger ones (weights, a long prompt's activations) are freed.
pub const MAX_BUFFER_BYTES: usize = 4 << 20;
/// The most bytes the pool holds in all.
pub const MAX_POOLED_BYTES: usize = 32 << 20;

/// Free buffers, oldest first, and their bytes.
struct Pool {
    free: Vec<CpuStorage>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: Vec::new(),
    bytes: 0,
});

fn pool() -> MutexGuard<'static, Pool> {
    // a panic while holding the lock leaves the list consistent (every update is one push or remove)
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The bytes a storage's buffer occupies (its capacity, not its length).
fn capacity_bytes(s: &CpuStorage) -> usize {
    with_cpu_storage!(s, v => v.capacity()) * s.dtype().size_in_bytes()
}

/// An empty vector with capacity exactly `n` from the pool, if it holds one of element type `T`.
pub(crate) fn take<T: 'static>(n: usize) -> Option<Vec<T>> {
    let mut pool = pool();
    let fits = |s: &CpuStorage| with_cpu_storage!(s, v => v.capacity() == n && (v as &dyn Any).is::<Vec<T>>());
    let i = pool.free.iter().rposition(fits)?;
    let mut storage = pool.free.remove(i);
    pool.bytes -= capacity_bytes(&storage);
    with_cpu_storage!(&mut storage, v => (v as &mut dyn Any).downcast_mut::<Vec<T>>().map(std::mem::take))
}

/// Takes `storage`'s buffer into the pool (leaving `storage` empty), unless it is empty or larger
/// than [`MAX_BUFFER_BYTES`].
pub(crate) fn give(storage: &mut CpuStorage) {
    let bytes = capacity_bytes(storage);
    if bytes == 0 || bytes > MAX_BUFFER_BYTES {
        return;
    }
    let mut buffer = std::mem::replace(storage, CpuStorage::F32(Vec::new()));
    with_cpu_storage!(&mut buffer, v => v.clear());
    let mut pool = pool();
    if pool.free.capacity() == 0 {
        pool.free.reserve_exact(MAX_BUFFERS); // once: the list itself never reallocates
    }
    while pool.free.len() == MAX_BUFFERS || pool.bytes + bytes > MAX_POOLED_BYTES {
        let oldest = pool.free.remove(0);
        pool.bytes -= capacity_bytes(&oldest);
    }
    pool.bytes += bytes;
    pool.free.push(buffer);
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
    fn a_buffer_over_the_limit_is_not_kept() {
        let n = MAX_BUFFER_BYTES / 4 + 1;
        let mut s = CpuStorage::F32(Vec::with_capacity(n));
        give(&mut s);
        assert!(take::<f32>(n).is_none());
    }
}
