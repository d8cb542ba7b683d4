//! The node's front ends: the native gRPC API, the Redis protocol (`resp`),
//! the internal (node-to-node) gRPC service, and the HTTP admin port
//! (metrics, status, console).

pub mod grpc_internal;
pub mod grpc_kv;
pub mod http;
pub mod listener;
pub mod resp;
