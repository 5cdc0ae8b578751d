//! The GEMM meter: optional counts of the work and time of the packed CPU GEMMs ([`super::sgemm`],
//! [`super::dgemm`], [`super::bgemm`] and their `_into` forms, all of which end in `driver::run`),
//! per shape, so that a benchmark can say how fast a model's matrix products run inside its step.
//! `kiln bench --kernels gpt` turns it on for two extra training steps after the timed ones.
//!
//! Off (the default) it costs one relaxed atomic load per GEMM call. On ([`meter_start`]), every
//! call records its shape, its `2·m·n·k` FLOPs and its **core time**: the wall time of the call on
//! the thread that made it, plus the time each of its slabs took on another thread (a product big
//! enough to be split over threads runs one slab of C per thread, `driver::run`). So a product on
//! two threads that takes 10 ms counts about 20 ms: the cores it held. The time includes packing,
//! the micro-kernels, the write-back, the fork-join and a slab's wait for the slower one, and the
//! page faults of a freshly allocated C's first write (which for outputs of more than 32 MiB, mapped
//! anew by glibc each time, cost a GPT-2 LM head product about a fifth of its time); it does not
//! include the allocation of C or anything done to the result afterwards (the matmul's epilogue). The products of the streamed path (`streamed.rs`: at most
//! [`super::STREAM_MAX_M`] rows, as in decoding) are not metered; a training step has none.
//!
//! The meter's own reads of the thread CPU clock (below: a system call, ~0.4 µs on this project's
//! VM, a tenth of an attention tile's product) are made outside the wall-clock intervals.
//!
//! Each record also holds the same sum in **thread CPU time** (`CLOCK_THREAD_CPUTIME_ID`: time the
//! threads ran, not time they waited), which on a machine shared with other processes stays close to
//! what the products cost, where wall time counts the time other processes held the core. On a quiet
//! machine the two agree but for the waits (a thread that waits for the other's slab).
//!
//! [`meter_stop`] returns the records, one per distinct shape, and turns it off. The meter is
//! global to the process: products run by other threads meanwhile (a test beside the one that
//! reads it) are counted too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::thread::ThreadId;
use std::time::Instant;

/// Whether the meter records.
static ON: AtomicBool = AtomicBool::new(false);

/// The records by shape, while on.
static RECORDS: Mutex<Option<HashMap<GemmShape, Sums>>> = Mutex::new(None);

/// A shape's sums: calls, FLOPs, core seconds, CPU seconds.
type Sums = (u64, f64, f64, f64);

/// How an operand is laid out, as the caller passed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Order {
    /// Rows contiguous (column stride 1): `x`, `W` read as is.
    Row,
    /// Columns contiguous (row stride 1): a transposed view, `Wᵀ` in `x·Wᵀ`, `dYᵀ` in `dYᵀ·X`.
    Col,
    /// Neither (a strided view, or a single row or column).
    Strided,
}

impl Order {
    fn of(rs: usize, cs: usize) -> Self {
        match (rs, cs) {
            (_, 1) => Order::Row,
            (1, _) => Order::Col,
            _ => Order::Strided,
        }
    }

    /// `N` (rows contiguous), `T` (columns contiguous: a transposed operand) or `S`.
    pub fn letter(self) -> char {
        match self {
            Order::Row => 'N',
            Order::Col => 'T',
            Order::Strided => 'S',
        }
    }
}

/// One GEMM shape as its caller asked for it: `C (m×n) = A (m×k) · B (k×n)`, A's and B's layouts,
/// and the micro-kernel that ran it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct GemmShape {
    /// The micro-kernel: `avx512 f32`, `avx2 f64`, `avx512bf16`, `amx bf16`, `portable f32`, ...
    pub kernel: &'static str,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: Order,
    pub b: Order,
}

/// What the meter saw of one [`GemmShape`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct GemmRecord {
    pub shape: GemmShape,
    pub calls: u64,
    /// `2·m·n·k` per call, summed.
    pub flops: f64,
    /// Core time in seconds (module header), summed over the calls.
    pub core_s: f64,
    /// The same in thread CPU time (module header); 0 where the OS has no thread CPU clock.
    pub cpu_s: f64,
}

/// Clears the meter's records and starts recording.
pub fn meter_start() {
    *RECORDS.lock().unwrap_or_else(|e| e.into_inner()) = Some(HashMap::new());
    ON.store(true, Relaxed);
}

/// Stops recording and returns what was recorded since [`meter_start`], the largest core time
/// first (nothing if the meter was not started).
pub fn meter_stop() -> Vec<GemmRecord> {
    ON.store(false, Relaxed);
    let records = RECORDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default();
    let mut records: Vec<GemmRecord> = records
        .into_iter()
        .map(|(shape, (calls, flops, core_s, cpu_s))| GemmRecord {
            shape,
            calls,
            flops,
            core_s,
            cpu_s,
        })
        .collect();
    records.sort_by(|a, b| b.core_s.total_cmp(&a.core_s));
    records
}

/// One metered call, from its start on the calling thread.
pub(super) struct Call {
    shape: GemmShape,
    start: Instant,
    start_cpu: f64,
    caller: ThreadId,
    /// Nanoseconds of this call's slabs that ran on other threads: wall time, thread CPU time.
    others_ns: [AtomicU64; 2],
}

impl Call {
    /// Starts metering a call of `shape` if the meter is on (one relaxed load when it is not).
    #[inline]
    pub(super) fn start(shape: impl FnOnce() -> GemmShape) -> Option<Call> {
        ON.load(Relaxed).then(|| {
            // the thread CPU clock (a system call, ~0.4 µs on a VM) read before the wall clock
            // starts, and after it stops (`finish`): the meter does not time itself
            let (shape, start_cpu) = (shape(), thread_cpu_s());
            Call {
                shape,
                start: Instant::now(),
                start_cpu,
                caller: std::thread::current().id(),
                others_ns: [AtomicU64::new(0), AtomicU64::new(0)],
            }
        })
    }

    /// Runs one slab of the call, timing it if it runs on another thread than the caller's.
    pub(super) fn slab<R>(&self, f: impl FnOnce() -> R) -> R {
        if std::thread::current().id() == self.caller {
            return f();
        }
        // as in `start` and `finish`: the CPU clock's reads outside the wall interval
        let start_cpu = thread_cpu_s();
        let start = Instant::now();
        let r = f();
        let wall_ns = start.elapsed().as_nanos() as u64;
        let cpu_ns = ((thread_cpu_s() - start_cpu) * 1e9) as u64;
        self.others_ns[0].fetch_add(wall_ns, Relaxed);
        self.others_ns[1].fetch_add(cpu_ns, Relaxed);
        r
    }

    /// Records the finished call.
    pub(super) fn finish(self) {
        let [others, others_cpu] = self.others_ns.map(|ns| ns.into_inner() as f64 * 1e-9);
        let core_s = self.start.elapsed().as_secs_f64() + others;
        let cpu_s = thread_cpu_s() - self.start_cpu + others_cpu;
        let GemmShape { m, n, k, .. } = self.shape;
        let flops = 2.0 * m as f64 * n as f64 * k as f64;
        let mut records = RECORDS.lock().unwrap_or_else(|e| e.into_inner());
        // the meter may have been stopped (and its records taken) while this call ran
        if let Some(records) = records.as_mut() {
            let entry = records.entry(self.shape).or_insert((0, 0.0, 0.0, 0.0));
            entry.0 += 1;
            entry.1 += flops;
            entry.2 += core_s;
            entry.3 += cpu_s;
        }
    }
}

/// The shape of an `m×n×k` product whose A and B have these (row, column) strides.
pub(super) fn shape(kernel: &'static str, [m, n, k]: [usize; 3], a: (usize, usize), b: (usize, usize)) -> GemmShape {
    GemmShape {
        kernel,
        m,
        n,
        k,
        a: Order::of(a.0, a.1),
        b: Order::of(b.0, b.1),
    }
}

/// The calling thread's CPU time in seconds (0 where the OS has no thread CPU clock).
fn thread_cpu_s() -> f64 {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid timespec for the call to write.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            return ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9;
        }
    }
    0.0
}
