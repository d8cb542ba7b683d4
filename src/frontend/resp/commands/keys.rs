//! Commands on keys whatever their type: DEL, UNLINK, EXISTS, TYPE (and the
//! expiry commands, dispatched to `expiry`, and SCAN/KEYS/RANDOMKEY to `scan`;
//! RENAME runs as a one-command transaction, `txn::run_one`).

use super::super::keyspace;
use super::super::session::Session;
use super::super::txn::eval::type_name;
use super::super::RespServer;
use bytes::Bytes;
use cairn_core::resp::reply::Reply;
use cairn_proto::internal::{mutation, Mutation};

pub async fn run(srv: &RespServer, session: &mut Session, name: &str, a: &[Bytes]) -> Reply {
    let out = match name {
        "del" | "unlink" => delete(srv, a).await,
        "exists" => exists(srv, session, a).await,
        "type" => key_type(srv, session, &a[0]).await,
        "expire" | "pexpire" | "expireat" | "pexpireat" | "ttl" | "pttl" | "expiretime" | "pexpiretime" | "persist" => {
            return super::expiry::run(srv, name, a).await
        }
        "scan" | "keys" | "randomkey" => return super::scan::run(srv, name, a).await,
        _ => Err(Reply::Error(format!("ERR unknown command '{name}'"))),
    };
    out.unwrap_or_else(|e| e)
}

/// DEL and UNLINK (the same here: a delete is one small Raft entry however big
/// the value): atomic within each range; replies with how many keys existed.
async fn delete(srv: &RespServer, keys: &[Bytes]) -> Result<Reply, Reply> {
    let mut unique: Vec<&Bytes> = keys.iter().collect();
    unique.sort();
    unique.dedup();
    let res = keyspace::write(&srv.gw, |t| {
        unique
            .iter()
            .map(|k| {
                Ok(Mutation {
                    expiry: None,
                    key: keyspace::encode(&srv.gw, t, k)?,
                    condition: None,
                    op: Some(mutation::Op::Delete(true)),
                    value_kind: 0,
                })
            })
            .collect()
    })
    .await?;
    Ok(Reply::Integer(res.iter().filter(|r| r.existed).count() as i64))
}

/// EXISTS counts a key once per time it is named, as Redis does.
async fn exists(srv: &RespServer, session: &Session, keys: &[Bytes]) -> Result<Reply, Reply> {
    let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
    let found = keyspace::read(&srv.gw, &keys, session.readonly).await?;
    Ok(Reply::Integer(found.iter().filter(|r| r.found).count() as i64))
}

async fn key_type(srv: &RespServer, session: &Session, key: &[u8]) -> Result<Reply, Reply> {
    let found = keyspace::read(&srv.gw, &[key.to_vec()], session.readonly).await?;
    let name = match found.first().filter(|r| r.found) {
        Some(r) => type_name(u8::try_from(r.kind).unwrap_or(u8::MAX)),
        None => "none",
    };
    Ok(Reply::Simple(name.into()))
}
