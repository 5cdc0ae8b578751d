//! The ceilings every result is held against, measured in the same run, each at its fastest call
//! (a ceiling is what the machine can do, so its best showing):
//!
//! - **compute-bound rows**: the arithmetic rate of the best matmul on the device (the library's,
//!   and on the CPU also kiln's own) at a large square size, for the row's dtype;
//! - **memory-bound rows**: a stream of the row's own bytes ([`stream`]): as many bytes read and
//!   written as the row counts, over the same number of rotated input sets, so the ceiling's data
//!   sits where the row's does: a row whose inputs fit in a cache is held against that cache's
//!   speed, a row whose inputs do not against the memory's. On the CPU the stream is a parallel
//!   vectorised sum of the reads that writes over the lines it has just read (the least traffic
//!   that moves those bytes); on a GPU a device-to-device copy of the same total.
//!
//! Where the row's own fastest call beats its ceiling's (the stream or the matmul fell short of what
//! the machine did), the row's fastest call is the ceiling, and the report says so
//! (`ceiling_from`: "row"): a ceiling is the fastest rate seen for that work.
//!
//! Either ceiling is timed in alternation with the row ([`measure_beside`](super::timing::measure_beside)),
//! so both see the same load. For reference the report also gives the bandwidth of one large copy
//! (DRAM on the CPU, HBM on a GPU).

use super::cases::{Bound, Setup};
use super::library;
use super::timing::{measure, Clock};
use super::work::Work;
use crate::backend::cpu::alloc;
use crate::backend::cpu::vectorise::vectorised;
use crate::{DType, Device, Error, Result, Rng, Tensor};
use rayon::prelude::*;

/// How the rows' ceilings are chosen, as the report prints it.
pub const METHOD: &str = "%roof: compute-bound rows over the best matmul rate measured in their dtype; \
memory-bound rows over a stream of their own bytes (same reads and writes, same rotated input sets, so \
cache-resident when the row is), timed alternately with the row; ceilings at their fastest call (the row's own \
fastest call where that was faster, marked *), rows at their median";

/// The measured ceilings of one device.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Roofline {
    /// Copy bandwidth in GB/s (10⁹ bytes per second, read + written).
    pub copy_gbs: f64,
    /// How the copy was made and its size.
    pub copy: String,
    /// The best matmul rate per dtype.
    pub peaks: Vec<Peak>,
    /// How each row's ceiling is chosen ([`METHOD`]).
    pub method: &'static str,
}

/// The work behind the compute ceilings (the best matmul per dtype), kept to be timed beside each
/// compute-bound row.
pub struct Ceilings {
    peaks: Vec<(DType, Work)>,
}

impl Ceilings {
    /// The ceiling to time beside a row of `bound` and `dtype` whose work is `work`: the best matmul
    /// in `dtype` (None if none was measured), or a stream of the row's bytes. None on Emu.
    pub fn for_row(&mut self, dev: &Device, bound: Bound, dtype: DType, work: &Work) -> Result<Option<Ceiling<'_>>> {
        if *dev == Device::Emu {
            return Ok(None);
        }
        Ok(match bound {
            Bound::Compute => self
                .peaks
                .iter_mut()
                .find(|(d, _)| *d == dtype)
                .map(|(_, w)| Ceiling::Peak(w)),
            Bound::Memory => Some(Ceiling::Stream(stream(
                dev,
                work.bytes - work.written,
                work.written,
                work.sets,
                Pages::Base,
            )?)),
        })
    }
}

/// A row's ceiling: the matmul that sets its dtype's peak, or a stream of its bytes.
pub enum Ceiling<'a> {
    Peak(&'a mut Work),
    Stream(Work),
}

impl Ceiling<'_> {
    pub fn work(&mut self) -> &mut Work {
        match self {
            Ceiling::Peak(w) => w,
            Ceiling::Stream(w) => w,
        }
    }

    /// The ceiling's rate at `seconds` a call, in the row's unit: FLOP/s for a matmul, bytes/s for
    /// a stream.
    pub fn rate(&mut self, seconds: f64) -> f64 {
        let w = self.work();
        if w.flops > 0.0 {
            w.flops / seconds
        } else {
            w.bytes / seconds
        }
    }
}

/// Elements summed or filled by one task of the CPU stream: 64 KiB, so that a small stream runs on
/// one thread and a large one on all.
const STREAM_CHUNK: usize = 16 << 10;

/// The sum of `x` in 32 independent lanes: four AVX2 vectors of adds in flight, a read at full
/// speed (inlined into [`vectorised`] as kiln's own CPU loops are).
#[inline(always)]
fn sum_lanes(x: &[f32]) -> f32 {
    let mut acc = [0f32; 32];
    let chunks = x.chunks_exact(32);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The pages a CPU stream's buffers lie in: those of the buffers whose traffic it bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pages {
    /// The allocator's usual pages (4 KiB on Linux), as an op's inputs and outputs.
    Base,
    /// Huge pages where the OS has them, as weights laid out for decoding (`Tensor::packed`).
    Huge,
}

/// A stream that reads `read` bytes (from one of `sets` rotated buffers) and writes `written` bytes
/// per call: the memory ceiling of a row that moves those bytes (see the module's comment). On the
/// CPU the writes go first to the lines just read (in place, 64 KiB at a time, so no write misses
/// the cache: the least traffic that moves those bytes), the rest, where more is written than read,
/// to a second buffer. The CPU's buffers lie in `pages`.
pub fn stream(dev: &Device, read: f64, written: f64, sets: usize, pages: Pages) -> Result<Work> {
    let sets = sets.max(1);
    let (r, w) = ((read / 4.0).ceil() as usize, (written / 4.0).ceil() as usize);
    let run: Box<dyn FnMut(usize) -> Result<()>> = match dev {
        Device::Cpu => {
            let (in_place, rest) = (w.min(r), w - w.min(r));
            let zeros = |n: usize| match pages {
                Pages::Base => alloc::filled("bench", n, 0f32),
                Pages::Huge => alloc::filled_in_huge_pages("bench", n, 0f32),
            };
            let mut src: Vec<Vec<f32>> = (0..sets)
                .map(|s| {
                    let mut v = zeros(r)?;
                    v.par_iter_mut()
                        .enumerate()
                        .for_each(|(i, x)| *x = ((i + s) % 7) as f32);
                    Ok(v)
                })
                .collect::<Result<_>>()?;
            let mut dst = zeros(rest)?;
            Box::new(move |i| {
                let total: f32 = src[i % sets]
                    .par_chunks_mut(STREAM_CHUNK)
                    .map(|c| {
                        vectorised(|| {
                            let sum = sum_lanes(c);
                            // this chunk's share of the writes; the values stay small
                            let k = (c.len() * in_place).div_ceil(r).min(c.len());
                            c[..k].fill(sum.min(1.0));
                            sum
                        })
                    })
                    .sum();
                dst.par_chunks_mut(STREAM_CHUNK)
                    .for_each(|c| vectorised(|| c.fill(total.min(1.0))));
                Ok(())
            })
        }
        // A copy reads and writes the same bytes: half the row's total each way.
        Device::Cuda(_) => {
            let half = (r + w).div_ceil(2).max(1);
            let src = (0..sets)
                .map(|_| Tensor::zeros(&[half], DType::F32, dev))
                .collect::<Result<Vec<_>>>()?;
            let dst = Tensor::zeros(&[half], DType::F32, dev)?;
            Box::new(move |i| dst.assign(&src[i % sets]))
        }
        Device::Emu => return Err(Error::invalid("bench", "no ceilings on Emu".to_string())),
    };
    Ok(Work {
        flops: 0.0,
        bytes: read + written,
        written,
        sets,
        run,
        check: None,
    })
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
) -> Result<(Roofline, Ceilings)> {
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
                stats.min_s,
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
            (stats.min_s, format!("device-to-device copy of {} MiB", (n * 4) >> 20))
        }
    };
    let (mut peaks, mut works) = (Vec::new(), Vec::new());
    for &dtype in dtypes {
        peaks.push(match dev {
            Device::Emu => Peak {
                dtype: dtype.as_str().into(),
                tflops: None,
                source: "none on Emu (the emulator's speed says nothing about a GPU)".into(),
            },
            _ => {
                let (p, work) = peak(dev, clock, dtype, budget_s)?;
                works.extend(work.map(|w| (dtype, w)));
                p
            }
        });
    }
    let roofline = Roofline {
        copy_gbs: 2.0 * (n * 4) as f64 / seconds / 1e9,
        copy,
        peaks,
        method: METHOD,
    };
    Ok((roofline, Ceilings { peaks: works }))
}

/// The best matmul rate at the peak size, at its fastest call: the library's, and on the CPU also
/// kiln's own (which docs/perf.md measured at NumPy/OpenBLAS's level on this kind of machine; the
/// faster sets the ceiling), with the faster one's work. `source` says which and why a library is
/// missing.
fn peak(dev: &Device, clock: &Clock, dtype: DType, budget_s: f64) -> Result<(Peak, Option<Work>)> {
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
    let mut best: Option<(f64, String, Work)> = None;
    let mut measured = Vec::new();
    for (name, mut work) in candidates {
        let stats = measure(clock, None, budget_s, |i| (work.run)(i))?;
        let tflops = work.flops / stats.min_s / 1e12;
        measured.push(format!("{name} {tflops:.3}"));
        if best.as_ref().is_none_or(|b| tflops > b.0) {
            best = Some((tflops, name, work));
        }
    }
    let mut source = match &best {
        Some((_, name, _)) => format!(
            "{name} at {s}x{s}x{s}, fastest call; measured TFLOP/s: {}",
            measured.join(", ")
        ),
        None => String::new(),
    };
    if let Some(why) = missing {
        source = if source.is_empty() {
            why
        } else {
            format!("{source}; {why}")
        };
    }
    let (tflops, work) = best.map(|(t, _, w)| (t, w)).unzip();
    let peak = Peak {
        dtype: dtype.as_str().into(),
        tflops,
        source,
    };
    Ok((peak, work))
}
