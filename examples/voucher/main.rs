//! The voucher example: a flash sale's gatekeeper on Cairn's Redis protocol,
//! its change feed written into PostgreSQL, and a reconciliation.
//!
//!     cargo run --release --bin cairn -- demo                    # a cluster
//!     examples/voucher/run.sh                                    # PostgreSQL, the writer, claims, reconciliation
//!
//! Subcommands: `claims` (create a voucher, claim it from many clients, audit
//! the answers), `init` and `writer` (the feed writer into PostgreSQL),
//! `reconcile [--repair]`.

// A client program, not node code: it times itself on the OS clock.
#![allow(clippy::disallowed_methods)]

#[path = "load.rs"]
mod load;
#[path = "reconcile.rs"]
mod reconcile;
#[path = "writer.rs"]
mod writer;

use clap::{Parser, Subcommand};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
struct Args {
    /// Redis endpoints of the cluster's nodes, comma-separated.
    #[arg(long, global = true, value_delimiter = ',', default_value = "127.0.0.1:6379,127.0.0.1:6380,127.0.0.1:6381")]
    nodes: Vec<String>,
    /// gRPC endpoints of the cluster's nodes (for the change feed), comma-separated.
    #[arg(long, global = true, value_delimiter = ',', default_value = "127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403")]
    grpc: Vec<String>,
    /// PostgreSQL connection string (libpq style).
    #[arg(long, global = true, default_value = "host=127.0.0.1 user=postgres dbname=postgres")]
    postgres: String,
    /// Voucher id.
    #[arg(long, global = true, default_value = "flash")]
    voucher: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create the voucher, claim it from many clients, and audit what they were told.
    Claims {
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
    },
    /// Create PostgreSQL's tables and the feed's first checkpoint (before any claim).
    Init,
    /// Follow the voucher's claims through the change feed into PostgreSQL, for good.
    Writer,
    /// Compare Cairn's claims and counters with PostgreSQL's rows; exits non-zero on a difference.
    Reconcile {
        /// The voucher's quota, to check granted + remaining against it.
        #[arg(long)]
        limit: Option<i64>,
        /// Write the claims PostgreSQL lacks, read from Cairn.
        #[arg(long)]
        repair: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let wcfg = writer::WriterConfig { cairn: a.grpc.clone(), postgres: a.postgres.clone(), voucher: a.voucher.clone() };
    match a.cmd {
        Cmd::Init => writer::init(&wcfg).await,
        Cmd::Writer => {
            writer::run(wcfg).await;
            Ok(())
        }
        Cmd::Reconcile { limit, repair } => {
            let r = reconcile::reconcile(&a.nodes[0], &a.postgres, &a.voucher, limit, repair).await?;
            println!("{}", r.summary());
            if repair && r.repaired > 0 {
                let again = reconcile::reconcile(&a.nodes[0], &a.postgres, &a.voucher, limit, false).await?;
                println!("after the repair: {}", again.summary());
                anyhow::ensure!(again.differences() == 0, "{} differences remain", again.differences());
                return Ok(());
            }
            anyhow::ensure!(r.differences() == 0, "{} differences", r.differences());
            Ok(())
        }
        Cmd::Claims { limit, per_user, users, clients, seconds } => {
            let cfg = load::Config {
                nodes: a.nodes,
                voucher: a.voucher,
                limit,
                per_user,
                users,
                clients,
                duration: Duration::from_secs(seconds),
            };
            load::create(&cfg).await?;
            let started = Instant::now();
            let outcome = load::run(&cfg).await;
            let audit = load::audit(&cfg, &outcome).await?;
            let secs = started.elapsed().as_secs_f64();
            println!("voucher {}: {}", cfg.voucher, load::summary(&outcome, &audit, secs));
            for p in audit.problems.iter().take(20) {
                eprintln!("PROBLEM: {p}");
            }
            anyhow::ensure!(audit.problems.is_empty(), "{} problems found", audit.problems.len());
            Ok(())
        }
    }
}
