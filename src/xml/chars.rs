//! XML 1.0's character rules, decided on bytes: which characters a document may contain at all
//! (the `Char` production) and which may start or continue a name (`NameStartChar`, `NameChar`).
//!
//! The API delivers UTF-8 only, so a document is checked as UTF-8 once, as its bytes arrive (see
//! [`super::counter`]); what is valid UTF-8 can still hold characters XML forbids: NUL and the
//! other C0 controls except tab, line feed and carriage return, and the non-characters U+FFFE
//! and U+FFFF (surrogates cannot be encoded in valid UTF-8). A character reference (`&#0;`,
//! `&#x1;`) can name the same characters, so resolved references are checked with [`is_char`].

/// Why bytes cannot be part of the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadChar {
    /// The bytes are not UTF-8.
    NotUtf8,
    /// The input ended inside a UTF-8 sequence: the bytes before it were good, the rest never
    /// came (a body cut short), as opposed to bytes that are wrong.
    CutUtf8,
    /// A character XML forbids everywhere, by code point.
    Forbidden(u32),
}

impl std::fmt::Display for BadChar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadChar::NotUtf8 => write!(
                f,
                "the bytes are not UTF-8 (the API delivers UTF-8 only; an undeclared Latin-1 document looks like this)"
            ),
            BadChar::CutUtf8 => write!(
                f,
                "the document ends inside a UTF-8 character: it is truncated"
            ),
            BadChar::Forbidden(c) => write!(
                f,
                "the character U+{c:04X} is not allowed anywhere in XML (no NUL, no control characters but tab, LF and CR, no U+FFFE/U+FFFF)"
            ),
        }
    }
}

/// Whether `c` is an XML 1.0 `Char`.
pub fn is_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// The first character in `s` that XML forbids, with its byte index.
pub fn first_forbidden_in_str(s: &str) -> Option<(usize, u32)> {
    first_forbidden(s.as_bytes())
}

/// The first forbidden character in bytes that are already known to be UTF-8, with its byte
/// index. Fast on the common case: 32-byte blocks are tested with a branch-free fold (which the
/// compiler vectorises) and only a block that holds a suspect byte is looked at closely.
pub fn first_forbidden(bytes: &[u8]) -> Option<(usize, u32)> {
    const BLOCK: usize = 32;
    let mut base = 0;
    for block in bytes.chunks(BLOCK) {
        // A suspect: a C0 control other than tab, LF or CR, or 0xEF, the lead byte of
        // U+FFFE/U+FFFF (and of the rest of U+F000..U+FFFF, rare in this data).
        let suspect = block.iter().fold(false, |acc, &b| {
            acc | ((b < 0x20) & (b != b'\t') & (b != b'\n') & (b != b'\r')) | (b == 0xEF)
        });
        if suspect {
            for (i, &b) in block.iter().enumerate() {
                let at = base + i;
                if b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r') {
                    return Some((at, u32::from(b)));
                }
                if b == 0xEF && bytes.get(at + 1) == Some(&0xBF) {
                    match bytes.get(at + 2) {
                        Some(0xBE) => return Some((at, 0xFFFE)),
                        Some(0xBF) => return Some((at, 0xFFFF)),
                        _ => {}
                    }
                }
            }
        }
        base += block.len();
    }
    None
}

/// Checks bytes as XML text: UTF-8, and no forbidden character. `Ok(n)`: the first `n` bytes are
/// good and the rest is an incomplete UTF-8 sequence (more bytes may complete it). `Err`: the
/// byte index of the first bad character and why.
pub fn check(bytes: &[u8]) -> Result<usize, (usize, BadChar)> {
    let (good, error) = match std::str::from_utf8(bytes) {
        Ok(_) => (bytes.len(), None),
        Err(e) => (e.valid_up_to(), e.error_len().map(|_| e.valid_up_to())),
    };
    if let Some((at, c)) = first_forbidden(&bytes[..good]) {
        return Err((at, BadChar::Forbidden(c)));
    }
    match error {
        Some(at) => Err((at, BadChar::NotUtf8)),
        None => Ok(good),
    }
}

/// Whether `c` may start an XML name.
fn is_name_start(c: char) -> bool {
    matches!(c,
        ':' | 'A'..='Z' | '_' | 'a'..='z'
        | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}'
        | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}'
        | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

/// Whether `c` may continue an XML name.
fn is_name_char(c: char) -> bool {
    is_name_start(c)
        || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

/// Whether bytes (UTF-8, already checked) spell an XML `Name`.
pub fn is_name(name: &[u8]) -> bool {
    // The common case, ASCII letters, needs no decoding.
    if let Some((&first, rest)) = name.split_first() {
        if first.is_ascii_alphabetic()
            && rest
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'))
        {
            return true;
        }
    }
    let Ok(s) = std::str::from_utf8(name) else {
        return false;
    };
    let mut chars = s.chars();
    chars.next().is_some_and(is_name_start) && chars.all(is_name_char)
}

/// Text for a terminal or a log line: control characters (which a hostile document may put in
/// names and values, to move the cursor or recolour the screen) are shown as `\u{…}` escapes.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_characters_are_found_at_their_index() {
        assert_eq!(first_forbidden(b"abc"), None);
        assert_eq!(first_forbidden(b"a\tb\nc\r"), None);
        assert_eq!(first_forbidden(b"ab\0c"), Some((2, 0)));
        assert_eq!(first_forbidden(b"\x1b[31m"), Some((0, 0x1b)));
        let long = format!("{}\u{1}", "x".repeat(100));
        assert_eq!(first_forbidden(long.as_bytes()), Some((100, 1)));
        assert_eq!(first_forbidden("å\u{FFFE}".as_bytes()), Some((2, 0xFFFE)));
        assert_eq!(first_forbidden("\u{FFFF}".as_bytes()), Some((0, 0xFFFF)));
        // Other characters with the lead byte 0xEF are fine.
        assert_eq!(first_forbidden("\u{FFFD}\u{F000}".as_bytes()), None);
        // A suspect at the end of a block whose continuation is in the next block.
        let edge = format!("{}\u{FFFE}", "y".repeat(31));
        assert_eq!(first_forbidden(edge.as_bytes()), Some((31, 0xFFFE)));
    }

    #[test]
    fn utf8_is_checked_with_incomplete_tails_left_for_later() {
        assert_eq!(check(b"ok"), Ok(2));
        assert_eq!(check("må".as_bytes()), Ok(3));
        // The first byte of "å" alone: incomplete, not wrong.
        assert_eq!(check(b"m\xC3"), Ok(1));
        assert_eq!(check(b"m\xC3("), Err((1, BadChar::NotUtf8)));
        // Latin-1 "å".
        assert_eq!(check(b"m\xE5l"), Err((1, BadChar::NotUtf8)));
        // A forbidden character before bad UTF-8 is reported first.
        assert_eq!(check(b"\0\xFF"), Err((0, BadChar::Forbidden(0))));
    }

    #[test]
    fn chars_follow_the_xml_production() {
        for ok in [
            '\t',
            '\n',
            '\r',
            ' ',
            'å',
            '\u{D7FF}',
            '\u{E000}',
            '\u{FFFD}',
            '\u{10000}',
        ] {
            assert!(is_char(ok), "{ok:?}");
        }
        for bad in ['\0', '\u{1}', '\u{1F}', '\u{FFFE}', '\u{FFFF}'] {
            assert!(!is_char(bad), "{bad:?}");
        }
    }

    #[test]
    fn names_follow_the_xml_production() {
        for ok in [
            "a",
            "ämnesresultat",
            "xsi:type",
            "_x",
            "a-b.c1",
            "måluppfyllnad",
        ] {
            assert!(is_name(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "1a", "-a", ".a", "a b", "a\u{7}"] {
            assert!(!is_name(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn control_characters_are_escaped_for_terminals() {
        assert_eq!(printable("plain å"), "plain å");
        assert_eq!(printable("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
    }
}
