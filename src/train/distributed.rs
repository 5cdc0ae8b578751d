//! MPI for data-parallel training (the `mpi` feature): [`Mpi`] starts MPI in a process that
//! `mpirun` (or `srun`) launched, reads its rank and the number of ranks, and implements the
//! training loop's [`Collective`] with `MPI_Allreduce` over `MPI_COMM_WORLD`, and its
//! non-blocking all-reduce (the gradient buckets that overlap the backward) with
//! `MPI_Iallreduce`, `MPI_Test` and `MPI_Wait`. See docs/distributed.md for how to launch a run
//! and what it computes.
//!
//! Failure: MPI's default error handler (`MPI_ERRORS_ARE_FATAL`) ends the whole job when a
//! collective fails, and a rank whose training returns an error must end the job too
//! ([`Mpi::abort`]) rather than return normally: `MPI_Finalize` would wait for ranks that are
//! blocked in the next all-reduce and never come.

use super::data_parallel::{Collective, DataParallel, InFlight};
use crate::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};
use std::os::raw::c_int;
use std::rc::Rc;

/// This process's place in an MPI job. Dropping it finalizes MPI (once, at the end of a run
/// that succeeded on every rank).
pub struct Mpi {
    world: SimpleCommunicator,
    // dropped last: finalizes MPI after the communicator is gone
    _universe: Universe,
}

impl Mpi {
    /// Initializes MPI. An error if it was initialized before in this process.
    pub fn init() -> Result<Rc<Mpi>> {
        let universe = mpi::initialize().ok_or_else(|| Error::Invalid {
            op: "mpi",
            msg: "MPI is already initialized in this process".into(),
        })?;
        Ok(Rc::new(Mpi {
            world: universe.world(),
            _universe: universe,
        }))
    }

    /// The training loop's view of these ranks.
    pub fn data_parallel(self: &Rc<Self>) -> DataParallel {
        DataParallel::new(self.clone())
    }

    /// Gives every rank rank 0's `buf` (`MPI_Bcast`): how rank 0 hands out the NCCL unique id
    /// (src/train/nccl.rs). Every rank calls it with a buffer of the same length.
    pub fn broadcast_from_root(&self, buf: &mut [u8]) -> Result<()> {
        self.world.process_at_rank(0).broadcast_into(buf);
        Ok(())
    }

    /// Ends every rank of the job with exit status `code` (`MPI_Abort`): how a rank that failed
    /// stops the others, which may be waiting in a collective call for it.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn world(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        let send = buf.to_vec();
        self.world.all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        let send = buf.to_vec();
        self.world.all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }

    fn all_reduce_max_u64(&self, buf: &mut [u64]) -> Result<()> {
        let send = buf.to_vec();
        self.world.all_reduce_into(&send[..], buf, SystemOperation::max());
        Ok(())
    }

    fn reduce_scatter_sum_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        check_blocks("reduce-scatter", send.len(), recv.len(), self.world())?;
        self.world.reduce_scatter_block_into(send, recv, SystemOperation::sum());
        Ok(())
    }

    fn all_gather_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        check_blocks("all-gather", recv.len(), send.len(), self.world())?;
        self.world.all_gather_into(send, recv);
        Ok(())
    }

    fn start_all_reduce_sum_f32(&self, buf: Vec<f32>) -> Result<Box<dyn InFlight>> {
        Ok(Box::new(MpiReduction::start(&self.world, buf)?))
    }
}

/// A non-blocking sum over the ranks (`MPI_Iallreduce`) of a buffer it owns: MPI reads `send`
/// (a copy of the buffer: rsmpi's bindings have no `MPI_IN_PLACE`) and writes `recv` until the
/// request completes, so both live here, on the heap (a `Vec`'s values stay put when the `Vec`
/// moves), until a test or a wait has seen it complete; a drop before that waits for it.
struct MpiReduction {
    send: Vec<f32>,
    recv: Vec<f32>,
    request: ffi::MPI_Request,
    complete: bool,
}

impl MpiReduction {
    fn start(world: &SimpleCommunicator, buf: Vec<f32>) -> Result<MpiReduction> {
        let count = c_int::try_from(buf.len()).map_err(|_| Error::Invalid {
            op: "mpi",
            msg: format!("an all-reduce of {} values is more than MPI counts", buf.len()),
        })?;
        let mut r = MpiReduction {
            send: buf.clone(),
            recv: buf,
            // SAFETY: reads an immutable handle constant that MPI's initialisation set
            request: unsafe { ffi::RSMPI_REQUEST_NULL },
            complete: false,
        };
        // SAFETY: `send` and `recv` hold `count` f32 values each (MPI_FLOAT), and stay allocated
        // and untouched by this program until MPI reports the request complete (`complete`,
        // also on drop); the communicator is the live MPI_COMM_WORLD of an initialized MPI.
        let rc = unsafe {
            ffi::MPI_Iallreduce(
                r.send.as_ptr().cast(),
                r.recv.as_mut_ptr().cast(),
                count,
                ffi::RSMPI_FLOAT,
                ffi::RSMPI_SUM,
                world.as_raw(),
                &mut r.request,
            )
        };
        if rc != ffi::MPI_SUCCESS as c_int {
            r.complete = true; // nothing was started
            return Err(Error::Invalid {
                op: "mpi",
                msg: format!("MPI_Iallreduce of {count} values failed with error code {rc}"),
            });
        }
        Ok(r)
    }

    /// Blocks until the request is complete (`MPI_Wait`), once.
    fn complete(&mut self) {
        if !self.complete {
            // SAFETY: `request` is the active request that MPI_Iallreduce returned, not yet
            // completed (a completed one is never waited again: `complete` is set)
            unsafe { ffi::MPI_Wait(&mut self.request, ffi::RSMPI_STATUS_IGNORE) };
            self.complete = true;
        }
    }
}

impl InFlight for MpiReduction {
    fn test(&mut self) -> Result<bool> {
        if !self.complete {
            let mut flag: c_int = 0;
            // SAFETY: as in `complete`: an active request, tested until MPI reports it complete
            // (which frees it and sets the handle to MPI_REQUEST_NULL)
            unsafe { ffi::MPI_Test(&mut self.request, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
            self.complete = flag != 0;
        }
        Ok(self.complete)
    }

    fn wait(mut self: Box<Self>) -> Result<Vec<f32>> {
        self.complete();
        Ok(std::mem::take(&mut self.recv))
    }
}

impl Drop for MpiReduction {
    fn drop(&mut self) {
        self.complete(); // MPI may still read and write the buffers: they must outlive it
    }
}

/// That a buffer of `whole` values is `world` blocks of `block`: MPI would read or write past
/// the shorter buffer otherwise.
fn check_blocks(op: &str, whole: usize, block: usize, world: usize) -> Result<()> {
    if block.checked_mul(world) != Some(whole) {
        return Err(Error::Invalid {
            op: "mpi",
            msg: format!("{op} of {whole} values in blocks of {block} over {world} ranks: the sizes do not match"),
        });
    }
    Ok(())
}
