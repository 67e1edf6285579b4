//! Who may call a route (`accepts`, `public`) and how often (`limits`, `global_limit`).

use crate::domain::CredentialKind;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// The credential kinds a route accepts; `Public` routes need none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    Credentials(Accepts),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Accepts {
    pub api_key: bool,
    pub runtime_key: bool,
    pub session: bool,
}

impl Accepts {
    pub const API_KEY: Accepts = Accepts { api_key: true, runtime_key: false, session: false };

    pub fn allows(self, kind: CredentialKind) -> bool {
        match kind {
            CredentialKind::ApiKey => self.api_key,
            CredentialKind::RuntimeKey => self.runtime_key,
            CredentialKind::Session => self.session,
        }
    }

    /// Accepts a key of some kind (so a missing credential is an invalid key, not a
    /// missing session).
    pub fn any_key(self) -> bool {
        self.api_key || self.runtime_key
    }

    pub(super) fn parse(names: &[String]) -> Result<Self, String> {
        if names.is_empty() {
            return Err("accepts must name at least one of api_key, runtime_key, session (or set public = true)".into());
        }
        let mut accepts = Accepts::default();
        for name in names {
            match name.as_str() {
                "api_key" => accepts.api_key = true,
                "runtime_key" => accepts.runtime_key = true,
                "session" => accepts.session = true,
                other => {
                    return Err(format!("accepts: unknown credential kind {other:?} (api_key, runtime_key, session)"))
                }
            }
        }
        Ok(accepts)
    }
}

/// What a rate limit counts per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitSubject {
    /// The caller's account (key's or session's).
    Account,
    /// The credential itself: the key id or the session id. Spelled `key` in policies.
    #[serde(rename = "key")]
    Credential,
    /// The application the request is about (from the path or the request).
    Application,
    /// The request's `client_ip`.
    Ip,
}

impl LimitSubject {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitSubject::Account => "account",
            LimitSubject::Credential => "key",
            LimitSubject::Application => "application",
            LimitSubject::Ip => "ip",
        }
    }
}

/// When the shared counter store (Redis) cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Refuse to decide: Authorize returns UNAVAILABLE. The default for route limits.
    Closed,
    /// Count in this process only until the store is back. The default for the global limit.
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Window {
    Second,
    Minute,
    Hour,
    Day,
}

impl Window {
    fn duration(self) -> Duration {
        Duration::from_secs(match self {
            Window::Second => 1,
            Window::Minute => 60,
            Window::Hour => 3600,
            Window::Day => 86_400,
        })
    }
}

/// At most `limit` requests per `window` (sliding: in *any* window of that length) for
/// each subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitRule {
    /// Stable across reloads: "global", or the route template with the limit's position.
    pub key: Arc<str>,
    pub limit: u32,
    pub window: Duration,
    pub per: LimitSubject,
    pub on_store_error: OnStoreError,
    pub kind: LimitKind,
}

/// How a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// A log of admitted requests: exact to the millisecond, memory growing with the limit.
    /// For the low-rate business limits (10 an hour).
    #[default]
    Exact,
    /// Counts in 100 buckets per window: constant memory per subject, and never more than
    /// the limit in any window (a request may be refused up to a hundredth of the window
    /// early). For the global limit and plan tiers.
    HighRate,
}

pub use crate::domain::MAX_LIMIT;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitEntry {
    limit: u32,
    window: Window,
    #[serde(default = "per_account")]
    per: LimitSubject,
    on_store_error: Option<OnStoreError>,
    #[serde(default)]
    kind: LimitKind,
}

fn per_account() -> LimitSubject {
    LimitSubject::Account
}

impl LimitEntry {
    pub(super) fn into_rule(self, key: String, default_on_error: OnStoreError) -> Result<LimitRule, String> {
        if !(1..=MAX_LIMIT).contains(&self.limit) {
            return Err(format!("limit must be between 1 and {MAX_LIMIT}"));
        }
        Ok(LimitRule {
            key: key.into(),
            limit: self.limit,
            window: self.window.duration(),
            per: self.per,
            on_store_error: self.on_store_error.unwrap_or(default_on_error),
            kind: self.kind,
        })
    }
}
