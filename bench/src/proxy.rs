//! `keygate-bench proxy`: what forward auth costs as users see it — HTTP calls through a
//! real nginx (the shipped `examples/nginx/nginx.conf`) asking keygate, against the same
//! nginx asking a no-op auth endpoint that answers allows of the same size.
//!
//! Every server is a process of its own: keygate (`keygate serve`, SQLite, forward auth),
//! the no-op (this binary's `noop-http` command: the no-op auth endpoint and the upstream
//! both nginx instances proxy to), and the two nginx. This process only generates load:
//! `c` keep-alive HTTP/1.1 connections in a closed loop, the floor and keygate in
//! alternating rounds, as `load` does.

use crate::report::Run;
use anyhow::Context;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct ProxyArgs {
    /// Concurrent connections, e.g. 1,64.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    concurrency: Vec<usize>,
    /// Rounds per concurrency; each round measures the floor and keygate once.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Seconds measured per round and server (after a 1 s warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Hot keys called in turn, each in an account of its own (the default policy's
    /// global limit, 3000 per minute per account, must not be what is measured).
    #[arg(long, default_value_t = 500)]
    keys: usize,
    /// The nginx binary.
    #[arg(long, default_value = "nginx")]
    nginx: String,
    /// Also write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

const TOKEN: &str = "bench-admin-token-0123456789";
const PATH: &str = "/api/v1/panel/applications";

/// A folder removed with the benchmark.
struct Scratch(PathBuf);

impl Scratch {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process, killed with the benchmark.
pub(crate) struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command` and reads its stderr (or stdout) until `ready` finds an address.
pub(crate) fn start(
    mut command: Command,
    from_stdout: bool,
    ready: impl Fn(&str) -> Option<String> + Send + 'static,
) -> anyhow::Result<(Process, String)> {
    let pipe = || Stdio::piped();
    let mut child = if from_stdout {
        command.stdout(pipe()).stderr(Stdio::null()).spawn()?
    } else {
        command.stderr(pipe()).stdout(Stdio::null()).spawn()?
    };
    let reader: Box<dyn std::io::Read + Send> = if from_stdout {
        Box::new(child.stdout.take().context("stdout")?)
    } else {
        Box::new(child.stderr.take().context("stderr")?)
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Every line is read (and shown to `ready`) so the pipe never fills up.
        for line in std::io::BufReader::new(reader).lines().map_while(Result::ok) {
            if let Some(address) = ready(&line) {
                let _ = tx.send(address);
            }
        }
    });
    let process = Process(child);
    let address = rx.recv_timeout(Duration::from_secs(60)).context("the server did not say where it listens")?;
    Ok((process, address))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// nginx from the shipped configuration, asking `auth` before proxying to `upstream`.
fn nginx(binary: &str, dir: &Path, auth: &str, upstream: &str) -> anyhow::Result<(Process, u16)> {
    let template = include_str!("../../examples/nginx/nginx.conf");
    let port = free_port()?;
    let prefix = dir.join(format!("nginx-{port}"));
    std::fs::create_dir_all(&prefix)?;
    let config = prefix.join("nginx.conf");
    let text = template
        .replace("{{LISTEN_PORT}}", &port.to_string())
        .replace("{{KEYGATE_HTTP}}", auth)
        .replace("{{UPSTREAM}}", upstream)
        .replace("{{PREFIX}}", prefix.to_str().context("a UTF-8 temp path")?)
        // One worker per core, as a production nginx would run here.
        .replace("worker_processes 1;", "worker_processes auto;")
        // The benchmark's own log would be nginx's main cost.
        .replace("access_log {{PREFIX}}/access.log keygate;", "access_log off;");
    std::fs::write(&config, text)?;
    let error_log = prefix.join("error.log");
    let child = Command::new(binary)
        .args(["-c", config.to_str().unwrap_or_default(), "-p", prefix.to_str().unwrap_or_default()])
        .args(["-e", error_log.to_str().unwrap_or_default()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {binary} (apt-get install nginx)"))?;
    Ok((Process(child), port))
}

async fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "nothing listens on {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let path = std::env::temp_dir().join(format!("keygate-proxy-{}", keygate::domain::random_token(8)?));
    std::fs::create_dir_all(&path)?;
    let dir = Scratch(path);
    let keygate_bin = std::env::current_exe()?.with_file_name("keygate");
    anyhow::ensure!(
        keygate_bin.is_file(),
        "build keygate first: cargo build --release --bin keygate (looked for {keygate_bin:?})"
    );
    let mut keygate = Command::new(&keygate_bin);
    keygate
        .args(["serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--trusted-proxy-hops", "1"])
        .args(["--log-format", "json"])
        .env("KEYGATE_DATABASE_URL", format!("sqlite://{}", dir.path().join("keygate.db").display()))
        .env("KEYGATE_ADMIN_TOKEN", TOKEN)
        .env("KEYGATE_DIGEST_KEY", "bench-digest-key-0123456789abcdefghijklmnop")
        .env("RUST_LOG", "info");
    let grpc = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let seen = grpc.clone();
    let (_keygate, http) = start(keygate, false, move |line| {
        let event: serde_json::Value = serde_json::from_str(line).ok()?;
        let address = event["address"].as_str()?.to_owned();
        match event["message"].as_str()? {
            "keygate is serving" => {
                *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(address);
                None
            }
            // Logged before "keygate is serving" but the gRPC address is known by then.
            "serving forward auth at /forward-auth" => Some(address),
            _ => None,
        }
    })?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let grpc = loop {
        if let Some(address) = grpc.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            break address;
        }
        anyhow::ensure!(Instant::now() < deadline, "keygate's gRPC address never appeared");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let secrets =
        crate::fixture::keys_in_own_accounts(&format!("http://{grpc}"), None, TOKEN, "acct_proxy", args.keys.max(1))
            .await?;

    // The no-op answers allows of keygate's size: read one allow to learn its headers.
    let principal = principal_headers(&http, &secrets[0]).await?;
    let mut noop = Command::new(std::env::current_exe()?);
    noop.args(["noop-http", "--listen", "127.0.0.1:0"]).env("KEYGATE_BENCH_ALLOW_HEADERS", principal);
    let (_noop, noop_address) = start(noop, true, |line| line.strip_prefix("listening on ").map(str::to_owned))?;

    let (_floor_nginx, floor_port) = nginx(&args.nginx, dir.path(), &noop_address, &noop_address)?;
    let (_keygate_nginx, keygate_port) = nginx(&args.nginx, dir.path(), &http, &noop_address)?;
    wait_for_port(floor_port).await?;
    wait_for_port(keygate_port).await?;
    // Every key verified once (argon2) before anything is measured: hot keys only.
    warm(keygate_port, &secrets).await?;
    println!(
        "nginx {} (shipped config) -> forward auth -> upstream; {} hot keys; {} rounds x {} s per server",
        args.nginx, args.keys, args.rounds, args.seconds
    );

    let mut runs = Vec::new();
    for &concurrency in &args.concurrency {
        let measure = Duration::from_secs(args.seconds);
        let empty = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        let (mut floor, mut ours, mut errors) = (empty(), empty(), [0u64; 2]);
        for _ in 0..args.rounds.max(1) {
            for (i, (port, total)) in [(floor_port, &mut floor), (keygate_port, &mut ours)].into_iter().enumerate() {
                let (histogram, failed) = load(port, concurrency, &secrets, measure).await?;
                total.add(&histogram).expect("same bounds");
                errors[i] += failed;
            }
        }
        let seconds = measure.as_secs_f64() * f64::from(args.rounds.max(1));
        let floor_run = Run::new("nginx + no-op auth (floor)", concurrency, &floor, errors[0], seconds);
        let mut keygate_run = Run::new("nginx + keygate forward auth", concurrency, &ours, errors[1], seconds);
        keygate_run.compare_to(&floor_run);
        floor_run.print();
        keygate_run.print();
        runs.push(floor_run);
        runs.push(keygate_run);
    }
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&runs)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// One allow's principal headers, as `name: value` lines.
async fn principal_headers(http: &str, secret: &str) -> anyhow::Result<String> {
    let stream = tokio::net::TcpStream::connect(http).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get("/forward-auth")
        .header("host", "keygate")
        .header("x-original-method", "GET")
        .header("x-original-uri", PATH)
        .header("x-api-key", secret)
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    anyhow::ensure!(response.status() == 200, "keygate did not allow the bench key: {}", response.status());
    Ok(response
        .headers()
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-keygate-"))
        .map(|(name, value)| format!("{}: {}", name, value.to_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// `concurrency` keep-alive connections to nginx, each calling in a closed loop for a
/// 1 s warm-up and `measure`; only calls started after the warm-up are recorded.
async fn load(
    port: u16,
    concurrency: usize,
    secrets: &[String],
    measure: Duration,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(1);
    let end = measure_from + measure;
    let mut tasks = Vec::with_capacity(concurrency);
    for worker in 0..concurrency.max(1) {
        let secrets = secrets.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut errors = 0u64;
            let mut n = worker;
            let mut sender = None;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                // nginx closes a keep-alive connection after 1000 requests: open another,
                // as any HTTP client would (the time to connect is part of the call).
                if sender.is_none() {
                    sender = connect(port).await.ok();
                }
                let Some(connection) = sender.as_mut() else {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                n += 1;
                let request = hyper::Request::get(PATH)
                    .header("host", "api.example")
                    .header("x-api-key", &secrets[n % secrets.len()])
                    .body(Empty::<Bytes>::new())
                    .expect("a valid request");
                let outcome = match connection.send_request(request).await {
                    Ok(response) => {
                        let status = response.status();
                        let read = response.into_body().collect().await.is_ok();
                        if read {
                            Some(status == 200)
                        } else {
                            None
                        }
                    }
                    Err(_) => None,
                };
                if outcome.is_none() {
                    sender = None;
                    continue;
                }
                if sent >= measure_from {
                    if outcome == Some(true) {
                        histogram.saturating_record(sent.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
            }
            (histogram, errors)
        }));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut errors = 0;
    for task in tasks {
        let (h, e) = task.await?;
        histogram.add(&h).expect("same bounds");
        errors += e;
    }
    Ok((histogram, errors))
}

/// Calls once with every key, 8 at a time, and checks each is allowed.
async fn warm(port: u16, secrets: &[String]) -> anyhow::Result<()> {
    for chunk in secrets.chunks(8) {
        let mut calls = tokio::task::JoinSet::new();
        for secret in chunk.iter().cloned() {
            calls.spawn(async move {
                let mut sender = connect(port).await?;
                let request = hyper::Request::get(PATH)
                    .header("host", "api.example")
                    .header("x-api-key", secret)
                    .body(Empty::<Bytes>::new())?;
                let status = sender.send_request(request).await?.status();
                anyhow::ensure!(status == 200, "a bench key was not allowed: {status}");
                anyhow::Ok(())
            });
        }
        while let Some(called) = calls.join_next().await {
            called??;
        }
    }
    Ok(())
}

async fn connect(port: u16) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// The no-op server: `/forward-auth` allows with the given headers, anything else is the
/// upstream's small JSON answer.
pub async fn serve_noop(listen: &str) -> anyhow::Result<()> {
    let headers: Vec<(String, String)> = std::env::var("KEYGATE_BENCH_ALLOW_HEADERS")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once(": ").map(|(n, v)| (n.to_owned(), v.to_owned())))
        .collect();
    let allow = move || {
        let headers = headers.clone();
        async move {
            let mut response = axum::http::Response::new(axum::body::Body::empty());
            for (name, value) in headers {
                if let (Ok(name), Ok(value)) =
                    (axum::http::HeaderName::from_bytes(name.as_bytes()), axum::http::HeaderValue::from_str(&value))
                {
                    response.headers_mut().insert(name, value);
                }
            }
            response
        }
    };
    let app = axum::Router::new()
        .route("/forward-auth", axum::routing::any(allow))
        .fallback(|| async { ([("content-type", "application/json")], r#"{"success":true,"data":[]}"#) });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
