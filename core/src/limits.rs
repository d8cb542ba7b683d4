//! Request limits from the design brief, and the errors that name them.
//!
//! Every limit is checked at the edge (front ends and gateway) before anything
//! is proposed, so a request that breaks one is rejected whole.

use serde::{Deserialize, Serialize};

/// Configurable request limits.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_batch_bytes: usize,
    pub max_batch_ops: usize,
    pub request_deadline_ms: u64,
    pub max_request_id_bytes: usize,
    pub max_table_name_bytes: usize,
    /// Changes a change feed's stream may hold for a consumer that does not read
    /// before it ends the stream (the consumer resumes from its checkpoint).
    pub feed_buffer_events: usize,
    /// The same bound in bytes of keys and values.
    pub feed_buffer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_bytes: 8 * 1024,
            max_value_bytes: 1024 * 1024,
            max_batch_bytes: 16 * 1024 * 1024,
            max_batch_ops: 10_000,
            request_deadline_ms: 10_000,
            max_request_id_bytes: 64,
            max_table_name_bytes: 128,
            feed_buffer_events: 100_000,
            feed_buffer_bytes: 64 << 20,
        }
    }
}

/// A broken limit or malformed argument; the message names what was wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    #[error("key is {got} bytes; the key size limit is {limit} bytes (max_key_bytes)")]
    KeyTooLarge { got: usize, limit: usize },
    #[error("key must not be empty")]
    EmptyKey,
    #[error("value is {got} bytes; the value size limit is {limit} bytes (max_value_bytes)")]
    ValueTooLarge { got: usize, limit: usize },
    #[error("batch is {got} bytes; the batch size limit is {limit} bytes (max_batch_bytes)")]
    BatchTooLarge { got: usize, limit: usize },
    #[error("the values read pass {limit} bytes, the reply size limit (max_batch_bytes); read fewer keys per request")]
    ReplyTooLarge { limit: u64 },
    #[error("batch has {got} operations; the limit is {limit} (max_batch_ops)")]
    TooManyOps { got: usize, limit: usize },
    #[error("request_id is {got} bytes; the limit is {limit} bytes")]
    RequestIdTooLarge { got: usize, limit: usize },
    #[error("invalid table name {name:?}: {why}")]
    InvalidTableName { name: String, why: &'static str },
    #[error("{0}")]
    Invalid(String),
}

impl Limits {
    pub fn check_key(&self, key: &[u8]) -> Result<(), InputError> {
        if key.is_empty() {
            return Err(InputError::EmptyKey);
        }
        if key.len() > self.max_key_bytes {
            return Err(InputError::KeyTooLarge { got: key.len(), limit: self.max_key_bytes });
        }
        Ok(())
    }

    pub fn check_value(&self, value: &[u8]) -> Result<(), InputError> {
        if value.len() > self.max_value_bytes {
            return Err(InputError::ValueTooLarge { got: value.len(), limit: self.max_value_bytes });
        }
        Ok(())
    }

    pub fn check_batch(&self, ops: usize, bytes: usize) -> Result<(), InputError> {
        if ops > self.max_batch_ops {
            return Err(InputError::TooManyOps { got: ops, limit: self.max_batch_ops });
        }
        if bytes > self.max_batch_bytes {
            return Err(InputError::BatchTooLarge { got: bytes, limit: self.max_batch_bytes });
        }
        Ok(())
    }

    pub fn check_request_id(&self, id: &[u8]) -> Result<(), InputError> {
        if id.len() > self.max_request_id_bytes {
            return Err(InputError::RequestIdTooLarge { got: id.len(), limit: self.max_request_id_bytes });
        }
        Ok(())
    }

    /// Table names: 1..=128 bytes of `[A-Za-z0-9_.-]`, not starting with `_` (reserved).
    pub fn check_table_name(&self, name: &str) -> Result<(), InputError> {
        let bad = |why| Err(InputError::InvalidTableName { name: name.chars().take(200).collect(), why });
        if name.is_empty() {
            return bad("must not be empty");
        }
        if name.len() > self.max_table_name_bytes {
            return bad("longer than 128 bytes");
        }
        if name.starts_with('_') {
            return bad("names starting with '_' are reserved");
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.') {
            return bad("only letters, digits, '_', '-' and '.' are allowed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_themselves() {
        let l = Limits::default();
        let e = l.check_key(&vec![0; 8193]).unwrap_err();
        assert!(e.to_string().contains("key size limit"), "{e}");
        assert!(l.check_key(&vec![0; 8192]).is_ok());
        assert!(l.check_value(&vec![0; 1 << 20]).is_ok());
        assert!(l.check_value(&vec![0; (1 << 20) + 1]).unwrap_err().to_string().contains("value size limit"));
        assert!(l.check_table_name("users").is_ok());
        assert!(l.check_table_name("bad name").is_err());
        assert!(l.check_table_name("_meta").is_err());
        assert!(l.check_table_name("").is_err());
    }
}
