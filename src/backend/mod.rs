//! Backends behind one small interface. [`Storage`] is an enum over devices; each primitive
//! below forwards to the backend that holds the data. Ops in `src/ops` call these and never
//! match on devices themselves, so a new backend is added here and in its own folder only.

pub mod cpu;

use crate::backend::cpu::norm::RowStats;
use crate::backend::cpu::reduce::ReduceOp;
use crate::ops::binary::BinaryOp;
use crate::ops::unary::UnaryOp;
use crate::tensor::dtype::DType;
use crate::tensor::layout::Layout;
use crate::tensor::storage::{CpuStorage, Storage};
use crate::{Device, Result};

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
        }
    }

    /// `n` copies of `value` rounded to `dtype`.
    pub(crate) fn filled(value: f64, n: usize, dtype: DType, device: &Device) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(cpu::filled(value, n, dtype))),
            other => Err(unavailable(other)),
        }
    }

    /// Moves host data to `device`.
    pub(crate) fn from_host(data: CpuStorage, device: &Device) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(data)),
            other => Err(unavailable(other)),
        }
    }

    /// The viewed elements, contiguous, in host memory.
    pub(crate) fn to_host(&self, layout: &Layout) -> Result<CpuStorage> {
        match self {
            Storage::Cpu(s) => Ok(cpu::contiguous(s, layout)),
        }
    }

    pub(crate) fn contiguous(&self, layout: &Layout) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::contiguous(s, layout))),
        }
    }

    pub(crate) fn cast(&self, layout: &Layout, dtype: DType) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::cast(s, layout, dtype))),
        }
    }

    /// Writes `src` viewed through `ls` into the elements of `self` that `ld` views.
    pub(crate) fn assign(&mut self, ld: &Layout, src: &Storage, ls: &Layout) -> Result<()> {
        match (self, src) {
            (Storage::Cpu(d), Storage::Cpu(s)) => cpu::assign(d, ld, s, ls),
        }
        Ok(())
    }

    pub(crate) fn unary(&self, layout: &Layout, op: UnaryOp) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::elementwise::unary(op, s, layout)?)),
        }
    }

    /// Both layouts already have the broadcast output shape.
    pub(crate) fn binary(&self, la: &Layout, rhs: &Storage, lb: &Layout, op: BinaryOp) -> Result<Storage> {
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => Ok(Storage::Cpu(cpu::elementwise::binary(op, a, la, b, lb)?)),
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
        }
    }

    pub(crate) fn reduce(&self, layout: &Layout, op: ReduceOp, dims: &[usize]) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::reduce::reduce(op, s, layout, dims)?)),
        }
    }

    /// `[batch.., m, k] x [batch.., k, n]`, batch dims already broadcast.
    pub(crate) fn matmul(&self, la: &Layout, rhs: &Storage, lb: &Layout) -> Result<Storage> {
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => Ok(Storage::Cpu(cpu::matmul::matmul(a, la, b, lb)?)),
        }
    }

    /// Contiguous rows of `width`.
    pub(crate) fn softmax_last_dim(&self, width: usize, log: bool) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::softmax::softmax_last_dim(s, width, log)?)),
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
                let b = b.map(|Storage::Cpu(b)| b);
                let (y, stats) = cpu::norm::layer_norm_forward(x, w, b, c, eps)?;
                Ok((Storage::Cpu(y), stats))
            }
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
        }
    }

    /// Contiguous `[outer, size, inner]` → `[outer, ids.len(), inner]`.
    pub(crate) fn index_select(&self, outer: usize, size: usize, inner: usize, ids: &[u32]) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::index::index_select(s, outer, size, inner, ids))),
        }
    }

    /// The adjoint of `index_select`.
    pub(crate) fn index_add(&self, outer: usize, size: usize, inner: usize, ids: &[u32]) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::index::index_add(s, outer, size, inner, ids)?)),
        }
    }
}

fn unavailable(device: &Device) -> crate::Error {
    crate::Error::DeviceUnavailable {
        device: *device,
        reason: "only the CPU backend is built so far".into(),
    }
}
