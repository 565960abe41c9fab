//! Periods as a caller names them: `period=last_24h|last_7d|last_30d|last_90d`, `days=N`
//! (seed 003), or `from`/`to` (RFC 3339 or YYYY-MM-DD; `to` exclusive), resolved against
//! the clock into a [`Period`].

use super::*;

/// A period as given, each way of naming one as the text the caller sent (empty means
/// not given). [`PeriodSpec::resolve`] checks it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeriodSpec {
    /// `last_24h`, `last_7d` (the default), `last_30d` or `last_90d`.
    pub period: Option<String>,
    /// The last N days (1–366).
    pub days: Option<String>,
    /// Start of an explicit range, rounded down to the hour; not in the future.
    pub from: Option<String>,
    /// End of an explicit range, exclusive, rounded up to the hour and never past now.
    pub to: Option<String>,
}

/// An RFC 3339 time or a YYYY-MM-DD date (midnight UTC), in microseconds.
pub fn parse_instant(field: &str, s: &str) -> Result<i64, FieldError> {
    parse_rfc3339(s)
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .map(|d| tally_core::time::day_of_date(d) * MICROS_PER_DAY)
        })
        .ok_or_else(|| {
            FieldError::new(
                INVALID_PERIOD,
                field,
                "must be an RFC 3339 time or a YYYY-MM-DD date",
            )
        })
}

impl PeriodSpec {
    /// The label and range this query names, relative to `now`. One way of naming a period
    /// at a time: `period`, `days` and `from`/`to` exclude each other. A range never ends in
    /// the future (`to` is at most `now`, exclusive of the instant after it) and may not
    /// end before 2000-01-01 or start after `now`: no data can lie there.
    pub fn resolve(&self, now: i64) -> Result<(String, Period), FieldError> {
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        let given: Vec<&str> = [
            ("period", nonempty(&self.period).is_some()),
            ("days", nonempty(&self.days).is_some()),
            ("from", nonempty(&self.from).is_some()),
            ("to", nonempty(&self.to).is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        let explicit = given.iter().any(|g| *g == "from" || *g == "to");
        let named = given
            .iter()
            .filter(|g| **g == "period" || **g == "days")
            .count();
        if named + usize::from(explicit) > 1 {
            let (first, second) = (given[0], given[1]);
            return Err(FieldError::new(
                INVALID_PERIOD,
                second,
                format!("cannot be combined with {first}: give one of period, days or from/to"),
            ));
        }
        let end = now + 1;
        if explicit {
            let from = nonempty(&self.from)
                .ok_or_else(|| FieldError::new(INVALID_PERIOD, "from", "is required with to"))?;
            let from = parse_instant("from", &from)?.div_euclid(MICROS_PER_HOUR) * MICROS_PER_HOUR;
            let to = match nonempty(&self.to) {
                Some(t) => parse_instant("to", &t)?,
                None => end,
            };
            let to = (to.saturating_add(MICROS_PER_HOUR - 1))
                .div_euclid(MICROS_PER_HOUR)
                .saturating_mul(MICROS_PER_HOUR)
                .min(end);
            if from > now {
                return Err(FieldError::new(INVALID_PERIOD, "from", "is in the future"));
            }
            if to <= tally_core::event::MIN_TIMESTAMP_MICROS {
                return Err(FieldError::new(
                    INVALID_PERIOD,
                    "to",
                    "ends before 2000-01-01, before any data tally accepts",
                ));
            }
            if to <= from {
                return Err(FieldError::new(INVALID_PERIOD, "to", "must be after from"));
            }
            if to - from > MAX_PERIOD_DAYS * MICROS_PER_DAY {
                return Err(FieldError::new(
                    INVALID_PERIOD,
                    "to",
                    format!("the range may span at most {MAX_PERIOD_DAYS} days"),
                ));
            }
            return Ok(("custom".into(), Period { from, to }));
        }
        if let Some(d) = nonempty(&self.days) {
            let n: i64 = d
                .parse()
                .ok()
                .filter(|n| (1..=MAX_PERIOD_DAYS).contains(n))
                .ok_or_else(|| {
                    FieldError::new(INVALID_PERIOD, "days", "must be an integer from 1 to 366")
                })?;
            return Ok((format!("last_{n}d"), Period::last_hours(now, n * 24)));
        }
        let hours = match self.period.as_deref().unwrap_or("last_7d") {
            "last_24h" => 24,
            "last_7d" => 7 * 24,
            "last_30d" => 30 * 24,
            "last_90d" => 90 * 24,
            _ => {
                return Err(FieldError::new(
                    INVALID_PERIOD,
                    "period",
                    "must be last_24h, last_7d, last_30d or last_90d",
                ))
            }
        };
        let label = self.period.clone().unwrap_or_else(|| "last_7d".into());
        Ok((label, Period::last_hours(now, hours)))
    }
}
