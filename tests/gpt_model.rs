//! The GPT's contracts besides numerical parity (tests/gpt_parity.rs): the KV cache, the composed
//! attention against the fused op, parameter counts, initialisation, dropout, checkpoints on disk
//! and the errors of bad input. Hugging Face folders: tests/gpt_hf.rs.

use kiln::model::{attention_reference, io, Gpt, GptConfig, KvCache};
use kiln::{DType, Device, Rng, Tensor};
use std::path::PathBuf;

fn small(bias: bool) -> GptConfig {
    GptConfig {
        vocab_size: 50,
        block_size: 16,
        n_layer: 2,
        n_head: 4,
        n_embd: 32,
        dropout: 0.0,
        bias,
    }
}

fn model(cfg: GptConfig, seed: u64) -> Gpt {
    Gpt::new(cfg, &mut Rng::new(seed), &Device::Cpu).unwrap()
}

fn ids(b: usize, t: usize, vocab: usize, seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let v: Vec<u32> = (0..b * t).map(|_| rng.below(vocab as u64) as u32).collect();
    Tensor::from_vec(v, &[b, t], &Device::Cpu).unwrap()
}

/// A fresh folder under the target dir, removed first if left over.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("gpt_model-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn kv_cache_logits_equal_full_forward_logits() {
    for bias in [true, false] {
        let cfg = small(bias);
        let gpt = model(cfg.clone(), 1);
        let x = ids(2, 12, cfg.vocab_size, 2);
        let full = gpt.forward(&x).unwrap(); // (2, 12, 50)
        let mut cache = KvCache::new(&cfg);
        // a 5-token prompt, then one token at a time, then a 3-token chunk
        let mut pieces = vec![gpt.forward_cached(&x.narrow(1, 0, 5).unwrap(), &mut cache).unwrap()];
        for t in 5..9 {
            pieces.push(gpt.forward_cached(&x.narrow(1, t, 1).unwrap(), &mut cache).unwrap());
        }
        pieces.push(gpt.forward_cached(&x.narrow(1, 9, 3).unwrap(), &mut cache).unwrap());
        assert_eq!(cache.len(), 12);
        let cached = Tensor::cat(&pieces, 1).unwrap();
        assert_eq!(cached.shape(), full.shape());
        let d = rel_max_diff(&cached, &full);
        assert!(
            d < 1e-5,
            "bias {bias}: cached and full logits differ by {d} of their largest"
        );
        assert!(!cached.tracks_grad(), "the cached path records no graph");
    }
}

/// `forward_cached_last` (the LM head on the last position only) gives the last row of each
/// sequence's full logits, batch of 2, and advances the cache as `forward_cached` does.
#[test]
fn kv_cache_last_position_logits_equal_the_full_forwards_last_row() {
    let cfg = small(true);
    let gpt = model(cfg.clone(), 1);
    let x = ids(2, 9, cfg.vocab_size, 5);
    let full = gpt.forward(&x).unwrap(); // (2, 9, 50)
    let mut cache = KvCache::new(&cfg);
    let first = gpt
        .forward_cached_last(&x.narrow(1, 0, 6).unwrap(), &mut cache)
        .unwrap();
    assert_eq!(first.shape(), [2, cfg.vocab_size]);
    assert_eq!(cache.len(), 6);
    let last = gpt
        .forward_cached_last(&x.narrow(1, 6, 3).unwrap(), &mut cache)
        .unwrap();
    assert_eq!(cache.len(), 9);
    for (got, at) in [(first, 5), (last, 8)] {
        let want = full.narrow(1, at, 1).unwrap().reshape(&[2, cfg.vocab_size]).unwrap();
        let d = rel_max_diff(&got, &want);
        assert!(d < 1e-5, "position {at}: last-position and full logits differ by {d}");
    }
}

/// The logits of `x` (B, T) fed through `cache` in the given pieces, joined along time.
fn cached_logits(gpt: &Gpt, x: &Tensor, cache: &mut KvCache, pieces: &[usize]) -> Tensor {
    let mut at = cache.len();
    let outs: Vec<Tensor> = pieces
        .iter()
        .map(|&n| {
            let y = gpt.forward_cached(&x.narrow(1, at, n).unwrap(), cache).unwrap();
            at += n;
            y
        })
        .collect();
    Tensor::cat(&outs, 1).unwrap()
}

/// The cache writes its buffers in place: a clone shares them until one side writes, and then
/// neither sees the other's positions; positions dropped by `truncate` are overwritten by the
/// next ones. Every branch must give the logits of a full forward over its own sequence.
#[test]
fn kv_cache_clones_and_truncation_keep_their_own_positions() {
    let cfg = small(true);
    let gpt = model(cfg.clone(), 1);
    let (a, b) = (ids(1, 12, cfg.vocab_size, 7), ids(1, 12, cfg.vocab_size, 8));
    // b shares a's first 5 tokens
    let b = Tensor::cat(&[a.narrow(1, 0, 5).unwrap(), b.narrow(1, 5, 7).unwrap()], 1).unwrap();
    let (full_a, full_b) = (gpt.forward(&a).unwrap(), gpt.forward(&b).unwrap());
    let mut cache_a = KvCache::new(&cfg);
    let prefix = cached_logits(&gpt, &a, &mut cache_a, &[5]);
    let mut cache_b = cache_a.clone();
    // the two take turns, each reading positions the other has written to by then
    let a1 = cached_logits(&gpt, &a, &mut cache_a, &[1]);
    let b1 = cached_logits(&gpt, &b, &mut cache_b, &[3]);
    let a2 = cached_logits(&gpt, &a, &mut cache_a, &[1, 5]);
    let b2 = cached_logits(&gpt, &b, &mut cache_b, &[4]);
    let (rest_a, rest_b) = (Tensor::cat(&[a1, a2], 1).unwrap(), Tensor::cat(&[b1, b2], 1).unwrap());
    let close = |got: &Tensor, want: &Tensor, what: &str| {
        let d = rel_max_diff(got, want);
        assert!(
            d < 1e-5,
            "{what}: cached and full logits differ by {d} of their largest"
        );
    };
    close(
        &Tensor::cat(&[prefix.clone(), rest_a], 1).unwrap(),
        &full_a,
        "the original",
    );
    close(
        &Tensor::cat(&[prefix.clone(), rest_b], 1).unwrap(),
        &full_b,
        "the clone",
    );
    // a again, after a truncation to the shared prefix: now b's tokens
    cache_a.truncate(5).unwrap();
    let again = cached_logits(&gpt, &b, &mut cache_a, &[7]);
    close(&Tensor::cat(&[prefix, again], 1).unwrap(), &full_b, "after truncate");
}

/// Past its first buffer (64 positions) the cache moves to a larger one, one token at a time,
/// keeping every position.
#[test]
fn kv_cache_grows_past_its_first_buffer() {
    let cfg = GptConfig {
        block_size: 150,
        ..small(false)
    };
    let gpt = model(cfg.clone(), 2);
    let x = ids(2, 140, cfg.vocab_size, 9);
    let mut cache = KvCache::new(&cfg);
    let mut pieces = vec![60];
    pieces.extend([1; 10]);
    pieces.push(70);
    let cached = cached_logits(&gpt, &x, &mut cache, &pieces);
    assert_eq!(cache.len(), 140);
    let d = rel_max_diff(&cached, &gpt.forward(&x).unwrap());
    assert!(d < 1e-5, "cached and full logits differ by {d} of their largest");
}

/// Attention over K and V that are views of larger buffers (a KV cache's filled rows: each head's
/// rows contiguous, heads a buffer's capacity apart) reads them in place on the CPU and gives
/// exactly what their contiguous copies give, forward and backward.
#[test]
fn attention_over_views_of_a_cache_buffer_equals_attention_over_copies() {
    let mut rng = Rng::new(21);
    let dev = Device::Cpu;
    // (B, H, Hkv, Tq, Tk, capacity, D)
    for (b, h, hkv, tq, tk, cap, d) in [
        (1, 6, 2, 1, 37, 64, 16),
        (2, 4, 4, 3, 20, 33, 8),
        (2, 3, 1, 5, 9, 12, 4),
    ] {
        let q = Tensor::randn(&[b, h, tq, d], DType::F32, &mut rng, &dev).unwrap();
        let kb = Tensor::randn(&[b, hkv, cap, d], DType::F32, &mut rng, &dev).unwrap();
        let vb = Tensor::randn(&[b, hkv, cap, d], DType::F32, &mut rng, &dev).unwrap();
        let (k, v) = (kb.narrow(2, 0, tk).unwrap(), vb.narrow(2, 0, tk).unwrap());
        assert!(!k.is_contiguous());
        let (kc, vc) = (k.contiguous().unwrap(), v.contiguous().unwrap());
        let w = Tensor::randn(&[b, h, tq, d], DType::F32, &mut rng, &dev).unwrap();
        let run = |k: &Tensor, v: &Tensor| {
            let (q, k, v) = (
                q.clone().requires_grad(),
                k.clone().requires_grad(),
                v.clone().requires_grad(),
            );
            let y = q.scaled_dot_product_attention(&k, &v, true).unwrap();
            let g = y.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
            let grads = [&q, &k, &v].map(|t| g.get(t).unwrap().to_vec::<f32>().unwrap());
            (y.to_vec::<f32>().unwrap(), grads)
        };
        assert_eq!(
            run(&k, &v),
            run(&kc, &vc),
            "(B, H, Hkv, Tq, Tk, capacity, D) = {:?}",
            (b, h, hkv, tq, tk, cap, d)
        );
    }
}

/// `max|a − b| / max|b|` over two tensors of the same shape (compared in f64); NaN if either
/// holds a NaN, and 0 when both are all zeros (a gradient that is exactly 0: one key only).
fn rel_max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let (a, b) = (a.to_vec::<f64>().unwrap(), b.to_vec::<f64>().unwrap());
    // f64::max would drop a NaN; this keeps it
    let worst = |m: f64, x: f64| if x.is_nan() || m.is_nan() { f64::NAN } else { m.max(x) };
    let scale = b.iter().map(|x| x.abs()).fold(0f64, worst);
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f64, worst);
    if diff == 0.0 {
        0.0
    } else {
        diff / scale
    }
}

/// The composed attention (`attention_reference`, which the model runs under attention dropout)
/// and the fused `scaled_dot_product_attention` (which it runs otherwise) compute the same output
/// and the same gradients for q, k and v, in f64 and f32. The shapes cover a single position, T
/// below, at and past the CPU's 64-row query tile (65, 130: a partial last tile), an odd head
/// width, and the KV cache's case of T new queries after `start` cached keys (Tk = start + T).
#[test]
fn attention_reference_equals_the_fused_op() {
    // (B, nh, T, Tk, hs)
    let shapes = [
        (1, 1, 1, 1, 4),
        (2, 3, 5, 5, 8),
        (1, 2, 64, 64, 12),
        (2, 2, 65, 65, 7),
        (1, 1, 130, 130, 16),
        (1, 2, 3, 67, 12),
    ];
    // both round differently (the fused op scales the scores, the composition q; other summation
    // orders): measured up to 1.1e-15 of the largest element in f64 and 4.9e-7 in f32 on x86-64,
    // allowed about 10 times that
    for (dtype, tol) in [(DType::F64, 1e-14), (DType::F32, 5e-6)] {
        for (i, &(b, nh, t, tk, hs)) in shapes.iter().enumerate() {
            let mut rng = Rng::new(100 + i as u64);
            let dev = Device::Cpu;
            let mut randn = |shape: &[usize]| Tensor::randn(shape, dtype, &mut rng, &dev).unwrap();
            let (q, k, v) = (
                randn(&[b, nh, t, hs]).requires_grad(),
                randn(&[b, nh, tk, hs]).requires_grad(),
                randn(&[b, nh, tk, hs]).requires_grad(),
            );
            // a random weighting of the outputs, so that every output element's gradient differs
            let w = randn(&[b, nh, t, hs]);
            let fused = q.scaled_dot_product_attention(&k, &v, true).unwrap();
            let five = |x: &Tensor, n: usize| x.reshape(&[1, b, nh, n, hs]).unwrap();
            let composed = attention_reference(&five(&q, t), &five(&k, tk), &five(&v, tk), tk - t, 0.0, None)
                .unwrap()
                .reshape(&[b, nh, t, hs])
                .unwrap();
            let what = format!("{dtype} (B, nh, T, Tk, hs) = {:?}", shapes[i]);
            let d = rel_max_diff(&composed, &fused);
            assert!(d <= tol, "{what}: outputs differ by {d:.2e} of max|out|");
            let grads_of = |y: &Tensor| {
                let g = y.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
                [&q, &k, &v].map(|x| g.get(x).expect("a gradient for q, k and v").clone())
            };
            let (gf, gc) = (grads_of(&fused), grads_of(&composed));
            for (name, (c, f)) in ["q", "k", "v"].iter().zip(gc.iter().zip(&gf)) {
                let d = rel_max_diff(c, f);
                assert!(d <= tol, "{what}: gradients of {name} differ by {d:.2e} of max|grad|");
            }
            // the comparison sees the mask: without it the fused op gives another answer
            if t > 1 {
                let open = q.scaled_dot_product_attention(&k, &v, false).unwrap();
                assert!(
                    rel_max_diff(&composed, &open) > 1e-3,
                    "{what}: the mask made no difference"
                );
            }
        }
    }
}

/// `qkv_attention` (the model's attention without a KV cache: one op from the `[B, T, 3C]`
/// projection to the heads' outputs side by side, fused on the CPU) against the composition it
/// replaces (reshape, permute, narrow, `scaled_dot_product_attention`, permute back), outputs and
/// the gradient of qkv, causal and not, in f64, f32 and bf16. T covers one position, the CPU's
/// 64-row query tile and a partial last tile (65, 130); odd head widths and head counts. The fused
/// op reads the same heads with other strides and writes dq, dk and dv once instead of into zeros
/// that are then added: the same arithmetic, so the results are equal to the bit.
#[test]
fn qkv_attention_equals_the_composed_ops() {
    // (B, nh, T, hs)
    let shapes = [
        (1, 1, 1, 4),
        (2, 3, 5, 8),
        (2, 2, 65, 7),
        (1, 2, 130, 16),
        (3, 4, 64, 32),
    ];
    let composed = |qkv: &Tensor, nh: usize, causal: bool| {
        let &[b, t, c3] = qkv.shape() else { panic!("rank 3") };
        let hs = c3 / 3 / nh;
        let x = qkv
            .reshape(&[b, t, 3, nh, hs])
            .unwrap()
            .permute(&[2, 0, 3, 1, 4])
            .unwrap();
        let q = x.narrow(0, 0, 1).unwrap().reshape(&[b, nh, t, hs]).unwrap();
        let k = x.narrow(0, 1, 1).unwrap().squeeze(0).unwrap();
        let v = x.narrow(0, 2, 1).unwrap().squeeze(0).unwrap();
        let y = q.scaled_dot_product_attention(&k, &v, causal).unwrap();
        y.permute(&[0, 2, 1, 3]).unwrap().reshape(&[b, t, c3 / 3]).unwrap()
    };
    for dtype in [DType::F64, DType::F32, DType::BF16] {
        for (i, &(b, nh, t, hs)) in shapes.iter().enumerate() {
            for causal in [true, false] {
                let mut rng = Rng::new(300 + i as u64);
                let dev = Device::Cpu;
                let qkv = Tensor::randn(&[b, t, 3 * nh * hs], DType::F32, &mut rng, &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
                    .requires_grad();
                let w = Tensor::randn(&[b, t, nh * hs], DType::F32, &mut rng, &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let what = format!("{dtype} (B, nh, T, hs) = {:?}, causal {causal}", shapes[i]);
                let fused = qkv.qkv_attention(nh, causal).unwrap();
                let reference = composed(&qkv, nh, causal);
                let bits = |x: &Tensor| x.to_dtype(DType::F64).unwrap().to_vec::<f64>().unwrap();
                assert_eq!(bits(&fused), bits(&reference), "{what}: outputs differ");
                let grad_of = |y: &Tensor| {
                    let g = y.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
                    g.get(&qkv).expect("a gradient for qkv").clone()
                };
                let (gf, gc) = (grad_of(&fused), grad_of(&reference));
                assert_eq!(gf.shape(), qkv.shape());
                assert_eq!(bits(&gf), bits(&gc), "{what}: gradients of qkv differ");
                // the weighting reaches every part: q, k and v all get a gradient (but the first
                // position's query under the mask, which sees one key: its softmax is constant)
                let g = bits(&gf);
                let c = nh * hs;
                let part_nonzero = |p: usize| (0..b * t).any(|r| g[r * 3 * c + p * c..][..c].iter().any(|&x| x != 0.0));
                if t > 1 {
                    assert!((0..3).all(part_nonzero), "{what}: a part of qkv got no gradient");
                }
            }
        }
    }
}

/// Bad shapes and dtypes of `qkv_attention` are errors naming the op.
#[test]
fn qkv_attention_rejects_bad_input() {
    let dev = Device::Cpu;
    let f = |shape: &[usize], dtype: DType, nh: usize| {
        let x = Tensor::zeros(shape, dtype, &dev).unwrap();
        x.qkv_attention(nh, true).unwrap_err().to_string()
    };
    for err in [
        f(&[2, 3, 10], DType::F32, 4),
        f(&[2, 3, 12], DType::F32, 0),
        f(&[3, 12], DType::F32, 2),
        f(&[2, 0, 12], DType::F32, 2),
        f(&[2, 3, 12], DType::U32, 2),
    ] {
        assert!(err.contains("qkv_attention"), "{err}");
    }
}

#[test]
fn kv_cache_refuses_to_overflow_the_block_and_stays_usable() {
    let cfg = small(true);
    let gpt = model(cfg.clone(), 1);
    let mut cache = KvCache::new(&cfg);
    gpt.forward_cached(&ids(1, 14, cfg.vocab_size, 3), &mut cache).unwrap();
    let err = gpt
        .forward_cached(&ids(1, 3, cfg.vocab_size, 4), &mut cache)
        .unwrap_err()
        .to_string();
    assert!(err.contains("block size 16"), "{err}");
    assert_eq!(cache.len(), 14, "a failed call leaves the cache as it was");
    gpt.forward_cached(&ids(1, 2, cfg.vocab_size, 4), &mut cache).unwrap();
    assert_eq!(cache.len(), 16);
    // another batch size than the cache holds
    cache.clear();
    gpt.forward_cached(&ids(1, 2, cfg.vocab_size, 4), &mut cache).unwrap();
    assert!(gpt.forward_cached(&ids(2, 1, cfg.vocab_size, 4), &mut cache).is_err());
    // a cache made for another depth
    let mut other = KvCache::new(&GptConfig { n_layer: 3, ..cfg });
    assert!(gpt.forward_cached(&ids(1, 2, 50, 4), &mut other).is_err());
}

#[test]
fn parameter_counts() {
    assert_eq!(GptConfig::preset("gpt2").unwrap().num_params(), 124_439_808);
    assert_eq!(GptConfig::preset("gpt2-medium").unwrap().num_params(), 354_823_168);
    for bias in [true, false] {
        let cfg = small(bias);
        let gpt = model(cfg.clone(), 0);
        let summed: usize = gpt.params().iter().map(|(_, t)| t.numel()).sum();
        assert_eq!(gpt.num_params(), summed);
        assert_eq!(gpt.num_params(), cfg.num_params());
        // every parameter is a distinct leaf that requires a gradient, named as in HF GPT-2
        let params = gpt.params();
        assert!(params.iter().all(|(_, t)| t.is_leaf_requiring_grad()));
        let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[0], "transformer.wte.weight");
        assert!(names.contains(&"transformer.h.1.attn.c_attn.weight"));
        assert_eq!(names.contains(&"transformer.h.1.mlp.c_fc.bias"), bias);
        assert!(!names.iter().any(|n| n.starts_with("lm_head")), "the LM head is tied");
    }
    // nanoGPT's CPU shape
    let tiny = GptConfig::preset("tiny").unwrap();
    assert_eq!(
        (tiny.n_layer, tiny.n_head, tiny.n_embd, tiny.block_size),
        (4, 4, 128, 64)
    );
}

#[test]
fn presets_and_validation() {
    let err = GptConfig::preset("gpt-7").unwrap_err().to_string();
    assert!(
        err.contains("gpt-7") && err.contains("tiny") && err.contains("gpt2-medium"),
        "{err}"
    );
    let bad = GptConfig {
        n_head: 5,
        ..small(true)
    };
    assert!(bad.validate().unwrap_err().to_string().contains("multiple of n_head"));
    assert!(Gpt::new(bad, &mut Rng::new(0), &Device::Cpu).is_err());
    let bad = GptConfig {
        dropout: 1.0,
        ..small(true)
    };
    assert!(bad.validate().is_err());
    let bad = GptConfig {
        vocab_size: 0,
        ..small(true)
    };
    assert!(bad.validate().is_err());
}

/// Mean and standard deviation of a tensor's elements.
fn stats(t: &Tensor) -> (f64, f64) {
    let v = t.to_vec::<f64>().unwrap();
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
    (mean, var.sqrt())
}

#[test]
fn gpt2_initialisation() {
    let cfg = GptConfig {
        n_embd: 128,
        n_layer: 8,
        ..small(true)
    };
    let gpt = model(cfg, 5);
    let proj_std = 0.02 / (2.0f64 * 8.0).sqrt();
    for (name, t) in gpt.params() {
        let (mean, std) = stats(&t);
        let expect_std = if name.ends_with("c_proj.weight") {
            proj_std
        } else if name.ends_with(".weight") && t.dims() == 2 {
            0.02
        } else {
            0.0
        };
        if name.ends_with(".bias") {
            assert_eq!((mean, std), (0.0, 0.0), "{name}");
        } else if t.dims() == 1 {
            assert_eq!((mean, std), (1.0, 0.0), "{name}: LayerNorm gains start at 1");
        } else {
            assert!(mean.abs() < 3e-3, "{name}: mean {mean}");
            assert!(
                (std / expect_std - 1.0).abs() < 0.05,
                "{name}: std {std}, expected {expect_std}"
            );
        }
    }
    // the same seed gives the same model
    let (a, b) = (model(small(true), 9), model(small(true), 9));
    for ((_, x), (_, y)) in a.params().iter().zip(b.params()) {
        assert_eq!(x.to_vec::<f32>().unwrap(), y.to_vec::<f32>().unwrap());
    }
}

#[test]
fn dropout_only_in_training_and_seeded() {
    let cfg = GptConfig {
        dropout: 0.2,
        ..small(true)
    };
    let gpt = model(cfg.clone(), 3);
    let (x, y) = (ids(2, 8, cfg.vocab_size, 1), ids(2, 8, cfg.vocab_size, 2));
    let eval1 = gpt.loss(&x, &y).unwrap().to_scalar::<f32>().unwrap();
    let eval2 = gpt.loss(&x, &y).unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(eval1, eval2, "evaluation is deterministic");
    let train = |seed| {
        gpt.loss_train(&x, &y, &mut Rng::new(seed))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(train(7), train(7), "same seed, same masks");
    assert_ne!(train(7), train(8));
    assert_ne!(train(7), eval1);
    // switching dropout off makes training mode evaluation mode
    let mut off = gpt.clone();
    off.set_dropout(0.0).unwrap();
    assert_eq!(off.config().dropout, 0.0);
    let off_train = off
        .loss_train(&x, &y, &mut Rng::new(7))
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(off_train, eval1);
    assert!(off.set_dropout(1.5).is_err());
    // no dropout configured: training mode is evaluation mode
    let plain = model(small(true), 3);
    let logits = plain.forward(&x).unwrap();
    let logits_train = plain.forward_train(&x, &mut Rng::new(1)).unwrap();
    assert_eq!(logits.to_vec::<f32>().unwrap(), logits_train.to_vec::<f32>().unwrap());
}

#[test]
fn bad_ids_are_clear_errors() {
    let cfg = small(true);
    let gpt = model(cfg.clone(), 0);
    let too_long = ids(1, 17, cfg.vocab_size, 0);
    assert!(gpt.forward(&too_long).unwrap_err().to_string().contains("block size"));
    let out_of_vocab = Tensor::from_vec(vec![3u32, 50], &[1, 2], &Device::Cpu).unwrap();
    assert!(gpt.forward(&out_of_vocab).unwrap_err().to_string().contains("50"));
    let floats = Tensor::from_vec(vec![1f32, 2.], &[1, 2], &Device::Cpu).unwrap();
    assert!(gpt.forward(&floats).unwrap_err().to_string().contains("u32"));
    let flat = Tensor::from_vec(vec![1u32, 2], &[2], &Device::Cpu).unwrap();
    assert!(gpt.forward(&flat).is_err());
    let x = ids(2, 4, cfg.vocab_size, 0);
    assert!(
        gpt.loss(&x, &ids(2, 3, cfg.vocab_size, 0)).is_err(),
        "targets of another shape"
    );
}

#[test]
fn save_load_round_trip_is_bit_exact() {
    let dir = scratch("round-trip");
    let path = dir.join("model.safetensors");
    let cfg = small(true);
    let a = model(cfg.clone(), 11);
    a.save_safetensors(&path).unwrap();
    let mut b = model(cfg.clone(), 12);
    b.load_safetensors(&path).unwrap();
    for ((na, ta), (nb, tb)) in a.params().iter().zip(b.params()) {
        assert_eq!(na, &nb);
        let bits = |t: &Tensor| {
            t.to_vec::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(ta), bits(&tb), "{na}");
    }
    let x = ids(2, 6, cfg.vocab_size, 3);
    assert_eq!(
        a.forward(&x).unwrap().to_vec::<f32>().unwrap(),
        b.forward(&x).unwrap().to_vec::<f32>().unwrap()
    );
    // the config travels in the metadata; no temporary file is left behind
    let (_, meta) = io::load_tensors(&path, &Device::Cpu).unwrap();
    let saved: GptConfig = serde_json::from_str(&meta[io::CONFIG_KEY]).unwrap();
    assert_eq!(saved, cfg);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

#[test]
fn loading_another_config_lists_the_mismatched_tensors() {
    let dir = scratch("mismatch");
    let path = dir.join("model.safetensors");
    let saved = GptConfig {
        n_layer: 3,
        n_embd: 48,
        ..small(true)
    };
    model(saved, 1).save_safetensors(&path).unwrap();
    let mut target = model(small(false), 2);
    let before: Vec<Vec<f32>> = target.params().iter().map(|(_, t)| t.to_vec().unwrap()).collect();
    let err = target.load_safetensors(&path).unwrap_err().to_string();
    for needle in [
        "shape mismatch: transformer.wte.weight: file [50, 48], model [50, 32]",
        "shape mismatch: transformer.h.0.attn.c_attn.weight: file [144, 48], model [96, 32]",
        "unexpected: transformer.h.2.ln_1.weight [48]",
        "unexpected: transformer.h.0.attn.c_attn.bias [144]",
        "model.safetensors",
        "n_layer: 3",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    let after: Vec<Vec<f32>> = target.params().iter().map(|(_, t)| t.to_vec().unwrap()).collect();
    assert_eq!(before, after, "a failed load changes nothing");
    // and the other way round: tensors the model needs are reported missing
    let path2 = dir.join("small.safetensors");
    model(small(false), 1).save_safetensors(&path2).unwrap();
    let mut bigger = model(small(true), 2);
    let err = bigger.load_safetensors(&path2).unwrap_err().to_string();
    assert!(err.contains("missing: transformer.ln_f.bias [32]"), "{err}");
}

#[test]
fn corrupt_or_truncated_files_are_clear_errors() {
    let dir = scratch("corrupt");
    let good = dir.join("good.safetensors");
    model(small(true), 1).save_safetensors(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("header-only", bytes[..40].to_vec()),
        ("empty", Vec::new()),
        ("garbage", b"this is not a safetensors file at all".to_vec()),
        ("huge-header", {
            let mut b = bytes.clone();
            b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            b
        }),
        ("bad-json", {
            let mut b = bytes.clone();
            b[8] = b'!';
            b
        }),
    ];
    for (name, data) in cases {
        let path = dir.join(format!("{name}.safetensors"));
        std::fs::write(&path, data).unwrap();
        let mut gpt = model(small(true), 2);
        let err = gpt.load_safetensors(&path).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{name}.safetensors")) && err.contains("not a valid safetensors file"),
            "{name}: {err}"
        );
    }
    let mut gpt = model(small(true), 2);
    let err = gpt
        .load_safetensors(&dir.join("absent.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent.safetensors"), "{err}");
}
