//! The gradient all-reduce of a data-parallel step, overlapped with the backward pass: the
//! parameters' gradients are laid out in buckets (`BucketLayout`, from the parameter list, so
//! the same on every rank), each bucket's non-blocking all-reduce starts as soon as its gradients
//! are final and every bucket before it has started, the reductions in flight are tested between
//! backward nodes, and all are waited for before clipping ([`GradientReduction`]; see
//! docs/distributed.md, "Overlap").

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
    /// there instead (src/train/device_buckets.rs).
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
/// [`DataParallel::begin_reduction`].
pub struct GradientReduction<'a> {
    collective: &'a dyn Collective,
    world: usize,
    params: &'a [(String, Tensor)],
    /// Parameter index by tensor id.
    by_id: HashMap<usize, usize>,
    layout: BucketLayout,
    given: Vec<Given>,
    /// Per bucket: its buffer while it fills (allocated at its first gradient).
    filling: Vec<Option<Vec<f32>>>,
    /// Per bucket: how many of its parameters are not given yet.
    missing: Vec<usize>,
    /// The started reductions, in bucket order (bucket `started.len()` is the next to start),
    /// with whether a test found each complete.
    started: Vec<(Box<dyn InFlight>, bool)>,
}

impl<'a> GradientReduction<'a> {
    fn new(ranks: &'a DataParallel, params: &'a [(String, Tensor)]) -> GradientReduction<'a> {
        let layout = BucketLayout::new(params, ranks.bucket_floats());
        let buckets = layout.buckets.len();
        GradientReduction {
            collective: ranks.collective(),
            world: ranks.world(),
            params,
            by_id: params.iter().enumerate().map(|(i, (_, p))| (p.id(), i)).collect(),
            missing: layout.buckets.iter().map(Vec::len).collect(),
            layout,
            given: vec![Given::Not; params.len()],
            filling: vec![None; buckets],
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
        let scale = 1.0 / self.world as f32;
        for (b, (reduction, _)) in std::mem::take(&mut self.started).into_iter().enumerate() {
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

    /// Parameter `i`'s gradient (None: this rank has none) into its bucket; then the buckets
    /// that are complete, next in order, start.
    fn give(&mut self, i: usize, grad: Option<&Tensor>) -> Result<()> {
        let params = self.params;
        let (name, p) = &params[i];
        if self.given[i] != Given::Not {
            return Err(dp_err(format!("the gradient of {name} was given twice in one step")));
        }
        let slot = self.layout.slots[i];
        let len = self.layout.lens[slot.bucket];
        let buf = self.filling[slot.bucket].get_or_insert_with(|| vec![0.0; len]);
        self.given[i] = match grad {
            Some(g) => {
                if g.shape() != p.shape() {
                    return Err(dp_err(format!(
                        "the gradient of {name} has shape {:?}, the parameter {:?}",
                        g.shape(),
                        p.shape()
                    )));
                }
                buf[slot.offset..slot.offset + p.numel()].copy_from_slice(&g.to_vec::<f32>()?);
                buf[slot.flag] = 1.0;
                Given::Grad(g.dtype())
            }
            None => Given::Absent,
        };
        self.missing[slot.bucket] -= 1;
        while self.started.len() < self.buckets() && self.missing[self.started.len()] == 0 {
            let b = self.started.len();
            let buf = self.filling[b].take().expect("a complete bucket has its buffer");
            let reduction = self.collective.start_all_reduce_sum_f32(buf)?;
            self.started.push((reduction, false));
        }
        Ok(())
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
        let dev = Device::Cpu;
        let w: Vec<Tensor> = (0..4)
            .map(|i| {
                let n = i + 2;
                let v: Vec<f32> = (0..5 * n).map(|k| 0.5 + 0.25 * ((k * 7 + i) % 5) as f32).collect();
                Tensor::from_vec(v, &[5, n], &dev).unwrap().requires_grad()
            })
            .collect();
        let x = Tensor::from_vec((0..5).map(|k| k as f32 - 1.5).collect(), &[5, 1], &dev).unwrap();
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
}
