//! FILE_SUM (docs/PROTOCOL.md 8.4): which chunks a sparse checksum samples, the checksums
//! themselves, and the receiver's rule that a sum comes right before its own FILE, once.

use std::time::Instant;

use ferry_engine::control::{ControlMessage, FileEntry, FileSum};
use ferry_engine::crypto::{CipherSuite, SessionSecret};
use ferry_engine::rate::RateLimits;
use ferry_engine::session::{
    Event, RESUME_CHUNK, Receiver, SessionConfig, SessionError, chunk_cv, file_sum, sparse_chunks,
};
use ferry_engine::sim::MemSink;

#[test]
fn sparse_checksums_sample_the_ends_and_six_between() {
    let c = RESUME_CHUNK;
    assert_eq!(sparse_chunks(c - 1), Vec::<u64>::new());
    assert_eq!(sparse_chunks(c), [0]);
    assert_eq!(sparse_chunks(3 * c + 5), [0, 1, 2]);
    assert_eq!(sparse_chunks(20 * c), [0, 2, 5, 8, 10, 13, 16, 19]);
    assert_eq!(sparse_chunks(1000 * c).len(), 8);
    assert_eq!(*sparse_chunks(1000 * c).last().unwrap(), 999);
}

#[test]
fn sums_are_chunk_values_or_the_files_digest() {
    let data: Vec<u8> = (0..3 * RESUME_CHUNK as usize + 9).map(|i| (i % 251) as u8).collect();
    let read = |at: u64, buf: &mut [u8]| {
        buf.copy_from_slice(&data[at as usize..at as usize + buf.len()]);
        Ok(())
    };
    assert_eq!(file_sum(1, data.len() as u64, read).unwrap(), None);
    let Some(FileSum::Sparse(chunks)) = file_sum(2, data.len() as u64, read).unwrap() else {
        panic!("sparse")
    };
    let c = RESUME_CHUNK as usize;
    assert_eq!(chunks[1], (1, chunk_cv(c as u64, &data[c..2 * c])));
    let full = file_sum(3, data.len() as u64, read).unwrap();
    assert_eq!(full, Some(FileSum::Full(*blake3::hash(&data).as_bytes())));
    // No whole chunk: the full digest even at level 2.
    let small = file_sum(2, 10, read).unwrap();
    assert_eq!(small, Some(FileSum::Full(*blake3::hash(&data[..10]).as_bytes())));
}

fn failed(messages: Vec<ControlMessage>) -> bool {
    let config =
        SessionConfig::new(5, CipherSuite::Aes128, RateLimits { target: 1_000_000_000, min: 0 });
    let mut r =
        Receiver::new(config.clone(), &SessionSecret::new([1; 32]), Instant::now()).unwrap();
    let mut sink = MemSink::new(config.block_size, None);
    for m in messages {
        r.handle_control(m, &mut sink);
    }
    std::iter::from_fn(|| r.poll_event())
        .any(|e| matches!(e, Event::Failed(SessionError::Protocol(_))))
}

#[test]
fn a_sum_comes_right_before_its_file_once() {
    let file = |id| {
        ControlMessage::File(FileEntry {
            id,
            size: 5,
            mtime_ns: 0,
            mode: 0,
            path: format!("f{id}"),
            part: None,
        })
    };
    let sum = |id| ControlMessage::FileSum { file: id, sum: FileSum::Full([0; 32]) };
    assert!(!failed(vec![sum(0), file(0), sum(1), file(1)]));
    assert!(failed(vec![sum(1), file(0)]), "a sum for a later file");
    assert!(failed(vec![sum(0), sum(0), file(0)]), "two sums");
    assert!(failed(vec![file(0), sum(0)]), "a sum after its file");
    assert!(failed(vec![sum(0), ControlMessage::ManifestEnd { files: 0 }]), "a sum with no file");
}
