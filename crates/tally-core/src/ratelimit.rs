//! Rate limits as GCRA (the generic cell rate algorithm): a quota of `burst` requests per
//! `period` is kept as one number per key, the theoretical arrival time of the next
//! request. No I/O and no clock: callers pass `now` (microseconds on any monotonic scale).

/// `burst` requests at once, refilled evenly over `period_micros`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub burst: u32,
    pub period_micros: i64,
}

impl Quota {
    pub const fn per_minute(burst: u32) -> Self {
        Self {
            burst,
            period_micros: 60_000_000,
        }
    }

    /// Time between two requests at the sustained rate.
    fn interval(self) -> i64 {
        (self.period_micros / i64::from(self.burst.max(1))).max(1)
    }
}

/// Decides one request against the key's state (`tat`, `None` for a new key). On success
/// returns the new state; otherwise how long until a request would be allowed.
pub fn check(tat: Option<i64>, quota: Quota, now: i64) -> Result<i64, i64> {
    check_n(tat, quota, now, 1)
}

/// Decides `n` units at once (tokens of a call, say). More units than the burst pass only
/// when the key is at a full burst, so a call larger than the limit is not refused forever.
pub fn check_n(tat: Option<i64>, quota: Quota, now: i64, n: u64) -> Result<i64, i64> {
    let interval = quota.interval();
    let n = i64::try_from(n.clamp(1, u64::from(quota.burst.max(1)))).unwrap_or(1);
    let tolerance = interval * (i64::from(quota.burst.max(1)) - n);
    let tat = tat.unwrap_or(now).max(now);
    let earliest = tat - tolerance;
    if earliest > now {
        return Err(earliest - now);
    }
    Ok(tat + interval * n)
}

/// Adds `n` units to the key's state whatever it holds (usage learnt after the fact, such
/// as a call's actual tokens beyond its estimate).
pub fn charge(tat: Option<i64>, quota: Quota, now: i64, n: u64) -> i64 {
    let n = i64::try_from(n).unwrap_or(i64::MAX / 2);
    let limit = now.saturating_add(quota.period_micros.saturating_mul(2));
    tat.unwrap_or(now)
        .max(now)
        .saturating_add(quota.interval().saturating_mul(n))
        .min(limit)
}

/// Takes `n` units back from the key's state (a call charged more than it used): never
/// below a full burst.
pub fn refund(tat: Option<i64>, quota: Quota, now: i64, n: u64) -> Option<i64> {
    let n = i64::try_from(n).unwrap_or(i64::MAX / 2);
    tat.map(|t| {
        t.saturating_sub(quota.interval().saturating_mul(n))
            .max(now)
    })
}

/// Whether a key's state has drained back to a full burst by `now` (it can be forgotten).
pub fn is_idle(tat: i64, now: i64) -> bool {
    tat <= now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_requests_wait_for_the_refill() {
        let q = Quota::per_minute(3);
        let mut tat = None;
        for _ in 0..3 {
            tat = Some(check(tat, q, 0).unwrap());
        }
        // Fourth at once: refused until one interval (20 s) has passed.
        assert_eq!(check(tat, q, 0), Err(20_000_000));
        assert_eq!(check(tat, q, 19_999_999), Err(1));
        let after = check(tat, q, 20_000_000).unwrap();
        assert_eq!(check(Some(after), q, 20_000_000), Err(20_000_000));
        // A minute of silence refills the whole burst.
        assert!(is_idle(after, 80_000_000));
        let mut tat = Some(after);
        for _ in 0..3 {
            tat = Some(check(tat, q, 80_000_000).unwrap());
        }
        assert!(check(tat, q, 80_000_000).is_err());
    }

    #[test]
    fn units_are_weighed_and_the_charge_after_the_fact_delays_the_next() {
        let q = Quota::per_minute(1000);
        let tat = check_n(None, q, 0, 600).unwrap();
        assert!(
            check_n(Some(tat), q, 0, 500).is_err(),
            "1100 units in a minute"
        );
        let tat2 = check_n(Some(tat), q, 0, 400).unwrap();
        assert!(check_n(Some(tat2), q, 0, 1).is_err());
        // Larger than the burst: passes on a full bucket only.
        assert!(check_n(None, q, 0, 5000).is_ok());
        assert!(check_n(Some(tat), q, 0, 5000).is_err());
        let charged = charge(Some(tat), q, 0, 400);
        assert!(check_n(Some(charged), q, 0, 1).is_err());
    }

    #[test]
    fn a_refund_gives_back_what_was_charged_and_no_more() {
        let q = Quota::per_minute(1000);
        // 900 units held as an upper bound, 300 used: 600 come back, 700 fit again.
        let tat = check_n(None, q, 0, 900).unwrap();
        assert!(check_n(Some(tat), q, 0, 700).is_err());
        let back = refund(Some(tat), q, 0, 600);
        assert!(check_n(back, q, 0, 700).is_ok());
        assert!(check_n(back, q, 0, 701).is_err());
        // Never more than a full burst, and nothing for a key never charged.
        assert_eq!(refund(Some(tat), q, 0, 5000), Some(0));
        assert_eq!(refund(None, q, 0, 10), None);
    }
}
