//! PEFT interop both ways on the real SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to f32),
//! against transformers + PEFT reading the same GGUF file (tests/fixtures/smollm2-lora, written by
//! `scripts/make_lora_fixture.py smollm2 GGUF`, references in float64):
//!
//! - an adapter PEFT made (rank 1 on q_proj and k_proj, scale 4, a non-zero B) loaded by kiln gives
//!   PEFT's logits;
//! - an adapter `kiln finetune --gguf` trained for 2 steps (rank 1 on q_proj and v_proj, committed
//!   in kiln/) gives, in kiln, the logits `PeftModel.from_pretrained` gives with it in transformers;
//! - the tokenizer.json `kiln merge` writes encodes as transformers' and kiln's tokenizers do.
//!
//! The logits compared are the full rows of the last two positions of a chat prompt; the bound is
//! the issue's, a worst error of 2e-3 of the largest |logit| (seen on 2026-12-05: 1.4e-6 for
//! PEFT's adapter, 1.5e-6 for kiln's; the adapters move the logits by 2.8e-1 and 3.4e-2 of it).
//! Runs when `scripts/fetch-smollm2.sh` has fetched the model (or `KILN_SMOLLM2_GGUF` names the
//! file) and prints a skip message otherwise.

use kiln::model::{io, Llama};
use kiln::tokenizer::{ChatMessage, Tokenizer};
use kiln::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

#[path = "common/reference.rs"]
#[allow(dead_code)] // `expected` reads another fixture file
mod reference;
#[path = "common/smollm2.rs"]
mod smollm2;
use reference::{f32s, fixture};
#[cfg(feature = "gguf-tokenizer")]
#[path = "common/hf_tokenizer.rs"]
mod hf_tokenizer;

/// The question of the fixture's prompt (`SMOLLM2_QUESTION` in the script).
const QUESTION: &str = "What is the capital of France? Answer in one short sentence.";
/// The bound on the worst |error| relative to the largest |logit|.
const RTOL: f64 = 2e-3;

fn reference_of(name: &str) -> HashMap<String, Tensor> {
    let path = fixture("smollm2-lora").join(name);
    io::load_tensors(&path, &Device::Cpu).unwrap().0.into_iter().collect()
}

/// The logits of the last two positions of `ids` [1, T], as one flat row of 2·V values.
fn last_two(model: &Llama, ids: &Tensor) -> Vec<f32> {
    let logits = f32s(&model.forward(ids).unwrap());
    let v = model.config().vocab_size;
    logits[logits.len() - 2 * v..].to_vec()
}

/// Loads `adapter` onto SmolLM2 and compares its logits with the reference file's.
fn check(gguf: &Path, adapter: &str, reference: &str) {
    let exp = reference_of(reference);
    let ids = &exp["ids"];
    // the stored ids are transformers' tokenization of the chat prompt; kiln's agrees
    let tok = Tokenizer::from_gguf(gguf).unwrap();
    let prompt = tok.apply_chat_template(&[ChatMessage::user(QUESTION)], true).unwrap();
    assert_eq!(tok.encode(&prompt).unwrap(), ids.to_vec::<u32>().unwrap(), "prompt ids");

    let mut model = Llama::from_gguf(gguf, &Device::Cpu).unwrap();
    let base = last_two(&model, ids);
    model.load_adapter(fixture("smollm2-lora").join(adapter)).unwrap();
    let got = last_two(&model, ids);
    let want = f32s(&exp["logits"]);
    assert_eq!(got.len(), want.len(), "{adapter}: two rows of the vocabulary");
    // the adapter matters: without it the logits are far outside the tolerance
    let moved = reference::rel_error(&format!("{adapter}: base"), &base, &want);
    assert!(
        moved > 10.0 * RTOL,
        "{adapter}: the adapter moves the logits by {moved:.2e} only"
    );
    let err = reference::rel_error(adapter, &got, &want);
    eprintln!("{adapter}: worst error {err:.2e} of the largest |logit| (the adapter moves them by {moved:.2e})");
    assert!(err <= RTOL, "{adapter}: worst error {err:.3e} > {RTOL:.0e}");
    // and the same greedy next token at both positions
    let v = model.config().vocab_size;
    let argmax = |row: &[f32]| (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b });
    for p in 0..2 {
        let row = p * v..(p + 1) * v;
        assert_eq!(
            argmax(&got[row.clone()]),
            argmax(&want[row]),
            "{adapter}: argmax at row {p}"
        );
    }
}

#[test]
fn a_peft_adapter_gives_peft_logits_on_smollm2() {
    let Some(gguf) = smollm2::path() else { return };
    check(&gguf, "peft", "peft_expected.safetensors");
}

#[test]
fn a_kiln_trained_adapter_gives_kiln_logits_in_peft_on_smollm2() {
    let Some(gguf) = smollm2::path() else { return };
    check(&gguf, "kiln", "kiln_expected.safetensors");
}

/// The tokenizer `kiln merge` writes for SmolLM2 (tokenizer.json), read by the `tokenizers`
/// library, gives transformers' ids for the texts of tests/fixtures/smollm2/tokenizer_ids.json
/// (transformers' own tokenizer of the same GGUF file), and kiln's ids for chats and the texts of
/// tests/common/hf_tokenizer.rs.
#[cfg(feature = "gguf-tokenizer")]
#[test]
fn the_merged_folders_tokenizer_encodes_as_transformers_and_kiln_do() {
    let Some(gguf) = smollm2::path() else { return };
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    let Tokenizer::Gguf(g) = &tok else {
        panic!("a GGUF tokenizer")
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("llama_lora_smollm2-tokenizer");
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("tokenizer.json");
    std::fs::write(&json, g.hf_tokenizer_json().unwrap()).unwrap();
    hf_tokenizer::check_against_kiln(&json, &tok);

    let hf = tokenizers::Tokenizer::from_file(&json).unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("smollm2").join("tokenizer_ids.json")).unwrap()).unwrap();
    let texts = reference["texts"].as_array().unwrap();
    assert!(texts.len() >= 5);
    for t in texts {
        let text = t["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(t["ids"].clone()).unwrap();
        let got = hf.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(got, want, "transformers' ids of {text:?}");
    }
}
