//! The session-setup parsers (CLIENT_HELLO, SERVER_HELLO, frame splitting) on arbitrary bytes:
//! none may panic, and whatever parses must re-encode to the same bytes.
#![no_main]

use ferry_engine::setup::{self, ClientHello, ServerHello};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((t, payload, used))) = setup::split_frame(data) {
        assert!(used <= data.len());
        let mut out = Vec::new();
        match t {
            setup::T_CLIENT_HELLO => {
                if let Ok(h) = ClientHello::decode(payload) {
                    h.encode(&mut out);
                    assert_eq!(&out[..], &data[..used]);
                }
            }
            setup::T_SERVER_HELLO => {
                if let Ok(h) = ServerHello::decode(payload) {
                    h.encode(&mut out);
                    assert_eq!(&out[..], &data[..used]);
                }
            }
            _ => {}
        }
    }
    let _ = ClientHello::decode(data);
    let _ = ServerHello::decode(data);
});
