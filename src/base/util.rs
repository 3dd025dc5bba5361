//! Small parsers shared by the domains and the HTTP layer.

use crate::base::invalid::Invalid;

/// Longest duration accepted from outside (100 years, in ms). Every duration a client sends
/// (TTLs, delays, leases, retention, waits) is bounded by it at the door, so every time derived
/// from one (`now + ttl`) stays far inside what the read paths can render (an HTTP date ends at
/// year 9999).
pub const DURATION_MS_MAX: u64 = 100 * 365 * 86_400_000 + 25 * 86_400_000;

pub use super::limits::JSON_DEPTH_MAX;

/// Parses a duration: `30s`, `250ms`, `5m`, `2h`, `7d`, or plain seconds (`30`). Returns ms.
/// Rejects zero-free garbage, negative numbers and values that overflow.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, mult): (&str, u64) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3_600_000)
    } else if let Some(n) = t.strip_suffix('d') {
        (n, 86_400_000)
    } else {
        (t, 1000)
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) || num.len() > 15 {
        return Err(format!(
            "`{text}` is not a duration: use a whole number with a unit, e.g. 30s, 250ms, 5m, 2h, 7d"
        ));
    }
    let too_large = || format!("`{text}` is too large: durations are limited to 100 years");
    let n: u64 = num.parse().map_err(|_| too_large())?;
    match n.checked_mul(mult) {
        Some(ms) if ms <= DURATION_MS_MAX => Ok(ms),
        _ => Err(too_large()),
    }
}

/// The nesting depth of a JSON text (0 for a scalar), counting brackets outside strings. The
/// text is assumed to be valid JSON (callers parse it first).
pub fn json_depth(text: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for &b in text {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Checks a JSON document a domain is about to store (job and schedule payloads, event data):
/// valid JSON, at most [`JSON_DEPTH_MAX`] deep. The same rule the replies rely on to embed it
/// verbatim; the error names `what`.
pub fn check_stored_json(what: &'static str, text: &[u8]) -> Result<(), Invalid> {
    // IgnoredAny walks the document without recursion, so any depth is safe to validate.
    serde_json::from_slice::<serde::de::IgnoredAny>(text).map_err(|e| Invalid::Json {
        what,
        detail: e.to_string(),
    })?;
    check_json_depth(what, text)
}

/// JSON text on one line, so NDJSON and SSE output stay well-formed. In valid JSON a raw CR or
/// LF can only be whitespace (inside strings they are escaped), so replacing them with spaces
/// changes nothing else: key order, duplicates and numbers stay as sent.
pub fn one_line(json: &str) -> std::borrow::Cow<'_, str> {
    if json.contains(['\n', '\r']) {
        std::borrow::Cow::Owned(json.replace(['\n', '\r'], " "))
    } else {
        std::borrow::Cow::Borrowed(json)
    }
}

/// Checks that a stored JSON document stays within [`JSON_DEPTH_MAX`]; the error names `what`.
pub fn check_json_depth(what: &'static str, text: &[u8]) -> Result<(), Invalid> {
    let depth = json_depth(text);
    if depth > JSON_DEPTH_MAX {
        return Err(Invalid::JsonDepth { what, depth });
    }
    Ok(())
}

/// `when` in RFC 3339, UTC, to the millisecond: `2026-12-04T21:33:48.123Z` (times before the
/// epoch show as the epoch).
pub fn rfc3339_ms(when: std::time::SystemTime) -> String {
    let ms = when
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let (days, rest) = ((ms / 86_400_000) as i64, ms % 86_400_000);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000
    )
}

/// An HTTP date (RFC 9110 IMF-fixdate) for `ms` since the epoch, or `None` past year 9999,
/// which the format cannot express. Never panics, whatever is stored.
pub fn http_date(ms: u64) -> Option<String> {
    /// 10000-01-01T00:00:00Z in ms.
    const YEAR_10000_MS: u64 = 253_402_300_800_000;
    if ms >= YEAR_10000_MS {
        return None;
    }
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    Some(httpdate::fmt_http_date(when))
}

/// Parses a time given as milliseconds since the epoch (`1750000000000`) or RFC 3339
/// (`2025-06-15T12:00:00Z`, `2025-06-15T12:00:00.250+02:00`). Returns ms since the epoch.
pub fn parse_time_ms(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map_err(|_| format!("`{text}` is too large"));
    }
    parse_rfc3339_ms(t).ok_or_else(|| {
        format!(
            "`{text}` is not a time: use ms since the epoch or RFC 3339 like 2025-06-15T12:00:00Z"
        )
    })
}

fn parse_rfc3339_ms(t: &str) -> Option<u64> {
    let b = t.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = t.get(r)?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut ms = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &t[start..i.min(start + 3)];
        ms = frac.parse::<i64>().ok()? * 10i64.pow(3 - frac.len() as u32);
    }
    let offset_min = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let m = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if *sign == b'+' {
                m
            } else {
                -m
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_min * 60;
    u64::try_from(secs * 1000 + ms).ok()
}

/// Allowed stream bucket widths.
pub const BUCKET_WIDTHS: [(&str, u64); 4] = [
    ("1h", 3_600_000),
    ("1d", 86_400_000),
    ("7d", 7 * 86_400_000),
    ("30d", 30 * 86_400_000),
];

/// Parses a bucket width: `1h`, `1d`, `7d`, `30d`, in ms.
pub fn parse_bucket_ms(text: &str) -> Result<u64, Invalid> {
    BUCKET_WIDTHS
        .iter()
        .find(|(n, _)| *n == text)
        .map(|(_, ms)| *ms)
        .ok_or_else(|| Invalid::BucketWidth {
            got: text.to_string(),
        })
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// A page of a listing by name: `fetch` of each name of the sorted `names` after `after` (a
/// name `fetch` no longer finds is skipped) until `limit` are found, and the cursor of the
/// next page — the page's last name — when names are left. Only the page's names are fetched.
pub fn page_by_name<T, E>(
    names: Vec<String>,
    after: Option<&str>,
    limit: usize,
    mut fetch: impl FnMut(&str) -> Result<Option<T>, E>,
) -> Result<(Vec<T>, Option<String>), E> {
    let after = after.unwrap_or("");
    let mut out = Vec::new();
    let mut last = None;
    for n in names.into_iter().filter(|n| n.as_str() > after) {
        if out.len() == limit {
            return Ok((out, last));
        }
        if let Some(item) = fetch(&n)? {
            out.push(item);
            last = Some(n);
        }
    }
    Ok((out, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_the_inverse_of_parsing() {
        let at = |ms| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        assert_eq!(rfc3339_ms(at(0)), "1970-01-01T00:00:00.000Z");
        for ms in [1_709_164_800_000, 1_749_988_800_250, 951_782_400_999, 4_102_444_799_999] {
            assert_eq!(parse_time_ms(&rfc3339_ms(at(ms))), Ok(ms), "{ms}");
        }
    }

    #[test]
    fn times() {
        assert_eq!(parse_time_ms("1750000000000"), Ok(1_750_000_000_000));
        assert_eq!(parse_time_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time_ms("2025-06-15T12:00:00Z"), Ok(1_749_988_800_000));
        assert_eq!(
            parse_time_ms("2025-06-15T14:00:00.25+02:00"),
            Ok(1_749_988_800_250)
        );
        assert_eq!(parse_time_ms("2024-02-29T00:00:00Z"), Ok(1_709_164_800_000));
        for bad in [
            "",
            "2025-13-01T00:00:00Z",
            "2025-06-15",
            "2025-06-15T12:00:00",
            "yesterday",
            "2025-06-15T12:00:00.Z",
        ] {
            assert!(parse_time_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("30"), Ok(30_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("2h"), Ok(7_200_000));
        assert_eq!(parse_duration_ms("1d"), Ok(86_400_000));
        for bad in [
            "",
            "s",
            "-1s",
            "1.5s",
            "abc",
            "1w",
            "99999999999999999d",
            "3000000d",
        ] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration_ms("36500d"), Ok(36_500 * 86_400_000));
    }

    #[test]
    fn json_depths() {
        assert_eq!(json_depth(b"1"), 0);
        assert_eq!(json_depth(br#"{"a":[1,{"b":"]]]{{"}]}"#), 3);
        assert_eq!(json_depth(br#"["\"]["]"#), 1);
        assert_eq!(json_depth(br#"["\\",[]]"#), 2);
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(check_json_depth("payload", deep.as_bytes()).is_err());
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(check_json_depth("payload", ok.as_bytes()).is_ok());
    }

    #[test]
    fn http_dates_never_panic() {
        assert_eq!(
            http_date(0).as_deref(),
            Some("Thu, 01 Jan 1970 00:00:00 GMT")
        );
        assert!(http_date(253_402_300_799_000).is_some());
        assert_eq!(http_date(253_402_300_800_000), None);
        assert_eq!(http_date(u64::MAX), None);
        // The furthest expiry a TTL can produce from any plausible clock still renders.
        assert!(http_date(4_102_444_800_000 + DURATION_MS_MAX).is_some());
    }
}
