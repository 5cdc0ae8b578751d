//! A training-like loop must run in constant memory: backward frees the graph it walks, and
//! the in-place SGD update under `no_grad` records nothing, so after a warm-up the resident
//! set stays flat. Alone in its file so that no other test's threads move the RSS.
//!
//! A counting global allocator shows the check is sensitive: it measures how much one
//! iteration allocates and how much its graph holds, and the test asserts that leaking that
//! graph every iteration would have exceeded the RSS margin many times over.

use kiln::{DType, Device, Rng, Tensor};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Counts bytes allocated in total and bytes live now.
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            ALLOCATED.fetch_add(layout.size(), Relaxed);
            LIVE.fetch_add(layout.size(), Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            ALLOCATED.fetch_add(layout.size(), Relaxed);
            LIVE.fetch_add(layout.size(), Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            ALLOCATED.fetch_add(new_size, Relaxed);
            LIVE.fetch_add(new_size, Relaxed);
            LIVE.fetch_sub(layout.size(), Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const MIB: usize = 1 << 20;

/// The resident set size in bytes (VmRSS of /proc/self/status, which states its unit;
/// /proc/self/statm gives the same number in pages). None where /proc is unavailable.
fn rss_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

// The model: logits = relu(x·W1 + b1)·W2 + b2, f64; the loss is the cross-entropy against
// fixed targets plus an L2 penalty on W1 (which puts a weight-sized tensor in the graph).
// A small batch and a wide first layer allocate many bytes per FLOP, so the loop is quick.
const BATCH: usize = 8;
const IN: usize = 512;
const HIDDEN: usize = 512;
const CLASSES: usize = 16;
const LR: f64 = 0.05;
const L2: f64 = 1e-4;

const ITERATIONS: usize = 200;
const WARMUP: usize = 20;
/// Growth allowed between the end of the warm-up and the end: allocator and thread-pool
/// noise, far below what any per-iteration leak of tensors would add over 180 iterations.
const RSS_MARGIN: usize = 8 * MIB;
/// The heap itself (bytes live per the counting allocator) must be flatter still.
const LIVE_MARGIN: usize = MIB;

#[test]
fn training_loop_runs_in_constant_memory() {
    if rss_bytes().is_none() {
        eprintln!("skipping: /proc/self/status is not readable here, so the RSS cannot be measured");
        return;
    }
    let dev = Device::Cpu;
    let mut rng = Rng::new(0);
    let mut param = |shape: &[usize], scale: f64| {
        Tensor::randn(shape, DType::F64, &mut rng, &dev)
            .and_then(|t| t.mul_scalar(scale))
            .unwrap()
            .requires_grad()
    };
    let w1 = param(&[IN, HIDDEN], (2.0 / IN as f64).sqrt());
    let b1 = param(&[HIDDEN], 0.0);
    let w2 = param(&[HIDDEN, CLASSES], (1.0 / HIDDEN as f64).sqrt());
    let b2 = param(&[CLASSES], 0.0);
    let params = [&w1, &b1, &w2, &b2];
    let x = Tensor::randn(&[BATCH, IN], DType::F64, &mut Rng::new(1), &dev).unwrap();
    let mut target_rng = Rng::new(2);
    let targets: Vec<u32> = (0..BATCH).map(|_| target_rng.below(CLASSES as u64) as u32).collect();
    let targets = Tensor::from_vec(targets, &[BATCH], &dev).unwrap();

    let (mut rss_warm, mut live_warm) = (0, 0);
    let (mut graph_bytes, mut iteration_bytes) = (0, 0);
    let (mut first_loss, mut last_loss) = (f64::NAN, f64::NAN);
    for it in 0..ITERATIONS {
        let (live_start, allocated_start) = (LIVE.load(Relaxed), ALLOCATED.load(Relaxed));

        let hidden = x.matmul(&w1).unwrap().add(&b1).unwrap().relu().unwrap();
        let logits = hidden.matmul(&w2).unwrap().add(&b2).unwrap();
        let penalty = w1.mul(&w1).unwrap().sum_all().unwrap().mul_scalar(L2).unwrap();
        let loss = logits.cross_entropy(&targets).unwrap().add(&penalty).unwrap();
        drop((hidden, logits, penalty)); // the graph alone keeps them now
        let live_graph = LIVE.load(Relaxed).saturating_sub(live_start);

        let grads = loss.backward().unwrap();
        {
            let _no_grad = kiln::no_grad();
            for p in params {
                let g = grads.get(p).expect("every parameter gets a gradient");
                p.assign(&p.sub(&g.mul_scalar(LR).unwrap()).unwrap()).unwrap();
            }
        }
        let value = loss.to_scalar::<f64>().unwrap();
        assert!(value.is_finite(), "iteration {it}: loss {value}");
        if it == 0 {
            first_loss = value;
        }
        last_loss = value;
        drop((loss, grads));

        if it == 0 {
            // measured on the first iteration: later ones reuse the buffers the previous one
            // freed (the CPU backend's pool), while a leaked graph could not be reused and would
            // allocate this much afresh every iteration
            graph_bytes = live_graph;
            iteration_bytes = ALLOCATED.load(Relaxed) - allocated_start;
        }
        if it == WARMUP - 1 {
            rss_warm = rss_bytes().expect("readable above");
            live_warm = LIVE.load(Relaxed);
        }
    }
    let rss_end = rss_bytes().expect("readable above");
    let live_end = LIVE.load(Relaxed);
    let after_warmup = ITERATIONS - WARMUP;
    println!(
        "one iteration allocates {:.1} MiB, its graph holds {:.2} MiB; RSS {:.1} -> {:.1} MiB, \
         live heap {:.2} -> {:.2} MiB; loss {first_loss:.4} -> {last_loss:.4}",
        iteration_bytes as f64 / MIB as f64,
        graph_bytes as f64 / MIB as f64,
        rss_warm as f64 / MIB as f64,
        rss_end as f64 / MIB as f64,
        live_warm as f64 / MIB as f64,
        live_end as f64 / MIB as f64,
    );

    // The loop is a real training loop: the updates took effect.
    assert!(
        last_loss < 0.5 * first_loss,
        "loss {first_loss} -> {last_loss}: SGD did not train"
    );
    // The check is sensitive: an iteration churns through more than the margin, and keeping
    // each iteration's graph alive would have outgrown the margin several times over.
    assert!(
        iteration_bytes > RSS_MARGIN,
        "one iteration allocates only {iteration_bytes} bytes"
    );
    assert!(
        graph_bytes * after_warmup > 4 * RSS_MARGIN,
        "a leaked graph ({graph_bytes} bytes per iteration) would not show against the margin"
    );
    // The actual checks.
    assert!(
        live_end <= live_warm + LIVE_MARGIN,
        "the live heap grew from {live_warm} to {live_end} bytes over {after_warmup} iterations"
    );
    assert!(
        rss_end <= rss_warm + RSS_MARGIN,
        "the resident set grew from {} to {} MiB over {after_warmup} iterations",
        rss_warm / MIB,
        rss_end / MIB
    );
}
