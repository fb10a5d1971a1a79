//! Per-call resource limits and their enforcement: a memory cap (checked before any growth),
//! fuel (instructions), and a wall-clock budget that counts only time spent in the plugin's
//! own code: time inside host calls (a generation can take minutes) is subtracted, as in
//! Extism's timeout manager.

use std::time::{Duration, Instant};
use wasmtime::ResourceLimiter;

/// Most elements a plugin's table may grow to (function references; Rust guests use a few
/// hundred).
pub const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Limits for one call into a plugin.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Largest linear memory the plugin may grow to. Also bounds any string or list it can
    /// hand the host, since a value must lie inside its memory to be lifted.
    pub memory_bytes: usize,
    /// Instructions (roughly) the plugin may execute per call.
    pub fuel: u64,
    /// Time the plugin's own code may run per call, host calls excluded.
    pub guest_time: Duration,
    /// Largest string or byte list accepted by, or returned from, one host import.
    pub max_transfer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory_bytes: 256 << 20,
            fuel: 20_000_000_000,
            guest_time: Duration::from_secs(20),
            max_transfer_bytes: 32 << 20,
        }
    }
}

/// Refuses memory growth past the cap and remembers that it did, so the trap that follows
/// (Rust guests abort when allocation fails) is reported as a memory-limit breach.
pub(crate) struct MemoryLimiter {
    max_bytes: usize,
    pub refused: Option<usize>,
}

impl MemoryLimiter {
    pub fn new(max_bytes: usize) -> MemoryLimiter {
        MemoryLimiter {
            max_bytes,
            refused: None,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.refused = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Wall time of one call, split into the plugin's time and the host's.
pub(crate) struct CallClock {
    started: Instant,
    in_host: Duration,
    entered_host: Option<Instant>,
}

impl CallClock {
    pub fn start() -> CallClock {
        CallClock {
            started: Instant::now(),
            in_host: Duration::ZERO,
            entered_host: None,
        }
    }

    pub fn enter_host(&mut self) {
        self.entered_host.get_or_insert_with(Instant::now);
    }

    pub fn leave_host(&mut self) {
        if let Some(entered) = self.entered_host.take() {
            self.in_host += entered.elapsed();
        }
    }

    /// Time spent in the plugin's own code so far.
    pub fn guest_time(&self) -> Duration {
        let now = Instant::now();
        let host = self.in_host + self.entered_host.map_or(Duration::ZERO, |e| now - e);
        (now - self.started).saturating_sub(host)
    }
}

/// Raised from the epoch callback when the plugin's own time runs out.
#[derive(Debug, thiserror::Error)]
#[error("plugin ran for longer than its {0:?} time budget")]
pub(crate) struct GuestTimeExceeded(pub Duration);
