//! Makes anomaly flags durable: every flag becomes an audit entry, and a flag whose
//! action is `Suspend` suspends the key in the store, so every replica refuses it
//! (through its key cache) and it stays suspended across restarts until someone runs
//! `tollgate keys resume`.
//!
//! Hand-over without a gap: the detector refuses a flagged key in this process at
//! once; after the store write this task reloads the key cache (which now refuses the
//! key as suspended) and only then lifts the detector's in-memory suspension, so a
//! later `keys resume` in the store is what brings the key back.

use std::sync::Arc;

use tokio::sync::{broadcast, watch};
use tollgate_store::{Actor, NewAudit, Store};

use crate::anomaly::{AnomalyAction, AnomalyFlag, Detector};
use crate::keys::{self, KeyCache};

/// Who the store records as the actor.
fn actor() -> Actor {
    Actor::new("gateway:anomaly-detection", "gateway")
}

/// Runs until `stop` fires, writing every flag the detector raises.
pub async fn persist(
    detector: Arc<Detector>,
    cache: Arc<KeyCache>,
    store: Store,
    mut stop: watch::Receiver<bool>,
) {
    let mut flags = detector.flags();
    loop {
        let flag = tokio::select! {
            received = flags.recv() => match received {
                Ok(flag) => flag,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "anomaly flags were missed by the store writer");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = stop.changed() => return,
        };
        record(&detector, &cache, &store, &flag).await;
    }
}

async fn record(detector: &Detector, cache: &KeyCache, store: &Store, flag: &AnomalyFlag) {
    let entry = NewAudit {
        at_ms: flag.at_ms,
        actor: actor().actor,
        action: "key.anomaly_flagged".into(),
        target: flag.key_id.clone(),
        detail: flag.to_json().to_string(),
        source: actor().source,
    };
    if let Err(e) = store.insert_audit(&entry).await {
        tracing::warn!(key_id = %flag.key_id, error = %e, "could not audit an anomaly flag");
    }
    if flag.action != AnomalyAction::Suspend {
        return;
    }
    let reason = format!("unusual usage: {}", flag.kind);
    match store
        .suspend_key(&flag.key_id, Some(&reason), flag.at_ms, &actor())
        .await
    {
        Ok(_) => match keys::load_keys(cache, store).await {
            // The cache refuses the key now; the in-memory suspension can go.
            Ok(_) => {
                detector.resume(&flag.key_id);
            }
            Err(e) => tracing::warn!(error = %e, "key cache reload after a suspension failed"),
        },
        // The in-memory suspension stays: this process keeps refusing the key.
        Err(e) => {
            tracing::warn!(key_id = %flag.key_id, error = %e, "could not suspend a flagged key in the store")
        }
    }
}
