//! Where a record leaves the pipeline. Every output (Elasticsearch or NDJSON,
//! the OTLP next hop) reports here when it has delivered or dead-lettered its
//! part of a batch; a record's admission permit comes back only once every
//! configured output has settled it. This is the one place to hook anything
//! that must follow "the record is done" (a write-ahead log's acknowledgement,
//! say).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::export::wal::Delivery;
use crate::pipeline::Admission;

/// The outputs a record can go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Elasticsearch or the NDJSON files (one of them is the document output).
    Documents,
    /// The OTLP next hop.
    Otlp,
}

impl Output {
    fn index(self) -> usize {
        match self {
            Output::Documents => 0,
            Output::Otlp => 1,
        }
    }
}

/// Which outputs are configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outputs {
    pub documents: bool,
    pub otlp: bool,
}

impl Outputs {
    fn has(self, o: Output) -> bool {
        match o {
            Output::Documents => self.documents,
            Output::Otlp => self.otlp,
        }
    }
}

#[derive(Debug)]
struct State {
    settled: [usize; 2],
    released: usize,
}

/// The completion of one scored batch (one request's records) across outputs.
///
/// Each output settles a count of the batch's records. An output that
/// settles the whole batch at once (the OTLP output does) makes the count of
/// records done by every output exactly the smallest settled count, so the
/// permits released are `min(settled) - released` each time; with a single
/// output, permits come back record by record as before.
#[derive(Debug)]
pub struct Ticket {
    records: usize,
    outputs: Outputs,
    admission: Arc<Admission>,
    state: Mutex<State>,
    /// The request's write-ahead queue token, settled once every record is.
    delivery: Option<Delivery>,
    /// A record was lost on the way out (its dead letter could not be
    /// written): the request stays in the write-ahead queue for the next start.
    keep_queued: AtomicBool,
}

impl Ticket {
    /// A ticket for `records` records that go to `outputs`.
    pub fn new(records: usize, outputs: Outputs, admission: Arc<Admission>) -> Arc<Self> {
        Self::with_delivery(records, outputs, admission, None)
    }

    /// A ticket that also settles the request's write-ahead queue token
    /// (one item of it, which the caller has `expect`ed) when every record
    /// is settled.
    pub fn with_delivery(
        records: usize,
        outputs: Outputs,
        admission: Arc<Admission>,
        delivery: Option<Delivery>,
    ) -> Arc<Self> {
        Arc::new(Self {
            records,
            outputs,
            admission,
            state: Mutex::new(State {
                settled: [0; 2],
                released: 0,
            }),
            delivery,
            keep_queued: AtomicBool::new(false),
        })
    }

    /// Keeps the request in the write-ahead queue even once its records are
    /// settled (one of them could not be dead-lettered).
    pub fn keep_queued(&self) {
        self.keep_queued.store(true, Ordering::Relaxed);
    }

    /// The request's write-ahead queue token, if any.
    pub fn delivery(&self) -> Option<&Delivery> {
        self.delivery.as_ref()
    }

    /// Records of the batch.
    pub fn records(&self) -> usize {
        self.records
    }

    /// `output` delivered or dead-lettered `n` more of this batch's records.
    /// Releases the permits of the records that every output has now settled.
    pub fn settle(&self, output: Output, n: usize) {
        if n == 0 {
            return;
        }
        debug_assert!(self.outputs.has(output), "{output:?} is not configured");
        let release = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let i = output.index();
            st.settled[i] = (st.settled[i] + n).min(self.records);
            let done = [Output::Documents, Output::Otlp]
                .into_iter()
                .filter(|o| self.outputs.has(*o))
                .map(|o| st.settled[o.index()])
                .min()
                .unwrap_or(self.records);
            let release = done.saturating_sub(st.released);
            st.released += release;
            (release, release > 0 && st.released == self.records)
        };
        let (release, finished) = release;
        self.admission.release(release);
        if finished && !self.keep_queued.load(Ordering::Relaxed) {
            if let Some(d) = &self.delivery {
                d.done();
            }
        }
    }

    /// Records whose permits are back.
    pub fn released(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .released
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Metrics;

    fn admission(n: usize) -> Arc<Admission> {
        let a = Arc::new(Admission::new(n, Arc::new(Metrics::default())));
        a.try_admit(n).unwrap();
        a
    }

    #[test]
    fn permits_return_only_when_every_output_settled() {
        let a = admission(10);
        let both = Outputs {
            documents: true,
            otlp: true,
        };
        let t = Ticket::new(10, both, a.clone());
        t.settle(Output::Documents, 4);
        assert_eq!(
            a.queued(),
            10,
            "the OTLP output has not settled anything yet"
        );
        t.settle(Output::Otlp, 10);
        assert_eq!(a.queued(), 6);
        t.settle(Output::Documents, 6);
        assert_eq!(a.queued(), 0);
        assert_eq!(t.released(), 10);
        // A repeated settle never releases more than the batch held.
        t.settle(Output::Otlp, 10);
        assert_eq!(a.queued(), 0);
    }

    fn delivery_flag() -> (Delivery, Arc<std::sync::atomic::AtomicUsize>) {
        let completed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = completed.clone();
        let d = Delivery::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        d.expect(1);
        (d, completed)
    }

    #[test]
    fn the_write_ahead_token_completes_once_every_output_settled_every_record() {
        let a = admission(4);
        let (d, completed) = delivery_flag();
        let both = Outputs {
            documents: true,
            otlp: true,
        };
        let t = Ticket::with_delivery(4, both, a.clone(), Some(d));
        t.settle(Output::Otlp, 4);
        t.settle(Output::Documents, 3);
        assert_eq!(completed.load(Ordering::SeqCst), 0, "one record still out");
        t.settle(Output::Documents, 1);
        assert_eq!(completed.load(Ordering::SeqCst), 1);
        t.settle(Output::Documents, 1);
        assert_eq!(completed.load(Ordering::SeqCst), 1, "completed once");
        assert_eq!(a.queued(), 0);
    }

    #[test]
    fn a_lost_record_keeps_the_request_in_the_write_ahead_queue() {
        let a = admission(2);
        let (d, completed) = delivery_flag();
        let docs_only = Outputs {
            documents: true,
            otlp: false,
        };
        let t = Ticket::with_delivery(2, docs_only, a.clone(), Some(d));
        t.keep_queued();
        t.settle(Output::Documents, 2);
        assert_eq!(a.queued(), 0, "permits come back all the same");
        assert_eq!(completed.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_single_output_releases_record_by_record() {
        let a = admission(5);
        let t = Ticket::new(
            5,
            Outputs {
                documents: false,
                otlp: true,
            },
            a.clone(),
        );
        t.settle(Output::Otlp, 2);
        assert_eq!(a.queued(), 3);
        t.settle(Output::Otlp, 3);
        assert_eq!(a.queued(), 0);
    }
}
