//! Measures the offset between this node's clock and each peer's, once a
//! second, and marks the node's clock untrusted while it is beyond the maximum
//! offset from a majority of them (`clock_offset` decides). An untrusted node
//! serves nothing that stamps a version: its gateway refuses requests, its
//! replicas give up leadership and do not campaign (`raftstore::store`).

use crate::gateway::Gateway;
use crate::raftstore::transport;
use cairn_core::clock_offset::{self, OffsetTable, Verdict};
use cairn_proto::internal::internal_client::InternalClient;
use cairn_proto::internal::ClockProbeRequest;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often peers are probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A probe slower than this tells nothing useful.
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);
/// Measurements older than this are not counted (a peer that stopped answering).
const MAX_AGE_MS: u64 = 10_000;

pub fn spawn(gw: Arc<Gateway>, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut table = OffsetTable::default();
        let mut clients: HashMap<String, InternalClient<tonic::transport::Channel>> = HashMap::new();
        let started = crate::clock::now();
        let mut was: Option<i64> = None;
        let mut every = tokio::time::interval(PROBE_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.changed() => return,
            }
            let peers: Vec<(u64, String)> = gw.book.all().into_iter().filter(|(id, _)| *id != gw.node_id).collect();
            clients.retain(|addr, _| peers.iter().any(|(_, a)| a == addr));
            let probes = peers.into_iter().filter_map(|(id, addr)| {
                let client = match clients.get(&addr) {
                    Some(c) => c.clone(),
                    None => {
                        let c = InternalClient::new(transport::connect(&addr).ok()?);
                        clients.insert(addr, c.clone());
                        c
                    }
                };
                Some(probe(gw.clone(), id, client))
            });
            let now_ms = || crate::clock::now().saturating_duration_since(started).as_millis() as u64;
            for (id, sample) in futures::future::join_all(probes).await {
                if let Some((sent, remote, received)) = sample {
                    if let Some(m) = clock_offset::measure(sent, remote, received, now_ms()) {
                        metrics::gauge!("cairn_clock_offset_ms", "peer" => id.to_string())
                            .set(m.offset_ns as f64 / 1e6);
                        table.record(id, m);
                    }
                }
            }
            let verdict = table.verdict(now_ms(), MAX_AGE_MS, gw.hlc.max_offset_ns());
            let now = match verdict {
                Verdict::Trusted => None,
                Verdict::Untrusted { median_offset_ms, .. } => Some(median_offset_ms),
            };
            gw.hlc.set_untrusted(now);
            metrics::gauge!("cairn_clock_untrusted").set(if now.is_some() { 1.0 } else { 0.0 });
            match (was, verdict) {
                (None, Verdict::Untrusted { far, measured, median_offset_ms }) => tracing::error!(
                    far,
                    measured,
                    "this node's clock is {} ms off from a majority of its peers' (their clocks minus ours: \
                     {median_offset_ms} ms; max_clock_offset_ms {}): it stops serving until its clock is fixed",
                    median_offset_ms.abs(),
                    gw.hlc.max_offset_ns() / 1_000_000
                ),
                (Some(_), Verdict::Trusted) => {
                    tracing::warn!("this node's clock agrees with its peers' again: serving")
                }
                _ => {}
            }
            was = now;
        }
    });
}

/// One probe: (sent, the peer's time, received), all in ns; `None` if it failed.
async fn probe(
    gw: Arc<Gateway>,
    id: u64,
    mut client: InternalClient<tonic::transport::Channel>,
) -> (u64, Option<(u64, u64, u64)>) {
    let mut req = tonic::Request::new(ClockProbeRequest { cluster_id: gw.cluster_id.clone() });
    req.set_timeout(PROBE_TIMEOUT);
    let sent = gw.hlc.physical_now();
    let answer = tokio::time::timeout(PROBE_TIMEOUT, client.clock_probe(req)).await;
    let received = gw.hlc.physical_now();
    match answer {
        Ok(Ok(r)) => (id, Some((sent, r.into_inner().wall_ns, received))),
        _ => (id, None),
    }
}
