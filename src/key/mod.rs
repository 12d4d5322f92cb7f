//! Keys, key templates and the escaping that keeps user input inside its slot.
//!
//! A key is what a caller names an entry by: `user:groups:alice`. Stormcache later finds
//! entries by *pattern* (a class flush is `SCAN MATCH ns:class:*`) and by *tag*, so a value
//! spliced into a key must never be able to change which entries a pattern or a tag reaches.
//! A user id of `*` must not turn `resources:{user}` into `resources:*`, and `alice:admin`
//! must not impersonate a deeper key. That is why every interpolated value is escaped here,
//! and why the literal parts of a template are checked once, when the template is parsed.
//!
//! Escaping is percent-encoding of a small set: the glob characters `* ? [ ] ^`, the separator
//! `:`, the Cluster hash-tag braces `{ }`, the backslash, `%` itself (so the encoding is
//! injective: two different values never give the same key), and every whitespace or control
//! character, newlines included. Everything else, non-ASCII letters too, is kept as is, so
//! keys stay readable in `redis-cli`.

use std::fmt::{self, Display};
use std::sync::Arc;

use compact_str::CompactString;

use crate::error::Error;

mod escape;

#[doc(inline)]
pub use self::escape::escape_into;
use self::escape::{check_literal, escape_to};
#[cfg(test)]
use self::escape::{needs_escape, unescape, ASCII_ESCAPE};

/// A cache key (or a tag): a string whose interpolated parts are escaped.
///
/// Build one with [`Key::literal`] for a fixed key, with [`KeyBuilder`] (or the
/// [`key!`](crate::key!) macro) for a key with values in it, or from a [`KeyTemplate`].
///
/// ```
/// use stormcache::Key;
///
/// let user = "eve*"; // hostile input
/// let key = Key::builder("resources:").value(user).build();
/// assert_eq!(key.as_str(), "resources:eve%2A");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(CompactString);

impl Key {
    /// A key with no interpolated values.
    ///
    /// Fails when the text contains a character that is not allowed in a template's literal
    /// part (see [`KeyTemplate`]).
    ///
    /// ```
    /// use stormcache::Key;
    /// assert_eq!(Key::literal("resources:all")?.as_str(), "resources:all");
    /// assert!(Key::literal("resources:*").is_err());
    /// # Ok::<(), stormcache::Error>(())
    /// ```
    pub fn literal(text: &str) -> Result<Self, Error> {
        check_literal(text, text)?;
        Ok(Key(CompactString::from(text)))
    }

    /// Starts a key with a literal prefix; append escaped values and more literals.
    ///
    /// The prefix is checked like any literal: on a bad character the builder records the
    /// error and [`KeyBuilder::try_build`] returns it, while [`KeyBuilder::build`] escapes the
    /// offending characters instead, so a key can always be built.
    pub fn builder(prefix: &str) -> KeyBuilder {
        KeyBuilder::new().literal(prefix)
    }

    /// The key's text, as stored (escaped).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn from_escaped(text: CompactString) -> Self {
        Key(text)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Appends literal parts and escaped values into a [`Key`].
///
/// ```
/// use stormcache::Key;
///
/// let key = Key::builder("user:").value(42).literal(":groups").build();
/// assert_eq!(key.as_str(), "user:42:groups");
/// ```
#[derive(Debug, Default)]
#[must_use]
pub struct KeyBuilder {
    // Up to 24 bytes live inline: most keys are built and dropped without touching the heap.
    buf: CompactString,
    // Boxed: the builder is moved through every chained call and is almost never in error.
    error: Option<Box<Error>>,
}

impl KeyBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        KeyBuilder {
            buf: CompactString::const_new(""),
            error: None,
        }
    }

    /// Appends a literal part written by the developer (not user input).
    pub fn literal(mut self, text: &str) -> Self {
        if let Err(e) = check_literal(text, text) {
            // Never let a bad literal through unescaped; remember the error for try_build.
            escape_to(&mut self.buf, text);
            self.error.get_or_insert(Box::new(e));
        } else {
            self.buf.push_str(text);
        }
        self
    }

    /// Appends a value, escaped so that it cannot add glob characters, separators or
    /// whitespace to the key.
    pub fn value(mut self, value: impl Display) -> Self {
        escape_to(&mut self.buf, value);
        self
    }

    /// [`value`](Self::value) for text, without the formatting machinery (the HTTP layer's
    /// keys are made of request text on every request).
    pub(crate) fn text(mut self, value: &str) -> Self {
        // Writing into a CompactString cannot fail.
        let _ = escape::escape_str_to(&mut self.buf, value);
        self
    }

    /// Appends a literal the caller has already validated (used by generated code).
    #[doc(hidden)]
    pub fn literal_unchecked(mut self, text: &'static str) -> Self {
        self.buf.push_str(text);
        self
    }

    /// Finishes the key. A bad literal was escaped rather than rejected.
    pub fn build(self) -> Key {
        Key::from_escaped(self.buf)
    }

    /// Finishes the key, or returns the first bad literal met.
    pub fn try_build(self) -> Result<Key, Error> {
        match self.error {
            Some(e) => Err(*e),
            None => Ok(Key::from_escaped(self.buf)),
        }
    }
}

/// A key template such as `user:groups:{user}`, parsed once and rendered many times.
///
/// Placeholders are `{name}`; the text between them is literal and must be printable ASCII
/// without `% * ? [ ] ^ { } \` or whitespace. Values are escaped when rendered.
///
/// ```
/// use stormcache::KeyTemplate;
///
/// let t = KeyTemplate::parse("user:groups:{user}")?;
/// assert_eq!(t.placeholders().collect::<Vec<_>>(), ["user"]);
/// let key = t.render(&[("user", &"alice" as &dyn std::fmt::Display)])?;
/// assert_eq!(key.as_str(), "user:groups:alice");
/// # Ok::<(), stormcache::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyTemplate {
    source: Arc<str>,
    parts: Arc<[Part]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Placeholder(String),
}

impl KeyTemplate {
    /// Parses a template; the error names the offending part.
    pub fn parse(template: &str) -> Result<Self, Error> {
        let bad = |reason: String| Error::InvalidTemplate {
            template: template.to_owned(),
            reason,
        };
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    check_literal(rest, template)?;
                    parts.push(Part::Literal(rest.to_owned()));
                    rest = "";
                }
                Some(i) if rest.as_bytes()[i] == b'}' => {
                    return Err(bad(format!(
                        "unmatched `}}` at byte {}",
                        template.len() - rest.len() + i
                    )));
                }
                Some(i) => {
                    if i > 0 {
                        check_literal(&rest[..i], template)?;
                        parts.push(Part::Literal(rest[..i].to_owned()));
                    }
                    let after = &rest[i + 1..];
                    let end = after
                        .find('}')
                        .ok_or_else(|| bad("unclosed `{`".to_owned()))?;
                    let name = &after[..end];
                    if !is_placeholder_name(name) {
                        return Err(bad(format!(
                            "placeholder `{{{name}}}` must be a name or a dotted path like `user.id`"
                        )));
                    }
                    parts.push(Part::Placeholder(name.to_owned()));
                    rest = &after[end + 1..];
                }
            }
        }
        if parts.is_empty() {
            return Err(bad("a key template cannot be empty".to_owned()));
        }
        Ok(KeyTemplate {
            source: Arc::from(template),
            parts: parts.into(),
        })
    }

    /// The template's text.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The placeholder names, in order of appearance.
    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Placeholder(n) => Some(n.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Renders with named values; a placeholder without a value is an error.
    pub fn render(&self, values: &[(&str, &dyn Display)]) -> Result<Key, Error> {
        self.render_with(|name| values.iter().find(|(n, _)| *n == name).map(|(_, v)| *v))
    }

    /// Renders, asking `lookup` for each placeholder's value.
    pub fn render_with<'v>(
        &self,
        mut lookup: impl FnMut(&str) -> Option<&'v dyn Display>,
    ) -> Result<Key, Error> {
        let mut buf = CompactString::with_capacity(self.source.len() + 16);
        for part in self.parts.iter() {
            match part {
                Part::Literal(text) => buf.push_str(text),
                Part::Placeholder(name) => match lookup(name) {
                    Some(v) => escape_to(&mut buf, v),
                    None => {
                        return Err(Error::MissingPlaceholder {
                            template: self.source.to_string(),
                            placeholder: name.clone(),
                        })
                    }
                },
            }
        }
        Ok(Key::from_escaped(buf))
    }
}

fn is_placeholder_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|seg| {
            let mut chars = seg.chars();
            matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphanumeric())
                && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
        })
}

/// Checks a namespace or class name: `[A-Za-z0-9_.-]+`, so it is safe inside a SCAN pattern.
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), Error> {
    if !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what,
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn escaped(v: &str) -> String {
        let mut s = String::new();
        escape_into(&mut s, v);
        s
    }

    #[test]
    fn hostile_values_are_neutralised() {
        for (input, want) in [
            ("*", "%2A"),
            ("a?b", "a%3Fb"),
            ("[a-z]", "%5Ba-z%5D"),
            ("x:y", "x%3Ay"),
            ("line\nbreak", "line%0Abreak"),
            ("{tag}", "%7Btag%7D"),
            ("100%", "100%25"),
            ("back\\slash", "back%5Cslash"),
            ("é", "é"),
            ("\u{2028}", "%E2%80%A8"),
        ] {
            assert_eq!(escaped(input), want, "input {input:?}");
        }
    }

    #[test]
    fn templates_parse_and_reject() {
        let t = KeyTemplate::parse("user:{user.id}:x").expect("valid");
        assert_eq!(t.placeholders().collect::<Vec<_>>(), ["user.id"]);
        for bad in ["", "a{", "a}", "a{}", "a*{b}", "a b", "{a b}", "x{y}[z]"] {
            assert!(
                KeyTemplate::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        let err = t.render(&[]).expect_err("missing value");
        assert!(err.to_string().contains("user.id"), "{err}");
    }

    #[test]
    fn builder_escapes_a_bad_literal_but_try_build_reports_it() {
        let k = Key::builder("res:*").value("a").build();
        assert_eq!(k.as_str(), "res%3A%2Aa");
        assert!(Key::builder("res:*").try_build().is_err());
    }

    #[test]
    fn the_ascii_table_agrees_with_the_rule() {
        for b in 0u8..128 {
            assert_eq!(
                ASCII_ESCAPE[usize::from(b)],
                needs_escape(char::from(b)),
                "byte {b}"
            );
        }
    }

    proptest! {
        #[test]
        fn escaped_values_never_carry_pattern_characters(v in any::<String>()) {
            let e = escaped(&v);
            prop_assert!(!e.chars().any(needs_escape_except_percent), "{e:?}");
            // Injective: the original comes back, so two values never share a key.
            prop_assert_eq!(unescape(&e), v);
        }

        #[test]
        fn rendered_keys_match_only_their_own_pattern(a in any::<String>(), b in any::<String>()) {
            let t = KeyTemplate::parse("resources:{user}").expect("valid");
            let ka = t.render(&[("user", &a as &dyn Display)]).expect("render");
            let kb = t.render(&[("user", &b as &dyn Display)]).expect("render");
            prop_assert_eq!(ka == kb, a == b);
            // A value can never add a segment.
            prop_assert_eq!(ka.as_str().matches(':').count(), 1);
        }
    }

    fn needs_escape_except_percent(c: char) -> bool {
        c != '%' && needs_escape(c)
    }
}
