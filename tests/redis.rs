//! The Redis front end through a real client library (the `redis` crate) on a
//! real cluster (separate `cairn server` processes, loopback sockets, real
//! disks): each command's replies and error replies, RESP2 and RESP3, pipelines,
//! and malformed input, which gets a protocol error and a closed connection
//! while the node keeps serving everyone else.

// Tests keep their own deadlines on the OS clock; the clock rule (clippy.toml) is for node code.
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use redis::aio::MultiplexedConnection;
use redis::{cmd, RedisResult, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn connect(addr: &str) -> MultiplexedConnection {
    connect_with(&format!("redis://{addr}/")).await
}

/// The redis crate gives up on a reply after 500 ms by default, shorter than a
/// leader change can take; redis-py and redis-cli wait. Tests wait 10 s.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect_with(url: &str) -> MultiplexedConnection {
    let client = redis::Client::open(url).expect("redis url");
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(RESPONSE_TIMEOUT));
    client.get_multiplexed_async_connection_with_config(&config).await.expect("connect")
}

async fn q<T: redis::FromRedisValue>(c: &mut MultiplexedConnection, args: &[&str]) -> RedisResult<T> {
    let mut command = cmd(args[0]);
    for a in &args[1..] {
        command.arg(*a);
    }
    command.query_async(c).await
}

/// The error text of a command that must fail (code and message, as the server sent them).
async fn err(c: &mut MultiplexedConnection, args: &[&str]) -> String {
    match q::<Value>(c, args).await {
        Ok(v) => panic!("{args:?} succeeded with {v:?}"),
        Err(e) => format!("{} {}", e.code().unwrap_or("?"), e.detail().unwrap_or("")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn string_and_key_commands_answer_as_redis_does_on_any_node() {
    let _g = serial().await;
    let cl = Cluster::start_redis(3, &[]).await;
    let mut a = connect(&cl.redis(0)).await;
    let mut b = connect(&cl.redis(2)).await;

    // SET and GET through different nodes: every node serves every key.
    assert_eq!(q::<String>(&mut a, &["SET", "greeting", "hello"]).await.unwrap(), "OK");
    assert_eq!(q::<Option<String>>(&mut b, &["GET", "greeting"]).await.unwrap().as_deref(), Some("hello"));
    assert_eq!(q::<Option<String>>(&mut b, &["GET", "missing"]).await.unwrap(), None);
    // NX / XX / GET / IFEQ.
    assert_eq!(q::<Option<String>>(&mut a, &["SET", "greeting", "x", "NX"]).await.unwrap(), None);
    assert_eq!(q::<Option<String>>(&mut a, &["SET", "fresh", "1", "XX"]).await.unwrap(), None);
    assert_eq!(q::<Option<String>>(&mut a, &["SET", "fresh", "1", "NX"]).await.unwrap().as_deref(), Some("OK"));
    let old: Option<String> = q(&mut a, &["SET", "greeting", "hi", "GET"]).await.unwrap();
    assert_eq!(old.as_deref(), Some("hello"));
    assert_eq!(q::<Option<String>>(&mut a, &["SET", "greeting", "yo", "IFEQ", "nope"]).await.unwrap(), None);
    assert_eq!(
        q::<Option<String>>(&mut a, &["SET", "greeting", "yo", "IFEQ", "hi"]).await.unwrap().as_deref(),
        Some("OK")
    );
    assert_eq!(q::<Option<String>>(&mut b, &["GETSET", "greeting", "hey"]).await.unwrap().as_deref(), Some("yo"));
    assert!(err(&mut a, &["SET", "k", "v", "NX", "XX"]).await.contains("syntax error"));
    assert!(err(&mut a, &["SET", "k", "v", "EX", "0"]).await.contains("invalid expire time"));
    assert!(err(&mut a, &["SET", "k", "v", "EX", "ten"]).await.contains("not an integer"));
    assert!(err(&mut a, &["SET", "k"]).await.contains("wrong number of arguments for 'set' command"));
    assert_eq!(q::<i64>(&mut a, &["SETNX", "greeting", "z"]).await.unwrap(), 0);
    assert_eq!(q::<i64>(&mut a, &["SETNX", "other", "z"]).await.unwrap(), 1);

    // Counters.
    assert_eq!(q::<i64>(&mut a, &["INCR", "ctr"]).await.unwrap(), 1);
    assert_eq!(q::<i64>(&mut b, &["INCRBY", "ctr", "41"]).await.unwrap(), 42);
    assert_eq!(q::<i64>(&mut a, &["DECR", "ctr"]).await.unwrap(), 41);
    assert_eq!(q::<i64>(&mut a, &["DECRBY", "ctr", "-9"]).await.unwrap(), 50);
    assert!(err(&mut a, &["INCR", "greeting"]).await.contains("value is not an integer or out of range"));
    assert!(err(&mut a, &["INCRBY", "ctr", "1x"]).await.contains("value is not an integer or out of range"));
    q::<String>(&mut a, &["SET", "big", &i64::MAX.to_string()]).await.unwrap();
    assert!(err(&mut a, &["INCR", "big"]).await.contains("increment or decrement would overflow"));
    assert_eq!(q::<String>(&mut a, &["INCRBYFLOAT", "f", "10.5"]).await.unwrap(), "10.5");
    assert_eq!(q::<String>(&mut a, &["INCRBYFLOAT", "f", "0.1"]).await.unwrap(), "10.6");
    assert_eq!(q::<String>(&mut a, &["INCRBYFLOAT", "f", "-5.6"]).await.unwrap(), "5");
    assert!(err(&mut a, &["INCRBYFLOAT", "greeting", "1"]).await.contains("not a valid float"));
    assert!(err(&mut a, &["INCRBYFLOAT", "f", "abc"]).await.contains("not a valid float"));

    // Ranges and lengths.
    q::<String>(&mut a, &["SET", "s", "This is a string"]).await.unwrap();
    assert_eq!(q::<String>(&mut a, &["GETRANGE", "s", "0", "3"]).await.unwrap(), "This");
    assert_eq!(q::<String>(&mut b, &["GETRANGE", "s", "-3", "-1"]).await.unwrap(), "ing");
    assert_eq!(q::<String>(&mut a, &["GETRANGE", "s", "10", "100"]).await.unwrap(), "string");
    assert_eq!(q::<i64>(&mut a, &["STRLEN", "s"]).await.unwrap(), 16);
    assert_eq!(q::<i64>(&mut a, &["STRLEN", "nothing"]).await.unwrap(), 0);
    assert_eq!(q::<i64>(&mut a, &["APPEND", "s", "!"]).await.unwrap(), 17);
    assert_eq!(q::<i64>(&mut a, &["APPEND", "new", "abc"]).await.unwrap(), 3);
    assert_eq!(q::<i64>(&mut a, &["SETRANGE", "pad", "3", "xy"]).await.unwrap(), 5);
    assert_eq!(q::<Vec<u8>>(&mut a, &["GET", "pad"]).await.unwrap(), b"\0\0\0xy".to_vec());
    assert_eq!(q::<i64>(&mut a, &["SETRANGE", "nokey", "5", ""]).await.unwrap(), 0);
    assert_eq!(q::<i64>(&mut a, &["EXISTS", "nokey"]).await.unwrap(), 0, "an empty SETRANGE creates nothing");
    assert!(err(&mut a, &["SETRANGE", "pad", "-1", "x"]).await.contains("offset is out of range"));
    assert!(err(&mut a, &["SETRANGE", "pad", "2000000", "x"]).await.contains("exceeds maximum allowed size"));

    // Multi-key commands: MSET and MGET span slots; MSETNX must not.
    assert_eq!(q::<String>(&mut a, &["MSET", "m1", "a", "m2", "b", "m3", "c"]).await.unwrap(), "OK");
    let got: Vec<Option<String>> = q(&mut b, &["MGET", "m1", "nope", "m3", "m2"]).await.unwrap();
    assert_eq!(got, vec![Some("a".into()), None, Some("c".into()), Some("b".into())]);
    assert!(err(&mut a, &["MSET", "m1", "a", "m2"]).await.contains("wrong number of arguments for 'mset'"));
    assert!(err(&mut a, &["MSETNX", "x1", "a", "x2", "b"]).await.starts_with("CROSSSLOT"));
    assert_eq!(q::<i64>(&mut a, &["MSETNX", "{u}a", "1", "{u}b", "2"]).await.unwrap(), 1);
    assert_eq!(q::<i64>(&mut a, &["MSETNX", "{u}c", "3", "{u}a", "9"]).await.unwrap(), 0);
    assert_eq!(q::<Option<String>>(&mut a, &["GET", "{u}c"]).await.unwrap(), None, "all or nothing");
    assert_eq!(q::<Option<String>>(&mut a, &["GET", "{u}a"]).await.unwrap().as_deref(), Some("1"));

    // Keys.
    assert_eq!(q::<String>(&mut a, &["TYPE", "s"]).await.unwrap(), "string");
    assert_eq!(q::<String>(&mut a, &["TYPE", "nothing"]).await.unwrap(), "none");
    assert_eq!(q::<i64>(&mut b, &["EXISTS", "m1", "m1", "nope", "m2"]).await.unwrap(), 3);
    assert_eq!(q::<i64>(&mut a, &["DEL", "m1", "m2", "nope", "m1"]).await.unwrap(), 2);
    assert_eq!(q::<i64>(&mut b, &["UNLINK", "m3"]).await.unwrap(), 1);
    assert_eq!(q::<i64>(&mut b, &["EXISTS", "m1", "m2", "m3"]).await.unwrap(), 0);
    assert_eq!(q::<Option<String>>(&mut a, &["GETDEL", "s"]).await.unwrap().as_deref(), Some("This is a string!"));
    assert_eq!(q::<Option<String>>(&mut a, &["GETDEL", "s"]).await.unwrap(), None);
    assert_eq!(q::<Option<String>>(&mut a, &["GETEX", "other"]).await.unwrap().as_deref(), Some("z"));
    assert_eq!(q::<Option<String>>(&mut a, &["GETEX", "other", "PERSIST"]).await.unwrap().as_deref(), Some("z"));

    // Limits name themselves and apply nothing.
    let big = "v".repeat((1 << 20) + 1);
    assert!(err(&mut a, &["SET", "huge", &big]).await.contains("value size limit"));
    assert!(err(&mut a, &["MSET", "h1", "x", "h2", &big]).await.contains("value size limit"));
    assert_eq!(q::<i64>(&mut a, &["EXISTS", "huge", "h1", "h2"]).await.unwrap(), 0, "nothing partly applied");
    let long_key = "k".repeat(8193);
    assert!(err(&mut a, &["GET", &long_key]).await.contains("key size limit"));

    // The writes are in the native table too: the same store, not a copy.
    let mut native = cl.client(1).await;
    let r = native
        .get(cairn_proto::kv::GetRequest { table: "redis".into(), key: b"ctr".to_vec(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.value, b"50");
    assert_eq!(q::<i64>(&mut a, &["DBSIZE"]).await.unwrap(), q::<i64>(&mut b, &["DBSIZE"]).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_and_server_commands_satisfy_clients_that_probe_them() {
    let _g = serial().await;
    let cl = Cluster::start_redis(1, &["--replication-factor", "1"]).await;
    let addr = cl.redis(0);
    let mut c = connect(&addr).await;
    assert_eq!(q::<String>(&mut c, &["PING"]).await.unwrap(), "PONG");
    assert_eq!(q::<String>(&mut c, &["PING", "hi"]).await.unwrap(), "hi");
    assert_eq!(q::<String>(&mut c, &["ECHO", "x y"]).await.unwrap(), "x y");
    assert_eq!(q::<String>(&mut c, &["SELECT", "0"]).await.unwrap(), "OK");
    assert!(err(&mut c, &["SELECT", "1"]).await.contains("SELECT is not allowed in cluster mode"));
    let t: Vec<String> = q(&mut c, &["TIME"]).await.unwrap();
    let secs: u64 = t[0].parse().unwrap();
    assert!(secs > 1_700_000_000, "{t:?}");
    assert_eq!(q::<String>(&mut c, &["CLIENT", "SETNAME", "tester"]).await.unwrap(), "OK");
    assert_eq!(q::<String>(&mut c, &["CLIENT", "GETNAME"]).await.unwrap(), "tester");
    assert!(err(&mut c, &["CLIENT", "SETNAME", "bad name"]).await.contains("cannot contain spaces"));
    let id: i64 = q(&mut c, &["CLIENT", "ID"]).await.unwrap();
    let list: String = q(&mut c, &["CLIENT", "LIST"]).await.unwrap();
    assert!(list.contains(&format!("id={id} ")) && list.contains("name=tester"), "{list}");
    let info: String = q(&mut c, &["CLIENT", "INFO"]).await.unwrap();
    assert!(info.contains("name=tester"), "{info}");
    assert!(err(&mut c, &["CLIENT", "FLY"]).await.contains("unknown subcommand 'FLY'"));
    let info: String = q(&mut c, &["INFO"]).await.unwrap();
    for section in ["# Server", "# Clients", "# Memory", "# Stats", "# Replication", "# Keyspace", "# Cluster"] {
        assert!(info.contains(section), "INFO lacks {section}: {info}");
    }
    assert!(info.contains("redis_version:"), "{info}");
    let server_only: String = q(&mut c, &["INFO", "server"]).await.unwrap();
    assert!(server_only.contains("# Server") && !server_only.contains("# Clients"));
    let count: i64 = q(&mut c, &["COMMAND", "COUNT"]).await.unwrap();
    assert!(count >= 40, "{count}");
    let get_info: Value = q(&mut c, &["COMMAND", "INFO", "get", "nosuch"]).await.unwrap();
    let Value::Array(entries) = get_info else { panic!("{get_info:?}") };
    assert!(matches!(&entries[1], Value::Nil));
    let Value::Array(get) = &entries[0] else { panic!("{entries:?}") };
    assert_eq!(get[1], Value::Int(2), "GET's arity");
    assert_eq!((&get[3], &get[4], &get[5]), (&Value::Int(1), &Value::Int(1), &Value::Int(1)), "key positions");
    let docs: Value = q(&mut c, &["COMMAND", "DOCS", "set"]).await.unwrap();
    assert!(format!("{docs:?}").contains("summary"), "{docs:?}");
    let cfg: Vec<String> = q(&mut c, &["CONFIG", "GET", "appendonly"]).await.unwrap();
    assert_eq!(cfg, vec!["appendonly", "yes"]);
    let cfg: Vec<String> = q(&mut c, &["CONFIG", "GET", "max*"]).await.unwrap();
    assert!(cfg.contains(&"maxclients".to_string()) && cfg.contains(&"maxmemory".to_string()), "{cfg:?}");
    assert!(err(&mut c, &["CONFIG", "SET", "maxmemory", "1"]).await.contains("not supported"));
    assert_eq!(q::<i64>(&mut c, &["WAIT", "1", "0"]).await.unwrap(), 0, "one replica: no others hold it");
    assert!(err(&mut c, &["FLUSHDB"]).await.contains("FLUSHDB is disabled"));
    assert!(err(&mut c, &["FLUSHALL", "SYNC"]).await.contains("FLUSHALL is disabled"));
    assert_eq!(q::<i64>(&mut c, &["CLUSTER", "KEYSLOT", "foo"]).await.unwrap(), 12182);
    assert_eq!(q::<i64>(&mut c, &["CLUSTER", "KEYSLOT", "{user1000}.following"]).await.unwrap(), 3443);
    assert_eq!(q::<String>(&mut c, &["CLUSTER", "MYID"]).await.unwrap().len(), 40);
    assert_eq!(q::<String>(&mut c, &["READONLY"]).await.unwrap(), "OK");
    assert_eq!(q::<String>(&mut c, &["READWRITE"]).await.unwrap(), "OK");
    let unknown = err(&mut c, &["LPUSH", "list", "a"]).await;
    assert!(unknown.contains("unknown command 'LPUSH', with args beginning with: 'list' 'a'"), "{unknown}");
    q::<String>(&mut c, &["SET", "a", "1"]).await.unwrap();
    q::<String>(&mut c, &["SET", "b", "2"]).await.unwrap();
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]).await.unwrap(), 2);

    // RESP3 after HELLO 3: maps, nulls and verbatim strings in their own types.
    let mut c3 = connect_with(&format!("redis://{addr}/?protocol=resp3")).await;
    let hello: Value = q(&mut c3, &["HELLO", "3"]).await.unwrap();
    let Value::Map(fields) = &hello else { panic!("HELLO 3 is not a map: {hello:?}") };
    assert!(fields.iter().any(|(k, v)| k == &Value::BulkString(b"proto".to_vec()) && v == &Value::Int(3)));
    assert_eq!(q::<Value>(&mut c3, &["GET", "nothing"]).await.unwrap(), Value::Nil);
    let cfg: Value = q(&mut c3, &["CONFIG", "GET", "appendonly"]).await.unwrap();
    assert!(matches!(cfg, Value::Map(_)), "{cfg:?}");
    assert!(err(&mut c3, &["HELLO", "4"]).await.starts_with("NOPROTO"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pipeline_of_thousands_of_commands_answers_each_in_order() {
    let _g = serial().await;
    let cl = Cluster::start_redis(3, &[]).await;
    let mut c = connect(&cl.redis(1)).await;
    let mut p = redis::pipe();
    for i in 0..3000 {
        p.cmd("INCR").arg("pipelined");
        p.cmd("SET").arg(format!("p{i}")).arg(i);
    }
    let replies: Vec<Value> = p.query_async(&mut c).await.unwrap();
    assert_eq!(replies.len(), 6000);
    for (i, pair) in replies.chunks(2).enumerate() {
        assert_eq!(pair[0], Value::Int(i as i64 + 1), "INCR {i} answered in order");
        assert_eq!(pair[1], Value::Okay);
    }
    let last: Option<String> = q(&mut c, &["GET", "p2999"]).await.unwrap();
    assert_eq!(last.as_deref(), Some("2999"));

    // A counter on a non-integer fails alone: the batch its range refused is re-run
    // one command at a time, and what shares its range is applied once, not twice.
    q::<String>(&mut c, &["SET", "{g}text", "abc"]).await.unwrap();
    let mut p = redis::pipe();
    for key in ["{g}a", "{g}text", "{g}a", "elsewhere", "{g}b"] {
        p.cmd("INCR").arg(key);
    }
    p.cmd("GET").arg("{g}a").cmd("GET").arg("{g}text");
    let replies: Vec<Value> = p.ignore_errors().query_async(&mut c).await.unwrap();
    assert_eq!(&replies[0], &Value::Int(1));
    assert!(format!("{:?}", replies[1]).contains("not an integer"), "{replies:?}");
    assert_eq!(&replies[2..5], &[Value::Int(2), Value::Int(1), Value::Int(1)], "{replies:?}");
    assert_eq!(&replies[5..], &[Value::BulkString(b"2".to_vec()), Value::BulkString(b"abc".to_vec())]);
    assert_eq!(q::<i64>(&mut c, &["GET", "{g}a"]).await.unwrap(), 2, "applied once");
}

/// Sends raw bytes and returns what the server answers before it closes the connection.
async fn raw_exchange(addr: &str, input: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(input).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server kept the connection open after {input:?}: {out:?}");
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_requests_get_a_protocol_error_and_a_closed_connection() {
    let _g = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "[redis]\nmax_clients = 4\nidle_timeout_secs = 2\nmax_query_buffer_bytes = 2097152\nmax_args = 1000\n",
    )
    .unwrap();
    let cl = Cluster::start_redis(1, &["--replication-factor", "1", "--config", config.to_str().unwrap()]).await;
    let addr = cl.redis(0);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad multibulk length", b"*abc\r\n".to_vec(), "invalid multibulk length"),
        ("bad bulk length", b"*1\r\n$x\r\n".to_vec(), "invalid bulk length"),
        ("negative bulk length", b"*1\r\n$-5\r\n".to_vec(), "invalid bulk length"),
        ("bulk over the value limit", format!("*2\r\n$3\r\nSET\r\n${}\r\n", 3 << 20).into_bytes(), "bulk"),
        ("too many arguments", b"*100000\r\n".to_vec(), "too many arguments"),
        ("nested array", b"*1\r\n*1\r\n$1\r\na\r\n".to_vec(), "expected '$', got '*'"),
        ("oversized inline command", vec![b'a'; 100 << 10], "too big inline request"),
        ("binary garbage", b"SET \"k\x00\xff unterminated\r\n".to_vec(), "unbalanced quotes"),
    ];
    for (what, input, wanted) in cases {
        let answer = raw_exchange(&addr, &input).await;
        assert!(answer.starts_with("-ERR Protocol error") && answer.contains(wanted), "{what}: {answer:?}");
    }
    // A command whose parts pass the query buffer bound is refused before it is all read.
    let mut big = b"*5\r\n$4\r\nMSET\r\n$1\r\na\r\n".to_vec();
    big.extend(format!("${}\r\n", 1 << 20).as_bytes());
    big.extend(vec![b'x'; 1 << 20]);
    big.extend(b"\r\n$1\r\nb\r\n");
    big.extend(format!("${}\r\n", 1 << 20).as_bytes());
    big.extend(vec![b'y'; 1 << 20]);
    let answer = raw_exchange(&addr, &big).await;
    assert!(answer.contains("max_query_buffer_bytes"), "{answer:?}");

    // Past max_clients, a client is told so and disconnected; the others are served.
    // (The connections above release their slots just after they close.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect(&addr).await);
    }
    let answer = raw_exchange(&addr, b"PING\r\n").await;
    assert!(answer.contains("max number of clients reached"), "{answer:?}");
    for c in &mut held {
        assert_eq!(q::<String>(c, &["PING"]).await.unwrap(), "PONG");
    }
    drop(held);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // An idle client is disconnected after idle_timeout_secs, silently.
    let started = std::time::Instant::now();
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut got)).await;
    assert!(matches!(closed, Ok(Ok(0))), "idle client still connected: {closed:?} {got:?}");
    assert!(started.elapsed() >= Duration::from_millis(1500), "closed before its idle timeout");
    // Inline commands (what telnet sends) work, and the node still serves.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"SET inline \"a b\\x41\"\r\nGET inline\r\nQUIT\r\n").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&out), "+OK\r\n$4\r\na bA\r\n+OK\r\n");
}

/// The node leading the range that holds Redis key `key`, from node `i`'s view.
async fn redis_key_leader(cl: &Cluster, i: usize, key: &[u8]) -> Option<u64> {
    redis_key_range(cl, i, key).await.map(|(_, leader)| leader)
}

/// RESP clients write through the two other nodes while the leader of their
/// keys' range is killed (SIGKILL) and later restarted: every acknowledged
/// INCR is counted in the final value, and every acknowledged SET reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_redis_writes_survive_killing_the_leader() {
    let _g = serial().await;
    let mut cl = Cluster::start_redis(3, &[]).await;
    // `{v}` keeps every key in one slot, so one range and one leader hold them all.
    let leader = loop {
        if let Some(l) = redis_key_leader(&cl, 0, b"{v}count").await {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let victim = cl.index_of(leader);
    let survivors: Vec<String> = (0..3).filter(|i| *i != victim).map(|i| cl.redis(i)).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..6 {
        let addr = survivors[w % 2].clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut c = connect(&addr).await;
            let (mut acked_incrs, mut attempted_incrs, mut acked_sets) = (0i64, 0i64, Vec::new());
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                attempted_incrs += 1;
                if q::<i64>(&mut c, &["INCR", "{v}count"]).await.is_ok() {
                    acked_incrs += 1;
                }
                let key = format!("{{v}}w{w}-{n}");
                if q::<String>(&mut c, &["SET", &key, &n.to_string()]).await.is_ok() {
                    acked_sets.push((key, n));
                }
            }
            (acked_incrs, attempted_incrs, acked_sets)
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    cl.kill(victim);
    tokio::time::sleep(Duration::from_secs(6)).await;
    cl.restart(victim);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut acked, mut attempted, mut sets) = (0, 0, Vec::new());
    for w in workers {
        let (a, t, s) = w.await.unwrap();
        acked += a;
        attempted += t;
        sets.extend(s);
    }
    assert!(acked > 50 && sets.len() > 50, "too little got through: {acked} INCRs, {} SETs", sets.len());
    let mut c = connect(&cl.redis(victim)).await;
    let count: i64 = q(&mut c, &["GET", "{v}count"]).await.unwrap();
    assert!(count >= acked, "acknowledged INCRs lost: the counter is {count}, {acked} were acknowledged");
    assert!(count <= attempted, "the counter {count} is above the {attempted} INCRs attempted");
    for chunk in sets.chunks(500) {
        let keys: Vec<&str> = chunk.iter().map(|(k, _)| k.as_str()).collect();
        let mut args = vec!["MGET"];
        args.extend(keys);
        let values: Vec<Option<String>> = q(&mut c, &args).await.unwrap();
        for ((key, n), v) in chunk.iter().zip(values) {
            assert_eq!(v, Some(n.to_string()), "acknowledged SET {key} lost");
        }
    }
}

/// Within `tolerance_ms` of `expected_ms`.
fn near(actual: i64, expected_ms: i64, tolerance_ms: i64) -> bool {
    (actual - expected_ms).abs() <= tolerance_ms
}

/// Key expiry as Redis clients use it, through different nodes: SET's expiry
/// options, SETEX/PSETEX/GETEX, the EXPIRE family with NX/XX/GT/LT, TTL and
/// friends, PERSIST; which commands keep an expiry and which clear it; a key
/// that expired is absent to reads and to conditional writes alike, also after
/// its range's leadership moved; and the native API sees the same expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_expire_on_time_through_every_node_and_across_a_leader_change() {
    let _g = serial().await;
    let cl = Cluster::start_redis(3, &[]).await;
    let mut a = connect(&cl.redis(0)).await;
    let mut b = connect(&cl.redis(2)).await;
    let now_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;

    // Expiry options of SET, read back through another node.
    assert_eq!(q::<String>(&mut a, &["SET", "s", "v", "EX", "100"]).await.unwrap(), "OK");
    assert!(near(q::<i64>(&mut b, &["TTL", "s"]).await.unwrap(), 100, 1));
    assert!(near(q::<i64>(&mut b, &["PTTL", "s"]).await.unwrap(), 100_000, 1_000));
    assert!(near(q::<i64>(&mut b, &["PEXPIRETIME", "s"]).await.unwrap(), now_ms() + 100_000, 1_000));
    assert!(near(q::<i64>(&mut b, &["EXPIRETIME", "s"]).await.unwrap(), now_ms() / 1000 + 100, 1));
    q::<String>(&mut a, &["SET", "s", "v", "KEEPTTL"]).await.unwrap();
    assert!(near(q::<i64>(&mut b, &["TTL", "s"]).await.unwrap(), 100, 1), "KEEPTTL keeps it");
    q::<i64>(&mut a, &["APPEND", "s", "w"]).await.unwrap();
    q::<i64>(&mut a, &["SETRANGE", "s", "0", "V"]).await.unwrap();
    assert!(near(q::<i64>(&mut b, &["TTL", "s"]).await.unwrap(), 100, 1), "APPEND and SETRANGE keep it");
    q::<String>(&mut a, &["SET", "s", "plain"]).await.unwrap();
    assert_eq!(q::<i64>(&mut b, &["TTL", "s"]).await.unwrap(), -1, "a plain SET clears it");
    let at = (now_ms() + 50_000).to_string();
    q::<String>(&mut a, &["SET", "s", "v", "PXAT", &at]).await.unwrap();
    assert_eq!(q::<i64>(&mut b, &["PEXPIRETIME", "s"]).await.unwrap().to_string(), at);
    q::<Option<String>>(&mut a, &["GETSET", "s", "v2"]).await.unwrap();
    assert_eq!(q::<i64>(&mut b, &["TTL", "s"]).await.unwrap(), -1, "GETSET clears it");
    assert_eq!(q::<i64>(&mut b, &["TTL", "nokey"]).await.unwrap(), -2);
    assert_eq!(q::<i64>(&mut b, &["EXPIRETIME", "nokey"]).await.unwrap(), -2);

    // Counters keep theirs.
    q::<String>(&mut a, &["SET", "n", "1", "PX", "60000"]).await.unwrap();
    assert_eq!(q::<i64>(&mut a, &["INCRBY", "n", "5"]).await.unwrap(), 6);
    assert_eq!(q::<String>(&mut a, &["INCRBYFLOAT", "n", "0.5"]).await.unwrap(), "6.5");
    assert!(near(q::<i64>(&mut b, &["PTTL", "n"]).await.unwrap(), 60_000, 1_000), "counters keep it");

    // SETEX, PSETEX, GETEX.
    assert_eq!(q::<String>(&mut a, &["SETEX", "e", "30", "x"]).await.unwrap(), "OK");
    assert!(near(q::<i64>(&mut b, &["TTL", "e"]).await.unwrap(), 30, 1));
    assert_eq!(q::<String>(&mut a, &["PSETEX", "e", "20000", "y"]).await.unwrap(), "OK");
    assert!(near(q::<i64>(&mut b, &["PTTL", "e"]).await.unwrap(), 20_000, 1_000));
    assert!(err(&mut a, &["SETEX", "e", "0", "x"]).await.contains("invalid expire time in 'setex' command"));
    assert!(err(&mut a, &["SET", "e", "x", "PX", "-5"]).await.contains("invalid expire time in 'set' command"));
    assert!(err(&mut a, &["SET", "e", "x", "EX", "10", "PX", "10"]).await.contains("syntax error"));
    assert_eq!(q::<Option<String>>(&mut a, &["GETEX", "e", "EX", "500"]).await.unwrap().as_deref(), Some("y"));
    assert!(near(q::<i64>(&mut b, &["TTL", "e"]).await.unwrap(), 500, 1));
    assert_eq!(q::<Option<String>>(&mut a, &["GETEX", "e", "PERSIST"]).await.unwrap().as_deref(), Some("y"));
    assert_eq!(q::<i64>(&mut b, &["TTL", "e"]).await.unwrap(), -1);
    assert_eq!(q::<Option<String>>(&mut a, &["GETEX", "nokey", "EX", "5"]).await.unwrap(), None);
    assert!(err(&mut a, &["GETEX", "e", "EX", "0"]).await.contains("invalid expire time in 'getex' command"));

    // The EXPIRE family and its conditions.
    assert_eq!(q::<i64>(&mut a, &["EXPIRE", "nokey", "10"]).await.unwrap(), 0);
    assert_eq!(q::<i64>(&mut a, &["EXPIRE", "e", "100", "XX"]).await.unwrap(), 0, "XX: it has none");
    assert_eq!(q::<i64>(&mut a, &["EXPIRE", "e", "100", "GT"]).await.unwrap(), 0, "GT: none is never");
    assert_eq!(q::<i64>(&mut a, &["EXPIRE", "e", "100", "NX"]).await.unwrap(), 1);
    assert_eq!(q::<i64>(&mut a, &["EXPIRE", "e", "200", "NX"]).await.unwrap(), 0);
    assert_eq!(q::<i64>(&mut a, &["EXPIRE", "e", "50", "GT"]).await.unwrap(), 0);
    assert_eq!(q::<i64>(&mut a, &["EXPIRE", "e", "200", "GT"]).await.unwrap(), 1);
    assert_eq!(q::<i64>(&mut a, &["PEXPIRE", "e", "90000", "LT"]).await.unwrap(), 1);
    assert!(near(q::<i64>(&mut b, &["TTL", "e"]).await.unwrap(), 90, 1));
    assert!(err(&mut a, &["EXPIRE", "e", "1", "NX", "XX"]).await.contains("not compatible"));
    assert!(err(&mut a, &["EXPIRE", "e", "1", "GT", "LT"]).await.contains("not compatible"));
    assert!(err(&mut a, &["EXPIRE", "e", "1", "SOON"]).await.contains("Unsupported option SOON"));
    assert!(err(&mut a, &["EXPIRE", "e", "ten"]).await.contains("not an integer"));
    assert_eq!(q::<i64>(&mut a, &["PERSIST", "e"]).await.unwrap(), 1);
    assert_eq!(q::<i64>(&mut a, &["PERSIST", "e"]).await.unwrap(), 0);
    assert_eq!(q::<i64>(&mut b, &["TTL", "e"]).await.unwrap(), -1);
    // An instant already past deletes the key, as in Redis.
    assert_eq!(q::<i64>(&mut a, &["EXPIREAT", "e", "1"]).await.unwrap(), 1);
    assert_eq!(q::<i64>(&mut b, &["EXISTS", "e"]).await.unwrap(), 0);
    q::<String>(&mut a, &["SET", "e", "x"]).await.unwrap();
    assert_eq!(q::<i64>(&mut a, &["PEXPIRE", "e", "-1"]).await.unwrap(), 1);
    assert_eq!(q::<Option<String>>(&mut b, &["GET", "e"]).await.unwrap(), None);

    // Keys expire: absent to every read and to conditional writes, through any node.
    q::<String>(&mut a, &["SET", "brief", "v", "PX", "400"]).await.unwrap();
    q::<String>(&mut a, &["SET", "ctr", "41", "PX", "400"]).await.unwrap();
    q::<String>(&mut a, &["MSET", "m1", "1", "m2", "2"]).await.unwrap();
    q::<i64>(&mut a, &["PEXPIRE", "m1", "400"]).await.unwrap();
    assert_eq!(q::<Option<String>>(&mut b, &["GET", "brief"]).await.unwrap().as_deref(), Some("v"));
    tokio::time::sleep(Duration::from_millis(700)).await;
    for c in [&mut a, &mut b] {
        assert_eq!(q::<Option<String>>(c, &["GET", "brief"]).await.unwrap(), None);
        assert_eq!(q::<i64>(c, &["EXISTS", "brief", "m1", "m2"]).await.unwrap(), 1);
        assert_eq!(q::<i64>(c, &["TTL", "brief"]).await.unwrap(), -2);
        assert_eq!(q::<String>(c, &["TYPE", "brief"]).await.unwrap(), "none");
        let got: Vec<Option<String>> = q(c, &["MGET", "brief", "m1", "m2"]).await.unwrap();
        assert_eq!(got, vec![None, None, Some("2".into())]);
    }
    assert_eq!(q::<i64>(&mut a, &["SETNX", "brief", "again"]).await.unwrap(), 1, "an expired key is absent to NX");
    assert_eq!(q::<i64>(&mut b, &["TTL", "brief"]).await.unwrap(), -1);
    assert_eq!(q::<i64>(&mut b, &["INCR", "ctr"]).await.unwrap(), 1, "an expired counter starts again");
    assert_eq!(q::<i64>(&mut b, &["TTL", "ctr"]).await.unwrap(), -1);

    // Leadership moves: the expiry went with the value, and still ends it on time. The
    // range and its next leader are found first, so that only the set, the transfer and
    // the checks run inside the key's 3 seconds.
    let (range_id, leader) = redis_key_range(&cl, 0, b"{lease}holder").await.expect("the key's range");
    let target = cl.node_id((cl.index_of(leader) + 1) % 3);
    let mut native = cl.client(0).await;
    q::<String>(&mut a, &["SET", "{lease}holder", "me", "PX", "3000"]).await.unwrap();
    let set_at = std::time::Instant::now();
    native
        .transfer_leader(cairn_proto::kv::TransferLeaderRequest { range_id, node_id: target })
        .await
        .expect("transfer the lease's range");
    let nx = q::<Option<String>>(&mut b, &["SET", "{lease}holder", "you", "NX"]).await;
    let pttl = q::<i64>(&mut b, &["PTTL", "{lease}holder"]).await;
    let checked_after = set_at.elapsed();
    assert!(checked_after < Duration::from_millis(2_500), "the checks took {checked_after:?} of the key's 3 s");
    assert!(matches!(nx, Ok(None)), "still held after {checked_after:?}: SET NX answered {nx:?}");
    assert!(matches!(pttl, Ok(t) if t > 0), "still held after {checked_after:?}: PTTL {pttl:?}");
    tokio::time::sleep(Duration::from_millis(3_300)).await;
    assert_eq!(
        q::<Option<String>>(&mut b, &["SET", "{lease}holder", "you", "NX"]).await.unwrap().as_deref(),
        Some("OK")
    );

    // The native API reads the expiry of a Redis key, and writes one Redis clients see.
    q::<String>(&mut a, &["SET", "shared", "v", "EX", "100"]).await.unwrap();
    let got = native
        .get(cairn_proto::kv::GetRequest { table: "redis".into(), key: b"shared".to_vec(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(near(got.expires_at_ms as i64, now_ms() + 100_000, 1_000), "native get: {got:?}");
    native
        .put(cairn_proto::kv::PutRequest {
            table: "redis".into(),
            key: b"native".to_vec(),
            value: b"n".to_vec(),
            ttl_ms: 400,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(near(q::<i64>(&mut b, &["PTTL", "native"]).await.unwrap(), 400, 300));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(q::<Option<String>>(&mut b, &["GET", "native"]).await.unwrap(), None);
}

/// MULTI/EXEC as clients use it (the redis crate's atomic pipeline sends
/// MULTI … EXEC), the errors Redis gives, WATCH aborting on a change made
/// through another node, and atomicity under concurrency: transactions that
/// move units between two keys never let a reader see the sum change, and
/// WATCH-based increments lose no update.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_apply_atomically_and_watch_aborts_on_change() {
    let _g = serial().await;
    let cl = Cluster::start_redis(3, &[]).await;
    let mut a = connect(&cl.redis(0)).await;
    let mut b = connect(&cl.redis(1)).await;

    // An atomic pipeline: replies of the queued commands, in order.
    let (set, incr, got): (String, i64, Vec<Option<String>>) = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("{t}x")
        .arg("10")
        .cmd("INCRBY")
        .arg("{t}x")
        .arg(5)
        .cmd("MGET")
        .arg("{t}x")
        .arg("{t}y")
        .query_async(&mut a)
        .await
        .expect("atomic pipeline");
    assert_eq!((set.as_str(), incr, got), ("OK", 15, vec![Some("15".to_string()), None]));
    // A run-time error answers in place; the rest applies.
    let wire =
        raw_exchange(&cl.redis(0), b"MULTI\r\nSET {t}s text\r\nINCR {t}s\r\nSET {t}after 1\r\nEXEC\r\nQUIT\r\n").await;
    assert_eq!(
        wire,
        "+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n+OK\r\n-ERR value is not an integer or out of range\r\n+OK\r\n+OK\r\n"
    );
    assert_eq!(q::<Option<String>>(&mut b, &["GET", "{t}after"]).await.unwrap().as_deref(), Some("1"));

    // The errors clients expect.
    assert!(err(&mut a, &["EXEC"]).await.contains("EXEC without MULTI"));
    assert!(err(&mut a, &["DISCARD"]).await.contains("DISCARD without MULTI"));
    let mut raw = connect(&cl.redis(2)).await;
    assert_eq!(q::<String>(&mut raw, &["MULTI"]).await.unwrap(), "OK");
    assert!(err(&mut raw, &["MULTI"]).await.contains("can not be nested"));
    assert!(err(&mut raw, &["WATCH", "k"]).await.contains("WATCH inside MULTI"));
    assert_eq!(q::<String>(&mut raw, &["SET", "{t}q", "1"]).await.unwrap(), "QUEUED");
    assert!(err(&mut raw, &["NOSUCHCOMMAND"]).await.contains("unknown command"));
    assert!(err(&mut raw, &["EXEC"]).await.starts_with("EXECABORT"));
    assert_eq!(q::<i64>(&mut b, &["EXISTS", "{t}q"]).await.unwrap(), 0, "an aborted transaction wrote nothing");
    q::<String>(&mut raw, &["MULTI"]).await.unwrap();
    q::<String>(&mut raw, &["SET", "{t}q", "1"]).await.unwrap();
    assert_eq!(q::<String>(&mut raw, &["DISCARD"]).await.unwrap(), "OK");
    assert_eq!(q::<i64>(&mut b, &["EXISTS", "{t}q"]).await.unwrap(), 0, "a discarded transaction wrote nothing");
    q::<String>(&mut raw, &["MULTI"]).await.unwrap();
    q::<String>(&mut raw, &["SET", "one", "1"]).await.unwrap();
    q::<String>(&mut raw, &["SET", "two", "2"]).await.unwrap();
    assert!(err(&mut raw, &["EXEC"]).await.starts_with("CROSSSLOT"));
    assert_eq!(q::<i64>(&mut b, &["EXISTS", "one", "two"]).await.unwrap(), 0);
    let empty: Vec<Value> = redis::pipe().atomic().query_async(&mut raw).await.unwrap();
    assert!(empty.is_empty());

    // WATCH: a change through another node aborts EXEC (nil); an unchanged key lets it through.
    q::<String>(&mut a, &["WATCH", "{t}x"]).await.unwrap();
    q::<String>(&mut b, &["SET", "{t}x", "changed"]).await.unwrap();
    q::<String>(&mut a, &["MULTI"]).await.unwrap();
    q::<String>(&mut a, &["SET", "{t}x", "mine"]).await.unwrap();
    assert_eq!(q::<Value>(&mut a, &["EXEC"]).await.unwrap(), Value::Nil, "aborted");
    assert_eq!(q::<String>(&mut b, &["GET", "{t}x"]).await.unwrap(), "changed");
    q::<String>(&mut a, &["WATCH", "{t}x"]).await.unwrap();
    q::<String>(&mut a, &["MULTI"]).await.unwrap();
    q::<String>(&mut a, &["SET", "{t}x", "mine"]).await.unwrap();
    assert_eq!(q::<Vec<String>>(&mut a, &["EXEC"]).await.unwrap(), vec!["OK"]);
    assert_eq!(q::<String>(&mut b, &["GET", "{t}x"]).await.unwrap(), "mine");
    // A watched key that expires in between aborts too, as in Redis.
    q::<String>(&mut a, &["SET", "{t}lease", "1", "PX", "200"]).await.unwrap();
    q::<String>(&mut a, &["WATCH", "{t}lease"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    q::<String>(&mut a, &["MULTI"]).await.unwrap();
    q::<String>(&mut a, &["SET", "{t}lease", "2"]).await.unwrap();
    assert_eq!(q::<Value>(&mut a, &["EXEC"]).await.unwrap(), Value::Nil);

    // Concurrency: 6 clients on all three nodes move units between {m}a and {m}b
    // and increment {m}n with WATCH (check-and-set), while readers check the sum.
    q::<String>(&mut a, &["MSET", "{m}a", "1000", "{m}b", "1000", "{m}n", "0"]).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut movers = Vec::new();
    for w in 0..6 {
        let addr = cl.redis(w % 3);
        movers.push(tokio::spawn(async move {
            let mut c = connect(&addr).await;
            let (mut moved, mut cas_ok) = (0, 0);
            for i in 0..40 {
                let (from, to) = if (w + i) % 2 == 0 { ("{m}a", "{m}b") } else { ("{m}b", "{m}a") };
                let r: RedisResult<(i64, i64)> = redis::pipe()
                    .atomic()
                    .cmd("DECRBY")
                    .arg(from)
                    .arg(3)
                    .cmd("INCRBY")
                    .arg(to)
                    .arg(3)
                    .query_async(&mut c)
                    .await;
                moved += r.is_ok() as i64;
                q::<String>(&mut c, &["WATCH", "{m}n"]).await.unwrap();
                let n: i64 = q::<String>(&mut c, &["GET", "{m}n"]).await.unwrap().parse().unwrap();
                q::<String>(&mut c, &["MULTI"]).await.unwrap();
                q::<String>(&mut c, &["SET", "{m}n", &(n + 1).to_string()]).await.unwrap();
                if let Ok(Value::Array(_)) = q::<Value>(&mut c, &["EXEC"]).await {
                    cas_ok += 1;
                }
            }
            (moved, cas_ok)
        }));
    }
    let reader = {
        let (addr, stop) = (cl.redis(2), stop.clone());
        tokio::spawn(async move {
            let mut c = connect(&addr).await;
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (x, y): (i64, i64) = redis::pipe()
                    .atomic()
                    .cmd("GET")
                    .arg("{m}a")
                    .cmd("GET")
                    .arg("{m}b")
                    .query_async(&mut c)
                    .await
                    .unwrap();
                assert_eq!(x + y, 2000, "a transaction was seen half applied: {x} + {y}");
                let both: Vec<i64> = q(&mut c, &["MGET", "{m}a", "{m}b"]).await.unwrap();
                assert_eq!(both.iter().sum::<i64>(), 2000, "MGET saw a transaction half applied: {both:?}");
                reads += 1;
            }
            reads
        })
    };
    let mut cas_total = 0;
    for m in movers {
        let (moved, cas_ok) = m.await.unwrap();
        assert_eq!(moved, 40, "every transfer applied (retried internally on conflicts)");
        cas_total += cas_ok;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.await.unwrap() > 0);
    let n: i64 = q::<String>(&mut a, &["GET", "{m}n"]).await.unwrap().parse().unwrap();
    assert_eq!(n, cas_total, "a WATCHed increment was lost or applied twice");
    assert!(cas_total > 0);
}

/// Lua scripting through the redis crate's `Script` (EVALSHA, falling back to
/// EVAL on NOSCRIPT, as real clients do), on every node: KEYS/ARGV, reply
/// conversions, the script cache, errors and limits, and atomicity: claims
/// racing from eight clients on three nodes never oversell.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lua_scripts_run_atomically_with_redis_semantics() {
    let _g = serial().await;
    let cl = Cluster::start_redis(3, &[]).await;
    let mut a = connect(&cl.redis(0)).await;
    let mut b = connect(&cl.redis(1)).await;

    let claim = redis::Script::new(
        r#"
        local left = tonumber(redis.call('GET', KEYS[1]) or '0')
        if left <= 0 then return 0 end
        redis.call('DECR', KEYS[1])
        redis.call('INCR', KEYS[2])
        redis.call('SET', KEYS[3], ARGV[1])
        return 1
        "#,
    );
    q::<String>(&mut a, &["MSET", "{v}stock", "3", "{v}granted", "0"]).await.unwrap();
    for (i, c) in [&mut a, &mut b].into_iter().enumerate() {
        let got: i64 = claim
            .key("{v}stock")
            .key("{v}granted")
            .key(format!("{{v}}claim:{i}"))
            .arg(format!("user{i}"))
            .invoke_async(c)
            .await
            .unwrap();
        assert_eq!(got, 1);
    }
    assert_eq!(q::<String>(&mut b, &["GET", "{v}claim:0"]).await.unwrap(), "user0");
    assert_eq!(
        q::<i64>(&mut b, &["SCRIPT", "EXISTS", claim.get_hash(), "ffffffffffffffffffffffffffffffffffffffff"])
            .await
            .ok(),
        None,
        "an array, not an integer"
    );
    let exists: Vec<i64> =
        q(&mut b, &["SCRIPT", "EXISTS", claim.get_hash(), "ffffffffffffffffffffffffffffffffffffffff"]).await.unwrap();
    assert_eq!(exists, vec![1, 0]);
    let sha: String = q(&mut a, &["SCRIPT", "LOAD", "return {1, 'two', 3.7, true, false, redis.status_reply('FINE')}"])
        .await
        .unwrap();
    let converted: Value = q(&mut a, &["EVALSHA", &sha, "0"]).await.unwrap();
    assert_eq!(
        converted,
        Value::Array(vec![
            Value::Int(1),
            Value::BulkString(b"two".to_vec()),
            Value::Int(3),
            Value::Int(1),
            Value::Nil,
            Value::SimpleString("FINE".into()),
        ])
    );
    assert!(err(&mut b, &["EVALSHA", &sha, "0"]).await.starts_with("NOSCRIPT"), "each node has its own cache");
    q::<String>(&mut a, &["SCRIPT", "FLUSH"]).await.unwrap();
    assert!(err(&mut a, &["EVALSHA", &sha, "0"]).await.starts_with("NOSCRIPT"));

    // Errors: a command's error passes through, and nothing the script did is kept.
    let failing = "redis.call('SET', KEYS[1], 'partial'); return redis.call('INCR', KEYS[2])";
    q::<String>(&mut a, &["SET", "{e}text", "abc"]).await.unwrap();
    assert_eq!(
        err(&mut a, &["EVAL", failing, "2", "{e}a", "{e}text"]).await,
        "ERR value is not an integer or out of range"
    );
    assert_eq!(q::<i64>(&mut b, &["EXISTS", "{e}a"]).await.unwrap(), 0, "a failed script wrote nothing");
    assert!(err(&mut a, &["EVAL", "return 1", "2", "one", "two"]).await.starts_with("CROSSSLOT"));
    assert!(err(&mut a, &["EVAL", "return redis.call('GET', 'undeclared')", "0"]).await.contains("did not declare"));
    assert!(err(&mut a, &["EVAL", "return 1", "5", "k"]).await.contains("greater than number of args"));
    assert!(err(&mut a, &["EVAL", "return (", "0"]).await.contains("Error compiling script"));
    assert!(err(&mut a, &["EVAL_RO", "return redis.call('SET', KEYS[1], 'x')", "1", "{e}ro"])
        .await
        .contains("read-only"));
    assert_eq!(q::<i64>(&mut b, &["EXISTS", "{e}ro"]).await.unwrap(), 0);
    assert_eq!(
        q::<String>(&mut a, &["EVAL", "return redis.error_reply('MYERR custom failure')", "0"])
            .await
            .err()
            .and_then(|e| e.code().map(str::to_string))
            .as_deref(),
        Some("MYERR")
    );
    // A runaway script is stopped; the node goes on serving.
    let patient = redis::Client::open(format!("redis://{}/", cl.redis(0))).expect("redis url");
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    let mut patient = patient.get_multiplexed_async_connection_with_config(&config).await.expect("connect");
    let stopped = match q::<Value>(&mut patient, &["EVAL", "while true do end", "0"]).await {
        Ok(v) => panic!("a runaway script answered {v:?}"),
        Err(e) => format!("{e:?}"),
    };
    assert!(stopped.contains("script stopped"), "{stopped}");
    assert_eq!(q::<String>(&mut a, &["PING"]).await.unwrap(), "PONG");

    // No oversell: 8 clients on 3 nodes claim 20 times each from a stock of 50.
    q::<String>(&mut a, &["MSET", "{q}stock", "50", "{q}granted", "0"]).await.unwrap();
    let mut claimers = Vec::new();
    for w in 0..8 {
        let addr = cl.redis(w % 3);
        claimers.push(tokio::spawn(async move {
            let mut c = connect(&addr).await;
            let claim = redis::Script::new(
                "local left = tonumber(redis.call('GET', KEYS[1])) \
                 if left <= 0 then return 0 end \
                 redis.call('DECR', KEYS[1]) redis.call('INCR', KEYS[2]) return 1",
            );
            let mut won = 0i64;
            for _ in 0..20 {
                won += claim.key("{q}stock").key("{q}granted").invoke_async::<i64>(&mut c).await.expect("claim");
            }
            won
        }));
    }
    let mut won = 0;
    for c in claimers {
        won += c.await.unwrap();
    }
    let left: i64 = q::<String>(&mut a, &["GET", "{q}stock"]).await.unwrap().parse().unwrap();
    let granted: i64 = q::<String>(&mut a, &["GET", "{q}granted"]).await.unwrap().parse().unwrap();
    assert_eq!((won, left, granted), (50, 0, 50), "claims granted, stock left, claims recorded");

    // Scripts on one slot run in batches that share a read and a write.
    let r = script_batch::run(&cl.redis(0), &cl.redis(1)).await;
    assert!(r.leaks.is_empty(), "a batch-mate's key was in reach: {:?}", r.leaks);
    assert_eq!((r.succeeded, r.failed), (300, 100), "scripts answered, and refused as not an integer");
    assert_eq!(r.count, 300, "exactly the increments of the scripts that succeeded");
    assert_eq!(r.scripts, 800, "every script went through a batch");
    assert!(
        r.batches * 4 <= r.scripts,
        "scripts did not share batches: {} scripts in {} batches",
        r.scripts,
        r.batches
    );
}

/// Cluster mode: CLUSTER SLOTS/SHARDS/NODES/INFO describe the slots' leaders, a
/// node that does not lead a key's slot answers MOVED to the one that does, and
/// the `redis` crate's cluster client keeps working through a split of the
/// keyspace and a leader change.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_client_follows_slots_through_a_split_and_a_leader_change() {
    let _g = serial().await;
    let cl = Cluster::start_redis(3, &["--redis-cluster-mode"]).await;
    let mut plain = connect(&cl.redis(0)).await;
    let slots: Vec<Value> = q(&mut plain, &["CLUSTER", "SLOTS"]).await.unwrap();
    let mut covered = 0i64;
    for entry in &slots {
        let Value::Array(e) = entry else { panic!("slot entry {entry:?}") };
        let (Value::Int(first), Value::Int(last)) = (&e[0], &e[1]) else { panic!("slot span {e:?}") };
        covered += last - first + 1;
        assert!(e.len() >= 3, "a master for {first}-{last}: {e:?}");
    }
    assert_eq!(covered, 16384, "CLUSTER SLOTS covers every slot: {slots:?}");
    let info: String = q(&mut plain, &["CLUSTER", "INFO"]).await.unwrap();
    assert!(info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3"), "{info}");
    let nodes: String = q(&mut plain, &["CLUSTER", "NODES"]).await.unwrap();
    assert_eq!(nodes.lines().count(), 3, "{nodes}");
    assert!(nodes.contains("myself,master"), "{nodes}");
    let shards: Value = q(&mut plain, &["CLUSTER", "SHARDS"]).await.unwrap();
    assert!(matches!(&shards, Value::Array(s) if !s.is_empty()), "{shards:?}");
    assert_eq!(q::<String>(&mut plain, &["CONFIG", "GET", "cluster-enabled"]).await.ok(), None, "a map, not a string");

    // MOVED from a node that does not lead the key's range, to the one that does.
    let (_, leader) = redis_key_range(&cl, 0, b"probe").await.expect("the key's range");
    let other = (cl.index_of(leader) + 1) % 3;
    let mut elsewhere = connect(&cl.redis(other)).await;
    let moved = err(&mut elsewhere, &["GET", "probe"]).await;
    let slot: i64 = q(&mut plain, &["CLUSTER", "KEYSLOT", "probe"]).await.unwrap();
    assert_eq!(moved, format!("MOVED {slot} {}", cl.redis(cl.index_of(leader))));
    assert!(err(&mut elsewhere, &["MGET", "a", "b"]).await.starts_with("CROSSSLOT"));

    // A cluster-aware client.
    let urls: Vec<String> = (0..3).map(|i| format!("redis://{}/", cl.redis(i))).collect();
    let client = redis::cluster::ClusterClient::builder(urls)
        .response_timeout(RESPONSE_TIMEOUT)
        .retries(32)
        .build()
        .expect("cluster client");
    let mut c = client.get_async_connection().await.expect("cluster connection");
    let write_and_check = |c: &mut redis::cluster_async::ClusterConnection, from: usize, to: usize| {
        let mut c = c.clone();
        async move {
            for i in from..to {
                let _: () = redis::cmd("SET").arg(format!("key{i}")).arg(i).query_async(&mut c).await.expect("SET");
            }
            for i in 0..to {
                let v: Option<i64> = redis::cmd("GET").arg(format!("key{i}")).query_async(&mut c).await.expect("GET");
                assert_eq!(v, Some(i as i64), "key{i}");
            }
        }
    };
    write_and_check(&mut c, 0, 200).await;

    // Split one of the keyspace's ranges and move a leader; the client follows.
    let mut admin = cl.client(0).await;
    admin
        .split_range(cairn_proto::kv::SplitRangeRequest { table: "redis".into(), key: b"key7".to_vec() })
        .await
        .expect("split the keyspace");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (range_id, leader) = loop {
        if let Some(found) = redis_key_range(&cl, 0, b"key7").await {
            break found;
        }
        assert!(std::time::Instant::now() < deadline, "key7's new range has no leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let target = cl.node_id((cl.index_of(leader) + 1) % 3);
    admin
        .transfer_leader(cairn_proto::kv::TransferLeaderRequest { range_id, node_id: target })
        .await
        .expect("move key7's leader");
    write_and_check(&mut c, 200, 400).await;
    let after: Vec<Value> = q(&mut plain, &["CLUSTER", "SLOTS"]).await.unwrap();
    assert!(after.len() > slots.len(), "the split shows in CLUSTER SLOTS: {} then {}", slots.len(), after.len());
}

/// SCAN (MATCH, COUNT, TYPE) visits every key present for the whole scan at
/// least once, also while a split and a leader change happen between calls;
/// KEYS and RANDOMKEY see the same keyspace; expired keys are not listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scan_keys_and_randomkey_walk_the_keyspace_across_a_split() {
    let _g = serial().await;
    let cl = Cluster::start_redis(3, &[]).await;
    let mut a = connect(&cl.redis(0)).await;
    let mut b = connect(&cl.redis(1)).await;
    assert_eq!(q::<Option<String>>(&mut a, &["RANDOMKEY"]).await.unwrap(), None, "an empty keyspace");
    let mut args = vec!["MSET".to_string()];
    for i in 0..500 {
        args.push(format!("user:{i}"));
        args.push(i.to_string());
    }
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    q::<String>(&mut a, &args_ref).await.unwrap();
    q::<String>(&mut a, &["SET", "other", "x"]).await.unwrap();
    q::<String>(&mut a, &["SET", "gone", "x", "PX", "50"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut seen = std::collections::BTreeSet::new();
    let mut cursor = "0".to_string();
    let mut calls = 0;
    loop {
        let (next, keys): (String, Vec<String>) =
            q(&mut b, &["SCAN", &cursor, "MATCH", "user:*", "COUNT", "50"]).await.unwrap();
        assert!(keys.iter().all(|k| k.starts_with("user:")), "MATCH: {keys:?}");
        seen.extend(keys);
        calls += 1;
        if calls == 3 {
            // A split and a leader change between two calls keep the cursor valid.
            let mut admin = cl.client(0).await;
            admin
                .split_range(cairn_proto::kv::SplitRangeRequest { table: "redis".into(), key: b"user:250".to_vec() })
                .await
                .expect("split");
            let (range_id, leader) = redis_key_range(&cl, 0, b"user:250").await.unwrap_or((0, 0));
            if range_id != 0 {
                let target = cl.node_id((cl.index_of(leader) + 1) % 3);
                let _ =
                    admin.transfer_leader(cairn_proto::kv::TransferLeaderRequest { range_id, node_id: target }).await;
            }
        }
        if next == "0" {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen.len(), 500, "every user key, once or more");
    assert!(calls > 5, "COUNT 50 over 500 keys takes several calls, not {calls}");
    let (_, typed): (String, Vec<String>) = q(&mut b, &["SCAN", "0", "TYPE", "hash", "COUNT", "1000"]).await.unwrap();
    assert!(typed.is_empty(), "no hashes: {typed:?}");
    assert!(err(&mut b, &["SCAN", "99999"]).await.contains("invalid cursor"));
    assert!(err(&mut b, &["SCAN", "0", "COUNT", "0"]).await.contains("syntax error"));
    let mut all: Vec<String> = q(&mut a, &["KEYS", "*"]).await.unwrap();
    all.sort();
    assert_eq!(all.len(), 501, "500 users and 'other'; the expired key is not listed");
    let some: Vec<String> = q(&mut a, &["KEYS", "user:1?"]).await.unwrap();
    assert_eq!(some.len(), 10);
    let random: String = q(&mut a, &["RANDOMKEY"]).await.unwrap();
    assert!(all.contains(&random), "{random}");
    assert_eq!(q::<i64>(&mut a, &["DBSIZE"]).await.unwrap(), 501);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hashes_and_rename_answer_as_redis_does_and_keep_types_apart() {
    use std::collections::HashMap;
    let _g = serial().await;
    let cl = Cluster::start_redis(3, &[]).await;
    let mut a = connect(&cl.redis(0)).await;
    let mut b = connect(&cl.redis(2)).await;

    // The hash commands, through two nodes.
    assert_eq!(q::<i64>(&mut a, &["HSET", "user:1", "name", "alice", "age", "30"]).await.unwrap(), 2);
    assert_eq!(q::<i64>(&mut a, &["HSET", "user:1", "name", "alicia", "city", "Oslo"]).await.unwrap(), 1);
    assert_eq!(q::<Option<String>>(&mut b, &["HGET", "user:1", "name"]).await.unwrap().as_deref(), Some("alicia"));
    assert_eq!(q::<Option<String>>(&mut b, &["HGET", "user:1", "nope"]).await.unwrap(), None);
    assert_eq!(q::<Option<String>>(&mut b, &["HGET", "nobody", "name"]).await.unwrap(), None);
    let got: Vec<Option<String>> = q(&mut b, &["HMGET", "user:1", "age", "nope", "city"]).await.unwrap();
    assert_eq!(got, vec![Some("30".into()), None, Some("Oslo".into())]);
    let all: HashMap<String, String> = q(&mut b, &["HGETALL", "user:1"]).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all["city"], "Oslo");
    assert_eq!(q::<i64>(&mut b, &["HLEN", "user:1"]).await.unwrap(), 3);
    assert_eq!(q::<i64>(&mut b, &["HEXISTS", "user:1", "age"]).await.unwrap(), 1);
    assert_eq!(q::<i64>(&mut b, &["HSTRLEN", "user:1", "name"]).await.unwrap(), 6);
    let mut fields: Vec<String> = q(&mut b, &["HKEYS", "user:1"]).await.unwrap();
    fields.sort();
    assert_eq!(fields, vec!["age", "city", "name"]);
    assert_eq!(q::<Vec<String>>(&mut b, &["HVALS", "user:1"]).await.unwrap().len(), 3);
    assert_eq!(q::<i64>(&mut a, &["HINCRBY", "user:1", "age", "5"]).await.unwrap(), 35);
    assert_eq!(q::<String>(&mut a, &["HINCRBYFLOAT", "user:1", "score", "1.5"]).await.unwrap(), "1.5");
    assert_eq!(err(&mut a, &["HINCRBY", "user:1", "name", "1"]).await, "ERR hash value is not an integer");
    assert_eq!(err(&mut a, &["HINCRBYFLOAT", "user:1", "name", "1"]).await, "ERR hash value is not a float");
    assert_eq!(err(&mut a, &["HINCRBY", "user:1", "age", "x"]).await, "ERR value is not an integer or out of range");
    assert_eq!(q::<i64>(&mut a, &["HSETNX", "user:1", "name", "bob"]).await.unwrap(), 0);
    assert_eq!(q::<i64>(&mut a, &["HSETNX", "user:1", "nick", "al"]).await.unwrap(), 1);
    assert_eq!(q::<String>(&mut a, &["HMSET", "user:1", "x", "1", "y", "2"]).await.unwrap(), "OK");
    assert_eq!(q::<i64>(&mut a, &["HDEL", "user:1", "x", "y", "nope"]).await.unwrap(), 2);
    let (cursor, items): (String, Vec<String>) = q(&mut b, &["HSCAN", "user:1", "0", "MATCH", "n*"]).await.unwrap();
    assert_eq!((cursor.as_str(), items.len()), ("0", 4), "name and nick, each with its value: {items:?}");
    let picked: Vec<String> = q(&mut b, &["HRANDFIELD", "user:1", "2"]).await.unwrap();
    assert_eq!(picked.len(), 2);
    assert!(err(&mut a, &["HSET", "user:1", "lonely"]).await.contains("wrong number of arguments for 'hset'"));

    // Types are kept apart, on every path a string command can take.
    q::<String>(&mut a, &["SET", "plain", "text"]).await.unwrap();
    let wrong = "WRONGTYPE Operation against a key holding the wrong kind of value";
    assert_eq!(err(&mut b, &["GET", "user:1"]).await, wrong);
    assert_eq!(err(&mut b, &["INCR", "user:1"]).await, wrong, "judged where the range applies it");
    assert_eq!(err(&mut b, &["APPEND", "user:1", "x"]).await, wrong);
    assert_eq!(err(&mut b, &["STRLEN", "user:1"]).await, wrong);
    assert_eq!(err(&mut b, &["GETDEL", "user:1"]).await, wrong);
    assert_eq!(err(&mut b, &["SET", "user:1", "v", "GET"]).await, wrong);
    assert_eq!(err(&mut b, &["HSET", "plain", "f", "v"]).await, wrong);
    assert_eq!(err(&mut b, &["HGET", "plain", "f"]).await, wrong);
    let mixed: Vec<Option<String>> = q(&mut b, &["MGET", "user:1", "plain"]).await.unwrap();
    assert_eq!(mixed, vec![None, Some("text".into())], "MGET answers nil for a hash");
    // Pipelined, the GETs and INCRs share batches; each answers for itself.
    let piped = raw_exchange(&cl.redis(1), b"GET plain\r\nGET user:1\r\nINCR user:1\r\nINCR n\r\nQUIT\r\n").await;
    let want = format!("$4\r\ntext\r\n-{wrong}\r\n-{wrong}\r\n:1\r\n+OK\r\n");
    assert_eq!(piped, want);
    assert_eq!(q::<i64>(&mut b, &["GET", "n"]).await.unwrap(), 1, "the INCR pipelined after a refused one applied");
    assert_eq!(q::<String>(&mut b, &["TYPE", "user:1"]).await.unwrap(), "hash");
    assert_eq!(q::<String>(&mut b, &["TYPE", "plain"]).await.unwrap(), "string");
    let (_, hashes): (String, Vec<String>) = q(&mut b, &["SCAN", "0", "TYPE", "hash", "COUNT", "1000"]).await.unwrap();
    assert_eq!(hashes, vec!["user:1"]);
    let (_, strings): (String, Vec<String>) =
        q(&mut b, &["SCAN", "0", "TYPE", "string", "COUNT", "1000"]).await.unwrap();
    assert!(strings.contains(&"plain".to_string()) && !strings.contains(&"user:1".to_string()), "{strings:?}");
    let native = cl
        .client(1)
        .await
        .get(cairn_proto::kv::GetRequest { table: "redis".into(), key: b"user:1".to_vec(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(native.kind, cairn_proto::kv::ValueKind::RedisHash as i32, "the native API says what it reads");

    // Expiry: a hash keeps its TTL when its fields change; PERSIST clears it.
    assert_eq!(q::<i64>(&mut a, &["EXPIRE", "user:1", "100"]).await.unwrap(), 1);
    q::<i64>(&mut a, &["HSET", "user:1", "touched", "1"]).await.unwrap();
    let ttl: i64 = q(&mut b, &["TTL", "user:1"]).await.unwrap();
    assert!((98..=100).contains(&ttl), "{ttl}");
    assert_eq!(q::<i64>(&mut a, &["PERSIST", "user:1"]).await.unwrap(), 1);
    assert_eq!(q::<String>(&mut b, &["TYPE", "user:1"]).await.unwrap(), "hash", "PERSIST keeps the type");
    q::<i64>(&mut a, &["HSET", "short", "f", "v"]).await.unwrap();
    q::<i64>(&mut a, &["PEXPIRE", "short", "100"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(q::<i64>(&mut b, &["HLEN", "short"]).await.unwrap(), 0, "an expired hash is gone");
    assert_eq!(q::<i64>(&mut a, &["HSET", "short", "g", "w"]).await.unwrap(), 1, "and starts afresh");
    assert_eq!(q::<i64>(&mut a, &["TTL", "short"]).await.unwrap(), -1);

    // RENAME / RENAMENX move a value with its type, within one slot.
    assert_eq!(q::<String>(&mut a, &["RENAME", "user:1", "{user:1}.moved"]).await.unwrap(), "OK");
    assert_eq!(q::<i64>(&mut b, &["EXISTS", "user:1"]).await.unwrap(), 0);
    assert_eq!(
        q::<Option<String>>(&mut b, &["HGET", "{user:1}.moved", "city"]).await.unwrap().as_deref(),
        Some("Oslo")
    );
    assert_eq!(err(&mut a, &["RENAME", "user:1", "{user:1}.x"]).await, "ERR no such key");
    assert_eq!(
        err(&mut a, &["RENAME", "plain", "elsewhere"]).await,
        "CROSSSLOT Keys in request don't hash to the same slot"
    );
    q::<String>(&mut a, &["SET", "{user:1}.other", "o"]).await.unwrap();
    assert_eq!(q::<i64>(&mut a, &["RENAMENX", "{user:1}.moved", "{user:1}.other"]).await.unwrap(), 0);
    assert_eq!(q::<String>(&mut a, &["RENAME", "{user:1}.other", "{user:1}.moved"]).await.unwrap(), "OK");
    assert_eq!(q::<String>(&mut b, &["TYPE", "{user:1}.moved"]).await.unwrap(), "string", "RENAME overwrites");

    // Inside MULTI and from a script.
    let mut t = redis::pipe();
    t.atomic().cmd("HSET").arg("cart").arg("apples").arg("2").cmd("HINCRBY").arg("cart").arg("apples").arg("3");
    t.cmd("HGETALL").arg("cart");
    let (set, incr, whole): (i64, i64, HashMap<String, String>) = t.query_async(&mut a).await.unwrap();
    assert_eq!((set, incr, whole["apples"].as_str()), (1, 5, "5"));
    let script = "redis.call('HSET', KEYS[1], 'pears', ARGV[1]); return redis.call('HLEN', KEYS[1])";
    assert_eq!(q::<i64>(&mut b, &["EVAL", script, "1", "cart", "4"]).await.unwrap(), 2);
    assert_eq!(q::<i64>(&mut b, &["HDEL", "cart", "apples", "pears"]).await.unwrap(), 2);
    assert_eq!(q::<i64>(&mut b, &["EXISTS", "cart"]).await.unwrap(), 0, "a hash without fields is no key");

    // Concurrent field updates through three nodes lose nothing.
    let mut tasks = Vec::new();
    for c in 0..6 {
        let addr = cl.redis(c % 3);
        tasks.push(tokio::spawn(async move {
            let mut conn = connect(&addr).await;
            for i in 0..25 {
                q::<i64>(&mut conn, &["HINCRBY", "counters", "total", "1"]).await.unwrap();
                q::<i64>(&mut conn, &["HSET", "counters", &format!("c{c}:{i}"), "x"]).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(q::<i64>(&mut a, &["HGET", "counters", "total"]).await.unwrap(), 150);
    assert_eq!(q::<i64>(&mut a, &["HLEN", "counters"]).await.unwrap(), 151);
}

/// A gateway whose cached descriptor of a range predates the range's leader (a
/// voter added since, then given the leadership) follows the old leader's hint
/// at once, rather than cycling through the voters it knows until its next
/// periodic refresh (which stalled leader-only commands for seconds). Redis GET
/// is such a command: the leader judges expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_follows_a_hint_to_a_leader_it_has_not_heard_of() {
    use cairn_proto::kv::{ChangeReplicaRequest, TransferLeaderRequest};
    let _g = serial().await;
    let cl = Cluster::start_redis(5, &["--no-rebalance"]).await;
    let (range_id, _) = redis_key_range(&cl, 0, b"hinted").await.expect("the key's range");
    let s = cl.status(0).await.unwrap();
    let range = s.ranges.iter().find(|r| r.id == range_id).expect("the range").clone();
    let holders: Vec<u64> = range.replicas.iter().map(|x| x.node_id).collect();
    let outside: Vec<usize> = (0..5).filter(|i| !holders.contains(&cl.node_id(*i))).collect();
    let (gateway, newcomer) = (outside[0], cl.node_id(outside[1]));
    // The gateway node (no replica of its own) caches the range's descriptor.
    let mut c = connect(&cl.redis(gateway)).await;
    let _: () = q(&mut c, &["SET", "hinted", "1"]).await.unwrap();
    let _: String = q(&mut c, &["GET", "hinted"]).await.unwrap();
    let mut admin = cl.client(0).await;
    admin.add_replica(ChangeReplicaRequest { range_id, node_id: newcomer }).await.expect("add");
    admin.transfer_leader(TransferLeaderRequest { range_id, node_id: newcomer }).await.expect("transfer");
    let asked = std::time::Instant::now();
    let got: String = q(&mut c, &["GET", "hinted"]).await.expect("GET through the gateway with the old descriptor");
    let took = asked.elapsed();
    assert_eq!(got, "1");
    assert!(took < Duration::from_secs(1), "GET took {took:?}: the hint to node {newcomer} was not followed");
}
