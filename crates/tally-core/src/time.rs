//! Time conventions: storage keeps UTC microseconds since the Unix epoch; the API speaks
//! RFC 3339 with a `Z` suffix.

use chrono::{DateTime, NaiveDate, SecondsFormat, TimeZone, Utc};

pub const MICROS_PER_SEC: i64 = 1_000_000;
pub const MICROS_PER_MINUTE: i64 = 60 * MICROS_PER_SEC;
pub const MICROS_PER_HOUR: i64 = 3_600 * MICROS_PER_SEC;
pub const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

/// Where every part of tally reads the current time. Production passes [`SystemClock`];
/// tests pass a [`ManualClock`] and move it, so no test waits on wall time to cross a
/// boundary (a window end, a token expiry, a retention cut-off).
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Microseconds since the Unix epoch, UTC.
    fn now_micros(&self) -> i64;

    /// Whole seconds since the Unix epoch (JWT claims).
    fn now_secs(&self) -> i64 {
        self.now_micros().div_euclid(MICROS_PER_SEC)
    }
}

/// A shared clock, as services hold it.
pub type SharedClock = std::sync::Arc<dyn Clock>;

/// The operating system's clock. The one place tally reads wall time.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> i64 {
        Utc::now().timestamp_micros()
    }
}

impl SystemClock {
    /// The system clock as a [`SharedClock`].
    pub fn shared() -> SharedClock {
        std::sync::Arc::new(SystemClock)
    }
}

/// A clock that stands still until it is set or advanced: tests and replays.
#[derive(Debug, Clone)]
pub struct ManualClock(std::sync::Arc<std::sync::atomic::AtomicI64>);

impl ManualClock {
    /// A clock reading `micros`.
    pub fn at(micros: i64) -> Self {
        Self(std::sync::Arc::new(std::sync::atomic::AtomicI64::new(
            micros,
        )))
    }

    /// A clock reading the system time once, then standing still.
    pub fn starting_now() -> Self {
        Self::at(SystemClock.now_micros())
    }

    pub fn set(&self, micros: i64) {
        self.0.store(micros, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn advance(&self, by: std::time::Duration) {
        let by = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        self.0.fetch_add(by, std::sync::atomic::Ordering::SeqCst);
    }

    /// This clock as a [`SharedClock`] (it keeps following [`ManualClock::set`]).
    pub fn shared(&self) -> SharedClock {
        std::sync::Arc::new(self.clone())
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

pub fn to_datetime(micros: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(micros)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// RFC 3339 in UTC, seconds precision unless the value has sub-second digits.
pub fn rfc3339(micros: i64) -> String {
    let format = if micros % MICROS_PER_SEC == 0 {
        SecondsFormat::Secs
    } else {
        SecondsFormat::Millis
    };
    to_datetime(micros).to_rfc3339_opts(format, true)
}

/// Days since the epoch (UTC) for a timestamp: the key of daily rollups.
pub fn day_of(micros: i64) -> i64 {
    micros.div_euclid(MICROS_PER_DAY)
}

/// Hours since the epoch (UTC) for a timestamp: the key of hourly rollups.
pub fn hour_of(micros: i64) -> i64 {
    micros.div_euclid(MICROS_PER_HOUR)
}

pub fn date_of_day(day: i64) -> NaiveDate {
    to_datetime(day * MICROS_PER_DAY).date_naive()
}

pub fn day_of_date(date: NaiveDate) -> i64 {
    date.signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default())
        .num_days()
}

pub fn parse_rfc3339(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc).timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_and_hour_buckets_are_utc() {
        let t = parse_rfc3339("2024-01-20T14:30:00Z").unwrap();
        assert_eq!(date_of_day(day_of(t)).to_string(), "2024-01-20");
        assert_eq!(hour_of(t) % 24, 14);
        assert_eq!(rfc3339(t), "2024-01-20T14:30:00Z");
        let before_epoch = -1;
        assert_eq!(day_of(before_epoch), -1);
    }

    #[test]
    fn day_of_date_round_trips() {
        let d = NaiveDate::from_ymd_opt(2024, 1, 20).unwrap();
        assert_eq!(date_of_day(day_of_date(d)), d);
    }
}
