//! The `kiln` command line: `train`, `finetune`, `generate`, `chat` (in [`chat`]), `merge` (in
//! [`merge`]), `bench`.
//! `src/main.rs` only calls [`main`]. Every failure is printed as one `error: ...` message with
//! exit status 1 (2 for a command line clap cannot parse). Output goes through [`console`] or
//! checked writes, never `println!`: a closed or full stdout or stderr never panics (see
//! [`generation::TokenWriter`]).

mod chat;
mod finetune_lora;
mod generation;
mod merge;

pub use chat::ChatArgs;
pub use finetune_lora::LoraArgs;
pub use generation::{ComputeDType, KvDType, SampleArgs, WeightsDType};
pub use merge::MergeArgs;

use crate::data::EMBEDDED;
use crate::model::{Gpt, GptConfig};
use crate::tokenizer::{Tokenizer, TokenizerKind};
use crate::train::data_parallel::{self, DataParallel};
use crate::train::nccl::{CollectiveChoice, NcclRanks};
use crate::train::{
    self, checkpoint, console, memory_estimate, Generator, Init, RunOptions, SampleOptions, TrainConfig,
};
use crate::{DType, Device, Error, Result};
use clap::{Args, Parser, Subcommand};
use generation::{stream, WRITING_STDOUT};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "kiln",
    version,
    about = "Train, fine-tune and sample a GPT with kiln, a from-scratch tensor engine",
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a GPT from scratch (with no options: the `tiny` preset on kiln's own sources).
    Train(TrainArgs),
    /// Adapt a trained model (a kiln checkpoint or a Hugging Face GPT-2 folder) to new text, or
    /// train a LoRA adapter for a GGUF model (--gguf) on text or JSONL chat data.
    Finetune(FinetuneArgs),
    /// Generate text from a checkpoint or a GGUF model, streaming tokens as they come.
    Generate(GenerateArgs),
    /// Chat with an instruction-tuned GGUF model (e.g. SmolLM2-135M-Instruct) in its chat template.
    Chat(ChatArgs),
    /// Merge a LoRA adapter into a GGUF model's weights and write a Hugging Face folder
    /// (config.json + model.safetensors) that transformers loads.
    Merge(MergeArgs),
    /// Time kiln's kernels against the device's measured roofline and the library matmul, and a
    /// GPT training step; or, with --gguf, a Llama model's prefill and generation (docs/perf.md).
    Bench(BenchArgs),
}

/// Optimisation settings shared by `train` and `finetune` (unset: the command's default).
#[derive(Args, Debug, Clone, Default)]
pub struct OptimArgs {
    /// Optimizer steps in the whole run [train: 2000, or 1000 on the embedded corpus (no --data); finetune: 200].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Sequences per micro-batch [12].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches whose gradients are summed into each step [1].
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Peak learning rate [train: 1e-3, finetune: 3e-4].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Final learning rate of the cosine decay [--lr / 10].
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Steps of linear warmup [train: 100, finetune: 20].
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Evaluate and checkpoint every this many steps [train: 250, finetune: 50].
    #[arg(long)]
    pub eval_interval: Option<usize>,
    /// Batches of each split averaged per evaluation [20].
    #[arg(long)]
    pub eval_iters: Option<usize>,
    /// The fraction of the data held out for validation (the end of the text; with --gguf, the
    /// last windows, at least one) [0.1].
    #[arg(long)]
    pub val_fraction: Option<f64>,
    /// AdamW weight decay on 2-D weights [0.1].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// AdamW β1, the decay of the gradient's running mean [0.9].
    #[arg(long)]
    pub beta1: Option<f64>,
    /// AdamW β2, the decay of the squared gradient's running mean [0.99].
    #[arg(long)]
    pub beta2: Option<f64>,
    /// Clip the global gradient norm to this, 0 for no clipping [1.0].
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// Compute dtype: f32, or bf16 for mixed precision (bf16 matmuls and activations, f32 master
    /// weights and optimizer state; checkpoints stay f32) [f32; with --resume, the run's; with
    /// finetune --base-dtype bf16, bf16].
    #[arg(long, value_enum)]
    pub dtype: Option<ComputeDType>,
}

impl OptimArgs {
    /// Sets the given options on `cfg`.
    fn apply(&self, cfg: &mut TrainConfig) {
        macro_rules! set {
            ($($f:ident),*) => { $(if let Some(v) = self.$f { cfg.$f = v; })* };
        }
        set!(
            steps,
            batch_size,
            grad_accum,
            lr,
            min_lr,
            warmup,
            eval_interval,
            eval_iters,
            val_fraction,
            weight_decay,
            beta1,
            beta2,
            grad_clip
        );
        if self.lr.is_some() && self.min_lr.is_none() {
            cfg.min_lr = cfg.lr / 10.0; // nanoGPT's rule of thumb
        }
        if let Some(d) = self.dtype {
            cfg.dtype = d.into();
        }
    }
}

/// Options that do not change the computation.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Run folder: checkpoint, metrics.jsonl, loss.svg, token cache [runs/train or runs/finetune].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// cpu, emu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Stop after this step (with a checkpoint), to continue later with --resume.
    #[arg(long)]
    pub stop_at: Option<usize>,
    /// Tokens of the sample printed at the end (0: none).
    #[arg(long, default_value_t = 300)]
    pub sample_tokens: usize,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Model preset: tiny, gpt2, gpt2-medium, gpt2-large, gpt2-xl.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Transformer blocks (overrides the preset).
    #[arg(long)]
    pub n_layer: Option<usize>,
    /// Attention heads per block; must divide --n-embd.
    #[arg(long)]
    pub n_head: Option<usize>,
    /// Width of the residual stream.
    #[arg(long)]
    pub n_embd: Option<usize>,
    /// Context length (positions the model sees).
    #[arg(long)]
    pub block_size: Option<usize>,
    /// Dropout probability while training.
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Biases in Linear and LayerNorm layers (`--bias` or `--bias false`).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub bias: Option<bool>,
    /// Text files to train on (default: kiln's own docs and sources, built into the binary).
    #[arg(long, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// byte, char or gpt2 [byte].
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Seeds the weights, batches and dropout [1337].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Start from the weights in this safetensors file (kiln's checkpoint names) instead of
    /// drawing them: another program's initialisation, to replay its run.
    #[arg(long, value_name = "FILE")]
    pub init_weights: Option<PathBuf>,
    /// Take every batch's windows from this JSON file instead of drawing them: a recorded data
    /// order, to replay another program's run (format: docs/training.md).
    #[arg(long, value_name = "FILE")]
    pub windows: Option<PathBuf>,
    /// Continue the run in --out from its checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Data-parallel training on the ranks of an MPI job (`mpirun -np N kiln train --distributed
    /// ...`): --batch-size is per rank, rank 0 writes the run folder (docs/distributed.md).
    #[cfg(feature = "mpi")]
    #[arg(long)]
    pub distributed: bool,
    /// ZeRO stage of a --distributed run: 0 (every rank holds the whole AdamW state) or 1 (each
    /// rank holds the AdamW moments of its shard of the parameters; docs/distributed.md).
    #[cfg(feature = "mpi")]
    #[arg(long, default_value_t = 0, value_name = "STAGE", requires = "distributed")]
    pub zero: u8,
    /// Gradient buckets of a --distributed run, in MiB of f32 values: each bucket's all-reduce
    /// starts while the backward still runs, as soon as its gradients are final (without
    /// ZeRO; docs/distributed.md). The same on every rank.
    #[cfg(feature = "mpi")]
    #[arg(long, default_value_t = 16.0, value_name = "MIB", requires = "distributed")]
    pub bucket_mib: f64,
    /// What sums the gradients of a --distributed run (docs/distributed.md, "NCCL").
    #[cfg(feature = "mpi")]
    #[arg(long, value_enum, default_value = "auto", requires = "distributed")]
    pub collective: CollectiveArg,
    #[command(flatten)]
    pub optim: OptimArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// A kiln checkpoint (run folder or its checkpoint/ folder) or a Hugging Face GPT-2 folder.
    #[arg(long, required_unless_present_any = ["gguf", "resume"], conflicts_with = "gguf")]
    pub from: Option<PathBuf>,
    #[command(flatten)]
    pub lora: LoraArgs,
    /// Text files to adapt the model to (with --gguf also `*.jsonl` chat files, one
    /// `{"messages": [...]}` per line).
    #[arg(long, num_args = 1.., required_unless_present = "resume", conflicts_with = "resume")]
    pub data: Vec<PathBuf>,
    /// Dropout while fine-tuning (default: the model's; with --gguf, see --lora-dropout).
    #[arg(long, conflicts_with_all = ["gguf", "resume"])]
    pub dropout: Option<f64>,
    /// Seeds the batches and dropout [1337].
    #[arg(long, conflicts_with = "resume")]
    pub seed: Option<u64>,
    /// Continue the LoRA run (kiln finetune --gguf) in --out from its checkpoint, with its model,
    /// data, adapter shape and seed (the optimisation settings --steps, --lr, ... may change). A
    /// --from run continues with `kiln train --resume`.
    #[arg(long, conflicts_with = "from")]
    pub resume: bool,
    #[command(flatten)]
    pub optim: OptimArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A kiln checkpoint (run folder or its checkpoint/ folder).
    #[arg(long, conflicts_with_all = ["hf", "gguf"], required_unless_present_any = ["hf", "gguf"])]
    pub checkpoint: Option<PathBuf>,
    /// A Hugging Face GPT-2 folder (config.json, model.safetensors); uses the GPT-2 tokenizer.
    #[arg(long, conflicts_with = "gguf")]
    pub hf: Option<PathBuf>,
    /// A Llama-architecture GGUF file with its tokenizer; stops at its end-of-sequence token.
    #[arg(long)]
    pub gguf: Option<PathBuf>,
    /// With --gguf: a LoRA adapter folder (adapter_config.json + adapter_model.safetensors, as
    /// `kiln finetune` or Hugging Face PEFT writes it) applied to the model.
    #[arg(long, value_name = "DIR", requires = "gguf")]
    pub lora: Option<PathBuf>,
    /// Text to continue (default: a newline; for GPT-2, <|endoftext|>).
    #[arg(long, default_value = "")]
    pub prompt: String,
    #[command(flatten)]
    pub sample: SampleArgs,
    /// cpu, emu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype: f32, or bf16 (the f32 weights cast to bf16 once, activations and KV cache in
    /// bf16).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: ComputeDType,
    /// With --gguf: the KV cache's dtype, f32, bf16 or f16 (default: the compute dtype's).
    #[arg(long, value_enum, requires = "gguf")]
    pub kv_dtype: Option<KvDType>,
}

/// `--collective`: what sums the gradients of data-parallel ranks (src/train/nccl.rs).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CollectiveArg {
    /// NCCL for CUDA ranks when it loads on every rank, else MPI with a warning; MPI for CPU and
    /// Emu ranks.
    Auto,
    /// MPI, through host memory, whatever the device.
    Mpi,
    /// NCCL on the GPUs: CUDA ranks only, an error where NCCL does not load.
    Nccl,
}

impl From<CollectiveArg> for CollectiveChoice {
    fn from(c: CollectiveArg) -> CollectiveChoice {
        match c {
            CollectiveArg::Auto => CollectiveChoice::Auto,
            CollectiveArg::Mpi => CollectiveChoice::Mpi,
            CollectiveArg::Nccl => CollectiveChoice::Nccl,
        }
    }
}

/// The model of `kiln bench`'s training step (src/bench/gpt.rs).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchGptModel {
    /// nanoGPT's shakespeare_char CPU recipe: 4 layers, 128 wide, vocabulary 65.
    Nanogpt,
    /// GPT-2 124M: 12 layers, 768 wide, vocabulary 50257.
    Gpt2,
}

impl From<BenchGptModel> for crate::bench::gpt::GptModel {
    fn from(m: BenchGptModel) -> Self {
        match m {
            BenchGptModel::Nanogpt => crate::bench::gpt::GptModel::Nanogpt,
            BenchGptModel::Gpt2 => crate::bench::gpt::GptModel::Gpt2,
        }
    }
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("generation").args(["gguf", "generate"]))]
pub struct BenchArgs {
    /// cpu, emu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    // The help lists every kernel's name (`gpt` is the training step).
    #[arg(long, value_delimiter = ',', num_args = 1.., help = crate::bench::kernels_help())]
    pub kernels: Vec<String>,
    /// Sizes instead of each kernel's defaults: MxNxK for matmuls, ROWSxCOLS for the others
    /// (comma-separated or repeated; each kernel takes those of its form).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub sizes: Vec<String>,
    /// Repetitions per measurement [enough for --seconds, 5 to 200].
    #[arg(long)]
    pub reps: Option<usize>,
    /// Seconds of timed repetitions per measurement.
    #[arg(long, default_value_t = 0.3)]
    pub seconds: f64,
    /// MiB copied to measure the bandwidth roofline [cuda 1024, cpu 256, emu 4].
    #[arg(long)]
    pub copy_mib: Option<usize>,
    /// Timed GPT training steps.
    #[arg(long, default_value_t = 10)]
    pub gpt_steps: usize,
    /// GPT model of the training step [cuda gpt2, cpu and emu nanogpt].
    #[arg(long, value_enum)]
    pub gpt_model: Option<BenchGptModel>,
    /// GPT batch size [gpt2: cuda 16, cpu and emu 2; nanogpt: cpu 12, emu 2].
    #[arg(long)]
    pub gpt_batch: Option<usize>,
    /// GPT sequence length [gpt2: cuda 1024, cpu and emu 256; nanogpt: cpu 64, emu 16].
    #[arg(long)]
    pub gpt_context: Option<usize>,
    /// GPT compute dtype [cuda bf16, cpu and emu f32].
    #[arg(long, value_enum)]
    pub gpt_dtype: Option<ComputeDType>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// With --kernels allreduce: mpi (`MPI_Allreduce` of host buffers, under mpirun, mpi feature)
    /// or nccl (`ncclAllReduce` of buffers on --device cuda: one rank alone, or the ranks of an
    /// MPI job with the mpi feature) [mpi].
    #[arg(long, value_enum)]
    pub collective: Option<CollectiveArg>,
    /// Write an SVG chart of achieved vs roofline to this file (with --gguf or --generate:
    /// generation tokens/s vs the read-bandwidth ceiling).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// With --device emu: count every kernel's memory requests, sectors, bank conflicts and
    /// tensor-core instructions, and print them as a table at the end (docs/emulator.md, "The
    /// profiler"; KILN_EMU_PROFILE_JSON=FILE also writes them as JSON).
    #[arg(long)]
    pub profile: bool,
    /// Instead of the kernels: a Llama model's inference speed from this GGUF file, prompt
    /// (prefill) and generation tokens/s at batch 1, greedy (docs/perf.md) [--reps: 3].
    #[arg(long, value_name = "FILE", conflicts_with_all = ["kernels", "sizes", "gpt_model", "gpt_batch", "gpt_context", "gpt_dtype", "copy_mib"])]
    pub gguf: Option<PathBuf>,
    /// Instead of the kernels: a GPT of this shape with random weights, its prompt and generation
    /// tokens/s at batch 1, greedy, as --gguf times a Llama (docs/perf.md) [--prompt-lens 16].
    #[arg(long, value_enum, conflicts_with_all = ["kernels", "sizes", "gpt_model", "gpt_batch", "gpt_context", "gpt_dtype", "copy_mib"])]
    pub generate: Option<BenchGptModel>,
    /// With --gguf or --generate: the prompt lengths timed [--gguf 128,512; --generate 16].
    #[arg(long, value_delimiter = ',', num_args = 1.., requires = "generation")]
    pub prompt_lens: Vec<usize>,
    /// With --gguf or --generate: tokens generated after each prompt.
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// With --gguf or --generate: what the weights become, each timed [--gguf stored,f32,bf16;
    /// --generate f32,bf16].
    #[arg(long, value_enum, value_delimiter = ',', num_args = 1.., requires = "generation")]
    pub dtypes: Vec<WeightsDType>,
}

/// Runs the command line; the process's exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The command runs on a worker of the pool its parallel loops use, so the serial work
    // between two loops does not wait on another thread and does not compete for the cores
    // with the pool's idle workers (on 2 cores: 2 threads, not 3).
    let result = match rayon::ThreadPoolBuilder::new().build() {
        Ok(pool) => pool.install(|| run(cli)),
        Err(_) => run(cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            console::err(&format!("error: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => cmd_train(a),
        Command::Finetune(a) => cmd_finetune(a),
        Command::Generate(a) => cmd_generate(a),
        Command::Chat(a) => chat::cmd_chat(a),
        Command::Merge(a) => merge::cmd_merge(a),
        Command::Bench(a) => cmd_bench(a),
    }
}

fn cli_err(msg: String) -> Error {
    Error::Invalid { op: "kiln", msg }
}

fn run_options(run: &RunArgs, default_out: &str) -> Result<RunOptions> {
    Ok(RunOptions {
        out_dir: run.out.clone().unwrap_or_else(|| PathBuf::from(default_out)),
        device: run.device.parse::<Device>()?,
        stop_at: run.stop_at,
        verbose: true,
    })
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    #[cfg(feature = "mpi")]
    if a.distributed {
        return cmd_train_distributed(a);
    }
    train_on(&DataParallel::single(), a)
}

/// `kiln train --distributed`: [`train_on`] the ranks of the MPI job. A rank that fails prints
/// its error and ends the whole job (`MPI_Abort`), so that no rank waits for it forever.
#[cfg(feature = "mpi")]
fn cmd_train_distributed(a: TrainArgs) -> Result<()> {
    let mpi = train::distributed::Mpi::init()?;
    let host = mpi.data_parallel();
    let (zero, bucket_mib) = (a.zero, a.bucket_mib);
    let result = distributed_ranks(&mpi, &host, &a.run.device, a.collective.into())
        .and_then(|ranks| ranks.with_zero(zero))
        .and_then(|ranks| ranks.with_bucket_mib(bucket_mib))
        .and_then(|ranks| train_on(&ranks, a));
    if let Err(e) = result {
        console::err(&format!("error (rank {} of {}): {e}", host.rank(), host.world()));
        mpi.abort(1);
    }
    Ok(())
}

/// The ranks of the MPI job with the collective `choice` picks for their device (`device_arg`,
/// see [`rank_device`]): `host` itself (MPI), or NCCL on the GPUs, its unique id broadcast by rank
/// 0 over MPI. Every rank decides alike ([`train::nccl::loaded_on_every_rank`]); rank 0 says
/// which collective it is, or warns why NCCL is not used.
#[cfg(feature = "mpi")]
fn distributed_ranks(
    mpi: &std::rc::Rc<train::distributed::Mpi>,
    host: &DataParallel,
    device_arg: &str,
    choice: CollectiveChoice,
) -> Result<DataParallel> {
    use train::nccl::{choose, loaded_on_every_rank, probe, CollectiveKind};
    let device = rank_device(host.world(), device_arg)?;
    let loaded = match (choice, device) {
        (CollectiveChoice::Mpi, _) | (_, Device::Cpu | Device::Emu) => Ok(()),
        _ => loaded_on_every_rank(host.collective(), probe(&device))?,
    };
    let (kind, warning) = choose(choice, &device, loaded)?;
    if let (Some(w), true) = (warning, host.is_root()) {
        console::err(&format!("warning: {w}"));
    }
    match kind {
        CollectiveKind::Mpi => Ok(host.clone()),
        CollectiveKind::Nccl => {
            let ranks = NcclRanks::connect(host.clone(), &device, |buf| mpi.broadcast_from_root(buf))?;
            if host.is_root() {
                console::err(&format!(
                    "gradients: {} all-reduce on the GPUs of {} ranks",
                    ranks.describe(),
                    host.world()
                ));
            }
            Ok(ranks.data_parallel())
        }
    }
}

/// This rank's device: `--device cuda` without a number gives each rank of a machine with
/// several ranks its own GPU, that of its local rank ([`data_parallel::local_rank`], else 0).
fn rank_device(world: usize, device_arg: &str) -> Result<Device> {
    if world > 1 && device_arg == "cuda" {
        let local = data_parallel::local_rank(|name| std::env::var(name).ok())?;
        return Ok(Device::Cuda(local.unwrap_or(0)));
    }
    device_arg.parse()
}

/// `kiln train` on `ranks`: one process alone, or every rank of a data-parallel run, where
/// `--batch-size` counts the sequences of each rank (the run's batch is that times the ranks)
/// and rank 0 alone prints and writes.
fn train_on(ranks: &DataParallel, a: TrainArgs) -> Result<()> {
    let mut opts = run_options(&a.run, "runs/train")?;
    opts.verbose = ranks.is_root();
    let world = ranks.world();
    opts.device = rank_device(world, &a.run.device)?;
    // the global batch of a given per-rank --batch-size
    let mut optim = a.optim.clone();
    if let Some(b) = optim.batch_size {
        let global = b
            .checked_mul(world)
            .ok_or_else(|| cli_err(format!("--batch-size {b} on {world} ranks overflows the global batch")))?;
        optim.batch_size = Some(global);
    }
    let outcome = if a.resume {
        let fixed: Vec<&str> = [
            (a.preset != "tiny", "--preset"),
            (a.n_layer.is_some(), "--n-layer"),
            (a.n_head.is_some(), "--n-head"),
            (a.n_embd.is_some(), "--n-embd"),
            (a.block_size.is_some(), "--block-size"),
            (a.dropout.is_some(), "--dropout"),
            (a.bias.is_some(), "--bias"),
            (!a.data.is_empty(), "--data"),
            (a.tokenizer.is_some(), "--tokenizer"),
            (a.seed.is_some(), "--seed"),
            (a.init_weights.is_some(), "--init-weights"),
            (a.windows.is_some(), "--windows"),
        ]
        .into_iter()
        .filter_map(|(given, flag)| given.then_some(flag))
        .collect();
        if !fixed.is_empty() {
            return Err(cli_err(format!(
                "--resume continues the saved run with its model, data, tokenizer, seed and windows; drop {} \
                 (the optimisation settings --steps, --lr, ... may change)",
                fixed.join(", ")
            )));
        }
        // the saved model with the new optimisation settings must fit before anything is loaded
        let (model, _, state) = checkpoint::read_meta(&checkpoint::find(&opts.out_dir)?)?;
        let mut cfg = state.train;
        optim.apply(&mut cfg);
        let need = memory_estimate::training(&model, cfg.batch_size.div_ceil(world), cfg.dtype);
        memory_estimate::check_fits("training", &need, &opts.device)?;
        train::resume_data_parallel(ranks, &opts, |cfg| optim.apply(cfg))?
    } else {
        let mut model = GptConfig::preset(&a.preset)?;
        macro_rules! set {
            ($($f:ident),*) => { $(if let Some(v) = a.$f { model.$f = v; })* };
        }
        set!(n_layer, n_head, n_embd, block_size, dropout, bias);
        let tokenizer: TokenizerKind = a.tokenizer.as_deref().unwrap_or("byte").parse()?;
        if tokenizer == TokenizerKind::Gpt2 {
            model.vocab_size = crate::tokenizer::GPT2_VOCAB_SIZE;
        }
        model.validate()?;
        let mut cfg = TrainConfig::default();
        if a.data.is_empty() {
            // the main job, `kiln train` with no arguments: within about 5 minutes on 2 cores
            // with the sample, where the 2000 steps of nanoGPT's recipe took 6 under load
            cfg.steps = 1000;
        }
        if let Some(seed) = a.seed {
            cfg.seed = seed;
        }
        cfg.windows = a.windows;
        if optim.batch_size.is_none() {
            cfg.batch_size *= world; // the default --batch-size, per rank
        }
        optim.apply(&mut cfg);
        let need = memory_estimate::training(&model, cfg.batch_size.div_ceil(world), cfg.dtype);
        memory_estimate::check_fits("training", &need, &opts.device)?;
        if a.data.is_empty() && ranks.is_root() {
            console::out(&format!(
                "no --data given: training on kiln's own docs and sources ({EMBEDDED})"
            ));
        }
        let init = Init::Scratch {
            model,
            tokenizer,
            weights: a.init_weights,
        };
        train::train_data_parallel(ranks, init, &a.data, cfg, &opts)?
    };
    if !ranks.is_root() {
        return Ok(());
    }
    print_sample(&outcome.model, &outcome.tokenizer, a.run.sample_tokens)
}

/// The settings of a LoRA run: fine-tuning's defaults (those of `kiln finetune`), a batch of 4,
/// a learning rate of 1e-3 (adapters start at zero and take larger steps than full weights),
/// evaluation over 5 batches of each split and the adapter written every 50 steps; then the flags.
fn lora_train_config(optim: &OptimArgs, seed: Option<u64>) -> TrainConfig {
    let mut cfg = TrainConfig {
        steps: 200,
        batch_size: 4,
        lr: 1e-3,
        min_lr: 1e-4,
        warmup: 10,
        eval_interval: 50,
        eval_iters: 5,
        weight_decay: 0.0,
        ..TrainConfig::default()
    };
    if let Some(seed) = seed {
        cfg.seed = seed;
    }
    optim.apply(&mut cfg);
    cfg
}

fn cmd_finetune(a: FinetuneArgs) -> Result<()> {
    let opts = run_options(&a.run, "runs/finetune")?;
    if a.resume {
        return finetune_lora::resume_finetune_lora(&opts, |cfg| a.optim.apply(cfg));
    }
    let Some(from) = &a.from else {
        let mut cfg = lora_train_config(&a.optim, a.seed);
        if a.lora.base_dtype == Some(finetune_lora::BaseDType::Bf16) && a.optim.dtype.is_none() {
            // a bf16 base computes in bf16 unless --dtype says otherwise: in f32 every product
            // would cast its bf16 weight to f32 again at every step (and keep the copy for the
            // backward), which made a bf16 base no faster than an f32 one
            cfg.dtype = DType::BF16;
        }
        return finetune_lora::cmd_finetune_lora(&a.lora, &a.data, cfg, &opts);
    };
    let (mut model, tokenizer, source) = load_any(from, &opts.device)?;
    if let Some(p) = a.dropout {
        model.set_dropout(p)?;
    }
    // Fine-tuning's own schedule: short, gentle, evaluated often.
    let mut cfg = TrainConfig {
        steps: 200,
        lr: 3e-4,
        min_lr: 3e-5,
        warmup: 20,
        eval_interval: 50,
        ..TrainConfig::default()
    };
    if let Some(seed) = a.seed {
        cfg.seed = seed;
    }
    a.optim.apply(&mut cfg);
    let need = memory_estimate::training(model.config(), cfg.batch_size, cfg.dtype);
    memory_estimate::check_fits("fine-tuning", &need, &opts.device)?;
    console::out(&format!("fine-tuning {source}"));
    let init = Init::From {
        model: Box::new(model),
        tokenizer,
        source,
    };
    let outcome = train::train(init, &a.data, cfg, &opts)?;
    print_sample(&outcome.model, &outcome.tokenizer, a.run.sample_tokens)
}

/// A kiln checkpoint, or a Hugging Face GPT-2 folder (with the GPT-2 tokenizer).
fn load_any(path: &Path, dev: &Device) -> Result<(Gpt, Tokenizer, String)> {
    // a folder with a config.json that is not a kiln checkpoint: from_hf_dir says what it
    // lacks (model.safetensors, often) and how to convert other weight formats
    let is_hf = path.join("config.json").is_file()
        && !path.join(checkpoint::STATE).is_file()
        && !path.join(checkpoint::DIR).is_dir();
    if is_hf {
        let model = Gpt::from_hf_dir(path, dev)?;
        return Ok((model, Tokenizer::Gpt2, format!("Hugging Face model {}", path.display())));
    }
    let loaded = checkpoint::load(path, dev)?;
    let source = format!("checkpoint {} (step {})", loaded.dir.display(), loaded.state.step);
    Ok((loaded.model, loaded.tokenizer, source))
}

/// Prints a sample of a trained model. The run is saved by now: a stdout that cannot take the
/// sample (a full disk) is a warning, not a failed command.
fn print_sample(model: &Gpt, tok: &Tokenizer, tokens: usize) -> Result<()> {
    if tokens == 0 {
        return Ok(());
    }
    console::out(&format!("--- sample ({tokens} tokens, temperature 0.8, top-k 200) ---"));
    let opts = SampleOptions {
        max_new_tokens: tokens,
        ..SampleOptions::default()
    };
    match Generator::new(model).and_then(|mut g| stream(&mut g, tok, "", &opts, 1337)) {
        Err(Error::Io { context, source }) if context == WRITING_STDOUT => {
            console::warn(&format!("the sample could not be written to stdout: {source}"));
        }
        other => {
            other?;
        }
    }
    console::out("---");
    Ok(())
}

fn cmd_generate(a: GenerateArgs) -> Result<()> {
    let opts = a.sample.options()?;
    if let Some(path) = &a.gguf {
        return chat::generate_gguf(
            path,
            a.lora.as_deref(),
            &a.prompt,
            &opts,
            a.sample.seed,
            &a.device,
            a.dtype,
            a.kv_dtype,
        );
    }
    let dev: Device = a.device.parse()?;
    let (mut model, tok, source) = match (&a.checkpoint, &a.hf) {
        (Some(ckpt), _) => {
            let l = checkpoint::load(ckpt, &dev)?;
            let source = format!("{} (step {})", l.dir.display(), l.state.step);
            (l.model, l.tokenizer, source)
        }
        (None, Some(hf)) => {
            let model = Gpt::from_hf_dir(hf, &dev)?;
            if model.config().vocab_size < Tokenizer::Gpt2.vocab_size() {
                console::err(&format!(
                    "note: {} has a vocabulary of {} ids, smaller than GPT-2's {}; prompts may not fit it",
                    hf.display(),
                    model.config().vocab_size,
                    Tokenizer::Gpt2.vocab_size()
                ));
            }
            (model, Tokenizer::Gpt2, hf.display().to_string())
        }
        (None, None) => return Err(cli_err("give --checkpoint DIR, --hf DIR or --gguf FILE".into())),
    };
    memory_estimate::check_fits("generation", &memory_estimate::generation(model.config()), &dev)?;
    model.set_dtype(a.dtype.into())?;
    console::err(&format!(
        "{source}: {}; tokenizer {}; computing in {}",
        train::describe_model(model.config(), model.num_params()),
        tok.describe(),
        model.dtype()
    ));
    stream(&mut Generator::new(&model)?, &tok, &a.prompt, &opts, a.sample.seed)?;
    Ok(())
}

fn cmd_bench(a: BenchArgs) -> Result<()> {
    if !(a.seconds > 0.0 && a.seconds.is_finite()) || a.reps == Some(0) || a.gpt_steps == 0 || a.copy_mib == Some(0) {
        return Err(cli_err(
            "bench: --seconds, --reps, --gpt-steps and --copy-mib must be positive".into(),
        ));
    }
    let device: Device = a.device.parse()?;
    if a.profile {
        if device != Device::Emu {
            return Err(cli_err(format!(
                "bench: --profile counts what the emulator executes and needs --device emu, not {}",
                a.device
            )));
        }
        crate::backend::cuda::emu::set_profile(true);
    }
    let profile = a.profile;
    let generation = match (&a.gguf, a.generate) {
        (Some(gguf), _) => Some(crate::bench::generation::GenerationOptions::gguf(gguf, device)),
        (None, Some(model)) => Some(crate::bench::generation::GenerationOptions::gpt(model.into(), device)),
        (None, None) => None,
    };
    let result = match generation {
        Some(opts) => bench_generation(&a, opts),
        None => bench_kernels(a, device),
    };
    if profile && result.is_ok() {
        crate::backend::cuda::emu::profile_report();
    }
    result
}

/// `kiln bench` without --gguf: the kernel cases (src/bench/), or the all-reduce alone.
fn bench_kernels(a: BenchArgs, device: Device) -> Result<()> {
    if a.kernels.iter().any(|k| k == ALLREDUCE) {
        return bench_allreduce(&a);
    }
    if a.collective.is_some() {
        return Err(cli_err(format!(
            "bench: --collective chooses the all-reduce of --kernels {ALLREDUCE}; the other kernels take none"
        )));
    }
    for size in &a.sizes {
        let need = memory_estimate::bench_case(&crate::bench::parse_size(size)?);
        memory_estimate::check_fits(&format!("bench --sizes {size}"), &need, &device)?;
    }
    let opts = crate::bench::Options {
        device,
        kernels: a.kernels,
        sizes: a.sizes,
        reps: a.reps,
        budget_s: a.seconds,
        copy_bytes: a
            .copy_mib
            .map(|m| {
                m.checked_mul(1 << 20).ok_or_else(|| {
                    cli_err(format!(
                        "bench: --copy-mib {m} MiB is more bytes than this machine can count"
                    ))
                })
            })
            .transpose()?,
        gpt_steps: a.gpt_steps,
        gpt_model: a.gpt_model.map(Into::into),
        gpt_batch: a.gpt_batch,
        gpt_context: a.gpt_context,
        gpt_dtype: a.gpt_dtype.map(DType::from),
    };
    let report = crate::bench::run(&opts, |what| console::err(&format!("bench: {what}")))?;
    console::out(crate::bench::report::table(&report).trim_end_matches('\n'));
    if let Some(path) = &a.json {
        crate::bench::report::write_json(&report, path)?;
        console::out(&format!("wrote {}", path.display()));
    }
    if let Some(path) = &a.plot {
        crate::bench::report::write_svg(&report, path)?;
        console::out(&format!("wrote {}", path.display()));
    }
    Ok(())
}

/// The `--kernels` name of the all-reduce benchmark (src/bench/allreduce.rs), which runs alone,
/// on the ranks of an MPI job.
const ALLREDUCE: &str = "allreduce";

/// `kiln bench --kernels allreduce` under `mpirun`: the all-reduce's latency and bandwidth over
/// message sizes (`--sizes` in bytes); rank 0 prints the table and writes `--json`.
fn bench_allreduce(a: &BenchArgs) -> Result<()> {
    if a.kernels.len() > 1 {
        return Err(cli_err(format!(
            "bench: {ALLREDUCE} runs alone on the ranks of an MPI job (`mpirun -np N kiln bench --kernels {ALLREDUCE}`); \
             time the other kernels in another run"
        )));
    }
    let bytes = if a.sizes.is_empty() {
        crate::bench::allreduce::DEFAULT_BYTES.to_vec()
    } else {
        a.sizes
            .iter()
            .map(|s| {
                s.trim()
                    .parse::<usize>()
                    .map_err(|_| cli_err(format!("bench: the {ALLREDUCE} size {s:?} is not a number of bytes")))
            })
            .collect::<Result<Vec<_>>>()?
    };
    match a.collective {
        None | Some(CollectiveArg::Mpi) => bench_allreduce_on_mpi(a, &bytes),
        Some(CollectiveArg::Nccl) => bench_allreduce_on_nccl(a, &bytes),
        Some(CollectiveArg::Auto) => Err(cli_err(format!(
            "bench: {ALLREDUCE} times one collective: --collective mpi or nccl, not auto"
        ))),
    }
}

/// `kiln bench --kernels allreduce --collective nccl --device cuda`: `ncclAllReduce` of device
/// buffers, its sum checked, on one rank without MPI (the id made here), or with the `mpi`
/// feature on the ranks of the MPI job (each on the GPU of its local rank; one rank when started
/// without mpirun).
#[cfg(feature = "mpi")]
fn bench_allreduce_on_nccl(a: &BenchArgs, bytes: &[usize]) -> Result<()> {
    use train::nccl::{choose, loaded_on_every_rank, probe};
    let mpi = train::distributed::Mpi::init()?;
    let host = mpi.data_parallel();
    let result = rank_device(host.world(), &a.device).and_then(|device| {
        let loaded = loaded_on_every_rank(host.collective(), probe(&device))?;
        choose(CollectiveChoice::Nccl, &device, loaded)?;
        let ranks = NcclRanks::connect(host.clone(), &device, |buf| mpi.broadcast_from_root(buf))?;
        bench_nccl_ranks(a, &ranks, bytes)
    });
    match result {
        Err(e) if host.world() > 1 => {
            console::err(&format!("error (rank {} of {}): {e}", host.rank(), host.world()));
            mpi.abort(1)
        }
        other => other,
    }
}

#[cfg(not(feature = "mpi"))]
fn bench_allreduce_on_nccl(a: &BenchArgs, bytes: &[usize]) -> Result<()> {
    use train::nccl::{choose, probe};
    let device: Device = a.device.parse()?;
    choose(CollectiveChoice::Nccl, &device, probe(&device))?;
    let ranks = NcclRanks::single(&device)?;
    bench_nccl_ranks(a, &ranks, bytes)
}

/// Times and checks the NCCL all-reduce on `ranks`; rank 0 prints the table and writes `--json`.
fn bench_nccl_ranks(a: &BenchArgs, ranks: &NcclRanks, bytes: &[usize]) -> Result<()> {
    let report = crate::bench::allreduce::run_nccl(ranks, bytes, a.reps, a.seconds)?;
    if ranks.comm().rank() != 0 {
        return Ok(());
    }
    show_allreduce(a, &report)
}

/// Prints an all-reduce benchmark's table and writes its `--json` (on the rank that reports).
fn show_allreduce(a: &BenchArgs, report: &crate::bench::allreduce::AllReduceReport) -> Result<()> {
    console::out(crate::bench::allreduce::table(report).trim_end_matches('\n'));
    if let Some(path) = &a.json {
        let json = serde_json::to_string_pretty(report).expect("a report serialises");
        crate::model::io::write_atomic(path, json.as_bytes())?;
        console::out(&format!("wrote {}", path.display()));
    }
    Ok(())
}

#[cfg(feature = "mpi")]
fn bench_allreduce_on_mpi(a: &BenchArgs, bytes: &[usize]) -> Result<()> {
    let mpi = train::distributed::Mpi::init()?;
    let ranks = mpi.data_parallel();
    let result = crate::bench::allreduce::run(ranks.collective(), bytes, a.reps, a.seconds).and_then(|report| {
        if !ranks.is_root() {
            return Ok(());
        }
        show_allreduce(a, &report)
    });
    if let Err(e) = result {
        console::err(&format!("error (rank {} of {}): {e}", ranks.rank(), ranks.world()));
        mpi.abort(1);
    }
    Ok(())
}

#[cfg(not(feature = "mpi"))]
fn bench_allreduce_on_mpi(_: &BenchArgs, _: &[usize]) -> Result<()> {
    Err(cli_err(format!(
        "bench: {ALLREDUCE} needs kiln built with the `mpi` feature (cargo build --release --features mpi; docs/distributed.md)"
    )))
}

/// `kiln bench --gguf FILE` or `--generate MODEL`: the inference benchmark
/// (src/bench/generation.rs), `opts` holding the model's defaults.
fn bench_generation(a: &BenchArgs, mut opts: crate::bench::generation::GenerationOptions) -> Result<()> {
    if !a.prompt_lens.is_empty() {
        opts.prompt_lens = a.prompt_lens.clone();
    }
    if !a.dtypes.is_empty() {
        opts.dtypes = a.dtypes.iter().map(|&d| d.into()).collect();
    }
    opts.new_tokens = a.new_tokens;
    opts.reps = a.reps.unwrap_or(opts.reps);
    let report = crate::bench::generation::run(&opts, |what| console::err(&format!("bench: {what}")))?;
    console::out(crate::bench::generation::table(&report).trim_end_matches('\n'));
    let outputs = [
        (&a.json, crate::bench::generation::json(&report)),
        (&a.plot, crate::bench::generation::svg(&report)),
    ];
    for (path, text) in outputs {
        if let Some(path) = path {
            crate::bench::report::write_file(path, &text)?;
            console::out(&format!("wrote {}", path.display()));
        }
    }
    Ok(())
}
