/*
 * emu_api.h — the host-side C API of kiln's CUDA emulator.
 *
 * This is the whole surface the host (Rust through FFI, or the C++ self-test) uses. It mirrors the
 * driver calls kiln makes on a real GPU, so the same launch wrappers drive both executors:
 *
 *   cuMemAlloc / cuMemFree / cuMemcpy* / cuMemsetD8  ->  emu_malloc / emu_free / emu_memcpy / emu_memset
 *   cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE)     ->  emu_func_set_max_dynamic_smem
 *   cuLaunchKernel(f, grid, block, smem, 0, params) ->  emu_launch(name, grid, block, smem, params, ...)
 *
 * Device memory is host memory: a pointer from emu_malloc can be read and written by the host directly.
 * Every call is thread-safe; launches from several host threads run concurrently.
 */
#ifndef KILN_EMU_API_H
#define KILN_EMU_API_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    unsigned x, y, z;
} emu_dim3;

/* Calls the kernel for the current emulated thread with its parameters unpacked from `args`, where
 * args[i] points at the i-th parameter's value, exactly like cuLaunchKernel's kernelParams.
 * EMU_KERNEL(name) in emu.h generates one (named emu_thunk_<name>) per kernel. */
typedef void (*emu_thunk)(void **args);

/* Registers a kernel under its CUDA name. Returns 0 (also when this same thunk is already registered
 * under that name), or -1 if the name is invalid or taken by another thunk. EMU_KERNEL(name) calls this
 * from a static initializer; a host that links the kernels from a static archive without
 * --whole-archive can call it itself with the emu_thunk_<name> symbols instead. */
int emu_register(const char *name, emu_thunk thunk);

/* Runs `name` over the grid, like cuLaunchKernel followed by a synchronize. Returns 0 on success;
 * otherwise a nonzero code and a NUL-terminated message in err[0..err_len) naming the kernel and, where
 * it applies, the block, the threads and the address involved. Errors: unknown kernel, a launch shape
 * or shared-memory request over the device limits, a __syncthreads() or warp collective that part of a
 * block (or warp) can never reach, a bad intrinsic argument, an out-of-bounds access hitting a guard
 * page, a fiber stack overflow, a failed assert or __trap(). The process is never aborted. */
int emu_launch(const char *name, emu_dim3 grid, emu_dim3 block, size_t dyn_smem_bytes, void **args,
               char *err, size_t err_len);

/* The per-kernel dynamic shared memory limit, as cuFuncSetAttribute(
 * CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES): launches asking for more than 48 KiB fail unless
 * this was raised first, as on the GPU. Returns -1 for an unknown kernel or bytes over the device
 * limit (EMU_MAX_DYNAMIC_SMEM_BYTES, 227 KiB as on sm_90). */
int emu_func_set_max_dynamic_smem(const char *name, size_t bytes);

#define EMU_DEFAULT_DYNAMIC_SMEM_BYTES (48u * 1024u)
#define EMU_MAX_DYNAMIC_SMEM_BYTES (227u * 1024u)
#define EMU_MAX_THREADS_PER_BLOCK 1024u

/* Emulated device memory. A fresh buffer is filled with 0xFF bytes (a NaN in every float type), and
 * placed so that its last byte is followed directly by an inaccessible guard page (a page before it is
 * inaccessible too): a kernel reading or writing past the end faults and the launch fails with a
 * message such as "out of bounds read at byte offset 4100 of a 4096-byte buffer (4 bytes past its end)".
 * The start is aligned to the largest power of two dividing `bytes` (a page at most), not to cudaMalloc's
 * 256 bytes, so that the end can abut the guard page exactly. Returns NULL when out of memory. */
void *emu_malloc(size_t bytes);
/* Frees a buffer from emu_malloc (NULL is allowed). Freed memory stays inaccessible for a while, so
 * a use after free faults too. Returns 0, or -1 if ptr is not a live emu_malloc buffer. */
int emu_free(void *ptr);
/* Plain copies and fills; any pointer that lies inside an emulated buffer must have `bytes` of room
 * left in it. Return 0, or -1 (and do nothing) when a range runs past a buffer's end. */
int emu_memcpy(void *dst, const void *src, size_t bytes);
int emu_memset(void *dst, int byte_value, size_t bytes);
/* 1 if [p, p + bytes) lies inside one live emu_malloc buffer, else 0 (a wild, freed or host address). */
int emu_is_live_range(const void *p, size_t bytes);

/* The number of CPU threads that run blocks (the launching thread plus helpers). Defaults to
 * std::thread::hardware_concurrency(), or what emu_set_num_workers asked for. */
unsigned emu_num_workers(void);
/* Sets the number of workers (0: the default); effective only before the first launch or
 * emu_num_workers call. kiln calls it with KILN_EMU_THREADS, checked by src/env.rs. */
void emu_set_num_workers(unsigned n);

/* The checker (docs/emulator.md, "The checker"): `spec` is a comma-separated subset of race, init,
 * async, or "off" (none), or NULL to go back to KILN_EMU_CHECK (all three when unset). Takes effect at
 * the next launch. Returns 0, or -1 for a spec it does not understand (nothing changes). */
int emu_set_checks(const char *spec);
/* The order in which the threads of a block start and resume between synchronisation points:
 * "forward" (thread order, the default), "reverse", "random" or "random:SEED", "interleave" or
 * "interleave:SEED" (random, and threads also switch at memory accesses), or NULL to go back to
 * KILN_EMU_ORDER. A correct kernel computes the same result in every order. Returns 0 or -1. */
int emu_set_order(const char *spec);

/* The profiler (docs/emulator.md, "The profiler"): memory requests, sectors and bank conflicts counted
 * per kernel from the emulated execution. On when KILN_EMU_PROFILE=1 unless emu_set_profile says
 * otherwise (1 on, 0 off, -1 back to the variable); takes effect at the next launch. */
void emu_set_profile(int on);
/* The counts of every launch of one kernel since the start or the last emu_profile_reset. */
typedef struct {
    unsigned long long launches;
    /* global memory (device buffers), loads and stores: warp-level requests, 32-byte sectors they
     * touch, and the distinct bytes the lanes asked for (the ideal is bytes / 32 sectors) */
    unsigned long long gld_requests, gld_sectors, gld_bytes;
    unsigned long long gst_requests, gst_sectors, gst_bytes;
    /* the footprint: per launch, the distinct 32-byte sectors its loads and its stores touch (summed
     * over launches), what must cross between HBM and the chip when no cache holds them beforehand */
    unsigned long long gld_footprint_sectors, gst_footprint_sectors;
    /* shared memory, loads and stores: warp-level requests and wavefronts (passes through the 32
     * banks); a request without bank conflicts takes one wavefront per phase (see the docs) */
    unsigned long long lds_requests, lds_wavefronts, lds_ideal_wavefronts;
    unsigned long long sts_requests, sts_wavefronts, sts_ideal_wavefronts;
    /* ldmatrix (not in the shared loads above): warp-level instructions and wavefronts, each 8x8
     * matrix (8 rows of 16 bytes) one phase; and tensor-core mma.m16n8k16 instructions (per warp;
     * 2 * 16 * 8 * 16 = 4096 FLOPs each) */
    unsigned long long ldsm_requests, ldsm_wavefronts, ldsm_ideal_wavefronts;
    unsigned long long mma;
    /* integer tensor-core mma.m16n8k32 instructions on signed bytes (per warp; 2 * 16 * 8 * 32 = 8192
     * integer operations each) */
    unsigned long long mma_s8;
} emu_profile_counts;
/* Fills `out` for `kernel`; returns 0, or -1 if it has no counts. */
int emu_profile_get(const char *kernel, emu_profile_counts *out);
void emu_profile_reset(void);
/* The least time, in microseconds, in which `gpu` ("H100" or "H200": the SXM parts, figures from
 * their datasheets, see emu_check.cpp) could run the launches counted in `c`: their footprint over
 * its HBM bandwidth or their tensor-core work (FLOPs over its dense BF16 tensor peak plus integer
 * operations over its dense INT8 peak), whichever is longer.
 * A bound from datasheet figures, not a measurement. Returns -1 for any other `gpu`. */
double emu_profile_lower_bound_us(const emu_profile_counts *c, const char *gpu);
/* Prints the table of every profiled kernel to stderr and, if KILN_EMU_PROFILE_JSON names a file,
 * writes the counts there as JSON. Runs at process exit when the profiler was used. */
void emu_profile_report(void);

#ifdef __cplusplus
}
#endif

#endif /* KILN_EMU_API_H */
