//! Numbers whose range their flag's value parser checks.
//!
//! A range lives next to its flag (`value_parser = in_range(1..=30)`), and the message for
//! a value outside it is written from the range itself. A value out of range does not stop
//! parsing, as a failing clap parser would at the first bad flag: it is kept with its
//! problem, and [`super::ServeArgs::into_settings`] reports every problem at once. A value
//! that is no number at all is clap's error, as before.

use clap::builder::TypedValueParser;
use std::ffi::OsStr;
use std::fmt;
use std::ops::RangeInclusive;

/// A flag's number, with the problem its value parser found with it, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked<T> {
    value: T,
    problem: Option<String>,
}

impl<T: Copy> Checked<T> {
    /// The value; when it is out of its range, the problem is added to `problems`.
    pub fn value(&self, problems: &mut Vec<String>) -> T {
        if let Some(problem) = &self.problem {
            problems.push(problem.clone());
        }
        self.value
    }
}

/// Defaults are written as plain numbers (`default_value_t = 30.into()`).
impl<T> From<T> for Checked<T> {
    fn from(value: T) -> Self {
        Self { value, problem: None }
    }
}

/// As the number: `--help` shows a default this way.
impl<T: fmt::Display> fmt::Display for Checked<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

/// A number a flag takes: parsed as clap parses it, with the bounds of its type.
pub trait Number: Copy + PartialOrd + fmt::Display + Send + Sync + 'static {
    const MIN: Self;
    const MAX: Self;
    fn parse(cmd: &clap::Command, arg: Option<&clap::Arg>, value: &OsStr) -> Result<Self, clap::Error>;
}

macro_rules! number {
    ($($t:ty => $parser:expr),*) => {$(
        impl Number for $t {
            const MIN: Self = <$t>::MIN;
            const MAX: Self = <$t>::MAX;
            fn parse(cmd: &clap::Command, arg: Option<&clap::Arg>, value: &OsStr) -> Result<Self, clap::Error> {
                $parser.parse_ref(cmd, arg, value)
            }
        }
    )*};
}

// What `clap::value_parser!` picks for each: its own parser for u32 and u64, `FromStr`
// for the others.
number!(
    u32 => clap::value_parser!(u32),
    u64 => clap::value_parser!(u64),
    usize => <usize as std::str::FromStr>::from_str,
    f64 => <f64 as std::str::FromStr>::from_str
);

/// The value parser of a flag whose number must lie in `range`.
pub fn in_range<T: Number>(range: RangeInclusive<T>) -> InRange<T> {
    InRange { range, note: None }
}

#[derive(Clone)]
pub struct InRange<T> {
    range: RangeInclusive<T>,
    /// Said after the bound, in parentheses.
    note: Option<&'static str>,
}

impl<T> InRange<T> {
    /// `note` follows the bound in the problem: "must be at most 604800 (7 days)".
    pub fn note(self, note: &'static str) -> Self {
        Self { note: Some(note), ..self }
    }
}

impl<T: Number> InRange<T> {
    /// What a value outside the range is told: the bound(s) that are not the type's own.
    fn must_be(&self) -> String {
        let (min, max) = (*self.range.start(), *self.range.end());
        let bound = match (min > T::MIN, max < T::MAX) {
            (true, true) => format!("must be between {min} and {max}"),
            (true, false) => format!("must be at least {min}"),
            (false, _) => format!("must be at most {max}"),
        };
        match self.note {
            Some(note) => format!("{bound} ({note})"),
            None => bound,
        }
    }
}

impl<T: Number> TypedValueParser for InRange<T> {
    type Value = Checked<T>;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, raw: &OsStr) -> Result<Checked<T>, clap::Error> {
        let value = T::parse(cmd, arg, raw)?;
        let problem = (!self.range.contains(&value)).then(|| {
            let flag = arg.and_then(clap::Arg::get_long).unwrap_or_default();
            format!("--{flag}: {}", self.must_be())
        });
        Ok(Checked { value, problem })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_names_the_bounds_that_are_not_the_types_own() {
        assert_eq!(in_range(1u64..=30).must_be(), "must be between 1 and 30");
        assert_eq!(in_range(1u32..=u32::MAX).must_be(), "must be at least 1");
        assert_eq!(in_range(0u64..=3600).must_be(), "must be at most 3600");
        assert_eq!(in_range(0.01..=50.0).must_be(), "must be between 0.01 and 50");
        assert_eq!(in_range(0u64..=604_800).note("7 days").must_be(), "must be at most 604800 (7 days)");
    }
}
