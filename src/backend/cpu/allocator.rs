//! Allocator tuning for the CPU backend's workload: glibc's tunables, and huge pages for large
//! buffers (Linux).

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

/// The size of a huge page: the unit in which [`advise_huge_pages`] asks for them.
pub(crate) const HUGE_PAGE: usize = 2 << 20;

/// The whole huge pages inside `bytes` bytes at address `start`: (first address, length), a
/// multiple of [`HUGE_PAGE`] each, or `None` when no aligned huge page fits.
pub(crate) fn huge_page_interior(start: usize, bytes: usize) -> Option<(usize, usize)> {
    let first = start.checked_next_multiple_of(HUGE_PAGE)?;
    let end = start.checked_add(bytes)? / HUGE_PAGE * HUGE_PAGE;
    (end > first).then(|| (first, end - first))
}

/// Asks the kernel to back the whole huge pages inside `bytes` bytes at `ptr` with huge pages
/// (Linux's transparent huge pages, `MADV_HUGEPAGE`: honoured in the default `madvise` mode and
/// in `always`, ignored in `never`; elsewhere a no-op). Called on a buffer before its pages are
/// first written, so that they fault in as 2 MiB pages, not 4 KiB ones. Why: a decode step reads
/// every weight once, hundreds of MB a token, and in 4 KiB pages each page's first line waits
/// for a page walk and the hardware prefetcher stops at each page's end; a bf16 SmolLM2-135M
/// decode step was 6–16% shorter with its weights in huge pages when the machine's memory was at
/// its fastest (docs/perf.md). Only for buffers read over and over: on a virtual machine a huge
/// page's first write can cost milliseconds (the host backs it then), and advising every large
/// buffer put 6 s more system time into a 3-step GPT-2 training benchmark (2.8 GB faulted in as
/// huge pages) for no shorter step. The advice changes no value in the buffer; a failure (no THP
/// support) is ignored.
pub(crate) fn advise_huge_pages(ptr: *const u8, bytes: usize) {
    #[cfg(target_os = "linux")]
    if let Some((first, len)) = huge_page_interior(ptr as usize, bytes) {
        // SAFETY: madvise with MADV_HUGEPAGE only sets a flag on the mappings of this range, all
        // inside the caller's buffer (whole pages: `first` and `len` are multiples of 2 MiB); it
        // moves no memory and changes no byte, and its error (EINVAL without THP) is harmless.
        unsafe {
            libc::madvise(first as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interior_is_the_whole_aligned_huge_pages_of_a_buffer() {
        let h = HUGE_PAGE;
        assert_eq!(huge_page_interior(0, 2 * h), Some((0, 2 * h)));
        assert_eq!(huge_page_interior(16, 2 * h), Some((h, h)));
        assert_eq!(huge_page_interior(16, 2 * h - 16), Some((h, h)));
        assert_eq!(huge_page_interior(16, 2 * h - 17), None);
        assert_eq!(huge_page_interior(h - 4096, 3 * h + 4096), Some((h, 3 * h)));
        assert_eq!(huge_page_interior(4096, h), None);
        assert_eq!(huge_page_interior(usize::MAX - 10, 100), None);
    }

    /// A buffer for huge pages lies in a mapping the kernel may back with them (`THPeligible: 1`
    /// in /proc/self/smaps), where transparent huge pages are on.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_buffer_for_huge_pages_is_eligible_for_them_where_the_kernel_has_them() {
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
        if !mode.contains("[always]") && !mode.contains("[madvise]") {
            eprintln!(
                "transparent huge pages are off here ({}): nothing to check",
                mode.trim()
            );
            return;
        }
        let v = super::super::alloc::filled_in_huge_pages("test", 4 * HUGE_PAGE / 4, 0f32).unwrap();
        let (first, _) = huge_page_interior(v.as_ptr() as usize, 4 * HUGE_PAGE).unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        // the mapping that holds `first`: its header line "start-end perms ..." and its fields
        let mut eligible = None;
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line
                .split_once(' ')
                .filter(|(r, _)| r.contains('-') && !r.ends_with(':'))
            {
                let (a, b) = range.split_once('-').unwrap();
                let (a, b) = (
                    usize::from_str_radix(a, 16).unwrap_or(0),
                    usize::from_str_radix(b, 16).unwrap_or(0),
                );
                inside = (a..b).contains(&first);
            } else if inside {
                if let Some(value) = line.strip_prefix("THPeligible:") {
                    eligible = Some(value.trim().to_string());
                }
            }
        }
        assert_eq!(
            eligible.as_deref(),
            Some("1"),
            "the buffer's mapping in /proc/self/smaps (THP {})",
            mode.trim()
        );
    }
}
