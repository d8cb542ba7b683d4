//! The systems under test behind one interface: connecting to each endpoint,
//! preparing the keyspace (Cairn's table), and single-key linearizable gets and puts.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cairn_proto::kv::{
    cairn_client::CairnClient, CreateTableRequest, GetRequest, Partitioning, PutRequest, ReadConsistency,
};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::keygen::key_name;

/// How long setup (table creation, the reachability check) keeps retrying, so
/// that a cluster which has only just come up still gets benchmarked.
const SETUP_PATIENCE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Cairn,
    Etcd,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Cairn => "cairn",
            Target::Etcd => "etcd",
        }
    }
}

/// One connection to one endpoint. Clones share the connection, so every client
/// task sent to the same endpoint multiplexes over one HTTP/2 channel.
#[derive(Clone)]
pub struct Client {
    endpoint: String,
    timeout: Duration,
    kind: Kind,
    /// Reads that any replica may serve: Cairn's bounded-staleness reads, etcd's
    /// serializable ones (each system's follower reads).
    stale_reads: bool,
}

#[derive(Clone)]
enum Kind {
    Cairn {
        client: CairnClient<Channel>,
        table: String,
    },
    Etcd {
        // Boxed: etcd's client is twice the size of the Cairn variant.
        kv: Box<etcd_client::KvClient>,
        /// etcd has no tables; `TABLE/` keeps runs with different `--table`s apart.
        prefix: Vec<u8>,
    },
}

/// Connects one [`Client`] per endpoint, in the order given.
pub async fn connect(
    target: Target,
    endpoints: &[String],
    table: &str,
    timeout: Duration,
    stale_reads: bool,
) -> Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let kind = match target {
            Target::Cairn => Kind::Cairn { client: connect_cairn(endpoint)?, table: table.to_string() },
            Target::Etcd => {
                let options = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(timeout);
                let client = etcd_client::Client::connect([endpoint.as_str()], Some(options))
                    .await
                    .with_context(|| format!("connecting to etcd at {endpoint}"))?;
                Kind::Etcd { kv: Box::new(client.kv_client()), prefix: format!("{table}/").into_bytes() }
            }
        };
        clients.push(Client { endpoint: endpoint.clone(), timeout, kind, stale_reads });
    }
    Ok(clients)
}

fn connect_cairn(endpoint: &str) -> Result<CairnClient<Channel>> {
    let uri = if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") };
    // Lazy: a node that is down must not stop the run (its requests count as
    // errors); `prepare` is where reachability is checked.
    let channel = Endpoint::from_shared(uri)
        .with_context(|| format!("bad Cairn endpoint {endpoint:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect_lazy();
    Ok(CairnClient::new(channel))
}

/// Makes the keyspace usable: on Cairn, creates the RANGE table (pre-split into
/// `ranges` ranges at evenly spaced record keys) unless it already exists; then
/// waits for the endpoints to answer a read. At least one must; one that never
/// does is reported and left in, so its failures show up in the error count.
pub async fn prepare(clients: &[Client], keys: u64, ranges: u64) -> Result<()> {
    if let Some(Client { kind: Kind::Cairn { table, .. }, .. }) = clients.first() {
        create_table(clients, table, keys, ranges).await?;
    }
    let deadline = Instant::now() + SETUP_PATIENCE;
    let mut checks = JoinSet::new();
    for client in clients {
        let mut client = client.clone();
        checks.spawn(async move {
            loop {
                match client.get(0).await {
                    Ok(_) => return Ok(()),
                    Err(e) if Instant::now() >= deadline => {
                        return Err(e.context(format!("endpoint {} never answered", client.endpoint)))
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        });
    }
    let mut answered = 0;
    let mut last_error = None;
    while let Some(joined) = checks.join_next().await {
        match joined.map_err(|e| anyhow!("endpoint check failed: {e}"))? {
            Ok(()) => answered += 1,
            Err(e) => {
                eprintln!("warning: {e:#}");
                last_error = Some(e);
            }
        }
    }
    match last_error {
        Some(e) if answered == 0 => Err(e.context("no endpoint answered")),
        _ => Ok(()),
    }
}

async fn create_table(clients: &[Client], table: &str, keys: u64, ranges: u64) -> Result<()> {
    let ranges = ranges.clamp(1, keys.max(1));
    let split_keys = (1..ranges).map(|i| key_name(keys * i / ranges)).collect();
    let request = CreateTableRequest {
        name: table.to_string(),
        partitioning: Partitioning::Range as i32,
        split_keys,
        hash_ranges: 0,
        ..Default::default()
    };
    let deadline = Instant::now() + SETUP_PATIENCE;
    // Rotate over the endpoints: right after start-up some node may not serve yet.
    let mut attempt = 0usize;
    loop {
        let client = &clients[attempt % clients.len()];
        attempt += 1;
        let Kind::Cairn { client: grpc, .. } = &client.kind else {
            bail!("create_table called on a non-Cairn client");
        };
        let result = tokio::time::timeout(client.timeout, grpc.clone().create_table(request.clone())).await;
        let err = match result {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(status)) if status.code() == tonic::Code::AlreadyExists => return Ok(()),
            // Neither bad arguments nor a server that is not Cairn get better by retrying.
            Ok(Err(status)) if matches!(status.code(), tonic::Code::InvalidArgument | tonic::Code::Unimplemented) => {
                return Err(anyhow!(status).context(format!("creating table {table:?}")))
            }
            Ok(Err(status)) => anyhow!(status),
            Err(_) => anyhow!("timed out after {:?}", client.timeout),
        };
        if Instant::now() >= deadline {
            return Err(err.context(format!("creating table {table:?} on {}", client.endpoint)));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

impl Client {
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Reads record `record`; `Ok(false)` when it does not exist.
    pub async fn get(&mut self, record: u64) -> Result<bool> {
        let timeout = self.timeout;
        let key = key_name(record);
        let stale = self.stale_reads;
        let fut = async {
            match &mut self.kind {
                Kind::Cairn { client, table } => {
                    let consistency = if stale { ReadConsistency::Stale } else { ReadConsistency::Linearizable };
                    let response = client
                        .get(GetRequest {
                            table: table.clone(),
                            key,
                            consistency: consistency as i32,
                            max_staleness_ms: 0,
                        })
                        .await?;
                    Ok(response.into_inner().found)
                }
                Kind::Etcd { kv, prefix } => {
                    // Without options a Range is linearizable, etcd's default.
                    let options = stale.then(|| etcd_client::GetOptions::new().with_serializable());
                    let response = kv.get(prefixed(prefix, &key), options).await?;
                    Ok(!response.kvs().is_empty())
                }
            }
        };
        with_timeout(timeout, fut).await
    }

    /// Writes `value` to record `record` unconditionally.
    pub async fn put(&mut self, record: u64, value: &[u8]) -> Result<()> {
        let timeout = self.timeout;
        let key = key_name(record);
        let fut = async {
            match &mut self.kind {
                Kind::Cairn { client, table } => {
                    let response = client
                        .put(PutRequest {
                            table: table.clone(),
                            key,
                            value: value.to_vec(),
                            condition: None,
                            request_id: Vec::new(),
                            ttl_ms: 0,
                        })
                        .await?;
                    if !response.into_inner().succeeded {
                        bail!("unconditional put reported succeeded=false");
                    }
                    Ok(())
                }
                Kind::Etcd { kv, prefix } => {
                    kv.put(prefixed(prefix, &key), value.to_vec(), None).await?;
                    Ok(())
                }
            }
        };
        with_timeout(timeout, fut).await
    }
}

fn prefixed(prefix: &[u8], key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + key.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(key);
    out
}

/// Bounds one request, so a stuck server cannot keep a client task past the run.
async fn with_timeout<T>(timeout: Duration, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => Err(anyhow!("request timed out after {timeout:?}")),
    }
}
