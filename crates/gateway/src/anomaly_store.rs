//! Makes anomaly flags durable: every flag becomes an audit entry, and a flag whose
//! action is `Suspend` suspends the key in the store, so every replica refuses it
//! (through its key cache) and it stays suspended across restarts until someone runs
//! `tollgate keys resume`.
//!
//! Hand-over without a gap: the detector refuses a flagged key in this process at
//! once; after the store write this task reloads the key cache (which now refuses the
//! key as suspended) and only then lifts the detector's in-memory suspension, so a
//! later `keys resume` in the store is what brings the key back. Flags come through a
//! queue that loses none ([`Detector::store_queue`]); a store that refuses the
//! suspension is asked again with backoff; each store call has a deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tollgate_store::{Actor, NewAudit, Store, StoreError};

use crate::anomaly::{AnomalyAction, AnomalyFlag, Detector};
use crate::keys::{self, KeyCache, STORE_CALL_DEADLINE};

/// Who the store records as the actor.
fn actor() -> Actor {
    Actor::new("gateway:anomaly-detection", "gateway")
}

/// Runs until `stop` fires, writing every flag the detector raises; then writes the
/// flags still queued, so none raised before shutdown goes unrecorded.
pub async fn persist(
    detector: Arc<Detector>,
    cache: Arc<KeyCache>,
    store: Store,
    mut stop: watch::Receiver<bool>,
) {
    let Some(mut flags) = detector.store_queue() else {
        tracing::error!("anomaly flags have a store writer already");
        return;
    };
    loop {
        let flag = tokio::select! {
            received = flags.recv() => match received {
                Some(flag) => flag,
                None => return,
            },
            _ = stop.changed() => break,
        };
        record(&detector, &cache, &store, &flag, &stop).await;
    }
    while let Ok(flag) = flags.try_recv() {
        record(&detector, &cache, &store, &flag, &stop).await;
    }
}

/// A store call with [`STORE_CALL_DEADLINE`].
async fn within<T>(
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(STORE_CALL_DEADLINE, call)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Invalid(
                "no answer from the store in time".into(),
            ))
        })
}

async fn record(
    detector: &Detector,
    cache: &KeyCache,
    store: &Store,
    flag: &AnomalyFlag,
    stop: &watch::Receiver<bool>,
) {
    let entry = NewAudit {
        at_ms: flag.at_ms,
        actor: actor().actor,
        action: "key.anomaly_flagged".into(),
        target: flag.key_id.clone(),
        detail: flag.to_json().to_string(),
        source: actor().source,
    };
    if let Err(e) = within(store.insert_audit(&entry)).await {
        tracing::warn!(key_id = %flag.key_id, error = %e, "could not audit an anomaly flag");
    }
    if flag.action != AnomalyAction::Suspend {
        return;
    }
    // The suspension is retried until the store takes it (or shutdown): the detector
    // refuses the key in this process meanwhile, and only a suspension in the store
    // is what `keys resume` lifts.
    let reason = format!("unusual usage: {}", flag.kind);
    let mut wait = Duration::from_millis(500);
    let who = actor();
    loop {
        let suspended = within(store.suspend_key(&flag.key_id, Some(&reason), flag.at_ms, &who));
        match suspended.await {
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(key_id = %flag.key_id, error = %e, "could not suspend a flagged key in the store; retrying");
                if *stop.borrow() {
                    // The in-memory suspension ends with the process; the flag is in
                    // the log.
                    return;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
    // The cache refuses the key now (or within the watcher's next reload, if this one
    // fails); the in-memory suspension can go, so `keys resume` alone brings it back.
    if let Err(e) = within(keys::load_keys(cache, store)).await {
        tracing::warn!(error = %e, "key cache reload after a suspension failed");
    }
    detector.resume(&flag.key_id);
}
