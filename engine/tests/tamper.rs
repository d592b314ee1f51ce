//! Tamper tests: every byte of genuine DATA, STATUS and FEEDBACK packets is altered in flight,
//! and the packets are truncated, extended, replayed and replaced by garbage. Each altered packet
//! must be dropped and counted, and nothing it carried may reach the sink or the sender's state.

use std::time::{Duration, Instant};

use ferry_engine::control::{ControlMessage, FileEntry};
use ferry_engine::crypto::{CipherSuite, SessionSecret};
use ferry_engine::rate::{FixedFactory, RateLimits};
use ferry_engine::session::{Receiver, Sender, SessionConfig};
use ferry_engine::sim::{MemSink, MemSource, Rng};
use ferry_engine::wire;

struct Pair {
    sender: Sender,
    receiver: Receiver,
    source: MemSource,
    sink: MemSink,
    now: Instant,
}

fn pair(suite: CipherSuite) -> Pair {
    let now = Instant::now();
    let secret = SessionSecret::new([42; 32]);
    let config = SessionConfig::new(77, suite, RateLimits { target: 1_000_000_000, min: 0 });
    let mut sender = Sender::new(config.clone(), &secret, &FixedFactory, now).unwrap();
    let mut receiver = Receiver::new(config, &secret, now).unwrap();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    sender.add_file(FileEntry {
        id: 0,
        size: data.len() as u64,
        mtime_ns: 0,
        mode: 0,
        path: "f".into(),
        part: None,
    });
    sender.finish_manifest();
    let mut sink = MemSink::new(ferry_engine::session::MAX_STANDARD_BLOCK, None);
    while let Some(m) = sender.poll_control() {
        if matches!(m, ControlMessage::File(_)) {
            receiver.handle_control(m, &mut sink);
        }
    }
    Pair {
        sender,
        receiver,
        source: MemSource { files: vec![data], fail_at: Vec::new() },
        sink,
        now,
    }
}

/// Opens the window: one genuine feedback from the receiver to the sender.
fn open_window(p: &mut Pair) {
    let mut buf = vec![0u8; wire::MAX_DATAGRAM];
    let n = p.receiver.poll_transmit(p.now, &p.sink, &mut buf).expect("initial feedback");
    p.sender.handle_datagram(p.now, &mut buf[..n]);
    assert_eq!(p.sender.stats().feedback_received, 1);
}

fn next_from_sender(p: &mut Pair) -> Vec<u8> {
    let mut buf = vec![0u8; wire::MAX_DATAGRAM];
    let n = p.sender.poll_transmit(p.now, &mut p.source, &mut buf).expect("a packet");
    buf.truncate(n);
    buf
}

fn receiver_drops(p: &Pair) -> u64 {
    let s = p.receiver.stats();
    s.dropped.total() + s.dropped_window
}

#[test]
fn every_altered_byte_of_a_data_packet_is_dropped() {
    for suite in CipherSuite::ALL {
        let mut p = pair(suite);
        open_window(&mut p);
        let genuine = next_from_sender(&mut p);
        for i in 0..genuine.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut forged = genuine.clone();
                forged[i] ^= flip;
                let before = receiver_drops(&p);
                p.receiver.handle_datagram(p.now, &mut forged, &mut p.sink);
                assert_eq!(
                    receiver_drops(&p),
                    before + 1,
                    "{suite:?}: byte {i} ^ {flip:#x} accepted"
                );
            }
        }
        assert_eq!(p.receiver.stats().blocks_received, 0, "{suite:?}");
        assert!(p.sink.writes[0].iter().all(|&w| w == 0), "{suite:?}: nothing reached the sink");
        // The genuine packet is still accepted afterwards (forgeries did not move the window).
        let mut ok = genuine.clone();
        p.receiver.handle_datagram(p.now, &mut ok, &mut p.sink);
        assert_eq!(p.receiver.stats().blocks_received, 1, "{suite:?}");
        // And a replay of it is dropped.
        let mut again = genuine.clone();
        p.receiver.handle_datagram(p.now, &mut again, &mut p.sink);
        assert_eq!(p.receiver.stats().dropped.replay, 1, "{suite:?}");
        assert_eq!(p.receiver.stats().blocks_received, 1);
    }
}

#[test]
fn truncated_extended_and_garbage_datagrams_are_dropped() {
    let mut p = pair(CipherSuite::Aes128);
    open_window(&mut p);
    let genuine = next_from_sender(&mut p);
    let mut rng = Rng::new(9);
    let mut cases: Vec<Vec<u8>> = Vec::new();
    for len in 0..genuine.len() {
        cases.push(genuine[..len].to_vec());
    }
    let mut longer = genuine.clone();
    longer.push(0);
    cases.push(longer);
    cases.push(vec![0u8; wire::MAX_DATAGRAM + 1]);
    for _ in 0..2000 {
        let len = rng.range(0, 1600) as usize;
        let mut g: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if g.len() > 2 && rng.chance(0.5) {
            g[0] = wire::VERSION;
            g[1] = rng.range(1, 3) as u8;
        }
        cases.push(g);
    }
    let n = cases.len() as u64;
    for mut c in cases {
        p.receiver.handle_datagram(p.now, &mut c, &mut p.sink);
        p.sender.handle_datagram(p.now, &mut c.clone());
    }
    assert_eq!(receiver_drops(&p), n);
    assert_eq!(p.receiver.stats().blocks_received, 0);
    let s = p.sender.stats();
    assert_eq!(s.dropped.total(), n);
    assert_eq!(s.feedback_received, 1);
}

#[test]
fn every_altered_byte_of_feedback_and_status_is_dropped() {
    let mut p = pair(CipherSuite::Aes256);
    open_window(&mut p);
    // Let some data through so the next feedback carries a NACK range.
    let first = next_from_sender(&mut p);
    let _lost = next_from_sender(&mut p);
    let mut third = next_from_sender(&mut p);
    p.receiver.handle_datagram(p.now, &mut first.clone(), &mut p.sink);
    p.receiver.handle_datagram(p.now, &mut third, &mut p.sink);
    p.now += Duration::from_secs(1);
    let mut buf = vec![0u8; wire::MAX_DATAGRAM];
    let n = p.receiver.poll_transmit(p.now, &p.sink, &mut buf).expect("feedback with a NACK");
    let genuine = buf[..n].to_vec();
    for i in 0..genuine.len() {
        let mut forged = genuine.clone();
        forged[i] ^= 0x04;
        let before = p.sender.stats().clone();
        p.sender.handle_datagram(p.now, &mut forged);
        let after = p.sender.stats();
        assert_eq!(after.feedback_received, before.feedback_received, "byte {i} accepted");
    }
    p.sender.handle_datagram(p.now, &mut genuine.clone());
    assert_eq!(p.sender.stats().feedback_received, 2);
    // STATUS: the sender has nothing in its window it may send... make it idle and capture one.
    let mut sender_status = None;
    for _ in 0..100 {
        p.now += Duration::from_millis(50);
        let pkt = next_from_sender(&mut p);
        if pkt[1] == 3 {
            sender_status = Some(pkt);
            break;
        }
    }
    let status = sender_status.expect("a STATUS packet once the sender is idle");
    for i in 0..status.len() {
        let mut forged = status.clone();
        forged[i] ^= 0x10;
        let before = receiver_drops(&p);
        p.receiver.handle_datagram(p.now, &mut forged, &mut p.sink);
        assert_eq!(receiver_drops(&p), before + 1, "status byte {i} accepted");
    }
}
