//! The Redis wire protocol (RESP2 and RESP3): parsing client requests and
//! encoding replies. Pure, with no I/O, so that the fuzz target
//! (fuzz/fuzz_targets/resp_parser.rs) drives exactly the code a connection
//! runs.

pub mod hash;
pub mod parse;
pub mod reply;

pub use parse::{ParseLimits, ProtocolError, RequestParser};
pub use reply::{encode, Protocol, Reply};
