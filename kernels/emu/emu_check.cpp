// emu_check.cpp — the checker: sees every load and store a kernel makes, and reports shared-memory
// races, uninitialised reads and misuse of cp.async (docs/emulator.md, "The checker").
//
// == How it sees memory accesses ==
// The kernel translation units (and only they) are compiled with g++'s -fsanitize=thread
// instrumentation: before every load or store that survives optimisation, the compiler inserts a call
// such as __tsan_read4(addr) or __tsan_write16(addr). Normally libtsan implements those; the emulator
// links this file instead, whose __tsan_* functions pass the address, the size, and the caller's
// return address (a program counter inside the kernel, turned into file:line only when an error is
// reported) to Checker::access. Atomics arrive as __tsan_atomicN_* calls, which perform the operation.
//
// An access is classified by its address:
//   - dynamic shared memory: inside this block's KILN_DYNAMIC_SMEM buffer;
//   - static shared memory: inside this OS thread's static thread-local storage block, where the
//     `static thread_local` __shared__ variables live (minus emu::tl_ids and emu::warp_post_area, the emulator's own);
//   - global memory: inside a live emu_malloc buffer (a small cache per OS thread, then the registry);
//   - anything else (the fiber's stack, kernel arguments, constant tables): not checked.
//
// == Shadow state ==
// Shared memory has one Cell per byte: the last write and the last two readers, each as (epoch,
// thread, warp generation, program counter). The epoch is a per-OS-thread counter that steps at the
// start of every block and at every completed __syncthreads(), so two accesses with the same epoch
// were made by the same block with no barrier between them. The warp generation orders lanes of one
// warp: every completed warp collective (__syncwarp, a shuffle, a vote, ldmatrix, mma) gets the next
// number of its warp, and each participating lane remembers it. An access B by thread u is ordered
// after an earlier access A (same epoch) by thread t of the same warp when u's generation is newer
// than t's was at A: a collective both joined came between them. (With collectives over part of a
// warp, a collective of other lanes can make this say "ordered" wrongly: a missed race, never a
// false report.) Stale cells (an older epoch) need no reset: the epoch tells.
//
// Device buffers have one init byte per byte (emu_memory.cpp), set by emu_memcpy/emu_memset and by
// kernel stores. Shared memory's init state is the Cell's write epoch: written in this block or not.
//
// Global-memory races within a block: the bytes the running block read or wrote since its last barrier
// are kept in a hash table (GlobalCell, the same record as a shared-memory Cell), emptied for free at
// each barrier by keying it with the epoch; the same rules as for shared memory apply (write after
// write, read after write, write after read).
//
// Global-memory races between blocks: blocks run in parallel on several OS threads, in no order, so
// the checker keeps, per device byte, which block of the current launch touched it and how (the owner
// shadow: read by one block, read by several, written by one, updated atomically). It is valid per
// 4 KiB page of a buffer while the page's entry holds the launch's number; the first thread of a launch
// to touch a page resets it. A byte written by one block and read or written by another, other than
// by atomics, is a race.
//
// == cp.async ==
// With `async` checked, kiln_cp_async_16 only records the copy and marks its 16 destination bytes
// "in flight"; kiln_cp_async_commit closes the thread's group, and kiln_cp_async_wait<N> lands every
// group but the newest N (copies the data, clears the marks, and records the write as the issuing
// thread's, so other threads still need a __syncthreads()). Any access to an in-flight byte, or a
// store into the source of a copy in flight, is an error.
#include <dlfcn.h>
#include <elf.h>
#include <link.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <map>
#include <mutex>
#include <string>
#include <sys/mman.h>
#include <tuple>
#include <unordered_set>
#include <unistd.h>
#include <vector>

#include "emu.h" // after the system headers: it defines __noinline__
#include "emu_internal.h"

namespace emu {

// ---------------------------------------------------------------------------------------------------
// Options.

namespace {

std::mutex options_mu;
std::string check_spec_override, order_spec_override; // from emu_set_checks / emu_set_order
bool check_overridden = false, order_overridden = false;
int profile_override = -1; // from emu_set_profile: 0 off, 1 on, -1 KILN_EMU_PROFILE

bool parse_checks(const std::string &spec, Options &o) {
    o.race = o.init = o.async = false;
    if (spec == "off" || spec == "none" || spec.empty()) return true;
    size_t start = 0;
    while (start <= spec.size()) {
        const size_t end = spec.find(',', start) == std::string::npos ? spec.size() : spec.find(',', start);
        const std::string word = spec.substr(start, end - start);
        if (word == "race") o.race = true;
        else if (word == "init") o.init = true;
        else if (word == "async") o.async = true;
        else if (word == "all" || word == "on") o.race = o.init = o.async = true;
        else return false;
        start = end + 1;
    }
    return true;
}

bool parse_order(const std::string &spec, Options &o) {
    o.seed = 0;
    if (spec == "forward" || spec.empty()) o.order = Order::Forward;
    else if (spec == "reverse") o.order = Order::Reverse;
    else if (spec == "random") o.order = Order::Random;
    else if (spec == "interleave") o.order = Order::Interleave;
    else if (spec.rfind("random:", 0) == 0 && spec.size() > 7) {
        char *end = nullptr;
        o.seed = std::strtoull(spec.c_str() + 7, &end, 10);
        if (*end) return false;
        o.order = Order::Random;
    } else if (spec.rfind("interleave:", 0) == 0 && spec.size() > 11) {
        char *end = nullptr;
        o.seed = std::strtoull(spec.c_str() + 11, &end, 10);
        if (*end) return false;
        o.order = Order::Interleave;
    } else return false;
    return true;
}

} // namespace

Options options(std::string *error) {
    std::lock_guard<std::mutex> lock(options_mu);
    Options o;
    const char *env_check = std::getenv("KILN_EMU_CHECK");
    const char *env_order = std::getenv("KILN_EMU_ORDER");
    const char *env_profile = std::getenv("KILN_EMU_PROFILE");
    const std::string profile = env_profile ? env_profile : "";
    o.profile = profile_override >= 0 ? profile_override == 1 : profile == "1";
    const std::string checks = check_overridden ? check_spec_override : env_check ? env_check : "race,init,async";
    const std::string order = order_overridden ? order_spec_override : env_order ? env_order : "forward";
    error->clear();
    if (!parse_checks(checks, o))
        *error = "KILN_EMU_CHECK='" + checks + "': expected 'off' or a comma-separated list of race, init, async";
    if (!parse_order(order, o))
        *error = "KILN_EMU_ORDER='" + order + "': expected forward, reverse, random, random:SEED, interleave or interleave:SEED";
    if (profile_override < 0 && !profile.empty() && profile != "0" && profile != "1")
        *error = "KILN_EMU_PROFILE='" + profile + "': expected 0 or 1";
    return o;
}

// ---------------------------------------------------------------------------------------------------
// Turning a program counter into "attention.cu:424" (only when an error is reported).

namespace {

// Runs `cmd` and returns its standard output.
std::string run_command(const std::string &cmd) {
    std::string out;
    if (FILE *p = popen(cmd.c_str(), "r")) {
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
        pclose(p);
    }
    return out;
}

// The path of the running program ("/proc/self/exe" would name the command that reads it).
std::string self_exe() {
    char buf[4096];
    const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "/proc/self/exe";
}

std::string base_name(const std::string &path) {
    const size_t slash = path.rfind('/');
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

// The object file holding `pc` and the address to give addr2line for it.
bool locate(uintptr_t pc, std::string *file, uintptr_t *addr) {
    Dl_info info;
    if (!dladdr(reinterpret_cast<void *>(pc), &info)) return false;
    const auto *ehdr = static_cast<const ElfW(Ehdr) *>(info.dli_fbase);
    // A position-independent object (ET_DYN) is looked up by its offset from the load address.
    *addr = ehdr->e_type == ET_DYN ? pc - reinterpret_cast<uintptr_t>(info.dli_fbase) : pc;
    // The main program's dli_fname is argv[0], which may be relative: it has the lowest load address.
    *file = info.dli_fname && *info.dli_fname == '/' ? info.dli_fname : self_exe();
    return true;
}

// "k.cu:14", or "common.cuh:31 called from k.cu:14" for a helper of common.cuh, from the inline chain
// addr2line -i reports (innermost first); frames in the emulator's own headers are skipped.
std::string site(uintptr_t pc) {
    static std::mutex mu;
    static std::map<uintptr_t, std::string> cache;
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(pc);
    if (it != cache.end()) return it->second;
    std::string file;
    uintptr_t addr = 0;
    std::string name;
    if (locate(pc - 1, &file, &addr)) { // pc is a return address: pc - 1 is inside the call
        char hex[32];
        snprintf(hex, sizeof hex, "0x%zx", size_t(addr));
        const std::string out = run_command("addr2line -i -e '" + file + "' " + hex + " 2>/dev/null");
        std::vector<std::string> frames;
        size_t start = 0;
        while (start < out.size()) {
            const size_t end = out.find('\n', start) == std::string::npos ? out.size() : out.find('\n', start);
            std::string line = out.substr(start, end - start);
            const size_t disc = line.find(" (discriminator");
            if (disc != std::string::npos) line.resize(disc);
            // (skipping the emulator's own headers: emu.h, emu_ptx.h, ...)
            const std::string base = base_name(line);
            const bool emu_header = base.rfind("emu", 0) == 0 && base.find(".h:") != std::string::npos;
            if (!emu_header && line.rfind("??", 0) != 0) frames.push_back(line);
            start = end + 1;
        }
        if (!frames.empty()) {
            name = base_name(frames[0]);
            if (frames.size() > 1 && name.rfind("common.cuh:", 0) == 0) name += " called from " + base_name(frames[1]);
        }
    }
    if (name.empty()) {
        char buf[64];
        snprintf(buf, sizeof buf, "pc 0x%zx (no line information)", size_t(pc));
        name = buf;
    }
    cache.emplace(pc, name);
    return name;
}

// The static __shared__ variable at `offset` into the kernel module's thread-local storage, from the
// symbol table ("block_sum::scratch"), or "" if none is found.
std::string tls_variable(size_t offset, size_t *var_offset) {
    const std::string out = run_command("readelf -W -C -s '" + self_exe() + "' 2>/dev/null");
    size_t start = 0;
    while (start < out.size()) {
        const size_t end = out.find('\n', start) == std::string::npos ? out.size() : out.find('\n', start);
        const std::string line = out.substr(start, end - start);
        start = end + 1;
        // "   Num:    Value          Size Type    Bind   Vis      Ndx Name"; Bind may contain spaces
        // ("<OS specific>: 10"), so the name is found after the visibility and section index.
        unsigned long long value = 0, size = 0;
        char type[16];
        if (sscanf(line.c_str(), " %*[0-9]: %llx %llu %15s", &value, &size, type) != 3 || std::strcmp(type, "TLS") != 0)
            continue;
        size_t vis = std::string::npos;
        for (const char *v : {" DEFAULT ", " HIDDEN ", " PROTECTED ", " INTERNAL "})
            if ((vis = line.find(v)) != std::string::npos) {
                vis += std::strlen(v);
                break;
            }
        if (vis == std::string::npos) continue;
        const size_t ndx = line.find_first_not_of(' ', vis), gap = line.find(' ', ndx);
        const size_t name_at = gap == std::string::npos ? gap : line.find_first_not_of(' ', gap);
        if (name_at == std::string::npos) continue;
        if (offset >= value && offset < value + size) {
            *var_offset = offset - value;
            return line.substr(name_at);
        }
    }
    return "";
}

// ---------------------------------------------------------------------------------------------------
// Shadow cells.

// One access to a shared-memory byte. epoch 0 means none.
struct Access {
    uint32_t epoch;
    uint32_t gen;    // the thread's warp generation at the time
    uint16_t thread; // linear thread id in the block
    uint16_t flags;
    uintptr_t pc;
};
constexpr uint16_t kInFlight = 1; // (in Cell::write) a cp.async to this byte has not landed yet
constexpr uint16_t kAtomic = 2;   // (in Cell::write) the write was an atomic

struct Cell {
    Access write, read, read2; // the last write, and the last two threads that read since
};

// A region of shared memory and its cells: one Cell per byte, mapped lazily (untouched pages cost
// nothing).
struct Region {
    uintptr_t lo = 0, hi = 0;
    Cell *cells = nullptr;
    size_t capacity = 0; // bytes the mapping covers
    const char *what = "";

    void reserve(size_t bytes) {
        if (bytes <= capacity) return;
        if (cells) munmap(cells, capacity * sizeof(Cell));
        void *m = mmap(nullptr, bytes * sizeof(Cell), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                       -1, 0);
        if (m == MAP_FAILED) {
            fprintf(stderr, "emu: cannot map the checker's shadow memory\n");
            abort();
        }
        cells = static_cast<Cell *>(m);
        capacity = bytes;
    }
};

// A device buffer the thread has touched recently.
struct CachedBuffer {
    uintptr_t lo = 0, hi = 0;
    uint8_t *init = nullptr;
    uint32_t *owner = nullptr, *page_launch = nullptr; // see BufferShadow
};

// A byte of device memory the running block accessed since its last barrier: a slot of an
// open-addressing table keyed by the address, valid while `epoch` is the checker's epoch (so every
// barrier empties the table for free). The last write, and the last two threads that read it since.
struct GlobalCell {
    uintptr_t addr;
    uint32_t epoch;
    Access write, read, read2;
};
constexpr size_t kGlobalSlots = size_t(1) << 16;        // a power of two
constexpr unsigned kGlobalMax = kGlobalSlots / 2;       // bytes recorded per epoch, at most
constexpr unsigned kGlobalReadMax = kGlobalMax / 2;     // of which reads may take this many

// The owner shadow of a device byte (BufferShadow::owner) within one launch: what the blocks did to it,
// in the top 3 bits, and the block (its linear index, modulo 2^29) in the others. 0: untouched.
constexpr uint32_t kOwnReadOne = 1u << 29;  // read by one block only
constexpr uint32_t kOwnReadMany = 2u << 29; // read by several blocks (the block bits are meaningless)
constexpr uint32_t kOwnWrite = 3u << 29;    // written (not atomically) by the block
constexpr uint32_t kOwnAtomic = 4u << 29;   // updated atomically, last by the block
constexpr uint32_t kOwnBlockMask = (1u << 29) - 1;
constexpr uint32_t kPageClaimed = ~0u; // a page_launch entry while a thread resets the page's owners

// A cp.async recorded but not landed.
struct PendingCopy {
    uintptr_t dst, src;
    unsigned src_bytes;
    int group; // -1 until committed
    uintptr_t pc;
};

thread_local struct Checker *tl_check __attribute__((tls_model("initial-exec"))) = nullptr;

// The static thread-local storage block of the main program for the calling thread (where the
// `static thread_local` __shared__ variables are), from the program headers and dl_iterate_phdr.
void static_tls_block(uintptr_t *lo, uintptr_t *hi) {
    struct Found {
        uintptr_t lo = 0, hi = 0;
    } found;
    dl_iterate_phdr(
        [](dl_phdr_info *info, size_t, void *data) -> int {
            auto *f = static_cast<Found *>(data);
            for (int i = 0; i < info->dlpi_phnum; ++i)
                if (info->dlpi_phdr[i].p_type == PT_TLS && info->dlpi_tls_data) {
                    f->lo = reinterpret_cast<uintptr_t>(info->dlpi_tls_data);
                    f->hi = f->lo + info->dlpi_phdr[i].p_memsz;
                    return 1; // the first module with TLS: the main program
                }
            return 0;
        },
        &found);
    *lo = found.lo;
    *hi = found.hi;
}

} // namespace

// One load or store seen by the profiler, kept until the next barrier (see "The profiler" below).
struct ProfAccess {
    uintptr_t pc, addr;
    uint32_t thread, occurrence;
    uint32_t size;
    uint8_t write, shared, ldmatrix;
};

void profile_add(const char *kernel, const emu_profile_counts &add); // below

struct Checker {
    Options opt;
    bool on = false;
    const char *kernel = "";
    std::vector<ProfAccess> prof; // this block's accesses since its last barrier
    unsigned long long mma = 0;   // mma instructions (per warp) since the last flush
    unsigned long long mma_s8 = 0; // the same for the integer mma.m16n8k32
    // The launch and block (the runtime's error messages name the kernel and block).
    unsigned dim_x = 1, dim_y = 1;
    unsigned n = 0;
    const unsigned *cur = nullptr;
    // Epochs: see the header comment.
    uint32_t epoch = 0, block_epoch = 0;
    uint32_t warp_counter[32] = {};
    uint32_t lane_gen[EMU_MAX_THREADS_PER_BLOCK] = {};
    // Shared memory.
    Region dyn, tls;
    uintptr_t ids_lo = 0;   // emu::tl_ids, inside the TLS block but not shared memory
    uintptr_t posts_lo = 0; // nor emu::warp_post_area (emu_ptx.h)
    // Global memory: recently used buffers, and pages known to hold none (stacks, arguments, tables).
    CachedBuffer buffers[8];
    unsigned next_buffer = 0, last_buffer = 0;
    uintptr_t not_buffer_page[64] = {};
    // Global-memory races within the block: the bytes it accessed since the last barrier (GlobalCell).
    std::vector<GlobalCell> global_cells = std::vector<GlobalCell>(kGlobalSlots);
    unsigned global_recorded = 0, global_reads_recorded = 0; // bytes recorded in this epoch
    // Global-memory races between blocks (the owner shadows): this launch's number, its grid, and the
    // running block's linear index.
    uint32_t launch = 0;
    unsigned grid[3] = {1, 1, 1};
    uint64_t block_index = 0;
    // cp.async.
    std::vector<PendingCopy> pending[EMU_MAX_THREADS_PER_BLOCK];
    int committed[EMU_MAX_THREADS_PER_BLOCK] = {};
    unsigned pending_total = 0;

    std::string thread_name(unsigned t) const {
        char buf[48];
        snprintf(buf, sizeof buf, "thread (%u,%u,%u)", t % dim_x, t / dim_x % dim_y, t / (dim_x * dim_y));
        return buf;
    }

    // Whether access `a` (by another thread, this epoch) is ordered before the running thread `t` by a
    // warp collective both took part in.
    bool warp_ordered(const Access &a, unsigned t) const { return (a.thread >> 5) == (t >> 5) && lane_gen[t] > a.gen; }

    // Whether an unordered access may follow write `w` of another thread: two atomics never race, and a
    // plain read of an atomically updated value is the first step of every compare-and-swap loop (it
    // sees the old or the new value, and the CAS sorts it out). A plain write after an atomic races.
    static bool tolerated(const Access &w, bool write, bool atomic) { return (w.flags & kAtomic) && (atomic || !write); }

    // "byte 20 of the dynamic shared memory", "byte 4 of __shared__ block_sum::scratch".
    std::string describe_shared(const Region &r, uintptr_t addr) const {
        char buf[256];
        if (&r == &dyn) {
            snprintf(buf, sizeof buf, "byte %zu of the dynamic shared memory", size_t(addr - r.lo));
            return buf;
        }
        size_t in_var = 0;
        const std::string var = tls_variable(addr - r.lo, &in_var);
        if (var.empty()) snprintf(buf, sizeof buf, "a byte of static __shared__ memory");
        else snprintf(buf, sizeof buf, "byte %zu of __shared__ %s", in_var, var.c_str());
        return buf;
    }

    [[noreturn]] void race(const Region &r, uintptr_t addr, bool write, uintptr_t pc, const Access &other,
                           bool other_wrote) {
        const unsigned t = *cur;
        const bool same_warp = (other.thread >> 5) == (t >> 5);
        check_fail("shared-memory race on %s: %s %s it at %s, and %s %s it at %s, with no %s between them%s",
                   describe_shared(r, addr).c_str(), thread_name(t).c_str(), write ? "writes" : "reads",
                   site(pc).c_str(), thread_name(other.thread).c_str(), other_wrote ? "wrote" : "read",
                   site(other.pc).c_str(), same_warp ? "__syncthreads() or __syncwarp()" : "__syncthreads()",
                   !write ? "" : other_wrote ? " (write after write)" : " (write after read: is a barrier missing "
                                                                         "before the buffer is reused?)");
    }

    [[noreturn]] void in_flight(const Region &r, uintptr_t addr, bool write, uintptr_t pc, const Access &copy) {
        check_fail("%s %s at %s while the cp.async that writes it (issued by %s at %s) is in flight: it lands only "
                   "at a cp.async.wait_group that covers its group (kiln_cp_async_wait)",
                   write ? "writes" : "reads", describe_shared(r, addr).c_str(), site(pc).c_str(),
                   thread_name(copy.thread).c_str(), site(copy.pc).c_str());
    }

    void shared_access(Region &r, uintptr_t addr, size_t size, bool write, bool atomic, uintptr_t pc) {
        const unsigned t = *cur;
        const Access me{epoch, lane_gen[t], static_cast<uint16_t>(t), static_cast<uint16_t>(atomic ? kAtomic : 0), pc};
        for (size_t i = 0; i < size; ++i) {
            Cell &c = r.cells[addr - r.lo + i];
            if (opt.async && (c.write.flags & kInFlight) && c.write.epoch >= block_epoch) in_flight(r, addr + i, write, pc, c.write);
            if (opt.init && !write && c.write.epoch < block_epoch)
                check_fail("uninitialised read: %s reads %s at %s, which no thread of this block has written",
                           thread_name(t).c_str(), describe_shared(r, addr + i).c_str(), site(pc).c_str());
            if (opt.race) {
                const Access &w = c.write;
                if (w.epoch == epoch && w.thread != t && !warp_ordered(w, t) && !tolerated(w, write, atomic))
                    race(r, addr + i, write, pc, w, true);
                if (write && !atomic) {
                    for (const Access *rd : {&c.read, &c.read2})
                        if (rd->epoch == epoch && rd->thread != t && !warp_ordered(*rd, t))
                            race(r, addr + i, write, pc, *rd, false);
                }
            }
            if (write) {
                c.write = me;
            } else if (c.read.epoch != epoch || c.read.thread == t) {
                c.read = me;
            } else if (c.read2.epoch != epoch || c.read2.thread == t) {
                c.read2 = me;
            }
        }
    }

    // The cached buffer holding addr, or null (also caching that addr's page holds no buffer).
    CachedBuffer *find_buffer(uintptr_t addr) {
        for (CachedBuffer &b : buffers)
            if (addr - b.lo < b.hi - b.lo) return &b;
        const uintptr_t page = addr >> 12;
        uintptr_t &slot = not_buffer_page[page % 64];
        if (slot == page + 1) return nullptr;
        BufferShadow s;
        if (!find_buffer_shadow(addr, opt.race, &s)) {
            slot = page + 1;
            return nullptr;
        }
        CachedBuffer &b = buffers[next_buffer++ % 8];
        b = CachedBuffer{s.lo, s.lo + s.bytes, s.init, s.owner, s.page_launch};
        return &b;
    }

    // The slot of byte `addr` in global_cells: its record from this epoch, or the free slot for it.
    GlobalCell &global_slot(uintptr_t addr) {
        size_t i = (addr * 0x9e3779b97f4a7c15ull) >> 48; // 16 bits of a multiplicative hash
        for (;; i = (i + 1) & (kGlobalSlots - 1)) {
            GlobalCell &g = global_cells[i];
            if (g.epoch != epoch || g.addr == addr) return g;
        }
    }

    [[noreturn]] void global_race_found(const CachedBuffer &b, uintptr_t addr, bool write, uintptr_t pc,
                                        const Access &other, bool other_wrote) {
        const unsigned t = *cur;
        check_fail("global-memory race on byte %zu of a %zu-byte device buffer: %s %s it at %s, and %s %s it at %s, "
                   "with no %s between them%s",
                   size_t(addr - b.lo), size_t(b.hi - b.lo), thread_name(t).c_str(), write ? "writes" : "reads",
                   site(pc).c_str(), thread_name(other.thread).c_str(), other_wrote ? "wrote" : "read",
                   site(other.pc).c_str(),
                   (other.thread >> 5) == (t >> 5) ? "__syncthreads() or __syncwarp()" : "__syncthreads()",
                   !write ? "" : other_wrote ? " (write after write)" : " (write after read)");
    }

    // Global-memory races between threads of this block, as for shared memory: a read or write of a
    // byte another thread wrote in the same epoch, or a write of a byte another thread read. Each epoch
    // records up to kGlobalMax bytes (reads up to kGlobalReadMax of them); bytes past that are not
    // checked (a race missed, never a false report).
    void global_race(CachedBuffer &b, uintptr_t addr, size_t n, bool write, bool atomic, uintptr_t pc) {
        const unsigned t = *cur;
        const Access me{epoch, lane_gen[t], static_cast<uint16_t>(t), static_cast<uint16_t>(atomic ? kAtomic : 0), pc};
        for (size_t i = 0; i < n; ++i) {
            GlobalCell &g = global_slot(addr + i);
            const bool recorded = g.epoch == epoch;
            if (recorded) {
                if (g.write.epoch == epoch && g.write.thread != t && !warp_ordered(g.write, t) &&
                    !tolerated(g.write, write, atomic))
                    global_race_found(b, addr + i, write, pc, g.write, true);
                if (write && !atomic)
                    for (const Access *rd : {&g.read, &g.read2})
                        if (rd->epoch == epoch && rd->thread != t && !warp_ordered(*rd, t))
                            global_race_found(b, addr + i, write, pc, *rd, false);
            } else {
                if (global_recorded >= kGlobalMax || (!write && global_reads_recorded >= kGlobalReadMax)) continue;
                ++global_recorded;
                global_reads_recorded += !write;
                g = GlobalCell{addr + i, epoch, Access{}, Access{}, Access{}};
            }
            if (write) {
                g.write = me;
            } else if (g.read.epoch != epoch || g.read.thread == t) {
                g.read = me;
            } else if (g.read2.epoch != epoch || g.read2.thread == t) {
                g.read2 = me;
            }
        }
    }

    // "block (3,1,0)", from a linear block index.
    std::string block_name(uint64_t index) const {
        char buf[64];
        snprintf(buf, sizeof buf, "block (%llu,%llu,%llu)", static_cast<unsigned long long>(index % grid[0]),
                 static_cast<unsigned long long>(index / grid[0] % grid[1]),
                 static_cast<unsigned long long>(index / (uint64_t(grid[0]) * grid[1])));
        return buf;
    }

    // Makes the owner words of page `page` of buffer b this launch's: the first thread of the launch
    // to touch the page resets them (others wait for it). Blocks run in parallel, so the page entries
    // are claimed atomically; the owner words themselves are read and written with relaxed atomics,
    // and an update lost between two blocks can only hide a race, never invent one (every value a
    // word holds was stored by the block it names, in this launch).
    void claim_page(const CachedBuffer &b, size_t page) {
        uint32_t *entry = &b.page_launch[page];
        for (;;) {
            uint32_t seen = __atomic_load_n(entry, __ATOMIC_ACQUIRE);
            if (seen == launch) return;
            if (seen != kPageClaimed &&
                __atomic_compare_exchange_n(entry, &seen, kPageClaimed, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
                const size_t lo = page * 4096, n = std::min<size_t>(4096, size_t(b.hi - b.lo) - lo);
                std::memset(b.owner + lo, 0, n * sizeof(uint32_t));
                __atomic_store_n(entry, launch, __ATOMIC_RELEASE);
                return;
            }
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        }
    }

    [[noreturn]] void block_race_found(const CachedBuffer &b, size_t off, bool write, bool atomic, uintptr_t pc,
                                       uint32_t was) {
        const uint32_t kind = was & ~kOwnBlockMask;
        const std::string other =
            kind == kOwnReadMany ? "other blocks read it"
                                 : block_name(was & kOwnBlockMask) + (kind == kOwnReadOne ? " read it"
                                                                      : kind == kOwnWrite ? " wrote it"
                                                                                          : " updated it atomically");
        check_fail("global-memory race between blocks on byte %zu of a %zu-byte device buffer: %s %s it at %s, and %s "
                   "in this launch; the blocks of a launch are not ordered, so only atomics may share a byte that "
                   "one of them writes",
                   off, size_t(b.hi - b.lo), thread_name(*cur).c_str(),
                   atomic ? "updates" : write ? "writes" : "reads", site(pc).c_str(), other.c_str());
    }

    // Global-memory races between blocks of the launch: a byte written by one block and read or written
    // by another, unless every write was atomic (a plain read of an atomically updated byte is let
    // through, as within a block).
    void block_race(const CachedBuffer &b, size_t off, size_t n, bool write, bool atomic, uintptr_t pc) {
        const uint32_t me = static_cast<uint32_t>(block_index) & kOwnBlockMask;
        for (size_t i = 0; i < n; ++i) {
            const size_t o = off + i;
            if (i == 0 || (o & 4095) == 0) claim_page(b, o >> 12);
            uint32_t *word = &b.owner[o];
            const uint32_t was = __atomic_load_n(word, __ATOMIC_RELAXED);
            const uint32_t kind = was & ~kOwnBlockMask;
            const bool mine = (was & kOwnBlockMask) == me;
            uint32_t now = was;
            if (atomic) {
                if (kind == kOwnWrite && !mine) block_race_found(b, o, write, atomic, pc, was);
                now = kOwnAtomic | me;
            } else if (write) {
                if (kind == kOwnReadMany || (kind != 0 && !mine)) block_race_found(b, o, write, atomic, pc, was);
                now = kOwnWrite | me;
            } else if (kind == kOwnWrite) {
                if (!mine) block_race_found(b, o, write, atomic, pc, was);
            } else if (kind == 0) {
                now = kOwnReadOne | me;
            } else if (kind == kOwnReadOne && !mine) {
                now = kOwnReadMany;
            }
            if (now != was) __atomic_store_n(word, now, __ATOMIC_RELAXED);
        }
    }

    void global_access(CachedBuffer &b, uintptr_t addr, size_t size, bool write, bool atomic, uintptr_t pc) {
        // An access running past the buffer's end faults on its guard page right after this.
        const size_t off = addr - b.lo, n = off + size <= b.hi - b.lo ? size : b.hi - b.lo - off;
        if (opt.race) {
            global_race(b, addr, n, write, atomic, pc);
            if (b.owner) block_race(b, off, n, write, atomic, pc);
        }
        if (write) {
            std::memset(b.init + off, 1, n);
            if (opt.async && pending_total) check_source_overwrite(addr, size, pc);
        } else if (opt.init) {
            for (size_t i = 0; i < n; ++i)
                if (!b.init[off + i])
                    check_fail("uninitialised read: %s reads byte %zu of a %zu-byte device buffer at %s, which "
                               "nothing has written since it was allocated",
                               thread_name(*cur).c_str(), off + i, size_t(b.hi - b.lo), site(pc).c_str());
        }
    }

    // Whether addr is shared memory or a device buffer (the memory the checker looks at).
    bool checked_memory(uintptr_t addr) {
        return addr - dyn.lo < dyn.hi - dyn.lo || addr - tls.lo < tls.hi - tls.lo || find_buffer(addr);
    }

    // The classification of the header comment, most frequent first: threadIdx and friends (emu::tl_ids),
    // the device buffer touched last, shared memory, then the other device buffers.
    // An atomic arrives as a read and a write of the same pc; the profiler counts its write only.
    // `kernel`: the access is the kernel's own (not a cp.async landing), a point where
    // KILN_EMU_ORDER=interleave may switch threads, before the access is recorded.
    // `ldmatrix`: a row of an ldmatrix (the profiler counts those apart).
    __attribute__((always_inline)) void access(uintptr_t addr, size_t size, bool write, bool atomic, uintptr_t pc,
                                               bool kernel = false, bool ldmatrix = false) {
        if (addr - ids_lo < sizeof(ThreadIds) || addr - posts_lo < sizeof warp_post_area) return;
        if (__builtin_expect(kernel && opt.order == Order::Interleave, 0) && checked_memory(addr)) interleave_point();
        bool shared = false;
        if (addr - buffers[last_buffer].lo < buffers[last_buffer].hi - buffers[last_buffer].lo) {
            global_access(buffers[last_buffer], addr, size, write, atomic, pc);
        } else if (addr - dyn.lo < dyn.hi - dyn.lo) {
            shared_access(dyn, addr, size, write, atomic, pc);
            shared = true;
        } else if (addr - tls.lo < tls.hi - tls.lo) {
            shared_access(tls, addr, size, write, atomic, pc);
            shared = true;
        } else if (CachedBuffer *b = find_buffer(addr)) {
            last_buffer = static_cast<unsigned>(b - buffers);
            global_access(*b, addr, size, write, atomic, pc);
        } else {
            return;
        }
        if (opt.profile && (write || !atomic))
            prof.push_back(ProfAccess{pc, addr, *cur, 0, static_cast<uint32_t>(size), write, shared, ldmatrix});
    }

    void profile_flush();

    void check_source_overwrite(uintptr_t addr, size_t size, uintptr_t pc) {
        for (unsigned t = 0; t < n; ++t)
            for (const PendingCopy &p : pending[t])
                if (addr < p.src + p.src_bytes && p.src < addr + size)
                    check_fail("writes byte %zu of a cp.async's source at %s while the copy (issued by %s at %s) is "
                               "in flight: the copy may read the old or the new value",
                               size_t(addr - p.src), site(pc).c_str(), thread_name(t).c_str(), site(p.pc).c_str());
    }

    // The Region of a cp.async destination, which must be shared memory.
    Region *shared_region(uintptr_t addr) {
        if (addr - dyn.lo < dyn.hi - dyn.lo) return &dyn;
        if (addr - tls.lo < tls.hi - tls.lo) return &tls;
        return nullptr;
    }

    // Performs copy p (for the running thread, which issued it): reads its source, writes its destination
    // (both seen by the profiler: a global load of src_bytes and a 16-byte shared store at p's call site).
    void land(const PendingCopy &p) {
        if (p.src_bytes) access(p.src, p.src_bytes, false, false, p.pc);
        Region *r = shared_region(p.dst);
        for (int i = 0; i < 16; ++i) r->cells[p.dst - r->lo + i].write.flags &= ~kInFlight;
        unsigned char tmp[16] = {};
        std::memcpy(tmp, reinterpret_cast<const void *>(p.src), p.src_bytes);
        std::memcpy(reinterpret_cast<void *>(p.dst), tmp, 16);
        access(p.dst, 16, true, false, p.pc);
    }

    // Lands thread t's copies in groups older than the newest `keep` committed ones (all, for -1).
    void land_groups(unsigned t, int keep) {
        std::vector<PendingCopy> &mine = pending[t];
        size_t kept = 0;
        for (size_t i = 0; i < mine.size(); ++i) {
            const PendingCopy p = mine[i];
            if (keep < 0 || (p.group >= 0 && p.group < committed[t] - keep)) {
                land(p);
                --pending_total;
            } else {
                mine[kept++] = p;
            }
        }
        mine.resize(kept);
    }
};

// ---------------------------------------------------------------------------------------------------
// The runtime's side (emu_internal.h).

Checker *checker_new() { return new Checker; }
void checker_delete(Checker *c) { delete c; }

void check_launch_begin(Checker *c, const char *kernel, const Options &opt, unsigned block_x, unsigned block_y,
                        unsigned char *dyn_smem, size_t dyn_bytes, const unsigned *cur, uint32_t launch,
                        const unsigned grid[3]) {
    c->opt = opt;
    c->launch = launch;
    std::memcpy(c->grid, grid, sizeof c->grid);
    c->on = c->opt.any_check() || c->opt.profile || c->opt.order == Order::Interleave;
    c->kernel = kernel;
    c->dim_x = block_x;
    c->dim_y = block_y;
    c->cur = cur;
    c->dyn.lo = reinterpret_cast<uintptr_t>(dyn_smem);
    c->dyn.hi = c->dyn.lo + dyn_bytes;
    c->dyn.reserve(dyn_bytes);
    if (!c->tls.cells) {
        static_tls_block(&c->tls.lo, &c->tls.hi);
        c->tls.reserve(c->tls.hi - c->tls.lo);
        c->ids_lo = reinterpret_cast<uintptr_t>(&tl_ids);
        c->posts_lo = reinterpret_cast<uintptr_t>(&warp_post_area);
    }
    // Buffers may have been freed and allocated since the last launch.
    for (CachedBuffer &b : c->buffers) b = CachedBuffer{};
    std::memset(c->not_buffer_page, 0, sizeof c->not_buffer_page);
}

void check_block_begin(Checker *c, unsigned nthreads, uint64_t block_index) {
    tl_check = c->on ? c : nullptr;
    if (!c->on) return;
    c->n = nthreads;
    c->block_index = block_index;
    c->block_epoch = c->epoch = c->epoch + 1;
    std::memset(c->warp_counter, 0, sizeof c->warp_counter);
    std::memset(c->lane_gen, 0, nthreads * sizeof c->lane_gen[0]);
    if (c->pending_total) { // left by a block that failed
        for (unsigned t = 0; t < EMU_MAX_THREADS_PER_BLOCK; ++t) c->pending[t].clear();
        c->pending_total = 0;
    }
    std::memset(c->committed, 0, nthreads * sizeof c->committed[0]);
    c->global_recorded = c->global_reads_recorded = 0;
}

void check_block_end(Checker *c) {
    tl_check = nullptr;
    if (c->opt.profile) c->profile_flush();
}

void check_barrier(Checker *c) {
    if (!c->on) return;
    ++c->epoch;
    c->global_recorded = c->global_reads_recorded = 0;
    if (c->opt.profile) c->profile_flush();
}

void check_warp_sync(Checker *c, unsigned warp, uint32_t lanes) {
    if (!c->on) return;
    const uint32_t g = ++c->warp_counter[warp];
    for (uint32_t m = lanes; m; m &= m - 1) c->lane_gen[warp * 32 + __builtin_ctz(m)] = g;
}

void check_thread_exit(Checker *c, unsigned t) {
    if (c->on && !c->pending[t].empty()) c->land_groups(t, -1);
}

// ---------------------------------------------------------------------------------------------------
// cp.async (emu_ptx.h). Not inlined: the return address is the kernel's call site.

__attribute__((noinline)) bool cp_async_issue(void *dst, const void *src, unsigned src_bytes) {
    Checker *c = tl_check;
    if (!c) return false; // the caller copies at once
    const uintptr_t pc = reinterpret_cast<uintptr_t>(__builtin_return_address(0));
    const uintptr_t d = reinterpret_cast<uintptr_t>(dst);
    if (!c->opt.async) { // the copy completes now: the caller makes it, silently
        if (src_bytes) c->access(reinterpret_cast<uintptr_t>(src), src_bytes, false, false, pc);
        c->access(d, 16, true, false, pc);
        return false;
    }
    Region *r = c->shared_region(d);
    if (!r) check_fail("cp.async to %p at %s: the destination is not shared memory", dst, site(pc).c_str());
    const unsigned t = *c->cur;
    // The destination must not be in flight already, nor be read or written until the copy lands.
    c->shared_access(*r, d, 16, true, false, pc);
    for (int i = 0; i < 16; ++i) {
        Access &w = r->cells[d - r->lo + i].write;
        w.flags |= kInFlight;
        w.pc = pc;
    }
    c->pending[t].push_back(PendingCopy{d, reinterpret_cast<uintptr_t>(src), src_bytes, -1, pc});
    ++c->pending_total;
    return true;
}

void cp_async_commit() {
    Checker *c = tl_check;
    if (!c) return;
    const unsigned t = *c->cur;
    for (PendingCopy &p : c->pending[t])
        if (p.group < 0) p.group = c->committed[t];
    ++c->committed[t];
}

void cp_async_wait(int keep) {
    Checker *c = tl_check;
    if (c && !c->pending[*c->cur].empty()) c->land_groups(*c->cur, keep);
}

// A KilnPack copied whole (common.cuh): one access of `bytes` to each side, as the GPU's vector load
// or store, where the instrumented copy would show g++'s element-wise moves. Not inlined: the return
// address is the kernel's call site, and this file is not instrumented, so the copy itself is silent.
__attribute__((noinline)) void pack_copy(void *dst, const void *src, unsigned bytes) {
    if (Checker *c = tl_check) {
        const uintptr_t pc = reinterpret_cast<uintptr_t>(__builtin_return_address(0));
        c->access(reinterpret_cast<uintptr_t>(src), bytes, false, false, pc, true);
        c->access(reinterpret_cast<uintptr_t>(dst), bytes, true, false, pc);
    }
    std::memcpy(dst, src, bytes);
}

__attribute__((noinline)) void ldmatrix_row(const void *row) {
    if (Checker *c = tl_check)
        c->access(reinterpret_cast<uintptr_t>(row), 16, false, false,
                  reinterpret_cast<uintptr_t>(__builtin_return_address(0)), true, true);
}

void silent_copy(void *dst, const void *src, unsigned bytes) { std::memcpy(dst, src, bytes); }

void mma_seen() {
    if (Checker *c = tl_check; c && c->opt.profile) ++c->mma;
}

void mma_s8_seen() {
    if (Checker *c = tl_check; c && c->opt.profile) ++c->mma_s8;
}

} // namespace emu

// ---------------------------------------------------------------------------------------------------
// The profiler (KILN_EMU_PROFILE; docs/emulator.md, "The profiler").
//
// The hardware issues a load or store instruction once for a warp: the active lanes' addresses form
// one request. Emu runs the threads of a block one after another between synchronisation points, so
// the profiler keeps every access of the block (program counter, address, size, thread) until the next
// __syncthreads() or the block's end, and then rebuilds the requests: the k-th time lane i executed the
// instruction at pc since the barrier and the k-th time lane j of the same warp did are one request.
// (Lanes that skip an instruction or leave a loop early are simply inactive in the later requests,
// as on the GPU. An instruction whose occurrences differ between lanes for data-dependent reasons, such
// as a loop whose trip count varies per lane where the GPU would reconverge differently, is grouped by
// occurrence number, which is what a warp executing in lock step would do.)
//
// Global memory: a request's sectors are the distinct 32-byte aligned blocks its bytes fall in; its
// ideal bytes are the distinct bytes asked for. Shared memory: 32 banks of 4 bytes; a request is split
// into phases of 32 lanes for accesses of up to 4 bytes, 16 lanes (half warps) for 8 bytes and 8
// lanes (quarter warps) for 16 bytes; a phase takes as many wavefronts as the most distinct 4-byte
// words any one bank must deliver (lanes reading the same word share it: a broadcast). The ideal is
// one wavefront per phase with an active lane; wavefronts above it are bank conflicts.
//
// The footprint: the distinct global sectors a launch's loads touch, and those its stores touch,
// collected across its blocks and counted when the launch ends. With a cold cache each must cross
// between HBM and the chip at least once (a sector both read and written: twice), so footprint bytes
// over HBM bandwidth bound the launch's time from below, as tensor-core FLOPs over the tensor peak do
// (emu_profile_lower_bound_us).

namespace emu {

namespace {

struct ProfileTable {
    std::mutex mu;
    std::map<std::string, emu_profile_counts> kernels;
    // The footprint of each launch in flight: its number -> the distinct sectors of its loads, of its stores.
    std::map<uint32_t, std::pair<std::unordered_set<uintptr_t>, std::unordered_set<uintptr_t>>> footprints;
};

ProfileTable &profile_table() {
    static ProfileTable *t = new ProfileTable; // never destroyed: the exit report reads it
    return *t;
}

// Distinct values of v (sorted and deduplicated in place).
size_t count_distinct(std::vector<uintptr_t> &v) {
    std::sort(v.begin(), v.end());
    return static_cast<size_t>(std::unique(v.begin(), v.end()) - v.begin());
}

// Adds one global-memory request made of accesses [first, last) to the counts.
void count_global(const ProfAccess *first, const ProfAccess *last, emu_profile_counts &c) {
    std::vector<uintptr_t> bytes, sectors;
    for (const ProfAccess *a = first; a != last; ++a)
        for (uintptr_t b = a->addr; b < a->addr + a->size; ++b) {
            bytes.push_back(b);
            sectors.push_back(b >> 5);
        }
    const unsigned long long n_sectors = count_distinct(sectors), n_bytes = count_distinct(bytes);
    if (first->write) {
        ++c.gst_requests;
        c.gst_sectors += n_sectors;
        c.gst_bytes += n_bytes;
    } else {
        ++c.gld_requests;
        c.gld_sectors += n_sectors;
        c.gld_bytes += n_bytes;
    }
}

// Adds one shared-memory request made of accesses [first, last) to the counts.
void count_shared(const ProfAccess *first, const ProfAccess *last, emu_profile_counts &c) {
    uint32_t size = 0;
    for (const ProfAccess *a = first; a != last; ++a) size = std::max(size, a->size);
    const uint32_t lanes_per_phase = size <= 4 ? 32 : size <= 8 ? 16 : 8;
    unsigned long long wavefronts = 0, ideal = 0;
    for (uint32_t phase = 0; phase < 32 / lanes_per_phase; ++phase) {
        std::vector<uintptr_t> words; // (bank << 58) | word: distinct words per bank after sorting
        for (const ProfAccess *a = first; a != last; ++a) {
            if ((a->thread & 31) / lanes_per_phase != phase) continue;
            for (uintptr_t w = a->addr >> 2; w <= (a->addr + a->size - 1) >> 2; ++w) words.push_back((w & 31) << 58 | w);
        }
        if (words.empty()) continue;
        const size_t n = count_distinct(words);
        unsigned most = 0, run = 0;
        for (size_t i = 0; i < n; ++i) {
            run = i > 0 && (words[i] >> 58) == (words[i - 1] >> 58) ? run + 1 : 1;
            most = std::max(most, run);
        }
        wavefronts += most;
        ++ideal;
    }
    if (first->ldmatrix) {
        ++c.ldsm_requests;
        c.ldsm_wavefronts += wavefronts;
        c.ldsm_ideal_wavefronts += ideal;
    } else if (first->write) {
        ++c.sts_requests;
        c.sts_wavefronts += wavefronts;
        c.sts_ideal_wavefronts += ideal;
    } else {
        ++c.lds_requests;
        c.lds_wavefronts += wavefronts;
        c.lds_ideal_wavefronts += ideal;
    }
}

} // namespace

void Checker::profile_flush() {
    if (mma || mma_s8) {
        emu_profile_counts m{};
        m.mma = mma;
        m.mma_s8 = mma_s8;
        mma = mma_s8 = 0;
        profile_add(kernel, m);
    }
    if (prof.empty()) return;
    // Number each thread's executions of each instruction (the sort keeps each thread's order).
    std::stable_sort(prof.begin(), prof.end(), [](const ProfAccess &a, const ProfAccess &b) {
        return a.pc != b.pc ? a.pc < b.pc : a.write != b.write ? a.write < b.write : a.thread < b.thread;
    });
    for (size_t i = 0; i < prof.size(); ++i) {
        const bool same = i > 0 && prof[i].pc == prof[i - 1].pc && prof[i].write == prof[i - 1].write &&
                          prof[i].thread == prof[i - 1].thread;
        prof[i].occurrence = same ? prof[i - 1].occurrence + 1 : 0;
    }
    // One request: the same instruction, occurrence and warp.
    auto key = [](const ProfAccess &a) { return std::make_tuple(a.pc, a.write, a.occurrence, a.thread >> 5); };
    std::stable_sort(prof.begin(), prof.end(), [&](const ProfAccess &a, const ProfAccess &b) { return key(a) < key(b); });
    {
        ProfileTable &t = profile_table();
        std::lock_guard<std::mutex> lock(t.mu);
        auto &footprint = t.footprints[launch];
        for (const ProfAccess &a : prof)
            if (!a.shared)
                for (uintptr_t s = a.addr >> 5; s <= (a.addr + a.size - 1) >> 5; ++s)
                    (a.write ? footprint.second : footprint.first).insert(s);
    }
    emu_profile_counts counts{};
    for (size_t i = 0; i < prof.size();) {
        size_t j = i + 1;
        while (j < prof.size() && key(prof[j]) == key(prof[i]) && prof[j].shared == prof[i].shared) ++j;
        if (prof[i].shared) count_shared(&prof[i], &prof[j], counts);
        else count_global(&prof[i], &prof[j], counts);
        i = j;
    }
    prof.clear();
    profile_add(kernel, counts);
}

void profile_add(const char *kernel, const emu_profile_counts &add) {
    ProfileTable &t = profile_table();
    std::lock_guard<std::mutex> lock(t.mu);
    emu_profile_counts &c = t.kernels[kernel];
    c.launches += add.launches;
    c.gld_requests += add.gld_requests;
    c.gld_sectors += add.gld_sectors;
    c.gld_bytes += add.gld_bytes;
    c.gst_requests += add.gst_requests;
    c.gst_sectors += add.gst_sectors;
    c.gst_bytes += add.gst_bytes;
    c.gld_footprint_sectors += add.gld_footprint_sectors;
    c.gst_footprint_sectors += add.gst_footprint_sectors;
    c.lds_requests += add.lds_requests;
    c.lds_wavefronts += add.lds_wavefronts;
    c.lds_ideal_wavefronts += add.lds_ideal_wavefronts;
    c.sts_requests += add.sts_requests;
    c.sts_wavefronts += add.sts_wavefronts;
    c.sts_ideal_wavefronts += add.sts_ideal_wavefronts;
    c.ldsm_requests += add.ldsm_requests;
    c.ldsm_wavefronts += add.ldsm_wavefronts;
    c.ldsm_ideal_wavefronts += add.ldsm_ideal_wavefronts;
    c.mma += add.mma;
    c.mma_s8 += add.mma_s8;
}

double ratio(unsigned long long a, unsigned long long b) { return b ? double(a) / double(b) : 0.0; }

void profile_launch(const char *kernel) {
    static std::once_flag at_exit;
    std::call_once(at_exit, [] { std::atexit(emu_profile_report); });
    emu_profile_counts one{};
    one.launches = 1;
    profile_add(kernel, one);
}

void profile_launch_end(const char *kernel, uint32_t launch) {
    emu_profile_counts footprint{};
    {
        ProfileTable &t = profile_table();
        std::lock_guard<std::mutex> lock(t.mu);
        auto it = t.footprints.find(launch);
        if (it == t.footprints.end()) return; // no global access
        footprint.gld_footprint_sectors = it->second.first.size();
        footprint.gst_footprint_sectors = it->second.second.size();
        t.footprints.erase(it);
    }
    profile_add(kernel, footprint);
}

// Datasheet figures for the lower bounds, the SXM parts: HBM bandwidth in bytes/s and the dense BF16
// tensor-core peak in FLOP/s (with FP32 accumulation; the datasheets' 1,979 TFLOPS is with 2:4
// sparsity, twice the dense rate).
//   H100 SXM5: 3.35 TB/s HBM3, 989.4 TFLOPS dense BF16 (NVIDIA H100 Tensor Core GPU datasheet and
//              the Hopper architecture whitepaper, table "NVIDIA H100 SXM5": 989.4/1978.9).
//   H200 SXM:  4.8 TB/s HBM3e, the same tensor cores and peak (NVIDIA H200 Tensor Core GPU datasheet:
//              1,979 TFLOPS BF16 with sparsity).
// And the dense INT8 tensor-core peak (s32 accumulation), twice the BF16 one: the datasheets' 3,958 TOPS
// INT8 (H100 SXM; H200 3,958) are with sparsity, the whitepaper's dense H100 SXM5 figure is 1,978.9.
struct GpuPeak {
    const char *name;
    double hbm_bytes_per_s, tensor_flops_per_s, tensor_int8_ops_per_s;
};
constexpr GpuPeak kGpuPeaks[] = {{"H100", 3.35e12, 989.4e12, 1978.9e12}, {"H200", 4.8e12, 989.4e12, 1978.9e12}};

} // namespace emu

extern "C" double emu_profile_lower_bound_us(const emu_profile_counts *c, const char *gpu) {
    for (const emu::GpuPeak &g : emu::kGpuPeaks)
        if (std::strcmp(gpu, g.name) == 0) {
            const double bytes = 32.0 * double(c->gld_footprint_sectors + c->gst_footprint_sectors);
            const double flops = 4096.0 * double(c->mma), int_ops = 8192.0 * double(c->mma_s8);
            const double tensor_s = flops / g.tensor_flops_per_s + int_ops / g.tensor_int8_ops_per_s;
            return 1e6 * std::max(bytes / g.hbm_bytes_per_s, tensor_s);
        }
    return -1;
}

extern "C" void emu_set_profile(int on) {
    std::lock_guard<std::mutex> lock(emu::options_mu);
    emu::profile_override = on < 0 ? -1 : on != 0;
}

extern "C" int emu_profile_get(const char *kernel, emu_profile_counts *out) {
    emu::ProfileTable &t = emu::profile_table();
    std::lock_guard<std::mutex> lock(t.mu);
    auto it = t.kernels.find(kernel);
    if (it == t.kernels.end()) return -1;
    *out = it->second;
    return 0;
}

extern "C" void emu_profile_reset(void) {
    emu::ProfileTable &t = emu::profile_table();
    std::lock_guard<std::mutex> lock(t.mu);
    t.kernels.clear();
}

extern "C" void emu_profile_report(void) {
    using emu::ratio;
    emu::ProfileTable &t = emu::profile_table();
    std::lock_guard<std::mutex> lock(t.mu);
    if (t.kernels.empty()) return;
    fprintf(stderr,
            "emu profile (counted by the emulator; docs/emulator.md, \"The profiler\"; H100/H200 >=us: lower "
            "bounds from datasheet figures, not measurements)\n"
            "%-28s %8s | %10s %8s %6s | %10s %8s %6s | %10s %8s %9s | %10s %8s %9s | %10s %8s %9s | %10s %10s | %12s "
            "%10s %10s\n",
            "kernel", "launches", "gld req", "sect/req", "ideal", "gst req", "sect/req", "ideal", "lds req", "wf/req",
            "conflicts", "sts req", "wf/req", "conflicts", "ldsm req", "wf/req", "conflicts", "mma", "mma s8", "footprint B",
            "H100 >=us", "H200 >=us");
    for (const auto &[name, c] : t.kernels)
        fprintf(stderr,
                "%-28s %8llu | %10llu %8.2f %5.0f%% | %10llu %8.2f %5.0f%% | %10llu %8.2f %9llu | %10llu %8.2f %9llu | "
                "%10llu %8.2f %9llu | %10llu %10llu | %12llu %10.3f %10.3f\n",
                name.c_str(), c.launches, c.gld_requests, ratio(c.gld_sectors, c.gld_requests),
                100 * ratio(c.gld_bytes, 32 * c.gld_sectors), c.gst_requests, ratio(c.gst_sectors, c.gst_requests),
                100 * ratio(c.gst_bytes, 32 * c.gst_sectors), c.lds_requests, ratio(c.lds_wavefronts, c.lds_requests),
                c.lds_wavefronts - c.lds_ideal_wavefronts, c.sts_requests, ratio(c.sts_wavefronts, c.sts_requests),
                c.sts_wavefronts - c.sts_ideal_wavefronts, c.ldsm_requests, ratio(c.ldsm_wavefronts, c.ldsm_requests),
                c.ldsm_wavefronts - c.ldsm_ideal_wavefronts, c.mma, c.mma_s8,
                32 * (c.gld_footprint_sectors + c.gst_footprint_sectors), emu_profile_lower_bound_us(&c, "H100"),
                emu_profile_lower_bound_us(&c, "H200"));
    const char *path = std::getenv("KILN_EMU_PROFILE_JSON");
    if (!path || !*path) return;
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "emu profile: cannot write KILN_EMU_PROFILE_JSON='%s'\n", path);
        return;
    }
    fprintf(f, "{\"kernels\": [");
    bool first = true;
    for (const auto &[name, c] : t.kernels) {
        fprintf(f,
                "%s\n  {\"name\": \"%s\", \"launches\": %llu,\n"
                "   \"global_load\": {\"requests\": %llu, \"sectors\": %llu, \"bytes\": %llu, \"ideal_bytes\": %llu, "
                "\"footprint_bytes\": %llu},\n"
                "   \"global_store\": {\"requests\": %llu, \"sectors\": %llu, \"bytes\": %llu, \"ideal_bytes\": %llu, "
                "\"footprint_bytes\": %llu},\n"
                "   \"shared_load\": {\"requests\": %llu, \"wavefronts\": %llu, \"ideal_wavefronts\": %llu, \"bank_conflicts\": %llu},\n"
                "   \"shared_store\": {\"requests\": %llu, \"wavefronts\": %llu, \"ideal_wavefronts\": %llu, \"bank_conflicts\": %llu},\n"
                "   \"ldmatrix\": {\"requests\": %llu, \"wavefronts\": %llu, \"ideal_wavefronts\": %llu, \"bank_conflicts\": %llu},\n"
                "   \"mma_m16n8k16\": {\"instructions\": %llu, \"flops\": %llu},\n"
                "   \"mma_m16n8k32_s8\": {\"instructions\": %llu, \"int_ops\": %llu},\n"
                "   \"h100_lower_bound_us\": %.6g, \"h200_lower_bound_us\": %.6g}",
                first ? "" : ",", name.c_str(), c.launches, c.gld_requests, c.gld_sectors, 32 * c.gld_sectors,
                c.gld_bytes, 32 * c.gld_footprint_sectors, c.gst_requests, c.gst_sectors, 32 * c.gst_sectors,
                c.gst_bytes, 32 * c.gst_footprint_sectors, c.lds_requests,
                c.lds_wavefronts, c.lds_ideal_wavefronts, c.lds_wavefronts - c.lds_ideal_wavefronts, c.sts_requests,
                c.sts_wavefronts, c.sts_ideal_wavefronts, c.sts_wavefronts - c.sts_ideal_wavefronts, c.ldsm_requests,
                c.ldsm_wavefronts, c.ldsm_ideal_wavefronts, c.ldsm_wavefronts - c.ldsm_ideal_wavefronts, c.mma,
                4096 * c.mma, c.mma_s8, 8192 * c.mma_s8, emu_profile_lower_bound_us(&c, "H100"), emu_profile_lower_bound_us(&c, "H200"));
        first = false;
    }
    fprintf(f, "\n]}\n");
    fclose(f);
}

// ---------------------------------------------------------------------------------------------------
// The instrumentation's entry points (what libtsan would provide). Each passes the access on to the
// running block's checker, if checks are on; the return address is the program counter in the kernel.

using emu::tl_check;

#define EMU_PC reinterpret_cast<uintptr_t>(__builtin_return_address(0))
#define EMU_HOOK(name, size, write)                                                                   \
    extern "C" void name(void *addr) {                                                                \
        if (emu::Checker *c = tl_check) c->access(reinterpret_cast<uintptr_t>(addr), size, write, false, EMU_PC, true); \
    }
#define EMU_HOOKS(size)                                                                               \
    EMU_HOOK(__tsan_read##size, size, false)                                                          \
    EMU_HOOK(__tsan_write##size, size, true)                                                          \
    EMU_HOOK(__tsan_unaligned_read##size, size, false)                                                \
    EMU_HOOK(__tsan_unaligned_write##size, size, true)                                                \
    EMU_HOOK(__tsan_volatile_read##size, size, false)                                                 \
    EMU_HOOK(__tsan_volatile_write##size, size, true)
EMU_HOOKS(1)
EMU_HOOKS(2)
EMU_HOOKS(4)
EMU_HOOKS(8)
EMU_HOOKS(16)
#undef EMU_HOOKS
#undef EMU_HOOK

extern "C" void __tsan_read_range(void *addr, size_t size) {
    if (emu::Checker *c = tl_check) c->access(reinterpret_cast<uintptr_t>(addr), size, false, false, EMU_PC, true);
}
extern "C" void __tsan_write_range(void *addr, size_t size) {
    if (emu::Checker *c = tl_check) c->access(reinterpret_cast<uintptr_t>(addr), size, true, false, EMU_PC, true);
}
extern "C" void __tsan_init() {}
extern "C" void __tsan_func_entry(void *) {}
extern "C" void __tsan_func_exit() {}

// Atomics: the operation itself (sequentially consistent, at least as strong as what was asked), seen
// by the checker as an atomic write: an atomic and a plain access of the same byte race, two atomics
// do not; an atomic on never-written shared memory is an uninitialised read.
#define EMU_ATOMICS(bits)                                                                             \
    using a##bits = uint##bits##_t;                                                                   \
    static inline void atomic_seen_##bits(volatile void *a, uintptr_t pc) {                           \
        if (emu::Checker *c = tl_check) {                                                             \
            c->access(reinterpret_cast<uintptr_t>(a), bits / 8, false, true, pc, true);               \
            c->access(reinterpret_cast<uintptr_t>(a), bits / 8, true, true, pc);                      \
        }                                                                                             \
    }                                                                                                 \
    extern "C" a##bits __tsan_atomic##bits##_load(const volatile a##bits *a, int) {                   \
        atomic_seen_##bits(const_cast<volatile a##bits *>(a), EMU_PC);                                \
        return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                  \
    }                                                                                                 \
    extern "C" void __tsan_atomic##bits##_store(volatile a##bits *a, a##bits v, int) {                \
        atomic_seen_##bits(a, EMU_PC);                                                                \
        __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                     \
    }                                                                                                 \
    extern "C" a##bits __tsan_atomic##bits##_exchange(volatile a##bits *a, a##bits v, int) {          \
        atomic_seen_##bits(a, EMU_PC);                                                                \
        return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                           \
    }                                                                                                 \
    extern "C" a##bits __tsan_atomic##bits##_fetch_add(volatile a##bits *a, a##bits v, int) {         \
        atomic_seen_##bits(a, EMU_PC);                                                                \
        return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                            \
    }                                                                                                 \
    extern "C" a##bits __tsan_atomic##bits##_fetch_sub(volatile a##bits *a, a##bits v, int) {         \
        atomic_seen_##bits(a, EMU_PC);                                                                \
        return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                            \
    }                                                                                                 \
    extern "C" a##bits __tsan_atomic##bits##_fetch_and(volatile a##bits *a, a##bits v, int) {         \
        atomic_seen_##bits(a, EMU_PC);                                                                \
        return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                            \
    }                                                                                                 \
    extern "C" a##bits __tsan_atomic##bits##_fetch_or(volatile a##bits *a, a##bits v, int) {          \
        atomic_seen_##bits(a, EMU_PC);                                                                \
        return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                             \
    }                                                                                                 \
    extern "C" a##bits __tsan_atomic##bits##_fetch_xor(volatile a##bits *a, a##bits v, int) {         \
        atomic_seen_##bits(a, EMU_PC);                                                                \
        return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                            \
    }                                                                                                 \
    extern "C" a##bits __tsan_atomic##bits##_fetch_nand(volatile a##bits *a, a##bits v, int) {        \
        atomic_seen_##bits(a, EMU_PC);                                                                \
        return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST);                                           \
    }                                                                                                 \
    extern "C" int __tsan_atomic##bits##_compare_exchange_strong(volatile a##bits *a, a##bits *expected, \
                                                                 a##bits v, int, int) {               \
        atomic_seen_##bits(a, EMU_PC);                                                                \
        return __atomic_compare_exchange_n(a, expected, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); \
    }                                                                                                 \
    extern "C" int __tsan_atomic##bits##_compare_exchange_weak(volatile a##bits *a, a##bits *expected, \
                                                               a##bits v, int, int) {                 \
        atomic_seen_##bits(a, EMU_PC);                                                                \
        return __atomic_compare_exchange_n(a, expected, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); \
    }                                                                                                 \
    extern "C" a##bits __tsan_atomic##bits##_compare_exchange_val(volatile a##bits *a, a##bits expected, \
                                                                  a##bits v, int, int) {              \
        atomic_seen_##bits(a, EMU_PC);                                                                \
        __atomic_compare_exchange_n(a, &expected, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);      \
        return expected;                                                                              \
    }
EMU_ATOMICS(8)
EMU_ATOMICS(16)
EMU_ATOMICS(32)
EMU_ATOMICS(64)
#undef EMU_ATOMICS
extern "C" void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
extern "C" void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

// ---------------------------------------------------------------------------------------------------
// The C API (emu_api.h).

extern "C" int emu_set_checks(const char *spec) {
    emu::Options probe;
    if (spec && !emu::parse_checks(spec, probe)) return -1;
    std::lock_guard<std::mutex> lock(emu::options_mu);
    emu::check_overridden = spec != nullptr;
    emu::check_spec_override = spec ? spec : "";
    return 0;
}

extern "C" int emu_set_order(const char *spec) {
    emu::Options probe;
    if (spec && !emu::parse_order(spec, probe)) return -1;
    std::lock_guard<std::mutex> lock(emu::options_mu);
    emu::order_overridden = spec != nullptr;
    emu::order_spec_override = spec ? spec : "";
    return 0;
}
