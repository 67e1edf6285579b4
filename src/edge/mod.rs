//! The edge wing: every entry that asks Authorize about a request and answers it.
//!
//! An entry translates twice and decides nothing. Into the question: a request in the
//! shape of HTTP ([`HttpRequest`]: method, target, header lines, peer, body) becomes one
//! [`AuthorizeQuery`](crate::authz::AuthorizeQuery), the credential read from the first
//! [`CredentialSource`](keygate_api::edge::CredentialSource) that holds one and the client
//! under the trusted-hop rule. Out of the answer: Authorize's result becomes one
//! [`Answer`] (decided, refused before deciding, or failed with an error id logged here),
//! which each protocol renders in one place:
//! - [`forward_auth`]: the HTTP forward-auth listener for nginx, Caddy and Traefik;
//! - `grpc::ext_authz`: Envoy's Check; `grpc::authorizer`: keygate's own Authorize (its
//!   message converts into the same builder; protobuf types stay in `grpc`);
//! - the Rust tower layer (`keygate-client`), through [`keygate_api::answer`].

pub mod answer;
pub mod forward_auth;
pub mod request;

pub use answer::{log_failure, principal_headers, Answer, Failure, Pass, PRINCIPAL_HEADERS};
pub use request::{method_and_path, method_override, HopHeaders, HttpRequest, MAX_METHOD_LEN, MAX_PATH_LEN};

use std::time::Duration;

/// What every edge entry shares: how the client's address is read, and how long a
/// decision may take.
#[derive(Debug, Clone, Copy)]
pub struct EdgeSettings {
    pub trusted_proxy_hops: usize,
    /// When the caller sets no deadline of its own.
    pub decision_deadline: Duration,
}

impl EdgeSettings {
    /// The time a decision may take: the caller's deadline less a fifth (kept for the
    /// answer's way back), never more than the configured deadline.
    pub fn budget(&self, caller_deadline: Option<Duration>) -> Duration {
        match caller_deadline {
            Some(deadline) => (deadline - deadline / 5).min(self.decision_deadline),
            None => self.decision_deadline,
        }
    }

    /// The caller's deadline when keygate's own cuts it shorter than four fifths of it: a
    /// failure past the cap must say so, or a 30 s client sees an unexplained 800 ms one.
    pub fn capped(&self, caller_deadline: Option<Duration>) -> Option<Duration> {
        caller_deadline.filter(|deadline| *deadline - *deadline / 5 > self.decision_deadline)
    }

    /// What a call whose deadline was capped is told, with the flag that sets the cap.
    pub fn cap_note(&self, caller_deadline: Duration) -> String {
        format!(
            "keygate decides within {} (--decision-deadline-ms); your grpc-timeout of {} was capped",
            spoken(self.decision_deadline),
            spoken(caller_deadline)
        )
    }
}

/// "800 ms", "30 s": whole seconds as seconds.
fn spoken(duration: Duration) -> String {
    match duration.as_millis() {
        millis if millis % 1000 == 0 => format!("{} s", millis / 1000),
        millis => format!("{millis} ms"),
    }
}
