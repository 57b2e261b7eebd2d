//! Schedules: `every minute|hour|day`, a 5-field Unix crontab, or a 6/7-field expression with
//! seconds (the `cron` crate's own form), in a time zone.
//!
//! A 5-field crontab (`min hour day-of-month month day-of-week`) means what it means to Vixie
//! cron (crontab(5), cronie), which the `cron` crate alone does not:
//!
//! - **Day of month or day of week.** When both are restricted (neither field starts with `*`),
//!   a tick matches when *either* does: `0 0 1,15 * 1` is the 1st, the 15th and every Monday.
//! - Day-of-week numbers: Unix counts Sunday as 0 (or 7), the `cron` crate as 1; they are
//!   translated, ranges and steps keeping their meaning (`1-5` is Monday to Friday).
//!
//! **Daylight saving time**, for every form (ticks are wall-clock times in the zone):
//!
//! - A *fixed-time* schedule (neither its minute nor its hour field starts with `*`: daily,
//!   weekly...) whose time falls in the hour skipped in spring ticks once, at the change; in the
//!   hour repeated in autumn, it ticks once, the first time. A daily task is never skipped and
//!   never doubled.
//! - A *wall-clock* schedule (minute or hour starts with `*`: every minute, every hour...)
//!   follows the clock: times that do not exist are not ticks, times that happen twice are two.

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use std::str::FromStr;

/// How far a daylight-saving change moves the clock, at most (with margin).
const MAX_SHIFT: TimeDelta = TimeDelta::hours(3);

/// When a task runs.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// As the operator or the manifest wrote it.
    pub text: String,
    /// Tick candidates as wall-clock times (evaluated on naive times posing as UTC); more than
    /// one when either of several alternatives matches (day of month or day of week).
    alternatives: Vec<cron::Schedule>,
    /// Whether the schedule follows the wall clock through daylight-saving changes.
    wall_clock: bool,
    zone: Tz,
}

impl Schedule {
    /// Parses `text` in time zone `zone` (an IANA name such as `Europe/Paris`, or `UTC`).
    pub fn parse(text: &str, zone: &str) -> Result<Self, String> {
        let zone = Tz::from_str(zone).map_err(|_| format!("`{zone}` is not a time zone"))?;
        let not_a_schedule = || {
            format!(
                "`{text}` is not a schedule (`every minute|hour|day`, 5 crontab fields, or 6/7 fields with seconds)"
            )
        };
        let crontab_text = match text.trim() {
            "every minute" => "* * * * *".to_owned(),
            "every hour" => "0 * * * *".to_owned(),
            "every day" => "0 0 * * *".to_owned(),
            other => other.to_owned(),
        };
        let fields: Vec<&str> = crontab_text.split_whitespace().collect();
        let (expressions, minute, hour) = match fields.len() {
            5 => (crontab(&fields)?, fields[0], fields[1]),
            6 | 7 => (vec![fields.join(" ")], fields[1], fields[2]),
            _ => return Err(not_a_schedule()),
        };
        let alternatives = expressions
            .iter()
            .map(|e| cron::Schedule::from_str(e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("`{text}` is not a schedule: {e}"))?;
        Ok(Self {
            text: text.to_owned(),
            alternatives,
            wall_clock: minute.starts_with('*') || hour.starts_with('*'),
            zone,
        })
    }

    /// The time zone's IANA name.
    pub fn zone(&self) -> &'static str {
        self.zone.name()
    }

    /// The first tick strictly after `t`, if the schedule has one.
    pub fn after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Candidates start early enough that one moved by a clock change is not missed; the
        // first instant after `t` is found once candidates are past it by more than any shift.
        let local = t.with_timezone(&self.zone).naive_local();
        let mut best: Option<DateTime<Utc>> = None;
        for candidate in self.candidates(local - MAX_SHIFT) {
            if best.is_some_and(|best| {
                candidate > best.with_timezone(&self.zone).naive_local() + MAX_SHIFT
            }) {
                break;
            }
            for instant in self.instants(candidate) {
                if instant > t && best.is_none_or(|best| instant < best) {
                    best = Some(instant);
                }
            }
        }
        best
    }

    /// Every tick strictly after `t`, in order.
    pub fn ticks_after(&self, t: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        std::iter::successors(self.after(t), |tick| self.after(*tick))
    }

    /// Wall-clock times matching any alternative, strictly after `from`, in order.
    fn candidates(&self, from: NaiveDateTime) -> impl Iterator<Item = NaiveDateTime> + '_ {
        let from = Utc.from_utc_datetime(&from);
        let mut streams: Vec<_> = self
            .alternatives
            .iter()
            .map(|cron| cron.after(&from).peekable())
            .collect();
        std::iter::from_fn(move || {
            let next = streams
                .iter_mut()
                .filter_map(|stream| stream.peek().copied())
                .min()?;
            for stream in &mut streams {
                if stream.peek() == Some(&next) {
                    stream.next();
                }
            }
            Some(next.naive_utc())
        })
    }

    /// The instants a wall-clock tick stands for in the zone (see the module docs).
    fn instants(&self, tick: NaiveDateTime) -> Vec<DateTime<Utc>> {
        match self.zone.from_local_datetime(&tick) {
            LocalResult::Single(t) => vec![t.with_timezone(&Utc)],
            LocalResult::Ambiguous(first, second) if self.wall_clock => {
                vec![first.with_timezone(&Utc), second.with_timezone(&Utc)]
            }
            LocalResult::Ambiguous(first, _) => vec![first.with_timezone(&Utc)],
            LocalResult::None if self.wall_clock => Vec::new(),
            // In the skipped hour: the first instant after the change.
            LocalResult::None => self.change_after(tick).into_iter().collect(),
        }
    }

    /// The first instant whose wall-clock time exists after the nonexistent `tick`.
    fn change_after(&self, tick: NaiveDateTime) -> Option<DateTime<Utc>> {
        let mut minute = tick
            .checked_add_signed(TimeDelta::minutes(1))?
            .with_second(0)?;
        for _ in 0..MAX_SHIFT.num_minutes() {
            if let Some(t) = self.zone.from_local_datetime(&minute).earliest() {
                return Some(t.with_timezone(&Utc));
            }
            minute += TimeDelta::minutes(1);
        }
        None
    }
}

/// A 5-field Unix crontab in the `cron` crate's 6-field form: one expression, or two (day of
/// month, day of week) when both days are restricted and either matching is enough.
fn crontab(fields: &[&str]) -> Result<Vec<String>, String> {
    let [minute, hour, day_of_month, month, day_of_week] = fields else {
        return Err(format!("`{}` has not 5 fields", fields.join(" ")));
    };
    let day_of_week = day_of_week
        .split(',')
        .map(unix_day_of_week)
        .collect::<Result<Vec<_>, _>>()?
        .join(",");
    let expression = |dom: &str, dow: &str| format!("0 {minute} {hour} {dom} {month} {dow}");
    Ok(
        if day_of_month.starts_with('*') || fields[4].starts_with('*') {
            vec![expression(day_of_month, &day_of_week)]
        } else {
            vec![expression(day_of_month, "*"), expression("*", &day_of_week)]
        },
    )
}

/// One item of a Unix day-of-week list (`*`, `n`, `n-m`, with an optional `/step`, or a name)
/// with Sunday as 1 instead of 0 or 7.
fn unix_day_of_week(item: &str) -> Result<String, String> {
    let (base, step) = match item.split_once('/') {
        Some((base, step)) => (base, Some(step)),
        None => (item, None),
    };
    let day = |n: &str| -> Result<u8, String> {
        match n.parse::<u8>() {
            Ok(n @ 0..=7) => Ok(n % 7 + 1),
            _ => Err(format!("`{n}` is not a day of the week (0-7)")),
        }
    };
    let numeric = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    let base = match base.split_once('-') {
        // A range ending on Sunday as 7 wraps: list its days instead.
        Some((from, "7")) if numeric(from) && step.is_none() => {
            let from = from.parse::<u8>().map_err(|e| e.to_string())?;
            return Ok((from..=7)
                .map(|d| (d % 7 + 1).to_string())
                .collect::<Vec<_>>()
                .join(","));
        }
        Some((from, to)) if numeric(from) && numeric(to) => format!("{}-{}", day(from)?, day(to)?),
        None if numeric(base) => day(base)?.to_string(),
        _ => base.to_owned(),
    };
    Ok(match step {
        Some(step) => format!("{base}/{step}"),
        None => base,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Datelike;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    fn next(text: &str, zone: &str, t: DateTime<Utc>) -> DateTime<Utc> {
        Schedule::parse(text, zone).unwrap().after(t).unwrap()
    }

    #[test]
    fn every_minute_hour_and_day() {
        let t = at(2024, 1, 2, 3, 4, 5);
        assert_eq!(next("every minute", "UTC", t), at(2024, 1, 2, 3, 5, 0));
        assert_eq!(next("every hour", "UTC", t), at(2024, 1, 2, 4, 0, 0));
        assert_eq!(next("every day", "UTC", t), at(2024, 1, 3, 0, 0, 0));
        assert_eq!(
            next("every minute", "UTC", at(2024, 1, 2, 3, 5, 0)),
            at(2024, 1, 2, 3, 6, 0),
            "strictly after"
        );
    }

    #[test]
    fn unix_crontabs_keep_their_meaning() {
        // 2024-01-06 is a Saturday.
        let saturday = at(2024, 1, 6, 12, 0, 0);
        assert_eq!(
            next("30 3 * * *", "UTC", saturday),
            at(2024, 1, 7, 3, 30, 0)
        );
        assert_eq!(
            next("0 9 * * 1-5", "UTC", saturday),
            at(2024, 1, 8, 9, 0, 0),
            "Monday"
        );
        assert_eq!(
            next("0 9 * * 0", "UTC", saturday),
            at(2024, 1, 7, 9, 0, 0),
            "Sunday as 0"
        );
        assert_eq!(
            next("0 9 * * 7", "UTC", saturday),
            at(2024, 1, 7, 9, 0, 0),
            "Sunday as 7"
        );
        assert_eq!(
            next("0 9 * * 5-7", "UTC", saturday),
            at(2024, 1, 7, 9, 0, 0),
            "Fri-Sun"
        );
        assert_eq!(
            next("0 9 * * */2", "UTC", saturday),
            at(2024, 1, 7, 9, 0, 0),
            "Sun,Tue,..."
        );
        assert_eq!(
            next("0 9 * * MON", "UTC", saturday),
            at(2024, 1, 8, 9, 0, 0)
        );
        assert_eq!(
            next("*/15 * * * *", "UTC", saturday),
            at(2024, 1, 6, 12, 15, 0)
        );
    }

    #[test]
    fn seconds_fields_and_time_zones() {
        let t = at(2024, 1, 2, 3, 4, 5);
        assert_eq!(next("*/10 * * * * *", "UTC", t), at(2024, 1, 2, 3, 4, 10));
        assert_eq!(
            next("0 0 12 * * * 2025", "UTC", t),
            at(2025, 1, 1, 12, 0, 0)
        );
        // 03:30 in Paris is 02:30 UTC in winter.
        assert_eq!(
            next("30 3 * * *", "Europe/Paris", t),
            at(2024, 1, 3, 2, 30, 0)
        );
    }

    #[test]
    fn either_day_matches_when_both_are_restricted_as_in_unix_cron() {
        // 2024-01-01 is a Monday.
        let ticks: Vec<DateTime<Utc>> = {
            let schedule = Schedule::parse("0 0 1,15 * 1", "UTC").unwrap();
            schedule
                .ticks_after(at(2023, 12, 31, 0, 0, 0))
                .take(6)
                .collect()
        };
        let days: Vec<u32> = ticks.iter().map(|t| t.day()).collect();
        assert_eq!(
            days,
            [1, 8, 15, 22, 29, 1],
            "Mondays and the 1st and the 15th"
        );
        // A day field starting with `*` keeps both required, as Vixie cron does.
        assert_eq!(
            next("0 0 */2 * 1", "UTC", at(2024, 1, 1, 0, 0, 0)),
            at(2024, 1, 15, 0, 0, 0),
            "odd days that are Mondays"
        );
    }

    #[test]
    fn a_daily_task_in_the_hour_skipped_in_spring_runs_at_the_change() {
        // Paris skips 02:00-03:00 on 2024-03-31 (01:00 UTC).
        let day = "30 2 * * *";
        assert_eq!(
            next(day, "Europe/Paris", at(2024, 3, 30, 12, 0, 0)),
            at(2024, 3, 31, 1, 0, 0)
        );
        assert_eq!(
            next(day, "Europe/Paris", at(2024, 3, 31, 1, 0, 0)),
            at(2024, 4, 1, 0, 30, 0),
            "once"
        );
        // And runs once in the hour repeated in autumn (2024-10-27, 02:00-03:00 twice).
        assert_eq!(
            next(day, "Europe/Paris", at(2024, 10, 27, 0, 0, 0)),
            at(2024, 10, 27, 0, 30, 0)
        );
        assert_eq!(
            next(day, "Europe/Paris", at(2024, 10, 27, 0, 30, 0)),
            at(2024, 10, 28, 1, 30, 0)
        );
    }

    #[test]
    fn schedules_tick_as_vixie_cron_runs_them_across_clock_changes() {
        let expressions = [
            "30 2 * * *",
            "0 2 * * *",
            "0 3 * * *",
            "59 1 * * *",
            "15 2,3 * * 0",
            "30 * * * *",
            "*/15 * * * *",
            "* 2 * * *",
            "0 0 1,15 * 1",
            "0 12 13 * 5",
            "0 0 */2 * 1",
            "every day",
            "every hour",
        ];
        // Two days around each change of 2024, and 60 days for the day fields.
        let windows = [
            ("Europe/Paris", at(2024, 3, 30, 0, 0, 0), 2),
            ("Europe/Paris", at(2024, 10, 26, 0, 0, 0), 2),
            ("America/New_York", at(2024, 3, 9, 12, 0, 0), 2),
            ("America/New_York", at(2024, 11, 2, 12, 0, 0), 2),
            ("Australia/Lord_Howe", at(2024, 4, 6, 0, 0, 0), 2),
            ("Australia/Lord_Howe", at(2024, 10, 5, 0, 0, 0), 2),
            ("UTC", at(2024, 1, 1, 0, 0, 0), 60),
        ];
        for text in expressions {
            for (zone, from, days) in windows {
                let until = from + TimeDelta::days(days);
                let schedule = Schedule::parse(text, zone).unwrap();
                let ours: Vec<DateTime<Utc>> = schedule
                    .ticks_after(from)
                    .take_while(|t| *t <= until)
                    .collect();
                let theirs = vixie::runs(text, zone.parse().unwrap(), from, until);
                assert_eq!(ours, theirs, "`{text}` in {zone} from {from}");
            }
        }
    }

    /// A reference: Vixie cron's main loop (cron.c, `cron_sleep` and its `wakeupKind`s) over
    /// wall-clock minutes, with its own crontab matching, run minute by minute.
    mod vixie {
        use chrono::{DateTime, Datelike, TimeDelta, Timelike, Utc};
        use chrono_tz::Tz;

        struct Entry {
            fields: [Vec<bool>; 5],
            dom_star: bool,
            dow_star: bool,
            wild: bool,
        }

        const NAMES: [&[&str]; 5] = [
            &[],
            &[],
            &[],
            &[
                "", "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
                "dec",
            ],
            &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
        ];
        const RANGES: [(usize, usize); 5] = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];

        fn number(text: &str, field: usize) -> usize {
            text.parse().unwrap_or_else(|_| {
                NAMES[field]
                    .iter()
                    .position(|n| n.eq_ignore_ascii_case(text))
                    .unwrap()
            })
        }

        fn field(text: &str, field: usize) -> Vec<bool> {
            let (lo, hi) = RANGES[field];
            let mut set = vec![false; hi + 1];
            for item in text.split(',') {
                let (range, step) = match item.split_once('/') {
                    Some((range, step)) => (range, step.parse().unwrap()),
                    None => (item, 1),
                };
                let (from, to) = match range.split_once('-') {
                    _ if range == "*" => (lo, hi),
                    Some((a, b)) => (number(a, field), number(b, field)),
                    None => (number(range, field), number(range, field)),
                };
                for n in (from..=to).step_by(step) {
                    set[n] = true;
                }
            }
            if field == 4 && set[7] {
                set[0] = true;
            }
            set
        }

        fn entry(text: &str) -> Entry {
            let text = match text {
                "every day" => "0 0 * * *",
                "every hour" => "0 * * * *",
                other => other,
            };
            let parts: Vec<&str> = text.split_whitespace().collect();
            Entry {
                fields: std::array::from_fn(|i| field(parts[i], i)),
                dom_star: parts[2].starts_with('*'),
                dow_star: parts[4].starts_with('*'),
                wild: parts[0].starts_with('*') || parts[1].starts_with('*'),
            }
        }

        /// Whether `entry` runs at wall-clock minute `minute` (minutes since the epoch).
        fn matches(entry: &Entry, minute: i64) -> bool {
            let t = DateTime::from_timestamp(minute * 60, 0)
                .unwrap()
                .naive_utc();
            let [m, h, dom, month, dow] = &entry.fields;
            let day = dom[t.day() as usize];
            let weekday = dow[t.weekday().num_days_from_sunday() as usize];
            m[t.minute() as usize]
                && h[t.hour() as usize]
                && month[t.month() as usize]
                && if entry.dom_star || entry.dow_star {
                    day && weekday
                } else {
                    day || weekday
                }
        }

        /// The instants at which Vixie cron runs `text` in `zone` after `from`, until `until`.
        pub fn runs(
            text: &str,
            zone: Tz,
            from: DateTime<Utc>,
            until: DateTime<Utc>,
        ) -> Vec<DateTime<Utc>> {
            let entry = entry(text);
            let clock =
                |t: DateTime<Utc>| t.with_timezone(&zone).naive_local().and_utc().timestamp() / 60;
            let mut virtual_time = clock(from);
            let mut runs = Vec::new();
            let mut now = from;
            while now < until {
                now += TimeDelta::minutes(1);
                let clock_time = clock(now);
                let diff = clock_time - virtual_time;
                let mut run = false;
                let mut find = |minute: i64, wild: bool, fixed: bool| {
                    if (if entry.wild { wild } else { fixed }) && matches(&entry, minute) {
                        run = true;
                    }
                };
                if diff == 1 || diff > 3 * 60 || diff <= -3 * 60 {
                    // Normal, or a jump too large to be a clock change.
                    virtual_time = clock_time;
                    find(virtual_time, true, true);
                } else if diff > 5 {
                    // Clock moved forward: fixed-time jobs of every skipped minute, once.
                    while virtual_time < clock_time {
                        virtual_time += 1;
                        find(virtual_time, false, true);
                    }
                    find(clock_time, true, false);
                } else if diff > 0 {
                    while virtual_time < clock_time {
                        virtual_time += 1;
                        find(virtual_time, true, true);
                    }
                } else {
                    // Clock moved back: only wall-clock jobs, until it catches up.
                    find(clock_time, true, false);
                }
                if run {
                    runs.push(now);
                }
            }
            runs
        }
    }

    #[test]
    fn bad_schedules_say_why() {
        assert!(
            Schedule::parse("sometimes", "UTC")
                .unwrap_err()
                .contains("is not a schedule")
        );
        assert!(Schedule::parse("61 * * * *", "UTC").is_err());
        assert!(
            Schedule::parse("0 0 * * 9", "UTC")
                .unwrap_err()
                .contains("day of the week")
        );
        assert!(
            Schedule::parse("every day", "Mars/Olympus")
                .unwrap_err()
                .contains("time zone")
        );
    }
}
