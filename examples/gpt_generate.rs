//! GPT generation from a checkpoint. Given a `kiln train` run folder (or one of its checkpoint
//! folders), loads the model and its tokenizer and continues a prompt:
//!
//!     cargo run --release --example gpt_generate -- runs/my-run "ROMEO:"
//!
//! Without arguments it makes its own checkpoint first: a tiny character-level GPT trained for a
//! few hundred steps on one sentence, saved with `Gpt::save_safetensors` (the config travels in
//! the file's metadata), then loaded back into a fresh model and asked to continue the sentence.

use kiln::model::{io, Gpt, GptConfig};
use kiln::optim::{AdamW, AdamWConfig};
use kiln::tokenizer::Tokenizer;
use kiln::train::{generate, SampleOptions};
use kiln::{Device, Error, Result, Rng, Tensor};
use std::path::Path;

const DEV: Device = Device::Cpu;
const TEXT: &str = "the quick brown fox jumps over the lazy dog. ";

/// Greedy continuation of `prompt` by `n` tokens.
fn continue_text(model: &Gpt, tok: &Tokenizer, prompt: &str, n: usize) -> Result<String> {
    let opts = SampleOptions {
        max_new_tokens: n,
        temperature: 0.0, // greedy: the most likely token each time
        ..SampleOptions::default()
    };
    let ids = generate(model, &tok.encode(prompt)?, &opts, &mut Rng::new(0), |_| Ok(true))?;
    Ok(tok.decode(&ids))
}

/// Trains a tiny GPT on [`TEXT`] repeated and saves it to `path`; returns its tokenizer.
fn make_checkpoint(path: &Path, steps: usize) -> Result<Tokenizer> {
    let tok = Tokenizer::char_from_text(TEXT);
    let cfg = GptConfig {
        vocab_size: tok.vocab_size(),
        block_size: 32,
        n_layer: 2,
        n_head: 2,
        n_embd: 32,
        dropout: 0.0,
        bias: true,
    };
    let model = Gpt::new(cfg, &mut Rng::new(0), &DEV)?;
    let mut opt = AdamW::with_config(
        model.params(),
        AdamWConfig {
            lr: 3e-3,
            ..AdamWConfig::default()
        },
    )?;
    let ids = tok.encode(&TEXT.repeat(3))?;
    let mut rng = Rng::new(1);
    for _ in 0..steps {
        // a batch of 8 windows of 32 tokens at random offsets; targets are the next tokens
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for _ in 0..8 {
            let at = rng.below((ids.len() - 33) as u64) as usize;
            x.extend_from_slice(&ids[at..at + 32]);
            y.extend_from_slice(&ids[at + 1..at + 33]);
        }
        let loss = model.loss(
            &Tensor::from_vec(x, &[8, 32], &DEV)?,
            &Tensor::from_vec(y, &[8, 32], &DEV)?,
        )?;
        opt.step(&loss.backward()?)?;
    }
    model.save_safetensors(path)?;
    Ok(tok)
}

/// A GPT from a file written by `Gpt::save_safetensors`: the config from its metadata, then the
/// weights, checked name by name and shape by shape.
fn load_checkpoint(path: &Path) -> Result<Gpt> {
    let (_, metadata) = io::load_tensors(path, &DEV)?;
    let cfg: GptConfig = metadata
        .get(io::CONFIG_KEY)
        .and_then(|json| serde_json::from_str(json).ok())
        .ok_or_else(|| Error::Format {
            file: path.display().to_string(),
            what: format!("no GPT config under the metadata key {}", io::CONFIG_KEY),
        })?;
    let mut model = Gpt::new(cfg, &mut Rng::new(0), &DEV)?;
    model.load_safetensors(path)?;
    Ok(model)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(run) = args.first() {
        let loaded = kiln::train::checkpoint::load(Path::new(run), &DEV)?;
        let prompt = args.get(1).map_or("\n", String::as_str);
        println!(
            "{prompt}{}",
            continue_text(&loaded.model, &loaded.tokenizer, prompt, 200)?
        );
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("kiln-example-gpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("tiny-gpt.safetensors");
    let tok = make_checkpoint(&path, 300)?;
    let model = load_checkpoint(&path)?;
    std::fs::remove_dir_all(&dir)?;
    println!("the quick{}", continue_text(&model, &tok, "the quick", 40)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reloaded_checkpoint_generates_what_the_trained_model_learned() {
        let dir = std::env::temp_dir().join(format!("kiln-example-gpt-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tiny-gpt.safetensors");
        let tok = make_checkpoint(&path, 300).unwrap();
        let model = load_checkpoint(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let text = continue_text(&model, &tok, "the quick", 11).unwrap();
        assert_eq!(text, " brown fox ", "the model memorised its one sentence");
    }
}
