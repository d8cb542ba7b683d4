//! Node id → gRPC address, learned from joins, the meta range's node registry
//! and inbound traffic, and persisted so a restarting node can reach its peers
//! before the meta range is reachable.

use crate::storage::layout;
use crate::storage::{Cf, Engine};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;

pub struct AddressBook {
    engine: Arc<Engine>,
    addrs: RwLock<HashMap<u64, String>>,
}

impl AddressBook {
    pub fn load(engine: Arc<Engine>) -> Self {
        let mut addrs = HashMap::new();
        let end = crate::keys::prefix_end(layout::LOCAL_ADDR_PREFIX);
        engine.scan(Cf::Local, layout::LOCAL_ADDR_PREFIX, &end, |k, v| {
            let id = k.get(layout::LOCAL_ADDR_PREFIX.len()..).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
            if let (Some(id), Ok(addr)) = (id, std::str::from_utf8(v)) {
                addrs.insert(id, addr.to_string());
            }
            true
        });
        AddressBook { engine, addrs: RwLock::new(addrs) }
    }

    pub fn get(&self, node_id: u64) -> Option<String> {
        self.addrs.read().get(&node_id).cloned()
    }

    pub fn all(&self) -> Vec<(u64, String)> {
        let mut v: Vec<_> = self.addrs.read().iter().map(|(k, a)| (*k, a.clone())).collect();
        v.sort();
        v
    }

    /// Records an address; persists only when it changed.
    pub fn learn(&self, node_id: u64, addr: &str) {
        if node_id == 0 || addr.is_empty() || self.addrs.read().get(&node_id).map(String::as_str) == Some(addr) {
            return;
        }
        self.addrs.write().insert(node_id, addr.to_string());
        let mut b = self.engine.batch();
        b.put(Cf::Local, &layout::local_addr_key(node_id), addr.as_bytes());
        self.engine.commit(b, false);
    }
}
