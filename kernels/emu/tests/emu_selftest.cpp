// emu_selftest.cpp — checks the CUDA emulator through its C API only, as kiln's Rust side drives it:
// buffers from emu_malloc, kernels launched by name with cuLaunchKernel-style argument arrays.
// The kernels are in selftest_kernels.cu. Prints one line per check and a closing "N passed, M failed";
// exits nonzero if anything failed.
#include "../emu_api.h"

#include <algorithm>
#include <cfenv>
#include <chrono>
#include <cstdarg>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

int g_passed = 0, g_failed = 0;

void check(bool ok, const std::string &what, const std::string &detail = "") {
    (ok ? g_passed : g_failed)++;
    printf("%s %s%s%s\n", ok ? "ok  " : "FAIL", what.c_str(), detail.empty() ? "" : " -- ", detail.c_str());
    fflush(stdout);
}

std::string fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char *f, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return buf;
}

bool contains(const std::string &s, const char *part) { return s.find(part) != std::string::npos; }

// An emulated device buffer of n T's.
template <typename T>
struct DevBuf {
    T *p;
    size_t n;
    explicit DevBuf(size_t count) : p(static_cast<T *>(emu_malloc(count * sizeof(T)))), n(count) {}
    DevBuf(const DevBuf &) = delete;
    DevBuf &operator=(const DevBuf &) = delete;
    ~DevBuf() { emu_free(p); }
    T &operator[](size_t i) { return p[i]; }
    // An upload, as kiln does it (the checker sees it; direct stores through operator[] it does not).
    void fill(T v) {
        const std::vector<T> host(n, v);
        emu_memcpy(p, host.data(), n * sizeof(T));
    }
};

emu_dim3 d3(unsigned x, unsigned y = 1, unsigned z = 1) { return emu_dim3{x, y, z}; }

// Launches `name` with the given arguments (each passed by address, as cuLaunchKernel's kernelParams).
// Returns the error message, empty on success.
template <typename... A>
std::string launch(const char *name, emu_dim3 grid, emu_dim3 block, size_t smem, A... args) {
    void *params[] = {static_cast<void *>(&args)...};
    char err[2048] = "";
    const int rc = emu_launch(name, grid, block, smem, params, err, sizeof err);
    if (rc == 0) return "";
    return err[0] ? err : "(nonzero return without a message)";
}

// After an error, the emulator must still run kernels correctly.
void check_still_works(const char *after) {
    const int n = 1000;
    DevBuf<float> x(n), y(n);
    for (int i = 0; i < n; ++i) x[i] = static_cast<float>(i);
    const std::string e = launch("axpb", d3((n + 255) / 256), d3(256), 0, x.p, y.p, 2.0f, 1.0f, n);
    bool ok = e.empty();
    for (int i = 0; ok && i < n; ++i) ok = y[i] == 2.0f * i + 1.0f;
    check(ok, fmt("a later launch works after %s", after), e);
}

void check_error(const std::string &err, const char *what, std::initializer_list<const char *> parts) {
    bool ok = !err.empty();
    for (const char *p : parts) ok = ok && contains(err, p);
    check(ok, what, err.empty() ? "no error reported" : err);
}

double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// --------------------------------------------------------------------------------------------------

void test_sgemm(int M, int N, int K) {
    std::mt19937 rng(42);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    DevBuf<float> A(size_t(M) * K), B(size_t(K) * N), C(size_t(M) * N);
    for (size_t i = 0; i < A.n; ++i) A[i] = u(rng);
    for (size_t i = 0; i < B.n; ++i) B[i] = u(rng);
    const std::string e = launch("sgemm_tiled", d3((N + 15) / 16, (M + 15) / 16), d3(16, 16), 0, A.p, B.p, C.p, M, N, K);
    double maxerr = 0;
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            double s = 0;
            for (int k = 0; k < K; ++k) s += double(A[size_t(i) * K + k]) * B[size_t(k) * N + j];
            maxerr = std::max(maxerr, std::fabs(s - C[size_t(i) * N + j])); // NaN (unwritten) fails below
            if (std::isnan(C[size_t(i) * N + j])) maxerr = INFINITY;
        }
    check(e.empty() && maxerr < 1e-4, fmt("tiled sgemm %dx%dx%d matches naive loops", M, N, K),
          e.empty() ? fmt("max abs error %.3g", maxerr) : e);
}

void test_reductions() {
    const int n = 32 * 64;
    DevBuf<float> x(n), wy(n / 32);
    std::vector<double> ref(n / 32, 0.0);
    for (int i = 0; i < n; ++i) {
        x[i] = static_cast<float>((i * 7919) % 201 - 100);
        ref[i / 32] += x[i];
    }
    std::string e = launch("warp_sum", d3(n / 128), d3(128), 0, x.p, wy.p);
    bool ok = e.empty();
    for (int w = 0; ok && w < n / 32; ++w) ok = wy[w] == ref[w];
    check(ok, "warp shuffle reduction is exact on integer-valued floats", e);

    const int m = 100003, bs = 256, nb = (m + bs - 1) / bs;
    DevBuf<float> xs(m), by(nb);
    DevBuf<int> disagree(1);
    disagree[0] = 0;
    std::vector<double> bref(nb, 0.0);
    for (int i = 0; i < m; ++i) {
        xs[i] = static_cast<float>((i * 104729LL) % 2001 - 1000);
        bref[i / bs] += xs[i];
    }
    e = launch("block_sum", d3(nb), d3(bs), 0, xs.p, by.p, m, disagree.p);
    ok = e.empty() && disagree[0] == 0;
    for (int b = 0; ok && b < nb; ++b) ok = by[b] == bref[b];
    check(ok, fmt("block reduction (shared memory + __syncthreads + shuffles) is exact over %d blocks", nb), e);
}

void test_shuffle_widths() {
    const int n = 64;
    DevBuf<int> in(n), up(n), down(n), idx(n), xr(n);
    for (int i = 0; i < n; ++i) in[i] = 1000 + i;
    const std::string e = launch("shfl_widths", d3(1), d3(n), 0, in.p, up.p, down.p, idx.p, xr.p);
    // Expected lanes, from the CUDA Programming Guide's description of each shuffle with a width:
    // the warp is split into groups of `width` lanes; up/down stay inside the group (else the lane
    // keeps its own value); __shfl_sync reads lane srcLane % width of its own group; xor may read an
    // earlier group but reading a later one returns the lane's own value.
    bool ok_up = e.empty(), ok_down = e.empty(), ok_idx = e.empty(), ok_xor = e.empty();
    for (int t = 0; t < n; ++t) {
        const int lane = t % 32, warp0 = t - lane;
        const int up_src = (lane % 16) >= 3 ? lane - 3 : lane;
        const int down_src = (lane % 16) + 5 < 16 ? lane + 5 : lane;
        const int idx_src = (lane / 8) * 8 + 9 % 8;
        const int x = lane ^ 20;
        const int xor_src = x >= (lane / 16 + 1) * 16 ? lane : x;
        ok_up = ok_up && up[t] == 1000 + warp0 + up_src;
        ok_down = ok_down && down[t] == 1000 + warp0 + down_src;
        ok_idx = ok_idx && idx[t] == 1000 + warp0 + idx_src;
        ok_xor = ok_xor && xr[t] == 1000 + warp0 + xor_src;
    }
    check(ok_up, "__shfl_up_sync(delta 3, width 16)", e);
    check(ok_down, "__shfl_down_sync(delta 5, width 16)", e);
    check(ok_idx, "__shfl_sync(srcLane 9, width 8)", e);
    check(ok_xor, "__shfl_xor_sync(laneMask 20, width 16)", e);
}

void test_votes() {
    const int n = 64;
    DevBuf<int> pred(n), any(n), all(n);
    DevBuf<unsigned> ballot(n), half(n);
    for (int i = 0; i < n; ++i) pred[i] = i < 32 ? (i % 3 == 0) : 1; // warp 1: all true
    const std::string e = launch("votes", d3(1), d3(n), 0, pred.p, ballot.p, any.p, all.p, half.p);
    unsigned b0 = 0;
    for (int i = 0; i < 32; ++i) b0 |= unsigned(i % 3 == 0) << i;
    bool ok_b = e.empty(), ok_aa = e.empty(), ok_h = e.empty();
    for (int t = 0; t < n; ++t) {
        const unsigned expect = t < 32 ? b0 : 0xffffffffu;
        ok_b = ok_b && ballot[t] == expect;
        ok_aa = ok_aa && any[t] == 1 && all[t] == (t < 32 ? 0 : 1);
        ok_h = ok_h && half[t] == (expect & ((t % 32) < 16 ? 0x0000ffffu : 0xffff0000u));
    }
    check(ok_b, "__ballot_sync", e);
    check(ok_aa, "__any_sync / __all_sync", e);
    check(ok_h, "two half-warp ballots with disjoint masks at once", e);

    DevBuf<int> p2(128), cnt(1), a2(1), o2(1);
    for (int i = 0; i < 128; ++i) p2[i] = i % 5 == 0;
    const std::string e2 = launch("barrier_reductions", d3(1), d3(128), 0, p2.p, cnt.p, a2.p, o2.p);
    check(e2.empty() && cnt[0] == 26 && a2[0] == 0 && o2[0] == 1, "__syncthreads_count / _and / _or", e2);

    DevBuf<unsigned> even(64), tail(64);
    const std::string e3 = launch("active_masks", d3(1), d3(64), 0, even.p, tail.p, 40);
    bool ok = e3.empty();
    for (int t = 0; ok && t < 64; t += 2) ok = even[t] == 0x55555555u;
    for (int t = 0; ok && t < 40; ++t) ok = tail[t] == (t < 32 ? 0xffffffffu : 0x000000ffu);
    check(ok, "__activemask in a divergent branch and after lanes exited", e3);

    DevBuf<unsigned> bx(16);
    const std::string e4 = launch("ballot_after_exit", d3(1), d3(32), 0, bx.p);
    ok = e4.empty();
    for (int t = 0; ok && t < 16; ++t) ok = bx[t] == 0x0000ffffu;
    check(ok, "a full-mask ballot completes when the other lanes exit (as vote.sync)", e4);
}

void test_dynamic_smem() {
    const int bs = 96, nb = 7, n = bs * nb;
    DevBuf<float> x(n), y(n);
    for (int i = 0; i < n; ++i) x[i] = static_cast<float>(i);
    std::string e = launch("dyn_smem_reverse", d3(nb), d3(bs), bs * sizeof(float), x.p, y.p);
    bool ok = e.empty();
    for (int b = 0; ok && b < nb; ++b)
        for (int t = 0; ok && t < bs; ++t) ok = y[b * bs + t] == x[b * bs + bs - 1 - t];
    check(ok, "dynamic shared memory (KILN_DYNAMIC_SMEM)", e);

    e = launch("dyn_smem_overrun", d3(1), d3(64), 64 * sizeof(float), y.p);
    check_error(e, "reading past the end of dynamic shared memory is caught",
                {"kernel 'dyn_smem_overrun'", "out of bounds read", "256-byte dynamic shared memory", "0 bytes past its end"});

    e = launch("dyn_smem_reverse", d3(1), d3(32), 64 * 1024, x.p, y.p);
    check_error(e, "over 48 KiB of dynamic shared memory needs the attribute, as on the GPU",
                {"kernel 'dyn_smem_reverse'", "65536 bytes of dynamic shared memory", "cuFuncSetAttribute"});
    check(emu_func_set_max_dynamic_smem("dyn_smem_reverse", 100 * 1024) == 0, "raising the limit to 100 KiB");
    e = launch("dyn_smem_reverse", d3(1), d3(32), 64 * 1024, x.p, y.p);
    check(e.empty(), "a 64 KiB dynamic shared memory launch then works", e);
    check(emu_func_set_max_dynamic_smem("dyn_smem_reverse", 228 * 1024) != 0, "the limit cannot exceed 227 KiB");
    e = launch("dyn_smem_reverse", d3(1), d3(32), 300 * 1024, x.p, y.p);
    check_error(e, "300 KiB of dynamic shared memory is refused", {"kernel 'dyn_smem_reverse'", "307200 bytes"});
}

void test_index3d() {
    const unsigned gx = 3, gy = 4, gz = 5, bx = 4, by = 2, bz = 3;
    const unsigned nx = gx * bx, ny = gy * by, nz = gz * bz, total = nx * ny * nz;
    DevBuf<unsigned> count(total);
    DevBuf<uint32_t> coords(total * 4);
    count.fill(0);
    const std::string e = launch("index3d", d3(gx, gy, gz), d3(bx, by, bz), 0, count.p, coords.p, int(nx), int(ny));
    bool ok = e.empty();
    for (unsigned z = 0; ok && z < nz; ++z)
        for (unsigned y = 0; ok && y < ny; ++y)
            for (unsigned x = 0; ok && x < nx; ++x) {
                const unsigned g = x + nx * (y + ny * z);
                const uint32_t *c = &coords[g * 4];
                const unsigned local = x % bx + bx * (y % by + by * (z % bz));
                ok = count[g] == 1 && c[0] == x && c[1] == y && c[2] == z && c[3] == local;
            }
    check(ok, "3-D grid of 3-D blocks covers every element exactly once with the right indices", e);
}

void test_barrier_errors() {
    DevBuf<float> y(256);
    std::string e = launch("barrier_after_exit", d3(2), d3(256), 0, y.p);
    check_error(e, "a barrier that exited threads never reach is an error",
                {"kernel 'barrier_after_exit'", "__syncthreads()", "thread", "exited", "selftest_kernels.cu:"});
    check_still_works("a divergent barrier");

    e = launch("barrier_split", d3(1), d3(128), 0, y.p);
    check_error(e, "threads waiting at different __syncthreads() calls is an error",
                {"kernel 'barrier_split'", "threads 0..63 wait at __syncthreads()", "same barrier"});

    e = launch("warp_barrier_deadlock", d3(1), d3(32), 0, y.p);
    check_error(e, "a lane at a barrier while its warp waits in a shuffle is reported as a deadlock",
                {"kernel 'warp_barrier_deadlock'", "deadlock", "threads 0..30: waiting in __shfl_sync(mask 0xffffffff)",
                 "thread 31: waiting at __syncthreads()"});
    check_still_works("a deadlock");
}

void test_warp_errors() {
    DevBuf<float> y(64);
    std::string e = launch("shfl_after_exit", d3(1), d3(32), 0, y.p);
    check_error(e, "a shuffle whose mask names exited lanes is an error",
                {"kernel 'shfl_after_exit'", "thread (16,0,0)", "__shfl_xor_sync(mask 0xffffffff)", "lanes 0..15",
                 "exited"});
    e = launch("shfl_then_exit", d3(1), d3(32), 0, y.p);
    check_error(e, "a lane exiting while a shuffle waits for it is an error",
                {"kernel 'shfl_then_exit'", "thread (16,0,0)", "exited while lane 0 of warp 0 waits in __shfl_xor_sync"});
    e = launch("shfl_partial_warp", d3(1), d3(48), 0, y.p);
    check_error(e, "a full-mask shuffle in a partial warp names lanes that do not exist",
                {"kernel 'shfl_partial_warp'", "lanes 16..31 of warp 1, which do not exist"});
    DevBuf<unsigned> u(32);
    e = launch("mixed_collectives", d3(1), d3(32), 0, u.p);
    check_error(e, "lanes in different collectives with overlapping masks is an error",
                {"kernel 'mixed_collectives'", "__ballot_sync(mask 0xffffffff) while lane 0 of warp 0 waits in __shfl_xor_sync"});
    check_still_works("warp collective errors");
}

void test_memory_errors() {
    const int n = 1024;
    DevBuf<float> x(n), y(n);
    x.fill(1.f);
    std::string e = launch("oob_read", d3(n / 256), d3(256), 0, x.p, y.p, n);
    check_error(e, "an out-of-bounds read is caught at the guard page",
                {"kernel 'oob_read'", "thread (255,0,0)", "out of bounds read at byte offset 4100 of a 4096-byte buffer",
                 "4 bytes past its end"});
    check_still_works("an out-of-bounds read");
    e = launch("oob_write", d3(n / 256), d3(256), 0, y.p, n);
    check_error(e, "an out-of-bounds write is caught at the guard page",
                {"kernel 'oob_write'", "out of bounds write at byte offset 4096 of a 4096-byte buffer", "0 bytes past its end"});
    check_still_works("an out-of-bounds write");

    // A use after free.
    float *stale = static_cast<float *>(emu_malloc(4096));
    emu_free(stale);
    e = launch("axpb", d3(1), d3(32), 0, stale, y.p, 1.f, 0.f, 32);
    check_error(e, "a use after free is caught", {"kernel 'axpb'", "use after free", "4096-byte freed buffer"});
    check(emu_free(stale) != 0, "freeing twice is refused");

    DevBuf<int> s(32);
    e = launch("stack_overflow", d3(1), d3(1), 0, s.p);
    check_error(e, "a fiber stack overflow is caught", {"kernel 'stack_overflow'", "stack overflow"});
    check_still_works("a stack overflow");

    e = launch("assert_in_kernel", d3(1), d3(32), 0, s.p);
    check_error(e, "a failed device assert fails the launch", {"kernel 'assert_in_kernel'", "thread (5,0,0)", "assertion failed"});
    DevBuf<int> t(8);
    e = launch("trap_in_kernel", d3(4), d3(1), 0, t.p);
    check_error(e, "__trap() fails the launch", {"kernel 'trap_in_kernel' block (2,0,0)", "__trap()"});

    e = launch("int_divide", d3(1), d3(8), 0, t.p, 0);
    check_error(e, "an integer division by zero fails the launch", {"kernel 'int_divide'", "thread (3,0,0)", "division by zero"});
    check_still_works("a division by zero");

    check(emu_memcpy(x.p, y.p, (n + 1) * sizeof(float)) != 0, "emu_memcpy past a buffer's end is refused");
    check(emu_memset(x.p + 1, 0, n * sizeof(float)) != 0, "emu_memset past a buffer's end is refused");
}

void test_poison() {
    const int n = 1000;
    DevBuf<float> y(n);
    const std::string e = launch("write_all_but", d3(4), d3(256), 0, y.p, n, 123);
    uint32_t bits;
    std::memcpy(&bits, &y[123], 4);
    bool others = true;
    for (int i = 0; i < n; ++i)
        if (i != 123) others = others && y[i] == float(i);
    check(e.empty() && bits == 0xffffffffu && std::isnan(y[123]) && others,
          "an unwritten output element is still poison (0xFFFFFFFF, NaN)", e);
    DevBuf<uint8_t> odd(5);
    check((reinterpret_cast<uintptr_t>(odd.p) + 5) % 4096 == 0, "a buffer ends exactly at a page boundary (its guard page)");
}

void test_launch_limits() {
    DevBuf<float> x(8);
    std::string e = launch("axpb", d3(1), d3(1025), 0, x.p, x.p, 1.f, 0.f, 8);
    check_error(e, "more than 1024 threads per block is refused", {"kernel 'axpb'", "block (1025,1,1)", "1025 threads per block"});
    e = launch("axpb", d3(1), d3(32, 32, 2), 0, x.p, x.p, 1.f, 0.f, 8);
    check_error(e, "32x32x2 threads per block is refused", {"kernel 'axpb'", "2048 threads per block"});
    e = launch("no_such_kernel", d3(1), d3(1), 0, x.p);
    check_error(e, "an unknown kernel is refused", {"no kernel named 'no_such_kernel'"});
}

void test_atomics() {
    DevBuf<unsigned> c(1);
    c[0] = 0;
    std::string e = launch("atomic_count", d3(1000), d3(256), 0, c.p);
    check(e.empty() && c[0] == 256000u, fmt("atomicAdd of 1u from 1000 blocks x 256 threads = %u", c[0]), e);

    const int n = 50000;
    DevBuf<float> x(n), mx(1), sum(1);
    double ref = 0;
    float ref_max = -INFINITY;
    for (int i = 0; i < n; ++i) {
        x[i] = static_cast<float>((i * 7001) % 1999 - 999);
        ref += x[i];
        ref_max = std::max(ref_max, x[i]);
    }
    mx[0] = -INFINITY;
    sum[0] = 0.f;
    e = launch("atomic_float_ops", d3((n + 255) / 256), d3(256), 0, x.p, n, mx.p, sum.p);
    check(e.empty() && mx[0] == ref_max, "atomicCAS-based float max", e);
    check(e.empty() && sum[0] == ref, fmt("atomicAdd(float) of integer values is exact (%.1f)", double(sum[0])), e);

    DevBuf<int> imax(1), imin(1);
    DevBuf<unsigned> umax(1), exch(1), wins(1);
    DevBuf<double> dsum(1);
    DevBuf<unsigned long long> slot(1);
    imax[0] = INT32_MIN;
    imin[0] = INT32_MAX;
    umax[0] = 0;
    exch[0] = 0;
    wins[0] = 0;
    dsum[0] = 0;
    slot[0] = 0;
    const int blocks = 40, threads = 256, total = blocks * threads;
    e = launch("atomic_misc", d3(blocks), d3(threads), 0, imax.p, imin.p, umax.p, dsum.p, slot.p, exch.p, wins.p);
    check(e.empty() && imax[0] == total - 1 - 5000 && imin[0] == 3 - (total - 1) && umax[0] == unsigned(total - 1) * 3u &&
              dsum[0] == 0.5 * total && wins[0] == 1 && slot[0] >= 1 && slot[0] <= unsigned(total) && exch[0] == 7u,
          "atomicMax/Min (int, unsigned), atomicAdd(double), atomicCAS(u64), atomicExch", e);

    DevBuf<int> bad(1);
    bad[0] = 0;
    e = launch("smem_private", d3(64), d3(128), 0, bad.p);
    check(e.empty() && bad[0] == 0, "__shared__ memory is private to each block while blocks run in parallel", e);
}

// --- half / bfloat16 --------------------------------------------------------------------------------

float f_of(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
uint32_t bits_of(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

// Reference float -> half, round to nearest even: GCC's own _Float16 conversion (libgcc), an
// implementation independent of the emulator's.
uint16_t ref_half_rn(float f) {
    volatile float v = f;
    const _Float16 h = static_cast<_Float16>(v);
    uint16_t u;
    std::memcpy(&u, &h, 2);
    return u;
}

// Reference float -> half with directed rounding (libgcc's conversion ignores the rounding mode):
// binary search for the largest half magnitude not above |f|, in a table of all finite halves.
uint16_t ref_half_directed(float f, int mode) {
    static std::vector<double> mag = [] {
        std::vector<double> m(0x7c00);
        for (int i = 0; i < 0x7c00; ++i) {
            const int e = i >> 10, frac = i & 0x3ff;
            m[i] = e == 0 ? std::ldexp(frac, -24) : std::ldexp(1024 + frac, e - 25);
        }
        return m;
    }();
    const bool neg = std::signbit(f);
    const double a = std::fabs(double(f));
    const uint16_t sign = neg ? 0x8000 : 0;
    if (std::isinf(f)) return sign | 0x7c00;
    const int below = int(std::upper_bound(mag.begin(), mag.end(), a) - mag.begin()) - 1; // mag[below] <= a
    const bool exact = mag[below] == a;
    const bool away = !exact && ((mode == FE_UPWARD && !neg) || (mode == FE_DOWNWARD && neg)); // away from zero
    return static_cast<uint16_t>(sign | (away ? below + 1 : below)); // below + 1 == 0x7c00 is infinity
}

uint16_t ref_half(float f, int mode) { return mode == FE_TONEAREST ? ref_half_rn(f) : ref_half_directed(f, mode); }

// Reference float -> bfloat16, round to nearest even, by comparing the distances to the two
// neighbouring bfloat16 values (exact in double) rather than by the emulator's bit trick. Past the
// largest bfloat16 the upper neighbour is 2^128, which stands for infinity.
uint16_t ref_bf16(float f) {
    if (std::isnan(f)) return 0x7fff;
    const uint32_t x = bits_of(f);
    if (std::isinf(f)) return static_cast<uint16_t>(x >> 16);
    const uint32_t lo = x & 0xffff0000u, hi = lo + 0x10000u; // hi: one step away from zero
    const double vlo = f_of(lo);
    const double vhi = std::isinf(f_of(hi)) ? std::copysign(std::ldexp(1.0, 128), f) : double(f_of(hi));
    const double dlo = std::fabs(double(f) - vlo), dhi = std::fabs(vhi - double(f));
    if (dlo < dhi) return static_cast<uint16_t>(lo >> 16);
    if (dhi < dlo) return static_cast<uint16_t>(hi >> 16);
    return static_cast<uint16_t>(((lo >> 16) & 1u) ? hi >> 16 : lo >> 16);
}

void test_half_conversions() {
    // Hand-derived expectations (IEEE binary16: bias 15, 10 fraction bits; bfloat16: float's top 16 bits).
    // Columns: float bits; half RN, RZ, RD, RU; bf16 RN, RZ.
    struct Case {
        uint32_t f;
        uint16_t rn, rz, rd, ru, brn, brz;
        const char *why;
    };
    const Case cases[] = {
        {0x3f800000, 0x3c00, 0x3c00, 0x3c00, 0x3c00, 0x3f80, 0x3f80, "1.0 is exact"},
        {0x3dcccccd, 0x2e66, 0x2e66, 0x2e66, 0x2e67, 0x3dcd, 0x3dcc, "0.1: half drops 0xccd < half-ulp 0x1000; bf16 drops 0xcccd > 0x8000"},
        {0x3f801000, 0x3c00, 0x3c00, 0x3c00, 0x3c01, 0x3f80, 0x3f80, "1+2^-11: tie, half keeps even 0x3c00"},
        {0x3f803000, 0x3c02, 0x3c01, 0x3c01, 0x3c02, 0x3f80, 0x3f80, "1+3*2^-11: tie between 0x3c01 (odd) and 0x3c02"},
        {0x3f808000, 0x3c04, 0x3c04, 0x3c04, 0x3c04, 0x3f80, 0x3f80, "1+2^-8: bf16 tie, keeps even 0x3f80"},
        {0x3f818000, 0x3c0c, 0x3c0c, 0x3c0c, 0x3c0c, 0x3f82, 0x3f81, "1+3*2^-8: bf16 tie between 0x3f81 (odd) and 0x3f82"},
        {0x477fe000, 0x7bff, 0x7bff, 0x7bff, 0x7bff, 0x4780, 0x477f, "65504, the largest half"},
        {0x477fefff, 0x7bff, 0x7bff, 0x7bff, 0x7c00, 0x4780, 0x477f, "just below 65520 rounds down to 65504"},
        {0x477ff000, 0x7c00, 0x7bff, 0x7bff, 0x7c00, 0x4780, 0x477f, "65520: tie, 65504 is odd, so +inf"},
        {0xc77ff000, 0xfc00, 0xfbff, 0xfc00, 0xfbff, 0xc780, 0xc77f, "-65520: -inf; RZ/RU keep -65504"},
        {0x49742400, 0x7c00, 0x7bff, 0x7bff, 0x7c00, 0x4974, 0x4974, "1e6 overflows half"},
        {0x7f7fffff, 0x7c00, 0x7bff, 0x7bff, 0x7c00, 0x7f80, 0x7f7f, "FLT_MAX: bf16 RN carries into +inf"},
        {0x7f7f8000, 0x7c00, 0x7bff, 0x7bff, 0x7c00, 0x7f80, 0x7f7f, "bf16 tie at the top, 0x7f7f odd, so +inf"},
        {0x7f800000, 0x7c00, 0x7c00, 0x7c00, 0x7c00, 0x7f80, 0x7f80, "+inf"},
        {0xff800000, 0xfc00, 0xfc00, 0xfc00, 0xfc00, 0xff80, 0xff80, "-inf"},
        {0x7fc00000, 0x7fff, 0x7fff, 0x7fff, 0x7fff, 0x7fff, 0x7fff, "NaN becomes the canonical 0x7fff"},
        {0xffc00001, 0x7fff, 0x7fff, 0x7fff, 0x7fff, 0x7fff, 0x7fff, "negative NaN with payload: canonical too"},
        {0x80000000, 0x8000, 0x8000, 0x8000, 0x8000, 0x8000, 0x8000, "-0"},
        {0x33800000, 0x0001, 0x0001, 0x0001, 0x0001, 0x3380, 0x3380, "2^-24, the smallest half subnormal"},
        {0x33000000, 0x0000, 0x0000, 0x0000, 0x0001, 0x3300, 0x3300, "2^-25: tie between 0 and 2^-24, 0 is even"},
        {0x33000001, 0x0001, 0x0000, 0x0000, 0x0001, 0x3300, 0x3300, "just above 2^-25 rounds up"},
        {0x33c00000, 0x0002, 0x0001, 0x0001, 0x0002, 0x33c0, 0x33c0, "1.5*2^-24: tie, 2 is even"},
        {0x34200000, 0x0002, 0x0002, 0x0002, 0x0003, 0x3420, 0x3420, "2.5*2^-24: tie, 2 is even"},
        {0x387fe000, 0x0400, 0x03ff, 0x03ff, 0x0400, 0x3880, 0x387f, "2^-14 - 2^-25: tie, rounds up into the smallest normal"},
        {0xb2800000, 0x8000, 0x8000, 0x8001, 0x8000, 0xb280, 0xb280, "-2^-26: -0, or -2^-24 rounding down"},
        {0x000116c2, 0x0000, 0x0000, 0x0000, 0x0001, 0x0001, 0x0001, "float subnormal 1e-40: bf16 keeps it"},
    };
    const int nc = sizeof cases / sizeof cases[0];
    DevBuf<float> x(nc);
    DevBuf<uint16_t> hrn(nc), hrz(nc), hrd(nc), hru(nc), brn(nc), brz(nc);
    for (int i = 0; i < nc; ++i) x[i] = f_of(cases[i].f);
    std::string e = launch("convert16", d3(1), d3(64), 0, x.p, hrn.p, hrz.p, hrd.p, hru.p, brn.p, brz.p, nc);
    int bad = e.empty() ? 0 : nc;
    for (int i = 0; e.empty() && i < nc; ++i) {
        const Case &c = cases[i];
        if (hrn[i] != c.rn || hrz[i] != c.rz || hrd[i] != c.rd || hru[i] != c.ru || brn[i] != c.brn || brz[i] != c.brz) {
            ++bad;
            printf("     %08x (%s): got half %04x %04x %04x %04x bf16 %04x %04x\n", c.f, c.why, hrn[i], hrz[i], hrd[i],
                   hru[i], brn[i], brz[i]);
        }
    }
    check(bad == 0, fmt("half/bf16 conversions of %d hand-checked tricky values (ties, subnormals, NaN, inf, overflow)", nc), e);

    // Independent cross-checks over many values: random bit patterns, and around every rounding
    // position of every exponent (just below, at and above the halfway point, odd and even kept bit).
    std::vector<uint32_t> vals;
    std::mt19937 rng(7);
    for (int i = 0; i < 400000; ++i) vals.push_back(rng());
    for (uint32_t sign = 0; sign < 2; ++sign)
        for (uint32_t e8 = 0; e8 < 256; ++e8)
            for (uint32_t p = 1; p <= 23; ++p)
                for (uint32_t kept = 0; kept < 4; ++kept)
                    for (int d = -1; d <= 1; ++d) {
                        const uint32_t half = 1u << (p - 1);
                        const uint32_t mant = (((rng() >> p) << p) | (uint32_t(kept & 1) << p) | (half + d)) & 0x7fffffu;
                        vals.push_back(sign << 31 | e8 << 23 | mant);
                    }
    const int m = static_cast<int>(vals.size());
    DevBuf<float> xs(m);
    DevBuf<uint16_t> a(m), b(m), c(m), dd(m), f(m), g(m);
    for (int i = 0; i < m; ++i) xs[i] = f_of(vals[i]);
    e = launch("convert16", d3((m + 255) / 256), d3(256), 0, xs.p, a.p, b.p, c.p, dd.p, f.p, g.p, m);
    int bad_h = 0, bad_b = 0;
    for (int i = 0; e.empty() && i < m; ++i) {
        const float v = xs[i];
        if (!std::isnan(v)) {
            if (a[i] != ref_half(v, FE_TONEAREST) || b[i] != ref_half(v, FE_TOWARDZERO) ||
                c[i] != ref_half(v, FE_DOWNWARD) || dd[i] != ref_half(v, FE_UPWARD)) {
                if (bad_h++ < 5)
                    printf("     half %08x: got %04x %04x %04x %04x want %04x %04x %04x %04x\n", vals[i], a[i], b[i], c[i],
                           dd[i], ref_half(v, FE_TONEAREST), ref_half(v, FE_TOWARDZERO), ref_half(v, FE_DOWNWARD),
                           ref_half(v, FE_UPWARD));
            }
        }
        if (f[i] != ref_bf16(v) || (!std::isnan(v) && g[i] != (vals[i] >> 16))) {
            if (bad_b++ < 5) printf("     bf16 %08x: got %04x %04x want %04x\n", vals[i], f[i], g[i], ref_bf16(v));
        }
    }
    check(e.empty() && bad_h == 0,
          fmt("float->half agrees with GCC's _Float16 (RN) and a table search (RZ, RD, RU) on %d values", m), e);
    check(e.empty() && bad_b == 0, fmt("float->bf16 (RN, RZ) agrees with an independent reference on %d values", m), e);

    // Every 16-bit pattern back to float.
    DevBuf<uint16_t> all(65536);
    DevBuf<float> hf(65536), bf(65536);
    for (int i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
    e = launch("widen16", d3(256), d3(256), 0, all.p, hf.p, bf.p, 65536);
    int bad_w = e.empty() ? 0 : 1;
    for (int i = 0; e.empty() && i < 65536; ++i) {
        _Float16 h;
        const uint16_t u = static_cast<uint16_t>(i);
        std::memcpy(&h, &u, 2);
        const float want = static_cast<float>(h);
        const bool ok_h = std::isnan(want) ? bits_of(hf[i]) == 0x7fffffffu : bits_of(hf[i]) == bits_of(want);
        const bool ok_b = bits_of(bf[i]) == uint32_t(i) << 16;
        bad_w += !ok_h || !ok_b;
    }
    check(bad_w == 0, "all 65536 half and bf16 bit patterns widen to float exactly (half NaN -> 0x7fffffff)", e);

    DevBuf<float> out(8);
    e = launch("half_math", d3(1), d3(1), 0, out.p);
    check(e.empty() && out[0] == 3.75f && out[1] == 3.375f && out[2] == 6.f && out[3] == -3.f && out[4] == 5.f &&
              out[5] == 1.25f && out[6] == 43.f && out[7] == 5.f,
          "half/bf16 arithmetic, __half2, float4, math and bit intrinsics, min/max", e);
}

void test_concurrent_launches() {
    auto worker = [](int seed, int *failures) {
        const int n = 256 * 50;
        DevBuf<float> x(n), y(50);
        DevBuf<int> dis(1);
        dis[0] = 0;
        for (int round = 0; round < 20; ++round) {
            for (int i = 0; i < n; ++i) x[i] = static_cast<float>((i + seed + round) % 17);
            const std::string e = launch("block_sum", d3(50), d3(256), 0, x.p, y.p, n, dis.p);
            for (int b = 0; b < 50; ++b) {
                double s = 0;
                for (int t = 0; t < 256; ++t) s += x[b * 256 + t];
                if (!e.empty() || y[b] != s) ++*failures;
            }
        }
    };
    int f1 = 0, f2 = 0;
    std::thread t1(worker, 1, &f1), t2(worker, 2, &f2);
    t1.join();
    t2.join();
    check(f1 == 0 && f2 == 0, "launches from two host threads at once");

    // A test harness runs each test on a new thread: one launch from each of many short-lived threads.
    int bad = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 64; ++i) {
        std::thread t([&bad, i] {
            DevBuf<float> x(256 * 4), y(4);
            DevBuf<int> dis(1);
            for (int k = 0; k < 256 * 4; ++k) x[k] = static_cast<float>((k + i) % 5);
            const std::string e = launch("block_sum", d3(4), d3(256), 0, x.p, y.p, 256 * 4, dis.p);
            for (int b = 0; b < 4; ++b) {
                double s = 0;
                for (int k = 0; k < 256; ++k) s += x[b * 256 + k];
                if (!e.empty() || y[b] != s) ++bad;
            }
        });
        t.join();
    }
    check(bad == 0, fmt("64 short-lived host threads, one launch each (%.1f ms in all)", ms_since(t0)));
}

// The checker (emu_check.cpp): each planted bug is reported with the right message, naming both
// threads and both lines, and the corrected twin runs clean.
void test_checker() {
    emu_set_checks("race,init,async");
    DevBuf<float> x(256), y(256);
    std::vector<float> host(256, 1.0f);
    emu_memcpy(x.p, host.data(), sizeof(float) * host.size()); // (the checker sees uploads, not host stores)

    std::string e = launch("race_missing_barrier", d3(1), d3(64), 0, y.p, 0);
    check_error(e, "checker: a missing barrier is a race",
                {"kernel 'race_missing_barrier' block (0,0,0)", "shared-memory race on byte 0 of __shared__",
                 "thread (1,0,0) reads it at selftest_kernels.cu:", "thread (0,0,0) wrote it at selftest_kernels.cu:",
                 "with no __syncthreads() or __syncwarp() between them"});
    check(launch("race_missing_barrier", d3(1), d3(64), 0, y.p, 1).empty(), "checker: ... and with the barrier, none");

    e = launch("race_reused_buffer", d3(1), d3(64), 0, x.p, y.p, 0);
    check_error(e, "checker: reusing a reduction's scratch without the trailing barrier is a race",
                {"kernel 'race_reused_buffer'", "shared-memory race on byte", "of __shared__ race_reused_buffer::scratch",
                 "it at selftest_kernels.cu:", "with no __syncthreads() between them"});
    e = launch("race_reused_buffer", d3(1), d3(64), 0, x.p, y.p, 1);
    check(e.empty() && y[5] == 192.0f, "checker: ... and with it, none (and the right sum)", e);

    e = launch("uninit_shared_read", d3(1), d3(64), 0, y.p, 0);
    check_error(e, "checker: a read of shared memory no thread wrote",
                {"kernel 'uninit_shared_read'", "uninitialised read", "of __shared__ uninit_shared_read::s at selftest_kernels.cu:",
                 "no thread of this block has written"});
    check(launch("uninit_shared_read", d3(1), d3(64), 0, y.p, 1).empty(), "checker: ... and when all write, none");

    DevBuf<float> never_written(64);
    e = launch("uninit_global_read", d3(1), d3(64), 0, never_written.p, y.p);
    check_error(e, "checker: a read of a device buffer nothing wrote",
                {"kernel 'uninit_global_read'", "uninitialised read", "byte 0 of a 256-byte device buffer",
                 "selftest_kernels.cu:", "nothing has written since it was allocated"});

    e = launch("read_before_cp_async_wait", d3(1), d3(32), 0, x.p, y.p, 0);
    check_error(e, "checker: reading a cp.async destination before its wait",
                {"kernel 'read_before_cp_async_wait'", "thread (0,0,0)", "reads byte 0 of __shared__",
                 "while the cp.async that writes it (issued by thread (0,0,0) at common.cuh:",
                 "called from selftest_kernels.cu:", "is in flight"});
    e = launch("read_before_cp_async_wait", d3(1), d3(32), 0, x.p, y.p, 1);
    check(e.empty() && y[31] == 1.0f, "checker: ... and after the wait, none", e);

    for (int fix : {0, 1}) {
        DevBuf<float> source(4 * 32);
        source.fill(1.0f);
        e = launch("write_cp_async_source", d3(1), d3(32), 0, source.p, y.p, fix);
        if (fix)
            check(e.empty() && y[31] == 1.0f, "checker: ... and a store to it after the wait, none", e);
        else
            check_error(e, "checker: a store to a cp.async's source while the copy is in flight",
                        {"kernel 'write_cp_async_source'", "writes byte 0 of a cp.async's source at selftest_kernels.cu:",
                         "while the copy (issued by thread (0,0,0) at common.cuh:", "is in flight"});
    }

    e = launch("warp_lock_step", d3(1), d3(32), 0, x.p, y.p, 0);
    check_error(e, "checker: a warp reduction assuming lock step is a race",
                {"kernel 'warp_lock_step'", "shared-memory race", "with no __syncthreads() or __syncwarp() between them"});
    e = launch("warp_lock_step", d3(1), d3(32), 0, x.p, y.p, 1);
    check(e.empty() && y[0] == 32.0f, "checker: ... and with __syncwarp(), none (and the right sum)", e);

    e = launch("global_race", d3(1), d3(64), 0, y.p, 0);
    check_error(e, "checker: a global-memory race within a block",
                {"kernel 'global_race'", "global-memory race on byte 0 of a 1024-byte device buffer",
                 "thread (1,0,0) reads it at selftest_kernels.cu:", "thread (0,0,0) wrote it at selftest_kernels.cu:"});
    e = launch("global_race", d3(1), d3(64), 0, y.p, 1);
    check(e.empty() && y[63] == 1.0f, "checker: ... and with the barrier, none", e);

    y.fill(0.0f);
    e = launch("global_write_after_read", d3(1), d3(64), 0, y.p, 0);
    check_error(e, "checker: a global write after another thread's read within a block",
                {"kernel 'global_write_after_read'", "global-memory race on byte 4 of a 1024-byte device buffer",
                 "thread (1,0,0) writes it at selftest_kernels.cu:", "thread (0,0,0) read it at selftest_kernels.cu:",
                 "(write after read)"});
    y.fill(0.0f);
    e = launch("global_write_after_read", d3(1), d3(64), 0, y.p, 1);
    check(e.empty() && y[0] == 1.0f && y[63] == 1.0f, "checker: ... and with the barrier, none", e);

    // Races between blocks: 64 blocks run on the worker threads in parallel, in no fixed order, so the
    // messages are checked for what every order has in common.
    y.fill(0.0f);
    e = launch("block_race", d3(64), d3(32), 0, y.p, 0);
    check_error(e, "checker: one block writes a global byte that other blocks read",
                {"kernel 'block_race'", "global-memory race between blocks on byte 0 of a 1024-byte device buffer",
                 "thread (0,0,0)", "at selftest_kernels", "in this launch", "only atomics may share a byte"});
    check(contains(e, "reads it at") || contains(e, " read it in this launch"),
          "checker: ... the message says a block read it", e);
    e = launch("block_race", d3(64), d3(32), 0, y.p, 1);
    check_error(e, "checker: two blocks write the same global byte",
                {"global-memory race between blocks on byte 0 of a 1024-byte device buffer", "writes it at",
                 " wrote it in this launch"});
    y.fill(0.0f);
    e = launch("block_race", d3(64), d3(32), 0, y.p, 2);
    check(e.empty() && y[0] == 64.0f, "checker: ... and atomic updates from every block, none", e);
    e = launch("block_race", d3(64), d3(32), 0, y.p, 3);
    std::string e2 = launch("block_race", d3(64), d3(32), 0, y.p, 4);
    check(e.empty() && e2.empty() && y[65] == 1.0f && y[128] == 0.0f,
          "checker: ... nor bytes of their own, nor bytes another block wrote in an earlier launch", e + e2);

    // The thread order changes what an unsynchronised kernel computes, with the checker off.
    emu_set_checks("off");
    launch("order_dependent", d3(1), d3(64), 0, y.p);
    const float forward = y[0];
    emu_set_order("reverse");
    launch("order_dependent", d3(1), d3(64), 0, y.p);
    const float reverse = y[0];
    emu_set_order("random:7");
    e = launch("order_dependent", d3(1), d3(64), 0, y.p);
    check(forward == 63.0f && reverse == 0.0f && e.empty(),
          "KILN_EMU_ORDER: reverse order changes the result of an unsynchronised kernel",
          fmt("forward %g, reverse %g", forward, reverse));
    // Interleaving at memory accesses loses increments that whole-thread orders never lose.
    DevBuf<int> count(1);
    std::string orders;
    for (const char *order : {"forward", "reverse", "random:7"}) {
        emu_set_order(order);
        e += launch("lost_update", d3(1), d3(64), 0, count.p);
        orders += fmt(" %s %d", order, count[0]);
        check(count[0] == 64, fmt("KILN_EMU_ORDER=%s: lost_update's threads run whole, one after another", order), e);
    }
    emu_set_order("interleave:7");
    e = launch("lost_update", d3(1), d3(64), 0, count.p);
    const int interleaved = count[0];
    e += launch("lost_update", d3(1), d3(64), 0, count.p);
    check(e.empty() && interleaved < 64 && interleaved > 0 && count[0] == interleaved,
          "KILN_EMU_ORDER=interleave:7: threads switch between a read and a write, losing increments (and the "
          "same ones again: the seed fixes the interleaving)",
          fmt("got %d then %d", interleaved, count[0]));
    emu_set_order("interleave");
    e = launch("lost_update", d3(1), d3(64), 0, count.p);
    check(e.empty() && count[0] < 64, "KILN_EMU_ORDER=interleave (seed 0) loses some too", fmt("got %d", count[0]));
    // Correct kernels stay correct and race-free under interleaving, with every check on.
    emu_set_checks("race,init,async");
    emu_set_order("interleave:11");
    e = launch("race_reused_buffer", d3(1), d3(64), 0, x.p, y.p, 1);
    check(e.empty() && y[5] == 192.0f, "KILN_EMU_ORDER=interleave:11: a reduction with its barriers, right and clean", e);
    e = launch("warp_lock_step", d3(1), d3(32), 0, x.p, y.p, 1);
    check(e.empty() && y[0] == 32.0f, "KILN_EMU_ORDER=interleave:11: the __syncwarp() reduction, right and clean", e);
    e = launch("read_before_cp_async_wait", d3(1), d3(32), 0, x.p, y.p, 1);
    check(e.empty() && y[31] == 1.0f, "KILN_EMU_ORDER=interleave:11: cp.async after its wait, clean", e);
    e = launch("race_missing_barrier", d3(1), d3(64), 0, y.p, 0);
    check(contains(e, "shared-memory race") || contains(e, "uninitialised read"),
          "KILN_EMU_ORDER=interleave:11: the missing barrier is still reported (as a race, or as a read before the "
          "write when the reader runs first)",
          e);
    emu_set_checks("off");
    check(emu_set_order("backwards") == -1 && emu_set_order("interleave:x") == -1 && emu_set_checks("race,speed") == -1,
          "emu_set_order / emu_set_checks refuse a spec they do not know");
    emu_set_order(nullptr);
    emu_set_checks("race,async");
}

// Wall-clock times of three kernels, with the checker set to `checks`.
void timings(const char *checks) {
    emu_set_checks(checks);
    printf("checks: %s\n", checks);
    const int M = 128, N = 96, K = 80;
    DevBuf<float> A(M * K), B(K * N), C(M * N);
    A.fill(0.5f);
    B.fill(0.25f);
    std::vector<double> t;
    for (int r = 0; r < 15; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        launch("sgemm_tiled", d3((N + 15) / 16, (M + 15) / 16), d3(16, 16), 0, A.p, B.p, C.p, M, N, K);
        t.push_back(ms_since(t0));
    }
    std::sort(t.begin(), t.end());
    printf("time sgemm_tiled %dx%dx%d (48 blocks of 256 threads, 10 barriers each): median %.2f ms, min %.2f ms\n", M, N,
           K, t[t.size() / 2], t[0]);

    const int n = 1 << 20;
    DevBuf<float> x(n), y(n);
    x.fill(1.f);
    t.clear();
    for (int r = 0; r < 15; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        launch("axpb", d3(n / 256), d3(256), 0, x.p, y.p, 2.f, 1.f, n);
        t.push_back(ms_since(t0));
    }
    std::sort(t.begin(), t.end());
    printf("time axpb over 1M elements (4096 blocks of 256 threads): median %.2f ms, min %.2f ms\n", t[t.size() / 2], t[0]);

    const int rows = 4096;
    DevBuf<float> xs(rows * 256), ys(rows);
    DevBuf<int> dis(1);
    xs.fill(1.f);
    t.clear();
    for (int r = 0; r < 3; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        launch("block_sum", d3(rows), d3(256), 0, xs.p, ys.p, rows * 256, dis.p);
        t.push_back(ms_since(t0));
    }
    std::sort(t.begin(), t.end());
    printf("time block_sum over %d blocks of 256 threads (2 barriers, 10 shuffles per thread): median %.2f ms\n", rows,
           t[t.size() / 2]);
    emu_set_checks("race,async");
}

} // namespace


// The profiler (emu_check.cpp, "The profiler"): counts of access patterns worked out by hand. Each
// expected value below is derived in its comment from the addresses, not from a run.
emu_profile_counts profile_of(const char *kernel) {
    emu_profile_counts c{};
    if (emu_profile_get(kernel, &c) != 0) c.launches = 0;
    return c;
}

void check_counts(const char *what, unsigned long long got, unsigned long long want) {
    check(got == want, fmt("profiler: %s = %llu", what, want), fmt("got %llu", got));
}

void check_us(const char *what, double got, double want) {
    check(std::fabs(got - want) <= 1e-9 * want, fmt("profiler: %s = %.6g us", what, want), fmt("got %.9g", got));
}

void test_profiler() {
    const int n = 1024; // 4096-byte buffers: page aligned, so every warp's 128 bytes start a sector
    DevBuf<float> x(n), y(n);
    x.fill(1.0f);
    emu_profile_reset();
    check(launch("prof_copy_f32", d3(n / 256), d3(256), 0, x.p, y.p).empty() && profile_of("prof_copy_f32").launches == 0,
          "profiler: off unless asked for");
    emu_set_profile(1);

    // 4 blocks x 8 warps = 32 warps, one load and one store each; 32 lanes x 4 bytes = 128 contiguous
    // bytes = 4 sectors, all used.
    check(launch("prof_copy_f32", d3(n / 256), d3(256), 0, x.p, y.p).empty(), "profiler: prof_copy_f32 runs");
    emu_profile_counts c = profile_of("prof_copy_f32");
    check_counts("unit-stride f32: launches", c.launches, 1);
    check_counts("unit-stride f32: load requests", c.gld_requests, 32);
    check_counts("unit-stride f32: load sectors (4 per request)", c.gld_sectors, 32 * 4);
    check_counts("unit-stride f32: load bytes used", c.gld_bytes, n * 4);
    check_counts("unit-stride f32: store requests", c.gst_requests, 32);
    check_counts("unit-stride f32: store sectors (4 per request)", c.gst_sectors, 32 * 4);
    check_counts("unit-stride f32: no shared memory", c.lds_requests + c.sts_requests, 0);
    // Footprint: the 4096 bytes of x and of y, 128 sectors each. Lower bounds: 8192 bytes over 3.35e12
    // bytes/s (H100) is 2.44537e-3 us, over 4.8e12 (H200) 1.70667e-3 us; no mma.
    check_counts("unit-stride f32: load footprint sectors", c.gld_footprint_sectors, 128);
    check_counts("unit-stride f32: store footprint sectors", c.gst_footprint_sectors, 128);
    check_us("unit-stride f32: H100 lower bound", emu_profile_lower_bound_us(&c, "H100"), 8192 / 3.35e12 * 1e6);
    check_us("unit-stride f32: H200 lower bound", emu_profile_lower_bound_us(&c, "H200"), 8192 / 4.8e12 * 1e6);
    check(emu_profile_lower_bound_us(&c, "A100") == -1, "profiler: no lower bound for a GPU without figures");

    // float4: 256 elements in 1 block = 8 warps; 32 lanes x 16 bytes = 512 contiguous bytes = 16 sectors.
    check(launch("prof_copy_f32x4", d3(1), d3(256), 0, x.p, y.p).empty(), "profiler: prof_copy_f32x4 runs");
    c = profile_of("prof_copy_f32x4");
    check_counts("float4 unit-stride: load requests", c.gld_requests, 8);
    check_counts("float4 unit-stride: load sectors (16 per request)", c.gld_sectors, 8 * 16);
    check_counts("float4 unit-stride: store sectors (16 per request)", c.gst_sectors, 8 * 16);

    // Stride 2: a warp's loads span 256 bytes = 8 sectors, of which 128 bytes are used. 256 threads =
    // 8 warps (reading x[0..510]).
    check(launch("prof_strided_load", d3(1), d3(256), 0, x.p, y.p, 2).empty(), "profiler: prof_strided_load runs");
    c = profile_of("prof_strided_load");
    check_counts("stride-2 f32: load requests", c.gld_requests, 8);
    check_counts("stride-2 f32: load sectors (8 per request)", c.gld_sectors, 8 * 8);
    check_counts("stride-2 f32: load bytes used (half of the sectors)", c.gld_bytes, 8 * 128);

    // One load instruction run 3 times by each of 2 warps: 6 requests of 4 sectors; one store per warp.
    check(launch("prof_loop_sum", d3(1), d3(64), 0, x.p, y.p, 3).empty(), "profiler: prof_loop_sum runs");
    c = profile_of("prof_loop_sum");
    check_counts("loop: load requests (one per warp and iteration)", c.gld_requests, 6);
    check_counts("loop: load sectors", c.gld_sectors, 6 * 4);
    check_counts("loop: store requests", c.gst_requests, 2);

    // Shared f32 at stride s, one warp: word t*s is in bank (t*s) % 32.
    const struct {
        int stride;
        unsigned long long wavefronts;
        const char *what;
    } strides[] = {{32, 32, "stride-32 f32 (bank 0 for every lane: 32-way conflict)"},
                   {33, 1, "stride-33 f32 (a padded tile's column: 32 banks)"},
                   {1, 1, "unit-stride f32"}};
    for (const auto &s : strides) {
        emu_profile_reset();
        check(launch("prof_smem_stride", d3(1), d3(32), 0, y.p, s.stride).empty(), "profiler: prof_smem_stride runs");
        c = profile_of("prof_smem_stride");
        check_counts(fmt("%s: shared store requests", s.what).c_str(), c.sts_requests, 1);
        check_counts(fmt("%s: shared store wavefronts", s.what).c_str(), c.sts_wavefronts, s.wavefronts);
        check_counts(fmt("%s: shared load wavefronts", s.what).c_str(), c.lds_wavefronts, s.wavefronts);
        check_counts(fmt("%s: ideal wavefronts", s.what).c_str(), c.lds_ideal_wavefronts, 1);
    }

    // Shared float4, one warp, 4 quarter-warp phases of 8 lanes x 4 words. Stride 1: a phase's 32 words
    // are consecutive, one per bank: 4 wavefronts. Stride 2 (8-float steps): a phase touches words
    // 8t .. 8t+3 for t = 0..7, i.e. banks 0-3, 8-11, 16-19, 24-27 each twice: 2 wavefronts per phase.
    for (int stride : {1, 2}) {
        emu_profile_reset();
        check(launch("prof_smem_f32x4", d3(1), d3(32), 0, x.p, y.p, stride).empty(), "profiler: prof_smem_f32x4 runs");
        c = profile_of("prof_smem_f32x4");
        check_counts(fmt("float4 shared stride %d: load requests", stride).c_str(), c.lds_requests, 1);
        check_counts(fmt("float4 shared stride %d: load wavefronts", stride).c_str(), c.lds_wavefronts, 4 * stride);
        check_counts(fmt("float4 shared stride %d: store wavefronts", stride).c_str(), c.sts_wavefronts, 4 * stride);
        check_counts(fmt("float4 shared stride %d: ideal wavefronts", stride).c_str(), c.sts_ideal_wavefronts, 4);
    }
    // cp.async of 16 bytes (prof_cp_async): its landing is a 16-byte shared store, in quarter-warp
    // phases like any other (4 wavefronts at stride 1, 8 at stride 2, 32 at stride 32, ideal 4), and
    // its source a global load (one request of 512 contiguous bytes: 16 sectors; none when src_bytes
    // is 0: the GPU then reads nothing and zero-fills); the same whether it lands at the wait (the
    // `async` check) or when issued (checks off).
    for (const char *checks : {"race,async", "off"})
        for (int stride : {1, 2, 32})
            for (unsigned src_bytes : {16u, 0u}) {
                emu_set_checks(checks);
                emu_profile_reset();
                const std::string what = fmt("cp.async stride %d, src_bytes %u, checks %s", stride, src_bytes, checks);
                check(launch("prof_cp_async", d3(1), d3(32), 0, x.p, y.p, stride, src_bytes).empty() &&
                          y[0] == (src_bytes ? 1.0f : 0.0f),
                      fmt("profiler: %s runs", what.c_str()).c_str());
                c = profile_of("prof_cp_async");
                check_counts(fmt("%s: shared store requests", what.c_str()).c_str(), c.sts_requests, 1);
                check_counts(fmt("%s: shared store wavefronts", what.c_str()).c_str(), c.sts_wavefronts,
                             stride == 1 ? 4 : stride == 2 ? 8 : 32);
                check_counts(fmt("%s: ideal wavefronts", what.c_str()).c_str(), c.sts_ideal_wavefronts, 4);
                check_counts(fmt("%s: global load requests", what.c_str()).c_str(), c.gld_requests, src_bytes ? 1 : 0);
                check_counts(fmt("%s: global load sectors", what.c_str()).c_str(), c.gld_sectors, src_bytes ? 16 : 0);
                check_counts(fmt("%s: global load bytes used", what.c_str()).c_str(), c.gld_bytes, src_bytes ? 512 : 0);
            }
    emu_set_checks("race,async");
    // KilnPack<float, 4> copied in and out as kiln_map1 does: 8 warps, one 16-byte access per lane each
    // way, so one request of 512 contiguous bytes (16 sectors, all used) per warp and direction.
    emu_profile_reset();
    check(launch("prof_pack_f32x4", d3(1), d3(256), 0, x.p, y.p).empty(), "profiler: prof_pack_f32x4 runs");
    c = profile_of("prof_pack_f32x4");
    check_counts("KilnPack<float, 4>: load requests (one per warp)", c.gld_requests, 8);
    check_counts("KilnPack<float, 4>: load sectors (16 per request)", c.gld_sectors, 8 * 16);
    check_counts("KilnPack<float, 4>: load bytes used (all)", c.gld_bytes, 8 * 512);
    check_counts("KilnPack<float, 4>: store requests (one per warp)", c.gst_requests, 8);
    check_counts("KilnPack<float, 4>: store bytes used (all)", c.gst_bytes, 8 * 512);

    // ldmatrix .x4 from one warp: 4 phases (one per 8x8 matrix of 8 rows x 16 bytes), each 1 wavefront
    // when its rows cover the 32 banks once, 8 when they all fall in the same 4 banks; one mma (16 ones
    // times 16 ones per output element: 16).
    const struct {
        int stride;
        unsigned long long wavefronts;
        const char *what;
    } rows[] = {{8, 4, "dense rows"}, {64, 32, "128-byte rows (8-way conflict)"}, {72, 4, "rows padded by 16 bytes"}};
    for (const auto &r : rows) {
        emu_profile_reset();
        const std::string e = launch("prof_ldmatrix", d3(1), d3(32), 0, y.p, r.stride);
        check(e.empty() && y[0] == 16.0f, "profiler: prof_ldmatrix runs", e);
        c = profile_of("prof_ldmatrix");
        check_counts(fmt("ldmatrix.x4, %s: requests", r.what).c_str(), c.ldsm_requests, 1);
        check_counts(fmt("ldmatrix.x4, %s: wavefronts", r.what).c_str(), c.ldsm_wavefronts, r.wavefronts);
        check_counts(fmt("ldmatrix.x4, %s: ideal wavefronts", r.what).c_str(), c.ldsm_ideal_wavefronts, 4);
        check_counts(fmt("ldmatrix.x4, %s: not counted as shared loads", r.what).c_str(), c.lds_requests, 0);
        check_counts("mma.m16n8k16 instructions (one warp, one mma)", c.mma, 1);
    }

    // Traffic against footprint: sgemm_tiled with M = 48, N = 32, K = 40 runs 2 x 3 blocks of 16 x 16
    // threads; A's rows (160 bytes) and B's (128) start sectors. Each block loads a 16-row panel of A
    // (per row two whole 16-float tiles of 2 sectors and a last of 8 floats, 1 sector: 80) and a
    // 40-row panel of B (2 sectors per row: 80), so the loads move 6 x 160 = 960 sectors, while A and
    // B are 7680 + 5120 bytes = 400 distinct sectors. C (6144 bytes, 192 sectors) is stored once.
    {
        const int M = 48, N = 32, K = 40;
        DevBuf<float> A(M * K), B(K * N), C(M * N);
        A.fill(1.0f);
        B.fill(1.0f);
        emu_profile_reset();
        check(launch("sgemm_tiled", d3(N / 16, M / 16), d3(16, 16), 0, A.p, B.p, C.p, M, N, K).empty() && C[0] == K,
              "profiler: sgemm_tiled runs");
        c = profile_of("sgemm_tiled");
        check_counts("sgemm_tiled: load sectors moved", c.gld_sectors, 960);
        check_counts("sgemm_tiled: load footprint sectors (A and B once)", c.gld_footprint_sectors, 400);
        check_counts("sgemm_tiled: store sectors moved", c.gst_sectors, 192);
        check_counts("sgemm_tiled: store footprint sectors", c.gst_footprint_sectors, 192);
    }

    // The bound is the longer of the two: 10^6 mma are 4.096e9 FLOPs, 4.13988 us at 989.4e12 FLOP/s on
    // either GPU, above 1000 sectors (32000 bytes: 9.55e-3 us on an H100); 10^6 sectors (3.2e7 bytes)
    // take 9.55224 us on an H100 and 6.66667 us on an H200, above the FLOPs.
    emu_profile_counts synthetic{};
    synthetic.mma = 1000000;
    synthetic.gld_footprint_sectors = 1000;
    check_us("10^6 mma: H100 lower bound", emu_profile_lower_bound_us(&synthetic, "H100"), 4.096e9 / 989.4e12 * 1e6);
    check_us("10^6 mma: H200 lower bound", emu_profile_lower_bound_us(&synthetic, "H200"), 4.096e9 / 989.4e12 * 1e6);
    synthetic.gld_footprint_sectors = 600000;
    synthetic.gst_footprint_sectors = 400000;
    check_us("10^6 sectors: H100 lower bound", emu_profile_lower_bound_us(&synthetic, "H100"), 3.2e7 / 3.35e12 * 1e6);
    check_us("10^6 sectors: H200 lower bound", emu_profile_lower_bound_us(&synthetic, "H200"), 3.2e7 / 4.8e12 * 1e6);
    // The integer mma.m16n8k32 (8192 operations each) at the dense INT8 peak, 1978.9e12 op/s, adds its time
    // to the 16-bit mma's: 3 x 10^6 of each take 12.42 + 12.42 us, above the 10^6 sectors' 9.55 us.
    synthetic.mma = 3000000;
    synthetic.mma_s8 = 3000000;
    check_us("3 x 10^6 mma and mma.s8: H100 lower bound", emu_profile_lower_bound_us(&synthetic, "H100"),
             (3 * 4.096e9 / 989.4e12 + 3 * 8.192e9 / 1978.9e12) * 1e6);
    emu_set_profile(0);
    emu_profile_reset();
}

int main() {
    printf("emulator self-test, %u worker threads\n", emu_num_workers());
    // The tests below write device buffers directly from the host, which the checker's init shadow
    // cannot see (kiln uploads with emu_memcpy); test_checker turns `init` on for itself.
    emu_set_checks("race,async");
    test_sgemm(127, 93, 81);
    test_sgemm(128, 96, 80);
    test_sgemm(1, 17, 3);
    test_reductions();
    test_shuffle_widths();
    test_votes();
    test_dynamic_smem();
    test_index3d();
    test_barrier_errors();
    test_warp_errors();
    test_memory_errors();
    test_poison();
    test_launch_limits();
    test_atomics();
    test_half_conversions();
    test_concurrent_launches();
    test_checker();
    test_profiler();
    timings("off");
    timings("race,init,async");
    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}
