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
