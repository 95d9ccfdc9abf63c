//! A small pool of spinning worker threads for the many short parallel
//! passes of one decode step.
//!
//! A decode step of a 30-layer model makes about 150 parallel passes (each
//! weight matrix, each layer's attention) of 50-300 us each. Handing a pass to
//! rayon's pool from a thread outside it costs a futex wake-up and a wait,
//! several microseconds each way, and the woken worker starts cold. Here the
//! workers spin on an epoch counter for [`SPIN`] after their last pass before
//! they sleep, so consecutive passes start within a few hundred nanoseconds.
//!
//! One pool serves the process (like rayon's global pool), with
//! `rayon::current_num_threads()` threads including the caller. A pass started
//! from inside a pass (a batched step's per-sequence attention splitting a long
//! cache) runs its parts in order on the calling thread: every thread of the
//! pool is already busy with the outer pass, and handing the parts to rayon
//! would put more threads than cores to work and put the pool's threads to
//! sleep on rayon's latch. A pass asked for while another thread's pass holds
//! the pool runs on rayon, so callers never wait on each other and never
//! deadlock. Either way the parts and their results are the same.

use rayon::prelude::*;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

/// Runs `job(i)` for every `i` in `0..parts`, spread over the pool's threads
/// and the caller; returns when all have finished. Parts are taken in order
/// from a shared counter, so any `parts` works; `parts` equal to the thread
/// count (`rayon::current_num_threads()`) gives each thread one.
///
/// # Panics
/// If a part panics (after all parts have finished).
pub fn run(parts: usize, job: &(dyn Fn(usize) + Sync)) {
    if parts <= 1 || IN_PASS.with(Cell::get) {
        (0..parts).for_each(job);
        return;
    }
    match global() {
        Some(pool) => match pool.dispatch.try_lock() {
            Ok(_busy) => pool.run(parts, job),
            Err(_) => (0..parts).into_par_iter().for_each(job),
        },
        None => (0..parts).into_par_iter().for_each(job),
    }
}

/// [`run`] collecting each part's result: `[f(0), f(1), .., f(parts - 1)]`.
///
/// # Panics
/// If a part panics (after all parts have finished).
pub fn map<T: Send + Sync>(parts: usize, f: &(dyn Fn(usize) -> T + Sync)) -> Vec<T> {
    let slots: Vec<OnceLock<T>> = (0..parts).map(|_| OnceLock::new()).collect();
    run(parts, &|i| {
        let _ = slots[i].set(f(i));
    });
    // `run` returned without panicking, so every part stored its result.
    slots.into_iter().filter_map(OnceLock::into_inner).collect()
}

/// Prefix of the pool's worker thread names (the worker's index follows).
const WORKER_NAME: &str = "lava-spin-";

fn global() -> Option<&'static Pool> {
    static POOL: OnceLock<Option<Pool>> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(rayon::current_num_threads().saturating_sub(1))).as_ref()
}

/// The job of the current pass, its lifetime erased: [`Pool::run`] does not
/// return before every worker has finished with it.
#[derive(Clone, Copy)]
struct JobPtr(*const (dyn Fn(usize) + Sync));

// SAFETY: the pointee is `Sync`, and it outlives every use (see `JobPtr`).
unsafe impl Send for JobPtr {}

struct Shared {
    /// Bumped once per pass; workers wait for it to change.
    epoch: AtomicUsize,
    /// Next part to take.
    next: AtomicUsize,
    parts: AtomicUsize,
    /// Workers that finished the current pass.
    done: AtomicUsize,
    panicked: AtomicBool,
    job: Mutex<Option<JobPtr>>,
    /// Workers asleep (or about to be), and the lock their condvar uses.
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

struct Pool {
    shared: Arc<Shared>,
    workers: usize,
    /// Held for the length of a pass.
    dispatch: Mutex<()>,
}

impl Pool {
    /// `None` if there are no workers to start (one thread) or the OS refuses a thread.
    fn new(workers: usize) -> Option<Self> {
        if workers == 0 {
            return None;
        }
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            parts: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            job: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        for w in 0..workers {
            let s = shared.clone();
            std::thread::Builder::new().name(format!("{WORKER_NAME}{w}")).spawn(move || worker(&s)).ok()?;
        }
        Some(Self { shared, workers, dispatch: Mutex::new(()) })
    }

    /// One pass; the caller holds `dispatch`.
    fn run(&self, parts: usize, job: &(dyn Fn(usize) + Sync)) {
        let s = &*self.shared;
        // SAFETY: only the lifetime is erased; this function waits below until
        // every worker has finished the pass, so no use outlives `job`.
        let ptr = JobPtr(unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(job) });
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(ptr);
        s.parts.store(parts, Ordering::SeqCst);
        s.next.store(0, Ordering::SeqCst);
        s.done.store(0, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| take_parts(s, job)));
        while s.done.load(Ordering::Acquire) < self.workers {
            std::hint::spin_loop();
        }
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(payload) = mine {
            resume_unwind(payload);
        }
        if s.panicked.swap(false, Ordering::SeqCst) {
            panic!("spin_pool: a part of a parallel pass panicked on a worker thread");
        }
    }
}

thread_local! {
    /// Whether this thread is running a part of a pool pass.
    static IN_PASS: Cell<bool> = const { Cell::new(false) };
}

/// Marks the thread as inside a pass until dropped (also when a part panics).
struct InPass(bool);

impl InPass {
    fn enter() -> Self {
        Self(IN_PASS.with(|f| f.replace(true)))
    }
}

impl Drop for InPass {
    fn drop(&mut self) {
        IN_PASS.with(|f| f.set(self.0));
    }
}

fn take_parts(s: &Shared, job: &(dyn Fn(usize) + Sync)) {
    let _inside = InPass::enter();
    let parts = s.parts.load(Ordering::Acquire);
    loop {
        let i = s.next.fetch_add(1, Ordering::AcqRel);
        if i >= parts {
            return;
        }
        job(i);
    }
}

fn worker(s: &Shared) {
    // Passes are counted from 0 (the value when the pool was built): a pass
    // dispatched before this thread got going is still seen as new.
    let mut seen = 0;
    loop {
        // Spin for the next pass, then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        while s.epoch.load(Ordering::Acquire) == seen {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && start.elapsed() > SPIN {
                let guard = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                let mut guard = guard;
                while s.epoch.load(Ordering::SeqCst) == seen {
                    guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
                break;
            }
            std::hint::spin_loop();
        }
        seen = s.epoch.load(Ordering::Acquire);
        let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(JobPtr(ptr)) = job {
            // SAFETY: `Pool::run` keeps the job alive until `done` counts this worker.
            let job = unsafe { &*ptr };
            if catch_unwind(AssertUnwindSafe(|| take_parts(s, job))).is_err() {
                s.panicked.store(true, Ordering::SeqCst);
            }
        }
        s.done.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_for_any_part_count() {
        for parts in [0, 1, 2, 3, 7, 64] {
            for _ in 0..50 {
                let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
                run(parts, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "parts {parts}");
            }
        }
    }

    #[test]
    fn nested_and_concurrent_passes_complete() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..3 {
                sc.spawn(|| {
                    for _ in 0..100 {
                        run(2, &|_| {
                            run(3, &|_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 3 * 100 * 2 * 3);
    }

    #[test]
    fn a_pass_inside_a_pool_pass_runs_on_the_calling_thread() {
        // What a pool thread is while it runs a part (`take_parts` enters it):
        // a pass it starts then never leaves the thread, whatever else holds the pool.
        let me = std::thread::current().id();
        {
            let _inside = InPass::enter();
            for _ in 0..20 {
                let ids: Vec<std::thread::ThreadId> = map(4, &|_| {
                    std::thread::sleep(Duration::from_micros(50));
                    std::thread::current().id()
                });
                assert!(ids.iter().all(|&id| id == me), "nested parts ran on other threads");
            }
        }
        assert!(!IN_PASS.with(Cell::get), "the flag is restored on leaving the pass");
        // A part on a pool worker sees the flag set (`take_parts` enters it).
        // When another test holds the pool the parts run on rayon and this
        // round checks nothing; the loop above does not depend on it.
        for _ in 0..20 {
            run(4, &|_| {
                let on_worker = std::thread::current().name().is_some_and(|n| n.starts_with(WORKER_NAME));
                assert!(!on_worker || IN_PASS.with(Cell::get), "a worker ran a part outside a pass");
            });
        }
    }

    #[test]
    fn workers_wake_after_sleeping() {
        let n = AtomicUsize::new(0);
        run(4, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        std::thread::sleep(SPIN * 5);
        run(4, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn a_panicking_part_panics_the_caller_and_the_pool_still_works() {
        let r = catch_unwind(|| {
            run(8, &|i| {
                if i == 5 {
                    panic!("part 5");
                }
            })
        });
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        run(8, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 8);
    }
}
