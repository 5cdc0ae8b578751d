//! Memory-bound ops: achieved GB/s (criterion "bytes/s") for elementwise, reductions, softmax
//! and layer_norm on 4M-element f32 tensors on the CPU; and the row kernels (softmax, layer_norm,
//! cross_entropy, the token + position embedding, forward and backward) and the fused AdamW step on the CPU and, when a GPU is present, on Cuda(0).

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

/// Forward + backward of the row-wise ops, on every device present (Emu is skipped: it measures
/// the emulator, not the kernels). Bytes are the ideal traffic: each tensor read or written once.
/// On a GPU each iteration ends by reading one element back, which waits for the kernels.
fn row_kernels(c: &mut Criterion) {
    let mut devices = vec![Device::Cpu];
    if kiln::backend::cuda::gpu_count() > 0 {
        devices.push(Device::Cuda(0));
    } else {
        eprintln!("row_kernels: no GPU, measuring the CPU only");
    }
    let sync = |t: &Tensor| {
        t.flatten_all()
            .unwrap()
            .narrow(0, 0, 1)
            .unwrap()
            .to_vec::<f32>()
            .unwrap()
    };
    for dev in devices {
        let mut rng = Rng::new(1);
        let (rows, cols) = (4096, 1024);
        let n = (rows * cols) as u64;
        let x = Tensor::randn(&[rows, cols], DType::F32, &mut rng, &dev)
            .unwrap()
            .requires_grad();
        let w = Tensor::ones(&[cols], DType::F32, &dev).unwrap().requires_grad();
        let b = Tensor::zeros(&[cols], DType::F32, &dev).unwrap().requires_grad();
        // GPT-2's loss: 8 sequences of 1024 tokens over a 50257-token vocabulary, here 1024 rows
        let (ce_rows, vocab) = (1024, 50257);
        let logits = Tensor::randn(&[ce_rows, vocab], DType::F32, &mut rng, &dev)
            .unwrap()
            .requires_grad();
        let ids: Vec<u32> = (0..ce_rows as u32).map(|i| i * 49 % vocab as u32).collect();
        let targets = Tensor::from_vec(ids, &[ce_rows], &dev).unwrap();

        let mut g = c.benchmark_group(format!("row_kernels_f32_{dev}"));
        g.sample_size(10);
        // softmax and layer_norm: x read, y written; backward: two tensors read, dx written
        g.throughput(Throughput::Bytes(5 * n * 4));
        g.bench_function("softmax_fwd_bwd_4096x1024", |bch| {
            bch.iter(|| {
                let y = x.softmax(-1).unwrap();
                sync(y.sum_all().unwrap().backward().unwrap().get(&x).unwrap())
            })
        });
        g.bench_function("layer_norm_fwd_bwd_4096x1024", |bch| {
            bch.iter(|| {
                let y = x.layer_norm(&w, &b, 1e-5).unwrap();
                sync(y.sum_all().unwrap().backward().unwrap().get(&x).unwrap())
            })
        });
        // cross_entropy: logits read; backward: logits read, dlogits written
        g.throughput(Throughput::Bytes(3 * (ce_rows * vocab) as u64 * 4));
        g.bench_function("cross_entropy_fwd_bwd_1024x50257", |bch| {
            bch.iter(|| {
                let loss = logits.cross_entropy(&targets).unwrap();
                sync(loss.backward().unwrap().get(&logits).unwrap())
            })
        });
        // GPT-2's input: 8 x 1024 ids, a 50257 x 768 token table and 1024 x 768 positions; forward
        // writes the rows (reading two), backward writes the whole token table's gradient
        let (bt, width) = (8 * 1024, 768);
        let wte = Tensor::randn(&[vocab, width], DType::F32, &mut rng, &dev)
            .unwrap()
            .requires_grad();
        let wpe = Tensor::randn(&[1024, width], DType::F32, &mut rng, &dev)
            .unwrap()
            .requires_grad();
        let tokens: Vec<u32> = (0..bt as u32).map(|i| i * 7919 % vocab as u32).collect();
        let tokens = Tensor::from_vec(tokens, &[8, 1024], &dev).unwrap();
        g.throughput(Throughput::Bytes(((3 * bt + vocab) * width) as u64 * 4));
        g.bench_function("token_position_embedding_fwd_bwd_gpt2", |bch| {
            bch.iter(|| {
                let x = tokens.token_position_embedding(&wte, &wpe).unwrap();
                sync(x.sum_all().unwrap().backward().unwrap().get(&wte).unwrap())
            })
        });
        g.finish();
    }
}

/// The fused AdamW step over 50 tensors of 200K f32 elements (10M parameters) plus the global
/// gradient norm, on the CPU and, when a GPU is present, on Cuda(0). Bytes: p, g, m, v read, p, m,
/// v written.
fn adamw(c: &mut Criterion) {
    let mut devices = vec![Device::Cpu];
    if kiln::backend::cuda::gpu_count() > 0 {
        devices.push(Device::Cuda(0));
    }
    for dev in devices {
        let mut rng = Rng::new(2);
        let (tensors, each) = (50, 200_000);
        let params: Vec<(String, Tensor)> = (0..tensors)
            .map(|i| {
                let p = Tensor::randn(&[each], DType::F32, &mut rng, &dev)
                    .unwrap()
                    .requires_grad();
                (format!("p{i}"), p)
            })
            .collect();
        let mut loss = Tensor::zeros(&[], DType::F32, &dev).unwrap();
        for (_, p) in &params {
            loss = loss.add(&p.mul(p).unwrap().sum_all().unwrap()).unwrap();
        }
        let mut grads = loss.backward().unwrap();
        let mut opt = kiln::optim::AdamW::new(params.clone(), 1e-3, (0.9, 0.95), 1e-8, 0.1).unwrap();
        let mut g = c.benchmark_group(format!("adamw_f32_{dev}"));
        g.sample_size(10);
        g.throughput(Throughput::Bytes((7 * tensors * each * 4) as u64));
        g.bench_function("step_50x200k", |bch| bch.iter(|| opt.step(&grads).unwrap()));
        g.throughput(Throughput::Bytes((tensors * each * 4) as u64));
        g.bench_function("clip_grad_norm_50x200k", |bch| {
            bch.iter(|| kiln::optim::clip_grad_norm(&params, &mut grads, 1e9).unwrap())
        });
        g.finish();
    }
}

criterion_group!(benches, memory_bound, row_kernels, adamw);
criterion_main!(benches);
