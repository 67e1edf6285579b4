//! The README's quickstart, run as a new operator runs it: `keygate serve` started in a
//! fresh directory (its first start creates `keygate-data/`), then each command of the
//! README's block with the real binary, each output compared with the `# ` lines the README
//! shows under it. The README's own example output is checked, as the roles table of
//! docs/deployment.md is (tests/api/admin_tokens.rs).
//!
//! Placeholders: the README's ids (`app_…`, `key_…`, 16 characters) stand for the ids this
//! run gets, learned from the output where they first appear; a word ending in `...` stands
//! for any word with the same beginning up to its first `_` or `=` (a secret, a time).
//! Only the port differs from the README: a free one instead of 50051 (`KEYGATE_LISTEN`,
//! `KEYGATE_SERVER`), so that the test does not depend on what else runs here.

use std::collections::HashMap;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The README's quickstart block: each command with the output lines shown under it.
fn quickstart() -> Vec<(String, Vec<String>)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("## Quickstart").expect("README has a Quickstart")..];
    let block = section.split("```sh\n").nth(1).and_then(|b| b.split("```").next()).expect("its shell block");
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        match (line.strip_prefix("# "), steps.last_mut()) {
            (Some(shown), Some((_, output))) => output.push(shown.to_owned()),
            (Some(_), None) => panic!("output before any command: {line}"),
            (None, _) => steps.push((line.to_owned(), Vec::new())),
        }
    }
    steps
}

/// Is `word` an id of the README's kind (`app_` or `key_` and 16 letters and digits)?
fn is_id(word: &str) -> bool {
    ["app_", "key_"].iter().any(|prefix| {
        word.strip_prefix(prefix)
            .is_some_and(|rest| rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
    })
}

/// Does the output `line` read as the README's `shown` line, ids learned into `ids`?
fn matches(shown: &str, line: &str, ids: &mut HashMap<String, String>) -> bool {
    let (shown, line): (Vec<&str>, Vec<&str>) = (shown.split_whitespace().collect(), line.split_whitespace().collect());
    if shown.len() != line.len() {
        return false;
    }
    shown.iter().zip(&line).all(|(want, got)| {
        if let Some(stem) = want.strip_suffix("...") {
            let kept = stem.find(['_', '=']).map_or(stem.len(), |i| i + 1);
            return got.starts_with(&stem[..kept]);
        }
        // Ids inside a word too (`apps=app_…`, `principal=key_…`).
        let (prefix, id) = match want.rsplit_once('=') {
            Some((prefix, id)) if is_id(id) => (Some(prefix), id),
            _ => (None, *want),
        };
        let got_id = match prefix {
            Some(prefix) => match got.strip_prefix(prefix).and_then(|g| g.strip_prefix('=')) {
                Some(id) => id,
                None => return false,
            },
            None => got,
        };
        if is_id(id) {
            let real = ids.entry(id.to_owned()).or_insert_with(|| got_id.to_owned());
            return real == got_id && id[..4] == got_id[..4.min(got_id.len())];
        }
        want == got
    })
}

/// Issue 30 item 16: every command of the README's quickstart, on a fresh directory, prints
/// what the README shows under it (and a command under which it shows nothing prints
/// nothing). guards: the README's example output drifting from the binary's, as the
/// CLI's limit format did (item 9).
#[test]
fn the_readme_quickstart_prints_what_the_readme_shows() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let binary = env!("CARGO_BIN_EXE_keygate");
    let fresh = |command: &mut Command| {
        command.current_dir(dir.path()).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
        command.env("HOME", dir.path()).env("USER", "operator");
    };
    let steps = quickstart();
    let (serve, alias) = (&steps[0], &steps[1]);
    assert!(serve.0.starts_with("cargo run --release -- serve &"), "{}", serve.0);
    assert!(alias.0.starts_with("alias keygate=target/release/keygate"), "{}", alias.0);

    let mut server = Command::new(binary);
    fresh(server.arg("serve").env("KEYGATE_LISTEN", format!("127.0.0.1:{port}")));
    let mut server = server.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let (said, heard) = std::sync::mpsc::channel();
    let stderr = server.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = said.send(line);
        }
    });
    let started = loop {
        match heard.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.contains("keygate is serving") => break true,
            Ok(_) => continue,
            Err(_) => break false,
        }
    };
    let stop = |mut server: std::process::Child| {
        let _ = server.kill();
        let _ = server.wait();
    };
    if !started {
        stop(server);
        panic!("keygate serve did not start");
    }
    for file in ["keygate.db", "admin-token", "digest-key"] {
        assert!(dir.path().join("keygate-data").join(file).is_file(), "the first start creates keygate-data/{file}");
    }

    let (mut ids, mut secret): (HashMap<String, String>, String) = (HashMap::new(), String::new());
    let mut failures = Vec::new();
    for (command, shown) in &steps[2..] {
        let mut line = command.clone();
        for (readme_id, real) in &ids {
            line = line.replace(readme_id, real);
        }
        if let Some(start) = line.find("kg_") {
            let end = line[start..].find("...").map(|i| start + i + 3).expect("a secret written as kg_...");
            line.replace_range(start..end, &secret);
        }
        let script = format!("keygate() {{ {binary:?} \"$@\"; }}\n{line}");
        let mut run = Command::new("bash");
        fresh(run.args(["-euc", &script]).env("KEYGATE_SERVER", format!("http://127.0.0.1:{port}")));
        let output = run.output().unwrap();
        let printed = String::from_utf8_lossy(&output.stdout).into_owned();
        let printed: Vec<&str> = printed.lines().collect();
        if !output.status.success() {
            failures.push(format!("{command}\n  failed: {}", String::from_utf8_lossy(&output.stderr)));
            continue;
        }
        if let Some(found) = printed.iter().find_map(|l| l.split("store it now): ").nth(1)) {
            secret = found.trim().to_owned();
        }
        let agree = printed.len() == shown.len() && shown.iter().zip(&printed).all(|(s, p)| matches(s, p, &mut ids));
        if !agree {
            failures.push(format!("{command}\n  README shows: {shown:#?}\n  printed:      {printed:#?}"));
        }
    }
    stop(server);
    assert!(failures.is_empty(), "the README's quickstart differs from what keygate prints:\n{}", failures.join("\n"));
}
