//! The flags that set what a key carries: `--limit 100/min`, `--credits 1000`,
//! `--refill 1000/month`, `--allow-ip 10.0.0.0/8`, `--meta '{"plan":"pro"}'`. Parsed here
//! into the API's messages; the server checks them again and has the last word.

use keygate_api::proto as pb;

/// `[NAME=]LIMIT/WINDOW[@ROUTE]`: `100/min`, `burst=10/10s`, `5/hour@GET /api/v1/x`.
/// WINDOW: `s`, `min`, `hour`, `day`, or a count of seconds like `30s`.
pub fn parse_limit(raw: &str) -> Result<pb::KeyLimit, String> {
    let (rule, route) = match raw.split_once('@') {
        Some((rule, route)) => (rule, route.trim()),
        None => (raw, ""),
    };
    let (name, rate) = match rule.split_once('=') {
        Some((name, rate)) => (name.trim(), rate),
        None => ("", rule),
    };
    let (limit, window) = rate.trim().split_once('/').ok_or_else(|| format!("{raw:?}: write a limit as 100/min"))?;
    let limit: u32 = limit.trim().parse().map_err(|_| format!("{raw:?}: {limit:?} is not a number of calls"))?;
    let window_seconds = window_seconds(window.trim())
        .ok_or_else(|| format!("{raw:?}: the window must be s, min, hour, day or a number of seconds like 30s"))?;
    Ok(pb::KeyLimit { name: name.to_owned(), limit, window_seconds, route: route.to_owned() })
}

fn window_seconds(window: &str) -> Option<u32> {
    match window {
        "s" | "sec" | "second" => Some(1),
        "m" | "min" | "minute" => Some(60),
        "h" | "hour" => Some(3600),
        "d" | "day" => Some(86_400),
        other => other.strip_suffix('s')?.parse().ok(),
    }
}

/// A window as `--limit` takes it: `s`, `min`, `hour`, `day`, else a count like `30s`.
pub fn window_name(seconds: u32) -> String {
    match seconds {
        1 => "s".to_owned(),
        60 => "min".to_owned(),
        3600 => "hour".to_owned(),
        86_400 => "day".to_owned(),
        other => format!("{other}s"),
    }
}

/// A refill interval as `--refill` takes it: `month`, `day`, or a count like `3600s`.
pub fn interval_name(interval: &str) -> &str {
    match interval {
        "monthly" => "month",
        "daily" => "day",
        other => other,
    }
}

/// Names the limits given without one: `limit1`, `limit2`, ... in order.
pub fn named(mut limits: Vec<pb::KeyLimit>) -> Vec<pb::KeyLimit> {
    for (i, limit) in limits.iter_mut().enumerate() {
        if limit.name.is_empty() {
            limit.name = format!("limit{}", i + 1);
        }
    }
    limits
}

/// `AMOUNT/INTERVAL`: `1000/month`, `50/day`, `10/3600s`.
pub fn parse_refill(raw: &str) -> Result<pb::Refill, String> {
    let (amount, interval) = raw.split_once('/').ok_or_else(|| format!("{raw:?}: write a refill as 1000/month"))?;
    let amount: i64 = amount.trim().parse().map_err(|_| format!("{raw:?}: {amount:?} is not a number"))?;
    let interval = match interval.trim() {
        "month" | "monthly" => "monthly".to_owned(),
        "day" | "daily" => "daily".to_owned(),
        seconds if seconds.ends_with('s') => seconds.to_owned(),
        _ => return Err(format!("{raw:?}: the interval must be month, day or a number of seconds like 3600s")),
    };
    Ok(pb::Refill { amount, interval, mode: String::new() })
}

/// Credits from `--credits`, `--refill` and `--refill-mode`; `None` without `--credits`.
pub fn credits(remaining: Option<i64>, refill: Option<pb::Refill>, mode: Option<String>) -> Option<pb::Credits> {
    let refill = refill.map(|r| pb::Refill { mode: mode.unwrap_or_default(), ..r });
    remaining.map(|remaining| pb::Credits { remaining, refill })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_read_as_written() {
        let limit = parse_limit("burst=10/30s@GET /api/v1/x").unwrap();
        assert_eq!((limit.name.as_str(), limit.limit, limit.window_seconds), ("burst", 10, 30));
        assert_eq!(limit.route, "GET /api/v1/x");
        assert_eq!(parse_limit("100/min").unwrap().window_seconds, 60);
        assert_eq!(named(vec![parse_limit("1/day").unwrap()])[0].name, "limit1");
        for written in ["1/s", "100/min", "5/hour", "7/day", "10/30s"] {
            let limit = parse_limit(written).unwrap();
            assert_eq!(format!("{}/{}", limit.limit, window_name(limit.window_seconds)), written, "shown as written");
        }
        for bad in ["100", "x/min", "10/week", "10/"] {
            assert!(parse_limit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refills_read_as_written() {
        assert_eq!(parse_refill("1000/month").unwrap().interval, "monthly");
        assert_eq!(parse_refill("5/3600s").unwrap().interval, "3600s");
        assert!(parse_refill("5/week").is_err());
        assert!(credits(None, Some(parse_refill("1/day").unwrap()), None).is_none());
    }
}
