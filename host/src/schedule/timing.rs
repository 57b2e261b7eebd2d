//! Schedules: `every minute|hour|day`, a 5-field Unix crontab, or a 6/7-field expression with
//! seconds (the `cron` crate's own form), in a time zone.
//!
//! A 5-field crontab (`min hour day-of-month month day-of-week`) gets a `0` seconds field, and
//! its day-of-week numbers are translated: Unix counts Sunday as 0 (or 7), the `cron` crate as 1.
//! Both ranges and steps keep their meaning (`1-5` is Monday to Friday in both forms).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use std::str::FromStr;

/// When a task runs.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// As the operator or the manifest wrote it.
    pub text: String,
    cron: cron::Schedule,
    zone: Tz,
}

impl Schedule {
    /// Parses `text` in time zone `zone` (an IANA name such as `Europe/Paris`, or `UTC`).
    pub fn parse(text: &str, zone: &str) -> Result<Self, String> {
        let zone = Tz::from_str(zone).map_err(|_| format!("`{zone}` is not a time zone"))?;
        let expression = match text.trim() {
            "every minute" => "0 * * * * *".to_owned(),
            "every hour" => "0 0 * * * *".to_owned(),
            "every day" => "0 0 0 * * *".to_owned(),
            other => {
                let fields: Vec<&str> = other.split_whitespace().collect();
                match fields.len() {
                    5 => crontab(&fields)?,
                    6 | 7 => fields.join(" "),
                    _ => {
                        return Err(format!(
                            "`{text}` is not a schedule (`every minute|hour|day`, 5 crontab fields, or 6/7 fields with seconds)"
                        ));
                    }
                }
            }
        };
        let cron = cron::Schedule::from_str(&expression)
            .map_err(|e| format!("`{text}` is not a schedule: {e}"))?;
        Ok(Self {
            text: text.to_owned(),
            cron,
            zone,
        })
    }

    /// The first tick strictly after `t`, if the schedule has one.
    pub fn after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .after(&t.with_timezone(&self.zone))
            .next()
            .map(|tick| tick.with_timezone(&Utc))
    }
}

/// A 5-field Unix crontab in the `cron` crate's 6-field form.
fn crontab(fields: &[&str]) -> Result<String, String> {
    let day_of_week = fields[4]
        .split(',')
        .map(unix_day_of_week)
        .collect::<Result<Vec<_>, _>>()?
        .join(",");
    Ok(format!(
        "0 {} {} {} {} {day_of_week}",
        fields[0], fields[1], fields[2], fields[3]
    ))
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
    use chrono::TimeZone;

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
