// swiglu.cu — SwiGLU, the gated activation of Llama's feed-forward block, fused:
//   forward:  y = silu(gate) * up,  silu(g) = g / (1 + exp(-g))
//   backward: dgate = dy * up * silu'(g),  dup = dy * silu(g),  silu'(g) = s (1 + g (1 - s)), s = sigmoid(g)
// (kiln_silu / kiln_silu_derivative in common.cuh), in f32 for f32/bf16/f16 and f64 for f64, one
// rounding per output, as the CPU backend (src/backend/cpu/swiglu.rs).
//
// Algorithm. swiglu_forward_<dtype>: kiln_map2 over two views of one shape (gate and up may be
// strided, e.g. the two halves of one [.., 2F] projection); y is contiguous. swiglu_backward_<dtype>:
// gate, up and dy contiguous (the host makes them so), one grid-stride pass that reads each once and
// writes dgate and dup, in 16-byte packs when all five buffers are 16-byte aligned.
// Launch: 1-D, 256 threads per block, ceil(n / (256 * pack)) blocks (capped at 32 per SM; grid-stride).
// Roofline, per element: forward ~6 FLOPs + one exp, 2 reads + 1 write of sizeof(T); backward ~10 FLOPs
// + one exp, 3 reads + 2 writes. Memory bound (the unfused silu, mul and their backward move 2-3x more).
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void swiglu_forward_impl(const T *__restrict__ gate, const KilnLayout &lg,
                                                    const T *__restrict__ up, const KilnLayout &lu, T *__restrict__ y,
                                                    unsigned long long n) {
    typedef KilnFloat<T> F;
    kiln_map2(gate, lg, up, lu, y, n, [](T g, T u) { return F::down(kiln_silu(F::up(g)) * F::up(u)); });
}

// One element of the backward.
template <typename T> __device__ __forceinline__ void swiglu_backward_one(T g, T u, T d, T &dg, T &du) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    const A ga = F::up(g), da = F::up(d);
    dg = F::down(da * F::up(u) * kiln_silu_derivative(ga));
    du = F::down(da * kiln_silu(ga));
}

template <typename T>
__device__ __forceinline__ void swiglu_backward_impl(const T *__restrict__ gate, const T *__restrict__ up,
                                                     const T *__restrict__ dy, T *__restrict__ dgate,
                                                     T *__restrict__ dup, unsigned long long n) {
    constexpr int N = 16 / sizeof(T);
    typedef KilnPack<T, N> Pack;
    const unsigned long long start = kiln_thread_index(), step = kiln_thread_count();
    unsigned long long done = 0; // elements handled in packs
    if (kiln_aligned<16>(gate) && kiln_aligned<16>(up) && kiln_aligned<16>(dy) && kiln_aligned<16>(dgate) &&
        kiln_aligned<16>(dup)) {
        const unsigned long long packs = n / N;
        for (unsigned long long p = start; p < packs; p += step) {
            const Pack g = reinterpret_cast<const Pack *>(gate)[p];
            const Pack u = reinterpret_cast<const Pack *>(up)[p];
            const Pack d = reinterpret_cast<const Pack *>(dy)[p];
            Pack dg, du;
#pragma unroll
            for (int k = 0; k < N; ++k) swiglu_backward_one(g.v[k], u.v[k], d.v[k], dg.v[k], du.v[k]);
            reinterpret_cast<Pack *>(dgate)[p] = dg;
            reinterpret_cast<Pack *>(dup)[p] = du;
        }
        done = packs * N;
    }
    for (unsigned long long i = done + start; i < n; i += step)
        swiglu_backward_one(gate[i], up[i], dy[i], dgate[i], dup[i]);
}

// Entry points, one per dtype (KILN_ENTRY, common.cuh).
#define SWIGLU_FORWARD_KERNEL(T)                                                                                       \
    (const T *gate, KilnLayout lg, const T *up, KilnLayout lu, T *y, unsigned long long n) {                           \
        swiglu_forward_impl(gate, lg, up, lu, y, n);                                                                   \
    }
#define SWIGLU_BACKWARD_KERNEL(T)                                                                                      \
    (const T *gate, const T *up, const T *dy, T *dgate, T *dup, unsigned long long n) {                                \
        swiglu_backward_impl(gate, up, dy, dgate, dup, n);                                                             \
    }

KILN_ENTRY(swiglu_forward_f32, SWIGLU_FORWARD_KERNEL, float)
KILN_ENTRY(swiglu_backward_f32, SWIGLU_BACKWARD_KERNEL, float)

KILN_ENTRY(swiglu_forward_f64, SWIGLU_FORWARD_KERNEL, double)
KILN_ENTRY(swiglu_backward_f64, SWIGLU_BACKWARD_KERNEL, double)

KILN_ENTRY(swiglu_forward_bf16, SWIGLU_FORWARD_KERNEL, __nv_bfloat16)
KILN_ENTRY(swiglu_backward_bf16, SWIGLU_BACKWARD_KERNEL, __nv_bfloat16)

KILN_ENTRY(swiglu_forward_f16, SWIGLU_FORWARD_KERNEL, __half)
KILN_ENTRY(swiglu_backward_f16, SWIGLU_BACKWARD_KERNEL, __half)
