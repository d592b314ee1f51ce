//! Command-line definitions (clap derive). One variant per subcommand; each subcommand's
//! arguments and logic live in a module of their own.

use clap::{Parser, Subcommand};

/// Fast, encrypted file transfer over long, lossy networks.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Encrypt, decrypt, inspect and rewrap at-rest envelopes without a transfer.
    Crypt(crate::crypt::CryptArgs),
    /// Manage secrets in the root and local keystores (askmscli-compatible).
    Keys(crate::keys::KeysArgs),
    /// Run the transfer engine end to end over an emulated long, lossy path and summarise.
    Demo(crate::demo::DemoArgs),
    /// Create a client identity: an ed25519 key pair in OpenSSH format (PATH and PATH.pub).
    Keygen(crate::keygen::KeygenArgs),
    /// Run the transfer server: users from a configuration file (--config), or one user
    /// confined to a docroot with keys from authorized_keys.
    Serve(crate::transfer::serve::ServeArgs),
    /// Copy files to or from a server: `ferry cp -i KEY --host-key FP SOURCE... host:PATH`.
    #[command(
        override_usage = "ferry cp [OPTIONS] --identity <KEYFILE> <SOURCE>... <DEST>\n       \
                                ferry cp [OPTIONS] --identity <KEYFILE> --file-list <FILE> <DEST>"
    )]
    Cp(crate::transfer::cp::CpArgs),
    /// Check what stands between you and a fast transfer to a server: name, UDP port, host key,
    /// identity, MTU, socket buffers; each problem with its fix.
    Doctor(crate::transfer::doctor::DoctorArgs),
    /// Write the manual pages (ferry.1, ferry-cp.1, ...) into a directory.
    Man(crate::manual::ManArgs),
    /// Print a completion script for a shell (bash, zsh, fish, elvish, powershell).
    Completions(crate::manual::CompletionsArgs),
}
