//! Deliberately broken behaviours that prove the fault tests can fail.
//!
//! Compiled in only with the `fault-injection` cargo feature; a server built with it
//! reads `CAIRN_SABOTAGE` (one of the names below) at start-up and misbehaves
//! in exactly that one way. Without the feature `active` is a constant `false`
//! and every sabotaged branch compiles away, so release builds carry none of it.

/// One way of breaking a guarantee on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    /// `ack-before-fsync`: Raft log and state writes skip the fsync, and the WAL
    /// stays in process memory until RocksDB flushes it on its own, so a
    /// kill -9 loses writes that were already acknowledged.
    AckBeforeFsync,
    /// `stale-local-read`: linearizable reads skip ReadIndex and are served by
    /// whichever replica the request reaches, even one cut off from its group.
    StaleLocalRead,
    /// `apply-retry-twice`: the dedupe table is never consulted, so a retried
    /// request id is applied again.
    ApplyRetryTwice,
    /// `skip-epoch-check`: a write is proposed whatever epoch its sender saw, and
    /// applied even when a split has since moved its keys to another range, so a
    /// client with a stale route writes past the range that now owns the key.
    SkipEpochCheck,
    /// `batch-ids-per-group`: each range's part of a BatchWrite is deduplicated
    /// under its own id (the request id plus a hash of the part's first key), so a
    /// retry that a split regrouped applies the keys that moved again.
    BatchIdsPerGroup,
    /// `batch-get-per-key`: a BatchGet reads each key on its own (one after
    /// another), so it can see part of a single-range BatchWrite.
    BatchGetPerKey,
    /// `ignore-retired-tables`: ranges serve keys of a dropped table's id, so a
    /// node whose table cache is stale writes and reads the dropped table.
    IgnoreRetiredTables,
    /// `never-sync-votes`: a new term or vote is written without a sync, so a
    /// node that crashes right after voting may vote again in the same term.
    NeverSyncVotes,
    /// `keep-removed-replica-data`: a replica removed from its node (or found
    /// removed by replica GC) keeps its data, dedupe records and log on the disk.
    KeepRemovedReplicaData,
    /// `reuse-replica-ids`: a node added back to a range gets its node id as
    /// its peer id, which its earlier incarnation may have had, so the leader
    /// can count the old replica's acknowledgements for the new one.
    ReuseReplicaIds,
    /// `unconditional-transactions`: Redis transactions and scripts write their
    /// effects without conditioning them on the versions they read, so a Lua
    /// compare-and-set can overwrite a value that changed after its read.
    UnconditionalTransactions,
    /// `unproven-stale-reads`: a replica serves bounded-staleness reads without
    /// showing it is within the bound, so one cut off from its leader answers
    /// with whatever it last applied.
    UnprovenStaleReads,
    /// `merge-without-freeze-wait`: a merge does not wait for every replica of
    /// the right range to apply its freeze, and a left replica takes over the span
    /// whatever its copy of the right range holds, so a node whose copy lagged
    /// serves the merged range without the writes it had not applied.
    MergeWithoutFreezeWait,
    /// `feed-skip-catch-up`: a range feed resumed from a version starts with the
    /// changes applied after it registers, without replaying those between the
    /// consumer's checkpoint and then, so a resumed consumer misses them.
    FeedSkipCatchUp,
    /// `feed-resolved-from-clock`: a range feed reports the node's clock as
    /// resolved instead of the range's applied version, so a write proposed
    /// before and applied after that instant arrives below a resolved checkpoint.
    FeedResolvedFromClock,
    /// `script-batch-keeps-failed`: a script that fails inside a batch of
    /// scripts leaves what it wrote before failing in the batch's view, so the
    /// batch's write carries a failed script's half-done effects.
    ScriptBatchKeepsFailed,
}

impl Sabotage {
    pub fn parse(name: &str) -> Option<Sabotage> {
        match name {
            "ack-before-fsync" => Some(Sabotage::AckBeforeFsync),
            "stale-local-read" => Some(Sabotage::StaleLocalRead),
            "apply-retry-twice" => Some(Sabotage::ApplyRetryTwice),
            "skip-epoch-check" => Some(Sabotage::SkipEpochCheck),
            "batch-ids-per-group" => Some(Sabotage::BatchIdsPerGroup),
            "batch-get-per-key" => Some(Sabotage::BatchGetPerKey),
            "ignore-retired-tables" => Some(Sabotage::IgnoreRetiredTables),
            "never-sync-votes" => Some(Sabotage::NeverSyncVotes),
            "keep-removed-replica-data" => Some(Sabotage::KeepRemovedReplicaData),
            "reuse-replica-ids" => Some(Sabotage::ReuseReplicaIds),
            "unconditional-transactions" => Some(Sabotage::UnconditionalTransactions),
            "unproven-stale-reads" => Some(Sabotage::UnprovenStaleReads),
            "merge-without-freeze-wait" => Some(Sabotage::MergeWithoutFreezeWait),
            "feed-skip-catch-up" => Some(Sabotage::FeedSkipCatchUp),
            "feed-resolved-from-clock" => Some(Sabotage::FeedResolvedFromClock),
            "script-batch-keeps-failed" => Some(Sabotage::ScriptBatchKeepsFailed),
            _ => None,
        }
    }
}

/// Whether this build, in this process, misbehaves in way `s`.
#[cfg(feature = "fault-injection")]
pub fn active(s: Sabotage) -> bool {
    static CHOSEN: std::sync::OnceLock<Option<Sabotage>> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let name = std::env::var("CAIRN_SABOTAGE").ok()?;
        let chosen = Sabotage::parse(&name);
        if chosen.is_none() {
            eprintln!("cairn: unknown CAIRN_SABOTAGE value {name:?}; running unsabotaged");
        } else {
            eprintln!("cairn: SABOTAGED build running with {name}: this node is deliberately unsafe");
        }
        chosen
    }) == Some(s)
}

/// Whether this build, in this process, misbehaves in way `s`.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn active(_: Sabotage) -> bool {
    false
}
