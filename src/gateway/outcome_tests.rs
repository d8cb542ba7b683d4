//! What a failed write tells its client, against fake peers that fail in known
//! ways: one closes the connection after the request reached it (the write may
//! have been proposed there), one refuses connections (it cannot have been).

use super::*;
use crate::storage::sim_disk::SimDisk;
use crate::storage::Engine;
use cairn_proto::internal::{
    mutation, raft_command, range_request, Mutation, RaftCommand, RangeDescriptor, RangeEpoch, Replica, WriteBatch,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A gateway on node 1 that knows one range, 5, whose only voter is node 2 at `peer`.
fn gateway_routing_to(peer: &str) -> Gateway {
    let engine = Arc::new(Engine::simulated(Arc::new(SimDisk::new())));
    let (tx, _rx) = std::sync::mpsc::sync_channel(1);
    let store = StoreHandle {
        node_id: 1,
        tx,
        registry: Default::default(),
        engine: engine.clone(),
        hlc: std::sync::Arc::new(crate::hlc::Hlc::new(1)),
        hot_keys: Default::default(),
    };
    let book = Arc::new(AddressBook::load(engine));
    book.learn(2, peer);
    // Fail-fast window = 3 election timeouts = 300 ms.
    let raft = RaftConfig { tick_ms: 10, election_ticks: 10, ..Default::default() };
    let limits = Limits { request_deadline_ms: 5_000, ..Default::default() };
    let gw = Gateway::new(1, "outcome-test".into(), store, book, limits, Arc::new(Hlc::new(1)), raft);
    gw.learn_route(RangeRecord {
        desc: Some(RangeDescriptor {
            id: 5,
            epoch: Some(RangeEpoch { version: 1, conf_ver: 1 }),
            replicas: vec![Replica { node_id: 2, learner: false, replica_id: 2 }],
            ..Default::default()
        }),
        leader_node_id: 2,
        ..Default::default()
    });
    gw
}

fn write_request() -> RangeRequest {
    let put = Mutation {
        expiry: None,
        key: b"k".to_vec(),
        condition: None,
        op: Some(mutation::Op::Put(b"v".to_vec())),
        value_kind: 0,
    };
    RangeRequest {
        range_id: 5,
        epoch: Some(RangeEpoch { version: 1, conf_ver: 1 }),
        req: Some(range_request::Req::Command(RaftCommand {
            judge_expiry_at_leader: false,
            expiry_judged_at_ms: 0,
            request_id: b"outcome-1".to_vec(),
            proposed_version: None,
            cmd: Some(raft_command::Cmd::Write(WriteBatch { mutations: vec![put] })),
        })),
    }
}

fn outcome_of(s: &Status) -> Option<String> {
    s.metadata().get(outcome::HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// A peer that answers the HTTP/2 handshake, takes a request's bytes, and then
/// drops the connection, as a node that crashes while holding a proposal does.
async fn peer_that_drops_after_the_request() -> (String, tokio::task::JoinHandle<usize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut requests_seen = 0;
        while let Ok(Ok((mut sock, _))) = tokio::time::timeout(Duration::from_secs(3), listener.accept()).await {
            // An empty SETTINGS frame: the client may now send its request.
            let _ = sock.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // The preface and SETTINGS are under 100 bytes; the request's HEADERS and DATA follow.
            while got.len() < 150 {
                match tokio::time::timeout(Duration::from_millis(500), sock.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            if got.windows(b"outcome-1".len()).any(|w| w == b"outcome-1") {
                requests_seen += 1;
            }
            drop(sock);
        }
        requests_seen
    });
    (addr, task)
}

#[tokio::test]
async fn a_write_whose_connection_drops_after_sending_has_an_unknown_outcome() {
    let (addr, peer) = peer_that_drops_after_the_request().await;
    let gw = gateway_routing_to(&addr);
    let req = write_request();
    let err = gw.call(Target::Range(5), |_| Ok(req.clone())).await.expect_err("the peer never answers");
    assert!(peer.await.unwrap() > 0, "the request reached the peer before it dropped the connection");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert_eq!(outcome_of(&err).as_deref(), Some(outcome::UNKNOWN), "a dropped connection after sending: {err}");
    assert!(err.message().contains(outcome::UNKNOWN_TAIL), "the message says so too: {err}");
}

#[tokio::test]
async fn a_write_that_never_reached_a_node_is_reported_not_applied() {
    // A port nobody listens on: every connection attempt is refused.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let gw = gateway_routing_to(&addr);
    let req = write_request();
    let err = gw.call(Target::Range(5), |_| Ok(req.clone())).await.expect_err("nobody listens");
    assert_eq!(outcome_of(&err).as_deref(), Some(outcome::NOT_APPLIED), "refused connections: {err}");
    assert!(!err.message().contains(outcome::UNKNOWN_TAIL), "{err}");
}

#[tokio::test]
async fn reads_carry_no_write_outcome() {
    let (addr, _peer) = peer_that_drops_after_the_request().await;
    let gw = gateway_routing_to(&addr);
    let read = RangeRequest {
        req: Some(range_request::Req::Read(cairn_proto::internal::ReadRequest {
            keys: vec![b"k".to_vec()],
            stale: false,
            max_staleness_ms: 0,
            max_reply_bytes: 0,
            judge_expiry_at_leader: false,
        })),
        ..write_request()
    };
    let err = gw.call(Target::Range(5), |_| Ok(read.clone())).await.expect_err("the peer never answers");
    assert_eq!(outcome_of(&err), None, "{err}");
}
