//! NCCL for data-parallel CUDA ranks: [`NcclRanks`] is a [`Collective`] whose gradient buckets
//! are summed on the GPUs by `ncclAllReduce` (src/backend/cuda/nccl.rs), queued on each rank's
//! communication stream while the backward's kernels go on on the compute stream
//! ([`Collective::start_all_reduce_sum_tensor`]), so the gradients never go through host memory
//! and their sums overlap the backward. The
//! small host-buffer reductions (which parameters have a gradient, the loss means, the weights'
//! checksums, ZeRO-1's reduce-scatter and all-gather) stay on the host collective it wraps: MPI in
//! a distributed run, nothing for one rank. See docs/distributed.md, "NCCL".
//!
//! How a run gets its communicator: every rank probes the library ([`loaded_on_every_rank`]
//! agrees on the result over MPI, so the ranks never disagree on the collective), [`choose`]
//! picks MPI or NCCL from `--collective` and the device, rank 0 makes the NCCL unique id and
//! broadcasts it ([`encode_id`], [`decode_id`]: 512 bytes carrying either the id or rank 0's
//! error), and every rank joins the communicator on its own GPU (`Cuda(local rank)`).
//! [`NcclRanks::single`] is the same with one rank and no MPI (the id made locally), which
//! `kiln bench --kernels allreduce --collective nccl` uses on a machine with one GPU.

use super::data_parallel::{Collective, DataParallel, InFlight};
use crate::backend::cuda::nccl::{self, Comm, UniqueId, UNIQUE_ID_BYTES};
use crate::backend::cuda::{CudaDevice, OnCommStream};
use crate::backend::Storage;
use crate::{DType, Device, Error, Result, Tensor};
use std::rc::Rc;

/// What `--collective` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CollectiveChoice {
    /// NCCL for CUDA ranks when it loads on every rank, else MPI (with a warning); MPI for
    /// CPU and Emu ranks.
    Auto,
    /// MPI for every device (CUDA ranks' gradients through host memory).
    Mpi,
    /// NCCL; an error when the ranks are not CUDA ranks or NCCL does not load.
    Nccl,
}

/// The collective a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CollectiveKind {
    /// MPI in host memory (src/train/distributed.rs).
    Mpi,
    /// NCCL on the GPUs ([`NcclRanks`]).
    Nccl,
}

fn nccl_err(msg: String) -> Error {
    Error::Invalid { op: "nccl", msg }
}

/// The collective for `choice` on ranks that train on `device`, given whether NCCL loaded on
/// every rank (`nccl`: Ok, or why not; see [`loaded_on_every_rank`]), with a warning to print
/// when `auto` falls back to MPI on CUDA ranks. `--collective nccl` on CPU or Emu ranks, or
/// without NCCL, is an error.
pub fn choose(
    choice: CollectiveChoice,
    device: &Device,
    nccl: std::result::Result<(), String>,
) -> Result<(CollectiveKind, Option<String>)> {
    let cuda = matches!(device, Device::Cuda(_));
    match choice {
        CollectiveChoice::Mpi => Ok((CollectiveKind::Mpi, None)),
        CollectiveChoice::Auto if !cuda => Ok((CollectiveKind::Mpi, None)),
        CollectiveChoice::Auto => match nccl {
            Ok(()) => Ok((CollectiveKind::Nccl, None)),
            Err(why) => Ok((
                CollectiveKind::Mpi,
                Some(format!(
                    "NCCL is not used, so the CUDA ranks' gradients go through host memory and MPI: {why}"
                )),
            )),
        },
        CollectiveChoice::Nccl if !cuda => Err(nccl_err(format!(
            "--collective nccl needs CUDA ranks (--device cuda), not {device}: NCCL runs on GPUs; \
             CPU and Emu ranks reduce through MPI (--collective mpi or auto)"
        ))),
        CollectiveChoice::Nccl => nccl.map(|()| (CollectiveKind::Nccl, None)).map_err(nccl_err),
    }
}

/// Whether NCCL loads in this process on `device`: Ok, or the loading error's message (for
/// [`choose`] and [`loaded_on_every_rank`]). Only a CUDA device loads it; the others answer Ok,
/// since [`choose`] decides for them without NCCL.
pub fn probe(device: &Device) -> std::result::Result<(), String> {
    if !matches!(device, Device::Cuda(_)) {
        return Ok(());
    }
    nccl::load().map(|_| ()).map_err(|e| match e {
        Error::Invalid { msg, .. } => msg,
        other => other.to_string(),
    })
}

/// Whether NCCL loaded on every rank of `host`, from this rank's attempt (`local`): one sum
/// all-reduce of the successes, so that every rank reaches the same answer. A rank where it
/// failed reports its own error; the others say on how many ranks it failed.
pub fn loaded_on_every_rank(
    host: &dyn Collective,
    local: std::result::Result<(), String>,
) -> Result<std::result::Result<(), String>> {
    let mut loaded = [if local.is_ok() { 1.0 } else { 0.0 }];
    host.all_reduce_sum_f64(&mut loaded)?;
    let world = host.world();
    let failed = world - (loaded[0].round() as usize).min(world);
    Ok(match (failed, local) {
        (0, _) => Ok(()),
        (_, Err(why)) => Err(why),
        (n, Ok(())) => Err(format!(
            "NCCL did not load on {n} of the {world} ranks (each of them printed why)"
        )),
    })
}

/// The bytes rank 0 broadcasts to hand out the communicator's unique id.
pub const ID_MESSAGE_BYTES: usize = 512;

/// Rank 0's message: byte 0 is 1 and bytes 1..129 the id, or byte 0 is 0 and the rest rank 0's
/// error (UTF-8, cut to fit, NUL-padded), so that the other ranks fail with it instead of waiting.
pub fn encode_id(made: &Result<UniqueId>) -> [u8; ID_MESSAGE_BYTES] {
    let mut msg = [0u8; ID_MESSAGE_BYTES];
    match made {
        Ok(id) => {
            msg[0] = 1;
            msg[1..1 + UNIQUE_ID_BYTES].copy_from_slice(&id.internal);
        }
        Err(e) => {
            let text = e.to_string();
            let mut end = text.len().min(ID_MESSAGE_BYTES - 1);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            msg[1..1 + end].copy_from_slice(&text.as_bytes()[..end]);
        }
    }
    msg
}

/// The id in rank 0's message, or rank 0's error.
pub fn decode_id(msg: &[u8]) -> Result<UniqueId> {
    match msg.first() {
        Some(1) if msg.len() > UNIQUE_ID_BYTES => {
            let mut internal = [0u8; UNIQUE_ID_BYTES];
            internal.copy_from_slice(&msg[1..1 + UNIQUE_ID_BYTES]);
            Ok(UniqueId { internal })
        }
        Some(0) => {
            let text = &msg[1..];
            let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
            Err(nccl_err(format!(
                "rank 0 could not make the NCCL unique id: {}",
                String::from_utf8_lossy(&text[..end])
            )))
        }
        _ => Err(nccl_err(format!(
            "a unique-id message of {} bytes starting with {:?} is not one rank 0 sent",
            msg.len(),
            msg.first()
        ))),
    }
}

/// The ranks of a data-parallel run whose gradient buckets NCCL sums on their GPUs.
pub struct NcclRanks {
    // dropped first: the communicator is destroyed before MPI is finalized
    comm: Comm,
    host: DataParallel,
}

impl NcclRanks {
    /// Joins the NCCL communicator of the ranks of `host` on `device` (this rank's GPU). Rank 0
    /// makes the unique id; `share` gives every rank rank 0's [`ID_MESSAGE_BYTES`] (an MPI
    /// broadcast). Every rank of `host` must call it; NCCL must load here (see [`choose`]).
    pub fn connect(
        host: DataParallel,
        device: &Device,
        share: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<Rc<NcclRanks>> {
        let lib = nccl::load()?;
        let mut msg = [0u8; ID_MESSAGE_BYTES];
        if host.rank() == 0 {
            msg = encode_id(&lib.unique_id());
        }
        share(&mut msg)?;
        let id = decode_id(&msg)?;
        let comm = Comm::init_rank(lib, &CudaDevice::get(device)?, &id, host.rank(), host.world())?;
        Ok(Rc::new(NcclRanks { comm, host }))
    }

    /// One rank alone on `device`, no MPI: the unique id is made here.
    pub fn single(device: &Device) -> Result<Rc<NcclRanks>> {
        NcclRanks::connect(DataParallel::single(), device, |_| Ok(()))
    }

    /// The training loop's view of these ranks.
    pub fn data_parallel(self: &Rc<Self>) -> DataParallel {
        DataParallel::new(self.clone())
    }

    /// This rank's communicator.
    pub fn comm(&self) -> &Comm {
        &self.comm
    }

    /// "NCCL 2.21.5 (libnccl.so.2)": the library in use.
    pub fn describe(&self) -> String {
        let lib = self.comm.library();
        format!("NCCL {} ({})", lib.version(), lib.file())
    }
}

impl Collective for NcclRanks {
    fn rank(&self) -> usize {
        self.host.rank()
    }
    fn world(&self) -> usize {
        self.host.world()
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.host.collective().all_reduce_sum_f32(buf)
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.host.collective().all_reduce_sum_f64(buf)
    }
    fn all_reduce_max_u64(&self, buf: &mut [u64]) -> Result<()> {
        self.host.collective().all_reduce_max_u64(buf)
    }
    fn reduce_scatter_sum_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        self.host.collective().reduce_scatter_sum_f32(send, recv)
    }
    fn all_gather_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        self.host.collective().all_gather_f32(send, recv)
    }
    fn reduces_on_device(&self) -> bool {
        true
    }
    /// `ncclAllReduce` of the bucket into a new buffer on the same GPU, on the compute stream.
    fn all_reduce_sum_tensor(&self, bucket: &Tensor) -> Result<Tensor> {
        let bucket = checked_bucket(bucket)?;
        let storage = bucket.storage();
        let Storage::Cuda(s) = &*storage else {
            return Err(nccl_err(format!("a bucket on {} is not on a GPU", bucket.device())));
        };
        let sum = self
            .comm
            .all_reduce_sum_f32(s, bucket.layout().offset(), bucket.numel())?;
        Ok(Tensor::from_parts(Storage::Cuda(sum), bucket.shape()))
    }
    /// `ncclAllReduce` of a copy of the bucket on the GPU's communication stream
    /// ([`Comm::start_all_reduce_sum_f32`]): returns once it is queued.
    fn start_all_reduce_sum_tensor(&self, bucket: &Tensor) -> Result<Box<dyn InFlight<Tensor>>> {
        let bucket = checked_bucket(bucket)?;
        let storage = bucket.storage();
        let Storage::Cuda(s) = &*storage else {
            return Err(nccl_err(format!("a bucket on {} is not on a GPU", bucket.device())));
        };
        let pending = self
            .comm
            .start_all_reduce_sum_f32(s, bucket.layout().offset(), bucket.numel())?;
        Ok(Box::new(NcclSum {
            pending,
            len: bucket.numel(),
        }))
    }
}

/// `bucket` as NCCL sums it: 1-D, f32, contiguous.
fn checked_bucket(bucket: &Tensor) -> Result<Tensor> {
    if bucket.dtype() != DType::F32 || bucket.shape().len() != 1 {
        return Err(nccl_err(format!(
            "the all-reduce sums 1-D f32 buckets, not {:?} {}",
            bucket.shape(),
            bucket.dtype()
        )));
    }
    bucket.contiguous()
}

/// A bucket's sum on the communication stream: tested with `cuEventQuery`, waited for by the
/// compute stream (the host goes on); dropped unwaited, its buffer outlives the all-reduce.
struct NcclSum {
    pending: OnCommStream,
    len: usize,
}

impl InFlight<Tensor> for NcclSum {
    fn test(&mut self) -> Result<bool> {
        self.pending.test()
    }
    fn wait(self: Box<Self>) -> Result<Tensor> {
        let sum = self.pending.wait()?;
        Ok(Tensor::from_parts(Storage::Cuda(sum), &[self.len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_choice_follows_the_flag_the_device_and_nccls_presence() {
        use CollectiveChoice as C;
        use CollectiveKind as K;
        let absent = || Err::<(), String>("no libnccl.so.2".to_string());
        let cuda = Device::Cuda(1);
        // mpi: always MPI, NCCL not even asked about
        for dev in [Device::Cpu, Device::Emu, cuda] {
            assert_eq!(choose(C::Mpi, &dev, absent()).unwrap(), (K::Mpi, None));
            assert_eq!(choose(C::Mpi, &dev, Ok(())).unwrap(), (K::Mpi, None));
        }
        // auto: NCCL for CUDA ranks when it loads, else MPI with a warning naming why
        assert_eq!(choose(C::Auto, &cuda, Ok(())).unwrap(), (K::Nccl, None));
        let (kind, warning) = choose(C::Auto, &cuda, absent()).unwrap();
        assert_eq!(kind, K::Mpi);
        let warning = warning.expect("a warning");
        assert!(
            warning.contains("host memory and MPI") && warning.contains("no libnccl.so.2"),
            "{warning}"
        );
        // auto: CPU and Emu ranks keep MPI, silently
        for dev in [Device::Cpu, Device::Emu] {
            assert_eq!(choose(C::Auto, &dev, Ok(())).unwrap(), (K::Mpi, None));
        }
        // nccl: CUDA ranks with NCCL, an error otherwise
        assert_eq!(choose(C::Nccl, &cuda, Ok(())).unwrap(), (K::Nccl, None));
        let err = choose(C::Nccl, &cuda, absent()).unwrap_err().to_string();
        assert_eq!(err, "nccl: no libnccl.so.2");
        for dev in [Device::Cpu, Device::Emu] {
            let err = choose(C::Nccl, &dev, Ok(())).unwrap_err().to_string();
            assert!(
                err.contains("needs CUDA ranks") && err.contains(&dev.to_string()),
                "{err}"
            );
        }
    }

    /// Rank `rank` of `world`, whose f64 sums add the other ranks' scripted `others`.
    struct Others {
        rank: usize,
        world: usize,
        others: f64,
    }

    impl Collective for Others {
        fn rank(&self) -> usize {
            self.rank
        }
        fn world(&self) -> usize {
            self.world
        }
        fn all_reduce_sum_f32(&self, _: &mut [f32]) -> Result<()> {
            unreachable!()
        }
        fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
            buf[0] += self.others;
            Ok(())
        }
        fn all_reduce_max_u64(&self, _: &mut [u64]) -> Result<()> {
            unreachable!()
        }
        fn reduce_scatter_sum_f32(&self, _: &[f32], _: &mut [f32]) -> Result<()> {
            unreachable!()
        }
        fn all_gather_f32(&self, _: &[f32], _: &mut [f32]) -> Result<()> {
            unreachable!()
        }
    }

    #[test]
    fn the_ranks_agree_on_nccl_only_when_it_loaded_on_every_one() {
        let one = DataParallel::single();
        assert_eq!(loaded_on_every_rank(one.collective(), Ok(())).unwrap(), Ok(()));
        assert_eq!(
            loaded_on_every_rank(one.collective(), Err("absent".into())).unwrap(),
            Err("absent".to_string())
        );
        // 4 ranks: the 3 others loaded it
        let all = Others {
            rank: 2,
            world: 4,
            others: 3.0,
        };
        assert_eq!(loaded_on_every_rank(&all, Ok(())).unwrap(), Ok(()));
        // 2 of the others did not: this rank, where it loaded, says so
        let some = Others {
            rank: 0,
            world: 4,
            others: 1.0,
        };
        let why = loaded_on_every_rank(&some, Ok(())).unwrap().unwrap_err();
        assert!(why.contains("did not load on 2 of the 4 ranks"), "{why}");
        // this rank did not load it: its own reason
        assert_eq!(
            loaded_on_every_rank(&all, Err("no libnccl.so.2 here".into())).unwrap(),
            Err("no libnccl.so.2 here".to_string())
        );
    }

    #[test]
    fn a_unique_id_survives_the_broadcast_message_and_an_error_reaches_every_rank() {
        let mut internal = [0u8; UNIQUE_ID_BYTES];
        internal
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i * 37 % 251) as u8);
        internal[5] = 0; // ids hold zeros: the message is not a C string
        let id = UniqueId { internal };
        let msg = encode_id(&Ok(id));
        assert_eq!(msg.len(), 512);
        assert_eq!(decode_id(&msg).unwrap(), id);
        // what a broadcast does: another rank's buffer receives rank 0's bytes
        let mut other = [0xAAu8; ID_MESSAGE_BYTES];
        other.copy_from_slice(&msg);
        assert_eq!(decode_id(&other).unwrap().internal, internal);

        let err = encode_id(&Err(nccl_err("ncclGetUniqueId failed: unhandled system error".into())));
        let got = decode_id(&err).unwrap_err().to_string();
        assert_eq!(
            got,
            "nccl: rank 0 could not make the NCCL unique id: nccl: ncclGetUniqueId failed: unhandled system error"
        );
        // a long message is cut at a character boundary, never past the buffer
        let long = encode_id(&Err(nccl_err("é".repeat(400))));
        let got = decode_id(&long).unwrap_err().to_string();
        assert!(got.ends_with('é') && got.len() < 600, "{got}");
        // garbage is refused
        assert!(decode_id(&[7u8; ID_MESSAGE_BYTES]).is_err());
        assert!(decode_id(&[]).is_err());
        assert!(decode_id(&[1u8; 10]).is_err());
    }

    #[test]
    fn nccl_ranks_on_emu_or_without_nccl_are_errors_not_panics() {
        // without NCCL (this machine): the loading error; with it, Emu is refused
        let err = NcclRanks::single(&Device::Emu)
            .err()
            .expect("NCCL cannot run on Emu")
            .to_string();
        assert!(
            err.contains("NCCL library could not be loaded") || err.contains("NCCL runs on CUDA GPUs, not on"),
            "{err}"
        );
    }
}
