//! Test harness: real `cairn server` processes on loopback (ephemeral ports),
//! each with its own data directory, that tests can kill -9, stop, pause and
//! restart. Every process is killed when the cluster is dropped.

// Tests keep their own deadlines on the OS clock; the clock rule (clippy.toml) is for node code.
#![allow(clippy::disallowed_methods)]
#![allow(dead_code)]

pub mod chaos;
pub mod feed;
pub mod netlab;
pub mod postgres;
pub mod register;
pub mod resp_register;
pub mod script_batch;
pub mod stale;

use cairn_proto::kv::cairn_client::CairnClient;
use cairn_proto::kv::*;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Cluster tests run one at a time: they are timing-sensitive on small machines.
/// (A tokio mutex works across the tests' separate runtimes and is not poisoned by a failed test.)
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

#[derive(Deserialize, Clone, Debug)]
pub struct Endpoints {
    pub node_id: u64,
    pub grpc: String,
    pub http: String,
    /// The node's Redis-protocol address.
    #[serde(default)]
    pub redis: String,
}

pub struct Node {
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub ep: Option<Endpoints>,
}

pub struct Cluster {
    tmp: Option<tempfile::TempDir>,
    pub root: PathBuf,
    pub nodes: Vec<Node>,
    pub extra: Vec<String>,
    /// Set when every node runs in its own network namespace (chaos tests).
    pub lab: Option<netlab::NetLab>,
    /// Extra environment for every server process.
    pub env: Vec<(String, String)>,
    /// Whether the nodes serve the Redis protocol (off unless a test asks: the
    /// keyspace table it creates would change every other test's ranges).
    pub redis: bool,
    /// Whether node i runs in zone `zone-<i+1>` (otherwise every node is in no zone).
    pub zoned: bool,
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cairn")
}

impl Cluster {
    /// Starts `n` nodes (node 1 bootstraps, the others join) and waits until
    /// every range has min(3, n) voters.
    pub async fn start(n: usize, extra: &[&str]) -> Cluster {
        Self::start_in(n, extra, None, &[]).await
    }

    /// Starts `n` nodes on loopback with extra environment for every server.
    pub async fn start_with_env(n: usize, extra: &[&str], env: &[(&str, &str)]) -> Cluster {
        Self::start_in(n, extra, None, env).await
    }

    /// Starts `n` nodes, each in its own network namespace of a fresh lab, so
    /// that the test can cut links between them.
    pub async fn start_netlab(n: usize, extra: &[&str], env: &[(&str, &str)]) -> Cluster {
        // With the Redis front end on, so that RESP clients join the workloads.
        Self::start_full(n, extra, Some(netlab::NetLab::create(n)), env, true, false).await
    }

    /// Starts `n` nodes on loopback that also serve the Redis protocol, and waits
    /// until the Redis keyspace exists and is fully replicated.
    pub async fn start_redis(n: usize, extra: &[&str]) -> Cluster {
        Self::start_full(n, extra, None, &[], true, false).await
    }

    /// As `start_redis`, with `env` set for every node (a sabotage, say).
    pub async fn start_redis_with_env(n: usize, extra: &[&str], env: &[(&str, &str)]) -> Cluster {
        Self::start_full(n, extra, None, env, true, false).await
    }

    /// Starts `n` nodes on loopback, node i in zone `zone-<i+1>`.
    pub async fn start_zoned(n: usize, extra: &[&str]) -> Cluster {
        Self::start_full(n, extra, None, &[], false, true).await
    }

    /// Starts `n` nodes on loopback serving the Redis protocol, node i in zone `zone-<i+1>`.
    pub async fn start_redis_zoned(n: usize, extra: &[&str]) -> Cluster {
        Self::start_full(n, extra, None, &[], true, true).await
    }

    async fn start_in(n: usize, extra: &[&str], lab: Option<netlab::NetLab>, env: &[(&str, &str)]) -> Cluster {
        Self::start_full(n, extra, lab, env, false, false).await
    }

    async fn start_full(
        n: usize,
        extra: &[&str],
        lab: Option<netlab::NetLab>,
        env: &[(&str, &str)],
        redis: bool,
        zoned: bool,
    ) -> Cluster {
        let tmp = tempfile::Builder::new().prefix("cairn-test-").tempdir().expect("tempdir");
        let root = tmp.path().to_path_buf();
        let mut c = Cluster {
            tmp: Some(tmp),
            root: root.clone(),
            nodes: Vec::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            lab,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            redis,
            zoned,
        };
        for i in 0..n {
            c.nodes.push(Node { dir: root.join(format!("n{}", i + 1)), child: None, ep: None });
            let join = if i == 0 { None } else { Some(c.grpc(0)) };
            // In a namespace the node owns its address, so fixed ports cannot collide.
            let (listen, http, redis) = match &c.lab {
                Some(lab) => {
                    (format!("{}:7000", lab.ip(i)), format!("{}:7080", lab.ip(i)), format!("{}:6379", lab.ip(i)))
                }
                None => ("127.0.0.1:0".to_string(), "127.0.0.1:0".to_string(), "127.0.0.1:0".to_string()),
            };
            c.spawn(i, join.as_deref(), &listen, &http, &redis);
        }
        c.wait_replicated(n.min(3), Duration::from_secs(90)).await;
        if redis {
            c.wait_keyspace(Duration::from_secs(60)).await;
            c.wait_replicated(n.min(3), Duration::from_secs(90)).await;
        }
        c
    }

    /// Waits until the Redis keyspace table exists.
    pub async fn wait_keyspace(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut c = self.client(0).await;
            if let Ok(t) = c.list_tables(cairn_proto::kv::ListTablesRequest {}).await {
                if t.into_inner().tables.iter().any(|t| t.name == "redis") {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the Redis keyspace was not created within {timeout:?}\n{}", self.log(0));
    }

    /// Starts one more node that joins through node 1.
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        self.nodes.push(Node { dir: self.root.join(format!("n{}", i + 1)), child: None, ep: None });
        let join = self.grpc(0);
        self.spawn(i, Some(&join), "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0");
        i
    }

    fn spawn(&mut self, i: usize, join: Option<&str>, listen: &str, http: &str, redis: &str) {
        let node = &mut self.nodes[i];
        let _ = std::fs::remove_file(node.dir.join("node.json"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join(format!("n{}.log", i + 1)))
            .expect("log file");
        let mut cmd = match &self.lab {
            // `ip netns exec` execs the server in place, so the child's PID is the server's.
            Some(lab) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &lab.ns(i), bin()]);
                c
            }
            None => Command::new(bin()),
        };
        cmd.arg("server")
            .arg("--data-dir")
            .arg(&node.dir)
            .arg("--listen")
            .arg(listen)
            .arg("--http-listen")
            .arg(http)
            .arg("--redis-listen")
            .arg(if self.redis { redis } else { "" })
            .args(&self.extra)
            .args(if self.zoned { vec!["--zone".to_string(), format!("zone-{}", i + 1)] } else { vec![] })
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if let Some(j) = join {
            cmd.arg("--join").arg(j);
        }
        node.child = Some(cmd.spawn().expect("spawn cairn server"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(b) = std::fs::read(node.dir.join("node.json")) {
                if let Ok(ep) = serde_json::from_slice::<Endpoints>(&b) {
                    node.ep = Some(ep);
                    return;
                }
            }
            if let Some(Ok(Some(st))) = node.child.as_mut().map(|c| c.try_wait()) {
                panic!("node {} exited during start-up: {st}\n{}", i + 1, self.log(i));
            }
            assert!(Instant::now() < deadline, "node {} did not start", i + 1);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self, i: usize) -> String {
        let s = std::fs::read_to_string(self.root.join(format!("n{}.log", i + 1))).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn grpc(&self, i: usize) -> String {
        self.nodes[i].ep.as_ref().expect("node started").grpc.clone()
    }

    pub fn http(&self, i: usize) -> String {
        self.nodes[i].ep.as_ref().expect("node started").http.clone()
    }

    /// Node `i`'s Redis-protocol address.
    pub fn redis(&self, i: usize) -> String {
        self.nodes[i].ep.as_ref().expect("node started").redis.clone()
    }

    pub fn node_id(&self, i: usize) -> u64 {
        self.nodes[i].ep.as_ref().expect("node started").node_id
    }

    pub fn index_of(&self, node_id: u64) -> usize {
        self.nodes.iter().position(|n| n.ep.as_ref().is_some_and(|e| e.node_id == node_id)).expect("known node")
    }

    pub async fn client(&self, i: usize) -> CairnClient<Channel> {
        client_at(&self.grpc(i))
    }

    fn signal(&self, i: usize, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.nodes[i].child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// kill -9.
    pub fn kill(&mut self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGKILL);
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.wait();
        }
    }

    /// Asks node `i` to stop (SIGTERM), as an operator or a service manager would.
    pub fn terminate(&self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGTERM);
    }

    pub fn pause(&self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGSTOP);
    }

    pub fn resume(&self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGCONT);
    }

    /// Restarts a stopped node on its previous ports with its data dir.
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node {} still running", i + 1);
        let ep = self.nodes[i].ep.clone().expect("node had started before");
        let redis = if ep.redis.is_empty() { "127.0.0.1:0".to_string() } else { ep.redis.clone() };
        self.spawn(i, None, &ep.grpc, &ep.http, &redis);
    }

    /// Restarts a stopped node with extra environment for this one process.
    pub fn restart_with_env(&mut self, i: usize, env: &[(&str, &str)]) {
        let saved = self.env.clone();
        self.env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.restart(i);
        self.env = saved;
    }

    /// The exit status of node `i` if its process has ended (it is then marked stopped).
    pub fn exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let status = self.nodes[i].child.as_mut()?.try_wait().ok()??;
        self.nodes[i].child = None;
        Some(status)
    }

    /// The node's whole log.
    pub fn full_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.root.join(format!("n{}.log", i + 1))).unwrap_or_default()
    }

    pub async fn status(&self, i: usize) -> Result<ClusterStatusResponse, tonic::Status> {
        Ok(self.client(i).await.cluster_status(ClusterStatusRequest {}).await?.into_inner())
    }

    /// Waits until every range in the directory has at least `voters` voters.
    pub async fn wait_replicated(&self, voters: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            let i = self.nodes.iter().position(|n| n.child.is_some()).unwrap_or(0);
            match self.status(i).await {
                Ok(s)
                    if !s.ranges.is_empty()
                        && s.ranges.iter().all(|r| r.replicas.iter().filter(|x| !x.learner).count() >= voters) =>
                {
                    return
                }
                Ok(s) => last = format!("{:?}", s.ranges.iter().map(|r| (r.id, r.replicas.len())).collect::<Vec<_>>()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("ranges not replicated {voters}x within {timeout:?}: {last}\n{}", self.log(0));
    }

    /// Waits until node `i`'s replica of `range_id` has applied what node `j`'s has.
    pub async fn wait_caught_up(&self, i: usize, j: usize, range_id: u64, timeout: Duration) {
        let applied = |reps: Vec<serde_json::Value>| {
            reps.iter()
                .find(|r| r["range_id"].as_u64() == Some(range_id))
                .and_then(|r| r["applied_index"].as_u64())
                .unwrap_or(0)
        };
        let target = applied(self.local_replicas(j).await);
        let deadline = Instant::now() + timeout;
        loop {
            let have = applied(self.local_replicas(i).await);
            if have >= target && target > 0 {
                return;
            }
            assert!(Instant::now() < deadline, "node {} stuck at {have}, want {target}\n{}", i + 1, self.log(i));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// This node's replicas as its HTTP admin port reports them.
    pub async fn local_replicas(&self, i: usize) -> Vec<serde_json::Value> {
        let body = http_get(&self.http(i), "/api/node").await.unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["replicas"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until node 1 sees node `i` as live (a node that just joined).
    pub async fn wait_live(&self, i: usize, timeout: Duration) {
        let id = self.node_id(i);
        let deadline = Instant::now() + timeout;
        while !self.status(0).await.unwrap().nodes.iter().any(|n| n.id == id && n.live) {
            assert!(Instant::now() < deadline, "node {} never became live", i + 1);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn metric(&self, i: usize, name: &str) -> f64 {
        let body = http_get(&self.http(i), "/metrics").await.unwrap_or_default();
        body.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // CAIRN_KEEP_TEST_DIRS=1 keeps the nodes' data and logs for a post-mortem.
        if std::env::var_os("CAIRN_KEEP_TEST_DIRS").is_some() {
            if let Some(t) = self.tmp.take() {
                eprintln!("kept test cluster dir: {}", t.keep().display());
            }
        }
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Minimal HTTP/1.0 GET over a raw socket (avoids a client dependency).
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await??;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).to_string();
    Ok(text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

pub fn data_dir_of(c: &Cluster, i: usize) -> &Path {
    &c.nodes[i].dir
}

// ------------------------------------------------------------------ client helpers

/// A client of the node at `addr` (connects lazily, so a down node is an error per call).
pub fn client_at(addr: &str) -> CairnClient<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(15))
        .connect_lazy();
    CairnClient::new(ch).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20)
}

pub async fn create_table(c: &mut CairnClient<Channel>, name: &str, splits: &[&str]) {
    c.create_table(CreateTableRequest {
        name: name.into(),
        partitioning: Partitioning::Range as i32,
        split_keys: splits.iter().map(|s| s.as_bytes().to_vec()).collect(),
        hash_ranges: 0,
        ..Default::default()
    })
    .await
    .expect("create table");
}

pub async fn put(c: &mut CairnClient<Channel>, table: &str, k: &str, v: &str) -> Result<PutResponse, tonic::Status> {
    Ok(c.put(PutRequest {
        ttl_ms: 0,
        table: table.into(),
        key: k.into(),
        value: v.into(),
        condition: None,
        request_id: vec![],
    })
    .await?
    .into_inner())
}

pub async fn get(c: &mut CairnClient<Channel>, table: &str, k: &str) -> Result<Option<String>, tonic::Status> {
    let r = c
        .get(GetRequest { table: table.into(), key: k.into(), consistency: 0, max_staleness_ms: 0 })
        .await?
        .into_inner();
    Ok(r.found.then(|| String::from_utf8_lossy(&r.value).to_string()))
}

/// Scans a whole table page by page (using page tokens), returning keys in order.
pub async fn scan_all(
    c: &mut CairnClient<Channel>,
    table: &str,
    page: u32,
) -> Result<Vec<(String, String)>, tonic::Status> {
    let mut out = Vec::new();
    let mut token = Vec::new();
    loop {
        let mut s = c
            .scan(ScanRequest {
                table: table.into(),
                limit: page,
                page_token: token.clone(),
                page_size: page,
                ..Default::default()
            })
            .await?
            .into_inner();
        let mut next = Vec::new();
        while let Some(resp) = s.message().await? {
            for kv in resp.kvs {
                out.push((
                    String::from_utf8_lossy(&kv.key).to_string(),
                    String::from_utf8_lossy(&kv.value).to_string(),
                ));
            }
            next = resp.next_page_token;
        }
        if next.is_empty() {
            return Ok(out);
        }
        token = next;
    }
}

/// The node id leading the range that holds `key` of `table` (0 if unknown).
pub async fn leader_of(cl: &Cluster, i: usize, table_start_display_prefix: &str) -> Option<(u64, u64)> {
    let s = cl.status(i).await.ok()?;
    s.ranges
        .iter()
        .find(|r| r.table == table_start_display_prefix && r.leader_node_id != 0)
        .map(|r| (r.id, r.leader_node_id))
}

/// The range holding Redis key `key` and its leader's node id, as node `i` reports them.
pub async fn redis_key_range(cl: &Cluster, i: usize, key: &[u8]) -> Option<(u64, u64)> {
    let s = cl.status(i).await.ok()?;
    let mut native = cl.client(i).await;
    let tables = native.list_tables(cairn_proto::kv::ListTablesRequest {}).await.ok()?.into_inner().tables;
    let id = tables.iter().find(|t| t.name == "redis")?.id;
    let encoded = cairn::keys::encode_hash_key(id, key);
    s.ranges
        .iter()
        .find(|r| r.start <= encoded && (r.end.is_empty() || encoded < r.end))
        .map(|r| (r.id, r.leader_node_id))
        .filter(|(_, l)| *l != 0)
}
