//! Cairn's pure building blocks, shared by the server and the fuzz targets:
//! the encoded keyspace, HLC versions, input limits, and the validation of
//! client requests and of peer traffic. Nothing here does I/O.

pub mod clock_fault;
pub mod clock_offset;
pub mod dedupe;
pub mod hlc;
pub mod keys;
pub mod limits;
pub mod load;
pub mod outcome;
pub mod peer;
pub mod request;
pub mod resp;
