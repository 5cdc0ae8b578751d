//! Matrix product: 2-D, or batched `[..., M, K] x [..., K, N]` with broadcast batch dims; and
//! `linear` (x·wᵀ + b) with its fused GELU and residual forms.
//!
//! Backward: matmul, da = g·bᵀ and db = aᵀ·g, summed over broadcast batch dims; linear, dx = g·w,
//! dw = gᵀ·x, db = Σ_rows g; linear_gelu, the same from dz = gelu_backward(g, z) with z = x·wᵀ + b
//! kept by the forward; linear_residual, the same and dr = g.

use crate::backend::op::{Epilogue, PerMatrix};
use crate::tensor::layout::{broadcast_shapes, checked_numel, Dims, Layout};
use crate::{DType, Device, Error, Result, Tensor};
use smallvec::SmallVec;

impl Tensor {
    /// `self @ rhs`. Both operands need at least 2 dims; batch dims broadcast.
    /// Transposed or strided views are consumed in place.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.same_device(rhs, "matmul")?;
        let (ls, rs) = (self.shape(), rhs.shape());
        if ls.len() < 2 || rs.len() < 2 {
            return Err(Error::shape(
                "matmul",
                format!("lhs {ls:?} and rhs {rs:?}: both operands need at least 2 dimensions"),
            ));
        }
        let (m, k) = (ls[ls.len() - 2], ls[ls.len() - 1]);
        let (k2, n) = (rs[rs.len() - 2], rs[rs.len() - 1]);
        if k != k2 {
            return Err(Error::shape(
                "matmul",
                format!("lhs {ls:?} and rhs {rs:?}: inner dimensions {k} and {k2} differ"),
            ));
        }
        if self.dtype() != rhs.dtype() {
            return Err(Error::dtype_mismatch("matmul", self.dtype(), rhs.dtype()));
        }
        let (lb, rb) = (&ls[..ls.len() - 2], &rs[..rs.len() - 2]);
        let batch = broadcast_shapes("matmul", lb, rb).map_err(|_| {
            Error::shape(
                "matmul",
                format!("lhs {ls:?} and rhs {rs:?}: batch dimensions {lb:?} and {rb:?} do not broadcast"),
            )
        })?;
        let with = |a, b| [batch.as_slice(), &[a, b]].concat();
        checked_numel("matmul", &with(m, n))?; // [2^40, 1] x [1, 2^40] has more elements than usize holds
        let la = self.layout().broadcast_to("matmul", &with(m, k))?;
        let lb = rhs.layout().broadcast_to("matmul", &with(k, n))?;
        let out = Tensor::from_parts(self.storage().matmul(&la, &rhs.storage(), &lb)?, &with(m, n));
        Ok(out.record("matmul", &[self, rhs], |g, inputs, _| {
            // y = a·b  =>  da = g·bᵀ, db = aᵀ·g, summed over broadcast batch dims
            let (a, b) = (&inputs[0], &inputs[1]);
            let ga = g.matmul(&b.transpose(-2, -1)?)?.sum_to_shape(a.shape())?;
            let gb = a.transpose(-2, -1)?.matmul(g)?.sum_to_shape(b.shape())?;
            Ok(vec![Some(ga), Some(gb)])
        }))
    }
}

/// The fused forms of `x·wᵀ + b` (torch.nn.functional.linear), each one matmul launch on Cuda/Emu
/// with the bias, GELU and residual applied in the kernel's epilogue.
impl Tensor {
    /// `self · wᵀ + bias`: `self` is `[..., in]`, `w` is `[out, in]` (as `kiln::nn::Linear` and
    /// torch.nn.Linear store it), `bias` is `[out]`; the result is `[..., out]`.
    pub fn linear(&self, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        self.linear_fused("linear", w, bias, false, None)
    }

    /// `gelu(self · wᵀ + bias)` with GELU's tanh form, as `linear` followed by `gelu`.
    pub fn linear_gelu(&self, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        self.linear_fused("linear_gelu", w, bias, true, None)
    }

    /// `residual + self · wᵀ + bias`; `residual` has the result's shape `[..., out]`.
    pub fn linear_residual(&self, w: &Tensor, bias: Option<&Tensor>, residual: &Tensor) -> Result<Tensor> {
        self.linear_fused("linear_residual", w, bias, false, Some(residual))
    }

    /// `[self · wᵀ for w in ws]`: the products of one input `[..., in]` with several weights
    /// `[out_i, in]` (a Llama layer's q, k and v projections; its gate and up projections), each
    /// [`Tensor::linear`]`(w, None)`'s result bit for bit. On the CPU, when no graph is recorded
    /// and the input is f32 or bf16 with at most 4 rows (decode), they run in one parallel region:
    /// the weights' rows taken end to end and shared among the threads, a bf16 input widened
    /// once. Otherwise (more rows, CUDA and Emu, a recording forward, other dtypes) one product
    /// after the other, with `linear`'s checks and backward.
    pub fn linear_many(&self, ws: &[&Tensor]) -> Result<PerMatrix<Tensor>> {
        let xs = self.shape();
        let n_in = xs.last().copied();
        let shared = ws.len() >= 2
            && matches!(self.dtype(), DType::F32 | DType::BF16)
            && ws.iter().all(|w| {
                w.shape().len() == 2
                    && Some(w.shape()[1]) == n_in
                    && w.dtype() == self.dtype()
                    && w.device() == self.device()
                    && w.layout().is_contiguous()
            })
            && !(crate::autograd::is_grad_enabled() && (self.tracks_grad() || ws.iter().any(|w| w.tracks_grad())));
        if shared {
            let n_in = n_in.expect("the weights' shapes matched a last dimension");
            let rows: usize = xs[..xs.len() - 1].iter().product();
            let x = if self.layout().is_contiguous() {
                self.clone()
            } else {
                self.contiguous()?
            };
            let lx = x.layout().reshape(&[rows, n_in]).expect("contiguous");
            let storages: PerMatrix<_> = ws.iter().map(|w| w.storage()).collect();
            let operands: PerMatrix<_> = storages.iter().zip(ws).map(|(s, w)| (&**s, w.layout())).collect();
            let ys = x.storage().linear_many(&lx, &operands)?;
            if let Some(ys) = ys {
                return Ok(ys
                    .into_iter()
                    .zip(ws)
                    .map(|(y, w)| {
                        let mut shape = Dims::from(&xs[..xs.len() - 1]);
                        shape.push(w.shape()[0]);
                        Tensor::from_parts(y, &shape)
                    })
                    .collect());
            }
        }
        ws.iter().map(|w| self.linear(w, None)).collect()
    }

    fn linear_fused(
        &self,
        op: &'static str,
        w: &Tensor,
        bias: Option<&Tensor>,
        gelu: bool,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (xs, ws) = (self.shape(), w.shape());
        if xs.is_empty() || ws.len() != 2 || xs[xs.len() - 1] != ws[1] {
            return Err(Error::shape(
                op,
                format!("input {xs:?} and weight {ws:?}: expected input [..., in] and weight [out, in]"),
            ));
        }
        let (n_in, n_out) = (ws[1], ws[0]);
        let lead = &xs[..xs.len() - 1];
        let rows: usize = lead.iter().product();
        let mut out_shape = Dims::from(lead);
        out_shape.push(n_out);
        checked_numel(op, &out_shape)?;
        let mut inputs: SmallVec<[&Tensor; 4]> = SmallVec::from_slice(&[self, w]);
        for (what, t, want) in [
            ("bias", bias, Dims::from(&[n_out][..])),
            ("residual", residual, out_shape.clone()),
        ] {
            let Some(t) = t else { continue };
            self.same_device(t, op)?;
            if t.shape() != want.as_slice() {
                return Err(Error::shape(
                    op,
                    format!(
                        "{what} {:?}: expected {want:?} for input {xs:?} and weight {ws:?}",
                        t.shape()
                    ),
                ));
            }
            if t.dtype() != self.dtype() {
                return Err(Error::dtype_mismatch(op, self.dtype(), t.dtype()));
            }
            inputs.push(t);
        }
        self.same_device(w, op)?;
        if w.dtype() != self.dtype() {
            return Err(Error::dtype_mismatch(op, self.dtype(), w.dtype()));
        }

        // x as [rows, in] and the residual as [rows, out] (free for contiguous tensors), w as wᵀ [in, out].
        let as_matrix = |t: &Tensor, cols: usize| -> Result<(Tensor, Layout)> {
            let t = if t.layout().is_contiguous() {
                t.clone()
            } else {
                t.detach().contiguous()?
            };
            let l = t.layout().reshape(&[rows, cols]).expect("contiguous");
            Ok((t, l))
        };
        let (x2, lx) = as_matrix(self, n_in)?;
        let lw = w.layout().transpose(0, 1);
        let residual2 = residual.map(|r| as_matrix(r, n_out)).transpose()?;
        let (bs, rs) = (bias.map(|b| b.storage()), residual2.as_ref().map(|(r, _)| r.storage()));
        // GELU's backward needs its input z: the same launch stores it (when a backward will run);
        // the CPU stores gelu'(z) instead in f32 and f64, from the GELU's own exponential, so the
        // backward is one multiplication (in bf16/f16 the f32 derivative would be rounded, so z)
        let derivative = *self.device() == Device::Cpu && matches!(self.dtype(), DType::F32 | DType::F64);
        let epi = Epilogue {
            bias: bs.as_deref().zip(bias.map(|b| b.layout())),
            gelu,
            residual: rs.as_deref().zip(residual2.as_ref().map(|(_, l)| l)),
            keep_pre: gelu && Tensor::records(&inputs),
            keep_gelu_derivative: derivative,
        };
        let (y, z) = x2.storage().matmul_fused(&lx, &w.storage(), &lw, &epi)?;
        drop((bs, rs));
        let z = z.map(|z| Tensor::from_parts(z, &out_shape));
        let has_bias = bias.is_some();
        let out = Tensor::from_parts(y, &out_shape);
        Ok(out.record(op, &inputs, move |g, inputs, _| {
            // y = act(z) + r with z = x·wᵀ + b: dz = g·act'(z), dx = dz·w, dw = dzᵀ·x, db = Σ dz, dr = g
            let (x, w) = (&inputs[0], &inputs[1]);
            // z (or gelu'(z)) is kept exactly when there is a GELU
            let dz = match &z {
                Some(d) if derivative => g.mul(d)?,
                Some(z) => g.gelu_backward(z)?,
                None => g.clone(),
            };
            let dz2 = dz.reshape(&[rows, n_out])?;
            let x2 = x.reshape(&[rows, n_in])?;
            // only the gradients a graph input takes: a frozen weight (LoRA's base) costs no dW
            // product, an input that needs none (the first layer's, from a frozen table) no dX
            let dx = match x.tracks_grad() {
                true => Some(dz2.matmul(w)?.reshape(x.shape())?),
                false => None,
            };
            let dw = match w.tracks_grad() {
                true => Some(dz2.transpose(0, 1)?.matmul(&x2)?),
                false => None,
            };
            let mut grads = vec![dx, dw];
            if has_bias {
                let db = match inputs[2].tracks_grad() {
                    true => Some(dz2.sum_to_shape(&[n_out])?),
                    false => None,
                };
                grads.push(db);
            }
            if inputs.len() > grads.len() {
                grads.push(Some(g.clone()));
            }
            Ok(grads)
        }))
    }
}
