//! Naive f64 reference implementations, written to be read: the fast paths are tested
//! against these (tests/ops_vs_reference.rs).
//!
//! Every function takes row-major `&[f64]` data plus its shape and returns fresh row-major
//! data (and the result's shape where it is not obvious). The loops are the textbook
//! definitions: no threads, no blocking, no strides, no clever accumulation order. This
//! file deliberately uses nothing from the code it checks (no `Layout`, no CPU kernels):
//! the only index arithmetic is [`unravel`] and [`ravel`] below.
//!
//! Conventions shared with the tensor API:
//! - broadcasting follows NumPy: shapes are aligned at their last dim, and a dim of size 1
//!   (or a missing leading dim) repeats to match the other side;
//! - dims are already resolved to `0..rank` (no negative dims here);
//! - booleans (comparisons, conditions) are f64 0.0 / 1.0, or a non-zero f64 for "true".

// ---------------------------------------------------------------------------------------
// Index arithmetic: the one place where multi-indices and flat row-major offsets meet.
// ---------------------------------------------------------------------------------------

/// The number of elements of `shape` (1 for a scalar, 0 if any dim is 0).
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// The multi-index of row-major position `flat` in `shape` (the last dim varies fastest).
pub fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        index[d] = flat % shape[d];
        flat /= shape[d];
    }
    index
}

/// The row-major position of `index` in `shape`; the inverse of [`unravel`].
pub fn ravel(index: &[usize], shape: &[usize]) -> usize {
    assert_eq!(index.len(), shape.len(), "index rank and shape rank differ");
    let mut flat = 0;
    for (&i, &size) in index.iter().zip(shape) {
        assert!(i < size, "index {index:?} is out of bounds for shape {shape:?}");
        flat = flat * size + i;
    }
    flat
}

// ---------------------------------------------------------------------------------------
// Unary maps.
// ---------------------------------------------------------------------------------------

/// `f` of every element.
pub fn map(x: &[f64], f: impl Fn(f64) -> f64) -> Vec<f64> {
    x.iter().map(|&v| f(v)).collect()
}

pub fn neg(x: f64) -> f64 {
    -x
}

pub fn exp(x: f64) -> f64 {
    x.exp()
}

/// Natural logarithm (NaN below 0, -inf at 0).
pub fn log(x: f64) -> f64 {
    x.ln()
}

pub fn sqrt(x: f64) -> f64 {
    x.sqrt()
}

pub fn tanh(x: f64) -> f64 {
    x.tanh()
}

/// GELU, GPT-2's tanh approximation: ½·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
pub fn gelu(x: f64) -> f64 {
    let sqrt_2_over_pi = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (sqrt_2_over_pi * (x + 0.044715 * x * x * x)).tanh())
}

/// GELU's backward: the incoming gradient `dy` times gelu'(z), differentiating the tanh form
/// term by term: ½·(1 + tanh u) + ½·z·(1 − tanh² u)·du/dz with u = √(2/π)·(z + 0.044715·z³).
pub fn gelu_backward(dy: f64, z: f64) -> f64 {
    let sqrt_2_over_pi = (2.0 / std::f64::consts::PI).sqrt();
    let t = (sqrt_2_over_pi * (z + 0.044715 * z * z * z)).tanh();
    let du = sqrt_2_over_pi * (1.0 + 3.0 * 0.044715 * z * z);
    dy * (0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * du)
}

/// max(x, 0); NaN stays NaN (as PyTorch: a NaN must not be hidden).
pub fn relu(x: f64) -> f64 {
    if x.is_nan() || x > 0.0 {
        x
    } else {
        0.0
    }
}

/// |x|.
pub fn abs(x: f64) -> f64 {
    x.abs()
}

/// The logistic function 1 / (1 + e⁻ˣ).
pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// x limited to [min, max]; NaN stays NaN.
pub fn clamp(x: f64, min: f64, max: f64) -> f64 {
    if x < min {
        min
    } else if x > max {
        max
    } else {
        x
    }
}

/// The exact GELU: x·Φ(x) = ½·x·(1 + erf(x/√2)) (PyTorch's `gelu` without `approximate`).
pub fn gelu_erf(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

/// 1 / x.
pub fn recip(x: f64) -> f64 {
    1.0 / x
}

/// x raised to the constant power `p`.
pub fn powf(x: f64, p: f64) -> f64 {
    x.powf(p)
}

/// x·mul + add.
pub fn affine(x: f64, mul: f64, add: f64) -> f64 {
    x * mul + add
}

// ---------------------------------------------------------------------------------------
// Broadcasting and elementwise functions of several tensors.
// ---------------------------------------------------------------------------------------

/// The NumPy broadcast of two shapes, or `None` if they are incompatible.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    // Size of dim `d` of the result as seen from `shape` (1 where `shape` has no such dim).
    let size = |shape: &[usize], d: usize| {
        if d < rank - shape.len() {
            1
        } else {
            shape[d - (rank - shape.len())]
        }
    };
    (0..rank)
        .map(|d| match (size(a, d), size(b, d)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// `x` (of `shape`) repeated to `target`: element `out[i]` is `x[j]` where `j` drops the
/// leading dims `x` lacks and is 0 wherever `x` has a dim of size 1.
pub fn broadcast_to(x: &[f64], shape: &[usize], target: &[usize]) -> Vec<f64> {
    assert!(shape.len() <= target.len(), "cannot broadcast {shape:?} to {target:?}");
    let extra = target.len() - shape.len();
    (0..numel(target))
        .map(|flat| {
            let out_index = unravel(flat, target);
            let in_index: Vec<usize> = shape
                .iter()
                .enumerate()
                .map(|(d, &size)| {
                    let i = out_index[d + extra];
                    assert!(
                        size == 1 || size == target[d + extra],
                        "cannot broadcast {shape:?} to {target:?}"
                    );
                    if size == 1 {
                        0
                    } else {
                        i
                    }
                })
                .collect();
            x[ravel(&in_index, shape)]
        })
        .collect()
}

/// `f(a, b)` elementwise over the broadcast of both operands; returns (data, shape).
pub fn binary(
    a: &[f64],
    a_shape: &[usize],
    b: &[f64],
    b_shape: &[usize],
    f: impl Fn(f64, f64) -> f64,
) -> (Vec<f64>, Vec<usize>) {
    let shape = broadcast_shape(a_shape, b_shape).expect("shapes must broadcast");
    let a = broadcast_to(a, a_shape, &shape);
    let b = broadcast_to(b, b_shape, &shape);
    let out = a.iter().zip(&b).map(|(&x, &y)| f(x, y)).collect();
    (out, shape)
}

pub fn add(x: f64, y: f64) -> f64 {
    x + y
}

pub fn sub(x: f64, y: f64) -> f64 {
    x - y
}

pub fn mul(x: f64, y: f64) -> f64 {
    x * y
}

pub fn div(x: f64, y: f64) -> f64 {
    x / y
}

/// The larger of x and y; NaN if either is NaN (as PyTorch, unlike `f64::max`).
pub fn maximum(x: f64, y: f64) -> f64 {
    if x.is_nan() || y.is_nan() {
        f64::NAN
    } else if x > y {
        x
    } else {
        y
    }
}

/// The smaller of x and y; NaN if either is NaN.
pub fn minimum(x: f64, y: f64) -> f64 {
    if x.is_nan() || y.is_nan() {
        f64::NAN
    } else if x < y {
        x
    } else {
        y
    }
}

/// 1.0 if `holds`, else 0.0: comparisons return these.
fn indicator(holds: bool) -> f64 {
    if holds {
        1.0
    } else {
        0.0
    }
}

pub fn eq(x: f64, y: f64) -> f64 {
    indicator(x == y)
}

pub fn ne(x: f64, y: f64) -> f64 {
    indicator(x != y)
}

pub fn lt(x: f64, y: f64) -> f64 {
    indicator(x < y)
}

pub fn le(x: f64, y: f64) -> f64 {
    indicator(x <= y)
}

pub fn gt(x: f64, y: f64) -> f64 {
    indicator(x > y)
}

pub fn ge(x: f64, y: f64) -> f64 {
    indicator(x >= y)
}

/// `cond != 0 ? on_true : on_false` elementwise, all three broadcast together.
pub fn where_cond(
    cond: &[f64],
    cond_shape: &[usize],
    on_true: &[f64],
    true_shape: &[usize],
    on_false: &[f64],
    false_shape: &[usize],
) -> (Vec<f64>, Vec<usize>) {
    let shape = broadcast_shape(cond_shape, true_shape)
        .and_then(|s| broadcast_shape(&s, false_shape))
        .expect("shapes must broadcast");
    let c = broadcast_to(cond, cond_shape, &shape);
    let t = broadcast_to(on_true, true_shape, &shape);
    let f = broadcast_to(on_false, false_shape, &shape);
    let out = (0..numel(&shape))
        .map(|i| if c[i] != 0.0 { t[i] } else { f[i] })
        .collect();
    (out, shape)
}

/// `value` where `mask` (broadcast to `x`'s shape) is non-zero, `x` elsewhere.
pub fn masked_fill(x: &[f64], shape: &[usize], mask: &[f64], mask_shape: &[usize], value: f64) -> Vec<f64> {
    let mask = broadcast_to(mask, mask_shape, shape);
    x.iter()
        .zip(&mask)
        .map(|(&v, &m)| if m != 0.0 { value } else { v })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Reductions.
// ---------------------------------------------------------------------------------------

/// The shape left after reducing `dims`: those dims become 1 (keepdim) or disappear.
pub fn reduced_shape(shape: &[usize], dims: &[usize], keepdim: bool) -> Vec<usize> {
    let mut out = Vec::new();
    for (d, &size) in shape.iter().enumerate() {
        if !dims.contains(&d) {
            out.push(size);
        } else if keepdim {
            out.push(1);
        }
    }
    out
}

/// Folds every element into the output slot it reduces to: the output index is the input
/// index with the reduced dims set to 0 (in the keepdim shape). Starts each slot at `init`.
/// Returns (data, shape) with the shape as `keepdim` asks (the data is the same either way).
pub fn reduce(
    x: &[f64],
    shape: &[usize],
    dims: &[usize],
    keepdim: bool,
    init: f64,
    f: impl Fn(f64, f64) -> f64,
) -> (Vec<f64>, Vec<usize>) {
    let kept = reduced_shape(shape, dims, true);
    let mut out = vec![init; numel(&kept)];
    for (flat, &v) in x.iter().enumerate() {
        let mut index = unravel(flat, shape);
        for &d in dims {
            index[d] = 0;
        }
        let slot = ravel(&index, &kept);
        out[slot] = f(out[slot], v);
    }
    (out, reduced_shape(shape, dims, keepdim))
}

pub fn sum(x: &[f64], shape: &[usize], dims: &[usize], keepdim: bool) -> (Vec<f64>, Vec<usize>) {
    reduce(x, shape, dims, keepdim, 0.0, add)
}

/// The sum divided by the number of elements reduced into each slot.
pub fn mean(x: &[f64], shape: &[usize], dims: &[usize], keepdim: bool) -> (Vec<f64>, Vec<usize>) {
    let count: usize = dims.iter().map(|&d| shape[d]).product();
    let (total, out_shape) = sum(x, shape, dims, keepdim);
    (map(&total, |s| s / count as f64), out_shape)
}

/// Maximum over `dims` (which must be non-empty in size); NaN wins.
pub fn max(x: &[f64], shape: &[usize], dims: &[usize], keepdim: bool) -> (Vec<f64>, Vec<usize>) {
    reduce(x, shape, dims, keepdim, f64::NEG_INFINITY, maximum)
}

/// Minimum over `dims`; NaN wins.
pub fn min(x: &[f64], shape: &[usize], dims: &[usize], keepdim: bool) -> (Vec<f64>, Vec<usize>) {
    reduce(x, shape, dims, keepdim, f64::INFINITY, minimum)
}

// ---------------------------------------------------------------------------------------
// Matrix product.
// ---------------------------------------------------------------------------------------

/// `a` `[batch_a.., m, k]` times `b` `[batch_b.., k, n]`, batch dims broadcast; returns
/// (data, shape `[batch.., m, n]`). Each entry is a plain dot product in f64.
pub fn matmul(a: &[f64], a_shape: &[usize], b: &[f64], b_shape: &[usize]) -> (Vec<f64>, Vec<usize>) {
    let (ra, rb) = (a_shape.len(), b_shape.len());
    assert!(ra >= 2 && rb >= 2, "matmul needs at least 2-D operands");
    let (m, k) = (a_shape[ra - 2], a_shape[ra - 1]);
    let (k2, n) = (b_shape[rb - 2], b_shape[rb - 1]);
    assert_eq!(k, k2, "inner dimensions differ");
    let batch = broadcast_shape(&a_shape[..ra - 2], &b_shape[..rb - 2]).expect("batch dims must broadcast");
    let with = |rows: usize, cols: usize| [batch.as_slice(), &[rows, cols]].concat();
    // Materialise the batch broadcast, then every batch entry is an ordinary [m,k]x[k,n].
    let a = broadcast_to(a, a_shape, &with(m, k));
    let b = broadcast_to(b, b_shape, &with(k, n));
    let mut out = vec![0.0; numel(&batch) * m * n];
    for batch_entry in 0..numel(&batch) {
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0;
                for p in 0..k {
                    acc += a[(batch_entry * m + i) * k + p] * b[(batch_entry * k + p) * n + j];
                }
                out[(batch_entry * m + i) * n + j] = acc;
            }
        }
    }
    (out, with(m, n))
}

// ---------------------------------------------------------------------------------------
// Row-wise fused ops: softmax, log_softmax, layer_norm, cross_entropy.
// ---------------------------------------------------------------------------------------

/// The flat positions of every line along `dim`: one `Vec` per combination of the other
/// indices, holding the `shape[dim]` positions of that line in order.
pub fn lines_along(shape: &[usize], dim: usize) -> Vec<Vec<usize>> {
    let mut others = shape.to_vec();
    others[dim] = 1;
    (0..numel(&others))
        .map(|o| {
            let mut index = unravel(o, &others);
            (0..shape[dim])
                .map(|i| {
                    index[dim] = i;
                    ravel(&index, shape)
                })
                .collect()
        })
        .collect()
}

/// exp(x − max) / Σ exp(x − max) along `dim`. A line that is entirely -inf has no
/// probability mass and gives zeros.
pub fn softmax(x: &[f64], shape: &[usize], dim: usize) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for line in lines_along(shape, dim) {
        let max = line.iter().map(|&i| x[i]).fold(f64::NEG_INFINITY, f64::max);
        if max == f64::NEG_INFINITY {
            continue; // all masked: zeros
        }
        let total: f64 = line.iter().map(|&i| (x[i] - max).exp()).sum();
        for &i in &line {
            out[i] = (x[i] - max).exp() / total;
        }
    }
    out
}

/// x − log Σ exp(x) along `dim` (computed as x − max − log Σ exp(x − max)). A line that is
/// entirely -inf gives -inf.
pub fn log_softmax(x: &[f64], shape: &[usize], dim: usize) -> Vec<f64> {
    let mut out = vec![f64::NEG_INFINITY; x.len()];
    for line in lines_along(shape, dim) {
        let max = line.iter().map(|&i| x[i]).fold(f64::NEG_INFINITY, f64::max);
        if max == f64::NEG_INFINITY {
            continue; // all masked: -inf
        }
        let log_total = line.iter().map(|&i| (x[i] - max).exp()).sum::<f64>().ln();
        for &i in &line {
            out[i] = x[i] - max - log_total;
        }
    }
    out
}

/// Normalises each row of the last dim `C`: (x − mean)/√(var + eps)·weight + bias, with the
/// biased variance (divided by C, as PyTorch). `bias` `None` means no shift.
pub fn layer_norm(x: &[f64], shape: &[usize], weight: &[f64], bias: Option<&[f64]>, eps: f64) -> Vec<f64> {
    let c = *shape.last().expect("layer_norm needs at least one dim");
    assert_eq!(weight.len(), c, "weight must have C elements");
    let mut out = vec![0.0; x.len()];
    for line in lines_along(shape, shape.len() - 1) {
        let mean = line.iter().map(|&i| x[i]).sum::<f64>() / c as f64;
        let var = line.iter().map(|&i| (x[i] - mean).powi(2)).sum::<f64>() / c as f64;
        let std = (var + eps).sqrt();
        for (j, &i) in line.iter().enumerate() {
            let shift = bias.map_or(0.0, |b| b[j]);
            out[i] = (x[i] - mean) / std * weight[j] + shift;
        }
    }
    out
}

/// Mean over the rows of `logits` `[n, c]` of `−log softmax(row)[target]`, skipping rows whose
/// target equals `ignore_index`. NaN if every row is ignored (the mean of nothing).
pub fn cross_entropy(logits: &[f64], n: usize, c: usize, targets: &[u32], ignore_index: Option<u32>) -> f64 {
    assert_eq!(logits.len(), n * c, "logits must be [n, c]");
    assert_eq!(targets.len(), n, "one target per row");
    let log_probs = log_softmax(logits, &[n, c], 1);
    let (mut total, mut count) = (0.0, 0);
    for (row, &t) in targets.iter().enumerate() {
        if Some(t) == ignore_index {
            continue;
        }
        total -= log_probs[row * c + t as usize];
        count += 1;
    }
    total / count as f64
}

// ---------------------------------------------------------------------------------------
// Attention.
// ---------------------------------------------------------------------------------------

/// Whether query `i` of `tq` may see key `j` of `tk`: always, or (causal) when the key's
/// position is not after the query's absolute position `tk − tq + i`.
fn attends(causal: bool, tq: usize, tk: usize, i: usize, j: usize) -> bool {
    !causal || j + tq <= tk + i
}

/// The attention probabilities of one head: `p[i][j]` = softmax over the keys query `i` sees
/// of q_i·k_j/√d, 0 for the keys it does not see. `q` is `[tq, d]`, `k` is `[tk, d]`.
fn attention_probs(q: &[f64], k: &[f64], tq: usize, tk: usize, d: usize, causal: bool) -> Vec<Vec<f64>> {
    let scale = 1.0 / (d as f64).sqrt();
    (0..tq)
        .map(|i| {
            let scores: Vec<f64> = (0..tk)
                .map(|j| {
                    if attends(causal, tq, tk, i, j) {
                        (0..d).map(|c| q[i * d + c] * k[j * d + c]).sum::<f64>() * scale
                    } else {
                        f64::NEG_INFINITY
                    }
                })
                .collect();
            softmax(&scores, &[tk], 0)
        })
        .collect()
}

/// softmax(q·kᵀ/√d)·v for every head: q is `[heads, tq, d]`, k and v are `[heads, tk, d]`.
/// Causal: query i sits at position tk − tq + i and sees keys 0..=tk − tq + i. Returns the
/// output `[heads, tq, d]`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    heads: usize,
    tq: usize,
    tk: usize,
    d: usize,
    causal: bool,
) -> Vec<f64> {
    let mut out = vec![0.0; heads * tq * d];
    for h in 0..heads {
        let (qh, kh, vh) = (&q[h * tq * d..], &k[h * tk * d..], &v[h * tk * d..]);
        let p = attention_probs(qh, kh, tq, tk, d, causal);
        for i in 0..tq {
            for c in 0..d {
                out[(h * tq + i) * d + c] = (0..tk).map(|j| p[i][j] * vh[j * d + c]).sum();
            }
        }
    }
    out
}

/// The gradients (dq, dk, dv) of Σ(attention(q, k, v) ∘ dout), by the chain rule through the
/// softmax's Jacobian: with P the probabilities and s = 1/√d,
///   dV = Pᵀ·dout,  dP = dout·vᵀ,  dScore_ij = P_ij·(dP_ij − Σ_l P_il·dP_il),
///   dq = s·dScore·k,  dk = s·dScoreᵀ·q.
#[allow(clippy::too_many_arguments)]
pub fn attention_grads(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    dout: &[f64],
    heads: usize,
    tq: usize,
    tk: usize,
    d: usize,
    causal: bool,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let scale = 1.0 / (d as f64).sqrt();
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    for h in 0..heads {
        let (qh, kh, vh) = (&q[h * tq * d..], &k[h * tk * d..], &v[h * tk * d..]);
        let gh = &dout[h * tq * d..];
        let p = attention_probs(qh, kh, tq, tk, d, causal);
        for i in 0..tq {
            let dp: Vec<f64> = (0..tk)
                .map(|j| (0..d).map(|c| gh[i * d + c] * vh[j * d + c]).sum())
                .collect();
            let mean: f64 = (0..tk).map(|j| p[i][j] * dp[j]).sum();
            for j in 0..tk {
                let dscore = p[i][j] * (dp[j] - mean);
                for c in 0..d {
                    dq[(h * tq + i) * d + c] += scale * dscore * kh[j * d + c];
                    dk[(h * tk + j) * d + c] += scale * dscore * qh[i * d + c];
                    dv[(h * tk + j) * d + c] += p[i][j] * gh[i * d + c];
                }
            }
        }
    }
    (dq, dk, dv)
}

// ---------------------------------------------------------------------------------------
// Indexing.
// ---------------------------------------------------------------------------------------

/// The entries `ids` of dimension `dim`, in that order: `out[.., j, ..] = x[.., ids[j], ..]`.
/// Returns (data, shape) with `shape[dim]` replaced by `ids.len()`.
pub fn index_select(x: &[f64], shape: &[usize], dim: usize, ids: &[u32]) -> (Vec<f64>, Vec<usize>) {
    let mut out_shape = shape.to_vec();
    out_shape[dim] = ids.len();
    let out = (0..numel(&out_shape))
        .map(|flat| {
            let mut index = unravel(flat, &out_shape);
            index[dim] = ids[index[dim]] as usize;
            x[ravel(&index, shape)]
        })
        .collect();
    (out, out_shape)
}

/// Embedding lookup: rows `ids` (any shape) of the table `weight` `[vocab, c]`; the result
/// has shape `[ids_shape.., c]`.
pub fn embedding(ids: &[u32], ids_shape: &[usize], weight: &[f64], vocab: usize, c: usize) -> (Vec<f64>, Vec<usize>) {
    assert_eq!(ids.len(), numel(ids_shape), "ids must fill their shape");
    let (rows, _) = index_select(weight, &[vocab, c], 0, ids);
    (rows, [ids_shape, &[c]].concat())
}

// ---------------------------------------------------------------------------------------
// Shape ops, as index remaps.
// ---------------------------------------------------------------------------------------

/// Reorders dims: result dim `i` is input dim `dims[i]`. Returns (data, shape).
pub fn permute(x: &[f64], shape: &[usize], dims: &[usize]) -> (Vec<f64>, Vec<usize>) {
    let out_shape: Vec<usize> = dims.iter().map(|&d| shape[d]).collect();
    let out = (0..numel(&out_shape))
        .map(|flat| {
            let out_index = unravel(flat, &out_shape);
            let mut in_index = vec![0; shape.len()];
            for (i, &d) in dims.iter().enumerate() {
                in_index[d] = out_index[i];
            }
            x[ravel(&in_index, shape)]
        })
        .collect();
    (out, out_shape)
}

/// Swaps dims `d0` and `d1`. Returns (data, shape).
pub fn transpose(x: &[f64], shape: &[usize], d0: usize, d1: usize) -> (Vec<f64>, Vec<usize>) {
    let mut dims: Vec<usize> = (0..shape.len()).collect();
    dims.swap(d0, d1);
    permute(x, shape, &dims)
}

/// Elements `start..start + len` of dimension `dim`. Returns (data, shape).
pub fn narrow(x: &[f64], shape: &[usize], dim: usize, start: usize, len: usize) -> (Vec<f64>, Vec<usize>) {
    assert!(start + len <= shape[dim], "narrow out of bounds");
    let mut out_shape = shape.to_vec();
    out_shape[dim] = len;
    let out = (0..numel(&out_shape))
        .map(|flat| {
            let mut index = unravel(flat, &out_shape);
            index[dim] += start;
            x[ravel(&index, shape)]
        })
        .collect();
    (out, out_shape)
}

/// Joins `parts` (data, shape) along `dim`; the other dims must agree. Returns (data, shape).
pub fn cat(parts: &[(&[f64], &[usize])], dim: usize) -> (Vec<f64>, Vec<usize>) {
    let mut out_shape = parts[0].1.to_vec();
    out_shape[dim] = parts.iter().map(|(_, s)| s[dim]).sum();
    let out = (0..numel(&out_shape))
        .map(|flat| {
            let mut index = unravel(flat, &out_shape);
            // Walk the parts until the one that holds position index[dim].
            for &(data, shape) in parts {
                if index[dim] < shape[dim] {
                    return data[ravel(&index, shape)];
                }
                index[dim] -= shape[dim];
            }
            unreachable!("index within the joined dim")
        })
        .collect();
    (out, out_shape)
}

// ---------------------------------------------------------------------------------------
// Llama's ops: silu, swiglu, rms_norm, rope.
// ---------------------------------------------------------------------------------------

/// SiLU: x·σ(x) = x / (1 + e⁻ˣ).
pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// SwiGLU: silu(gate)·up.
pub fn swiglu(gate: f64, up: f64) -> f64 {
    silu(gate) * up
}

/// RMSNorm over the last dim: x / √(mean(x²) + eps) · weight.
pub fn rms_norm(x: &[f64], shape: &[usize], weight: &[f64], eps: f64) -> Vec<f64> {
    let c = *shape.last().expect("rms_norm needs at least one dim");
    assert_eq!(weight.len(), c, "weight must have C elements");
    let mut out = vec![0.0; x.len()];
    for line in lines_along(shape, shape.len() - 1) {
        let mean_sq = line.iter().map(|&i| x[i] * x[i]).sum::<f64>() / c as f64;
        let rms = (mean_sq + eps).sqrt();
        for (j, &i) in line.iter().enumerate() {
            out[i] = x[i] / rms * weight[j];
        }
    }
    out
}

/// Rotary position embedding of x `[batch, seq, heads, head_dim]`: at position
/// p = `position_offset` + t, the pair (a, b) of frequency i (θᵢ = base^(−2i/head_dim)) becomes
/// `(x[a]·cos pθᵢ − x[b]·sin pθᵢ, x[b]·cos pθᵢ + x[a]·sin pθᵢ)`, with (a, b) = (i, i + head_dim/2)
/// (Hugging Face's rotate_half) or, `interleaved`, (2i, 2i + 1) (GGML). All in f64.
pub fn rope(x: &[f64], shape: &[usize], base: f64, position_offset: usize, interleaved: bool) -> Vec<f64> {
    let &[batch, seq, heads, d] = shape else {
        panic!("rope needs [batch, seq, heads, head_dim], got {shape:?}")
    };
    assert_eq!(d % 2, 0, "head_dim must be even");
    let mut out = vec![0.0; x.len()];
    for b in 0..batch {
        for t in 0..seq {
            let p = (position_offset + t) as f64;
            for h in 0..heads {
                for i in 0..d / 2 {
                    let theta = base.powf(-2.0 * i as f64 / d as f64);
                    let (sin, cos) = (p * theta).sin_cos();
                    let (ia, ib) = if interleaved {
                        (2 * i, 2 * i + 1)
                    } else {
                        (i, i + d / 2)
                    };
                    let at = |j: usize| ravel(&[b, t, h, j], shape);
                    let (xa, xb) = (x[at(ia)], x[at(ib)]);
                    out[at(ia)] = xa * cos - xb * sin;
                    out[at(ib)] = xb * cos + xa * sin;
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Everyday ops: argmax/argmin, gather/scatter_add, variance, losses.
// ---------------------------------------------------------------------------------------

/// The position along `dim` of the largest (`largest`) or smallest element of each line, the first
/// one among ties; a NaN counts as the extreme (as PyTorch). The shape is `shape` without `dim`.
pub fn arg_extremum(x: &[f64], shape: &[usize], dim: usize, largest: bool) -> (Vec<u32>, Vec<usize>) {
    let out = lines_along(shape, dim)
        .into_iter()
        .map(|line| {
            let mut best = 0;
            for (j, &i) in line.iter().enumerate() {
                let (v, b) = (x[i], x[line[best]]);
                if b.is_nan() {
                    break;
                }
                if v.is_nan() || (largest && v > b) || (!largest && v < b) {
                    best = j;
                }
            }
            best as u32
        })
        .collect();
    (out, reduced_shape(shape, &[dim], false))
}

/// `out[i][j][k] = x[i][index[i][j][k]][k]` for `dim` = 1 (and likewise for any dim): the result
/// has `index`'s shape, which matches `shape` except along `dim`.
pub fn gather(x: &[f64], shape: &[usize], dim: usize, index: &[u32], index_shape: &[usize]) -> Vec<f64> {
    (0..numel(index_shape))
        .map(|flat| {
            let mut at = unravel(flat, index_shape);
            at[dim] = index[flat] as usize;
            x[ravel(&at, shape)]
        })
        .collect()
}

/// `x` (of `shape`) with every `src` element added at its position with the coordinate along `dim`
/// replaced by `index`'s (`src` and `index` share `index_shape`), in row-major order of `src`.
pub fn scatter_add(
    x: &[f64],
    shape: &[usize],
    dim: usize,
    index: &[u32],
    index_shape: &[usize],
    src: &[f64],
) -> Vec<f64> {
    let mut out = x.to_vec();
    for flat in 0..numel(index_shape) {
        let mut at = unravel(flat, index_shape);
        at[dim] = index[flat] as usize;
        out[ravel(&at, shape)] += src[flat];
    }
    out
}

/// The variance over `dim`: Σ(x − mean)² / (n − correction) (correction 1: the unbiased estimate,
/// PyTorch's default). The shape is `shape` without `dim`.
pub fn var(x: &[f64], shape: &[usize], dim: usize, correction: usize) -> Vec<f64> {
    lines_along(shape, dim)
        .into_iter()
        .map(|line| {
            let n = line.len() as f64;
            let mean = line.iter().map(|&i| x[i]).sum::<f64>() / n;
            line.iter().map(|&i| (x[i] - mean) * (x[i] - mean)).sum::<f64>() / (n - correction as f64)
        })
        .collect()
}

/// The mean squared error mean((a − b)²) of two same-shaped tensors.
pub fn mse_loss(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>() / a.len() as f64
}

/// The negative log-likelihood `−mean_n logp[n, targets[n]]` of `logp` `[n, c]` (log-probabilities).
pub fn nll_loss(logp: &[f64], n: usize, c: usize, targets: &[u32]) -> f64 {
    -(0..n).map(|r| logp[r * c + targets[r] as usize]).sum::<f64>() / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ravel_inverts_unravel() {
        let shape = [2, 3, 4];
        for flat in 0..numel(&shape) {
            assert_eq!(ravel(&unravel(flat, &shape), &shape), flat);
        }
        assert_eq!(unravel(23, &shape), vec![1, 2, 3]);
        assert_eq!(ravel(&[], &[]), 0);
    }

    #[test]
    fn small_cases_by_hand() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // [2, 3]
        assert_eq!(sum(&x, &[2, 3], &[1], false), (vec![6.0, 15.0], vec![2]));
        assert_eq!(sum(&x, &[2, 3], &[0], true), (vec![5.0, 7.0, 9.0], vec![1, 3]));
        assert_eq!(max(&x, &[2, 3], &[0, 1], false), (vec![6.0], vec![]));
        assert_eq!(
            transpose(&x, &[2, 3], 0, 1),
            (vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0], vec![3, 2])
        );
        assert_eq!(narrow(&x, &[2, 3], 1, 1, 2), (vec![2.0, 3.0, 5.0, 6.0], vec![2, 2]));
        assert_eq!(
            binary(&x, &[2, 3], &[10.0, 20.0], &[2, 1], add),
            (vec![11.0, 12.0, 13.0, 24.0, 25.0, 26.0], vec![2, 3])
        );
        // [2,3] x [3,1]
        assert_eq!(
            matmul(&x, &[2, 3], &[1.0, 0.0, -1.0], &[3, 1]),
            (vec![-2.0, -2.0], vec![2, 1])
        );
        assert_eq!(
            cat(&[(&x[..3], &[1, 3]), (&x[3..], &[1, 3])], 0),
            (x.to_vec(), vec![2, 3])
        );
        assert_eq!(
            index_select(&x, &[2, 3], 1, &[2, 0, 2]).0,
            vec![3.0, 1.0, 3.0, 6.0, 4.0, 6.0]
        );
        assert_eq!(broadcast_shape(&[5, 1, 3], &[4, 1]), Some(vec![5, 4, 3]));
        let p = softmax(&[0.0, f64::ln(3.0)], &[2], 0);
        assert!((p[0] - 0.25).abs() < 1e-15 && (p[1] - 0.75).abs() < 1e-15);
    }

    #[test]
    fn llama_ops_by_hand() {
        assert_eq!(silu(0.0), 0.0);
        assert!((silu(1.0) - 1.0 / (1.0 + (-1.0f64).exp())).abs() < 1e-16);
        assert_eq!(swiglu(-1000.0, 5.0), -0.0);
        // [3, 4]: mean of squares 12.5
        let y = rms_norm(&[3.0, 4.0], &[1, 2], &[1.0, 2.0], 0.0);
        let rms = 12.5f64.sqrt();
        assert_eq!(y, vec![3.0 / rms, 8.0 / rms]);
        // head_dim 4 at position 1 (offset 1, t 0): θ0 = 1, θ1 = base^(-1/2) = 0.01 for base 10^4
        let near = |got: Vec<f64>, want: Vec<f64>| {
            assert!(
                got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-15),
                "{got:?} != {want:?}"
            )
        };
        let x = [1.0, 0.0, 0.0, 0.0];
        let (s, c) = 1f64.sin_cos();
        assert_eq!(rope(&x, &[1, 1, 1, 4], 1e4, 1, false), vec![c, 0.0, s, 0.0]);
        assert_eq!(rope(&x, &[1, 1, 1, 4], 1e4, 1, true), vec![c, s, 0.0, 0.0]);
        let x = [0.0, 0.0, 0.0, 1.0]; // the second pair of either layout, frequency 0.01
        let (s, c) = 0.01f64.sin_cos();
        near(rope(&x, &[1, 1, 1, 4], 1e4, 1, false), vec![0.0, -s, 0.0, c]);
        near(rope(&x, &[1, 1, 1, 4], 1e4, 1, true), vec![0.0, 0.0, -s, c]);
        // position 0 is the identity
        assert_eq!(
            rope(&[1.0, 2.0, 3.0, 4.0], &[1, 1, 1, 4], 1e4, 0, false),
            vec![1.0, 2.0, 3.0, 4.0]
        );
    }
}
