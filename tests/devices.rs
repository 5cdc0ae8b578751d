//! Every op of the CUDA backend, on every device present, against the CPU backend.
//!
//! One generic body per op ([`check`]) builds the same inputs on each device of [`devices`]
//! (Cpu and Emu always, Cuda(0) when a GPU is there), applies the same views (transposed,
//! narrowed, broadcast with stride 0), runs the op and its backward through autograd, and compares
//! the values and every gradient with the CPU's within `atol + rtol·|ref|` per dtype ([`tol`]).
//! Shapes come from proptest and are deliberately not multiples of the block size: 0, 1, primes,
//! just-off powers of two. Emu runs every CUDA thread as a fiber, so shapes stay small (a few
//! thousand elements) to keep the suite fast on 2 cores.

use kiln::backend::cuda::launch::{Args, Kernel, LaunchConfig};
use kiln::backend::cuda::memory::DeviceBuffer;
use kiln::backend::cuda::CudaDevice;
use kiln::ops::rope::RopeLayout;
use kiln::optim::{clip_grad_norm, AdamW};
use kiln::{DType, Device, Error, Rng, Tensor};
use proptest::prelude::*;
use proptest::sample::select;

/// Cpu and Emu always; Cuda(0) when this machine has a GPU.
fn devices() -> Vec<Device> {
    let mut d = vec![Device::Cpu, Device::Emu];
    if kiln::backend::cuda::gpu_count() > 0 {
        d.push(Device::Cuda(0));
    }
    d
}

/// `(atol, rtol)` of each dtype: results may differ from the CPU's by the rounding of the result
/// (bf16 keeps 8 bits, f16 11) plus a few ulps of the f32 math (GPU `expf`, FMA contraction, a tree
/// instead of a sequential sum). The tensor-core attention (bf16, f16) also rounds P and dS to the
/// dtype between its two products, where the CPU keeps f32; on Emu its worst element over
/// `attention_sequence_lengths_and_head_dims` (values and gradients) is 37% of these bounds.
fn tol(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F64 => (1e-12, 1e-12),
        DType::F32 => (1e-5, 2e-5),
        DType::BF16 => (2e-2, 1.6e-2),
        DType::F16 => (2e-3, 2e-3),
        DType::U32 => (0.0, 0.0),
    }
}

const FLOATS: [DType; 4] = [DType::F32, DType::F64, DType::BF16, DType::F16];

fn assert_close(what: &str, dev: Device, dtype: DType, got: &Tensor, want: &Tensor) {
    assert_close_sum(what, dev, dtype, got, want, 1);
}

/// As [`assert_close`] for a result each of whose elements sums `terms` values of magnitude about
/// one (a broadcast weight's or bias's gradient sums over the rows): each term may carry [`tol`]'s
/// absolute error, and where the sum cancels, the result's relative tolerance cannot cover them.
fn assert_close_sum(what: &str, dev: Device, dtype: DType, got: &Tensor, want: &Tensor, terms: usize) {
    assert_eq!(got.shape(), want.shape(), "{what} on {dev}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{what} on {dev}: dtype");
    let (atol, rtol) = tol(dtype);
    let atol = atol * terms.max(1) as f64;
    let g = got.to_vec::<f64>().unwrap();
    let w = want.to_vec::<f64>().unwrap();
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        let ok = if b.is_nan() {
            a.is_nan()
        } else if b.is_infinite() {
            a == b
        } else {
            (a - b).abs() <= atol + rtol * b.abs()
        };
        assert!(
            ok,
            "{what} on {dev} ({dtype}), shape {:?}: element {i} is {a}, the CPU gives {b} (atol {atol}, rtol {rtol})",
            want.shape()
        );
    }
}

/// How an input is seen by the op: the plain tensor or a strided view of it.
#[derive(Clone, Copy, Debug)]
enum View {
    Plain,
    /// The tensor is built with its first and last dims swapped, then transposed back.
    Transposed,
    /// The tensor is built one element wider in its last dim, then narrowed by one from the start.
    Narrowed,
}

fn views() -> impl Strategy<Value = View> {
    select(vec![View::Plain, View::Transposed, View::Narrowed])
}

/// `shape` filled with values from `seed`, built on `dev` as `view`, in `dtype`.
fn input(shape: &[usize], view: View, dtype: DType, seed: u64, scale: f64, shift: f64, dev: &Device) -> Tensor {
    let mut rng = Rng::new(seed);
    let mut stored = shape.to_vec();
    match view {
        View::Transposed if shape.len() >= 2 => stored.swap(0, shape.len() - 1),
        View::Narrowed if !shape.is_empty() => *stored.last_mut().unwrap() += 1,
        _ => {}
    }
    let n: usize = stored.iter().product();
    let data: Vec<f64> = (0..n).map(|_| rng.normal() * scale + shift).collect();
    let t = Tensor::from_vec(data, &stored, dev).unwrap().to_dtype(dtype).unwrap();
    match view {
        View::Transposed if shape.len() >= 2 => t.transpose(0, -1).unwrap(),
        View::Narrowed if !shape.is_empty() => t.narrow(-1, 1, *shape.last().unwrap()).unwrap(),
        _ => t,
    }
}

/// The generic body: `inputs(dev)` builds the inputs on a device; `op` computes the output. The
/// values and (for float outputs with `grad`) the gradient of Σ(y·w) for each input are compared
/// with the CPU's.
fn check(
    what: &str,
    dtype: DType,
    grad: bool,
    inputs: impl Fn(&Device) -> Vec<Tensor>,
    op: impl Fn(&[Tensor]) -> kiln::Result<Tensor>,
) {
    check_summing(what, dtype, grad, 1, inputs, op)
}

/// As [`check`] for an op each of whose outputs depends on a sum of `terms` values computed in the
/// dtype's arithmetic (a row statistic): the rounding of such a sum grows like √terms ulps (a
/// random walk), so the absolute tolerance is scaled by that.
fn check_summing(
    what: &str,
    dtype: DType,
    grad: bool,
    terms: usize,
    inputs: impl Fn(&Device) -> Vec<Tensor>,
    op: impl Fn(&[Tensor]) -> kiln::Result<Tensor>,
) {
    let walk = (terms as f64).sqrt().ceil() as usize;
    let run = |dev: &Device| -> (Tensor, Vec<Option<Tensor>>) {
        let xs: Vec<Tensor> = inputs(dev)
            .into_iter()
            .map(|t| {
                if grad && t.dtype().is_float() {
                    t.requires_grad()
                } else {
                    t
                }
            })
            .collect();
        let y = op(&xs).unwrap_or_else(|e| panic!("{what} on {dev}: {e}"));
        if !grad || !y.dtype().is_float() {
            return (y, vec![]);
        }
        // A fixed random weight makes every output element matter to the gradient.
        let w = input(y.shape(), View::Plain, y.dtype(), 99, 1.0, 0.0, dev);
        let loss = y.mul(&w).unwrap().sum_all().unwrap();
        let grads = loss
            .backward()
            .unwrap_or_else(|e| panic!("{what} backward on {dev}: {e}"));
        let gs = xs.iter().map(|x| grads.get(x).cloned()).collect();
        (y, gs)
    };
    let (want, want_grads) = run(&Device::Cpu);
    for dev in devices().into_iter().skip(1) {
        let (got, got_grads) = run(&dev);
        assert_eq!(got.device(), &dev, "{what}: the result stays on {dev}");
        assert_close_sum(what, dev, dtype, &got, &want, walk);
        for (i, (g, w)) in got_grads.iter().zip(&want_grads).enumerate() {
            match (g, w) {
                (Some(g), Some(w)) => {
                    // an input smaller than the output (broadcast) gets a gradient summed over the rest
                    let terms = want.shape().iter().product::<usize>() / w.shape().iter().product::<usize>().max(1);
                    assert_close_sum(
                        &format!("{what}: gradient of input {i}"),
                        dev,
                        dtype,
                        g,
                        w,
                        terms * walk,
                    )
                }
                (None, None) => {}
                _ => panic!("{what} on {dev}: input {i} has a gradient on one device only"),
            }
        }
    }
}

/// Shapes of rank 0 to 3 whose dims are 0, 1, primes and near-powers of two, at most ~2000 elements.
fn shapes() -> impl Strategy<Value = Vec<usize>> {
    // 8, 64 and 128 make buffers whose sizes are multiples of 16 bytes, so the 16-byte paths run too
    let dim = select(vec![1usize, 2, 3, 5, 7, 8, 13, 31, 33, 63, 64, 128, 129]);
    prop::collection::vec(dim, 0..=3).prop_filter("small", |s| s.iter().product::<usize>() <= 2500)
}

/// As [`shapes`] but sometimes with a zero-size dim.
fn shapes_or_empty() -> impl Strategy<Value = Vec<usize>> {
    (shapes(), any::<bool>(), any::<prop::sample::Index>()).prop_map(|(mut s, zero, at)| {
        if zero && !s.is_empty() {
            let i = at.index(s.len());
            s[i] = 0;
        }
        s
    })
}

/// Failing cases are saved to tests/devices.proptest-regressions (proptest's default) and rerun
/// first on every later run; `PROPTEST_RNG_SEED=N` fixes the seed of the new cases
/// (docs/reliability.md).
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 128,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn contiguous_copies_views(shape in shapes_or_empty(), view in views(), dtype in select(FLOATS.to_vec())) {
        check("contiguous", dtype, true, |d| vec![input(&shape, view, dtype, 1, 1.0, 0.0, d)], |x| x[0].contiguous());
    }

    #[test]
    fn cast_between_all_dtypes(shape in shapes_or_empty(), view in views(), from in select(FLOATS.to_vec()),
                               to in select(vec![DType::F32, DType::F64, DType::BF16, DType::F16, DType::U32])) {
        // values around the u32 range's ends, and fractions, to exercise saturation and rounding
        check("to_dtype", to, to != DType::U32, |d| vec![input(&shape, view, from, 2, 3.0e3, 1.0e3, d)], |x| x[0].to_dtype(to));
        check("to_dtype from u32", to, false, |d| {
            vec![input(&shape, view, DType::F64, 3, 1.0e4, 1.0e4, d).to_dtype(DType::U32).unwrap()]
        }, |x| x[0].to_dtype(to));
    }

    #[test]
    fn unary_ops(shape in shapes_or_empty(), view in views(), dtype in select(FLOATS.to_vec()),
                 op in select(vec!["neg", "exp", "log", "sqrt", "tanh", "gelu", "relu", "silu", "recip", "powf", "affine", "sqr",
                                   "abs", "sigmoid", "clamp", "gelu_erf"])) {
        // positive inputs where the op needs them
        let positive = matches!(op, "log" | "sqrt" | "recip" | "powf");
        let (scale, shift) = if positive { (0.3, 2.0) } else { (1.5, 0.0) };
        check(op, dtype, true, |d| vec![input(&shape, view, dtype, 4, scale, shift, d)], |x| {
            let x = &x[0];
            match op {
                "neg" => x.neg(),
                "exp" => x.exp(),
                "log" => x.log(),
                "sqrt" => x.sqrt(),
                "tanh" => x.tanh(),
                "gelu" => x.gelu(),
                "relu" => x.relu(),
                "silu" => x.silu(),
                "recip" => x.recip(),
                "powf" => x.powf(1.7),
                "affine" => x.affine(-0.75, 0.5),
                "abs" => x.abs(),
                "sigmoid" => x.sigmoid(),
                "clamp" => x.clamp(-0.75, 1.25),
                "gelu_erf" => x.gelu_erf(),
                _ => x.sqr(),
            }
        });
    }

    #[test]
    fn gelu_backward_of_views(shape in shapes_or_empty(), view_dy in views(), view_z in views(),
                              dtype in select(FLOATS.to_vec())) {
        // the fused dy·gelu'(z) (no derivative of its own: values only); z over GELU's curved range
        check("gelu_backward", dtype, false, |d| vec![
            input(&shape, view_dy, dtype, 24, 1.0, 0.0, d),
            input(&shape, view_z, dtype, 25, 2.0, 0.0, d),
        ], |x| x[0].gelu_backward(&x[1]));
    }

    #[test]
    fn binary_ops_broadcast(shape in shapes_or_empty(), view in views(), dtype in select(FLOATS.to_vec()),
                            op in select(vec!["add", "sub", "mul", "div", "maximum", "minimum"]),
                            rhs_kind in 0usize..4) {
        // the right operand: same shape, its last dim only, a scalar, or a size-1 middle dim
        let rhs_shape: Vec<usize> = match rhs_kind {
            0 => shape.clone(),
            1 => shape.last().map_or(vec![], |&l| vec![l]),
            2 => vec![],
            _ => shape.iter().enumerate().map(|(i, &s)| if i == 0 { 1 } else { s }).collect(),
        };
        check(op, dtype, true, |d| vec![
            input(&shape, view, dtype, 5, 1.0, 0.0, d),
            // away from 0 so that div stays well conditioned
            input(&rhs_shape, View::Plain, dtype, 6, 0.5, 2.0, d),
        ], |x| {
            let (a, b) = (&x[0], &x[1]);
            match op {
                "add" => a.add(b),
                "sub" => a.sub(b),
                "mul" => a.mul(b),
                "div" => a.div(b),
                "maximum" => a.maximum(b),
                _ => a.minimum(b),
            }
        });
    }

    #[test]
    fn comparisons(shape in shapes_or_empty(), view in views(),
                   dtype in select(vec![DType::F32, DType::F64, DType::BF16, DType::F16, DType::U32]),
                   op in select(vec!["eq", "ne", "lt", "le", "gt", "ge"])) {
        // few distinct values, so that ties (eq, le, ge) happen often
        let build = |seed, d: &Device| {
            input(&shape, view, DType::F64, seed, 1.5, 2.0, d)
                .to_dtype(DType::U32).unwrap().to_dtype(dtype).unwrap()
        };
        check(op, DType::U32, false, |d| vec![build(7, d), build(8, d)], |x| {
            let (a, b) = (&x[0], &x[1]);
            match op {
                "eq" => a.eq(b),
                "ne" => a.ne(b),
                "lt" => a.lt(b),
                "le" => a.le(b),
                "gt" => a.gt(b),
                _ => a.ge(b),
            }
        });
    }

    #[test]
    fn where_cond_and_masked_fill(shape in shapes_or_empty(), view in views(), dtype in select(FLOATS.to_vec())) {
        check("where_cond", dtype, true, |d| vec![
            input(&shape, view, dtype, 9, 1.0, 0.0, d),
            input(&shape, View::Plain, dtype, 10, 1.0, 0.0, d),
            input(&shape, View::Plain, dtype, 11, 1.0, 0.0, d),
        ], |x| {
            let cond = x[0].gt(&Tensor::zeros(&[], x[0].dtype(), x[0].device())?)?;
            cond.where_cond(&x[1], &x[2])
        });
        check("masked_fill", dtype, true, |d| vec![
            input(&shape, view, dtype, 12, 1.0, 0.0, d),
        ], |x| {
            let mask = x[0].lt(&Tensor::zeros(&[], x[0].dtype(), x[0].device())?)?;
            x[0].masked_fill(&mask, -1e4)
        });
    }

    #[test]
    fn reductions(shape in shapes(), view in views(), dtype in select(FLOATS.to_vec()),
                  op in select(vec!["sum", "mean", "max", "min"]), dims_mask in 0u32..8, keepdim in any::<bool>()) {
        let dims: Vec<isize> = (0..shape.len() as isize).filter(|d| dims_mask & (1 << d) != 0).collect();
        check(op, dtype, true, |d| vec![input(&shape, view, dtype, 13, 1.0, 0.0, d)], |x| {
            let x = &x[0];
            match op {
                "sum" => x.sum(&dims, keepdim),
                "mean" => x.mean(&dims, keepdim),
                "max" => x.max(&dims, keepdim),
                _ => x.min(&dims, keepdim),
            }
        });
    }

    #[test]
    fn attention_small_shapes(tq in 0usize..40, extra in 0usize..40, d in select(vec![1usize, 7, 32, 33, 100]),
                              dtype in select(FLOATS.to_vec()), causal in any::<bool>(), view in views()) {
        check_attention(1, 1, 1, tq, (tq + extra).max(1), d, causal, dtype, view);
    }

    #[test]
    fn softmax_and_log_softmax(shape in shapes().prop_filter("rank >= 1", |s| !s.is_empty()), view in views(),
                               dtype in select(FLOATS.to_vec()), log in any::<bool>(), last in any::<bool>()) {
        let dim = if last { -1 } else { 0 };
        check(if log { "log_softmax" } else { "softmax" }, dtype, true,
              |d| vec![input(&shape, view, dtype, 14, 2.0, 0.0, d)],
              |x| if log { x[0].log_softmax(dim) } else { x[0].softmax(dim) });
    }

    #[test]
    fn layer_norm_with_and_without_bias((rows, width) in rows_and_widths(), batch in 1usize..=2,
                                        view in views(), dtype in select(FLOATS.to_vec()), bias in any::<bool>()) {
        let shape = if batch == 1 { vec![rows, width] } else { vec![batch, rows, width] };
        // mean and variance are sums over the row, in f32 on Emu (f64 on the CPU)
        check_summing("layer_norm", dtype, true, width,
              |d| vec![
                  // a mean far from zero: the variance must not cancel away
                  input(&shape, view, dtype, 30, 2.0, 3.0, d),
                  input(&[width], View::Plain, dtype, 31, 1.0, 1.0, d),
                  input(&[width], View::Plain, dtype, 32, 1.0, 0.0, d),
              ],
              |x| if bias { x[0].layer_norm(&x[1], &x[2], 1e-5) } else { x[0].layer_norm_no_bias(&x[1], 1e-5) });
    }

    #[test]
    fn swiglu_of_views(shape in shapes_or_empty(), view_gate in views(), view_up in views(),
                       dtype in select(FLOATS.to_vec())) {
        // the gate over silu's curved range and both tails
        check("swiglu", dtype, true, |d| vec![
            input(&shape, view_gate, dtype, 40, 3.0, 0.0, d),
            input(&shape, view_up, dtype, 41, 1.0, 0.0, d),
        ], |x| x[0].swiglu(&x[1]));
    }

    #[test]
    fn rms_norm_of_rows((rows, width) in rows_and_widths(), batch in 1usize..=2, view in views(),
                        dtype in select(FLOATS.to_vec())) {
        let shape = if batch == 1 { vec![rows, width] } else { vec![batch, rows, width] };
        // the sum of squares is over the row, in f32 on Emu (f64 on the CPU)
        check_summing("rms_norm", dtype, true, width,
              |d| vec![
                  input(&shape, view, dtype, 42, 2.0, 0.5, d),
                  input(&[width], View::Plain, dtype, 43, 1.0, 1.0, d),
              ],
              |x| x[0].rms_norm(&x[1], 1e-5));
    }

    #[test]
    fn rope_both_layouts(batch in select(vec![1usize, 2]), seq in select(vec![1usize, 3, 17, 33]),
                         heads in select(vec![1usize, 3, 9]), half in select(vec![1usize, 2, 5, 16, 32, 33]),
                         offset in select(vec![0usize, 5, 999]), view in views(), dtype in select(FLOATS.to_vec()),
                         interleaved in any::<bool>()) {
        let layout = if interleaved { RopeLayout::Interleaved } else { RopeLayout::Half };
        let shape = [batch, seq, heads, 2 * half];
        check(&format!("rope {layout:?} from {offset}"), dtype, true,
              |d| vec![input(&shape, view, dtype, 44, 1.0, 0.0, d)],
              |x| x[0].rope(1e4, offset, layout));
    }

    #[test]
    fn cross_entropy_with_and_without_ignored_rows((rows, width) in rows_and_widths(), view in views(),
                                                   dtype in select(FLOATS.to_vec()), ignore in any::<bool>()) {
        const IGNORE: u32 = 1_000_000;
        let mut rng = Rng::new(33);
        // every third row after the first is ignored when `ignore`, so at least one row counts
        let targets: Vec<u32> = (0..rows)
            .map(|r| if ignore && r % 3 == 2 { IGNORE } else { rng.below(width as u64) as u32 })
            .collect();
        check("cross_entropy", dtype, true,
              |d| vec![
                  input(&[rows, width], view, dtype, 34, 3.0, 0.0, d),
                  Tensor::from_vec(targets.clone(), &[rows], d).unwrap(),
              ],
              |x| x[0].cross_entropy_with_ignore(&x[1], ignore.then_some(IGNORE)));
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn index_select_and_embedding_with_repeated_ids(shape in shapes().prop_filter("rank >= 1", |s| !s.is_empty()),
                                                     view in views(), dtype in select(FLOATS.to_vec()),
                                                     n_ids in 0usize..40, dim in any::<prop::sample::Index>()) {
        let d = dim.index(shape.len());
        let mut rng = Rng::new(40);
        // few distinct ids, many repeats: the backward sums several rows into one
        let ids: Vec<u32> = (0..n_ids).map(|_| rng.below(shape[d].min(5) as u64) as u32).collect();
        check("index_select", dtype, true,
              |dev| vec![input(&shape, view, dtype, 41, 1.0, 0.0, dev), Tensor::from_vec(ids.clone(), &[n_ids], dev).unwrap()],
              |x| x[0].index_select(d as isize, &x[1]));
        if shape.len() == 2 && d == 0 {
            check("embedding", dtype, true,
                  |dev| vec![input(&shape, view, dtype, 42, 1.0, 0.0, dev), Tensor::from_vec(ids.clone(), &[n_ids], dev).unwrap()],
                  |x| x[1].reshape(&[1, n_ids])?.embedding(&x[0]));
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// argmax and argmin (U32, compositions of max/min, comparisons, where_cond and a cast) over
    /// values with many ties, every dim and both keepdims.
    #[test]
    fn argmax_and_argmin_with_ties(shape in shapes().prop_filter("rank >= 1", |s| !s.is_empty()), view in views(),
                                   dtype in select(FLOATS.to_vec()), dim in any::<prop::sample::Index>(),
                                   keepdim in any::<bool>()) {
        let d = dim.index(shape.len()) as isize;
        // rounded to a coarse grid: ties on every line
        let ties = |dev: &Device| vec![input(&shape, view, DType::F64, 50, 2.0, 0.0, dev).affine(2.0, 0.0).unwrap()
            .to_dtype(DType::U32).unwrap().to_dtype(dtype).unwrap()];
        check("argmax", DType::U32, false, ties, |x| x[0].argmax(d, keepdim));
        check("argmin", DType::U32, false, |dev| vec![input(&shape, view, dtype, 51, 1.0, 0.0, dev)], |x| x[0].argmin(d, keepdim));
    }

    /// gather and scatter_add (compositions of the embedding kernels over flat positions), values and
    /// gradients, with repeated positions.
    #[test]
    fn gather_and_scatter_add(shape in shapes().prop_filter("rank >= 1, no empty dim", |s| !s.is_empty()),
                              view in views(), dtype in select(FLOATS.to_vec()), dim in any::<prop::sample::Index>(),
                              len in 1usize..9) {
        let d = dim.index(shape.len());
        let mut index_shape = shape.clone();
        index_shape[d] = len;
        let mut rng = Rng::new(52);
        let n: usize = index_shape.iter().product();
        let index: Vec<u32> = (0..n).map(|_| rng.below(shape[d].min(3) as u64) as u32).collect();
        let idx = |dev: &Device| Tensor::from_vec(index.clone(), &index_shape, dev).unwrap();
        check("gather", dtype, true, |dev| vec![input(&shape, view, dtype, 53, 1.0, 0.0, dev), idx(dev)],
              |x| x[0].gather(d as isize, &x[1]));
        // each position sums up to `len` src elements
        check_summing("scatter_add", dtype, true, len + 1, |dev| vec![
            input(&shape, view, dtype, 54, 1.0, 0.0, dev), idx(dev), input(&index_shape, View::Plain, dtype, 55, 1.0, 0.0, dev),
        ], |x| x[0].scatter_add(d as isize, &x[1], &x[2]));
    }

    /// var and std (compositions of mean, sub, powf and sum), and the two losses, on every device.
    #[test]
    fn var_std_and_losses(shape in shapes().prop_filter("rank 2, rows of 2 or more", |s| s.len() == 2 && s[1] >= 2),
                          view in views(), dtype in select(FLOATS.to_vec()), correction in 0usize..2) {
        let terms = shape[1];
        check_summing("var", dtype, true, terms, |d| vec![input(&shape, view, dtype, 56, 1.0, 0.5, d)],
                      |x| x[0].var(&[-1], correction, false));
        check_summing("std", dtype, true, terms, |d| vec![input(&shape, view, dtype, 57, 1.0, 0.5, d)],
                      |x| x[0].std(&[1], correction, true));
        let all = shape[0] * shape[1];
        check_summing("mse_loss", dtype, true, all, |d| vec![
            input(&shape, view, dtype, 58, 1.0, 0.0, d), input(&shape, View::Plain, dtype, 59, 1.0, 0.0, d),
        ], |x| x[0].mse_loss(&x[1]));
        let mut rng = Rng::new(60);
        let targets: Vec<u32> = (0..shape[0]).map(|_| rng.below(shape[1] as u64) as u32).collect();
        check_summing("nll_loss", dtype, true, shape[0], |d| vec![
            input(&shape, view, dtype, 61, 1.0, 0.0, d), Tensor::from_vec(targets.clone(), &[shape[0]], d).unwrap(),
        ], |x| x[0].log_softmax(-1)?.nll_loss(&x[1]));
    }

    /// stack and chunk (cat of unsqueezed tensors, narrow views) and the operators.
    #[test]
    fn stack_chunk_and_operators(shape in shapes(), view in views(), dtype in select(FLOATS.to_vec()),
                                 at in any::<prop::sample::Index>()) {
        let d = at.index(shape.len() + 1) as isize;
        let two = |dev: &Device| vec![input(&shape, view, dtype, 62, 1.0, 0.0, dev), input(&shape, View::Plain, dtype, 63, 1.0, 0.0, dev)];
        check("stack", dtype, true, two, |x| Tensor::stack(&[x[0].clone(), x[1].clone()], d));
        check("operators", dtype, true, two, |x| ((&x[0] * &x[1])? - (&x[0] / 2.0)?)?.neg());
        if !shape.is_empty() {
            check("chunk", dtype, true, |dev| vec![input(&shape, view, dtype, 64, 1.0, 0.0, dev)],
                  |x| Tensor::cat(&x[0].chunk(2, -1)?.iter().rev().cloned().collect::<Vec<_>>(), -1));
        }
    }
}

#[test]
fn token_position_embedding_is_the_gather_plus_positions() {
    // the fused op against the CPU, and on the CPU against its unfused definition
    for dtype in FLOATS {
        for (b, t, vocab, positions, c) in [
            (1, 1, 1, 1, 1),
            (2, 5, 7, 9, 3),
            (3, 17, 11, 17, 33),
            (2, 8, 50, 12, 129),
            // rows of 64: 16-byte packs in every dtype
            (2, 7, 20, 9, 64),
        ] {
            let mut rng = Rng::new(43);
            let ids: Vec<u32> = (0..b * t).map(|_| rng.below(vocab as u64) as u32).collect();
            let inputs = |dev: &Device| {
                vec![
                    input(&[vocab, c], View::Plain, dtype, 44, 1.0, 0.0, dev),
                    input(&[positions, c], View::Plain, dtype, 45, 1.0, 0.0, dev),
                    Tensor::from_vec(ids.clone(), &[b, t], dev).unwrap(),
                ]
            };
            check("token_position_embedding", dtype, true, inputs, |x| {
                x[2].token_position_embedding(&x[0], &x[1])
            });
            // on the CPU, values and gradients equal the unfused definition's
            let x: Vec<Tensor> = inputs(&Device::Cpu)
                .into_iter()
                .enumerate()
                .map(|(i, x)| if i < 2 { x.requires_grad() } else { x })
                .collect();
            let w = input(&[b, t, c], View::Plain, dtype, 46, 1.0, 0.0, &Device::Cpu);
            let fused = x[2].token_position_embedding(&x[0], &x[1]).unwrap();
            let unfused = x[2]
                .embedding(&x[0])
                .unwrap()
                .add(&x[1].narrow(0, 0, t).unwrap())
                .unwrap();
            assert_close("fused vs unfused", Device::Cpu, dtype, &fused, &unfused);
            let gf = fused.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
            let gu = unfused.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
            for p in &x[..2] {
                let what = "fused vs unfused gradient";
                assert_close(what, Device::Cpu, dtype, gf.get(p).unwrap(), gu.get(p).unwrap());
            }
        }
    }
}

#[test]
fn adamw_and_the_gradient_norm_match_the_cpu() {
    // tensors of odd sizes in one fused step, decayed (2-D) and not, one with a bf16 copy; three
    // steps with clipping, so the moments carry over between steps
    let shapes = [vec![1], vec![7], vec![33, 5], vec![3, 257], vec![1000]];
    let run = |dev: &Device| {
        let params: Vec<(String, Tensor)> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let p = input(s, View::Plain, DType::F32, 50 + i as u64, 1.0, 0.0, dev);
                (format!("p{i}"), p.requires_grad())
            })
            .collect();
        let mut opt = AdamW::new(params.clone(), 1e-2, (0.9, 0.95), 1e-8, 0.1).unwrap();
        let copy = Tensor::zeros(&shapes[2], DType::BF16, dev).unwrap();
        opt.set_bf16_copy("p2", &copy).unwrap();
        let mut norms = vec![];
        for step in 0..3u64 {
            let mut loss = Tensor::zeros(&[], DType::F32, dev).unwrap();
            for (_, p) in &params {
                let w = input(p.shape(), View::Plain, DType::F32, 60 + step, 1.0, 0.0, dev);
                loss = loss
                    .add(&p.mul(p).unwrap().mul(&w).unwrap().sum_all().unwrap())
                    .unwrap();
            }
            let mut grads = loss.backward().unwrap();
            norms.push(clip_grad_norm(&params, &mut grads, 5.0).unwrap());
            opt.step(&grads).unwrap();
        }
        // the copy is the weights rounded to bf16, exactly
        let rounded = params[2].1.to_dtype(DType::BF16).unwrap().to_vec::<f32>().unwrap();
        assert_eq!(copy.to_vec::<f32>().unwrap(), rounded, "{dev}: bf16 copy");
        (params, norms, copy)
    };
    let (want, want_norms, want_copy) = run(&Device::Cpu);
    for dev in devices().into_iter().skip(1) {
        let (got, got_norms, got_copy) = run(&dev);
        for ((name, g), (_, w)) in got.iter().zip(&want) {
            assert_eq!(g.device(), &dev);
            assert_close(&format!("AdamW {name}"), dev, DType::F32, g, w);
        }
        for (g, w) in got_norms.iter().zip(&want_norms) {
            assert!((g - w).abs() <= 1e-6 * w, "{dev}: norm {g}, the CPU gives {w}");
        }
        assert_close("bf16 copy", dev, DType::BF16, &got_copy, &want_copy);
    }
}

#[test]
fn adamw_kernels_on_tensors_ending_mid_pack() {
    // An Emu buffer ends at a page boundary, so a whole tensor's last 16-byte pack is always full and
    // the kernels' tail (the single elements after the last pack) never runs through AdamW::step.
    // Here each tensor is the front of a buffer 16-byte aligned at its start and 1..3 elements
    // longer (a GPU's layout: the tail has n mod 4 elements, the head none), against the update in
    // f64 on the same f32 values; the elements past n must stay as they were.
    let dev = CudaDevice::get(&Device::Emu).unwrap();
    let (decay, b1, b2, step_size, bc2_sqrt, eps) = (0.999, 0.9, 0.95, 1e-2, 0.3, 1e-8);
    let hyper = [decay, b1, b2, 1.0 - b1, 1.0 - b2, step_size, bc2_sqrt, eps];
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let cfg = LaunchConfig {
        grid: [2, 1, 1],
        block: [256, 1, 1],
        dyn_smem: 0,
    };
    for (n, spare) in [(1usize, 3usize), (6, 2), (257, 3), (1003, 1)] {
        let len = n + spare;
        let mut rng = Rng::new(80 + n as u64);
        // p, g, m and v (v positive)
        let data: Vec<Vec<f32>> = (0..4)
            .map(|i| {
                (0..len)
                    .map(|_| rng.normal() as f32)
                    .map(|x| if i == 3 { x * x } else { x })
                    .collect()
            })
            .collect();
        let bufs: Vec<DeviceBuffer> = data
            .iter()
            .map(|d| {
                let b = DeviceBuffer::alloc(&dev, 4 * len).unwrap();
                b.write(0, &f32s(d)).unwrap();
                b
            })
            .collect();
        let entry = [
            bufs[0].ptr(),
            bufs[1].ptr(),
            bufs[2].ptr(),
            bufs[3].ptr(),
            0,
            n as u64,
            1,
        ];
        let table = DeviceBuffer::alloc(&dev, 56).unwrap();
        table
            .write(0, &entry.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>())
            .unwrap();
        let mut args = Args::new();
        args.push(table.ptr());
        for h in hyper {
            args.push_acc(DType::F32, h);
        }
        let adamw = Kernel {
            file: "adamw",
            name: "adamw_f32",
        };
        dev.launch(adamw, cfg, &mut args).unwrap();
        let read = |b: &DeviceBuffer| {
            let mut bytes = vec![0u8; 4 * len];
            b.read(0, &mut bytes).unwrap();
            bytes
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<f32>>()
        };
        let (p, m, v) = (read(&bufs[0]), read(&bufs[2]), read(&bufs[3]));
        for i in 0..len {
            let (p0, g, m0, v0) = (
                data[0][i] as f64,
                data[1][i] as f64,
                data[2][i] as f64,
                data[3][i] as f64,
            );
            let want = if i < n {
                let m1 = b1 * m0 + (1.0 - b1) * g;
                let v1 = b2 * v0 + (1.0 - b2) * g * g;
                [p0 * decay - step_size * m1 / (v1.sqrt() / bc2_sqrt + eps), m1, v1]
            } else {
                [p0, m0, v0]
            };
            for (what, got, want) in [("p", p[i], want[0]), ("m", m[i], want[1]), ("v", v[i], want[2])] {
                let got = got as f64;
                assert!(
                    (got - want).abs() <= 1e-6 + 1e-5 * want.abs(),
                    "adamw_f32, n = {n}: {what}[{i}] is {got}, want {want}"
                );
            }
        }

        // the squares of g, over the same table
        let partial = DeviceBuffer::alloc(&dev, 8 * cfg.grid[0] as usize).unwrap();
        let mut args = Args::new();
        args.push(table.ptr()).push(partial.ptr());
        let sq = Kernel {
            file: "adamw",
            name: "adamw_sq_partial_f32",
        };
        dev.launch(sq, cfg, &mut args).unwrap();
        let mut bytes = vec![0u8; 8 * cfg.grid[0] as usize];
        partial.read(0, &mut bytes).unwrap();
        let got: f64 = bytes.chunks(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).sum();
        let want: f64 = data[1][..n].iter().map(|&g| g as f64 * g as f64).sum();
        assert!(
            (got - want).abs() <= 1e-6 * want,
            "adamw_sq_partial_f32, n = {n}: {got}, want {want}"
        );
    }
}

#[test]
fn index_select_of_u32_moves_bits() {
    for dev in devices() {
        let x = Tensor::from_vec(vec![7u32, 8, 9, 10, 11, 12], &[3, 2], &dev).unwrap();
        let ids = Tensor::from_vec(vec![2u32, 0, 2], &[3], &dev).unwrap();
        let y = x.index_select(0, &ids).unwrap();
        assert_eq!(y.device(), &dev);
        assert_eq!(y.to_vec::<u32>().unwrap(), vec![11, 12, 7, 8, 11, 12], "{dev}");
    }
}

/// (rows, width) of the row-wise kernels (layer_norm, cross_entropy): rows 1, primes and just off
/// the rows per block; widths from 1 to 5000: part of a warp, just off warp and block multiples,
/// many warps per row. At most 20000 elements, to keep Emu fast.
fn rows_and_widths() -> impl Strategy<Value = (usize, usize)> {
    let rows = select(vec![1usize, 2, 3, 7, 9, 33]);
    let widths = select(vec![1usize, 2, 5, 31, 33, 64, 129, 257, 1000, 1031, 2049, 5000]);
    (rows, widths).prop_filter("small", |&(r, w)| r * w <= 20_000)
}

/// scaled_dot_product_attention of q `[b, h, tq, d]` over k, v `[b, hkv, tk, d]` (hkv < h: grouped-query) (q transposed or
/// narrowed as `view`), values and the three gradients, on every device against the CPU's.
#[allow(clippy::too_many_arguments)]
fn check_attention(
    b: usize,
    h: usize,
    hkv: usize,
    tq: usize,
    tk: usize,
    d: usize,
    causal: bool,
    dtype: DType,
    view: View,
) {
    let what = format!("attention [{b}, {h}/{hkv}, {tq}/{tk}, {d}] causal {causal}");
    check(
        &what,
        dtype,
        true,
        |dev| {
            vec![
                input(&[b, h, tq, d], view, dtype, 24, 1.0, 0.0, dev),
                input(&[b, hkv, tk, d], View::Plain, dtype, 25, 1.0, 0.0, dev),
                input(&[b, hkv, tk, d], View::Plain, dtype, 26, 1.0, 0.0, dev),
            ]
        },
        |x| x[0].scaled_dot_product_attention(&x[1], &x[2], causal),
    );
}

#[test]
fn attention_sequence_lengths_and_head_dims() {
    // sequence lengths around the kernels' tiles (streamed tiles of 32; blocks of 32 (f32) or 16 (f64)
    // rows on the SIMT path, of 64 rows or keys on the tensor cores), Tq < Tk as in a KV-cache step,
    // every head dim up to 128 (80: a partial pair of n8 tiles). bf16 runs every shape, on the tensor
    // cores (forward, dK/dV and dQ kernels); f32, f64 and f16 take turns, so each meets most shapes.
    let lens = [
        (1, 1),
        (17, 17),
        (64, 64),
        (65, 65),
        (129, 129),
        (1, 65),
        (17, 129),
        (64, 65),
    ];
    let mut n = 0;
    for (tq, tk) in lens {
        for d in [32, 64, 80, 128] {
            for causal in [false, true] {
                let (b, h) = if n % 2 == 0 { (1, 2) } else { (2, 1) };
                check_attention(b, h, h, tq, tk, d, causal, DType::BF16, View::Plain);
                let other = [DType::F32, DType::F64, DType::F16][n % 3];
                check_attention(b, h, h, tq, tk, d, causal, other, View::Plain);
                n += 1;
            }
        }
    }
}

/// qkv_attention from a combined projection `[B, T, 3·C]` (fused on the CPU; on CUDA/Emu composed
/// of views and the attention kernels): the value and qkv's gradient on every device against the
/// CPU's.
#[test]
fn qkv_attention_on_every_device() {
    for &(b, nh, t, hs) in &[(2, 3, 17, 32), (1, 2, 65, 16)] {
        for causal in [true, false] {
            for dtype in [DType::F32, DType::BF16] {
                check(
                    &format!("qkv_attention (B, nh, T, hs) = ({b}, {nh}, {t}, {hs}) causal {causal}"),
                    dtype,
                    true,
                    |dev| vec![input(&[b, t, 3 * nh * hs], View::Plain, dtype, 27, 1.0, 0.0, dev)],
                    |x| x[0].qkv_attention(nh, causal),
                );
            }
        }
    }
}

#[test]
fn grouped_query_attention_on_every_device() {
    // query heads sharing key/value heads (SmolLM2: 9 over 3), lengths around the tiles (32 streamed;
    // 64 on the tensor cores), so the dK/dV kernels' walk over a group's query tiles crosses heads
    // mid-way through their double buffering; every dtype, causal and not
    let shapes = [
        (1, 4, 2, 17, 17, 32),
        (2, 3, 1, 65, 65, 64),
        (1, 6, 3, 1, 40, 80),
        (1, 2, 1, 33, 70, 16),
    ];
    for (n, &(b, h, hkv, tq, tk, d)) in shapes.iter().enumerate() {
        for causal in [false, true] {
            for dtype in FLOATS {
                let view = if n % 2 == 0 { View::Plain } else { View::Transposed };
                check_attention(b, h, hkv, tq, tk, d, causal, dtype, view);
            }
        }
    }
}

/// Matrix dims around the kernels' tiles (64 for f32/f64, 128 for bf16/f16, K slabs of 16 and 32).
fn matmul_dim() -> impl Strategy<Value = usize> {
    select(vec![1usize, 7, 16, 63, 65, 129])
}

/// Batch dims of the two operands: none, the same, or broadcast one way or the other.
fn matmul_batches() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    select(vec![
        (vec![], vec![]),
        (vec![3], vec![3]),
        (vec![2, 3], vec![3]),
        (vec![1], vec![2]),
        (vec![2, 1], vec![1, 2]),
    ])
}

/// `[batch.., rows, cols]` in `dtype` scaled by `scale`, stored transposed (its last two dims swapped,
/// then transposed back: a column-major matrix) when `transposed`.
fn matrix(
    batch: &[usize],
    [rows, cols]: [usize; 2],
    transposed: bool,
    dtype: DType,
    seed: u64,
    scale: f64,
    dev: &Device,
) -> Tensor {
    let (r, c) = if transposed { (cols, rows) } else { (rows, cols) };
    let t = input(&[batch, &[r, c]].concat(), View::Plain, dtype, seed, scale, 0.0, dev);
    if transposed {
        t.transpose(-2, -1).unwrap()
    } else {
        t
    }
}

fn matmul_config() -> ProptestConfig {
    // each case runs the product and its two gradient products on Emu, where a thread is a fiber
    ProptestConfig { cases: 48, ..config() }
}

proptest! {
    #![proptest_config(matmul_config())]

    #[test]
    fn matmul_every_layout_and_batch((m, n, k) in (matmul_dim(), matmul_dim(), matmul_dim())
                                         .prop_filter("small", |(m, n, k)| m * n * k <= 129 * 65 * 16),
                                     (ba, bb) in matmul_batches(), ta in any::<bool>(), tb in any::<bool>(),
                                     view in views(), dtype in select(FLOATS.to_vec())) {
        // A [batch.., m, k] and B [batch.., k, n], each row- or column-major; `view` also makes A a
        // strided view that is neither (read through one copy) when it is transposed with batch dims
        // f32 sums differ by order from the CPU's in about eps·Σ|terms|: scaled so that Σ|terms| stays
        // near 1 for the product and near √size for each gradient product (over n, and over m and batch)
        let batch = ba.iter().chain(&bb).product::<usize>().max(1);
        let scale = 1.0 / ((m.max(k) * batch) as f64).sqrt();
        let scale_b = 1.0 / (k.max(n) as f64).sqrt();
        check("matmul", dtype, true, |d| {
            let a = match view {
                View::Transposed if !ba.is_empty() => input(&[ba.as_slice(), &[m, k]].concat(), view, dtype, 7, scale, 0.0, d),
                _ => matrix(&ba, [m, k], ta, dtype, 7, scale, d),
            };
            vec![a, matrix(&bb, [k, n], tb, dtype, 8, scale_b, d)]
        }, |x| x[0].matmul(&x[1]));
    }

    #[test]
    fn linear_with_fused_epilogues(rows in matmul_dim(), n_in in matmul_dim(), n_out in matmul_dim(),
                                   lead in select(vec![vec![], vec![2]]), bias in any::<bool>(),
                                   op in select(vec!["linear", "linear_gelu", "linear_residual"]),
                                   dtype in select(FLOATS.to_vec())) {
        prop_assume!(rows * n_in * n_out <= 129 * 65 * 16);
        // as in matmul_every_layout_and_batch: Σ|terms| of every product near 1 (gradients near √size)
        let scale = 1.0 / (n_in.max(rows * lead.iter().product::<usize>()) as f64).sqrt();
        let scale_w = 1.0 / (n_in.max(n_out) as f64).sqrt();
        let x_shape = [lead.as_slice(), &[rows, n_in]].concat();
        let y_shape = [lead.as_slice(), &[rows, n_out]].concat();
        check(op, dtype, true, |d| {
            let mut v = vec![input(&x_shape, View::Plain, dtype, 9, scale, 0.0, d),
                             input(&[n_out, n_in], View::Plain, dtype, 10, scale_w, 0.0, d)];
            if bias {
                v.push(input(&[n_out], View::Plain, dtype, 11, 0.5, 0.0, d));
            }
            if op == "linear_residual" {
                v.push(input(&y_shape, View::Narrowed, dtype, 12, 1.0, 0.0, d));
            }
            v
        }, |x| {
            let b = if bias { Some(&x[2]) } else { None };
            match op {
                "linear" => x[0].linear(&x[1], b),
                "linear_gelu" => x[0].linear_gelu(&x[1], b),
                _ => x[0].linear_residual(&x[1], b, x.last().unwrap()),
            }
        });
    }
}

/// The tensor-core kernel stores runs of 8 columns (16-byte stores) where N % 8 == 0 and every output,
/// the bias and the residual are 16-byte aligned (kernels/matmul.cu): N past the 128-column tile by one
/// run (136) and below one warp's 32 columns (24), M off the 128-row tile, a batch, and every fused
/// epilogue, Z included (stored for the backward); then a bias and a residual one element off the
/// 16-byte grid (offset views), which take the element-by-element epilogue.
#[test]
fn matmul_epilogue_in_runs_of_eight_columns() {
    for dtype in [DType::BF16, DType::F16] {
        for (m, n, k) in [(130, 136, 40), (7, 24, 16)] {
            let scale = 1.0 / (k as f64).sqrt();
            check(
                "matmul in runs",
                dtype,
                true,
                |d| {
                    vec![
                        input(&[2, m, k], View::Plain, dtype, 30, scale, 0.0, d),
                        input(&[2, k, n], View::Plain, dtype, 31, 1.0, 0.0, d),
                    ]
                },
                |x| x[0].matmul(&x[1]),
            );
            for offset in [View::Plain, View::Narrowed] {
                // Narrowed: the bias [n] and the residual [m * n] start one element into their buffers
                let inputs = |d: &Device| {
                    vec![
                        input(&[m, k], View::Plain, dtype, 32, scale, 0.0, d),
                        input(&[n, k], View::Plain, dtype, 33, 1.0, 0.0, d),
                        input(&[n], offset, dtype, 34, 0.5, 0.0, d),
                        input(&[m * n], offset, dtype, 35, 1.0, 0.0, d),
                    ]
                };
                check("linear_gelu in runs", dtype, true, inputs, |x| {
                    x[0].linear_gelu(&x[1], Some(&x[2]))
                });
                check("linear_residual in runs", dtype, true, inputs, |x| {
                    x[0].linear_residual(&x[1], Some(&x[2]), &x[3].reshape(&[m, n])?)
                });
            }
        }
    }
}

#[test]
fn matmul_with_k_zero_gives_the_epilogue_of_zero() {
    for dtype in FLOATS {
        check(
            "matmul k = 0",
            dtype,
            false,
            |d| {
                vec![
                    Tensor::zeros(&[5, 0], dtype, d).unwrap(),
                    Tensor::zeros(&[0, 9], dtype, d).unwrap(),
                ]
            },
            |x| x[0].matmul(&x[1]),
        );
        check(
            "linear k = 0",
            dtype,
            true,
            |d| {
                vec![
                    Tensor::zeros(&[3, 0], dtype, d).unwrap(),
                    Tensor::zeros(&[4, 0], dtype, d).unwrap(),
                    input(&[4], View::Plain, dtype, 13, 1.0, 0.0, d),
                ]
            },
            |x| x[0].linear_gelu(&x[1], Some(&x[2])),
        );
    }
}

#[test]
fn matmul_of_broadcast_scalars_and_unaligned_operands() {
    for dtype in FLOATS {
        // a [1, 1] broadcast to [m, k] has no unit stride (a copy); a narrowed A is not 16-byte aligned
        check(
            "matmul of a broadcast",
            dtype,
            true,
            |d| {
                vec![
                    input(&[1, 1], View::Plain, dtype, 14, 1.0, 0.0, d),
                    input(&[33, 20], View::Plain, dtype, 15, 1.0, 0.0, d),
                ]
            },
            |x| x[0].broadcast_to(&[17, 33])?.matmul(&x[1]),
        );
        check(
            "matmul of an offset view",
            dtype,
            true,
            |d| {
                vec![
                    input(&[17, 40], View::Narrowed, dtype, 16, 0.2, 0.0, d),
                    input(&[40, 24], View::Narrowed, dtype, 17, 1.0, 0.0, d),
                ]
            },
            |x| x[0].matmul(&x[1]),
        );
        // views narrower than their rows: 16-byte copies whose last chunk is partly zero-filled
        check(
            "matmul of narrowed views",
            dtype,
            true,
            |d| {
                vec![
                    input(&[17, 16], View::Plain, dtype, 18, 0.3, 0.0, d),
                    input(&[24, 16], View::Plain, dtype, 19, 1.0, 0.0, d),
                ]
            },
            |x| x[0].narrow(1, 0, 13)?.matmul(&x[1].narrow(1, 0, 13)?.transpose(0, 1)?),
        );
    }
}

#[test]
fn linear_rejects_bad_shapes_and_dtypes_with_the_op_name() {
    let dev = Device::Emu;
    let x = Tensor::ones(&[2, 3], DType::F32, &dev).unwrap();
    let w = Tensor::ones(&[4, 3], DType::F32, &dev).unwrap();
    let e = x.linear(&w.transpose(0, 1).unwrap(), None).unwrap_err().to_string();
    assert!(e.contains("linear") && e.contains("[3, 4]"), "{e}");
    let e = x.linear_gelu(&w, Some(&x)).unwrap_err().to_string();
    assert!(e.contains("linear_gelu") && e.contains("bias"), "{e}");
    let e = x.linear_residual(&w, None, &x).unwrap_err().to_string();
    assert!(e.contains("linear_residual") && e.contains("residual"), "{e}");
    let e = x
        .linear(&w.to_dtype(DType::BF16).unwrap(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("linear") && e.contains("bf16"), "{e}");
    let cpu = Tensor::ones(&[4, 3], DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(x.linear(&cpu, None), Err(Error::DeviceMismatch { .. })));
}

#[test]
fn fill_on_each_device() {
    // `full` directly on every device, compared with the CPU's
    for n in [0usize, 1, 7, 8, 9, 1000, 4099] {
        for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16, DType::U32] {
            for value in [0.0, -2.5, 0.1, 70000.0, 3.0e9] {
                let want = Tensor::full(value, &[n], dtype, &Device::Cpu).unwrap();
                for dev in devices() {
                    let got = Tensor::full(value, &[n], dtype, &dev).unwrap();
                    assert_eq!(got.device(), &dev);
                    assert_close("full", dev, dtype, &got, &want);
                }
            }
        }
    }
}

#[test]
fn large_sums_split_over_blocks() {
    // 20011 elements: one output split over several blocks (partial results, then a second kernel)
    for dtype in FLOATS {
        for shape in [vec![20011], vec![3, 6673], vec![6673, 3]] {
            check(
                "sum_all",
                dtype,
                true,
                |d| vec![input(&shape, View::Plain, dtype, 15, 1.0, 0.5, d)],
                |x| x[0].sum_all(),
            );
            check(
                "max over dim 0",
                dtype,
                false,
                |d| vec![input(&shape, View::Transposed, dtype, 16, 1.0, 0.0, d)],
                |x| x[0].max(&[0], false),
            );
        }
    }
}

#[test]
fn aligned_buffers_take_the_16_byte_paths() {
    // sizes that are multiples of 16 bytes: emu_malloc aligns such buffers to 16, so every
    // elementwise kernel and the reductions take their vector loads (and the odd tails after them)
    for dtype in FLOATS {
        for shape in [vec![64, 32], vec![8, 1024], vec![128, 72]] {
            check(
                "exp",
                dtype,
                true,
                |d| vec![input(&shape, View::Plain, dtype, 18, 1.0, 0.0, d)],
                |x| x[0].exp(),
            );
            check(
                "mul",
                dtype,
                true,
                |d| {
                    vec![
                        input(&shape, View::Plain, dtype, 19, 1.0, 0.0, d),
                        input(&shape, View::Plain, dtype, 20, 1.0, 0.0, d),
                    ]
                },
                |x| x[0].mul(&x[1]),
            );
            check(
                "sum over the last dim",
                dtype,
                true,
                |d| vec![input(&shape, View::Plain, dtype, 21, 1.0, 0.0, d)],
                |x| x[0].sum(&[-1], false),
            );
            check(
                "max over the last dim",
                dtype,
                false,
                |d| vec![input(&shape, View::Plain, dtype, 22, 1.0, 0.0, d)],
                |x| x[0].max(&[-1], false),
            );
            check(
                "to_dtype",
                dtype,
                true,
                |d| vec![input(&shape, View::Plain, DType::F32, 23, 1.0, 0.0, d)],
                |x| x[0].to_dtype(dtype),
            );
            check(
                "gelu_backward",
                dtype,
                false,
                |d| {
                    vec![
                        input(&shape, View::Plain, dtype, 26, 1.0, 0.0, d),
                        input(&shape, View::Plain, dtype, 27, 2.0, 0.0, d),
                    ]
                },
                |x| x[0].gelu_backward(&x[1]),
            );
        }
    }
}

#[test]
fn wide_softmax_rows_use_many_warps() {
    // rows wider than 32 * 8 elements: several warps per row combine through shared memory
    for dtype in FLOATS {
        for shape in [vec![3, 1031], vec![2, 4096], vec![5, 257]] {
            check(
                "softmax",
                dtype,
                true,
                |d| vec![input(&shape, View::Plain, dtype, 17, 3.0, 0.0, d)],
                |x| x[0].softmax(-1),
            );
        }
    }
}

#[test]
fn layer_norm_weight_gradients_split_over_row_chunks() {
    // more than 32 rows: dw and db are summed per chunk of rows, then the chunks in order
    for dtype in FLOATS {
        for shape in [vec![333, 7], vec![65, 129], vec![3, 41, 40]] {
            let c = *shape.last().unwrap();
            check(
                "layer_norm",
                dtype,
                true,
                |d| {
                    vec![
                        input(&shape, View::Plain, dtype, 35, 1.0, 0.5, d),
                        input(&[c], View::Plain, dtype, 36, 1.0, 1.0, d),
                        input(&[c], View::Plain, dtype, 37, 1.0, 0.0, d),
                    ]
                },
                |x| x[0].layer_norm(&x[1], &x[2], 1e-5),
            );
        }
    }
}

#[test]
fn rows_wider_than_the_registers_keep() {
    // a 1024-thread row keeps 8 elements per thread in registers between passes (8192): wider rows are
    // read again for each pass; an odd width (partial first and last slots) and an aligned one
    for dtype in FLOATS {
        for shape in [vec![2, 9001], vec![1, 8200]] {
            let width = shape[1];
            for log in [false, true] {
                check(
                    if log { "log_softmax" } else { "softmax" },
                    dtype,
                    true,
                    |d| vec![input(&shape, View::Plain, dtype, 70, 2.0, 0.0, d)],
                    |x| if log { x[0].log_softmax(-1) } else { x[0].softmax(-1) },
                );
            }
            check_summing(
                "layer_norm",
                dtype,
                true,
                width,
                |d| {
                    vec![
                        input(&shape, View::Plain, dtype, 71, 2.0, 3.0, d),
                        input(&[width], View::Plain, dtype, 72, 1.0, 1.0, d),
                        input(&[width], View::Plain, dtype, 73, 1.0, 0.0, d),
                    ]
                },
                |x| x[0].layer_norm(&x[1], &x[2], 1e-5),
            );
            let targets: Vec<u32> = (0..shape[0] as u32).map(|r| r * 4099 % width as u32).collect();
            check(
                "cross_entropy",
                dtype,
                true,
                |d| {
                    vec![
                        input(&shape, View::Plain, dtype, 74, 3.0, 0.0, d),
                        Tensor::from_vec(targets.clone(), &[shape[0]], d).unwrap(),
                    ]
                },
                |x| x[0].cross_entropy(&x[1]),
            );
        }
    }
}

#[test]
fn layer_norm_of_rows_with_a_large_mean() {
    // mean 10^4 and spread 1: an f32 row mean is off by ~10^-3, which the kernel's corrected two-pass
    // statistics measure and centre away (the kernel's and the CPU's f32 path alike), against the CPU
    // in f64 on the same f32 values. Values only: the backward
    // reads the saved f32 mean, which holds 10^4 to within half an ulp, 5·10^-4, whatever the forward.
    for shape in [vec![3, 1000], vec![2, 5000], vec![5, 33]] {
        let width = shape[1];
        let run = |dev: &Device, dtype: DType| {
            let x = |s: &[usize], seed, scale, shift| {
                input(s, View::Plain, DType::F32, seed, scale, shift, dev)
                    .to_dtype(dtype)
                    .unwrap()
            };
            let y = x(&shape, 75, 1.0, 1.0e4)
                .layer_norm(&x(&[width], 76, 1.0, 1.0), &x(&[width], 77, 1.0, 0.0), 1e-5)
                .unwrap();
            y.to_dtype(DType::F64).unwrap()
        };
        let want = run(&Device::Cpu, DType::F64);
        for dev in devices() {
            // f32's own tolerance, not scaled by the row: the statistics' error is far below it
            assert_close(
                "layer_norm with mean 1e4",
                dev,
                DType::F32,
                &run(&dev, DType::F32),
                &want,
            );
        }
    }
}

#[test]
fn cross_entropy_keeps_its_work_on_the_device() {
    // the loss and the gradient come back on the logits' device, and match the CPU's f64 loss
    let logits = [2.0f32, -1.0, 0.5, 0.0, 3.0, 1.0];
    let want = {
        let lse0 = (2f64.exp() + (-1f64).exp() + 0.5f64.exp()).ln();
        let lse1 = (1f64 + 3f64.exp() + 1f64.exp()).ln();
        ((lse0 - 0.5) + (lse1 - 3.0)) / 2.0
    };
    for dev in devices() {
        let x = Tensor::from_vec(logits.to_vec(), &[2, 3], &dev)
            .unwrap()
            .requires_grad();
        let t = Tensor::from_vec(vec![2u32, 1], &[2], &dev).unwrap();
        let loss = x.cross_entropy(&t).unwrap();
        assert_eq!(loss.device(), &dev);
        let got = loss.to_vec::<f32>().unwrap()[0] as f64;
        assert!((got - want).abs() < 1e-6, "{dev}: {got} vs {want}");
        let g = loss.backward().unwrap();
        let gx = g.get(&x).unwrap();
        assert_eq!(gx.device(), &dev);
        // each row's gradient sums to zero (softmax minus one-hot)
        let gv = gx.to_vec::<f32>().unwrap();
        for row in gv.chunks(3) {
            assert!(row.iter().sum::<f32>().abs() < 1e-6, "{dev}: {gv:?}");
        }
    }
}

#[test]
fn masked_softmax_rows() {
    // a row that is entirely -inf gives 0 (softmax) or -inf (log_softmax), as on the CPU
    for dev in devices() {
        let x = Tensor::from_vec(
            vec![f32::NEG_INFINITY, f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY],
            &[2, 2],
            &dev,
        )
        .unwrap();
        assert_eq!(
            x.softmax(-1).unwrap().to_vec::<f32>().unwrap(),
            vec![0.0, 0.0, 1.0, 0.0],
            "{dev}"
        );
        let l = x.log_softmax(-1).unwrap().to_vec::<f32>().unwrap();
        assert_eq!(&l[..2], &[f32::NEG_INFINITY, f32::NEG_INFINITY], "{dev}");
        assert_eq!(l[2], 0.0, "{dev}");
    }
}

#[test]
fn nan_propagates_through_max_and_maximum() {
    for dev in devices() {
        let x = Tensor::from_vec(vec![1.0f32, f32::NAN, 3.0, 2.0], &[2, 2], &dev).unwrap();
        let m = x.max(&[1], false).unwrap().to_vec::<f32>().unwrap();
        assert!(m[0].is_nan() && m[1] == 3.0, "{dev}: {m:?}");
        let y = Tensor::from_vec(vec![0.0f32; 4], &[2, 2], &dev).unwrap();
        let mx = x.maximum(&y).unwrap().to_vec::<f32>().unwrap();
        assert!(mx[1].is_nan(), "{dev}: {mx:?}");
    }
}

#[test]
fn to_device_moves_data_and_gradients() {
    let x = Tensor::from_vec(vec![1.0f32, -2.0, 3.0, 0.5, 0.25, -1.0], &[2, 3], &Device::Cpu)
        .unwrap()
        .requires_grad();
    for dev in devices() {
        let on = x.transpose(0, 1).unwrap().to_device(&dev).unwrap();
        assert_eq!(on.device(), &dev);
        assert_eq!(on.shape(), &[3, 2]);
        let back = on.exp().unwrap().to_device(&Device::Cpu).unwrap();
        let loss = back.sum_all().unwrap();
        let g = loss.backward().unwrap();
        let gx = g.get(&x).unwrap();
        assert_eq!(
            gx.device(),
            &Device::Cpu,
            "the gradient comes back to the leaf's device"
        );
        assert_close("to_device gradient", dev, DType::F32, gx, &x.detach().exp().unwrap());
    }
}

#[test]
fn the_doc_example_runs_on_emu() {
    let dev = Device::Emu;
    let a = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6.], &[2, 3], &dev)
        .unwrap()
        .requires_grad();
    let b = Tensor::from_vec(vec![0.5f32; 12], &[3, 4], &dev)
        .unwrap()
        .requires_grad();
    let y = a.matmul(&b).unwrap().gelu().unwrap().softmax(-1).unwrap();
    let loss = y.sum_all().unwrap();
    let grads = loss.backward().unwrap();
    assert_eq!(grads.get(&a).unwrap().shape(), &[2, 3]);
    assert_eq!(grads.get(&b).unwrap().shape(), &[3, 4]);
    let t = y.to_dtype(DType::BF16).unwrap().to_device(&Device::Cpu).unwrap();
    assert_eq!(t.device(), &Device::Cpu);
}

#[test]
fn mixing_devices_is_an_error() {
    let a = Tensor::ones(&[2], DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::ones(&[2], DType::F32, &Device::Emu).unwrap();
    assert!(matches!(a.add(&b), Err(Error::DeviceMismatch { .. })));
}

#[test]
fn cuda_is_seen_where_required() {
    // scripts/gpu-check.sh sets KILN_REQUIRE_CUDA=1: there, a run on Cpu and Emu only is a failure
    if std::env::var("KILN_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
        let why = Tensor::zeros(&[1], DType::F32, &Device::Cuda(0)).err();
        assert!(
            kiln::backend::cuda::gpu_count() > 0,
            "KILN_REQUIRE_CUDA=1 but no GPU is usable: {why:?}"
        );
    }
}

#[test]
fn cuda_without_a_gpu_is_an_error_not_a_panic() {
    if kiln::backend::cuda::gpu_count() > 0 {
        eprintln!("this machine has a GPU: checking an ordinal past the last one instead");
    }
    let past = Device::Cuda(kiln::backend::cuda::gpu_count() + 3);
    match Tensor::zeros(&[2], DType::F32, &past) {
        Err(Error::DeviceUnavailable { device, reason }) => {
            assert_eq!(device, past);
            assert!(!reason.is_empty());
            eprintln!("{past}: {reason}");
        }
        other => panic!("expected DeviceUnavailable, got {other:?}"),
    }
}

#[test]
fn launches_over_the_device_limits_are_refused_with_the_kernel_and_shape() {
    let dev = CudaDevice::get(&Device::Emu).unwrap();
    let k = Kernel {
        file: "fill",
        name: "fill_b32",
    };
    let cfg = LaunchConfig {
        grid: [1, 1, 1],
        block: [2048, 1, 1],
        dyn_smem: 0,
    };
    let e = dev.launch(k, cfg, &mut Args::new()).unwrap_err().to_string();
    assert!(e.contains("fill_b32") && e.contains("2048"), "{e}");
    let cfg = LaunchConfig {
        grid: [1, 1, 1],
        block: [32, 1, 1],
        dyn_smem: 1 << 20,
    };
    let e = dev.launch(k, cfg, &mut Args::new()).unwrap_err().to_string();
    assert!(e.contains("fill_b32") && e.contains("shared memory"), "{e}");
}

#[test]
fn every_kernel_named_by_a_wrapper_exists_and_is_registered_with_the_emulator() {
    let files = kiln::backend::cuda::kernels::files();
    let names: Vec<&str> = files.iter().flat_map(|f| f.kernels.iter().copied()).collect();
    for family in [
        "fill_b16",
        "copy_b64",
        "cast_f32_bf16",
        "cast_u32_f16",
        "unary_f16",
        "binary_bf16",
        "compare_u32",
        "where_cond_b64",
        "reduce_f64",
        "reduce_partials_bf16",
        "softmax_f32",
        "softmax_backward_f16",
        "layer_norm_forward_bf16",
        "layer_norm_dparams_finish_f64",
        "cross_entropy_backward_f32",
        "matmul_f32",
        "matmul_bf16",
        "index_select_b16",
        "index_add_bf16",
        "token_position_embedding_f32",
        "adamw_f32",
        "adamw_sq_partial_f64",
    ] {
        assert!(names.contains(&family), "{family} missing from {names:?}");
    }
    assert!(
        files.iter().all(|f| f.source.contains("Roofline")),
        "every .cu opens with its roofline"
    );
}

#[path = "common/quantized.rs"]
mod quantized;

/// x's rows rounded per block of 32 as `linear_quantized_quantize_x` and the CPU's `Q8Rows` do (f32
/// arithmetic, ties to even): per block the quants and (xd, xd·Σxq).
fn round_x(x: &[f32]) -> Vec<([i32; 32], f32, f32)> {
    x.chunks_exact(32)
        .map(|b| {
            let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
            let (d, inv) = (amax / 127.0, if amax > 0.0 { 127.0 / amax } else { 0.0 });
            let q: [i32; 32] = std::array::from_fn(|i| (b[i] * inv).round_ties_even() as i32);
            (q, d, d * q.iter().sum::<i32>() as f32)
        })
        .collect()
}

/// One row of W in the GGUF layout as, per 32-element block of x, `(a0, a1, c, q)`: the block's weights
/// are `a·q + c` with `a = a0` for its first 16 elements and `a1` for the last 16 (they differ for
/// Q6_K alone, whose scales change every 16).
fn row_terms(format: kiln::ops::linear_quantized::QuantFormat, row: &[u8]) -> Vec<(f64, f64, f64, [i32; 32])> {
    use kiln::ops::linear_quantized::QuantFormat;
    let f16 = |b: &[u8], at: usize| f64::from(half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32());
    let nibbles = |qs: &[u8]| -> [i32; 32] {
        std::array::from_fn(|e| i32::from(if e < 16 { qs[e] & 15 } else { qs[e - 16] >> 4 }))
    };
    let mut out = Vec::new();
    for b in row.chunks_exact(format.block_bytes()) {
        match format {
            QuantFormat::Q4_0 => out.push((f16(b, 0), f16(b, 0), -8.0 * f16(b, 0), nibbles(&b[2..18]))),
            QuantFormat::Q4_1 => out.push((f16(b, 0), f16(b, 0), f16(b, 2), nibbles(&b[4..20]))),
            QuantFormat::Q8_0 => {
                let q = std::array::from_fn(|e| i32::from(b[2 + e] as i8));
                out.push((f16(b, 0), f16(b, 0), 0.0, q))
            }
            // d, dmin, 12 bytes of six-bit scales and mins, 128 bytes of nibbles (sub-block s: the
            // low (s even) or high nibbles of bytes 32·(s/2) ..)
            QuantFormat::Q4_K => {
                let (d, dmin, sc) = (f16(b, 0), f16(b, 2), &b[4..16]);
                for s in 0..8 {
                    let (scale, min) = if s < 4 {
                        (sc[s] & 63, sc[s + 4] & 63)
                    } else {
                        (
                            (sc[s + 4] & 15) | ((sc[s - 4] >> 6) << 4),
                            (sc[s + 4] >> 4) | ((sc[s] >> 6) << 4),
                        )
                    };
                    let q = std::array::from_fn(|e| i32::from((b[16 + 32 * (s / 2) + e] >> (4 * (s % 2))) & 15));
                    let a = d * f64::from(scale);
                    out.push((a, a, -dmin * f64::from(min), q));
                }
            }
            // ql 128 | qh 64 | 16 signed scales | d; element e = 128h + p
            QuantFormat::Q6_K => {
                let d = f16(b, 208);
                for s in 0..8 {
                    let q = std::array::from_fn(|l| {
                        let e = 32 * s + l;
                        let (h, p) = (e / 128, e % 128);
                        let low = (b[64 * h + p % 64] >> (4 * (p / 64))) & 15;
                        let high = (b[128 + 32 * h + p % 32] >> (2 * (p / 32))) & 3;
                        i32::from(low | (high << 4)) - 32
                    });
                    let scale = |i: usize| d * f64::from(b[192 + i] as i8);
                    out.push((scale(2 * s), scale(2 * s + 1), 0.0, q));
                }
            }
        }
    }
    out
}

/// The integer kernels of `linear_quantized` (autograd off), on Emu and a GPU when there is one,
/// against the same formula evaluated in f64, `Σ_b (a·xd)·Σq·xq + c·(xd·Σxq)` with x rounded as the
/// kernels round it, and against the CPU's integer product: from `MMA_FROM_ROWS` rows of x the grouped
/// formats' tensor-core kernels (`linear_quantized_mma_*`, `mma.m16n8k32` on signed bytes), below it
/// the `__dp4a` kernels of every format (Q4_K and Q6_K included). The integer sums are exact on both
/// sides, so a kernel differs from the f64 value only by its f32 arithmetic: a few roundings per
/// block's term and one per addition of the running sum (or of the butterfly's tree), at most
/// (blocks + 3)·2⁻²⁴ of Σ_b |terms| (doubled here); an integer sum off by one would be off by
/// a·xd ≈ 4e-4, well above that. Shapes: rows of x 8 (one full n-tile), 13 (a partial one), 33 and
/// 70 (several CTAs, the last with one n-tile), weights not whole groups nor whole CTAs of 64 rows,
/// and 1 to 9 blocks (pipeline stages of 4, the last partial); in decode 1, 3 and 7 rows, rows of W
/// not multiples of the kernels' 4 per CTA, 1 to 3 super-blocks of 256 for the K formats.
#[test]
fn linear_quantized_integer_kernels_against_the_formula_in_f64() {
    use kiln::backend::cuda::linear_quantized::MMA_FROM_ROWS;
    use kiln::ops::linear_quantized::QuantFormat;
    let mut g = quantized::Gen(0x6d6d_6171);
    let prefill = [(8usize, 16usize, 32usize), (13, 67, 96), (33, 40, 160), (70, 129, 288)];
    assert!(prefill.iter().all(|s| s.0 >= MMA_FROM_ROWS));
    let mut cases = Vec::new();
    for format in [QuantFormat::Q4_0, QuantFormat::Q4_1, QuantFormat::Q8_0] {
        cases.extend(prefill.iter().map(|&s| (format, s)));
        cases.extend([(format, (1, 17, 96)), (format, (MMA_FROM_ROWS - 1, 40, 160))]);
    }
    for format in [QuantFormat::Q4_K, QuantFormat::Q6_K] {
        cases.extend([
            (format, (1, 5, 256)),
            (format, (3, 17, 768)),
            (format, (MMA_FROM_ROWS - 1, 9, 512)),
        ]);
    }
    for (format, (m, n, k)) in cases {
        let (w, _) = quantized::random_matrix(format, n, k, &mut g);
        let x: Vec<f32> = (0..m * k).map(|_| g.unit()).collect();
        let (xr, wr) = (round_x(&x), w.gguf_rows(0..n));
        let (blocks, row_bytes) = (k / 32, wr.len() / n);
        let (mut want, mut mag) = (vec![0f64; m * n], vec![0f64; m * n]);
        for r in 0..n {
            let terms = row_terms(format, &wr[r * row_bytes..(r + 1) * row_bytes]);
            for i in 0..m {
                for (b, (a0, a1, c, q)) in terms.iter().enumerate() {
                    let (xq, xd, xdsum) = &xr[i * blocks + b];
                    let half = |h: usize| -> f64 {
                        let isum: i32 = (16 * h..16 * h + 16).map(|e| q[e] * xq[e]).sum();
                        [a0, a1][h] * f64::from(*xd) * f64::from(isum)
                    };
                    let (t0, t1, t2) = (half(0), half(1), c * f64::from(*xdsum));
                    want[i * n + r] += t0 + t1 + t2;
                    mag[i * n + r] += t0.abs() + t1.abs() + t2.abs();
                }
            }
        }
        // f32::EPSILON is 2⁻²³, twice the unit roundoff 2⁻²⁴: the bound above, doubled
        let allowed = |j: usize| (blocks + 3) as f64 * f64::from(f32::EPSILON) * mag[j] + 1e-30;
        let _no_grad = kiln::no_grad();
        let cpu = Tensor::from_vec(x.clone(), &[m, k], &Device::Cpu)
            .unwrap()
            .linear_quantized(&w)
            .unwrap()
            .to_vec::<f64>()
            .unwrap();
        for dev in devices().into_iter().filter(|d| *d != Device::Cpu) {
            let y = Tensor::from_vec(x.clone(), &[m, k], &dev)
                .unwrap()
                .linear_quantized(&w.to_device(&dev).unwrap())
                .unwrap();
            assert_eq!(y.shape(), &[m, n]);
            let y = y.to_vec::<f64>().unwrap();
            for (j, (&got, &exp)) in y.iter().zip(&want).enumerate() {
                let what = format!("{format} [{n}, {k}] x [{m}, {k}] on {dev}: y[{}][{}]", j / n, j % n);
                assert!(
                    (got - exp).abs() <= allowed(j),
                    "{what} = {got}, the formula in f64 gives {exp} (allowed {:.3e})",
                    allowed(j)
                );
                // the CPU's integer kernels: the same sums, their own f32 order
                assert!(
                    (got - cpu[j]).abs() <= 2.0 * allowed(j),
                    "{what} = {got}, the CPU gives {}",
                    cpu[j]
                );
            }
        }
    }
}
