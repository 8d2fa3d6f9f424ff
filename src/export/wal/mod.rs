//! The disk write-ahead queue (WAL) between the receivers and the output.
//!
//! A request is appended to the current segment and acknowledged to its
//! sender only once the segment is fsynced past it ([`config::SyncPolicy`]).
//! Each request gets a [`Delivery`] token; when the output has delivered or
//! dead-lettered every document made from it, the token settles the request,
//! and a segment whose requests are all settled is deleted (the active one
//! once it is rotated). At start, every segment left behind is scanned, a
//! torn or corrupt tail is truncated and counted, and what precedes it is
//! replayed ([`intake`]). With deterministic `_id`s and `create`, a request
//! delivered again after a crash is stored once.

pub mod config;
pub mod delivery;
pub mod intake;
pub mod segment;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use prost::Message;

pub use config::{SyncPolicy, WalSettings};
pub use delivery::Delivery;

use crate::pipeline::Payload;
use crate::telemetry::Signal;
use segment::{RecordRef, Tail, MAGIC};

/// WAL metric names, defined once.
pub mod names {
    pub const BYTES: &str = "otel_anomaly_wal_bytes";
    pub const CAPACITY_BYTES: &str = "otel_anomaly_wal_capacity_bytes";
    pub const SEGMENTS: &str = "otel_anomaly_wal_segments";
    pub const APPENDED_REQUESTS: &str = "otel_anomaly_wal_appended_requests";
    pub const FSYNCS: &str = "otel_anomaly_wal_fsyncs";
    pub const WRITE_ERRORS: &str = "otel_anomaly_wal_write_errors";
    pub const TRUNCATED_TAILS: &str = "otel_anomaly_wal_truncated_tails";
    pub const TRUNCATED_BYTES: &str = "otel_anomaly_wal_truncated_bytes";
    pub const CORRUPT_RECORDS: &str = "otel_anomaly_wal_corrupt_records";
    pub const REPLAYED_REQUESTS: &str = "otel_anomaly_wal_replayed_requests";
    pub const SPILLED_REQUESTS: &str = "otel_anomaly_wal_spilled_requests";
    pub const DELETED_SEGMENTS: &str = "otel_anomaly_wal_deleted_segments";
}

/// Self-metrics of the WAL.
#[derive(Debug, Default, Clone)]
pub struct WalMetrics {
    pub bytes: Gauge,
    pub capacity_bytes: Gauge,
    pub segments: Gauge,
    pub appended: Counter,
    pub fsyncs: Counter,
    pub write_errors: Counter,
    pub truncated_tails: Counter,
    pub truncated_bytes: Counter,
    pub corrupt_records: Counter,
    pub replayed: Counter,
    pub spilled: Gauge,
    pub deleted_segments: Counter,
}

impl WalMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        use names::*;
        let r = registry;
        r.register(
            BYTES,
            "Bytes in the write-ahead queue on disk",
            self.bytes.clone(),
        );
        r.register(
            CAPACITY_BYTES,
            "Cap on the write-ahead queue (wal.max_bytes)",
            self.capacity_bytes.clone(),
        );
        r.register(SEGMENTS, "WAL segment files", self.segments.clone());
        r.register(
            APPENDED_REQUESTS,
            "Requests written to the WAL",
            self.appended.clone(),
        );
        r.register(FSYNCS, "fsyncs of WAL segments", self.fsyncs.clone());
        r.register(
            WRITE_ERRORS,
            "WAL writes or fsyncs that failed (the request was refused)",
            self.write_errors.clone(),
        );
        r.register(
            TRUNCATED_TAILS,
            "Torn or corrupt segment tails found and truncated at start",
            self.truncated_tails.clone(),
        );
        r.register(
            TRUNCATED_BYTES,
            "Bytes cut off torn or corrupt segment tails",
            self.truncated_bytes.clone(),
        );
        r.register(
            CORRUPT_RECORDS,
            "WAL records that could not be read back (checksum or decode) and were skipped",
            self.corrupt_records.clone(),
        );
        r.register(
            REPLAYED_REQUESTS,
            "Requests found in the WAL at start and replayed",
            self.replayed.clone(),
        );
        r.register(
            SPILLED_REQUESTS,
            "Requests waiting on disk only, to be read back when the pipeline has room",
            self.spilled.clone(),
        );
        r.register(
            DELETED_SEGMENTS,
            "Segments deleted after all their requests were delivered",
            self.deleted_segments.clone(),
        );
    }
}

/// Errors of the WAL.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead queue full: {used} of {max} bytes (wal.max_bytes); retry later")]
    Full { used: u64, max: u64 },
    #[error("write-ahead queue in {dir}: {op} failed: {source}")]
    Io {
        dir: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("write-ahead queue record at {seq:016x}.wal+{offset}: {source}")]
    Record {
        seq: u64,
        offset: u64,
        source: segment::RecordError,
    },
    #[error(
        "write-ahead queue record at {seq:016x}.wal+{offset}: cannot decode the request: {source}"
    )]
    Decode {
        seq: u64,
        offset: u64,
        source: prost::DecodeError,
    },
    #[error("write-ahead queue is closed")]
    Closed,
}

impl WalError {
    /// The I/O error kind, when the failure was an I/O error.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            WalError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

/// Where a request is in the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub seq: u64,
    pub offset: u64,
    pub len: u32,
}

/// A request written to the WAL (durable once [`Wal::durable`] says so).
#[derive(Debug)]
pub struct Appended {
    pub position: Position,
    /// Settles the request when its documents are delivered.
    pub delivery: Delivery,
}

/// A request found in the WAL at start.
#[derive(Debug)]
pub struct Replayed {
    pub position: Position,
    pub signal: Signal,
    pub records: u32,
    pub delivery: Delivery,
}

#[derive(Debug)]
struct SegInfo {
    bytes: u64,
    /// Requests not yet settled.
    outstanding: u64,
}

#[derive(Debug)]
struct State {
    seq: u64,
    file: Arc<File>,
    len: u64,
    /// The active segment may hold a partial record: start a new one.
    poisoned: bool,
    /// Rotated segments not yet fsynced.
    unsynced: Vec<Arc<File>>,
    dir_dirty: bool,
    written_lsn: u64,
    synced_lsn: u64,
    /// LSN ranges `(lo, hi]` whose fsync failed (most recent last).
    failed: Vec<(u64, u64)>,
    segments: BTreeMap<u64, SegInfo>,
    total_bytes: u64,
    closed: bool,
}

/// Failure ranges kept for waiters to find.
const FAILED_KEPT: usize = 256;

/// The write-ahead queue.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    policy: SyncPolicy,
    interval: Duration,
    state: Mutex<State>,
    wake: Condvar,
    synced: tokio::sync::watch::Sender<u64>,
    metrics: WalMetrics,
    me: Weak<Wal>,
}

fn io<'a>(dir: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        dir: dir.to_path_buf(),
        op,
        source,
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn create_segment(dir: &Path, seq: u64) -> std::io::Result<File> {
    let path = dir.join(segment::file_name(seq));
    let mut f = OpenOptions::new()
        .create_new(true)
        .read(true)
        .append(true)
        .open(&path)?;
    if let Err(e) = f.write_all(MAGIC) {
        drop(f);
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(f)
}

/// Encodes a request as a WAL record.
pub fn encode_payload(payload: &Payload, records: u32) -> Vec<u8> {
    let signal = payload.signal();
    let len = match payload {
        Payload::Traces(r) => r.encoded_len(),
        Payload::Metrics(r) => r.encoded_len(),
        Payload::Logs(r) => r.encoded_len(),
        Payload::TracesWire(w) => w.bytes.len(),
        Payload::MetricsWire(w) => w.bytes.len(),
    };
    segment::encode_record_sized(signal, records, len, |buf| {
        // encode() only fails for lack of room, and a Vec grows.
        let _ = match payload {
            Payload::Traces(r) => r.encode(buf),
            Payload::Metrics(r) => r.encode(buf),
            Payload::Logs(r) => r.encode(buf),
            Payload::TracesWire(w) => {
                buf.extend_from_slice(&w.bytes);
                Ok(())
            }
            Payload::MetricsWire(w) => {
                buf.extend_from_slice(&w.bytes);
                Ok(())
            }
        };
    })
}

/// The record of a request from its own protobuf bytes, as received (when
/// validation removed nothing from it): it decodes to the same request as
/// the record [`encode_payload`] makes, without encoding the request again
/// (fields prost does not know are kept, and ignored when read back).
pub fn encode_wire(signal: Signal, records: u32, wire: &[u8]) -> Vec<u8> {
    segment::encode_record_sized(signal, records, wire.len(), |buf| {
        buf.extend_from_slice(wire)
    })
}

/// A request read back from the WAL.
#[derive(Debug)]
pub struct ReadBack {
    pub signal: Signal,
    pub records: u32,
    pub payload: Payload,
    /// The record's protobuf body, which `payload` was decoded from: the
    /// request's bytes as received ([`encode_wire`]) or the accepted request
    /// encoded by prost ([`encode_payload`]; every record of format 1 written
    /// before the received bytes were kept). The two are not told apart, and
    /// need not be: the OTLP output splices into either (see
    /// `pipeline::process::base_wire`), and for prost's bytes the result is
    /// the very bytes it would have made by encoding `payload` again, since
    /// prost's encoding of what it decoded from its own encoding is the same.
    pub wire: bytes::Bytes,
}

/// Decodes a request stored by [`encode_payload`] or [`encode_wire`].
pub fn decode_payload(signal: Signal, bytes: &[u8]) -> Result<Payload, prost::DecodeError> {
    Ok(match signal {
        Signal::traces => Payload::Traces(Message::decode(bytes)?),
        Signal::metrics => Payload::Metrics(Message::decode(bytes)?),
        Signal::logs => Payload::Logs(Message::decode(bytes)?),
    })
}

impl Wal {
    /// Opens (or creates) the WAL in `dir`: scans the segments left behind,
    /// truncates torn or corrupt tails, starts a new active segment and the
    /// fsync thread. Returns the requests to replay, oldest first.
    pub fn open(
        dir: &Path,
        settings: &WalSettings,
        metrics: WalMetrics,
    ) -> Result<(Arc<Wal>, Vec<Replayed>), WalError> {
        std::fs::create_dir_all(dir).map_err(io(dir, "creating the directory"))?;
        let mut seqs = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir, "listing the directory"))? {
            let entry = entry.map_err(io(dir, "listing the directory"))?;
            if let Some(seq) = segment::parse_file_name(&entry.file_name().to_string_lossy()) {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let mut segments = BTreeMap::new();
        let mut found: Vec<(u64, Vec<RecordRef>)> = Vec::new();
        let mut total = 0u64;
        for &seq in &seqs {
            let path = dir.join(segment::file_name(seq));
            let bytes = std::fs::read(&path).map_err(io(dir, "reading a segment"))?;
            let scan = match segment::scan(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    // Not ours, or its header is damaged: keep it aside for a human.
                    let aside = path.with_extension("wal.bad");
                    tracing::error!(path = %path.display(), moved_to = %aside.display(), error = %e, "unreadable WAL segment moved aside");
                    metrics.truncated_tails.inc();
                    metrics.truncated_bytes.inc_by(bytes.len() as u64);
                    std::fs::rename(&path, &aside).map_err(io(dir, "moving a bad segment"))?;
                    continue;
                }
            };
            if scan.tail != Tail::Clean {
                let cut = bytes.len() as u64 - scan.valid_len;
                let kind = match scan.tail {
                    Tail::Torn { .. } => "torn",
                    _ => "corrupt",
                };
                tracing::warn!(path = %path.display(), kind, valid_bytes = scan.valid_len, truncated_bytes = cut, records_kept = scan.records.len(), "WAL segment tail truncated");
                metrics.truncated_tails.inc();
                metrics.truncated_bytes.inc_by(cut);
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io(dir, "opening a segment to truncate"))?;
                f.set_len(scan.valid_len)
                    .and_then(|_| f.sync_all())
                    .map_err(io(dir, "truncating a segment"))?;
            }
            if scan.records.is_empty() {
                std::fs::remove_file(&path).map_err(io(dir, "removing an empty segment"))?;
                continue;
            }
            total += scan.valid_len;
            segments.insert(
                seq,
                SegInfo {
                    bytes: scan.valid_len,
                    outstanding: scan.records.len() as u64,
                },
            );
            found.push((seq, scan.records));
        }
        let seq = seqs.last().map_or(1, |s| s + 1);
        let file = create_segment(dir, seq).map_err(io(dir, "creating a segment"))?;
        file.sync_all().map_err(io(dir, "syncing a new segment"))?;
        sync_dir(dir).map_err(io(dir, "syncing the directory"))?;
        let header = MAGIC.len() as u64;
        segments.insert(
            seq,
            SegInfo {
                bytes: header,
                outstanding: 0,
            },
        );
        total += header;
        metrics.capacity_bytes.set(settings.max_bytes as i64);
        metrics.bytes.set(total as i64);
        metrics.segments.set(segments.len() as i64);
        let (synced, _) = tokio::sync::watch::channel(0u64);
        let wal = Arc::new_cyclic(|me| Wal {
            dir: dir.to_path_buf(),
            max_bytes: settings.max_bytes,
            segment_bytes: settings.segment_bytes,
            policy: settings.sync,
            interval: settings.sync_interval,
            state: Mutex::new(State {
                seq,
                file: Arc::new(file),
                len: header,
                poisoned: false,
                unsynced: Vec::new(),
                dir_dirty: false,
                written_lsn: 0,
                synced_lsn: 0,
                failed: Vec::new(),
                segments,
                total_bytes: total,
                closed: false,
            }),
            wake: Condvar::new(),
            synced,
            metrics,
            me: me.clone(),
        });
        let mut replay = Vec::new();
        for (seq, records) in found {
            for r in records {
                wal.metrics.replayed.inc();
                replay.push(Replayed {
                    position: Position {
                        seq,
                        offset: r.offset,
                        len: r.len,
                    },
                    signal: r.signal,
                    records: r.records,
                    delivery: wal.delivery(seq),
                });
            }
        }
        let syncer = wal.clone();
        std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || syncer.sync_loop())
            .map_err(io(dir, "starting the fsync thread"))?;
        Ok((wal, replay))
    }

    /// The segment directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The metrics.
    pub fn metrics(&self) -> &WalMetrics {
        &self.metrics
    }

    /// Bytes in the queue on disk.
    pub fn bytes(&self) -> u64 {
        self.lock().total_bytes
    }

    /// Segment files on disk.
    pub fn segments(&self) -> usize {
        self.lock().segments.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn delivery(&self, seq: u64) -> Delivery {
        let me = self.me.clone();
        Delivery::new(move || {
            if let Some(wal) = me.upgrade() {
                wal.settle(seq);
            }
        })
    }

    /// One request of segment `seq` was delivered: delete the segment once
    /// none is left and it is no longer the active one.
    fn settle(&self, seq: u64) {
        let mut st = self.lock();
        let active = st.seq;
        let Some(info) = st.segments.get_mut(&seq) else {
            return;
        };
        info.outstanding = info.outstanding.saturating_sub(1);
        if info.outstanding == 0 && seq != active {
            self.delete_segment(&mut st, seq);
        }
    }

    fn delete_segment(&self, st: &mut State, seq: u64) {
        let path = self.dir.join(segment::file_name(seq));
        match std::fs::remove_file(&path) {
            Ok(()) => {
                if let Some(info) = st.segments.remove(&seq) {
                    st.total_bytes = st.total_bytes.saturating_sub(info.bytes);
                }
                self.metrics.deleted_segments.inc();
                self.metrics.bytes.set(st.total_bytes as i64);
                self.metrics.segments.set(st.segments.len() as i64);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "deleting a delivered WAL segment failed; it will be replayed at the next start")
            }
        }
    }

    /// Starts a new active segment (under the lock).
    fn rotate(&self, st: &mut State) -> Result<(), WalError> {
        let next = st.seq + 1;
        let file = create_segment(&self.dir, next).map_err(io(&self.dir, "creating a segment"))?;
        let old = std::mem::replace(&mut st.file, Arc::new(file));
        st.unsynced.push(old);
        st.dir_dirty = true;
        let old_seq = std::mem::replace(&mut st.seq, next);
        st.len = MAGIC.len() as u64;
        st.poisoned = false;
        st.segments.insert(
            next,
            SegInfo {
                bytes: st.len,
                outstanding: 0,
            },
        );
        st.total_bytes += st.len;
        if st
            .segments
            .get(&old_seq)
            .is_some_and(|i| i.outstanding == 0)
        {
            self.delete_segment(st, old_seq);
        }
        self.metrics.segments.set(st.segments.len() as i64);
        Ok(())
    }

    /// Writes one record (from [`encode_payload`]) to the active segment
    /// (into the page cache, not yet durable); returns its LSN, for
    /// [`Wal::durable`], and where it is.
    pub fn write(&self, record: &[u8]) -> Result<(u64, Appended), WalError> {
        let n = record.len() as u64;
        let mut st = self.lock();
        if st.closed {
            return Err(WalError::Closed);
        }
        if st.total_bytes + n > self.max_bytes {
            return Err(WalError::Full {
                used: st.total_bytes,
                max: self.max_bytes,
            });
        }
        let header = MAGIC.len() as u64;
        if st.poisoned || (st.len > header && st.len + n > self.segment_bytes) {
            if let Err(e) = self.rotate(&mut st) {
                self.metrics.write_errors.inc();
                return Err(e);
            }
        }
        let offset = st.len;
        if let Err(source) = (&*st.file).write_all(record) {
            self.metrics.write_errors.inc();
            // Take the partial record back off; if even that fails, the next
            // request starts a new segment and the reader stops at the damage.
            if st.file.set_len(offset).is_err() {
                st.poisoned = true;
            }
            return Err(WalError::Io {
                dir: self.dir.clone(),
                op: "writing a record",
                source,
            });
        }
        st.len += n;
        st.total_bytes += n;
        st.written_lsn += 1;
        let lsn = st.written_lsn;
        let seq = st.seq;
        if let Some(info) = st.segments.get_mut(&seq) {
            info.bytes += n;
            info.outstanding += 1;
        }
        self.metrics.bytes.set(st.total_bytes as i64);
        self.metrics.appended.inc();
        drop(st);
        self.wake.notify_one();
        Ok((
            lsn,
            Appended {
                position: Position {
                    seq,
                    offset,
                    len: record.len() as u32,
                },
                delivery: self.delivery(seq),
            },
        ))
    }

    /// Appends one record and returns once it is durable under the sync policy.
    pub async fn append(&self, record: &[u8]) -> Result<Appended, WalError> {
        let (lsn, appended) = self.write(record)?;
        if let Err(e) = self.durable(lsn).await {
            appended.delivery.expect(0);
            return Err(e);
        }
        Ok(appended)
    }

    /// Returns once the record `lsn` of [`Wal::write`] is on disk
    /// under the sync policy, or the error of the fsync that covered it.
    pub async fn durable(&self, lsn: u64) -> Result<(), WalError> {
        let mut rx = self.synced.subscribe();
        loop {
            if *rx.borrow_and_update() >= lsn {
                break;
            }
            if rx.changed().await.is_err() {
                return Err(WalError::Closed);
            }
        }
        if self.failed(lsn) {
            // Not acknowledged; if it survives anyway, a replay stores it once.
            return Err(WalError::Io {
                dir: self.dir.clone(),
                op: "fsync",
                source: std::io::Error::other("fsync of the segment failed"),
            });
        }
        Ok(())
    }

    /// Whether the fsync that covered record `lsn` failed (the request was
    /// refused). 0, the number of a request replayed at start, never is.
    pub fn failed(&self, lsn: u64) -> bool {
        self.lock()
            .failed
            .iter()
            .any(|&(lo, hi)| lsn > lo && lsn <= hi)
    }

    /// Reads back the request at `pos`.
    pub fn read(&self, pos: Position) -> Result<(Signal, u32, Payload), WalError> {
        let r = self.read_back(pos)?;
        Ok((r.signal, r.records, r.payload))
    }

    /// Reads back the request at `pos`, with the protobuf bytes it was
    /// decoded from (see [`ReadBack::wire`]).
    pub fn read_back(&self, pos: Position) -> Result<ReadBack, WalError> {
        let path = self.dir.join(segment::file_name(pos.seq));
        let mut buf = vec![0u8; pos.len as usize];
        File::open(&path)
            .and_then(|f| f.read_exact_at(&mut buf, pos.offset))
            .map_err(io(&self.dir, "reading a record"))?;
        let buf = bytes::Bytes::from(buf);
        let (signal, records, body) =
            segment::decode_record(&buf).map_err(|source| WalError::Record {
                seq: pos.seq,
                offset: pos.offset,
                source,
            })?;
        let wire = buf.slice_ref(body);
        // Traces the wire reader takes are queued as their bytes, as the
        // receivers queue them (a spilled request is read back at saturation).
        // Metrics the check takes stay bytes until a worker decodes them.
        let checked = match signal {
            Signal::traces => crate::receiver::wire::check_traces(body).ok().map(|spans| {
                Payload::TracesWire(crate::pipeline::WireTraces {
                    bytes: wire.clone(),
                    spans,
                })
            }),
            Signal::metrics => {
                crate::receiver::wire_metrics::check_metrics(body)
                    .ok()
                    .map(|points| {
                        Payload::MetricsWire(crate::pipeline::WireMetrics {
                            bytes: wire.clone(),
                            points,
                        })
                    })
            }
            Signal::logs => None,
        };
        let payload = match checked {
            Some(payload) => payload,
            None => decode_payload(signal, body).map_err(|source| WalError::Decode {
                seq: pos.seq,
                offset: pos.offset,
                source,
            })?,
        };
        Ok(ReadBack {
            signal,
            records,
            payload,
            wire,
        })
    }

    /// Stops the fsync thread after a last fsync; later appends fail.
    /// Segments whose requests are all delivered are deleted, the active one
    /// too, so a clean restart replays only what was not delivered.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        let done: Vec<u64> = st
            .segments
            .iter()
            .filter(|(_, i)| i.outstanding == 0)
            .map(|(s, _)| *s)
            .collect();
        for seq in done {
            self.delete_segment(&mut st, seq);
        }
        drop(st);
        self.wake.notify_all();
    }

    fn sync_loop(self: Arc<Self>) {
        loop {
            let mut st = self.lock();
            while st.written_lsn == st.synced_lsn && !st.closed {
                st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.written_lsn == st.synced_lsn {
                // Closed and nothing left to sync.
                drop(st);
                self.synced.send_replace(u64::MAX);
                return;
            }
            if self.policy == SyncPolicy::Interval && !st.closed {
                drop(st);
                std::thread::sleep(self.interval);
                st = self.lock();
            }
            let lsn = st.written_lsn;
            let from = st.synced_lsn;
            let mut files = std::mem::take(&mut st.unsynced);
            files.push(st.file.clone());
            let dir_dirty = std::mem::take(&mut st.dir_dirty);
            let seq = st.seq;
            drop(st);
            let mut result = Ok(());
            for f in &files {
                if let Err(e) = f.sync_data() {
                    result = Err(e);
                }
            }
            if dir_dirty {
                if let Err(e) = sync_dir(&self.dir) {
                    result = Err(e);
                }
            }
            self.metrics.fsyncs.inc();
            let mut st = self.lock();
            let mut lsn = lsn;
            if let Err(e) = result {
                tracing::error!(dir = %self.dir.display(), error = %e, "fsync of the write-ahead queue failed; refusing the requests it covered");
                self.metrics.write_errors.inc();
                // The failed fsync covered every dirty page of the file,
                // records written after `lsn` too, and Linux reports it only
                // once (the next fsync of the file would succeed): refuse
                // everything written so far, not only what this fsync was for.
                lsn = st.written_lsn;
                st.failed.push((from, lsn));
                if st.failed.len() > FAILED_KEPT {
                    st.failed.remove(0);
                }
                // Data in that segment may or may not be on disk: write no more to it.
                if st.seq == seq {
                    st.poisoned = true;
                }
            }
            st.synced_lsn = lsn;
            drop(st);
            // send_replace stores the value even when no one is waiting yet.
            self.synced.send_replace(lsn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;

    fn settings() -> WalSettings {
        WalSettings {
            max_bytes: 1 << 20,
            segment_bytes: 64 << 10,
            ..WalSettings::default()
        }
    }

    fn logs_payload(fill: usize) -> Payload {
        use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
        Payload::Logs(ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord {
                        severity_text: "x".repeat(fill),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
    }

    fn segment_files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// One record of format 1, built from the documented layout (not by the encoder).
    fn format1_record(signal_byte: u8, records: u32, request: &[u8]) -> Vec<u8> {
        let mut body = vec![signal_byte];
        body.extend_from_slice(&records.to_le_bytes());
        body.extend_from_slice(request);
        let len = (body.len() as u32).to_le_bytes();
        let mut h = crc32fast::Hasher::new();
        h.update(&len);
        h.update(&body);
        let mut rec = len.to_vec();
        rec.extend_from_slice(&h.finalize().to_le_bytes());
        rec.extend_from_slice(&body);
        rec
    }

    #[test]
    fn a_format1_segment_reads_back_with_the_bytes_each_request_was_stored_as() {
        let dir = tempfile::tempdir().unwrap();
        let Payload::Logs(logs) = logs_payload(7) else {
            unreachable!()
        };
        // Re-encoded by prost (every record before the received bytes were kept) …
        let encoded = logs.encode_to_vec();
        // … and as received: the same request with a field prost does not know
        // (number 9001, length-delimited) at the end.
        let mut received = encoded.clone();
        received.extend_from_slice(&[0xca, 0xb2, 0x04, 3, b'n', b'e', b'w']);
        let mut seg = b"OAWAL\0\0\x01".to_vec();
        seg.extend(format1_record(3, 1, &encoded));
        seg.extend(format1_record(3, 1, &received));
        std::fs::write(dir.path().join(segment::file_name(1)), &seg).unwrap();

        let (wal, replay) = Wal::open(dir.path(), &settings(), WalMetrics::default()).unwrap();
        assert_eq!(replay.len(), 2);
        let first = wal.read_back(replay[0].position).unwrap();
        let second = wal.read_back(replay[1].position).unwrap();
        for back in [&first, &second] {
            assert_eq!(back.signal, Signal::logs);
            assert_eq!(back.records, 1);
            let Payload::Logs(got) = &back.payload else {
                panic!("not logs")
            };
            assert_eq!(got, &logs, "both decode to the accepted request");
        }
        assert_eq!(&first.wire[..], &encoded[..]);
        assert_eq!(&second.wire[..], &received[..], "the unknown field is kept");
        // For prost's bytes, splicing into them is splicing into what
        // encoding the decoded request again makes.
        let Payload::Logs(again) = &first.payload else {
            unreachable!()
        };
        assert_eq!(&first.wire[..], &again.encode_to_vec()[..]);
        wal.close();
    }

    #[tokio::test]
    async fn appended_requests_are_replayed_until_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, replay) = Wal::open(dir.path(), &settings(), WalMetrics::default()).unwrap();
        assert!(replay.is_empty());
        let mut tokens = Vec::new();
        for i in 0..5 {
            let rec = encode_payload(&logs_payload(10 + i), 1);
            tokens.push(wal.append(&rec).await.unwrap());
        }
        // Deliver the first two; drop the rest undelivered (a crash).
        for a in &tokens[..2] {
            a.delivery.expect(1);
            a.delivery.done();
        }
        let (first, third) = (tokens[0].position, tokens[2].position);
        let (_, _, p) = wal.read(third).unwrap();
        assert!(matches!(p, Payload::Logs(_)));
        wal.close();
        drop(tokens);
        drop(wal);
        let (wal2, replay) = Wal::open(dir.path(), &settings(), WalMetrics::default()).unwrap();
        // The whole old segment is replayed (settlement is per segment, re-delivery is idempotent).
        assert_eq!(replay.len(), 5);
        assert_eq!(replay[0].position, first);
        assert_eq!(replay[2].signal, Signal::logs);
        for r in &replay {
            r.delivery.expect(2);
            r.delivery.done_n(2);
        }
        // Every old request settled: the old segment is gone, only the new active one remains.
        assert_eq!(segment_files(dir.path()).len(), 1);
        assert_eq!(wal2.segments(), 1);
        wal2.close();
    }

    #[tokio::test]
    async fn refuses_past_the_cap_and_recovers_after_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), &settings(), WalMetrics::default()).unwrap();
        let rec = encode_payload(&logs_payload(30_000), 1);
        let mut held = Vec::new();
        let err = loop {
            match wal.append(&rec).await {
                Ok(a) => held.push(a),
                Err(e) => break e,
            }
        };
        assert!(matches!(err, WalError::Full { .. }), "{err}");
        assert!(wal.bytes() <= 1 << 20);
        assert!(held.len() >= 30, "{}", held.len());
        // Delivering makes room again (full segments are deleted).
        for a in held.drain(..) {
            a.delivery.expect(0);
        }
        wal.append(&rec).await.unwrap();
        assert!(wal.segments() <= 2, "{:?}", segment_files(dir.path()));
        wal.close();
    }

    #[tokio::test]
    async fn torn_tail_is_truncated_counted_and_the_rest_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), &settings(), WalMetrics::default()).unwrap();
        for i in 0..3 {
            wal.append(&encode_payload(&logs_payload(i), 1))
                .await
                .unwrap();
        }
        wal.close();
        drop(wal);
        let name = segment_files(dir.path()).pop().unwrap();
        let path = dir.path().join(&name);
        let full = std::fs::read(&path).unwrap();
        // Half of a fourth record, as a crash mid-write leaves it.
        let extra = encode_payload(&logs_payload(500), 1);
        let mut torn = full.clone();
        torn.extend_from_slice(&extra[..extra.len() / 2]);
        std::fs::write(&path, &torn).unwrap();
        let m = WalMetrics::default();
        let (wal, replay) = Wal::open(dir.path(), &settings(), m.clone()).unwrap();
        assert_eq!(replay.len(), 3);
        assert_eq!(m.truncated_tails.get(), 1);
        assert_eq!(m.truncated_bytes.get(), (extra.len() / 2) as u64);
        assert_eq!(std::fs::read(&path).unwrap(), full);
        for r in &replay {
            let (_, n, _) = wal.read(r.position).unwrap();
            assert_eq!(n, 1);
        }
        wal.close();
    }

    #[tokio::test]
    async fn concurrent_appends_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let s = WalSettings {
            sync: SyncPolicy::Interval,
            sync_interval: Duration::from_millis(20),
            ..settings()
        };
        let (wal, _) = Wal::open(dir.path(), &s, WalMetrics::default()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..20 {
            let w = wal.clone();
            tasks.push(tokio::spawn(async move {
                w.append(&encode_payload(&logs_payload(i), 1)).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let fsyncs = wal.metrics().fsyncs.get();
        assert!(fsyncs < 20, "20 concurrent appends took {fsyncs} fsyncs");
        wal.close();
    }
}
