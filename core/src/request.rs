//! Validation of client requests, before anything reaches a range: limits,
//! conditions, page tokens and scan bounds, and the turning of client write
//! ops into encoded mutations. Pure, so that the fuzz targets drive exactly
//! the code the gRPC front end runs. Errors are messages naming the problem;
//! the front end returns them as INVALID_ARGUMENT.

use crate::hlc::Version;
use crate::keys;
use crate::limits::Limits;
use cairn_proto::internal::{expiry, mutation, Expiry, Increment, Mutation, TableInfo};
use cairn_proto::kv::{condition, write_op, Condition, Partitioning, ScanRequest, WriteOp};

pub fn is_hashed(t: &TableInfo) -> bool {
    t.partitioning == Partitioning::Hash as i32
}

/// A user key of table `t` in the encoded keyspace.
pub fn encode_key(t: &TableInfo, user_key: &[u8]) -> Vec<u8> {
    if is_hashed(t) {
        keys::encode_hash_key(t.id, user_key)
    } else {
        keys::encode_range_key(t.id, user_key)
    }
}

pub fn check_condition(c: &Condition) -> Result<(), String> {
    match &c.kind {
        Some(condition::Kind::IfAbsent(false)) | Some(condition::Kind::IfPresent(false)) => {
            Err("condition if_absent/if_present must be true when set".into())
        }
        _ => Ok(()),
    }
}

/// Converts client write ops into mutations, checking every limit first so
/// that a bad op anywhere in a batch rejects the whole batch.
pub fn to_mutations(limits: &Limits, t: &TableInfo, ops: Vec<WriteOp>) -> Result<Vec<Mutation>, String> {
    let total: usize = ops
        .iter()
        .map(|o| match &o.op {
            Some(write_op::Op::Put(p)) => p.key.len().saturating_add(p.value.len()),
            Some(write_op::Op::Delete(d)) => d.key.len(),
            None => 0,
        })
        .fold(0usize, usize::saturating_add);
    limits.check_batch(ops.len(), total).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(ops.len());
    for (i, o) in ops.into_iter().enumerate() {
        let m = match o.op {
            Some(write_op::Op::Put(p)) => {
                limits.check_key(&p.key).map_err(|e| format!("op {i}: {e}"))?;
                limits.check_value(&p.value).map_err(|e| format!("op {i}: {e}"))?;
                // A TTL counts from the write's version, which the range's leader stamps.
                let expiry = (p.ttl_ms > 0).then_some(Expiry { when: Some(expiry::When::AfterMs(p.ttl_ms)) });
                Mutation {
                    key: encode_key(t, &p.key),
                    condition: p.condition,
                    op: Some(mutation::Op::Put(p.value)),
                    expiry,
                    value_kind: 0,
                }
            }
            Some(write_op::Op::Delete(d)) => {
                limits.check_key(&d.key).map_err(|e| format!("op {i}: {e}"))?;
                Mutation {
                    key: encode_key(t, &d.key),
                    condition: d.condition,
                    op: Some(mutation::Op::Delete(true)),
                    expiry: None,
                    value_kind: 0,
                }
            }
            None => return Err(format!("op {i} has neither put nor delete")),
        };
        if let Some(c) = &m.condition {
            check_condition(c).map_err(|e| format!("op {i}: {e}"))?;
        }
        out.push(m);
    }
    Ok(out)
}

/// The mutation for an Increment request.
pub fn increment_mutation(limits: &Limits, t: &TableInfo, key: &[u8], delta: i64) -> Result<Mutation, String> {
    limits.check_key(key).map_err(|e| e.to_string())?;
    Ok(Mutation {
        key: encode_key(t, key),
        condition: None,
        op: Some(mutation::Op::Increment(Increment { delta, min: None, max: None })),
        expiry: None,
        value_kind: 0,
    })
}

const TOKEN_FORMAT: u8 = 1;

/// A page token: where a scan resumes, and the version its range was read at.
pub fn encode_token(table_id: u32, version: Version, next_key: &[u8]) -> Vec<u8> {
    let mut t = vec![TOKEN_FORMAT];
    t.extend_from_slice(&table_id.to_be_bytes());
    t.extend_from_slice(&version.to_bytes());
    t.extend_from_slice(next_key);
    t
}

pub fn decode_token(token: &[u8], table_id: u32) -> Result<(Version, Vec<u8>), String> {
    let bad = || "page_token is malformed".to_string();
    if token.len() < 21 || token[0] != TOKEN_FORMAT {
        return Err(bad());
    }
    let tid = u32::from_be_bytes(token[1..5].try_into().map_err(|_| bad())?);
    if tid != table_id {
        return Err("page_token belongs to another table".into());
    }
    let v = Version::from_bytes(&token[5..21]).ok_or_else(bad)?;
    Ok((v, token[21..].to_vec()))
}

/// Where a scan starts and ends in the encoded keyspace, and the version a
/// resumed scan keeps reading at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanBounds {
    pub start: Vec<u8>,
    /// Empty: to the end of the keyspace.
    pub end: Vec<u8>,
    pub resume_version: Option<Version>,
}

pub fn scan_bounds(limits: &Limits, t: &TableInfo, r: &ScanRequest) -> Result<ScanBounds, String> {
    for (what, k) in [("prefix", &r.prefix), ("start", &r.start), ("end", &r.end)] {
        if k.len() > limits.max_key_bytes {
            return Err(format!("{what} is {} bytes; the key size limit is {} bytes", k.len(), limits.max_key_bytes));
        }
    }
    if !r.prefix.is_empty() && (!r.start.is_empty() || !r.end.is_empty()) {
        return Err("give either prefix or start/end, not both".into());
    }
    if !r.start.is_empty() && !r.end.is_empty() && r.start > r.end {
        // Found by the client_requests fuzz target: an inverted range used to
        // scan nothing and succeed, hiding the caller's mistake.
        return Err("scan start is after its end; give start <= end".into());
    }
    if is_hashed(t) && (!r.prefix.is_empty() || !r.start.is_empty() || !r.end.is_empty()) {
        return Err(
            "ordered scans by prefix or bounds need a RANGE table; HASH tables scan whole, in slot order".into()
        );
    }
    let (mut start, end) = if !r.prefix.is_empty() {
        let s = keys::encode_range_key(t.id, &r.prefix);
        let e = keys::prefix_end(&s);
        (s, e)
    } else {
        let s = if r.start.is_empty() { keys::table_prefix(t.id) } else { keys::encode_range_key(t.id, &r.start) };
        let e = if r.end.is_empty() { keys::table_end(t.id) } else { keys::encode_range_key(t.id, &r.end) };
        (s, e)
    };
    let mut resume_version = None;
    if !r.page_token.is_empty() {
        let (v, next) = decode_token(&r.page_token, t.id)?;
        if next < start || (!end.is_empty() && next > end) {
            return Err("page_token is outside the scanned bounds".into());
        }
        start = next;
        resume_version = Some(v);
    }
    Ok(ScanBounds { start, end, resume_version })
}

/// The encoded span a change feed covers, and, for a hash table whose prefix
/// does not decide the slot, the user-key prefix each range filters by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedSpan {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    pub user_prefix: Vec<u8>,
}

pub fn feed_span(limits: &Limits, t: &TableInfo, prefix: &[u8]) -> Result<FeedSpan, String> {
    if prefix.len() > limits.max_key_bytes {
        return Err(format!("prefix is {} bytes; the key size limit is {} bytes", prefix.len(), limits.max_key_bytes));
    }
    let whole = FeedSpan { start: keys::table_prefix(t.id), end: keys::table_end(t.id), user_prefix: Vec::new() };
    if prefix.is_empty() {
        return Ok(whole);
    }
    if !is_hashed(t) {
        let start = keys::encode_range_key(t.id, prefix);
        return Ok(FeedSpan { end: keys::prefix_end(&start), start, user_prefix: Vec::new() });
    }
    Ok(match keys::prefix_slot(prefix) {
        // Every key with this prefix shares its hash tag, so its slot.
        Some(_) => {
            let start = keys::encode_hash_key(t.id, prefix);
            FeedSpan { end: keys::prefix_end(&start), start, user_prefix: Vec::new() }
        }
        None => FeedSpan { user_prefix: prefix.to_vec(), ..whole },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::kv::{DeleteRequest, PutRequest};

    fn table(hash: bool) -> TableInfo {
        let partitioning = if hash { Partitioning::Hash } else { Partitioning::Range } as i32;
        TableInfo { id: 7, name: "t".into(), partitioning, ..Default::default() }
    }

    fn put(key: &[u8], value: &[u8]) -> WriteOp {
        WriteOp {
            op: Some(write_op::Op::Put(PutRequest { key: key.to_vec(), value: value.to_vec(), ..Default::default() })),
        }
    }

    #[test]
    fn one_bad_op_rejects_the_whole_batch_and_names_it() {
        let l = Limits::default();
        let big = vec![0u8; l.max_key_bytes + 1];
        let del = WriteOp { op: Some(write_op::Op::Delete(DeleteRequest { key: big, ..Default::default() })) };
        let err = to_mutations(&l, &table(false), vec![put(b"a", b"1"), del]).unwrap_err();
        assert!(err.starts_with("op 1:"), "{err}");
        assert!(to_mutations(&l, &table(false), vec![WriteOp { op: None }]).unwrap_err().contains("neither"));
    }

    #[test]
    fn page_tokens_round_trip_and_stay_within_their_table_and_bounds() {
        let l = Limits::default();
        let t = table(false);
        let v = Version { wall_ns: 5, logical: 1, node_id: 2 };
        let next = keys::encode_range_key(t.id, b"m");
        let token = encode_token(t.id, v, &next);
        assert_eq!(decode_token(&token, t.id), Ok((v, next.clone())));
        assert!(decode_token(&token, 8).unwrap_err().contains("another table"));
        assert!(decode_token(&token[..20], t.id).unwrap_err().contains("malformed"));
        let r = ScanRequest { page_token: token.clone(), ..Default::default() };
        assert_eq!(scan_bounds(&l, &t, &r).map(|b| b.start), Ok(next));
        let narrow = ScanRequest { start: b"x".to_vec(), page_token: token, ..Default::default() };
        assert!(scan_bounds(&l, &t, &narrow).unwrap_err().contains("outside"));
    }

    #[test]
    fn inverted_bounds_are_refused() {
        let r = ScanRequest { start: b"b".to_vec(), end: b"a".to_vec(), ..Default::default() };
        assert!(scan_bounds(&Limits::default(), &table(false), &r).unwrap_err().contains("start is after"));
        let same = ScanRequest { start: b"a".to_vec(), end: b"a".to_vec(), ..Default::default() };
        assert!(scan_bounds(&Limits::default(), &table(false), &same).is_ok(), "an empty range is fine");
    }

    #[test]
    fn hash_tables_refuse_ordered_bounds() {
        let r = ScanRequest { prefix: b"p".to_vec(), ..Default::default() };
        assert!(scan_bounds(&Limits::default(), &table(true), &r).unwrap_err().contains("RANGE table"));
    }

    #[test]
    fn a_feed_prefix_narrows_the_span_where_it_decides_the_keys_place() {
        let limits = Limits::default();
        let range = feed_span(&limits, &table(false), b"user:").unwrap();
        assert_eq!(range.start, keys::encode_range_key(7, b"user:"));
        assert!(range.user_prefix.is_empty());
        let tagged = feed_span(&limits, &table(true), b"{v1}:claim:").unwrap();
        assert_eq!(tagged.start, keys::encode_hash_key(7, b"{v1}:claim:"));
        assert!(keys::in_range(&keys::encode_hash_key(7, b"{v1}:claim:42"), &tagged.start, &tagged.end));
        assert!(tagged.user_prefix.is_empty());
        // No whole hash tag: any slot may hold such keys, so every range filters.
        for open in [b"user:".as_slice(), b"{v1".as_slice(), b"{}x".as_slice()] {
            let f = feed_span(&limits, &table(true), open).unwrap();
            assert_eq!((f.start, f.end), (keys::table_prefix(7), keys::table_end(7)));
            assert_eq!(f.user_prefix, open);
        }
        assert!(feed_span(&limits, &table(false), &vec![b'k'; limits.max_key_bytes + 1]).is_err());
    }
}
