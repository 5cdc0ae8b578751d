//! kiln's LoRA on the tiny random Llama (tests/fixtures/llama-tiny) against Hugging Face PEFT
//! (tests/fixtures/llama-tiny-lora, written by scripts/make_lora_fixture.py, references in
//! float64): a PEFT adapter with a non-zero B loaded into the model from the Hugging Face folder
//! and from the GGUF file (whose q/k rows are permuted, so B's rows must be too) gives PEFT's
//! logits; four AdamW steps give PEFT's losses, gradients and adapter weights; an adapter kiln
//! trained and saved gives, in PEFT, kiln's logits; the frozen base takes no gradient; recompute
//! gives the same gradients; bad adapter folders are refused by name.

use kiln::model::{io, Llama};
use kiln::nn::{LoraConfig, LORA_TARGETS};
use kiln::optim::AdamW;
use kiln::{DType, Device, Rng, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[path = "common/reference.rs"]
mod reference;
use reference::{assert_close, expected, f32s, fixture};

const LORA: &str = "llama-tiny-lora";

fn hf_model() -> Llama {
    Llama::from_hf_dir(fixture("llama-tiny"), &Device::Cpu).unwrap()
}

fn gguf_model() -> Llama {
    Llama::from_gguf(fixture("llama-tiny").join("model.gguf"), &Device::Cpu).unwrap()
}

fn peft_adapter() -> PathBuf {
    fixture(LORA).join("peft")
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    io::load_tensors(path, &Device::Cpu).unwrap().0.into_iter().collect()
}

/// A fresh scratch folder under the target dir.
fn scratch(tag: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("llama_lora-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn check_peft_logits(model: &Llama, source: &str) {
    let exp = expected(LORA);
    let logits = model.forward(&exp["ids"]).unwrap();
    assert_eq!(logits.shape(), exp["logits"].shape());
    assert_close(
        &format!("{source} + PEFT adapter logits"),
        &f32s(&logits),
        &f32s(&exp["logits"]),
        1e-5,
    );
}

#[test]
fn a_peft_adapter_gives_peft_logits_on_the_hf_folder() {
    let mut model = hf_model();
    let before = f32s(&model.forward(&expected(LORA)["ids"]).unwrap());
    model.load_adapter(peft_adapter()).unwrap();
    let after = f32s(&model.forward(&expected(LORA)["ids"]).unwrap());
    // the adapter matters: without it the logits are far from PEFT's
    assert!(reference::rel_error("base", &before, &after) > 1e-2);
    check_peft_logits(&model, "hf folder");
    let cfg = model.lora_config().unwrap();
    assert_eq!((cfg.rank, cfg.alpha, cfg.scale()), (4, 8.0, 2.0));
    assert_eq!(model.lora_params().len(), 2 * 7 * 2);
}

/// The GGUF's q and k rows are in llama.cpp's order: loading must permute B's rows of q_proj and
/// k_proj (the adapter's B is non-zero there, so an unpermuted B would change the logits).
#[test]
fn a_peft_adapter_gives_peft_logits_on_the_gguf_model() {
    let mut model = gguf_model();
    model.load_adapter(peft_adapter()).unwrap();
    check_peft_logits(&model, "gguf");
    // and B of q_proj is stored permuted, v_proj's as in the file
    let file = tensors(&peft_adapter().join("adapter_model.safetensors"));
    let params: HashMap<String, Tensor> = model.lora_params().into_iter().collect();
    let key = |m: &str| format!("base_model.model.model.layers.0.self_attn.{m}.lora_B.weight");
    assert_ne!(f32s(&params[&key("q_proj")]), f32s(&file[&key("q_proj")]));
    assert_eq!(f32s(&params[&key("v_proj")]), f32s(&file[&key("v_proj")]));
}

/// Saving writes PEFT's names and rows: loading PEFT's adapter into the GGUF model (q/k B
/// permuted) and saving it gives back exactly PEFT's tensors.
#[test]
fn saving_writes_back_what_peft_wrote() {
    let mut model = gguf_model();
    model.load_adapter(peft_adapter()).unwrap();
    let dir = scratch("roundtrip");
    model.save_adapter(&dir).unwrap();
    let want = tensors(&peft_adapter().join("adapter_model.safetensors"));
    let got = tensors(&dir.join("adapter_model.safetensors"));
    let mut names: Vec<_> = got.keys().collect();
    names.sort();
    let mut want_names: Vec<_> = want.keys().collect();
    want_names.sort();
    assert_eq!(names, want_names);
    for (name, t) in &want {
        assert_eq!(got[name].dtype(), DType::F32, "{name}");
        assert_eq!(f32s(&got[name]), f32s(t), "{name}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8.0);
    assert_eq!(config["peft_type"], "LORA");
    // and the saved folder loads into the other model kind with the same logits
    let mut hf = hf_model();
    hf.load_adapter(&dir).unwrap();
    check_peft_logits(&hf, "hf folder + kiln-saved adapter");
}

/// Four AdamW steps over the adapter (PyTorch's torch.optim.AdamW on the PEFT model, float64).
fn adamw_steps(model: &Llama) -> Vec<f32> {
    let exp = expected(LORA);
    let (ids, targets) = (&exp["train_ids"], &exp["train_targets"]);
    let mut opt = AdamW::new(model.lora_params(), 1e-2, (0.9, 0.999), 1e-8, 0.01).unwrap();
    let mut losses = Vec::new();
    for step in 0..4 {
        let loss = model.loss(ids, targets).unwrap();
        losses.push(loss.to_vec::<f32>().unwrap()[0]);
        let grads = loss.backward().unwrap();
        if step == 0 && model.rope_layout() == kiln::model::RopeLayout::Half {
            for (name, p) in model.lora_params() {
                let g = grads.get(&p).unwrap_or_else(|| panic!("no gradient for {name}"));
                assert_close(
                    &format!("grad0 {name}"),
                    &f32s(g),
                    &f32s(&exp[&format!("grad0.{name}")]),
                    1e-5,
                );
            }
        }
        opt.step(&grads).unwrap();
    }
    losses.push(model.loss(ids, targets).unwrap().to_vec::<f32>().unwrap()[0]);
    losses
}

#[test]
fn adamw_steps_match_peft() {
    let exp = expected(LORA);
    let want_losses = f32s(&exp["adamw_losses"]);
    // the Hugging Face folder: gradients, losses and weights compared directly
    let mut model = hf_model();
    model.load_adapter(peft_adapter()).unwrap();
    let losses = adamw_steps(&model);
    eprintln!("kiln {losses:?}\ntorch {want_losses:?}");
    assert_close("hf folder AdamW losses", &losses, &want_losses, 1e-5);
    for (name, p) in model.lora_params() {
        assert_close(
            &format!("final {name}"),
            &f32s(&p),
            &f32s(&exp[&format!("final.{name}")]),
            1e-5,
        );
    }
    // the GGUF model trains B of q/k in its own row order; the saved adapter is PEFT's
    let mut model = gguf_model();
    model.load_adapter(peft_adapter()).unwrap();
    assert_close("gguf AdamW losses", &adamw_steps(&model), &want_losses, 1e-5);
    let dir = scratch("trained");
    model.save_adapter(&dir).unwrap();
    for (name, t) in tensors(&dir.join("adapter_model.safetensors")) {
        assert_close(
            &format!("gguf saved {name}"),
            &f32s(&t),
            &f32s(&exp[&format!("final.{name}")]),
            1e-5,
        );
    }
}

/// The adapter in tests/fixtures/llama-tiny-lora/kiln: PEFT's adapter trained by kiln on the
/// GGUF model for three AdamW steps at a learning rate that moves it far, then saved.
fn train_kiln_adapter() -> Llama {
    let exp = expected(LORA);
    let mut model = gguf_model();
    model.load_adapter(peft_adapter()).unwrap();
    let mut opt = AdamW::new(model.lora_params(), 5e-2, (0.9, 0.999), 1e-8, 0.0).unwrap();
    for _ in 0..3 {
        let grads = model
            .loss(&exp["train_ids"], &exp["train_targets"])
            .unwrap()
            .backward()
            .unwrap();
        opt.step(&grads).unwrap();
    }
    model
}

/// Writes tests/fixtures/llama-tiny-lora/kiln/ (then run `scripts/make_lora_fixture.py check`,
/// which writes PEFT's logits for it to kiln_expected.safetensors).
#[test]
#[ignore = "writes the fixture; run by hand with scripts/make_lora_fixture.py check"]
fn write_kiln_adapter() {
    train_kiln_adapter().save_adapter(fixture(LORA).join("kiln")).unwrap();
}

/// An adapter kiln trained and saved, loaded by PeftModel.from_pretrained on transformers' model of
/// the same GGUF, gives kiln's logits.
#[test]
fn a_kiln_adapter_gives_kiln_logits_in_peft() {
    let peft = tensors(&fixture(LORA).join("kiln_expected.safetensors"));
    let mut model = gguf_model();
    model.load_adapter(fixture(LORA).join("kiln")).unwrap();
    let logits = model.forward(&peft["ids"]).unwrap();
    assert_close(
        "kiln adapter: kiln vs PEFT logits",
        &f32s(&logits),
        &f32s(&peft["logits"]),
        1e-5,
    );
    // the committed adapter is what kiln's training writes today (within f32 noise)
    let fresh = train_kiln_adapter();
    let committed: HashMap<String, Tensor> = model.lora_params().into_iter().collect();
    for (name, p) in fresh.lora_params() {
        assert_close(&format!("retrained {name}"), &f32s(&p), &f32s(&committed[&name]), 1e-5);
    }
}

#[test]
fn the_frozen_base_takes_no_gradient() {
    let exp = expected(LORA);
    for mut model in [hf_model(), gguf_model()] {
        assert!(model.params().iter().all(|(_, p)| p.is_leaf_requiring_grad()));
        model.load_adapter(peft_adapter()).unwrap();
        for (name, p) in model.params() {
            assert!(
                !p.is_leaf_requiring_grad() && !p.tracks_grad(),
                "{name} still takes a gradient"
            );
        }
        let grads = model
            .loss(&exp["train_ids"], &exp["train_targets"])
            .unwrap()
            .backward()
            .unwrap();
        let lora = model.lora_params();
        assert_eq!(grads.len(), lora.len(), "only the adapters have gradients");
        assert!(lora.iter().all(|(_, p)| grads.get(p).is_some()));
        assert!(model.params().iter().all(|(_, p)| grads.get(p).is_none()));
        // the frozen state survives a cast
        let bf16 = model.to_dtype(DType::BF16).unwrap();
        assert!(bf16.params().iter().all(|(_, p)| !p.tracks_grad()));
    }
}

/// A fresh adapter as PEFT initialises one: A uniform in ±1/√in (torch's kaiming_uniform_ with
/// a = √5), B zero, so the model computes exactly what the base did.
#[test]
fn a_fresh_adapter_starts_at_the_base_model() {
    let mut model = gguf_model();
    let ids = &expected(LORA)["ids"];
    let base = f32s(&model.forward(ids).unwrap());
    let mut cfg = LoraConfig::new(8, 16.0);
    cfg.targets = LORA_TARGETS.iter().map(|s| s.to_string()).collect();
    model.add_lora(&cfg, 1).unwrap();
    assert_eq!(f32s(&model.forward(ids).unwrap()), base);
    let mut all_a = Vec::new();
    for (name, p) in model.lora_params() {
        let v = f32s(&p);
        if name.contains("lora_B") {
            assert!(v.iter().all(|&x| x == 0.0), "{name} is not zero");
        } else {
            let fan_in = p.shape()[1] as f32;
            let bound = 1.0 / fan_in.sqrt();
            assert!(v.iter().all(|&x| x.abs() <= bound), "{name} exceeds ±{bound}");
            all_a.extend(v.iter().map(|&x| x / bound)); // U(-1, 1) if right
        }
    }
    let n = all_a.len() as f64;
    let mean = all_a.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = all_a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    eprintln!("A/bound over {n} values: mean {mean:.4}, variance {var:.4} (U(-1, 1): 0, 1/3)");
    assert!(mean.abs() < 0.03 && (var - 1.0 / 3.0).abs() < 0.02);
}

/// Gradients of the loss with and without recompute: equal, with adapters and dropout on (the
/// replay draws the same masks) and for a full fine-tune without adapters.
#[test]
fn recompute_gives_the_same_gradients() {
    let exp = expected(LORA);
    let grads_of = |model: &Llama, trained: &[(String, Tensor)]| -> (f32, Vec<Vec<f32>>) {
        let loss = model.loss(&exp["train_ids"], &exp["train_targets"]).unwrap();
        let grads = loss.backward().unwrap();
        let g = trained
            .iter()
            .map(|(n, p)| f32s(grads.get(p).unwrap_or_else(|| panic!("{n}"))))
            .collect();
        (loss.to_vec::<f32>().unwrap()[0], g)
    };
    // adapters with dropout and a non-zero B
    let mut model = gguf_model();
    let mut cfg = LoraConfig::new(4, 8.0);
    cfg.dropout = 0.25;
    model.add_lora(&cfg, 3).unwrap();
    let mut rng = Rng::new(5);
    for block in &mut model.layers {
        for lin in [&mut block.self_attn.q_proj, &mut block.self_attn.v_proj] {
            let lora = lin.lora.as_mut().unwrap();
            let b = Tensor::randn(lora.b.shape(), DType::F32, &mut rng, &Device::Cpu).unwrap();
            lora.b = b.affine(0.1, 0.0).unwrap().requires_grad();
        }
    }
    model.set_lora_training(Some(9));
    let plain = grads_of(&model, &model.lora_params());
    let mut recomputed = model.clone();
    recomputed.set_recompute(true);
    recomputed.set_lora_training(Some(9));
    let again = grads_of(&recomputed, &model.lora_params());
    assert_eq!(plain, again);
    // dropout is on: another seed changes the loss
    model.set_lora_training(Some(10));
    assert_ne!(grads_of(&model, &model.lora_params()).0, plain.0);
    // no adapters, every parameter trained
    let model = hf_model();
    let plain = grads_of(&model, &model.params());
    let mut recomputed = model.clone();
    recomputed.set_recompute(true);
    assert_eq!(plain, grads_of(&recomputed, &model.params()));
}

/// With a quantized base (QLoRA), recompute gives the loss and the gradients of the plain
/// forward: its first pass runs the projections as the replay does (the decoded product, x not
/// rounded), not as inference under `no_grad` would (x rounded to 8 bits).
#[test]
fn recompute_with_a_quantized_base_gives_the_same_loss_and_gradients() {
    let path = fixture("llama-chat").join("model-q.gguf");
    let mut model = Llama::from_gguf_with(path, &Device::Cpu, kiln::model::LlamaLoad::AsStored).unwrap();
    assert!(model.layers[0].self_attn.q_proj.quantized.is_some());
    model.add_lora(&LoraConfig::new(4, 8.0), 3).unwrap();
    let tokens = |shift: u32| -> Tensor {
        let ids: Vec<u32> = (0..2 * 9).map(|i| (i * 37 + shift) % 276).collect();
        Tensor::from_vec(ids, &[2, 9], &Device::Cpu).unwrap()
    };
    let (ids, targets) = (tokens(5), tokens(42));
    let loss_and_grads = |model: &Llama| -> (f32, Vec<Vec<f32>>) {
        let loss = model.loss(&ids, &targets).unwrap();
        let grads = loss.backward().unwrap();
        let g = model
            .lora_params()
            .iter()
            .map(|(_, p)| f32s(grads.get(p).unwrap()))
            .collect();
        (loss.to_vec::<f32>().unwrap()[0], g)
    };
    let plain = loss_and_grads(&model);
    let mut recomputed = model.clone();
    recomputed.set_recompute(true);
    assert_eq!(plain, loss_and_grads(&recomputed));
}

/// A copy of PEFT's adapter folder with its config and tensors edited.
fn edited_adapter(
    tag: &str,
    edit_config: impl Fn(&mut serde_json::Value),
    edit_tensors: impl Fn(&mut Vec<(String, Tensor)>),
) -> PathBuf {
    let dir = scratch(tag);
    let src = peft_adapter();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap()).unwrap();
    edit_config(&mut config);
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    let mut t = io::load_tensors(&src.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap()
        .0;
    edit_tensors(&mut t);
    io::save_tensors(&dir.join("adapter_model.safetensors"), &t, None).unwrap();
    dir
}

#[test]
fn bad_adapter_folders_are_refused_by_name() {
    let q_a = "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight";
    let cases: Vec<(&str, PathBuf, Vec<&str>)> = vec![
        (
            "dora",
            edited_adapter("dora", |c| c["use_dora"] = true.into(), |_| {}),
            vec!["use_dora", "adapter_config.json"],
        ),
        (
            "regex targets",
            edited_adapter("regex", |c| c["target_modules"] = ".*proj".into(), |_| {}),
            vec!["target_modules", "regular expression"],
        ),
        (
            "rank pattern",
            edited_adapter(
                "pattern",
                |c| c["rank_pattern"] = serde_json::json!({"q_proj": 2}),
                |_| {},
            ),
            vec!["rank_pattern"],
        ),
        (
            "missing tensor",
            edited_adapter("missing", |_| {}, |t| t.retain(|(n, _)| n != q_a)),
            vec!["missing: ", q_a, "[4, 48]"],
        ),
        (
            "wrong rank",
            edited_adapter("rank", |c| c["r"] = 5.into(), |_| {}),
            vec!["shape mismatch", "file [4, 48], expected [5, 48]"],
        ),
        (
            "extra target",
            edited_adapter("extra", |c| c["target_modules"] = serde_json::json!(["q_proj"]), |_| {}),
            vec!["unexpected: ", "v_proj.lora_A.weight"],
        ),
    ];
    for (what, dir, needles) in cases {
        let mut model = gguf_model();
        let err = model.load_adapter(&dir).expect_err(what).to_string();
        for needle in needles {
            assert!(err.contains(needle), "{what}: {needle:?} not in: {err}");
        }
        assert!(model.lora_config().is_none(), "{what}: a failed load left adapters");
        assert!(
            model.params().iter().all(|(_, p)| p.is_leaf_requiring_grad()),
            "{what}: froze the base"
        );
    }
    let err = gguf_model().save_adapter(scratch("none")).unwrap_err().to_string();
    assert!(err.contains("no LoRA adapters"), "{err}");
    let err = gguf_model().load_adapter(scratch("empty")).unwrap_err().to_string();
    assert!(err.contains("adapter_config.json"), "{err}");
}
