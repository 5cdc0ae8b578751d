//! Helpers for testing code built on kiln: [`gradcheck`] compares the gradients that `backward`
//! computes with central finite differences, in f64, as `torch.autograd.gradcheck` does.
//!
//! ```
//! use kiln::{DType, Device, Rng, Tensor};
//! // a custom op composed of kiln ops: softplus(x) = log(1 + exp(x)), weighted so that every
//! // element's gradient counts (a plain sum of a softmax would have a zero gradient)
//! let x = Tensor::randn(&[3, 4], DType::F64, &mut Rng::new(0), &Device::Cpu)?;
//! let w = Tensor::randn(&[3, 4], DType::F64, &mut Rng::new(1), &Device::Cpu)?;
//! kiln::testing::gradcheck(&[x], |t| t[0].exp()?.add_scalar(1.0)?.log()?.mul(&w)?.sum_all())?;
//! # Ok::<(), kiln::Error>(())
//! ```

use crate::{DType, Error, Result, Tensor};

/// The finite-difference step and the tolerance of [`gradcheck_with`]: each analytic gradient
/// element `a` and its central difference `n` must satisfy `|a − n| ≤ atol + rtol·max(|a|, |n|)`.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    /// The step h of `(f(x + h) − f(x − h)) / 2h`.
    pub h: f64,
    /// The relative tolerance.
    pub rtol: f64,
    /// The absolute tolerance.
    pub atol: f64,
}

impl Default for Tolerance {
    /// h = 1e-6, rtol = 1e-6, atol = 1e-8: tight enough to catch a gradient off by 1e-5 relative.
    fn default() -> Self {
        Tolerance {
            h: 1e-6,
            rtol: 1e-6,
            atol: 1e-8,
        }
    }
}

/// [`gradcheck_with`] at the default [`Tolerance`].
pub fn gradcheck(inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) -> Result<()> {
    gradcheck_with(Tolerance::default(), inputs, f)
}

/// Checks the gradients of the scalar `f(inputs)` with respect to every float input against
/// central finite differences. Float inputs must be f64 (differences in f32 are too coarse);
/// integer inputs (ids, masks) are passed through untouched and must receive no gradient. Every
/// gradient must have its input's shape and dtype. `f` is called once with leaves that require a
/// gradient, then twice per input element without recording.
///
/// Returns `Ok(())` when every element agrees, otherwise an error naming the input, the element,
/// the backward value and the finite difference.
pub fn gradcheck_with(tol: Tolerance, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) -> Result<()> {
    let fail = |msg: String| Err(Error::invalid("gradcheck", msg));
    for (i, x) in inputs.iter().enumerate() {
        if x.dtype().is_float() && x.dtype() != DType::F64 {
            return fail(format!("input {i} is {}; gradcheck inputs must be f64", x.dtype()));
        }
    }
    let leaves: Vec<Tensor> = inputs
        .iter()
        .map(|t| {
            if t.dtype().is_float() {
                t.detach().requires_grad()
            } else {
                t.clone()
            }
        })
        .collect();
    let out = f(&leaves)?;
    if out.numel() != 1 {
        return fail(format!("f must return a scalar, got shape {:?}", out.shape()));
    }
    if !out.tracks_grad() {
        return fail("the output does not depend on any float input".into());
    }
    let grads = out.backward()?;
    let eval = |ins: &[Tensor]| -> Result<f64> {
        let _no_grad = crate::no_grad();
        f(ins)?.to_dtype(DType::F64)?.to_vec::<f64>().map(|v| v[0])
    };
    let mut checked = 0usize;
    for (i, (x, leaf)) in inputs.iter().zip(&leaves).enumerate() {
        if !x.dtype().is_float() {
            if grads.get(leaf).is_some() {
                return fail(format!("integer input {i} got a gradient"));
            }
            continue;
        }
        let Some(g) = grads.get(leaf) else {
            return fail(format!("input {i} {:?} got no gradient", x.shape()));
        };
        if g.shape() != x.shape() || g.dtype() != x.dtype() {
            return fail(format!(
                "the gradient of input {i} is {} {:?}, the input {} {:?}",
                g.dtype(),
                g.shape(),
                x.dtype(),
                x.shape()
            ));
        }
        let analytic = g.to_vec::<f64>()?;
        let base = x.to_vec::<f64>()?;
        for (j, &a) in analytic.iter().enumerate() {
            let at = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[j] += delta;
                let mut ins = inputs.to_vec();
                ins[i] = Tensor::from_vec(v, x.shape(), x.device())?;
                eval(&ins)
            };
            let numeric = (at(tol.h)? - at(-tol.h)?) / (2.0 * tol.h);
            let err = (a - numeric).abs();
            let allowed = tol.atol + tol.rtol * a.abs().max(numeric.abs());
            // written so that a NaN on either side fails
            if !(err <= allowed && a.is_finite()) {
                return fail(format!(
                    "input {i} {:?}, element {j}: backward {a:e}, finite difference {numeric:e} \
                     (error {err:e} > allowed {allowed:e})",
                    x.shape()
                ));
            }
            checked += 1;
        }
    }
    if checked == 0 && inputs.iter().any(|t| t.numel() > 0 && t.dtype().is_float()) {
        return fail("nothing was checked".into());
    }
    Ok(())
}
