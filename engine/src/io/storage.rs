//! The storage seam: how a session's files are read and written.
//!
//! A [`Storage`] makes the [`BlockSink`] an upload writes to and the [`BlockSource`] a download
//! reads from. The session core only sees those two traits, so storage that seals segments as
//! they arrive (server-side encryption at rest), keeps a resume journal, or opens envelopes on
//! the fly plugs in here without a special case in the core. [`PlainFiles`] stores files as
//! they are, beneath a [`Docroot`].

use std::fmt;
use std::io;
use std::sync::Arc;

use crate::control::FileEntry;
use crate::io::docroot::Docroot;
use crate::io::files::{Destination, FileSink, SinkLimits};
use crate::io::source::{FileSource, SourceFile, SourceLimits};
use crate::session::{BlockSink, BlockSource};

/// What a sender announces and where it reads the bytes it announces.
pub struct Outgoing {
    /// The manifest, in order: what the peer is told (sizes are the bytes on the wire).
    pub entries: Vec<FileEntry>,
    /// Where the bytes of `entries` are read.
    pub source: Box<dyn BlockSource + Send>,
}

impl fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outgoing").field("files", &self.entries.len()).finish_non_exhaustive()
    }
}

/// How a session's files are stored (see the module documentation).
pub trait Storage: Send + Sync + fmt::Debug {
    /// The sink for an upload into `dest` beneath `root`. The destination has been resolved
    /// (it is a directory, or a file name whose parent is one); nothing is created yet.
    fn sink(
        &self,
        root: Arc<Docroot>,
        dest: Destination,
        limits: SinkLimits,
    ) -> io::Result<Box<dyn BlockSink + Send>>;

    /// What a download of the listed `files` sends, and where it reads it.
    fn source(&self, files: Vec<SourceFile>, limits: SourceLimits) -> io::Result<Outgoing>;
}

/// Files stored as they are: partial files renamed into place once verified
/// ([`FileSink`]), read with `pread` ([`FileSource`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainFiles;

impl Storage for PlainFiles {
    fn sink(
        &self,
        root: Arc<Docroot>,
        dest: Destination,
        limits: SinkLimits,
    ) -> io::Result<Box<dyn BlockSink + Send>> {
        Ok(Box::new(FileSink::new(root, dest, limits)))
    }

    fn source(&self, files: Vec<SourceFile>, limits: SourceLimits) -> io::Result<Outgoing> {
        let entries = files
            .iter()
            .map(|f| FileEntry {
                id: 0,
                size: f.size,
                mtime_ns: 0,
                mode: f.mode,
                path: f.manifest.clone(),
            })
            .collect();
        Ok(Outgoing { entries, source: Box::new(FileSource::new(files, limits)) })
    }
}
