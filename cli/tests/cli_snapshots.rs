//! What users see, pinned: the help of every subcommand, and the message, hint and exit code of
//! common mistakes and failures (insta snapshots in `tests/snapshots/`). A change to any of it
//! shows up as a snapshot diff in review; accept it with `cargo insta review` (or
//! `INSTA_UPDATE=always cargo test -p ferry --test cli_snapshots`).

use std::path::Path;
use std::process::{Command, Stdio};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// Runs ferry in `dir` and renders its exit code, stdout and stderr, with `dir` shown as
/// `[DIR]` and every number after a `:` in an address shown as `[PORT]`.
fn render(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(FERRY)
        .current_dir(dir)
        .args(args)
        .env_remove("HOME")
        .env_remove("FERRY_ROOT_KEYSTORE")
        .env_remove("FERRY_LOCAL_KEYSTORE")
        .env_remove("FERRY_FILEPASS")
        .env("COLUMNS", "100")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let clean = |b: &[u8]| {
        let s = String::from_utf8_lossy(b).replace(dir.to_str().unwrap(), "[DIR]");
        redact_ports(&s)
    };
    format!(
        "exit code: {}\n--- stdout\n{}--- stderr\n{}",
        out.status.code().map_or("signal".into(), |c| c.to_string()),
        clean(&out.stdout),
        clean(&out.stderr)
    )
}

fn redact_ports(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("127.0.0.1:") {
        let (head, tail) = rest.split_at(i + "127.0.0.1:".len());
        out.push_str(head);
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        out.push_str(if digits > 0 { "[PORT]" } else { "" });
        rest = &tail[digits..];
    }
    out.push_str(rest);
    let mut r = out;
    for word in ["port ", "-P ", "(now "] {
        let mut s2 = String::new();
        let mut rest = r.as_str();
        while let Some(i) = rest.find(word) {
            let (head, tail) = rest.split_at(i + word.len());
            s2.push_str(head);
            let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
            s2.push_str(if digits > 0 { "[PORT]" } else { "" });
            rest = &tail[digits..];
        }
        s2.push_str(rest);
        r = s2;
    }
    r
}

#[test]
fn help() {
    let d = tempfile::tempdir().unwrap();
    for cmd in
        ["", "cp", "serve", "keys", "crypt", "keygen", "demo", "doctor", "man", "completions"]
    {
        let mut args: Vec<&str> = cmd.split_whitespace().collect();
        args.push("--help");
        let name = if cmd.is_empty() { "help_ferry".to_owned() } else { format!("help_{cmd}") };
        insta::assert_snapshot!(name, render(d.path(), &args));
    }
}

/// `ferry man DIR` writes a page per subcommand, each naming that subcommand's options (they
/// are generated from the definitions the command parses with); `ferry completions SHELL`
/// completes the subcommands and their options.
#[test]
fn manual_pages_and_completions() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("man/man1");
    let out = Command::new(FERRY).arg("man").arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = |name: &str| {
        std::fs::read_to_string(dir.join(format!("{name}.1")))
            .unwrap_or_else(|e| panic!("{name}.1: {e}"))
    };
    let top = page("ferry");
    assert!(top.starts_with(".ie") || top.contains(".TH ferry 1"), "{top}");
    for sub in ["cp", "serve", "keys", "crypt", "keygen", "demo", "doctor", "man", "completions"] {
        assert!(top.contains(sub), "ferry.1 lists {sub}");
    }
    let cp = page("ferry-cp");
    assert!(cp.contains(".TH ferry-cp 1"), "{cp}");
    for option in ["identity", "host\\-key", "sessions", "target\\-rate"] {
        assert!(cp.contains(option), "ferry-cp.1 documents --{option}");
    }
    assert!(cp.contains("ferry cp"), "the page's synopsis names the command");
    page("ferry-serve");
    page("ferry-keys");
    // Running it again replaces the pages in place and leaves nothing else behind.
    let again = Command::new(FERRY).arg("man").arg(&dir).output().unwrap();
    assert!(again.status.success());
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| n.starts_with("ferry") && n.ends_with(".1")), "{names:?}");

    for (shell, marker) in
        [("bash", "_ferry"), ("zsh", "#compdef ferry"), ("fish", "complete -c ferry")]
    {
        let out = Command::new(FERRY).args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(
            script.contains("identity") && script.contains("known-hosts"),
            "{shell} completes cp's options"
        );
    }
    let bad = Command::new(FERRY).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "an unknown shell is a usage error");
}

#[test]
fn usage_and_local_errors() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let out = Command::new(FERRY).args(["keygen", "-f"]).arg(p.join("id")).output().unwrap();
    assert!(out.status.success());
    std::fs::write(p.join("f"), b"x").unwrap();
    let fp = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let cases: &[(&str, &[&str])] = &[
        ("cp_no_arguments", &["cp"]),
        ("cp_nothing_remote", &["cp", "-i", "id", "a", "b"]),
        ("cp_both_remote", &["cp", "-i", "id", "h:a", "h:b"]),
        ("cp_missing_identity", &["cp", "-i", "nope", "f", "127.0.0.1:x"]),
        ("cp_missing_source", &["cp", "-i", "id", "--host-key", fp, "nope", "127.0.0.1:x"]),
        ("cp_bad_rate", &["cp", "-i", "id", "-l", "fast", "f", "127.0.0.1:x"]),
        ("cp_bad_cipher", &["cp", "-i", "id", "-c", "rot13", "f", "127.0.0.1:x"]),
        (
            "cp_download_into_missing_dir",
            &["cp", "-i", "id", "--host-key", fp, "127.0.0.1:x", "no/such/dir/"],
        ),
        (
            "serve_missing_docroot",
            &["serve", "--docroot", "nope", "--authorized-keys", "id.pub", "--state-dir", "st"],
        ),
        ("keys_unknown_category", &["keys", "-s", "nonsense", "--root-keystore", "ks.db"]),
        ("crypt_not_an_envelope", &["crypt", "decrypt", "f", "-o", "out"]),
    ];
    for (name, args) in cases {
        insta::assert_snapshot!(*name, render(p, args));
    }
}

/// A closed port and the `--json` error event (code, retryable, message, hint).
#[test]
fn connection_errors() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let out = Command::new(FERRY).args(["keygen", "-f"]).arg(p.join("id")).output().unwrap();
    assert!(out.status.success());
    std::fs::write(p.join("f"), b"x").unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let port = port.to_string();
    let fp = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    // A closed port is retryable (a server may be restarting): with --retry 3 --retry-timeout 2s
    // one retry after 1 s (the next would start past the timeout), then the error says so;
    // --json shows the `retry` event.
    let args = [
        "cp",
        "--retry",
        "3",
        "--retry-timeout",
        "2s",
        "-i",
        "id",
        "-P",
        &port,
        "--host-key",
        fp,
        "f",
        "127.0.0.1:.",
    ];
    insta::assert_snapshot!("cp_port_closed", render(p, &args));
    let mut json = args.to_vec();
    json.insert(1, "--json");
    insta::assert_snapshot!("cp_port_closed_json", render(p, &json));
}
