//! Compiles `proto/` once for the whole workspace: Rust types and tonic stubs for every package, plus the
//! encoded file descriptor set that server reflection and the event JSON codec read at run time.
//! `protox` parses the .proto files in pure Rust, so no system `protoc` is needed.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/ordermesh/types/v1/money.proto",
        "proto/ordermesh/payment/v1/payment.proto",
        "proto/ordermesh/order/v1/order.proto",
        "proto/ordermesh/notification/v1/notification.proto",
        "proto/ordermesh/events/v1/events.proto",
    ];
    println!("cargo:rerun-if-changed=proto");

    // protox includes the well-known types (google/protobuf/*.proto) itself.
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("ordermesh_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // prost's codec with buffers sized for our messages (src/codec.rs).
        .codec_path("crate::codec::ProstCodec")
        .compile_fds(fds)?;
    Ok(())
}
