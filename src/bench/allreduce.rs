//! `kiln bench --kernels allreduce` under `mpirun`: the time of one f32 sum all-reduce over the
//! ranks (the collective data-parallel training calls for its gradient buckets) at message sizes
//! from 4 bytes to 64 MiB. The smallest message gives the latency, the largest the bandwidth, in
//! the two conventions of nccl-tests: *algorithm bandwidth* bytes / time, and *bus bandwidth*
//! algbw · 2(N−1)/N, the rate at which each rank's link moves data in a ring all-reduce (which
//! sends and receives 2(N−1)/N of the message per rank), comparable with a link's datasheet
//! figure whatever N is. docs/distributed.md builds its scaling model from these figures.
//!
//! Every rank runs the same calls: each size is warmed up twice, the repetition count is agreed
//! (the largest any rank wants, from its first timed call), and every call is timed on each rank
//! between two all-reduces of one value (a barrier), so that no rank starts a call before the
//! others ended the previous one. The figures are rank 0's.

use super::machine::Machine;
use super::timing::{repetitions, Stats};
use crate::train::data_parallel::Collective;
use crate::train::nccl::NcclRanks;
use crate::{Device, Error, Result, Tensor};
use std::time::Instant;

/// The default message sizes in bytes: 4 B, then ×8 up to 16 MiB, and 64 MiB.
pub const DEFAULT_BYTES: [usize; 10] = [
    4,
    32,
    256,
    2 << 10,
    16 << 10,
    128 << 10,
    1 << 20,
    8 << 20,
    16 << 20,
    64 << 20,
];

/// One message size.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AllReduceRow {
    /// The message: f32 values per rank ...
    pub floats: usize,
    /// ... and their bytes.
    pub bytes: usize,
    /// Rank 0's times of one all-reduce.
    pub stats: Stats,
    /// bytes / median time, in GB/s (10⁹ bytes per second).
    pub algbw_gb_s: f64,
    /// algbw · 2(N−1)/N, in GB/s: what each rank's link carries in a ring all-reduce.
    pub busbw_gb_s: f64,
}

/// The report: the machine and launch, and a row per size.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AllReduceReport {
    /// "allreduce".
    pub case: &'static str,
    /// The transport: MPI's `MPI_Allreduce` (f32, sum) over `MPI_COMM_WORLD`, or NCCL's
    /// `ncclAllReduce` with the library's version.
    pub collective: String,
    /// The number of ranks.
    pub ranks: usize,
    /// Rank 0's machine (the ranks may run on others).
    pub machine: Machine,
    /// How the calls were timed.
    pub timing: &'static str,
    /// The check of the sums (NCCL: every value of every size against the exact sum over the
    /// ranks); None where the values are not checked.
    pub check: Option<String>,
    /// When, in seconds since 1970.
    pub date_unix: u64,
    /// The median time of the smallest message, in µs: the latency of one all-reduce.
    pub latency_us: f64,
    /// The largest bus bandwidth over the sizes, in GB/s.
    pub peak_busbw_gb_s: f64,
    pub rows: Vec<AllReduceRow>,
}

/// One all-reduce of one value: every rank leaves it after every rank entered it.
fn barrier(c: &dyn Collective) -> Result<()> {
    c.all_reduce_sum_f64(&mut [0.0])
}

/// Times the all-reduce of `bytes` (multiples of 4) on every rank of `c`; `reps` fixes the
/// repetitions, else each size repeats enough to fill about `budget_s` seconds (5 to 200).
/// Every rank must call it with the same arguments; every rank returns rank 0's figures.
pub fn run(c: &dyn Collective, bytes: &[usize], reps: Option<usize>, budget_s: f64) -> Result<AllReduceReport> {
    check_sizes(bytes)?;
    let mut rows = Vec::with_capacity(bytes.len());
    for &size in bytes {
        let mut buf: Vec<f32> = (0..size / 4).map(|i| (i % 7) as f32).collect();
        rows.push(time_size(c, size, reps, budget_s, || c.all_reduce_sum_f32(&mut buf))?);
    }
    Ok(report(
        c.world(),
        "MPI_Allreduce (f32, sum) over MPI_COMM_WORLD".into(),
        Machine::this(&Device::Cpu),
        "host clock, median per size, rank 0, each call between two barriers",
        None,
        rows,
    ))
}

/// Times and checks `ncclAllReduce` (f32, sum) of device buffers of `bytes` (multiples of 4) on
/// every rank of `ranks`, as [`run`] times MPI's: rank r's buffer holds (r + 1)·(1 + i mod 7) at
/// index i, so the sum is exactly (1 + i mod 7)·N(N+1)/2, checked for every value of every size
/// (the sum copied to the host once per size, outside the timing), both from the blocking
/// all-reduce on the compute stream and from the non-blocking one on the communication stream
/// that training overlaps with the backward ([`Collective::start_all_reduce_sum_tensor`], started,
/// tested and waited for); a wrong value is an error.
/// Each timed call is the all-reduce into a fresh device buffer and a wait for the stream, on
/// the host clock. Every rank must call it; every rank returns rank 0's figures.
pub fn run_nccl(ranks: &NcclRanks, bytes: &[usize], reps: Option<usize>, budget_s: f64) -> Result<AllReduceReport> {
    check_sizes(bytes)?;
    let c: &dyn Collective = ranks;
    let (rank, world) = (c.rank(), c.world());
    let device = ranks.comm().device().device();
    let triangle = (world * (world + 1) / 2) as f32;
    let mut rows = Vec::with_capacity(bytes.len());
    let mut checked = 0usize;
    for &size in bytes {
        let floats = size / 4;
        let own: Vec<f32> = (0..floats).map(|i| (rank + 1) as f32 * (1 + i % 7) as f32).collect();
        let src = Tensor::from_vec(own, &[floats], &device)?;
        let blocking = c.all_reduce_sum_tensor(&src)?;
        let mut started = c.start_all_reduce_sum_tensor(&src)?;
        started.test()?;
        let overlapped = started.wait()?;
        for (sum, stream) in [(blocking, "compute"), (overlapped, "communication")] {
            let sum = sum.to_vec::<f32>()?;
            if let Some((i, &got)) = sum
                .iter()
                .enumerate()
                .find(|&(i, &v)| v != (1 + i % 7) as f32 * triangle)
            {
                return Err(Error::invalid(
                    "bench allreduce",
                    format!(
                        "ncclAllReduce of {floats} f32 over {world} ranks on the {stream} stream gave {got} at index {i}, not {} (rank {rank})",
                        (1 + i % 7) as f32 * triangle
                    ),
                ));
            }
            if sum.len() != floats {
                return Err(Error::invalid(
                    "bench allreduce",
                    format!(
                        "ncclAllReduce of {floats} f32 on the {stream} stream gave {} values",
                        sum.len()
                    ),
                ));
            }
        }
        checked += floats;
        rows.push(time_size(c, size, reps, budget_s, || {
            c.all_reduce_sum_tensor(&src)?;
            ranks.comm().synchronize()
        })?);
    }
    Ok(report(
        world,
        format!("ncclAllReduce (f32, sum) of device buffers, {}", ranks.describe()),
        Machine::this(&device),
        "host clock around the call and a wait for the GPU stream, median per size, rank 0, each call between two barriers",
        Some(format!(
            "every sum exact: {checked} values over {} sizes, each (1 + i mod 7)·{triangle} on {world} rank(s), on the compute and on the communication stream",
            bytes.len()
        )),
        rows,
    ))
}

fn check_sizes(bytes: &[usize]) -> Result<()> {
    if let Some(&bad) = bytes.iter().find(|&&b| b == 0 || b % 4 != 0) {
        return Err(Error::invalid(
            "bench allreduce",
            format!("a message of {bad} bytes is not a positive whole number of f32 values (multiples of 4 bytes)"),
        ));
    }
    Ok(())
}

/// One size: `call` (one all-reduce of `size` bytes) warmed up twice, then timed on every rank
/// between barriers as many times as the rank that wants the most asks; rank 0's statistics.
fn time_size(
    c: &dyn Collective,
    size: usize,
    reps: Option<usize>,
    budget_s: f64,
    mut call: impl FnMut() -> Result<()>,
) -> Result<AllReduceRow> {
    let mut timed = || -> Result<f64> {
        barrier(c)?;
        let t0 = Instant::now();
        call()?;
        Ok(t0.elapsed().as_secs_f64())
    };
    timed()?;
    timed()?;
    // the ranks agree on the count: the largest any of them asks for
    let wanted = repetitions(reps, timed()?, budget_s) as u64;
    let mut agreed = [wanted];
    c.all_reduce_max_u64(&mut agreed)?;
    let samples = (0..agreed[0]).map(|_| timed()).collect::<Result<Vec<f64>>>()?;
    // rank 0's statistics, sent to every rank
    let own = Stats::of(&samples);
    let mut shared = if c.rank() == 0 {
        [own.median_s, own.min_s, own.max_s]
    } else {
        [0.0; 3]
    };
    c.all_reduce_sum_f64(&mut shared)?;
    let stats = Stats {
        reps: samples.len(),
        median_s: shared[0],
        min_s: shared[1],
        max_s: shared[2],
    };
    let algbw = size as f64 / stats.median_s / 1e9;
    Ok(AllReduceRow {
        floats: size / 4,
        bytes: size,
        stats,
        algbw_gb_s: algbw,
        busbw_gb_s: algbw * ring_factor(c.world()),
    })
}

fn report(
    ranks: usize,
    collective: String,
    machine: Machine,
    timing: &'static str,
    check: Option<String>,
    rows: Vec<AllReduceRow>,
) -> AllReduceReport {
    let latency_us = rows.first().map_or(0.0, |r| r.stats.median_s * 1e6);
    let peak_busbw_gb_s = rows.iter().map(|r| r.busbw_gb_s).fold(0.0, f64::max);
    AllReduceReport {
        case: "allreduce",
        collective,
        ranks,
        machine,
        timing,
        check,
        date_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        latency_us,
        peak_busbw_gb_s,
        rows,
    }
}

/// 2(N−1)/N: the share of a message that each rank sends (and receives) in a ring all-reduce
/// of N ranks (reduce-scatter, then all-gather, each N−1 steps of 1/N of the message).
pub fn ring_factor(world: usize) -> f64 {
    2.0 * (world as f64 - 1.0) / world as f64
}

/// The terminal table of a report.
pub fn table(r: &AllReduceReport) -> String {
    let mut s = format!(
        "all-reduce over {} ranks ({}); {}\n{:>12} {:>12} {:>12} {:>12} {:>6}\n",
        r.ranks,
        r.collective,
        r.machine.gpu.as_deref().unwrap_or(&r.machine.cpu),
        "bytes",
        "median µs",
        "algbw GB/s",
        "busbw GB/s",
        "reps"
    );
    for row in &r.rows {
        s.push_str(&format!(
            "{:>12} {:>12.2} {:>12.3} {:>12.3} {:>6}\n",
            row.bytes,
            row.stats.median_s * 1e6,
            row.algbw_gb_s,
            row.busbw_gb_s,
            row.stats.reps
        ));
    }
    let peak_algbw = r.rows.iter().map(|row| row.algbw_gb_s).fold(0.0, f64::max);
    s.push_str(&format!(
        "latency {:.2} µs, peak bus bandwidth {:.3} GB/s, peak algorithm bandwidth {:.3} GB/s\n",
        r.latency_us, r.peak_busbw_gb_s, peak_algbw
    ));
    if let Some(check) = &r.check {
        s.push_str(&format!("sums: {check}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::data_parallel::DataParallel;

    #[test]
    fn the_ring_factor_is_the_share_each_rank_sends() {
        assert_eq!(ring_factor(1), 0.0);
        assert_eq!(ring_factor(2), 1.0);
        assert_eq!(ring_factor(8), 1.75);
    }

    /// One process: every size is timed, the figures follow from the times, and sizes that are
    /// not whole f32 messages are refused.
    #[test]
    fn one_rank_times_every_size_and_rejects_partial_floats() {
        let dp = DataParallel::single();
        let r = run(dp.collective(), &[4, 4096], Some(5), 0.01).unwrap();
        assert_eq!(r.ranks, 1);
        assert_eq!(r.rows.iter().map(|r| r.floats).collect::<Vec<_>>(), [1, 1024]);
        for row in &r.rows {
            assert_eq!(row.stats.reps, 5);
            assert!(row.stats.min_s <= row.stats.median_s && row.stats.median_s <= row.stats.max_s);
            let want = row.bytes as f64 / row.stats.median_s / 1e9;
            assert!((row.algbw_gb_s - want).abs() <= 1e-12 * want, "{row:?}");
            assert_eq!(row.busbw_gb_s, 0.0, "one rank sends nothing");
        }
        assert_eq!(r.latency_us, r.rows[0].stats.median_s * 1e6);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["case"], "allreduce");
        assert_eq!(json["rows"][1]["bytes"], 4096);
        for bad in [0, 6] {
            let err = run(dp.collective(), &[bad], None, 0.01).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad} bytes")), "{err}");
        }
    }
}
