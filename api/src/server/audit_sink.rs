//! Queued audit recording for events whose call does not wait for the
//! commit (reads, denials, refused connections), and the aggregation that
//! keeps a flood of denials from flooding the audit store.
//!
//! Mutating calls do **not** go through here: the backend records their
//! event in the same transaction as the change and the call answers only
//! after that COMMIT (see `crate::store`).
//!
//! Aggregation: denials are keyed by (operation, reason). The first denial of
//! a key is recorded at once; further ones within the same one-second window
//! are only counted, and when the window closes one event carrying
//! `details.aggregated = N` (the number of further identical denials) is
//! recorded. So a key costs at most two rows per second however hard it is
//! hammered, and the number of keys per window is capped
//! ([`MAX_KEYS_PER_WINDOW`]; beyond it denials fold into one overflow key).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::audit::{AuditEvent, AuditStore};

/// The aggregation window.
pub const WINDOW: Duration = Duration::from_secs(1);

/// Distinct (operation, reason) keys tracked per window before folding.
pub const MAX_KEYS_PER_WINDOW: usize = 256;

/// Events per `record_batch` call.
const MAX_BATCH: usize = 1024;

/// Queues events for the audit store; a background task records them in
/// batches. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditSink {
    tx: mpsc::UnboundedSender<AuditEvent>,
    denials: Arc<Mutex<HashMap<(String, String), Window>>>,
}

#[derive(Debug)]
struct Window {
    suppressed: u64,
    sample: AuditEvent,
}

impl AuditSink {
    /// Starts the recorder and the aggregation flusher on the current runtime.
    /// Both end when every clone of the sink is dropped.
    pub fn start(audit: AuditStore) -> AuditSink {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(record_loop(audit, rx));
        let sink = AuditSink {
            tx,
            denials: Arc::new(Mutex::new(HashMap::new())),
        };
        let weak_tx = sink.tx.downgrade();
        let weak_map = Arc::downgrade(&sink.denials);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WINDOW);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (Some(tx), Some(map)) = (weak_tx.upgrade(), weak_map.upgrade()) else {
                    return;
                };
                flush(&map, &tx);
            }
        });
        sink
    }

    /// Queues `event` (recorded within milliseconds, not awaited).
    pub fn record(&self, event: AuditEvent) {
        if self.tx.send(event).is_err() {
            tracing::error!("audit recorder stopped; event lost");
        }
    }

    /// Queues a denial, aggregated per (operation, reason) per window.
    pub fn deny(&self, event: AuditEvent) {
        let reason = event.reason.clone().unwrap_or_default();
        let mut key = (event.operation.clone(), reason);
        let mut map = match self.denials.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if !map.contains_key(&key) && map.len() >= MAX_KEYS_PER_WINDOW {
            key = ("*".into(), "overflow: too many distinct denials".into());
        }
        match map.get_mut(&key) {
            Some(w) => w.suppressed += 1,
            None => {
                map.insert(
                    key,
                    Window {
                        suppressed: 0,
                        sample: event.clone(),
                    },
                );
                drop(map);
                self.record(event);
            }
        }
    }

    /// Closes the current window now (recording the aggregated events).
    pub fn flush(&self) {
        flush(&self.denials, &self.tx);
    }
}

fn flush(map: &Mutex<HashMap<(String, String), Window>>, tx: &mpsc::UnboundedSender<AuditEvent>) {
    let windows = {
        let mut g = match map.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        std::mem::take(&mut *g)
    };
    for ((op, reason), w) in windows {
        if w.suppressed == 0 {
            continue;
        }
        let mut ev = w.sample;
        ev.ts_us = crate::audit::now_us();
        ev.details = serde_json::json!({
            "aggregated": w.suppressed,
            "window_ms": WINDOW.as_millis() as u64,
            "note": format!("{} further denials of {op} for this reason in the window", w.suppressed),
        });
        if op == "*" {
            ev.operation = "api.denials.overflow".into();
            ev.reason = Some(reason.clone());
            ev.outcome = crate::audit::Outcome::Error(reason);
        }
        let _ = tx.send(ev);
    }
}

async fn record_loop(audit: AuditStore, mut rx: mpsc::UnboundedReceiver<AuditEvent>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        if let Err(e) = audit.record_batch(batch.clone()).await {
            tracing::warn!(error = %e, "audit batch failed; retrying once");
            if let Err(e) = audit.record_batch(batch).await {
                tracing::error!(error = %e, "audit batch lost");
            }
        }
    }
}
