//! The portable micro-kernel, for CPUs without AVX2 or AVX-512 (and every non-x86 target).

use super::kernel::Kernel;
use super::matrix::{Element, Epilogue, MatMut, MatRef};
use super::pack::{pack_a, pack_b};
use std::marker::PhantomData;

/// The portable micro-kernel: an `MR×NR` accumulator array the compiler vectorises with
/// whatever SIMD the target has (4×8 f32 / 4×4 f64 fit SSE2's and NEON's registers).
pub(super) struct Portable<T, const MR: usize, const NR: usize>(PhantomData<T>);

impl<T: Element, const MR: usize, const NR: usize> Kernel for Portable<T, MR, NR> {
    type T = T;
    const MR: usize = MR;
    const NR: usize = NR;
    const KC: usize = 256;
    const NC: usize = 512;

    unsafe fn tile(kc: usize, a: *const T, b: *const T, c: MatMut<T>, mr: usize, nr: usize, ep: &Epilogue<T>) {
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
                for (acc_ij, &b_pj) in acc_i.iter_mut().zip(b_p) {
                    *acc_ij = *acc_ij + a_ip * b_pj;
                }
            }
        }
        for (i, acc_i) in acc.iter().enumerate().take(mr) {
            for (j, &acc_ij) in acc_i.iter().enumerate().take(nr) {
                // SAFETY: (i, j) is inside the mr×nr tile of C (caller's contract).
                let cij = unsafe { &mut *c.at(i, j).ptr };
                *cij = if ep.beta == T::ZERO {
                    ep.alpha * acc_ij
                } else {
                    ep.alpha * acc_ij + ep.beta * *cij
                };
            }
        }
    }

    unsafe fn pack_a(mr: usize, kc: usize, a: MatRef<T>, dst: &mut [T]) {
        // SAFETY: forwarded contract.
        unsafe { pack_a::<Self>(mr, kc, a, dst) }
    }

    unsafe fn pack_b(kc: usize, nc: usize, b: MatRef<T>, dst: &mut [T]) {
        // SAFETY: forwarded contract.
        unsafe { pack_b::<Self>(kc, nc, b, dst) }
    }
}
