//! scaled_dot_product_attention: softmax(q·kᵀ/√d)·v over many heads, fused. The forward saves
//! the log-sum-exp of every query row; the backward recomputes the probabilities from it and
//! yields dq, dk and dv in one fused primitive (see backend/cpu/attention.rs and
//! kernels/attention.cu), so no `[Tq, Tk]` tensor is ever kept.

use crate::backend::cpu::attention::AttentionDims;
use crate::{Error, Result, Tensor};

const OP: &str = "scaled_dot_product_attention";

impl Tensor {
    /// Attention of the queries `self` `[B, H, Tq, D]` over the keys `k` and values `v`
    /// `[B, H, Tk, D]`, with scores scaled by 1/√D; returns `[B, H, Tq, D]`. With `causal`,
    /// query i sits at absolute position Tk − Tq + i and sees the keys up to that position (so
    /// Tq = Tk is the usual causal mask, and one new query after a KV cache sees every key);
    /// causal needs Tq ≤ Tk.
    pub fn scaled_dot_product_attention(&self, k: &Tensor, v: &Tensor, causal: bool) -> Result<Tensor> {
        self.same_device(k, OP)?;
        self.same_device(v, OP)?;
        let dims = attention_dims(self, k, v, causal)?;
        let shape = self.shape().to_vec();
        let (q, k, v) = (self.dense()?, k.dense()?, v.dense()?);
        let (o, lse) = q.storage().attention_forward(&k.storage(), &v.storage(), dims)?;
        let lse = Tensor::from_parts(lse, &shape[..3]);
        let o = Tensor::from_parts(o, &shape);
        Ok(o.record(OP, &[&q, &k, &v], move |g, inputs, o| {
            let g = g.dense()?;
            let (q, k, v) = (&inputs[0], &inputs[1], &inputs[2]);
            let (dq, dk, dv) = q.storage().attention_backward(
                &k.storage(),
                &v.storage(),
                &o.storage(),
                &g.storage(),
                &lse.storage(),
                dims,
            )?;
            Ok(vec![
                Some(Tensor::from_parts(dq, q.shape())),
                Some(Tensor::from_parts(dk, k.shape())),
                Some(Tensor::from_parts(dv, v.shape())),
            ])
        }))
    }
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
    if [kb, kh, kd] != [b, h, d] || v.shape() != k.shape() {
        return Err(Error::shape(
            OP,
            format!(
                "k and v must both be [{b}, {h}, Tk, {d}] to match q [B, H, Tq, D] = {:?}; got {}",
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
    })
}
