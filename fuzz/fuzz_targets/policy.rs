#![no_main]
//! The policy file parser: any text is a policy or a list of problems, never a panic.
use keygate::policy::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(policy) = Policy::from_toml(text, "fuzz") {
            for route in policy.routes() {
                let (method, path) = route.template.split_once(' ').unwrap();
                let _ = policy.match_route(method, path);
            }
        }
    }
});
