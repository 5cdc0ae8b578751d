// emu_runtime.cpp — the emulator's scheduler: fibers, barriers, warp collectives, fault recovery, and
// the pool of OS threads that runs blocks.
//
// == Blocks and fibers ==
// A launch's blocks are handed out one at a time (an atomic counter) to a few OS threads: the launching
// thread itself plus helper threads (emu_num_workers() in all). An OS thread runs one block at a time,
// start to finish, so a block's `static thread_local` __shared__ variables are private to it. A block
// never moves to another OS thread halfway either: compiled kernel code may keep the address of a
// thread_local (a __shared__ array, threadIdx) in a register across a switch.
//
// Within a block every CUDA thread is a fiber, and one fiber runs at a time. A fiber is a stack
// (256 KiB, a guard page below it, allocated once per OS thread and reused for every block) plus a
// saved context; switching costs a few nanoseconds (a dozen instructions of assembly saving the
// callee-saved registers, the stack pointer, MXCSR and the x87 control word; no system call, unlike
// swapcontext, which remains the fallback on other architectures). Fibers are not bound to threads:
// a fiber runs `fiber_entry`, which starts the block's next unstarted thread, runs it to its end, then
// starts the next one, and so on. Only a thread that must wait keeps its fiber; the scheduler then
// continues on a fresh fiber. So a kernel without barriers or warp collectives runs its whole block on
// one fiber with no switch at all, and a block needs as many stacks as it has threads waiting at once.
//
// == Waiting ==
// A thread waits at __syncthreads() or at a warp collective (shuffle, vote, __syncwarp, __activemask).
// It records why, and switches to the next fiber to run: a fiber whose wait has ended (a FIFO run
// queue), else a fresh fiber for the next unstarted thread, else the scheduler context (the OS
// thread's own stack), which then has nothing left to run: the block is finished or stuck.
//
// Barrier: arrivals are counted; the arrival that completes the count (every thread of the block)
// releases the others onto the run queue and carries on without switching. All arrivals must be at
// the same __syncthreads() call (file and line) and of the same kind (_count/_and/_or). Any thread that
// exits while a barrier is pending, or any arrival after a thread exited, makes the barrier impossible:
// that is reported at once, naming the threads.
//
// Warp collectives: the lanes of a warp are the 32 consecutive linear thread ids, as on the GPU. Each
// lane posts its value and arguments in its warp's slot and waits until every lane named in its mask has
// arrived at a collective of the same kind with the same mask (lanes whose masks overlap must agree, or
// it is an error); the last one to arrive computes every participant's result, wakes the others and
// carries on. Nothing is block-wide and nothing assumes lock step: lanes of one warp may be in
// different collectives with disjoint masks. Shuffles follow PTX's shfl.sync definition exactly
// (segments of `width` lanes, clamping); a shuffle whose mask names a lane that has exited (or does not
// exist, in a partial last warp), or that reads a lane outside its mask, is an error. Votes and
// __syncwarp, like PTX's vote.sync / bar.warp.sync, wait only for lanes that have not exited, so an
// exit can complete them. __activemask() returns the lanes converged with the caller: those that reach
// the same __activemask() call; it is answered when all live lanes of the warp are there, or else once
// the whole block can make no other progress.
//
// When nothing is runnable and threads are still waiting, the block is deadlocked; the error lists which
// threads wait where. No error ever aborts the process: the block's state is abandoned (its fibers are
// simply never resumed, their stacks reused by the next block) and emu_launch returns the message.
//
// == The checker ==
// emu_check.cpp sees every load and store of the kernels (they are compiled with g++'s thread-sanitizer
// instrumentation, whose hooks it implements). The scheduler tells it where the block stands: block
// start and end (check_block_begin/end), each completed barrier (check_barrier) and warp collective
// (check_warp_sync), and each thread exit (check_thread_exit). KILN_EMU_ORDER permutes the order in
// which threads start and leave a barrier (set_thread_order, thread_at).
//
// == Faults ==
// A kernel's out-of-bounds access hits a guard page (emu_memory.cpp, dynamic shared memory, fiber
// stacks) and raises SIGSEGV; an integer division by zero raises SIGFPE. The handler, on an alternate
// signal stack, checks whether this OS thread is running a kernel; if so it records what happened and
// siglongjmps to run_blocks() on the same OS thread, abandoning the block's fibers where they stand
// (like every error, the launch fails and later launches are unaffected); the address is then
// described relative to the known buffers. Faults outside kernels go to the handler that was
// installed before ours (Rust's stack-overflow handler, the sanitizer's, or the default action).
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <csetjmp>
#include <cstdarg>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#if defined(__x86_64__) && !defined(EMU_USE_UCONTEXT)
#define EMU_ASM_SWITCH 1
#else
#define EMU_ASM_SWITCH 0
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#else
#define EMU_ASAN 0
#endif

#include "emu.h" // after the system headers: it defines __noinline__
#include "emu_internal.h"

namespace emu {
namespace {

constexpr unsigned kMaxThreads = EMU_MAX_THREADS_PER_BLOCK;
constexpr unsigned kMaxWarps = kMaxThreads / 32;
static_assert((kMaxThreads & (kMaxThreads - 1)) == 0, "the run queue ring needs a power-of-two size");
constexpr size_t kFiberStackBytes = 256 * 1024;
constexpr size_t kAltStackBytes = 64 * 1024;

// ---------------------------------------------------------------------------------------------------
// Execution contexts.

void fiber_entry(void *fiber);

struct Ctx {
#if EMU_ASM_SWITCH
    void *sp = nullptr; // the saved stack pointer; everything else is saved on that stack
#else
    ucontext_t uc;
#endif
    char *stack_lo = nullptr; // bounds of the stack this context runs on (for ASan's fiber support)
    size_t stack_size = 0;
};

} // namespace
} // namespace emu

#if EMU_ASM_SWITCH
// emu_ctx_switch(save, load): pushes the callee-saved registers and the FP control words (all the state
// the SysV ABI says survives a call) on the current stack, stores the stack pointer in *save, loads
// `load` as the stack pointer and pops the same state from there. It returns into whatever code last
// called emu_ctx_switch on that stack, or, for a fresh stack prepared by ctx_init, into the trampoline.
// Loading MXCSR and the x87 control word is slow (it costs more than all the rest), and they almost
// never differ between fibers, so they are only loaded when the saved values differ from the current.
//
// emu_ctx_trampoline: the first code a fresh fiber runs; ctx_init left the function in r12 and its
// argument in r13. `.cfi_undefined rip` marks the outermost frame, so debuggers' backtraces stop here.
extern "C" void emu_ctx_switch(void **save_sp, void *load_sp);
extern "C" void emu_ctx_trampoline();
asm(R"(
    .pushsection .text
    .p2align 4
    .globl emu_ctx_switch
    .hidden emu_ctx_switch
    .type emu_ctx_switch, @function
emu_ctx_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movl (%rsp), %eax
    movzwl 4(%rsp), %ecx
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    cmpl (%rsp), %eax
    jne 2f
    cmpw 4(%rsp), %cx
    jne 2f
1:
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
2:
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    jmp 1b
    .size emu_ctx_switch, .-emu_ctx_switch

    .p2align 4
    .globl emu_ctx_trampoline
    .hidden emu_ctx_trampoline
    .type emu_ctx_trampoline, @function
emu_ctx_trampoline:
    .cfi_startproc
    .cfi_undefined rip
    movq %r13, %rdi
    callq *%r12
    ud2
    .cfi_endproc
    .size emu_ctx_trampoline, .-emu_ctx_trampoline
    .popsection
)");
#endif

namespace emu {
namespace {

#if EMU_ASM_SWITCH
// Lays out, at the top of the context's stack, the frame emu_ctx_switch pops: control words, r15..rbp
// (r12 = fiber_entry, r13 = its argument) and the return address (the trampoline). The frame starts
// 16-byte aligned so that the trampoline's call enters fiber_entry with the ABI's stack alignment.
void ctx_init(Ctx &c, void *arg, uint32_t mxcsr, uint16_t fpucw) {
    const uintptr_t top = (reinterpret_cast<uintptr_t>(c.stack_lo) + c.stack_size) & ~uintptr_t(15);
    uint64_t *f = reinterpret_cast<uint64_t *>(top - 80);
    f[0] = mxcsr | (uint64_t(fpucw) << 32);
    f[1] = 0;                                                 // r15
    f[2] = 0;                                                 // r14
    f[3] = reinterpret_cast<uint64_t>(arg);                   // r13
    f[4] = reinterpret_cast<uint64_t>(&fiber_entry);          // r12
    f[5] = 0;                                                 // rbx
    f[6] = 0;                                                 // rbp
    f[7] = reinterpret_cast<uint64_t>(&emu_ctx_trampoline);   // return address
    f[8] = f[9] = 0;
    c.sp = f;
}
inline void raw_switch(Ctx &from, Ctx &to) { emu_ctx_switch(&from.sp, to.sp); }
#else
void ucontext_entry(unsigned lo, unsigned hi) {
    fiber_entry(reinterpret_cast<void *>((uintptr_t(hi) << 32) | lo)); // makecontext passes ints only
}
void ctx_init(Ctx &c, void *arg, uint32_t, uint16_t) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = c.stack_lo;
    c.uc.uc_stack.ss_size = c.stack_size;
    c.uc.uc_link = nullptr;
    const uintptr_t a = reinterpret_cast<uintptr_t>(arg);
    makecontext(&c.uc, reinterpret_cast<void (*)()>(&ucontext_entry), 2, unsigned(a), unsigned(uint64_t(a) >> 32));
}
inline void raw_switch(Ctx &from, Ctx &to) { swapcontext(&from.uc, &to.uc); }
#endif

// Switches from the running context to `to`. `from_done`: `from` will never be resumed (its fiber
// finished or was abandoned), which AddressSanitizer wants to know to drop its bookkeeping.
inline void ctx_switch(Ctx &from, Ctx &to, bool from_done) {
#if EMU_ASAN
    void *fake_stack = nullptr;
    __sanitizer_start_switch_fiber(from_done ? nullptr : &fake_stack, to.stack_lo, to.stack_size);
    raw_switch(from, to);
    __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#else
    (void)from_done;
    raw_switch(from, to);
#endif
}

// ---------------------------------------------------------------------------------------------------
// The kernel registry.

struct KernelInfo {
    std::string name;
    emu_thunk thunk;
    std::atomic<size_t> max_dyn_smem; // set by emu_func_set_max_dynamic_smem while others may launch
};

struct KernelRegistry {
    std::mutex mu;
    std::unordered_map<std::string, std::unique_ptr<KernelInfo>> by_name;
};

KernelRegistry &kernel_registry() {
    static KernelRegistry *r = new KernelRegistry; // never destroyed: registration runs in static init
    return *r;
}

const KernelInfo *find_kernel(const char *name) {
    KernelRegistry &r = kernel_registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.by_name.find(name);
    return it == r.by_name.end() ? nullptr : it->second.get();
}

// ---------------------------------------------------------------------------------------------------
// Per-OS-thread state: the fiber pool and the state of the block being run.

struct Fiber {
    Ctx ctx;
    void *map;       // the mapping: one guard page, then kFiberStackBytes of stack
    unsigned thread; // linear id of the CUDA thread it holds while that thread waits
};

enum class TState : uint8_t { NotStarted, Running, AtBarrier, InCollective, InActiveMask, Exited };

// A thread's record. Starting a thread only sets `state`; the rest is written when it starts to wait
// (suspend()), since a thread that never waits needs none of it: keeping the per-thread work of the
// common case small is what makes a plain elementwise kernel cheap.
struct ThreadState {
    TState state;
    Fiber *fiber;     // while waiting: the fiber holding it
    uint3 tid;        // while waiting: its threadIdx, restored when it resumes
    const char *file; // while waiting: where
    int line;
};

// One warp's rendezvous slot. Bit i of each mask is lane i. Per-lane arrays hold what each waiting lane
// posted, and the result the completing lane computed for it.
struct WarpState {
    uint32_t exists;    // lanes that exist (a partial last warp has fewer than 32)
    uint32_t exited;
    uint32_t in_coll;   // lanes waiting in a shuffle, vote or __syncwarp
    uint32_t in_active; // lanes waiting in __activemask
    // True when all of in_coll wait in one collective, group_kind with group_mask: the usual case, in
    // which an arrival is checked against the waiting lanes in O(1) instead of lane by lane.
    bool uniform;
    Collective group_kind;
    uint32_t group_mask;
    Collective kind[32];
    uint32_t mask[32];
    int32_t arg[32];
    int32_t width[32];
    uint64_t value[32];
    uint64_t result[32];
};

struct BlockState {
    // Fixed for a launch.
    const KernelInfo *kernel;
    void **args;
    dim3 dim;
    unsigned n;      // threads per block
    unsigned nwarps;
    // Per block.
    uint3 idx;
    unsigned next_start; // how many threads have started; the next to start is thread_at(next_start)
    bool forward;        // threads start (and resume after a barrier) in thread order: thread_at(i) == i
    unsigned order[kMaxThreads]; // otherwise, thread_at(i) == order[i] (KILN_EMU_ORDER)
    uint64_t rng;                // KILN_EMU_ORDER=random and interleave: the block's generator state
    unsigned exited;
    unsigned fresh;      // fibers of the pool handed out so far in this block
    unsigned bar_count;  // arrivals at the pending barrier
    unsigned bar_acc;    // predicate count of the pending barrier
    unsigned bar_result; // predicate count of the last completed barrier
    Barrier bar_kind;
    const char *bar_file;
    int bar_line;
    unsigned rq_head, rq_tail; // run queue of fibers whose wait has ended (FIFO ring)
    Fiber *runq[kMaxThreads];  // each thread is queued at most once, so kMaxThreads slots suffice
    bool failed;
    std::string error;
    std::string list; // scratch for lane_list / thread_list
    Ctx sched; // the OS thread's own stack, where run_block waits for the block to finish or stick
    ThreadState thr[kMaxThreads];
    WarpState warps[kMaxWarps];
};

struct WorkerState {
    BlockState block;
    Options opt;                      // the launch's checks and thread order
    Checker *check = checker_new();   // the checker's state for this OS thread (emu_check.cpp)
    std::vector<Fiber *> fibers;
    Fiber *fiber = nullptr; // the running fiber
    unsigned cur = 0;       // linear id of the running CUDA thread
    // Dynamic shared memory: a region as large as the device allows, followed by a guard page; a
    // launch's buffer is placed to end (16-byte rounded) at the guard.
    char *smem_map = nullptr;
    size_t smem_map_len = 0;
    char *smem_guard = nullptr;
    size_t smem_bytes = 0;
    uint32_t mxcsr = 0x1f80; // FP control words fresh fibers start with: the launching thread's
    uint16_t fpucw = 0x037f;
    // Fault recovery. in_kernel is set while this OS thread runs a block; the signal handler only
    // claims a fault when it is, and then jumps to jb (armed in run_blocks).
    volatile sig_atomic_t in_kernel = 0;
    sigjmp_buf jb;
    int fault_sig = 0, fault_code = 0, fault_write = -1;
    uintptr_t fault_addr = 0;
    void *altstack = nullptr; // the alternate signal stack, if we installed it

    WorkerState();
    ~WorkerState();
};

// initial-exec: the signal handler reads it, and this model needs no allocation on first access.
thread_local WorkerState *tl_ws __attribute__((tls_model("initial-exec"))) = nullptr;
thread_local std::unique_ptr<WorkerState> tl_ws_owner; // frees it when the OS thread exits

WorkerState::WorkerState() {
    const size_t ps = page_size();
    smem_map_len = round_up(EMU_MAX_DYNAMIC_SMEM_BYTES, ps) + ps;
    void *m = mmap(nullptr, smem_map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        fprintf(stderr, "emu: cannot map dynamic shared memory\n");
        abort();
    }
    smem_map = static_cast<char *>(m);
    smem_guard = smem_map + smem_map_len - ps;
    mprotect(smem_guard, ps, PROT_NONE);

    // A fiber stack overflow faults with no stack left to run the handler on, so the handler needs an
    // alternate stack. Keep one the thread already has (Rust installs its own on its threads).
    stack_t cur{};
    sigaltstack(nullptr, &cur);
    if (cur.ss_flags & SS_DISABLE) {
        void *s = mmap(nullptr, kAltStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (s != MAP_FAILED) {
            stack_t ss{};
            ss.ss_sp = s;
            ss.ss_size = kAltStackBytes;
            if (sigaltstack(&ss, nullptr) == 0) altstack = s;
            else munmap(s, kAltStackBytes);
        }
    }

    // The scheduler context runs on this thread's own stack; ASan needs its bounds.
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        void *lo = nullptr;
        size_t size = 0;
        pthread_attr_getstack(&attr, &lo, &size);
        block.sched.stack_lo = static_cast<char *>(lo);
        block.sched.stack_size = size;
        pthread_attr_destroy(&attr);
    }
}

// Fiber stacks of OS threads that have exited, for the next thread to adopt: a Rust test harness runs
// each test on a new thread, and mapping hundreds of stacks for each would cost more than the test.
struct FiberBank {
    std::mutex mu;
    std::vector<Fiber *> spare;
};

FiberBank &fiber_bank() {
    static FiberBank *bank = new FiberBank; // never destroyed: threads may exit during process exit
    return *bank;
}

WorkerState::~WorkerState() {
    FiberBank &bank = fiber_bank();
    std::lock_guard<std::mutex> lock(bank.mu);
    for (Fiber *f : fibers) {
#if EMU_ASAN
        // Stale redzones of frames that never returned must not follow the stack to its next owner.
        __asan_unpoison_memory_region(f->ctx.stack_lo, f->ctx.stack_size);
#endif
        bank.spare.push_back(f);
    }
    munmap(smem_map, smem_map_len);
    checker_delete(check);
    if (altstack) {
        stack_t off{};
        off.ss_flags = SS_DISABLE;
        sigaltstack(&off, nullptr);
        munmap(altstack, kAltStackBytes);
    }
}

WorkerState &worker_state() {
    if (!tl_ws) {
        tl_ws_owner.reset(new WorkerState);
        tl_ws = tl_ws_owner.get();
    }
    return *tl_ws;
}

// The state of the OS thread running the calling kernel thread.
WorkerState &current_worker() {
    WorkerState *ws = tl_ws;
    if (!ws || !ws->in_kernel) {
        fprintf(stderr, "emu: a CUDA synchronisation intrinsic was called outside a kernel launch\n");
        abort();
    }
    return *ws;
}

// Another stack for this OS thread's pool: one left by an exited thread, or a new mapping with a guard
// page (an overflow faults instead of running into other memory) and kFiberStackBytes above it.
Fiber *new_fiber(WorkerState &ws) {
    Fiber *f = nullptr;
    {
        FiberBank &bank = fiber_bank();
        std::lock_guard<std::mutex> lock(bank.mu);
        if (!bank.spare.empty()) {
            f = bank.spare.back();
            bank.spare.pop_back();
        }
    }
    if (!f) {
        const size_t ps = page_size();
        void *m = mmap(nullptr, kFiberStackBytes + ps, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
        if (m == MAP_FAILED) return nullptr;
        mprotect(m, ps, PROT_NONE);
        f = new Fiber{};
        f->map = m;
        f->ctx.stack_lo = static_cast<char *>(m) + ps;
    }
    // Stagger the stack tops by a few cache lines: otherwise the busy top frames of hundreds of fibers
    // would all sit at the same page offset and fight over the same few L1 cache sets.
    const size_t color = (ws.fibers.size() % 32) * 128;
    f->ctx.stack_size = kFiberStackBytes - color;
    ws.fibers.push_back(f);
    return f;
}

// The next unused fiber of the pool for this block, set to start in fiber_entry; null if out of memory.
Fiber *fresh_fiber(WorkerState &ws) {
    BlockState &b = ws.block;
    Fiber *f = b.fresh < ws.fibers.size() ? ws.fibers[b.fresh] : new_fiber(ws);
    if (!f) return nullptr;
    ++b.fresh;
#if EMU_ASAN
    // Frames of fibers that never returned (finished fibers' last frames, or a failed block's whole
    // stacks) leave their redzones poisoned; this stack starts afresh.
    __asan_unpoison_memory_region(f->ctx.stack_lo, f->ctx.stack_size);
#endif
    ctx_init(f->ctx, f, ws.mxcsr, ws.fpucw);
    return f;
}

// ---------------------------------------------------------------------------------------------------
// Messages.

std::string vformat(const char *fmt, va_list ap) {
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    return buf;
}

std::string format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::string s = vformat(fmt, ap);
    va_end(ap);
    return s;
}

// "thread 3", "threads 0..15, 20": the ids below `count` for which pred holds, as ranges (at most 8).
template <typename Pred>
std::string id_list(const char *noun, unsigned count, Pred pred) {
    std::string out;
    unsigned listed = 0, runs = 0;
    for (unsigned i = 0; i < count; ++i) {
        if (!pred(i)) continue;
        unsigned j = i;
        while (j + 1 < count && pred(j + 1)) ++j;
        if (runs == 8) {
            out += ", ...";
            listed += 2; // (only for the plural below)
            break;
        }
        out += (runs ? ", " : "") + (i == j ? std::to_string(i) : std::to_string(i) + ".." + std::to_string(j));
        listed += j - i + 1;
        ++runs;
        i = j;
    }
    return std::string(noun) + (listed == 1 ? " " : "s ") + out;
}

// These two are for messages passed to fail(), which never returns: a std::string temporary in its
// arguments would never be destroyed, so they return a buffer owned by the block state instead.
const char *lane_list(BlockState &b, uint32_t bits) {
    b.list = id_list("lane", 32, [bits](unsigned i) { return (bits >> i) & 1u; });
    return b.list.c_str();
}

const char *thread_list(BlockState &b, TState s) {
    b.list = id_list("thread", b.n, [&b, s](unsigned i) { return b.thr[i].state == s; });
    return b.list.c_str();
}

// Names the kernel, the block and the running thread.
std::string where(const BlockState &b) {
    const uint3 i = b.idx, d = tl_ids.thread_idx;
    return format("kernel '%s' block (%u,%u,%u) thread (%u,%u,%u)", b.kernel->name.c_str(), i.x, i.y, i.z, d.x, d.y,
                  d.z);
}

const char *collective_name(Collective k) {
    switch (k) {
    case Collective::SyncWarp: return "__syncwarp";
    case Collective::ShflIdx: return "__shfl_sync";
    case Collective::ShflUp: return "__shfl_up_sync";
    case Collective::ShflDown: return "__shfl_down_sync";
    case Collective::ShflXor: return "__shfl_xor_sync";
    case Collective::Ballot: return "__ballot_sync";
    case Collective::Any: return "__any_sync";
    case Collective::All: return "__all_sync";
    case Collective::ActiveMask: return "__activemask";
    }
    return "?";
}

const char *barrier_name(Barrier k) {
    switch (k) {
    case Barrier::Sync: return "__syncthreads()";
    case Barrier::Count: return "__syncthreads_count()";
    case Barrier::And: return "__syncthreads_and()";
    case Barrier::Or: return "__syncthreads_or()";
    }
    return "?";
}

bool is_shuffle(Collective k) {
    return k == Collective::ShflIdx || k == Collective::ShflUp || k == Collective::ShflDown || k == Collective::ShflXor;
}

bool same_site(const char *f1, int l1, const char *f2, int l2) {
    return l1 == l2 && (f1 == f2 || std::strcmp(f1, f2) == 0);
}

// Ends the block with an error from inside a fiber: records the message (naming the running thread and
// the call site, if given) and switches to the scheduler for good.
[[noreturn]] void fail_v(WorkerState &ws, const char *file, int line, const char *fmt, va_list ap) {
    BlockState &b = ws.block;
    b.error = where(b) + (file ? format(" at %s:%d", file, line) : std::string()) + ": " + vformat(fmt, ap);
    b.failed = true;
    ctx_switch(ws.fiber->ctx, b.sched, true);
    __builtin_unreachable();
}

[[noreturn]] void fail(WorkerState &ws, const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
[[noreturn]] void fail(WorkerState &ws, const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fail_v(ws, file, line, fmt, ap);
}

// ---------------------------------------------------------------------------------------------------
// The scheduler.

// The thread that starts i-th (and is released i-th from a barrier).
inline unsigned thread_at(const BlockState &b, unsigned i) { return b.forward ? i : b.order[i]; }

// The next number of the block's generator (splitmix64).
inline uint64_t next_random(BlockState &b) {
    uint64_t z = (b.rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Sets the order in which block number `index`'s threads start (KILN_EMU_ORDER): thread order,
// reversed, or a permutation drawn from the seed and the block's index (random, and interleave, which
// also switches threads at memory accesses: interleave_point).
void set_thread_order(BlockState &b, const Options &opt, uint64_t index) {
    b.forward = opt.order == Order::Forward;
    if (b.forward) return;
    for (unsigned i = 0; i < b.n; ++i) b.order[i] = opt.order == Order::Reverse ? b.n - 1 - i : i;
    if (opt.order == Order::Reverse) return;
    b.rng = opt.seed ^ (index * 0x9e3779b97f4a7c15ull);
    for (unsigned i = b.n - 1; i > 0; --i) { // Fisher-Yates
        const unsigned j = static_cast<unsigned>(next_random(b) % (i + 1));
        const unsigned tmp = b.order[i];
        b.order[i] = b.order[j];
        b.order[j] = tmp;
    }
}

inline void make_runnable(BlockState &b, unsigned t) {
    b.thr[t].state = TState::Running;
    b.runq[b.rq_tail++ & (kMaxThreads - 1)] = b.thr[t].fiber;
}

// Leaves the running fiber (for good, if `done`) and runs the next one: a woken fiber, else a fresh one
// for the next unstarted thread, else the scheduler context. Returns when the fiber is resumed.
void switch_away(WorkerState &ws, bool done) {
    BlockState &b = ws.block;
    Fiber *const self = ws.fiber;
    Ctx *next = &b.sched;
    if (b.rq_head != b.rq_tail) {
        next = &b.runq[b.rq_head++ & (kMaxThreads - 1)]->ctx;
    } else if (b.next_start < b.n) {
        if (Fiber *f = fresh_fiber(ws)) {
            next = &f->ctx;
        } else {
            b.error = format("kernel '%s' block (%u,%u,%u): out of memory for fiber stacks", b.kernel->name.c_str(),
                             b.idx.x, b.idx.y, b.idx.z);
            b.failed = true;
            done = true;
        }
    }
    ctx_switch(self->ctx, *next, done);
    // Resumed: make this fiber and the emulated thread it holds the current ones again.
    const ThreadState &ts = b.thr[self->thread];
    ws.fiber = self;
    ws.cur = self->thread;
    tl_ids.thread_idx.x = ts.tid.x;
    tl_ids.thread_idx.y = ts.tid.y;
    tl_ids.thread_idx.z = ts.tid.z;
}

// Records the running thread's threadIdx and fiber, for switch_away to restore when it resumes.
void park(WorkerState &ws, unsigned t) {
    ThreadState &ts = ws.block.thr[t];
    ts.fiber = ws.fiber;
    ts.tid.x = tl_ids.thread_idx.x;
    ts.tid.y = tl_ids.thread_idx.y;
    ts.tid.z = tl_ids.thread_idx.z;
    ws.fiber->thread = t;
}

// Makes the running thread wait (`why`, at file:line) until make_runnable() is called for it.
void suspend(WorkerState &ws, TState why, const char *file, int line) {
    const unsigned t = ws.cur;
    ThreadState &ts = ws.block.thr[t];
    ts.state = why;
    ts.file = file;
    ts.line = line;
    park(ws, t);
    switch_away(ws, false);
}

// Computes the results of a complete warp collective for the participating lanes `group`, and wakes
// them all but `self_lane`: the lane that completed it, calling from file:line, or -1 when an exit
// completed it.
void complete_collective(WorkerState &ws, unsigned warp, uint32_t group, Collective kind, int self_lane,
                         const char *file, int line) {
    BlockState &b = ws.block;
    WarpState &w = b.warps[warp];
    uint32_t ballot = 0;
    for (uint32_t m = group; m; m &= m - 1) {
        const unsigned i = __builtin_ctz(m);
        if (w.value[i]) ballot |= 1u << i;
    }
    for (uint32_t m = group; m; m &= m - 1) {
        const unsigned lane = __builtin_ctz(m);
        switch (kind) {
        case Collective::SyncWarp: w.result[lane] = 0; break;
        case Collective::Ballot: w.result[lane] = ballot; break;
        case Collective::Any: w.result[lane] = ballot != 0; break;
        case Collective::All: w.result[lane] = ballot == group; break;
        default: {
            // PTX ISA, shfl.sync: CUDA's intrinsics pass c = ((32 - width) << 8) | clamp, with clamp 0
            // for .up and 31 otherwise; bval is the lane operand's low 5 bits. A lane whose computed
            // source falls outside its segment reads its own value.
            const int segmask = (32 - w.width[lane]) & 31;
            const int clamp = kind == Collective::ShflUp ? 0 : 31;
            const int l = static_cast<int>(lane);
            const int bval = w.arg[lane] & 31;
            const int max_lane = (l & segmask) | (clamp & ~segmask);
            const int min_lane = l & segmask;
            int j = 0;
            bool in_range = false;
            switch (kind) {
            case Collective::ShflUp: j = l - bval; in_range = j >= max_lane; break;
            case Collective::ShflDown: j = l + bval; in_range = j <= max_lane; break;
            case Collective::ShflXor: j = l ^ bval; in_range = j <= max_lane; break;
            default: j = min_lane | (bval & ~segmask); in_range = j <= max_lane; break;
            }
            if (!in_range) j = l;
            const bool self = l == self_lane;
            if (!((group >> j) & 1u))
                fail(ws, self ? file : b.thr[warp * 32 + lane].file, self ? line : b.thr[warp * 32 + lane].line,
                     "%s(mask 0x%08x): lane %u of warp %u reads lane %d, which is not in the mask "
                     "(the value would be undefined on the GPU)",
                     collective_name(kind), w.mask[lane], lane, warp, j);
            w.result[lane] = w.value[j];
        }
        }
    }
    check_warp_sync(ws.check, warp, group);
    w.in_coll &= ~group;
    if (!w.uniform && w.in_coll) { // another collective still waits: is it the only one now?
        const unsigned first = __builtin_ctz(w.in_coll);
        w.uniform = true;
        w.group_kind = w.kind[first];
        w.group_mask = w.mask[first];
        for (uint32_t m = w.in_coll; m; m &= m - 1) {
            const unsigned j = __builtin_ctz(m);
            w.uniform = w.uniform && w.kind[j] == w.group_kind && w.mask[j] == w.group_mask;
        }
    }
    for (uint32_t m = group; m; m &= m - 1) {
        const unsigned lane = __builtin_ctz(m);
        if (static_cast<int>(lane) != self_lane) make_runnable(b, warp * 32 + lane);
    }
}

// Answers __activemask() for `group`, lanes waiting at the same call, and wakes them but `self_lane`.
void resolve_active_mask(BlockState &b, unsigned warp, uint32_t group, int self_lane) {
    WarpState &w = b.warps[warp];
    w.in_active &= ~group;
    for (uint32_t m = group; m; m &= m - 1) {
        const unsigned lane = __builtin_ctz(m);
        w.result[lane] = group;
        if (static_cast<int>(lane) != self_lane) make_runnable(b, warp * 32 + lane);
    }
}

// The lanes of in_active that wait at the same __activemask() call as `lane`.
uint32_t same_call_lanes(const BlockState &b, unsigned warp, unsigned lane) {
    const WarpState &w = b.warps[warp];
    const ThreadState &me = b.thr[warp * 32 + lane];
    uint32_t group = 0;
    for (uint32_t m = w.in_active; m; m &= m - 1) {
        const unsigned j = __builtin_ctz(m);
        const ThreadState &o = b.thr[warp * 32 + j];
        if (same_site(me.file, me.line, o.file, o.line)) group |= 1u << j;
    }
    return group;
}

unsigned long long active_mask(WorkerState &ws, const char *file, int line) {
    BlockState &b = ws.block;
    const unsigned t = ws.cur, warp = t >> 5, lane = t & 31;
    WarpState &w = b.warps[warp];
    ThreadState &ts = b.thr[t];
    ts.file = file; // same_call_lanes compares call sites
    ts.line = line;
    w.in_active |= 1u << lane;
    const uint32_t live = w.exists & ~w.exited;
    if (same_call_lanes(b, warp, lane) == live) { // the whole live warp is here: answer now
        resolve_active_mask(b, warp, live, static_cast<int>(lane));
        return live;
    }
    suspend(ws, TState::InActiveMask, file, line);
    return w.result[lane];
}

// Called by the scheduler when the block cannot progress: answers every pending __activemask() with the
// lanes at the same call. Returns whether it woke anyone.
bool resolve_pending_active_masks(BlockState &b) {
    bool woke = false;
    for (unsigned warp = 0; warp < b.nwarps; ++warp) {
        while (b.warps[warp].in_active) {
            const unsigned lane = __builtin_ctz(b.warps[warp].in_active);
            resolve_active_mask(b, warp, same_call_lanes(b, warp, lane), -1);
            woke = true;
        }
    }
    return woke;
}

// Thread t exited while a barrier is pending or lanes of its warp wait in a collective.
void exited_while_others_wait(WorkerState &ws, unsigned t) {
    BlockState &b = ws.block;
    const unsigned warp = t >> 5;
    const uint32_t bit = 1u << (t & 31);
    WarpState &w = b.warps[warp];
    if (b.bar_count)
        fail(ws, nullptr, 0, "exited while %s wait at %s (%s:%d), which can therefore never complete",
             thread_list(b, TState::AtBarrier), barrier_name(b.bar_kind), b.bar_file, b.bar_line);
    for (uint32_t m = w.in_coll; m; m &= m - 1) {
        const unsigned j = __builtin_ctz(m);
        if (!((w.in_coll >> j) & 1u) || !(w.mask[j] & bit)) continue; // (completed by this loop already)
        const ThreadState &o = b.thr[warp * 32 + j];
        if (is_shuffle(w.kind[j]))
            fail(ws, nullptr, 0, "exited while lane %u of warp %u waits in %s(mask 0x%08x) at %s:%d, whose mask names it",
                 j, warp, collective_name(w.kind[j]), w.mask[j], o.file, o.line);
        // Votes and __syncwarp wait only for lanes that have not exited, so this exit may complete one.
        const uint32_t need = w.mask[j] & w.exists & ~w.exited;
        if ((w.in_coll & need) == need) complete_collective(ws, warp, need, w.kind[j], -1, nullptr, 0);
    }
}

inline void thread_exited(WorkerState &ws, unsigned t) {
    check_thread_exit(ws.check, t); // its cp.async copies land
    BlockState &b = ws.block;
    b.thr[t].state = TState::Exited;
    ++b.exited;
    WarpState &w = b.warps[t >> 5];
    w.exited |= 1u << (t & 31);
    if (__builtin_expect(b.bar_count != 0 || w.in_coll != 0, 0)) exited_while_others_wait(ws, t);
}

// Every fiber runs this: it starts the block's next unstarted thread and runs it to its end, then the
// next, until none is left. A thread that waits keeps this fiber, and another fiber goes on starting.
void fiber_entry(void *arg) {
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
    WorkerState &ws = *tl_ws;
    BlockState &b = ws.block;
    ws.fiber = static_cast<Fiber *>(arg);
    const emu_thunk thunk = b.kernel->thunk;
    // threadIdx of thread t, kept in registers and stepped along: a division per thread, or reading it
    // back from memory right after writing it, would cost as much as the rest of starting a thread.
    unsigned x = 0, y = 0, z = 0, t_next = ~0u;
    while (b.next_start < b.n) {
        const unsigned t = thread_at(b, b.next_start++);
        if (t != t_next) { // first thread of this fiber, or others were started while it waited
            x = t % b.dim.x;
            y = t / b.dim.x % b.dim.y;
            z = t / (b.dim.x * b.dim.y);
        }
        b.thr[t].state = TState::Running;
        tl_ids.thread_idx.x = x;
        tl_ids.thread_idx.y = y;
        tl_ids.thread_idx.z = z;
        if (++x == b.dim.x) {
            x = 0;
            if (++y == b.dim.y) {
                y = 0;
                ++z;
            }
        }
        t_next = t + 1;
        ws.cur = t;
        thunk(b.args);
        thread_exited(ws, t);
    }
    switch_away(ws, true);
    __builtin_unreachable();
}

// Everything is waiting and nothing can wake anything: describe who waits where.
void diagnose_deadlock(BlockState &b) {
    std::string what;
    std::vector<bool> done(b.n, false);
    for (unsigned t = 0; t < b.n; ++t) {
        if (done[t]) continue;
        const ThreadState &s = b.thr[t];
        const WarpState &w = b.warps[t >> 5];
        auto same = [&](unsigned u) {
            const ThreadState &o = b.thr[u];
            if (o.state != s.state) return false;
            if (s.state == TState::Exited || s.state == TState::Running || s.state == TState::NotStarted) return true;
            if (!same_site(o.file, o.line, s.file, s.line)) return false;
            if (s.state != TState::InCollective) return true;
            const WarpState &ow = b.warps[u >> 5];
            return ow.kind[u & 31] == w.kind[t & 31] && ow.mask[u & 31] == w.mask[t & 31];
        };
        std::string desc;
        switch (s.state) {
        case TState::Exited: desc = "exited"; break;
        case TState::AtBarrier: desc = format("waiting at %s at %s:%d", barrier_name(b.bar_kind), s.file, s.line); break;
        case TState::InCollective:
            desc = format("waiting in %s(mask 0x%08x) at %s:%d", collective_name(w.kind[t & 31]), w.mask[t & 31], s.file,
                          s.line);
            break;
        case TState::InActiveMask: desc = format("waiting in __activemask() at %s:%d", s.file, s.line); break;
        case TState::Running: desc = "runnable"; break;
        case TState::NotStarted: desc = "not started"; break; // (cannot happen: fresh fibers start them)
        }
        what += (what.empty() ? "" : "; ") +
                id_list("thread", b.n, [&](unsigned u) { return u >= t && !done[u] && same(u); }) + ": " + desc;
        for (unsigned u = t; u < b.n; ++u)
            if (!done[u] && same(u)) done[u] = true;
    }
    b.error = format("kernel '%s' block (%u,%u,%u): deadlock, no thread can proceed: %s", b.kernel->name.c_str(), b.idx.x,
                     b.idx.y, b.idx.z, what.c_str());
    b.failed = true;
}

// ---------------------------------------------------------------------------------------------------
// Launches.

struct Launch {
    const KernelInfo *kernel;
    emu_dim3 grid, block;
    size_t dyn_smem;
    void **args;
    Options opt;
    unsigned nthreads;
    uint64_t nblocks;
    uint32_t number; // this launch's number: 1, 2, ... (the checker's races between blocks)
    std::atomic<uint64_t> next{0}; // the next block index to hand out
    std::atomic<bool> failed{false};
    std::mutex error_mu;
    std::string error;
    int helpers = 0; // helper threads inside run_blocks for this launch; guarded by Pool::mu

    void fail(const std::string &msg) {
        std::lock_guard<std::mutex> lock(error_mu);
        if (!failed.load(std::memory_order_relaxed)) {
            error = msg;
            failed.store(true, std::memory_order_relaxed);
        }
    }
};

void prepare_launch(WorkerState &ws, const Launch &L) {
    BlockState &b = ws.block;
    b.kernel = L.kernel;
    b.args = L.args;
    b.dim = dim3(L.block.x, L.block.y, L.block.z);
    b.n = L.nthreads;
    b.nwarps = (b.n + 31) / 32;
    for (unsigned w = 0; w < b.nwarps; ++w) {
        const unsigned lanes = b.n - w * 32 < 32 ? b.n - w * 32 : 32;
        b.warps[w].exists = lanes == 32 ? ~0u : (1u << lanes) - 1u;
    }
    tl_ids.block_dim = b.dim;
    tl_ids.grid_dim = dim3(L.grid.x, L.grid.y, L.grid.z);
    ws.smem_bytes = L.dyn_smem;
    tl_ids.dyn_smem = reinterpret_cast<unsigned char *>(ws.smem_guard - round_up(L.dyn_smem, 16));
    ws.opt = L.opt;
    const unsigned grid[3] = {L.grid.x, L.grid.y, L.grid.z};
    check_launch_begin(ws.check, L.kernel->name.c_str(), L.opt, L.block.x, L.block.y, tl_ids.dyn_smem, L.dyn_smem, &ws.cur,
                       L.number, grid);
#if defined(__x86_64__)
    __asm__ volatile("stmxcsr %0" : "=m"(ws.mxcsr));
    __asm__ volatile("fnstcw %0" : "=m"(ws.fpucw));
#endif
}

// Runs block number `index` of the launch on this OS thread. Returns false (with b.error set) on error.
bool run_block(WorkerState &ws, const Launch &L, uint64_t index) {
    BlockState &b = ws.block;
    const uint64_t gx = L.grid.x, gy = L.grid.y;
    b.idx = uint3{static_cast<unsigned>(index % gx), static_cast<unsigned>(index / gx % gy),
                  static_cast<unsigned>(index / (gx * gy))};
    tl_ids.block_idx = b.idx;
    b.next_start = 0;
    b.exited = 0;
    b.fresh = 0;
    b.bar_count = 0;
    b.rq_head = b.rq_tail = 0;
    b.failed = false;
    for (unsigned w = 0; w < b.nwarps; ++w) b.warps[w].exited = b.warps[w].in_coll = b.warps[w].in_active = 0;
    for (unsigned t = 0; t < b.n; ++t) b.thr[t].state = TState::NotStarted;
    set_thread_order(b, ws.opt, index);
    check_block_begin(ws.check, b.n, index);
    if (ws.smem_bytes) std::memset(tl_ids.dyn_smem, 0xFF, ws.smem_bytes); // fresh shared memory is garbage

    Fiber *first = fresh_fiber(ws);
    if (!first) {
        b.error = format("kernel '%s': out of memory for fiber stacks", b.kernel->name.c_str());
        return false;
    }
    ws.in_kernel = 1;
    ctx_switch(b.sched, first->ctx, false);
    // Back here when no fiber can run: the block is done, failed, or waits for something.
    while (!b.failed && b.exited < b.n) {
        if (!resolve_pending_active_masks(b)) {
            diagnose_deadlock(b);
            break;
        }
        Fiber *next = b.runq[b.rq_head++ & (kMaxThreads - 1)];
        ctx_switch(b.sched, next->ctx, false);
    }
    ws.in_kernel = 0;
    check_block_end(ws.check);
    return !b.failed;
}

std::string describe_fault(WorkerState &ws) {
    BlockState &b = ws.block;
    const uintptr_t a = ws.fault_addr;
    const size_t ps = page_size();
    const char *access = ws.fault_write < 0 ? "access" : (ws.fault_write ? "write" : "read");
    std::string what;
    const uintptr_t guard = reinterpret_cast<uintptr_t>(ws.smem_guard);
    if (ws.fault_sig == SIGFPE) {
        what = ws.fault_code == FPE_INTDIV ? "integer division by zero (or INT_MIN / -1), which traps on the CPU "
                                             "and gives an undefined result on the GPU"
                                           : "arithmetic exception";
    } else if (ws.fault_sig == SIGILL) {
        what = "illegal instruction (a __builtin_trap() or __builtin_unreachable() was reached)";
    } else if (ws.fault_sig == SIGSEGV && ws.fault_code == SI_KERNEL) {
        what = "general protection fault (no address reported), typically a misaligned 16-byte vector access "
               "(float4, int4, ...) or a corrupt pointer";
    } else if (a >= guard && a < guard + ps) {
        const uintptr_t start = reinterpret_cast<uintptr_t>(tl_ids.dyn_smem);
        what = format("out of bounds %s at byte offset %zu of the %zu-byte dynamic shared memory (%zu bytes past its end)",
                      access, size_t(a - start), ws.smem_bytes, size_t(a - start - ws.smem_bytes));
    } else {
        for (Fiber *f : ws.fibers) {
            const uintptr_t lo = reinterpret_cast<uintptr_t>(f->map);
            if (a >= lo && a < lo + ps)
                what = format("stack overflow: the thread used up its %zu KiB fiber stack", kFiberStackBytes / 1024);
        }
        if (what.empty()) what = describe_buffer_address(a, access);
        if (what.empty())
            what = a < 65536 ? format("null pointer %s (address 0x%zx)", access, size_t(a))
                             : format("invalid %s at address 0x%zx, which is not in or next to any emulator buffer",
                                      access, size_t(a));
    }
    if (ws.fault_sig == SIGBUS) what = "bus error: " + what;
    return where(b) + ": " + what;
}

// Where a kernel fault lands (from run_blocks, on the OS thread's own stack): fail the launch.
__attribute__((noinline)) void recover_from_fault(WorkerState &ws, Launch &L) {
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
#if defined(__x86_64__)
    // Leaving the handler by a jump skips the kernel's restore of the FP state; restore ours.
    __asm__ volatile("ldmxcsr %0" : : "m"(ws.mxcsr));
    __asm__ volatile("fldcw %0" : : "m"(ws.fpucw));
#endif
    check_block_end(ws.check);
    L.fail(describe_fault(ws));
}

// Claims and runs blocks of the launch until none are left or the launch has failed.
__attribute__((noinline)) void run_claimed_blocks(WorkerState &ws, Launch &L) {
    while (!L.failed.load(std::memory_order_relaxed)) {
        const uint64_t i = L.next.fetch_add(1, std::memory_order_relaxed);
        if (i >= L.nblocks) break;
        if (!run_block(ws, L, i)) {
            L.fail(ws.block.error);
            break;
        }
    }
}

// Runs blocks of the launch on this OS thread until none are left or the launch has failed. The work is
// in separate functions so that no local variable here lives across the sigsetjmp.
void run_blocks(Launch &L) {
    WorkerState &ws = worker_state();
    prepare_launch(ws, L);
    // A kernel fault lands here, through the signal handler's siglongjmp: the block's fibers are
    // abandoned where they stand, and the launch fails.
    if (sigsetjmp(ws.jb, 0) != 0) {
        recover_from_fault(ws, L);
        return;
    }
    run_claimed_blocks(ws, L);
}

// ---------------------------------------------------------------------------------------------------
// Fault handling.

// The signals a kernel's bug can raise, and the handlers that were installed before ours.
constexpr int kFaultSignals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL};
struct sigaction g_prev_action[sizeof kFaultSignals / sizeof kFaultSignals[0]];

void on_fault(int sig, siginfo_t *si, void *uctx) {
    WorkerState *ws = tl_ws;
    if (ws && ws->in_kernel) {
        ws->in_kernel = 0;
        ws->fault_sig = sig;
        ws->fault_code = si->si_code;
        ws->fault_addr = reinterpret_cast<uintptr_t>(si->si_addr);
        ws->fault_write = -1;
#if defined(__x86_64__)
        // Bit 1 of the page-fault error code says whether the access was a write.
        if (sig == SIGSEGV && si->si_code != SI_KERNEL)
            ws->fault_write = (static_cast<ucontext_t *>(uctx)->uc_mcontext.gregs[REG_ERR] & 2) ? 1 : 0;
#endif
#if EMU_ASAN
        __sanitizer_start_switch_fiber(nullptr, ws->block.sched.stack_lo, ws->block.sched.stack_size);
#endif
        siglongjmp(ws->jb, 1);
    }
    // Not ours: hand it to whoever handled it before.
    size_t i = 0;
    while (kFaultSignals[i] != sig) ++i;
    struct sigaction &prev = g_prev_action[i];
    if (prev.sa_flags & SA_SIGINFO) {
        prev.sa_sigaction(sig, si, uctx);
    } else if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN) {
        prev.sa_handler(sig);
    } else {
        sigaction(sig, &prev, nullptr); // returning re-runs the faulting instruction: default action
    }
}

void install_fault_handlers() {
    struct sigaction sa{};
    sa.sa_sigaction = on_fault;
    sigemptyset(&sa.sa_mask);
    // SA_ONSTACK: a fiber stack overflow leaves no stack to run on. SA_NODEFER: the handler leaves by
    // siglongjmp without restoring the signal mask (sigsetjmp(jb, 0) avoids a system call per launch),
    // so the signal must not be blocked while it runs, or the next fault would kill the process.
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    for (size_t i = 0; i < sizeof kFaultSignals / sizeof kFaultSignals[0]; ++i)
        sigaction(kFaultSignals[i], &sa, &g_prev_action[i]);
}

// ---------------------------------------------------------------------------------------------------
// The helper threads. Launches with more than one block are posted to `open`; idle helpers pick the
// first one with blocks left and run blocks beside the launching thread.

struct Pool {
    std::mutex mu;
    std::condition_variable work; // a launch was posted
    std::condition_variable done; // a helper left a launch
    std::vector<Launch *> open;
    unsigned workers = 1;         // OS threads running blocks, the launching thread included
};

void helper_loop(Pool *p) {
    std::unique_lock<std::mutex> lock(p->mu);
    for (;;) {
        Launch *L = nullptr;
        p->work.wait(lock, [&] {
            for (Launch *c : p->open)
                if (c->next.load(std::memory_order_relaxed) < c->nblocks && !c->failed.load(std::memory_order_relaxed)) {
                    L = c;
                    return true;
                }
            return false;
        });
        ++L->helpers;
        lock.unlock();
        run_blocks(*L);
        lock.lock();
        if (--L->helpers == 0) p->done.notify_all();
    }
}

// Workers asked for by emu_set_num_workers before the pool starts; 0 for one per hardware thread.
std::atomic<unsigned> requested_workers{0};

Pool &pool() {
    static Pool *p = [] {
        install_fault_handlers();
        Pool *np = new Pool; // never destroyed: helpers may still be parked in it during exit
        const unsigned n = requested_workers.load() ? requested_workers.load() : std::thread::hardware_concurrency();
        np->workers = n ? n : 1;
        for (unsigned i = 1; i < np->workers; ++i) std::thread(helper_loop, np).detach();
        return np;
    }();
    return *p;
}

int launch_error(char *err, size_t err_len, const std::string &msg) {
    if (err && err_len) snprintf(err, err_len, "%s", msg.c_str());
    return 1;
}

} // namespace

// ---------------------------------------------------------------------------------------------------
// Entry points from kernels (declared in emu.h).

int block_barrier(Barrier kind, int predicate, const char *file, int line) {
    WorkerState &ws = current_worker();
    BlockState &b = ws.block;
    const unsigned t = ws.cur;
    if (b.exited)
        fail(ws, file, line, "reached %s, but %s already exited; every thread of a block must reach each barrier",
             barrier_name(kind), thread_list(b, TState::Exited));
    if (b.bar_count == 0) {
        b.bar_kind = kind;
        b.bar_file = file;
        b.bar_line = line;
        b.bar_acc = 0;
    } else if (kind != b.bar_kind || !same_site(file, line, b.bar_file, b.bar_line)) {
        fail(ws, file, line, "reached %s while %s wait at %s at %s:%d; every thread of a block must reach the same barrier",
             barrier_name(kind), thread_list(b, TState::AtBarrier), barrier_name(b.bar_kind), b.bar_file,
             b.bar_line);
    }
    b.bar_acc += predicate != 0;
    if (++b.bar_count == b.n) {
        // The last arrival: release everyone else (in thread order) and carry on. The result stays
        // valid for the woken threads: the next barrier cannot complete before each of them arrives.
        b.bar_result = b.bar_acc;
        b.bar_count = 0;
        check_barrier(ws.check);
        for (unsigned i = 0; i < b.n; ++i)
            if (thread_at(b, i) != t) make_runnable(b, thread_at(b, i));
    } else {
        suspend(ws, TState::AtBarrier, file, line);
    }
    switch (kind) {
    case Barrier::Count: return static_cast<int>(b.bar_result);
    case Barrier::And: return b.bar_result == b.n;
    case Barrier::Or: return b.bar_result != 0;
    case Barrier::Sync: break;
    }
    return 0;
}

unsigned long long warp_collective(Collective kind, unsigned mask, unsigned long long value, int lane_arg, int width,
                                   const char *file, int line) {
    WorkerState &ws = current_worker();
    if (kind == Collective::ActiveMask) return active_mask(ws, file, line);
    BlockState &b = ws.block;
    const unsigned t = ws.cur, warp = t >> 5, lane = t & 31;
    const uint32_t bit = 1u << lane;
    WarpState &w = b.warps[warp];
    if (!(mask & bit))
        fail(ws, file, line, "%s(mask 0x%08x): the mask does not include the calling lane %u", collective_name(kind),
             mask, lane);
    if (is_shuffle(kind)) {
        const char *name = collective_name(kind);
        if (width < 1 || width > 32 || (width & (width - 1)))
            fail(ws, file, line, "%s: width %d is not a power of two between 1 and 32", name, width);
        if (mask & ~w.exists)
            fail(ws, file, line, "%s(mask 0x%08x) names %s of warp %u, which do not exist (the block has %u threads)",
                 name, mask, lane_list(b, mask & ~w.exists), warp, b.n);
        if (mask & w.exited)
            fail(ws, file, line, "%s(mask 0x%08x) names %s of warp %u, which have exited", name, mask,
                 lane_list(b, mask & w.exited), warp);
    }
    // Lanes already waiting whose collective involves this lane, or is named by its mask, must be in
    // the very same collective. When all waiting lanes are in one collective and it is this one, that
    // holds without looking at them one by one.
    if (w.in_coll == 0) {
        w.uniform = true;
        w.group_kind = kind;
        w.group_mask = mask;
    } else if (!w.uniform || w.group_kind != kind || w.group_mask != mask) {
        for (uint32_t m = w.in_coll; m; m &= m - 1) {
            const unsigned j = __builtin_ctz(m);
            if (!((mask >> j) & 1u) && !(w.mask[j] & bit)) continue;
            if (w.kind[j] != kind || w.mask[j] != mask) {
                const ThreadState &o = b.thr[warp * 32 + j];
                fail(ws, file, line,
                     "%s(mask 0x%08x) while lane %u of warp %u waits in %s(mask 0x%08x) at %s:%d; lanes named in "
                     "each other's masks must execute the same warp collective with the same mask",
                     collective_name(kind), mask, j, warp, collective_name(w.kind[j]), w.mask[j], o.file, o.line);
            }
        }
        w.uniform = false;
    }
    w.kind[lane] = kind;
    w.mask[lane] = mask;
    w.value[lane] = value;
    w.arg[lane] = lane_arg;
    w.width[lane] = width;
    w.in_coll |= bit;
    const uint32_t need = mask & w.exists & ~w.exited;
    if ((w.in_coll & need) == need) complete_collective(ws, warp, need, kind, static_cast<int>(lane), file, line);
    else suspend(ws, TState::InCollective, file, line);
    return w.result[lane];
}

void interleave_point() {
    WorkerState &ws = current_worker();
    BlockState &b = ws.block;
    const uint64_t r = next_random(b);
    if (r & 1) return; // about every other access switches
    const unsigned queued = b.rq_tail - b.rq_head;
    const bool unstarted = b.next_start < b.n;
    if (!queued && !unstarted) return; // nobody else can run
    Fiber *const self = ws.fiber;
    Fiber *next = nullptr;
    if (queued && (!unstarted || (r & 2))) { // resume a waiting thread, drawn at random from the queue
        const unsigned k = (b.rq_head + static_cast<unsigned>((r >> 8) % queued)) & (kMaxThreads - 1);
        next = b.runq[k];
        b.runq[k] = b.runq[b.rq_head++ & (kMaxThreads - 1)];
    } else if (!(next = fresh_fiber(ws))) { // or start the next thread
        return;
    }
    const unsigned t = ws.cur;
    park(ws, t);
    b.runq[b.rq_tail++ & (kMaxThreads - 1)] = self; // (still Running: it only steps aside)
    ctx_switch(self->ctx, next->ctx, false);
    const ThreadState &ts = b.thr[t];
    ws.fiber = self;
    ws.cur = t;
    tl_ids.thread_idx.x = ts.tid.x;
    tl_ids.thread_idx.y = ts.tid.y;
    tl_ids.thread_idx.z = ts.tid.z;
}

void check_fail(const char *fmt, ...) {
    WorkerState &ws = current_worker();
    check_block_end(ws.check); // the checker stops looking: formatting the message touches memory too
    va_list ap;
    va_start(ap, fmt);
    fail_v(ws, nullptr, 0, fmt, ap);
}

void kernel_fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    WorkerState *ws = tl_ws;
    if (!ws || !ws->in_kernel) {
        fprintf(stderr, "emu: %s:%d: ", file, line);
        vfprintf(stderr, fmt, ap);
        fprintf(stderr, " (outside a kernel launch)\n");
        abort();
    }
    fail_v(*ws, file, line, fmt, ap);
}

} // namespace emu

// ---------------------------------------------------------------------------------------------------
// The C API (emu_api.h).

using namespace emu;

extern "C" int emu_register(const char *name, emu_thunk thunk) {
    if (!name || !*name || !thunk) return -1;
    KernelRegistry &r = kernel_registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto inserted = r.by_name.emplace(name, std::unique_ptr<KernelInfo>(
                                                new KernelInfo{name, thunk, {EMU_DEFAULT_DYNAMIC_SMEM_BYTES}}));
    if (!inserted.second && inserted.first->second->thunk != thunk) {
        fprintf(stderr, "emu: two different kernels are registered as '%s'; keeping the first\n", name);
        return -1;
    }
    return 0; // registering the same thunk again is harmless (static init and the host may both do it)
}

extern "C" int emu_func_set_max_dynamic_smem(const char *name, size_t bytes) {
    KernelRegistry &r = kernel_registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.by_name.find(name ? name : "");
    if (it == r.by_name.end() || bytes > EMU_MAX_DYNAMIC_SMEM_BYTES) return -1;
    it->second->max_dyn_smem = bytes;
    return 0;
}

extern "C" unsigned emu_num_workers(void) { return pool().workers; }

extern "C" void emu_set_num_workers(unsigned n) { requested_workers.store(n); }

extern "C" int emu_launch(const char *name, emu_dim3 grid, emu_dim3 block, size_t dyn_smem_bytes, void **args, char *err,
                          size_t err_len) {
    Pool &p = pool();
    if (tl_ws && tl_ws->in_kernel)
        return launch_error(err, err_len, "emu_launch called from inside a kernel (dynamic parallelism is not emulated)");
    const KernelInfo *k = find_kernel(name ? name : "");
    if (!k) return launch_error(err, err_len, format("no kernel named '%s' is registered with the emulator", name ? name : "(null)"));
    const std::string shape = format("kernel '%s': launch with grid (%u,%u,%u) and block (%u,%u,%u)", k->name.c_str(),
                                     grid.x, grid.y, grid.z, block.x, block.y, block.z);
    const uint64_t threads = uint64_t(block.x) * block.y * block.z;
    if (!grid.x || !grid.y || !grid.z || !threads)
        return launch_error(err, err_len, shape + ": every dimension must be at least 1");
    if (threads > EMU_MAX_THREADS_PER_BLOCK || block.x > 1024 || block.y > 1024 || block.z > 64)
        return launch_error(err, err_len, shape + format(": %llu threads per block; the limits are 1024 threads, "
                                                         "and 1024 x 1024 x 64 per dimension",
                                                         static_cast<unsigned long long>(threads)));
    if (grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
        return launch_error(err, err_len, shape + ": the grid limits are 2^31-1 x 65535 x 65535 blocks");
    const size_t max_dyn = k->max_dyn_smem.load(std::memory_order_relaxed);
    if (dyn_smem_bytes > max_dyn)
        return launch_error(err, err_len,
                            shape + format(" asks for %zu bytes of dynamic shared memory, over the kernel's limit of %zu%s",
                                           dyn_smem_bytes, max_dyn,
                                           dyn_smem_bytes <= EMU_MAX_DYNAMIC_SMEM_BYTES
                                               ? " (raise it with cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES), "
                                                 "emu_func_set_max_dynamic_smem here)"
                                               : " (the device maximum is 227 KiB)"));

    std::string opt_error;
    const Options opts = options(&opt_error);
    if (!opt_error.empty()) return launch_error(err, err_len, shape + ": " + opt_error);

    Launch L;
    L.kernel = k;
    L.grid = grid;
    L.block = block;
    L.dyn_smem = dyn_smem_bytes;
    L.args = args;
    L.opt = opts;
    L.nthreads = static_cast<unsigned>(threads);
    L.nblocks = uint64_t(grid.x) * grid.y * grid.z;
    static std::atomic<uint32_t> launches{0};
    L.number = launches.fetch_add(1, std::memory_order_relaxed) + 1;
    if (L.number == ~0u) L.number = launches.fetch_add(2, std::memory_order_relaxed) + 2; // never 0 or ~0
    if (opts.profile) profile_launch(k->name.c_str());
    const bool shared = L.nblocks > 1 && p.workers > 1;
    if (shared) {
        {
            std::lock_guard<std::mutex> lock(p.mu);
            p.open.push_back(&L);
        }
        if (L.nblocks - 1 >= p.workers - 1) p.work.notify_all();
        else
            for (uint64_t i = 1; i < L.nblocks; ++i) p.work.notify_one();
    }
    run_blocks(L);
    if (shared) {
        std::unique_lock<std::mutex> lock(p.mu);
        for (size_t i = 0; i < p.open.size(); ++i)
            if (p.open[i] == &L) p.open.erase(p.open.begin() + static_cast<long>(i));
        p.done.wait(lock, [&] { return L.helpers == 0; });
    }
    if (opts.profile) profile_launch_end(k->name.c_str(), L.number);
    if (L.failed.load()) return launch_error(err, err_len, L.error);
    return 0;
}
