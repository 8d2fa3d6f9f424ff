//! The delivery acknowledgement: one token per accepted request, carried by
//! every document made from it, completed when the output has delivered or
//! dead-lettered all of them. Any output completes it the same way, through
//! [`Delivery::done`] (the Elasticsearch and file outputs do it in
//! `ExportCtx::delivered` / `ExportCtx::dead_letter`).
//!
//! Dropping a token never completes it: documents lost in the process (a
//! shutdown deadline, a crash) leave their request in the WAL, to be replayed.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

type OnComplete = Box<dyn FnOnce() + Send>;

struct Inner {
    /// Items not yet settled, plus one hold until the items are known.
    remaining: AtomicUsize,
    on_complete: Mutex<Option<OnComplete>>,
}

/// A cloneable acknowledgement token (cheap: one `Arc`).
#[derive(Clone)]
pub struct Delivery(Arc<Inner>);

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("remaining", &self.0.remaining.load(Ordering::Relaxed))
            .finish()
    }
}

impl Delivery {
    /// A token that runs `on_complete` once everything it covers is settled.
    /// It starts with one hold, released by [`Delivery::expect`].
    pub fn new(on_complete: impl FnOnce() + Send + 'static) -> Self {
        Self(Arc::new(Inner {
            remaining: AtomicUsize::new(1),
            on_complete: Mutex::new(Some(Box::new(on_complete))),
        }))
    }

    /// Declares that `items` documents were made from the request, and
    /// releases the initial hold (with no items, the token completes now).
    /// Called once, by the scoring worker.
    pub fn expect(&self, items: usize) {
        self.0.remaining.fetch_add(items, Ordering::AcqRel);
        self.done();
    }

    /// Settles one item (delivered, already stored, or dead-lettered).
    pub fn done(&self) {
        self.done_n(1);
    }

    /// Settles `n` items.
    pub fn done_n(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.0.remaining.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(before >= n, "delivery settled more items than it holds");
        if before == n {
            let f = self
                .0
                .on_complete
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(f) = f {
                f();
            }
        }
    }

    /// True once every item is settled.
    pub fn is_complete(&self) -> bool {
        self.0.remaining.load(Ordering::Acquire) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn completes_after_the_last_item_and_never_on_drop() {
        let hit = Arc::new(AtomicBool::new(false));
        let h = hit.clone();
        let d = Delivery::new(move || h.store(true, Ordering::SeqCst));
        d.expect(3);
        let clones = [d.clone(), d.clone(), d.clone()];
        clones[0].done();
        clones[1].done();
        assert!(!hit.load(Ordering::SeqCst));
        drop(clones);
        assert!(!hit.load(Ordering::SeqCst), "a drop must not complete");
        d.done();
        assert!(hit.load(Ordering::SeqCst));
        assert!(d.is_complete());
    }

    #[test]
    fn no_items_completes_at_once() {
        let hit = Arc::new(AtomicBool::new(false));
        let h = hit.clone();
        let d = Delivery::new(move || h.store(true, Ordering::SeqCst));
        assert!(!d.is_complete());
        d.expect(0);
        assert!(hit.load(Ordering::SeqCst));
    }
}
