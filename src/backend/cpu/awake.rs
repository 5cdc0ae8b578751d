//! Workers that stay awake through a burst of small parallel regions.
//!
//! A decode step of SmolLM2-135M opens about 150 parallel regions (one per matrix × vector,
//! norm, attention, ...), each a few to a few tens of microseconds of work, and nanoGPT's small
//! training step about 300. Between two regions rayon's idle worker yields its core for 32 rounds,
//! then falls asleep on a futex; the next region wakes it through the kernel's scheduler, which on
//! a virtual machine costs more than a small region's work (perf, bf16 SmolLM2 decode: ~15% of the
//! samples in the scheduler). Here the pool's other workers stay awake instead, while kiln's CPU
//! ops run back to back: each runs one *poller*, a rayon job that takes the pool's pending jobs as
//! they appear (`rayon::yield_now`: the caller's deque, then the others', then the injector) and
//! yields its core in between (`sched_yield`, which returns at once when nothing else wants it).
//!
//! ```text
//! driver (worker 0):  op ─ touch ─ op ─ touch ─ op ─ touch ────────────── (no op for IDLE)
//! worker 1:           poller: run job · yield · run job · yield · run job · yield ··· return
//! ```
//!
//! Every CPU tensor an op makes calls [`keep_workers_awake`] on the thread that runs the ops (the
//! driver; ops make their tensors there, not in their parallel loops). The first call with no
//! pollers running starts one on every other worker of the driver's pool (`spawn_broadcast`); a
//! poller returns once no op has made a tensor for [`IDLE`] (to twice that: it reads the op count,
//! a cache line the driver writes at every op, only once per `IDLE`), so no worker polls on after a burst
//! (a generation, a training step, a forward) ends. A driver outside any rayon pool (a plain
//! thread: tests, a library user's `main`) starts nothing: its regions wake the pool as rayon
//! always does, and pollers next to a thread rayon does not count would compete with it for the
//! cores.
//!
//! Nothing here can lose work or block: jobs still run through rayon's own queues (a poller only
//! takes them sooner), and if a poller ever ran on the driver's thread (a copy the driver would
//! only meet while it waits inside a region) it returns within twice [`IDLE`] of the driver's last op.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a poller waits for the next op before it returns and its worker may sleep. Far
/// longer than a step's serial stretches (sampling a token from 49152 logits with top-k and top-p,
/// ~1 ms on a loaded machine) and than most preemptions of the driver by other processes (a
/// restart makes two allocations, and a decode step must make none), yet short enough that a
/// finished burst leaves no worker polling for long.
const IDLE: Duration = Duration::from_millis(20);

/// The CPU backend's pollers (one set for the process: the pool the ops' driver runs in).
static CPU: Pollers = Pollers::new(IDLE);

/// Marks the CPU backend busy: called once per CPU tensor an op makes, on the thread that runs
/// the ops. A few nanoseconds when pollers are running (one atomic add, one load).
pub(crate) fn keep_workers_awake() {
    CPU.touch();
}

/// A set of pollers and the op count they watch.
struct Pollers {
    /// Ops made since the start; pollers watch it move.
    touches: AtomicUsize,
    /// Pollers running or queued.
    running: AtomicUsize,
    /// Whether a set is running or queued; a new set starts only once the last poller returned.
    active: AtomicBool,
    /// The pool indices of the workers polling now, one bit each (the first 64; for tests).
    polling: AtomicU64,
    /// Sets started (for tests).
    sets: AtomicUsize,
    /// How long a poller waits for the next op ([`IDLE`] but in tests).
    idle: Duration,
}

impl Pollers {
    const fn new(idle: Duration) -> Pollers {
        Pollers {
            touches: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            active: AtomicBool::new(false),
            polling: AtomicU64::new(0),
            sets: AtomicUsize::new(0),
            idle,
        }
    }

    /// Counts an op; starts pollers on the current pool's other workers if none are running and
    /// this thread is one of its workers.
    fn touch(&'static self) {
        self.touches.fetch_add(1, Ordering::Relaxed);
        if self.active.load(Ordering::Relaxed) {
            return;
        }
        let Some(driver) = rayon::current_thread_index() else {
            return;
        };
        let workers = rayon::current_num_threads();
        if workers < 2 || self.active.swap(true, Ordering::AcqRel) {
            return;
        }
        self.running.store(workers - 1, Ordering::Release);
        self.sets.fetch_add(1, Ordering::Relaxed);
        rayon::spawn_broadcast(move |worker| {
            if worker.index() == driver {
                return;
            }
            let bit = 1u64.checked_shl(worker.index() as u32).unwrap_or(0);
            self.polling.fetch_or(bit, Ordering::AcqRel);
            self.poll_until_idle();
            self.polling.fetch_and(!bit, Ordering::AcqRel);
            if self.running.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.active.store(false, Ordering::Release);
            }
        });
    }

    /// Runs the pool's jobs as they appear until no op has made a tensor for `self.idle` (for
    /// between one and two of it). The op count is read once per `idle`, not at every turn of
    /// the loop: its cache line then stays in the driver's cache, where each op's increment
    /// would otherwise first fetch it back from this core (a sixth of a small op's time, perf).
    fn poll_until_idle(&self) {
        let idle = self.idle;
        let mut seen = self.touches.load(Ordering::Relaxed);
        let mut since = Instant::now();
        loop {
            if let Some(rayon::Yield::Executed) = rayon::yield_now() {
                since = Instant::now();
                continue;
            }
            if since.elapsed() >= idle {
                let touches = self.touches.load(Ordering::Relaxed);
                if touches == seen {
                    return;
                }
                seen = touches;
                since = Instant::now();
            }
            // Give the core away if anything else wants it (the driver, another process): a
            // poller that only spun would hold a shared core through its time slice.
            std::thread::yield_now();
        }
    }

    #[cfg(test)]
    fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// A poller's wait in these tests: long enough that a loaded machine's preemptions do not
    /// end a set early, short enough to wait for.
    const TEST_IDLE: Duration = Duration::from_millis(200);

    /// Waits (at most 5 s) until `pollers` have all returned; how long that took.
    fn until_idle(pollers: &Pollers) -> Duration {
        let start = Instant::now();
        while pollers.active() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "pollers still running 5 s after the last op"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        start.elapsed()
    }

    #[test]
    fn pollers_run_on_the_other_workers_take_their_jobs_and_return_once_idle() {
        static P: Pollers = Pollers::new(TEST_IDLE);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let (driver, polling, ran_on, sum) = pool.install(|| {
            let driver = rayon::current_thread_index().unwrap();
            P.touch();
            assert!(P.active());
            // Both other workers pick up their poller (a new pool's threads may take
            // milliseconds to start).
            let start = Instant::now();
            while P.polling.load(Ordering::Acquire).count_ones() < 2 && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_micros(100));
            }
            let polling = P.polling.load(Ordering::Acquire);
            // A region still runs to completion, its tasks on the polling workers too.
            let ran_on = std::sync::Mutex::new(std::collections::BTreeSet::new());
            let sum: u64 = (0..64u64)
                .into_par_iter()
                .map(|i| {
                    std::thread::sleep(Duration::from_micros(100));
                    ran_on.lock().unwrap().insert(rayon::current_thread_index().unwrap());
                    i * i
                })
                .sum();
            // Ops a tenth of the wait apart keep the same set running for twice the wait.
            for _ in 0..20 {
                std::thread::sleep(TEST_IDLE / 10);
                P.touch();
            }
            (driver, polling, ran_on.into_inner().unwrap(), sum)
        });
        let last_op = Instant::now();
        assert_eq!(polling.count_ones(), 2, "polling workers {polling:b}");
        assert_eq!(polling & (1 << driver), 0, "a poller ran on the driver's worker");
        assert_eq!(sum, (0..64u64).map(|i| i * i).sum::<u64>());
        assert!(ran_on.len() >= 2, "the region's tasks ran only on workers {ran_on:?}");
        assert_eq!(
            P.sets.load(Ordering::Relaxed),
            1,
            "the ops did not keep the first set running"
        );
        until_idle(&P);
        let idle = last_op.elapsed();
        assert!(idle >= TEST_IDLE / 2, "pollers returned {idle:?} after the last op");
        assert_eq!(P.polling.load(Ordering::Acquire), 0);
        assert_eq!(P.running.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_driver_outside_any_pool_or_alone_in_one_starts_none() {
        static OUTSIDE: Pollers = Pollers::new(TEST_IDLE);
        OUTSIDE.touch();
        assert!(!OUTSIDE.active());
        assert_eq!(OUTSIDE.touches.load(Ordering::Relaxed), 1);
        static ALONE: Pollers = Pollers::new(TEST_IDLE);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        pool.install(|| ALONE.touch());
        assert!(!ALONE.active());
        assert_eq!(ALONE.sets.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_second_set_starts_after_the_first_returned() {
        static P: Pollers = Pollers::new(Duration::from_millis(5));
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for set in 1..=2 {
            pool.install(|| {
                P.touch();
                assert!(P.active());
            });
            assert_eq!(P.sets.load(Ordering::Relaxed), set);
            until_idle(&P);
        }
    }
}
