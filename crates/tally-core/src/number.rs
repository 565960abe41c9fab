//! JSON numbers read as integers. JSON Schema counts `3.0` as the integer 3, and the
//! published contract says `integer`, so every validator reads integers through here: an
//! integral value in any JSON spelling is accepted, a fraction is not.

use serde_json::Number;

/// The integer a JSON number spells, if it is integral and within `i64`/`u64` range.
pub fn integer(n: &Number) -> Option<i128> {
    if let Some(i) = n.as_i64() {
        return Some(i128::from(i));
    }
    if let Some(u) = n.as_u64() {
        return Some(i128::from(u));
    }
    let f = n.as_f64()?;
    // Beyond 2^53 a float no longer names one integer: refuse rather than guess.
    (f.is_finite() && f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0).then_some(f as i128)
}

/// `integer` as a `u64`.
pub fn unsigned(n: &Number) -> Option<u64> {
    integer(n).and_then(|i| u64::try_from(i).ok())
}

/// An identifier sent as a number: its canonical decimal text.
pub fn id_text(n: &Number) -> Option<String> {
    integer(n).map(|i| i.to_string())
}

/// Deserializes an optional unsigned integer written as `3` or `3.0`.
pub fn deserialize_opt_u64<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    let v: Option<Number> = serde::Deserialize::deserialize(d)?;
    v.map(|n| {
        unsigned(&n).ok_or_else(|| {
            D::Error::custom(format!(
                "invalid value: {n}, expected a non-negative integer"
            ))
        })
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Number {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn integral_numbers_in_any_spelling_are_integers() {
        assert_eq!(integer(&n("3")), Some(3));
        assert_eq!(integer(&n("3.0")), Some(3));
        assert_eq!(integer(&n("-2e2")), Some(-200));
        assert_eq!(integer(&n("18446744073709551615")), Some(u64::MAX.into()));
        assert_eq!(integer(&n("3.5")), None);
        assert_eq!(integer(&n("1e300")), None);
        assert_eq!(unsigned(&n("-1")), None);
        assert_eq!(id_text(&n("42.0")).as_deref(), Some("42"));
    }
}
