//! Intel AMX (Advanced Matrix Extensions, Sapphire Rapids and later), the pieces its kernels
//! share: detection, the Linux permission request, and the tile configuration. The kernels are
//! the bf16 GEMM's (`gemm/amx_bf16.rs`, `tdpbf16ps`) and the grouped quantized formats' integer
//! GEMM (`linear_quantized/amx.rs`, `tdpbssd`/`tdpbsud`).
//!
//! Eight tile registers `tmm0..tmm7` hold up to 16 rows of up to 64 bytes each; `ldtilecfg`
//! gives each its shape for the calling thread and `tilerelease` returns the state to its init
//! value. The tile data (8 KiB of state per thread) is off by default on Linux: a process asks
//! for it once with `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`; where the request fails
//! (an older kernel, another OS, a sandbox) [`available`] is false and the callers run their
//! AVX-512 kernels instead.

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

/// The tile products a kernel issues, each its own CPUID bit next to AMX-TILE's.
#[derive(Clone, Copy)]
pub(super) enum AmxOp {
    /// `tdpbssd`/`tdpbsud`/..., 8-bit integers into i32 (CPUID.7.0:EDX bit 25).
    Int8,
    /// `tdpbf16ps`, bf16 pairs into f32 (CPUID.7.0:EDX bit 22).
    Bf16,
}

/// Whether this CPU has AMX-TILE and `op`'s products, the OS saves the tile state (XCR0 bits 17
/// and 18), and this process was granted the tile data; checked, and the permission requested,
/// once per process.
pub(super) fn available(op: AmxOp) -> bool {
    static AVAILABLE: OnceLock<[bool; 2]> = OnceLock::new();
    let [int8, bf16] = *AVAILABLE.get_or_init(|| {
        // SAFETY: detection reads CPUID and XCR0 only after checking that they exist.
        let cpu = unsafe { cpu_has_amx() };
        if cpu == [false; 2] || !request_tile_data() {
            return [false; 2];
        }
        cpu
    });
    match op {
        AmxOp::Int8 => int8,
        AmxOp::Bf16 => bf16,
    }
}

/// `[AMX-INT8, AMX-BF16]`: CPUID leaf 7's AMX-TILE (EDX bit 24) with AMX-INT8 (bit 25) or
/// AMX-BF16 (bit 22), and XCR0's tile state (bits 17, 18: XTILECFG, XTILEDATA).
///
/// # Safety
/// None beyond x86-64: `cpuid` exists on every x86-64 CPU, and `xgetbv` is run only where CPUID
/// reports OSXSAVE.
#[target_feature(enable = "xsave")]
unsafe fn cpu_has_amx() -> [bool; 2] {
    if __cpuid(0).eax < 7 {
        return [false; 2];
    }
    let edx = __cpuid_count(7, 0).edx;
    let osxsave = __cpuid(1).ecx & (1 << 27) != 0;
    if edx & (1 << 24) == 0 || !osxsave {
        return [false; 2];
    }
    // SAFETY: OSXSAVE is set, so xgetbv is enabled.
    let xcr0 = unsafe { _xgetbv(0) };
    if xcr0 & (3 << 17) != 3 << 17 {
        return [false; 2];
    }
    [edx & (1 << 25) != 0, edx & (1 << 22) != 0]
}

/// Asks Linux for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`,
/// granted for the whole process); false elsewhere or if refused.
fn request_tile_data() -> bool {
    #[cfg(target_os = "linux")]
    {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with this request only changes the process's permitted xsave
        // features; it reads and writes no memory of ours.
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// The 64-byte operand of `ldtilecfg`: palette 1, and per tile its bytes per row (u16 at 16 + 2t)
/// and rows (u8 at 48 + t); tiles not named are unused (0 × 0).
#[repr(C, align(64))]
pub(super) struct TileConfig([u8; 64]);

impl TileConfig {
    /// Palette 1 with tile `t` of `rows` rows of `bytes` bytes for each `(t, rows, bytes)`
    /// (`t < 8`, `rows <= 16`, `bytes <= 64`, as `ldtilecfg` requires).
    pub(super) const fn new(tiles: &[(usize, usize, usize)]) -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut i = 0;
        while i < tiles.len() {
            let (t, rows, bytes) = tiles[i];
            assert!(t < 8 && rows <= 16 && bytes <= 64);
            c[16 + 2 * t] = bytes as u8;
            c[48 + t] = rows as u8;
            i += 1;
        }
        TileConfig(c)
    }

    /// Configures the tiles of the calling thread; they are released when the returned guard
    /// is dropped (panics included), so no configured tile state outlives the kernel.
    ///
    /// # Safety
    /// [`available`] is true for the products the caller will issue.
    pub(super) unsafe fn load(&self) -> LoadedTiles {
        // SAFETY: the tiles may be used (caller's contract); the configuration is a valid
        // palette 1 (checked in `new`), 64 readable bytes.
        unsafe { asm!("ldtilecfg [{}]", in(reg) self.0.as_ptr(), options(nostack, readonly)) };
        LoadedTiles(std::marker::PhantomData)
    }
}

/// The tiles of the calling thread, configured by [`TileConfig::load`] until this is dropped
/// (not `Send`: the configuration belongs to the thread).
pub(super) struct LoadedTiles(std::marker::PhantomData<*const ()>);

impl Drop for LoadedTiles {
    fn drop(&mut self) {
        // SAFETY: releases the tile state this thread configured (`load` ran, so AMX is usable).
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}
