//! `kiln bench` end to end at tiny sizes on the CPU and on Emu: the check against the CPU reference,
//! the table, the JSON's shape and rates, the ceilings, the machine, the SVG's layout, and bad input.
//! Speed is never asserted.

use serde_json::Value;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};

#[path = "common/cli.rs"]
mod cli;
use cli::{kiln_cmd, temp_dir};

/// `kiln args`, with kiln's own GEMM whatever the environment says.
fn kiln(args: &[&str]) -> Output {
    kiln_cmd(args)
        .env_remove("KILN_CBLAS")
        .output()
        .expect("the kiln binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Fast settings: few repetitions, a 1 MiB copy for the bandwidth roofline.
const QUICK: &[&str] = &["--reps", "3", "--seconds", "0.02", "--copy-mib", "1"];

/// Runs `kiln bench` with `args` and QUICK, writing JSON and SVG; the parsed JSON and the output.
fn bench(name: &str, args: &[&str]) -> (Value, String, String) {
    let dir = temp_dir(name);
    let (json, svg) = (dir.join("bench.json"), dir.join("bench.svg"));
    let mut all: Vec<&str> = vec!["bench"];
    all.extend_from_slice(args);
    all.extend_from_slice(QUICK);
    all.extend_from_slice(&["--json", json.to_str().unwrap(), "--plot", svg.to_str().unwrap()]);
    let out = kiln(&all);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let svg = std::fs::read_to_string(&svg).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (report, shown, svg)
}

/// Every measured row of ours was checked against the reference and is within its tolerance; a
/// library row carries no check.
fn check_checks(report: &Value) {
    for r in report["rows"].as_array().unwrap() {
        if r["time"].is_null() {
            continue;
        }
        let c = &r["check"];
        if c.is_null() {
            // only the libraries are not checked (kiln's unfused compositions are)
            assert!(
                r["library"] == true && (r["kernel"] == "cblas" || r["kernel"] == "cublas"),
                "{r:#}"
            );
            continue;
        }
        let (worst, tol) = (c["worst_error"].as_f64().unwrap(), c["tolerance"].as_f64().unwrap());
        assert!(worst <= tol && c["compared"].as_u64().unwrap() > 0, "{r:#}");
    }
}

/// kiln's version, the CPU's model and the threads are in the JSON and the table's header.
fn check_machine(report: &Value, shown: &str) {
    let m = &report["machine"];
    assert_eq!(m["kiln_version"], env!("CARGO_PKG_VERSION"), "{m:#}");
    assert!(!m["cpu"].as_str().unwrap().is_empty(), "{m:#}");
    assert!(
        m["cpu_threads"].as_u64().unwrap() >= 1 && m["threads"].as_u64().unwrap() >= 1,
        "{m:#}"
    );
    let header = format!(
        "machine: kiln {}; CPU {}",
        env!("CARGO_PKG_VERSION"),
        m["cpu"].as_str().unwrap()
    );
    assert!(shown.contains(&header), "{shown}");
}

fn row<'a>(report: &'a Value, kernel: &str, size: &str) -> &'a Value {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kernel"] == kernel && r["size"] == size)
        .unwrap_or_else(|| panic!("no row {kernel} {size} in {report:#}"))
}

/// A measured row's rates agree with its bytes, FLOPs and median, which lie within [min, max].
fn check_rates(r: &Value) {
    let t = &r["time"];
    let (med, min, max) = (
        t["median_s"].as_f64().unwrap(),
        t["min_s"].as_f64().unwrap(),
        t["max_s"].as_f64().unwrap(),
    );
    assert!(0.0 < min && min <= med && med <= max, "{r:#}");
    assert_eq!(t["reps"], 3, "{r:#}");
    let gbs = r["gbs"].as_f64().unwrap();
    let bytes = r["bytes"].as_f64().unwrap();
    assert!((gbs - bytes / med / 1e9).abs() <= 1e-9 * gbs, "{r:#}");
    if let Some(tf) = r["tflops"].as_f64() {
        assert!(
            (tf - r["flops"].as_f64().unwrap() / med / 1e12).abs() <= 1e-9 * tf,
            "{r:#}"
        );
    }
}

#[test]
fn cpu_run_reports_rates_against_its_roofline() {
    let (report, shown, svg) = bench(
        "cpu",
        &[
            "--device",
            "cpu",
            "--kernels",
            "add,softmax,matmul_f32,gpt",
            "--sizes",
            "9x33,7x5x3",
            "--gpt-steps",
            "1",
        ],
    );
    assert_eq!(report["device"], "cpu");
    assert_eq!(report["timing"], "host clock");
    assert!(report["warning"].is_null());
    assert!(report["machine"]["gpu"].is_null());
    check_machine(&report, &shown);
    check_checks(&report);
    assert!(shown.contains("All results match. Starting benchmarks."), "{shown}");
    let copy = report["roofline"]["copy_gbs"].as_f64().unwrap();
    assert!(copy > 0.0);
    let peak = &report["roofline"]["peaks"][0];
    assert_eq!(peak["dtype"], "f32");
    assert!(peak["tflops"].as_f64().unwrap() > 0.0, "{peak:#}");

    // add reads two 9x33 f32 tensors and writes one; softmax reads and writes one.
    let add = row(&report, "add", "9x33");
    assert_eq!(add["bytes"], 3.0 * 9.0 * 33.0 * 4.0);
    assert_eq!(add["bound"], "memory");
    check_rates(add);
    // add's ceiling is a stream of its own bytes, so its percentage is over that stream's rate
    let pct = add["roofline_pct"].as_f64().unwrap();
    let ceiling = add["ceiling_gbs"].as_f64().unwrap();
    assert!((pct - 100.0 * add["gbs"].as_f64().unwrap() / ceiling).abs() < 1e-6 * pct);
    // the working set: 16 rotated sets of the two inputs, and the output
    assert_eq!(
        add["working_set_bytes"],
        (16 * 2 * 9 * 33 * 4 + 9 * 33 * 4) as f64,
        "{add:#}"
    );
    // matmul's ceiling is the best matmul rate measured in f32
    let mm = row(&report, "matmul_f32", "7x5x3");
    assert!(mm["ceiling_tflops"].as_f64().unwrap() > 0.0, "{mm:#}");
    assert_eq!(row(&report, "softmax", "9x33")["bytes"], 2.0 * 9.0 * 33.0 * 4.0);
    check_rates(row(&report, "softmax", "9x33"));

    // matmul [7, 3] x [3, 5]: 2·7·5·3 FLOPs; the library row follows it, measured or skipped
    // (no CBLAS in the test's environment) with the reason.
    let mm = row(&report, "matmul_f32", "7x5x3");
    assert_eq!(mm["flops"], 210.0);
    assert_eq!(mm["bytes"], ((7 * 3 + 3 * 5 + 7 * 5) * 4) as f64);
    check_rates(mm);
    let rows = report["rows"].as_array().unwrap();
    let at = rows.iter().position(|r| r["kernel"] == "matmul_f32").unwrap();
    let lib = &rows[at + 1];
    assert_eq!(lib["library"], true);
    assert!(
        lib["time"].is_object() || lib["skipped"].as_str().unwrap().contains("CBLAS"),
        "{lib:#}"
    );

    let gpt = &report["gpt"];
    assert_eq!(gpt["model"], "nanoGPT shakespeare_char CPU recipe", "{report:#}");
    assert_eq!((gpt["batch"].as_u64(), gpt["context"].as_u64()), (Some(12), Some(64)));
    let tps = gpt["tokens_per_s"].as_f64().unwrap();
    assert!((tps - 768.0 / gpt["step"]["median_s"].as_f64().unwrap()).abs() < 1e-9 * tps);
    assert!(gpt["mfu_pct"].as_f64().unwrap() > 0.0);

    assert!(
        shown.contains("kiln bench on cpu") && shown.contains("GPT training step"),
        "{shown}"
    );
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(
        svg.contains("add 9x33 f32") && svg.contains("matmul_f32 7x5x3 f32"),
        "{svg}"
    );
}

/// The GPT-2 124M training step on the CPU, in f32 and bf16, at a tiny batch (1 × 8 tokens):
/// the model's size, the batch's shape and the rates agree with each other and with the FLOP
/// count of src/bench/gpt.rs, computed here from GPT-2's shape.
#[test]
fn cpu_gpt2_step_reports_its_rates_in_f32_and_bf16() {
    for dtype in ["f32", "bf16"] {
        let (report, shown, _) = bench(
            &format!("gpt2-{dtype}"),
            &[
                "--device",
                "cpu",
                "--kernels",
                "gpt",
                "--gpt-model",
                "gpt2",
                "--gpt-batch",
                "1",
                "--gpt-context",
                "8",
                "--gpt-dtype",
                dtype,
                "--gpt-steps",
                "1",
            ],
        );
        let gpt = &report["gpt"];
        assert_eq!(gpt["model"], "GPT-2 124M", "{report:#}");
        assert_eq!(
            (gpt["dtype"].as_str(), gpt["batch"].as_u64(), gpt["context"].as_u64()),
            (Some(dtype), Some(1), Some(8))
        );
        assert_eq!(gpt["params"], 124_439_808, "{gpt:#}");
        // an MFU over the step dtype's matmul ceiling: bf16's is measured where the CPU has a bf16 GEMM
        let has_ceiling = dtype == "f32" || kiln::backend::cpu::gemm::has_bf16_dot();
        assert_eq!(gpt["mfu_pct"].as_f64().is_some_and(|m| m > 0.0), has_ceiling, "{gpt:#}");
        // 6 · (parameters without the 1024 × 768 position table) + 12 · layers · C · T
        let per_token = 6.0 * (124_439_808.0 - 1024.0 * 768.0) + 12.0 * 12.0 * 768.0 * 8.0;
        assert_eq!(gpt["flops_per_token"].as_f64(), Some(per_token), "{gpt:#}");
        let tps = gpt["tokens_per_s"].as_f64().unwrap();
        assert!((tps - 8.0 / gpt["step"]["median_s"].as_f64().unwrap()).abs() < 1e-9 * tps);
        let gflops = gpt["gflops"].as_f64().unwrap();
        assert!(
            gflops > 0.0 && (gflops - per_token * tps / 1e9).abs() < 1e-9 * gflops,
            "{gpt:#}"
        );
        assert!(
            shown.contains("GPT training step, GPT-2 124M (124.4M parameters"),
            "{shown}"
        );
        assert!(shown.contains("GFLOP/s"), "{shown}");
        // The GEMM meter's FLOPs, counted here from the shapes: every Linear weight (per layer
        // 768·2304 + 768·768 + 768·3072 + 3072·768, and the 50257 × 768 LM head) multiplies each
        // of the 8 tokens forward, for dX and for dW (6 FLOPs per weight and token), and each of
        // the 12 · 12 heads runs 7 products of 2·8·8·64 FLOPs (S and O forward; P, dP, dQ, dK
        // and dV backward, one 8-row tile against 8 keys).
        let weights = 12.0 * (768.0 * 2304.0 + 768.0 * 768.0 + 2.0 * 768.0 * 3072.0) + 50257.0 * 768.0;
        let gemm_flops = 6.0 * 8.0 * weights + 12.0 * 12.0 * 7.0 * (2.0 * 8.0 * 8.0 * 64.0);
        let gemm = &gpt["gemm"];
        let gflop = gemm["gflop"].as_f64().unwrap();
        assert!((gflop * 1e9 - gemm_flops).abs() < 1e-9 * gemm_flops, "{gemm:#}");
        let (share, efficiency) = (gemm["share_pct"].as_f64().unwrap(), gemm["efficiency_pct"].as_f64());
        assert!(share > 0.0 && share <= 100.5, "{gemm:#}");
        // an FMA peak is measured wherever the f32 GEMM has an FMA kernel (x86-64 with AVX2 + FMA)
        assert!(efficiency.is_none_or(|e| e > 0.0), "{gemm:#}");
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            assert!(efficiency.is_some(), "{gemm:#}");
        }
        let shapes = gemm["shapes"].as_array().unwrap();
        let shape_flops: f64 = shapes.iter().map(|s| s["gflop"].as_f64().unwrap()).sum();
        assert!((shape_flops - gflop).abs() < 1e-9 * gflop, "{gemm:#}");
        // the LM head's forward: x (8 × 768, rows contiguous) times wteᵀ (a transposed view)
        assert!(
            shapes
                .iter()
                .any(|s| s["shape"].as_str().unwrap().starts_with("8x50257x768 NT ")),
            "{gemm:#}"
        );
        assert!(shown.contains("its GEMMs (metered over 2 more steps"), "{shown}");
    }
    // a context past the model's 1024 positions is refused, naming it
    let out = kiln(&[
        "bench",
        "--kernels",
        "gpt",
        "--gpt-model",
        "gpt2",
        "--gpt-context",
        "1025",
        "--reps",
        "1",
        "--copy-mib",
        "1",
        "--seconds",
        "0.01",
    ]);
    let shown = text(&out);
    assert!(
        shown.contains("context 1025") && shown.contains("1024 positions"),
        "{shown}"
    );
}

#[test]
fn attention_bf16_cases_time_the_forward_and_the_backward_alone() {
    let (report, _, _) = bench(
        "attention",
        &[
            "--device",
            "emu",
            "--kernels",
            "attention_fwd_bf16,attention_bwd_bf16",
            "--sizes",
            "1x2x17x16",
        ],
    );
    let (fwd, bwd) = (
        row(&report, "attention_fwd_bf16", "1x2x17x16"),
        row(&report, "attention_bwd_bf16", "1x2x17x16"),
    );
    check_rates(fwd);
    check_rates(bwd);
    // FlashAttention's count: 4·T²·D per head forward, halved by the causal mask; 2.5 times that
    // backward. Bytes: q, k, v read and o written; backward q, k, v, o, dO read, dQ, dK, dV written.
    let forward = 4.0 * 2.0 * 17.0 * 17.0 * 16.0 / 2.0;
    assert_eq!(fwd["flops"].as_f64(), Some(forward), "{fwd:#}");
    assert_eq!(bwd["flops"].as_f64(), Some(2.5 * forward), "{bwd:#}");
    let tensor = 2.0 * 17.0 * 16.0 * 2.0;
    assert_eq!(fwd["bytes"].as_f64(), Some(4.0 * tensor), "{fwd:#}");
    assert_eq!(bwd["bytes"].as_f64(), Some(8.0 * tensor), "{bwd:#}");
}

#[test]
fn emu_run_is_labelled_and_has_no_percentages() {
    let (report, shown, _) = bench(
        "emu",
        &[
            "--device",
            "emu",
            "--kernels",
            "softmax,sum,matmul_f32,gpt",
            "--sizes",
            "5x37,9x7x5",
            "--gpt-dtype",
            "bf16",
            "--gpt-batch",
            "1",
            "--gpt-steps",
            "1",
        ],
    );
    assert_eq!(report["device"], "emu");
    // the training step in bf16 ran (its speed is the emulator's; no ceiling on Emu, so no MFU)
    let gpt = &report["gpt"];
    assert_eq!(
        (gpt["dtype"].as_str(), gpt["batch"].as_u64()),
        (Some("bf16"), Some(1)),
        "{report:#}"
    );
    assert!(
        gpt["tokens_per_s"].as_f64().unwrap() > 0.0 && gpt["mfu_pct"].is_null(),
        "{gpt:#}"
    );
    assert!(report["warning"].as_str().unwrap().contains("say nothing about a GPU"));
    assert!(shown.contains("WARNING"), "{shown}");
    // the kernels were checked on Emu against the CPU reference before they were timed
    check_checks(&report);
    assert!(row(&report, "softmax", "5x37")["check"]["compared"].as_u64().unwrap() > 0);
    assert!(shown.contains("All results match. Starting benchmarks."), "{shown}");
    assert!(report["machine"]["gpu"].as_str().unwrap().contains("Emu"), "{report:#}");
    assert!(report["roofline"]["peaks"][0]["tflops"].is_null());
    let sm = row(&report, "softmax", "5x37");
    check_rates(sm);
    assert_eq!(row(&report, "sum", "5x37")["bytes"], ((5 * 37 + 5) * 4) as f64);
    for r in report["rows"].as_array().unwrap() {
        assert!(r["roofline_pct"].is_null(), "{r:#}");
        // every row is measured or says why not (matmul before its Emu kernel; no library on Emu)
        assert!(r["time"].is_object() != r["skipped"].is_string(), "{r:#}");
    }
}

#[test]
fn bad_kernel_size_and_device_are_clear_errors() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--kernels", "softmax,flash"],
            "unknown kernel \"flash\"; the kernels are matmul_f32",
        ),
        (
            &["--kernels", "matmul_f32", "--sizes", "64x64"],
            "matmul_f32 takes sizes of the form MxNxK",
        ),
        (&["--sizes", "64xq"], "cannot read the size \"64xq\""),
        (&["--device", "tpu"], "unknown device \"tpu\""),
        (&["--reps", "0"], "must be positive"),
    ];
    for (args, expected) in cases {
        let mut all = vec!["bench"];
        all.extend_from_slice(args);
        let out = kiln(&all);
        let shown = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {shown}");
        assert!(shown.contains(expected), "{args:?}: {shown}");
    }
}

#[test]
fn cuda_without_a_gpu_fails_clearly() {
    if kiln::backend::cuda::gpu_count() > 0 {
        return; // a GPU is there: gpu-check runs the real thing
    }
    let out = kiln(&["bench", "--device", "cuda", "--kernels", "add"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("device Cuda(0) is unavailable"), "{shown}");
}

/// `--collective nccl` (docs/distributed.md, "NCCL"): on Emu or the CPU a refusal, on CUDA without
/// NCCL the loading error naming what was tried (this machine has neither a GPU nor NCCL), with
/// other kernels or `auto` a clear error; never a panic.
#[test]
fn nccl_allreduce_bench_errors_are_clear() {
    let nccl = |extra: &[&'static str]| {
        let mut all = vec!["bench", "--kernels", "allreduce", "--sizes", "4096", "--reps", "2"];
        all.extend_from_slice(extra);
        let out = kiln_cmd(&all).env_remove("KILN_NCCL").output().unwrap();
        let shown = text(&out);
        assert_eq!(out.status.code(), Some(1), "{shown}");
        assert!(!shown.contains("panicked"), "{shown}");
        shown
    };
    for dev in ["emu", "cpu"] {
        let shown = nccl(&["--collective", "nccl", "--device", dev]);
        assert!(shown.contains("--collective nccl needs CUDA ranks"), "{shown}");
    }
    let shown = nccl(&["--collective", "nccl", "--device", "cuda"]);
    if shown.contains("NCCL library could not be loaded") {
        for part in ["libnccl.so.2 (", "libnccl.so (", "nvidia-nccl-cu12", "KILN_NCCL"] {
            assert!(shown.contains(part), "{part:?}: {shown}");
        }
    } else {
        // NCCL is installed here: then the missing GPU is the error
        assert!(shown.contains("unavailable"), "{shown}");
    }
    let shown = nccl(&["--collective", "auto"]);
    assert!(shown.contains("--collective mpi or nccl, not auto"), "{shown}");
    let out = kiln(&["bench", "--kernels", "add", "--collective", "nccl"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("--collective chooses the all-reduce"),
        "{}",
        text(&out)
    );
}

/// The Llama ops' cases (silu, swiglu and its backward, rms_norm and its backward, rope) run on Emu,
/// each counting the bytes its kernels must move; swiglu is followed by its unfused composition.
#[test]
fn llama_op_cases_count_their_bytes() {
    let kernels = "silu,swiglu,swiglu_backward,rms_norm,rms_norm_backward,rope";
    let (report, _, _) = bench(
        "llama",
        &["--device", "emu", "--kernels", kernels, "--sizes", "9x33,5x3x8"],
    );
    let (n, c, f32) = (9.0 * 33.0, 33.0, 4.0);
    for (kernel, size, bytes) in [
        ("silu", "9x33", 2.0 * n * f32),
        ("swiglu", "9x33", 3.0 * n * f32),
        ("swiglu_backward", "9x33", 5.0 * n * f32),
        ("rms_norm", "9x33", (2.0 * n + c) * f32),
        ("rms_norm_backward", "9x33", (3.0 * n + 2.0 * c) * f32),
        ("rope", "5x3x8", 2.0 * 5.0 * 3.0 * 8.0 * f32),
    ] {
        let r = row(&report, kernel, size);
        assert_eq!(r["bytes"], bytes, "{kernel}: {r:#}");
        check_rates(r);
    }
    let rows = report["rows"].as_array().unwrap();
    let at = rows.iter().position(|r| r["kernel"] == "swiglu").unwrap();
    assert_eq!(rows[at + 1]["library"], true, "{:#}", rows[at + 1]);
}

/// The exact GELU's case (a new op code of the unary kernel) runs on Emu and counts one read and
/// one write per element.
#[test]
fn gelu_erf_case_counts_its_bytes() {
    let (report, _, _) = bench(
        "gelu_erf",
        &["--device", "emu", "--kernels", "gelu_erf", "--sizes", "9x33"],
    );
    let r = row(&report, "gelu_erf", "9x33");
    assert_eq!(r["bytes"], 2.0 * 9.0 * 33.0 * 4.0, "{r:#}");
    check_rates(r);
}

/// The grouped-query attention cases run on Emu (5-dim sizes) and count the key/value heads' bytes
/// once, not once per query head.
#[test]
fn grouped_query_attention_cases_count_their_bytes() {
    let kernels = "attention_gqa_fwd_bwd,attention_gqa_fwd_bwd_bf16";
    let (report, _, _) = bench(
        "gqa",
        &["--device", "emu", "--kernels", kernels, "--sizes", "1x4x2x17x8"],
    );
    let (nq, nkv) = (4.0 * 17.0 * 8.0, 2.0 * 17.0 * 8.0);
    for (kernel, size) in [("attention_gqa_fwd_bwd", 4.0), ("attention_gqa_fwd_bwd_bf16", 2.0)] {
        let r = row(&report, kernel, "1x4x2x17x8");
        assert_eq!(r["bytes"], 4.0 * (nq + nkv) * size, "{kernel}: {r:#}");
        assert_eq!(
            r["flops"],
            3.5 * 4.0 * (4.0 * 17.0 * 17.0 * 8.0) / 2.0,
            "{kernel}: {r:#}"
        );
        check_rates(r);
    }
}

/// The quantized matvec cases run on the CPU, count the bytes of the weight blocks they read, and
/// are followed by the same product with the weight dequantized to f32.
#[test]
fn linear_quantized_cases_count_the_weight_blocks_they_read() {
    let kernels = "linear_quantized_q4_1,linear_quantized_q8_0";
    let (report, _, _) = bench(
        "quantized",
        &["--device", "cpu", "--kernels", kernels, "--sizes", "2x33x64"],
    );
    // W [33, 64] in 2 blocks a row (Q4_1 20 bytes, Q8_0 34), x [2, 64] and y [2, 33] in f32
    for (kernel, block) in [("linear_quantized_q4_1", 20.0), ("linear_quantized_q8_0", 34.0)] {
        let r = row(&report, kernel, "2x33x64");
        assert_eq!(
            r["bytes"],
            33.0 * 2.0 * block + (2.0 * 64.0 + 2.0 * 33.0) * 4.0,
            "{kernel}: {r:#}"
        );
        assert_eq!(r["flops"], 2.0 * 2.0 * 33.0 * 64.0, "{kernel}: {r:#}");
        check_rates(r);
    }
    let rows = report["rows"].as_array().unwrap();
    let at = rows
        .iter()
        .position(|r| r["kernel"] == "linear_quantized_q4_1")
        .unwrap();
    assert_eq!(rows[at + 1]["library"], true, "{:#}", rows[at + 1]);
}

/// `kiln bench --gguf` on the tiny Llama fixture: the JSON's rows and their rates, then bad input.
#[test]
fn llama_gguf_run_reports_prefill_and_generation_rates() {
    let gguf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama-tiny/model.gguf");
    let gguf = gguf.to_str().unwrap();
    for device in ["cpu", "emu"] {
        let dir = temp_dir(&format!("llama-{device}"));
        let (json, svg) = (dir.join("llama.json"), dir.join("llama.svg"));
        let out = kiln(&[
            "bench",
            "--gguf",
            gguf,
            "--device",
            device,
            "--prompt-lens",
            "5,9",
            "--new-tokens",
            "3",
            "--reps",
            "2",
            "--json",
            json.to_str().unwrap(),
            "--plot",
            svg.to_str().unwrap(),
        ]);
        let shown = text(&out);
        assert!(out.status.success(), "{shown}");
        assert!(shown.contains("kiln bench generation: model.gguf"), "{shown}");
        let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let svg = std::fs::read_to_string(&svg).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        check_generation_chart(&svg, &report);
        assert_eq!(report["device"], device);
        assert_eq!(report["warning"].is_null(), device == "cpu", "{report:#}");
        // llama-tiny (V 128, C 48, F 80, 2 layers, kv width 24): per layer q, o 48·48, k, v 24·48,
        // gate, up, down 80·48, two norms of 48; table and untied head 128·48; final norm 48
        let per_layer = 2 * 48 * 48 + 2 * 24 * 48 + 3 * 80 * 48 + 2 * 48;
        assert_eq!(report["params"], 2 * per_layer + 2 * 128 * 48 + 48);
        assert!(report["threads"].as_u64().unwrap() >= 1);
        check_machine(&report, &shown);
        let rows = report["rows"].as_array().unwrap();
        let got: Vec<(&str, u64)> = rows
            .iter()
            .map(|r| (r["dtype"].as_str().unwrap(), r["prompt_tokens"].as_u64().unwrap()))
            .collect();
        let expected = [
            ("stored", 5),
            ("stored", 9),
            ("f32", 5),
            ("f32", 9),
            ("bf16", 5),
            ("bf16", 9),
        ];
        assert_eq!(got, expected, "{report:#}");
        // the fixture's weights are f32 (nothing to keep quantized), and a step reads all of them
        // but the token table's unused rows (its head is untied): 4 bytes each, 2 in bf16
        let read_per_token = 2 * per_layer + 128 * 48 + 48 + 48;
        assert_eq!(
            report["read"].as_str().unwrap().is_empty(),
            device != "cpu",
            "{report:#}"
        );
        for r in rows {
            let read_gbs = r["read_gbs"].as_f64();
            assert_eq!(read_gbs.is_some(), device == "cpu", "{r:#}");
            assert_eq!((r["batch"].as_u64(), r["new_tokens"].as_u64()), (Some(1), Some(3)));
            let bytes = if r["dtype"] == "bf16" { 2 } else { 4 } * read_per_token;
            assert_eq!(r["weight_bytes_per_token"], bytes, "{r:#}");
            let (ceiling, fraction) = (r["ceiling_tokens_per_s"].as_f64(), r["fraction_of_ceiling"].as_f64());
            if let Some(gbs) = read_gbs {
                let (ceiling, fraction) = (ceiling.unwrap(), fraction.unwrap());
                assert!((ceiling - gbs * 1e9 / bytes as f64).abs() <= 1e-9 * ceiling, "{r:#}");
                let rate = r["generation_tokens_per_s"].as_f64().unwrap();
                assert!((fraction - rate / ceiling).abs() <= 1e-9 * fraction, "{r:#}");
            } else {
                assert!(ceiling.is_none() && fraction.is_none(), "{r:#}");
            }
            for (phase, tokens) in [("prefill", r["prompt_tokens"].as_f64().unwrap()), ("generation", 3.0)] {
                let t = &r[phase];
                let (med, min, max) = (
                    t["median_s"].as_f64().unwrap(),
                    t["min_s"].as_f64().unwrap(),
                    t["max_s"].as_f64().unwrap(),
                );
                assert!(0.0 < min && min <= med && med <= max && t["reps"] == 2, "{r:#}");
                let rate = r[format!("{phase}_tokens_per_s")].as_f64().unwrap();
                assert!((rate - tokens / med).abs() <= 1e-9 * rate, "{r:#}");
            }
        }
    }

    // the fixture's context is 64 positions: 62 + 3 do not fit
    let out = kiln(&["bench", "--gguf", gguf, "--prompt-lens", "62", "--new-tokens", "3"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("65 positions") && shown.contains("context of 64"),
        "{shown}"
    );
    // the kernel options do not mix with --gguf
    let out = kiln(&["bench", "--gguf", gguf, "--kernels", "add"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = kiln(&["bench", "--gguf", "/nonexistent/model.gguf"]);
    let shown = text(&out);
    assert!(
        !out.status.success() && shown.contains("/nonexistent/model.gguf"),
        "{shown}"
    );
}

/// `kiln bench --generate nanogpt`: a GPT of nanoGPT's shape with random weights, its rows, the
/// weight bytes a step reads counted by hand, then bad input.
#[test]
fn gpt_generation_run_reports_its_rows_and_bytes() {
    let dir = temp_dir("generate-gpt");
    let json = dir.join("gpt.json");
    let out = kiln(&[
        "bench",
        "--generate",
        "nanogpt",
        "--prompt-lens",
        "4,7",
        "--new-tokens",
        "3",
        "--reps",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("nanoGPT shakespeare_char, random weights"), "{shown}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    // nanoGPT's shape: V 65, 64 positions, C 128, 4 layers, no biases; per layer two norms of C,
    // the attention's 3C·C and C·C, the MLP's 4C·C and C·4C; the final norm C; the head is wte
    let (c, layers) = (128, 4);
    let params = 65 * c + 64 * c + layers * (12 * c * c + 2 * c) + c;
    assert_eq!(report["params"], params, "{report:#}");
    let rows = report["rows"].as_array().unwrap();
    let got: Vec<(&str, u64)> = rows
        .iter()
        .map(|r| (r["dtype"].as_str().unwrap(), r["prompt_tokens"].as_u64().unwrap()))
        .collect();
    assert_eq!(got, [("f32", 4), ("f32", 7), ("bf16", 4), ("bf16", 7)], "{report:#}");
    // a step reads every weight but the position table's other 63 rows
    let read_per_token = params - 63 * c;
    for r in rows {
        let bytes = if r["dtype"] == "bf16" { 2 } else { 4 } * read_per_token;
        assert_eq!(r["weight_bytes_per_token"], bytes, "{r:#}");
        assert!(r["generation_tokens_per_s"].as_f64().unwrap() > 0.0, "{r:#}");
    }

    // a GPT has no quantized form; the default 16 + 128 positions exceed nanoGPT's 64
    let out = kiln(&[
        "bench",
        "--generate",
        "nanogpt",
        "--dtypes",
        "stored",
        "--new-tokens",
        "3",
    ]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("no stored (quantized) weights"), "{shown}");
    let out = kiln(&["bench", "--generate", "nanogpt"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("144 positions") && shown.contains("context of 64"),
        "{shown}"
    );
    // --generate does not mix with --gguf or the kernel options
    for extra in [["--gguf", "m.gguf"], ["--kernels", "add"]] {
        let out = kiln(&["bench", "--generate", "gpt2", extra[0], extra[1]]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    }
}

/// Every kernel at small sizes on the CPU: each result matches the reference, and no row is above
/// 100% of its ceiling. The ceilings are timed in alternation with their rows and taken at their
/// fastest call, so a loaded machine slows both alike. The table says what each percentage
/// compares; the SVG's texts stay inside it and apart.
#[test]
fn cpu_rows_at_small_sizes_stay_under_their_ceilings() {
    let kernels: Vec<&str> = kiln::bench::names().into_iter().filter(|&k| k != "gpt").collect();
    let kernels = kernels.join(",");
    let sizes = "33x65,17x9x32,1x2x17x16,1x4x2x17x8";
    let (report, shown, svg) = bench(
        "ceilings",
        &["--device", "cpu", "--kernels", &kernels, "--sizes", sizes],
    );
    check_checks(&report);
    let rows = report["rows"].as_array().unwrap();
    let mut with_pct = 0;
    for r in rows {
        let ours = r["library"] == false;
        // every kernel of ours runs on the CPU at these sizes
        assert!(!ours || r["time"].is_object(), "{r:#}");
        if let Some(pct) = r["roofline_pct"].as_f64() {
            with_pct += 1;
            assert!(
                pct > 0.0 && pct <= 100.0,
                "{}: {pct}% of its ceiling\n{shown}",
                r["kernel"]
            );
            // the measured ceiling held: not the row's own fastest call standing in for it
            let from = r["ceiling_from"].as_str().unwrap();
            let expected = if r["bound"] == "compute" { "matmul" } else { "stream" };
            assert_eq!(from, expected, "{r:#}\n{shown}");
        }
    }
    // every row of a dtype with a CPU matmul ceiling has one: f32, and bf16 where the CPU has a bf16 GEMM
    let bf16_dot = kiln::backend::cpu::gemm::has_bf16_dot();
    let rated_rows = rows
        .iter()
        .filter(|r| r["time"].is_object() && (r["dtype"] == "f32" || (bf16_dot && r["dtype"] == "bf16")))
        .count();
    assert_eq!(with_pct, rated_rows, "{shown}");
    // the table says what %roof and %lib are over
    for words in [
        "%roof: compute-bound rows over the best matmul rate",
        "memory-bound rows over a stream of their own bytes",
        "%lib: our rate over the row below it",
    ] {
        assert!(shown.contains(words), "{words}: {shown}");
    }
    check_svg_layout(&svg, &["kiln's kernel", "library, or the unfused composition"]);
}

/// `kiln bench --help` names every kernel.
#[test]
fn help_lists_every_kernel() {
    let out = kiln(&["bench", "--help"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    for name in kiln::bench::names() {
        assert!(shown.contains(name), "{name} is not in --help: {shown}");
    }
}

/// One `<text>` of an SVG: its box from its position, anchor and size (widths as the chart
/// estimates them, kiln::bench::report::text_width).
#[derive(Debug)]
struct TextBox {
    text: String,
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

/// The value of attribute `name` in the tag text `tag`.
fn attr(tag: &str, name: &str) -> Option<String> {
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(tag[at..].split('"').next()?.to_string())
}

fn text_boxes(svg: &str) -> Vec<TextBox> {
    let default_size: f64 = attr(svg.lines().next().unwrap(), "font-size").unwrap().parse().unwrap();
    let mut boxes = Vec::new();
    for piece in svg.split("<text").skip(1) {
        let (tag, rest) = piece.split_once('>').unwrap();
        let content = rest.split("</text>").next().unwrap();
        let text = content.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&");
        let size: f64 = attr(tag, "font-size").map_or(default_size, |s| s.parse().unwrap());
        let (x, y): (f64, f64) = (
            attr(tag, "x").unwrap().parse().unwrap(),
            attr(tag, "y").unwrap().parse().unwrap(),
        );
        let w = kiln::bench::report::text_width(&text, size);
        let x0 = match attr(tag, "text-anchor").as_deref() {
            Some("end") => x - w,
            Some("middle") => x - w / 2.0,
            _ => x,
        };
        // the baseline is at y; capitals and descenders span about 0.8 and 0.2 of the size
        boxes.push(TextBox {
            text,
            x0,
            x1: x0 + w,
            y0: y - 0.8 * size,
            y1: y + 0.2 * size,
        });
    }
    boxes
}

/// Every text of the chart lies inside it and overlaps no other; the legend has `legend`'s swatches
/// and the 100% line.
fn check_svg_layout(svg: &str, legend: &[&str]) {
    let head = svg.lines().next().unwrap();
    let (w, h): (f64, f64) = (
        attr(head, "width").unwrap().parse().unwrap(),
        attr(head, "height").unwrap().parse().unwrap(),
    );
    let boxes = text_boxes(svg);
    assert!(boxes.len() > 10, "{svg}");
    for b in &boxes {
        assert!(
            b.x0 >= 0.0 && b.x1 <= w && b.y0 >= 0.0 && b.y1 <= h,
            "{b:?} leaves the {w}x{h} chart"
        );
    }
    for (i, a) in boxes.iter().enumerate() {
        for b in &boxes[i + 1..] {
            let apart = a.x1 <= b.x0 || b.x1 <= a.x0 || a.y1 <= b.y0 || b.y1 <= a.y0;
            assert!(apart, "{a:?} overlaps {b:?}");
        }
    }
    for words in legend.iter().chain(&["100% of the ceiling"]) {
        assert!(boxes.iter().any(|b| b.text.contains(words)), "no {words:?} in {svg}");
    }
    assert!(
        boxes.iter().any(|b| b.text.starts_with("kiln ")),
        "no machine line in {svg}"
    );
}

/// `kiln bench --gguf --plot`'s chart against its JSON: the layout holds, a bar per row in the
/// rows' order, named by dtype and prompt, each as long as its fraction of the ceiling relative to
/// the others (no bar and "no ceiling" where the row has none: Emu).
fn check_generation_chart(svg: &str, report: &Value) {
    check_svg_layout(svg, &["kiln's generation tokens/s"]);
    let texts: Vec<String> = text_boxes(svg).into_iter().map(|b| b.text).collect();
    // the bars: rects of the bars' height (the legend's swatch is 10 px high)
    let widths: Vec<f64> = svg
        .split("<rect")
        .skip(1)
        .filter(|tag| attr(tag, "height").as_deref() == Some("14.0"))
        .map(|tag| attr(tag, "width").unwrap().parse().unwrap())
        .collect();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(widths.len(), rows.len(), "{svg}");
    let longest = widths.iter().cloned().fold(0.0, f64::max);
    let most = rows
        .iter()
        .filter_map(|r| r["fraction_of_ceiling"].as_f64())
        .fold(0.0, f64::max);
    for (r, width) in rows.iter().zip(&widths) {
        let label = format!("{}, prompt {}", r["dtype"].as_str().unwrap(), r["prompt_tokens"]);
        let at = texts
            .iter()
            .position(|t| *t == label)
            .unwrap_or_else(|| panic!("no {label:?} in {svg}"));
        let value = &texts[at + 1];
        match r["fraction_of_ceiling"].as_f64() {
            Some(fraction) => {
                // widths are written to 0.1 px
                assert!(
                    (width / longest - fraction / most).abs() <= 0.1 / longest,
                    "{label}: {svg}"
                );
                assert!(
                    value.ends_with(&format!("{:.1}%", 100.0 * fraction)),
                    "{label}: {value}"
                );
            }
            None => assert!(
                *width == 0.0 && value.ends_with("tokens/s, no ceiling"),
                "{label}: {value}"
            ),
        }
    }
}

/// Runs `kiln bench --device emu --profile` on one kernel at one size, the JSON counts written to a
/// file; returns the command's output and the kernel's entry `name` of the JSON.
fn emu_profile(kernel: &str, size: &str, name: &str) -> (String, Value) {
    // a directory of its own: tests running in parallel profile the same kernel at the same size
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let dir = temp_dir(&format!("bench-profile-{kernel}-{size}-{run}"));
    let json = dir.join("profile.json");
    let out = kiln_cmd(&[
        "bench",
        "--device",
        "emu",
        "--profile",
        "--kernels",
        kernel,
        "--sizes",
        size,
        "--reps",
        "1",
        "--seconds",
        "0.02",
        "--copy-mib",
        "1",
    ])
    .env_remove("KILN_EMU_PROFILE")
    .env("KILN_EMU_PROFILE_JSON", &json)
    .output()
    .expect("the kiln binary runs");
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    let profile: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let k = profile["kernels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == name)
        .unwrap_or_else(|| panic!("{profile:#}"))
        .clone();
    (shown, k)
}

/// `--profile` on Emu prints the emulator's profile table after the bench's, with a row for the
/// kernel it ran whose counts follow from the kernel's shape: softmax over 4 rows of 64 f32 (256-byte
/// rows, aligned) reads x once and writes y once (kernels/softmax.cu), so each launch loads and stores
/// 1024 distinct bytes in 32 whole sectors, and its lower bounds are those 2048 bytes over the HBM
/// bandwidths. On any other device `--profile` is refused.
#[test]
fn emu_profile_counts_the_kernels_it_ran() {
    let (shown, k) = emu_profile("softmax", "4x64", "softmax_f32");
    assert!(shown.contains("emu profile (counted by the emulator"), "{shown}");
    // the table printed once (by --profile, not again at exit)
    assert_eq!(shown.matches("emu profile (").count(), 1, "{shown}");
    let row = shown
        .lines()
        .find(|l| l.starts_with("softmax_f32 "))
        .unwrap_or_else(|| panic!("{shown}"));
    let launches = k["launches"].as_u64().unwrap();
    assert!(launches >= 1, "{k:#}");
    assert!(row.contains(&format!(" {launches} |")), "{row}");
    for side in ["global_load", "global_store"] {
        assert_eq!(k[side]["ideal_bytes"].as_u64(), Some(1024 * launches), "{side}: {k:#}");
        assert_eq!(k[side]["sectors"].as_u64(), Some(32 * launches), "{side}: {k:#}");
        assert!(k[side]["requests"].as_u64().unwrap() >= launches, "{side}: {k:#}");
    }
    assert_eq!(k["mma_m16n8k16"]["instructions"].as_u64(), Some(0), "{k:#}");
    // no mma, so the lower bounds are the footprint (x and y once per launch) over the datasheets'
    // HBM bandwidths: 3.35 TB/s (H100 SXM), 4.8 TB/s (H200)
    for side in ["global_load", "global_store"] {
        assert_eq!(
            k[side]["footprint_bytes"].as_u64(),
            Some(1024 * launches),
            "{side}: {k:#}"
        );
    }
    for (gpu, bytes_per_s) in [("h100", 3.35e12), ("h200", 4.8e12)] {
        let want = 2048.0 * launches as f64 / bytes_per_s * 1e6;
        let got = k[format!("{gpu}_lower_bound_us")].as_f64().unwrap();
        assert!((got - want).abs() <= 1e-5 * want, "{gpu}: {got} us, want {want}: {k:#}");
        assert!(row.contains(&format!("{want:.3}")), "{gpu}: {want:.3} in {row}");
    }

    let out = kiln(&["bench", "--device", "cpu", "--profile", "--kernels", "softmax"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("--profile counts what the emulator executes and needs --device emu, not cpu"),
        "{shown}"
    );
}

/// The quantized prefill on the integer tensor cores (`linear_quantized_mma_q4_0`,
/// kernels/linear_quantized.cu) at x [40, 96], W Q4_0 [67, 96]: 5 row groups of W (two CTAs of 4,
/// the second with one), 3 blocks of 32, and two CTAs of x rows, the first with 4 n-tiles of 8 and
/// the second with one (rows 32..39), so 5 · 3 · (4 + 1) = 75 `mma.m16n8k32` per launch. It reads
/// W's 5·16·3 tiles of 288 bytes, x's 40·96 quantized bytes and 40·3 scale pairs (8 bytes) once
/// each per launch (the footprint), writes y's 40·67 floats once, and its staged rows of x go in
/// and out of shared memory without bank conflicts (144-byte rows: a B fragment's 8 rows × 4 lanes
/// fall in 32 banks; the cp.async landings are 128 contiguous bytes per quarter warp).
#[test]
fn emu_profile_counts_the_quantized_prefill_mma() {
    let (_, k) = emu_profile("linear_quantized_prefill_q4_0", "40x67x96", "linear_quantized_mma_q4_0");
    let launches = k["launches"].as_u64().unwrap();
    assert!(launches >= 1, "{k:#}");
    assert_eq!(
        k["mma_m16n8k32_s8"]["instructions"].as_u64(),
        Some(75 * launches),
        "{k:#}"
    );
    assert_eq!(
        k["mma_m16n8k32_s8"]["int_ops"].as_u64(),
        Some(75 * 8192 * launches),
        "{k:#}"
    );
    assert_eq!(k["mma_m16n8k16"]["instructions"].as_u64(), Some(0), "{k:#}");
    let loads = (5 * 16 * 3 * 18 + 40 * 96 + 40 * 3 * 8) * launches;
    assert_eq!(k["global_load"]["footprint_bytes"].as_u64(), Some(loads), "{k:#}");
    assert_eq!(
        k["global_store"]["footprint_bytes"].as_u64(),
        Some(40 * 67 * 4 * launches),
        "{k:#}"
    );
    assert_eq!(
        k["global_store"]["ideal_bytes"].as_u64(),
        Some(40 * 67 * 4 * launches),
        "{k:#}"
    );
    for side in ["shared_load", "shared_store"] {
        assert!(k[side]["requests"].as_u64().unwrap() > 0, "{side}: {k:#}");
        assert_eq!(k[side]["bank_conflicts"].as_u64(), Some(0), "{side}: {k:#}");
    }
    // the bound is the footprint's bytes (the 75 mma take 0.3 ns at 1979 TOPS)
    let bytes = (loads + 40 * 67 * 4 * launches) as f64;
    let got = k["h100_lower_bound_us"].as_f64().unwrap();
    let want = bytes / 3.35e12 * 1e6;
    assert!((got - want).abs() <= 1e-5 * want, "{got} us, want {want}: {k:#}");
}

/// The SIMT matmul's shared-memory loads are free of bank conflicts for row-major operands (each
/// thread owns columns tx + 16 j, so a half warp reads 16 consecutive words of B's slab and 2 rows of
/// A's, kernels/matmul.cu): the profile counts one wavefront per shared load.
#[test]
fn emu_profile_finds_no_bank_conflicts_in_matmul_f32() {
    let (_, k) = emu_profile("matmul_f32", "33x70x20", "matmul_f32");
    let loads = &k["shared_load"];
    assert!(loads["requests"].as_u64().unwrap() > 0, "{k:#}");
    assert_eq!(loads["wavefronts"], loads["requests"], "{k:#}");
    assert_eq!(loads["bank_conflicts"].as_u64(), Some(0), "{k:#}");
}

/// The matmul slabs are stored into shared memory without bank conflicts, by `cp.async` (16-byte
/// landings, operands on the 16-byte grid: 64x64x64) and element by element (row strides of 63 and 65
/// elements: 33x63x65), for the SIMT and the tensor-core kernel (load_slab, kernels/matmul.cu).
#[test]
fn emu_profile_finds_no_bank_conflicts_in_the_matmul_slab_stores() {
    for size in ["64x64x64", "33x63x65"] {
        for kernel in ["matmul_f32", "matmul_bf16"] {
            let (_, k) = emu_profile(kernel, size, kernel);
            let stores = &k["shared_store"];
            assert!(stores["requests"].as_u64().unwrap() > 0, "{kernel} {size}: {k:#}");
            assert_eq!(
                stores["wavefronts"], stores["ideal_wavefronts"],
                "{kernel} {size}: {k:#}"
            );
            assert_eq!(stores["bank_conflicts"].as_u64(), Some(0), "{kernel} {size}: {k:#}");
        }
    }
}

/// The attention kernels' `cp.async` landings of their tiles (att_stage, kernels/attention.cu) take
/// the ideal wavefronts at head sizes whose rows have fewer than 8 chunks (d = 16, 32: rows of 2 and
/// 4 chunks, where a quarter warp on consecutive chunks of a row would span rows) and more (d = 64),
/// and `attention_bwd_dot` reads each row with a warp: 2 sectors per request for d = 32 bf16 (64
/// bytes), every byte used (one thread per row read a sector per lane).
#[test]
fn emu_profile_finds_no_bank_conflicts_in_the_attention_tile_landings() {
    for size in ["1x2x64x16", "1x2x64x32", "1x2x64x64"] {
        for (bench, kernel) in [
            ("attention_fwd_bf16", "attention_fwd_mma_bf16"),
            ("attention_bwd_bf16", "attention_bwd_dkdv_mma_bf16"),
            ("attention_bwd_bf16", "attention_bwd_dq_mma_bf16"),
        ] {
            let (_, k) = emu_profile(bench, size, kernel);
            let stores = &k["shared_store"];
            assert!(stores["requests"].as_u64().unwrap() > 0, "{kernel} {size}: {k:#}");
            assert_eq!(stores["bank_conflicts"].as_u64(), Some(0), "{kernel} {size}: {k:#}");
        }
    }
    let (_, k) = emu_profile("attention_bwd_bf16", "1x2x64x32", "attention_bwd_dot_bf16");
    let loads = &k["global_load"];
    let (requests, sectors) = (loads["requests"].as_u64().unwrap(), loads["sectors"].as_u64().unwrap());
    assert_eq!(sectors, 2 * requests, "{k:#}");
    assert_eq!(loads["bytes"], loads["ideal_bytes"], "{k:#}");
}

/// The bf16 epilogues store whole 32-byte sectors when the output's rows are whole sectors (N or d a
/// multiple of 16 elements): `matmul_bf16` regroups each row's mma fragments among a quad of lanes so
/// that a lane stores 8 consecutive columns in one 16-byte store (a warp: 8 rows x 64 bytes), and the
/// attention kernels store O, dQ, dK and dV the same way. Stored in fragment order, a warp's store was
/// 8 rows x 4 lanes x 2 bytes: 8 sectors of which a quarter was used. (The attention forward's lse
/// stores, 8 consecutive f32 of one warp, are whole sectors too at 64 rows.)
#[test]
fn emu_profile_finds_whole_sectors_in_the_bf16_epilogue_stores() {
    let mut cases = vec![];
    for size in ["64x64x64", "100x192x40", "128x128x128"] {
        cases.push(("matmul_bf16", size, "matmul_bf16"));
    }
    for size in ["1x2x64x16", "1x2x64x32", "1x2x64x64", "1x2x64x80"] {
        cases.push(("attention_fwd_bf16", size, "attention_fwd_mma_bf16"));
        cases.push(("attention_bwd_bf16", size, "attention_bwd_dkdv_mma_bf16"));
        cases.push(("attention_bwd_bf16", size, "attention_bwd_dq_mma_bf16"));
    }
    for (bench, size, kernel) in cases {
        let (_, k) = emu_profile(bench, size, kernel);
        let stores = &k["global_store"];
        assert!(stores["requests"].as_u64().unwrap() > 0, "{kernel} {size}: {k:#}");
        // every byte of every sector written
        assert_eq!(stores["ideal_bytes"], stores["bytes"], "{kernel} {size}: {k:#}");
    }
}
