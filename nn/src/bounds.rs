//! Range checks for settings: one helper that every crate's validation
//! calls, so a refused value always reads the same way: the setting's
//! name (its path in the configuration), the value and the allowed
//! interval, e.g. `image_size = 100000: must be in [32, 2048]`.
//!
//! Values are refused, never clamped. Numbers must also be finite: NaN
//! and ±infinity are outside every interval, even an unbounded one.

use std::fmt::Display;
use std::ops::{Bound, RangeBounds};

/// A setting outside its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting} = {value}: must be {expected}")]
pub struct OutOfRange {
    /// The setting (its path in the configuration, e.g. `rnn.hidden`).
    pub setting: String,
    /// The value given.
    pub value: String,
    /// What is allowed, e.g. `in [1, 10]`.
    pub expected: String,
}

impl OutOfRange {
    /// A refusal of `value` for `setting` with the allowed values in words.
    pub fn new(setting: &str, value: impl Display, expected: impl Into<String>) -> Self {
        OutOfRange {
            setting: setting.to_string(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    /// The same refusal with the setting's name prefixed (`prefix.setting`),
    /// for a check made by a nested configuration.
    pub fn within(mut self, prefix: &str) -> Self {
        self.setting = format!("{prefix}.{}", self.setting);
        self
    }
}

/// `range` in interval notation: `[1, 10]`, `(0, 1)`, `[0, inf)`.
pub fn interval<T: Display>(range: &impl RangeBounds<T>) -> String {
    let lo = match range.start_bound() {
        Bound::Included(v) => format!("[{v}"),
        Bound::Excluded(v) => format!("({v}"),
        Bound::Unbounded => "(-inf".to_string(),
    };
    let hi = match range.end_bound() {
        Bound::Included(v) => format!("{v}]"),
        Bound::Excluded(v) => format!("{v})"),
        Bound::Unbounded => "inf)".to_string(),
    };
    format!("{lo}, {hi}")
}

/// `value` if it lies in `range`, else an error naming `setting`, the
/// value and the range (for integers: counts, sizes, orders).
pub fn check<T, R>(setting: &str, value: T, range: R) -> Result<T, OutOfRange>
where
    T: PartialOrd + Display + Copy,
    R: RangeBounds<T>,
{
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(OutOfRange::new(
            setting,
            value,
            format!("in {}", interval(&range)),
        ))
    }
}

/// `value` if it is finite and lies in `range`, else an error naming
/// `setting`, the value and the range (NaN and ±infinity are refused even
/// where the range is unbounded).
pub fn check_number<R>(setting: &str, value: f64, range: R) -> Result<f64, OutOfRange>
where
    R: RangeBounds<f64>,
{
    finite_in(setting, value, value.is_finite(), &range)
}

/// [`check_number`] for an `f32` setting.
pub fn check_number_f32<R>(setting: &str, value: f32, range: R) -> Result<f32, OutOfRange>
where
    R: RangeBounds<f32>,
{
    finite_in(setting, value, value.is_finite(), &range)
}

fn finite_in<T, R>(setting: &str, value: T, finite: bool, range: &R) -> Result<T, OutOfRange>
where
    T: PartialOrd + Display,
    R: RangeBounds<T>,
{
    if finite && range.contains(&value) {
        Ok(value)
    } else {
        Err(OutOfRange::new(
            setting,
            value,
            format!("a finite number in {}", interval(range)),
        ))
    }
}

/// A finite number (any value), or an error naming `setting`.
pub fn check_finite(setting: &str, value: f64) -> Result<f64, OutOfRange> {
    check_number(setting, value, ..)
}

/// The open interval `(lo, hi)` as bounds for [`check_number`].
pub fn open(lo: f64, hi: f64) -> (Bound<f64>, Bound<f64>) {
    (Bound::Excluded(lo), Bound::Excluded(hi))
}

/// The half-open interval `(lo, hi]` as bounds for [`check_number`].
pub fn open_closed(lo: f64, hi: f64) -> (Bound<f64>, Bound<f64>) {
    (Bound::Excluded(lo), Bound::Included(hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_outside_the_range_are_named() {
        assert_eq!(check("order", 3usize, 1..=10), Ok(3));
        let e = check("order", usize::MAX, 1..=10).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("order = {}: must be in [1, 10]", usize::MAX)
        );
        assert!(check("beam", 0u64, 1..=10_000).is_err());
    }

    #[test]
    fn numbers_must_be_finite_and_in_range() {
        assert_eq!(check_number("lr", 0.1, open_closed(0.0, 10.0)), Ok(0.1));
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -1.0, 11.0] {
            let e = check_number("lr", bad, open_closed(0.0, 10.0)).unwrap_err();
            assert!(e.to_string().contains("(0, 10]"), "{e}");
        }
        assert!(check_finite("beta", f64::NAN).is_err());
        assert!(check_finite("beta", f64::NEG_INFINITY).is_err());
        assert!(check_finite("beta", -3.0).is_ok());
        assert!(check_number_f32("t", f32::NAN, 0.0..=1.0).is_err());
        assert_eq!(
            check_number("gamma", -1.0, open_closed(0.0, 1.0))
                .unwrap_err()
                .within("schedule")
                .setting,
            "schedule.gamma"
        );
    }
}
