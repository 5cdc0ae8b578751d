//! Memory-bound CPU ops: achieved GB/s (criterion "bytes/s") for elementwise, reductions,
//! softmax and layer_norm on 4M-element f32 tensors.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln::{DType, Device, Rng, Tensor};

fn memory_bound(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut rng = Rng::new(0);
    let (rows, cols) = (4096, 1024);
    let n = rows * cols;
    let x = Tensor::randn(&[rows, cols], DType::F32, &mut rng, &dev).unwrap();
    let y = Tensor::randn(&[rows, cols], DType::F32, &mut rng, &dev).unwrap();
    let w = Tensor::ones(&[cols], DType::F32, &dev).unwrap();
    let b = Tensor::zeros(&[cols], DType::F32, &dev).unwrap();
    let bytes = |tensors_touched: usize| Throughput::Bytes((tensors_touched * n * 4) as u64);

    let mut g = c.benchmark_group("cpu_memory_bound_f32_4096x1024");
    g.sample_size(20);
    g.throughput(bytes(2));
    g.bench_function("gelu", |bch| bch.iter(|| x.gelu().unwrap()));
    g.throughput(bytes(3));
    g.bench_function("add", |bch| bch.iter(|| x.add(&y).unwrap()));
    g.throughput(bytes(2));
    g.bench_function("add_row_broadcast", |bch| bch.iter(|| x.add(&w).unwrap()));
    g.throughput(bytes(1));
    g.bench_function("sum_last_dim", |bch| bch.iter(|| x.sum(&[-1], false).unwrap()));
    g.bench_function("sum_first_dim", |bch| bch.iter(|| x.sum(&[0], false).unwrap()));
    g.throughput(bytes(2));
    g.bench_function("softmax_last_dim", |bch| bch.iter(|| x.softmax(-1).unwrap()));
    g.bench_function("layer_norm", |bch| bch.iter(|| x.layer_norm(&w, &b, 1e-5).unwrap()));
    g.finish();
}

criterion_group!(benches, memory_bound);
criterion_main!(benches);
