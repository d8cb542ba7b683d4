//! Scripting: EVAL, EVALSHA, EVAL_RO, EVALSHA_RO and SCRIPT LOAD/EXISTS/FLUSH.
//!
//! A script runs as a transaction does (`txn`): its keys (KEYS, which must
//! share a slot) are read in one read, the script runs against that view on a
//! blocking thread (`lua`, bounded in instructions, memory and time), and what
//! it changed is written as one Raft command conditioned on every key's
//! version. What replicates is the effects, never the script; if a key moved
//! in between, nothing applied and the script runs again on a fresh read.

pub mod cache;
pub mod lua;

use super::commands::{parse_i64, upper};
use super::txn;
use super::RespServer;
use bytes::Bytes;
use cairn_core::resp::reply::Reply;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Attempts of one script whose keys keep changing under it.
const MAX_SCRIPT_ATTEMPTS: usize = 64;

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
    let none_watched = BTreeMap::new();
    super::keyspace::same_slot(keys.iter().map(|k| k.as_ref()))?;
    let _turn = srv.slot_locks.lock(&keys).await;
    for _ in 0..MAX_SCRIPT_ATTEMPTS {
        let Some(view) = txn::read_view(srv, &keys, &none_watched).await? else {
            return Err(Reply::Error("ERR a script has no watched keys".into()));
        };
        let (body, keys, argv, limits) = (body.clone(), keys.clone(), argv.clone(), srv.gw.limits.clone());
        let ran = crate::clock::blocking(move || {
            let mut view = view;
            let reply = lua::run(&body, &keys, &argv, &mut view, &limits, lua::Budget::default());
            (view, reply)
        })
        .await;
        let (view, reply) = ran.map_err(|e| Reply::Error(format!("ERR the script's thread failed: {e}")))?;
        let reply = reply?;
        if read_only && view.effects().iter().any(|e| e.change.is_some()) {
            return Err(Reply::Error(
                "ERR Write commands are not allowed from read-only scripts; nothing was written".into(),
            ));
        }
        if txn::commit(srv, &view).await? {
            return Ok(reply);
        }
        srv.conflict_pause().await;
    }
    Err(Reply::Error(format!(
        "TRYAGAIN the script's keys changed under {MAX_SCRIPT_ATTEMPTS} attempts in a row; nothing was written"
    )))
}
