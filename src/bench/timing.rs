//! Timing one piece of work many times: device events on a GPU, the host clock elsewhere, and the
//! statistics of the samples.

use crate::backend::cuda::device::{CudaDevice, Executor};
use crate::{Device, Result};
use std::sync::Arc;
use std::time::Instant;

/// How a run is timed.
pub enum Clock {
    /// `Instant` around each call: the CPU's ops (and Emu's launches) finish before they return.
    Host,
    /// A pair of CUDA events around each call on the device's stream: GPU time, launches queued
    /// back to back without waiting between repetitions.
    Events(Arc<CudaDevice>),
}

impl Clock {
    /// The clock for `dev`; opening a GPU that is not there is an error saying why.
    pub fn for_device(dev: &Device) -> Result<Clock> {
        match dev {
            Device::Cuda(_) => Ok(Clock::Events(CudaDevice::get(dev)?)),
            Device::Cpu | Device::Emu => Ok(Clock::Host),
        }
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Clock::Host => "host clock",
            Clock::Events(_) => "CUDA events",
        }
    }

    /// Calls `f(i)` for i in 0..reps and returns each call's seconds. With events, every call is
    /// queued first and the times are read once at the end.
    pub fn time(&self, reps: usize, mut f: impl FnMut(usize) -> Result<()>) -> Result<Vec<f64>> {
        match self {
            Clock::Host => (0..reps)
                .map(|i| {
                    let t0 = Instant::now();
                    f(i)?;
                    Ok(t0.elapsed().as_secs_f64())
                })
                .collect(),
            Clock::Events(dev) => {
                let Executor::Real(gpu) = dev.executor() else {
                    unreachable!("Clock::Events is made for Device::Cuda only")
                };
                let mut marks = Vec::with_capacity(reps);
                for i in 0..reps {
                    let (start, end) = (gpu.event()?, gpu.event()?);
                    gpu.record(&start)?;
                    f(i)?;
                    gpu.record(&end)?;
                    marks.push((start, end));
                }
                marks.iter().map(|(s, e)| gpu.elapsed(s, e)).collect()
            }
        }
    }
}

/// The median, fastest and slowest of a set of timings, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Stats {
    pub reps: usize,
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
}

impl Stats {
    /// The statistics of `samples` (at least one, none NaN).
    pub fn of(samples: &[f64]) -> Stats {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Stats {
            reps: s.len(),
            median_s: median(&s),
            min_s: s[0],
            max_s: s[s.len() - 1],
        }
    }
}

/// The median of sorted `s`: the middle element, or the mean of the two middle ones.
pub(crate) fn median(s: &[f64]) -> f64 {
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// How often to repeat: `fixed` if given, else enough calls of `estimate_s` each to fill
/// `budget_s`, at least 5 and at most 200.
pub fn repetitions(fixed: Option<usize>, estimate_s: f64, budget_s: f64) -> usize {
    fixed.unwrap_or_else(|| {
        let n = budget_s / estimate_s.max(1e-9);
        (n.ceil() as usize).clamp(5, 200)
    })
}

/// Warms `f` up (module loading, allocator, caches: twice, untimed), estimates one call, then
/// times the repetitions.
pub fn measure(
    clock: &Clock,
    fixed_reps: Option<usize>,
    budget_s: f64,
    mut f: impl FnMut(usize) -> Result<()>,
) -> Result<Stats> {
    f(0)?;
    f(1)?;
    let estimate = clock.time(1, &mut f)?[0];
    let reps = repetitions(fixed_reps, estimate, budget_s);
    Ok(Stats::of(&clock.time(reps, f)?))
}

/// Times `f` and its ceiling `roof` in alternation, after warming both up, so that both meet the
/// same conditions (a machine's load, a GPU's clocks): `f` is repeated as in [`measure`], and `roof`
/// as often as fits the same budget but at most as often as `f`, its calls spread evenly among
/// `f`'s (f(0), roof(0), f(1), roof(1), ... when the counts are equal). Returns (f's, roof's)
/// statistics.
pub fn measure_beside(
    clock: &Clock,
    fixed_reps: Option<usize>,
    budget_s: f64,
    mut f: impl FnMut(usize) -> Result<()>,
    mut roof: impl FnMut(usize) -> Result<()>,
) -> Result<(Stats, Stats)> {
    for i in 0..2 {
        f(i)?;
        roof(i)?;
    }
    let reps = repetitions(fixed_reps, clock.time(1, &mut f)?[0], budget_s);
    let roof_reps = repetitions(fixed_reps, clock.time(1, &mut roof)?[0], budget_s).min(reps);
    // true where the ceiling runs: after f's call j whenever ⌊(j + 1)·roof_reps / reps⌋ steps up
    let schedule: Vec<bool> = (0..reps)
        .flat_map(|j| {
            [
                Some(false),
                ((j + 1) * roof_reps / reps > j * roof_reps / reps).then_some(true),
            ]
        })
        .flatten()
        .collect();
    let (mut fi, mut ri) = (0, 0);
    let samples = clock.time(schedule.len(), |k| {
        if schedule[k] {
            ri += 1;
            roof(ri - 1)
        } else {
            fi += 1;
            f(fi - 1)
        }
    })?;
    let pick = |which: bool| -> Vec<f64> {
        samples
            .iter()
            .zip(&schedule)
            .filter(|(_, &s)| s == which)
            .map(|(&t, _)| t)
            .collect()
    };
    Ok((Stats::of(&pick(false)), Stats::of(&pick(true))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts_and_unsorted_input() {
        let s = Stats::of(&[5.0, 1.0, 3.0]);
        assert_eq!((s.median_s, s.min_s, s.max_s, s.reps), (3.0, 1.0, 5.0, 3));
        let s = Stats::of(&[4.0, 1.0, 2.0, 100.0]);
        assert_eq!(s.median_s, 3.0); // (2 + 4) / 2: the outlier does not move it
        assert_eq!(Stats::of(&[7.0]).median_s, 7.0);
    }

    #[test]
    fn repetitions_fill_the_budget_within_bounds() {
        assert_eq!(repetitions(Some(3), 1.0, 1.0), 3);
        assert_eq!(repetitions(None, 0.01, 0.5), 50);
        assert_eq!(repetitions(None, 1.0, 0.5), 5);
        assert_eq!(repetitions(None, 0.0, 0.5), 200);
    }

    #[test]
    fn measure_beside_alternates_and_splits_the_samples() {
        let order = std::cell::RefCell::new(Vec::new());
        let (ours, roof) = measure_beside(
            &Clock::Host,
            Some(3),
            1.0,
            |i| {
                order.borrow_mut().push(('f', i));
                std::thread::sleep(std::time::Duration::from_millis(3));
                Ok(())
            },
            |i| {
                order.borrow_mut().push(('r', i));
                Ok(())
            },
        )
        .unwrap();
        // two warm-ups each, one estimate each, then three alternated pairs
        let timed: Vec<_> = order.borrow()[6..].to_vec();
        assert_eq!(timed, [('f', 0), ('r', 0), ('f', 1), ('r', 1), ('f', 2), ('r', 2)]);
        assert_eq!((ours.reps, roof.reps), (3, 3));
        assert!(
            ours.min_s >= 0.003 && roof.median_s < ours.median_s,
            "{ours:?} {roof:?}"
        );
    }

    #[test]
    fn a_slow_ceiling_runs_fewer_times_spread_among_the_row() {
        let order = std::cell::RefCell::new(String::new());
        let (ours, roof) = measure_beside(
            &Clock::Host,
            None,
            1.0,
            |_| {
                order.borrow_mut().push('f');
                Ok(())
            },
            |_| {
                order.borrow_mut().push('r');
                std::thread::sleep(std::time::Duration::from_millis(10));
                Ok(())
            },
        )
        .unwrap();
        // f is fast: the most calls, 200; the ceiling fills 1 s at 10 ms or more a call: at most 100
        assert_eq!(ours.reps, 200);
        assert!((5..=100).contains(&roof.reps), "{roof:?}");
        let timed = &order.borrow()[6..];
        assert!(timed.ends_with('r'), "{timed}");
        // the ceiling's calls are spread evenly: every gap holds ⌊200 / n⌋ or ⌈200 / n⌉ of f's calls
        let gaps: Vec<usize> = timed.split('r').filter(|g| !g.is_empty()).map(str::len).collect();
        let n = roof.reps;
        assert_eq!(gaps.len(), n, "{timed}");
        assert!(
            gaps.iter().all(|&g| g == 200 / n || g == 200_usize.div_ceil(n)),
            "{gaps:?}"
        );
    }

    #[test]
    fn host_clock_times_every_call() {
        let mut calls = Vec::new();
        let t = Clock::Host
            .time(4, |i| {
                calls.push(i);
                std::thread::sleep(std::time::Duration::from_millis(2));
                Ok(())
            })
            .unwrap();
        assert_eq!(calls, [0, 1, 2, 3]);
        assert!(t.iter().all(|&s| s >= 0.002), "{t:?}");
    }
}
