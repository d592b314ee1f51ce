//! `ferry cp --file-crypt`: client-side envelopes end to end against a real `ferry serve`. The
//! server stores only envelopes (no plaintext, no key); `ferry crypt decrypt` opens what it
//! stores; a download with `decrypt` lands the plaintext; a wrong passphrase, something that is
//! not an envelope and a cut envelope leave nothing and exit 11, 10 and 13.

mod common;

use std::path::Path;

use common::*;

const PASS: (&str, &str) = ("FERRY_FILEPASS", "tide pool 7 lanterns");

/// Every file below `dir`, as (path relative to it, bytes).
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> =
        tree(dir).into_iter().map(|p| (p.clone(), std::fs::read(dir.join(&p)).unwrap())).collect();
    out.sort();
    out
}

#[test]
fn envelopes_go_up_sealed_and_come_down_opened() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let mut big = data(5 << 20, 61);
    big[3_000_000..3_000_016].copy_from_slice(b"CANARY-PLAINTEXT");
    std::fs::create_dir_all(w.join("tree/sub")).unwrap();
    std::fs::write(w.join("tree/big.bin"), &big).unwrap();
    std::fs::write(w.join("tree/sub/small.txt"), b"CANARY-PLAINTEXT small").unwrap();
    std::fs::write(w.join("tree/empty"), b"").unwrap();

    let up = cp_env(&s, &["-q", "--file-crypt", "encrypt", "tree", "127.0.0.1:"], w, &[PASS]);
    assert!(up.status.success(), "{}", stderr(&up));
    let stored = files(&s.docroot());
    let names: Vec<_> = stored.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["tree/big.bin.ferry", "tree/empty.ferry", "tree/sub/small.txt.ferry"]);
    for (p, bytes) in &stored {
        assert!(bytes.starts_with(b"FERRYENV"), "{p} is an envelope");
        assert!(!bytes.windows(16).any(|w| w == b"CANARY-PLAINTEXT"), "{p} holds plaintext");
    }
    // `ferry crypt` opens what the transfer sealed.
    let opened = w.join("opened.bin");
    let env = s.docroot().join("tree/big.bin.ferry");
    let out = run_env(
        &["crypt", "decrypt", env.to_str().unwrap(), "-o", opened.to_str().unwrap()],
        w,
        &[PASS],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&opened).unwrap(), big);

    // Down with decrypt: the plaintext under the names without the suffix.
    let dest = w.join("dest");
    std::fs::create_dir(&dest).unwrap();
    let down = cp_env(
        &s,
        &["-q", "--file-crypt", "decrypt", "127.0.0.1:tree", dest.to_str().unwrap()],
        w,
        &[PASS],
    );
    assert!(down.status.success(), "{}", stderr(&down));
    assert_eq!(files(&dest.join("tree")), files(&w.join("tree")));
    // Without it, the envelopes land as they are.
    let raw = w.join("raw");
    std::fs::create_dir(&raw).unwrap();
    let down = cp_env(&s, &["-q", "127.0.0.1:tree", raw.to_str().unwrap()], w, &[]);
    assert!(down.status.success(), "{}", stderr(&down));
    assert_eq!(
        files(&raw.join("tree")),
        stored.iter().map(|(p, b)| (p["tree/".len()..].to_owned(), b.clone())).collect::<Vec<_>>()
    );
}

#[test]
fn what_will_not_open_leaves_nothing_and_says_why() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::write(w.join("doc.bin"), data(300_000, 5)).unwrap();
    let up = cp_env(&s, &["-q", "--file-crypt", "encrypt", "doc.bin", "127.0.0.1:"], w, &[PASS]);
    assert!(up.status.success(), "{}", stderr(&up));
    let root = s.docroot();
    let env = std::fs::read(root.join("doc.bin.ferry")).unwrap();
    std::fs::write(root.join("plain.txt.ferry"), b"not sealed at all").unwrap();
    std::fs::write(root.join("cut.bin.ferry"), &env[..env.len() - 5000]).unwrap();
    let cases = [
        ("doc.bin.ferry", ("FERRY_FILEPASS", "not the passphrase"), 11, "wrong passphrase"),
        ("plain.txt.ferry", PASS, 10, "not a ferry envelope"),
        ("cut.bin.ferry", PASS, 13, "truncated"),
    ];
    for (name, pass, code, says) in cases {
        let dest = tempfile::tempdir().unwrap();
        let from = format!("127.0.0.1:{name}");
        let out = cp_env(
            &s,
            &["-q", "--file-crypt", "decrypt", &from, dest.path().to_str().unwrap()],
            w,
            &[pass],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{name}: {err}");
        assert!(err.to_lowercase().contains(says), "{name}: {err}");
        assert_eq!(names(dest.path()), Vec::<String>::new(), "{name}: nothing is left");
    }
}

#[test]
fn the_mode_must_fit_the_direction_and_a_passphrase_must_exist() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::write(w.join("f"), b"x").unwrap();
    let out = cp_env(&s, &["--file-crypt", "decrypt", "f", "127.0.0.1:"], w, &[PASS]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("opens envelopes in a download"), "{}", stderr(&out));
    let out = cp_env(&s, &["--file-crypt", "encrypt", "127.0.0.1:f", "."], w, &[PASS]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // No FERRY_FILEPASS, no keystore, no terminal.
    let out = cp_env(&s, &["--file-crypt", "encrypt", "f", "127.0.0.1:"], w, &[]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("FERRY_FILEPASS"), "{}", stderr(&out));
    assert_eq!(names(&s.docroot()), Vec::<String>::new());
}

/// Starts an encrypted upload of `src` at 40 Mbit/s and kills the client (SIGKILL) once the
/// server's journal of its envelope records six chunks.
fn upload_killed_part_way(s: &Server, w: &Path, src: &str, pass: (&str, &str)) {
    let args = ["-l", "40M", "--file-crypt", "encrypt", src, "127.0.0.1:"];
    let mut child = spawn_cp_env(s, &args, w, &[pass]);
    let stored = format!("{src}.ferry");
    let start = std::time::Instant::now();
    while journal_len(&s.docroot(), &stored).is_none_or(|n| n < 72 + 48 * 6) {
        assert!(start.elapsed() < LIMIT, "the upload never journaled six chunks");
        assert!(child.try_wait().unwrap().is_none(), "the upload ended before it was killed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    signal(&child, rustix::process::Signal::KILL);
    let _ = child.wait();
    assert!(!s.docroot().join(&stored).exists(), "no envelope under the final name yet");
}

/// Resume with `--file-crypt encrypt`: the rerun gets back the header of the envelope the
/// server holds part of, seals the rest under it, and sends only what is missing; the stored
/// envelope opens to the exact file. Under another passphrase the held part is refused: the
/// file fails with a reason saying so and leaves nothing; the next run sends it whole.
#[test]
fn an_interrupted_encrypted_upload_resumes_under_the_held_envelope() {
    const MIB: usize = 1 << 20;
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let size = 24 * MIB + 4321;
    let plain = data(size, 90);
    std::fs::write(w.join("up.bin"), &plain).unwrap();
    let opens_to = |pass: (&str, &str)| {
        let out_path = w.join("check.bin");
        let _ = std::fs::remove_file(&out_path);
        let env = s.docroot().join("up.bin.ferry");
        let o = run_env(
            &["crypt", "decrypt", env.to_str().unwrap(), "-o", out_path.to_str().unwrap()],
            w,
            &[pass],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(&out_path).unwrap() == plain
    };

    upload_killed_part_way(&s, w, "up.bin", PASS);
    let args = ["--json", "--file-crypt", "encrypt", "up.bin", "127.0.0.1:"];
    let out = cp_env(&s, &args, w, &[PASS]);
    assert!(out.status.success(), "{}", stderr(&out));
    let new = done_event(&out.stdout)["new_bytes"].as_u64().unwrap();
    assert!(new <= (size - 4 * MIB) as u64, "resumed: {new} of {size} bytes sent again");
    assert!(opens_to(PASS), "the resumed envelope opens to the file");
    assert_eq!(names(&s.docroot()), ["up.bin.ferry"]);

    // Another passphrase on the rerun.
    std::fs::remove_file(s.docroot().join("up.bin.ferry")).unwrap();
    upload_killed_part_way(&s, w, "up.bin", PASS);
    let other = ("FERRY_FILEPASS", "a different passphrase");
    let out = cp_env(&s, &args, w, &[other]);
    assert_eq!(out.status.code(), Some(39), "{}", stderr(&out));
    let failed = &done_event(&out.stdout)["failed"][0];
    assert!(failed["reason"].as_str().unwrap().contains("earlier envelope of up.bin"), "{failed}");
    assert_eq!(names(&s.docroot()), Vec::<String>::new(), "the held part is gone");
    let out = cp_env(&s, &args, w, &[other]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        done_event(&out.stdout)["new_bytes"].as_u64().unwrap(),
        size as u64 + 1024 + 28 * 385
    );
    assert!(opens_to(other));
}
