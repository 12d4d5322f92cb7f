//! The one escaping rule: which characters of a value are percent-encoded, and which may
//! stand in the literal part of a template.
//!
//! Both directions live here so the rule has one owner: [`escape_into`] and the template
//! check below use the same table, and the tests' `unescape` proves the encoding is
//! injective. (The attribute macros check template literals at compile time with the same
//! character set; `tests/macros_ui.rs` pins their error.)

use std::fmt::{self, Display, Write as _};

use crate::error::Error;

/// For each ASCII byte, whether it must be percent-encoded (the ASCII half of
/// [`needs_escape`], as a table so the common all-ASCII value is checked a byte at a time).
pub(super) const ASCII_ESCAPE: [bool; 128] = {
    let mut table = [false; 128];
    let mut b = 0;
    while b < 128 {
        table[b] = b <= 0x20
            || b == 0x7f
            || matches!(
                b as u8,
                b'%' | b'*' | b'?' | b'[' | b']' | b'^' | b':' | b'{' | b'}' | b'\\'
            );
        b += 1;
    }
    table
};

/// Whether a value needs any escaping at all.
#[inline]
fn any_needs_escape(s: &str) -> bool {
    if s.is_ascii() {
        s.bytes().any(|b| ASCII_ESCAPE[usize::from(b)])
    } else {
        s.chars().any(needs_escape)
    }
}

/// Whether `c` must be percent-encoded when it comes from a value.
#[inline]
pub(crate) fn needs_escape(c: char) -> bool {
    matches!(
        c,
        '%' | '*' | '?' | '[' | ']' | '^' | ':' | '{' | '}' | '\\'
    ) || c.is_whitespace()
        || c.is_control()
}

/// Whether `c` may stand in a literal part of a template.
#[inline]
fn literal_char_ok(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '%' | '*' | '?' | '[' | ']' | '^' | '{' | '}' | '\\')
}

pub(crate) fn check_literal(text: &str, template: &str) -> Result<(), Error> {
    if text
        .bytes()
        .all(|b| b.is_ascii_graphic() && !ASCII_ESCAPE[usize::from(b)] || b == b':')
    {
        return Ok(());
    }
    match text.chars().find(|c| !literal_char_ok(*c)) {
        None => Ok(()),
        Some(c) => Err(Error::InvalidTemplate {
            template: template.to_owned(),
            reason: format!(
                "the literal part contains {c:?}; literal parts may hold printable ASCII except % * ? [ ] ^ {{ }} \\ and whitespace"
            ),
        }),
    }
}

/// Writes `value` into `out`, percent-encoding every character that could widen a pattern.
///
/// ```
/// let mut key = String::from("user:");
/// stormcache::key::escape_into(&mut key, "a:b c*");
/// assert_eq!(key, "user:a%3Ab%20c%2A");
/// ```
pub fn escape_into(out: &mut String, value: impl Display) {
    escape_to(out, value);
}

/// [`escape_into`] for any text buffer.
pub(crate) fn escape_to<W: fmt::Write>(out: &mut W, value: impl Display) {
    struct Escaper<'a, W>(&'a mut W);
    impl<W: fmt::Write> fmt::Write for Escaper<'_, W> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            escape_str_to(self.0, s)
        }
    }
    // Writing into a String cannot fail; a Display impl that returns Err leaves what it wrote.
    let _ = write!(Escaper(out), "{value}");
}

/// [`escape_to`] for a value that is already text: no formatting machinery, which is most
/// of the cost of a short value.
pub(crate) fn escape_str_to<W: fmt::Write>(out: &mut W, s: &str) -> fmt::Result {
    // Fast path: most ids need no escaping at all.
    if !any_needs_escape(s) {
        return out.write_str(s);
    }
    for c in s.chars() {
        if needs_escape(c) {
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.write_char('%')?;
                out.write_char(HEX[(b >> 4) as usize] as char)?;
                out.write_char(HEX[(b & 0xF) as usize] as char)?;
            }
        } else {
            out.write_char(c)?;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ascii");
            out.push(u8::from_str_radix(hex, 16).expect("hex"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("utf8")
}
