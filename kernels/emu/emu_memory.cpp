// emu_memory.cpp — emulated device memory: poisoned buffers between guard pages.
//
// Every emu_malloc gets its own mapping:
//
//     [ guard page | slack ... buffer bytes | guard page ]
//                           ^ptr          ^ page boundary
//
// The buffer ends exactly at the second guard page, so the first byte past its end is inaccessible and
// a kernel that reads or writes it faults (the runtime turns the fault into a launch error, asking
// describe_buffer_address() what the address was). The slack in front (less than a page) is not
// guarded; running further back hits the first guard page. Because the end is page aligned, `ptr` is
// aligned to the largest power of two dividing the size (up to a page): a 20-byte buffer is 4-aligned,
// a 4096-byte one page-aligned. Fresh bytes are 0xFF, a NaN in every float format, so outputs a kernel
// forgot to write stand out.
//
// A freed buffer's pages are discarded and the whole mapping made inaccessible, but the address range
// is kept reserved (in a bounded quarantine) so that a later use of the stale pointer faults and is
// reported as a use after free, instead of landing in some newer buffer.
#include "emu_api.h"
#include "emu_internal.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>

namespace emu {
namespace {

struct Buffer {
    uintptr_t map_base;
    size_t map_len;
    uintptr_t ptr;
    size_t bytes;
};

// Quarantine bounds: how many freed mappings, and how much address space, stay reserved.
constexpr size_t kQuarantineCount = 4096;
constexpr size_t kQuarantineBytes = size_t(1) << 32;

struct Registry {
    std::mutex mu;
    std::map<uintptr_t, Buffer> live; // keyed by ptr
    std::deque<Buffer> freed;         // oldest first
    size_t freed_bytes = 0;
};

Registry &registry() {
    static Registry *r = new Registry; // never destroyed: kernels may still run during exit
    return *r;
}

// The live buffer whose mapping contains addr, if any. Caller holds the lock.
const Buffer *find_mapping(Registry &r, uintptr_t addr) {
    auto it = r.live.upper_bound(addr); // first buffer starting after addr
    if (it != r.live.end() && addr >= it->second.map_base) return &it->second; // in its front guard/slack
    if (it == r.live.begin()) return nullptr;
    const Buffer &b = std::prev(it)->second;
    return addr < b.map_base + b.map_len ? &b : nullptr;
}

std::string format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

std::string describe_in(const Buffer &b, uintptr_t addr, const char *access, const char *what) {
    if (addr >= b.ptr + b.bytes)
        return format("out of bounds %s at byte offset %zu of a %zu-byte %sbuffer (%zu bytes past its end)", access,
                      size_t(addr - b.ptr), b.bytes, what, size_t(addr - (b.ptr + b.bytes)));
    if (addr < b.ptr)
        return format("out of bounds %s %zu bytes before the start of a %zu-byte %sbuffer", access, size_t(b.ptr - addr),
                      b.bytes, what);
    return format("%s at byte offset %zu of a %zu-byte %sbuffer", access, size_t(addr - b.ptr), b.bytes, what);
}

} // namespace

size_t page_size() {
    static const size_t ps = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    return ps;
}

std::string describe_buffer_address(uintptr_t addr, const char *access) {
    Registry &r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    if (const Buffer *b = find_mapping(r, addr)) return describe_in(*b, addr, access, "");
    for (auto it = r.freed.rbegin(); it != r.freed.rend(); ++it) // newest first
        if (addr >= it->map_base && addr < it->map_base + it->map_len)
            return "use after free: " + describe_in(*it, addr, access, "freed ");
    // Further past a buffer than its guard page: name the nearest buffer below, if reasonably close.
    auto it = r.live.upper_bound(addr);
    if (it != r.live.begin()) {
        const Buffer &b = std::prev(it)->second;
        if (addr - (b.ptr + b.bytes) < (size_t(64) << 20))
            return describe_in(b, addr, access, "") + ", beyond its guard page";
    }
    return "";
}

} // namespace emu

using emu::Buffer;

extern "C" void *emu_malloc(size_t bytes) {
    const size_t ps = emu::page_size();
    const size_t data_len = emu::round_up(bytes, ps);
    const size_t map_len = data_len + 2 * ps;
    void *m = mmap(nullptr, map_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return nullptr;
    const uintptr_t base = reinterpret_cast<uintptr_t>(m);
    if (data_len && mprotect(reinterpret_cast<void *>(base + ps), data_len, PROT_READ | PROT_WRITE) != 0) {
        munmap(m, map_len);
        return nullptr;
    }
    const uintptr_t end = base + ps + data_len;
    Buffer b{base, map_len, end - bytes, bytes};
    std::memset(reinterpret_cast<void *>(b.ptr), 0xFF, bytes);
    emu::Registry &r = emu::registry();
    std::lock_guard<std::mutex> lock(r.mu);
    r.live.emplace(b.ptr, b);
    return reinterpret_cast<void *>(b.ptr);
}

extern "C" int emu_free(void *ptr) {
    if (!ptr) return 0;
    emu::Registry &r = emu::registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.live.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == r.live.end()) return -1;
    const Buffer b = it->second;
    r.live.erase(it);
    // Replacing the mapping with a fresh inaccessible one both returns the pages to the system and
    // keeps the range reserved, in one call.
    if (mmap(reinterpret_cast<void *>(b.map_base), b.map_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
             0) == MAP_FAILED) {
        munmap(reinterpret_cast<void *>(b.map_base), b.map_len);
        return 0;
    }
    r.freed.push_back(b);
    r.freed_bytes += b.map_len;
    while (r.freed.size() > emu::kQuarantineCount || r.freed_bytes > emu::kQuarantineBytes) {
        const Buffer &old = r.freed.front();
        munmap(reinterpret_cast<void *>(old.map_base), old.map_len);
        r.freed_bytes -= old.map_len;
        r.freed.pop_front();
    }
    return 0;
}

namespace {
// Whether [p, p+n) stays within the buffer p points into (true for memory that is not an emulated
// buffer at all: host memory is the host's business).
bool range_ok(const void *p, size_t n) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    emu::Registry &r = emu::registry();
    std::lock_guard<std::mutex> lock(r.mu);
    const Buffer *b = emu::find_mapping(r, a);
    if (!b) return true;
    return a >= b->ptr && a <= b->ptr + b->bytes && n <= b->ptr + b->bytes - a;
}
} // namespace

extern "C" int emu_memcpy(void *dst, const void *src, size_t bytes) {
    if (!range_ok(dst, bytes) || !range_ok(src, bytes)) return -1;
    std::memmove(dst, src, bytes);
    return 0;
}

extern "C" int emu_memset(void *dst, int byte_value, size_t bytes) {
    if (!range_ok(dst, bytes)) return -1;
    std::memset(dst, byte_value, bytes);
    return 0;
}
