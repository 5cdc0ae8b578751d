//! The CPU's half-precision products (backend/cpu/matmul.rs): with few rows (decode: one token
//! times a weight) a bf16 B is streamed in its own dtype (`gemm::sgemm_streamed`); otherwise B is
//! widened to f32 one block of columns at a time for the GEMM. Checked here against an f64
//! reference over shapes that are not multiples of any SIMD width, through the streamed loops
//! (a Linear's `Wᵀ`, whose columns are contiguous; a row-major B), several widened blocks and
//! batched operands, and with a counting allocator: neither path makes an f32 copy of the whole
//! weight.

use half::{bf16, f16};
use kiln::{DType, Device, Rng, Tensor};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

const DEV: Device = Device::Cpu;

/// Tracks the bytes live on the heap and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(live, Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) };
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_sub(layout.size(), Relaxed);
        grew(new_size);
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Held by every test, so the peak sees one test's allocations only.
static SERIAL: Mutex<()> = Mutex::new(());

/// `n` normal values already rounded to `dtype`, as f32 (exactly representable in it).
fn values(dtype: DType, n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let v = rng.normal() as f32;
            match dtype {
                DType::BF16 => bf16::from_f32(v).to_f32(),
                _ => f16::from_f32(v).to_f32(),
            }
        })
        .collect()
}

fn half_tensor(dtype: DType, v: &[f32], shape: &[usize]) -> Tensor {
    match dtype {
        DType::BF16 => Tensor::from_vec(v.iter().map(|&x| bf16::from_f32(x)).collect(), shape, &DEV),
        _ => Tensor::from_vec(v.iter().map(|&x| f16::from_f32(x)).collect(), shape, &DEV),
    }
    .unwrap()
}

/// Compares a half result `got` (`[batch, m, n]`) with `c[b][i][j] = Σ_p a(b, i, p)·w(b, p, j)`
/// in f64: the error allowed is the one rounding to the half type (2⁻⁸ or 2⁻¹¹ relative, bf16
/// or f16) plus f32 accumulation, bounded by 10⁻⁴·Σ|a·w| (k ≤ 300 terms, u = 2⁻²⁴).
#[track_caller]
fn check(
    what: &str,
    got: &Tensor,
    [batch, m, k, n]: [usize; 4],
    a: impl Fn(usize, usize, usize) -> f32,
    w: impl Fn(usize, usize, usize) -> f32,
) {
    let dtype = got.dtype();
    let rtol = if dtype == DType::BF16 {
        2f64.powi(-8)
    } else {
        2f64.powi(-11)
    };
    assert_eq!(got.shape(), &[batch, m, n], "{what}");
    let got: Vec<f32> = got.to_dtype(DType::F32).unwrap().to_vec().unwrap();
    for bi in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let terms = (0..k).map(|p| a(bi, i, p) as f64 * w(bi, p, j) as f64);
                let (want, size) = terms.fold((0.0, 0.0), |(s, z), t| (s + t, z + t.abs()));
                let g = got[(bi * m + i) * n + j] as f64;
                assert!(
                    (g - want).abs() <= rtol * want.abs() + 1e-4 * size,
                    "{what} {dtype} [{batch}, {m}, {k}] x [{k}, {n}] at ({bi}, {i}, {j}): {g} vs {want}"
                );
            }
        }
    }
}

#[test]
fn half_products_match_f64() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new(20);
    for dtype in [DType::BF16, DType::F16] {
        for m in [1, 2, 3, 4, 5, 9] {
            // (129, 3000) and (300, 1000) widen B in several blocks of columns (2 MiB of f32 each)
            for (k, n) in [
                (1, 1),
                (7, 3),
                (33, 17),
                (129, 65),
                (257, 31),
                (5, 300),
                (129, 3000),
                (300, 1000),
            ] {
                // a Linear: x [2, m, k] times W [n, k] transposed (contiguous columns of B),
                // W broadcast over the batch
                let (x, w) = (values(dtype, 2 * m * k, &mut rng), values(dtype, n * k, &mut rng));
                let y = half_tensor(dtype, &x, &[2, m, k])
                    .linear(&half_tensor(dtype, &w, &[n, k]), None)
                    .unwrap();
                let what = "linear";
                check(
                    what,
                    &y,
                    [2, m, k, n],
                    |b, i, p| x[(b * m + i) * k + p],
                    |_, p, j| w[j * k + p],
                );

                // a row-major B, one per batch entry (attention's probabilities times V)
                let v = values(dtype, 3 * k * n, &mut rng);
                let x = values(dtype, 3 * m * k, &mut rng);
                let y = half_tensor(dtype, &x, &[3, m, k])
                    .matmul(&half_tensor(dtype, &v, &[3, k, n]))
                    .unwrap();
                let what = "matmul, row-major B";
                check(
                    what,
                    &y,
                    [3, m, k, n],
                    |b, i, p| x[(b * m + i) * k + p],
                    |b, p, j| v[(b * k + p) * n + j],
                );
            }
        }
    }
}

#[test]
fn bf16_linear_makes_no_f32_copy_of_the_whole_weight() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (k, n) = (1024, 2048);
    let mut rng = Rng::new(7);
    let w = Tensor::randn(&[n, k], DType::F32, &mut rng, &DEV)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    let mut bytes = |m: usize| {
        let x = Tensor::randn(&[m, k], DType::F32, &mut rng, &DEV)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        x.linear(&w, None).unwrap(); // warm-up: rayon's pool, thread-local buffers
        let before = LIVE.load(Relaxed);
        PEAK.store(before, Relaxed);
        let y = x.linear(&w, None).unwrap();
        let peak = PEAK.load(Relaxed) - before;
        drop(y);
        peak
    };
    let f32_weight = 4 * k * n;
    let gemm = bytes(8);
    if kiln::backend::cpu::gemm::has_bf16_dot() {
        // the GEMM path (8 rows) multiplies the bf16 operands as they are (vdpbf16ps): nothing
        // is widened, the peak is the f32 product and packing buffers a thread grows on first use
        assert!(
            gemm < f32_weight / 4,
            "8 rows peaked at {gemm} more bytes, expected no f32 copy of the weight (its {f32_weight})"
        );
    } else {
        // the GEMM path (8 rows) widens 2 MiB blocks of the 8 MiB f32 weight, one at a time: the
        // peak holds one of them (so the counter does see the path's allocations), not the weight
        assert!(
            (2 << 20..f32_weight / 2).contains(&gemm),
            "8 rows peaked at {gemm} more bytes, expected one f32 block of 2 MiB, far less than the f32 weight's {f32_weight}"
        );
    }
    let streamed = bytes(1);
    assert!(
        streamed < f32_weight / 16,
        "1 row peaked at {streamed} more bytes, an f32 copy of the weight is {f32_weight}"
    );
}

/// `Tensor::linear_many` (one input, several weights: a layer's q, k, v projections): each result
/// is `linear(w, None)`'s, bit for bit, in f32 and bf16, for inputs of 1 to 4 rows (the shared
/// parallel region on the CPU, its tasks cutting through one weight into the next) and of 5 rows
/// and while autograd records (one product after the other); and the results are right, against
/// the f64 reference.
#[test]
fn linear_many_is_one_linear_per_weight() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new(21);
    let k = 300;
    let ns = [513, 77, 301];
    for dtype in [DType::F32, DType::BF16] {
        let tensor = |v: &[f32], shape: &[usize]| match dtype {
            DType::F32 => Tensor::from_vec(v.to_vec(), shape, &DEV).unwrap(),
            _ => half_tensor(dtype, v, shape),
        };
        let wv: Vec<Vec<f32>> = ns.iter().map(|&n| values(DType::BF16, n * k, &mut rng)).collect();
        let ws: Vec<Tensor> = wv.iter().zip(ns).map(|(v, n)| tensor(v, &[n, k])).collect();
        let w_refs: Vec<&Tensor> = ws.iter().collect();
        for (m, grad) in [(1, false), (2, false), (3, false), (4, false), (5, false), (1, true)] {
            let xv = values(DType::BF16, m * k, &mut rng);
            let mut x = tensor(&xv, &[1, m, k]);
            if grad {
                x = x.requires_grad();
            }
            let ys = x.linear_many(&w_refs).unwrap();
            assert_eq!(ys.len(), ns.len());
            for (((y, w), n), v) in ys.iter().zip(&ws).zip(ns).zip(&wv) {
                let what = format!("linear_many {dtype} m {m} n {n} grad {grad}");
                let want = x.linear(w, None).unwrap();
                assert_eq!(y.shape(), want.shape(), "{what}");
                assert_eq!(y.dtype(), dtype, "{what}");
                let bits = |t: &Tensor| -> Vec<u32> {
                    let f: Vec<f32> = t.to_dtype(DType::F32).unwrap().to_vec().unwrap();
                    f.iter().map(|x| x.to_bits()).collect()
                };
                assert_eq!(bits(y), bits(&want), "{what}");
                if dtype == DType::BF16 {
                    check(&what, y, [1, m, k, n], |_, i, p| xv[i * k + p], |_, p, j| v[j * k + p]);
                }
            }
            if grad {
                // recorded: the gradient flows back through every product
                let loss = ys.iter().map(|y| y.to_dtype(DType::F32).unwrap().sum_all().unwrap());
                let loss = loss.reduce(|a, b| a.add(&b).unwrap()).unwrap();
                let grads = loss.backward().unwrap();
                assert!(grads.get(&x).is_some(), "linear_many recorded no gradient for x");
            }
        }
        // a weight of other columns: linear's error, naming the shapes
        let bad = tensor(&values(DType::BF16, 4 * (k + 1), &mut rng), &[4, k + 1]);
        let x = tensor(&values(DType::BF16, k, &mut rng), &[1, k]);
        let err = x.linear_many(&[&ws[0], &bad]).unwrap_err().to_string();
        assert!(err.contains("301") && err.contains("linear"), "{err}");
    }
}
