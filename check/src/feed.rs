//! Change feeds. A feed streams every committed change of a table as events
//! (key, version, value or deletion) interleaved with resolved checkpoints: a
//! `Resolved(v)` promises that every change at or below `v` has been delivered
//! on this stream. A consumer may be killed and resume a new session from a
//! checkpoint, receiving every change above it. This module owns the check that
//! a run of such sessions kept those promises against the writes the test's
//! clients attempted:
//!
//! 1. within a session, one key's event versions strictly increase;
//! 2. within a session, resolved never goes back, nor below the session's start;
//! 3. within a session, no event arrives at or below a resolved already sent;
//! 4. a resolved is complete: every acknowledged write at or below it was
//!    delivered before it (in this session, or in an earlier one if it lies at
//!    or below the point this session resumed from);
//! 5. a session resumes no higher than anything resolved before it;
//! 6. every acknowledged write at or below the last resolved was delivered;
//! 7. every event is a change some write could have made;
//! 8. two sessions delivering the same key and version agree on its value.
//!
//! Writes at or below the point the first session started from are out of
//! scope: the consumer never asked for them. Acknowledged writes above the last
//! resolved are not required either (the feed never promised them);
//! `unresolved_acked` counts them so a test that waited long enough can insist
//! there are none.

use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt;

/// A commit version: (wall_ns, logical, node_id). Tuple order is version order.
pub type FeedVersion = (u64, u32, u32);

/// How a write the test attempted ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Committed at this version.
    Acked(FeedVersion),
    /// Definitely not applied.
    Failed,
    /// May or may not have applied, at a version nobody told us.
    Unknown,
}

/// One write a client attempted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedWrite {
    pub key: Vec<u8>,
    /// `None`: a deletion.
    pub value: Option<Vec<u8>>,
    pub outcome: WriteOutcome,
}

/// One record a feed session delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedRecord {
    /// A change; `value: None` is a deletion.
    Event { key: Vec<u8>, version: FeedVersion, value: Option<Vec<u8>> },
    /// Every change at or below this version has been delivered on this stream.
    Resolved(FeedVersion),
}

/// One run of the consumer, from its start until it was killed or stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedSession {
    /// The checkpoint it resumed from; `None`: started "now", before any write of interest.
    pub from: Option<FeedVersion>,
    pub records: Vec<FeedRecord>,
}

/// A broken promise, and the session (index into the sessions given) it showed in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedViolation {
    pub session: usize,
    pub problem: String,
}

impl fmt::Display for FeedViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session {}: {}", self.session, self.problem)
    }
}

/// How many violations are spelled out; a broken run can break a rule for
/// every event, and nobody reads the millionth.
const SHOWN: usize = 20;

/// Every broken rule in a run of `sessions` (in the order they ran) against the
/// `writes` the clients attempted. The earliest sessions' violations come first;
/// past `SHOWN` of them, one last entry says how many more there were.
pub fn feed_violations(writes: &[FeedWrite], sessions: &[FeedSession]) -> Vec<FeedViolation> {
    let mut out = Sink::default();
    for (s, session) in sessions.iter().enumerate() {
        check_key_order(s, session, &mut out);
        check_resolved_order(s, session, &mut out);
        check_events_after_resolved(s, session, &mut out);
    }
    check_resolved_complete(writes, sessions, &mut out);
    check_resumes(sessions, &mut out);
    check_acked_delivered(writes, sessions, &mut out);
    check_phantoms(writes, sessions, &mut out);
    check_replays_agree(sessions, &mut out);
    out.finish()
}

/// Acknowledged writes (in scope) above the highest resolved of any session:
/// not yet promised, so not checked. Zero once the consumer waited long enough.
pub fn unresolved_acked(writes: &[FeedWrite], sessions: &[FeedSession]) -> usize {
    let highest = highest_resolved(sessions);
    acked_in_scope(writes, sessions).filter(|&(v, _)| Some(v) > highest).count()
}

/// Rule 1: a key's changes arrive in version order, each once per session.
fn check_key_order(s: usize, session: &FeedSession, out: &mut Sink) {
    let mut last: HashMap<&[u8], FeedVersion> = HashMap::new();
    for e in events(session) {
        let Some(prev) = last.insert(e.key, e.version) else { continue };
        if e.version == prev {
            out.push(s, || format!("key {} delivered twice at {}", show_key(e.key), show_version(e.version)));
        } else if e.version < prev {
            out.push(s, || {
                format!(
                    "key {} at {} arrived after its change at {}",
                    show_key(e.key),
                    show_version(e.version),
                    show_version(prev)
                )
            });
        }
    }
}

/// Rule 2: a checkpoint, once promised, is not taken back.
fn check_resolved_order(s: usize, session: &FeedSession, out: &mut Sink) {
    let mut last = None;
    for r in resolveds(session) {
        if let Some(from) = session.from.filter(|&from| r < from) {
            out.push(s, || {
                format!(
                    "resolved {} is below the point the session resumed from, {}",
                    show_version(r),
                    show_version(from)
                )
            });
        }
        if let Some(prev) = last.filter(|&prev| r < prev) {
            out.push(s, || format!("resolved went back from {} to {}", show_version(prev), show_version(r)));
        }
        last = Some(r);
    }
}

/// Rule 3: after `Resolved(r)` nothing at or below `r` may still be coming; a
/// consumer that acted on the checkpoint would have missed it.
fn check_events_after_resolved(s: usize, session: &FeedSession, out: &mut Sink) {
    let mut resolved = None;
    for record in &session.records {
        match record {
            FeedRecord::Resolved(r) => resolved = resolved.max(Some(*r)),
            FeedRecord::Event { key, version, .. } => {
                let Some(r) = resolved.filter(|r| version <= r) else { continue };
                out.push(s, || {
                    format!(
                        "key {} at {} arrived after resolved {} had promised everything at or below it",
                        show_key(key),
                        show_version(*version),
                        show_version(r)
                    )
                });
            }
        }
    }
}

/// Rule 4: when a session sends `Resolved(r)`, every acknowledged write at or
/// below `r` has been delivered: in this session if it lies above the point the
/// session resumed from, else in an earlier one (this session never owed it).
/// The acknowledged writes are walked once per session in version order, a
/// pointer advancing as resolved versions pass them, so each is checked at the
/// first checkpoint of the session that covers it.
fn check_resolved_complete(writes: &[FeedWrite], sessions: &[FeedSession], out: &mut Sink) {
    let mut acked: Vec<(FeedVersion, &[u8])> = acked_in_scope(writes, sessions).collect();
    acked.sort_unstable();
    let mut earlier: HashSet<ChangeId<'_>> = HashSet::new();
    for (s, session) in sessions.iter().enumerate() {
        let mut here: HashSet<ChangeId<'_>> = HashSet::new();
        let mut next = 0;
        for record in &session.records {
            let r = match record {
                FeedRecord::Event { key, version, .. } => {
                    here.insert((key.as_slice(), *version));
                    continue;
                }
                FeedRecord::Resolved(r) => *r,
            };
            while let Some(&(v, key)) = acked.get(next).filter(|&&(v, _)| v <= r) {
                next += 1;
                let owed_here = above(v, session.from);
                let delivered = if owed_here { here.contains(&(key, v)) } else { earlier.contains(&(key, v)) };
                if !delivered {
                    out.push(s, || incomplete_resolved(r, key, v, session.from.filter(|_| !owed_here)));
                }
            }
        }
        earlier.extend(here);
    }
}

/// Rule 4's report; `resumed_from` is set when an earlier session owed the write.
fn incomplete_resolved(r: FeedVersion, key: &[u8], v: FeedVersion, resumed_from: Option<FeedVersion>) -> String {
    let (key, r, v) = (show_key(key), show_version(r), show_version(v));
    match resumed_from {
        None => format!("resolved {r} arrived before key {key} at {v}, an acknowledged write, was delivered"),
        Some(from) => format!(
            "resolved {r} covers key {key} at {v}, an acknowledged write at or below the resume point {}, \
             which no earlier session delivered",
            show_version(from)
        ),
    }
}

/// Rule 5: resuming above every checkpoint received so far would skip whatever
/// lies between. The first session's own start counts as received: nothing
/// below it was wanted, so starting there again leaves no window.
fn check_resumes(sessions: &[FeedSession], out: &mut Sink) {
    let mut covered = sessions.first().and_then(|first| first.from);
    for (s, pair) in sessions.windows(2).enumerate() {
        covered = covered.max(resolveds(&pair[0]).max());
        let Some(from) = pair[1].from.filter(|&from| Some(from) > covered) else { continue };
        let before = covered.map_or_else(|| "none".to_string(), show_version);
        out.push(s + 1, || {
            format!(
                "resumed from {}, above the highest resolved received before it ({before}): \
                 changes in between may never be delivered",
                show_version(from)
            )
        });
    }
}

/// Rule 6: the bottom line of rule 4. A write rule 4 found late but that some
/// session did deliver is a late delivery; one this finds is lost outright.
/// Reported in the first session whose checkpoint covered it.
fn check_acked_delivered(writes: &[FeedWrite], sessions: &[FeedSession], out: &mut Sink) {
    let Some(highest) = highest_resolved(sessions) else { return };
    let delivered: HashSet<ChangeId<'_>> = sessions.iter().flat_map(events).map(|e| (e.key, e.version)).collect();
    // The highest resolved of sessions 0..=s, for each s: non-decreasing, so searchable.
    let mut marks = Vec::with_capacity(sessions.len());
    for session in sessions {
        marks.push(marks.last().copied().flatten().max(resolveds(session).max()));
    }
    for (v, key) in acked_in_scope(writes, sessions) {
        if v > highest || delivered.contains(&(key, v)) {
            continue;
        }
        let s = marks.partition_point(|&mark| mark < Some(v));
        out.push(s, || {
            format!(
                "key {} at {}, an acknowledged write this session's resolved covered, was never delivered",
                show_key(key),
                show_version(v)
            )
        });
    }
}

/// What the attempted writes allow an event to carry.
#[derive(Default)]
struct WriteIndex<'a> {
    /// Values acknowledged at each key and version (one, unless the input is odd).
    acked: HashMap<ChangeId<'a>, Vec<Value<'a>>>,
    /// (key, value) that an acknowledged or in-doubt write may have put there.
    possible: HashSet<(&'a [u8], Value<'a>)>,
    /// (key, value) of definitely failed writes, only to say so in the report.
    failed: HashSet<(&'a [u8], Value<'a>)>,
}

impl<'a> WriteIndex<'a> {
    fn new(writes: &'a [FeedWrite]) -> Self {
        let mut index = WriteIndex::default();
        for w in writes {
            let change = (w.key.as_slice(), w.value.as_deref());
            match w.outcome {
                WriteOutcome::Acked(v) => {
                    index.acked.entry((change.0, v)).or_default().push(change.1);
                    index.possible.insert(change);
                }
                WriteOutcome::Unknown => {
                    index.possible.insert(change);
                }
                WriteOutcome::Failed => {
                    index.failed.insert(change);
                }
            }
        }
        index
    }

    /// Why `e` is a change no write made, or `None` if some write could have.
    fn phantom(&self, e: &Event<'_>) -> Option<Phantom<'a>> {
        if let Some(values) = self.acked.get(&(e.key, e.version)) {
            return (!values.contains(&e.value)).then(|| Phantom::NotAcked(values.first().copied().flatten()));
        }
        let change = (e.key, e.value);
        if self.possible.contains(&change) {
            None
        } else if self.failed.contains(&change) {
            Some(Phantom::OnlyFailed)
        } else {
            Some(Phantom::Unwritten)
        }
    }
}

/// How an event fails to match the writes; kept apart from its wording so a
/// report is only formatted if it is shown.
enum Phantom<'a> {
    /// A write was acknowledged at the event's version, with this other value.
    NotAcked(Value<'a>),
    OnlyFailed,
    Unwritten,
}

fn describe_phantom(e: &Event<'_>, phantom: &Phantom<'_>) -> String {
    let shown = format!("key {} at {} carries {}", show_key(e.key), show_version(e.version), show_value(e.value));
    match phantom {
        Phantom::NotAcked(wrote) => {
            format!("{shown}, but the write acknowledged at that version wrote {}", show_value(*wrote))
        }
        Phantom::OnlyFailed => format!("{shown}, which only a failed write wrote"),
        Phantom::Unwritten => format!("{shown}, which no write of that key wrote"),
    }
}

/// Rule 7: no event the clients' writes could not have produced.
fn check_phantoms(writes: &[FeedWrite], sessions: &[FeedSession], out: &mut Sink) {
    let index = WriteIndex::new(writes);
    for (s, session) in sessions.iter().enumerate() {
        for e in events(session) {
            if let Some(phantom) = index.phantom(&e) {
                out.push(s, || describe_phantom(&e, &phantom));
            }
        }
    }
}

/// Rule 8: a replay after a resume repeats the change, it does not rewrite it.
/// Each delivery is compared with the first session that delivered that key and
/// version; repeats within one session are rule 1's business.
fn check_replays_agree(sessions: &[FeedSession], out: &mut Sink) {
    let mut first: HashMap<ChangeId<'_>, (usize, Value<'_>)> = HashMap::new();
    for (s, session) in sessions.iter().enumerate() {
        for e in events(session) {
            let (t, value) = match first.entry((e.key, e.version)) {
                Entry::Vacant(slot) => {
                    slot.insert((s, e.value));
                    continue;
                }
                Entry::Occupied(seen) => *seen.get(),
            };
            if t != s && value != e.value {
                out.push(s, || {
                    format!(
                        "key {} at {} carries {}, but session {t} delivered {} at that version",
                        show_key(e.key),
                        show_version(e.version),
                        show_value(e.value),
                        show_value(value)
                    )
                });
            }
        }
    }
}

/// What identifies one change: its key and version.
type ChangeId<'a> = (&'a [u8], FeedVersion);

/// A change's value, borrowed; `None` is a deletion.
type Value<'a> = Option<&'a [u8]>;

/// A borrowed view of one `FeedRecord::Event`.
struct Event<'a> {
    key: &'a [u8],
    version: FeedVersion,
    value: Value<'a>,
}

fn events(session: &FeedSession) -> impl Iterator<Item = Event<'_>> {
    session.records.iter().filter_map(|record| match record {
        FeedRecord::Event { key, version, value } => Some(Event { key, version: *version, value: value.as_deref() }),
        FeedRecord::Resolved(_) => None,
    })
}

fn resolveds(session: &FeedSession) -> impl Iterator<Item = FeedVersion> + '_ {
    session.records.iter().filter_map(|record| match record {
        FeedRecord::Resolved(r) => Some(*r),
        FeedRecord::Event { .. } => None,
    })
}

fn highest_resolved(sessions: &[FeedSession]) -> Option<FeedVersion> {
    sessions.iter().flat_map(resolveds).max()
}

/// Whether `v` lies above a start point; `None` started below everything.
fn above(v: FeedVersion, from: Option<FeedVersion>) -> bool {
    from.is_none_or(|from| v > from)
}

/// The acknowledged writes the consumer asked for: those above the first session's start.
fn acked_in_scope<'a>(
    writes: &'a [FeedWrite],
    sessions: &[FeedSession],
) -> impl Iterator<Item = (FeedVersion, &'a [u8])> + 'a {
    let start = sessions.first().and_then(|first| first.from);
    writes.iter().filter_map(move |w| match w.outcome {
        WriteOutcome::Acked(v) if above(v, start) => Some((v, w.key.as_slice())),
        _ => None,
    })
}

fn show_version((wall, logical, node): FeedVersion) -> String {
    format!("{wall}.{logical}.{node}")
}

fn show_key(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// Values can be large; the first bytes are enough to tell two apart in a report.
fn show_value(value: Value<'_>) -> String {
    const PREFIX: usize = 32;
    match value {
        None => "a deletion".to_string(),
        Some(v) if v.len() <= PREFIX => format!("{:?}", String::from_utf8_lossy(v)),
        Some(v) => format!("{:?}... ({} bytes)", String::from_utf8_lossy(&v[..PREFIX]), v.len()),
    }
}

/// Collects violations, keeping only the `SHOWN` from the earliest sessions and
/// counting the rest. A problem is formatted only if it is kept, so a run broken
/// at every event costs a count, not a string per event.
#[derive(Default)]
struct Sink {
    /// Max-heap on (session, arrival): its top is the first to give way.
    kept: BinaryHeap<(usize, u64, String)>,
    arrivals: u64,
    dropped: usize,
    /// The earliest session among the dropped ones, to label the summary line.
    first_dropped: Option<usize>,
}

impl Sink {
    fn push(&mut self, session: usize, problem: impl FnOnce() -> String) {
        self.arrivals += 1;
        let rank = (session, self.arrivals);
        if self.kept.len() >= SHOWN && self.kept.peek().is_some_and(|top| rank > (top.0, top.1)) {
            self.drop_one(session);
            return;
        }
        self.kept.push((session, self.arrivals, problem()));
        if self.kept.len() > SHOWN {
            if let Some((displaced, _, _)) = self.kept.pop() {
                self.drop_one(displaced);
            }
        }
    }

    fn drop_one(&mut self, session: usize) {
        self.dropped += 1;
        self.first_dropped = Some(self.first_dropped.map_or(session, |s| s.min(session)));
    }

    fn finish(self) -> Vec<FeedViolation> {
        let mut shown: Vec<FeedViolation> = self
            .kept
            .into_sorted_vec()
            .into_iter()
            .map(|(session, _, problem)| FeedViolation { session, problem })
            .collect();
        if let Some(session) = self.first_dropped {
            let problem = format!("... and {} more, in this session or later", self.dropped);
            shown.push(FeedViolation { session, problem });
        }
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(wall: u64) -> FeedVersion {
        (wall, 0, 1)
    }

    fn write(key: &str, value: Option<&str>, outcome: WriteOutcome) -> FeedWrite {
        FeedWrite { key: key.into(), value: value.map(Into::into), outcome }
    }

    fn put(key: &str, value: &str, wall: u64) -> FeedWrite {
        write(key, Some(value), WriteOutcome::Acked(at(wall)))
    }

    fn event(key: &str, wall: u64, value: Option<&str>) -> FeedRecord {
        event_at(key, at(wall), value)
    }

    fn event_at(key: &str, version: FeedVersion, value: Option<&str>) -> FeedRecord {
        FeedRecord::Event { key: key.into(), version, value: value.map(Into::into) }
    }

    fn resolved(wall: u64) -> FeedRecord {
        FeedRecord::Resolved(at(wall))
    }

    fn session(from: Option<u64>, records: Vec<FeedRecord>) -> FeedSession {
        FeedSession { from: from.map(at), records }
    }

    /// The one violation `feed_violations` finds; fails if there are more or none.
    fn only(writes: &[FeedWrite], sessions: &[FeedSession]) -> FeedViolation {
        let mut found = feed_violations(writes, sessions);
        assert_eq!(found.len(), 1, "{found:#?}");
        found.remove(0)
    }

    #[test]
    fn a_clean_resumed_feed_passes() {
        let writes = vec![
            put("a", "1", 10),
            // Same wall time, later logical tick, other node: ordered after a@10.
            write("b", Some("2"), WriteOutcome::Acked((10, 1, 2))),
            write("a", None, WriteOutcome::Acked(at(30))),
            write("c", Some("x"), WriteOutcome::Failed),
            write("b", Some("3"), WriteOutcome::Unknown),
            put("a", "4", 50),
        ];
        let sessions = vec![
            session(
                None,
                vec![
                    event("a", 10, Some("1")),
                    resolved(5),
                    event_at("b", (10, 1, 2), Some("2")),
                    resolved(15),
                    event("a", 30, None),
                ],
            ),
            // Resumed from 15: replays a@30, picks up the in-doubt write that did land.
            session(Some(15), vec![event("a", 30, None), event("b", 35, Some("3")), resolved(40)]),
            // Resumed from 40: a@10 and b@10.1.2 are owed by session 0, which delivered them.
            session(Some(40), vec![resolved(45), event("a", 50, Some("4")), resolved(60)]),
        ];
        assert_eq!(feed_violations(&writes, &sessions), vec![]);
        assert_eq!(unresolved_acked(&writes, &sessions), 0);
    }

    #[test]
    fn acked_writes_past_the_last_resolved_are_counted_not_reported() {
        let writes = vec![put("a", "1", 10), put("a", "2", 50)];
        let sessions = vec![session(None, vec![event("a", 10, Some("1")), resolved(20)])];
        assert_eq!(feed_violations(&writes, &sessions), vec![]);
        assert_eq!(unresolved_acked(&writes, &sessions), 1);
        assert_eq!(unresolved_acked(&writes, &[]), 2);
    }

    #[test]
    fn writes_at_or_below_the_first_start_are_out_of_scope() {
        let writes = vec![put("a", "1", 5), put("a", "2", 10), put("a", "3", 15)];
        let sessions = vec![session(Some(10), vec![event("a", 15, Some("3")), resolved(20)])];
        assert_eq!(feed_violations(&writes, &sessions), vec![]);
        assert_eq!(unresolved_acked(&writes, &sessions), 0);
    }

    #[test]
    fn events_of_a_key_out_of_order_are_caught() {
        let writes = vec![put("a", "1", 10), put("a", "2", 20)];
        let backwards = session(None, vec![event("a", 20, Some("2")), event("a", 10, Some("1")), resolved(30)]);
        let v = only(&writes, &[backwards]);
        assert_eq!(v.to_string(), "session 0: key a at 10.0.1 arrived after its change at 20.0.1");

        let twice = session(None, vec![event("a", 10, Some("1")), event("a", 10, Some("1")), resolved(10)]);
        let v = only(&writes[..1], &[twice]);
        assert!(v.problem.contains("delivered twice at 10.0.1"), "{v}");
    }

    #[test]
    fn resolved_going_back_is_caught() {
        let v = only(&[], &[session(None, vec![resolved(20), resolved(20), resolved(10)])]);
        assert_eq!(v.problem, "resolved went back from 20.0.1 to 10.0.1");

        let v = only(&[], &[session(Some(20), vec![resolved(10)])]);
        assert!(v.problem.contains("below the point the session resumed from, 20.0.1"), "{v}");
    }

    #[test]
    fn an_event_at_or_below_a_sent_resolved_is_caught() {
        // An in-doubt write: the feed may deliver it, just not after promising past it.
        let writes = vec![write("a", Some("x"), WriteOutcome::Unknown)];
        let v = only(&writes, &[session(None, vec![resolved(20), event("a", 20, Some("x"))])]);
        assert!(v.problem.contains("key a at 20.0.1 arrived after resolved 20.0.1"), "{v}");
    }

    #[test]
    fn a_resolved_ahead_of_an_acked_write_is_caught() {
        // Session 0 promises 20 without a@10; session 1 does deliver it, so it is late, not lost.
        let writes = vec![put("a", "1", 10)];
        let sessions =
            vec![session(None, vec![resolved(20)]), session(None, vec![event("a", 10, Some("1")), resolved(20)])];
        let v = only(&writes, &sessions);
        assert_eq!(v.session, 0);
        assert!(v.problem.contains("resolved 20.0.1 arrived before key a at 10.0.1"), "{v}");
    }

    #[test]
    fn a_resume_above_everything_resolved_is_caught() {
        let writes = vec![put("a", "1", 10)];
        let sessions =
            vec![session(None, vec![event("a", 10, Some("1")), resolved(10)]), session(Some(20), vec![resolved(30)])];
        let v = only(&writes, &sessions);
        assert_eq!(v.session, 1);
        assert!(
            v.problem.contains("resumed from 20.0.1, above the highest resolved received before it (10.0.1)"),
            "{v}"
        );

        // Killed before any checkpoint: starting over from the first start is no window.
        let sessions = vec![session(Some(5), vec![]), session(Some(5), vec![event("a", 10, Some("1")), resolved(10)])];
        assert_eq!(feed_violations(&writes, &sessions), vec![]);
    }

    #[test]
    fn an_acked_write_never_delivered_is_caught() {
        // Rule 4 necessarily fires too (a resolved covered the write); this rule
        // adds that no session ever delivered it.
        let writes = vec![put("a", "1", 10), put("b", "1", 12)];
        let sessions = vec![session(None, vec![event("b", 12, Some("1")), resolved(20)])];
        let mut alone = Sink::default();
        check_acked_delivered(&writes, &sessions, &mut alone);
        let alone = alone.finish();
        assert_eq!(alone.len(), 1, "{alone:#?}");
        assert_eq!(alone[0].session, 0);
        assert!(alone[0].problem.contains("key a at 10.0.1, an acknowledged write"), "{}", alone[0]);

        let all = feed_violations(&writes, &sessions);
        assert_eq!(all.len(), 2, "{all:#?}");
        assert!(all.iter().any(|v| v.problem.contains("was never delivered")));
        assert!(all.iter().any(|v| v.problem.contains("arrived before key a at 10.0.1")));
    }

    #[test]
    fn phantom_events_are_caught() {
        let writes = vec![
            put("a", "1", 10),
            write("b", Some("y"), WriteOutcome::Failed),
            write("c", Some("z"), WriteOutcome::Unknown),
            write("c", None, WriteOutcome::Unknown),
        ];
        let mut records = vec![
            event("a", 10, Some("2")), // not what was acknowledged at 10
            event("b", 11, Some("y")), // only a failed write wrote it
            event("c", 12, Some("z")), // in doubt, landed: fine
            event("c", 13, None),      // in-doubt deletion, landed: fine
            event("a", 14, None),      // nobody deleted a
        ];
        records.push(FeedRecord::Event { key: vec![0xff], version: at(15), value: Some(b"q".to_vec()) });
        records.push(resolved(20));
        let found = feed_violations(&writes, &[session(None, records)]);
        let problems: Vec<&str> = found.iter().map(|v| v.problem.as_str()).collect();
        assert_eq!(
            problems,
            vec![
                "key a at 10.0.1 carries \"2\", but the write acknowledged at that version wrote \"1\"",
                "key b at 11.0.1 carries \"y\", which only a failed write wrote",
                "key a at 14.0.1 carries a deletion, which no write of that key wrote",
                "key \u{fffd} at 15.0.1 carries \"q\", which no write of that key wrote",
            ]
        );
    }

    #[test]
    fn replays_that_disagree_are_caught() {
        let writes = vec![write("a", Some("x"), WriteOutcome::Unknown), write("a", Some("y"), WriteOutcome::Unknown)];
        let sessions =
            vec![session(None, vec![event("a", 10, Some("x"))]), session(None, vec![event("a", 10, Some("y"))])];
        let v = only(&writes, &sessions);
        assert_eq!(
            v.to_string(),
            "session 1: key a at 10.0.1 carries \"y\", but session 0 delivered \"x\" at that version"
        );
    }

    #[test]
    fn a_broken_run_is_capped_earliest_sessions_first() {
        // Session 0: 30 phantoms (rule 7, checked late). Session 1: 30 duplicates
        // (rule 1, checked first). The cap keeps session 0's.
        let phantoms = (0..30).map(|i| event("p", 100 + i, Some("nobody"))).collect();
        let writes = vec![write("a", Some("x"), WriteOutcome::Unknown)];
        let duplicates = (0..31).map(|_| event("a", 10, Some("x"))).collect();
        let found = feed_violations(&writes, &[session(None, phantoms), session(None, duplicates)]);
        assert_eq!(found.len(), SHOWN + 1);
        assert!(found[..SHOWN].iter().all(|v| v.session == 0 && v.problem.contains("no write")), "{found:#?}");
        assert_eq!(found[SHOWN].to_string(), "session 0: ... and 40 more, in this session or later");
    }

    #[test]
    fn a_large_resumed_feed_passes() {
        // 50k acknowledged writes over 1000 keys; five sessions each resume halfway
        // through the previous one's range, so half of every session is replay.
        const WRITES: usize = 50_000;
        let version = |i: usize| ((i as u64 + 1) * 10, (i % 2) as u32, (i % 3) as u32);
        let writes: Vec<FeedWrite> = (0..WRITES)
            .map(|i| FeedWrite {
                key: format!("k{}", i % 1000).into_bytes(),
                value: Some(i.to_string().into_bytes()),
                outcome: WriteOutcome::Acked(version(i)),
            })
            .collect();
        let sessions: Vec<FeedSession> = (0..WRITES)
            .step_by(10_000)
            .map(|lo| {
                let mut records = Vec::new();
                for (i, w) in writes.iter().enumerate().take(WRITES.min(lo + 20_000)).skip(lo) {
                    records.push(FeedRecord::Event { key: w.key.clone(), version: version(i), value: w.value.clone() });
                    if (i + 1) % 100 == 0 {
                        records.push(FeedRecord::Resolved(version(i)));
                    }
                }
                FeedSession { from: lo.checked_sub(1).map(version), records }
            })
            .collect();
        assert_eq!(feed_violations(&writes, &sessions), vec![]);
        assert_eq!(unresolved_acked(&writes, &sessions), 0);
    }

    #[test]
    fn long_values_are_shortened_in_reports() {
        let long = "v".repeat(100);
        assert_eq!(show_value(Some(long.as_bytes())), format!("{:?}... (100 bytes)", "v".repeat(32)));
        assert_eq!(show_value(None), "a deletion");
    }
}
