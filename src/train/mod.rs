//! Training: the loop ([`train`], [`resume`]), evaluation, checkpoints, `metrics.jsonl`,
//! the loss plot, and generation from a trained model ([`sample`]). See docs/training.md.

pub mod atomic;
pub mod buckets;
pub mod checkpoint;
pub mod config;
pub mod console;
pub mod data_parallel;
mod device_buckets;
#[cfg(feature = "mpi")]
pub mod distributed;
pub mod lora;
pub mod lora_checkpoint;
pub mod lora_finetune;
pub mod memory_estimate;
pub mod metrics;
pub mod nccl;
pub mod plot;
mod progress;
pub mod run_dir;
pub mod sample;
mod trainer;
pub mod zero;

pub use config::TrainConfig;
pub use sample::{generate, ContextFull, Finish, Generated, Generator, SampleOptions};
pub use trainer::{
    describe_model, human, resume, resume_data_parallel, train, train_data_parallel, Init, Outcome, RunOptions, PLOT,
    TOKEN_CACHE,
};
