//! `linear_quantized` (y = x·Wᵀ with W in ggml blocks) against the dequantize-then-f64 product,
//! W dequantized by `kiln::gguf::dequantize` (bit-equal to the `gguf` Python package), on every
//! instruction set this CPU runs, over random shapes: row counts that are not multiples of the
//! rows per task or of the 16-row groups (a partial last group), block counts that are odd and
//! not multiples of the SIMD width.
//!
//! Tolerance: x is rounded to `xd·round(x/xd)` with `xd = max|x_block|/127`, an error of at most
//! `xd/2` per element, so each output may differ from the exact product by
//! `Σ_blocks max|x_block|/254 · Σ_block |w|` plus f32 rounding (bounded here by 2e-5·Σ|x·w|).
//! A second check removes that rounding: x whose blocks are integers with one ±127 is quantized
//! exactly, and then the result must agree to f32 rounding alone.

use kiln::backend::cpu::linear_quantized::{
    linear_dequantized, linear_quantized, linear_quantized_gemm_on, linear_quantized_input_grad,
    linear_quantized_many_on, linear_quantized_on, QuantIsa, GEMM_FROM_ROWS, ROWS_PER_TASK,
};
use kiln::ops::linear_quantized::{QuantFormat, QuantizedMatrix};
use kiln::{DType, Device, Tensor};

#[path = "common/quantized.rs"]
mod quantized;
use quantized::{random_block, random_matrix, Gen};

#[test]
fn the_row_groups_give_back_the_gguf_bytes() {
    let mut g = Gen(11);
    for format in QuantFormat::ALL {
        for (rows, blocks) in [(1, 1), (15, 3), (16, 2), (17, 5), (40, 1)] {
            let cols = format.block_size() * blocks;
            let bytes: Vec<u8> = (0..rows * blocks).flat_map(|_| random_block(format, &mut g)).collect();
            let w = QuantizedMatrix::new(format, rows, cols, bytes.clone()).unwrap();
            assert!(w.gguf_rows(0..rows) == bytes, "{format} [{rows}, {cols}]");
            let row_bytes = w.row_bytes();
            assert!(
                w.gguf_rows(rows - 1..rows) == bytes[(rows - 1) * row_bytes..],
                "{format} last row"
            );
            let groups = if format.is_grouped() {
                rows.div_ceil(16) * 16
            } else {
                rows
            };
            assert_eq!(w.stored_bytes().len(), groups * row_bytes, "{format} [{rows}, {cols}]");
        }
    }
}

/// y = x·Wᵀ in f64, and for each output the tolerance described at the top.
fn reference(x: &[f32], w: &[f32], k: usize, exact_x: bool) -> (Vec<f64>, Vec<f64>) {
    let (m, n) = (x.len() / k, w.len() / k);
    let (mut y, mut tol) = (Vec::new(), Vec::new());
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        for j in 0..n {
            let wr = &w[j * k..(j + 1) * k];
            y.push(xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum());
            let magnitude: f64 = xr.iter().zip(wr).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
            let rounding: f64 = xr
                .chunks(32)
                .zip(wr.chunks(32))
                .map(|(xb, wb)| {
                    let amax = xb.iter().fold(0f64, |a, v| a.max(v.abs() as f64));
                    amax / 254.0 * wb.iter().map(|v| v.abs() as f64).sum::<f64>()
                })
                .sum();
            tol.push(2e-5 * magnitude + 1e-6 + if exact_x { 0.0 } else { rounding });
        }
    }
    (y, tol)
}

fn check_format(format: QuantFormat, seed: u64) {
    let mut g = Gen(seed);
    let isas: Vec<QuantIsa> = QuantIsa::ALL.into_iter().filter(|i| i.is_supported()).collect();
    eprintln!("{format}: instruction sets {isas:?}");
    for case in 0..24 {
        let max_blocks = if format.block_size() == 32 { 19 } else { 4 };
        let k = format.block_size() * (1 + g.below(max_blocks));
        let n = 1 + g.below(3 * ROWS_PER_TASK + 5);
        let m = 1 + g.below(20);
        let (wq, w) = random_matrix(format, n, k, &mut g);
        let exact_x = case % 3 == 0;
        let x: Vec<f32> = if exact_x {
            // integers in each block with one ±127: quantized without rounding
            (0..m * k)
                .map(|j| match j % 32 {
                    5 => {
                        if g.next().is_multiple_of(2) {
                            127.0
                        } else {
                            -127.0
                        }
                    }
                    _ => g.below(255) as f32 - 127.0,
                })
                .collect()
        } else {
            (0..m * k).map(|_| 3.0 * g.unit()).collect()
        };
        let (want, tol) = reference(&x, &w, k, exact_x);
        for &isa in &isas {
            let got = linear_quantized_on(isa, &x, &wq).unwrap();
            assert_eq!(got.len(), m * n);
            for (e, ((&got, &want), &tol)) in got.iter().zip(&want).zip(&tol).enumerate() {
                assert!(
                    (got as f64 - want).abs() <= tol,
                    "{format} {isa:?} x [{m}, {k}] W [{n}, {k}] (exact x: {exact_x}): y[{}, {}] = {got}, want {want} ± {tol}",
                    e / n,
                    e % n
                );
            }
        }
    }
}

#[test]
fn q4_0_matches_the_dequantized_product() {
    check_format(QuantFormat::Q4_0, 1);
}

#[test]
fn q4_1_matches_the_dequantized_product() {
    check_format(QuantFormat::Q4_1, 2);
}

#[test]
fn q8_0_matches_the_dequantized_product() {
    check_format(QuantFormat::Q8_0, 3);
}

#[test]
fn q4_k_matches_the_dequantized_product() {
    check_format(QuantFormat::Q4_K, 4);
}

#[test]
fn q6_k_matches_the_dequantized_product() {
    check_format(QuantFormat::Q6_K, 5);
}

/// The register-blocked GEMM (each weight tile unpacked once for several rows of x; AMX tile
/// products where the CPU and OS allow them) on every instruction set this CPU runs, for m = 1..40
/// rows of x and some larger m, against the same f64 reference and bound as the row-at-a-time
/// kernels: weight rows not a multiple of the 16-row groups, k a multiple of 32 but not of 256.
fn check_gemm(format: QuantFormat, seed: u64) {
    let mut g = Gen(seed);
    let isas: Vec<QuantIsa> = QuantIsa::ALL.into_iter().filter(|i| i.is_supported()).collect();
    if !QuantIsa::Amx.is_supported() {
        eprintln!("{format}: AMX-INT8 absent or not granted here, its kernel is not tested");
    }
    eprintln!("{format}: instruction sets {isas:?}");
    let ms: Vec<usize> = (1..=40).chain([57, 100, 131]).collect();
    for (case, &m) in ms.iter().enumerate() {
        let k = 32 * [1, 3, 7, 18, 9, 25][case % 6];
        let n = 1 + g.below(70);
        let (wq, w) = random_matrix(format, n, k, &mut g);
        let exact_x = case % 4 == 0;
        let x: Vec<f32> = if exact_x {
            (0..m * k)
                .map(|j| {
                    if j % 32 == 7 {
                        127.0
                    } else {
                        g.below(255) as f32 - 127.0
                    }
                })
                .collect()
        } else {
            (0..m * k).map(|_| 3.0 * g.unit()).collect()
        };
        let (want, tol) = reference(&x, &w, k, exact_x);
        for &isa in &isas {
            let got = linear_quantized_gemm_on(isa, &x, &wq).unwrap();
            assert_close(
                &format!("{format} {isa:?} GEMM x [{m}, {k}] W [{n}, {k}] (exact x: {exact_x})"),
                &got,
                &want,
                &tol,
            );
        }
    }
}

#[test]
fn q4_0_gemm_matches_the_dequantized_product() {
    check_gemm(QuantFormat::Q4_0, 21);
}

#[test]
fn q4_1_gemm_matches_the_dequantized_product() {
    check_gemm(QuantFormat::Q4_1, 22);
}

#[test]
fn q8_0_gemm_matches_the_dequantized_product() {
    check_gemm(QuantFormat::Q8_0, 23);
}

/// Every instruction set's GEMM gives the portable one's result up to f32 summation order (the
/// 8-bit x is the same, the integer sums exact), and Q8_0's extreme quants (-128, 127) against
/// x's ±127 do not overflow the SIMD kernels' intermediate sums.
#[test]
fn the_gemm_kernels_agree_with_the_portable_one_on_extreme_quants() {
    let mut g = Gen(24);
    let (m, n, k) = (37, 45, 32 * 11);
    for format in [QuantFormat::Q4_0, QuantFormat::Q4_1, QuantFormat::Q8_0] {
        let bytes: Vec<u8> = (0..n * k / 32)
            .flat_map(|i| {
                let mut b = random_block(format, &mut g);
                let start = format.block_bytes() - if format == QuantFormat::Q8_0 { 32 } else { 16 };
                let fill = match (format, i % 2) {
                    (QuantFormat::Q8_0, 0) => 0x80, // -128
                    (QuantFormat::Q8_0, _) => 0x7F,
                    _ => 0xFF, // nibbles 15
                };
                b[start..].fill(fill);
                b
            })
            .collect();
        let wq = QuantizedMatrix::new(format, n, k, bytes).unwrap();
        let x: Vec<f32> = (0..m * k).map(|j| if (j / 3) % 2 == 0 { 1.0 } else { -1.0 }).collect();
        let want = linear_quantized_gemm_on(QuantIsa::Portable, &x, &wq).unwrap();
        for isa in QuantIsa::ALL.into_iter().filter(|i| i.is_supported()) {
            let got = linear_quantized_gemm_on(isa, &x, &wq).unwrap();
            for (e, (&a, &b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{format} {isa:?} element {e}: {a} against {b}"
                );
            }
        }
    }
}

#[test]
fn the_rounding_bound_is_tight_enough_to_matter() {
    // the 8-bit rounding of x is visible (the check is not vacuous), and stays inside its bound
    let mut g = Gen(9);
    let (wq, w) = random_matrix(QuantFormat::Q8_0, 64, 256, &mut g);
    let x: Vec<f32> = (0..256).map(|_| g.unit()).collect();
    let (want, tol) = reference(&x, &w, 256, false);
    let got = linear_quantized_on(QuantIsa::Portable, &x, &wq).unwrap();
    let worst = got
        .iter()
        .zip(&want)
        .zip(&tol)
        .map(|((&g, &w), &t)| (g as f64 - w).abs() / t)
        .fold(0f64, f64::max);
    assert!(worst > 1e-3 && worst <= 1.0, "largest error / bound = {worst}");
}

#[test]
fn row_lengths_that_are_not_whole_blocks_are_refused() {
    for format in QuantFormat::ALL {
        let b = format.block_size();
        let err = QuantizedMatrix::new(format, 2, b + 16, vec![0u8; 2 * 2 * format.block_bytes()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("linear_quantized") && err.contains(&format!("multiple of {b}")),
            "{err}"
        );
        let err = QuantizedMatrix::new(format, 3, b, vec![0u8; 2 * format.block_bytes()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "takes {} bytes, got {}",
                3 * format.block_bytes(),
                2 * format.block_bytes()
            )),
            "{err}"
        );
    }
    let mut g = Gen(3);
    let (wq, _) = random_matrix(QuantFormat::Q4_1, 4, 64, &mut g);
    let err = linear_quantized_on(QuantIsa::Portable, &[0.0; 96], &wq)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not whole rows of the weight's 64 columns"), "{err}");
    // no rows in, no rows out
    assert_eq!(
        linear_quantized_on(QuantIsa::best(), &[], &wq).unwrap(),
        Vec::<f32>::new()
    );
}

#[test]
fn the_tensor_op_checks_its_input() {
    let mut g = Gen(5);
    let (wq, w) = random_matrix(QuantFormat::Q4_1, 40, 64, &mut g);
    let dev = Device::Cpu;
    let xv: Vec<f32> = (0..3 * 64).map(|_| g.unit()).collect();
    let x = Tensor::from_vec(xv.clone(), &[3, 1, 64], &dev).unwrap();
    let y = x.linear_quantized(&wq).unwrap();
    assert_eq!(y.shape(), &[3, 1, 40]);
    let (want, tol) = reference(&xv, &w, 64, false);
    for ((&got, &want), &tol) in y.to_vec::<f32>().unwrap().iter().zip(&want).zip(&tol) {
        assert!((got as f64 - want).abs() <= tol, "{got} vs {want} ± {tol}");
    }
    // bf16 in, bf16 out (computed in f32)
    let yb = x.to_dtype(DType::BF16).unwrap().linear_quantized(&wq).unwrap();
    assert_eq!(yb.dtype(), DType::BF16);
    // a wrong width, an integer input
    let err = Tensor::zeros(&[2, 63], DType::F32, &dev)
        .unwrap()
        .linear_quantized(&wq)
        .unwrap_err();
    assert!(err.to_string().contains("expected input [..., 64]"), "{err}");
    let err = Tensor::zeros(&[2, 64], DType::U32, &dev)
        .unwrap()
        .linear_quantized(&wq)
        .unwrap_err();
    assert!(err.to_string().contains("f32 or bf16"), "{err}");
}

/// dx = g·W in f64 for g (m, n) and the dequantized W (n, k), with the tolerance of f32
/// summation (2e-5 of Σ|g·w| per element).
fn reference_input_grad(g: &[f32], w: &[f32], k: usize) -> (Vec<f64>, Vec<f64>) {
    let n = w.len() / k;
    let (mut dx, mut tol) = (Vec::new(), Vec::new());
    for gr in g.chunks(n) {
        for c in 0..k {
            let terms = gr.iter().enumerate().map(|(j, &gv)| gv as f64 * w[j * k + c] as f64);
            dx.push(terms.clone().sum());
            tol.push(2e-5 * terms.map(f64::abs).sum::<f64>() + 1e-6);
        }
    }
    (dx, tol)
}

fn assert_close(what: &str, got: &[f32], want: &[f64], tol: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (e, ((&got, &want), &tol)) in got.iter().zip(want).zip(tol).enumerate() {
        assert!(
            (got as f64 - want).abs() <= tol,
            "{what}: element {e} = {got}, want {want} ± {tol}"
        );
    }
}

/// The decoded path (W decoded to f32 in blocks of rows, the training forward) against f64,
/// forward and input gradient, for every format: W has 4352 columns, so a 2 MiB decoded block
/// holds 120 rows and W's 247 rows take three blocks, the last one partial; 17 rows of x (not a
/// multiple of the f32 GEMM's tiles). `linear_quantized` on the same 17 rows takes the integer
/// GEMM (x rounded) and is held to the rounding bound.
#[test]
fn the_decoded_product_and_the_input_gradient_match_f64_over_several_blocks_of_rows() {
    let (m, n, k) = (17, 247, 4352);
    assert!(m >= GEMM_FROM_ROWS);
    let mut g = Gen(11);
    for format in QuantFormat::ALL {
        let (wq, w) = random_matrix(format, n, k, &mut g);
        let x: Vec<f32> = (0..m * k).map(|_| 3.0 * g.unit()).collect();
        let (want, tol) = reference(&x, &w, k, true);
        let got = linear_dequantized(&x, &wq).unwrap();
        assert_close(&format!("{format} forward"), &got, &want, &tol);
        let (_, rounding_tol) = reference(&x, &w, k, false);
        let rounded = linear_quantized(&x, &wq).unwrap();
        assert_close(&format!("{format} 8-bit x"), &rounded, &want, &rounding_tol);
        assert!(rounded != got, "{format}: {m} rows of inference round x");
        let gy: Vec<f32> = (0..m * n).map(|_| g.unit()).collect();
        let (want, tol) = reference_input_grad(&gy, &w, k);
        let got = linear_quantized_input_grad(&gy, &wq).unwrap();
        assert_close(&format!("{format} input gradient"), &got, &want, &tol);
    }
}

/// Through the tensor op: `loss = Σ c ⊙ (x·Wᵀ)` has `dx = c·W` (3 rows: below the integer GEMM's
/// row count, 20 rows: past it; the recorded forward is the decoded product in both), in f32 and
/// bf16.
#[test]
fn the_gradient_of_the_input_is_c_times_w_on_both_paths() {
    let mut g = Gen(12);
    let (n, k) = (40, 96);
    let (wq, w) = random_matrix(QuantFormat::Q4_1, n, k, &mut g);
    let dev = Device::Cpu;
    for rows in [3, 20] {
        let xv: Vec<f32> = (0..rows * k).map(|_| g.unit()).collect();
        let cv: Vec<f32> = (0..rows * n).map(|_| g.unit()).collect();
        let (want, tol) = reference_input_grad(&cv, &w, k);
        for dtype in [DType::F32, DType::BF16] {
            let x = Tensor::from_vec(xv.clone(), &[rows, 1, k], &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
                .requires_grad();
            let c = Tensor::from_vec(cv.clone(), &[rows, 1, n], &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let loss = x.linear_quantized(&wq).unwrap().mul(&c).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let dx = grads.get(&x).expect("x has a gradient");
            assert_eq!((dx.shape(), dx.dtype()), (x.shape(), dtype));
            let got = dx.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap();
            // bf16 rounds c on the way in and dx on the way out, 2⁻⁹ relative each: within 2⁻⁸
            // of Σ|c·w|, about 200 times f32's 2e-5
            let tol: Vec<f64> = match dtype {
                DType::BF16 => tol.iter().map(|t| t * 200.0).collect(),
                _ => tol.clone(),
            };
            assert_close(&format!("{rows} rows, {dtype}"), &got, &want, &tol);
        }
    }
}

/// The tensor op's forward is the decoded product (x not rounded) while autograd records, the
/// integer one under `no_grad`.
#[test]
fn the_tensor_op_rounds_x_only_under_no_grad() {
    let mut g = Gen(13);
    let (rows, n, k) = (24, 40, 96);
    let (wq, _) = random_matrix(QuantFormat::Q4_1, n, k, &mut g);
    let xv: Vec<f32> = (0..rows * k).map(|_| g.unit()).collect();
    let x = Tensor::from_vec(xv.clone(), &[rows, k], &Device::Cpu).unwrap();
    let inference = {
        let _no_grad = kiln::no_grad();
        x.linear_quantized(&wq).unwrap().to_vec::<f32>().unwrap()
    };
    let training = x.linear_quantized(&wq).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(inference, linear_quantized(&xv, &wq).unwrap());
    assert_eq!(training, linear_dequantized(&xv, &wq).unwrap());
    assert!(inference != training);
}

/// A weight on the CPU with an input on Emu (the CUDA kernels want the weight moved there first,
/// tests/linear_quantized_devices.rs): a clear error.
#[test]
fn the_emulator_refuses_a_weight_left_on_the_cpu_with_a_clear_error() {
    let mut g = Gen(6);
    let (wq, _) = random_matrix(QuantFormat::Q8_0, 8, 32, &mut g);
    let x = Tensor::zeros(&[1, 32], DType::F32, &Device::Emu).unwrap();
    let err = x.linear_quantized(&wq).unwrap_err().to_string();
    assert!(err.contains("is on cpu, the input on emu"), "{err}");
    assert!(err.contains("QuantizedMatrix::to_device"), "{err}");
}

/// A NaN or an infinity in a row of x makes that row's outputs NaN on every instruction set and
/// both paths (the 8-bit rounding must not turn it into a number); the other rows are finite.
#[test]
fn a_nan_or_an_infinity_in_x_gives_nan_outputs_in_its_row() {
    let mut g = Gen(41);
    for format in QuantFormat::ALL {
        let (k, n) = (512, 37);
        let (w, _) = random_matrix(format, n, k, &mut g);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for m in [2, GEMM_FROM_ROWS + 1, 17] {
                let mut x: Vec<f32> = (0..m * k).map(|_| g.unit()).collect();
                x[k + 77] = bad; // row 1
                let mut results = vec![("default".to_string(), linear_quantized(&x, &w).unwrap())];
                for isa in QuantIsa::ALL.into_iter().filter(|isa| isa.is_supported()) {
                    results.push((format!("{isa:?}"), linear_quantized_on(isa, &x, &w).unwrap()));
                    if format.is_grouped() {
                        results.push((format!("{isa:?} GEMM"), linear_quantized_gemm_on(isa, &x, &w).unwrap()));
                    }
                }
                results.push(("decoded".to_string(), linear_dequantized(&x, &w).unwrap()));
                for (path, y) in results {
                    for (i, row) in y.chunks(n).enumerate() {
                        let what = format!("{format:?} {path} x holding {bad} in row 1 of {m}: row {i}");
                        match i {
                            1 => assert!(row.iter().all(|v| !v.is_finite()), "{what}: {row:?}"),
                            _ => assert!(row.iter().all(|v| v.is_finite()), "{what}: {row:?}"),
                        }
                    }
                }
            }
        }
    }
}

/// The products of one x with several matrices in one call (a Llama layer's q, k and v) are those
/// of separate calls, bit for bit, on every instruction set this CPU runs: every format (the
/// grouped ones with partial last groups, Q4_K/Q6_K in tasks of `ROWS_PER_TASK` rows), decode
/// row counts (one parallel region, x quantized once) and prefill ones (one GEMM per matrix),
/// matrices of different formats and row counts side by side; through the tensor op under
/// `no_grad` too. Matrices of different column counts are refused.
#[test]
fn products_sharing_an_input_equal_separate_products() {
    let mut g = Gen(0x0dd_5eed);
    let isas: Vec<QuantIsa> = QuantIsa::ALL.into_iter().filter(|i| i.is_supported()).collect();
    for k in [256usize, 768] {
        for m in [1usize, 2, 3, GEMM_FROM_ROWS, 9] {
            // every format, rows not multiples of 16 or of the rows per task
            let ws: Vec<QuantizedMatrix> = QuantFormat::ALL
                .into_iter()
                .map(|f| random_matrix(f, 1 + g.below(3 * ROWS_PER_TASK + 7), k, &mut g).0)
                .collect();
            let refs: Vec<&QuantizedMatrix> = ws.iter().collect();
            let x: Vec<f32> = (0..m * k).map(|_| 2.0 * g.unit()).collect();
            for &isa in &isas {
                let many = linear_quantized_many_on(isa, &x, &refs).unwrap();
                assert_eq!(many.len(), ws.len());
                for (w, got) in ws.iter().zip(&many) {
                    let want = linear_quantized_on(isa, &x, w).unwrap();
                    assert_eq!(got, &want, "{isa:?} {} {:?}, x [{m}, {k}]", w.format(), w.shape());
                }
            }
            let _no_grad = kiln::no_grad();
            let xt = Tensor::from_vec(x.clone(), &[1, m, k], &Device::Cpu).unwrap();
            let ys = xt.linear_quantized_many(&refs).unwrap();
            for (w, y) in ws.iter().zip(&ys) {
                assert_eq!(y.shape(), &[1, m, w.shape()[0]]);
                let want = xt.linear_quantized(w).unwrap().to_vec::<f32>().unwrap();
                assert_eq!(
                    y.to_vec::<f32>().unwrap(),
                    want,
                    "tensor op, {} x [{m}, {k}]",
                    w.format()
                );
            }
        }
    }
    let (a, _) = random_matrix(QuantFormat::Q4_1, 16, 64, &mut g);
    let (b, _) = random_matrix(QuantFormat::Q4_1, 16, 96, &mut g);
    let err = linear_quantized_many_on(QuantIsa::Portable, &[0.0; 64], &[&a, &b]).unwrap_err();
    assert!(err.to_string().contains("differ in columns"), "{err}");
    let _no_grad = kiln::no_grad();
    let x = Tensor::zeros(&[2, 64], DType::F32, &Device::Cpu).unwrap();
    let err = x.linear_quantized_many(&[&a, &b]).unwrap_err();
    assert!(err.to_string().contains("linear_quantized"), "{err}");
}
