//! How a session's files map onto the global block index (`docs/PROTOCOL.md`, "Blocks and
//! files"): files are laid end to end in manifest order, each starting on a block boundary.

/// The block range of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    /// First global block of the file.
    pub first: u64,
    /// Number of blocks (`ceil(size / block_size)`, 0 for an empty file).
    pub blocks: u64,
    /// File size in bytes.
    pub size: u64,
}

impl Span {
    pub fn end(&self) -> u64 {
        self.first + self.blocks
    }
}

/// The files of a session in manifest order.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    block_size: u64,
    spans: Vec<Span>,
}

impl Layout {
    pub fn new(block_size: usize) -> Self {
        Self { block_size: block_size as u64, spans: Vec::new() }
    }

    /// Appends a file of `size` bytes; returns its span.
    pub fn push(&mut self, size: u64) -> Span {
        let span = Span { first: self.end(), blocks: size.div_ceil(self.block_size), size };
        self.spans.push(span);
        span
    }

    pub fn span(&self, file: u32) -> Span {
        self.spans[file as usize]
    }

    /// One past the last block of the last file.
    pub fn end(&self) -> u64 {
        self.spans.last().map_or(0, Span::end)
    }

    /// The file holding global block `block`, the byte offset of the block in that file and the
    /// block's length.
    pub fn locate(&self, block: u64) -> Option<(u32, u64, usize)> {
        let i = self.spans.partition_point(|s| s.end() <= block);
        let span = self.spans.get(i)?;
        if block < span.first {
            return None;
        }
        let offset = (block - span.first) * self.block_size;
        let len = (span.size - offset).min(self.block_size) as usize;
        Some((i as u32, offset, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_lie_end_to_end_and_empty_files_take_no_blocks() {
        let mut l = Layout::new(10);
        l.push(25); // blocks 0..3
        l.push(0); // none
        l.push(10); // block 3
        l.push(0);
        l.push(1); // block 4
        assert_eq!(l.end(), 5);
        assert_eq!(l.locate(0), Some((0, 0, 10)));
        assert_eq!(l.locate(2), Some((0, 20, 5)));
        assert_eq!(l.locate(3), Some((2, 0, 10)));
        assert_eq!(l.locate(4), Some((4, 0, 1)));
        assert_eq!(l.locate(5), None);
    }
}
