//! ZeRO stage 1 (Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion
//! Parameter Models", 2020) for data-parallel training: each rank keeps the AdamW moments of
//! its shard of the parameters only, so the optimizer state per rank shrinks N-fold.
//!
//! The parameters, flattened one after the other in `params` order into P f32 values and padded
//! with zeros to N·S (S = ⌈P/N⌉), are cut into N shards of S values; rank r owns values
//! `r·S .. (r+1)·S`. A shard may cut a parameter: its pieces inside the shard are the
//! *segments*, each an f32 vector of its own that an inner [`AdamW`] updates (with the
//! weight decay its parameter has). One step:
//!
//! 1. every rank flattens its gradients and a reduce-scatter leaves rank r the sum of every
//!    rank's shard r, which it divides by N: the averaged gradient of its shard;
//! 2. the global norm for clipping comes from the shards: each rank's sum of squares, summed
//!    over the ranks ([`clip_grad_norm_sharded`]);
//! 3. each rank applies AdamW to its segments (the same fused primitive, elementwise, as the
//!    unsharded AdamW, so the update of every value is the same);
//! 4. an all-gather of the updated shards gives every rank the whole new weights.
//!
//! The checkpoint holds the moments gathered back into whole tensors ([`Zero1::state`]), as
//! one [`AdamW`] writes them: any number of ranks, with or without ZeRO-1, resumes it, and
//! [`Zero1::new`] shards such a state again.

use super::data_parallel::DataParallel;
use crate::optim::{clip_grad_norm_sharded, AdamW, AdamWConfig, WeightDecay};
use crate::{DType, Error, Gradients, Result, Tensor};
use std::collections::HashSet;
use std::sync::Arc;

/// A piece of one parameter inside this rank's shard.
struct Segment {
    /// The parameter's index in `Zero1::params`.
    param: usize,
    /// Its elements `start..end` in the flattened parameter ...
    start: usize,
    end: usize,
    /// ... at this offset in the shard.
    offset: usize,
    /// Those values: the leaf that the inner AdamW updates.
    values: Tensor,
}

/// AdamW with its moments sharded over the ranks (ZeRO stage 1); see the module docs.
pub struct Zero1 {
    ranks: DataParallel,
    params: Vec<(String, Tensor)>,
    /// Where each parameter starts in the flattened parameters.
    offsets: Vec<usize>,
    /// S: the values per shard (the last shards end with padding).
    shard_len: usize,
    segments: Vec<Segment>,
    /// AdamW over the segments: this rank's moments.
    inner: AdamW,
}

fn zero_err(msg: String) -> Error {
    Error::Invalid { op: "ZeRO-1", msg }
}

/// `{name}[a..b]`: a segment's name in the inner optimizer.
fn segment_name(name: &str, start: usize, end: usize) -> String {
    format!("{name}[{start}..{end}]")
}

impl Zero1 {
    /// Shards `full`, an [`AdamW`] over `params` (f32 tensors) with the state to start from
    /// (new, or loaded from a checkpoint), over `ranks`: this rank keeps the moments of its
    /// shard, `full` is dropped. Its settings (learning rate, betas, eps, weight decay and which
    /// parameters decay) carry over.
    pub fn new(ranks: &DataParallel, params: &[(String, Tensor)], full: AdamW) -> Result<Zero1> {
        if let Some((name, p)) = params.iter().find(|(_, p)| p.dtype() != DType::F32) {
            return Err(zero_err(format!(
                "parameter {name} is {}; ZeRO-1 shards f32 parameters",
                p.dtype()
            )));
        }
        let mut offsets = Vec::with_capacity(params.len());
        let mut total = 0;
        for (_, p) in params {
            offsets.push(total);
            total += p.numel();
        }
        let (world, rank) = (ranks.world(), ranks.rank());
        let shard_len = total.div_ceil(world).max(1);
        let (lo, hi) = ((rank * shard_len).min(total), ((rank + 1) * shard_len).min(total));
        let state = full.state()?;
        let find = |key: &str| {
            state
                .iter()
                .find(|(n, _)| n == key)
                .map(|(_, t)| t)
                .ok_or_else(|| zero_err(format!("the optimizer state has no {key}")))
        };
        let decayed: HashSet<&str> = full.decayed().into_iter().collect();
        let mut segments = Vec::new();
        let mut leaves = Vec::new();
        let mut seg_state = Vec::new();
        let mut seg_decays = HashSet::new();
        for (i, (name, p)) in params.iter().enumerate() {
            // the part of [offset, offset + n) inside [lo, hi), in the parameter's own indices
            let (offset, n) = (offsets[i], p.numel());
            let (start, end) = (lo.max(offset) - offset, hi.min(offset + n).max(offset) - offset);
            if start >= end {
                continue;
            }
            let slice = |t: &Tensor| -> Result<Tensor> {
                let v = t.to_vec::<f32>()?;
                Tensor::from_vec(v[start..end].to_vec(), &[end - start], p.device())
            };
            let seg = segment_name(name, start, end);
            let values = slice(p)?.requires_grad();
            seg_state.push((format!("{seg}.exp_avg"), slice(find(&format!("{name}.exp_avg"))?)?));
            seg_state.push((
                format!("{seg}.exp_avg_sq"),
                slice(find(&format!("{name}.exp_avg_sq"))?)?,
            ));
            if decayed.contains(name.as_str()) {
                seg_decays.insert(seg.clone());
            }
            leaves.push((seg, values.clone()));
            segments.push(Segment {
                param: i,
                start,
                end,
                offset: offset + start - lo,
                values,
            });
        }
        seg_state.push(("step".into(), find("step")?.clone()));
        let mut inner = AdamW::with_config(
            leaves,
            AdamWConfig {
                lr: full.lr,
                betas: full.betas,
                eps: full.eps,
                weight_decay: full.weight_decay,
                decay: WeightDecay::Predicate(Arc::new(move |name, _| seg_decays.contains(name))),
            },
        )?;
        inner.load_state(&seg_state)?;
        Ok(Zero1 {
            ranks: ranks.clone(),
            params: params.to_vec(),
            offsets,
            shard_len,
            segments,
            inner,
        })
    }

    /// The bytes of AdamW moments (f32 m and v) this rank holds, and those one unsharded AdamW
    /// holds: what ZeRO-1 saves per rank is the difference.
    pub fn moment_bytes(&self) -> (usize, usize) {
        let mine: usize = self.segments.iter().map(|s| s.end - s.start).sum();
        let whole: usize = self.params.iter().map(|(_, p)| p.numel()).sum();
        (2 * 4 * mine, 2 * 4 * whole)
    }

    /// Steps 1 and 2 of the module docs: this rank's shard of the gradients averaged over the
    /// ranks (`grads` is this rank's whole gradient), clipped to the global norm `max_norm`.
    /// Returns the global norm before clipping and the shard's gradients, for [`Zero1::step`].
    pub fn reduce_gradients(&self, grads: &Gradients, max_norm: f64) -> Result<(f64, Gradients)> {
        let world = self.ranks.world();
        let present = self.ranks.with_gradient_anywhere(&self.params, grads)?;
        // the flattened gradients, zeros where a rank has none, padded to world · S
        let mut flat = vec![0f32; world * self.shard_len];
        for (i, (_, p)) in self.params.iter().enumerate() {
            if let Some(g) = grads.get(p) {
                let off = self.offsets[i];
                flat[off..off + p.numel()].copy_from_slice(&g.to_vec::<f32>()?);
            }
        }
        let mut shard = vec![0f32; self.shard_len];
        self.ranks.collective().reduce_scatter_sum_f32(&flat, &mut shard)?;
        drop(flat);
        // the mean, as DataParallel::average_gradients computes it
        let scale = 1.0 / world as f32;
        let mut out = Gradients::default();
        for s in self.segments.iter().filter(|s| present[s.param]) {
            let mean: Vec<f32> = shard[s.offset..s.offset + s.end - s.start]
                .iter()
                .map(|v| v * scale)
                .collect();
            out.insert(
                &s.values,
                Tensor::from_vec(mean, &[s.end - s.start], s.values.device())?,
            );
        }
        let leaves: Vec<&Tensor> = self.segments.iter().map(|s| &s.values).collect();
        let norm = clip_grad_norm_sharded(&leaves, &mut out, max_norm, |local| {
            let mut sum = [local];
            self.ranks.collective().all_reduce_sum_f64(&mut sum)?;
            Ok(sum[0])
        })?;
        Ok((norm, out))
    }

    /// Steps 3 and 4 of the module docs: AdamW at learning rate `lr` on this rank's segments
    /// with `shard_grads` (from [`Zero1::reduce_gradients`]), then the updated shards gathered
    /// from every rank into the parameters.
    pub fn step(&mut self, lr: f64, shard_grads: &Gradients) -> Result<()> {
        self.inner.set_lr(lr);
        self.inner.step(shard_grads)?;
        let _no_grad = crate::no_grad();
        let segments: Vec<(usize, &Tensor)> = self.segments.iter().map(|s| (s.offset, &s.values)).collect();
        let flat = self.all_gather(&segments)?;
        for (i, (_, p)) in self.params.iter().enumerate() {
            let off = self.offsets[i];
            let values = flat[off..off + p.numel()].to_vec();
            p.assign(&Tensor::from_vec(values, p.shape(), p.device())?)?;
        }
        Ok(())
    }

    /// The flattened parameters' worth of values (world · S) whose shard r is rank r's
    /// `pieces` (each at its offset in the shard; zeros elsewhere).
    fn all_gather(&self, pieces: &[(usize, &Tensor)]) -> Result<Vec<f32>> {
        let mut mine = vec![0f32; self.shard_len];
        for (offset, t) in pieces {
            mine[*offset..*offset + t.numel()].copy_from_slice(&t.to_vec::<f32>()?);
        }
        let mut flat = vec![0f32; self.ranks.world() * self.shard_len];
        self.ranks.collective().all_gather_f32(&mine, &mut flat)?;
        Ok(flat)
    }

    /// The whole optimizer state, as one [`AdamW`] over the parameters would return it
    /// ([`AdamW::state`]): every rank's moments gathered into whole tensors. A collective call:
    /// every rank calls it (and holds the whole moments until it drops the result).
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let inner = self.inner.state()?;
        let find = |key: String| {
            inner
                .iter()
                .find(|(n, _)| *n == key)
                .map(|(_, t)| t)
                .ok_or_else(|| zero_err(format!("the sharded state has no {key}")))
        };
        let mut out = Vec::with_capacity(2 * self.params.len() + 1);
        let mut whole = Vec::with_capacity(2);
        for moment in ["exp_avg", "exp_avg_sq"] {
            let pieces = self
                .segments
                .iter()
                .map(|s| {
                    let name = segment_name(&self.params[s.param].0, s.start, s.end);
                    Ok((s.offset, find(format!("{name}.{moment}"))?))
                })
                .collect::<Result<Vec<_>>>()?;
            whole.push(self.all_gather(&pieces)?);
        }
        for (i, (name, p)) in self.params.iter().enumerate() {
            let off = self.offsets[i];
            for (moment, flat) in ["exp_avg", "exp_avg_sq"].iter().zip(&whole) {
                let values = flat[off..off + p.numel()].to_vec();
                out.push((
                    format!("{name}.{moment}"),
                    Tensor::from_vec(values, p.shape(), p.device())?,
                ));
            }
        }
        out.push(("step".into(), find("step".into())?.clone()));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Device, Rng};

    fn params(dev: &Device) -> Vec<(String, Tensor)> {
        let mut rng = Rng::new(7);
        [("w", vec![3, 4]), ("b", vec![7]), ("e", vec![2, 3])]
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
                (
                    name.to_string(),
                    Tensor::from_vec(v, &shape, dev).unwrap().requires_grad(),
                )
            })
            .collect()
    }

    /// Deep copies (new storages) of `params`.
    fn cloned(params: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
        params
            .iter()
            .map(|(n, p)| (n.clone(), p.detach().copy().unwrap().requires_grad()))
            .collect()
    }

    /// Gradients for `params` from a fixed stream; `b` gets none at `skip_b`.
    fn grads(params: &[(String, Tensor)], seed: u64, skip_b: bool) -> Gradients {
        let mut rng = Rng::new(seed);
        let mut g = Gradients::default();
        for (name, p) in params {
            let v: Vec<f32> = (0..p.numel()).map(|_| 3.0 * rng.normal() as f32).collect();
            if !(skip_b && name == "b") {
                g.insert(p, Tensor::from_vec(v, p.shape(), p.device()).unwrap());
            }
        }
        g
    }

    fn adamw(params: &[(String, Tensor)]) -> AdamW {
        AdamW::new(params.to_vec(), 1e-2, (0.9, 0.95), 1e-8, 0.1).unwrap()
    }

    /// On one rank the shard is everything: ZeRO-1 must update the weights, clip, and save
    /// the state exactly as the unsharded AdamW and clip_grad_norm do (the same primitive on
    /// the same values), over steps where a parameter has no gradient and clipping applies.
    #[test]
    fn one_rank_zero1_equals_adamw_bit_for_bit() {
        let dev = Device::Cpu;
        let plain = params(&dev);
        let sharded = cloned(&plain);
        let mut opt = adamw(&plain);
        let mut zero = Zero1::new(&DataParallel::single(), &sharded, adamw(&sharded)).unwrap();
        for step in 0..4 {
            let skip_b = step == 1;
            let max_norm = if step == 2 { 0.5 } else { 1e9 };
            let mut g = grads(&plain, step, skip_b);
            let want_norm = crate::optim::clip_grad_norm(&plain, &mut g, max_norm).unwrap();
            opt.set_lr(1e-2 * (step + 1) as f64);
            opt.step(&g).unwrap();
            let (norm, shard) = zero.reduce_gradients(&grads(&sharded, step, skip_b), max_norm).unwrap();
            assert_eq!(norm, want_norm, "step {step}");
            zero.step(1e-2 * (step + 1) as f64, &shard).unwrap();
            for ((name, a), (_, b)) in plain.iter().zip(&sharded) {
                assert_eq!(
                    a.to_vec::<f32>().unwrap(),
                    b.to_vec::<f32>().unwrap(),
                    "{name} at step {step}"
                );
            }
        }
        let (want, got) = (opt.state().unwrap(), zero.state().unwrap());
        assert_eq!(want.len(), got.len());
        for ((wn, wt), (gn, gt)) in want.iter().zip(&got) {
            assert_eq!(wn, gn);
            assert_eq!(wt.shape(), gt.shape(), "{wn}");
            let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap().to_vec::<f64>().unwrap();
            assert_eq!(f64s(wt), f64s(gt), "{wn}");
        }
        assert_eq!(zero.moment_bytes(), (2 * 4 * 25, 2 * 4 * 25));
    }

    /// `world` ranks as threads of this process: every collective call posts this rank's
    /// buffer, waits for every rank's, and combines them in rank order.
    struct ThreadRank {
        rank: usize,
        world: usize,
        shared: Arc<(std::sync::Barrier, std::sync::Mutex<Vec<Vec<f64>>>)>,
    }

    impl ThreadRank {
        /// Every rank's `mine`, in rank order.
        fn exchange(&self, mine: Vec<f64>) -> Vec<Vec<f64>> {
            let (barrier, slots) = &*self.shared;
            slots.lock().unwrap()[self.rank] = mine;
            barrier.wait();
            let all = slots.lock().unwrap().clone();
            barrier.wait();
            all
        }
    }

    impl crate::train::data_parallel::Collective for ThreadRank {
        fn rank(&self) -> usize {
            self.rank
        }
        fn world(&self) -> usize {
            self.world
        }
        fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
            let all = self.exchange(buf.iter().map(|&v| v as f64).collect());
            for (i, v) in buf.iter_mut().enumerate() {
                *v = all.iter().fold(0f32, |acc, r| acc + r[i] as f32);
            }
            Ok(())
        }
        fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
            let all = self.exchange(buf.to_vec());
            for (i, v) in buf.iter_mut().enumerate() {
                *v = all.iter().map(|r| r[i]).sum();
            }
            Ok(())
        }
        fn all_reduce_max_u64(&self, _: &mut [u64]) -> Result<()> {
            unreachable!("ZeRO-1 takes no maximum")
        }
        fn reduce_scatter_sum_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
            let all = self.exchange(send.iter().map(|&v| v as f64).collect());
            let first = self.rank * recv.len();
            for (i, v) in recv.iter_mut().enumerate() {
                let at = first + i;
                *v = all.iter().fold(0f32, |acc, r| acc + r[at] as f32);
            }
            Ok(())
        }
        fn all_gather_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
            let all = self.exchange(send.iter().map(|&v| v as f64).collect());
            for (r, block) in all.iter().enumerate() {
                for (i, v) in block.iter().enumerate() {
                    recv[r * send.len() + i] = *v as f32;
                }
            }
            Ok(())
        }
    }

    /// 3 ranks (threads), whose shards of 9 values cut `w` and `b` in two: each rank's own
    /// gradients, reduce-scattered, clipped by the norm from the shards and applied to the
    /// shards, then gathered, give every rank the weights of one AdamW on the mean gradient
    /// (within the f64 summation order of the norm), and the gathered state is that AdamW's.
    #[test]
    fn three_ranks_with_sharded_moments_train_as_one_adamw_on_the_mean_gradient() {
        let world = 3;
        let dev = Device::Cpu;
        // the reference: one AdamW on the ranks' mean gradient, summed in rank order in f32
        let plain = params(&dev);
        let mut opt = adamw(&plain);
        let mut want_norms = Vec::new();
        for step in 0..3u64 {
            let per_rank: Vec<Gradients> = (0..world as u64).map(|r| grads(&plain, 10 * step + r, false)).collect();
            let mut mean = Gradients::default();
            for (_, p) in &plain {
                let mut sum = vec![0f32; p.numel()];
                for g in &per_rank {
                    for (s, v) in sum.iter_mut().zip(g.get(p).unwrap().to_vec::<f32>().unwrap()) {
                        *s += v;
                    }
                }
                let avg: Vec<f32> = sum.iter().map(|v| v * (1.0 / world as f32)).collect();
                mean.insert(p, Tensor::from_vec(avg, p.shape(), &dev).unwrap());
            }
            want_norms.push(crate::optim::clip_grad_norm(&plain, &mut mean, 2.0).unwrap());
            opt.step(&mean).unwrap();
        }
        let want_weights: Vec<Vec<f32>> = plain.iter().map(|(_, p)| p.to_vec::<f32>().unwrap()).collect();
        let want_state: Vec<(String, Vec<f64>)> = opt
            .state()
            .unwrap()
            .iter()
            .map(|(n, t)| (n.clone(), t.to_dtype(DType::F64).unwrap().to_vec::<f64>().unwrap()))
            .collect();

        let shared = Arc::new((
            std::sync::Barrier::new(world),
            std::sync::Mutex::new(vec![Vec::new(); world]),
        ));
        let results: Vec<_> = (0..world)
            .map(|rank| {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let ranks = DataParallel::new(std::rc::Rc::new(ThreadRank { rank, world, shared }));
                    let mine = params(&Device::Cpu);
                    let mut zero = Zero1::new(&ranks, &mine, adamw(&mine)).unwrap();
                    let mut norms = Vec::new();
                    for step in 0..3u64 {
                        let (norm, shard) = zero
                            .reduce_gradients(&grads(&mine, 10 * step + rank as u64, false), 2.0)
                            .unwrap();
                        norms.push(norm);
                        zero.step(1e-2, &shard).unwrap();
                    }
                    let weights: Vec<Vec<f32>> = mine.iter().map(|(_, p)| p.to_vec::<f32>().unwrap()).collect();
                    let state: Vec<(String, Vec<f64>)> = zero
                        .state()
                        .unwrap()
                        .iter()
                        .map(|(n, t)| (n.clone(), t.to_dtype(DType::F64).unwrap().to_vec::<f64>().unwrap()))
                        .collect();
                    (norms, weights, state, zero.moment_bytes())
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1e-3);
        // 25 values in shards of 9: 9, 9 and 7 on the ranks
        let owned = [9, 9, 7];
        for (rank, (norms, weights, state, bytes)) in results.iter().enumerate() {
            for (got, want) in norms.iter().zip(&want_norms) {
                assert!(
                    close(*got, *want) && *want > 2.0,
                    "rank {rank}: norm {got} vs {want} (clipped)"
                );
            }
            for (w, (got, want)) in weights.iter().zip(&want_weights).enumerate() {
                for (a, b) in got.iter().zip(want) {
                    assert!(close(*a as f64, *b as f64), "rank {rank}, parameter {w}: {a} vs {b}");
                }
            }
            assert_eq!(state.len(), want_state.len());
            for ((gn, gv), (wn, wv)) in state.iter().zip(&want_state) {
                assert_eq!(gn, wn);
                for (a, b) in gv.iter().zip(wv) {
                    assert!(close(*a, *b), "rank {rank}, {gn}: {a} vs {b}");
                }
            }
            assert_eq!(*bytes, (8 * owned[rank], 8 * 25));
        }
    }

    #[test]
    fn f64_parameters_are_refused() {
        let dev = Device::Cpu;
        let p = vec![(
            "w".to_string(),
            Tensor::zeros(&[2], DType::F64, &dev).unwrap().requires_grad(),
        )];
        let err = Zero1::new(&DataParallel::single(), &p, adamw(&p))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("ZeRO-1 shards f32 parameters"), "{err}");
    }
}
