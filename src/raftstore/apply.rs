//! The range state machine: what a committed command does to the MVCC data.
//!
//! Deterministic: the outcome depends only on the command, the log index and
//! the replica's current state, so every replica reaches the same state. Time
//! enters only through the command's version: whether a value has expired is
//! judged at that version's wall time, never at the replica's clock.
//! Nothing here writes to disk directly; changes go into the caller's batch,
//! which also carries the new applied index (so recovery after a crash is exact).

use super::errors;
use crate::hlc::Version;
use crate::keys::{self, mvcc as mvcc_keys};
use crate::sabotage::{self, Sabotage};
use crate::storage::layout::{self, ApplyState};
use crate::storage::mvcc::{self, Live};
use crate::storage::{Batch, Cf, Engine};
use cairn_proto::internal::{
    expiry, mutation, raft_command, ClearRangeCommand, Expiry, MergeCommand, Mutation, MutationResult, RaftCommand,
    RangeDescriptor, RangeEpoch, RangeError, RangeRecord, SplitCommand, WriteBatch, WriteResponse,
};
use cairn_proto::kv::{condition, Condition};
use prost::Message as _;
use prost011::Message as _;
use std::collections::HashMap;

#[derive(Debug)]
pub enum Applied {
    Write(WriteResponse),
    Split {
        left: RangeDescriptor,
        right: RangeDescriptor,
    },
    /// The split key already is this range's start: nothing to do.
    AlreadySplit(RangeDescriptor),
    /// The span was cleared within this descriptor's bounds (the caller continues past its end).
    Cleared(RangeDescriptor),
    /// The range is frozen for a merge as of log index `index` (its batch must be synced).
    Frozen {
        desc: RangeDescriptor,
        index: u64,
        last_version: Version,
    },
    /// This range took over `right_id`'s span and retired it. `right_incomplete`: this
    /// node's replica of the right range did not hold its final data (it must be rebuilt).
    Merged {
        desc: RangeDescriptor,
        right_id: u64,
        right_incomplete: bool,
    },
    /// The descriptor changed (thawed, or fenced) and is now this.
    Changed(RangeDescriptor),
    Rejected(RangeError),
}

/// This node's replica of a merge's right-hand range, as persisted.
pub struct LocalRight {
    pub desc: RangeDescriptor,
    pub applied_index: u64,
    pub hard_state: Option<raft::eraftpb::HardState>,
}

fn local_right(engine: &Engine, range_id: u64) -> Option<LocalRight> {
    let desc =
        RangeDescriptor::decode(engine.get(Cf::RaftState, &layout::descriptor_key(range_id))?.as_slice()).ok()?;
    let apply = ApplyState::decode(&engine.get(Cf::RaftState, &layout::apply_state_key(range_id))?)?;
    let hard_state = super::raft_storage::persisted_hard_state(engine, range_id);
    Some(LocalRight { desc, applied_index: apply.applied_index, hard_state })
}

/// Mutable state of the replica that applying may change.
pub struct ApplyTarget<'a> {
    pub range_id: u64,
    pub desc: &'a mut RangeDescriptor,
    pub apply: &'a mut ApplyState,
    /// The log index of the command being applied.
    pub index: u64,
    /// Bytes of user data written, for the split check.
    pub written_bytes: u64,
}

/// One RocksDB batch shared by consecutive applied commands, with an overlay so
/// that each command sees what the commands before it in the batch wrote.
/// Applying a whole Ready in one batch turns one WAL write per entry into one per Ready.
pub struct ApplyBatch<'a> {
    engine: &'a Engine,
    pub batch: Batch<'a>,
    values: HashMap<Vec<u8>, Current>,
    dedupe: HashMap<Vec<u8>, Vec<u8>>,
    /// The changes written, in order, when a change feed reads this replica.
    pub changes: Option<Vec<super::feed::FeedChange>>,
}

impl<'a> ApplyBatch<'a> {
    pub fn new(engine: &'a Engine) -> Self {
        ApplyBatch { engine, batch: engine.batch(), values: HashMap::new(), dedupe: HashMap::new(), changes: None }
    }

    /// A batch that also collects the changes it writes, for change feeds.
    pub fn recording_changes(engine: &'a Engine) -> Self {
        ApplyBatch { changes: Some(Vec::new()), ..ApplyBatch::new(engine) }
    }

    /// The live value of `key` judged at `now_ms`, as of everything applied so far
    /// including this batch.
    fn current(&self, key: &[u8], now_ms: u64) -> Current {
        match self.values.get(key) {
            Some(c) => c.clone().filter(|l| !mvcc_keys::expired(l.expires_at_ms, now_ms)),
            None => mvcc::get_live(self.engine, key, Version::MAX, now_ms),
        }
    }

    fn write_value(&mut self, key: &[u8], version: Version, value: Option<&Live>) {
        let stored = match value {
            Some(l) => mvcc_keys::encode_kinded_value(&l.value, l.expires_at_ms, l.kind),
            None => mvcc_keys::tombstone(),
        };
        self.batch.put(Cf::Data, &mvcc_keys::encode(key, version), &stored);
        self.values.insert(key.to_vec(), value.cloned());
        if let Some(changes) = &mut self.changes {
            changes.push(super::feed::FeedChange { key: key.to_vec(), version, value: value.cloned() });
        }
    }

    /// The results recorded under `request_id` for one key, unless older than the
    /// TTL as seen from `now` (the command's own version, so every replica decides
    /// alike whether or not compaction has already dropped the record).
    fn recorded_for_key(&self, key: &[u8], request_id: &[u8], now: Version) -> Option<Vec<MutationResult>> {
        let record_key = layout::dedupe_key(key, request_id);
        let raw = match self.dedupe.get(&record_key) {
            Some(v) => Some(v.clone()),
            None => self.engine.get(Cf::Dedupe, &record_key),
        }?;
        let ms = layout::dedupe_record_ms(&raw)?;
        if crate::dedupe::expired(ms, now.wall_ns) {
            return None;
        }
        raw.get(8..).and_then(|b| WriteResponse::decode(b).ok()).map(|r| r.results)
    }

    /// The first attempt's answer to each mutation of a retried write, where its key
    /// has one. Records are kept per key, so a retry finds them however its keys are
    /// grouped into ranges now (a split between the attempts regroups them; a merge
    /// can put keys that were applied in different ranges, at different times, into
    /// one group, some with records and some without).
    fn recorded(&self, muts: &[Mutation], request_id: &[u8], now: Version) -> Vec<Option<MutationResult>> {
        if sabotage::active(Sabotage::ApplyRetryTwice) {
            return vec![None; muts.len()];
        }
        let mut per_key: HashMap<&[u8], std::collections::VecDeque<MutationResult>> = HashMap::new();
        muts.iter()
            .map(|m| {
                per_key
                    .entry(m.key.as_slice())
                    .or_insert_with(|| self.recorded_for_key(&m.key, request_id, now).unwrap_or_default().into())
                    .pop_front()
            })
            .collect()
    }

    /// Records each key's results (in op order) under `request_id`.
    fn remember(&mut self, muts: &[Mutation], request_id: &[u8], version: Version, resp: &WriteResponse) {
        let ms = version.wall_ns / 1_000_000;
        // Most writes touch one key: no grouping needed on the apply path.
        if let ([m], [r]) = (muts, resp.results.as_slice()) {
            self.put_record(&m.key, request_id, ms, vec![*r]);
            return;
        }
        let mut per_key: HashMap<&[u8], Vec<MutationResult>> = HashMap::new();
        for (m, r) in muts.iter().zip(&resp.results) {
            per_key.entry(m.key.as_slice()).or_default().push(*r);
        }
        for (key, results) in per_key {
            self.put_record(key, request_id, ms, results);
        }
    }

    fn put_record(&mut self, key: &[u8], request_id: &[u8], ms: u64, results: Vec<MutationResult>) {
        let mut v = ms.to_be_bytes().to_vec();
        v.extend_from_slice(&WriteResponse { results }.encode_to_vec());
        let record_key = layout::dedupe_key(key, request_id);
        self.batch.put(Cf::Dedupe, &record_key, &v);
        self.dedupe.insert(record_key, v);
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// Writes the batch (unsynced: the Raft log it was derived from is durable).
    pub fn commit(self) {
        self.engine.commit(self.batch, false);
    }

    /// Writes the batch and syncs it: for a freeze, whose replica must hold the
    /// range's final data durably before a merge counts on it.
    pub fn commit_synced(self) {
        self.engine.commit(self.batch, true);
    }
}

pub fn apply_command(ab: &mut ApplyBatch<'_>, t: &mut ApplyTarget<'_>, cmd: &RaftCommand) -> Applied {
    let proposed = cmd.proposed_version.as_ref().map(Version::from).unwrap_or_default();
    // Versions grow monotonically per range whatever the proposer's clock said.
    let version = proposed.max(t.apply.last_version.next());
    // Only writes are deduplicated: splits and clears are idempotent by epoch and bounds.
    let dedupe = match &cmd.cmd {
        Some(raft_command::Cmd::Write(w)) if !cmd.request_id.is_empty() && !w.mutations.is_empty() => {
            Some(w.mutations.as_slice())
        }
        _ => None,
    };
    // Each mutation's recorded answer, where its key has one: a retry answered whole
    // from records applies nothing; one answered in part applies only the rest.
    let known = dedupe.map(|muts| ab.recorded(muts, &cmd.request_id, version)).unwrap_or_default();
    if !known.is_empty() && known.iter().all(Option::is_some) {
        return Applied::Write(WriteResponse { results: known.into_iter().flatten().collect() });
    }
    let unanswered: Option<WriteBatch> = dedupe.filter(|_| known.iter().any(Option::is_some)).map(|muts| WriteBatch {
        mutations: muts.iter().zip(&known).filter(|(_, k)| k.is_none()).map(|(m, _)| m.clone()).collect(),
    });
    let out = match &cmd.cmd {
        Some(c) if t.desc.frozen_for_merge && refused_while_frozen(c) => Applied::Rejected(frozen(t.desc)),
        Some(raft_command::Cmd::Write(w)) => {
            let judged_at_ms = (version.wall_ns / 1_000_000).max(cmd.expiry_judged_at_ms);
            apply_write(ab, t, unanswered.as_ref().unwrap_or(w), version, judged_at_ms)
        }
        Some(raft_command::Cmd::Split(s)) => {
            let prior = super::raft_storage::persisted_hard_state(ab.engine, s.new_range_id);
            apply_split(&mut ab.batch, t, s, prior)
        }
        Some(raft_command::Cmd::Clear(c)) => apply_clear(&mut ab.batch, t, c),
        Some(raft_command::Cmd::Freeze(f)) => apply_freeze(&mut ab.batch, t, f.left_range_id),
        Some(raft_command::Cmd::Merge(m)) => {
            let right = m.right.as_ref().map(|r| local_right(ab.engine, r.id));
            apply_merge(&mut ab.batch, t, m, right.flatten())
        }
        Some(raft_command::Cmd::Unfreeze(_)) => {
            t.desc.frozen_for_merge = false;
            ab.batch.put(Cf::RaftState, &layout::descriptor_key(t.range_id), &t.desc.encode_to_vec());
            Applied::Changed(t.desc.clone())
        }
        Some(raft_command::Cmd::Fence(_)) => {
            let mut epoch = t.desc.epoch.unwrap_or_default();
            epoch.version += 1;
            t.desc.epoch = Some(epoch);
            ab.batch.put(Cf::RaftState, &layout::descriptor_key(t.range_id), &t.desc.encode_to_vec());
            Applied::Changed(t.desc.clone())
        }
        None => Applied::Rejected(errors::invalid("empty command")),
    };
    if let Applied::Write(resp) = &out {
        t.apply.last_version = version;
        match (&unanswered, dedupe) {
            (Some(rest), _) => {
                ab.remember(&rest.mutations, &cmd.request_id, version, resp);
                let mut fresh = resp.results.iter();
                let results = known.into_iter().map(|k| k.or_else(|| fresh.next().copied()).unwrap_or_default());
                return Applied::Write(WriteResponse { results: results.collect() });
            }
            (None, Some(muts)) => ab.remember(muts, &cmd.request_id, version, resp),
            (None, None) => {}
        }
    }
    out
}

type Current = Option<Live>;

/// An increment's error on a value of another kind than a plain one (worded as
/// Redis words it, so that the Redis front end passes it on as it is).
pub const WRONG_KIND: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

fn retired(desc: &RangeDescriptor, table_id: u32) -> bool {
    desc.retired_tables.binary_search(&table_id).is_ok()
}

/// Refuses keys of a table this range retired when it was dropped: the request was
/// encoded with a cached table id that a drop (through another node) made stale.
pub fn check_tables_live<'k>(
    desc: &RangeDescriptor,
    mut keys_: impl Iterator<Item = &'k [u8]>,
) -> Result<(), RangeError> {
    if desc.retired_tables.is_empty() || sabotage::active(Sabotage::IgnoreRetiredTables) {
        return Ok(());
    }
    match keys_.find_map(|k| keys::decode_table(k).map(|(id, _)| id).filter(|id| retired(desc, *id))) {
        Some(id) => Err(errors::table_dropped(id)),
        None => Ok(()),
    }
}

fn condition_holds(cond: &Option<Condition>, cur: &Current) -> bool {
    match cond.as_ref().and_then(|c| c.kind.as_ref()) {
        None => true,
        Some(condition::Kind::VersionEquals(v)) => cur.as_ref().is_some_and(|l| l.version == Version::from(v)),
        Some(condition::Kind::IfAbsent(_)) => cur.is_none(),
        Some(condition::Kind::IfPresent(_)) => cur.is_some(),
        // Only a plain value equals bytes: a hash's encoding is not its value.
        Some(condition::Kind::ValueEquals(x)) => {
            cur.as_ref().is_some_and(|l| l.kind == mvcc_keys::kind::PLAIN && &l.value == x)
        }
    }
}

fn epoch_newer(a: &Option<RangeEpoch>, b: &Option<RangeEpoch>) -> bool {
    let a = (*a).unwrap_or_default();
    let b = (*b).unwrap_or_default();
    (a.version, a.conf_ver) > (b.version, b.conf_ver)
}

/// `now_ms`: the instant expiring values are judged at (the version's time, or
/// the proposing leader's later floor).
fn apply_write(
    ab: &mut ApplyBatch<'_>,
    t: &mut ApplyTarget<'_>,
    w: &WriteBatch,
    version: Version,
    now_ms: u64,
) -> Applied {
    let outside = w.mutations.iter().any(|m| !keys::in_range(&m.key, &t.desc.start, &t.desc.end));
    if outside && !sabotage::active(Sabotage::SkipEpochCheck) {
        return Applied::Rejected(errors::key_not_in_range(t.desc));
    }
    if let Err(e) = check_tables_live(t.desc, w.mutations.iter().map(|m| m.key.as_slice())) {
        return Applied::Rejected(e);
    }
    let mut overlay: HashMap<&[u8], Current> = HashMap::new();
    let mut order: Vec<&[u8]> = Vec::new();
    let mut results = Vec::with_capacity(w.mutations.len());
    let mut all_ok = true;
    for m in &w.mutations {
        let key = m.key.as_slice();
        // An unconditional put does not depend on the current value, so it is not read
        // (its `existed` is reported as false).
        let keeps_expiry = matches!(m.expiry.as_ref().and_then(|e| e.when.as_ref()), Some(expiry::When::Keep(_)));
        let blind_put = m.condition.is_none() && matches!(m.op, Some(mutation::Op::Put(_))) && !keeps_expiry;
        let cur = match overlay.get(key) {
            Some(c) => c.clone(),
            None if blind_put => None,
            None => ab.current(key, now_ms),
        };
        let existed = cur.is_some();
        if !condition_holds(&m.condition, &cur) {
            all_ok = false;
            results.push(MutationResult {
                succeeded: false,
                existed,
                version: cur.map(|l| l.version.into()),
                counter: 0,
            });
            continue;
        }
        let (next, result) = match evaluate(m, cur, version, now_ms) {
            Ok(r) => r,
            Err(e) => return Applied::Rejected(e),
        };
        if !result.succeeded && !matches!(m.op, Some(mutation::Op::RangeRecord(_))) {
            all_ok = false;
        }
        if let Some(next) = next {
            if !overlay.contains_key(key) {
                order.push(key);
            }
            overlay.insert(key, next);
        }
        results.push(result);
    }
    if !all_ok {
        for r in &mut results {
            r.succeeded = false;
        }
        return Applied::Write(WriteResponse { results });
    }
    for key in order {
        let value = overlay[key].as_ref();
        t.written_bytes += (key.len() + value.map_or(0, |l| l.value.len())) as u64;
        ab.write_value(key, version, value);
    }
    Applied::Write(WriteResponse { results })
}

/// The expiry instant `e` resolves to for a command at `now_ms` on a key whose
/// live value is `cur`; `NO_EXPIRY` for none. An absent `e` means never.
fn resolve_expiry(e: Option<&Expiry>, cur: &Current, now_ms: u64) -> u64 {
    match e.and_then(|e| e.when.as_ref()) {
        None | Some(expiry::When::Never(_)) => mvcc_keys::NO_EXPIRY,
        // Zero is a valid instant to ask for (long past), not "never".
        Some(expiry::When::AfterMs(ms)) => now_ms.saturating_add(*ms).max(1),
        Some(expiry::When::AtMs(at)) => (*at).max(1),
        Some(expiry::When::Keep(_)) => cur.as_ref().map_or(mvcc_keys::NO_EXPIRY, |l| l.expires_at_ms),
    }
}

/// What one mutation turns the key into (`None` = unchanged) and its result.
fn evaluate(
    m: &Mutation,
    cur: Current,
    version: Version,
    now_ms: u64,
) -> Result<(Option<Current>, MutationResult), RangeError> {
    let existed = cur.is_some();
    let ok = |counter| MutationResult { succeeded: true, existed, version: Some(version.into()), counter };
    let absent = MutationResult { succeeded: true, existed: false, version: None, counter: 0 };
    // A value whose expiry is already due is written as a deletion (as Redis does for
    // an expiry in the past): nothing live stays behind, and an absent key stays absent.
    let live_or_deleted = |value: Vec<u8>, expires_at_ms: u64, kind: u8| {
        if !mvcc_keys::expired(expires_at_ms, now_ms) {
            (Some(Some(Live { value, version, expires_at_ms, kind })), ok(0))
        } else if existed {
            (Some(None), ok(0))
        } else {
            (None, absent)
        }
    };
    Ok(match &m.op {
        Some(mutation::Op::Put(v)) => {
            let kind = u8::try_from(m.value_kind).map_err(|_| errors::invalid("unknown value kind"))?;
            live_or_deleted(v.clone(), resolve_expiry(m.expiry.as_ref(), &cur, now_ms), kind)
        }
        Some(mutation::Op::SetExpiry(e)) => match &cur {
            None => (None, absent),
            Some(l) => live_or_deleted(l.value.clone(), resolve_expiry(Some(e), &cur, now_ms), l.kind),
        },
        Some(mutation::Op::Check(_)) => (None, MutationResult { version: cur.map(|l| l.version.into()), ..ok(0) }),
        Some(mutation::Op::Delete(_)) => {
            if existed {
                (Some(None), ok(0))
            } else {
                (None, absent)
            }
        }
        Some(mutation::Op::Increment(inc)) => {
            let current: i64 = match &cur {
                None => 0,
                Some(l) if l.kind != mvcc_keys::kind::PLAIN => return Err(errors::invalid(WRONG_KIND)),
                Some(l) => std::str::from_utf8(&l.value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| errors::invalid("value is not an integer or out of range"))?,
            };
            let next = current
                .checked_add(inc.delta)
                .ok_or_else(|| errors::invalid("increment or decrement would overflow"))?;
            let within = inc.min.is_none_or(|lo| next >= lo) && inc.max.is_none_or(|hi| next <= hi);
            if !within {
                let cur_version = cur.map(|l| l.version.into());
                (None, MutationResult { succeeded: false, existed, version: cur_version, counter: current })
            } else {
                // A counter keeps its expiry, as Redis's INCR does.
                let expires_at_ms = cur.as_ref().map_or(mvcc_keys::NO_EXPIRY, |l| l.expires_at_ms);
                let value = next.to_string().into_bytes();
                (Some(Some(Live { value, version, expires_at_ms, kind: mvcc_keys::kind::PLAIN })), ok(next))
            }
        }
        Some(mutation::Op::RangeRecord(rec)) => {
            let old = cur.as_ref().and_then(|l| RangeRecord::decode(l.value.as_slice()).ok());
            let stale = old.as_ref().is_some_and(|old| {
                let old_epoch = old.desc.as_ref().and_then(|d| d.epoch);
                let new_epoch = rec.desc.as_ref().and_then(|d| d.epoch);
                epoch_newer(&old_epoch, &new_epoch)
            });
            if stale {
                (None, MutationResult { succeeded: false, existed, version: cur.map(|l| l.version.into()), counter: 0 })
            } else {
                // A report that does not know the leader or size keeps the previous ones.
                let mut rec = rec.clone();
                if let Some(old) = old {
                    if rec.leader_node_id == 0 {
                        rec.leader_node_id = old.leader_node_id;
                    }
                    if rec.approximate_bytes == 0 {
                        rec.approximate_bytes = old.approximate_bytes;
                    }
                }
                let value = rec.encode_to_vec();
                let expires_at_ms = mvcc_keys::NO_EXPIRY;
                (Some(Some(Live { value, version, expires_at_ms, kind: mvcc_keys::kind::PLAIN })), ok(0))
            }
        }
        None => return Err(errors::invalid("mutation has no operation")),
    })
}

/// `prior_hard_state`: what this node already persisted for the new range (a replica
/// created on a message from it, before this node applied the split).
fn apply_split(
    batch: &mut Batch<'_>,
    t: &mut ApplyTarget<'_>,
    s: &SplitCommand,
    prior_hard_state: Option<raft::eraftpb::HardState>,
) -> Applied {
    let key = s.split_key.as_slice();
    if key == t.desc.start.as_slice() {
        return Applied::AlreadySplit(t.desc.clone());
    }
    let strictly_inside = key > t.desc.start.as_slice() && (t.desc.end.is_empty() || key < t.desc.end.as_slice());
    if !strictly_inside {
        return Applied::Rejected(errors::key_not_in_range(t.desc));
    }
    if s.new_range_id == 0 || s.new_range_id == t.range_id {
        return Applied::Rejected(errors::invalid("split needs a new range id"));
    }
    let mut epoch = t.desc.epoch.unwrap_or_default();
    epoch.version += 1;
    let right = RangeDescriptor {
        id: s.new_range_id,
        start: key.to_vec(),
        end: t.desc.end.clone(),
        epoch: Some(epoch),
        // The same peer ids: the right range is a new Raft group, and its ids are
        // unique in it as they were in the left.
        replicas: t.desc.replicas.clone(),
        retired_tables: t.desc.retired_tables.clone(),
        next_replica_id: t.desc.next_replica_id,
        frozen_for_merge: false,
        sticky_start: s.sticky,
        merged_at: None,
    };
    t.desc.end = key.to_vec();
    t.desc.epoch = Some(epoch);
    batch.put(Cf::RaftState, &layout::descriptor_key(t.range_id), &t.desc.encode_to_vec());
    write_initial_state(batch, &right, t.apply.last_version);
    if let Some(mut hs) = prior_hard_state.filter(|hs| hs.term > super::RAFT_INIT_TERM) {
        // Keep the term and vote this node already promised in an election of the new range.
        hs.commit = super::RAFT_INIT_INDEX;
        batch.put(Cf::RaftState, &layout::hard_state_key(right.id), &hs.encode_to_vec());
    }
    Applied::Split { left: t.desc.clone(), right }
}

/// Commands a range frozen for a merge refuses, at proposal and at apply: all that
/// change its data or bounds. A freeze again, a fence or a thaw still go through.
pub fn refused_while_frozen(cmd: &raft_command::Cmd) -> bool {
    use raft_command::Cmd;
    matches!(cmd, Cmd::Write(_) | Cmd::Split(_) | Cmd::Clear(_) | Cmd::Merge(_))
}

/// A command no client request id deduplicates (the leader proposes it for an
/// administrative step: split, freeze, merge, fence, thaw).
pub fn admin_command(cmd: raft_command::Cmd) -> RaftCommand {
    RaftCommand {
        judge_expiry_at_leader: false,
        expiry_judged_at_ms: 0,
        request_id: Vec::new(),
        proposed_version: None,
        cmd: Some(cmd),
    }
}

/// The error of a request a frozen range cannot take: retryable, since the range
/// is either merged away soon (its span then routes to the left range) or thawed.
pub fn frozen(desc: &RangeDescriptor) -> RangeError {
    errors::unavailable(format!("range {} is frozen for a merge into its left-hand neighbour; retry", desc.id))
}

fn voter_nodes(d: &RangeDescriptor) -> Option<Vec<u64>> {
    if d.replicas.iter().any(|r| r.learner) {
        return None;
    }
    let mut v: Vec<u64> = d.replicas.iter().map(|r| r.node_id).collect();
    v.sort_unstable();
    Some(v)
}

/// Whether two ranges can merge as far as their membership goes: the same voters
/// and no learners, so that every node holding one holds the other.
pub fn aligned(left: &RangeDescriptor, right: &RangeDescriptor) -> bool {
    voter_nodes(left).is_some_and(|l| Some(l) == voter_nodes(right))
}

fn apply_freeze(batch: &mut Batch<'_>, t: &mut ApplyTarget<'_>, left_range_id: u64) -> Applied {
    if t.desc.start.is_empty() || left_range_id == 0 {
        return Applied::Rejected(errors::invalid(format!("range {} has no left-hand neighbour", t.range_id)));
    }
    if voter_nodes(t.desc).is_none() {
        return Applied::Rejected(errors::unavailable(format!(
            "range {} has a learner; a range freezes for a merge only with voters alone",
            t.range_id
        )));
    }
    if !t.desc.frozen_for_merge {
        t.desc.frozen_for_merge = true;
        batch.put(Cf::RaftState, &layout::descriptor_key(t.range_id), &t.desc.encode_to_vec());
    }
    Applied::Frozen { desc: t.desc.clone(), index: t.index, last_version: t.apply.last_version }
}

/// Takes over the frozen right-hand range's span. Its data and dedupe records are
/// keyed by user key, so they already are where the left range reads them; only
/// the right range's Raft state goes, with a tombstone that refuses every message
/// to it. `local`: this node's replica of the right range, as persisted.
fn apply_merge(batch: &mut Batch<'_>, t: &mut ApplyTarget<'_>, m: &MergeCommand, local: Option<LocalRight>) -> Applied {
    let Some(right) = m.right.as_ref() else { return Applied::Rejected(errors::invalid("merge names no range")) };
    let same_epoch = m.left_epoch.is_some() && t.desc.epoch == m.left_epoch;
    if !same_epoch {
        return Applied::Rejected(errors::epoch_mismatch(t.desc));
    }
    if t.desc.end.is_empty() || t.desc.end != right.start || !right.frozen_for_merge || right.id == t.range_id {
        return Applied::Rejected(errors::invalid(format!(
            "range {} is not the frozen right-hand neighbour of range {}",
            right.id, t.range_id
        )));
    }
    if !aligned(t.desc, right) {
        return Applied::Rejected(errors::invalid(format!(
            "ranges {} and {} do not have the same voters",
            t.range_id, right.id
        )));
    }
    // Not the epoch: a fence from an abandoned merge of the right range with its own
    // right-hand neighbour may have raised it since; its data stays what was frozen.
    let complete = local.as_ref().is_some_and(|l| l.desc.frozen_for_merge && l.applied_index >= m.right_frozen_index);
    let right_incomplete = !complete && !sabotage::active(Sabotage::MergeWithoutFreezeWait);
    let (le, re) = (t.desc.epoch.unwrap_or_default(), right.epoch.unwrap_or_default());
    t.desc.end = right.end.clone();
    t.desc.epoch = Some(RangeEpoch { version: le.version.max(re.version) + 1, conf_ver: le.conf_ver });
    t.desc.next_replica_id = t.desc.next_replica_id.max(right.next_replica_id);
    t.desc.retired_tables.extend(right.retired_tables.iter().copied());
    t.desc.retired_tables.sort_unstable();
    t.desc.retired_tables.dedup();
    let right_version = m.right_last_version.as_ref().map(Version::from).unwrap_or_default();
    t.apply.last_version = t.apply.last_version.max(right_version);
    t.desc.merged_at = Some(t.apply.last_version.into());
    batch.put(Cf::RaftState, &layout::descriptor_key(t.range_id), &t.desc.encode_to_vec());
    retire_raft_state(batch, right.id, local.and_then(|l| l.hard_state));
    Applied::Merged { desc: t.desc.clone(), right_id: right.id, right_incomplete }
}

/// Deletes a merged range's log and Raft state but its term and vote (as a
/// removed replica keeps them: a node's term for a range never goes back), and
/// leaves the tombstone that refuses every message to it.
pub fn retire_raft_state(batch: &mut Batch<'_>, range_id: u64, hard_state: Option<raft::eraftpb::HardState>) {
    batch.delete_range(Cf::RaftLog, &layout::log_key(range_id, 0), &layout::log_key(range_id + 1, 0));
    clear_raft_state(batch, range_id, hard_state);
    let tombstone = super::membership::Tombstone::merged();
    batch.put(Cf::RaftState, &layout::tombstone_key(range_id), &tombstone.encode());
}

/// Deletes a range's Raft state (descriptor, apply state, markers), keeping its
/// term and vote if given: a node's term for a range never goes back.
pub fn clear_raft_state(batch: &mut Batch<'_>, range_id: u64, hard_state: Option<raft::eraftpb::HardState>) {
    let (lo, hi) = layout::range_state_bounds(range_id);
    batch.delete_range(Cf::RaftState, &lo, &hi);
    if let Some(mut hs) = hard_state {
        hs.commit = 0;
        batch.put(Cf::RaftState, &layout::hard_state_key(range_id), &hs.encode_to_vec());
    }
}

/// Persists the starting state of a range created by bootstrap or split.
pub fn write_initial_state(batch: &mut Batch<'_>, desc: &RangeDescriptor, last_version: Version) {
    use super::{RAFT_INIT_INDEX, RAFT_INIT_TERM};
    let hs = raft::eraftpb::HardState { term: RAFT_INIT_TERM, vote: 0, commit: RAFT_INIT_INDEX };
    let apply = ApplyState {
        applied_index: RAFT_INIT_INDEX,
        truncated_index: RAFT_INIT_INDEX,
        truncated_term: RAFT_INIT_TERM,
        last_version,
    };
    batch.put(Cf::RaftState, &layout::hard_state_key(desc.id), &hs.encode_to_vec());
    batch.put(Cf::RaftState, &layout::apply_state_key(desc.id), &apply.encode());
    batch.put(Cf::RaftState, &layout::descriptor_key(desc.id), &desc.encode_to_vec());
}

fn apply_clear(batch: &mut Batch<'_>, t: &mut ApplyTarget<'_>, c: &ClearRangeCommand) -> Applied {
    if c.retire_table != 0 && !retired(t.desc, c.retire_table) {
        let (lo, hi) = (keys::table_prefix(c.retire_table), keys::table_end(c.retire_table));
        let overlaps = (t.desc.end.is_empty() || lo < t.desc.end) && hi > t.desc.start;
        if overlaps {
            t.desc.retired_tables.push(c.retire_table);
            t.desc.retired_tables.sort_unstable();
            batch.put(Cf::RaftState, &layout::descriptor_key(t.range_id), &t.desc.encode_to_vec());
        }
    }
    let start = c.start.as_slice().max(t.desc.start.as_slice()).to_vec();
    let end = match (c.end.is_empty(), t.desc.end.is_empty()) {
        (true, _) => t.desc.end.clone(),
        (false, true) => c.end.clone(),
        (false, false) => c.end.as_slice().min(t.desc.end.as_slice()).to_vec(),
    };
    if !end.is_empty() && start >= end {
        return Applied::Cleared(t.desc.clone());
    }
    let (lo, hi) = mvcc::data_span(&start, &end);
    batch.delete_range(Cf::Data, &lo, &hi);
    Applied::Cleared(t.desc.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedupe::TTL_MS;
    use cairn_proto::internal::Increment;

    fn setup() -> (tempfile::TempDir, Engine, RangeDescriptor, ApplyState) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), &Default::default()).unwrap();
        let desc = RangeDescriptor { id: 2, start: b"a".to_vec(), end: b"m".to_vec(), ..Default::default() };
        (dir, engine, desc, ApplyState::default())
    }

    fn write(muts: Vec<Mutation>, rid: &[u8]) -> RaftCommand {
        RaftCommand {
            judge_expiry_at_leader: false,
            expiry_judged_at_ms: 0,
            request_id: rid.to_vec(),
            proposed_version: None,
            cmd: Some(raft_command::Cmd::Write(WriteBatch { mutations: muts })),
        }
    }

    fn put(k: &[u8], v: &[u8], cond: Option<condition::Kind>) -> Mutation {
        Mutation {
            expiry: None,
            key: k.to_vec(),
            condition: cond.map(|k| Condition { kind: Some(k) }),
            op: Some(mutation::Op::Put(v.to_vec())),
            value_kind: 0,
        }
    }

    fn run(engine: &Engine, desc: &mut RangeDescriptor, st: &mut ApplyState, cmd: &RaftCommand) -> Applied {
        let mut ab = ApplyBatch::new(engine);
        let mut t = ApplyTarget { range_id: 2, desc, apply: st, index: 0, written_bytes: 0 };
        let out = apply_command(&mut ab, &mut t, cmd);
        ab.commit();
        out
    }

    const MS: u64 = 1_000_000;

    /// A write proposed at `at_ms` (Unix ms; these tests live in 1970, so a
    /// replica that judged expiry by its own clock would see everything expired).
    fn at(at_ms: u64, muts: Vec<Mutation>) -> RaftCommand {
        RaftCommand {
            proposed_version: Some(Version { wall_ns: at_ms * MS, logical: 0, node_id: 1 }.into()),
            ..write(muts, b"")
        }
    }

    fn expiring(k: &[u8], v: &[u8], when: expiry::When, cond: Option<condition::Kind>) -> Mutation {
        Mutation { expiry: Some(Expiry { when: Some(when) }), ..put(k, v, cond) }
    }

    fn set_expiry(k: &[u8], when: expiry::When) -> Mutation {
        Mutation {
            key: k.to_vec(),
            condition: None,
            op: Some(mutation::Op::SetExpiry(Expiry { when: Some(when) })),
            expiry: None,
            value_kind: 0,
        }
    }

    fn results(a: Applied) -> Vec<(bool, bool)> {
        match a {
            Applied::Write(w) => w.results.iter().map(|r| (r.succeeded, r.existed)).collect(),
            other => panic!("not a write: {other:?}"),
        }
    }

    /// Expiry is judged at each command's own version, so replicas agree whatever
    /// their clocks say: up to its expiry instant a key is present, from it on absent.
    #[test]
    fn expiry_is_judged_at_the_commands_version() {
        let (_d, e, mut desc, mut st) = setup();
        let when = expiry::When::AfterMs(1_000);
        run(&e, &mut desc, &mut st, &at(5_000, vec![expiring(b"k", b"v", when, None)]));
        let present = Some(condition::Kind::IfPresent(true));
        let absent = Some(condition::Kind::IfAbsent(true));
        assert_eq!(
            results(run(
                &e,
                &mut desc,
                &mut st,
                &at(
                    5_999,
                    vec![
                        put(b"d", b"1", present.clone()),
                        put(b"k", b"v2", Some(condition::Kind::ValueEquals(b"v".to_vec())))
                    ]
                )
            )),
            vec![(false, false), (false, true)],
            "a condition on another key fails the batch"
        );
        assert_eq!(
            results(run(&e, &mut desc, &mut st, &at(5_999, vec![put(b"k", b"v", present.clone())]))),
            vec![(true, true)],
            "live before its expiry"
        );
        // That put had no expiry: the key lives on.
        assert_eq!(
            results(run(
                &e,
                &mut desc,
                &mut st,
                &at(9_000, vec![expiring(b"k", b"v3", expiry::When::AfterMs(500), present)])
            )),
            vec![(true, true)]
        );
        assert_eq!(
            results(run(&e, &mut desc, &mut st, &at(9_499, vec![put(b"k", b"nx", absent.clone())]))),
            vec![(false, true)]
        );
        assert_eq!(
            results(run(&e, &mut desc, &mut st, &at(9_500, vec![put(b"k", b"nx", absent)]))),
            vec![(true, false)],
            "absent at its expiry instant"
        );
        let live = mvcc::get_live(&e, b"k", Version::MAX, 0).unwrap();
        assert_eq!((live.value.as_slice(), live.expires_at_ms), (&b"nx"[..], mvcc_keys::NO_EXPIRY));
    }

    /// A check writes nothing, but its failing condition fails the whole batch:
    /// what a transaction read must be unchanged for its writes to apply.
    #[test]
    fn a_failed_check_fails_the_batch_and_a_passing_one_writes_nothing() {
        let (_d, e, mut desc, mut st) = setup();
        run(&e, &mut desc, &mut st, &at(1_000, vec![put(b"h", b"1", None)]));
        let read_version = mvcc::get_live(&e, b"h", Version::MAX, 0).unwrap().version;
        let check = |kind| Mutation {
            key: b"h".to_vec(),
            condition: Some(Condition { kind: Some(kind) }),
            op: Some(mutation::Op::Check(true)),
            expiry: None,
            value_kind: 0,
        };
        let stale = check(condition::Kind::IfAbsent(true));
        assert_eq!(
            results(run(&e, &mut desc, &mut st, &at(2_000, vec![stale, put(b"d", b"x", None)]))),
            vec![(false, true), (false, false)]
        );
        assert_eq!(mvcc::get_live(&e, b"d", Version::MAX, 0), None, "nothing applied");
        let current = check(condition::Kind::VersionEquals(read_version.into()));
        assert_eq!(
            results(run(&e, &mut desc, &mut st, &at(3_000, vec![current, put(b"d", b"x", None)]))),
            vec![(true, true), (true, false)]
        );
        assert_eq!(
            mvcc::get_live(&e, b"h", Version::MAX, 0).unwrap().version,
            read_version,
            "a check writes no version"
        );
    }

    /// A leader's expiry floor travels in the command: every replica judges the
    /// write at it, however early the version's own time.
    #[test]
    fn a_command_judges_expiry_at_its_leaders_floor_when_later_than_its_version() {
        let (_d, e, mut desc, mut st) = setup();
        run(&e, &mut desc, &mut st, &at(1_000, vec![expiring(b"k", b"v", expiry::When::AtMs(6_000), None)]));
        let xx = Some(condition::Kind::IfPresent(true));
        let mut cmd = at(5_000, vec![put(b"k", b"w", xx.clone())]);
        cmd.expiry_judged_at_ms = 6_000;
        assert_eq!(results(run(&e, &mut desc, &mut st, &cmd)), vec![(false, false)], "expired at the floor");
        let mut cmd = at(5_001, vec![put(b"k", b"w", xx)]);
        cmd.expiry_judged_at_ms = 5_500;
        assert_eq!(results(run(&e, &mut desc, &mut st, &cmd)), vec![(true, true)], "live before it");
    }

    #[test]
    fn counters_and_keep_hold_an_expiry_and_a_due_one_deletes() {
        let (_d, e, mut desc, mut st) = setup();
        let expiry_of = |e: &Engine| mvcc::get_live(e, b"c", Version::MAX, 0).map(|l| l.expires_at_ms);
        run(&e, &mut desc, &mut st, &at(1_000, vec![expiring(b"c", b"1", expiry::When::AtMs(60_000), None)]));
        let incr = Mutation {
            key: b"c".to_vec(),
            condition: None,
            op: Some(mutation::Op::Increment(Increment { delta: 1, min: None, max: None })),
            expiry: None,
            value_kind: 0,
        };
        run(&e, &mut desc, &mut st, &at(2_000, vec![incr.clone()]));
        assert_eq!(expiry_of(&e), Some(60_000), "an increment keeps the expiry");
        run(&e, &mut desc, &mut st, &at(3_000, vec![expiring(b"c", b"7", expiry::When::Keep(true), None)]));
        assert_eq!(expiry_of(&e), Some(60_000), "a put with keep keeps it");
        assert_eq!(
            results(run(&e, &mut desc, &mut st, &at(4_000, vec![set_expiry(b"c", expiry::When::Never(true))]))),
            vec![(true, true)]
        );
        assert_eq!(expiry_of(&e), Some(mvcc_keys::NO_EXPIRY), "never removes it");
        assert_eq!(
            results(run(&e, &mut desc, &mut st, &at(5_000, vec![set_expiry(b"c", expiry::When::AtMs(4_999))]))),
            vec![(true, true)]
        );
        assert_eq!(expiry_of(&e), None, "an expiry already due deletes the key");
        assert_eq!(
            results(run(&e, &mut desc, &mut st, &at(6_000, vec![set_expiry(b"c", expiry::When::AfterMs(10))]))),
            vec![(true, false)],
            "no key: nothing to expire, and no failure"
        );
        run(&e, &mut desc, &mut st, &at(7_000, vec![incr]));
        assert_eq!(expiry_of(&e), Some(mvcc_keys::NO_EXPIRY), "a counter born after expiry has none");
        assert_eq!(mvcc::get_live(&e, b"c", Version::MAX, 0).unwrap().value, b"1");
    }

    #[test]
    fn failed_condition_applies_nothing_and_versions_grow() {
        let (_d, e, mut desc, mut st) = setup();
        let Applied::Write(r) = run(&e, &mut desc, &mut st, &write(vec![put(b"b", b"1", None)], b"")) else { panic!() };
        let v1 = r.results[0].version.unwrap();
        let batch = write(vec![put(b"c", b"x", None), put(b"b", b"2", Some(condition::Kind::IfAbsent(true)))], b"");
        let Applied::Write(r) = run(&e, &mut desc, &mut st, &batch) else { panic!() };
        assert!(r.results.iter().all(|r| !r.succeeded));
        assert_eq!(r.results[1].version, Some(v1));
        assert!(mvcc::get_live(&e, b"c", Version::MAX, 0).is_none(), "nothing partly applied");
        let Applied::Write(r) =
            run(&e, &mut desc, &mut st, &write(vec![put(b"b", b"3", Some(condition::Kind::VersionEquals(v1)))], b""))
        else {
            panic!()
        };
        assert!(r.results[0].succeeded);
        assert!(Version::from(r.results[0].version.as_ref().unwrap()) > Version::from(&v1));
    }

    #[test]
    fn commands_in_one_batch_see_each_other() {
        let (_d, e, mut desc, mut st) = setup();
        let mut ab = ApplyBatch::new(&e);
        let mut t = ApplyTarget { range_id: 2, desc: &mut desc, apply: &mut st, index: 0, written_bytes: 0 };
        let first = write(vec![put(b"b", b"1", Some(condition::Kind::IfAbsent(true)))], b"r1");
        let second = write(vec![put(b"b", b"2", Some(condition::Kind::IfAbsent(true)))], b"r2");
        let Applied::Write(r1) = apply_command(&mut ab, &mut t, &first) else { panic!() };
        let Applied::Write(r2) = apply_command(&mut ab, &mut t, &second) else { panic!() };
        let Applied::Write(again) = apply_command(&mut ab, &mut t, &first) else { panic!() };
        ab.commit();
        assert!(r1.results[0].succeeded);
        assert!(!r2.results[0].succeeded, "the second create sees the first one's uncommitted write");
        assert_eq!(again, r1, "a duplicate within the batch gets the recorded answer");
        assert_eq!(mvcc::get_live(&e, b"b", Version::MAX, 0).unwrap().value, b"1");
    }

    #[test]
    fn a_retry_regrouped_by_a_split_gets_each_keys_recorded_result() {
        let (_d, e, mut desc, mut st) = setup();
        let ops =
            vec![put(b"b", b"1", None), put(b"k", b"2", Some(condition::Kind::IfAbsent(true))), put(b"b", b"3", None)];
        let Applied::Write(first) = run(&e, &mut desc, &mut st, &write(ops, b"rid")) else { panic!() };
        assert_eq!(first.results.len(), 3);
        // After a split at "c", the retry's part for the right-hand range holds only "k".
        let part = write(vec![put(b"k", b"2", Some(condition::Kind::IfAbsent(true)))], b"rid");
        let Applied::Write(again) = run(&e, &mut desc, &mut st, &part) else { panic!() };
        assert_eq!(again.results, vec![first.results[1]], "answered from k's record, not applied again");
        let left = write(vec![put(b"b", b"1", None), put(b"b", b"3", None)], b"rid");
        let Applied::Write(again) = run(&e, &mut desc, &mut st, &left) else { panic!() };
        assert_eq!(again.results, vec![first.results[0], first.results[2]], "per-key order kept");
        // Keys that have a record are answered from it, and only the others are applied
        // (a retry whose first attempt was applied in other ranges, merged since).
        let other = write(vec![put(b"b", b"1", None), put(b"d", b"9", None)], b"rid");
        let Applied::Write(mixed) = run(&e, &mut desc, &mut st, &other) else { panic!() };
        assert_eq!(mixed.results[0], first.results[0], "b answered from its record");
        let newer = |a: &Option<cairn_proto::kv::Version>, b: &Option<cairn_proto::kv::Version>| {
            a.as_ref().map(Version::from) > b.as_ref().map(Version::from)
        };
        assert!(
            mixed.results[1].succeeded && newer(&mixed.results[1].version, &first.results[0].version),
            "d applied now"
        );
        assert_eq!(mvcc::get_live(&e, b"d", Version::MAX, 0).map(|l| l.value), Some(b"9".to_vec()));
        let Applied::Write(again) = run(&e, &mut desc, &mut st, &other) else { panic!() };
        assert_eq!(again, mixed, "and the mixed retry, sent again, is answered whole from records");
    }

    #[test]
    fn dedupe_records_expire_by_the_commands_own_clock() {
        let (_d, e, mut desc, mut st) = setup();
        let at = |ms: u64| {
            let mut c = write(vec![put(b"k", b"v", Some(condition::Kind::IfAbsent(true)))], b"rid");
            c.proposed_version = Some(Version { wall_ns: ms * 1_000_000, logical: 0, node_id: 1 }.into());
            c
        };
        let Applied::Write(first) = run(&e, &mut desc, &mut st, &at(1_000)) else { panic!() };
        let Applied::Write(within) = run(&e, &mut desc, &mut st, &at(1_000 + TTL_MS - 1)) else { panic!() };
        assert_eq!(first, within, "a retry within the TTL gets the recorded answer");
        let Applied::Write(after) = run(&e, &mut desc, &mut st, &at(1_000 + TTL_MS + 10)) else { panic!() };
        assert!(!after.results[0].succeeded, "after the TTL the id is forgotten and the command runs again");
    }

    /// The applied versions of one replica's only range, for its engine's dedupe expiry.
    struct OneRange(std::sync::Arc<parking_lot::Mutex<Version>>);

    impl crate::storage::applied::AppliedVersions for OneRange {
        fn spans(&self) -> Vec<crate::storage::applied::AppliedSpan> {
            let (lo, hi) = layout::dedupe_span(b"a", b"m");
            vec![crate::storage::applied::AppliedSpan { lo, hi, applied: *self.0.lock() }]
        }
    }

    /// Defect: dedupe records were dropped by each node's wall clock. A replica that
    /// applied a retry late (it lagged, say, through a partition) could find the record
    /// already compacted away and run the increment again, while the replicas that
    /// applied it in time answered from the record: the replicas diverged. Now a record
    /// goes only once the range's applied version has passed its expiry.
    #[test]
    fn a_replica_applying_a_retry_late_answers_it_as_the_others_did() {
        let ms = |ms: u64| Version { wall_ns: ms * 1_000_000, logical: 0, node_id: 1 };
        // Log time: the first attempt was written 25 minutes ago, the retry proposed a minute later.
        let now_ms = crate::hlc::wall_now_ms();
        let first_ms = now_ms - 25 * 60 * 1000;
        let incr = |at_ms: u64| {
            let m = Mutation {
                expiry: None,
                key: b"ctr".to_vec(),
                condition: None,
                op: Some(mutation::Op::Increment(cairn_proto::internal::Increment { delta: 1, min: None, max: None })),
                value_kind: 0,
            };
            let mut c = write(vec![m], b"claim-7");
            c.proposed_version = Some(ms(at_ms).into());
            c
        };
        let log = [incr(first_ms), incr(first_ms + 60_000)];
        let mut replicas = Vec::new();
        for _ in 0..2 {
            let (dir, engine, desc, st) = setup();
            let applied = std::sync::Arc::new(parking_lot::Mutex::new(Version::ZERO));
            engine.applied_spans().set_source(std::sync::Arc::new(OneRange(applied.clone())));
            replicas.push((dir, engine, desc, st, applied));
        }
        let mut answers = Vec::new();
        for (i, (_, engine, desc, st, applied)) in replicas.iter_mut().enumerate() {
            let _ = run(engine, desc, st, &log[0]);
            *applied.lock() = st.last_version;
            if i == 1 {
                // The lagging replica compacts (on its own clock, 25 minutes after the
                // record was written) before it applies the retry.
                engine.compact_all(Cf::Dedupe);
            }
            let Applied::Write(w) = run(engine, desc, st, &log[1]) else { panic!("retry not applied") };
            answers.push(w.results[0].counter);
        }
        assert_eq!(answers, vec![1, 1], "both replicas answer the retry from the record");
        let values: Vec<_> = replicas.iter().map(|(_, e, ..)| mvcc::get_live(e, b"ctr", Version::MAX, 0)).collect();
        assert_eq!(values[0], values[1], "the replicas' states agree");
    }

    #[test]
    fn dedupe_records_are_compacted_only_once_their_range_applied_past_their_expiry() {
        let (_d, e, mut desc, mut st) = setup();
        let applied = std::sync::Arc::new(parking_lot::Mutex::new(Version::ZERO));
        e.applied_spans().set_source(std::sync::Arc::new(OneRange(applied.clone())));
        let at = |ms: u64, rid: &[u8]| {
            let mut c = write(vec![put(b"k", b"v", None)], rid);
            c.proposed_version = Some(Version { wall_ns: ms * 1_000_000, logical: 0, node_id: 1 }.into());
            c
        };
        let _ = run(&e, &mut desc, &mut st, &at(1_000, b"old"));
        let record = layout::dedupe_key(b"k", b"old");
        *applied.lock() = st.last_version;
        e.compact_all(Cf::Dedupe);
        assert!(e.get(Cf::Dedupe, &record).is_some(), "kept while the range has not applied past its expiry");
        let _ = run(&e, &mut desc, &mut st, &at(1_000 + TTL_MS + 5, b"later"));
        *applied.lock() = st.last_version;
        e.compact_all(Cf::Dedupe);
        assert!(e.get(Cf::Dedupe, &record).is_none(), "dropped once the range's applied version passed its expiry");
        assert!(e.get(Cf::Dedupe, &layout::dedupe_key(b"k", b"later")).is_some(), "the newer record stays");
    }

    #[test]
    fn retried_request_id_applies_once() {
        let (_d, e, mut desc, mut st) = setup();
        let inc = |d| Mutation {
            expiry: None,
            key: b"ctr".to_vec(),
            condition: None,
            op: Some(mutation::Op::Increment(Increment { delta: d, min: None, max: Some(10) })),
            value_kind: 0,
        };
        let cmd = write(vec![inc(4)], b"req-1");
        run(&e, &mut desc, &mut st, &cmd);
        let Applied::Write(r) = run(&e, &mut desc, &mut st, &cmd) else { panic!() };
        assert_eq!(r.results[0].counter, 4);
        assert_eq!(mvcc::get_live(&e, b"ctr", Version::MAX, 0).unwrap().value, b"4");
        let Applied::Write(r) = run(&e, &mut desc, &mut st, &write(vec![inc(7)], b"")) else { panic!() };
        assert!(!r.results[0].succeeded, "bound max=10 holds");
        assert_eq!(mvcc::get_live(&e, b"ctr", Version::MAX, 0).unwrap().value, b"4");
    }

    #[test]
    fn a_split_keeps_the_vote_a_replica_of_the_new_range_already_cast() {
        let (_d, e, mut desc, mut st) = setup();
        // This node voted in term 9 for node 3 in range 9 before applying the split that makes it.
        let voted = raft::eraftpb::HardState { term: 9, vote: 3, commit: 0 };
        let mut b = e.batch();
        b.put(Cf::RaftState, &layout::hard_state_key(9), &voted.encode_to_vec());
        e.commit(b, true);
        let split = RaftCommand {
            cmd: Some(raft_command::Cmd::Split(SplitCommand {
                split_key: b"g".to_vec(),
                new_range_id: 9,
                sticky: false,
            })),
            ..Default::default()
        };
        assert!(matches!(run(&e, &mut desc, &mut st, &split), Applied::Split { .. }));
        let raw = e.get(Cf::RaftState, &layout::hard_state_key(9)).unwrap();
        let hs = raft::eraftpb::HardState::decode(raw.as_slice()).unwrap();
        assert_eq!((hs.term, hs.vote, hs.commit), (9, 3, super::super::RAFT_INIT_INDEX));
    }

    #[test]
    fn split_shrinks_left_and_rejects_outside_keys() {
        let (_d, e, mut desc, mut st) = setup();
        let split = RaftCommand {
            cmd: Some(raft_command::Cmd::Split(SplitCommand {
                split_key: b"g".to_vec(),
                new_range_id: 9,
                sticky: false,
            })),
            ..Default::default()
        };
        let Applied::Split { left, right } = run(&e, &mut desc, &mut st, &split) else { panic!() };
        assert_eq!(
            (left.end.as_slice(), right.start.as_slice(), right.end.as_slice()),
            (&b"g"[..], &b"g"[..], &b"m"[..])
        );
        assert!(matches!(run(&e, &mut desc, &mut st, &write(vec![put(b"h", b"1", None)], b"")), Applied::Rejected(_)));
    }

    fn on(
        engine: &Engine,
        desc: &mut RangeDescriptor,
        st: &mut ApplyState,
        index: u64,
        cmd: raft_command::Cmd,
    ) -> Applied {
        let mut ab = ApplyBatch::new(engine);
        let range_id = desc.id;
        let mut t = ApplyTarget { range_id, desc, apply: st, index, written_bytes: 0 };
        let out = apply_command(&mut ab, &mut t, &RaftCommand { cmd: Some(cmd), ..write(vec![], b"") });
        // As the store does: the new apply state goes with the batch.
        ab.batch.put(
            Cf::RaftState,
            &layout::apply_state_key(range_id),
            &ApplyState { applied_index: index, ..*st }.encode(),
        );
        ab.commit();
        out
    }

    /// Ranges 2 = [a, m) and 3 = [m, z) with the same voters, as a split leaves them.
    fn neighbours(e: &Engine) -> (RangeDescriptor, ApplyState, RangeDescriptor, ApplyState) {
        let replicas = vec![cairn_proto::internal::Replica { node_id: 1, replica_id: 1, learner: false }];
        let epoch = Some(RangeEpoch { version: 2, conf_ver: 1 });
        let left = RangeDescriptor {
            id: 2,
            start: b"a".to_vec(),
            end: b"m".to_vec(),
            epoch,
            replicas: replicas.clone(),
            ..Default::default()
        };
        let right =
            RangeDescriptor { id: 3, start: b"m".to_vec(), end: b"z".to_vec(), epoch, replicas, ..Default::default() };
        let mut b = e.batch();
        write_initial_state(&mut b, &right, Version::ZERO);
        e.commit(b, true);
        (left, ApplyState::default(), right, ApplyState::default())
    }

    fn merge_cmd(right: &RangeDescriptor, index: u64, left: &RangeDescriptor) -> raft_command::Cmd {
        raft_command::Cmd::Merge(Box::new(MergeCommand {
            right: Some(right.clone()),
            right_frozen_index: index,
            right_last_version: Some(Version { wall_ns: 9_000_000_000, logical: 0, node_id: 1 }.into()),
            left_epoch: left.epoch,
        }))
    }

    #[test]
    fn a_frozen_range_takes_no_writes_and_its_left_neighbour_takes_over_its_span() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(dir.path(), &Default::default()).unwrap();
        let (mut left, mut lst, mut right, mut rst) = neighbours(&e);
        let put_q = raft_command::Cmd::Write(WriteBatch { mutations: vec![put(b"q", b"right", None)] });
        assert!(matches!(on(&e, &mut right, &mut rst, 11, put_q.clone()), Applied::Write(_)));
        let freeze = raft_command::Cmd::Freeze(cairn_proto::internal::FreezeCommand { left_range_id: 2 });
        let Applied::Frozen { desc: frozen, index, .. } = on(&e, &mut right, &mut rst, 12, freeze) else { panic!() };
        assert_eq!((frozen.frozen_for_merge, index), (true, 12));
        let Applied::Rejected(refused) = on(&e, &mut right, &mut rst, 13, put_q) else {
            panic!("a frozen range wrote")
        };
        assert!(refused.message.contains("frozen for a merge"), "{refused:?}");
        let split = raft_command::Cmd::Split(SplitCommand { split_key: b"t".to_vec(), new_range_id: 9, sticky: false });
        assert!(matches!(on(&e, &mut right, &mut rst, 14, split), Applied::Rejected(_)), "nor splits");

        let cmd = merge_cmd(&frozen, 12, &left);
        let Applied::Merged { desc, right_id, right_incomplete } = on(&e, &mut left, &mut lst, 5, cmd) else {
            panic!("merge refused")
        };
        assert_eq!((right_id, right_incomplete), (3, false));
        assert_eq!((desc.start.as_slice(), desc.end.as_slice()), (&b"a"[..], &b"z"[..]));
        assert!(desc.epoch.unwrap().version > 2, "a new epoch: routes to either old range are stale");
        assert!(lst.last_version.wall_ns >= 9_000_000_000, "versions stay above every version the right range wrote");
        assert_eq!(
            desc.merged_at.map(|v| Version::from(&v)),
            Some(lst.last_version),
            "older scan versions are refused"
        );
        assert!(e.get(Cf::RaftState, &layout::descriptor_key(3)).is_none(), "the right range's Raft state is gone");
        let tomb = e.get(Cf::RaftState, &layout::tombstone_key(3)).unwrap();
        assert_eq!(super::super::membership::Tombstone::decode(&tomb), super::super::membership::Tombstone::merged());
        assert_eq!(mvcc::get_live(&e, b"q", Version::MAX, 0).map(|l| l.value), Some(b"right".to_vec()));
        let put_q = raft_command::Cmd::Write(WriteBatch { mutations: vec![put(b"q", b"left", None)] });
        assert!(matches!(on(&e, &mut left, &mut lst, 6, put_q), Applied::Write(_)), "the left range takes its keys");
    }

    #[test]
    fn a_fenced_left_range_refuses_the_merge_and_a_lagging_right_replica_is_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(dir.path(), &Default::default()).unwrap();
        let (mut left, mut lst, mut right, mut rst) = neighbours(&e);
        let freeze = raft_command::Cmd::Freeze(cairn_proto::internal::FreezeCommand { left_range_id: 2 });
        let Applied::Frozen { desc: frozen, .. } = on(&e, &mut right, &mut rst, 12, freeze) else { panic!() };
        let prepared = left.clone();
        let Applied::Changed(fenced) = on(&e, &mut left, &mut lst, 5, raft_command::Cmd::Fence(Default::default()))
        else {
            panic!()
        };
        assert_eq!(fenced.epoch.unwrap().version, 3);
        let Applied::Rejected(e1) = on(&e, &mut left, &mut lst, 6, merge_cmd(&frozen, 12, &prepared)) else {
            panic!("a merge prepared before a fence applied")
        };
        assert_eq!(errors::kind_of(&e1), cairn_proto::internal::range_error::Kind::EpochMismatch);
        // This node's replica of the right range has applied only up to 12, not 40.
        let cmd = merge_cmd(&frozen, 40, &left);
        let Applied::Merged { right_incomplete, .. } = on(&e, &mut left, &mut lst, 7, cmd) else { panic!() };
        assert!(right_incomplete, "a replica that lacks the right range's final data must be rebuilt");
        let Applied::Changed(thawed) =
            on(&e, &mut right, &mut rst, 13, raft_command::Cmd::Unfreeze(Default::default()))
        else {
            panic!()
        };
        assert!(!thawed.frozen_for_merge);
    }
}
