//! Imported keys mean what they say (issue 28, items 3 to 7): a copy of the database offers
//! no check faster than the hash a key came with, one account's imports can neither shadow
//! nor reveal another's, every hash is checked at import and a bad stored one denies as
//! `api_key_invalid`, and bcrypt never judges a credential past the 72 bytes it reads.

use crate::admin_tokens::{admin_with, token};
use crate::backend_tests;
use crate::helpers::{ask, eventually, Db, TestApp, TestDb, DIGEST_KEY};
use crate::lifecycle::{authorize_all, cheap_argon2, fixtures, import, imported};
use keygate::authn::digest::CredentialDigester;
use keygate::domain::imported::keyed_lookup;
use keygate::grpc::proto as pb;
use sha2::{Digest, Sha256, Sha512};
use std::time::Duration;

/// Runs `sql` on the test's database itself, binding `args` as `$1`, `$2`…; the rows'
/// columns as text.
async fn sql(url: &str, sql: &str, args: &[&str]) -> Vec<Vec<String>> {
    use sqlx::{Connection, Row};
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.expect("the test database");
    let mut query = sqlx::query(sql);
    for arg in args {
        query = query.bind(*arg);
    }
    let rows = query.fetch_all(&mut conn).await.expect("the statement runs");
    rows.iter()
        .map(|row| (0..row.len()).map(|i| row.try_get::<Option<String>, _>(i).unwrap().unwrap_or_default()).collect())
        .collect()
}

/// An imported key's row as a stolen database shows it: hash, lookup, import form,
/// verified digest, and what else is text.
async fn stolen_row(url: &str, id: &str) -> Vec<String> {
    let columns = "secret_hash, lookup, import_ref, verified_digest, name, scopes, application_ids, terms";
    sql(url, &format!("SELECT {columns} FROM api_keys WHERE id = $1"), &[id]).await.remove(0)
}

/// Unkeyed digests of `credential` an offline guess could be tested against: SHA-256 and
/// SHA-512, of it and of what follows each `_`, in hex (either case) and base64.
fn unkeyed_digests(credential: &str) -> Vec<String> {
    use base64::Engine;
    let mut texts = vec![credential.to_owned()];
    texts.extend(credential.match_indices('_').map(|(i, _)| credential[i + 1..].to_owned()));
    let mut forms = vec![credential.to_owned()];
    for text in texts {
        for digest in [Sha256::digest(text.as_bytes()).to_vec(), Sha512::digest(text.as_bytes()).to_vec()] {
            let hex = keygate::domain::hex(&digest);
            forms.push(hex.to_uppercase());
            forms.push(hex);
            forms.push(base64::engine::general_purpose::STANDARD_NO_PAD.encode(&digest));
        }
    }
    forms
}

/// Issue 28 item 3: after its first use an imported bcrypt key's row holds nothing that
/// tests a guess faster than bcrypt — no unkeyed digest of the credential, a lookup only
/// the digest key makes — and a row an older version adopted (an unkeyed `sha256:` lookup
/// of the whole credential) is cleared by the migration and re-adopted at its next use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_database_offers_no_check_faster_than_an_imported_keys_hash() {
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let mut app = TestApp::spawn_url(&db.url, cheap_argon2).await;
    let key = &fixtures("bcrypt")[0];
    let id = import(&mut app, "stolen", vec![imported("acct_stolen", key)]).await[0].key_id.clone();
    assert!(app.authorize_with(ask(&key.credential)).await.allowed);
    let ours = keyed_lookup(&CredentialDigester::new(DIGEST_KEY.as_bytes()).digest(&key.credential));
    let adopted = |url: String, id: String, lookup: String| async move {
        let row = stolen_row(&url, &id).await;
        row[0].starts_with("$argon2id$") && row[1] == lookup
    };
    eventually("the key is adopted", || adopted(db.url.clone(), id.clone(), ours.clone())).await;

    let row = stolen_row(&db.url, &id).await;
    for form in unkeyed_digests(&key.credential) {
        assert!(row.iter().all(|column| !column.contains(&form)), "{form} is in the row: {row:?}");
    }
    // The lookup is the credential's HMAC under the digest key: without that key, no
    // guess can be checked against it.
    let elsewhere = keyed_lookup(&CredentialDigester::new(&[0x5a; 32]).digest(&key.credential));
    assert_ne!(row[1], elsewhere);
    // What the import brought: a start, which checks nothing.
    assert_eq!(row[2], format!("start:{}", key.start));
    app.stop().await;

    // A row adopted before this change, and the migration that clears it.
    let old = format!("sha256:{}", keygate::domain::hex(&Sha256::digest(key.credential.as_bytes())));
    sql(&db.url, "UPDATE api_keys SET lookup = $1 WHERE id = $2", &[&old, &id]).await;
    sql(&db.url, "DELETE FROM _sqlx_migrations WHERE version = 20261207000010", &[]).await;
    let mut app = TestApp::spawn_url(&db.url, cheap_argon2).await;
    assert_eq!(stolen_row(&db.url, &id).await[1], format!("start:{}", key.start), "the unkeyed lookup is gone");
    let r = app.authorize_with(ask(&key.credential)).await;
    assert!(r.allowed, "nothing lost for the holder: {r:?}");
    eventually("the key is adopted again", || adopted(db.url.clone(), id.clone(), ours.clone())).await;
}

/// The other account's token: `keys_write`, confined to `account`.
async fn confined_writer(app: &mut TestApp, account: &str) -> crate::admin_tokens::Admin {
    let secret = token(app, &format!("writer-{account}"), "keys_write", account, 0).await;
    admin_with(app, &secret)
}

backend_tests!(a_start_another_account_imports_cannot_shadow_a_key);
/// Issue 28 item 4: a confined `keys_write` token imports, into its own account, its own
/// hashes under the victim's start plus characters of the credential, and under a shorter
/// prefix of it (the same start is item 5's); the victim's unused key still answers its holder, at its first use
/// and after (every record a credential finds is tried, each account's first).
async fn a_start_another_account_imports_cannot_shadow_a_key(db: Db) {
    let mut app = TestApp::spawn_on(TestDb::new(db).await.unwrap(), cheap_argon2).await;
    let bcrypt = fixtures("bcrypt");
    let victim = &bcrypt[0];
    let theirs = import(&mut app, "victim", vec![imported("acct_victim", victim)]).await[0].key_id.clone();
    app.clock.advance(Duration::from_secs(1));
    let mut attacker = confined_writer(&mut app, "acct_attacker").await;
    let c = &victim.credential;
    let shadows = [&c[..13], &c[..20], &c[..30], &c[..8]]
        .iter()
        .enumerate()
        .map(|(i, start)| pb::ImportedKey { start: (*start).to_owned(), ..imported("acct_attacker", &bcrypt[i + 1]) })
        .collect();
    let request = pb::ImportApiKeysRequest { import_id: "shadows".into(), keys: shadows };
    let results = attacker.import_api_keys(request).await.unwrap().into_inner().results;
    assert!(results.iter().all(|r| r.status == "imported"), "{results:?}");
    for _ in 0..3 {
        let r = app.authorize_with(ask(c)).await;
        assert!(r.allowed, "{r:?}");
        assert_eq!(r.principal.unwrap().key_id, theirs);
    }
    // The shadows are the attacker's own keys: their own credentials still find them.
    let r = app.authorize_with(ask(&bcrypt[1].credential)).await;
    assert_eq!(r.code, "api_key_invalid", "imported under another start, the key's own is no match: {r:?}");
}

backend_tests!(importing_never_tells_one_account_about_anothers_keys);
/// Issue 28 item 5: a confined token importing another account's credential (a SHA-256 it
/// guessed right), another account's start (with its own hash) and a credential nobody
/// holds gets the same answer for all three: `imported`, a key id of its own, no error.
/// The earlier import keeps answering its credential: the later never authorizes it.
/// Within one account a held form is still a `conflict`.
async fn importing_never_tells_one_account_about_anothers_keys(db: Db) {
    let mut app = TestApp::spawn_on(TestDb::new(db).await.unwrap(), cheap_argon2).await;
    let (sha, bcrypt) = (fixtures("sha256"), fixtures("bcrypt"));
    let victims = vec![imported("acct_b", &sha[0]), imported("acct_b", &bcrypt[0])];
    let held: Vec<String> = import(&mut app, "b", victims.clone()).await.into_iter().map(|r| r.key_id).collect();
    app.clock.advance(Duration::from_secs(1));
    let mut attacker = confined_writer(&mut app, "acct_a").await;
    let lines = vec![
        imported("acct_a", &sha[0]),
        pb::ImportedKey { hash: bcrypt[1].hash.clone(), ..imported("acct_a", &bcrypt[0]) },
        imported("acct_a", &sha[2]),
    ];
    let request = pb::ImportApiKeysRequest { import_id: "probe".into(), keys: lines };
    let results = attacker.import_api_keys(request).await.unwrap().into_inner().results;
    for r in &results {
        assert_eq!((r.status.as_str(), r.error.as_str()), ("imported", ""), "{results:?}");
        assert!(r.key_id.starts_with("key_") && !held.contains(&r.key_id), "{r:?}");
    }
    for round in 0..3 {
        for (credential, id) in [(&sha[0].credential, &held[0]), (&bcrypt[0].credential, &held[1])] {
            let r = app.authorize_with(ask(credential)).await;
            assert!(r.allowed, "round {round}: {r:?}");
            assert_eq!(&r.principal.unwrap().key_id, id, "round {round}: the earlier import answers");
        }
        app.clock.advance(Duration::from_secs(1));
    }
    let again = import(&mut app, "b-again", victims).await;
    assert!(again.iter().all(|r| r.status == "conflict"), "{again:?}");
}

/// Lines of every malformed kind, from a valid `base` of each algorithm, with the field
/// each must be refused for.
fn malformed(
    account: &str,
    bcrypt: &crate::lifecycle::Fixture,
    argon2: &crate::lifecycle::Fixture,
) -> Vec<(pb::ImportedKey, &'static str)> {
    let b = |hash: String| pb::ImportedKey { hash, ..imported(account, bcrypt) };
    let a = |hash: String| pb::ImportedKey { hash, ..imported(account, argon2) };
    let h = &bcrypt.hash;
    let params = "m=1024,t=1,p=1";
    assert!(argon2.hash.contains(params), "{}", argon2.hash);
    let salt = argon2.hash.split('$').nth(4).unwrap();
    vec![
        (b(format!("{}!{}", &h[..10], &h[11..])), "hash"),
        (b(format!("{}/", &h[..59])), "hash"),
        (b(h.replacen("$04$", "$03$", 1)), "hash"),
        (b(h.replacen("$04$", "$15$", 1)), "hash"),
        (b(h.replacen("$2b$", "$2x$", 1)), "hash"),
        (a(argon2.hash.replacen(params, "m=1024,t=0,p=1", 1)), "hash"),
        (a(argon2.hash.replacen(params, "m=1024,t=1,p=0", 1)), "hash"),
        (a(argon2.hash.replacen(params, "m=1,t=1,p=1", 1)), "hash"),
        (a(argon2.hash.replacen(params, "m=1024,t=1", 1)), "hash"),
        (a(argon2.hash.replacen(params, "m=1024,t=11,p=1", 1)), "hash"),
        (a(argon2.hash.replacen(salt, "c2FsdA", 1)), "hash"),
        (a(argon2.hash.replacen("v=19", "v=18", 1)), "hash"),
        (pb::ImportedKey { start: format!("kg_{}", &bcrypt.start[4..]), ..imported(account, bcrypt) }, "start"),
        (pb::ImportedKey { start: format!("kgr_{}", &argon2.start[3..]), ..imported(account, argon2) }, "start"),
        (
            pb::ImportedKey {
                algorithm: "sha256".into(),
                hash: "a".repeat(64),
                strip_prefix: "kg_".into(),
                start: String::new(),
                ..imported(account, bcrypt)
            },
            "strip_prefix",
        ),
    ]
}

backend_tests!(every_imported_hash_is_checked_and_a_bad_stored_one_denies_as_invalid);
/// Issue 28 item 6: one call of 1,000 lines, valid hashes of every algorithm mixed with
/// every malformed kind (bcrypt alphabet, unused bits, cost bounds and variant; argon2 t, p,
/// m, missing p, caps, a 4-byte salt, version; keygate's own prefixes): the valid ones
/// import, each bad one is `invalid` naming its field, and no Authorize after answers
/// INTERNAL. A hash stored by hand that cannot be parsed denies as `api_key_invalid`.
async fn every_imported_hash_is_checked_and_a_bad_stored_one_denies_as_invalid(db: Db) {
    let db = TestDb::new(db).await.unwrap();
    // A quarter of the lines are refused, and their credentials then find nothing: unknown
    // lookups from one client, which the guessing budgets would soon throttle.
    let mut app = TestApp::spawn_url(&db.url, |s| {
        cheap_argon2(s);
        s.budgets.unknown_lookups_per_second = 1_000_000;
    })
    .await;
    let (sha, bcrypt, argon2) = (fixtures("sha256"), fixtures("bcrypt"), fixtures("argon2"));
    let account = "acct_mixed";
    let (mut lines, mut expected, mut credentials) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..1000 {
        let (line, field, credential) = match i % 4 {
            0 => (imported(account, &sha[i]), None, &sha[i].credential),
            1 => (imported(account, &bcrypt[i]), None, &bcrypt[i].credential),
            2 => (imported(account, &argon2[i]), None, &argon2[i].credential),
            _ => {
                let kinds = malformed(account, &bcrypt[i], &argon2[i]);
                let (line, field) = kinds[(i / 4) % kinds.len()].clone();
                let credential = if line.algorithm == "bcrypt" { &bcrypt[i].credential } else { &argon2[i].credential };
                (line, Some(field), credential)
            }
        };
        lines.push(line);
        expected.push(field);
        credentials.push(credential.clone());
    }
    let hashes: Vec<String> = lines.iter().map(|l| l.hash.clone()).collect();
    let request = pb::ImportApiKeysRequest { import_id: "mixed".into(), keys: lines };
    let results = app.admin.import_api_keys(request).await.unwrap().into_inner().results;
    for (((result, field), hash), i) in results.iter().zip(&expected).zip(&hashes).zip(0..) {
        match field {
            None => assert_eq!(result.status, "imported", "line {i}: {result:?}"),
            Some(field) => {
                assert_eq!(result.status, "invalid", "line {i}: {result:?}");
                assert!(result.error.starts_with(&format!("{field}:")), "line {i} names {field}: {result:?}");
                let tail = hash.rsplit('$').next().unwrap_or_default();
                assert!(tail.is_empty() || !result.error.contains(tail), "line {i}: no hash in an error: {result:?}");
            }
        }
    }
    // Every holder, and every credential whose line was refused: an answer, never INTERNAL.
    for (answer, field) in authorize_all(&app, &credentials).await.iter().zip(&expected) {
        match field {
            None => assert!(answer.allowed, "{answer:?}"),
            Some(_) => assert_eq!(answer.code, "api_key_invalid", "{answer:?}"),
        }
    }

    // Hashes that got in before they were checked, or by hand: denied as a wrong secret.
    // (Lines 3 and 7 were malformed: these two keys are new.)
    let (b, a) = (&bcrypt[3], &argon2[7]);
    let fresh = vec![imported(account, b), imported(account, a)];
    let results = import(&mut app, "by-hand", fresh).await;
    assert!(results.iter().all(|r| r.status == "imported"), "{results:?}");
    let bad_bcrypt = format!("{}!{}", &b.hash[..10], &b.hash[11..]);
    let bad_argon2 = a.hash.replacen("m=1024,t=1,p=1", "m=1024,t=0,p=1", 1);
    for (result, hash) in results.iter().zip([bad_bcrypt, bad_argon2]) {
        sql(&db.url, "UPDATE api_keys SET secret_hash = $1 WHERE id = $2", &[&hash, &result.key_id]).await;
    }
    for credential in [&b.credential, &a.credential] {
        for _ in 0..2 {
            let r = app.authorize_with(ask(credential)).await;
            assert_eq!((r.allowed, r.code.as_str()), (false, "api_key_invalid"), "{r:?}");
        }
    }
}

backend_tests!(bcrypt_never_judges_a_credential_past_72_bytes);
/// Issue 28 item 7: a 100-byte credential imported with its bcrypt hash: a variant sharing
/// its first 72 bytes is refused, and so is the credential itself (bcrypt cannot tell them
/// apart, so no re-hash can bind the key to whichever came first), without a bcrypt run.
/// A 72-byte credential verifies.
async fn bcrypt_never_judges_a_credential_past_72_bytes(db: Db) {
    let mut app = TestApp::spawn_on(TestDb::new(db).await.unwrap(), cheap_argon2).await;
    let long = format!("lg_{}", keygate::domain::random_token(97).unwrap());
    let exact = format!("ex_{}", keygate::domain::random_token(69).unwrap());
    assert_eq!((long.len(), exact.len()), (100, 72));
    let line = |credential: &str| pb::ImportedKey {
        account_id: "acct_long".into(),
        name: "long".into(),
        scopes: vec!["applications:read".into()],
        algorithm: "bcrypt".into(),
        hash: bcrypt::hash(credential, 4).unwrap(),
        start: credential[..12].to_owned(),
        ..Default::default()
    };
    let results = import(&mut app, "long", vec![line(&long), line(&exact)]).await;
    assert!(results.iter().all(|r| r.status == "imported"), "{results:?}");
    let variant = format!("{}{}", &long[..72], "x".repeat(28));
    let before = app.verifications();
    for credential in [&variant, &long, &variant] {
        let r = app.authorize_with(ask(credential)).await;
        assert_eq!((r.allowed, r.code.as_str()), (false, "api_key_invalid"), "{r:?}");
    }
    assert_eq!(app.verifications(), before, "refused without a bcrypt run");
    let r = app.authorize_with(ask(&exact)).await;
    assert!(r.allowed, "{r:?}");
    assert_eq!(r.principal.unwrap().key_id, results[1].key_id);
}
