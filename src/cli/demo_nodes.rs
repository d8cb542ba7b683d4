//! The demo's node processes: how each `cairn server` is started (data
//! directory, ports, zone), restarted on the addresses it had (so the cluster
//! and clients find it again), stopped, killed, and noticed when it exits.

// The demo supervises real processes from outside any node, on the OS clock.
#![allow(clippy::disallowed_methods)]

use crate::server::node::NodeEndpoints;
use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a node may take to write its endpoints file.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a stopped node has to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What every node of one demo shares.
pub struct Launch {
    pub exe: PathBuf,
    pub root: PathBuf,
    pub replication_factor: usize,
    pub worker_threads: usize,
}

/// One node: where it listens, its process while it runs, and what it told us.
pub struct DemoNode {
    /// 1-based position in the demo (its node id in a fresh cluster).
    pub number: usize,
    grpc_listen: String,
    http_listen: String,
    redis_listen: String,
    child: Option<Child>,
    pub endpoints: Option<NodeEndpoints>,
}

impl DemoNode {
    /// Ports of 0 are picked by the OS at the first start and kept for restarts.
    pub fn new(number: usize, grpc_port: u16, http_port: u16, redis_port: u16) -> Self {
        DemoNode {
            number,
            grpc_listen: format!("127.0.0.1:{grpc_port}"),
            http_listen: format!("127.0.0.1:{http_port}"),
            redis_listen: format!("127.0.0.1:{redis_port}"),
            child: None,
            endpoints: None,
        }
    }

    pub fn id(&self) -> u64 {
        self.endpoints.as_ref().map_or(self.number as u64, |e| e.node_id)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn dir(&self, launch: &Launch) -> PathBuf {
        launch.root.join(format!("node{}", self.number))
    }

    /// Starts the node and waits for its endpoints. A node that has run before
    /// keeps its identity and data; only a new one joins through `join`.
    pub async fn start(&mut self, launch: &Launch, join: Option<&str>) -> Result<()> {
        if self.child.is_some() {
            bail!("node {} is already running", self.id());
        }
        let dir = self.dir(launch);
        let log_path = launch.root.join(format!("node{}.log", self.number));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut cmd = Command::new(&launch.exe);
        cmd.arg("server")
            .arg("--data-dir")
            .arg(&dir)
            .args(["--listen", &self.grpc_listen, "--http-listen", &self.http_listen])
            .args(["--redis-listen", &self.redis_listen])
            .args(["--replication-factor", &launch.replication_factor.to_string()])
            .args(["--zone", &format!("zone-{}", self.number)])
            // Redis clients are shown node 1's address: the keyspace's leaders sit
            // there, so a plain client's commands are not forwarded (a cluster-aware
            // client, or `cairn table alter redis --clear-lease-preferences`, spreads them).
            .args(["--redis-lease-preferences", "zone-1"])
            .args(["--worker-threads", &launch.worker_threads.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let fresh = !dir.join("node.json").exists();
        let _ = std::fs::remove_file(dir.join("node.json"));
        if let Some(join) = join.filter(|_| fresh) {
            cmd.arg("--join").arg(join);
        }
        let child = self.child.insert(cmd.spawn().context("starting a node")?);
        let endpoints = wait_for_endpoints(&dir, &log_path, child).await;
        let endpoints = match endpoints {
            Ok(e) => e,
            Err(e) => {
                self.stop(Signal::SIGKILL);
                return Err(e);
            }
        };
        // A restart must come back where the other nodes and the clients look for it.
        self.grpc_listen = endpoints.grpc.clone();
        self.http_listen = endpoints.http.clone();
        if !endpoints.redis.is_empty() {
            self.redis_listen = endpoints.redis.clone();
        }
        self.endpoints = Some(endpoints);
        Ok(())
    }

    /// Sends `signal` (SIGTERM: a clean stop, killed after a grace period;
    /// SIGKILL: a crash) and waits for the process to go. False if it was not running.
    pub fn stop(&mut self, signal: Signal) -> bool {
        self.signal(signal);
        let Some(mut child) = self.child.take() else { return false };
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        true
    }

    /// Sends `signal` without waiting.
    pub fn signal(&self, signal: Signal) {
        if let Some(child) = &self.child {
            let _ = kill(Pid::from_raw(child.id() as i32), signal);
        }
    }

    /// The exit status of a node that was running and has exited on its own.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }
}

async fn wait_for_endpoints(dir: &Path, log: &Path, child: &mut Child) -> Result<NodeEndpoints> {
    let file = dir.join("node.json");
    let started = Instant::now();
    loop {
        if let Ok(bytes) = std::fs::read(&file) {
            if let Ok(e) = serde_json::from_slice::<NodeEndpoints>(&bytes) {
                return Ok(e);
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("node exited during start-up ({status}); see {}", log.display());
        }
        if started.elapsed() > START_TIMEOUT {
            bail!("node did not start within {START_TIMEOUT:?}; see {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
