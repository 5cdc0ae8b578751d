//! Generation: the KV-cache path equals a plain forward over the cropped context, and the
//! same seed gives the same text.

use kiln::model::{Gpt, GptConfig};
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
