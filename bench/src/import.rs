//! Keys imported from another system (issue 17): how fast `ImportApiKeys` stores keys of
//! each hash kind (sha256, bcrypt, argon2) on SQLite and on Postgres, and what the first
//! use of an imported credential costs, against the first use of a key keygate made
//! (argon2id) and the hot path, one call at a time on one server in the same run.
//!
//! The keys are made here, as the other system would have made them, before any server
//! starts; making them is not measured. The server keeps keygate's default argon2
//! settings (what users get).

use crate::fixture::{self, Admin, Server};
use crate::load::{request, APP_PATH_PREFIX};
use crate::report::{ms, percentile};
use argon2::password_hash::{PasswordHasher, SaltString};
use keygate::authn::verifier::Argon2Settings;
use keygate::domain::{random_token, KeyId};
use keygate::grpc::proto::{self as pb, authorizer_client::AuthorizerClient};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// sha256 keys imported per backend.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// bcrypt keys imported per backend (fewer: each takes tens of ms to make).
    #[arg(long, default_value_t = 2_000)]
    bcrypt_keys: usize,
    /// argon2 keys imported per backend.
    #[arg(long, default_value_t = 10_000)]
    argon2_keys: usize,
    /// bcrypt cost of the imported hashes (10 is a common production cost).
    #[arg(long, default_value_t = 10)]
    bcrypt_cost: u32,
    /// Keys per ImportApiKeys call (at most 1000).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Distinct credentials whose first use is timed, per kind and way (each kind needs
    /// twice as many imported keys).
    #[arg(long, default_value_t = 200)]
    first_uses: usize,
    /// Passes over the used keygate keys for the hot path.
    #[arg(long, default_value_t = 5)]
    hot_passes: usize,
    /// A Postgres database for the same runs on Postgres (a schema of its own, dropped
    /// after); without it only SQLite is measured.
    #[arg(long, env = "KEYGATE_TEST_POSTGRES_URL")]
    postgres: Option<String>,
    /// Also write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

const ACCOUNT: &str = "acct_import";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Sha256,
    Bcrypt,
    Argon2,
}

impl Kind {
    fn algorithm(self) -> &'static str {
        match self {
            Kind::Sha256 => "sha256",
            Kind::Bcrypt => "bcrypt",
            Kind::Argon2 => "argon2",
        }
    }
}

/// A key as another system issued and stored it: the credential its holder has, and
/// what the import sends.
#[derive(Clone)]
struct Foreign {
    credential: String,
    key: pb::ImportedKey,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One key of `kind`: a credential in another system's shape and its hash.
fn make(kind: Kind, bcrypt_cost: u32, argon2: &argon2::Argon2<'_>) -> anyhow::Result<Foreign> {
    let (credential, hash, start) = match kind {
        Kind::Sha256 => {
            let credential = format!("sk_live_{}", random_token(32)?);
            let hash = hex(&Sha256::digest(credential.as_bytes()));
            (credential, hash, String::new())
        }
        Kind::Bcrypt => {
            let credential = format!("legacy_{}", random_token(40)?);
            let hash = bcrypt::hash(&credential, bcrypt_cost)?;
            let start = credential[..16].to_owned();
            (credential, hash, start)
        }
        Kind::Argon2 => {
            let credential = format!("ak_{}", random_token(40)?);
            // A random salt (16 bytes) without another dependency.
            let salt_bytes = Sha256::digest(random_token(32)?.as_bytes());
            let salt = SaltString::encode_b64(&salt_bytes[..16]).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
            let hash =
                argon2.hash_password(credential.as_bytes(), &salt).map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
            let start = credential[..16].to_owned();
            (credential, hash.to_string(), start)
        }
    };
    Ok(Foreign {
        credential,
        key: pb::ImportedKey {
            account_id: ACCOUNT.into(),
            name: format!("imported {}", kind.algorithm()),
            scopes: vec!["applications:read".into()],
            algorithm: kind.algorithm().into(),
            hash,
            start,
            ..Default::default()
        },
    })
}

/// `count` keys of `kind`, made on every core (std threads).
fn generate(kind: Kind, count: usize, bcrypt_cost: u32) -> anyhow::Result<Vec<Foreign>> {
    let defaults = Argon2Settings::default();
    let params = argon2::Params::new(defaults.memory_kib, defaults.iterations, defaults.parallelism, None)
        .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
    let argon2 = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(count.max(1));
    let per_thread = count.div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let n = per_thread.min(count.saturating_sub(t * per_thread));
                let argon2 = argon2.clone();
                scope
                    .spawn(move || (0..n).map(|_| make(kind, bcrypt_cost, &argon2)).collect::<anyhow::Result<Vec<_>>>())
            })
            .collect();
        let mut keys = Vec::with_capacity(count);
        for worker in workers {
            keys.extend(worker.join().map_err(|_| anyhow::anyhow!("a key maker panicked"))??);
        }
        Ok(keys)
    })
}

/// How one kind's import went.
#[derive(Debug, Clone, Serialize)]
struct ImportRun {
    backend: String,
    kind: Kind,
    keys: usize,
    batch: usize,
    batches: usize,
    seconds: f64,
    keys_per_second: f64,
    /// Keys already in the table when this kind's import started (earlier kinds).
    keys_before: usize,
    batch_first_ms: f64,
    batch_last_ms: f64,
    batch_p50_ms: f64,
    batch_max_ms: f64,
    /// Results by status ("imported" for every key, if all went well).
    statuses: BTreeMap<String, usize>,
}

/// Imports `keys` in batches, one call at a time; returns the run and each key's id
/// (empty for a key that was not imported).
async fn import(
    admin: &mut Admin,
    backend: &str,
    kind: Kind,
    keys: &[Foreign],
    batch: usize,
    keys_before: usize,
) -> anyhow::Result<(ImportRun, Vec<String>)> {
    let import_id = format!("bench-{}-{}", kind.algorithm(), random_token(8)?);
    // Built before the clock starts: only the calls are timed.
    let requests: Vec<pb::ImportApiKeysRequest> = keys
        .chunks(batch)
        .map(|chunk| pb::ImportApiKeysRequest {
            import_id: import_id.clone(),
            keys: chunk.iter().map(|f| f.key.clone()).collect(),
        })
        .collect();
    let batches = requests.len();
    let mut took = Vec::with_capacity(batches);
    let mut ids = Vec::with_capacity(keys.len());
    let mut statuses = BTreeMap::new();
    let started = Instant::now();
    for req in requests {
        let sent = Instant::now();
        let response = admin.import_api_keys(req).await?.into_inner();
        took.push(sent.elapsed());
        for result in response.results {
            *statuses.entry(result.status.clone()).or_insert(0) += 1;
            if result.status != "imported" && statuses[&result.status] <= 3 {
                eprintln!("    {} import: {} {}", kind.algorithm(), result.status, result.error);
            }
            ids.push(if result.status == "imported" { result.key_id } else { String::new() });
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let (first, last) = (took.first().copied().unwrap_or_default(), took.last().copied().unwrap_or_default());
    took.sort();
    let run = ImportRun {
        backend: backend.to_owned(),
        kind,
        keys: keys.len(),
        batch,
        batches,
        seconds,
        keys_per_second: keys.len() as f64 / seconds,
        keys_before,
        batch_first_ms: ms(first),
        batch_last_ms: ms(last),
        batch_p50_ms: ms(percentile(&took, 0.5)),
        batch_max_ms: ms(*took.last().unwrap_or(&Duration::ZERO)),
        statuses,
    };
    println!(
        "import {:<7} {:<8} {:>6} keys ({:>5} before) in {:>3} batches of {}: {:>6.2} s = {:>7.0} keys/s  \
         batch first {:>6.1} ms last {:>6.1} ms p50 {:>6.1} ms max {:>6.1} ms  {:?}",
        run.kind.algorithm(),
        backend,
        run.keys,
        run.keys_before,
        run.batches,
        run.batch,
        run.seconds,
        run.keys_per_second,
        run.batch_first_ms,
        run.batch_last_ms,
        run.batch_p50_ms,
        run.batch_max_ms,
        run.statuses
    );
    Ok((run, ids))
}

/// One timed set of Authorize calls, one at a time.
#[derive(Debug, Clone, Serialize)]
struct Calls {
    backend: String,
    scenario: String,
    calls: usize,
    allowed: usize,
    /// Denied as throttled (a guessing budget or argon2's queue): counted, not timed.
    throttled: usize,
    /// Denied for any other reason, by code.
    denied: BTreeMap<String, usize>,
    /// Calls that got no decision (a gRPC error), by status code, and the longest one.
    errors: BTreeMap<String, usize>,
    error_max_us: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    mean_us: f64,
    /// Against the hot path's p50 and p99 in the same run on the same server.
    p50_x_hot: Option<f64>,
    p99_x_hot: Option<f64>,
    /// argon2/bcrypt verifications the server ran during these calls, and their mean time
    /// in the server (waiting for a slot included).
    verifications: u64,
    verification_mean_us: Option<f64>,
}

impl Calls {
    fn print(&self) {
        let ratio = |r: Option<f64>| r.map_or("     ".into(), |r| format!("{r:>6.1}x"));
        let verify = self
            .verification_mean_us
            .map_or(String::new(), |us| format!("  server verifications {} mean {:.0}us", self.verifications, us));
        println!(
            "{:<8} {:<52} n={:<5} p50 {:>7.0}us {}  p99 {:>7.0}us {}  max {:>7.0}us  throttled {}  denied {:?}  errors {:?}{}{verify}",
            self.backend,
            self.scenario,
            self.allowed,
            self.p50_us,
            ratio(self.p50_x_hot),
            self.p99_us,
            ratio(self.p99_x_hot),
            self.max_us,
            self.throttled,
            self.denied,
            self.errors,
            if self.errors.is_empty() { String::new() } else { format!(" (after up to {:.0}us)", self.error_max_us) },
        );
    }

    fn compare_to(&mut self, hot: &Calls) {
        self.p50_x_hot = Some(self.p50_us / hot.p50_us);
        self.p99_x_hot = Some(self.p99_us / hot.p99_us);
    }
}

/// The server's verification histogram (sum in seconds, count), read as Prometheus would.
fn verification_totals(server: &Server) -> (f64, u64) {
    let handles = server.handles.as_ref().expect("keygate has handles");
    let text = keygate::metrics::render(&keygate::metrics::registry(&handles.metric_sources()));
    let sample = |series| keygate::metrics::sample(&text, series).unwrap_or(0.0);
    (sample("keygate_argon2_verification_seconds_sum"), sample("keygate_argon2_verification_seconds_count") as u64)
}

/// Times calls one at a time.
struct Caller<'a> {
    server: &'a Server,
    client: AuthorizerClient<Channel>,
    path: String,
    backend: &'a str,
}

/// Collects the answers of one scenario.
struct Tally {
    took: Vec<Duration>,
    calls: usize,
    throttled: usize,
    denied: BTreeMap<String, usize>,
    errors: BTreeMap<String, usize>,
    error_max: Duration,
    verifications: (f64, u64),
}

impl Caller<'_> {
    fn tally(&self) -> Tally {
        Tally {
            took: Vec::new(),
            calls: 0,
            throttled: 0,
            denied: BTreeMap::new(),
            errors: BTreeMap::new(),
            error_max: Duration::ZERO,
            verifications: verification_totals(self.server),
        }
    }

    async fn call(&mut self, tally: &mut Tally, credential: &str) -> anyhow::Result<()> {
        let sent = Instant::now();
        let answer = self.client.authorize(request(credential, &self.path)).await;
        let took = sent.elapsed();
        tally.calls += 1;
        let answer = match answer {
            Ok(answer) => answer.into_inner(),
            Err(status) => {
                *tally.errors.entry(format!("{:?}", status.code())).or_insert(0) += 1;
                tally.error_max = tally.error_max.max(took);
                return Ok(());
            }
        };
        if answer.allowed {
            tally.took.push(took);
        } else if answer.reason == "throttled" {
            tally.throttled += 1;
        } else {
            *tally.denied.entry(format!("{} ({})", answer.code, answer.reason)).or_insert(0) += 1;
        }
        Ok(())
    }

    fn finish(&self, scenario: &str, mut tally: Tally) -> Calls {
        tally.took.sort();
        let (sum, count) = verification_totals(self.server);
        let verifications = count - tally.verifications.1;
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let (p50, p99, max, mean) = if tally.took.is_empty() {
            (0.0, 0.0, 0.0, 0.0)
        } else {
            (
                us(percentile(&tally.took, 0.5)),
                us(percentile(&tally.took, 0.99)),
                us(*tally.took.last().expect("not empty")),
                tally.took.iter().map(|d| us(*d)).sum::<f64>() / tally.took.len() as f64,
            )
        };
        Calls {
            backend: self.backend.to_owned(),
            scenario: scenario.to_owned(),
            calls: tally.calls,
            allowed: tally.took.len(),
            throttled: tally.throttled,
            denied: tally.denied,
            errors: tally.errors,
            error_max_us: us(tally.error_max),
            p50_us: p50,
            p99_us: p99,
            max_us: max,
            mean_us: mean,
            p50_x_hot: None,
            p99_x_hot: None,
            verifications,
            verification_mean_us: (verifications > 0)
                .then(|| (sum - tally.verifications.0) / verifications as f64 * 1e6),
        }
    }

    /// Each credential once, in order.
    async fn pass(&mut self, scenario: &str, credentials: &[&str]) -> anyhow::Result<Calls> {
        let mut tally = self.tally();
        for credential in credentials {
            self.call(&mut tally, credential).await?;
        }
        let calls = self.finish(scenario, tally);
        Ok(calls)
    }
}

/// The stored hash and lookup of a key (under the cache: what the store holds now). The
/// adoption after a first use changes one or both: an argon2id import already at keygate's
/// parameters keeps its hash and is only found by its whole credential's digest from then on.
async fn stored_hash(server: &Server, id: KeyId) -> anyhow::Result<String> {
    let handles = server.handles.as_ref().expect("keygate has handles");
    let record = handles.store.key(id).await?.ok_or_else(|| anyhow::anyhow!("key {id} is gone"))?;
    Ok(format!("{} {}", record.secret_hash.expose_phc(), record.lookup.as_deref().unwrap_or_default()))
}

/// Waits until the key's stored hash or lookup is no longer `before` (its adoption is
/// stored); `None` after `patience`.
async fn rehashed(server: &Server, id: KeyId, before: &str, patience: Duration) -> anyhow::Result<Option<Duration>> {
    let started = Instant::now();
    loop {
        if stored_hash(server, id).await? != before {
            return Ok(Some(started.elapsed()));
        }
        if started.elapsed() > patience {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// An imported credential and its key's id (`None` if the import refused it).
type Held<'a> = (&'a str, Option<KeyId>);

/// When imported keys' hashes became keygate's own after their first use.
#[derive(Debug, Clone, Serialize)]
struct Adoption {
    backend: String,
    kind: Kind,
    /// Isolated first uses: from the answer to the re-hash seen in the store.
    after_answer_p50_ms: f64,
    after_answer_p99_ms: f64,
    /// Back-to-back first uses: from the last answer until every re-hash was stored (the
    /// probes' first uses included).
    backlog_drained_ms: f64,
    /// Keys whose hash was still the imported one after 30 s.
    not_rehashed: usize,
}

#[derive(Debug, Serialize)]
struct Backend {
    imports: Vec<ImportRun>,
    calls: Vec<Calls>,
    adoptions: Vec<Adoption>,
}

fn server(dir: &std::path::Path, postgres: Option<String>) -> anyhow::Result<Server> {
    std::fs::create_dir_all(dir)?;
    // keygate's default argon2 settings: what users get.
    fixture::keygate(dir, move |s| {
        if let Some(url) = postgres {
            s.database_url = keygate::config::MaskedUrl::new(url);
        }
    })
}

async fn on_backend(
    backend: &str,
    server: &Server,
    keys: &[(Kind, Vec<Foreign>)],
    args: &ImportArgs,
) -> anyhow::Result<Backend> {
    let mut admin = server.admin().await?;
    let application = admin
        .create_application(pb::CreateApplicationRequest { account_id: ACCOUNT.into(), name: "bench".into() })
        .await?
        .into_inner();
    let path = format!("{APP_PATH_PREFIX}{}", application.id);

    // 1. Import throughput, one kind after another.
    let mut imports = Vec::new();
    let mut imported: Vec<(Kind, Vec<Held<'_>>)> = Vec::new();
    let mut keys_before = 0;
    for (kind, foreign) in keys {
        let (run, ids) = import(&mut admin, backend, *kind, foreign, args.batch, keys_before).await?;
        keys_before += run.statuses.get("imported").copied().unwrap_or(0);
        imports.push(run);
        let pairs = foreign.iter().zip(ids).map(|(f, id)| (f.credential.as_str(), KeyId::parse(&id).ok())).collect();
        imported.push((*kind, pairs));
    }

    // 2. First uses, one call at a time.
    let m = args.first_uses;
    let mut caller =
        Caller { server, client: AuthorizerClient::new(server.channel().await?), path: path.clone(), backend };
    let mut calls = Vec::new();
    let mut adoptions = Vec::new();

    // keygate's own keys (argon2id at the default parameters, made by the server).
    eprintln!("{backend}: creating {m} keygate keys…");
    let own = keygate_keys(&mut admin, "own", m).await?;
    // Fresh keygate keys whose first use comes right after each kind's back-to-back
    // first uses, while their re-hashes may still be queued for argon2.
    const PROBES: usize = 3;
    let probes = keygate_keys(&mut admin, "probe", 3 * PROBES).await?;
    let mut probes: Vec<&str> = probes.iter().map(String::as_str).collect();
    let own: Vec<&str> = own.iter().map(String::as_str).collect();
    calls.push(caller.pass("keygate key, first use (argon2id)", &own).await?);
    calls.push(caller.pass("keygate key, second use", &own).await?);

    for (kind, pairs) in &imported {
        let name = kind.algorithm();
        let usable: Vec<(&str, KeyId)> = pairs.iter().filter_map(|(c, id)| id.map(|id| (*c, id))).collect();
        anyhow::ensure!(usable.len() >= 2 * m, "{name}: {} keys imported, {} needed", usable.len(), 2 * m);
        let (isolated, back_to_back) = (&usable[..m], &usable[m..2 * m]);
        eprintln!("{backend}: first uses of {name} keys…");

        // Isolated: each first use after the previous key's re-hash is stored, so no call
        // waits behind another's re-hash.
        let mut tally = caller.tally();
        let mut after_answer = Vec::with_capacity(m);
        let mut not_rehashed = 0;
        for (credential, id) in isolated {
            let before = stored_hash(server, *id).await?;
            caller.call(&mut tally, credential).await?;
            match rehashed(server, *id, &before, Duration::from_secs(10)).await? {
                Some(took) => after_answer.push(took),
                None => not_rehashed += 1,
            }
        }
        calls.push(caller.finish(&format!("{name} import, first use (isolated)"), tally));

        // Back to back: the next first use as soon as the last one is answered.
        let mut befores = Vec::with_capacity(m);
        for (_, id) in back_to_back {
            befores.push(stored_hash(server, *id).await?);
        }
        let credentials: Vec<&str> = back_to_back.iter().map(|(c, _)| *c).collect();
        calls.push(caller.pass(&format!("{name} import, first use (back to back)"), &credentials).await?);
        let last_answer = Instant::now();
        let probe: Vec<&str> = probes.drain(..PROBES).collect();
        calls.push(caller.pass(&format!("keygate key, first use right after {name} back to back"), &probe).await?);
        for ((_, id), before) in back_to_back.iter().zip(&befores) {
            if rehashed(server, *id, before, Duration::from_secs(10)).await?.is_none() {
                not_rehashed += 1;
            }
        }
        let backlog = last_answer.elapsed();

        let credentials: Vec<&str> = isolated.iter().map(|(c, _)| *c).collect();
        calls.push(caller.pass(&format!("{name} import, second use"), &credentials).await?);
        calls.push(caller.pass(&format!("{name} import, third use"), &credentials).await?);
        calls.push(caller.pass(&format!("{name} import, fourth use"), &credentials).await?);
        after_answer.sort();
        adoptions.push(Adoption {
            backend: backend.to_owned(),
            kind: *kind,
            after_answer_p50_ms: if after_answer.is_empty() { 0.0 } else { ms(percentile(&after_answer, 0.5)) },
            after_answer_p99_ms: if after_answer.is_empty() { 0.0 } else { ms(percentile(&after_answer, 0.99)) },
            backlog_drained_ms: ms(backlog),
            not_rehashed,
        });
    }

    // 3. The hot path: keygate keys already used, several passes.
    let hot_credentials: Vec<&str> = (0..args.hot_passes.max(1)).flat_map(|_| own.iter().copied()).collect();
    let hot = caller.pass("hot: keygate key, already used", &hot_credentials).await?;
    for c in &mut calls {
        c.compare_to(&hot);
    }
    calls.push(hot);
    for c in &calls {
        c.print();
    }
    print_adoptions(backend, m, &adoptions);
    Ok(Backend { imports, calls, adoptions })
}

/// `count` keys made by the server (argon2id at its default parameters), named `name`.
async fn keygate_keys(admin: &mut Admin, name: &str, count: usize) -> anyhow::Result<Vec<String>> {
    let mut secrets = Vec::with_capacity(count);
    for _ in 0..count {
        let created = admin
            .create_api_key(pb::CreateApiKeyRequest {
                account_id: ACCOUNT.into(),
                name: name.into(),
                scopes: vec!["applications:read".into()],
                ..Default::default()
            })
            .await?
            .into_inner();
        secrets.push(created.secret);
    }
    Ok(secrets)
}

/// How long imported keys' re-hashes took to be stored, by kind; `m` keys back to back.
fn print_adoptions(backend: &str, m: usize, adoptions: &[Adoption]) {
    for a in adoptions {
        println!(
            "{backend:<8} {:<7} re-hash stored after the answer (isolated): p50 {:.1} ms p99 {:.1} ms; \
             back to back: all {m} stored {:.0} ms after the last answer; not re-hashed: {}",
            a.kind.algorithm(),
            a.after_answer_p50_ms,
            a.after_answer_p99_ms,
            a.backlog_drained_ms,
            a.not_rehashed
        );
    }
}

pub async fn run(args: ImportArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=1000).contains(&args.batch), "--batch must be 1 to 1000");
    let mut keys = Vec::new();
    for (kind, count) in [(Kind::Sha256, args.keys), (Kind::Bcrypt, args.bcrypt_keys), (Kind::Argon2, args.argon2_keys)]
    {
        let count = count.max(2 * args.first_uses);
        let started = Instant::now();
        let cost = args.bcrypt_cost;
        let made = tokio::task::spawn_blocking(move || generate(kind, count, cost)).await??;
        eprintln!("made {count} {} keys in {:.1} s (not measured)", kind.algorithm(), started.elapsed().as_secs_f64());
        keys.push((kind, made));
    }

    let dir = std::env::temp_dir().join(format!("keygate-import-{}", random_token(8)?));
    let mut backends = vec![("SQLite", None)];
    let schema = match &args.postgres {
        Some(base) => {
            use sqlx::Connection;
            let schema = format!("kg_bench_{}", random_token(10)?.to_lowercase());
            let mut conn = sqlx::PgConnection::connect(base).await?;
            sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut conn).await?;
            let sep = if base.contains('?') { '&' } else { '?' };
            backends.push(("Postgres", Some(format!("{base}{sep}options=-c%20search_path%3D{schema}"))));
            Some((conn, schema))
        }
        None => None,
    };
    let mut results = BTreeMap::new();
    let mut outcome = Ok(());
    for (backend, url) in backends {
        // Errors end the runs but not before the schema is dropped (below).
        let result = match server(&dir.join(backend), url) {
            Ok(server) => on_backend(backend, &server, &keys, &args).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(result) => {
                results.insert(backend, result);
            }
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    if let Some((mut conn, schema)) = schema {
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&mut conn).await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    outcome?;
    if let Some(path) = &args.json {
        let report = serde_json::json!({
            "benchmark": "import",
            "bcrypt_cost": args.bcrypt_cost,
            "batch": args.batch,
            "first_uses": args.first_uses,
            "hot_passes": args.hot_passes,
            "backends": results,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_keys_verify_as_the_server_will_check_them() {
        let bcrypt = make(Kind::Bcrypt, 4, &argon2::Argon2::default()).unwrap();
        assert!(bcrypt::verify(&bcrypt.credential, &bcrypt.key.hash).unwrap());
        assert_eq!(bcrypt.key.hash.len(), 60);
        assert!(bcrypt.credential.starts_with(&bcrypt.key.start));
        let sha = make(Kind::Sha256, 4, &argon2::Argon2::default()).unwrap();
        assert_eq!(sha.key.hash, hex(&Sha256::digest(sha.credential.as_bytes())));
        let made = generate(Kind::Argon2, 3, 4).unwrap();
        assert_eq!(made.len(), 3);
        for key in &made {
            use argon2::password_hash::{PasswordHash, PasswordVerifier};
            let parsed = PasswordHash::new(&key.key.hash).unwrap();
            assert!(argon2::Argon2::default().verify_password(key.credential.as_bytes(), &parsed).is_ok());
            assert!(key.key.hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{}", key.key.hash);
        }
    }
}
