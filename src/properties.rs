//! Property tests of the parsers and matchers. `scripts/fuzz.sh` runs these same targets
//! for a set time with many more cases: the fuzzing this stable-only toolchain allows.

use crate::domain::{Credential, CredentialKind, GeneratedKey, KeyId, Scope, Scopes, SearchParams};
use crate::policy::Policy;
use keygate_api::edge::request_target;
use proptest::prelude::*;

/// A scope name: segments of [a-z0-9_.-] joined by ':'.
fn scope_name() -> impl Strategy<Value = String> {
    proptest::collection::vec("[a-z0-9_.-]{1,8}", 1..4).prop_map(|segments| segments.join(":"))
}

/// A path segment that is a literal, not a parameter.
fn literal() -> impl Strategy<Value = String> {
    "[a-z0-9-]{1,10}"
}

proptest! {
    // --- credential parser (fuzz target: credential) ---
    #[test]
    fn any_string_is_parsed_without_panicking(raw in any::<String>()) {
        let _ = Credential::parse(&raw);
        let _ = CredentialKind::of(&raw);
    }

    #[test]
    fn near_misses_of_real_keys_are_rejected(index in 3usize..69, byte in any::<u8>()) {
        let key = GeneratedKey::generate().unwrap().into_secret_string();
        let mut bytes = key.clone().into_bytes();
        prop_assume!(bytes[index] != byte);
        bytes[index] = byte;
        if let Ok(changed) = String::from_utf8(bytes) {
            prop_assert!(Credential::parse(&changed).is_err());
        }
    }

    #[test]
    fn generated_credentials_round_trip(kind in prop_oneof![
        Just(CredentialKind::ApiKey), Just(CredentialKind::RuntimeKey), Just(CredentialKind::Session)
    ]) {
        let generated = GeneratedKey::generate_kind(kind).unwrap();
        let parsed = generated.credential();
        prop_assert_eq!(parsed.kind(), kind);
        prop_assert_eq!(KeyId::parse(&parsed.key_id().to_string()).unwrap(), parsed.key_id());
        let text = generated.into_secret_string();
        prop_assert!(Credential::parse(&text).is_ok());
    }

    // --- scopes ---
    #[test]
    fn a_scope_covers_itself_and_wildcards_cover_their_prefix(name in scope_name(), rest in scope_name()) {
        let exact = Scopes::parse_grants(&[name.as_str()]).unwrap();
        prop_assert!(exact.covers(&name));
        prop_assert!(Scopes::parse_grants(&["*"]).unwrap().covers(&name));
        let pattern = format!("{name}:*");
        let wildcard = Scopes::parse_grants(&[pattern.as_str()]).unwrap();
        let below = format!("{name}:{rest}");
        prop_assert!(wildcard.covers(&below));
        prop_assert!(!wildcard.covers(&name), "a wildcard does not cover its own prefix");
        prop_assert!(Scope::parse_required(&pattern).is_err());
    }

    #[test]
    fn any_scope_text_is_judged_without_panicking(raw in any::<String>()) {
        let _ = Scope::parse_grant(&raw);
        let _ = Scope::parse_required(&raw);
    }

    // --- route matching (fuzz target: routes) ---
    #[test]
    fn every_route_matches_its_own_paths_and_reads_the_application(
        prefixes in proptest::collection::btree_set(literal(), 1..20),
        app in "[A-Za-z0-9_]{1,20}",
        tail in literal(),
    ) {
        let mut text = String::new();
        for p in &prefixes {
            text += &format!("[[routes]]\nroute = \"GET /{p}/{{application_id}}/{tail}\"\n");
            text += &format!("[[routes]]\nroute = \"GET /{p}\"\n");
        }
        let policy = Policy::from_toml(&text, "prop").unwrap();
        for p in &prefixes {
            let path = format!("/{p}/{app}/{tail}");
            let m = policy.match_route("GET", &path).unwrap();
            prop_assert_eq!(m.path_application, Some(app.as_str()));
            let template = format!("GET /{p}/{{application_id}}/{tail}");
            prop_assert_eq!(&*m.route.template, template.as_str());
            let bare = format!("/{p}");
            let short = format!("/{p}/{app}");
            prop_assert!(policy.match_route("GET", &bare).is_some());
            prop_assert!(policy.match_route("POST", &path).is_none());
            prop_assert!(policy.match_route("GET", &short).is_none());
        }
    }

    // --- request targets: one reading at every entry ---
    #[test]
    fn every_entry_hands_the_decision_the_same_target(raw in "/[a-zA-Z0-9_./%;\\\\?=&-]{0,40}") {
        // Check and forward auth pass the target as the edge got it; the layer passes
        // `uri.path_and_query()`: for every target a URI can hold, that is the same text,
        // and the decision reads all three with `request_target`.
        if let Ok(uri) = raw.parse::<http::Uri>() {
            let layer_sends = uri.path_and_query().map_or("/", |p| p.as_str());
            prop_assert_eq!(layer_sends, raw.as_str());
        }
        if let Ok(target) = request_target(&raw) {
            prop_assert!(raw.starts_with(target.path));
            prop_assert!(!target.path.contains('?'));
        }
    }

    #[test]
    fn no_altered_path_matches_a_route(
        prefix in literal(),
        app in "[a-z0-9_]{1,12}",
        tail in literal(),
        trick in prop_oneof![
            Just("/.."), Just("/."), Just("/%2e%2e"), Just("/%2E"), Just("%2F"), Just("%2f"), Just("//"),
            Just("\\"), Just(";x=1"), Just("%5c"), Just("/%2e%2e/"),
        ],
        at in 0usize..3,
    ) {
        let policy = Policy::from_toml(
            &format!("[[routes]]\nroute = \"GET /{prefix}/{{application_id}}/{tail}\"\n[[routes]]\nroute = \"GET /{prefix}\"\n"),
            "prop",
        ).unwrap();
        let mut path = String::new();
        for (i, part) in [&prefix, &app, &tail].into_iter().enumerate() {
            path += "/";
            path += part;
            if i == at {
                path += trick;
            }
        }
        // Whatever the path would mean once normalised, as written it matches nothing.
        let matched = request_target(&path).ok().and_then(|t| policy.match_route("GET", t.path).map(|m| m.index));
        prop_assert_eq!(matched, None, "{} matched", path);
    }

    #[test]
    fn any_method_and_path_are_matched_without_panicking(method in any::<String>(), path in any::<String>()) {
        let policy = Policy::default_policy();
        let _ = policy.match_route(&method, &path);
    }

    // --- policy file parser (fuzz target: policy) ---
    #[test]
    fn any_policy_text_is_judged_without_panicking(text in any::<String>()) {
        let _ = Policy::from_toml(&text, "fuzz");
    }

    #[test]
    fn policy_like_text_is_judged_without_panicking(
        route in "(GET|POST|FETCH|) ?/[a-z{}/_*?]{0,30}",
        scope in "[a-z:*]{0,12}",
        limit in 0u32..200_000,
        window in "(second|minute|hour|day|week)",
    ) {
        let text = format!(
            "[global_limit]\nlimit = {limit}\nwindow = \"{window}\"\n[[routes]]\nroute = \"{route}\"\nscopes = [\"{scope}\"]\n\
             [[routes.limits]]\nlimit = {limit}\nwindow = \"{window}\"\nper = \"ip\"\n"
        );
        let _ = Policy::from_toml(&text, "fuzz");
    }

    // --- search_params parser (fuzz target: search_params) ---
    #[test]
    fn any_search_params_are_judged_without_panicking(raw in any::<String>()) {
        let _ = SearchParams::parse(&raw);
    }

    #[test]
    fn search_strings_round_trip(search in "[^\\x00-\\x1f]{1,100}") {
        let json = serde_json::json!({ "searchString": search }).to_string();
        let parsed = SearchParams::parse(&json).unwrap();
        let trimmed = search.trim();
        prop_assert_eq!(parsed.search_string.as_deref(), Some(trimmed).filter(|s| !s.is_empty()));
    }
}
