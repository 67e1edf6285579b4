//! The gRPC edge. Protobuf types stop here: handlers convert requests into domain
//! values ([`convert`]), call the domain, and map results and errors back ([`status`]).

pub mod admin;
pub mod authorizer;
pub mod convert;
pub mod envoy;
pub mod ext_authz;
pub mod spans;
pub mod status;
pub mod undecodable;
pub mod watch;

pub use keygate_api::proto;

use std::sync::atomic::{AtomicU64, Ordering};
use tonic::metadata::{MetadataMap, MetadataValue};

pub const REQUEST_ID_HEADER: &str = "x-request-id";
const MAX_REQUEST_ID_LEN: usize = 128;

/// The caller's request id, or a new one. Echoed back in the response metadata.
#[derive(Debug, Clone)]
pub struct RequestId(MetadataValue<tonic::metadata::Ascii>);

impl RequestId {
    pub fn from_metadata(metadata: &MetadataMap) -> Self {
        Self::given(metadata).unwrap_or_else(Self::generate)
    }

    /// The caller's id, if it sent a usable one.
    pub fn given(metadata: &MetadataMap) -> Option<Self> {
        metadata.get(REQUEST_ID_HEADER).filter(|v| usable(v.as_bytes())).cloned().map(Self)
    }

    /// A new id, for a call that came without one.
    pub fn generate() -> Self {
        Self(generate())
    }

    /// The id of an HTTP request's headers, which gets one (a generated id, replacing an
    /// unusable one) if it has none: what a layer in front of the handlers uses, so that
    /// its span and the handler's response carry the same id.
    pub fn of_headers(headers: &mut http::HeaderMap) -> Self {
        if let Some(value) = headers.get(REQUEST_ID_HEADER).filter(|v| usable(v.as_bytes())) {
            if let Ok(value) = MetadataValue::try_from(value.as_bytes()) {
                return Self(value);
            }
        }
        let id = generate();
        if let Ok(value) = http::HeaderValue::from_bytes(id.as_bytes()) {
            headers.insert(REQUEST_ID_HEADER, value);
        }
        Self(id)
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("-")
    }

    pub fn attach<T>(self, mut response: tonic::Response<T>) -> tonic::Response<T> {
        let mut value = self.0;
        // Never indexed by HPACK: every id is new, so an indexed one would only push out
        // of both ends' tables the entries that repeat, and cost both a table search.
        value.set_sensitive(true);
        response.metadata_mut().insert(REQUEST_ID_HEADER, value);
        response
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn usable(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.iter().all(|b| b.is_ascii_graphic())
}

/// A process-unique id: a random per-process prefix and a counter (no syscall per call).
fn generate() -> MetadataValue<tonic::metadata::Ascii> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 4];
        let _ = getrandom::getrandom(&mut bytes);
        u32::from_le_bytes(bytes)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    MetadataValue::try_from(format!("kg-{prefix:08x}-{n:x}")).expect("ASCII")
}

/// The caller's deadline from its `grpc-timeout` header ("250m" = 250 ms; units H, M, S,
/// m, u, n; at most 8 digits), or `None` when it sets none or sets it badly.
pub fn caller_deadline(metadata: &MetadataMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let raw = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = raw.split_at(raw.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value * 3600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn grpc_timeouts_parse_as_the_spec_writes_them() {
        let deadline = |raw: &str| {
            let mut metadata = MetadataMap::new();
            metadata.insert("grpc-timeout", raw.parse().unwrap());
            caller_deadline(&metadata)
        };
        assert_eq!(deadline("250m"), Some(Duration::from_millis(250)));
        assert_eq!(deadline("1S"), Some(Duration::from_secs(1)));
        assert_eq!(deadline("2M"), Some(Duration::from_secs(120)));
        assert_eq!(deadline("100u"), Some(Duration::from_micros(100)));
        for bad in ["", "m", "123456789m", "10x", "-1m", "1.5S"] {
            assert_eq!(deadline(bad), None, "{bad:?}");
        }
        assert_eq!(caller_deadline(&MetadataMap::new()), None);
    }
}
