//! The one place that knows the error page's codes: their strings, HTTP statuses, gRPC
//! statuses, default messages and JSON envelopes. Nothing else spells `"api_key_revoked"`.

/// Every stable code of the management API's error page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    ValidationError,
    BadRequest,
    Unauth,
    ApiKeyInvalid,
    ApiKeyExpired,
    ApiKeyRevoked,
    InsufficientScope,
    ApplicationForbidden,
    SessionRequired,
    NotFound,
    RateLimitReached,
    InternalError,
}

impl Code {
    pub const ALL: [Code; 12] = [
        Code::ValidationError,
        Code::BadRequest,
        Code::Unauth,
        Code::ApiKeyInvalid,
        Code::ApiKeyExpired,
        Code::ApiKeyRevoked,
        Code::InsufficientScope,
        Code::ApplicationForbidden,
        Code::SessionRequired,
        Code::NotFound,
        Code::RateLimitReached,
        Code::InternalError,
    ];

    /// The code exactly as the error page spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Code::ValidationError => "VALIDATION_ERROR",
            Code::BadRequest => "bad_request",
            Code::Unauth => "unauth",
            Code::ApiKeyInvalid => "api_key_invalid",
            Code::ApiKeyExpired => "api_key_expired",
            Code::ApiKeyRevoked => "api_key_revoked",
            Code::InsufficientScope => "insufficient_scope",
            Code::ApplicationForbidden => "application_forbidden",
            Code::SessionRequired => "session_required",
            Code::NotFound => "not_found",
            Code::RateLimitReached => "rate_limit_reached",
            Code::InternalError => "INTERNAL_ERROR",
        }
    }

    pub const fn http_status(self) -> u16 {
        match self {
            Code::ValidationError | Code::BadRequest => 400,
            Code::Unauth | Code::ApiKeyInvalid | Code::ApiKeyExpired | Code::ApiKeyRevoked => 401,
            Code::InsufficientScope | Code::ApplicationForbidden | Code::SessionRequired => 403,
            Code::NotFound => 404,
            Code::RateLimitReached => 429,
            Code::InternalError => 500,
        }
    }

    /// The gRPC status code for when this code is an error of an RPC itself (admin calls),
    /// not a decision inside a successful Authorize response.
    pub const fn grpc_code(self) -> tonic::Code {
        match self {
            Code::ValidationError | Code::BadRequest => tonic::Code::InvalidArgument,
            Code::Unauth | Code::ApiKeyInvalid | Code::ApiKeyExpired | Code::ApiKeyRevoked => {
                tonic::Code::Unauthenticated
            }
            Code::InsufficientScope | Code::ApplicationForbidden | Code::SessionRequired => {
                tonic::Code::PermissionDenied
            }
            Code::NotFound => tonic::Code::NotFound,
            Code::RateLimitReached => tonic::Code::ResourceExhausted,
            Code::InternalError => tonic::Code::Internal,
        }
    }

    /// The error page's meaning, as the default human text of a deny.
    pub const fn default_message(self) -> &'static str {
        match self {
            Code::ValidationError => "Request does not match the schema",
            Code::BadRequest => "The request is invalid for the resource",
            Code::Unauth => "Dashboard session is missing or invalid",
            Code::ApiKeyInvalid => "API key is missing, malformed, unknown, or hash verification failed",
            Code::ApiKeyExpired => "API key is past its expiration time",
            Code::ApiKeyRevoked => "API key has been revoked",
            Code::InsufficientScope => "The key does not include the scope required by the route",
            Code::ApplicationForbidden => "The key is restricted away from the requested application",
            Code::SessionRequired => "The route accepts only dashboard session authentication",
            Code::NotFound => "The requested application or related resource was not found",
            Code::RateLimitReached => "A rate limit was exceeded",
            Code::InternalError => "Unhandled server error",
        }
    }
}

/// Why a request was denied, finer than its [`Code`]: the code stays the error page's
/// vocabulary and decides the HTTP status; the reason tells an operator or a client which
/// rule said no (`disabled` and `revoked` are both `api_key_revoked`). Stable snake_case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The request is malformed (VALIDATION_ERROR, bad_request).
    InvalidRequest,
    /// No route of the policy matches the method and path.
    NoRoute,
    /// No credential, or one that is malformed, unknown or wrong.
    InvalidCredential,
    /// The route accepts only dashboard sessions.
    SessionRequired,
    /// The dashboard session is missing, expired or revoked.
    SessionInvalid,
    Expired,
    Revoked,
    /// The key was rolled (`RerollApiKey`) and its overlap has ended: its successor works.
    Rolled,
    /// Switched off by an operator; enabling the key restores it.
    Disabled,
    /// The key's IP allowlist does not hold the client's address.
    IpNotAllowed,
    /// The key is restricted to other applications.
    ApplicationNotAllowed,
    /// The application does not exist for the key's account.
    ApplicationNotFound,
    InsufficientScope,
    /// A limit of the route policy.
    RateLimited,
    /// A limit the key itself carries.
    KeyRateLimited,
    /// A limit its owner carries, shared by all of the owner's keys.
    OwnerRateLimited,
    /// The key's credits are spent.
    CreditsExhausted,
    /// Too many failed verifications for this key id or from this client.
    Throttled,
    /// keygate could not decide (INTERNAL_ERROR).
    Internal,
}

impl Reason {
    pub const ALL: [Reason; 19] = [
        Reason::InvalidRequest,
        Reason::NoRoute,
        Reason::InvalidCredential,
        Reason::SessionRequired,
        Reason::SessionInvalid,
        Reason::Expired,
        Reason::Revoked,
        Reason::Rolled,
        Reason::Disabled,
        Reason::IpNotAllowed,
        Reason::ApplicationNotAllowed,
        Reason::ApplicationNotFound,
        Reason::InsufficientScope,
        Reason::RateLimited,
        Reason::KeyRateLimited,
        Reason::OwnerRateLimited,
        Reason::CreditsExhausted,
        Reason::Throttled,
        Reason::Internal,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidRequest => "invalid_request",
            Reason::NoRoute => "no_route",
            Reason::InvalidCredential => "invalid_credential",
            Reason::SessionRequired => "session_required",
            Reason::SessionInvalid => "session_invalid",
            Reason::Expired => "expired",
            Reason::Revoked => "revoked",
            Reason::Rolled => "rolled",
            Reason::Disabled => "disabled",
            Reason::IpNotAllowed => "ip_not_allowed",
            Reason::ApplicationNotAllowed => "application_not_allowed",
            Reason::ApplicationNotFound => "application_not_found",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::RateLimited => "rate_limited",
            Reason::KeyRateLimited => "key_rate_limited",
            Reason::OwnerRateLimited => "owner_rate_limited",
            Reason::CreditsExhausted => "credits_exhausted",
            Reason::Throttled => "throttled",
            Reason::Internal => "internal",
        }
    }

    pub fn parse(raw: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == raw)
    }

    /// The reason a code means when nothing finer is said.
    pub const fn of(code: Code) -> Reason {
        match code {
            Code::ValidationError | Code::BadRequest => Reason::InvalidRequest,
            Code::Unauth => Reason::SessionInvalid,
            Code::ApiKeyInvalid => Reason::InvalidCredential,
            Code::ApiKeyExpired => Reason::Expired,
            Code::ApiKeyRevoked => Reason::Revoked,
            Code::InsufficientScope => Reason::InsufficientScope,
            Code::ApplicationForbidden => Reason::ApplicationNotAllowed,
            Code::SessionRequired => Reason::SessionRequired,
            Code::NotFound => Reason::ApplicationNotFound,
            Code::RateLimitReached => Reason::RateLimited,
            Code::InternalError => Reason::Internal,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error page's JSON envelope: `{"success":false,"code":"...","message":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Envelope {
    pub success: bool,
    pub code: String,
    pub message: String,
}

impl Code {
    /// The code as the error page spells it, back to the enum.
    pub fn parse(raw: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == raw)
    }

    /// The envelope's exact bytes, fields in the page's order.
    pub fn envelope(self, message: &str) -> String {
        let envelope = Envelope { success: false, code: self.as_str().to_owned(), message: message.to_owned() };
        serde_json::to_string(&envelope).expect("strings serialize")
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_back_and_each_code_has_one() {
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
            assert!(reason.as_str().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{reason}");
        }
        assert_eq!(Reason::parse("nope"), None);
        assert_eq!(Reason::of(Code::ApiKeyRevoked), Reason::Revoked);
    }

    /// The error page's table, row by row.
    #[test]
    fn codes_and_statuses_match_the_error_page() {
        let page = [
            (400, "VALIDATION_ERROR"),
            (400, "bad_request"),
            (401, "unauth"),
            (401, "api_key_invalid"),
            (401, "api_key_expired"),
            (401, "api_key_revoked"),
            (403, "insufficient_scope"),
            (403, "application_forbidden"),
            (403, "session_required"),
            (404, "not_found"),
            (429, "rate_limit_reached"),
            (500, "INTERNAL_ERROR"),
        ];
        let ours: Vec<_> = Code::ALL.iter().map(|c| (c.http_status(), c.as_str())).collect();
        assert_eq!(ours, page);
        for code in Code::ALL {
            assert_eq!(Code::parse(code.as_str()), Some(code));
        }
        assert_eq!(Code::parse("nope"), None);
    }

    #[test]
    fn envelopes_are_the_pages_json() {
        assert_eq!(
            Code::ValidationError.envelope("Request does not match the schema"),
            r#"{"success":false,"code":"VALIDATION_ERROR","message":"Request does not match the schema"}"#
        );
        assert_eq!(
            Code::ApiKeyRevoked.envelope("say \"hi\"\n"),
            r#"{"success":false,"code":"api_key_revoked","message":"say \"hi\"\n"}"#
        );
    }
}
