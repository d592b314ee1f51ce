//! Resume against damage, end to end (issue 14's fault list): an upload is killed part way,
//! then what it left on the server is altered (a flipped byte in the partial, the partial cut
//! short, the journal deleted, the journal of another file put in its place) or the source
//! changes; the rerun detects it, sends again what it must, and the result is exact. And
//! `--remove-after-transfer` killed part way keeps every source whose copy did not verify.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1 << 20;
const SIZE: usize = 16 * MIB + 99;

/// The partial and journal of `name` the server holds.
fn leftovers(s: &Server, name: &str) -> (PathBuf, PathBuf) {
    let find = |mark: &str| {
        let prefix = format!(".{name}.{mark}");
        std::fs::read_dir(s.docroot())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {mark} of {name}: {:?}", names(&s.docroot())))
    };
    (find("ferry-partial-"), find("ferry-journal-"))
}

/// Uploads `name` from `w` at 40 Mbit/s and kills the client once the server journaled six
/// chunks.
fn interrupted_upload(s: &Server, w: &Path, name: &str) {
    let mut child = spawn_cp(s, &["-l", "40M", name, "127.0.0.1:"], w);
    let start = Instant::now();
    while journal_len(&s.docroot(), name).is_none_or(|n| n < 72 + 48 * 6) {
        assert!(start.elapsed() < LIMIT, "the upload never journaled six chunks");
        assert!(child.try_wait().unwrap().is_none(), "the upload ended before it was killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&child, rustix::process::Signal::KILL);
    let _ = child.wait();
    assert!(!s.docroot().join(name).exists());
}

/// Runs the upload of `name` again; returns the bytes it sent anew.
fn rerun(s: &Server, w: &Path, name: &str) -> u64 {
    let out = cp(s, &["--host-key", &s.fingerprint, "--json", name, "127.0.0.1:"], w);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(digest(&s.docroot().join(name)), digest(&w.join(name)), "{name} is exact");
    let own = format!(".{name}.");
    assert!(!names(&s.docroot()).iter().any(|n| n.starts_with(&own)), "its partial and journal go");
    done_event(&out.stdout)["new_bytes"].as_u64().unwrap()
}

#[test]
fn altered_partials_and_journals_are_detected_and_resent() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    type Damage = fn(&Path, &Path, &Path);
    let cases: [(&str, Damage, u64); 4] = [
        // One flipped byte in chunk 1: that chunk (at least) is sent again, not all.
        (
            "flipped",
            |p, _, _| {
                let mut b = std::fs::read(p).unwrap();
                b[MIB + 5] ^= 1;
                std::fs::write(p, b).unwrap();
            },
            (SIZE - 3 * MIB) as u64,
        ),
        // Cut short: nothing of it is trusted.
        (
            "truncated",
            |p, _, _| {
                std::fs::File::options()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_len(3 * MIB as u64)
                    .unwrap();
            },
            SIZE as u64,
        ),
        ("journal-deleted", |_, j, _| std::fs::remove_file(j).unwrap(), SIZE as u64),
        // Another file's journal (same size, another name) in its place.
        (
            "journal-swapped",
            |_, j, other| std::fs::copy(other, j).map(|_| ()).unwrap(),
            SIZE as u64,
        ),
    ];
    // The other file's journal, for the last case.
    std::fs::write(w.join("other.bin"), data(SIZE, 1)).unwrap();
    interrupted_upload(&s, w, "other.bin");
    let (_, other_journal) = leftovers(&s, "other.bin");
    let kept = w.join("other.journal");
    std::fs::copy(&other_journal, &kept).unwrap();
    for (i, (what, damage, most)) in cases.into_iter().enumerate() {
        let name = format!("{what}.bin");
        std::fs::write(w.join(&name), data(SIZE, 10 + i as u32)).unwrap();
        interrupted_upload(&s, w, &name);
        let (partial, journal) = leftovers(&s, &name);
        damage(&partial, &journal, &kept);
        let sent = rerun(&s, w, &name);
        assert!(sent <= most, "{what}: {sent} bytes sent again, at most {most}");
        if what == "flipped" {
            assert!(sent >= MIB as u64, "{what}: the damaged chunk was sent again ({sent})");
        }
    }
}

#[test]
fn a_source_changed_between_attempts_starts_again() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::write(w.join("moving.bin"), data(SIZE, 3)).unwrap();
    interrupted_upload(&s, w, "moving.bin");
    // The same size, new bytes, a new modification time: another version of the source.
    std::fs::write(w.join("moving.bin"), data(SIZE, 4)).unwrap();
    let t = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(w.join("moving.bin"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    assert_eq!(rerun(&s, w, "moving.bin"), SIZE as u64, "nothing of the old version is kept");
}

#[test]
fn remove_after_transfer_killed_part_way_keeps_what_did_not_verify() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::create_dir(w.join("tree")).unwrap();
    for i in 0..20 {
        std::fs::write(w.join(format!("tree/s{i:02}")), data(40_000, i)).unwrap();
    }
    std::fs::write(w.join("tree/z-big"), data(SIZE, 77)).unwrap();
    let originals: Vec<(String, String)> = tree(&w.join("tree"))
        .into_iter()
        .map(|n| (n.clone(), digest(&w.join("tree").join(&n))))
        .collect();
    let mut child =
        spawn_cp(&s, &["-l", "40M", "--remove-after-transfer", "tree", "127.0.0.1:"], w);
    wait_for("the big file to be under way", || {
        journal_len(&s.docroot().join("tree"), "z-big").is_some_and(|n| n > 72 + 48 * 3)
    });
    signal(&child, rustix::process::Signal::KILL);
    let _ = child.wait();
    for (name, want) in &originals {
        let here = w.join("tree").join(name);
        if here.exists() {
            continue;
        }
        // Removed here: its copy on the server verified.
        let there = s.docroot().join("tree").join(name);
        assert!(there.exists(), "{name} was removed but is not on the server");
        assert_eq!(&digest(&there), want, "{name} on the server is exact");
    }
    // (Ferry removes sources once the session reported every outcome, so a client killed
    // part way removes none; what matters is that none it removed lacks a verified copy.)
    assert!(w.join("tree/z-big").exists(), "the unfinished file is kept");
}
