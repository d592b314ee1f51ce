//! Session-setup messages of the control channel (docs/PROTOCOL.md section 8): the client's
//! hello (versions, direction, parameters, path, identity and its signature) and the server's
//! reply. They use the control-frame framing (`u32 length, u8 type, payload`) with types 16 and
//! 17; a refusal is an ABORT frame (type 5).

use crate::control::Reader;
use crate::crypto::CipherSuite;
use crate::io::docroot::{PathError, RelPath};
use crate::rate::{Policy, RateLimits};
use crate::session::{MIN_BLOCK_SIZE, SessionConfig};
use crate::wire::{DATA_OVERHEAD, MAX_DATAGRAM, ParseError};

/// Frame type of [`ClientHello`].
pub const T_CLIENT_HELLO: u8 = 16;
/// Frame type of [`ServerHello`].
pub const T_SERVER_HELLO: u8 = 17;
/// The protocol version set-up negotiates: [`crate::PROTOCOL_VERSION`].
pub const VERSION: u8 = crate::PROTOCOL_VERSION;
/// Largest set-up frame (length field included) a peer accepts: a hello with the longest path
/// is about 4.3 KiB.
pub const MAX_SETUP_FRAME: usize = 16 * 1024;
/// TLS exporter label of the client's authentication signature.
pub const AUTH_EXPORTER_LABEL: &[u8] = b"EXPORTER-ferry/1 client auth";
/// TLS exporter label of the session secret (section 4.1).
pub const SESSION_EXPORTER_LABEL: &[u8] = b"EXPORTER-ferry/1 session";
/// Prefix of the message the client signs.
pub const AUTH_CONTEXT: &[u8] = b"ferry/1 client authentication\0";

/// Setup ABORT codes (in addition to the session's 1-4).
pub mod refusal {
    /// No common protocol version.
    pub const UNSUPPORTED_VERSION: u16 = 10;
    /// The client key is not authorised or its signature is invalid.
    pub const AUTHENTICATION: u16 = 11;
    /// The path is invalid, outside the docroot, or does not exist.
    pub const PATH: u16 = 12;
    /// The parameters are unacceptable (suite, block size, rates).
    pub const PARAMETERS: u16 = 13;
    /// The server could not set the session up (internal error).
    pub const SERVER: u16 = 14;
    /// The server is at a session limit (in all, or for this key); try again later.
    pub const BUSY: u16 = 15;
    /// The upload names a single destination file that exists (Ferry never overwrites).
    pub const EXISTS: u16 = 16;
}

/// Which way the files go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The client sends (upload).
    Upload,
    /// The client receives (download).
    Download,
}

/// The client's first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// Protocol versions the client speaks.
    pub versions: Vec<u8>,
    /// Upload or download.
    pub direction: Direction,
    /// Transit cipher suite.
    pub suite: CipherSuite,
    /// Proposed block size.
    pub block_size: u32,
    /// Target rate in bits/s (the sender's `-l`).
    pub target_rate: u64,
    /// Minimum rate in bits/s (`-m`).
    pub min_rate: u64,
    /// Rate policy (`0` fixed, `1` high, `2` fair, `3` low on the wire).
    pub policy: Policy,
    /// The client's UDP data port.
    pub data_port: u16,
    /// Bit 0: on upload, the destination may name the single file when it is not an existing
    /// directory. Bit 1: [`ClientHello::share`] is present (set by [`ClientHello::encode`]).
    /// Bit 2 ([`FLAG_CREATE_DIR`]): on upload, create the destination directory (and its missing
    /// parents) if it does not exist. Bit 3 ([`FLAG_PRESERVE_TIMES`]): the receiver gives each
    /// completed file the modification time of its FILE frame.
    pub flags: u8,
    /// Upload: destination; download: source. Relative to the server's docroot.
    pub path: String,
    /// The transfer user the client asks to act as (`user@host`); empty: the server's default
    /// user. The server checks the key against this user's keys.
    pub user: String,
    /// A download that is one session of a multi-session transfer: which share of the listing
    /// this session carries (docs/PROTOCOL.md 8.5).
    pub share: Option<Share>,
    /// What the receiver does with files that exist at the destination (an option, flag bit
    /// 6; [`Overwrite::Keep`] is its absence).
    pub overwrite: crate::control::Overwrite,
    /// The receiver names each file's partial `NAME` + this while it arrives (an option, flag
    /// bit 6; `ferry cp --partial-file-suffix`), instead of a hidden name.
    pub partial_suffix: Option<String>,
    /// The client's ed25519 public key.
    pub public_key: [u8; 32],
    /// Ed25519 signature over [`ClientHello::signed_message`].
    pub signature: [u8; 64],
}

/// Which share of a download's listing one session of a multi-session download carries: the
/// server deals the listing out to `count` sessions as
/// [`shares`](crate::io::source::shares) does and sends share `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// This session's share, `0 ..= count - 1`.
    pub index: u8,
    /// Sessions of the transfer, `2 ..= 16`.
    pub count: u8,
    /// Files of at least this many bytes are cut into parts.
    pub threshold: u64,
    /// The transfer's random id, carried by its parts.
    pub transfer: [u8; 16],
}

/// Flag bit: a [`Share`] follows the user name.
const FLAG_SHARE: u8 = 2;
/// CLIENT_HELLO flag: on upload, create the destination directory if it is missing (`-d`).
pub const FLAG_CREATE_DIR: u8 = 4;
/// CLIENT_HELLO flag: the receiver gives each completed file the modification time its FILE
/// frame carries (`-p`), in either direction.
pub const FLAG_PRESERVE_TIMES: u8 = 8;
/// CLIENT_HELLO flag bits 4-5: the resume level (`-k`, 0 to 3); 1 or more makes the session a
/// resuming one (docs/PROTOCOL.md 8.6).
pub const RESUME_SHIFT: u8 = 4;
/// The mask of the resume level's bits.
pub const RESUME_MASK: u8 = 0b11 << RESUME_SHIFT;
/// Flag bit: a list of options follows the user name and the share fields (docs/PROTOCOL.md
/// 8.2): `u8 count`, then `count` times `u8 tag, u8 len, len bytes`, tags increasing.
const FLAG_OPTIONS: u8 = 64;
/// Option tag: the overwrite policy (1 byte, [`Overwrite::code`](crate::control::Overwrite)).
const OPT_OVERWRITE: u8 = 1;
/// Option tag: the partial-file suffix (`ferry cp --partial-file-suffix`, UTF-8).
const OPT_PARTIAL_SUFFIX: u8 = 2;
/// Longest partial-file suffix, in bytes.
pub const MAX_PARTIAL_SUFFIX: usize = 64;

/// Whether `s` can be a partial-file suffix: 1 to [`MAX_PARTIAL_SUFFIX`] bytes, no `/`, no NUL or
/// other control character (so that `NAME` + `s` is a name in the same directory).
pub fn check_partial_suffix(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_PARTIAL_SUFFIX {
        return Err(format!("a partial-file suffix has 1 to {MAX_PARTIAL_SUFFIX} bytes"));
    }
    if let Some(c) = s.chars().find(|c| *c == '/' || c.is_control()) {
        return Err(format!("a partial-file suffix cannot hold {c:?}"));
    }
    Ok(())
}
/// CLIENT_HELLO flag: on upload, the client seals each file itself into an envelope it builds
/// anew every attempt (`ferry cp --file-crypt encrypt`); in a resuming session the receiver's
/// FILE_HAVE then carries the held head of a file (docs/PROTOCOL.md 8.6).
pub const FLAG_SEALED: u8 = 128;

/// The server's acceptance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerHello {
    /// The chosen protocol version.
    pub version: u8,
    /// The session id (also the exporter context of the session secret).
    pub session_id: u64,
    /// The suite code.
    pub suite: u8,
    /// The block size.
    pub block_size: u32,
    /// The receiver's window cap in blocks.
    pub max_window: u64,
    /// The server's UDP data port.
    pub data_port: u16,
}

fn frame(t: u8, payload: &[u8], out: &mut Vec<u8>) {
    let start = crate::control::begin_frame(out, t);
    out.extend_from_slice(payload);
    crate::control::end_frame(out, start);
}

impl ClientHello {
    /// The payload bytes before the signature.
    fn unsigned_payload(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(128 + self.path.len());
        p.push(self.versions.len() as u8);
        p.extend_from_slice(&self.versions);
        p.push(match self.direction {
            Direction::Upload => 1,
            Direction::Download => 2,
        });
        p.push(self.suite.code());
        p.extend_from_slice(&self.block_size.to_be_bytes());
        p.extend_from_slice(&self.target_rate.to_be_bytes());
        p.extend_from_slice(&self.min_rate.to_be_bytes());
        p.push(self.policy.code());
        p.extend_from_slice(&self.data_port.to_be_bytes());
        let mut options: Vec<(u8, &[u8])> = Vec::new();
        let overwrite = self.overwrite.code().map(|c| [c]);
        if let Some(code) = &overwrite {
            options.push((OPT_OVERWRITE, code));
        }
        if let Some(sfx) = &self.partial_suffix {
            options.push((OPT_PARTIAL_SUFFIX, sfx.as_bytes()));
        }
        let flags = (self.flags & !(FLAG_SHARE | FLAG_OPTIONS))
            | if self.share.is_some() { FLAG_SHARE } else { 0 }
            | if options.is_empty() { 0 } else { FLAG_OPTIONS };
        p.push(flags);
        p.extend_from_slice(&(self.path.len() as u16).to_be_bytes());
        p.extend_from_slice(self.path.as_bytes());
        p.push(self.user.len() as u8);
        p.extend_from_slice(self.user.as_bytes());
        if let Some(sh) = &self.share {
            p.push(sh.index);
            p.push(sh.count);
            p.extend_from_slice(&sh.threshold.to_be_bytes());
            p.extend_from_slice(&sh.transfer);
        }
        if !options.is_empty() {
            p.push(options.len() as u8);
            for (tag, value) in options {
                p.push(tag);
                p.push(value.len() as u8);
                p.extend_from_slice(value);
            }
        }
        p.extend_from_slice(&self.public_key);
        p
    }

    /// What the client signs: `AUTH_CONTEXT || exporter value || payload before the signature`.
    pub fn signed_message(&self, exporter: &[u8; 32]) -> Vec<u8> {
        let mut m = AUTH_CONTEXT.to_vec();
        m.extend_from_slice(exporter);
        m.extend_from_slice(&self.unsigned_payload());
        m
    }

    /// Appends the framed message.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut p = self.unsigned_payload();
        p.extend_from_slice(&self.signature);
        frame(T_CLIENT_HELLO, &p, out);
    }

    /// Decodes a payload (after the type byte). A well-formed hello with a suite or policy
    /// this implementation does not know is told apart (the server refuses it with code 13,
    /// parameters, rather than as a protocol violation).
    pub fn decode(payload: &[u8]) -> Result<Self, HelloError> {
        let mut r = Reader(payload);
        let n = r.u8()? as usize;
        if n == 0 || n > 16 {
            return Err(ParseError::Invalid("version count").into());
        }
        let versions = r.take(n)?.to_vec();
        let direction = match r.u8()? {
            1 => Direction::Upload,
            2 => Direction::Download,
            _ => return Err(ParseError::Invalid("direction").into()),
        };
        let suite = r.u8()?;
        let block_size = r.u32()?;
        let target_rate = r.u64()?;
        let min_rate = r.u64()?;
        let policy = r.u8()?;
        let data_port = r.u16()?;
        let flags = r.u8()?;
        let len = r.u16()? as usize;
        if len == 0 || len > crate::control::MAX_PATH {
            return Err(ParseError::Invalid("path length").into());
        }
        let path = std::str::from_utf8(r.take(len)?)
            .map_err(|_| ParseError::Invalid("path is not UTF-8"))?
            .to_owned();
        let user_len = r.u8()? as usize;
        if user_len > ferry_keys::MAX_USER_NAME {
            return Err(ParseError::Invalid("user name length").into());
        }
        let user = std::str::from_utf8(r.take(user_len)?)
            .map_err(|_| ParseError::Invalid("user name is not UTF-8"))?
            .to_owned();
        let share = if flags & FLAG_SHARE != 0 {
            let (index, count, threshold) = (r.u8()?, r.u8()?, r.u64()?);
            let transfer = r.take(16)?.try_into().expect("16");
            if !(2..=16).contains(&count) || index >= count || direction != Direction::Download {
                return Err(
                    ParseError::Invalid("share: not 2..=16 sessions, or not a download").into()
                );
            }
            Some(Share { index, count, threshold, transfer })
        } else {
            None
        };
        let mut overwrite = crate::control::Overwrite::Keep;
        let mut partial_suffix = None;
        if flags & FLAG_OPTIONS != 0 {
            let count = r.u8()?;
            if count == 0 {
                return Err(ParseError::Invalid("an empty option list").into());
            }
            let mut last = 0;
            for _ in 0..count {
                let (tag, len) = (r.u8()?, r.u8()? as usize);
                let value = r.take(len)?;
                if tag <= last {
                    return Err(ParseError::Invalid("options out of order").into());
                }
                last = tag;
                match tag {
                    OPT_OVERWRITE => {
                        let [code] = value else {
                            return Err(ParseError::Invalid("overwrite policy").into());
                        };
                        overwrite = crate::control::Overwrite::from_code(*code)
                            .ok_or(ParseError::Invalid("overwrite policy"))?;
                    }
                    OPT_PARTIAL_SUFFIX => {
                        let sfx = std::str::from_utf8(value).map_err(|_| {
                            HelloError::Option("the partial-file suffix is not UTF-8".into())
                        })?;
                        check_partial_suffix(sfx).map_err(HelloError::Option)?;
                        partial_suffix = Some(sfx.to_owned());
                    }
                    _ => return Err(HelloError::Option(format!("unknown option {tag}"))),
                }
            }
        }
        let public_key = r.take(32)?.try_into().expect("32");
        let signature = r.take(64)?.try_into().expect("64");
        if !r.0.is_empty() {
            return Err(ParseError::Invalid("trailing bytes in client hello").into());
        }
        let suite = CipherSuite::from_code(suite).ok_or(HelloError::UnknownSuite(suite))?;
        let policy = Policy::from_code(policy).ok_or(HelloError::UnknownPolicy(policy))?;
        Ok(Self {
            versions,
            direction,
            suite,
            block_size,
            target_rate,
            min_rate,
            policy,
            data_port,
            flags: flags & !(FLAG_SHARE | FLAG_OPTIONS),
            path,
            user,
            share,
            overwrite,
            partial_suffix,
            public_key,
            signature,
        })
    }
}

impl ServerHello {
    /// Appends the framed message.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut p = Vec::with_capacity(32);
        p.push(self.version);
        p.extend_from_slice(&self.session_id.to_be_bytes());
        p.push(self.suite);
        p.extend_from_slice(&self.block_size.to_be_bytes());
        p.extend_from_slice(&self.max_window.to_be_bytes());
        p.extend_from_slice(&self.data_port.to_be_bytes());
        frame(T_SERVER_HELLO, &p, out);
    }

    /// Decodes a payload (after the type byte).
    pub fn decode(payload: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader(payload);
        let h = Self {
            version: r.u8()?,
            session_id: r.u64()?,
            suite: r.u8()?,
            block_size: r.u32()?,
            max_window: r.u64()?,
            data_port: r.u16()?,
        };
        if !r.0.is_empty() {
            return Err(ParseError::Invalid("trailing bytes in server hello"));
        }
        Ok(h)
    }
}

pub use crate::control::Frame;

/// Splits one set-up frame off the front of `buf` (at most [`MAX_SETUP_FRAME`] bytes):
/// `Ok(None)` if incomplete, else the type, the payload and the bytes consumed.
pub fn split_frame(buf: &[u8]) -> Result<Option<Frame<'_>>, ParseError> {
    crate::control::split_frame(buf, MAX_SETUP_FRAME - 4)
}

/// Why a CLIENT_HELLO payload was not accepted as one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// It is not a well-formed hello.
    #[error("malformed client hello: {0}")]
    Malformed(#[from] ParseError),
    /// A well-formed hello with a cipher suite this implementation does not know.
    #[error("unknown cipher suite {0}")]
    UnknownSuite(u8),
    /// A well-formed hello with a rate policy this implementation does not know.
    #[error("unknown rate policy {0}")]
    UnknownPolicy(u8),
    /// A well-formed hello with an option this implementation does not know, or one whose
    /// value it does not accept.
    #[error("{0}")]
    Option(String),
}

/// What a server accepts, for [`negotiate`]. The defaults accept everything the protocol allows.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Cipher suites the server allows (a client asking for another is refused).
    pub suites: Vec<CipherSuite>,
    /// The highest target rate a client may ask for, bits/s; higher requests are capped to it.
    pub rate_cap: Option<u64>,
    /// The receiver's window cap in blocks, sent in SERVER_HELLO.
    pub max_window: u64,
}

impl Default for Rules {
    fn default() -> Self {
        Self { suites: CipherSuite::ALL.to_vec(), rate_cap: None, max_window: 1 << 20 }
    }
}

/// A session the server accepted: everything the rest of set-up needs, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The session id (chosen by the server; the caller draws it).
    pub session_id: u64,
    /// Upload or download.
    pub direction: Direction,
    /// Transit cipher.
    pub suite: CipherSuite,
    /// Block size.
    pub block_size: usize,
    /// The sender's rate limits (the target capped by the server's rules).
    pub limits: RateLimits,
    /// The sender's rate policy.
    pub policy: Policy,
    /// The path, parsed (relative to the docroot).
    pub path: RelPath,
    /// The path ended in `/`: it must be an existing directory.
    pub wants_dir: bool,
    /// On upload: the path may name the single file (flag bit 0, and not bit 2).
    pub may_name_file: bool,
    /// On upload: create the destination directory if it is missing (flag bit 2).
    pub create_dir: bool,
    /// The receiver (the server on upload, the client on download) gives each completed file
    /// its FILE frame's modification time (flag bit 3).
    pub preserve_times: bool,
    /// The resume level, 0 to 3 (flag bits 4-5; `-k`): 1 or more resumes interrupted partial
    /// files (docs/PROTOCOL.md 8.6).
    pub resume: u8,
    /// On upload: the client seals its files itself (flag bit 7): FILE_HAVE carries held heads.
    pub sealed: bool,
    /// What the receiver does with files that exist at the destination.
    pub overwrite: crate::control::Overwrite,
    /// The receiver's partial files are `NAME` + this (`--partial-file-suffix`).
    pub partial_suffix: Option<String>,
    /// The client's data port.
    pub data_port: u16,
    /// The receiver's window cap.
    pub max_window: u64,
    /// On download: the share of the listing this session sends.
    pub share: Option<Share>,
}

impl Plan {
    /// The session parameters both ends run with (RTT and limits of the receiver are the
    /// caller's to set).
    pub fn config(&self) -> SessionConfig {
        let mut c = SessionConfig::new(self.session_id, self.suite, self.limits);
        c.block_size = self.block_size;
        c.max_window = self.max_window;
        c.resume = self.resume > 0;
        c.resume_head = c.resume && self.sealed;
        c
    }

    /// The SERVER_HELLO that accepts this plan, naming the server's data port.
    pub fn reply(&self, data_port: u16) -> ServerHello {
        ServerHello {
            version: VERSION,
            session_id: self.session_id,
            suite: self.suite.code(),
            block_size: self.block_size as u32,
            max_window: self.max_window,
            data_port,
        }
    }
}

/// Why a server refuses a session at set-up: each variant is one ABORT code (section 8.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The first frame is not a well-formed CLIENT_HELLO (code 3).
    #[error("protocol violation: expected a client hello")]
    Protocol,
    /// No common version (code 10).
    #[error("unsupported version")]
    UnsupportedVersion,
    /// The signature does not verify or the key is not authorised (code 11). The reason is
    /// for the server's log; the client is told only "authentication refused".
    #[error("authentication refused")]
    Authentication(String),
    /// The path is invalid, outside the docroot or missing (code 12).
    #[error("{0}")]
    Path(String),
    /// Unacceptable parameters: suite, policy, block size, rates (code 13).
    #[error("{0}")]
    Parameters(String),
    /// The server cannot set the session up (code 14).
    #[error("{0}")]
    Server(String),
    /// The server is at a session limit (code 15).
    #[error("{0}")]
    Busy(String),
    /// The single file the upload names exists already (code 16).
    #[error("{0} already exists on the server; Ferry does not overwrite files")]
    Exists(String),
}

impl Refusal {
    /// Its ABORT code.
    pub fn code(&self) -> u16 {
        match self {
            Refusal::Protocol => crate::session::abort_code::PROTOCOL,
            Refusal::UnsupportedVersion => refusal::UNSUPPORTED_VERSION,
            Refusal::Authentication(_) => refusal::AUTHENTICATION,
            Refusal::Path(_) => refusal::PATH,
            Refusal::Parameters(_) => refusal::PARAMETERS,
            Refusal::Server(_) => refusal::SERVER,
            Refusal::Busy(_) => refusal::BUSY,
            Refusal::Exists(_) => refusal::EXISTS,
        }
    }
}

impl From<PathError> for Refusal {
    fn from(e: PathError) -> Self {
        Refusal::Path(e.to_string())
    }
}

/// What a server's policy granted one key, as far as set-up is concerned: the policy decides
/// per session, on top of the server-wide [`Rules`].
pub trait Permits {
    /// The highest target rate this session may run at, bits/s (`None`: only the server's
    /// [`Rules::rate_cap`] applies). The lower of the two caps what the client asks for.
    fn rate_cap(&self) -> Option<u64>;

    /// Whether this session's direction and transit cipher are allowed (on top of
    /// [`Rules::suites`]); the error says why not (code 13, parameters).
    fn permit(&self, direction: Direction, suite: CipherSuite) -> Result<(), String>;
}

/// A grant with no limits of its own (tests, fuzzing).
impl Permits for () {
    fn rate_cap(&self) -> Option<u64> {
        None
    }

    fn permit(&self, _: Direction, _: CipherSuite) -> Result<(), String> {
        Ok(())
    }
}

/// The server's decision on a CLIENT_HELLO, with no I/O: the version, the signature over this
/// connection's exporter value, the user name's syntax, the user and key (`authorize(user,
/// key)`, the server's policy, called only once the signature verified; `user` is empty when
/// the client named none), then every parameter (within the rules and what the policy permits)
/// and the path's syntax. `session_id` is drawn by the caller. Returns the plan and what
/// `authorize` granted, or the refusal to send.
pub fn negotiate<G: Permits>(
    hello: &ClientHello,
    exporter: &[u8; 32],
    session_id: u64,
    rules: &Rules,
    authorize: impl FnOnce(&str, &[u8; 32]) -> Result<G, String>,
) -> Result<(Plan, G), Refusal> {
    if !hello.versions.contains(&VERSION) {
        return Err(Refusal::UnsupportedVersion);
    }
    if !crate::crypto::ed25519_verify(
        &hello.public_key,
        &hello.signed_message(exporter),
        &hello.signature,
    ) {
        return Err(Refusal::Authentication("the signature does not verify".into()));
    }
    if !hello.user.is_empty() {
        ferry_keys::check_user_name(&hello.user).map_err(|e| {
            Refusal::Authentication(format!("invalid user name {:?}: {e}", hello.user))
        })?;
    }
    let grant = authorize(&hello.user, &hello.public_key).map_err(Refusal::Authentication)?;
    if !rules.suites.contains(&hello.suite) {
        return Err(Refusal::Parameters(format!(
            "cipher {} is not allowed here",
            hello.suite.name()
        )));
    }
    grant.permit(hello.direction, hello.suite).map_err(Refusal::Parameters)?;
    let block_size = hello.block_size as usize;
    if block_size < MIN_BLOCK_SIZE || block_size + DATA_OVERHEAD > MAX_DATAGRAM {
        return Err(Refusal::Parameters(format!("block size {block_size} out of range")));
    }
    if hello.target_rate == 0 {
        return Err(Refusal::Parameters("target rate must be positive".into()));
    }
    if hello.min_rate > hello.target_rate {
        return Err(Refusal::Parameters("the minimum rate exceeds the target rate".into()));
    }
    let cap = match (rules.rate_cap, grant.rate_cap()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let target = cap.map_or(hello.target_rate, |cap| hello.target_rate.min(cap));
    let limits = RateLimits { target, min: hello.min_rate.min(target) };
    let (path, wants_dir) = RelPath::parse_request(&hello.path)?;
    let plan = Plan {
        session_id,
        direction: hello.direction,
        suite: hello.suite,
        block_size,
        limits,
        policy: hello.policy,
        path,
        wants_dir,
        may_name_file: hello.direction == Direction::Upload
            && hello.flags & 1 != 0
            && hello.flags & FLAG_CREATE_DIR == 0,
        create_dir: hello.direction == Direction::Upload && hello.flags & FLAG_CREATE_DIR != 0,
        preserve_times: hello.flags & FLAG_PRESERVE_TIMES != 0,
        resume: (hello.flags & RESUME_MASK) >> RESUME_SHIFT,
        sealed: hello.direction == Direction::Upload && hello.flags & FLAG_SEALED != 0,
        overwrite: hello.overwrite,
        partial_suffix: hello.partial_suffix.clone(),
        data_port: hello.data_port,
        max_window: rules.max_window,
        share: hello.share,
    };
    Ok((plan, grant))
}

/// Why a client does not accept a SERVER_HELLO.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// The server chose a version the client did not offer.
    #[error("the server chose version {0}, which this client did not offer")]
    Version(u8),
    /// The server chose another suite than the client asked for.
    #[error("the server chose another cipher suite than the one asked for")]
    Suite,
    /// A block size outside the protocol's range, or above the one proposed.
    #[error("the server chose an invalid block size {0}")]
    BlockSize(u32),
    /// A window of no blocks.
    #[error("the server's window cap is zero")]
    Window,
}

/// The client's check of the server's answer to `hello`: the parameters it fixes.
pub fn accept_reply(hello: &ClientHello, reply: &ServerHello) -> Result<(), SetupError> {
    if !hello.versions.contains(&reply.version) {
        return Err(SetupError::Version(reply.version));
    }
    if reply.suite != hello.suite.code() {
        return Err(SetupError::Suite);
    }
    let b = reply.block_size as usize;
    if b < MIN_BLOCK_SIZE || b + DATA_OVERHEAD > MAX_DATAGRAM || b > hello.block_size as usize {
        return Err(SetupError::BlockSize(reply.block_size));
    }
    if reply.max_window == 0 {
        return Err(SetupError::Window);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    const EXPORTER: [u8; 32] = [7; 32];

    /// A hello signed by a fixed key over [`EXPORTER`], after `edit`.
    fn signed(edit: impl FnOnce(&mut ClientHello)) -> ClientHello {
        let key = Ed25519KeyPair::from_seed_unchecked(&[5; 32]).unwrap();
        let mut h = hello();
        h.versions = vec![VERSION];
        h.public_key = key.public_key().as_ref().try_into().unwrap();
        edit(&mut h);
        h.signature = key.sign(&h.signed_message(&EXPORTER)).as_ref().try_into().unwrap();
        h
    }

    fn allow(_: &str, _: &[u8; 32]) -> Result<(), String> {
        Ok(())
    }

    fn refused(h: &ClientHello, rules: &Rules) -> Refusal {
        negotiate(h, &EXPORTER, 9, rules, allow).unwrap_err()
    }

    #[test]
    fn negotiates_a_plan() {
        let h = signed(|_| {});
        let (plan, ()) = negotiate(&h, &EXPORTER, 9, &Rules::default(), allow).unwrap();
        assert_eq!(plan.session_id, 9);
        assert_eq!(plan.path, RelPath::parse("in/ü").unwrap());
        assert!(plan.may_name_file && !plan.wants_dir && !plan.create_dir);
        assert_eq!(plan.limits, RateLimits { target: 1_000_000, min: 0 });
        // Bit 2 (-d): the destination is a directory to create, never the file's new name.
        let h = signed(|h| h.flags = 1 | FLAG_CREATE_DIR);
        let (plan, ()) = negotiate(&h, &EXPORTER, 9, &Rules::default(), allow).unwrap();
        assert!(plan.create_dir && !plan.may_name_file);
        let h = signed(|h| (h.direction, h.flags) = (Direction::Download, FLAG_CREATE_DIR));
        let (plan, ()) = negotiate(&h, &EXPORTER, 9, &Rules::default(), allow).unwrap();
        assert!(!plan.create_dir, "a download creates nothing on the server");
        let reply = plan.reply(5000);
        assert_eq!((reply.session_id, reply.data_port, reply.version), (9, 5000, VERSION));
        assert_eq!(accept_reply(&h, &reply), Ok(()));
        assert_eq!(plan.config().block_size, 1413);
    }

    #[test]
    fn every_refusal_has_its_code() {
        let rules = Rules::default();
        let cases: Vec<(ClientHello, u16)> = vec![
            (signed(|h| h.versions = vec![1]), refusal::UNSUPPORTED_VERSION),
            (signed(|h| h.block_size = 10), refusal::PARAMETERS),
            (signed(|h| h.block_size = 9000), refusal::PARAMETERS),
            (signed(|h| h.target_rate = 0), refusal::PARAMETERS),
            (signed(|h| h.min_rate = 2_000_000), refusal::PARAMETERS),
            (signed(|h| h.path = "../x".into()), refusal::PATH),
            (signed(|h| h.path = "a\u{1b}b".into()), refusal::PATH),
            (signed(|h| h.path = ".x.ferry-partial-0123456789abcdef".into()), refusal::PATH),
        ];
        for (h, code) in cases {
            let r = refused(&h, &rules);
            assert_eq!(r.code(), code, "{r:?} for {h:?}");
        }
        // A forged signature, and a key the policy does not know: the same code.
        let mut forged = signed(|_| {});
        forged.signature[0] ^= 1;
        assert!(matches!(refused(&forged, &rules), Refusal::Authentication(_)));
        let other_exporter = negotiate(&signed(|_| {}), &[8; 32], 1, &rules, allow);
        assert_eq!(other_exporter.unwrap_err().code(), refusal::AUTHENTICATION);
        let unknown =
            negotiate(&signed(|_| {}), &EXPORTER, 1, &rules, |_, _| Err::<(), _>("no".into()));
        assert_eq!(unknown.unwrap_err(), Refusal::Authentication("no".into()));
        // The policy sees the user the client named; a name that breaks the rules is refused
        // before the policy is asked.
        let mut asked = None;
        let named = signed(|h| h.user = "bob".into());
        let ok = negotiate(&named, &EXPORTER, 1, &rules, |u, _| {
            asked = Some(u.to_owned());
            Ok(())
        });
        assert!(ok.is_ok());
        assert_eq!(asked.as_deref(), Some("bob"));
        for bad in ["-rf", "a b", "../x", "ü"] {
            let h = signed(|h| h.user = bad.into());
            let r = negotiate(&h, &EXPORTER, 1, &rules, |_, _| -> Result<(), String> {
                panic!("the policy was asked about {bad:?}")
            });
            assert_eq!(r.unwrap_err().code(), refusal::AUTHENTICATION, "{bad:?}");
        }
        // The server's rules: a suite it does not allow; a rate it caps.
        let strict =
            Rules { suites: vec![CipherSuite::Aes256], rate_cap: Some(500), ..Rules::default() };
        assert_eq!(refused(&signed(|_| {}), &strict).code(), refusal::PARAMETERS);
        let capped = signed(|h| h.suite = CipherSuite::Aes256);
        let (plan, ()) = negotiate(&capped, &EXPORTER, 1, &strict, allow).unwrap();
        assert_eq!(plan.limits, RateLimits { target: 500, min: 0 });
        // The policy's cap for this key: the lower of it and the server's applies.
        #[derive(Debug)]
        struct Capped(u64);
        impl Permits for Capped {
            fn rate_cap(&self) -> Option<u64> {
                Some(self.0)
            }
            fn permit(&self, d: Direction, _: CipherSuite) -> Result<(), String> {
                if d == Direction::Download { Err("no downloads".into()) } else { Ok(()) }
            }
        }
        let slow = signed(|h| h.min_rate = 900_000);
        for (rules, cap, target) in [(&rules, 700_000, 700_000), (&strict, 300, 300)] {
            let h = if rules.suites.len() == 1 { &capped } else { &slow };
            let (plan, g) = negotiate(h, &EXPORTER, 1, rules, |_, _| Ok(Capped(cap))).unwrap();
            assert_eq!(plan.limits.target, target);
            assert!(plan.limits.min <= target, "{:?}", plan.limits);
            assert_eq!(g.0, cap);
        }
        let strict_wins = negotiate(&capped, &EXPORTER, 1, &strict, |_, _| Ok(Capped(9_000)));
        assert_eq!(strict_wins.unwrap().0.limits.target, 500);
        // What the policy does not permit this key is refused as a parameter.
        let down = signed(|h| h.direction = Direction::Download);
        let r = negotiate(&down, &EXPORTER, 1, &rules, |_, _| Ok(Capped(1))).unwrap_err();
        assert_eq!(r, Refusal::Parameters("no downloads".into()));
        for (r, code) in [
            (Refusal::Protocol, 3),
            (Refusal::Server("x".into()), refusal::SERVER),
            (Refusal::Busy("x".into()), refusal::BUSY),
            (Refusal::Exists("x".into()), refusal::EXISTS),
        ] {
            assert_eq!(r.code(), code);
        }
    }

    #[test]
    fn unknown_suites_and_policies_are_told_apart() {
        let mut buf = Vec::new();
        hello().encode(&mut buf);
        let (_, payload, _) = split_frame(&buf).unwrap().unwrap();
        // n, one version, direction, then the suite.
        let suite_at = 1 + 1 + 1;
        let mut p = payload.to_vec();
        p[suite_at] = 99;
        assert_eq!(ClientHello::decode(&p), Err(HelloError::UnknownSuite(99)));
        let policy_at = suite_at + 1 + 4 + 8 + 8;
        let mut p = payload.to_vec();
        p[policy_at] = 9;
        assert_eq!(ClientHello::decode(&p), Err(HelloError::UnknownPolicy(9)));
    }

    #[test]
    fn the_client_checks_the_reply() {
        let h = signed(|_| {});
        let ok = ServerHello {
            version: VERSION,
            session_id: 1,
            suite: h.suite.code(),
            block_size: 1413,
            max_window: 10,
            data_port: 1,
        };
        assert_eq!(accept_reply(&h, &ok), Ok(()));
        let bad = [
            (ServerHello { version: 9, ..ok }, SetupError::Version(9)),
            (ServerHello { suite: 0, ..ok }, SetupError::Suite),
            (ServerHello { block_size: 1, ..ok }, SetupError::BlockSize(1)),
            // Larger than proposed: the server may only lower the client's block size.
            (
                ServerHello { block_size: h.block_size + 1, ..ok },
                SetupError::BlockSize(h.block_size + 1),
            ),
            (ServerHello { max_window: 0, ..ok }, SetupError::Window),
        ];
        for (reply, e) in bad {
            assert_eq!(accept_reply(&h, &reply), Err(e));
        }
    }

    fn hello() -> ClientHello {
        ClientHello {
            versions: vec![1],
            direction: Direction::Upload,
            suite: CipherSuite::Aes128,
            block_size: 1413,
            target_rate: 1_000_000,
            min_rate: 0,
            policy: Policy::Fair,
            data_port: 4000,
            flags: 1,
            path: "in/ü".into(),
            user: "alice".into(),
            share: None,
            overwrite: Default::default(),
            partial_suffix: None,
            public_key: [3; 32],
            signature: [4; 64],
        }
    }

    #[test]
    fn round_trips_and_rejects_trailing_bytes() {
        let h = hello();
        let mut buf = Vec::new();
        h.encode(&mut buf);
        let (t, payload, used) = split_frame(&buf).unwrap().unwrap();
        assert_eq!((t, used), (T_CLIENT_HELLO, buf.len()));
        assert_eq!(ClientHello::decode(payload).unwrap(), h);
        let mut longer = payload.to_vec();
        longer.push(0);
        assert!(ClientHello::decode(&longer).is_err());
        assert!(ClientHello::decode(&payload[..payload.len() - 1]).is_err());
        // The signature covers every field before it.
        let e = [0u8; 32];
        let mut other = h.clone();
        other.data_port = 4001;
        assert_ne!(h.signed_message(&e), other.signed_message(&e));
        let mut other = h.clone();
        other.user = "mallory".into();
        assert_ne!(h.signed_message(&e), other.signed_message(&e));
        // Every overwrite policy round-trips (with and without a share) and is signed; an
        // unknown code is refused.
        use crate::control::Overwrite;
        for (ow, share) in [Overwrite::Never, Overwrite::Always, Overwrite::Diff]
            .into_iter()
            .chain([Overwrite::Older, Overwrite::DiffOlder])
            .zip(
                [None, Some(Share { index: 0, count: 2, threshold: 1, transfer: [9; 16] })]
                    .into_iter()
                    .cycle(),
            )
        {
            let mut o = h.clone();
            o.overwrite = ow;
            if share.is_some() {
                (o.direction, o.flags, o.share) = (Direction::Download, 0, share);
            }
            let mut buf = Vec::new();
            o.encode(&mut buf);
            let (_, payload, _) = split_frame(&buf).unwrap().unwrap();
            assert_eq!(ClientHello::decode(payload).unwrap(), o);
            assert_ne!(h.signed_message(&e), o.signed_message(&e));
        }
        let mut o = h.clone();
        o.overwrite = Overwrite::Diff;
        let mut buf = Vec::new();
        o.encode(&mut buf);
        let (_, payload, _) = split_frame(&buf).unwrap().unwrap();
        let mut bad = payload.to_vec();
        // The policy byte sits right before the public key and the signature.
        let at = bad.len() - 96 - 1;
        assert_eq!(bad[at], 2);
        bad[at] = 9;
        assert!(ClientHello::decode(&bad).is_err());
        // The partial suffix rides the option list with the policy; a bad suffix, an unknown
        // option and options out of order are refused.
        let mut o = h.clone();
        (o.overwrite, o.partial_suffix) = (Overwrite::Diff, Some(".part".into()));
        let mut buf = Vec::new();
        o.encode(&mut buf);
        let (_, payload, _) = split_frame(&buf).unwrap().unwrap();
        assert_eq!(ClientHello::decode(payload).unwrap(), o);
        assert_ne!(h.signed_message(&e), o.signed_message(&e));
        let tail = |opts: &[u8]| {
            let mut p = payload[..payload.len() - 96 - (1 + 3 + 2 + 5)].to_vec();
            p.extend_from_slice(opts);
            p.extend_from_slice(&payload[payload.len() - 96..]);
            ClientHello::decode(&p)
        };
        assert_eq!(
            tail(&[2, 1, 1, 2, 2, 2, b'.', b'p']).unwrap().partial_suffix.as_deref(),
            Some(".p")
        );
        assert!(matches!(tail(&[1, 2, 2, b'a', b'/']), Err(HelloError::Option(_))));
        assert!(matches!(tail(&[1, 9, 1, 0]), Err(HelloError::Option(_))));
        assert!(tail(&[2, 2, 1, b'x', 1, 1, 2]).is_err(), "options out of order");
        assert!(tail(&[0]).is_err(), "an empty list");
        // A download's share round-trips and is signed; a share on an upload, of one session,
        // or beyond its count is refused.
        let share = Share { index: 1, count: 3, threshold: 64 << 20, transfer: [5; 16] };
        let mut shared = h.clone();
        (shared.direction, shared.flags, shared.share) = (Direction::Download, 0, Some(share));
        let mut buf = Vec::new();
        shared.encode(&mut buf);
        let (_, payload, _) = split_frame(&buf).unwrap().unwrap();
        assert_eq!(ClientHello::decode(payload).unwrap(), shared);
        let mut other = shared.clone();
        other.share = Some(Share { index: 2, ..share });
        assert_ne!(shared.signed_message(&e), other.signed_message(&e));
        for bad in [
            Share { index: 3, ..share },
            Share { count: 1, index: 0, ..share },
            Share { count: 17, ..share },
        ] {
            let mut b = shared.clone();
            b.share = Some(bad);
            let mut buf = Vec::new();
            b.encode(&mut buf);
            let (_, payload, _) = split_frame(&buf).unwrap().unwrap();
            assert!(ClientHello::decode(payload).is_err(), "{bad:?}");
        }
        let mut up = shared.clone();
        up.direction = Direction::Upload;
        let mut buf = Vec::new();
        up.encode(&mut buf);
        let (_, payload, _) = split_frame(&buf).unwrap().unwrap();
        assert!(ClientHello::decode(payload).is_err(), "a share on an upload");
        // No user (the server's default), and a user name longer than 64 bytes.
        let mut anonymous = h.clone();
        anonymous.user.clear();
        let mut buf = Vec::new();
        anonymous.encode(&mut buf);
        let (_, payload, _) = split_frame(&buf).unwrap().unwrap();
        assert_eq!(ClientHello::decode(payload).unwrap(), anonymous);
        let mut long = h.clone();
        long.user = "x".repeat(65);
        let mut buf = Vec::new();
        long.encode(&mut buf);
        let (_, payload, _) = split_frame(&buf).unwrap().unwrap();
        assert!(matches!(ClientHello::decode(payload), Err(HelloError::Malformed(_))));

        let s = ServerHello {
            version: 1,
            session_id: 42,
            suite: 1,
            block_size: 1413,
            max_window: 1 << 20,
            data_port: 5000,
        };
        let mut buf = Vec::new();
        s.encode(&mut buf);
        assert_eq!(buf.len(), 4 + 1 + 24);
        let (t, payload, _) = split_frame(&buf).unwrap().unwrap();
        assert_eq!(t, T_SERVER_HELLO);
        assert_eq!(ServerHello::decode(payload).unwrap(), s);
        assert!(split_frame(&buf[..10]).unwrap().is_none());
    }
}
