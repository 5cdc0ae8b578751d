//! Creating tensors: from host data, constants, ranges and seeded random numbers.

use super::rng::Rng;
use super::{layout, DType, Device, Tensor, WithDType};
use crate::backend::cpu::alloc;
use crate::backend::{CpuStorage, Storage};
use crate::{Error, Result};

impl Tensor {
    /// A tensor holding `data` in row-major order.
    pub fn from_vec<T: WithDType>(data: Vec<T>, shape: &[usize], dev: &Device) -> Result<Tensor> {
        let n = layout::checked_numel("from_vec", shape)?;
        if n != data.len() {
            return Err(Error::shape(
                "from_vec",
                format!("{} elements cannot fill shape {shape:?}, which holds {n}", data.len()),
            ));
        }
        Ok(Tensor::from_parts(
            Storage::from_host(CpuStorage::from_vec(data), dev)?,
            shape,
        ))
    }

    /// A copy of `data` in row-major order.
    pub fn from_slice<T: WithDType>(data: &[T], shape: &[usize], dev: &Device) -> Result<Tensor> {
        let mut copy = alloc::with_capacity("from_slice", data.len())?;
        copy.extend_from_slice(data);
        Tensor::from_vec(copy, shape, dev)
    }

    /// Every element equal to `value` (rounded to `dtype`).
    pub fn full(value: f64, shape: &[usize], dtype: DType, dev: &Device) -> Result<Tensor> {
        Ok(Tensor::from_parts(
            Storage::filled(value, layout::checked_numel("full", shape)?, dtype, dev)?,
            shape,
        ))
    }

    /// All zeros (see [`Tensor::full`]).
    pub fn zeros(shape: &[usize], dtype: DType, dev: &Device) -> Result<Tensor> {
        Tensor::full(0.0, shape, dtype, dev)
    }

    /// All ones (see [`Tensor::full`]).
    pub fn ones(shape: &[usize], dtype: DType, dev: &Device) -> Result<Tensor> {
        Tensor::full(1.0, shape, dtype, dev)
    }

    /// Zeros with the shape, dtype and device of `self`.
    pub fn zeros_like(&self) -> Result<Tensor> {
        Tensor::zeros(self.shape(), self.dtype(), self.device())
    }

    /// Ones with the shape, dtype and device of `self`.
    pub fn ones_like(&self) -> Result<Tensor> {
        Tensor::ones(self.shape(), self.dtype(), self.device())
    }

    /// `start, start + step, ...` up to but excluding `end`, as PyTorch's `arange`.
    pub fn arange(start: f64, end: f64, step: f64, dtype: DType, dev: &Device) -> Result<Tensor> {
        if step == 0.0 || !step.is_finite() || !start.is_finite() || !end.is_finite() {
            return Err(Error::invalid(
                "arange",
                format!("start {start}, end {end} and step {step} must be finite, step non-zero"),
            ));
        }
        let count = ((end - start) / step).ceil().max(0.0);
        if count >= usize::MAX as f64 {
            return Err(Error::invalid(
                "arange",
                format!("start {start}, end {end} and step {step} give {count} elements, more than usize holds"),
            ));
        }
        let n = count as usize;
        let values = alloc::collect("arange", n, (0..n).map(|i| start + i as f64 * step))?;
        Tensor::from_vec(values, &[n], dev)?.to_dtype(dtype)
    }

    /// Uniform samples in [0, 1) drawn from `rng` in row-major order.
    pub fn rand(shape: &[usize], dtype: DType, rng: &mut Rng, dev: &Device) -> Result<Tensor> {
        Tensor::sampled("rand", shape, dtype, dev, || rng.uniform())
    }

    /// Standard normal samples drawn from `rng` in row-major order.
    pub fn randn(shape: &[usize], dtype: DType, rng: &mut Rng, dev: &Device) -> Result<Tensor> {
        Tensor::sampled("randn", shape, dtype, dev, || rng.normal())
    }

    fn sampled(
        op: &'static str,
        shape: &[usize],
        dtype: DType,
        dev: &Device,
        draw: impl FnMut() -> f64,
    ) -> Result<Tensor> {
        if !dtype.is_float() {
            return Err(Error::not_float(op, dtype));
        }
        let n = layout::checked_numel(op, shape)?;
        let values = alloc::collect(op, n, std::iter::repeat_with(draw))?;
        Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)
    }
}
