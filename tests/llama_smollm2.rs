//! The real SmolLM2-135M-Instruct (Q4_1 GGUF) end to end: tokenizer, chat template, Llama::from_gguf
//! and greedy decoding with the KV cache. Hugging Face transformers, loading the same file with
//! `gguf_file=`, answers "What is the capital of France?" with "The capital of France is Paris."
//! (DESIGN.md; the check). Runs when `scripts/fetch-smollm2.sh` has fetched the model (or
//! `KILN_SMOLLM2_GGUF` names the file) and prints a skip message otherwise.

use kiln::model::{Llama, LlamaLoad};
use kiln::tokenizer::{ChatMessage, Tokenizer};
use kiln::{Device, Tensor};

#[path = "common/smollm2.rs"]
mod smollm2;

/// Greedy decoding of at most `max_new` tokens after `prompt`, stopping at `eos`.
fn greedy(model: &Llama, prompt: &[u32], eos: Option<u32>, max_new: usize) -> Vec<u32> {
    let dev = *model.device();
    let mut cache = model.new_cache();
    let mut input = Tensor::from_vec(prompt.to_vec(), &[1, prompt.len()], &dev).unwrap();
    let mut out = Vec::new();
    for _ in 0..max_new {
        let logits = model.forward_cached(&input, &mut cache).unwrap();
        let v = model.config().vocab_size;
        let all = logits.to_vec::<f32>().unwrap();
        let last = &all[all.len() - v..];
        let next = (0..v).fold(0, |best, i| if last[i] > last[best] { i } else { best }) as u32;
        if Some(next) == eos {
            break;
        }
        out.push(next);
        input = Tensor::from_vec(vec![next], &[1, 1], &dev).unwrap();
    }
    out
}

#[test]
fn smollm2_answers_the_capital_of_france() {
    let Some(path) = smollm2::path() else { return };
    let tok = Tokenizer::from_gguf(&path).unwrap();
    let model = Llama::from_gguf(&path, &Device::Cpu).unwrap();
    let cfg = model.config();
    assert_eq!(
        (
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads
        ),
        (30, 576, 9, 3)
    );
    assert_eq!(
        (cfg.intermediate_size, cfg.vocab_size, cfg.tie_word_embeddings),
        (1536, 49152, true)
    );
    assert_eq!(model.num_params(), 134_515_008);
    let prompt = tok
        .apply_chat_template(&[ChatMessage::user("What is the capital of France?")], true)
        .unwrap();
    let ids = tok.encode(&prompt).unwrap();
    let answer = tok.decode(&greedy(&model, &ids, tok.eos_id(), 24));
    eprintln!("prompt {prompt:?}\nanswer {answer:?}");
    assert_eq!(answer.trim(), "The capital of France is Paris.");
}

/// `LlamaLoad::AsStored` keeps the Q4_1 projections in their blocks; its logits stay near those of
/// the same file dequantized to f32. The only difference is the 8-bit rounding of the projections'
/// inputs (≤ 1/254 of each 32-block's largest value), compounded over 30 layers, so the bounds are
/// empirical, with margin over what was measured (RMS difference 0.32 against a logits RMS of 8.5,
/// the same argmax at 34 of the 37 prompt positions). Not yet close enough for the greedy answer:
/// the quantized model does not say "Paris" (docs/llama.md), which is why it is not the default.
#[test]
fn quantized_weights_give_logits_near_the_dequantized_models() {
    let Some(path) = smollm2::path() else { return };
    let tok = Tokenizer::from_gguf(&path).unwrap();
    let quantized = Llama::from_gguf_with(&path, &Device::Cpu, LlamaLoad::AsStored).unwrap();
    let f32_model = Llama::from_gguf(&path, &Device::Cpu).unwrap();
    let kept = quantized
        .layers
        .iter()
        .flat_map(|l| {
            [
                &l.self_attn.q_proj,
                &l.self_attn.o_proj,
                &l.mlp.gate_proj,
                &l.mlp.down_proj,
            ]
        })
        .filter(|lin| lin.quantized.is_some())
        .count();
    assert_eq!(kept, 30 * 4, "every projection stays quantized");
    assert!(f32_model.layers[0].self_attn.q_proj.quantized.is_none());
    assert_eq!(quantized.num_params(), f32_model.num_params());
    let prompt = tok
        .apply_chat_template(&[ChatMessage::user("What is the capital of France?")], true)
        .unwrap();
    let ids = tok.encode(&prompt).unwrap();
    let input = Tensor::from_vec(ids.clone(), &[1, ids.len()], &Device::Cpu).unwrap();
    let logits = |m: &Llama| m.forward(&input).unwrap().to_vec::<f32>().unwrap();
    let (q, f) = (logits(&quantized), logits(&f32_model));
    let rms = |v: &mut dyn Iterator<Item = f64>| {
        let (s, n) = v.fold((0.0, 0), |(s, n), x| (s + x * x, n + 1));
        (s / n as f64).sqrt()
    };
    let diff = rms(&mut q.iter().zip(&f).map(|(a, b)| (a - b) as f64));
    let scale = rms(&mut f.iter().map(|&v| v as f64));
    let max = q.iter().zip(&f).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let v = quantized.config().vocab_size;
    let argmax = |row: &[f32]| (0..v).fold(0, |best, i| if row[i] > row[best] { i } else { best });
    let agree = q
        .chunks(v)
        .zip(f.chunks(v))
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    eprintln!(
        "quantized vs f32 logits over {} positions: RMS difference {diff:.4} (logits RMS {scale:.3}), max {max:.4}, same argmax at {agree}",
        ids.len()
    );
    assert!(diff < 0.05 * scale, "RMS difference {diff} vs logits RMS {scale}");
    assert!(
        10 * agree >= 9 * ids.len(),
        "the argmax differs at {} of {} positions",
        ids.len() - agree,
        ids.len()
    );
}
