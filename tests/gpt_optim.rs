//! Optimizers, clipping and the schedule, against hand-computed PyTorch formulas. (The
//! end-to-end check, 10 AdamW steps of a GPT against torch.optim.AdamW, is in gpt_parity.rs.)

use kiln::model::{io, Gpt, GptConfig};
use kiln::optim::{clip_coefficient, clip_grad_norm, AdamW, CosineSchedule, Sgd};
use kiln::{Device, Rng, Tensor};

fn leaf(v: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap().requires_grad()
}

/// Gradients of Σ c·p for each parameter: the gradient of p is c (broadcast).
fn linear_grads(params: &[(String, Tensor)], coef: &[f64]) -> kiln::Gradients {
    let mut loss: Option<Tensor> = None;
    for ((_, p), &c) in params.iter().zip(coef) {
        let term = p.mul_scalar(c).unwrap().sum_all().unwrap();
        loss = Some(match loss {
            Some(l) => l.add(&term).unwrap(),
            None => term,
        });
    }
    loss.unwrap().backward().unwrap()
}

#[test]
fn adamw_step_follows_the_pytorch_formula() {
    let w = leaf(vec![1.0, -2.0, 0.5, 3.0], &[2, 2]); // decayed (2-D)
    let b = leaf(vec![0.25, -0.75], &[2]); // not decayed
    let params = vec![("w".to_string(), w.clone()), ("b".to_string(), b.clone())];
    let (lr, b1, b2, eps, wd) = (0.1, 0.9, 0.95, 1e-8, 0.5);
    let mut opt = AdamW::new(params.clone(), lr, (b1, b2), eps, wd).unwrap();
    assert_eq!(opt.decayed(), vec!["w"]);
    let coefs = [[0.3, -1.5], [2.0, 0.1]];
    let (mut p_w, mut p_b) = (w.to_vec::<f64>().unwrap(), b.to_vec::<f64>().unwrap());
    let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
    for (step, c) in coefs.iter().enumerate() {
        opt.step(&linear_grads(&params, c)).unwrap();
        let t = (step + 1) as i32;
        for (k, (p, decay)) in [(&mut p_w, true), (&mut p_b, false)].into_iter().enumerate() {
            let g = c[k];
            m[k] = b1 * m[k] + (1.0 - b1) * g;
            v[k] = b2 * v[k] + (1.0 - b2) * g * g;
            for x in p.iter_mut() {
                if decay {
                    *x *= 1.0 - lr * wd;
                }
                let denom = v[k].sqrt() / (1.0 - b2.powi(t)).sqrt() + eps;
                *x -= lr / (1.0 - b1.powi(t)) * m[k] / denom;
            }
        }
        for (got, want) in [(&w, &p_w), (&b, &p_b)] {
            let got = got.to_vec::<f64>().unwrap();
            for (g, w) in got.iter().zip(want.iter()) {
                assert!((g - w).abs() < 1e-12, "step {t}: {got:?} vs {want:?}");
            }
        }
    }
    assert_eq!(opt.step_count(), 2);
}

#[test]
fn adamw_groups_like_nanogpt_and_skips_params_without_gradients() {
    let cfg = GptConfig::preset("tiny").unwrap();
    let gpt = Gpt::new(GptConfig { n_layer: 1, ..cfg }, &mut Rng::new(0), &Device::Cpu).unwrap();
    let opt = AdamW::new(gpt.params(), 1e-3, (0.9, 0.99), 1e-8, 0.1).unwrap();
    let want: Vec<String> = gpt
        .params()
        .into_iter()
        .filter(|(_, t)| t.dims() >= 2)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(opt.decayed(), want);
    assert!(
        want.contains(&"transformer.wte.weight".to_string()),
        "embeddings decay (nanoGPT)"
    );

    let a = leaf(vec![1.0; 4], &[2, 2]);
    let unused = leaf(vec![5.0; 4], &[2, 2]);
    let params = vec![("a".to_string(), a.clone()), ("unused".to_string(), unused.clone())];
    let mut opt = AdamW::new(params, 0.1, (0.9, 0.999), 1e-8, 0.1).unwrap();
    let grads = a.sum_all().unwrap().backward().unwrap();
    opt.step(&grads).unwrap();
    assert_eq!(
        unused.to_vec::<f64>().unwrap(),
        vec![5.0; 4],
        "no gradient, no update, no decay"
    );
    assert_ne!(a.to_vec::<f64>().unwrap(), vec![1.0; 4]);
}

fn tiny_gpt(seed: u64) -> Gpt {
    let cfg = GptConfig {
        vocab_size: 40,
        block_size: 8,
        n_layer: 1,
        n_head: 2,
        n_embd: 16,
        dropout: 0.0,
        bias: true,
    };
    Gpt::new(cfg, &mut Rng::new(seed), &Device::Cpu).unwrap()
}

#[test]
fn adamw_state_round_trip_continues_bit_exactly() {
    let x = Tensor::from_vec((0..16u32).map(|i| (i * 7) % 40).collect(), &[2, 8], &Device::Cpu).unwrap();
    let y = Tensor::from_vec((0..16u32).map(|i| (i * 11 + 3) % 40).collect(), &[2, 8], &Device::Cpu).unwrap();
    let step = |gpt: &Gpt, opt: &mut AdamW| {
        let loss = gpt.loss(&x, &y).unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    };
    let new_opt = |gpt: &Gpt| AdamW::new(gpt.params(), 1e-2, (0.9, 0.95), 1e-8, 0.1).unwrap();
    // uninterrupted: 4 steps
    let a = tiny_gpt(1);
    let mut opt_a = new_opt(&a);
    (0..4).for_each(|_| step(&a, &mut opt_a));
    // interrupted after 2: weights and optimizer state through files, then 2 more
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gpt_optim-resume");
    std::fs::create_dir_all(&dir).unwrap();
    let b = tiny_gpt(1);
    let mut opt_b = new_opt(&b);
    (0..2).for_each(|_| step(&b, &mut opt_b));
    b.save_safetensors(&dir.join("model.safetensors")).unwrap();
    io::save_tensors(&dir.join("optim.safetensors"), &opt_b.state().unwrap(), None).unwrap();
    let mut c = tiny_gpt(99);
    c.load_safetensors(&dir.join("model.safetensors")).unwrap();
    let mut opt_c = new_opt(&c);
    let (state, _) = io::load_tensors(&dir.join("optim.safetensors"), &Device::Cpu).unwrap();
    opt_c.load_state(&state).unwrap();
    assert_eq!(opt_c.step_count(), 2);
    (0..2).for_each(|_| step(&c, &mut opt_c));
    for ((name, pa), (_, pc)) in a.params().iter().zip(c.params()) {
        assert_eq!(pa.to_vec::<f32>().unwrap(), pc.to_vec::<f32>().unwrap(), "{name}");
    }
    // a state for other parameters is refused, listing what differs, and changes nothing
    let mut opt_d = AdamW::new(tiny_gpt(0).params()[..3].to_vec(), 1e-3, (0.9, 0.95), 1e-8, 0.0).unwrap();
    let bad: Vec<_> = state
        .iter()
        .filter(|(n, _)| !n.starts_with("transformer.wpe"))
        .cloned()
        .collect();
    let err = opt_d.load_state(&bad).unwrap_err().to_string();
    assert!(err.contains("missing: transformer.wpe.weight.exp_avg [8, 16]"), "{err}");
    assert_eq!(opt_d.step_count(), 0);
}

/// `clip_coefficient` then `step_scaled` (the clipping's scaling fused into the CPU update) must
/// leave the weights and moments bit for bit as `clip_grad_norm` then `step`, with the norm
/// clipped (scale below 1) and not (scale exactly 1), f32 and f64 parameters; a non-finite
/// scale is refused.
#[test]
fn step_scaled_equals_clipping_then_stepping_bit_for_bit() {
    let x = Tensor::from_vec((0..16u32).map(|i| (i * 7) % 40).collect(), &[2, 8], &Device::Cpu).unwrap();
    let y = Tensor::from_vec((0..16u32).map(|i| (i * 11 + 3) % 40).collect(), &[2, 8], &Device::Cpu).unwrap();
    for max_norm in [0.05, 1e6] {
        let (a, b) = (tiny_gpt(3), tiny_gpt(3));
        let new_opt = |gpt: &Gpt| AdamW::new(gpt.params(), 1e-2, (0.9, 0.95), 1e-8, 0.1).unwrap();
        let (mut opt_a, mut opt_b) = (new_opt(&a), new_opt(&b));
        for _ in 0..3 {
            let mut ga = a.loss(&x, &y).unwrap().backward().unwrap();
            let norm_a = clip_grad_norm(&a.params(), &mut ga, max_norm).unwrap();
            opt_a.step(&ga).unwrap();
            let gb = b.loss(&x, &y).unwrap().backward().unwrap();
            let (norm_b, scale) = clip_coefficient(&b.params(), &gb, max_norm).unwrap();
            assert_eq!(norm_a.to_bits(), norm_b.to_bits());
            if max_norm < 1.0 {
                assert!(
                    scale < 1.0 && (scale - max_norm / (norm_b + 1e-6)).abs() < 1e-15,
                    "{scale}"
                );
            } else {
                assert_eq!(scale, 1.0);
            }
            opt_b.step_scaled(&gb, scale).unwrap();
        }
        for ((name, pa), (_, pb)) in a.params().iter().zip(b.params()) {
            assert_eq!(
                pa.to_vec::<f32>().unwrap(),
                pb.to_vec::<f32>().unwrap(),
                "{name} at max_norm {max_norm}"
            );
        }
        for ((name, sa), (_, sb)) in opt_a.state().unwrap().iter().zip(opt_b.state().unwrap()) {
            assert_eq!(sa.to_vec::<f64>().unwrap(), sb.to_vec::<f64>().unwrap(), "{name}");
        }
        assert!(opt_b
            .step_scaled(&a.loss(&x, &y).unwrap().backward().unwrap(), f64::NAN)
            .is_err());
    }
    // f64 parameters: the product taken in f64
    let (w_a, w_b) = (
        leaf(vec![1.0, -2.0, 0.5, 3.0], &[2, 2]),
        leaf(vec![1.0, -2.0, 0.5, 3.0], &[2, 2]),
    );
    let mut opt_a = AdamW::new(vec![("w".to_string(), w_a.clone())], 0.1, (0.9, 0.95), 1e-8, 0.5).unwrap();
    let mut opt_b = AdamW::new(vec![("w".to_string(), w_b.clone())], 0.1, (0.9, 0.95), 1e-8, 0.5).unwrap();
    for c in [0.3, -1.7, 2.9] {
        let mut ga = linear_grads(&[("w".to_string(), w_a.clone())], &[c]);
        clip_grad_norm(std::slice::from_ref(&w_a), &mut ga, 0.7).unwrap();
        opt_a.step(&ga).unwrap();
        let gb = linear_grads(&[("w".to_string(), w_b.clone())], &[c]);
        let (_, scale) = clip_coefficient(std::slice::from_ref(&w_b), &gb, 0.7).unwrap();
        opt_b.step_scaled(&gb, scale).unwrap();
    }
    assert_eq!(w_a.to_vec::<f64>().unwrap(), w_b.to_vec::<f64>().unwrap());
}

#[test]
fn sgd_with_momentum_and_weight_decay() {
    let p = leaf(vec![1.0, -1.0], &[2]);
    let params = vec![("p".to_string(), p.clone())];
    let (lr, mu, wd) = (0.1, 0.9, 0.01);
    let mut opt = Sgd::new(params.clone(), lr, mu, wd).unwrap();
    let mut want = [1.0f64, -1.0];
    let mut buf: Option<[f64; 2]> = None;
    for c in [0.5, -0.25, 1.0] {
        opt.step(&linear_grads(&params, &[c])).unwrap();
        let d = [c + wd * want[0], c + wd * want[1]];
        let b = match buf {
            Some(b) => [mu * b[0] + d[0], mu * b[1] + d[1]],
            None => d,
        };
        buf = Some(b);
        want = [want[0] - lr * b[0], want[1] - lr * b[1]];
        let got = p.to_vec::<f64>().unwrap();
        assert!(
            (got[0] - want[0]).abs() < 1e-12 && (got[1] - want[1]).abs() < 1e-12,
            "{got:?} vs {want:?}"
        );
    }
    // plain SGD
    let q = leaf(vec![2.0], &[1]);
    let mut plain = Sgd::new(vec![("q".into(), q.clone())], 0.5, 0.0, 0.0).unwrap();
    plain
        .step(&q.mul_scalar(3.0).unwrap().sum_all().unwrap().backward().unwrap())
        .unwrap();
    assert_eq!(q.to_vec::<f64>().unwrap(), vec![0.5]);
}

#[test]
fn clip_grad_norm_scales_to_the_max_norm() {
    let a = leaf(vec![0.0; 2], &[2]);
    let b = leaf(vec![0.0; 1], &[1]);
    let params = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
    // gradients (3, 3) and (4): norm √34
    let mut grads = linear_grads(&params, &[3.0, 4.0]);
    let norm = clip_grad_norm(&params, &mut grads, 1.0).unwrap();
    assert!((norm - 34f64.sqrt()).abs() < 1e-12);
    let ga = grads.get(&a).unwrap().to_vec::<f64>().unwrap();
    let gb = grads.get(&b).unwrap().to_vec::<f64>().unwrap();
    let clipped = (ga.iter().chain(&gb).map(|x| x * x).sum::<f64>()).sqrt();
    assert!((clipped - 1.0).abs() < 1e-5, "{clipped}");
    // below the limit nothing changes
    let mut grads = linear_grads(&params, &[0.1, 0.1]);
    clip_grad_norm(&params, &mut grads, 1.0).unwrap();
    assert_eq!(grads.get(&a).unwrap().to_vec::<f64>().unwrap(), vec![0.1, 0.1]);
    // a NaN gradient shows in the returned norm
    let mut grads = linear_grads(&params, &[f64::NAN, 1.0]);
    assert!(clip_grad_norm(&params, &mut grads, 1.0).unwrap().is_nan());
    assert!(clip_grad_norm(&params, &mut grads, 0.0).is_err());
}

#[test]
fn cosine_schedule_is_nanogpts() {
    let s = CosineSchedule {
        warmup: 10,
        max_steps: 110,
        max_lr: 1.0,
        min_lr: 0.1,
    };
    assert!((s.lr(0) - 1.0 / 11.0).abs() < 1e-15);
    assert!((s.lr(10) - 1.0).abs() < 1e-15);
    assert!((s.lr(60) - 0.55).abs() < 1e-12);
    assert!((s.lr(110) - 0.1).abs() < 1e-15);
    assert_eq!(s.lr(1000), 0.1);
    let lrs: Vec<f64> = (10..=110).map(|i| s.lr(i)).collect();
    assert!(lrs.windows(2).all(|w| w[1] <= w[0]), "decays monotonically");
}
