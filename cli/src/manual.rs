//! `ferry man` and `ferry completions`: the manual pages and shell completions, generated from
//! the same clap definitions the command parses with, so they cannot drift from it.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::error::CliError;
use crate::exit::Exit;

/// Arguments of `ferry man`.
#[derive(Debug, clap::Args)]
pub(crate) struct ManArgs {
    /// Directory to write the pages into (created if missing): `ferry.1`, and one
    /// `ferry-SUBCOMMAND.1` per subcommand (`ferry-cp.1`, ...). Pages of an earlier version in it
    /// are replaced; nothing else is touched. To install them system-wide:
    /// `ferry man /usr/local/share/man/man1` (then `man ferry-cp`).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
}

/// Arguments of `ferry completions`.
#[derive(Debug, clap::Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for. Install, e.g. for bash:
    /// `ferry completions bash > /usr/share/bash-completion/completions/ferry`; zsh: into a
    /// directory of `$fpath` as `_ferry`; fish: `~/.config/fish/completions/ferry.fish`.
    #[arg(value_name = "SHELL")]
    shell: clap_complete::Shell,
}

/// The top-level command as the pages and completions describe it.
fn command() -> clap::Command {
    crate::cli::Cli::command()
}

pub(crate) fn man(args: ManArgs) -> Result<(), CliError> {
    let written = write_pages(&args.dir).map_err(|e| {
        CliError::new(
            Exit::Failed,
            format!("cannot write the manual pages into {}: {e}", args.dir.display()),
        )
        .hint("give a directory you can write to (for a system-wide install, run as root)")
    })?;
    for page in &written {
        println!("ferry: wrote {}", page.display());
    }
    Ok(())
}

/// Writes `ferry.1` and one page per subcommand (recursively) into `dir`, each through a
/// temporary file renamed into place, so a reader never sees half a page. Returns the paths.
fn write_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = command();
    cmd.build();
    let mut written = Vec::new();
    page(dir, &cmd, "ferry", &mut written)?;
    Ok(written)
}

fn page(
    dir: &Path,
    cmd: &clap::Command,
    name: &str,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    // The page of a subcommand is titled with its full name (`ferry-cp`), as git's are.
    let titled = cmd.clone().name(name.to_owned()).bin_name(name.replace('-', " "));
    let mut roff = Vec::new();
    clap_mangen::Man::new(titled).render(&mut roff)?;
    let path = dir.join(format!("{name}.1"));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(&roff)?;
    tmp.as_file().sync_all()?;
    tmp.persist(&path).map_err(|e| e.error)?;
    written.push(path);
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        page(dir, sub, &format!("{name}-{}", sub.get_name()), written)?;
    }
    Ok(())
}

pub(crate) fn completions(args: CompletionsArgs) -> Result<(), CliError> {
    let mut cmd = command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "ferry", &mut out);
    std::io::stdout().write_all(&out).map_err(|e| {
        CliError::new(Exit::Failed, format!("cannot write the completion script: {e}"))
    })?;
    Ok(())
}
