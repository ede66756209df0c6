//! `GET /metrics`: the gateway's counters and gauges in the Prometheus text exposition
//! format (version 0.0.4), written by hand — a few lines of text do not need a crate.
//!
//! Nothing here is on the request path: every value is an atomic that its owner
//! (the anomaly detector, the usage writer, …) already keeps, read only when scraped.
//! Labels are bounded (an anomaly kind, never a key id, a project or user text), and
//! no value is a secret, so the endpoint needs no key.
//!
//! To add a metric: give its owner an atomic and a getter, then add one
//! [`Exposition::counter`] or [`Exposition::gauge`] call to [`render`] (and a line to
//! the table in `docs/gateway.md`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

use tollgate_store::BudgetPeriod;

use crate::anomaly::AnomalyKind;
use crate::breaker::Circuit;
use crate::budgets::PERIODS;
use crate::server::Gateway;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves [`render`].
pub async fn handler(State(gw): State<Arc<Gateway>>) -> Response {
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, CONTENT_TYPE)],
        render(&gw),
    )
        .into_response()
}

/// Every metric of the gateway, as exposition text.
pub fn render(gw: &Gateway) -> String {
    let mut out = Exposition::default();
    let anomaly = &gw.anomaly;
    let flags: Vec<(Vec<(&str, &str)>, u64)> = AnomalyKind::ALL
        .iter()
        .map(|&k| (vec![("reason", k.as_str())], anomaly.flagged_by_kind(k)))
        .collect();
    out.counter(
        "tollgate_anomaly_flags_total",
        "Keys flagged by anomaly detection, by reason.",
        &flags,
    );
    out.counter(
        "tollgate_keys_suspended_by_anomaly_total",
        "Keys suspended automatically after an anomaly flag.",
        &[(vec![], anomaly.suspended_total())],
    );
    out.counter(
        "tollgate_anomaly_webhook_dropped_total",
        "Anomaly webhook deliveries dropped because their queue was full.",
        &[(vec![], anomaly.webhook_dropped_total())],
    );
    let budgets = &gw.budgets.metrics;
    let by_period = |f: &dyn Fn(BudgetPeriod) -> u64| -> Vec<Sample<'static>> {
        PERIODS
            .iter()
            .map(|&p| (vec![("period", p.as_str())], f(p)))
            .collect()
    };
    out.counter(
        "tollgate_budget_soft_threshold_total",
        "Budget soft thresholds announced (once per budget and period), by period.",
        &by_period(&|p| budgets.soft_threshold_total(p)),
    );
    out.counter(
        "tollgate_budget_refused_total",
        "Calls refused because a spend budget had no room for them, by period.",
        &by_period(&|p| budgets.refused_total(p)),
    );
    out.counter(
        "tollgate_budget_notices_dropped_total",
        "Budget soft-threshold notices dropped because their queue was full.",
        &[(vec![], budgets.notices_dropped_total())],
    );
    out.counter(
        "tollgate_usage_records_written_total",
        "Usage records written to the store.",
        &[(vec![], gw.usage.records_written())],
    );
    out.gauge(
        "tollgate_usage_queue_depth",
        "Usage records queued for the writer.",
        &[(vec![], gw.usage.queue_depth() as u64)],
    );
    out.gauge(
        "tollgate_request_body_bytes_in_flight",
        "Bytes of request bodies over 8 KiB held now (server.max_body_bytes_in_flight bounds them).",
        &[(vec![], gw.bodies.held_bytes())],
    );
    let connections = &gw.connections;
    out.gauge(
        "tollgate_connections_open",
        "Client connections open now.",
        &[(vec![], connections.open() as u64)],
    );
    out.gauge(
        "tollgate_connections_max",
        "The most client connections open at once (server.max_connections).",
        &[(vec![], connections.cap() as u64)],
    );
    out.counter(
        "tollgate_connection_limit_waits_total",
        "Times server.max_connections was reached and new connections waited for one to close.",
        &[(vec![], connections.waits_total())],
    );
    out.counter(
        "tollgate_connections_drained_total",
        "Connections asked to close (at once if idle, else after their call) to make room under server.max_connections.",
        &[(vec![], connections.drained_total())],
    );
    out.gauge(
        "tollgate_usage_queue_capacity",
        "Capacity of the usage record queue.",
        &[(vec![], gw.usage.queue_capacity() as u64)],
    );
    out.gauge(
        "tollgate_batch_queue_depth",
        "Batch requests waiting for rate-limit capacity.",
        &[(vec![], gw.lanes.queue_depth())],
    );
    out.counter(
        "tollgate_batch_waits_total",
        "Batch requests that waited for rate-limit capacity.",
        &[(vec![], gw.lanes.waits_total())],
    );
    out.counter(
        "tollgate_batch_wait_timeouts_total",
        "Batch requests refused (429) because room would come after lanes.batch_max_wait.",
        &[(vec![], gw.lanes.timeouts_total())],
    );
    out.counter(
        "tollgate_upstream_429_total",
        "Upstream answers with status 429 relayed to the caller (after retries).",
        &[(vec![], gw.throttle.upstream_429_total())],
    );
    out.counter(
        "tollgate_upstream_retried_total",
        "Upstream answers that took more than one attempt (a 429 or 5xx was retried).",
        &[(vec![], gw.throttle.retried_total())],
    );
    out.counter(
        "tollgate_upstream_paced_total",
        "Batch requests held back because the upstream's remaining capacity was below upstream.adaptive_threshold.",
        &[(vec![], gw.throttle.paced_total())],
    );
    let breakers: Vec<_> = gw.fallbacks.breakers.all().collect();
    out.gauge(
        "tollgate_upstream_breaker_open",
        "1 while the upstream's circuit breaker is open or half-open (calls with an alternative skip it), 0 while closed.",
        &breakers
            .iter()
            .map(|b| {
                let open = b.circuit() != Circuit::Closed;
                (vec![("upstream", b.name())], u64::from(open))
            })
            .collect::<Vec<_>>(),
    );
    out.counter(
        "tollgate_upstream_breaker_transitions_total",
        "Circuit breaker state changes, by upstream and the state entered.",
        &breakers
            .iter()
            .flat_map(|b| {
                [Circuit::Open, Circuit::HalfOpen, Circuit::Closed].map(|c| {
                    (
                        vec![("upstream", b.name()), ("state", c.as_str())],
                        b.transitions(c),
                    )
                })
            })
            .collect::<Vec<_>>(),
    );
    out.counter(
        "tollgate_fallback_served_total",
        "Answers served by a fallback target after the call's own target failed.",
        &[(vec![], gw.fallbacks.fell_back_total())],
    );
    out.counter(
        "tollgate_offline_answers_total",
        "Offline answers given because every target of a call failed.",
        &[(vec![], gw.fallbacks.offline_total())],
    );
    let cache = &gw.cache;
    out.counter(
        "tollgate_cache_hits_total",
        "Calls answered from the response cache.",
        &[(vec![], cache.hits_total())],
    );
    out.counter(
        "tollgate_cache_misses_total",
        "Response cache lookups that found no fresh answer (the upstream answered).",
        &[(vec![], cache.misses_total())],
    );
    out.counter(
        "tollgate_cache_stores_total",
        "Complete answers stored in the response cache.",
        &[(vec![], cache.stores_total())],
    );
    out.counter(
        "tollgate_cache_evictions_total",
        "Answers evicted from the in-memory response cache to stay within its bounds.",
        &[(vec![], cache.evictions_total())],
    );
    out.counter(
        "tollgate_cache_stale_served_total",
        "Stored answers served because the upstream failed (cache.fallback_projects).",
        &[(vec![], cache.stale_served_total())],
    );
    let (entries, bytes) = cache.memory_usage();
    out.gauge(
        "tollgate_cache_memory_entries",
        "Answers in this process's in-memory response cache.",
        &[(vec![], entries)],
    );
    out.gauge(
        "tollgate_cache_memory_bytes",
        "Bytes of answers in this process's in-memory response cache.",
        &[(vec![], bytes)],
    );
    out.gauge(
        "tollgate_keys_cached",
        "Gateway keys in the in-memory key cache (all but revoked ones).",
        &[(vec![], gw.keys.len() as u64)],
    );
    if let Some(link) = gw.limits.redis() {
        out.gauge(
            "tollgate_redis_up",
            "1 while rate-limit counters are in Redis, 0 while in fallback (redis.on_failure).",
            &[(vec![], u64::from(link.is_up()))],
        );
        out.counter(
            "tollgate_redis_fallbacks_total",
            "Times Redis became unreachable and admission switched to its fallback.",
            &[(vec![], link.fallbacks_total())],
        );
        out.counter(
            "tollgate_redis_errors_total",
            "Redis calls that failed or timed out (each used the fallback).",
            &[(vec![], link.errors_total())],
        );
        out.counter(
            "tollgate_redis_updates_lost_total",
            "Settlements (TPM buckets, budget periods) and cache entries that Redis did not apply.",
            &[(vec![], link.lost_total())],
        );
        out.counter(
            "tollgate_redis_calls_total",
            "Script calls to Redis (one per admission, one per settlement or re-sync).",
            &[(vec![], link.calls_total())],
        );
        out.histogram(
            "tollgate_redis_admission_seconds",
            "Round trip of one admission to Redis (one script call), successful calls only.",
            link.admission(),
        );
    }
    out.finish()
}

/// A latency histogram of fixed buckets: a few relaxed atomic adds per observation.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds in microseconds, ascending.
    bounds_us: &'static [u64],
    /// One count per bound, and one for +Inf (not cumulative).
    counts: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn new(bounds_us: &'static [u64]) -> Self {
        Self {
            bounds_us,
            counts: (0..=bounds_us.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = self.bounds_us.partition_point(|b| *b < us);
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Cumulative counts per upper bound (seconds), the last one +Inf; and the sum.
    fn snapshot(&self) -> (Vec<(String, u64)>, u64, f64) {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Ordering::Relaxed);
            let le = self
                .bounds_us
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| format!("{}", *b as f64 / 1e6));
            out.push((le, total));
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (out, total, sum)
    }
}

/// One sample: its label pairs (bounded values only) and its value.
pub type Sample<'a> = (Vec<(&'a str, &'a str)>, u64);

/// A text exposition being written: one `# HELP`/`# TYPE` header per family, then its
/// samples.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// A monotonically increasing count (its name ends in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, samples: &[Sample<'_>]) {
        self.family(name, "counter", help, samples);
    }

    /// A value that goes up and down.
    pub fn gauge(&mut self, name: &str, help: &str, samples: &[Sample<'_>]) {
        self.family(name, "gauge", help, samples);
    }

    /// A histogram: its cumulative `_bucket{le=…}` series, `_sum` and `_count`.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape(help, false));
        let _ = writeln!(self.text, "# TYPE {name} histogram");
        let (buckets, count, sum) = h.snapshot();
        for (le, n) in buckets {
            let _ = writeln!(self.text, "{name}_bucket{{le=\"{le}\"}} {n}");
        }
        let _ = writeln!(self.text, "{name}_sum {sum}");
        let _ = writeln!(self.text, "{name}_count {count}");
    }

    /// The finished text.
    pub fn finish(self) -> String {
        self.text
    }

    fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[Sample<'_>]) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {}", escape(help, false));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.text.push_str(name);
            if !labels.is_empty() {
                let pairs: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v, true)))
                    .collect();
                let _ = write!(self.text, "{{{}}}", pairs.join(","));
            }
            let _ = writeln!(self.text, " {value}");
        }
    }
}

/// Escapes `\` and newlines (and, in label values, `"`), as the format asks.
fn escape(text: &str, label_value: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if label_value => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_have_help_type_and_escaped_labels() {
        let mut e = Exposition::default();
        e.counter(
            "x_total",
            "Things.\nMore",
            &[(vec![("reason", "a\"b")], 3), (vec![("reason", "c")], 0)],
        );
        e.gauge("y", "Depth.", &[(vec![], 7)]);
        let h = Histogram::new(&[100, 1_000]);
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_millis(2));
        e.histogram("z_seconds", "Time.", &h);
        assert_eq!(
            e.finish(),
            "# HELP x_total Things.\\nMore\n# TYPE x_total counter\n\
             x_total{reason=\"a\\\"b\"} 3\nx_total{reason=\"c\"} 0\n\
             # HELP y Depth.\n# TYPE y gauge\ny 7\n\
             # HELP z_seconds Time.\n# TYPE z_seconds histogram\n\
             z_seconds_bucket{le=\"0.0001\"} 1\nz_seconds_bucket{le=\"0.001\"} 2\n\
             z_seconds_bucket{le=\"+Inf\"} 3\nz_seconds_sum 0.002201\nz_seconds_count 3\n"
        );
    }
}
