//! Generation: sample one token after another with the KV cache, handing each to a callback
//! as soon as it is drawn (so the command line can stream text). One loop, [`Generator`], for
//! every [`CausalLm`] (GPT and Llama).
//!
//! The model sees at most `context_len` positions (GPT's `block_size`). While the context fits,
//! each new token costs one position's work (the cache holds the rest). Once it is longer, the
//! context is either cropped to its last `context_len` tokens and recomputed, exactly as
//! nanoGPT's `generate` crops `idx[:, -block_size:]`, so the output equals that of a model
//! without a cache (up to floating-point rounding), or the generation ends there (a chat).

use crate::backend::{SampleParams, SampleScratch};
use crate::model::{CausalLm, KvCache};
use crate::{Error, Result, Rng, Tensor};

/// How to pick each next token.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleOptions {
    /// The most tokens to generate.
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
    /// An `Error::Invalid` when the temperature is negative or not finite, or top_p is outside (0, 1].
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

impl SampleOptions {
    /// The sampler's parameters (top-k and top-p off when `None`).
    pub fn params(&self) -> SampleParams {
        SampleParams {
            temperature: self.temperature,
            top_k: self.top_k.unwrap_or(0),
            top_p: self.top_p.unwrap_or(1.0),
        }
    }

    /// The uniform number a draw takes from `rng`: one whenever the temperature is above 0 (even
    /// when the logits then leave no choice), none when greedy, so that the sequence of draws, and
    /// the tokens, are the same on every device.
    fn uniform(&self, rng: &mut Rng) -> f64 {
        if self.temperature > 0.0 {
            rng.uniform()
        } else {
            0.0
        }
    }
}

/// Picks the next token from `logits` (one row of the vocabulary) with `opts`, drawing one
/// uniform number from `rng` unless greedy (temperature 0). The rules are [`SampleParams`]'s;
/// the token equals the one [`Tensor::sample`] draws on any device from the same logits and
/// generator.
///
/// Never panics: no logits, a NaN logit (weights or activations that are not finite), logits
/// that are all −∞ (no token has any probability) and options that [`SampleOptions::validate`]
/// refuses are errors. A +∞ logit is the certain pick.
pub fn sample_logits(logits: &[f32], opts: &SampleOptions, rng: &mut Rng) -> Result<u32> {
    opts.validate()?;
    crate::backend::cpu::sample::sample_row(logits, &opts.params(), opts.uniform(rng))
}

/// Picks the next token from `logits` (`[1, vocab]` or `[vocab]`, on any device) as
/// [`sample_logits`] does, on the logits' device: from a GPU only the id comes back.
pub fn sample_tensor(logits: &Tensor, opts: &SampleOptions, rng: &mut Rng) -> Result<u32> {
    sample_tensor_with(logits, opts, rng, &mut SampleScratch::default())
}

/// [`sample_tensor`] with the sampler's buffers in `scratch`, kept by the caller from one token to
/// the next: the same id, and on the CPU no allocation once they have grown to the vocabulary
/// ([`Tensor::sample_with`]).
pub fn sample_tensor_with(
    logits: &Tensor,
    opts: &SampleOptions,
    rng: &mut Rng,
    scratch: &mut SampleScratch,
) -> Result<u32> {
    opts.validate()?;
    let u = opts.uniform(rng);
    logits.sample_with(&opts.params(), u, scratch)
}

/// What a generation does when the sequence reaches the model's context length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextFull {
    /// Keep the last `context_len` tokens and recompute them (nanoGPT's crop); a longer prompt
    /// is cropped the same way. The generation goes on.
    Crop,
    /// End the answer there ([`Finish::ContextFull`]); a prompt longer than the context is an
    /// error (a chat, where dropping the start of the conversation would change its meaning).
    Stop,
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// This stop token (EOS, `<|im_end|>`) was drawn; it is neither handed on nor returned.
    Stop(u32),
    /// The callback asked to stop.
    Callback,
    /// The sequence filled the model's context ([`ContextFull::Stop`]).
    ContextFull,
}

/// The outcome of [`Generator::generate`].
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// The new tokens, in order (without a stop token).
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub finish: Finish,
    /// Prompt tokens whose keys and values came from the cache of the previous call.
    pub reused: usize,
    /// Prompt tokens the model read in this call (the rest of the prompt).
    pub prefilled: usize,
}

/// Generation for any [`CausalLm`] (GPT, Llama): samples one token after another with a KV cache,
/// handing each to a callback as soon as it is drawn. The cache is kept between calls: a call
/// whose prompt starts with the tokens of the previous call (a chat's next turn: the earlier
/// turns, the answer, then the new message) reads only the tokens after the shared prefix.
pub struct Generator<M> {
    /// The model with its weights in its compute dtype.
    model: M,
    cache: KvCache,
    /// The ids whose keys and values `cache` holds, position 0 first.
    cached: Vec<u32>,
    stop: Vec<u32>,
    context_full: ContextFull,
    /// The sampler's buffers, kept from one token to the next.
    scratch: SampleScratch,
}

impl<M: CausalLm> Generator<M> {
    /// A generator for `model` (its weights cast to its compute dtype once), with no stop
    /// tokens and [`ContextFull::Crop`]. Like training, it keeps freed memory in the process
    /// ([`crate::backend::cpu::retain_freed_memory`]): every token frees and allocates the same
    /// buffers again (the logits alone are 196 KB for a 49152-token vocabulary), which glibc
    /// otherwise hands back to the system and the next token faults in again.
    pub fn new(model: &M) -> Result<Generator<M>> {
        crate::backend::cpu::retain_freed_memory();
        let _no_grad = crate::no_grad();
        let model = model.for_inference()?;
        Ok(Generator {
            cache: model.new_cache(),
            model,
            cached: Vec::new(),
            stop: Vec::new(),
            context_full: ContextFull::Crop,
            scratch: SampleScratch::default(),
        })
    }

    /// Ends each generation at the first of these tokens.
    pub fn stop_at(mut self, stop: &[u32]) -> Self {
        self.stop = stop.to_vec();
        self
    }

    /// What happens when the sequence reaches the model's context length (default
    /// [`ContextFull::Crop`]).
    pub fn when_context_full(mut self, policy: ContextFull) -> Self {
        self.context_full = policy;
        self
    }

    /// The model's context length in positions.
    pub fn context_len(&self) -> usize {
        self.model.context_len()
    }

    /// Continues `prompt` (at least one id) with up to `opts.max_new_tokens` tokens, calling
    /// `on_token` with each as soon as it is drawn (`Ok(false)` stops the generation early).
    ///
    /// On the CPU a generated token allocates nothing once the first few have warmed the pools up,
    /// when this runs on a thread of rayon's pool (inside `rayon::scope`); from another thread,
    /// rayon's shared queue allocates once per 63 parallel regions (docs/llama.md, "The decode
    /// step's allocation budget").
    pub fn generate(
        &mut self,
        prompt: &[u32],
        opts: &SampleOptions,
        rng: &mut Rng,
        mut on_token: impl FnMut(u32) -> Result<bool>,
    ) -> Result<Generated> {
        opts.validate()?;
        if prompt.is_empty() {
            return Err(Error::Invalid {
                op: "generate",
                msg: "the prompt has no tokens; give at least one".into(),
            });
        }
        let vocab = self.model.vocab_size();
        if let Some(&bad) = prompt.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Invalid {
                op: "generate",
                msg: format!("prompt token {bad} is outside the model's vocabulary of {vocab}"),
            });
        }
        let _no_grad = crate::no_grad();
        let n_ctx = self.model.context_len();
        if prompt.len() > n_ctx && self.context_full == ContextFull::Stop {
            return Err(Error::Invalid {
                op: "generate",
                msg: format!(
                    "the prompt is {} tokens, more than the model's context of {n_ctx} positions",
                    prompt.len()
                ),
            });
        }
        // room for the new tokens up front, so that a generated token allocates nothing (the
        // cropped case re-reads the context and allocates anyway)
        let room = opts.max_new_tokens.min(n_ctx);
        let kept = &prompt[prompt.len().saturating_sub(n_ctx)..];
        let mut context = Vec::with_capacity(kept.len() + room);
        context.extend_from_slice(kept);
        // the cached prefix this prompt shares; at least the last prompt token is read again,
        // since its logits pick the first new token
        let shared = self.cached.iter().zip(&context).take_while(|(a, b)| a == b).count();
        let reused = shared.min(context.len() - 1);
        if reused < self.cached.len() {
            self.cache.truncate(reused)?;
            self.cached.truncate(reused);
        }
        // cached holds the first `reused` ids now
        self.cached.reserve(context.len() - reused + room);
        let prefilled = context.len() - reused;
        let mut logits = self.feed(&context[reused..])?;
        let mut tokens = Vec::with_capacity(room);
        let mut finish = Finish::MaxTokens;
        for i in 0..opts.max_new_tokens {
            let id = sample_tensor_with(&logits, opts, rng, &mut self.scratch)?;
            if self.stop.contains(&id) {
                finish = Finish::Stop(id);
                break;
            }
            context.push(id);
            tokens.push(id);
            if !on_token(id)? {
                finish = Finish::Callback;
                break;
            }
            if i + 1 == opts.max_new_tokens {
                break;
            }
            logits = if self.cached.len() < n_ctx {
                self.feed(&[id])?
            } else if self.context_full == ContextFull::Crop {
                self.cache.clear();
                self.cached.clear();
                self.feed(&context[context.len() - n_ctx..])?
            } else {
                finish = Finish::ContextFull;
                break;
            };
        }
        Ok(Generated {
            tokens,
            finish,
            reused,
            prefilled,
        })
    }

    /// Runs `ids` after the cached positions; the logits of the last (`[1, vocab]`, on the
    /// model's device: the sampler runs there).
    fn feed(&mut self, ids: &[u32]) -> Result<Tensor> {
        let x = Tensor::from_slice(ids, &[1, ids.len()], self.model.device())?;
        let logits = self.model.forward_cached_last(&x, &mut self.cache)?;
        self.cached.extend_from_slice(ids);
        Ok(logits)
    }
}

/// Generates up to `opts.max_new_tokens` tokens after `prompt` (at least one id), calling
/// `on_token` with each as soon as it is drawn; returns the new tokens. `on_token` may stop
/// the generation early by returning `Ok(false)`. A context longer than the model's is
/// cropped ([`ContextFull::Crop`]); no token stops the generation.
pub fn generate<M: CausalLm>(
    model: &M,
    prompt: &[u32],
    opts: &SampleOptions,
    rng: &mut Rng,
    on_token: impl FnMut(u32) -> Result<bool>,
) -> Result<Vec<u32>> {
    Ok(Generator::new(model)?.generate(prompt, opts, rng, on_token)?.tokens)
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
        assert_eq!(
            sample_logits(&[0.1, 3.0, -1.0, 2.9], &opts, &mut Rng::new(0)).unwrap(),
            1
        );
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
            assert_eq!(sample_logits(&logits, &k1, &mut rng).unwrap(), 2);
            let p = SampleOptions {
                top_k: None,
                top_p: Some(1e-6),
                ..k1
            };
            assert_eq!(sample_logits(&logits, &p, &mut rng).unwrap(), 2);
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
            seen[sample_logits(&logits, &opts, &mut rng).unwrap() as usize] += 1;
        }
        assert_eq!(seen[0] + seen[1], 0);
        assert!(seen[2] > 100 && seen[3] > 100, "{seen:?}");
    }

    fn sampling(temperature: f64, top_k: Option<usize>, top_p: Option<f64>) -> SampleOptions {
        SampleOptions {
            max_new_tokens: 1,
            temperature,
            top_k,
            top_p,
        }
    }

    #[test]
    fn bad_logits_and_options_are_errors_not_panics() {
        let mut rng = Rng::new(0);
        let opts = sampling(0.8, Some(2), Some(0.9));
        let err = |logits: &[f32], opts: &SampleOptions| {
            sample_logits(logits, opts, &mut Rng::new(1)).unwrap_err().to_string()
        };
        assert!(err(&[], &opts).contains("no logits"), "{}", err(&[], &opts));
        let e = err(&[f32::NAN; 5], &opts);
        assert!(e.contains("5 of the 5 logits are NaN (the first for token 0)"), "{e}");
        let e = err(&[0.5, f32::NAN, 1.0], &sampling(0.0, None, None));
        assert!(e.contains("1 of the 3 logits are NaN (the first for token 1)"), "{e}");
        let e = err(&[f32::NEG_INFINITY; 3], &opts);
        assert!(e.contains("all 3 logits are -inf"), "{e}");
        let e = err(&[1.0, 2.0], &sampling(-0.5, None, None));
        assert!(e.contains("--temperature must be a finite number ≥ 0"), "{e}");
        let e = err(&[1.0, 2.0], &sampling(1.0, None, Some(0.0)));
        assert!(e.contains("--top-p must be in (0, 1], got 0"), "{e}");
        // a +inf logit is certain; -inf logits are never drawn
        for _ in 0..50 {
            let l = [0.0, f32::INFINITY, 3.0];
            assert_eq!(sample_logits(&l, &opts, &mut rng).unwrap(), 1);
            let l = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.1];
            let id = sample_logits(&l, &sampling(5.0, None, None), &mut rng).unwrap();
            assert!(id == 1 || id == 3, "{id}");
        }
    }

    #[test]
    fn any_finite_or_infinite_logits_give_a_token_in_range() {
        // every mix of the special values under greedy, top-k and top-p options: a token whose
        // logit is above -inf, or an error when every logit is -inf
        let values = [0.0f32, -1.0, 2.5, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN];
        let mut rng = Rng::new(5);
        for a in values {
            for b in values {
                for c in values {
                    let logits = [a, b, c];
                    for opts in [
                        sampling(0.0, None, None),
                        sampling(1e-30, Some(1), None),
                        sampling(1e30, Some(2), Some(1e-9)),
                        sampling(0.7, None, Some(0.5)),
                    ] {
                        match sample_logits(&logits, &opts, &mut rng) {
                            Ok(id) => assert!(logits[id as usize] > f32::NEG_INFINITY, "{logits:?} -> {id}"),
                            Err(e) => assert!(logits.iter().all(|&v| v == f32::NEG_INFINITY), "{logits:?}: {e}"),
                        }
                    }
                }
            }
        }
    }
}
