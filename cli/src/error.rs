//! The CLI's error type: every failure says what failed, why, and what to do next, and maps to
//! a documented exit code.

use std::process::ExitCode;

use crate::exit::Exit;

/// A failure the `ferry` command reports to the user.
#[derive(Debug)]
pub(crate) struct CliError {
    /// What failed and why.
    pub(crate) message: String,
    /// What the user can do about it.
    pub(crate) hint: Option<String>,
    /// The exit code (`crate::exit`: one table, README.md shows it).
    pub(crate) code: Exit,
}

impl CliError {
    pub(crate) fn new(code: Exit, message: impl Into<String>) -> Self {
        Self { message: message.into(), hint: None, code }
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Prints the error and its hint on stderr. Messages may quote what a peer sent (a
    /// server's refusal reason, a file name), so control characters are escaped: a hostile peer
    /// cannot write terminal escape sequences or fake lines to the user's terminal.
    pub(crate) fn report(&self) -> ExitCode {
        use crate::transfer::log::sanitize;
        eprintln!("ferry: error: {}", sanitize(&self.message));
        if let Some(hint) = &self.hint {
            eprintln!("ferry: hint: {}", sanitize(hint));
        }
        ExitCode::from(self.code.code())
    }
}
