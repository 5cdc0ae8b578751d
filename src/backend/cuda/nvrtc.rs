//! Finding and running NVRTC, the CUDA runtime compiler. Shared, as source, by `build.rs` (which
//! compiles every `kernels/*.cu` when NVRTC is there at build time) and by the CUDA device (which
//! compiles the embedded sources at first use when it was not). So this file uses only `std`,
//! `libloading` and `cudarc::nvrtc`.
//!
//! Where NVRTC is looked for, in order:
//! 1. `KILN_NVRTC`: the path of `libnvrtc.so.12` itself;
//! 2. `CUDA_HOME` / `CUDA_PATH`: a toolkit, `lib64/` or `lib/`;
//! 3. `<repo>/.cuda/`, which `scripts/setup-cuda.sh` fills from the pinned PyPI wheels;
//! 4. the system's library search path (`LD_LIBRARY_PATH`, ldconfig), as cudarc looks by default.
//!
//! cudarc's dynamic loading opens NVRTC by library *name*. Loading our file by *path* first makes
//! that name resolve to it: the dynamic loader matches a requested name against the soname of
//! libraries already loaded (`libnvrtc.so.12`), so no `LD_LIBRARY_PATH` is needed.
//!
//! Headers (`cuda_bf16.h`, `cuda_fp16.h`) come from `KILN_CUDA_INCLUDE`, the toolkit's `include/`,
//! or the runtime wheel in `.cuda/`.

#![allow(dead_code)] // build.rs uses a different subset than the library

use std::ffi::{c_char, CString};
use std::path::{Path, PathBuf};

/// The wheel layout under `.cuda/` (see scripts/setup-cuda.sh).
const WHEEL_NVRTC: &str = "nvidia/cuda_nvrtc/lib/libnvrtc.so.12";
const WHEEL_INCLUDE: &str = "nvidia/cuda_runtime/include";
const WHEEL_PTXAS: &str = "nvidia/cuda_nvcc/bin/ptxas";

/// A loaded NVRTC and the include folder to compile against.
pub struct Nvrtc {
    /// The library file, or `None` when it came from the system search path.
    pub library: Option<PathBuf>,
    pub include: Option<PathBuf>,
    pub version: (i32, i32),
}

/// The output of one compilation.
pub struct Compiled {
    pub ptx: Vec<u8>,
    pub cubin: Vec<u8>,
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Candidate NVRTC library files, most specific first.
fn library_candidates(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = env_path("KILN_NVRTC") {
        out.push(p);
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = env_path(var) {
            for lib in ["lib64", "lib"] {
                for name in ["libnvrtc.so.12", "libnvrtc.so"] {
                    out.push(root.join(lib).join(name));
                }
            }
        }
    }
    if let Some(dir) = env_path("KILN_CUDA_DIR") {
        out.push(dir.join(WHEEL_NVRTC));
    }
    out.push(repo.join(".cuda").join(WHEEL_NVRTC));
    out
}

/// The folder holding `cuda_bf16.h`, if any.
pub fn find_include(repo: &Path) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = env_path("KILN_CUDA_INCLUDE") {
        candidates.push(p);
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = env_path(var) {
            candidates.push(root.join("include"));
        }
    }
    if let Some(dir) = env_path("KILN_CUDA_DIR") {
        candidates.push(dir.join(WHEEL_INCLUDE));
    }
    candidates.push(repo.join(".cuda").join(WHEEL_INCLUDE));
    candidates.into_iter().find(|d| d.join("cuda_bf16.h").is_file())
}

/// `ptxas`, if any: `KILN_PTXAS`, the toolkit's `bin/`, or the nvcc wheel in `.cuda/`.
pub fn find_ptxas(repo: &Path) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = env_path("KILN_PTXAS") {
        candidates.push(p);
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = env_path(var) {
            candidates.push(root.join("bin").join("ptxas"));
        }
    }
    if let Some(dir) = env_path("KILN_CUDA_DIR") {
        candidates.push(dir.join(WHEEL_PTXAS));
    }
    candidates.push(repo.join(".cuda").join(WHEEL_PTXAS));
    candidates.into_iter().find(|p| p.is_file())
}

/// Finds NVRTC and loads it, or says where it looked.
pub fn locate(repo: &Path) -> Result<Nvrtc, String> {
    let candidates = library_candidates(repo);
    let mut library = None;
    if let Some(path) = candidates.iter().find(|p| p.is_file()) {
        // SAFETY: loading NVRTC runs its ELF initialisers, which have no preconditions; the library
        // is then kept loaded for the life of the process (`forget`), so cudarc's later by-name
        // lookups and every function pointer taken from it stay valid.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| format!("{} exists but could not be loaded: {e}", path.display()))?;
        std::mem::forget(lib);
        library = Some(path.clone());
    }
    // SAFETY: `is_culib_present` only tries to dlopen candidate names; it has no preconditions.
    if library.is_none() && !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        return Err(format!(
            "NVRTC (libnvrtc.so.12) was not found: looked at {} and the system library path; \
             run ./scripts/setup-cuda.sh or set KILN_NVRTC or CUDA_HOME",
            looked.join(", ")
        ));
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is loaded (checked above), and both pointers are valid for writes.
    let rc = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if rc != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!("nvrtcVersion failed: {rc:?}"));
    }
    Ok(Nvrtc {
        library,
        include: find_include(repo),
        version: (major, minor),
    })
}

impl Nvrtc {
    /// Compiles one kernel file for `sm_<arch>`, giving its PTX and CUBIN. `file` names the
    /// source in error messages (NVRTC's log reads `file(line): error: ...`); `headers` are
    /// `(include name, contents)` pairs the source may `#include "..."`.
    pub fn compile(&self, file: &str, source: &str, headers: &[(&str, &str)], arch: u32) -> Result<Compiled, String> {
        use cudarc::nvrtc::sys;
        let cstr = |s: &str| CString::new(s).map_err(|_| format!("{file}: a NUL byte in the source or a header"));
        let src = cstr(source)?;
        let name = cstr(file)?;
        let header_src: Vec<CString> = headers.iter().map(|(_, s)| cstr(s)).collect::<Result<_, _>>()?;
        let header_names: Vec<CString> = headers.iter().map(|(n, _)| cstr(n)).collect::<Result<_, _>>()?;
        let header_src_ptrs: Vec<*const c_char> = header_src.iter().map(|s| s.as_ptr()).collect();
        let header_name_ptrs: Vec<*const c_char> = header_names.iter().map(|s| s.as_ptr()).collect();

        let mut options = vec![
            format!("--gpu-architecture=sm_{arch}"),
            "--std=c++17".to_string(),
            "--device-as-default-execution-space".to_string(),
            "--generate-line-info".to_string(),
        ];
        if let Some(inc) = &self.include {
            options.push(format!("--include-path={}", inc.display()));
        }
        let options: Vec<CString> = options.iter().map(|o| cstr(o)).collect::<Result<_, _>>()?;
        let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();

        let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
        // SAFETY: every pointer points into a CString (or a Vec of pointers to CStrings) that lives
        // until the end of this function; the counts match the vectors' lengths.
        let rc = unsafe {
            sys::nvrtcCreateProgram(
                &mut prog,
                src.as_ptr(),
                name.as_ptr(),
                headers.len() as i32,
                header_src_ptrs.as_ptr(),
                header_name_ptrs.as_ptr(),
            )
        };
        check(rc, file, "nvrtcCreateProgram")?;
        // SAFETY: `prog` was created above; the option pointers are valid CStrings.
        let rc = unsafe { sys::nvrtcCompileProgram(prog, option_ptrs.len() as i32, option_ptrs.as_ptr()) };
        let result = if rc == sys::nvrtcResult::NVRTC_SUCCESS {
            // SAFETY: `prog` compiled successfully, so its PTX and CUBIN can be read.
            unsafe { read_output(prog, file) }
        } else {
            // SAFETY: `prog` is a valid program; its log exists after a failed compilation.
            let log = unsafe { read_log(prog) };
            Err(format!("NVRTC could not compile {file} for sm_{arch}:\n{log}"))
        };
        // SAFETY: `prog` is valid and destroyed exactly once.
        unsafe { sys::nvrtcDestroyProgram(&mut prog) };
        result
    }
}

fn check(rc: cudarc::nvrtc::sys::nvrtcResult, file: &str, what: &str) -> Result<(), String> {
    if rc == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(format!("{what} failed for {file}: {rc:?}"))
    }
}

/// # Safety
/// `prog` must be a successfully compiled, not yet destroyed program.
unsafe fn read_output(prog: cudarc::nvrtc::sys::nvrtcProgram, file: &str) -> Result<Compiled, String> {
    use cudarc::nvrtc::sys;
    let mut size = 0usize;
    // SAFETY: `prog` is valid per this function's contract; `size` is writable.
    let rc = unsafe { sys::nvrtcGetPTXSize(prog, &mut size) };
    check(rc, file, "nvrtcGetPTXSize")?;
    let mut ptx = vec![0u8; size];
    // SAFETY: as above; `ptx` has the `size` bytes NVRTC reported.
    let rc = unsafe { sys::nvrtcGetPTX(prog, ptx.as_mut_ptr().cast()) };
    check(rc, file, "nvrtcGetPTX")?;
    while ptx.last() == Some(&0) {
        ptx.pop(); // the terminating NUL
    }
    // SAFETY: as above.
    let rc = unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) };
    check(rc, file, "nvrtcGetCUBINSize")?;
    let mut cubin = vec![0u8; size];
    // SAFETY: as above; `cubin` has the `size` bytes NVRTC reported.
    let rc = unsafe { sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast()) };
    check(rc, file, "nvrtcGetCUBIN")?;
    Ok(Compiled { ptx, cubin })
}

/// # Safety
/// `prog` must be a valid, not yet destroyed program.
unsafe fn read_log(prog: cudarc::nvrtc::sys::nvrtcProgram) -> String {
    use cudarc::nvrtc::sys;
    let mut size = 0usize;
    // SAFETY: per this function's contract; the buffer has the size NVRTC reported.
    if unsafe { sys::nvrtcGetProgramLogSize(prog, &mut size) } != sys::nvrtcResult::NVRTC_SUCCESS {
        return "(no log)".into();
    }
    let mut log = vec![0u8; size];
    // SAFETY: as above.
    if unsafe { sys::nvrtcGetProgramLog(prog, log.as_mut_ptr().cast()) } != sys::nvrtcResult::NVRTC_SUCCESS {
        return "(no log)".into();
    }
    String::from_utf8_lossy(&log)
        .trim_end_matches('\0')
        .trim_end()
        .to_string()
}

/// The macros of kernels/common.cuh that define an entry point named by their first argument.
const ENTRY_MACROS: [&str; 2] = ["KILN_ENTRY", "KILN_ENTRY_BOUNDED"];

/// The kernels a `.cu` source defines, in source order: every `extern "C" __global__ void name(`,
/// with optional `__launch_bounds__(...)` before or after `void`, and every entry point stamped out
/// by `KILN_ENTRY(name, family, types...)` or `KILN_ENTRY_BOUNDED(name, max_threads, family,
/// types...)` (kernels/common.cuh), whose first argument spells the kernel's name. A `#define` of
/// those macros is not a use. Comments are ignored.
pub fn kernel_names(source: &str) -> Vec<String> {
    let text = strip_comments(source);
    let tokens = tokenize(&text);
    let mut names = Vec::new();
    let mut i = 0;
    while i + 1 < tokens.len() {
        if ENTRY_MACROS.contains(&tokens[i].as_str()) && tokens[i + 1] == "(" && (i == 0 || tokens[i - 1] != "define") {
            if let (Some(name), Some(",")) = (tokens.get(i + 2), tokens.get(i + 3).map(String::as_str)) {
                if is_ident(name) {
                    names.push(name.clone());
                }
            }
            i += 2;
            continue;
        }
        if tokens[i] == "extern" && tokens[i + 1] == "\"C\"" {
            let mut j = i + 2;
            let mut seen_global = false;
            let mut seen_void = false;
            while j < tokens.len() {
                match tokens[j].as_str() {
                    "__global__" => seen_global = true,
                    "void" => seen_void = true,
                    "__launch_bounds__" => {
                        // skip the parenthesised arguments
                        let mut depth = 0;
                        j += 1;
                        while j < tokens.len() {
                            match tokens[j].as_str() {
                                "(" => depth += 1,
                                ")" => {
                                    depth -= 1;
                                    if depth == 0 {
                                        break;
                                    }
                                }
                                _ => {}
                            }
                            j += 1;
                        }
                    }
                    t if seen_global && seen_void && is_ident(t) => {
                        if tokens.get(j + 1).map(String::as_str) == Some("(") {
                            names.push(t.to_string());
                        }
                        break;
                    }
                    _ => break,
                }
                j += 1;
            }
            i = j;
        }
        i += 1;
    }
    names
}

fn is_ident(t: &str) -> bool {
    let mut chars = t.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn strip_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
            out.push(' ');
        } else {
            let c = s[i..].chars().next().expect("in bounds");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Identifiers, string literals and single punctuation characters.
fn tokenize(s: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c.is_ascii_alphanumeric() || c == '_' {
            let mut t = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_alphanumeric() || **d == '_') {
                t.push(d);
                chars.next();
            }
            tokens.push(t);
        } else if c == '"' {
            let mut t = String::from('"');
            chars.next();
            for d in chars.by_ref() {
                t.push(d);
                if d == '"' {
                    break;
                }
            }
            tokens.push(t);
        } else {
            tokens.push(c.to_string());
            chars.next();
        }
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::kernel_names;

    #[test]
    fn kernel_names_reads_entry_macros_and_extern_c_definitions_in_source_order() {
        let source = r#"
#include "common.cuh"
// KILN_ENTRY(in_a_comment_f32, UNARY_KERNEL, float)
/* extern "C" __global__ void in_a_block_comment(int x) {} */
#define KILN_ENTRY(name, family, ...) extern "C" __global__ void name family(__VA_ARGS__)
#define UNARY_KERNEL(T) (const T *x, T *y, unsigned long long n) { unary_impl(x, y, n); }
#define CAST_KERNEL(S, D) (const S *x, D *y, unsigned long long n) { cast_impl(x, y, n); }
KILN_ENTRY(unary_f32, UNARY_KERNEL, float)
KILN_ENTRY(unary_bf16, UNARY_KERNEL, __nv_bfloat16)
extern "C" __global__ void plain(const float *x) {}
KILN_ENTRY( cast_f32_f16 ,
           CAST_KERNEL, float, __half)
KILN_ENTRY_BOUNDED(matmul_f16, MATMUL_THREADS, MATMUL_KERNEL, __half, TensorCoreMma<__half>)
extern "C" __global__ void __launch_bounds__(256) bounded(int n) {}
KILN_ENTRY_NOT_A_KERNEL(not_a_kernel, X)
"#;
        assert_eq!(
            kernel_names(source),
            [
                "unary_f32",
                "unary_bf16",
                "plain",
                "cast_f32_f16",
                "matmul_f16",
                "bounded"
            ]
        );
    }

    #[test]
    fn kernel_names_skips_an_entry_macro_without_a_name() {
        assert!(kernel_names("KILN_ENTRY(, UNARY_KERNEL, float)\nKILN_ENTRY(unary_f32)").is_empty());
    }
}
