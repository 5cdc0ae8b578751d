//! The scalar dot products of every format: the path of CPUs without AVX2, and of Q4_K and Q6_K
//! on all CPUs. The block layouts are drawn in src/backend/cpu/dequantize.rs.

use super::q8::{Q8Row, QK};
use crate::backend::cpu::dequantize::{f16_at, k_scales_mins};
use crate::backend::op::{tile_block, QuantFormat, GROUP_ROWS};

/// The 16 dot products of one row group's tiles with `x`: each row put back in the GGUF layout
/// and dotted by [`dot`].
pub(super) fn group_dot(format: QuantFormat, tiles: &[u8], x: &Q8Row, out: &mut [f32; GROUP_ROWS]) {
    let (block_bytes, tile) = (format.block_bytes(), GROUP_ROWS * format.block_bytes());
    let mut row = vec![0u8; tiles.len() / GROUP_ROWS];
    for (lane, y) in out.iter_mut().enumerate() {
        for (t, block) in tiles.chunks_exact(tile).zip(row.chunks_exact_mut(block_bytes)) {
            tile_block(format, t, lane, block);
        }
        *y = dot(format, &row, x);
    }
}

/// The coefficients `(a, c)` of a 32-element block of Q4_0, Q4_1 or Q8_0 (`w = a·q + c`) and the
/// byte offset of its quants. Inlined into the SIMD kernels, which call it for every block.
#[inline(always)]
pub(super) fn block32(format: QuantFormat, b: &[u8]) -> (f32, f32, usize) {
    match format {
        QuantFormat::Q4_0 => {
            let d = f16_at(b, 0);
            (d, -8.0 * d, 2)
        }
        QuantFormat::Q4_1 => (f16_at(b, 0), f16_at(b, 2), 4),
        QuantFormat::Q8_0 => (f16_at(b, 0), 0.0, 2),
        QuantFormat::Q4_K | QuantFormat::Q6_K => unreachable!("{format} blocks hold 256 elements"),
    }
}

/// Σ q·xq over 16 nibble bytes `qs` (element j < 16: low nibble of qs[j], j + 16: high nibble).
fn nibble_dot(qs: &[u8], xq: &[i8]) -> i32 {
    let (lo, hi) = xq.split_at(16);
    qs.iter()
        .zip(lo.iter().zip(hi))
        .map(|(&q, (&a, &b))| (q & 0xF) as i32 * a as i32 + (q >> 4) as i32 * b as i32)
        .sum()
}

pub(super) fn dot(format: QuantFormat, w: &[u8], x: &Q8Row) -> f32 {
    let blocks = w.chunks_exact(format.block_bytes());
    let mut y = 0f32;
    match format {
        QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q8_0 => {
            for (b, wb) in blocks.enumerate() {
                let (a, c, at) = block32(format, wb);
                let xq = &x.qs[QK * b..QK * (b + 1)];
                let isum = if format == QuantFormat::Q8_0 {
                    wb[at..at + 32]
                        .iter()
                        .zip(xq)
                        .map(|(&q, &v)| q as i8 as i32 * v as i32)
                        .sum()
                } else {
                    nibble_dot(&wb[at..at + 16], xq)
                };
                let [xd, xdsum] = x.ds[b];
                y += a * xd * isum as f32 + c * xdsum;
            }
        }
        QuantFormat::Q4_K => {
            for (sb, wb) in blocks.enumerate() {
                let (d, dmin) = (f16_at(wb, 0), f16_at(wb, 2));
                let qs = &wb[16..144];
                for (s, (sc, mn)) in k_scales_mins(&wb[4..16]).into_iter().enumerate() {
                    // sub-block 2g: the low nibbles of qs[32g..32g + 32], 2g + 1: their high ones
                    let (bytes, shift) = (&qs[32 * (s / 2)..32 * (s / 2) + 32], 4 * (s % 2));
                    let j = 8 * sb + s;
                    let xq = &x.qs[QK * j..QK * (j + 1)];
                    let isum: i32 = bytes
                        .iter()
                        .zip(xq)
                        .map(|(&q, &v)| ((q >> shift) & 0xF) as i32 * v as i32)
                        .sum();
                    let [xd, xdsum] = x.ds[j];
                    y += d * sc as f32 * xd * isum as f32 - dmin * mn as f32 * xdsum;
                }
            }
        }
        QuantFormat::Q6_K => {
            for (sb, wb) in blocks.enumerate() {
                let (ql, qh, scales) = (&wb[0..128], &wb[128..192], &wb[192..208]);
                let d = f16_at(wb, 208);
                // element e = 128h + p: low 4 bits from ql[64h + p % 64] >> 4·(p / 64),
                // high 2 bits from qh[32h + p % 32] >> 2·(p / 32)
                let q = |e: usize| -> i32 {
                    let (h, p) = (e / 128, e % 128);
                    let low = (ql[64 * h + p % 64] >> (4 * (p / 64))) & 0xF;
                    let high = (qh[32 * h + p % 32] >> (2 * (p / 32))) & 3;
                    (low | high << 4) as i32 - 32
                };
                for s in 0..8 {
                    let j = 8 * sb + s;
                    let xq = &x.qs[QK * j..QK * (j + 1)];
                    let half = |g: usize| -> f32 {
                        let isum: i32 = (0..16).map(|l| q(32 * s + 16 * g + l) * xq[16 * g + l] as i32).sum();
                        scales[2 * s + g] as i8 as f32 * isum as f32
                    };
                    y += d * x.ds[j][0] * (half(0) + half(1));
                }
            }
        }
    }
    y
}
