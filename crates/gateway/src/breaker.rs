//! The circuit breaker of each upstream (part of stage 7, dispatch; see `fallback`).
//!
//! One breaker per named upstream — not per model — because what it guards against is
//! an upstream that is down or out of quota, which every model there shares. Calls
//! the primary upstream makes with a project's own provider credential have a breaker
//! per credential (one project's exhausted quota must not divert everyone else's
//! calls); those are made on first use and not exported as metrics (unbounded labels).
//!
//! - **closed**: calls go through; `failures` consecutive failures (a 429, a 5xx, a
//!   timeout or a connection failure, after the client's own retries) open it.
//! - **open**: calls that have somewhere else to go (a fallback chain or an offline
//!   answer) skip the upstream without calling it, until the cool-down has passed.
//! - **half-open**: the first call after the cool-down is the probe; the others keep
//!   skipping while it runs. Its success closes the circuit, its failure opens it for
//!   another cool-down. A probe that ends without an outcome (the caller went away)
//!   lets the next call probe.
//!
//! Calls without an alternative are never refused here (they would only trade the
//! upstream's error for ours), but their outcomes still count: a success closes an
//! open circuit, failures open a closed one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

use crate::fallback_config::BreakerConfig;

/// The breakers of every upstream, by name.
#[derive(Debug)]
pub struct Breakers {
    by_name: HashMap<String, Arc<Breaker>>,
    /// Names in configuration order, for metrics.
    names: Vec<String>,
    cfg: BreakerConfig,
    /// The primary's breakers per project credential (by secret reference).
    by_credential: RwLock<HashMap<String, Arc<Breaker>>>,
}

/// One upstream's breaker.
#[derive(Debug)]
pub struct Breaker {
    name: String,
    cfg: BreakerConfig,
    state: Mutex<State>,
    /// True while the state is closed with no failure counted: the common case, read
    /// without the lock so healthy traffic never contends on it. (A stale read only
    /// delays a count reset or a first failure's count by one call.)
    healthy: AtomicBool,
    opened: AtomicU64,
    half_opened: AtomicU64,
    closed: AtomicU64,
    /// Probes handed out, numbering them.
    probes: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// `probe`: the probe call in flight, by its number; a late outcome of an older
    /// probe (the circuit closed and opened again meanwhile) is not taken for it.
    HalfOpen {
        probe: Option<u64>,
    },
}

/// What the breaker says about a call that could go elsewhere.
#[derive(Debug)]
pub enum Admit {
    /// Call the upstream; tell the permit how it went.
    Call(Permit),
    /// Skip it: the circuit is open until about `until`.
    Skip { until: Instant },
}

/// A call let through; report its outcome with [`Permit::success`] or
/// [`Permit::failure`]. Dropped without either, a probe frees the half-open slot.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<Breaker>,
    /// The probe's number, if this call is the half-open circuit's probe.
    probe: Option<u64>,
    done: bool,
}

/// A circuit's state for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    Closed,
    Open,
    HalfOpen,
}

impl Circuit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

impl Breakers {
    /// A closed breaker for each of `names`.
    pub fn new(names: &[String], cfg: BreakerConfig) -> Self {
        let by_name = names
            .iter()
            .map(|n| (n.clone(), Arc::new(Breaker::new(n, cfg))))
            .collect();
        Self {
            by_name,
            names: names.to_vec(),
            cfg,
            by_credential: RwLock::default(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Breaker>> {
        self.by_name.get(name)
    }

    /// The breaker of upstream `name` for calls made with the credential `reference`
    /// (a project's own; `None`: the upstream's configured key).
    pub fn for_credential(&self, name: &str, reference: Option<&str>) -> Option<Arc<Breaker>> {
        let Some(reference) = reference else {
            return self.get(name).cloned();
        };
        if let Some(b) = self.by_credential.read().get(reference) {
            return Some(b.clone());
        }
        // Named after the reference as SecretRef shows it (an exec command's program
        // only), never a value.
        let shown = crate::secret::SecretRef::parse(reference)
            .map_or_else(|_| "a project credential".to_owned(), |r| r.to_string());
        let label = format!("{name} via {shown}");
        let cfg = self.cfg;
        Some(
            self.by_credential
                .write()
                .entry(reference.to_owned())
                .or_insert_with(|| Arc::new(Breaker::new(&label, cfg)))
                .clone(),
        )
    }

    /// Every breaker, in configuration order.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Breaker>> {
        self.names.iter().filter_map(|n| self.by_name.get(n))
    }
}

impl Breaker {
    fn new(name: &str, cfg: BreakerConfig) -> Self {
        Self {
            name: name.to_owned(),
            cfg,
            state: Mutex::new(State::Closed { failures: 0 }),
            healthy: AtomicBool::new(true),
            opened: AtomicU64::new(0),
            half_opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            probes: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The state now (an open circuit past its cool-down reads as half-open).
    pub fn circuit(&self) -> Circuit {
        match *self.state.lock() {
            State::Closed { .. } => Circuit::Closed,
            State::Open { until } if Instant::now() < until => Circuit::Open,
            State::Open { .. } | State::HalfOpen { .. } => Circuit::HalfOpen,
        }
    }

    /// Times the circuit moved into `to`.
    pub fn transitions(&self, to: Circuit) -> u64 {
        match to {
            Circuit::Open => &self.opened,
            Circuit::HalfOpen => &self.half_opened,
            Circuit::Closed => &self.closed,
        }
        .load(Ordering::Relaxed)
    }

    /// Whether a call that has an alternative should call this upstream now.
    pub fn admit(self: &Arc<Self>) -> Admit {
        if self.healthy.load(Ordering::Relaxed) {
            return Admit::Call(Permit {
                breaker: self.clone(),
                probe: None,
                done: false,
            });
        }
        let now = Instant::now();
        let mut state = self.state.lock();
        let current = *state;
        let probe = match current {
            State::Closed { .. } => None,
            State::Open { until } if now < until => return Admit::Skip { until },
            State::Open { .. } => {
                let n = self.probes.fetch_add(1, Ordering::Relaxed);
                *state = State::HalfOpen { probe: Some(n) };
                drop(state);
                self.half_opened.fetch_add(1, Ordering::Relaxed);
                tracing::info!(upstream = %self.name, "circuit half-open: one probe call goes through");
                Some(n)
            }
            State::HalfOpen { probe: None } => {
                let n = self.probes.fetch_add(1, Ordering::Relaxed);
                *state = State::HalfOpen { probe: Some(n) };
                Some(n)
            }
            // Someone else is probing; try again shortly.
            State::HalfOpen { probe: Some(_) } => {
                return Admit::Skip {
                    until: now + Duration::from_secs(1),
                }
            }
        };
        Admit::Call(Permit {
            breaker: self.clone(),
            probe,
            done: false,
        })
    }

    /// The outcome of a call made without asking (it had no alternative).
    pub fn observe(&self, ok: bool) {
        if ok {
            self.succeeded();
        } else {
            self.failed(None);
        }
    }

    fn succeeded(&self) {
        if self.healthy.load(Ordering::Relaxed) {
            return;
        }
        let mut state = self.state.lock();
        let was = *state;
        *state = State::Closed { failures: 0 };
        self.healthy.store(true, Ordering::Relaxed);
        drop(state);
        if !matches!(was, State::Closed { .. }) {
            self.closed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(upstream = %self.name, "circuit closed: the upstream answered again");
        }
    }

    fn failed(&self, probe: Option<u64>) {
        let mut state = self.state.lock();
        self.healthy.store(false, Ordering::Relaxed);
        let current = *state;
        let open = match current {
            State::Closed { failures } if failures + 1 >= self.cfg.failures => true,
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            // Only the current probe's failure opens it again.
            State::HalfOpen { probe: current } => probe.is_some() && current == probe,
            // Already open: a call that had no alternative failed too; keep the
            // cool-down it has.
            State::Open { .. } => false,
        };
        if open {
            *state = State::Open {
                until: Instant::now() + self.cfg.cooldown,
            };
            drop(state);
            self.opened.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                upstream = %self.name,
                cooldown_ms = self.cfg.cooldown.as_millis() as u64,
                probe = probe.is_some(),
                "circuit open: calls skip this upstream until a probe succeeds"
            );
        }
    }

    fn abandon_probe(&self, probe: u64) {
        let mut state = self.state.lock();
        if *state == (State::HalfOpen { probe: Some(probe) }) {
            *state = State::HalfOpen { probe: None };
        }
    }
}

impl Permit {
    pub fn success(mut self) {
        self.done = true;
        self.breaker.succeeded();
    }

    pub fn failure(mut self) {
        self.done = true;
        self.breaker.failed(self.probe);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(probe) = self.probe.filter(|_| !self.done) {
            self.breaker.abandon_probe(probe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32, cooldown_ms: u64) -> Arc<Breaker> {
        let cfg = BreakerConfig {
            failures,
            cooldown: Duration::from_millis(cooldown_ms),
        };
        Breakers::new(&["backup".to_owned()], cfg)
            .get("backup")
            .unwrap()
            .clone()
    }

    fn call(b: &Arc<Breaker>) -> Permit {
        match b.admit() {
            Admit::Call(p) => p,
            Admit::Skip { .. } => panic!("skipped"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_n_consecutive_failures_and_a_success_resets_the_count() {
        let b = breaker(3, 1_000);
        call(&b).failure();
        call(&b).failure();
        call(&b).success();
        call(&b).failure();
        call(&b).failure();
        assert_eq!(b.circuit(), Circuit::Closed);
        call(&b).failure();
        assert_eq!(b.circuit(), Circuit::Open);
        assert!(matches!(b.admit(), Admit::Skip { .. }));
        assert_eq!(b.transitions(Circuit::Open), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_after_the_cooldown_closes_or_reopens() {
        let b = breaker(1, 1_000);
        call(&b).failure();
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(matches!(b.admit(), Admit::Skip { .. }));
        tokio::time::advance(Duration::from_millis(2)).await;
        let probe = call(&b);
        assert!(
            matches!(b.admit(), Admit::Skip { .. }),
            "one probe at a time"
        );
        probe.failure();
        assert_eq!(b.circuit(), Circuit::Open);
        tokio::time::advance(Duration::from_millis(1_001)).await;
        let probe = call(&b);
        drop(probe);
        let probe = call(&b);
        probe.success();
        assert_eq!(b.circuit(), Circuit::Closed);
        assert_eq!(b.transitions(Circuit::Open), 2);
        assert_eq!(b.transitions(Circuit::HalfOpen), 2);
        assert_eq!(b.transitions(Circuit::Closed), 1);
    }

    /// A probe left over from an earlier half-open spell, and the current probe: a
    /// call without an alternative closed the circuit meanwhile, another opened it
    /// again, and its cool-down passed.
    async fn stale_and_current_probe(b: &Arc<Breaker>) -> (Permit, Permit) {
        b.observe(false);
        tokio::time::advance(Duration::from_millis(1_001)).await;
        let stale = call(b);
        b.observe(true);
        b.observe(false);
        tokio::time::advance(Duration::from_millis(1_001)).await;
        (stale, call(b))
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_outcome_of_an_older_probe_is_not_taken_for_the_current_one() {
        // Its failure does not reopen the circuit.
        let b = breaker(1, 1_000);
        let (stale, probe) = stale_and_current_probe(&b).await;
        stale.failure();
        assert_eq!(b.circuit(), Circuit::HalfOpen);
        assert!(matches!(b.admit(), Admit::Skip { .. }), "still one probe");
        probe.success();
        assert_eq!(b.circuit(), Circuit::Closed);
        // Its caller leaving does not free the current probe's slot.
        let b = breaker(1, 1_000);
        let (stale, _probe) = stale_and_current_probe(&b).await;
        drop(stale);
        assert!(matches!(b.admit(), Admit::Skip { .. }), "still one probe");
    }

    #[tokio::test(start_paused = true)]
    async fn a_project_credential_has_its_own_breaker_on_the_primary() {
        let cfg = BreakerConfig {
            failures: 1,
            cooldown: Duration::from_secs(1),
        };
        let all = Breakers::new(&["primary".to_owned()], cfg);
        let own = all
            .for_credential("primary", Some("exec:vault read secret/shop"))
            .unwrap();
        own.observe(false);
        assert_eq!(own.circuit(), Circuit::Open);
        assert_eq!(all.get("primary").unwrap().circuit(), Circuit::Closed);
        let again = all
            .for_credential("primary", Some("exec:vault read secret/shop"))
            .unwrap();
        assert!(Arc::ptr_eq(&own, &again));
        assert_eq!(
            own.name(),
            "primary via exec:vault …",
            "the command's arguments are not shown"
        );
        let global = all.for_credential("primary", None).unwrap();
        assert!(Arc::ptr_eq(&global, all.get("primary").unwrap()));
    }

    #[tokio::test(start_paused = true)]
    async fn calls_without_an_alternative_count_but_are_never_refused() {
        let b = breaker(2, 1_000);
        b.observe(false);
        b.observe(false);
        assert_eq!(b.circuit(), Circuit::Open);
        b.observe(true);
        assert_eq!(b.circuit(), Circuit::Closed);
    }
}
