//! `Gpt::from_hf_dir` on the forms a Hugging Face GPT-2 folder takes. Each case is the committed
//! parity fixture (tests/fixtures/gpt2-tiny) copied to a scratch folder with its config.json or
//! model.safetensors rewritten: the tensors are rebuilt with the safetensors crate from the
//! fixture's own bytes (not with kiln's writer), and a folder that loads must give PyTorch's
//! logits stored in expected.safetensors, while a refused one must name what it refuses.

use kiln::model::Gpt;
use kiln::{Device, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt2-tiny")
}

/// One tensor of a safetensors file as raw parts: (name, dtype, shape, little-endian bytes).
type Raw = (String, Dtype, Vec<usize>, Vec<u8>);

/// Every tensor of a safetensors file, in the file's order, read by the safetensors crate.
fn read_raw(path: &Path) -> Vec<Raw> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(usize, Raw)> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let offset = v.data().as_ptr() as usize - bytes.as_ptr() as usize;
            (offset, (name, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        })
        .collect();
    out.sort_by_key(|(offset, _)| *offset);
    out.into_iter().map(|(_, raw)| raw).collect()
}

fn write_raw(path: &Path, tensors: &[Raw]) {
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, data)| (name.clone(), TensorView::new(*dtype, shape.clone(), data).unwrap()));
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// A fresh copy of the fixture's config.json and model.safetensors under the target dir.
fn copy_fixture(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("gpt_hf-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture().join(file), dir.join(file)).unwrap();
    }
    dir
}

/// The fixture with its weights replaced by `edit(fixture's tensors)`.
fn with_weights(name: &str, edit: impl FnOnce(Vec<Raw>) -> Vec<Raw>) -> PathBuf {
    let dir = copy_fixture(name);
    let tensors = read_raw(&fixture().join("model.safetensors"));
    write_raw(&dir.join("model.safetensors"), &edit(tensors));
    dir
}

/// The fixture with `config.json[key] = value`.
fn with_config(name: &str, key: &str, value: serde_json::Value) -> PathBuf {
    let dir = copy_fixture(name);
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config[key] = value;
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    dir
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Loads `dir` and checks its logits on the fixture's batch against PyTorch's, elementwise to
/// 1e-5 of their largest magnitude (tests/gpt_parity.rs's figure for the logits).
fn assert_loads_the_fixture_model(dir: &Path) {
    let gpt = Gpt::from_hf_dir(dir, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let expected = read_raw(&fixture().join("expected.safetensors"));
    let find = |name: &str| expected.iter().find(|t| t.0 == name).unwrap();
    let (_, dtype, shape, bytes) = find("ids");
    assert_eq!(*dtype, Dtype::I64);
    let ids: Vec<u32> = bytes
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    let ids = Tensor::from_vec(ids, shape, &Device::Cpu).unwrap();
    let got = gpt.forward(&ids).unwrap().to_vec::<f32>().unwrap();
    let want = f32s(&find("logits").3);
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, w| m.max(w.abs()));
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * scale,
            "{}: logit {i} is {g}, PyTorch's {w}",
            dir.display()
        );
    }
}

/// Loading `dir` fails, and the message names the file and each of `needles`.
fn assert_refused(dir: &Path, file: &str, needles: &[&str]) {
    let err = match Gpt::from_hf_dir(dir, &Device::Cpu) {
        Ok(_) => panic!("{} loaded, but kiln's GPT cannot represent it", dir.display()),
        Err(e) => e.to_string(),
    };
    for needle in [file].iter().chain(needles) {
        assert!(err.contains(needle), "missing {needle:?} in: {err}");
    }
}

#[test]
fn the_fixture_as_saved_loads() {
    // the baseline the other cases edit
    assert_loads_the_fixture_model(&fixture());
}

#[test]
fn a_tied_lm_head_weight_loads_and_an_untied_one_is_refused() {
    let wte = |t: &[Raw]| t.iter().find(|r| r.0 == "transformer.wte.weight").unwrap().clone();
    // save_pretrained without tie deduplication writes the head as a copy of wte
    let dir = with_weights("tied-head", |mut t| {
        let (_, dtype, shape, data) = wte(&t);
        t.push(("lm_head.weight".to_string(), dtype, shape, data));
        t
    });
    assert_loads_the_fixture_model(&dir);
    // one element of the head changed: a model kiln would compute differently
    let dir = with_weights("untied-head", |mut t| {
        let (_, dtype, shape, mut data) = wte(&t);
        let x = f32::from_le_bytes(data[..4].try_into().unwrap());
        data[..4].copy_from_slice(&(x + 0.5).to_le_bytes());
        t.push(("lm_head.weight".to_string(), dtype, shape, data));
        t
    });
    assert_refused(&dir, "model.safetensors", &["lm_head.weight", "transformer.wte.weight"]);
}

#[test]
fn bare_gpt2model_names_load() {
    // GPT2Model.save_pretrained: no `transformer.` prefix and no head
    let dir = with_weights("bare", |t| {
        t.into_iter()
            .map(|(name, d, s, b)| (name.strip_prefix("transformer.").unwrap().to_string(), d, s, b))
            .collect()
    });
    assert_loads_the_fixture_model(&dir);
}

#[test]
fn old_causal_mask_buffers_are_ignored() {
    // transformers before 4.2x saved each layer's `attn.bias` (the lower-triangular mask,
    // [1, 1, n_positions, n_positions], f32 or bool) and `attn.masked_bias` (a scalar, -1e4)
    let n = 32;
    let tril: Vec<bool> = (0..n * n).map(|k| k % n <= k / n).collect();
    let buffers = |prefix: &str, layer: usize| -> Vec<Raw> {
        let (dtype, data) = if layer == 0 {
            let ones: Vec<u8> = tril
                .iter()
                .flat_map(|&b| f32::from(u8::from(b)).to_le_bytes())
                .collect();
            (Dtype::F32, ones)
        } else {
            (Dtype::BOOL, tril.iter().map(|&b| u8::from(b)).collect())
        };
        vec![
            (format!("{prefix}h.{layer}.attn.bias"), dtype, vec![1, 1, n, n], data),
            (
                format!("{prefix}h.{layer}.attn.masked_bias"),
                Dtype::F32,
                vec![],
                (-1e4f32).to_le_bytes().to_vec(),
            ),
        ]
    };
    for (case, prefix) in [("buffers", "transformer."), ("bare-buffers", "")] {
        let dir = with_weights(case, |t| {
            let mut t: Vec<Raw> = t
                .into_iter()
                .map(|(name, d, s, b)| {
                    (
                        format!("{prefix}{}", name.strip_prefix("transformer.").unwrap()),
                        d,
                        s,
                        b,
                    )
                })
                .collect();
            t.extend(buffers(prefix, 0));
            t.extend(buffers(prefix, 1));
            t
        });
        assert_loads_the_fixture_model(&dir);
    }
}

#[test]
fn config_options_kiln_does_not_implement_are_refused_by_name() {
    use serde_json::json;
    let cases = [
        ("n_inner", json!(100), "n_inner 100"),
        ("n_inner", json!(192.5), "n_inner 192.5"),
        ("layer_norm_epsilon", json!(1e-6), "layer_norm_epsilon"),
        ("layer_norm_epsilon", json!("1e-5"), "layer_norm_epsilon"),
        ("tie_word_embeddings", json!(false), "tie_word_embeddings"),
        (
            "scale_attn_by_inverse_layer_idx",
            json!(true),
            "scale_attn_by_inverse_layer_idx",
        ),
        ("scale_attn_weights", json!(false), "scale_attn_weights"),
        ("activation_function", json!("gelu"), "activation_function \"gelu\""),
        ("activation_function", json!("relu"), "activation_function \"relu\""),
        ("model_type", json!("imagegpt"), "model_type \"imagegpt\""),
    ];
    for (i, (key, value, needle)) in cases.into_iter().enumerate() {
        let dir = with_config(&format!("refused-{i}"), key, value);
        assert_refused(&dir, "config.json", &[needle]);
    }
}

#[test]
fn config_options_equal_to_kiln_s_model_load() {
    use serde_json::json;
    let cases = [
        ("n_inner", json!(192)), // 4·n_embd, spelled out
        ("n_inner", serde_json::Value::Null),
        ("activation_function", json!("gelu_pytorch_tanh")),
        ("layer_norm_epsilon", json!(1e-5)),
        ("tie_word_embeddings", json!(true)),
        // HF then computes the same attention with the scores upcast to f32: a precision detail
        ("reorder_and_upcast_attn", json!(true)),
    ];
    for (i, (key, value)) in cases.into_iter().enumerate() {
        assert_loads_the_fixture_model(&with_config(&format!("accepted-{i}"), key, value));
    }
    // absent keys mean HF's defaults, which are kiln's
    let dir = copy_fixture("defaults");
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for key in [
        "n_inner",
        "activation_function",
        "layer_norm_epsilon",
        "tie_word_embeddings",
        "scale_attn_weights",
        "model_type",
    ] {
        config.as_object_mut().unwrap().remove(key);
    }
    std::fs::write(&path, config.to_string()).unwrap();
    assert_loads_the_fixture_model(&dir);
}

#[test]
fn folders_that_do_not_fit_name_the_problem() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gpt_hf-empty");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    assert_refused(&dir, "config.json", &[]);
    // a config for three layers over the fixture's two
    let dir = with_config("three-layers", "n_layer", serde_json::json!(3));
    assert_refused(
        &dir,
        "model.safetensors",
        &["missing: transformer.h.2.ln_1.weight [48]"],
    );
}
