//! Rotary position embedding on the CPU: every pair of a head's elements rotated by the angle
//! position·θᵢ (or by its negative, the backward). x is contiguous `[batch, seq, heads, head_dim]`;
//! `RopeSpec` (backend/mod.rs) holds the rest.
//! The angles and their sines and cosines are computed once per (position, frequency), in the
//! arithmetic type (f32 for f32/bf16/f16, f64 for f64), as the kernel does.

use super::{acc, alloc, dispatch_float, typed, CpuFloat, PARALLEL_MIN};
use crate::backend::cpu::CpuStorage;
use crate::backend::op::{RopeLayout, RopeSpec};
use crate::Result;
use num_traits::Float;
use rayon::prelude::*;
use smallvec::SmallVec;

/// x rotated by +θ (`inverse` false) or −θ.
pub fn rope(x: &CpuStorage, spec: &RopeSpec, inverse: bool) -> Result<CpuStorage> {
    fn run<T: CpuFloat>(x: &CpuStorage, spec: &RopeSpec, inverse: bool) -> Result<CpuStorage> {
        let x = typed::<T>(x);
        let (d, half) = (spec.head_dim, spec.head_dim / 2);
        // (cos, ±sin) of position offset + t and frequency i at [t * half + i]; inline (no heap)
        // for a decode step's one position of up to 128-wide heads
        let table: SmallVec<[(T::Acc, T::Acc); 64]> = (0..spec.seq * half)
            .map(|k| {
                let angle = acc::<T>((spec.position_offset + k / half) as f64) * acc::<T>(spec.frequency(k % half));
                let (sin, cos) = angle.sin_cos();
                (cos, if inverse { -sin } else { sin })
            })
            .collect();
        let mut y = alloc::filled("rope", x.len(), T::from_f64(0.0))?;
        if !x.is_empty() {
            // one [heads, head_dim] slab per (batch, position)
            let slab = spec.heads * d;
            let rotate = |(k, (xs, ys)): (usize, (&[T], &mut [T]))| {
                let t = k % spec.seq;
                let angles = &table[t * half..(t + 1) * half];
                for (xr, yr) in xs.chunks(d).zip(ys.chunks_mut(d)) {
                    for (i, &(cos, sin)) in angles.iter().enumerate() {
                        let (a, b) = match spec.layout {
                            RopeLayout::Half => (i, i + half),
                            RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                        };
                        let (u, v) = (xr[a].up(), xr[b].up());
                        yr[a] = T::down(u * cos - v * sin);
                        yr[b] = T::down(v * cos + u * sin);
                    }
                }
            };
            if x.len() >= PARALLEL_MIN {
                x.par_chunks(slab)
                    .zip(y.par_chunks_mut(slab))
                    .enumerate()
                    .for_each(rotate);
            } else {
                x.chunks(slab).zip(y.chunks_mut(slab)).enumerate().for_each(rotate);
            }
        }
        Ok(CpuStorage::from_vec(y))
    }
    dispatch_float!("rope", x.dtype(), run(x, spec, inverse))
}
