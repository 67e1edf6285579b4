#![no_main]
//! The route matcher: any method and path against the shipped policy, never a panic.
use keygate::policy::Policy;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    let policy = POLICY.get_or_init(Policy::default_policy);
    if let Ok(text) = std::str::from_utf8(data) {
        let (method, path) = text.split_once('\n').unwrap_or(("GET", text));
        if let Some(matched) = policy.match_route(method, path) {
            if let Some(application) = matched.application_id {
                assert!(path.contains(application));
            }
        }
    }
});
