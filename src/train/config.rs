//! [`TrainConfig`]: the hyper-parameters of a training run (not the model's shape, which is
//! [`crate::model::GptConfig`]). Saved in every checkpoint's `state.json`.

use crate::model::COMPUTE_DTYPES;
use crate::optim::CosineSchedule;
use crate::{DType, Error, Result};
use serde::{Deserialize, Serialize};

/// How to train. The defaults are nanoGPT's small-model recipe (its `shakespeare_char`
/// settings), which suit the `tiny` preset on a CPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Optimizer steps in the whole run (the cosine schedule ends here).
    pub steps: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches whose gradients are averaged into one step (the effective batch is
    /// `batch_size · grad_accum` sequences).
    pub grad_accum: usize,
    /// Peak learning rate, reached after `warmup` steps.
    pub lr: f64,
    /// Learning rate at the end of the cosine decay.
    pub min_lr: f64,
    /// Steps of linear warmup.
    pub warmup: usize,
    /// AdamW's decoupled weight decay λ (nanoGPT's grouping: matrices and embeddings only).
    pub weight_decay: f64,
    /// AdamW's β₁.
    pub beta1: f64,
    /// AdamW's β₂.
    pub beta2: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub grad_clip: f64,
    /// Evaluate (and checkpoint) every this many steps, and at the last step.
    pub eval_interval: usize,
    /// Batches per split averaged into each evaluation.
    pub eval_iters: usize,
    /// The fraction of the tokens, taken from the end, held out for validation.
    pub val_fraction: f64,
    /// Seeds the initial weights, the batches and the dropout masks.
    pub seed: u64,
    /// The model's compute dtype: f32, or bf16 (mixed precision; the weights and the optimizer
    /// state stay f32). Checkpoints written before this setting existed read as f32.
    pub dtype: DType,
    /// A recorded data order ([`crate::data::WindowPlan`]) to take every batch from instead of
    /// drawing it with the seed: to replay another program's run window for window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows: Option<std::path::PathBuf>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 2000,
            batch_size: 12,
            grad_accum: 1,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup: 100,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            grad_clip: 1.0,
            eval_interval: 250,
            eval_iters: 20,
            val_fraction: 0.1,
            seed: 1337,
            dtype: DType::F32,
            windows: None,
        }
    }
}

impl TrainConfig {
    /// The learning-rate schedule: linear warmup, cosine decay to `min_lr` at `steps`.
    pub fn schedule(&self) -> CosineSchedule {
        CosineSchedule {
            warmup: self.warmup,
            max_steps: self.steps,
            max_lr: self.lr,
            min_lr: self.min_lr,
        }
    }

    /// Checks the numbers, naming the first bad one (with its command-line flag).
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Invalid { op: "train", msg });
        for (flag, v) in [
            ("--steps", self.steps),
            ("--batch-size", self.batch_size),
            ("--grad-accum", self.grad_accum),
            ("--eval-interval", self.eval_interval),
            ("--eval-iters", self.eval_iters),
        ] {
            if v == 0 {
                return bad(format!("{flag} must be at least 1"));
            }
        }
        for (flag, v) in [
            ("--lr", self.lr),
            ("--min-lr", self.min_lr),
            ("--weight-decay", self.weight_decay),
            ("--grad-clip", self.grad_clip),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{flag} must be a finite number ≥ 0, got {v}"));
            }
        }
        for (flag, v) in [("--beta1", self.beta1), ("--beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(format!("{flag} must be in [0, 1), got {v}"));
            }
        }
        if self.min_lr > self.lr {
            return bad(format!(
                "--min-lr ({}) is above --lr ({}): the cosine schedule decays from --lr down to --min-lr",
                self.min_lr, self.lr
            ));
        }
        // every count the loop multiplies must fit: the micro-batches of the whole run index
        // a window plan, and the sequences of one step size its batches
        if self.steps.checked_mul(self.grad_accum).is_none() {
            return bad(format!(
                "--steps {} × --grad-accum {} micro-batches is more than this machine can count",
                self.steps, self.grad_accum
            ));
        }
        if self.batch_size.checked_mul(self.grad_accum).is_none() {
            return bad(format!(
                "--batch-size {} × --grad-accum {} sequences per step is more than this machine can count",
                self.batch_size, self.grad_accum
            ));
        }
        if !COMPUTE_DTYPES.contains(&self.dtype) {
            return bad(format!("--dtype must be f32 or bf16, got {}", self.dtype));
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            return bad(format!(
                "the validation fraction must be in (0, 1), got {}",
                self.val_fraction
            ));
        }
        Ok(())
    }

    /// Tokens per optimizer step with context `block`, `batch_size · grad_accum · block`, or
    /// an error when that product does not fit (after [`TrainConfig::validate`]).
    pub fn tokens_per_step(&self, block: usize) -> Result<usize> {
        self.batch_size
            .checked_mul(self.grad_accum)
            .and_then(|n| n.checked_mul(block))
            .ok_or_else(|| Error::Invalid {
                op: "train",
                msg: format!(
                    "--batch-size {} × --grad-accum {} × block size {block} tokens per step is more than \
                     this machine can count",
                    self.batch_size, self.grad_accum
                ),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_is_saved_by_name_and_old_settings_read_as_f32() {
        let bf16 = TrainConfig {
            dtype: DType::BF16,
            ..TrainConfig::default()
        };
        let json = serde_json::to_string(&bf16).unwrap();
        assert!(json.contains(r#""dtype":"bf16""#), "{json}");
        assert_eq!(serde_json::from_str::<TrainConfig>(&json).unwrap(), bf16);
        // a state.json written before the setting existed
        let old = json.replace(r#","dtype":"bf16""#, "");
        assert_eq!(serde_json::from_str::<TrainConfig>(&old).unwrap().dtype, DType::F32);
        let e = serde_json::from_str::<TrainConfig>(&json.replace("bf16", "bf17")).unwrap_err();
        assert!(e.to_string().contains("unknown dtype \"bf17\""), "{e}");
        let f16 = TrainConfig {
            dtype: DType::F16,
            ..TrainConfig::default()
        };
        let e = f16.validate().unwrap_err().to_string();
        assert!(e.contains("--dtype must be f32 or bf16, got f16"), "{e}");
    }

    #[test]
    fn min_lr_above_lr_and_counts_that_overflow_are_refused() {
        let check = |cfg: TrainConfig, want: &str| {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        };
        let base = TrainConfig::default();
        check(
            TrainConfig {
                lr: 1e-3,
                min_lr: 2e-3,
                ..base.clone()
            },
            "--min-lr (0.002) is above --lr (0.001)",
        );
        check(
            TrainConfig {
                grad_accum: 1 << 62,
                ..base.clone()
            },
            "--steps 2000 × --grad-accum 4611686018427387904 micro-batches",
        );
        check(
            TrainConfig {
                steps: 1,
                grad_accum: 1 << 62,
                ..base.clone()
            },
            "--batch-size 12 × --grad-accum 4611686018427387904 sequences per step",
        );
        let e = TrainConfig {
            batch_size: 1 << 40,
            ..base.clone()
        }
        .tokens_per_step(1 << 30)
        .unwrap_err()
        .to_string();
        assert!(e.contains("× block size 1073741824 tokens per step"), "{e}");
        assert_eq!(base.tokens_per_step(64).unwrap(), 12 * 64);
    }
}
