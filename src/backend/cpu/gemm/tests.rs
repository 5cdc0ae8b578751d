//! The GEMM kernels against a naive triple loop, over shapes, strides and edge cases.

use super::kernel::Kernel;
use super::matrix::{is_injective, Element};
use super::*;
use proptest::prelude::*;

/// The signature of `sgemm`/`dgemm`.
type Gemm<T> = fn(usize, usize, usize, T, &[T], isize, isize, &[T], isize, isize, T, &mut [T], isize, isize);

/// GEMM forced onto kernel `K` (which the CPU must support), as `sgemm`/`dgemm` call it.
#[allow(clippy::too_many_arguments)]
fn gemm_on<K: Kernel<In = <K as Kernel>::T>>(
    m: usize,
    n: usize,
    k: usize,
    alpha: K::T,
    a: &[K::T],
    rsa: isize,
    csa: isize,
    b: &[K::T],
    rsb: isize,
    csb: isize,
    beta: K::T,
    c: &mut [K::T],
    rsc: isize,
    csc: isize,
) {
    let a = (a, rsa, csa);
    let (b, c) = ((b, rsb, csb), (c, rsc, csc));
    run::<K>(Problem::new([m, n, k], alpha, a, b, beta, c));
}

/// Each kernel of the build that this CPU can run, with its name, for the `T` GEMM: the
/// SIMD ones are tested whichever `sgemm` dispatches to, so every kernel a CPU supports is
/// checked there (and an AVX-512 CPU also checks the AVX2 kernel).
fn kernels<T: TestFloat>() -> Vec<(&'static str, Gemm<T>)> {
    let mut out: Vec<(&'static str, Gemm<T>)> = vec![("portable", T::PORTABLE)];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            out.push(("avx512", T::AVX512));
        }
        if avx2_fma() {
            out.push(("avx2", T::AVX2));
        }
    }
    out
}

trait TestFloat: Element + std::fmt::Debug {
    const EPSILON: f64;
    const PORTABLE: Gemm<Self>;
    #[cfg(target_arch = "x86_64")]
    const AVX512: Gemm<Self>;
    #[cfg(target_arch = "x86_64")]
    const AVX2: Gemm<Self>;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
}

impl TestFloat for f32 {
    const EPSILON: f64 = f32::EPSILON as f64;
    const PORTABLE: Gemm<f32> = gemm_on::<Portable<f32, 4, 8>>;
    #[cfg(target_arch = "x86_64")]
    const AVX512: Gemm<f32> = gemm_on::<avx512::Zmm<f32>>;
    #[cfg(target_arch = "x86_64")]
    const AVX2: Gemm<f32> = gemm_on::<avx2::Ymm<f32>>;
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self.into()
    }
}

impl TestFloat for f64 {
    const EPSILON: f64 = f64::EPSILON;
    const PORTABLE: Gemm<f64> = gemm_on::<Portable<f64, 4, 4>>;
    #[cfg(target_arch = "x86_64")]
    const AVX512: Gemm<f64> = gemm_on::<avx512::Zmm<f64>>;
    #[cfg(target_arch = "x86_64")]
    const AVX2: Gemm<f64> = gemm_on::<avx2::Ymm<f64>>;
    fn from_f64(x: f64) -> Self {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
}

/// How an operand is laid out in its slice.
#[derive(Clone, Copy, Debug)]
enum Layout {
    RowMajor,
    /// Column-major, i.e. the transpose of a row-major matrix.
    ColMajor,
    /// Row-major with 3 unused slots after each row.
    PaddedRows,
    /// Column-major with 5 unused slots after each column.
    PaddedCols,
    /// Every other slot of a row-major matrix with one spare slot per row.
    Strided,
    /// One row repeated (row stride 0); only for the inputs.
    BroadcastRows,
}

impl Layout {
    /// `(rs, cs, slice length)` of a `rows×cols` matrix; the slice is exactly as long as
    /// the last element needs.
    fn strides(self, rows: usize, cols: usize) -> (usize, usize, usize) {
        let (rs, cs) = match self {
            Layout::RowMajor => (cols, 1),
            Layout::ColMajor => (1, rows),
            Layout::PaddedRows => (cols + 3, 1),
            Layout::PaddedCols => (1, rows + 5),
            Layout::Strided => (2 * cols + 1, 2),
            Layout::BroadcastRows => (0, 1),
        };
        let len = if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        };
        (rs, cs, len)
    }
}

#[derive(Clone, Debug)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    layouts: [Layout; 3],
    alpha: f64,
    beta: f64,
    seed: u64,
    /// B's values rounded to bf16, so that a bf16 copy of B holds exactly the reference's values.
    bf16_b: bool,
    /// A's values rounded to bf16 likewise (for [`bgemm`]).
    bf16_a: bool,
}

/// Uniform values in [-1, 1) from a xorshift generator.
fn random_values(seed: u64, len: usize) -> Vec<f64> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

/// Slots of C's slice that are not elements of the view must come back untouched.
const UNTOUCHED: f64 = 12345.0;

/// Runs `gemm` on `case` and compares every element of C with an f64 triple loop:
/// `|got - ref| <= atol + rtol·mag` with `rtol = (k + 2)·ε`, the classic bound for a
/// length-k dot product, `mag = |alpha|·Σ_p |a_ip·b_pj| + |beta·c_ij|` and `atol = ε`.
/// With `beta == 0`, C starts as NaN, which must be overwritten.
fn check<T: TestFloat>(case: &Case, gemm: Gemm<T>) -> Result<(), TestCaseError> {
    let Case {
        m, n, k, alpha, beta, ..
    } = *case;
    let [la, lb, lc] = case.layouts;
    let (rsa, csa, len_a) = la.strides(m, k);
    let (rsb, csb, len_b) = lb.strides(k, n);
    let (rsc, csc, len_c) = lc.strides(m, n);
    let values = |seed: u64, len: usize, bf16: bool| -> Vec<T> {
        let round = |x: f64| if bf16 { half::bf16::from_f64(x).to_f64() } else { x };
        random_values(seed, len)
            .into_iter()
            .map(round)
            .map(T::from_f64)
            .collect()
    };
    let a = values(case.seed, len_a, case.bf16_a);
    let b = values(!case.seed, len_b, case.bf16_b);
    let c_values = random_values(case.seed.rotate_left(32), m * n);
    let mut c = vec![T::from_f64(UNTOUCHED); len_c];
    for i in 0..m {
        for j in 0..n {
            let init = if beta == 0.0 { f64::NAN } else { c_values[i * n + j] };
            c[i * rsc + j * csc] = T::from_f64(init);
        }
    }
    let c0 = c.clone();
    let (alpha_t, beta_t) = (T::from_f64(alpha), T::from_f64(beta));
    let s = |stride: usize| stride as isize;
    let (a_s, b_s, c_s) = ((s(rsa), s(csa)), (s(rsb), s(csb)), (s(rsc), s(csc)));
    gemm(
        m, n, k, alpha_t, &a, a_s.0, a_s.1, &b, b_s.0, b_s.1, beta_t, &mut c, c_s.0, c_s.1,
    );

    let mut in_view = vec![false; len_c];
    for i in 0..m {
        for j in 0..n {
            let (mut dot, mut mag) = (0.0, 0.0);
            for p in 0..k {
                let prod = a[i * rsa + p * csa].to_f64() * b[p * rsb + j * csb].to_f64();
                dot += prod;
                mag += prod.abs();
            }
            let old = c0[i * rsc + j * csc].to_f64();
            let (scaled_old, old_mag) = if beta == 0.0 {
                (0.0, 0.0)
            } else {
                (beta * old, (beta * old).abs())
            };
            let expected = alpha * dot + scaled_old;
            let got = c[i * rsc + j * csc].to_f64();
            let tol = T::EPSILON + (k as f64 + 2.0) * T::EPSILON * (alpha.abs() * mag + old_mag);
            prop_assert!(
                (got - expected).abs() <= tol,
                "C[{i},{j}] = {got}, expected {expected} (tolerance {tol})"
            );
            in_view[i * rsc + j * csc] = true;
        }
    }
    for (slot, (&x, _)) in c.iter().zip(&in_view).enumerate().filter(|(_, (_, &v))| !v) {
        prop_assert_eq!(x.to_f64(), UNTOUCHED, "slot {} outside C was written", slot);
    }
    Ok(())
}

/// Dimensions: 0, 1, everything up to 70 (primes, non-multiples of MR = 4, 12 and
/// NR = 4, 8, 16, 32) and sizes that cross KC (256) into several blocks.
fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0..=70usize,
        1 => prop::sample::select(vec![97, 129, 257, 300, 385, 401]),
    ]
}

fn input_layout() -> impl Strategy<Value = Layout> {
    prop::sample::select(vec![
        Layout::RowMajor,
        Layout::ColMajor,
        Layout::PaddedRows,
        Layout::PaddedCols,
        Layout::Strided,
        Layout::BroadcastRows,
    ])
}

fn output_layout() -> impl Strategy<Value = Layout> {
    prop::sample::select(vec![
        Layout::RowMajor,
        Layout::ColMajor,
        Layout::PaddedRows,
        Layout::PaddedCols,
        Layout::Strided,
    ])
}

fn case() -> impl Strategy<Value = Case> {
    (
        (dim(), dim(), dim()),
        (input_layout(), input_layout(), output_layout()),
        prop::sample::select(vec![1.0, -1.5, 0.5, 0.0]),
        prop::sample::select(vec![0.0, 1.0, -0.75, 2.0]),
        any::<u64>(),
    )
        .prop_map(|((m, n, k), (la, lb, lc), alpha, beta, seed)| Case {
            m,
            n,
            k,
            layouts: [la, lb, lc],
            alpha,
            beta,
            seed,
            bf16_b: false,
            bf16_a: false,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn sgemm_matches_reference(case in case()) {
        check::<f32>(&case, sgemm)?;
    }

    #[test]
    fn dgemm_matches_reference(case in case()) {
        check::<f64>(&case, dgemm)?;
    }

    #[test]
    fn every_kernel_sgemm_matches_reference(case in case()) {
        for (name, gemm) in kernels::<f32>() {
            check::<f32>(&case, gemm).map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
        }
    }

    #[test]
    fn every_kernel_dgemm_matches_reference(case in case()) {
        for (name, gemm) in kernels::<f64>() {
            check::<f64>(&case, gemm).map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
        }
    }
}

fn fixed(m: usize, n: usize, k: usize, layouts: [Layout; 3], beta: f64) -> Case {
    Case {
        m,
        n,
        k,
        layouts,
        alpha: 0.5,
        beta,
        seed: (m * 1_000_003 + n * 1009 + k) as u64,
        bf16_b: false,
        bf16_a: false,
    }
}

/// Several KC and NC blocks, several threads, partial tiles on every edge.
#[test]
fn large_products_match_reference() {
    use Layout::*;
    for layouts in [
        [RowMajor; 3],
        [ColMajor, RowMajor, ColMajor],
        [RowMajor, ColMajor, PaddedRows],
    ] {
        for beta in [0.0, 1.0] {
            let case = fixed(131, 1601, 797, layouts, beta);
            for (name, gemm) in kernels::<f32>() {
                check::<f32>(&case, gemm).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            for (name, gemm) in kernels::<f64>() {
                check::<f64>(&case, gemm).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }
}

/// Shapes split over threads by rows, by columns, and too small to split.
#[test]
fn tall_and_wide_products_match_reference() {
    let layouts = [Layout::RowMajor; 3];
    for (m, n, k) in [
        (2000, 7, 150),
        (7, 2000, 150),
        (64, 64, 256),
        (64, 64, 64),
        (1, 777, 300),
    ] {
        for (name, gemm) in kernels::<f32>() {
            check::<f32>(&fixed(m, n, k, layouts, 1.0), gemm).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        for (name, gemm) in kernels::<f64>() {
            check::<f64>(&fixed(m, n, k, layouts, 0.0), gemm).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

/// Long products (k at least 8 times m and n, or twice and the smaller operand at least 4 MiB)
/// run as two halves along k, the second into a scratch matrix added to C afterwards
/// (`driver::split_k`): a C row-major, column-major (transposed first) and strided (added
/// element by element), beta 0 and not, odd k, sides not multiples of the tiles.
#[test]
fn long_k_products_match_reference() {
    use Layout::*;
    for (m, n, k, layouts, beta) in [
        (13, 40, 3000, [RowMajor; 3], 1.0),
        (45, 7, 5001, [ColMajor, RowMajor, ColMajor], 0.0),
        (30, 33, 2500, [PaddedRows, PaddedCols, Strided], -0.75),
        (4, 70, 4099, [RowMajor, ColMajor, PaddedRows], 0.0),
        (333, 517, 3163, [RowMajor, RowMajor, RowMajor], 1.0),
        (517, 333, 3163, [ColMajor, RowMajor, ColMajor], 0.0),
    ] {
        assert!(
            super::driver::long_k_half::<Portable<f32, 4, 8>>(m, n, k).is_some(),
            "{m}x{n}x{k} is not cut along k"
        );
        let case = fixed(m, n, k, layouts, beta);
        for (name, gemm) in kernels::<f32>() {
            check::<f32>(&case, gemm).unwrap_or_else(|e| panic!("{name} {m}x{n}x{k}: {e}"));
        }
        for (name, gemm) in kernels::<f64>() {
            check::<f64>(&case, gemm).unwrap_or_else(|e| panic!("{name} {m}x{n}x{k}: {e}"));
        }
        check_bf16(&case).unwrap_or_else(|e| panic!("bf16 {m}x{n}x{k}: {e}"));
    }
    // the GPT-2 products stay whole: nanoGPT's and the blocks' dW (k = B·T), the LM head's
    // forward and dW, the products into 768 columns with k = 768 or at 4 × 512; its dX (k = the
    // vocabulary) is cut, and so are the products into 768 columns with k = 3072 or 2304 at
    // 2 × 256 (A of 6 and 4.5 MiB, which each of two column slabs would pack whole) and the
    // attention projection's dW at 4 × 512
    for (m, n, k, cut) in [
        (128, 128, 768, false),
        (384, 128, 768, false),
        (65, 128, 768, false),
        (768, 3072, 512, false),
        (512, 768, 768, false),
        (2048, 768, 3072, false),
        (3072, 768, 2048, false),
        (512, 768, 3072, true),
        (512, 768, 2304, true),
        (768, 768, 2048, true),
        (512, 50257, 768, false),
        (50257, 768, 512, false),
        (512, 768, 50257, true),
        (2048, 768, 50257, true),
    ] {
        let half = super::driver::long_k_half::<Portable<f32, 4, 8>>(m, n, k);
        assert_eq!(half.is_some(), cut, "{m}x{n}x{k}");
    }
}

/// The micro-kernels' edge tiles (at most 4 or 8 rows, at most LANES columns: copies of the loop
/// with fewer accumulators) give each element of C the bits the full tile gives it: the top-left
/// `mr×nr` corner of a full 12×32 (AVX-512 f32) product, beta 0 and 1, over two blocks of k, is
/// the product of the corner's rows and columns alone.
#[test]
fn edge_tiles_give_the_full_tiles_bits() {
    fn case<T: TestFloat>() {
        let (m, n, k) = (12, 32, 300);
        let a: Vec<T> = random_values(5, m * k).into_iter().map(T::from_f64).collect();
        let b: Vec<T> = random_values(6, k * n).into_iter().map(T::from_f64).collect();
        let c0: Vec<T> = random_values(7, m * n).into_iter().map(T::from_f64).collect();
        for (name, gemm) in kernels::<T>() {
            for beta in [T::ZERO, T::ONE] {
                // A's first `rows` rows times B's first `cols` columns into C's corner
                let product = |rows: usize, cols: usize| {
                    let (mut c, s) = (c0.clone(), n as isize);
                    gemm(rows, cols, k, T::ONE, &a, k as isize, 1, &b, s, 1, beta, &mut c, s, 1);
                    c
                };
                let full = product(m, n);
                for (mr, nr) in [(1, 32), (4, 32), (5, 17), (8, 16), (9, 1), (12, 8), (3, 3)] {
                    let part = product(mr, nr);
                    for (at, (&got, &c0)) in part.iter().zip(&c0).enumerate() {
                        let (i, j) = (at / n, at % n);
                        let want = if i < mr && j < nr { full[at] } else { c0 };
                        assert_eq!(
                            got.to_f64().to_bits(),
                            want.to_f64().to_bits(),
                            "{name} {mr}x{nr} beta {beta:?}: C[{i},{j}] = {got:?}, want {want:?}"
                        );
                    }
                }
            }
        }
    }
    case::<f32>();
    case::<f64>();
}

/// A SIMD kernel's tile reading its operands in place (A from its rows or its columns, B from its
/// rows: `Kernel::TILE_IN_PLACE`, which the driver uses wherever the kernel has one) gives the
/// bits of its tile over the panels `pack_a` and `pack_b` make of the same operands, for one or
/// two vectors of columns, several lengths of k, beta 0 and not.
#[cfg(target_arch = "x86_64")]
#[test]
fn tiles_read_in_place_give_the_packed_tiles_bits() {
    use super::kernel::Panel;
    use super::matrix::{Epilogue, MatMut, MatRef};

    fn case<T: TestFloat, K: Kernel<T = T, In = T>>(name: &str) {
        let tile_in_place = K::TILE_IN_PLACE.unwrap_or_else(|| panic!("{name}: no in-place tile"));
        let (mr, nr) = (K::MR, K::NR);
        for (kc, beta) in [(1, 0.0), (7, 1.0), (64, -0.5), (257, 0.0)] {
            let values = |seed, len| {
                random_values(seed, len)
                    .into_iter()
                    .map(T::from_f64)
                    .collect::<Vec<T>>()
            };
            // A mr×kc in a row-major buffer with 3 spare slots a row and a column-major one with 5
            // a column; B kc×nr row-major with 9 spare slots a row
            let (a_rows, a_cols, b) = (
                values(1, mr * (kc + 3)),
                values(2, kc * (mr + 5)),
                values(3, kc * (nr + 9)),
            );
            let a_row_major = MatRef {
                ptr: a_rows.as_ptr(),
                rs: kc + 3,
                cs: 1,
            };
            let a_col_major = MatRef {
                ptr: a_cols.as_ptr(),
                rs: 1,
                cs: mr + 5,
            };
            let b_view = MatRef {
                ptr: b.as_ptr(),
                rs: nr + 9,
                cs: 1,
            };
            let c0 = values(4, mr * nr);
            let ep = Epilogue {
                alpha: T::from_f64(1.5),
                beta: T::from_f64(beta),
            };
            for cols in [nr / 2, nr] {
                for a in [a_row_major, a_col_major] {
                    let (mut a_pack, mut b_pack) = (vec![T::ZERO; mr * kc], vec![T::ZERO; kc * nr]);
                    let (mut packed, mut in_place) = (c0.clone(), c0.clone());
                    let c = |c: &mut [T]| MatMut {
                        ptr: c.as_mut_ptr(),
                        rs: nr,
                        cs: 1,
                    };
                    // SAFETY: the CPU supports K (the caller checked); the views lie inside their
                    // buffers (mr×kc, kc×nr), the panels hold kc·MR and kc·NR elements, C is mr×nr.
                    unsafe {
                        K::pack_a(mr, kc, a, &mut a_pack);
                        K::pack_b(kc, nr, b_view, &mut b_pack);
                        K::tile(kc, a_pack.as_ptr(), b_pack.as_ptr(), c(&mut packed), mr, cols, &ep);
                        let a_panel = Panel {
                            ptr: a.ptr,
                            step: a.cs,
                            lane: a.rs,
                        };
                        let b_panel = Panel {
                            ptr: b.as_ptr(),
                            step: b_view.rs,
                            lane: 1,
                        };
                        tile_in_place(kc, a_panel, b_panel, c(&mut in_place), mr, cols, &ep);
                    }
                    let bits = |c: &[T]| c.iter().map(|x| x.to_f64().to_bits()).collect::<Vec<_>>();
                    let layout = if a.cs == 1 { "row-major" } else { "column-major" };
                    assert_eq!(
                        bits(&in_place),
                        bits(&packed),
                        "{name}: A {layout}, kc {kc}, {cols} columns, beta {beta}"
                    );
                }
            }
        }
    }
    if std::arch::is_x86_feature_detected!("avx512f") {
        case::<f32, avx512::Zmm<f32>>("avx512 f32");
        case::<f64, avx512::Zmm<f64>>("avx512 f64");
    }
    if avx2_fma() {
        case::<f32, avx2::Ymm<f32>>("avx2 f32");
        case::<f64, avx2::Ymm<f64>>("avx2 f64");
    }
}

#[test]
fn k_zero_scales_c_by_beta() {
    let mut c = [f32::NAN; 6];
    sgemm(2, 3, 0, 1.0, &[], 0, 1, &[], 3, 1, 0.0, &mut c, 3, 1);
    assert_eq!(c, [0.0; 6]);
    let mut c = [1.0, 2.0, 3.0, 4.0];
    dgemm(2, 2, 0, 1.0, &[], 0, 1, &[], 2, 1, 2.0, &mut c, 2, 1);
    assert_eq!(c, [2.0, 4.0, 6.0, 8.0]);
}

#[test]
fn empty_outputs_are_no_ops() {
    let mut c: [f32; 0] = [];
    sgemm(0, 5, 7, 1.0, &[], 7, 1, &[1.0; 35], 5, 1, 0.0, &mut c, 5, 1);
    sgemm(5, 0, 7, 1.0, &[1.0; 35], 7, 1, &[], 0, 1, 0.0, &mut c, 0, 1);
    sgemm(0, 0, 0, 1.0, &[], 0, 1, &[], 0, 1, 0.0, &mut c, 0, 1);
}

#[test]
fn alpha_zero_does_not_read_a_or_b() {
    let a = [f32::NAN; 4];
    let mut c = [1.0f32, 2.0, 3.0, 4.0];
    sgemm(2, 2, 2, 0.0, &a, 2, 1, &a, 2, 1, 0.5, &mut c, 2, 1);
    assert_eq!(c, [0.5, 1.0, 1.5, 2.0]);
}

#[test]
#[should_panic(expected = "does not fit")]
fn rejects_a_too_short() {
    let mut c = [0.0f32; 4];
    sgemm(2, 2, 2, 1.0, &[1.0; 3], 2, 1, &[1.0; 4], 2, 1, 0.0, &mut c, 2, 1);
}

#[test]
#[should_panic(expected = "negative stride")]
fn rejects_negative_strides() {
    let mut c = [0.0f32; 4];
    sgemm(2, 2, 2, 1.0, &[1.0; 4], 2, -1, &[1.0; 4], 2, 1, 0.0, &mut c, 2, 1);
}

#[test]
#[should_panic(expected = "same slot")]
fn rejects_overlapping_c() {
    let mut c = [0.0f32; 2];
    sgemm(2, 2, 1, 1.0, &[1.0; 2], 1, 1, &[1.0; 2], 2, 1, 0.0, &mut c, 0, 1);
}

#[test]
fn injectivity() {
    assert!(is_injective(3, 4, 4, 1));
    assert!(is_injective(3, 4, 1, 3));
    assert!(is_injective(3, 4, 9, 2));
    assert!(is_injective(1, 4, 0, 1));
    assert!(is_injective(4, 1, 1, 0));
    assert!(!is_injective(3, 4, 3, 1));
    assert!(!is_injective(2, 2, 0, 1));
    assert!(!is_injective(2, 1, 0, 5));
    assert!(is_injective(5, 0, 0, 0));
}

/// The streamed loops (`m <= STREAM_MAX_M`) of instruction set `ISA` (an index into
/// [`streamed_isas`]), on B as f32 or, with `BF16`, on a bf16 copy of B (whose values the case
/// has rounded to bf16, so the f32 reference holds the same values).
#[allow(clippy::too_many_arguments)]
fn streamed_on<const ISA: usize, const BF16: bool>(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    rsa: isize,
    csa: isize,
    b: &[f32],
    rsb: isize,
    csb: isize,
    beta: f32,
    c: &mut [f32],
    rsc: isize,
    csc: isize,
) {
    let isa = streamed_isas()[ISA];
    if BF16 {
        let b16: Vec<half::bf16> = b.iter().map(|&x| half::bf16::from_f32(x)).collect();
        assert!(
            b16.iter().zip(b).all(|(h, &x)| h.to_f32() == x),
            "the case's B is not rounded to bf16"
        );
        streamed::stream_on(isa, m, n, k, alpha, a, rsa, csa, &b16, rsb, csb, beta, c, rsc, csc);
    } else {
        streamed::stream_on(isa, m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc);
    }
}

/// Every instruction set of the streamed loops, in a fixed order (index = `streamed_on`'s ISA).
fn streamed_isas() -> Vec<streamed::Isa> {
    vec![
        streamed::Isa::Portable,
        #[cfg(target_arch = "x86_64")]
        streamed::Isa::Avx2,
        #[cfg(target_arch = "x86_64")]
        streamed::Isa::Avx512,
    ]
}

/// The streamed loops this CPU can run, on f32 and bf16 B, with their names.
fn streamed_loops() -> Vec<(String, Gemm<f32>, bool)> {
    let all: [(Gemm<f32>, Gemm<f32>); 3] = [
        (streamed_on::<0, false>, streamed_on::<0, true>),
        (streamed_on::<1, false>, streamed_on::<1, true>),
        (streamed_on::<2, false>, streamed_on::<2, true>),
    ];
    streamed_isas()
        .into_iter()
        .zip(all)
        .filter(|(isa, _)| isa.is_supported())
        .flat_map(|(isa, (f32_b, bf16_b))| {
            [
                (format!("{isa:?} f32"), f32_b, false),
                (format!("{isa:?} bf16"), bf16_b, true),
            ]
        })
        .collect()
}

/// Products the streamed loops take: 1 to STREAM_MAX_M rows, A's and C's rows contiguous
/// (possibly padded), B contiguous along its columns (dot loop) or its rows (axpy loop).
fn streamed_case() -> impl Strategy<Value = Case> {
    use Layout::*;
    (
        (1..=STREAM_MAX_M, dim(), dim()),
        (
            prop::sample::select(vec![RowMajor, PaddedRows]),
            prop::sample::select(vec![ColMajor, PaddedCols, RowMajor, PaddedRows]),
            prop::sample::select(vec![RowMajor, PaddedRows]),
        ),
        prop::sample::select(vec![1.0, -1.5, 0.0]),
        prop::sample::select(vec![0.0, 1.0, -0.75]),
        any::<u64>(),
    )
        .prop_map(|((m, n, k), (la, lb, lc), alpha, beta, seed)| Case {
            m,
            n,
            k,
            layouts: [la, lb, lc],
            alpha,
            beta,
            seed,
            bf16_b: false,
            bf16_a: false,
        })
}

fn check_streamed(case: &Case) -> Result<(), TestCaseError> {
    for (name, gemm, bf16_b) in streamed_loops() {
        let case = Case { bf16_b, ..case.clone() };
        check::<f32>(&case, gemm).map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_streamed_loop_matches_reference(case in streamed_case()) {
        check_streamed(&case)?;
    }
}

/// Streamed products large enough to be split over threads, with partial column groups and
/// partial vectors at the end of k.
#[test]
fn large_streamed_products_match_reference() {
    use Layout::*;
    for (m, n, k, b) in [
        (1, 3001, 577, ColMajor),
        (4, 2003, 301, ColMajor),
        (3, 1999, 299, RowMajor),
    ] {
        for beta in [0.0, 1.0] {
            check_streamed(&fixed(m, n, k, [RowMajor, b, RowMajor], beta)).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

#[test]
fn streamed_products_do_not_read_a_or_b_when_alpha_is_zero() {
    let a = [f32::NAN; 4];
    let mut c = [1.0f32, 2.0, 3.0, 4.0];
    sgemm_streamed(2, 2, 2, 0.0, &a, 2, 1, &a, 1, 2, 0.5, &mut c, 2, 1);
    assert_eq!(c, [0.5, 1.0, 1.5, 2.0]);
}

#[test]
#[should_panic(expected = "cannot be streamed")]
fn streamed_products_reject_five_rows() {
    let mut c = [0.0f32; 5];
    sgemm_streamed(5, 1, 1, 1.0, &[1.0f32; 5], 1, 1, &[1.0f32], 1, 1, 0.0, &mut c, 1, 1);
}

/// `values` as bf16, each of which must be one already (the case rounded them) or NaN.
fn exactly_bf16(values: &[f32], name: &str) -> Vec<half::bf16> {
    let narrow: Vec<half::bf16> = values.iter().map(|&x| half::bf16::from_f32(x)).collect();
    assert!(
        narrow
            .iter()
            .zip(values)
            .all(|(h, &x)| h.to_f32() == x || (x.is_nan() && h.is_nan())),
        "the case's {name} is not rounded to bf16"
    );
    narrow
}

/// bf16 GEMM on kernel `K` (which the CPU must support) in [`sgemm`]'s form: the case's A and B,
/// rounded to bf16, are handed to the kernel as bf16.
#[allow(clippy::too_many_arguments)]
fn bgemm_kernel<K: Kernel<T = f32, In = half::bf16>>(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    rsa: isize,
    csa: isize,
    b: &[f32],
    rsb: isize,
    csb: isize,
    beta: f32,
    c: &mut [f32],
    rsc: isize,
    csc: isize,
) {
    let (a, b) = (exactly_bf16(a, "A"), exactly_bf16(b, "B"));
    let (a, b) = ((&a[..], rsa, csa), (&b[..], rsb, csb));
    run::<K>(Problem::new([m, n, k], alpha, a, b, beta, (c, rsc, csc)));
}

/// [`bgemm`] itself (whichever kernel it picks) in [`sgemm`]'s form.
#[allow(clippy::too_many_arguments)]
fn bgemm_public(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    rsa: isize,
    csa: isize,
    b: &[f32],
    rsb: isize,
    csb: isize,
    beta: f32,
    c: &mut [f32],
    rsc: isize,
    csc: isize,
) {
    let (a16, b16) = (exactly_bf16(a, "A"), exactly_bf16(b, "B"));
    bgemm(m, n, k, alpha, &a16, rsa, csa, &b16, rsb, csb, beta, c, rsc, csc);
}

/// Each bf16 kernel this CPU can run, and `bgemm`'s dispatch.
fn bf16_kernels() -> Vec<(&'static str, Gemm<f32>)> {
    let mut out: Vec<(&'static str, Gemm<f32>)> = vec![
        ("portable bf16", bgemm_kernel::<Portable<f32, 4, 8, half::bf16>>),
        ("bgemm", bgemm_public),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        if avx512bf16::supported() {
            out.push(("avx512bf16", bgemm_kernel::<avx512bf16::Bf16Dot>));
        } else {
            eprintln!("no AVX-512 BF16 on this CPU: the vdpbf16ps kernel is not tested");
        }
        if amx_bf16::supported() {
            out.push(("amx_bf16", bgemm_kernel::<amx_bf16::AmxBf16>));
        } else {
            eprintln!("no AMX-BF16 on this CPU (or the OS refused the tiles): the tdpbf16ps kernel is not tested");
        }
    }
    out
}

/// Runs `case` with A and B rounded to bf16 on every bf16 kernel. The tolerance of [`check`] holds:
/// the products of bf16 values are exact in f32 and vdpbf16ps rounds each of its two additions
/// to nearest (a length-k f32 sum of exact products is within (k - 1)·2⁻²⁴·Σ|a·b| of the exact sum,
/// half of check's (k + 2)·ε). Values of [-1, 1) rounded to bf16 are not subnormal, so the
/// instruction's flush to zero (see avx512bf16.rs) plays no part.
fn check_bf16(case: &Case) -> Result<(), TestCaseError> {
    let case = Case {
        bf16_a: true,
        bf16_b: true,
        ..case.clone()
    };
    for (name, gemm) in bf16_kernels() {
        check::<f32>(&case, gemm).map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
    }
    Ok(())
}

/// Dimensions for the bf16 kernel: [`dim`]'s, odd k included, and sizes around its KC (512).
fn bf16_dim() -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => dim(),
        1 => prop::sample::select(vec![511, 513, 1027]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn every_bf16_kernel_matches_reference(case in case(), k in bf16_dim()) {
        check_bf16(&Case { k, ..case })?;
    }
}

/// Several KC (512) and NC (1024) blocks of the bf16 kernel, several threads, odd k, partial tiles
/// on every edge, and each packing path: A along k (row-major) and across (column-major), B
/// across (row-major) and along k (column-major, a Linear's Wᵀ), odd strides (padded). With alpha
/// 1 and beta 0 or 1 into a row-major C, the AMX kernel's whole blocks go between its tiles and C
/// directly (its later KC blocks loading C's running sums); with alpha 0.5 through its write-back.
#[test]
fn large_bf16_products_match_reference() {
    use Layout::*;
    for (layouts, alpha, beta) in [
        ([RowMajor; 3], 0.5, 0.0),
        ([RowMajor, ColMajor, RowMajor], 0.5, 1.0),
        ([ColMajor, RowMajor, ColMajor], 0.5, 0.0),
        ([PaddedRows, PaddedCols, PaddedRows], 0.5, -0.75),
        ([RowMajor, ColMajor, RowMajor], 1.0, 0.0),
        ([ColMajor, RowMajor, RowMajor], 1.0, 1.0),
    ] {
        let case = Case {
            alpha,
            ..fixed(53, 2101, 1031, layouts, beta)
        };
        check_bf16(&case).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Where the CPU has AVX-512 BF16, `bgemm` runs on vdpbf16ps (or, for these 16 rows with AMX,
/// tdpbf16ps). Seen from outside through the instructions' documented semantics: they read a
/// subnormal bf16 (here 2⁻¹²⁷) as zero, where the portable kernel multiplies it exactly.
#[test]
fn bgemm_runs_on_vdpbf16ps_where_the_cpu_has_it() {
    if !has_bf16_dot() {
        eprintln!("skipped: this CPU has no AVX-512 BF16");
        return;
    }
    let (m, n, k) = (16, 40, 6);
    let tiny = half::bf16::from_bits(0x0040); // 2⁻¹²⁷, subnormal
    assert_eq!(tiny.to_f64(), 2f64.powi(-127));
    let a = vec![tiny; m * k];
    let b = vec![half::bf16::ONE; k * n];
    let (rsa, rsb) = (k as isize, n as isize);
    let mut c = vec![f32::NAN; m * n];
    bgemm(m, n, k, 1.0, &a, rsa, 1, &b, rsb, 1, 0.0, &mut c, rsb, 1);
    assert!(
        c.iter().all(|&x| x == 0.0),
        "bgemm did not run on vdpbf16ps: C[0, 0] = {}",
        c[0]
    );
    // The portable kernel multiplies subnormals exactly: the check above can tell them apart.
    let mut c = vec![f32::NAN; m * n];
    let (a, b, c_view) = ((&a[..], rsa, 1), (&b[..], rsb, 1), (&mut c[..], rsb, 1));
    run::<Portable<f32, 4, 8, half::bf16>>(Problem::new([m, n, k], 1.0, a, b, 0.0, c_view));
    assert!(c.iter().all(|&x| x == 6.0 * 2f32.powi(-127)), "C[0, 0] = {}", c[0]);
}

/// The layouts of a Linear's three products, as `[A, B, C]`: the forward `y = x·Wᵀ` (W read
/// transposed: B column-major), the input gradient `dX = dY·W` (B row-major) and the weight
/// gradient `dW = dYᵀ·X` (A column-major).
const LINEAR_LAYOUTS: [[Layout; 3]; 3] = [
    [Layout::RowMajor, Layout::ColMajor, Layout::RowMajor],
    [Layout::RowMajor, Layout::RowMajor, Layout::RowMajor],
    [Layout::ColMajor, Layout::RowMajor, Layout::RowMajor],
];

/// Every row count from 1 to 40, then 57 and 131 (around and across the AMX kernel's 16-row tiles
/// and 32-row blocks, the vdpbf16ps kernel's 12 rows), odd n and k spanning several 32-wide tiles
/// and k steps, each product of a Linear, on every bf16 kernel, against the f64 loop of [`check`].
#[test]
fn bf16_kernels_match_reference_on_every_row_count() {
    for m in (1..=40).chain([57, 131]) {
        for (layouts, beta) in LINEAR_LAYOUTS.into_iter().zip([0.0, 1.0, 0.0]) {
            check_bf16(&fixed(m, 97, 101, layouts, beta)).unwrap_or_else(|e| panic!("m = {m}, {layouts:?}: {e}"));
        }
    }
}

/// NaN and infinities in A or B reach exactly the elements of C that an f64 loop says they
/// reach (NaN where an infinity meets a zero or an infinity of the other sign, ±inf where one
/// survives), on every bf16 kernel and each product of a Linear; the other elements stay within
/// [`check`]'s bound.
#[test]
fn bf16_kernels_propagate_nan_and_inf() {
    use half::bf16;
    let (n, k) = (45, 77);
    for m in [5, 17, 40] {
        for layouts in LINEAR_LAYOUTS {
            let (rsa, csa, len_a) = layouts[0].strides(m, k);
            let (rsb, csb, len_b) = layouts[1].strides(k, n);
            let round = |x: f64| bf16::from_f64(x).to_f64() as f32;
            let mut a: Vec<f32> = random_values(m as u64, len_a).into_iter().map(round).collect();
            let mut b: Vec<f32> = random_values(!(m as u64), len_b).into_iter().map(round).collect();
            // row 3 of A: a NaN; row m - 1: +inf; B's row 50: -inf in column 40 and a zero in
            // column 7 (which meets A's +inf in the same step: NaN)
            a[3 * rsa + 10 * csa] = f32::NAN;
            a[(m - 1) * rsa + 50 * csa] = f32::INFINITY;
            b[50 * rsb + 7 * csb] = 0.0;
            b[60 * rsb + 40 * csb] = f32::NEG_INFINITY;
            for (name, gemm) in bf16_kernels() {
                let mut c = vec![f32::NAN; m * n];
                gemm(
                    m,
                    n,
                    k,
                    1.0,
                    &a,
                    rsa as isize,
                    csa as isize,
                    &b,
                    rsb as isize,
                    csb as isize,
                    0.0,
                    &mut c,
                    n as isize,
                    1,
                );
                let (mut nans, mut infs) = (0, 0);
                for i in 0..m {
                    for j in 0..n {
                        let (mut dot, mut mag) = (0.0f64, 0.0f64);
                        for p in 0..k {
                            let prod = f64::from(a[i * rsa + p * csa]) * f64::from(b[p * rsb + j * csb]);
                            dot += prod;
                            mag += prod.abs();
                        }
                        let got = f64::from(c[i * n + j]);
                        let at = format!("{name} {layouts:?} m = {m}: C[{i},{j}] = {got}, expected {dot}");
                        if dot.is_nan() {
                            nans += 1;
                            assert!(got.is_nan(), "{at}");
                        } else if dot.is_infinite() {
                            infs += 1;
                            assert_eq!(got, dot, "{at}");
                        } else {
                            let tol = f64::from(f32::EPSILON) * (1.0 + (k as f64 + 2.0) * mag);
                            assert!((got - dot).abs() <= tol, "{at}");
                        }
                    }
                }
                // the case reaches all three kinds: row 3 NaN, column 40 ±inf, C[m - 1, 7] NaN
                assert!(nans >= n && infs > 0, "{name}: {nans} NaN, {infs} inf");
            }
        }
    }
}

/// `run` on 4 threads gives the bits of `run` on one thread for kernel `K` (A, B given as f64
/// values converted by `to_in`): with C cut into slabs of rows or of columns, whichever `run`
/// picks for the shape, or the product cut in two along k (the last two shapes, the second by
/// the size of its operands in f32, whole in bf16), A row- and
/// column-major, beta 1, edges of every block and tile partial. On one thread, products not cut
/// along k are `gemm_serial`'s.
fn check_threads_keep_the_bits<K: Kernel<T = f32>>(name: &str, to_in: impl Fn(f64) -> K::In) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    for (m, n, k, a_column_major) in [
        (517, 300, 70, false),
        (131, 1601, 797, true),
        (9, 2000, 150, false),
        (37, 45, 3001, true),
        (333, 517, 3163, false),
    ] {
        let a: Vec<K::In> = random_values(1, m * k).into_iter().map(&to_in).collect();
        let b: Vec<K::In> = random_values(2, k * n).into_iter().map(&to_in).collect();
        let c0: Vec<f32> = random_values(3, m * n).into_iter().map(|x| x as f32).collect();
        let (rsa, csa) = if a_column_major {
            (1, m as isize)
        } else {
            (k as isize, 1)
        };
        let problem = |c: &mut [f32]| {
            let (a, b) = ((&a[..], rsa, csa), (&b[..], n as isize, 1));
            Problem::new([m, n, k], 0.5, a, b, 1.0, (c, n as isize, 1))
        };
        let mut threaded = c0.clone();
        let threaded_problem = problem(&mut threaded);
        pool.install(|| run::<K>(threaded_problem));
        let mut serial = c0.clone();
        let serial_problem = problem(&mut serial);
        one.install(|| run::<K>(serial_problem));
        if super::driver::long_k_half::<K>(m, n, k).is_none() {
            let mut direct = c0.clone();
            // SAFETY: the problem is validated, m, n, k > 0, C is this thread's alone, and
            // every caller checked that the CPU supports K.
            unsafe { super::driver::gemm_serial::<K>(problem(&mut direct)) };
            assert!(direct.iter().zip(&serial).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
        let first_difference = threaded
            .iter()
            .zip(&serial)
            .position(|(x, y)| x.to_bits() != y.to_bits());
        assert_eq!(
            first_difference, None,
            "{name} {m}x{n}x{k}: threaded and serial products differ"
        );
    }
}

#[test]
fn threads_do_not_change_the_bits_of_a_product() {
    let bf16 = |x: f64| half::bf16::from_f64(x);
    check_threads_keep_the_bits::<Portable<f32, 4, 8>>("portable", |x| x as f32);
    check_threads_keep_the_bits::<Portable<f32, 4, 8, half::bf16>>("portable bf16", bf16);
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            check_threads_keep_the_bits::<avx512::Zmm<f32>>("avx512", |x| x as f32);
        }
        if avx2_fma() {
            check_threads_keep_the_bits::<avx2::Ymm<f32>>("avx2", |x| x as f32);
        }
        if has_bf16_dot() {
            check_threads_keep_the_bits::<avx512bf16::Bf16Dot>("avx512bf16", bf16);
        }
        if amx_bf16::supported() {
            check_threads_keep_the_bits::<amx_bf16::AmxBf16>("amx_bf16", bf16);
        }
    }
}

/// The threads of a product split by rows need not arrive together: when they come one after
/// the other, in any order (the first taking its own run, then every other run from its back;
/// the later ones finding nothing left), the product still has the bits of one thread's. Shapes
/// with several blocks of k and of columns, partial tiles, and few row panels (items of column
/// groups).
fn check_late_shares_keep_the_bits<K: Kernel<T = f32>>(name: &str, to_in: impl Fn(f64) -> K::In) {
    for (m, n, k) in [(517, 300, 70), (200, 1100, 600), (61, 45, 300), (97, 33, 513)] {
        let a: Vec<K::In> = random_values(4, m * k).into_iter().map(&to_in).collect();
        let b: Vec<K::In> = random_values(5, k * n).into_iter().map(&to_in).collect();
        let c0: Vec<f32> = random_values(6, m * n).into_iter().map(|x| x as f32).collect();
        let problem = |c: &mut [f32]| {
            let (a, b) = ((&a[..], k as isize, 1), (&b[..], n as isize, 1));
            Problem::new([m, n, k], 0.5, a, b, 1.0, (c, n as isize, 1))
        };
        let mut serial = c0.clone();
        // SAFETY: the problem is validated, m, n, k > 0, C is this thread's alone, and every
        // caller checked that the CPU supports K.
        unsafe { super::driver::gemm_serial::<K>(problem(&mut serial)) };
        for order in [&[0, 1][..], &[1, 0], &[2, 0, 1]] {
            let mut in_turn = c0.clone();
            // SAFETY: as above.
            unsafe { super::driver::shares_in_turn::<K>(problem(&mut in_turn), order) };
            let first_difference = in_turn
                .iter()
                .zip(&serial)
                .position(|(x, y)| x.to_bits() != y.to_bits());
            assert_eq!(
                first_difference, None,
                "{name} {m}x{n}x{k}, shares in the order {order:?}: differs from one thread's product"
            );
        }
    }
}

#[test]
fn shares_that_arrive_late_finish_the_product_with_the_same_bits() {
    check_late_shares_keep_the_bits::<Portable<f32, 4, 8>>("portable", |x| x as f32);
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            check_late_shares_keep_the_bits::<avx512::Zmm<f32>>("avx512", |x| x as f32);
        }
        if amx_bf16::supported() {
            check_late_shares_keep_the_bits::<amx_bf16::AmxBf16>("amx_bf16", half::bf16::from_f64);
        }
    }
}

/// The `_into` forms (beta 0 into a new, uninitialised output) give bit for bit what the BLAS
/// forms give with beta 0, which the tests above check against f64 loops: on the blocked
/// kernels, threaded products, the streamed path (a few rows), a column-major C and k = 0
/// (zeros). C's view starts as NaN (standing in for uninitialised memory: it must all be
/// written), and the slots outside the view keep their value.
#[test]
fn into_forms_write_every_element_of_c_as_the_blas_forms_do() {
    use std::mem::MaybeUninit;
    const OUTSIDE: f32 = 7.0;
    // (m, n, k, row stride of C, column stride of C): row-major with padding, column-major
    let shapes = [
        (1, 40, 33, 41, 1),
        (4, 70, 300, 70, 1),
        (13, 29, 7, 1, 15),
        (130, 150, 90, 150, 1),
        (5, 6, 0, 6, 1),
    ];
    for (m, n, k, rsc, csc) in shapes {
        let len_c = (m - 1) * rsc + (n - 1) * csc + 1;
        let (a, b) = (random_values(m as u64, m * k), random_values(n as u64, k * n));
        let (a32, b32): (Vec<f32>, Vec<f32>) = (
            a.iter().map(|&x| x as f32).collect(),
            b.iter().map(|&x| x as f32).collect(),
        );
        let (a64, b64) = (a.clone(), b.clone());
        let (a16, b16): (Vec<bf16>, Vec<bf16>) = (
            a.iter().map(|&x| bf16::from_f64(x)).collect(),
            b.iter().map(|&x| bf16::from_f64(x)).collect(),
        );
        let (rsc_i, csc_i) = (rsc as isize, csc as isize);
        let (ki, ni) = (k as isize, n as isize);
        // C: NaN in the view, OUTSIDE elsewhere
        let fresh = |outside: f64| {
            let mut c = vec![outside; len_c];
            for i in 0..m {
                for j in 0..n {
                    c[i * rsc + j * csc] = f64::NAN;
                }
            }
            c
        };
        let same = |name: &str, got: Vec<f64>, want: Vec<f64>| {
            for (slot, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "{name} {m}×{n}×{k}: slot {slot}: {g} against {w}"
                );
            }
        };
        let uninit32 = || {
            fresh(OUTSIDE as f64)
                .into_iter()
                .map(|x| MaybeUninit::new(x as f32))
                .collect::<Vec<_>>()
        };
        // SAFETY (all three below): every slot was initialised with a value above, and the
        // `_into` calls write only values.
        let init32 = |c: Vec<MaybeUninit<f32>>| {
            c.into_iter()
                .map(|x| unsafe { x.assume_init() } as f64)
                .collect::<Vec<_>>()
        };

        let mut want = fresh(OUTSIDE as f64).into_iter().map(|x| x as f32).collect::<Vec<_>>();
        sgemm(m, n, k, 0.5, &a32, ki, 1, &b32, ni, 1, 0.0, &mut want, rsc_i, csc_i);
        let mut got = uninit32();
        sgemm_into(m, n, k, 0.5, &a32, ki, 1, &b32, ni, 1, &mut got, rsc_i, csc_i);
        same("sgemm", init32(got), want.iter().map(|&x| x as f64).collect());

        let mut want = fresh(OUTSIDE as f64);
        dgemm(m, n, k, 0.5, &a64, ki, 1, &b64, ni, 1, 0.0, &mut want, rsc_i, csc_i);
        let mut got: Vec<MaybeUninit<f64>> = fresh(OUTSIDE as f64).into_iter().map(MaybeUninit::new).collect();
        dgemm_into(m, n, k, 0.5, &a64, ki, 1, &b64, ni, 1, &mut got, rsc_i, csc_i);
        // SAFETY: as above.
        same(
            "dgemm",
            got.into_iter().map(|x| unsafe { x.assume_init() }).collect(),
            want,
        );

        let mut want = fresh(OUTSIDE as f64).into_iter().map(|x| x as f32).collect::<Vec<_>>();
        bgemm(m, n, k, 0.5, &a16, ki, 1, &b16, ni, 1, 0.0, &mut want, rsc_i, csc_i);
        let mut got = uninit32();
        bgemm_into(m, n, k, 0.5, &a16, ki, 1, &b16, ni, 1, &mut got, rsc_i, csc_i);
        same("bgemm", init32(got), want.iter().map(|&x| x as f64).collect());

        if csc == 1 && m <= STREAM_MAX_M {
            let mut want = fresh(OUTSIDE as f64).into_iter().map(|x| x as f32).collect::<Vec<_>>();
            sgemm_streamed(m, n, k, 0.5, &a32, ki, 1, &b16, ni, 1, 0.0, &mut want, rsc_i, 1);
            let mut got = uninit32();
            sgemm_streamed_into(m, n, k, 0.5, &a32, ki, 1, &b16, ni, 1, &mut got, rsc_i, 1);
            same("sgemm_streamed", init32(got), want.iter().map(|&x| x as f64).collect());
        }
        if k == 0 {
            assert!(want.iter().all(|&x| x == 0.0 || x == OUTSIDE), "k = 0 gives zeros");
        }
    }
}

/// Several weights sharing one A in one parallel region (`sgemm_streamed_many_into`): each C_i is
/// the single streamed product's, bit for bit, for f32 and bf16 weights, one to four rows, k with
/// a vector tail (and k = 0: zeros), outputs of one column, and sizes whose tasks (two or more
/// threads) cut through a weight and go on into the next.
#[test]
fn streamed_many_matches_one_product_per_weight() {
    use std::mem::MaybeUninit;
    fn case<W: Streamed>(m: usize, k: usize, ns: &[usize], seed: u64, to_w: impl Fn(f32) -> W) {
        let mut state = seed;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let rsa = k + 3;
        let a: Vec<f32> = (0..m * rsa).map(|_| next()).collect();
        let ws: Vec<Vec<W>> = ns.iter().map(|&n| (0..n * k).map(|_| to_w(next())).collect()).collect();
        let mut got: Vec<Vec<MaybeUninit<f32>>> = ns.iter().map(|&n| vec![MaybeUninit::new(f32::NAN); m * n]).collect();
        let w_refs: Vec<&[W]> = ws.iter().map(|w| &w[..]).collect();
        let mut c_refs: Vec<&mut [MaybeUninit<f32>]> = got.iter_mut().map(|c| &mut c[..]).collect();
        sgemm_streamed_many_into(m, k, &a, rsa, &w_refs, &mut c_refs);
        for ((w, &n), got) in ws.iter().zip(ns).zip(&got) {
            let mut want = vec![MaybeUninit::new(f32::NAN); m * n];
            sgemm_streamed_into(
                m,
                n,
                k,
                1.0,
                &a,
                rsa as isize,
                1,
                w,
                1,
                k as isize,
                &mut want,
                n as isize,
                1,
            );
            // SAFETY: both products write every element of their m×n outputs, which started
            // initialised (NaN) anyway.
            let bits = |c: &[MaybeUninit<f32>]| {
                c.iter()
                    .map(|x| unsafe { x.assume_init() }.to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(got), bits(&want), "m {m}, k {k}, n {n} of {ns:?}");
            if k == 0 {
                assert!(bits(got).iter().all(|&b| b == 0), "k = 0 gives zeros");
            }
        }
    }
    for (m, k, ns) in [
        (1, 576, &[576, 192, 192][..]),
        (1, 300, &[513, 77, 301]),
        (2, 37, &[1, 5, 1]),
        (3, 16, &[40, 40]),
        (4, 300, &[301, 263]),
        (1, 0, &[3, 4]),
        (2, 17, &[0, 9]),
    ] {
        case::<f32>(m, k, ns, 7 + m as u64, |x| x);
        case::<half::bf16>(m, k, ns, 11 + k as u64, half::bf16::from_f32);
    }
}

/// The streamed `vdpbf16ps` loop (`bgemm_streamed_into`, CPUs with AVX-512 BF16): against an
/// f64 reference of the same bf16 values (the products are exact; the f32 sums in another order
/// than the f64 one's are within k·2⁻²⁴·Σ|a·b|), for one to four rows, k below, at and past the
/// 32 elements of one instruction and with a masked tail, a partial group of columns, strided A
/// and C rows and alpha; alpha 0 and k 0 write zeros without reading A or B (NaN there); and the
/// shared-input form (`bgemm_streamed_many_into`) is the single one's, bit for bit.
#[test]
fn bf16_dot_streamed_matches_f64() {
    use half::bf16;
    use std::mem::MaybeUninit;
    if !has_bf16_dot() {
        eprintln!("skipped: this CPU has no AVX-512 BF16");
        return;
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        bf16::from_f32(((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
    };
    // SAFETY: every buffer passed starts initialised (NaN), and the products write only f32s
    let bits = |c: &[MaybeUninit<f32>]| {
        c.iter()
            .map(|x| unsafe { x.assume_init() }.to_bits())
            .collect::<Vec<_>>()
    };
    for (m, k, n) in [
        (1, 1, 1),
        (1, 31, 5),
        (2, 32, 8),
        (3, 33, 7),
        (4, 577, 13),
        (1, 576, 1030),
        (2, 64, 4),
    ] {
        let (rsa, rsc) = (k + 5, n + 2);
        let a: Vec<bf16> = (0..m * rsa).map(|_| next()).collect();
        // B = Wᵀ with W [n, k] row-major: column j of B is row j of W
        let w: Vec<bf16> = (0..n * k).map(|_| next()).collect();
        let alpha = 0.75f32;
        let mut c = vec![MaybeUninit::new(f32::NAN); m * rsc];
        bgemm_streamed_into(
            m,
            n,
            k,
            alpha,
            &a,
            rsa as isize,
            1,
            &w,
            1,
            k as isize,
            &mut c,
            rsc as isize,
            1,
        );
        for i in 0..m {
            for j in 0..n {
                let terms = (0..k).map(|p| a[i * rsa + p].to_f64() * w[j * k + p].to_f64());
                let (want, size) = terms.fold((0.0, 0.0), |(s, z), t| (s + t, z + t.abs()));
                // SAFETY: c started initialised (NaN), and the product writes f32s
                let got = unsafe { c[i * rsc + j].assume_init() } as f64;
                let tol = alpha as f64 * (k as f64 + 2.0) * 2f64.powi(-24) * size + 1e-30;
                assert!(
                    (got - alpha as f64 * want).abs() <= tol,
                    "m {m}, k {k}, n {n} at ({i}, {j}): {got} vs {}",
                    alpha as f64 * want
                );
            }
            // the gaps between C's rows are not written
            for j in n..rsc.min(c.len() - i * rsc) {
                // SAFETY: c started initialised (NaN)
                assert!(unsafe { c[i * rsc + j].assume_init() }.is_nan(), "wrote past row {i}");
            }
        }
        // the shared-input form, with this weight twice and a one-row weight
        let w1: Vec<bf16> = (0..k).map(|_| next()).collect();
        let mut c0 = vec![MaybeUninit::new(f32::NAN); m * n];
        let mut c1 = vec![MaybeUninit::new(f32::NAN); m];
        let mut c2 = vec![MaybeUninit::new(f32::NAN); m * n];
        bgemm_streamed_many_into(m, k, &a, rsa, &[&w, &w1, &w], &mut [&mut c0, &mut c1, &mut c2]);
        for (wi, ci, ni) in [(&w, &c0, n), (&w1, &c1, 1), (&w, &c2, n)] {
            let mut want = vec![MaybeUninit::new(f32::NAN); m * ni];
            bgemm_streamed_into(
                m,
                ni,
                k,
                1.0,
                &a,
                rsa as isize,
                1,
                wi,
                1,
                k as isize,
                &mut want,
                ni as isize,
                1,
            );
            assert_eq!(bits(ci), bits(&want), "many: m {m}, k {k}, n {ni}");
        }
    }
    // alpha 0 and k 0: zeros, A and B not read
    let nan = vec![bf16::NAN; 64];
    for (k, alpha) in [(0, 1.0), (32, 0.0)] {
        let mut c = vec![MaybeUninit::new(f32::NAN); 2];
        bgemm_streamed_into(1, 2, k, alpha, &nan, 32, 1, &nan, 1, 32, &mut c, 2, 1);
        assert_eq!(bits(&c), vec![0, 0], "k {k}, alpha {alpha}");
    }
}

/// The meter records each shape's calls, FLOPs (2·m·n·k a call) and a core time between the
/// calling thread's wall time and that times the pool's threads, with A's and B's layouts; off, it
/// records nothing. Other tests' products may be recorded meanwhile (the meter is global), so this
/// looks only at its own, odd shapes.
#[test]
fn the_meter_counts_each_shape_its_calls_flops_and_core_time() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    // (m, n, k): serial (2·37·41·43 flops), and split over the 2 threads
    let (small, big) = ((37, 41, 43), (301, 299, 97));
    let product = |(m, n, k): (usize, usize, usize)| {
        let a = vec![1f32; m * k];
        let b = vec![1f32; k * n];
        let mut c = vec![0f32; m * n];
        // A row-major, B column-major (a transposed view): "NT"
        sgemm(
            m, n, k, 1.0, &a, k as isize, 1, &b, 1, k as isize, 0.0, &mut c, n as isize, 1,
        );
        assert!(c.iter().all(|&x| x == k as f32));
    };
    product(small); // meter off: not recorded
    meter_start();
    let start = std::time::Instant::now();
    pool.install(|| {
        (0..3).for_each(|_| product(small));
        product(big);
    });
    let wall = start.elapsed().as_secs_f64();
    let records = meter_stop();
    product(small); // off again
    let find = |(m, n, k): (usize, usize, usize)| {
        let found: Vec<&GemmRecord> = records
            .iter()
            .filter(|r| (r.shape.m, r.shape.n, r.shape.k) == (m, n, k))
            .collect();
        assert_eq!(found.len(), 1, "{m}x{n}x{k}: {records:?}");
        found[0]
    };
    for (shape, calls) in [(small, 3), (big, 1)] {
        let r = find(shape);
        let (m, n, k) = shape;
        assert_eq!(r.calls, calls, "{r:?}");
        assert_eq!(r.flops, (calls as usize * 2 * m * n * k) as f64, "{r:?}");
        assert_eq!((r.shape.a, r.shape.b), (Order::Row, Order::Col), "{r:?}");
        assert!(r.core_s > 0.0 && r.core_s <= 2.0 * wall, "{r:?} in {wall} s");
    }
    assert!(meter_stop().is_empty(), "stopped, the meter holds nothing");
}

/// The FMA loop computes what it says (each of its 16 chains i + iters·x², summed), and the peak
/// it measures is a positive rate.
#[test]
#[cfg(target_arch = "x86_64")]
fn the_fma_loop_sums_its_chains_and_the_peak_is_measured() {
    let want = (0..16).map(|i| i as f32 + 10.0 * 0.25).sum::<f32>();
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected.
        assert_eq!(unsafe { avx512::fma_loop(10, 0.5) }, want);
    }
    if avx2_fma() {
        // SAFETY: AVX2 and FMA were detected.
        assert_eq!(unsafe { avx2::fma_loop(10, 0.5) }, want);
        let peak = fma_peak(0.01).expect("an FMA kernel");
        assert!(peak.is_finite() && peak > 1e9, "{peak} FLOP/s");
    }
}

/// The streamed dot loop's four-at-once lane sums give each vector's sum with the bits of
/// `_mm512_reduce_add_ps` (the same order of additions), on values whose sums round differently
/// in other orders.
#[test]
#[cfg(target_arch = "x86_64")]
fn four_lane_sums_at_once_have_the_bits_of_one_at_a_time() {
    use std::arch::x86_64::{_mm512_loadu_ps, _mm512_reduce_add_ps};
    if !std::arch::is_x86_feature_detected!("avx512f") {
        return;
    }
    let mut rng = crate::Rng::new(41);
    for _ in 0..200 {
        // magnitudes over 2⁻²⁰..2²⁰, both signs: every order of addition rounds differently
        let v: Vec<f32> = (0..64)
            .map(|_| (rng.normal() * 2f64.powf((40.0 * rng.uniform()).floor() - 20.0)) as f32)
            .collect();
        // SAFETY: AVX-512F was detected; each load reads 16 of the 64 elements.
        let (got, want) = unsafe {
            let vs: [_; 4] = std::array::from_fn(|i| _mm512_loadu_ps(v[16 * i..].as_ptr()));
            (avx512::lane_sums(vs), vs.map(|x| _mm512_reduce_add_ps(x)))
        };
        assert_eq!(got.map(f32::to_bits), want.map(f32::to_bits), "{v:?}");
    }
}

/// Every streamed loop this CPU runs reads an f16 B (a KV cache kept in f16) as the f32 loop reads
/// the same values widened, bit for bit (the widening is exact): 1 to 4 rows, B along its columns
/// (dot loop) and its rows (axpy loop), k and n off the vector widths, signs, zeros, subnormals
/// and the largest f16s among the values.
#[test]
fn the_streamed_loops_read_f16_b_as_its_f32_values() {
    let (n, k) = (37, 70);
    let b16: Vec<half::f16> = random_values(0x2545_f491_4f6c_dd1d, k * n)
        .into_iter()
        .enumerate()
        .map(|(i, x)| match i % 97 {
            0 => half::f16::from_bits(1), // the smallest subnormal
            1 => half::f16::MAX,
            2 => half::f16::ZERO,
            _ => half::f16::from_f64(x),
        })
        .collect();
    let b32: Vec<f32> = b16.iter().map(|x| x.to_f32()).collect();
    for isa in streamed_isas().into_iter().filter(|isa| isa.is_supported()) {
        for m in 1..=STREAM_MAX_M {
            let a: Vec<f32> = random_values(m as u64, m * k).into_iter().map(|x| x as f32).collect();
            // B (k × n) with its columns contiguous (the dot loop), then its rows (the axpy loop)
            for (rsb, csb) in [(1, k as isize), (n as isize, 1)] {
                let mut want = vec![0f32; m * n];
                streamed::stream_on(
                    isa, m, n, k, 1.0, &a, k as isize, 1, &b32, rsb, csb, 0.0, &mut want, n as isize, 1,
                );
                let mut got = vec![0f32; m * n];
                streamed::stream_on(
                    isa, m, n, k, 1.0, &a, k as isize, 1, &b16, rsb, csb, 0.0, &mut got, n as isize, 1,
                );
                assert_eq!(
                    got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    "{isa:?}, m {m}, B strides ({rsb}, {csb})"
                );
            }
        }
    }
}
