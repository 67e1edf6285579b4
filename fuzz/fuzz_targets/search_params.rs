#![no_main]
//! The `search_params` JSON parser: any text is parsed or named invalid, never a panic.
use keygate::domain::SearchParams;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(params) = SearchParams::parse(text) {
            assert!(params.search_string.as_deref().is_none_or(|s| !s.is_empty() && s.trim() == s));
        }
    }
});
