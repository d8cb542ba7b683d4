//! Walking the keyspace: SCAN, KEYS and RANDOMKEY.
//!
//! SCAN's cursor is a slot: each call returns every key of the slots it
//! visits, from the cursor's slot on, until it has at least COUNT keys, and
//! answers the next slot to visit (0 when it wrapped up the last one). A slot
//! is never divided between calls, and slots map to ranges whatever splits or
//! leader changes happen, so a cursor stays valid across both: every key present
//! for the whole scan is returned at least once, as Redis promises.

use super::super::keyspace;
use super::super::txn::eval::type_name;
use super::super::RespServer;
use super::server::glob_match;
use super::{parse_i64, syntax_error, upper};
use crate::gateway::scan::{self, ScanParams};
use crate::keys::{self, SLOT_COUNT};
use bytes::Bytes;
use cairn_core::resp::reply::Reply;

type Result<T> = std::result::Result<T, Reply>;

/// Keys one call may gather at most (a slot is returned whole: a slot bigger
/// than this cannot be scanned, and says so).
const MAX_KEYS_PER_CALL: usize = 100_000;
/// Key bytes KEYS may return at most.
const MAX_KEYS_REPLY_BYTES: usize = 64 << 20;

pub async fn run(srv: &RespServer, name: &str, a: &[Bytes]) -> Reply {
    let out = match name {
        "scan" => scan_command(srv, a).await,
        "keys" => keys_command(srv, &a[0]).await,
        _ => random_key(srv).await,
    };
    out.unwrap_or_else(|e| e)
}

/// The user key of an encoded key of the Redis table (table id, slot, key).
fn user_key(encoded: &[u8]) -> Bytes {
    Bytes::copy_from_slice(encoded.get(6..).unwrap_or_default())
}

fn slot_of_encoded(encoded: &[u8]) -> u16 {
    encoded.get(4..6).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
}

/// Every key from slot `first` on, whole slots at a time, until at least `want`
/// keys are gathered: the keys with their value kinds, and the next slot
/// (`SLOT_COUNT` at the end).
async fn keys_from(srv: &RespServer, first: u16, want: usize) -> Result<(Vec<(Bytes, i32)>, u32)> {
    let t = keyspace::table(&srv.gw).await?;
    let params = ScanParams {
        start: keys::hash_slot_start(t.id, first),
        end: keys::table_end(t.id),
        limit: 0,
        page_size: 1024,
        keys_only: true,
        resume_version: None,
    };
    let mut rx = scan::scan(srv.gw.clone(), params);
    let mut out = Vec::new();
    let mut last_slot: Option<u16> = None;
    while let Some(batch) = rx.recv().await {
        for pair in batch.map_err(|s| keyspace::error_reply(&s))?.pairs {
            let slot = slot_of_encoded(&pair.key);
            if out.len() >= want && last_slot.is_some_and(|l| l != slot) {
                // Enough, and the slot before this key is complete.
                return Ok((out, u32::from(slot)));
            }
            if out.len() >= MAX_KEYS_PER_CALL {
                return Err(Reply::Error(format!(
                    "ERR slot {slot} holds more than {MAX_KEYS_PER_CALL} keys, more than one SCAN call may \
                     return; use a narrower MATCH with a hash tag, or fewer keys per hash tag"
                )));
            }
            last_slot = Some(slot);
            out.push((user_key(&pair.key), pair.kind));
        }
    }
    Ok((out, u32::from(SLOT_COUNT)))
}

/// SCAN cursor [MATCH pattern] [COUNT count] [TYPE type].
async fn scan_command(srv: &RespServer, a: &[Bytes]) -> Result<Reply> {
    let cursor = std::str::from_utf8(&a[0])
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|c| *c < u32::from(SLOT_COUNT))
        .ok_or_else(|| Reply::Error("ERR invalid cursor".into()))?;
    let (mut pattern, mut count, mut type_filter) = (None, 10usize, None::<String>);
    let mut i = 1;
    while i < a.len() {
        match (upper(&a[i]).as_str(), a.get(i + 1)) {
            ("MATCH", Some(p)) => pattern = Some(p.clone()),
            ("COUNT", Some(n)) => {
                count = usize::try_from(parse_i64(n)?).ok().filter(|n| *n >= 1).ok_or_else(syntax_error)?;
            }
            ("TYPE", Some(t)) => type_filter = Some(String::from_utf8_lossy(t).to_ascii_lowercase()),
            _ => return Err(syntax_error()),
        }
        i += 2;
    }
    let (found, next) = keys_from(srv, cursor as u16, count.min(MAX_KEYS_PER_CALL)).await?;
    let keys: Vec<Reply> = found
        .into_iter()
        .filter(|(_, kind)| type_filter.as_ref().is_none_or(|t| t == type_name(u8::try_from(*kind).unwrap_or(u8::MAX))))
        .filter(|(k, _)| pattern.as_ref().is_none_or(|p| glob_match(p, k, false)))
        .map(|(k, _)| Reply::Bulk(k))
        .collect();
    let next = if next >= u32::from(SLOT_COUNT) { 0 } else { next };
    Ok(Reply::Array(vec![Reply::Bulk(Bytes::from(next.to_string())), Reply::Array(keys)]))
}

/// KEYS pattern: every matching key (bounded in reply size).
async fn keys_command(srv: &RespServer, pattern: &[u8]) -> Result<Reply> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut slot: u32 = 0;
    while slot < u32::from(SLOT_COUNT) {
        let (found, next) = keys_from(srv, slot as u16, 10_000).await?;
        for (k, _) in found.into_iter().filter(|(k, _)| glob_match(pattern, k, false)) {
            bytes += k.len();
            if bytes > MAX_KEYS_REPLY_BYTES {
                return Err(Reply::Error(format!(
                    "ERR KEYS would return more than {} MiB of keys; use SCAN",
                    MAX_KEYS_REPLY_BYTES >> 20
                )));
            }
            out.push(Reply::Bulk(k));
        }
        slot = next;
    }
    Ok(Reply::Array(out))
}

/// RANDOMKEY: the first key at or after a random slot (wrapping around), nil if there is none.
async fn random_key(srv: &RespServer) -> Result<Reply> {
    let start: u16 = rand::random_range(0..SLOT_COUNT);
    let (found, _) = keys_from(srv, start, 1).await?;
    if let Some((k, _)) = found.into_iter().next() {
        return Ok(Reply::Bulk(k));
    }
    let (found, _) = keys_from(srv, 0, 1).await?;
    Ok(found.into_iter().next().map_or(Reply::Nil, |(k, _)| Reply::Bulk(k)))
}
