//! GEMM throughput on square matrices: the CPU's f32 GEMM, and kernels/matmul.cu on Cuda(0) in f32
//! (SIMT) and bf16 (tensor cores), plain and as `linear_gelu` (x·wᵀ + b with the fused epilogue).
//! The Cuda group is skipped, with a message, when there is no GPU. `cpu_matvec` is the decode
//! case on the CPU: one row times a SmolLM2-sized weight (`x·wᵀ`, w `[n, k]`) in f32 and bf16,
//! whose throughput is declared in bytes of weight read (bf16 streams its weight unwidened).
//!
//! Throughput is declared as `Elements(2·m·n·k)`, the flop count of the product, so the
//! "elem/s" criterion prints is flop/s: "400 Melem/s" means 0.4 GFLOP/s and "380 Gelem/s"
//! means 380 GFLOP/s. Compare with `scripts/numpy_matmul.py`.
//!
//! Run with `cargo bench --bench matmul`;
//! threads come from rayon's global pool (`RAYON_NUM_THREADS=2` pins it to two). About 30 s.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kiln::backend::cpu::gemm::sgemm;
use kiln::{DType, Device, Rng, Tensor};
use std::time::Duration;

fn bench_sgemm(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("sgemm");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in [256, 512, 1024, 2048] {
        let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.25 - 0.75).collect();
        let b: Vec<f32> = (0..n * n).map(|i| (i % 5) as f32 * 0.5 - 1.0).collect();
        let mut c = vec![0.0f32; n * n];
        group.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
        let ld = n as isize; // row-major: row stride n, column stride 1
        group.bench_function(BenchmarkId::from_parameter(n), |bencher| {
            bencher.iter(|| sgemm(n, n, n, 1.0, &a, ld, 1, &b, ld, 1, 0.0, &mut c, ld, 1));
        });
    }
    group.finish();
}

fn bench_cpu_matvec(criterion: &mut Criterion) {
    let mut rng = Rng::new(0);
    let mut group = criterion.benchmark_group("cpu_matvec");
    group.sample_size(20).measurement_time(Duration::from_secs(2));
    for dtype in [DType::F32, DType::BF16] {
        for (k, n) in [(576, 576), (576, 1536), (1536, 576), (576, 49152)] {
            let x = Tensor::randn(&[1, k], dtype, &mut rng, &Device::Cpu).unwrap();
            let w = Tensor::randn(&[n, k], dtype, &mut rng, &Device::Cpu).unwrap();
            group.throughput(Throughput::Bytes((k * n * dtype.size_in_bytes()) as u64));
            group.bench_function(
                BenchmarkId::new(format!("linear_{dtype}"), format!("{k}x{n}")),
                |bencher| {
                    bencher.iter(|| x.linear(&w, None).unwrap());
                },
            );
        }
    }
    group.finish();
}

fn bench_cuda(criterion: &mut Criterion) {
    if kiln::backend::cuda::gpu_count() == 0 {
        eprintln!("cuda matmul benchmarks skipped: no GPU");
        return;
    }
    let dev = Device::Cuda(0);
    let mut rng = Rng::new(0);
    let mut group = criterion.benchmark_group("cuda_matmul");
    group.sample_size(20).measurement_time(Duration::from_secs(2));
    for dtype in [DType::F32, DType::BF16] {
        for n in [1024, 2048, 4096] {
            let a = Tensor::randn(&[n, n], dtype, &mut rng, &dev).unwrap();
            let w = Tensor::randn(&[n, n], dtype, &mut rng, &dev).unwrap();
            let b = Tensor::randn(&[n], dtype, &mut rng, &dev).unwrap();
            // reading one element back waits for the launch
            let sync = |y: Tensor| {
                y.narrow(0, 0, 1)
                    .unwrap()
                    .narrow(1, 0, 1)
                    .unwrap()
                    .to_vec::<f64>()
                    .unwrap()
            };
            group.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
            group.bench_function(BenchmarkId::new(format!("matmul_{dtype}"), n), |bencher| {
                bencher.iter(|| sync(a.matmul(&w).unwrap()));
            });
            group.bench_function(BenchmarkId::new(format!("linear_gelu_{dtype}"), n), |bencher| {
                bencher.iter(|| sync(a.linear_gelu(&w, Some(&b)).unwrap()));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_sgemm, bench_cpu_matvec, bench_cuda);
criterion_main!(benches);
