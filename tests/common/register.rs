//! One register operation of the linearizability workloads, sent through the
//! public gRPC API and mapped to what the checker needs to know: its output,
//! or whether it surely failed or may have taken effect. Shared by the chaos
//! suite (real processes) and the whole-node simulation.

use cairn_check::{Input, Outcome, Output};
use cairn_proto::kv::cairn_client::CairnClient;
use cairn_proto::kv::{condition, Condition, DeleteRequest, GetRequest, PutRequest};
use std::time::Duration;
use tonic::transport::Channel;

/// The next operation of a register client: mostly reads and plain writes, and
/// every conditional kind. `fresh` is a value never written before; `expected`,
/// the value the client last read (so conditions hold often enough to matter).
pub fn random_input(rng: &mut impl rand::Rng, fresh: u64, expected: u64) -> Input {
    match rng.random_range(0..100) {
        0..40 => Input::Get,
        40..65 => Input::Put(fresh),
        65..82 => Input::PutIfValue { expected, new: fresh },
        82..90 => Input::PutIfAbsent(fresh),
        90..96 => Input::Delete,
        _ => Input::DeleteIfValue { expected },
    }
}

/// A register's stored value: a decimal number, or `u64::MAX` for anything else.
pub fn parse_value(found: bool, v: &[u8]) -> Option<u64> {
    found.then(|| std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX))
}

fn value_cond(v: u64) -> Option<Condition> {
    Some(Condition { kind: Some(condition::Kind::ValueEquals(v.to_string().into_bytes())) })
}

/// Whether a failed write may have taken effect, as its status says (unmarked: maybe).
pub fn write_may_have_applied(s: &tonic::Status) -> bool {
    let outcome = s.metadata().get(cairn::outcome::HEADER).and_then(|v| v.to_str().ok());
    cairn::outcome::maybe_applied(outcome)
}

/// Runs `input` on `key` of `table`, giving up after `timeout`.
pub async fn register_op(
    c: &mut CairnClient<Channel>,
    table: &str,
    key: &str,
    input: &Input,
    timeout: Duration,
) -> Outcome {
    let k = key.as_bytes().to_vec();
    let put = |value: u64, condition| PutRequest {
        ttl_ms: 0,
        table: table.to_string(),
        key: k.clone(),
        value: value.to_string().into_bytes(),
        condition,
        request_id: vec![],
    };
    let del = |condition| DeleteRequest { table: table.to_string(), key: k.clone(), condition, request_id: vec![] };
    let res = match input {
        Input::Get => {
            let get = GetRequest { table: table.to_string(), key: k.clone(), consistency: 0, max_staleness_ms: 0 };
            tokio::time::timeout(timeout, c.get(get))
                .await
                .map(|r| r.map(|r| Output::Value(parse_value(r.get_ref().found, &r.get_ref().value))))
        }
        Input::Put(v) => tokio::time::timeout(timeout, c.put(put(*v, None))).await.map(|r| r.map(|_| Output::Done)),
        Input::PutIfAbsent(v) => {
            let cond = Some(Condition { kind: Some(condition::Kind::IfAbsent(true)) });
            tokio::time::timeout(timeout, c.put(put(*v, cond)))
                .await
                .map(|r| r.map(|r| Output::Applied(r.get_ref().succeeded)))
        }
        Input::PutIfValue { expected, new } => tokio::time::timeout(timeout, c.put(put(*new, value_cond(*expected))))
            .await
            .map(|r| r.map(|r| Output::Applied(r.get_ref().succeeded))),
        Input::Delete => tokio::time::timeout(timeout, c.delete(del(None)))
            .await
            .map(|r| r.map(|r| Output::Deleted { existed: r.get_ref().existed })),
        Input::DeleteIfValue { expected } => tokio::time::timeout(timeout, c.delete(del(value_cond(*expected))))
            .await
            .map(|r| r.map(|r| Output::Applied(r.get_ref().succeeded))),
    };
    match res {
        Ok(Ok(out)) => Outcome::Ok(out),
        // A read has no effect, so a failed one is simply dropped from the history.
        Ok(Err(_)) | Err(_) if matches!(input, Input::Get) => Outcome::Failed,
        // The server says the write was not applied (`cairn-write-outcome`): it surely failed.
        Ok(Err(s)) if !write_may_have_applied(&s) => Outcome::Failed,
        // Anything else (an unknown outcome, a timeout here) may or may not have taken effect.
        _ => Outcome::Unknown,
    }
}
