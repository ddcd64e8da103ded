//! Association schedules in SSM's syntax: `rate(30 minutes)` and `cron(0 2 ? * SUN *)`
//! (minute, hour, day of month, month, day of week, year; UTC).

use std::str::FromStr;

use chrono::{TimeZone, Utc};
use croner::parser::{CronParser, Seconds, Year};

/// A parsed schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Every so many milliseconds, counted from the previous due time.
    Rate(i64),
    Cron(Box<croner::Cron>),
}

/// The shortest rate: a Drover extension to SSM (whose shortest is 30 minutes), so that
/// tests and labs need not wait; production schedules are minutes or more.
const MIN_RATE_MS: i64 = 1_000;
/// The longest: a year.
const MAX_RATE_MS: i64 = 366 * 86_400_000;

fn bad(s: &str, why: &str) -> String {
    format!(
        "invalid schedule {s:?}: {why} (use rate(N minutes|hours|days), or \
         cron(MINUTES HOURS DAY-OF-MONTH MONTH DAY-OF-WEEK YEAR) in UTC, like cron(0 2 ? * SUN *))"
    )
}

impl FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Some(body) = t.strip_prefix("rate(").and_then(|r| r.strip_suffix(')')) {
            let (n, unit) = body
                .trim()
                .split_once(' ')
                .ok_or_else(|| bad(s, "a rate is a number and a unit"))?;
            let n: i64 = n
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad(s, "the rate's number must be a whole number from 1"))?;
            let unit_ms = match unit.trim() {
                "second" | "seconds" => 1_000,
                "minute" | "minutes" => 60_000,
                "hour" | "hours" => 3_600_000,
                "day" | "days" => 86_400_000,
                other => return Err(bad(s, &format!("unknown unit {other:?}"))),
            };
            let ms = n.saturating_mul(unit_ms);
            if !(MIN_RATE_MS..=MAX_RATE_MS).contains(&ms) {
                return Err(bad(s, "a rate is from 1 second to 366 days"));
            }
            return Ok(Schedule::Rate(ms));
        }
        if let Some(body) = t.strip_prefix("cron(").and_then(|r| r.strip_suffix(')')) {
            let fields: Vec<&str> = body.split_whitespace().collect();
            if fields.len() != 6 {
                return Err(bad(s, "a cron expression has 6 fields"));
            }
            if fields.get(2) != Some(&"?") && fields.get(4) != Some(&"?") {
                return Err(bad(
                    s,
                    "one of day-of-month and day-of-week must be ? (as in SSM)",
                ));
            }
            let pattern = format!("0 {}", fields.join(" "));
            let cron = CronParser::builder()
                .seconds(Seconds::Required)
                .year(Year::Required)
                .alternative_weekdays(true)
                .build()
                .parse(&pattern)
                .map_err(|e| bad(s, &e.to_string()))?;
            let schedule = Schedule::Cron(Box::new(cron));
            if schedule.next_after(crate::audit::now_ms()).is_none() {
                return Err(bad(s, "it never runs again"));
            }
            return Ok(schedule);
        }
        Err(bad(s, "it is neither rate(...) nor cron(...)"))
    }
}

impl Schedule {
    /// The next due time after a run at `now_ms` of a tick due at `due_ms`. A rate keeps its
    /// phase while runs are on time; after missed ticks (the server was down), which fold into
    /// this one run, it counts a whole period from it, so that the next run is not a near
    /// double of this one. A cron takes its next match. None: a cron that never matches again.
    pub fn next_after_due(&self, due_ms: i64, now_ms: i64) -> Option<i64> {
        match self {
            Schedule::Rate(every) if now_ms.saturating_sub(due_ms) < *every => {
                Some(due_ms.saturating_add(*every).max(now_ms.saturating_add(1)))
            }
            Schedule::Rate(every) => Some(now_ms.saturating_add(*every)),
            Schedule::Cron(_) => self.next_after(now_ms),
        }
    }

    /// The first due time strictly after `now_ms`, counting a rate from `now_ms`.
    pub fn next_after(&self, now_ms: i64) -> Option<i64> {
        match self {
            Schedule::Rate(every) => Some(now_ms.saturating_add(*every)),
            Schedule::Cron(cron) => {
                let now = Utc.timestamp_millis_opt(now_ms).single()?;
                cron.find_next_occurrence(&now, false)
                    .ok()
                    .map(|t| t.timestamp_millis())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ms(rfc3339: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn rates_parse_and_fold_missed_ticks_into_one() {
        let s: Schedule = "rate(30 minutes)".parse().unwrap();
        assert!(matches!(s, Schedule::Rate(1_800_000)));
        // On time (or a little late): the phase is kept.
        assert_eq!(s.next_after_due(0, 10), Some(1_800_000));
        // Down for three and a half periods: one run now, the next a whole period after it.
        assert_eq!(s.next_after_due(0, 6_300_000), Some(8_100_000));
        assert!(matches!(
            "rate(1 day)".parse::<Schedule>().unwrap(),
            Schedule::Rate(86_400_000)
        ));
        for bad in [
            "rate(0 minutes)",
            "rate(5 weeks)",
            "rate(minutes)",
            "rate(-1 hours)",
            "rate(400 days)",
            "every 5 minutes",
            "rate(5 minutes",
        ] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn crons_use_ssm_fields_in_utc() {
        // Sundays at 02:00; 2026-11-28 is a Saturday.
        let s: Schedule = "cron(0 2 ? * SUN *)".parse().unwrap();
        assert_eq!(
            s.next_after(ms("2026-11-28T12:00:00Z")),
            Some(ms("2026-11-29T02:00:00Z"))
        );
        // Day of week 1 is Sunday, as in SSM and Quartz.
        let s: Schedule = "cron(30 4 ? * 1 *)".parse().unwrap();
        assert_eq!(
            s.next_after(ms("2026-11-28T12:00:00Z")),
            Some(ms("2026-11-29T04:30:00Z"))
        );
        let s: Schedule = "cron(0/15 * * * ? *)".parse().unwrap();
        assert_eq!(
            s.next_after(ms("2026-11-28T12:07:00Z")),
            Some(ms("2026-11-28T12:15:00Z"))
        );
        // A cron folds missed ticks too: the next match after now.
        assert_eq!(
            s.next_after_due(ms("2026-11-28T10:00:00Z"), ms("2026-11-28T12:07:00Z")),
            Some(ms("2026-11-28T12:15:00Z"))
        );
        for bad in [
            "cron(0 2 * * SUN *)",
            "cron(0 2 ? * SUN)",
            "cron(61 2 ? * SUN *)",
            "cron(0 2 ? * SUN 2001)",
        ] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad}");
        }
    }
}
