//! The gradient all-reduce of a data-parallel step, overlapped with the backward pass: the
//! parameters' gradients are laid out in buckets (`BucketLayout`, from the parameter list, so
//! the same on every rank), each bucket's non-blocking all-reduce starts as soon as its gradients
//! are final and every bucket before it has started, the reductions in flight are tested between
//! backward nodes, and all are waited for before clipping ([`GradientReduction`]; see
//! docs/distributed.md, "Overlap"). The buckets are host vectors
//! ([`Collective::start_all_reduce_sum_f32`]: MPI), or tensors on the gradients' device where the
//! collective sums there ([`Collective::reduces_on_device`],
//! [`Collective::start_all_reduce_sum_tensor`]: NCCL on the GPUs); the layout, the order and the
//! arithmetic are the same.

use super::data_parallel::{dp_err, Collective, DataParallel, InFlight};
use crate::{BackwardObserver, DType, Gradients, Result, Tensor};
use std::collections::HashMap;

impl DataParallel {
    /// Replaces each gradient of `params` by its mean over the ranks. A parameter that has a
    /// gradient on some ranks and not on others counts zeros for the others; one with a
    /// gradient on no rank keeps none. The gradients are flattened (as f32) into the buckets of
    /// [`DataParallel::begin_reduction`], one all-reduce each, and written back with their dtype
    /// and device: the reduction of a step whose backward is over. Where the collective sums on
    /// the device ([`Collective::reduces_on_device`]: NCCL), the buckets are built and summed
    /// there instead (src/train/device_buckets.rs). This is the reduction after the backward; the
    /// training loop overlaps it with the backward through [`DataParallel::begin_reduction`]
    /// unless told not to ([`DataParallel::with_overlap`]).
    pub fn average_gradients(&self, params: &[(String, Tensor)], grads: &mut Gradients) -> Result<()> {
        if self.world() == 1 {
            return Ok(());
        }
        let collective = self.collective();
        if collective.reduces_on_device() {
            let present = self.with_gradient_anywhere(params, grads)?;
            let reduced: Vec<&Tensor> = params
                .iter()
                .zip(&present)
                .filter(|(_, &any)| any)
                .map(|((_, p), _)| p)
                .collect();
            return super::device_buckets::average(&reduced, grads, self.world(), self.bucket_floats(), |bucket| {
                collective.all_reduce_sum_tensor(bucket)
            });
        }
        self.begin_reduction(params).finish(grads)
    }

    /// The gradient reduction of one step, to be fed during the backward pass: give it to
    /// [`Tensor::backward_observed`] (it is a [`BackwardObserver`]) or call
    /// [`GradientReduction::ready`] and [`GradientReduction::progress`] yourself, then
    /// [`GradientReduction::finish`] with the gradients, which leaves in them what
    /// [`DataParallel::average_gradients`] leaves.
    pub fn begin_reduction<'a>(&'a self, params: &'a [(String, Tensor)]) -> GradientReduction<'a> {
        GradientReduction::new(self, params)
    }
}

/// Where each gradient travels: buckets of consecutive parameters taken in reverse order (the
/// order in which a backward pass roughly completes them, the last layer first), each closed
/// once it holds at least the bucket size in values. A bucket's buffer holds its parameters'
/// values one after another, then one presence flag per parameter (1 where this rank has the
/// gradient), so that the sum also counts the ranks that had each gradient. Decided from the
/// parameter list alone: the same on every rank.
struct BucketLayout {
    /// Each bucket's parameters (indices into the parameter list), in their order in the bucket.
    buckets: Vec<Vec<usize>>,
    /// Each parameter's bucket, the offset of its values and the index of its flag there.
    slots: Vec<Slot>,
    /// Each bucket's buffer length: its values, then its flags.
    lens: Vec<usize>,
}

#[derive(Clone, Copy)]
struct Slot {
    bucket: usize,
    offset: usize,
    flag: usize,
}

impl BucketLayout {
    fn new(params: &[(String, Tensor)], cap: usize) -> BucketLayout {
        let mut buckets: Vec<Vec<usize>> = Vec::new();
        let mut values = 0;
        for i in (0..params.len()).rev() {
            if buckets.is_empty() || values >= cap {
                buckets.push(Vec::new());
                values = 0;
            }
            buckets.last_mut().expect("a bucket").push(i);
            values += params[i].1.numel();
        }
        let mut slots = vec![
            Slot {
                bucket: 0,
                offset: 0,
                flag: 0
            };
            params.len()
        ];
        let mut lens = Vec::with_capacity(buckets.len());
        for (b, members) in buckets.iter().enumerate() {
            let values: usize = members.iter().map(|&i| params[i].1.numel()).sum();
            let mut offset = 0;
            for (k, &i) in members.iter().enumerate() {
                slots[i] = Slot {
                    bucket: b,
                    offset,
                    flag: values + k,
                };
                offset += params[i].1.numel();
            }
            lens.push(values + members.len());
        }
        BucketLayout { buckets, slots, lens }
    }
}

/// A bucket's values while its gradients come in.
enum Filling {
    /// A host vector: the values, then the flags (allocated at the bucket's first gradient).
    Host(Vec<f32>),
    /// On the device: each member's gradient as a flat f32 tensor, in bucket order (None: not
    /// given yet, or absent on this rank); the flags are made from them when the bucket starts.
    Device(Vec<Option<Tensor>>),
}

/// A bucket's all-reduce in flight.
enum Started {
    Host(Box<dyn InFlight>),
    Device(Box<dyn InFlight<Tensor>>),
}

impl Started {
    fn test(&mut self) -> Result<bool> {
        match self {
            Started::Host(r) => r.test(),
            Started::Device(r) => r.test(),
        }
    }
}

/// What a [`GradientReduction`] knows of one parameter's gradient on this rank.
#[derive(Clone, Copy, PartialEq)]
enum Given {
    /// Not given yet.
    Not,
    /// This rank has none (zeros travel for it).
    Absent,
    /// Given, with this dtype (the mean is written back in it).
    Grad(DType),
}

/// One step's gradient all-reduce, overlapped with the backward pass: each finished gradient is
/// copied (as f32) into its bucket (`BucketLayout`); a bucket whose gradients are all in starts
/// its non-blocking all-reduce once every bucket before it has started (so every rank starts the
/// same buckets in the same order, whatever the timing); [`GradientReduction::progress`] tests the
/// reductions in flight between backward nodes; [`GradientReduction::finish`] fills in the
/// gradients that never came (from the gradients given to it, or zeros), starts what is left,
/// waits for every bucket in order and writes the means back. Made by
/// [`DataParallel::begin_reduction`]. Where the collective sums on the device
/// ([`Collective::reduces_on_device`]), a bucket is the concatenation of its gradients (as f32, on
/// their device) and its flags, summed by [`Collective::start_all_reduce_sum_tensor`], and the
/// means are computed and cut back there: nothing but the flags goes through host memory.
pub struct GradientReduction<'a> {
    collective: &'a dyn Collective,
    world: usize,
    params: &'a [(String, Tensor)],
    /// Parameter index by tensor id.
    by_id: HashMap<usize, usize>,
    layout: BucketLayout,
    given: Vec<Given>,
    /// Whether the buckets are device tensors ([`Collective::reduces_on_device`]).
    on_device: bool,
    /// Per bucket: its values while it fills (allocated at its first gradient).
    filling: Vec<Option<Filling>>,
    /// Per bucket: how many of its parameters are not given yet.
    missing: Vec<usize>,
    /// The started reductions, in bucket order (bucket `started.len()` is the next to start),
    /// with whether a test found each complete.
    started: Vec<(Started, bool)>,
}

impl<'a> GradientReduction<'a> {
    fn new(ranks: &'a DataParallel, params: &'a [(String, Tensor)]) -> GradientReduction<'a> {
        let layout = BucketLayout::new(params, ranks.bucket_floats());
        let buckets = layout.buckets.len();
        GradientReduction {
            collective: ranks.collective(),
            on_device: ranks.collective().reduces_on_device(),
            world: ranks.world(),
            params,
            by_id: params.iter().enumerate().map(|(i, (_, p))| (p.id(), i)).collect(),
            missing: layout.buckets.iter().map(Vec::len).collect(),
            layout,
            given: vec![Given::Not; params.len()],
            filling: (0..buckets).map(|_| None).collect(),
            started: Vec::with_capacity(buckets),
        }
    }

    /// The number of buckets (one all-reduce each).
    pub fn buckets(&self) -> usize {
        self.layout.buckets.len()
    }

    /// The number of buckets whose all-reduce has started.
    pub fn started(&self) -> usize {
        self.started.len()
    }

    /// `leaf`'s gradient `grad` is final: it goes into its bucket, and the buckets that are
    /// complete start their all-reduce in order. A leaf that is not one of the parameters is
    /// ignored; a parameter given twice is an error.
    pub fn ready(&mut self, leaf: &Tensor, grad: &Tensor) -> Result<()> {
        match self.by_id.get(&leaf.id()) {
            Some(&i) => self.give(i, Some(grad)),
            None => Ok(()),
        }
    }

    /// Tests every reduction in flight (lets MPI move them forward); blocks on nothing.
    pub fn progress(&mut self) -> Result<()> {
        for (reduction, done) in self.started.iter_mut().filter(|r| !r.1) {
            *done = reduction.test()?;
        }
        Ok(())
    }

    /// Ends the reduction: every parameter not given yet takes its gradient from `grads` (or
    /// counts zeros where it has none), the remaining buckets start, every bucket is waited for,
    /// and each gradient of `params` in `grads` is replaced by its mean over the ranks, in the
    /// dtype it had (the parameter's where it had none); a parameter with a gradient on no rank
    /// keeps none.
    pub fn finish(mut self, grads: &mut Gradients) -> Result<()> {
        let params = self.params;
        for (i, (_, p)) in params.iter().enumerate() {
            if self.given[i] == Given::Not {
                self.give(i, grads.get(p))?;
            }
        }
        debug_assert_eq!(self.started.len(), self.buckets(), "every bucket has started");
        if self.on_device {
            return self.finish_on_device(grads);
        }
        let scale = 1.0 / self.world as f32;
        for (b, (reduction, _)) in std::mem::take(&mut self.started).into_iter().enumerate() {
            let Started::Host(reduction) = reduction else {
                unreachable!("host buckets start host reductions")
            };
            let sum = reduction.wait()?;
            if sum.len() != self.layout.lens[b] {
                return Err(dp_err(format!(
                    "the all-reduce of gradient bucket {b} returned {} values instead of {}",
                    sum.len(),
                    self.layout.lens[b]
                )));
            }
            for &i in &self.layout.buckets[b] {
                let slot = self.layout.slots[i];
                if sum[slot.flag] == 0.0 {
                    continue; // no rank has this gradient
                }
                let p = &self.params[i].1;
                let mean: Vec<f32> = sum[slot.offset..slot.offset + p.numel()]
                    .iter()
                    .map(|v| v * scale)
                    .collect();
                let dtype = match self.given[i] {
                    Given::Grad(dtype) => dtype,
                    _ => p.dtype(),
                };
                let g = Tensor::from_vec(mean, p.shape(), p.device())?.to_dtype(dtype)?;
                grads.insert(p, g);
            }
        }
        Ok(())
    }

    /// [`GradientReduction::finish`]'s waits and means for device buckets: every bucket is waited
    /// for (on a GPU the compute stream waits, the host goes on), scaled by 1/world in f32 as the
    /// host path does, and cut back into gradients of each parameter's shape and dtype; then the
    /// flags of every bucket are read in one copy to the host, and the gradients of parameters
    /// that no rank has are left out.
    fn finish_on_device(mut self, grads: &mut Gradients) -> Result<()> {
        // the host path multiplies by this f32; the affine kernels compute in f32 from it
        let scale = f64::from(1.0 / self.world as f32);
        let mut means = Vec::with_capacity(self.buckets());
        let mut flags = Vec::with_capacity(self.buckets());
        for (b, (reduction, _)) in std::mem::take(&mut self.started).into_iter().enumerate() {
            let Started::Device(reduction) = reduction else {
                unreachable!("device buckets start device reductions")
            };
            let sum = reduction.wait()?;
            let len = self.layout.lens[b];
            if sum.shape() != [len] || sum.dtype() != DType::F32 {
                return Err(dp_err(format!(
                    "the all-reduce of gradient bucket {b} returned {:?} {} instead of [{len}] f32",
                    sum.shape(),
                    sum.dtype()
                )));
            }
            let mean = sum.mul_scalar(scale)?;
            let members = self.layout.buckets[b].len();
            flags.push(mean.narrow(0, len - members, members)?);
            means.push(mean);
        }
        // the gradients first, so that the device has them queued while the host reads the flags
        let mut out = Vec::with_capacity(self.params.len());
        for (b, mean) in means.iter().enumerate() {
            for &i in &self.layout.buckets[b] {
                let slot = self.layout.slots[i];
                let p = &self.params[i].1;
                let dtype = match self.given[i] {
                    Given::Grad(dtype) => dtype,
                    _ => p.dtype(),
                };
                let g = mean
                    .narrow(0, slot.offset, p.numel())?
                    .reshape(p.shape())?
                    .to_dtype(dtype)?
                    .dense()?;
                out.push((i, g));
            }
        }
        drop(means);
        let flags = Tensor::cat(&flags, 0)?.to_vec::<f32>()?;
        // `out` and `flags` both follow the buckets' order of parameters
        for ((i, g), flag) in out.into_iter().zip(flags) {
            if flag != 0.0 {
                grads.insert(&self.params[i].1, g);
            }
        }
        Ok(())
    }

    /// Parameter `i`'s gradient (None: this rank has none) into its bucket; then the buckets
    /// that are complete, next in order, start.
    fn give(&mut self, i: usize, grad: Option<&Tensor>) -> Result<()> {
        let params = self.params;
        let (name, p) = &params[i];
        if self.given[i] != Given::Not {
            return Err(dp_err(format!("the gradient of {name} was given twice in one step")));
        }
        let slot = self.layout.slots[i];
        let (len, members) = (self.layout.lens[slot.bucket], self.layout.buckets[slot.bucket].len());
        let on_device = self.on_device;
        let filling = self.filling[slot.bucket].get_or_insert_with(|| {
            if on_device {
                Filling::Device(vec![None; members])
            } else {
                Filling::Host(vec![0.0; len])
            }
        });
        self.given[i] = match grad {
            Some(g) => {
                if g.shape() != p.shape() {
                    return Err(dp_err(format!(
                        "the gradient of {name} has shape {:?}, the parameter {:?}",
                        g.shape(),
                        p.shape()
                    )));
                }
                match filling {
                    Filling::Host(buf) => {
                        buf[slot.offset..slot.offset + p.numel()].copy_from_slice(&g.to_vec::<f32>()?);
                        buf[slot.flag] = 1.0;
                    }
                    // the member's position in the bucket is its flag's among the flags
                    Filling::Device(parts) => {
                        parts[slot.flag - (len - members)] = Some(g.to_dtype(DType::F32)?.reshape(&[g.numel()])?)
                    }
                }
                Given::Grad(g.dtype())
            }
            None => Given::Absent,
        };
        self.missing[slot.bucket] -= 1;
        while self.started.len() < self.buckets() && self.missing[self.started.len()] == 0 {
            let b = self.started.len();
            let reduction = match self.filling[b].take().expect("a complete bucket has its values") {
                Filling::Host(buf) => Started::Host(self.collective.start_all_reduce_sum_f32(buf)?),
                Filling::Device(parts) => {
                    let bucket = self.device_bucket(b, parts)?;
                    Started::Device(self.collective.start_all_reduce_sum_tensor(&bucket)?)
                }
            };
            self.started.push((reduction, false));
        }
        Ok(())
    }

    /// Bucket `b` on the device: its members' gradients (zeros where this rank has none), then
    /// their flags, as one f32 tensor on the parameters' device. Only device work: zeros and
    /// flags are filled there (one fill per run of equal flags, one for the usual bucket whose
    /// gradients are all present), never copied from the host, whose copy would wait for the
    /// backward's queued kernels.
    fn device_bucket(&self, b: usize, parts: Vec<Option<Tensor>>) -> Result<Tensor> {
        let members = &self.layout.buckets[b];
        let device = self.params[members[0]].1.device();
        let flags: Vec<bool> = parts.iter().map(Option::is_some).collect();
        let mut pieces = Vec::with_capacity(members.len() + 1);
        for (&i, part) in members.iter().zip(parts) {
            let p = &self.params[i].1;
            pieces.push(match part {
                Some(t) => t,
                None => Tensor::zeros(&[p.numel()], DType::F32, p.device())?,
            });
        }
        for run in flags.chunk_by(|a, b| a == b) {
            let value = if run[0] { 1.0 } else { 0.0 };
            pieces.push(Tensor::full(value, &[run.len()], DType::F32, device)?);
        }
        Tensor::cat(&pieces, 0)
    }
}

/// The reduction as the backward pass's observer: each finished gradient goes in, and the
/// reductions in flight are tested after every node.
impl BackwardObserver for GradientReduction<'_> {
    fn gradient_ready(&mut self, leaf: &Tensor, grad: &Tensor) -> Result<()> {
        self.ready(leaf, grad)
    }
    fn node_done(&mut self) -> Result<()> {
        self.progress()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::data_parallel::BUCKET_FLOATS;
    use crate::Device;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// One of 2 ranks whose other rank holds the same buffers (every sum is twice this rank's
    /// buffer, so every mean is this rank's own gradient), and which records in `log` each
    /// non-blocking all-reduce it starts (with its length), tests and waits for.
    struct Recording {
        log: Rc<RefCell<Vec<String>>>,
    }

    struct RecordedReduction {
        log: Rc<RefCell<Vec<String>>>,
        sum: Vec<f32>,
        len: usize,
    }

    impl InFlight for RecordedReduction {
        fn test(&mut self) -> Result<bool> {
            self.log.borrow_mut().push(format!("test {}", self.len));
            Ok(false)
        }
        fn wait(self: Box<Self>) -> Result<Vec<f32>> {
            self.log.borrow_mut().push(format!("wait {}", self.len));
            Ok(self.sum)
        }
    }

    impl Collective for Recording {
        fn rank(&self) -> usize {
            0
        }
        fn world(&self) -> usize {
            2
        }
        fn all_reduce_sum_f32(&self, _: &mut [f32]) -> Result<()> {
            panic!("the gradients travel through non-blocking all-reduces")
        }
        fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
            buf.iter_mut().for_each(|v| *v *= 2.0);
            Ok(())
        }
        fn all_reduce_max_u64(&self, _: &mut [u64]) -> Result<()> {
            Ok(())
        }
        fn reduce_scatter_sum_f32(&self, _: &[f32], _: &mut [f32]) -> Result<()> {
            unimplemented!()
        }
        fn all_gather_f32(&self, _: &[f32], _: &mut [f32]) -> Result<()> {
            unimplemented!()
        }
        fn start_all_reduce_sum_f32(&self, buf: Vec<f32>) -> Result<Box<dyn InFlight>> {
            self.log.borrow_mut().push(format!("start {}", buf.len()));
            Ok(Box::new(RecordedReduction {
                log: self.log.clone(),
                len: buf.len(),
                sum: buf.iter().map(|v| 2.0 * v).collect(),
            }))
        }
    }

    /// The reduction as the observer of a backward pass, with each node's end in the log too.
    struct Logged<'a, 'b> {
        reduction: &'b mut GradientReduction<'a>,
        log: Rc<RefCell<Vec<String>>>,
    }

    impl BackwardObserver for Logged<'_, '_> {
        fn gradient_ready(&mut self, leaf: &Tensor, grad: &Tensor) -> Result<()> {
            self.reduction.gradient_ready(leaf, grad)
        }
        fn node_done(&mut self) -> Result<()> {
            self.log.borrow_mut().push("node".into());
            self.reduction.node_done()
        }
    }

    /// `((x·w1)·w2)·w3)·w4` summed, with parameters of 2, 3, 4 and 5 values broadcast over `x`
    /// (5 rows), listed in `order`: the backward completes w4 first, w1 last.
    fn chain(order: [usize; 4]) -> (Vec<(String, Tensor)>, Tensor) {
        chain_on(order, &Device::Cpu)
    }

    /// [`chain`] on `dev`.
    fn chain_on(order: [usize; 4], dev: &Device) -> (Vec<(String, Tensor)>, Tensor) {
        let w: Vec<Tensor> = (0..4)
            .map(|i| {
                let n = i + 2;
                let v: Vec<f32> = (0..5 * n).map(|k| 0.5 + 0.25 * ((k * 7 + i) % 5) as f32).collect();
                Tensor::from_vec(v, &[5, n], dev).unwrap().requires_grad()
            })
            .collect();
        let x = Tensor::from_vec((0..5).map(|k| k as f32 - 1.5).collect(), &[5, 1], dev).unwrap();
        let mut h = x;
        for wi in &w {
            // [5, k] -> [5, n]: the row sums times the weights
            h = h.sum(&[-1], true).unwrap().mul(wi).unwrap();
        }
        let loss = h.sum_all().unwrap();
        let params = order.iter().map(|&i| (format!("w{}", i + 1), w[i].clone())).collect();
        (params, loss)
    }

    fn sizes(log: &[String], what: &str) -> Vec<usize> {
        log.iter()
            .filter_map(|e| e.strip_prefix(what).map(|n| n.trim().parse().unwrap()))
            .collect()
    }

    #[test]
    fn buckets_start_their_all_reduce_while_the_backward_still_runs() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let dp = DataParallel::new(Rc::new(Recording { log: log.clone() }))
            .with_bucket_floats(10)
            .unwrap();
        // model order w1..w4 (10, 15, 20, 25 values): buckets from the end, closed at 10
        // values or more, are [w4], [w3], [w2], [w1], each followed by its presence flag
        let (params, loss) = chain([0, 1, 2, 3]);
        let (want_params, want_loss) = chain([0, 1, 2, 3]);
        let want = want_loss.backward().unwrap();
        let mut reduction = dp.begin_reduction(&params);
        assert_eq!(reduction.buckets(), 4);
        let mut grads = loss
            .backward_observed(&mut Logged {
                reduction: &mut reduction,
                log: log.clone(),
            })
            .unwrap();
        let during: Vec<String> = log.borrow().clone();
        assert_eq!(reduction.started(), 4, "every gradient came during the backward");
        reduction.finish(&mut grads).unwrap();
        let log = log.borrow();
        // w4's bucket starts after the first nodes and before the last node runs, the buckets
        // start in layout order, and the ones in flight are tested between nodes
        assert_eq!(sizes(&log, "start"), vec![26, 21, 16, 11]);
        let first_start = during.iter().position(|e| e.starts_with("start")).unwrap();
        let last_node = during.iter().rposition(|e| e == "node").unwrap();
        assert!(first_start < last_node, "{during:?}");
        assert!(during[first_start..].iter().any(|e| e == "test 26"), "{during:?}");
        assert_eq!(
            sizes(&log, "wait"),
            vec![26, 21, 16, 11],
            "waited in order, after the backward"
        );
        assert!(log.iter().position(|e| e.starts_with("wait")).unwrap() >= during.len());
        // the other rank holds the same gradients: the means are this rank's own, bit for bit
        for ((_, p), (_, q)) in params.iter().zip(&want_params) {
            let got = grads.get(p).unwrap().to_vec::<f32>().unwrap();
            assert_eq!(got, want.get(q).unwrap().to_vec::<f32>().unwrap());
        }
    }

    #[test]
    fn a_bucket_that_completes_early_waits_for_the_buckets_before_it() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let dp = DataParallel::new(Rc::new(Recording { log: log.clone() }))
            .with_bucket_floats(10)
            .unwrap();
        // listed w4, w3, w2, w1: bucket 0 is [w1], which the backward completes last (in its
        // last node), so no bucket may start before it; then they all start, in layout order
        let (params, loss) = chain([3, 2, 1, 0]);
        let mut reduction = dp.begin_reduction(&params);
        let mut grads = loss
            .backward_observed(&mut Logged {
                reduction: &mut reduction,
                log: log.clone(),
            })
            .unwrap();
        reduction.finish(&mut grads).unwrap();
        let log = log.borrow();
        assert_eq!(sizes(&log, "start"), vec![11, 16, 21, 26]);
        let first_start = log.iter().position(|e| e.starts_with("start")).unwrap();
        assert_eq!(log[first_start..].iter().filter(|e| *e == "node").count(), 1, "{log:?}");
    }

    #[test]
    fn gradients_that_never_come_are_taken_from_the_gradients_given_to_finish() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let dp = DataParallel::new(Rc::new(Recording { log: log.clone() }))
            .with_bucket_floats(1)
            .unwrap();
        let dev = Device::Cpu;
        let a = Tensor::from_vec(vec![1f32, 2.], &[2], &dev).unwrap();
        let b = Tensor::from_vec(vec![3f32], &[1], &dev).unwrap();
        let params = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
        let mut reduction = dp.begin_reduction(&params);
        // b's gradient comes first (bucket 0), a's is given at the end, from `grads`
        reduction
            .ready(&b, &Tensor::from_vec(vec![5f32], &[1], &dev).unwrap())
            .unwrap();
        assert_eq!(reduction.started(), 1);
        let err = reduction.ready(&b, &b).unwrap_err().to_string();
        assert!(err.contains("gradient of b was given twice"), "{err}");
        let mut grads = Gradients::default();
        grads.insert(&a, Tensor::from_vec(vec![-1f32, 0.5], &[2], &dev).unwrap());
        reduction.finish(&mut grads).unwrap();
        assert_eq!(grads.get(&a).unwrap().to_vec::<f32>().unwrap(), vec![-1.0, 0.5]);
        assert_eq!(grads.get(&b).unwrap().to_vec::<f32>().unwrap(), vec![5.0]);
        assert_eq!(sizes(&log.borrow(), "start"), vec![2, 3]);
        assert!(DataParallel::single().with_bucket_floats(0).is_err());
        assert_eq!(
            DataParallel::single().with_bucket_mib(16.0).unwrap().bucket_floats(),
            BUCKET_FLOATS
        );
        assert_eq!(
            DataParallel::single().with_bucket_mib(0.001).unwrap().bucket_floats(),
            262
        );
        for bad in [0.0, -1.0, 1e-7, f64::NAN, f64::INFINITY] {
            assert!(DataParallel::single().with_bucket_mib(bad).is_err(), "{bad}");
        }
    }

    /// One of 2 ranks that sums on the device, whose other rank adds `other(v)` to each value v
    /// (a function of the value, not of its place, so any bucket layout gives the same means),
    /// and which records in `log` each non-blocking device all-reduce it starts, tests, waits for
    /// or drops unwaited. Its blocking device all-reduce (the non-overlapped path) logs "blocking".
    struct DeviceRecording {
        log: Rc<RefCell<Vec<String>>>,
    }

    fn other(v: f32) -> f32 {
        0.5 * v
    }

    /// This rank's bucket plus the other rank's, through host memory as the trait's default does.
    fn with_other(bucket: &Tensor) -> Result<Tensor> {
        let mut v = bucket.to_vec::<f32>()?;
        v.iter_mut().for_each(|x| *x += other(*x));
        Tensor::from_vec(v, bucket.shape(), bucket.device())
    }

    struct RecordedDeviceReduction {
        log: Rc<RefCell<Vec<String>>>,
        sum: Option<Tensor>,
        len: usize,
    }

    impl InFlight<Tensor> for RecordedDeviceReduction {
        fn test(&mut self) -> Result<bool> {
            self.log.borrow_mut().push(format!("test {}", self.len));
            Ok(false)
        }
        fn wait(mut self: Box<Self>) -> Result<Tensor> {
            self.log.borrow_mut().push(format!("wait {}", self.len));
            Ok(self.sum.take().expect("waited once"))
        }
    }

    impl Drop for RecordedDeviceReduction {
        fn drop(&mut self) {
            if self.sum.is_some() {
                self.log.borrow_mut().push(format!("drop {}", self.len));
            }
        }
    }

    impl Collective for DeviceRecording {
        fn rank(&self) -> usize {
            0
        }
        fn world(&self) -> usize {
            2
        }
        fn all_reduce_sum_f32(&self, _: &mut [f32]) -> Result<()> {
            panic!("the gradients travel on the device")
        }
        fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
            // the presence counts of the non-overlapped path: the other rank has the same
            buf.iter_mut().for_each(|v| *v *= 2.0);
            Ok(())
        }
        fn all_reduce_max_u64(&self, _: &mut [u64]) -> Result<()> {
            Ok(())
        }
        fn reduce_scatter_sum_f32(&self, _: &[f32], _: &mut [f32]) -> Result<()> {
            unimplemented!()
        }
        fn all_gather_f32(&self, _: &[f32], _: &mut [f32]) -> Result<()> {
            unimplemented!()
        }
        fn reduces_on_device(&self) -> bool {
            true
        }
        fn all_reduce_sum_tensor(&self, bucket: &Tensor) -> Result<Tensor> {
            self.log.borrow_mut().push(format!("blocking {}", bucket.numel()));
            with_other(bucket)
        }
        fn start_all_reduce_sum_tensor(&self, bucket: &Tensor) -> Result<Box<dyn InFlight<Tensor>>> {
            self.log.borrow_mut().push(format!("start {}", bucket.numel()));
            Ok(Box::new(RecordedDeviceReduction {
                log: self.log.clone(),
                sum: Some(with_other(bucket)?),
                len: bucket.numel(),
            }))
        }
    }

    #[test]
    fn device_buckets_start_their_all_reduce_while_the_backward_still_runs() {
        for dev in [Device::Cpu, Device::Emu] {
            let log = Rc::new(RefCell::new(Vec::new()));
            let dp = DataParallel::new(Rc::new(DeviceRecording { log: log.clone() }))
                .with_bucket_floats(10)
                .unwrap();
            let (params, loss) = chain_on([0, 1, 2, 3], &dev);
            let mut reduction = dp.begin_reduction(&params);
            assert_eq!(reduction.buckets(), 4);
            let mut grads = loss
                .backward_observed(&mut Logged {
                    reduction: &mut reduction,
                    log: log.clone(),
                })
                .unwrap();
            let own: Vec<Vec<f32>> = params
                .iter()
                .map(|(_, p)| grads.get(p).unwrap().to_vec::<f32>().unwrap())
                .collect();
            let during: Vec<String> = log.borrow().clone();
            assert_eq!(reduction.started(), 4, "every gradient came during the backward");
            reduction.finish(&mut grads).unwrap();
            let log = log.borrow();
            // the same buckets as the host path's (values and flags), started in layout order,
            // the first before the backward's last node, tested between nodes, waited after
            assert_eq!(sizes(&log, "start"), vec![26, 21, 16, 11], "{dev}");
            let first_start = during.iter().position(|e| e.starts_with("start")).unwrap();
            let last_node = during.iter().rposition(|e| e == "node").unwrap();
            assert!(first_start < last_node, "{during:?}");
            assert!(during[first_start..].iter().any(|e| e == "test 26"), "{during:?}");
            assert_eq!(sizes(&log, "wait"), vec![26, 21, 16, 11]);
            assert!(log.iter().position(|e| e.starts_with("wait")).unwrap() >= during.len());
            assert!(!log.iter().any(|e| e.starts_with("blocking") || e.starts_with("drop")));
            // each mean is (g + 0.5·g)/2, in f32 as the host path computes it, on the device
            for ((_, p), g) in params.iter().zip(&own) {
                let got = grads.get(p).unwrap();
                assert_eq!(got.device(), &dev);
                let want: Vec<f32> = g.iter().map(|&v| (v + other(v)) * 0.5).collect();
                assert_eq!(got.to_vec::<f32>().unwrap(), want);
            }
        }
    }

    /// The overlapped device path, the non-overlapped one (src/train/device_buckets.rs, its own
    /// layout) and the host path give the same means bit for bit, over several steps of
    /// accumulated gradients, with gradients in f32 and bf16 and one parameter without any.
    #[test]
    fn overlapped_device_buckets_average_as_the_other_paths_do() {
        let dev = Device::Emu;
        let log = Rc::new(RefCell::new(Vec::new()));
        let on_device = DataParallel::new(Rc::new(DeviceRecording { log: log.clone() }))
            .with_bucket_floats(7)
            .unwrap();
        /// Host twin: the same other rank, on host vectors.
        struct Host;
        impl Collective for Host {
            fn rank(&self) -> usize {
                0
            }
            fn world(&self) -> usize {
                2
            }
            fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
                buf.iter_mut().for_each(|x| *x += other(*x));
                Ok(())
            }
            fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
                buf.iter_mut().for_each(|v| *v *= 2.0);
                Ok(())
            }
            fn all_reduce_max_u64(&self, _: &mut [u64]) -> Result<()> {
                Ok(())
            }
            fn reduce_scatter_sum_f32(&self, _: &[f32], _: &mut [f32]) -> Result<()> {
                unimplemented!()
            }
            fn all_gather_f32(&self, _: &[f32], _: &mut [f32]) -> Result<()> {
                unimplemented!()
            }
        }
        let host = DataParallel::new(Rc::new(Host)).with_bucket_floats(7).unwrap();
        let (params, _) = chain_on([0, 1, 2, 3], &dev);
        let unused = Tensor::zeros(&[3], DType::F32, &dev).unwrap().requires_grad();
        let mut params = params;
        params.insert(1, ("unused".to_string(), unused.clone()));
        for step in 0..3 {
            // a fresh loss per step, its gradients accumulated over `step + 1` micro-batches
            let mut total = Gradients::default();
            for micro in 0..=step {
                let mut h = Tensor::from_vec(vec![0.25 * (micro + step) as f32 + 1.0; 5], &[5, 1], &dev).unwrap();
                for name in ["w1", "w2", "w3", "w4"] {
                    let w = &params.iter().find(|(n, _)| n == name).unwrap().1;
                    h = h.sum(&[-1], true).unwrap().mul(w).unwrap().tanh().unwrap();
                }
                let grads = h.sum_all().unwrap().backward().unwrap();
                for (_, p) in &params {
                    if let Some(g) = grads.get(p) {
                        let g = if step == 1 && p.numel() == 15 {
                            g.to_dtype(DType::BF16).unwrap()
                        } else {
                            g.clone()
                        };
                        let sum = match total.get(p) {
                            Some(acc) => acc.add(&g).unwrap(),
                            None => g,
                        };
                        total.insert(p, sum);
                    }
                }
            }
            let copy = |g: &Gradients| {
                let mut c = Gradients::default();
                for (_, p) in &params {
                    if let Some(t) = g.get(p) {
                        c.insert(p, t.clone());
                    }
                }
                c
            };
            let mut overlapped = copy(&total);
            let mut reduction = on_device.begin_reduction(&params);
            for (_, p) in params.iter().rev() {
                if let Some(g) = total.get(p) {
                    reduction.ready(p, g).unwrap();
                }
            }
            reduction.finish(&mut overlapped).unwrap();
            let mut after = copy(&total);
            on_device.average_gradients(&params, &mut after).unwrap();
            let mut on_host = copy(&total);
            host.begin_reduction(&params).finish(&mut on_host).unwrap();
            assert!(
                overlapped.get(&unused).is_none() && after.get(&unused).is_none() && on_host.get(&unused).is_none()
            );
            for (name, p) in &params {
                let Some(o) = overlapped.get(p) else { continue };
                let (a, h) = (after.get(p).unwrap(), on_host.get(p).unwrap());
                assert_eq!(o.dtype(), a.dtype(), "{name}");
                assert_eq!(o.dtype(), h.dtype(), "{name}");
                assert_eq!(o.device(), &dev);
                let o = o.to_vec::<f32>().unwrap();
                assert_eq!(
                    o,
                    a.to_vec::<f32>().unwrap(),
                    "step {step}, {name}: overlapped vs after the backward"
                );
                assert_eq!(o, h.to_vec::<f32>().unwrap(), "step {step}, {name}: device vs host");
            }
        }
        let log = log.borrow();
        assert!(log.iter().any(|e| e.starts_with("start")) && log.iter().any(|e| e.starts_with("blocking")));
    }

    /// A reduction dropped with its device all-reduces in flight (an error in the backward) drops
    /// every handle unwaited, which is the handle's to make safe (NCCL's keeps its buffer alive
    /// until the device has waited for the sum: src/backend/cuda/mod.rs, OnCommStream).
    #[test]
    fn a_reduction_dropped_mid_step_drops_its_device_handles_unwaited() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let dp = DataParallel::new(Rc::new(DeviceRecording { log: log.clone() }))
            .with_bucket_floats(10)
            .unwrap();
        let (params, loss) = chain_on([0, 1, 2, 3], &Device::Emu);
        let mut reduction = dp.begin_reduction(&params);
        let mut seen = 0;
        let err = loss
            .backward_observed(&mut |leaf: &Tensor, grad: &Tensor| {
                reduction.ready(leaf, grad)?;
                seen += 1;
                if seen == 2 {
                    return Err(crate::Error::invalid("test", "a failure mid-backward"));
                }
                Ok(())
            })
            .err()
            .expect("the backward stops at the observer's error");
        assert!(err.to_string().contains("mid-backward"), "{err}");
        assert_eq!(reduction.started(), 2);
        drop(reduction);
        let log = log.borrow();
        assert_eq!(sizes(&log, "start"), vec![26, 21]);
        assert_eq!(sizes(&log, "drop"), vec![26, 21]);
        assert!(sizes(&log, "wait").is_empty());
    }
}
