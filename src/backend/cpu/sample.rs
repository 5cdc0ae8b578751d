//! Drawing a token id from a row of logits: greedy, temperature, top-k and top-p, the CPU
//! implementation and the reference of kernels/sample.cu, which gives the same id bit for bit.
//!
//! A token's probability is an integer weight W(l) = round(exp((l − max)/T)·2^S) with
//! S = min(52, 62 − bit_length(vocab)), computed by `weight` with the same IEEE operations in
//! the same order as the kernel (so the two round alike), and every sum is an integer sum, which
//! no summation order changes. The kernel finds the top-k threshold and the top-p cut by radix
//! selection over the logits' bits; here the candidates are sorted (an independent route to the
//! same answer). Then with `u` uniform in [0, 1), R = ⌊u·kept⌋ (kept: the weight left after the
//! filters) picks the token whose interval of the cumulative weight, in id order, holds R.

use crate::backend::cpu::{typed, CpuStorage};
use crate::backend::op::{SampleParams, SampleScratch};
use crate::{Error, Result};

/// The index of the first of the largest of `v` (not empty, no NaN): what the fold
/// `if v[i] > v[best] { i } else { best }` finds, in two passes that vectorise instead of one
/// chain of dependent comparisons: the largest value kept lane by lane over blocks of 16, then
/// the first block holding it (SmolLM2's 49152 logits: 4.5 µs instead of 23.6 on the 2-vCPU AMD
/// EPYC of docs/perf.md).
pub fn first_max_index(v: &[f32]) -> usize {
    const LANES: usize = 16;
    let blocks = v.chunks_exact(LANES);
    let tail = blocks.remainder();
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for block in blocks {
        for (m, &x) in lanes.iter_mut().zip(block) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max = lanes
        .iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    let block = v
        .chunks(LANES)
        .position(|b| b.iter().fold(false, |found, &x| found | (x == max)))
        .unwrap_or(0);
    block * LANES + v[block * LANES..].iter().position(|&x| x == max).unwrap_or(0)
}

/// A key that sorts logits from the largest to the smallest in IEEE total order (+0 before −0):
/// kernels/sample.cu's `sample_key`.
fn key(v: f32) -> u32 {
    let bits = v.to_bits();
    !(if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    })
}

/// The logit of a key (`key`'s inverse).
fn key_value(k: u32) -> f32 {
    let ord = !k;
    f32::from_bits(if ord & 0x8000_0000 != 0 {
        ord & 0x7fff_ffff
    } else {
        !ord
    })
}

/// The power of two S of the weights for a vocabulary of `vocab` (≥ 2) tokens: the weights of a
/// row then sum to less than 2^62.
fn weight_scale(vocab: usize) -> i32 {
    let bits = usize::BITS - vocab.leading_zeros();
    (62 - bits as i32).min(52)
}

/// round(exp((l − max)/t)·2^scale) for l ≤ max (max finite, t > 0), 0 below exp(−44): the
/// operations of kernels/sample.cu's `sample_weight`, one for one (Cody-Waite reduction
/// d = n·ln2 + r, the degree-12 Taylor polynomial of exp(r), both parts of ln2 as bit patterns).
fn weight(l: f32, max: f32, t: f64, scale: i32) -> u64 {
    let d = (l as f64 - max as f64) / t;
    if d.is_nan() || d < -44.0 {
        return 0;
    }
    let n = (d * f64::from_bits(0x3ff7_1547_652b_82fe)).round_ties_even();
    let r = (-n).mul_add(f64::from_bits(0x3fe6_2e42_fee0_0000), d);
    let r = (-n).mul_add(f64::from_bits(0x3dea_39ef_3579_3c76), r);
    let mut p: f64 = 1.0 / 479001600.0;
    for c in [
        1.0 / 39916800.0,
        1.0 / 3628800.0,
        1.0 / 362880.0,
        1.0 / 40320.0,
        1.0 / 5040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p.mul_add(r, c);
    }
    let two_pow = f64::from_bits(((1023 + n as i64 + scale as i64) as u64) << 52);
    (p * two_pow).round_ties_even() as u64
}

/// The id drawn from `logits` (one row of the vocabulary) with `params` and `u` in [0, 1) (unused
/// when greedy).
///
/// Greedy (temperature 0, one token, or a +∞ logit): the first largest logit. Otherwise top-k keeps
/// the logits ≥ the k-th largest (ties kept; 0 or ≥ the vocabulary: all), top-p the shortest prefix
/// of those sorted by (logit descending, id ascending) whose weight reaches ⌈p·total⌉, and the draw
/// is by `u` over the kept weight in id order. Errors, never panics: invalid `params`, no logits,
/// a NaN logit, all logits −∞.
pub fn sample_row(logits: &[f32], params: &SampleParams, u: f64) -> Result<u32> {
    sample_row_with(logits, params, u, &mut SampleScratch::default())
}

/// [`sample_row`] with its buffers in `scratch` (the same id).
pub fn sample_row_with(logits: &[f32], params: &SampleParams, u: f64, scratch: &mut SampleScratch) -> Result<u32> {
    params.validate()?;
    let bad = |msg: String| Err(Error::invalid("sample", msg));
    if logits.is_empty() {
        return bad("no logits to sample from (a vocabulary of 0 tokens)".into());
    }
    if let Some(i) = logits.iter().position(|v| v.is_nan()) {
        let nans = logits.iter().filter(|v| v.is_nan()).count();
        return bad(format!(
            "{nans} of the {} logits are NaN (the first for token {i}): the model's weights or activations \
             are not finite",
            logits.len()
        ));
    }
    // the first of the largest logits (no NaN is left, so the order is total)
    let argmax = first_max_index(logits);
    let max = logits[argmax];
    if max == f32::NEG_INFINITY {
        return bad(format!(
            "all {} logits are -inf: no token has any probability",
            logits.len()
        ));
    }
    if params.temperature == 0.0 || logits.len() == 1 || max == f32::INFINITY {
        return Ok(argmax as u32);
    }
    let SampleScratch { keys, kept, order } = scratch;
    let scale = weight_scale(logits.len());
    let w = |v: f32| weight(v, max, params.temperature, scale);
    let kth = if params.top_k > 0 && params.top_k < logits.len() {
        keys.clear();
        keys.extend(logits.iter().map(|&v| key(v)));
        key_value(*keys.select_nth_unstable(params.top_k - 1).1)
    } else {
        f32::NEG_INFINITY
    };
    // kept[i]: whether token i survives the filters
    kept.clear();
    kept.extend(logits.iter().map(|&v| v >= kth));
    let total: u64 = logits
        .iter()
        .zip(kept.iter())
        .filter(|(_, &k)| k)
        .map(|(&v, _)| w(v))
        .sum();
    let mut kept_total = total;
    if params.top_p < 1.0 {
        let target = ((params.top_p * total as f64).ceil() as u64).clamp(1, total);
        order.clear();
        order.reserve(logits.len()); // once for the vocabulary: the filter's length is not known up front
        order.extend((0..logits.len() as u32).filter(|&i| kept[i as usize]));
        order.sort_unstable_by_key(|&i| (key(logits[i as usize]), i));
        let mut cum = 0;
        let mut end = order.len();
        for (j, &i) in order.iter().enumerate() {
            cum += w(logits[i as usize]);
            if cum >= target {
                end = j + 1;
                break;
            }
        }
        order[end..].iter().for_each(|&i| kept[i as usize] = false);
        kept_total = cum;
    }
    let r = ((u * kept_total as f64) as u64).min(kept_total - 1);
    let mut cum = 0;
    for (i, (&v, &k)) in logits.iter().zip(kept.iter()).enumerate() {
        if k {
            cum += w(v);
            if cum > r {
                return Ok(i as u32);
            }
        }
    }
    // unreachable: the largest logit's weight 2^S is in kept_total and r < kept_total
    Ok(argmax as u32)
}

/// One id per row of `s` (f32, contiguous rows of `vocab`), row i drawn with `uniforms[i]`.
pub fn sample(s: &CpuStorage, vocab: usize, params: &SampleParams, uniforms: &[f64]) -> Result<Vec<u32>> {
    let x = typed::<f32>(s);
    x.chunks(vocab)
        .zip(uniforms)
        .map(|(row, &u)| sample_row(row, params, u))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_largest_is_found_as_one_comparison_after_another_finds_it() {
        let mut rng = crate::Rng::new(3);
        let specials = [0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, 1.5, -1.5];
        for len in [1, 2, 15, 16, 17, 31, 33, 100, 1000, 49152] {
            for case in 0..20 {
                // few distinct values, so that ties (and ±0) are common, and some infinities
                let v: Vec<f32> = (0..len)
                    .map(|_| match (rng.uniform() * 8.0) as usize {
                        k @ 0..=5 if case % 2 == 0 => specials[k],
                        _ => (rng.normal() * 2.0).round() as f32,
                    })
                    .collect();
                let want = (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best });
                assert_eq!(first_max_index(&v), want, "{len} values, case {case}");
            }
        }
        assert_eq!(first_max_index(&[f32::NEG_INFINITY; 40]), 0);
    }

    #[test]
    fn keys_sort_logits_from_largest_to_smallest_and_invert() {
        let values = [
            f32::INFINITY,
            f32::MAX,
            1.5,
            f32::MIN_POSITIVE,
            1e-45,
            0.0,
            -0.0,
            -1e-45,
            -2.0,
            f32::MIN,
            f32::NEG_INFINITY,
        ];
        for w in values.windows(2) {
            assert!(key(w[0]) < key(w[1]), "{} before {}", w[0], w[1]);
        }
        for v in values {
            assert_eq!(key_value(key(v)).to_bits(), v.to_bits());
        }
    }

    #[test]
    fn weights_are_exp_scaled_to_integers() {
        // against f64's exp: the polynomial is within a few ulps, so the integer within 1
        let scale = weight_scale(50257);
        assert_eq!(scale, 46);
        assert_eq!(weight(3.0, 3.0, 0.7, scale), 1 << 46);
        for i in 0..4000 {
            let l = -(i as f32) * 0.011;
            for t in [0.3, 1.0, 2.5] {
                let want = ((l as f64) / t).exp() * 2f64.powi(scale);
                let got = weight(l, 0.0, t, scale) as f64;
                assert!((got - want).abs() <= 1.0 + want * 1e-15, "l {l} t {t}: {got} vs {want}");
            }
        }
        assert_eq!(weight(f32::NEG_INFINITY, 0.0, 1.0, scale), 0);
        assert_eq!(weight(-45.0, 0.0, 1.0, 52), 0);
    }

    /// The probability of each token under `params`, naively in f64: softmax of l/T over the
    /// tokens top-k keeps, then top-p's prefix of them sorted by probability (ties by id),
    /// renormalised.
    fn probabilities(logits: &[f32], params: &SampleParams) -> Vec<f64> {
        let n = logits.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if params.top_k > 0 && params.top_k < n {
            let kth = logits[order[params.top_k - 1]];
            order.retain(|&i| logits[i] >= kth);
        }
        let max = logits[order[0]] as f64;
        let e: Vec<f64> = order
            .iter()
            .map(|&i| ((logits[i] as f64 - max) / params.temperature).exp())
            .collect();
        let total: f64 = e.iter().sum();
        let mut keep = order.len();
        if params.top_p < 1.0 {
            let mut cum = 0.0;
            keep = e
                .iter()
                .position(|&q| {
                    cum += q / total;
                    cum >= params.top_p
                })
                .map_or(order.len(), |j| j + 1);
        }
        let total: f64 = e[..keep].iter().sum();
        let mut p = vec![0.0; n];
        for (j, &i) in order[..keep].iter().enumerate() {
            p[i] = e[j] / total;
        }
        p
    }

    #[test]
    fn draws_over_a_fine_grid_of_u_follow_the_f64_probabilities() {
        // the share of u in [0, 1) that picks each token is its probability (to 1/grid)
        let logits = [0.3f32, 2.0, -1.0, 2.0, 1.7, f32::NEG_INFINITY, 0.9, 1.7];
        let grid = 200_000;
        for (temperature, top_k, top_p) in [
            (1.0, 0, 1.0),
            (0.6, 3, 1.0),
            (1.3, 0, 0.7),
            (0.8, 5, 0.9),
            (2.0, 1, 1.0),
            (1.0, 0, 1e-6),
        ] {
            let params = SampleParams {
                temperature,
                top_k,
                top_p,
            };
            let mut share = vec![0.0; logits.len()];
            for g in 0..grid {
                let u = (g as f64 + 0.5) / grid as f64;
                share[sample_row(&logits, &params, u).unwrap() as usize] += 1.0 / grid as f64;
            }
            let want = probabilities(&logits, &params);
            for (i, (s, p)) in share.iter().zip(&want).enumerate() {
                assert!((s - p).abs() < 2e-5, "{params:?} token {i}: share {s}, probability {p}");
            }
        }
    }
}
