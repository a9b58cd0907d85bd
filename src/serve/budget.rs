//! The memory admission gate: a photo is decoded only once the bytes it
//! will need (decoded pixels, the detector's buffers) fit in the budget
//! (`--max-memory`), so tiny files that decode to huge images cannot add up
//! past it. A request that cannot be admitted within [`ADMISSION_WAIT`]
//! gets 503 with Retry-After instead of queueing without end.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;

/// How long a photo waits for room before the request is turned away.
pub const ADMISSION_WAIT: Duration = Duration::from_secs(10);
/// The detector's own buffers per photo (it sees at most 640 px; the
/// pyramid, RNet/ONet crops), measured at about 30 MB.
const DETECTOR_BYTES: u64 = 32 << 20;
const UNIT: u64 = 1 << 16; // permits are 64 KB

pub struct Budget {
    sem: Arc<Semaphore>,
    units: u64,
}

/// Room held for one photo; given back on drop.
pub struct Admitted(#[allow(dead_code)] OwnedSemaphorePermit);

impl Budget {
    pub fn new(bytes: usize) -> Self {
        let units = (bytes as u64 / UNIT).clamp(1, u32::MAX as u64);
        Budget {
            sem: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    }

    /// Bytes a photo of w x h pixels needs while it is decoded and run:
    /// the decoder's RGBA, the RGB copy, the detector.
    pub fn estimate(w: u32, h: u32) -> u64 {
        (w as u64) * (h as u64) * 7 + DETECTOR_BYTES
    }

    /// Wait for room for `bytes` (at most ADMISSION_WAIT).
    pub async fn admit(&self, bytes: u64) -> Result<Admitted, ApiError> {
        let want = bytes.div_ceil(UNIT).clamp(1, self.units) as u32;
        match tokio::time::timeout(ADMISSION_WAIT, self.sem.clone().acquire_many_owned(want)).await
        {
            Ok(Ok(p)) => Ok(Admitted(p)),
            _ => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is busy with other photos; try again shortly",
            )
            .with_retry_after(2)),
        }
    }
}
