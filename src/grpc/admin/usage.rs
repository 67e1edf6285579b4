//! Usage's RPCs: GetUsage and TopKeys.

use super::call::grant_of;
use crate::domain::{AccountId, InvalidField, KeyId, OwnerId, Timestamp};
use crate::grpc::convert::{timestamp_from_proto, timestamp_to_proto};
use crate::grpc::proto as pb;
use crate::manage::usage::{UsageRange, UsageSubject};
use crate::manage::Manager;
use crate::store::usage::{Granularity, UsageCount};
use std::collections::BTreeMap;
use tonic::{Request, Response, Status};

fn granularity(raw: &str) -> Result<Granularity, InvalidField> {
    match raw {
        "" => Ok(Granularity::Minute),
        raw => Granularity::parse(raw).ok_or_else(|| {
            InvalidField::new("granularity", format!("must be minute, hour or day, not {:?}", raw.escape_debug()))
        }),
    }
}

fn range(
    from: Option<&prost_types::Timestamp>,
    to: Option<&prost_types::Timestamp>,
    raw_granularity: &str,
) -> Result<UsageRange, InvalidField> {
    Ok(UsageRange {
        from: from.map(|ts| timestamp_from_proto("from", ts)).transpose()?,
        to: to.map(|ts| timestamp_from_proto("to", ts)).transpose()?,
        granularity: granularity(raw_granularity)?,
    })
}

fn subject(req: &pb::GetUsageRequest) -> Result<UsageSubject, InvalidField> {
    match req.subject.as_str() {
        "key" => Ok(UsageSubject::Key(KeyId::parse(&req.id)?)),
        "owner" => {
            if req.account_id.is_empty() {
                return Err(InvalidField::new(
                    "account_id",
                    "required for an owner (owners are named within an account)",
                ));
            }
            Ok(UsageSubject::Owner(AccountId::parse(&req.account_id)?, OwnerId::parse(&req.id)?))
        }
        "account" => Ok(UsageSubject::Account(AccountId::parse(&req.id)?)),
        other => {
            Err(InvalidField::new("subject", format!("must be key, owner or account, not {:?}", other.escape_debug())))
        }
    }
}

fn outcome(code: &str, reason: &str, count: u64) -> pb::OutcomeCount {
    pb::OutcomeCount { code: code.to_owned(), reason: reason.to_owned(), count }
}

/// Stored counts (by bucket, then outcome) as buckets, and the range's totals.
fn series(counts: &[UsageCount]) -> (Vec<pb::UsageBucket>, Vec<pb::OutcomeCount>) {
    let mut buckets: Vec<pb::UsageBucket> = Vec::new();
    let mut totals: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for count in counts {
        let start = Some(timestamp_to_proto(Timestamp::from_millis(count.bucket_start)));
        if buckets.last().is_none_or(|bucket| bucket.start != start) {
            buckets.push(pb::UsageBucket { start, ..Default::default() });
        }
        let bucket = buckets.last_mut().expect("pushed above");
        match count.code.as_str() {
            "allowed" => bucket.allowed += count.n,
            _ => bucket.denied += count.n,
        }
        bucket.outcomes.push(outcome(&count.code, &count.reason, count.n));
        *totals.entry((&count.code, &count.reason)).or_default() += count.n;
    }
    let totals = totals.into_iter().map(|((code, reason), n)| outcome(code, reason, n)).collect();
    (buckets, totals)
}

pub(super) async fn get(
    manager: &Manager,
    request: Request<pb::GetUsageRequest>,
) -> Result<Response<pb::GetUsageResponse>, Status> {
    let grant = grant_of(&request)?;
    let req = request.get_ref();
    let subject = subject(req)?;
    let range = range(req.from.as_ref(), req.to.as_ref(), &req.granularity)?;
    let usage = manager.usage(&grant, &subject, range).await?;
    let (buckets, totals) = series(&usage.counts);
    Ok(Response::new(pb::GetUsageResponse {
        granularity: usage.granularity.as_str().to_owned(),
        from: Some(timestamp_to_proto(usage.from)),
        to: Some(timestamp_to_proto(usage.to)),
        buckets,
        totals,
    }))
}

pub(super) async fn top(
    manager: &Manager,
    request: Request<pb::TopKeysRequest>,
) -> Result<Response<pb::TopKeysResponse>, Status> {
    let grant = grant_of(&request)?;
    let req = request.get_ref();
    let account = AccountId::parse(&req.account_id)?;
    let range = range(req.from.as_ref(), req.to.as_ref(), &req.granularity)?;
    let by_denials = match req.by.as_str() {
        "" | "requests" => false,
        "denials" => true,
        other => {
            return Err(
                InvalidField::new("by", format!("must be requests or denials, not {:?}", other.escape_debug())).into()
            )
        }
    };
    let limit = (req.limit != 0).then_some(req.limit);
    let (from, to, keys) = manager.top_keys(&grant, &account, range, by_denials, limit).await?;
    let keys = keys
        .into_iter()
        .map(|key| pb::KeyUsage {
            key_id: key.key_id,
            requests: key.allowed + key.denied,
            allowed: key.allowed,
            denied: key.denied,
        })
        .collect();
    Ok(Response::new(pb::TopKeysResponse {
        from: Some(timestamp_to_proto(from)),
        to: Some(timestamp_to_proto(to)),
        keys,
    }))
}
