//! The default corpus: kiln's own documentation and sources, compiled into the binary, so
//! `kiln train` with no arguments has something to learn from on any machine.
//!
//! A fixed list (not a directory walk) keeps this independent of the build script; add new
//! files here as they appear: `tests/train_data.rs` fails when a file under `src/` or `docs/`
//! is neither listed in [`FILES`] nor covered by [`EXCLUDED`]. Each entry is `(path relative
//! to the crate root, contents)`.

macro_rules! embed {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/", $path)))),*]
    };
}

/// Folders under `src/` and `docs/` deliberately left out of [`FILES`] (prefixes of paths
/// relative to the crate root).
pub const EXCLUDED: &[&str] = &[
    // The CUDA backend: GPU plumbing (driver and NVRTC bindings, module loading, launch
    // shapes and argument packing), not much to learn from for a byte-level model.
    "src/backend/cuda/",
];

/// The files of the embedded corpus, in the order they are concatenated.
pub const FILES: &[(&str, &str)] = embed!(
    "README.md",
    "docs/autograd.md",
    "docs/model.md",
    "docs/training.md",
    "docs/kernels.md",
    "docs/emulator.md",
    "docs/gpu.md",
    "docs/perf.md",
    "docs/perf-log.md",
    "docs/changelog.md",
    "docs/tour.md",
    "docs/ops.md",
    "docs/layer_norm.md",
    "docs/reliability.md",
    "docs/llama.md",
    "docs/finetuning.md",
    "docs/adding-an-op.md",
    "src/lib.rs",
    "src/main.rs",
    "src/error.rs",
    "src/env.rs",
    "src/tensor/mod.rs",
    "src/tensor/create.rs",
    "src/tensor/display.rs",
    "src/tensor/device.rs",
    "src/tensor/dtype.rs",
    "src/tensor/layout.rs",
    "src/tensor/rng.rs",
    "src/autograd/mod.rs",
    "src/ops/mod.rs",
    "src/ops/attention.rs",
    "src/ops/binary.rs",
    "src/ops/dropout.rs",
    "src/ops/embedding.rs",
    "src/ops/cross_entropy.rs",
    "src/ops/matmul.rs",
    "src/ops/linear_quantized.rs",
    "src/ops/layer_norm.rs",
    "src/ops/rms_norm.rs",
    "src/ops/rope.rs",
    "src/ops/swiglu.rs",
    "src/ops/reduce.rs",
    "src/ops/shape.rs",
    "src/ops/softmax.rs",
    "src/ops/unary.rs",
    "src/ops/where_cond.rs",
    "src/ops/argmax.rs",
    "src/ops/gather.rs",
    "src/ops/loss.rs",
    "src/ops/overload.rs",
    "src/ops/stack.rs",
    "src/ops/var.rs",
    "src/backend/mod.rs",
    "src/backend/cpu/mod.rs",
    "src/backend/cpu/adamw.rs",
    "src/backend/cpu/alloc.rs",
    "src/backend/cpu/attention.rs",
    "src/backend/cpu/embedding.rs",
    "src/backend/cpu/cross_entropy.rs",
    "src/backend/cpu/dequantize.rs",
    "src/backend/cpu/matmul.rs",
    "src/backend/cpu/layer_norm.rs",
    "src/backend/cpu/linear_quantized/amx.rs",
    "src/backend/cpu/linear_quantized/mod.rs",
    "src/backend/cpu/linear_quantized/portable.rs",
    "src/backend/cpu/linear_quantized/q8.rs",
    "src/backend/cpu/linear_quantized/x86.rs",
    "src/backend/cpu/reduce.rs",
    "src/backend/cpu/reference.rs",
    "src/backend/cpu/rms_norm.rs",
    "src/backend/cpu/rope.rs",
    "src/backend/cpu/softmax.rs",
    "src/backend/cpu/swiglu.rs",
    "src/backend/cpu/binary.rs",
    "src/backend/cpu/unary.rs",
    "src/backend/cpu/where_cond.rs",
    "src/backend/cpu/allocator.rs",
    "src/backend/cpu/storage.rs",
    "src/backend/cpu/gemm/avx2.rs",
    "src/backend/cpu/gemm/avx512.rs",
    "src/backend/cpu/gemm/driver.rs",
    "src/backend/cpu/gemm/matrix.rs",
    "src/backend/cpu/gemm/mod.rs",
    "src/backend/cpu/gemm/pack.rs",
    "src/backend/cpu/gemm/portable.rs",
    "src/backend/cpu/gemm/simd.rs",
    "src/backend/cpu/gemm/streamed.rs",
    "src/backend/cpu/gemm/tests.rs",
    "src/backend/cpu/gemm/kernel.rs",
    "src/backend/cpu/cast.rs",
    "src/backend/cpu/copy.rs",
    "src/backend/cpu/fill.rs",
    "src/backend/cpu/float.rs",
    "src/backend/cpu/map.rs",
    "src/backend/cpu/vectorise.rs",
    "src/backend/dispatch.rs",
    "src/backend/op/binary.rs",
    "src/backend/op/exp.rs",
    "src/backend/op/mod.rs",
    "src/backend/op/unary.rs",
    "src/backend/op/quantized.rs",
    "src/backend/storage.rs",
    "src/nn/mod.rs",
    "src/nn/lora.rs",
    "src/nn/module.rs",
    "src/model/mod.rs",
    "src/model/config.rs",
    "src/model/gpt.rs",
    "src/model/kv_cache.rs",
    "src/model/io.rs",
    "src/model/llama_config.rs",
    "src/model/llama.rs",
    "src/model/causal_lm.rs",
    "src/model/llama/lora.rs",
    "src/model/llama/hf_export.rs",
    "src/model/llama_params.rs",
    "src/gguf/mod.rs",
    "src/gguf/metadata.rs",
    "src/gguf/dequant.rs",
    "src/optim/mod.rs",
    "src/safetensors.rs",
    "src/testing.rs",
    "src/optim/adamw.rs",
    "src/optim/sgd.rs",
    "src/tokenizer/mod.rs",
    "src/tokenizer/gguf.rs",
    "src/tokenizer/chat.rs",
    "src/data/mod.rs",
    "src/data/embedded.rs",
    "src/train/mod.rs",
    "src/train/lora.rs",
    "src/train/lora_checkpoint.rs",
    "src/train/lora_finetune.rs",
    "src/train/trainer.rs",
    "src/train/config.rs",
    "src/train/checkpoint.rs",
    "src/train/memory_estimate.rs",
    "src/train/atomic.rs",
    "src/train/metrics.rs",
    "src/train/console.rs",
    "src/train/run_dir.rs",
    "src/train/plot.rs",
    "src/train/progress.rs",
    "src/train/sample.rs",
    "src/cli/mod.rs",
    "src/cli/generation.rs",
    "src/cli/chat.rs",
    "src/cli/finetune_lora.rs",
    "src/cli/merge.rs",
    "src/bench/mod.rs",
    "src/bench/cases.rs",
    "src/bench/check.rs",
    "src/bench/machine.rs",
    "src/bench/gpt.rs",
    "src/bench/library.rs",
    "src/bench/llama.rs",
    "src/bench/report.rs",
    "src/bench/roofline.rs",
    "src/bench/timing.rs",
    "src/bench/work.rs",
);

/// The whole embedded corpus as one text: each file preceded by a `// file: PATH` line.
pub fn text() -> String {
    let mut out = String::with_capacity(FILES.iter().map(|(p, t)| p.len() + t.len() + 16).sum());
    for (path, contents) in FILES {
        out.push_str("// file: ");
        out.push_str(path);
        out.push('\n');
        out.push_str(contents);
        if !contents.ends_with('\n') {
            out.push('\n');
        }
        out.push('\n');
    }
    out
}
