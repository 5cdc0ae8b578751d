//! The kernel files `build.rs` found in `kernels/`: each file's source (always), its kernel names,
//! and its PTX and per-architecture CUBINs (when NVRTC was there at build time).

/// One `kernels/<name>.cu`.
#[derive(Debug)]
pub struct KernelFile {
    /// The file stem: `unary` for `kernels/unary.cu`.
    pub name: &'static str,
    pub source: &'static str,
    /// Every kernel it defines (`extern "C" __global__` or `KILN_ENTRY`; see `nvrtc::kernel_names`).
    pub kernels: &'static [&'static str],
    /// PTX for the lowest architecture in [`ARCHS`], if precompiled.
    pub ptx: Option<&'static [u8]>,
    /// `(sm, cubin)` for each architecture in [`ARCHS`], if precompiled.
    pub cubins: &'static [(u32, &'static [u8])],
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Every kernel file, sorted by name.
pub fn files() -> &'static [KernelFile] {
    FILES
}

/// The file `kernels/<name>.cu`.
pub fn file(name: &str) -> Option<&'static KernelFile> {
    FILES.iter().find(|f| f.name == name)
}

/// Whether build.rs compiled the kernels with NVRTC (else the CUDA device compiles at first use).
pub fn precompiled() -> bool {
    PRECOMPILED
}

/// The architectures the CUBINs were built for (`KILN_CUDA_ARCHS`, default 80 and 90).
pub fn archs() -> &'static [u32] {
    ARCHS
}

/// The shared headers (`common.cuh`, ...) as (include name, contents).
pub fn headers() -> &'static [(&'static str, &'static str)] {
    HEADERS
}
