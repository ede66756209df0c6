//! Settlements to Redis, gathered and merged (issue 5, section 6).
//!
//! Every finished call that reserved in Redis settles there: its TPM buckets get back
//! (or are charged) the difference between the estimate and the real usage, and its
//! budget periods release the worst case and add the real cost. Sent one by one, that
//! is two script calls per proxied call beside the admission — Redis (one thread)
//! then spends most of its time on settlements, admissions queue behind them and the
//! fire-and-forget calls pile up in memory when it falls behind.
//!
//! Instead a settlement is merged into a table keyed by the counter it changes (a
//! bucket's deltas add up; a budget period's released reservations and spend add up),
//! and the table is sent every [`SETTLE_INTERVAL`]: one script call per counter
//! changed in that interval, all pipelined on one connection, whatever the request
//! rate. Counters therefore see a settlement up to that much later — a reservation
//! is held a few milliseconds longer, which errs on the side of the limit. The table
//! is bounded by the number of distinct counters, not by the request rate. While Redis
//! is unreachable the table is kept (a settlement made then is still owed to the
//! counter its reservation was taken from) and sent once Redis is back. At shutdown
//! the server sends what is left ([`Settlements::flush`]); a call that fails is counted
//! as lost (`tollgate_redis_updates_lost_total`): it may have run, and sending it again
//! could count it twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::redis_link::RedisLink;

/// How long settlements gather before they are sent.
pub const SETTLE_INTERVAL: Duration = Duration::from_millis(10);

/// What one counter is owed, merged over the settlements of an interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owed {
    /// A TPM bucket: whole tokens given back (> 0) or charged (< 0), under `limit`.
    Bucket { limit: u64, delta: i64 },
    /// A budget period (keyed by its spent counter): worst cases to release from its
    /// reserved counters (one per epoch the calls were admitted in), nano-USD spent,
    /// and this replica's count of the period, from which a missing spent counter is
    /// seeded (`local − spent`: without these calls).
    Budget {
        released: Vec<(String, u64)>,
        spent: u64,
        /// This replica's count of the period, these calls included.
        local: u64,
        ttl_ms: i64,
    },
}

impl Owed {
    /// Adds a later settlement of the same counter.
    fn merge(&mut self, later: Owed) {
        match (self, later) {
            (Owed::Bucket { limit, delta }, Owed::Bucket { limit: l, delta: d }) => {
                *limit = l;
                *delta = delta.saturating_add(d);
            }
            (
                Owed::Budget {
                    released,
                    spent,
                    local,
                    ttl_ms,
                    ..
                },
                Owed::Budget {
                    released: r,
                    spent: s,
                    local: l,
                    ttl_ms: t,
                    ..
                },
            ) => {
                for (key, amount) in r {
                    match released.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, a)) => *a = a.saturating_add(amount),
                        None => released.push((key, amount)),
                    }
                }
                *spent = spent.saturating_add(s);
                *local = (*local).max(l);
                *ttl_ms = t;
            }
            // One key never names both kinds (bucket and budget keys differ).
            (this, later) => *this = later,
        }
    }
}

/// The table of owed settlements of one link, and its sender.
#[derive(Debug, Default)]
pub struct Settlements {
    owed: Mutex<HashMap<String, Owed>>,
    /// Spend of the budget settlements added and not yet answered by Redis (waiting
    /// in `owed` or being sent), by spent counter. A re-sync's raise to the store's
    /// sum leaves it out: the store may hold those calls' records already, and the
    /// settlements add them again when they land.
    unsent_spend: Mutex<HashMap<String, u64>>,
    /// Wakes the sender when the table gets its first entry of an interval.
    wake: Arc<Notify>,
    started: AtomicBool,
}

impl Settlements {
    /// Adds a settlement of counter `key`; the link's sender (started on first use, on
    /// the background runtime) sends it within [`SETTLE_INTERVAL`].
    pub fn add(&self, link: &Arc<RedisLink>, key: String, owed: Owed) {
        if let Owed::Budget { spent, .. } = &owed {
            self.unanswered(&key, *spent);
        }
        let first = {
            let mut table = self.owed.lock();
            let first = table.is_empty();
            match table.get_mut(&key) {
                Some(o) => o.merge(owed),
                None => {
                    table.insert(key, owed);
                }
            }
            first
        };
        if !self.started.swap(true, Ordering::AcqRel) {
            link.spawn(send_every_interval(Arc::downgrade(link)));
        }
        if first {
            self.wake.notify_one();
        }
    }

    /// Entries waiting (tests, diagnostics).
    pub fn pending(&self) -> usize {
        self.owed.lock().len()
    }

    /// Spend settled against spent counter `key` that Redis has not answered yet.
    pub fn unsent_spend(&self, key: &str) -> u64 {
        self.unsent_spend.lock().get(key).copied().unwrap_or(0)
    }

    /// A settlement of `spent` against `key` is on its way to Redis.
    fn unanswered(&self, key: &str, spent: u64) {
        let mut unsent = self.unsent_spend.lock();
        // A busy counter's entry is there already: no copy of its name then.
        match unsent.get_mut(key) {
            Some(v) => *v += spent,
            None => {
                unsent.insert(key.to_owned(), spent);
            }
        }
    }

    /// Redis answered (or failed, and the update is counted lost) a settlement of
    /// `spent` against `key`.
    fn answered(&self, key: &str, spent: u64) {
        let mut unsent = self.unsent_spend.lock();
        if let Some(v) = unsent.get_mut(key) {
            *v = v.saturating_sub(spent);
            if *v == 0 {
                unsent.remove(key);
            }
        }
    }

    /// Sends everything owed now: one script call per counter, concurrently (pipelined
    /// on this thread's connection). A call that fails is counted as lost.
    pub async fn flush(&self, link: &RedisLink) {
        self.send(link, true).await;
    }

    /// Sends everything owed, unless Redis is unreachable and this is not the `last`
    /// chance: then it stays owed. Answers whether anything is still owed.
    async fn send(&self, link: &RedisLink, last: bool) -> bool {
        if !last && !link.is_up() {
            return !self.owed.lock().is_empty();
        }
        let owed = std::mem::take(&mut *self.owed.lock());
        if owed.is_empty() {
            return false;
        }
        let calls = owed.into_iter().map(|(key, o)| async move {
            let (result, what) = match o {
                Owed::Bucket { limit, delta } => (
                    link.call::<i64>(&crate::limits::adjust_invocation(key, limit, delta))
                        .await,
                    "a TPM settlement",
                ),
                Owed::Budget {
                    released,
                    spent,
                    local,
                    ttl_ms,
                } => {
                    let seed = local.saturating_sub(spent);
                    let call = crate::budgets_redis::settle_invocation(
                        key.clone(),
                        released,
                        spent,
                        seed,
                        ttl_ms,
                    );
                    let result = link.call::<i64>(&call).await;
                    self.answered(&key, spent);
                    (result, "a budget settlement")
                }
            };
            if result.is_err() {
                link.update_lost(what);
            }
        });
        futures_util::future::join_all(calls).await;
        !self.owed.lock().is_empty()
    }
}

/// How often settlements held while Redis is unreachable are tried again.
const HELD_RETRY: Duration = Duration::from_millis(100);

/// The sender: waits for a first entry, lets the interval gather more, sends. Ends
/// with the link.
async fn send_every_interval(link: Weak<RedisLink>) {
    loop {
        let wake = match link.upgrade() {
            Some(l) => l.settlements().wake.clone(),
            None => return,
        };
        // The permit of a `notify_one` made before this wait is kept: no entry is
        // missed between a flush and the next wait. (A link dropped meanwhile leaves
        // this task waiting until its runtime ends; one per link.)
        wake.notified().await;
        tokio::time::sleep(SETTLE_INTERVAL).await;
        loop {
            let Some(l) = link.upgrade() else { return };
            if !l.settlements().send(&l, false).await {
                break;
            }
            // Held while Redis is unreachable (or more came meanwhile): again soon.
            drop(l);
            tokio::time::sleep(HELD_RETRY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settlements_of_one_counter_merge() {
        let mut b = Owed::Bucket {
            limit: 100,
            delta: 5,
        };
        b.merge(Owed::Bucket {
            limit: 120,
            delta: -7,
        });
        assert_eq!(
            b,
            Owed::Bucket {
                limit: 120,
                delta: -2
            }
        );
        let budget = |released: &[(&str, u64)], spent, local, ttl_ms| Owed::Budget {
            released: released
                .iter()
                .map(|(k, a)| ((*k).to_owned(), *a))
                .collect(),
            spent,
            local,
            ttl_ms,
        };
        let mut s = budget(&[("r:1", 10)], 4, 100, 5);
        s.merge(budget(&[("r:1", 20)], 6, 106, 4));
        // Seed at send: 106 − 10 = 96, this replica's count without both calls.
        assert_eq!(s, budget(&[("r:1", 30)], 10, 106, 4));
        // A call admitted in the next epoch releases from that epoch's counter.
        s.merge(budget(&[("r:2", 7)], 1, 107, 4));
        assert_eq!(s, budget(&[("r:1", 30), ("r:2", 7)], 11, 107, 4));
    }

    #[test]
    fn unsent_budget_spend_is_counted_until_redis_answers() {
        let s = Settlements::default();
        s.unanswered("k:s", 4);
        s.unanswered("k:s", 6);
        assert_eq!(s.unsent_spend("k:s"), 10);
        assert_eq!(s.unsent_spend("other:s"), 0);
        s.answered("k:s", 4);
        assert_eq!(s.unsent_spend("k:s"), 6);
        s.answered("k:s", 6);
        assert_eq!(s.unsent_spend("k:s"), 0);
        assert!(
            s.unsent_spend.lock().is_empty(),
            "answered entries are dropped"
        );
    }
}
