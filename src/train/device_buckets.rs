//! Gradient averaging with the buckets on the device, for a collective that sums where the data
//! lies (NCCL on CUDA ranks, src/train/nccl.rs): the same buckets and the same arithmetic as
//! [`DataParallel::average_gradients`](super::data_parallel::DataParallel::average_gradients)'s
//! host path, built with tensor ops instead of host vectors, so a GPU's gradients are flattened,
//! summed, scaled and cut back into parameters without a copy to the host.

use crate::{DType, Gradients, Result, Tensor};

/// Replaces the gradient of each of `reduced` (the parameters with a gradient on some rank) by
/// its mean over `world` ranks: the gradients (as f32, zeros where this rank has none) are
/// concatenated into buckets of at least `bucket_floats` values or the last ones, each bucket is
/// summed over the ranks by `all_reduce` (which returns the sum on the bucket's device), scaled
/// by 1/world in f32 as the host path does, and cut back into gradients of each parameter's shape
/// and dtype (the gradient's dtype where it had one), each a dense tensor of its own.
pub(super) fn average(
    reduced: &[&Tensor],
    grads: &mut Gradients,
    world: usize,
    bucket_floats: usize,
    mut all_reduce: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<()> {
    // the host path multiplies by this f32; the affine kernels compute in f32 from it
    let scale = f64::from(1.0 / world as f32);
    let mut parts: Vec<Tensor> = Vec::new();
    let mut members: Vec<&Tensor> = Vec::new();
    let mut floats = 0usize;
    for (i, p) in reduced.iter().enumerate() {
        let part = match grads.get(p) {
            Some(g) => g.to_dtype(DType::F32)?.reshape(&[g.numel()])?,
            None => Tensor::zeros(&[p.numel()], DType::F32, p.device())?,
        };
        floats += p.numel();
        parts.push(part);
        members.push(p);
        if floats >= bucket_floats || i + 1 == reduced.len() {
            let bucket = if parts.len() == 1 {
                parts[0].clone()
            } else {
                Tensor::cat(&parts, 0)?
            };
            let mean = all_reduce(&bucket)?.mul_scalar(scale)?;
            let mut offset = 0;
            for p in members.drain(..) {
                let n = p.numel();
                let dtype = grads.get(p).map_or(p.dtype(), |g| g.dtype());
                let g = mean
                    .narrow(0, offset, n)?
                    .reshape(p.shape())?
                    .to_dtype(dtype)?
                    .dense()?;
                offset += n;
                grads.insert(p, g);
            }
            parts.clear();
            floats = 0;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::data_parallel::{Collective, DataParallel};
    use crate::Device;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Rank 1 of 2 whose every sum adds `other(v)` to each value v of the buffer (the other rank's
    /// contribution, a function of the value and not of its place, since the host path lays its
    /// buckets out in another order than the device path), on the device (all_reduce_sum_tensor,
    /// through host memory as the trait's default does) or on the host; it records the buffer
    /// lengths it was given.
    struct TwoRanks {
        on_device: bool,
        calls: RefCell<Vec<usize>>,
    }

    fn other(v: f32) -> f32 {
        2.0 * v + 1.0
    }

    impl Collective for TwoRanks {
        fn rank(&self) -> usize {
            1
        }
        fn world(&self) -> usize {
            2
        }
        fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
            self.calls.borrow_mut().push(buf.len());
            buf.iter_mut().for_each(|v| *v += other(*v));
            Ok(())
        }
        fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
            // the presence counts: the other rank has a gradient for every parameter
            buf.iter_mut().for_each(|v| *v += 1.0);
            Ok(())
        }
        fn all_reduce_max_u64(&self, _: &mut [u64]) -> Result<()> {
            Ok(())
        }
        fn reduce_scatter_sum_f32(&self, _: &[f32], _: &mut [f32]) -> Result<()> {
            unreachable!()
        }
        fn all_gather_f32(&self, _: &[f32], _: &mut [f32]) -> Result<()> {
            unreachable!()
        }
        fn reduces_on_device(&self) -> bool {
            self.on_device
        }
    }

    /// Parameters of 3, 2x2 and 1 values; gradients for the first (f32) and second (bf16 when
    /// `bf16`), none for the third.
    fn setup(dev: &Device, bf16: bool) -> (Vec<(String, Tensor)>, Gradients) {
        let a = Tensor::zeros(&[3], DType::F32, dev).unwrap();
        let b = Tensor::zeros(&[2, 2], DType::F32, dev).unwrap();
        let c = Tensor::zeros(&[1], DType::F32, dev).unwrap();
        let mut grads = Gradients::default();
        grads.insert(&a, Tensor::from_vec(vec![1f32, -2., 4.], &[3], dev).unwrap());
        let gb = Tensor::from_vec(vec![0.5f32, 1., 2., 8.], &[2, 2], dev).unwrap();
        grads.insert(&b, if bf16 { gb.to_dtype(DType::BF16).unwrap() } else { gb });
        let params = vec![("a".into(), a), ("b".into(), b), ("c".into(), c)];
        (params, grads)
    }

    fn averaged(dev: &Device, on_device: bool, bf16: bool) -> (Vec<Vec<f32>>, Vec<DType>, Vec<usize>) {
        let (params, mut grads) = setup(dev, bf16);
        let ranks = Rc::new(TwoRanks {
            on_device,
            calls: RefCell::new(vec![]),
        });
        DataParallel::new(ranks.clone())
            .average_gradients(&params, &mut grads)
            .unwrap();
        let g: Vec<&Tensor> = params.iter().map(|(_, p)| grads.get(p).unwrap()).collect();
        for (t, (_, p)) in g.iter().zip(&params) {
            assert_eq!(t.shape(), p.shape());
            assert_eq!(t.device(), dev);
        }
        let calls = ranks.calls.borrow().clone();
        (
            g.iter().map(|t| t.to_vec::<f32>().unwrap()).collect(),
            g.iter().map(|t| t.dtype()).collect(),
            calls,
        )
    }

    #[test]
    fn device_buckets_average_as_the_host_path_does_on_cpu_and_emu() {
        // by hand: (own + other) / 2, zeros for c's missing gradient, one bucket of 3 + 4 + 1
        // values (the host path's bucket also carries a presence flag per parameter)
        let own = [1f32, -2., 4., 0.5, 1., 2., 8., 0.];
        let want: Vec<f32> = own.iter().map(|&v| (v + other(v)) * 0.5).collect();
        for dev in [Device::Cpu, Device::Emu] {
            let (host, host_dtypes, host_calls) = averaged(&dev, false, false);
            let (device, device_dtypes, device_calls) = averaged(&dev, true, false);
            assert_eq!(host, vec![want[0..3].to_vec(), want[3..7].to_vec(), want[7..].to_vec()]);
            assert_eq!(device, host, "{dev}");
            assert_eq!(device_dtypes, host_dtypes);
            assert_eq!(host_calls, vec![8 + 3]);
            assert_eq!(device_calls, vec![8], "one bucket, summed once");
        }
    }

    #[test]
    fn a_bf16_gradient_comes_back_in_bf16_from_device_buckets() {
        let (host, host_dtypes, _) = averaged(&Device::Emu, false, true);
        let (device, device_dtypes, _) = averaged(&Device::Emu, true, true);
        assert_eq!(device_dtypes, vec![DType::F32, DType::BF16, DType::F32]);
        assert_eq!(device_dtypes, host_dtypes);
        assert_eq!(device, host);
    }

    #[test]
    fn buckets_close_at_the_bucket_size_and_at_the_end() {
        let dev = Device::Cpu;
        let (params, mut grads) = setup(&dev, false);
        let reduced: Vec<&Tensor> = params.iter().map(|(_, p)| p).collect();
        let mut sizes = vec![];
        // buckets of at least 4 values: a (3) + b (4) = 7, then c (1)
        average(&reduced, &mut grads, 2, 4, |b| {
            sizes.push(b.numel());
            b.mul_scalar(2.0)
        })
        .unwrap();
        assert_eq!(sizes, vec![7, 1]);
        // the sum of two identical ranks, halved: each gradient as it was
        assert_eq!(
            grads.get(&params[0].1).unwrap().to_vec::<f32>().unwrap(),
            vec![1., -2., 4.]
        );
        assert_eq!(grads.get(&params[2].1).unwrap().to_vec::<f32>().unwrap(), vec![0.]);
    }
}
