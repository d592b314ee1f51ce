//! End-to-end integrity: a file that changes while it is being sent fails its digest at the
//! receiver (and is discarded), while the other files of the session still complete.

use std::io;
use std::time::{Duration, Instant};

use ferry_engine::control::{FileEntry, FileStatus};
use ferry_engine::crypto::{CipherSuite, SessionSecret};
use ferry_engine::rate::{FixedFactory, RateLimits};
use ferry_engine::session::{BlockSource, Event, Receiver, Sender, SessionConfig};
use ferry_engine::sim::{MemSink, MemSource};
use ferry_engine::wire::MAX_DATAGRAM;

/// Serves file 1 with one byte changed once it has been read this many times.
struct ChangingSource {
    inner: MemSource,
    reads: usize,
    change_after: usize,
}

impl BlockSource for ChangingSource {
    fn read(&mut self, file: u32, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.reads += 1;
        if file == 1 && self.reads == self.change_after {
            self.inner.files[1][100] ^= 0xff;
        }
        self.inner.read(file, offset, buf)
    }
}

#[test]
fn a_file_modified_during_the_transfer_fails_its_digest_and_is_discarded() {
    let t0 = Instant::now();
    let secret = SessionSecret::new([5; 32]);
    let config =
        SessionConfig::new(9, CipherSuite::Aes128, RateLimits { target: 10_000_000_000, min: 0 });
    let mut sender = Sender::new(config.clone(), &secret, &FixedFactory, t0).unwrap();
    let mut receiver = Receiver::new(config.clone(), &secret, t0).unwrap();
    let files: Vec<Vec<u8>> = vec![vec![1; 5000], vec![2; 300_000], vec![3; 7000]];
    for (i, f) in files.iter().enumerate() {
        sender.add_file(FileEntry {
            id: 0,
            size: f.len() as u64,
            mtime_ns: 0,
            mode: 0,
            path: format!("f{i}"),
            part: None,
        });
    }
    sender.finish_manifest();
    // Reads: 4 packets of file 0, then file 1's packets; change file 1 after it was partly sent.
    let mut source = ChangingSource {
        inner: MemSource { files: files.clone(), fail_at: Vec::new() },
        reads: 0,
        change_after: 20,
    };
    let mut sink = MemSink::new(config.block_size, None);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut now = t0;
    let mut results = vec![None; 3];
    let mut complete = false;
    for _ in 0..100_000 {
        while let Some(m) = sender.poll_control() {
            receiver.handle_control(m, &mut sink);
        }
        while let Some(m) = receiver.poll_control() {
            sender.handle_control(m);
        }
        while let Some(n) = receiver.poll_transmit(now, &sink, &mut buf) {
            sender.handle_datagram(now, &mut buf[..n]);
        }
        while let Some(n) = sender.poll_transmit(now, &mut source, &mut buf) {
            receiver.handle_datagram(now, &mut buf[..n], &mut sink);
        }
        while let Some(e) = receiver.poll_event() {
            if let Event::FileDone { file, status, .. } = e {
                results[file as usize] = Some(status);
            }
        }
        while let Some(e) = sender.poll_event() {
            assert!(!matches!(e, Event::Failed(_)), "{e:?}");
            complete |= e == Event::Complete;
        }
        if complete {
            break;
        }
        now += Duration::from_micros(200);
    }
    assert!(complete, "the session completes");
    assert_eq!(
        results,
        vec![
            Some(FileStatus::Verified),
            Some(FileStatus::DigestMismatch),
            Some(FileStatus::Verified)
        ]
    );
    assert_eq!(
        sink.finished,
        vec![Some(true), Some(false), Some(true)],
        "the changed file is discarded"
    );
}
