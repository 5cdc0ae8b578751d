//! The real SmolLM2-135M-Instruct (Q4_1 GGUF) end to end against Hugging Face transformers, which
//! loads the same file with `gguf_file=` (its own reader and dequantization):
//!
//! - greedy decoding with the KV cache answers "What is the capital of France?" in the chat
//!   template with "The capital of France is Paris.", as transformers does;
//! - the logits of three prompts (that chat prompt, an English sentence, a code snippet) at their
//!   first, middle and last positions are transformers' (tests/fixtures/smollm2/logits.json, from
//!   scripts/smollm2_logits_reference.py): the same token ids, the same argmax, and a worst
//!   error of 1.9e-6 of the largest |logit| (asserted ≤ 2e-5; the issue asks 2e-3);
//! - decoding one token at a time with the quantized weights (`LlamaLoad::AsStored`), its logits
//!   follow llama.cpp's on the same file (tests/fixtures/smollm2/llamacpp_logits.json, from
//!   scripts/llamacpp_logits_reference.py) nearer than the f32 model's at the first position, with
//!   llama.cpp's argmax at 45 of 48 positions (both caches in f16) and its greedy answer's first 7 tokens;
//! - the model on Emu gives the CPU's logits for an 8-token prompt.
//!
//! Runs when `scripts/fetch-smollm2.sh` has fetched the model (or `KILN_SMOLLM2_GGUF` names the
//! file) and prints a skip message otherwise.

use kiln::model::{KvCache, Llama, LlamaLoad};
use kiln::nn::LoraConfig;
use kiln::tokenizer::{ChatMessage, Tokenizer};
use kiln::{Device, Tensor};
use std::path::Path;

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

/// Feeds `ids` through `forward_cached` one token per call, as decoding does (every product has a
/// single row of x, so a quantized model rounds x to 8 bits), and returns each position's logits
/// row, concatenated.
fn stepwise_logits(model: &Llama, cache: &mut KvCache, ids: &[u32]) -> Vec<f32> {
    let dev = *model.device();
    ids.iter()
        .flat_map(|&id| {
            let x = Tensor::from_vec(vec![id], &[1, 1], &dev).unwrap();
            model.forward_cached(&x, cache).unwrap().to_vec::<f32>().unwrap()
        })
        .collect()
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
    let head = quantized.lm_head.as_ref().and_then(|h| h.quantized.as_ref());
    assert_eq!(
        head.map(|q| q.shape().to_vec()),
        Some(vec![49152, 576]),
        "the tied head multiplies with the stored table"
    );
    assert!(f32_model.layers[0].self_attn.q_proj.quantized.is_none());
    assert_eq!(quantized.num_params(), f32_model.num_params());
    let prompt = tok
        .apply_chat_template(&[ChatMessage::user("What is the capital of France?")], true)
        .unwrap();
    let ids = tok.encode(&prompt).unwrap();
    let input = Tensor::from_vec(ids.clone(), &[1, ids.len()], &Device::Cpu).unwrap();
    let logits = |m: &Llama| m.forward(&input).unwrap().to_vec::<f32>().unwrap();
    let v = quantized.config().vocab_size;
    let argmax = |row: &[f32]| (0..v).fold(0, |best, i| if row[i] > row[best] { i } else { best });
    // (RMS of q − f, RMS of f, max |q − f|, positions with the same argmax)
    let compare = |q: &[f32], f: &[f32]| {
        let rms = |v: &mut dyn Iterator<Item = f64>| {
            let (s, n) = v.fold((0.0, 0), |(s, n), x| (s + x * x, n + 1));
            (s / n as f64).sqrt()
        };
        let diff = rms(&mut q.iter().zip(f).map(|(a, b)| (a - b) as f64));
        let scale = rms(&mut f.iter().map(|&v| v as f64));
        let max = q.iter().zip(f).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let agree = q
            .chunks(v)
            .zip(f.chunks(v))
            .filter(|(a, b)| argmax(a) == argmax(b))
            .count();
        (diff, scale, max, agree)
    };
    // The whole prompt at once through `forward`, which records for autograd: the quantized
    // weights are decoded to f32 and x is not rounded: the f32 model's logits up to summation order.
    let (diff, scale, max, agree) = compare(&logits(&quantized), &logits(&f32_model));
    eprintln!(
        "prompt of {} tokens, quantized vs f32 logits: RMS difference {diff:.2e} (logits RMS {scale:.3}), max {max:.2e}, same argmax at {agree}",
        ids.len()
    );
    assert!(diff < 1e-5 * scale, "RMS difference {diff} vs logits RMS {scale}");
    assert_eq!(agree, ids.len(), "the argmax differs");
    // The whole prompt through the cache (prefill, no_grad): the integer GEMM, x rounded to 8 bits.
    // The same rounding as decode's, so held to decode's bounds below.
    let prefill = |m: &Llama| {
        m.forward_cached(&input, &mut m.new_cache())
            .unwrap()
            .to_vec::<f32>()
            .unwrap()
    };
    let (diff, scale, max, agree) = compare(&prefill(&quantized), &prefill(&f32_model));
    eprintln!(
        "the prompt through the cache: RMS difference {diff:.4} (logits RMS {scale:.3}), max {max:.4}, same argmax at {agree}"
    );
    assert!(
        diff < 0.05 * scale,
        "prefill: RMS difference {diff} vs logits RMS {scale}"
    );
    assert!(
        10 * agree >= 9 * ids.len(),
        "prefill: the argmax differs at {} positions",
        ids.len() - agree
    );
    // One token at a time through the cache (decode): 8-bit rounding of each product's input.
    let stepwise = |m: &Llama| stepwise_logits(m, &mut m.new_cache(), &ids);
    let (diff, scale, max, agree) = compare(&stepwise(&quantized), &stepwise(&f32_model));
    eprintln!(
        "the same one token at a time: RMS difference {diff:.4} (logits RMS {scale:.3}), max {max:.4}, same argmax at {agree}"
    );
    assert!(diff < 0.05 * scale, "RMS difference {diff} vs logits RMS {scale}");
    assert!(
        10 * agree >= 9 * ids.len(),
        "the argmax differs at {} of {} positions",
        ids.len() - agree,
        ids.len()
    );
}

/// LoRA training through quantized weights (QLoRA-style): the adapters' gradients, taken through
/// `linear_quantized`'s backward (`dx = g·W`, W decoded to f32), are those of the f32 model with
/// the same adapters, up to summation order. The adapters get a non-zero B first, so that A's
/// gradient is not zero.
#[test]
fn lora_gradients_through_quantized_weights_equal_the_f32_models() {
    let Some(path) = smollm2::path() else { return };
    let mut lora = LoraConfig::new(4, 8.0);
    lora.targets = ["q_proj", "v_proj", "down_proj"].map(String::from).to_vec();
    let grads = |how: LlamaLoad| {
        let mut m = Llama::from_gguf_with(&path, &Device::Cpu, how).unwrap();
        m.add_lora(&lora, 3).unwrap();
        for (name, p) in m.lora_params() {
            if name.contains("lora_B") {
                let n = p.numel();
                let b: Vec<f32> = (0..n)
                    .map(|i| 0.01 * ((i * 7919 % 201) as f32 - 100.0) / 100.0)
                    .collect();
                p.assign(&Tensor::from_vec(b, p.shape(), &Device::Cpu).unwrap())
                    .unwrap();
            }
        }
        let ids: Vec<u32> = (0..24).map(|i| (i * 1013 + 17) % 49152).collect();
        let x = Tensor::from_vec(ids[..23].to_vec(), &[1, 23], &Device::Cpu).unwrap();
        let y = Tensor::from_vec(ids[1..].to_vec(), &[1, 23], &Device::Cpu).unwrap();
        let loss = m.loss(&x, &y).unwrap();
        let g = loss.backward().unwrap();
        let lv = loss.to_vec::<f32>().unwrap()[0];
        let gs: Vec<(String, Vec<f32>)> = m
            .lora_params()
            .into_iter()
            .map(|(name, p)| (name, g.get(&p).expect("a gradient").to_vec::<f32>().unwrap()))
            .collect();
        (lv, gs)
    };
    let (lq, gq) = grads(LlamaLoad::AsStored);
    let (lf, gf) = grads(LlamaLoad::F32);
    assert!((lq - lf).abs() <= 1e-5 * lf.abs(), "loss {lq} against {lf}");
    let mut worst = 0f64;
    for ((name, q), (_, f)) in gq.iter().zip(&gf) {
        let scale = f.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        assert!(scale > 0.0, "{name}: a zero gradient tests nothing");
        let d = q.iter().zip(f).fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64)) / scale;
        worst = worst.max(d);
        assert!(d < 1e-4, "{name}: gradients differ by {d:.2e} of their largest");
    }
    eprintln!("loss {lq} against {lf}; worst gradient difference {worst:.2e} of the largest");
}

/// tests/fixtures/smollm2/logits.json, written by scripts/smollm2_logits_reference.py: transformers'
/// logits (float64 from its own dequantization of the same file) at the first, middle and last
/// position of three prompts, each row as its exact statistics, its top 64 entries and 512 entries
/// at fixed random ids.
#[derive(serde::Deserialize)]
struct Reference {
    source: String,
    sample_ids: Vec<usize>,
    prompts: Vec<Prompt>,
}

#[derive(serde::Deserialize)]
struct Prompt {
    name: String,
    text: String,
    ids: Vec<u32>,
    rows: Vec<Row>,
}

#[derive(serde::Deserialize)]
struct Row {
    position: usize,
    argmax: usize,
    max_abs_logit: f64,
    top_ids: Vec<usize>,
    top_logits: Vec<f32>,
    sample_logits: Vec<f32>,
}

impl Row {
    /// The largest |got − stored| over the stored entries, relative to the row's largest |logit|.
    fn worst_error(&self, got: &[f32], sample_ids: &[usize]) -> f64 {
        let top = self.top_ids.iter().zip(&self.top_logits);
        let sample = sample_ids.iter().zip(&self.sample_logits);
        let worst = top
            .chain(sample)
            .fold(0f64, |m, (&id, &want)| m.max((got[id] as f64 - want as f64).abs()));
        worst / self.max_abs_logit
    }
}

/// The index of the largest value (the first of equals), after checking all are finite.
fn argmax(row: &[f32]) -> usize {
    assert!(row.iter().all(|v| v.is_finite()), "non-finite logits");
    (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
}

/// Worst |error| allowed, relative to the row's largest |logit|. The issue asks for 2e-3; kiln in
/// f32 measured 1.9e-6 (2026-12-05, the worst of the nine rows), so 2e-5 keeps a tenfold margin
/// for another CPU's summation order and catches a regression a hundred times smaller than 2e-3.
const LOGIT_RTOL: f64 = 2e-5;

#[test]
fn smollm2_logits_match_transformers() {
    let Some(path) = smollm2::path() else { return };
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2/logits.json");
    let reference: Reference = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    eprintln!("reference: {}", reference.source);
    let tok = Tokenizer::from_gguf(&path).unwrap();
    let model = Llama::from_gguf(&path, &Device::Cpu).unwrap();
    let v = model.config().vocab_size;
    assert!(reference.sample_ids.len() >= 256 && reference.sample_ids.iter().all(|&i| i < v));
    let mut worst_overall = 0f64;
    for prompt in &reference.prompts {
        // the tokenizer first: the same text must give transformers' ids
        if prompt.name.starts_with("chat") {
            let chat = [ChatMessage::user("What is the capital of France?")];
            assert_eq!(tok.apply_chat_template(&chat, true).unwrap(), prompt.text);
        }
        assert_eq!(
            tok.encode(&prompt.text).unwrap(),
            prompt.ids,
            "{}: token ids",
            prompt.name
        );
        let n = prompt.ids.len();
        let ids = Tensor::from_vec(prompt.ids.clone(), &[1, n], &Device::Cpu).unwrap();
        let logits = model.forward(&ids).unwrap().to_vec::<f32>().unwrap();
        assert_eq!(logits.len(), n * v);
        assert!(
            prompt.rows.len() >= 3,
            "{}: first, middle and last positions",
            prompt.name
        );
        for row in &prompt.rows {
            let got = &logits[row.position * v..(row.position + 1) * v];
            let err = row.worst_error(got, &reference.sample_ids);
            let what = format!("{} position {} of {n}", prompt.name, row.position);
            eprintln!(
                "{what}: argmax kiln {} transformers {}, worst error {err:.2e} of max |logit| {:.2}",
                argmax(got),
                row.argmax,
                row.max_abs_logit
            );
            assert_eq!(argmax(got), row.argmax, "{what}: argmax");
            assert!(err <= LOGIT_RTOL, "{what}: worst error {err:.3e} > {LOGIT_RTOL:.0e}");
            worst_overall = worst_overall.max(err);
            // the comparison has teeth: another position's logits fail even the 2e-3
            let other = if row.position == 0 { n - 1 } else { 0 };
            let wrong = row.worst_error(&logits[other * v..(other + 1) * v], &reference.sample_ids);
            assert!(wrong > 2e-3, "{what}: position {other} passes for it ({wrong:.2e})");
        }
    }
    eprintln!("worst logit error over all rows: {worst_overall:.2e} of the row's largest |logit|");
}

/// tests/fixtures/smollm2/llamacpp_logits.json, written by scripts/llamacpp_logits_reference.py:
/// llama.cpp's logits for the chat prompt followed by its own greedy continuation, each token fed
/// in a call of its own (llama.cpp's decode path), as rows in logits.json's format at five
/// positions; `argmax` is every fed position's, `greedy_ids` the continuation (its last id is not
/// fed, so `prompts[0].ids` is the prompt's `prompt_len` ids and then all but the last of those).
#[derive(serde::Deserialize)]
struct LlamaCppReference {
    #[serde(flatten)]
    logits: Reference,
    prompt_len: usize,
    greedy_ids: Vec<u32>,
    argmax: Vec<usize>,
}

/// Worst error of kiln's quantized decode against llama.cpp's, relative to the row's largest
/// |logit|: measured 3.7e-2 (2026-12-07, RMS 0.27 over the sampled ids), the worst of the five
/// rows; 6.9e-3 at position 0, where attention over one key is exact. Both keep the KV cache in
/// f16 (`Llama::set_kv_dtype`, llama.cpp's default): with kiln's cache in f32 it was 6.2e-2 (RMS
/// 0.39), with it in bf16 1.0e-1 (RMS 0.56: a coarser rounding, uncorrelated with llama.cpp's).
/// What is left: llama.cpp's 8-bit blocks keep their scales in f16, and its attention rounds q and
/// the attention weights to f16 too (rebuilt with an f32 cache, llama.cpp came within 2.9e-2 of
/// kiln's f32-cache decode). The twofold margin is for summation order: another CPU's kiln (AVX2
/// instead of AVX-512) perturbs the logits, and 30 layers amplify a perturbation as they amplify
/// the f16 rounding.
const QUANTIZED_VS_LLAMACPP_RTOL: f64 = 0.075;

/// At the first position (one key, so attention is exact but for llama.cpp's f16 V) kiln's
/// quantized logits are 1.6 times nearer llama.cpp's than the f32 model's (6.6e-3 against 1.08e-2
/// of the largest |logit|): what sharing llama.cpp's 8-bit rounding of activations buys. Asserted
/// with margin: at least 1.25 times.
const NEARER_BY: f64 = 1.25;

/// Positions (of 48) where kiln's quantized decode has llama.cpp's argmax: measured 45 with the f16
/// cache (2026-12-07), 46 with an f32 one and the 16-row grouped kernels, 47 with the row-at-a-time
/// ones (the f32 model 46: it differs at the last prompt position, the near tie that decides the
/// answer). Asserted one below, for the summation order of another CPU's kernels.
const QUANTIZED_SAME_ARGMAX: usize = 44;

/// Leading greedy tokens that agree with llama.cpp's: measured 7 of 12 ("L'Étoile, la" then kiln
/// says " Marseillaise" and llama.cpp " Cité"); asserted 4, the later ones following near ties.
const GREEDY_SAME_PREFIX: usize = 4;

#[test]
fn quantized_decode_is_nearer_llamacpp_than_f32() {
    let Some(path) = smollm2::path() else { return };
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2/llamacpp_logits.json");
    let reference: LlamaCppReference = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let (r, n) = (&reference.logits, reference.prompt_len);
    eprintln!("reference: {}", r.source);
    let [fed] = &r.prompts[..] else { panic!("one prompt") };
    let tok = Tokenizer::from_gguf(&path).unwrap();
    let chat = [ChatMessage::user("What is the capital of France?")];
    assert_eq!(tok.apply_chat_template(&chat, true).unwrap(), fed.text);
    assert_eq!(tok.encode(&fed.text).unwrap(), fed.ids[..n], "the prompt's ids");
    let greedy_fed = &reference.greedy_ids[..reference.greedy_ids.len() - 1];
    assert_eq!(&fed.ids[n..], greedy_fed, "the continuation is fed back");
    assert_eq!(reference.argmax.len(), fed.ids.len());

    let quantized = Llama::from_gguf_with(&path, &Device::Cpu, LlamaLoad::AsStored).unwrap();
    let f32_model = Llama::from_gguf_with(&path, &Device::Cpu, LlamaLoad::F32).unwrap();
    let v = quantized.config().vocab_size;
    // Every fed position's logits, one token at a time; then per stored row the worst error
    // relative to llama.cpp's max |logit|, and the positions with llama.cpp's argmax.
    let compare = |m: &Llama, name: &str| {
        let logits = stepwise_logits(m, &mut m.new_cache(), &fed.ids);
        let rows: Vec<&[f32]> = logits.chunks(v).collect();
        let errors: Vec<f64> = fed
            .rows
            .iter()
            .map(|row| {
                let err = row.worst_error(rows[row.position], &r.sample_ids);
                eprintln!(
                    "{name} position {}: argmax kiln {} llama.cpp {}, worst error {err:.2e} of max |logit| {:.2}",
                    row.position,
                    argmax(rows[row.position]),
                    row.argmax,
                    row.max_abs_logit
                );
                err
            })
            .collect();
        let agree = rows
            .iter()
            .zip(&reference.argmax)
            .filter(|(row, &want)| argmax(row) == want)
            .count();
        let worst = errors.iter().fold(0f64, |m, &e| m.max(e));
        // RMS of the error over the uniformly sampled ids of every stored row: steadier than a worst
        let (mut sq, mut count) = (0f64, 0);
        for row in &fed.rows {
            for (&id, &want) in r.sample_ids.iter().zip(&row.sample_logits) {
                sq += (rows[row.position][id] as f64 - want as f64).powi(2);
                count += 1;
            }
        }
        let rms = (sq / count as f64).sqrt();
        eprintln!(
            "{name}: worst error {worst:.2e}, RMS error {rms:.3} over the sampled ids, llama.cpp's argmax at {agree} of {} positions",
            rows.len()
        );
        (errors, worst, rms, agree, logits)
    };
    let (q_errors, q_worst, q_rms, q_agree, q_logits) = compare(&quantized, "AsStored");
    let (f_errors, f_worst, f_rms, f_agree, _) = compare(&f32_model, "F32");

    // Greedy decoding of the prompt fed one token at a time, as llama.cpp's was.
    let mut cache = quantized.new_cache();
    let mut logits = stepwise_logits(&quantized, &mut cache, &fed.ids[..n]);
    let mut answer = Vec::new();
    while answer.len() < reference.greedy_ids.len() {
        let next = argmax(&logits[logits.len() - v..]) as u32;
        answer.push(next);
        if Some(next) == tok.eos_id() {
            break;
        }
        logits = stepwise_logits(&quantized, &mut cache, &[next]);
    }
    let same = answer
        .iter()
        .zip(&reference.greedy_ids)
        .take_while(|(a, b)| a == b)
        .count();
    eprintln!(
        "greedy: kiln {:?}, llama.cpp {:?}: the first {same} of {} agree",
        tok.decode(&answer),
        tok.decode(&reference.greedy_ids),
        reference.greedy_ids.len()
    );

    assert!(
        q_worst <= QUANTIZED_VS_LLAMACPP_RTOL,
        "quantized: worst error {q_worst:.3e}"
    );
    assert!(f_worst > 0.0 && q_rms > 0.0 && f_rms > 0.0);
    // the first position: the rounding llama.cpp and kiln share is most of what separates them there
    assert_eq!(fed.rows[0].position, 0);
    assert!(
        q_errors[0] * NEARER_BY <= f_errors[0],
        "position 0: quantized {:.3e} is not {NEARER_BY}× nearer llama.cpp than f32 {:.3e}",
        q_errors[0],
        f_errors[0]
    );
    assert!(
        q_agree >= QUANTIZED_SAME_ARGMAX,
        "llama.cpp's argmax: quantized at {q_agree}, f32 at {f_agree} of {} positions",
        fed.ids.len()
    );
    // the answer's first token, a near tie the f32 model resolves the other way
    assert_eq!(argmax(&q_logits[(n - 1) * v..n * v]), reference.argmax[n - 1]);
    // the comparison has teeth: the first position's logits are far outside the tolerance for the last
    let last = fed.rows.last().unwrap();
    let wrong = last.worst_error(&q_logits[..v], &r.sample_ids);
    assert!(
        wrong > 5.0 * QUANTIZED_VS_LLAMACPP_RTOL,
        "position 0 passes for {} ({wrong:.2e})",
        last.position
    );
    assert!(same >= GREEDY_SAME_PREFIX, "only {same} greedy tokens agree");
}

/// The real model's logits on Emu (the CUDA kernels run in the CPU emulator) against the CPU's, for
/// the first 8 tokens of the English reference prompt: every position's full row, the same argmax
/// and a worst error within 1e-4 of the row's largest |logit| (both compute in f32; the kernels
/// sum in another order than the CPU's; measured 4.3e-6). Not ignored: on 2026-12-05, on the shared
/// 2-core machine under a load average of 16, Emu took 2.7 s to load the model and 20 s for the
/// forward, the whole test 23 s (a single measurement on a loaded machine).
#[test]
fn smollm2_on_emu_matches_the_cpu() {
    let Some(path) = smollm2::path() else { return };
    let tok = Tokenizer::from_gguf(&path).unwrap();
    let ids: Vec<u32> = tok
        .encode("The old lighthouse keeper climbed the spiral stairs")
        .unwrap();
    let ids = ids[..8].to_vec();
    let logits = |dev: Device| {
        let start = std::time::Instant::now();
        let model = Llama::from_gguf(&path, &dev).unwrap();
        let loaded = start.elapsed().as_secs_f64();
        let x = Tensor::from_vec(ids.clone(), &[1, 8], &dev).unwrap();
        let out = model.forward(&x).unwrap().to_vec::<f32>().unwrap();
        let total = start.elapsed().as_secs_f64();
        eprintln!(
            "{dev}: loaded in {loaded:.1} s, forward of 8 tokens in {:.1} s",
            total - loaded
        );
        out
    };
    let cpu = logits(Device::Cpu);
    let emu = logits(Device::Emu);
    let v = cpu.len() / 8;
    for p in 0..8 {
        let (c, e) = (&cpu[p * v..(p + 1) * v], &emu[p * v..(p + 1) * v]);
        let scale = c.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
        let worst = c
            .iter()
            .zip(e)
            .fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
        eprintln!(
            "position {p}: worst error {:.2e} of max |logit| {scale:.2}",
            worst / scale
        );
        assert_eq!(argmax(e), argmax(c), "position {p}: argmax");
        assert!(worst <= 1e-4 * scale, "position {p}: worst error {:.3e}", worst / scale);
    }
}
