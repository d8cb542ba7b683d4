//! `cairn demo`: starts a local cluster of `cairn server` processes on
//! loopback (node 1 bootstraps, the others join it), waits until every range
//! is fully replicated, prints the endpoints and a short tour, then keeps
//! running when a node dies and takes commands on its standard input to
//! stop, kill and restart nodes (a failover to watch), until Ctrl-C or `quit`.
//! The processes themselves are `demo_nodes`.

// The demo supervises real processes from outside any node, on the OS clock.
#![allow(clippy::disallowed_methods)]

use super::demo_nodes::{DemoNode, Launch};
use anyhow::{bail, Context, Result};
use cairn_proto::kv::cairn_client::CairnClient;
use cairn_proto::kv::{ClusterStatusRequest, ListTablesRequest};
use clap::Args;
use nix::sys::signal::Signal;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where the nodes keep their data (default: a temporary directory, removed on exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// First gRPC port (node i uses base+i-1, its HTTP port base+80+i-1); 0 picks free ports.
    #[arg(long, default_value_t = 7401)]
    pub base_port: u16,
    #[arg(long, default_value_t = 3)]
    pub replication_factor: usize,
    /// Write the nodes' gRPC addresses here (comma-separated) once the cluster serves.
    #[arg(long)]
    pub endpoints_file: Option<PathBuf>,
    /// First Redis-protocol port (node i uses base+i-1); 0, or a port in use, picks free ports.
    #[arg(long, default_value_t = 6379)]
    pub redis_base_port: u16,
    /// Write the nodes' Redis-protocol addresses here (comma-separated) once the cluster serves.
    #[arg(long)]
    pub redis_endpoints_file: Option<PathBuf>,
}

/// Runtime threads for each of `nodes` nodes sharing this machine: their share of the
/// cores, at least one. A runtime per node with a thread per core would put several
/// times more busy threads than cores on the machine, and the switching between them
/// cost about a tenth of the write throughput on 2 cores (`scripts/bench-vs-etcd.sh`).
fn share_of_cores(nodes: usize) -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    (cores / nodes.max(1)).max(1)
}

fn ports_free(base: u16, n: usize) -> bool {
    (0..n as u16).all(|i| {
        let g = std::net::TcpListener::bind(("127.0.0.1", base.saturating_add(i))).is_ok();
        let h = std::net::TcpListener::bind(("127.0.0.1", base.saturating_add(80 + i))).is_ok();
        g && h
    })
}

/// Waits until all nodes are live and every range has its full replica set.
async fn wait_ready(addr: &str, nodes: usize, rf: usize, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let want = rf.min(nodes);
    let mut last = String::from("not reached yet");
    while started.elapsed() < timeout {
        if let Ok(mut c) = CairnClient::connect(format!("http://{addr}")).await {
            match c.cluster_status(ClusterStatusRequest {}).await {
                Ok(s) => {
                    let s = s.into_inner();
                    let live = s.nodes.iter().filter(|n| n.live).count();
                    let full = s.ranges.iter().all(|r| r.replicas.iter().filter(|x| !x.learner).count() >= want);
                    let keyspace = c.list_tables(ListTablesRequest {}).await.is_ok_and(|t| {
                        t.into_inner().tables.iter().any(|t| t.name == crate::frontend::resp::keyspace::TABLE)
                    });
                    if live >= nodes && full && !s.ranges.is_empty() && keyspace {
                        return Ok(());
                    }
                    last = format!("{live}/{nodes} nodes live, {} ranges", s.ranges.len());
                }
                Err(e) => last = e.message().to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    bail!("cluster not ready after {timeout:?}: {last}")
}

pub async fn run(args: DemoArgs) -> Result<()> {
    if args.nodes == 0 || args.nodes > 9 {
        bail!("--nodes must be between 1 and 9");
    }
    let (_tmp, root) = match &args.data_dir {
        Some(d) => (None, d.clone()),
        None => {
            let t = tempfile::Builder::new().prefix("cairn-demo-").tempdir()?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    std::fs::create_dir_all(&root)?;
    let base = if args.base_port != 0 && ports_free(args.base_port, args.nodes) { args.base_port } else { 0 };
    let redis_free = (0..args.nodes as u16)
        .all(|i| std::net::TcpListener::bind(("127.0.0.1", args.redis_base_port.saturating_add(i))).is_ok());
    let redis_base = if args.redis_base_port != 0 && redis_free { args.redis_base_port } else { 0 };
    let launch = Launch {
        exe: std::env::current_exe().context("locating the cairn binary")?,
        root: root.clone(),
        replication_factor: args.replication_factor,
        worker_threads: share_of_cores(args.nodes),
    };
    let mut nodes: Vec<DemoNode> = (0..args.nodes)
        .map(|i| {
            let port = |first: u16| if first == 0 { 0 } else { first + i as u16 };
            DemoNode::new(i + 1, port(base), port(if base == 0 { 0 } else { base + 80 }), port(redis_base))
        })
        .collect();
    let started: Result<()> = async {
        let mut first_grpc = None;
        for node in nodes.iter_mut() {
            node.start(&launch, first_grpc.as_deref()).await?;
            if first_grpc.is_none() {
                first_grpc = node.endpoints.as_ref().map(|e| e.grpc.clone());
            }
        }
        let first = first_grpc.context("no node started")?;
        wait_ready(&first, args.nodes, args.replication_factor, Duration::from_secs(120)).await
    }
    .await;
    if let Err(e) = started {
        stop_all(&mut nodes);
        return Err(e);
    }
    let endpoints: Vec<_> = nodes.iter().filter_map(|n| n.endpoints.clone()).collect();
    let addrs: Vec<String> = endpoints.iter().map(|e| e.grpc.clone()).collect();
    if let Some(f) = &args.endpoints_file {
        std::fs::write(f, addrs.join(","))?;
    }
    let redis_addrs: Vec<String> = endpoints.iter().map(|e| e.redis.clone()).collect();
    if let Some(f) = &args.redis_endpoints_file {
        std::fs::write(f, redis_addrs.join(","))?;
    }
    println!("Cairn demo cluster is up ({} nodes, data in {}).", args.nodes, root.display());
    for e in &endpoints {
        println!("  node {}  grpc {}  redis {}  console http://{}/", e.node_id, e.grpc, e.redis, e.http);
    }
    let a = &addrs[0];
    println!();
    println!("Try this (in another terminal):");
    println!("  cairn --addr {a} table create users");
    println!("  cairn --addr {a} put users alice '{{\"plan\":\"pro\"}}'");
    println!("  cairn --addr {a} get users alice");
    println!("  cairn --addr {a} scan users --prefix a");
    println!("  cairn --addr {a} range split users m");
    println!("  cairn --addr {a} cluster status");
    if let Some((host, port)) = redis_addrs[0].rsplit_once(':') {
        println!("  redis-cli -h {host} -p {port} set greeting hello");
        println!("  redis-cli -h {host} -p {port} get greeting");
    }
    println!();
    println!("Here, type `kill N` (a crash), `stop N`, `start N`, `status` or `quit`; Ctrl-C also stops the demo.");
    control(&launch, &mut nodes).await;
    stop_all(&mut nodes);
    println!("stopped.");
    Ok(())
}

/// Takes commands from standard input and reports nodes that exit, until a
/// stop signal or `quit`. A node that dies leaves the others serving. Without
/// input (standard input closed), it only watches.
async fn control(launch: &Launch, nodes: &mut [DemoNode]) {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut input_open = true;
    let stop = super::stop_signal();
    tokio::pin!(stop);
    let mut watch = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = watch.tick() => {
                for n in nodes.iter_mut() {
                    if let Some(status) = n.exited() {
                        println!(
                            "node {} exited ({status}); the others keep serving. `start {}` restarts it.",
                            n.id(),
                            n.id()
                        );
                    }
                }
            }
            line = lines.next_line(), if input_open => match line {
                Ok(Some(line)) => {
                    if !command(launch, nodes, line.trim()).await {
                        return;
                    }
                }
                _ => input_open = false,
            },
        }
    }
}

/// Runs one prompt command; false means quit.
async fn command(launch: &Launch, nodes: &mut [DemoNode], line: &str) -> bool {
    let mut words = line.split_whitespace();
    let (verb, arg) = (words.next().unwrap_or(""), words.next());
    let target = arg.and_then(|a| a.parse::<u64>().ok()).and_then(|id| nodes.iter().position(|n| n.id() == id));
    match (verb, target) {
        ("" | "help", _) => {
            println!("kill N: SIGKILL node N (a crash); stop N: stop it cleanly; start N: start it again");
            println!("status: which nodes run; quit: stop every node and exit");
        }
        ("quit" | "exit", _) => return false,
        ("status", _) => {
            for n in nodes.iter() {
                match n.pid() {
                    Some(pid) => println!("node {} running (pid {pid})", n.id()),
                    None => println!("node {} stopped", n.id()),
                }
            }
        }
        ("kill" | "stop", Some(i)) => {
            let signal = if verb == "kill" { Signal::SIGKILL } else { Signal::SIGTERM };
            let id = nodes[i].id();
            match nodes[i].stop(signal) {
                true => println!("node {id} {}", if verb == "kill" { "killed" } else { "stopped" }),
                false => println!("node {id} is not running"),
            }
        }
        ("start", Some(i)) => {
            let join = nodes.first().and_then(|n| n.endpoints.as_ref()).map(|e| e.grpc.clone());
            let id = nodes[i].id();
            match nodes[i].start(launch, join.as_deref()).await {
                Ok(()) => println!("node {id} started"),
                Err(e) => println!("node {id} did not start: {e:#}"),
            }
        }
        ("kill" | "stop" | "start", None) => println!("{verb} needs a node id (one of {:?})", ids(nodes)),
        _ => println!("unknown command {line:?}; type help"),
    }
    true
}

fn ids(nodes: &[DemoNode]) -> Vec<u64> {
    nodes.iter().map(DemoNode::id).collect()
}

/// Stops every node, all at once.
fn stop_all(nodes: &mut [DemoNode]) {
    for n in nodes.iter() {
        n.signal(Signal::SIGTERM);
    }
    for n in nodes.iter_mut() {
        n.stop(Signal::SIGTERM);
    }
}
