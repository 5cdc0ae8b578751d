//! Every differentiable op's backward rule against central finite differences, in f64, on
//! seeded random inputs and shapes (1, primes, broadcasts, views); plus the semantics of the
//! autograd graph (accumulation, detach, no_grad, freed graphs, gradient shape and dtype).
//!
//! Tolerance (stated once, used everywhere unless a test says why not): with a step
//! h = 1e-6, each analytic gradient element `a` and its finite difference `n` must satisfy
//! |a − n| ≤ 1e-8 + 1e-6·max(|a|, |n|).

use kiln::ops::rope::RopeLayout;
use kiln::testing::Tolerance as Tol;
use kiln::{DType, Device, Error, Result, Rng, Tensor};

const DEV: Device = Device::Cpu;

/// Finite-difference step and tolerance: |a − n| ≤ atol + rtol·max(|a|, |n|).
const F64_TOL: Tol = Tol {
    h: 1e-6,
    rtol: 1e-6,
    atol: 1e-8,
};

// ------------------------------------------------------------------------------------------
// The helper
// ------------------------------------------------------------------------------------------

/// Checks `backward()` of the scalar `f(inputs)` against central differences with the public
/// [`kiln::testing::gradcheck_with`]: every float input (all must be F64) gets a gradient of its
/// shape and dtype that matches; integer inputs (ids, masks) get none. Panics with the worst
/// mismatch.
fn gradcheck(name: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    gradcheck_with(name, F64_TOL, inputs, f)
}

fn gradcheck_with(name: &str, tol: Tol, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    if let Err(e) = kiln::testing::gradcheck_with(tol, inputs, f) {
        panic!("{name}: {e}");
    }
}

/// The helper itself must catch a wrong backward rule: `x·detach(x)` computes x² but its
/// backward gives x instead of 2x.
#[test]
#[should_panic(expected = "finite difference")]
fn gradcheck_catches_a_wrong_gradient() {
    gradcheck("x·detach(x)", &[randn(&[4], 1)], |t| wsum(&t[0].mul(&t[0].detach())?));
}

/// ... and an error of 1e-5 relative, just above the tolerance: the forward slope is
/// 1 + 1e-5 where the backward says 1.
#[test]
#[should_panic(expected = "finite difference")]
fn gradcheck_tolerance_is_tight() {
    gradcheck("x + 1e-5·detach(x)", &[randn(&[4], 2)], |t| {
        wsum(&t[0].add(&t[0].detach().mul_scalar(1e-5)?)?)
    });
}

/// ... and it demands a gradient for every float input.
#[test]
#[should_panic(expected = "got no gradient")]
fn gradcheck_requires_a_gradient_for_every_float_input() {
    gradcheck("unused input", &[randn(&[2], 3), randn(&[2], 4)], |t| {
        wsum(&t[0].exp()?)
    });
}

// ------------------------------------------------------------------------------------------
// Inputs
// ------------------------------------------------------------------------------------------

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, DType::F64, &mut Rng::new(seed), &DEV).unwrap()
}

fn map(t: &Tensor, f: impl Fn(f64) -> f64) -> Tensor {
    let v: Vec<f64> = t.to_vec::<f64>().unwrap().into_iter().map(f).collect();
    Tensor::from_vec(v, t.shape(), &DEV).unwrap()
}

/// Random values in [0.5, ∞): safe for log, sqrt, fractional powers, denominators.
fn positive(shape: &[usize], seed: u64) -> Tensor {
    map(&randn(shape, seed), |v| v.abs() + 0.5)
}

/// Random values at least 0.2 away from 0 (relu's kink, 1/x's pole).
fn away_from_zero(shape: &[usize], seed: u64) -> Tensor {
    map(&randn(shape, seed), |v| if v < 0.0 { v - 0.2 } else { v + 0.2 })
}

fn ids(v: &[u32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, &DEV).unwrap()
}

/// `(y · w).sum_all()` with a fixed random `w` of y's shape: a scalar to which every output
/// element contributes with its own weight (a plain sum would hide transposed or permuted
/// gradients).
fn wsum(y: &Tensor) -> Result<Tensor> {
    let y = y.to_dtype(DType::F64)?;
    let w = Tensor::randn(y.shape(), DType::F64, &mut Rng::new(0x5EED), &DEV)?;
    y.mul(&w)?.sum_all()
}

/// A handful of fixed shapes (1, primes, a size-1 middle dim) and a few seeded random ones.
fn shapes() -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = vec![vec![1], vec![7], vec![2, 3], vec![3, 1, 5], vec![2, 5, 3]];
    let mut rng = Rng::new(2024);
    const SIZES: [usize; 5] = [1, 2, 3, 5, 7];
    for _ in 0..3 {
        let rank = 1 + rng.below(3) as usize;
        out.push((0..rank).map(|_| SIZES[rng.below(5) as usize]).collect());
    }
    out
}

// ------------------------------------------------------------------------------------------
// Elementwise
// ------------------------------------------------------------------------------------------

type Binary = fn(&Tensor, &Tensor) -> Result<Tensor>;

/// Shape pairs that broadcast in both directions, plus equal shapes and a scalar.
const BROADCAST_PAIRS: &[(&[usize], &[usize])] = &[
    (&[2, 3], &[2, 3]),
    (&[3, 1, 5], &[4, 1]),
    (&[4, 1], &[3, 1, 5]),
    (&[2, 3], &[3]),
    (&[1], &[2, 3]),
    (&[], &[5]),
    (&[5, 1], &[1, 7]),
];

#[test]
fn add_sub_mul_with_broadcasting() {
    let ops: [(&str, Binary); 3] = [("add", Tensor::add), ("sub", Tensor::sub), ("mul", Tensor::mul)];
    for (name, op) in ops {
        for (k, &(sa, sb)) in BROADCAST_PAIRS.iter().enumerate() {
            let (a, b) = (randn(sa, k as u64), randn(sb, 100 + k as u64));
            gradcheck(&format!("{name} {sa:?} {sb:?}"), &[a, b], |t| wsum(&op(&t[0], &t[1])?));
        }
    }
}

#[test]
fn div_with_broadcasting() {
    for (k, &(sa, sb)) in BROADCAST_PAIRS.iter().enumerate() {
        let (a, b) = (randn(sa, k as u64), away_from_zero(sb, 100 + k as u64));
        gradcheck(&format!("div {sa:?} {sb:?}"), &[a, b], |t| wsum(&t[0].div(&t[1])?));
    }
}

#[test]
fn same_tensor_as_both_operands() {
    let x = away_from_zero(&[2, 5], 1);
    gradcheck("x + x", std::slice::from_ref(&x), |t| wsum(&t[0].add(&t[0])?));
    gradcheck("x * x", std::slice::from_ref(&x), |t| wsum(&t[0].mul(&t[0])?));
    gradcheck("x / x", std::slice::from_ref(&x), |t| {
        wsum(&t[0].div(&t[0])?.mul(&t[0])?)
    });
}

#[test]
fn maximum_minimum_without_ties() {
    let ops: [(&str, Binary); 2] = [("maximum", Tensor::maximum), ("minimum", Tensor::minimum)];
    for (name, op) in ops {
        for (k, &(sa, sb)) in BROADCAST_PAIRS.iter().enumerate() {
            let (a, b) = (randn(sa, k as u64), randn(sb, 100 + k as u64));
            // Precondition: no pair within 1e-3 (a tie, or a near-tie the finite difference crosses).
            let diff = a.sub(&b).unwrap().to_vec::<f64>().unwrap();
            assert!(
                diff.iter().all(|d| d.abs() > 1e-3),
                "{name} {sa:?} {sb:?}: inputs nearly tie"
            );
            gradcheck(&format!("{name} {sa:?} {sb:?}"), &[a, b], |t| wsum(&op(&t[0], &t[1])?));
        }
    }
}

#[test]
fn maximum_splits_the_gradient_on_ties() {
    let a = Tensor::from_vec(vec![1.0f64, 2.0, 3.0], &[3], &DEV)
        .unwrap()
        .requires_grad();
    let b = Tensor::from_vec(vec![1.0f64, 5.0, 0.0], &[3], &DEV)
        .unwrap()
        .requires_grad();
    let g = a.maximum(&b).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(g.get(&a).unwrap().to_vec::<f64>().unwrap(), vec![0.5, 0.0, 1.0]);
    assert_eq!(g.get(&b).unwrap().to_vec::<f64>().unwrap(), vec![0.5, 1.0, 0.0]);
}

#[test]
fn scalar_ops() {
    type Scalar = fn(&Tensor) -> Result<Tensor>;
    let ops: [(&str, Scalar); 7] = [
        ("add_scalar", |t| t.add_scalar(1.7)),
        ("sub_scalar", |t| t.sub_scalar(-0.3)),
        ("mul_scalar", |t| t.mul_scalar(-2.5)),
        ("div_scalar", |t| t.div_scalar(3.0)),
        ("affine", |t| t.affine(0.75, -1.25)),
        ("neg", |t| t.neg()),
        ("sqr", |t| t.sqr()),
    ];
    for (name, op) in ops {
        for (k, shape) in shapes().iter().enumerate() {
            gradcheck(&format!("{name} {shape:?}"), &[randn(shape, k as u64)], |t| {
                wsum(&op(&t[0])?)
            });
        }
    }
}

#[test]
fn unary_functions() {
    type Unary = fn(&Tensor) -> Result<Tensor>;
    type Inputs = fn(&[usize], u64) -> Tensor;
    let ops: [(&str, Unary, Inputs); 14] = [
        ("exp", |t| t.exp(), randn),
        ("sigmoid", |t| t.sigmoid(), randn),
        ("gelu_erf", |t| t.gelu_erf(), randn),
        ("abs", |t| t.abs(), away_from_zero),
        ("silu", |t| t.silu(), randn),
        ("log", |t| t.log(), positive),
        ("sqrt", |t| t.sqrt(), positive),
        ("tanh", |t| t.tanh(), randn),
        ("gelu", |t| t.gelu(), randn),
        ("relu", |t| t.relu(), away_from_zero),
        ("recip", |t| t.recip(), away_from_zero),
        ("powf 2.5", |t| t.powf(2.5), positive),
        ("powf -0.5", |t| t.powf(-0.5), positive),
        ("powf 3 (negative bases)", |t| t.powf(3.0), randn),
    ];
    for (name, op, gen) in ops {
        for (k, shape) in shapes().iter().enumerate() {
            gradcheck(&format!("{name} {shape:?}"), &[gen(shape, k as u64)], |t| {
                wsum(&op(&t[0])?)
            });
        }
    }
}

#[test]
fn gelu_and_relu_on_a_strided_view() {
    let x = away_from_zero(&[4, 3], 9);
    gradcheck("gelu of a transpose", std::slice::from_ref(&x), |t| {
        wsum(&t[0].transpose(0, 1)?.gelu()?)
    });
    gradcheck("relu of a narrow", &[x], |t| wsum(&t[0].narrow(0, 1, 2)?.relu()?));
}

// ------------------------------------------------------------------------------------------
// Matmul
// ------------------------------------------------------------------------------------------

#[test]
fn matmul_plain_batched_and_broadcast() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[3, 5], &[5, 4]),
        (&[1, 1], &[1, 1]),
        (&[1, 7], &[7, 1]),
        (&[7, 1], &[1, 3]),
        (&[2, 3, 5], &[2, 5, 4]),
        (&[2, 1, 3, 5], &[3, 5, 4]), // batch [2, 1] with [3]
        (&[3, 5], &[2, 5, 4]),       // 2-D lhs against a batched rhs
        (&[2, 3, 5], &[5, 2]),       // batched lhs against a 2-D rhs
        (&[1, 3, 2], &[4, 2, 3]),
    ];
    for (k, &(sa, sb)) in cases.iter().enumerate() {
        let (a, b) = (randn(sa, k as u64), randn(sb, 50 + k as u64));
        gradcheck(&format!("matmul {sa:?} {sb:?}"), &[a, b], |t| {
            wsum(&t[0].matmul(&t[1])?)
        });
    }
}

#[test]
fn matmul_of_views() {
    // Transposed operands (the leaves are stored the other way round).
    let (at, bt) = (randn(&[5, 3], 1), randn(&[4, 5], 2));
    gradcheck("matmul aᵀ bᵀ", &[at.clone(), bt.clone()], |t| {
        wsum(&t[0].transpose(0, 1)?.matmul(&t[1].transpose(0, 1)?)?)
    });
    gradcheck("matmul aᵀ b", &[at, randn(&[5, 2], 3)], |t| {
        wsum(&t[0].transpose(0, 1)?.matmul(&t[1])?)
    });
    // Batched transposes, including a transpose of the batch and row dims.
    gradcheck(
        "matmul batched bᵀ",
        &[randn(&[2, 3, 5], 4), randn(&[2, 4, 5], 5)],
        |t| wsum(&t[0].matmul(&t[1].transpose(-2, -1)?)?),
    );
    gradcheck(
        "matmul batch-permuted",
        &[randn(&[3, 2, 5], 6), randn(&[2, 5, 4], 7)],
        |t| wsum(&t[0].transpose(0, 1)?.matmul(&t[1])?),
    );
    // A narrowed (offset, strided) operand and x·xᵀ with one leaf on both sides.
    gradcheck("matmul of a narrow", &[randn(&[3, 7], 8), randn(&[5, 2], 9)], |t| {
        wsum(&t[0].narrow(1, 1, 5)?.matmul(&t[1])?)
    });
    gradcheck("x xᵀ", &[randn(&[4, 3], 10)], |t| {
        wsum(&t[0].matmul(&t[0].transpose(0, 1)?)?)
    });
}

// ------------------------------------------------------------------------------------------
// Reductions
// ------------------------------------------------------------------------------------------

#[test]
fn linear_and_its_fused_epilogues() {
    // x [..., in] with 0, 1 and 2 leading dims, w [out, in], bias [out], residual [..., out]
    for (i, lead) in [vec![], vec![4], vec![2, 3]].into_iter().enumerate() {
        let seed = 10 * i as u64;
        let (x, w, b) = (
            randn(&[lead.as_slice(), &[5]].concat(), seed),
            randn(&[3, 5], seed + 1),
            randn(&[3], seed + 2),
        );
        let r = randn(&[lead.as_slice(), &[3]].concat(), seed + 3);
        gradcheck(&format!("linear {lead:?}"), &[x.clone(), w.clone(), b.clone()], |t| {
            wsum(&t[0].linear(&t[1], Some(&t[2]))?)
        });
        gradcheck(&format!("linear without bias {lead:?}"), &[x.clone(), w.clone()], |t| {
            wsum(&t[0].linear(&t[1], None)?)
        });
        gradcheck(
            &format!("linear_gelu {lead:?}"),
            &[x.clone(), w.clone(), b.clone()],
            |t| wsum(&t[0].linear_gelu(&t[1], Some(&t[2]))?),
        );
        gradcheck(
            &format!("linear_residual {lead:?}"),
            &[x.clone(), w.clone(), b.clone(), r.clone()],
            |t| wsum(&t[0].linear_residual(&t[1], Some(&t[2]), &t[3])?),
        );
        // x viewed transposed (not contiguous), no bias
        gradcheck(
            &format!("linear_gelu of a view {lead:?}"),
            &[randn(&[5, 4], seed + 4), w.clone()],
            |t| wsum(&t[0].transpose(0, 1)?.linear_gelu(&t[1], None)?),
        );
    }
}

#[test]
fn linear_equals_the_unfused_ops() {
    // the same values as matmul + add + gelu + add, in f64 (an independent composition)
    let (x, w, b, r) = (
        randn(&[2, 3, 5], 40),
        randn(&[4, 5], 41),
        randn(&[4], 42),
        randn(&[2, 3, 4], 43),
    );
    let z = x.matmul(&w.transpose(0, 1).unwrap()).unwrap().add(&b).unwrap();
    let close = |got: Tensor, want: Tensor| {
        for (g, w) in vec_of(&got).iter().zip(vec_of(&want)) {
            assert!((g - w).abs() <= 1e-12 * (1.0 + w.abs()), "{g} vs {w}");
        }
    };
    close(x.linear(&w, Some(&b)).unwrap(), z.clone());
    close(x.linear_gelu(&w, Some(&b)).unwrap(), z.gelu().unwrap());
    close(x.linear_residual(&w, Some(&b), &r).unwrap(), z.add(&r).unwrap());
}

/// The fused pair the CPU's matmul epilogue computes is the two separate functions to the bit, in
/// f32 and f64, over a sweep that crosses the saturated tails, zero and values whose cube overflows.
#[test]
fn gelu_and_derivative_are_the_separate_functions_to_the_bit() {
    use kiln::backend::op::unary::{gelu_and_derivative, gelu_derivative};
    use kiln::backend::op::UnaryOp;
    let xs = (-4000..=4000).map(|i| i as f64 / 100.0).chain([
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        1e15,
        -1e15,
        3e38,
        -3e38,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ]);
    for x in xs {
        let (y, d) = gelu_and_derivative(x as f32);
        assert_eq!(y.to_bits(), UnaryOp::Gelu.apply(x as f32).to_bits(), "gelu({x}) f32");
        assert_eq!(d.to_bits(), gelu_derivative(x as f32).to_bits(), "gelu'({x}) f32");
        let (y, d) = gelu_and_derivative(x);
        assert_eq!(y.to_bits(), UnaryOp::Gelu.apply(x).to_bits(), "gelu({x}) f64");
        assert_eq!(d.to_bits(), gelu_derivative(x).to_bits(), "gelu'({x}) f64");
    }
}

/// On the CPU, `linear_gelu` keeps gelu'(z) for its backward instead of z (f32, f64): the input's
/// gradient is still, to the bit, the one from `gelu_backward` of z.
#[test]
fn linear_gelu_backward_from_the_kept_derivative_is_gelu_backward_of_z() {
    for dtype in [DType::F32, DType::F64] {
        let mut rng = Rng::new(44);
        let mut randn = |shape: &[usize]| Tensor::randn(shape, dtype, &mut rng, &DEV).unwrap();
        let (x, w, b, wt) = (
            randn(&[3, 7, 13]).requires_grad(),
            randn(&[11, 13]),
            randn(&[11]),
            randn(&[3, 7, 11]),
        );
        let y = x.linear_gelu(&w, Some(&b)).unwrap();
        let dx = y.mul(&wt).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = dx.get(&x).unwrap().to_vec::<f64>().unwrap();
        let z = x.detach().linear(&w, Some(&b)).unwrap();
        let want = wt
            .gelu_backward(&z)
            .unwrap()
            .reshape(&[21, 11])
            .unwrap()
            .matmul(&w)
            .unwrap();
        assert_eq!(dx, want.to_vec::<f64>().unwrap(), "{dtype}");
    }
}

#[test]
fn reductions_over_dims() {
    type Reduce = fn(&Tensor, &[isize], bool) -> Result<Tensor>;
    let ops: [(&str, Reduce); 4] = [
        ("sum", Tensor::sum),
        ("mean", Tensor::mean),
        ("max", Tensor::max),
        ("min", Tensor::min),
    ];
    let dim_sets: &[&[isize]] = &[&[0], &[1], &[2], &[-1], &[-3], &[0, 2], &[2, 0], &[0, 1, 2], &[]];
    for (name, op) in ops {
        for (k, shape) in [[2usize, 3, 5], [3, 1, 5], [1, 7, 2]].iter().enumerate() {
            for dims in dim_sets {
                for keepdim in [false, true] {
                    let x = randn(shape, 10 * k as u64 + dims.len() as u64);
                    gradcheck(
                        &format!("{name} {shape:?} dims {dims:?} keepdim {keepdim}"),
                        &[x],
                        |t| wsum(&op(&t[0], dims, keepdim)?),
                    );
                }
            }
        }
    }
}

#[test]
fn reductions_of_a_view_and_all() {
    gradcheck("sum of a transpose", &[randn(&[3, 4], 1)], |t| {
        wsum(&t[0].transpose(0, 1)?.sum(&[1], false)?)
    });
    gradcheck("max of a transpose", &[randn(&[3, 4], 2)], |t| {
        wsum(&t[0].transpose(0, 1)?.max(&[0], true)?)
    });
    for (k, shape) in shapes().iter().enumerate() {
        let x = randn(shape, k as u64);
        // sum_all/mean_all are already scalar: scale them so the check is not trivially 1.
        gradcheck(&format!("sum_all {shape:?}"), std::slice::from_ref(&x), |t| {
            t[0].mul(&t[0])?.sum_all()
        });
        gradcheck(&format!("mean_all {shape:?}"), std::slice::from_ref(&x), |t| {
            t[0].exp()?.mean_all()
        });
        gradcheck(&format!("max_all {shape:?}"), std::slice::from_ref(&x), |t| {
            t[0].max_all()?.mul_scalar(3.0)
        });
    }
}

// ------------------------------------------------------------------------------------------
// Softmax and losses
// ------------------------------------------------------------------------------------------

#[test]
fn softmax_and_log_softmax_over_each_dim() {
    for shape in [vec![7], vec![2, 3, 5], vec![3, 1, 4]] {
        let rank = shape.len() as isize;
        for dim in -rank..rank {
            let x = randn(&shape, dim.unsigned_abs() as u64);
            gradcheck(&format!("softmax {shape:?} dim {dim}"), std::slice::from_ref(&x), |t| {
                wsum(&t[0].softmax(dim)?)
            });
            gradcheck(&format!("log_softmax {shape:?} dim {dim}"), &[x], |t| {
                wsum(&t[0].log_softmax(dim)?)
            });
        }
    }
    gradcheck("softmax of a transpose", &[randn(&[4, 3], 3)], |t| {
        wsum(&t[0].transpose(0, 1)?.softmax(-1)?)
    });
}

#[test]
fn scaled_dot_product_attention_all_inputs() {
    // Tq < Tk (a causal KV-cache step sees every key), Tq = Tk, one key, a head dim of 1
    for (i, &(b, h, tq, tk, d)) in [(1, 2, 3, 5, 4), (2, 1, 4, 4, 3), (1, 1, 2, 1, 1), (1, 1, 1, 6, 2)]
        .iter()
        .enumerate()
    {
        for causal in [false, true] {
            if causal && tq > tk {
                continue;
            }
            let seed = 10 * i as u64;
            let (q, k, v) = (
                randn(&[b, h, tq, d], seed),
                randn(&[b, h, tk, d], seed + 1),
                randn(&[b, h, tk, d], seed + 2),
            );
            gradcheck(
                &format!("attention q [{b}, {h}, {tq}, {d}] tk {tk} causal {causal}"),
                &[q, k, v],
                |t| wsum(&t[0].scaled_dot_product_attention(&t[1], &t[2], causal)?),
            );
        }
    }
}

/// Grouped-query attention: fewer key/value heads than query heads (each shared by a group), whose
/// gradients sum over their group.
#[test]
fn grouped_query_attention_all_inputs() {
    for (i, &(b, h, hkv, tq, tk, d)) in [(1, 4, 2, 3, 5, 4), (2, 3, 1, 4, 4, 3), (1, 6, 3, 2, 3, 2)]
        .iter()
        .enumerate()
    {
        for causal in [false, true] {
            let seed = 100 + 10 * i as u64;
            let (q, k, v) = (
                randn(&[b, h, tq, d], seed),
                randn(&[b, hkv, tk, d], seed + 1),
                randn(&[b, hkv, tk, d], seed + 2),
            );
            gradcheck(
                &format!("attention q [{b}, {h}, {tq}, {d}] kv heads {hkv} tk {tk} causal {causal}"),
                &[q, k, v],
                |t| wsum(&t[0].scaled_dot_product_attention(&t[1], &t[2], causal)?),
            );
        }
    }
}

/// Self-attention from a combined q/k/v projection `[B, T, 3·C]` (fused on the CPU): every
/// element of qkv, queries, keys and values of every head, against finite differences.
#[test]
fn qkv_attention_of_a_combined_projection() {
    // (B, nh, T, hs)
    for (i, &(b, nh, t, hs)) in [(1, 1, 1, 2), (2, 2, 3, 3), (1, 3, 5, 2)].iter().enumerate() {
        for causal in [false, true] {
            gradcheck(
                &format!("qkv_attention (B, nh, T, hs) = ({b}, {nh}, {t}, {hs}) causal {causal}"),
                &[randn(&[b, t, 3 * nh * hs], 200 + i as u64)],
                |x| wsum(&x[0].qkv_attention(nh, causal)?),
            );
        }
    }
}

#[test]
fn cross_entropy_with_and_without_ignore_index() {
    let mut rng = Rng::new(11);
    for &(n, c) in &[(1usize, 1usize), (1, 5), (5, 7), (6, 3)] {
        let logits = randn(&[n, c], (n * c) as u64);
        let targets: Vec<u32> = (0..n).map(|_| rng.below(c as u64) as u32).collect();
        let t = ids(&targets, &[n]);
        gradcheck(&format!("cross_entropy [{n}, {c}]"), &[logits.clone(), t], |t| {
            t[0].cross_entropy(&t[1])
        });
        if n > 1 {
            // Ignore index outside the classes (PyTorch's -100 style), on rows 0 and 2.
            let mut with_ignored = targets.clone();
            with_ignored[0] = u32::MAX;
            with_ignored[n - 1] = u32::MAX;
            let t = ids(&with_ignored, &[n]);
            gradcheck(
                &format!("cross_entropy [{n}, {c}] ignore MAX"),
                &[logits.clone(), t],
                |t| t[0].cross_entropy_with_ignore(&t[1], Some(u32::MAX)),
            );
            // Ignore index that is also a valid class id.
            let ignore = targets[0];
            gradcheck(
                &format!("cross_entropy [{n}, {c}] ignore {ignore}"),
                &[logits.clone(), ids(&targets, &[n])],
                |t| t[0].cross_entropy_with_ignore(&t[1], Some(ignore)),
            );
        }
    }
    // A non-contiguous logits view, and a loss that is not the last op.
    gradcheck(
        "cross_entropy of a transpose",
        &[randn(&[4, 3], 3), ids(&[1, 0, 3], &[3])],
        |t| t[0].transpose(0, 1)?.cross_entropy(&t[1])?.mul_scalar(2.5),
    );
}

#[test]
fn ignored_rows_get_zero_gradient() {
    let logits = randn(&[3, 4], 1).requires_grad();
    let loss = logits
        .cross_entropy_with_ignore(&ids(&[2, 7, 1], &[3]), Some(7))
        .unwrap();
    let g = loss.backward().unwrap().get(&logits).unwrap().to_vec::<f64>().unwrap();
    assert!(g[4..8].iter().all(|&v| v == 0.0), "row 1 is ignored: {g:?}");
    assert!(g[0..4].iter().any(|&v| v != 0.0));
}

#[test]
fn layer_norm_all_inputs() {
    for (k, shape) in [vec![4, 6], vec![2, 3, 5], vec![3, 1], vec![1, 7]].iter().enumerate() {
        let c = *shape.last().unwrap();
        let (x, w, b) = (
            randn(shape, k as u64),
            randn(&[c], 10 + k as u64),
            randn(&[c], 20 + k as u64),
        );
        gradcheck(&format!("layer_norm {shape:?}"), &[x.clone(), w.clone(), b], |t| {
            wsum(&t[0].layer_norm(&t[1], &t[2], 1e-5)?)
        });
        gradcheck(&format!("layer_norm_no_bias {shape:?}"), &[x, w], |t| {
            wsum(&t[0].layer_norm_no_bias(&t[1], 1e-5)?)
        });
    }
    gradcheck(
        "layer_norm of a transpose",
        &[randn(&[5, 3], 1), randn(&[5], 2), randn(&[5], 3)],
        |t| wsum(&t[0].transpose(0, 1)?.layer_norm(&t[1], &t[2], 1e-5)?),
    );
}

#[test]
fn swiglu_both_inputs() {
    for (k, shape) in shapes().iter().enumerate() {
        let (gate, up) = (
            randn(shape, k as u64).mul_scalar(3.0).unwrap(),
            randn(shape, 50 + k as u64),
        );
        gradcheck(&format!("swiglu {shape:?}"), &[gate, up], |t| {
            wsum(&t[0].swiglu(&t[1])?)
        });
    }
    // the two halves of one [.., 2F] projection, and a transposed gate
    gradcheck("swiglu of the halves of one tensor", &[randn(&[3, 10], 1)], |t| {
        wsum(&t[0].narrow(1, 0, 5)?.swiglu(&t[0].narrow(1, 5, 5)?)?)
    });
    gradcheck("swiglu of a transpose", &[randn(&[4, 3], 2), randn(&[3, 4], 3)], |t| {
        wsum(&t[0].transpose(0, 1)?.swiglu(&t[1])?)
    });
    // one tensor as both inputs: the two gradients accumulate
    gradcheck("swiglu(x, x)", &[randn(&[6], 4)], |t| wsum(&t[0].swiglu(&t[0])?));
}

#[test]
fn rms_norm_both_inputs() {
    for (k, shape) in [vec![4, 6], vec![2, 3, 5], vec![3, 1], vec![1, 7]].iter().enumerate() {
        let c = *shape.last().unwrap();
        let (x, w) = (randn(shape, k as u64), randn(&[c], 10 + k as u64));
        gradcheck(&format!("rms_norm {shape:?}"), &[x, w], |t| {
            wsum(&t[0].rms_norm(&t[1], 1e-5)?)
        });
    }
    gradcheck("rms_norm of a transpose", &[randn(&[5, 3], 1), randn(&[5], 2)], |t| {
        wsum(&t[0].transpose(0, 1)?.rms_norm(&t[1], 1e-5)?)
    });
    gradcheck(
        "rms_norm of rows 2..4 with a narrowed weight",
        &[randn(&[5, 4], 3), randn(&[6], 4)],
        |t| wsum(&t[0].narrow(0, 2, 2)?.rms_norm(&t[1].narrow(0, 1, 4)?, 1e-5)?),
    );
}

#[test]
fn rope_both_layouts() {
    for layout in [RopeLayout::Half, RopeLayout::Interleaved] {
        for (k, (shape, offset)) in [
            ([1, 1, 1, 2], 0),
            ([2, 3, 2, 4], 5),
            ([1, 5, 3, 6], 0),
            ([2, 2, 1, 8], 1000),
        ]
        .iter()
        .enumerate()
        {
            gradcheck(
                &format!("rope {layout:?} {shape:?} from {offset}"),
                &[randn(shape, k as u64)],
                |t| wsum(&t[0].rope(1e4, *offset, layout)?),
            );
        }
        // a [B, H, T, D] tensor transposed to [B, T, H, D]: the backward must reach the view
        gradcheck(
            &format!("rope {layout:?} of a transpose"),
            &[randn(&[2, 3, 4, 6], 9)],
            |t| wsum(&t[0].transpose(1, 2)?.rope(1e5, 2, layout)?),
        );
    }
}

/// Fused kernels must read only the viewed rows of a contiguous view that starts inside a
/// larger storage (a narrow of rows, a slice of a cache), not the whole storage from 0.
#[test]
fn fused_ops_on_offset_row_views() {
    let x = randn(&[5, 4], 1);
    let rows = |t: &Tensor| t.narrow(0, 2, 2);
    gradcheck("softmax of rows 2..4", std::slice::from_ref(&x), |t| {
        wsum(&rows(&t[0])?.softmax(-1)?)
    });
    gradcheck("log_softmax of rows 2..4", std::slice::from_ref(&x), |t| {
        wsum(&rows(&t[0])?.log_softmax(-1)?)
    });
    gradcheck(
        "layer_norm of rows 2..4",
        &[x.clone(), randn(&[4], 2), randn(&[4], 3)],
        |t| wsum(&rows(&t[0])?.layer_norm(&t[1], &t[2], 1e-5)?),
    );
    gradcheck(
        "layer_norm with narrowed parameters",
        &[x.clone(), randn(&[6], 4), randn(&[5], 5)],
        |t| wsum(&rows(&t[0])?.layer_norm(&t[1].narrow(0, 2, 4)?, &t[2].narrow(0, 1, 4)?, 1e-5)?),
    );
    gradcheck("cross_entropy of rows 2..4", &[x.clone(), ids(&[3, 0], &[2])], |t| {
        rows(&t[0])?.cross_entropy(&t[1])
    });
    gradcheck("index_select of rows 2..4", &[x.clone(), ids(&[1, 1, 0], &[3])], |t| {
        wsum(&rows(&t[0])?.index_select(0, &t[1])?)
    });
    gradcheck("embedding from a narrowed table", &[ids(&[0, 2, 2], &[3]), x], |t| {
        wsum(&t[0].embedding(&t[1].narrow(0, 1, 3)?)?)
    });
}

// ------------------------------------------------------------------------------------------
// Indexing
// ------------------------------------------------------------------------------------------

#[test]
fn embedding_with_repeated_ids() {
    let table = randn(&[5, 3], 1);
    let id = ids(&[0, 2, 2, 4, 1, 2, 0, 0], &[2, 4]);
    gradcheck("embedding", &[id, table.clone()], |t| wsum(&t[0].embedding(&t[1])?));
    gradcheck("embedding 1-D", &[ids(&[3, 3, 3], &[3]), table], |t| {
        wsum(&t[0].embedding(&t[1])?)
    });
}

#[test]
fn index_select_along_each_dim_with_repeats() {
    let x = randn(&[4, 5, 3], 1);
    let cases: &[(isize, &[u32])] = &[(0, &[3, 0, 3, 3]), (1, &[4, 4, 1]), (-1, &[2, 0, 2, 1, 0]), (2, &[1])];
    for &(dim, v) in cases {
        let id = ids(v, &[v.len()]);
        gradcheck(&format!("index_select dim {dim} {v:?}"), &[x.clone(), id], |t| {
            wsum(&t[0].index_select(dim, &t[1])?)
        });
    }
    gradcheck(
        "index_select of a transpose",
        &[randn(&[3, 4], 2), ids(&[0, 0, 2], &[3])],
        |t| wsum(&t[0].transpose(0, 1)?.index_select(1, &t[1])?),
    );
}

#[test]
fn where_cond_and_masked_fill() {
    let cond = ids(&[1, 0, 1], &[3, 1]);
    gradcheck(
        "where_cond broadcast",
        &[cond.clone(), randn(&[3, 4], 1), randn(&[4], 2)],
        |t| wsum(&t[0].where_cond(&t[1], &t[2])?),
    );
    let full = ids(&[1, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1], &[3, 4]);
    gradcheck(
        "where_cond same shape",
        &[full, randn(&[3, 4], 3), randn(&[3, 4], 4)],
        |t| wsum(&t[0].where_cond(&t[1], &t[2])?),
    );
    gradcheck("masked_fill", &[randn(&[3, 4], 5), ids(&[0, 1, 1, 0], &[4])], |t| {
        wsum(&t[0].masked_fill(&t[1], -1e9)?.softmax(-1)?)
    });
}

// ------------------------------------------------------------------------------------------
// Shape ops
// ------------------------------------------------------------------------------------------

#[test]
fn cat_along_each_dim() {
    gradcheck(
        "cat dim 0",
        &[randn(&[2, 3], 1), randn(&[1, 3], 2), randn(&[4, 3], 3)],
        |t| wsum(&Tensor::cat(t, 0)?),
    );
    gradcheck("cat dim -1", &[randn(&[2, 1], 4), randn(&[2, 3], 5)], |t| {
        wsum(&Tensor::cat(t, -1)?)
    });
    gradcheck("cat middle dim", &[randn(&[2, 3, 2], 6), randn(&[2, 1, 2], 7)], |t| {
        wsum(&Tensor::cat(t, 1)?)
    });
    gradcheck("cat with itself and a view", &[randn(&[3, 2], 8)], |t| {
        wsum(&Tensor::cat(
            &[t[0].clone(), t[0].transpose(0, 1)?.transpose(0, 1)?.exp()?],
            0,
        )?)
    });
    gradcheck("cat of one", &[randn(&[3], 9)], |t| wsum(&Tensor::cat(&t[..1], 0)?));
}

#[test]
fn narrow_transpose_permute() {
    let x = randn(&[5, 7], 1);
    for (dim, start, len) in [(0isize, 0usize, 5usize), (1, 2, 3), (-1, 6, 1), (0, 4, 1), (1, 3, 0)] {
        gradcheck(&format!("narrow {dim} {start} {len}"), std::slice::from_ref(&x), |t| {
            wsum(&t[0].narrow(dim, start, len)?.exp()?)
        });
    }
    gradcheck("narrow of a narrow", std::slice::from_ref(&x), |t| {
        wsum(&t[0].narrow(1, 1, 5)?.narrow(0, 2, 2)?.narrow(1, 3, 2)?)
    });
    let y = randn(&[2, 3, 5], 2);
    for (a, b) in [(0isize, 2isize), (-1, -2), (1, 1), (0, -3)] {
        gradcheck(&format!("transpose {a} {b}"), std::slice::from_ref(&y), |t| {
            wsum(&t[0].transpose(a, b)?)
        });
    }
    for perm in [[2usize, 0, 1], [1, 2, 0], [0, 1, 2], [2, 1, 0]] {
        gradcheck(&format!("permute {perm:?}"), std::slice::from_ref(&y), |t| {
            wsum(&t[0].permute(&perm)?.contiguous()?)
        });
    }
}

#[test]
fn reshape_broadcast_squeeze_unsqueeze_contiguous() {
    let y = randn(&[2, 3, 5], 1);
    for shape in [vec![6, 5], vec![30], vec![5, 3, 2], vec![1, 30, 1]] {
        gradcheck(&format!("reshape {shape:?}"), std::slice::from_ref(&y), |t| {
            wsum(&t[0].reshape(&shape)?)
        });
        gradcheck(
            &format!("reshape of a permute {shape:?}"),
            std::slice::from_ref(&y),
            |t| wsum(&t[0].permute(&[2, 0, 1])?.reshape(&shape)?),
        );
    }
    let cases: &[(&[usize], &[usize])] = &[
        (&[3, 1], &[2, 3, 4]),
        (&[1], &[5]),
        (&[], &[2, 2]),
        (&[2, 1, 3], &[2, 4, 3]),
    ];
    for &(from, to) in cases {
        gradcheck(&format!("broadcast_to {from:?} -> {to:?}"), &[randn(from, 3)], |t| {
            wsum(&t[0].broadcast_to(to)?)
        });
    }
    let z = randn(&[3, 1, 5], 4);
    for dim in [1isize, -2] {
        gradcheck(&format!("squeeze {dim}"), std::slice::from_ref(&z), |t| {
            wsum(&t[0].squeeze(dim)?)
        });
    }
    for dim in [0isize, 1, 3, -1, -4] {
        gradcheck(&format!("unsqueeze {dim}"), std::slice::from_ref(&z), |t| {
            wsum(&t[0].unsqueeze(dim)?)
        });
    }
    // of a strided view: still views (no copy), with the view's values and gradients
    let strided = |t: &Tensor| t.permute(&[2, 1, 0]);
    type DimOp = fn(&Tensor, isize) -> Result<Tensor>;
    let views: [(&str, DimOp, &[isize]); 2] = [
        ("squeeze", Tensor::squeeze, &[1, -2]),
        ("unsqueeze", Tensor::unsqueeze, &[0, 2, -1]),
    ];
    for (name, op, dims) in views {
        for &dim in dims {
            let view = op(&strided(&z).unwrap(), dim).unwrap();
            assert!(view.same_storage(&z), "{name} {dim} of a permuted view copied");
            let copied = op(&strided(&z).unwrap().contiguous().unwrap(), dim).unwrap();
            assert_eq!(
                view.to_vec::<f64>().unwrap(),
                copied.to_vec::<f64>().unwrap(),
                "{name} {dim}"
            );
            gradcheck(&format!("{name} {dim} of a permute"), std::slice::from_ref(&z), |t| {
                wsum(&op(&strided(&t[0])?, dim)?)
            });
        }
    }
    gradcheck("contiguous of a transpose", std::slice::from_ref(&y), |t| {
        wsum(&t[0].transpose(0, 2)?.contiguous()?)
    });
    gradcheck("copy", &[y], |t| wsum(&t[0].transpose(0, 1)?.copy()?));
}

// ------------------------------------------------------------------------------------------
// dtype conversion and dropout
// ------------------------------------------------------------------------------------------

#[test]
fn to_dtype_f64_f32_f64_chain() {
    // The f32 leg rounds every value to ~6e-8 relative, so the f64 step and tolerance do not
    // apply: a larger step keeps the rounding noise (~1e-7·|f| / h) small against the slope.
    let tol = Tol {
        h: 1e-2,
        rtol: 1e-3,
        atol: 1e-4,
    };
    for (k, shape) in [vec![3], vec![2, 5]].iter().enumerate() {
        gradcheck_with(
            &format!("to_dtype chain {shape:?}"),
            tol,
            &[randn(shape, k as u64)],
            |t| wsum(&t[0].to_dtype(DType::F32)?.tanh()?.to_dtype(DType::F64)?),
        );
    }
    // The gradient of a f32 leaf is f32 even when the graph runs in f64.
    let x = Tensor::from_vec(vec![1f32, 2., 3.], &[3], &DEV)
        .unwrap()
        .requires_grad();
    let g = x
        .to_dtype(DType::F64)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gx = g.get(&x).unwrap();
    assert_eq!(gx.dtype(), DType::F32);
    assert_eq!(gx.to_vec::<f32>().unwrap(), vec![2., 4., 6.]);
}

#[test]
fn dropout_with_a_fixed_mask() {
    for (k, shape) in shapes().iter().enumerate() {
        // A fresh generator with the same seed on every call: the mask is a constant of f.
        gradcheck(&format!("dropout {shape:?}"), &[randn(shape, k as u64)], |t| {
            wsum(&t[0].dropout(0.4, true, &mut Rng::new(77))?)
        });
    }
    // The mask really zeroes some elements, and the gradient is zero exactly there.
    let x = randn(&[50], 1).requires_grad();
    let y = x.dropout(0.5, true, &mut Rng::new(3)).unwrap();
    let g = y
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
        .get(&x)
        .unwrap()
        .to_vec::<f64>()
        .unwrap();
    let yv = y.to_vec::<f64>().unwrap();
    let dropped = g.iter().filter(|&&v| v == 0.0).count();
    assert!(dropped > 5 && dropped < 45, "{dropped} of 50 dropped at p = 0.5");
    for (gv, yv) in g.iter().zip(&yv) {
        assert_eq!(*gv == 0.0, *yv == 0.0);
        assert!(
            *gv == 0.0 || (*gv - 2.0).abs() < 1e-12,
            "kept elements are scaled by 1/(1-p): {gv}"
        );
    }
    // Evaluation mode is the identity.
    gradcheck("dropout eval", &[randn(&[4], 2)], |t| {
        wsum(&t[0].dropout(0.5, false, &mut Rng::new(1))?)
    });
}

// ------------------------------------------------------------------------------------------
// A small composite: the ops chained as a model does
// ------------------------------------------------------------------------------------------

#[test]
fn composite_attention_like_block() {
    let (x, wq, wk, lw, lb) = (
        randn(&[2, 3, 4], 1),
        randn(&[4, 4], 2),
        randn(&[4, 4], 3),
        randn(&[4], 4),
        randn(&[4], 5),
    );
    let causal = ids(&[0, 1, 1, 0, 0, 1, 0, 0, 0], &[3, 3]);
    gradcheck("attention-like", &[x, wq, wk, lw, lb, causal], |t| {
        let h = t[0].layer_norm(&t[3], &t[4], 1e-5)?;
        let q = h.matmul(&t[1])?;
        let k = h.matmul(&t[2])?;
        let att = q.matmul(&k.transpose(-2, -1)?)?.mul_scalar(0.5)?;
        let att = att.masked_fill(&t[5], f64::NEG_INFINITY)?.softmax(-1)?;
        let y = att.matmul(&h)?.gelu()?.add(&t[0])?;
        let logits = y.reshape(&[6, 4])?;
        logits.cross_entropy(&ids(&[0, 3, 1, 2, 2, 0], &[6]))
    });
}

// ------------------------------------------------------------------------------------------
// Autograd semantics
// ------------------------------------------------------------------------------------------

fn vec_of(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

#[test]
fn a_tensor_used_twice_accumulates() {
    let x = Tensor::from_vec(vec![1.0f64, -2.0, 3.0], &[3], &DEV)
        .unwrap()
        .requires_grad();
    let g = x.mul(&x).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(vec_of(g.get(&x).unwrap()), vec![2.0, -4.0, 6.0]);

    // Diamond: x feeds two branches that meet again. d/dx [exp(x)·tanh(x)] = exp·tanh + exp·(1 − tanh²).
    let a = x.exp().unwrap();
    let b = x.tanh().unwrap();
    let g = a.mul(&b).unwrap().sum_all().unwrap().backward().unwrap();
    let expected: Vec<f64> = [1.0f64, -2.0, 3.0]
        .iter()
        .map(|&v| v.exp() * v.tanh() + v.exp() * (1.0 - v.tanh().powi(2)))
        .collect();
    for (got, want) in vec_of(g.get(&x).unwrap()).iter().zip(&expected) {
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    // Three uses, one through a reused intermediate: y = x + x, z = y·y + x → dz/dx = 8x + 1.
    let y = x.add(&x).unwrap();
    let z = y.mul(&y).unwrap().add(&x).unwrap().sum_all().unwrap();
    let g = z.backward().unwrap();
    assert_eq!(vec_of(g.get(&x).unwrap()), vec![9.0, -15.0, 25.0]);
    assert_eq!(g.len(), 1, "only the leaf gets a gradient, not the intermediates");
    assert!(g.get(&y).is_none());
}

#[test]
fn detach_stops_gradients() {
    let x = Tensor::from_vec(vec![1.0f64, 2.0], &[2], &DEV).unwrap().requires_grad();
    let d = x.detach();
    assert!(!d.tracks_grad());
    // x · detach(x): the gradient is detach(x) = x, not 2x.
    let g = x.mul(&d).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(vec_of(g.get(&x).unwrap()), vec![1.0, 2.0]);
    // A detached intermediate cuts everything above it.
    let h = x.exp().unwrap().detach();
    let w = Tensor::from_vec(vec![3.0f64, 4.0], &[2], &DEV).unwrap().requires_grad();
    let g = h.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(g.get(&x).is_none());
    assert_eq!(vec_of(g.get(&w).unwrap()), vec![1f64.exp(), 2f64.exp()]);
    // Only detached inputs: nothing to differentiate.
    assert!(matches!(
        d.exp().unwrap().sum_all().unwrap().backward(),
        Err(Error::Autograd(_))
    ));
}

#[test]
fn no_grad_records_nothing() {
    let x = Tensor::from_vec(vec![1.0f64, 2.0], &[2], &DEV).unwrap().requires_grad();
    let y = {
        let _g = kiln::no_grad();
        assert!(!kiln::is_grad_enabled());
        {
            let _nested = kiln::no_grad();
        }
        assert!(
            !kiln::is_grad_enabled(),
            "dropping a nested guard must not re-enable recording"
        );
        x.mul(&x).unwrap().sum_all().unwrap()
    };
    assert!(kiln::is_grad_enabled());
    assert!(!y.tracks_grad());
    assert!(matches!(y.backward(), Err(Error::Autograd(_))));
    // Recording resumes after the scope.
    assert!(x.mul(&x).unwrap().tracks_grad());
    // Ops on constants do not track either.
    let c = Tensor::ones(&[2], DType::F64, &DEV).unwrap();
    assert!(!c.exp().unwrap().tracks_grad());
    assert!(c.add(&x).unwrap().tracks_grad());
}

#[test]
fn second_backward_through_a_freed_graph_fails() {
    let x = randn(&[3], 1).requires_grad();
    let loss = x.exp().unwrap().mul(&x).unwrap().sum_all().unwrap();
    loss.backward().unwrap();
    match loss.backward() {
        Err(Error::Autograd(msg)) => assert!(msg.contains("freed"), "{msg}"),
        other => panic!(
            "expected Error::Autograd, got {other:?}",
            other = other.map(|g| g.len())
        ),
    }
    // A part of the graph that is still reachable from another output is also freed.
    let x = randn(&[3], 2).requires_grad();
    let h = x.exp().unwrap();
    let l1 = h.sum_all().unwrap();
    let l2 = h.mul_scalar(2.0).unwrap().sum_all().unwrap();
    l1.backward().unwrap();
    assert!(matches!(l2.backward(), Err(Error::Autograd(_))));
    // A leaf can be differentiated again through a fresh forward pass.
    let g = x.exp().unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(g.get(&x).unwrap().shape(), &[3]);
}

#[test]
fn gradients_have_the_input_shape_and_dtype() {
    for dtype in [DType::F32, DType::F64] {
        let a = randn(&[3, 1, 5], 1).to_dtype(dtype).unwrap().requires_grad();
        let b = randn(&[4, 1], 2).to_dtype(dtype).unwrap().requires_grad();
        let s = randn(&[], 3).to_dtype(dtype).unwrap().requires_grad();
        let loss = a.mul(&b).unwrap().add(&s).unwrap().tanh().unwrap().sum_all().unwrap();
        assert_eq!(loss.shape(), &[] as &[usize]);
        let g = loss.backward().unwrap();
        for t in [&a, &b, &s] {
            let gt = g.get(t).unwrap();
            assert_eq!(gt.shape(), t.shape());
            assert_eq!(gt.dtype(), dtype);
        }
    }
    // Integer tensors cannot require gradients; a loss that does not use a leaf gives it none.
    let u = ids(&[1, 2], &[2]).requires_grad();
    assert!(!u.tracks_grad());
    let (x, unused) = (randn(&[2], 4).requires_grad(), randn(&[2], 5).requires_grad());
    let g = x.sum_all().unwrap().backward().unwrap();
    assert!(g.get(&unused).is_none());
    assert_eq!(vec_of(g.get(&x).unwrap()), vec![1.0, 1.0]);
}

#[test]
fn backward_of_a_leaf_and_of_an_index_only_path() {
    // The loss is the leaf itself.
    let x = Tensor::from_vec(vec![2.5f64], &[], &DEV).unwrap().requires_grad();
    let g = x.backward().unwrap();
    assert_eq!(vec_of(g.get(&x).unwrap()), vec![1.0]);
    // A gradient that only flows into the table of an embedding, never into the ids.
    let table = randn(&[3, 2], 1).requires_grad();
    let id = ids(&[2, 2], &[2]);
    let g = id.embedding(&table).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(vec_of(g.get(&table).unwrap()), vec![0.0, 0.0, 0.0, 0.0, 2.0, 2.0]);
    assert!(g.get(&id).is_none());
}

/// `((exp(x·a)·b + c)·a)` summed, x constant: `a` is used first and last, so its gradient is
/// final only at the last node; `c` is final after the third node, `b` after the fourth.
fn observed_graph() -> (Tensor, [Tensor; 3]) {
    let x = randn(&[2, 3], 11);
    let [a, b, c] = [12, 13, 14].map(|seed| randn(&[2, 3], seed).requires_grad());
    let h = x.mul(&a).unwrap().exp().unwrap().mul(&b).unwrap().add(&c).unwrap();
    (h.mul(&a).unwrap().sum_all().unwrap(), [a, b, c])
}

/// A [`kiln::BackwardObserver`] that writes what it hears into a log.
struct Log {
    names: Vec<(usize, &'static str)>,
    events: Vec<String>,
}

impl kiln::BackwardObserver for Log {
    fn gradient_ready(&mut self, leaf: &Tensor, _grad: &Tensor) -> Result<()> {
        let name = self.names.iter().find(|(id, _)| *id == leaf.id()).unwrap().1;
        self.events.push(format!("ready {name}"));
        Ok(())
    }
    fn node_done(&mut self) -> Result<()> {
        self.events.push("node".into());
        Ok(())
    }
}

#[test]
fn observed_backward_reports_each_gradient_as_soon_as_it_is_final() {
    let (loss, [a, b, c]) = observed_graph();
    let mut log = Log {
        names: vec![(a.id(), "a"), (b.id(), "b"), (c.id(), "c")],
        events: Vec::new(),
    };
    let got = loss.backward_observed(&mut log).unwrap();
    // the nodes end with: add c, mul by b, exp, mul by a (the last); each gradient is reported
    // inside the node that completes it, before that node's end
    let events = &log.events;
    let readies: Vec<&str> = events
        .iter()
        .filter(|e| e.starts_with("ready"))
        .map(String::as_str)
        .collect();
    assert_eq!(readies, ["ready c", "ready b", "ready a"], "{events:?}");
    let nodes = events.iter().filter(|e| *e == "node").count();
    let nodes_left = |what: &str| {
        let at = events.iter().position(|e| e == what).unwrap();
        events[at..].iter().filter(|e| *e == "node").count()
    };
    assert_eq!(
        [nodes_left("ready c"), nodes_left("ready b"), nodes_left("ready a")],
        [4, 3, 1],
        "{events:?}"
    );
    assert!(nodes >= 6, "{events:?}");
    // the gradients of a plain backward of the same graph, bit for bit
    let (loss2, [a2, b2, c2]) = observed_graph();
    let plain = loss2.backward().unwrap();
    for (t, t2) in [(&a, &a2), (&b, &b2), (&c, &c2)] {
        let (g, g2) = (vec_of(got.get(t).unwrap()), vec_of(plain.get(t2).unwrap()));
        assert_eq!(
            g.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            g2.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
    // a closure observes too, with the final gradient itself; an error from it stops the backward
    let (loss3, [a3, ..]) = observed_graph();
    let mut seen = Vec::new();
    loss3
        .backward_observed(&mut |leaf: &Tensor, grad: &Tensor| -> Result<()> {
            seen.push((leaf.id(), vec_of(grad)));
            Ok(())
        })
        .unwrap();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2], (a3.id(), vec_of(got.get(&a).unwrap())));
    let (loss4, _) = observed_graph();
    let err = loss4
        .backward_observed(&mut |_: &Tensor, _: &Tensor| -> Result<()> { Err(Error::Autograd("stop here".into())) })
        .err()
        .expect("the observer's error stops the backward");
    assert!(err.to_string().contains("stop here"), "{err}");
    // a loss that is a leaf reports itself
    let x = Tensor::from_vec(vec![2.5f64], &[], &DEV).unwrap().requires_grad();
    let mut count = 0;
    x.backward_observed(&mut |_: &Tensor, _: &Tensor| -> Result<()> {
        count += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(count, 1);
}

// ------------------------------------------------------------------------------------------
// Everyday ops: clamp, gather/scatter_add, var/std, stack/chunk/split, reshape_infer, t,
// losses, operators
// ------------------------------------------------------------------------------------------

#[test]
fn clamp_passes_the_gradient_inside_the_bounds() {
    // values at least 0.1 from the bounds -0.5 and 0.8: inside, below and above
    let x = Tensor::from_vec(vec![-1.3, -0.62, -0.3, 0.0, 0.41, 0.65, 0.93, 2.0], &[2, 4], &DEV).unwrap();
    gradcheck("clamp", std::slice::from_ref(&x), |t| wsum(&t[0].clamp(-0.5, 0.8)?));
    gradcheck("clamp of a transpose, one-sided", &[x], |t| {
        wsum(&t[0].t()?.clamp(f64::NEG_INFINITY, 0.5)?)
    });
    // at a bound the gradient passes, as PyTorch's (finite differences would see a kink)
    let at = Tensor::from_vec(vec![-0.5f64, 0.8], &[2], &DEV)
        .unwrap()
        .requires_grad();
    let g = at.clamp(-0.5, 0.8).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(vec_of(g.get(&at).unwrap()), vec![1.0, 1.0]);
}

#[test]
fn gather_and_scatter_add_along_each_dim() {
    let shape = [3, 4, 5];
    for d in 0..3 {
        // an index smaller than the input outside d, with repeats along d
        let mut index_shape = vec![2, 3, 4];
        index_shape[d] = 6;
        let n: usize = index_shape.iter().product();
        let mut rng = Rng::new(d as u64);
        let index: Vec<u32> = (0..n).map(|_| rng.below(shape[d] as u64) as u32).collect();
        let index = ids(&index, &index_shape);
        let x = randn(&shape, 10 + d as u64);
        let src = randn(&index_shape, 20 + d as u64);
        let dim = d as isize;
        gradcheck(&format!("gather dim {d}"), std::slice::from_ref(&x), |t| {
            wsum(&t[0].gather(dim, &index)?)
        });
        gradcheck(&format!("scatter_add dim {d}"), &[x.clone(), src], |t| {
            wsum(&t[0].scatter_add(dim, &index, &t[1])?)
        });
        // through a view of x
        gradcheck(
            &format!("gather of a permuted view, dim {d}"),
            &[randn(&[5, 4, 3], 30)],
            |t| wsum(&t[0].permute(&[2, 1, 0])?.gather(dim, &index)?),
        );
    }
}

#[test]
fn var_and_std_with_both_corrections() {
    let x = randn(&[3, 4, 5], 7);
    for dims in [&[1isize][..], &[0, 2], &[-1]] {
        for correction in [0, 1] {
            for keepdim in [false, true] {
                let what = format!("{dims:?} correction {correction} keepdim {keepdim}");
                gradcheck(&format!("var {what}"), std::slice::from_ref(&x), |t| {
                    wsum(&t[0].var(dims, correction, keepdim)?)
                });
                gradcheck(&format!("std {what}"), std::slice::from_ref(&x), |t| {
                    wsum(&t[0].std(dims, correction, keepdim)?)
                });
            }
        }
    }
}

#[test]
fn stack_chunk_split_reshape_infer_and_t() {
    let (a, b) = (randn(&[2, 3], 1), randn(&[2, 3], 2));
    for dim in [0isize, 1, 2, -1, -3] {
        gradcheck(&format!("stack at {dim}"), &[a.clone(), b.clone()], |t| {
            wsum(&Tensor::stack(&[t[0].clone(), t[1].clone(), t[0].clone()], dim)?)
        });
    }
    let x = randn(&[5, 7], 3);
    // each piece weighted differently, so a piece's gradient landing elsewhere shows
    gradcheck("chunk", std::slice::from_ref(&x), |t| {
        let pieces = t[0].chunk(3, 1)?;
        let mut total = wsum(&pieces[0])?;
        for (k, p) in pieces.iter().enumerate().skip(1) {
            total = total.add(&wsum(&p.mul_scalar(k as f64 + 1.5)?)?)?;
        }
        Ok(total)
    });
    gradcheck("split_sizes", std::slice::from_ref(&x), |t| {
        let pieces = t[0].split_sizes(&[1, 4], 0)?;
        wsum(&pieces[1].mul(&pieces[0])?)
    });
    gradcheck("reshape_infer", std::slice::from_ref(&x), |t| {
        wsum(&t[0].reshape_infer(&[7, -1])?.t()?.reshape_infer(&[-1])?)
    });
    gradcheck("t of a batch", &[randn(&[2, 3, 4], 4)], |t| wsum(&t[0].t()?));
}

#[test]
fn mse_and_nll_losses() {
    let (a, b) = (randn(&[4, 3], 5), randn(&[4, 3], 6));
    gradcheck("mse_loss", &[a.clone(), b], |t| t[0].mse_loss(&t[1]));
    let targets = ids(&[2, 0, 0, 1], &[4]);
    gradcheck("nll_loss of log_softmax", &[a], |t| {
        t[0].log_softmax(-1)?.nll_loss(&targets)
    });
    // nll of log_softmax is cross_entropy: same value
    let logits = randn(&[4, 3], 8);
    let nll = logits
        .log_softmax(-1)
        .unwrap()
        .nll_loss(&targets)
        .unwrap()
        .item()
        .unwrap();
    let ce = logits.cross_entropy(&targets).unwrap().item().unwrap();
    assert!((nll - ce).abs() < 1e-12, "nll(log_softmax) {nll} vs cross_entropy {ce}");
}

#[test]
fn operators_are_the_methods() {
    let (a, b) = (randn(&[2, 3], 9), randn(&[3], 10));
    gradcheck("+ - * / and neg, borrowed and owned", &[a.clone(), b.clone()], |t| {
        let (x, y) = (&t[0], &t[1]);
        let s = ((x + y)? * (x - y)?)?;
        let q = (&s / &(y.sqr()? + 1.0)?)?;
        wsum(&(-(q - 0.5)?)?)
    });
    // each operator gives exactly the method's result
    let same = |got: Tensor, want: Tensor| assert_eq!(vec_of(&got), vec_of(&want));
    same((&a + &b).unwrap(), a.add(&b).unwrap());
    same((&a - &b).unwrap(), a.sub(&b).unwrap());
    same((&a * &b).unwrap(), a.mul(&b).unwrap());
    same((&a / &b).unwrap(), a.div(&b).unwrap());
    same((-&a).unwrap(), a.neg().unwrap());
    same((&a * 2.5).unwrap(), a.mul_scalar(2.5).unwrap());
    same((&a / 4.0).unwrap(), a.div_scalar(4.0).unwrap());
    // shapes that do not broadcast are an error, not a panic
    assert!((&a + &randn(&[2], 11)).is_err());
}
