//! Every kernel's result is checked against the CPU reference before it is timed, as llm.c's
//! `dev/cuda` does: each case runs its op once on its first input set, at the size it is timed at,
//! and compares the output with the naive f64 loops of `backend::cpu::reference` (or, for the
//! backward passes and the optimizer step that file does not have, the textbook formula written out
//! here in f64). On the CPU this checks the fast paths (GEMM, rayon loops) against the naive ones;
//! on Emu and CUDA it checks the kernels.
//!
//! To keep the reference cheap at GPU sizes, the row-wise ops and the matmuls compare a sample of
//! rows ([`sample`]: the first, the last and some between), attention a sample of heads; outputs that
//! sum over every row (a mean loss, a weight's gradient, an embedding table's gradient) are compared
//! whole.
//!
//! The error of one element is |got − expected| / (|expected| + rms), rms the root mean square of
//! the expected tensor: relative where the values are large, absolute on the tensor's own scale where
//! they cross zero. The worst over all compared elements must stay within the dtype's [`tolerance`].

use crate::backend::cpu::reference as r;
use crate::{DType, Result, Tensor};
use rayon::prelude::*;

/// The outcome of one check.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    /// Elements compared.
    pub compared: usize,
    /// The worst error (see the module's comment).
    pub worst_error: f64,
    pub tolerance: f64,
    /// Where the worst error is: the output's name and the element's flat position in what was
    /// compared.
    pub worst_at: String,
    pub got: f64,
    pub expected: f64,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.worst_error <= self.tolerance
    }
}

/// The largest error accepted for a result computed in `dtype`: f32 rounding (about 6e-8 per
/// operation) summed over thousands of terms stays far below 1e-4; a bf16 result is rounded to 8
/// significant bits (4e-3 relative), and attention also rounds its probabilities and their
/// gradients to bf16 on the way, which over a million compared elements reaches a few 1e-2. A real
/// fault (a wrong scale, mask or tile) is off by the order of the values themselves.
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-10,
        DType::F32 => 1e-4,
        _ => 5e-2,
    }
}

/// The tolerance of the quantized matvecs, which round x to 8 bits per block of 32 before the dot
/// products: each x moves by up to half a step of 1/127 of its block's largest value (about 2.5
/// standard deviations), an error whose standard deviation is about 0.6% of the output's rms
/// whatever K; 6e-2 is ten of them, so that the worst of a million compared outputs passes.
pub const QUANTIZED_TOLERANCE: f64 = 6e-2;

/// Compares one or more outputs, keeping the worst element.
pub struct Comparison {
    check: Check,
}

impl Comparison {
    pub fn new(tolerance: f64) -> Comparison {
        Comparison {
            check: Check {
                compared: 0,
                worst_error: 0.0,
                tolerance,
                worst_at: String::new(),
                got: 0.0,
                expected: 0.0,
            },
        }
    }

    /// Adds output `name`: `got` against `expected` (the same length, or the check fails).
    pub fn compare(mut self, name: &str, got: &[f64], expected: &[f64]) -> Comparison {
        let c = &mut self.check;
        if got.len() != expected.len() {
            c.worst_error = f64::INFINITY;
            c.worst_at = format!("{name}: {} values where {} were expected", got.len(), expected.len());
            return self;
        }
        let rms = (expected.iter().map(|e| e * e).sum::<f64>() / expected.len().max(1) as f64).sqrt();
        let scale = rms.max(f64::MIN_POSITIVE);
        for (i, (&g, &e)) in got.iter().zip(expected).enumerate() {
            let err = (g - e).abs() / (e.abs() + scale);
            // a NaN or infinite result is the worst possible
            let err = if err.is_finite() { err } else { f64::INFINITY };
            if err > c.worst_error || c.worst_at.is_empty() {
                (c.worst_error, c.got, c.expected) = (err, g, e);
                c.worst_at = format!("{name}[{i}]");
            }
        }
        c.compared += got.len();
        self
    }

    pub fn finish(self) -> Check {
        self.check
    }
}

/// A tensor's values on the host in f64 (through f32: every benchmarked dtype fits in it).
pub fn host(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F32)?
        .to_vec::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect())
}

/// Up to 8 indices of `0..n` spread over it, the first and the last included: the rows compared.
pub fn sample(n: usize) -> Vec<usize> {
    const MOST: usize = 8;
    if n <= MOST {
        return (0..n).collect();
    }
    (0..MOST).map(|i| i * (n - 1) / (MOST - 1)).collect()
}

/// Rows `which` of row-major `data` with rows of `width`, one after the other.
pub fn rows(data: &[f64], width: usize, which: &[usize]) -> Vec<f64> {
    which
        .iter()
        .flat_map(|&i| &data[i * width..(i + 1) * width])
        .copied()
        .collect()
}

/// A row-wise op's sampled rows: `got` (the device's output, rows of `out_width`) against
/// `reference` applied to the same rows of each input (rows of `in_width`) and their count.
pub fn compare_rows(
    tolerance: f64,
    (in_width, out_width): (usize, usize),
    inputs: &[Vec<f64>],
    got: &[f64],
    reference: impl Fn(&[Vec<f64>], usize) -> Vec<f64>,
) -> Check {
    let which = sample(got.len() / out_width.max(1));
    let picked: Vec<Vec<f64>> = inputs.iter().map(|x| rows(x, in_width, &which)).collect();
    Comparison::new(tolerance)
        .compare("y", &rows(got, out_width, &which), &reference(&picked, which.len()))
        .finish()
}

/// `a` `[rows, k]` times `b` `[k, n]` in f64, each output row accumulated from b's rows in order
/// (reference.rs's `matmul` walks b by columns, too slow for an 8192-wide b).
/// One thread per row.
pub fn matmul_rows(a: &[f64], b: &[f64], k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; a.len() / k.max(1) * n];
    out.par_chunks_mut(n).zip(a.par_chunks(k)).for_each(|(row, a)| {
        for (p, &av) in a.iter().enumerate() {
            for (o, bv) in row.iter_mut().zip(&b[p * n..(p + 1) * n]) {
                *o += av * bv;
            }
        }
    });
    out
}

/// `x` `[rows, k]` times `wᵀ`, w `[n, k]`, in f64: one dot product per output, one thread per row.
pub fn linear_rows(x: &[f64], w: &[f64], k: usize) -> Vec<f64> {
    x.par_chunks(k)
        .flat_map_iter(|x| {
            w.chunks(k)
                .map(move |w| x.iter().zip(w).map(|(a, b)| a * b).sum::<f64>())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The backward passes and the optimizer step, from their textbook formulas (f64, one row at a time).

/// softmax's backward from y and dy `[rows, c]`: dx = y·(dy − Σ y·dy).
pub fn softmax_backward(y: &[f64], dy: &[f64], c: usize) -> Vec<f64> {
    let mut dx = vec![0.0; y.len()];
    for ((dx, y), dy) in dx.chunks_mut(c).zip(y.chunks(c)).zip(dy.chunks(c)) {
        let dot: f64 = y.iter().zip(dy).map(|(a, b)| a * b).sum();
        for j in 0..c {
            dx[j] = y[j] * (dy[j] - dot);
        }
    }
    dx
}

/// Each row's (x − mean)·rstd and rstd, rstd = 1/√(mean((x − mean)²) + eps) (`centre` true: layer
/// norm) or 1/√(mean(x²) + eps) with no centring (rms norm).
fn normalised_rows(x: &[f64], c: usize, eps: f64, centre: bool) -> Vec<(Vec<f64>, f64)> {
    x.chunks(c)
        .map(|row| {
            let mean = if centre {
                row.iter().sum::<f64>() / c as f64
            } else {
                0.0
            };
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / c as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            (row.iter().map(|v| (v - mean) * rstd).collect(), rstd)
        })
        .collect()
}

/// layer_norm's (or, `centre` false, rms_norm's) backward of `[rows, c]` x with weight w and
/// incoming dy: (dx, dw, db). With x̂ the normalised row and g = dy·w,
/// dx = rstd·(g − mean(g) − x̂·mean(g·x̂)) (rms norm: without the mean(g) term), dw = Σ dy·x̂,
/// db = Σ dy.
pub fn norm_backward(
    x: &[f64],
    w: &[f64],
    dy: &[f64],
    c: usize,
    eps: f64,
    centre: bool,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
    for (row, (xhat, rstd)) in normalised_rows(x, c, eps, centre).into_iter().enumerate() {
        let dy = &dy[row * c..(row + 1) * c];
        let g: Vec<f64> = (0..c).map(|j| dy[j] * w[j]).collect();
        let mean_g = if centre { g.iter().sum::<f64>() / c as f64 } else { 0.0 };
        let mean_gx = (0..c).map(|j| g[j] * xhat[j]).sum::<f64>() / c as f64;
        for j in 0..c {
            dx[row * c + j] = rstd * (g[j] - mean_g - xhat[j] * mean_gx);
            dw[j] += dy[j] * xhat[j];
            db[j] += dy[j];
        }
    }
    (dx, dw, db)
}

/// swiglu's backward: with s = σ(gate), dgate = dy·up·s·(1 + gate·(1 − s)), dup = dy·silu(gate).
pub fn swiglu_backward(gate: &[f64], up: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let s = |g: f64| 1.0 / (1.0 + (-g).exp());
    let dgate = (0..gate.len())
        .map(|i| dy[i] * up[i] * s(gate[i]) * (1.0 + gate[i] * (1.0 - s(gate[i]))))
        .collect();
    let dup = (0..gate.len()).map(|i| dy[i] * r::silu(gate[i])).collect();
    (dgate, dup)
}

/// cross-entropy's gradient of `[rows, c]` logits: (softmax − onehot(target))·scale.
pub fn cross_entropy_backward(logits: &[f64], targets: &[u32], c: usize, scale: f64) -> Vec<f64> {
    let mut dx = r::softmax(logits, &[logits.len() / c, c], 1);
    for (row, &t) in targets.iter().enumerate() {
        dx[row * c + t as usize] -= 1.0;
    }
    dx.iter().map(|v| v * scale).collect()
}

/// One AdamW step (step 1, fresh moments) of parameter p with gradient g: with step 1's bias
/// correction m̂ = g and v̂ = g², p ← p·(1 − lr·wd) − lr·g/(|g| + eps).
pub fn adamw_first_step(p: &[f64], g: &[f64], lr: f64, eps: f64, weight_decay: f64) -> Vec<f64> {
    p.iter()
        .zip(g)
        .map(|(p, g)| p * (1.0 - lr * weight_decay) - lr * g / ((g * g).sqrt() + eps))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_element_is_found_and_nan_fails() {
        let want = [1.0, -2.0, 0.0, 4.0];
        let c = Comparison::new(1e-3)
            .compare("a", &[1.0, -2.0, 0.0, 4.0], &want)
            .compare("b", &[1.0, -2.0, 0.5, 4.0], &want)
            .finish();
        // rms of want = √(21/4); at b[2] the error is 0.5 / rms
        assert_eq!((c.worst_at.as_str(), c.got, c.expected), ("b[2]", 0.5, 0.0));
        assert!((c.worst_error - 0.5 / (21.0f64 / 4.0).sqrt()).abs() < 1e-12);
        assert!(!c.passed() && c.compared == 8);
        let c = Comparison::new(1e-3)
            .compare("y", &[f64::NAN, 1.0], &[0.0, 1.0])
            .finish();
        assert!(!c.passed() && c.worst_at == "y[0]" && c.worst_error.is_infinite());
        let c = Comparison::new(1e-3).compare("y", &[1.0], &[1.0, 2.0]).finish();
        assert!(!c.passed() && c.worst_at.contains("1 values where 2"), "{c:?}");
        assert!(Comparison::new(1e-6)
            .compare("y", &[1.0, 2.0], &[1.0, 2.0])
            .finish()
            .passed());
    }

    #[test]
    fn row_products_match_the_reference_matmul() {
        let a = [1.0, 2.0, -1.0, 0.5, 3.0, -2.0]; // [2, 3]
        let b = [1.0, 0.0, 2.0, -1.0, 1.0, 1.0, 0.5, 4.0, -3.0, 2.0, 0.0, 1.0]; // [3, 4]
        assert_eq!(matmul_rows(&a, &b, 3, 4), r::matmul(&a, &[2, 3], &b, &[3, 4]).0);
        let bt = r::transpose(&b, &[3, 4], 0, 1).0;
        assert_eq!(linear_rows(&a, &bt, 3), r::matmul(&a, &[2, 3], &b, &[3, 4]).0);
    }

    #[test]
    fn samples_cover_both_ends() {
        assert_eq!(sample(3), vec![0, 1, 2]);
        let s = sample(1000);
        assert_eq!((s.len(), s[0], s[7]), (8, 0, 999));
        assert_eq!(rows(&[0., 1., 2., 3., 4., 5.], 2, &[2, 0]), vec![4., 5., 0., 1.]);
    }

    /// The written-out backward formulas against central differences of the reference forwards.
    #[test]
    fn backward_formulas_match_finite_differences() {
        let x = [0.3, -1.2, 0.7, 2.0, -0.4, 0.1];
        let dy = [0.5, -0.25, 1.5, -1.0, 0.75, 0.2];
        let w = [1.5, -0.5, 0.8];
        let h = 1e-6;
        // the directional derivative of Σ dy·f(x) along unit vector e_i
        let numeric = |f: &dyn Fn(&[f64]) -> Vec<f64>, x: &[f64], i: usize| {
            let (mut a, mut b) = (x.to_vec(), x.to_vec());
            a[i] += h;
            b[i] -= h;
            let (fa, fb) = (f(&a), f(&b));
            (0..fa.len()).map(|j| dy[j] * (fa[j] - fb[j])).sum::<f64>() / (2.0 * h)
        };
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        let y = r::softmax(&x, &[2, 3], 1);
        let dx = softmax_backward(&y, &dy, 3);
        for (i, &d) in dx.iter().enumerate() {
            close(d, numeric(&|x| r::softmax(x, &[2, 3], 1), &x, i));
        }
        for centre in [true, false] {
            let forward = |x: &[f64]| {
                if centre {
                    r::layer_norm(x, &[2, 3], &w, None, 1e-5)
                } else {
                    r::rms_norm(x, &[2, 3], &w, 1e-5)
                }
            };
            let (dx, dw, db) = norm_backward(&x, &w, &dy, 3, 1e-5, centre);
            for (i, &d) in dx.iter().enumerate() {
                close(d, numeric(&forward, &x, i));
            }
            let xhat = normalised_rows(&x, 3, 1e-5, centre);
            close(dw[1], dy[1] * xhat[0].0[1] + dy[4] * xhat[1].0[1]);
            close(db[2], dy[2] + dy[5]);
        }
        let (dg, du) = swiglu_backward(&x, &w.repeat(2), &dy);
        for i in 0..6 {
            let up = w.repeat(2);
            close(
                dg[i],
                numeric(&|g| (0..6).map(|j| r::swiglu(g[j], up[j])).collect(), &x, i),
            );
            close(
                du[i],
                numeric(&|u| (0..6).map(|j| r::swiglu(x[j], u[j])).collect(), &up, i),
            );
        }
        // d/dlogits of mean cross-entropy over 2 rows
        let ce = cross_entropy_backward(&x, &[2, 0], 3, 0.5);
        for i in 0..6 {
            let (mut a, mut b) = (x.to_vec(), x.to_vec());
            a[i] += h;
            b[i] -= h;
            let num =
                (r::cross_entropy(&a, 2, 3, &[2, 0], None) - r::cross_entropy(&b, 2, 3, &[2, 0], None)) / (2.0 * h);
            close(ce[i], num);
        }
        // AdamW's first step moves every weight by lr (times the gradient's sign) after decay
        let p = adamw_first_step(&[1.0, -2.0], &[0.5, -3.0], 0.1, 0.0, 0.5);
        close(p[0], 1.0 * 0.95 - 0.1);
        close(p[1], -2.0 * 0.95 + 0.1);
    }
}
