//! The real SmolLM2-135M-Instruct (Q4_1 GGUF) end to end: tokenizer, chat template, Llama::from_gguf
//! and greedy decoding with the KV cache. Hugging Face transformers, loading the same file with
//! `gguf_file=`, answers "What is the capital of France?" with "The capital of France is Paris."
//! (DESIGN.md; the check). Runs when `scripts/fetch-smollm2.sh` has fetched the model (or
//! `KILN_SMOLLM2_GGUF` names the file) and prints a skip message otherwise.

use kiln::model::Llama;
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
