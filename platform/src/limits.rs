//! The limits every API service sets on its generated server and the router sets on every
//! connection: what one caller can make a service buffer or hold open.

/// The largest request message a service decodes (each API service sets it on its generated
/// server). Far above any valid request (a CreateOrder of 100 items is about 10 KiB), and small
/// enough that a hostile sender cannot make a service buffer much: tonic refuses a larger message
/// from its length prefix, before reading it.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The request compression every API service accepts (each sets it on its generated server):
/// gzip, which grpcurl, grpc-go and grpc-java clients can send. [`MAX_REQUEST_BYTES`] also bounds
/// the decompressed message: tonic inflates into a buffer limited to it and refuses the rest with
/// RESOURCE_EXHAUSTED, so a small frame that inflates to gigabytes (a compression bomb) costs at
/// most 64 KiB. Other encodings are refused with UNIMPLEMENTED.
pub const ACCEPTED_COMPRESSION: tonic::codec::CompressionEncoding =
    tonic::codec::CompressionEncoding::Gzip;

/// Concurrent HTTP/2 streams (calls) one connection may have open; more wait for the client's
/// flow control, so one connection cannot take the whole server.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 128;
