//! Allocator tuning for the CPU backend's workload (glibc only).

/// Keeps freed memory in the process for the next allocation instead of handing it back to
/// the system (glibc's `mallopt`; elsewhere a no-op). A training step frees and reallocates
/// the same few hundred activation buffers every step; by default glibc returns large freed
/// blocks to the kernel, so every step faults their pages in again and zeroes them (measured
/// on the GPT step: 470k page faults in 33 steps, about a quarter of its CPU time). Called
/// by the training loop; idempotent. The cost: the process keeps its peak heap. Buffers above
/// glibc's largest mmap threshold (32 MiB), which it would unmap anyway, are kept by the CPU
/// backend's buffer pool from then on (`pool::retain_large`: at most 8 of them, 2 GiB in all).
pub fn retain_freed_memory() {
    super::pool::retain_large();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // glibc's malloc.h: M_TRIM_THRESHOLD -1, M_TOP_PAD -2, M_MMAP_THRESHOLD -3.
            extern "C" {
                fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
            }
            // SAFETY: mallopt only changes allocator tunables; glibc serialises it against
            // concurrent allocation with its own lock, and every value is in its valid range
            // (the mmap threshold at most HEAP_MAX_SIZE / 2 = 32 MiB on 64-bit).
            unsafe {
                mallopt(-1, 1 << 30); // trim the heap's top only past 1 GiB free
                mallopt(-2, 16 << 20); // grow the heap 16 MiB at a time
                mallopt(-3, 32 << 20); // serve blocks below 32 MiB from the heap, not fresh mmaps
            }
        });
    }
}
