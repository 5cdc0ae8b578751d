//! scaled_dot_product_attention: softmax(q·kᵀ/√d)·v over many heads, fused. The forward saves
//! the log-sum-exp of every query row; the backward recomputes the probabilities from it and
//! yields dq, dk and dv in one fused primitive (see backend/cpu/attention.rs and
//! kernels/attention.cu), so no `[Tq, Tk]` tensor is ever kept.
//!
//! Backward, with s = 1/√d, P = softmax(s·Q·Kᵀ) (recomputed from the saved log-sum-exp) and
//! D = rowsum(g ⊙ O):  dV = Pᵀ·g,  dS = P ⊙ (g·Vᵀ − D),  dQ = s·dS·K,  dK = s·dSᵀ·Q.

use crate::backend::op::AttentionDims;
use crate::{Device, Error, Result, Tensor};

const OP: &str = "scaled_dot_product_attention";

impl Tensor {
    /// Attention of the queries `self` `[B, H, Tq, D]` over the keys `k` and values `v`
    /// `[B, Hkv, Tk, D]`, with scores scaled by 1/√D; returns `[B, H, Tq, D]`. Hkv = H is
    /// multi-head attention; a divisor of H is grouped-query attention (Llama 2 70B, SmolLM2):
    /// query head h reads key/value head h / (H / Hkv), without repeating K and V, and the
    /// gradients of K and V sum over the query heads of their group. With `causal`,
    /// query i sits at absolute position Tk − Tq + i and sees the keys up to that position (so
    /// Tq = Tk is the usual causal mask, and one new query after a KV cache sees every key);
    /// causal needs Tq ≤ Tk.
    pub fn scaled_dot_product_attention(&self, k: &Tensor, v: &Tensor, causal: bool) -> Result<Tensor> {
        let (q, k, v, dims) = prepare(self, k, v, causal)?;
        let (o, lse) = forward(&q, &k, &v, dims)?;
        Ok(o.record(OP, &[&q, &k, &v], move |g, inputs, o| {
            let grads = backward(&inputs[0], &inputs[1], &inputs[2], o, &lse, &g.dense()?, dims)?;
            Ok(grads.into_iter().map(Some).collect())
        }))
    }
}

/// The name of [`Tensor::qkv_attention`] in errors and in the graph.
const OP_QKV: &str = "qkv_attention";

impl Tensor {
    /// Multi-head self-attention straight from a combined q/k/v projection: `self` is `[B, T, 3·C]`
    /// (a GPT-2 `c_attn` output: each row the queries of the `n_head` heads side by side, then their
    /// keys, then their values, every head C / n_head wide), and the result is `[B, T, C]`, the heads'
    /// outputs side by side again: what reshaping to `[B, T, 3, nh, hs]`, permuting to
    /// `[3, B, nh, T, hs]`, [`scaled_dot_product_attention`](Tensor::scaled_dot_product_attention)
    /// of the three parts and permuting back computes.
    ///
    /// On the CPU it is one fused primitive each way, reading the heads in place: no copy of q, k or
    /// v, no permuted copy of the output, and a backward that writes the gradient of `self` once,
    /// where the composed form places dq, dk and dv into zeros of `self`'s shape and adds the three.
    /// On CUDA/Emu it is the composed form (the same results: only copies and additions of zeros
    /// differ).
    pub fn qkv_attention(&self, n_head: usize, causal: bool) -> Result<Tensor> {
        let &[b, t, c3] = self.shape() else {
            return Err(Error::shape(
                OP_QKV,
                format!("expected qkv [B, T, 3·C] (rank 3), got {:?}", self.shape()),
            ));
        };
        if n_head == 0 || !c3.is_multiple_of(3 * n_head) || t == 0 {
            return Err(Error::shape(
                OP_QKV,
                format!(
                    "qkv {:?} must be [B, T, 3·C] with T ≥ 1 and C a non-zero multiple of the {n_head} heads",
                    self.shape()
                ),
            ));
        }
        if !self.dtype().is_float() {
            return Err(Error::not_float(OP_QKV, self.dtype()));
        }
        let (c, hs) = (c3 / 3, c3 / 3 / n_head);
        if *self.device() != Device::Cpu {
            // the composed form: views, the fused attention over dense copies, a copy back
            let qkv = self.reshape(&[b, t, 3, n_head, hs])?.permute(&[2, 0, 3, 1, 4])?;
            let q = qkv.narrow(0, 0, 1)?.reshape(&[b, n_head, t, hs])?;
            let (k, v) = (qkv.narrow(0, 1, 1)?.squeeze(0)?, qkv.narrow(0, 2, 1)?.squeeze(0)?);
            let y = q.scaled_dot_product_attention(&k, &v, causal)?;
            return y.permute(&[0, 2, 1, 3])?.reshape(&[b, t, c]);
        }
        let dims = AttentionDims {
            bh: b * n_head,
            tq: t,
            tk: t,
            d: hs,
            causal,
            group: 1,
            kv_stride: t * hs,
        };
        let x = self.dense()?;
        let (y, lse) = x.storage().qkv_attention_forward(dims, n_head)?;
        let y = Tensor::from_parts(y, &[b, t, c]);
        Ok(y.record(OP_QKV, &[&x], move |g, inputs, y| {
            let (x, y, g) = (&inputs[0], y.dense()?, g.dense()?);
            let dx = x
                .storage()
                .qkv_attention_backward(&y.storage(), &g.storage(), &lse, dims, n_head)?;
            Ok(vec![Some(Tensor::from_parts(dx, x.shape()))])
        }))
    }
}

/// The fused forward alone, recording nothing: the output and the log-sum-exp of every query row
/// `[B, H, Tq]` (`kiln bench` times the backward from these).
#[cfg(feature = "bench")]
pub(crate) fn attention_forward(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<(Tensor, Tensor)> {
    let (q, k, v, dims) = prepare(q, k, v, causal)?;
    forward(&q, &k, &v, dims)
}

/// The fused backward alone: (dq, dk, dv) from the forward's inputs, its output `o` and `lse`
/// ([`attention_forward`]) and the output's gradient `g`.
#[cfg(feature = "bench")]
pub(crate) fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    g: &Tensor,
    causal: bool,
) -> Result<[Tensor; 3]> {
    let (q, k, v, dims) = prepare(q, k, v, causal)?;
    backward(&q, &k, &v, &o.dense()?, lse, &g.dense()?, dims)
}

/// Checks the operands and returns them dense (contiguous, from offset 0) with the call's sizes;
/// on the CPU, K and V whose heads lie at a fixed stride (the filled rows of a KV cache's buffers,
/// [`head_stride`]) are read in place instead of copied at every generated token.
fn prepare(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<(Tensor, Tensor, Tensor, AttentionDims)> {
    q.same_device(k, OP)?;
    q.same_device(v, OP)?;
    let dims = attention_dims(q, k, v, causal)?;
    if *q.device() == Device::Cpu {
        if let Some(kv_stride) = head_stride(k, v) {
            return Ok((q.dense()?, k.clone(), v.clone(), AttentionDims { kv_stride, ..dims }));
        }
    }
    Ok((q.dense()?, k.dense()?, v.dense()?, dims))
}

/// For k and v `[B, Hkv, Tk, D]` views that start their storage, with each head's Tk rows
/// contiguous and the heads (batch entries included) a common `stride ≥ Tk·D` apart: that stride.
fn head_stride(k: &Tensor, v: &Tensor) -> Option<usize> {
    let &[b, h, tk, d] = k.shape() else { return None };
    let s = k.layout().strides();
    let stride = if h > 1 {
        s[1]
    } else if b > 1 {
        s[0]
    } else {
        tk * d
    };
    let heads_at_stride = |t: &Tensor| {
        let (l, s) = (t.layout(), t.layout().strides());
        l.offset() == 0
            && (d <= 1 || s[3] == 1)
            && (tk <= 1 || s[2] == d)
            && (h <= 1 || s[1] == stride)
            && (b <= 1 || s[0] == h * stride)
    };
    (stride >= tk * d && heads_at_stride(k) && heads_at_stride(v)).then_some(stride)
}

/// The forward kernel (or CPU loop) on dense operands: (o, lse).
fn forward(q: &Tensor, k: &Tensor, v: &Tensor, dims: AttentionDims) -> Result<(Tensor, Tensor)> {
    let shape = q.shape();
    let (o, lse) = q.storage().attention_forward(&k.storage(), &v.storage(), dims)?;
    Ok((Tensor::from_parts(o, shape), Tensor::from_parts(lse, &shape[..3])))
}

/// The backward kernels (or CPU loop) on dense operands: [dq, dk, dv].
fn backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    g: &Tensor,
    dims: AttentionDims,
) -> Result<[Tensor; 3]> {
    let (dq, dk, dv) = q.storage().attention_backward(
        &k.storage(),
        &v.storage(),
        &o.storage(),
        &g.storage(),
        &lse.storage(),
        dims,
    )?;
    Ok([
        Tensor::from_parts(dq, q.shape()),
        Tensor::from_parts(dk, k.shape()),
        Tensor::from_parts(dv, v.shape()),
    ])
}

/// Checks the operands' shapes and dtypes and returns the sizes of the call.
fn attention_dims(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<AttentionDims> {
    let describe = || format!("q {:?}, k {:?}, v {:?}", q.shape(), k.shape(), v.shape());
    let (&[b, h, tq, d], &[kb, kh, tk, kd]) = (q.shape(), k.shape()) else {
        return Err(Error::shape(
            OP,
            format!("q, k and v must be [B, H, T, D] (rank 4); got {}", describe()),
        ));
    };
    // zero heads are allowed (an empty result), as long as both sides have them
    let grouped = if kh == 0 { h == 0 } else { h.is_multiple_of(kh) };
    if [kb, kd] != [b, d] || !grouped || v.shape() != k.shape() {
        return Err(Error::shape(
            OP,
            format!(
                "k and v must both be [{b}, Hkv, Tk, {d}] with Hkv dividing H = {h} (Hkv = H, or fewer \
                 key/value heads shared by groups of query heads) to match q [B, H, Tq, D] = {:?}; got {}",
                q.shape(),
                describe()
            ),
        ));
    }
    if d == 0 || tk == 0 {
        return Err(Error::shape(
            OP,
            format!(
                "the head dim D and the key count Tk must be at least 1; got {}",
                describe()
            ),
        ));
    }
    if causal && tq > tk {
        return Err(Error::shape(
            OP,
            format!(
                "causal attention needs Tq <= Tk (query i sits at position Tk - Tq + i); got Tq = {tq} and Tk = {tk}"
            ),
        ));
    }
    for t in [k, v] {
        if t.dtype() != q.dtype() {
            return Err(Error::dtype_mismatch(OP, q.dtype(), t.dtype()));
        }
    }
    if !q.dtype().is_float() {
        return Err(Error::not_float(OP, q.dtype()));
    }
    Ok(AttentionDims {
        bh: b * h,
        tq,
        tk,
        d,
        causal,
        group: h.checked_div(kh).unwrap_or(1),
        kv_stride: tk * d,
    })
}
