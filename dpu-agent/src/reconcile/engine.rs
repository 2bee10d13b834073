//! The level-triggered work queue that drives every controller.
//!
//! Keys enter the queue when their object changes, when an object they
//! depend on changes, at start, and at every periodic resync; a key is
//! processed by reading the object's *current* state, so how many events led
//! to it does not matter. Keys a change queued are reconciled before the
//! rest, and before what is left of a resync in progress. A failed reconcile is retried with exponential
//! backoff (100 ms doubling to 60 s). Status is written back only when it
//! changed, and only if the object's generation did not move meanwhile.
//! A deleting object is removed once its controller says it is finalized and
//! nothing references it any more.
//!
//! Every reconcile is timed into [`EngineStats`] (duration by kind and
//! outcome, errors by kind and reason, the time of the last success per
//! kind) for `/metrics`. Log lines about an object carry `kind`, `id` and
//! `tenant` as fields; an object failing again and again is logged at `warn`
//! on its 1st, 2nd, 4th, 8th ... consecutive failure and at `debug` in
//! between, so a tenant's broken object cannot flood the log.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dpu_api::Kind;
use dpu_api::object::{ConditionStatus, Event, EventType, Object, ObjectKey, Phase};
use dpu_api::spec::RefField;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tracing::Instrument;

use super::{Context, Controller, Outcome, Reason, ReconcileError, condition};
use crate::admission;
use crate::metrics::{self, HistogramVec, RECONCILE_BUCKETS};
use crate::store::{StoreError, StoredObject};

/// How often every object is reconciled even without a change.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(30);

/// Reconciles whose status writes are committed together at the most.
const FLUSH_EVERY: usize = 64;

/// Keys that became due during a round reconciled in a row at the most
/// before one of the round's own.
const URGENT_RUN: usize = 8;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The controllers, by kind.
#[derive(Clone, Default)]
pub struct Controllers(HashMap<Kind, Arc<dyn Controller>>);

impl std::fmt::Debug for Controllers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl Controllers {
    pub fn new(list: Vec<Arc<dyn Controller>>) -> Self {
        Controllers(list.into_iter().map(|c| (c.kind(), c)).collect())
    }

    pub fn get(&self, kind: Kind) -> Option<&Arc<dyn Controller>> {
        self.0.get(&kind)
    }

    /// Every backend a controller drives, with whether it is connected.
    pub fn backends(&self) -> BTreeMap<String, bool> {
        self.0.values().filter_map(|c| c.backend()).collect()
    }

    /// Every controller's backend metrics, in kind order, then the
    /// backend operation durations.
    pub fn metrics(&self, out: &mut String) {
        let mut kinds: Vec<&Kind> = self.0.keys().collect();
        kinds.sort_by_key(|k| k.path());
        for k in kinds {
            self.0[k].metrics(out);
        }
        render_backend_operations(out);
    }
}

/// `dpu_agent_backend_operation_duration_seconds`: every wire operation the
/// backends timed, by backend (`xfrm`: XFRM netlink; `spdk`: SPDK/SNAP
/// JSON-RPC; `configfs`: nvmet configfs; `tc`: traffic-control netlink;
/// `nvme_fabrics`: NVMe-oF connect/disconnect; `rtnetlink`, `devlink`: the
/// functions backend) and operation (the netlink message, RPC method or
/// configfs operation; closed sets kept by the `timing` callers of
/// `dpu_crypto`, `storage_offload` and `net_offload`).
pub fn render_backend_operations(out: &mut String) {
    let name = "dpu_agent_backend_operation_duration_seconds";
    metrics::header(
        out,
        name,
        "histogram",
        "Time one backend operation took, by backend (xfrm, spdk, configfs, tc, nvme_fabrics, rtnetlink, devlink) and operation (netlink message, RPC method, configfs operation).",
    );
    // One table for every backend crate (`dpu_timing`), ordered by
    // backend and operation.
    for (backend, operation, s) in dpu_timing::snapshot() {
        metrics::Histogram::from_parts(dpu_timing::BUCKETS, &s.counts, s.sum).render(
            out,
            name,
            &[("backend", backend), ("operation", operation)],
        );
    }
}

/// What `/readyz` and `/metrics` read of the engine.
#[derive(Debug)]
pub struct EngineStats {
    pub initial_sync_done: AtomicBool,
    pub reconciles: AtomicU64,
    pub failures: AtomicU64,
    pub queue_len: AtomicU64,
    /// Reconcile duration by kind (its path) and outcome (`ok`, `error`).
    pub reconcile_seconds: HistogramVec<2>,
    /// By kind: from the change event that queued an object (the first
    /// one not yet reconciled) to the start of its reconcile. Resyncs and
    /// retries are not counted: they are due later on purpose.
    pub queue_seconds: HistogramVec<1>,
    /// Failed reconciles by kind and reason ([`Reason::as_str`]: a closed set).
    pub errors: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Unix time of the last successful reconcile, by kind.
    pub last_success: Mutex<BTreeMap<&'static str, f64>>,
}

impl Default for EngineStats {
    fn default() -> Self {
        EngineStats {
            initial_sync_done: AtomicBool::default(),
            reconciles: AtomicU64::default(),
            failures: AtomicU64::default(),
            queue_len: AtomicU64::default(),
            reconcile_seconds: HistogramVec::new(RECONCILE_BUCKETS, ["kind", "outcome"]),
            queue_seconds: HistogramVec::new(RECONCILE_BUCKETS, ["kind"]),
            errors: Mutex::default(),
            last_success: Mutex::default(),
        }
    }
}

impl EngineStats {
    fn record(&self, kind: Kind, took: Duration, result: Result<(), Reason>) {
        let kind = kind.path();
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.reconcile_seconds
            .observe([kind, outcome], took.as_secs_f64());
        match result {
            Ok(()) => {
                if let Ok(mut m) = self.last_success.lock() {
                    m.insert(kind, metrics::unix_now());
                }
            }
            Err(reason) => {
                if let Ok(mut m) = self.errors.lock() {
                    *m.entry((kind, reason.as_str())).or_default() += 1;
                }
            }
        }
    }
}

#[derive(Debug)]
pub struct Engine {
    ctx: Context,
    controllers: Controllers,
    stats: Arc<EngineStats>,
    resync: Duration,
}

/// The span a reconcile of `key` runs in: `kind` (its path), `id` and
/// `tenant` as fields. At `ERROR` level so that it is enabled whatever
/// `log_level` lets through: a span filtered out would drop the fields from
/// the `warn` lines inside it.
pub fn reconcile_span(key: &ObjectKey, tenant: &str) -> tracing::Span {
    tracing::error_span!("reconcile", kind = key.kind.path(), id = %key.id, tenant = %tenant)
}

/// Exponential backoff after `failures` consecutive failures.
pub fn backoff(failures: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1).min(20))
        .unwrap_or(u32::MAX);
    BACKOFF_MIN.saturating_mul(factor).min(BACKOFF_MAX)
}

#[derive(Default)]
struct Queue {
    /// Key → when it is due.
    due: BTreeMap<ObjectKey, Instant>,
    /// The same keys by time, then key: the next one due without a scan.
    by_time: BTreeSet<(Instant, ObjectKey)>,
    failures: HashMap<ObjectKey, u32>,
    /// When a change event queued the key (the first not yet reconciled).
    changed: HashMap<ObjectKey, Instant>,
    /// The keys in `due` that are in `changed`, in key order. A change is
    /// due when its event came, so these are due now.
    changed_due: BTreeSet<ObjectKey>,
}

impl Queue {
    /// Queues `key` at `at`, or earlier if it is queued for earlier.
    fn add(&mut self, key: ObjectKey, at: Instant) {
        match self.due.get_mut(&key) {
            Some(slot) if *slot <= at => {}
            Some(slot) => {
                let was = std::mem::replace(slot, at);
                self.by_time.remove(&(was, key.clone()));
                self.by_time.insert((at, key));
            }
            None => {
                if self.changed.contains_key(&key) {
                    self.changed_due.insert(key.clone());
                }
                self.due.insert(key.clone(), at);
                self.by_time.insert((at, key));
            }
        }
    }

    /// Queues `key` now for a change (its spec, its existence).
    fn change(&mut self, key: ObjectKey, now: Instant) {
        self.changed.entry(key.clone()).or_insert(now);
        if self.due.contains_key(&key) {
            self.changed_due.insert(key.clone());
        }
        self.add(key, now);
    }

    /// Takes `key` out of the queue; when it was due.
    fn remove(&mut self, key: &ObjectKey) -> Option<Instant> {
        let at = self.due.remove(key)?;
        self.by_time.remove(&(at, key.clone()));
        self.changed_due.remove(key);
        Some(at)
    }

    /// `key` is being reconciled: its change (if one queued it) is done;
    /// when that change came.
    fn take_changed(&mut self, key: &ObjectKey) -> Option<Instant> {
        self.changed_due.remove(key);
        self.changed.remove(key)
    }

    fn next_due(&self) -> Option<Instant> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// A key due now: the first (in key order) one a change queued, else
    /// the one due the longest (a retry, a poll, a requeue).
    fn take_one_due(&mut self, now: Instant) -> Option<ObjectKey> {
        let key = self
            .changed_due
            .iter()
            .find(|k| self.due.get(*k).is_some_and(|t| *t <= now))
            .or_else(|| {
                self.by_time
                    .first()
                    .filter(|(at, _)| *at <= now)
                    .map(|(_, k)| k)
            })?
            .clone();
        self.remove(&key);
        Some(key)
    }

    /// Every key due now, in key order.
    fn take_due(&mut self, now: Instant) -> Vec<ObjectKey> {
        let mut ready: Vec<ObjectKey> = self
            .by_time
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, k)| k.clone())
            .collect();
        for k in &ready {
            self.remove(k);
        }
        ready.sort_unstable();
        ready
    }
}

impl Engine {
    pub fn new(ctx: Context, controllers: Controllers) -> Self {
        Engine {
            ctx,
            controllers,
            stats: Arc::default(),
            resync: DEFAULT_RESYNC,
        }
    }

    pub fn with_resync(mut self, every: Duration) -> Self {
        self.resync = every;
        self
    }

    pub fn stats(&self) -> Arc<EngineStats> {
        self.stats.clone()
    }

    pub fn controllers(&self) -> Controllers {
        self.controllers.clone()
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut events = self.ctx.store.subscribe();
        let mut queue = Queue::default();
        self.enqueue_all(&mut queue);
        let mut resync = tokio::time::interval_at(Instant::now() + self.resync, self.resync);
        // A resync that took longer than the period is not followed by a
        // burst of the ticks it missed.
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The initial sync is done once every object stored at start was
        // reconciled once. Not "the queue ran empty": objects that poll
        // (veth functions every 2 s, Pending ones every second) keep it
        // busy, and a restarted agent with such objects was never ready.
        let mut first_pass: BTreeSet<ObjectKey> = queue.due.keys().cloned().collect();
        let mut synced = false;
        loop {
            self.stats
                .queue_len
                .store(queue.due.len() as u64, Ordering::Relaxed);
            if !synced && first_pass.is_empty() {
                synced = true;
                self.stats.initial_sync_done.store(true, Ordering::Relaxed);
            }
            let sleep_until = queue
                .next_due()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        break;
                    }
                }
                ev = events.recv() => match ev {
                    Ok(ev) => self.on_event(&mut queue, ev.type_, &ev.object),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.enqueue_all(&mut queue),
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = resync.tick() => self.enqueue_all(&mut queue),
                _ = tokio::time::sleep_until(sleep_until) => {
                    self.run_due(&mut queue, &mut events, &mut first_pass, &shutdown).await;
                }
            }
        }
        // What the last passes staged, so a clean stop loses no status.
        self.flush().await;
        tracing::info!("reconcile engine stopped");
    }

    /// Reconciles every key due now. Keys a change queued go first; the
    /// rest (a resync, retries, polls) follow in key order. Keys that
    /// become due meanwhile (changes first, then a port's poll for its
    /// flows, retries) are taken between two reconciles and go before
    /// what is left, so they never wait behind a whole resync (at
    /// thousands of objects on slow cores, a resync takes longer than its
    /// period). Status writes are committed when the changes due are done
    /// (before the rest goes on), every [`FLUSH_EVERY`] reconciles and at
    /// the end, in one commit each (or in the group of a write that is
    /// committing anyway).
    async fn run_due(
        &self,
        queue: &mut Queue,
        events: &mut broadcast::Receiver<Event>,
        first_pass: &mut BTreeSet<ObjectKey>,
        shutdown: &watch::Receiver<bool>,
    ) {
        let mut rest = queue.take_due(Instant::now());
        // Stable: key order is kept within each group.
        rest.sort_by_key(|k| !queue.changed.contains_key(k));
        let mut rest = std::collections::VecDeque::from(rest);
        // Reconciled in this round: not again when reached in `rest`.
        let mut done = HashSet::new();
        let mut unflushed = 0usize;
        let mut changes_unflushed = false;
        let mut urgent_run = 0usize;
        loop {
            loop {
                match events.try_recv() {
                    Ok(ev) => self.on_event(queue, ev.type_, &ev.object),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => self.enqueue_all(queue),
                    // Empty, or closed: the main loop sees that.
                    Err(_) => break,
                }
            }
            // What became due since this round began (changes, polls,
            // retries) goes first, but at most URGENT_RUN in a row while
            // the round's own keys wait: they are not starved either.
            let urgent = if urgent_run < URGENT_RUN || rest.is_empty() {
                queue.take_one_due(Instant::now())
            } else {
                None
            };
            urgent_run = if urgent.is_some() { urgent_run + 1 } else { 0 };
            let key = match urgent {
                Some(key) => key,
                None => {
                    if changes_unflushed {
                        // The changes' statuses before the rest.
                        self.flush().await;
                        (unflushed, changes_unflushed) = (0, false);
                    }
                    match rest.pop_front() {
                        Some(key) if done.contains(&key) => continue,
                        Some(key) => key,
                        None => break,
                    }
                }
            };
            first_pass.remove(&key);
            changes_unflushed |= queue.changed.contains_key(&key);
            done.insert(key.clone());
            self.process(queue, key).await;
            unflushed += 1;
            if unflushed >= FLUSH_EVERY {
                self.flush().await;
                (unflushed, changes_unflushed) = (0, false);
            }
            if *shutdown.borrow() {
                break;
            }
        }
        self.flush().await;
    }

    fn enqueue_all(&self, queue: &mut Queue) {
        let now = Instant::now();
        for obj in self.ctx.store.all() {
            queue.add(obj.key(), now);
        }
    }

    fn on_event(&self, queue: &mut Queue, type_: EventType, object: &Object) {
        if type_ == EventType::Status {
            return;
        }
        let now = Instant::now();
        let key = object.key();
        // A changed spec resets the backoff: the new spec may well work.
        queue.failures.remove(&key);
        let kind = key.kind;
        queue.change(key, now);
        if !kind.is_tenant() {
            // The tenant counts what it owns (and, when it is being
            // deleted, waits for it to go).
            let tenant = ObjectKey::new(Kind::Tenant, &object.tenant);
            queue.change(tenant, now);
        }
        if type_ == EventType::Deleted {
            // A deleting network or function may have been waiting for
            // this one to go: the objects its spec names (the only ones
            // [`admission::referrers`] counts it against, beside its
            // tenant), not a scan of the store.
            for field in RefField::ALL {
                let Some(id) = field
                    .name()
                    .strip_prefix("spec.")
                    .and_then(|name| object.spec.get(name))
                    .and_then(|v| v.as_str())
                else {
                    continue;
                };
                let target = ObjectKey::new(field.kind(), id);
                if self
                    .ctx
                    .store
                    .get(&target)
                    .is_some_and(|t| t.deleting && t.tenant == object.tenant)
                {
                    queue.add(target, now);
                }
            }
        }
    }

    async fn process(&self, queue: &mut Queue, key: ObjectKey) {
        if let Some(changed) = queue.take_changed(&key) {
            self.stats
                .queue_seconds
                .observe([key.kind.path()], changed.elapsed().as_secs_f64());
        }
        let Some(obj) = self.ctx.store.get(&key) else {
            return;
        };
        let Some(ctrl) = self.controllers.get(key.kind).cloned() else {
            return;
        };
        if obj.deleting && self.still_referenced(&obj) {
            // Torn down after what references it; its deletion event requeues us.
            queue.add(key, Instant::now() + Duration::from_secs(5));
            return;
        }
        self.stats.reconciles.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        // Every line a controller logs while reconciling this object (and
        // every task it starts in the span, like a TLS listener's accept
        // loop) carries the object's kind, id and tenant.
        let span = reconcile_span(&key, &obj.tenant);
        let result = ctrl
            .reconcile(&self.ctx, &obj)
            .instrument(span.clone())
            .await;
        let must_flush = span.in_scope(|| self.record_outcome(queue, &key, &obj, started, result));
        if must_flush {
            self.flush().await;
        }
    }

    /// Counts a reconcile, logs a failure, schedules the retry and stages
    /// the status; true when the status has to be durable before going on.
    fn record_outcome(
        &self,
        queue: &mut Queue,
        key: &ObjectKey,
        obj: &StoredObject,
        started: Instant,
        result: Result<Outcome, ReconcileError>,
    ) -> bool {
        self.stats.record(
            key.kind,
            started.elapsed(),
            result.as_ref().map(|_| ()).map_err(|e| e.reason),
        );
        let (kind, id, tenant) = (key.kind.path(), key.id.clone(), obj.tenant.clone());
        match result {
            Ok(outcome) => {
                queue.failures.remove(key);
                if let Some(after) = outcome.requeue_after {
                    queue.add(key.clone(), Instant::now() + after);
                }
                match self.write_back(obj, outcome) {
                    Ok(durable) => durable,
                    Err(e) => {
                        tracing::error!(object = %key, kind, %id, %tenant, error = %crate::error_chain(&e), "cannot record status");
                        queue.add(key.clone(), Instant::now() + backoff(1));
                        false
                    }
                }
            }
            Err(err) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                let n = queue.failures.entry(key.clone()).or_insert(0);
                *n += 1;
                let delay = backoff(*n);
                let retry_in_ms = delay.as_millis() as u64;
                let failures = *n;
                if failures.is_power_of_two() {
                    tracing::warn!(object = %key, kind, %id, %tenant, reason = %err.reason, detail = %err.message, failures, retry_in_ms, "reconcile failed");
                } else {
                    tracing::debug!(object = %key, kind, %id, %tenant, reason = %err.reason, detail = %err.message, failures, retry_in_ms, "reconcile failed again");
                }
                queue.add(key.clone(), Instant::now() + delay);
                match self.write_failure(obj, &err) {
                    Ok(durable) => durable,
                    Err(e) => {
                        tracing::error!(object = %key, kind, %id, %tenant, error = %crate::error_chain(&e), "cannot record status");
                        false
                    }
                }
            }
        }
    }

    /// Commits the status writes staged so far, on the store's threads.
    async fn flush(&self) {
        let store = self.ctx.store.clone();
        match self.ctx.store.offload(move || store.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %crate::error_chain(&e), "cannot record status");
            }
            Err(e) => tracing::error!(error = %e, "cannot record status"),
        }
    }

    fn still_referenced(&self, obj: &StoredObject) -> bool {
        let key = obj.key();
        self.ctx
            .store
            .dry_run(|txn| {
                Ok::<_, StoreError>(!admission::referrers(txn, &key, &obj.tenant, true).is_empty())
            })
            .map(|(r, _)| r)
            .unwrap_or(true)
    }

    /// Records the outcome of a reconcile of `seen`. Status is staged
    /// without waiting for the disk ([`crate::store::Store::transact_deferred`]):
    /// the pass's [`Engine::flush`] commits it, grouped with every other write,
    /// and a crash before that loses nothing the next start does not
    /// recompute, since every object is reconciled again then. Two writes are
    /// made durable before the engine goes on: removing a finalized object,
    /// and status facts that changed (the VF, representor or host device an
    /// object holds), since allocation reads them back: for those it returns
    /// true and the caller flushes before it goes on.
    fn write_back(&self, seen: &StoredObject, outcome: Outcome) -> Result<bool, StoreError> {
        let key = seen.key();
        let mut status = outcome.status;
        status.observed_generation = seen.generation;
        if seen.deleting {
            status.phase = Phase::Deleting;
        }
        let (must_be_durable, _) = self.ctx.store.transact_deferred(|txn| {
            let Some(current) = txn.get(&key) else {
                return Ok::<_, StoreError>(false);
            };
            // A newer generation will be reconciled on its own.
            if current.generation != seen.generation || current.deleting != seen.deleting {
                return Ok(false);
            }
            if seen.deleting && outcome.finalized {
                txn.remove(&key);
                Ok(true)
            } else if current.status != status {
                let facts_changed = current.status.facts != status.facts;
                txn.set_status(&key, status);
                Ok(facts_changed)
            } else {
                Ok(false)
            }
        })?;
        Ok(must_be_durable)
    }

    fn write_failure(&self, seen: &StoredObject, err: &ReconcileError) -> Result<bool, StoreError> {
        let mut status = seen.status.clone();
        status.phase = match (seen.deleting, status.phase) {
            (true, _) => Phase::Deleting,
            (false, Phase::Ready | Phase::Degraded) => Phase::Degraded,
            (false, _) => Phase::Pending,
        };
        status.set_condition(condition(
            "Programmed",
            ConditionStatus::False,
            err.reason,
            err.message.clone(),
        ));
        let outcome = Outcome {
            status,
            finalized: false,
            requeue_after: None,
        };
        self.write_back(seen, outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine over a store holding network `blue` of tenant `acme`, with
    /// `controller` for networks, and an empty queue.
    fn engine_with_blue_network(
        controller: Arc<dyn Controller>,
    ) -> (tempfile::TempDir, Engine, Queue) {
        let (dir, ctx) = crate::reconcile::testing::context();
        crate::reconcile::testing::put(
            &ctx.store,
            "acme",
            Kind::Network,
            "blue",
            serde_json::json!({"vni": 7, "cidr": "10.7.0.0/24", "encap": "vxlan"}),
            false,
        );
        let engine = Engine::new(ctx, Controllers::new(vec![controller]));
        (dir, engine, Queue::default())
    }

    /// A network controller that succeeds after `delay`, records the ids
    /// it reconciled in order, and marks the generation observed.
    #[derive(Default)]
    struct Recording {
        delay: Duration,
        order: Arc<Mutex<Vec<String>>>,
    }

    impl Controller for Recording {
        fn kind(&self) -> Kind {
            Kind::Network
        }
        fn reconcile<'a>(
            &'a self,
            _ctx: &'a Context,
            obj: &'a StoredObject,
        ) -> crate::reconcile::Reconciling<'a> {
            Box::pin(async move {
                self.order.lock().unwrap().push(obj.id.clone());
                if !self.delay.is_zero() {
                    tokio::time::sleep(self.delay).await;
                }
                let mut status = obj.status.clone();
                status.observed_generation = obj.generation;
                Ok(Outcome {
                    status,
                    finalized: false,
                    requeue_after: None,
                })
            })
        }
        fn plan(
            &self,
            _: &Context,
            _: &StoredObject,
            _: dpu_api::object::WriteOutcome,
        ) -> Vec<String> {
            Vec::new()
        }
    }

    #[test]
    fn reconciles_are_recorded_by_kind_outcome_and_reason() {
        let s = EngineStats::default();
        s.record(Kind::Network, Duration::from_millis(2), Ok(()));
        s.record(
            Kind::Network,
            Duration::from_millis(3),
            Err(Reason::SwitchUnavailable),
        );
        s.record(
            Kind::Network,
            Duration::from_millis(3),
            Err(Reason::NoFreeVf),
        );
        let ok = s.reconcile_seconds.get(["networks", "ok"]).unwrap();
        assert_eq!(ok.count(), 1);
        let err = s.reconcile_seconds.get(["networks", "error"]).unwrap();
        assert_eq!(err.count(), 2);
        let errors = s.errors.lock().unwrap();
        assert_eq!(errors[&("networks", "SwitchUnavailable")], 1);
        assert_eq!(errors[&("networks", "NoFreeVf")], 1);
        assert!(s.last_success.lock().unwrap()["networks"] > 1.7e9);
    }

    #[test]
    fn backend_operations_render_as_one_histogram_family() {
        storage_offload::timing::observe("configfs", "mkdir", 0.0002);
        dpu_crypto::timing::observe("xfrm", "newsa", 0.00004);
        net_offload::timing::observe("devlink", "eswitch_get", 0.001);
        let mut out = String::new();
        render_backend_operations(&mut out);
        let name = "dpu_agent_backend_operation_duration_seconds";
        assert_eq!(out.matches(&format!("# TYPE {name} histogram")).count(), 1);
        assert!(
            out.contains(&format!(
                "{name}_bucket{{backend=\"xfrm\",operation=\"newsa\",le=\"0.00005\"}} "
            )),
            "{out}"
        );
        for (backend, op) in [("configfs", "mkdir"), ("devlink", "eswitch_get")] {
            assert!(
                out.contains(&format!(
                    "{name}_count{{backend=\"{backend}\",operation=\"{op}\"}} "
                )),
                "{out}"
            );
        }
    }

    /// A port's deletion wakes the deleting network and function its spec
    /// names (and its tenant) at once, not on the 5 s retry; a deleting
    /// network the port did not name, or one of another tenant, stays
    /// where it was.
    #[test]
    fn a_deletion_wakes_the_deleting_objects_it_named() {
        use crate::reconcile::testing::put;
        let (_dir, engine, mut queue) = engine_with_blue_network(Arc::new(Recording::default()));
        let store = &engine.ctx.store;
        let net =
            |vni: u32| serde_json::json!({"vni": vni, "cidr": "10.9.0.0/24", "encap": "vxlan"});
        put(store, "acme", Kind::Network, "red", net(9), true);
        put(store, "other", Kind::Network, "green", net(10), true);
        put(
            store,
            "acme",
            Kind::Function,
            "f1",
            serde_json::json!({"type": "net", "pf": "pf0", "mac": "02:00:00:00:00:0a"}),
            true,
        );
        // Mark blue deleting as well.
        let mut blue = crate::reconcile::testing::stored(store, Kind::Network, "blue");
        blue.deleting = true;
        store
            .transact(|t| {
                t.put(blue, EventType::Modified);
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let port = Object {
            kind: Kind::Port,
            id: "p1".into(),
            tenant: "acme".into(),
            generation: 1,
            spec: serde_json::json!({"network": "blue", "function": "f1", "mac": "02:00:00:00:00:01"}),
            status: Default::default(),
        };
        engine.on_event(&mut queue, EventType::Deleted, &port);
        let due: BTreeSet<ObjectKey> = queue.take_due(Instant::now()).into_iter().collect();
        let want: BTreeSet<ObjectKey> = [
            ObjectKey::new(Kind::Port, "p1"),
            ObjectKey::new(Kind::Tenant, "acme"),
            ObjectKey::new(Kind::Network, "blue"),
            ObjectKey::new(Kind::Function, "f1"),
        ]
        .into_iter()
        .collect();
        assert_eq!(due, want);
        // A port of another tenant naming `blue` wakes nothing of acme's.
        let mut other = port.clone();
        other.tenant = "other".into();
        engine.on_event(&mut queue, EventType::Deleted, &other);
        let due: BTreeSet<ObjectKey> = queue.take_due(Instant::now()).into_iter().collect();
        let want: BTreeSet<ObjectKey> = [
            ObjectKey::new(Kind::Port, "p1"),
            ObjectKey::new(Kind::Tenant, "other"),
        ]
        .into_iter()
        .collect();
        assert_eq!(due, want);
    }

    /// The queue's indexes agree with its map after any mix of operations,
    /// and a key is taken as before: changes first (in key order), then
    /// the one due the longest.
    #[test]
    fn queue_indexes_agree_and_changes_go_first() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let key = |i: u64| ObjectKey::new(Kind::Network, format!("n{i}"));
        let mut q = Queue::default();
        let mut seed = 7u64;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for step in 0..5000 {
            let k = key(next(40));
            match next(6) {
                0 | 1 => q.add(k, at(next(100))),
                2 => q.change(k, at(next(100))),
                3 => {
                    q.remove(&k);
                }
                4 => {
                    q.take_changed(&k);
                }
                _ => {
                    q.take_one_due(at(next(100)));
                }
            }
            let by_time: BTreeSet<(Instant, ObjectKey)> =
                q.due.iter().map(|(k, t)| (*t, k.clone())).collect();
            assert_eq!(q.by_time, by_time, "step {step}");
            let changed_due: BTreeSet<ObjectKey> = q
                .due
                .keys()
                .filter(|k| q.changed.contains_key(*k))
                .cloned()
                .collect();
            assert_eq!(q.changed_due, changed_due, "step {step}");
        }
        let mut q = Queue::default();
        q.add(key(1), at(5));
        q.add(key(2), at(1));
        q.change(key(9), at(3));
        q.change(key(8), at(4));
        q.add(key(3), at(50));
        let order: Vec<ObjectKey> = std::iter::from_fn(|| q.take_one_due(at(10))).collect();
        assert_eq!(order, vec![key(8), key(9), key(2), key(1)]);
        assert_eq!(q.next_due(), Some(at(50)));
        assert_eq!(q.take_due(at(60)), vec![key(3)]);
    }

    /// `dpu_agent_reconcile_queue_seconds`: a change event's key is timed
    /// from the event to its reconcile start; a resync is not. Its only
    /// label is the kind (TENANCY.md invariants 5 and 6: no tenant or id in
    /// a metric, no series a caller can add).
    #[tokio::test(flavor = "current_thread")]
    async fn queue_wait_is_timed_from_the_change_event() {
        let (_dir, engine, mut queue) = engine_with_blue_network(Arc::new(Recording::default()));
        let key = ObjectKey::new(Kind::Network, "blue");
        let blue = engine.ctx.store.get(&key).expect("blue").to_api();
        engine.on_event(&mut queue, EventType::Added, &blue);
        // A status event queues nothing.
        engine.on_event(&mut queue, EventType::Status, &blue);
        tokio::time::sleep(Duration::from_millis(20)).await;
        engine.process(&mut queue, key.clone()).await;
        let q = engine.stats.queue_seconds.get(["networks"]).unwrap();
        assert_eq!(q.count(), 1);
        assert!(q.sum() >= 0.02, "{}", q.sum());
        // The tenant was queued by the same event.
        assert!(
            queue
                .changed
                .contains_key(&ObjectKey::new(Kind::Tenant, "acme"))
        );
        // A resync is due at once on purpose: not a queue wait.
        engine.enqueue_all(&mut queue);
        engine.process(&mut queue, key).await;
        let q = engine.stats.queue_seconds.get(["networks"]).unwrap();
        assert_eq!(q.count(), 1);
    }

    /// A change that arrives, and a poll that falls due, while a long
    /// resync is being reconciled go before what is left of it; the resync
    /// still reconciles every key once.
    #[tokio::test(flavor = "current_thread")]
    async fn changes_and_polls_go_before_the_rest_of_a_resync() {
        let slow = Recording {
            delay: Duration::from_millis(2),
            ..Recording::default()
        };
        let order = slow.order.clone();
        let (_dir, engine, mut queue) = engine_with_blue_network(Arc::new(slow));
        let store = engine.ctx.store.clone();
        for i in 0..60 {
            crate::reconcile::testing::put(
                &store,
                "acme",
                Kind::Network,
                &format!("n{i:02}"),
                serde_json::json!({"vni": 100 + i, "cidr": format!("10.8.{i}.0/24"), "encap": "vxlan"}),
                false,
            );
        }
        let mut events = store.subscribe();
        let (_stop, shutdown) = watch::channel(false);
        let mut first_pass = BTreeSet::new();
        // The resync: all 61 networks due at once; but `blue` polls (a
        // requeue due 20 ms into the round).
        engine.enqueue_all(&mut queue);
        let blue = ObjectKey::new(Kind::Network, "blue");
        queue.remove(&blue);
        queue.add(blue, Instant::now() + Duration::from_millis(20));
        let writer = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            crate::reconcile::testing::put(
                &writer,
                "acme",
                Kind::Network,
                "late",
                serde_json::json!({"vni": 99, "cidr": "10.9.0.0/24", "encap": "vxlan"}),
                false,
            );
        });
        engine
            .run_due(&mut queue, &mut events, &mut first_pass, &shutdown)
            .await;
        let order = order.lock().unwrap().clone();
        for (id, what) in [("late", "the change"), ("blue", "the poll")] {
            let at = order.iter().position(|o| o == id).expect("reconciled");
            assert!(
                at < 30,
                "{what} waited behind the resync: reconciled {at}th of {}: {order:?}",
                order.len()
            );
        }
        // Nothing of the resync was skipped, nothing reconciled twice.
        assert_eq!(order.len(), 62, "{order:?}");
        let late = store
            .get(&ObjectKey::new(Kind::Network, "late"))
            .expect("late stored");
        assert_eq!(late.status.observed_generation, late.generation);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(5), Duration::from_millis(1600));
        assert_eq!(backoff(30), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    /// Logs of one object: a controller's own lines carry `kind`, `id` and
    /// `tenant` from the engine's span, and an object failing again and
    /// again is logged at `warn` only on its 1st, 2nd, 4th ... failure.
    #[tokio::test(flavor = "current_thread")]
    async fn object_logs_carry_kind_id_tenant_and_failures_are_rate_limited() {
        use std::sync::Arc;

        use dpu_api::object::WriteOutcome;

        use crate::reconcile::Reconciling;

        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        struct Failing;
        impl Controller for Failing {
            fn kind(&self) -> Kind {
                Kind::Network
            }
            fn reconcile<'a>(
                &'a self,
                _ctx: &'a Context,
                _obj: &'a StoredObject,
            ) -> Reconciling<'a> {
                Box::pin(async {
                    tracing::warn!("the switch said no");
                    Err(ReconcileError {
                        reason: Reason::SwitchUnavailable,
                        message: "no switch".into(),
                    })
                })
            }
            fn plan(&self, _: &Context, _: &StoredObject, _: WriteOutcome) -> Vec<String> {
                Vec::new()
            }
        }

        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        // With a single dispatcher registered, tracing-core asks only the
        // registering thread's own dispatcher about a new callsite: another
        // test's thread hitting the engine's span first (with none) would
        // cache "never" for it. A second live dispatcher makes every
        // registration ask all of them; then ask again for what was cached.
        let _second = tracing::Dispatch::new(tracing_subscriber::registry());
        tracing::callsite::rebuild_interest_cache();

        let (_dir, engine, mut queue) = engine_with_blue_network(Arc::new(Failing));
        for _ in 0..4 {
            engine
                .process(&mut queue, ObjectKey::new(Kind::Network, "blue"))
                .await;
        }
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let own: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|l| l["fields"]["message"] == "the switch said no")
            .collect();
        assert_eq!(own.len(), 4, "{text}");
        for l in &own {
            assert_eq!(l["span"]["kind"], "networks", "{l}");
            assert_eq!(l["span"]["id"], "blue", "{l}");
            assert_eq!(l["span"]["tenant"], "acme", "{l}");
        }
        // `detail`, not `message`: a second `message` key would replace
        // the line's own in JSON.
        let failed: Vec<u64> = lines
            .iter()
            .filter(|l| l["fields"]["message"] == "reconcile failed")
            .inspect(|l| assert_eq!(l["fields"]["detail"], "no switch", "{l}"))
            .map(|l| l["fields"]["failures"].as_u64().unwrap())
            .collect();
        assert_eq!(failed, [1, 2, 4], "{text}");
        let first = lines
            .iter()
            .find(|l| l["fields"]["message"] == "reconcile failed")
            .unwrap();
        assert_eq!(first["fields"]["tenant"], "acme");
        assert_eq!(first["fields"]["kind"], "networks");
    }
}
