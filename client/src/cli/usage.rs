//! `keygate usage key|owner|account|top`: decisions by outcome over time, and an account's
//! top keys, as tables or `--json`.

use super::print::{explain, show};
use super::Connection;
use clap::Subcommand;
use keygate_api::proto as pb;
use keygate_api::time::rfc3339 as time;
use serde_json::{json, Value};

#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// A key's decisions by outcome, per bucket.
    Key {
        id: String,
        #[command(flatten)]
        range: RangeArgs,
        #[command(flatten)]
        connection: Connection,
    },
    /// An owner's decisions (all its keys) by outcome, per bucket.
    Owner {
        id: String,
        #[arg(long)]
        account: String,
        #[command(flatten)]
        range: RangeArgs,
        #[command(flatten)]
        connection: Connection,
    },
    /// An account's decisions (all its keys) by outcome, per bucket.
    Account {
        id: String,
        #[command(flatten)]
        range: RangeArgs,
        #[command(flatten)]
        connection: Connection,
    },
    /// An account's keys with the most requests or denials.
    Top {
        #[arg(long)]
        account: String,
        /// requests or denials.
        #[arg(long, default_value = "requests")]
        by: String,
        /// 1 to 100.
        #[arg(long, default_value_t = 10)]
        limit: u32,
        #[command(flatten)]
        range: RangeArgs,
        #[command(flatten)]
        connection: Connection,
    },
}

/// A range of buckets: each end an RFC 3339 time (2026-12-07T10:00:00Z) or a time ago
/// (90m, 2h, 7d).
#[derive(Debug, clap::Args)]
pub struct RangeArgs {
    /// Start (inclusive). Default: an hour, a day or 30 days before --to, by granularity.
    #[arg(long, value_parser = parse_time)]
    pub from: Option<prost_types::Timestamp>,
    /// End (exclusive). Default: now.
    #[arg(long, value_parser = parse_time)]
    pub to: Option<prost_types::Timestamp>,
    /// minute, hour or day.
    #[arg(long, default_value = "minute")]
    pub granularity: String,
}

/// `2026-12-07T10:00:00Z` (seconds and `Z` optional), or a duration ago (`2h`).
pub fn parse_time(raw: &str) -> Result<prost_types::Timestamp, String> {
    if let Ok(ago) = super::parse_duration(raw) {
        let at = std::time::SystemTime::now().checked_sub(ago).unwrap_or(std::time::UNIX_EPOCH);
        let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        return Ok(prost_types::Timestamp { seconds: since.as_secs() as i64, nanos: 0 });
    }
    let bad = || format!("{raw:?} is neither a time like 2026-12-07T10:00:00Z nor a duration ago like 2h");
    let text = raw.trim().trim_end_matches('Z');
    let (date, clock) = text.split_once('T').ok_or_else(bad)?;
    let number = |s: &str| s.parse::<i64>().map_err(|_| bad());
    let mut date = date.splitn(3, '-');
    let (year, month, day) =
        (number(date.next().unwrap_or(""))?, number(date.next().unwrap_or(""))?, number(date.next().unwrap_or(""))?);
    let mut clock = clock.splitn(3, ':');
    let (hour, minute) = (number(clock.next().unwrap_or(""))?, number(clock.next().unwrap_or(""))?);
    // Fractions of a second (as keygate prints times) are dropped.
    let second = clock.next().map_or(Ok(0), |s| number(s.split('.').next().unwrap_or(s)))?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return Err(bad());
    }
    let days = keygate_api::time::days_from_civil(year, month, day);
    Ok(prost_types::Timestamp { seconds: days * 86_400 + hour * 3600 + minute * 60 + second, nanos: 0 })
}

fn outcome_json(outcome: &pb::OutcomeCount) -> Value {
    json!({ "code": outcome.code, "reason": outcome.reason, "count": outcome.count })
}

fn outcome_text(outcome: &pb::OutcomeCount) -> String {
    match outcome.reason.as_str() {
        "" => format!("{}={}", outcome.code, outcome.count),
        reason => format!("{}/{}={}", outcome.code, reason, outcome.count),
    }
}

fn outcomes_text(outcomes: &[pb::OutcomeCount]) -> String {
    outcomes.iter().map(outcome_text).collect::<Vec<_>>().join(" ")
}

fn series(json: bool, subject: &str, id: &str, usage: &pb::GetUsageResponse) {
    let buckets: Vec<Value> = usage
        .buckets
        .iter()
        .map(|b| {
            json!({
                "start": time(&b.start), "allowed": b.allowed, "denied": b.denied,
                "outcomes": b.outcomes.iter().map(outcome_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    let value = json!({
        "subject": subject, "id": id, "granularity": usage.granularity,
        "from": time(&usage.from), "to": time(&usage.to), "buckets": buckets,
        "totals": usage.totals.iter().map(outcome_json).collect::<Vec<_>>(),
    });
    let mut text = format!(
        "{subject} {id}, per {}, from {} to {}\n",
        usage.granularity,
        time(&usage.from).unwrap_or_default(),
        time(&usage.to).unwrap_or_default()
    );
    if usage.buckets.is_empty() {
        text.push_str("(no decisions)");
    } else {
        text.push_str(&format!("{:<24} {:>9} {:>9}  OUTCOMES", "BUCKET", "ALLOWED", "DENIED"));
        for b in &usage.buckets {
            let start = time(&b.start).unwrap_or_default();
            text.push_str(&format!("\n{start:<24} {:>9} {:>9}  {}", b.allowed, b.denied, outcomes_text(&b.outcomes)));
        }
        text.push_str(&format!("\nTOTAL  {}", outcomes_text(&usage.totals)));
    }
    show(json, value, text);
}

fn top(json: bool, account: &str, top: &pb::TopKeysResponse) {
    let keys: Vec<Value> = top
        .keys
        .iter()
        .map(|k| json!({ "key_id": k.key_id, "requests": k.requests, "allowed": k.allowed, "denied": k.denied }))
        .collect();
    let value = json!({ "account_id": account, "from": time(&top.from), "to": time(&top.to), "keys": keys });
    let mut text =
        format!("{account}, from {} to {}\n", time(&top.from).unwrap_or_default(), time(&top.to).unwrap_or_default());
    if top.keys.is_empty() {
        text.push_str("(no decisions)");
    } else {
        text.push_str(&format!("{:<22} {:>9} {:>9} {:>9}", "KEY", "REQUESTS", "ALLOWED", "DENIED"));
        for k in &top.keys {
            text.push_str(&format!("\n{:<22} {:>9} {:>9} {:>9}", k.key_id, k.requests, k.allowed, k.denied));
        }
    }
    show(json, value, text);
}

pub(super) async fn run_usage(command: UsageCommand) -> anyhow::Result<()> {
    let (subject, id, account, range, connection) = match command {
        UsageCommand::Top { account, by, limit, range, connection } => {
            let request = pb::TopKeysRequest {
                account_id: account.clone(),
                from: range.from,
                to: range.to,
                granularity: range.granularity,
                by,
                limit,
            };
            let reply = connection.rpc().await?.top_keys(request).await.map_err(explain)?.into_inner();
            top(connection.json, &account, &reply);
            return Ok(());
        }
        UsageCommand::Key { id, range, connection } => ("key", id, String::new(), range, connection),
        UsageCommand::Owner { id, account, range, connection } => ("owner", id, account, range, connection),
        UsageCommand::Account { id, range, connection } => ("account", id, String::new(), range, connection),
    };
    let request = pb::GetUsageRequest {
        subject: subject.to_owned(),
        id: id.clone(),
        account_id: account,
        from: range.from,
        to: range.to,
        granularity: range.granularity,
    };
    let reply = connection.rpc().await?.get_usage(request).await.map_err(explain)?.into_inner();
    series(connection.json, subject, &id, &reply);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_ago() {
        assert_eq!(parse_time("2026-12-07T10:00:00Z").unwrap().seconds, 1_796_637_600);
        assert_eq!(parse_time("2026-12-07T10:00").unwrap().seconds, 1_796_637_600);
        assert_eq!(parse_time("2026-12-07T10:00:00.250Z").unwrap().seconds, 1_796_637_600);
        assert!(parse_time("2h").is_ok());
        let bad = parse_time("yesterday").unwrap_err();
        assert!(bad.contains("neither a time"), "{bad}");
        assert!(parse_time("2026-13-07T10:00:00Z").is_err());
    }
}
