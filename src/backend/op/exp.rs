//! exp for the CPU's arithmetic types. f64 uses libm; f32 uses [`exp_f32`], a branch-free
//! polynomial the compiler inlines and vectorises. libm's `expf` is an opaque call per
//! element, which keeps every loop around it (GELU, softmax, cross-entropy) scalar: on the
//! GPT training step those loops took about a seventh of the CPU time.

use num_traits::Float;

/// `exp` as the CPU kernels compute it for each arithmetic type.
/// Also the error function, which `std` lacks (libm's `erf`/`erff`, the exact GELU's).
pub trait Exp: Float {
    fn exp_fast(self) -> Self;
    fn erf(self) -> Self;
}

impl Exp for f64 {
    #[inline(always)]
    fn exp_fast(self) -> f64 {
        self.exp()
    }
    #[inline(always)]
    fn erf(self) -> f64 {
        libm::erf(self)
    }
}

impl Exp for f32 {
    #[inline(always)]
    fn exp_fast(self) -> f32 {
        exp_f32(self)
    }
    #[inline(always)]
    fn erf(self) -> f32 {
        libm::erff(self)
    }
}

/// eˣ in f32 to within 2 ulp (tests/ops_vs_reference.rs checks it against f64), without
/// branches or calls.
///
/// Cephes' `expf` scheme: x = n·ln2 + r with n = round(x·log₂e) and |r| ≤ ln2/2 (ln2 split
/// in a short high part, exact in n·ln2_hi, and a low correction), eʳ by a degree-7 minimax
/// polynomial, then the product with 2ⁿ. 2ⁿ is applied as 2^⌊n/2⌋·2^(n−⌊n/2⌋), two normal
/// powers of two, so results near f32::MAX and in the subnormal range round once, correctly.
/// x is first clamped to [−110, 88.75]: beyond those, eˣ rounds to 0 and overflows to +inf
/// anyway, which the clamped values still produce. NaN stays NaN.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4; // 0.693359375: 8 significant bits, n·LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    // rounds to the nearest integer (ties to even) for |v| < 2²², as one add and one sub
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³
    let x = x.clamp(-110.0, 88.75);
    let shifted = x * LOG2E + ROUND; // ROUND + n exactly: n sits in the low bits of its mantissa
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5; // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
    let er = p * r * r + r + 1.0;
    // n as an integer, in [−159, 129], read from the mantissa bits: a float-to-int `as` (which
    // saturates) keeps loops around exp from vectorising. For a NaN x the bits are garbage, and
    // er carries the NaN.
    let n = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let (n1, n2) = (n >> 1, n - (n >> 1));
    let pow2 = |e: i32| f32::from_bits((e.wrapping_add(127) as u32) << 23);
    er * pow2(n1) * pow2(n2)
}
