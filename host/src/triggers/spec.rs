//! When a schedule is due: a five-field cron expression in UTC (minute,
//! hour, day of month, month, day of week: `*/5 * * * *`), or
//! `@every <duration>` (`@every 30s`, `@every 1m`: due at every multiple
//! of the duration since the Unix epoch, so every node computes the same
//! due times). Pure: times in and out as Unix milliseconds.

use std::str::FromStr as _;
use std::time::Duration;

use chrono::{TimeZone as _, Utc};

/// Shortest `@every` interval.
pub const MIN_EVERY: Duration = Duration::from_secs(1);

/// A parsed schedule.
#[derive(Clone, Debug)]
pub enum Spec {
    /// A five-field cron expression, in UTC.
    Cron(Box<croner::Cron>),
    /// Every so many milliseconds, aligned on the epoch.
    Every(u64),
}

impl Spec {
    /// Parses `*/5 * * * *` or `@every 90s`; the message says what is wrong.
    pub fn parse(text: &str) -> Result<Spec, String> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("@every") {
            let every = crate::config::parse_duration(rest.trim()).ok_or_else(|| {
                format!("`{rest}` after @every is not a duration (examples: 1s, 30s, 5m, 1h)")
            })?;
            if every < MIN_EVERY || every.subsec_millis() != 0 {
                return Err("@every takes whole seconds, at least 1s".into());
            }
            return Ok(Spec::Every(u64::try_from(every.as_millis()).unwrap_or(u64::MAX)));
        }
        let fields = text.split_whitespace().count();
        if fields != 5 {
            return Err(format!(
                "a schedule is five cron fields in UTC (minute hour day-of-month month \
                 day-of-week, as in `*/5 * * * *`) or `@every <duration>`; `{text}` has {fields}"
            ));
        }
        let cron = croner::Cron::from_str(text).map_err(|e| format!("`{text}`: {e}"))?;
        let spec = Spec::Cron(Box::new(cron));
        if spec.next_after(0).is_none() {
            return Err(format!("`{text}` is never due"));
        }
        Ok(spec)
    }

    /// The first due time strictly after `after_ms`.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        match self {
            Spec::Every(every) => {
                let every = i64::try_from(*every).ok()?;
                Some((after_ms.div_euclid(every) + 1) * every)
            }
            Spec::Cron(cron) => {
                let after = Utc.timestamp_millis_opt(after_ms).single()?;
                let next = cron.find_next_occurrence(&after, false).ok()?;
                Some(next.timestamp_millis())
            }
        }
    }

    /// The last due time at or before `at_ms`, if any in the past.
    pub fn last_at_or_before(&self, at_ms: i64) -> Option<i64> {
        match self {
            Spec::Every(every) => {
                let every = i64::try_from(*every).ok()?;
                Some(at_ms.div_euclid(every) * every)
            }
            Spec::Cron(cron) => {
                let at = Utc.timestamp_millis_opt(at_ms).single()?;
                let previous = cron.find_previous_occurrence(&at, true).ok()?;
                Some(previous.timestamp_millis())
            }
        }
    }

    /// The next `n` due times after `after_ms`.
    pub fn next_runs(&self, after_ms: i64, n: usize) -> Vec<i64> {
        let mut runs = Vec::with_capacity(n);
        let mut at = after_ms;
        while runs.len() < n {
            match self.next_after(at) {
                Some(next) => {
                    runs.push(next);
                    at = next;
                }
                None => break,
            }
        }
        runs
    }

    /// The shortest time between two firings (checked against the tier's
    /// smallest interval): the interval itself, or for cron the smallest
    /// gap among its next two hundred due times.
    pub fn shortest_interval(&self, from_ms: i64) -> Duration {
        match self {
            Spec::Every(every) => Duration::from_millis(*every),
            Spec::Cron(_) => {
                let runs = self.next_runs(from_ms, 200);
                let gap = runs.windows(2).map(|w| w[1] - w[0]).min().unwrap_or(i64::MAX);
                Duration::from_millis(u64::try_from(gap).unwrap_or(u64::MAX))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000;
    /// 2026-12-06T00:00:00Z.
    const MIDNIGHT: i64 = 1_796_515_200_000;

    #[test]
    fn every_is_aligned_on_the_epoch_so_all_nodes_agree() {
        let spec = Spec::parse("@every 30s").unwrap();
        assert_eq!(spec.next_after(MIDNIGHT), Some(MIDNIGHT + 30_000));
        assert_eq!(spec.next_after(MIDNIGHT + 1), Some(MIDNIGHT + 30_000));
        assert_eq!(spec.next_after(MIDNIGHT + 29_999), Some(MIDNIGHT + 30_000));
        assert_eq!(spec.last_at_or_before(MIDNIGHT + 95_000), Some(MIDNIGHT + 90_000));
        assert_eq!(spec.shortest_interval(MIDNIGHT), Duration::from_secs(30));
        assert_eq!(Spec::parse("@every 1s").unwrap().next_after(MIDNIGHT), Some(MIDNIGHT + 1000));
    }

    #[test]
    fn five_field_cron_in_utc() {
        let spec = Spec::parse("*/5 * * * *").unwrap();
        assert_eq!(spec.next_after(MIDNIGHT), Some(MIDNIGHT + 5 * MINUTE));
        assert_eq!(spec.next_after(MIDNIGHT + 5 * MINUTE), Some(MIDNIGHT + 10 * MINUTE));
        assert_eq!(spec.last_at_or_before(MIDNIGHT + 7 * MINUTE), Some(MIDNIGHT + 5 * MINUTE));
        assert_eq!(spec.next_runs(MIDNIGHT, 3), [5, 10, 15].map(|m| MIDNIGHT + m * MINUTE));
        assert_eq!(spec.shortest_interval(MIDNIGHT), Duration::from_secs(300));
        let daily = Spec::parse("30 2 * * *").unwrap();
        assert_eq!(daily.next_after(MIDNIGHT), Some(MIDNIGHT + (2 * 60 + 30) * MINUTE));
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        for (text, says) in [
            ("* * * * * *", "five cron fields"),
            ("*/5 * * *", "five cron fields"),
            ("@every 500ms", "whole seconds"),
            ("@every 0s", "at least 1s"),
            ("@every soon", "not a duration"),
            ("61 * * * *", "61"),
            ("0 0 30 2 *", "never due"),
        ] {
            let error = Spec::parse(text).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
    }
}
