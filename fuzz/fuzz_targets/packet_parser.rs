//! Every data-path and control-channel parser on arbitrary bytes: none may panic, and whatever
//! parses must re-encode to the same bytes.
#![no_main]

use ferry_engine::control::ControlMessage;
use ferry_engine::wire::{DataFields, FeedbackFields, Header, NackRanges, StatusFields};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::decode(data) {
        let mut out = vec![0u8; ferry_engine::wire::HEADER_LEN];
        h.encode(&mut out);
        assert_eq!(&out[..], &data[..ferry_engine::wire::HEADER_LEN]);
    }
    if let Ok(f) = DataFields::decode(data) {
        let mut out = vec![0u8; ferry_engine::wire::DATA_BODY_LEN];
        f.encode(&mut out);
        assert_eq!(&out[..], &data[..ferry_engine::wire::DATA_BODY_LEN]);
    }
    if let Ok(f) = StatusFields::decode(data) {
        let mut out = vec![0u8; ferry_engine::wire::STATUS_BODY_LEN];
        f.encode(&mut out);
        assert_eq!(&out[..], data);
    }
    if let Ok((f, ranges)) = FeedbackFields::decode(data) {
        let mut prev = f.cumulative;
        for r in NackRanges::new(ranges, f.cumulative, f.nack_ranges) {
            let Ok((start, end)) = r else { break };
            assert!(start >= prev && end > start);
            prev = end;
        }
    }
    let mut rest = data;
    while let Ok(Some((msg, used))) = ControlMessage::decode(rest) {
        let mut out = Vec::new();
        msg.encode(&mut out);
        if let ControlMessage::Abort { .. }
        | ControlMessage::FileResult { .. }
        | ControlMessage::FileAbandon { .. } = msg
        {
            // Reasons are decoded lossily; only the length is guaranteed to match.
        } else {
            assert_eq!(&out[..], &rest[..used]);
        }
        rest = &rest[used..];
    }
});
