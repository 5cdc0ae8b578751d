//! Rotary position embedding on the CPU: every pair of a head's elements rotated by the angle
//! position·θᵢ (or by its negative, the backward). x is contiguous `[batch, seq, heads, head_dim]`;
//! `RopeSpec` (backend/mod.rs) holds the rest.
//! The angles and their sines and cosines are computed once per (position, frequency), in the
//! arithmetic type (f32 for f32/bf16/f16, f64 for f64), as the kernel does. A decode step rotates
//! the queries and keys of every layer at one position: each thread keeps its last table of one
//! position, so the 2 × 30 rotations of a SmolLM2 token compute theirs once (a table of 32
//! frequencies, each a `powf` and a `sin_cos`, took most of a rotation's 1.4 µs).

use super::{acc, alloc, dispatch_float, inlined, typed, vectorised, CpuFloat, PARALLEL_MIN};
use crate::backend::cpu::CpuStorage;
use crate::backend::op::{RopeLayout, RopeSpec};
use crate::Result;
use num_traits::Float;
use rayon::prelude::*;
use smallvec::SmallVec;
use std::any::{Any, TypeId};
use std::cell::RefCell;

/// `(cos, ±sin)` of position offset + t and frequency i at `[t * half + i]`; inline (no heap) for
/// a decode step's one position of up to 128-wide heads.
type Table<A> = SmallVec<[(A, A); 64]>;

/// What a table depends on.
#[derive(Clone, Copy, PartialEq)]
struct TableKey {
    arithmetic: TypeId,
    base: u64,
    head_dim: usize,
    position_offset: usize,
    seq: usize,
    inverse: bool,
}

thread_local! {
    /// This thread's last table of one position and its key.
    static LAST: RefCell<Option<(TableKey, Box<dyn Any>)>> = const { RefCell::new(None) };
}

/// The table of `spec` in `A`: this thread's last one if it has the same key, else computed (and
/// kept, if it is of one position).
fn table<A: Float + 'static>(spec: &RopeSpec, inverse: bool, acc: impl Fn(f64) -> A) -> Table<A> {
    let key = TableKey {
        arithmetic: TypeId::of::<A>(),
        base: spec.base.to_bits(),
        head_dim: spec.head_dim,
        position_offset: spec.position_offset,
        seq: spec.seq,
        inverse,
    };
    let kept = |(k, t): &(TableKey, Box<dyn Any>)| (*k == key).then(|| t.downcast_ref::<Table<A>>()).flatten().cloned();
    if let Some(t) = LAST.with_borrow(|last| last.as_ref().and_then(kept)) {
        return t;
    }
    let half = spec.head_dim / 2;
    let table: Table<A> = (0..spec.seq * half)
        .map(|k| {
            let angle = acc((spec.position_offset + k / half) as f64) * acc(spec.frequency(k % half));
            let (sin, cos) = angle.sin_cos();
            (cos, if inverse { -sin } else { sin })
        })
        .collect();
    if spec.seq == 1 && !table.spilled() {
        LAST.with_borrow_mut(|last| match last {
            // the box of the last table reused: a decode step allocates nothing
            Some((k, t)) if t.is::<Table<A>>() => {
                *k = key;
                t.downcast_mut::<Table<A>>().expect("checked").clone_from(&table);
            }
            _ => *last = Some((key, Box::new(table.clone()))),
        });
    }
    table
}

/// x rotated by +θ (`inverse` false) or −θ.
pub fn rope(x: &CpuStorage, spec: &RopeSpec, inverse: bool) -> Result<CpuStorage> {
    fn run<T: CpuFloat>(x: &CpuStorage, spec: &RopeSpec, inverse: bool) -> Result<CpuStorage>
    where
        T::Acc: 'static,
    {
        let x = typed::<T>(x);
        let (d, half) = (spec.head_dim, spec.head_dim / 2);
        let table = table(spec, inverse, acc::<T>);
        let mut y = alloc::filled("rope", x.len(), T::from_f64(0.0))?;
        if !x.is_empty() {
            // one [heads, head_dim] slab per (batch, position)
            let slab = spec.heads * d;
            // the pair (u, v) of a head rotated by (cos, sin): (u·cos − v·sin, v·cos + u·sin)
            #[inline(always)]
            fn turn<T: CpuFloat>(u: T, v: T, (cos, sin): (T::Acc, T::Acc)) -> (T, T) {
                let (u, v) = (u.up(), v.up());
                (T::down(u * cos - v * sin), T::down(v * cos + u * sin))
            }
            let rotate = inlined(
                #[inline(always)]
                |(k, (xs, ys)): (usize, (&[T], &mut [T]))| {
                    let t = k % spec.seq;
                    let angles = &table[t * half..(t + 1) * half];
                    for (xr, yr) in xs.chunks(d).zip(ys.chunks_mut(d)) {
                        match spec.layout {
                            // pairs (i, i + half): two contiguous runs, a loop that vectorises
                            RopeLayout::Half => {
                                let ((x1, x2), (y1, y2)) = (xr.split_at(half), yr.split_at_mut(half));
                                let pairs = x1.iter().zip(x2).zip(y1.iter_mut().zip(y2));
                                for (((&u, &v), (ya, yb)), &angle) in pairs.zip(angles) {
                                    (*ya, *yb) = turn(u, v, angle);
                                }
                            }
                            RopeLayout::Interleaved => {
                                let pairs = xr.chunks_exact(2).zip(yr.chunks_exact_mut(2));
                                for ((xp, yp), &angle) in pairs.zip(angles) {
                                    (yp[0], yp[1]) = turn(xp[0], xp[1], angle);
                                }
                            }
                        }
                    }
                },
            );
            if x.len() >= PARALLEL_MIN {
                x.par_chunks(slab)
                    .zip(y.par_chunks_mut(slab))
                    .enumerate()
                    .for_each(|job| {
                        vectorised(inlined(
                            #[inline(always)]
                            || rotate(job),
                        ))
                    });
            } else {
                vectorised(inlined(
                    #[inline(always)]
                    || x.chunks(slab).zip(y.chunks_mut(slab)).enumerate().for_each(rotate),
                ));
            }
        }
        Ok(CpuStorage::from_vec(y))
    }
    dispatch_float!("rope", x.dtype(), run(x, spec, inverse))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::dtype::WithDType;

    /// x rotated with this thread's kept table, and with none kept: the same bits.
    fn kept_and_fresh<T: WithDType>(x: &CpuStorage, spec: &RopeSpec, inverse: bool) -> (Vec<T>, Vec<T>) {
        let kept = rope(x, spec, inverse).unwrap();
        LAST.set(None);
        let fresh = rope(x, spec, inverse).unwrap();
        let v = |s: &CpuStorage| s.as_slice::<T>().unwrap().to_vec();
        (v(&kept), v(&fresh))
    }

    /// Decode-sized rotations one after another on one thread: each reuses the kept table only
    /// when every input of the table is the same (position, base, head width, direction, type);
    /// a stale table would rotate by other angles.
    #[test]
    fn a_kept_table_is_used_only_for_the_same_rotation() {
        let spec = |position_offset, base, head_dim| RopeSpec {
            seq: 1,
            heads: 3,
            head_dim,
            position_offset,
            base,
            layout: RopeLayout::Half,
        };
        let mut rng = crate::Rng::new(5);
        let x32: Vec<f32> = (0..3 * 16).map(|_| rng.normal() as f32).collect();
        let x64: Vec<f64> = x32.iter().map(|&v| f64::from(v)).collect();
        let (x32, x64) = (CpuStorage::from_vec(x32), CpuStorage::from_vec(x64));
        let steps = [
            (spec(5, 1e4, 16), false),
            (spec(5, 1e4, 16), false),
            (spec(6, 1e4, 16), false),
            (spec(6, 1e5, 16), false),
            (spec(6, 1e5, 16), true),
            (spec(6, 1e5, 8), true),
        ];
        // each type's steps in a row: a table of the other type would never be taken
        for (spec, inverse) in steps {
            let (kept, fresh) = kept_and_fresh::<f32>(&x32, &spec, inverse);
            assert_eq!(kept, fresh, "f32 {spec:?} inverse {inverse}");
        }
        for (spec, inverse) in steps {
            let (kept, fresh) = kept_and_fresh::<f64>(&x64, &spec, inverse);
            assert_eq!(kept, fresh, "f64 {spec:?} inverse {inverse}");
        }
    }
}
