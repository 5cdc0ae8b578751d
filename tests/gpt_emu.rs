//! The GPT end to end on Device::Emu (the CUDA kernels on the CPU executor) against the CPU:
//! a tiny config trained a few AdamW steps with clipping gives the same losses within f32
//! tolerance, and greedy generation gives the same tokens. No GPU is needed; with one, the same
//! would run on Device::Cuda(0) (not part of this test).

use kiln::model::{Gpt, GptConfig};
use kiln::optim::{clip_grad_norm, AdamW};
use kiln::train::{generate, SampleOptions};
use kiln::{Device, Rng, Tensor};

fn tiny(dev: &Device) -> Gpt {
    let cfg = GptConfig {
        vocab_size: 43,
        block_size: 11,
        n_layer: 2,
        n_head: 2,
        n_embd: 24,
        dropout: 0.0,
        bias: true,
    };
    Gpt::new(cfg, &mut Rng::new(7), dev).unwrap()
}

/// Losses of 5 AdamW steps on one fixed batch (2 x 11 tokens), and 12 greedy tokens after.
fn train_and_generate(dev: &Device) -> (Vec<f32>, Vec<u32>) {
    let gpt = tiny(dev);
    let ids: Vec<u32> = (0..22u32).map(|i| (i * 7 + 3) % 43).collect();
    let next: Vec<u32> = (0..22u32).map(|i| (i * 7 + 10) % 43).collect();
    let x = Tensor::from_vec(ids, &[2, 11], dev).unwrap();
    let y = Tensor::from_vec(next, &[2, 11], dev).unwrap();
    let params = gpt.params();
    let mut opt = AdamW::new(params.clone(), 3e-3, (0.9, 0.95), 1e-8, 0.1).unwrap();
    let mut losses = vec![];
    for _ in 0..5 {
        let loss = gpt.loss(&x, &y).unwrap();
        assert_eq!(loss.device(), dev);
        losses.push(loss.to_vec::<f32>().unwrap()[0]);
        let mut grads = loss.backward().unwrap();
        clip_grad_norm(&params, &mut grads, 1.0).unwrap();
        opt.step(&grads).unwrap();
    }
    let greedy = SampleOptions {
        max_new_tokens: 12,
        temperature: 0.0,
        top_k: None,
        top_p: None,
    };
    let tokens = generate(&gpt, &[3, 10, 17], &greedy, &mut Rng::new(0), |_| Ok(true)).unwrap();
    (losses, tokens)
}

#[test]
fn tiny_gpt_trains_and_generates_on_emu_as_on_the_cpu() {
    let (want_losses, want_tokens) = train_and_generate(&Device::Cpu);
    let (got_losses, got_tokens) = train_and_generate(&Device::Emu);
    eprintln!("cpu losses {want_losses:?}\nemu losses {got_losses:?}");
    assert!(
        want_losses.last() < want_losses.first(),
        "training lowers the loss: {want_losses:?}"
    );
    for (g, w) in got_losses.iter().zip(&want_losses) {
        // f32 tolerance after five steps: the kernels sum in other orders than the CPU
        assert!((g - w).abs() <= 1e-4 * w.abs(), "Emu loss {g}, the CPU's {w}");
    }
    assert_eq!(got_tokens, want_tokens, "greedy tokens on Emu and on the CPU");
}
