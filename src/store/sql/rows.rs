use super::*;

/// A key with its last use, which lives in its own table: usage is written in batches
/// and must not notify replicas or bump the key's version as a change would. Its credits
/// are its successor's while a roll overlaps (they moved there); its owner's shared terms
/// and balance come with it.
pub(super) const KEY_SELECT: &str = "SELECT api_keys.id, api_keys.account_id, kind, name, scopes, application_ids, \
     secret_hash, api_keys.created_at, api_keys.updated_at, expires_at, revoked_at, retire_at, revoked_reason, \
     version, verified_digest, u.last_used_at, disabled, api_keys.terms, \
     c.remaining AS credits_remaining, c.period AS credits_period, \
     api_keys.owner_id, rolled_from, rolled_to, lookup, o.owner_id AS owner_found, o.terms AS owner_terms, \
     o.updated_at AS owner_updated_at, oc.remaining AS owner_credits_remaining, oc.period AS owner_credits_period \
     FROM api_keys LEFT JOIN key_usage u ON u.key_id = api_keys.id \
     LEFT JOIN key_credits c ON c.key_id = COALESCE(api_keys.rolled_to, api_keys.id) \
     LEFT JOIN owners o ON o.account_id = api_keys.account_id AND o.owner_id = api_keys.owner_id \
     LEFT JOIN key_credits oc ON oc.key_id = 'owner/' || api_keys.account_id || '/' || api_keys.owner_id";
pub(super) const OWNER_SELECT: &str = "SELECT o.account_id, o.owner_id, o.terms, o.updated_at, \
     c.remaining AS credits_remaining, c.period AS credits_period FROM owners o \
     LEFT JOIN key_credits c ON c.key_id = 'owner/' || o.account_id || '/' || o.owner_id";
pub(super) fn key_from_row(row: &AnyRow) -> Result<KeyRecord, StoreError> {
    let scopes: Vec<String> = serde_json::from_str(row.try_get("scopes")?).map_err(|_| corrupt("api_keys.scopes"))?;
    let application_ids: Vec<String> =
        serde_json::from_str(row.try_get("application_ids")?).map_err(|_| corrupt("api_keys.application_ids"))?;
    let optional_time = |column| -> Result<Option<Timestamp>, StoreError> {
        Ok(row.try_get::<Option<i64>, _>(column)?.map(Timestamp::from_millis))
    };
    let kind = match row.try_get::<&str, _>("kind")? {
        "api_key" => KeyKind::ApiKey,
        "runtime" => KeyKind::Runtime,
        _ => return Err(corrupt("api_keys.kind")),
    };
    Ok(KeyRecord {
        id: KeyId::from_stored(row.try_get("id")?).ok_or_else(|| corrupt("api_keys.id"))?,
        account_id: AccountId::parse(row.try_get("account_id")?).map_err(|_| corrupt("api_keys.account_id"))?,
        kind,
        name: Name::from_trusted(row.try_get("name")?),
        scopes: Scopes::parse_grants(&scopes).map_err(|_| corrupt("api_keys.scopes"))?,
        application_ids: application_ids
            .iter()
            .map(|id| ApplicationId::parse(id))
            .collect::<Result<_, _>>()
            .map_err(|_| corrupt("api_keys.application_ids"))?,
        secret_hash: SecretHash::new(row.try_get("secret_hash")?),
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        updated_at: Timestamp::from_millis(row.try_get("updated_at")?),
        expires_at: optional_time("expires_at")?,
        revoked_at: optional_time("revoked_at")?,
        retire_at: optional_time("retire_at")?,
        revoked_reason: row.try_get("revoked_reason")?,
        version: row.try_get("version")?,
        verified_digest: match row.try_get::<Option<&str>, _>("verified_digest")? {
            None => None,
            Some(text) => Some(VerifiedDigest::from_hex(text).ok_or_else(|| corrupt("api_keys.verified_digest"))?),
        },
        last_used_at: optional_time("last_used_at")?,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        terms: match row.try_get::<Option<&str>, _>("terms")? {
            None => KeyTerms::default(),
            Some(text) => StoredTerms::read(text).ok_or_else(|| corrupt("api_keys.terms"))?,
        },
        credits: balance_of(row, "credits_remaining", "credits_period")?,
        owner_id: match row.try_get::<Option<&str>, _>("owner_id")? {
            None => None,
            Some(id) => Some(OwnerId::parse(id).map_err(|_| corrupt("api_keys.owner_id"))?),
        },
        owner: match row.try_get::<Option<&str>, _>("owner_found")? {
            None => None,
            Some(_) => {
                Some(Arc::new(owner_from_row(row, "owner_found", "owner_terms", "owner_updated_at", "owner_credits")?))
            }
        },
        rolled_from: stored_key_id(row, "rolled_from")?,
        rolled_to: stored_key_id(row, "rolled_to")?,
        lookup: row.try_get::<Option<String>, _>("lookup")?.map(crate::domain::Lookup::new),
    })
}

pub(super) fn stored_key_id(row: &AnyRow, column: &'static str) -> Result<Option<KeyId>, StoreError> {
    match row.try_get::<Option<&str>, _>(column)? {
        None => Ok(None),
        Some(id) => KeyId::from_stored(id).map(Some).ok_or_else(|| corrupt(column)),
    }
}

/// A balance from its two columns (`<prefix>_remaining`, `<prefix>_period`), if any.
pub(super) fn balance_of(row: &AnyRow, remaining: &str, period: &str) -> Result<Option<CreditBalance>, StoreError> {
    Ok(match row.try_get::<Option<i64>, _>(remaining)? {
        None => None,
        Some(remaining) => Some(CreditBalance { remaining, period: row.try_get(period)? }),
    })
}

/// An owner from a row that names its columns (alone, or joined to a key's).
pub(super) fn owner_from_row(
    row: &AnyRow,
    id: &str,
    terms: &str,
    updated_at: &str,
    credits: &str,
) -> Result<Owner, StoreError> {
    let stored = match row.try_get::<Option<&str>, _>(terms)? {
        None => KeyTerms::default(),
        Some(text) => StoredTerms::read(text).ok_or_else(|| corrupt("owners.terms"))?,
    };
    Ok(Owner {
        account_id: AccountId::parse(row.try_get("account_id")?).map_err(|_| corrupt("owners.account_id"))?,
        id: OwnerId::parse(row.try_get(id)?).map_err(|_| corrupt("owners.owner_id"))?,
        limits: stored.limits,
        refill: stored.refill,
        credits: balance_of(row, &format!("{credits}_remaining"), &format!("{credits}_period"))?,
        updated_at: Timestamp::from_millis(row.try_get(updated_at)?),
    })
}

/// A key's terms as the `terms` column holds them (JSON), written and read only here.
#[derive(serde::Serialize, serde::Deserialize, Default)]
pub(super) struct StoredTerms {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    limits: Vec<StoredLimit>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    allowed_networks: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metadata: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refill: Option<StoredRefill>,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct StoredLimit {
    name: String,
    limit: u32,
    window_seconds: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    route: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct StoredRefill {
    amount: i64,
    interval: String,
    mode: String,
}

impl StoredTerms {
    /// `None` for terms that carry nothing: the column stays NULL.
    pub(super) fn write(terms: &KeyTerms) -> Option<String> {
        if *terms == KeyTerms::default() {
            return None;
        }
        let stored = StoredTerms {
            limits: terms
                .limits
                .iter()
                .map(|l| StoredLimit {
                    name: l.name.to_string(),
                    limit: l.limit,
                    window_seconds: l.window.as_secs(),
                    route: l.route.as_deref().unwrap_or_default().to_owned(),
                })
                .collect(),
            allowed_networks: terms.allowed_networks.iter().map(ToString::to_string).collect(),
            metadata: terms.metadata.as_ref().map(|m| m.as_json().to_owned()),
            refill: terms.refill.map(|r| StoredRefill {
                amount: r.amount,
                interval: r.interval_str(),
                mode: r.mode_str().to_owned(),
            }),
        };
        Some(serde_json::to_string(&stored).expect("terms serialize"))
    }

    /// Through the same parsers and checks as the admin API: a row keygate did not write
    /// is corrupt.
    pub(super) fn read(text: &str) -> Option<KeyTerms> {
        let stored: StoredTerms = serde_json::from_str(text).ok()?;
        let terms = KeyTerms {
            limits: stored
                .limits
                .iter()
                .map(|l| KeyLimit::parse(&l.name, l.limit, l.window_seconds, &l.route).ok())
                .collect::<Option<_>>()?,
            allowed_networks: stored.allowed_networks.iter().map(|n| Network::parse(n).ok()).collect::<Option<_>>()?,
            metadata: match &stored.metadata {
                None => None,
                Some(json) => Some(Metadata::parse(json).ok()?),
            },
            refill: match &stored.refill {
                None => None,
                Some(r) => Some(Refill::parse(r.amount, &r.interval, &r.mode).ok()?),
            },
        };
        terms.check().ok()?;
        Some(terms)
    }
}

/// A SHA-256 digest stored as 64 hex digits.
pub(super) fn digest_from_hex(digest_hex: &str, column: &'static str) -> Result<[u8; 32], StoreError> {
    crate::domain::from_hex(digest_hex).ok_or_else(|| corrupt(column))
}

pub(super) fn scopes_json(scopes: &Scopes) -> String {
    serde_json::to_string(&scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>()).expect("strings serialize")
}

pub(super) fn application_ids_json(ids: &[ApplicationId]) -> String {
    serde_json::to_string(&ids.iter().map(|s| s.as_str()).collect::<Vec<_>>()).expect("strings serialize")
}
