//! The command table (what COMMAND reports, and the arity every call is
//! checked against) and the dispatch of a parsed command to its group's
//! module. Argument parsing helpers shared by the groups live here too.

pub mod expiry;
mod keys;
pub mod pipeline;
mod rmw;
mod scan;
pub mod server;
pub mod strings;

use super::session::Session;
use super::txn;
use super::RespServer;
use bytes::Bytes;
use cairn_core::resp::reply::Reply;

/// One command as COMMAND INFO describes it.
pub struct Spec {
    pub name: &'static str,
    /// Redis's convention: N means exactly N arguments with the name, -N at least N.
    pub arity: i32,
    pub flags: &'static [&'static str],
    pub first_key: i32,
    pub last_key: i32,
    pub step: i32,
    pub group: &'static str,
    pub summary: &'static str,
}

const fn spec(
    name: &'static str,
    arity: i32,
    flags: &'static [&'static str],
    keys: (i32, i32, i32),
    group: &'static str,
    summary: &'static str,
) -> Spec {
    Spec { name, arity, flags, first_key: keys.0, last_key: keys.1, step: keys.2, group, summary }
}

const NO_KEYS: (i32, i32, i32) = (0, 0, 0);
const KEY1: (i32, i32, i32) = (1, 1, 1);
const W: &[&str] = &["write", "denyoom"];
const R: &[&str] = &["readonly", "fast"];
const RW: &[&str] = &["write", "fast"];
const CONN: &[&str] = &["fast", "loading", "stale"];
const SCRIPT: &[&str] = &["noscript", "stale", "skip_monitor", "movablekeys"];

pub static COMMANDS: &[Spec] = &[
    spec("append", 3, W, KEY1, "string", "Appends a string to the value of a key."),
    spec("client", -2, CONN, NO_KEYS, "connection", "Client connection commands."),
    spec("cluster", -2, CONN, NO_KEYS, "cluster", "Cluster commands."),
    spec("command", -1, CONN, NO_KEYS, "server", "Details about Redis commands."),
    spec("config", -2, CONN, NO_KEYS, "server", "Reads server parameters."),
    spec("dbsize", 1, &["readonly"], NO_KEYS, "server", "Returns the number of keys."),
    spec("decr", 2, W, KEY1, "string", "Decrements the integer value of a key by one."),
    spec("decrby", 3, W, KEY1, "string", "Decrements a number from the integer value of a key."),
    spec("del", -2, &["write"], (1, -1, 1), "generic", "Deletes one or more keys."),
    spec("discard", 1, CONN, NO_KEYS, "transactions", "Discards a transaction."),
    spec("echo", 2, CONN, NO_KEYS, "connection", "Returns the given string."),
    spec("eval", -3, SCRIPT, NO_KEYS, "scripting", "Executes a server-side Lua script."),
    spec("eval_ro", -3, SCRIPT, NO_KEYS, "scripting", "Executes a read-only server-side Lua script."),
    spec("evalsha", -3, SCRIPT, NO_KEYS, "scripting", "Executes a server-side Lua script by SHA1 digest."),
    spec("evalsha_ro", -3, SCRIPT, NO_KEYS, "scripting", "Executes a read-only server-side Lua script by SHA1 digest."),
    spec(
        "exec",
        1,
        &["noscript", "loading", "stale"],
        NO_KEYS,
        "transactions",
        "Executes all commands in a transaction.",
    ),
    spec("exists", -2, R, (1, -1, 1), "generic", "Determines whether one or more keys exist."),
    spec("expire", -3, RW, KEY1, "generic", "Sets the expiration time of a key in seconds."),
    spec("expireat", -3, RW, KEY1, "generic", "Sets the expiration time of a key to a Unix timestamp."),
    spec("expiretime", 2, R, KEY1, "generic", "Returns the expiration time of a key as a Unix timestamp."),
    spec("flushall", -1, &["write"], NO_KEYS, "server", "Removes all keys (when enabled in the config)."),
    spec("flushdb", -1, &["write"], NO_KEYS, "server", "Removes all keys (when enabled in the config)."),
    spec("get", 2, R, KEY1, "string", "Returns the string value of a key."),
    spec("getdel", 2, RW, KEY1, "string", "Returns the string value of a key after deleting the key."),
    spec("getex", -2, RW, KEY1, "string", "Returns the string value of a key."),
    spec("getrange", 4, &["readonly"], KEY1, "string", "Returns a substring of the string stored at a key."),
    spec("getset", 3, W, KEY1, "string", "Returns the previous string value of a key after setting it."),
    spec("hdel", -3, RW, KEY1, "hash", "Deletes one or more fields and their values from a hash."),
    spec("hello", -1, CONN, NO_KEYS, "connection", "Handshakes with the server (RESP2 or RESP3)."),
    spec("hexists", 3, R, KEY1, "hash", "Determines whether a field exists in a hash."),
    spec("hget", 3, R, KEY1, "hash", "Returns the value of a field in a hash."),
    spec("hgetall", 2, &["readonly"], KEY1, "hash", "Returns all fields and values in a hash."),
    spec("hincrby", 4, W, KEY1, "hash", "Increments the integer value of a field in a hash by a number."),
    spec("hincrbyfloat", 4, W, KEY1, "hash", "Increments the floating point value of a field by a number."),
    spec("hkeys", 2, &["readonly"], KEY1, "hash", "Returns all fields in a hash."),
    spec("hlen", 2, R, KEY1, "hash", "Returns the number of fields in a hash."),
    spec("hmget", -3, R, KEY1, "hash", "Returns the values of all fields in a hash."),
    spec("hmset", -4, W, KEY1, "hash", "Sets the values of multiple fields."),
    spec("hrandfield", -2, &["readonly"], KEY1, "hash", "Returns one or more random fields from a hash."),
    spec("hscan", -3, &["readonly"], KEY1, "hash", "Iterates over fields and values of a hash."),
    spec("hset", -4, W, KEY1, "hash", "Creates or modifies the value of a field in a hash."),
    spec("hsetnx", 4, W, KEY1, "hash", "Sets the value of a field in a hash only when the field doesn't exist."),
    spec("hstrlen", 3, R, KEY1, "hash", "Returns the length of the value of a field."),
    spec("hvals", 2, &["readonly"], KEY1, "hash", "Returns all values in a hash."),
    spec("incr", 2, W, KEY1, "string", "Increments the integer value of a key by one."),
    spec("incrby", 3, W, KEY1, "string", "Increments the integer value of a key by a number."),
    spec("incrbyfloat", 3, W, KEY1, "string", "Increments the floating point value of a key by a number."),
    spec("info", -1, &["loading", "stale"], NO_KEYS, "server", "Returns information about the server."),
    spec("keys", 2, &["readonly"], NO_KEYS, "generic", "Returns all key names that match a pattern."),
    spec("mget", -2, R, (1, -1, 1), "string", "Atomically returns the string values of one or more keys."),
    spec("mset", -3, W, (1, -1, 2), "string", "Sets the string values of one or more keys."),
    spec("msetnx", -3, W, (1, -1, 2), "string", "Sets keys only when none of them exists."),
    spec("multi", 1, CONN, NO_KEYS, "transactions", "Starts a transaction."),
    spec("persist", 2, RW, KEY1, "generic", "Removes the expiration time of a key."),
    spec("pexpire", -3, RW, KEY1, "generic", "Sets the expiration time of a key in milliseconds."),
    spec("pexpireat", -3, RW, KEY1, "generic", "Sets the expiration time of a key to a Unix milliseconds timestamp."),
    spec(
        "pexpiretime",
        2,
        R,
        KEY1,
        "generic",
        "Returns the expiration time of a key as a Unix milliseconds timestamp.",
    ),
    spec("ping", -1, CONN, NO_KEYS, "connection", "Returns the server's liveliness response."),
    spec("psetex", 4, W, KEY1, "string", "Sets a key's value and expiration in milliseconds."),
    spec("pttl", 2, R, KEY1, "generic", "Returns the expiration time in milliseconds of a key."),
    spec("quit", -1, CONN, NO_KEYS, "connection", "Closes the connection."),
    spec("randomkey", 1, &["readonly"], NO_KEYS, "generic", "Returns a random key name from the database."),
    spec("readonly", 1, CONN, NO_KEYS, "cluster", "Allows bounded-stale reads from replicas."),
    spec("readwrite", 1, CONN, NO_KEYS, "cluster", "Ends READONLY."),
    spec("rename", 3, &["write"], (1, 2, 1), "generic", "Renames a key and overwrites the destination."),
    spec(
        "renamenx",
        3,
        &["write", "fast"],
        (1, 2, 1),
        "generic",
        "Renames a key only when the target key name doesn't exist.",
    ),
    spec("scan", -2, &["readonly"], NO_KEYS, "generic", "Iterates over the key names in the database."),
    spec("script", -2, &["noscript"], NO_KEYS, "scripting", "Script cache commands (LOAD, EXISTS, FLUSH)."),
    spec("select", 2, CONN, NO_KEYS, "connection", "Changes the selected database (only 0 exists)."),
    spec("set", -3, W, KEY1, "string", "Sets the string value of a key."),
    spec("setex", 4, W, KEY1, "string", "Sets a key's value and expiration in seconds."),
    spec("setnx", 3, RW, KEY1, "string", "Sets a key's value only when the key does not exist."),
    spec("setrange", 4, W, KEY1, "string", "Overwrites part of a string value from an offset."),
    spec("strlen", 2, R, KEY1, "string", "Returns the length of a string value."),
    spec("substr", 4, &["readonly"], KEY1, "string", "Returns a substring of the string stored at a key."),
    spec("time", 1, CONN, NO_KEYS, "server", "Returns the server time."),
    spec("ttl", 2, R, KEY1, "generic", "Returns the expiration time in seconds of a key."),
    spec("type", 2, R, KEY1, "generic", "Determines the type of value stored at a key."),
    spec("unlink", -2, RW, (1, -1, 1), "generic", "Deletes one or more keys."),
    spec("unwatch", 1, CONN, NO_KEYS, "transactions", "Forgets about watched keys of a transaction."),
    spec("wait", 3, &[], NO_KEYS, "server", "Waits for replication (every write already is)."),
    spec("watch", -2, CONN, (1, -1, 1), "transactions", "Monitors keys to abort a transaction if they change."),
];

pub fn lookup(name: &str) -> Option<&'static Spec> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// Runs one command and returns its reply (errors are replies too).
pub async fn execute(srv: &RespServer, session: &mut Session, args: Vec<Bytes>) -> Reply {
    let Some(first) = args.first() else { return Reply::Error("ERR empty command".into()) };
    let name = String::from_utf8_lossy(first).to_ascii_lowercase();
    {
        let mut info = session.info.lock();
        info.last_command_ms = crate::hlc::wall_now_ms();
        info.last_command = name.chars().take(32).collect();
    }
    let Some(spec) = lookup(&name) else {
        // Inside MULTI, a command that cannot be queued fails the whole transaction.
        txn::flag(session);
        return unknown_command(&args);
    };
    let n = args.len() as i32;
    if (spec.arity > 0 && n != spec.arity) || (spec.arity < 0 && n < -spec.arity) {
        txn::flag(session);
        return Reply::Error(format!("ERR wrong number of arguments for '{}' command", spec.name));
    }
    if srv.cfg.cluster_mode {
        if let Some(elsewhere) = super::cluster::redirect(srv, session.readonly, spec, &args).await {
            txn::flag(session);
            return elsewhere;
        }
    }
    if let Some(multi) = session.multi.as_mut().filter(|_| !txn::controls_transaction(spec.name)) {
        return txn::queue(multi, spec.name, args);
    }
    let a = &args[1..];
    match spec.group {
        "transactions" => match spec.name {
            "multi" => txn::multi(session),
            "exec" => txn::exec(srv, session).await,
            "discard" => txn::discard(session),
            "watch" => txn::watch(srv, session, a).await,
            _ => txn::unwatch(session),
        },
        "string" => strings::run(srv, session, spec.name, a).await,
        "hash" => txn::run_one(srv, spec, &args, session.readonly).await,
        "generic" if matches!(spec.name, "rename" | "renamenx") => txn::run_one(srv, spec, &args, false).await,
        "generic" => keys::run(srv, session, spec.name, a).await,
        "scripting" => super::script::run(srv, spec.name, a).await,
        _ => server::run(srv, session, spec.name, a).await,
    }
}

/// Redis's reply to a command it does not know, quoting the first arguments.
fn unknown_command(args: &[Bytes]) -> Reply {
    let name = printable(&args[0], 128);
    let quoted: String = args[1..].iter().take(20).map(|a| format!("'{}' ", printable(a, 128))).collect();
    Reply::Error(format!("ERR unknown command '{name}', with args beginning with: {quoted}"))
}

/// Text safe to quote inside an error line (no CR/LF, bounded length).
pub fn printable(b: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&b[..b.len().min(max)]).replace(['\r', '\n'], " ")
}

pub fn syntax_error() -> Reply {
    Reply::Error("ERR syntax error".into())
}

pub fn not_integer() -> Reply {
    Reply::Error("ERR value is not an integer or out of range".into())
}

/// A signed 64-bit integer argument, as strictly as Redis reads one
/// (no sign but '-', no leading zeros, no spaces).
pub fn parse_i64(b: &[u8]) -> Result<i64, Reply> {
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    let canonical =
        !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) && (digits[0] != b'0' || digits.len() == 1);
    if !canonical || b == b"-0" {
        return Err(not_integer());
    }
    std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()).ok_or_else(not_integer)
}

/// A float argument as Redis reads one: finite or +/-inf, never NaN, no spaces.
pub fn parse_f64(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.trim() != s {
        return None;
    }
    let v = match s.to_ascii_lowercase().as_str() {
        "inf" | "+inf" | "infinity" | "+infinity" => f64::INFINITY,
        "-inf" | "-infinity" => f64::NEG_INFINITY,
        _ => s.parse().ok()?,
    };
    (!v.is_nan()).then_some(v)
}

pub fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_read_as_strictly_as_redis_does() {
        assert_eq!(parse_i64(b"42").ok(), Some(42));
        assert_eq!(parse_i64(b"-9223372036854775808").ok(), Some(i64::MIN));
        for bad in [&b"+1"[..], b" 1", b"01", b"-0", b"", b"-", b"1.0", b"9223372036854775808"] {
            assert!(parse_i64(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_table_is_sorted_and_its_names_are_lowercase() {
        let names: Vec<&str> = COMMANDS.iter().map(|c| c.name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(names.iter().all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
    }
}
