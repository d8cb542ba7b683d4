//! A replica's change-feed taps: where the apply path hands over what it has
//! just applied, for the range feeds (`range_feed.rs`) reading this replica.
//!
//! The store loop is the only writer: it registers a tap between two applies
//! (so the tap's first item follows exactly the applied state it was given),
//! and publishes one item per flushed apply batch, in log order. Each item
//! names the log indexes it covers, so a reader can prove it missed nothing;
//! a snapshot install or the replica's removal ends every tap instead.
//!
//! A tap is bounded: a reader that falls behind by more than its byte limit is
//! ended (and resumes from its last resolved version), never buffered without
//! bound.

use crate::hlc::Version;
use crate::storage::mvcc::Live;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// One key changed by an applied command: its new value, or `None` for a deletion.
#[derive(Clone, Debug)]
pub struct FeedChange {
    pub key: Vec<u8>,
    pub version: Version,
    pub value: Option<Live>,
}

impl FeedChange {
    fn bytes(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, |l| l.value.len()) + 48
    }
}

/// What one flushed apply batch did.
#[derive(Clone, Debug)]
pub struct TapItem {
    /// The applied index before this batch: the previous item's `index`.
    pub after_index: u64,
    pub index: u64,
    /// The range's last version after the batch: every later command gets a higher one.
    pub last_version: Version,
    pub changes: Arc<Vec<FeedChange>>,
    /// The batch changed the descriptor (split, merge, membership, freeze): the
    /// reader's span may no longer be this range's.
    pub desc_changed: bool,
}

/// What a reader takes from its tap at once.
pub enum Drained {
    Items(Vec<TapItem>),
    /// The tap was ended; nothing more will come.
    Ended(String),
}

struct TapState {
    items: VecDeque<TapItem>,
    bytes: usize,
    ended: Option<String>,
}

/// One reader's queue of applied batches.
pub struct Tap {
    state: Mutex<TapState>,
    limit_bytes: usize,
    pub notify: tokio::sync::Notify,
}

impl Tap {
    pub fn new(limit_bytes: usize) -> Arc<Tap> {
        Arc::new(Tap {
            state: Mutex::new(TapState { items: VecDeque::new(), bytes: 0, ended: None }),
            limit_bytes,
            notify: tokio::sync::Notify::new(),
        })
    }

    fn push(&self, item: &TapItem, bytes: usize) {
        let mut s = self.state.lock();
        if s.ended.is_some() {
            return;
        }
        if s.bytes + bytes > self.limit_bytes {
            s.items.clear();
            s.bytes = 0;
            s.ended = Some(format!(
                "the feed fell behind this range's writes by more than {} bytes; resuming from its last resolved version",
                self.limit_bytes
            ));
        } else {
            s.bytes += bytes;
            s.items.push_back(item.clone());
        }
        drop(s);
        self.notify.notify_one();
    }

    pub fn end(&self, why: &str) {
        let mut s = self.state.lock();
        if s.ended.is_none() {
            s.items.clear();
            s.bytes = 0;
            s.ended = Some(why.to_string());
        }
        drop(s);
        self.notify.notify_one();
    }

    /// Everything queued, or the reason the tap ended once nothing is queued.
    pub fn drain(&self) -> Drained {
        let mut s = self.state.lock();
        if !s.items.is_empty() {
            s.bytes = 0;
            return Drained::Items(s.items.drain(..).collect());
        }
        match &s.ended {
            Some(why) => Drained::Ended(why.clone()),
            None => Drained::Items(Vec::new()),
        }
    }
}

/// The taps of one replica.
#[derive(Default)]
pub struct FeedHub {
    taps: Mutex<Vec<Arc<Tap>>>,
    /// Whether any tap is registered: the apply path collects changes only then.
    active: AtomicBool,
}

impl FeedHub {
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Store loop only, between applies.
    pub fn register(&self, tap: Arc<Tap>) {
        let mut taps = self.taps.lock();
        taps.push(tap);
        self.active.store(true, Ordering::Release);
    }

    /// Store loop only: one flushed apply batch. `changes` is `None` when the batch
    /// was applied without collecting them (no tap was registered when it began).
    pub fn publish(
        &self,
        after_index: u64,
        index: u64,
        last_version: Version,
        changes: Option<Vec<FeedChange>>,
        desc_changed: bool,
    ) {
        if !self.active() {
            return;
        }
        let mut taps = self.taps.lock();
        // A reader that went away dropped its handle: only the hub's is left.
        taps.retain(|t| Arc::strong_count(t) > 1);
        if taps.is_empty() {
            self.active.store(false, Ordering::Release);
            return;
        }
        let Some(changes) = changes else {
            // Cannot happen while taps are registered only between applies; ending
            // them is the safe answer if it ever does.
            for t in taps.drain(..) {
                t.end("the replica applied a batch without recording its changes");
            }
            self.active.store(false, Ordering::Release);
            return;
        };
        let bytes = changes.iter().map(FeedChange::bytes).sum::<usize>() + 64;
        let item = TapItem { after_index, index, last_version, changes: Arc::new(changes), desc_changed };
        for t in taps.iter() {
            t.push(&item, bytes);
        }
    }

    /// Ends every tap: the replica stops applying in order (removed, or replaced by a snapshot).
    pub fn end_all(&self, why: &str) {
        let mut taps = self.taps.lock();
        for t in taps.drain(..) {
            t.end(why);
        }
        self.active.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: &[u8], wall: u64) -> FeedChange {
        FeedChange { key: key.to_vec(), version: Version { wall_ns: wall, logical: 0, node_id: 1 }, value: None }
    }

    fn items(t: &Tap) -> Vec<TapItem> {
        match t.drain() {
            Drained::Items(i) => i,
            Drained::Ended(why) => panic!("ended: {why}"),
        }
    }

    #[test]
    fn a_tap_sees_batches_in_order_with_their_indexes() {
        let hub = FeedHub::default();
        let tap = Tap::new(1 << 20);
        hub.register(tap.clone());
        hub.publish(4, 5, Version::ZERO, Some(vec![change(b"a", 1)]), false);
        hub.publish(5, 7, Version::ZERO, Some(vec![change(b"b", 2), change(b"c", 3)]), true);
        let got = items(&tap);
        assert_eq!(got.iter().map(|i| (i.after_index, i.index)).collect::<Vec<_>>(), vec![(4, 5), (5, 7)]);
        assert_eq!(got[1].changes.len(), 2);
        assert!(got[1].desc_changed);
        assert!(items(&tap).is_empty());
    }

    #[test]
    fn a_reader_that_falls_behind_is_ended_not_buffered() {
        let hub = FeedHub::default();
        let tap = Tap::new(1000);
        hub.register(tap.clone());
        for i in 0..100 {
            hub.publish(i, i + 1, Version::ZERO, Some(vec![change(&[7u8; 50], i)]), false);
        }
        assert!(matches!(tap.drain(), Drained::Ended(why) if why.contains("fell behind")));
    }

    #[test]
    fn a_dropped_reader_is_forgotten_and_collection_stops() {
        let hub = FeedHub::default();
        let tap = Tap::new(1 << 20);
        hub.register(tap.clone());
        assert!(hub.active());
        drop(tap);
        hub.publish(0, 1, Version::ZERO, Some(vec![]), false);
        assert!(!hub.active());
    }

    #[test]
    fn ending_the_hub_ends_every_tap_after_what_was_queued_is_dropped() {
        let hub = FeedHub::default();
        let tap = Tap::new(1 << 20);
        hub.register(tap.clone());
        hub.publish(0, 1, Version::ZERO, Some(vec![change(b"a", 1)]), false);
        hub.end_all("replaced by a snapshot");
        assert!(matches!(tap.drain(), Drained::Ended(why) if why == "replaced by a snapshot"));
    }
}
