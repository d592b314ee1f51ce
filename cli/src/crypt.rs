//! `ferry crypt`: encrypt, decrypt, inspect and rewrap at-rest envelopes (`docs/FORMAT.md`)
//! without a transfer.
//!
//! Exit codes of `ferry crypt` (also listed in `docs/FORMAT.md` §9):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 2 | usage error (clap) |
//! | 3 | input missing or unreadable, or an I/O error while reading/writing |
//! | 4 | the output exists (pass `--force` to replace it) or would go to a terminal |
//! | 5 | no passphrase available (set `FERRY_FILEPASS` or run on a terminal) |
//! | 10 | not a Ferry envelope, unsupported version/suite, malformed header |
//! | 11 | wrong passphrase / keystore key, or no slot of the requested kind |
//! | 12 | the keystore secret's state forbids the operation (suspended, destroyed, ...) |
//! | 13 | integrity failure: truncated, segment removed/duplicated/reordered/modified, header from another file, header or slot corrupted |
//! | 14 | key-derivation parameters out of bounds (refused before any derivation) |

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use ferry_engine::atrest::{
    Argon2Params, AtRestError, EnvelopeBuilder, EnvelopeReader, Header, KeyState, MAGIC, NewSlot,
    SEGMENT_SIZE, SlotKind, StreamEncryptor, read_header, rewrap_keystore_to_active,
    rewrap_passphrase,
};
use zeroize::Zeroizing;

use crate::error::CliError;
use crate::exit::Exit;

mod keystore;

use ferry_keystore::Keystore;
use keystore::KeystoreArgs;

/// Exit code: input missing/unreadable or I/O failure.
const EXIT_IO: Exit = Exit::CryptIo;
/// Exit code: refusing to overwrite / write binary to a terminal.
const EXIT_OUTPUT: Exit = Exit::CryptOutput;
/// Exit code: no passphrase source.
const EXIT_NO_PASSPHRASE: Exit = Exit::CryptNoPassphrase;
/// Exit code: not an envelope or malformed header.
const EXIT_FORMAT: Exit = Exit::CryptFormat;
/// Exit code: wrong key.
const EXIT_WRONG_KEY: Exit = Exit::CryptWrongKey;
/// Exit code: key state forbids the operation.
const EXIT_KEY_STATE: Exit = Exit::CryptKeyState;
/// Exit code: integrity failure.
const EXIT_INTEGRITY: Exit = Exit::CryptIntegrity;
/// Exit code: KDF parameters out of bounds.
const EXIT_KDF_BOUNDS: Exit = Exit::CryptKdfBounds;

/// Environment variable holding the passphrase (never pass it in argv).
pub(crate) const PASS_ENV: &str = "FERRY_FILEPASS";
/// Environment variable holding the new passphrase for `rewrap`.
const NEW_PASS_ENV: &str = "FERRY_FILEPASS_NEW";

/// `ferry crypt`: at-rest envelopes without a transfer.
#[derive(Debug, Args)]
pub(crate) struct CryptArgs {
    #[command(subcommand)]
    command: CryptCommand,
}

#[derive(Debug, Subcommand)]
enum CryptCommand {
    /// Encrypt a file into an envelope (passphrase from FERRY_FILEPASS or a terminal prompt).
    Encrypt(EncryptArgs),
    /// Decrypt an envelope to a file or to stdout (`-o -`).
    Decrypt(DecryptArgs),
    /// Show an envelope's header fields and key slots (no key needed, no secrets shown).
    Inspect(InspectArgs),
    /// Change the passphrase of envelopes by rewriting only their key slots (crash-safe).
    /// Old passphrase from FERRY_FILEPASS, new from FERRY_FILEPASS_NEW (or prompts).
    Rewrap(RewrapArgs),
}

#[derive(Debug, Args)]
struct KdfArgs {
    /// Argon2id memory cost in KiB (default 65536 = 64 MiB; accepted 19456..=1048576).
    #[arg(long, value_name = "KIB")]
    argon2_memory: Option<u32>,
    /// Argon2id time cost (passes; default 3; accepted 2..=10).
    #[arg(long, value_name = "N")]
    argon2_time: Option<u32>,
    /// Argon2id parallelism (lanes; default 4; accepted 1..=16).
    #[arg(long, value_name = "N")]
    argon2_lanes: Option<u32>,
    /// Calibrate Argon2id so that one derivation takes at least this many milliseconds here
    /// (raises memory, then passes, from the defaults).
    #[arg(long, value_name = "MS", conflicts_with_all = ["argon2_memory", "argon2_time", "argon2_lanes"])]
    argon2_calibrate: Option<u64>,
}

impl KdfArgs {
    fn params(&self) -> Result<Argon2Params, CliError> {
        if let Some(ms) = self.argon2_calibrate {
            return Argon2Params::calibrate(Duration::from_millis(ms))
                .map_err(|e| map_err(e.into(), Path::new("-")));
        }
        let d = Argon2Params::DEFAULT;
        let p = Argon2Params {
            m_cost_kib: self.argon2_memory.unwrap_or(d.m_cost_kib),
            t_cost: self.argon2_time.unwrap_or(d.t_cost),
            p_cost: self.argon2_lanes.unwrap_or(d.p_cost),
        };
        p.validate().map_err(|e| {
            CliError::new(Exit::Usage, format!("invalid Argon2id parameters: {e}")).hint(
                "use --argon2-memory 19456..=1048576, --argon2-time 2..=10, --argon2-lanes 1..=16",
            )
        })?;
        Ok(p)
    }
}

#[derive(Debug, Args)]
struct EncryptArgs {
    /// The file to encrypt.
    input: PathBuf,
    /// Output path (default: INPUT.ferry).
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// Replace the output if it exists.
    #[arg(long)]
    force: bool,
    /// Wrap the data key under this user's keystore secret (active version) instead of a
    /// passphrase.
    #[arg(long, value_name = "USER")]
    keystore_user: Option<String>,
    /// Keystore category of that secret.
    #[arg(long, value_name = "CATEGORY", default_value = "ssear", requires = "keystore_user")]
    keystore_category: String,
    #[command(flatten)]
    kdf: KdfArgs,
    #[command(flatten)]
    keystore: KeystoreArgs,
}

#[derive(Debug, Args)]
struct DecryptArgs {
    /// The envelope to decrypt.
    input: PathBuf,
    /// Output path, or `-` for stdout (default: INPUT without its `.ferry` suffix).
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// Replace the output if it exists.
    #[arg(long)]
    force: bool,
    /// After a successful decryption, move keystore slots of the envelope to the active key
    /// version in place (rewrap on access; key slots only).
    #[arg(long)]
    rewrap: bool,
    #[command(flatten)]
    keystore: KeystoreArgs,
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// The envelope to inspect.
    input: PathBuf,
    #[command(flatten)]
    keystore: KeystoreArgs,
}

#[derive(Debug, Args)]
struct RewrapArgs {
    /// Envelopes, or directories to search recursively for envelopes.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    kdf: KdfArgs,
    #[command(flatten)]
    keystore: KeystoreArgs,
}

/// Run `ferry crypt`.
pub(crate) fn run(args: CryptArgs) -> Result<(), CliError> {
    match args.command {
        CryptCommand::Encrypt(a) => encrypt(a),
        CryptCommand::Decrypt(a) => decrypt(a),
        CryptCommand::Inspect(a) => inspect(a),
        CryptCommand::Rewrap(a) => rewrap(a),
    }
}

/// Map a library error to the CLI's message, hint and exit code.
fn map_err(e: AtRestError, path: &Path) -> CliError {
    let p = path.display();
    use AtRestError as E;
    let (code, hint): (Exit, &str) = match &e {
        E::Io(_) => {
            (EXIT_IO, "check that the path exists and is readable, and that the disk has space")
        }
        E::NotAnEnvelope => (
            EXIT_FORMAT,
            "this file was not sealed by `ferry crypt encrypt` or `ferry cp --file-crypt encrypt`; nothing to decrypt",
        ),
        E::UnsupportedVersion { .. } | E::UnsupportedSuite { .. } => {
            (EXIT_FORMAT, "upgrade ferry to a version that reads this envelope format")
        }
        E::HeaderTruncated { .. } => {
            (EXIT_INTEGRITY, "the file was cut short; fetch a complete copy")
        }
        E::MalformedHeader { .. } | E::NoSlots => (
            EXIT_FORMAT,
            "the header does not follow docs/FORMAT.md; the file is damaged or not an envelope",
        ),
        E::HeaderCorrupted | E::SlotCorrupted { .. } => (
            EXIT_INTEGRITY,
            "the header was modified or damaged on disk; restore the file from a good copy",
        ),
        E::KdfParamsOutOfBounds { .. } => (
            EXIT_KDF_BOUNDS,
            "refused before running the key derivation: the file may be crafted to exhaust memory",
        ),
        E::InvalidKdfParams { .. } => {
            (Exit::Usage, "choose Argon2id parameters inside the accepted bounds")
        }
        E::NoPassphraseSlot => {
            (EXIT_WRONG_KEY, "this envelope is opened with a keystore secret, not a passphrase")
        }
        E::NoKeystoreSlot => {
            (EXIT_WRONG_KEY, "this envelope is opened with a passphrase (FERRY_FILEPASS)")
        }
        E::WrongPassphrase => {
            (EXIT_WRONG_KEY, "check FERRY_FILEPASS (or retype the passphrase) and try again")
        }
        E::WrongKeystoreKey { .. } => {
            (EXIT_WRONG_KEY, "the keystore holds a different secret under that name and version")
        }
        E::KeyUnavailable { state: KeyState::Destroyed, .. } => (
            EXIT_KEY_STATE,
            "the key version was destroyed, so this copy cannot be decrypted any more; use a copy \
             rewrapped to a newer version (`ferry crypt rewrap` before destroying old versions)",
        ),
        E::KeyUnavailable { operation: "encrypt", .. } => (
            EXIT_KEY_STATE,
            "new files are only wrapped under the active version: activate or rotate the secret \
             with `ferry keys`",
        ),
        E::KeyUnavailable { .. } => (
            EXIT_KEY_STATE,
            "ask the keystore administrator to reactivate the key version (`ferry keys ... \
             --activate --version N`), or use a copy rewrapped to an active version",
        ),
        E::Keystore(_) => {
            (EXIT_WRONG_KEY, "check the keystore (`ferry keys`) for this owner and category")
        }
        E::CommitmentMismatch => (
            EXIT_INTEGRITY,
            "the header's fixed fields were altered; restore the file from a good copy",
        ),
        E::Truncated { .. } => {
            (EXIT_INTEGRITY, "the file was cut short (interrupted copy?); fetch a complete copy")
        }
        E::SegmentsRemoved { .. }
        | E::SegmentsInserted { .. }
        | E::TrailingData { .. }
        | E::SegmentCorrupted { .. }
        | E::SegmentOutOfPlace { .. }
        | E::SegmentDuplicated { .. } => (
            EXIT_INTEGRITY,
            "the file was modified or damaged; nothing was written; restore it from a good copy",
        ),
        E::HeaderMismatch => (
            EXIT_INTEGRITY,
            "the header was copied from another envelope onto this payload; restore the original header",
        ),
        E::LengthMismatch { .. } => {
            (EXIT_IO, "the input changed while it was being encrypted; retry when it is stable")
        }
        E::TooLarge { .. } => (EXIT_IO, "split the file; the format holds at most 2^40 segments"),
        E::InvalidName { .. } => {
            (Exit::Usage, "keystore owner names hold up to 47 bytes, categories up to 31")
        }
        E::NoFreeSlot { .. } => (EXIT_FORMAT, "remove a key slot first (at most 3 slots are used)"),
        E::InvalidSegment { .. } | E::OutOfRange { .. } => {
            (Exit::Failed, "this is a bug in ferry; please report it")
        }
    };
    CliError::new(code, format!("{p}: {e}")).hint(hint)
}

fn io_err(what: &str, path: &Path, e: &io::Error) -> CliError {
    CliError::new(EXIT_IO, format!("cannot {what} {}: {e}", path.display()))
        .hint("check that the path exists, is a regular file and that you have permission")
}

/// The passphrase from `var`, or a prompt on the terminal (twice when `confirm`).
pub(crate) fn passphrase(
    var: &str,
    prompt: &str,
    confirm: bool,
) -> Result<Zeroizing<String>, CliError> {
    if let Some(v) = std::env::var_os(var) {
        let s = v
            .into_string()
            .map_err(|_| CliError::new(EXIT_NO_PASSPHRASE, format!("{var} is not valid UTF-8")))?;
        if s.is_empty() {
            return Err(CliError::new(EXIT_NO_PASSPHRASE, format!("{var} is set but empty"))
                .hint("set a non-empty passphrase"));
        }
        return Ok(Zeroizing::new(s));
    }
    if !io::stdin().is_terminal() {
        return Err(CliError::new(
            EXIT_NO_PASSPHRASE,
            "no passphrase: not on a terminal and no environment passphrase",
        )
        .hint(format!("set {var} (never pass a passphrase on the command line)")));
    }
    let read = |p: &str| {
        rpassword::prompt_password(p).map(Zeroizing::new).map_err(|e| {
            CliError::new(EXIT_NO_PASSPHRASE, format!("cannot read the passphrase: {e}"))
        })
    };
    let first = read(prompt)?;
    if first.is_empty() {
        return Err(CliError::new(EXIT_NO_PASSPHRASE, "empty passphrase refused"));
    }
    if confirm {
        let second = read("Repeat the passphrase: ")?;
        if *first != *second {
            return Err(CliError::new(EXIT_NO_PASSPHRASE, "the passphrases do not match"));
        }
    }
    Ok(first)
}

/// The passphrase of `ferry cp --file-crypt`: `FERRY_FILEPASS`; else the active `filepass`
/// secret of this user's local keystore (`FERRY_LOCAL_KEYSTORE`, default
/// `~/.ferry/localkeystore.db`), if that keystore exists; else a prompt on the terminal (twice
/// when `confirm`, for new envelopes).
pub(crate) fn file_passphrase(confirm: bool) -> Result<Zeroizing<Vec<u8>>, CliError> {
    use ferry_engine::atrest::KeyResolver;
    if std::env::var_os(PASS_ENV).is_none() {
        let path = std::env::var_os("FERRY_LOCAL_KEYSTORE").map(PathBuf::from).or_else(|| {
            std::env::var_os("HOME").map(|h| ferry_keystore::default_local_keystore(Path::new(&h)))
        });
        if let Some(path) = path.filter(|p| p.exists()) {
            let opts = ferry_keystore::Options::new().actor("ferry cp");
            let ks = Keystore::open_local(&path, &opts)
                .map_err(|e| crate::keys::keystore_error(e, None))?;
            let user = crate::keys::current_user_name();
            if let Ok(v) = ks.active_version(&user, "filepass") {
                let key = KeyResolver::resolve(&ks, &user, "filepass", v).map_err(|e| {
                    CliError::new(
                        EXIT_NO_PASSPHRASE,
                        format!("cannot read the filepass secret of {user}: {e}"),
                    )
                    .hint("check it with `ferry keys -s filepass -H`")
                })?;
                return Ok(Zeroizing::new(key.secret.expose().to_vec()));
            }
        }
    }
    let prompt = if confirm { "Passphrase for the new envelopes: " } else { "Passphrase: " };
    let p = passphrase(PASS_ENV, prompt, confirm).map_err(|e| {
        if e.code == EXIT_NO_PASSPHRASE && e.message.starts_with("no passphrase") {
            e.hint(format!(
                "set {PASS_ENV}, or store one in your local keystore: `ferry keys -s filepass`                  (reads it from stdin)"
            ))
        } else {
            e
        }
    })?;
    Ok(Zeroizing::new(p.as_bytes().to_vec()))
}

/// The exit code and hint of an envelope a download could not open (`ferry cp --file-crypt
/// decrypt`): the same as `ferry crypt decrypt`'s.
pub(crate) fn open_failure(e: AtRestError) -> CliError {
    map_err(e, Path::new("an envelope"))
}

/// An output file being written. Where the file system allows it (`O_TMPFILE`: ext4, XFS,
/// Btrfs, tmpfs, ...) it has no name at all until it is complete, so an interrupted or killed
/// `ferry crypt decrypt` can never leave plaintext behind under any name; elsewhere it is a
/// temporary name beside the output (removed on every error this process sees).
enum TempOut {
    Unnamed { file: File, dir: std::os::fd::OwnedFd, dir_path: PathBuf },
    Named(tempfile::NamedTempFile),
}

impl TempOut {
    fn as_file(&self) -> &File {
        match self {
            TempOut::Unnamed { file, .. } => file,
            TempOut::Named(t) => t.as_file(),
        }
    }

    fn shown(&self) -> &Path {
        match self {
            TempOut::Unnamed { dir_path, .. } => dir_path,
            TempOut::Named(t) => t.path(),
        }
    }
}

/// The output file for `final_path`, in the same directory (so the final link or rename is
/// atomic).
fn temp_next_to(final_path: &Path) -> Result<TempOut, CliError> {
    use rustix::fs::{Mode, OFlags};
    let dir = match final_path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir_fd =
        rustix::fs::open(&dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| io_err("open the directory", &dir, &e.into()))?;
    match rustix::fs::openat(
        &dir_fd,
        ".",
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    ) {
        Ok(fd) => return Ok(TempOut::Unnamed { file: File::from(fd), dir: dir_fd, dir_path: dir }),
        // The file system has no unnamed files: fall back to a temporary name.
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::INVAL) => {
        }
        Err(e) => return Err(io_err("create a temporary file in", &dir, &e.into())),
    }
    let name = final_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .tempfile_in(&dir)
        .map(TempOut::Named)
        .map_err(|e| io_err("create a temporary file in", &dir, &e))
}

fn refuse_existing(path: &Path, force: bool) -> Result<(), CliError> {
    if !force && fs::symlink_metadata(path).is_ok() {
        return Err(CliError::new(
            EXIT_OUTPUT,
            format!("{} already exists; not overwriting it", path.display()),
        )
        .hint("pass --force to replace it, or choose another path with -o"));
    }
    Ok(())
}

fn exists_error(path: &Path) -> CliError {
    CliError::new(EXIT_OUTPUT, format!("{} already exists; not overwriting it", path.display()))
        .hint("pass --force to replace it")
}

/// fsync, then give the complete file its name (refusing to clobber unless `force`).
fn persist(tmp: TempOut, path: &Path, force: bool) -> Result<(), CliError> {
    tmp.as_file().sync_all().map_err(|e| io_err("sync", tmp.shown(), &e))?;
    match tmp {
        TempOut::Unnamed { file, dir, dir_path } => {
            use rustix::fs::AtFlags;
            let name = path.file_name().ok_or_else(|| {
                CliError::new(EXIT_OUTPUT, format!("{} has no file name", path.display()))
            })?;
            // Link the unnamed file into the directory: through /proc (any user may), else by
            // descriptor (needs CAP_DAC_READ_SEARCH).
            let link = |to: &std::ffi::OsStr| {
                let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file));
                rustix::fs::linkat(
                    rustix::fs::CWD,
                    proc_path.as_str(),
                    &dir,
                    to,
                    AtFlags::SYMLINK_FOLLOW,
                )
                .or_else(|_| rustix::fs::linkat(&file, "", &dir, to, AtFlags::EMPTY_PATH))
            };
            if force {
                // The complete file takes a temporary name, then replaces the old one at once.
                let tmp_name = format!(".{}.ferry-{:016x}", name.to_string_lossy(), rand_u64());
                link(std::ffi::OsStr::new(&tmp_name))
                    .map_err(|e| io_err("link into", &dir_path, &e.into()))?;
                rustix::fs::renameat(&dir, tmp_name.as_str(), &dir, name).map_err(|e| {
                    let _ = rustix::fs::unlinkat(&dir, tmp_name.as_str(), AtFlags::empty());
                    io_err("rename into", path, &e.into())
                })?;
            } else {
                link(name).map_err(|e| {
                    if e == rustix::io::Errno::EXIST {
                        exists_error(path)
                    } else {
                        io_err("link into", path, &e.into())
                    }
                })?;
            }
            let _ = rustix::fs::fsync(&dir);
        }
        TempOut::Named(tmp) => {
            let res = if force {
                tmp.persist(path).map(|_| ())
            } else {
                tmp.persist_noclobber(path).map(|_| ())
            };
            res.map_err(|e| {
                if e.error.kind() == io::ErrorKind::AlreadyExists {
                    exists_error(path)
                } else {
                    io_err("rename into", path, &e.error)
                }
            })?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                // Make the rename durable; failure to open a directory is not fatal on odd
                // filesystems.
                if let Ok(d) = File::open(dir) {
                    let _ = d.sync_all();
                }
            }
        }
    }
    Ok(())
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("random");
    u64::from_le_bytes(b)
}

fn encrypt(a: EncryptArgs) -> Result<(), CliError> {
    let mut input = File::open(&a.input).map_err(|e| io_err("open", &a.input, &e))?;
    let meta = input.metadata().map_err(|e| io_err("stat", &a.input, &e))?;
    if !meta.is_file() {
        return Err(CliError::new(EXIT_IO, format!("{} is not a regular file", a.input.display()))
            .hint(
                "encrypt files one at a time (directories: use a loop or `ferry cp --file-crypt`)",
            ));
    }
    let output = a.output.clone().unwrap_or_else(|| {
        let mut s = a.input.clone().into_os_string();
        s.push(".ferry");
        PathBuf::from(s)
    });
    refuse_existing(&output, a.force)?;
    let len = meta.len();
    let (header, cipher) = if let Some(user) = &a.keystore_user {
        let ks = a.keystore.open()?;
        EnvelopeBuilder::new(len)
            .slot(NewSlot::Keystore { resolver: &ks, owner: user, category: &a.keystore_category })
            .build()
            .map_err(|e| map_err(e, &a.input))?
    } else {
        let params = a.kdf.params()?;
        let pass = passphrase(PASS_ENV, "Passphrase for the new envelope: ", true)?;
        EnvelopeBuilder::new(len)
            .slot(NewSlot::Passphrase { passphrase: pass.as_bytes(), params })
            .build()
            .map_err(|e| map_err(e, &a.input))?
    };
    let tmp = temp_next_to(&output)?;
    let writer = BufWriter::with_capacity(
        1 << 20,
        tmp.as_file().try_clone().map_err(|e| io_err("open", tmp.shown(), &e))?,
    );
    let mut enc = StreamEncryptor::new(writer, &header, cipher).map_err(|e| map_err(e, &output))?;
    let mut buf = Zeroizing::new(vec![0u8; 16 * SEGMENT_SIZE]);
    loop {
        let k = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read", &a.input, &e)),
        };
        enc.update(&buf[..k]).map_err(|e| map_err(e, &a.input))?;
    }
    let mut w = enc.finish().map_err(|e| map_err(e, &a.input))?;
    w.flush().map_err(|e| io_err("write", &output, &e))?;
    drop(w);
    persist(tmp, &output, a.force)?;
    eprintln!("ferry: encrypted {} ({len} bytes) to {}", a.input.display(), output.display());
    Ok(())
}

fn default_decrypt_output(input: &Path) -> Result<PathBuf, CliError> {
    let s = input.to_string_lossy();
    match s.strip_suffix(".ferry") {
        Some(stem) if !stem.is_empty() && !stem.ends_with('/') => Ok(PathBuf::from(stem)),
        _ => Err(CliError::new(
            Exit::Usage,
            format!(
                "{} does not end in .ferry, so there is no default output name",
                input.display()
            ),
        )
        .hint("name the output with -o PATH (or -o - for stdout)")),
    }
}

fn open_envelope(path: &Path) -> Result<(File, Header), CliError> {
    let mut f = File::open(path).map_err(|e| io_err("open", path, &e))?;
    if !f.metadata().map_err(|e| io_err("stat", path, &e))?.is_file() {
        return Err(CliError::new(EXIT_IO, format!("{} is not a regular file", path.display())));
    }
    let header = read_header(&mut f).map_err(|e| map_err(e, path))?;
    Ok((f, header))
}

/// Open an envelope: with the keystore when it has keystore slots (and either no passphrase
/// slot or no FERRY_FILEPASS), otherwise with the passphrase.
fn unlock(
    header: &Header,
    ks: &KeystoreArgs,
    path: &Path,
) -> Result<ferry_engine::atrest::FileKey, CliError> {
    let has_ks = header.slots().iter().any(|s| matches!(s.kind, SlotKind::Keystore { .. }));
    let has_pass = header.slots().iter().any(|s| matches!(s.kind, SlotKind::Passphrase { .. }));
    if has_ks && (!has_pass || std::env::var_os(PASS_ENV).is_none()) {
        let store = ks.open()?;
        return header.unlock_with_keystore(&store).map_err(|e| map_err(e, path));
    }
    let pass = passphrase(PASS_ENV, "Passphrase: ", false)?;
    header.unlock_with_passphrase(pass.as_bytes()).map_err(|e| map_err(e, path))
}

/// Damaged key slots do not affect the content (slots are not content) and are skipped, so that
/// a torn slot left by an interrupted rewrap never locks a file; say so, and how to clear them.
fn warn_damaged(path: &Path, header: &Header) {
    for &i in header.damaged_slots() {
        if let Some(e) = header.slot_damage(i) {
            eprintln!(
                "ferry: warning: {}: {e}; the slot is ignored (run `ferry crypt rewrap` to clear it)",
                path.display()
            );
        }
    }
}

fn decrypt(a: DecryptArgs) -> Result<(), CliError> {
    let to_stdout = a.output.as_deref() == Some(Path::new("-"));
    let output = match &a.output {
        Some(p) => p.clone(),
        None => default_decrypt_output(&a.input)?,
    };
    if to_stdout && io::stdout().is_terminal() {
        return Err(CliError::new(
            EXIT_OUTPUT,
            "refusing to write decrypted binary data to a terminal",
        )
        .hint("redirect stdout to a file or pipe, or use -o PATH"));
    }
    if !to_stdout {
        refuse_existing(&output, a.force)?;
    }
    let (file, header) = open_envelope(&a.input)?;
    warn_damaged(&a.input, &header);
    let key = unlock(&header, &a.keystore, &a.input)?;
    let mut reader = EnvelopeReader::new(file, key).map_err(|e| map_err(e, &a.input))?;
    if to_stdout {
        // Each segment is written only after it authenticated; on a later failure the exit code
        // is non-zero and the consumer must discard what it received.
        let stdout = io::stdout();
        let mut w = BufWriter::new(stdout.lock());
        match reader.decrypt_to(&mut w) {
            Ok(_) => w.flush().map_err(|e| io_err("write", Path::new("stdout"), &e))?,
            Err(AtRestError::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(map_err(e, &a.input)),
        }
        if a.rewrap {
            rewrap_on_access(&a.input, &a.keystore)?;
        }
        Ok(())
    } else {
        let tmp = temp_next_to(&output)?;
        {
            let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
            reader.decrypt_to(&mut w).map_err(|e| map_err(e, &a.input))?;
            w.flush().map_err(|e| io_err("write", &output, &e))?;
        }
        // On any error above, `tmp` is dropped: an unnamed file vanishes with its descriptor
        // (a named fallback is removed), so no partial plaintext remains.
        persist(tmp, &output, a.force)?;
        eprintln!("ferry: decrypted {} to {}", a.input.display(), output.display());
        if a.rewrap {
            rewrap_on_access(&a.input, &a.keystore)?;
        }
        Ok(())
    }
}

/// Move the keystore slots of `path` to the active key versions (after a successful access).
fn rewrap_on_access(path: &Path, ks: &KeystoreArgs) -> Result<(), CliError> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io_err("open for writing", path, &e))?;
    let header = read_header(&mut f).map_err(|e| map_err(e, path))?;
    if !header.slots().iter().any(|s| matches!(s.kind, SlotKind::Keystore { .. })) {
        return Ok(());
    }
    let store = ks.open()?;
    let key = header.unlock_with_keystore(&store).map_err(|e| map_err(e, path))?;
    let (_, moved) =
        rewrap_keystore_to_active(&mut f, &header, &key, &store).map_err(|e| map_err(e, path))?;
    if moved > 0 {
        eprintln!("ferry: rewrapped {} to the active key version", path.display());
    }
    Ok(())
}

fn inspect(a: InspectArgs) -> Result<(), CliError> {
    let (file, header) = open_envelope(&a.input)?;
    // Key versions' states, when the keystore is reachable (metadata only, no values).
    let store = header
        .slots()
        .iter()
        .any(|s| matches!(s.kind, SlotKind::Keystore { .. }))
        .then(|| a.keystore.open().ok())
        .flatten();
    let actual = file.metadata().map_err(|e| io_err("stat", &a.input, &e))?.len();
    let n = header.segment_count();
    let len = header.plaintext_len();
    let mut out = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(out, "file:             {}", a.input.display());
    let _ = writeln!(
        out,
        "format:           Ferry envelope v1, suite 1 (AES-256-GCM segments, HKDF-SHA-256, Argon2id)"
    );
    let _ = writeln!(out, "file id:          {}", hex(header.file_id()));
    let _ = writeln!(out, "plaintext length: {len} bytes");
    let last = len - (n - 1) * SEGMENT_SIZE as u64;
    let _ = writeln!(out, "segments:         {n} of 65536 bytes (final segment {last} bytes)");
    let expected = header.envelope_len();
    let status = if actual == expected {
        "matches the header".to_string()
    } else {
        format!("MISMATCH: header implies {expected}")
    };
    let _ = writeln!(out, "envelope length:  {actual} bytes ({status})");
    let _ = writeln!(out, "key commitment:   {}", hex(header.commitment_bytes()));
    for slot in header.slots() {
        let desc = match &slot.kind {
            SlotKind::Passphrase { params } => {
                let (m, t, p) = (params.m_cost_kib, params.t_cost, params.p_cost);
                format!("passphrase, Argon2id m={m} KiB t={t} p={p}")
            }
            SlotKind::Keystore { owner, category, version } => {
                let state = store
                    .as_ref()
                    .and_then(|s| s.slot_state(owner, category, *version))
                    .map(|st| format!(", {st}"))
                    .unwrap_or_default();
                format!("keystore secret {owner}/{category} v{version}{state}")
            }
        };
        let _ =
            writeln!(out, "slot {}:           {desc} (generation {})", slot.index, slot.generation);
    }
    for &i in header.damaged_slots() {
        if let Some(e) = header.slot_damage(i) {
            let _ = writeln!(out, "slot {i}:           DAMAGED: {e}");
        }
    }
    print!("{out}");
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Regular files under `path` (recursively, not following symlinks) that start with the magic.
fn collect_envelopes(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), CliError> {
    let meta = fs::symlink_metadata(path).map_err(|e| io_err("stat", path, &e))?;
    if meta.is_dir() {
        let mut entries: Vec<_> = fs::read_dir(path)
            .map_err(|e| io_err("list", path, &e))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|e| io_err("list", path, &e))?;
        entries.sort();
        for p in entries {
            collect_envelopes(&p, out)?;
        }
    } else if meta.is_file()
        && !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(ferry_engine::io::docroot::is_partial_name)
    {
        // (A partial file of a running upload is left alone: its header may not be written.)
        let mut magic = [0u8; 8];
        let is_env =
            File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == MAGIC;
        if is_env {
            out.push(path.to_path_buf());
        }
    }
    Ok(())
}

fn rewrap(a: RewrapArgs) -> Result<(), CliError> {
    let mut files = Vec::new();
    for p in &a.paths {
        let is_dir = fs::symlink_metadata(p).map(|m| m.is_dir()).unwrap_or(false);
        if is_dir {
            collect_envelopes(p, &mut files)?;
        } else {
            files.push(p.clone());
        }
    }
    if files.is_empty() {
        return Err(CliError::new(EXIT_IO, "no envelopes found under the given paths")
            .hint("name envelope files or directories holding them"));
    }
    let mut store: Option<Keystore> = None;
    let mut passes: Option<(Zeroizing<String>, Zeroizing<String>, Argon2Params)> = None;
    for path in &files {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io_err("open for writing", path, &e))?;
        let header = read_header(&mut f).map_err(|e| map_err(e, path))?;
        warn_damaged(path, &header);
        let has_ks = header.slots().iter().any(|s| matches!(s.kind, SlotKind::Keystore { .. }));
        if has_ks {
            // Keystore slots move to the active version of their secret.
            if store.is_none() {
                store = Some(a.keystore.open()?);
            }
            let ks = store.as_ref().expect("just opened");
            let key = header.unlock_with_keystore(ks).map_err(|e| map_err(e, path))?;
            let (after, moved) = rewrap_keystore_to_active(&mut f, &header, &key, ks)
                .map_err(|e| map_err(e, path))?;
            let versions: Vec<String> = after
                .slots()
                .iter()
                .filter_map(|s| match &s.kind {
                    SlotKind::Keystore { owner, category, version } => {
                        Some(format!("{owner}/{category} v{version}"))
                    }
                    SlotKind::Passphrase { .. } => None,
                })
                .collect();
            if moved == 0 {
                eprintln!(
                    "ferry: {} already uses the active key version ({})",
                    path.display(),
                    versions.join(", ")
                );
            } else {
                eprintln!(
                    "ferry: rewrapped {} to {} (key slots only; payload untouched)",
                    path.display(),
                    versions.join(", ")
                );
            }
        } else {
            // Passphrase slots get the new passphrase (asked once for the whole run).
            if passes.is_none() {
                let params = a.kdf.params()?;
                let old = passphrase(PASS_ENV, "Current passphrase: ", false)?;
                let new = passphrase(NEW_PASS_ENV, "New passphrase: ", true)?;
                passes = Some((old, new, params));
            }
            let (old, new, params) = passes.as_ref().expect("just set");
            let key =
                header.unlock_with_passphrase(old.as_bytes()).map_err(|e| map_err(e, path))?;
            rewrap_passphrase(&mut f, &header, &key, new.as_bytes(), *params)
                .map_err(|e| map_err(e, path))?;
            eprintln!("ferry: rewrapped {} (key slots only; payload untouched)", path.display());
        }
    }
    Ok(())
}
