//! `ferry cp`: upload or download files and directory trees. Arguments become
//! [`ClientOptions`] and a job for [`multi`] (one session or several, retried); presentation is a progress bar or `--json` events and a
//! summary; every [`ClientError`] maps to one exit code ([`client_error`]). The transfer itself
//! is `ferry_net::client`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ferry_engine::atrest::Argon2Params;
use ferry_engine::control::FileStatus;
use ferry_engine::crypto::CipherSuite;
use ferry_engine::io::docroot::{Docroot, RelPath};
use ferry_engine::io::driver::DriveReport;
use ferry_engine::io::envelope::{Envelopes, Passkey};
use ferry_engine::io::files::{Destination, SinkLimits};
use ferry_engine::io::filter::{Rule, Rules};
use ferry_engine::io::source::{self, SourceFile, SourceLimits};
use ferry_engine::io::storage::{PlainFiles, Storage};
use ferry_engine::rate::Policy;
use ferry_engine::session::BlockSink;
use ferry_engine::setup::Direction;
use ferry_net::client::{self, ClientError, ClientEvent, ClientOptions, DEFAULT_PORT, HostKey};
use ferry_net::identity::Identity;
use ferry_net::multi;

use super::progress::{self, Mode, Reporter};
use crate::error::CliError;
use crate::exit::Exit;

/// Arguments of `ferry cp`.
#[derive(Debug, clap::Args)]
pub(crate) struct CpArgs {
    /// The client identity: an OpenSSH ed25519 private key (`ferry keygen -f PATH`).
    #[arg(short = 'i', long = "identity", value_name = "KEYFILE")]
    identity: PathBuf,
    /// The server's host-key fingerprint (`SHA256:...`, from `ferry serve --print-fingerprint`).
    #[arg(long = "host-key", value_name = "FINGERPRINT")]
    host_key: Option<String>,
    /// File of pinned server keys, one `HOST[:PORT] SHA256:...` per line (`#` comments), used
    /// when --host-key is not given. Default: `$HOME/.config/ferry/known_hosts` if it exists.
    #[arg(long = "known-hosts", value_name = "FILE")]
    known_hosts: Option<PathBuf>,
    /// The server's control port (UDP).
    #[arg(short = 'P', long = "port", value_name = "PORT")]
    port: Option<u16>,
    /// Target rate in bits/s with k/m/g suffixes (e.g. 500m). Default: none, the policy finds
    /// the path's rate (a server's cap still applies); `--policy fixed` needs one.
    #[arg(short = 'l', long = "target-rate", value_parser = super::parse_rate)]
    target_rate: Option<u64>,
    /// Minimum rate in bits/s with k/m/g suffixes.
    #[arg(short = 'm', long = "min-rate", default_value = "0", value_parser = super::parse_rate)]
    min_rate: u64,
    /// Rate policy: fixed, high, fair or low.
    #[arg(long, default_value = "fair")]
    policy: Policy,
    /// Transit cipher: aes128, aes192, aes256 or none (packets are authenticated even with none).
    #[arg(short = 'c', long = "cipher", default_value = "aes128", value_parser = parse_suite)]
    cipher: CipherSuite,
    /// Datagram size in bytes: the UDP payload of a full data packet, 576 to 8972. Default: the
    /// largest the route to the server carries unfragmented (1472 on a 1500-byte Ethernet, 8972
    /// on loopback and jumbo-frame links). Set it lower when a link beyond the first hop has a
    /// smaller MTU than this host's route (a tunnel, a VPN).
    #[arg(short = 'Z', long = "datagram-size", value_name = "BYTES", value_parser = parse_datagram)]
    datagram_size: Option<usize>,
    /// Sessions to carry the transfer at once (ascp's -C), 1 to 16: each has its own connection,
    /// data socket and threads, so more cores move it. Files are dealt out whole, and files of
    /// --multi-session-threshold bytes or more are cut into one part per session, assembled on
    /// the server and moved into place once every part verified. A session that fails on the
    /// way is run again for what it had not delivered. Downloads likewise: the server deals its
    /// listing out the same way and each session asks for its share.
    #[arg(short = 'C', long = "sessions", value_name = "N", default_value = "1",
          value_parser = clap::value_parser!(u8).range(1..=16))]
    sessions: u8,
    /// With -C: files at least this large (bytes, with a k/m/g/t suffix) are cut into parts,
    /// one per session; smaller ones go whole.
    #[arg(long = "multi-session-threshold", value_name = "SIZE", default_value = THRESHOLD_ARG,
          value_parser = super::parse_size)]
    multi_session_threshold: u64,
    /// Retries after a failure worth retrying (the network went away, the server restarted or
    /// cancelled the session, the idle timeout fired; the exit-code table's "retryable"): each
    /// runs a new session for the files that had no outcome yet, after a wait of 1 s, doubling
    /// up to 30 s. With -C, per session. 0: fail at once. (ascp does not retry by itself.)
    #[arg(long = "retry", value_name = "N", default_value_t = multi::Retry::default().retries)]
    retry: u32,
    /// No retry starts once this long has passed since the first failure (seconds, or with an
    /// s/m/h suffix).
    #[arg(long = "retry-timeout", value_name = "DURATION", default_value = RETRY_TIMEOUT_ARG,
          value_parser = super::parse_duration)]
    retry_timeout: std::time::Duration,
    /// Leave out what matches PATTERN (ascp's -E; repeatable). Uploads. -E and -N apply in
    /// the order given, the first match decides, and what no rule matches is sent. A pattern
    /// without `/` matches a name at any depth (`*.tmp`); one with `/` the whole path in the
    /// transfer, starting with the source's name (`tree/cache/*`). `*` and `?` do not cross
    /// `/`, `**` does; `[a-z]`, `[!a-z]`; a trailing `/` matches directories only. A directory
    /// left out is not looked into.
    #[arg(short = 'E', long = "exclude", value_name = "PATTERN", action = clap::ArgAction::Append)]
    exclude: Vec<String>,
    /// Send what matches PATTERN even if a later -E would leave it out (ascp's -N; repeatable).
    /// Uploads.
    #[arg(short = 'N', long = "include", value_name = "PATTERN", action = clap::ArgAction::Append)]
    include: Vec<String>,
    /// Read the sources from FILE, one path per line (`-`: standard input; empty lines are
    /// skipped), instead of from the command line (ascp's --file-list). Uploads.
    #[arg(long = "file-list", value_name = "FILE")]
    file_list: Option<PathBuf>,
    /// Create the destination directory, with any missing parents, if it does not exist (ascp's
    /// -d): on the server for an upload, here for a download. The destination then always
    /// names a directory, so a single file is stored inside it under its own name, never
    /// renamed to the destination.
    #[arg(short = 'd', long = "create-dir")]
    create_dir: bool,
    /// Give each file at the destination its source's modification time (ascp's -p), in either
    /// direction, also for files sent in parts with -C. Ferry differs on purpose: only the
    /// modification time is carried (the FILE frame holds one time); the access time is the
    /// time of writing.
    #[arg(short = 'p', long = "preserve-times")]
    preserve_times: bool,
    /// Resume level (ascp's -k). 1 (the default) or more resumes interrupted files: the receiver
    /// keeps each partly received file larger than 1 MiB in a partial beside its final name
    /// (`.NAME.ferry-partial-HEX`) with a journal of the 1 MiB chunks it holds
    /// (`.NAME.ferry-journal-HEX`); the next attempt, a retry or a rerun of the same command,
    /// checks every recorded chunk against the partial's bytes and sends only the rest, and the
    /// whole file is still verified end to end. A partial of another version of the source
    /// (its size or modification time changed) is started again. 0 resends everything and
    /// leaves no partial behind. The level also says what makes a file already at the
    /// destination "the same" for --overwrite (ascp's meaning): 1 its size; 2 its size and the
    /// BLAKE3 chaining values of up to eight sampled 1 MiB chunks (the first, the last and six
    /// between: a sparse checksum, a few MiB read on each side); 3 its size and BLAKE3 of the
    /// whole file (both sides read all of it before it is sent). Ferry differs on purpose:
    /// ascp resumes only on a rerun, and compares modification times at level 1 (Ferry leaves
    /// times to --overwrite older); a partial is always checked chunk by chunk, whatever the
    /// level, and every file is verified end to end.
    #[arg(short = 'k', long = "resume", value_name = "LEVEL", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(0..=3))]
    resume: u8,
    /// What happens to a file whose name already exists at the destination (ascp's
    /// --overwrite): never (keep every existing file; the incoming one is skipped), always
    /// (replace it), diff (replace it unless it is the same: ascp's default), older (replace it
    /// if its modification time is older than the source's), diff+older (both). "The same" is
    /// judged by -k: 1 the same size, 2 and the same sampled chunks, 3 and the same content;
    /// at 0, never. An existing file is replaced only once the new copy verified, atomically;
    /// a skipped file is reported with status `skipped` and its reason, and is no failure. The
    /// server's policy may forbid replacing on an upload (the file then fails, kept as it was).
    /// Ferry differs on purpose when none is given: an existing file that is the same is
    /// skipped and one that is not fails and is kept (the file is never replaced unless asked).
    #[arg(long = "overwrite", value_name = "POLICY",
          value_parser = ["never", "always", "diff", "older", "diff+older"])]
    overwrite: Option<String>,
    /// Report each transferred file's SHA-256 (ascp's --file-checksum; ascp also offers md5
    /// and sha1, Ferry only sha256): hashed from the local copy once the transfer ends (the
    /// source of an upload, if it has not changed since it was sent; the landed file of a
    /// download), in the `file` event of each verified file (which then comes after the
    /// transfer, with `sha256`), in a JSON --file-manifest, in the -L log and, without --json,
    /// one `SHA256 (PATH) = HEX` line per file on stdout. Every file is verified end to end
    /// (BLAKE3) either way; this is the digest other tools check.
    #[arg(long = "file-checksum", value_name = "TYPE", default_value = "none",
          value_parser = ["sha256", "none"])]
    file_checksum: String,
    /// Client-side encryption (ascp's --file-crypt). `encrypt` (uploads): each file is sealed
    /// into an envelope (docs/FORMAT.md) as it is sent, in bounded memory, and stored on the
    /// server as NAME.ferry; the server never sees the passphrase, the keys or the plaintext.
    /// `decrypt` (downloads): each envelope is opened as it arrives and its plaintext lands
    /// under the name without `.ferry`, once the whole envelope verified; without it an
    /// envelope lands as it is. The passphrase: FERRY_FILEPASS, else the `filepass` secret of
    /// your local keystore (`ferry keys -s filepass`), else a prompt (twice for encrypt); never
    /// an argument. A wrong passphrase (exit 11), something that is not an envelope (10), or a
    /// damaged or cut envelope (13) leaves no file. Files are sent whole (never in -C parts).
    /// An interrupted encrypted upload resumes (-k): the server sends back the header of the
    /// envelope it holds part of, and the rest is sealed under it (a download with decrypt
    /// starts its files again). Ferry differs on purpose: ascp's envelope format is its own;
    /// Ferry's is documented.
    #[arg(long = "file-crypt", value_name = "MODE", value_parser = ["encrypt", "decrypt"])]
    file_crypt: Option<String>,
    /// Name each file's partial `NAME` + SUFFIX beside its final name while it arrives (ascp's
    /// --partial-file-suffix; e.g. `.partial`), on the server for an upload, here for a
    /// download; the suffix is taken off once the file verified. Without it the partial is the
    /// hidden `.NAME.ferry-partial-HEX`. 1 to 64 bytes, no `/`. An existing file of that name
    /// is never overwritten (the incoming file fails, and says so) and is removed only when
    /// the journal of this file vouches that it is an earlier attempt's partial. Files sent in
    /// parts (-C) use the hidden name.
    #[arg(long = "partial-file-suffix", value_name = "SUFFIX")]
    partial_file_suffix: Option<String>,
    /// Accepted for ascp command lines, and ignored: Ferry's data shares the server's one UDP
    /// port with its control connection (the server tells the client its data port at set-up),
    /// so there is no separate data port to choose.
    #[arg(short = 'O', long = "fasp-port", value_name = "PORT")]
    _fasp_port: Option<u16>,
    /// Write a receipt of the transfer (ascp's --file-manifest): `text` (one transferred path
    /// per line, quoted and escaped if it holds a control character, then `# failed:` lines) or
    /// `json`; `none` (the default) writes none. It is
    /// written into --file-manifest-path as `ferry-manifest-TIME-PID.txt` (or `.json`), never
    /// over an existing file, and also when some files failed.
    #[arg(long = "file-manifest", value_name = "FORMAT", default_value = "none",
          value_parser = ["none", "text", "json"])]
    file_manifest: String,
    /// The directory --file-manifest writes into [default: the current directory].
    #[arg(long = "file-manifest-path", value_name = "DIR")]
    file_manifest_path: Option<PathBuf>,
    /// Also write this transfer's log into a file of its own in DIR (ascp's -L):
    /// `ferry-cp-TIME-PID.log`, mode 0600, never over an existing file. It holds the start, each
    /// retry, each failed file and the outcome (`ferry=info`, or what `FERRY_LOG` selects).
    #[arg(short = 'L', long = "log-dir", value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// Strip PREFIX (a local directory) from each source's path and keep the rest of it at the
    /// destination (ascp's --src-base): with `--src-base /data /data/a/b/f host:in`, f arrives
    /// as `in/a/b/f`. Every source must be beneath PREFIX. Uploads. -E and -N then match the
    /// path below PREFIX.
    #[arg(long = "src-base", value_name = "PREFIX")]
    src_base: Option<PathBuf>,
    /// Delete each source file once the server verified its copy (ascp's
    /// --remove-after-transfer). Uploads. A file that changed since it was listed (size or
    /// modification time) is kept, and said so; a file that failed is kept.
    #[arg(long = "remove-after-transfer")]
    remove_after_transfer: bool,
    /// With --remove-after-transfer: then remove the directories the removed files were in,
    /// and their parents inside each source directory, where that left them empty (ascp's
    /// --remove-empty-directories; the source directory named on the command line stays).
    #[arg(long = "remove-empty-directories", requires = "remove_after_transfer")]
    remove_empty_directories: bool,
    /// -E and -N in command-line order (filled from the parsed matches by `order_rules`).
    #[arg(skip)]
    rules: Vec<(bool, String)>,
    /// Machine-readable output: JSON events, one object per line on stdout (`session`,
    /// `progress` about every 250 ms, then `done` or `error`), instead of the progress bar and
    /// the summary line.
    #[arg(long)]
    json: bool,
    /// No progress bar (it is shown only when stderr is a terminal anyway).
    #[arg(short = 'q', long)]
    quiet: bool,
    /// The transfer user to act as on the server (as `user@host:path` does; the two must
    /// agree). Default: the server's default user.
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// The server, for paths written without `host:` (ascp's --host): then --mode says which
    /// side is remote, and no path may name a host. `[::1]` or `::1` for an IPv6 address; the
    /// port is -P.
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// With --host (ascp's --mode): `send` (the default) uploads the sources to the
    /// destination path on the server; `recv` downloads the one source path on the server to
    /// the local destination.
    #[arg(long, value_name = "MODE", requires = "host", value_parser = ["send", "recv"])]
    mode: Option<String>,
    /// Sources, then the destination (the last path). Upload: local files and directories, then
    /// the remote directory (or, for one file, the remote name), `[user@]host[:port]:path`.
    /// Download: one remote path, then the local directory or name. Exactly one side is remote.
    /// With --file-list, only the destination.
    #[arg(required = true, num_args = 1.., value_name = "PATH")]
    paths: Vec<String>,
}

impl CpArgs {
    /// Puts -E and -N in the order they were given: clap keeps each option's values apart, and
    /// the order across the two decides.
    pub(crate) fn order_rules(&mut self, m: &clap::ArgMatches) {
        let mut rules: Vec<(usize, bool, String)> = Vec::new();
        for (id, include) in [("exclude", false), ("include", true)] {
            let (Some(values), Some(at)) = (m.get_many::<String>(id), m.indices_of(id)) else {
                continue;
            };
            rules.extend(values.zip(at).map(|(v, i)| (i, include, v.clone())));
        }
        rules.sort_by_key(|r| r.0);
        self.rules = rules.into_iter().map(|(_, inc, v)| (inc, v)).collect();
    }

    /// The include and exclude rules.
    fn filter(&self) -> Result<Rules, CliError> {
        let bad = |e: String| {
            CliError::new(Exit::Usage, format!("bad -E/-N pattern: {e}"))
                .hint("see `ferry cp --help` for the pattern syntax")
        };
        let rules = self.rules.iter().map(|(inc, p)| Rule::new(*inc, p)).collect::<Result<_, _>>();
        Rules::new(rules.map_err(bad)?).map_err(bad)
    }

    /// The sources (the command line's, or `--file-list`'s) and the destination.
    fn source_args(&self) -> Result<(Vec<String>, String), CliError> {
        let Some(list) = &self.file_list else {
            return match self.paths.split_last() {
                Some((dest, sources)) if !sources.is_empty() => {
                    Ok((sources.to_vec(), dest.clone()))
                }
                _ => Err(usage(
                    "give the sources and then the destination (or --file-list FILE and the \
                     destination)"
                        .into(),
                )),
            };
        };
        // With --file-list, the one path on the command line is the destination.
        let [dest] = self.paths.as_slice() else {
            return Err(usage(
                "--file-list gives the sources: the command line then names only the destination"
                    .into(),
            ));
        };
        let dest = dest.clone();
        let text = if list.as_os_str() == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map(|_| s)
        } else {
            std::fs::read_to_string(list)
        }
        .map_err(|e| {
            CliError::new(Exit::Local, format!("cannot read the file list {}: {e}", list.display()))
                .hint("give a readable text file of paths, one per line (or - for standard input)")
        })?;
        let sources: Vec<String> = text
            .lines()
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if sources.is_empty() {
            return Err(CliError::new(
                Exit::Usage,
                format!("the file list {} names no sources", list.display()),
            ));
        }
        Ok((sources, dest))
    }
}

/// `--multi-session-threshold`'s default as written in `--help`: the library's
/// [`DEFAULT_PART_THRESHOLD`](ferry_engine::io::source::DEFAULT_PART_THRESHOLD).
const THRESHOLD_ARG: &str = "64m";

/// `--retry-timeout`'s default as written in `--help`: the library's
/// [`Retry::default`](multi::Retry::default).
const RETRY_TIMEOUT_ARG: &str = "5m";

fn parse_suite(s: &str) -> Result<CipherSuite, String> {
    CipherSuite::ALL
        .into_iter()
        .find(|c| c.name() == s)
        .ok_or_else(|| format!("unknown cipher {s:?}: expected aes128, aes192, aes256 or none"))
}

fn parse_datagram(s: &str) -> Result<usize, String> {
    let max = ferry_engine::wire::MAX_DATAGRAM;
    match s.parse::<usize>() {
        Ok(n) if (576..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a datagram size: give bytes from 576 (the smallest every IPv4 path \
             carries) to {max} (a 9000-byte jumbo frame's UDP payload)"
        )),
    }
}

/// A remote location `[user@]host[:port]:path`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Remote {
    /// The user named before the host (as written; checked later).
    user: Option<String>,
    host: String,
    port: Option<u16>,
    path: String,
}

/// Parses a remote spec; `None` for a local path.
pub(crate) fn parse_remote(s: &str) -> Option<Remote> {
    if s.starts_with('/') || s.starts_with('.') {
        return None;
    }
    // The user is what precedes the last `@` before the first `:` (user names may hold `@`;
    // paths may too, after the `:`).
    let head = &s[..s.find(':').unwrap_or(s.len())];
    let (user, rest) = match head.rfind('@') {
        Some(at) => (Some(s[..at].to_owned()), &s[at + 1..]),
        None => (None, s),
    };
    let (host, after) = if let Some(r) = rest.strip_prefix('[') {
        let (h, a) = r.split_once(']')?;
        (h.to_owned(), a.strip_prefix(':')?)
    } else {
        let (h, a) = rest.split_once(':')?;
        if h.contains('/') || h.is_empty() {
            return None;
        }
        (h.to_owned(), a)
    };
    let (port, path) = match after.split_once(':') {
        Some((p, path)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            (p.parse().ok(), path)
        }
        _ => (None, after),
    };
    Some(Remote { user, host, port, path: path.to_owned() })
}

pub(crate) fn run(args: CpArgs) -> Result<(), CliError> {
    let json = args.json;
    let result = run_inner(args);
    if json && let Err(e) = &result {
        progress::emit(
            "error",
            serde_json::json!({
                "code": e.code.code(),
                "retryable": e.code.retryable(),
                "message": e.message,
                "hint": e.hint,
            }),
        );
    }
    result
}

fn usage(m: String) -> CliError {
    CliError::new(Exit::Usage, m).hint(
        "ferry cp -i KEY --host-key SHA256:... SOURCE... [user@]host:PATH, or host:PATH LOCAL",
    )
}

/// The transfer user: `--user` or `user@host`, the same if both; empty for none.
fn user(args: &CpArgs, remote: &Remote) -> Result<String, CliError> {
    let user = match (&args.user, &remote.user) {
        (Some(a), Some(b)) if a != b => {
            return Err(usage(format!("--user {a:?} and {b:?}@{} name two users", remote.host)));
        }
        (Some(u), _) | (None, Some(u)) => u.clone(),
        (None, None) => return Ok(String::new()),
    };
    ferry_keys::check_user_name(&user).map_err(|e| {
        CliError::new(Exit::Usage, format!("invalid user name {user:?}: {e}"))
            .hint("name the transfer user as the server's configuration does: USER@host:PATH")
    })?;
    Ok(user)
}

/// Which side is remote: the direction and the remote location.
/// `--host HOST [--mode send|recv]`: every path is a plain path, the mode says which side is on
/// the server.
fn with_host(
    host: &str,
    mode: Option<&str>,
    dest: &str,
    sources: &[String],
) -> Result<(Direction, Remote), CliError> {
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() || host.contains('/') {
        return Err(usage(format!("--host {host:?} is not a host name or address")));
    }
    let mut paths = std::iter::once(dest).chain(sources.iter().map(String::as_str));
    if let Some(p) = paths.find(|p| parse_remote(p).is_some_and(|r| r.host == host)) {
        return Err(usage(format!(
            "{p:?} names a host, and --host {host} already does: write the path alone"
        )));
    }
    let remote = |path: &str| Remote {
        user: None,
        host: host.to_owned(),
        port: None,
        path: path.to_owned(),
    };
    match mode.unwrap_or("send") {
        "send" => Ok((Direction::Upload, remote(dest))),
        _ => match sources {
            [one] => Ok((Direction::Download, remote(one))),
            _ => Err(usage("--mode recv downloads one path from the server".into())),
        },
    }
}

fn direction(dest: &str, sources: &[String]) -> Result<(Direction, Remote), CliError> {
    let remote_dest = parse_remote(dest);
    let remote_sources: Vec<_> = sources.iter().map(|s| parse_remote(s)).collect();
    match (remote_dest, remote_sources.iter().all(Option::is_none)) {
        (Some(r), true) => Ok((Direction::Upload, r)),
        (None, _) if remote_sources.iter().all(Option::is_some) => {
            if sources.len() != 1 {
                return Err(usage("a download takes one remote source".into()));
            }
            Ok((Direction::Download, remote_sources.into_iter().next().flatten().expect("one")))
        }
        _ => Err(usage("exactly one side must be remote (host:path)".into())),
    }
}

fn run_inner(args: CpArgs) -> Result<(), CliError> {
    let (sources, dest) = args.source_args()?;
    let (direction, remote) = match &args.host {
        None => direction(&dest, &sources)?,
        Some(host) => with_host(host, args.mode.as_deref(), &dest, &sources)?,
    };
    let rules = args.filter()?;
    if direction == Direction::Download && args.remove_after_transfer {
        return Err(usage(
            "--remove-after-transfer removes local sources after an upload; a download has none"
                .into(),
        ));
    }
    if direction == Direction::Download
        && (!rules.is_empty() || args.file_list.is_some() || args.src_base.is_some())
    {
        return Err(usage(
            "-E, -N, --file-list and --src-base select what to upload; a download names its one remote source"
                .into(),
        ));
    }
    let envelopes = match (args.file_crypt.as_deref(), direction) {
        (None, _) => None,
        (Some("encrypt"), Direction::Upload) | (Some("decrypt"), Direction::Download) => {
            let encrypt = direction == Direction::Upload;
            let pass = crate::crypt::file_passphrase(encrypt)?;
            let passkey = Arc::new(Passkey::new(pass, Argon2Params::DEFAULT));
            if encrypt {
                // The one derivation, before anything else (it takes a moment and 64 MiB).
                passkey.sealing_key().map_err(crate::crypt::open_failure)?;
            }
            Some(Envelopes::new(passkey))
        }
        (Some(mode), _) => {
            let (what, other) =
                if mode == "encrypt" { ("seals", "an upload") } else { ("opens", "a download") };
            return Err(usage(format!(
                "--file-crypt {mode} {what} envelopes in {other}; this is not one"
            )));
        }
    };
    if let Some(sfx) = &args.partial_file_suffix {
        ferry_engine::setup::check_partial_suffix(sfx)
            .map_err(|e| usage(format!("--partial-file-suffix {sfx:?}: {e}")))?;
    }
    let log_file = args.log_dir.as_deref().map(open_log).transpose()?;
    let logging = log_file.is_some();
    super::log::install_with_file("ferry cp", "ferry=warn", log_file.map(|(f, _)| f));
    if logging {
        let what = if direction == Direction::Upload { "upload" } else { "download" };
        let remote_shown = ferry_engine::io::docroot::escape(&remote.path, 300);
        tracing::info!(
            target: "ferry::cp",
            "{what}: {} sources, {} {remote_shown} (sessions {}, retries {})",
            sources.len(),
            remote.host,
            args.sessions,
            args.retry
        );
    }
    ferry_net::sockets::raise_fd_limit();
    let identity = Identity::read(&args.identity).map_err(|e| {
        CliError::new(Exit::Identity, format!("cannot use the identity: {e}")).hint(
            "create one with `ferry keygen -f PATH` (private key mode 0600) and pass it with -i",
        )
    })?;
    // The local side first, so local mistakes cost no round trip.
    let dest = &dest;
    let mut sent: Vec<SourceFile> = Vec::new();
    let transfer = match direction {
        Direction::Upload => {
            let mut files = Vec::new();
            for s in &sources {
                files.extend(local_sources(s, args.src_base.as_deref(), &rules)?);
            }
            // With --src-base the destination is a directory the kept paths go beneath.
            let single = files.len() == 1 && args.src_base.is_none();
            if args.remove_after_transfer || args.file_checksum == "sha256" {
                sent = files.clone();
            }
            let shares = if args.sessions > 1 {
                let (n, threshold) = (args.sessions.into(), threshold(&args, envelopes.as_ref()));
                source::shares(files, n, threshold, source::transfer_id())
            } else {
                // The listing (local_sources) already refused what cannot be sent.
                vec![files]
            };
            Job::Shares { shares, single, path: remote.path.clone() }
        }
        Direction::Download => {
            if args.create_dir {
                std::fs::create_dir_all(dest).map_err(|e| {
                    CliError::new(Exit::Local, format!("cannot create the directory {dest}: {e}"))
                        .hint("check the path and its permissions")
                })?;
            }
            // The destination's mistakes before any round trip.
            download_sink(dest, SinkLimits::default(), &*storage(envelopes.as_ref()))?;
            Job::Download {
                path: remote.path.clone(),
                dest: dest.clone(),
                sessions: args.sessions,
                threshold: threshold(&args, envelopes.as_ref()),
            }
        }
    };
    let host_key = match &args.host_key {
        Some(fp) => HostKey::Pinned(fp.clone()),
        None => HostKey::KnownHosts(args.known_hosts.clone()),
    };
    let port = args.port.or(remote.port).unwrap_or(DEFAULT_PORT);
    let user = user(&args, &remote)?;
    let opts = ClientOptions {
        host: remote.host.clone(),
        port,
        identity,
        host_key,
        cipher: args.cipher,
        target_rate: target_rate(&args)?,
        min_rate: args.min_rate,
        policy: args.policy,
        user,
        datagram_size: args.datagram_size,
        create_dir: args.create_dir,
        preserve_times: args.preserve_times,
        resume: args.resume,
        // The held head of an envelope comes back, and the next attempt seals under it.
        sealed: envelopes.is_some(),
        partial_suffix: args.partial_file_suffix.clone(),
        overwrite: overwrite_policy(args.overwrite.as_deref()),
    };
    let started = Instant::now();
    let reporter =
        Arc::new(Mutex::new(Reporter::new(Mode::choose(args.json, args.quiet), opts.target_rate)));
    // With checksums, the verified files' events wait for their digest (after the transfer).
    let checksums = args.file_checksum == "sha256";
    reporter.lock().expect("reporter").defer_verified(checksums);
    let storage = storage(envelopes.as_ref());
    let result = transfer_blocking(&opts, transfer, &args, storage, reporter.clone());
    let retries = {
        let mut r = reporter.lock().expect("reporter");
        r.finish();
        r.retries()
    };
    let report = result.map_err(|e| {
        let mut err = client_error(e, &opts, &args, &remote);
        if retries > 0 {
            let s = if retries == 1 { "y" } else { "ies" };
            err.message = format!("{} (after {retries} retr{s})", err.message);
        }
        if logging {
            tracing::info!(target: "ferry::cp", "failed: {} (exit {})", err.message, err.code.code());
        }
        err
    })?;
    let removed = if args.remove_after_transfer {
        remove_sources(&report, &sent, args.remove_empty_directories, args.json)
    } else {
        (0, 0)
    };
    let digests = if checksums {
        let digests = file_checksums(&report, direction, &sent, dest);
        report_checksums(&report, &digests, args.json, logging);
        digests
    } else {
        Vec::new()
    };
    if args.file_manifest != "none" {
        write_manifest(&args, &report, &digests, direction, &remote)?;
    }
    if logging {
        for f in report.files.iter().filter(|f| f.status != FileStatus::Verified) {
            let path = ferry_engine::io::docroot::escape(&f.path, 300);
            let what = if f.status.is_ok() { "skipped" } else { "failed" };
            tracing::info!(target: "ferry::cp", "{what}: {path}: {}", f.reason);
        }
        let failed = report.files.iter().filter(|f| !f.status.is_ok()).count();
        tracing::info!(
            target: "ferry::cp",
            "done: {} files ({failed} failed), {} bytes in {:.2} s, {retries} retries",
            report.files.len(),
            report.file_bytes,
            started.elapsed().as_secs_f64()
        );
    }
    let outcome =
        summary(&report, direction, started.elapsed().as_secs_f64(), retries, removed, args.json);
    // Files that failed because an envelope would not open exit with what `ferry crypt` says.
    match (outcome, envelopes.and_then(|e| e.passkey().take_failure())) {
        (Err(e), Some(why)) if e.code == Exit::FilesFailed => {
            let c = crate::crypt::open_failure(why);
            Err(CliError { code: c.code, hint: c.hint, ..e })
        }
        (outcome, _) => outcome,
    }
}

/// The storage of the transfer: client-side envelopes with --file-crypt, else plain files.
fn storage(envelopes: Option<&Envelopes>) -> Arc<dyn Storage> {
    match envelopes {
        Some(e) => Arc::new(e.clone()),
        None => Arc::new(PlainFiles),
    }
}

/// The -C threshold: none with --file-crypt (an envelope is sealed and opened by one session).
fn threshold(args: &CpArgs, envelopes: Option<&Envelopes>) -> u64 {
    if envelopes.is_some() { u64::MAX } else { args.multi_session_threshold }
}

/// `-L DIR`: this transfer's own log file, created (never over an existing one) 0600.
fn open_log(dir: &Path) -> Result<(std::fs::File, PathBuf), CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let path = dir.join(format!("ferry-cp-{now}-{}.log", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .map_err(|e| {
            CliError::new(
                Exit::Local,
                format!("cannot create the log file {}: {e}", path.display()),
            )
            .hint("give -L a directory you can write to")
        })?;
    Ok((file, path))
}

/// `--file-manifest`: the transfer's receipt, written to a temporary file and moved to a name
/// no other file has (never replacing one), so a reader sees all of it or nothing.
fn write_manifest(
    args: &CpArgs,
    report: &DriveReport,
    digests: &[Option<String>],
    direction: Direction,
    remote: &Remote,
) -> Result<(), CliError> {
    let dir = args.file_manifest_path.clone().unwrap_or_else(|| PathBuf::from("."));
    let json = args.file_manifest == "json";
    let what = if direction == Direction::Upload { "upload" } else { "download" };
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let verified = |f: &&ferry_engine::io::driver::FileReport| f.status == FileStatus::Verified;
    let body = if json {
        let files: Vec<serde_json::Value> = report
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let mut v = serde_json::json!({
                    "path": f.path,
                    "status": progress::status_name(f.status),
                    "reason": f.reason,
                });
                if let Some(d) = digests.get(i) {
                    v["sha256"] = serde_json::json!(d);
                }
                v
            })
            .collect();
        let doc = serde_json::json!({
            "direction": what,
            "host": remote.host,
            "path": remote.path,
            "finished_unix_s": now.as_secs(),
            "files": files,
        });
        format!("{doc:#}\n")
    } else {
        // One path per line as it is, unless it holds a control character (a newline would
        // split it): then quoted and escaped.
        let line = |p: &str| {
            if p.chars().any(char::is_control) {
                ferry_engine::io::docroot::escape(p, usize::MAX)
            } else {
                p.to_owned()
            }
        };
        let mut text = String::new();
        for f in report.files.iter().filter(verified) {
            text.push_str(&line(&f.path));
            text.push('\n');
        }
        for f in report.files.iter().filter(|f| !verified(f)) {
            let path = line(&f.path);
            let what = if f.status.is_ok() { "skipped" } else { "failed" };
            text.push_str(&format!("# {what}: {path}: {}\n", super::log::sanitize(&f.reason)));
        }
        text
    };
    let ext = if json { "json" } else { "txt" };
    let name = format!("ferry-manifest-{}-{}.{ext}", now.as_secs(), std::process::id());
    let cannot = |e: std::io::Error| {
        CliError::new(
            Exit::Local,
            format!("cannot write the file manifest into {}: {e}", dir.display()),
        )
        .hint("give a writable directory with --file-manifest-path (the transfer itself is done)")
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(cannot)?;
    std::io::Write::write_all(&mut tmp, body.as_bytes()).map_err(cannot)?;
    tmp.as_file().sync_all().map_err(cannot)?;
    tmp.persist_noclobber(dir.join(&name)).map_err(|e| cannot(e.error))?;
    if !args.json {
        eprintln!("ferry cp: wrote the file manifest {}", dir.join(&name).display());
    }
    Ok(())
}

/// `--file-checksum sha256`: the SHA-256 of each file of `report` (`None` for a file that did
/// not verify, or whose local copy cannot be read as it was transferred), from the local copy:
/// an upload's source, read through its directory's descriptor and only if its size and
/// modification time are still those it was sent with; a download's landed file.
fn file_checksums(
    report: &DriveReport,
    direction: Direction,
    sent: &[SourceFile],
    dest: &str,
) -> Vec<Option<String>> {
    use sha2::Digest;
    let hash = |mut file: std::fs::File| -> Option<String> {
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match std::io::Read::read(&mut file, &mut buf) {
                Ok(0) => return Some(h.finalize().iter().map(|b| format!("{b:02x}")).collect()),
                Ok(n) => h.update(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    };
    let by_name: std::collections::HashMap<&str, &SourceFile> =
        sent.iter().map(|f| (f.manifest.as_str(), f)).collect();
    // A download's destination: a directory the files landed beneath, or the single file.
    let landed = std::path::absolute(dest).ok().map(|d| {
        let (dir, name) = download_target(&d);
        (Docroot::open(&dir).ok(), name.map(str::to_owned))
    });
    report
        .files
        .iter()
        .map(|f| {
            if f.status != FileStatus::Verified {
                return None;
            }
            match direction {
                Direction::Upload => {
                    let src = by_name.get(f.path.as_str())?;
                    let (file, meta) = src.root.open_file(&src.path).ok()?;
                    let whole = src.part.is_some() || meta.size == src.size;
                    (whole && meta.mtime_ns == src.mtime_ns).then_some(())?;
                    hash(file)
                }
                Direction::Download => {
                    let (root, single) = landed.as_ref()?;
                    let rel = match single {
                        Some(name) => RelPath::parse(name).ok()?,
                        None => RelPath::parse(&f.path).ok()?,
                    };
                    hash(root.as_ref()?.open_file(&rel).ok()?.0)
                }
            }
        })
        .collect()
}

/// The verified files' `file` events (held back until now) with their `sha256`; without
/// `--json`, `SHA256 (PATH) = HEX` lines on stdout (the BSD `sha256sum --tag` form); each in
/// the -L log.
fn report_checksums(report: &DriveReport, digests: &[Option<String>], json: bool, log: bool) {
    for (f, d) in report.files.iter().zip(digests) {
        if f.status != FileStatus::Verified {
            continue;
        }
        if json {
            let fields = serde_json::json!({
                "path": f.path, "status": "verified", "reason": "", "sha256": d,
            });
            progress::emit("file", fields);
        } else {
            // As it is, unless a control character would break the line: then quoted.
            let path = if f.path.chars().any(char::is_control) {
                ferry_engine::io::docroot::escape(&f.path, usize::MAX)
            } else {
                f.path.clone()
            };
            match d {
                Some(d) => println!("SHA256 ({path}) = {d}"),
                None => eprintln!(
                    "ferry cp: {path}: no SHA-256: its local copy changed or cannot be read"
                ),
            }
        }
        if log {
            let path = ferry_engine::io::docroot::escape(&f.path, 300);
            let d = d.as_deref().unwrap_or("unavailable (the local copy changed)");
            tracing::info!(target: "ferry::cp", "sha256: {path}: {d}");
        }
    }
}

/// `--remove-after-transfer`: deletes each source the server verified, if it is still the file
/// that was listed, through its directory's descriptor (no path is resolved twice, no link
/// followed); then, with `dirs`, the directories that left empty, deepest first, within each
/// source directory. Returns the files and directories removed. What cannot be removed is kept
/// and named on stderr; the transfer's outcome does not change.
fn remove_sources(report: &DriveReport, sent: &[SourceFile], dirs: bool, json: bool) -> (u64, u64) {
    let by_name: std::collections::HashMap<&str, &SourceFile> =
        sent.iter().map(|f| (f.manifest.as_str(), f)).collect();
    let keep = |path: &str, why: String| {
        let path = ferry_engine::io::docroot::escape(path, 300);
        if json {
            progress::emit("kept", serde_json::json!({ "path": path, "reason": why }));
        } else {
            eprintln!("ferry: kept {path}: {}", super::log::sanitize(&why));
        }
    };
    let (mut files, mut removed_dirs) = (0u64, 0u64);
    // Per source root: the directories removed files were in (relative paths).
    let mut emptied: Vec<(&SourceFile, RelPath)> = Vec::new();
    for f in report.files.iter().filter(|f| f.status == FileStatus::Verified) {
        let Some(src) = by_name.get(f.path.as_str()) else { continue };
        let Some((parent, name)) = src.path.split_last() else { continue };
        let result = src.root.open_dir(&parent).and_then(|dir| {
            let now = dir.meta(name)?.ok_or_else(|| std::io::Error::other("it is gone"))?;
            if now.size != src.size || now.mtime_ns != src.mtime_ns {
                return Err(std::io::Error::other(
                    "it changed while it was sent (the server has the earlier version)",
                ));
            }
            dir.remove_file(name)
        });
        match result {
            Ok(()) => {
                files += 1;
                if dirs && src.manifest.contains('/') {
                    emptied.push((src, parent));
                }
            }
            Err(e) => keep(&src.manifest, format!("not removed: {e}")),
        }
    }
    // Deepest first, each directory once, never the source directory itself (the first
    // component of the manifest path is the source's own name).
    let mut candidates: Vec<(usize, String, &SourceFile, RelPath)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (src, mut dir) in emptied {
        let top = src.path.components().count() - src.manifest.split('/').count() + 1;
        while dir.components().count() > top {
            let key = (std::sync::Arc::as_ptr(&src.root) as usize, dir.shown().to_string());
            if !seen.insert(key.clone()) {
                break;
            }
            candidates.push((dir.components().count(), key.1, src, dir.clone()));
            let Some((up, _)) = dir.split_last() else { break };
            dir = up;
        }
    }
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    for (_, _, src, dir) in candidates {
        let Some((parent, name)) = dir.split_last() else { continue };
        if src.root.open_dir(&parent).and_then(|d| d.remove_dir(name)).is_ok() {
            removed_dirs += 1;
        }
    }
    (files, removed_dirs)
}

/// `--overwrite`'s policy (`None`: none given).
fn overwrite_policy(arg: Option<&str>) -> ferry_engine::control::Overwrite {
    use ferry_engine::control::Overwrite;
    match arg {
        None => Overwrite::Keep,
        Some("never") => Overwrite::Never,
        Some("always") => Overwrite::Always,
        Some("diff") => Overwrite::Diff,
        Some("older") => Overwrite::Older,
        Some("diff+older") => Overwrite::DiffOlder,
        Some(other) => unreachable!("clap accepts only the listed policies, not {other}"),
    }
}

/// The target rate a session asks for when `-l` gives none: the highest `-l` accepts, so that
/// the policy alone (and the server's cap) decides.
pub(crate) const UNCAPPED: u64 = 10_000_000_000_000;

/// The target rate to ask for: `-l`, or [`UNCAPPED`]; the fixed policy needs `-l`.
fn target_rate(args: &CpArgs) -> Result<u64, CliError> {
    match (args.target_rate, args.policy) {
        (Some(r), _) => Ok(r),
        (None, Policy::Fixed) => Err(CliError::new(
            Exit::Usage,
            "--policy fixed sends at exactly the target rate, and none was given",
        )
        .hint("give one with -l RATE (e.g. -l 500m), or use the default policy (fair), which finds the path's rate")),
        (None, _) => Ok(UNCAPPED),
    }
}

/// What `ferry cp` runs: an upload of shares (one per session), or a download in `sessions`
/// sessions; either retried as `--retry` allows.
enum Job {
    Shares { shares: Vec<Vec<SourceFile>>, single: bool, path: String },
    Download { path: String, dest: String, sessions: u8, threshold: u64 },
}

/// Runs the transfer on a runtime of its own; SIGINT or SIGTERM cancels it cleanly.
fn transfer_blocking(
    opts: &ClientOptions,
    transfer: Job,
    args: &CpArgs,
    storage: Arc<dyn Storage>,
    reporter: Arc<Mutex<Reporter>>,
) -> Result<DriveReport, ClientError> {
    let rt = tokio::runtime::Runtime::new()
        .map_err(|source| ClientError::LocalSocket { what: "cannot start the runtime", source })?;
    let session_event = session_event(args);
    let observer: client::Observer = Arc::new(move |e: ClientEvent<'_>| match e {
        ClientEvent::Session(info) => session_event(info),
        ClientEvent::Progress(p) => reporter.lock().expect("reporter").update(p),
        ClientEvent::Retry(r) => reporter.lock().expect("reporter").retry(r),
    });
    let retry =
        multi::Retry { retries: args.retry, timeout: args.retry_timeout, ..Default::default() };
    rt.block_on(async {
        let (cancel_tx, cancel) = tokio::sync::watch::channel(None);
        let interrupt = tokio::spawn(async move {
            let _ = cancel_tx.send(Some(ferry_net::bridge::termination_signal().await));
        });
        let result = match transfer {
            Job::Shares { shares, single, path } => {
                multi::upload(opts, &*storage, shares, &path, single, retry, observer, cancel).await
            }
            Job::Download { path, dest, sessions, threshold } => {
                // Here the user's own policy is the only one: asked for, replacing is permitted.
                let limits = SinkLimits {
                    preserve_mtime: opts.preserve_times,
                    resume: opts.resume > 0,
                    overwrite: opts.overwrite,
                    replace: opts.overwrite != ferry_engine::control::Overwrite::Keep,
                    partial_suffix: opts.partial_suffix.clone(),
                    ..SinkLimits::default()
                };
                let sink = move || {
                    download_sink(&dest, limits.clone(), &*storage)
                        .map_err(|e| std::io::Error::other(e.message.clone()))
                };
                let (n, t) = (sessions, threshold);
                multi::download(opts, &sink, &path, n, t, retry, observer, cancel).await
            }
        };
        interrupt.abort();
        result
    })
}

/// The `--json` session event (nothing without `--json`).
fn session_event(args: &CpArgs) -> impl Fn(&client::SessionInfo) + Send + Sync + 'static {
    let (json, cipher, policy) = (args.json, args.cipher, args.policy);
    let rate = args.target_rate.unwrap_or(UNCAPPED);
    move |info| {
        if !json {
            return;
        }
        let direction = if info.direction == Direction::Upload { "upload" } else { "download" };
        progress::emit(
            "session",
            serde_json::json!({
                "direction": direction,
                "server": info.server.to_string(),
                "session_id": format!("{:016x}", info.session_id),
                "local_data": info.local_data.map(|a| a.to_string()).unwrap_or_default(),
                "remote_data": info.remote_data.to_string(),
                "cipher": cipher.name(),
                "policy": format!("{policy:?}").to_lowercase(),
                "target_rate_bps": rate,
                "files": info.files,
                "block_size": info.block_size,
            }),
        );
    }
}

/// The summary line (or `done` event), the failed files, and exit 39 if any failed.
fn summary(
    report: &DriveReport,
    direction: Direction,
    secs: f64,
    retries: u32,
    (removed, removed_dirs): (u64, u64),
    json: bool,
) -> Result<(), CliError> {
    let what = if direction == Direction::Upload { "upload" } else { "download" };
    let failed: Vec<_> = report.files.iter().filter(|f| !f.status.is_ok()).collect();
    let skipped = report.files.iter().filter(|f| f.status == FileStatus::Skipped).count();
    let (bytes, nfiles) = (report.file_bytes, report.files.len());
    if json {
        let mut fields = progress::done_fields(report, what, secs);
        fields["retries"] = retries.into();
        fields["removed"] = removed.into();
        fields["removed_directories"] = removed_dirs.into();
        progress::emit("done", fields);
    } else {
        let rate = if secs > 0.0 { bytes as f64 * 8.0 / secs / 1e6 } else { 0.0 };
        let mut files = if failed.is_empty() {
            format!("complete: {nfiles} files")
        } else {
            format!("finished: {} of {nfiles} files", nfiles - failed.len())
        };
        if skipped > 0 {
            files.push_str(&format!(" ({skipped} skipped: already at the destination)"));
        }
        let retried = match retries {
            0 => String::new(),
            1 => ", after 1 retry".to_owned(),
            n => format!(", after {n} retries"),
        };
        println!(
            "ferry: {what} {files}, {} ({bytes} bytes) in {secs:.2} s ({rate:.1} Mbit/s){retried}",
            progress::human_bytes(bytes)
        );
        if removed > 0 || removed_dirs > 0 {
            println!(
                "ferry: removed {removed} source files and {removed_dirs} emptied directories"
            );
        }
        const SHOWN: usize = 50;
        for f in failed.iter().take(SHOWN) {
            let path = ferry_engine::io::docroot::escape(&f.path, 300);
            eprintln!("ferry: failed: {path}: {}", super::log::sanitize(&f.reason));
        }
        if failed.len() > SHOWN {
            eprintln!("ferry: ... and {} more (--json lists them all)", failed.len() - SHOWN);
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    let side = if direction == Direction::Upload { "on the server" } else { "here" };
    Err(CliError::new(
        Exit::FilesFailed,
        format!(
            "{} of {nfiles} files failed (each is named with its reason); the other {} were transferred",
            failed.len(),
            nfiles - failed.len()
        ),
    )
    .hint(format!(
        "fix what each message says and send the failed files again (the transferred ones are \
         now {side}, and Ferry does not overwrite them)"
    )))
}

/// Every way a transfer can fail, as an exit code, a message and what to do.
fn client_error(e: ClientError, opts: &ClientOptions, args: &CpArgs, remote: &Remote) -> CliError {
    use ClientError as E;
    let msg = e.to_string();
    let pin_hint = |seen: &str| {
        format!(
            "if you trust this server (compare with `ferry serve --print-fingerprint` on it), run: \
             ferry cp --host-key {seen} ... (or add the line \"{}:{} {seen}\" to the known-hosts \
             file)",
            remote.host, opts.port
        )
    };
    match &e {
        E::Resolve { .. } => CliError::new(Exit::Connect, msg).hint("check the host name"),
        E::LocalSocket { .. } => CliError::new(Exit::Failed, msg),
        E::KnownHosts { .. } => CliError::new(Exit::Identity, msg),
        E::Connect { .. } => CliError::new(Exit::Connect, msg),
        E::UnknownHostKey { seen, .. }
        | E::HostKeyMismatch { seen, .. }
        | E::HostKeyNotProven { seen, .. } => {
            CliError::new(Exit::HostKey, msg).hint(pin_hint(seen))
        }
        E::PortClosed { .. } => CliError::new(Exit::PortClosed, msg).hint(format!(
            "start `ferry serve` there, or give the port it listens on with -P (now {})",
            opts.port
        )),
        E::NoAnswer { .. } => CliError::new(Exit::Connect, msg).hint(format!(
            "check the address, that the host is up, and that UDP port {} is open on the way \
             (Ferry needs only that one port)",
            opts.port
        )),
        E::ControlStream(_) => CliError::new(Exit::TransferFailed, msg),
        E::Setup(_) | E::Refused { .. } => CliError::new(Exit::Setup, msg),
        E::KeyRefused { user, .. } if !user.is_empty() => CliError::new(Exit::KeyRefused, msg)
            .hint(format!(
                "check that the server has a transfer user {user:?} and that the contents of \
                 {}.pub are among its authorized keys",
                args.identity.display()
            )),
        E::KeyRefused { .. } => CliError::new(Exit::KeyRefused, msg).hint(format!(
            "add the contents of {}.pub to the server's authorized keys file",
            args.identity.display()
        )),
        E::PathRefused { .. } => CliError::new(Exit::PathRefused, msg).hint(
            "paths are relative to the server's docroot; the destination directory must exist",
        ),
        E::ConnectionRefused { .. } => CliError::new(Exit::Busy, msg).hint(
            "try again later; if the key or user was wrong, fix it first: the server refuses an \
             address for a while after repeated failed authentications",
        ),
        E::Busy { .. } => {
            CliError::new(Exit::Busy, msg).hint("try again later, when fewer sessions are running")
        }
        E::Cancelled { .. } => CliError::new(Exit::Interrupted, msg)
            .hint("nothing was kept: partial files were removed; run the command again to restart"),
        E::Aborted { .. } if e.retryable() => CliError::new(Exit::TransferFailed, msg),
        E::Aborted { .. } => CliError::new(Exit::Setup, msg),
        E::Storage { .. } => CliError::new(Exit::Local, msg),
        E::Failed(_) => CliError::new(Exit::TransferFailed, msg),
    }
}

/// Lists a source argument for upload. The argument itself may be a symbolic link (it is
/// followed, as `scp` does); inside a directory, links and special files are skipped.
fn local_sources(
    arg: &str,
    src_base: Option<&Path>,
    rules: &Rules,
) -> Result<Vec<SourceFile>, CliError> {
    let cannot = |e: String| {
        CliError::new(Exit::Local, format!("cannot read {arg}: {e}"))
            .hint("check the source path and its permissions")
    };
    let canon = Path::new(arg).canonicalize().map_err(|e| cannot(e.to_string()))?;
    if let Some(base) = src_base {
        let base_canon = base.canonicalize().map_err(|e| {
            CliError::new(Exit::Local, format!("cannot use --src-base {}: {e}", base.display()))
        })?;
        let below = canon.strip_prefix(&base_canon).ok().filter(|p| !p.as_os_str().is_empty());
        let Some(below) = below else {
            return Err(CliError::new(
                Exit::Usage,
                format!("{arg} is not beneath --src-base {}", base.display()),
            )
            .hint("every source must be inside the --src-base directory"));
        };
        let below = below.to_str().ok_or_else(|| cannot("the path is not UTF-8".into()))?;
        let rel = RelPath::parse(below).map_err(|e| cannot(e.to_string()))?;
        let root = Arc::new(Docroot::open(&base_canon).map_err(|e| cannot(e.to_string()))?);
        let name = below.to_owned();
        return source::list_named(&root, &rel, name, SourceLimits::default(), rules)
            .map_err(|e| cannot(e.to_string()));
    }
    let (Some(parent), Some(name)) = (canon.parent(), canon.file_name()) else {
        return Err(cannot("the root directory itself cannot be sent; name what is in it".into()));
    };
    let name = name.to_str().ok_or_else(|| cannot("the name is not UTF-8".into()))?;
    let rel = RelPath::parse(name).map_err(|e| cannot(e.to_string()))?;
    let root = Arc::new(Docroot::open(parent).map_err(|e| cannot(e.to_string()))?);
    source::list_filtered(&root, &rel, SourceLimits::default(), rules)
        .map_err(|e| cannot(e.to_string()))
}

/// The sink of a download into `dest`: an existing directory, or a new file name in one.
/// `limits`: whether to give each file the modification time the server sends (`-p`) and to
/// resume (`-k`).
fn download_sink(
    dest: &str,
    limits: SinkLimits,
    storage: &dyn Storage,
) -> Result<Box<dyn BlockSink + Send>, CliError> {
    let d = std::path::absolute(dest)
        .map_err(|e| CliError::new(Exit::Local, format!("{dest}: {e}")))?;
    let open = |p: &Path| {
        Docroot::open(p)
            .map(Arc::new)
            .map_err(|e| CliError::new(Exit::Local, format!("{dest}: {e}")))
    };
    let (dir, name) = download_target(&d);
    let Some(name) = name else {
        let root = open(&dir)?;
        return sink(storage, root, Destination::Dir(RelPath::root()), dest, limits);
    };
    if !dir.is_dir() || dest.ends_with('/') {
        return Err(CliError::new(Exit::Local, format!("{dest}: no such directory"))
            .hint("create the destination directory first"));
    }
    let name =
        RelPath::parse(name).map_err(|e| CliError::new(Exit::Local, format!("{dest}: {e}")))?;
    sink(storage, open(&dir)?, Destination::File(name), dest, limits)
}

/// Where a download into the absolute path `d` lands: beneath `d` if it is a directory
/// (`None`), else as the file named by its last component in its parent directory.
fn download_target(d: &Path) -> (PathBuf, Option<&str>) {
    if d.is_dir() {
        return (d.to_owned(), None);
    }
    let parent = match d.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    (parent, Some(d.file_name().and_then(|n| n.to_str()).unwrap_or_default()))
}

fn sink(
    storage: &dyn Storage,
    root: Arc<Docroot>,
    to: Destination,
    dest: &str,
    limits: SinkLimits,
) -> Result<Box<dyn BlockSink + Send>, CliError> {
    storage.sink(root, to, limits).map_err(|e| CliError::new(Exit::Local, format!("{dest}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's option table names every option of `ferry cp`.
    #[test]
    fn the_readme_maps_every_option() {
        use clap::CommandFactory;
        let readme = include_str!("../../../README.md");
        let start = readme.find("### `ferry cp` options").expect("the section");
        let section =
            &readme[start..start + readme[start..].find("**Resume and retry.**").unwrap()];
        let cli = crate::cli::Cli::command();
        let cp = cli.find_subcommand("cp").expect("cp");
        for a in cp.get_arguments().filter(|a| !a.is_positional() && a.get_id() != "help") {
            let named = a.get_long().is_some_and(|l| section.contains(&format!("`--{l}")))
                || a.get_short().is_some_and(|c| section.contains(&format!("`-{c}")));
            assert!(named, "README's option table lacks {:?}", a.get_id());
        }
    }

    #[test]
    fn the_threshold_default_is_the_librarys() {
        let parsed = super::super::parse_size(THRESHOLD_ARG).unwrap();
        assert_eq!(parsed, ferry_engine::io::source::DEFAULT_PART_THRESHOLD);
        let timeout = super::super::parse_duration(RETRY_TIMEOUT_ARG).unwrap();
        assert_eq!(timeout, multi::Retry::default().timeout);
    }

    #[test]
    fn remote_specs() {
        let r = |h: &str, p: Option<u16>, path: &str| {
            Some(Remote { user: None, host: h.into(), port: p, path: path.into() })
        };
        let u = |u: &str, h: &str, p: Option<u16>, path: &str| {
            Some(Remote { user: Some(u.into()), host: h.into(), port: p, path: path.into() })
        };
        assert_eq!(parse_remote("host:dir/f"), r("host", None, "dir/f"));
        assert_eq!(parse_remote("me@127.0.0.1:7000:in"), u("me", "127.0.0.1", Some(7000), "in"));
        assert_eq!(parse_remote("a@b.org@h:x"), u("a@b.org", "h", None, "x"));
        assert_eq!(parse_remote("h:dir/a@b"), r("h", None, "dir/a@b"));
        assert_eq!(parse_remote("bob@[::1]:x"), u("bob", "::1", None, "x"));
        assert_eq!(parse_remote("@h:x"), u("", "h", None, "x"));
        assert_eq!(parse_remote("[::1]:x"), r("::1", None, "x"));
        assert_eq!(parse_remote("h:"), r("h", None, ""));
        assert_eq!(parse_remote("./a:b"), None);
        assert_eq!(parse_remote("/abs:x"), None);
        assert_eq!(parse_remote("plain"), None);
        assert_eq!(parse_remote("dir/a:b"), None);
    }
}
