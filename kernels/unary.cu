// unary.cu — elementwise functions of one tensor: y[i] = f(x[view(i)]) into a fresh contiguous
// buffer, for f in UnaryOp (src/ops/unary.rs): neg, exp, log, sqrt, tanh, gelu (GPT-2's tanh form),
// relu, step (relu's derivative), recip, powf(p), affine (x * a + b), silu (x * sigmoid(x)) and its
// derivative (silu's backward multiplies it by dy; kernels/swiglu.cu fuses silu with a product), abs,
// sign (abs's derivative), sigmoid, clamp(min, max), gelu_erf (the exact GELU, x * Phi(x)) and its
// derivative; and
// GELU's fused backward,
// gelu_backward_<dtype>: dx[i] = dy[view(i)] * gelu'(z[view(i)]) (below the unary kernels).
//
// Arithmetic is in f32 for f32/bf16/f16 and in f64 for f64, as on the CPU backend; the parameters
// arrive as f64 and are rounded to that type once. The op is a kernel argument: the switch sits
// outside the loop, so each case is its own specialised loop (kiln_map1: 16-byte accesses when the
// view is contiguous and aligned, strided single elements otherwise).
// Kernels: unary_f32, unary_f64, unary_bf16, unary_f16; gelu_backward_f32/f64/bf16/f16.
// Launch: 1-D, 256 threads per block, ceil(n / (256 * pack)) blocks (capped; the loop covers the rest).
// Roofline: 1-20 FLOPs per element (gelu ~20 with its tanh), 2 * sizeof(T) bytes per element: memory
// bound on every GPU kiln targets.
#include "common.cuh"

// Op codes, the order of UnaryOp's variants (src/backend/cuda/unary.rs keeps the mapping).
#define KILN_NEG 0
#define KILN_EXP 1
#define KILN_LOG 2
#define KILN_SQRT 3
#define KILN_TANH 4
#define KILN_GELU 5
#define KILN_RELU 6
#define KILN_STEP 7
#define KILN_RECIP 8
#define KILN_POWF 9
#define KILN_AFFINE 10
#define KILN_SILU 11
#define KILN_SILU_DERIVATIVE 12
#define KILN_ABS 13
#define KILN_SIGN 14
#define KILN_SIGMOID 15
#define KILN_CLAMP 16
#define KILN_GELU_ERF 17
#define KILN_GELU_ERF_DERIVATIVE 18

__device__ __forceinline__ float k_exp(float x) { return expf(x); }
__device__ __forceinline__ double k_exp(double x) { return exp(x); }
__device__ __forceinline__ float k_log(float x) { return logf(x); }
__device__ __forceinline__ double k_log(double x) { return log(x); }
__device__ __forceinline__ float k_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double k_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float k_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double k_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float k_pow(float x, float p) { return powf(x, p); }
__device__ __forceinline__ double k_pow(double x, double p) { return pow(x, p); }
__device__ __forceinline__ float k_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double k_abs(double x) { return fabs(x); }
__device__ __forceinline__ float k_erf(float x) { return erff(x); }
__device__ __forceinline__ double k_erf(double x) { return erf(x); }

// -1, 0 or 1 by the sign; +-0 and NaN come back unchanged (as the CPU's UnaryOp::Sign).
template <typename A> __device__ __forceinline__ A k_sign(A x) { return x > (A)0 ? (A)1 : (x < (A)0 ? (A)-1 : x); }
// x limited to [lo, hi]; NaN fails both comparisons and stays NaN (PyTorch's clamp).
template <typename A> __device__ __forceinline__ A k_clamp(A x, A lo, A hi) { return x < lo ? lo : (x > hi ? hi : x); }
// The exact GELU x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), and its derivative Phi(x) + x * phi(x).
template <typename A> __device__ __forceinline__ A k_gelu_erf(A x) {
    return (A)0.5 * x * ((A)1 + k_erf(x * (A)0.7071067811865476));
}
template <typename A> __device__ __forceinline__ A k_gelu_erf_derivative(A x) {
    const A cdf = (A)0.5 * ((A)1 + k_erf(x * (A)0.7071067811865476));
    return cdf + x * (A)0.3989422804014327 * kiln_exp((A)-0.5 * x * x);
}

template <typename T>
__device__ __forceinline__ void unary_impl(const T *__restrict__ x, const KilnLayout &lx, T *__restrict__ y,
                                           unsigned long long n, int op, double p0, double p1) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    const A a = (A)p0, b = (A)p1;
    switch (op) {
    case KILN_NEG: kiln_map1(x, lx, y, n, [](T v) { return F::down(-F::up(v)); }); break;
    case KILN_EXP: kiln_map1(x, lx, y, n, [](T v) { return F::down(k_exp(F::up(v))); }); break;
    case KILN_LOG: kiln_map1(x, lx, y, n, [](T v) { return F::down(k_log(F::up(v))); }); break;
    case KILN_SQRT: kiln_map1(x, lx, y, n, [](T v) { return F::down(k_sqrt(F::up(v))); }); break;
    case KILN_TANH: kiln_map1(x, lx, y, n, [](T v) { return F::down(k_tanh(F::up(v))); }); break;
    case KILN_GELU: kiln_map1(x, lx, y, n, [](T v) { return F::down(kiln_gelu(F::up(v))); }); break;
    case KILN_RELU: kiln_map1(x, lx, y, n, [](T v) { const A u = F::up(v); return F::down(u > (A)0 ? u : (A)0); }); break;
    case KILN_STEP: kiln_map1(x, lx, y, n, [](T v) { return F::down(F::up(v) > (A)0 ? (A)1 : (A)0); }); break;
    case KILN_RECIP: kiln_map1(x, lx, y, n, [](T v) { return F::down((A)1 / F::up(v)); }); break;
    case KILN_POWF: kiln_map1(x, lx, y, n, [a](T v) { return F::down(k_pow(F::up(v), a)); }); break;
    case KILN_AFFINE: kiln_map1(x, lx, y, n, [a, b](T v) { return F::down(F::up(v) * a + b); }); break;
    case KILN_SILU: kiln_map1(x, lx, y, n, [](T v) { return F::down(kiln_silu(F::up(v))); }); break;
    case KILN_SILU_DERIVATIVE: kiln_map1(x, lx, y, n, [](T v) { return F::down(kiln_silu_derivative(F::up(v))); }); break;
    case KILN_ABS: kiln_map1(x, lx, y, n, [](T v) { return F::down(k_abs(F::up(v))); }); break;
    case KILN_SIGN: kiln_map1(x, lx, y, n, [](T v) { return F::down(k_sign(F::up(v))); }); break;
    case KILN_SIGMOID: kiln_map1(x, lx, y, n, [](T v) { return F::down((A)1 / ((A)1 + k_exp(-F::up(v)))); }); break;
    case KILN_CLAMP: kiln_map1(x, lx, y, n, [a, b](T v) { return F::down(k_clamp(F::up(v), a, b)); }); break;
    case KILN_GELU_ERF: kiln_map1(x, lx, y, n, [](T v) { return F::down(k_gelu_erf(F::up(v))); }); break;
    case KILN_GELU_ERF_DERIVATIVE: kiln_map1(x, lx, y, n, [](T v) { return F::down(k_gelu_erf_derivative(F::up(v))); }); break;
    default: break; // the host never sends another code
    }
}

// Entry points, one per dtype (KILN_ENTRY, common.cuh).
#define UNARY_KERNEL(T)                                                                                                \
    (const T *x, KilnLayout lx, T *y, unsigned long long n, int op, double p0, double p1) {                            \
        unary_impl(x, lx, y, n, op, p0, p1);                                                                           \
    }

KILN_ENTRY(unary_f32, UNARY_KERNEL, float)
KILN_ENTRY(unary_f64, UNARY_KERNEL, double)
KILN_ENTRY(unary_bf16, UNARY_KERNEL, __nv_bfloat16)
KILN_ENTRY(unary_f16, UNARY_KERNEL, __half)

// GELU's backward, fused: dx = dy * gelu'(z), with gelu(z) = 0.5 z (1 + tanh(u)), u = sqrt(2/pi) (z +
// 0.044715 z^3): gelu'(z) = 0.5 (1 + tanh u) + 0.5 z (1 - tanh^2 u) du/dz. One pass over both
// operands (kiln_map2: 16-byte packs when both are contiguous and aligned) instead of a derivative
// map and a multiply, which wrote gelu'(z) out and read it back.
// Launch: as the unary kernels, ceil(n / (256 * pack)) blocks of 256 (capped; grid-stride).
// Roofline: ~25 FLOPs per element (one tanh), 3 * sizeof(T) bytes per element (the unfused pair
// moved 5): memory bound.
template <typename A> __device__ __forceinline__ A gelu_derivative(A z) {
    const A u = (A)0.7978845608028654 * (z + (A)0.044715 * z * z * z);
    const A t = k_tanh(u);
    const A du = (A)0.7978845608028654 * ((A)1 + (A)(3.0 * 0.044715) * z * z);
    return (A)0.5 * ((A)1 + t) + (A)0.5 * z * ((A)1 - t * t) * du;
}

template <typename T>
__device__ __forceinline__ void gelu_backward_impl(const T *__restrict__ dy, const KilnLayout &ldy,
                                                   const T *__restrict__ z, const KilnLayout &lz, T *__restrict__ dx,
                                                   unsigned long long n) {
    typedef KilnFloat<T> F;
    kiln_map2(dy, ldy, z, lz, dx, n, [](T g, T v) { return F::down(F::up(g) * gelu_derivative(F::up(v))); });
}

// Entry points, one per dtype (KILN_ENTRY, common.cuh).
#define GELU_BACKWARD_KERNEL(T)                                                                                        \
    (const T *dy, KilnLayout ldy, const T *z, KilnLayout lz, T *dx, unsigned long long n) {                            \
        gelu_backward_impl(dy, ldy, z, lz, dx, n);                                                                     \
    }

KILN_ENTRY(gelu_backward_f32, GELU_BACKWARD_KERNEL, float)
KILN_ENTRY(gelu_backward_f64, GELU_BACKWARD_KERNEL, double)
KILN_ENTRY(gelu_backward_bf16, GELU_BACKWARD_KERNEL, __nv_bfloat16)
KILN_ENTRY(gelu_backward_f16, GELU_BACKWARD_KERNEL, __half)
