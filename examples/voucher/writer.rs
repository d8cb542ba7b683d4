//! The feed writer: follows the voucher's claim records through Cairn's change
//! feed and writes each one into PostgreSQL, the system of record.
//!
//! Exactly-once effects from an at-least-once feed: claims go in with the
//! claim id as primary key (`ON CONFLICT DO NOTHING`), and the feed's resolved
//! checkpoint is committed in the same PostgreSQL transaction as the claims it
//! covers. A writer that crashes (or whose database restarts) starts again from
//! the checkpoint PostgreSQL holds: nothing above it was committed, nothing
//! below it can be missing.

use cairn_proto::kv::cairn_client::CairnClient;
use cairn_proto::kv::{SubscribeRequest, Version};
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

pub const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS claims (
        claim_id TEXT PRIMARY KEY,
        voucher TEXT NOT NULL,
        user_id BIGINT NOT NULL,
        version TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS feed_checkpoints (
        feed TEXT PRIMARY KEY,
        resolved TEXT NOT NULL
    );";

#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// gRPC endpoints of the cluster's nodes; the writer moves to the next when one fails.
    pub cairn: Vec<String>,
    /// A libpq-style connection string.
    pub postgres: String,
    pub voucher: String,
}

impl WriterConfig {
    /// The Redis keys of the voucher's claim records: one hash tag, so one slot.
    pub fn claim_prefix(&self) -> String {
        format!("{{voucher:{}}}claim:", self.voucher)
    }

    fn feed_name(&self) -> String {
        format!("voucher:{}", self.voucher)
    }
}

pub fn fmt_version(v: &Version) -> String {
    format!("{}.{}.{}", v.wall_ns, v.logical, v.node_id)
}

pub fn parse_version(s: &str) -> Option<Version> {
    let mut it = s.split('.').map(str::parse::<u64>);
    let (Some(Ok(wall_ns)), Some(Ok(logical)), Some(Ok(node_id)), None) = (it.next(), it.next(), it.next(), it.next())
    else {
        return None;
    };
    Some(Version { wall_ns, logical: u32::try_from(logical).ok()?, node_id: u32::try_from(node_id).ok()? })
}

pub async fn connect_postgres(conn: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conn, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn cairn_client(addr: &str) -> anyhow::Result<CairnClient<tonic::transport::Channel>> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await?;
    Ok(CairnClient::new(ch))
}

/// Creates the tables, and the feed's first checkpoint: the moment the feed
/// first resolves. Run it once, before the voucher takes claims; a writer then
/// never starts without a checkpoint (starting "now" could skip claims).
pub async fn init(cfg: &WriterConfig) -> anyhow::Result<()> {
    let pg = connect_postgres(&cfg.postgres).await?;
    pg.batch_execute(SCHEMA).await?;
    if checkpoint(&pg, cfg).await?.is_some() {
        return Ok(());
    }
    let mut c = cairn_client(&cfg.cairn[0]).await?;
    let req = SubscribeRequest {
        table: "redis".into(),
        prefix: cfg.claim_prefix().into_bytes(),
        resolved_interval_ms: 100,
        ..Default::default()
    };
    let mut stream = c.subscribe(req).await?.into_inner();
    let first = loop {
        let m = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await?
            .map_err(|s| anyhow::anyhow!("subscribing: {s}"))?
            .ok_or_else(|| anyhow::anyhow!("the feed ended before its first checkpoint"))?;
        if let Some(v) = m.resolved {
            break v;
        }
    };
    pg.execute(
        "INSERT INTO feed_checkpoints (feed, resolved) VALUES ($1, $2) ON CONFLICT (feed) DO NOTHING",
        &[&cfg.feed_name(), &fmt_version(&first)],
    )
    .await?;
    Ok(())
}

async fn checkpoint(pg: &Client, cfg: &WriterConfig) -> anyhow::Result<Option<Version>> {
    let row = pg.query_opt("SELECT resolved FROM feed_checkpoints WHERE feed = $1", &[&cfg.feed_name()]).await?;
    match row {
        None => Ok(None),
        Some(r) => {
            let s: String = r.get(0);
            parse_version(&s).map(Some).ok_or_else(|| anyhow::anyhow!("a malformed checkpoint in PostgreSQL: {s:?}"))
        }
    }
}

/// One claim record from the feed: `GRANTED <user>` under `...claim:<claim id>`.
fn parse_claim(prefix: &str, key: &[u8], value: &[u8]) -> Option<(String, i64)> {
    let id = std::str::from_utf8(key).ok()?.strip_prefix(prefix)?;
    let user = std::str::from_utf8(value).ok()?.strip_prefix("GRANTED ")?.parse().ok()?;
    Some((id.to_string(), user))
}

/// What one writer run did before it stopped.
#[derive(Debug, Default, Clone, Copy)]
pub struct Progress {
    pub transactions: u64,
    pub claims_written: u64,
}

/// Follows the feed from PostgreSQL's checkpoint until something fails (the
/// feed, the database); the caller restarts it. `progress` counts what it committed.
pub async fn run_once(cfg: &WriterConfig, node: usize, progress: &mut Progress) -> anyhow::Result<()> {
    let mut pg = connect_postgres(&cfg.postgres).await?;
    let from = checkpoint(&pg, cfg).await?.ok_or_else(|| anyhow::anyhow!("no checkpoint: run init first"))?;
    let mut c = cairn_client(&cfg.cairn[node % cfg.cairn.len()]).await?;
    let prefix = cfg.claim_prefix();
    let req = SubscribeRequest {
        table: "redis".into(),
        prefix: prefix.clone().into_bytes(),
        from_version: Some(from),
        resolved_interval_ms: 200,
        ..Default::default()
    };
    let mut stream = c.subscribe(req).await?.into_inner();
    let mut pending: Vec<(String, i64, String)> = Vec::new();
    let mut resolved: Option<Version> = None;
    let mut last_commit = std::time::Instant::now();
    loop {
        // A feed that stops making progress (its node cut off) is abandoned for another.
        let m = match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Err(_) => anyhow::bail!("no message from the feed for 10 s"),
            Ok(m) => m.map_err(|s| anyhow::anyhow!("feed: {}: {}", s.code(), s.message()))?,
        };
        let Some(m) = m else { anyhow::bail!("the feed ended") };
        for e in m.events.iter().filter(|e| !e.deleted) {
            match parse_claim(&prefix, &e.key, &e.value) {
                Some((id, user)) => pending.push((id, user, e.version.as_ref().map(fmt_version).unwrap_or_default())),
                None => eprintln!("voucher writer: skipped a record it does not understand: {:?}", e.key),
            }
        }
        resolved = m.resolved.or(resolved);
        // Commit at checkpoints, at most ten times a second: each commit is an fsync.
        let Some(checkpoint) = resolved.filter(|_| last_commit.elapsed() >= COMMIT_EVERY) else { continue };
        // The claims received so far and the checkpoint, in one transaction. Claims above
        // the checkpoint may go in too: a restart replays them, and they are ignored then.
        let tx = pg.transaction().await?;
        let insert = tx
            .prepare(
                "INSERT INTO claims (claim_id, voucher, user_id, version) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (claim_id) DO NOTHING",
            )
            .await?;
        for (id, user, version) in &pending {
            tx.execute(&insert, &[id, &cfg.voucher, user, version]).await?;
        }
        tx.execute(
            "UPDATE feed_checkpoints SET resolved = $2 WHERE feed = $1",
            &[&cfg.feed_name(), &fmt_version(&checkpoint)],
        )
        .await?;
        tx.commit().await?;
        progress.transactions += 1;
        progress.claims_written += pending.len() as u64;
        pending.clear();
        resolved = None;
        last_commit = std::time::Instant::now();
    }
}

/// How often the writer commits at most.
const COMMIT_EVERY: Duration = Duration::from_millis(100);

/// Runs the writer for good: after any failure it waits a moment and starts
/// again from PostgreSQL's checkpoint, through the next node.
pub async fn run(cfg: WriterConfig) {
    let mut node = 0;
    let mut progress = Progress::default();
    loop {
        if let Err(e) = run_once(&cfg, node, &mut progress).await {
            eprintln!("voucher writer: {e:#}; starting again from the checkpoint");
        }
        node += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_and_versions_parse() {
        assert_eq!(
            parse_claim("{voucher:v}claim:", b"{voucher:v}claim:c1-2", b"GRANTED 17"),
            Some(("c1-2".into(), 17))
        );
        assert_eq!(parse_claim("{voucher:v}claim:", b"{voucher:v}user:3", b"1"), None);
        let v = Version { wall_ns: 5, logical: 6, node_id: 7 };
        assert_eq!(parse_version(&fmt_version(&v)), Some(v));
        assert_eq!(parse_version("1.2"), None);
    }
}
