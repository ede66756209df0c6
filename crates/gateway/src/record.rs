//! Stage 9, record: one usage record per proxied request, whatever its outcome,
//! written asynchronously in batches.
//!
//! Records go through a bounded queue to one writer task that inserts whatever has
//! queued up as a single transaction. Nothing is dropped:
//! - the request path awaits queue capacity when the queue is full (back-pressure);
//! - a [`RecordGuard`] dropped without being finished (client disconnect, panic, a
//!   cancelled future) enqueues its record from `Drop`, spawning a task that waits for
//!   capacity if the queue is full;
//! - a failed database write is retried with backoff, keeping the batch;
//! - the writer stops only when every sender is gone and the queue is empty, so
//!   awaiting it at shutdown flushes everything.
//!
//! Each record is priced from the model catalog (`cost_usd_nanos`) as it is enqueued —
//! a lookup in the in-memory catalog and a few multiplications — so a call is billed at
//! the prices in force when it ended, even if the catalog changes before the writer
//! gets to it; the writer prices any record that is not.

use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tollgate_store::{Store, UsageRecord};

use crate::admit::Reservation;
use crate::anomaly::Detector;
use crate::budgets::{BudgetReservation, Budgets};
use crate::carried::Carried;
use crate::catalog::{BilledTokens, Catalog, LiveCatalog};

/// Where the pipeline sends usage records. Cheap to clone.
#[derive(Clone, Debug)]
pub struct UsageSink {
    tx: mpsc::Sender<UsageRecord>,
    /// The runtime the writer runs on: a record that must wait for queue capacity
    /// waits there, so it outlives the I/O thread that produced it.
    background: tokio::runtime::Handle,
    /// Told each finished call's tokens (anomaly detection).
    anomaly: Option<Arc<Detector>>,
    /// Records the writer has written so far (for `/metrics`).
    written: Arc<AtomicU64>,
    /// Since when (Unix ms) the writer's writes have been failing; 0 while they
    /// succeed (for `/readyz`).
    failing_since_ms: Arc<AtomicI64>,
    /// Prices each record as it is enqueued: the catalog when the call ended.
    catalog: Arc<LiveCatalog>,
}

impl UsageSink {
    /// Starts the writer, which prices records with `catalog`; returns the sink and
    /// the writer's handle, which completes once every sink clone is dropped and the
    /// queue is flushed.
    pub fn start(
        store: Store,
        capacity: usize,
        batch_size: usize,
        catalog: Arc<LiveCatalog>,
    ) -> (Self, JoinHandle<u64>) {
        let budgets = Arc::new(Budgets::new(catalog.clone()));
        Self::start_with_budgets(store, capacity, batch_size, catalog, budgets)
    }

    /// [`UsageSink::start`], also telling `budgets` of each batch written (under its
    /// gate, so a re-sync never sees a batch half-counted).
    pub fn start_with_budgets(
        store: Store,
        capacity: usize,
        batch_size: usize,
        catalog: Arc<LiveCatalog>,
        budgets: Arc<Budgets>,
    ) -> (Self, JoinHandle<u64>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let written = Arc::new(AtomicU64::new(0));
        let failing_since_ms = Arc::new(AtomicI64::new(0));
        let writer = tokio::spawn(write_batches(
            store,
            rx,
            batch_size.max(1),
            (written.clone(), failing_since_ms.clone()),
            (catalog.clone(), budgets),
        ));
        let sink = Self {
            tx,
            background: tokio::runtime::Handle::current(),
            anomaly: None,
            written,
            failing_since_ms,
            catalog,
        };
        (sink, writer)
    }

    /// Records written to the store so far.
    pub fn records_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Records waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The queue's capacity.
    pub fn queue_capacity(&self) -> usize {
        self.tx.max_capacity()
    }

    /// Whether records are getting through: the writer's writes have failed for
    /// [`FAILING_AFTER_MS`] (it keeps retrying the batch; one failed write is not yet
    /// a failing store), or the queue is full (requests wait for room).
    pub fn health(&self) -> UsageHealth {
        let since = self.failing_since_ms.load(Ordering::Relaxed);
        if since != 0 && crate::accept::now_ms() - since >= FAILING_AFTER_MS {
            UsageHealth::Failing
        } else if self.tx.capacity() == 0 {
            UsageHealth::Backlogged
        } else {
            UsageHealth::Ok
        }
    }

    /// Also reports each finished call's tokens to `detector`.
    pub fn with_anomaly(mut self, detector: Arc<Detector>) -> Self {
        self.anomaly = Some(detector);
        self
    }

    fn observe(&self, rec: &UsageRecord) {
        if let (Some(d), Some(key_id)) = (&self.anomaly, &rec.key_id) {
            d.observe_tokens(key_id, rec.total_tokens, crate::accept::now_ms());
        }
    }

    /// Enqueues, waiting for capacity when the queue is full.
    pub async fn send(&self, record: UsageRecord) {
        if let Some(record) = self.offer(record) {
            Box::pin(self.wait_for_room(record)).await;
        }
    }

    /// Prices and enqueues the record if the queue has room; gives it back if not.
    /// With [`UsageSink::wait_for_room`] boxed for the rare full queue, the future of
    /// a request that finds room holds no second copy of its record.
    fn offer(&self, mut record: UsageRecord) -> Option<UsageRecord> {
        price(&self.catalog.current(), &mut record);
        match self.tx.try_send(record) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(record)) => Some(record),
            Err(mpsc::error::TrySendError::Closed(record)) => {
                // Only possible if the writer task died; say so loudly.
                tracing::error!(request_id = %record.request_id, "usage writer is gone; record lost");
                None
            }
        }
    }

    /// Waits for room in the full queue (back-pressure), then enqueues. The record
    /// waits beside the future, not in it: a request cancelled while it waits (its
    /// client left, or shutdown's grace ran out) hands its record to a task that
    /// waits instead ([`UsageSink::send_now`]), so it is never dropped.
    async fn wait_for_room(&self, record: UsageRecord) {
        struct Waiting<'a> {
            sink: &'a UsageSink,
            record: Option<UsageRecord>,
        }
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                if let Some(record) = self.record.take() {
                    self.sink.send_now(record);
                }
            }
        }
        let mut waiting = Waiting {
            sink: self,
            record: Some(record),
        };
        let room = self.tx.reserve().await;
        let Some(record) = waiting.record.take() else {
            return;
        };
        match room {
            Ok(permit) => permit.send(record),
            Err(_) => {
                tracing::error!(request_id = %record.request_id, "usage writer is gone; record lost");
            }
        }
    }

    /// Enqueues without waiting (for `Drop` and stream ends): if the queue is full a
    /// task takes over the wait, and keeps the writer open until it has sent.
    pub fn send_now(&self, record: UsageRecord) {
        if let Some(record) = self.offer(record) {
            let tx = self.tx.clone();
            self.background.spawn(async move {
                let _ = tx.send(record).await;
            });
        }
    }
}

/// How long usage writes must keep failing before `/readyz` says so.
pub const FAILING_AFTER_MS: i64 = 2_000;

/// How the usage path stands ([`UsageSink::health`]), for `/readyz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageHealth {
    /// Records are written as they come.
    Ok,
    /// The queue is full: finished requests wait for room before they answer.
    Backlogged,
    /// The writer's last write failed; it retries the batch with backoff.
    Failing,
}

impl UsageHealth {
    /// The word `/readyz` reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Backlogged => "backlogged",
            Self::Failing => "failing",
        }
    }
}

/// How long the writer lets records gather after the first of a batch, so a steady
/// trickle becomes a few transactions a second rather than one per request.
const COALESCE: Duration = Duration::from_millis(50);

/// The writer loop; returns how many records it wrote.
///
/// While a batch gathers the writer sleeps rather than waiting on the queue, so a
/// request that enqueues a record wakes nobody (a wake-up per record costs more CPU
/// than writing the record). A full batch is written at once, and the next one
/// starts without sleeping while the queue keeps filling batches.
async fn write_batches(
    store: Store,
    mut rx: mpsc::Receiver<UsageRecord>,
    batch_size: usize,
    (counter, failing_since_ms): (Arc<AtomicU64>, Arc<AtomicI64>),
    (catalog, budgets): (Arc<LiveCatalog>, Arc<Budgets>),
) -> u64 {
    let mut batch = Vec::with_capacity(batch_size);
    let mut written = 0u64;
    while rx.recv_many(&mut batch, batch_size).await > 0 {
        if batch.len() < batch_size && rx.len() < batch_size - batch.len() {
            tokio::time::sleep(COALESCE).await;
        }
        let room = batch_size - batch.len();
        if room > 0 && !rx.is_empty() {
            rx.recv_many(&mut batch, room).await;
        }
        let prices = catalog.current();
        for rec in &mut batch {
            price(&prices, rec);
        }
        let mut delay = Duration::from_millis(50);
        let gate = budgets.gate().lock().await;
        loop {
            match store.insert_usage(&batch).await {
                Ok(()) => {
                    budgets.written(&batch);
                    if failing_since_ms.swap(0, Ordering::Relaxed) != 0 {
                        tracing::info!(records = batch.len(), "usage writes succeed again");
                    }
                    break;
                }
                Err(e) => {
                    let now = crate::accept::now_ms().max(1);
                    let _ = failing_since_ms.compare_exchange(
                        0,
                        now,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    tracing::warn!(error = %e, records = batch.len(), "usage write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        drop(gate);
        written += batch.len() as u64;
        counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
        batch.clear();
    }
    written
}

/// Holds a request's usage record from the start of the pipeline and makes sure it is
/// sent exactly once: by [`RecordGuard::finish`] / [`RecordGuard::finish_now`], or
/// from `Drop` (then marked as a client disconnect).
#[derive(Debug)]
pub struct RecordGuard {
    record: Option<UsageRecord>,
    sink: UsageSink,
    started: Instant,
    /// Rate-limit tokens to settle against the finished record (admit stage).
    reservation: Option<Reservation>,
    /// The serving fallback target's own model rules' tokens (`admit::fallback`),
    /// settled likewise.
    fallback: Option<Reservation>,
    /// Spend reserved from budgets, settled likewise.
    budget: Option<BudgetReservation>,
    /// The request body's room among the bodies in flight, given back when the
    /// request is finished (the body is held until then, for retries and fallbacks).
    body_room: Option<crate::accept::BodyRoom>,
    /// Whether the call went upstream: one that never did (its caller left while it
    /// waited its turn) cost nothing, and its reservations are given back whole.
    sent: bool,
    /// Whether a fallback target served it with another model than the one asked
    /// for: the requested model's own rules then get their reserved tokens back.
    another_model: bool,
    /// A Responses call: where its answer's tokens are remembered for calls that
    /// continue it, and the conversation it belongs to (`carried`).
    carry: Option<(Arc<Carried>, Option<String>)>,
}

impl RecordGuard {
    pub fn new(sink: UsageSink, record: UsageRecord) -> Self {
        Self {
            record: Some(record),
            sink,
            started: Instant::now(),
            reservation: None,
            fallback: None,
            budget: None,
            body_room: None,
            sent: false,
            another_model: false,
            carry: None,
        }
    }

    /// Remembers the answer's tokens in `carried` when the record is finished, under
    /// its response id and `conversation` (a Responses call).
    pub fn carry(&mut self, carried: Arc<Carried>, conversation: Option<String>) {
        self.carry = Some((carried, conversation));
    }

    /// Marks the call as sent upstream (dispatch), before the first attempt.
    pub fn mark_sent(&mut self) {
        self.sent = true;
    }

    /// Keeps the admit stage's reservation until the record is finished, whichever
    /// way that happens, and settles it then.
    pub fn hold(&mut self, reservation: Option<Reservation>) {
        self.reservation = reservation;
    }

    /// Keeps the serving fallback target's reservation until the record is finished,
    /// and settles it then.
    pub fn hold_fallback(&mut self, reservation: Option<Reservation>) {
        self.fallback = reservation;
    }

    /// Notes that a fallback target with another model than the one asked for served
    /// the call (see [`Reservation::settle_served_by_another_model`]).
    pub fn mark_another_model(&mut self) {
        self.another_model = true;
    }

    /// Keeps the budgets' reservation until the record is finished, and settles it
    /// then (pricing the record).
    pub fn hold_budget(&mut self, budget: Option<BudgetReservation>) {
        self.budget = budget;
    }

    /// Keeps the request body's room (accept stage) until the record is finished.
    pub fn hold_body(&mut self, room: Option<crate::accept::BodyRoom>) {
        self.body_room = room;
    }

    /// The record being filled in.
    pub fn record(&mut self) -> &mut UsageRecord {
        // The record is only taken when the guard is consumed.
        self.record.get_or_insert_with(UsageRecord::default)
    }

    /// When the request began.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Marks the time to first byte, once.
    pub fn mark_first_byte(&mut self) {
        let ms = elapsed_ms(self.started);
        let rec = self.record();
        if rec.ttfb_ms.is_none() {
            rec.ttfb_ms = Some(ms);
        }
    }

    /// Sends the record, waiting for queue capacity (back-pressure).
    pub async fn finish(mut self) {
        // `UsageSink::send`'s two steps, not a call to it: its future would hold the
        // record as its argument, a second copy inside every request's future.
        let Some(rec) = self.take() else { return };
        if let Some(rec) = self.sink.offer(rec) {
            Box::pin(self.sink.wait_for_room(rec)).await;
        }
    }

    /// Sends the record without waiting.
    pub fn finish_now(mut self) {
        if let Some(rec) = self.take() {
            self.sink.send_now(rec);
        }
    }

    fn take(&mut self) -> Option<UsageRecord> {
        let mut rec = self.record.take()?;
        rec.latency_ms = elapsed_ms(self.started);
        if let Some(r) = self.reservation.take() {
            if self.another_model {
                r.settle_served_by_another_model(&rec, self.sent);
            } else {
                r.settle(&rec, self.sent);
            }
        }
        if let Some(r) = self.fallback.take() {
            r.settle(&rec, self.sent);
        }
        if let Some(b) = self.budget.take() {
            b.settle(&mut rec, self.sent);
        }
        if let Some((carried, conversation)) = self.carry.take() {
            carried.remember(&rec, conversation.as_deref());
        }
        self.body_room = None;
        self.sink.observe(&rec);
        Some(rec)
    }
}

impl Drop for RecordGuard {
    fn drop(&mut self) {
        if let Some(mut rec) = self.take() {
            rec.client_disconnected = true;
            if rec.status == 0 || rec.status < 400 {
                // Nginx's convention for "client closed request".
                rec.status = 499;
            }
            self.sink.send_now(rec);
        }
    }
}

/// Sets the record's cost from the catalog, by the model that served (a dated
/// snapshot is priced as its base) or else the one requested. A call that used no
/// tokens cost nothing whatever the model; one of a model the catalog does not know
/// stays unpriced (`None`), never 0 — unless a budget governed it: then its
/// settlement records the worst case it charged (`budgets`).
pub(crate) fn price(catalog: &Catalog, rec: &mut UsageRecord) {
    if rec.cost_usd_nanos.is_some() {
        return;
    }
    let tokens = BilledTokens {
        input: rec.input_tokens,
        cached: rec.cached_tokens,
        output: rec.output_tokens,
    };
    rec.cost_usd_nanos = if tokens.input == 0 && tokens.output == 0 {
        Some(0)
    } else {
        let model = rec
            .model_served
            .as_deref()
            .or(rec.model_requested.as_deref());
        model
            .and_then(|m| catalog.cost(m, tokens))
            .map(|c| c.usd_nanos())
    };
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> UsageRecord {
        UsageRecord {
            request_id: id.into(),
            endpoint: "/v1/responses".into(),
            status: 200,
            created_at_ms: 1,
            ..UsageRecord::default()
        }
    }

    #[tokio::test]
    async fn nothing_is_lost_through_a_tiny_queue_and_dropped_guards() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_data_dir(dir.path()).await.unwrap();
        let (sink, writer) = UsageSink::start(store.clone(), 2, 3, Arc::default());
        let mut tasks = Vec::new();
        for i in 0..50 {
            let sink = sink.clone();
            tasks.push(tokio::spawn(async move {
                let guard = RecordGuard::new(sink, rec(&format!("req_{i}")));
                match i % 3 {
                    0 => guard.finish().await,
                    1 => guard.finish_now(),
                    _ => drop(guard),
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        drop(sink);
        assert_eq!(writer.await.unwrap(), 50);
        let records = store.usage_records(0).await.unwrap();
        assert_eq!(records.len(), 50);
        let dropped = records.iter().filter(|r| r.client_disconnected).count();
        assert_eq!(dropped, (0..50).filter(|i| i % 3 == 2).count());
        assert!(records
            .iter()
            .filter(|r| r.client_disconnected)
            .all(|r| r.status == 499));
    }

    #[tokio::test]
    async fn a_record_waiting_for_queue_room_survives_its_request_being_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_data_dir(dir.path()).await.unwrap();
        let catalog: Arc<LiveCatalog> = Arc::default();
        let budgets = Arc::new(Budgets::new(catalog.clone()));
        let (sink, writer) =
            UsageSink::start_with_budgets(store.clone(), 1, 1, catalog, budgets.clone());
        // The writer stalls before its first write (the budgets' gate is held), so the
        // queue, with room for one, fills: later requests wait for room in `finish`,
        // and are cancelled while they wait (their clients left).
        let gate = budgets.gate().lock().await;
        let mut cancelled = 0;
        for i in 0..6 {
            let guard = RecordGuard::new(sink.clone(), rec(&format!("req_{i}")));
            let finish = tokio::time::timeout(Duration::from_millis(20), guard.finish());
            if finish.await.is_err() {
                cancelled += 1;
            }
        }
        assert!(cancelled >= 4, "only {cancelled} requests waited for room");
        drop(gate);
        drop(sink);
        assert_eq!(
            writer.await.unwrap(),
            6,
            "a cancelled request's record was lost"
        );
        assert_eq!(store.usage_records(0).await.unwrap().len(), 6);
    }

    #[tokio::test]
    async fn health_says_backlogged_while_the_queue_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_data_dir(dir.path()).await.unwrap();
        let catalog: Arc<LiveCatalog> = Arc::default();
        let budgets = Arc::new(Budgets::new(catalog.clone()));
        let (sink, writer) =
            UsageSink::start_with_budgets(store.clone(), 2, 1, catalog, budgets.clone());
        assert_eq!(sink.health(), UsageHealth::Ok);
        // The writer stalls before writing (the budgets' gate is held): its batch of one
        // is out of the queue, and two more fill the queue.
        let gate = budgets.gate().lock().await;
        sink.send(rec("a")).await;
        let taken = tokio::time::timeout(Duration::from_secs(10), async {
            while sink.queue_depth() > 0 {
                tokio::task::yield_now().await;
            }
        });
        assert!(taken.await.is_ok(), "the writer did not take its batch");
        sink.send(rec("b")).await;
        sink.send(rec("c")).await;
        assert_eq!(sink.health(), UsageHealth::Backlogged);
        drop(gate);
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while sink.health() != UsageHealth::Ok {
                tokio::task::yield_now().await;
            }
        });
        assert!(drained.await.is_ok(), "the queue did not drain");
        drop(sink);
        assert_eq!(writer.await.unwrap(), 3);
    }

    #[tokio::test]
    async fn the_writer_prices_each_record_and_leaves_unknown_models_unpriced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_data_dir(dir.path()).await.unwrap();
        let (sink, writer) = UsageSink::start(store.clone(), 8, 8, Arc::default());
        let priced = |id: &str, served: Option<&str>, requested: &str, tokens: (u64, u64, u64)| {
            let mut r = rec(id);
            r.model_served = served.map(str::to_owned);
            r.model_requested = Some(requested.into());
            (r.input_tokens, r.cached_tokens, r.output_tokens) = tokens;
            r.reasoning_tokens = tokens.2 / 2;
            r
        };
        sink.send(priced(
            "a",
            Some("gpt-4o-mini-2024-07-18"),
            "gpt-4o-mini",
            (1200, 200, 400),
        ))
        .await;
        sink.send(priced("b", None, "o3", (10, 0, 100))).await;
        sink.send(priced("c", Some("llama3"), "llama3", (10, 0, 10)))
            .await;
        sink.send(priced("d", None, "llama3", (0, 0, 0))).await;
        drop(sink);
        assert_eq!(writer.await.unwrap(), 4);
        let costs: Vec<_> = store
            .usage_records(0)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.request_id, r.cost_usd_nanos))
            .collect();
        assert_eq!(
            costs,
            [
                // 1000 × 150 + 200 × 75 + 400 × 600 nano-USD.
                ("a".to_owned(), Some(405_000)),
                // Reasoning tokens are output tokens: 10 × 2000 + 100 × 8000.
                ("b".to_owned(), Some(820_000)),
                ("c".to_owned(), None),
                ("d".to_owned(), Some(0)),
            ]
        );
    }
}
