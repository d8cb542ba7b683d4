//! Every client request type, decoded from arbitrary bytes as the gRPC front
//! end does, then validated by the same code the front end runs. Nothing may
//! panic, and whatever passes validation respects the limits.
#![no_main]

use cairn_core::limits::Limits;
use cairn_core::request;
use cairn_proto::internal::TableInfo;
use cairn_proto::kv::*;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn table(hashed: bool) -> TableInfo {
    let partitioning = if hashed { Partitioning::Hash } else { Partitioning::Range } as i32;
    TableInfo { id: 9, name: "t".into(), partitioning, ..Default::default() }
}

fn check_mutations(l: &Limits, t: &TableInfo, ops: Vec<WriteOp>) {
    let n = ops.len();
    if let Ok(muts) = request::to_mutations(l, t, ops) {
        assert_eq!(muts.len(), n);
        assert!(n <= l.max_batch_ops);
        for m in &muts {
            assert!(m.key.len() <= l.max_key_bytes + 6, "validated keys are bounded");
            assert!(m.op.is_some());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    // Small limits so that the fuzzer reaches every limit check.
    let l = Limits {
        max_key_bytes: 64,
        max_value_bytes: 256,
        max_batch_bytes: 1024,
        max_batch_ops: 8,
        ..Limits::default()
    };
    let t = table(selector & 0x80 != 0);
    match selector % 16 {
        0 => {
            if let Ok(r) = PutRequest::decode(body) {
                let _ = l.check_request_id(&r.request_id);
                check_mutations(&l, &t, vec![WriteOp { op: Some(write_op::Op::Put(r)) }]);
            }
        }
        1 => {
            if let Ok(r) = DeleteRequest::decode(body) {
                check_mutations(&l, &t, vec![WriteOp { op: Some(write_op::Op::Delete(r)) }]);
            }
        }
        2 => {
            if let Ok(r) = BatchWriteRequest::decode(body) {
                let _ = l.check_request_id(&r.request_id);
                let _ = l.check_table_name(&r.table);
                check_mutations(&l, &t, r.ops);
            }
        }
        3 => {
            if let Ok(r) = IncrementRequest::decode(body) {
                if request::increment_mutation(&l, &t, &r.key, r.delta).is_ok() {
                    assert!(!r.key.is_empty() && r.key.len() <= l.max_key_bytes);
                }
            }
        }
        4 => {
            if let Ok(r) = ScanRequest::decode(body) {
                if let Ok(b) = request::scan_bounds(&l, &t, &r) {
                    assert!(b.end.is_empty() || b.start <= b.end, "validated scans run forwards");
                }
            }
        }
        5 => {
            if let Ok(r) = GetRequest::decode(body) {
                let _ = l.check_key(&r.key);
                let _ = ReadConsistency::try_from(r.consistency);
            }
        }
        6 => {
            if let Ok(r) = BatchGetRequest::decode(body) {
                for k in &r.keys {
                    let _ = l.check_key(k);
                }
            }
        }
        7 => {
            if let Ok(r) = CreateTableRequest::decode(body) {
                let _ = l.check_table_name(&r.name);
                let _ = Partitioning::try_from(r.partitioning);
            }
        }
        8 => {
            if let Ok(r) = DropTableRequest::decode(body) {
                let _ = l.check_table_name(&r.name);
            }
        }
        9 => {
            let _ = ListTablesRequest::decode(body);
            let _ = ClusterStatusRequest::decode(body);
        }
        10 => {
            if let Ok(r) = SplitRangeRequest::decode(body) {
                let _ = l.check_key(&r.key);
            }
        }
        11 => {
            let _ = ChangeReplicaRequest::decode(body);
            let _ = TransferLeaderRequest::decode(body);
        }
        12 => {
            // Page tokens are opaque bytes a client may forge.
            if let Ok((version, next)) = request::decode_token(body, 9) {
                assert_eq!(request::encode_token(9, version, &next), body, "tokens have one encoding");
            }
        }
        13 => {
            if let Ok(c) = Condition::decode(body) {
                let _ = request::check_condition(&c);
            }
        }
        _ => {}
    }
});
