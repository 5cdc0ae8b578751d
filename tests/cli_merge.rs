//! `kiln merge` on the binary: the tiny random Llama's GGUF file (tests/fixtures/llama-tiny, whose
//! q/k rows are in llama.cpp's order) with the PEFT adapter of tests/fixtures/llama-tiny-lora
//! merged in gives, tensor for tensor, what PEFT's `merge_and_unload` gives on transformers' model
//! of the same GGUF (`merged_expected.safetensors`, float64, from `scripts/make_lora_fixture.py
//! merge`), and the folder loads back with those logits; a tied model is written without
//! `lm_head.weight`; a GGUF file's tokenizer is written as tokenizer.json (which encodes as kiln
//! does) and tokenizer_config.json; a non-empty --out and a bad adapter are refused, leaving
//! nothing behind.

use kiln::model::{io, Llama};
use kiln::nn::LoraConfig;
use kiln::optim::AdamW;
use kiln::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

#[path = "common/cli.rs"]
mod cli;
#[cfg(feature = "gguf-tokenizer")]
#[path = "common/hf_tokenizer.rs"]
mod hf_tokenizer;
#[path = "common/reference.rs"]
#[allow(dead_code)] // `expected` reads another fixture file
mod reference;
use cli::{kiln, temp_dir, text};
use reference::{assert_close, f32s, fixture};

fn tensors(path: &Path) -> BTreeMap<String, Tensor> {
    io::load_tensors(path, &Device::Cpu).unwrap().0.into_iter().collect()
}

fn merge(gguf: &Path, lora: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "merge",
        "--gguf",
        gguf.to_str().unwrap(),
        "--lora",
        lora.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    kiln(&args)
}

#[test]
fn merged_weights_and_logits_are_peft_merge_and_unload() {
    let dir = temp_dir("merge");
    let out = dir.join("merged");
    let gguf = fixture("llama-tiny").join("model.gguf");
    let o = merge(&gguf, &fixture("llama-tiny-lora").join("peft"), &out, &[]);
    let (stdout, err) = text(&o);
    assert!(o.status.success(), "{stdout}\n{err}");
    assert!(
        stdout.contains("merged") && stdout.contains("model.safetensors"),
        "{stdout}"
    );
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["merged"], "only the folder is left in its parent");

    let reference = tensors(&fixture("llama-tiny-lora").join("merged_expected.safetensors"));
    let got = tensors(&out.join("model.safetensors"));
    let want: BTreeMap<&str, &Tensor> = reference
        .iter()
        .filter_map(|(k, t)| Some((k.strip_prefix("merged.")?, t)))
        .collect();
    assert_eq!(
        got.keys().map(String::as_str).collect::<Vec<_>>(),
        want.keys().copied().collect::<Vec<_>>(),
        "Hugging Face's names, lm_head included (llama-tiny is not tied)"
    );
    let base = tensors(&fixture("llama-tiny").join("model.safetensors"));
    for (name, t) in &got {
        assert_eq!(t.shape(), want[name.as_str()].shape(), "{name}");
        assert_eq!(t.dtype(), kiln::DType::F32, "{name}");
        // f32 rounding of the float64 merge: a few ulps of the largest value
        assert_close(name, &f32s(t), &f32s(want[name.as_str()]), 1e-6);
        // every projection got an adapter with a non-zero B (the comparison above would also
        // catch q/k rows left in the GGUF's order)
        if name.contains("_proj") {
            assert!(
                reference::rel_error(name, &f32s(t), &f32s(&base[name])) > 1e-3,
                "{name} is unchanged by the merge"
            );
        }
    }

    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let hf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("llama-tiny").join("config.json")).unwrap()).unwrap();
    for key in [
        "architectures",
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "rms_norm_eps",
        "rope_parameters",
        "tie_word_embeddings",
        "vocab_size",
    ] {
        assert_eq!(
            config[key], hf[key],
            "config.json {key} (transformers' own config of llama-tiny)"
        );
    }
    assert_eq!(config["torch_dtype"], "float32");
    // llama-tiny's GGUF file has no tokenizer, so no BOS or EOS id, and no tokenizer files
    assert!(config["bos_token_id"].is_null() && config["eos_token_id"].is_null());
    assert!(stdout.contains("has no tokenizer"), "{stdout}");
    assert!(!out.join("tokenizer.json").exists() && !out.join("tokenizer_config.json").exists());

    // loaded back (Hugging Face's layout), the logits of PEFT's merged model
    let merged = Llama::from_hf_dir(&out, &Device::Cpu).unwrap();
    let logits = merged.forward(&reference["ids"]).unwrap();
    assert_close(
        "merged folder logits",
        &f32s(&logits),
        &f32s(&reference["logits"]),
        1e-5,
    );
}

/// A tied model (no lm_head.weight) with an adapter kiln trained: the folder ties the head, and
/// loaded back computes the logits of the GGUF model with the adapter, unmerged.
#[test]
fn a_tied_model_is_written_without_a_head_and_computes_the_adapted_logits() {
    let dir = temp_dir("merge-tied");
    let gguf = fixture("llama-tiny-tied").join("model.gguf");
    let mut model = Llama::from_gguf(&gguf, &Device::Cpu).unwrap();
    let mut cfg = LoraConfig::new(2, 4.0);
    cfg.targets = ["q_proj", "k_proj", "v_proj", "down_proj"].map(String::from).to_vec();
    model.add_lora(&cfg, 3).unwrap();
    // three AdamW steps make B non-zero
    let mut opt = AdamW::new(model.lora_params(), 5e-2, (0.9, 0.999), 1e-8, 0.0).unwrap();
    let ids = Tensor::from_vec(vec![1u32, 5, 9, 3, 7, 2, 11], &[1, 7], &Device::Cpu).unwrap();
    let targets = Tensor::from_vec(vec![5u32, 9, 3, 7, 2, 4, 8], &[1, 7], &Device::Cpu).unwrap();
    for _ in 0..3 {
        opt.step(&model.loss(&ids, &targets).unwrap().backward().unwrap())
            .unwrap();
    }
    let adapter = dir.join("adapter");
    model.save_adapter(&adapter).unwrap();
    let out = dir.join("merged");
    let o = merge(&gguf, &adapter, &out, &[]);
    let (stdout, err) = text(&o);
    assert!(o.status.success(), "{stdout}\n{err}");
    let got = tensors(&out.join("model.safetensors"));
    assert!(!got.contains_key("lm_head.weight") && got.contains_key("model.embed_tokens.weight"));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["tie_word_embeddings"], true);
    let merged = Llama::from_hf_dir(&out, &Device::Cpu).unwrap();
    let base = Llama::from_gguf(&gguf, &Device::Cpu).unwrap();
    let (want, plain) = (f32s(&model.forward(&ids).unwrap()), f32s(&base.forward(&ids).unwrap()));
    assert!(
        reference::rel_error("adapter", &want, &plain) > 1e-3,
        "the adapter changes the logits"
    );
    assert_close(
        "tied merged folder logits",
        &f32s(&merged.forward(&ids).unwrap()),
        &want,
        1e-5,
    );
}

/// A GGUF file with a tokenizer (llama-chat: SmolLM2's pre-tokenizer, control tokens, a ChatML
/// template) gets it in the folder: tokenizer.json encodes as kiln's GGUF tokenizer does, and
/// tokenizer_config.json and generation_config.json hold its special tokens and chat template.
#[cfg(feature = "gguf-tokenizer")]
#[test]
fn the_folder_holds_the_gguf_files_tokenizer() {
    use kiln::tokenizer::Tokenizer;
    let dir = temp_dir("merge-tokenizer");
    let gguf = fixture("llama-chat").join("model.gguf");
    let mut model = Llama::from_gguf(&gguf, &Device::Cpu).unwrap();
    model.add_lora(&LoraConfig::new(2, 2.0), 1).unwrap();
    let adapter = dir.join("adapter");
    model.save_adapter(&adapter).unwrap();
    let out = dir.join("merged");
    let o = merge(&gguf, &adapter, &out, &[]);
    let (stdout, err) = text(&o);
    assert!(o.status.success(), "{stdout}\n{err}");
    assert!(stdout.contains("tokenizer.json"), "{stdout}");
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );

    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    hf_tokenizer::check_against_kiln(&out.join("tokenizer.json"), &tok);
    let Tokenizer::Gguf(g) = &tok else {
        panic!("a GGUF tokenizer")
    };
    let json = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(out.join(name)).unwrap()).unwrap()
    };
    let config = json("tokenizer_config.json");
    let (bos, eos) = (g.bos_id().unwrap(), g.eos_id().unwrap());
    assert_eq!(config["bos_token"], g.token(bos).unwrap());
    assert_eq!(config["eos_token"], g.token(eos).unwrap());
    assert_eq!(config["chat_template"], g.chat_template().unwrap());
    assert_eq!(config["add_bos_token"], false, "llama-chat's file does not add BOS");
    assert_eq!(config["model_max_length"], model.config().max_position_embeddings);
    let generation = json("generation_config.json");
    assert_eq!(
        (generation["bos_token_id"].as_u64(), generation["eos_token_id"].as_u64()),
        (Some(bos as u64), Some(eos as u64))
    );
    assert_eq!(json("config.json")["eos_token_id"], eos);
}

#[test]
fn a_non_empty_out_and_a_bad_adapter_are_refused() {
    let dir = temp_dir("merge-refused");
    let gguf = fixture("llama-tiny").join("model.gguf");
    let peft = fixture("llama-tiny-lora").join("peft");
    let out = dir.join("merged");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let o = merge(&gguf, &peft, &out, &[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("is not empty") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(out.join("notes.txt")).unwrap(), "mine");
    // --force replaces it
    let o = merge(&gguf, &peft, &out, &["--force"]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(!out.join("notes.txt").exists() && out.join("model.safetensors").is_file());
    // an adapter made for another model: refused by load_adapter, naming the file; nothing written
    let tied = fixture("llama-tiny-tied").join("model.gguf");
    let other = dir.join("other");
    let o = merge(&tied, &peft, &other, &[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("adapter_model.safetensors") && err.contains("shape mismatch"),
        "{err}"
    );
    assert!(!other.exists());
    // a folder that is no adapter
    let o = merge(&gguf, &dir, &other, &[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("adapter_config.json"), "{err}");
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["merged"], "no staging folder is left behind");
}
