//! f32 GEMM throughput on square row-major matrices.
//!
//! Throughput is declared as `Elements(2·m·n·k)`, the flop count of the product, so the
//! "elem/s" criterion prints is flop/s: "400 Melem/s" means 0.4 GFLOP/s and "380 Gelem/s"
//! means 380 GFLOP/s. Compare with `scripts/numpy_matmul.py`.
//!
//! Run with `cargo bench --bench matmul`;
//! threads come from rayon's global pool (`RAYON_NUM_THREADS=2` pins it to two). About 30 s.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kiln::backend::cpu::gemm::sgemm;
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

criterion_group!(benches, bench_sgemm);
criterion_main!(benches);
