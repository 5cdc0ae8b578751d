//! Every `kiln bench` case (src/bench/cases.rs) at its default sizes under criterion, for
//! regression tracking: the same inputs (rotated sets) and the same clock (CUDA events on a GPU)
//! as `kiln bench`, which adds the rooflines and the library comparison.
//!
//!     cargo bench --bench kernels                          # the CPU
//!     KILN_BENCH_DEVICE=cuda cargo bench --bench kernels   # a GPU (skipped, with a message, if none)
//!
//! Throughput is FLOP/s ("elem/s") for matmuls and bytes/s for the memory-bound kernels.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kiln::bench::cases::{Setup, CASES};
use kiln::bench::timing::Clock;
use kiln::bench::{rotate_bytes, size_name};
use kiln::{Device, Rng};
use std::time::Duration;

fn kernels(c: &mut Criterion) {
    let dev: Device = std::env::var("KILN_BENCH_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()
        .expect("KILN_BENCH_DEVICE is cpu, emu, cuda or cuda:N");
    let clock = match Clock::for_device(&dev) {
        Ok(clock) => clock,
        Err(e) => {
            eprintln!("kernels bench skipped: {e}");
            return;
        }
    };
    let mut group = c.benchmark_group(format!("kernels_{dev}"));
    group.sample_size(10).warm_up_time(Duration::from_millis(300));
    for case in CASES {
        for dims in case.default_sizes(&dev) {
            let setup = Setup {
                dev,
                dims,
                rotate_bytes: rotate_bytes(&dev),
            };
            // an op without a kernel on this device yet fails here, not inside criterion
            let prepared = (case.prepare)(&setup, &mut Rng::new(0)).and_then(|mut w| (w.run)(0).map(|()| w));
            let mut work = match prepared {
                Ok(work) => work,
                Err(e) => {
                    eprintln!("{} {}: skipped: {e}", case.name, size_name(dims));
                    continue;
                }
            };
            group.throughput(if work.flops > 0.0 {
                Throughput::Elements(work.flops as u64)
            } else {
                Throughput::Bytes(work.bytes as u64)
            });
            let mut call = 0;
            group.bench_function(BenchmarkId::new(case.name, size_name(dims)), |b| {
                b.iter_custom(|iters| {
                    let times = clock
                        .time(iters as usize, |_| {
                            call += 1;
                            (work.run)(call)
                        })
                        .expect("the case ran once already");
                    Duration::from_secs_f64(times.iter().sum())
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
