//! RATE_LIMIT: the receiver bounds the rate it is sent at (a server's cap at the start of an
//! upload, an operator's change while it runs); the sender paces within the lower of its own
//! limits and the receiver's (the lower target, the higher floor), and its own later changes
//! stay within the receiver's.

use std::time::{Duration, Instant};

use ferry_engine::control::{ControlMessage, FileEntry};
use ferry_engine::crypto::{CipherSuite, SessionSecret};
use ferry_engine::rate::{FixedFactory, RateLimits};
use ferry_engine::session::{Event, Receiver, Sender, SessionConfig};
use ferry_engine::sim::{MemSink, MemSource};
use ferry_engine::wire::MAX_DATAGRAM;

const MBIT: u64 = 1_000_000;

struct Pair {
    sender: Sender,
    receiver: Receiver,
    source: MemSource,
    sink: MemSink,
    now: Instant,
    buf: Vec<u8>,
    /// Data bytes the sender put on the wire.
    sent: u64,
    complete: bool,
}

impl Pair {
    fn new(target: u64, file: usize) -> Self {
        let now = Instant::now();
        let secret = SessionSecret::new([7; 32]);
        let config = SessionConfig::new(3, CipherSuite::Aes128, RateLimits { target, min: 0 });
        let mut sender = Sender::new(config.clone(), &secret, &FixedFactory, now).unwrap();
        let receiver = Receiver::new(config.clone(), &secret, now).unwrap();
        sender.add_file(FileEntry {
            id: 0,
            size: file as u64,
            mtime_ns: 0,
            mode: 0,
            path: "f".into(),
            part: None,
        });
        sender.finish_manifest();
        let source = MemSource { files: vec![vec![9; file]], fail_at: Vec::new() };
        let sink = MemSink::new(config.block_size, None);
        let buf = vec![0; MAX_DATAGRAM];
        Self { sender, receiver, source, sink, now, buf, sent: 0, complete: false }
    }

    /// Runs for `span` of simulated time, in 100 µs steps, over a lossless instant link.
    fn run(&mut self, span: Duration) {
        let end = self.now + span;
        while self.now < end && !self.complete {
            while let Some(m) = self.sender.poll_control() {
                self.receiver.handle_control(m, &mut self.sink);
            }
            while let Some(m) = self.receiver.poll_control() {
                self.sender.handle_control(m);
            }
            while let Some(n) = self.receiver.poll_transmit(self.now, &self.sink, &mut self.buf) {
                self.sender.handle_datagram(self.now, &mut self.buf[..n]);
            }
            while let Some(n) = self.sender.poll_transmit(self.now, &mut self.source, &mut self.buf)
            {
                self.sent += n as u64;
                self.receiver.handle_datagram(self.now, &mut self.buf[..n], &mut self.sink);
            }
            while let Some(e) = self.sender.poll_event() {
                assert!(!matches!(e, Event::Failed(_)), "{e:?}");
                self.complete |= e == Event::Complete;
            }
            self.sender.handle_timeout(self.now);
            self.receiver.handle_timeout(self.now);
            self.now += Duration::from_micros(100);
        }
    }

    /// The rate the sender put bytes on the wire at over `span`, bits/s.
    fn measured(&mut self, span: Duration) -> u64 {
        let before = self.sent;
        self.run(span);
        ((self.sent - before) as f64 * 8.0 / span.as_secs_f64()) as u64
    }
}

#[test]
fn the_receivers_limit_bounds_the_sender_and_its_own_changes() {
    let mut p = Pair::new(400 * MBIT, 64 << 20);
    p.run(Duration::from_millis(50));
    let free = p.measured(Duration::from_millis(200));
    assert!(free > 300 * MBIT, "unlimited: {free} bit/s");

    // The receiver caps it at 40 Mbit/s: the sender keeps within that.
    p.receiver.set_limits(RateLimits { target: 40 * MBIT, min: 0 });
    p.run(Duration::from_millis(20));
    assert_eq!(p.sender.limits(), RateLimits { target: 40 * MBIT, min: 0 });
    let capped = p.measured(Duration::from_millis(300));
    assert!(capped <= 44 * MBIT && capped > 30 * MBIT, "capped: {capped} bit/s");

    // Its own change upwards stays within the receiver's; downwards it applies.
    p.sender.set_limits(RateLimits { target: 1000 * MBIT, min: 0 });
    assert_eq!(p.sender.limits().target, 40 * MBIT);
    p.sender.set_limits(RateLimits { target: 20 * MBIT, min: 10 * MBIT });
    assert_eq!(p.sender.limits(), RateLimits { target: 20 * MBIT, min: 10 * MBIT });
    let lower = p.measured(Duration::from_millis(300));
    assert!(lower <= 22 * MBIT && lower > 14 * MBIT, "own lower limit: {lower} bit/s");

    // The receiver lifts its cap and asks for a floor: the sender's own limit is what remains,
    // with the higher floor.
    p.receiver.set_limits(RateLimits { target: u64::MAX, min: 15 * MBIT });
    p.run(Duration::from_millis(20));
    assert_eq!(p.sender.limits(), RateLimits { target: 20 * MBIT, min: 15 * MBIT });
}

#[test]
fn a_rate_limit_sent_to_a_receiver_is_a_protocol_violation() {
    let mut p = Pair::new(100 * MBIT, 10_000);
    p.receiver.handle_control(ControlMessage::RateLimit { target: 1, min: 0 }, &mut p.sink);
    let failed =
        std::iter::from_fn(|| p.receiver.poll_event()).any(|e| matches!(e, Event::Failed(_)));
    assert!(failed, "the receiver accepted a RATE_LIMIT");
}
