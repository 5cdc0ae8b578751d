// binary.cu — elementwise functions of two tensors with NumPy broadcasting: y[i] = f(a[view_a(i)],
// b[view_b(i)]) into a fresh contiguous buffer. The host broadcasts both views to the output shape
// first (a broadcast dim is a stride-0 dim), so the kernel only follows strides.
//
// binary_<dtype> (f32, f64, bf16, f16): add, sub, mul, div, maximum, minimum, computed in f32 (f64
// for f64) as on the CPU; maximum/minimum propagate NaN as PyTorch does.
// compare_<dtype> (also u32): eq, ne, lt, le, gt, ge, giving u32 0/1.
// Algorithm: kiln_map2, the shared elementwise loop: 16-byte accesses when both views are contiguous
// and aligned, strided single elements otherwise. The op is an argument; the switch sits outside the
// loop so each case is its own specialised loop.
// Launch: 1-D, 256 threads per block, ceil(n / (256 * pack)) blocks (capped; the loop covers the rest).
// Roofline: 1 FLOP and 3 * sizeof(T) bytes per element (less when an operand is broadcast and stays
// in cache): memory bound.
#include "common.cuh"

// Op codes, the order of BinaryOp's variants (src/backend/cuda/binary.rs keeps the mapping).
#define KILN_ADD 0
#define KILN_SUB 1
#define KILN_MUL 2
#define KILN_DIV 3
#define KILN_MAXIMUM 4
#define KILN_MINIMUM 5
#define KILN_EQ 6
#define KILN_NE 7
#define KILN_LT 8
#define KILN_LE 9
#define KILN_GT 10
#define KILN_GE 11

template <typename A> __device__ __forceinline__ bool k_isnan(A x) { return x != x; }

template <typename T>
__device__ __forceinline__ void binary_impl(const T *__restrict__ a, const KilnLayout &la, const T *__restrict__ b,
                                            const KilnLayout &lb, T *__restrict__ y, unsigned long long n, int op) {
    typedef KilnFloat<T> F;
    typedef typename F::Acc A;
    switch (op) {
    case KILN_ADD: kiln_map2(a, la, b, lb, y, n, [](T u, T v) { return F::down(F::up(u) + F::up(v)); }); break;
    case KILN_SUB: kiln_map2(a, la, b, lb, y, n, [](T u, T v) { return F::down(F::up(u) - F::up(v)); }); break;
    case KILN_MUL: kiln_map2(a, la, b, lb, y, n, [](T u, T v) { return F::down(F::up(u) * F::up(v)); }); break;
    case KILN_DIV: kiln_map2(a, la, b, lb, y, n, [](T u, T v) { return F::down(F::up(u) / F::up(v)); }); break;
    case KILN_MAXIMUM:
        kiln_map2(a, la, b, lb, y, n, [](T u, T v) {
            const A x = F::up(u), z = F::up(v);
            return F::down(k_isnan(x) || x > z ? x : z);
        });
        break;
    case KILN_MINIMUM:
        kiln_map2(a, la, b, lb, y, n, [](T u, T v) {
            const A x = F::up(u), z = F::up(v);
            return F::down(k_isnan(x) || x < z ? x : z);
        });
        break;
    default: break; // the host never sends another code
    }
}

// Compares in the element type's own order (bf16/f16 widen to f32 exactly).
template <typename T> struct KilnCompareValue {
    typedef typename KilnFloat<T>::Acc A;
    static __device__ __forceinline__ A get(T x) { return KilnFloat<T>::up(x); }
};
template <> struct KilnCompareValue<unsigned> {
    static __device__ __forceinline__ unsigned get(unsigned x) { return x; }
};

template <typename T>
__device__ __forceinline__ void compare_impl(const T *__restrict__ a, const KilnLayout &la, const T *__restrict__ b,
                                             const KilnLayout &lb, unsigned *__restrict__ y, unsigned long long n,
                                             int op) {
    typedef KilnCompareValue<T> V;
    switch (op) {
    case KILN_EQ: kiln_map2(a, la, b, lb, y, n, [](T u, T v) { return (unsigned)(V::get(u) == V::get(v)); }); break;
    case KILN_NE: kiln_map2(a, la, b, lb, y, n, [](T u, T v) { return (unsigned)(V::get(u) != V::get(v)); }); break;
    case KILN_LT: kiln_map2(a, la, b, lb, y, n, [](T u, T v) { return (unsigned)(V::get(u) < V::get(v)); }); break;
    case KILN_LE: kiln_map2(a, la, b, lb, y, n, [](T u, T v) { return (unsigned)(V::get(u) <= V::get(v)); }); break;
    case KILN_GT: kiln_map2(a, la, b, lb, y, n, [](T u, T v) { return (unsigned)(V::get(u) > V::get(v)); }); break;
    case KILN_GE: kiln_map2(a, la, b, lb, y, n, [](T u, T v) { return (unsigned)(V::get(u) >= V::get(v)); }); break;
    default: break;
    }
}

// Entry points, one per dtype (KILN_ENTRY, common.cuh).
#define BINARY_KERNEL(T)                                                                                               \
    (const T *a, KilnLayout la, const T *b, KilnLayout lb, T *y, unsigned long long n, int op) {                       \
        binary_impl(a, la, b, lb, y, n, op);                                                                           \
    }
#define COMPARE_KERNEL(T)                                                                                              \
    (const T *a, KilnLayout la, const T *b, KilnLayout lb, unsigned *y, unsigned long long n, int op) {                \
        compare_impl(a, la, b, lb, y, n, op);                                                                          \
    }

KILN_ENTRY(binary_f32, BINARY_KERNEL, float)
KILN_ENTRY(binary_f64, BINARY_KERNEL, double)
KILN_ENTRY(binary_bf16, BINARY_KERNEL, __nv_bfloat16)
KILN_ENTRY(binary_f16, BINARY_KERNEL, __half)

KILN_ENTRY(compare_f32, COMPARE_KERNEL, float)
KILN_ENTRY(compare_f64, COMPARE_KERNEL, double)
KILN_ENTRY(compare_bf16, COMPARE_KERNEL, __nv_bfloat16)
KILN_ENTRY(compare_f16, COMPARE_KERNEL, __half)
KILN_ENTRY(compare_u32, COMPARE_KERNEL, unsigned)
