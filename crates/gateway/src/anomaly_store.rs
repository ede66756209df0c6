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
/// flags still queued, for at most [`DRAIN_WITHIN`], so none raised before shutdown
/// goes unrecorded unless the store cannot take it.
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
        record(&detector, &cache, &store, &flag, &mut stop).await;
    }
    let drain = async {
        while let Ok(flag) = flags.try_recv() {
            record(&detector, &cache, &store, &flag, &mut stop).await;
        }
    };
    if tokio::time::timeout(DRAIN_WITHIN, drain).await.is_err() {
        tracing::warn!("anomaly flags still queued at shutdown were not all written");
    }
}

/// How long shutdown waits for the flags still queued to be written.
const DRAIN_WITHIN: Duration = Duration::from_secs(5);

/// Why a store call failed: the store's own refusal, or no answer in time.
enum Failure {
    Store(StoreError),
    Timeout,
}

impl Failure {
    /// Whether asking again may work: a database that did not answer or dropped the
    /// connection, not a refusal such as "the key is revoked" or "no such key".
    fn transient(&self) -> bool {
        matches!(self, Self::Timeout | Self::Store(StoreError::Database(_)))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Store(e) => e.fmt(f),
            Self::Timeout => f.write_str("no answer from the store in time"),
        }
    }
}

/// A store call with a deadline.
async fn within<T>(
    deadline: Duration,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(deadline, call).await {
        Ok(result) => result.map_err(Failure::Store),
        Err(_) => Err(Failure::Timeout),
    }
}

/// Sleeps `wait`, or less if `stop` fires; false once it has.
async fn pause(wait: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        _ = stop.changed() => false,
    }
}

async fn record(
    detector: &Detector,
    cache: &KeyCache,
    store: &Store,
    flag: &AnomalyFlag,
    stop: &mut watch::Receiver<bool>,
) {
    let entry = NewAudit {
        at_ms: flag.at_ms,
        actor: actor().actor,
        action: "key.anomaly_flagged".into(),
        target: flag.key_id.clone(),
        detail: flag.to_json().to_string(),
        source: actor().source,
    };
    if let Err(e) = within(STORE_CALL_DEADLINE, store.insert_audit(&entry)).await {
        tracing::warn!(key_id = %flag.key_id, error = %e, "could not audit an anomaly flag");
    }
    if flag.action != AnomalyAction::Suspend {
        return;
    }
    // The suspension is asked again while the store cannot answer (the detector
    // refuses the key in this process meanwhile); a refusal (the key revoked or gone)
    // ends it.
    let reason = format!("unusual usage: {}", flag.kind);
    let who = actor();
    let mut wait = Duration::from_millis(500);
    loop {
        let call = store.suspend_key(&flag.key_id, Some(&reason), flag.at_ms, &who);
        match within(STORE_CALL_DEADLINE, call).await {
            Ok(newly) => {
                if newly {
                    detector.note_suspended();
                }
                break;
            }
            Err(e) if e.transient() => {
                tracing::warn!(key_id = %flag.key_id, error = %e, "could not suspend a flagged key in the store; retrying");
                if !pause(wait, stop).await {
                    // Shutdown: the in-memory suspension ends with the process.
                    return;
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            Err(e) => {
                tracing::warn!(key_id = %flag.key_id, error = %e, "the store refused to suspend a flagged key");
                break;
            }
        }
    }
    // Only once the cache refuses the key (a reload that read the suspension) is the
    // in-memory suspension lifted, so `keys resume` alone brings it back.
    let mut wait = Duration::from_millis(500);
    loop {
        match within(RELOAD_WITHIN, keys::load_keys(cache, store)).await {
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, "key cache reload after a suspension failed; retrying");
                if !pause(wait, stop).await {
                    return;
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
    detector.resume(&flag.key_id);
}

/// How long one reload of the key cache may take here (waiting for one running).
const RELOAD_WITHIN: Duration = Duration::from_secs(60);
