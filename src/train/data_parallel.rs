//! Data-parallel training: N processes (ranks) train one model together, each on its slice of
//! every batch, and average their gradients before each update, so that N ranks with batch b
//! compute what one process with batch N·b computes, up to the order of floating-point sums.
//!
//! The training loop speaks to the other ranks only through [`DataParallel`], which holds a
//! [`Collective`]: the few reductions it needs. [`DataParallel::single`] is one process alone
//! (every reduction is the identity); with the `mpi` feature, `kiln::train::distributed` provides
//! the MPI implementation that `kiln train --distributed` uses under `mpirun`
//! (docs/distributed.md).
//!
//! The semantics, which every rank applies identically:
//! - `TrainConfig::batch_size` is the global batch: every rank draws the same N·b window starts
//!   from the same seeded stream and keeps rows `r·b .. (r+1)·b` ([`DataParallel::shard`]), so
//!   the random streams, the checkpoint and the metrics are those of one process with batch N·b;
//! - the per-rank losses are means over b·T tokens, so the mean of the N rank losses (and of
//!   their gradients: [`DataParallel::average_gradients`]) is the mean over the N·b·T tokens;
//! - the gradients travel in buckets whose all-reduces start while the backward pass still runs
//!   (`super::buckets`: the layout comes from the parameter list, the same on every rank), host
//!   vectors for MPI, device tensors for a collective that sums on the device (NCCL);
//! - evaluation slices each evaluation batch the same way and averages the losses;
//! - [`DataParallel::check_identical`] compares a checksum of the weights across the ranks.

use crate::{Error, Gradients, Result, Tensor};
use std::rc::Rc;

/// The reductions over all ranks that data-parallel training needs. Every rank calls each of
/// them in the same order with buffers of the same length (collective calls); each returns on
/// every rank with the same result.
///
/// Two reductions are non-blocking: [`Collective::start_all_reduce_sum_f32`] (host vectors) and
/// [`Collective::start_all_reduce_sum_tensor`] (a tensor on its device) return an [`InFlight`] at
/// once, which the caller tests between pieces of other work and finally waits for. They are
/// collective calls like the others (every rank starts the same ones, in the same order among all
/// its collective calls), and any number may be in flight at once. Their defaults run the blocking
/// all-reduce before returning, so an implementation without non-blocking reductions is correct
/// as it is, only without overlap.
pub trait Collective {
    /// This process's rank, `0..world()`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn world(&self) -> usize;
    /// Replaces `buf` on every rank by the elementwise sum of every rank's `buf`.
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()>;
    /// Replaces `buf` on every rank by the elementwise sum of every rank's `buf`.
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Replaces `buf` on every rank by the elementwise maximum of every rank's `buf`.
    fn all_reduce_max_u64(&self, buf: &mut [u64]) -> Result<()>;
    /// Sums every rank's `send` (`world()` blocks of `recv.len()` values) elementwise and
    /// leaves block `rank()` of the sum in `recv` (`MPI_Reduce_scatter_block`).
    fn reduce_scatter_sum_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()>;
    /// Concatenates every rank's `send` in rank order into `recv` (`world()` blocks of
    /// `send.len()` values) on every rank (`MPI_Allgather`).
    fn all_gather_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()>;
    /// Whether [`Collective::all_reduce_sum_tensor`] sums the tensors where they lie (NCCL on
    /// CUDA ranks, src/train/nccl.rs): the gradient buckets are then built on the device and
    /// summed by [`Collective::start_all_reduce_sum_tensor`] while the backward runs
    /// (src/train/buckets.rs), or by [`Collective::all_reduce_sum_tensor`] after it
    /// ([`DataParallel::average_gradients`], src/train/device_buckets.rs). False by default: the
    /// buckets are host vectors summed by [`Collective::start_all_reduce_sum_f32`].
    fn reduces_on_device(&self) -> bool {
        false
    }
    /// The elementwise sum over the ranks of `bucket` (f32, one dimension), on its device. By
    /// default through host memory and [`Collective::all_reduce_sum_f32`].
    fn all_reduce_sum_tensor(&self, bucket: &Tensor) -> Result<Tensor> {
        let mut values = bucket.to_vec::<f32>()?;
        self.all_reduce_sum_f32(&mut values)?;
        Tensor::from_vec(values, bucket.shape(), bucket.device())
    }
    /// Starts the elementwise sum over the ranks of `bucket` (f32, one dimension) on its device
    /// and returns without waiting for the other ranks (NCCL: on the device's communication
    /// stream, beside the kernels queued after it); the sum comes back from [`InFlight::wait`], on
    /// the bucket's device, ordered before the work queued after the wait. The default is the
    /// blocking [`Collective::all_reduce_sum_tensor`], returned as a reduction already complete.
    fn start_all_reduce_sum_tensor(&self, bucket: &Tensor) -> Result<Box<dyn InFlight<Tensor>>> {
        Ok(Box::new(Completed(self.all_reduce_sum_tensor(bucket)?)))
    }
    /// Starts replacing `buf` by the elementwise sum of every rank's `buf` and returns without
    /// waiting for the other ranks (`MPI_Iallreduce`); the sum comes back from [`InFlight::wait`].
    /// The buffer belongs to the reduction until then. The default is the blocking
    /// [`Collective::all_reduce_sum_f32`], returned as a reduction already complete.
    fn start_all_reduce_sum_f32(&self, mut buf: Vec<f32>) -> Result<Box<dyn InFlight>> {
        self.all_reduce_sum_f32(&mut buf)?;
        Ok(Box::new(Completed(buf)))
    }
}

/// A reduction started by [`Collective::start_all_reduce_sum_f32`] (whose sum is a `Vec<f32>`)
/// or [`Collective::start_all_reduce_sum_tensor`] (a [`Tensor`]) and not waited for yet. An
/// implementation that is dropped unwaited must still complete (or cancel) the operation before
/// freeing its buffer: the other ranks take part in it whatever this one does.
pub trait InFlight<T = Vec<f32>> {
    /// Lets the reduction advance without blocking and says whether it has completed. MPI
    /// libraries may only move a non-blocking collective forward inside MPI calls, so the
    /// caller tests its reductions between pieces of other work (`MPI_Test`).
    fn test(&mut self) -> Result<bool>;
    /// Blocks until the reduction has completed and returns its buffer: the elementwise sum of
    /// every rank's buffer. (A device reduction need not block the host: its tensor only has to
    /// hold the sum for the device work queued after the wait.)
    fn wait(self: Box<Self>) -> Result<T>;
}

/// A reduction that was complete when it started (the blocking defaults).
struct Completed<T>(T);

impl<T> InFlight<T> for Completed<T> {
    fn test(&mut self) -> Result<bool> {
        Ok(true)
    }
    fn wait(self: Box<Self>) -> Result<T> {
        Ok(self.0)
    }
}

/// One process alone: every reduction leaves its buffer as it is.
struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum_f32(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_max_u64(&self, _: &mut [u64]) -> Result<()> {
        Ok(())
    }
    fn reduce_scatter_sum_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        recv.copy_from_slice(send);
        Ok(())
    }
    fn all_gather_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        recv.copy_from_slice(send);
        Ok(())
    }
}

/// The variables through which launchers tell a process its rank among the ranks on its
/// machine, in the order they are read: Open MPI's `mpirun`, Slurm's `srun`, MPICH's Hydra.
pub const LOCAL_RANK_VARS: [&str; 3] = ["OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"];

/// This process's rank on its machine (to give each rank of a machine its own GPU), from the
/// first of [`LOCAL_RANK_VARS`] that `var` (an environment lookup, `std::env::var(..).ok()`)
/// finds; None when no launcher set one. A value that is not a whole number is an error naming
/// the variable.
pub fn local_rank(var: impl Fn(&str) -> Option<String>) -> Result<Option<usize>> {
    for name in LOCAL_RANK_VARS {
        if let Some(value) = var(name) {
            return value
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| dp_err(format!("{name}={value:?} is not a local rank (a whole number from 0)")));
        }
    }
    Ok(None)
}

/// By default gradients travel in buckets of about this many f32 values (16 MiB): a bucket is
/// closed once it holds at least this many, one all-reduce each
/// ([`DataParallel::with_bucket_floats`] changes it).
pub const BUCKET_FLOATS: usize = 1 << 22;

/// The ranks of a data-parallel run, as the training loop sees them.
#[derive(Clone)]
pub struct DataParallel {
    collective: Rc<dyn Collective>,
    /// The ZeRO stage: 0, or 1 for AdamW moments sharded over the ranks.
    zero: u8,
    /// A gradient bucket is closed once it holds at least this many values.
    bucket_floats: usize,
    /// Whether the training loop overlaps the gradient all-reduce with the backward.
    overlap: bool,
}

impl std::fmt::Debug for DataParallel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DataParallel {{ rank: {}, world: {}, zero: {}, bucket_floats: {}, overlap: {} }}",
            self.rank(),
            self.world(),
            self.zero,
            self.bucket_floats,
            self.overlap
        )
    }
}

pub(super) fn dp_err(msg: String) -> Error {
    Error::Invalid {
        op: "data-parallel training",
        msg,
    }
}

impl DataParallel {
    /// One process alone: the training loop as it is without data parallelism.
    pub fn single() -> DataParallel {
        DataParallel::new(Rc::new(Single))
    }

    /// The ranks that `collective` connects.
    pub fn new(collective: Rc<dyn Collective>) -> DataParallel {
        DataParallel {
            collective,
            zero: 0,
            bucket_floats: BUCKET_FLOATS,
            overlap: true,
        }
    }

    /// These ranks with the gradient all-reduce overlapped with the backward (`true`, the
    /// default: [`DataParallel::begin_reduction`] fed during the last backward of each step) or
    /// run after it (`false`: [`DataParallel::average_gradients`]). Both compute the same means;
    /// `false` is there to compare them (and to measure what the overlap hides). Every rank must
    /// use the same value.
    pub fn with_overlap(mut self, overlap: bool) -> DataParallel {
        self.overlap = overlap;
        self
    }

    /// Whether the training loop overlaps the gradient all-reduce with the backward.
    pub fn overlaps(&self) -> bool {
        self.overlap
    }

    /// These ranks with gradient buckets closed once they hold at least `floats` values
    /// (default [`BUCKET_FLOATS`]): smaller buckets start their all-reduce earlier in the
    /// backward, larger ones pay the per-message latency fewer times. Every rank must use the
    /// same value. Zero is an error.
    pub fn with_bucket_floats(mut self, floats: usize) -> Result<DataParallel> {
        if floats == 0 {
            return Err(dp_err("a gradient bucket must hold at least one value".into()));
        }
        self.bucket_floats = floats;
        Ok(self)
    }

    /// [`DataParallel::with_bucket_floats`] with buckets of `mib` MiB of f32 values (`kiln train
    /// --bucket-mib`, 16 by default); fractions are allowed, down to one value.
    pub fn with_bucket_mib(self, mib: f64) -> Result<DataParallel> {
        let floats = mib * (1 << 20) as f64 / 4.0;
        if !floats.is_finite() || floats < 1.0 {
            return Err(dp_err(format!(
                "--bucket-mib {mib}: a gradient bucket must be a positive size of at least 4 bytes"
            )));
        }
        self.with_bucket_floats(floats.round() as usize)
    }

    /// The number of values at which a gradient bucket is closed.
    pub fn bucket_floats(&self) -> usize {
        self.bucket_floats
    }

    /// These ranks with ZeRO stage `stage`: 0 (every rank holds the whole optimizer state) or 1
    /// (each rank holds the AdamW moments of its shard of the parameters, docs/distributed.md).
    pub fn with_zero(mut self, stage: u8) -> Result<DataParallel> {
        if stage > 1 {
            return Err(dp_err(format!(
                "ZeRO stage {stage} is not implemented; --zero takes 0 or 1 (sharded AdamW moments)"
            )));
        }
        self.zero = stage;
        Ok(self)
    }

    /// The ZeRO stage these ranks train with (0: none, 1: sharded AdamW moments).
    pub fn zero_stage(&self) -> u8 {
        self.zero
    }

    /// The collective operations between these ranks.
    pub fn collective(&self) -> &dyn Collective {
        &*self.collective
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.collective.rank()
    }

    /// The number of ranks.
    pub fn world(&self) -> usize {
        self.collective.world()
    }

    /// Whether this is rank 0, the one that writes the run folder and prints.
    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// Checks that a global batch of `batch` rows splits evenly over the ranks.
    pub fn check_batch(&self, batch: usize) -> Result<()> {
        let world = self.world();
        if !batch.is_multiple_of(world) {
            return Err(dp_err(format!(
                "the global batch of {batch} sequences does not split evenly over {world} ranks; \
                 give a --batch-size per rank (the global batch is --batch-size × ranks)"
            )));
        }
        Ok(())
    }

    /// This rank's rows of a global batch: rows `r·b .. (r+1)·b` of `rows`, where b is
    /// `rows.len() / world` (see [`DataParallel::check_batch`]).
    pub fn shard<'a, T>(&self, rows: &'a [T]) -> Result<&'a [T]> {
        self.check_batch(rows.len())?;
        let per_rank = rows.len() / self.world();
        let start = self.rank() * per_rank;
        Ok(&rows[start..start + per_rank])
    }

    /// The mean over the ranks of each of `values`, on every rank.
    pub fn mean(&self, values: &mut [f64]) -> Result<()> {
        if self.world() == 1 {
            return Ok(());
        }
        self.collective.all_reduce_sum_f64(values)?;
        let world = self.world() as f64;
        values.iter_mut().for_each(|v| *v /= world);
        Ok(())
    }

    /// Which of `params` have a gradient in `grads` on at least one rank (one all-reduce).
    pub(super) fn with_gradient_anywhere(&self, params: &[(String, Tensor)], grads: &Gradients) -> Result<Vec<bool>> {
        let mut present: Vec<f64> = params
            .iter()
            .map(|(_, p)| if grads.get(p).is_some() { 1.0 } else { 0.0 })
            .collect();
        self.collective.all_reduce_sum_f64(&mut present)?;
        Ok(present.iter().map(|&n| n > 0.0).collect())
    }

    /// Checks that every rank holds the same `params` (bit for bit): an xxh3 checksum of
    /// their values, compared across the ranks. `when` names the moment in the error.
    pub fn check_identical(&self, params: &[(String, Tensor)], when: &str) -> Result<()> {
        if self.world() == 1 {
            return Ok(());
        }
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for (_, p) in params {
            let values = p.to_vec::<f32>()?;
            h.update(bytemuck::cast_slice(&values));
        }
        let hash = h.digest();
        // max(h) and max(!h) = !min(h): the checksums agree when the two bounds meet
        let mut bounds = [hash, !hash];
        self.collective.all_reduce_max_u64(&mut bounds)?;
        if bounds[0] != !bounds[1] {
            return Err(dp_err(format!(
                "the ranks' weights differ {when} (checksums from {:016x} to {:016x}; rank {} has {hash:016x}): \
                 the ranks no longer train the same model",
                !bounds[1],
                bounds[0],
                self.rank()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;
    use std::cell::RefCell;
    use std::collections::VecDeque;

    /// One of `world` ranks whose reductions combine its buffer with scripted contributions of
    /// the other ranks: each sum adds the next of `sums` (the other ranks' sum), each maximum
    /// takes the next of `maxima` (the other ranks' maximum).
    struct Scripted {
        rank: usize,
        world: usize,
        sums: RefCell<VecDeque<Vec<f64>>>,
        maxima: RefCell<VecDeque<Vec<u64>>>,
    }

    fn next<T>(queue: &RefCell<VecDeque<Vec<T>>>, len: usize) -> Vec<T> {
        let others = queue.borrow_mut().pop_front().expect("a scripted reduction");
        assert_eq!(others.len(), len, "the reduction's length");
        others
    }

    impl Collective for Scripted {
        fn rank(&self) -> usize {
            self.rank
        }
        fn world(&self) -> usize {
            self.world
        }
        fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
            let others = next(&self.sums, buf.len());
            for (v, o) in buf.iter_mut().zip(others) {
                *v += o as f32;
            }
            Ok(())
        }
        fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
            let others = next(&self.sums, buf.len());
            for (v, o) in buf.iter_mut().zip(others) {
                *v += o;
            }
            Ok(())
        }
        fn all_reduce_max_u64(&self, buf: &mut [u64]) -> Result<()> {
            let others = next(&self.maxima, buf.len());
            for (v, o) in buf.iter_mut().zip(others) {
                *v = (*v).max(o);
            }
            Ok(())
        }
        /// The next of `sums` is the other ranks' sum of the whole `send`.
        fn reduce_scatter_sum_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
            let others = next(&self.sums, send.len());
            let block = self.rank * recv.len()..(self.rank + 1) * recv.len();
            for ((r, s), o) in recv.iter_mut().zip(&send[block.clone()]).zip(&others[block]) {
                *r = s + *o as f32;
            }
            Ok(())
        }
        /// The next of `sums` is the whole gathered buffer; this rank's block is its own `send`.
        fn all_gather_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
            let others = next(&self.sums, recv.len());
            for (r, o) in recv.iter_mut().zip(others) {
                *r = o as f32;
            }
            recv[self.rank * send.len()..(self.rank + 1) * send.len()].copy_from_slice(send);
            Ok(())
        }
    }

    fn ranks(rank: usize, world: usize, sums: Vec<Vec<f64>>) -> DataParallel {
        scripted(rank, world, sums, vec![])
    }

    fn scripted(rank: usize, world: usize, sums: Vec<Vec<f64>>, maxima: Vec<Vec<u64>>) -> DataParallel {
        DataParallel::new(Rc::new(Scripted {
            rank,
            world,
            sums: RefCell::new(sums.into()),
            maxima: RefCell::new(maxima.into()),
        }))
    }

    #[test]
    fn local_rank_reads_open_mpi_then_slurm_then_hydra() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
        };
        assert_eq!(local_rank(env(&[])).unwrap(), None);
        assert_eq!(local_rank(env(&[("SLURM_LOCALID", "3")])).unwrap(), Some(3));
        assert_eq!(local_rank(env(&[("MPI_LOCALRANKID", "5")])).unwrap(), Some(5));
        let both = &[("SLURM_LOCALID", "3"), ("OMPI_COMM_WORLD_LOCAL_RANK", "1")];
        assert_eq!(local_rank(env(both)).unwrap(), Some(1));
        let err = local_rank(env(&[("SLURM_LOCALID", "x1")])).unwrap_err().to_string();
        assert!(err.contains("SLURM_LOCALID") && err.contains("x1"), "{err}");
        assert!(local_rank(env(&[("OMPI_COMM_WORLD_LOCAL_RANK", "-1")])).is_err());
    }

    #[test]
    fn shard_takes_the_rank_th_slice_and_rejects_uneven_batches() {
        let rows: Vec<usize> = (0..12).collect();
        assert_eq!(ranks(0, 3, vec![]).shard(&rows).unwrap(), &[0, 1, 2, 3]);
        assert_eq!(ranks(2, 3, vec![]).shard(&rows).unwrap(), &[8, 9, 10, 11]);
        let err = ranks(1, 5, vec![]).shard(&rows).unwrap_err().to_string();
        assert!(err.contains("12 sequences") && err.contains("5 ranks"), "{err}");
        assert_eq!(DataParallel::single().shard(&rows).unwrap(), &rows[..]);
    }

    #[test]
    fn mean_divides_the_sum_over_ranks_by_their_number() {
        let mut v = [1.0, 3.0];
        ranks(1, 4, vec![vec![5.0, -3.0]]).mean(&mut v).unwrap();
        assert_eq!(v, [1.5, 0.0]);
    }

    #[test]
    fn average_gradients_is_the_mean_over_ranks_with_missing_gradients_as_zeros() {
        let dev = Device::Cpu;
        let a = Tensor::from_vec(vec![0f32; 3], &[3], &dev).unwrap();
        let b = Tensor::from_vec(vec![0f32; 2], &[2], &dev).unwrap();
        let c = Tensor::from_vec(vec![0f32; 1], &[1], &dev).unwrap();
        let params = vec![
            ("a".to_string(), a.clone()),
            ("b".to_string(), b.clone()),
            ("c".to_string(), c.clone()),
        ];
        let mut grads = Gradients::default();
        grads.insert(&a, Tensor::from_vec(vec![1f32, -2., 4.], &[3], &dev).unwrap());
        // 2 ranks: this one has a gradient for `a` only, the other one for `a` and `b`, none
        // has one for `c`. One bucket, the parameters in reverse order (c, b, a), then their
        // presence flags: the other rank's values are c = 0, b = [8, -6], a = [3, 2, 0].
        let dp = ranks(1, 2, vec![vec![0.0, 8.0, -6.0, 3.0, 2.0, 0.0, 0.0, 1.0, 1.0]]);
        dp.average_gradients(&params, &mut grads).unwrap();
        assert_eq!(grads.get(&a).unwrap().to_vec::<f32>().unwrap(), vec![2.0, 0.0, 2.0]);
        assert_eq!(grads.get(&b).unwrap().to_vec::<f32>().unwrap(), vec![4.0, -3.0]);
        assert_eq!(grads.get(&b).unwrap().shape(), &[2]);
        assert!(grads.get(&c).is_none());
    }

    #[test]
    fn check_identical_fails_when_a_rank_differs() {
        let dev = Device::Cpu;
        let a = Tensor::from_vec(vec![1f32, 2.], &[2], &dev).unwrap();
        let params = vec![("a".to_string(), a)];
        let own = xxhash_rust::xxh3::xxh3_64(bytemuck::cast_slice(&[1f32, 2.]));
        // the other rank has the same weights: its checksum bounds are this rank's own
        scripted(0, 2, vec![], vec![vec![own, !own]])
            .check_identical(&params, "at step 3")
            .unwrap();
        // the other rank's checksum is above or below this one's: either raises a bound
        for other in [own.wrapping_add(1), own.wrapping_sub(1)] {
            let err = scripted(0, 2, vec![], vec![vec![other, !other]])
                .check_identical(&params, "at step 3")
                .unwrap_err()
                .to_string();
            assert!(err.contains("weights differ at step 3"), "{err}");
        }
    }
}
