//! Where a photo's work runs: across every core, or on one core of its own.
//!
//! Alone, a photo's decode, detection and embedding split each kernel
//! across rayon's threads: the shortest time for one request. But that
//! split costs CPU (packing twice, joins, threads that spin before they
//! sleep): one photo used 1.1 cores for 151 CPU ms, and two photos at once
//! on the shared pool kept the cores 1.7 busy at 136 CPU ms a photo. When
//! another photo is in flight too, each photo gets a lane instead: a
//! one-thread rayon pool, on which every parallel kernel runs inline as a
//! plain loop. Two photos then fill the two cores with no split at all.
//!
//! A photo keeps the choice made when it starts (its turn), so the mode
//! follows the load within one photo.

use std::sync::Mutex;

/// Spare one-thread pools, reused from photo to photo.
#[derive(Default)]
pub struct Lanes {
    spare: Mutex<Vec<rayon::ThreadPool>>,
}

impl Lanes {
    /// Run `f` on a lane of its own when `alone` is false, else here (its
    /// kernels then use rayon's global pool, every core). Inside the lane
    /// the caller's tokio runtime is entered, so `f` can still wait for a
    /// turn (`fair::Turn::pass`).
    pub fn run<T: Send>(&self, alone: bool, f: impl FnOnce() -> T + Send) -> T {
        if alone {
            return f();
        }
        let Some(pool) = self.take() else {
            return f();
        };
        let handle = tokio::runtime::Handle::try_current().ok();
        let out = pool.install(move || {
            let _entered = handle.as_ref().map(|h| h.enter());
            f()
        });
        if let Ok(mut spare) = self.spare.lock() {
            spare.push(pool);
        }
        out
    }

    fn take(&self) -> Option<rayon::ThreadPool> {
        if let Some(p) = self.spare.lock().ok().and_then(|mut s| s.pop()) {
            return Some(p);
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "faceall-lane".into())
            .build()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_runs_its_work_on_one_thread_and_alone_uses_every_core() {
        let lanes = Lanes::default();
        assert_eq!(lanes.run(false, rayon::current_num_threads), 1);
        // The pool is kept and reused.
        assert_eq!(lanes.spare.lock().unwrap().len(), 1);
        assert_eq!(lanes.run(false, rayon::current_num_threads), 1);
        assert_eq!(lanes.spare.lock().unwrap().len(), 1);
        assert_eq!(
            lanes.run(true, rayon::current_num_threads),
            rayon::current_num_threads()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lane_sees_the_callers_runtime() {
        let lanes = std::sync::Arc::new(Lanes::default());
        let got = tokio::task::spawn_blocking(move || {
            lanes.run(false, || tokio::runtime::Handle::try_current().is_ok())
        })
        .await
        .unwrap();
        assert!(got);
    }
}
