#![no_main]
//! The credential parser: any bytes, never a panic; whatever parses round-trips its id.
use keygate::domain::{Credential, KeyId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = std::str::from_utf8(data) {
        if let Ok(credential) = Credential::parse(raw) {
            let id = credential.key_id();
            assert_eq!(KeyId::parse(&id.to_string()).unwrap(), id);
            assert!(raw.contains(credential.secret()));
        }
    }
});
