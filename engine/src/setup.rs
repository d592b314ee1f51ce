//! Session-setup messages of the control channel (docs/PROTOCOL.md section 8): the client's
//! hello (versions, direction, parameters, path, identity and its signature) and the server's
//! reply. They use the control-frame framing (`u32 length, u8 type, payload`) with types 16 and
//! 17; a refusal is an ABORT frame (type 5).

use crate::control::Reader;
use crate::wire::ParseError;

/// Frame type of [`ClientHello`].
pub const T_CLIENT_HELLO: u8 = 16;
/// Frame type of [`ServerHello`].
pub const T_SERVER_HELLO: u8 = 17;
/// The protocol version this implementation speaks. Version 2: per-file failures (FILE_RESULT
/// carries a reason, FILE_ABANDON) instead of ending the session at the first failed file.
pub const VERSION: u8 = 2;
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
    /// Transit cipher suite code.
    pub suite: u8,
    /// Proposed block size.
    pub block_size: u32,
    /// Target rate in bits/s (the sender's `-l`).
    pub target_rate: u64,
    /// Minimum rate in bits/s (`-m`).
    pub min_rate: u64,
    /// Rate policy: 0 fixed, 1 high, 2 fair, 3 low.
    pub policy: u8,
    /// The client's UDP data port.
    pub data_port: u16,
    /// Bit 0: on upload, the destination may name the single file when it is not an existing
    /// directory.
    pub flags: u8,
    /// Upload: destination; download: source. Relative to the server's docroot.
    pub path: String,
    /// The client's ed25519 public key.
    pub public_key: [u8; 32],
    /// Ed25519 signature over [`ClientHello::signed_message`].
    pub signature: [u8; 64],
}

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
    out.extend_from_slice(&(payload.len() as u32 + 1).to_be_bytes());
    out.push(t);
    out.extend_from_slice(payload);
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
        p.push(self.suite);
        p.extend_from_slice(&self.block_size.to_be_bytes());
        p.extend_from_slice(&self.target_rate.to_be_bytes());
        p.extend_from_slice(&self.min_rate.to_be_bytes());
        p.push(self.policy);
        p.extend_from_slice(&self.data_port.to_be_bytes());
        p.push(self.flags);
        p.extend_from_slice(&(self.path.len() as u16).to_be_bytes());
        p.extend_from_slice(self.path.as_bytes());
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

    /// Decodes a payload (after the type byte).
    pub fn decode(payload: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader(payload);
        let n = r.u8()? as usize;
        if n == 0 || n > 16 {
            return Err(ParseError::Invalid("version count"));
        }
        let versions = r.take(n)?.to_vec();
        let direction = match r.u8()? {
            1 => Direction::Upload,
            2 => Direction::Download,
            _ => return Err(ParseError::Invalid("direction")),
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
            return Err(ParseError::Invalid("path length"));
        }
        let path = std::str::from_utf8(r.take(len)?)
            .map_err(|_| ParseError::Invalid("path is not UTF-8"))?
            .to_owned();
        let public_key = r.take(32)?.try_into().expect("32");
        let signature = r.take(64)?.try_into().expect("64");
        if !r.0.is_empty() {
            return Err(ParseError::Invalid("trailing bytes in client hello"));
        }
        Ok(Self {
            versions,
            direction,
            suite,
            block_size,
            target_rate,
            min_rate,
            policy,
            data_port,
            flags,
            path,
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

/// One frame: its type, its payload and the bytes it took.
pub type Frame<'a> = (u8, &'a [u8], usize);

/// Splits one frame off the front of `buf`: `Ok(None)` if incomplete, else the type, the payload
/// and the bytes consumed.
pub fn split_frame(buf: &[u8]) -> Result<Option<Frame<'_>>, ParseError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buf[..4].try_into().expect("4")) as usize;
    if len == 0 {
        return Err(ParseError::Truncated);
    }
    if 4 + len > MAX_SETUP_FRAME {
        return Err(ParseError::Oversized);
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    Ok(Some((buf[4], &buf[5..4 + len], 4 + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> ClientHello {
        ClientHello {
            versions: vec![1],
            direction: Direction::Upload,
            suite: 1,
            block_size: 1413,
            target_rate: 1_000_000,
            min_rate: 0,
            policy: 2,
            data_port: 4000,
            flags: 1,
            path: "in/ü".into(),
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
