//! Backends behind one small interface. [`Storage`] is an enum over devices; each primitive
//! below forwards to the backend that holds the data. Ops in `src/ops` call these and never
//! match on devices themselves, so a new backend is added here and in its own folder only.

pub mod cpu;
pub mod cuda;

use crate::backend::cpu::attention::AttentionDims;
use crate::backend::cpu::norm::RowStats;
use crate::backend::cpu::reduce::ReduceOp;
use crate::ops::binary::BinaryOp;
use crate::ops::unary::UnaryOp;
use crate::tensor::dtype::DType;
use crate::tensor::layout::Layout;
use crate::tensor::storage::{CpuStorage, Storage};
use crate::{Device, Error, Result};
use cuda::{not_yet, CudaDevice, CudaStorage};

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(s) => s.device(),
        }
    }

    /// The number of elements held (which a view may use only part of).
    pub(crate) fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            Storage::Cuda(s) => s.len(),
        }
    }

    /// `n` copies of `value` rounded to `dtype`.
    pub(crate) fn filled(value: f64, n: usize, dtype: DType, device: &Device) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(cpu::filled(value, n, dtype))),
            cuda_device => Ok(Storage::Cuda(cuda::fill::filled(
                &CudaDevice::get(cuda_device)?,
                value,
                n,
                dtype,
            )?)),
        }
    }

    /// Moves host data to `device`.
    pub(crate) fn from_host(data: CpuStorage, device: &Device) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(data)),
            cuda_device => Ok(Storage::Cuda(CudaStorage::from_host(cuda_device, &data)?)),
        }
    }

    /// The viewed elements, contiguous, in host memory.
    pub(crate) fn to_host(&self, layout: &Layout) -> Result<CpuStorage> {
        match self {
            Storage::Cpu(s) => Ok(cpu::contiguous(s, layout)),
            Storage::Cuda(s) => s.to_host(layout),
        }
    }

    pub(crate) fn contiguous(&self, layout: &Layout) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::contiguous(s, layout))),
            Storage::Cuda(s) => Ok(Storage::Cuda(cuda::copy::contiguous(s, layout)?)),
        }
    }

    pub(crate) fn cast(&self, layout: &Layout, dtype: DType) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::cast(s, layout, dtype))),
            Storage::Cuda(s) => Ok(Storage::Cuda(cuda::cast::cast(s, layout, dtype)?)),
        }
    }

    /// Writes `src` viewed through `ls` into the elements of `self` that `ld` views.
    pub(crate) fn assign(&mut self, ld: &Layout, src: &Storage, ls: &Layout) -> Result<()> {
        match (self, src) {
            (Storage::Cpu(d), Storage::Cpu(s)) => {
                cpu::assign(d, ld, s, ls);
                Ok(())
            }
            (Storage::Cuda(d), Storage::Cuda(s)) => cuda::copy::assign(d, ld, s, ls),
            (d, s) => Err(mismatch("assign", d, s)),
        }
    }

    pub(crate) fn unary(&self, layout: &Layout, op: UnaryOp) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::elementwise::unary(op, s, layout)?)),
            Storage::Cuda(s) => Ok(Storage::Cuda(cuda::unary::unary(op, s, layout)?)),
        }
    }

    /// Both layouts already have the broadcast output shape.
    pub(crate) fn binary(&self, la: &Layout, rhs: &Storage, lb: &Layout, op: BinaryOp) -> Result<Storage> {
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => Ok(Storage::Cpu(cpu::elementwise::binary(op, a, la, b, lb)?)),
            (Storage::Cuda(a), Storage::Cuda(b)) => Ok(Storage::Cuda(cuda::binary::binary(op, a, la, b, lb)?)),
            (a, b) => Err(mismatch(op.name(), a, b)),
        }
    }

    /// `self` is the U32 condition; all layouts have the output shape.
    pub(crate) fn where_cond(
        &self,
        lc: &Layout,
        on_true: &Storage,
        lt: &Layout,
        on_false: &Storage,
        lf: &Layout,
    ) -> Result<Storage> {
        match (self, on_true, on_false) {
            (Storage::Cpu(c), Storage::Cpu(t), Storage::Cpu(f)) => {
                let cond = cpu::typed::<u32>(c);
                Ok(Storage::Cpu(cpu::elementwise::where_cond(cond, lc, t, lt, f, lf)?))
            }
            (Storage::Cuda(c), Storage::Cuda(t), Storage::Cuda(f)) => {
                Ok(Storage::Cuda(cuda::where_cond::where_cond(c, lc, t, lt, f, lf)?))
            }
            (c, t, f) => Err(if c.device() != t.device() {
                mismatch("where_cond", c, t)
            } else {
                mismatch("where_cond", t, f)
            }),
        }
    }

    pub(crate) fn reduce(&self, layout: &Layout, op: ReduceOp, dims: &[usize]) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::reduce::reduce(op, s, layout, dims)?)),
            Storage::Cuda(s) => Ok(Storage::Cuda(cuda::reduce::reduce(op, s, layout, dims)?)),
        }
    }

    /// `[batch.., m, k] x [batch.., k, n]`, batch dims already broadcast.
    pub(crate) fn matmul(&self, la: &Layout, rhs: &Storage, lb: &Layout) -> Result<Storage> {
        self.matmul_fused(la, rhs, lb, &Epilogue::NONE)
    }

    /// `epi(self · rhs)`: as [`Storage::matmul`], with the epilogue applied to the f32 (f64) product
    /// before its one rounding to the dtype: in the kernel's store on Cuda/Emu (one launch), after
    /// the GEMM on the CPU.
    pub(crate) fn matmul_fused(&self, la: &Layout, rhs: &Storage, lb: &Layout, epi: &Epilogue<'_>) -> Result<Storage> {
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => {
                let epi = epi.on(self, |s| match s {
                    Storage::Cpu(c) => Some(c),
                    _ => None,
                })?;
                Ok(Storage::Cpu(cpu::matmul::matmul(a, la, b, lb, &epi)?))
            }
            (Storage::Cuda(a), Storage::Cuda(b)) => {
                let epi = epi.on(self, |s| match s {
                    Storage::Cuda(c) => Some(c),
                    _ => None,
                })?;
                Ok(Storage::Cuda(cuda::matmul::matmul(a, la, b, lb, &epi)?))
            }
            (a, b) => Err(mismatch("matmul", a, b)),
        }
    }

    /// Contiguous rows of `width`.
    pub(crate) fn softmax_last_dim(&self, width: usize, log: bool) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::softmax::softmax_last_dim(s, width, log)?)),
            Storage::Cuda(s) => Ok(Storage::Cuda(cuda::softmax::softmax_last_dim(s, width, log)?)),
        }
    }

    /// Contiguous `[rows, c]` input, weight and bias.
    pub(crate) fn layer_norm_forward(
        &self,
        w: &Storage,
        b: Option<&Storage>,
        c: usize,
        eps: f64,
    ) -> Result<(Storage, RowStats)> {
        match (self, w) {
            (Storage::Cpu(x), Storage::Cpu(w)) => {
                let b = match b {
                    None => None,
                    Some(Storage::Cpu(b)) => Some(b),
                    Some(other) => return Err(mismatch("layer_norm", self, other)),
                };
                let (y, stats) = cpu::norm::layer_norm_forward(x, w, b, c, eps)?;
                Ok((Storage::Cpu(y), stats))
            }
            (Storage::Cuda(x), Storage::Cuda(_)) => Err(not_yet("layer_norm", x.device())),
            (x, w) => Err(mismatch("layer_norm", x, w)),
        }
    }

    /// Returns (dx, dweight, dbias).
    pub(crate) fn layer_norm_backward(
        &self,
        w: &Storage,
        dy: &Storage,
        stats: &RowStats,
        c: usize,
    ) -> Result<(Storage, Storage, Storage)> {
        match (self, w, dy) {
            (Storage::Cpu(x), Storage::Cpu(w), Storage::Cpu(dy)) => {
                let (dx, dw, db) = cpu::norm::layer_norm_backward(x, w, dy, stats, c)?;
                Ok((Storage::Cpu(dx), Storage::Cpu(dw), Storage::Cpu(db)))
            }
            (Storage::Cuda(x), _, _) => Err(not_yet("layer_norm backward", x.device())),
            (x, w, _) => Err(mismatch("layer_norm backward", x, w)),
        }
    }

    /// Contiguous logits `[n, c]`; returns (Σ loss, per-row log-sum-exp).
    pub(crate) fn cross_entropy_forward(
        &self,
        targets: &[u32],
        c: usize,
        ignore: Option<u32>,
    ) -> Result<(f64, Vec<f64>)> {
        match self {
            Storage::Cpu(s) => cpu::loss::cross_entropy_forward(s, targets, c, ignore),
            Storage::Cuda(s) => Err(not_yet("cross_entropy", s.device())),
        }
    }

    pub(crate) fn cross_entropy_backward(
        &self,
        targets: &[u32],
        lse: &[f64],
        c: usize,
        ignore: Option<u32>,
        scale: f64,
    ) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::loss::cross_entropy_backward(
                s, targets, lse, c, ignore, scale,
            )?)),
            Storage::Cuda(s) => Err(not_yet("cross_entropy backward", s.device())),
        }
    }

    /// Contiguous q `[bh, tq, d]` (self), k and v `[bh, tk, d]`; returns the output
    /// `[bh, tq, d]` and the log-sum-exp of every query row `[bh, tq]` (f64 for f64, else f32).
    pub(crate) fn attention_forward(
        &self,
        k: &Storage,
        v: &Storage,
        dims: AttentionDims,
    ) -> Result<(Storage, Storage)> {
        match (self, k, v) {
            (Storage::Cpu(q), Storage::Cpu(k), Storage::Cpu(v)) => {
                let (o, lse) = cpu::attention::attention_forward(q, k, v, dims)?;
                Ok((Storage::Cpu(o), Storage::Cpu(lse)))
            }
            (Storage::Cuda(q), Storage::Cuda(k), Storage::Cuda(v)) => {
                let (o, lse) = cuda::attention::attention_forward(q, k, v, dims)?;
                Ok((Storage::Cuda(o), Storage::Cuda(lse)))
            }
            (q, k, v) => Err(mismatch_any(OP_ATTENTION, q, &[k, v])),
        }
    }

    /// The fused backward of attention: from q (self), k, v, the output `o`, its gradient
    /// `dout` and the forward's `lse`, returns (dq, dk, dv).
    pub(crate) fn attention_backward(
        &self,
        k: &Storage,
        v: &Storage,
        o: &Storage,
        dout: &Storage,
        lse: &Storage,
        dims: AttentionDims,
    ) -> Result<(Storage, Storage, Storage)> {
        match (self, k, v, o, dout, lse) {
            (Storage::Cpu(q), Storage::Cpu(k), Storage::Cpu(v), Storage::Cpu(o), Storage::Cpu(g), Storage::Cpu(l)) => {
                let (dq, dk, dv) = cpu::attention::attention_backward(q, k, v, o, g, l, dims)?;
                Ok((Storage::Cpu(dq), Storage::Cpu(dk), Storage::Cpu(dv)))
            }
            (
                Storage::Cuda(q),
                Storage::Cuda(k),
                Storage::Cuda(v),
                Storage::Cuda(o),
                Storage::Cuda(g),
                Storage::Cuda(l),
            ) => {
                let (dq, dk, dv) = cuda::attention::attention_backward(q, k, v, o, g, l, dims)?;
                Ok((Storage::Cuda(dq), Storage::Cuda(dk), Storage::Cuda(dv)))
            }
            (q, k, v, o, g, l) => Err(mismatch_any(OP_ATTENTION, q, &[k, v, o, g, l])),
        }
    }

    /// Contiguous `[outer, size, inner]` → `[outer, ids.len(), inner]`.
    pub(crate) fn index_select(&self, outer: usize, size: usize, inner: usize, ids: &[u32]) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::index::index_select(s, outer, size, inner, ids))),
            Storage::Cuda(s) => Err(not_yet("index_select", s.device())),
        }
    }

    /// The adjoint of `index_select`.
    pub(crate) fn index_add(&self, outer: usize, size: usize, inner: usize, ids: &[u32]) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::index::index_add(s, outer, size, inner, ids)?)),
            Storage::Cuda(s) => Err(not_yet("index_add", s.device())),
        }
    }
}

const OP_ATTENTION: &str = "scaled_dot_product_attention";

/// The mismatch between `first` and the first of `rest` on another device.
fn mismatch_any(op: &'static str, first: &Storage, rest: &[&Storage]) -> Error {
    let other = rest.iter().find(|s| s.device() != first.device()).unwrap_or(&first);
    mismatch(op, first, other)
}

/// What a fused matmul does to the product `y` before storing it: `gelu?(y + bias) + residual`.
pub struct Epilogue<'a, S = Storage> {
    /// `[n]`, added to every row.
    pub bias: Option<(&'a S, &'a Layout)>,
    /// GELU (tanh form) after the bias.
    pub gelu: bool,
    /// The output's shape `[batch.., m, n]`, added last.
    pub residual: Option<(&'a S, &'a Layout)>,
}

impl<'a> Epilogue<'a> {
    /// The plain product.
    pub const NONE: Epilogue<'static> = Epilogue {
        bias: None,
        gelu: false,
        residual: None,
    };

    /// The same epilogue over one backend's storage (`pick`), or a device mismatch with `lhs`.
    fn on<S>(&self, lhs: &Storage, pick: impl Fn(&'a Storage) -> Option<&'a S>) -> Result<Epilogue<'a, S>> {
        let one = |o: Option<(&'a Storage, &'a Layout)>| -> Result<Option<(&'a S, &'a Layout)>> {
            o.map(|(s, l)| pick(s).map(|p| (p, l)).ok_or_else(|| mismatch("matmul", lhs, s)))
                .transpose()
        };
        Ok(Epilogue {
            bias: one(self.bias)?,
            gelu: self.gelu,
            residual: one(self.residual)?,
        })
    }
}

/// Operands of one op on different devices (the tensor layer checks first; this is the backstop).
fn mismatch(op: &'static str, a: &Storage, b: &Storage) -> Error {
    Error::DeviceMismatch {
        op,
        lhs: a.device(),
        rhs: b.device(),
    }
}
