//! The simulator's range merges: the steps `meta::merge` takes through the
//! gateway (freeze the right range, wait until every replica of it applied the
//! freeze, merge on the left range; on any failure fence the left range and
//! thaw the right one unless the fence shows the merge applied), taken here
//! straight on the stores, under the run's faults. An abandoned merge is
//! retried until its range is thawed: a range left frozen would stop serving.

use super::{SimNode, World};
use crate::raftstore::apply::{self, Applied};
use crate::raftstore::msg::StoreMsg;
use crate::raftstore::store::ReplicaView;
use cairn_proto::internal::{
    raft_command, FenceCommand, FreezeCommand, MergeCommand, RangeDescriptor, RangeEpoch, RangeError, UnfreezeCommand,
};
use tokio::sync::oneshot;

/// How long the freeze may take to reach every replica before the merge is abandoned.
const FREEZE_WAIT_MS: u64 = 3_000;
/// How long past that deadline an unanswered proposal is waited for.
const ANSWER_WAIT_MS: u64 = 10_000;

#[derive(Debug)]
pub(super) enum Stage {
    Freeze,
    WaitFrozen { right: RangeDescriptor, index: u64, last_version: Option<cairn_proto::kv::Version> },
    Merge { right: RangeDescriptor },
    Fence { right: RangeDescriptor },
    Thaw { right: RangeDescriptor },
}

pub(super) struct Merging {
    left: u64,
    left_epoch: Option<RangeEpoch>,
    /// The right range as it was when the merge began.
    right: RangeDescriptor,
    stage: Stage,
    waiting: Option<oneshot::Receiver<Result<Applied, RangeError>>>,
    deadline_ms: u64,
}

impl World {
    /// Starts merging `left` with its right-hand neighbour, if the two may merge.
    pub(super) fn start_merge(&mut self, left: &ReplicaView, leaders: &[(usize, ReplicaView)]) {
        if self.merging.is_some() || left.desc.end.is_empty() || left.desc.frozen_for_merge {
            return;
        }
        let Some((_, right)) = leaders.iter().find(|(_, v)| v.desc.start == left.desc.end) else { return };
        if right.desc.frozen_for_merge || !apply::aligned(&left.desc, &right.desc) {
            return;
        }
        self.merging = Some(Merging {
            left: left.range_id,
            left_epoch: left.desc.epoch,
            right: right.desc.clone(),
            stage: Stage::Freeze,
            waiting: None,
            deadline_ms: self.now_ms + FREEZE_WAIT_MS,
        });
    }

    /// Sends `cmd` to the node that leads `range_id` now.
    fn propose_on_leader(
        &self,
        range_id: u64,
        cmd: raft_command::Cmd,
    ) -> Option<oneshot::Receiver<Result<Applied, RangeError>>> {
        let (node, _) = self.leader_of(range_id)?;
        let running = self.nodes[node].running.as_ref()?;
        let (tx, rx) = oneshot::channel();
        let msg = StoreMsg::Command { range_id, epoch: None, cmd: apply::admin_command(cmd), reply: tx };
        running.handle.send(msg).ok()?;
        Some(rx)
    }

    /// Whether every replica of `right` has applied its freeze at `index`.
    fn frozen_everywhere(&self, right: &RangeDescriptor, index: u64) -> bool {
        if crate::sabotage::active(crate::sabotage::Sabotage::MergeWithoutFreezeWait) {
            return true;
        }
        right.replicas.iter().all(|r| {
            let views = self.nodes.iter().filter(|n| n.id == r.node_id).filter_map(|n: &SimNode| n.running.as_ref());
            views
                .flat_map(|run| run.store.replica_views())
                .any(|v| v.range_id == right.id && v.applied >= index && v.desc.frozen_for_merge)
        })
    }

    /// Advances the merge in progress by at most one step.
    pub(super) fn drive_merge(&mut self) {
        let Some(mut m) = self.merging.take() else { return };
        if let Some(rx) = m.waiting.as_mut() {
            let answer = match rx.try_recv() {
                // A proposal whose answer never comes (its entry was dropped) is given up.
                Err(oneshot::error::TryRecvError::Empty) if self.now_ms > m.deadline_ms + ANSWER_WAIT_MS => None,
                Err(oneshot::error::TryRecvError::Empty) => {
                    self.merging = Some(m);
                    return;
                }
                Ok(a) => Some(a),
                Err(oneshot::error::TryRecvError::Closed) => None,
            };
            m.waiting = None;
            let right = m.right.clone();
            m.stage = match (std::mem::replace(&mut m.stage, Stage::Freeze), answer) {
                (Stage::Freeze, Some(Ok(Applied::Frozen { desc, index, last_version }))) => {
                    Stage::WaitFrozen { right: desc, index, last_version: Some(last_version.into()) }
                }
                (Stage::Freeze, _) => Stage::Fence { right },
                (Stage::Merge { .. }, Some(Ok(Applied::Merged { .. }))) => {
                    self.count("merge", true);
                    return;
                }
                (Stage::Merge { right }, _) => Stage::Fence { right },
                (Stage::Fence { right }, Some(Ok(Applied::Changed(left)))) => {
                    if crate::keys::in_range(&right.start, &left.start, &left.end) {
                        self.count("merge", true);
                        return;
                    }
                    Stage::Thaw { right }
                }
                (Stage::Thaw { .. }, Some(Ok(Applied::Changed(_)))) => {
                    self.count("merge", false);
                    return;
                }
                // Not answered (leadership moved, a node went down): ask again.
                (stage @ (Stage::Fence { .. } | Stage::Thaw { .. }), _) => stage,
                (stage @ Stage::WaitFrozen { .. }, _) => stage,
            };
        }
        let (stage, next) = match std::mem::replace(&mut m.stage, Stage::Freeze) {
            Stage::Freeze => {
                let cmd = raft_command::Cmd::Freeze(FreezeCommand { left_range_id: m.left });
                match self.propose_on_leader(m.right.id, cmd) {
                    Some(rx) => (Stage::Freeze, Some(rx)),
                    None => (Stage::Fence { right: m.right.clone() }, None),
                }
            }
            Stage::WaitFrozen { right, index, last_version } => {
                if self.frozen_everywhere(&right, index) {
                    let cmd = raft_command::Cmd::Merge(Box::new(MergeCommand {
                        right: Some(right.clone()),
                        right_frozen_index: index,
                        right_last_version: last_version,
                        left_epoch: m.left_epoch,
                    }));
                    match self.propose_on_leader(m.left, cmd) {
                        Some(rx) => (Stage::Merge { right }, Some(rx)),
                        None => (Stage::Fence { right }, None),
                    }
                } else if self.now_ms > m.deadline_ms {
                    (Stage::Fence { right }, None)
                } else {
                    (Stage::WaitFrozen { right, index, last_version }, None)
                }
            }
            Stage::Merge { right } => (Stage::Fence { right }, None),
            Stage::Fence { right } => {
                let rx = self.propose_on_leader(m.left, raft_command::Cmd::Fence(FenceCommand {}));
                (Stage::Fence { right }, rx)
            }
            Stage::Thaw { right } => {
                let rx = self.propose_on_leader(right.id, raft_command::Cmd::Unfreeze(UnfreezeCommand {}));
                (Stage::Thaw { right }, rx)
            }
        };
        m.stage = stage;
        m.waiting = next;
        self.merging = Some(m);
    }
}
