//! Several real `ferry keys` processes write and read one keystore at the same time; nothing is
//! lost, versions are unique and consecutive, the audit table and log hold every change, and no
//! value reaches any file in any form.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use ferry_keystore::{Category, KeyState, Keystore, Options, Owner};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const WORKERS: usize = 8;
const WRITES_PER_WORKER: usize = 8;

fn ferry(root: &Path, local: &Path, args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut child = Command::new(FERRY)
        .arg("keys")
        .args(args)
        .env("FERRY_ROOT_KEYSTORE", root)
        .env("FERRY_LOCAL_KEYSTORE", local)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

fn value(worker: usize, i: usize) -> String {
    format!(
        "HAMMER-{worker}-{i}-{:016x}",
        (worker as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64
    )
}

#[test]
fn concurrent_processes_lose_nothing() {
    let d = tempfile::tempdir().unwrap();
    let root: PathBuf = d.path().join("rootkeystore.db");
    let local: PathBuf = d.path().join("alice/localkeystore.db");
    assert!(ferry(&root, &local, &["-i"], b"").status.success());
    assert!(ferry(&root, &local, &["-i", "-u", "alice"], b"").status.success());

    let start = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (root, local) = (root.clone(), local.clone());
            std::thread::spawn(move || {
                for i in 0..WRITES_PER_WORKER {
                    // Even workers all write Alice's secret (same rows, and a refresh of her local
                    // keystore after every write); odd workers write their own user's.
                    let user = if w % 2 == 0 { "alice".to_owned() } else { format!("user{w}") };
                    let o =
                        ferry(&root, &local, &["-u", &user, "-s", "ssear"], value(w, i).as_bytes());
                    assert!(
                        o.status.success(),
                        "worker {w} write {i}: {}",
                        String::from_utf8_lossy(&o.stderr)
                    );
                    let o = ferry(&root, &local, &["--list", "--json"], b"");
                    assert!(
                        o.status.success(),
                        "worker {w} list {i}: {}",
                        String::from_utf8_lossy(&o.stderr)
                    );
                    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
                    assert!(!listed.as_array().unwrap().is_empty());
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert!(start.elapsed() < Duration::from_secs(600), "hammer took too long");

    let ks = Keystore::open_root(&root, &Options::new()).unwrap();
    for w in 0..WORKERS {
        let user = if w % 2 == 0 { "alice".to_owned() } else { format!("user{w}") };
        let owner = Owner::user(&user).unwrap();
        let infos = ks.list(Some(&owner), Some(Category::Ssear)).unwrap();
        let writers = if w % 2 == 0 { WORKERS.div_ceil(2) } else { 1 };
        let expected = writers * WRITES_PER_WORKER;
        assert_eq!(infos.len(), expected, "{user}: versions");
        let versions: Vec<u32> = infos.iter().map(|i| i.version).collect();
        assert_eq!(
            versions,
            (1..=expected as u32).collect::<Vec<_>>(),
            "{user}: versions not consecutive"
        );
        assert_eq!(infos.iter().filter(|i| i.state == KeyState::Active).count(), 1);
        let mut got: Vec<String> = versions
            .iter()
            .map(|v| {
                String::from_utf8(
                    ks.resolve(&owner, Category::Ssear, *v).unwrap().value().expose().to_vec(),
                )
                .unwrap()
            })
            .collect();
        got.sort();
        let mut want: Vec<String> = (0..WORKERS)
            .filter(|x| if w % 2 == 0 { x % 2 == 0 } else { *x == w })
            .flat_map(|x| (0..WRITES_PER_WORKER).map(move |i| value(x, i)))
            .collect();
        want.sort();
        assert_eq!(got, want, "{user}: values");
    }
    // Every write is in the audit table and, as a whole JSON line, in the audit log.
    let puts = ks.audit_records(100_000).unwrap().into_iter().filter(|r| r.op == "put").count();
    assert_eq!(puts, WORKERS * WRITES_PER_WORKER);
    let log = std::fs::read_to_string(ferry_keystore::audit_log_path(&root)).unwrap();
    let log_puts = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a whole JSON line"))
        .filter(|v| v["op"] == "put")
        .count();
    assert_eq!(log_puts, WORKERS * WRITES_PER_WORKER);

    // Alice's local keystore, refreshed concurrently, holds every one of her versions.
    let lk = Keystore::open_local(&local, &Options::new()).unwrap();
    let alice = Owner::user("alice").unwrap();
    let root_alice = ks.list(Some(&alice), None).unwrap();
    let local_alice = lk.list(Some(&alice), None).unwrap();
    assert_eq!(local_alice.len(), root_alice.len());
    let cur = lk.current(&alice, Category::Ssear).unwrap();
    assert_eq!(cur.value().expose(), ks.current(&alice, Category::Ssear).unwrap().value().expose());
    drop((ks, lk));

    // No value in any form in any file left behind.
    let mut files = Vec::new();
    for dir in [d.path().to_owned(), d.path().join("alice")] {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 6, "{files:?}");
    let mut hay: Vec<(String, Vec<u8>)> =
        files.iter().map(|p| (p.display().to_string(), std::fs::read(p).unwrap())).collect();
    for db in [&root, &local] {
        let dump = Command::new("sqlite3").arg(db).arg(".dump").output().unwrap();
        assert!(dump.status.success());
        assert!(String::from_utf8_lossy(&dump.stdout).contains("INSERT INTO secrets"));
        hay.push((format!("sqlite3 .dump {}", db.display()), dump.stdout));
    }
    for w in 0..WORKERS {
        for i in 0..WRITES_PER_WORKER {
            let v = value(w, i);
            for needle in [
                v.clone().into_bytes(),
                hex::encode(&v).into_bytes(),
                hex::encode_upper(&v).into_bytes(),
                base64::engine::general_purpose::STANDARD.encode(&v).into_bytes(),
            ] {
                for (name, bytes) in &hay {
                    assert!(
                        !bytes.windows(needle.len()).any(|x| x == needle),
                        "a value was found in {name}"
                    );
                }
            }
        }
    }
}
