//! A workload for Redis scripts that share batches (`script::batch` on the
//! server): 40 clients on one node run scripts on one slot, every fourth one
//! failing after writes of its own, each client also trying to read a key only
//! another client's scripts declare. Used by the Redis tests (which check the
//! counts) and by the sabotage that keeps a failed script's writes.

use redis::aio::MultiplexedConnection;
use redis::{RedisResult, Value};
use std::time::Duration;

/// What the workload saw.
#[derive(Debug, Default)]
pub struct BatchReport {
    /// Scripts answered with a count, and scripts refused (not an integer).
    pub succeeded: i64,
    pub failed: i64,
    /// The counter the scripts increment, read at the end.
    pub count: i64,
    /// The server's batches and the scripts they ran, during the workload.
    pub batches: i64,
    pub scripts: i64,
    /// Replies to scripts that read a key they did not declare and were not refused.
    pub leaks: Vec<String>,
}

pub async fn connect(addr: &str) -> MultiplexedConnection {
    let client = redis::Client::open(format!("redis://{addr}/")).expect("redis url");
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    client.get_multiplexed_async_connection_with_config(&config).await.expect("connect")
}

/// A numeric field of INFO's stats section.
pub async fn info_stat(c: &mut MultiplexedConnection, field: &str) -> i64 {
    let info: String = redis::cmd("INFO").arg("stats").query_async(c).await.expect("INFO stats");
    let line = info
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {info}"));
    line.trim().parse().expect("a number")
}

/// Runs the workload through `node`, and reads the counter through `other`.
pub async fn run(node: &str, other: &str) -> BatchReport {
    let mut admin = connect(node).await;
    let mut reader = connect(other).await;
    let batches_before = info_stat(&mut admin, "cairn_script_batches").await;
    let scripts_before = info_stat(&mut admin, "cairn_batched_scripts").await;
    let _: () = redis::cmd("SET").arg("{b}text").arg("not a number").query_async(&mut reader).await.expect("SET");
    let mut clients = Vec::new();
    for w in 0..40 {
        let addr = node.to_string();
        clients.push(tokio::spawn(async move { client(&addr, w).await }));
    }
    let mut report = BatchReport::default();
    for c in clients {
        let (succeeded, failed, leaks) = c.await.expect("a client");
        report.succeeded += succeeded;
        report.failed += failed;
        report.leaks.extend(leaks);
    }
    let count: Option<String> = redis::cmd("GET").arg("{b}count").query_async(&mut reader).await.expect("GET");
    report.count = count.map_or(0, |c| c.parse().expect("a count"));
    report.batches = info_stat(&mut admin, "cairn_script_batches").await - batches_before;
    report.scripts = info_stat(&mut admin, "cairn_batched_scripts").await - scripts_before;
    report
}

/// Client `w`: 10 scripts that count (every fourth fails after counting and
/// writing), each followed by one that reads the next client's key undeclared.
async fn client(addr: &str, w: usize) -> (i64, i64, Vec<String>) {
    let mut c = connect(addr).await;
    let (mut succeeded, mut failed, mut leaks) = (0, 0, Vec::new());
    let mine = format!("{{b}}own:{w}");
    let peek = format!("{{b}}own:{}", (w + 1) % 40);
    for n in 0..10 {
        let reply: RedisResult<i64> = if (w + n).is_multiple_of(4) {
            redis::Script::new(
                "redis.call('INCR', KEYS[1]); redis.call('SET', KEYS[2], 'x'); return redis.call('INCR', KEYS[3])",
            )
            .key("{b}count")
            .key(&mine)
            .key("{b}text")
            .invoke_async(&mut c)
            .await
        } else {
            redis::Script::new("redis.call('SET', KEYS[2], 'x'); return redis.call('INCR', KEYS[1])")
                .key("{b}count")
                .key(&mine)
                .invoke_async(&mut c)
                .await
        };
        match reply {
            Ok(_) => succeeded += 1,
            Err(e) => {
                assert!(format!("{e:?}").contains("not an integer"), "an unexpected failure: {e:?}");
                failed += 1;
            }
        }
        let undeclared = format!("return redis.call('GET', '{peek}')");
        let read = redis::cmd("EVAL").arg(&undeclared).arg(1).arg(&mine).query_async::<Value>(&mut c).await;
        if !format!("{read:?}").contains("did not declare") {
            leaks.push(format!("{peek} read by client {w}: {read:?}"));
        }
    }
    (succeeded, failed, leaks)
}
