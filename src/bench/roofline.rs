//! The two ceilings every result is compared with, measured in the same run: memory bandwidth from
//! a large device-to-device copy (bytes read plus bytes written), and the arithmetic rate of the
//! best library matmul on the device.

use super::cases::Setup;
use super::library;
use super::timing::{measure, Clock};
use crate::{DType, Device, Result, Rng, Tensor};
use rayon::prelude::*;

/// The measured ceilings of one device.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Roofline {
    /// Copy bandwidth in GB/s (10⁹ bytes per second, read + written).
    pub copy_gbs: f64,
    /// How the copy was made and its size.
    pub copy: String,
    /// The best matmul rate per dtype.
    pub peaks: Vec<Peak>,
}

/// The arithmetic ceiling for one dtype.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Peak {
    pub dtype: String,
    /// TFLOP/s, or None where no library could be measured (the reason is in `source`).
    pub tflops: Option<f64>,
    pub source: String,
}

impl Roofline {
    /// The arithmetic ceiling for `dtype` in FLOP/s, if measured.
    pub fn peak_flops(&self, dtype: DType) -> Option<f64> {
        self.peaks
            .iter()
            .find(|p| p.dtype == dtype.as_str())
            .and_then(|p| p.tflops)
            .map(|t| t * 1e12)
    }
}

/// The square size of the matmul that sets the arithmetic ceiling.
fn peak_size(dev: &Device) -> usize {
    match dev {
        Device::Cuda(_) => 8192,
        _ => 1024,
    }
}

/// Measures the copy bandwidth (a copy of `copy_bytes`) and, except on Emu, the matmul ceilings for
/// `dtypes`.
pub fn measure_roofline(
    dev: &Device,
    clock: &Clock,
    copy_bytes: usize,
    dtypes: &[DType],
    budget_s: f64,
) -> Result<Roofline> {
    let n = (copy_bytes / 4).max(1);
    let (seconds, copy) = match dev {
        // The hardware's copy, not a kiln op: every core copies a slab of a preallocated buffer.
        Device::Cpu => {
            let src: Vec<f32> = (0..n).into_par_iter().map(|i| i as f32).collect();
            let mut dst = vec![0f32; n];
            let chunk = n.div_ceil(rayon::current_num_threads()).max(1);
            let stats = measure(clock, None, budget_s, |_| {
                dst.par_chunks_mut(chunk)
                    .zip(src.par_chunks(chunk))
                    .for_each(|(d, s)| d.copy_from_slice(s));
                Ok(())
            })?;
            (
                stats.median_s,
                format!(
                    "parallel memcpy of {} MiB on {} threads",
                    (n * 4) >> 20,
                    rayon::current_num_threads()
                ),
            )
        }
        // cuMemcpyDtoD between two preallocated buffers (Tensor::assign of contiguous tensors).
        Device::Cuda(_) | Device::Emu => {
            let src = Tensor::zeros(&[n], DType::F32, dev)?;
            let dst = Tensor::zeros(&[n], DType::F32, dev)?;
            let stats = measure(clock, None, budget_s, |_| dst.assign(&src))?;
            (
                stats.median_s,
                format!("device-to-device copy of {} MiB", (n * 4) >> 20),
            )
        }
    };
    let mut peaks = Vec::new();
    for &dtype in dtypes {
        peaks.push(match dev {
            Device::Emu => Peak {
                dtype: dtype.as_str().into(),
                tflops: None,
                source: "none on Emu (the emulator's speed says nothing about a GPU)".into(),
            },
            _ => peak(dev, clock, dtype, budget_s)?,
        });
    }
    Ok(Roofline {
        copy_gbs: 2.0 * (n * 4) as f64 / seconds / 1e9,
        copy,
        peaks,
    })
}

/// The best matmul rate at the peak size: the library's, and on the CPU also kiln's own (which
/// docs/perf.md measured at NumPy/OpenBLAS's level on this kind of machine; the faster sets the
/// ceiling). `source` says which and why a library is missing.
fn peak(dev: &Device, clock: &Clock, dtype: DType, budget_s: f64) -> Result<Peak> {
    let s = peak_size(dev);
    let setup = Setup {
        dev: *dev,
        dims: &[s, s, s],
        rotate_bytes: 0,
    };
    let mut rng = Rng::new(7);
    let mut candidates = Vec::new();
    let mut missing = None;
    match library::gemm(&setup, &mut rng, dtype) {
        Ok((name, work)) if *dev == Device::Cpu => {
            let path = std::path::Path::new(library::cblas_file().unwrap_or_default());
            let file = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            candidates.push((format!("{name} {file}"), work))
        }
        Ok(found) => candidates.push(found),
        Err(why) => missing = Some(why.to_string()),
    }
    if *dev == Device::Cpu {
        candidates.push(("kiln matmul".into(), super::cases::matmul(&setup, &mut rng, dtype)?));
    }
    let mut best: Option<(f64, String)> = None;
    let mut measured = Vec::new();
    for (name, mut work) in candidates {
        let stats = measure(clock, None, budget_s, |i| (work.run)(i))?;
        let tflops = work.flops / stats.median_s / 1e12;
        measured.push(format!("{name} {tflops:.3}"));
        if best.as_ref().is_none_or(|b| tflops > b.0) {
            best = Some((tflops, name));
        }
    }
    let mut source = match &best {
        Some((_, name)) => format!("{name} at {s}x{s}x{s}; measured TFLOP/s: {}", measured.join(", ")),
        None => String::new(),
    };
    if let Some(why) = missing {
        source = if source.is_empty() {
            why
        } else {
            format!("{source}; {why}")
        };
    }
    Ok(Peak {
        dtype: dtype.as_str().into(),
        tflops: best.map(|b| b.0),
        source,
    })
}
