//! PostHog's job delay units (`runIn(n, unit)`), shared by the SDK's `host::jobs` and the
//! `sluice jobs enqueue --in` option. Unlike PostHog, a month is 30 days, not 30 weeks.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A unit of delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    /// 1 ms.
    Milliseconds,
    /// 1 s.
    Seconds,
    /// 60 s.
    Minutes,
    /// 60 minutes.
    Hours,
    /// 24 hours.
    Days,
    /// 7 days.
    Weeks,
    /// 30 days (PostHog's code made it 30 weeks).
    Months,
    /// 13 weeks, as PostHog.
    Quarters,
    /// 365 days, as PostHog.
    Years,
}

impl TimeUnit {
    /// Every unit with the names it is known by (plural, singular, short).
    const NAMES: [(TimeUnit, [&'static str; 3]); 9] = [
        (
            TimeUnit::Milliseconds,
            ["milliseconds", "millisecond", "ms"],
        ),
        (TimeUnit::Seconds, ["seconds", "second", "s"]),
        (TimeUnit::Minutes, ["minutes", "minute", "m"]),
        (TimeUnit::Hours, ["hours", "hour", "h"]),
        (TimeUnit::Days, ["days", "day", "d"]),
        (TimeUnit::Weeks, ["weeks", "week", "w"]),
        (TimeUnit::Months, ["months", "month", "mo"]),
        (TimeUnit::Quarters, ["quarters", "quarter", "q"]),
        (TimeUnit::Years, ["years", "year", "y"]),
    ];

    /// Milliseconds in one unit.
    pub fn millis(self) -> u64 {
        const DAY: u64 = 86_400_000;
        match self {
            TimeUnit::Milliseconds => 1,
            TimeUnit::Seconds => 1_000,
            TimeUnit::Minutes => 60_000,
            TimeUnit::Hours => 3_600_000,
            TimeUnit::Days => DAY,
            TimeUnit::Weeks => 7 * DAY,
            TimeUnit::Months => 30 * DAY,
            TimeUnit::Quarters => 13 * 7 * DAY,
            TimeUnit::Years => 365 * DAY,
        }
    }

    /// `amount` of this unit, saturating.
    pub fn times(self, amount: u64) -> Duration {
        Duration::from_millis(amount.saturating_mul(self.millis()))
    }
}

impl FromStr for TimeUnit {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        let name = name.trim().to_ascii_lowercase();
        Self::NAMES
            .iter()
            .find(|(_, names)| names.contains(&name.as_str()))
            .map(|(unit, _)| *unit)
            .ok_or_else(|| {
                format!(
                    "`{name}` is not a time unit (milliseconds, seconds, minutes, hours, days, weeks, months, quarters, years)"
                )
            })
    }
}

impl fmt::Display for TimeUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = Self::NAMES
            .iter()
            .find(|(unit, _)| unit == self)
            .map_or("?", |(_, names)| names[0]);
        f.write_str(names)
    }
}

/// Reads a delay such as `90 seconds`, `5 minutes`, `1 month` or `10m`.
pub fn parse_delay(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit (e.g. `10 minutes`)"))?;
    let (amount, unit) = text.split_at(split);
    let amount: u64 = amount
        .parse()
        .map_err(|_| format!("`{text}` does not start with a whole number"))?;
    Ok(unit.parse::<TimeUnit>()?.times(amount))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posthogs_units_without_its_month_bug() {
        assert_eq!(parse_delay("90 seconds"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_delay("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_delay("1 Hour"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_delay("1 month"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(
            parse_delay("1 quarter"),
            Ok(Duration::from_secs(91 * 86_400))
        );
        assert_eq!(
            parse_delay("2 years"),
            Ok(Duration::from_secs(730 * 86_400))
        );
        assert_eq!(parse_delay("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_delay("soon").is_err());
        assert!(
            parse_delay("5 fortnights")
                .unwrap_err()
                .contains("not a time unit")
        );
        assert_eq!(TimeUnit::Weeks.to_string(), "weeks");
    }
}
