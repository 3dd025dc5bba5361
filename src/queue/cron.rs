//! 5-field cron expressions (minute hour day-of-month month day-of-week), in UTC.
//!
//! Each field is `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`, or a comma list of those;
//! months and weekdays also take three-letter names (`JAN`, `MON`). Day-of-week 0 and 7 are
//! Sunday. As in Vixie cron, when both day-of-month and day-of-week are restricted, a day matches
//! if either does.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_any: bool,
    weekdays_any: bool,
    text: String,
}

impl fmt::Debug for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cron({})", self.text)
    }
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

fn value(s: &str, lo: u32, hi: u32, names: &[&str], name_base: u32) -> Result<u32, String> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Ok(i as u32 + name_base);
    }
    let v: u32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v < lo || v > hi {
        return Err(format!("{v} is outside {lo}-{hi}"));
    }
    Ok(v)
}

/// Parses one field into a bit set; returns (bits, was `*`).
fn field(
    text: &str,
    lo: u32,
    hi: u32,
    names: &[&str],
    name_base: u32,
) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| format!("step `{s}` is not a number"))?;
                if step == 0 {
                    return Err("a step must be at least 1".into());
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                value(a, lo, hi, names, name_base)?,
                value(b, lo, hi, names, name_base)?,
            )
        } else {
            let v = value(range, lo, hi, names, name_base)?;
            (v, if part.contains('/') { hi } else { v })
        };
        if a > b {
            return Err(format!("range {a}-{b} is backwards"));
        }
        // A step past the field's end (`5/4294967295`) ends the walk, and cannot wrap it.
        let mut v = Some(a);
        while let Some(at) = v.filter(|at| *at <= b) {
            bits |= 1 << at;
            v = at.checked_add(step);
        }
    }
    Ok((bits, text == "*"))
}

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "cron `{text}`: expected 5 fields (minute hour day-of-month month day-of-week), got {}",
                fields.len()
            ));
        }
        let e = |name: &str, r: Result<(u64, bool), String>| {
            r.map_err(|m| format!("cron `{text}`: {name}: {m}"))
        };
        let (minutes, _) = e("minute", field(fields[0], 0, 59, &[], 0))?;
        let (hours, _) = e("hour", field(fields[1], 0, 23, &[], 0))?;
        let (days, days_any) = e("day-of-month", field(fields[2], 1, 31, &[], 0))?;
        let (months, _) = e("month", field(fields[3], 1, 12, &MONTHS, 1))?;
        let (mut weekdays, weekdays_any) = e("day-of-week", field(fields[4], 0, 7, &DAYS, 0))?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Cron {
            minutes,
            hours,
            days,
            months,
            weekdays,
            days_any,
            weekdays_any,
            text: fields.join(" "),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn day_matches(&self, day: u32, weekday: u32) -> bool {
        let d = self.days & (1 << day) != 0;
        let w = self.weekdays & (1 << weekday) != 0;
        match (self.days_any, self.weekdays_any) {
            (false, false) => d || w,
            _ => d && w,
        }
    }

    /// The first tick strictly after `after_ms` (ms since the epoch), or `None` if there is none
    /// within eight years (e.g. `0 0 31 2 *`).
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let mut minute = after_ms / 60_000 + 1; // minutes since the epoch
        let limit = minute + 8 * 366 * 1440;
        while minute < limit {
            let days = (minute / 1440) as i64;
            let (y, m, d) = civil_from_days(days);
            let weekday = ((days + 4).rem_euclid(7)) as u32; // 1970-01-01 was a Thursday
            if self.months & (1 << m) == 0 {
                // First minute of the next month.
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                minute = days_from_civil(ny, nm, 1) as u64 * 1440;
                continue;
            }
            if !self.day_matches(d, weekday) {
                minute = (days as u64 + 1) * 1440;
                continue;
            }
            let hour = ((minute % 1440) / 60) as u32;
            if self.hours & (1 << hour) == 0 {
                minute = (minute / 60 + 1) * 60;
                continue;
            }
            let min = (minute % 60) as u32;
            if self.minutes & (1 << min) == 0 {
                minute += 1;
                continue;
            }
            return Some(minute * 60_000);
        }
        None
    }
}

/// (year, month 1-12, day 1-31) of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::util::parse_time_ms;

    fn next(expr: &str, after: &str) -> String {
        let t = Cron::parse(expr)
            .unwrap()
            .next_after(parse_time_ms(after).unwrap())
            .unwrap();
        let days = (t / 86_400_000) as i64;
        let (y, m, d) = civil_from_days(days);
        let s = (t / 1000) % 86_400;
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}",
            s / 3600,
            (s % 3600) / 60
        )
    }

    #[test]
    fn next_ticks() {
        assert_eq!(
            next("* * * * *", "2025-06-15T12:00:00Z"),
            "2025-06-15T12:01"
        );
        assert_eq!(
            next("* * * * *", "2025-06-15T12:00:30Z"),
            "2025-06-15T12:01"
        );
        assert_eq!(
            next("*/15 * * * *", "2025-06-15T12:01:00Z"),
            "2025-06-15T12:15"
        );
        assert_eq!(
            next("0 9 * * MON-FRI", "2025-06-14T10:00:00Z"),
            "2025-06-16T09:00"
        ); // Sat → Mon
        assert_eq!(
            next("30 2 1 * *", "2025-12-15T00:00:00Z"),
            "2026-01-01T02:30"
        );
        assert_eq!(
            next("0 0 29 2 *", "2025-03-01T00:00:00Z"),
            "2028-02-29T00:00"
        );
        assert_eq!(
            next("0 0 * * 7", "2025-06-15T00:00:00Z"),
            "2025-06-22T00:00"
        ); // 7 = Sunday
           // Both day fields restricted: either matches (the 13th, or any Friday).
        assert_eq!(
            next("0 0 13 * FRI", "2025-06-01T00:00:00Z"),
            "2025-06-06T00:00"
        );
        assert_eq!(
            next("0 12 * JAN,jul *", "2025-06-15T00:00:00Z"),
            "2025-07-01T12:00"
        );
        assert!(Cron::parse("0 0 31 2 *").unwrap().next_after(0).is_none());
        // A step past the field's end takes its start only (it once wrapped to 0-5).
        assert_eq!(
            next("5/4294967295 * * * *", "2025-06-15T12:00:00Z"),
            "2025-06-15T12:05"
        );
    }

    #[test]
    fn bad_expressions() {
        for bad in [
            "",
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "*/0 * * * *",
            "5-1 * * * *",
            "a * * * *",
            "* * * * * *",
        ] {
            assert!(Cron::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn civil_round_trip() {
        for days in [-1000i64, 0, 59, 365, 10_000, 20_000, 100_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
