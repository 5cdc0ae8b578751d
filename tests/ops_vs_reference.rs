//! Every CPU op against the naive f64 loops of `kiln::backend::cpu::reference`.
//!
//! Inputs are random shapes (size 1, primes, zero-size dims where the op allows them, NumPy
//! broadcasts) filled from a seeded `kiln::Rng`, and most operands are built as *views*
//! (permuted, narrowed out of a NaN-padded parent, broadcast with stride 0) so that the
//! strided paths are exercised, not only the contiguous ones. Each op runs in F64 and F32
//! and is compared with the reference evaluated on the very values the tensor holds, within
//! `atol + rtol·|ref|` (see [`Tol`]). The `fast_path_*` tests use inputs large enough to cross
//! the rayon threshold and the GEMM's blocking.

use kiln::backend::cpu::reference as r;
use kiln::ops::rope::RopeLayout;
use kiln::{DType, Device, Rng, Tensor};
use proptest::prelude::*;
use proptest::sample::select;

const DEV: Device = Device::Cpu;
const DTYPES: [DType; 2] = [DType::F64, DType::F32];

// ---------------------------------------------------------------------------------------
// Tolerances
// ---------------------------------------------------------------------------------------

/// `|got − ref| ≤ atol + rtol·|ref|` elementwise; NaN must meet NaN and ±inf the same inf.
#[derive(Clone, Copy, Debug)]
struct Tol {
    atol: f64,
    rtol: f64,
}

const EXACT: Tol = Tol { atol: 0.0, rtol: 0.0 };

/// The unit roundoff u of a dtype: one correctly rounded operation errs by at most u·|x|.
fn unit_roundoff(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => f64::EPSILON / 2.0,        // 2^-53
        DType::F32 => f32::EPSILON as f64 / 2.0, // 2^-24
        other => panic!("no roundoff for {other}"),
    }
}

impl Tol {
    /// Elementwise maps: both sides evaluate the same formula on the same input, so they
    /// differ only by a few roundings of the dtype (libm's exp/tanh/powf are within an ulp or
    /// two; gelu chains a handful of operations). `scale` bounds the magnitude of the
    /// intermediates, for outputs that cancel to near zero.
    fn elementwise(dtype: DType, scale: f64) -> Tol {
        let u = unit_roundoff(dtype);
        Tol {
            atol: 16.0 * u * scale.max(1.0),
            rtol: 8.0 * u,
        }
    }

    /// A sum of `n` terms whose absolute values add up to at most `abs_sum`, accumulated in
    /// f64 (the CPU reductions promise that) and rounded once to the dtype: the classic
    /// bound (n+2)·u64·Σ|x| for the accumulation plus one rounding to the output type.
    fn sum(dtype: DType, n: usize, abs_sum: f64) -> Tol {
        Tol {
            atol: (n as f64 + 2.0) * unit_roundoff(DType::F64) * abs_sum,
            rtol: 2.0 * unit_roundoff(dtype),
        }
    }

    /// A dot product of length k in the dtype, in any order and with or without FMA:
    /// |err| ≤ (k+2)·u·Σ|a||b|, with `abs_dot` the largest Σ|a||b| of the product.
    fn dot(dtype: DType, k: usize, abs_dot: f64) -> Tol {
        Tol {
            atol: (k as f64 + 2.0) * unit_roundoff(dtype) * abs_dot,
            rtol: 0.0,
        }
    }

    /// Fused row ops (softmax, log_softmax, layer_norm, cross_entropy) over rows of `c`
    /// elements computed in the dtype: a row sum errs by up to c·u relative to its terms, and a
    /// handful of further operations follow; `scale` bounds the inputs' magnitude.
    fn row(dtype: DType, c: usize, scale: f64) -> Tol {
        let u = unit_roundoff(dtype);
        let ops = 4.0 * c as f64 + 16.0;
        Tol {
            atol: ops * u * scale.max(1.0),
            rtol: ops * u,
        }
    }
}

#[track_caller]
fn assert_close(what: &str, got: &[f64], want: &[f64], tol: Tol) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: {} values, reference has {}",
        got.len(),
        want.len()
    );
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= tol.atol + tol.rtol * w.abs()
        };
        assert!(
            ok,
            "{what}: element {i} of {} is {g}, reference {w} (|diff| {:e} > {:e} + {:e}·|ref|)",
            got.len(),
            (g - w).abs(),
            tol.atol,
            tol.rtol
        );
    }
}

/// Checks shape and values of `t` against a reference result.
#[track_caller]
fn check(what: &str, t: &Tensor, want: &[f64], want_shape: &[usize], tol: Tol) {
    assert_eq!(t.shape(), want_shape, "{what}: shape");
    assert_close(what, &t.to_vec::<f64>().unwrap(), want, tol);
}

fn max_abs(x: &[f64]) -> f64 {
    x.iter().filter(|v| v.is_finite()).fold(0.0, |m, v| m.max(v.abs()))
}

// ---------------------------------------------------------------------------------------
// Inputs: data, shapes and views
// ---------------------------------------------------------------------------------------

/// `n` normal samples times `scale`.
fn normal(rng: &mut Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| rng.normal() * scale).collect()
}

/// In a quarter of the cases, turns about 5% of `values` into NaN: elementwise ops and
/// reductions must propagate NaN (never hide it), as PyTorch does.
fn sprinkle_nans(values: &mut [f64], rng: &mut Rng) {
    if rng.below(4) == 0 {
        for v in values.iter_mut() {
            if rng.below(20) == 0 {
                *v = f64::NAN;
            }
        }
    }
}

/// `x` as the dtype holds it.
fn round_to(dtype: DType, x: f64) -> f64 {
    match dtype {
        DType::F64 => x,
        DType::F32 => x as f32 as f64,
        other => panic!("round_to {other}"),
    }
}

/// A tensor of `dtype` and logical shape `shape` holding `values`, built as a random view
/// (up to `depth` nested view ops), and the logical values it holds: `values` rounded to the
/// dtype, except that a broadcast view repeats one slice of them.
///
/// - permuted: the data is stored with its dims reordered and `permute` puts them back;
/// - narrowed: the data sits inside a parent padded with NaN along one dim, so any read
///   outside the view turns a result into NaN;
/// - broadcast: one slice along a dim (or the whole tensor minus a leading dim) repeated
///   with stride 0 (only where `may_broadcast`: the padding of a narrowed parent must not be
///   broadcast into view).
fn view_of(values: &[f64], shape: &[usize], dtype: DType, rng: &mut Rng, depth: u32) -> (Tensor, Vec<f64>) {
    build_view(values, shape, dtype, rng, depth, true)
}

fn build_view(
    values: &[f64],
    shape: &[usize],
    dtype: DType,
    rng: &mut Rng,
    depth: u32,
    may_broadcast: bool,
) -> (Tensor, Vec<f64>) {
    let rank = shape.len();
    let kind = if depth == 0 || rank == 0 { 0 } else { rng.below(4) };
    match kind {
        1 => {
            // stored as permute(values, p); permuting back by the inverse of p gives the view
            let mut p: Vec<usize> = (0..rank).collect();
            for i in (1..rank).rev() {
                p.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let (stored, stored_shape) = r::permute(values, shape, &p);
            let (base, base_values) = build_view(&stored, &stored_shape, dtype, rng, depth - 1, may_broadcast);
            let mut inverse = vec![0; rank];
            for (i, &d) in p.iter().enumerate() {
                inverse[d] = i;
            }
            let t = base.permute(&inverse).unwrap();
            (t, r::permute(&base_values, &stored_shape, &inverse).0)
        }
        2 => {
            let d = rng.below(rank as u64) as usize;
            let (before, after) = (rng.below(3) as usize, 1 + rng.below(2) as usize);
            let pad = |len: usize| {
                let mut s = shape.to_vec();
                s[d] = len;
                (vec![f64::NAN; r::numel(&s)], s)
            };
            let ((a, a_shape), (b, b_shape)) = (pad(before), pad(after));
            let (parent, parent_shape) = r::cat(&[(&a, &a_shape), (values, shape), (&b, &b_shape)], d);
            let (base, base_values) = build_view(&parent, &parent_shape, dtype, rng, depth - 1, false);
            let t = base.narrow(d as isize, before, shape[d]).unwrap();
            (t, r::narrow(&base_values, &parent_shape, d, before, shape[d]).0)
        }
        3 if may_broadcast => {
            let d = rng.below(rank as u64) as usize;
            if shape[d] == 0 {
                return build_view(values, shape, dtype, rng, 0, false);
            }
            let (slice, mut slice_shape) = r::narrow(values, shape, d, 0, 1);
            if d == 0 && rng.below(2) == 0 {
                slice_shape.remove(0); // a missing leading dim broadcasts too
            }
            let (base, base_values) = build_view(&slice, &slice_shape, dtype, rng, depth - 1, true);
            let t = base.broadcast_to(shape).unwrap();
            (t, r::broadcast_to(&base_values, &slice_shape, shape))
        }
        _ => {
            let rounded: Vec<f64> = values.iter().map(|&v| round_to(dtype, v)).collect();
            let t = Tensor::from_vec(rounded.clone(), shape, &DEV)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            (t, rounded)
        }
    }
}

/// A contiguous tensor of `dtype` and the values it holds.
fn contiguous_of(values: &[f64], shape: &[usize], dtype: DType) -> (Tensor, Vec<f64>) {
    build_view(values, shape, dtype, &mut Rng::new(0), 0, false)
}

/// A dim size: zero now and then (where allowed), 1, primes, and anything up to `max`.
fn dim(max: usize, allow_zero: bool) -> BoxedStrategy<usize> {
    let primes: Vec<usize> = vec![2, 3, 5, 7, 13].into_iter().filter(|&p| p <= max).collect();
    let nonzero = prop_oneof![3 => Just(1usize), 2 => select(primes), 4 => 1..=max];
    if allow_zero {
        // listed first, so that shrinking also tries an empty dim
        prop_oneof![1 => Just(0usize), 9 => nonzero].boxed()
    } else {
        nonzero.boxed()
    }
}

/// A shape of rank `min_rank..=max_rank` with at most ~5000 elements: long dims (up to 40)
/// at rank ≤ 2, short ones beyond.
fn shape(min_rank: usize, max_rank: usize, allow_zero: bool) -> impl Strategy<Value = Vec<usize>> {
    (min_rank..=max_rank)
        .prop_flat_map(move |rank| {
            let max = if rank <= 2 { 40 } else { 9 };
            proptest::collection::vec(dim(max, allow_zero), rank)
        })
        .prop_filter("at most 5000 elements", |s| r::numel(s) <= 5000)
}

/// A shape that broadcasts to `out`: some leading dims dropped, some dims set to 1.
fn broadcast_source(out: &[usize], rng: &mut Rng) -> Vec<usize> {
    let drop = rng.below(out.len() as u64 + 1) as usize;
    out[drop..]
        .iter()
        .map(|&d| if rng.below(3) == 0 { 1 } else { d })
        .collect()
}

/// `dim` as the API may name it: non-negative, or counted from the end.
fn signed_dim(dim: usize, rank: usize, rng: &mut Rng) -> isize {
    if rng.below(2) == 0 {
        dim as isize
    } else {
        dim as isize - rank as isize
    }
}

fn ids_tensor(ids: &[u32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(ids.to_vec(), shape, &DEV).unwrap()
}

// ---------------------------------------------------------------------------------------
// Elementwise
// ---------------------------------------------------------------------------------------

type TensorFn = Box<dyn Fn(&Tensor) -> kiln::Result<Tensor>>;
type ScalarFn = Box<dyn Fn(f64) -> f64>;

/// Every unary op: (name, kiln op, reference, whether it needs positive inputs).
fn unary_ops(p: f64, mul: f64, add: f64) -> Vec<(String, TensorFn, ScalarFn, bool)> {
    vec![
        ("neg".into(), Box::new(|t: &Tensor| t.neg()), Box::new(r::neg), false),
        ("exp".into(), Box::new(|t: &Tensor| t.exp()), Box::new(r::exp), false),
        ("log".into(), Box::new(|t: &Tensor| t.log()), Box::new(r::log), true),
        ("sqrt".into(), Box::new(|t: &Tensor| t.sqrt()), Box::new(r::sqrt), true),
        ("tanh".into(), Box::new(|t: &Tensor| t.tanh()), Box::new(r::tanh), false),
        ("gelu".into(), Box::new(|t: &Tensor| t.gelu()), Box::new(r::gelu), false),
        ("relu".into(), Box::new(|t: &Tensor| t.relu()), Box::new(r::relu), false),
        ("silu".into(), Box::new(|t: &Tensor| t.silu()), Box::new(r::silu), false),
        ("abs".into(), Box::new(|t: &Tensor| t.abs()), Box::new(r::abs), false),
        (
            "sigmoid".into(),
            Box::new(|t: &Tensor| t.sigmoid()),
            Box::new(r::sigmoid),
            false,
        ),
        (
            "gelu_erf".into(),
            Box::new(|t: &Tensor| t.gelu_erf()),
            Box::new(r::gelu_erf),
            false,
        ),
        (
            "clamp(-0.7, 1.3)".into(),
            Box::new(|t: &Tensor| t.clamp(-0.7, 1.3)),
            Box::new(|x| r::clamp(x, -0.7, 1.3)),
            false,
        ),
        (
            "recip".into(),
            Box::new(|t: &Tensor| t.recip()),
            Box::new(r::recip),
            true,
        ),
        (
            "sqr".into(),
            Box::new(|t: &Tensor| t.sqr()),
            Box::new(|x| r::powf(x, 2.0)),
            false,
        ),
        (
            format!("powf({p})"),
            Box::new(move |t: &Tensor| t.powf(p)),
            Box::new(move |x| r::powf(x, p)),
            true,
        ),
        (
            format!("affine({mul}, {add})"),
            Box::new(move |t: &Tensor| t.affine(mul, add)),
            Box::new(move |x| r::affine(x, mul, add)),
            false,
        ),
    ]
}

fn check_unary(shape: &[usize], seed: u64, p: f64, mul: f64, add: f64) {
    let mut rng = Rng::new(seed);
    let mut signed = normal(&mut rng, r::numel(shape), 2.0);
    sprinkle_nans(&mut signed, &mut rng);
    let positive: Vec<f64> = signed.iter().map(|v| v.abs() + 0.05).collect();
    for (name, op, reference, needs_positive) in unary_ops(p, mul, add) {
        let values = if needs_positive { &positive } else { &signed };
        for dtype in DTYPES {
            let (x, held) = view_of(values, shape, dtype, &mut rng, 2);
            let want = r::map(&held, &reference);
            let scale = max_abs(&held);
            check(
                &format!("{name} {dtype} {shape:?}"),
                &op(&x).unwrap(),
                &want,
                shape,
                Tol::elementwise(dtype, scale),
            );
        }
    }
}

/// GELU's fused backward `dy·gelu'(z)` on two independent views of one shape (up to `depth` view
/// ops; 0: contiguous), against the reference's term-by-term derivative of the tanh form (the CPU
/// computes it through σ(2u)).
fn check_gelu_backward(shape: &[usize], seed: u64, depth: u32) {
    let mut rng = Rng::new(seed);
    let mut dy = normal(&mut rng, r::numel(shape), 2.0);
    let mut z = normal(&mut rng, r::numel(shape), 3.0);
    sprinkle_nans(&mut dy, &mut rng);
    sprinkle_nans(&mut z, &mut rng);
    for dtype in DTYPES {
        let (tdy, hdy) = view_of(&dy, shape, dtype, &mut rng, depth);
        let (tz, hz) = view_of(&z, shape, dtype, &mut rng, depth);
        let want: Vec<f64> = hdy.iter().zip(&hz).map(|(&g, &z)| r::gelu_backward(g, z)).collect();
        // the formula's intermediates reach |dy|·(1 + 0.4·|z|·(1 + 0.134·z²)) before they cancel
        let scale = hdy
            .iter()
            .zip(&hz)
            .filter(|(g, z)| g.is_finite() && z.is_finite())
            .map(|(g, z)| g.abs() * (1.0 + 0.4 * z.abs() * (1.0 + 0.134 * z * z)))
            .fold(0.0, f64::max);
        check(
            &format!("gelu_backward {dtype} {shape:?}"),
            &tdy.gelu_backward(&tz).unwrap(),
            &want,
            shape,
            Tol::elementwise(dtype, scale),
        );
    }
}

type BinaryFn = fn(&Tensor, &Tensor) -> kiln::Result<Tensor>;
/// (name, kiln op, reference).
type BinaryCase = (&'static str, BinaryFn, fn(f64, f64) -> f64);

const ARITHMETIC: [BinaryCase; 6] = [
    ("add", Tensor::add, r::add),
    ("sub", Tensor::sub, r::sub),
    ("mul", Tensor::mul, r::mul),
    ("div", Tensor::div, r::div),
    ("maximum", Tensor::maximum, r::maximum),
    ("minimum", Tensor::minimum, r::minimum),
];

const COMPARISONS: [BinaryCase; 6] = [
    ("eq", Tensor::eq, r::eq),
    ("ne", Tensor::ne, r::ne),
    ("lt", Tensor::lt, r::lt),
    ("le", Tensor::le, r::le),
    ("gt", Tensor::gt, r::gt),
    ("ge", Tensor::ge, r::ge),
];

fn check_binary(a_shape: &[usize], b_shape: &[usize], seed: u64) {
    let mut rng = Rng::new(seed);
    let mut a = normal(&mut rng, r::numel(a_shape), 2.0);
    // keep divisors away from zero so the quotient stays well-conditioned
    let mut b: Vec<f64> = normal(&mut rng, r::numel(b_shape), 2.0)
        .into_iter()
        .map(|v| if v.abs() < 0.1 { v + 0.25 } else { v })
        .collect();
    sprinkle_nans(&mut a, &mut rng);
    sprinkle_nans(&mut b, &mut rng);
    // quantised copies make ties common, so eq/le/ge are tested on equal values
    let quantise = |v: &[f64]| v.iter().map(|x| (x * 2.0).round() / 2.0).collect::<Vec<_>>();
    let (qa, qb) = (quantise(&a), quantise(&b));
    for dtype in DTYPES {
        let (ta, ha) = view_of(&a, a_shape, dtype, &mut rng, 2);
        let (tb, hb) = view_of(&b, b_shape, dtype, &mut rng, 2);
        for (name, op, reference) in ARITHMETIC {
            let (want, shape) = r::binary(&ha, a_shape, &hb, b_shape, reference);
            let tol = Tol::elementwise(dtype, 0.0);
            check(
                &format!("{name} {dtype} {a_shape:?} {b_shape:?}"),
                &op(&ta, &tb).unwrap(),
                &want,
                &shape,
                tol,
            );
        }
        let (ta, ha) = view_of(&qa, a_shape, dtype, &mut rng, 2);
        let (tb, hb) = view_of(&qb, b_shape, dtype, &mut rng, 2);
        for (name, op, reference) in COMPARISONS {
            let (want, shape) = r::binary(&ha, a_shape, &hb, b_shape, reference);
            let got = op(&ta, &tb).unwrap();
            assert_eq!(got.dtype(), DType::U32, "{name} returns u32");
            check(
                &format!("{name} {dtype} {a_shape:?} {b_shape:?}"),
                &got,
                &want,
                &shape,
                EXACT,
            );
        }
    }
}

fn check_where(out: &[usize], seed: u64) {
    let mut rng = Rng::new(seed);
    let (c_shape, t_shape, f_shape) = (
        broadcast_source(out, &mut rng),
        broadcast_source(out, &mut rng),
        broadcast_source(out, &mut rng),
    );
    let cond: Vec<u32> = (0..r::numel(&c_shape))
        .map(|_| [0, 1, 7][rng.below(3) as usize])
        .collect();
    let cond_f: Vec<f64> = cond.iter().map(|&c| c as f64).collect();
    let t = normal(&mut rng, r::numel(&t_shape), 1.0);
    let f = normal(&mut rng, r::numel(&f_shape), 1.0);
    for dtype in DTYPES {
        let (tt, ht) = view_of(&t, &t_shape, dtype, &mut rng, 2);
        let (tf, hf) = view_of(&f, &f_shape, dtype, &mut rng, 2);
        let tc = ids_tensor(&cond, &c_shape);
        let (want, shape) = r::where_cond(&cond_f, &c_shape, &ht, &t_shape, &hf, &f_shape);
        check(
            &format!("where_cond {dtype} {c_shape:?} {t_shape:?} {f_shape:?}"),
            &tc.where_cond(&tt, &tf).unwrap(),
            &want,
            &shape,
            EXACT,
        );
        // masked_fill: the mask broadcasts to the input's shape
        let (x, hx) = view_of(&normal(&mut rng, r::numel(out), 1.0), out, dtype, &mut rng, 2);
        let mask_shape = broadcast_source(out, &mut rng);
        let mask: Vec<u32> = (0..r::numel(&mask_shape)).map(|_| rng.below(2) as u32).collect();
        let mask_f: Vec<f64> = mask.iter().map(|&m| m as f64).collect();
        let want = r::masked_fill(&hx, out, &mask_f, &mask_shape, -1.5);
        check(
            &format!("masked_fill {dtype} {out:?} {mask_shape:?}"),
            &x.masked_fill(&ids_tensor(&mask, &mask_shape), -1.5).unwrap(),
            &want,
            out,
            EXACT,
        );
    }
}

// ---------------------------------------------------------------------------------------
// Reductions
// ---------------------------------------------------------------------------------------

fn check_reductions(shape: &[usize], seed: u64) {
    let mut rng = Rng::new(seed);
    let rank = shape.len();
    let dims: Vec<usize> = (0..rank).filter(|_| rng.below(2) == 0).collect();
    let mut api_dims: Vec<isize> = dims.iter().map(|&d| signed_dim(d, rank, &mut rng)).collect();
    api_dims.reverse(); // any order is accepted
    let keepdim = rng.below(2) == 0;
    let count: usize = dims.iter().map(|&d| shape[d]).product();
    let mut values = normal(&mut rng, r::numel(shape), 3.0);
    sprinkle_nans(&mut values, &mut rng);
    for dtype in DTYPES {
        let (x, held) = view_of(&values, shape, dtype, &mut rng, 2);
        let what = |op: &str| format!("{op} {dtype} {shape:?} dims {api_dims:?} keepdim {keepdim}");
        let abs_sum = max_abs(&r::sum(&r::map(&held, f64::abs), shape, &dims, true).0);

        let (want, want_shape) = r::sum(&held, shape, &dims, keepdim);
        let tol = Tol::sum(dtype, count, abs_sum);
        check(
            &what("sum"),
            &x.sum(&api_dims, keepdim).unwrap(),
            &want,
            &want_shape,
            tol,
        );

        let mean = x.mean(&api_dims, keepdim);
        if count == 0 {
            assert!(mean.is_err(), "{}: the mean of nothing must be refused", what("mean"));
        } else {
            let (want, want_shape) = r::mean(&held, shape, &dims, keepdim);
            // the sum rounded to the dtype, then scaled by 1/count in the dtype
            let tol = Tol {
                atol: tol.atol / count as f64,
                rtol: 4.0 * unit_roundoff(dtype),
            };
            check(&what("mean"), &mean.unwrap(), &want, &want_shape, tol);
        }

        for (op, got, reference) in [
            (
                "max",
                x.max(&api_dims, keepdim),
                r::max as fn(&[f64], &[usize], &[usize], bool) -> (Vec<f64>, Vec<usize>),
            ),
            ("min", x.min(&api_dims, keepdim), r::min),
        ] {
            if dims.iter().any(|&d| shape[d] == 0) {
                assert!(got.is_err(), "{}: an empty reduction must be refused", what(op));
            } else {
                let (want, want_shape) = reference(&held, shape, &dims, keepdim);
                check(&what(op), &got.unwrap(), &want, &want_shape, EXACT);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Matmul
// ---------------------------------------------------------------------------------------

fn check_matmul(a_shape: &[usize], b_shape: &[usize], seed: u64, depth: u32) {
    let mut rng = Rng::new(seed);
    let k = a_shape[a_shape.len() - 1];
    let a = normal(&mut rng, r::numel(a_shape), 1.0);
    let b = normal(&mut rng, r::numel(b_shape), 1.0);
    for dtype in DTYPES {
        let (ta, ha) = view_of(&a, a_shape, dtype, &mut rng, depth);
        let (tb, hb) = view_of(&b, b_shape, dtype, &mut rng, depth);
        let (want, shape) = r::matmul(&ha, a_shape, &hb, b_shape);
        let abs_dot = r::matmul(&r::map(&ha, f64::abs), a_shape, &r::map(&hb, f64::abs), b_shape).0;
        check(
            &format!("matmul {dtype} {a_shape:?} x {b_shape:?}"),
            &ta.matmul(&tb).unwrap(),
            &want,
            &shape,
            Tol::dot(dtype, k, max_abs(&abs_dot)),
        );
    }
}

/// `[batch_a.., m, k]` and `[batch_b.., k, n]` with broadcasting batch dims.
fn matmul_shapes() -> impl Strategy<Value = (Vec<usize>, Vec<usize>, u64)> {
    let size = || {
        prop_oneof![
            1 => Just(0usize),
            2 => Just(1usize),
            2 => select(vec![2usize, 7, 13, 64, 65]),
            4 => 1..=70usize,
        ]
    };
    let batch = proptest::collection::vec(1..=3usize, 0..=2);
    (size(), size(), size(), batch, any::<u64>()).prop_map(|(m, k, n, batch, seed)| {
        let mut rng = Rng::new(seed);
        let a_batch = broadcast_source(&batch, &mut rng);
        let b_batch = if rng.below(2) == 0 {
            batch.clone()
        } else {
            broadcast_source(&batch, &mut rng)
        };
        ([a_batch, vec![m, k]].concat(), [b_batch, vec![k, n]].concat(), seed)
    })
}

// ---------------------------------------------------------------------------------------
// Fused row ops
// ---------------------------------------------------------------------------------------

fn check_softmax(shape: &[usize], seed: u64) {
    let mut rng = Rng::new(seed);
    let rank = shape.len();
    let d = rng.below(rank as u64) as usize;
    let api_dim = signed_dim(d, rank, &mut rng);
    let masked = rng.below(3) as f64 * 0.2; // sometimes -inf entries, some rows fully masked
    let values: Vec<f64> = normal(&mut rng, r::numel(shape), 3.0)
        .into_iter()
        .map(|v| if rng.uniform() < masked { f64::NEG_INFINITY } else { v })
        .collect();
    for dtype in DTYPES {
        let (x, held) = view_of(&values, shape, dtype, &mut rng, 2);
        let tol = Tol::row(dtype, shape[d], max_abs(&held));
        let what = |op: &str| format!("{op} {dtype} {shape:?} dim {api_dim}");
        check(
            &what("softmax"),
            &x.softmax(api_dim).unwrap(),
            &r::softmax(&held, shape, d),
            shape,
            tol,
        );
        check(
            &what("log_softmax"),
            &x.log_softmax(api_dim).unwrap(),
            &r::log_softmax(&held, shape, d),
            shape,
            tol,
        );
    }
}

/// How much layer_norm magnifies rounding errors of its inputs: max over rows of
/// max|x| / √(var + eps). An error δ in the row mean (≈ c·u·max|x| in the dtype) moves
/// x̂ = (x − mean)/√(var + eps) by δ/√(var + eps); near-constant rows (var ≈ 0, as a broadcast
/// view makes) magnify by up to 1/√eps.
fn layer_norm_condition(x: &[f64], shape: &[usize], eps: f64) -> f64 {
    let c = shape[shape.len() - 1] as f64;
    r::lines_along(shape, shape.len() - 1)
        .iter()
        .map(|line| {
            let row: Vec<f64> = line.iter().map(|&i| x[i]).collect();
            let mean = row.iter().sum::<f64>() / c;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c;
            max_abs(&row) / (var + eps).sqrt()
        })
        .fold(1.0, f64::max)
}

fn check_layer_norm(shape: &[usize], seed: u64) {
    let mut rng = Rng::new(seed);
    let c = shape[shape.len() - 1];
    let eps = [1e-5f32, 1e-3, 0.1][rng.below(3) as usize];
    let offset = rng.normal(); // rows need not be centred
    let values: Vec<f64> = normal(&mut rng, r::numel(shape), 2.0)
        .into_iter()
        .map(|v| v + offset)
        .collect();
    let (w, b) = (normal(&mut rng, c, 1.0), normal(&mut rng, c, 1.0));
    for dtype in DTYPES {
        let (x, hx) = view_of(&values, shape, dtype, &mut rng, 2);
        // the parameters as views too (never broadcast: they must hold distinct values)
        let (tw, hw) = build_view(&w, &[c], dtype, &mut rng, 1, false);
        let (tb, hb) = build_view(&b, &[c], dtype, &mut rng, 1, false);
        let scale = max_abs(&hw) * layer_norm_condition(&hx, shape, eps as f64) + max_abs(&hb);
        let tol = Tol::row(dtype, c, scale);
        let what = |op: &str| format!("{op} {dtype} {shape:?} eps {eps}");
        check(
            &what("layer_norm"),
            &x.layer_norm(&tw, &tb, eps).unwrap(),
            &r::layer_norm(&hx, shape, &hw, Some(&hb), eps as f64),
            shape,
            tol,
        );
        check(
            &what("layer_norm_no_bias"),
            &x.layer_norm_no_bias(&tw, eps).unwrap(),
            &r::layer_norm(&hx, shape, &hw, None, eps as f64),
            shape,
            tol,
        );
    }
}

/// swiglu(gate, up) on two independent views of one shape (up to `depth` view ops; 0: contiguous).
fn check_swiglu(shape: &[usize], seed: u64, depth: u32) {
    let mut rng = Rng::new(seed);
    let mut gate = normal(&mut rng, r::numel(shape), 3.0);
    let mut up = normal(&mut rng, r::numel(shape), 2.0);
    sprinkle_nans(&mut gate, &mut rng);
    sprinkle_nans(&mut up, &mut rng);
    for dtype in DTYPES {
        let (tg, hg) = view_of(&gate, shape, dtype, &mut rng, depth);
        let (tu, hu) = view_of(&up, shape, dtype, &mut rng, depth);
        let want: Vec<f64> = hg.iter().zip(&hu).map(|(&g, &u)| r::swiglu(g, u)).collect();
        check(
            &format!("swiglu {dtype} {shape:?}"),
            &tg.swiglu(&tu).unwrap(),
            &want,
            shape,
            Tol::elementwise(dtype, max_abs(&hg) * max_abs(&hu)),
        );
    }
}

/// How much rms_norm magnifies the rounding of its inputs: max over rows of max|x| / rms(x), at
/// most √c (the row's sum of squares errs by about c·u relative to itself).
fn rms_norm_condition(x: &[f64], shape: &[usize], eps: f64) -> f64 {
    let c = shape[shape.len() - 1] as f64;
    r::lines_along(shape, shape.len() - 1)
        .iter()
        .map(|line| {
            let row: Vec<f64> = line.iter().map(|&i| x[i]).collect();
            let mean_sq = row.iter().map(|v| v * v).sum::<f64>() / c;
            max_abs(&row) / (mean_sq + eps).sqrt()
        })
        .fold(1.0, f64::max)
}

fn check_rms_norm(shape: &[usize], seed: u64) {
    let mut rng = Rng::new(seed);
    let c = shape[shape.len() - 1];
    let eps = [1e-5f32, 1e-6, 0.1][rng.below(3) as usize];
    let values = normal(&mut rng, r::numel(shape), 2.0);
    let w = normal(&mut rng, c, 1.0);
    for dtype in DTYPES {
        let (x, hx) = view_of(&values, shape, dtype, &mut rng, 2);
        let (tw, hw) = build_view(&w, &[c], dtype, &mut rng, 1, false);
        let scale = max_abs(&hw) * rms_norm_condition(&hx, shape, eps as f64);
        check(
            &format!("rms_norm {dtype} {shape:?} eps {eps}"),
            &x.rms_norm(&tw, eps).unwrap(),
            &r::rms_norm(&hx, shape, &hw, eps as f64),
            shape,
            Tol::row(dtype, c, scale),
        );
    }
}

/// rope of x `[batch, seq, heads, head_dim]` (a view up to `depth` ops deep) in both layouts, from
/// `offset`. The reference computes the angles in f64; kiln rounds θᵢ and p·θᵢ to the dtype (f32:
/// as Hugging Face), so an angle may be off by about 2u·p (p up to offset + seq), which moves an
/// output by that much times the pair's magnitude.
fn check_rope(shape: &[usize], seed: u64, offset: usize, depth: u32) {
    let mut rng = Rng::new(seed);
    let base = [1e4, 1e5, 500.0][rng.below(3) as usize];
    let mut values = normal(&mut rng, r::numel(shape), 2.0);
    sprinkle_nans(&mut values, &mut rng);
    let p_max = (offset + shape[1]) as f64;
    for dtype in DTYPES {
        let (x, held) = view_of(&values, shape, dtype, &mut rng, depth);
        let u = unit_roundoff(dtype);
        let tol = Tol {
            atol: 8.0 * u * (p_max + 2.0) * max_abs(&held).max(1.0),
            rtol: 8.0 * u,
        };
        for (layout, interleaved) in [(RopeLayout::Half, false), (RopeLayout::Interleaved, true)] {
            check(
                &format!("rope {layout:?} {dtype} {shape:?} from {offset} base {base}"),
                &x.rope(base, offset, layout).unwrap(),
                &r::rope(&held, shape, base, offset, interleaved),
                shape,
                tol,
            );
        }
    }
}

fn check_cross_entropy(n: usize, c: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    // the ignore index is sometimes a real class, sometimes outside 0..c (as PyTorch's -100)
    let ignore = match rng.below(3) {
        0 => None,
        1 => Some(rng.below(c as u64) as u32),
        _ => Some(u32::MAX),
    };
    let mut targets: Vec<u32> = (0..n).map(|_| rng.below(c as u64) as u32).collect();
    if let Some(i) = ignore {
        for t in targets.iter_mut() {
            if rng.below(3) == 0 {
                *t = i;
            }
        }
        if targets.iter().all(|&t| Some(t) == ignore) {
            targets[0] = (0..c as u32).find(|&t| Some(t) != ignore).unwrap_or(0);
        }
    }
    if targets.iter().all(|&t| Some(t) == ignore) {
        return; // c == 1 and class 0 ignored: nothing to average (refusal is tested elsewhere)
    }
    let logits = normal(&mut rng, n * c, 3.0);
    for dtype in DTYPES {
        let (x, held) = view_of(&logits, &[n, c], dtype, &mut rng, 2);
        let want = r::cross_entropy(&held, n, c, &targets, ignore);
        let got = x
            .cross_entropy_with_ignore(&ids_tensor(&targets, &[n]), ignore)
            .unwrap();
        let tol = Tol::row(dtype, c, max_abs(&held));
        check(
            &format!("cross_entropy {dtype} [{n}, {c}] ignore {ignore:?}"),
            &got,
            &[want],
            &[],
            tol,
        );
        if ignore.is_none() {
            let plain = x.cross_entropy(&ids_tensor(&targets, &[n])).unwrap();
            check(&format!("cross_entropy {dtype} [{n}, {c}]"), &plain, &[want], &[], tol);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Fused attention
// ---------------------------------------------------------------------------------------

/// K or V `[b, hkv, tk, d]` with each head repeated `group` times: `[b, hkv·group, tk, d]`, the
/// multi-head attention that grouped-query attention computes without the copy.
fn repeat_kv(x: &[f64], b: usize, hkv: usize, group: usize, tk: usize, d: usize) -> Vec<f64> {
    let row = tk * d;
    (0..b * hkv * group)
        .flat_map(|qh| {
            let kv = (qh / (hkv * group)) * hkv + (qh % (hkv * group)) / group;
            x[kv * row..(kv + 1) * row].iter().copied()
        })
        .collect()
}

/// The adjoint of [`repeat_kv`]: each key/value head's gradient is the sum over its group.
fn sum_groups(x: &[f64], b: usize, hkv: usize, group: usize, tk: usize, d: usize) -> Vec<f64> {
    let row = tk * d;
    let mut out = vec![0.0; b * hkv * row];
    for qh in 0..b * hkv * group {
        let kv = (qh / (hkv * group)) * hkv + (qh % (hkv * group)) / group;
        for i in 0..row {
            out[kv * row + i] += x[qh * row + i];
        }
    }
    out
}

/// scaled_dot_product_attention of q `[b, h, tq, d]` over k, v `[b, hkv, tk, d]` (views of every
/// kind; hkv < h is grouped-query attention), and its three gradients for the upstream gradient g,
/// against the naive f64 loops on K and V repeated to h heads (their gradients summed back).
#[allow(clippy::too_many_arguments)]
fn check_attention(b: usize, h: usize, hkv: usize, tq: usize, tk: usize, d: usize, causal: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    let group = h / hkv;
    let (q_shape, kv_shape) = ([b, h, tq, d], [b, hkv, tk, d]);
    let q = normal(&mut rng, r::numel(&q_shape), 1.5);
    let k = normal(&mut rng, r::numel(&kv_shape), 1.5);
    let v = normal(&mut rng, r::numel(&kv_shape), 1.0);
    let g = normal(&mut rng, r::numel(&q_shape), 1.0);
    for dtype in DTYPES {
        let (tq_, hq) = view_of(&q, &q_shape, dtype, &mut rng, 2);
        let (tk_, hk) = view_of(&k, &kv_shape, dtype, &mut rng, 2);
        let (tv, hv) = view_of(&v, &kv_shape, dtype, &mut rng, 2);
        let (tg, hg) = contiguous_of(&g, &q_shape, dtype);
        let (tq_, tk_, tv) = (tq_.requires_grad(), tk_.requires_grad(), tv.requires_grad());
        let what = |part: &str| format!("attention {part} {dtype} q {q_shape:?} k {kv_shape:?} causal {causal}");
        // A score errs by a dot product's rounding, which moves the probabilities relatively by
        // as much; the outputs and gradients are sums over tk keys of products with v and g.
        let score = max_abs(&hq) * max_abs(&hk) * (d as f64).sqrt();
        let out_scale = max_abs(&hv) * (1.0 + score);
        let grad_scale = max_abs(&hg) * (1.0 + max_abs(&hv)) * (1.0 + score) * (1.0 + max_abs(&hq) + max_abs(&hk));
        let o = tq_.scaled_dot_product_attention(&tk_, &tv, causal).unwrap();
        let (hk, hv) = (
            repeat_kv(&hk, b, hkv, group, tk, d),
            repeat_kv(&hv, b, hkv, group, tk, d),
        );
        let want = r::attention(&hq, &hk, &hv, b * h, tq, tk, d, causal);
        check(&what("output"), &o, &want, &q_shape, Tol::row(dtype, tk + d, out_scale));
        let grads = o.mul(&tg).unwrap().sum_all().unwrap().backward().unwrap();
        let (dq, dk, dv) = r::attention_grads(&hq, &hk, &hv, &hg, b * h, tq, tk, d, causal);
        let (dk, dv) = (
            sum_groups(&dk, b, hkv, group, tk, d),
            sum_groups(&dv, b, hkv, group, tk, d),
        );
        // dK and dV sum over the group's query heads
        let tol = Tol::row(dtype, 2 * group * (tk + tq + d), grad_scale);
        for (name, t, want, shape) in [
            ("dq", &tq_, &dq, &q_shape),
            ("dk", &tk_, &dk, &kv_shape),
            ("dv", &tv, &dv, &kv_shape),
        ] {
            check(&what(name), grads.get(t).unwrap(), want, shape, tol);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Indexing and shape ops (pure data movement: exact)
// ---------------------------------------------------------------------------------------

fn check_index_select(shape: &[usize], n_ids: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let rank = shape.len();
    let d = rng.below(rank as u64) as usize;
    let ids: Vec<u32> = if shape[d] == 0 {
        vec![]
    } else {
        (0..n_ids).map(|_| rng.below(shape[d] as u64) as u32).collect()
    };
    let values = normal(&mut rng, r::numel(shape), 1.0);
    for dtype in DTYPES {
        let (x, held) = view_of(&values, shape, dtype, &mut rng, 2);
        let (want, want_shape) = r::index_select(&held, shape, d, &ids);
        let got = x
            .index_select(signed_dim(d, rank, &mut rng), &ids_tensor(&ids, &[ids.len()]))
            .unwrap();
        check(
            &format!("index_select {dtype} {shape:?} dim {d} ids {ids:?}"),
            &got,
            &want,
            &want_shape,
            EXACT,
        );
    }
}

fn check_embedding(vocab: usize, c: usize, ids_shape: &[usize], seed: u64) {
    let mut rng = Rng::new(seed);
    let ids: Vec<u32> = (0..r::numel(ids_shape))
        .map(|_| rng.below(vocab as u64) as u32)
        .collect();
    let table = normal(&mut rng, vocab * c, 1.0);
    for dtype in DTYPES {
        let (w, held) = view_of(&table, &[vocab, c], dtype, &mut rng, 2);
        let (want, want_shape) = r::embedding(&ids, ids_shape, &held, vocab, c);
        let got = ids_tensor(&ids, ids_shape).embedding(&w).unwrap();
        check(
            &format!("embedding {dtype} [{vocab}, {c}] ids {ids_shape:?}"),
            &got,
            &want,
            &want_shape,
            EXACT,
        );
    }
}

fn check_shape_ops(shape: &[usize], seed: u64) {
    let mut rng = Rng::new(seed);
    let rank = shape.len();
    let values = normal(&mut rng, r::numel(shape), 1.0);
    for dtype in DTYPES {
        let (x, held) = view_of(&values, shape, dtype, &mut rng, 2);
        let what = |op: &str| format!("{op} {dtype} {shape:?}");
        check(&what("view"), &x, &held, shape, EXACT);
        check(&what("contiguous"), &x.contiguous().unwrap(), &held, shape, EXACT);
        let flat = [r::numel(shape)];
        check(&what("reshape"), &x.reshape(&flat).unwrap(), &held, &flat, EXACT);
        if rank == 0 {
            continue;
        }
        let (d0, d1) = (rng.below(rank as u64) as usize, rng.below(rank as u64) as usize);
        let (want, want_shape) = r::transpose(&held, shape, d0, d1);
        let got = x
            .transpose(signed_dim(d0, rank, &mut rng), signed_dim(d1, rank, &mut rng))
            .unwrap();
        check(
            &what(&format!("transpose({d0}, {d1})")),
            &got,
            &want,
            &want_shape,
            EXACT,
        );

        let mut perm: Vec<usize> = (0..rank).collect();
        for i in (1..rank).rev() {
            perm.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let (want, want_shape) = r::permute(&held, shape, &perm);
        check(
            &what(&format!("permute({perm:?})")),
            &x.permute(&perm).unwrap(),
            &want,
            &want_shape,
            EXACT,
        );

        let d = rng.below(rank as u64) as usize;
        let start = rng.below(shape[d] as u64 + 1) as usize;
        let len = rng.below((shape[d] - start) as u64 + 1) as usize;
        let (want, want_shape) = r::narrow(&held, shape, d, start, len);
        let got = x.narrow(signed_dim(d, rank, &mut rng), start, len).unwrap();
        check(
            &what(&format!("narrow({d}, {start}, {len})")),
            &got,
            &want,
            &want_shape,
            EXACT,
        );

        // broadcast_to a shape with an extra leading dim and every size-1 dim widened
        let target: Vec<usize> = std::iter::once(2)
            .chain(shape.iter().map(|&s| if s == 1 { 3 } else { s }))
            .collect();
        let want = r::broadcast_to(&held, shape, &target);
        check(
            &what("broadcast_to"),
            &x.broadcast_to(&target).unwrap(),
            &want,
            &target,
            EXACT,
        );

        // cat of 1..=3 views that differ along d (sizes 0..=4)
        let parts: Vec<(Tensor, Vec<f64>, Vec<usize>)> = (0..1 + rng.below(3))
            .map(|_| {
                let mut s = shape.to_vec();
                s[d] = rng.below(5) as usize;
                let (t, h) = view_of(&normal(&mut rng, r::numel(&s), 1.0), &s, dtype, &mut rng, 2);
                (t, h, s)
            })
            .collect();
        let tensors: Vec<Tensor> = std::iter::once(x.clone())
            .chain(parts.iter().map(|p| p.0.clone()))
            .collect();
        let mut refs: Vec<(&[f64], &[usize])> = vec![(&held, shape)];
        refs.extend(parts.iter().map(|(_, h, s)| (h.as_slice(), s.as_slice())));
        let (want, want_shape) = r::cat(&refs, d);
        let got = Tensor::cat(&tensors, signed_dim(d, rank, &mut rng)).unwrap();
        check(&what(&format!("cat along {d}")), &got, &want, &want_shape, EXACT);
    }
}

// ---------------------------------------------------------------------------------------
// Everyday ops: argmax/argmin, gather/scatter_add, var/std, stack/chunk/split, losses
// ---------------------------------------------------------------------------------------

/// argmax and argmin along each dim, on views holding ties (values on a coarse grid) and NaNs.
fn check_arg_extremum(shape: &[usize], seed: u64) {
    let mut rng = Rng::new(seed);
    let rank = shape.len();
    let mut values: Vec<f64> = (0..r::numel(shape)).map(|_| rng.below(5) as f64 - 2.0).collect();
    sprinkle_nans(&mut values, &mut rng);
    for dtype in DTYPES {
        let (x, held) = view_of(&values, shape, dtype, &mut rng, 2);
        for d in 0..rank {
            if shape[d] == 0 {
                continue;
            }
            for (name, largest) in [("argmax", true), ("argmin", false)] {
                let keepdim = rng.below(2) == 0;
                let dim = signed_dim(d, rank, &mut rng);
                let got = if largest {
                    x.argmax(dim, keepdim)
                } else {
                    x.argmin(dim, keepdim)
                }
                .unwrap();
                let (want, mut want_shape) = r::arg_extremum(&held, shape, d, largest);
                if keepdim {
                    want_shape.insert(d, 1);
                }
                assert_eq!(got.dtype(), DType::U32, "{name}: dtype");
                let want: Vec<f64> = want.iter().map(|&i| i as f64).collect();
                check(
                    &format!("{name} {dtype} {shape:?} dim {d}"),
                    &got,
                    &want,
                    &want_shape,
                    EXACT,
                );
            }
        }
    }
}

/// gather and scatter_add along a random dim with an index smaller than the input outside it.
fn check_gather_scatter(shape: &[usize], seed: u64) {
    let mut rng = Rng::new(seed);
    let rank = shape.len();
    let d = rng.below(rank as u64) as usize;
    let index_shape: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(k, &s)| {
            if k == d {
                rng.below(6) as usize
            } else {
                rng.below(s as u64 + 1) as usize
            }
        })
        .collect();
    let index: Vec<u32> = if shape[d] == 0 {
        vec![0; 0]
    } else {
        (0..r::numel(&index_shape))
            .map(|_| rng.below(shape[d] as u64) as u32)
            .collect()
    };
    let index_shape = if shape[d] == 0 { vec![0; rank] } else { index_shape };
    let values = normal(&mut rng, r::numel(shape), 1.0);
    let src_values = normal(&mut rng, r::numel(&index_shape), 1.0);
    let idx = ids_tensor(&index, &index_shape);
    for dtype in DTYPES {
        let what = |op: &str| format!("{op} {dtype} {shape:?} dim {d} index {index_shape:?}");
        let (x, held) = view_of(&values, shape, dtype, &mut rng, 2);
        let dim = signed_dim(d, rank, &mut rng);
        let want = r::gather(&held, shape, d, &index, &index_shape);
        check(
            &what("gather"),
            &x.gather(dim, &idx).unwrap(),
            &want,
            &index_shape,
            EXACT,
        );
        let (src, src_held) = view_of(&src_values, &index_shape, dtype, &mut rng, 2);
        let want = r::scatter_add(&held, shape, d, &index, &index_shape, &src_held);
        // the src elements landing on one position are summed in f64 and rounded to the dtype, then
        // added to x's and rounded again: two roundings of values up to |x| + Σ|src|
        let abs_sum = max_abs(&held) + src_held.iter().map(|v| v.abs()).sum::<f64>();
        let tol = Tol {
            atol: 4.0 * unit_roundoff(dtype) * abs_sum,
            rtol: 2.0 * unit_roundoff(dtype),
        };
        check(
            &what("scatter_add"),
            &x.scatter_add(dim, &idx, &src).unwrap(),
            &want,
            shape,
            tol,
        );
    }
}

/// var and std over each dim with both corrections, against the two-pass f64 reference.
fn check_var(shape: &[usize], seed: u64) {
    let mut rng = Rng::new(seed);
    let rank = shape.len();
    let values = normal(&mut rng, r::numel(shape), 2.0);
    for dtype in DTYPES {
        let (x, held) = view_of(&values, shape, dtype, &mut rng, 2);
        for d in 0..rank {
            for correction in [0, 1] {
                if shape[d] <= correction {
                    assert!(x.var(&[d as isize], correction, false).is_err());
                    continue;
                }
                let want = r::var(&held, shape, d, correction);
                let want_shape = r::reduced_shape(shape, &[d], false);
                // centring, squaring and summing n terms: about n roundings of values up to max²
                let n = shape[d];
                let scale = max_abs(&held).powi(2) * n as f64;
                let tol = Tol {
                    atol: (4 * n + 8) as f64 * unit_roundoff(dtype) * scale / (n - correction) as f64,
                    rtol: 8.0 * unit_roundoff(dtype),
                };
                let what = format!("var {dtype} {shape:?} dim {d} correction {correction}");
                check(
                    &what,
                    &x.var(&[d as isize], correction, false).unwrap(),
                    &want,
                    &want_shape,
                    tol,
                );
                let got_std = x
                    .std(&[d as isize], correction, false)
                    .unwrap()
                    .to_vec::<f64>()
                    .unwrap();
                for (k, (g, w)) in got_std.iter().zip(&want).enumerate() {
                    // √ halves a relative error; near 0 it turns an absolute one into √atol
                    let slack = tol.atol.sqrt() + tol.rtol * w.sqrt();
                    assert!(
                        (g - w.sqrt()).abs() <= slack,
                        "std of {what}: element {k} is {g}, want {}",
                        w.sqrt()
                    );
                }
            }
        }
    }
}

/// stack at every position, chunk and split into pieces along every dim, against cat and narrow
/// of the reference.
fn check_stack_chunk_split(shape: &[usize], seed: u64) {
    let mut rng = Rng::new(seed);
    let rank = shape.len();
    let values = normal(&mut rng, 3 * r::numel(shape), 1.0);
    let n = r::numel(shape);
    for dtype in DTYPES {
        let parts: Vec<(Tensor, Vec<f64>)> = (0..3)
            .map(|k| view_of(&values[k * n..(k + 1) * n], shape, dtype, &mut rng, 2))
            .collect();
        let tensors: Vec<Tensor> = parts.iter().map(|p| p.0.clone()).collect();
        for d in 0..=rank {
            // stacking at d = cat along d of the pieces with a 1 inserted at d
            let mut one = shape.to_vec();
            one.insert(d, 1);
            let pieces: Vec<(&[f64], &[usize])> = parts.iter().map(|p| (&p.1[..], &one[..])).collect();
            let (want, want_shape) = r::cat(&pieces, d);
            let dim = if rng.below(2) == 0 {
                d as isize
            } else {
                d as isize - rank as isize - 1
            };
            check(
                &format!("stack {dtype} {shape:?} at {d}"),
                &Tensor::stack(&tensors, dim).unwrap(),
                &want,
                &want_shape,
                EXACT,
            );
        }
        let (x, held) = &parts[0];
        for d in 0..rank {
            let size = shape[d];
            let chunks = 1 + rng.below(4) as usize;
            let step = size.div_ceil(chunks).max(1);
            for (how, got) in [
                ("chunk", x.chunk(chunks, d as isize).unwrap()),
                ("split", x.split(step, d as isize).unwrap()),
            ] {
                let mut start = 0;
                // an empty dim gives one empty piece, as PyTorch's
                assert_eq!(
                    got.len(),
                    size.div_ceil(step).max(1),
                    "{how} {shape:?} dim {d}: piece count"
                );
                for piece in &got {
                    let len = step.min(size - start);
                    let (want, want_shape) = r::narrow(held, shape, d, start, len);
                    check(
                        &format!("{how} {dtype} {shape:?} dim {d} from {start}"),
                        piece,
                        &want,
                        &want_shape,
                        EXACT,
                    );
                    start += len;
                }
            }
        }
    }
}

/// mse_loss and nll_loss of random views against the reference sums.
fn check_losses(n: usize, c: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let a = normal(&mut rng, n * c, 1.0);
    let b = normal(&mut rng, n * c, 1.0);
    let targets: Vec<u32> = (0..n).map(|_| rng.below(c as u64) as u32).collect();
    for dtype in DTYPES {
        let (ta, ha) = view_of(&a, &[n, c], dtype, &mut rng, 2);
        let (tb, hb) = view_of(&b, &[n, c], dtype, &mut rng, 2);
        // every term (a − b)² is non-negative and rounded twice in the dtype before the f64 sum;
        // the sum and its scaling by 1/n are rounded again: a relative error of a few u
        let u = unit_roundoff(dtype);
        check(
            &format!("mse_loss {dtype} [{n}, {c}]"),
            &ta.mse_loss(&tb).unwrap(),
            &[r::mse_loss(&ha, &hb)],
            &[],
            Tol {
                atol: 0.0,
                rtol: 16.0 * u,
            },
        );
        // an f64 sum of n picked entries (exact in the dtype), rounded, then scaled by 1/n
        let picked_abs_sum: f64 = (0..n).map(|k| ha[k * c + targets[k] as usize].abs()).sum::<f64>() / n as f64;
        check(
            &format!("nll_loss {dtype} [{n}, {c}]"),
            &ta.nll_loss(&ids_tensor(&targets, &[n])).unwrap(),
            &[r::nll_loss(&ha, n, c, &targets)],
            &[],
            Tol {
                atol: 4.0 * u * picked_abs_sum,
                rtol: 4.0 * u,
            },
        );
    }
}

// ---------------------------------------------------------------------------------------
// The properties
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn unary_matches_reference(
        shape in shape(0, 4, true),
        seed in any::<u64>(),
        p in select(vec![2.0, 3.0, 0.5, -1.5, 1.7]),
        mul in select(vec![1.0, -0.5, 3.25]),
        add in select(vec![0.0, 1.5, -2.0]),
    ) {
        check_unary(&shape, seed, p, mul, add);
    }

    #[test]
    fn gelu_backward_matches_reference(shape in shape(0, 4, true), seed in any::<u64>()) {
        check_gelu_backward(&shape, seed, 2);
    }

    #[test]
    fn binary_matches_reference(out in shape(0, 4, true), seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let a_shape = broadcast_source(&out, &mut rng);
        let b_shape = if rng.below(4) == 0 { out.clone() } else { broadcast_source(&out, &mut rng) };
        // either operand may be the larger one
        let (a_shape, b_shape) = if rng.below(2) == 0 { (a_shape, b_shape) } else { (b_shape, a_shape) };
        check_binary(&a_shape, &b_shape, seed);
    }

    #[test]
    fn where_and_masked_fill_match_reference(out in shape(0, 4, true), seed in any::<u64>()) {
        check_where(&out, seed);
    }

    #[test]
    fn reductions_match_reference(shape in shape(0, 4, true), seed in any::<u64>()) {
        check_reductions(&shape, seed);
    }

    #[test]
    fn matmul_matches_reference((a_shape, b_shape, seed) in matmul_shapes()) {
        check_matmul(&a_shape, &b_shape, seed, 2);
    }

    #[test]
    fn softmax_matches_reference(shape in shape(1, 4, true), seed in any::<u64>()) {
        check_softmax(&shape, seed);
    }

    #[test]
    fn layer_norm_matches_reference(shape in shape(1, 4, true), seed in any::<u64>()) {
        check_layer_norm(&shape, seed);
    }

    #[test]
    fn swiglu_matches_reference(shape in shape(0, 4, true), seed in any::<u64>()) {
        check_swiglu(&shape, seed, 2);
    }

    #[test]
    fn rms_norm_matches_reference(shape in shape(1, 4, true), seed in any::<u64>()) {
        check_rms_norm(&shape, seed);
    }

    #[test]
    fn rope_matches_reference(
        lead in proptest::collection::vec(dim(9, true), 3),
        half in dim(9, false),
        offset in select(vec![0usize, 1, 7, 4096]),
        seed in any::<u64>(),
    ) {
        check_rope(&[lead[0], lead[1], lead[2], 2 * half], seed, offset, 2);
    }

    #[test]
    fn cross_entropy_matches_reference(n in dim(40, false), c in dim(40, false), seed in any::<u64>()) {
        check_cross_entropy(n, c, seed);
    }

    #[test]
    fn attention_matches_reference(
        b in 1..=2usize,
        hkv in 1..=3usize,
        group in select(vec![1usize, 1, 2, 3]),
        tq in dim(40, true),
        tk in dim(40, false),
        d in select(vec![1usize, 2, 5, 8, 17, 32]),
        causal in any::<bool>(),
        seed in any::<u64>(),
    ) {
        // causal needs tq <= tk (refusal is tested in errors.rs)
        let tq = if causal { tq.min(tk) } else { tq };
        check_attention(b, hkv * group, hkv, tq, tk, d, causal, seed);
    }

    #[test]
    fn index_select_matches_reference(shape in shape(1, 4, true), n_ids in 0..=9usize, seed in any::<u64>()) {
        check_index_select(&shape, n_ids, seed);
    }

    #[test]
    fn embedding_matches_reference(
        vocab in dim(40, false),
        c in dim(40, true),
        ids_shape in shape(0, 2, true),
        seed in any::<u64>(),
    ) {
        check_embedding(vocab, c, &ids_shape, seed);
    }

    #[test]
    fn shape_ops_match_reference(shape in shape(0, 4, true), seed in any::<u64>()) {
        check_shape_ops(&shape, seed);
    }

    #[test]
    fn argmax_argmin_match_reference(shape in shape(1, 4, true), seed in any::<u64>()) {
        check_arg_extremum(&shape, seed);
    }

    #[test]
    fn gather_scatter_add_match_reference(shape in shape(1, 4, true), seed in any::<u64>()) {
        check_gather_scatter(&shape, seed);
    }

    #[test]
    fn var_std_match_reference(shape in shape(1, 4, true), seed in any::<u64>()) {
        check_var(&shape, seed);
    }

    #[test]
    fn stack_chunk_split_match_reference(shape in shape(0, 3, true), seed in any::<u64>()) {
        check_stack_chunk_split(&shape, seed);
    }

    #[test]
    fn losses_match_reference(n in dim(20, false), c in dim(20, false), seed in any::<u64>()) {
        check_losses(n, c, seed);
    }
}

// ---------------------------------------------------------------------------------------
// Fixed cases: the broadcast from the docs, and the fast paths
// ---------------------------------------------------------------------------------------

#[test]
fn numpy_broadcast_example() {
    check_binary(&[5, 1, 3], &[4, 1], 1);
    check_binary(&[4, 1], &[5, 1, 3], 2);
    check_binary(&[], &[7, 13], 3);
}

/// Contiguous inputs well above `PARALLEL_MIN` (32768 elements) take the rayon paths.
const BIG: [usize; 2] = [300, 131]; // 39300 elements

#[test]
fn fast_path_unary() {
    check_unary(&BIG, 11, 1.7, -0.5, 1.5);
    // a large transposed view: the strided path at a size where it may split rows
    let mut rng = Rng::new(12);
    let values = normal(&mut rng, r::numel(&BIG), 2.0);
    for dtype in DTYPES {
        let (x, held) = contiguous_of(&values, &BIG, dtype);
        let xt = x.transpose(0, 1).unwrap();
        let (want, want_shape) = r::transpose(&r::map(&held, r::gelu), &BIG, 0, 1);
        check(
            &format!("gelu of a transposed {dtype} {BIG:?}"),
            &xt.gelu().unwrap(),
            &want,
            &want_shape,
            Tol::elementwise(dtype, 100.0),
        );
    }
}

#[test]
fn fast_path_gelu_backward() {
    // contiguous operands above PARALLEL_MIN: the threaded, vectorised loop
    check_gelu_backward(&BIG, 13, 0);
}

#[test]
fn fast_path_binary() {
    check_binary(&BIG, &BIG, 21); // contiguous and contiguous
    check_binary(&BIG, &[131], 22); // a broadcast row
    check_binary(&[300, 1], &[1, 131], 23); // an outer product of broadcasts
}

#[test]
fn fast_path_reductions() {
    let mut rng = Rng::new(31);
    let shape = [257, 160]; // 41120 elements
    let values = normal(&mut rng, r::numel(&shape), 3.0);
    for dtype in DTYPES {
        let (x, held) = contiguous_of(&values, &shape, dtype);
        for dims in [vec![1usize], vec![0], vec![0, 1]] {
            let api: Vec<isize> = dims.iter().map(|&d| d as isize).collect();
            let count: usize = dims.iter().map(|&d| shape[d]).product();
            let abs_sum = max_abs(&r::sum(&r::map(&held, f64::abs), &shape, &dims, true).0);
            let (want, ws) = r::sum(&held, &shape, &dims, false);
            let what = format!("sum {dtype} {shape:?} {dims:?}");
            check(
                &what,
                &x.sum(&api, false).unwrap(),
                &want,
                &ws,
                Tol::sum(dtype, count, abs_sum),
            );
            let (want, ws) = r::max(&held, &shape, &dims, true);
            check(
                &format!("max {dtype} {dims:?}"),
                &x.max(&api, true).unwrap(),
                &want,
                &ws,
                EXACT,
            );
            let (want, ws) = r::min(&held, &shape, &dims, false);
            check(
                &format!("min {dtype} {dims:?}"),
                &x.min(&api, false).unwrap(),
                &want,
                &ws,
                EXACT,
            );
        }
    }
}

#[test]
fn fast_path_softmax_layer_norm_cross_entropy() {
    let mut rng = Rng::new(41);
    let shape = [64, 600]; // 38400 elements
    let values = normal(&mut rng, r::numel(&shape), 3.0);
    for dtype in DTYPES {
        let (x, held) = contiguous_of(&values, &shape, dtype);
        for d in [1usize, 0] {
            let tol = Tol::row(dtype, shape[d], max_abs(&held));
            check(
                &format!("softmax {dtype} {shape:?} dim {d}"),
                &x.softmax(d as isize).unwrap(),
                &r::softmax(&held, &shape, d),
                &shape,
                tol,
            );
            check(
                &format!("log_softmax {dtype} {shape:?} dim {d}"),
                &x.log_softmax(d as isize).unwrap(),
                &r::log_softmax(&held, &shape, d),
                &shape,
                tol,
            );
        }
    }
    check_layer_norm(&[300, 128], 42);
    check_layer_norm(&[3, 100, 128], 43);
    check_cross_entropy(512, 100, 44);
}

#[test]
fn fast_path_swiglu_rms_norm_rope() {
    // each above the rayon threshold (32768 elements)
    check_swiglu(&[64, 600], 51, 0);
    check_swiglu(&[64, 600], 52, 1);
    check_rms_norm(&[300, 128], 53);
    check_rms_norm(&[3, 100, 129], 54);
    check_rope(&[2, 65, 4, 64], 55, 0, 0);
    check_rope(&[1, 33, 9, 64], 56, 100, 1);
}

#[test]
fn fast_path_matmul() {
    // above the GEMM's blocking in every dim, contiguous then with transposed operands
    let (m, k, n) = (130, 257, 71);
    check_matmul(&[m, k], &[k, n], 51, 0);
    let mut rng = Rng::new(52);
    let a = normal(&mut rng, m * k, 1.0);
    let b = normal(&mut rng, k * n, 1.0);
    for dtype in DTYPES {
        let (ta, ha) = contiguous_of(&a, &[k, m], dtype); // stored as aᵀ
        let (tb, hb) = contiguous_of(&b, &[n, k], dtype); // stored as bᵀ
        let (at, bt) = (ta.transpose(0, 1).unwrap(), tb.transpose(0, 1).unwrap());
        let (ra, _) = r::transpose(&ha, &[k, m], 0, 1);
        let (rb, _) = r::transpose(&hb, &[n, k], 0, 1);
        let abs_dot = r::matmul(&r::map(&ra, f64::abs), &[m, k], &r::map(&rb, f64::abs), &[k, n]).0;
        let tol = Tol::dot(dtype, k, max_abs(&abs_dot));
        for (name, lhs, rhs, lr, rr) in [
            ("aᵀ·b", &at, &contiguous_of(&rb, &[k, n], dtype).0, &ra, &rb),
            ("a·bᵀ", &contiguous_of(&ra, &[m, k], dtype).0, &bt, &ra, &rb),
            ("aᵀ·bᵀ", &at, &bt, &ra, &rb),
        ] {
            let (want, ws) = r::matmul(lr, &[m, k], rr, &[k, n]);
            check(
                &format!("matmul {dtype} {name} {m}x{k}x{n}"),
                &lhs.matmul(rhs).unwrap(),
                &want,
                &ws,
                tol,
            );
        }
    }
    // batched with broadcast batch dims: many small products (one per thread) ...
    check_matmul(&[2, 1, 40, 70], &[3, 70, 33], 53, 1);
    // ... and few large ones (the GEMM threads itself)
    check_matmul(&[2, 1, 130, 70], &[3, 70, 71], 54, 1);
    check_matmul(&[130, 257], &[2, 257, 71], 55, 1);
}

#[test]
fn fast_path_attention() {
    // query tiles of 64 rows with a ragged last one, causal tiles, KV-cache steps, Tq < Tk
    for causal in [false, true] {
        check_attention(2, 3, 3, 130, 130, 40, causal, 61);
        check_attention(1, 2, 2, 70, 200, 64, causal, 62);
        check_attention(3, 1, 1, 1, 129, 16, causal, 63);
        // grouped-query attention: SmolLM2's 9 query heads over 3 key/value heads
        check_attention(1, 9, 3, 70, 70, 64, causal, 64);
        // decode steps past a chunk of keys (128 of a head of 64, 481 of 17), split into jobs
        check_attention(1, 9, 3, 1, 300, 64, causal, 65);
        check_attention(2, 2, 2, 1, 1000, 17, causal, 66);
    }
}

#[test]
fn attention_equals_the_composed_ops() {
    // the GPT's attention written with tensor ops (as src/model/gpt.rs does it): scale q, q·kᵀ,
    // mask with -inf, softmax, ·v; the values and every gradient must agree with the fused op
    let (b, h, tq, tk, d) = (2, 3, 5, 9, 8);
    let mut rng = Rng::new(64);
    let mk = |shape: &[usize], rng: &mut Rng| {
        Tensor::from_vec(normal(rng, r::numel(shape), 1.0), shape, &DEV)
            .unwrap()
            .requires_grad()
    };
    let (q, k, v) = (
        mk(&[b, h, tq, d], &mut rng),
        mk(&[b, h, tk, d], &mut rng),
        mk(&[b, h, tk, d], &mut rng),
    );
    let g = Tensor::from_vec(normal(&mut rng, b * h * tq * d, 1.0), &[b, h, tq, d], &DEV).unwrap();
    for causal in [false, true] {
        let start = tk - tq;
        let mask: Vec<u32> = (0..tq)
            .flat_map(|i| (0..tk).map(move |j| u32::from(causal && j > start + i)))
            .collect();
        let mask = Tensor::from_vec(mask, &[tq, tk], &DEV).unwrap();
        let composed = q
            .mul_scalar(1.0 / (d as f64).sqrt())
            .unwrap()
            .matmul(&k.transpose(-2, -1).unwrap())
            .unwrap()
            .masked_fill(&mask, f64::NEG_INFINITY)
            .unwrap()
            .softmax(-1)
            .unwrap()
            .matmul(&v)
            .unwrap();
        let fused = q.scaled_dot_product_attention(&k, &v, causal).unwrap();
        let tol = Tol::row(DType::F64, tk + d, 10.0);
        check(
            "fused vs composed",
            &fused,
            &composed.to_vec::<f64>().unwrap(),
            &[b, h, tq, d],
            tol,
        );
        let gc = composed.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
        let gf = fused.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, t) in [("dq", &q), ("dk", &k), ("dv", &v)] {
            let want = gc.get(t).unwrap().to_vec::<f64>().unwrap();
            check(
                &format!("fused vs composed {name} causal {causal}"),
                gf.get(t).unwrap(),
                &want,
                t.shape(),
                tol,
            );
        }
    }
}

/// ulps between `got` and the correctly rounded f32 of `want`.
fn ulps_f32(got: f32, want: f64) -> u32 {
    (got.to_bits() as i64 - (want as f32).to_bits() as i64).unsigned_abs() as u32
}

/// The f32 exp of the CPU kernels (softmax, cross-entropy, exp, gelu) against f64's.
#[test]
fn exp_f32_within_two_ulp_over_the_whole_range() {
    use kiln::backend::cpu::exp::exp_f32;
    let mut worst = (0, 0.0f32);
    let mut check = |x: f32| {
        let u = ulps_f32(exp_f32(x), (x as f64).exp());
        if u > worst.0 {
            worst = (u, x);
        }
    };
    // every 97th f32 from -110 up to -0, then from +0 up to 89 (bit patterns are monotonic
    // in magnitude), which crosses the subnormal results and the overflow to +inf
    let mut bits = (-110f32).to_bits();
    while bits > 0x8000_0000 {
        check(f32::from_bits(bits));
        bits -= 97;
    }
    let mut bits = 0u32;
    while f32::from_bits(bits) < 89.0 {
        check(f32::from_bits(bits));
        bits += 97;
    }
    assert!(worst.0 <= 2, "{} ulp at x = {:e}", worst.0, worst.1);
    assert_eq!(exp_f32(0.0), 1.0);
    assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
    assert_eq!(exp_f32(-104.0), 0.0);
    assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
    assert_eq!(exp_f32(89.0), f32::INFINITY);
    assert!(exp_f32(f32::NAN).is_nan());
    // near f32::MAX the scaling by 2ⁿ must not overflow early
    assert!(ulps_f32(exp_f32(88.72), (88.72f32 as f64).exp()) <= 2);
}

/// The exact GELU and its derivative against PyTorch 2.x (`torch.nn.functional.gelu` in f64 and its
/// autograd), an implementation independent of libm's erf that the reference uses.
#[test]
fn gelu_erf_matches_pytorch() {
    let x = [-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.5];
    let torch_y = [
        -0.00404969409489031,
        -0.15865525393145702,
        -0.15426876936299344,
        0.0,
        0.34573123063700656,
        0.841344746068543,
        2.4844758366855597,
    ];
    let torch_dy = [
        -0.01194564720418392,
        -0.08331547058768635,
        0.13250487534383712,
        0.5,
        0.8674951246561629,
        1.0833154705876864,
        1.037611085908145,
    ];
    for (&v, &w) in x.iter().zip(&torch_y) {
        assert!((r::gelu_erf(v) - w).abs() < 1e-15, "reference gelu_erf({v})");
    }
    let t = Tensor::from_vec(x.to_vec(), &[7], &DEV).unwrap().requires_grad();
    let y = t.gelu_erf().unwrap();
    assert_close(
        "gelu_erf f64",
        &y.to_vec::<f64>().unwrap(),
        &torch_y,
        Tol::elementwise(DType::F64, 3.0),
    );
    let g = y.sum_all().unwrap().backward().unwrap();
    assert_close(
        "gelu_erf' f64",
        &g.get(&t).unwrap().to_vec::<f64>().unwrap(),
        &torch_dy,
        Tol::elementwise(DType::F64, 3.0),
    );
}

/// var, std, argmax and argmin on PyTorch's own examples (ties, NaNs, both corrections).
#[test]
fn var_std_argmax_match_pytorch() {
    let v = Tensor::from_vec(vec![1.0, 2.0, 4.0, 3.0, 3.0, 3.0], &[2, 3], &DEV).unwrap();
    let close = |t: Tensor, want: &[f64]| {
        assert_close(
            "torch",
            &t.to_vec::<f64>().unwrap(),
            want,
            Tol::elementwise(DType::F64, 16.0),
        )
    };
    close(v.var(&[1], 1, false).unwrap(), &[2.333333333333333, 0.0]);
    close(v.var(&[1], 0, false).unwrap(), &[1.5555555555555554, 0.0]);
    close(v.std(&[1], 1, false).unwrap(), &[1.5275252316519465, 0.0]);
    let nan = f64::NAN;
    let a = Tensor::from_vec(vec![1.0f32, 5.0, 5.0, nan as f32, 2.0, nan as f32], &[2, 3], &DEV).unwrap();
    assert_eq!(a.argmax(1, false).unwrap().to_vec::<u32>().unwrap(), [1, 0]);
    let b = Tensor::from_vec(vec![1.0f32, 0.0, 0.0, 3.0, nan as f32, 2.0], &[2, 3], &DEV).unwrap();
    assert_eq!(b.argmin(1, false).unwrap().to_vec::<u32>().unwrap(), [1, 1]);
}

/// Sums over the leading dims of a contiguous tensor (a bias's gradient, wpe's) take the column
/// path of the CPU reduction: each output must be the f64 sum of its column in row order (from
/// -0.0, as `Iterator::sum`), rounded once, bit for bit, in f32, bf16 and f64, over widths that
/// are not multiples of the path's 256-column blocks, views at an offset, and large enough sizes
/// to split over threads; a strided (transposed) input, which takes the general path, must agree.
#[test]
fn leading_dim_sums_are_the_row_order_column_sums() {
    let mut rng = Rng::new(7);
    for (shape, dims) in [
        (vec![512, 769], vec![0isize]),
        (vec![3, 300], vec![0]),
        (vec![2, 5, 7], vec![0, 1]),
        (vec![4, 9, 130], vec![0]),
        (vec![1000, 40], vec![0]),
    ] {
        let n: usize = shape.iter().product();
        let rows: usize = dims.iter().map(|&d| shape[d as usize]).product();
        let width = n / rows;
        // one extra leading row, narrowed away: the view starts at an offset
        let mut padded = shape.clone();
        padded[0] += 1;
        let values = normal(&mut rng, padded.iter().product(), 3.0);
        for dtype in [DType::F32, DType::BF16, DType::F64] {
            let parent = Tensor::from_vec(values.clone(), &padded, &DEV)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let x = parent.narrow(0, 1, shape[0]).unwrap();
            let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap().to_vec::<f64>().unwrap();
            let held = f64s(&x);
            let want: Vec<f64> = (0..width)
                .map(|j| {
                    let s = (0..rows).fold(-0.0f64, |s, r| s + held[r * width + j]);
                    f64s(&Tensor::from_vec(vec![s], &[1], &DEV).unwrap().to_dtype(dtype).unwrap())[0]
                })
                .collect();
            let got = f64s(&x.sum(&dims, false).unwrap());
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{dtype} {shape:?} over {dims:?}");
            if shape.len() == 2 {
                // the same sums from a transposed copy: the general (strided) path
                let t = x
                    .transpose(0, 1)
                    .unwrap()
                    .contiguous()
                    .unwrap()
                    .transpose(0, 1)
                    .unwrap();
                let got = f64s(&t.sum(&dims, false).unwrap());
                assert_eq!(bits(&got), bits(&want), "{dtype} {shape:?} transposed");
            }
        }
    }
}
