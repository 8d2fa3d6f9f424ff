//! The bounded pipeline: admission (a cap on records accepted but not yet
//! exported), a bounded work queue, scoring workers on their own threads,
//! and the hand-off to the exporter.
//!
//! A record holds one admission permit from the moment a receiver accepts
//! it until the output has delivered it (or dead-lettered it). When the cap
//! is reached, receivers refuse at once; nothing buffers without limit.

pub mod process;
pub mod snapshot;
pub mod validate;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tokio::sync::Semaphore;

use crate::detect::interval::AnomalyEvent;
use crate::export::deadletter::DeadLetter;
use crate::export::Doc;
use crate::telemetry::{Health, Metrics, Signal};

/// A decoded export request.
#[derive(Debug)]
pub enum Payload {
    Traces(ExportTraceServiceRequest),
    Metrics(ExportMetricsServiceRequest),
    Logs(ExportLogsServiceRequest),
    /// A traces request kept as its protobuf bytes (gRPC, checked by
    /// `receiver::wire::check_traces`): scored and written without prost.
    TracesWire(WireTraces),
    /// A metrics request kept as its protobuf bytes (checked by
    /// `receiver::wire_metrics::check_metrics`) until a scoring worker
    /// decodes it: a fifth of the memory of the decoded request while it waits.
    MetricsWire(WireMetrics),
}

/// A traces request as received, accepted by `receiver::wire::check_traces`.
#[derive(Debug, Clone)]
pub struct WireTraces {
    /// The request's protobuf bytes.
    pub bytes: bytes::Bytes,
    /// Its spans.
    pub spans: usize,
}

impl WireTraces {
    /// The request decoded by prost (for the consumers that need the types).
    pub fn decode(&self) -> Result<ExportTraceServiceRequest, prost::DecodeError> {
        prost::Message::decode(self.bytes.clone())
    }
}

/// A metrics request as received, accepted by `receiver::wire_metrics::check_metrics`.
#[derive(Debug, Clone)]
pub struct WireMetrics {
    /// The request's protobuf bytes.
    pub bytes: bytes::Bytes,
    /// Its data points.
    pub points: usize,
}

impl WireMetrics {
    /// The request decoded by prost (the check makes this succeed).
    pub fn decode(&self) -> Result<ExportMetricsServiceRequest, prost::DecodeError> {
        prost::Message::decode(self.bytes.clone())
    }
}

impl Payload {
    /// The signal of this payload.
    pub fn signal(&self) -> Signal {
        match self {
            Payload::Traces(_) | Payload::TracesWire(_) => Signal::traces,
            Payload::Metrics(_) | Payload::MetricsWire(_) => Signal::metrics,
            Payload::Logs(_) => Signal::logs,
        }
    }
}

/// A request on its way to a scoring worker.
#[derive(Debug)]
pub struct Work {
    pub payload: Payload,
    /// The request's token in the write-ahead queue, when it is held there.
    pub delivery: Option<crate::export::wal::Delivery>,
    /// The request's own protobuf bytes (uncompressed), when it arrived as
    /// protobuf and validation removed nothing: the OTLP output splices the
    /// anomaly attributes into them, so fields prost does not know survive.
    pub wire: Option<bytes::Bytes>,
}

impl From<Payload> for Work {
    fn from(payload: Payload) -> Self {
        Self {
            payload,
            delivery: None,
            wire: None,
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("queue full: {queued} of {capacity} records waiting for export (raise pipeline.max_queued_records, or add sidecars); retry later")]
    QueueFull { queued: usize, capacity: usize },
    #[error("shutting down; send to another sidecar or retry later")]
    ShuttingDown,
    #[error("request holds {records} records, more than pipeline.max_queued_records ({capacity}); split it into smaller requests")]
    TooLarge { records: usize, capacity: usize },
    #[error("write-ahead queue full: {used} of {max} bytes waiting for the output (raise wal.max_bytes, or check the output); retry later")]
    WalFull { used: u64, max: u64 },
    #[error("write-ahead queue cannot store the request ({kind}); check free space under wal.dir; retry later")]
    Storage { kind: std::io::ErrorKind },
}

/// The cap on records in the pipeline.
#[derive(Debug)]
pub struct Admission {
    sem: Semaphore,
    capacity: usize,
    metrics: Arc<Metrics>,
    /// When records last left the pipeline (ms since the Unix epoch).
    last_release_ms: AtomicU64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Admission {
    /// A cap of `capacity` records.
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        metrics.queue_capacity.set(capacity as i64);
        Self {
            sem: Semaphore::new(capacity),
            capacity,
            metrics,
            last_release_ms: AtomicU64::new(unix_ms(SystemTime::now())),
        }
    }

    /// Takes `n` permits, or refuses at once.
    pub fn try_admit(&self, n: usize) -> Result<(), Refusal> {
        if n > self.capacity {
            return Err(Refusal::TooLarge {
                records: n,
                capacity: self.capacity,
            });
        }
        if n == 0 {
            return Ok(());
        }
        match self.sem.try_acquire_many(n as u32) {
            Ok(permit) => {
                // Permits travel with the records as a count and come back through `release`.
                permit.forget();
                self.metrics.queued.set(self.queued() as i64);
                Ok(())
            }
            Err(_) => Err(Refusal::QueueFull {
                queued: self.queued(),
                capacity: self.capacity,
            }),
        }
    }

    /// Takes `n` permits (at most the cap), waiting for them; returns how
    /// many were taken, to be given back as the records are delivered.
    pub async fn admit(&self, n: usize) -> usize {
        let n = n.min(self.capacity);
        if n == 0 {
            return 0;
        }
        match self.sem.acquire_many(n as u32).await {
            Ok(permit) => {
                permit.forget();
                self.metrics.queued.set(self.queued() as i64);
                n
            }
            // The semaphore is never closed.
            Err(_) => 0,
        }
    }

    /// Returns `n` permits (records delivered or dead-lettered).
    pub fn release(&self, n: usize) {
        if n > 0 {
            self.last_release_ms
                .store(unix_ms(SystemTime::now()), Ordering::Relaxed);
            self.sem.add_permits(n);
            self.metrics.queued.set(self.queued() as i64);
        }
    }

    /// How long records have waited with none leaving the pipeline: zero
    /// when nothing is queued, else the time since the output last
    /// delivered or dead-lettered anything (grows during an outage).
    pub fn export_lag(&self, now: SystemTime) -> Duration {
        if self.queued() == 0 {
            return Duration::ZERO;
        }
        let last = self.last_release_ms.load(Ordering::Relaxed);
        Duration::from_millis(unix_ms(now).saturating_sub(last))
    }

    /// Records currently in the pipeline.
    pub fn queued(&self) -> usize {
        self.capacity.saturating_sub(self.sem.available_permits())
    }

    /// The cap.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// What the exporters share with the pipeline.
#[derive(Debug)]
pub struct ExportCtx {
    pub admission: Arc<Admission>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub dead_letter: DeadLetter,
}

impl ExportCtx {
    /// The document output delivered or dead-lettered `docs`: settles their
    /// records (see [`crate::export::completion`], the one place where a
    /// record's completion is decided).
    pub fn settle_docs<'a>(&self, docs: impl IntoIterator<Item = &'a Doc>) {
        settle_docs(&self.admission, docs);
    }

    /// Writes documents to the dead-letter file and releases their permits.
    pub async fn dead_letter(&self, entries: Vec<(Doc, String)>) {
        if entries.is_empty() {
            return;
        }
        let n = entries.len();
        for (doc, reason) in entries.iter().take(3) {
            tracing::warn!(signal = doc.signal.as_str(), id = %doc.id, reason = %reason, "document rejected by the output; dead-lettered");
        }
        let dl = DeadLetter::new(self.dead_letter.path());
        let tickets: Vec<Option<Arc<crate::export::completion::Ticket>>> =
            entries.iter().map(|(d, _)| d.ticket.clone()).collect();
        let written = tokio::task::spawn_blocking(move || dl.write(&entries)).await;
        let lost = match written {
            Ok(Ok(())) => {
                self.metrics.dead_lettered.inc_by(n as u64);
                false
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, path = %self.dead_letter.path().display(), docs = n, "writing the dead-letter file failed; these documents are lost unless the write-ahead queue replays them at the next start");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, docs = n, "dead-letter task failed; these documents are lost unless the write-ahead queue replays them at the next start");
                true
            }
        };
        if lost {
            // Their requests stay in the write-ahead queue and come back at restart.
            for t in tickets.iter().flatten() {
                t.keep_queued();
            }
        }
        settle_tickets(&self.admission, tickets.iter().map(Option::as_ref));
    }
}

/// Settles the records of `docs` for the document output.
pub fn settle_docs<'a>(admission: &Admission, docs: impl IntoIterator<Item = &'a Doc>) {
    settle_tickets(admission, docs.into_iter().map(|d| d.ticket.as_ref()));
}

/// Settles one record per entry for the document output: consecutive
/// records of one batch together; records without a ticket release their
/// permit directly.
fn settle_tickets<'a>(
    admission: &Admission,
    tickets: impl IntoIterator<Item = Option<&'a Arc<crate::export::completion::Ticket>>>,
) {
    use crate::export::completion::Output;
    let mut run: Option<(&Arc<crate::export::completion::Ticket>, usize)> = None;
    let mut direct = 0usize;
    for t in tickets {
        match (t, run.as_mut()) {
            (None, _) => direct += 1,
            (Some(t), Some((cur, n))) if Arc::ptr_eq(t, cur) => *n += 1,
            (Some(t), _) => {
                if let Some((cur, n)) = run.take() {
                    cur.settle(Output::Documents, n);
                }
                run = Some((t, 1));
            }
        }
    }
    if let Some((cur, n)) = run {
        cur.settle(Output::Documents, n);
    }
    admission.release(direct);
}

/// A notable anomaly, kept for the demo and the logs.
#[derive(Debug, Clone)]
pub struct AnomalyNote {
    pub at: SystemTime,
    pub signal: Signal,
    pub service: String,
    pub subject: String,
    pub score: f32,
    pub severity: &'static str,
    pub explanation: String,
}

/// Receives every anomaly event as it is made (for example the push client).
pub type EventListener = Box<dyn Fn(&AnomalyEvent) + Send + Sync>;

/// The most recent anomalies and anomaly events (bounded rings).
#[derive(Default)]
pub struct AnomalyFeed {
    ring: Mutex<VecDeque<AnomalyNote>>,
    events: Mutex<VecDeque<(SystemTime, AnomalyEvent)>>,
    listeners: RwLock<Vec<EventListener>>,
}

impl std::fmt::Debug for AnomalyFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnomalyFeed").finish_non_exhaustive()
    }
}

/// Anomalies kept in the feed.
const FEED_CAPACITY: usize = 4096;

impl AnomalyFeed {
    /// Adds a note, dropping the oldest past the capacity.
    pub fn push(&self, note: AnomalyNote) {
        if let Ok(mut ring) = self.ring.lock() {
            if ring.len() == FEED_CAPACITY {
                ring.pop_front();
            }
            ring.push_back(note);
        }
    }

    /// Records an anomaly event and hands it to the listeners.
    pub fn push_event(&self, event: AnomalyEvent) {
        if let Ok(listeners) = self.listeners.read() {
            for l in listeners.iter() {
                l(&event);
            }
        }
        if let Ok(mut ring) = self.events.lock() {
            if ring.len() == FEED_CAPACITY {
                ring.pop_front();
            }
            ring.push_back((SystemTime::now(), event));
        }
    }

    /// Adds a listener that sees every later event.
    pub fn listen(&self, listener: EventListener) {
        if let Ok(mut l) = self.listeners.write() {
            l.push(listener);
        }
    }

    /// Events recorded at or after `since`.
    pub fn events_since(&self, since: SystemTime) -> Vec<AnomalyEvent> {
        self.events
            .lock()
            .map(|r| {
                r.iter()
                    .filter(|(at, _)| *at >= since)
                    .map(|(_, e)| e.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Notes at or after `since`.
    pub fn since(&self, since: SystemTime) -> Vec<AnomalyNote> {
        self.ring
            .lock()
            .map(|r| r.iter().filter(|n| n.at >= since).cloned().collect())
            .unwrap_or_default()
    }
}

/// The receivers' door into the pipeline.
#[derive(Debug)]
pub struct Pipeline {
    admission: Arc<Admission>,
    tx: RwLock<Option<flume::Sender<Work>>>,
    metrics: Arc<Metrics>,
    /// The write-ahead queue, when `wal.enabled`.
    wal: Option<Arc<crate::export::wal::intake::Intake>>,
    keep_wire: std::sync::atomic::AtomicBool,
}

impl Pipeline {
    /// A pipeline feeding `tx`.
    pub fn new(admission: Arc<Admission>, tx: flume::Sender<Work>, metrics: Arc<Metrics>) -> Self {
        Self {
            admission,
            tx: RwLock::new(Some(tx)),
            metrics,
            wal: None,
            keep_wire: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Puts the write-ahead queue in front of the work queue.
    pub fn with_wal(mut self, intake: Arc<crate::export::wal::intake::Intake>) -> Self {
        self.wal = Some(intake);
        self
    }

    /// Receivers keep each protobuf request's bytes (processor mode).
    pub fn set_keep_wire(&self, keep: bool) {
        self.keep_wire
            .store(keep, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether receivers should keep each protobuf request's bytes.
    pub fn keeps_wire(&self) -> bool {
        self.keep_wire.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Accepts a request of `records` records, or refuses it. With the
    /// write-ahead queue, returns once the request is durable in it.
    pub async fn accept(&self, payload: Payload, records: usize) -> Result<(), Refusal> {
        self.accept_wire(payload, records, None).await
    }

    /// [`Pipeline::accept`] for a request with its own protobuf bytes (see [`Work::wire`]).
    pub async fn accept_wire(
        &self,
        payload: Payload,
        records: usize,
        wire: Option<bytes::Bytes>,
    ) -> Result<(), Refusal> {
        match &self.wal {
            Some(w) if records > 0 => w.accept(self, payload, records, wire).await,
            _ => self.submit_wire(payload, records, wire.filter(|_| self.keeps_wire())),
        }
    }

    /// Whether receivers should keep each protobuf request's bytes for the
    /// write-ahead queue (stored as received instead of encoded again) or
    /// for the OTLP output.
    pub fn wants_wire(&self) -> bool {
        self.wal.is_some() || self.keeps_wire()
    }

    /// Accepts a request of `records` records into memory, or refuses it at once.
    pub fn submit(&self, payload: Payload, records: usize) -> Result<(), Refusal> {
        self.submit_wire(payload, records, None)
    }

    /// [`Pipeline::submit`] for a request with its own protobuf bytes.
    pub fn submit_wire(
        &self,
        payload: Payload,
        records: usize,
        wire: Option<bytes::Bytes>,
    ) -> Result<(), Refusal> {
        let signal = payload.signal();
        let work = Work {
            payload,
            delivery: None,
            wire,
        };
        self.try_enqueue(work, records).map_err(|(_, r)| r)?;
        self.count_received(signal, records);
        Ok(())
    }

    pub(crate) fn count_received(&self, signal: Signal, records: usize) {
        self.metrics
            .received
            .get_or_create(&crate::telemetry::SignalLabels { signal })
            .inc_by(records as u64);
    }

    /// Admits and queues `work` at once, or gives it back with the refusal.
    pub(crate) fn try_enqueue(&self, work: Work, records: usize) -> Result<(), (Work, Refusal)> {
        let guard = match self.tx.read() {
            Ok(g) => g,
            Err(_) => return Err((work, Refusal::ShuttingDown)),
        };
        let Some(tx) = guard.as_ref() else {
            return Err((work, Refusal::ShuttingDown));
        };
        if let Err(r) = self.admission.try_admit(records) {
            return Err((work, r));
        }
        if let Err(e) = tx.try_send(work) {
            self.admission.release(records);
            return Err(match e {
                flume::TrySendError::Full(w) => (
                    w,
                    Refusal::QueueFull {
                        queued: self.admission.queued(),
                        capacity: self.admission.capacity(),
                    },
                ),
                flume::TrySendError::Disconnected(w) => (w, Refusal::ShuttingDown),
            });
        }
        Ok(())
    }

    /// The work queue's sender, until the pipeline is closed.
    pub(crate) fn sender(&self) -> Option<flume::Sender<Work>> {
        self.tx.read().ok().and_then(|g| g.clone())
    }

    /// Stops intake: later submits are refused; workers drain what is queued.
    pub fn close(&self) {
        if let Ok(mut g) = self.tx.write() {
            g.take();
        }
    }

    /// The admission cap.
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_refuses_past_the_cap_and_recovers() {
        let m = Arc::new(Metrics::default());
        let a = Admission::new(10, m);
        a.try_admit(6).unwrap();
        assert_eq!(
            a.try_admit(5),
            Err(Refusal::QueueFull {
                queued: 6,
                capacity: 10
            })
        );
        a.try_admit(4).unwrap();
        assert_eq!(a.queued(), 10);
        a.release(6);
        a.try_admit(5).unwrap();
        assert!(matches!(a.try_admit(11), Err(Refusal::TooLarge { .. })));
    }

    #[test]
    fn export_lag_grows_while_records_wait_and_is_zero_when_empty() {
        let m = Arc::new(Metrics::default());
        let a = Admission::new(10, m);
        let now = SystemTime::now();
        assert_eq!(a.export_lag(now + Duration::from_secs(60)), Duration::ZERO);
        a.try_admit(3).unwrap();
        let lag = a.export_lag(now + Duration::from_secs(60));
        assert!(lag >= Duration::from_secs(59), "{lag:?}");
        a.release(1);
        assert!(a.export_lag(SystemTime::now()) < Duration::from_secs(5));
        a.release(2);
        assert_eq!(a.export_lag(now + Duration::from_secs(600)), Duration::ZERO);
    }

    #[test]
    fn closed_pipeline_refuses() {
        let m = Arc::new(Metrics::default());
        let (tx, _rx) = flume::bounded(4);
        let p = Pipeline::new(Arc::new(Admission::new(10, m.clone())), tx, m);
        p.close();
        let r = p.submit(Payload::Logs(Default::default()), 1);
        assert_eq!(r, Err(Refusal::ShuttingDown));
        assert_eq!(p.admission().queued(), 0);
    }
}
