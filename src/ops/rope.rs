//! rope: rotary position embedding (Su et al., RoFormer), as Llama applies it to its queries and
//! keys. x is `[batch, seq, heads, head_dim]` (the layout a `[B, T, C]` projection reshapes to, before
//! attention's transpose to `[B, H, T, D]`); the element pairs of every head at position
//! p = position_offset + t are rotated by the angles p·θᵢ, θᵢ = base^(−2i/head_dim):
//!
//! ```text
//! y[a] = x[a]·cos(p·θᵢ) − x[b]·sin(p·θᵢ),   y[b] = x[b]·cos(p·θᵢ) + x[a]·sin(p·θᵢ)
//! ```
//!
//! with (a, b) = (i, i + head_dim/2) in [`RopeLayout::Half`] (Hugging Face's `rotate_half`) or
//! (2i, 2i + 1) in [`RopeLayout::Interleaved`] (GGML / llama.cpp). θᵢ is computed in f64 and
//! rounded once; the angle, its sine and cosine are computed in f32 (f64 for f64 tensors), as
//! Hugging Face computes them in f32. The rotation is orthogonal, so the backward is the rotation
//! by −θ, one more pass of the same kernel.

pub use crate::backend::RopeLayout;
use crate::backend::RopeSpec;
use crate::{Error, Result, Tensor};

impl Tensor {
    /// Rotates `self` (`[batch, seq, heads, head_dim]`, head_dim even) by the positions
    /// `position_offset .. position_offset + seq` with frequencies base^(−2i/head_dim) (Llama 2:
    /// base 10000; SmolLM2: 100000), pairing elements as `layout` says.
    pub fn rope(&self, base: f64, position_offset: usize, layout: RopeLayout) -> Result<Tensor> {
        const OP: &str = "rope";
        let &[_, seq, heads, head_dim] = self.shape() else {
            return Err(Error::shape(
                OP,
                format!(
                    "expected x of shape [batch, seq, heads, head_dim], got {:?}",
                    self.shape()
                ),
            ));
        };
        if head_dim % 2 != 0 {
            return Err(Error::shape(
                OP,
                format!(
                    "head_dim must be even (elements rotate in pairs), got {head_dim} in {:?}",
                    self.shape()
                ),
            ));
        }
        if !(base.is_finite() && base > 0.0) {
            return Err(Error::invalid(
                OP,
                format!("base must be finite and positive, got {base}"),
            ));
        }
        if !self.dtype().is_float() {
            return Err(Error::not_float(OP, self.dtype()));
        }
        if position_offset.checked_add(seq).is_none_or(|end| end > 1 << 24) {
            return Err(Error::invalid(
                OP,
                format!("positions {position_offset} + {seq} exceed 2^24, which f32 angles cannot count exactly"),
            ));
        }
        let spec = RopeSpec {
            seq,
            heads,
            head_dim,
            position_offset,
            base,
            layout,
        };
        self.rotate(spec, false)
    }

    /// The rotation by +θ (or −θ with `inverse`), recording the opposite rotation as its backward.
    fn rotate(&self, spec: RopeSpec, inverse: bool) -> Result<Tensor> {
        let x = self.dense()?;
        let y = Tensor::from_parts(x.storage().rope(&spec, inverse)?, self.shape());
        Ok(y.record("rope", &[self], move |g, _, _| {
            Ok(vec![Some(g.rotate(spec, !inverse)?)])
        }))
    }
}
