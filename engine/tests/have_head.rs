//! The held head of FILE_HAVE (docs/PROTOCOL.md 8.6): a sender that asked for heads
//! (`resume_head`) adopts the head before it reads the file, and abandons the file if its
//! source refuses the head; a head it did not ask for, or one missing where it is due, ends the
//! session as a protocol violation.

use std::io;
use std::time::Instant;

use ferry_engine::control::{ControlMessage, FileEntry};
use ferry_engine::crypto::{CipherSuite, SessionSecret};
use ferry_engine::rate::{FixedFactory, RateLimits};
use ferry_engine::session::{BlockSource, Event, Sender, SessionConfig, SessionError};
use ferry_engine::wire::MAX_DATAGRAM;

/// A source of zeros that records the heads it is given and refuses one that starts with 0xee.
#[derive(Default)]
struct Heads {
    adopted: Vec<(u32, Vec<u8>)>,
    reads_before_adopt: usize,
}

impl BlockSource for Heads {
    fn read(&mut self, _file: u32, _offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if self.adopted.is_empty() {
            self.reads_before_adopt += 1;
        }
        buf.fill(0);
        Ok(())
    }
    fn adopt_head(&mut self, file: u32, head: &[u8]) -> io::Result<()> {
        self.adopted.push((file, head.to_vec()));
        if head[0] == 0xee { Err(io::Error::other("not this head")) } else { Ok(()) }
    }
}

fn sender(resume_head: bool) -> Sender {
    let mut config =
        SessionConfig::new(3, CipherSuite::Aes128, RateLimits { target: 1_000_000_000, min: 0 });
    config.resume = true;
    config.resume_head = resume_head;
    let secret = SessionSecret::new([4; 32]);
    let mut s = Sender::new(config, &secret, &FixedFactory, Instant::now()).unwrap();
    s.add_file(FileEntry {
        id: 0,
        size: 4 << 20,
        mtime_ns: 0,
        mode: 0,
        path: "f".into(),
        part: None,
    });
    s.finish_manifest();
    s
}

fn protocol_failure(s: &mut Sender) -> bool {
    std::iter::from_fn(|| s.poll_event())
        .any(|e| matches!(e, Event::Failed(SessionError::Protocol(_))))
}

#[test]
fn a_held_head_is_adopted_before_the_file_is_read() {
    let mut s = sender(true);
    let head = vec![7u8; 1024];
    s.handle_control(ControlMessage::FileHave {
        file: 0,
        ranges: vec![(0, 10)],
        head: head.clone(),
    });
    let mut src = Heads::default();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let _ = s.poll_transmit(Instant::now(), &mut src, &mut buf);
    assert_eq!(src.adopted, [(0, head)]);
    // The progress bar's file under way: file 0, of 4 MiB.
    let (file, done, size) = s.position().unwrap();
    assert_eq!((file, size), (0, 4 << 20));
    assert!(done < size);
    assert_eq!(src.reads_before_adopt, 0);
    assert!(!protocol_failure(&mut s));
}

#[test]
fn a_refused_head_abandons_the_file() {
    let mut s = sender(true);
    s.handle_control(ControlMessage::FileHave {
        file: 0,
        ranges: vec![(0, 10)],
        head: vec![0xee; 1024],
    });
    let mut src = Heads::default();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let _ = s.poll_transmit(Instant::now(), &mut src, &mut buf);
    let abandoned = std::iter::from_fn(|| s.poll_control())
        .any(|m| matches!(&m, ControlMessage::FileAbandon { file: 0, reason } if reason.contains("not this head")));
    assert!(abandoned, "the file is abandoned, saying why");
}

#[test]
fn heads_out_of_place_are_protocol_violations() {
    let mut s = sender(false);
    s.handle_control(ControlMessage::FileHave {
        file: 0,
        ranges: vec![(0, 10)],
        head: vec![7; 1024],
    });
    assert!(protocol_failure(&mut s), "a head the session did not ask for");
    let mut s = sender(true);
    s.handle_control(ControlMessage::FileHave { file: 0, ranges: vec![(0, 10)], head: Vec::new() });
    assert!(protocol_failure(&mut s), "no head where one is due");
    let mut s = sender(true);
    s.handle_control(ControlMessage::FileHave { file: 0, ranges: vec![(2, 10)], head: Vec::new() });
    assert!(!protocol_failure(&mut s), "nothing held from block 0: no head");
}
