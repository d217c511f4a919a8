//! The clock admin policies are evaluated against.
//!
//! Production reads the system clock. Tests of time-window policies shift it
//! with [`set_offset_ms`] (hutchd does so only when the test-only environment
//! variable `HUTCH_TEST_CLOCK` is set) instead of sleeping for hours. Only
//! policy evaluation uses it; audit timestamps stay on the system clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Shifts [`now_ms`] by `offset` milliseconds for the whole process.
pub fn set_offset_ms(offset: i64) {
    OFFSET_MS.store(offset, Ordering::Relaxed);
}

/// The current shift (0 in production).
pub fn offset_ms() -> i64 {
    OFFSET_MS.load(Ordering::Relaxed)
}

/// The system clock, ms since the epoch.
pub fn system_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The policy clock: system time plus the offset, ms since the epoch.
pub fn now_ms() -> i64 {
    system_ms().saturating_add(offset_ms())
}
