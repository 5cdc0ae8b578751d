//! The portable micro-kernel, for CPUs without AVX2 or AVX-512 (and every non-x86 target).

use super::kernel::Kernel;
use super::matrix::{Element, Epilogue, MatMut, MatRef, Operand};
use super::pack::{pack_a, pack_b};
use std::marker::PhantomData;

/// The portable micro-kernel: an `MR×NR` accumulator array the compiler vectorises with
/// whatever SIMD the target has (4×8 f32 / 4×4 f64 fit SSE2's and NEON's registers). Operands
/// of type `I` (bf16 for [`super::bgemm`] on CPUs without AVX-512 BF16) are widened to `T` as
/// they are read from the packed panels.
pub(super) struct Portable<T, const MR: usize, const NR: usize, I = T>(PhantomData<(T, I)>);

impl<T: Element, I: Operand<T>, const MR: usize, const NR: usize> Kernel for Portable<T, MR, NR, I> {
    type T = T;
    type In = I;
    const MR: usize = MR;
    const NR: usize = NR;
    const KC: usize = 256;
    const NC: usize = 512;
    const K_STEP: usize = 1;

    unsafe fn tile(kc: usize, a: *const I, b: *const I, c: MatMut<T>, mr: usize, nr: usize, ep: &Epilogue<T>) {
        // SAFETY: the packed panels hold kc·MR and kc·NR elements (caller's contract).
        let (a, b) = unsafe {
            (
                std::slice::from_raw_parts(a, kc * MR),
                std::slice::from_raw_parts(b, kc * NR),
            )
        };
        let mut acc = [[T::ZERO; NR]; MR];
        for (a_p, b_p) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
            for (acc_i, &a_ip) in acc.iter_mut().zip(a_p) {
                let a_ip = a_ip.widen();
                for (acc_ij, &b_pj) in acc_i.iter_mut().zip(b_p) {
                    *acc_ij = *acc_ij + a_ip * b_pj.widen();
                }
            }
        }
        for (i, acc_i) in acc.iter().enumerate().take(mr) {
            for (j, &acc_ij) in acc_i.iter().enumerate().take(nr) {
                // SAFETY: (i, j) is inside the mr×nr tile of C (caller's contract).
                unsafe { ep.store(c.at(i, j).ptr, acc_ij) };
            }
        }
    }

    unsafe fn pack_a(mr: usize, kc: usize, a: MatRef<I>, dst: &mut [I]) {
        // SAFETY: forwarded contract.
        unsafe { pack_a::<Self>(mr, kc, a, dst) }
    }

    unsafe fn pack_b(kc: usize, nc: usize, b: MatRef<I>, dst: &mut [I]) {
        // SAFETY: forwarded contract.
        unsafe { pack_b::<Self>(kc, nc, b, dst) }
    }
}
