//! A `BufRead` wrapper that knows where the parser is.
//!
//! quick-xml reports byte offsets only. To say "line 812, column 7" without keeping the document,
//! this wrapper remembers the bytes consumed since the last *checkpoint* (the parser sets one
//! between top-level elements) together with the line and column of that checkpoint. The same
//! bytes are the raw fragment of a record that goes to quarantine. Memory is therefore bounded by
//! one top-level element, and that is capped: past `max_record_bytes` the read fails, so a hostile
//! document cannot make us hold it whole. A total cap on the document size is enforced here too.

use std::io::{self, BufRead, Read};

/// Line and column (both 1-based; the column counts characters, not bytes) and the byte offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub line: u64,
    pub column: u64,
    pub offset: u64,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Which cap a read exceeded; carried inside the `io::Error` so the parser can name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitExceeded {
    Record(u64),
    Document(u64),
}

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitExceeded::Record(n) => write!(f, "one element exceeds the limit of {n} bytes"),
            LimitExceeded::Document(n) => write!(f, "the document exceeds the limit of {n} bytes"),
        }
    }
}

impl std::error::Error for LimitExceeded {}

pub struct CountingReader<R> {
    inner: R,
    /// Bytes consumed since the checkpoint.
    recorded: Vec<u8>,
    /// Location of the first byte of `recorded`.
    mark: Location,
    consumed: u64,
    max_record_bytes: u64,
    max_document_bytes: Option<u64>,
}

impl<R: BufRead> CountingReader<R> {
    pub fn new(inner: R, max_record_bytes: u64, max_document_bytes: Option<u64>) -> Self {
        CountingReader {
            inner,
            recorded: Vec::new(),
            mark: Location {
                line: 1,
                column: 1,
                offset: 0,
            },
            consumed: 0,
            max_record_bytes,
            max_document_bytes,
        }
    }

    /// Forgets everything before `offset` (which must lie within what was consumed since the last
    /// checkpoint), moving the mark there.
    pub fn checkpoint(&mut self, offset: u64) {
        let loc = self.locate(offset);
        let cut = (loc.offset - self.mark.offset) as usize;
        self.recorded.drain(..cut);
        self.mark = loc;
    }

    /// Line and column of a byte offset at or after the checkpoint. Offsets before it resolve to
    /// the checkpoint itself; offsets past what was consumed resolve to the end.
    pub fn locate(&self, offset: u64) -> Location {
        let want = offset.clamp(
            self.mark.offset,
            self.mark.offset + self.recorded.len() as u64,
        );
        let slice = &self.recorded[..(want - self.mark.offset) as usize];
        let mut loc = self.mark;
        let mut last_line_start = None;
        for (i, b) in slice.iter().enumerate() {
            if *b == b'\n' {
                loc.line += 1;
                last_line_start = Some(i + 1);
            }
        }
        let tail = match last_line_start {
            Some(start) => {
                loc.column = 1;
                &slice[start..]
            }
            None => slice,
        };
        // Count characters, not bytes: a column in "måluppfyllnad" should match an editor's.
        loc.column += tail.iter().filter(|b| (**b & 0xC0) != 0x80).count() as u64;
        loc.offset = want;
        loc
    }

    /// The bytes between two offsets, both at or after the checkpoint.
    pub fn slice(&self, from: u64, to: u64) -> &[u8] {
        let len = self.recorded.len() as u64;
        let a = from.saturating_sub(self.mark.offset).min(len) as usize;
        let b = to.saturating_sub(self.mark.offset).min(len) as usize;
        &self.recorded[a..b.max(a)]
    }

    pub fn consumed(&self) -> u64 {
        self.consumed
    }
}

impl<R: BufRead> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for CountingReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.recorded.len() as u64 > self.max_record_bytes {
            return Err(io::Error::other(LimitExceeded::Record(
                self.max_record_bytes,
            )));
        }
        if let Some(max) = self.max_document_bytes {
            if self.consumed > max {
                return Err(io::Error::other(LimitExceeded::Document(max)));
            }
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        // The bytes being consumed are still in the inner buffer: `fill_buf` on a BufRead with
        // data buffered returns it without I/O. If it fails we only lose location precision.
        if let Ok(buf) = self.inner.fill_buf() {
            let n = amt.min(buf.len());
            self.recorded.extend_from_slice(&buf[..n]);
        }
        self.consumed += amt as u64;
        self.inner.consume(amt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consume_all<R: BufRead>(r: &mut CountingReader<R>) {
        let mut sink = Vec::new();
        r.read_to_end(&mut sink).expect("read");
    }

    #[test]
    fn locates_lines_and_character_columns() {
        let doc = "ab\nmå\nxyz";
        let mut r = CountingReader::new(doc.as_bytes(), 1 << 20, None);
        consume_all(&mut r);
        assert_eq!(
            r.locate(0),
            Location {
                line: 1,
                column: 1,
                offset: 0
            }
        );
        assert_eq!(r.locate(3).line, 2);
        // "må" is 3 bytes; the byte after it is column 3.
        assert_eq!(
            r.locate(6),
            Location {
                line: 2,
                column: 3,
                offset: 6
            }
        );
        assert_eq!(
            r.locate(8),
            Location {
                line: 3,
                column: 2,
                offset: 8
            }
        );
    }

    #[test]
    fn a_checkpoint_keeps_locations_and_drops_bytes() {
        let doc = "one\ntwo\nthree";
        let mut r = CountingReader::new(doc.as_bytes(), 1 << 20, None);
        consume_all(&mut r);
        r.checkpoint(4);
        assert_eq!(r.slice(4, 7), b"two");
        assert_eq!(
            r.locate(8),
            Location {
                line: 3,
                column: 1,
                offset: 8
            }
        );
    }

    #[test]
    fn reading_past_the_record_cap_fails() {
        let doc = [b' '; 100];
        let mut r = CountingReader::new(std::io::BufReader::with_capacity(10, &doc[..]), 50, None);
        let err = r.read_to_end(&mut Vec::new()).expect_err("cap");
        assert!(err.to_string().contains("50 bytes"), "{err}");
    }
}
