//! Runs the controller on the node that leads the meta range: reads the
//! cluster view, asks `plan` for actions, and executes them (bounded in
//! number, never two on the same range at once). Every decision is logged and
//! counted.

use super::plan::{self, Action, NodeView, RangeView};
use crate::gateway::{admin, Gateway};
use crate::meta::{self, registry};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;

const MAX_CONCURRENT_ACTIONS: usize = 4;

#[derive(Clone)]
pub struct Controller {
    gw: Arc<Gateway>,
    rf: usize,
    in_flight: Arc<Mutex<HashSet<u64>>>,
}

impl Controller {
    pub fn new(gw: Arc<Gateway>, rf: usize) -> Self {
        Controller { gw, rf, in_flight: Default::default() }
    }

    fn leads_meta(&self) -> bool {
        self.gw.store.registry.read().get(&meta::META_RANGE_ID).is_some_and(|r| r.is_leader())
    }

    pub async fn tick(self) {
        if !self.leads_meta() {
            return;
        }
        let (nodes, records) = match (registry::list(&self.gw).await, meta::load_directory(&self.gw).await) {
            (Ok(n), Ok(r)) => (n, r),
            _ => return,
        };
        let now = crate::hlc::wall_now_ms();
        let nodes: Vec<NodeView> = nodes
            .iter()
            .map(|n| NodeView { id: n.id, live: registry::is_live(n, now), zone: n.zone.clone() })
            .collect();
        let busy = self.in_flight.lock().clone();
        let ranges: Vec<RangeView> = records
            .iter()
            .filter_map(|r| r.desc.as_ref())
            .filter(|d| !busy.contains(&d.id))
            .map(|d| RangeView { id: d.id, replicas: d.replicas.iter().map(|x| (x.node_id, x.learner)).collect() })
            .collect();
        let room = MAX_CONCURRENT_ACTIONS.saturating_sub(busy.len());
        for action in plan::plan(&nodes, &ranges, self.rf, room) {
            let Action::AddReplica { range, node } = action;
            self.in_flight.lock().insert(range);
            tracing::info!(range, node, "controller: add replica");
            metrics::counter!("cairn_controller_decisions_total", "kind" => "add_replica").increment(1);
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = admin::add_replica(&me.gw, range, node).await {
                    tracing::warn!(range, node, "controller: add replica failed: {}", e.message());
                }
                me.in_flight.lock().remove(&range);
            });
        }
    }
}
