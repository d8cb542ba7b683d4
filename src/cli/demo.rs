//! `cairn demo`: starts a local cluster of `cairn server` processes on
//! loopback (node 1 bootstraps, the others join it), waits until every range
//! is fully replicated, prints the endpoints and a short tour, and stops the
//! nodes cleanly on Ctrl-C.

// The demo supervises real processes from outside any node, on the OS clock.
#![allow(clippy::disallowed_methods)]

use crate::server::node::NodeEndpoints;
use anyhow::{bail, Context, Result};
use cairn_proto::kv::cairn_client::CairnClient;
use cairn_proto::kv::{ClusterStatusRequest, ListTablesRequest};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

fn wait_for_endpoints(dir: &Path, child: &mut Child, timeout: Duration) -> Result<NodeEndpoints> {
    let file = dir.join("node.json");
    let started = Instant::now();
    loop {
        if let Ok(bytes) = std::fs::read(&file) {
            if let Ok(e) = serde_json::from_slice::<NodeEndpoints>(&bytes) {
                return Ok(e);
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("node exited during start-up ({status}); see {}", dir.with_extension("log").display());
        }
        if started.elapsed() > timeout {
            bail!("node did not start within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop_all(children: &mut [Child]) {
    for c in children.iter() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for c in children.iter_mut() {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
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
    let exe = std::env::current_exe().context("locating the cairn binary")?;
    let mut children: Vec<Child> = Vec::new();
    let mut endpoints: Vec<NodeEndpoints> = Vec::new();
    let worker_threads = share_of_cores(args.nodes);
    let result: Result<()> = async {
        for i in 0..args.nodes {
            let dir = root.join(format!("node{}", i + 1));
            let port = |off: u16| if base == 0 { 0 } else { base + off + i as u16 };
            let log = std::fs::File::create(root.join(format!("node{}.log", i + 1)))?;
            let mut cmd = Command::new(&exe);
            cmd.arg("server")
                .arg("--data-dir")
                .arg(&dir)
                .arg("--listen")
                .arg(format!("127.0.0.1:{}", port(0)))
                .arg("--http-listen")
                .arg(format!("127.0.0.1:{}", port(80)))
                .arg("--redis-listen")
                .arg(format!("127.0.0.1:{}", if redis_base == 0 { 0 } else { redis_base + i as u16 }))
                .arg("--replication-factor")
                .arg(args.replication_factor.to_string())
                .arg("--zone")
                .arg(format!("zone-{}", i + 1))
                // Redis clients are shown node 1's address: the keyspace's leaders sit
                // there, so a plain client's commands are not forwarded (a cluster-aware
                // client, or `cairn table alter redis --clear-lease-preferences`, spreads them).
                .arg("--redis-lease-preferences")
                .arg("zone-1")
                .arg("--worker-threads")
                .arg(worker_threads.to_string())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            // A restarted demo keeps its data and its identities: only a new node joins.
            let fresh = !dir.join("node.json").exists();
            let _ = std::fs::remove_file(dir.join("node.json"));
            if i > 0 && fresh {
                cmd.arg("--join").arg(&endpoints[0].grpc);
            }
            children.push(cmd.spawn().context("starting a node")?);
            let child = children.last_mut().context("no child")?;
            endpoints.push(wait_for_endpoints(&dir, child, Duration::from_secs(90))?);
        }
        wait_ready(&endpoints[0].grpc, args.nodes, args.replication_factor, Duration::from_secs(120)).await?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        stop_all(&mut children);
        return Err(e);
    }
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
    println!("Press Ctrl-C to stop.");
    let mut exited = None;
    tokio::select! {
        _ = super::stop_signal() => {}
        i = watch_children(&mut children) => exited = Some(i),
    }
    if let Some(i) = exited {
        eprintln!("cairn demo: node {} exited unexpectedly; stopping the others", i + 1);
    }
    stop_all(&mut children);
    println!("stopped.");
    Ok(())
}

async fn watch_children(children: &mut [Child]) -> usize {
    loop {
        for (i, c) in children.iter_mut().enumerate() {
            if let Ok(Some(_)) = c.try_wait() {
                return i;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
