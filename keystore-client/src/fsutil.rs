//! File-system helpers: ssh-style permission checks, private directories, crash-safe writes.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::KeystoreError;

/// The effective uid of this process.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// One account of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Its home directory.
    pub home: std::path::PathBuf,
}

/// The accounts of `/etc/passwd` (none when it cannot be read; malformed lines skipped).
pub fn passwd() -> Vec<PasswdEntry> {
    let text = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_owned(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: std::path::PathBuf::from(f[5]),
            })
        })
        .collect()
}

/// Checks that `path` is a regular file (not a symlink), not accessible by group or others,
/// and owned by this process's effective uid (root may use files owned by anyone: it opens
/// users' local keystores on their behalf). Returns `Ok(false)` when the file does not exist.
pub fn check_private_file(path: &Path) -> Result<bool, KeystoreError> {
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(KeystoreError::io(path, e)),
    };
    if !md.file_type().is_file() {
        return Err(KeystoreError::NotRegularFile { path: path.to_owned() });
    }
    let mode = md.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeystoreError::UnsafePermissions { path: path.to_owned(), mode });
    }
    let uid = euid();
    if uid != 0 && md.uid() != uid {
        return Err(KeystoreError::WrongOwner { path: path.to_owned(), owner: md.uid(), uid });
    }
    Ok(true)
}

/// Checks the directory holding keystore files: a directory (not a symbolic link to one),
/// others must not be able to replace the files in it (group/other-writable without the sticky
/// bit is refused), and it must belong to this user or root. A missing directory passes (it will
/// be created with mode 0700).
pub fn check_private_dir(dir: &Path) -> Result<(), KeystoreError> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let md = match fs::symlink_metadata(dir) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(KeystoreError::io(dir, e)),
    };
    if !md.is_dir() {
        // A symbolic link is not followed: whoever can change it could move the keystore.
        return Err(KeystoreError::NotRegularFile { path: dir.to_owned() });
    }
    let mode = md.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(KeystoreError::UnsafeDirectory { path: dir.to_owned(), mode });
    }
    let uid = euid();
    if uid != 0 && md.uid() != uid && md.uid() != 0 {
        return Err(KeystoreError::WrongOwner { path: dir.to_owned(), owner: md.uid(), uid });
    }
    Ok(())
}

/// Checks the directories above a keystore the way sshd's `StrictModes` checks `~/.ssh`: from
/// `dir` (resolved) up to the user's `home` (inclusive) or the file system root, every
/// directory must belong to root or to this process's effective uid, and must not be writable by
/// group or others unless it is sticky (as `/tmp` is: then nobody else can rename or remove an
/// entry that belongs to root or this user). Otherwise another user could swap a directory on
/// the way and redirect the keystore's files. A missing `dir` is checked from its nearest
/// existing ancestor.
pub fn check_dir_chain(dir: &Path, home: Option<&Path>) -> Result<(), KeystoreError> {
    let uid = euid();
    let mut start = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let canonical = loop {
        match start.canonicalize() {
            Ok(c) => break c,
            Err(_) => match start.parent() {
                Some(p) if !p.as_os_str().is_empty() => start = p,
                _ => break std::env::current_dir().map_err(|e| KeystoreError::io(dir, e))?,
            },
        }
    };
    let home = home.and_then(|h| h.canonicalize().ok());
    for d in canonical.ancestors() {
        let md = fs::symlink_metadata(d).map_err(|e| KeystoreError::io(d, e))?;
        let mode = md.permissions().mode() & 0o7777;
        if md.uid() != 0 && md.uid() != uid {
            return Err(KeystoreError::UnsafeParent {
                path: d.to_owned(),
                reason: format!("it belongs to uid {}, neither root nor uid {uid}", md.uid()),
            });
        }
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(KeystoreError::UnsafeParent {
                path: d.to_owned(),
                reason: format!("it is writable by group or others (mode {mode:o}) and not sticky"),
            });
        }
        if home.as_deref() == Some(d) {
            break;
        }
    }
    Ok(())
}

/// Opens `path` for reading without following a symbolic link or blocking on a FIFO, and checks
/// through the open descriptor what [`check_private_file`] checks by name: a regular file, not
/// accessible by group or others, owned by this user (root: by anyone). Returns its bytes.
pub fn read_private(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, KeystoreError> {
    use std::io::Read;
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags::NOFOLLOW | libc_flags::NONBLOCK)
        .open(path)
        .map_err(|e| not_followed(path, e))?;
    check_open_file(&f, path)?;
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    f.read_to_end(&mut bytes).map_err(|e| KeystoreError::io(path, e))?;
    Ok(bytes)
}

/// The checks of [`check_private_file`], on an open descriptor.
pub(crate) fn check_open_file(f: &File, path: &Path) -> Result<(), KeystoreError> {
    let md = f.metadata().map_err(|e| KeystoreError::io(path, e))?;
    if !md.file_type().is_file() {
        return Err(KeystoreError::NotRegularFile { path: path.to_owned() });
    }
    let mode = md.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeystoreError::UnsafePermissions { path: path.to_owned(), mode });
    }
    let uid = euid();
    if uid != 0 && md.uid() != uid {
        return Err(KeystoreError::WrongOwner { path: path.to_owned(), owner: md.uid(), uid });
    }
    Ok(())
}

/// A symbolic link where a file was expected is refused by name (`ELOOP` from `O_NOFOLLOW`).
pub(crate) fn not_followed(path: &Path, e: std::io::Error) -> KeystoreError {
    if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
        KeystoreError::NotRegularFile { path: path.to_owned() }
    } else {
        KeystoreError::io(path, e)
    }
}

/// `open(2)` flags used here (rustix's values, which are Linux's).
pub(crate) mod libc_flags {
    /// `O_NOFOLLOW`.
    pub const NOFOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
    /// `O_NONBLOCK`.
    pub const NONBLOCK: i32 = rustix::fs::OFlags::NONBLOCK.bits() as i32;
}

/// Creates `dir` (and missing parents) with mode 0700 when it does not exist.
pub fn ensure_dir(dir: &Path) -> Result<(), KeystoreError> {
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| KeystoreError::io(dir, e))
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn temp_name(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tag = hex::encode(crate::crypto::random_array::<6>());
    parent_of(path).join(format!(".{name}.tmp-{}-{tag}", std::process::id()))
}

/// Makes a rename or new entry in `path`'s directory durable (best effort).
pub(crate) fn fsync_parent(path: &Path) {
    fsync_dir(&parent_of(path));
}

fn fsync_dir(dir: &Path) {
    // Best effort: makes the new directory entry durable.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes a new file at `path` with `mode`, atomically and without ever replacing an existing
/// file: the bytes go to a temporary name in the same directory, are fsynced, and are then
/// hard-linked to `path` (which fails if `path` exists). Returns [`KeystoreError::AlreadyExists`]
/// when `path` exists.
pub fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeystoreError> {
    let tmp = temp_name(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| KeystoreError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| KeystoreError::io(&tmp, e))?;
        f.sync_all().map_err(|e| KeystoreError::io(&tmp, e))?;
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(KeystoreError::AlreadyExists { path: path.to_owned() })
            }
            Err(e) => Err(KeystoreError::io(path, e)),
        }
    })();
    let _ = fs::remove_file(&tmp);
    if result.is_ok() {
        fsync_dir(&parent_of(path));
    }
    result
}

/// Replaces `path` with `bytes` atomically (temporary name, fsync, rename), keeping `mode`.
pub fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeystoreError> {
    replace_file_owned(path, bytes, mode, None)
}

/// [`replace_file`], giving the new file `owner` (uid, gid) through its descriptor before it
/// takes the final name.
pub fn replace_file_owned(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), KeystoreError> {
    let tmp = temp_name(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| KeystoreError::io(&tmp, e))?;
        // The umask may have narrowed the mode; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| KeystoreError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| KeystoreError::io(&tmp, e))?;
        f.sync_all().map_err(|e| KeystoreError::io(&tmp, e))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                .map_err(|e| KeystoreError::io(&tmp, e))?;
        }
        fs::rename(&tmp, path).map_err(|e| KeystoreError::io(path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    } else {
        fsync_dir(&parent_of(path));
    }
    result
}

/// Creates an empty file with mode 0600 if it does not exist (never truncates, never follows a
/// symbolic link: `O_EXCL`). An existing entry must pass [`check_private_file`].
pub fn create_empty_private(path: &Path) -> Result<(), KeystoreError> {
    match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(f) => {
            f.sync_all().map_err(|e| KeystoreError::io(path, e))?;
            fsync_dir(&parent_of(path));
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            check_private_file(path).map(|_| ())
        }
        Err(e) => Err(KeystoreError::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_new_never_overwrites() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_new_file(&p, b"one", 0o600).unwrap();
        let e = write_new_file(&p, b"two", 0o600).unwrap_err();
        assert!(matches!(e, KeystoreError::AlreadyExists { .. }));
        assert_eq!(fs::read(&p).unwrap(), b"one");
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn permission_checks() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        assert!(!check_private_file(&p).unwrap());
        write_new_file(&p, b"x", 0o600).unwrap();
        assert!(check_private_file(&p).unwrap());
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            check_private_file(&p),
            Err(KeystoreError::UnsafePermissions { mode: 0o640, .. })
        ));
        let sub = d.path().join("sub");
        ensure_dir(&sub).unwrap();
        check_private_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            check_private_dir(&sub),
            Err(KeystoreError::UnsafeDirectory { mode: 0o777, .. })
        ));
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o1777)).unwrap();
        check_private_dir(&sub).unwrap();
        let l = d.path().join("link");
        std::os::unix::fs::symlink(&p, &l).unwrap();
        assert!(matches!(check_private_file(&l), Err(KeystoreError::NotRegularFile { .. })));
    }
}
