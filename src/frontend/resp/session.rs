//! One client's connection state (protocol version, name, READONLY) and the
//! node-wide list of connected clients and counters that CLIENT LIST and INFO show.

use cairn_core::resp::reply::Protocol;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// What CLIENT LIST shows of one client; shared between its connection and the list.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub id: u64,
    pub addr: String,
    pub laddr: String,
    pub name: String,
    pub lib_name: String,
    pub lib_ver: String,
    /// Milliseconds since the Unix epoch.
    pub connected_ms: u64,
    pub last_command_ms: u64,
    pub last_command: String,
    pub resp: u8,
    pub readonly: bool,
}

/// Every connected client of this node, by id.
#[derive(Default)]
pub struct ClientList(Mutex<BTreeMap<u64, Arc<Mutex<ClientInfo>>>>);

impl ClientList {
    pub fn register(&self, info: ClientInfo) -> Arc<Mutex<ClientInfo>> {
        let shared = Arc::new(Mutex::new(info));
        let id = shared.lock().id;
        self.0.lock().insert(id, shared.clone());
        shared
    }

    pub fn remove(&self, id: u64) {
        self.0.lock().remove(&id);
    }

    pub fn snapshot(&self) -> Vec<ClientInfo> {
        self.0.lock().values().map(|c| c.lock().clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Node-wide counters for INFO stats.
#[derive(Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub rejected: AtomicU64,
    pub commands: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub keyspace_hits: AtomicU64,
    pub keyspace_misses: AtomicU64,
    /// Script batches written (`script::batch`), and the scripts they ran.
    pub script_batches: AtomicU64,
    pub batched_scripts: AtomicU64,
}

/// The state of one connection that commands read and change.
pub struct Session {
    pub info: Arc<Mutex<ClientInfo>>,
    pub protocol: Protocol,
    /// READONLY: reads on this connection may be served by any replica, bounded-stale.
    pub readonly: bool,
    /// Set by QUIT: the connection closes once the reply is written.
    pub closing: bool,
    /// MULTI in progress: the commands queued so far.
    pub multi: Option<super::txn::Multi>,
    /// WATCHed keys and their versions when watched (`None`: absent).
    pub watched: std::collections::BTreeMap<bytes::Bytes, Option<cairn_proto::kv::Version>>,
}

impl Session {
    pub fn new(info: Arc<Mutex<ClientInfo>>) -> Self {
        Session {
            info,
            protocol: Protocol::Resp2,
            readonly: false,
            closing: false,
            multi: None,
            watched: Default::default(),
        }
    }

    pub fn id(&self) -> u64 {
        self.info.lock().id
    }

    /// One line of CLIENT LIST / CLIENT INFO, in Redis's field order for the fields Cairn has.
    pub fn describe(c: &ClientInfo, now_ms: u64) -> String {
        let age = now_ms.saturating_sub(c.connected_ms) / 1000;
        let idle = now_ms.saturating_sub(c.last_command_ms) / 1000;
        let flags = if c.readonly { "r" } else { "N" };
        format!(
            "id={} addr={} laddr={} fd=0 name={} age={age} idle={idle} flags={flags} db=0 sub=0 psub=0 ssub=0 \
             multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} \
             user=default redir=-1 resp={} lib-name={} lib-ver={}",
            c.id,
            c.addr,
            c.laddr,
            c.name,
            if c.last_command.is_empty() { "NULL" } else { &c.last_command },
            c.resp,
            c.lib_name,
            c.lib_ver
        )
    }
}
