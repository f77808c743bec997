//! The gRPC codec: prost's, with small starting buffers. tonic gives every call an
//! 8 KiB encode and an 8 KiB decode buffer up front; a controller holds one streaming
//! call per connected agent, so at 10,000 agents that is 160 MiB of mostly empty
//! buffers. These start at 512 bytes and grow to the largest message a stream has
//! carried (heartbeats and reports are a few hundred bytes).

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Where a call's encode and decode buffers start.
pub const START_BUFFER_BYTES: usize = 512;
/// tonic's default: how much a stream encodes before it hands the bytes on.
const YIELD_THRESHOLD: usize = 32 << 10;

fn settings() -> BufferSettings {
    BufferSettings::new(START_BUFFER_BYTES, YIELD_THRESHOLD)
}

/// Prost encoding with [`START_BUFFER_BYTES`] buffers (the generated code's codec).
#[derive(Debug, Clone)]
pub struct LeanCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self { _types: PhantomData }
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
