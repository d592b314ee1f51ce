//! `ferry serve` and `ferry cp` end to end: two real processes over loopback (ephemeral ports),
//! uploads and downloads of files, an empty file, unicode names and a directory tree with
//! digests compared; an unknown or mismatched host key, an unauthorised client key, paths that
//! escape the docroot and an existing destination file each refused with their own exit code,
//! nothing written. Every process is bounded in time and killed on drop.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

fn server() -> Server {
    Server::start()
}

#[test]
fn upload_and_download_files_and_trees() {
    let s = server();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    std::fs::write(l.join("big.bin"), data(3 << 20, 1)).unwrap();
    std::fs::write(l.join("empty"), b"").unwrap();
    std::fs::write(l.join("ünïcödé ✓.txt"), "héllo wörld\n").unwrap();
    std::fs::create_dir_all(l.join("tree/sub")).unwrap();
    std::fs::write(l.join("tree/a"), data(5000, 2)).unwrap();
    std::fs::write(l.join("tree/sub/b"), data(1413, 3)).unwrap();
    std::fs::write(l.join("tree/sub/empty"), b"").unwrap();

    let fp = s.fingerprint.clone();
    let dest = format!("{USER}@127.0.0.1:.");
    let out = cp(&s, &["--host-key", &fp, "big.bin", "empty", "ünïcödé ✓.txt", "tree", &dest], l);
    assert!(out.status.success(), "upload: {}", stderr(&out));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("upload complete: 6 files"), "{summary}");
    let root = s.docroot();
    let expected = ["big.bin", "empty", "tree/a", "tree/sub/b", "tree/sub/empty", "ünïcödé ✓.txt"];
    assert_eq!(tree(&root), expected);
    for name in expected {
        assert_eq!(digest(&root.join(name)), digest(&l.join(name)), "{name}");
    }

    // Download each kind back: a file into a directory, a file under a new name, a tree.
    let back = tempfile::tempdir().unwrap();
    let b = back.path();
    for (src, dst) in
        [("big.bin", "."), ("ünïcödé ✓.txt", "renamed.txt"), ("empty", "."), ("tree", ".")]
    {
        let remote = format!("127.0.0.1:{src}");
        let out = cp(&s, &["--host-key", &fp, &remote, dst], b);
        assert!(out.status.success(), "download {src}: {}", stderr(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("download complete"));
    }
    assert_eq!(
        tree(b),
        ["big.bin", "empty", "renamed.txt", "tree/a", "tree/sub/b", "tree/sub/empty"]
    );
    assert_eq!(digest(&b.join("big.bin")), digest(&l.join("big.bin")));
    assert_eq!(digest(&b.join("renamed.txt")), digest(&l.join("ünïcödé ✓.txt")));
    assert_eq!(digest(&b.join("tree/sub/b")), digest(&l.join("tree/sub/b")));

    // Every cipher suite moves the bytes.
    for c in ["aes192", "aes256", "none"] {
        let remote = format!("127.0.0.1:{c}.bin");
        let out = cp(&s, &["--host-key", &fp, "-c", c, "-l", "500m", "big.bin", &remote], l);
        assert!(out.status.success(), "upload with {c}: {}", stderr(&out));
        assert_eq!(digest(&root.join(format!("{c}.bin"))), digest(&l.join("big.bin")));
    }
}

#[test]
fn unknown_or_mismatched_host_key_is_refused_with_its_fingerprint() {
    let s = server();
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("f"), b"data").unwrap();
    let out = cp(&s, &["f", "127.0.0.1:."], local.path());
    assert_eq!(out.status.code(), Some(31), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&s.fingerprint), "{err}");
    assert!(err.contains(&format!("--host-key {}", s.fingerprint)), "{err}");

    let other = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let out = cp(&s, &["--host-key", other, "f", "127.0.0.1:."], local.path());
    assert_eq!(out.status.code(), Some(31), "{}", stderr(&out));
    assert!(stderr(&out).contains(&s.fingerprint));
    assert!(tree(&s.docroot()).is_empty());

    // A known-hosts file pins it too: a wrong entry is refused, the right one works.
    let kh = local.path().join("known_hosts");
    std::fs::write(&kh, format!("# pins\n127.0.0.1 {other}\n")).unwrap();
    let khs = kh.to_str().unwrap();
    let out = cp(&s, &["--known-hosts", khs, "f", "127.0.0.1:."], local.path());
    assert_eq!(out.status.code(), Some(31), "{}", stderr(&out));
    let line = format!("127.0.0.1:{} {}", s.port, s.fingerprint);
    std::fs::write(&kh, format!("127.0.0.1 {other}\n{line}\n")).unwrap();
    let out = cp(&s, &["--known-hosts", khs, "f", "127.0.0.1:."], local.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(tree(&s.docroot()), ["f"]);
}

#[test]
fn unauthorised_client_key_is_refused() {
    let s = server();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    std::fs::write(l.join("f"), b"data").unwrap();
    keygen(&l.join("stranger"));
    let port = s.port.to_string();
    let out = run(
        &["cp", "-i", "stranger", "-P", &port, "--host-key", &s.fingerprint, "f", "127.0.0.1:."],
        l,
    );
    assert_eq!(out.status.code(), Some(32), "{}", stderr(&out));
    assert!(stderr(&out).contains("refused the key"), "{}", stderr(&out));
    assert!(tree(&s.docroot()).is_empty());
}

/// The client names its transfer user (`user@host`, `--user`); the server checks the key
/// against that user and refuses a user it does not serve, without telling which part failed.
#[test]
fn a_user_the_server_does_not_serve_is_refused() {
    let s = server();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    std::fs::write(l.join("f"), b"data").unwrap();
    let fp = s.fingerprint.clone();
    let out = cp(&s, &["--host-key", &fp, "f", "mallory@127.0.0.1:."], l);
    assert_eq!(out.status.code(), Some(32), "{}", stderr(&out));
    assert!(stderr(&out).contains("for user \"mallory\""), "{}", stderr(&out));
    assert!(stderr(&out).contains("transfer user \"mallory\""), "{}", stderr(&out));
    assert!(tree(&s.docroot()).is_empty());
    wait_for("the refusal event", || s.events().iter().any(|e| e["event"] == "setup_failed"));
    let refused = s.events().into_iter().find(|e| e["event"] == "setup_failed").unwrap();
    assert!(refused["reason"].as_str().unwrap().contains("no transfer user"), "{refused}");
    // Two names for the user, or a name no server could have: usage errors, nothing sent.
    let out = cp(&s, &["--host-key", &fp, "--user", "tester", "f", "bob@127.0.0.1:."], l);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = cp(&s, &["--host-key", &fp, "f", "-rf@127.0.0.1:."], l);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // Its own user, by either spelling.
    let out = cp(&s, &["--host-key", &fp, "--user", USER, "f", "127.0.0.1:a"], l);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cp(&s, &["--host-key", &fp, "f", &format!("{USER}@127.0.0.1:b")], l);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(tree(&s.docroot()), ["a", "b"]);
}

#[test]
fn paths_outside_the_docroot_and_existing_files_are_refused() {
    let s = server();
    let root = s.docroot();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("link")).unwrap();
    std::fs::write(root.join("keep"), b"original").unwrap();
    std::fs::write(outside.path().join("secret"), b"secret").unwrap();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    std::fs::write(l.join("keep"), b"replacement").unwrap();
    let fp = s.fingerprint.clone();

    for dest in ["127.0.0.1:../escape", "127.0.0.1:link", "127.0.0.1:link/x", "127.0.0.1:a/../.."] {
        let out = cp(&s, &["--host-key", &fp, "keep", dest], l);
        assert_eq!(out.status.code(), Some(35), "{dest}: {}", stderr(&out));
    }
    for src in ["127.0.0.1:../x", "127.0.0.1:link/secret", "127.0.0.1:missing"] {
        let out = cp(&s, &["--host-key", &fp, src, "."], l);
        assert_eq!(out.status.code(), Some(35), "{src}: {}", stderr(&out));
        assert!(!stderr(&out).contains(root.to_str().unwrap()), "server path leaked");
    }
    assert_eq!(tree(outside.path()), ["secret"]);

    // An existing file is never overwritten, and no partial file is left behind. The file fails
    // alone, by name (exit 39: some files failed).
    let out = cp(&s, &["--host-key", &fp, "keep", "127.0.0.1:."], l);
    assert_eq!(out.status.code(), Some(39), "{}", stderr(&out));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(std::fs::read(root.join("keep")).unwrap(), b"original");
    let names: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn a_100_mib_file_round_trips() {
    let s = server();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    std::fs::write(l.join("large"), data(100 << 20, 7)).unwrap();
    let fp = s.fingerprint.clone();
    let out = cp(&s, &["--host-key", &fp, "-l", "2g", "large", "127.0.0.1:."], l);
    assert!(out.status.success(), "upload: {}", stderr(&out));
    assert_eq!(digest(&s.docroot().join("large")), digest(&l.join("large")));
    std::fs::create_dir(l.join("back")).unwrap();
    let out = cp(&s, &["--host-key", &fp, "-l", "2g", "127.0.0.1:large", "back"], l);
    assert!(out.status.success(), "download: {}", stderr(&out));
    assert_eq!(digest(&l.join("back/large")), digest(&l.join("large")));
}

#[test]
fn client_killed_mid_upload_leaves_no_file_on_the_server() {
    // `-k 0` in the interruption tests: they are about a session that does not resume (nothing
    // left behind); what resuming leaves and reuses is `an_interrupted_transfer_resumes_...`.
    let s = server();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    std::fs::write(l.join("slow"), data(20 << 20, 9)).unwrap();
    // 20 MiB at 10 Mbit/s: about 17 s, plenty of time to kill it midway.
    let mut client =
        spawn_cp(&s, &["-k", "0", "-l", "10m", "--policy", "fixed", "slow", "127.0.0.1:."], l);
    let root = s.docroot();
    wait_for("the partial file", || names(&root).iter().any(|n| n.contains(".ferry-partial-")));
    client.kill().unwrap();
    client.wait().unwrap();
    // The server notices (QUIC idle timeout) and removes the partial; nothing lands.
    wait_for("the partial file to be removed", || names(&root).is_empty());
    assert!(!root.join("slow").exists());
}

#[test]
fn server_killed_mid_download_fails_clearly_and_leaves_nothing() {
    let mut s = server();
    std::fs::write(s.docroot().join("slow"), data(20 << 20, 11)).unwrap();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    let client = spawn_cp(
        &s,
        &["--retry", "0", "-k", "0", "-l", "10m", "--policy", "fixed", "127.0.0.1:slow", "."],
        l,
    );
    wait_for("the partial file", || names(l).iter().any(|n| n.contains(".ferry-partial-")));
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let (status, err) = finish(client, "the client (it should give up)");
    assert_eq!(status.code(), Some(33), "{err}");
    assert!(err.contains("transfer failed"), "{err}");
    assert!(names(l).is_empty(), "{:?}", names(l));
}

#[test]
fn concurrent_sessions_on_one_server() {
    let s = server();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    let mut clients = Vec::new();
    for i in 0..3u32 {
        let name = format!("c{i}");
        std::fs::write(l.join(&name), data(2 << 20, i)).unwrap();
        clients.push(spawn_cp(&s, &[&name, "127.0.0.1:."], l));
    }
    for mut c in clients {
        let start = Instant::now();
        let status = loop {
            if let Some(st) = c.try_wait().unwrap() {
                break st;
            }
            if start.elapsed() > LIMIT {
                let _ = c.kill();
                panic!("a concurrent upload hung");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success());
    }
    for i in 0..3 {
        let name = format!("c{i}");
        assert_eq!(digest(&s.docroot().join(&name)), digest(&l.join(&name)));
    }
}

#[test]
fn an_existing_openssh_key_is_an_identity_and_keygen_never_overwrites() {
    let s = server();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    // A key written by OpenSSH's ssh-keygen (test data), authorised on the server.
    let data_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let key = l.join("openssh_key");
    std::fs::write(&key, std::fs::read(data_dir.join("ed25519_openssh")).unwrap()).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let pubkey = std::fs::read_to_string(data_dir.join("ed25519_openssh.pub")).unwrap();
    let ak = s.dir.path().join("authorized_keys");
    let mut lines = std::fs::read_to_string(&ak).unwrap();
    lines.push_str(&pubkey);
    std::fs::write(&ak, lines).unwrap();
    std::fs::write(l.join("f"), b"via an OpenSSH key").unwrap();
    let port = s.port.to_string();
    let out = run(
        &["cp", "-i", "openssh_key", "-P", &port, "--host-key", &s.fingerprint, "f", "127.0.0.1:."],
        l,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(s.docroot().join("f")).unwrap(), b"via an OpenSSH key");

    // keygen: 0600 private key, .pub line, fingerprint printed; never overwrites.
    let out = run(&["keygen", "-f", "new"], l);
    assert!(out.status.success());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(l.join("new")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert!(std::fs::read_to_string(l.join("new.pub")).unwrap().starts_with("ssh-ed25519 "));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SHA256:"));
    let before = std::fs::read(l.join("new")).unwrap();
    let out = run(&["keygen", "-f", "new"], l);
    assert_eq!(out.status.code(), Some(36), "{}", stderr(&out));
    assert!(stderr(&out).contains("already exists"));
    assert_eq!(std::fs::read(l.join("new")).unwrap(), before);
    // A private key readable by others is refused as an identity.
    std::fs::set_permissions(l.join("new"), std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .unwrap();
    let out =
        run(&["cp", "-i", "new", "-P", &port, "--host-key", &s.fingerprint, "f", "127.0.0.1:."], l);
    assert_eq!(out.status.code(), Some(36), "{}", stderr(&out));
}

#[test]
fn nothing_listening_is_a_connection_error() {
    // A port that was just free: bind, note it, release it.
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    keygen(&l.join("id"));
    std::fs::write(l.join("f"), b"x").unwrap();
    let port = port.to_string();
    let fp = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let out = run(&["cp", "-i", "id", "-P", &port, "--host-key", fp, "f", "127.0.0.1:."], l);
    assert_eq!(out.status.code(), Some(38), "{}", stderr(&out));
    assert!(stderr(&out).contains("nothing is listening on UDP port"), "{}", stderr(&out));
}

/// A host that does not answer at all (here: a socket that swallows every datagram, as a
/// firewall dropping UDP would) is told apart from a closed port: exit 30, "no answer".
#[test]
fn a_silent_host_is_unreachable_not_closed() {
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sink.local_addr().unwrap().port().to_string();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    keygen(&l.join("id"));
    std::fs::write(l.join("f"), b"x").unwrap();
    let fp = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let out = run(
        &["cp", "--retry", "0", "-i", "id", "-P", &port, "--host-key", fp, "f", "127.0.0.1:."],
        l,
    );
    assert_eq!(out.status.code(), Some(30), "{}", stderr(&out));
    assert!(stderr(&out).contains("no answer from 127.0.0.1:"), "{}", stderr(&out));
    drop(sink);
}

#[test]
fn a_tree_of_many_small_files() {
    let s = server();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    for d in 0..10 {
        std::fs::create_dir_all(l.join(format!("many/d{d}"))).unwrap();
        for f in 0..150 {
            std::fs::write(l.join(format!("many/d{d}/f{f}")), data(100 + f, d as u32)).unwrap();
        }
    }
    let fp = s.fingerprint.clone();
    let out = cp(&s, &["--host-key", &fp, "many", "127.0.0.1:."], l);
    assert!(out.status.success(), "upload: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1500 files"));
    std::fs::create_dir(l.join("back")).unwrap();
    let out = cp(&s, &["--host-key", &fp, "127.0.0.1:many", "back"], l);
    assert!(out.status.success(), "download: {}", stderr(&out));
    let theirs = tree(&l.join("back/many"));
    assert_eq!(theirs.len(), 1500);
    assert_eq!(theirs, tree(&l.join("many")));
    for name in theirs.iter().step_by(37) {
        assert_eq!(digest(&l.join("back/many").join(name)), digest(&l.join("many").join(name)));
    }
}

/// Garbage and forged datagrams sprayed at both data ports during a download: the transfer
/// completes intact and the client's `done` event counts the forged datagrams it dropped.
///
/// Plain garbage comes from an ordinary socket (the kernel keeps it away from the connected data
/// sockets; at the server's shared port it reaches QUIC, which discards it). Forged datagrams
/// carry the server's address as their source and the session's real id in a well-formed header,
/// so they reach the client's data socket and must fail authentication; that needs a raw socket,
/// so that half runs as root only (CI runs as root) and says so otherwise.
#[test]
fn garbage_and_spoofed_datagrams_do_not_disturb_a_transfer() {
    let s = server();
    let want = data(24 << 20, 13);
    std::fs::write(s.docroot().join("sprayed"), &want).unwrap();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    // 24 MiB at 40 Mbit/s: about 5 s of transfer to spray into.
    let args = ["--json", "-l", "40m", "--policy", "fixed", "127.0.0.1:sprayed", "."];
    let mut client = spawn_cp(&s, &args, l);
    let mut events = BufReader::new(client.stdout.take().unwrap()).lines();
    let session: serde_json::Value = loop {
        let line = events.next().expect("a session event").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["event"] == "session" {
            break v;
        }
    };
    let client_data: std::net::SocketAddr =
        session["local_data"].as_str().unwrap().parse().unwrap();
    let server_data: std::net::SocketAddr =
        session["remote_data"].as_str().unwrap().parse().unwrap();
    assert_eq!(server_data.port(), s.port, "data shares the server's one UDP port");
    let session_id = u64::from_str_radix(session["session_id"].as_str().unwrap(), 16).unwrap();

    let garbage = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = |buf: &mut [u8]| {
        for b in buf {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    };
    let mut buf = [0u8; 1200];
    for i in 0..400 {
        noise(&mut buf);
        let len = 1 + i % buf.len();
        let _ = garbage.send_to(&buf[..len], client_data);
        let _ = garbage.send_to(&buf[..len], server_data);
    }

    let root = rustix::process::geteuid().is_root();
    let mut forged = 0u64;
    if root {
        use rustix::net::{AddressFamily, SendFlags, SocketType, ipproto, sendto, socket};
        let raw = socket(AddressFamily::INET, SocketType::RAW, Some(ipproto::UDP)).unwrap();
        let to = std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0);
        for i in 0..600u64 {
            // UDP header (checksum 0: none, allowed over IPv4), then the datagram.
            let mut pkt = vec![0u8; 8 + 1100];
            noise(&mut pkt[8..]);
            pkt[0..2].copy_from_slice(&server_data.port().to_be_bytes());
            pkt[2..4].copy_from_slice(&client_data.port().to_be_bytes());
            let len = pkt.len() as u16;
            pkt[4..6].copy_from_slice(&len.to_be_bytes());
            if i % 2 == 0 {
                // A well-formed DATA header of this very session: only the tag can tell.
                pkt[8] = ferry_engine::wire::VERSION;
                pkt[9] = 1;
                pkt[10..18].copy_from_slice(&session_id.to_be_bytes());
                pkt[18..26].copy_from_slice(&(i * 7919).to_be_bytes());
            }
            sendto(&raw, &pkt, SendFlags::empty(), &to).unwrap();
            forged += 1;
        }
    } else {
        eprintln!("note: not root, so the spoofed-source half of this test is skipped");
    }

    // Bounded wait first (the few event lines fit in the pipe), then the rest of the events.
    let (status, err) = finish(client, "the sprayed transfer");
    let rest: Vec<String> = events.map(Result::unwrap).collect();
    assert!(status.success(), "{err}\nevents: {rest:?}");
    let done: serde_json::Value =
        rest.iter().rev().find_map(|l| serde_json::from_str(l).ok()).expect("a done event");
    assert_eq!(done["event"], "done", "{done}");
    assert_eq!(digest(&l.join("sprayed")), hex::encode(Sha256::digest(&want)));
    let dropped = &done["dropped"];
    let counted: u64 = ["malformed", "foreign", "replay", "auth"]
        .iter()
        .map(|k| dropped[k].as_u64().unwrap())
        .sum();
    eprintln!("sprayed {forged} forged datagrams; the client dropped {dropped}");
    // Every forged datagram that reached the client is dropped and counted, none is accepted.
    assert!(counted <= forged, "{done}");
    if root {
        assert!(dropped["auth"].as_u64().unwrap() > 0, "forged headers must fail the tag: {done}");
        assert!(dropped["malformed"].as_u64().unwrap() > 0, "noise must be malformed: {done}");
    }
}

/// The server shares its port with its own data sockets, but a second server cannot take the
/// port (it would silently receive half the connections): it fails like on any busy port.
#[test]
fn a_second_server_on_a_busy_port_is_refused() {
    let s = server();
    let p = s.dir.path();
    let listen = format!("127.0.0.1:{}", s.port);
    let out = run(
        &[
            "serve",
            "--listen",
            &listen,
            "--docroot",
            "root",
            "--authorized-keys",
            "authorized_keys",
        ],
        p,
    );
    assert_eq!(out.status.code(), Some(30), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("cannot listen on {listen}")), "{}", stderr(&out));
}

/// SIGTERM to the server mid-upload: it ends the session, removes the partial file, tells the
/// client why and exits 0; the client fails with the server's reason.
#[test]
fn server_terminated_mid_upload_cleans_up_and_tells_the_client() {
    let mut s = server();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    std::fs::write(l.join("slow"), data(20 << 20, 17)).unwrap();
    let client = spawn_cp(
        &s,
        &["--retry", "0", "-k", "0", "-l", "10m", "--policy", "fixed", "slow", "127.0.0.1:."],
        l,
    );
    let root = s.docroot();
    wait_for("the partial file", || names(&root).iter().any(|n| n.contains(".ferry-partial-")));
    signal(&s.child, rustix::process::Signal::TERM);
    let start = Instant::now();
    let server_status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < LIMIT, "the server did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(server_status.success(), "graceful shutdown exits 0: {server_status:?}");
    assert!(names(&root).is_empty(), "partial left behind: {:?}", names(&root));
    let (status, err) = finish(client, "the client");
    assert_eq!(status.code(), Some(33), "{err}");
    assert!(err.contains("the server is shutting down"), "{err}");
}

/// Ctrl-C (SIGINT) to the client mid-download: the partial file is removed, the exit code is
/// 130, and the server is told (it logs the cancellation and keeps serving).
#[test]
fn client_interrupted_mid_download_removes_its_partial_file() {
    let s = server();
    std::fs::write(s.docroot().join("slow"), data(20 << 20, 19)).unwrap();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    let client =
        spawn_cp(&s, &["-k", "0", "-l", "10m", "--policy", "fixed", "127.0.0.1:slow", "."], l);
    wait_for("the partial file", || names(l).iter().any(|n| n.contains(".ferry-partial-")));
    signal(&client, rustix::process::Signal::INT);
    let (status, err) = finish(client, "the client");
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("cancelled") && err.contains("SIGINT"), "{err}");
    assert!(names(l).is_empty(), "partial left behind: {:?}", names(l));
    // The server is still there and serves the next client.
    let out = cp(&s, &["--host-key", &s.fingerprint, "127.0.0.1:slow", "."], l);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(digest(&l.join("slow")), digest(&s.docroot().join("slow")));
}

/// An upload naming one destination file that exists is refused at set-up (code 16, exit 35:
/// known before any byte is sent), not accepted and then failed (PROTOCOL-FINDINGS 4).
#[test]
fn an_existing_destination_file_is_refused_at_setup() {
    let s = server();
    std::fs::write(s.docroot().join("keep"), b"original").unwrap();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    std::fs::write(l.join("new"), b"replacement").unwrap();
    // Without resume (nothing could make it the same file) and no --overwrite: at set-up.
    let out = cp(&s, &["--host-key", &s.fingerprint, "-k", "0", "new", "127.0.0.1:keep"], l);
    assert_eq!(out.status.code(), Some(35), "{}", stderr(&out));
    assert!(stderr(&out).contains("already exists on the server"), "{}", stderr(&out));
    assert_eq!(std::fs::read(s.docroot().join("keep")).unwrap(), b"original");
    assert_eq!(names(&s.docroot()), ["keep"]);
    // With resume (the default) the file's size decides once it is announced: another size
    // fails alone, and the original is kept.
    let out = cp(&s, &["--host-key", &s.fingerprint, "new", "127.0.0.1:keep"], l);
    assert_eq!(out.status.code(), Some(39), "{}", stderr(&out));
    assert!(stderr(&out).contains("already exists at the destination"), "{}", stderr(&out));
    assert_eq!(std::fs::read(s.docroot().join("keep")).unwrap(), b"original");
    assert_eq!(names(&s.docroot()), ["keep"]);
}

/// The library logs through `tracing`; `FERRY_LOG` selects what `ferry cp` writes: the data
/// path's state every 250 ms on `ferry::driver` at DEBUG, nothing of it by default.
#[test]
fn ferry_log_selects_the_data_path_state() {
    let s = server();
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("f"), data(8 << 20, 7)).unwrap();
    let key = s.key();
    let port = s.port.to_string();
    let args = ["cp", "-i", key.to_str().unwrap(), "-P", &port, "--host-key", &s.fingerprint];
    let upload = |name: &str, log: Option<&str>| {
        let mut cmd = std::process::Command::new(&*FERRY);
        cmd.current_dir(local.path()).args(args).args(["-l", "80m", "f"]);
        cmd.arg(format!("127.0.0.1:{name}")).env_remove("HOME").env_remove("FERRY_LOG");
        if let Some(l) = log {
            cmd.env("FERRY_LOG", l);
        }
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        wait_output(cmd.spawn().unwrap(), "ferry cp")
    };
    let out = upload("logged", Some("ferry::driver=debug"));
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let lines: Vec<_> = err.lines().filter(|l| l.contains("ferry cp: driver: ")).collect();
    assert!(!lines.is_empty(), "no driver state logged: {err}");
    assert!(lines.iter().all(|l| l.contains("DriveReport {")), "{err}");
    let out = upload("quiet", None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("driver:"), "{}", stderr(&out));
}

/// `ferry serve --json` tells scripts what happens (every server these tests start runs with
/// it and is found through its `listening` event): a session's start and end with its
/// counters, a refused key as a failed set-up, and its own stop.
#[test]
fn serve_json_reports_sessions_refusals_and_its_stop() {
    let mut s = server();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    std::fs::write(l.join("f"), data(300_000, 3)).unwrap();
    let out = cp(&s, &["--host-key", &s.fingerprint, "f", "127.0.0.1:up"], l);
    assert!(out.status.success(), "{}", stderr(&out));
    keygen(&l.join("stranger"));
    let port = s.port.to_string();
    let out = run(
        &["cp", "-i", "stranger", "-P", &port, "--host-key", &s.fingerprint, "f", "127.0.0.1:."],
        l,
    );
    assert_eq!(out.status.code(), Some(32), "{}", stderr(&out));
    let has = |s: &Server, name: &str| s.events().iter().any(|e| e["event"] == name);
    wait_for("session_ended and setup_failed", || {
        has(&s, "session_ended") && has(&s, "setup_failed")
    });
    let events = s.events();
    let find = |name: &str| events.iter().find(|e| e["event"] == name).unwrap().clone();
    let (started, ended, failed) =
        (find("session_started"), find("session_ended"), find("setup_failed"));
    assert_eq!(started["direction"], "upload", "{started}");
    assert_eq!(started["user"], USER, "{started}");
    assert_eq!(started["path"], "up", "{started}");
    assert!(started["key"].as_str().unwrap().starts_with("SHA256:"), "{started}");
    let session = started["session"].as_str().unwrap();
    assert_eq!(session.len(), 16, "{started}");
    assert_eq!(ended["session"], session, "{ended}");
    assert_eq!(ended["files"], 1, "{ended}");
    assert_eq!(ended["failed_files"], 0, "{ended}");
    assert_eq!(ended["error"], serde_json::Value::Null, "{ended}");
    assert!(ended["bytes"].as_u64().unwrap() >= 300_000, "{ended}");
    assert!(failed["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{failed}");
    assert!(failed["reason"].as_str().unwrap().contains("key"), "{failed}");
    assert_eq!(events.iter().filter(|e| e["event"] == "session_started").count(), 1);
    signal(&s.child, rustix::process::Signal::TERM);
    wait_for("the server to stop", || !s.alive());
    // The reader thread may trail the exit by a moment.
    wait_for("the stopped event", || has(&s, "stopped"));
}

/// After --max-auth-failures failed authentications, the address is refused before its
/// handshake, even with a good key, and the lockout is told (retryable, exit 40).
#[test]
fn repeated_failed_authentications_lock_the_address_out() {
    let s = Server::with_args(&["--max-auth-failures", "3", "--lockout", "60"]);
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    std::fs::write(l.join("f"), b"data").unwrap();
    keygen(&l.join("stranger"));
    let port = s.port.to_string();
    let stranger = ["cp", "-i", "stranger", "-P", &port, "--host-key", &s.fingerprint];
    for _ in 0..3 {
        let out = run(&[&stranger[..], &["f", "127.0.0.1:."]].concat(), l);
        assert_eq!(out.status.code(), Some(32), "{}", stderr(&out));
    }
    wait_for("the lockout event", || s.events().iter().any(|e| e["event"] == "lockout"));
    let lockout = s.events().into_iter().find(|e| e["event"] == "lockout").unwrap();
    assert_eq!((lockout["failures"].as_u64(), lockout["seconds"].as_u64()), (Some(3), Some(60)));
    assert_eq!(lockout["source"], "127.0.0.1", "{lockout}");
    let out = cp(&s, &["--host-key", &s.fingerprint, "f", "127.0.0.1:."], l);
    assert_eq!(out.status.code(), Some(40), "{}", stderr(&out));
    assert!(stderr(&out).contains("refused the connection"), "{}", stderr(&out));
    assert!(tree(&s.docroot()).is_empty());
    let accepted = s.events().iter().filter(|e| e["result"] == "accepted").count();
    assert_eq!(accepted, 0, "no handshake for a locked-out address");
}

/// With no options the client asks for no rate cap (the fair policy finds the path's rate);
/// a server's cap still applies and is told; `--policy fixed` without `-l` is a usage error.
#[test]
fn no_options_mean_no_rate_cap_and_fixed_needs_a_rate() {
    let s = server();
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("f"), data(2 << 20, 3)).unwrap();
    let out = cp(&s, &["--host-key", &s.fingerprint, "--json", "f", "127.0.0.1:."], local.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let session: serde_json::Value = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["event"] == "session")
        .unwrap();
    assert_eq!(
        (session["policy"].as_str(), session["target_rate_bps"].as_u64()),
        (Some("fair"), Some(10_000_000_000_000))
    );
    // Loopback's MTU is 64 KiB: the largest datagram the protocol has (8972 bytes).
    assert_eq!(session["block_size"].as_u64(), Some(8972 - 59), "{session}");
    let out = cp(
        &s,
        &["--host-key", &s.fingerprint, "--policy", "fixed", "f", "127.0.0.1:g"],
        local.path(),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--policy fixed") && stderr(&out).contains("-l RATE"),
        "{}",
        stderr(&out)
    );
    assert!(!s.docroot().join("g").exists());
}

#[test]
fn datagram_size_is_the_routes_unless_given() {
    let s = server();
    let local = tempfile::tempdir().unwrap();
    let bytes = data(3 << 20, 9);
    std::fs::write(local.path().join("f"), &bytes).unwrap();
    // A standard Ethernet datagram on request, byte-for-byte intact.
    let out = cp(
        &s,
        &["--host-key", &s.fingerprint, "--json", "-Z", "1472", "f", "127.0.0.1:g"],
        local.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"block_size\":1413"), "{stdout}");
    assert_eq!(std::fs::read(s.docroot().join("g")).unwrap(), bytes);
    // Outside 576..=8972: a usage error naming the range, nothing sent.
    for bad in ["100", "9000", "big"] {
        let out =
            cp(&s, &["--host-key", &s.fingerprint, "-Z", bad, "f", "127.0.0.1:h"], local.path());
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains("576") && stderr(&out).contains("8972"), "{}", stderr(&out));
        assert!(!s.docroot().join("h").exists());
    }
}

/// `-C 3` both ways with one file cut in parts, to and from a new name: the parts assemble
/// under that name on either side, and nothing else is left.
#[test]
fn multi_session_copies_of_one_file_under_a_new_name() {
    let s = server();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    std::fs::write(l.join("big.bin"), data(5 << 20, 21)).unwrap();
    let fp = s.fingerprint.clone();
    let multi = ["--host-key", &fp, "-C", "3", "--multi-session-threshold", "1m"];
    let out = cp(&s, &[&multi[..], &["big.bin", "127.0.0.1:renamed.bin"]].concat(), l);
    assert!(out.status.success(), "upload: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("upload complete: 1 files"));
    assert_eq!(digest(&s.docroot().join("renamed.bin")), digest(&l.join("big.bin")));
    assert_eq!(names(&s.docroot()), ["renamed.bin"]);
    let out = cp(&s, &[&multi[..], &["127.0.0.1:renamed.bin", "back.bin"]].concat(), l);
    assert!(out.status.success(), "download: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("download complete: 1 files"));
    assert_eq!(digest(&l.join("back.bin")), digest(&l.join("big.bin")));
    let mut here = names(l);
    here.sort();
    assert_eq!(here, ["back.bin", "big.bin"]);
}

/// `-E` / `-N` choose what an upload sends, in command-line order, the first match deciding;
/// an excluded directory is not looked into; `--file-list` (a file, or `-` for standard input)
/// gives the sources instead of the command line.
#[test]
fn exclude_include_rules_and_a_file_list_choose_what_goes_up() {
    let s = server();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    for f in ["tree/a.txt", "tree/b.log", "tree/keep.log", "tree/cache/x.txt", "tree/sub/c.txt"] {
        std::fs::create_dir_all(l.join(f).parent().unwrap()).unwrap();
        std::fs::write(l.join(f), f.as_bytes()).unwrap();
    }
    let fp = s.fingerprint.clone();
    let rules = ["-N", "keep.log", "-E", "*.log", "-E", "cache/", "--json"];
    let mut args = vec!["--host-key", &fp];
    args.extend(rules);
    args.extend(["tree", "127.0.0.1:."]);
    let out = cp(&s, &args, l);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        tree(&s.docroot()),
        ["tree/a.txt", "tree/keep.log", "tree/sub/c.txt"],
        "keep.log included before *.log excluded it; cache/ not sent"
    );
    // One `file` event per file, named, with its outcome; the progress counts them.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut files: Vec<String> = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "file")
        .inspect(|e| assert_eq!(e["status"], "verified", "{e}"))
        .map(|e| e["path"].as_str().unwrap().to_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["tree/a.txt", "tree/keep.log", "tree/sub/c.txt"], "{stdout}");
    assert!(stdout.contains("\"files_total\":3"), "{stdout}");
    // The other order: the exclude comes first and decides.
    std::fs::create_dir(s.docroot().join("o")).unwrap();
    let out =
        cp(&s, &["--host-key", &fp, "-E", "*.log", "-N", "keep.log", "tree", "127.0.0.1:o"], l);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(s.docroot().join("o/tree/sub/c.txt").is_file());
    assert!(!tree(&s.docroot()).iter().any(|p| p.starts_with("o/") && p.ends_with(".log")));

    // --file-list: the sources from a file (blank lines skipped), the destination alone after.
    std::fs::create_dir(s.docroot().join("listed")).unwrap();
    std::fs::write(l.join("list"), "tree/a.txt\n\ntree/sub\n").unwrap();
    let out = cp(&s, &["--host-key", &fp, "--file-list", "list", "127.0.0.1:listed"], l);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: Vec<_> =
        tree(&s.docroot()).into_iter().filter(|p| p.starts_with("listed/")).collect();
    assert_eq!(listed, ["listed/a.txt", "listed/sub/c.txt"]);
    // ... or from standard input.
    std::fs::create_dir(s.docroot().join("piped")).unwrap();
    let port = s.port.to_string();
    let key = s.key();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .current_dir(l)
        .args(["cp", "-i", key.to_str().unwrap(), "-P", &port, "--host-key", &fp])
        .args(["--file-list", "-", "127.0.0.1:piped"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"tree/b.log\n").unwrap();
    let out = wait_output(child, "cp --file-list -");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(s.docroot().join("piped/b.log").is_file());

    // Mistakes, each with its own message and nothing sent.
    let out = cp(&s, &["--host-key", &fp, "--file-list", "list", "tree", "127.0.0.1:x"], l);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("names only the destination"), "{}", stderr(&out));
    let out = cp(&s, &["--host-key", &fp, "-E", "[oops", "tree", "127.0.0.1:x"], l);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("bad -E/-N pattern"), "{}", stderr(&out));
    let out = cp(&s, &["--host-key", &fp, "-E", "*.log", "127.0.0.1:tree", "back"], l);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("select what to upload"), "{}", stderr(&out));
    assert!(!s.docroot().join("x").exists());
}

/// `--remove-after-transfer` deletes each source once the server verified it, and keeps the
/// ones that failed; `--remove-empty-directories` then removes the directories that left empty
/// (never the source directory named on the command line, nor one still holding a file).
#[test]
fn remove_after_transfer_deletes_only_what_the_server_verified() {
    let s = server();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    for f in ["tree/a", "tree/sub/deep/b", "tree/sub/c", "tree/other/d"] {
        std::fs::create_dir_all(l.join(f).parent().unwrap()).unwrap();
        std::fs::write(l.join(f), data(3000, f.len() as u32)).unwrap();
    }
    // tree/other/d exists on the server already: it fails there (no overwrite), so it stays.
    std::fs::create_dir_all(s.docroot().join("tree/other")).unwrap();
    std::fs::write(s.docroot().join("tree/other/d"), b"theirs").unwrap();
    let fp = s.fingerprint.clone();
    let args = ["--host-key", &fp, "--remove-after-transfer", "--remove-empty-directories"];
    let mut args = args.to_vec();
    args.extend(["--json", "tree", "127.0.0.1:."]);
    let out = cp(&s, &args, l);
    assert_eq!(out.status.code(), Some(39), "{}", stderr(&out));
    let done = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("\"event\":\"done\""))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .expect("a done event");
    assert_eq!(done["removed"], 3, "{done}");
    assert_eq!(done["removed_directories"], 2, "tree/sub/deep and tree/sub: {done}");
    assert_eq!(tree(l), ["tree/other/d"], "only the failed source is left");
    assert!(l.join("tree").is_dir(), "the source directory itself stays");
    for f in ["tree/a", "tree/sub/deep/b", "tree/sub/c"] {
        assert_eq!(std::fs::read(s.docroot().join(f)).unwrap(), data(3000, f.len() as u32));
    }
    assert_eq!(std::fs::read(s.docroot().join("tree/other/d")).unwrap(), b"theirs");

    // Not for downloads; and --remove-empty-directories needs --remove-after-transfer.
    let out = cp(&s, &["--host-key", &fp, "--remove-after-transfer", "127.0.0.1:tree", "."], l);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = cp(&s, &["--host-key", &fp, "--remove-empty-directories", "tree", "127.0.0.1:."], l);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(tree(l), ["tree/other/d"]);
}

/// `-d` creates the destination directory (and its parents) on the server for an upload, here
/// for a download; a single file then lands inside it under its own name. Without `-d` a
/// missing destination directory is refused and nothing is created.
#[test]
fn create_dir_makes_the_destination_directory() {
    let s = server();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    std::fs::write(l.join("one"), data(2000, 4)).unwrap();
    let fp = s.fingerprint.clone();
    let out = cp(&s, &["--host-key", &fp, "one", "127.0.0.1:new/deep"], l);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert!(!s.docroot().join("new").exists(), "nothing created without -d");
    let out = cp(&s, &["--host-key", &fp, "-d", "one", "127.0.0.1:new/deep"], l);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(s.docroot().join("new/deep/one")).unwrap(), data(2000, 4));
    // -d with a file where the directory should be: refused, the file untouched.
    std::fs::write(s.docroot().join("plain"), b"mine").unwrap();
    let out = cp(&s, &["--host-key", &fp, "-d", "one", "127.0.0.1:plain"], l);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot create the directory"), "{}", stderr(&out));
    assert_eq!(std::fs::read(s.docroot().join("plain")).unwrap(), b"mine");
    // A download into a directory that -d makes here.
    let out = cp(&s, &["--host-key", &fp, "-d", "127.0.0.1:new/deep/one", "back/here"], l);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(l.join("back/here/one")).unwrap(), data(2000, 4));
}

/// `--file-manifest text|json` writes a receipt of what was transferred (and what failed) into
/// `--file-manifest-path`, under a name of its own, also when some files failed; `-O PORT` is
/// accepted (and changes nothing: the data shares the server's port).
#[test]
fn file_manifest_is_a_receipt_of_the_transfer() {
    let s = server();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    std::fs::create_dir_all(l.join("t")).unwrap();
    std::fs::write(l.join("t/a"), b"a").unwrap();
    std::fs::write(l.join("t/b"), b"b").unwrap();
    std::fs::create_dir_all(s.docroot().join("t")).unwrap();
    std::fs::write(s.docroot().join("t/b"), b"theirs").unwrap(); // b fails: it exists
    std::fs::create_dir(l.join("receipts")).unwrap();
    let fp = s.fingerprint.clone();
    let base = ["--host-key", &fp, "-O", "33001", "--file-manifest-path", "receipts"];
    let mut args = base.to_vec();
    args.extend(["--file-manifest", "text", "t", "127.0.0.1:."]);
    let out = cp(&s, &args, l);
    assert_eq!(out.status.code(), Some(39), "{}", stderr(&out));
    std::fs::write(l.join("a"), b"mine").unwrap(); // the download of t/a fails: a exists
    let mut args = base.to_vec();
    args.extend(["--file-manifest", "json", "127.0.0.1:t/a", "."]);
    let out = cp(&s, &args, l);
    assert_ne!(out.status.code(), Some(0), "a exists here: {}", stderr(&out));
    assert_eq!(std::fs::read(l.join("a")).unwrap(), b"mine");
    let mut names = names(&l.join("receipts"));
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    let text = names.iter().find(|n| n.ends_with(".txt")).expect("a text manifest");
    let text = std::fs::read_to_string(l.join("receipts").join(text)).unwrap();
    assert!(text.starts_with("t/a\n"), "{text}");
    assert!(text.contains("# failed: t/b: "), "{text}");
    let json = names.iter().find(|n| n.ends_with(".json")).expect("a json manifest");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(l.join("receipts").join(json)).unwrap()).unwrap();
    assert_eq!(json["direction"], "download");
    assert_eq!(json["files"].as_array().unwrap().len(), 1, "{json}");
    assert_ne!(json["files"][0]["status"], "verified", "{json}");
}

/// `-p` gives each file at the destination its source's modification time, uploading (also a
/// file assembled from parts with `-C 2`) and downloading; without it the time is the time of
/// writing.
#[test]
fn preserve_times_carries_modification_times_both_ways() {
    use std::os::unix::fs::MetadataExt;
    let s = server();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    let old = std::time::UNIX_EPOCH + Duration::new(1_000_000_000, 123_456_789);
    let stamp = |p: &Path| {
        let f = std::fs::File::options().write(true).open(p).unwrap();
        f.set_times(std::fs::FileTimes::new().set_modified(old)).unwrap();
    };
    let mtime = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.mtime(), m.mtime_nsec())
    };
    std::fs::create_dir_all(l.join("t/sub")).unwrap();
    for (f, len) in [("t/a", 100), ("t/sub/b", 3 << 20)] {
        std::fs::write(l.join(f), data(len, 5)).unwrap();
        stamp(&l.join(f));
    }
    let fp = s.fingerprint.clone();
    let out = cp(&s, &["--host-key", &fp, "-p", "t", "127.0.0.1:."], l);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mtime(&s.docroot().join("t/a")), (1_000_000_000, 123_456_789));
    assert_eq!(mtime(&s.docroot().join("t/sub/b")), (1_000_000_000, 123_456_789));
    // In parts (-C 2, a 1 MiB threshold): the assembled file gets it too.
    let args = ["--host-key", &fp, "-p", "-C", "2", "--multi-session-threshold", "1m"];
    let mut args = args.to_vec();
    args.extend(["-d", "t/sub/b", "127.0.0.1:parts"]);
    let out = cp(&s, &args, l);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mtime(&s.docroot().join("parts/b")), (1_000_000_000, 123_456_789));
    // Without -p: the time of writing.
    let out = cp(&s, &["--host-key", &fp, "-d", "t/a", "127.0.0.1:plain"], l);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(mtime(&s.docroot().join("plain/a")).0 > 1_700_000_000);
    // Down, with -p.
    let out = cp(&s, &["--host-key", &fp, "-p", "-d", "127.0.0.1:t", "back"], l);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mtime(&l.join("back/t/sub/b")), (1_000_000_000, 123_456_789));
    assert_eq!(std::fs::read(l.join("back/t/sub/b")).unwrap(), data(3 << 20, 5));
}

/// `--src-base PREFIX` strips PREFIX from each source and keeps the rest of its path at the
/// destination; a source outside PREFIX is refused before anything is sent.
#[test]
fn src_base_keeps_the_path_below_the_prefix() {
    let s = server();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    std::fs::create_dir_all(l.join("data/proj/a/b")).unwrap();
    std::fs::write(l.join("data/proj/a/b/f"), b"f").unwrap();
    std::fs::write(l.join("data/proj/a/g"), b"g").unwrap();
    std::fs::write(l.join("elsewhere"), b"x").unwrap();
    let fp = s.fingerprint.clone();
    let args = ["--host-key", &fp, "-d", "--src-base", "data/proj", "data/proj/a/b/f"];
    let mut args = args.to_vec();
    args.extend(["data/proj/a/g", "127.0.0.1:in"]);
    let out = cp(&s, &args, l);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(tree(&s.docroot()), ["in/a/b/f", "in/a/g"]);
    let out = cp(&s, &["--host-key", &fp, "--src-base", "data", "elsewhere", "127.0.0.1:in"], l);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not beneath --src-base"), "{}", stderr(&out));
    assert_eq!(tree(&s.docroot()), ["in/a/b/f", "in/a/g"]);
}

/// `-L DIR` writes the transfer's own log file (0600): its start, each retry, each failed file
/// and the outcome, while stderr stays as quiet as without it.
#[test]
fn log_dir_keeps_a_log_file_per_transfer() {
    use std::os::unix::fs::PermissionsExt;
    let s = server();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    std::fs::write(l.join("f"), b"x").unwrap();
    std::fs::create_dir(l.join("logs")).unwrap();
    let fp = s.fingerprint.clone();
    let out = cp(&s, &["--host-key", &fp, "-L", "logs", "f", "127.0.0.1:."], l);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    let logs = names(&l.join("logs"));
    assert_eq!(logs.len(), 1, "{logs:?}");
    let path = l.join("logs").join(&logs[0]);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let log = std::fs::read_to_string(&path).unwrap();
    assert!(log.contains("ferry cp: upload: 1 sources, 127.0.0.1"), "{log}");
    assert!(log.contains("done: 1 files (0 failed)"), "{log}");
    // A transfer that fails after a retry: both in the log.
    drop(s);
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port().to_string();
    drop(dead);
    std::fs::remove_file(&path).unwrap();
    keygen(&l.join("id"));
    let args = ["cp", "-i", "id", "-P", &port, "--host-key", &fp, "-L", "logs"];
    let mut args = args.to_vec();
    args.extend(["--retry", "2", "--retry-timeout", "2s", "f", "127.0.0.1:."]);
    let out = run(&args, l);
    assert_eq!(out.status.code(), Some(38), "{}", stderr(&out));
    let logs = names(&l.join("logs"));
    let log = std::fs::read_to_string(l.join("logs").join(&logs[0])).unwrap();
    assert!(log.contains("retrying in"), "{log}");
    assert!(log.contains("failed: nothing is listening") && log.contains("(exit 38)"), "{log}");
}

/// `ferry doctor` against a real server and against the failures it tells apart: all well
/// (exit 0) with a pinned key and an accepted identity; an unpinned key (its fingerprint and
/// the fix); an identity the server does not know; a closed port; a silent one.
#[test]
fn doctor_tells_what_stands_in_the_way() {
    let s = server();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    let at = format!("127.0.0.1:{}", s.port);
    let key = s.key();
    let doctor = |extra: &[&str]| {
        let mut args = vec!["doctor", "--json", "--timeout", "2"];
        args.extend_from_slice(extra);
        let out = run(&args, l);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
        (out.status.code(), v)
    };
    let fp = s.fingerprint.clone();
    let (code, v) =
        doctor(&[&at, "--host-key", &fp, "-i", key.to_str().unwrap(), "--probe-time", "1"]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["port_state"], "open");
    assert_eq!(v["host_key"]["state"], "pinned");
    assert_eq!(v["identity"]["accepted"], true, "{v}");
    assert!(v["rtt_ms"].as_f64().is_some() && v["datagram"].as_u64().is_some(), "{v}");
    // The rate probe moved data, and neither it nor the identity check left anything.
    assert!(v["probe"]["bytes"].as_u64().is_some_and(|b| b > 0), "{v}");
    assert!(v["probe"]["rate_bps"].as_f64().is_some_and(|r| r > 0.0), "{v}");
    wait_for("the probe's partial to be removed", || tree(&s.docroot()).is_empty());
    let (code, v) =
        doctor(&[&at, "--host-key", &fp, "-i", key.to_str().unwrap(), "--probe-time", "0"]);
    assert_eq!((code, &v["probe"]), (Some(0), &serde_json::Value::Null), "{v}");

    let (code, v) = doctor(&[&at]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["host_key"]["state"], "unpinned");
    assert_eq!(v["host_key"]["presented"], fp.as_str());
    let fix = v["checks"].as_array().unwrap().iter().find(|c| c["check"] == "host_key").unwrap();
    assert!(fix["fix"].as_str().unwrap().contains("--host-key"), "{fix}");

    keygen(&l.join("stranger"));
    let (code, v) = doctor(&[&at, "--host-key", &fp, "-i", "stranger"]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["identity"]["accepted"], false, "{v}");

    let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (_, v) = doctor(&[&closed.to_string()]);
    assert_eq!(v["port_state"], "closed", "{v}");
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (code, v) = doctor(&[&silent.local_addr().unwrap().to_string()]);
    assert_eq!((code, &v["port_state"]), (Some(1), &serde_json::json!("filtered")), "{v}");
    drop(silent);
}

/// `--remove-after-transfer` never deletes a source that changed while it was sent: the server
/// has the version that was read, so the local file (now another version) is kept and named.
#[test]
fn remove_after_transfer_keeps_a_source_that_changed_meanwhile() {
    let s = server();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    std::fs::write(l.join("slow"), data(6 << 20, 3)).unwrap();
    std::fs::write(l.join("quick"), b"quick").unwrap();
    let args = ["--remove-after-transfer", "--json", "-l", "16m", "--policy", "fixed"];
    let mut args = args.to_vec();
    args.extend(["slow", "quick", "127.0.0.1:."]);
    let client = spawn_cp(&s, &args, l);
    wait_for("the upload to start", || names(&s.docroot()).iter().any(|n| n.contains("slow")));
    // Changed mid-way (appended to: a new size and modification time).
    let mut f = std::fs::File::options().append(true).open(l.join("slow")).unwrap();
    std::io::Write::write_all(&mut f, b"more").unwrap();
    drop(f);
    let out = wait_output(client, "the upload");
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let kept = stdout.lines().find(|l| l.contains("\"event\":\"kept\"")).expect("a kept event");
    assert!(kept.contains("slow") && kept.contains("changed while it was sent"), "{kept}");
    assert!(l.join("slow").exists(), "the changed source is kept");
    assert!(!l.join("quick").exists(), "the unchanged one is removed");
    assert_eq!(std::fs::read(s.docroot().join("slow")).unwrap(), data(6 << 20, 3));
}

/// Resume (`-k`, on by default): a download whose client is killed (SIGKILL) mid-file, and an
/// upload whose client is killed, leave a partial and its journal at the receiver and no file
/// under the final name; the next run sends only what the receiver does not hold and the file
/// arrives exact. With `-k 0` nothing is resumed.
#[test]
fn an_interrupted_transfer_resumes_where_it_stopped() {
    const MIB: usize = 1 << 20;
    let s = Server::start();
    let size = 24 * MIB + 12_345;
    std::fs::write(s.docroot().join("big.bin"), data(size, 77)).unwrap();
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let d = dest.to_str().unwrap();
    // Download, client killed once its journal records six chunks (a 72-byte header, 48 bytes
    // per chunk).
    let mut child = spawn_cp(&s, &["-l", "40M", "127.0.0.1:big.bin", d], work.path());
    let start = Instant::now();
    while journal_len(&dest, "big.bin").is_none_or(|n| n < 72 + 48 * 6) {
        assert!(start.elapsed() < LIMIT, "the download never journaled six chunks");
        if child.try_wait().unwrap().is_some() {
            let (st, err) = finish(child, "download");
            panic!("the download ended before it was killed: {st:?} {err} {:?}", names(&dest));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&child, rustix::process::Signal::KILL);
    let _ = child.wait();
    assert!(!dest.join("big.bin").exists(), "no file under the final name");
    let out =
        cp(&s, &["--host-key", &s.fingerprint, "--json", "127.0.0.1:big.bin", d], work.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let done = done_event(&out.stdout);
    let new = done["new_bytes"].as_u64().unwrap();
    assert!(new <= (size - 4 * MIB) as u64, "resumed: {new} of {size} bytes received again");
    assert_eq!(digest(&dest.join("big.bin")), digest(&s.docroot().join("big.bin")));
    assert_eq!(names(&dest), ["big.bin"], "the partial and its journal are gone");

    // Upload, client killed: the server's session lives on (until its idle timeout) holding
    // the journal; the rerun, a newer session of the same user, takes the journal over at
    // once (the old session ends superseded) and resumes.
    let src = work.path().join("up.bin");
    std::fs::write(&src, data(size, 78)).unwrap();
    let up = src.to_str().unwrap();
    let mut child = spawn_cp(&s, &["-l", "40M", up, "127.0.0.1:"], work.path());
    let start = Instant::now();
    while journal_len(&s.docroot(), "up.bin").is_none_or(|n| n < 72 + 48 * 6) {
        assert!(start.elapsed() < LIMIT, "the upload never journaled six chunks");
        assert!(child.try_wait().unwrap().is_none(), "the upload ended before it was killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&child, rustix::process::Signal::KILL);
    let _ = child.wait();
    let ended = |s: &Server| {
        s.events()
            .into_iter()
            .filter(|e| e["event"] == "session_ended" && e["direction"] == "upload")
            .collect::<Vec<_>>()
    };
    assert!(ended(&s).is_empty(), "the abandoned upload is still running on the server");
    assert!(!s.docroot().join("up.bin").exists());
    let out = cp(&s, &["--host-key", &s.fingerprint, "--json", up, "127.0.0.1:"], work.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let new = done_event(&out.stdout)["new_bytes"].as_u64().unwrap();
    assert!(new <= (size - 4 * MIB) as u64, "resumed: {new} of {size} bytes sent again");
    wait_for("both uploads to end on the server", || ended(&s).len() == 2);
    let superseded = ended(&s)
        .iter()
        .filter(|e| e["error"].as_str().is_some_and(|m| m.contains("superseded")))
        .count();
    assert_eq!(superseded, 1, "the old session was superseded: {:?}", ended(&s));
    assert_eq!(digest(&s.docroot().join("up.bin")), digest(&src));
    assert!(journal_len(&s.docroot(), "up.bin").is_none());

    // -k 0: an interrupted download leaves nothing behind, and the rerun sends everything.
    std::fs::remove_file(dest.join("big.bin")).unwrap();
    let mut child = spawn_cp(&s, &["-k", "0", "-l", "40M", "127.0.0.1:big.bin", d], work.path());
    std::thread::sleep(Duration::from_millis(1500));
    signal(&child, rustix::process::Signal::KILL);
    let _ = child.wait();
    assert!(journal_len(&dest, "big.bin").is_none());
    let out = cp(
        &s,
        &["--host-key", &s.fingerprint, "--json", "-k", "0", "127.0.0.1:big.bin", d],
        work.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(done_event(&out.stdout)["new_bytes"].as_u64().unwrap(), size as u64);
}

#[test]
/// `--file-checksum sha256`: each verified file's `file` event carries the SHA-256 of its
/// bytes, both ways; without --json, one `SHA256 (PATH) = HEX` line per file; a JSON manifest
/// has them too; another type is refused before anything is sent.
fn file_checksum_reports_each_files_sha256() {
    let s = server();
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    let (a, b) = (data(3 << 20, 41), data(777, 42));
    std::fs::write(tree.join("a.bin"), &a).unwrap();
    std::fs::write(tree.join("sub/b.bin"), &b).unwrap();
    let hex = |d: &[u8]| hex::encode(Sha256::digest(d));
    let want = [("tree/a.bin", hex(&a)), ("tree/sub/b.bin", hex(&b))];
    let sums = |stdout: &[u8]| {
        let mut v: Vec<(String, String)> = String::from_utf8_lossy(stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["event"] == "file")
            .map(|e| (e["path"].as_str().unwrap().to_owned(), e["sha256"].as_str().unwrap().into()))
            .collect();
        v.sort();
        v
    };
    let want: Vec<(String, String)> =
        want.iter().map(|(p, d)| (p.to_string(), d.clone())).collect();
    let fp = s.fingerprint.clone();
    let up = cp(
        &s,
        &["--host-key", &fp, "--json", "--file-checksum", "sha256", "tree", "127.0.0.1:"],
        work.path(),
    );
    assert!(up.status.success(), "{}", stderr(&up));
    assert_eq!(sums(&up.stdout), want, "upload");
    // Download, with a JSON manifest.
    let dest = work.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let args = [
        "--host-key",
        &fp,
        "--json",
        "--file-checksum",
        "sha256",
        "--file-manifest",
        "json",
        "--file-manifest-path",
        dest.to_str().unwrap(),
        "127.0.0.1:tree",
        dest.to_str().unwrap(),
    ];
    let down = cp(&s, &args, work.path());
    assert!(down.status.success(), "{}", stderr(&down));
    assert_eq!(sums(&down.stdout), want, "download");
    let manifest = std::fs::read_dir(&dest)
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("ferry-manifest-"))
        .expect("a manifest");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(manifest.path()).unwrap()).unwrap();
    let mut in_manifest: Vec<(String, String)> = doc["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap().into(), f["sha256"].as_str().unwrap().into()))
        .collect();
    in_manifest.sort();
    assert_eq!(in_manifest, want, "manifest");
    // Text mode: the tagged lines.
    std::fs::write(work.path().join("c.txt"), b"abc").unwrap();
    let out = cp(
        &s,
        &["--host-key", &fp, "--file-checksum", "sha256", "c.txt", "127.0.0.1:"],
        work.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let line = format!("SHA256 (c.txt) = {}", hex(b"abc"));
    assert!(String::from_utf8_lossy(&out.stdout).lines().any(|l| l == line), "{out:?}");
    // Another type: a usage error, nothing sent.
    let out =
        cp(&s, &["--host-key", &fp, "--file-checksum", "md5", "tree", "127.0.0.1:x"], work.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("sha256"), "{}", stderr(&out));
}

/// ascp's `--host HOST --mode send|recv`: plain paths, the mode says which side is remote; a
/// path that names the host as well is refused before anything is sent.
#[test]
fn host_and_mode_take_plain_paths() {
    let s = server();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::write(w.join("f.bin"), data(70_000, 5)).unwrap();
    let fp = s.fingerprint.clone();
    let up = cp(&s, &["--host-key", &fp, "-q", "--host", "127.0.0.1", "f.bin", "."], w);
    assert!(up.status.success(), "{}", stderr(&up));
    assert_eq!(digest(&s.docroot().join("f.bin")), digest(&w.join("f.bin")));
    std::fs::create_dir(w.join("down")).unwrap();
    let args =
        ["--host-key", &fp, "-q", "--host", "[127.0.0.1]", "--mode", "recv", "f.bin", "down"];
    let down = cp(&s, &args, w);
    assert!(down.status.success(), "{}", stderr(&down));
    assert_eq!(digest(&w.join("down/f.bin")), digest(&w.join("f.bin")));
    let both = cp(&s, &["--host-key", &fp, "--host", "127.0.0.1", "f.bin", "127.0.0.1:x"], w);
    assert_eq!(both.status.code(), Some(2), "{}", stderr(&both));
    assert!(stderr(&both).contains("already does"), "{}", stderr(&both));
    let two =
        cp(&s, &["--host-key", &fp, "--host", "127.0.0.1", "--mode", "recv", "a", "b", "c"], w);
    assert_eq!(two.status.code(), Some(2), "{}", stderr(&two));
    let lone = cp(&s, &["--host-key", &fp, "--mode", "recv", "a", "b"], w);
    assert_eq!(lone.status.code(), Some(2), "--mode needs --host: {}", stderr(&lone));
}

/// `--partial-file-suffix`: while a file arrives its partial is `NAME` + the suffix beside the
/// final name (on the server for an upload, here for a download), gone once it verified; an
/// interrupted upload resumes from that partial; an existing file of that name is never
/// touched (the incoming file fails, saying so); a bad suffix is refused before anything runs.
#[test]
fn partial_file_suffix_names_the_partial_while_it_arrives() {
    const MIB: usize = 1 << 20;
    let s = server();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let size = 24 * MIB + 7;
    std::fs::write(w.join("big.bin"), data(size, 31)).unwrap();
    let fp = s.fingerprint.clone();
    // Upload, watched while it runs, then killed part way.
    let mut child =
        spawn_cp(&s, &["-l", "40M", "--partial-file-suffix", ".part", "big.bin", "127.0.0.1:"], w);
    wait_for("the visible partial", || s.docroot().join("big.bin.part").exists());
    while journal_len(&s.docroot(), "big.bin").is_none_or(|n| n < 72 + 48 * 6) {
        assert!(child.try_wait().unwrap().is_none(), "the upload ended before it was killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&child, rustix::process::Signal::KILL);
    let _ = child.wait();
    assert!(!s.docroot().join("big.bin").exists());
    let args =
        ["--host-key", &fp, "--json", "--partial-file-suffix", ".part", "big.bin", "127.0.0.1:"];
    let out = cp(&s, &args, w);
    assert!(out.status.success(), "{}", stderr(&out));
    let new = done_event(&out.stdout)["new_bytes"].as_u64().unwrap();
    assert!(new <= (size - 4 * MIB) as u64, "resumed from big.bin.part: {new} of {size}");
    assert_eq!(digest(&s.docroot().join("big.bin")), digest(&w.join("big.bin")));
    assert_eq!(names(&s.docroot()), ["big.bin"], "the partial and its journal are gone");

    // Download: the same, here.
    let dest = w.join("dest");
    std::fs::create_dir(&dest).unwrap();
    let d = dest.to_str().unwrap();
    let mut child =
        spawn_cp(&s, &["-l", "40M", "--partial-file-suffix", "~", "127.0.0.1:big.bin", d], w);
    wait_for("the visible partial here", || dest.join("big.bin~").exists());
    let _ = child.kill();
    let _ = child.wait();
    let out =
        cp(&s, &["--host-key", &fp, "-q", "--partial-file-suffix", "~", "127.0.0.1:big.bin", d], w);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(digest(&dest.join("big.bin")), digest(&w.join("big.bin")));
    assert_eq!(names(&dest), ["big.bin"]);

    // Someone's own file under the partial's name: never touched.
    std::fs::write(w.join("small.txt"), b"incoming").unwrap();
    std::fs::write(s.docroot().join("small.txt.part"), b"mine, keep it").unwrap();
    let out = cp(
        &s,
        &["--host-key", &fp, "--partial-file-suffix", ".part", "small.txt", "127.0.0.1:"],
        w,
    );
    assert_eq!(out.status.code(), Some(39), "{}", stderr(&out));
    assert!(stderr(&out).contains("small.txt.part exists"), "{}", stderr(&out));
    assert_eq!(std::fs::read(s.docroot().join("small.txt.part")).unwrap(), b"mine, keep it");
    assert!(!s.docroot().join("small.txt").exists());

    let out =
        cp(&s, &["--host-key", &fp, "--partial-file-suffix", "a/b", "small.txt", "127.0.0.1:"], w);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
