//! The inline-PTX helpers of kernels/common.cuh (mma.sync m16n8k16 bf16/f16 and m16n8k32 s8, ldmatrix .x4/.x2 with and
//! without .trans, cp.async with zero fill, commit/wait groups), through the test kernels of
//! kernels/ptx_selftest.cu, on Emu (the models in kernels/emu/emu_ptx.h) and on Cuda(0) when a GPU is
//! there (the real instructions). Expected values come from plain loops here: a matrix product in f64,
//! a copy, and the PTX ISA's description of which lane receives which element.

use half::{bf16, f16};
use kiln::backend::cuda::launch::{Args, Kernel, LaunchConfig};
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

/// A device buffer holding `data`, freed on drop.
struct Buf {
    buf: DeviceBuffer,
    ptr: u64,
}

impl Buf {
    fn new<T: bytemuck::Pod>(dev: &Arc<CudaDevice>, data: &[T]) -> Buf {
        let buf = DeviceBuffer::alloc(dev, std::mem::size_of_val(data)).unwrap();
        buf.write(0, bytemuck::cast_slice(data)).unwrap();
        let ptr = buf.ptr();
        Buf { buf, ptr }
    }

    fn read<T: bytemuck::Pod + Default>(&self) -> Vec<T> {
        let mut v = vec![T::default(); self.buf.bytes() / std::mem::size_of::<T>()];
        self.buf.read(0, bytemuck::cast_slice_mut(&mut v)).unwrap();
        v
    }
}

fn launch(dev: &Arc<CudaDevice>, name: &'static str, threads: u32, args: &mut Args) {
    let k = Kernel {
        file: "ptx_selftest",
        name,
    };
    let cfg = LaunchConfig {
        grid: [1, 1, 1],
        block: [threads, 1, 1],
        dyn_smem: 0,
    };
    dev.launch(k, cfg, args)
        .unwrap_or_else(|e| panic!("{name} on {}: {e}", dev.device()));
}

/// Small integers and halves: every product and sum below is exact in f32, so results must be equal.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| (rng.below(17) as f32 - 8.0) * 0.5).collect()
}

/// `a[m][k] · b[k][n] + c[m][n]` in f64, row-major.
fn product(a: &[f32], b: &[f32], c: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut d = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum();
            d[i * n + j] = (s + c[i * n + j] as f64) as f32;
        }
    }
    d
}

/// Runs `kernel` on a 16x16 A, a 16x8 B (and C when `with_c`) in the 16-bit type given by `to_bits`.
fn check_mma(kernel: &'static str, with_c: bool, to_bits: fn(f32) -> u16) {
    let (a, b) = (values(256, 1), values(128, 2));
    let c = if with_c { values(128, 3) } else { vec![0.0; 128] };
    let want = product(&a, &b, &c, 16, 8, 16);
    let bits = |v: &[f32]| -> Vec<u16> { v.iter().map(|&x| to_bits(x)).collect() };
    for device in devices() {
        let dev = CudaDevice::get(&device).unwrap();
        let (ba, bb, bc) = (Buf::new(&dev, &bits(&a)), Buf::new(&dev, &bits(&b)), Buf::new(&dev, &c));
        let d = Buf::new(&dev, &[f32::NAN; 128]);
        let mut args = Args::new();
        args.push(ba.ptr).push(bb.ptr);
        if with_c {
            args.push(bc.ptr);
        }
        args.push(d.ptr);
        launch(&dev, kernel, 32, &mut args);
        assert_eq!(d.read::<f32>(), want, "{kernel} on {device}");
    }
}

#[test]
fn mma_m16n8k16_bf16_and_f16_with_fragments_by_the_documented_layout() {
    check_mma("ptx_mma_bf16", true, |x| bf16::from_f32(x).to_bits());
    check_mma("ptx_mma_f16", true, |x| f16::from_f32(x).to_bits());
}

/// mma.m16n8k32 on signed bytes: the full range of both operands (-128 and 127 included), a C added
/// in, the s32 result against the product in i64 (exact: |Σ| ≤ 32·128² + |c| fits in an i32).
#[test]
fn mma_m16n8k32_s8_with_fragments_by_the_documented_layout() {
    let mut rng = Rng::new(5);
    let mut bytes = |n: usize| -> Vec<i8> { (0..n).map(|_| rng.below(256) as u8 as i8).collect() };
    let (mut a, bt) = (bytes(16 * 32), bytes(8 * 32));
    // the extremes, so that a sign taken from the wrong byte or an unsigned read shows
    a[0] = -128;
    a[31] = 127;
    a[32 * 15 + 16] = -128;
    let c: Vec<i32> = (0..128).map(|i| i * 1000 - 64_000).collect();
    let mut want = vec![0i32; 128];
    for r in 0..16 {
        for n in 0..8 {
            let s: i64 = (0..32)
                .map(|k| i64::from(a[r * 32 + k]) * i64::from(bt[n * 32 + k]))
                .sum();
            want[r * 8 + n] = i32::try_from(s + i64::from(c[r * 8 + n])).unwrap();
        }
    }
    for device in devices() {
        let dev = CudaDevice::get(&device).unwrap();
        let (ba, bb, bc) = (Buf::new(&dev, &a), Buf::new(&dev, &bt), Buf::new(&dev, &c));
        let d = Buf::new(&dev, &[i32::MIN; 128]);
        let mut args = Args::new();
        args.push(ba.ptr).push(bb.ptr).push(bc.ptr).push(d.ptr);
        launch(&dev, "ptx_mma_s8", 32, &mut args);
        assert_eq!(d.read::<i32>(), want, "ptx_mma_s8 on {device}");
    }
}

#[test]
fn ldmatrix_then_mma_gives_the_product() {
    check_mma("ptx_ldmatrix_mma_bf16", false, |x| bf16::from_f32(x).to_bits());
    check_mma("ptx_ldmatrix_mma_f16", false, |x| f16::from_f32(x).to_bits());
}

#[test]
fn ldmatrix_distributes_rows_as_documented() {
    // tile[r][c] = 16 r + c: each 16-bit value names its own position
    let tile: Vec<u16> = (0..256).collect();
    // The element of the 16x16 tile that matrix i of each form reads at (row, col), per the kernel's
    // addresses: x4 matrix i is rows 8(i%2).., cols 8(i/2)..; x2 matrix i is rows 8i.., cols 0..7.
    let at = |form: usize, i: usize, row: usize, col: usize| -> u32 {
        let (r0, c0) = if form < 2 {
            (8 * (i % 2), 8 * (i / 2))
        } else {
            (8 * i, 0)
        };
        ((r0 + row) * 16 + c0 + col) as u32
    };
    let mut want = vec![0u32; 4 * 32 * 4];
    for form in 0..4 {
        let (count, trans) = ([4, 4, 2, 2][form], form % 2 == 1);
        for lane in 0..32 {
            for i in 0..count {
                let half = |h: usize| {
                    if trans {
                        at(form, i, 2 * (lane % 4) + h, lane / 4)
                    } else {
                        at(form, i, lane / 4, 2 * (lane % 4) + h)
                    }
                };
                want[(form * 32 + lane) * 4 + i] = half(0) | (half(1) << 16);
            }
        }
    }
    for device in devices() {
        let dev = CudaDevice::get(&device).unwrap();
        let (src, out) = (Buf::new(&dev, &tile), Buf::new(&dev, &[u32::MAX; 512]));
        let mut args = Args::new();
        args.push(src.ptr).push(out.ptr);
        launch(&dev, "ptx_ldmatrix", 32, &mut args);
        let got = out.read::<u32>();
        for (j, (g, w)) in got.iter().zip(&want).enumerate() {
            let (form, lane, reg) = (j / 128, (j / 4) % 32, j % 4);
            assert_eq!(
                g,
                w,
                "ldmatrix {} on {device}: lane {lane} register {reg} holds {g:#010x}, expected {w:#010x}",
                ["x4", "x4.trans", "x2", "x2.trans"][form]
            );
        }
    }
}

#[test]
fn cp_async_copies_and_zero_fills_in_two_groups() {
    for n in [0u32, 1, 3, 4, 255, 257, 301, 512] {
        // room for whole 16-byte chunks up to n (cp.async reads only the first n floats)
        let mut src = values(512, 4);
        src.iter_mut().skip(n as usize).for_each(|x| *x = f32::NAN);
        let src = &src[..(n as usize).div_ceil(4).max(1) * 4];
        let want: Vec<f32> = (0..512).map(|i| if i < n as usize { src[i] } else { 0.0 }).collect();
        for device in devices() {
            let dev = CudaDevice::get(&device).unwrap();
            let (s, d) = (Buf::new(&dev, src), Buf::new(&dev, &[f32::NAN; 512]));
            let mut args = Args::new();
            args.push(s.ptr).push(d.ptr).push(n);
            launch(&dev, "ptx_cp_async", 64, &mut args);
            let got = d.read::<f32>();
            assert!(
                got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()),
                "cp.async with n = {n} on {device}: {got:?}"
            );
        }
    }
}
