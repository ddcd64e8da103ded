//! Change windows: when sessions on the nodes with a tag are expected (weekdays 09:00-17:00
//! in a time zone, say). A session started on a node outside every window that applies to it
//! is announced (`session.outside_change_window`, in the audit log and so to webhooks); a
//! node no window applies to raises nothing.

use drover_store::alerts::ChangeWindow;
use drover_store::{NodeId, Store};
use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use jiff::Timestamp;

const DAYS: [(&str, Weekday); 7] = [
    ("mon", Weekday::Monday),
    ("tue", Weekday::Tuesday),
    ("wed", Weekday::Wednesday),
    ("thu", Weekday::Thursday),
    ("fri", Weekday::Friday),
    ("sat", Weekday::Saturday),
    ("sun", Weekday::Sunday),
];

/// A window's schedule, checked.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Bit `d` for `d` days after Monday.
    days: u8,
    /// Minutes after local midnight; an end at or before the start closes the next day.
    start: u16,
    end: u16,
    tz: TimeZone,
}

fn day_index(name: &str) -> Result<usize, String> {
    DAYS.iter()
        .position(|(n, _)| name.eq_ignore_ascii_case(n))
        .ok_or_else(|| format!("days: {name:?} is not a day (mon, tue, wed, thu, fri, sat, sun)"))
}

/// `mon-fri`, `mon,wed,fri`, `fri-mon` (wrapping), `daily`.
fn parse_days(text: &str) -> Result<u8, String> {
    let mut days = 0u8;
    if text.trim().eq_ignore_ascii_case("daily") {
        return Ok(0x7f);
    }
    for part in text.split(',').map(str::trim) {
        let (from, to) = match part.split_once('-') {
            Some((a, b)) => (day_index(a.trim())?, day_index(b.trim())?),
            None => {
                let d = day_index(part)?;
                (d, d)
            }
        };
        let mut d = from;
        loop {
            days |= 1 << d;
            if d == to {
                break;
            }
            d = (d + 1) % 7;
        }
    }
    Ok(days)
}

/// `HH:MM`, 00:00 to 24:00.
fn parse_time(what: &str, text: &str) -> Result<u16, String> {
    let bad = || format!("{what}: {text:?} is not a time of day (HH:MM, 00:00 to 24:00)");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    let digits = |t: &str| t.len() == 2 && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || !digits(m) {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 24 || m > 59 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl Schedule {
    /// Checks a window's fields; the error names the field that is wrong.
    pub fn parse(days: &str, start: &str, end: &str, timezone: &str) -> Result<Self, String> {
        let tz = TimeZone::get(timezone).map_err(|_| {
            format!("timezone: {timezone:?} is not a known time zone (an IANA name such as Europe/Berlin, or UTC)")
        })?;
        let start = parse_time("start", start)?;
        if start == 24 * 60 {
            return Err("start: 24:00 is the end of a day; start at 00:00".into());
        }
        Ok(Self {
            days: parse_days(days)?,
            start,
            end: parse_time("end", end)?,
            tz,
        })
    }

    pub fn of(w: &ChangeWindow) -> Result<Self, String> {
        Self::parse(&w.days, &w.start, &w.end, &w.timezone)
    }

    /// Whether the window is open at `at`.
    pub fn contains(&self, at: Timestamp) -> bool {
        let local = at.to_zoned_datetime(self.tz.clone());
        let today = local.weekday().to_monday_zero_offset();
        let yesterday = (today + 6) % 7;
        let on = |d: i8| self.days & (1 << d) != 0;
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        if self.start < self.end {
            on(today) && self.start <= minute && minute < self.end
        } else {
            // Past midnight: opened today, or opened yesterday and not closed yet.
            (on(today) && minute >= self.start) || (on(yesterday) && minute < self.end)
        }
    }
}

/// How a window reads in an alert: `cw-... (Environment=Production, mon-fri 09:00-17:00
/// Europe/Berlin)`.
pub fn describe(w: &ChangeWindow) -> String {
    format!(
        "{} ({}={}, {} {}-{} {})",
        w.id, w.tag_key, w.tag_value, w.days, w.start, w.end, w.timezone
    )
}

/// The windows that apply to the node, when `at` is outside all of them (and the node's
/// name); none when the node is inside one, or no window applies to it.
pub async fn outside(
    store: &dyn Store,
    node: &str,
    at: Timestamp,
) -> Result<(Vec<ChangeWindow>, String), drover_store::StoreError> {
    let none = || Ok((Vec::new(), String::new()));
    let windows = store.list_change_windows().await?;
    if windows.is_empty() {
        return none();
    }
    let Some(id) = NodeId::parse(node) else {
        return none();
    };
    let Some(node) = store.get_node(&id).await? else {
        return none();
    };
    let applying: Vec<ChangeWindow> = windows
        .into_iter()
        .filter(|w| node.tags.get(&w.tag_key) == Some(&w.tag_value))
        .collect();
    // A window stored by a newer or older server that this one cannot read counts as open:
    // better no alert than a false one on every session.
    let open = applying
        .iter()
        .any(|w| Schedule::of(w).map_or(true, |s| s.contains(at)));
    Ok(if open {
        (Vec::new(), node.name)
    } else {
        (applying, node.name)
    })
}

/// The alert for a session `actor` starts on `node` now, if it is outside the node's change
/// windows: what an operator reads in the audit log and the webhook.
pub async fn alert(store: &dyn Store, actor: &str, node: &str) -> Option<String> {
    match outside(store, node, Timestamp::now()).await {
        Ok((windows, _)) if windows.is_empty() => None,
        Ok((windows, name)) => {
            let names: Vec<String> = windows.iter().map(describe).collect();
            Some(format!(
                "{actor} started a session on {node} ({name}) outside its change window: {}",
                names.join("; ")
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, node, "could not check the node's change windows");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn office_hours_in_a_time_zone() {
        let s = Schedule::parse("mon-fri", "09:00", "17:00", "Europe/Berlin").unwrap();
        // Friday 27 November 2026: Berlin is UTC+1.
        assert!(s.contains(at("2026-11-27T08:00:00Z")), "09:00 Berlin");
        assert!(s.contains(at("2026-11-27T15:59:00Z")), "16:59 Berlin");
        assert!(!s.contains(at("2026-11-27T16:00:00Z")), "17:00 Berlin");
        assert!(!s.contains(at("2026-11-27T07:59:00Z")), "08:59 Berlin");
        assert!(!s.contains(at("2026-11-28T10:00:00Z")), "Saturday");
        // Summer time: Monday 6 July 2026, Berlin is UTC+2.
        assert!(
            s.contains(at("2026-07-06T07:00:00Z")),
            "09:00 Berlin in summer"
        );
        assert!(
            !s.contains(at("2026-07-06T06:30:00Z")),
            "08:30 Berlin in summer"
        );
    }

    #[test]
    fn overnight_windows_close_the_next_day() {
        let s = Schedule::parse("fri", "22:00", "06:00", "UTC").unwrap();
        assert!(s.contains(at("2026-11-27T23:00:00Z")), "Friday night");
        assert!(s.contains(at("2026-11-28T05:59:00Z")), "Saturday morning");
        assert!(!s.contains(at("2026-11-28T06:00:00Z")));
        assert!(!s.contains(at("2026-11-28T23:00:00Z")), "Saturday night");
        assert!(!s.contains(at("2026-11-27T05:00:00Z")), "Friday morning");
        let all_day = Schedule::parse("sat-sun", "00:00", "24:00", "UTC").unwrap();
        assert!(all_day.contains(at("2026-11-29T23:59:00Z")));
        assert!(!all_day.contains(at("2026-11-30T00:00:00Z")), "Monday");
    }

    #[test]
    fn days_wrap_and_bad_fields_are_named() {
        let s = Schedule::parse("sat-mon", "00:00", "24:00", "UTC").unwrap();
        assert_eq!(s.days, 0b110_0001);
        let s = Schedule::parse("Mon, wed ,fri", "00:00", "24:00", "UTC").unwrap();
        assert_eq!(s.days, 0b001_0101);
        for (days, start, end, tz, field) in [
            ("mon-fry", "09:00", "17:00", "UTC", "days"),
            ("", "09:00", "17:00", "UTC", "days"),
            ("mon", "9:00", "17:00", "UTC", "start"),
            ("mon", "+9:00", "17:00", "UTC", "start"),
            ("mon", "24:00", "17:00", "UTC", "start"),
            ("mon", "09:00", "17:60", "UTC", "end"),
            ("mon", "09:00", "24:01", "UTC", "end"),
            ("mon", "09:00", "17:00", "Mars/Olympus", "timezone"),
        ] {
            let err = Schedule::parse(days, start, end, tz).unwrap_err();
            assert!(err.starts_with(field), "{err}");
        }
    }
}
