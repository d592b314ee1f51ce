//! `ferry keygen`: create a client identity (ed25519, OpenSSH format).

use std::path::PathBuf;

use crate::error::CliError;
use crate::exit::Exit;
use ferry_net::identity::{Identity, IdentityError, pub_path};

/// Arguments of `ferry keygen`.
#[derive(Debug, clap::Args)]
pub(crate) struct KeygenArgs {
    /// Where to write the private key (PATH, mode 0600) and the public key (PATH.pub).
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    file: PathBuf,
    /// Comment stored in the key (e.g. user@host).
    #[arg(short = 'C', long = "comment", default_value = "ferry")]
    comment: String,
}

pub(crate) fn run(args: KeygenArgs) -> Result<(), CliError> {
    let id = Identity::generate(&args.comment);
    id.write(&args.file).map_err(|e| match e {
        IdentityError::Exists(p) => CliError::new(
            Exit::Identity,
            format!("{} already exists; not overwriting it", p.display()),
        )
        .hint("choose another path with -f, or remove the old key pair first"),
        e => CliError::new(Exit::Identity, format!("cannot write the key: {e}"))
            .hint("check that the directory exists and is writable"),
    })?;
    println!(
        "ferry: wrote private key {} and public key {}",
        args.file.display(),
        pub_path(&args.file).display()
    );
    println!("ferry: fingerprint {}", id.fingerprint());
    println!("ferry: authorize it on a server by adding this line to its authorized keys file:");
    println!("{}", id.public_line());
    Ok(())
}
