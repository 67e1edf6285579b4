//! `keygate serve` in a process of its own, as operators run it: its JSON log lines
//! collected in order, its addresses read from what it logs at start-up.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// The secrets' variables, removed from what a started process inherits.
const SECRET_VARIABLES: [&str; 4] =
    ["KEYGATE_DATABASE_URL", "KEYGATE_ADMIN_TOKEN", "KEYGATE_DIGEST_KEY", "KEYGATE_RATE_LIMIT_STORE"];

/// `keygate serve` on random loopback ports, JSON logs, and none of the secrets' variables
/// of the test process; add flags and variables before [`Keygate::start`].
pub fn serve() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keygate"));
    command.args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"]).env("RUST_LOG", "info");
    for name in SECRET_VARIABLES {
        command.env_remove(name).env_remove(format!("{name}_FILE"));
    }
    command
}

pub struct Keygate {
    pub child: Child,
    /// http://host:port of the gRPC listener.
    pub grpc: String,
    /// host:port of the forward-auth listener, when --http-listen was given.
    pub http: Option<String>,
    log: Arc<Mutex<Vec<String>>>,
    exited: Option<std::process::ExitStatus>,
}

impl Keygate {
    /// Starts `command` and waits until it serves; `Err`: it exited first, with its stderr.
    pub fn start(command: &mut Command) -> Result<Self, String> {
        let http_wanted = command.get_args().any(|a| a == "--http-listen");
        let mut child =
            command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("the keygate binary starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let (stderr, lines) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                    let address = event["address"].as_str().unwrap_or_default().to_owned();
                    match event["message"].as_str() {
                        Some("keygate is serving") => drop(tx.send(Some(("grpc", address)))),
                        Some("serving forward auth at /forward-auth") => drop(tx.send(Some(("http", address)))),
                        _ => {}
                    }
                }
                lines.lock().unwrap().push(line);
            }
            let _ = tx.send(None);
        });
        let (mut grpc, mut http) = (None, None);
        while grpc.is_none() || (http_wanted && http.is_none()) {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(Some(("http", address))) => http = Some(address),
                Ok(Some((_, address))) => grpc = Some(format!("http://{address}")),
                // The process ended (its stderr closed) or hangs: what it said is the error.
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(log.lock().unwrap().join("\n"));
                }
            }
        }
        Ok(Self { child, grpc: grpc.unwrap(), http, log, exited: None })
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM, as systemd and Kubernetes stop a service.
    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the process to end (a hang fails after a minute, asserting no speed).
    pub async fn exit_status(&mut self) -> std::process::ExitStatus {
        for _ in 0..12_000 {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.exited = Some(status);
                return status;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("keygate did not exit:\n{}", self.log().join("\n"));
    }
}

impl Drop for Keygate {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `keygate serve` with `command`'s settings that must not start: what it said.
pub fn refused(command: &mut Command) -> String {
    match Keygate::start(command) {
        Ok(keygate) => panic!("keygate started:\n{}", keygate.log().join("\n")),
        Err(said) => said,
    }
}
