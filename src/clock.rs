//! Monotonic time for the node's own logic (deadlines, leases, ticks, backoff).
//!
//! It is the async runtime's clock rather than the OS clock: the two are the
//! same in a real node, and in a simulation whose runtime runs on a paused,
//! simulated clock, every deadline and lease then follows simulated time.

use std::time::Instant;

/// Now, by the runtime's clock (the OS clock outside a runtime).
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// How long ago `since` was, by the same clock. (`Instant::elapsed` would read
/// the OS clock, which a simulation does not move.)
pub fn elapsed(since: Instant) -> std::time::Duration {
    now().saturating_duration_since(since)
}

/// The OS's monotonic clock, for measuring the hardware (how long an fsync took),
/// never for a decision: the one place node code may read it.
#[allow(clippy::disallowed_methods)]
pub fn os_now() -> Instant {
    Instant::now()
}

/// Whether this runs on a single-threaded runtime (what a simulation drives), or
/// outside any runtime: blocking work then runs inline.
pub fn single_threaded() -> bool {
    tokio::runtime::Handle::try_current()
        .map(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
        .unwrap_or(true)
}

/// Runs a blocking job (a RocksDB scan, say) off the async workers. On a
/// single-threaded runtime, which is what a simulation drives, it runs inline
/// instead, so that its timing stays part of the simulated run.
pub async fn blocking<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    if single_threaded() {
        return Ok(job());
    }
    tokio::task::spawn_blocking(job).await.map_err(|e| e.to_string())
}
