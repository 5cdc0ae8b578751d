//! Heap allocations per generated token: none. A counting global allocator counts every allocation
//! (all threads) while a warmed-up model decodes, and the counts must be exactly 0:
//!
//! - a decode step of the tiny Llamas (quantized, f32 and bf16) and of SmolLM2-135M (quantized,
//!   when it is fetched): `forward_cached_last` of one new id, from the id to the logits;
//! - a generation loop's whole per-token work: sampling the logits (greedy, and temperature with
//!   top-k and top-p) with the sampler's buffers kept in a `SampleScratch`, the next id into a
//!   tensor, the decode step;
//! - `Generator::generate`: a call that generates more tokens allocates no more than one that
//!   generates fewer.
//!
//! Warm-up first: the first steps fill the pools the steady state draws from (recycled data
//! buffers, src/backend/cpu/pool.rs; recycled tensor handles, src/tensor/recycle.rs; per-thread
//! scratch) and make the KV cache's first buffers (64 positions, more than every test here reaches).
//! Each measurement runs on a thread of rayon's pool ([`on_pool`]: from another thread, rayon's
//! shared queue allocates once per 63 parallel regions).
//! How each allocation went away: docs/llama.md, "The decode step's allocation budget". Before
//! (2026-12-06) a step of these tiny models took 100 (quantized), 96 (f32) and 136 (bf16)
//! allocations, SmolLM2 1278: two per tensor an op made, one per view.
//!
//! One test function, alone in its file: tests run on parallel threads, and another test's
//! allocations would count.

use kiln::backend::SampleScratch;
use kiln::model::{Llama, LlamaLoad};
use kiln::train::sample::sample_tensor_with;
use kiln::train::{Generator, SampleOptions};
use kiln::{DType, Device, Rng, Tensor};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

#[path = "common/smollm2.rs"]
mod smollm2;

/// Counts allocations (calls, not bytes), reallocations included. With `KILN_TRACE_ALLOCATIONS`
/// set, each one counted prints its backtrace (to find where a new one comes from; the counts then
/// include the backtraces' own).
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
/// Whether each allocation prints its backtrace now: while counting, with the variable set.
static TRACE: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Set while this thread prints a backtrace, whose own allocations are not traced.
    static TRACING: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    ALLOCATIONS.fetch_add(1, Relaxed);
    if TRACE.load(Relaxed) && !TRACING.get() {
        TRACING.set(true);
        eprintln!("allocation:\n{}", std::backtrace::Backtrace::force_capture());
        TRACING.set(false);
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) };
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const MODEL_Q: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama-chat/model-q.gguf");
const MODEL_F32: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama-tiny/model.gguf");

/// Decode steps counted, after as many for the warm-up (the prompt's 4 positions and both fit the
/// KV cache's first buffer of 64 positions).
const STEPS: usize = 16;

/// `f` run on a thread of rayon's pool, as one job. A parallel region started from a thread
/// outside the pool is injected into the pool's shared queue, which allocates a block of 63 slots
/// every 63 regions (crossbeam's `Injector`); from a pool thread it goes on that thread's own
/// deque, which allocates nothing once grown. So a loop that decodes without allocating runs on
/// the pool; each measurement here (warm-up and count) is one job, and the per-thread pools (free
/// tensor handles, scratch) are that thread's.
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// The heap allocations `f` makes.
fn allocations(f: impl FnOnce()) -> usize {
    let trace = std::env::var_os("KILN_TRACE_ALLOCATIONS").is_some();
    let before = ALLOCATIONS.load(Relaxed);
    TRACE.store(trace, Relaxed);
    f();
    TRACE.store(false, Relaxed);
    ALLOCATIONS.load(Relaxed) - before
}

/// The heap allocations of `steps` decode steps of `model` after as many for the warm-up (prompt
/// of 4 tokens; the ids fed are a fixed sequence, so only the model's step is counted).
fn model_step_allocations(model: &Llama, steps: usize) -> usize {
    let mut cache = model.new_cache();
    let vocab = model.config().vocab_size as u32;
    let prompt = Tensor::from_vec(vec![1u32, 7, 3, 9], &[1, 4], &Device::Cpu).unwrap();
    model.forward_cached_last(&prompt, &mut cache).unwrap();
    let mut step = |i: usize| {
        let ids = Tensor::from_slice(&[(i as u32 * 7 + 5) % vocab], &[1, 1], &Device::Cpu).unwrap();
        model.forward_cached_last(&ids, &mut cache).unwrap();
    };
    (0..steps).for_each(&mut step);
    allocations(|| (steps..2 * steps).for_each(&mut step))
}

/// The heap allocations of `steps` tokens of a generation loop (sample the logits, the id into a
/// tensor, a decode step) after as many for the warm-up.
fn generation_loop_allocations(model: &Llama, opts: &SampleOptions, steps: usize) -> usize {
    let mut cache = model.new_cache();
    let mut scratch = SampleScratch::default();
    let mut rng = Rng::new(7);
    let prompt = Tensor::from_vec(vec![1u32, 7, 3, 9], &[1, 4], &Device::Cpu).unwrap();
    let mut logits = model.forward_cached_last(&prompt, &mut cache).unwrap();
    let mut token = || {
        let id = sample_tensor_with(&logits, opts, &mut rng, &mut scratch).unwrap();
        let ids = Tensor::from_slice(&[id], &[1, 1], &Device::Cpu).unwrap();
        logits = model.forward_cached_last(&ids, &mut cache).unwrap();
    };
    (0..steps).for_each(|_| token());
    allocations(|| (0..steps).for_each(|_| token()))
}

/// Greedy, and sampling with every filter on.
fn sample_options() -> [(&'static str, SampleOptions); 2] {
    let greedy = SampleOptions {
        temperature: 0.0,
        top_k: None,
        top_p: None,
        max_new_tokens: STEPS,
    };
    let sampled = SampleOptions {
        temperature: 0.8,
        top_k: Some(20),
        top_p: Some(0.9),
        max_new_tokens: STEPS,
    };
    [("greedy", greedy), ("temperature/top-k/top-p", sampled)]
}

/// The allocations of `Generator::generate` for `n` new tokens (after a warm-up call; no stop
/// token, so it generates all `n`).
fn generate_allocations(gen: &mut Generator<Llama>, opts: &SampleOptions, n: usize) -> usize {
    let opts = SampleOptions {
        max_new_tokens: n,
        ..opts.clone()
    };
    let mut rng = Rng::new(11);
    let prompt = [1u32, 7, 3, 9];
    allocations(|| {
        let out = gen.generate(&prompt, &opts, &mut rng, |_| Ok(true)).unwrap();
        assert_eq!(out.tokens.len(), n);
    })
}

#[test]
fn a_decode_token_allocates_nothing() {
    let quantized = Llama::from_gguf_with(MODEL_Q, &Device::Cpu, LlamaLoad::AsStored).unwrap();
    let f32 = Llama::from_gguf(MODEL_F32, &Device::Cpu).unwrap();
    let bf16 = f32.to_dtype(DType::BF16).unwrap();
    let mut failures = Vec::new();
    for (name, model) in [("quantized", &quantized), ("f32", &f32), ("bf16", &bf16)] {
        let n = on_pool(|| model_step_allocations(model, STEPS));
        eprintln!("{name}: {n} allocations in {STEPS} decode steps");
        if n != 0 {
            failures.push(format!("{name}: {n} allocations in {STEPS} decode steps"));
        }
        for (how, opts) in sample_options() {
            let n = on_pool(|| generation_loop_allocations(model, &opts, STEPS));
            eprintln!("{name}, {how}: {n} allocations in {STEPS} tokens of the generation loop");
            if n != 0 {
                failures.push(format!("{name}, {how}: {n} allocations in {STEPS} tokens of the loop"));
            }
            let (few, many) = on_pool(|| {
                let mut gen = Generator::new(model).unwrap();
                generate_allocations(&mut gen, &opts, 2 * STEPS); // warm-up
                (
                    generate_allocations(&mut gen, &opts, STEPS / 2),
                    generate_allocations(&mut gen, &opts, 2 * STEPS),
                )
            });
            eprintln!(
                "{name}, {how}: generate() allocates {few} times for {} tokens, {many} for {}",
                STEPS / 2,
                2 * STEPS
            );
            if many != few {
                failures.push(format!(
                    "{name}, {how}: generate() allocates {few} times for {} tokens but {many} for {}",
                    STEPS / 2,
                    2 * STEPS
                ));
            }
        }
    }
    if let Some(path) = smollm2::path() {
        let model = Llama::from_gguf_with(&path, &Device::Cpu, LlamaLoad::AsStored).unwrap();
        let steps = 6;
        let n = on_pool(|| model_step_allocations(&model, steps));
        eprintln!("SmolLM2-135M (quantized): {n} allocations in {steps} decode steps");
        if n != 0 {
            failures.push(format!("SmolLM2: {n} allocations in {steps} decode steps"));
        }
        let [_, (how, opts)] = sample_options();
        let n = on_pool(|| generation_loop_allocations(&model, &opts, steps));
        eprintln!("SmolLM2-135M (quantized), {how}: {n} allocations in {steps} tokens of the generation loop");
        if n != 0 {
            failures.push(format!("SmolLM2, {how}: {n} allocations in {steps} tokens of the loop"));
        }
    }
    assert!(
        failures.is_empty(),
        "heap allocations while decoding:\n{}",
        failures.join("\n")
    );
}
