//! BF16 and F16 against the F32 path, and the float casts against correct rounding.
//!
//! The half paths promise to compute in f32 and round the result to the half type. So each
//! op runs twice on the same values (random data rounded to the half type first, then held
//! once as the half type and once widened to F32) and the half result must equal the F32
//! result up to that final rounding: the tolerance for each dtype is in [`tol`], and nowhere
//! else. The F32 path itself is checked against the f64 reference in ops_vs_reference.rs.
//!
//! The casts must round to nearest, ties to even, exactly as the `half` crate's
//! `from_f32`; from f64 they must round once (not through f32, not ignoring low bits).

use half::{bf16, f16};
use kiln::{DType, Device, Rng, Tensor};
use proptest::prelude::*;
use proptest::sample::select;

const DEV: Device = Device::Cpu;
const HALVES: [DType; 2] = [DType::BF16, DType::F16];

/// `|half − f32| ≤ atol + rtol·|f32|`, elementwise.
#[derive(Clone, Copy, Debug)]
struct Tol {
    atol: f64,
    rtol: f64,
}

/// The one place where half-precision tolerances live.
///
/// rtol: rounding to a format with p significant bits errs by at most u = 2^-p relative
/// (bf16 has 8 bits, so u = 2^-8; f16 has 11, u = 2^-11). Most ops round once; `mean`
/// rounds the sum and then the scaled sum, so allow three roundings: rtol = 3u.
///
/// atol: 2^-16 absorbs what relative rounding cannot, far below one ulp of the O(1) values
/// used here (2^-7 for bf16, 2^-10 for f16): f16's subnormals (below 2^-14 its spacing is a
/// fixed 2^-24) and the last f32 bits of results that cancel to near zero (an f32 sum of
/// ~100 terms of size ~10 may differ by ~1e-5 between two summation orders).
fn tol(dtype: DType) -> Tol {
    let u = match dtype {
        DType::BF16 => 2f64.powi(-8),
        DType::F16 => 2f64.powi(-11),
        other => panic!("{other} is not a half type"),
    };
    Tol {
        atol: 2f64.powi(-16),
        rtol: 3.0 * u,
    }
}

/// `v` rounded to the half type (to nearest, ties to even, through the `half` crate).
fn round_half(dtype: DType, v: f32) -> f32 {
    match dtype {
        DType::BF16 => bf16::from_f32(v).to_f32(),
        DType::F16 => f16::from_f32(v).to_f32(),
        other => panic!("{other} is not a half type"),
    }
}

/// Where an op's inputs live.
#[derive(Clone, Copy)]
enum Domain {
    Any,
    /// |x| ≥ 0.05, either sign (divisors).
    NonZero,
    /// x ≥ 0.05 (log, sqrt, recip, powf).
    Positive,
}

/// The same values as a `dtype` tensor and as an F32 tensor.
struct Pair {
    half: Tensor,
    single: Tensor,
}

/// `shape`'s worth of normal samples times `scale`, moved into `domain` and rounded to
/// `dtype`, as a pair. Half the time (for rank ≥ 2) both are transposed views of the last
/// two dims of stored data.
fn pair(dtype: DType, shape: &[usize], rng: &mut Rng, scale: f64, domain: Domain) -> Pair {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| {
            let v = rng.normal() * scale;
            let v = match domain {
                Domain::Any => v,
                Domain::NonZero => v.signum() * (v.abs() + 0.05),
                Domain::Positive => v.abs() + 0.05,
            };
            round_half(dtype, v as f32)
        })
        .collect();
    let transposed = rng.below(2) == 0;
    let rank = shape.len();
    let transposed = transposed && rank >= 2;
    let mut stored_shape = shape.to_vec();
    if transposed {
        stored_shape.swap(rank - 2, rank - 1);
    }
    let view = |t: Tensor| {
        if transposed {
            t.transpose(-2, -1).unwrap()
        } else {
            t
        }
    };
    let single = Tensor::from_vec(values.clone(), &stored_shape, &DEV).unwrap();
    let half = match dtype {
        DType::BF16 => Tensor::from_vec(values.iter().map(|&v| bf16::from_f32(v)).collect(), &stored_shape, &DEV),
        _ => Tensor::from_vec(values.iter().map(|&v| f16::from_f32(v)).collect(), &stored_shape, &DEV),
    }
    .unwrap();
    assert_eq!(half.dtype(), dtype);
    Pair {
        half: view(half),
        single: view(single),
    }
}

/// Runs `op` on both and compares the half result with the F32 one.
#[track_caller]
fn compare(what: &str, p: &Pair, op: impl Fn(&Tensor) -> kiln::Result<Tensor>) {
    let (h, s) = (op(&p.half).unwrap(), op(&p.single).unwrap());
    compare_results(what, &h, &s);
}

#[track_caller]
fn compare_results(what: &str, h: &Tensor, s: &Tensor) {
    let dtype = h.dtype();
    assert!(
        matches!(dtype, DType::BF16 | DType::F16),
        "{what}: result is {dtype}, not a half type"
    );
    assert_eq!(s.dtype(), DType::F32, "{what}: reference is not f32");
    assert_eq!(h.shape(), s.shape(), "{what}: shape");
    let Tol { atol, rtol } = tol(dtype);
    let (got, want) = (h.to_vec::<f64>().unwrap(), s.to_vec::<f64>().unwrap());
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= atol + rtol * w.abs()
        };
        assert!(
            ok,
            "{what} {dtype} {:?}: element {i} is {g}, the f32 path gives {w} (|diff| {:e} > {atol:e} + {rtol:e}·|f32|)",
            h.shape(),
            (g - w).abs()
        );
    }
}

/// Shapes of rank 1..=3 with dims up to 40 (at most ~1600 elements).
fn shape() -> impl Strategy<Value = Vec<usize>> {
    let dim = prop_oneof![2 => Just(1usize), 2 => select(vec![2usize, 7, 13]), 5 => 1..=40usize];
    proptest::collection::vec(dim, 1..=3).prop_filter("small", |s| s.iter().product::<usize>() <= 1600)
}

// ---------------------------------------------------------------------------------------
// Ops: half path against the f32 path
// ---------------------------------------------------------------------------------------

type Op = fn(&Tensor) -> kiln::Result<Tensor>;
type BinaryOp = fn(&Tensor, &Tensor) -> kiln::Result<Tensor>;

fn check_unary(shape: &[usize], seed: u64) {
    let signed: [(&str, Op); 6] = [
        ("neg", Tensor::neg),
        ("exp", Tensor::exp),
        ("tanh", Tensor::tanh),
        ("gelu", Tensor::gelu),
        ("relu", Tensor::relu),
        ("sqr", Tensor::sqr),
    ];
    let positive: [(&str, Op); 3] = [("log", Tensor::log), ("sqrt", Tensor::sqrt), ("recip", Tensor::recip)];
    let mut rng = Rng::new(seed);
    for dtype in HALVES {
        let p = pair(dtype, shape, &mut rng, 2.0, Domain::Any);
        for (name, op) in signed {
            compare(name, &p, op);
        }
        compare("affine(-0.75, 1.5)", &p, |t| t.affine(-0.75, 1.5));
        let p = pair(dtype, shape, &mut rng, 2.0, Domain::Positive);
        for (name, op) in positive {
            compare(name, &p, op);
        }
        compare("powf(1.7)", &p, |t| t.powf(1.7));
    }
}

fn check_binary(out: &[usize], seed: u64) {
    let mut rng = Rng::new(seed);
    // b broadcasts to `out`: a leading dim dropped and/or dims set to 1
    let drop = rng.below(2) as usize;
    let b_shape: Vec<usize> = out[drop.min(out.len() - 1)..]
        .iter()
        .map(|&d| if rng.below(3) == 0 { 1 } else { d })
        .collect();
    let ops: [(&str, BinaryOp); 6] = [
        ("add", Tensor::add),
        ("sub", Tensor::sub),
        ("mul", Tensor::mul),
        ("div", Tensor::div),
        ("maximum", Tensor::maximum),
        ("minimum", Tensor::minimum),
    ];
    for dtype in HALVES {
        let a = pair(dtype, out, &mut rng, 2.0, Domain::NonZero);
        let b = pair(dtype, &b_shape, &mut rng, 2.0, Domain::NonZero);
        for (name, op) in ops {
            for (x, y) in [(&a, &b), (&b, &a)] {
                let h = op(&x.half, &y.half).unwrap();
                let s = op(&x.single, &y.single).unwrap();
                compare_results(&format!("{name} {:?} {:?}", x.half.shape(), y.half.shape()), &h, &s);
            }
        }
    }
}

fn check_reductions(shape: &[usize], seed: u64) {
    let mut rng = Rng::new(seed);
    let rank = shape.len();
    let dims: Vec<isize> = (0..rank as isize).filter(|_| rng.below(2) == 0).collect();
    let keepdim = rng.below(2) == 0;
    for dtype in HALVES {
        let p = pair(dtype, shape, &mut rng, 2.0, Domain::Any);
        let what = |op: &str| format!("{op} dims {dims:?} keepdim {keepdim}");
        compare(&what("sum"), &p, |t| t.sum(&dims, keepdim));
        compare(&what("mean"), &p, |t| t.mean(&dims, keepdim));
        compare(&what("max"), &p, |t| t.max(&dims, keepdim));
        compare(&what("min"), &p, |t| t.min(&dims, keepdim));
        compare("sum_all", &p, Tensor::sum_all);
        compare("mean_all", &p, Tensor::mean_all);
    }
}

fn check_matmul(m: usize, k: usize, n: usize, batch: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    for dtype in HALVES {
        let a = pair(dtype, &[batch, m, k], &mut rng, 1.0, Domain::Any);
        let b = pair(dtype, &[k, n], &mut rng, 1.0, Domain::Any);
        let h = a.half.matmul(&b.half).unwrap();
        let s = a.single.matmul(&b.single).unwrap();
        compare_results(&format!("matmul [{batch}, {m}, {k}] x [{k}, {n}]"), &h, &s);
    }
}

fn check_row_ops(shape: &[usize], seed: u64) {
    let mut rng = Rng::new(seed);
    let c = shape[shape.len() - 1];
    let dim = rng.below(shape.len() as u64) as isize;
    for dtype in HALVES {
        let x = pair(dtype, shape, &mut rng, 3.0, Domain::Any);
        compare(&format!("softmax({dim})"), &x, |t| t.softmax(dim));
        compare(&format!("log_softmax({dim})"), &x, |t| t.log_softmax(dim));
        let w = pair(dtype, &[c], &mut rng, 1.0, Domain::Any);
        let b = pair(dtype, &[c], &mut rng, 1.0, Domain::Any);
        let h = x.half.layer_norm(&w.half, &b.half, 1e-5).unwrap();
        let s = x.single.layer_norm(&w.single, &b.single, 1e-5).unwrap();
        compare_results("layer_norm", &h, &s);
        let h = x.half.layer_norm_no_bias(&w.half, 1e-5).unwrap();
        let s = x.single.layer_norm_no_bias(&w.single, 1e-5).unwrap();
        compare_results("layer_norm_no_bias", &h, &s);
    }
}

fn check_cross_entropy(n: usize, c: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let ignore = if rng.below(2) == 0 { None } else { Some(0u32) };
    let mut targets: Vec<u32> = (0..n).map(|_| rng.below(c as u64) as u32).collect();
    if targets.iter().all(|&t| Some(t) == ignore) {
        if c == 1 {
            return; // every row ignored: no mean to compare
        }
        targets[0] = 1;
    }
    let targets = Tensor::from_vec(targets, &[n], &DEV).unwrap();
    for dtype in HALVES {
        let x = pair(dtype, &[n, c], &mut rng, 3.0, Domain::Any);
        // The loss is f32 for half logits (the kernels' accumulation type), and the same values
        // widened to f32 give the same sums: no half rounding to allow for, only f32's.
        let what = format!("cross_entropy [{n}, {c}] ignore {ignore:?} of {dtype}");
        let h = x.half.cross_entropy_with_ignore(&targets, ignore).unwrap();
        let s = x.single.cross_entropy_with_ignore(&targets, ignore).unwrap();
        assert_eq!(h.dtype(), DType::F32, "{what}: the loss's dtype");
        let (h, s) = (h.to_scalar::<f64>().unwrap(), s.to_scalar::<f64>().unwrap());
        assert!(
            (h - s).abs() <= 1e-6 * s.abs().max(1.0),
            "{what}: {h}, the f32 path gives {s}"
        );
        // the gradient is in the logits' dtype, rounded once
        let gh = x.half.requires_grad();
        let grads = gh
            .cross_entropy_with_ignore(&targets, ignore)
            .unwrap()
            .backward()
            .unwrap();
        let gs_leaf = x.single.requires_grad();
        let grads_s = gs_leaf
            .cross_entropy_with_ignore(&targets, ignore)
            .unwrap()
            .backward()
            .unwrap();
        compare_results(
            &format!("{what}: gradient"),
            grads.get(&gh).unwrap(),
            grads_s.get(&gs_leaf).unwrap(),
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn half_unary_matches_f32(shape in shape(), seed in any::<u64>()) {
        check_unary(&shape, seed);
    }

    #[test]
    fn half_binary_matches_f32(shape in shape(), seed in any::<u64>()) {
        check_binary(&shape, seed);
    }

    #[test]
    fn half_reductions_match_f32(shape in shape(), seed in any::<u64>()) {
        check_reductions(&shape, seed);
    }

    #[test]
    fn half_matmul_matches_f32(
        m in 1..=70usize,
        k in 1..=70usize,
        n in 1..=70usize,
        batch in 1..=3usize,
        seed in any::<u64>(),
    ) {
        check_matmul(m, k, n, batch, seed);
    }

    #[test]
    fn half_softmax_and_layer_norm_match_f32(shape in shape(), seed in any::<u64>()) {
        check_row_ops(&shape, seed);
    }

    #[test]
    fn half_cross_entropy_matches_f32(n in 1..=40usize, c in 1..=40usize, seed in any::<u64>()) {
        check_cross_entropy(n, c, seed);
    }
}

#[test]
fn half_fast_paths_match_f32() {
    // above the rayon threshold (32768 elements) and the GEMM's blocking
    check_unary(&[300, 131], 1);
    check_binary(&[300, 131], 2);
    check_reductions(&[300, 131], 3);
    check_row_ops(&[64, 600], 4);
    check_matmul(130, 257, 71, 1, 5);
}

// ---------------------------------------------------------------------------------------
// Casts
// ---------------------------------------------------------------------------------------

/// Every f32 whose upper 16 bits are one of `highs`: each low half (the bits that bf16
/// drops, and most of those f16 drops) takes all 65536 values, so every tie, near-tie and
/// sticky-bit pattern is covered.
fn f32_with_highs(highs: &[u32]) -> Vec<f32> {
    highs
        .iter()
        .flat_map(|&hi| (0..1u32 << 16).map(move |lo| f32::from_bits(hi << 16 | lo)))
        .collect()
}

/// Asserts `got` (bits) equals `want` (bits) for every value, NaN matching any NaN.
#[track_caller]
fn assert_same_bits(what: &str, inputs: &[f64], got: &[u16], want: &[u16], is_nan: impl Fn(u16) -> bool) {
    for ((&x, &g), &w) in inputs.iter().zip(got).zip(want) {
        assert!(
            g == w || (is_nan(g) && is_nan(w)),
            "{what}: {x:e} (bits {:#018x}) gave {g:#06x}, nearest-even is {w:#06x}",
            x.to_bits()
        );
    }
}

/// f32 → half → f32 through kiln equals the `half` crate's round-to-nearest-even, bit for bit.
fn check_f32_round_trip(values: &[f32]) {
    let t = Tensor::from_vec(values.to_vec(), &[values.len()], &DEV).unwrap();
    let inputs: Vec<f64> = values.iter().map(|&v| v as f64).collect();
    let b = t.to_dtype(DType::BF16).unwrap();
    let want: Vec<u16> = values.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
    let got: Vec<u16> = b.to_vec::<bf16>().unwrap().iter().map(|v| v.to_bits()).collect();
    assert_same_bits("f32 -> bf16", &inputs, &got, &want, |h| bf16::from_bits(h).is_nan());
    let back = b.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap();
    for (&v, &w) in values.iter().zip(&back) {
        let want = bf16::from_f32(v).to_f32();
        assert!(
            w.to_bits() == want.to_bits() || (w.is_nan() && want.is_nan()),
            "bf16 -> f32 of {v:e}"
        );
    }

    let h = t.to_dtype(DType::F16).unwrap();
    let want: Vec<u16> = values.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
    let got: Vec<u16> = h.to_vec::<f16>().unwrap().iter().map(|v| v.to_bits()).collect();
    assert_same_bits("f32 -> f16", &inputs, &got, &want, |h| f16::from_bits(h).is_nan());
    let back = h.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap();
    for (&v, &w) in values.iter().zip(&back) {
        let want = f16::from_f32(v).to_f32();
        assert!(
            w.to_bits() == want.to_bits() || (w.is_nan() && want.is_nan()),
            "f16 -> f32 of {v:e}"
        );
    }
}

#[test]
fn f32_to_half_rounds_to_nearest_even_exhaustively_per_high_half() {
    let highs = [
        0x0000, 0x0001, 0x0080, 0x00ff, // zero, f32 subnormals, bf16 subnormal/normal boundary
        0x3380, 0x3800, 0x387f, 0x3880, // f16 subnormal range and its normal boundary
        0x3f80, 0x3f81, 0x3fff, 0x4049, // around 1, 2, pi
        0x477f, 0x4780, // f16's largest finite and overflow
        0x7f7f, 0x7f80, 0x7fc0, // bf16's largest finite, inf and NaN
        0x8000, 0xbf80, 0xc77f, 0xff7f, // the negative mirrors
    ];
    check_f32_round_trip(&f32_with_highs(&highs));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn f32_to_half_rounds_to_nearest_even(bits in proptest::collection::vec(any::<u32>(), 1..200)) {
        let values: Vec<f32> = bits.into_iter().map(f32::from_bits).collect();
        check_f32_round_trip(&values);
    }
}

/// The nearest value of a half format to `v`, ties to the even bit pattern, found without
/// any conversion routine: a binary search over the (monotone) positive bit patterns, each
/// decoded exactly to f64 by `value`.
fn nearest_even(v: f64, value: impl Fn(u16) -> f64, inf_bits: u16, nan_bits: u16) -> u16 {
    if v.is_nan() {
        return nan_bits;
    }
    let sign = if v.is_sign_negative() { 0x8000 } else { 0 };
    let a = v.abs();
    // `value(inf_bits)` is the first power of two past the largest finite value: where the
    // rounding to infinity starts (a value at or past the midpoint rounds to infinity).
    let (mut lo, mut hi) = (0u16, inf_bits); // value(lo) <= a < value(hi) once a < value(inf)
    if a >= value(inf_bits) {
        return sign | inf_bits;
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if value(mid) <= a {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (below, above) = (a - value(lo), value(hi) - a); // both exact: a and the values share a grid
    let pick = if below < above || (below == above && lo % 2 == 0) {
        lo
    } else {
        hi
    };
    sign | pick
}

fn bf16_value(bits: u16) -> f64 {
    if bits == 0x7f80 {
        2f64.powi(128)
    } else {
        bf16::from_bits(bits).to_f64()
    }
}

fn f16_value(bits: u16) -> f64 {
    if bits == 0x7c00 {
        2f64.powi(16)
    } else {
        f16::from_bits(bits).to_f64()
    }
}

/// f64 values that stress rounding to `dtype`: exact midpoints between neighbours, and the
/// midpoints nudged by 1 and by 2^20 f64 ulps either way (the nudges live in the low bits
/// that a conversion through f32 or a truncating shortcut loses), plus plain random values.
fn hard_f64(rng: &mut Rng, value: &impl Fn(u16) -> f64, finite_max: u16) -> Vec<f64> {
    let mut out = Vec::new();
    for _ in 0..4000 {
        let bits = rng.below(finite_max as u64) as u16;
        let mid = (value(bits) + value(bits + 1)) / 2.0;
        let sign = if rng.below(2) == 0 { 1.0 } else { -1.0 };
        for nudge in [0i64, 1, -1, 1 << 20, -(1 << 20)] {
            let nudged = f64::from_bits((mid.to_bits() as i64 + nudge) as u64);
            out.push(sign * nudged);
        }
        out.push(sign * value(bits) * (1.0 + rng.uniform() * 2f64.powi(-7)));
    }
    // the overflow threshold (half-way past the largest finite value) and its neighbours
    let threshold = (value(finite_max) + value(finite_max + 1)) / 2.0;
    for t in [
        threshold,
        f64::from_bits(threshold.to_bits() - 1),
        f64::from_bits(threshold.to_bits() + 1),
    ] {
        out.extend([t, -t]);
    }
    out.extend([0.0, -0.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 1e300, -1e-300]);
    out
}

#[test]
fn f64_to_half_rounds_once_to_nearest_even() {
    let mut rng = Rng::new(7);
    let values = hard_f64(&mut rng, &bf16_value, 0x7f7f);
    let t = Tensor::from_vec(values.clone(), &[values.len()], &DEV).unwrap();
    let got: Vec<u16> = t
        .to_dtype(DType::BF16)
        .unwrap()
        .to_vec::<bf16>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect();
    let want: Vec<u16> = values
        .iter()
        .map(|&v| nearest_even(v, bf16_value, 0x7f80, 0x7fc0))
        .collect();
    assert_same_bits("f64 -> bf16", &values, &got, &want, |h| bf16::from_bits(h).is_nan());
    // constants are rounded the same way
    for &v in &values[..200] {
        let c = Tensor::full(v, &[], DType::BF16, &DEV)
            .unwrap()
            .to_vec::<bf16>()
            .unwrap()[0];
        let want = nearest_even(v, bf16_value, 0x7f80, 0x7fc0);
        assert!(c.to_bits() == want || c.is_nan() && v.is_nan(), "full({v:e}, bf16)");
    }

    // the case that rounding through `half::bf16::from_f64` got wrong: a tie in the bits it
    // keeps, broken by a bit it drops
    let just_above_tie = 1.0 + 2f64.powi(-8) + 2f64.powi(-40);
    let t = Tensor::full(just_above_tie, &[], DType::BF16, &DEV).unwrap();
    assert_eq!(t.to_vec::<f64>().unwrap(), [1.0 + 2f64.powi(-7)]);

    let values = hard_f64(&mut rng, &f16_value, 0x7bff);
    let t = Tensor::from_vec(values.clone(), &[values.len()], &DEV).unwrap();
    let got: Vec<u16> = t
        .to_dtype(DType::F16)
        .unwrap()
        .to_vec::<f16>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect();
    let want: Vec<u16> = values
        .iter()
        .map(|&v| nearest_even(v, f16_value, 0x7c00, 0x7e00))
        .collect();
    assert_same_bits("f64 -> f16", &values, &got, &want, |h| f16::from_bits(h).is_nan());
    for &v in &values[..200] {
        let c = Tensor::full(v, &[], DType::F16, &DEV).unwrap().to_vec::<f16>().unwrap()[0];
        let want = nearest_even(v, f16_value, 0x7c00, 0x7e00);
        assert!(c.to_bits() == want || c.is_nan() && v.is_nan(), "full({v:e}, f16)");
    }
}

#[test]
fn nearest_even_reference_agrees_with_half_on_f32_inputs() {
    // the test's own rounding reference, checked where `half` is known to be right
    let mut rng = Rng::new(8);
    for _ in 0..20000 {
        let v = f32::from_bits(rng.next_u64() as u32);
        if v.is_nan() {
            continue;
        }
        assert_eq!(
            nearest_even(v as f64, bf16_value, 0x7f80, 0x7fc0),
            bf16::from_f32(v).to_bits(),
            "{v:e}"
        );
        assert_eq!(
            nearest_even(v as f64, f16_value, 0x7c00, 0x7e00),
            f16::from_f32(v).to_bits(),
            "{v:e}"
        );
    }
}
