//! Builds kiln's CUDA kernels twice from the same `kernels/*.cu` sources:
//!
//! 1. For the GPU, with NVRTC (through cudarc, loaded dynamically): PTX (for the lowest target
//!    architecture, which the driver can JIT for newer GPUs) and a CUBIN per architecture, sm_80 and
//!    sm_90 unless `KILN_CUDA_ARCHS` says otherwise (e.g. `KILN_CUDA_ARCHS=80,86,90`). A compile error
//!    fails the build with NVRTC's log (`kernels/x.cu(12): error: ...`). Without NVRTC the build still
//!    succeeds: it prints one `cargo:warning`, embeds only the sources, and the CUDA device compiles them
//!    at first use (if NVRTC is there then) or returns a clear error. Where NVRTC is looked for:
//!    src/backend/cuda/nvrtc.rs (`KILN_NVRTC`, `CUDA_HOME`/`CUDA_PATH`, `.cuda/` from
//!    scripts/setup-cuda.sh).
//! 2. For `Device::Emu`, with the host C++ compiler against `kernels/emu/`: one translation unit per
//!    `.cu` that includes it and registers each kernel with `EMU_KERNEL` (the `extern "C" __global__`
//!    definitions and the `KILN_ENTRY` lines, found by `nvrtc::kernel_names`), linked
//!    with the emulator runtime into the static library `kiln_emu`.
//!
//! On docs.rs (`DOCS_RS` set), which builds only the documentation, offline, without a GPU toolchain,
//! neither is done: the manifest lists the kernel sources without PTX or CUBINs and no emulator library
//! is compiled (nothing is linked). `./scripts/test.sh` builds the documentation that way.
//!
//! Everything lands in OUT_DIR; `$OUT_DIR/kernels.rs` (included by src/backend/cuda/kernels.rs) lists
//! each file's name, source, kernel names, PTX and CUBINs.

#[path = "src/backend/cuda/nvrtc.rs"]
mod nvrtc;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const DEFAULT_ARCHS: &[u32] = &[80, 90];

struct KernelFile {
    stem: String,
    path: PathBuf,
    source: String,
    kernels: Vec<String>,
}

fn main() {
    let repo = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernels_dir = repo.join("kernels");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=src/backend/cuda/nvrtc.rs");
    for var in [
        "KILN_NVRTC",
        "KILN_CUDA_DIR",
        "KILN_CUDA_INCLUDE",
        "KILN_CUDA_ARCHS",
        "KILN_EMU_DEBUG",
        "CUDA_HOME",
        "CUDA_PATH",
        "DOCS_RS",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let files = read_kernel_files(&kernels_dir);
    let headers = read_headers(&kernels_dir);
    let archs = archs();

    let docs_only = std::env::var_os("DOCS_RS").is_some();
    if docs_only {
        write_manifest(&files, &headers, &archs, false, &out);
        return;
    }
    let gpu = match nvrtc::locate(&repo) {
        Ok(nv) => Some(compile_gpu(&nv, &files, &headers, &archs, &out)),
        Err(why) => {
            println!(
                "cargo:warning=kiln: CUDA kernels not precompiled ({why}). The build embeds the kernel sources; \
                 Device::Cuda compiles them at first use if NVRTC is found then. Device::Emu is unaffected."
            );
            None
        }
    };
    write_manifest(&files, &headers, &archs, gpu.is_some(), &out);
    build_emulator(&files, &kernels_dir, &out);
}

fn read_kernel_files(dir: &Path) -> Vec<KernelFile> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let source =
                std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let kernels = nvrtc::kernel_names(&source);
            let stem = path.file_stem().expect("a .cu file").to_string_lossy().into_owned();
            KernelFile {
                stem,
                path,
                source,
                kernels,
            }
        })
        .collect()
}

/// Every `kernels/*.cuh`, as (include name, path, contents).
fn read_headers(dir: &Path) -> Vec<(String, PathBuf, String)> {
    let mut headers: Vec<(String, PathBuf, String)> = std::fs::read_dir(dir)
        .expect("kernels/ is readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cuh"))
        .map(|p| {
            let name = p.file_name().expect("a file").to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
            (name, p, text)
        })
        .collect();
    headers.sort();
    headers
}

fn archs() -> Vec<u32> {
    match std::env::var("KILN_CUDA_ARCHS") {
        Ok(list) if !list.trim().is_empty() => {
            let mut archs: Vec<u32> = list
                .split([',', ' ', ';'])
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.trim_start_matches("sm_")
                        .parse()
                        .unwrap_or_else(|_| panic!("KILN_CUDA_ARCHS: {s:?} is not an architecture like 80 or sm_90"))
                })
                .collect();
            archs.sort_unstable();
            archs.dedup();
            archs
        }
        _ => DEFAULT_ARCHS.to_vec(),
    }
}

/// Compiles every file for every arch on all cores; writes `<stem>.ptx` and `<stem>.sm_<arch>.cubin`.
/// Returns whether it did (it panics with NVRTC's log on a compile error).
fn compile_gpu(
    nv: &nvrtc::Nvrtc,
    files: &[KernelFile],
    headers: &[(String, PathBuf, String)],
    archs: &[u32],
    out: &Path,
) -> bool {
    let header_refs: Vec<(&str, &str)> = headers.iter().map(|(n, _, t)| (n.as_str(), t.as_str())).collect();
    let jobs: Vec<(&KernelFile, u32)> = files.iter().flat_map(|f| archs.iter().map(move |&a| (f, a))).collect();
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(jobs.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let errors = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(file, arch)) = jobs.get(i) else { break };
                let shown = format!("kernels/{}.cu", file.stem);
                match nv.compile(&shown, &file.source, &header_refs, arch) {
                    Ok(c) => {
                        if arch == archs[0] {
                            write(&out.join(format!("{}.ptx", file.stem)), &c.ptx);
                        }
                        write(&out.join(format!("{}.sm_{arch}.cubin", file.stem)), &c.cubin);
                    }
                    Err(e) => errors.lock().expect("no panics while held").push(e),
                }
            });
        }
    });
    let errors = errors.into_inner().expect("no panics while held");
    if !errors.is_empty() {
        panic!("\n{}\n", errors.join("\n\n"));
    }
    true
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn write_manifest(
    files: &[KernelFile],
    headers: &[(String, PathBuf, String)],
    archs: &[u32],
    precompiled: bool,
    out: &Path,
) {
    let mut s = String::new();
    writeln!(s, "// Generated by build.rs; do not edit.").unwrap();
    writeln!(s, "pub const PRECOMPILED: bool = {precompiled};").unwrap();
    writeln!(s, "pub const ARCHS: &[u32] = &{archs:?};").unwrap();
    writeln!(s, "pub static HEADERS: &[(&str, &str)] = &[").unwrap();
    for (name, path, _) in headers {
        writeln!(s, "    ({name:?}, include_str!({:?})),", path.display().to_string()).unwrap();
    }
    writeln!(s, "];").unwrap();
    writeln!(s, "pub static FILES: &[KernelFile] = &[").unwrap();
    for f in files {
        let (ptx, cubins) = if precompiled {
            let ptx = format!(
                "Some(include_bytes!({:?}))",
                out.join(format!("{}.ptx", f.stem)).display().to_string()
            );
            let cubins: Vec<String> = archs
                .iter()
                .map(|a| {
                    format!(
                        "({a}, include_bytes!({:?}) as &[u8])",
                        out.join(format!("{}.sm_{a}.cubin", f.stem)).display().to_string()
                    )
                })
                .collect();
            (ptx, format!("&[{}]", cubins.join(", ")))
        } else {
            ("None".to_string(), "&[]".to_string())
        };
        writeln!(
            s,
            "    KernelFile {{ name: {:?}, source: include_str!({:?}), kernels: &{:?}, ptx: {ptx}, cubins: {cubins} }},",
            f.stem,
            f.path.display().to_string(),
            f.kernels
        )
        .unwrap();
    }
    writeln!(s, "];").unwrap();
    write(&out.join("kernels.rs"), s.as_bytes());
}

/// The emulator library: the runtime plus every kernel file compiled for the host.
fn build_emulator(files: &[KernelFile], kernels_dir: &Path, out: &Path) {
    let emu_dir = kernels_dir.join("emu");
    let gen_dir = out.join("emu");
    std::fs::create_dir_all(&gen_dir).expect("OUT_DIR is writable");
    // Two libraries: the runtime, and the kernels, which are compiled with g++'s thread-sanitizer
    // instrumentation (a call before every load and store) that the runtime's checker implements
    // (kernels/emu/emu_check.cpp; docs/emulator.md, "The checker"). -g1: line tables, for the checker
    // to name file:line. The kernels' library is linked first, as it refers to the runtime.
    let mut runtime = emulator_build(kernels_dir);
    runtime
        .file(emu_dir.join("emu_runtime.cpp"))
        .file(emu_dir.join("emu_memory.cpp"))
        .file(emu_dir.join("emu_check.cpp"));
    let mut build = emulator_build(kernels_dir);
    build
        .flag("-fsanitize=thread")
        .flag("--param=tsan-instrument-func-entry-exit=0")
        .flag("-g1");
    let mut anchors = String::from("// Generated by build.rs; do not edit.\n");
    for f in files {
        let mut tu = format!(
            "// Generated by build.rs from kernels/{0}.cu; do not edit.\n#include {1:?}\n",
            f.stem,
            f.path.display().to_string()
        );
        for k in &f.kernels {
            writeln!(tu, "EMU_KERNEL({k})").unwrap();
        }
        // Referenced from kiln_emu_link_all below, so that the linker keeps this object (and with it
        // the static initialisers that register the kernels) although nothing else refers to it.
        writeln!(tu, "extern \"C\" void kiln_emu_anchor_{}(void) {{}}", f.stem).unwrap();
        let path = gen_dir.join(format!("{}.emu.cpp", f.stem));
        write_if_changed(&path, &tu);
        build.file(&path);
        writeln!(anchors, "extern \"C\" void kiln_emu_anchor_{}(void);", f.stem).unwrap();
    }
    anchors.push_str("extern \"C\" unsigned kiln_emu_link_all(void) {\n");
    for f in files {
        writeln!(anchors, "    kiln_emu_anchor_{}();", f.stem).unwrap();
    }
    let total: usize = files.iter().map(|f| f.kernels.len()).sum();
    writeln!(anchors, "    return {total};\n}}").unwrap();
    let path = gen_dir.join("kiln_emu_link_all.cpp");
    write_if_changed(&path, &anchors);
    build.file(&path);
    build.compile("kiln_emu_kernels");
    runtime.compile("kiln_emu");
}

/// The flags every part of the emulator is compiled with.
fn emulator_build(kernels_dir: &Path) -> cc::Build {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .flag("-pthread")
        .flag_if_supported("-Wno-unknown-pragmas")
        .flag_if_supported("-fno-strict-aliasing")
        // a * b + c stays two roundings, as __dmul_rn / __dadd_rn promise (kernels/sample.cu relies on it)
        .flag_if_supported("-ffp-contract=off")
        .include(kernels_dir)
        .warnings(false);
    // The emulator runs every CUDA thread as a fiber; unoptimised it is ~10x slower, so it is built
    // optimised even in debug builds. KILN_EMU_DEBUG=1 builds it -O0 -g3 to step through kernels.
    if std::env::var("KILN_EMU_DEBUG").is_ok_and(|v| v == "1") {
        build.opt_level(0).debug(true).flag("-g3");
    } else {
        build.opt_level(2);
    }
    build
}

fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        write(path, text.as_bytes());
    }
}
