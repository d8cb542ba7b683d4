//! The voucher example: a flash sale's gatekeeper on Cairn's Redis protocol.
//!
//! Creates a voucher with a global quota, lets many clients claim it for many
//! users (at most `--per-user` each) through `claim.lua`, each claim retried
//! with its claim id until answered, then audits what is stored against what
//! the clients were told. Exits non-zero if anything disagrees: an oversold
//! quota, a user over the limit, a granted claim lost, a counter off.
//!
//!     cargo run --release --bin cairn -- demo        # in one terminal
//!     cargo run --release --example voucher -- --nodes 127.0.0.1:6379,127.0.0.1:6380,127.0.0.1:6381

// A client program, not node code: it times itself on the OS clock.
#![allow(clippy::disallowed_methods)]

#[path = "load.rs"]
mod load;

use clap::Parser;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
struct Args {
    /// Redis endpoints of the cluster's nodes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:6379,127.0.0.1:6380,127.0.0.1:6381")]
    nodes: Vec<String>,
    /// Voucher id (a fresh one per run unless given).
    #[arg(long)]
    voucher: Option<String>,
    #[arg(long, default_value_t = 1000)]
    limit: i64,
    #[arg(long, default_value_t = 2)]
    per_user: i64,
    #[arg(long, default_value_t = 2000)]
    users: u64,
    #[arg(long, default_value_t = 200)]
    clients: usize,
    #[arg(long, default_value_t = 30)]
    seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let voucher = a.voucher.unwrap_or_else(|| format!("v{}", std::process::id()));
    let cfg = load::Config {
        nodes: a.nodes,
        voucher,
        limit: a.limit,
        per_user: a.per_user,
        users: a.users,
        clients: a.clients,
        duration: Duration::from_secs(a.seconds),
    };
    load::create(&cfg).await?;
    let started = Instant::now();
    let outcome = load::run(&cfg).await;
    let audit = load::audit(&cfg, &outcome).await?;
    println!(
        "voucher {}: {} claims answered in {:?} ({} retried), {} granted, {} remaining, counter {}, most held by one user {}",
        cfg.voucher,
        outcome.answers.len(),
        started.elapsed(),
        outcome.retries,
        audit.granted_answers,
        audit.remaining,
        audit.granted_counter,
        audit.most_held_by_one_user
    );
    for p in audit.problems.iter().take(20) {
        eprintln!("PROBLEM: {p}");
    }
    anyhow::ensure!(audit.problems.is_empty(), "{} problems found", audit.problems.len());
    Ok(())
}
