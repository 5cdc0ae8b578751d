// emu_internal.h — what emu_runtime.cpp needs from emu_memory.cpp. Not for kernels or the host.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace emu {

// The system page size (the granule of guard pages).
size_t page_size();

// Rounds n up to a multiple of `to` (a power of two).
inline size_t round_up(size_t n, size_t to) { return (n + to - 1) & ~(to - 1); }

// Describes `addr`, a faulting address, relative to the emu_malloc buffers: "out of bounds read at byte
// offset 4100 of a 4096-byte buffer (4 bytes past its end)", "... bytes before the start ...", "use after
// free ...". `access` is "read", "write" or "access". Returns an empty string when the address is not
// in or near any buffer, live or recently freed.
std::string describe_buffer_address(uintptr_t addr, const char *access);

} // namespace emu

// ---------------------------------------------------------------------------------------------------
// Between the scheduler (emu_runtime.cpp), the checker (emu_check.cpp) and device memory
// (emu_memory.cpp). docs/emulator.md, "The checker", describes what they do together.

namespace emu {

// KILN_EMU_CHECK (race, init, async; all three unless set; `off` for none) and KILN_EMU_ORDER
// (forward, reverse, random or random:SEED: the order in which the threads of a block run between
// synchronisation points; interleave or interleave:SEED: threads also switch at memory accesses),
// read once from the environment.
enum class Order { Forward, Reverse, Random, Interleave };
struct Options {
    bool race = true, init = true, async = true;
    bool profile = false; // KILN_EMU_PROFILE (emu_check.cpp, "The profiler")
    Order order = Order::Forward;
    uint64_t seed = 0;
    bool any_check() const { return race || init || async; }
};
// The options in force (KILN_EMU_CHECK and KILN_EMU_ORDER unless emu_set_checks/emu_set_order said
// otherwise). `error` is empty, or says what is wrong with the variables (the launch then fails).
Options options(std::string *error);

// The shadow state of a device buffer (emu_memory.cpp keeps it beside the buffer).
//   init: one byte per buffer byte, nonzero once written (by the host through emu_memcpy/emu_memset,
//         or by a kernel);
//   owner: one word per buffer byte, which block of the current launch read or wrote it (the checker's
//         races between blocks, emu_check.cpp), valid in a 4 KiB page of the buffer while that page's
//         page_launch entry is the launch's number; both null until asked for (`with_owner`), or when
//         out of memory.
struct BufferShadow {
    uintptr_t lo = 0;
    size_t bytes = 0;
    uint8_t *init = nullptr;
    uint32_t *owner = nullptr;
    uint32_t *page_launch = nullptr;
};
// The shadow of the live buffer holding `addr`; false when there is none. Takes the registry lock:
// callers cache the answer.
bool find_buffer_shadow(uintptr_t addr, bool with_owner, BufferShadow *out);

// One checker per OS thread that runs blocks. The runtime tells it where the block is.
struct Checker;
Checker *checker_new();
void checker_delete(Checker *c);
// A launch starts on this OS thread: its options, block shape (x and y, to name threads), dynamic shared
// memory, and where the runtime keeps the running thread's linear id.
// `launch` numbers the launch (unique among the launches of the process, never 0) and `grid` names
// the other blocks in messages.
void check_launch_begin(Checker *c, const char *kernel, const Options &opt, unsigned block_x, unsigned block_y,
                        unsigned char *dyn_smem, size_t dyn_bytes, const unsigned *cur, uint32_t launch,
                        const unsigned grid[3]);
void check_block_begin(Checker *c, unsigned nthreads, uint64_t block_index);
void check_block_end(Checker *c);
void check_barrier(Checker *c);                                // a __syncthreads() completed
void profile_launch(const char *kernel);                       // counts a launch (KILN_EMU_PROFILE)
void profile_launch_end(const char *kernel, uint32_t launch);    // adds its footprint (all blocks done)
void check_warp_sync(Checker *c, unsigned warp, uint32_t lanes); // a warp collective completed for `lanes`
void check_thread_exit(Checker *c, unsigned t);                // lands the thread's cp.async copies
// KILN_EMU_ORDER=interleave: called by the checker at a memory access of the running thread, which
// then lets another thread of the block run first, or not, as the block's seeded generator decides
// (emu_runtime.cpp).
void interleave_point();
// Ends the running thread's block with an error (implemented by the runtime, like every kernel error).
[[noreturn]] void check_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

} // namespace emu
