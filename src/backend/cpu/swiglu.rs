//! SwiGLU, Llama's gated feed-forward activation, fused: y = silu(gate)·up elementwise, and its
//! backward dgate = dy·up·silu'(gate), dup = dy·silu(gate) in one pass over the three operands.
//! Arithmetic in f32 for f32/bf16/f16, f64 for f64; one rounding per output.

use super::{dispatch_float, typed, vectorised, zip_map, CpuFloat, PARALLEL_MIN};
use crate::backend::cpu::CpuStorage;
use crate::backend::op::unary::{silu, silu_derivative};
use crate::tensor::layout::Layout;
use crate::{Error, Result};
use rayon::prelude::*;

const OP: &str = "swiglu";

/// silu(gate)·up over two views of one shape; the result is contiguous.
pub fn swiglu_forward(gate: &CpuStorage, lg: &Layout, up: &CpuStorage, lu: &Layout) -> Result<CpuStorage> {
    fn run<T: CpuFloat>(gate: &CpuStorage, lg: &Layout, up: &CpuStorage, lu: &Layout) -> Result<CpuStorage> {
        let y = zip_map(
            OP,
            typed::<T>(gate),
            lg,
            typed::<T>(up),
            lu,
            #[inline(always)]
            |g: T, u: T| T::down(silu(g.up()) * u.up()),
        )?;
        Ok(CpuStorage::from_vec(y))
    }
    if gate.dtype() != up.dtype() {
        return Err(Error::dtype_mismatch(OP, gate.dtype(), up.dtype()));
    }
    dispatch_float!(OP, gate.dtype(), run(gate, lg, up, lu))
}

/// (dgate, dup) from the contiguous gate, up and incoming gradient dy (one length).
pub fn swiglu_backward(gate: &CpuStorage, up: &CpuStorage, dy: &CpuStorage) -> Result<(CpuStorage, CpuStorage)> {
    fn run<T: CpuFloat>(gate: &CpuStorage, up: &CpuStorage, dy: &CpuStorage) -> (CpuStorage, CpuStorage) {
        let (gate, up, dy) = (typed::<T>(gate), typed::<T>(up), typed::<T>(dy));
        let n = gate.len();
        let (mut dgate, mut dup) = (vec![T::from_f64(0.0); n], vec![T::from_f64(0.0); n]);
        const CHUNK: usize = 1 << 14;
        if n >= PARALLEL_MIN {
            gate.par_chunks(CHUNK)
                .zip(up.par_chunks(CHUNK))
                .zip(dy.par_chunks(CHUNK))
                .zip(dgate.par_chunks_mut(CHUNK).zip(dup.par_chunks_mut(CHUNK)))
                .for_each(|(((g, u), d), (dg, du))| backward_piece(g, u, d, dg, du));
        } else {
            backward_piece(gate, up, dy, &mut dgate, &mut dup);
        }
        (CpuStorage::from_vec(dgate), CpuStorage::from_vec(dup))
    }
    for other in [up, dy] {
        if other.dtype() != gate.dtype() {
            return Err(Error::dtype_mismatch("swiglu backward", gate.dtype(), other.dtype()));
        }
    }
    Ok(dispatch_float!("swiglu backward", gate.dtype(), run(gate, up, dy)))
}

/// One piece of the backward: (gate, up, dy) in, (dgate, dup) out, a loop over slices that vectorises.
fn backward_piece<T: CpuFloat>(gate: &[T], up: &[T], dy: &[T], dgate: &mut [T], dup: &mut [T]) {
    vectorised(
        #[inline(always)]
        || {
            for ((((g, u), d), dg), du) in gate.iter().zip(up).zip(dy).zip(dgate.iter_mut()).zip(dup.iter_mut()) {
                let (g, u, d) = (g.up(), u.up(), d.up());
                *dg = T::down(d * u * silu_derivative(g));
                *du = T::down(d * silu(g));
            }
        },
    )
}
