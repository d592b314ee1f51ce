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
    run(w, &["crypt", "encrypt", "large.bin", "-o", "src/large.bin.ferry"], &env)?;

    run(w, &["keygen", "-f", "id_demo"], &[])?;
    fs::copy(w.join("id_demo.pub"), w.join("authorized_keys")).map_err(|e| fail("copy", e))?;
    let out = run(w, &["serve", "--state-dir", "state", "--print-fingerprint"], &[])?;
    let fingerprint = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut child = Command::new(ferry()?)
        .current_dir(w)
        .args(["serve", "--listen", "127.0.0.1:0", "--docroot", "docroot"])
        .args(["--authorized-keys", "authorized_keys", "--state-dir", "state", "--json"])
        .args(["--user", "demo"])
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
        "real processes on loopback: `ferry serve` on 127.0.0.1:{port}, host key {fingerprint}"
    );

    let common = ["-i", "id_demo", "--host-key", &fingerprint, "-P", &port, "-l", "10g"];
    let mut args: Vec<&str> = vec!["cp"];
    args.extend(common);
    args.extend(["src/large.bin.ferry", "src/tree", "demo@127.0.0.1:."]);
    let up = run(w, &args, &[])?;
    println!("  upload:   {}", summary(&up));
    for remote in ["127.0.0.1:large.bin.ferry", "127.0.0.1:tree"] {
        let mut args: Vec<&str> = vec!["cp"];
        args.extend(common);
        args.extend([remote, "back"]);
        let down = run(w, &args, &[])?;
        println!("  download: {}", summary(&down));
    }

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
    run(w, &["crypt", "decrypt", "back/large.bin.ferry", "-o", "large.back"], &env)?;
    if sha256(&w.join("large.back"))? != sha256(&w.join("large.bin"))? {
        return Err(fail("the downloaded envelope did not decrypt to the original", "large.bin"));
    }
    println!(
        "  verified: {} files identical (SHA-256) on the server and after the round trip; the large\n  \
         file travelled and is stored as a passphrase envelope (`ferry crypt encrypt`) the server\n  \
         cannot open, and `ferry crypt decrypt` restored it exactly\n",
        sent.len()
    );
    Ok(())
}
