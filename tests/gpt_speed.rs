//! Training-step throughput of the GPT on nanoGPT's CPU shakespeare_char shape (4 layers,
//! 4 heads, C = 128, context 64, batch 12, no bias, vocabulary 65). Not a correctness test:
//! run it by hand with
//!     cargo test --release --test gpt_speed -- --ignored --nocapture

use kiln::model::{Gpt, GptConfig};
use kiln::optim::{clip_grad_norm, AdamW};
use kiln::{Device, Rng, Tensor};
use std::time::{Duration, Instant};

#[test]
#[ignore = "a measurement; run by hand"]
fn training_step_throughput() {
    kiln::backend::cpu::retain_freed_memory(); // as the training loop does
    let cfg = GptConfig {
        vocab_size: 65,
        ..GptConfig::preset("tiny").unwrap()
    };
    let (b, t) = (12, cfg.block_size);
    let gpt = Gpt::new(cfg.clone(), &mut Rng::new(0), &Device::Cpu).unwrap();
    let params = gpt.params();
    let mut opt = AdamW::new(params.clone(), 1e-3, (0.9, 0.99), 1e-8, 0.1).unwrap();
    let mut rng = Rng::new(1);
    let mut batch = || {
        let v: Vec<u32> = (0..b * (t + 1)).map(|_| rng.below(65) as u32).collect();
        let seq = Tensor::from_vec(v, &[b, t + 1], &Device::Cpu).unwrap();
        let x = seq.narrow(1, 0, t).unwrap().contiguous().unwrap();
        let y = seq.narrow(1, 1, t).unwrap().contiguous().unwrap();
        (x, y)
    };
    let steps = std::env::var("STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let (mut fwd, mut bwd, mut upd) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let (mut total, mut best) = (Duration::ZERO, Duration::MAX);
    for i in 0..steps + 3 {
        let (x, y) = batch();
        let t0 = Instant::now();
        let loss = gpt.loss(&x, &y).unwrap();
        let t1 = Instant::now();
        let mut grads = loss.backward().unwrap();
        let t2 = Instant::now();
        clip_grad_norm(&params, &mut grads, 1.0).unwrap();
        opt.step(&grads).unwrap();
        let t3 = Instant::now();
        if i >= 3 {
            fwd += t1 - t0;
            bwd += t2 - t1;
            upd += t3 - t2;
            total += t3 - t0;
            best = best.min(t3 - t0);
        }
    }
    let per = |d: Duration| d.as_secs_f64() * 1e3 / steps as f64;
    eprintln!(
        "{} params; per step: {:.2} ms (forward {:.2}, backward {:.2}, clip+AdamW {:.2}; fastest {:.2}); {:.0} tokens/s",
        gpt.num_params(),
        per(total),
        per(fwd),
        per(bwd),
        per(upd),
        best.as_secs_f64() * 1e3,
        (b * t * steps) as f64 / total.as_secs_f64()
    );
}
