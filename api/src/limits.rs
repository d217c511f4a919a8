//! Per-instance resource limits on the API socket: request rate (token
//! bucket), concurrent calls, connections, message size and stream duration.
//!
//! A call first passes [`Limiter::admit`] (rate, then concurrency); the permit
//! it returns is held until the call's response is sent. Message size is
//! enforced by tonic's decoder (`OUT_OF_RANGE`); stream duration and idle
//! gaps by the streaming handlers through [`Limits::stream_deadline`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits of one plugin instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Sustained calls per second (token refill rate).
    pub rate_per_sec: f64,
    /// Calls allowed in a burst above the sustained rate (bucket size).
    pub burst: u32,
    /// Calls in flight at once.
    pub max_concurrent_calls: u32,
    /// Open connections on the socket at once.
    pub max_connections: u32,
    /// Largest single gRPC message accepted, bytes (object chunks are 1 MiB).
    pub max_message_bytes: usize,
    /// Longest a streaming call (PutObject, GetObject) may last.
    #[serde(with = "duration_ms")]
    pub max_stream_duration: Duration,
    /// Longest gap between two messages of a client stream.
    #[serde(with = "duration_ms")]
    pub stream_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rate_per_sec: 2000.0,
            burst: 500,
            max_concurrent_calls: 128,
            max_connections: 32,
            max_message_bytes: 2 * 1024 * 1024,
            max_stream_duration: Duration::from_secs(600),
            stream_idle_timeout: Duration::from_secs(30),
        }
    }
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// Why a call was refused by a limit (`RESOURCE_EXHAUSTED`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    /// The token bucket is empty.
    #[error("rate limit exceeded ({rate} calls/s, burst {burst})")]
    Rate {
        /// Sustained rate.
        rate: u64,
        /// Burst.
        burst: u32,
    },
    /// Too many calls in flight.
    #[error("too many concurrent calls (limit {0})")]
    Concurrency(u32),
    /// The stream lasted too long.
    #[error("stream exceeded its maximum duration of {0:?}")]
    StreamDuration(Duration),
    /// The client sent nothing for too long within a stream.
    #[error("stream idle for more than {0:?}")]
    StreamIdle(Duration),
}

/// A token bucket: `burst` tokens, refilled at `rate` per second.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: u32) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: rate.max(0.0),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&self) -> bool {
        self.try_take_at(Instant::now())
    }

    /// As [`TokenBucket::try_take`] at a given instant (for tests).
    pub fn try_take_at(&self, now: Instant) -> bool {
        let mut g = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let (tokens, last) = *g;
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        let tokens = (tokens + elapsed * self.rate).min(self.burst);
        if tokens >= 1.0 {
            *g = (tokens - 1.0, now.max(last));
            true
        } else {
            *g = (tokens, now.max(last));
            false
        }
    }
}

/// Holds a concurrency slot until dropped.
#[derive(Debug)]
pub struct CallPermit {
    _permit: OwnedSemaphorePermit,
}

/// The rate and concurrency gate of one instance.
#[derive(Debug, Clone)]
pub struct Limiter {
    limits: Arc<Limits>,
    bucket: Arc<TokenBucket>,
    calls: Arc<Semaphore>,
}

impl Limiter {
    /// A limiter for `limits`.
    pub fn new(limits: Limits) -> Limiter {
        Limiter {
            bucket: Arc::new(TokenBucket::new(limits.rate_per_sec, limits.burst)),
            calls: Arc::new(Semaphore::new(limits.max_concurrent_calls.max(1) as usize)),
            limits: Arc::new(limits),
        }
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Admits one call: takes a token, then a concurrency slot.
    ///
    /// # Errors
    /// [`LimitExceeded::Rate`] or [`LimitExceeded::Concurrency`].
    pub fn admit(&self) -> Result<CallPermit, LimitExceeded> {
        if !self.bucket.try_take() {
            return Err(LimitExceeded::Rate {
                rate: self.limits.rate_per_sec as u64,
                burst: self.limits.burst,
            });
        }
        match self.calls.clone().try_acquire_owned() {
            Ok(p) => Ok(CallPermit { _permit: p }),
            Err(_) => Err(LimitExceeded::Concurrency(self.limits.max_concurrent_calls)),
        }
    }
}

impl Limits {
    /// The instant a stream that starts now must end by.
    pub fn stream_deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.max_stream_duration
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_rate() {
        let b = TokenBucket::new(10.0, 3);
        let t0 = Instant::now();
        assert!(b.try_take_at(t0));
        assert!(b.try_take_at(t0));
        assert!(b.try_take_at(t0));
        assert!(!b.try_take_at(t0));
        // 100 ms at 10/s is one token.
        assert!(b.try_take_at(t0 + Duration::from_millis(101)));
        assert!(!b.try_take_at(t0 + Duration::from_millis(102)));
        // Never more than the burst.
        let later = t0 + Duration::from_secs(100);
        for _ in 0..3 {
            assert!(b.try_take_at(later));
        }
        assert!(!b.try_take_at(later));
    }

    #[test]
    fn concurrency_slots_return_on_drop() {
        let l = Limiter::new(Limits {
            max_concurrent_calls: 2,
            ..Limits::default()
        });
        let a = l.admit();
        let b = l.admit();
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(l.admit().err(), Some(LimitExceeded::Concurrency(2)));
        drop(a);
        assert!(l.admit().is_ok());
    }
}
