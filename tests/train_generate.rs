//! Generation: the KV-cache path equals a plain forward over the cropped context, the same
//! seed gives the same text, and the sampler draws from the distribution that its options
//! (temperature, top-k, top-p) describe.

use kiln::model::{Gpt, GptConfig};
use kiln::train::sample::sample_logits;
use kiln::train::{generate, SampleOptions};
use kiln::{Device, Rng, Tensor};

fn model(block_size: usize) -> Gpt {
    let cfg = GptConfig {
        vocab_size: 23,
        block_size,
        n_layer: 2,
        n_head: 2,
        n_embd: 16,
        dropout: 0.0,
        bias: true,
    };
    Gpt::new(cfg, &mut Rng::new(11), &Device::Cpu).unwrap()
}

/// nanoGPT's generate without a cache: crop to the last block_size tokens, full forward,
/// argmax of the last position.
fn greedy_without_cache(m: &Gpt, prompt: &[u32], n: usize) -> Vec<u32> {
    let _g = kiln::no_grad();
    let block = m.config().block_size;
    let mut ctx = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let window = &ctx[ctx.len().saturating_sub(block)..];
        let x = Tensor::from_slice(window, &[1, window.len()], &Device::Cpu).unwrap();
        let logits = m.forward(&x).unwrap();
        let v = m.config().vocab_size;
        let all = logits.to_vec::<f32>().unwrap();
        let last = &all[all.len() - v..];
        let id = (0..v).max_by(|&a, &b| last[a].partial_cmp(&last[b]).unwrap()).unwrap() as u32;
        ctx.push(id);
        out.push(id);
    }
    out
}

fn greedy(n: usize) -> SampleOptions {
    SampleOptions {
        max_new_tokens: n,
        temperature: 0.0,
        top_k: None,
        top_p: None,
    }
}

#[test]
fn cached_generation_equals_uncached_with_cropping() {
    let m = model(8);
    // a short prompt that grows past the block size, and a prompt longer than the block
    for prompt in [vec![1u32, 2, 3], (0..13).map(|i| i % 23).collect()] {
        let want = greedy_without_cache(&m, &prompt, 20);
        let got = generate(&m, &prompt, &greedy(20), &mut Rng::new(0), |_| Ok(true)).unwrap();
        assert_eq!(got, want, "prompt {prompt:?}");
    }
}

#[test]
fn the_same_seed_gives_the_same_tokens() {
    let m = model(16);
    let opts = SampleOptions {
        max_new_tokens: 40,
        temperature: 1.5,
        top_k: Some(10),
        top_p: Some(0.95),
    };
    let run = |seed| generate(&m, &[5], &opts, &mut Rng::new(seed), |_| Ok(true)).unwrap();
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn tokens_stream_to_the_callback_and_it_can_stop_early() {
    let m = model(16);
    let mut seen = Vec::new();
    let out = generate(&m, &[1, 2], &greedy(10), &mut Rng::new(0), |id| {
        seen.push(id);
        Ok(seen.len() < 4)
    })
    .unwrap();
    assert_eq!(out.len(), 4);
    assert_eq!(out, seen);
}

#[test]
fn bad_prompts_and_options_are_errors() {
    let m = model(16);
    let err = generate(&m, &[], &greedy(3), &mut Rng::new(0), |_| Ok(true)).unwrap_err();
    assert!(err.to_string().contains("no tokens"), "{err}");
    let err = generate(&m, &[99], &greedy(3), &mut Rng::new(0), |_| Ok(true)).unwrap_err();
    assert!(err.to_string().contains("99"), "{err}");
    let bad = SampleOptions {
        top_p: Some(1.5),
        ..greedy(3)
    };
    assert!(generate(&m, &[1], &bad, &mut Rng::new(0), |_| Ok(true)).is_err());
}

/// How often `sample_logits` picks each token in `n` draws from one seeded generator.
fn counts(logits: &[f32], opts: &SampleOptions, n: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut c = vec![0; logits.len()];
    for _ in 0..n {
        c[sample_logits(logits, opts, &mut rng).unwrap() as usize] += 1;
    }
    c
}

/// The distribution the options describe, computed here in f64 from the definitions: keep the
/// tokens whose logit is at least the k-th largest, take softmax(logit / T) over them, then
/// keep the most probable tokens until their probability reaches p, and renormalise.
fn expected(logits: &[f32], t: f64, k: Option<usize>, p: Option<f64>) -> Vec<f64> {
    let l: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
    let mut sorted = l.clone();
    sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
    let kth = k.map_or(f64::NEG_INFINITY, |k| sorted[k - 1]);
    let w: Vec<f64> = l.iter().map(|&x| if x >= kth { (x / t).exp() } else { 0.0 }).collect();
    let total: f64 = w.iter().sum();
    let mut q: Vec<f64> = w.iter().map(|x| x / total).collect();
    if let Some(p) = p {
        let mut by_prob: Vec<usize> = (0..q.len()).collect();
        by_prob.sort_by(|&a, &b| q[b].partial_cmp(&q[a]).unwrap());
        let (mut cum, mut kept) = (0.0, vec![false; q.len()]);
        for &i in &by_prob {
            if cum >= p {
                break;
            }
            cum += q[i];
            kept[i] = true;
        }
        q.iter_mut()
            .zip(&kept)
            .for_each(|(x, &keep)| *x = if keep { *x / cum } else { 0.0 });
    }
    q
}

/// Each count is Binomial(n, q): tokens with q = 0 must never be drawn, the others must lie
/// within 5 standard deviations, √(n·q·(1−q)), of n·q. A correct sampler fails this with a
/// probability under 6e-7 per token (the normal tail beyond 5σ, which approximates the
/// binomial's well when n·q is at least 10, so the cases are chosen to keep it so); the draws
/// are seeded, so the outcome is fixed anyway. A sampler off by 5% of a probability q ≈ 0.3 is
/// caught once 0.015·n > 5·√(0.21·n), i.e. n > 23,000: the tests use 40,000 draws.
fn assert_frequencies(what: &str, c: &[usize], q: &[f64], n: usize) {
    for (i, (&c, &q)) in c.iter().zip(q).enumerate() {
        if q == 0.0 {
            assert_eq!(
                c, 0,
                "{what}: token {i} is outside the candidates but was drawn {c} times"
            );
            continue;
        }
        let (mean, sd) = (n as f64 * q, (n as f64 * q * (1.0 - q)).sqrt());
        assert!(
            mean >= 10.0,
            "{what}: token {i} is expected {mean:.2} times, too few for the bound"
        );
        assert!(
            (c as f64 - mean).abs() <= 5.0 * sd,
            "{what}: token {i} drawn {c} times in {n}, expected {mean:.1} ± {sd:.1} (q = {q:.4}); all counts {c:?}"
        );
    }
}

fn sampling(temperature: f64, top_k: Option<usize>, top_p: Option<f64>) -> SampleOptions {
    SampleOptions {
        max_new_tokens: 1,
        temperature,
        top_k,
        top_p,
    }
}

const DRAWS: usize = 40_000;

#[test]
fn top_p_samples_the_renormalised_nucleus() {
    // Probabilities 0.15, 0.40, 0.04, 0.25, 0.10, 0.06 (shuffled, so the sampler must sort):
    // the most likely two sum to 0.65 ≥ 0.6 and the most likely one alone to 0.40 < 0.6, so
    // the nucleus for p = 0.6 is tokens 1 and 3, drawn with 0.40/0.65 and 0.25/0.65.
    let probs = [0.15f64, 0.40, 0.04, 0.25, 0.10, 0.06];
    let logits: Vec<f32> = probs.iter().map(|p| p.ln() as f32).collect();
    let by_hand = [0.0, 0.40 / 0.65, 0.0, 0.25 / 0.65, 0.0, 0.0];
    let q = expected(&logits, 1.0, None, Some(0.6));
    for (a, b) in q.iter().zip(by_hand) {
        assert!((a - b).abs() < 1e-6, "the test's own nucleus {q:?} is not {by_hand:?}");
    }
    let c = counts(&logits, &sampling(1.0, None, Some(0.6)), DRAWS, 21);
    assert_frequencies("top-p 0.6", &c, &q, DRAWS);
    // p = 0.7 needs a third token (0.65 < 0.7 ≤ 0.80): token 0 joins the nucleus
    let q = expected(&logits, 1.0, None, Some(0.7));
    assert!(q[0] > 0.18 && q[4] == 0.0, "{q:?}");
    let c = counts(&logits, &sampling(1.0, None, Some(0.7)), DRAWS, 22);
    assert_frequencies("top-p 0.7", &c, &q, DRAWS);
}

#[test]
fn temperature_samples_softmax_of_the_scaled_logits() {
    let logits = [1.0f32, 0.0, -0.5, 2.0, 0.3, -2.0];
    for (seed, t) in [0.5, 1.0, 2.0, 5.0].into_iter().enumerate() {
        let q = expected(&logits, t, None, None);
        let c = counts(&logits, &sampling(t, None, None), DRAWS, 100 + seed as u64);
        assert_frequencies(&format!("temperature {t}"), &c, &q, DRAWS);
    }
}

#[test]
fn top_k_samples_the_k_most_likely_renormalised() {
    let logits = [1.0f32, 0.0, -0.5, 2.0, 0.3, -2.0];
    for (seed, (k, t)) in [(1, 1.0), (2, 0.7), (3, 1.0), (4, 1.5), (6, 1.0)]
        .into_iter()
        .enumerate()
    {
        let q = expected(&logits, t, Some(k), None);
        assert_eq!(q.iter().filter(|&&x| x > 0.0).count(), k);
        let c = counts(&logits, &sampling(t, Some(k), None), DRAWS, 200 + seed as u64);
        assert_frequencies(&format!("top-k {k}, temperature {t}"), &c, &q, DRAWS);
    }
    // as nanoGPT: a tie with the k-th largest logit is kept, so k = 2 keeps three tokens here
    let tied = [1.0f32, 3.0, 1.0, -1.0];
    let c = counts(&tied, &sampling(1.0, Some(2), None), DRAWS, 300);
    assert_frequencies("top-k 2 with a tie", &c, &expected(&tied, 1.0, Some(2), None), DRAWS);
    // all three together: top-k first, then the temperature, then the nucleus of what is left
    let q = expected(&logits, 0.8, Some(4), Some(0.9));
    assert_eq!(q.iter().filter(|&&x| x > 0.0).count(), 3, "{q:?}");
    let c = counts(&logits, &sampling(0.8, Some(4), Some(0.9)), DRAWS, 301);
    assert_frequencies("top-k 4, temperature 0.8, top-p 0.9", &c, &q, DRAWS);
}
