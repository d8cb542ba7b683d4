//! Scripting: EVAL, EVALSHA, EVAL_RO, EVALSHA_RO and SCRIPT LOAD/EXISTS/FLUSH.
//!
//! A script runs as a transaction does (`txn`): its keys (KEYS, which must
//! share a slot) are read in one read, the script runs against that view on a
//! blocking thread (`lua`, bounded in instructions, memory and time), and what
//! it changed is written as one Raft command conditioned on every key's
//! version. What replicates is the effects, never the script; if a key moved
//! in between, nothing applied and the script runs again on a fresh read.
//! Scripts on one slot are grouped into batches that share the read and the
//! write (`batch`), so a hot slot is not capped at one script per round trip.

pub mod batch;
pub mod cache;
pub mod lua;

use super::commands::{parse_i64, upper};
use super::RespServer;
use bytes::Bytes;
use cairn_core::resp::reply::Reply;
use std::sync::Arc;

pub async fn run(srv: &RespServer, name: &str, a: &[Bytes]) -> Reply {
    let out = match name {
        "eval" | "eval_ro" => match srv.scripts.load(&a[0]) {
            Ok((_, body)) => eval(srv, body, &a[1..], name.ends_with("_ro")).await,
            Err(e) => Err(Reply::Error(e)),
        },
        "evalsha" | "evalsha_ro" => match srv.scripts.get(&String::from_utf8_lossy(&a[0])) {
            Some(body) => eval(srv, body, &a[1..], name.ends_with("_ro")).await,
            None => Err(Reply::Error("NOSCRIPT No matching script. Please use EVAL.".into())),
        },
        _ => Ok(script_command(srv, a)),
    };
    out.unwrap_or_else(|e| e)
}

/// SCRIPT LOAD/EXISTS/FLUSH.
fn script_command(srv: &RespServer, a: &[Bytes]) -> Reply {
    match (upper(&a[0]).as_str(), a.len()) {
        ("LOAD", 2) => match srv.scripts.load(&a[1]) {
            Ok((sha, _)) => Reply::Bulk(Bytes::from(sha)),
            Err(e) => Reply::Error(e),
        },
        ("EXISTS", n) if n >= 2 => Reply::Array(
            a[1..]
                .iter()
                .map(|s| Reply::Integer(srv.scripts.get(&String::from_utf8_lossy(s)).is_some() as i64))
                .collect(),
        ),
        ("FLUSH", 1) => {
            srv.scripts.flush();
            Reply::ok()
        }
        ("FLUSH", 2) if matches!(upper(&a[1]).as_str(), "ASYNC" | "SYNC") => {
            srv.scripts.flush();
            Reply::ok()
        }
        ("LOAD" | "EXISTS" | "FLUSH", _) => Reply::Error(format!(
            "ERR wrong number of arguments for 'script|{}' command",
            String::from_utf8_lossy(&a[0]).to_ascii_lowercase()
        )),
        _ => Reply::Error(format!(
            "ERR unknown subcommand '{}'. Try SCRIPT LOAD, EXISTS or FLUSH.",
            super::commands::printable(&a[0], 64)
        )),
    }
}

/// `a`: numkeys, keys, args. A `read_only` script (EVAL_RO) that changes a key is refused whole.
async fn eval(srv: &RespServer, body: Arc<[u8]>, a: &[Bytes], read_only: bool) -> Result<Reply, Reply> {
    let numkeys = parse_i64(&a[0])?;
    if numkeys < 0 {
        return Err(Reply::Error("ERR Number of keys can't be negative".into()));
    }
    if numkeys as usize > a.len() - 1 {
        return Err(Reply::Error("ERR Number of keys can't be greater than number of args".into()));
    }
    let keys: Arc<[Bytes]> = a[1..=numkeys as usize].into();
    let argv: Arc<[Bytes]> = a[1 + numkeys as usize..].into();
    super::keyspace::same_slot(keys.iter().map(|k| k.as_ref()))?;
    let slot = keys.first().map_or(0, |k| cairn_core::keys::slot::key_slot(k));
    Ok(srv.script_batches.run(srv, slot, batch::Job::new(body, keys, argv, read_only)).await)
}
