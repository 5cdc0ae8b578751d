// emu.h — what a CUDA kernel sees when kiln compiles it for the CPU emulator (Device::Emu).
//
// kernels/*.cu are compiled twice: by NVRTC for the GPU, and by the host C++ compiler (g++ -std=c++17)
// with this header for the emulator. common.cuh includes it when neither __CUDACC__ nor __CUDACC_RTC__
// is defined, so the kernel sources need no #ifdefs of their own. It provides:
//   - the CUDA keywords (__global__, __device__, __shared__, __launch_bounds__, ...) as plain C++;
//   - threadIdx, blockIdx, blockDim, gridDim, warpSize;
//   - __syncthreads() and its _count/_and/_or forms, warp shuffles, votes, __syncwarp, __activemask;
//   - atomics, the vector types, __half / __nv_bfloat16 (emu_half.h), and the math intrinsics;
//   - mma.sync, ldmatrix and cp.async as common.cuh's helpers use them (emu_ptx.h);
//   - EMU_KERNEL(name), which makes a kernel launchable by name through emu_api.h.
//
// How a launch runs (the scheduler itself is in emu_runtime.cpp; its header comment has the details):
// every CUDA thread of a block is a fiber, a user-level thread with its own stack, and all fibers of a
// block run on one OS thread, one at a time, switching only where CUDA threads must wait for each
// other: at __syncthreads() and at warp collectives. A thread runs until it finishes or waits; a
// thread that never waits costs no switch at all. Blocks are spread over a few OS threads.
//
// __shared__ variables become `static thread_local`: every fiber of a block sees the same copy (they
// share the OS thread), and two blocks never share one, because an OS thread runs one block at a time
// from its first thread's start to its last thread's exit. A block finds whatever the previous block
// on that OS thread left there, which is what CUDA promises about shared memory at block start:
// nothing. Dynamic shared memory cannot be declared `extern __shared__` in g++; kernels use
// KILN_DYNAMIC_SMEM(T, name) from common.cuh, which here reads emu::dynamic_smem().
#pragma once

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <chrono>
#include <climits>
#include <cfloat>
#include <math.h> // (not <cmath>) so that isnan, isinf, ... are in the global namespace, as in CUDA
#include <type_traits>
#include <utility>

#include "emu_api.h"

#define KILN_EMU 1

// ---------------------------------------------------------------------------------------------------
// Keywords.
#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __grid_constant__
#define __shared__ static thread_local
// __restrict__ is already a g++ keyword. __noinline__ is defined at the very end of this header: the C++
// standard headers use __attribute__((__noinline__)) themselves, so it must come after all of them.

// ---------------------------------------------------------------------------------------------------
// Vector types, with CUDA's sizes and alignments (float2 8, float4 16, float3 4, ...).
#define EMU_VEC2(T, name, align)                                                                      \
    struct __align__(align) name { T x, y; };                                                         \
    inline name make_##name(T x, T y) { return name{x, y}; }
#define EMU_VEC3(T, name)                                                                             \
    struct name { T x, y, z; };                                                                       \
    inline name make_##name(T x, T y, T z) { return name{x, y, z}; }
#define EMU_VEC4(T, name, align)                                                                      \
    struct __align__(align) name { T x, y, z, w; };                                                   \
    inline name make_##name(T x, T y, T z, T w) { return name{x, y, z, w}; }

EMU_VEC2(char, char2, 2)
EMU_VEC2(unsigned char, uchar2, 2)
EMU_VEC4(char, char4, 4)
EMU_VEC4(unsigned char, uchar4, 4)
EMU_VEC2(short, short2, 4)
EMU_VEC2(unsigned short, ushort2, 4)
EMU_VEC4(short, short4, 8)
EMU_VEC4(unsigned short, ushort4, 8)
EMU_VEC2(int, int2, 8)
EMU_VEC2(unsigned int, uint2, 8)
EMU_VEC3(int, int3)
EMU_VEC3(unsigned int, uint3)
EMU_VEC4(int, int4, 16)
EMU_VEC4(unsigned int, uint4, 16)
EMU_VEC2(float, float2, 8)
EMU_VEC3(float, float3)
EMU_VEC4(float, float4, 16)
EMU_VEC2(long long, longlong2, 16)
EMU_VEC2(unsigned long long, ulonglong2, 16)
EMU_VEC2(double, double2, 16)
#undef EMU_VEC2
#undef EMU_VEC3
#undef EMU_VEC4

static_assert(sizeof(float4) == 16 && alignof(float4) == 16, "float4 layout");
static_assert(sizeof(float3) == 12 && alignof(float3) == 4, "float3 layout");
static_assert(sizeof(float2) == 8 && alignof(float2) == 8, "float2 layout");

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

#include "emu_half.h"

// ---------------------------------------------------------------------------------------------------
// The running thread's identity. The scheduler sets these whenever it runs a thread: the variables are
// per OS thread, and each OS thread runs one emulated thread at a time. They are one struct so that
// the checker (emu_check.cpp) can tell them apart, by address, from the `static thread_local`
// __shared__ variables that live in the same thread-local storage block.
namespace emu {
struct ThreadIds {
    uint3 thread_idx;
    uint3 block_idx;
    uint3 block_dim; // (uint3, not dim3: a member with a constructor would make g++ guard every access
    uint3 grid_dim;  // to tl_ids with a hidden initialisation flag, which the checker would see)
    unsigned char *dyn_smem; // this block's dynamic shared memory
};
inline thread_local ThreadIds tl_ids;

// The start of the block's dynamic shared memory (the launch's dyn_smem_bytes, 16-byte aligned,
// freshly filled with 0xFF for every block and ending at a guard page). See KILN_DYNAMIC_SMEM.
inline unsigned char *dynamic_smem() { return tl_ids.dyn_smem; }
} // namespace emu

#define threadIdx (static_cast<const uint3 &>(::emu::tl_ids.thread_idx))
#define blockIdx (static_cast<const uint3 &>(::emu::tl_ids.block_idx))
#define blockDim (dim3(::emu::tl_ids.block_dim))
#define gridDim (dim3(::emu::tl_ids.grid_dim))
constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------------------
// Synchronisation primitives, implemented by the scheduler in emu_runtime.cpp. Each takes its call
// site as defaulted arguments so that errors (and __activemask's notion of convergence) can name it.
namespace emu {
enum class Barrier { Sync, Count, And, Or };
enum class Collective { SyncWarp, ShflIdx, ShflUp, ShflDown, ShflXor, Ballot, Any, All, ActiveMask };

int block_barrier(Barrier kind, int predicate, const char *file, int line);
unsigned long long warp_collective(Collective kind, unsigned mask, unsigned long long value, int lane_arg,
                                   int width, const char *file, int line);
// Ends the launch with an error that names the kernel, block, thread and site. Never returns.
[[noreturn]] void kernel_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

template <typename T>
inline T shuffle(Collective kind, unsigned mask, T var, int lane_arg, int width, const char *file, int line) {
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8,
                  "warp shuffles move values of at most 8 bytes");
    unsigned long long bits = 0;
    std::memcpy(&bits, &var, sizeof(T));
    bits = warp_collective(kind, mask, bits, lane_arg, width, file, line);
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
}
} // namespace emu

inline void __syncthreads(const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    emu::block_barrier(emu::Barrier::Sync, 0, file, line);
}
inline int __syncthreads_count(int p, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return emu::block_barrier(emu::Barrier::Count, p, file, line);
}
inline int __syncthreads_and(int p, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return emu::block_barrier(emu::Barrier::And, p, file, line);
}
inline int __syncthreads_or(int p, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return emu::block_barrier(emu::Barrier::Or, p, file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    emu::warp_collective(emu::Collective::SyncWarp, mask, 0, 0, warpSize, file, line);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize,
                     const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return emu::shuffle(emu::Collective::ShflIdx, mask, var, src_lane, width, file, line);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                        const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return emu::shuffle(emu::Collective::ShflUp, mask, var, static_cast<int>(delta), width, file, line);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                          const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return emu::shuffle(emu::Collective::ShflDown, mask, var, static_cast<int>(delta), width, file, line);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize,
                         const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return emu::shuffle(emu::Collective::ShflXor, mask, var, lane_mask, width, file, line);
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return static_cast<unsigned>(emu::warp_collective(emu::Collective::Ballot, mask, pred != 0, 0, warpSize, file, line));
}
inline int __any_sync(unsigned mask, int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return static_cast<int>(emu::warp_collective(emu::Collective::Any, mask, pred != 0, 0, warpSize, file, line));
}
inline int __all_sync(unsigned mask, int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return static_cast<int>(emu::warp_collective(emu::Collective::All, mask, pred != 0, 0, warpSize, file, line));
}
// The lanes of the warp converged with the caller: those that reach this same __activemask() call.
inline unsigned __activemask(const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return static_cast<unsigned>(emu::warp_collective(emu::Collective::ActiveMask, 0, 0, 0, warpSize, file, line));
}

// A block's threads share one OS thread, so a block-scope fence only has to stop the compiler from
// moving memory accesses across it; blocks run in parallel, so the wider fences are real.
inline void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

[[noreturn]] inline void __trap(const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    emu::kernel_fail(file, line, "__trap() called");
}
// A device-side assert fails the launch (as cudaErrorAssert does) instead of aborting the process.
#undef assert
#ifdef NDEBUG
#define assert(e) ((void)0)
#else
#define assert(e) ((e) ? (void)0 : ::emu::kernel_fail(__FILE__, __LINE__, "assertion failed: %s", #e))
#endif

inline long long clock64() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch()).count();
}
inline long clock() { return static_cast<long>(clock64()); }

// ---------------------------------------------------------------------------------------------------
// Atomics. Blocks run in parallel on different OS threads, so these are real atomic read-modify-writes
// on any address (global or shared); like CUDA's, they impose no ordering (relaxed).
namespace emu {
// Applies `op` atomically through a compare-and-swap loop on the value's bits; returns the old value.
template <typename T, typename Op>
inline T atomic_update(T *addr, Op op) {
    using Bits = std::conditional_t<sizeof(T) == 2, uint16_t, std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>;
    static_assert(sizeof(T) == sizeof(Bits), "atomics work on 2, 4 or 8-byte values");
    Bits *p = reinterpret_cast<Bits *>(addr);
    Bits old_bits = __atomic_load_n(p, __ATOMIC_RELAXED);
    for (;;) {
        T old_value;
        std::memcpy(&old_value, &old_bits, sizeof(T));
        const T new_value = op(old_value);
        Bits new_bits;
        std::memcpy(&new_bits, &new_value, sizeof(T));
        if (__atomic_compare_exchange_n(p, &old_bits, new_bits, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return old_value;
    }
}
// PTX's atom.add.f32 flushes subnormal inputs and results to sign-preserving zero.
inline float flush_subnormal(float x) { return fabsf(x) < FLT_MIN ? copysignf(0.0f, x) : x; }
} // namespace emu

#define EMU_ATOMIC_INT_OPS(T)                                                                         \
    inline T atomicAdd(T *a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }              \
    inline T atomicSub(T *a, T v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }              \
    inline T atomicAnd(T *a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_RELAXED); }              \
    inline T atomicOr(T *a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_RELAXED); }                \
    inline T atomicXor(T *a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED); }              \
    inline T atomicExch(T *a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }            \
    inline T atomicMax(T *a, T v) { return emu::atomic_update(a, [v](T o) { return o > v ? o : v; }); } \
    inline T atomicMin(T *a, T v) { return emu::atomic_update(a, [v](T o) { return o < v ? o : v; }); } \
    inline T atomicCAS(T *a, T expected, T desired) {                                                 \
        __atomic_compare_exchange_n(a, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED); \
        return expected; /* the old value, whether or not the swap happened */                       \
    }
EMU_ATOMIC_INT_OPS(int)
EMU_ATOMIC_INT_OPS(unsigned int)
EMU_ATOMIC_INT_OPS(long long)
EMU_ATOMIC_INT_OPS(unsigned long long)
#undef EMU_ATOMIC_INT_OPS

inline unsigned short atomicCAS(unsigned short *a, unsigned short expected, unsigned short desired) {
    __atomic_compare_exchange_n(a, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return expected;
}
inline float atomicAdd(float *a, float v) {
    return emu::atomic_update(a, [v](float o) { return emu::flush_subnormal(emu::flush_subnormal(o) + emu::flush_subnormal(v)); });
}
inline double atomicAdd(double *a, double v) { return emu::atomic_update(a, [v](double o) { return o + v; }); }
inline __half atomicAdd(__half *a, __half v) { return emu::atomic_update(a, [v](__half o) { return o + v; }); }
inline __nv_bfloat16 atomicAdd(__nv_bfloat16 *a, __nv_bfloat16 v) {
    return emu::atomic_update(a, [v](__nv_bfloat16 o) { return o + v; });
}
inline float atomicExch(float *a, float v) { return emu::atomic_update(a, [v](float) { return v; }); }
// ((old >= limit) ? 0 : old + 1) and ((old == 0 || old > limit) ? limit : old - 1), as CUDA defines them.
inline unsigned atomicInc(unsigned *a, unsigned limit) {
    return emu::atomic_update(a, [limit](unsigned o) { return o >= limit ? 0u : o + 1u; });
}
inline unsigned atomicDec(unsigned *a, unsigned limit) {
    return emu::atomic_update(a, [limit](unsigned o) { return (o == 0u || o > limit) ? limit : o - 1u; });
}

// ---------------------------------------------------------------------------------------------------
// Math and bit intrinsics. The fast-math forms (__expf, __fdividef, ...) compute the accurate result
// here; the GPU's approximations differ in the last bits, which kiln's tolerances already allow for.
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return exp10f(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline void __sincosf(float x, float *s, float *c) { sincosf(x, s, c); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
// The f64 forms. build.rs compiles the emulator with -ffp-contract=off, so no a * b + c is fused.
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline float __saturatef(float x) { return x >= 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); } // NaN -> 0

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }
inline long long __double_as_longlong(double d) { long long i; std::memcpy(&i, &d, 8); return i; }

// Float -> int conversions saturate and send NaN to 0, as cvt.rzi.s32.f32 does (a C++ cast would be
// undefined out of range).
inline int __float2int_rz(float x) {
    if (x != x) return 0;
    if (x >= 2147483648.0f) return INT_MAX;
    if (x <= -2147483648.0f) return INT_MIN;
    return static_cast<int>(x);
}
inline int __float2int_rn(float x) { return __float2int_rz(rintf(x)); } // rintf: ties to even
inline int __float2int_rd(float x) { return __float2int_rz(floorf(x)); }
inline int __float2int_ru(float x) { return __float2int_rz(ceilf(x)); }
inline unsigned __float2uint_rz(float x) {
    if (!(x > 0.0f)) return 0u; // also NaN
    if (x >= 4294967296.0f) return UINT_MAX;
    return static_cast<unsigned>(x);
}
inline unsigned __float2uint_rn(float x) { return __float2uint_rz(rintf(x)); }
inline float __int2float_rn(int i) { return static_cast<float>(i); }
inline float __uint2float_rn(unsigned u) { return static_cast<float>(u); }

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    return __builtin_bswap32(x);
}
// The low 32 bits of the product of the operands' sign-extended low 24 bits.
inline int __mul24(int a, int b) {
    const int64_t a24 = static_cast<int32_t>(static_cast<uint32_t>(a) << 8) >> 8;
    const int64_t b24 = static_cast<int32_t>(static_cast<uint32_t>(b) << 8) >> 8;
    return static_cast<int>(static_cast<uint32_t>(a24 * b24));
}
inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xffffffu) * (b & 0xffffffu); }
inline int __mulhi(int a, int b) { return static_cast<int>((static_cast<int64_t>(a) * b) >> 32); }
inline unsigned __umulhi(unsigned a, unsigned b) { return static_cast<unsigned>((static_cast<uint64_t>(a) * b) >> 32); }
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const uint64_t v = (static_cast<uint64_t>(y) << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= static_cast<unsigned>((v >> (8 * ((s >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
    return r;
}

// Four byte products added to c (sm_61+): the bytes of a and b as signed (int) or unsigned (unsigned).
inline int __dp4a(int a, int b, int c) {
    unsigned sum = static_cast<unsigned>(c); // wraps as the GPU's adder does
    for (int i = 0; i < 4; ++i)
        sum += static_cast<unsigned>(static_cast<int8_t>(a >> (8 * i)) * static_cast<int8_t>(b >> (8 * i)));
    return static_cast<int>(sum);
}
inline unsigned __dp4a(unsigned a, unsigned b, unsigned c) {
    for (int i = 0; i < 4; ++i) c += ((a >> (8 * i)) & 0xffu) * ((b >> (8 * i)) & 0xffu);
    return c;
}

// CUDA's min/max overloads, including the mixed signed/unsigned ones (which compare as unsigned).
#define EMU_MINMAX(R, A, B)                                                                           \
    inline R min(A a, B b) { return static_cast<R>(a) < static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); } \
    inline R max(A a, B b) { return static_cast<R>(a) > static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); }
EMU_MINMAX(int, int, int)
EMU_MINMAX(unsigned int, unsigned int, unsigned int)
EMU_MINMAX(unsigned int, int, unsigned int)
EMU_MINMAX(unsigned int, unsigned int, int)
EMU_MINMAX(long, long, long)
EMU_MINMAX(unsigned long, unsigned long, unsigned long)
EMU_MINMAX(long long, long long, long long)
EMU_MINMAX(unsigned long long, unsigned long long, unsigned long long)
EMU_MINMAX(unsigned long long, long long, unsigned long long)
EMU_MINMAX(unsigned long long, unsigned long long, long long)
#undef EMU_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline double min(float a, double b) { return fmin(a, b); }
inline double max(float a, double b) { return fmax(a, b); }
inline double min(double a, float b) { return fmin(a, b); }
inline double max(double a, float b) { return fmax(a, b); }

// Cache-hinted loads and stores are plain accesses here.
template <typename T> inline T __ldg(const T *p) { return *p; }
template <typename T> inline T __ldcg(const T *p) { return *p; }
template <typename T> inline T __ldca(const T *p) { return *p; }
template <typename T> inline T __ldcs(const T *p) { return *p; }
template <typename T> inline T __ldlu(const T *p) { return *p; }
template <typename T> inline void __stcg(T *p, T v) { *p = v; }
template <typename T> inline void __stcs(T *p, T v) { *p = v; }
template <typename T> inline void __stwb(T *p, T v) { *p = v; }

// Copies a KilnPack (common.cuh) as one access of `bytes` to each side, as the GPU's vector load and
// store do; the checker and the profiler see it so (emu_check.cpp), not as g++'s element moves.
namespace emu {
void pack_copy(void *dst, const void *src, unsigned bytes);
} // namespace emu

// Tensor-core and asynchronous-copy instructions, as common.cuh's helpers reach them.
#include "emu_ptx.h"

// ---------------------------------------------------------------------------------------------------
// Kernel registration. For `extern "C" __global__ void name(T1 a, T2 b, ...)`, EMU_KERNEL(name) defines
//   extern "C" void emu_thunk_name(void** args)   // calls name(*(T1*)args[0], *(T2*)args[1], ...)
// and registers it under "name" before main() runs. kiln's build script appends one EMU_KERNEL line per
// kernel it finds in a .cu file (see emulator.md). The thunk runs once per emulated thread, so it is
// an ordinary direct call that the compiler can inline.
namespace emu {
template <typename... A, std::size_t... I>
inline void invoke_kernel(void (*kernel)(A...), [[maybe_unused]] void **args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>> *>(args[I])...);
}
template <typename... A>
inline void invoke_kernel(void (*kernel)(A...), void **args) {
    invoke_kernel(kernel, args, std::index_sequence_for<A...>{});
}
} // namespace emu

#define EMU_KERNEL(name)                                                                              \
    extern "C" void emu_thunk_##name(void **args) { ::emu::invoke_kernel(&name, args); }              \
    [[maybe_unused]] static const int emu_registered_##name = ::emu_register(#name, &emu_thunk_##name);

// Last, after every standard header (see the keywords above). A kernel file must not include standard
// headers after common.cuh (NVRTC could not compile them anyway).
#define __noinline__ __attribute__((noinline))
