//! Fused scaled-dot-product attention on the CPU, forward and backward, one head per task.
//!
//! For one head (q `[tq, d]`, k and v `[tk, d]`, scale s = 1/√d) and a tile of up to `TILE`
//! query rows at a time:
//!
//! ```text
//! forward:  S = s·Q·Kᵀ            [rows, keys]   GEMM into a per-thread scratch tile
//!           lse = max + log Σ exp(S − max)   per row, over the keys the row sees
//!           P = exp(S − lse)                  in place (0 where masked)
//!           O = P·V               [rows, d]      GEMM straight into the output
//! backward: P = exp(s·Q·Kᵀ − lse)             recomputed from the saved lse
//!           dP = dO·Vᵀ,  Dᵢ = Σ dOᵢ∘Oᵢ,  dS = P∘(dP − D)
//!           dQ = s·dS·K,  dK += s·dSᵀ·Q,  dV += Pᵀ·dO
//! ```
//!
//! Causal: query i sits at absolute position tk − tq + i and sees keys 0..=tk − tq + i, so a
//! tile only multiplies against the keys its last row sees (the tiles of later keys are never
//! touched) and the few masked scores inside that range become 0. Heads run in parallel with
//! rayon (in decode, only when the keys and values read total `SERIAL_KV_BYTES` or more; below,
//! on the calling thread); each owns its slices of every output, and dK/dV accumulate over query tiles in a
//! fixed order, so results are deterministic. Grouped-query attention: query head h reads
//! key/value head h / group in place; in decode (one query row per head) the forward takes up to
//! `STREAM_MAX_M` query heads of a group as the rows of one product, so that their key/value head
//! is read once, not once per query head (each row's result is the same as alone), and past
//! `DECODE_CHUNK_ELEMENTS` a head's keys are cut into chunks, one job each, whose partial softmax
//! sums are combined afterwards (`forward_split`, "flash decoding"), so that a few key/value
//! heads still make enough jobs for the threads to finish together. The backward runs one job per
//! key/value head, which takes its group's query heads one after another, so dK/dV sum over the
//! group in a fixed order too. The only memory besides the outputs is a `TILE × tk` score tile per
//! thread (the forward's, kept between calls; a split decode's partial sums besides) or one or two
//! per rayon job (the backward's). The GEMMs are the project's ([`super::gemm`]);
//! BF16/F16 are computed in f32 (lse in f32), f64 in f64. A bf16 or f16 decode's (at most
//! `STREAM_MAX_M` query rows) K and V are read in place by the streamed products (a KV cache's
//! whole buffers were widened at every token before). Other bf16 attention, where the CPU has
//! `vdpbf16ps` or AMX, reads q, k, v, o and dO in place and multiplies in bf16 ([`gemm::bgemm`],
//! f32 sums): the scores, the softmax, dP and dS are f32, and P and dS are rounded to bf16 for the
//! products that take them, as PyTorch's CPU flash attention rounds them (`Operand`). Otherwise
//! (f16, or a CPU without them) the operands are widened to f32 for the f32 products.

use super::gemm;
use super::matmul::{Gemm, GemmInto};
use super::{alloc, float, inlined, lane_fold, lane_fold_of, lane_sum, pool, vectorised};
use crate::backend::cpu::CpuStorage;
use crate::backend::op::exp::Exp;
use crate::backend::op::AttentionDims;
use crate::tensor::dtype::{DType, WithDType};
use crate::tensor::layout::Layout;
use crate::{Error, Result};
use half::bf16;
use rayon::prelude::*;
use std::cell::Cell;
use std::mem::MaybeUninit;
use std::thread::LocalKey;

/// Query rows per GEMM tile: big enough for the GEMM to reach speed, small enough that the
/// score tile (`TILE × tk`) stays in L2 for GPT-2's 1024 positions.
const TILE: usize = 64;

/// Bytes of K and V below which a decode step's heads (at most [`gemm::STREAM_MAX_M`] query rows)
/// run one after the other on the calling thread rather than in parallel: SmolLM2-135M's bf16
/// cache (3 key/value heads of 64) up to 85 positions, its f32 cache up to 42, GPT-2's f32 cache
/// (12 heads) up to 10. With the pool's other workers kept awake through a generation (`awake.rs`)
/// a parallel region costs about 2 µs, and the cache comes from memory (a token's weights stream
/// through the caches in between), so two threads read it faster than one. SmolLM2's decode,
/// same process, alternated (docs/perf.md): at 128–308 positions tokens 2.6–3.0% shorter in bf16
/// than with the 256 KiB before (the streamed products' rule, which counted a fork-join that wakes
/// a sleeping worker, 5–10 µs); at 16–136 positions no difference beyond the runs' ±2%, where a
/// limit of 16 KiB was 0.3–4% slower in bf16.
const SERIAL_KV_BYTES: usize = 64 << 10;

/// Elements of K (and as many of V) one decode job reads at most: past them, a key/value head's
/// keys are cut into chunks of `DECODE_CHUNK_ELEMENTS / d` keys, one job each ([`forward_split`]):
/// 128 positions of a head of 64, 64 KiB of an f32 cache, 32 KiB of a bf16 one (in keys, not bytes,
/// so that a bf16 cache read in place splits as its widened copy does, and gives the same bits).
/// SmolLM2-135M has 3 key/value heads: whole heads as jobs on 2 threads leave one thread a head's
/// reading to wait out at every layer, and from about 128 positions (a job of some 30 µs) the
/// waiting thread falls asleep in rayon and is woken through the kernel: 52 context switches a
/// token at 300–500 positions against 13 at 16–200 (perf stat, Intel Xeon, docs/perf-log.md). Chunks
/// keep the jobs a few microseconds long and many, so the threads finish together.
const DECODE_CHUNK_ELEMENTS: usize = 8192;

/// The fewest elements a thread's score scratch holds once used: one query row against 4096 keys,
/// or a tile of [`TILE`] rows against 64 (16 KiB in f32).
const MIN_SCORES: usize = 4096;

/// The two element types the fused loops run in, with their GEMM (and its form into a new,
/// uninitialised output) and each thread's score tile.
trait Real: Exp + WithDType + Default + Send + Sync + 'static {
    const GEMM: Gemm<Self>;
    const GEMM_INTO: GemmInto<Self>;
    /// This thread's scratch for a score tile, kept between calls so that a decode step allocates
    /// none (it holds up to `TILE × tk` elements per thread, the longest context attended so far).
    fn scores() -> &'static LocalKey<Cell<Vec<Self>>>;

    /// Runs `f` on this thread's score scratch. The scratch is taken out for the call: a job that
    /// rayon runs on this thread while `f` waits (the GEMM may go parallel) gets an empty one.
    fn with_scores<R>(f: impl FnOnce(&mut Vec<Self>) -> R) -> R {
        let mut scores = Self::scores().take();
        let r = f(&mut scores);
        Self::scores().set(scores);
        r
    }

    /// Runs a forward `job` (an `#[inline(always)]` closure, see [`vectorised`]) on this thread's
    /// score scratch, compiled for the CPU's widest vectors.
    #[inline(always)]
    fn run_job<J>(job: &impl Fn(&mut Vec<Self>, J), j: J) {
        Self::with_scores(|scores| {
            vectorised(
                #[inline(always)]
                || job(scores, j),
            )
        })
    }
}

thread_local! {
    static SCORES_F32: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static SCORES_F64: Cell<Vec<f64>> = const { Cell::new(Vec::new()) };
}

impl Real for f32 {
    const GEMM: Gemm<f32> = gemm::sgemm;
    const GEMM_INTO: GemmInto<f32> = gemm::sgemm_into;
    fn scores() -> &'static LocalKey<Cell<Vec<f32>>> {
        &SCORES_F32
    }
}

impl Real for f64 {
    const GEMM: Gemm<f64> = gemm::dgemm;
    const GEMM_INTO: GemmInto<f64> = gemm::dgemm_into;
    fn scores() -> &'static LocalKey<Cell<Vec<f64>>> {
        &SCORES_F64
    }
}

/// The element type of the products' operands for compute type `E`: `E` itself (f32, f64), or
/// bf16 with f32 compute, where q, k, v, o and dO are read in place in bf16 and the probabilities
/// P and dS, computed in f32, are rounded to bf16 for the products that take them (as PyTorch's
/// CPU flash attention does), so that every product runs on AMX or `vdpbf16ps` ([`gemm::bgemm`]).
/// Only where the CPU has them ([`gemm::has_bf16_dot`]): elsewhere `bgemm` is the portable kernel,
/// and bf16 operands are widened to f32 for the f32 kernels instead.
trait Operand<E: Real>: Copy + Send + Sync + 'static {
    /// The product of two such operands into `E` (`E`'s own GEMM, or [`gemm::bgemm`]).
    const GEMM: Gemm<E, Self, Self>;
    /// [`Self::GEMM`] into a new, uninitialised output.
    const GEMM_INTO: GemmInto<E, Self, Self>;
    /// The value in the compute type (exact).
    fn up(self) -> E;
    /// A tile of P or dS as operands: `tile` itself for `E`, else rounded into `buf`.
    fn operands<'a>(tile: &'a [E], buf: &'a mut Vec<Self>) -> &'a [Self];
}

impl<E: Real> Operand<E> for E {
    const GEMM: Gemm<E> = E::GEMM;
    const GEMM_INTO: GemmInto<E> = E::GEMM_INTO;
    #[inline(always)]
    fn up(self) -> E {
        self
    }
    #[inline(always)]
    fn operands<'a>(tile: &'a [E], _: &'a mut Vec<E>) -> &'a [E] {
        tile
    }
}

impl Operand<f32> for bf16 {
    const GEMM: Gemm<f32, bf16, bf16> = gemm::bgemm;
    const GEMM_INTO: GemmInto<f32, bf16, bf16> = gemm::bgemm_into;
    #[inline(always)]
    fn up(self) -> f32 {
        float::bf16_to_f32(self)
    }
    #[inline(always)]
    fn operands<'a>(tile: &'a [f32], buf: &'a mut Vec<bf16>) -> &'a [bf16] {
        buf.resize(tile.len(), bf16::ZERO);
        for (b, &x) in buf.iter_mut().zip(tile) {
            *b = float::f32_to_bf16(x);
        }
        buf
    }
}

/// Contiguous q `[bh, tq, d]`, k and v `[bh / group, tk, d]` of one dtype (each head's rows
/// `dims.kv_stride` elements after the previous head's: the rows of a KV cache); returns the output
/// `[bh, tq, d]` in that dtype and the log-sum-exp of every query row `[bh, tq]` (f64 for
/// f64, f32 otherwise).
pub fn attention_forward(
    q: &CpuStorage,
    k: &CpuStorage,
    v: &CpuStorage,
    dims: AttentionDims,
) -> Result<(CpuStorage, CpuStorage)> {
    Ok(match (q, k, v) {
        (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => {
            let (o, lse) = forward(q, k, v, dims, <f32 as Real>::GEMM, <f32 as Real>::GEMM_INTO)?;
            (CpuStorage::F32(o), CpuStorage::F32(lse))
        }
        (CpuStorage::F64(q), CpuStorage::F64(k), CpuStorage::F64(v)) => {
            let (o, lse) = forward(q, k, v, dims, <f64 as Real>::GEMM, <f64 as Real>::GEMM_INTO)?;
            (CpuStorage::F64(o), CpuStorage::F64(lse))
        }
        (CpuStorage::BF16(_), CpuStorage::BF16(k), CpuStorage::BF16(v)) if dims.tq <= gemm::STREAM_MAX_M => {
            decode_in_place(q, k, v, dims)?
        }
        (CpuStorage::F16(_), CpuStorage::F16(k), CpuStorage::F16(v)) if dims.tq <= gemm::STREAM_MAX_M => {
            decode_in_place(q, k, v, dims)?
        }
        (CpuStorage::BF16(q), CpuStorage::BF16(k), CpuStorage::BF16(v)) if gemm::has_bf16_dot() => {
            let (o, lse) = forward(q, k, v, dims, gemm::bgemm, gemm::bgemm_into)?;
            (narrow(o, DType::BF16)?, CpuStorage::F32(lse))
        }
        _ => {
            check_half(q, &[k, v])?;
            let (qw, kw, vw) = (widen(q)?, widen(k)?, widen(v)?);
            let (o, lse) = forward(&qw, &kw, &vw, dims, <f32 as Real>::GEMM, <f32 as Real>::GEMM_INTO)?;
            [qw, kw, vw].into_iter().for_each(pool::give_vec);
            (narrow(o, q.dtype())?, CpuStorage::F32(lse))
        }
    })
}

/// A half-precision decode (at most `STREAM_MAX_M` query rows): K and V (a whole KV cache's
/// buffers) read in place, in their dtype, by the streamed products, which widen each element in
/// registers; only q is widened. Returns the output in q's dtype and the lse in f32.
fn decode_in_place<W: gemm::Streamed>(
    q: &CpuStorage,
    k: &[W],
    v: &[W],
    dims: AttentionDims,
) -> Result<(CpuStorage, CpuStorage)> {
    let qw = widen(q)?;
    let (o, lse) = forward(
        &qw,
        k,
        v,
        dims,
        gemm::sgemm_streamed::<W>,
        gemm::sgemm_streamed_into::<W>,
    )?;
    pool::give_vec(qw);
    Ok((narrow(o, q.dtype())?, CpuStorage::F32(lse)))
}

/// Given the forward's inputs, output `o`, its gradient `dout` and the saved `lse`, returns
/// (dq, dk, dv) in the inputs' dtype.
pub fn attention_backward(
    q: &CpuStorage,
    k: &CpuStorage,
    v: &CpuStorage,
    o: &CpuStorage,
    dout: &CpuStorage,
    lse: &CpuStorage,
    dims: AttentionDims,
) -> Result<(CpuStorage, CpuStorage, CpuStorage)> {
    Ok(match (q, k, v, o, dout, lse) {
        (
            CpuStorage::F32(q),
            CpuStorage::F32(k),
            CpuStorage::F32(v),
            CpuStorage::F32(o),
            CpuStorage::F32(g),
            CpuStorage::F32(l),
        ) => {
            let (dq, dk, dv) = backward(q, k, v, o, g, l, dims)?;
            (CpuStorage::F32(dq), CpuStorage::F32(dk), CpuStorage::F32(dv))
        }
        (
            CpuStorage::F64(q),
            CpuStorage::F64(k),
            CpuStorage::F64(v),
            CpuStorage::F64(o),
            CpuStorage::F64(g),
            CpuStorage::F64(l),
        ) => {
            let (dq, dk, dv) = backward(q, k, v, o, g, l, dims)?;
            (CpuStorage::F64(dq), CpuStorage::F64(dk), CpuStorage::F64(dv))
        }
        (
            CpuStorage::BF16(q),
            CpuStorage::BF16(k),
            CpuStorage::BF16(v),
            CpuStorage::BF16(o),
            CpuStorage::BF16(g),
            CpuStorage::F32(l),
        ) if gemm::has_bf16_dot() => {
            let (dq, dk, dv) = backward(q, k, v, o, g, l, dims)?;
            let dt = DType::BF16;
            (narrow(dq, dt)?, narrow(dk, dt)?, narrow(dv, dt)?)
        }
        (_, _, _, _, _, CpuStorage::F32(l)) => {
            check_half(q, &[k, v, o, dout])?;
            let dt = q.dtype();
            let (q, k, v, o, g) = (widen(q)?, widen(k)?, widen(v)?, widen(o)?, widen(dout)?);
            let (dq, dk, dv) = backward(&q, &k, &v, &o, &g, l, dims)?;
            (narrow(dq, dt)?, narrow(dk, dt)?, narrow(dv, dt)?)
        }
        _ => {
            return Err(Error::dtype_mismatch(
                "scaled_dot_product_attention",
                q.dtype(),
                lse.dtype(),
            ))
        }
    })
}

/// Multi-head self-attention read straight from a combined projection (`qkv_attention`):
/// `qkv` is contiguous `[B, T, 3·C]` with C = heads·d, row (b, t) holding the query of every head
/// (head h at columns h·d..), then the keys (C + h·d..), then the values (2·C + h·d..), as a
/// linear layer of 3·C outputs writes them; `dims` has `bh = B·heads`, `tq = tk = T`, group 1, and
/// `heads` is the number of heads per batch entry.
/// Returns y `[B, T, C]` (head h at columns h·d.., the layout the output projection reads) and the
/// log-sum-exp `[B·heads, T]` (f64 for f64, f32 otherwise). The heads are read in place: no copy
/// of q, k or v is made, and y is written once from each head's output tile.
pub fn qkv_attention_forward(qkv: &CpuStorage, dims: AttentionDims, heads: usize) -> Result<(CpuStorage, CpuStorage)> {
    Ok(match qkv {
        CpuStorage::F32(x) => {
            let (y, lse) = qkv_forward(x, dims, heads)?;
            (CpuStorage::F32(y), CpuStorage::F32(lse))
        }
        CpuStorage::F64(x) => {
            let (y, lse) = qkv_forward(x, dims, heads)?;
            (CpuStorage::F64(y), CpuStorage::F64(lse))
        }
        CpuStorage::BF16(x) if gemm::has_bf16_dot() => {
            let (y, lse) = qkv_forward(x, dims, heads)?;
            (narrow(y, DType::BF16)?, CpuStorage::F32(lse))
        }
        _ => {
            check_half(qkv, &[])?;
            let x = widen(qkv)?;
            let (y, lse) = qkv_forward(&x, dims, heads)?;
            pool::give_vec(x);
            (narrow(y, qkv.dtype())?, CpuStorage::F32(lse))
        }
    })
}

/// The backward of [`qkv_attention_forward`]: from `qkv`, the output `y` and its gradient `dy`
/// (both contiguous `[B, T, C]`) and the saved `lse`, returns the gradient of `qkv`, `[B, T, 3·C]`
/// in its layout, in qkv's dtype. Written once, from each head's dq, dk and dv: nothing is zeroed
/// and added.
pub fn qkv_attention_backward(
    qkv: &CpuStorage,
    y: &CpuStorage,
    dy: &CpuStorage,
    lse: &CpuStorage,
    dims: AttentionDims,
    heads: usize,
) -> Result<CpuStorage> {
    const OP: &str = "qkv_attention";
    Ok(match (qkv, y, dy, lse) {
        (CpuStorage::F32(x), CpuStorage::F32(y), CpuStorage::F32(g), CpuStorage::F32(l)) => {
            CpuStorage::F32(qkv_backward(x, y, g, l, dims, heads)?)
        }
        (CpuStorage::F64(x), CpuStorage::F64(y), CpuStorage::F64(g), CpuStorage::F64(l)) => {
            CpuStorage::F64(qkv_backward(x, y, g, l, dims, heads)?)
        }
        (CpuStorage::BF16(x), CpuStorage::BF16(y), CpuStorage::BF16(g), CpuStorage::F32(l)) if gemm::has_bf16_dot() => {
            let dx = qkv_backward(x, y, g, l, dims, heads)?;
            narrow(dx, DType::BF16)?
        }
        (_, _, _, CpuStorage::F32(l)) => {
            check_half(qkv, &[y, dy])?;
            let (x, yw, g) = (widen(qkv)?, widen(y)?, widen(dy)?);
            let dx = qkv_backward(&x, &yw, &g, l, dims, heads)?;
            [x, yw, g].into_iter().for_each(pool::give_vec);
            narrow(dx, qkv.dtype())?
        }
        _ => return Err(Error::dtype_mismatch(OP, qkv.dtype(), lse.dtype())),
    })
}

/// The heads of `dims` in a `[B, T, 3·C]` projection (`q_at`; the keys and values lie C and 2·C
/// further) and in a `[B, T, C]` output (`y_at`), with C = heads·d.
fn qkv_heads(dims: AttentionDims, heads: usize) -> (HeadRows, HeadRows) {
    let c = heads * dims.d;
    (
        HeadRows::side_by_side(heads, dims.tq, 3 * c, dims.d),
        HeadRows::side_by_side(heads, dims.tq, c, dims.d),
    )
}

/// y `[B, T, C]` and lse in `E`, from a projection of `X` operands ([`Operand`]).
fn qkv_forward<E: Real, X: Operand<E>>(qkv: &[X], dims: AttentionDims, heads: usize) -> Result<(Vec<E>, Vec<E>)> {
    const OP: &str = "qkv_attention";
    if qkv.is_empty() {
        return Ok((Vec::new(), alloc::filled(OP, dims.bh * dims.tq, E::zero())?));
    }
    let (q_at, y_at) = qkv_heads(dims, heads);
    let c = y_at.row;
    let (o, lse) = forward_at(qkv, q_at, &qkv[c..], &qkv[2 * c..], q_at, dims, X::GEMM, X::GEMM_INTO)?;
    let y = heads_side_by_side(OP, &[&o], heads, dims.tq, dims.d)?;
    pool::give_vec(o);
    Ok((y, lse))
}

/// The gradient of the projection, in `E`, from `X` operands ([`Operand`]).
fn qkv_backward<E: Real, X: Operand<E>>(
    qkv: &[X],
    y: &[X],
    dy: &[X],
    lse: &[E],
    dims: AttentionDims,
    heads: usize,
) -> Result<Vec<E>> {
    const OP: &str = "qkv_attention";
    if qkv.is_empty() {
        return Ok(Vec::new());
    }
    let (q_at, y_at) = qkv_heads(dims, heads);
    let c = y_at.row;
    #[rustfmt::skip]
    let (dq, dk, dv) = backward_at(qkv, q_at, &qkv[c..], &qkv[2 * c..], q_at, y, dy, y_at, lse, dims)?;
    let dx = heads_side_by_side(OP, &[&dq, &dk, &dv], heads, dims.tq, dims.d)?;
    [dq, dk, dv].into_iter().for_each(pool::give_vec);
    Ok(dx)
}

/// Dense per-head buffers `[B·heads, t, d]` (one or more: `parts`) laid side by side into rows:
/// `[B, t, parts·heads·d]`, row (b, i) holding part 0's heads 0..heads, then part 1's, ... (the
/// layout of y `[B, T, C]` for one part, of a `[B, T, 3·C]` projection for q, k, v). Rows in
/// parallel when there are many.
fn heads_side_by_side<E: Copy + Send + Sync + 'static>(
    op: &'static str,
    parts: &[&[E]],
    heads: usize,
    t: usize,
    d: usize,
) -> Result<Vec<E>> {
    let width = parts.len() * heads * d;
    let n = parts.iter().map(|p| p.len()).sum::<usize>();
    let mut out = alloc::with_capacity(op, n)?;
    let fill = |r: usize, row: &mut [MaybeUninit<E>]| {
        let (b, i) = (r / t, r % t);
        for (piece, src) in row.chunks_mut(heads * d).zip(parts) {
            for (h, dst) in piece.chunks_mut(d).enumerate() {
                let from = &src[((b * heads + h) * t + i) * d..][..d];
                for (o, &x) in dst.iter_mut().zip(from) {
                    o.write(x);
                }
            }
        }
    };
    let spare = &mut out.spare_capacity_mut()[..n];
    if width > 0 {
        if n >= super::PARALLEL_MIN {
            spare
                .par_chunks_mut(width)
                .enumerate()
                .with_min_len(16)
                .for_each(|(r, row)| fill(r, row));
        } else {
            spare.chunks_mut(width).enumerate().for_each(|(r, row)| fill(r, row));
        }
    }
    // SAFETY: the capacity is n = B·t·width; each of the B·t rows of `width` elements was written
    // in full (parts.len() pieces of `heads` slots of d), or n is 0.
    unsafe { out.set_len(n) };
    Ok(out)
}

/// BF16/F16 operands (the caller has matched f32 and f64), all of one dtype.
fn check_half(first: &CpuStorage, rest: &[&CpuStorage]) -> Result<()> {
    const OP: &str = "scaled_dot_product_attention";
    if let Some(other) = rest.iter().find(|s| s.dtype() != first.dtype()) {
        return Err(Error::dtype_mismatch(OP, first.dtype(), other.dtype()));
    }
    match first.dtype() {
        DType::BF16 | DType::F16 => Ok(()),
        dt => Err(Error::not_float(OP, dt)),
    }
}

fn widen(s: &CpuStorage) -> Result<Vec<f32>> {
    match super::cast(s, &Layout::contiguous(&[s.len()]), DType::F32)? {
        CpuStorage::F32(v) => Ok(v),
        _ => unreachable!("cast to f32 gives f32"),
    }
}

/// `v` rounded to `dtype`; `v`'s buffer goes back to the pool.
fn narrow(v: Vec<f32>, dtype: DType) -> Result<CpuStorage> {
    let n = v.len();
    let wide = pool::Scratch(CpuStorage::F32(v));
    super::cast(&wide.0, &Layout::contiguous(&[n]), dtype)
}

/// The query heads one forward job takes: in decode (`tq` 1: one query row per head), as many of
/// a key/value head's `group` as one streamed product takes (the largest divisor of the group up
/// to [`gemm::STREAM_MAX_M`], so a job never spans two groups), their rows the product's rows, so
/// that K and V are read once for them, not once per head; else one head.
fn heads_per_job(tq: usize, group: usize) -> usize {
    match tq {
        1 => (1..=gemm::STREAM_MAX_M.min(group))
            .rev()
            .find(|&g| group.is_multiple_of(g))
            .unwrap_or(1),
        _ => 1,
    }
}

/// One job's index and its (not yet written) slices of o and lse (its query heads'), as the
/// forward's parallel loop hands them out.
type JobOutputs<'a, E> = (usize, (&'a mut [MaybeUninit<E>], &'a mut [MaybeUninit<E>]));

/// Where each head's rows lie in a buffer: head `i` (the `i`-th of the call, batch entry
/// `i / per_batch`, head `i % per_batch` within it) starts at element `(i / per_batch)·batch +
/// (i % per_batch)·head`, and its rows follow `row` elements apart, each row's `d` elements
/// contiguous. Dense heads (`[bh, t, d]`, or a KV cache's heads `kv_stride` apart) are one head per
/// "batch entry"; the heads of a combined projection `[B, T, 3·C]` ([`qkv_attention_forward`])
/// are `d` apart inside rows `3·C` long.
#[derive(Clone, Copy, Debug)]
struct HeadRows {
    per_batch: usize,
    batch: usize,
    head: usize,
    row: usize,
}

impl HeadRows {
    /// Heads `stride` elements apart, rows `d` apart.
    fn dense(stride: usize, d: usize) -> HeadRows {
        HeadRows {
            per_batch: 1,
            batch: stride,
            head: 0,
            row: d,
        }
    }

    /// `heads` heads of width `d` side by side in rows `row` long, `t` rows per batch entry.
    fn side_by_side(heads: usize, t: usize, row: usize, d: usize) -> HeadRows {
        HeadRows {
            per_batch: heads,
            batch: t * row,
            head: d,
            row,
        }
    }

    /// The element where head `i`'s first row starts.
    fn start(&self, i: usize) -> usize {
        (i / self.per_batch) * self.batch + (i % self.per_batch) * self.head
    }

    /// The distance between the rows of a job of `together` heads from head `h0`: its head's rows
    /// when alone, else the heads' (tq is 1 then, and row r is head h0 + r's only row).
    fn job_row(&self, h0: usize, together: usize) -> usize {
        match together {
            1 => self.row,
            _ => self.start(h0 + 1) - self.start(h0),
        }
    }
}

/// The forward of every head: (o `[bh, tq, d]`, lse `[bh, tq]`), with K and V of element type
/// `KV` multiplied by `scores_gemm` (S = s·Q·Kᵀ) and `out_gemm` (O = P·V): `E`'s own GEMMs, or
/// for bf16 K and V in decode (at most [`gemm::STREAM_MAX_M`] query rows) the streamed products
/// that read them in place, which compute what `E`'s GEMMs compute on the widened values, bit for
/// bit (`sgemm` itself streams such products).
fn forward<E: Real, Q: Sync, KV: Sync, P: Operand<E>>(
    q: &[Q],
    k: &[KV],
    v: &[KV],
    dims: AttentionDims,
    scores_gemm: Gemm<E, KV, Q>,
    out_gemm: GemmInto<E, KV, P>,
) -> Result<(Vec<E>, Vec<E>)> {
    let (qa, kva) = (
        HeadRows::dense(dims.tq * dims.d, dims.d),
        HeadRows::dense(dims.kv_stride, dims.d),
    );
    forward_at(q, qa, k, v, kva, dims, scores_gemm, out_gemm)
}

/// [`forward`] with q's heads at `qa` and k's and v's at `kva`: (o `[bh, tq, d]` dense, lse `[bh, tq]`).
/// P goes to `out_gemm` as `P` operands ([`Operand`]).
#[allow(clippy::too_many_arguments)] // the operands, their layouts and the two products
fn forward_at<E: Real, Q: Sync, KV: Sync, P: Operand<E>>(
    q: &[Q],
    qa: HeadRows,
    k: &[KV],
    v: &[KV],
    kva: HeadRows,
    dims: AttentionDims,
    scores_gemm: Gemm<E, KV, Q>,
    out_gemm: GemmInto<E, KV, P>,
) -> Result<(Vec<E>, Vec<E>)> {
    const OP: &str = "scaled_dot_product_attention";
    let AttentionDims { bh, tq, d, .. } = dims;
    if bh * tq * d == 0 {
        return Ok((
            alloc::filled(OP, bh * tq * d, E::zero())?,
            alloc::filled(OP, bh * tq, E::zero())?,
        ));
    }
    let together = heads_per_job(tq, dims.group);
    let chunk = (DECODE_CHUNK_ELEMENTS / d).max(1);
    if tq == 1 && dims.visible(0) > chunk {
        return forward_split(q, qa, k, v, kva, dims, together, chunk, scores_gemm, out_gemm);
    }
    // not zeroed: every head writes all its rows of o (a beta-0 GEMM per tile) and of lse
    let (mut o, mut lse) = (
        alloc::with_capacity(OP, bh * tq * d)?,
        alloc::with_capacity(OP, bh * tq)?,
    );
    let scale = E::from(dims.scale()).expect("f32 and f64 hold any f64, rounded");
    // inlined into the vectorised wrapper below (compiled apart, it would run at the baseline:
    // its exponentials four lanes wide)
    let job = inlined(
        #[inline(always)]
        |scores: &mut Vec<E>, (j, (oj, lj)): JobOutputs<'_, E>| {
            let h0 = j * together;
            let kv = kva.start(h0 / dims.group);
            let (kh, vh) = (&k[kv..], &v[kv..]);
            // the job's rows: its heads' tq query rows, one after the other (when it has several
            // heads, tq is 1, and row r is head h0 + r's only row); o and lse take them in that order
            let (qj, q_row) = (&q[qa.start(h0)..], qa.job_row(h0, together));
            let rows_total = together * tq;
            // P rounded for the products, when they take other operands than E (none allocated else)
            let mut p_operands = Vec::new();
            for i0 in (0..rows_total).step_by(TILE) {
                let rows = TILE.min(rows_total - i0);
                // row r is query (i0 + r) % tq of its head; the tile's last row sees the most keys
                let keys = dims.visible((i0 + rows - 1) % tq);
                fit_scores(scores, rows * keys);
                // S = s·Q·Kᵀ: Kᵀ is k read with its strides swapped
                #[rustfmt::skip]
                scores_gemm(rows, keys, d, scale, &qj[i0 * q_row..], q_row as isize, 1, kh, 1, kva.row as isize,
                            E::zero(), scores, keys as isize, 1);
                // The softmax in three passes over the tile's rows (the maxima, then the
                // exponentials and their sums, then the scaling) rather than row after row: a
                // row's max and sum are chains of eight-lane folds whose latency, not their
                // arithmetic, bounds a short row, and the rows of one pass are independent, so the
                // CPU overlaps their chains (nanoGPT's forward, 64 keys, 0.83 times as long).
                let keys_seen = |r: usize| dims.visible((i0 + r) % tq);
                let (mut maxes, mut sums) = ([E::zero(); TILE], [E::zero(); TILE]);
                for (r, row) in scores.chunks(keys).enumerate() {
                    maxes[r] = lane_fold_of(&row[..keys_seen(r)], E::neg_infinity(), |s| s, E::max);
                }
                for (r, row) in scores.chunks_mut(keys).enumerate() {
                    let visible = &mut row[..keys_seen(r)];
                    // the exponentials in a loop of their own, free of the sum's chain, so it vectorises
                    visible.iter_mut().for_each(|s| *s = (*s - maxes[r]).exp_fast());
                    sums[r] = lane_sum(visible, |p| p);
                }
                for (r, row) in scores.chunks_mut(keys).enumerate() {
                    let (seen, inv) = (keys_seen(r), sums[r].recip());
                    row[..seen].iter_mut().for_each(|p| *p = *p * inv);
                    row[seen..].fill(E::zero());
                    lj[i0 + r].write(maxes[r] + sums[r].ln());
                }
                // O = P·V
                let p = P::operands(&scores[..rows * keys], &mut p_operands);
                #[rustfmt::skip]
                out_gemm(rows, d, keys, E::one(), p, keys as isize, 1, vh, kva.row as isize, 1,
                         &mut oj[i0 * d..], d as isize, 1);
            }
        },
    );

    // decode against a short cache: too little work to pay for a parallel region
    let kv_bytes = dims.kv_heads() * 2 * dims.tk * d * size_of::<KV>();
    let jobs_together = if tq <= gemm::STREAM_MAX_M && kv_bytes < SERIAL_KV_BYTES {
        bh / together
    } else {
        1
    };
    o.spare_capacity_mut()[..bh * tq * d]
        .par_chunks_mut(together * tq * d)
        .zip(lse.spare_capacity_mut()[..bh * tq].par_chunks_mut(together * tq))
        .enumerate()
        .with_min_len(jobs_together)
        .for_each(|j| E::run_job(&job, j));
    // SAFETY: the capacities are these lengths; each of the bh heads wrote its tq rows of o
    // (the tiles' beta-0 GEMMs cover rows 0..tq, all d columns) and its tq entries of lse.
    unsafe {
        o.set_len(bh * tq * d);
        lse.set_len(bh * tq);
    }
    Ok((o, lse))
}

/// Sizes a thread's score scratch to `n` elements, growing its capacity in powers of two from
/// [`MIN_SCORES`]: a decode step, one key longer than the last, grows it only at a power of two
/// past 4096 keys.
fn fit_scores<E: Real>(scores: &mut Vec<E>, n: usize) {
    if scores.capacity() < n {
        let want = n.next_power_of_two().max(MIN_SCORES);
        scores.reserve_exact(want - scores.len());
    }
    scores.resize(n, E::zero());
}

/// [`forward_at`] for a decode step (tq 1) whose keys are cut into chunks of `chunk` keys
/// ([`DECODE_CHUNK_ELEMENTS`]): one job per (a key/value head's `together` query heads, chunk c).
/// For each of its rows a job computes, over the chunk's keys, the largest score m_c, the sum
/// l_c = Σ exp(s − m_c) and the unnormalised output o_c = Σ exp(s − m_c)·v (the streamed products
/// again, beta 0); the driver then combines a row's chunks in order:
///
/// ```text
/// m = max_c m_c,   l = Σ_c exp(m_c − m)·l_c,   o = Σ_c exp(m_c − m)·o_c / l,   lse = m + ln l
/// ```
///
/// The chunks depend only on the number of keys, so the result does not depend on the threads.
#[allow(clippy::too_many_arguments)] // forward_at's, with the split
fn forward_split<E: Real, Q: Sync, KV: Sync, P: Operand<E>>(
    q: &[Q],
    qa: HeadRows,
    k: &[KV],
    v: &[KV],
    kva: HeadRows,
    dims: AttentionDims,
    together: usize,
    chunk: usize,
    scores_gemm: Gemm<E, KV, Q>,
    out_gemm: GemmInto<E, KV, P>,
) -> Result<(Vec<E>, Vec<E>)> {
    const OP: &str = "scaled_dot_product_attention";
    let AttentionDims { bh, d, .. } = dims;
    let keys_total = dims.visible(0);
    let chunks = keys_total.div_ceil(chunk);
    let jobs = bh / together * chunks;
    let scale = E::from(dims.scale()).expect("f32 and f64 hold any f64, rounded");
    // per job, job after job: its rows' o_c `[together, d]`, and their (m_c, l_c) `[together, 2]`
    let (mut part_o, mut part_ml) = (
        alloc::with_capacity(OP, jobs * together * d)?,
        alloc::with_capacity(OP, jobs * together * 2)?,
    );
    let job = inlined(
        #[inline(always)]
        |scores: &mut Vec<E>, (j, (oj, mlj)): JobOutputs<'_, E>| {
            let (h0, k0) = ((j / chunks) * together, (j % chunks) * chunk);
            let keys = chunk.min(keys_total - k0);
            let kv = kva.start(h0 / dims.group) + k0 * kva.row;
            let (kh, vh) = (&k[kv..], &v[kv..]);
            // row r is head h0 + r's only query row
            let (qj, q_row) = (&q[qa.start(h0)..], qa.job_row(h0, together));
            fit_scores(scores, together * keys);
            #[rustfmt::skip]
            scores_gemm(together, keys, d, scale, qj, q_row as isize, 1, kh, 1, kva.row as isize,
                        E::zero(), scores, keys as isize, 1);
            for (r, row) in scores.chunks_mut(keys).enumerate() {
                let max = lane_fold_of(row, E::neg_infinity(), |s| s, E::max);
                row.iter_mut().for_each(|s| *s = (*s - max).exp_fast());
                mlj[2 * r].write(max);
                mlj[2 * r + 1].write(lane_sum(row, |p| p));
            }
            let mut p_operands = Vec::new();
            let p = P::operands(&scores[..together * keys], &mut p_operands);
            #[rustfmt::skip]
            out_gemm(together, d, keys, E::one(), p, keys as isize, 1, vh, kva.row as isize, 1,
                     oj, d as isize, 1);
        },
    );
    part_o.spare_capacity_mut()[..jobs * together * d]
        .par_chunks_mut(together * d)
        .zip(part_ml.spare_capacity_mut()[..jobs * together * 2].par_chunks_mut(together * 2))
        .enumerate()
        .for_each(|j| E::run_job(&job, j));
    // SAFETY: the capacities are these lengths; each job wrote all its rows of o_c (a beta-0
    // product over its d columns) and both entries of each row's (m_c, l_c).
    unsafe {
        part_o.set_len(jobs * together * d);
        part_ml.set_len(jobs * together * 2);
    }
    let mut o = alloc::filled(OP, bh * d, E::zero())?;
    let mut lse = alloc::with_capacity(OP, bh)?;
    for (h, oh) in o.chunks_mut(d).enumerate() {
        // head h is row r of the jobs of its group g, one per chunk
        let (g, r) = (h / together, h % together);
        let row = |c: usize| (g * chunks + c) * together + r;
        let m = (0..chunks).fold(E::neg_infinity(), |m, c| m.max(part_ml[2 * row(c)]));
        let mut l = E::zero();
        for c in 0..chunks {
            let w = (part_ml[2 * row(c)] - m).exp_fast();
            l = l + w * part_ml[2 * row(c) + 1];
            let oc = &part_o[row(c) * d..][..d];
            oh.iter_mut().zip(oc).for_each(|(o, &x)| *o = *o + w * x);
        }
        let inv = l.recip();
        oh.iter_mut().for_each(|o| *o = *o * inv);
        lse.push(m + l.ln());
    }
    pool::give_vec(part_o);
    pool::give_vec(part_ml);
    Ok((o, lse))
}

/// One key/value head's index and its slices of (dq of its group's query heads, dk) and dv, as the
/// backward's parallel loop hands them out.
type HeadGrads<'a, E> = (usize, ((&'a mut [MaybeUninit<E>], &'a mut [E]), &'a mut [E]));

/// A backward job's scratch: the tiles P and dS, and their operands for the products when these
/// take other operands than `E` ([`Operand`]).
type Scratch<E, X> = (Vec<E>, Vec<E>, Vec<X>, Vec<X>);

/// The backward of every head: (dq, dk, dv), from `X` operands multiplied by their
/// [`Operand::GEMM`] and [`Operand::GEMM_INTO`].
fn backward<E: Real, X: Operand<E>>(
    q: &[X],
    k: &[X],
    v: &[X],
    o: &[X],
    dout: &[X],
    lse: &[E],
    dims: AttentionDims,
) -> Result<(Vec<E>, Vec<E>, Vec<E>)> {
    let (qa, kva) = (
        HeadRows::dense(dims.tq * dims.d, dims.d),
        HeadRows::dense(dims.kv_stride, dims.d),
    );
    backward_at(q, qa, k, v, kva, o, dout, qa, lse, dims)
}

/// [`backward`] with q's heads at `qa`, k's and v's at `kva`, and o's and dout's at `oa`, all
/// `X` operands ([`Operand`]); returns (dq `[bh, tq, d]`, dk, dv `[bh / group, tk, d]`), dense,
/// in `E`.
#[allow(clippy::too_many_arguments)] // the operands and their layouts
fn backward_at<E: Real, X: Operand<E>>(
    q: &[X],
    qa: HeadRows,
    k: &[X],
    v: &[X],
    kva: HeadRows,
    o: &[X],
    dout: &[X],
    oa: HeadRows,
    lse: &[E],
    dims: AttentionDims,
) -> Result<(Vec<E>, Vec<E>, Vec<E>)> {
    const OP: &str = "scaled_dot_product_attention";
    let (gemm, gemm_into) = (X::GEMM, X::GEMM_INTO);
    let AttentionDims {
        bh, tq, tk, d, group, ..
    } = dims;
    let kv_heads = dims.kv_heads();
    // dK and dV accumulate over the query tiles (beta 1): they start at zero
    let (mut dk, mut dv) = (
        alloc::filled(OP, kv_heads * tk * d, E::zero())?,
        alloc::filled(OP, kv_heads * tk * d, E::zero())?,
    );
    if bh * tq * d == 0 || dk.is_empty() {
        return Ok((alloc::filled(OP, bh * tq * d, E::zero())?, dk, dv));
    }
    // not zeroed: every query tile writes its rows of dQ with a beta-0 GEMM
    let mut dq = alloc::with_capacity(OP, bh * tq * d)?;
    let scale = E::from(dims.scale()).expect("f32 and f64 hold any f64, rounded");
    // inlined into the vectorised wrapper below (too large for the compiler to inline on its own,
    // it was compiled apart, in SSE2: its exponentials and dS loop ran four lanes wide)
    let head = inlined(
        #[inline(always)]
        |(p, ds, p_operands, ds_operands): &mut Scratch<E, X>, (kv, ((dq_group, dkh), dvh)): HeadGrads<'_, E>| {
            let (kh, vh) = (&k[kva.start(kv)..], &v[kva.start(kv)..]);
            for (h, dqh) in (kv * group..).zip(dq_group.chunks_mut(tq * d)) {
                let (qh, oh, gh, lh) = (
                    &q[qa.start(h)..],
                    &o[oa.start(h)..],
                    &dout[oa.start(h)..],
                    &lse[h * tq..],
                );
                for i0 in (0..tq).step_by(TILE) {
                    let rows = TILE.min(tq - i0);
                    let keys = dims.visible(i0 + rows - 1);
                    p.resize(rows * keys, E::zero());
                    ds.resize(rows * keys, E::zero());
                    let (qt, gt) = (&qh[i0 * qa.row..], &gh[i0 * oa.row..]);
                    let (qr, kr, or) = (qa.row as isize, kva.row as isize, oa.row as isize);
                    #[rustfmt::skip]
                    gemm(rows, keys, d, scale, qt, qr, 1, kh, 1, kr, E::zero(), p, keys as isize, 1);
                    // dP = dO·Vᵀ
                    #[rustfmt::skip]
                    gemm(rows, keys, d, E::one(), gt, or, 1, vh, 1, kr, E::zero(), ds, keys as isize, 1);
                    for (r, (pr, dsr)) in p.chunks_mut(keys).zip(ds.chunks_mut(keys)).enumerate() {
                        let i = i0 + r;
                        let seen = dims.visible(i);
                        let (gi, oi) = (&gh[i * oa.row..][..d], &oh[i * oa.row..][..d]);
                        let dot = lane_fold(d, E::zero(), |c| gi[c].up() * oi[c].up(), |a, b| a + b);
                        let l = lh[i];
                        for (pj, dsj) in pr[..seen].iter_mut().zip(&mut dsr[..seen]) {
                            *pj = (*pj - l).exp_fast();
                            *dsj = *pj * (*dsj - dot);
                        }
                        pr[seen..].fill(E::zero());
                        dsr[seen..].fill(E::zero());
                    }
                    // dQ = s·dS·K, dK += s·dSᵀ·Q, dV += Pᵀ·dO (dSᵀ and Pᵀ are the tiles read with swapped strides)
                    let (ds, p) = (X::operands(ds, ds_operands), X::operands(p, p_operands));
                    #[rustfmt::skip]
                    gemm_into(rows, d, keys, scale, ds, keys as isize, 1, kh, kr, 1, &mut dqh[i0 * d..], d as isize, 1);
                    #[rustfmt::skip]
                    gemm(keys, d, rows, scale, ds, 1, keys as isize, qt, qr, 1, E::one(), dkh, d as isize, 1);
                    #[rustfmt::skip]
                    gemm(keys, d, rows, E::one(), p, 1, keys as isize, gt, or, 1, E::one(), dvh, d as isize, 1);
                }
            }
        },
    );
    dq.spare_capacity_mut()[..bh * tq * d]
        .par_chunks_mut(group * tq * d)
        .zip(dk.par_chunks_mut(tk * d))
        .zip(dv.par_chunks_mut(tk * d))
        .enumerate()
        .for_each_init(
            || (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
            |scratch, job| {
                vectorised(
                    #[inline(always)]
                    || head(scratch, job),
                )
            },
        );
    // SAFETY: the capacity is bh·tq·d; each key/value head's job wrote all tq rows of dQ of
    // each of its group's query heads (beta-0 GEMMs over tiles covering 0..tq, all d columns).
    unsafe { dq.set_len(bh * tq * d) };
    Ok((dq, dk, dv))
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    /// Uniform draws in [-1, 1) from a 64-bit LCG seeded with `seed`, each a multiple of 2⁻²³
    /// (exact in f32 too).
    fn draws(mut seed: u64) -> impl FnMut() -> f64 {
        move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f64 / (1u64 << 24) as f64) * 2.0 - 1.0
        }
    }

    /// The bf16 products of `qkv_attention` (where the CPU has them) against the f64 loops on the
    /// same bf16 values, for shapes off the tiles (70 positions: a tile of 64 and one of 6; heads
    /// of 40). The forward's f32 output is within P's rounding to bf16 (2⁻⁸ of Σ P·|v|) of the
    /// f64 attention, and on average several times nearer the f64 model that rounds P to bf16
    /// before O = P·V than the one that does not (a P near a rounding boundary may round the
    /// other way from an f32 score). The gradients are within the roundings of P and dS and of
    /// the bf16 result (2⁻⁸ of the sums of their terms' magnitudes and of the value).
    #[test]
    fn bf16_products_round_p_and_ds_to_bf16_and_match_f64() {
        if !gemm::has_bf16_dot() {
            eprintln!("skipped: this CPU has neither vdpbf16ps nor AMX, so bf16 attention is widened to f32");
            return;
        }
        let (b, heads, t, d) = (2, 3, 70, 40);
        let c = heads * d;
        let mut uniform = draws(0x51_7cc1_b727_220a);
        let mut next =
            |n: usize, scale: f64| -> Vec<bf16> { (0..n).map(|_| bf16::from_f64(uniform() * scale)).collect() };
        let (qkv, dy) = (next(b * t * 3 * c, 2.0), next(b * t * c, 1.0));
        let dims = AttentionDims {
            bh: b * heads,
            tq: t,
            tk: t,
            d,
            causal: true,
            group: 1,
            kv_stride: t * d,
        };
        let (y_f32, _) = qkv_forward::<f32, bf16>(&qkv, dims, heads).unwrap();
        let (y, lse) = qkv_attention_forward(&CpuStorage::BF16(qkv.clone()), dims, heads).unwrap();
        let dx = qkv_attention_backward(
            &CpuStorage::BF16(qkv.clone()),
            &y,
            &CpuStorage::BF16(dy.clone()),
            &lse,
            dims,
            heads,
        )
        .unwrap();
        let CpuStorage::BF16(dx) = dx else {
            panic!("bf16 in, bf16 out")
        };
        let at = |x: &[bf16], row: usize, col: usize| x[row * 3 * c + col].to_f64();
        let round = |x: f64| bf16::from_f64(x).to_f64();
        let scale = 1.0 / (d as f64).sqrt();
        let (mut worst, mut sum_model, mut sum_unrounded) = (0f64, 0f64, 0f64);
        let mut want_dx = vec![0f64; dx.len()];
        let mut grad_bound = vec![0f64; dx.len()];
        for bi in 0..b {
            for h in 0..heads {
                let (q, k, v) = (h * d, c + h * d, 2 * c + h * d);
                let row = |i: usize| bi * t + i;
                for i in 0..t {
                    let s: Vec<f64> = (0..=i)
                        .map(|j| {
                            (0..d)
                                .map(|e| at(&qkv, row(i), q + e) * at(&qkv, row(j), k + e))
                                .sum::<f64>()
                                * scale
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                    let p: Vec<f64> = s.iter().map(|x| (x - m).exp() / z).collect();
                    // O = P·V and Σ P·|v| per column, in f64
                    let (o, o_abs): (Vec<f64>, Vec<f64>) = (0..d)
                        .map(|e| {
                            let terms = (0..=i).map(|j| (p[j], at(&qkv, row(j), v + e)));
                            terms.fold((0.0, 0.0), |(o, a), (p, v)| (o + p * v, a + p * v.abs()))
                        })
                        .unzip();
                    // forward: O against the model with P rounded, and without
                    for e in 0..d {
                        let got = y_f32[row(i) * c + h * d + e] as f64;
                        let rounded: f64 = (0..=i).map(|j| round(p[j]) * at(&qkv, row(j), v + e)).sum();
                        worst = worst.max((got - o[e]).abs() / o_abs[e]);
                        sum_model += (got - rounded).abs() / o_abs[e];
                        sum_unrounded += (got - o[e]).abs() / o_abs[e];
                    }
                    // backward, f64: dP = dO·Vᵀ, dS = P∘(dP − dO·O), dQ = s·dS·K, dK += s·dSᵀ·Q, dV += Pᵀ·dO
                    let go = |e: usize| dy[row(i) * c + h * d + e].to_f64();
                    let dot: f64 = (0..d).map(|e| go(e) * o[e]).sum();
                    // D = dO·O is taken from the bf16 output, off by P's and its own rounding
                    let dot_abs: f64 = (0..d).map(|e| go(e).abs() * o_abs[e]).sum();
                    for j in 0..=i {
                        let dp: f64 = (0..d).map(|e| go(e) * at(&qkv, row(j), v + e)).sum();
                        let dp_abs: f64 = (0..d).map(|e| (go(e) * at(&qkv, row(j), v + e)).abs()).sum();
                        let ds = p[j] * (dp - dot);
                        let ds_abs = p[j] * (dp_abs + 3.0 * dot_abs);
                        for e in 0..d {
                            let (qe, ke) = (at(&qkv, row(i), q + e), at(&qkv, row(j), k + e));
                            want_dx[row(i) * 3 * c + q + e] += scale * ds * ke;
                            grad_bound[row(i) * 3 * c + q + e] += scale * ds_abs * ke.abs();
                            want_dx[row(j) * 3 * c + k + e] += scale * ds * qe;
                            grad_bound[row(j) * 3 * c + k + e] += scale * ds_abs * qe.abs();
                            want_dx[row(j) * 3 * c + v + e] += p[j] * go(e);
                            grad_bound[row(j) * 3 * c + v + e] += p[j] * go(e).abs();
                        }
                    }
                }
            }
        }
        assert!(
            worst <= 2f64.powi(-8) * 1.01,
            "output {worst} of Σ P·|v| from the f64 attention"
        );
        assert!(
            sum_model * 4.0 < sum_unrounded,
            "mean distances (of Σ P·|v|) to the model with P rounded to bf16 {} and without {}",
            sum_model / y_f32.len() as f64,
            sum_unrounded / y_f32.len() as f64
        );
        assert_eq!(y.dtype(), DType::BF16);
        for (i, ((&got, &want), &mag)) in dx.iter().zip(&want_dx).zip(&grad_bound).enumerate() {
            let err = (got.to_f64() - want).abs();
            // P and dS rounded (2⁻⁸ of the terms), the result rounded to bf16 (2⁻⁸ of the value)
            assert!(
                err <= 2f64.powi(-8) * (mag + want.abs()) + 1e-6,
                "dx[{i}] = {got}, f64 {want}, terms {mag}"
            );
        }
    }

    /// A decode job takes the largest divisor of the group up to `STREAM_MAX_M` (4) query heads;
    /// anything with more than one query row per head, one head.
    #[test]
    fn decode_jobs_take_the_largest_group_divisor_up_to_four_heads() {
        for (group, together) in [
            (1, 1),
            (2, 2),
            (3, 3),
            (4, 4),
            (5, 1),
            (6, 3),
            (7, 1),
            (8, 4),
            (9, 3),
            (12, 4),
        ] {
            assert_eq!(heads_per_job(1, group), together, "group {group}");
        }
        for tq in [2, 4, 64] {
            assert_eq!(heads_per_job(tq, 3), 1, "tq {tq}");
        }
    }

    /// The half types a decode reads its KV cache in, for the test below.
    trait Half: Copy {
        const NAN: Self;
        fn from_f32(x: f32) -> Self;
        fn wide(self) -> f32;
        fn bits(self) -> u16;
        fn storage(x: Vec<Self>) -> CpuStorage;
        fn of(s: CpuStorage) -> Vec<Self>;
    }

    macro_rules! half {
        ($t:ty, $variant:ident) => {
            impl Half for $t {
                const NAN: Self = <$t>::NAN;
                fn from_f32(x: f32) -> Self {
                    <$t>::from_f32(x)
                }
                fn wide(self) -> f32 {
                    self.to_f32()
                }
                fn bits(self) -> u16 {
                    self.to_bits()
                }
                fn storage(x: Vec<Self>) -> CpuStorage {
                    CpuStorage::$variant(x)
                }
                fn of(s: CpuStorage) -> Vec<Self> {
                    let CpuStorage::$variant(x) = s else {
                        panic!("not {}", stringify!($t))
                    };
                    x
                }
            }
        };
    }
    half!(bf16, BF16);
    half!(f16, F16);

    /// A bf16 or f16 decode (at most `STREAM_MAX_M` query rows) reads K and V in place, in their
    /// dtype, from buffers larger than the keys it attends to (a KV cache's); its output and lse
    /// are those of the f32 loop on the widened operands, bit for bit, for one to four query rows,
    /// grouped heads, key counts that are not multiples of the vector width, and head widths with
    /// tails.
    #[test]
    fn half_decodes_read_the_cache_in_place_and_match_the_widened_product() {
        fn check<H: Half>(name: &str) {
            let mut uniform = draws(0x9e37_79b9_7f4a_7c15);
            let mut next = move || uniform() as f32;
            for (tq, tk, d, group, causal) in [
                (1, 1, 8, 1, true),
                (1, 37, 64, 3, true),
                // past a chunk of keys (128 of a head of 64, 481 of 17): split, ragged last chunk
                (1, 300, 64, 3, true),
                (1, 700, 17, 1, false),
                (2, 19, 24, 2, true),
                (3, 70, 17, 1, false),
                (4, 33, 64, 4, true),
            ] {
                let (bh, capacity) = (4 * group, tk + 5);
                let kv_stride = capacity * d;
                let dims = AttentionDims {
                    bh,
                    tq,
                    tk,
                    d,
                    causal,
                    group,
                    kv_stride,
                };
                let draw =
                    |n: usize, next: &mut dyn FnMut() -> f32| (0..n).map(|_| H::from_f32(next())).collect::<Vec<_>>();
                let q = draw(bh * tq * d, &mut next);
                // the cache's unused rows hold NaN: they must not be read
                let mut k = draw(bh / group * kv_stride, &mut next);
                let mut v = draw(bh / group * kv_stride, &mut next);
                for head in 0..bh / group {
                    k[head * kv_stride + tk * d..(head + 1) * kv_stride].fill(H::NAN);
                    v[head * kv_stride + tk * d..(head + 1) * kv_stride].fill(H::NAN);
                }
                let wide = |x: &[H]| CpuStorage::F32(x.iter().map(|x| x.wide()).collect());
                let (o, lse) = attention_forward(
                    &H::storage(q.clone()),
                    &H::storage(k.clone()),
                    &H::storage(v.clone()),
                    dims,
                )
                .unwrap();
                let (o32, lse32) = attention_forward(&wide(&q), &wide(&k), &wide(&v), dims).unwrap();
                let (o, CpuStorage::F32(lse), CpuStorage::F32(o32), CpuStorage::F32(lse32)) =
                    (H::of(o), lse, o32, lse32)
                else {
                    panic!("unexpected dtypes")
                };
                let o32: Vec<H> = o32.iter().map(|&x| H::from_f32(x)).collect();
                let case = format!("{name}: tq {tq}, tk {tk}, d {d}, group {group}, causal {causal}");
                assert!(
                    o.iter().all(|x| x.wide().is_finite()),
                    "{case}: a NaN of the unused cache rows was read"
                );
                assert_eq!(
                    o.iter().map(|x| x.bits()).collect::<Vec<_>>(),
                    o32.iter().map(|x| x.bits()).collect::<Vec<_>>(),
                    "{case}: o"
                );
                assert_eq!(
                    lse.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    lse32.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    "{case}: lse"
                );
            }
        }
        check::<bf16>("bf16");
        check::<f16>("f16");
    }

    /// A decode's grouped query heads, taken as the rows of one product, give what each head gives
    /// alone: the same call with every key/value head repeated for each of its query heads (group
    /// 1, one head per product), bit for bit, in f32, f64 and bf16 (K and V read in place), for
    /// groups that take 2, 3 or 4 heads at a time or (5: no divisor of 2 to 4) one, key counts
    /// that are not multiples of the vector width, and a head width with a tail.
    #[test]
    fn grouped_decode_heads_read_their_key_value_head_once_and_match_each_head_alone() {
        let mut next = draws(0x2545_f491_4f6c_dd1d);
        for (group, tk, d) in [
            (2, 1, 8),
            (3, 37, 64),
            (4, 70, 17),
            (5, 19, 64),
            (6, 129, 64),
            (8, 33, 40),
        ] {
            let (kv_heads, capacity) = (2, tk + 3);
            let bh = kv_heads * group;
            let grouped = AttentionDims {
                bh,
                tq: 1,
                tk,
                d,
                causal: true,
                group,
                kv_stride: capacity * d,
            };
            let q: Vec<f64> = (0..bh * d).map(|_| next()).collect();
            let k: Vec<f64> = (0..kv_heads * capacity * d).map(|_| next()).collect();
            let v: Vec<f64> = (0..kv_heads * capacity * d).map(|_| next()).collect();
            // each query head's own copy of its key/value head
            let repeat = |x: &[f64]| -> Vec<f64> {
                (0..bh)
                    .flat_map(|h| x[(h / group) * capacity * d..][..capacity * d].to_vec())
                    .collect()
            };
            let alone = AttentionDims { group: 1, ..grouped };
            let case = format!("group {group}, tk {tk}, d {d}");
            let f32s = |x: &[f64]| CpuStorage::F32(x.iter().map(|&x| x as f32).collect());
            let bf16s = |x: &[f64]| CpuStorage::BF16(x.iter().map(|&x| bf16::from_f64(x)).collect());
            let f64s = |x: &[f64]| CpuStorage::F64(x.to_vec());
            for (dtype, of) in [
                ("f32", &f32s as &dyn Fn(&[f64]) -> CpuStorage),
                ("f64", &f64s),
                ("bf16", &bf16s),
            ] {
                let (o, lse) = attention_forward(&of(&q), &of(&k), &of(&v), grouped).unwrap();
                let (o1, lse1) = attention_forward(&of(&q), &of(&repeat(&k)), &of(&repeat(&v)), alone).unwrap();
                let bits = |s: &CpuStorage| -> Vec<u64> {
                    match s {
                        CpuStorage::F32(x) => x.iter().map(|x| x.to_bits() as u64).collect(),
                        CpuStorage::F64(x) => x.iter().map(|x| x.to_bits()).collect(),
                        CpuStorage::BF16(x) => x.iter().map(|x| x.to_bits() as u64).collect(),
                        _ => panic!("unexpected dtype"),
                    }
                };
                assert_eq!(bits(&o), bits(&o1), "{case}, {dtype}: o");
                assert_eq!(bits(&lse), bits(&lse1), "{case}, {dtype}: lse");
                assert_eq!(bits(&o).len(), bh * d, "{case}, {dtype}: o's length");
            }
        }
    }

    /// A decode step split into chunks of keys gives the same bits on one thread as on three, and
    /// agrees with the naive f64 softmax (its accuracy across chunk counts, 1 to 9, and head widths
    /// with tails: the chunks' partial sums rescaled by exp(m_c − m) lose nothing measurable).
    #[test]
    fn split_decode_is_the_same_on_any_thread_count_and_matches_the_naive_softmax() {
        let mut next = draws(0x5851_f42d_4c95_7f2d);
        for (group, tk, d) in [(3, 127, 64), (3, 129, 64), (3, 1100, 64), (1, 2000, 17), (2, 300, 40)] {
            let kv_heads = 2;
            let bh = kv_heads * group;
            let dims = AttentionDims {
                bh,
                tq: 1,
                tk,
                d,
                causal: true,
                group,
                kv_stride: tk * d,
            };
            // scores up to about ±6 in size, so the chunks' maxima differ
            let q: Vec<f64> = (0..bh * d).map(|_| 3.0 * next()).collect();
            let k: Vec<f64> = (0..kv_heads * tk * d).map(|_| next()).collect();
            let v: Vec<f64> = (0..kv_heads * tk * d).map(|_| next()).collect();
            let f32s = |x: &[f64]| CpuStorage::F32(x.iter().map(|&x| x as f32).collect());
            let on = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                match pool.install(|| attention_forward(&f32s(&q), &f32s(&k), &f32s(&v), dims).unwrap()) {
                    (CpuStorage::F32(o), CpuStorage::F32(lse)) => (o, lse),
                    _ => panic!("unexpected dtypes"),
                }
            };
            let (one, three) = (on(1), on(3));
            let case = format!("group {group}, tk {tk}, d {d}");
            assert_eq!(one, three, "{case}: 1 thread against 3");
            let (o, lse) = one;
            let scale = 1.0 / (d as f64).sqrt();
            for h in 0..bh {
                let (qh, kv) = (&q[h * d..][..d], (h / group) * tk * d);
                let s: Vec<f64> = (0..tk)
                    .map(|j| scale * (0..d).map(|c| qh[c] * k[kv + j * d + c]).sum::<f64>())
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let l: f64 = s.iter().map(|x| (x - m).exp()).sum();
                assert!((lse[h] as f64 - (m + l.ln())).abs() < 1e-5, "{case}: lse of head {h}");
                for c in 0..d {
                    let want = (0..tk).map(|j| (s[j] - m).exp() / l * v[kv + j * d + c]).sum::<f64>();
                    let got = o[h * d + c] as f64;
                    assert!((got - want).abs() < 1e-5, "{case}: o[{h}, {c}] {got} against {want}");
                }
            }
        }
    }
}
