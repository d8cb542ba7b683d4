//! The voucher workload: many clients claim vouchers through the Redis
//! protocol with `claim.lua`, retrying each claim with its claim id until it
//! gets an answer, and a check of what is stored afterwards. Shared by the
//! `voucher` example (against any cluster) and the test that kills the
//! voucher's leader while it runs.

use redis::aio::MultiplexedConnection;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const CLAIM_SCRIPT: &str = include_str!("claim.lua");

#[derive(Clone, Debug)]
pub struct Config {
    /// Redis endpoints (host:port) of the cluster's nodes; clients spread over them.
    pub nodes: Vec<String>,
    pub voucher: String,
    pub limit: i64,
    pub per_user: i64,
    pub users: u64,
    pub clients: usize,
    pub duration: Duration,
}

impl Config {
    pub fn key(&self, what: &str) -> String {
        format!("{{voucher:{}}}{what}", self.voucher)
    }
}

/// What the clients were told, claim by claim.
#[derive(Debug, Default)]
pub struct Outcome {
    /// claim id → (user, answer)
    pub answers: BTreeMap<String, (u64, String)>,
    /// Attempts that failed (connection lost, no leader, TRYAGAIN) and were retried.
    pub retries: u64,
    /// Each claim's time from its first attempt to its answer, in µs.
    pub latencies_us: Vec<u64>,
    /// When the last GRANTED answer arrived, from the start of the run.
    pub last_grant_at: Duration,
}

impl Outcome {
    /// The `q` quantile (0..=1) of the claims' latencies, in ms.
    pub fn latency_ms(&self, q: f64) -> f64 {
        let mut l = self.latencies_us.clone();
        l.sort_unstable();
        match l.len() {
            0 => 0.0,
            n => l[((n - 1) as f64 * q).round() as usize] as f64 / 1000.0,
        }
    }
}

async fn connect(addr: &str) -> redis::RedisResult<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{addr}/"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    client.get_multiplexed_async_connection_with_config(&config).await
}

/// Sets the voucher's quota (and zero counters): a fresh voucher.
pub async fn create(cfg: &Config) -> redis::RedisResult<()> {
    let mut c = connect(&cfg.nodes[0]).await?;
    redis::cmd("MSET")
        .arg(cfg.key("remaining"))
        .arg(cfg.limit)
        .arg(cfg.key("granted"))
        .arg(0)
        .query_async::<()>(&mut c)
        .await
}

/// One attempt of claim `claim_id` for `user` through `claim.lua`: its answer.
async fn claim(
    script: &redis::Script,
    cfg: &Config,
    c: &mut MultiplexedConnection,
    user: u64,
    claim_id: &str,
) -> redis::RedisResult<String> {
    script
        .key(cfg.key("remaining"))
        .key(cfg.key(&format!("user:{user}")))
        .key(cfg.key(&format!("claim:{claim_id}")))
        .key(cfg.key("granted"))
        .arg(cfg.per_user)
        .arg(user)
        .invoke_async::<String>(c)
        .await
}

/// A well-mixed 64-bit hash (splitmix64's finalizer).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs `cfg.clients` clients for `cfg.duration`. Each claim is retried with
/// its own claim id until answered, so every claim a client started ends with
/// the one answer the cluster recorded for it.
pub async fn run(cfg: &Config) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let retries = Arc::new(AtomicU64::new(0));
    let run_started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for client in 0..cfg.clients {
        let (cfg, stop, retries) = (cfg.clone(), stop.clone(), retries.clone());
        tasks.push(tokio::spawn(async move {
            let script = redis::Script::new(CLAIM_SCRIPT);
            let mut node = client % cfg.nodes.len();
            let mut conn: Option<MultiplexedConnection> = None;
            let mut answers = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let claim_id = format!("c{client}-{n}");
                // Users drawn evenly at random (splitmix64 of client and claim): every user is
                // asked for early whatever the claim rate, so demand soon exceeds the quota,
                // and the same user is claimed from many clients at once.
                let user = splitmix64((client as u64) << 32 | n) % cfg.users;
                let asked = std::time::Instant::now();
                let answer = loop {
                    if conn.is_none() {
                        conn = connect(&cfg.nodes[node]).await.ok();
                    }
                    let attempt = match conn.as_mut() {
                        Some(c) => claim(&script, &cfg, c, user, &claim_id).await.ok(),
                        None => None,
                    };
                    if let Some(a) = attempt {
                        break a;
                    }
                    // Unknown outcome: retry the same claim id, through another node.
                    retries.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                    node = (node + 1) % cfg.nodes.len();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                let answered_at = run_started.elapsed();
                answers.push((claim_id, user, answer, asked.elapsed().as_micros() as u64, answered_at));
            }
            answers
        }));
    }
    tokio::time::sleep(cfg.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut out = Outcome::default();
    for t in tasks {
        if let Ok(answers) = t.await {
            for (claim, user, answer, latency_us, answered_at) in answers {
                if answer.starts_with("GRANTED") {
                    out.last_grant_at = out.last_grant_at.max(answered_at);
                }
                out.answers.insert(claim, (user, answer));
                out.latencies_us.push(latency_us);
            }
        }
    }
    out.retries = retries.load(Ordering::Relaxed);
    out
}

/// One line on a run that took `secs`: claims answered, rates, latencies, and
/// what the audit read back (`scripts/bench-voucher.sh` reads its figures).
pub fn summary(outcome: &Outcome, audit: &Audit, secs: f64) -> String {
    format!(
        "{} claims answered in {secs:.1} s ({:.0} claims/s, {:.0} granted/s; p50 {:.2} ms, p99 {:.2} ms) \
         ({} retried), {} granted, {} remaining, counter {}, most held by one user {}",
        outcome.answers.len(),
        outcome.answers.len() as f64 / secs,
        audit.granted_answers as f64 / secs,
        outcome.latency_ms(0.5),
        outcome.latency_ms(0.99),
        outcome.retries,
        audit.granted_answers,
        audit.remaining,
        audit.granted_counter,
        audit.most_held_by_one_user
    )
}

/// What is stored, checked against what the clients were told.
#[derive(Debug)]
pub struct Audit {
    pub granted_answers: i64,
    pub remaining: i64,
    pub granted_counter: i64,
    pub most_held_by_one_user: i64,
    pub problems: Vec<String>,
}

/// Reads back the voucher's counters, every user's count and every claim's
/// record, and lists every way they disagree with the rules or the answers.
pub async fn audit(cfg: &Config, outcome: &Outcome) -> redis::RedisResult<Audit> {
    let mut c = connect(&cfg.nodes[0]).await?;
    let int = |v: Option<String>| v.and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
    let remaining = int(redis::cmd("GET").arg(cfg.key("remaining")).query_async(&mut c).await?);
    let granted_counter = int(redis::cmd("GET").arg(cfg.key("granted")).query_async(&mut c).await?);
    let mut problems = Vec::new();
    let mut granted_answers = 0i64;
    let mut per_user_granted: BTreeMap<u64, i64> = BTreeMap::new();
    let claims: Vec<(&String, &(u64, String))> = outcome.answers.iter().collect();
    for chunk in claims.chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|(id, _)| cfg.key(&format!("claim:{id}"))).collect();
        let stored: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut c).await?;
        for ((id, (user, answer)), record) in chunk.iter().zip(stored) {
            let granted = answer.starts_with("GRANTED");
            if granted {
                granted_answers += 1;
                *per_user_granted.entry(*user).or_default() += 1;
            }
            if granted != record.is_some() || (granted && record.as_deref() != Some(answer.as_str())) {
                problems.push(format!("claim {id}: the client was told {answer:?}, the store holds {record:?}"));
            }
        }
    }
    let mut most_held_by_one_user = 0;
    // Every user some claim was made for (a count can only come from a claim).
    let users: Vec<u64> =
        outcome.answers.values().map(|(u, _)| *u).collect::<std::collections::BTreeSet<u64>>().into_iter().collect();
    for chunk in users.chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|u| cfg.key(&format!("user:{u}"))).collect();
        let held: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut c).await?;
        for (user, h) in chunk.iter().zip(held) {
            let h = int(h);
            most_held_by_one_user = most_held_by_one_user.max(h);
            if h > cfg.per_user {
                problems.push(format!("user {user} holds {h} claims; the limit is {}", cfg.per_user));
            }
            let told = per_user_granted.get(user).copied().unwrap_or(0);
            if h != told {
                problems.push(format!("user {user}: {told} claims granted to clients, {h} counted"));
            }
        }
    }
    if granted_answers + remaining != cfg.limit {
        problems.push(format!("{granted_answers} granted + {remaining} remaining != the limit {}", cfg.limit));
    }
    if granted_counter != granted_answers {
        problems.push(format!("the granted counter is {granted_counter}, clients were granted {granted_answers}"));
    }
    Ok(Audit { granted_answers, remaining, granted_counter, most_held_by_one_user, problems })
}

/// Claims once per client for `cfg.duration`, without retrying, and returns
/// every answer or error: what a client sees while the voucher's range has no
/// quorum (every claim must fail, none be granted unrecorded).
#[allow(dead_code)] // the fail-closed test's: the example binary has no use for it
pub async fn claim_once_each(cfg: &Config) -> Vec<Result<String, String>> {
    let mut tasks = Vec::new();
    for client in 0..cfg.clients {
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            let script = redis::Script::new(CLAIM_SCRIPT);
            let user = splitmix64(client as u64 ^ 0xFA11) % cfg.users;
            let claim_id = format!("closed-{client}");
            let attempt = async {
                let mut c = connect(&cfg.nodes[client % cfg.nodes.len()]).await.map_err(|e| e.to_string())?;
                claim(&script, &cfg, &mut c, user, &claim_id).await.map_err(|e| e.to_string())
            };
            match tokio::time::timeout(cfg.duration, attempt).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {:?}", cfg.duration)),
            }
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
    }
    out
}
