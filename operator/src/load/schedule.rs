//! `spec.schedule` of a CacheLoad: a five-field cron expression (minute hour day-of-month month
//! day-of-week, UTC) and the next time it fires. Fields take `*`, numbers, ranges `a-b`, lists
//! `a,b` and steps `*/n` or `a-b/n`; day-of-week 0 or 7 is Sunday; names (`mon`, `jan`) are
//! accepted. As in cron, when both day fields are restricted a day matching either fires.

use k8s_openapi::jiff::civil::DateTime;
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{Span, Timestamp, ToSpan};

/// A parsed schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_any: bool,
    weekdays_any: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(text: &str, min: u32, max: u32, names: &[&str], field: &str) -> Result<u32, String> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        return Ok(i as u32 + min);
    }
    let v: u32 = text
        .parse()
        .map_err(|_| format!("{field}: {text:?} is not a number"))?;
    if v < min || v > max {
        return Err(format!("{field}: {v} is outside {min}-{max}"));
    }
    Ok(v)
}

/// The bits of one field; `true` with it when the field is `*` (or `*/1`).
fn field(
    text: &str,
    min: u32,
    max: u32,
    names: &[&str],
    name: &str,
) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .ok()
                    .filter(|&s| s > 0)
                    .ok_or_else(|| format!("{name}: step {s:?} must be a positive number"))?;
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (
                value(a, min, max, names, name)?,
                value(b, min, max, names, name)?,
            );
            if a > b {
                return Err(format!("{name}: range {range:?} runs backwards"));
            }
            (a, b)
        } else {
            let v = value(range, min, max, names, name)?;
            (v, if part.contains('/') { max } else { v })
        };
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, text == "*" || text == "*/1"))
}

impl Schedule {
    /// Parses `expr`; the error names the field and what is accepted.
    pub fn parse(expr: &str) -> Result<Schedule, String> {
        let f: Vec<&str> = expr.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!(
                "{expr:?} has {} fields; a schedule has five: minute hour day-of-month month day-of-week, e.g. '0 2 * * *'",
                f.len()
            ));
        }
        let (minutes, _) = field(f[0], 0, 59, &[], "minute")?;
        let (hours, _) = field(f[1], 0, 23, &[], "hour")?;
        let (days, days_any) = field(f[2], 1, 31, &[], "day-of-month")?;
        let (months, _) = field(f[3], 1, 12, &MONTHS, "month")?;
        let (mut weekdays, weekdays_any) = field(f[4], 0, 7, &WEEKDAYS, "day-of-week")?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1; // 7 is Sunday too
        }
        Ok(Schedule {
            minutes,
            hours,
            days,
            months,
            weekdays,
            days_any,
            weekdays_any,
        })
    }

    fn day_matches(&self, dt: &DateTime) -> bool {
        let dom = self.days & (1 << dt.day()) != 0;
        let dow = self.weekdays & (1 << dt.weekday().to_sunday_zero_offset()) != 0;
        match (self.days_any, self.weekdays_any) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        }
    }

    /// The first firing strictly after `after`, within five years (`None`: never, e.g. `0 0 30
    /// 2 *`).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let start = after.to_zoned(TimeZone::UTC).datetime();
        // The next whole minute.
        let mut dt = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let limit = start.checked_add(Span::new().years(5)).ok()?;
        while dt < limit {
            if self.months & (1 << dt.month()) == 0 || !self.day_matches(&dt) {
                // Next day at 00:00.
                dt = dt
                    .date()
                    .checked_add(1.day())
                    .ok()?
                    .to_datetime(Default::default());
                continue;
            }
            if self.hours & (1 << dt.hour()) == 0 {
                dt = dt
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if self.minutes & (1 << dt.minute()) != 0 {
                return dt.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp());
            }
            dt = dt.checked_add(1.minute()).ok()?;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(expr: &str, after: &str) -> String {
        Schedule::parse(expr)
            .unwrap()
            .next_after(at(after))
            .map(|t| t.to_string())
            .unwrap_or_else(|| "never".into())
    }

    #[test]
    fn daily_hourly_and_stepped_schedules_fire_at_the_next_match() {
        assert_eq!(
            next("0 2 * * *", "2026-12-06T03:00:00Z"),
            "2026-12-07T02:00:00Z"
        );
        assert_eq!(
            next("0 2 * * *", "2026-12-06T01:59:30Z"),
            "2026-12-06T02:00:00Z"
        );
        assert_eq!(
            next("*/15 * * * *", "2026-12-06T03:14:59Z"),
            "2026-12-06T03:15:00Z"
        );
        assert_eq!(
            next("*/15 * * * *", "2026-12-06T03:15:00Z"),
            "2026-12-06T03:30:00Z"
        );
        assert_eq!(
            next("30 9-17/4 * * *", "2026-12-06T10:00:00Z"),
            "2026-12-06T13:30:00Z"
        );
        assert_eq!(
            next("0 0 1 jan *", "2026-12-06T00:00:00Z"),
            "2027-01-01T00:00:00Z"
        );
    }

    #[test]
    fn day_of_week_names_and_seven_are_sunday_and_either_day_field_fires() {
        // 2026-12-06 is a Sunday.
        assert_eq!(
            next("0 8 * * mon", "2026-12-06T09:00:00Z"),
            "2026-12-07T08:00:00Z"
        );
        assert_eq!(
            next("0 8 * * 7", "2026-12-05T09:00:00Z"),
            "2026-12-06T08:00:00Z"
        );
        assert_eq!(
            next("0 8 15 * mon", "2026-12-08T09:00:00Z"),
            "2026-12-14T08:00:00Z"
        );
    }

    #[test]
    fn an_impossible_date_never_fires() {
        assert_eq!(next("0 0 30 2 *", "2026-12-06T00:00:00Z"), "never");
    }

    #[test]
    fn bad_schedules_are_refused_naming_the_field() {
        let e = |s: &str| Schedule::parse(s).unwrap_err();
        assert!(e("0 2 * *").contains("five"), "{}", e("0 2 * *"));
        assert!(e("60 * * * *").contains("minute: 60 is outside 0-59"));
        assert!(e("* 5-2 * * *").contains("hour: range \"5-2\" runs backwards"));
        assert!(e("*/0 * * * *").contains("minute: step"));
        assert!(e("* * * foo *").contains("month: \"foo\" is not a number"));
    }
}
