//! End-to-end test of `cairn-bench --target cairn` against an in-process mock of
//! the `cairn.v1.Cairn` service: table creation (including AlreadyExists on a
//! second run), the preload, linearizable gets, puts, and the JSON report.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cairn_proto::kv::cairn_server::{Cairn, CairnServer};
use cairn_proto::kv::*;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};

/// (table, key) -> value.
type Store = HashMap<(String, Vec<u8>), Vec<u8>>;

#[derive(Default)]
struct Mock {
    tables: Mutex<Vec<CreateTableRequest>>,
    data: Mutex<Store>,
    stale_reads: AtomicU64,
}

impl Mock {
    fn check_table(&self, name: &str) -> Result<(), Status> {
        let tables = self.tables.lock().map_err(|_| Status::internal("poisoned"))?;
        if tables.iter().any(|t| t.name == name) {
            Ok(())
        } else {
            Err(Status::not_found(format!("no table {name}")))
        }
    }
}

type ScanStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<ScanResponse, Status>> + Send>>;
type SubscribeStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Cairn for Mock {
    async fn create_table(
        &self,
        request: Request<CreateTableRequest>,
    ) -> Result<Response<CreateTableResponse>, Status> {
        let request = request.into_inner();
        let mut tables = self.tables.lock().map_err(|_| Status::internal("poisoned"))?;
        if tables.iter().any(|t| t.name == request.name) {
            return Err(Status::already_exists("table exists"));
        }
        let table = Table {
            name: request.name.clone(),
            id: tables.len() as u32 + 1,
            partitioning: request.partitioning,
            ..Default::default()
        };
        tables.push(request);
        Ok(Response::new(CreateTableResponse { table: Some(table) }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let request = request.into_inner();
        self.check_table(&request.table)?;
        if request.consistency != ReadConsistency::Linearizable as i32 {
            self.stale_reads.fetch_add(1, Ordering::Relaxed);
        }
        let data = self.data.lock().map_err(|_| Status::internal("poisoned"))?;
        let value = data.get(&(request.table, request.key)).cloned();
        Ok(Response::new(GetResponse {
            found: value.is_some(),
            value: value.unwrap_or_default(),
            version: None,
            expires_at_ms: 0,
            kind: 0,
        }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let request = request.into_inner();
        self.check_table(&request.table)?;
        let mut data = self.data.lock().map_err(|_| Status::internal("poisoned"))?;
        data.insert((request.table, request.key), request.value);
        Ok(Response::new(PutResponse { succeeded: true, version: None }))
    }

    type ScanStream = ScanStream;

    async fn scan(&self, _: Request<ScanRequest>) -> Result<Response<ScanStream>, Status> {
        Err(Status::unimplemented("mock"))
    }
    type SubscribeStream = SubscribeStream;
    async fn subscribe(&self, _: Request<SubscribeRequest>) -> Result<Response<SubscribeStream>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn drop_table(&self, _: Request<DropTableRequest>) -> Result<Response<DropTableResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn list_tables(&self, _: Request<ListTablesRequest>) -> Result<Response<ListTablesResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn batch_get(&self, _: Request<BatchGetRequest>) -> Result<Response<BatchGetResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn delete(&self, _: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn batch_write(&self, _: Request<BatchWriteRequest>) -> Result<Response<BatchWriteResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn increment(&self, _: Request<IncrementRequest>) -> Result<Response<IncrementResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn cluster_status(
        &self,
        _: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn split_range(&self, _: Request<SplitRangeRequest>) -> Result<Response<SplitRangeResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn merge_range(&self, _: Request<MergeRangeRequest>) -> Result<Response<MergeRangeResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn add_replica(&self, _: Request<ChangeReplicaRequest>) -> Result<Response<ChangeReplicaResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn remove_replica(
        &self,
        _: Request<ChangeReplicaRequest>,
    ) -> Result<Response<ChangeReplicaResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn transfer_leader(
        &self,
        _: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn set_node_state(&self, _: Request<SetNodeStateRequest>) -> Result<Response<SetNodeStateResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn list_cluster_events(
        &self,
        _: Request<ListClusterEventsRequest>,
    ) -> Result<Response<ListClusterEventsResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn alter_table(&self, _: Request<AlterTableRequest>) -> Result<Response<AlterTableResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn list_hot_keys(&self, _: Request<ListHotKeysRequest>) -> Result<Response<ListHotKeysResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
}

/// Starts the mock on an ephemeral port; returns its address and state.
async fn start_mock() -> (String, Arc<Mock>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mock = Arc::new(Mock::default());
    let service = CairnServer::from_arc(mock.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            // As the real server does: without it, small replies wait out delayed ACKs.
            .serve_with_incoming(TcpListenerStream::new(listener).map(|conn| {
                if let Ok(c) = &conn {
                    let _ = c.set_nodelay(true);
                }
                conn
            }))
            .await
            .unwrap();
    });
    (addr, mock)
}

async fn bench(args: &[&str]) -> (bool, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn-bench")).args(args).output().await.unwrap();
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    (output.status.success(), String::from_utf8(output.stdout).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn cairn_path_against_a_mock_server() {
    let (addr, mock) = start_mock().await;
    // Two "endpoints" that are the same server: exercises the round-robin spread.
    let endpoints = format!("{addr},http://{addr}");
    // The mock serves from this process, so this process is the "server" charged.
    let server_pid = std::process::id().to_string();
    let (ok, stdout) = bench(&[
        "--target",
        "cairn",
        "--endpoints",
        &endpoints,
        "--workload",
        "write,read,mixed95",
        "--clients",
        "4",
        "--keys",
        "200",
        "--duration",
        "0.5",
        "--ranges",
        "4",
        "--json",
        "--server-pids",
        &server_pid,
    ])
    .await;
    assert!(ok, "bench failed");

    let runs: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(runs.len(), 3, "one JSON object per run: {stdout}");
    for (run, workload) in runs.iter().zip(["write", "read", "mixed95"]) {
        assert_eq!(run["target"], "cairn");
        assert_eq!(run["workload"], workload);
        assert_eq!(run["clients"], 4);
        assert_eq!(run["errors"], 0);
        assert_eq!(run["not_found"], 0, "preload must make every read hit");
        assert!(run["ops"].as_u64().unwrap() > 0);
        assert!(run["ops_per_sec"].as_f64().unwrap() > 0.0);
        for field in ["duration_s", "p50_ms", "p99_ms", "p999_ms"] {
            assert!(run[field].as_f64().unwrap() > 0.0, "{field}");
        }
        // Both processes are busy for the whole run, so both are charged for it.
        for field in ["client_cpu_us_per_op", "server_cpu_us_per_op"] {
            assert!(run[field].as_f64().unwrap() > 0.0, "{workload} {field}");
        }
    }

    {
        let tables = mock.tables.lock().unwrap();
        assert_eq!(tables.len(), 1);
        assert_eq!(tables[0].name, "bench");
        assert_eq!(tables[0].partitioning, Partitioning::Range as i32);
        let splits: Vec<&[u8]> = tables[0].split_keys.iter().map(Vec::as_slice).collect();
        assert_eq!(splits, [&b"user00000050"[..], b"user00000100", b"user00000150"]);
        let data = mock.data.lock().unwrap();
        assert_eq!(data.len(), 200, "every record preloaded");
        assert!(data.values().all(|v| v.len() == 256));
    }
    assert_eq!(mock.stale_reads.load(Ordering::Relaxed), 0);

    // The table now exists: AlreadyExists must be taken as success.
    let (ok, stdout) = bench(&[
        "--target",
        "cairn",
        "--endpoints",
        &addr,
        "--workload",
        "write",
        "--clients",
        "2",
        "--duration",
        "0.2",
        "--distribution",
        "zipfian",
    ])
    .await;
    assert!(ok, "second run failed");
    assert!(stdout.contains("cairn write"), "human summary: {stdout}");
    assert!(stdout.contains("errors=0"), "human summary: {stdout}");
    assert!(stdout.contains("cpu/op: client="), "human summary: {stdout}");
    assert!(!stdout.contains("servers="), "no server PIDs, no server CPU: {stdout}");

    let (ok, _) =
        bench(&["--target", "cairn", "--endpoints", &addr, "--workload", "write", "--server-pids", "0"]).await;
    assert!(!ok, "an unreadable server PID must fail the run up front");
}
