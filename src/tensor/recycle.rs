//! Recycled tensor handles. A tensor costs two small heap allocations besides its data: the
//! handle (`Arc<TensorInner>`: id, layout, dtype, device, place in the graph) and its storage's
//! lock (`Arc<RwLock<Storage>>`, which views share). A decode step of a Llama makes a few dozen
//! tensors per layer and drops them all before the next step; the CPU backend's pool
//! (src/backend/cpu/pool.rs) recycles their data buffers, and this file recycles the two handles,
//! so that a decode step allocates nothing at all (tests/decode_allocations.rs).
//!
//! How, with std's `Arc`: a tensor holds its handle in a `ManuallyDrop`, and when the tensor drops
//! (`Drop for Tensor`) and it was the handle's last owner, the `Arc` is kept instead of freed:
//! [`give_tensor`] empties it (the storage lock swapped for a shared empty one, the graph node
//! dropped, so the data goes back to its pool at once) and puts it on this thread's free list. The
//! next tensor made on this thread takes it ([`tensor`]) and writes its fields into it:
//! `Arc::get_mut` succeeds, the free list holding the only reference. A storage lock that no
//! tensor holds any more is recycled the same way ([`storage`]), its storage emptied.
//!
//! Nothing observable changes: a recycled handle gets a fresh id and every field anew, and a
//! handle still shared (a clone, a view's storage) is never recycled. Bounded: at most
//! [`MAX_FREE`] of each per thread, beyond which a handle is freed as before; a thread's lists are
//! freed when it exits. Ops make and drop their tensors on the calling thread, not in their
//! parallel loops, so one thread's lists serve a whole decode step.

use super::{Tensor, TensorInner};
use crate::autograd::GradState;
use crate::backend::{CpuStorage, Storage};
use std::cell::RefCell;
use std::mem::ManuallyDrop;
use std::sync::{Arc, LazyLock, RwLock};

/// A storage behind its lock, shared by a tensor and its views.
type StorageLock = Arc<RwLock<Storage>>;

/// The most handles of each kind a thread keeps (a decode step has a few freed at a time; a
/// backward may drop thousands at once, and frees the rest).
const MAX_FREE: usize = 512;

/// This thread's emptied handles, ready for reuse.
struct Free {
    tensors: Vec<Arc<TensorInner>>,
    storages: Vec<StorageLock>,
}

thread_local! {
    static FREE: RefCell<Free> = const {
        RefCell::new(Free {
            tensors: Vec::new(),
            storages: Vec::new(),
        })
    };
}

impl Tensor {
    /// A tensor of these fields, in a recycled handle where this thread has one.
    pub(super) fn new(inner: TensorInner) -> Tensor {
        Tensor(ManuallyDrop::new(tensor(inner)))
    }

    /// `storage` behind a lock, a recycled one where this thread has one.
    pub(super) fn storage_lock(data: Storage) -> Arc<RwLock<Storage>> {
        storage(data)
    }
}

impl Drop for Tensor {
    /// The handle's last owner keeps it (and its storage lock, if no view holds that) for the next
    /// tensor made on this thread instead of freeing it.
    fn drop(&mut self) {
        // SAFETY: `self.0` is taken once, here, and the tensor is never used again.
        let handle = unsafe { ManuallyDrop::take(&mut self.0) };
        give_tensor(handle);
    }
}

/// An empty storage: what an emptied storage lock holds.
fn empty() -> Storage {
    Storage::Cpu(CpuStorage::F32(Vec::new()))
}

/// The storage lock an emptied tensor handle points to, one for all of them.
fn empty_lock() -> StorageLock {
    static EMPTY: LazyLock<StorageLock> = LazyLock::new(|| Arc::new(RwLock::new(empty())));
    EMPTY.clone()
}

/// A handle holding `inner`: one from this thread's free list, or a new allocation.
fn tensor(inner: TensorInner) -> Arc<TensorInner> {
    match pop(|f| &mut f.tensors) {
        Some(mut handle) => match Arc::get_mut(&mut handle) {
            Some(slot) => {
                *slot = inner; // drops the emptied fields: the shared empty lock's count
                handle
            }
            None => Arc::new(inner), // not reached: the free list held the only reference
        },
        None => Arc::new(inner),
    }
}

/// A lock holding `storage`: one from this thread's free list, or a new allocation.
fn storage(storage: Storage) -> StorageLock {
    match pop(|f| &mut f.storages) {
        Some(mut lock) => match Arc::get_mut(&mut lock) {
            Some(slot) => {
                *slot.get_mut().unwrap_or_else(|e| e.into_inner()) = storage;
                lock
            }
            None => Arc::new(RwLock::new(storage)),
        },
        None => Arc::new(RwLock::new(storage)),
    }
}

/// Takes the handle of a tensor being dropped: if no one else holds it, it is emptied and kept for
/// the next tensor, and its storage lock too if no view holds that; otherwise only its count drops.
fn give_tensor(mut handle: Arc<TensorInner>) {
    let Some(inner) = Arc::get_mut(&mut handle) else {
        return; // other clones remain: dropping `handle` decrements the count
    };
    let lock = std::mem::replace(&mut inner.storage, empty_lock());
    let grad = std::mem::replace(&mut inner.grad, GradState::None);
    push(|f| &mut f.tensors, handle);
    give_storage(lock);
    // last, outside the free list's borrow: a graph node drops its inputs, recycled in turn
    drop(grad);
}

/// Keeps a storage lock that no tensor holds any more, emptied (its buffer goes back to its pool).
fn give_storage(mut lock: StorageLock) {
    let Some(slot) = Arc::get_mut(&mut lock) else {
        return; // a view still holds it
    };
    if slot.is_poisoned() {
        return; // a panic while writing it: freed, not reused
    }
    let data = std::mem::replace(slot.get_mut().unwrap_or_else(|e| e.into_inner()), empty());
    push(|f| &mut f.storages, lock);
    drop(data);
}

/// The last entry of one of this thread's free lists (None when it is empty, or while the thread
/// is exiting).
fn pop<T>(list: impl FnOnce(&mut Free) -> &mut Vec<T>) -> Option<T> {
    FREE.try_with(|f| f.try_borrow_mut().ok().and_then(|mut f| list(&mut f).pop()))
        .ok()
        .flatten()
}

/// Puts `item` on one of this thread's free lists, or drops it when the list is full (or the
/// thread is exiting).
fn push<T>(list: impl FnOnce(&mut Free) -> &mut Vec<T>, item: T) {
    let mut item = Some(item);
    let _ = FREE.try_with(|f| {
        if let Ok(mut f) = f.try_borrow_mut() {
            let list = list(&mut f);
            if list.len() < MAX_FREE {
                if list.capacity() == 0 {
                    list.reserve_exact(MAX_FREE); // once: the list never grows after
                }
                list.extend(item.take());
            }
        }
    });
    drop(item); // a rejected item is freed here, outside the borrow
}

#[cfg(test)]
mod tests {
    use crate::{DType, Device, Tensor};

    #[test]
    fn a_dropped_tensor_handle_is_reused_with_a_fresh_id_and_its_own_data() {
        let a = Tensor::from_vec(vec![1f32, 2., 3.], &[3], &Device::Cpu).unwrap();
        let id = a.id();
        let ptr = std::sync::Arc::as_ptr(&*a.0);
        drop(a);
        let b = Tensor::from_vec(vec![7u32, 8], &[2], &Device::Cpu).unwrap();
        assert_eq!(std::sync::Arc::as_ptr(&*b.0), ptr, "the freed handle is taken again");
        assert_ne!(b.id(), id);
        assert_eq!((b.shape(), b.dtype()), (&[2][..], DType::U32));
        assert_eq!(b.to_vec::<u32>().unwrap(), [7, 8]);
    }

    #[test]
    fn a_shared_handle_or_storage_is_never_recycled() {
        let a = Tensor::from_vec(vec![1f32, 2., 3., 4.], &[2, 2], &Device::Cpu).unwrap();
        let clone = a.clone();
        let view = a.transpose(0, 1).unwrap();
        drop(a); // the clone still holds the handle, the view the storage
        let fresh = Tensor::zeros(&[2, 2], DType::F32, &Device::Cpu).unwrap();
        assert!(!fresh.same_storage(&clone));
        assert_eq!(clone.to_vec::<f32>().unwrap(), [1., 2., 3., 4.]);
        assert_eq!(view.to_vec::<f32>().unwrap(), [1., 3., 2., 4.]);
        drop(clone); // now only the view holds the storage
        let other = Tensor::full(9.0, &[2, 2], DType::F32, &Device::Cpu).unwrap();
        assert!(!other.same_storage(&view));
        assert_eq!(view.to_vec::<f32>().unwrap(), [1., 3., 2., 4.]);
    }

    #[test]
    fn gradients_flow_through_recycled_handles() {
        // a forward and backward twice: the second runs on the first's recycled handles
        for _ in 0..2 {
            let x = Tensor::from_vec(vec![0.5f32, -1.0, 2.0], &[3], &Device::Cpu)
                .unwrap()
                .requires_grad();
            let y = x.mul(&x).unwrap().sum_all().unwrap();
            let g = y.backward().unwrap();
            assert_eq!(g.get(&x).unwrap().to_vec::<f32>().unwrap(), [1.0, -2.0, 4.0]);
        }
    }
}
