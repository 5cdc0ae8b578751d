//! The ops' primitives on [`Storage`]: each checks that its operands share a device and forwards
//! to the backend that holds the data (cpu/ or cuda/, in the file named for the op). Ops in
//! `src/ops` call these and never match on devices themselves, so a new backend is added here and
//! in its own folder only. Also the two results that hold device storage ([`RowStats`],
//! [`IdBuckets`]) and the fused optimizer steps over many storages at once.

use super::cpu::{self, with_cpu_storage, CpuStorage};
use super::cuda::{self, CudaStorage};
use super::op::{
    bucket_ids, AdamWHyper, AdamWParam, AttentionDims, BinaryOp, Epilogue, PerMatrix, QuantizedMatrix, ReduceOp,
    RopeSpec, SampleParams, SampleScratch, UnaryOp,
};
use super::storage::{mismatch, mismatch_any, Storage};
use crate::tensor::dtype::{DType, WithDType};
use crate::tensor::layout::Layout;
use crate::{Device, Error, Result};

impl Storage {
    pub(crate) fn unary(&self, layout: &Layout, op: UnaryOp) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::unary::unary(op, s, layout)?)),
            Storage::Cuda(s) => Ok(Storage::Cuda(cuda::unary::unary(op, s, layout)?)),
        }
    }

    /// Both layouts already have the broadcast output shape.
    pub(crate) fn binary(&self, la: &Layout, rhs: &Storage, lb: &Layout, op: BinaryOp) -> Result<Storage> {
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => Ok(Storage::Cpu(cpu::binary::binary(op, a, la, b, lb)?)),
            (Storage::Cuda(a), Storage::Cuda(b)) => Ok(Storage::Cuda(cuda::binary::binary(op, a, la, b, lb)?)),
            (a, b) => Err(mismatch(op.name(), a, b)),
        }
    }

    /// GELU's backward `self·gelu'(z)`: `self` is the incoming gradient; both layouts have one shape.
    pub(crate) fn gelu_backward(&self, l: &Layout, z: &Storage, lz: &Layout) -> Result<Storage> {
        match (self, z) {
            (Storage::Cpu(g), Storage::Cpu(z)) => Ok(Storage::Cpu(cpu::unary::gelu_backward(g, l, z, lz)?)),
            (Storage::Cuda(g), Storage::Cuda(z)) => Ok(Storage::Cuda(cuda::unary::gelu_backward(g, l, z, lz)?)),
            (g, z) => Err(mismatch("gelu_backward", g, z)),
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
                Ok(Storage::Cpu(cpu::where_cond::where_cond(cond, lc, t, lt, f, lf)?))
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
        Ok(self.matmul_fused(la, rhs, lb, &Epilogue::NONE)?.0)
    }

    /// `epi(self · rhs)`: as [`Storage::matmul`], with the epilogue applied to the f32 (f64) product
    /// before its one rounding to the dtype: in the kernel's store on Cuda/Emu (one launch), after
    /// the GEMM on the CPU. The second result is the pre-activation `z` when `epi.keep_pre` asks for it.
    pub(crate) fn matmul_fused(
        &self,
        la: &Layout,
        rhs: &Storage,
        lb: &Layout,
        epi: &Epilogue<'_, Storage>,
    ) -> Result<(Storage, Option<Storage>)> {
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => {
                let epi = epi.on(self, |s| match s {
                    Storage::Cpu(c) => Some(c),
                    _ => None,
                })?;
                let (y, z) = cpu::matmul::matmul(a, la, b, lb, &epi)?;
                Ok((Storage::Cpu(y), z.map(Storage::Cpu)))
            }
            (Storage::Cuda(a), Storage::Cuda(b)) => {
                let epi = epi.on(self, |s| match s {
                    Storage::Cuda(c) => Some(c),
                    _ => None,
                })?;
                let (y, z) = cuda::matmul::matmul(a, la, b, lb, &epi)?;
                Ok((Storage::Cuda(y), z.map(Storage::Cuda)))
            }
            (a, b) => Err(mismatch("matmul", a, b)),
        }
    }

    /// `x · w_iᵀ` for several dense weights sharing the input x (`self`, `[m, k]` contiguous;
    /// each weight `[n_i, k]` contiguous, of x's dtype, f32 or bf16), in one parallel region: on
    /// the CPU with m at most `STREAM_MAX_M` (decode's q, k and v projections). `None` elsewhere
    /// (CUDA, more rows), where the op multiplies one weight after the other.
    pub(crate) fn linear_many(
        &self,
        layout: &Layout,
        ws: &[(&Storage, &Layout)],
    ) -> Result<Option<PerMatrix<Storage>>> {
        let Storage::Cpu(x) = self else { return Ok(None) };
        if layout
            .shape()
            .first()
            .is_none_or(|&m| m == 0 || m > cpu::gemm::STREAM_MAX_M)
        {
            return Ok(None);
        }
        let ws = ws
            .iter()
            .map(|&(w, l)| match w {
                Storage::Cpu(w) => Ok((w, l)),
                other => Err(mismatch("linear_many", self, other)),
            })
            .collect::<Result<PerMatrix<_>>>()?;
        let ys = cpu::matmul::linear_many(x, layout, &ws)?;
        Ok(Some(ys.into_iter().map(Storage::Cpu).collect()))
    }

    /// `x · wᵀ` with `w` quantized: `self` holds f32 rows of `w`'s columns, on `w`'s device.
    pub(crate) fn linear_quantized(&self, layout: &Layout, w: &QuantizedMatrix) -> Result<Storage> {
        match self {
            Storage::Cpu(x) => cpu_quantized_product(x, layout, w, cpu::linear_quantized::linear_quantized),
            Storage::Cuda(x) => Ok(Storage::Cuda(cuda::linear_quantized::linear_quantized(x, layout, w)?)),
        }
    }

    /// `x · w_jᵀ` for every matrix of `ws` (which share their columns), each equal to
    /// [`Storage::linear_quantized`]'s: on the CPU in one parallel region with x quantized once
    /// (decode), on CUDA one product after the other.
    pub(crate) fn linear_quantized_many(&self, layout: &Layout, ws: &[&QuantizedMatrix]) -> Result<PerMatrix<Storage>> {
        match self {
            Storage::Cpu(x) => {
                if let Some(w) = ws.iter().find(|w| w.device() != Device::Cpu) {
                    return Err(w.device_error("linear_quantized", Device::Cpu));
                }
                let ys = with_cpu_rows(x, layout, |x| cpu::linear_quantized::linear_quantized_many(x, ws))?;
                Ok(ys.into_iter().map(|y| Storage::Cpu(CpuStorage::F32(y))).collect())
            }
            Storage::Cuda(x) => ws
                .iter()
                .map(|w| Ok(Storage::Cuda(cuda::linear_quantized::linear_quantized(x, layout, w)?)))
                .collect(),
        }
    }

    /// `x · wᵀ` with `w` decoded to f32 (x not rounded): the forward of a product autograd
    /// records, on `w`'s device.
    pub(crate) fn linear_dequantized(&self, layout: &Layout, w: &QuantizedMatrix) -> Result<Storage> {
        match self {
            Storage::Cpu(x) => cpu_quantized_product(x, layout, w, cpu::linear_quantized::linear_dequantized),
            Storage::Cuda(x) => Ok(Storage::Cuda(cuda::linear_quantized::linear_dequantized(x, layout, w)?)),
        }
    }

    /// The input's gradient of [`Storage::linear_quantized`]: `g · w`, `self` holding f32 rows of
    /// `w`'s rows, on `w`'s device.
    pub(crate) fn linear_quantized_input_grad(&self, layout: &Layout, w: &QuantizedMatrix) -> Result<Storage> {
        match self {
            Storage::Cpu(g) => cpu_quantized_product(g, layout, w, cpu::linear_quantized::linear_quantized_input_grad),
            Storage::Cuda(g) => Ok(Storage::Cuda(cuda::linear_quantized::linear_quantized_input_grad(
                g, layout, w,
            )?)),
        }
    }

    /// The token id drawn from these f32 logits (one contiguous row of `vocab`) with `uniform`:
    /// [`Storage::sample`] of one row, the CPU sampler's buffers kept in `scratch`, so that a draw
    /// on the CPU allocates nothing once they have grown to the vocabulary.
    pub(crate) fn sample_one(
        &self,
        vocab: usize,
        params: &SampleParams,
        uniform: f64,
        scratch: &mut SampleScratch,
    ) -> Result<u32> {
        match self {
            Storage::Cpu(s) => cpu::sample::sample_row_with(&cpu::typed::<f32>(s)[..vocab], params, uniform, scratch),
            Storage::Cuda(_) => Ok(self.sample(vocab, params, &[uniform])?[0]),
        }
    }

    /// One token id per row of these f32 logits (contiguous rows of `vocab`), row i drawn with
    /// `uniforms[i]`; the ids come back to the host. On a CUDA device a row the kernel could not
    /// sample (a NaN, or every logit −∞) is copied back and given to the CPU sampler, whose error
    /// names the problem.
    pub(crate) fn sample(&self, vocab: usize, params: &SampleParams, uniforms: &[f64]) -> Result<Vec<u32>> {
        match self {
            Storage::Cpu(s) => cpu::sample::sample(s, vocab, params, uniforms),
            Storage::Cuda(s) => {
                let ids = cuda::sample::sample(s, vocab, params, uniforms)?;
                if let Some(row) = ids
                    .iter()
                    .position(|&id| id == cuda::sample::NAN_ROW || id == cuda::sample::NO_MASS_ROW)
                {
                    let logits = s.read_host::<f32>(row * vocab, vocab)?;
                    cpu::sample::sample_row(&logits, params, uniforms[row])?;
                    return Err(Error::invalid(
                        "sample",
                        format!("the kernel found no token in row {row}, the CPU sampler finds one"),
                    ));
                }
                Ok(ids)
            }
        }
    }

    /// Contiguous rows of `width`.
    pub(crate) fn softmax_last_dim(&self, width: usize, log: bool) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::softmax::softmax_last_dim(s, width, log)?)),
            Storage::Cuda(s) => Ok(Storage::Cuda(cuda::softmax::softmax_last_dim(s, width, log)?)),
        }
    }

    /// The gradient of `softmax_last_dim` (`self` is its output `y`, `dy` the incoming gradient;
    /// both contiguous rows of `width`).
    pub(crate) fn softmax_backward_last_dim(&self, dy: &Storage, width: usize, log: bool) -> Result<Storage> {
        match (self, dy) {
            (Storage::Cpu(y), Storage::Cpu(dy)) => Ok(Storage::Cpu(cpu::softmax::softmax_backward_last_dim(
                y, dy, width, log,
            )?)),
            (Storage::Cuda(y), Storage::Cuda(dy)) => Ok(Storage::Cuda(cuda::softmax::softmax_backward_last_dim(
                y, dy, width, log,
            )?)),
            (y, dy) => Err(mismatch("softmax backward", y, dy)),
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
                let (y, mean, rstd) = cpu::layer_norm::layer_norm_forward(x, w, b, c, eps)?;
                let stats = RowStats {
                    mean: Storage::Cpu(CpuStorage::F64(mean)),
                    rstd: Storage::Cpu(CpuStorage::F64(rstd)),
                };
                Ok((Storage::Cpu(y), stats))
            }
            (Storage::Cuda(x), Storage::Cuda(w)) => {
                let b = match b {
                    None => None,
                    Some(Storage::Cuda(b)) => Some(b),
                    Some(other) => return Err(mismatch("layer_norm", self, other)),
                };
                let (y, mean, rstd) = cuda::layer_norm::layer_norm_forward(x, w, b, c, eps)?;
                let stats = RowStats {
                    mean: Storage::Cuda(mean),
                    rstd: Storage::Cuda(rstd),
                };
                Ok((Storage::Cuda(y), stats))
            }
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
        match (self, w, dy, &stats.mean, &stats.rstd) {
            (Storage::Cpu(x), Storage::Cpu(w), Storage::Cpu(dy), Storage::Cpu(mean), Storage::Cpu(rstd)) => {
                let (mean, rstd) = (cpu::typed::<f64>(mean), cpu::typed::<f64>(rstd));
                let (dx, dw, db) = cpu::layer_norm::layer_norm_backward(x, w, dy, mean, rstd, c)?;
                Ok((Storage::Cpu(dx), Storage::Cpu(dw), Storage::Cpu(db)))
            }
            (Storage::Cuda(x), Storage::Cuda(w), Storage::Cuda(dy), Storage::Cuda(mean), Storage::Cuda(rstd)) => {
                let (dx, dw, db) = cuda::layer_norm::layer_norm_backward(x, w, dy, mean, rstd, c)?;
                Ok((Storage::Cuda(dx), Storage::Cuda(dw), Storage::Cuda(db)))
            }
            (x, w, dy, ..) => Err(if x.device() != w.device() {
                mismatch("layer_norm backward", x, w)
            } else {
                mismatch("layer_norm backward", x, dy)
            }),
        }
    }

    /// Contiguous logits `[n, c]` and U32 targets `[n]`, checked by the caller: each below `c` or
    /// equal to `ignore`, `count` (at least one) not ignored. Returns the mean loss over the counted
    /// rows (a scalar of the accumulation type: f32 for f32/bf16/f16 logits, f64 for f64, on every
    /// device) and the per-row log-sum-exp for the backward (f64 on the CPU; the kernels'
    /// accumulation type on CUDA/Emu, where nothing goes through the host).
    pub(crate) fn cross_entropy_forward(
        &self,
        targets: &Storage,
        c: usize,
        ignore: Option<u32>,
        count: usize,
    ) -> Result<(Storage, Storage)> {
        match (self, targets) {
            (Storage::Cpu(x), Storage::Cpu(t)) => {
                let (total, lse) = cpu::cross_entropy::cross_entropy_forward(x, cpu::typed::<u32>(t), c, ignore)?;
                let loss = cpu::filled(total / count as f64, 1, cuda::acc_dtype(x.dtype()))?;
                Ok((Storage::Cpu(loss), Storage::Cpu(CpuStorage::F64(lse))))
            }
            (Storage::Cuda(x), Storage::Cuda(t)) => {
                let (loss, lse) = cuda::cross_entropy::cross_entropy_forward(x, t, c, ignore, count)?;
                Ok((Storage::Cuda(loss), Storage::Cuda(lse)))
            }
            (x, t) => Err(mismatch("cross_entropy", x, t)),
        }
    }

    /// d logits = (softmax − onehot)·g/count, zero on ignored rows; `g` is the loss's gradient (a
    /// one-element storage of the loss's dtype) and `lse` what the forward returned.
    pub(crate) fn cross_entropy_backward(
        &self,
        targets: &Storage,
        lse: &Storage,
        g: &Storage,
        c: usize,
        ignore: Option<u32>,
        count: usize,
    ) -> Result<Storage> {
        match (self, targets, lse, g) {
            (Storage::Cpu(x), Storage::Cpu(t), Storage::Cpu(lse), Storage::Cpu(g)) => {
                let scale = with_cpu_storage!(g, v => v[0].to_f64()) / count as f64;
                Ok(Storage::Cpu(cpu::cross_entropy::cross_entropy_backward(
                    x,
                    cpu::typed::<u32>(t),
                    cpu::typed::<f64>(lse),
                    c,
                    ignore,
                    scale,
                )?))
            }
            (Storage::Cuda(x), Storage::Cuda(t), Storage::Cuda(lse), Storage::Cuda(g)) => Ok(Storage::Cuda(
                cuda::cross_entropy::cross_entropy_backward(x, t, lse, g, c, ignore, count)?,
            )),
            (x, t, _, g) => Err(if x.device() != t.device() {
                mismatch("cross_entropy backward", x, t)
            } else {
                mismatch("cross_entropy backward", x, g)
            }),
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

    /// Self-attention read straight from a combined projection `qkv` `[B, T, 3·C]` (self, contiguous;
    /// `heads` heads of `dims.d`, `dims.bh = B·heads`): returns y `[B, T, C]` and the log-sum-exp
    /// `[B·heads, T]`. Fused on the CPU only: on CUDA/Emu the op composes it from
    /// `attention_forward` and views, so this is an error there.
    pub(crate) fn qkv_attention_forward(&self, dims: AttentionDims, heads: usize) -> Result<(Storage, Storage)> {
        match self {
            Storage::Cpu(x) => {
                let (y, lse) = cpu::attention::qkv_attention_forward(x, dims, heads)?;
                Ok((Storage::Cpu(y), Storage::Cpu(lse)))
            }
            Storage::Cuda(_) => Err(qkv_on_cuda()),
        }
    }

    /// The backward of [`Storage::qkv_attention_forward`]: from qkv (self), the output `y`, its
    /// gradient `dy` and the saved `lse`, the gradient of qkv `[B, T, 3·C]`. CPU only.
    pub(crate) fn qkv_attention_backward(
        &self,
        y: &Storage,
        dy: &Storage,
        lse: &Storage,
        dims: AttentionDims,
        heads: usize,
    ) -> Result<Storage> {
        match (self, y, dy, lse) {
            (Storage::Cpu(x), Storage::Cpu(y), Storage::Cpu(g), Storage::Cpu(l)) => Ok(Storage::Cpu(
                cpu::attention::qkv_attention_backward(x, y, g, l, dims, heads)?,
            )),
            (Storage::Cuda(_), ..) => Err(qkv_on_cuda()),
            (x, y, g, l) => Err(mismatch_any(OP_QKV_ATTENTION, x, &[y, g, l])),
        }
    }

    /// Contiguous `[outer, size, inner]` → `[outer, ids.len(), inner]`; `ids` are U32 on this
    /// device, each below `size` (checked by the caller).
    pub(crate) fn index_select(&self, outer: usize, size: usize, inner: usize, ids: &Storage) -> Result<Storage> {
        match (self, ids) {
            (Storage::Cpu(s), Storage::Cpu(ids)) => Ok(Storage::Cpu(cpu::embedding::index_select(
                s,
                outer,
                size,
                inner,
                cpu::typed::<u32>(ids),
            )?)),
            (Storage::Cuda(s), Storage::Cuda(ids)) => Ok(Storage::Cuda(cuda::embedding::index_select(
                s, outer, size, inner, ids,
            )?)),
            (s, ids) => Err(mismatch("index_select", s, ids)),
        }
    }

    /// GPT's input: `self` is U32 ids `[n / t, t]` (checked below `wte`'s rows), `wte` `[vocab, c]`
    /// and `wpe` `[positions ≥ t, c]` contiguous; returns `[n, c]` rows `wte[id] + wpe[position]`.
    pub(crate) fn token_position_embedding(&self, wte: &Storage, wpe: &Storage, t: usize, c: usize) -> Result<Storage> {
        match (self, wte, wpe) {
            (Storage::Cpu(ids), Storage::Cpu(wte), Storage::Cpu(wpe)) => Ok(Storage::Cpu(
                cpu::embedding::token_position_embedding(cpu::typed::<u32>(ids), wte, wpe, t, c)?,
            )),
            (Storage::Cuda(ids), Storage::Cuda(wte), Storage::Cuda(wpe)) => Ok(Storage::Cuda(
                cuda::embedding::token_position_embedding(ids, wte, wpe, t, c)?,
            )),
            (ids, wte, wpe) => Err(if ids.device() != wte.device() {
                mismatch("token_position_embedding", ids, wte)
            } else {
                mismatch("token_position_embedding", ids, wpe)
            }),
        }
    }

    /// The adjoint of `index_select`: `self` is `[outer, n, inner]`, `ids` its n ids bucketed.
    pub(crate) fn index_add(&self, outer: usize, size: usize, inner: usize, ids: &IdBuckets) -> Result<Storage> {
        match (self, &ids.order, &ids.starts) {
            (Storage::Cpu(s), Storage::Cpu(order), Storage::Cpu(starts)) => {
                Ok(Storage::Cpu(cpu::embedding::index_add(
                    s,
                    outer,
                    size,
                    inner,
                    cpu::typed::<u32>(order),
                    cpu::typed::<u32>(starts),
                )?))
            }
            (Storage::Cuda(s), Storage::Cuda(order), Storage::Cuda(starts)) => Ok(Storage::Cuda(
                cuda::embedding::index_add(s, outer, size, inner, order, starts)?,
            )),
            (s, order, _) => Err(mismatch("index_add", s, order)),
        }
    }
}

/// `product` of the f32 rows of `x` (viewed through `layout`) and `w`, both on the CPU.
fn cpu_quantized_product(
    x: &CpuStorage,
    layout: &Layout,
    w: &QuantizedMatrix,
    product: fn(&[f32], &QuantizedMatrix) -> Result<Vec<f32>>,
) -> Result<Storage> {
    if w.device() != Device::Cpu {
        return Err(w.device_error("linear_quantized", Device::Cpu));
    }
    with_cpu_rows(x, layout, |x| Ok(Storage::Cpu(CpuStorage::F32(product(x, w)?))))
}

/// `f` of the f32 elements of `x` viewed through `layout`, in row-major order: the storage's own
/// slice when the view is contiguous (no copy: the decode step's products), a contiguous copy
/// otherwise.
fn with_cpu_rows<T>(x: &CpuStorage, layout: &Layout, f: impl FnOnce(&[f32]) -> Result<T>) -> Result<T> {
    match layout.contiguous_range() {
        Some(range) => f(&cpu::typed::<f32>(x)[range]),
        None => f(cpu::typed::<f32>(&cpu::contiguous(x, layout)?)),
    }
}

const OP_ATTENTION: &str = "scaled_dot_product_attention";
const OP_QKV_ATTENTION: &str = "qkv_attention";

/// The fused qkv_attention asked of a CUDA/Emu storage, which the op never does (it composes).
fn qkv_on_cuda() -> Error {
    Error::invalid(
        OP_QKV_ATTENTION,
        "the fused form runs on the CPU only; on CUDA/Emu the op is composed of views and \
         scaled_dot_product_attention",
    )
}

/// Per-row mean and 1/√(var + eps) that layer_norm's forward saves for its backward, on the
/// input's device: f64 on the CPU, the kernels' accumulation type (f32; f64 for f64) on CUDA/Emu.
pub struct RowStats {
    pub mean: Storage,
    pub rstd: Storage,
}

impl<'a> Epilogue<'a, Storage> {
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
            keep_pre: self.keep_pre,
            keep_gelu_derivative: self.keep_gelu_derivative,
        })
    }
}

/// The positions of n ids grouped by id on a device (U32): `order[starts[r]..starts[r + 1]]` are
/// the positions holding id `r`, ascending. index_add sums each bucket in that order, so its
/// result does not depend on scheduling (no float atomics). Built once per backward on the host,
/// where the op has checked the ids, by a counting sort (O(n + size)).
pub struct IdBuckets {
    pub order: Storage,
    pub starts: Storage,
}

impl IdBuckets {
    pub(crate) fn new(ids: &[u32], size: usize, device: &Device) -> Result<IdBuckets> {
        if u32::try_from(ids.len()).is_err() {
            return Err(Error::invalid(
                "index_add",
                format!("{} indices are more than the 2^32 - 1 the kernels count", ids.len()),
            ));
        }
        let (order, starts) = bucket_ids(ids, size);
        Ok(IdBuckets {
            order: Storage::from_host(CpuStorage::U32(order), device)?,
            starts: Storage::from_host(CpuStorage::U32(starts), device)?,
        })
    }
}

/// The AdamW step of every parameter, fused: one pass per tensor on the CPU (bit for bit
/// reproducible), one launch for all of them on CUDA/Emu.
pub(crate) fn adamw_step(params: &mut [AdamWParam<Storage>], h: &AdamWHyper) -> Result<()> {
    const OP: &str = "AdamW";
    let Some(first) = params.first() else { return Ok(()) };
    let (device, dtype) = (first.param.device(), first.param.dtype());
    for item in params.iter() {
        let n = item.param.len();
        let copy = item.copy.as_deref();
        for s in [&*item.param, item.grad, &*item.m, &*item.v].into_iter().chain(copy) {
            if s.device() != device {
                return Err(Error::DeviceMismatch {
                    op: OP,
                    lhs: device,
                    rhs: s.device(),
                });
            }
            if s.len() != n {
                return Err(Error::shape(
                    OP,
                    format!("a parameter of {n} elements has a state of {}", s.len()),
                ));
            }
        }
        for s in [&*item.param, item.grad, &*item.m, &*item.v] {
            if s.dtype() != dtype || !matches!(dtype, DType::F32 | DType::F64) {
                return Err(Error::DType {
                    op: OP,
                    msg: format!(
                        "parameters, gradients and moments must all be f32 or all f64, got {dtype} and {}",
                        s.dtype()
                    ),
                });
            }
        }
        if let Some(c) = copy.filter(|c| c.dtype() != DType::BF16) {
            return Err(Error::dtype_mismatch(OP, DType::BF16, c.dtype()));
        }
    }
    if device != Device::Cpu && h.grad_scale != 1.0 {
        return Err(Error::invalid(
            OP,
            format!(
                "a gradient scale ({}) is fused into the step on the CPU only; on {device} scale the gradients first",
                h.grad_scale
            ),
        ));
    }
    match device {
        Device::Cpu => cpu::adamw::adamw_step(&mut on_backend(params, cpu_of, cpu_of_mut), h),
        _ => cuda::adamw::adamw_step(&mut on_backend(params, cuda_of, cuda_of_mut), h),
    }
}

/// Σ g² over every gradient (whole storages, all f32 or all f64, one device), in f64: the square
/// of the global norm for clipping. Deterministic on every device.
pub(crate) fn grad_sq_sum(grads: &[&Storage]) -> Result<f64> {
    const OP: &str = "clip_grad_norm";
    let Some(first) = grads.first() else { return Ok(0.0) };
    let (device, dtype) = (first.device(), first.dtype());
    for g in grads {
        if g.device() != device {
            return Err(Error::DeviceMismatch {
                op: OP,
                lhs: device,
                rhs: g.device(),
            });
        }
        if g.dtype() != dtype || !matches!(dtype, DType::F32 | DType::F64) {
            return Err(Error::DType {
                op: OP,
                msg: format!("gradients must all be f32 or all f64, got {dtype} and {}", g.dtype()),
            });
        }
    }
    match device {
        Device::Cpu => Ok(cpu::adamw::grad_sq_sum(
            &grads.iter().map(|g| cpu_of(g)).collect::<Vec<_>>(),
        )),
        _ => cuda::adamw::grad_sq_sum(&grads.iter().map(|g| cuda_of(g)).collect::<Vec<_>>()),
    }
}

/// The parameters of an AdamW step over one backend's storages (`pick`, `pick_mut`: the caller
/// has checked that every storage is on that backend).
fn on_backend<'b, S>(
    params: &'b mut [AdamWParam<Storage>],
    pick: fn(&Storage) -> &S,
    pick_mut: fn(&mut Storage) -> &mut S,
) -> Vec<AdamWParam<'b, S>> {
    params
        .iter_mut()
        .map(|item| AdamWParam {
            param: pick_mut(&mut *item.param),
            grad: pick(item.grad),
            m: pick_mut(&mut *item.m),
            v: pick_mut(&mut *item.v),
            copy: item.copy.as_deref_mut().map(pick_mut),
            decay: item.decay,
        })
        .collect()
}

fn cpu_of(s: &Storage) -> &CpuStorage {
    match s {
        Storage::Cpu(s) => s,
        Storage::Cuda(_) => unreachable!("devices are checked before dispatch"),
    }
}

fn cpu_of_mut(s: &mut Storage) -> &mut CpuStorage {
    match s {
        Storage::Cpu(s) => s,
        Storage::Cuda(_) => unreachable!("devices are checked before dispatch"),
    }
}

fn cuda_of(s: &Storage) -> &CudaStorage {
    match s {
        Storage::Cuda(s) => s,
        Storage::Cpu(_) => unreachable!("devices are checked before dispatch"),
    }
}

fn cuda_of_mut(s: &mut Storage) -> &mut CudaStorage {
    match s {
        Storage::Cuda(s) => s,
        Storage::Cpu(_) => unreachable!("devices are checked before dispatch"),
    }
}

/// The ops Llama adds: swiglu, rms_norm and rope (ops/swiglu.rs, ops/rms_norm.rs, ops/rope.rs).
impl Storage {
    /// silu(self)·up, `self` the gate; both layouts have one shape. The result is contiguous.
    pub(crate) fn swiglu_forward(&self, lg: &Layout, up: &Storage, lu: &Layout) -> Result<Storage> {
        match (self, up) {
            (Storage::Cpu(g), Storage::Cpu(u)) => Ok(Storage::Cpu(cpu::swiglu::swiglu_forward(g, lg, u, lu)?)),
            (Storage::Cuda(g), Storage::Cuda(u)) => Ok(Storage::Cuda(cuda::swiglu::swiglu_forward(g, lg, u, lu)?)),
            (g, u) => Err(mismatch("swiglu", g, u)),
        }
    }

    /// (dgate, dup) from the gate (self), up and the incoming gradient, all contiguous, one length.
    pub(crate) fn swiglu_backward(&self, up: &Storage, dy: &Storage) -> Result<(Storage, Storage)> {
        match (self, up, dy) {
            (Storage::Cpu(g), Storage::Cpu(u), Storage::Cpu(d)) => {
                let (dg, du) = cpu::swiglu::swiglu_backward(g, u, d)?;
                Ok((Storage::Cpu(dg), Storage::Cpu(du)))
            }
            (Storage::Cuda(g), Storage::Cuda(u), Storage::Cuda(d)) => {
                let (dg, du) = cuda::swiglu::swiglu_backward(g, u, d)?;
                Ok((Storage::Cuda(dg), Storage::Cuda(du)))
            }
            (g, u, d) => Err(mismatch_any("swiglu backward", g, &[u, d])),
        }
    }

    /// Contiguous `[rows, c]` input and `[c]` weight; returns y and the per-row 1/√(mean(x²) + eps)
    /// on the input's device (f64 on the CPU, the kernels' accumulation type on CUDA/Emu).
    pub(crate) fn rms_norm_forward(&self, w: &Storage, c: usize, eps: f64) -> Result<(Storage, Storage)> {
        match (self, w) {
            (Storage::Cpu(x), Storage::Cpu(w)) => {
                let (y, rstd) = cpu::rms_norm::rms_norm_forward(x, w, c, eps)?;
                Ok((Storage::Cpu(y), Storage::Cpu(CpuStorage::F64(rstd))))
            }
            (Storage::Cuda(x), Storage::Cuda(w)) => {
                let (y, rstd) = cuda::rms_norm::rms_norm_forward(x, w, c, eps)?;
                Ok((Storage::Cuda(y), Storage::Cuda(rstd)))
            }
            (x, w) => Err(mismatch("rms_norm", x, w)),
        }
    }

    /// Returns (dx, dweight) from x (self), the weight, dy and the forward's rstd.
    pub(crate) fn rms_norm_backward(
        &self,
        w: &Storage,
        dy: &Storage,
        rstd: &Storage,
        c: usize,
    ) -> Result<(Storage, Storage)> {
        match (self, w, dy, rstd) {
            (Storage::Cpu(x), Storage::Cpu(w), Storage::Cpu(dy), Storage::Cpu(rstd)) => {
                let (dx, dw) = cpu::rms_norm::rms_norm_backward(x, w, dy, cpu::typed::<f64>(rstd), c)?;
                Ok((Storage::Cpu(dx), Storage::Cpu(dw)))
            }
            (Storage::Cuda(x), Storage::Cuda(w), Storage::Cuda(dy), Storage::Cuda(rstd)) => {
                let (dx, dw) = cuda::rms_norm::rms_norm_backward(x, w, dy, rstd, c)?;
                Ok((Storage::Cuda(dx), Storage::Cuda(dw)))
            }
            (x, w, dy, rstd) => Err(mismatch_any("rms_norm backward", x, &[w, dy, rstd])),
        }
    }

    /// Contiguous `[batch, spec.seq, spec.heads, spec.head_dim]` rotated by +θ, or by −θ with
    /// `inverse` (the backward).
    pub(crate) fn rope(&self, spec: &RopeSpec, inverse: bool) -> Result<Storage> {
        match self {
            Storage::Cpu(x) => Ok(Storage::Cpu(cpu::rope::rope(x, spec, inverse)?)),
            Storage::Cuda(x) => Ok(Storage::Cuda(cuda::rope::rope(x, spec, inverse)?)),
        }
    }
}
