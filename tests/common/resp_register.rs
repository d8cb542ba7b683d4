//! One register operation of the linearizability workloads sent as Redis
//! commands (GET, SET, SET NX, DEL, and Lua compare-and-set / compare-and-delete
//! scripts), and what its reply tells the checker: its output, or whether it
//! surely failed or may have taken effect. The mapping is kept apart from any
//! client library so that every RESP client of the test suites shares it.

use cairn_check::{Input, Outcome, Output};

/// Sets KEYS[1] to ARGV[2] if it holds ARGV[1]: 1 if it did, else 0.
pub const CAS_SCRIPT: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) return 1 end return 0";
/// Deletes KEYS[1] if it holds ARGV[1]: 1 if it did, else 0.
pub const CAD_SCRIPT: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end return 0";

/// A reply as the workloads need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespReply {
    Nil,
    Bulk(Vec<u8>),
    Int(i64),
    /// +OK or another status.
    Status(String),
    /// An error reply, code first (`TRYAGAIN …`, `ERR …`).
    Error(String),
    /// A reply of a type these commands never answer (described).
    Unexpected(String),
}

/// The command (name and arguments) that performs `input` on `key`.
pub fn command(key: &str, input: &Input) -> Vec<String> {
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect();
    match input {
        Input::Get => s(&["GET", key]),
        Input::Put(v) => s(&["SET", key, &v.to_string()]),
        Input::PutIfAbsent(v) => s(&["SET", key, &v.to_string(), "NX"]),
        Input::PutIfValue { expected, new } => {
            s(&["EVAL", CAS_SCRIPT, "1", key, &expected.to_string(), &new.to_string()])
        }
        Input::Delete => s(&["DEL", key]),
        Input::DeleteIfValue { expected } => s(&["EVAL", CAD_SCRIPT, "1", key, &expected.to_string()]),
    }
}

/// An error reply that promises nothing was applied: TRYAGAIN (the front end's
/// word for "certainly not applied, retry") and CLUSTERDOWN (no keyspace yet).
pub fn surely_not_applied(error: &str) -> bool {
    error.starts_with("TRYAGAIN") || error.starts_with("CLUSTERDOWN")
}

/// What `reply` (`None`: no reply, the connection broke or the client gave up)
/// to `input` says; `Err` for a reply of the wrong shape (the server's bug,
/// which the run must report rather than record as in doubt).
pub fn outcome(input: &Input, reply: Option<RespReply>) -> Result<Outcome, String> {
    let reply = match reply {
        Some(RespReply::Unexpected(r)) => return Err(format!("unexpected reply {r} to {input:?}")),
        // A read has no effect, so one without an answer is simply dropped from the history.
        None | Some(RespReply::Error(_)) if matches!(input, Input::Get) => return Ok(Outcome::Failed),
        None => return Ok(Outcome::Unknown),
        Some(RespReply::Error(e)) if surely_not_applied(&e) => return Ok(Outcome::Failed),
        Some(RespReply::Error(_)) => return Ok(Outcome::Unknown),
        Some(r) => r,
    };
    let out = match (input, reply) {
        (Input::Get, RespReply::Nil) => Output::Value(None),
        (Input::Get, RespReply::Bulk(v)) => Output::Value(super::register::parse_value(true, &v)),
        (Input::Put(_), RespReply::Status(s)) if s == "OK" => Output::Done,
        (Input::PutIfAbsent(_), RespReply::Status(s)) if s == "OK" => Output::Applied(true),
        (Input::PutIfAbsent(_), RespReply::Nil) => Output::Applied(false),
        (Input::PutIfValue { .. } | Input::DeleteIfValue { .. }, RespReply::Int(n)) => Output::Applied(n == 1),
        (Input::Delete, RespReply::Int(n)) => Output::Deleted { existed: n > 0 },
        (_, other) => return Err(format!("unexpected reply {other:?} to {input:?}")),
    };
    Ok(Outcome::Ok(out))
}
