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
//
// Each guarded buffer costs the process about two memory maps (its pages and its guards), and Linux
// allows a process vm.max_map_count of them (65530 by default): past ~32,700 live buffers every mmap
// failed, and so did the fiber stacks a launch needs. So only the first kMaxGuarded live buffers get
// guard pages; past that, buffers of up to kPooledMaxBytes come from pooled slabs (one map holds
// many): size classes of powers of two from 256 bytes, each freed block reused by its class. A pooled
// buffer is poisoned like any other, but an access past its end lands in the slab instead of faulting.
// Large buffers are always guarded (there are few of them).
//
// Each buffer also has an init shadow for the checker (emu_check.cpp): one byte per buffer byte, zero
// until the byte is written by emu_memcpy/emu_memset or by a kernel. It comes from calloc, which maps
// large ones lazily (pages nobody writes cost nothing) and takes no memory map for small ones. The
// checker's owner shadow (four bytes per byte, and one word per 4 KiB page: which block of the running
// launch touched each byte) is allocated the same way, but only when a checked kernel first touches the
// buffer.
#include "emu_api.h"
#include "emu_internal.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <vector>

namespace emu {
namespace {

struct Buffer {
    uintptr_t map_base; // for a pooled buffer: its block in a slab (map_base == ptr)
    size_t map_len;
    uintptr_t ptr;
    size_t bytes;
    int size_class; // -1: a guarded mapping of its own; else the pooled block's class
    uint8_t *init;  // the init shadow: `bytes` bytes, nonzero once written
    uint32_t *owner = nullptr;       // the owner shadow (BufferShadow), allocated on first request
    uint32_t *page_launch = nullptr;
};

void free_shadow(Buffer &b) {
    std::free(b.init);
    std::free(b.owner);
    std::free(b.page_launch);
    b.init = nullptr;
    b.owner = b.page_launch = nullptr;
}

// Quarantine bounds: how many freed mappings, and how much address space, stay reserved.
constexpr size_t kQuarantineCount = 4096;
constexpr size_t kQuarantineBytes = size_t(1) << 32;

// Live guarded buffers before small ones are pooled (a quarter of the default map limit, leaving the
// rest to the quarantine, thread and fiber stacks, and the allocator).
constexpr size_t kMaxGuarded = 16384;
// Pooled size classes: 256 << c bytes for c < kClasses (up to 64 KiB), carved from 1 MiB slabs.
constexpr int kClasses = 9;
constexpr size_t kMinClassBytes = 256;
constexpr size_t kPooledMaxBytes = kMinClassBytes << (kClasses - 1);
constexpr size_t kSlabBytes = size_t(1) << 20;

struct Registry {
    std::mutex mu;
    std::map<uintptr_t, Buffer> live; // keyed by ptr
    std::deque<Buffer> freed;         // oldest first
    size_t freed_bytes = 0;
    size_t guarded = 0;                       // live buffers with guard pages
    std::vector<uintptr_t> free_blocks[kClasses]; // pooled blocks ready for reuse, per class
};

Registry &registry() {
    static Registry *r = new Registry; // never destroyed: kernels may still run during exit
    return *r;
}

// The live buffer whose mapping contains addr, if any. Caller holds the lock.
Buffer *find_mapping(Registry &r, uintptr_t addr) {
    auto it = r.live.upper_bound(addr); // first buffer starting after addr
    if (it != r.live.end() && addr >= it->second.map_base) return &it->second; // in its front guard/slack
    if (it == r.live.begin()) return nullptr;
    Buffer &b = std::prev(it)->second;
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

// The smallest size class holding `bytes`.
int size_class(size_t bytes) {
    int c = 0;
    while ((kMinClassBytes << c) < bytes) ++c;
    return c;
}

// A pooled block of class `c`, from the free list or a new slab; 0 when out of memory. Caller holds the lock.
uintptr_t take_block(Registry &r, int c) {
    std::vector<uintptr_t> &blocks = r.free_blocks[c];
    if (blocks.empty()) {
        void *slab = mmap(nullptr, kSlabBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (slab == MAP_FAILED) return 0;
        const size_t block = kMinClassBytes << c;
        // in reverse, so that blocks are handed out in address order
        for (size_t off = kSlabBytes; off >= block; off -= block)
            blocks.push_back(reinterpret_cast<uintptr_t>(slab) + off - block);
    }
    const uintptr_t p = blocks.back();
    blocks.pop_back();
    return p;
}

} // namespace

size_t page_size() {
    static const size_t ps = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    return ps;
}

bool find_buffer_shadow(uintptr_t addr, bool with_owner, BufferShadow *out) {
    Registry &r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    Buffer *b = find_mapping(r, addr);
    if (!b || addr < b->ptr || addr >= b->ptr + b->bytes) return false;
    if (with_owner && !b->owner) {
        b->owner = static_cast<uint32_t *>(std::calloc(b->bytes, sizeof(uint32_t)));
        b->page_launch = static_cast<uint32_t *>(std::calloc((b->bytes + 4095) / 4096, sizeof(uint32_t)));
        if (!b->owner || !b->page_launch) { // then no races between blocks are looked for in it
            std::free(b->owner);
            std::free(b->page_launch);
            b->owner = b->page_launch = nullptr;
        }
    }
    *out = BufferShadow{b->ptr, b->bytes, b->init, b->owner, b->page_launch};
    return true;
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
    if (bytes > (SIZE_MAX >> 1)) return nullptr; // no such memory, and the rounding below would wrap
    emu::Registry &r = emu::registry();
    if (bytes <= emu::kPooledMaxBytes) {
        std::lock_guard<std::mutex> lock(r.mu);
        if (r.guarded >= emu::kMaxGuarded) {
            const int c = emu::size_class(bytes);
            const uintptr_t p = emu::take_block(r, c);
            if (!p) return nullptr;
            uint8_t *init = static_cast<uint8_t *>(std::calloc(bytes ? bytes : 1, 1));
            if (!init) {
                r.free_blocks[c].push_back(p);
                return nullptr;
            }
            std::memset(reinterpret_cast<void *>(p), 0xFF, emu::kMinClassBytes << c);
            r.live.emplace(p, Buffer{p, emu::kMinClassBytes << c, p, bytes, c, init});
            return reinterpret_cast<void *>(p);
        }
    }
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
    uint8_t *init = static_cast<uint8_t *>(std::calloc(bytes ? bytes : 1, 1));
    if (!init) {
        munmap(m, map_len);
        return nullptr;
    }
    Buffer b{base, map_len, end - bytes, bytes, -1, init};
    std::memset(reinterpret_cast<void *>(b.ptr), 0xFF, bytes);
    std::lock_guard<std::mutex> lock(r.mu);
    r.live.emplace(b.ptr, b);
    ++r.guarded;
    return reinterpret_cast<void *>(b.ptr);
}

extern "C" int emu_free(void *ptr) {
    if (!ptr) return 0;
    emu::Registry &r = emu::registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.live.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == r.live.end()) return -1;
    Buffer b = it->second;
    r.live.erase(it);
    emu::free_shadow(b);
    if (b.size_class >= 0) {
        std::memset(reinterpret_cast<void *>(b.ptr), 0xFF, b.map_len); // stale reads see NaN
        r.free_blocks[b.size_class].push_back(b.ptr);
        return 0;
    }
    --r.guarded;
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

extern "C" int emu_is_live_range(const void *p, size_t bytes) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    emu::Registry &r = emu::registry();
    std::lock_guard<std::mutex> lock(r.mu);
    const Buffer *b = emu::find_mapping(r, a);
    return b && a >= b->ptr && a <= b->ptr + b->bytes && bytes <= b->ptr + b->bytes - a;
}

// The init shadow of the bytes at p (in a live buffer), or null for memory that is no buffer's.
uint8_t *init_shadow_of(const void *p) {
    emu::BufferShadow s;
    if (!emu::find_buffer_shadow(reinterpret_cast<uintptr_t>(p), false, &s)) return nullptr;
    return s.init + (reinterpret_cast<uintptr_t>(p) - s.lo);
}

extern "C" int emu_memcpy(void *dst, const void *src, size_t bytes) {
    if (!range_ok(dst, bytes) || !range_ok(src, bytes)) return -1;
    std::memmove(dst, src, bytes);
    // The destination is as initialised as the source: fully, from the host.
    if (uint8_t *dst_init = init_shadow_of(dst)) {
        if (const uint8_t *src_init = init_shadow_of(src)) std::memmove(dst_init, src_init, bytes);
        else std::memset(dst_init, 1, bytes);
    }
    return 0;
}

extern "C" int emu_memset(void *dst, int byte_value, size_t bytes) {
    if (!range_ok(dst, bytes)) return -1;
    std::memset(dst, byte_value, bytes);
    if (uint8_t *init = init_shadow_of(dst)) std::memset(init, 1, bytes);
    return 0;
}
