// emu_ptx.h — the emulated tensor-core and asynchronous-copy instructions (part of emu.h).
//
// Kernels never call these directly: they use the helpers of common.cuh (kiln_mma_m16n8k16,
// kiln_mma_m16n8k32_s8, kiln_ldmatrix_*, kiln_cp_async_*), which are inline PTX under NVRTC and these
// functions under the emulator. Each follows the PTX ISA's description of the instruction (PTX ISA 8.x, "Warp-level matrix
// fragment mma.m16n8k16" and "ldmatrix"), lane by lane:
//
//   groupID = lane / 4, tig = lane % 4 (threadID_in_group)
//   A, 16x16, row-major fragment, four .b32 registers of two 16-bit elements (low half first):
//     a[0] = A[groupID    ][2 tig .. 2 tig + 1]    a[1] = A[groupID + 8][2 tig .. 2 tig + 1]
//     a[2] = A[groupID    ][2 tig + 8 .. + 9]      a[3] = A[groupID + 8][2 tig + 8 .. + 9]
//   B, 16x8, column fragment, two .b32 registers:
//     b[0] = B[2 tig .. 2 tig + 1][groupID]        b[1] = B[2 tig + 8 .. 2 tig + 9][groupID]
//   C and D, 16x8 f32, four registers:
//     c[0..1] = C[groupID][2 tig .. 2 tig + 1]     c[2..3] = C[groupID + 8][2 tig .. 2 tig + 1]
//
//   ldmatrix .x1/.x2/.x4: lanes 8i .. 8i+7 give the addresses of rows 0..7 of matrix i (16 bytes each:
//   eight 16-bit elements); register i of lane l receives matrix i's elements [l/4][2(l%4) .. 2(l%4)+1],
//   or with .trans its elements [2(l%4)][l/4] (low half) and [2(l%4)+1][l/4] (high half).
//
// mma.sync and ldmatrix are warp-wide: each needs values that other lanes hold. Every lane posts its
// operands in a per-warp scratch area (a `thread_local`, which all fibers of the block share, like
// shared memory), meets the others at __syncwarp, computes its own results, and meets them again
// before the scratch area may be reused. So all 32 lanes must execute the instruction, as on the GPU
// (`.aligned`): a lane that is missing or has exited makes __syncwarp fail the launch with the call site.
//
// Products of 16-bit floats are exact in f32; the emulated mma adds them to the accumulator one k at a
// time in f32, in k order. The tensor core's internal order and rounding are unspecified and differ in
// the last bits, which kiln's tolerances allow for.
//
// cp.async: with the checker's `async` check on (the default), the copy is recorded and lands at the
// kiln_cp_async_wait that covers its group, as on the GPU (emu_check.cpp); touching its destination
// before then is an error. With the check off it completes when issued (copying src_bytes bytes and
// zero-filling the rest of the 16), and commit_group and wait_group have nothing to do.
#pragma once

namespace emu {

constexpr int kMaxWarpsPerBlock = 32;

// The calling thread's warp within its block, and its lane.
inline unsigned warp_in_block() {
    return (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) / 32u;
}
inline unsigned lane_id() { return (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32u; }

// What each lane posts for one warp-wide instruction.
struct WarpPost {
    unsigned a[4];
    unsigned b[2];
    float c[4];
    const unsigned char *row; // ldmatrix: this lane's row address
};

// The block's scratch area (the emulator's, not the kernel's: the checker and the profiler skip it).
inline thread_local WarpPost warp_post_area[kMaxWarpsPerBlock][32];

inline WarpPost *warp_posts() { return warp_post_area[warp_in_block()]; }

// The checker's and the profiler's view of these instructions (emu_check.cpp, not instrumented):
// ldmatrix_row reports a lane's 16-byte row as one shared-memory load of an ldmatrix (so the profiler
// counts a matrix's eight rows as one phase, as the hardware reads them); silent_copy moves bytes
// without reporting them (the lanes gathering each other's rows); mma_seen and mma_s8_seen count one
// mma (m16n8k16 16-bit, m16n8k32 8-bit) for the warp.
void ldmatrix_row(const void *row);
void silent_copy(void *dst, const void *src, unsigned bytes);
void mma_seen();
void mma_s8_seen(); // the same for one mma.m16n8k32 on signed bytes

template <typename T> inline float half_bits_to_float(unsigned short bits);
template <> inline float half_bits_to_float<__nv_bfloat16>(unsigned short bits) {
    return __bfloat162float(__ushort_as_bfloat16(bits));
}
template <> inline float half_bits_to_float<__half>(unsigned short bits) { return __half2float(__ushort_as_half(bits)); }

// Element `which` (0 low, 1 high) of a .b32 register holding two 16-bit values.
template <typename T> inline float reg_half(unsigned reg, int which) {
    return half_bits_to_float<T>(static_cast<unsigned short>(which ? reg >> 16 : reg & 0xffffu));
}

// A[r][k] and B[k][n] of the warp's operands, read from the lanes that hold them.
template <typename T> inline float mma_a(const WarpPost *p, int r, int k) {
    const int lane = (r % 8) * 4 + (k % 8) / 2;
    const int reg = (r >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
    return reg_half<T>(p[lane].a[reg], k % 2);
}
template <typename T> inline float mma_b(const WarpPost *p, int k, int n) {
    const int lane = n * 4 + (k % 8) / 2;
    return reg_half<T>(p[lane].b[k >= 8 ? 1 : 0], k % 2);
}

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 d, a, b, c with d = c in place.
template <typename T>
inline void mma_m16n8k16(float (&acc)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                         const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    WarpPost *p = warp_posts();
    const unsigned lane = lane_id();
    for (int i = 0; i < 4; ++i) p[lane].a[i] = a[i];
    for (int i = 0; i < 2; ++i) p[lane].b[i] = b[i];
    __syncwarp(0xffffffffu, file, line);
    if (lane == 0) mma_seen();
    const int group = static_cast<int>(lane / 4), tig = static_cast<int>(lane % 4);
    for (int i = 0; i < 4; ++i) {
        const int r = group + (i >= 2 ? 8 : 0), n = 2 * tig + (i % 2);
        float d = acc[i];
        for (int k = 0; k < 16; ++k) d += mma_a<T>(p, r, k) * mma_b<T>(p, k, n);
        acc[i] = d;
    }
    __syncwarp(0xffffffffu, file, line);
}

// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 d, a, b, c with d = c in place. Fragments (PTX ISA,
// "Matrix Fragments for mma.m16n8k32", .s8), each .b32 register four signed bytes, lowest index in the
// low byte: A 16x32 a[0] = A[g][4t..4t+3], a[1] = A[g+8][4t..], a[2] = A[g][4t+16..], a[3] = A[g+8][4t+16..];
// B 32x8 b[0] = B[4t..4t+3][g], b[1] = B[4t+16..4t+19][g]; C/D s32 as the f32 C of m16n8k16. The sum is
// exact and wraps modulo 2^32 (no .satfinite), as on the GPU.
inline signed char reg_s8(unsigned reg, int which) { return static_cast<signed char>((reg >> (8 * which)) & 0xffu); }
inline int mma_a_s8(const WarpPost *p, int r, int k) {
    const int lane = (r % 8) * 4 + (k % 16) / 4;
    const int reg = (r >= 8 ? 1 : 0) + (k >= 16 ? 2 : 0);
    return reg_s8(p[lane].a[reg], k % 4);
}
inline int mma_b_s8(const WarpPost *p, int k, int n) {
    const int lane = n * 4 + (k % 16) / 4;
    return reg_s8(p[lane].b[k >= 16 ? 1 : 0], k % 4);
}

inline void mma_m16n8k32_s8(int (&acc)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                            const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    WarpPost *p = warp_posts();
    const unsigned lane = lane_id();
    for (int i = 0; i < 4; ++i) p[lane].a[i] = a[i];
    for (int i = 0; i < 2; ++i) p[lane].b[i] = b[i];
    __syncwarp(0xffffffffu, file, line);
    if (lane == 0) mma_s8_seen();
    const int group = static_cast<int>(lane / 4), tig = static_cast<int>(lane % 4);
    for (int i = 0; i < 4; ++i) {
        const int r = group + (i >= 2 ? 8 : 0), n = 2 * tig + (i % 2);
        unsigned d = static_cast<unsigned>(acc[i]);
        for (int k = 0; k < 32; ++k) d += static_cast<unsigned>(mma_a_s8(p, r, k) * mma_b_s8(p, k, n));
        acc[i] = static_cast<int>(d);
    }
    __syncwarp(0xffffffffu, file, line);
}

// ldmatrix.sync.aligned.m8n8.x{Count}{.trans}.shared.b16 into r[0 .. Count).
template <int Count, bool Trans>
inline void ldmatrix(unsigned *r, const void *row, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    WarpPost *p = warp_posts();
    const unsigned lane = lane_id();
    if (lane < 8u * Count && (reinterpret_cast<uintptr_t>(row) & 15u) != 0)
        kernel_fail(file, line, "ldmatrix: row address %p of lane %u is not 16-byte aligned", row, lane);
    p[lane].row = static_cast<const unsigned char *>(row);
    __syncwarp(0xffffffffu, file, line);
    // (after the __syncwarp: the instruction reads the rows as a warp, after what its lanes wrote before)
    if (lane < 8u * Count) ldmatrix_row(row);
    for (int i = 0; i < Count; ++i) {
        unsigned short e[2];
        for (int h = 0; h < 2; ++h) {
            // element [row][col] of matrix i, before any transposition
            const int mrow = Trans ? 2 * static_cast<int>(lane % 4) + h : static_cast<int>(lane / 4);
            const int mcol = Trans ? static_cast<int>(lane / 4) : 2 * static_cast<int>(lane % 4) + h;
            silent_copy(&e[h], p[8 * i + mrow].row + 2 * mcol, 2);
        }
        r[i] = static_cast<unsigned>(e[0]) | (static_cast<unsigned>(e[1]) << 16);
    }
    __syncwarp(0xffffffffu, file, line);
}

// The checker's side of cp.async (emu_check.cpp). cp_async_issue returns false when the copy is to be
// made at once (the async check is off), having reported its global read and its 16-byte shared
// write (which the profiler counts as one shared store, as the GPU's LDGSTS writes through the
// shared-memory banks); with the check on the same two accesses are reported when the copy lands. It
// is not inlined, so that it can tell the call site.
bool cp_async_issue(void *dst, const void *src, unsigned src_bytes);
void cp_async_commit();
void cp_async_wait(int keep_groups);

// cp.async.cg.shared.global [dst], [src], 16, src_bytes: copies src_bytes (0..16) and zero-fills the rest.
inline void cp_async_16(void *dst, const void *src, unsigned src_bytes, const char *file = __builtin_FILE(),
                        int line = __builtin_LINE()) {
    if ((reinterpret_cast<uintptr_t>(dst) & 15u) != 0 || (reinterpret_cast<uintptr_t>(src) & 15u) != 0)
        kernel_fail(file, line, "cp.async of 16 bytes from %p to %p: both addresses must be 16-byte aligned", src, dst);
    if (src_bytes > 16u) kernel_fail(file, line, "cp.async: src-size %u is over the copy size 16", src_bytes);
    if (cp_async_issue(dst, src, src_bytes)) return;
    // Copied silently: cp_async_issue has reported both sides to the checker and the profiler.
    unsigned char tmp[16] = {};
    if (src_bytes > 0) silent_copy(tmp, src, src_bytes);
    silent_copy(dst, tmp, 16);
}

} // namespace emu
