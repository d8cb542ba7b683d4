//! Generated gRPC code for Cairn's protocols.
//!
//! - [`kv`]: the client API, `cairn.v1` (`cairn/v1/kv.proto`).
//! - [`internal`]: the node-to-node protocol, `cairn.internal.v1`.
//!
//! Modules nest as the protobuf packages do, so cross-package references resolve.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod cairn {
    pub mod v1 {
        tonic::include_proto!("cairn.v1");
    }
    pub mod internal {
        pub mod v1 {
            tonic::include_proto!("cairn.internal.v1");
        }
    }
}

pub use cairn::internal::v1 as internal;
pub use cairn::v1 as kv;
