//! Between the receivers and the work queue when the WAL is on.
//!
//! A request is written to the WAL and handed on at once; it is acknowledged
//! once its fsync is done (scoring does not wait for the disk). If
//! nothing is waiting on disk and the pipeline has room, the decoded request
//! goes straight to the workers (the fast path: no read-back). Otherwise only
//! its position is kept ("spilled"), and the feeder reads it back from disk
//! when the pipeline has room, oldest first. Requests found in the WAL at
//! start are spilled the same way, so replay and outage buffering are one path.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{encode_payload, encode_wire, Delivery, Position, Replayed, Wal, WalError};
use crate::pipeline::{Payload, Pipeline, Refusal, Work};
use crate::telemetry::Signal;

/// A request held on disk only.
#[derive(Debug, Clone)]
struct Spilled {
    position: Position,
    records: u32,
    delivery: Delivery,
    /// The record's number in this run's WAL (0 for a request replayed at start).
    lsn: u64,
}

/// The WAL intake shared by the receivers and the feeder.
#[derive(Debug)]
pub struct Intake {
    wal: Arc<Wal>,
    spilled: Mutex<VecDeque<Spilled>>,
    more: Notify,
}

impl Intake {
    /// An intake over `wal`, starting with the requests found in it at open.
    pub fn new(wal: Arc<Wal>, replay: Vec<Replayed>) -> Self {
        let spilled: VecDeque<Spilled> = replay
            .into_iter()
            .map(|r| Spilled {
                position: r.position,
                records: r.records,
                delivery: r.delivery,
                lsn: 0,
            })
            .collect();
        wal.metrics().spilled.set(spilled.len() as i64);
        let intake = Self {
            wal,
            spilled: Mutex::new(spilled),
            more: Notify::new(),
        };
        intake.more.notify_one();
        intake
    }

    /// The WAL.
    pub fn wal(&self) -> &Arc<Wal> {
        &self.wal
    }

    fn queue(&self) -> MutexGuard<'_, VecDeque<Spilled>> {
        self.spilled.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests waiting on disk only.
    pub fn spilled(&self) -> usize {
        self.queue().len()
    }

    /// Writes the request, hands it on, and returns once it is durable (see the module doc).
    pub async fn accept(
        &self,
        pipeline: &Pipeline,
        payload: Payload,
        records: usize,
        wire: Option<bytes::Bytes>,
    ) -> Result<(), Refusal> {
        let capacity = pipeline.admission().capacity();
        if records > capacity {
            return Err(Refusal::TooLarge { records, capacity });
        }
        if pipeline.sender().is_none() {
            return Err(Refusal::ShuttingDown);
        }
        let signal = payload.signal();
        // The request's own bytes, when the receiver kept them, are stored
        // as they are; the workers get them only when an output needs them.
        if let Some(bytes) = &wire {
            let record = encode_wire(signal, records as u32, bytes);
            let wire = wire.filter(|_| pipeline.keeps_wire());
            return self
                .finish(pipeline, payload, records, signal, record, wire)
                .await;
        }
        let record = if records > 1024 {
            // Large requests are encoded off the async threads.
            let (rec, p) = tokio::task::spawn_blocking(move || {
                (encode_payload(&payload, records as u32), payload)
            })
            .await
            .map_err(|_| Refusal::ShuttingDown)?;
            return self.finish(pipeline, p, records, signal, rec, wire).await;
        } else {
            encode_payload(&payload, records as u32)
        };
        self.finish(pipeline, payload, records, signal, record, wire)
            .await
    }

    async fn finish(
        &self,
        pipeline: &Pipeline,
        payload: Payload,
        records: usize,
        signal: Signal,
        record: Vec<u8>,
        wire: Option<bytes::Bytes>,
    ) -> Result<(), Refusal> {
        let (lsn, appended) = self.wal.write(&record).map_err(|e| refusal(&e))?;
        drop(record);
        // Scoring starts now, while the fsync runs: the answer still waits
        // for it (nothing acknowledged is lost), but the records' added
        // latency does not. If the fsync fails, the request is refused and
        // its sender retries; the documents may then be written twice, which
        // the deterministic `_id` and `create` turn into one.
        self.hand_on(pipeline, payload, records, (lsn, appended), wire);
        self.wal.durable(lsn).await.map_err(|e| refusal(&e))?;
        pipeline.count_received(signal, records);
        Ok(())
    }

    /// Queues a written request for the workers, or spills it (only its
    /// position is kept) when requests wait on disk or the queue is full.
    fn hand_on(
        &self,
        pipeline: &Pipeline,
        payload: Payload,
        records: usize,
        (lsn, appended): (u64, super::Appended),
        wire: Option<bytes::Bytes>,
    ) {
        let mut queue = self.queue();
        if queue.is_empty() {
            let work = Work {
                payload,
                delivery: Some(appended.delivery.clone()),
                wire,
            };
            if pipeline.try_enqueue(work, records).is_ok() {
                return;
            }
        }
        queue.push_back(Spilled {
            position: appended.position,
            records: records as u32,
            delivery: appended.delivery,
            lsn,
        });
        self.wal.metrics().spilled.set(queue.len() as i64);
        drop(queue);
        self.more.notify_one();
    }

    /// Feeds spilled requests to the pipeline, oldest first, as it has room,
    /// until `stop` (what is left stays on disk for the next start).
    pub async fn run_feeder(self: Arc<Self>, pipeline: Arc<Pipeline>, stop: CancellationToken) {
        loop {
            let next = self.queue().front().cloned();
            let Some(item) = next else {
                tokio::select! {
                    _ = self.more.notified() => continue,
                    _ = stop.cancelled() => return,
                }
            };
            let admitted = tokio::select! {
                n = pipeline.admission().admit(item.records as usize) => n,
                _ = stop.cancelled() => return,
            };
            let payload = if self.wal.failed(item.lsn) {
                // Its fsync failed, so the request was refused and its sender
                // retries: not delivered from here, and not a corrupt record.
                None
            } else {
                let wal = self.wal.clone();
                let pos = item.position;
                match tokio::task::spawn_blocking(move || wal.read_back(pos)).await {
                    Ok(Ok(back)) => Some((back.payload, back.wire)),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "a request in the write-ahead queue cannot be read back; skipped");
                        self.wal.metrics().corrupt_records.inc();
                        None
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reading the write-ahead queue failed");
                        None
                    }
                }
            };
            match payload {
                Some((payload, wire)) => {
                    let Some(tx) = pipeline.sender() else {
                        pipeline.admission().release(admitted);
                        return;
                    };
                    // Read back from disk: the record's bytes go on as the
                    // request's own, as on the fast path, so what the sender
                    // put there and this build does not know survives too.
                    let work = Work {
                        payload,
                        delivery: Some(item.delivery.clone()),
                        wire: pipeline.keeps_wire().then_some(wire),
                    };
                    if tx.send_async(work).await.is_err() {
                        pipeline.admission().release(admitted);
                        return;
                    }
                }
                None => {
                    pipeline.admission().release(admitted);
                    // Nothing of it can be delivered: settle it so its segment can go.
                    item.delivery.expect(0);
                }
            }
            let mut q = self.queue();
            q.pop_front();
            self.wal.metrics().spilled.set(q.len() as i64);
        }
    }
}

/// The receivers' answer to a WAL failure.
pub fn refusal(e: &WalError) -> Refusal {
    match e {
        WalError::Full { used, max } => Refusal::WalFull {
            used: *used,
            max: *max,
        },
        WalError::Closed => Refusal::ShuttingDown,
        other => {
            tracing::warn!(error = %other, "write-ahead queue refused a request");
            Refusal::Storage {
                kind: other.io_kind().unwrap_or(std::io::ErrorKind::Other),
            }
        }
    }
}
