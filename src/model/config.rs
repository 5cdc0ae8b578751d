//! [`GptConfig`]: the hyper-parameters that fix a GPT's shape, with named presets.

use crate::{Error, Result};

/// The shape of a GPT-2-style model.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GptConfig {
    /// Number of token ids (rows of the embedding table and of the logits).
    pub vocab_size: usize,
    /// The longest context: rows of the position-embedding table.
    pub block_size: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Number of attention heads; `n_embd` must be a multiple of it (head size `n_embd / n_head`).
    pub n_head: usize,
    /// Width of the residual stream, C.
    pub n_embd: usize,
    /// Dropout probability in training (embeddings, attention weights, residual branches).
    pub dropout: f64,
    /// Biases in every Linear and LayerNorm (GPT-2: true; nanoGPT's small runs: false).
    pub bias: bool,
}

/// Sanity limits on a config read from a file or the command line: far beyond any GPT-2-style
/// model (GPT-3 175B has 96 layers, n_embd 12288, a 2048-token context), and small enough that
/// every size computed from them fits a usize. A corrupt or hostile `config.json` is refused by
/// these before anything is allocated.
pub const MAX_N_LAYER: usize = 1024;
pub const MAX_N_EMBD: usize = 1 << 16;
pub const MAX_BLOCK_SIZE: usize = 1 << 20;
/// At most 2^40 parameters (4 TiB of f32).
pub const MAX_PARAMS: u128 = 1 << 40;

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
        for (name, v, max) in [
            ("n_layer", self.n_layer, MAX_N_LAYER),
            ("n_embd", self.n_embd, MAX_N_EMBD),
            ("block_size", self.block_size, MAX_BLOCK_SIZE),
        ] {
            if v > max {
                return fail(format!("{name} {v} is above kiln's limit of {max}"));
            }
        }
        let params: u128 = self
            .param_shapes()
            .iter()
            .map(|(_, s)| s.iter().map(|&d| d as u128).product::<u128>())
            .sum();
        if params > MAX_PARAMS {
            return fail(format!(
                "the shape has {params} parameters, above kiln's limit of {MAX_PARAMS}"
            ));
        }
        Ok(())
    }

    /// Every parameter's Hugging Face GPT-2 name and shape (kiln's `[out, in]` Linear layout), in
    /// the order of [`crate::model::Gpt::params`], computed without building the model: what a
    /// weights file must hold for this config (checked before the model is built).
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let c = self.n_embd;
        let mut out = vec![
            ("transformer.wte.weight".to_string(), vec![self.vocab_size, c]),
            ("transformer.wpe.weight".to_string(), vec![self.block_size, c]),
        ];
        let mut affine = |prefix: String, weight: Vec<usize>, out_dim: usize| {
            out.push((format!("{prefix}.weight"), weight));
            if self.bias {
                out.push((format!("{prefix}.bias"), vec![out_dim]));
            }
        };
        // capped so that a corrupt n_layer lists no more than the limit (validate refuses it)
        for i in 0..self.n_layer.min(MAX_N_LAYER + 1) {
            let p = format!("transformer.h.{i}");
            affine(format!("{p}.ln_1"), vec![c], c);
            affine(format!("{p}.attn.c_attn"), vec![3 * c, c], 3 * c);
            affine(format!("{p}.attn.c_proj"), vec![c, c], c);
            affine(format!("{p}.ln_2"), vec![c], c);
            affine(format!("{p}.mlp.c_fc"), vec![4 * c, c], 4 * c);
            affine(format!("{p}.mlp.c_proj"), vec![c, 4 * c], c);
        }
        affine("transformer.ln_f".to_string(), vec![c], c);
        out
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
    fn param_shapes_are_those_of_a_built_model() {
        for bias in [false, true] {
            let cfg = GptConfig {
                n_layer: 2,
                bias,
                ..GptConfig::preset("tiny").unwrap()
            };
            let model = crate::model::Gpt::new(cfg.clone(), &mut crate::Rng::new(0), &crate::Device::Cpu).unwrap();
            let built: Vec<(String, Vec<usize>)> = model
                .params()
                .into_iter()
                .map(|(n, t)| (n, t.shape().to_vec()))
                .collect();
            assert_eq!(cfg.param_shapes(), built);
        }
    }

    #[test]
    fn absurd_sizes_are_refused_before_anything_is_built() {
        let tiny = GptConfig::preset("tiny").unwrap();
        for (field, cfg) in [
            (
                "n_embd",
                GptConfig {
                    n_embd: 1_000_000_000,
                    n_head: 1,
                    ..tiny.clone()
                },
            ),
            (
                "n_layer",
                GptConfig {
                    n_layer: 1_000_000_000_000,
                    ..tiny.clone()
                },
            ),
            (
                "block_size",
                GptConfig {
                    block_size: 1_000_000_000_000,
                    ..tiny.clone()
                },
            ),
            (
                "parameters",
                GptConfig {
                    vocab_size: u32::MAX as usize,
                    n_embd: 1 << 16,
                    n_head: 1,
                    ..tiny.clone()
                },
            ),
        ] {
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(field) && err.contains("limit"), "{field}: {err}");
        }
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
