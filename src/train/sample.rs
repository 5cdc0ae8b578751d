//! Generation: sample one token after another with the KV cache, handing each to a callback
//! as soon as it is drawn (so the command line can stream text).
//!
//! The model sees at most `block_size` positions. While the context fits, each new token
//! costs one position's work (the cache holds the rest). Once it is longer, the context is
//! cropped to its last `block_size` tokens and recomputed, exactly as nanoGPT's
//! `generate` crops `idx[:, -block_size:]`, so the output equals that of a model without a
//! cache (up to floating-point rounding).

use crate::model::{Gpt, KvCache};
use crate::{Error, Result, Rng, Tensor};

/// How to pick each next token.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleOptions {
    pub max_new_tokens: usize,
    /// Divides the logits; 0 picks the most likely token (greedy decoding).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (None or 0: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probabilities sum to at least `p`
    /// (nucleus sampling; None or 1: all; applied after top-k and the temperature).
    pub top_p: Option<f64>,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            max_new_tokens: 200,
            temperature: 0.8,
            top_k: Some(200),
            top_p: None,
        }
    }
}

impl SampleOptions {
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Invalid { op: "generate", msg });
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!(
                "--temperature must be a finite number ≥ 0 (0: greedy), got {}",
                self.temperature
            ));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad(format!("--top-p must be in (0, 1], got {p}"));
            }
        }
        Ok(())
    }
}

/// Picks the next token from `logits` (one row of the vocabulary) with `opts`, drawing at
/// most one uniform number from `rng` (none in greedy mode).
pub fn sample_logits(logits: &[f32], opts: &SampleOptions, rng: &mut Rng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold(
                (0usize, f32::NEG_INFINITY),
                |best, (i, &v)| if v > best.1 { (i, v) } else { best },
            )
            .0 as u32
    };
    if opts.temperature == 0.0 || logits.len() == 1 {
        return argmax();
    }
    // Candidates sorted by logit, highest first (ties by id, so the order is deterministic).
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|&a, &b| {
        logits[b as usize]
            .partial_cmp(&logits[a as usize])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    if let Some(k) = opts.top_k.filter(|&k| k > 0 && k < order.len()) {
        // As nanoGPT: everything below the k-th largest logit is dropped (ties kept).
        let kth = logits[order[k - 1] as usize];
        order.retain(|&i| logits[i as usize] >= kth);
    }
    let max = logits[order[0] as usize] as f64;
    if !max.is_finite() {
        return argmax();
    }
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i as usize] as f64 - max) / opts.temperature).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(p) = opts.top_p.filter(|&p| p < 1.0) {
        let mut cum = 0.0;
        let keep = probs
            .iter()
            .position(|&q| {
                cum += q;
                cum >= p
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        order.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
    }
    let u = rng.uniform();
    let mut cum = 0.0;
    for (i, &q) in probs.iter().enumerate() {
        cum += q;
        if u < cum {
            return order[i];
        }
    }
    *order.last().expect("at least one candidate")
}

/// The logits of the last position of `logits` (1, T, V) as a host vector.
fn last_row(logits: &Tensor) -> Result<Vec<f32>> {
    let t = logits.shape()[1];
    logits.narrow(1, t - 1, 1)?.to_vec::<f32>()
}

/// Generates up to `opts.max_new_tokens` tokens after `prompt` (at least one id), calling
/// `on_token` with each as soon as it is drawn; returns the new tokens. `on_token` may stop
/// the generation early by returning `Ok(false)`.
pub fn generate(
    model: &Gpt,
    prompt: &[u32],
    opts: &SampleOptions,
    rng: &mut Rng,
    mut on_token: impl FnMut(u32) -> Result<bool>,
) -> Result<Vec<u32>> {
    opts.validate()?;
    if prompt.is_empty() {
        return Err(Error::Invalid {
            op: "generate",
            msg: "the prompt has no tokens; give at least one".into(),
        });
    }
    let _no_grad = crate::no_grad();
    // the weights in the compute dtype once (bf16: one cast here instead of one per token)
    let model = &model.to_dtype(model.dtype())?;
    let cfg = model.config();
    let (block, dev) = (cfg.block_size, *model.device());
    if let Some(&bad) = prompt.iter().find(|&&id| id as usize >= cfg.vocab_size) {
        return Err(Error::Invalid {
            op: "generate",
            msg: format!(
                "prompt token {bad} is outside the model's vocabulary of {}",
                cfg.vocab_size
            ),
        });
    }
    let run = |ids: &[u32], cache: &mut KvCache| -> Result<Vec<f32>> {
        let x = Tensor::from_slice(ids, &[1, ids.len()], &dev)?;
        last_row(&model.forward_cached(&x, cache)?)
    };
    let mut context = prompt.to_vec();
    let mut cache = KvCache::new(cfg);
    let mut logits = run(&context[context.len().saturating_sub(block)..], &mut cache)?;
    let mut out = Vec::with_capacity(opts.max_new_tokens.min(block)); // grows past a context if asked
    for i in 0..opts.max_new_tokens {
        let id = sample_logits(&logits, opts, rng);
        context.push(id);
        out.push(id);
        if !on_token(id)? || i + 1 == opts.max_new_tokens {
            break;
        }
        logits = if cache.len() < block {
            run(&[id], &mut cache)?
        } else {
            cache.clear();
            run(&context[context.len() - block..], &mut cache)?
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_largest_logit() {
        let opts = SampleOptions {
            temperature: 0.0,
            ..Default::default()
        };
        assert_eq!(sample_logits(&[0.1, 3.0, -1.0, 2.9], &opts, &mut Rng::new(0)), 1);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = [0.5f32, 0.1, 2.0, 1.9];
        let mut rng = Rng::new(3);
        for _ in 0..50 {
            let k1 = SampleOptions {
                temperature: 1.0,
                top_k: Some(1),
                top_p: None,
                max_new_tokens: 1,
            };
            assert_eq!(sample_logits(&logits, &k1, &mut rng), 2);
            let p = SampleOptions {
                top_k: None,
                top_p: Some(1e-6),
                ..k1
            };
            assert_eq!(sample_logits(&logits, &p, &mut rng), 2);
        }
    }

    #[test]
    fn top_k_two_never_leaves_the_two_best() {
        let logits = [0.5f32, 0.1, 2.0, 1.9];
        let opts = SampleOptions {
            temperature: 5.0,
            top_k: Some(2),
            top_p: None,
            max_new_tokens: 1,
        };
        let mut rng = Rng::new(9);
        let mut seen = [0; 4];
        for _ in 0..400 {
            seen[sample_logits(&logits, &opts, &mut rng) as usize] += 1;
        }
        assert_eq!(seen[0] + seen[1], 0);
        assert!(seen[2] > 100 && seen[3] > 100, "{seen:?}");
    }
}
