//! Benchmarks for Ferry live in `benches/` (criterion) and in this crate's binaries
//! (side-by-side comparison runners). See `BENCHMARKS.md` at the workspace root.
#![forbid(unsafe_code)]

pub mod runner {
    //! What the comparison runners (`src/bin`) share: finding the binaries built beside them,
    //! running a command to success, and a transfer user's SSEAR secret for a `ferry serve
    //! --config` they start.

    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    /// A runner's result: what failed, as a message.
    pub type Res<T> = Result<T, String>;

    /// The binary `name` next to this executable (the same build profile).
    pub fn sibling(name: &str) -> Res<PathBuf> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot locate this executable: {e}"))?;
        let dir = exe.parent().ok_or("this executable has no parent directory")?;
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "{} not found next to {}: build all of them in the same profile with \
                 `cargo build --release -p ferry -p ferry-benches --bins`",
                p.display(),
                exe.display()
            ))
        }
    }

    /// Runs `cmd` (stdin closed) to success; its stdout, or what it said on stderr.
    pub fn run_ok(cmd: &mut Command, what: &str) -> Res<String> {
        let out =
            cmd.stdin(Stdio::null()).output().map_err(|e| format!("{what}: cannot run: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether this process runs as root.
    pub fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// The account a `ferry serve --config` of a runner serves as: `nobody` (its `run_as`)
    /// when the runner is root, else the runner's own.
    pub fn daemon_account() -> String {
        if is_root() { "nobody".into() } else { std::env::var("USER").unwrap_or_default() }
    }

    /// Gives `user` a new `ssear` secret in the root keystore `root_keystore` (created by
    /// `ferry keys -i` first if needed) and copies it into `keystore`, the local keystore of
    /// `account` that the server reads.
    pub fn ssear_secret(
        ferry: &Path,
        root_keystore: &Path,
        user: &str,
        keystore: &Path,
        account: &str,
    ) -> Res<()> {
        let keys = |args: &[&str]| {
            let mut c = Command::new(ferry);
            c.arg("keys").args(args).env("FERRY_ROOT_KEYSTORE", root_keystore);
            run_ok(&mut c, &format!("ferry keys {}", args.join(" "))).map(drop)
        };
        if !root_keystore.exists() {
            keys(&["-i"])?;
        }
        keys(&["-u", user, "-s", "ssear", "--generate"])?;
        let ks = keystore.display().to_string();
        keys(&["-i", "-u", user, "--account", account, "--local-keystore", &ks])
    }
}
