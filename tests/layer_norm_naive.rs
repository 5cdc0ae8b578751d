//! The naive LayerNorm kernels of kernels/layer_norm_naive.cu (docs/layer_norm.md's stepping stone),
//! on Emu (and Cuda(0) when a GPU is there), over shapes that are multiples of nothing (1, primes,
//! just off the 128-thread block): y, mean and rstd against the f64 reference
//! `kiln::backend::cpu::reference::layer_norm`; dx, dw and db against central finite differences of
//! that reference (the gradient of Σ y·g), so no backward formula is shared with the kernels.

use kiln::backend::cpu::reference;
use kiln::backend::cuda::layer_norm_naive::{layer_norm_naive_backward, layer_norm_naive_forward};
use kiln::backend::cuda::memory::DeviceBuffer;
use kiln::backend::cuda::CudaDevice;
use kiln::{Device, Rng};
use std::sync::Arc;

fn devices() -> Vec<Device> {
    let mut d = vec![Device::Emu];
    if kiln::backend::cuda::gpu_count() > 0 {
        d.push(Device::Cuda(0));
    }
    d
}

fn upload(dev: &Arc<CudaDevice>, data: &[f64]) -> DeviceBuffer {
    let v: Vec<f32> = data.iter().map(|&x| x as f32).collect();
    let buf = DeviceBuffer::alloc(dev, v.len() * 4).unwrap();
    buf.write(0, bytemuck::cast_slice(&v)).unwrap();
    buf
}

fn download(buf: &DeviceBuffer) -> Vec<f64> {
    let mut v = vec![0f32; buf.bytes() / 4];
    buf.read(0, bytemuck::cast_slice_mut(&mut v)).unwrap();
    v.into_iter().map(f64::from).collect()
}

fn random(rng: &mut Rng, n: usize, scale: f64, shift: f64) -> Vec<f64> {
    // rounded to f32 first, so the reference sees exactly the kernel's inputs
    (0..n).map(|_| ((rng.normal() * scale + shift) as f32) as f64).collect()
}

/// |got − want| ≤ tol·(1 + |want|) for every element.
fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: got {g}, want {w}");
    }
}

/// Σ_j y_j·g_j over one row, y the f64 reference LayerNorm of `x` (one row of `w.len()`).
fn row_loss(x: &[f64], w: &[f64], b: Option<&[f64]>, g: &[f64], eps: f64) -> f64 {
    let y = reference::layer_norm(x, &[1, x.len()], w, b, eps);
    y.iter().zip(g).map(|(y, g)| y * g).sum()
}

/// The central difference of `f` in each coordinate of `at`.
fn finite_differences(at: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    const H: f64 = 1e-5;
    let mut p = at.to_vec();
    (0..at.len())
        .map(|i| {
            p[i] = at[i] + H;
            let up = f(&p);
            p[i] = at[i] - H;
            let down = f(&p);
            p[i] = at[i];
            (up - down) / (2.0 * H)
        })
        .collect()
}

fn check(dev: &Device, rows: usize, c: usize, with_bias: bool, seed: u64) {
    let what = format!("{dev:?} {rows}x{c} bias={with_bias}");
    let eps = 1e-5;
    let mut rng = Rng::new(seed);
    let x = random(&mut rng, rows * c, 1.5, 0.3);
    let w = random(&mut rng, c, 0.5, 1.0);
    let b = with_bias.then(|| random(&mut rng, c, 0.5, 0.0));
    let g = random(&mut rng, rows * c, 1.0, 0.0);

    let cuda = CudaDevice::get(dev).unwrap();
    let (xd, wd, gd) = (upload(&cuda, &x), upload(&cuda, &w), upload(&cuda, &g));
    let bd = b.as_deref().map(|b| upload(&cuda, b));
    let (y, mean, rstd) = layer_norm_naive_forward(&cuda, &xd, &wd, bd.as_ref(), (rows, c), eps as f32).unwrap();
    let (dx, dw, db) = layer_norm_naive_backward(&cuda, &xd, &wd, &gd, (&mean, &rstd), (rows, c)).unwrap();

    // forward: y against the reference; mean and rstd against their definitions in f64
    let want_y = reference::layer_norm(&x, &[rows, c], &w, b.as_deref(), eps);
    assert_close(&format!("{what} y"), &download(&y), &want_y, 1e-4);
    let (want_mean, want_rstd): (Vec<f64>, Vec<f64>) = x
        .chunks(c)
        .map(|r| {
            let m = r.iter().sum::<f64>() / c as f64;
            let var = r.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / c as f64;
            (m, 1.0 / (var + eps).sqrt())
        })
        .unzip();
    assert_close(&format!("{what} mean"), &download(&mean), &want_mean, 1e-5);
    assert_close(&format!("{what} rstd"), &download(&rstd), &want_rstd, 1e-4);

    // backward: each gradient of L = Σ y·g by finite differences of the reference, row by row
    let rows_of = |v: &[f64], r: usize| v[r * c..(r + 1) * c].to_vec();
    let want_dx: Vec<f64> = (0..rows)
        .flat_map(|r| {
            let (xr, gr) = (rows_of(&x, r), rows_of(&g, r));
            finite_differences(&xr, |xp| row_loss(xp, &w, b.as_deref(), &gr, eps))
        })
        .collect();
    let loss = |w: &[f64], b: Option<&[f64]>| -> f64 {
        (0..rows)
            .map(|r| row_loss(&rows_of(&x, r), w, b, &rows_of(&g, r), eps))
            .sum()
    };
    let want_dw = finite_differences(&w, |wp| loss(wp, b.as_deref()));
    let want_db = finite_differences(&b.clone().unwrap_or(vec![0.0; c]), |bp| loss(&w, Some(bp)));
    assert_close(&format!("{what} dx"), &download(&dx), &want_dx, 1e-4);
    // dw and db sum over the rows: f32 rounding grows with their number
    let tol = 1e-5 * (rows as f64).sqrt().max(10.0);
    assert_close(&format!("{what} dw"), &download(&dw), &want_dw, tol);
    assert_close(&format!("{what} db"), &download(&db), &want_db, tol);
}

#[test]
fn naive_kernels_match_the_reference_and_its_finite_differences() {
    for dev in devices() {
        let mut seed = 0;
        for rows in [1, 3, 37, 130] {
            for c in [1, 7, 33, 100, 257] {
                seed += 1;
                check(&dev, rows, c, seed % 2 == 0, seed);
            }
        }
    }
}

#[test]
fn no_rows_give_zero_parameter_gradients() {
    for dev in devices() {
        let cuda = CudaDevice::get(&dev).unwrap();
        let (x, w) = (upload(&cuda, &[]), upload(&cuda, &[1.0; 5]));
        let (y, mean, rstd) = layer_norm_naive_forward(&cuda, &x, &w, None, (0, 5), 1e-5).unwrap();
        assert_eq!((y.bytes(), mean.bytes(), rstd.bytes()), (0, 0, 0));
        let (dx, dw, db) = layer_norm_naive_backward(&cuda, &x, &w, &x, (&mean, &rstd), (0, 5)).unwrap();
        assert_eq!(dx.bytes(), 0);
        assert_eq!((download(&dw), download(&db)), (vec![0.0; 5], vec![0.0; 5]));
    }
}

#[test]
fn buffers_of_the_wrong_size_are_refused_by_name() {
    let cuda = CudaDevice::get(&Device::Emu).unwrap();
    let (x, w) = (upload(&cuda, &[1.0; 12]), upload(&cuda, &[1.0; 4]));
    let e = layer_norm_naive_forward(&cuda, &x, &w, None, (3, 5), 1e-5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer_norm_naive") && e.contains("x holds 48 bytes"), "{e}");
    let e = layer_norm_naive_forward(&cuda, &x, &w, Some(&x), (3, 4), 1e-5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bias holds 48 bytes, expected 4 f32"), "{e}");
    let e = layer_norm_naive_forward(&cuda, &x, &w, None, (usize::MAX, 2), 1e-5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("overflow"), "{e}");
    let e = layer_norm_naive_forward(&cuda, &upload(&cuda, &[]), &upload(&cuda, &[]), None, (3, 0), 1e-5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no mean"), "{e}");
}
