//! The server's set-up decision on arbitrary CLIENT_HELLOs: whatever decodes is re-signed with
//! a fixed key (so the negotiation gets past the signature and exercises every parameter and
//! path rule), negotiated, and, when accepted, answered; the client's check of that answer must
//! accept it. Nothing may panic; an accepted plan must satisfy the protocol's bounds.
#![no_main]

use ferry_engine::io::docroot::RelPath;
use ferry_engine::setup::{self, ClientHello, Rules};
use libfuzzer_sys::fuzz_target;
use ring::signature::{Ed25519KeyPair, KeyPair};

fuzz_target!(|data: &[u8]| {
    let Ok(mut hello) = ClientHello::decode(data) else { return };
    let key = Ed25519KeyPair::from_seed_unchecked(&[9; 32]).expect("seed");
    let exporter = [3u8; 32];
    hello.public_key = key.public_key().as_ref().try_into().expect("32");
    hello.signature = key.sign(&hello.signed_message(&exporter)).as_ref().try_into().expect("64");
    let rules = Rules { rate_cap: Some(1 << 30), ..Rules::default() };
    match setup::negotiate(&hello, &exporter, 1, &rules, |_, _| Ok::<(), String>(())) {
        Ok((plan, ())) => {
            assert!(plan.limits.target > 0 && plan.limits.min <= plan.limits.target);
            assert!(plan.limits.target <= 1 << 30);
            assert!(plan.config().validate().is_ok());
            if !plan.path.is_root() {
                assert_eq!(RelPath::parse(&plan.path.to_string()).as_ref(), Ok(&plan.path));
            }
            assert_eq!(setup::accept_reply(&hello, &plan.reply(1)), Ok(()));
        }
        Err(r) => assert!(r.code() >= 3),
    }
});
