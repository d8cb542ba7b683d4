//! The bounded-staleness scenario, shared by the chaos suite (which expects
//! the bound kept) and the sabotage suite (which expects the check to catch a
//! replica that serves without showing it is within its bound).

use super::{create_table, leader_of, put, Cluster};
use cairn_proto::kv::{GetRequest, ReadConsistency};
use std::time::{Duration, Instant};

const TABLE: &str = "bounded";
/// The bound asked of every stale read here: well under the election timeout
/// (1 s), so that the cut-off follower still believes it is in touch with its
/// leader, and serves the read itself, when asked after the bound has passed.
pub const BOUND_MS: u64 = 300;

/// What an isolated follower answered to a read bounded at `BOUND_MS`, asked
/// after the bound had passed since the majority acknowledged a newer value.
pub struct IsolatedRead {
    /// The value (or the error) the isolated follower answered with.
    pub answer: Result<Option<String>, tonic::Status>,
    /// The value acknowledged before the follower was cut off (too stale to return).
    pub old: String,
    /// The value the majority acknowledged after the cut.
    pub new: String,
    /// `cairn_stale_reads_unproven_total` on the follower after the read.
    pub refused_there: f64,
    /// What the follower answered once healed (its bound can be shown again).
    pub after_heal: Option<String>,
}

async fn stale_get(cl: &Cluster, i: usize) -> Result<Option<String>, tonic::Status> {
    let mut c = cl.client(i).await;
    let req = GetRequest {
        table: TABLE.into(),
        key: b"k".to_vec(),
        consistency: ReadConsistency::Stale as i32,
        max_staleness_ms: BOUND_MS,
    };
    let r = c.get(req).await?.into_inner();
    Ok(r.found.then(|| String::from_utf8_lossy(&r.value).into_owned()))
}

/// Three nodes in network namespaces: a follower of the table's range answers
/// a bounded read, is cut off from the other nodes (clients still reach it),
/// the majority acknowledges a newer value, and once the bound has passed the
/// follower is asked again.
pub async fn isolated_follower_read(env: &[(&str, &str)]) -> IsolatedRead {
    let cl = Cluster::start_netlab(3, &[], env).await;
    let lab = cl.lab.as_ref().expect("a network lab");
    let mut c = cl.client(0).await;
    create_table(&mut c, TABLE, &[]).await;
    put(&mut c, TABLE, "k", "first").await.expect("first write");
    let (_, leader) = leader_of(&cl, 0, TABLE).await.expect("the range has a leader");
    // Not the meta range's leader if there is a choice: cutting it off would make the
    // majority elect a new one, and the write below could outlast the election timeout.
    let meta_leader =
        cl.status(0).await.ok().and_then(|s| s.ranges.iter().find(|r| r.id == 1).map(|r| r.leader_node_id));
    let follower = (0..3)
        .filter(|i| cl.node_id(*i) != leader)
        .max_by_key(|i| Some(cl.node_id(*i)) != meta_leader)
        .expect("a follower");
    let majority: Vec<usize> = (0..3).filter(|i| *i != follower).collect();
    // Through the node that writes after the cut, so that its gateway knows the route.
    let mut m = cl.client(majority[0]).await;
    put(&mut m, TABLE, "k", "old").await.expect("second write");
    // Read through the follower until it has applied the first write (it serves
    // this one itself: it can show it is within the bound).
    let started = Instant::now();
    while stale_get(&cl, follower).await.ok().flatten().as_deref() != Some("old") {
        assert!(started.elapsed() < Duration::from_secs(10), "the follower never served the first write");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lab.isolate(follower);
    let cut = Instant::now();
    while put(&mut m, TABLE, "k", "new").await.is_err() {
        assert!(cut.elapsed() < Duration::from_secs(20), "the majority never acknowledged the new value");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(BOUND_MS + 100)).await;
    // Past the election timeout the follower's gateway would no longer ask its own
    // replica at all (it routes to the unreachable leader): the check would not be reached.
    assert!(cut.elapsed() < Duration::from_millis(800), "the scenario ran late: {:?} after the cut", cut.elapsed());
    let answer = stale_get(&cl, follower).await;
    let refused_there = cl.metric(follower, "cairn_stale_reads_unproven_total").await;
    lab.heal();
    let mut after_heal = None;
    let healed = Instant::now();
    while healed.elapsed() < Duration::from_secs(20) {
        after_heal = stale_get(&cl, follower).await.ok().flatten();
        if after_heal.as_deref() == Some("new") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    IsolatedRead { answer, old: "old".into(), new: "new".into(), refused_there, after_heal }
}
