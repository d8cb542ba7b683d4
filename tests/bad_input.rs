//! Malformed, oversized and wrong requests get a clear error naming the
//! problem, nothing is partly applied, and the node keeps serving.

mod common;

use cairn_proto::kv::*;
use common::*;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Request, Status};

/// Sends raw bytes as a gRPC message, to exercise the server's decoding.
#[derive(Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

async fn raw_call(addr: &str, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    Ok(grpc.unary(Request::new(body), PathAndQuery::from_static(path), RawCodec).await?.into_inner())
}

fn assert_invalid(r: Result<impl std::fmt::Debug, Status>, code: Code, needle: &str) {
    let e = r.expect_err("must be rejected");
    assert_eq!(e.code(), code, "{e:?}");
    assert!(e.message().contains(needle), "message {:?} should mention {needle:?}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_are_rejected_whole_and_the_node_survives() {
    let _g = serial().await;
    let cl = Cluster::start(1, &["--replication-factor", "1"]).await;
    let mut c = cl.client(0).await;
    create_table(&mut c, "t", &[]).await;

    let big_key = "k".repeat(8 * 1024 + 1);
    assert_invalid(put(&mut c, "t", &big_key, "v").await, Code::InvalidArgument, "key size limit");
    assert!(put(&mut c, "t", &"k".repeat(8 * 1024), "v").await.is_ok(), "a key at the limit is fine");
    let big_value = "v".repeat(1024 * 1024 + 1);
    assert_invalid(put(&mut c, "t", "k", &big_value).await, Code::InvalidArgument, "value size limit");
    assert_invalid(put(&mut c, "t", "", "v").await, Code::InvalidArgument, "empty");

    // A 17 MiB batch: rejected whole, nothing written.
    let ops = (0..17)
        .map(|i| WriteOp {
            op: Some(write_op::Op::Put(PutRequest {
                key: format!("batch{i}").into(),
                value: vec![b'x'; 1024 * 1024],
                ..Default::default()
            })),
        })
        .collect();
    let r = c.batch_write(BatchWriteRequest { table: "t".into(), ops, request_id: vec![] }).await;
    assert_invalid(r, Code::InvalidArgument, "batch size limit");
    // One bad op in a batch rejects the whole batch.
    let ops = vec![
        WriteOp {
            op: Some(write_op::Op::Put(PutRequest { key: "ok1".into(), value: "1".into(), ..Default::default() })),
        },
        WriteOp {
            op: Some(write_op::Op::Put(PutRequest {
                key: big_key.clone().into(),
                value: "1".into(),
                ..Default::default()
            })),
        },
    ];
    let r = c.batch_write(BatchWriteRequest { table: "t".into(), ops, request_id: vec![] }).await;
    assert_invalid(r, Code::InvalidArgument, "op 1");
    let keys: Vec<String> = scan_all(&mut c, "t", 100).await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), 1, "only the at-limit key exists: {}", keys.len());

    assert_invalid(
        c.create_table(CreateTableRequest { name: "bad name!".into(), ..Default::default() }).await,
        Code::InvalidArgument,
        "invalid table name",
    );
    assert_invalid(
        c.create_table(CreateTableRequest { name: "_sys".into(), ..Default::default() }).await,
        Code::InvalidArgument,
        "reserved",
    );
    assert_invalid(
        c.create_table(CreateTableRequest { name: "t".into(), ..Default::default() }).await,
        Code::AlreadyExists,
        "already exists",
    );
    assert_invalid(get(&mut c, "nosuch", "k").await, Code::NotFound, "does not exist");
    assert_invalid(
        c.put(PutRequest { table: "t".into(), key: "k".into(), request_id: vec![b'r'; 65], ..Default::default() })
            .await,
        Code::InvalidArgument,
        "request_id",
    );
    assert_invalid(
        c.scan(ScanRequest {
            table: "t".into(),
            page_token: b"garbage-token-garbage-token".to_vec(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "page_token",
    );
    // Found by the client_requests fuzz target: inverted scan bounds were accepted.
    let inverted = ScanRequest { table: "t".into(), start: b"b".to_vec(), end: b"a".to_vec(), ..Default::default() };
    let scanned = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut s = c.scan(inverted).await?.into_inner();
        while s.message().await?.is_some() {}
        Ok::<_, tonic::Status>(())
    })
    .await
    .expect("an inverted scan answers promptly");
    assert_invalid(scanned, Code::InvalidArgument, "start");

    // Malformed protobuf, to the client API and to the internal API.
    let addr = cl.grpc(0);
    let garbage = vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x12, 0x80];
    for path in
        ["/cairn.v1.Cairn/Put", "/cairn.v1.Cairn/Get", "/cairn.v1.Cairn/BatchWrite", "/cairn.v1.Cairn/CreateTable"]
    {
        let e = raw_call(&addr, path, garbage.clone()).await.expect_err("garbage must be rejected");
        assert!(e.message().to_lowercase().contains("decode"), "{path}: {e:?}");
    }
    for path in
        ["/cairn.internal.v1.Internal/Raft", "/cairn.internal.v1.Internal/Execute", "/cairn.internal.v1.Internal/Join"]
    {
        raw_call(&addr, path, garbage.clone()).await.expect_err("garbage must be rejected");
    }
    // Well-formed but wrong internal traffic: another cluster's raft batch.
    let foreign = cairn_proto::internal::RaftBatch { from_node: 9, cluster_id: "other".into(), ..Default::default() };
    let e = raw_call(&addr, "/cairn.internal.v1.Internal/Raft", prost::Message::encode_to_vec(&foreign)).await;
    assert_invalid(e, Code::PermissionDenied, "cluster");

    // Still serving, nothing partly applied.
    put(&mut c, "t", "alive", "yes").await.expect("node still serves writes");
    assert_eq!(get(&mut c, "t", "alive").await.unwrap(), Some("yes".into()));
    assert_eq!(get(&mut c, "t", "ok1").await.unwrap(), None, "rejected batch left nothing behind");
    assert_eq!(get(&mut c, "t", "batch0").await.unwrap(), None);
}
