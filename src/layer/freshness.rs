//! How long a response may be served from a shared cache, from its own headers (RFC 9111
//! §4.2): its freshness lifetime (`s-maxage`, then `max-age`, then `Expires` − `Date`), the
//! age it already had on arrival (`Age`, `Date`, the time the request took), and whether it
//! may ever be served stale.

use std::time::{Duration, SystemTime};

use http::header::{AGE, DATE, EXPIRES, LAST_MODIFIED};
use http::HeaderMap;

use super::cache_control::{Delta, ResponseDirectives};
use super::http_date;

/// The fraction of the time since `Last-Modified` a response without a lifetime of its own
/// is taken to stay fresh (RFC 9111 §4.2.2: "a typical setting of this fraction might be
/// 10%").
const HEURISTIC_FRACTION: u32 = 10;

/// What a response's headers say about its freshness, as received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Freshness {
    /// The lifetime the response gives itself, if it gives one; `None` leaves it to the
    /// layer's TTL (the heuristic).
    pub(crate) lifetime: Option<Duration>,
    /// Its corrected initial age: how old it already was when it arrived.
    pub(crate) initial_age: Duration,
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage`: never served stale.
    pub(crate) must_revalidate: bool,
    /// The heuristic lifetime (RFC 9111 §4.2.2), for when it gives none: a tenth of the
    /// time between its `Last-Modified` and its `Date`; `None` without a valid
    /// `Last-Modified` (the layer's TTL applies then).
    pub(crate) heuristic: Option<Duration>,
}

impl Freshness {
    /// Reads the freshness of a response to a request sent at `requested` and answered at
    /// `received`.
    pub(crate) fn of(
        headers: &HeaderMap,
        directives: &ResponseDirectives,
        requested: SystemTime,
        received: SystemTime,
    ) -> Freshness {
        let date = first_date(headers, DATE);
        let heuristic = first_date(headers, LAST_MODIFIED).map(|modified| {
            let since = date.unwrap_or(received).duration_since(modified);
            since.unwrap_or(Duration::ZERO) / HEURISTIC_FRACTION
        });
        Freshness {
            lifetime: lifetime(headers, directives, date.unwrap_or(received)),
            initial_age: initial_age(headers, date, requested, received),
            must_revalidate: directives.must_revalidate,
            heuristic,
        }
    }

    /// How long the response stays fresh from now by the `Last-Modified` heuristic, at most
    /// `cap`: the heuristic lifetime less the age it already has.
    pub(crate) fn heuristic_remaining(&self, cap: Duration) -> Option<Duration> {
        self.heuristic
            .map(|lifetime| lifetime.min(cap).saturating_sub(self.initial_age))
    }

    /// How long the response stays fresh from now: its lifetime less the age it already
    /// has (`None` when it gives no lifetime). Zero means stale on arrival.
    pub(crate) fn remaining(&self) -> Option<Duration> {
        self.lifetime
            .map(|lifetime| lifetime.saturating_sub(self.initial_age))
    }
}

/// RFC 9111 §4.2.1, for a shared cache: `s-maxage`, then `max-age`, then `Expires` less
/// `Date`. An invalid value of any of them means stale (a zero lifetime), as does an
/// `Expires` that is not a date (`Expires: 0`) or in the past (RFC 9111 §5.3). Dates are
/// read in the three forms of RFC 9110 §5.6.7 (see `http_date`).
fn lifetime(
    headers: &HeaderMap,
    directives: &ResponseDirectives,
    date: SystemTime,
) -> Option<Duration> {
    if let Some(delta) = directives.s_maxage.or(directives.max_age) {
        return Some(match delta {
            Delta::Secs(secs) => Duration::from_secs(secs),
            Delta::Invalid => Duration::ZERO,
        });
    }
    let expires = headers.get(EXPIRES)?;
    let expires = expires.to_str().ok().and_then(http_date::parse);
    Some(expires.map_or(Duration::ZERO, |expires| {
        expires.duration_since(date).unwrap_or(Duration::ZERO)
    }))
}

/// RFC 9111 §4.2.3: the larger of the age the clocks say (`received` − `Date`) and the
/// age upstream caches said (`Age`) plus the time the request took.
///
/// `Age` is read as RFC 9111 §5.1 says: of a list (`7200, 0`, or several field lines) the
/// first member counts; a value that is not a non-negative integer (`abc`, `-1`, `1.5`) is
/// ignored; one too large to represent counts as 2147483648.
fn initial_age(
    headers: &HeaderMap,
    date: Option<SystemTime>,
    requested: SystemTime,
    received: SystemTime,
) -> Duration {
    let apparent = date
        .and_then(|date| received.duration_since(date).ok())
        .unwrap_or(Duration::ZERO);
    let age_value = headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        // All digits: only an overflow fails to parse, and counts as the largest age.
        .map_or(Duration::ZERO, |v| {
            Duration::from_secs(v.parse::<u64>().map_or(1 << 31, |secs| secs.min(1 << 31)))
        });
    let delay = received.duration_since(requested).unwrap_or(Duration::ZERO);
    apparent.max(age_value + delay)
}

/// The first value of a date header, if it is a valid HTTP date (in any of the forms of
/// RFC 9110 §5.6.7).
pub(crate) fn first_date(headers: &HeaderMap, name: http::HeaderName) -> Option<SystemTime> {
    http_date::parse(headers.get(name)?.to_str().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::cache_control::response_directives;
    use http::HeaderValue;

    fn freshness(pairs: &[(&'static str, &str)], now: SystemTime) -> Freshness {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_str(v).expect("header value"));
        }
        Freshness::of(&h, &response_directives(&h), now, now)
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn s_maxage_then_max_age_then_expires() {
        let now = at(0);
        let date = httpdate::fmt_http_date(now);
        let expires = httpdate::fmt_http_date(at(120));
        let f = freshness(
            &[
                ("cache-control", "max-age=60, s-maxage=30"),
                ("expires", &expires),
            ],
            now,
        );
        assert_eq!(f.lifetime, Some(Duration::from_secs(30)));
        assert!(f.must_revalidate, "s-maxage implies proxy-revalidate");
        let f = freshness(
            &[("cache-control", "max-age=60"), ("expires", &expires)],
            now,
        );
        assert_eq!(f.lifetime, Some(Duration::from_secs(60)));
        assert!(!f.must_revalidate);
        let f = freshness(&[("date", &date), ("expires", &expires)], now);
        assert_eq!(f.lifetime, Some(Duration::from_secs(120)));
        assert_eq!(freshness(&[], now).lifetime, None);
    }

    #[test]
    fn invalid_or_past_expires_is_stale() {
        let now = at(0);
        let past = httpdate::fmt_http_date(at(0) - Duration::from_secs(10));
        for expires in ["0", "-1", "tomorrow", past.as_str()] {
            let f = freshness(&[("expires", expires)], now);
            assert_eq!(f.remaining(), Some(Duration::ZERO), "{expires}");
        }
        let f = freshness(&[("cache-control", "max-age=abc")], now);
        assert_eq!(f.remaining(), Some(Duration::ZERO));
    }

    #[test]
    fn the_received_age_is_taken_off() {
        let now = at(0);
        let f = freshness(&[("cache-control", "max-age=60"), ("age", "45")], now);
        assert_eq!(f.initial_age, Duration::from_secs(45));
        assert_eq!(f.remaining(), Some(Duration::from_secs(15)));
        let f = freshness(&[("cache-control", "max-age=60"), ("age", "600")], now);
        assert_eq!(f.remaining(), Some(Duration::ZERO));
        // A Date in the past counts as age too (the apparent age).
        let date = httpdate::fmt_http_date(at(0) - Duration::from_secs(20));
        let f = freshness(
            &[
                ("cache-control", "max-age=60"),
                ("date", &date),
                ("age", "5"),
            ],
            now,
        );
        assert_eq!(f.initial_age, Duration::from_secs(20));
    }

    #[test]
    fn age_lists_and_invalid_ages() {
        let now = at(0);
        let age = |v: &str| freshness(&[("age", v)], now).initial_age.as_secs();
        assert_eq!(age("7200, 0"), 7200);
        assert_eq!(age("0, 7200"), 0);
        for invalid in ["abc", "-7200", "7200.0", "7200;foo=bar", ""] {
            assert_eq!(age(invalid), 0, "{invalid}");
        }
        assert_eq!(age("2147483649"), 1 << 31);
        assert_eq!(age("99999999999999999999999"), 1 << 31);
        let mut h = HeaderMap::new();
        h.append("age", HeaderValue::from_static("7200"));
        h.append("age", HeaderValue::from_static("0"));
        let f = Freshness::of(&h, &response_directives(&h), now, now);
        assert_eq!(f.initial_age.as_secs(), 7200);
    }

    #[test]
    fn the_heuristic_is_a_tenth_of_the_time_since_last_modified() {
        let now = at(0);
        let date = httpdate::fmt_http_date(now);
        let modified = httpdate::fmt_http_date(at(0) - Duration::from_secs(86_400));
        let f = freshness(&[("date", &date), ("last-modified", &modified)], now);
        assert_eq!(f.lifetime, None);
        assert_eq!(f.heuristic, Some(Duration::from_secs(8_640)));
        let cap = Duration::from_secs(600);
        assert_eq!(f.heuristic_remaining(cap), Some(cap));
        assert_eq!(freshness(&[("date", &date)], now).heuristic, None);
        // Modified "after" its Date: no time to take a tenth of.
        let later = httpdate::fmt_http_date(at(60));
        let f = freshness(&[("date", &date), ("last-modified", &later)], now);
        assert_eq!(f.heuristic, Some(Duration::ZERO));
    }
}
