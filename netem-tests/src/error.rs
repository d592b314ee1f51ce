//! Errors of the WAN test bench.

/// What went wrong while building or driving a test bed.
#[derive(Debug, thiserror::Error)]
pub enum NetemError {
    /// A helper command (ip, tc, iperf3, ...) exited with a failure status.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A helper command could not be started at all (usually: not installed).
    #[error("could not run `{command}`: {source} (is it installed? see scripts/install-deps.sh)")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A helper's output could not be understood.
    #[error("could not parse {what} from: {text}")]
    Parse {
        /// What was being read.
        what: String,
        /// The text that failed to parse.
        text: String,
    },
    /// The link emulator failed or stopped answering.
    #[error("link emulator: {0}")]
    Emulator(String),
    /// The requested back-end is not available on this kernel.
    #[error("back-end unavailable: {0}")]
    Unavailable(String),
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// The operation.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
