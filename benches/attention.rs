//! Fused attention (`scaled_dot_product_attention`) against the same attention composed from
//! tensor ops (scale, q·kᵀ, causal mask, softmax, ·v: what src/model/gpt.rs runs today), forward
//! and forward + backward, causal, f32, on the CPU; and the fused kernels on Cuda(0) when a GPU
//! is there (skipped otherwise).
//!
//! Shapes: nanoGPT's CPU recipe (B=12, H=4, T=64, D=32) and one GPT-2 layer (B=1, H=12, T=1024,
//! D=64). Throughput is declared as `Elements(flops)` with the dense count (4·B·H·T²·D forward,
//! 2.5× that forward + backward), so criterion's "elem/s" is dense-equivalent flop/s; causal
//! work is about half of it.
//!
//! Run with `cargo bench --bench attention` (RAYON_NUM_THREADS pins the CPU threads).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln::{DType, Device, Rng, Tensor};
use std::time::Duration;

const SHAPES: [(&str, [usize; 4]); 2] = [
    ("nanogpt_b12_h4_t64_d32", [12, 4, 64, 32]),
    ("gpt2_b1_h12_t1024_d64", [1, 12, 1024, 64]),
];

/// The GPT's attention from tensor ops, causal.
fn composed(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Tensor {
    let d = q.shape()[3] as f64;
    q.mul_scalar(1.0 / d.sqrt())
        .unwrap()
        .matmul(&k.transpose(-2, -1).unwrap())
        .unwrap()
        .masked_fill(mask, f64::NEG_INFINITY)
        .unwrap()
        .softmax(-1)
        .unwrap()
        .matmul(v)
        .unwrap()
}

fn inputs(shape: [usize; 4], dtype: DType, dev: &Device) -> [Tensor; 3] {
    let mut rng = Rng::new(7);
    [0, 1, 2].map(|_| {
        Tensor::randn(&shape, DType::F32, &mut rng, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
            .to_device(dev)
            .unwrap()
            .requires_grad()
    })
}

fn bench_cpu(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention_cpu_f32_causal");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (name, shape) in SHAPES {
        let [b, h, t, d] = shape;
        let fwd_flops = (4 * b * h * t * t * d) as u64;
        let [q, k, v] = inputs(shape, DType::F32, &Device::Cpu);
        let mask: Vec<u32> = (0..t).flat_map(|i| (0..t).map(move |j| u32::from(j > i))).collect();
        let mask = Tensor::from_vec(mask, &[t, t], &Device::Cpu).unwrap();
        g.throughput(Throughput::Elements(fwd_flops));
        g.bench_function(format!("{name}/fused_forward"), |bch| {
            bch.iter(|| {
                let _g = kiln::no_grad();
                q.scaled_dot_product_attention(&k, &v, true).unwrap()
            })
        });
        g.bench_function(format!("{name}/composed_forward"), |bch| {
            bch.iter(|| {
                let _g = kiln::no_grad();
                composed(&q, &k, &v, &mask)
            })
        });
        g.throughput(Throughput::Elements(fwd_flops * 5 / 2));
        g.bench_function(format!("{name}/fused_forward_backward"), |bch| {
            bch.iter(|| {
                let o = q.scaled_dot_product_attention(&k, &v, true).unwrap();
                o.sum_all().unwrap().backward().unwrap()
            })
        });
        g.bench_function(format!("{name}/composed_forward_backward"), |bch| {
            bch.iter(|| composed(&q, &k, &v, &mask).sum_all().unwrap().backward().unwrap())
        });
    }
    g.finish();
}

fn bench_cuda(c: &mut Criterion) {
    if kiln::backend::cuda::gpu_count() == 0 {
        eprintln!("attention_cuda: skipped, no CUDA device");
        return;
    }
    let dev = Device::Cuda(0);
    let mut g = c.benchmark_group("attention_cuda_causal");
    g.sample_size(20);
    for dtype in [DType::F32, DType::BF16] {
        for (name, shape) in SHAPES {
            let [b, h, t, d] = shape;
            let [q, k, v] = inputs(shape, dtype, &dev);
            // reading back one element waits for the kernels without timing a large copy
            let done = |o: &Tensor| {
                o.flatten_all()
                    .unwrap()
                    .narrow(0, 0, 1)
                    .unwrap()
                    .to_vec::<f32>()
                    .unwrap()
            };
            g.throughput(Throughput::Elements((4 * b * h * t * t * d) as u64));
            g.bench_function(format!("{name}/{dtype}/fused_forward"), |bch| {
                bch.iter(|| {
                    let _g = kiln::no_grad();
                    done(&q.scaled_dot_product_attention(&k, &v, true).unwrap())
                })
            });
            g.throughput(Throughput::Elements((10 * b * h * t * t * d) as u64));
            g.bench_function(format!("{name}/{dtype}/fused_forward_backward"), |bch| {
                bch.iter(|| {
                    let o = q.scaled_dot_product_attention(&k, &v, true).unwrap();
                    let grads = o.sum_all().unwrap().backward().unwrap();
                    done(grads.get(&q).unwrap())
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_cpu, bench_cuda);
criterion_main!(benches);
