//! The parser's byte source: a `BufRead` over any `Read` that knows where the parser is.
//!
//! quick-xml reports byte offsets only. To say "line 812, column 7" without keeping the document,
//! and to hand a broken record's raw bytes to quarantine, the bytes since the last *checkpoint*
//! (the parser sets one at the start of every top-level element) stay in the buffer, with the line
//! and column of the checkpoint. That one buffer is also the read buffer quick-xml pulls from, so
//! no byte is copied twice. Memory is bounded by one top-level element plus one read chunk, and
//! that is capped: past `max_record_bytes` since the checkpoint the read fails, so a hostile
//! document cannot make us hold it whole. A total cap on the document size is enforced here too.

use std::io::{self, BufRead, Read};

/// How much is read from the source at a time.
const CHUNK: usize = 64 * 1024;

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
    /// `buf[start..pos]` was consumed since the checkpoint; `buf[pos..]` is read ahead.
    buf: Vec<u8>,
    start: usize,
    pos: usize,
    /// Location of `buf[start]`.
    mark: Location,
    eof: bool,
    consumed: u64,
    max_record_bytes: u64,
    max_document_bytes: Option<u64>,
}

impl<R: Read> CountingReader<R> {
    pub fn new(inner: R, max_record_bytes: u64, max_document_bytes: Option<u64>) -> Self {
        CountingReader {
            inner,
            buf: Vec::with_capacity(2 * CHUNK),
            start: 0,
            pos: 0,
            mark: Location {
                line: 1,
                column: 1,
                offset: 0,
            },
            eof: false,
            consumed: 0,
            max_record_bytes,
            max_document_bytes,
        }
    }

    /// Forgets everything before `offset` (which must lie within what was consumed since the last
    /// checkpoint), moving the mark there.
    pub fn checkpoint(&mut self, offset: u64) {
        let loc = self.locate(offset);
        self.start += (loc.offset - self.mark.offset) as usize;
        self.mark = loc;
    }

    /// Line and column of a byte offset at or after the checkpoint. Offsets before it resolve to
    /// the checkpoint itself; offsets past what was consumed resolve to the end.
    pub fn locate(&self, offset: u64) -> Location {
        let want = offset.clamp(self.mark.offset, self.consumed);
        let slice = &self.buf[self.start..self.start + (want - self.mark.offset) as usize];
        let mut loc = self.mark;
        // memchr counts newlines with SIMD: this runs over every byte once per record.
        loc.line += memchr::memchr_iter(b'\n', slice).count() as u64;
        let tail = match memchr::memrchr(b'\n', slice) {
            Some(i) => {
                loc.column = 1;
                &slice[i + 1..]
            }
            None => slice,
        };
        // Count characters, not bytes: a column in "måluppfyllnad" should match an editor's.
        loc.column += tail.iter().filter(|b| (**b & 0xC0) != 0x80).count() as u64;
        loc.offset = want;
        loc
    }

    /// The consumed bytes between two offsets at or after the checkpoint.
    pub fn slice(&self, from: u64, to: u64) -> &[u8] {
        let len = (self.consumed - self.mark.offset) as usize;
        let a = (from.saturating_sub(self.mark.offset) as usize).min(len);
        let b = (to.saturating_sub(self.mark.offset) as usize).min(len);
        &self.buf[self.start + a..self.start + b.max(a)]
    }

    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    fn refill(&mut self) -> io::Result<()> {
        if (self.pos - self.start) as u64 > self.max_record_bytes {
            return Err(io::Error::other(LimitExceeded::Record(
                self.max_record_bytes,
            )));
        }
        if let Some(max) = self.max_document_bytes {
            if self.consumed > max {
                return Err(io::Error::other(LimitExceeded::Document(max)));
            }
        }
        // Drop what lies before the checkpoint once it is most of the buffer: the memmove is
        // then paid rarely, not once per record.
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.pos -= self.start;
            self.start = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + CHUNK, 0);
        let n = loop {
            match self.inner.read(&mut self.buf[old..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e);
                }
            }
        };
        self.buf.truncate(old + n);
        if n == 0 {
            self.eof = true;
        }
        Ok(())
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for CountingReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.buf.len() && !self.eof {
            self.refill()?;
        }
        Ok(&self.buf[self.pos..])
    }

    fn consume(&mut self, amt: usize) {
        let amt = amt.min(self.buf.len() - self.pos);
        self.pos += amt;
        self.consumed += amt as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consume_all<R: Read>(r: &mut CountingReader<R>) {
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
        let doc = vec![b' '; 3 * CHUNK];
        let mut r = CountingReader::new(&doc[..], 50, None);
        let err = r.read_to_end(&mut Vec::new()).expect_err("cap");
        assert!(err.to_string().contains("50 bytes"), "{err}");
    }

    #[test]
    fn memory_stays_bounded_when_checkpoints_move_on() {
        let doc = vec![b'x'; 50 * CHUNK];
        let mut r = CountingReader::new(&doc[..], 4 * CHUNK as u64, None);
        loop {
            let n = r.fill_buf().expect("read").len().min(1000);
            if n == 0 {
                break;
            }
            r.consume(n);
            let at = r.consumed();
            r.checkpoint(at);
            assert!(r.buf.capacity() <= 4 * CHUNK, "{}", r.buf.capacity());
        }
    }
}
