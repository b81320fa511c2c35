//! The gRPC codec of every generated client and server: prost's, with buffers sized for ordermesh's
//! messages.
//!
//! tonic allocates a codec buffer for every message it encodes or decodes, 8 KiB unless the
//! codec says otherwise. Our messages are a few hundred bytes, and an 8 KiB allocation is one
//! glibc serves from its general bins, consolidating its small free chunks first: under load that
//! was about 3 % of the runner's CPU (`malloc_consolidate`, `unlink_chunk` under tonic's
//! `EncodedBytes::new` and the client's `create_response`). A buffer under 1 KiB comes from the
//! allocator's per-thread cache instead; a larger message grows it in steps of the same size.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// The first size of each message buffer: under glibc's per-thread cache limit (1,032 bytes a
/// chunk, its header included), above most of our messages.
const BUFFER_SIZE: usize = 1000;
/// tonic's own: how much a streaming encoder writes before giving the runtime a turn.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`tonic_prost::ProstCodec`] with [`BUFFER_SIZE`] buffers; `build.rs` makes the generated code
/// use it.
#[derive(Debug, Clone, Copy)]
pub struct ProstCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ProstCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for ProstCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }
}
