//! What a key may carry besides its scopes and applications: its own rate limits, a
//! refill of credits, an IP allowlist and metadata for the upstream. Plain data, each
//! with the one `parse` that lets it in.

use super::{InvalidField, Timestamp};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// The terms a key is issued on. Empty terms change nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyTerms {
    pub limits: Vec<KeyLimit>,
    /// Empty: the key may be used from anywhere.
    pub allowed_networks: Vec<Network>,
    pub metadata: Option<Metadata>,
    /// How spent credits come back; only meaningful for a key with credits.
    pub refill: Option<Refill>,
}

impl KeyTerms {
    pub const MAX_LIMITS: usize = 10;
    pub const MAX_NETWORKS: usize = 100;

    pub fn check(&self) -> Result<(), InvalidField> {
        if self.limits.len() > Self::MAX_LIMITS {
            return Err(InvalidField::new("limits", format!("at most {} per key", Self::MAX_LIMITS)));
        }
        for (i, limit) in self.limits.iter().enumerate() {
            if self.limits[..i].iter().any(|other| other.name == limit.name) {
                return Err(InvalidField::new("limits", format!("the name {:?} is used twice", limit.name)));
            }
        }
        if self.allowed_networks.len() > Self::MAX_NETWORKS {
            return Err(InvalidField::new("allowed_networks", format!("at most {} per key", Self::MAX_NETWORKS)));
        }
        Ok(())
    }

    /// Whether the client at `ip` may use the key; a key with an allowlist and a request
    /// whose address nobody knows is refused (an allowlist never fails open).
    pub fn allows_client(&self, ip: Option<IpAddr>) -> bool {
        if self.allowed_networks.is_empty() {
            return true;
        }
        ip.is_some_and(|ip| self.allowed_networks.iter().any(|network| network.contains(ip)))
    }
}

/// The most calls any limit, the policy's or a key's, admits per window: an exact
/// sliding log holds one entry per admitted call.
pub const MAX_LIMIT: u32 = 100_000;

/// A limit one key carries: at most `limit` calls in any `window`, on every route or only
/// on the route with the template `route`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLimit {
    pub name: Arc<str>,
    pub limit: u32,
    pub window: Duration,
    pub route: Option<Arc<str>>,
}

impl KeyLimit {
    pub const MAX_WINDOW: Duration = Duration::from_secs(86_400);

    pub fn parse(name: &str, limit: u32, window_seconds: u64, route: &str) -> Result<Self, InvalidField> {
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !valid_name {
            return Err(InvalidField::new("limits.name", "must be 1 to 64 letters, digits, '_', '-' or '.'"));
        }
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(InvalidField::new("limits.limit", format!("must be 1 to {MAX_LIMIT}")));
        }
        if window_seconds == 0 || window_seconds > Self::MAX_WINDOW.as_secs() {
            return Err(InvalidField::new("limits.window_seconds", "must be between 1 second and 1 day"));
        }
        if route.len() > 512 || route.chars().any(char::is_control) {
            return Err(InvalidField::new("limits.route", "must be a route template of at most 512 characters"));
        }
        Ok(Self {
            name: name.into(),
            limit,
            window: Duration::from_secs(window_seconds),
            route: Some(route).filter(|r| !r.is_empty()).map(Into::into),
        })
    }

    pub fn applies_to(&self, route: &str) -> bool {
        self.route.as_deref().is_none_or(|r| r == route)
    }
}

/// A CIDR range, IPv4 or IPv6; a bare address is a range of one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        let invalid = || InvalidField::new("allowed_networks", format!("{raw:?} is not a CIDR range like 10.0.0.0/8"));
        let (address, prefix) = match raw.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (raw.trim(), None),
        };
        let written: IpAddr = address.parse().map_err(|_| invalid())?;
        let max = if written.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(invalid)?,
        };
        // IPv4-mapped IPv6 is IPv4, as client addresses are canonicalised: ::ffff:a.b.c.d/N
        // is a.b.c.d/(N - 96). A shorter prefix reaches past the mapped range.
        let address = written.to_canonical();
        let prefix = match (written, address) {
            (IpAddr::V6(_), IpAddr::V4(_)) => prefix.checked_sub(96).ok_or_else(|| {
                InvalidField::new(
                    "allowed_networks",
                    format!(
                        "{raw:?} is an IPv4-mapped IPv6 range (::ffff:a.b.c.d), which keygate reads as IPv4: \
                         its prefix must be /96 to /128 (/96 + the IPv4 prefix, e.g. ::ffff:192.0.2.0/120 \
                         is 192.0.2.0/24); write the IPv4 range itself"
                    ),
                )
            })?,
            _ => prefix,
        };
        Ok(Self { address: mask(address, prefix), prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.address.is_ipv4() && mask(ip, self.prefix) == self.address
    }
}

fn mask(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4) & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(bits.into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(bits.into())
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A JSON object an operator attaches to a key, handed to the upstream with every
/// allowed call. Its contents may be private to the customer: `Debug` shows its size.
#[derive(Clone, PartialEq, Eq)]
pub struct Metadata {
    json: Arc<str>,
    /// base64url of `json`, as edges send it upstream (`x-keygate-meta`): encoded once,
    /// when the record is read, not on every allowed call.
    header: Arc<str>,
}

impl Metadata {
    pub const MAX_BYTES: usize = 4096;

    /// Most bytes of metadata as written, whitespace included: what is bounded is the
    /// compact form; this only bounds the work of reading it.
    pub const MAX_WRITTEN_BYTES: usize = 16 * Self::MAX_BYTES;

    /// A JSON object whose compact form (the text as written, without the whitespace
    /// between tokens) is at most [`Self::MAX_BYTES`]; kept in that form, so its keys stay
    /// in the operator's order and its numbers as written.
    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        let too_long =
            || InvalidField::new("metadata_json", format!("must be at most {} bytes in compact form", Self::MAX_BYTES));
        if raw.len() > Self::MAX_WRITTEN_BYTES {
            return Err(too_long());
        }
        let value: serde_json::Value =
            serde_json::from_str(raw).map_err(|_| InvalidField::new("metadata_json", "is not valid JSON"))?;
        if !value.is_object() {
            return Err(InvalidField::new("metadata_json", "must be a JSON object"));
        }
        let compact = compact_json(raw);
        if compact.len() > Self::MAX_BYTES {
            return Err(too_long());
        }
        use base64::Engine;
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&compact);
        Ok(Self { json: compact.into(), header: header.into() })
    }

    pub fn as_json(&self) -> &str {
        &self.json
    }

    /// The metadata as one header value: base64url (no padding) of the compact JSON.
    pub fn as_header(&self) -> &str {
        &self.header
    }
}

/// `json` (valid JSON) without the whitespace between its tokens: strings, keys, their
/// order and numbers exactly as written.
fn compact_json(json: &str) -> String {
    let mut compact = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            compact.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            compact.push(c);
        }
    }
    compact
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Metadata(<{} bytes>)", self.json.len())
    }
}

/// How spent credits come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refill {
    pub amount: i64,
    pub every: RefillInterval,
    pub mode: RefillMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefillInterval {
    /// At 00:00 UTC.
    Daily,
    /// On the 1st of the month, 00:00 UTC.
    Monthly,
    /// Every so many seconds since the Unix epoch.
    Seconds(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefillMode {
    /// Remaining becomes the amount (unused credits do not carry over).
    To,
    /// The amount is added once per interval that has begun since the last refill.
    Add,
}

impl Refill {
    pub const MAX_AMOUNT: i64 = 1_000_000_000;

    pub fn parse(amount: i64, interval: &str, mode: &str) -> Result<Self, InvalidField> {
        if !(1..=Self::MAX_AMOUNT).contains(&amount) {
            return Err(InvalidField::new("credits.refill.amount", format!("must be 1 to {}", Self::MAX_AMOUNT)));
        }
        let every = match interval {
            "daily" => RefillInterval::Daily,
            "monthly" => RefillInterval::Monthly,
            other => other
                .strip_suffix('s')
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|n| *n >= 1)
                .map(RefillInterval::Seconds)
                .ok_or_else(|| {
                    InvalidField::new(
                        "credits.refill.interval",
                        "must be daily, monthly or a number of seconds like 3600s",
                    )
                })?,
        };
        let mode = match mode {
            "" | "to" => RefillMode::To,
            "add" => RefillMode::Add,
            _ => return Err(InvalidField::new("credits.refill.mode", "must be \"to\" or \"add\"")),
        };
        Ok(Self { amount, every, mode })
    }

    pub fn interval_str(&self) -> String {
        match self.every {
            RefillInterval::Daily => "daily".into(),
            RefillInterval::Monthly => "monthly".into(),
            RefillInterval::Seconds(n) => format!("{n}s"),
        }
    }

    pub fn mode_str(&self) -> &'static str {
        match self.mode {
            RefillMode::To => "to",
            RefillMode::Add => "add",
        }
    }

    /// Which interval `now` falls in, counted from the Unix epoch: credits are refilled
    /// once the stored period is older than this one.
    pub fn period(&self, now: Timestamp) -> i64 {
        let millis = now.as_millis();
        match self.every {
            RefillInterval::Seconds(n) => millis.div_euclid(i64::from(n) * 1000),
            RefillInterval::Daily => millis.div_euclid(86_400_000),
            RefillInterval::Monthly => {
                let (year, month, _) = keygate_api::time::civil_from_days(millis.div_euclid(86_400_000));
                year * 12 + (month - 1)
            }
        }
    }

    /// `balance` as it stands at `now`: refilled once per period begun since its own
    /// (to the amount, or adding the amount per period, at most [`CreditBalance::MAX`]).
    /// The SQL store computes the same inside its UPDATE.
    pub fn refilled(&self, balance: CreditBalance, now: Timestamp) -> CreditBalance {
        let period = self.period(now);
        if balance.period >= period {
            return balance;
        }
        let remaining = match self.mode {
            RefillMode::To => self.amount,
            RefillMode::Add => balance
                .remaining
                .saturating_add(self.amount.saturating_mul(period - balance.period))
                .min(CreditBalance::MAX),
        };
        CreditBalance { remaining, period }
    }

    /// When a call of `cost` can first pass on `balance` (too little for it, as it stands
    /// at `now`), by refills alone: `None` when no refill ever brings enough (a `to` refill
    /// smaller than the cost), so a caller is never told to retry a call that cannot pass.
    pub fn enough_for(&self, cost: i64, balance: CreditBalance, now: Timestamp) -> Option<Timestamp> {
        let period = self.period(now).max(balance.period);
        let periods = match self.mode {
            RefillMode::To => (self.amount >= cost).then_some(1)?,
            RefillMode::Add => {
                let missing = cost.saturating_sub(balance.remaining).max(1);
                let periods = missing.div_euclid(self.amount) + i64::from(missing.rem_euclid(self.amount) != 0);
                (balance.remaining.saturating_add(self.amount.saturating_mul(periods)) <= CreditBalance::MAX)
                    .then_some(periods)?
            }
        };
        Some(self.next_period_starts(period + periods - 1))
    }

    /// When the period after `period` begins.
    pub fn next_period_starts(&self, period: i64) -> Timestamp {
        let next = period + 1;
        Timestamp::from_millis(match self.every {
            RefillInterval::Seconds(n) => next * i64::from(n) * 1000,
            RefillInterval::Daily => next * 86_400_000,
            RefillInterval::Monthly => {
                keygate_api::time::days_from_civil(next.div_euclid(12), next.rem_euclid(12) + 1, 1) * 86_400_000
            }
        })
    }
}

/// A key's credits as stored: what is left, and the refill period it was last refilled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditBalance {
    pub remaining: i64,
    pub period: i64,
}

impl CreditBalance {
    pub const MAX: i64 = 1_000_000_000_000;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_hold_what_their_prefix_covers() {
        let v4 = Network::parse("10.1.2.3/8").unwrap();
        assert_eq!(v4.to_string(), "10.0.0.0/8");
        assert!(v4.contains("10.255.0.1".parse().unwrap()));
        assert!(v4.contains("::ffff:10.0.0.1".parse().unwrap()), "IPv4-mapped IPv6 is IPv4");
        assert!(!v4.contains("11.0.0.1".parse().unwrap()));
        assert!(!v4.contains("::a00:1".parse().unwrap()), "IPv6 is never inside an IPv4 range");
        let v6 = Network::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        let one = Network::parse("192.0.2.7").unwrap();
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        assert!(Network::parse("0.0.0.0/0").unwrap().contains("203.0.113.9".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "nope", "10.0.0.0/", "10.0.0.0/-1", ""] {
            assert!(Network::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_allowlist_refuses_an_unknown_address() {
        let terms = KeyTerms { allowed_networks: vec![Network::parse("10.0.0.0/8").unwrap()], ..Default::default() };
        assert!(!terms.allows_client(None));
        assert!(KeyTerms::default().allows_client(None));
    }

    #[test]
    fn metadata_is_a_bounded_json_object_and_debug_hides_it() {
        let meta = Metadata::parse(r#"{ "plan": "pro" }"#).unwrap();
        assert_eq!(meta.as_json(), r#"{"plan":"pro"}"#);
        assert_eq!(meta.as_header(), "eyJwbGFuIjoicHJvIn0", "base64url, no padding");
        assert_eq!(format!("{meta:?}"), "Metadata(<14 bytes>)");
        assert!(Metadata::parse("[1]").is_err());
        assert!(Metadata::parse("{").is_err());
        assert!(Metadata::parse(&format!(r#"{{"a":"{}"}}"#, "x".repeat(5000))).is_err());
        let written = "{ \"z\" : [1, 2.50e1] ,\n\t\"a\": \"x \\\" y\" }";
        assert_eq!(Metadata::parse(written).unwrap().as_json(), r#"{"z":[1,2.50e1],"a":"x \" y"}"#);
    }

    #[test]
    fn refill_periods_follow_the_calendar() {
        let monthly = Refill::parse(10, "monthly", "").unwrap();
        // 2026-11-25 and 2026-11-30 are one month; 2026-12-01 the next.
        let nov_25 = Timestamp::from_millis(1_795_629_230_123);
        let dec_1 = Timestamp::from_millis(1_796_083_200_000);
        assert_eq!(monthly.period(Timestamp::from_millis(dec_1.as_millis() - 1)), monthly.period(nov_25));
        assert_eq!(monthly.period(dec_1), monthly.period(nov_25) + 1);
        assert_eq!(monthly.next_period_starts(monthly.period(nov_25)), dec_1);
        let daily = Refill::parse(10, "daily", "add").unwrap();
        assert_eq!(daily.next_period_starts(daily.period(nov_25)), Timestamp::from_millis(1_795_651_200_000));
        let every = Refill::parse(10, "60s", "to").unwrap();
        assert_eq!(every.period(Timestamp::from_millis(119_999)), 1);
        for bad in [(0, "daily", ""), (1, "weekly", ""), (1, "0s", ""), (1, "daily", "more")] {
            assert!(Refill::parse(bad.0, bad.1, bad.2).is_err(), "{bad:?}");
        }
    }
}
