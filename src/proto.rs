//! The Rust types and tonic stubs generated from `proto/` by the workspace `build.rs`.
//!
//! Module paths follow the proto packages (`ordermesh.order.v1` is `proto::order::v1`) because the
//! generated code refers to other packages by relative paths.
#![allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all,
    clippy::unwrap_used
)]

pub mod types {
    pub mod v1 {
        tonic::include_proto!("ordermesh.types.v1");
    }
}
pub mod payment {
    pub mod v1 {
        tonic::include_proto!("ordermesh.payment.v1");
    }
}
pub mod order {
    pub mod v1 {
        tonic::include_proto!("ordermesh.order.v1");
    }
}
pub mod notification {
    pub mod v1 {
        tonic::include_proto!("ordermesh.notification.v1");
    }
}
pub mod events {
    pub mod v1 {
        tonic::include_proto!("ordermesh.events.v1");
    }
}

/// The encoded `FileDescriptorSet` of every ordermesh proto, for server reflection and the JSON codec.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ordermesh_descriptor.bin"));
