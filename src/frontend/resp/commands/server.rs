//! Connection and server commands: the handshake (HELLO), client bookkeeping
//! (CLIENT), introspection that client libraries and tools probe (COMMAND,
//! INFO, CONFIG GET), and the few cluster commands that need no routing table.

use super::super::keyspace;
use super::super::session::Session;
use super::super::RespServer;
use super::{lookup, parse_i64, printable, upper, Spec, COMMANDS};
use crate::gateway::scan::{self, ScanParams};
use crate::keys;
use bytes::Bytes;
use cairn_core::keys::slot::key_slot;
use cairn_core::resp::reply::{Protocol, Reply};
use std::sync::atomic::Ordering::Relaxed;

/// The Redis version Cairn answers as: the command set and replies it follows.
pub const REDIS_VERSION: &str = "7.0.0";

pub async fn run(srv: &RespServer, session: &mut Session, name: &str, a: &[Bytes]) -> Reply {
    let out = match name {
        "ping" => match a {
            [] => Ok(Reply::Simple("PONG".into())),
            [m] => Ok(Reply::Bulk(m.clone())),
            _ => Err(wrong_arity("ping")),
        },
        "echo" => Ok(Reply::Bulk(a[0].clone())),
        "quit" => {
            session.closing = true;
            Ok(Reply::ok())
        }
        "select" => match parse_i64(&a[0]) {
            Ok(0) => Ok(Reply::ok()),
            Ok(_) => Err(Reply::Error("ERR SELECT is not allowed in cluster mode".into())),
            Err(_) => Err(Reply::Error("ERR invalid DB index".into())),
        },
        "time" => {
            let us = srv.gw.hlc.physical_now() / 1_000;
            Ok(Reply::Array(vec![
                Reply::Bulk(Bytes::from((us / 1_000_000).to_string())),
                Reply::Bulk(Bytes::from((us % 1_000_000).to_string())),
            ]))
        }
        "hello" => hello(session, a),
        "client" => client(srv, session, a),
        "command" => command(a),
        "config" => config(srv, a),
        "info" => info(srv, a).await,
        "dbsize" => count_keys(srv).await.map(|n| Reply::Integer(n as i64)),
        "wait" => wait(srv, a),
        "flushdb" | "flushall" => flush(srv, name, a).await,
        "readonly" => {
            session.readonly = true;
            session.info.lock().readonly = true;
            Ok(Reply::ok())
        }
        "readwrite" => {
            session.readonly = false;
            session.info.lock().readonly = false;
            Ok(Reply::ok())
        }
        "cluster" => cluster(srv, a).await,
        _ => Err(Reply::Error(format!("ERR unknown command '{name}'"))),
    };
    out.unwrap_or_else(|e| e)
}

fn unknown_subcommand(sub: &[u8], command: &str) -> Reply {
    Reply::Error(format!(
        "ERR unknown subcommand '{}'. Try {} HELP.",
        printable(sub, 128),
        command.to_ascii_uppercase()
    ))
}

fn wrong_arity(command: &str) -> Reply {
    Reply::Error(format!("ERR wrong number of arguments for '{command}' command"))
}

fn bulk(s: impl Into<String>) -> Reply {
    Reply::Bulk(Bytes::from(s.into()))
}

/// HELLO [protover [AUTH user pass] [SETNAME name]].
fn hello(session: &mut Session, a: &[Bytes]) -> Result<Reply, Reply> {
    let mut protocol = session.protocol;
    if let Some(v) = a.first() {
        protocol = match parse_i64(v) {
            Ok(2) => Protocol::Resp2,
            Ok(3) => Protocol::Resp3,
            Ok(_) => return Err(Reply::Error("NOPROTO unsupported protocol version".into())),
            Err(_) => return Err(Reply::Error("ERR Protocol version is not an integer or out of range".into())),
        };
    }
    let mut name = None;
    let mut i = 1;
    while i < a.len() {
        match upper(&a[i]).as_str() {
            // No users are configured: the default user needs no password, as in a stock Redis.
            "AUTH" if i + 2 < a.len() => i += 3,
            "SETNAME" if i + 1 < a.len() => {
                name = Some(client_name(&a[i + 1])?);
                i += 2;
            }
            _ => return Err(Reply::Error(format!("ERR Syntax error in HELLO option '{}'", printable(&a[i], 64)))),
        }
    }
    session.protocol = protocol;
    let proto_number = if protocol == Protocol::Resp3 { 3 } else { 2 };
    {
        let mut info = session.info.lock();
        info.resp = proto_number;
        if let Some(n) = name {
            info.name = n;
        }
    }
    Ok(Reply::Map(vec![
        (bulk("server"), bulk("redis")),
        (bulk("version"), bulk(REDIS_VERSION)),
        (bulk("proto"), Reply::Integer(proto_number as i64)),
        (bulk("id"), Reply::Integer(session.id() as i64)),
        (bulk("mode"), bulk("standalone")),
        (bulk("role"), bulk("master")),
        (bulk("modules"), Reply::Array(vec![])),
    ]))
}

/// A client name as Redis accepts one: printable, no spaces.
fn client_name(b: &[u8]) -> Result<String, Reply> {
    if b.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
        return Err(Reply::Error("ERR Client names cannot contain spaces, newlines or special characters.".into()));
    }
    Ok(String::from_utf8_lossy(b).into_owned())
}

fn client(srv: &RespServer, session: &mut Session, a: &[Bytes]) -> Result<Reply, Reply> {
    let sub = upper(&a[0]);
    let now = crate::hlc::wall_now_ms();
    match (sub.as_str(), a.len()) {
        ("SETNAME", 2) => {
            session.info.lock().name = client_name(&a[1])?;
            Ok(Reply::ok())
        }
        ("GETNAME", 1) => {
            let name = session.info.lock().name.clone();
            Ok(if name.is_empty() { Reply::Nil } else { bulk(name) })
        }
        ("ID", 1) => Ok(Reply::Integer(session.id() as i64)),
        ("INFO", 1) => Ok(Reply::Verbatim(format!("{}\n", Session::describe(&session.info.lock(), now)))),
        ("LIST", _) => {
            let lines: String =
                srv.clients.snapshot().iter().map(|c| format!("{}\n", Session::describe(c, now))).collect();
            Ok(Reply::Verbatim(lines))
        }
        ("SETINFO", 3) => {
            let value = String::from_utf8_lossy(&a[2]).into_owned();
            match upper(&a[1]).as_str() {
                "LIB-NAME" => session.info.lock().lib_name = value,
                "LIB-VER" => session.info.lock().lib_ver = value,
                other => return Err(Reply::Error(format!("ERR Unrecognized option '{other}'"))),
            }
            Ok(Reply::ok())
        }
        // Cairn neither evicts nor tracks key access: these switches change nothing.
        ("NO-EVICT" | "NO-TOUCH" | "REPLY", 2) => Ok(Reply::ok()),
        ("SETNAME" | "GETNAME" | "ID" | "INFO" | "SETINFO" | "NO-EVICT" | "NO-TOUCH" | "REPLY", _) => {
            Err(wrong_arity(&format!("client|{}", sub.to_ascii_lowercase())))
        }
        _ => Err(unknown_subcommand(&a[0], "client")),
    }
}

/// COMMAND's description of one command, in Redis 7's ten-field shape.
fn command_info(c: &Spec) -> Reply {
    Reply::Array(vec![
        bulk(c.name),
        Reply::Integer(c.arity as i64),
        Reply::Set(c.flags.iter().map(|f| Reply::Simple(f.to_string())).collect()),
        Reply::Integer(c.first_key as i64),
        Reply::Integer(c.last_key as i64),
        Reply::Integer(c.step as i64),
        Reply::Set(vec![Reply::Simple(format!("@{}", c.group))]),
        Reply::Set(vec![]),
        Reply::Array(vec![]),
        Reply::Array(vec![]),
    ])
}

fn command_docs(c: &Spec) -> Reply {
    Reply::Map(vec![(bulk("summary"), bulk(c.summary)), (bulk("since"), bulk("1.0.0")), (bulk("group"), bulk(c.group))])
}

fn command(a: &[Bytes]) -> Result<Reply, Reply> {
    let Some(sub) = a.first() else { return Ok(Reply::Array(COMMANDS.iter().map(command_info).collect())) };
    let named = |rest: &[Bytes]| -> Vec<Option<&'static Spec>> {
        rest.iter().map(|n| lookup(&String::from_utf8_lossy(n).to_ascii_lowercase())).collect()
    };
    match upper(sub).as_str() {
        "COUNT" if a.len() == 1 => Ok(Reply::Integer(COMMANDS.len() as i64)),
        "INFO" if a.len() == 1 => Ok(Reply::Array(COMMANDS.iter().map(command_info).collect())),
        "INFO" => Ok(Reply::Array(named(&a[1..]).into_iter().map(|c| c.map_or(Reply::Nil, command_info)).collect())),
        "DOCS" => {
            let specs: Vec<&Spec> =
                if a.len() == 1 { COMMANDS.iter().collect() } else { named(&a[1..]).into_iter().flatten().collect() };
            Ok(Reply::Map(specs.into_iter().map(|c| (bulk(c.name), command_docs(c))).collect()))
        }
        "LIST" if a.len() == 1 => Ok(Reply::Array(COMMANDS.iter().map(|c| bulk(c.name)).collect())),
        "COUNT" | "LIST" => Err(wrong_arity(&format!("command|{}", upper(sub).to_ascii_lowercase()))),
        _ => Err(unknown_subcommand(sub, "command")),
    }
}

/// Redis glob matching (`*`, `?`, `[...]`, `\` escapes), case-insensitive as CONFIG GET is.
pub fn glob_match(pattern: &[u8], text: &[u8], nocase: bool) -> bool {
    let eq = |a: u8, b: u8| if nocase { a.eq_ignore_ascii_case(&b) } else { a == b };
    // Iterative with one backtrack point for the last '*': linear in practice, no recursion.
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(pattern, p, text[t], nocase) {
                        if matched {
                            p = next;
                            t += 1;
                            continue;
                        }
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if eq(pattern[p + 1], text[t]) {
                        p += 2;
                        t += 1;
                        continue;
                    }
                }
                c => {
                    if eq(c, text[t]) {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Whether `c` matches the `[...]` class starting at `start`, and where the pattern continues.
fn class_match(pattern: &[u8], start: usize, c: u8, nocase: bool) -> Option<(bool, usize)> {
    let norm = |x: u8| if nocase { x.to_ascii_lowercase() } else { x };
    let mut i = start + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            matched |= norm(pattern[i + 1]) == norm(c);
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (lo, hi) = (norm(pattern[i]).min(norm(pattern[i + 2])), norm(pattern[i]).max(norm(pattern[i + 2])));
            matched |= (lo..=hi).contains(&norm(c));
            i += 3;
        } else {
            matched |= norm(pattern[i]) == norm(c);
            i += 1;
        }
    }
    (i < pattern.len()).then_some((matched != negate, i + 1))
}

/// The parameters CONFIG GET reports: those client libraries and tools read.
fn config_values(srv: &RespServer) -> Vec<(&'static str, String)> {
    vec![
        ("appendonly", "yes".into()),
        ("appendfsync", "always".into()),
        ("save", String::new()),
        ("databases", "1".into()),
        ("maxclients", srv.cfg.max_clients.to_string()),
        ("maxmemory", "0".into()),
        ("maxmemory-policy", "noeviction".into()),
        ("timeout", srv.cfg.idle_timeout_secs.to_string()),
        ("proto-max-bulk-len", srv.gw.limits.max_value_bytes.to_string()),
        ("client-query-buffer-limit", srv.cfg.max_query_buffer_bytes.to_string()),
        ("cluster-enabled", if srv.cfg.cluster_mode { "yes" } else { "no" }.into()),
    ]
}

fn config(srv: &RespServer, a: &[Bytes]) -> Result<Reply, Reply> {
    match upper(&a[0]).as_str() {
        "GET" if a.len() >= 2 => {
            let values = config_values(srv);
            let mut out = Vec::new();
            for (name, value) in &values {
                if a[1..].iter().any(|p| glob_match(p, name.as_bytes(), true)) {
                    out.push((bulk(*name), bulk(value.clone())));
                }
            }
            Ok(Reply::Map(out))
        }
        "SET" => Err(Reply::Error(
            "ERR CONFIG SET is not supported: set the node's [redis] options in its config file".into(),
        )),
        "RESETSTAT" => Ok(Reply::ok()),
        "GET" => Err(wrong_arity("config|get")),
        _ => Err(unknown_subcommand(&a[0], "config")),
    }
}

/// Every key of the keyspace, counted by a key-only scan of its ranges.
async fn count_keys(srv: &RespServer) -> Result<u64, Reply> {
    let t = keyspace::table(&srv.gw).await?;
    let params = ScanParams {
        start: keys::table_prefix(t.id),
        end: keys::table_end(t.id),
        limit: 0,
        page_size: 1024,
        keys_only: true,
        resume_version: None,
    };
    let mut rx = scan::scan(srv.gw.clone(), params);
    let mut n = 0u64;
    while let Some(batch) = rx.recv().await {
        n += batch.map_err(|s| keyspace::error_reply(&s))?.pairs.len() as u64;
    }
    Ok(n)
}

/// WAIT: an acknowledged write is already on a majority of its range's replicas,
/// so this answers at once with the replicas (besides the leader) that hold it.
fn wait(srv: &RespServer, a: &[Bytes]) -> Result<Reply, Reply> {
    let wanted = parse_i64(&a[0])?;
    let timeout = parse_i64(&a[1])?;
    if wanted < 0 || timeout < 0 {
        return Err(Reply::Error("ERR timeout is negative".into()));
    }
    // A majority of three replicas is the leader and one more; of five, two more.
    let replicas = srv.gw.directory().records().filter_map(|r| r.desc.as_ref()).map(|d| d.replicas.len()).max();
    Ok(Reply::Integer(replicas.map_or(0, |n| (n / 2) as i64)))
}

async fn flush(srv: &RespServer, name: &str, a: &[Bytes]) -> Result<Reply, Reply> {
    if a.len() > 1 || a.first().is_some_and(|m| !matches!(upper(m).as_str(), "SYNC" | "ASYNC")) {
        return Err(super::syntax_error());
    }
    if !srv.cfg.allow_flush {
        return Err(Reply::Error(format!(
            "ERR {} is disabled: it deletes every key of the cluster; set allow_flush = true under [redis] \
             in the node's config to enable it",
            name.to_ascii_uppercase()
        )));
    }
    let t = keyspace::table(&srv.gw).await?;
    crate::meta::admin::clear_span(&srv.gw, &keys::table_prefix(t.id), &keys::table_end(t.id), None)
        .await
        .map_err(|s| keyspace::error_reply(&s))?;
    Ok(Reply::ok())
}

async fn cluster(srv: &RespServer, a: &[Bytes]) -> Result<Reply, Reply> {
    match (upper(&a[0]).as_str(), a.len()) {
        ("KEYSLOT", 2) => Ok(Reply::Integer(key_slot(&a[1]) as i64)),
        ("MYID", 1) => Ok(bulk(node_name(srv.gw.node_id))),
        (sub @ ("SLOTS" | "SHARDS" | "NODES" | "INFO"), 1) => super::super::cluster::command(srv, sub).await,
        ("KEYSLOT" | "MYID" | "SLOTS" | "SHARDS" | "NODES" | "INFO", _) => {
            Err(wrong_arity(&format!("cluster|{}", upper(&a[0]).to_ascii_lowercase())))
        }
        _ => Err(unknown_subcommand(&a[0], "cluster")),
    }
}

/// A node's 40-character Redis Cluster name, derived from its Cairn node id.
pub fn node_name(node_id: u64) -> String {
    format!("{node_id:040x}")
}

async fn info(srv: &RespServer, a: &[Bytes]) -> Result<Reply, Reply> {
    const ALL: [&str; 7] = ["server", "clients", "memory", "stats", "replication", "keyspace", "cluster"];
    let mut wanted: Vec<String> = a.iter().map(|s| String::from_utf8_lossy(s).to_ascii_lowercase()).collect();
    if wanted.is_empty() || wanted.iter().any(|s| matches!(s.as_str(), "all" | "everything" | "default")) {
        wanted = ALL.iter().map(|s| s.to_string()).collect();
    }
    let mut text = String::new();
    for section in ALL.iter().filter(|s| wanted.iter().any(|w| w == *s)) {
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        text.push_str(&info_section(srv, section).await?);
    }
    Ok(Reply::Verbatim(text))
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

async fn info_section(srv: &RespServer, section: &str) -> Result<String, Reply> {
    let uptime = crate::clock::now().duration_since(srv.started).as_secs();
    let port = srv.advertised.rsplit(':').next().unwrap_or("0").to_string();
    let lines: Vec<(String, String)> = match section {
        "server" => vec![
            ("redis_version".into(), REDIS_VERSION.into()),
            ("redis_mode".into(), "standalone".into()),
            ("cairn_version".into(), env!("CARGO_PKG_VERSION").into()),
            ("cairn_node_id".into(), srv.gw.node_id.to_string()),
            ("cairn_cluster_id".into(), srv.gw.cluster_id.clone()),
            ("os".into(), std::env::consts::OS.into()),
            ("arch_bits".into(), "64".into()),
            ("process_id".into(), std::process::id().to_string()),
            ("tcp_port".into(), port),
            ("uptime_in_seconds".into(), uptime.to_string()),
            ("uptime_in_days".into(), (uptime / 86_400).to_string()),
        ],
        "clients" => vec![
            ("connected_clients".into(), srv.clients.len().to_string()),
            ("maxclients".into(), srv.cfg.max_clients.to_string()),
        ],
        "memory" => {
            let rss = rss_bytes();
            vec![
                ("used_memory".into(), rss.to_string()),
                ("used_memory_human".into(), format!("{:.2}M", rss as f64 / (1 << 20) as f64)),
                ("used_memory_rss".into(), rss.to_string()),
                ("maxmemory".into(), "0".into()),
                ("maxmemory_policy".into(), "noeviction".into()),
            ]
        }
        "stats" => {
            let s = &srv.stats;
            vec![
                ("total_connections_received".into(), s.connections.load(Relaxed).to_string()),
                ("total_commands_processed".into(), s.commands.load(Relaxed).to_string()),
                ("rejected_connections".into(), s.rejected.load(Relaxed).to_string()),
                ("keyspace_hits".into(), s.keyspace_hits.load(Relaxed).to_string()),
                ("keyspace_misses".into(), s.keyspace_misses.load(Relaxed).to_string()),
                ("total_error_replies".into(), s.protocol_errors.load(Relaxed).to_string()),
                ("cairn_script_batches".into(), s.script_batches.load(Relaxed).to_string()),
                ("cairn_batched_scripts".into(), s.batched_scripts.load(Relaxed).to_string()),
            ]
        }
        // Replication is Raft's, per range: a Redis client sees every node as a master
        // whose acknowledged writes are already on a majority.
        "replication" => vec![("role".into(), "master".into()), ("connected_slaves".into(), "0".into())],
        "keyspace" => {
            let n = count_keys(srv).await?;
            if n == 0 {
                vec![]
            } else {
                vec![("db0".into(), format!("keys={n},expires=0,avg_ttl=0"))]
            }
        }
        "cluster" => vec![("cluster_enabled".into(), (srv.cfg.cluster_mode as u8).to_string())],
        _ => vec![],
    };
    let title = format!("# {}{}", section[..1].to_ascii_uppercase(), &section[1..]);
    let body: Vec<String> = lines.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
    Ok(std::iter::once(title).chain(body).collect::<Vec<_>>().join("\r\n") + "\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_redis_does() {
        assert!(glob_match(b"*", b"appendonly", true));
        assert!(glob_match(b"append*", b"appendonly", true));
        assert!(glob_match(b"APPEND?NLY", b"appendonly", true));
        assert!(glob_match(b"h[ae]llo", b"hello", false));
        assert!(!glob_match(b"h[^e]llo", b"hello", false));
        assert!(glob_match(b"h[a-f]llo", b"hello", false));
        assert!(glob_match(b"a\\*b", b"a*b", false));
        assert!(!glob_match(b"a\\*b", b"axb", false));
        assert!(!glob_match(b"save", b"saves", false));
        assert!(glob_match(b"*a*b*c*", b"xxaxxbxxcxx", false));
        assert!(!glob_match(b"*a*b*c", b"xxaxxbxxcxxd", false));
    }
}
