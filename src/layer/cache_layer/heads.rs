//! [`Heads`]: which of the request headers the hit path decides on are present, found in one
//! pass over the header map.
//!
//! A plain request carries none of them (no `Range`, no preconditions, no `Cache-Control`,
//! no credentials). Asking the map for each by name costs a hash and a probe apiece, about
//! ten per request; one walk over the few headers a request has costs less, and every later
//! look at a header is skipped when the walk says it is absent.

use http::header::{
    AUTHORIZATION, CACHE_CONTROL, COOKIE, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, PRAGMA, RANGE,
};
use http::{HeaderMap, HeaderName};

/// The request headers the hit path decides on that a request has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Heads(u8);

const RANGE_: u8 = 1;
const IF_RANGE_: u8 = 1 << 1;
const DIRECTIVES: u8 = 1 << 2;
const CREDENTIALS: u8 = 1 << 3;
const CONDITIONS: u8 = 1 << 4;

impl Heads {
    /// Walks `headers` once; `credentials` are the names besides `Authorization` and
    /// `Cookie` that make a request personal.
    pub(super) fn scan(headers: &HeaderMap, credentials: &[HeaderName]) -> Heads {
        let mut bits = 0;
        for name in headers.keys() {
            bits |= if name == RANGE {
                RANGE_
            } else if name == IF_RANGE {
                IF_RANGE_
            } else if name == CACHE_CONTROL || name == PRAGMA {
                DIRECTIVES
            } else if name == AUTHORIZATION || name == COOKIE || credentials.contains(name) {
                CREDENTIALS
            } else if name == IF_NONE_MATCH || name == IF_MODIFIED_SINCE {
                CONDITIONS
            } else {
                0
            };
        }
        Heads(bits)
    }

    /// `Range`.
    pub(super) fn range(self) -> bool {
        self.0 & RANGE_ != 0
    }

    /// `If-Range`.
    pub(super) fn if_range(self) -> bool {
        self.0 & IF_RANGE_ != 0
    }

    /// `Cache-Control` or `Pragma`: request directives to read.
    pub(super) fn directives(self) -> bool {
        self.0 & DIRECTIVES != 0
    }

    /// `Authorization`, `Cookie`, or one of the layer's credential headers.
    pub(super) fn credentials(self) -> bool {
        self.0 & CREDENTIALS != 0
    }

    /// `If-None-Match` or `If-Modified-Since`: preconditions the layer answers.
    pub(super) fn conditions(self) -> bool {
        self.0 & CONDITIONS != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn scan(names: &[&str], extra: &[HeaderName]) -> Heads {
        let mut headers = HeaderMap::new();
        for name in names {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_static("x"),
            );
        }
        Heads::scan(&headers, extra)
    }

    #[test]
    fn a_plain_request_has_none() {
        let heads = scan(&["host", "accept", "user-agent", "accept-encoding"], &[]);
        assert_eq!(heads, Heads::default());
    }

    #[test]
    fn each_header_is_found_whatever_its_case_and_place() {
        let extra = [HeaderName::from_static("x-api-key")];
        assert!(scan(&["host", "Range"], &[]).range());
        assert!(scan(&["if-range", "range"], &[]).if_range());
        assert!(scan(&["Cache-Control"], &[]).directives());
        assert!(scan(&["pragma"], &[]).directives());
        assert!(scan(&["authorization"], &[]).credentials());
        assert!(scan(&["accept", "cookie"], &[]).credentials());
        assert!(scan(&["X-Api-Key"], &extra).credentials());
        assert!(!scan(&["x-api-key"], &[]).credentials());
        assert!(scan(&["if-none-match"], &[]).conditions());
        assert!(scan(&["if-modified-since"], &[]).conditions());
        let all = scan(
            &["range", "if-range", "pragma", "cookie", "if-none-match"],
            &[],
        );
        assert!(
            all.range()
                && all.if_range()
                && all.directives()
                && all.credentials()
                && all.conditions()
        );
    }
}
