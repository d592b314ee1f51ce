//! Every exit code of `ferry`, in one table: its number, what it means, and whether running the
//! same command again later may succeed without anyone changing anything (a dropped network is
//! retryable, a refused key is not). `README.md` shows the same table (a test keeps the two in
//! step), and `--json` error events carry both the code and the flag.

/// An exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// 1: the operation failed (the message says why).
    Failed,
    /// 2: the command line is wrong.
    Usage,
    /// 3: `crypt`: reading or writing a file failed.
    CryptIo,
    /// 4: `crypt`: the output exists or cannot be written.
    CryptOutput,
    /// 5: `crypt`: no usable passphrase.
    CryptNoPassphrase,
    /// 10: `crypt`: not an envelope, or an unknown version.
    CryptFormat,
    /// 11: `crypt`: wrong passphrase or keystore secret.
    CryptWrongKey,
    /// 12: `crypt`: the keystore secret's state forbids it.
    CryptKeyState,
    /// 13: `crypt`: the envelope is damaged or was tampered with.
    CryptIntegrity,
    /// 14: `crypt`: the envelope's KDF parameters are out of bounds.
    CryptKdfBounds,
    /// 20: `keys`: a keystore or its key file does not exist.
    KeysMissing,
    /// 21: `keys`: a keystore file has unsafe permissions, owner or type.
    KeysUnsafeFile,
    /// 22: `keys`: a keystore file is corrupted or was tampered with.
    KeysCorrupt,
    /// 23: `keys`: wrong key file or stash passphrase, or none given.
    KeysWrongKey,
    /// 24: `keys`: the secret's state, expiry or minimum version forbids it.
    KeysWrongState,
    /// 25: `keys`: no such secret or version.
    KeysNotFound,
    /// 26: `keys`: invalid category, user, value or argument.
    KeysInvalid,
    /// 27: `keys`: I/O or database error (the database stayed busy, say).
    KeysIo,
    /// 28: `keys migrate`: the configuration cannot be read, parsed or rewritten.
    KeysConfig,
    /// 30: cannot connect (no answer: host down or unreachable, UDP dropped), or the server
    /// cannot listen.
    Connect,
    /// 31: unknown or mismatched server host key.
    HostKey,
    /// 32: the server refused the client key.
    KeyRefused,
    /// 33: the transfer failed on the way (the connection was lost, the server shut down).
    TransferFailed,
    /// 34: a local file or directory problem.
    Local,
    /// 35: the server refused the path.
    PathRefused,
    /// 36: an identity, authorized-keys or state-directory problem.
    Identity,
    /// 37: session set-up failed (protocol, version, parameters, a limit of the server).
    Setup,
    /// 38: nothing listens on the server's UDP port (the host said so).
    PortClosed,
    /// 39: some files failed (each is named with its reason); the others were transferred.
    FilesFailed,
    /// 40: the server is at a session limit.
    Busy,
    /// 41: `serve`: the configuration file cannot be used.
    ServeConfig,
    /// 130: interrupted (SIGINT or SIGTERM).
    Interrupted,
}

impl Exit {
    /// Every code, in numeric order.
    #[cfg(test)]
    pub(crate) const ALL: [Exit; 32] = [
        Exit::Failed,
        Exit::Usage,
        Exit::CryptIo,
        Exit::CryptOutput,
        Exit::CryptNoPassphrase,
        Exit::CryptFormat,
        Exit::CryptWrongKey,
        Exit::CryptKeyState,
        Exit::CryptIntegrity,
        Exit::CryptKdfBounds,
        Exit::KeysMissing,
        Exit::KeysUnsafeFile,
        Exit::KeysCorrupt,
        Exit::KeysWrongKey,
        Exit::KeysWrongState,
        Exit::KeysNotFound,
        Exit::KeysInvalid,
        Exit::KeysIo,
        Exit::KeysConfig,
        Exit::Connect,
        Exit::HostKey,
        Exit::KeyRefused,
        Exit::TransferFailed,
        Exit::Local,
        Exit::PathRefused,
        Exit::Identity,
        Exit::Setup,
        Exit::PortClosed,
        Exit::FilesFailed,
        Exit::Busy,
        Exit::ServeConfig,
        Exit::Interrupted,
    ];

    /// The number, its retryable flag and its meaning.
    fn row(self) -> (u8, bool, &'static str) {
        use Exit::*;
        match self {
            Failed => (1, false, "the operation failed (the message says why)"),
            Usage => (2, false, "usage error"),
            CryptIo => (3, false, "`crypt`: reading or writing a file failed"),
            CryptOutput => (4, false, "`crypt`: the output exists or cannot be written"),
            CryptNoPassphrase => (5, false, "`crypt`, `cp --file-crypt`: no usable passphrase"),
            CryptFormat => (
                10,
                false,
                "`crypt`, `cp --file-crypt decrypt`: not an envelope, or an unknown version",
            ),
            CryptWrongKey => (
                11,
                false,
                "`crypt`, `cp --file-crypt decrypt`: wrong passphrase or keystore secret",
            ),
            CryptKeyState => (12, false, "`crypt`: the keystore secret's state forbids it"),
            CryptIntegrity => (
                13,
                false,
                "`crypt`, `cp --file-crypt decrypt`: the envelope is damaged or was tampered with",
            ),
            CryptKdfBounds => (14, false, "`crypt`: KDF parameters out of bounds"),
            KeysMissing => (20, false, "`keys`: a keystore or its key file does not exist"),
            KeysUnsafeFile => (21, false, "`keys`: unsafe permissions, owner or file type"),
            KeysCorrupt => (22, false, "`keys`: a keystore file is corrupted or was tampered with"),
            KeysWrongKey => (23, false, "`keys`: wrong key file or stash passphrase"),
            KeysWrongState => (24, false, "`keys`: the secret's state forbids it"),
            KeysNotFound => (25, false, "`keys`: no such secret or version"),
            KeysInvalid => (26, false, "`keys`: invalid category, user, value or argument"),
            KeysIo => (27, true, "`keys`: I/O or database error (the database stayed busy)"),
            KeysConfig => (28, false, "`keys migrate`: the configuration cannot be used"),
            Connect => (30, true, "cannot connect: no answer, or the server cannot listen"),
            HostKey => (31, false, "unknown or mismatched server host key"),
            KeyRefused => (32, false, "the server refused the client key"),
            TransferFailed => (33, true, "the transfer failed on the way (connection lost)"),
            Local => (34, false, "a local file or directory problem"),
            PathRefused => (35, false, "the server refused the path"),
            Identity => (36, false, "an identity, authorized-keys or state-directory problem"),
            Setup => (37, false, "session set-up failed (protocol, version, parameters, limit)"),
            PortClosed => (38, true, "nothing listens on the server's UDP port"),
            FilesFailed => (39, false, "some files failed; the others were transferred"),
            Busy => (
                40,
                true,
                "the server is at a session limit, or refused the connection (its limit of \
                 connections in set-up, or this address is locked out after failed \
                 authentications); retry later",
            ),
            ServeConfig => (41, false, "`serve`: the configuration file cannot be used"),
            Interrupted => (130, false, "interrupted (SIGINT or SIGTERM); partial files removed"),
        }
    }

    /// The process exit code.
    pub(crate) fn code(self) -> u8 {
        self.row().0
    }

    /// Whether running the same command again later may succeed.
    pub(crate) fn retryable(self) -> bool {
        self.row().1
    }

    /// What it means (the README table's text).
    #[cfg(test)]
    pub(crate) fn meaning(self) -> &'static str {
        self.row().2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_in_order() {
        let codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert!(codes.windows(2).all(|w| w[0] < w[1]), "{codes:?}");
    }

    /// The README's table is this table.
    #[test]
    fn the_readme_lists_every_code() {
        let readme = include_str!("../../README.md");
        for e in Exit::ALL {
            let row = format!(
                "| `{}` | {} | {} |",
                e.code(),
                if e.retryable() { "yes" } else { "no" },
                e.meaning()
            );
            assert!(readme.contains(&row), "README.md lacks the row {row}");
        }
    }
}
