//! A spinning team for the length of one forward pass.
//!
//! A forward pass at batch 1 is a chain of a hundred or more kernels of
//! 0.05-3 ms each, every one split across the cores. Through rayon alone,
//! the other worker falls asleep in the gaps between kernels, and on this
//! kind of virtual machine waking it costs tens of microseconds: measured,
//! FaceNet's 8x8 1x1 convolutions took 0.22 ms on two threads against
//! 0.14 ms on one. onnxruntime spins its workers for the length of a run;
//! so does this: [`with_team`] parks one spinning helper job on each other
//! worker of the current rayon pool for the length of a closure, and
//! [`par_for`] inside it hands tasks out through shared counters, with no
//! wake-ups at all. A helper with nothing to do runs whatever rayon jobs
//! are pending (so rayon's own parallel loops keep both cores too).
//!
//! Outside a team, or on a one-thread pool (the server's lanes), `par_for`
//! is rayon's parallel loop, or a plain loop.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// The task body, its lifetime erased: only called for a task claimed in
/// the epoch it was published with, and `Board::run` waits for every such
/// call to finish before it returns (so before the closure can die).
#[derive(Clone, Copy)]
struct JobPtr(*const (dyn Fn(usize) + Sync));
// SAFETY: the pointee is Sync and outlives every use (see above).
unsafe impl Send for JobPtr {}

struct Board {
    /// (epoch << 32) | next task index to claim.
    claim: AtomicU64,
    /// The latest published epoch, read by idle helpers.
    epoch: AtomicU32,
    /// The current job: its epoch, body and task count.
    job: Mutex<Option<(u32, JobPtr, usize)>>,
    /// Tasks of the current epoch finished.
    done: AtomicUsize,
    /// A task panicked (re-raised on the publishing thread).
    panicked: AtomicBool,
    /// The team is over: helpers return.
    stop: AtomicBool,
}

thread_local! {
    /// The board of the team this thread leads, if any.
    static LEADS: Cell<*const Board> = const { Cell::new(std::ptr::null()) };
}

impl Board {
    fn new() -> Self {
        Board {
            claim: AtomicU64::new(0),
            epoch: AtomicU32::new(0),
            job: Mutex::new(None),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        }
    }

    /// The next unclaimed task of epoch `e` (of `n`), if any.
    fn claim(&self, e: u32, n: usize) -> Option<usize> {
        let mut v = self.claim.load(Ordering::Acquire);
        loop {
            let i = (v & 0xffff_ffff) as usize;
            if (v >> 32) as u32 != e || i >= n {
                return None;
            }
            match self
                .claim
                .compare_exchange_weak(v, v + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(i),
                Err(now) => v = now,
            }
        }
    }

    /// Run the claimed tasks of epoch `e` until none are left.
    fn work(&self, e: u32, job: JobPtr, n: usize) {
        while let Some(i) = self.claim(e, n) {
            // SAFETY: task i of epoch e is claimed, so the publisher is
            // still waiting in `run` and the closure is alive.
            let f = unsafe { &*job.0 };
            if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
                self.panicked.store(true, Ordering::Release);
            }
            self.done.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Publish `n` tasks, take part, and wait for all of them.
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        let e = self.epoch.load(Ordering::Relaxed).wrapping_add(1);
        // SAFETY (of the erasure): see `JobPtr`.
        let job = JobPtr(unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync)>(
                f,
            )
        });
        self.done.store(0, Ordering::Release);
        if let Ok(mut j) = self.job.lock() {
            *j = Some((e, job, n));
        }
        self.claim.store(u64::from(e) << 32, Ordering::Release);
        self.epoch.store(e, Ordering::Release);
        self.work(e, job, n);
        while self.done.load(Ordering::Acquire) < n {
            std::hint::spin_loop();
        }
        if let Ok(mut j) = self.job.lock() {
            *j = None;
        }
        if self.panicked.swap(false, Ordering::AcqRel) {
            panic!("a task of a parallel kernel panicked on a helper thread");
        }
    }

    /// A helper's loop: take part in each published job; in between, run
    /// pending rayon jobs or spin.
    fn help(&self) {
        // None: a helper that starts late joins the job already in flight.
        let mut seen = None;
        while !self.stop.load(Ordering::Acquire) {
            let e = self.epoch.load(Ordering::Acquire);
            if seen != Some(e) {
                seen = Some(e);
                let current = self.job.lock().ok().and_then(|j| *j);
                if let Some((je, job, n)) = current {
                    if je == e {
                        self.work(e, job, n);
                    }
                }
                continue;
            }
            if !matches!(rayon::yield_now(), Some(rayon::Yield::Executed)) {
                std::hint::spin_loop();
            }
        }
    }
}

/// Run `f` with the other workers of the current rayon pool spinning as
/// its team (see the module docs); on a one-thread pool, just `f()`.
pub fn with_team<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let threads = rayon::current_num_threads();
    if threads <= 1 {
        return f();
    }
    let board = Board::new();
    rayon::scope(|s| {
        for _ in 1..threads {
            s.spawn(|_| board.help());
        }
        /// Ends the team however `f` ends.
        struct Lead<'b>(&'b Board);
        impl Drop for Lead<'_> {
            fn drop(&mut self) {
                LEADS.with(|l| l.set(std::ptr::null()));
                self.0.stop.store(true, Ordering::Release);
            }
        }
        LEADS.with(|l| l.set(&board));
        let _lead = Lead(&board);
        f()
    })
}

/// `f(i)` for every i in 0..n, in parallel: through the team this thread
/// leads, else through rayon (one thread: in order, here).
pub fn par_for(n: usize, f: &(dyn Fn(usize) + Sync)) {
    if n == 0 {
        return;
    }
    if n == 1 || rayon::current_num_threads() <= 1 {
        (0..n).for_each(f);
        return;
    }
    // Taken for the length of the job: a par_for nested in a task goes
    // through rayon instead of republishing on the board mid-job.
    let lead = LEADS.with(|l| l.replace(std::ptr::null()));
    if !lead.is_null() {
        struct Restore(*const Board);
        impl Drop for Restore {
            fn drop(&mut self) {
                LEADS.with(|l| l.set(self.0));
            }
        }
        let _restore = Restore(lead);
        // SAFETY: set by `with_team` on this thread for the length of its
        // closure, which is still running (we are inside it).
        unsafe { &*lead }.run(n, f);
        return;
    }
    use rayon::prelude::*;
    (0..n).into_par_iter().for_each(f);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_inside_and_outside_a_team() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("pool");
        for in_team in [false, true] {
            let counts: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
            let go = || {
                for round in 0..50 {
                    let n = 1 + round * 19 % 1000;
                    par_for(n, &|i| {
                        counts[i].fetch_add(1, Ordering::Relaxed);
                    });
                }
            };
            pool.install(|| if in_team { with_team(go) } else { go() });
            let want: Vec<usize> = (0..1000)
                .map(|i| (0..50).filter(|r| i < 1 + r * 19 % 1000).count())
                .collect();
            let got: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            assert_eq!(got, want, "in team: {in_team}");
        }
    }

    #[test]
    fn rayon_loops_inside_a_team_still_finish() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("pool");
        let sum: u64 = pool.install(|| {
            with_team(|| {
                use rayon::prelude::*;
                (0..100_000u64).into_par_iter().sum()
            })
        });
        assert_eq!(sum, 100_000 * 99_999 / 2);
    }
}
