//! Where a record leaves the pipeline. Every output (Elasticsearch or NDJSON,
//! the OTLP next hop) reports here when it has delivered or dead-lettered its
//! part of a batch; a record's admission permit comes back only once every
//! configured output has settled it. This is the one place to hook anything
//! that must follow "the record is done" (a write-ahead log's acknowledgement,
//! say).

use std::sync::{Arc, Mutex};

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
}

impl Ticket {
    /// A ticket for `records` records that go to `outputs`.
    pub fn new(records: usize, outputs: Outputs, admission: Arc<Admission>) -> Arc<Self> {
        Arc::new(Self {
            records,
            outputs,
            admission,
            state: Mutex::new(State {
                settled: [0; 2],
                released: 0,
            }),
        })
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
            release
        };
        self.admission.release(release);
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
