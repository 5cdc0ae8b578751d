//! The table of benchmarked kernels. A case is one entry of [`CASES`]: its name, what bounds it
//! (arithmetic or memory traffic), its default sizes per device, and a `prepare` function that
//! builds the inputs (several sets, rotated between repetitions so the cache does not flatter)
//! and returns the work to time with its FLOP and byte counts (and of those, the bytes written),
//! and a check that runs the op once on the first set and compares it with the CPU reference
//! (check.rs).
//!
//! To add a kernel, add an entry to [`CASES`]; `kiln bench --kernels NAME` then finds it. A fused
//! kernel's `library` is its unfused composition, so the fusion's gain shows as `%lib`.

use super::check::{
    adamw_first_step, compare_rows, cross_entropy_backward as cross_entropy_backward_reference, host, linear_rows,
    matmul_rows, norm_backward, rows, sample, softmax_backward as softmax_backward_reference,
    swiglu_backward as swiglu_backward_reference, tolerance, Check, Comparison, QUANTIZED_TOLERANCE,
};
use super::library;
pub use super::work::{Setup, Work};
use crate::backend::cpu::reference as r;
use crate::backend::cpu::sample::sample_row;
use crate::backend::Storage;
use crate::backend::{IdBuckets, RowStats, SampleParams};
use crate::gguf::{dequantize, GgmlType};
use crate::ops::attention::{attention_backward, attention_forward};
use crate::ops::linear_quantized::QuantizedMatrix;
use crate::ops::rope::RopeLayout;
use crate::optim::AdamW;
use crate::{DType, Device, Gradients, Result, Rng, Tensor};
use rayon::prelude::*;
use std::rc::Rc;

/// What limits a kernel: arithmetic (compared with the best library matmul) or memory traffic
/// (compared with a device-to-device copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    Compute,
    Memory,
}

/// What a case is compared with at the same sizes (a library, or an unfused version of a fused
/// kernel): its name and its work.
pub type Baseline = fn(&Setup, &mut Rng) -> Result<(String, Work)>;

/// One benchmarked kernel.
pub struct Case {
    pub name: &'static str,
    pub about: &'static str,
    /// The form of a size: "MxNxK" or "ROWSxCOLS".
    pub dims: &'static str,
    pub bound: Bound,
    pub dtype: DType,
    /// Default sizes on a GPU, on the CPU, and on Emu (small: Emu is slow). An empty list skips
    /// the device unless `--sizes` is given.
    pub cuda: &'static [&'static [usize]],
    pub cpu: &'static [&'static [usize]],
    pub emu: &'static [&'static [usize]],
    pub prepare: fn(&Setup, &mut Rng) -> Result<Work>,
    /// The same computation by a library (or unfused), timed at the same sizes right after ours
    /// and shown as `%lib`.
    pub library: Option<Baseline>,
}

impl Case {
    pub fn default_sizes(&self, dev: &Device) -> &'static [&'static [usize]] {
        match dev {
            Device::Cuda(_) => self.cuda,
            Device::Cpu => self.cpu,
            Device::Emu => self.emu,
        }
    }

    /// The number of dimensions in a size of this case.
    pub fn rank(&self) -> usize {
        self.dims.split('x').count()
    }
}

/// GPT-2 124M's activations are [B·T, C] = [8192, 768] at B = 8, T = 1024; its logits [8192, 50257].
const ROWS_CUDA: &[&[usize]] = &[&[8192, 768], &[16384, 4096]];
const ROWS_CPU: &[&[usize]] = &[&[768, 128], &[4096, 1024]];
const ROWS_EMU: &[&[usize]] = &[&[33, 257]];

/// Attention [B, H, T, D]: GPT-2 124M (12 heads of 64 at T = 1024) on a GPU, in bf16 also 16 heads
/// of 128 (a 2048-wide model, FlashAttention-2's benchmark width); the nanoGPT CPU recipe (4 heads
/// of 32, T = 64) and one GPT-2 sequence on the CPU.
const ATTENTION_CUDA: &[&[usize]] = &[&[8, 12, 1024, 64]];
const ATTENTION_CUDA_BF16: &[&[usize]] = &[&[8, 12, 1024, 64], &[8, 16, 1024, 128]];
const ATTENTION_CPU: &[&[usize]] = &[&[12, 4, 64, 32], &[1, 12, 1024, 64]];
const ATTENTION_EMU: &[&[usize]] = &[&[1, 2, 65, 32]];

const F32: usize = 4;

/// `sets` copies of a random `shape` tensor.
fn inputs(sets: usize, shape: &[usize], dtype: DType, rng: &mut Rng, dev: &Device) -> Result<Vec<Tensor>> {
    (0..sets).map(|_| Tensor::randn(shape, dtype, rng, dev)).collect()
}

fn rows_cols(s: &Setup) -> (usize, usize, f64) {
    let (r, c) = (s.dims[0], s.dims[1]);
    (r, c, (r * c) as f64)
}

/// A check for [`Work::check`].
fn checked(f: impl FnMut() -> Result<Check> + 'static) -> Option<Box<dyn FnMut() -> Result<Check>>> {
    Some(Box::new(f))
}

/// Tensor::matmul of random `[M, K]` and `[K, N]` operands, `s.dims` = [M, N, K].
pub(super) fn matmul(s: &Setup, rng: &mut Rng, dtype: DType) -> Result<Work> {
    let (m, n, k) = (s.dims[0], s.dims[1], s.dims[2]);
    let size = dtype.size_in_bytes() as f64;
    let in_bytes = (m * k + k * n) as f64 * size;
    let sets = s.sets(in_bytes);
    let a = inputs(sets, &[m, k], dtype, rng, &s.dev)?;
    let b = inputs(sets, &[k, n], dtype, rng, &s.dev)?;
    let (a0, b0) = (a[0].clone(), b[0].clone());
    Ok(Work {
        flops: 2.0 * (m * n * k) as f64,
        bytes: in_bytes + (m * n) as f64 * size,
        written: (m * n) as f64 * size,
        sets,
        run: Box::new(move |i| a[i % sets].matmul(&b[i % sets]).map(drop)),
        check: checked(move || {
            let c = host(&a0.matmul(&b0)?)?;
            let which = sample(m);
            let want = matmul_rows(&rows(&host(&a0)?, k, &which), &host(&b0)?, k, n);
            Ok(Comparison::new(tolerance(dtype))
                .compare("c", &rows(&c, n, &which), &want)
                .finish())
        }),
    })
}

/// `gelu(x·wᵀ + b)` with x `[M, K]`, w `[N, K]`, b `[N]` (`s.dims` = [M, N, K]): one fused
/// `linear_gelu`, or (`fused` false) the matmul, the bias add and the GELU as three ops.
fn linear_gelu(s: &Setup, rng: &mut Rng, fused: bool) -> Result<Work> {
    let (m, n, k) = (s.dims[0], s.dims[1], s.dims[2]);
    let in_bytes = ((m * k + n * k + n) * F32) as f64;
    let sets = s.sets(in_bytes);
    let x = inputs(sets, &[m, k], DType::F32, rng, &s.dev)?;
    let w = inputs(sets, &[n, k], DType::F32, rng, &s.dev)?;
    let b = inputs(sets, &[n], DType::F32, rng, &s.dev)?;
    let op = move |x: &Tensor, w: &Tensor, b: &Tensor| {
        if fused {
            x.linear_gelu(w, Some(b))
        } else {
            x.matmul(&w.transpose(0, 1)?)?.add(b)?.gelu()
        }
    };
    let (x0, w0, b0) = (x[0].clone(), w[0].clone(), b[0].clone());
    Ok(Work {
        flops: 2.0 * (m * n * k) as f64,
        bytes: in_bytes + (m * n * F32) as f64,
        written: (m * n * F32) as f64,
        sets,
        run: Box::new(move |i| op(&x[i % sets], &w[i % sets], &b[i % sets]).map(drop)),
        check: checked(move || {
            let y = host(&op(&x0, &w0, &b0)?)?;
            let which = sample(m);
            let xw = linear_rows(&rows(&host(&x0)?, k, &which), &host(&w0)?, k);
            let bias = host(&b0)?;
            let want: Vec<f64> = xw.iter().enumerate().map(|(i, v)| r::gelu(v + bias[i % n])).collect();
            Ok(Comparison::new(tolerance(DType::F32))
                .compare("y", &rows(&y, n, &which), &want)
                .finish())
        }),
    })
}

/// A random `[rows, cols]` matrix of ggml type `ty` (random quants, f16 scales in [-0.05, 0.05]
/// where the format keeps its `d` and `m`/`dmin`: the first 4 bytes, or Q6_K's last 2).
fn random_quantized(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Result<QuantizedMatrix> {
    let format = ty.quant_format().expect("a quantized type");
    let mut bytes = vec![0u8; rows * cols / format.block_size() * format.block_bytes()];
    for block in bytes.chunks_exact_mut(format.block_bytes()) {
        block.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
        let scales = if ty == GgmlType::Q6_K { 208..210 } else { 0..4 };
        for at in scales.step_by(2) {
            let v = half::f16::from_f64(0.1 * rng.uniform() - 0.05);
            block[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    QuantizedMatrix::new(format, rows, cols, bytes)
}

/// How a `linear_quantized` case multiplies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum QuantProduct {
    /// `Tensor::linear_quantized` under `no_grad` (x rounded to 8 bits; AMX where present).
    Op,
    /// The integer GEMM on the best instruction set short of AMX (AVX-512 VNNI, else AVX2).
    SimdGemm,
    /// W decoded to f32 in blocks of rows and the f32 GEMM (the training forward).
    Decoded,
    /// W dequantized once to an f32 tensor, through `linear`: the baseline.
    F32,
}

/// `x·Wᵀ` with x f32 `[M, K]` and W `[N, K]` of ggml type `ty` (`s.dims` = [M, N, K], K rounded up
/// to whole blocks of the type: 32 weights, 256 for Q4_K and Q6_K), multiplied as `how` says. The
/// measure is the bytes of W read (M = 1: decode). Checked against W dequantized by the GGUF
/// reader, in f64.
fn linear_quantized(s: &Setup, rng: &mut Rng, ty: GgmlType, how: QuantProduct) -> Result<Work> {
    use crate::backend::cpu::linear_quantized::{linear_dequantized, linear_quantized_gemm_on, QuantIsa};
    let (m, n) = (s.dims[0], s.dims[1]);
    let k = s.dims[2].next_multiple_of(ty.block_size() as usize);
    let w_bytes = if how == QuantProduct::F32 {
        (n * k * F32) as f64
    } else {
        (n * k / ty.block_size() as usize * ty.type_size() as usize) as f64
    };
    let in_bytes = w_bytes + (m * k * F32) as f64;
    let sets = s.sets(in_bytes);
    let x = inputs(sets, &[m, k], DType::F32, rng, &s.dev)?;
    let w = (0..sets)
        .map(|_| random_quantized(ty, n, k, rng)?.to_device(&s.dev))
        .collect::<Result<Vec<_>>>()?;
    let w0 = dequantize(ty, &w[0].gguf_rows(0..n))?;
    let x0 = x[0].clone();
    let host_x = x.iter().map(|x| x.to_vec::<f32>()).collect::<Result<Vec<_>>>();
    let (mut run, tol): (Box<dyn FnMut(usize) -> Result<Tensor>>, f64) = match how {
        QuantProduct::F32 => {
            let w = w
                .iter()
                .map(|w| Tensor::from_vec(dequantize(ty, &w.gguf_rows(0..n))?, &[n, k], &s.dev))
                .collect::<Result<Vec<_>>>()?;
            (
                Box::new(move |i| x[i % sets].linear(&w[i % sets], None)),
                tolerance(DType::F32),
            )
        }
        QuantProduct::Op => (
            // as generation runs it: under no_grad, the integer kernels (recorded, W is decoded)
            Box::new(move |i| {
                let _no_grad = crate::no_grad();
                x[i % sets].linear_quantized(&w[i % sets])
            }),
            QUANTIZED_TOLERANCE,
        ),
        QuantProduct::SimdGemm => {
            let isa = [QuantIsa::Avx512Vnni, QuantIsa::Avx2, QuantIsa::Portable]
                .into_iter()
                .find(|isa| isa.is_supported())
                .expect("Portable is always supported");
            let x = host_x?;
            (
                Box::new(move |i| {
                    let y = linear_quantized_gemm_on(isa, &x[i % sets], &w[i % sets])?;
                    Tensor::from_vec(y, &[m, n], &Device::Cpu)
                }),
                QUANTIZED_TOLERANCE,
            )
        }
        QuantProduct::Decoded => {
            let x = host_x?;
            (
                Box::new(move |i| {
                    Tensor::from_vec(linear_dequantized(&x[i % sets], &w[i % sets])?, &[m, n], &Device::Cpu)
                }),
                tolerance(DType::F32),
            )
        }
    };
    let y0 = run(0)?;
    Ok(Work {
        flops: 2.0 * (m * n * k) as f64,
        bytes: in_bytes + (m * n * F32) as f64,
        written: (m * n * F32) as f64,
        sets,
        run: Box::new(move |i| run(i).map(drop)),
        check: checked(move || {
            let which = sample(m);
            let w: Vec<f64> = w0.iter().map(|&v| f64::from(v)).collect();
            let want = linear_rows(&rows(&host(&x0)?, k, &which), &w, k);
            Ok(Comparison::new(tol)
                .compare("y", &rows(&host(&y0)?, n, &which), &want)
                .finish())
        }),
    })
}

/// `x·Wᵀ` for bf16 x `[M, K]` and W `[N, K]` (`s.dims` = [M, N, K]) on `gemm::bgemm_on`: with
/// `amx`, the fastest bf16 kernel this CPU runs (AMX tiles, else `vdpbf16ps`, else portable),
/// else the fastest short of AMX: the baseline. W is read transposed in place, as a Linear's
/// forward reads it; C is f32. CPU only. Checked against an f64 loop on the bf16 values.
fn bgemm(s: &Setup, rng: &mut Rng, amx: bool) -> Result<(String, Work)> {
    use crate::backend::cpu::gemm::{bgemm_on, Bf16Isa};
    let (m, n, k) = (s.dims[0], s.dims[1], s.dims[2]);
    let isa = [Bf16Isa::Amx, Bf16Isa::Avx512Bf16, Bf16Isa::Portable]
        .into_iter()
        .find(|&isa| isa.is_supported() && (amx || isa != Bf16Isa::Amx))
        .expect("Portable is always supported");
    let in_bytes = ((m * k + n * k) * 2) as f64;
    let sets = s.sets(in_bytes);
    let host_bf16 = |t: &Tensor| t.to_vec::<half::bf16>();
    let x = inputs(sets, &[m, k], DType::BF16, rng, &Device::Cpu)?;
    let w = inputs(sets, &[n, k], DType::BF16, rng, &Device::Cpu)?;
    let (x0, w0) = (host(&x[0])?, host(&w[0])?);
    let x = x.iter().map(host_bf16).collect::<Result<Vec<_>>>()?;
    let w = w.iter().map(host_bf16).collect::<Result<Vec<_>>>()?;
    let product = move |i: usize| {
        let mut c = vec![0f32; m * n];
        let (k, n) = (k as isize, n as isize);
        bgemm_on(
            isa,
            m,
            n as usize,
            k as usize,
            1.0,
            &x[i % sets],
            k,
            1,
            &w[i % sets],
            1,
            k,
            0.0,
            &mut c,
            n,
            1,
        );
        c
    };
    let c0: Vec<f64> = product(0).into_iter().map(f64::from).collect();
    Ok((
        format!("{isa:?}"),
        Work {
            flops: 2.0 * (m * n * k) as f64,
            bytes: in_bytes + (m * n * F32) as f64,
            written: (m * n * F32) as f64,
            sets,
            run: Box::new(move |i| {
                product(i);
                Ok(())
            }),
            check: checked(move || {
                let which = sample(m);
                let want = linear_rows(&rows(&x0, k, &which), &w0, k);
                Ok(Comparison::new(tolerance(DType::F32))
                    .compare("c", &rows(&c0, n, &which), &want)
                    .finish())
            }),
        },
    ))
}

/// What an attention case times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    Forward,
    /// The forward, then the backward of Σ o through autograd.
    ForwardBackward,
    /// The fused backward alone, from a saved forward (o, lse) and a random dO: the figure to
    /// hold against the forward's rate.
    Backward,
}

/// The heads an attention check compares: the first and the last of `heads`.
fn checked_heads(heads: usize) -> Vec<usize> {
    if heads > 1 {
        vec![0, heads - 1]
    } else {
        vec![0]
    }
}

/// The reference causal attention of the query heads `q_heads` of q `[.., tq = t, d]` (flattened
/// heads), each over key/value head `kv_of(h)`: the outputs, and with `dout` the gradients
/// (dq of those query heads; dk, dv summed per key/value head, in the order of first use).
#[allow(clippy::type_complexity)]
fn reference_attention(
    (q, k, v): (&[f64], &[f64], &[f64]),
    dout: Option<&[f64]>,
    q_heads: &[usize],
    kv_of: impl Fn(usize) -> usize + Sync,
    t: usize,
    d: usize,
) -> (Vec<f64>, Vec<f64>, Vec<(usize, Vec<f64>, Vec<f64>)>) {
    let head = |x: &[f64], h: usize| x[h * t * d..(h + 1) * t * d].to_vec();
    // one thread per head: o, and with dout the head's (dq, dk, dv)
    let per_head: Vec<_> = q_heads
        .par_iter()
        .map(|&h| {
            let (qh, kh, vh) = (head(q, h), head(k, kv_of(h)), head(v, kv_of(h)));
            let o = r::attention(&qh, &kh, &vh, 1, t, t, d, true);
            (
                o,
                dout.map(|g| r::attention_grads(&qh, &kh, &vh, &head(g, h), 1, t, t, d, true)),
            )
        })
        .collect();
    let (mut o, mut dq) = (Vec::new(), Vec::new());
    let mut dkv: Vec<(usize, Vec<f64>, Vec<f64>)> = Vec::new();
    for (&h, (oh, grads)) in q_heads.iter().zip(per_head) {
        o.extend(oh);
        if let Some((gq, gk, gv)) = grads {
            dq.extend(gq);
            match dkv.iter_mut().find(|e| e.0 == kv_of(h)) {
                Some(e) => {
                    e.1.iter_mut().zip(&gk).for_each(|(a, b)| *a += b);
                    e.2.iter_mut().zip(&gv).for_each(|(a, b)| *a += b);
                }
                None => dkv.push((kv_of(h), gk, gv)),
            }
        }
    }
    (o, dq, dkv)
}

/// Compares attention's outputs (o; with gradients dq, dk, dv) for `q_heads` against
/// [`reference_attention`]; `got` holds the device's full tensors, heads flattened.
#[allow(clippy::too_many_arguments)]
fn compare_attention(
    tol: f64,
    qkv: [&Tensor; 3],
    dout: Option<&Tensor>,
    got_o: Option<&Tensor>,
    got_grads: Option<[&Tensor; 3]>,
    q_heads: &[usize],
    kv_of: impl Fn(usize) -> usize + Sync,
    t: usize,
    d: usize,
) -> Result<Check> {
    let (q, k, v) = (host(qkv[0])?, host(qkv[1])?, host(qkv[2])?);
    let g = dout.map(host).transpose()?;
    let (o, dq, dkv) = reference_attention((&q, &k, &v), g.as_deref(), q_heads, &kv_of, t, d);
    let mut cmp = Comparison::new(tol);
    if let Some(got) = got_o {
        cmp = cmp.compare("o", &rows(&host(got)?, t * d, q_heads), &o);
    }
    if let Some([gq, gk, gv]) = got_grads {
        let kv_heads: Vec<usize> = dkv.iter().map(|e| e.0).collect();
        let want = |i: usize| {
            dkv.iter()
                .flat_map(|e| if i == 1 { &e.1 } else { &e.2 })
                .copied()
                .collect::<Vec<_>>()
        };
        cmp = cmp
            .compare("dq", &rows(&host(gq)?, t * d, q_heads), &dq)
            .compare("dk", &rows(&host(gk)?, t * d, &kv_heads), &want(1))
            .compare("dv", &rows(&host(gv)?, t * d, &kv_heads), &want(2));
    }
    Ok(cmp.finish())
}

/// Causal attention of random q, k, v `[B, H, T, D]` (`s.dims`) in `dtype`: the fused
/// `scaled_dot_product_attention`, or (`fused` false) the composition a reader would write
/// (scores, mask, softmax, weighted values); `pass` says which part is timed. FLOPs as
/// FlashAttention counts them: 4·T²·D per head forward, 2.5 times that backward (the
/// deterministic kernels do 3.5 times: see kernels/attention.cu), halved for the causal mask.
/// Checked on the first and last heads against the reference's output and gradients (of Σ o, or
/// of Σ o·dO for the backward alone).
fn attention(s: &Setup, rng: &mut Rng, dtype: DType, fused: bool, pass: Pass) -> Result<Work> {
    let (b, h, t, d) = (s.dims[0], s.dims[1], s.dims[2], s.dims[3]);
    let shape = [b, h, t, d];
    let (n, size) = ((b * h * t * d) as f64, dtype.size_in_bytes() as f64);
    let sets = s.sets(3.0 * n * size);
    let leaf = |x: Tensor| {
        if pass == Pass::ForwardBackward {
            x.requires_grad()
        } else {
            x
        }
    };
    let operand = |rng: &mut Rng| -> Result<Vec<Tensor>> {
        Ok(inputs(sets, &shape, dtype, rng, &s.dev)?
            .into_iter()
            .map(leaf)
            .collect())
    };
    let (q, k, v) = (operand(rng)?, operand(rng)?, operand(rng)?);
    let forward_flops = 4.0 * (b * h * t * t * d) as f64 / 2.0;
    // the forward reads q, k, v and writes o; the backward reads q, k, v, o, dO and writes dQ, dK, dV
    let (flops, bytes, written) = match pass {
        Pass::Forward => (forward_flops, 4.0 * n * size, n * size),
        Pass::ForwardBackward => (3.5 * forward_flops, 8.0 * n * size, 4.0 * n * size),
        Pass::Backward => (2.5 * forward_flops, 8.0 * n * size, 3.0 * n * size),
    };
    let (tol, heads) = (tolerance(dtype), checked_heads(b * h));
    let (q0, k0, v0) = (q[0].clone(), k[0].clone(), v[0].clone());
    if pass == Pass::Backward {
        let saved = (0..sets)
            .map(|i| attention_forward(&q[i], &k[i], &v[i], true))
            .collect::<Result<Vec<_>>>()?;
        let dout = inputs(sets, &shape, dtype, rng, &s.dev)?;
        let (o0, lse0, dout0) = (saved[0].0.clone(), saved[0].1.clone(), dout[0].clone());
        return Ok(Work {
            flops,
            bytes,
            written,
            sets,
            run: Box::new(move |i| {
                let (i, (o, lse)) = (i % sets, &saved[i % sets]);
                attention_backward(&q[i], &k[i], &v[i], o, lse, &dout[i], true).map(drop)
            }),
            check: checked(move || {
                let [dq, dk, dv] = attention_backward(&q0, &k0, &v0, &o0, &lse0, &dout0, true)?;
                let grads = Some([&dq, &dk, &dv]);
                compare_attention(tol, [&q0, &k0, &v0], Some(&dout0), None, grads, &heads, |h| h, t, d)
            }),
        });
    }
    let mask = crate::model::causal_mask(t, t, 0, &s.dev)?;
    let forward = move |q: &Tensor, k: &Tensor, v: &Tensor| -> Result<Tensor> {
        if fused {
            q.scaled_dot_product_attention(k, v, true)
        } else {
            let att = q.mul_scalar(1.0 / (d as f64).sqrt())?.matmul(&k.transpose(-2, -1)?)?;
            att.masked_fill(&mask, f64::NEG_INFINITY)?.softmax(-1)?.matmul(v)
        }
    };
    let run_forward = forward.clone();
    Ok(Work {
        flops,
        bytes,
        written,
        sets,
        run: Box::new(move |i| {
            let o = run_forward(&q[i % sets], &k[i % sets], &v[i % sets])?;
            if pass == Pass::ForwardBackward {
                o.sum_all()?.backward().map(drop)
            } else {
                Ok(())
            }
        }),
        check: checked(move || {
            let o = forward(&q0, &k0, &v0)?;
            if pass == Pass::Forward {
                return compare_attention(tol, [&q0, &k0, &v0], None, Some(&o), None, &heads, |h| h, t, d);
            }
            let g = o.sum_all()?.backward()?;
            let grad = |x: &Tensor| g.get(x).cloned().expect("q, k and v require gradients");
            let (dq, dk, dv) = (grad(&q0), grad(&k0), grad(&v0));
            let ones = Tensor::ones(&shape, DType::F32, q0.device())?;
            let grads = Some([&dq, &dk, &dv]);
            compare_attention(tol, [&q0, &k0, &v0], Some(&ones), Some(&o), grads, &heads, |h| h, t, d)
        }),
    })
}

/// Causal grouped-query attention, forward and backward through autograd, of random q `[B, H, T, D]`
/// over k, v `[B, Hkv, T, D]` (`s.dims` = [B, H, Hkv, T, D]) in `dtype`. FLOPs as [`attention`]'s
/// forward + backward; bytes: q, o, dO, dQ of the query heads and k, v, dK, dV of the key/value heads.
/// Checked on the first and last key/value heads and every query head that reads them.
fn grouped_query_attention(s: &Setup, rng: &mut Rng, dtype: DType) -> Result<Work> {
    let (b, h, hkv, t, d) = (s.dims[0], s.dims[1], s.dims[2], s.dims[3], s.dims[4]);
    let (nq, nkv, size) = (
        (b * h * t * d) as f64,
        (b * hkv * t * d) as f64,
        dtype.size_in_bytes() as f64,
    );
    let sets = s.sets((nq + 2.0 * nkv) * size);
    let operand = |shape: &[usize], rng: &mut Rng| -> Result<Vec<Tensor>> {
        Ok(inputs(sets, shape, dtype, rng, &s.dev)?
            .into_iter()
            .map(|x| x.requires_grad())
            .collect())
    };
    let q = operand(&[b, h, t, d], rng)?;
    let (k, v) = (operand(&[b, hkv, t, d], rng)?, operand(&[b, hkv, t, d], rng)?);
    let (q0, k0, v0) = (q[0].clone(), k[0].clone(), v[0].clone());
    let group = h / hkv.max(1);
    // query head j of batch entry i (flat i·H + j) reads key/value head i·Hkv + j / group
    let kv_of = move |flat: usize| (flat / h) * hkv + (flat % h) / group;
    let q_heads: Vec<usize> = checked_heads(b * hkv)
        .into_iter()
        .flat_map(|kv| {
            let (i, j) = (kv / hkv, kv % hkv);
            (j * group..(j + 1) * group).map(move |jq| i * h + jq)
        })
        .collect();
    Ok(Work {
        flops: 3.5 * 4.0 * (b * h * t * t * d) as f64 / 2.0,
        bytes: 4.0 * (nq + nkv) * size,
        // o and dQ; dK and dV
        written: 2.0 * (nq + nkv) * size,
        sets,
        run: Box::new(move |i| {
            let (q, k, v) = (&q[i % sets], &k[i % sets], &v[i % sets]);
            q.scaled_dot_product_attention(k, v, true)?
                .sum_all()?
                .backward()
                .map(drop)
        }),
        check: checked(move || {
            let o = q0.scaled_dot_product_attention(&k0, &v0, true)?;
            let g = o.sum_all()?.backward()?;
            let grad = |x: &Tensor| g.get(x).cloned().expect("q, k and v require gradients");
            let (dq, dk, dv) = (grad(&q0), grad(&k0), grad(&v0));
            let ones = Tensor::ones(&[b, h, t, d], DType::F32, q0.device())?;
            let grads = Some([&dq, &dk, &dv]);
            let tol = tolerance(dtype);
            compare_attention(
                tol,
                [&q0, &k0, &v0],
                Some(&ones),
                Some(&o),
                grads,
                &q_heads,
                kv_of,
                t,
                d,
            )
        }),
    })
}

/// The naive reference of a row-wise case: its inputs' sampled rows, the number of rows and the
/// width (check.rs's [`compare_rows`]).
type RowReference = fn(&[Vec<f64>], usize, usize) -> Vec<f64>;

/// A memory-bound case over one `[rows, cols]` f32 input, read once, whose output (of any width:
/// a sum's is one) is written once; checked on sampled rows against `reference`.
fn rowwise(s: &Setup, rng: &mut Rng, op: fn(&Tensor) -> Result<Tensor>, reference: RowReference) -> Result<Work> {
    let (r, c, n) = rows_cols(s);
    let sets = s.sets(n * F32 as f64);
    let x = inputs(sets, &[r, c], DType::F32, rng, &s.dev)?;
    let x0 = x[0].clone();
    let written = (op(&x0)?.shape().iter().product::<usize>() * F32) as f64;
    Ok(Work {
        flops: 0.0,
        bytes: n * F32 as f64 + written,
        written,
        sets,
        run: Box::new(move |i| op(&x[i % sets]).map(drop)),
        check: checked(move || {
            let got = host(&op(&x0)?)?;
            let inputs = [host(&x0)?];
            let widths = (c, got.len() / r);
            Ok(compare_rows(tolerance(DType::F32), widths, &inputs, &got, |x, rows| {
                reference(x, rows, c)
            }))
        }),
    })
}

/// Tensor::sample over `[rows, vocab]` logits (kernels/sample.cu on a GPU), one uniform number per
/// row. Bytes: the logits read once and the ids written (the kernel reads the row up to 13 times,
/// mostly from L2); FLOPs left at 0, the weights' f64 arithmetic is not the measure. The check:
/// every id equals the CPU reference's.
fn sampler(s: &Setup, rng: &mut Rng) -> Result<Work> {
    let (r, c, n) = rows_cols(s);
    let sets = s.sets(n * F32 as f64);
    let x = inputs(sets, &[r, c], DType::F32, rng, &s.dev)?;
    let uniforms: Vec<f64> = (0..r).map(|_| rng.uniform()).collect();
    let params = SampleParams {
        temperature: 0.8,
        top_k: 50,
        top_p: 0.95,
    };
    let (x0, u0) = (x[0].clone(), uniforms.clone());
    Ok(Work {
        flops: 0.0,
        bytes: n * F32 as f64 + (r * 4) as f64,
        written: (r * 4) as f64,
        sets,
        run: Box::new(move |i| x[i % sets].sample(&params, &uniforms).map(drop)),
        check: checked(move || {
            let got: Vec<f64> = x0.sample(&params, &u0)?.into_iter().map(f64::from).collect();
            let logits = x0.to_vec::<f32>()?;
            let want = logits
                .chunks(c)
                .zip(&u0)
                .map(|(row, &u)| sample_row(row, &params, u).map(f64::from))
                .collect::<Result<Vec<f64>>>()?;
            // ids: equal or wrong, no rounding to allow for
            Ok(Comparison::new(0.0).compare("ids", &got, &want).finish())
        }),
    })
}

fn layer_norm(s: &Setup, rng: &mut Rng) -> Result<Work> {
    let (r, c, n) = rows_cols(s);
    let sets = s.sets(n * F32 as f64);
    let x = inputs(sets, &[r, c], DType::F32, rng, &s.dev)?;
    let w = Tensor::randn(&[c], DType::F32, rng, &s.dev)?;
    let b = Tensor::randn(&[c], DType::F32, rng, &s.dev)?;
    let (x0, w0, b0) = (x[0].clone(), w.clone(), b.clone());
    Ok(Work {
        flops: 0.0,
        bytes: (2.0 * n + 2.0 * c as f64) * F32 as f64,
        written: n * F32 as f64,
        sets,
        run: Box::new(move |i| x[i % sets].layer_norm(&w, &b, 1e-5).map(drop)),
        check: checked(move || {
            let got = host(&x0.layer_norm(&w0, &b0, 1e-5)?)?;
            let (w, b) = (host(&w0)?, host(&b0)?);
            Ok(compare_rows(
                tolerance(DType::F32),
                (c, c),
                &[host(&x0)?],
                &got,
                |x, rows| r::layer_norm(&x[0], &[rows, c], &w, Some(&b), 1e-5),
            ))
        }),
    })
}

/// The backward kernels of the row ops are timed alone, on their forward's saved state (built once
/// per input set): softmax's from y and dy, layer_norm's (dx, then dw and db) from the saved row
/// statistics, cross_entropy's from the log-sum-exps. f32 `[rows, cols]`.
fn softmax_backward(s: &Setup, rng: &mut Rng) -> Result<Work> {
    let (r, c, n) = rows_cols(s);
    let sets = s.sets(2.0 * n * F32 as f64);
    let y = inputs(sets, &[r, c], DType::F32, rng, &s.dev)?
        .iter()
        .map(|x| x.softmax(-1))
        .collect::<Result<Vec<_>>>()?;
    let dy = inputs(sets, &[r, c], DType::F32, rng, &s.dev)?;
    let (y0, dy0) = (y[0].clone(), dy[0].clone());
    let kernel = move |y: &Tensor, dy: &Tensor| -> Result<Tensor> {
        let dx = y.storage().softmax_backward_last_dim(&dy.storage(), c, false)?;
        Ok(Tensor::from_parts(dx, &[r, c]))
    };
    Ok(Work {
        flops: 0.0,
        // y and dy read, dx written
        bytes: 3.0 * n * F32 as f64,
        written: n * F32 as f64,
        sets,
        run: Box::new(move |i| kernel(&y[i % sets], &dy[i % sets]).map(drop)),
        check: checked(move || {
            let got = host(&kernel(&y0, &dy0)?)?;
            let inputs = [host(&y0)?, host(&dy0)?];
            Ok(compare_rows(tolerance(DType::F32), (c, c), &inputs, &got, |x, _| {
                softmax_backward_reference(&x[0], &x[1], c)
            }))
        }),
    })
}

/// Compares a backward's outputs with the reference's, whole.
fn compare_all(outputs: &[(&str, &Tensor, &[f64])]) -> Result<Check> {
    let mut cmp = Comparison::new(tolerance(DType::F32));
    for (name, got, want) in outputs {
        cmp = cmp.compare(name, &host(got)?, want);
    }
    Ok(cmp.finish())
}

fn layer_norm_backward(s: &Setup, rng: &mut Rng) -> Result<Work> {
    let (r, c, n) = rows_cols(s);
    let sets = s.sets(2.0 * n * F32 as f64);
    let x = inputs(sets, &[r, c], DType::F32, rng, &s.dev)?;
    let dy = inputs(sets, &[r, c], DType::F32, rng, &s.dev)?;
    let w = Tensor::randn(&[c], DType::F32, rng, &s.dev)?;
    let b = Tensor::randn(&[c], DType::F32, rng, &s.dev)?;
    let stats = x
        .iter()
        .map(|x| {
            Ok(x.storage()
                .layer_norm_forward(&w.storage(), Some(&b.storage()), c, 1e-5)?
                .1)
        })
        .collect::<Result<Vec<RowStats>>>()?;
    let stats = Rc::new(stats);
    let (x0, dy0, w0, stats0) = (x[0].clone(), dy[0].clone(), w.clone(), stats.clone());
    let kernel = move |x: &Tensor, dy: &Tensor, w: &Tensor, stats: &RowStats| -> Result<[Tensor; 3]> {
        let (dx, dw, db) = x.storage().layer_norm_backward(&w.storage(), &dy.storage(), stats, c)?;
        Ok([
            Tensor::from_parts(dx, &[r, c]),
            Tensor::from_parts(dw, &[c]),
            Tensor::from_parts(db, &[c]),
        ])
    };
    Ok(Work {
        flops: 0.0,
        // x and dy read, dx written; w read, dw and db written
        bytes: (3.0 * n + 3.0 * c as f64) * F32 as f64,
        written: (n + 2.0 * c as f64) * F32 as f64,
        sets,
        run: Box::new(move |i| kernel(&x[i % sets], &dy[i % sets], &w, &stats[i % sets]).map(drop)),
        check: checked(move || {
            let [dx, dw, db] = kernel(&x0, &dy0, &w0, &stats0[0])?;
            let want = norm_backward(&host(&x0)?, &host(&w0)?, &host(&dy0)?, c, 1e-5, true);
            compare_all(&[("dx", &dx, &want.0), ("dw", &dw, &want.1), ("db", &db, &want.2)])
        }),
    })
}

fn rms_norm(s: &Setup, rng: &mut Rng) -> Result<Work> {
    let (r, c, n) = rows_cols(s);
    let sets = s.sets(n * F32 as f64);
    let x = inputs(sets, &[r, c], DType::F32, rng, &s.dev)?;
    let w = Tensor::randn(&[c], DType::F32, rng, &s.dev)?;
    let (x0, w0) = (x[0].clone(), w.clone());
    Ok(Work {
        flops: 0.0,
        // x read, y written; w read
        bytes: (2.0 * n + c as f64) * F32 as f64,
        written: n * F32 as f64,
        sets,
        run: Box::new(move |i| x[i % sets].rms_norm(&w, 1e-5).map(drop)),
        check: checked(move || {
            let got = host(&x0.rms_norm(&w0, 1e-5)?)?;
            let w = host(&w0)?;
            Ok(compare_rows(
                tolerance(DType::F32),
                (c, c),
                &[host(&x0)?],
                &got,
                |x, rows| r::rms_norm(&x[0], &[rows, c], &w, 1e-5),
            ))
        }),
    })
}

fn rms_norm_backward(s: &Setup, rng: &mut Rng) -> Result<Work> {
    let (r, c, n) = rows_cols(s);
    let sets = s.sets(2.0 * n * F32 as f64);
    let x = inputs(sets, &[r, c], DType::F32, rng, &s.dev)?;
    let dy = inputs(sets, &[r, c], DType::F32, rng, &s.dev)?;
    let w = Tensor::randn(&[c], DType::F32, rng, &s.dev)?;
    let rstd = x
        .iter()
        .map(|x| Ok(x.storage().rms_norm_forward(&w.storage(), c, 1e-5)?.1))
        .collect::<Result<Vec<Storage>>>()?;
    let rstd = Rc::new(rstd);
    let (x0, dy0, w0, rstd0) = (x[0].clone(), dy[0].clone(), w.clone(), rstd.clone());
    let kernel = move |x: &Tensor, dy: &Tensor, w: &Tensor, rstd: &Storage| -> Result<[Tensor; 2]> {
        let (dx, dw) = x.storage().rms_norm_backward(&w.storage(), &dy.storage(), rstd, c)?;
        Ok([Tensor::from_parts(dx, &[r, c]), Tensor::from_parts(dw, &[c])])
    };
    Ok(Work {
        flops: 0.0,
        // x and dy read, dx written; w read, dw written
        bytes: (3.0 * n + 2.0 * c as f64) * F32 as f64,
        written: (n + c as f64) * F32 as f64,
        sets,
        run: Box::new(move |i| kernel(&x[i % sets], &dy[i % sets], &w, &rstd[i % sets]).map(drop)),
        check: checked(move || {
            let [dx, dw] = kernel(&x0, &dy0, &w0, &rstd0[0])?;
            let want = norm_backward(&host(&x0)?, &host(&w0)?, &host(&dy0)?, c, 1e-5, false);
            compare_all(&[("dx", &dx, &want.0), ("dw", &dw, &want.1)])
        }),
    })
}

/// swiglu's backward kernel alone: gate, up and dy `[rows, cols]` f32 read, dgate and dup written.
fn swiglu_backward(s: &Setup, rng: &mut Rng) -> Result<Work> {
    let (r, c, n) = rows_cols(s);
    let sets = s.sets(3.0 * n * F32 as f64);
    let gate = inputs(sets, &[r, c], DType::F32, rng, &s.dev)?;
    let up = inputs(sets, &[r, c], DType::F32, rng, &s.dev)?;
    let dy = inputs(sets, &[r, c], DType::F32, rng, &s.dev)?;
    let (g0, u0, dy0) = (gate[0].clone(), up[0].clone(), dy[0].clone());
    let kernel = move |g: &Tensor, u: &Tensor, dy: &Tensor| -> Result<[Tensor; 2]> {
        let (dg, du) = g.storage().swiglu_backward(&u.storage(), &dy.storage())?;
        Ok([Tensor::from_parts(dg, &[r, c]), Tensor::from_parts(du, &[r, c])])
    };
    Ok(Work {
        flops: 0.0,
        bytes: 5.0 * n * F32 as f64,
        written: 2.0 * n * F32 as f64,
        sets,
        run: Box::new(move |i| kernel(&gate[i % sets], &up[i % sets], &dy[i % sets]).map(drop)),
        check: checked(move || {
            let [dg, du] = kernel(&g0, &u0, &dy0)?;
            let want = swiglu_backward_reference(&host(&g0)?, &host(&u0)?, &host(&dy0)?);
            compare_all(&[("dgate", &dg, &want.0), ("dup", &du, &want.1)])
        }),
    })
}

/// rope of f32 queries `[1, T, H, D]` (`s.dims` = [T, H, D]), GGUF's interleaved pairs, positions
/// from 0: one read and one write per element.
fn rope(s: &Setup, rng: &mut Rng) -> Result<Work> {
    let (t, h, d) = (s.dims[0], s.dims[1], s.dims[2]);
    let n = (t * h * d) as f64;
    let sets = s.sets(n * F32 as f64);
    let x = inputs(sets, &[1, t, h, d], DType::F32, rng, &s.dev)?;
    let x0 = x[0].clone();
    Ok(Work {
        flops: 0.0,
        bytes: 2.0 * n * F32 as f64,
        written: n * F32 as f64,
        sets,
        run: Box::new(move |i| x[i % sets].rope(1e5, 0, RopeLayout::Interleaved).map(drop)),
        check: checked(move || {
            let y = x0.rope(1e5, 0, RopeLayout::Interleaved)?;
            let want = r::rope(&host(&x0)?, &[1, t, h, d], 1e5, 0, true);
            compare_all(&[("y", &y, &want)])
        }),
    })
}

fn cross_entropy_backward(s: &Setup, rng: &mut Rng) -> Result<Work> {
    let (r, c, n) = rows_cols(s);
    let sets = s.sets(n * F32 as f64);
    let logits = inputs(sets, &[r, c], DType::F32, rng, &s.dev)?;
    let ids: Vec<u32> = (0..r).map(|_| rng.below(c as u64) as u32).collect();
    let targets = Tensor::from_vec(ids.clone(), &[r], &s.dev)?;
    let lse = logits
        .iter()
        .map(|x| Ok(x.storage().cross_entropy_forward(&targets.storage(), c, None, r)?.1))
        .collect::<Result<Vec<Storage>>>()?;
    let lse = Rc::new(lse);
    let g = Tensor::ones(&[], DType::F32, &s.dev)?;
    let (x0, lse0) = (logits[0].clone(), lse.clone());
    let kernel = move |x: &Tensor, lse: &Storage| -> Result<Tensor> {
        let dx = x
            .storage()
            .cross_entropy_backward(&targets.storage(), lse, &g.storage(), c, None, r)?;
        Ok(Tensor::from_parts(dx, &[r, c]))
    };
    let check_kernel = kernel.clone();
    Ok(Work {
        flops: 0.0,
        // logits read, their gradient written; targets and lse read
        bytes: (2.0 * n + 2.0 * r as f64) * F32 as f64,
        written: n * F32 as f64,
        sets,
        run: Box::new(move |i| kernel(&logits[i % sets], &lse[i % sets]).map(drop)),
        check: checked(move || {
            let got = host(&check_kernel(&x0, &lse0[0])?)?;
            let which = sample(r);
            let targets: Vec<u32> = which.iter().map(|&i| ids[i]).collect();
            let want = cross_entropy_backward_reference(&rows(&host(&x0)?, c, &which), &targets, c, 1.0 / r as f64);
            Ok(Comparison::new(tolerance(DType::F32))
                .compare("dlogits", &rows(&got, c, &which), &want)
                .finish())
        }),
    })
}

/// GPT's input, `[rows, cols]` = `[B·T, C]`: the vocabulary is GPT-2's on a GPU and the nanoGPT
/// recipe's 65 characters elsewhere; T is the largest of 1024, 256, 64, 16, 1 dividing the rows.
fn embedding_ids(s: &Setup, rng: &mut Rng) -> Result<(usize, usize, Vec<u32>)> {
    let rows = s.dims[0];
    let vocab = if matches!(s.dev, Device::Cuda(_)) { 50257 } else { 65 };
    let t = [1024, 256, 64, 16, 1]
        .into_iter()
        .find(|t| rows.is_multiple_of(*t))
        .unwrap_or(1);
    let ids: Vec<u32> = (0..rows).map(|_| rng.below(vocab as u64) as u32).collect();
    Ok((vocab, t, ids))
}

/// The number of distinct `ids`.
fn distinct(ids: &[u32]) -> usize {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted.len()
}

fn embedding(s: &Setup, rng: &mut Rng) -> Result<Work> {
    let (r, c, n) = rows_cols(s);
    let (vocab, t, ids) = embedding_ids(s, rng)?;
    let wte = Tensor::randn(&[vocab, c], DType::F32, rng, &s.dev)?;
    let wpe = Tensor::randn(&[t, c], DType::F32, rng, &s.dev)?;
    let used = distinct(&ids);
    let id_tensor = Tensor::from_vec(ids.clone(), &[r / t, t], &s.dev)?;
    let (ids0, wte0, wpe0) = (id_tensor.clone(), wte.clone(), wpe.clone());
    Ok(Work {
        flops: 0.0,
        // the table rows used and the position rows read once, the sum written; the ids
        bytes: ((used + t) * c) as f64 * F32 as f64 + n * F32 as f64 + (r * 4) as f64,
        written: n * F32 as f64,
        sets: 1,
        run: Box::new(move |_| id_tensor.token_position_embedding(&wte, &wpe).map(drop)),
        check: checked(move || {
            let got = host(&ids0.token_position_embedding(&wte0, &wpe0)?)?;
            let (wte, wpe) = (host(&wte0)?, host(&wpe0)?);
            let which = sample(r);
            let want: Vec<f64> = which
                .iter()
                .flat_map(|&i| {
                    let (tok, pos) = (ids[i] as usize, i % t);
                    (0..c).map(move |j| (tok, pos, j))
                })
                .map(|(tok, pos, j)| wte[tok * c + j] + wpe[pos * c + j])
                .collect();
            Ok(Comparison::new(tolerance(DType::F32))
                .compare("y", &rows(&got, c, &which), &want)
                .finish())
        }),
    })
}

/// The token embedding's gradient: `[rows, cols]` summed into `[vocab, cols]` by id (index_add over
/// the ids bucketed once, as the backward does).
fn embedding_backward(s: &Setup, rng: &mut Rng) -> Result<Work> {
    let (r, c, n) = rows_cols(s);
    let (vocab, _, ids) = embedding_ids(s, rng)?;
    let buckets = Rc::new(IdBuckets::new(&ids, vocab, &s.dev)?);
    let sets = s.sets(n * F32 as f64);
    let g = inputs(sets, &[r, c], DType::F32, rng, &s.dev)?;
    let (g0, buckets0) = (g[0].clone(), buckets.clone());
    let kernel = move |g: &Tensor, buckets: &IdBuckets| -> Result<Tensor> {
        let table = g.storage().index_add(1, vocab, c, buckets)?;
        Ok(Tensor::from_parts(table, &[vocab, c]))
    };
    Ok(Work {
        flops: 0.0,
        // the gradient read, the table's gradient written; the bucketed ids
        bytes: (n + (vocab * c) as f64) * F32 as f64 + (2 * r * 4) as f64,
        written: (vocab * c * F32) as f64,
        sets,
        run: Box::new(move |i| kernel(&g[i % sets], &buckets).map(drop)),
        check: checked(move || {
            let got = kernel(&g0, &buckets0)?;
            let g = host(&g0)?;
            let mut want = vec![0.0; vocab * c];
            for (i, &id) in ids.iter().enumerate() {
                for j in 0..c {
                    want[id as usize * c + j] += g[i * c + j];
                }
            }
            compare_all(&[("dtable", &got, &want)])
        }),
    })
}

/// The mean cross-entropy of `[rows, c]` logits, one row at a time in f64 (reference.rs's
/// `cross_entropy` indexes every element, too much memory at a GPU's 8192 × 50257).
fn mean_cross_entropy(logits: &[f64], targets: &[u32], c: usize) -> f64 {
    let total: f64 = logits
        .par_chunks(c)
        .zip(targets)
        .map(|(row, &t)| {
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln() - row[t as usize]
        })
        .sum();
    total / targets.len() as f64
}

fn cross_entropy(s: &Setup, rng: &mut Rng) -> Result<Work> {
    let (r, c, n) = rows_cols(s);
    let sets = s.sets(n * F32 as f64);
    let logits = inputs(sets, &[r, c], DType::F32, rng, &s.dev)?;
    let ids: Vec<u32> = (0..r).map(|_| rng.below(c as u64) as u32).collect();
    let targets = Tensor::from_vec(ids.clone(), &[r], &s.dev)?;
    let (x0, t0) = (logits[0].clone(), targets.clone());
    Ok(Work {
        flops: 0.0,
        bytes: (n + r as f64) * F32 as f64,
        written: F32 as f64,
        sets,
        run: Box::new(move |i| logits[i % sets].cross_entropy(&targets).map(drop)),
        check: checked(move || {
            let loss = x0.cross_entropy(&t0)?;
            let want = mean_cross_entropy(&host(&x0)?, &ids, c);
            compare_all(&[("loss", &loss, &[want])])
        }),
    })
}

/// An elementwise op of two random `[rows, cols]` f32 tensors: two reads and a write per element;
/// checked on sampled rows against `reference` of each pair of elements.
fn elementwise2(
    s: &Setup,
    rng: &mut Rng,
    op: fn(&Tensor, &Tensor) -> Result<Tensor>,
    reference: fn(f64, f64) -> f64,
) -> Result<Work> {
    let (r, c, n) = rows_cols(s);
    let sets = s.sets(2.0 * n * F32 as f64);
    let x = inputs(sets, &[r, c], DType::F32, rng, &s.dev)?;
    let y = inputs(sets, &[r, c], DType::F32, rng, &s.dev)?;
    let (x0, y0) = (x[0].clone(), y[0].clone());
    Ok(Work {
        flops: 0.0,
        bytes: 3.0 * n * F32 as f64,
        written: n * F32 as f64,
        sets,
        run: Box::new(move |i| op(&x[i % sets], &y[i % sets]).map(drop)),
        check: checked(move || {
            let got = host(&op(&x0, &y0)?)?;
            let inputs = [host(&x0)?, host(&y0)?];
            Ok(compare_rows(tolerance(DType::F32), (c, c), &inputs, &got, |x, _| {
                x[0].iter().zip(&x[1]).map(|(&a, &b)| reference(a, b)).collect()
            }))
        }),
    })
}

/// One fused AdamW step (`AdamW::step`) over a `[rows, cols]` f32 parameter, its moments on the
/// same device. Checked on a fresh copy: the first step's change of every weight against the
/// formula's, at a learning rate of 0.1 so that the change (about 0.1) is far above the resolution
/// of f32 weights (1e-7 relative).
fn adamw(s: &Setup, rng: &mut Rng) -> Result<Work> {
    let (r, c, n) = rows_cols(s);
    let p = Tensor::randn(&[r, c], DType::F32, rng, &s.dev)?.requires_grad();
    let g = Tensor::randn(&[r, c], DType::F32, rng, &s.dev)?;
    let mut grads = Gradients::default();
    grads.insert(&p, g.clone());
    let (p_init, dev) = (host(&p)?, s.dev);
    let mut opt = AdamW::new(vec![("p".into(), p)], 1e-4, (0.9, 0.99), 1e-8, 0.1)?;
    Ok(Work {
        flops: 0.0,
        // reads p, g, m, v; writes p, m, v
        bytes: 7.0 * n * F32 as f64,
        written: 3.0 * n * F32 as f64,
        sets: 1,
        run: Box::new(move |_| opt.step(&grads)),
        check: checked(move || {
            let (lr, eps, wd) = (0.1, 1e-8, 0.1);
            let fresh = Tensor::from_vec(p_init.iter().map(|&v| v as f32).collect(), &[r, c], &dev)?.requires_grad();
            let mut grads = Gradients::default();
            grads.insert(&fresh, g.clone());
            AdamW::new(vec![("p".into(), fresh.clone())], lr, (0.9, 0.99), eps, wd)?.step(&grads)?;
            let delta = |after: &[f64]| -> Vec<f64> { after.iter().zip(&p_init).map(|(a, b)| a - b).collect() };
            let want = delta(&adamw_first_step(&p_init, &host(&g)?, lr, eps, wd));
            Ok(Comparison::new(tolerance(DType::F32))
                .compare("p change", &delta(&host(&fresh)?), &want)
                .finish())
        }),
    })
}

/// Every benchmarked kernel, in the order they are run and shown.
pub const CASES: &[Case] = &[
    Case {
        name: "matmul_f32",
        about: "Tensor::matmul, f32 [M, K] x [K, N]",
        dims: "MxNxK",
        bound: Bound::Compute,
        dtype: DType::F32,
        // square, then GPT-2 124M's QKV, MLP-up and MLP-down products at B·T = 8192
        cuda: &[
            &[4096, 4096, 4096],
            &[8192, 2304, 768],
            &[8192, 3072, 768],
            &[8192, 768, 3072],
        ],
        cpu: &[&[512, 512, 512], &[1024, 1024, 1024], &[768, 384, 128]],
        emu: &[&[65, 63, 129]],
        prepare: |s, rng| matmul(s, rng, DType::F32),
        library: Some(|s, rng| library::gemm(s, rng, DType::F32)),
    },
    Case {
        name: "matmul_bf16",
        about: "Tensor::matmul, bf16 [M, K] x [K, N], f32 accumulation",
        dims: "MxNxK",
        bound: Bound::Compute,
        dtype: DType::BF16,
        cuda: &[
            &[4096, 4096, 4096],
            &[8192, 8192, 8192],
            &[8192, 2304, 768],
            &[8192, 3072, 768],
            &[8192, 768, 3072],
        ],
        // SmolLM2-135M's 128-token prefill products (MLP up/gate, MLP down): gemm::bgemm
        // (vdpbf16ps) where the CPU has AVX-512 BF16, operands widened to f32 elsewhere
        cpu: &[&[128, 1536, 576], &[128, 576, 1536]],
        emu: &[&[65, 63, 129]],
        prepare: |s, rng| matmul(s, rng, DType::BF16),
        library: Some(|s, rng| library::gemm(s, rng, DType::BF16)),
    },
    Case {
        name: "bgemm_amx",
        about: "gemm::bgemm_on, bf16 [M, K] x [N, K]^T, f32 C: AMX-BF16 tiles where present; vdpbf16ps baseline",
        dims: "MxNxK",
        bound: Bound::Compute,
        dtype: DType::BF16,
        // SmolLM2-135M's 128-token prefill (gate/up, down, q/o) and a 16-row product (AMX's
        // smallest); CPU only
        cuda: &[],
        cpu: &[&[128, 1536, 576], &[128, 576, 1536], &[128, 576, 576], &[16, 1536, 576]],
        emu: &[],
        prepare: |s, rng| Ok(bgemm(s, rng, true)?.1),
        library: Some(|s, rng| bgemm(s, rng, false)),
    },
    Case {
        name: "linear_gelu",
        about: "Tensor::linear_gelu, f32: gelu([M, K] x [N, K]^T + bias), the epilogue fused",
        dims: "MxNxK",
        bound: Bound::Compute,
        dtype: DType::F32,
        // GPT-2 124M's MLP-up product at B·T = 8192; the nanoGPT CPU recipe's
        cuda: &[&[8192, 3072, 768]],
        cpu: &[&[768, 512, 128]],
        emu: &[&[65, 63, 129]],
        prepare: |s, rng| linear_gelu(s, rng, true),
        library: Some(|s, rng| Ok(("unfused".into(), linear_gelu(s, rng, false)?))),
    },
    Case {
        name: "linear_quantized_q4_1",
        about: "Tensor::linear_quantized, f32 [M, K] x Q4_1 [N, K]^T (x rounded to 8 bits per 32)",
        dims: "MxNxK",
        bound: Bound::Memory,
        dtype: DType::F32,
        // SmolLM2-135M's decode products (q/o, gate/up, down), then a 128-token prefill; on a GPU
        // also a 7B-sized decode product; on Emu a partial row group, 3 blocks, both paths
        cuda: &[&[1, 576, 576], &[1, 1536, 576], &[1, 576, 1536], &[128, 1536, 576], &[1, 4096, 4096]],
        cpu: &[&[1, 576, 576], &[1, 1536, 576], &[1, 576, 1536], &[128, 1536, 576]],
        emu: &[&[1, 67, 96], &[17, 67, 96]],
        prepare: |s, rng| linear_quantized(s, rng, GgmlType::Q4_1, QuantProduct::Op),
        library: Some(|s, rng| Ok(("f32".into(), linear_quantized(s, rng, GgmlType::Q4_1, QuantProduct::F32)?))),
    },
    Case {
        name: "linear_quantized_gemm_q4_1",
        about: "the integer GEMM without AMX (AVX-512 VNNI, else AVX2), f32 [M, K] x Q4_1 [N, K]^T; decoded f32 baseline",
        dims: "MxNxK",
        bound: Bound::Compute,
        dtype: DType::F32,
        // SmolLM2-135M's 128-token prefill (gate/up, down, q/o); CPU only
        cuda: &[],
        cpu: &[&[128, 1536, 576], &[128, 576, 1536], &[128, 576, 576], &[16, 1536, 576]],
        emu: &[],
        prepare: |s, rng| linear_quantized(s, rng, GgmlType::Q4_1, QuantProduct::SimdGemm),
        library: Some(|s, rng| {
            Ok((
                "decoded".into(),
                linear_quantized(s, rng, GgmlType::Q4_1, QuantProduct::Decoded)?,
            ))
        }),
    },
    Case {
        name: "linear_quantized_q8_0",
        about: "Tensor::linear_quantized, f32 [M, K] x Q8_0 [N, K]^T (x rounded to 8 bits per 32)",
        dims: "MxNxK",
        bound: Bound::Memory,
        dtype: DType::F32,
        // SmolLM2-135M's tied LM head [49152, 576], its gate/up shape, and (CPU) a 128-token prefill
        cuda: &[&[1, 49152, 576], &[1, 1536, 576]],
        cpu: &[&[1, 49152, 576], &[1, 1536, 576], &[128, 1536, 576]],
        emu: &[&[1, 67, 96]],
        prepare: |s, rng| linear_quantized(s, rng, GgmlType::Q8_0, QuantProduct::Op),
        library: Some(|s, rng| Ok(("f32".into(), linear_quantized(s, rng, GgmlType::Q8_0, QuantProduct::F32)?))),
    },
    Case {
        name: "linear_quantized_q4_k",
        about: "Tensor::linear_quantized, f32 [M, K] x Q4_K [N, K]^T (decode: x rounded to 8 bits per 32; K rounded up to 256s)",
        dims: "MxNxK",
        bound: Bound::Memory,
        dtype: DType::F32,
        // a 7B-sized decode product and a 1.5B-sized one (K-formats need K a multiple of 256); on Emu
        // rows not a multiple of the kernel's 4 per CTA, 2 super-blocks
        cuda: &[&[1, 4096, 4096], &[1, 1536, 1536], &[4, 4096, 4096]],
        cpu: &[&[1, 1536, 1536]],
        emu: &[&[1, 9, 512]],
        prepare: |s, rng| linear_quantized(s, rng, GgmlType::Q4_K, QuantProduct::Op),
        library: Some(|s, rng| Ok(("f32".into(), linear_quantized(s, rng, GgmlType::Q4_K, QuantProduct::F32)?))),
    },
    Case {
        name: "linear_quantized_q6_k",
        about: "Tensor::linear_quantized, f32 [M, K] x Q6_K [N, K]^T (decode: x rounded to 8 bits per 32; K rounded up to 256s)",
        dims: "MxNxK",
        bound: Bound::Memory,
        dtype: DType::F32,
        // as linear_quantized_q4_k (Q6_K is llama.cpp's usual type for the output and v projections)
        cuda: &[&[1, 4096, 4096], &[1, 1536, 1536], &[4, 4096, 4096]],
        cpu: &[&[1, 1536, 1536]],
        emu: &[&[1, 9, 512]],
        prepare: |s, rng| linear_quantized(s, rng, GgmlType::Q6_K, QuantProduct::Op),
        library: Some(|s, rng| Ok(("f32".into(), linear_quantized(s, rng, GgmlType::Q6_K, QuantProduct::F32)?))),
    },
    Case {
        name: "linear_quantized_prefill_q4_0",
        about: "Tensor::linear_quantized, f32 [M, K] x Q4_0 [N, K]^T from 8 rows of x (CUDA: the integer tensor cores)",
        dims: "MxNxK",
        bound: Bound::Compute,
        dtype: DType::F32,
        // SmolLM2-135M's 128- and 512-token prefills (gate/up, down), a 7B-sized one, and the
        // threshold's neighbourhood (MMA_FROM_ROWS in src/backend/cuda/linear_quantized.rs); on
        // Emu a partial n-tile, two CTAs of x rows and of weight groups, 3 blocks
        cuda: &[
            &[8, 1536, 576],
            &[16, 1536, 576],
            &[128, 1536, 576],
            &[512, 1536, 576],
            &[512, 576, 1536],
            &[512, 4096, 4096],
        ],
        cpu: &[&[128, 1536, 576]],
        emu: &[&[40, 67, 96]],
        prepare: |s, rng| linear_quantized(s, rng, GgmlType::Q4_0, QuantProduct::Op),
        library: Some(|s, rng| Ok(("f32".into(), linear_quantized(s, rng, GgmlType::Q4_0, QuantProduct::F32)?))),
    },
    Case {
        name: "attention_fwd",
        about: "scaled_dot_product_attention forward, causal, f32 [B, H, T, D]",
        dims: "BxHxTxD",
        bound: Bound::Compute,
        dtype: DType::F32,
        cuda: ATTENTION_CUDA,
        cpu: ATTENTION_CPU,
        emu: ATTENTION_EMU,
        prepare: |s, rng| attention(s, rng, DType::F32, true, Pass::Forward),
        library: Some(|s, rng| Ok(("unfused".into(), attention(s, rng, DType::F32, false, Pass::Forward)?))),
    },
    Case {
        name: "attention_fwd_bwd",
        about: "scaled_dot_product_attention forward + backward, causal, f32 [B, H, T, D]",
        dims: "BxHxTxD",
        bound: Bound::Compute,
        dtype: DType::F32,
        cuda: ATTENTION_CUDA,
        cpu: ATTENTION_CPU,
        emu: ATTENTION_EMU,
        prepare: |s, rng| attention(s, rng, DType::F32, true, Pass::ForwardBackward),
        library: Some(|s, rng| {
            let work = attention(s, rng, DType::F32, false, Pass::ForwardBackward)?;
            Ok(("unfused".into(), work))
        }),
    },
    Case {
        name: "attention_fwd_bf16",
        about: "scaled_dot_product_attention forward on tensor cores, causal, bf16 [B, H, T, D]",
        dims: "BxHxTxD",
        bound: Bound::Compute,
        dtype: DType::BF16,
        cuda: ATTENTION_CUDA_BF16,
        cpu: &[], // the CPU computes bf16 attention in f32: its f32 cases say more
        emu: ATTENTION_EMU,
        prepare: |s, rng| attention(s, rng, DType::BF16, true, Pass::Forward),
        library: Some(|s, rng| Ok(("unfused".into(), attention(s, rng, DType::BF16, false, Pass::Forward)?))),
    },
    Case {
        name: "attention_bwd_bf16",
        about: "scaled_dot_product_attention backward alone (D, dK/dV, dQ kernels), causal, bf16 [B, H, T, D]",
        dims: "BxHxTxD",
        bound: Bound::Compute,
        dtype: DType::BF16,
        cuda: ATTENTION_CUDA_BF16,
        cpu: &[],
        emu: ATTENTION_EMU,
        prepare: |s, rng| attention(s, rng, DType::BF16, true, Pass::Backward),
        library: None,
    },
    Case {
        name: "attention_gqa_fwd_bwd_bf16",
        about: "grouped-query scaled_dot_product_attention forward + backward, causal, bf16 q [B, H, T, D], k/v [B, Hkv, T, D]",
        dims: "BxHxHKVxTxD",
        bound: Bound::Compute,
        dtype: DType::BF16,
        // Llama-3-8B's 32 query over 8 key/value heads of 128; SmolLM2-135M's 9 over 3 of 64
        cuda: &[&[4, 32, 8, 1024, 128], &[8, 9, 3, 1024, 64]],
        cpu: &[],
        emu: &[&[1, 4, 2, 65, 32]],
        prepare: |s, rng| grouped_query_attention(s, rng, DType::BF16),
        library: None,
    },
    Case {
        name: "attention_gqa_fwd_bwd",
        about: "grouped-query scaled_dot_product_attention forward + backward, causal, f32 q [B, H, T, D], k/v [B, Hkv, T, D]",
        dims: "BxHxHKVxTxD",
        bound: Bound::Compute,
        dtype: DType::F32,
        cuda: &[&[8, 9, 3, 1024, 64]],
        cpu: &[&[1, 9, 3, 256, 64]],
        emu: &[&[1, 4, 2, 65, 32]],
        prepare: |s, rng| grouped_query_attention(s, rng, DType::F32),
        library: None,
    },
    Case {
        name: "softmax",
        about: "softmax over the last dim, f32",
        dims: "ROWSxCOLS",
        bound: Bound::Memory,
        dtype: DType::F32,
        cuda: ROWS_CUDA,
        cpu: ROWS_CPU,
        emu: ROWS_EMU,
        prepare: |s, rng| rowwise(s, rng, |x| x.softmax(-1), |x, rows, c| {
            r::softmax(&x[0], &[rows, c], 1)
        }),
        library: None,
    },
    Case {
        name: "layer_norm",
        about: "layer_norm over the last dim with weight and bias, f32",
        dims: "ROWSxCOLS",
        bound: Bound::Memory,
        dtype: DType::F32,
        cuda: ROWS_CUDA,
        cpu: ROWS_CPU,
        emu: ROWS_EMU,
        prepare: layer_norm,
        library: None,
    },
    Case {
        name: "softmax_backward",
        about: "softmax's backward over the last dim from y and dy, f32 (the kernel alone)",
        dims: "ROWSxCOLS",
        bound: Bound::Memory,
        dtype: DType::F32,
        cuda: ROWS_CUDA,
        cpu: ROWS_CPU,
        emu: ROWS_EMU,
        prepare: softmax_backward,
        library: None,
    },
    Case {
        name: "layer_norm_backward",
        about: "layer_norm's backward (dx, dweight, dbias) from the saved statistics, f32",
        dims: "ROWSxCOLS",
        bound: Bound::Memory,
        dtype: DType::F32,
        cuda: ROWS_CUDA,
        cpu: ROWS_CPU,
        emu: ROWS_EMU,
        prepare: layer_norm_backward,
        library: None,
    },
    Case {
        name: "sample",
        about: "one token id per row of f32 logits [N, vocab]: temperature 0.8, top-k 50, top-p 0.95 (the id comes back)",
        dims: "ROWSxCOLS",
        bound: Bound::Memory,
        dtype: DType::F32,
        // a decode step of a GPT-2 (50257) and a SmolLM2 (49152) vocabulary, and a batch of 64
        cuda: &[&[1, 50257], &[1, 49152], &[64, 50257]],
        cpu: &[&[1, 50257], &[1, 49152]],
        emu: &[&[2, 1000]],
        prepare: sampler,
        library: None,
    },
    Case {
        name: "cross_entropy",
        about: "mean cross-entropy of f32 logits [N, C] against u32 targets (forward)",
        dims: "ROWSxCOLS",
        bound: Bound::Memory,
        dtype: DType::F32,
        cuda: &[&[8192, 50257]],
        cpu: &[&[768, 65], &[1024, 50257]],
        emu: ROWS_EMU,
        prepare: cross_entropy,
        library: None,
    },
    Case {
        name: "cross_entropy_backward",
        about: "cross-entropy's gradient of f32 logits [N, C] from the saved log-sum-exps",
        dims: "ROWSxCOLS",
        bound: Bound::Memory,
        dtype: DType::F32,
        cuda: &[&[8192, 50257]],
        cpu: &[&[768, 65], &[1024, 50257]],
        emu: ROWS_EMU,
        prepare: cross_entropy_backward,
        library: None,
    },
    Case {
        name: "embedding",
        about: "GPT's token + position embedding, f32 [B·T, C] rows gathered (vocabulary 50257 on a GPU, 65 elsewhere)",
        dims: "ROWSxCOLS",
        bound: Bound::Memory,
        dtype: DType::F32,
        cuda: &[&[8192, 768]],
        cpu: &[&[768, 128], &[4096, 1024]],
        emu: &[&[32, 257]],
        prepare: embedding,
        library: None,
    },
    Case {
        name: "embedding_backward",
        about: "the token embedding's gradient, f32 [B·T, C] summed by id into [vocabulary, C] (no atomics)",
        dims: "ROWSxCOLS",
        bound: Bound::Memory,
        dtype: DType::F32,
        cuda: &[&[8192, 768]],
        cpu: &[&[768, 128], &[4096, 1024]],
        emu: &[&[32, 257]],
        prepare: embedding_backward,
        library: None,
    },
    Case {
        name: "gelu",
        about: "GELU (tanh form), f32",
        dims: "ROWSxCOLS",
        bound: Bound::Memory,
        dtype: DType::F32,
        cuda: &[&[8192, 3072], &[16384, 4096]],
        cpu: ROWS_CPU,
        emu: ROWS_EMU,
        prepare: |s, rng| rowwise(s, rng, |x| x.gelu(), |x, _, _| r::map(&x[0], r::gelu)),
        library: None,
    },
    Case {
        name: "gelu_backward",
        about: "GELU's fused backward dy * gelu'(z), f32 (the backward of gelu and linear_gelu)",
        dims: "ROWSxCOLS",
        bound: Bound::Memory,
        dtype: DType::F32,
        cuda: &[&[8192, 3072], &[16384, 4096]],
        cpu: ROWS_CPU,
        emu: ROWS_EMU,
        prepare: |s, rng| elementwise2(s, rng, |dy, z| dy.gelu_backward(z), r::gelu_backward),
        library: None,
    },
    Case {
        name: "silu",
        about: "SiLU x * sigmoid(x), f32",
        dims: "ROWSxCOLS",
        bound: Bound::Memory,
        dtype: DType::F32,
        cuda: &[&[8192, 8192]],
        cpu: ROWS_CPU,
        emu: ROWS_EMU,
        prepare: |s, rng| rowwise(s, rng, |x| x.silu(), |x, _, _| r::map(&x[0], r::silu)),
        library: None,
    },
    Case {
        name: "gelu_erf",
        about: "the exact GELU x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), f32",
        dims: "ROWSxCOLS",
        bound: Bound::Memory,
        dtype: DType::F32,
        cuda: &[&[8192, 3072], &[16384, 4096]],
        cpu: ROWS_CPU,
        emu: ROWS_EMU,
        prepare: |s, rng| rowwise(s, rng, |x| x.gelu_erf(), |x, _, _| {
            r::map(&x[0], r::gelu_erf)
        }),
        library: None,
    },
    Case {
        name: "swiglu",
        about: "swiglu(gate, up) = silu(gate) * up, f32, fused (the unfused silu then mul as %lib)",
        dims: "ROWSxCOLS",
        bound: Bound::Memory,
        dtype: DType::F32,
        // a Llama-7B MLP at 4096 tokens (width 11008); SmolLM2-135M's (1536) at 512 tokens
        cuda: &[&[4096, 11008]],
        cpu: &[&[512, 1536]],
        emu: ROWS_EMU,
        prepare: |s, rng| elementwise2(s, rng, |g, u| g.swiglu(u), r::swiglu),
        library: Some(|s, rng| Ok(("unfused".into(), elementwise2(s, rng, |g, u| g.silu()?.mul(u), r::swiglu)?))),
    },
    Case {
        name: "swiglu_backward",
        about: "swiglu's fused backward (dgate, dup from gate, up, dy), f32 (the kernel alone)",
        dims: "ROWSxCOLS",
        bound: Bound::Memory,
        dtype: DType::F32,
        cuda: &[&[4096, 11008]],
        cpu: &[&[512, 1536]],
        emu: ROWS_EMU,
        prepare: swiglu_backward,
        library: None,
    },
    Case {
        name: "rms_norm",
        about: "rms_norm over the last dim with a weight, f32",
        dims: "ROWSxCOLS",
        bound: Bound::Memory,
        dtype: DType::F32,
        cuda: ROWS_CUDA,
        cpu: ROWS_CPU,
        emu: ROWS_EMU,
        prepare: rms_norm,
        library: None,
    },
    Case {
        name: "rms_norm_backward",
        about: "rms_norm's backward (dx, dweight) from the saved rstd, f32 (the kernels alone)",
        dims: "ROWSxCOLS",
        bound: Bound::Memory,
        dtype: DType::F32,
        cuda: ROWS_CUDA,
        cpu: ROWS_CPU,
        emu: ROWS_EMU,
        prepare: rms_norm_backward,
        library: None,
    },
    Case {
        name: "rope",
        about: "rope, interleaved pairs, of f32 [1, T, H, D] from position 0",
        dims: "TxHxD",
        bound: Bound::Memory,
        dtype: DType::F32,
        // Llama-7B's queries at T = 4096 (32 heads of 128); SmolLM2-135M's (9 of 64) at T = 2048
        cuda: &[&[4096, 32, 128]],
        cpu: &[&[2048, 9, 64]],
        emu: &[&[33, 3, 64]],
        prepare: rope,
        library: None,
    },
    Case {
        name: "add",
        about: "elementwise add of two f32 tensors",
        dims: "ROWSxCOLS",
        bound: Bound::Memory,
        dtype: DType::F32,
        cuda: ROWS_CUDA,
        cpu: ROWS_CPU,
        emu: ROWS_EMU,
        prepare: |s, rng| elementwise2(s, rng, |x, y| x.add(y), r::add),
        library: None,
    },
    Case {
        name: "sum",
        about: "sum over the last dim, f32",
        dims: "ROWSxCOLS",
        bound: Bound::Memory,
        dtype: DType::F32,
        cuda: ROWS_CUDA,
        cpu: ROWS_CPU,
        emu: ROWS_EMU,
        prepare: |s, rng| {
            rowwise(s, rng, |x| x.sum(&[-1], false), |x, rows, c| {
                r::sum(&x[0], &[rows, c], &[1], false).0
            })
        },
        library: None,
    },
    Case {
        name: "adamw",
        about: "AdamW::step on one f32 parameter (fused update, moments on the device)",
        dims: "ROWSxCOLS",
        bound: Bound::Memory,
        dtype: DType::F32,
        cuda: &[&[4096, 4096]],
        cpu: &[&[1024, 1024], &[4096, 4096]],
        emu: ROWS_EMU,
        prepare: adamw,
        library: None,
    },
];

/// The case called `name`.
pub fn find(name: &str) -> Option<&'static Case> {
    CASES.iter().find(|c| c.name == name)
}
