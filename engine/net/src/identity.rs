//! Ed25519 identities in OpenSSH format: client keys (`ferry keygen`, `-i KEY`), the server's
//! host key (generated on first start in its state directory), fingerprints and
//! `authorized_keys` files.
//!
//! Keys are stored as unencrypted `openssh-key-v1` files, mode 0600, exactly as `ssh-keygen -t
//! ed25519 -N ''` writes them, so existing OpenSSH keys work and Ferry keys work with OpenSSH
//! tools. Signing and verification use ring's Ed25519; the seed lives in `Zeroizing` memory.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::rand::SecureRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use ssh_key::private::{Ed25519Keypair, Ed25519PrivateKey, KeypairData};
use ssh_key::public::{Ed25519PublicKey, KeyData};
use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey};
use zeroize::Zeroizing;

/// Why an identity could not be created, read or checked.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing a key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not an OpenSSH private key Ferry can use.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file already exists and would be overwritten.
    #[error("{0} already exists")]
    Exists(PathBuf),
    /// The server's state directory is not safe to keep its host key in.
    #[error("the state directory {path} is unsafe: {reason}")]
    UnsafeStateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The private key file is readable by other users.
    #[error("{path} is accessible by other users (mode {mode:o})")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// An ed25519 key pair. Debug prints only the public fingerprint.
pub struct Identity {
    seed: Zeroizing<[u8; 32]>,
    public: [u8; 32],
    comment: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({}, seed: [redacted])", fingerprint(&self.public))
    }
}

impl Identity {
    /// A fresh random identity.
    pub fn generate(comment: &str) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        ring::rand::SystemRandom::new().fill(seed.as_mut()).expect("system random generator");
        Self::from_seed(seed, comment)
    }

    fn from_seed(seed: Zeroizing<[u8; 32]>, comment: &str) -> Self {
        let kp = Ed25519KeyPair::from_seed_unchecked(seed.as_ref()).expect("32-byte seed");
        let public: [u8; 32] = kp.public_key().as_ref().try_into().expect("32-byte public key");
        Self { seed, public, comment: comment.to_owned() }
    }

    /// The raw 32-byte public key.
    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }

    /// The 32-byte private seed (tests check it never shows in Debug output).
    #[cfg(test)]
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// `SHA256:...` as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public)
    }

    /// Signs `msg` (Ed25519, RFC 8032).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let kp = Ed25519KeyPair::from_seed_and_public_key(self.seed.as_ref(), &self.public)
            .expect("consistent key pair");
        kp.sign(msg).as_ref().try_into().expect("64-byte signature")
    }

    /// The private key in PKCS#8 v1 DER (RFC 8410), for the TLS certificate.
    pub fn pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        const PREFIX: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let mut der = Zeroizing::new(Vec::with_capacity(48));
        der.extend_from_slice(&PREFIX);
        der.extend_from_slice(self.seed.as_ref());
        der
    }

    /// The public key line (`ssh-ed25519 AAAA... comment`).
    pub fn public_line(&self) -> String {
        let pk = PublicKey::new(KeyData::Ed25519(Ed25519PublicKey(self.public)), &self.comment);
        pk.to_openssh().expect("ed25519 public key encodes")
    }

    /// Writes the private key to `path` (0600, created exclusively) and the public key to
    /// `path.pub`. Refuses to overwrite either.
    pub fn write(&self, path: &Path) -> Result<(), IdentityError> {
        let pub_path = pub_path(path);
        for p in [path, pub_path.as_path()] {
            if p.symlink_metadata().is_ok() {
                return Err(IdentityError::Exists(p.to_owned()));
            }
        }
        let keypair = Ed25519Keypair {
            public: Ed25519PublicKey(self.public),
            private: Ed25519PrivateKey::from_bytes(&self.seed),
        };
        let key = PrivateKey::new(KeypairData::Ed25519(keypair), &self.comment)
            .map_err(|e| format_err(path, e.to_string()))?;
        let text = key.to_openssh(LineEnding::LF).map_err(|e| format_err(path, e.to_string()))?;
        write_new(path, text.as_bytes(), 0o600)?;
        let mut line = self.public_line();
        line.push('\n');
        if let Err(e) = write_new(&pub_path, line.as_bytes(), 0o644) {
            let _ = fs::remove_file(path);
            return Err(e);
        }
        Ok(())
    }

    /// Reads an unencrypted OpenSSH ed25519 private key. Refuses keys readable by others.
    pub fn read(path: &Path) -> Result<Self, IdentityError> {
        let io = |source| IdentityError::Io { path: path.to_owned(), source };
        let meta = fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::Permissions { path: path.to_owned(), mode });
        }
        let text = Zeroizing::new(fs::read(path).map_err(io)?);
        let key = PrivateKey::from_openssh(text.as_slice()).map_err(|e| {
            format_err(path, format!("not an OpenSSH private key ({e}); Ferry reads openssh-key-v1 files as written by `ssh-keygen -t ed25519` or `ferry keygen`"))
        })?;
        if key.is_encrypted() {
            return Err(format_err(
                path,
                "the key is passphrase-protected, which Ferry does not read yet".into(),
            ));
        }
        let Some(kp) = key.key_data().ed25519() else {
            return Err(format_err(
                path,
                format!("the key is {}, Ferry needs an ed25519 key", key.algorithm()),
            ));
        };
        let seed = Zeroizing::new(kp.private.to_bytes());
        let id = Self::from_seed(seed, key.comment());
        if id.public != kp.public.0 {
            return Err(format_err(path, "the public half does not match the private key".into()));
        }
        Ok(id)
    }

    /// The server's host key in `state_dir` (`host_ed25519_key`), created on first use. The
    /// directory is created with mode 0700 if missing, and must belong to this user and be
    /// writable by no one else (another user could otherwise plant or swap the host key); the
    /// key must be a regular file of this user, not a symbolic link.
    pub fn load_or_create_host(state_dir: &Path) -> Result<Self, IdentityError> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        let io = |source| IdentityError::Io { path: state_dir.to_owned(), source };
        if fs::symlink_metadata(state_dir).is_err() {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(state_dir).map_err(io)?;
        }
        let meta = fs::symlink_metadata(state_dir).map_err(io)?;
        let euid = rustix::process::geteuid().as_raw();
        let unsafe_dir =
            |reason: String| IdentityError::UnsafeStateDir { path: state_dir.to_owned(), reason };
        if !meta.is_dir() {
            return Err(unsafe_dir(
                "it is not a directory (a symbolic link is not followed)".into(),
            ));
        }
        if meta.uid() != euid {
            return Err(unsafe_dir(format!(
                "it belongs to uid {}, not to this server's uid {euid}",
                meta.uid()
            )));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(unsafe_dir(format!(
                "it is writable by group or others (mode {:o})",
                meta.mode() & 0o7777
            )));
        }
        let path = state_dir.join("host_ed25519_key");
        match fs::symlink_metadata(&path) {
            Ok(m) if !m.is_file() => Err(IdentityError::Format {
                path: path.clone(),
                reason: "not a regular file (a symbolic link is not followed)".into(),
            }),
            Ok(m) if m.uid() != euid => Err(IdentityError::Format {
                path: path.clone(),
                reason: format!("it belongs to uid {}, not to this server's uid {euid}", m.uid()),
            }),
            Ok(_) => Self::read(&path),
            Err(_) => {
                let id = Self::generate("ferry host key");
                id.write(&path)?;
                Ok(id)
            }
        }
    }
}

/// `SHA256:<base64 without padding of SHA-256 of the SSH public key blob>` (as OpenSSH).
pub fn fingerprint(public: &[u8; 32]) -> String {
    let pk = PublicKey::new(KeyData::Ed25519(Ed25519PublicKey(*public)), "");
    pk.fingerprint(HashAlg::Sha256).to_string()
}

/// Verifies an Ed25519 signature.
pub fn verify(public: &[u8; 32], msg: &[u8], sig: &[u8]) -> bool {
    ferry_engine::crypto::ed25519_verify(public, msg, sig)
}

/// `PATH.pub`.
pub fn pub_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

fn format_err(path: &Path, reason: String) -> IdentityError {
    IdentityError::Format { path: path.to_owned(), reason }
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io { path: path.to_owned(), source };
    let mut f =
        fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(io)?;
    // The umask may have removed bits but never adds any; set the exact mode anyway.
    f.set_permissions(fs::Permissions::from_mode(mode)).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_round_trip_and_sign() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id_ferry");
        let id = Identity::generate("test");
        id.write(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let back = Identity::read(&path).unwrap();
        assert_eq!(back.public(), id.public());
        let sig = back.sign(b"message");
        assert!(verify(id.public(), b"message", &sig));
        assert!(!verify(id.public(), b"messagf", &sig));
        // The .pub line parses as an authorized key.
        let keys = crate::authorized_keys::AuthorizedKeys::read(&pub_path(&path)).unwrap();
        assert_eq!(keys.keys.iter().map(|k| k.key).collect::<Vec<_>>(), vec![*id.public()]);
        // No overwrite.
        assert!(matches!(id.write(&path), Err(IdentityError::Exists(_))));
        assert!(!format!("{id:?}").contains(&hex::encode(id.seed())));
    }

    #[test]
    fn reads_an_openssh_key() {
        // Written by `ssh-keygen -t ed25519 -N '' -C test` (OpenSSH 9.x), test data only.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_new(&path, OPENSSH_KEY.as_bytes(), 0o600).unwrap();
        let id = Identity::read(&path).unwrap();
        assert_eq!(id.fingerprint(), OPENSSH_FP);
    }

    #[test]
    fn refuses_world_readable_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_new(&path, OPENSSH_KEY.as_bytes(), 0o644).unwrap();
        assert!(matches!(Identity::read(&path), Err(IdentityError::Permissions { .. })));
    }

    const OPENSSH_KEY: &str = include_str!("../tests/data/ed25519_openssh");
    const OPENSSH_FP: &str = include_str!("../tests/data/ed25519_openssh.fp").trim_ascii();
}
