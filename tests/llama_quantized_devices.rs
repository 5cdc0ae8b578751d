//! The quantized tiny Llama (tests/fixtures/llama-chat/model-q.gguf: Q8_0, Q4_0 and Q4_1
//! projections and a Q8_0 tied head of 276 rows, written by scripts/make_llama_fixture.py) on Emu,
//! through the CUDA kernels of kernels/linear_quantized.cu, against the CPU: logits, cached greedy
//! decoding, and `kiln chat --dtype stored --device emu`.

use kiln::model::{Llama, LlamaLoad};
use kiln::ops::linear_quantized::QuantFormat;
use kiln::train::{Generator, SampleOptions};
use kiln::{Device, Rng, Tensor};

#[path = "common/cli.rs"]
mod cli;

const MODEL_Q: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama-chat/model-q.gguf");

/// The quantized tiny Llama: logits of a decode-sized and a prefill-sized input, cached greedy
/// decoding, and `kiln chat --dtype stored` on Emu as on the CPU. Loaded on Emu directly and moved
/// there by `Llama::to_device`. The devices round the projections' inputs to 8 bits alike, but
/// the inputs themselves differ by f32 summation order (attention, RMSNorm), which can move an
/// element across a rounding boundary: one step of xd = max|x_block|/127 on one input. The logits
/// are held to 1e-3 of their largest magnitude, room for such a flip; measured on Emu (2026-12-05):
/// 2.4e-7 of it for 7 tokens (the integer kernels), 5.1e-7 for 2 x 9 (W decoded for the matmul).
#[test]
fn the_quantized_llama_runs_on_emu_as_on_the_cpu() {
    let cpu = Llama::from_gguf_with(MODEL_Q, &Device::Cpu, LlamaLoad::AsStored).unwrap();
    let quantized = |m: &Llama| {
        m.layers[0]
            .self_attn
            .q_proj
            .quantized
            .as_ref()
            .map(|q| (q.format(), q.device()))
    };
    assert_eq!(quantized(&cpu), Some((QuantFormat::Q8_0, Device::Cpu)));
    // the cache in f16 unless set otherwise, as llama.cpp keeps it
    assert_eq!(cpu.kv_dtype(), kiln::DType::F16);
    let dequantized = Llama::from_gguf_with(MODEL_Q, &Device::Cpu, LlamaLoad::F32).unwrap();
    assert_eq!(dequantized.kv_dtype(), kiln::DType::F32);
    let loaded = Llama::from_gguf_with(MODEL_Q, &Device::Emu, LlamaLoad::AsStored).unwrap();
    let moved = cpu.to_device(&Device::Emu).unwrap();
    for (how, emu) in [("loaded on emu", &loaded), ("moved to emu", &moved)] {
        assert_eq!(emu.device(), &Device::Emu, "{how}");
        assert_eq!(emu.kv_dtype(), kiln::DType::F16, "{how}");
        assert_eq!(quantized(emu), Some((QuantFormat::Q8_0, Device::Emu)), "{how}");
        let head = emu.lm_head.as_ref().and_then(|h| h.quantized.as_ref()).unwrap();
        assert_eq!(
            (head.shape(), head.device()),
            ([276, 32], Device::Emu),
            "{how}: the tied head"
        );
        // 7 rows of x under no_grad: the integer kernels on both devices; 2 x 9 = 18 rows with
        // autograd on: W decoded for the f32 product on both
        for (b, t, inference) in [(1usize, 7usize, true), (2, 9, false)] {
            let ids: Vec<u32> = (0..b * t).map(|i| (i as u32 * 37 + 5) % 276).collect();
            let logits = |m: &Llama, dev: &Device| {
                let _no_grad = inference.then(kiln::no_grad);
                let ids = Tensor::from_vec(ids.clone(), &[b, t], dev).unwrap();
                m.forward(&ids).unwrap().to_vec::<f32>().unwrap()
            };
            let (want, got) = (logits(&cpu, &Device::Cpu), logits(emu, &Device::Emu));
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            eprintln!("{how}, [{b}, {t}]: worst logit difference {worst:.3e} of {scale:.3e}");
            assert!(
                worst <= 1e-3 * scale,
                "{how}, [{b}, {t}]: worst logit difference {worst} of {scale}"
            );
        }
        let greedy = |m: &Llama| {
            let opts = SampleOptions {
                max_new_tokens: 12,
                temperature: 0.0,
                ..SampleOptions::default()
            };
            let mut gen = Generator::new(m).unwrap();
            gen.generate(&[1, 40, 41, 42], &opts, &mut Rng::new(0), |_| Ok(true))
                .unwrap()
                .tokens
        };
        assert_eq!(greedy(emu), greedy(&cpu), "{how}: greedy decoding");
    }
    // the command line: chat with the weights as stored, on each device
    let chat = |dev: &str| {
        let o = cli::kiln(&[
            "chat",
            "--gguf",
            MODEL_Q,
            "--dtype",
            "stored",
            "--device",
            dev,
            "--prompt",
            "hello there",
            "--temperature",
            "0",
            "--max-new-tokens",
            "12",
        ]);
        let (out, err) = cli::text(&o);
        assert!(o.status.success(), "{dev}: {err}");
        out
    };
    let on_cpu = chat("cpu");
    assert!(!on_cpu.trim().is_empty());
    assert_eq!(chat("emu"), on_cpu);
}
