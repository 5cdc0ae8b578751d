//! The [`Tensor`]: a shared storage seen through a [`Layout`], plus its place in the
//! autograd graph. Cloning a tensor is cheap (one `Arc`); views share the storage. A dropped
//! tensor's handles are kept for the next tensor made on the thread (recycle.rs).

pub mod device;
pub mod dtype;
pub mod layout;
pub mod rng;

mod create;
mod display;
mod recycle;

use crate::autograd::{BackwardFn, GradState, Node};
use crate::backend::Storage;
use crate::{Error, Result};
use device::Device;
use dtype::{DType, WithDType};
use layout::Layout;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// An n-dimensional array with optional gradient tracking.
#[derive(Clone)]
pub struct Tensor(ManuallyDrop<Arc<TensorInner>>);

struct TensorInner {
    id: usize,
    storage: Arc<RwLock<Storage>>,
    layout: Layout,
    dtype: DType,
    device: Device,
    grad: GradState,
}

fn next_id() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Tensor {
    /// Wraps freshly computed data (a constant; ops attach their node with [`Tensor::record`]).
    pub(crate) fn from_storage(storage: Storage, layout: Layout, device: Device) -> Tensor {
        if device == Device::Cpu {
            crate::backend::cpu::keep_workers_awake();
        }
        Tensor::new(TensorInner {
            id: next_id(),
            dtype: storage.dtype(),
            storage: Tensor::storage_lock(storage),
            layout,
            device,
            grad: GradState::None,
        })
    }

    /// Wraps fresh contiguous data of `shape` on the storage's own device.
    pub(crate) fn from_parts(storage: Storage, shape: &[usize]) -> Tensor {
        let device = storage.device();
        Tensor::from_storage(storage, Layout::contiguous(shape), device)
    }

    /// Another view of the same storage (not recorded; view ops record their own node).
    pub(crate) fn with_layout(&self, layout: Layout) -> Tensor {
        Tensor::new(TensorInner {
            id: next_id(),
            storage: self.0.storage.clone(),
            layout,
            dtype: self.0.dtype,
            device: self.0.device,
            grad: GradState::None,
        })
    }

    /// Whether an op on `inputs` records a node now: grad mode is on and some input needs a
    /// gradient (an op that would save something for its backward checks this first).
    pub(crate) fn records(inputs: &[&Tensor]) -> bool {
        crate::autograd::is_grad_enabled() && inputs.iter().any(|t| t.tracks_grad())
    }

    /// Attaches the autograd node of op `op` to its freshly computed output `self`, if grad
    /// mode is on and some input needs a gradient; otherwise returns `self` unchanged.
    pub(crate) fn record(
        self,
        op: &'static str,
        inputs: &[&Tensor],
        backward: impl FnOnce(&Tensor, &[Tensor], &Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
    ) -> Tensor {
        if !Tensor::records(inputs) {
            return self;
        }
        let backward: BackwardFn = Box::new(backward);
        let node = Node {
            op,
            inputs: inputs.iter().map(|&t| t.clone()).collect(),
            backward,
        };
        Tensor::new(TensorInner {
            id: self.0.id,
            storage: self.0.storage.clone(),
            layout: self.0.layout.clone(),
            dtype: self.0.dtype,
            device: self.0.device,
            grad: GradState::Op(std::sync::Mutex::new(Some(node))),
        })
    }

    /// A unique id, the key of [`crate::Gradients`].
    pub fn id(&self) -> usize {
        self.0.id
    }

    /// The size of each dimension (`[]` for a scalar).
    pub fn shape(&self) -> &[usize] {
        self.0.layout.shape()
    }

    /// The number of dimensions (the rank).
    pub fn dims(&self) -> usize {
        self.0.layout.rank()
    }

    /// The size of dimension `dim` (negative counts from the end).
    pub fn dim(&self, dim: isize) -> Result<usize> {
        Ok(self.shape()[layout::resolve_dim("dim", dim, self.shape())?])
    }

    /// The number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.0.layout.numel()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }

    /// Where the data lives.
    pub fn device(&self) -> &Device {
        &self.0.device
    }

    /// The shape, strides and offset of this view into its storage.
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }

    /// Whether the elements are in row-major order without gaps (views from transpose,
    /// narrow or broadcast_to may not be; [`Tensor::contiguous`] makes them so).
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }

    pub(crate) fn storage(&self) -> RwLockReadGuard<'_, Storage> {
        // A poisoned lock means a panic happened mid-write elsewhere; the data is still the
        // best we have, and panicking again here would hide the first panic.
        self.0.storage.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The storage, for writing in place (the optimizer's fused step).
    pub(crate) fn storage_mut(&self) -> RwLockWriteGuard<'_, Storage> {
        self.0.storage.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether two tensors share one storage (views of each other).
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    /// Whether anything but this handle can see this tensor's storage: a clone of the handle or
    /// another view. An in-place write into an unshared storage is seen by no one else.
    pub(crate) fn storage_is_shared(&self) -> bool {
        Arc::strong_count(&self.0) > 1 || Arc::strong_count(&self.0.storage) > 1
    }

    /// Marks a leaf as needing a gradient: `backward()` will return its gradient. Integer
    /// tensors cannot have gradients and are returned unchanged.
    pub fn requires_grad(self) -> Tensor {
        if !self.dtype().is_float() {
            return self;
        }
        Tensor::new(TensorInner {
            id: next_id(),
            storage: self.0.storage.clone(),
            layout: self.0.layout.clone(),
            dtype: self.0.dtype,
            device: self.0.device,
            grad: GradState::Leaf,
        })
    }

    /// Whether gradients flow through this tensor (a requires-grad leaf or an op output
    /// depending on one).
    pub fn tracks_grad(&self) -> bool {
        !matches!(self.0.grad, GradState::None)
    }

    /// Whether this is a leaf created with [`Tensor::requires_grad`].
    pub fn is_leaf_requiring_grad(&self) -> bool {
        matches!(self.0.grad, GradState::Leaf)
    }

    /// The same data cut off from the graph: no gradient flows through the result.
    pub fn detach(&self) -> Tensor {
        self.with_layout(self.0.layout.clone())
    }

    pub(crate) fn node_inputs(&self) -> Vec<Tensor> {
        match &self.0.grad {
            GradState::Op(node) => node
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|n| n.inputs.clone())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Takes this tensor's node out of the graph (Ok(None) for a leaf).
    pub(crate) fn take_node(&self) -> Result<Option<Node>> {
        match &self.0.grad {
            GradState::Op(node) => node.lock().unwrap_or_else(|e| e.into_inner()).take().map(Some).ok_or_else(|| {
                Error::Autograd(
                    "the graph through this tensor was already freed by an earlier backward(); run the forward pass again".into(),
                )
            }),
            _ => Ok(None),
        }
    }

    /// Gradients of this scalar with respect to every leaf that requires one.
    pub fn backward(&self) -> Result<crate::Gradients> {
        crate::autograd::backward(self, self.scalar_seed("backward")?)
    }

    /// [`Tensor::backward`], telling `observer` each leaf's gradient as soon as it is final (no
    /// node left to run adds to it), in the order the gradients complete, and the end of every
    /// node: how data-parallel training starts all-reducing finished gradients while the rest of
    /// the backward runs. Returns the gradients `backward()` returns, bit for bit. A closure
    /// `&mut |leaf, grad| ...` is an observer (docs/autograd.md).
    pub fn backward_observed(&self, observer: &mut dyn crate::autograd::BackwardObserver) -> Result<crate::Gradients> {
        crate::autograd::backward_observed(self, self.scalar_seed("backward_observed")?, observer)
    }

    /// The gradient 1 of a scalar loss with respect to itself (`op` names the caller).
    fn scalar_seed(&self, op: &str) -> Result<Tensor> {
        if self.numel() != 1 {
            return Err(Error::Autograd(format!(
                "{op}() needs a scalar (one element), got shape {:?}; reduce it first (sum_all, mean_all) or use backward_with",
                self.shape()
            )));
        }
        Tensor::ones(self.shape(), self.dtype(), self.device())
    }

    /// Backpropagates a given gradient of some scalar with respect to `self`.
    pub fn backward_with(&self, grad: &Tensor) -> Result<crate::Gradients> {
        if grad.shape() != self.shape() || grad.dtype() != self.dtype() {
            return Err(Error::shape(
                "backward_with",
                format!(
                    "gradient {:?} {} does not match the tensor {:?} {}",
                    grad.shape(),
                    grad.dtype(),
                    self.shape(),
                    self.dtype()
                ),
            ));
        }
        crate::autograd::backward(self, grad.detach())
    }

    /// A fresh contiguous copy sharing no storage with `self` (differentiable).
    pub fn copy(&self) -> Result<Tensor> {
        let out = Tensor::from_parts(self.storage().contiguous(self.layout())?, self.shape());
        Ok(out.record("copy", &[self], |g, _, _| Ok(vec![Some(g.clone())])))
    }

    /// Overwrites the elements of `self` with those of `src` (same shape, dtype and device).
    /// Not recorded by autograd: this is for optimizer updates and buffers. Every view of
    /// `self`'s storage sees the new values.
    pub fn assign(&self, src: &Tensor) -> Result<()> {
        self.assign_region(self.layout(), src)
    }

    /// Writes `src` into the elements of `self`'s storage that `region` views.
    pub(crate) fn assign_region(&self, region: &Layout, src: &Tensor) -> Result<()> {
        if region.shape() != src.shape() || self.dtype() != src.dtype() {
            return Err(Error::shape(
                "assign",
                format!(
                    "destination {:?} {} and source {:?} {} differ in shape or dtype",
                    region.shape(),
                    self.dtype(),
                    src.shape(),
                    src.dtype()
                ),
            ));
        }
        self.same_device(src, "assign")?;
        if region.may_overlap() {
            // Several elements share one position: which write survives would be arbitrary.
            return Err(Error::invalid(
                "assign",
                format!(
                    "the destination {:?} with strides {:?} is a view whose elements overlap (a broadcast); \
                     assign into a tensor that owns its elements (contiguous() makes one)",
                    region.shape(),
                    region.strides()
                ),
            ));
        }
        // Reading `src` while holding the write lock on a shared storage would deadlock.
        let src = if self.same_storage(src) {
            src.detach().copy()?
        } else {
            src.clone()
        };
        let src_storage = src.storage();
        let mut dst = self.0.storage.write().unwrap_or_else(|e| e.into_inner());
        dst.assign(region, &src_storage, src.layout())
    }

    /// Checks that `self` and `other` are on one device (for binary ops).
    pub(crate) fn same_device(&self, other: &Tensor, op: &'static str) -> Result<()> {
        if self.device() != other.device() {
            return Err(Error::DeviceMismatch {
                op,
                lhs: *self.device(),
                rhs: *other.device(),
            });
        }
        Ok(())
    }

    /// The elements in row-major order, converted to `T` if the dtype differs (floats to u32
    /// truncate toward zero and saturate).
    pub fn to_vec<T: WithDType>(&self) -> Result<Vec<T>> {
        let t = if self.dtype() == T::DTYPE {
            self.clone()
        } else {
            self.to_dtype(T::DTYPE)?
        };
        let host = t.storage().to_host(t.layout())?;
        Ok(crate::backend::cpu::typed::<T>(&host).to_vec())
    }

    /// The single value of a one-element tensor.
    pub fn to_scalar<T: WithDType>(&self) -> Result<T> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "to_scalar",
                format!("expected a tensor with one element, got shape {:?}", self.shape()),
            ));
        }
        Ok(self.to_vec::<T>()?[0])
    }

    /// The single value of a one-element tensor of any shape (`[]`, `[1]`, `[1, 1]`, …) as f64,
    /// which holds every f32, bf16, f16 and u32 exactly (PyTorch's `item()`); for another type,
    /// [`Tensor::to_scalar`].
    pub fn item(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "item",
                format!("expected a tensor with one element, got shape {:?}", self.shape()),
            ));
        }
        Ok(self.to_vec::<f64>()?[0])
    }

    /// A copy with another element type (differentiable between float types).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let out = Tensor::from_parts(self.storage().cast(self.layout(), dtype)?, self.shape());
        if !dtype.is_float() {
            return Ok(out); // no gradient flows through integers
        }
        let from = self.dtype();
        Ok(out.record("to_dtype", &[self], move |g, _, _| Ok(vec![Some(g.to_dtype(from)?)])))
    }

    /// A copy on another device (differentiable).
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        let host = self.storage().to_host(self.layout())?;
        let out = Tensor::from_parts(Storage::from_host(host, device)?, self.shape());
        let from = *self.device();
        Ok(out.record("to_device", &[self], move |g, _, _| Ok(vec![Some(g.to_device(&from)?)])))
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {}, {}", self.shape(), self.dtype(), self.device())?;
        const SHOWN: usize = 8;
        if let Ok(v) = self.narrow_flat(SHOWN).and_then(|t| t.to_vec::<f64>()) {
            write!(f, ", {v:?}")?;
            if self.numel() > SHOWN {
                write!(f, "…")?;
            }
        }
        write!(f, ")")
    }
}

impl Tensor {
    /// Up to the first `n` elements, flattened (for display).
    fn narrow_flat(&self, n: usize) -> Result<Tensor> {
        let _g = crate::no_grad();
        let flat = self.contiguous()?.reshape(&[self.numel()])?;
        flat.narrow(0, 0, n.min(self.numel()))
    }
}
