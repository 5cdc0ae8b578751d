//! `y = x·Wᵀ` with W a [`QuantizedMatrix`] (ggml blocks), x f32: the decode (one row of x)
//! and prefill (many rows) product of a quantized model, reading W in its block format.
//!
//! # Algorithm (llama.cpp's, with 8-bit activations)
//!
//! Each row of x is first quantized per block of 32 to signed bytes, as ggml's Q8_1:
//! `xd = max|x| / 127`, `xq = round(x / xd)`, kept with `xd` and `xd·Σxq`. Every weight format
//! is, for one sub-block of 32, `w = a·q + c` with small integers q (four bits, six bits or a
//! signed byte) and two f32 coefficients, so a block's share of the dot product is
//!
//! ```text
//! Σ w·x ≈ Σ (a·q + c)·(xd·xq) = (a·xd)·Σ q·xq + c·(xd·Σ xq)
//! ```
//!
//! one integer dot product of 32 byte pairs plus two multiply-adds. Per format (`d`, `m`, `dmin`
//! f16 in the block, `sc`/`mn` the sub-block's six-bit scale and min, `s8` Q6_K's signed scale):
//!
//! ```text
//! Q4_0  a = d,       c = -8·d          q the nibble (0..16)
//! Q4_1  a = d,       c = m             q the nibble
//! Q8_0  a = d,       c = 0             q the signed byte
//! Q4_K  a = d·sc,    c = -dmin·mn      q the nibble, 8 sub-blocks of 32 per 256
//! Q6_K  a = d·s8,    c = 0             q - 32 (six bits), 16 sub-blocks of 16 per 256
//! ```
//!
//! (Q6_K's scales change every 16 elements: its 32-element step is two 16-element integer dots.)
//! The only rounding beyond f32 arithmetic is that of x: `|x - xd·xq| ≤ xd/2` per element, so a
//! block's error is at most `max|x|/254 · Σ|w|` (the tests hold the result to that bound).
//!
//! # Kernels
//!
//! Q4_0, Q4_1 and Q8_0 are kept in row groups of 16 ([`QuantizedMatrix`], layout in
//! src/backend/op/quantized.rs), on an instruction set chosen at run time ([`QuantIsa::best`]):
//!
//! - **Below [`GEMM_FROM_ROWS`] rows of x** (decode) each group is dotted with one row of x at a
//!   time (`group_dot`): AVX-512 VNNI (`vpdpbusd` on 256-bit registers), AVX2 (`vpmaddubsw` +
//!   `vpmaddwd`), or portable scalar code, which puts each row back in the GGUF layout (x86.rs
//!   draws the SIMD loop). The four-bit formats feed unsigned nibbles to the u8 × i8 instructions
//!   directly; Q8_0's signed weights go in as |w| with x's sign flipped where w < 0.
//! - **From [`GEMM_FROM_ROWS`] rows** (prefill) a register-blocked integer GEMM (`group_gemm`)
//!   unpacks each tile once and multiplies it with several rows of x: 16 weight rows × 8 rows of x
//!   on 512-bit VNNI registers (Q8_0 as `Σ (x + 128)·w - 128·Σ w`), 8 × 4 per half-tile on AVX2,
//!   and, where the CPU and OS grant AMX-INT8 (amx.rs), one 16 × 16 × 32 tile product
//!   (`tdpbssd`/`tdpbsud`) per block with an AVX-512 epilogue applying the scales (from 16 rows
//!   of x; below, the VNNI kernel). The portable GEMM is `group_dot` per row, the reference.
//!
//! Q4_K and Q6_K, kept row after row, are dotted one row at a time by the portable code so far.
//!
//! # Which forward rounds x
//!
//! `Tensor::linear_quantized` takes these kernels under `no_grad` (generation: prefill and
//! decode), like llama.cpp, whose prompt products round x to 8 bits as well. While autograd
//! records (QLoRA training) it takes [`linear_dequantized`] instead: W decoded to f32 a block of
//! rows at a time and the f32 GEMM, x unrounded, so that a loss and its gradients are those of
//! the dequantized f32 model; [`linear_quantized_input_grad`] decodes W the same way.
//!
//! # Threads and memory traffic
//!
//! W is split over rayon's pool by row group (Q4_K, Q6_K: tasks of [`ROWS_PER_TASK`] rows; the
//! GEMM also splits x's rows when there are few groups); each weight byte is read once per call
//! (once per task of x's rows in the GEMM) and dotted with every (quantized) row of x, which stays
//! in cache. Several matrices that share x (a Llama block's q, k and v; its gate and up) go
//! through [`linear_quantized_many`] in decode: x quantized once, one parallel region over all
//! their row groups. A decode step thus reads each weight byte once: `rows · row_bytes` bytes of W (Q4_1:
//! 5 bits, Q8_0: 8.5 bits per weight) plus `k` bytes of x per row of x, for `2·m·rows·cols` flops.

#[cfg(target_arch = "x86_64")]
mod amx;
mod portable;
mod q8;
#[cfg(target_arch = "x86_64")]
mod x86;

use super::{alloc, pool};
use crate::backend::op::{PerMatrix, QuantFormat, QuantizedMatrix, GROUP_ROWS};
use crate::{Error, Result};
pub use q8::{Q8Row, Q8Rows, QK};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Weight rows per rayon task for the formats kept row after row (Q4_K, Q6_K; the grouped ones
/// take one 16-row group per task): enough to amortise the scheduling, few enough that 576-row
/// matrices still split over many threads.
pub const ROWS_PER_TASK: usize = 16;

/// Weight rows ahead of the one being multiplied whose bytes are prefetched, for the formats kept
/// row after row: without it the kernels waited on each row's first loads (a 576-column row is
/// 360 bytes, too short a run for the hardware prefetcher to get ahead), reading about 3 GB/s
/// where a plain stream reads 20.
const PREFETCH_ROWS: usize = 2;

/// Bytes ahead of each tile that the grouped kernels prefetch. On SmolLM2-135M Q4_1 (2-vCPU Xeon,
/// 2026-12-05, decode tokens/s over two runs each): none 115–119, 1 KiB 121–130, 2–3 KiB 131–137,
/// 4 KiB 127–130, the next group (5.6 KiB) 128.
const PREFETCH_BYTES: usize = 2048;

/// Asks the cache to fetch `len` bytes of `bytes` from `start` (the part inside the slice), one
/// request per 64-byte line; a hint, with no effect on results.
#[inline(always)]
fn prefetch(bytes: &[u8], start: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let (mut at, end) = (start, (start + len).min(bytes.len()));
        while at < end {
            // SAFETY: `at` is inside `bytes`; a prefetch reads nothing architecturally.
            unsafe { std::arch::x86_64::_mm_prefetch(bytes.as_ptr().add(at).cast(), std::arch::x86_64::_MM_HINT_T0) };
            at += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (bytes, start, len);
}

/// The instruction set a product runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantIsa {
    /// Scalar code the compiler vectorises as it can; runs everywhere.
    Portable,
    /// AVX2 + FMA + F16C (x86-64 since Haswell / Zen).
    Avx2,
    /// As `Avx2` with AVX-512 VNNI's `vpdpbusd` (AVX-512 F, BW and VL too; Ice Lake, Sapphire
    /// Rapids, Zen 4): on 256-bit registers for a few rows of x, 512-bit ones in the GEMM.
    Avx512Vnni,
    /// As `Avx512Vnni`, with AMX-INT8 tile products in the GEMM (Sapphire Rapids and later, on
    /// Linux when the kernel grants the tile state: amx.rs).
    Amx,
}

impl QuantIsa {
    pub const ALL: [QuantIsa; 4] = [QuantIsa::Portable, QuantIsa::Avx2, QuantIsa::Avx512Vnni, QuantIsa::Amx];

    /// Whether this CPU runs `self`.
    pub fn is_supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = || has!("avx2") && has!("fma") && has!("f16c");
            match self {
                QuantIsa::Portable => true,
                QuantIsa::Avx2 => avx2(),
                QuantIsa::Avx512Vnni => {
                    avx2() && has!("avx512f") && has!("avx512bw") && has!("avx512vnni") && has!("avx512vl")
                }
                QuantIsa::Amx => QuantIsa::Avx512Vnni.is_supported() && amx::available(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == QuantIsa::Portable
        }
    }

    /// The fastest instruction set this CPU runs.
    pub fn best() -> QuantIsa {
        *QuantIsa::ALL
            .iter()
            .rev()
            .find(|isa| isa.is_supported())
            .expect("Portable is always supported")
    }
}

/// The 16 dot products of one row group's tiles (`tiles`) with `x`, on `isa`: `out[r]` for the
/// group's row r. `ahead` is the distance in bytes to the next group, which the SIMD kernels
/// prefetch.
fn group_dot(isa: QuantIsa, format: QuantFormat, tiles: &[u8], x: &Q8Row, ahead: usize, out: &mut [f32; GROUP_ROWS]) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the caller chose `isa` among the supported ones (linear_quantized_on checks).
        QuantIsa::Avx2 => return unsafe { x86::group_dot(format, tiles, x, ahead, out) },
        // SAFETY: as above.
        QuantIsa::Avx512Vnni | QuantIsa::Amx => return unsafe { x86::group_dot_vnni(format, tiles, x, ahead, out) },
        QuantIsa::Portable => {}
    }
    let _ = (isa, ahead);
    portable::group_dot(format, tiles, x, out)
}

/// Rows of x that `group_gemm` takes at a time on `isa` (x is padded to a multiple).
fn gemm_rows(isa: QuantIsa) -> usize {
    #[cfg(target_arch = "x86_64")]
    match isa {
        QuantIsa::Avx2 => return x86::AVX2_GEMM_ROWS,
        QuantIsa::Avx512Vnni => return x86::VNNI_GEMM_ROWS,
        QuantIsa::Amx => return amx::AMX_GEMM_ROWS,
        QuantIsa::Portable => {}
    }
    let _ = isa;
    1
}

/// The products of one row group's tiles with the rows `x` (a multiple of [`gemm_rows`]), on
/// `isa`: `out[16·i + r]` for x's row i and the group's row r, every element of `out` written (it
/// may be uninitialised). The SIMD kernels unpack each tile once for several rows of x (x86.rs,
/// amx.rs); the portable one is [`portable::group_dot`] per row.
fn group_gemm(isa: QuantIsa, format: QuantFormat, tiles: &[u8], x: &Q8Row, out: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the caller chose `isa` among the supported ones (linear_quantized_on checks);
        // the row counts are multiples of gemm_rows(isa) (its caller pads x).
        QuantIsa::Avx2 => return unsafe { x86::group_gemm(format, tiles, x, out) },
        // SAFETY: as above.
        QuantIsa::Avx512Vnni => return unsafe { x86::group_gemm_vnni(format, tiles, x, out) },
        // SAFETY: as above.
        QuantIsa::Amx => return unsafe { amx::group_gemm(format, tiles, x, out) },
        QuantIsa::Portable => {}
    }
    let blocks = tiles.len() / (GROUP_ROWS * format.block_bytes());
    for (i, out) in out.chunks_exact_mut(GROUP_ROWS).enumerate() {
        let row = Q8Row {
            qs: &x.qs[i * blocks * QK..(i + 1) * blocks * QK],
            ds: &x.ds[i * blocks..(i + 1) * blocks],
        };
        let mut dots = [0f32; GROUP_ROWS];
        portable::group_dot(format, tiles, &row, &mut dots);
        out.iter_mut().zip(dots).for_each(|(o, d)| _ = o.write(d));
    }
}

/// `y = x·Wᵀ` on the best instruction set, x rounded to 8 bits per block: x is (m, k) f32
/// row-major with `k == w.shape()[1]`, y is (m, n) with `n == w.shape()[0]`. See
/// [`linear_quantized_on`].
pub fn linear_quantized(x: &[f32], w: &QuantizedMatrix) -> Result<Vec<f32>> {
    linear_quantized_on(QuantIsa::best(), x, w)
}

/// Rows of x from which [`linear_quantized`] multiplies the grouped formats with the
/// register-blocked GEMM (`group_gemm`: each tile unpacked once for 4, 8 or 16 rows of x)
/// rather than one row of x at a time (`group_dot`, which serves decode). SmolLM2's Q4_1
/// [1536, 576], 2 threads, a loaded 2-vCPU Xeon (2026-12-05, so ratios only; best of 7): m calls
/// of one row against the VNNI GEMM, 3 rows 0.052 against 0.052 ms, 4 rows 0.069 against 0.056,
/// 8 rows 0.145 against 0.062; AMX pads x to 16 rows and takes 0.10 ms at 1 to 8 rows, hence
/// the VNNI GEMM below 16 rows on AMX machines.
pub const GEMM_FROM_ROWS: usize = 4;

/// Bytes of W's f32 block in [`linear_dequantized`] and [`linear_quantized_input_grad`], about
/// 2 MiB, so that the decoded rows are still in cache when the GEMM packs them.
const DECODED_BLOCK_BYTES: usize = 2 << 20;

/// Calls `f(rows, block)` for consecutive blocks of W's rows, `block` holding them decoded to f32
/// (`rows.len() × k`, row-major): W's f32 copy never exists whole.
fn for_each_decoded_block(w: &QuantizedMatrix, mut f: impl FnMut(std::ops::Range<usize>, &[f32])) -> Result<()> {
    let [n, k] = w.shape();
    let rows_per_block = (DECODED_BLOCK_BYTES / (4 * k)).clamp(16, n.max(16));
    let mut block = alloc::filled("linear_quantized", rows_per_block.min(n) * k, 0f32)?;
    for r0 in (0..n).step_by(rows_per_block) {
        let rows = r0..(r0 + rows_per_block).min(n);
        super::dequantize::dequantize_rows(w, rows.clone(), &mut block);
        f(rows.clone(), &block[..rows.len() * k]);
    }
    Ok(())
}

/// `y = x·Wᵀ` with W decoded to f32 in blocks of rows, each block's columns of y computed by the
/// f32 GEMM: x (m, k) f32 row-major, y (m, n). x is not rounded, so this is the
/// dequantize-then-f32 product up to f32 summation order: the forward of a product whose input's
/// gradient is taken (QLoRA training), so that the loss and gradients are those of the f32 model.
pub fn linear_dequantized(x: &[f32], w: &QuantizedMatrix) -> Result<Vec<f32>> {
    let [n, k] = w.shape();
    let m = check_rows(x, k, "columns")?;
    let mut y = alloc::filled("linear_quantized", m * n, 0f32)?;
    if m == 0 {
        return Ok(y);
    }
    for_each_decoded_block(w, |rows, block| {
        // y[:, rows] = x (m, k) · blockᵀ (k, rows): block's element (r, c) is Wᵀ's (c, r)
        let (k, n) = (k as isize, n as isize);
        let y = &mut y[rows.start..];
        super::gemm::sgemm(m, rows.len(), k as usize, 1.0, x, k, 1, block, 1, k, 0.0, y, n, 1);
    })?;
    Ok(y)
}

/// The input's gradient of `y = x·Wᵀ`: `dx = g·W`, g (m, n) f32 row-major, dx (m, k). W is decoded
/// to f32 in blocks of rows as in [`linear_dequantized`], and each block adds its share,
/// `g[:, rows] · W[rows, :]`.
pub fn linear_quantized_input_grad(g: &[f32], w: &QuantizedMatrix) -> Result<Vec<f32>> {
    let [n, k] = w.shape();
    let m = check_rows(g, n, "rows")?;
    let mut dx = alloc::filled("linear_quantized backward", m * k, 0f32)?;
    if m == 0 {
        return Ok(dx);
    }
    for_each_decoded_block(w, |rows, block| {
        let (k, n) = (k as isize, n as isize);
        let g = &g[rows.start..];
        super::gemm::sgemm(m, k as usize, rows.len(), 1.0, g, n, 1, block, k, 1, 1.0, &mut dx, k, 1);
    })?;
    Ok(dx)
}

/// The number of rows of `width` in `x`, or an error if `x` is not whole rows; `width` is the
/// weight's number of `columns` (x) or `rows` (the output's gradient).
fn check_rows(x: &[f32], width: usize, of: &str) -> Result<usize> {
    if !x.len().is_multiple_of(width) {
        return Err(Error::shape(
            "linear_quantized",
            format!(
                "{} input values are not whole rows of the weight's {width} {of}",
                x.len()
            ),
        ));
    }
    Ok(x.len() / width)
}

/// [`linear_quantized`] on a chosen instruction set (an error if this CPU lacks it): the grouped
/// formats from [`GEMM_FROM_ROWS`] rows of x on through [`linear_quantized_gemm_on`], below one
/// row of x at a time.
pub fn linear_quantized_on(isa: QuantIsa, x: &[f32], w: &QuantizedMatrix) -> Result<Vec<f32>> {
    let [n, k] = w.shape();
    let m = check_isa_and_rows(isa, x, k)?;
    if w.format().is_grouped() && m >= GEMM_FROM_ROWS {
        // below one A tile of rows, AMX pads x to 16 rows: the AVX-512 kernel is faster there
        #[cfg(target_arch = "x86_64")]
        if isa == QuantIsa::Amx && m < amx::AMX_GEMM_ROWS {
            return linear_quantized_gemm_on(QuantIsa::Avx512Vnni, x, w);
        }
        return linear_quantized_gemm_on(isa, x, w);
    }
    if m == 0 {
        return Ok(Vec::new());
    }
    let xq = Q8Rows::quantize(x, k)?;
    // yt is (rows, m), rows padded to whole groups for a grouped format: each task fills the m
    // outputs of its weight rows
    let mut yt = alloc::filled("linear_quantized", decode_rows(w) * m, 0f32)?;
    decode_into(isa, &xq, m, w, &mut yt);
    untransposed(yt, n, m)
}

/// y (m, n) from the decode product's yt (n or more rows, m), whose rows past n are dropped: yt
/// itself when m is 1.
fn untransposed(mut yt: Vec<f32>, n: usize, m: usize) -> Result<Vec<f32>> {
    yt.truncate(n * m);
    if m == 1 {
        return Ok(yt);
    }
    let mut y = alloc::filled("linear_quantized", n * m, 0f32)?;
    y.par_chunks_mut(n).enumerate().for_each(|(i, yr)| {
        for (j, v) in yr.iter_mut().enumerate() {
            *v = yt[j * m + i];
        }
    });
    Ok(y)
}

/// The rows of `yt` that [`decode_into`] fills for `w`: its rows, padded to whole groups for a
/// grouped format.
fn decode_rows(w: &QuantizedMatrix) -> usize {
    let n = w.shape()[0];
    match w.format().is_grouped() {
        true => n.next_multiple_of(GROUP_ROWS),
        false => n,
    }
}

/// The decode product (few rows of x, one at a time): `yt` (`decode_rows(w)`, m) receives
/// `W·xqᵀ`, the m quantized rows `xq` dotted with every row of W, split over rayon's pool by row
/// group (the grouped formats) or by [`ROWS_PER_TASK`] rows.
fn decode_into(isa: QuantIsa, xq: &Q8Rows, m: usize, w: &QuantizedMatrix, yt: &mut [f32]) {
    let (format, row_bytes) = (w.format(), w.row_bytes());
    if format.is_grouped() {
        let group_bytes = GROUP_ROWS * row_bytes;
        yt.par_chunks_mut(GROUP_ROWS * m)
            .zip(w.stored_bytes().par_chunks(group_bytes))
            .for_each(|(yt, tiles)| {
                let mut out = [0f32; GROUP_ROWS];
                for i in 0..m {
                    group_dot(isa, format, tiles, &xq.row(i), PREFETCH_BYTES, &mut out);
                    for (r, &v) in out.iter().enumerate() {
                        yt[r * m + i] = v;
                    }
                }
            });
    } else {
        yt.par_chunks_mut(m * ROWS_PER_TASK)
            .zip(w.stored_bytes().par_chunks(row_bytes * ROWS_PER_TASK))
            .for_each(|(yt, w)| {
                for (r, (yr, wr)) in yt.chunks_exact_mut(m).zip(w.chunks_exact(row_bytes)).enumerate() {
                    prefetch(w, (r + PREFETCH_ROWS) * row_bytes, row_bytes);
                    for (i, y) in yr.iter_mut().enumerate() {
                        *y = portable::dot(format, wr, &xq.row(i));
                    }
                }
            });
    }
}

/// `y_j = x·W_jᵀ` for several matrices that share x (a layer's q, k and v projections; its gate
/// and up projections), on the best instruction set: each `y_j` equal to
/// `linear_quantized(x, ws[j])`, bit for bit. Below [`GEMM_FROM_ROWS`] rows of x (decode), x is
/// quantized once and every matrix's row groups are dotted with it in one parallel region (one
/// rayon fork-join instead of one per matrix, whose wake-up costs several microseconds when the
/// workers sleep); from [`GEMM_FROM_ROWS`] rows, one [`linear_quantized`] per matrix. See
/// [`linear_quantized_many_on`].
pub fn linear_quantized_many(x: &[f32], ws: &[&QuantizedMatrix]) -> Result<PerMatrix<Vec<f32>>> {
    linear_quantized_many_on(QuantIsa::best(), x, ws)
}

/// [`linear_quantized_many`] on a chosen instruction set (an error if this CPU lacks it, or if
/// the matrices differ in columns).
pub fn linear_quantized_many_on(isa: QuantIsa, x: &[f32], ws: &[&QuantizedMatrix]) -> Result<PerMatrix<Vec<f32>>> {
    let Some(first) = ws.first() else {
        return Ok(PerMatrix::new());
    };
    let k = first.shape()[1];
    if let Some(w) = ws.iter().find(|w| w.shape()[1] != k) {
        return Err(Error::shape(
            "linear_quantized",
            format!(
                "the matrices sharing an input differ in columns: {:?} and {:?}",
                first.shape(),
                w.shape()
            ),
        ));
    }
    let m = check_isa_and_rows(isa, x, k)?;
    if m >= GEMM_FROM_ROWS || m == 0 {
        return ws.iter().map(|w| linear_quantized_on(isa, x, w)).collect();
    }
    let xq = Q8Rows::quantize(x, k)?;
    let mut yts = ws
        .iter()
        .map(|w| alloc::filled("linear_quantized", decode_rows(w) * m, 0f32))
        .collect::<Result<PerMatrix<_>>>()?;
    yts.par_iter_mut()
        .zip(ws.par_iter())
        .for_each(|(yt, w)| decode_into(isa, &xq, m, w, yt));
    yts.into_iter()
        .zip(ws)
        .map(|(yt, w)| untransposed(yt, w.shape()[0], m))
        .collect()
}

/// The rows of x (of `k` columns) if `isa` runs here, else an error.
fn check_isa_and_rows(isa: QuantIsa, x: &[f32], k: usize) -> Result<usize> {
    let m = check_rows(x, k, "columns")?;
    if !isa.is_supported() {
        return Err(Error::invalid(
            "linear_quantized",
            format!("this CPU does not run the {isa:?} kernel"),
        ));
    }
    Ok(m)
}

/// Weight-group tasks wanted per thread before the GEMM also splits x's rows among tasks.
const GEMM_TASKS_PER_THREAD: usize = 4;

/// `y = x·Wᵀ` for a grouped format (Q4_0, Q4_1, Q8_0) through the register-blocked GEMM on `isa`,
/// whatever the number of rows of x (the tests' entry; [`linear_quantized`] takes it from
/// [`GEMM_FROM_ROWS`] rows). x is quantized and padded with zero rows to a multiple of
/// `gemm_rows`; rayon's tasks are row groups of W, each also split over blocks of x's rows when
/// there are fewer than `GEMM_TASKS_PER_THREAD` groups per thread. The tasks write yt, laid out
/// (group, row of x, 16 outputs), which is then copied into y (m, n).
pub fn linear_quantized_gemm_on(isa: QuantIsa, x: &[f32], w: &QuantizedMatrix) -> Result<Vec<f32>> {
    let ([n, k], format) = (w.shape(), w.format());
    let m = check_isa_and_rows(isa, x, k)?;
    if !format.is_grouped() {
        return Err(Error::invalid(
            "linear_quantized",
            format!("the integer GEMM takes Q4_0, Q4_1 or Q8_0 weights, not {format}"),
        ));
    }
    if m == 0 {
        return Ok(Vec::new());
    }
    let mr = gemm_rows(isa);
    let xq = Q8Rows::quantize_padded(x, k, mr)?;
    let padded = m.next_multiple_of(mr);
    let groups = n.div_ceil(GROUP_ROWS);
    let splits = (GEMM_TASKS_PER_THREAD * rayon::current_num_threads())
        .div_ceil(groups)
        .clamp(1, padded / mr);
    let task_rows = (padded / mr).div_ceil(splits) * mr;
    // yt and y are not zeroed first (a memset of each, on one thread, was 5% of a 128-token
    // prefill of SmolLM2): the kernels write all of yt, the copy all of y
    let yt_len = groups * padded * GROUP_ROWS;
    let mut yt = alloc::with_capacity::<f32>("linear_quantized", yt_len)?;
    yt.spare_capacity_mut()[..yt_len]
        .par_chunks_mut(padded * GROUP_ROWS)
        .zip(w.stored_bytes().par_chunks(GROUP_ROWS * w.row_bytes()))
        .for_each(|(yg, tiles)| {
            yg.par_chunks_mut(task_rows * GROUP_ROWS)
                .enumerate()
                .for_each(|(t, out)| {
                    let rows = t * task_rows..t * task_rows + out.len() / GROUP_ROWS;
                    group_gemm(isa, format, tiles, &xq.rows(rows), out);
                });
        });
    // SAFETY: the capacity is yt_len; each group's padded rows were written in full by the tasks,
    // which cover them (group_gemm writes every element of its `out`).
    unsafe { yt.set_len(yt_len) };
    let mut y = alloc::with_capacity::<f32>("linear_quantized", m * n)?;
    y.spare_capacity_mut()[..m * n]
        .par_chunks_mut(n)
        .enumerate()
        .for_each(|(i, yr)| {
            for (g, yc) in yr.chunks_mut(GROUP_ROWS).enumerate() {
                let from = &yt[(g * padded + i) * GROUP_ROWS..][..yc.len()];
                yc.iter_mut().zip(from).for_each(|(o, &x)| _ = o.write(x));
            }
        });
    // SAFETY: the capacity is m·n; each of the m rows was written in full (its groups' columns).
    unsafe { y.set_len(m * n) };
    pool::give_vec(yt);
    Ok(y)
}
