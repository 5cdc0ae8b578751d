//! The sampler on the device (kernels/sample.cu through `Tensor::sample`) against its CPU
//! reference (backend/cpu/sample.rs) on Device::Emu: the same ids bit for bit, over vocabularies
//! that are not multiples of the block (1, 7, 1000, 50257, 49152), logits with ties, signed zeros,
//! −∞ and +∞, and every kind of option (greedy, temperature alone, top-k, top-p, both, extreme
//! temperatures); the same errors for NaN and all −∞ rows; a `SampleScratch` kept from one draw to
//! the next (`Tensor::sample_with`) gives the ids of a fresh one; and generation on Emu gives the
//! CPU's tokens with sampling on. No GPU needed; on one, Device::Cuda(0) runs the same kernel.

use kiln::backend::{SampleParams, SampleScratch};
use kiln::model::{Gpt, GptConfig};
use kiln::train::{generate, SampleOptions};
use kiln::{Device, Rng, Tensor};

/// Four rows of logits of `vocab`: distinct values, many ties (multiples of 0.5, signed zeros), a
/// tenth −∞ and the rest ties, and one +∞ among distinct values.
fn logit_rows(vocab: usize, rng: &mut Rng) -> Vec<f32> {
    let mut rows = Vec::with_capacity(4 * vocab);
    rows.extend((0..vocab).map(|_| (rng.normal() * 3.0) as f32));
    rows.extend((0..vocab).map(|i| match i % 5 {
        0 => 0.0,
        1 => -0.0,
        _ => ((rng.normal() * 2.0) * 2.0).round() as f32 / 2.0,
    }));
    rows.extend((0..vocab).map(|i| {
        if rng.uniform() < 0.1 && i != vocab / 2 {
            f32::NEG_INFINITY
        } else {
            (rng.below(7) as f32) * 0.25
        }
    }));
    let hot = rng.below(vocab as u64) as usize;
    rows.extend((0..vocab).map(|i| if i == hot { f32::INFINITY } else { rng.normal() as f32 }));
    rows
}

fn params(vocab: usize) -> Vec<SampleParams> {
    let p = |temperature, top_k, top_p| SampleParams {
        temperature,
        top_k,
        top_p,
    };
    vec![
        p(0.0, 0, 1.0),
        p(1.0, 0, 1.0),
        p(0.7, 40, 1.0),
        p(1.0, 1, 1.0),
        p(1.0, vocab.saturating_sub(1), 1.0),
        p(1.0, vocab + 5, 1.0),
        p(0.9, 0, 0.9),
        p(1.2, 50, 0.8),
        p(2.0, 3, 0.95),
        p(0.8, 0, 1e-9),
        p(1e-30, 0, 1.0),
        p(1e30, 0, 0.5),
        p(1e30, 7, 1.0),
    ]
}

#[test]
fn emu_draws_the_ids_of_the_cpu_reference() {
    let mut rng = Rng::new(20);
    for vocab in [1usize, 7, 1000, 50257, 49152] {
        let rows = logit_rows(vocab, &mut rng);
        let cpu = Tensor::from_slice(&rows, &[4, vocab], &Device::Cpu).unwrap();
        let emu = cpu.to_device(&Device::Emu).unwrap();
        for params in params(vocab) {
            // the ends of [0, 1) and two draws
            for uniforms in [
                [0.0, 1.0 - f64::EPSILON / 2.0, 0.5, 0.25],
                [rng.uniform(), rng.uniform(), rng.uniform(), rng.uniform()],
            ] {
                let want = cpu.sample(&params, &uniforms).unwrap();
                let got = emu.sample(&params, &uniforms).unwrap();
                assert_eq!(got, want, "vocab {vocab}, {params:?}, uniforms {uniforms:?}");
                for (row, &id) in want.iter().enumerate() {
                    let l = rows[row * vocab + id as usize];
                    assert!(
                        l > f32::NEG_INFINITY,
                        "vocab {vocab}, {params:?}: row {row} drew a -inf logit"
                    );
                }
            }
        }
    }
}

#[test]
fn a_kept_scratch_draws_the_ids_of_a_fresh_one() {
    // one SampleScratch for every vocabulary, row and option, as a generation loop keeps it: what
    // a draw leaves in it never changes the next (on the CPU; on Emu the kernel ignores it)
    let mut rng = Rng::new(21);
    let mut scratch = SampleScratch::default();
    for vocab in [1000usize, 7, 49152, 1, 50257] {
        let rows = logit_rows(vocab, &mut rng);
        let cpu = Tensor::from_slice(&rows, &[4, vocab], &Device::Cpu).unwrap();
        for params in params(vocab) {
            let uniforms = [rng.uniform(), 0.0, rng.uniform(), 0.5];
            let want = cpu.sample(&params, &uniforms).unwrap();
            for (row, (&u, &id)) in uniforms.iter().zip(&want).enumerate() {
                let logits = cpu.narrow(0, row, 1).unwrap();
                let got = logits.sample_with(&params, u, &mut scratch).unwrap();
                assert_eq!(got, id, "vocab {vocab}, {params:?}, row {row}, u {u}");
            }
        }
    }
    let emu = Tensor::from_slice(&logit_rows(1000, &mut rng)[..1000], &[1000], &Device::Emu).unwrap();
    let params = SampleParams {
        temperature: 0.9,
        top_k: 50,
        top_p: 0.9,
    };
    assert_eq!(
        emu.sample_with(&params, 0.3, &mut scratch).unwrap(),
        emu.sample(&params, &[0.3]).unwrap()[0]
    );
}

#[test]
fn emu_reports_the_cpu_errors() {
    let sampling = SampleParams {
        temperature: 0.8,
        top_k: 5,
        top_p: 0.9,
    };
    let mut logits = vec![0.5f32; 3 * 1000];
    logits[1000 + 17] = f32::NAN;
    logits[1000 + 400] = f32::NAN;
    logits[2000..].iter_mut().for_each(|v| *v = f32::NEG_INFINITY);
    for greedy in [false, true] {
        let params = SampleParams {
            temperature: if greedy { 0.0 } else { 0.8 },
            ..sampling
        };
        for rows in [1..3, 2..3] {
            let host = &logits[rows.start * 1000..rows.end * 1000];
            let n = rows.len();
            let cpu = Tensor::from_slice(host, &[n, 1000], &Device::Cpu).unwrap();
            let want = cpu.sample(&params, &vec![0.3; n]).unwrap_err().to_string();
            let emu = cpu.to_device(&Device::Emu).unwrap();
            let got = emu.sample(&params, &vec![0.3; n]).unwrap_err().to_string();
            assert_eq!(got, want);
            let expected = if rows.start == 1 {
                "2 of the 1000 logits are NaN (the first for token 17)"
            } else {
                "all 1000 logits are -inf"
            };
            assert!(want.contains(expected), "{want}");
        }
    }
    let x = Tensor::from_slice(&logits[..1000], &[1, 1000], &Device::Emu).unwrap();
    let e = x.sample(&sampling, &[0.1, 0.2]).unwrap_err().to_string();
    assert!(e.contains("have 1 rows but 2 uniform numbers"), "{e}");
    let e = x.sample(&sampling, &[1.0]).unwrap_err().to_string();
    assert!(e.contains("uniform number 1 is outside [0, 1)"), "{e}");
    let e = x
        .sample(&SampleParams { top_p: 0.0, ..sampling }, &[0.5])
        .unwrap_err()
        .to_string();
    assert!(e.contains("top_p must be in (0, 1], got 0"), "{e}");
}

/// A 2-layer GPT with a 61-token vocabulary, the same weights on every device.
fn tiny(dev: &Device) -> Gpt {
    let cfg = GptConfig {
        vocab_size: 61,
        block_size: 16,
        n_layer: 2,
        n_head: 2,
        n_embd: 24,
        dropout: 0.0,
        bias: true,
    };
    Gpt::new(cfg, &mut Rng::new(3), dev).unwrap()
}

#[test]
fn generation_with_sampling_on_emu_gives_the_cpu_tokens() {
    // The sampler gives equal ids for equal logits; the model's logits on Emu differ from the
    // CPU's in the last bits (other summation orders), which moves a token's weight by about
    // 2^46 · 1e-7 of 2^46 · (sum of weights): a draw changes only if its uniform number falls that
    // close to the edge of a token's interval, about 1e-7 per token, so a fixed seed gives equal
    // sequences. 40 tokens cross the context of 16 (the crop recomputes it).
    let opts = SampleOptions {
        max_new_tokens: 40,
        temperature: 1.1,
        top_k: Some(30),
        top_p: Some(0.95),
    };
    let run = |dev: &Device| generate(&tiny(dev), &[3, 10, 17], &opts, &mut Rng::new(11), |_| Ok(true)).unwrap();
    let want = run(&Device::Cpu);
    assert_eq!(run(&Device::Emu), want);
    // sampling, not greedy: a random model's tokens vary
    let distinct: std::collections::BTreeSet<_> = want.iter().collect();
    assert!(distinct.len() > 5, "{want:?}");
}
