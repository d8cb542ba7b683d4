//! A transaction's view of its keys: what was read (each key's value, expiry
//! and version, all from one read of one range) and what the transaction's
//! commands have changed since. Pure: commands evaluate against it, and what it
//! ends up holding becomes one conditional write (`effects`).

use bytes::Bytes;
use cairn_core::keys::mvcc::{expired, kind, NO_EXPIRY};
use cairn_proto::kv::Version;
use std::collections::{HashMap, HashSet};

/// A live value, its expiry instant (Unix ms, `NO_EXPIRY` for none) and its
/// kind (`keys::mvcc::kind`: a string, or a hash in its stored form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub expires_at_ms: u64,
    pub kind: u8,
}

impl Entry {
    /// A string without an expiry.
    pub fn plain(value: Vec<u8>) -> Entry {
        Entry { value, expires_at_ms: NO_EXPIRY, kind: kind::PLAIN }
    }
}

#[derive(Clone, Debug)]
struct Slot {
    /// The version read, `None` if the key was absent.
    read_version: Option<Version>,
    current: Option<Entry>,
    changed: bool,
}

/// What a transaction does to one key when it commits.
#[derive(Debug, PartialEq, Eq)]
pub struct Effect {
    pub key: Bytes,
    /// The key must still be at this version (`None`: still absent) for anything to apply.
    pub read_version: Option<Version>,
    /// `None`: only the check. `Some(None)`: delete. `Some(Some(e))`: write `e`.
    pub change: Option<Option<Entry>>,
}

/// The keys a transaction declared, as read, with its changes on top.
#[derive(Debug, Default)]
pub struct View {
    slots: HashMap<Bytes, Slot>,
    /// When the transaction's commands run: expiry is judged, and relative expiries count, from here.
    pub now_ms: u64,
    /// While one script of a batch runs (`script::batch`), the keys it declared:
    /// the view holds the whole batch's keys, and a script sees only its own.
    scope: Option<HashSet<Bytes>>,
    /// How many writes the commands made (a read-only script must make none).
    pub writes: u64,
}

/// The state of a script's declared keys before it ran: put back if it fails,
/// so that a failed script of a batch leaves nothing behind.
pub struct Saved(Vec<(Bytes, Slot)>);

/// The error a command gets for a key the transaction did not declare.
pub const UNDECLARED: &str =
    "ERR the command touches a key the transaction or script did not declare (pass every key in KEYS)";

impl View {
    pub fn new(now_ms: u64) -> View {
        View { slots: HashMap::new(), now_ms, scope: None, writes: 0 }
    }

    /// Limits what `get` and `put` reach to `keys` (a script's KEYS) until
    /// `unscope`, and saves their state for `restore`.
    pub fn scope_to(&mut self, keys: &[Bytes]) -> Saved {
        self.scope = Some(keys.iter().cloned().collect());
        Saved(keys.iter().filter_map(|k| self.slots.get(k).map(|s| (k.clone(), s.clone()))).collect())
    }

    pub fn unscope(&mut self) {
        self.scope = None;
    }

    /// Puts the keys saved by `scope_to` back as they were.
    pub fn restore(&mut self, saved: Saved) {
        for (key, slot) in saved.0 {
            self.slots.insert(key, slot);
        }
    }

    fn declared(&self, key: &[u8]) -> bool {
        self.scope.as_ref().is_none_or(|s| s.contains(key))
    }

    /// Records what the read found for `key` (`None`: absent).
    pub fn load(&mut self, key: Bytes, found: Option<(Entry, Version)>) {
        let (current, read_version) = match found {
            Some((e, v)) => (Some(e), Some(v)),
            None => (None, None),
        };
        self.slots.insert(key, Slot { read_version, current, changed: false });
    }

    pub fn read_version(&self, key: &[u8]) -> Option<Option<Version>> {
        self.slots.get(key).map(|s| s.read_version)
    }

    /// The live entry of a declared key; `Err` for an undeclared one.
    pub fn get(&self, key: &[u8]) -> Result<Option<&Entry>, &'static str> {
        let slot = self.slots.get(key).filter(|_| self.declared(key)).ok_or(UNDECLARED)?;
        Ok(slot.current.as_ref().filter(|e| !expired(e.expires_at_ms, self.now_ms)))
    }

    /// Replaces a declared key's entry (`None` deletes it); `Err` for an undeclared one.
    pub fn put(&mut self, key: &[u8], entry: Option<Entry>) -> Result<(), &'static str> {
        if !self.declared(key) {
            return Err(UNDECLARED);
        }
        let slot = self.slots.get_mut(key).ok_or(UNDECLARED)?;
        // An entry already due is a deletion (as Redis does for an expiry in the past).
        slot.current = entry.filter(|e| !expired(e.expires_at_ms, self.now_ms));
        slot.changed = true;
        self.writes += 1;
        Ok(())
    }

    /// Every declared key's effect, in key order: a change, or a check that it is
    /// unchanged (so that what the commands read still holds when the write applies).
    pub fn effects(&self) -> Vec<Effect> {
        let mut out: Vec<Effect> = self
            .slots
            .iter()
            .map(|(key, s)| {
                let live_before = s.read_version.is_some();
                let change = match (&s.current, s.changed) {
                    (_, false) => None,
                    // Absent before and after: nothing to write, only to check.
                    (None, true) if !live_before => None,
                    (c, true) => Some(c.clone()),
                };
                Effect { key: key.clone(), read_version: s.read_version, change }
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: u64) -> Version {
        Version { wall_ns: n, logical: 0, node_id: 1 }
    }

    #[test]
    fn effects_check_every_declared_key_and_write_only_the_changed_ones() {
        let mut view = View::new(1_000);
        view.load(Bytes::from_static(b"a"), Some((Entry::plain(b"1".to_vec()), v(5))));
        view.load(Bytes::from_static(b"b"), None);
        view.load(Bytes::from_static(b"c"), Some((Entry { expires_at_ms: 900, ..Entry::plain(b"x".to_vec()) }, v(6))));
        view.load(Bytes::from_static(b"d"), None);
        assert_eq!(view.get(b"c"), Ok(None), "expired by the view's time");
        assert_eq!(view.get(b"zz"), Err(UNDECLARED));
        view.put(b"a", Some(Entry::plain(b"2".to_vec()))).unwrap();
        view.put(b"b", Some(Entry { expires_at_ms: 500, ..Entry::plain(b"y".to_vec()) })).unwrap();
        view.put(b"d", None).unwrap();
        let effects = view.effects();
        type Summary<'a> = (&'a [u8], Option<Version>, Option<Option<&'a [u8]>>);
        let summary: Vec<Summary> = effects
            .iter()
            .map(|e| (e.key.as_ref(), e.read_version, e.change.as_ref().map(|c| c.as_ref().map(|e| &e.value[..]))))
            .collect();
        assert_eq!(
            summary,
            vec![
                (&b"a"[..], Some(v(5)), Some(Some(&b"2"[..]))),
                (b"b", None, None), // written already due: absent before and after
                (b"c", Some(v(6)), None),
                (b"d", None, None),
            ]
        );
    }

    #[test]
    fn a_scoped_script_sees_only_its_keys_and_a_restore_undoes_its_changes() {
        let mut view = View::new(1_000);
        view.load(Bytes::from_static(b"a"), Some((Entry::plain(b"1".to_vec()), v(5))));
        view.load(Bytes::from_static(b"b"), None);
        let saved = view.scope_to(&[Bytes::from_static(b"a")]);
        assert_eq!(view.get(b"b"), Err(UNDECLARED), "loaded for another script of the batch");
        assert_eq!(view.put(b"b", None), Err(UNDECLARED));
        view.put(b"a", Some(Entry::plain(b"2".to_vec()))).unwrap();
        view.restore(saved);
        view.unscope();
        assert_eq!(view.get(b"a").unwrap().map(|e| e.value.clone()), Some(b"1".to_vec()));
        assert_eq!(view.get(b"b"), Ok(None));
        assert!(view.effects().iter().all(|e| e.change.is_none()), "the restored key is unchanged");
    }
}
