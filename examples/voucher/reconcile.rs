//! Reconciliation: compares what Cairn recorded for a voucher (its claim
//! records, its counters, each user's count) with PostgreSQL's rows, lists
//! every difference, and with `repair` writes the claims PostgreSQL lacks,
//! read from Cairn (the source of truth for claims).
//!
//! A claim made after the feed writer's last commit shows as missing until
//! the writer catches up: run it when claims have stopped, or twice.

use super::writer::connect_postgres;
use redis::aio::MultiplexedConnection;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Reconciliation {
    pub cairn_claims: usize,
    pub postgres_claims: usize,
    pub granted_counter: i64,
    pub remaining: i64,
    /// Claims recorded in Cairn and not in PostgreSQL: (claim id, user).
    pub missing_in_postgres: Vec<(String, i64)>,
    /// Rows in PostgreSQL for claims Cairn never recorded.
    pub unknown_to_cairn: Vec<String>,
    /// Everything else that disagrees (a claim's user, the counters, a user's count).
    pub disagreements: Vec<String>,
    /// Claims written into PostgreSQL by the repair.
    pub repaired: usize,
}

impl Reconciliation {
    pub fn differences(&self) -> usize {
        self.missing_in_postgres.len() + self.unknown_to_cairn.len() + self.disagreements.len()
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "cairn: {} claims, granted counter {}, remaining {}; postgresql: {} claims; {} differences",
            self.cairn_claims,
            self.granted_counter,
            self.remaining,
            self.postgres_claims,
            self.differences()
        );
        for (id, user) in self.missing_in_postgres.iter().take(10) {
            s += &format!("\n  claim {id} (user {user}) is recorded in Cairn, not in PostgreSQL");
        }
        for id in self.unknown_to_cairn.iter().take(10) {
            s += &format!("\n  claim {id} is in PostgreSQL, but Cairn never recorded it");
        }
        for d in self.disagreements.iter().take(10) {
            s += &format!("\n  {d}");
        }
        if self.repaired > 0 {
            s += &format!("\n  repaired: {} claims written into PostgreSQL", self.repaired);
        }
        s
    }
}

fn key(voucher: &str, what: &str) -> String {
    format!("{{voucher:{voucher}}}{what}")
}

/// Every key matching `pattern` with its value, through SCAN and MGET.
async fn scan_values(c: &mut MultiplexedConnection, pattern: &str) -> redis::RedisResult<Vec<(String, String)>> {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000).query_async(c).await?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys.dedup();
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(500) {
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(chunk).query_async(c).await?;
        out.extend(chunk.iter().cloned().zip(values).filter_map(|(k, v)| v.map(|v| (k, v))));
    }
    Ok(out)
}

pub async fn reconcile(
    redis_node: &str,
    postgres: &str,
    voucher: &str,
    limit: Option<i64>,
    repair: bool,
) -> anyhow::Result<Reconciliation> {
    let client = redis::Client::open(format!("redis://{redis_node}/"))?;
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    let mut c = client.get_multiplexed_async_connection_with_config(&config).await?;
    let mut r = Reconciliation::default();

    let claim_prefix = key(voucher, "claim:");
    let mut cairn: BTreeMap<String, i64> = BTreeMap::new();
    for (k, v) in scan_values(&mut c, &format!("{claim_prefix}*")).await? {
        let id = k.strip_prefix(&claim_prefix).unwrap_or(&k).to_string();
        match v.strip_prefix("GRANTED ").and_then(|u| u.parse().ok()) {
            Some(user) => {
                cairn.insert(id, user);
            }
            None => r.disagreements.push(format!("claim {id} holds {v:?} in Cairn, not a granted claim")),
        }
    }
    r.cairn_claims = cairn.len();
    let int = |v: Option<String>| v.and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
    r.granted_counter = int(redis::cmd("GET").arg(key(voucher, "granted")).query_async(&mut c).await?);
    r.remaining = int(redis::cmd("GET").arg(key(voucher, "remaining")).query_async(&mut c).await?);
    let user_prefix = key(voucher, "user:");
    let mut counted: BTreeMap<i64, i64> = BTreeMap::new();
    for (k, v) in scan_values(&mut c, &format!("{user_prefix}*")).await? {
        if let Some(user) = k.strip_prefix(&user_prefix).and_then(|u| u.parse().ok()) {
            counted.insert(user, v.parse().unwrap_or(-1));
        }
    }

    let pg = connect_postgres(postgres).await?;
    let rows = pg.query("SELECT claim_id, user_id FROM claims WHERE voucher = $1", &[&voucher]).await?;
    let stored: BTreeMap<String, i64> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    r.postgres_claims = stored.len();

    for (id, user) in &cairn {
        match stored.get(id) {
            None => r.missing_in_postgres.push((id.clone(), *user)),
            Some(u) if u != user => {
                r.disagreements.push(format!("claim {id}: user {user} in Cairn, user {u} in PostgreSQL"))
            }
            Some(_) => {}
        }
    }
    r.unknown_to_cairn = stored.keys().filter(|id| !cairn.contains_key(*id)).cloned().collect();
    if r.granted_counter != cairn.len() as i64 {
        r.disagreements.push(format!(
            "the granted counter is {}, Cairn holds {} claims",
            r.granted_counter,
            cairn.len()
        ));
    }
    if let Some(limit) = limit {
        if r.granted_counter + r.remaining != limit {
            r.disagreements.push(format!(
                "granted {} + remaining {} is not the voucher's limit {limit}",
                r.granted_counter, r.remaining
            ));
        }
    }
    let mut per_user: BTreeMap<i64, i64> = BTreeMap::new();
    for user in cairn.values() {
        *per_user.entry(*user).or_default() += 1;
    }
    for (user, n) in &counted {
        if per_user.get(user).copied().unwrap_or(0) != *n {
            r.disagreements.push(format!(
                "user {user} is counted {n} in Cairn, which records {} claims for them",
                per_user.get(user).copied().unwrap_or(0)
            ));
        }
    }
    for user in per_user.keys().filter(|u| !counted.contains_key(u)) {
        r.disagreements.push(format!("user {user} has claims in Cairn but no count"));
    }

    if repair && !r.missing_in_postgres.is_empty() {
        let mut pg = pg;
        let tx = pg.transaction().await?;
        for (id, user) in &r.missing_in_postgres {
            let written = tx
                .execute(
                    "INSERT INTO claims (claim_id, voucher, user_id, version) VALUES ($1, $2, $3, 'repair') \
                     ON CONFLICT (claim_id) DO NOTHING",
                    &[id, &voucher, user],
                )
                .await?;
            r.repaired += written as usize;
        }
        tx.commit().await?;
    }
    Ok(r)
}
