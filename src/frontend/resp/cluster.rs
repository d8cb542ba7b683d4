//! Redis Cluster mode: which node leads each slot (the range directory, with
//! this node's own replicas' fresher knowledge of their leaders, and the node
//! registry's Redis addresses), the CLUSTER SLOTS/SHARDS/NODES/INFO replies
//! built from it, and the MOVED redirection of a command whose keys' range is
//! led by another node.
//!
//! A slot's "master" is its range's Raft leader; the range's other voters are
//! its replicas. Leadership moves and ranges split at slot boundaries, so the
//! map changes: a client that follows MOVED, or refreshes CLUSTER SLOTS, finds
//! the new leader; a redirection is only ever a routing hint, and a node that
//! does not know a slot's leader serves the command itself (proxy mode).

use super::commands::server::node_name;
use super::commands::Spec;
use super::keyspace;
use super::RespServer;
use crate::keys::{self, key_slot, SLOT_COUNT};
use crate::meta::registry;
use bytes::Bytes;
use cairn_core::resp::reply::Reply;
use cairn_proto::internal::RangeRecord;
use std::collections::BTreeMap;

/// The slots one range holds, and who serves them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    pub first: u16,
    pub last: u16,
    /// 0 if unknown.
    pub leader: u64,
    /// The range's other voters.
    pub followers: Vec<u64>,
}

/// The first slot at or after encoded key `end` (a range's exclusive end) in table `table_id`.
fn slot_at_end(table_id: u32, end: &[u8]) -> u32 {
    let table_end = keys::table_end(table_id);
    if end.is_empty() || end >= table_end.as_slice() {
        return u32::from(SLOT_COUNT);
    }
    let prefix = keys::table_prefix(table_id);
    if end <= prefix.as_slice() {
        return 0;
    }
    let slot = end.get(prefix.len()..prefix.len() + 2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    // A bound inside a slot (splits keep to slot boundaries, so none should be) leaves the slot to the left.
    u32::from(slot) + u32::from(end.len() > prefix.len() + 2)
}

/// The ranges of the Redis table as shards, in slot order, from `lookup` (a directory).
pub fn shards(table_id: u32, lookup: impl Fn(&[u8]) -> Option<RangeRecord>) -> Vec<Shard> {
    let mut out = Vec::new();
    let mut slot: u32 = 0;
    while slot < u32::from(SLOT_COUNT) {
        let Some(rec) = lookup(&keys::hash_slot_start(table_id, slot as u16)) else { break };
        let Some(desc) = rec.desc.as_ref() else { break };
        let end = slot_at_end(table_id, &desc.end).max(slot + 1);
        let voters = desc.replicas.iter().filter(|r| !r.learner).map(|r| r.node_id);
        let leader = rec.leader_node_id;
        out.push(Shard {
            first: slot as u16,
            last: (end - 1) as u16,
            leader,
            followers: voters.filter(|n| *n != leader).collect(),
        });
        slot = end;
    }
    out
}

/// The leader of the range holding `key` as this node knows it: its own replica's
/// view first (Raft tells it), else the directory's.
fn leader_of(srv: &RespServer, table_id: u32, key: &[u8]) -> u64 {
    let encoded = keys::encode_hash_key(table_id, key);
    let dir = srv.gw.directory();
    let Some(rec) = dir.lookup(&encoded) else { return 0 };
    let Some(desc) = rec.desc.as_ref() else { return 0 };
    let local = srv.gw.store.registry.read().get(&desc.id).cloned();
    match local {
        Some(r) if r.initialized() && !r.destroyed() && r.leader_id() != 0 => r.leader_id(),
        _ => rec.leader_node_id,
    }
}

/// `host:port` of a node's Redis listener, from the registry (cached; a miss reloads it).
async fn redis_addr(srv: &RespServer, node: u64) -> Option<String> {
    if let Some(a) = srv.peers.read().get(&node) {
        return Some(a.clone());
    }
    let nodes = registry::list(&srv.gw).await.ok()?;
    let mut peers = srv.peers.write();
    for n in nodes.into_iter().filter(|n| !n.redis_addr.is_empty()) {
        peers.insert(n.id, n.redis_addr);
    }
    peers.get(&node).cloned()
}

/// The keys a command names: its spec's key positions, or KEYS for scripts.
fn command_keys(spec: &Spec, args: &[Bytes]) -> Vec<Bytes> {
    if spec.group == "scripting" && spec.name != "script" {
        let n = args.get(2).and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok()).unwrap_or(0);
        return args.iter().skip(3).take(n).cloned().collect();
    }
    super::txn::keys_of(spec, args)
}

/// In cluster mode, the reply that sends a command elsewhere: CROSSSLOT for keys
/// in different slots, MOVED when another node leads their slot. `None`: serve it here.
pub async fn redirect(srv: &RespServer, readonly_session: bool, spec: &Spec, args: &[Bytes]) -> Option<Reply> {
    let keys = command_keys(spec, args);
    let first = keys.first()?;
    let slot = match keyspace::same_slot(keys.iter().map(|k| k.as_ref())) {
        Ok(s) => s,
        Err(e) => return Some(e),
    };
    let t = keyspace::table(&srv.gw).await.ok()?;
    // READONLY connections read from any replica, as in Redis Cluster.
    let encoded = keys::encode_hash_key(t.id, first);
    if readonly_session && spec.flags.contains(&"readonly") {
        let dir = srv.gw.directory();
        let range = dir.lookup(&encoded).and_then(|r| r.desc.as_ref()).map(|d| d.id)?;
        if srv.gw.store.registry.read().contains_key(&range) {
            return None;
        }
    }
    let leader = leader_of(srv, t.id, first);
    if leader == 0 || leader == srv.gw.node_id {
        return None;
    }
    let addr = redis_addr(srv, leader).await?;
    Some(Reply::Error(format!("MOVED {slot} {addr}")))
}

fn host_port(addr: &str) -> (String, i64) {
    match addr.rsplit_once(':') {
        Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']').to_string(), p.parse().unwrap_or(0)),
        None => (addr.to_string(), 0),
    }
}

struct View {
    shards: Vec<Shard>,
    addrs: BTreeMap<u64, String>,
}

async fn view(srv: &RespServer) -> Result<View, Reply> {
    let t = keyspace::table(&srv.gw).await?;
    let nodes = registry::list(&srv.gw).await.map_err(|s| keyspace::error_reply(&s))?;
    let addrs: BTreeMap<u64, String> =
        nodes.into_iter().filter(|n| !n.redis_addr.is_empty()).map(|n| (n.id, n.redis_addr)).collect();
    {
        let mut peers = srv.peers.write();
        for (id, a) in &addrs {
            peers.insert(*id, a.clone());
        }
    }
    let dir = srv.gw.directory();
    let mut shards = shards(t.id, |k| dir.lookup(k).cloned());
    if shards.last().is_none_or(|s| s.last != SLOT_COUNT - 1) {
        let _ = srv.gw.refresh_directory().await;
        let dir = srv.gw.directory();
        shards = shards_with(t.id, &dir);
    }
    // This node's own replicas know their leaders better than the directory.
    for s in &mut shards {
        let local = leader_of(srv, t.id, &slot_key(s.first));
        if local != 0 && local != s.leader {
            s.followers.retain(|n| *n != local);
            if s.leader != 0 {
                s.followers.push(s.leader);
            }
            s.leader = local;
        }
    }
    Ok(View { shards, addrs })
}

fn shards_with(table_id: u32, dir: &crate::gateway::directory::Directory) -> Vec<Shard> {
    shards(table_id, |k| dir.lookup(k).cloned())
}

/// Some key of `slot` (for looking its range up by key).
fn slot_key(slot: u16) -> Vec<u8> {
    (0u32..).map(|i| format!("{{{i}}}").into_bytes()).find(|k| key_slot(k) == slot).unwrap_or_default()
}

fn node_entry(addrs: &BTreeMap<u64, String>, node: u64) -> Option<Reply> {
    let (host, port) = host_port(addrs.get(&node)?);
    Some(Reply::Array(vec![
        Reply::Bulk(Bytes::from(host)),
        Reply::Integer(port),
        Reply::Bulk(Bytes::from(node_name(node))),
    ]))
}

/// CLUSTER SLOTS, SHARDS, NODES and INFO (cluster mode only).
pub async fn command(srv: &RespServer, sub: &str) -> Result<Reply, Reply> {
    if !srv.cfg.cluster_mode {
        return Err(Reply::Error("ERR This instance has cluster support disabled".into()));
    }
    let v = view(srv).await?;
    Ok(match sub {
        "SLOTS" => Reply::Array(
            v.shards
                .iter()
                .filter_map(|s| {
                    let mut entry = vec![Reply::Integer(s.first.into()), Reply::Integer(s.last.into())];
                    entry.push(node_entry(&v.addrs, s.leader)?);
                    entry.extend(s.followers.iter().filter_map(|n| node_entry(&v.addrs, *n)));
                    Some(Reply::Array(entry))
                })
                .collect(),
        ),
        "SHARDS" => Reply::Array(
            v.shards
                .iter()
                .map(|s| {
                    let node = |n: u64, role: &str| {
                        let (host, port) = host_port(v.addrs.get(&n).map_or("", String::as_str));
                        Reply::Map(vec![
                            (Reply::Bulk(Bytes::from_static(b"id")), Reply::Bulk(Bytes::from(node_name(n)))),
                            (Reply::Bulk(Bytes::from_static(b"port")), Reply::Integer(port)),
                            (Reply::Bulk(Bytes::from_static(b"ip")), Reply::Bulk(Bytes::from(host.clone()))),
                            (Reply::Bulk(Bytes::from_static(b"endpoint")), Reply::Bulk(Bytes::from(host))),
                            (Reply::Bulk(Bytes::from_static(b"role")), Reply::Bulk(Bytes::from(role.to_string()))),
                            (Reply::Bulk(Bytes::from_static(b"replication-offset")), Reply::Integer(0)),
                            (Reply::Bulk(Bytes::from_static(b"health")), Reply::Bulk(Bytes::from_static(b"online"))),
                        ])
                    };
                    let mut nodes = vec![node(s.leader, "master")];
                    nodes.extend(s.followers.iter().map(|n| node(*n, "replica")));
                    Reply::Map(vec![
                        (
                            Reply::Bulk(Bytes::from_static(b"slots")),
                            Reply::Array(vec![Reply::Integer(s.first.into()), Reply::Integer(s.last.into())]),
                        ),
                        (Reply::Bulk(Bytes::from_static(b"nodes")), Reply::Array(nodes)),
                    ])
                })
                .collect(),
        ),
        "NODES" => {
            // Every node is a "master" of the slots whose ranges it leads.
            let mut text = String::new();
            for (id, addr) in &v.addrs {
                let (host, port) = host_port(addr);
                let myself = if *id == srv.gw.node_id { "myself,master" } else { "master" };
                let slots: Vec<String> = v
                    .shards
                    .iter()
                    .filter(|s| s.leader == *id)
                    .map(|s| if s.first == s.last { s.first.to_string() } else { format!("{}-{}", s.first, s.last) })
                    .collect();
                text.push_str(&format!(
                    "{} {host}:{port}@{} {myself} - 0 0 1 connected {}\n",
                    node_name(*id),
                    port + 10_000,
                    slots.join(" ")
                ));
            }
            Reply::Verbatim(text)
        }
        _ => {
            let led: u32 = v.shards.iter().filter(|s| s.leader != 0).map(|s| u32::from(s.last - s.first) + 1).sum();
            let masters =
                v.shards.iter().map(|s| s.leader).filter(|l| *l != 0).collect::<std::collections::BTreeSet<_>>();
            let state = if led == u32::from(SLOT_COUNT) { "ok" } else { "fail" };
            let text = format!(
                "cluster_state:{state}\r\ncluster_slots_assigned:{SLOT_COUNT}\r\ncluster_slots_ok:{led}\r\n\
                 cluster_slots_pfail:0\r\ncluster_slots_fail:{}\r\ncluster_known_nodes:{}\r\ncluster_size:{}\r\n\
                 cluster_current_epoch:1\r\ncluster_my_epoch:1\r\n",
                u32::from(SLOT_COUNT) - led,
                v.addrs.len(),
                masters.len()
            );
            Reply::Verbatim(text)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::internal::{RangeDescriptor, Replica as ReplicaDesc};

    #[test]
    fn ranges_map_to_slot_spans_in_order() {
        let t = 7;
        let desc = |id, start: Vec<u8>, end: Vec<u8>| RangeRecord {
            desc: Some(RangeDescriptor {
                id,
                start,
                end,
                replicas: vec![
                    ReplicaDesc { node_id: 1, ..Default::default() },
                    ReplicaDesc { node_id: 2, ..Default::default() },
                    ReplicaDesc { node_id: 3, learner: true, ..Default::default() },
                ],
                ..Default::default()
            }),
            leader_node_id: id,
            ..Default::default()
        };
        let ranges = [
            desc(1, keys::table_prefix(t), keys::hash_slot_start(t, 5000)),
            desc(2, keys::hash_slot_start(t, 5000), keys::hash_slot_start(t, 5001)),
            desc(3, keys::hash_slot_start(t, 5001), Vec::new()),
        ];
        let lookup = |k: &[u8]| {
            ranges
                .iter()
                .find(|r| {
                    let d = r.desc.as_ref().unwrap();
                    d.start.as_slice() <= k && (d.end.is_empty() || k < d.end.as_slice())
                })
                .cloned()
        };
        let got = shards(t, lookup);
        let spans: Vec<(u16, u16, u64, Vec<u64>)> =
            got.into_iter().map(|s| (s.first, s.last, s.leader, s.followers)).collect();
        assert_eq!(spans, vec![(0, 4999, 1, vec![2]), (5000, 5000, 2, vec![1]), (5001, 16383, 3, vec![1, 2])]);
        assert_eq!(key_slot(&slot_key(12_345)), 12_345);
    }
}
