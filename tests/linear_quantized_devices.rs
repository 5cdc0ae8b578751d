//! `linear_quantized` on the CUDA backend (kernels/linear_quantized.cu) on Emu, and on Cuda(0)
//! where a GPU is usable (required under `KILN_REQUIRE_CUDA=1`, as scripts/gpu-check.sh sets it),
//! against two references: the CPU backend, and the dequantize-then-f64 product (W dequantized by
//! `kiln::gguf::dequantize`, bit-equal to the `gguf` Python package).
//!
//! Tolerances. Every format rounds x to 8 bits per block of 32 below `MMA_FROM_ROWS` rows (the
//! `__dp4a` kernels), and a grouped one (Q4_0, Q4_1, Q8_0) from there too (the tensor-core kernels),
//! on both devices, bit for bit the same bytes, so the devices differ by f32 summation order alone
//! (`F32_SLOP · Σ|w·x|`); both differ from the exact product by at most
//! `Σ_blocks max|x_block|/254 · Σ_block |w|` (the rounding's bound) plus that slop. Q4_K and Q6_K
//! from `MMA_FROM_ROWS` rows are decoded to f32 on the device and x is not rounded: the exact
//! product up to f32 summation, where the CPU rounds x (the rounding's bound apart).
//! Shapes: row counts not multiples of the 16-row groups (a partial last group), block counts odd
//! and not multiples of 256 / 32, 1, 3, 7 (decode) and 8, 17, 33 (tensor cores) rows of x, and x as
//! a strided view.
//!
//! Also the errors when the weight and the input are on different devices. No fixtures and no
//! binary: scripts/pack-gpu-check.sh packs this test for the GPU check (the quantized tiny Llama on
//! Emu is tests/llama_quantized_devices.rs).

use kiln::backend::cuda::linear_quantized::MMA_FROM_ROWS;
use kiln::ops::linear_quantized::{QuantFormat, QuantizedMatrix};
use kiln::{Device, Tensor};

/// Relative f32 error allowed against `Σ|w·x|`: summation order over up to a few thousand terms.
const F32_SLOP: f64 = 1e-5;

/// The devices of the CUDA backend under test: Emu, and Cuda(0) where a GPU is usable.
fn cuda_devices() -> Vec<Device> {
    let mut d = vec![Device::Emu];
    if kiln::backend::cuda::gpu_count() > 0 {
        d.push(Device::Cuda(0));
    } else {
        assert!(
            std::env::var("KILN_REQUIRE_CUDA").map_or(true, |v| v != "1"),
            "KILN_REQUIRE_CUDA=1 but no GPU is usable"
        );
    }
    d
}

#[path = "common/quantized.rs"]
mod quantized;
use quantized::{random_matrix, Gen};

/// For y = x·Wᵀ (x [m, k], W [n, k] dequantized): the exact product in f64, Σ|w·x| per output, and
/// the bound of x's 8-bit rounding per output.
fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut y, mut mag, mut bound) = (vec![0.0; m * n], vec![0.0; m * n], vec![0.0; m * n]);
    for i in 0..m {
        for j in 0..n {
            let (xr, wr) = (&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]);
            for b in 0..k / 32 {
                let (xb, wb) = (&xr[32 * b..32 * b + 32], &wr[32 * b..32 * b + 32]);
                let amax = xb.iter().fold(0f64, |a, &v| a.max(f64::from(v).abs()));
                bound[i * n + j] += amax / 254.0 * wb.iter().map(|&v| f64::from(v).abs()).sum::<f64>();
                for (&a, &c) in xb.iter().zip(wb) {
                    y[i * n + j] += f64::from(a) * f64::from(c);
                    mag[i * n + j] += (f64::from(a) * f64::from(c)).abs();
                }
            }
        }
    }
    (y, mag, bound)
}

/// Asserts |got - want| ≤ allowed elementwise, naming `what` and the worst element.
fn assert_within(what: &str, got: &[f32], want: &[f64], allowed: impl Fn(usize) -> f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(g) - w).abs();
        assert!(
            err <= allowed(i),
            "{what}: element {i}: {g} against {w} (error {err:.3e}, allowed {:.3e})",
            allowed(i)
        );
    }
}

/// y = x·Wᵀ on each CUDA device against the CPU and the f64 product, for every format and shapes
/// that are not multiples of the kernels' tiles; x also as a transposed (strided) view.
#[test]
fn every_format_matches_the_cpu_and_the_exact_product() {
    let mut g = Gen(0x5eed_1234);
    for dev in cuda_devices() {
        for format in QuantFormat::ALL {
            let grouped = format.is_grouped();
            let (ks, ns): (&[usize], &[usize]) = if grouped {
                (&[32, 96, 288], &[1, 17, 40])
            } else {
                (&[256, 512], &[3, 17])
            };
            for &k in ks {
                for &n in ns {
                    for m in [1usize, 3, MMA_FROM_ROWS - 1, MMA_FROM_ROWS, 17, 33] {
                        let (w, wf) = random_matrix(format, n, k, &mut g);
                        let x: Vec<f32> = (0..m * k).map(|_| g.unit()).collect();
                        let (exact, mag, bound) = reference(&x, &wf, m, n, k);
                        let cpu = Tensor::from_vec(x.clone(), &[m, k], &Device::Cpu).unwrap();
                        let what = format!("{format} [{n}, {k}] x [{m}, {k}] on {dev}");
                        let slop = |i: usize| F32_SLOP * mag[i] + 1e-7;
                        // while autograd records, the decoded product: x not rounded
                        let recorded = Tensor::from_vec(x.clone(), &[m, k], &dev)
                            .unwrap()
                            .linear_quantized(&w.to_device(&dev).unwrap())
                            .unwrap();
                        let recorded = recorded.to_vec::<f32>().unwrap();
                        assert_within(&format!("{what} recorded, against f64"), &recorded, &exact, slop);
                        // as generation runs the op: the integer kernels (autograd off)
                        let _no_grad = kiln::no_grad();
                        let y_cpu = cpu.linear_quantized(&w).unwrap().to_vec::<f32>().unwrap();
                        let wd = w.to_device(&dev).unwrap();
                        let y = Tensor::from_vec(x.clone(), &[m, k], &dev)
                            .unwrap()
                            .linear_quantized(&wd)
                            .unwrap();
                        assert_eq!(y.shape(), &[m, n]);
                        assert_eq!(y.device(), &dev);
                        let y = y.to_vec::<f32>().unwrap();
                        let rounds_x = grouped || m < MMA_FROM_ROWS;
                        // against the exact product: the rounding's bound where x is rounded
                        let to_exact = |i: usize| slop(i) + if rounds_x { bound[i] } else { 0.0 };
                        assert_within(&format!("{what} against f64"), &y, &exact, to_exact);
                        // against the CPU, which rounds x at every size: the same rounding where
                        // the device rounds too, one rounding's bound where it does not
                        let to_cpu = |i: usize| 2.0 * slop(i) + if rounds_x { 0.0 } else { bound[i] };
                        let y_cpu: Vec<f64> = y_cpu.iter().map(|&v| f64::from(v)).collect();
                        assert_within(&format!("{what} against the CPU"), &y, &y_cpu, to_cpu);
                    }
                    // x as the transpose of a [k, m] tensor: a strided view the wrapper copies
                    let m = 5;
                    let (w, wf) = random_matrix(format, n, k, &mut g);
                    let xt: Vec<f32> = (0..m * k).map(|_| g.unit()).collect(); // [k, m]
                    let x: Vec<f32> = (0..m * k).map(|i| xt[(i % k) * m + i / k]).collect();
                    let (exact, mag, bound) = reference(&x, &wf, m, n, k);
                    let _no_grad = kiln::no_grad();
                    let view = Tensor::from_vec(xt, &[k, m], &dev).unwrap().transpose(0, 1).unwrap();
                    let y = view.linear_quantized(&w.to_device(&dev).unwrap()).unwrap();
                    let rounds = grouped || m < MMA_FROM_ROWS;
                    let allowed = |i: usize| F32_SLOP * mag[i] + 1e-7 + if rounds { bound[i] } else { 0.0 };
                    let what = format!("{format} [{n}, {k}] x a strided [{m}, {k}] view on {dev}");
                    assert_within(&what, &y.to_vec::<f32>().unwrap(), &exact, allowed);
                }
            }
        }
    }
}

/// The input's gradient `dx = g·W` through autograd on each CUDA device, against the f64 product
/// and the CPU's (both decode W to f32: f32 summation apart, they agree).
#[test]
fn the_input_gradient_matches_the_cpu() {
    let mut g = Gen(0xbac4_3a2d);
    for dev in cuda_devices() {
        for format in QuantFormat::ALL {
            let (n, k) = if format.is_grouped() { (40, 96) } else { (17, 512) };
            for m in [1usize, 3, 17] {
                let (w, wf) = random_matrix(format, n, k, &mut g);
                let x: Vec<f32> = (0..m * k).map(|_| g.unit()).collect();
                let r: Vec<f32> = (0..m * n).map(|_| g.unit()).collect();
                // loss = Σ r ⊙ (x·Wᵀ), so dx = r·W
                let grad = |dev: &Device, w: &QuantizedMatrix| -> Vec<f32> {
                    let xt = Tensor::from_vec(x.clone(), &[m, k], dev).unwrap().requires_grad();
                    let rt = Tensor::from_vec(r.clone(), &[m, n], dev).unwrap();
                    let loss = xt.linear_quantized(w).unwrap().mul(&rt).unwrap().sum_all().unwrap();
                    let grads = loss.backward().unwrap();
                    grads.get(&xt).unwrap().to_vec::<f32>().unwrap()
                };
                let got = grad(&dev, &w.to_device(&dev).unwrap());
                let cpu: Vec<f64> = grad(&Device::Cpu, &w).iter().map(|&v| f64::from(v)).collect();
                let (mut exact, mut mag) = (vec![0f64; m * k], vec![0f64; m * k]);
                for i in 0..m {
                    for j in 0..n {
                        for c in 0..k {
                            let t = f64::from(r[i * n + j]) * f64::from(wf[j * k + c]);
                            exact[i * k + c] += t;
                            mag[i * k + c] += t.abs();
                        }
                    }
                }
                let what = format!("dx of {format} [{n}, {k}] with {m} rows on {dev}");
                let allowed = |i: usize| F32_SLOP * mag[i] + 1e-7;
                assert_within(&format!("{what} against f64"), &got, &exact, allowed);
                assert_within(&format!("{what} against the CPU"), &got, &cpu, |i| 2.0 * allowed(i));
            }
        }
    }
}

#[test]
fn to_device_moves_the_matrix_and_back() {
    let (w, _) = random_matrix(QuantFormat::Q4_1, 17, 64, &mut Gen(7));
    assert_eq!(w.device(), Device::Cpu);
    let on_emu = w.to_device(&Device::Emu).unwrap();
    assert_eq!(on_emu.device(), Device::Emu);
    assert_eq!(format!("{on_emu:?}"), "QuantizedMatrix(Q4_1 [17, 64] on emu)");
    // the host bytes stay, so the accessors work on every device
    assert!(on_emu.stored_bytes() == w.stored_bytes());
    assert!(on_emu.gguf_rows(0..17) == w.gguf_rows(0..17));
    let back = on_emu.to_device(&Device::Cpu).unwrap();
    assert_eq!(back.device(), Device::Cpu);
    let x = Tensor::from_vec(vec![0.5f32; 64], &[1, 64], &Device::Cpu).unwrap();
    assert_eq!(
        x.linear_quantized(&back).unwrap().to_vec::<f32>().unwrap(),
        x.linear_quantized(&w).unwrap().to_vec::<f32>().unwrap()
    );
}

/// A weight on one device and an input on another: an error naming the op, the format, the shape
/// and both devices, in the forward and in the backward.
#[test]
fn mixed_devices_are_named() {
    let (w, _) = random_matrix(QuantFormat::Q8_0, 17, 64, &mut Gen(9));
    let x_emu = Tensor::from_vec(vec![0.5f32; 64], &[1, 64], &Device::Emu).unwrap();
    let x_cpu = Tensor::from_vec(vec![0.5f32; 64], &[1, 64], &Device::Cpu).unwrap();
    let w_emu = w.to_device(&Device::Emu).unwrap();
    for (x, w, on, input) in [(&x_emu, &w, "cpu", "emu"), (&x_cpu, &w_emu, "emu", "cpu")] {
        let err = x.linear_quantized(w).unwrap_err().to_string();
        for needle in [
            "linear_quantized",
            "Q8_0 weight [17, 64]",
            &format!("is on {on}, the input on {input}"),
            "QuantizedMatrix::to_device",
        ] {
            assert!(err.contains(needle), "{needle:?} not in: {err}");
        }
    }
}
