//! `kiln bench`: kernel timings against the device's measured ceilings, the library matmul side by
//! side, and a GPT training step.
//!
//! For each selected kernel ([`cases::CASES`]) and size: warm-up, then the median over many
//! repetitions (CUDA events on a GPU, the host clock on the CPU and Emu), with the inputs rotated
//! over several sets so that the last-level cache does not flatter; the achieved TFLOP/s or GB/s;
//! and the percentage of the roofline measured in the same run ([`roofline`]). Emu timings measure
//! the emulator on the CPU and say nothing about a GPU: the report labels them so and gives no
//! percentages for them.
//!
//! - [`timing`]: clocks and statistics; [`cases`]: the table of kernels; [`library`]: cuBLAS and
//!   CBLAS; [`roofline`]: copy bandwidth and matmul ceilings; [`gpt`]: the training step;
//!   [`report`]: the terminal table, JSON and the SVG chart; [`llama`]: `kiln bench --gguf`, a
//!   Llama model's prefill and generation speed.

pub mod cases;
pub mod gpt;
pub mod library;
pub mod llama;
pub mod report;
pub mod roofline;
pub mod timing;
pub mod work;

use crate::{DType, Device, Error, Result, Rng};
use cases::{Bound, Case, Setup, CASES};
use roofline::Roofline;
use timing::{measure, Clock, Stats};

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
    pub gpt_batch: Option<usize>,
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
            gpt_batch: None,
            gpt_dtype: None,
        }
    }
}

/// Every name `--kernels` accepts.
pub fn names() -> Vec<&'static str> {
    CASES.iter().map(|c| c.name).chain([GPT]).collect()
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
    /// None when the row was skipped (`skipped` says why).
    pub time: Option<Stats>,
    pub tflops: Option<f64>,
    pub gbs: Option<f64>,
    /// Achieved over the roofline (matmul ceiling for compute-bound rows, copy bandwidth for
    /// memory-bound ones), in percent; None on Emu.
    pub roofline_pct: Option<f64>,
    /// Our rate over the library's at the same size, in percent (ours only).
    pub vs_library_pct: Option<f64>,
    pub skipped: Option<String>,
}

/// Everything one `kiln bench` run measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub device: String,
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
        dtypes.retain(|&d| d == DType::F32); // the CPU's fast matmul is f32
    }
    dtypes.sort_by_key(|d| d.as_str());
    dtypes.dedup();
    let copy_bytes = opts.copy_bytes.unwrap_or_else(|| default_copy_bytes(&dev));
    let roofline = roofline::measure_roofline(&dev, &clock, copy_bytes, &dtypes, opts.budget_s)?;

    let emu = dev == Device::Emu;
    let mut rows = Vec::new();
    for (case, case_sizes) in plan {
        for dims in case_sizes {
            let setup = Setup {
                dev,
                dims: &dims,
                rotate_bytes: rotate_bytes(&dev),
            };
            let mut rng = Rng::new(0);
            progress(&format!("{} {}", case.name, size_name(&dims)));
            let ours = measure_row(case, case.name, false, &setup, &roofline, &clock, opts, emu, |s| {
                (case.prepare)(s, &mut rng)
            });
            rows.push(ours);
            if let Some(lib) = case.library {
                let mut name = String::from("library");
                let mut row = measure_row(case, "", true, &setup, &roofline, &clock, opts, emu, |s| {
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
        match gpt::bench_gpt(&dev, &clock, &roofline, opts.gpt_steps, opts.gpt_batch, gpt_dtype) {
            Ok(g) => (Some(g), None),
            Err(e) => (None, Some(e.to_string())),
        }
    } else {
        (None, None)
    };
    Ok(Report {
        device: dev.to_string(),
        timing: clock.describe(),
        warning: emu.then(|| {
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

/// Prepares and times one row; a failure (an op not on this device yet, a library missing) becomes
/// a skipped row with the reason.
#[allow(clippy::too_many_arguments)]
fn measure_row(
    case: &Case,
    kernel: &str,
    library: bool,
    setup: &Setup,
    roofline: &Roofline,
    clock: &Clock,
    opts: &Options,
    emu: bool,
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
        time: None,
        tflops: None,
        gbs: None,
        roofline_pct: None,
        vs_library_pct: None,
        skipped: None,
    };
    let result = prepare(setup).and_then(|mut w| {
        row.flops = w.flops;
        row.bytes = w.bytes;
        row.input_sets = w.sets;
        measure(clock, opts.reps, opts.budget_s, |i| (w.run)(i))
    });
    match result {
        Ok(stats) => {
            let t = stats.median_s;
            row.time = Some(stats);
            row.tflops = (row.flops > 0.0).then(|| row.flops / t / 1e12);
            row.gbs = Some(row.bytes / t / 1e9);
            row.roofline_pct = match case.bound {
                _ if emu => None,
                Bound::Compute => roofline.peak_flops(case.dtype).map(|p| 100.0 * row.flops / t / p),
                Bound::Memory => Some(100.0 * row.bytes / t / 1e9 / roofline.copy_gbs),
            };
        }
        Err(e) => row.skipped = Some(e.to_string()),
    }
    row
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
