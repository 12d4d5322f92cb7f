//! HTTP dates as RFC 9110 §5.6.7 asks a recipient to read them: the preferred
//! IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) and the two obsolete forms, RFC 850
//! (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime (`Sun Nov  6 08:49:37 1994`).
//!
//! Names (weekday, month, `GMT`) are read case-insensitively, and the weekday is not
//! checked against the date: both are mistakes origins make that carry no ambiguity, and
//! the caches most deployed (nginx, httpd, Squid, ATS) read them. The shape is strict
//! otherwise (one space between fields, two-digit hours, a four-digit year in the
//! preferred form, `GMT` only), so that a date a recipient cannot be sure of counts as
//! invalid — for `Expires`, already expired (RFC 9111 §5.3).

use std::time::{Duration, SystemTime};

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const DAYS_LONG: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// Parses an HTTP date in any of the three forms; `None` when it is none of them.
pub(crate) fn parse(value: &str) -> Option<SystemTime> {
    let value = value.trim();
    let (day_name, rest) = match value.split_once(", ") {
        Some((name, rest)) => (name, Some(rest)),
        None => (value.get(..3)?, None),
    };
    match rest {
        Some(rest) if is_one_of(day_name, &DAYS) => imf_fixdate(rest),
        Some(rest) if is_one_of(day_name, &DAYS_LONG) => rfc850(rest),
        Some(_) => None,
        None if is_one_of(day_name, &DAYS) => asctime(value.get(3..)?),
        None => None,
    }
}

fn is_one_of(name: &str, names: &[&str]) -> bool {
    names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// `06 Nov 1994 08:49:37 GMT`
fn imf_fixdate(rest: &str) -> Option<SystemTime> {
    let mut parts = rest.split(' ');
    let day = digits(parts.next()?, 2)?;
    let month = month(parts.next()?)?;
    let year = digits(parts.next()?, 4)?;
    let time = time(parts.next()?)?;
    gmt(parts.next()?)?;
    parts.next().is_none().then_some(())?;
    at(year, month, day, time)
}

/// `06-Nov-94 08:49:37 GMT`; a two-digit year more than 50 years ahead is in the past
/// century (RFC 9110 §5.6.7).
fn rfc850(rest: &str) -> Option<SystemTime> {
    let mut parts = rest.split(' ');
    let mut date = parts.next()?.split('-');
    let day = digits(date.next()?, 2)?;
    let month = month(date.next()?)?;
    let yy = digits(date.next()?, 2)?;
    date.next().is_none().then_some(())?;
    let time = time(parts.next()?)?;
    gmt(parts.next()?)?;
    parts.next().is_none().then_some(())?;
    let this_year = civil_year(SystemTime::now());
    let mut year = this_year - this_year % 100 + yy;
    if year > this_year + 50 {
        year -= 100;
    }
    at(year, month, day, time)
}

/// After the weekday: ` Nov  6 08:49:37 1994` (the day padded with a space).
fn asctime(rest: &str) -> Option<SystemTime> {
    let rest = rest.strip_prefix(' ')?;
    let month = month(rest.get(..3)?)?;
    let rest = rest.get(3..)?.strip_prefix(' ')?;
    let (day, rest) = match rest.strip_prefix(' ') {
        Some(rest) => (digits(rest.get(..1)?, 1)?, rest.get(1..)?),
        None => (digits(rest.get(..2)?, 2)?, rest.get(2..)?),
    };
    let mut parts = rest.strip_prefix(' ')?.split(' ');
    let time = time(parts.next()?)?;
    let year = digits(parts.next()?, 4)?;
    parts.next().is_none().then_some(())?;
    at(year, month, day, time)
}

/// Exactly `len` ASCII digits.
fn digits(s: &str, len: usize) -> Option<u64> {
    (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn month(s: &str) -> Option<u64> {
    MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(s))
        .map(|i| i as u64 + 1)
}

fn gmt(s: &str) -> Option<()> {
    s.eq_ignore_ascii_case("gmt").then_some(())
}

/// `HH:MM:SS`, as seconds into the day (a leap second's `60` allowed).
fn time(s: &str) -> Option<u64> {
    let mut parts = s.split(':');
    let h = digits(parts.next()?, 2)?;
    let m = digits(parts.next()?, 2)?;
    let sec = digits(parts.next()?, 2)?;
    (parts.next().is_none() && h < 24 && m < 60 && sec <= 60).then_some(h * 3600 + m * 60 + sec)
}

/// The instant of a date and time of day, `None` before 1970 or for a day the month does
/// not have.
fn at(year: u64, month: u64, day: u64, secs: u64) -> Option<SystemTime> {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if year < 1970 || day == 0 || day > days_in_month {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(days * 86_400 + secs))
}

/// Days from 1970-01-01 to a date on or after it (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The year of an instant (for RFC 850's two-digit years).
fn civil_year(t: SystemTime) -> u64 {
    let days = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    // Hinnant's `civil_from_days`, the year only.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    yoe + era * 400 + u64::from(month <= 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(value: &str) -> Option<u64> {
        parse(value).map(|t| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .expect("after 1970")
                .as_secs()
        })
    }

    #[test]
    fn the_three_forms_name_the_same_instant() {
        let expected = Some(784_111_777);
        assert_eq!(secs("Sun, 06 Nov 1994 08:49:37 GMT"), expected);
        assert_eq!(secs("Sunday, 06-Nov-94 08:49:37 GMT"), expected);
        assert_eq!(secs("Sun Nov  6 08:49:37 1994"), expected);
        assert_eq!(
            parse("Sun, 06 Nov 1994 08:49:37 GMT"),
            httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").ok()
        );
    }

    #[test]
    fn names_in_any_case_and_a_wrong_weekday() {
        let expected = secs("Thu, 18 Aug 2050 02:01:18 GMT");
        assert!(expected.is_some());
        for v in [
            "THU, 18 Aug 2050 02:01:18 GMT",
            "Thu, 18 AUG 2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02:01:18 gMT",
            "Mon, 18 Aug 2050 02:01:18 GMT",
        ] {
            assert_eq!(secs(v), expected, "{v}");
        }
        // 8 Aug 2050 is a Monday.
        assert!(parse("Thu Aug  8 02:01:18 2050").is_some());
        assert!(parse("Tue, 19 Jan 2038 14:14:08 GMT").is_some());
        assert!(parse("Sun, 21 Nov 2286 04:46:39 GMT").is_some());
    }

    #[test]
    fn other_shapes_are_invalid() {
        for v in [
            "Thu, 18 Aug 2050 02:01:18 UTC",
            "Thu, 18 Aug 2050 02:01:18 AEST",
            "Thu, 18 Aug 50 02:01:18 GMT",
            "Thu 18 Aug 2050 02:01:18 GMT",
            "Thu, 18  Aug  2050 02:01:18 GMT",
            "Thu, 18-Aug-2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02.01.18 GMT",
            "Thu, 18 Aug 2050 2:01:18 GMT",
            "Thu, 31 Feb 2050 02:01:18 GMT",
            "0",
            "-1",
            "",
            "tomorrow",
        ] {
            assert_eq!(parse(v), None, "{v}");
        }
    }
}
