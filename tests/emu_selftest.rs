//! The emulator's own self-test (kernels/emu/tests/emu_selftest.cpp), built with the host C++
//! compiler and run: divergent barriers and warp collectives detected, out-of-bounds reads and
//! writes caught by guard pages, unwritten outputs visible through poisoning, exact warp and block
//! reductions, atomics from many blocks, half/bf16 rounding against references, ... It prints one
//! line per check and closes with `N passed, M failed`. The same steps as `make -C kernels/emu test`,
//! without needing make.

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn emulator_self_test_passes() {
    let emu = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/emu");
    let build = Path::new(env!("CARGO_TARGET_TMPDIR")).join("emu-selftest");
    std::fs::create_dir_all(&build).unwrap();
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let flags = ["-std=c++17", "-pthread", "-O2", "-g"];
    let table = build.join("selftest_kernels.emu.cpp");
    let gen = Command::new("sh")
        .arg(emu.join("gen_kernel_table.sh"))
        .arg(emu.join("tests/selftest_kernels.cu"))
        .arg("selftest_kernels.cu")
        .output()
        .expect("sh runs");
    assert!(gen.status.success(), "{}", String::from_utf8_lossy(&gen.stderr));
    std::fs::write(&table, gen.stdout).unwrap();
    let objects = [
        (emu.join("emu_runtime.cpp"), "emu_runtime.o", vec![]),
        (emu.join("emu_memory.cpp"), "emu_memory.o", vec![]),
        (emu.join("emu_check.cpp"), "emu_check.o", vec![]),
        (emu.join("tests/emu_selftest.cpp"), "emu_selftest.o", vec![]),
        (
            table.clone(),
            "selftest_kernels.emu.o",
            vec![
                "-Wno-unknown-pragmas".to_string(),
                // the checker's instrumentation, as build.rs compiles kiln's kernels
                "-fsanitize=thread".to_string(),
                "--param=tsan-instrument-func-entry-exit=0".to_string(),
                format!("-I{}", emu.join("tests").display()),
            ],
        ),
    ];
    std::thread::scope(|s| {
        for (src, obj, extra) in &objects {
            let (cxx, build) = (&cxx, &build);
            s.spawn(move || {
                run(Command::new(cxx)
                    .args(flags)
                    .args(extra)
                    .arg("-c")
                    .arg(src)
                    .arg("-o")
                    .arg(build.join(obj)))
            });
        }
    });
    let exe = build.join("emu_selftest");
    run(Command::new(&cxx)
        .args(flags)
        .args(objects.iter().map(|(_, o, _)| build.join(o)))
        .arg("-o")
        .arg(&exe));
    let out = Command::new(&exe).output().expect("the self-test runs");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the emulator self-test failed (see the FAIL lines above)"
    );
    assert!(
        text.lines().any(|l| l.contains(" passed, 0 failed")),
        "no closing summary line"
    );
}
