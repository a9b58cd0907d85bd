//! The memory admission gate: a photo is decoded only once the bytes it
//! will need (decoded pixels, the detector's buffers) fit in the budget
//! (`--max-memory`), so tiny files that decode to huge images cannot add up
//! past it. A request that cannot be admitted within [`ADMISSION_WAIT`]
//! gets 503 with Retry-After instead of queueing without end.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::Notify;

use super::error::ApiError;

/// How long a photo waits for room before the request is turned away.
pub const ADMISSION_WAIT: Duration = Duration::from_secs(10);
/// The detector's own buffers per photo (it sees at most 640 px; the
/// pyramid, RNet/ONet crops), measured at about 30 MB.
const DETECTOR_BYTES: u64 = 32 << 20;

/// Not first come, first served: whoever fits goes, so one huge photo
/// waiting for room does not hold back the small ones behind it (a tokio
/// semaphore would). The huge one waits until enough is free or its
/// deadline passes.
#[derive(Clone)]
pub struct Budget(Arc<Inner>);

struct Inner {
    free: Mutex<u64>,
    total: u64,
    freed: Notify,
}

/// Room held for one photo; given back on drop.
pub struct Admitted {
    budget: Arc<Inner>,
    bytes: u64,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        *self.budget.free.lock().unwrap_or_else(|e| e.into_inner()) += self.bytes;
        self.budget.freed.notify_waiters();
    }
}

impl Budget {
    pub fn new(bytes: usize) -> Self {
        let total = (bytes as u64).max(1);
        Budget(Arc::new(Inner {
            free: Mutex::new(total),
            total,
            freed: Notify::new(),
        }))
    }

    /// Bytes a photo of w x h pixels needs while it is decoded and run:
    /// the decoder's RGBA, the RGB copy, the detector.
    pub fn estimate(w: u32, h: u32) -> u64 {
        (w as u64) * (h as u64) * 7 + DETECTOR_BYTES
    }

    /// Wait for room for `bytes` (at most ADMISSION_WAIT). A photo larger
    /// than the whole budget (allowed by the pixel limit) waits for all of it.
    pub async fn admit(&self, bytes: u64) -> Result<Admitted, ApiError> {
        let want = bytes.clamp(1, self.0.total);
        let deadline = tokio::time::Instant::now() + ADMISSION_WAIT;
        loop {
            // Registered before looking, so a release in between wakes us.
            let freed = self.0.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut free = self.0.free.lock().unwrap_or_else(|e| e.into_inner());
                if *free >= want {
                    *free -= want;
                    return Ok(Admitted {
                        budget: self.0.clone(),
                        bytes: want,
                    });
                }
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the server is busy with other photos; try again shortly",
                )
                .with_retry_after(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn small_photos_pass_a_big_one_that_waits() {
        let b = Budget::new(100 << 20);
        let held = b.admit(60 << 20).await.ok();
        let big = {
            let b = b.clone();
            tokio::spawn(async move { b.admit(90 << 20).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        // 40 MB are free: a 30 MB photo goes at once although the big one
        // asked first.
        let small = tokio::time::timeout(Duration::from_secs(1), b.admit(30 << 20)).await;
        assert!(matches!(small, Ok(Ok(_))));
        drop(small);
        drop(held);
        assert!(big.await.unwrap_or(false));
        assert_eq!(*b.0.free.lock().unwrap(), 100 << 20);
    }
}
