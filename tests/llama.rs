//! kiln's Llama against PyTorch / Hugging Face transformers on the tiny random models of
//! tests/fixtures/llama-tiny{,-tied}/ (written by scripts/make_llama_fixture.py, references in
//! float64): logits from the Hugging Face folder and from the GGUF file (whose q/k rows are
//! permuted for llama.cpp's interleaved rope), the KV cache against the uncached forward, gradients
//! and three SGD steps against PyTorch (both models, both sources), Emu against the CPU, bf16 against f32, and the errors of a
//! folder that does not fit its config.

use kiln::model::{Llama, RopeLayout};
use kiln::optim::Sgd;
use kiln::{DType, Device, Tensor};
use std::path::PathBuf;

#[path = "common/reference.rs"]
mod reference;
use reference::{assert_close, expected, f32s, fixture, rel_error};

#[test]
fn the_checks_can_fail() {
    let want = [1.0f32, -2.0, 4.0];
    assert!(rel_error("x", &[1.0, -2.0, 4.0001], &want) < 1e-4);
    assert!(rel_error("x", &[1.0, -2.0, 4.01], &want) > 1e-3);
    assert!(std::panic::catch_unwind(|| rel_error("x", &[1.0, f32::NAN, 4.0], &want)).is_err());
}

const MODELS: [&str; 2] = ["llama-tiny", "llama-tiny-tied"];

/// The logits of ids_a and ids_b of fixture `name` match transformers' within `rtol`.
fn check_logits(model: &Llama, name: &str, source: &str, rtol: f64) {
    let exp = expected(name);
    for key in ["a", "b"] {
        let ids = exp[&format!("ids_{key}")].to_device(model.device()).unwrap();
        let logits = model.forward(&ids).unwrap();
        let want = &exp[&format!("logits_{key}")];
        assert_eq!(logits.shape(), want.shape());
        assert_eq!(logits.dtype(), DType::F32);
        assert_close(
            &format!("{name} {source} logits_{key}"),
            &f32s(&logits),
            &f32s(want),
            rtol,
        );
    }
}

#[test]
fn hf_folder_logits_match_transformers() {
    for name in MODELS {
        let model = Llama::from_hf_dir(fixture(name), &Device::Cpu).unwrap();
        assert_eq!(model.rope_layout(), RopeLayout::Half);
        assert_eq!(model.config().tie_word_embeddings, name.ends_with("tied"));
        assert_eq!(model.num_params(), model.config().num_params());
        check_logits(&model, name, "hf", 1e-5);
    }
}

#[test]
fn gguf_logits_match_transformers() {
    // model.gguf holds the same weights with the q/k rows permuted as llama.cpp's converter does;
    // kiln keeps them and rotates interleaved pairs
    for name in MODELS {
        let model = Llama::from_gguf(fixture(name).join("model.gguf"), &Device::Cpu).unwrap();
        assert_eq!(model.rope_layout(), RopeLayout::Interleaved);
        let hf = Llama::from_hf_dir(fixture(name), &Device::Cpu).unwrap();
        assert_eq!(model.config(), hf.config());
        check_logits(&model, name, "gguf", 1e-5);
    }
}

/// The model of fixture `name` from its HF folder and from its GGUF file.
fn both_sources(name: &str, dev: &Device) -> [Llama; 2] {
    [
        Llama::from_hf_dir(fixture(name), dev).unwrap(),
        Llama::from_gguf(fixture(name).join("model.gguf"), dev).unwrap(),
    ]
}

#[test]
fn kv_cache_generation_equals_the_uncached_forward() {
    for (name, model) in MODELS
        .iter()
        .flat_map(|&name| both_sources(name, &Device::Cpu).map(|m| (name, m)))
    {
        let what = format!("{name} {:?}", model.rope_layout());
        let ids: Vec<u32> = expected(name)["ids_b"].to_vec::<u32>().unwrap();
        let n = ids.len();
        let full = f32s(
            &model
                .forward(&Tensor::from_vec(ids.clone(), &[1, n], &Device::Cpu).unwrap())
                .unwrap(),
        );
        let v = model.config().vocab_size;
        // a prompt of 4, then one token at a time, then the last 3 together
        let mut cache = model.new_cache();
        let mut got = Vec::new();
        let mut pos = 0;
        for len in std::iter::once(4).chain(std::iter::repeat_n(1, n - 7)).chain([3]) {
            let chunk = Tensor::from_vec(ids[pos..pos + len].to_vec(), &[1, len], &Device::Cpu).unwrap();
            let logits = model.forward_cached(&chunk, &mut cache).unwrap();
            assert_eq!(logits.shape(), [1, len, v]);
            got.extend(f32s(&logits));
            pos += len;
            assert_eq!(cache.len(), pos);
        }
        assert_eq!(pos, n);
        assert_close(&format!("{what} cached vs uncached"), &got, &full, 1e-6);
        // the last position alone (the LM head on one row) after a prompt of n - 1
        let mut cache = model.new_cache();
        let prompt = Tensor::from_vec(ids[..n - 1].to_vec(), &[1, n - 1], &Device::Cpu).unwrap();
        let last = model.forward_cached_last(&prompt, &mut cache).unwrap();
        assert_eq!((last.shape(), cache.len()), (&[1, v][..], n - 1));
        assert_close(
            &format!("{what} last position"),
            &f32s(&last),
            &full[(n - 2) * v..(n - 1) * v],
            1e-6,
        );
    }
}

/// `hf` (rows of a q or k projection in Hugging Face's order, `heads` heads of `hs` rows of `cols`)
/// with its rows in a GGUF file's order: llama.cpp's converter moves row i + j·hs/2 of each head
/// (j = 0, 1) to row 2i + j (docs/llama.md; scripts/make_llama_fixture.py's permute_for_gguf).
fn permute_rows_for_gguf(hf: &[f32], heads: usize, hs: usize, cols: usize) -> Vec<f32> {
    assert_eq!(hf.len(), heads * hs * cols);
    let mut out = vec![f32::NAN; hf.len()];
    for h in 0..heads {
        for i in 0..hs / 2 {
            for j in 0..2 {
                let (from, to) = (h * hs + j * hs / 2 + i, h * hs + 2 * i + j);
                out[to * cols..(to + 1) * cols].copy_from_slice(&hf[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

#[test]
fn the_gguf_row_permutation_is_the_converters() {
    // one head of 4 rows [r0, r1, r2, r3] (pairs (0, 2) and (1, 3) in HF's halves) becomes
    // [r0, r2, r1, r3]; a second head follows the same way
    let hf: Vec<f32> = (0..8).map(|r| r as f32).collect();
    assert_eq!(permute_rows_for_gguf(&hf, 2, 4, 1), [0., 2., 1., 3., 4., 6., 5., 7.]);
}

/// PyTorch's gradient of parameter `name`, in the row order of a model loaded from `source`.
fn reference_grad(want: &Tensor, name: &str, model: &Llama) -> Vec<f32> {
    let cfg = model.config();
    let heads = match name {
        _ if model.rope_layout() == RopeLayout::Half => None,
        n if n.ends_with("q_proj.weight") => Some(cfg.num_attention_heads),
        n if n.ends_with("k_proj.weight") => Some(cfg.num_key_value_heads),
        _ => None,
    };
    match heads {
        Some(h) => permute_rows_for_gguf(&f32s(want), h, cfg.head_dim(), cfg.hidden_size),
        None => f32s(want),
    }
}

#[test]
fn three_sgd_steps_match_pytorch() {
    // both models (llama-tiny-tied: the token table's gradient sums its two uses), each from its
    // Hugging Face folder and from its GGUF file (interleaved rope, q and k rows permuted)
    for (name, model) in MODELS
        .iter()
        .flat_map(|&name| both_sources(name, &Device::Cpu).map(|m| (name, m)))
    {
        let what = format!("{name} {:?}", model.rope_layout());
        let exp = expected(name);
        let (ids, targets) = (&exp["train_ids"], &exp["train_targets"]);
        let want_losses = f32s(&exp["sgd_losses"]);
        let steps = want_losses.len() - 1;
        let params = model.params();
        let mut opt = Sgd::new(params.clone(), 0.5, 0.0, 0.0).unwrap();
        let mut losses = Vec::new();
        for step in 0..steps {
            let loss = model.loss(ids, targets).unwrap();
            losses.push(loss.to_scalar::<f32>().unwrap());
            let grads = loss.backward().unwrap();
            let tag = match step {
                0 => Some("grad0"),
                s if s == steps - 1 => Some("grad_last"),
                _ => None,
            };
            if let Some(tag) = tag {
                let n_grads = exp.keys().filter(|k| k.starts_with(&format!("{tag}."))).count();
                assert_eq!(params.len(), n_grads, "{what}: parameters against PyTorch's");
                for (pname, p) in &params {
                    let want = &exp[&format!("{tag}.{pname}")];
                    let got = grads.get(p).unwrap_or_else(|| panic!("no gradient for {pname}"));
                    assert_eq!(got.shape(), want.shape(), "{pname}");
                    assert_close(
                        &format!("{what} step {step} {tag}.{pname}"),
                        &f32s(got),
                        &reference_grad(want, pname, &model),
                        2e-5,
                    );
                }
            }
            opt.step(&grads).unwrap();
        }
        losses.push(model.loss(ids, targets).unwrap().to_scalar::<f32>().unwrap());
        eprintln!("{what}: kiln SGD losses {losses:?}\n{what}: torch SGD losses {want_losses:?}");
        for (i, (g, w)) in losses.iter().zip(&want_losses).enumerate() {
            assert!((g - w).abs() <= 1e-5 * w.abs(), "{what} loss {i}: kiln {g}, torch {w}");
        }
    }
}

/// Logits and every gradient of the loss on `dev`.
fn forward_backward(dev: &Device) -> (Vec<f32>, Vec<(String, Vec<f32>)>) {
    let model = Llama::from_hf_dir(fixture("llama-tiny"), dev).unwrap();
    let exp = expected("llama-tiny");
    let ids = exp["train_ids"].to_device(dev).unwrap();
    let targets = exp["train_targets"].to_device(dev).unwrap();
    let logits = f32s(&model.forward(&ids).unwrap());
    let grads = model.loss(&ids, &targets).unwrap().backward().unwrap();
    let g = model
        .params()
        .into_iter()
        .map(|(name, p)| {
            assert_eq!(p.device(), dev);
            let g = f32s(grads.get(&p).unwrap());
            (name, g)
        })
        .collect();
    (logits, g)
}

#[test]
fn emu_equals_the_cpu_forward_and_backward() {
    let (cpu_logits, cpu_grads) = forward_backward(&Device::Cpu);
    let (emu_logits, emu_grads) = forward_backward(&Device::Emu);
    assert_close("emu vs cpu logits", &emu_logits, &cpu_logits, 1e-5);
    for ((name, e), (_, c)) in emu_grads.iter().zip(&cpu_grads) {
        assert_close(&format!("emu vs cpu grad {name}"), e, c, 1e-4);
    }
}

#[test]
fn emu_generation_with_the_cache_equals_the_cpu() {
    let ids: Vec<u32> = vec![5, 17, 3, 99, 42];
    let run = |dev: &Device, gguf: bool| {
        let [hf_model, gguf_model] = both_sources("llama-tiny", dev);
        let model = if gguf { gguf_model } else { hf_model };
        let mut cache = model.new_cache();
        let mut out = f32s(
            &model
                .forward_cached(&Tensor::from_vec(ids.clone(), &[1, 5], dev).unwrap(), &mut cache)
                .unwrap(),
        );
        for id in [7u32, 8, 9] {
            out.extend(f32s(
                &model
                    .forward_cached(&Tensor::from_vec(vec![id], &[1, 1], dev).unwrap(), &mut cache)
                    .unwrap(),
            ));
        }
        out
    };
    for gguf in [false, true] {
        assert_close(
            &format!("emu vs cpu cached logits (gguf: {gguf})"),
            &run(&Device::Emu, gguf),
            &run(&Device::Cpu, gguf),
            1e-5,
        );
    }
}

#[test]
fn bf16_follows_f32() {
    for name in MODELS {
        let model = Llama::from_hf_dir(fixture(name), &Device::Cpu).unwrap();
        let exp = expected(name);
        let want = f32s(&exp["logits_b"]);
        for bf16 in [model.to_dtype(DType::BF16).unwrap(), {
            let mut m = model.clone();
            m.set_dtype(DType::BF16).unwrap();
            m
        }] {
            let logits = bf16.forward(&exp["ids_b"]).unwrap();
            assert_eq!(logits.dtype(), DType::F32);
            assert_close(&format!("{name} bf16 logits"), &f32s(&logits), &want, 3e-2);
        }
    }
}

/// `to_dtype(BF16)` and `freeze_base` on the CPU copy the projections' weights end to end into one
/// buffer (views of it, read from huge pages in decode): each shares that storage and holds its
/// value (rounded to bf16 by the cast), every other parameter (the norms and the token table, which
/// the row ops read whole) has its own, and the logits are bit for bit those of the same values in
/// separate buffers. A trainable f32 model is not packed.
#[test]
fn bf16_and_frozen_models_have_their_projections_in_one_buffer_with_the_same_logits() {
    use kiln::nn::Params;
    for name in MODELS {
        let model = Llama::from_hf_dir(fixture(name), &Device::Cpu).unwrap();
        let packed = model.to_dtype(DType::BF16).unwrap();
        let params = packed.params();
        let is_matrix = |n: &str| n.ends_with("_proj.weight") || n == "lm_head.weight";
        let first = &params.iter().find(|(n, _)| is_matrix(n)).unwrap().1;
        for ((n, p), (_, f32_param)) in params.iter().zip(model.params()) {
            assert_eq!(p.same_storage(first), is_matrix(n), "{name}: {n}");
            assert_eq!(
                p.is_leaf_requiring_grad(),
                f32_param.is_leaf_requiring_grad(),
                "{name}: {n}"
            );
            let rounded = f32_param.to_dtype(DType::BF16).unwrap().to_vec::<f32>().unwrap();
            assert_eq!(p.to_vec::<f32>().unwrap(), rounded, "{name}: {n}");
        }
        // the same values, each parameter in a buffer of its own
        let mut apart = packed.clone();
        apart.visit_params("", &mut |_, p| *p = p.copy().unwrap());
        assert!(apart
            .params()
            .iter()
            .all(|(n, p)| !is_matrix(n) || !p.same_storage(first)));
        let ids = &expected(name)["ids_b"];
        let (a, b) = (packed.forward(ids).unwrap(), apart.forward(ids).unwrap());
        assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap(), "{name}");
        // a trainable f32 model is not packed: its parameters stay whole tensors for AdamW
        let f32_model = model.to_dtype(DType::F32).unwrap();
        let f32_params: Vec<_> = f32_model.params().into_iter().filter(|(n, _)| is_matrix(n)).collect();
        assert!(!f32_params[1].1.same_storage(&f32_params[0].1), "{name}");
        // a frozen one is, with the same values and the same logits
        let mut frozen = model.clone();
        frozen.freeze_base();
        let params = frozen.params();
        let first = &params.iter().find(|(n, _)| is_matrix(n)).unwrap().1;
        for ((n, p), (_, q)) in params.iter().zip(model.params()) {
            assert_eq!(p.same_storage(first), is_matrix(n), "{name}: frozen {n}");
            assert!(!p.is_leaf_requiring_grad(), "{name}: frozen {n}");
            assert_eq!(
                p.to_vec::<f32>().unwrap(),
                q.to_vec::<f32>().unwrap(),
                "{name}: frozen {n}"
            );
        }
        let (a, b) = (frozen.forward(ids).unwrap(), model.forward(ids).unwrap());
        assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap(), "{name}: frozen");
        // frozen again (as loading an adapter does): the same buffer, not a new copy
        frozen.freeze_base();
        assert!(
            frozen
                .params()
                .iter()
                .all(|(n, p)| !is_matrix(n) || p.same_storage(first)),
            "{name}"
        );
    }
}

/// Copies fixture `name` to a fresh temporary folder, with `edit` applied to its config.json.
fn edited_copy(name: &str, tag: &str, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-llama-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture(name).join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(name).join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    dir
}

#[test]
fn a_folder_that_does_not_fit_its_config_is_refused_by_tensor() {
    let dir = edited_copy("llama-tiny", "shape", |c| c["intermediate_size"] = 81.into());
    let e = Llama::from_hf_dir(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight: file [80, 48], config [81, 48]")
            && e.contains("model.layers.1.mlp.down_proj.weight: file [48, 80], config [48, 81]"),
        "{e}"
    );
    let dir = edited_copy("llama-tiny", "tied", |c| c["tie_word_embeddings"] = true.into());
    let e = Llama::from_hf_dir(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains("lm_head.weight differs from model.embed_tokens.weight"),
        "{e}"
    );
    let dir = edited_copy("llama-tiny", "layers", |c| c["num_hidden_layers"] = 3.into());
    let e = Llama::from_hf_dir(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains("missing: model.layers.2.self_attn.q_proj.weight [48, 48]"),
        "{e}"
    );
    let dir = edited_copy("llama-tiny", "scaling", |c| {
        c["rope_parameters"] = serde_json::json!({"rope_theta": 10000.0, "rope_type": "llama3", "factor": 8.0})
    });
    let e = Llama::from_hf_dir(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("llama3") && e.contains("not supported"), "{e}");
    let dir = edited_copy("llama-tiny", "heads", |c| c["num_key_value_heads"] = 3.into());
    let e = Llama::from_hf_dir(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("num_key_value_heads (3)"), "{e}");
}

#[test]
fn bad_ids_and_too_long_contexts_are_errors() {
    let model = Llama::from_hf_dir(fixture("llama-tiny-tied"), &Device::Cpu).unwrap();
    let f = Tensor::from_vec(vec![1f32, 2.0], &[1, 2], &Device::Cpu).unwrap();
    assert!(model.forward(&f).unwrap_err().to_string().contains("u32"));
    let out_of_vocab = Tensor::from_vec(vec![1u32, 96], &[1, 2], &Device::Cpu).unwrap();
    assert!(model.forward(&out_of_vocab).is_err());
    let long = Tensor::from_vec(vec![1u32; 33], &[1, 33], &Device::Cpu).unwrap();
    let e = model.forward(&long).unwrap_err().to_string();
    assert!(e.contains("max_position_embeddings 32"), "{e}");
    // the cache is left as it was after a failed call
    let mut cache = model.new_cache();
    model
        .forward_cached(
            &Tensor::from_vec(vec![1u32; 30], &[1, 30], &Device::Cpu).unwrap(),
            &mut cache,
        )
        .unwrap();
    assert!(model
        .forward_cached(
            &Tensor::from_vec(vec![1u32; 3], &[1, 3], &Device::Cpu).unwrap(),
            &mut cache
        )
        .is_err());
    assert_eq!(cache.len(), 30);
}

/// `set_kv_dtype` to bf16 or f16 on an f32 model: with a cache the attention computes on q, k, v
/// rounded to that dtype after RoPE and the cache holds it. The cached logits stay near
/// transformers' (f64) by that rounding of the attention's operands and output only (measured: bf16
/// 5.3e-3 and 6.1e-3 of the largest logit, asserted 1e-2; f16, whose step is 8 times finer, 5.9e-4
/// and 5.0e-4, asserted 2e-3), nearer than the whole model in bf16 (1.5e-2, 1.4e-2); they differ
/// from the f32 cache's (the setting acts); one token at a time gives the whole prompt's cached
/// logits (f16: measured within 1.3e-5; bf16: 5.3e-3, asserted 1e-2, where the CPU multiplies
/// bf16 in bf16 and the prompt's attention rounds its probabilities to bf16 for P·V, which one
/// query row at a time, on the streamed products, does not); the uncached forward (training,
/// scoring) is the f32 model's, bit for bit; the cache's buffers take half the f32 cache's bytes;
/// and a cache filled in one dtype refuses positions of another.
#[test]
fn a_half_kv_cache_in_an_f32_model_follows_f32() {
    for name in MODELS {
        let f32_model = Llama::from_hf_dir(fixture(name), &Device::Cpu).unwrap();
        assert_eq!(f32_model.kv_dtype(), DType::F32);
        let exp = expected(name);
        let want = f32s(&exp["logits_b"]);
        let ids: Vec<u32> = exp["ids_b"].to_vec::<u32>().unwrap();
        let cached = |m: &Llama, cache: &mut kiln::model::KvCache| {
            let logits = m.forward_cached(&exp["ids_b"], cache).unwrap();
            assert_eq!(logits.dtype(), DType::F32);
            f32s(&logits)
        };
        let f32_cached = cached(&f32_model, &mut f32_model.new_cache());
        let whole_bf16 = f32s(&f32_model.to_dtype(DType::BF16).unwrap().forward(&exp["ids_b"]).unwrap());
        let err_whole = rel_error(&format!("{name} bf16 model"), &whole_bf16, &want);
        for (kv, rtol, prompt_vs_tokens) in [(DType::BF16, 1e-2, 1e-2), (DType::F16, 2e-3, 1e-4)] {
            let what = format!("{name}, {kv} cache");
            let mut model = f32_model.clone();
            model.set_kv_dtype(kv).unwrap();
            assert_eq!((model.dtype(), model.kv_dtype()), (DType::F32, kv));
            let logits = cached(&model, &mut model.new_cache());
            let err = rel_error(&what, &logits, &want);
            eprintln!("{what}: worst error {err:.2e} (the whole model in bf16: {err_whole:.2e})");
            assert!(err <= rtol && err < err_whole, "{what}: {err:.2e}");
            assert_ne!(logits, f32_cached, "{what}: the kv dtype changed nothing");
            let uncached = |m: &Llama| f32s(&m.forward(&exp["ids_b"]).unwrap());
            assert_eq!(
                uncached(&model),
                uncached(&f32_model),
                "{what}: the uncached forward changed"
            );

            let (mut cache, mut f32_cache) = (model.new_cache(), f32_model.new_cache());
            let mut got = Vec::new();
            for (i, &id) in ids.iter().enumerate() {
                let one = Tensor::from_vec(vec![id], &[1, 1], &Device::Cpu).unwrap();
                got.extend(f32s(&model.forward_cached(&one, &mut cache).unwrap()));
                f32_model.forward_cached(&one, &mut f32_cache).unwrap();
                assert_eq!(cache.bytes() * 2, f32_cache.bytes(), "{what} at {i}");
            }
            // the same values in another summation order (the decode's streamed products against
            // the prompt's tiles), so an element of the output may round to its neighbour; in
            // bf16 the prompt's P rounded to bf16 besides
            assert_close(&format!("{what}, one token at a time"), &got, &logits, prompt_vs_tokens);
            // the tiny layers' keys and values at the first capacity of 64 positions, 2 bytes each
            let cfg = model.config();
            let hs = cfg.hidden_size / cfg.num_attention_heads;
            assert_eq!(
                cache.bytes(),
                cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * 64 * hs * 2
            );

            let one = Tensor::from_vec(vec![ids[0]], &[1, 1], &Device::Cpu).unwrap();
            let e = f32_model.forward_cached(&one, &mut cache).unwrap_err().to_string();
            assert!(
                e.contains("kv cache") && e.contains(kv.as_str()) && e.contains("f32"),
                "{e}"
            );
            assert_eq!(cache.len(), ids.len(), "the refused step left the cache as it was");
        }
        let e = f32_model.clone().set_kv_dtype(DType::F64).unwrap_err().to_string();
        assert!(e.contains("f32, bf16 or f16") && e.contains("f64"), "{e}");
    }
}
