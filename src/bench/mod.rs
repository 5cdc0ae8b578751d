//! `kiln bench`: kernel timings against the device's measured ceilings, the library matmul side by
//! side, and a GPT training step.
//!
//! First every selected kernel ([`cases::CASES`]) at every size is run once and its result checked
//! against the CPU reference ([`check`]); any mismatch stops the run with the kernel, size and
//! worst error, before anything is timed ("All results match. Starting benchmarks.", as llm.c's
//! `dev/cuda`). Then for each kernel and size: warm-up, then the median over many repetitions
//! (CUDA events on a GPU, the host clock on the CPU and Emu), with the inputs rotated over several
//! sets so that the last-level cache does not flatter; the achieved TFLOP/s or GB/s; and the
//! percentage of the row's ceiling, timed in alternation with it ([`roofline`]). Emu timings
//! measure the emulator on the CPU and say nothing about a GPU: the report labels them so and gives
//! no percentages for them.
//!
//! - [`timing`]: clocks and statistics; [`cases`]: the table of kernels; [`check`]: the comparison
//!   with the reference; [`library`]: cuBLAS and CBLAS; [`roofline`]: the ceilings; [`gpt`]: the
//!   training step; [`report`]: the terminal table, JSON and the SVG chart; [`machine`]: what ran
//!   it; [`generation`]: `kiln bench --gguf` and `--generate`, a Llama's or a GPT's prefill and
//!   generation speed;
//!   [`allreduce`]: `kiln bench --kernels allreduce` under `mpirun`, the all-reduce of
//!   data-parallel training.

pub mod allreduce;
pub mod cases;
pub mod check;
pub mod generation;
pub mod gpt;
pub mod library;
pub mod machine;
pub mod report;
pub mod roofline;
pub mod timing;
pub mod work;

use crate::{DType, Device, Error, Result, Rng};
use cases::{Bound, Case, Setup, CASES};
use check::Check;
use machine::Machine;
use roofline::{Ceilings, Roofline};
use timing::{measure, measure_beside, Clock, Stats};

/// The name that selects the GPT training-step benchmark in `--kernels`.
pub const GPT: &str = "gpt";

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub device: Device,
    /// Kernel names (see [`names`]); empty for all.
    pub kernels: Vec<String>,
    /// Sizes such as "4096x4096x4096" or "8192x768"; empty for each kernel's defaults. Each
    /// kernel takes the sizes with its number of dimensions.
    pub sizes: Vec<String>,
    /// Repetitions per measurement (default: enough to fill `budget_s`, 5 to 200).
    pub reps: Option<usize>,
    /// Seconds of timed calls aimed at per measurement.
    pub budget_s: f64,
    /// Bytes of the copy that measures bandwidth (default: per device).
    pub copy_bytes: Option<usize>,
    pub gpt_steps: usize,
    /// The GPT step's model (default: per device, see [`gpt::workload`]).
    pub gpt_model: Option<gpt::GptModel>,
    pub gpt_batch: Option<usize>,
    /// The GPT step's sequence length (default: per model and device).
    pub gpt_context: Option<usize>,
    /// The GPT step's compute dtype (default: [`gpt::default_dtype`]).
    pub gpt_dtype: Option<DType>,
}

impl Options {
    pub fn new(device: Device) -> Options {
        Options {
            device,
            kernels: Vec::new(),
            sizes: Vec::new(),
            reps: None,
            budget_s: 0.3,
            copy_bytes: None,
            gpt_steps: 10,
            gpt_model: None,
            gpt_batch: None,
            gpt_context: None,
            gpt_dtype: None,
        }
    }
}

/// Every name `--kernels` accepts.
pub fn names() -> Vec<&'static str> {
    CASES.iter().map(|c| c.name).chain([GPT]).collect()
}

/// `--kernels`'s help: what it takes and every kernel's name.
pub fn kernels_help() -> String {
    format!(
        "Kernels to time, comma-separated or repeated [all]: {}; or `allreduce` alone, under mpirun \
         with the mpi feature, or with --collective nccl on --device cuda (--sizes in bytes; \
         docs/distributed.md)",
        names().join(", ")
    )
}

/// One measured (or skipped) kernel at one size.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub kernel: String,
    /// Our kernel, or the library it is compared with.
    pub library: bool,
    pub size: String,
    pub dtype: String,
    pub bound: &'static str,
    pub flops: f64,
    pub bytes: f64,
    pub input_sets: usize,
    /// Bytes the timed calls cycle through: every input set's reads, and the writes.
    pub working_set_bytes: f64,
    /// The comparison with the CPU reference before timing (None for a library, not ours to
    /// check).
    pub check: Option<Check>,
    /// None when the row was skipped (`skipped` says why).
    pub time: Option<Stats>,
    pub tflops: Option<f64>,
    pub gbs: Option<f64>,
    /// The row's ceiling, timed beside it (roofline.rs): the best matmul rate in TFLOP/s for a
    /// compute-bound row, a stream of the row's bytes in GB/s for a memory-bound one.
    pub ceiling_tflops: Option<f64>,
    pub ceiling_gbs: Option<f64>,
    /// What set the ceiling: "matmul", "stream", or "row" where the row's own fastest call beat
    /// them.
    pub ceiling_from: Option<&'static str>,
    /// Achieved over the ceiling, in percent; None on Emu.
    pub roofline_pct: Option<f64>,
    /// Our rate over the library's at the same size, in percent (ours only).
    pub vs_library_pct: Option<f64>,
    pub skipped: Option<String>,
}

/// Everything one `kiln bench` run measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub device: String,
    pub machine: Machine,
    /// The comparison with the CPU reference: how many rows were checked and the worst error.
    pub checked: String,
    pub timing: &'static str,
    /// Set when the numbers must not be read as speed (Emu).
    pub warning: Option<String>,
    pub date_unix: u64,
    pub roofline: Roofline,
    pub rows: Vec<Row>,
    pub gpt: Option<gpt::GptResult>,
    pub gpt_skipped: Option<String>,
}

/// A size such as "4096x4096x4096" as its dimensions.
pub fn parse_size(s: &str) -> Result<Vec<usize>> {
    let dims: Option<Vec<usize>> = s.split('x').map(|d| d.trim().parse().ok().filter(|&v| v > 0)).collect();
    dims.ok_or_else(|| {
        Error::invalid(
            "bench",
            format!("cannot read the size {s:?}: expected positive integers joined by x, such as 4096x4096x4096 or 8192x768"),
        )
    })
}

/// The selected cases (and whether the GPT step is), checked against the names.
fn select(kernels: &[String]) -> Result<(Vec<&'static Case>, bool)> {
    if kernels.is_empty() {
        return Ok((CASES.iter().collect(), true));
    }
    let mut cases = Vec::new();
    let mut gpt = false;
    for k in kernels {
        match cases::find(k) {
            Some(c) => cases.push(c),
            None if k == GPT => gpt = true,
            None => {
                return Err(Error::invalid(
                    "bench",
                    format!("unknown kernel {k:?}; the kernels are {}", names().join(", ")),
                ))
            }
        }
    }
    Ok((cases, gpt))
}

/// The sizes `case` runs at: those of `sizes` with its number of dimensions, or its defaults.
fn sizes_for(case: &Case, sizes: &[Vec<usize>], dev: &Device) -> Result<Vec<Vec<usize>>> {
    if sizes.is_empty() {
        return Ok(case.default_sizes(dev).iter().map(|s| s.to_vec()).collect());
    }
    let fit: Vec<Vec<usize>> = sizes.iter().filter(|s| s.len() == case.rank()).cloned().collect();
    if fit.is_empty() {
        return Err(Error::invalid(
            "bench",
            format!(
                "{} takes sizes of the form {}, and none of --sizes has {} dimensions",
                case.name,
                case.dims,
                case.rank()
            ),
        ));
    }
    Ok(fit)
}

/// "4096x768" for [4096, 768].
pub fn size_name(dims: &[usize]) -> String {
    dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
}

/// Bytes over which inputs are rotated: several times the last-level cache (an H100/H200 has 50-60
/// MB of L2); none on Emu, whose timings mean nothing.
pub fn rotate_bytes(dev: &Device) -> usize {
    match dev {
        Device::Cuda(_) => 256 << 20,
        Device::Cpu => 64 << 20,
        Device::Emu => 0,
    }
}

fn default_copy_bytes(dev: &Device) -> usize {
    match dev {
        Device::Cuda(_) => 1 << 30,
        Device::Cpu => 256 << 20,
        Device::Emu => 4 << 20,
    }
}

/// Runs the benchmark; `progress` hears about each measurement as it starts.
pub fn run(opts: &Options, mut progress: impl FnMut(&str)) -> Result<Report> {
    let dev = opts.device;
    let (selected, with_gpt) = select(&opts.kernels)?;
    let sizes: Vec<Vec<usize>> = opts.sizes.iter().map(|s| parse_size(s)).collect::<Result<_>>()?;
    let plan: Vec<(&Case, Vec<Vec<usize>>)> = selected
        .iter()
        .map(|&c| Ok((c, sizes_for(c, &sizes, &dev)?)))
        .collect::<Result<_>>()?;
    let clock = Clock::for_device(&dev)?;

    progress("roofline: copy bandwidth and library matmul");
    let mut dtypes: Vec<DType> = selected
        .iter()
        .filter(|c| c.bound == Bound::Compute)
        .map(|c| c.dtype)
        .collect();
    let gpt_dtype = opts.gpt_dtype.unwrap_or_else(|| gpt::default_dtype(&dev));
    if with_gpt {
        dtypes.push(gpt_dtype);
    }
    if dev == Device::Cpu {
        // the CPU's fast matmuls: f32, and bf16 where it runs on `vdpbf16ps` or AMX
        let bf16_dot = crate::backend::cpu::gemm::has_bf16_dot();
        dtypes.retain(|&d| d == DType::F32 || (d == DType::BF16 && bf16_dot));
    }
    dtypes.sort_by_key(|d| d.as_str());
    dtypes.dedup();
    let machine = Machine::this(&dev);

    progress("checking every kernel against the CPU reference");
    let (checks, checked) = check_all(&plan, &dev, &mut progress)?;
    progress("All results match. Starting benchmarks.");

    progress("roofline: copy bandwidth and library matmul");
    let copy_bytes = opts.copy_bytes.unwrap_or_else(|| default_copy_bytes(&dev));
    let (roofline, mut ceilings) = roofline::measure_roofline(&dev, &clock, copy_bytes, &dtypes, opts.budget_s)?;

    let mut rows = Vec::new();
    let mut checks = checks.into_iter();
    let mut next_check = || checks.next().expect("one check per row");
    for (case, case_sizes) in plan {
        for dims in case_sizes {
            let setup = Setup {
                dev,
                dims: &dims,
                rotate_bytes: rotate_bytes(&dev),
            };
            let mut rng = Rng::new(0);
            progress(&format!("{} {}", case.name, size_name(&dims)));
            let mut timer = Timer {
                clock: &clock,
                ceilings: &mut ceilings,
                opts,
            };
            let ours = timer.row(case, case.name, false, &setup, next_check(), |s| {
                (case.prepare)(s, &mut rng)
            });
            rows.push(ours);
            if let Some(lib) = case.library {
                let mut name = String::from("library");
                let mut row = timer.row(case, "", true, &setup, next_check(), |s| {
                    let (n, w) = lib(s, &mut rng)?;
                    name = n;
                    Ok(w)
                });
                row.kernel = name;
                let ours = rows.last_mut().expect("pushed above");
                if let (Some(a), Some(b)) = (&ours.time, &row.time) {
                    ours.vs_library_pct = Some(100.0 * b.median_s / a.median_s);
                }
                rows.push(row);
            }
        }
    }

    let (gpt, gpt_skipped) = if with_gpt {
        progress("gpt training step");
        let work = gpt::workload(&dev, opts.gpt_model, opts.gpt_batch, opts.gpt_context);
        match work.and_then(|w| gpt::bench_gpt(&dev, &clock, &roofline, opts.gpt_steps, w, gpt_dtype)) {
            Ok(g) => (Some(g), None),
            Err(e) => (None, Some(e.to_string())),
        }
    } else {
        (None, None)
    };
    Ok(Report {
        device: dev.to_string(),
        machine,
        checked,
        timing: clock.describe(),
        warning: (dev == Device::Emu).then(|| {
            "Emu runs the CUDA kernels in a CPU emulator: these timings measure the emulator and say nothing about \
             a GPU's speed"
                .to_string()
        }),
        date_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        roofline,
        rows,
        gpt,
        gpt_skipped,
    })
}

/// What a row's check found: its result (None for a library, which is not checked), or why it
/// could not run.
type Checked = std::result::Result<Option<Check>, String>;

/// Runs every planned row once on a single input set and compares it with the CPU reference, in
/// the order the rows are timed. Returns each row's outcome and a summary, or, if any result does
/// not match, an error naming each such kernel, size and worst error.
fn check_all(
    plan: &[(&Case, Vec<Vec<usize>>)],
    dev: &Device,
    progress: &mut impl FnMut(&str),
) -> Result<(Vec<Checked>, String)> {
    let mut outcomes = Vec::new();
    for (case, case_sizes) in plan {
        for dims in case_sizes {
            let setup = Setup {
                dev: *dev,
                dims,
                rotate_bytes: 0,
            };
            let mut rng = Rng::new(0);
            progress(&format!("check {} {}", case.name, size_name(dims)));
            let run = |w: Result<cases::Work>| -> Checked {
                let mut w = w.map_err(|e| e.to_string())?;
                w.check
                    .as_mut()
                    .map(|check| check())
                    .transpose()
                    .map_err(|e| e.to_string())
            };
            let ours = run((case.prepare)(&setup, &mut rng));
            outcomes.push((case.name, dims, ours));
            if let Some(lib) = case.library {
                outcomes.push((case.name, dims, run(lib(&setup, &mut rng).map(|(_, w)| w))));
            }
        }
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|(name, dims, c)| match c {
            Ok(Some(c)) if !c.passed() => Some(format!(
                "{name} {}: worst error {:.3e} at {} (got {}, expected {}), tolerance {:.0e}",
                size_name(dims),
                c.worst_error,
                c.worst_at,
                c.got,
                c.expected,
                c.tolerance
            )),
            _ => None,
        })
        .collect();
    if !failed.is_empty() {
        return Err(Error::invalid(
            "bench",
            format!(
                "results do not match the CPU reference, so nothing was timed:\n  {}",
                failed.join("\n  ")
            ),
        ));
    }
    let passed: Vec<&Check> = outcomes
        .iter()
        .filter_map(|(_, _, c)| c.as_ref().ok()?.as_ref())
        .collect();
    let worst = passed.iter().map(|c| c.worst_error / c.tolerance).fold(0.0, f64::max);
    // a run of cases without a reference check of their own (the GPT training step, whose
    // numbers its tests check) says so, rather than "all 0 results checked match"
    let summary = match passed.len() {
        0 => "no case of this run has a CPU-reference check of its own".to_string(),
        n => format!(
            "all {n} results checked match the CPU reference (worst error {:.1}% of its tolerance)",
            100.0 * worst
        ),
    };
    Ok((outcomes.into_iter().map(|(_, _, c)| c).collect(), summary))
}

/// Times rows, each beside its ceiling.
struct Timer<'a> {
    clock: &'a Clock,
    ceilings: &'a mut Ceilings,
    opts: &'a Options,
}

impl Timer<'_> {
    /// Prepares and times one row whose check found `checked`; a failure (an op not on this
    /// device yet, a library missing) becomes a skipped row with the reason.
    fn row(
        &mut self,
        case: &Case,
        kernel: &str,
        library: bool,
        setup: &Setup,
        checked: Checked,
        prepare: impl FnOnce(&Setup) -> Result<cases::Work>,
    ) -> Row {
        let mut row = Row {
            kernel: kernel.to_string(),
            library,
            size: size_name(setup.dims),
            dtype: case.dtype.as_str().to_string(),
            bound: match case.bound {
                Bound::Compute => "compute",
                Bound::Memory => "memory",
            },
            flops: 0.0,
            bytes: 0.0,
            input_sets: 0,
            working_set_bytes: 0.0,
            check: None,
            time: None,
            tflops: None,
            gbs: None,
            ceiling_tflops: None,
            ceiling_gbs: None,
            ceiling_from: None,
            roofline_pct: None,
            vs_library_pct: None,
            skipped: None,
        };
        match checked {
            Ok(c) => row.check = c,
            Err(why) => {
                row.skipped = Some(why);
                return row;
            }
        }
        let (clock, opts) = (self.clock, self.opts);
        let ceilings = &mut *self.ceilings;
        let result = prepare(setup).and_then(|mut w| {
            row.flops = w.flops;
            row.bytes = w.bytes;
            row.input_sets = w.sets;
            row.working_set_bytes = (w.bytes - w.written) * w.sets as f64 + w.written;
            match ceilings.for_row(&setup.dev, case.bound, case.dtype, &w)? {
                Some(mut ceiling) => {
                    let (ours, roof) =
                        measure_beside(clock, opts.reps, opts.budget_s, &mut w.run, |i| (ceiling.work().run)(i))?;
                    Ok((ours, Some(ceiling.rate(roof.min_s))))
                }
                None => Ok((measure(clock, opts.reps, opts.budget_s, &mut w.run)?, None)),
            }
        });
        match result {
            Ok((stats, ceiling)) => {
                let (t, fastest) = (stats.median_s, stats.min_s);
                row.time = Some(stats);
                row.tflops = (row.flops > 0.0).then(|| row.flops / t / 1e12);
                row.gbs = Some(row.bytes / t / 1e9);
                if let Some(measured) = ceiling {
                    let (work, from) = match case.bound {
                        Bound::Compute => (row.flops, "matmul"),
                        Bound::Memory => (row.bytes, "stream"),
                    };
                    // the fastest rate seen for this work: the ceiling's, or the row's own best call
                    let best_call = work / fastest;
                    let (rate, from) = if best_call > measured {
                        (best_call, "row")
                    } else {
                        (measured, from)
                    };
                    match case.bound {
                        Bound::Compute => row.ceiling_tflops = Some(rate / 1e12),
                        Bound::Memory => row.ceiling_gbs = Some(rate / 1e9),
                    }
                    row.ceiling_from = Some(from);
                    row.roofline_pct = Some(100.0 * work / t / rate);
                }
            }
            Err(e) => row.skipped = Some(e.to_string()),
        }
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_bad_ones_are_named() {
        assert_eq!(parse_size("4096x768x3").unwrap(), vec![4096, 768, 3]);
        assert_eq!(parse_size("17").unwrap(), vec![17]);
        for bad in ["", "4096x", "0x3", "ax3", "3x-1"] {
            let e = parse_size(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn unknown_kernel_lists_the_known_ones() {
        let Err(e) = select(&["softmax".into(), "nope".into()]) else {
            panic!("an unknown kernel was accepted")
        };
        let e = e.to_string();
        assert!(
            e.contains("unknown kernel \"nope\"") && e.contains("matmul_f32") && e.contains("gpt"),
            "{e}"
        );
        let (cases, gpt) = select(&["gpt".into(), "add".into()]).unwrap();
        assert!(gpt && cases.len() == 1 && cases[0].name == "add");
    }

    /// A case whose check finds 2.5 where the reference has 2, for [`check_all`].
    const WRONG: Case = Case {
        name: "wrong",
        about: "a kernel that adds a half to its second element",
        dims: "ROWSxCOLS",
        bound: Bound::Memory,
        dtype: DType::F32,
        cuda: &[],
        cpu: &[],
        emu: &[],
        prepare: |_, _| {
            Ok(cases::Work {
                flops: 0.0,
                bytes: 8.0,
                written: 4.0,
                sets: 1,
                run: Box::new(|_| Ok(())),
                check: Some(Box::new(|| {
                    let c = check::Comparison::new(check::tolerance(DType::F32));
                    Ok(c.compare("y", &[1.0, 2.5], &[1.0, 2.0]).finish())
                })),
            })
        },
        library: None,
    };

    #[test]
    fn a_mismatch_stops_the_run_naming_kernel_size_and_error() {
        let add = cases::find("add").unwrap();
        let plan = vec![(add, vec![vec![3, 5]]), (&WRONG, vec![vec![2, 1]])];
        let mut heard = Vec::new();
        let e = check_all(&plan, &Device::Cpu, &mut |m: &str| heard.push(m.to_string()))
            .unwrap_err()
            .to_string();
        // error 0.5 / (2 + rms 1.58) at y[1]
        assert!(
            e.contains("do not match the CPU reference, so nothing was timed")
                && e.contains("wrong 2x1: worst error 1.396e-1 at y[1] (got 2.5, expected 2), tolerance 1e-4"),
            "{e}"
        );
        assert!(!e.contains("add 3x5"), "{e}");
        assert_eq!(heard, ["check add 3x5", "check wrong 2x1"]);
        let (outcomes, summary) = check_all(&plan[..1], &Device::Cpu, &mut |_: &str| ()).unwrap();
        assert!(matches!(&outcomes[..], [Ok(Some(c))] if c.passed() && c.compared == 15));
        assert!(
            summary.starts_with("all 1 results checked match the CPU reference"),
            "{summary}"
        );
        let (outcomes, summary) = check_all(&[], &Device::Cpu, &mut |_: &str| ()).unwrap();
        assert!(outcomes.is_empty());
        assert_eq!(summary, "no case of this run has a CPU-reference check of its own");
    }

    #[test]
    fn sizes_go_to_the_kernels_of_their_rank() {
        let mm = cases::find("matmul_f32").unwrap();
        let sm = cases::find("softmax").unwrap();
        let sizes = vec![vec![3, 5, 7], vec![9, 33]];
        assert_eq!(sizes_for(mm, &sizes, &Device::Cpu).unwrap(), vec![vec![3, 5, 7]]);
        assert_eq!(sizes_for(sm, &sizes, &Device::Cpu).unwrap(), vec![vec![9, 33]]);
        let e = sizes_for(mm, &[vec![9, 33]], &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("matmul_f32 takes sizes of the form MxNxK"), "{e}");
    }
}
