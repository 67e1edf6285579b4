//! `keygate key import FILE.jsonl`: keys from another system, one JSON object a line, sent
//! in batches; a line that does not parse is reported with its number and not sent.

use super::print::{explain, show, Progress};
use crate::KeygateAdmin;
use keygate_api::proto as pb;
use serde::Deserialize;
use std::path::Path;

/// The most keys one `ImportApiKeys` call carries (the server takes up to 1000).
const BATCH: usize = 500;

/// One line of an import file: the fields of `ImportedKey`, with `expires_at` as RFC 3339
/// and `metadata` as a JSON object.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    account_id: String,
    name: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    application_ids: Vec<String>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    metadata: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    owner_id: Option<String>,
    algorithm: String,
    hash: String,
    #[serde(default)]
    strip_prefix: Option<String>,
    #[serde(default)]
    start: Option<String>,
}

impl Line {
    fn parse(text: &str) -> Result<pb::ImportedKey, String> {
        let line: Line = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let expires_at = line.expires_at.as_deref().map(parse_rfc3339).transpose()?;
        // As written (the server keeps its keys' order); an object, as the server checks.
        if line.metadata.as_ref().is_some_and(|m| !m.get().starts_with('{')) {
            return Err("metadata: must be a JSON object".to_owned());
        }
        Ok(pb::ImportedKey {
            account_id: line.account_id,
            name: line.name,
            scopes: line.scopes,
            application_ids: line.application_ids,
            expires_at,
            metadata_json: line.metadata.map(|m| m.get().to_owned()).unwrap_or_default(),
            owner_id: line.owner_id.unwrap_or_default(),
            algorithm: line.algorithm,
            hash: line.hash,
            strip_prefix: line.strip_prefix.unwrap_or_default(),
            start: line.start.unwrap_or_default(),
        })
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, the form keygate prints.
fn parse_rfc3339(raw: &str) -> Result<prost_types::Timestamp, String> {
    let bad = || format!("expires_at {raw:?} is not RFC 3339 in UTC, like 2027-01-31T00:00:00Z");
    let body = raw.strip_suffix('Z').ok_or_else(bad)?;
    let (date, time) = body.split_once('T').ok_or_else(bad)?;
    let time = time.split_once('.').map_or(time, |(whole, _)| whole);
    let numbers = |text: &str, sep: char| -> Option<Vec<i64>> { text.split(sep).map(|n| n.parse().ok()).collect() };
    let (date, time) = (numbers(date, '-').ok_or_else(bad)?, numbers(time, ':').ok_or_else(bad)?);
    let [year, month, day] = <[i64; 3]>::try_from(date).map_err(|_| bad())?;
    let [hour, minute, second] = <[i64; 3]>::try_from(time).map_err(|_| bad())?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return Err(bad());
    }
    let days = keygate_api::time::days_from_civil(year, month, day);
    Ok(prost_types::Timestamp { seconds: days * 86_400 + hour * 3600 + minute * 60 + second, nanos: 0 })
}

/// What an import came to, by status.
#[derive(Default, serde::Serialize)]
pub(super) struct Summary {
    pub import_id: String,
    pub imported: usize,
    pub already_imported: usize,
    pub conflict: usize,
    pub invalid: usize,
    /// Lines with the same credential, in the same account, as an earlier line: not
    /// imported (the earlier line's key is), each named in `problems`.
    pub duplicates: usize,
    /// Line number and why, for every line not imported (invalid, conflicting, duplicate).
    pub problems: Vec<(usize, String)>,
    /// The line that brought each key of this run, to name a later line that finds it again.
    #[serde(skip)]
    lines_of_keys: std::collections::HashMap<String, usize>,
}

impl Summary {
    /// Prints the summary: readable text, or JSON with `--json`.
    pub(super) fn show(&self, json: bool) {
        let mut text = format!(
            "import {}: {} imported, {} already imported, {} conflicting, {} invalid, {} duplicate",
            self.import_id, self.imported, self.already_imported, self.conflict, self.invalid, self.duplicates
        );
        for (line, problem) in &self.problems {
            text.push_str(&format!("\nline {line}: {problem}"));
        }
        show(json, serde_json::to_value(self).unwrap_or_default(), text);
    }
}

/// Reads `path` and imports it; `import_id` defaults to the SHA-256 of the file's content,
/// so running the same file again changes nothing.
pub(super) async fn run(admin: &KeygateAdmin, path: &Path, import_id: Option<String>) -> anyhow::Result<Summary> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let import_id = import_id.unwrap_or_else(|| {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(text.as_bytes());
        format!("sha256-{}", digest.iter().take(16).map(|b| format!("{b:02x}")).collect::<String>())
    });
    let mut summary = Summary { import_id: import_id.clone(), ..Summary::default() };
    let mut batch: Vec<(usize, pb::ImportedKey)> = Vec::with_capacity(BATCH);
    let lines: Vec<(usize, &str)> =
        text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())).filter(|(_, l)| !l.is_empty()).collect();
    let progress = Progress::new();
    for (done, (number, line)) in lines.iter().enumerate() {
        match Line::parse(line) {
            Ok(key) => batch.push((*number, key)),
            Err(problem) => {
                summary.invalid += 1;
                summary.problems.push((*number, problem));
            }
        }
        if batch.len() == BATCH || done + 1 == lines.len() {
            send(admin, &import_id, std::mem::take(&mut batch), &mut summary).await?;
            progress.update(format_args!("imported {}/{} lines…", done + 1, lines.len()));
        }
    }
    progress.finish();
    Ok(summary)
}

async fn send(
    admin: &KeygateAdmin,
    import_id: &str,
    batch: Vec<(usize, pb::ImportedKey)>,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let (numbers, keys): (Vec<usize>, Vec<pb::ImportedKey>) = batch.into_iter().unzip();
    let request = pb::ImportApiKeysRequest { import_id: import_id.to_owned(), keys };
    let response = admin.rpc().import_api_keys(request).await.map_err(|status| {
        let first = numbers.first().copied().unwrap_or_default();
        anyhow::anyhow!("{} (lines from {first} on were not imported; run again to resume)", explain(status))
    })?;
    for (number, result) in numbers.iter().copied().zip(response.into_inner().results) {
        // A key an earlier line of this run brought (in an earlier batch, or on a run
        // before): this line is a duplicate of that one, not a key of its own.
        let earlier = match result.status.as_str() {
            "imported" | "already_imported" => summary.lines_of_keys.get(&result.key_id).copied(),
            "duplicate_in_batch" => (result.duplicate_of as usize).checked_sub(1).and_then(|i| numbers.get(i)).copied(),
            _ => None,
        };
        if let Some(first) = earlier {
            summary.duplicates += 1;
            summary
                .problems
                .push((number, format!("the same credential, in the same account, as line {first}: not imported")));
            continue;
        }
        match result.status.as_str() {
            "imported" | "already_imported" => {
                summary.lines_of_keys.insert(result.key_id.clone(), number);
                if result.status == "imported" {
                    summary.imported += 1;
                } else {
                    summary.already_imported += 1;
                }
            }
            "conflict" => {
                summary.conflict += 1;
                summary.problems.push((number, result.error));
            }
            _ => {
                summary.invalid += 1;
                summary.problems.push((number, result.error));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_with_their_times_and_metadata() {
        let key = Line::parse(
            r#"{"account_id":"acc_1","name":"n","algorithm":"sha256","hash":"ab","expires_at":"2027-01-31T12:00:00Z","metadata":{"plan":"pro"}}"#,
        )
        .unwrap();
        assert_eq!(key.expires_at.unwrap().seconds, 1_801_396_800);
        assert_eq!(key.metadata_json, r#"{"plan":"pro"}"#);
        assert!(Line::parse(r#"{"account_id":"a","name":"n","algorithm":"x","hash":"y","typo":1}"#).is_err());
        assert!(parse_rfc3339("2027-01-31").is_err());
        assert!(parse_rfc3339("2027-13-01T00:00:00Z").is_err());
    }
}
