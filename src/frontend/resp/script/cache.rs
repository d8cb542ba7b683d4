//! The node's script cache: scripts by SHA-1, shared by every connection, as
//! in Redis (each node has its own; a cluster client that gets NOSCRIPT from a
//! node sends the script again with EVAL). Bounded in count and bytes.

use parking_lot::Mutex;
use sha1::{Digest, Sha1};
use std::collections::HashMap;
use std::sync::Arc;

const MAX_SCRIPTS: usize = 10_000;
const MAX_SCRIPT_BYTES: usize = 64 << 20;

#[derive(Default)]
pub struct ScriptCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_sha: HashMap<String, Arc<[u8]>>,
    bytes: usize,
}

/// The lowercase hex SHA-1 of `body`, as Redis names scripts.
pub fn sha1_hex(body: &[u8]) -> String {
    Sha1::digest(body).iter().map(|b| format!("{b:02x}")).collect()
}

impl ScriptCache {
    /// Caches `body` and returns its SHA-1; an error if the cache is full.
    pub fn load(&self, body: &[u8]) -> Result<(String, Arc<[u8]>), String> {
        let sha = sha1_hex(body);
        let mut inner = self.inner.lock();
        if let Some(s) = inner.by_sha.get(&sha) {
            return Ok((sha, s.clone()));
        }
        if inner.by_sha.len() >= MAX_SCRIPTS || inner.bytes + body.len() > MAX_SCRIPT_BYTES {
            return Err(format!(
                "ERR the script cache is full ({MAX_SCRIPTS} scripts or {} MiB); run SCRIPT FLUSH",
                MAX_SCRIPT_BYTES >> 20
            ));
        }
        let script: Arc<[u8]> = Arc::from(body);
        inner.bytes += body.len();
        inner.by_sha.insert(sha.clone(), script.clone());
        Ok((sha, script))
    }

    pub fn get(&self, sha: &str) -> Option<Arc<[u8]>> {
        self.inner.lock().by_sha.get(&sha.to_ascii_lowercase()).cloned()
    }

    pub fn flush(&self) {
        *self.inner.lock() = Inner::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_named_by_their_sha1_as_redis_names_them() {
        // redis-cli SCRIPT LOAD "return 1" answers this digest.
        assert_eq!(sha1_hex(b"return 1"), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
        let cache = ScriptCache::default();
        let (sha, _) = cache.load(b"return 1").unwrap();
        assert!(cache.get(&sha.to_uppercase()).is_some());
        cache.flush();
        assert!(cache.get(&sha).is_none());
    }
}
