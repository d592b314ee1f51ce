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

    /// How files are kept at rest, for logs and the audit trail: `plain`, or `ssear` when
    /// they are encrypted with the user's keystore secret ([`Sealed`](super::sealed::Sealed)).
    fn at_rest(&self) -> &'static str {
        "plain"
    }
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
                // The receiver applies it only when asked (`-p`); a part also names its file's
                // version by it, so that parts of two versions never assemble into one file.
                mtime_ns: f.mtime_ns,
                mode: f.mode,
                path: f.manifest.clone(),
                part: f.part,
            })
            .collect();
        Ok(Outgoing { entries, source: Box::new(FileSource::new(files, limits)) })
    }
}

impl Outgoing {
    /// The content checksum of each entry at resume `level` (FILE_SUM; none below 2, none for a
    /// part, none for a file that cannot be read now: its blocks will say why), read through
    /// the source. Blocking: level 3 reads every file whole.
    pub fn sums(&mut self, level: u8) -> Vec<Option<crate::control::FileSum>> {
        let source = &mut self.source;
        self.entries
            .iter()
            .enumerate()
            .map(|(id, e)| {
                if level < 2 || e.part.is_some() {
                    return None;
                }
                let read = |at: u64, buf: &mut [u8]| source.read(id as u32, at, buf);
                crate::session::file_sum(level, e.size, read).ok().flatten()
            })
            .collect()
    }
}

/// File names a Windows client could not store: on a storage that refuses them
/// ([`Portable`]), each such file fails alone, named with this reason.
pub fn portable_name(path: &str) -> Result<(), String> {
    for c in path.split('/') {
        if let Some(bad) = c.chars().find(|ch| "<>:\"\\|?*".contains(*ch) || ch.is_control()) {
            return Err(format!("{c:?} holds {bad:?}, which Windows cannot store in a name"));
        }
        if c.ends_with('.') || c.ends_with(' ') {
            return Err(format!("{c:?} ends with a dot or a space, which Windows drops"));
        }
        let stem = c.split('.').next().unwrap_or("").trim_end().to_ascii_uppercase();
        let reserved = matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
            || (stem.len() == 4
                && (stem.starts_with("COM") || stem.starts_with("LPT"))
                && stem.as_bytes()[3].is_ascii_digit()
                && stem.as_bytes()[3] != b'0');
        if reserved {
            return Err(format!("{c:?} is a device name on Windows"));
        }
    }
    Ok(())
}

/// A storage that accepts only names a Windows client can store ([`portable_name`]): a file
/// with another name fails alone, and a destination with one is refused.
#[derive(Debug)]
pub struct Portable<S>(pub S);

impl<S: Storage> Storage for Portable<S> {
    fn sink(
        &self,
        root: Arc<Docroot>,
        dest: Destination,
        limits: SinkLimits,
    ) -> io::Result<Box<dyn BlockSink + Send>> {
        let (Destination::Dir(p) | Destination::File(p)) = &dest;
        let shown: String = p.components().collect::<Vec<_>>().join("/");
        portable_name(&shown).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Box::new(PortableSink(self.0.sink(root, dest, limits)?)))
    }

    fn source(&self, files: Vec<SourceFile>, limits: SourceLimits) -> io::Result<Outgoing> {
        self.0.source(files, limits)
    }

    fn at_rest(&self) -> &'static str {
        self.0.at_rest()
    }
}

/// Refuses files whose names are not portable, passes everything else on.
struct PortableSink(Box<dyn BlockSink + Send>);

impl BlockSink for PortableSink {
    fn open(&mut self, file: &FileEntry) -> io::Result<()> {
        // The inner sink sees every file (it counts them; nothing is created before a block
        // arrives), and discards a refused one when the session finishes it as failed.
        self.0.open(file)?;
        portable_name(&file.path).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }
    fn write(
        &mut self,
        file: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), crate::session::SinkError> {
        self.0.write(file, offset, data)
    }
    fn free_blocks(&self) -> u64 {
        self.0.free_blocks()
    }
    fn finish(&mut self, file: u32, verified: bool) -> io::Result<()> {
        self.0.finish(file, verified)
    }
    fn name(&self, file: u32) -> Option<String> {
        self.0.name(file)
    }
    fn resumed(&mut self, file: u32) -> Vec<(u64, [u8; 32])> {
        self.0.resumed(file)
    }
    fn chunk_received(&mut self, file: u32, offset: u64, cv: &[u8; 32]) {
        self.0.chunk_received(file, offset, cv)
    }
    fn held_head(&mut self, file: u32) -> Vec<u8> {
        self.0.held_head(file)
    }
    fn expect_sum(&mut self, file: u32, sum: Option<crate::control::FileSum>) {
        self.0.expect_sum(file, sum)
    }
}

#[cfg(test)]
mod tests {
    use super::portable_name;

    #[test]
    fn portable_names() {
        for ok in ["a.txt", "dir/sub/ünï.bin", "COM0", "console.log", "LPT", "a b.c"] {
            assert_eq!(portable_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "a:b",
            "dir/x?y",
            "q\"",
            "pipe|",
            "star*",
            "lt<",
            "name.",
            "name ",
            "CON",
            "nul.txt",
            "com1",
            "Lpt9.log",
            "aux .x",
            "back\\slash",
        ] {
            assert!(portable_name(bad).is_err(), "{bad}");
        }
    }
}
