//! Clock jumps for the chaos tests.
//!
//! Compiled in only with the `fault-injection` cargo feature. Such a server
//! polls `<data dir>/fault-clock-offset-ms` and shifts its wall clock (the
//! physical part of every HLC version, dedupe TTLs, liveness stamps) by that
//! many milliseconds, forwards or backwards, as NTP stepping the clock would.
//! Without the feature the offset is a constant zero.

#[cfg(feature = "fault-injection")]
mod imp {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::time::Duration;

    static OFFSET_NS: AtomicI64 = AtomicI64::new(0);

    pub fn offset_ns() -> i64 {
        OFFSET_NS.load(Ordering::Relaxed)
    }

    /// Follows the offset file for the life of the process.
    pub fn watch(data_dir: PathBuf) {
        let path = data_dir.join("fault-clock-offset-ms");
        let spawned = std::thread::Builder::new().name("clock-fault".into()).spawn(move || loop {
            let ms: i64 = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
            OFFSET_NS.store(ms.saturating_mul(1_000_000), Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(100));
        });
        if let Err(e) = spawned {
            eprintln!("cairn: clock fault watcher not started: {e}");
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
mod imp {
    #[inline(always)]
    pub fn offset_ns() -> i64 {
        0
    }

    pub fn watch(_data_dir: std::path::PathBuf) {}
}

pub use imp::{offset_ns, watch};
