//! The demo's first half: real processes on loopback. A throwaway client identity and server
//! identity, a real `ferry serve` process, the generated tree (its large file sealed first with
//! `ferry crypt encrypt`) uploaded and downloaded again with `ferry cp`, every file compared by
//! SHA-256, and the downloaded envelope opened with `ferry crypt decrypt`.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use sha2::{Digest, Sha256};

use crate::error::CliError;

/// A server process that is killed when the demo ends, whatever happens.
struct ServerGuard(Child);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn fail(what: &str, detail: impl std::fmt::Display) -> CliError {
    CliError::new(crate::exit::Exit::Failed, format!("demo: {what}: {detail}"))
}

fn ferry() -> Result<PathBuf, CliError> {
    std::env::current_exe().map_err(|e| fail("cannot find the ferry binary", e))
}

/// Runs `ferry ARGS` in `cwd` with `env`, returning its output, or an error with its stderr.
fn run(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Output, CliError> {
    let out = Command::new(ferry()?)
        .current_dir(cwd)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail("cannot run ferry", e))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(fail(&format!("`ferry {}` failed", args.join(" ")), stderr.trim()));
    }
    Ok(out)
}

fn sha256(path: &Path) -> Result<[u8; 32], CliError> {
    let bytes = fs::read(path).map_err(|e| fail(&format!("cannot read {}", path.display()), e))?;
    Ok(Sha256::digest(&bytes).into())
}

/// Every regular file under `root`, relative, sorted.
fn listing(root: &Path) -> Result<Vec<PathBuf>, CliError> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(|e| fail("cannot list", e))? {
            let path = entry.map_err(|e| fail("cannot list", e))?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(root).expect("under root").to_path_buf());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The last line `ferry cp` printed ("ferry: upload complete: N files, SIZE (B bytes) in S s (R
/// Mbit/s)").
fn summary(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("").trim();
    line.trim_start_matches("ferry: ").to_owned()
}

pub(super) fn run_loopback(files: &[Vec<u8>], passphrase: &str) -> Result<(), CliError> {
    let ws = tempfile::Builder::new()
        .prefix("ferry-demo-")
        .tempdir()
        .map_err(|e| fail("cannot create a scratch directory", e))?;
    let w = ws.path();
    for d in ["src/tree", "docroot", "back", "state"] {
        fs::create_dir_all(w.join(d)).map_err(|e| fail("cannot create a directory", e))?;
    }
    // The tree: the large file (sealed below), small files, empty files.
    fs::write(w.join("large.bin"), &files[0]).map_err(|e| fail("cannot write", e))?;
    for (i, f) in files.iter().enumerate().skip(1) {
        let name =
            if f.is_empty() { format!("tree/empty-{i}") } else { format!("tree/small-{i:03}") };
        fs::write(w.join("src").join(name), f).map_err(|e| fail("cannot write", e))?;
    }
    let env = [("FERRY_FILEPASS", passphrase)];

    run(w, &["keygen", "-f", "id_demo"], &[])?;
    let vault = Vault::prepare(w)?;
    let out = run(w, &["serve", "--config", "ferry.toml", "--print-fingerprint"], &[])?;
    let fingerprint = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut child = Command::new(ferry()?)
        .current_dir(w)
        .args(["serve", "--config", "ferry.toml", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail("cannot start ferry serve", e))?;
    let stdout = child.stdout.take().expect("piped");
    let _server = ServerGuard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).map_err(|e| fail("ferry serve", e))?;
    // {"address":"127.0.0.1:PORT","host_key":"SHA256:...","event":"listening"}
    let port = serde_json::from_str::<serde_json::Value>(&line)
        .ok()
        .filter(|v| v["event"] == "listening")
        .and_then(|v| v["address"].as_str()?.parse::<std::net::SocketAddr>().ok())
        .ok_or_else(|| fail("ferry serve did not say where it listens", line.trim()))?
        .port()
        .to_string();
    println!(
        "real processes on loopback: `ferry serve --config` on 127.0.0.1:{port} as {}, host key {fingerprint}",
        vault.account
    );

    let common = ["-i", "id_demo", "--host-key", &fingerprint, "-P", &port, "-l", "10g"];
    let cp = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args: Vec<&str> = vec!["cp"];
        args.extend(common);
        args.extend(extra);
        run(w, &args, env)
    };
    let up = cp(&["src/tree", "demo@127.0.0.1:."], &[])?;
    println!("  upload:   {}", summary(&up));
    let down = cp(&["127.0.0.1:tree", "back"], &[])?;
    println!("  download: {}", summary(&down));
    let sent = listing(&w.join("src"))?;
    for (name, root) in
        [("the server's docroot", w.join("docroot")), ("the download", w.join("back"))]
    {
        if listing(&root)? != sent {
            return Err(fail("file lists differ", name));
        }
        for f in &sent {
            if sha256(&w.join("src").join(f))? != sha256(&root.join(f))? {
                return Err(fail("content differs", format!("{} in {name}", f.display())));
            }
        }
    }
    println!(
        "  verified: {} files identical (SHA-256) on the server and after the round trip",
        sent.len()
    );

    // Client-side envelopes: sealed as it is sent, opened as it comes back.
    let up = cp(&["--file-crypt", "encrypt", "large.bin", "demo@127.0.0.1:."], &env)?;
    let stored = w.join("docroot/large.bin.ferry");
    let plain = fs::read(w.join("large.bin")).map_err(|e| fail("read", e))?;
    let raw = fs::read(&stored).map_err(|e| fail("read", e))?;
    let sample = &plain[plain.len() / 2..plain.len() / 2 + 64.min(plain.len() / 2)];
    if !raw.starts_with(b"FERRYENV") || raw.windows(sample.len()).any(|x| x == sample) {
        return Err(fail(
            "the --file-crypt upload is not stored as an envelope",
            "large.bin.ferry",
        ));
    }
    cp(&["--file-crypt", "decrypt", "127.0.0.1:large.bin.ferry", "back"], &env)?;
    run(w, &["crypt", "decrypt", "docroot/large.bin.ferry", "-o", "large.opened"], &env)?;
    for got in ["back/large.bin", "large.opened"] {
        if sha256(&w.join(got))? != sha256(&w.join("large.bin"))? {
            return Err(fail("the envelope did not open to the original", got));
        }
    }
    println!(
        "  envelope: `cp --file-crypt encrypt` {}\n  \
         the server stores large.bin.ferry, {} bytes the server cannot open (passphrase from\n  \
         FERRY_FILEPASS, never on the command line); `cp --file-crypt decrypt` brought back\n  \
         large.bin identical (SHA-256), and `ferry crypt decrypt` opens the stored copy too",
        summary(&up),
        raw.len()
    );
    resume(w, &common, plain.len() as u64)?;
    vault.show(w, &common)?;
    Ok(())
}

/// An upload killed part way (SIGKILL, as a crash or a lost laptop would end it) and run
/// again: the server kept the partial and its journal, the rerun sends only the rest.
fn resume(w: &Path, common: &[&str], size: u64) -> Result<(), CliError> {
    // The common options but their rate (the last two), then the rate and this upload.
    let upload = |rate: &str| {
        let mut args = vec!["cp".to_owned()];
        args.extend(common[..common.len() - 2].iter().map(|a| a.to_string()));
        args.extend(
            ["-l", rate, "--json", "large.bin", "demo@127.0.0.1:resumed.bin"].map(String::from),
        );
        args
    };
    // Slow enough (about 4 s for the file) to be interrupted part way on any machine.
    let args = upload(&format!("{}k", (size * 8 / 4 / 1000).max(100)));
    let mut child = Command::new(ferry()?)
        .current_dir(w)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail("cannot start ferry cp", e))?;
    let mut sent_before = 0;
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let Ok(line) = line else { break };
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if event["event"] == "progress" {
            sent_before = event["bytes"].as_u64().unwrap_or(0);
            // Past a few whole 1 MiB chunks (what a journal records) even for a small file.
            if sent_before >= size * 3 / 5 {
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    if w.join("docroot/resumed.bin").exists() {
        return Err(fail("the upload finished before it could be interrupted", "resumed.bin"));
    }
    let args = upload("10g");
    let again = run(w, &args.iter().map(String::as_str).collect::<Vec<_>>(), &[])?;
    let done = String::from_utf8_lossy(&again.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "done")
        .ok_or_else(|| fail("the rerun printed no done event", ""))?;
    let sent_again = done["new_bytes"].as_u64().unwrap_or(u64::MAX);
    if sha256(&w.join("docroot/resumed.bin"))? != sha256(&w.join("large.bin"))? {
        return Err(fail("the resumed upload differs from the original", "resumed.bin"));
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "  resume:   an upload of {:.1} MiB killed (SIGKILL) after {:.1} MiB; the same command again\n  \
         sent {:.1} MiB (the server checked the partial's journal, chunk by chunk, and asked only\n  \
         for the rest); the file is identical (SHA-256)",
        mib(size),
        mib(sent_before),
        mib(sent_again)
    );
    Ok(())
}

/// The demo's SSEAR user `vault`: its `ssear` secret in a root keystore of the demo's own,
/// copied into a local keystore of the server's account; the configuration that serves it
/// beside the plain user `demo`. Run as root, the server becomes `nobody` (run_as) and the
/// directories it writes belong to it.
struct Vault {
    account: String,
    keystore: PathBuf,
    env: Vec<(String, String)>,
}

impl Vault {
    fn prepare(w: &Path) -> Result<Self, CliError> {
        use std::os::unix::fs::PermissionsExt;
        let root = rustix::process::geteuid().is_root();
        let account = if root { "nobody".to_owned() } else { crate::keys::current_user_name() };
        let mode = |p: &Path, m: u32| {
            fs::set_permissions(p, fs::Permissions::from_mode(m)).map_err(|e| fail("chmod", e))
        };
        for d in ["vault", "keys", "state/keystores"] {
            fs::create_dir_all(w.join(d)).map_err(|e| fail("cannot create a directory", e))?;
        }
        mode(&w.join("keys"), 0o700)?;
        mode(&w.join("state"), 0o700)?;
        mode(&w.join("state/keystores"), 0o700)?;
        if root {
            // nobody reaches its directories by path; they are its own.
            mode(w, 0o755)?;
            for d in ["docroot", "vault", "state", "state/keystores"] {
                std::os::unix::fs::chown(w.join(d), Some(65534), Some(65534))
                    .map_err(|e| fail("chown", e))?;
            }
        }
        let root_ks = w.join("keys/rootkeystore.db").display().to_string();
        let env = vec![("FERRY_ROOT_KEYSTORE".to_owned(), root_ks)];
        let keystore = w.join("state/keystores/vault.db");
        let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(w, &["keys", "-i"], &envs)?;
        run(w, &["keys", "-u", "vault", "-s", "ssear", "--generate"], &envs)?;
        let ks = keystore.display().to_string();
        let sync = ["keys", "-i", "-u", "vault", "--account", &account, "--local-keystore", &ks];
        run(w, &sync, &envs)?;
        let public = fs::read_to_string(w.join("id_demo.pub")).map_err(|e| fail("read", e))?;
        let run_as = if root { format!("run_as = \"{account}\"\n") } else { String::new() };
        let config = format!(
            "{run_as}listen = \"127.0.0.1:0\"\nstate_dir = \"{d}/state\"\ndefault_user = \"demo\"\n\n\
             [[user]]\nname = \"demo\"\ndocroot = \"{d}/docroot\"\nkeys = [\"{k}\"]\n\n\
             [[user]]\nname = \"vault\"\ndocroot = \"{d}/vault\"\nkeys = [\"{k}\"]\nssear = true\n",
            d = w.display(),
            k = public.trim()
        );
        fs::write(w.join("ferry.toml"), config).map_err(|e| fail("cannot write", e))?;
        mode(&w.join("ferry.toml"), if root { 0o644 } else { 0o600 })?;
        Ok(Self { account, keystore, env })
    }

    /// Uploads the large file in clear to `vault`, shows how it is stored, downloads it back.
    fn show(&self, w: &Path, common: &[&str]) -> Result<(), CliError> {
        let mut args: Vec<&str> = vec!["cp"];
        args.extend(common);
        args.extend(["large.bin", "vault@127.0.0.1:large.bin"]);
        let up = run(w, &args, &[])?;
        let stored = fs::read(w.join("vault/large.bin")).map_err(|e| fail("read", e))?;
        let plain = fs::read(w.join("large.bin")).map_err(|e| fail("read", e))?;
        let sample = &plain[plain.len() / 2..plain.len() / 2 + 64.min(plain.len() / 2)];
        if !stored.starts_with(b"FERRYENV") || stored.windows(sample.len()).any(|x| x == sample) {
            return Err(fail("the SSEAR upload is not stored encrypted", "vault/large.bin"));
        }
        let ks = self.keystore.display().to_string();
        let envs: Vec<(&str, &str)> =
            self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let inspect =
            run(w, &["crypt", "inspect", "vault/large.bin", "--local-keystore", &ks], &envs)?;
        let text = String::from_utf8_lossy(&inspect.stdout);
        let slot = text
            .lines()
            .find_map(|l| l.split_once("keystore secret ").map(|(_, s)| s.to_owned()))
            .map(|s| s.split(" (generation").next().unwrap_or_default().to_owned())
            .ok_or_else(|| fail("ferry crypt inspect shows no keystore slot", text.trim()))?;
        let mut args: Vec<&str> = vec!["cp"];
        args.extend(common);
        args.extend(["vault@127.0.0.1:large.bin", "large.vault"]);
        run(w, &args, &[])?;
        if sha256(&w.join("large.vault"))? != sha256(&w.join("large.bin"))? {
            return Err(fail("the SSEAR download differs from the original", "large.bin"));
        }
        println!(
            "  SSEAR:    user vault stores its files encrypted at rest; {}\n  \
             on the server: a Ferry envelope of {} bytes (no plaintext on disk), its data key\n  \
             wrapped under keystore secret {slot}; downloaded back (decrypted by the server):\n  \
             identical (SHA-256)\n",
            summary(&up),
            stored.len(),
        );
        Ok(())
    }
}
