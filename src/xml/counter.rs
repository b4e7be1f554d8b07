//! The parser's byte source: a `BufRead` over any `Read` that knows where the parser is, and
//! hands out only bytes that may be in an XML document.
//!
//! quick-xml reports byte offsets only. To say "line 812, column 7" without keeping the document,
//! and to hand a record's raw bytes to quarantine (or to the raw hash), the bytes since the last
//! *checkpoint* (the scanner sets one at the start and the end of every top-level element) stay
//! in the buffer, with the line and column of the checkpoint. That one buffer is also the read
//! buffer quick-xml pulls from, so no byte is copied twice. Memory is bounded by one top-level
//! element plus one read chunk, and that is capped: past `max_record_bytes` since the checkpoint
//! the read fails, so a hostile document cannot make us hold it whole. A total cap on the
//! document size is enforced here too.
//!
//! Every byte is checked as it arrives (see [`super::chars`]): UTF-8, and none of the characters
//! XML forbids. Bytes from the first bad one on are never handed out; reading up to it fails
//! with a [`BadCharAt`] that names its offset. So no event, record or database row can ever hold
//! a NUL or a stray byte of another encoding, whatever the layer above does, and the error points
//! at the exact character.

use std::io::{self, BufRead, Read};

use super::chars::{self, BadChar};

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
            LimitExceeded::Record(n) => write!(
                f,
                "one element (or what stands between two) exceeds the limit of {n} bytes (parser.max_record_bytes)"
            ),
            LimitExceeded::Document(n) => write!(
                f,
                "the document exceeds the limit of {n} bytes (max_response_bytes)"
            ),
        }
    }
}

impl std::error::Error for LimitExceeded {}

/// A byte the document may not contain, at an absolute offset; carried inside the `io::Error`
/// that reading up to it returns, so the parser can say where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadCharAt {
    pub offset: u64,
    pub bad: BadChar,
}

impl std::fmt::Display for BadCharAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "byte {}: {}", self.offset, self.bad)
    }
}

impl std::error::Error for BadCharAt {}

/// What the lexer reads from: bytes, and where they are in the document.
pub trait Source: BufRead {
    /// Line and column of an absolute byte offset (at or after [`Source::mark`]).
    fn locate(&self, offset: u64) -> Location;
    /// The absolute offset of the next byte to be consumed.
    fn consumed(&self) -> u64;
    /// Where the bytes held start: the checkpoint of a document, or an element's first byte.
    fn mark(&self) -> Location;
}

impl<R: Read> Source for CountingReader<R> {
    fn locate(&self, offset: u64) -> Location {
        CountingReader::locate(self, offset)
    }
    fn consumed(&self) -> u64 {
        CountingReader::consumed(self)
    }
    fn mark(&self) -> Location {
        CountingReader::mark(self)
    }
}

/// One element's raw bytes, read again where they stood in their document. They passed the
/// character check when the document arrived, so nothing is checked or copied here.
pub struct SliceSource<'a> {
    bytes: &'a [u8],
    pos: usize,
    start: Location,
}

impl<'a> SliceSource<'a> {
    pub fn new(bytes: &'a [u8], start: Location) -> SliceSource<'a> {
        SliceSource {
            bytes,
            pos: 0,
            start,
        }
    }
}

impl Read for SliceSource<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = (self.bytes.len() - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl BufRead for SliceSource<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        Ok(&self.bytes[self.pos..])
    }
    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.bytes.len());
    }
}

impl Source for SliceSource<'_> {
    fn locate(&self, offset: u64) -> Location {
        let at = (offset.saturating_sub(self.start.offset) as usize).min(self.bytes.len());
        locate_in(self.start, &self.bytes[..at])
    }
    fn consumed(&self) -> u64 {
        self.start.offset + self.pos as u64
    }
    fn mark(&self) -> Location {
        self.start
    }
}

/// The location just after `slice`, which starts at `from`.
fn locate_in(from: Location, slice: &[u8]) -> Location {
    let mut loc = from;
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
    loc.offset += slice.len() as u64;
    loc
}

pub struct CountingReader<R> {
    inner: R,
    /// `buf[start..pos]` was consumed since the checkpoint; `buf[pos..checked]` is read ahead and
    /// checked; `buf[checked..]` is an incomplete UTF-8 sequence waiting for its next bytes, or
    /// lies behind a bad character.
    buf: Vec<u8>,
    start: usize,
    pos: usize,
    checked: usize,
    /// The first bad character found, as an index into `buf`; nothing from it on is handed out.
    bad: Option<(usize, BadChar)>,
    /// Location of `buf[start]`.
    mark: Location,
    eof: bool,
    consumed: u64,
    max_record_bytes: u64,
    max_document_bytes: Option<u64>,
}

impl<R: Read> CountingReader<R> {
    pub fn new(inner: R, max_record_bytes: u64, max_document_bytes: Option<u64>) -> Self {
        Self::starting_at(
            inner,
            Location {
                line: 1,
                column: 1,
                offset: 0,
            },
            max_record_bytes,
            max_document_bytes,
        )
    }

    /// A reader whose first byte is at `start` of some larger document: for reading one element
    /// again from its raw bytes, with locations that point into the document it came from.
    pub fn starting_at(
        inner: R,
        start: Location,
        max_record_bytes: u64,
        max_document_bytes: Option<u64>,
    ) -> Self {
        CountingReader {
            inner,
            buf: Vec::with_capacity(2 * CHUNK),
            start: 0,
            pos: 0,
            checked: 0,
            bad: None,
            mark: start,
            eof: false,
            consumed: start.offset,
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
        // Also what was read ahead: a bad character is located before it is consumed.
        let readable = self.consumed + (self.buf.len() - self.pos) as u64;
        let want = offset.clamp(self.mark.offset, readable);
        let slice = &self.buf[self.start..self.start + (want - self.mark.offset) as usize];
        locate_in(self.mark, slice)
    }

    /// At least `n` bytes ahead of the next one to consume, unless the input ends first (or a
    /// bad character comes): for deciding what markup starts here without consuming it.
    pub fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        while self.checked - self.pos < n && !self.eof && self.bad.is_none() {
            self.refill()?;
        }
        if self.checked == self.pos {
            // Nothing ahead: the error, if there is one, is here.
            self.fill_buf()?;
        }
        Ok(&self.buf[self.pos..self.checked])
    }

    /// The bytes held from `offset` (at or after the checkpoint) on: consumed, and read ahead
    /// and checked.
    pub fn held_from(&self, offset: u64) -> &[u8] {
        let a = (offset.saturating_sub(self.mark.offset) as usize).min(self.checked - self.start);
        &self.buf[self.start + a..self.checked]
    }

    /// The consumed bytes between two offsets at or after the checkpoint.
    pub fn slice(&self, from: u64, to: u64) -> &[u8] {
        let len = (self.consumed - self.mark.offset) as usize;
        let a = (from.saturating_sub(self.mark.offset) as usize).min(len);
        let b = (to.saturating_sub(self.mark.offset) as usize).min(len);
        &self.buf[self.start + a..self.start + b.max(a)]
    }

    /// Where the checkpoint is: the start of the element (or the gap between two) being read.
    pub fn mark(&self) -> Location {
        self.mark
    }

    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The absolute offset of an index into `buf`.
    fn offset_of(&self, index: usize) -> u64 {
        self.consumed + index as u64 - self.pos as u64
    }

    /// Checks what arrived since the last check, up to the first bad character.
    fn check_new(&mut self) {
        if self.bad.is_some() {
            return;
        }
        match chars::check(&self.buf[self.checked..]) {
            Ok(good) => self.checked += good,
            Err((at, bad)) => {
                self.checked += at;
                self.bad = Some((self.checked, bad));
            }
        }
        if self.eof && self.bad.is_none() && self.checked < self.buf.len() {
            // The input ended inside a UTF-8 sequence: cut short, not wrong.
            self.bad = Some((self.checked, BadChar::CutUtf8));
        }
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
            self.checked -= self.start;
            if let Some((at, _)) = &mut self.bad {
                *at -= self.start;
            }
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
        self.check_new();
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
        loop {
            if self.pos < self.checked {
                return Ok(&self.buf[self.pos..self.checked]);
            }
            if let Some((at, bad)) = self.bad {
                if self.pos >= at {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        BadCharAt {
                            offset: self.offset_of(at),
                            bad,
                        },
                    ));
                }
            }
            if self.eof {
                return Ok(&[]);
            }
            self.refill()?;
        }
    }

    fn consume(&mut self, amt: usize) {
        let amt = amt.min(self.checked - self.pos);
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

    /// Reads everything, returning the error reading stopped at, if any.
    fn read_all(doc: &[u8], chunk_reads: usize) -> (Vec<u8>, Option<BadCharAt>) {
        /// Hands out at most `n` bytes per read, so sequences straddle reads.
        struct Trickle<'a>(&'a [u8], usize);
        impl Read for Trickle<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(out.len()).min(self.1);
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut r = CountingReader::new(Trickle(doc, chunk_reads), 1 << 20, None);
        let mut got = Vec::new();
        let err = r.read_to_end(&mut got).err().map(|e| {
            *e.get_ref()
                .and_then(|inner| inner.downcast_ref::<BadCharAt>())
                .expect("a bad character")
        });
        (got, err)
    }

    #[test]
    fn bytes_up_to_a_bad_character_are_handed_out_and_it_is_located() {
        for chunk in [1, 2, 3, 64 * 1024] {
            let (got, err) = read_all(b"<a>ok\0no</a>", chunk);
            assert_eq!(got, b"<a>ok", "chunk {chunk}");
            assert_eq!(
                err,
                Some(BadCharAt {
                    offset: 5,
                    bad: BadChar::Forbidden(0)
                })
            );
            // "må" split across reads is fine; Latin-1 "å" is not.
            let (got, err) = read_all("<a>må</a>".as_bytes(), chunk);
            assert_eq!((got.as_slice(), err), ("<a>må</a>".as_bytes(), None));
            let (got, err) = read_all(b"<a>m\xE5</a>", chunk);
            assert_eq!(got, b"<a>m");
            assert_eq!(err.map(|e| (e.offset, e.bad)), Some((4, BadChar::NotUtf8)));
            // A document that ends inside a sequence was cut short, which is not bad bytes.
            let (got, err) = read_all("<a/>å".as_bytes()[..5].as_ref(), chunk);
            assert_eq!(got, b"<a/>");
            assert_eq!(err.map(|e| (e.offset, e.bad)), Some((4, BadChar::CutUtf8)));
        }
    }

    #[test]
    fn a_reader_can_start_inside_a_document() {
        let start = Location {
            line: 40,
            column: 5,
            offset: 1000,
        };
        let mut r = CountingReader::starting_at(&b"<x>\n  <y/>"[..], start, 1 << 20, None);
        consume_all(&mut r);
        assert_eq!(r.consumed(), 1010);
        assert_eq!(
            r.locate(1006),
            Location {
                line: 41,
                column: 3,
                offset: 1006
            }
        );
    }
}
