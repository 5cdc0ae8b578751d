//! [`GptConfig`]: the hyper-parameters that fix a GPT's shape, with named presets.

use crate::{Error, Result};

/// The shape of a GPT-2-style model.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GptConfig {
    /// Number of token ids (rows of the embedding table and of the logits).
    pub vocab_size: usize,
    /// The longest context: rows of the position-embedding table.
    pub block_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// Width of the residual stream, C.
    pub n_embd: usize,
    /// Dropout probability in training (embeddings, attention weights, residual branches).
    pub dropout: f64,
    /// Biases in every Linear and LayerNorm (GPT-2: true; nanoGPT's small runs: false).
    pub bias: bool,
}

/// Preset names accepted by [`GptConfig::preset`].
pub const PRESETS: &[&str] = &["tiny", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"];

impl GptConfig {
    /// A named configuration:
    /// - `tiny`: nanoGPT's CPU shakespeare_char shape (4 layers, 4 heads, C = 128, context 64,
    ///   no biases) with a byte-sized vocabulary (256); override `vocab_size` for other tokenizers.
    /// - `gpt2` (124M), `gpt2-medium` (350M), `gpt2-large` (774M), `gpt2-xl` (1558M): OpenAI's
    ///   shapes (vocabulary 50257, context 1024, biases).
    pub fn preset(name: &str) -> Result<GptConfig> {
        let gpt2 = |n_layer, n_head, n_embd| GptConfig {
            vocab_size: 50257,
            block_size: 1024,
            n_layer,
            n_head,
            n_embd,
            dropout: 0.0,
            bias: true,
        };
        Ok(match name {
            "tiny" => GptConfig {
                vocab_size: 256,
                block_size: 64,
                n_layer: 4,
                n_head: 4,
                n_embd: 128,
                dropout: 0.0,
                bias: false,
            },
            "gpt2" => gpt2(12, 12, 768),
            "gpt2-medium" => gpt2(24, 16, 1024),
            "gpt2-large" => gpt2(36, 20, 1280),
            "gpt2-xl" => gpt2(48, 25, 1600),
            _ => {
                return Err(Error::invalid(
                    "GptConfig::preset",
                    format!("unknown preset {name:?}; the presets are {}", PRESETS.join(", ")),
                ))
            }
        })
    }

    /// Checks that the numbers describe a model that can be built.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::invalid("GptConfig", msg));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("block_size", self.block_size),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
        ] {
            if v == 0 {
                return fail(format!("{name} must be at least 1"));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return fail(format!(
                "n_embd ({}) must be a multiple of n_head ({})",
                self.n_embd, self.n_head
            ));
        }
        if self.vocab_size > u32::MAX as usize {
            return fail(format!(
                "vocab_size {} does not fit token ids of type u32",
                self.vocab_size
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return fail(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// The number of parameters a model of this shape has (the tied LM head counted once),
    /// computed without building it.
    pub fn num_params(&self) -> usize {
        let c = self.n_embd;
        let b = |n: usize| if self.bias { n } else { 0 };
        let ln = c + b(c);
        let linear = |i: usize, o: usize| i * o + b(o);
        let block = ln + linear(c, 3 * c) + linear(c, c) + ln + linear(c, 4 * c) + linear(4 * c, c);
        self.vocab_size * c + self.block_size * c + self.n_layer * block + ln
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_has_124m_parameters() {
        assert_eq!(GptConfig::preset("gpt2").unwrap().num_params(), 124_439_808);
    }

    #[test]
    fn unknown_preset_lists_presets() {
        let e = GptConfig::preset("gpt5").unwrap_err().to_string();
        assert!(
            e.contains("gpt5") && e.contains("tiny") && e.contains("gpt2-medium"),
            "{e}"
        );
    }
}
