//! The receiver state machine driven by a genuine sender through a hostile network: the fuzz
//! input decides, packet by packet, whether to deliver, drop, duplicate, delay, truncate or flip
//! bytes, when time passes, and which control frames arrive. Whatever happens, the receiver must
//! not panic, nothing unauthenticated may reach the sink, and what it reports verified must be
//! byte-exact.
#![no_main]

use std::time::{Duration, Instant};

use ferry_engine::control::{ControlMessage, FileEntry, FileStatus};
use ferry_engine::crypto::{CipherSuite, SessionSecret};
use ferry_engine::rate::{FixedFactory, RateLimits};
use ferry_engine::session::{Event, Receiver, Sender, SessionConfig};
use ferry_engine::sim::{MemSink, MemSource};
use ferry_engine::wire::MAX_DATAGRAM;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let mut ops = data.iter().copied();
    let now0 = Instant::now();
    let mut now = now0;
    let secret = SessionSecret::new([3; 32]);
    let mut config = SessionConfig::new(1, CipherSuite::Aes128, RateLimits { target: 1_000_000_000, min: 0 });
    config.block_size = 64 + usize::from(ops.next().unwrap_or(0));
    let sizes = [usize::from(ops.next().unwrap_or(0)) * 37, 0, usize::from(ops.next().unwrap_or(0)) * 5];
    let files: Vec<Vec<u8>> = sizes.iter().map(|&n| (0..n).map(|i| (i * 31 % 256) as u8).collect()).collect();
    let mut sender = Sender::new(config.clone(), &secret, &FixedFactory, now).unwrap();
    let mut receiver = Receiver::new(config.clone(), &secret, now).unwrap();
    for (i, f) in files.iter().enumerate() {
        sender.add_file(FileEntry { id: 0, size: f.len() as u64, mtime_ns: 0, mode: 0, path: format!("f{i}"), part: None });
    }
    sender.finish_manifest();
    let mut source = MemSource { files: files.clone(), fail_at: Vec::new() };
    let mut sink = MemSink::new(config.block_size, None);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut control: Vec<ControlMessage> = Vec::new();
    for _ in 0..2000 {
        let Some(op) = ops.next() else { break };
        while let Some(m) = sender.poll_control() {
            control.push(m);
        }
        match op % 8 {
            0 => now += Duration::from_micros(u64::from(ops.next().unwrap_or(1)) * 100),
            1 | 2 => {
                if let Some(n) = sender.poll_transmit(now, &mut source, &mut buf) {
                    held.push(buf[..n].to_vec());
                }
            }
            3 if !held.is_empty() => {
                let i = usize::from(ops.next().unwrap_or(0)) % held.len();
                let mut p = held.swap_remove(i);
                let mutate = ops.next().unwrap_or(0);
                if mutate & 1 == 1 && !p.is_empty() {
                    let at = usize::from(ops.next().unwrap_or(0)) % p.len();
                    p[at] ^= ops.next().unwrap_or(1) | 1;
                }
                if mutate & 2 == 2 {
                    p.truncate(usize::from(ops.next().unwrap_or(0)) % (p.len() + 1));
                }
                if mutate & 4 == 4 {
                    held.push(p.clone());
                }
                receiver.handle_datagram(now, &mut p, &mut sink);
            }
            4 if !control.is_empty() => {
                let m = control.remove(0);
                receiver.handle_control(m, &mut sink);
            }
            5 => {
                let mut garbage: Vec<u8> = ops.by_ref().take(40).collect();
                receiver.handle_datagram(now, &mut garbage, &mut sink);
            }
            6 => {
                if let Some(n) = receiver.poll_transmit(now, &sink, &mut buf) {
                    sender.handle_datagram(now, &mut buf[..n]);
                }
            }
            _ => {
                sender.handle_timeout(now);
                receiver.handle_timeout(now);
                while let Some(m) = receiver.poll_control() {
                    sender.handle_control(m);
                }
            }
        }
        while let Some(e) = receiver.poll_event() {
            if let Event::FileDone { file, status: FileStatus::Verified, .. } = e {
                assert_eq!(sink.files[file as usize], files[file as usize], "verified file differs");
            }
        }
        while sender.poll_event().is_some() {}
    }
    for (i, w) in sink.writes.iter().enumerate() {
        assert!(w.iter().all(|&n| n <= 1), "file {i}: a byte was written twice");
        for (j, &n) in w.iter().enumerate() {
            // Only authenticated blocks are written, so every written byte is the source's.
            assert!(n == 0 || sink.files[i][j] == files[i][j], "file {i} byte {j} forged");
        }
    }
});
