//! The `broker` process under test and the HTTP helpers that talk to it.
//!
//! Each [`Server`] owns its child process and a fresh temporary folder, and
//! for the `postgres` storage a schema of its own, so tests run in parallel
//! without sharing ports or data. Only loopback addresses are used.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use serde_json::Value;
use tempfile::TempDir;

use crate::database::Database;
use crate::sse::SseClient;

/// Time allowed for the server to print its `listening` line.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Time allowed for the server to exit after SIGTERM or SIGINT.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Time allowed for one ordinary HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Prefix of the name of each server's temporary folder.
pub(crate) const TEMP_PREFIX: &str = "broker-conformance-";

/// One runtime and storage combination, as passed in `BROKER_RUNTIME` and `BROKER_STORAGE`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pair {
    pub(crate) runtime: &'static str,
    pub(crate) storage: &'static str,
}

impl Pair {
    /// Returns `true` when the storage keeps its data in a PostgreSQL server,
    /// and so ignores the data folder.
    pub(crate) fn uses_database(&self) -> bool {
        self.storage == "postgres"
    }
}

/// How to start the server: the pair, extra environment variables and how the
/// base settings are passed.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pair: Pair,
    extra_env: Vec<(String, String)>,
    /// Pass host, port, data folder, storage, runtime, and the database URL
    /// and schema, as command-line flags instead of environment variables.
    use_flags: bool,
    /// Leave the data folder unset so the server uses its default `./tmp`.
    default_data_dir: bool,
}

impl Launch {
    pub(crate) fn new(pair: Pair) -> Self {
        Self {
            pair,
            extra_env: Vec::new(),
            use_flags: false,
            default_data_dir: false,
        }
    }

    /// Adds an environment variable such as `BROKER_ORIGIN` or `BROKER_KEEP_ALIVE`.
    pub(crate) fn env(mut self, key: &str, value: &str) -> Self {
        self.extra_env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub(crate) fn with_flags(mut self) -> Self {
        self.use_flags = true;
        self
    }

    pub(crate) fn with_default_data_dir(mut self) -> Self {
        self.default_data_dir = true;
        self
    }
}

/// A running `broker` child process with its own temporary folder.
///
/// The folder outlives restarts, so a restarted server reads the same data.
/// Dropping the value kills the child.
#[derive(Debug)]
pub(crate) struct Server {
    launch: Launch,
    /// Working directory of the child. The data folder is `data/` inside it,
    /// or `tmp/` when the launch keeps the default.
    root: TempDir,
    child: Option<Child>,
    /// The schema of a `postgres` storage server, kept across restarts.
    /// Dropping it drops the schema, after [`Server`]'s own `drop` has
    /// killed the process.
    database: Option<Database>,
    addr: SocketAddr,
    /// The line that announced `listening` for the current process.
    listening_line: String,
    /// Everything the child processes printed on stdout and stderr, across restarts.
    output: Arc<Mutex<String>>,
    http: reqwest::Client,
}

impl Server {
    /// Starts the server for `pair` with default settings.
    pub(crate) async fn start(pair: Pair) -> Server {
        Server::launch(Launch::new(pair)).await
    }

    /// Starts the server as `launch` describes.
    pub(crate) async fn launch(launch: Launch) -> Server {
        let root = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempdir()
            .expect("failed to create a temporary folder for the server");
        let database = launch
            .pair
            .uses_database()
            .then(|| Database::for_server(root.path()));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("failed to build the HTTP client");
        let mut server = Server {
            launch,
            root,
            child: None,
            database,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            listening_line: String::new(),
            output: Arc::new(Mutex::new(String::new())),
            http,
        };
        server.spawn().await;
        server
    }

    pub(crate) fn data_dir(&self) -> PathBuf {
        if self.launch.default_data_dir {
            self.root.path().join("tmp")
        } else {
            self.root.path().join("data")
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn listening_line(&self) -> &str {
        &self.listening_line
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Returns everything the server printed so far, for failure messages.
    pub(crate) fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Spawns the child and waits for its `listening` line.
    async fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "the previous server process is still running"
        );
        let mut command = self.command();
        let mut child = command.spawn().unwrap_or_else(|error| {
            panic!("failed to spawn {}: {error}", env!("CARGO_BIN_EXE_broker"))
        });

        let (line_sender, line_receiver) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("child stdout is piped");
        let stderr = child.stderr.take().expect("child stderr is piped");
        self.output
            .lock()
            .unwrap()
            .push_str(&format!("--- process {} started ---\n", child.id()));
        drain_stdout(stdout, Arc::clone(&self.output), line_sender);
        drain_stderr(stderr, Arc::clone(&self.output));

        let deadline = Instant::now() + START_TIMEOUT;
        let line = loop {
            match line_receiver.try_recv() {
                Ok(line) => break line,
                Err(_) if child.try_wait().ok().flatten().is_some() => {
                    let status = child.wait().expect("failed to reap the server");
                    // Give the drain threads a moment to copy the last lines.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    panic!(
                        "server exited with {status} before printing a `listening` line; output:\n{}",
                        self.output()
                    );
                }
                Err(_) => {}
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "server printed no `listening` line on stdout within {START_TIMEOUT:?}; output:\n{}",
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };

        let addr = parse_address(&line).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the `listening` line has no `address=IP:PORT` token: {line:?}; output:\n{}",
                self.output()
            )
        });
        self.addr = addr;
        self.listening_line = line;
        self.child = Some(child);
    }

    fn command(&self) -> Command {
        let launch = &self.launch;
        let mut command = Command::new(env!("CARGO_BIN_EXE_broker"));
        // Start from an empty environment so settings of the calling shell
        // (BROKER_*, PORT, RUST_LOG) cannot change what is tested.
        command
            .env_clear()
            .env("RUST_BACKTRACE", "1")
            .current_dir(self.root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());

        let mut settings: Vec<(&str, &str, String)> = vec![
            ("--host", "BROKER_HOST", "127.0.0.1".to_owned()),
            ("--port", "PORT", "0".to_owned()),
            (
                "--storage",
                "BROKER_STORAGE",
                launch.pair.storage.to_owned(),
            ),
            (
                "--runtime",
                "BROKER_RUNTIME",
                launch.pair.runtime.to_owned(),
            ),
        ];
        if !launch.default_data_dir {
            let data_dir = self.data_dir().to_string_lossy().into_owned();
            settings.push(("--data-dir", "BROKER_DATA_DIR", data_dir));
        }
        if let Some(database) = &self.database {
            settings.push((
                "--database-url",
                "BROKER_DATABASE_URL",
                database.url.clone(),
            ));
            settings.push((
                "--database-schema",
                "BROKER_DATABASE_SCHEMA",
                database.schema.clone(),
            ));
        }
        for (flag, variable, value) in settings {
            if launch.use_flags {
                command.arg(flag).arg(value);
            } else {
                command.env(variable, value);
            }
        }
        for (key, value) in &launch.extra_env {
            command.env(key, value);
        }
        command
    }

    /// Returns the resident memory of the running server process, in KiB,
    /// from `/proc/PID/status`.
    pub(crate) fn resident_kib(&self) -> u64 {
        let child = self.child.as_ref().expect("the server is not running");
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            .expect("failed to read the server's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS line in /proc status: {status}"))
    }

    pub(crate) fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child
                .try_wait()
                .expect("failed to poll the server")
                .is_none(),
            None => false,
        }
    }

    /// Sends SIGKILL and reaps the child.
    pub(crate) fn kill(&mut self) {
        let mut child = self.child.take().expect("the server is not running");
        child.kill().expect("failed to send SIGKILL to the server");
        child.wait().expect("failed to reap the server");
    }

    /// Sends SIGTERM and waits for the child to exit.
    pub(crate) async fn terminate(&mut self) -> ExitStatus {
        self.stop_with("TERM").await
    }

    /// Sends SIGINT and waits for the child to exit.
    pub(crate) async fn interrupt(&mut self) -> ExitStatus {
        self.stop_with("INT").await
    }

    /// Sends `signal` (a name such as `TERM`) without waiting for an exit.
    pub(crate) fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the server is not running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("failed to run `kill`");
        assert!(status.success(), "`kill -{signal} {}` failed", child.id());
    }

    async fn stop_with(&mut self, signal: &str) -> ExitStatus {
        self.signal(signal);
        self.wait_exit().await
    }

    /// Waits for the child to exit, after a signal sent with [`Server::signal`].
    pub(crate) async fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the server is not running");

        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("failed to poll the server") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "server did not exit within {EXIT_TIMEOUT:?} after the signal; output:\n{}",
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Returns the process id of the running server.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is not running").id()
    }

    /// Sets the soft file size limit (`RLIMIT_FSIZE`) of the running server
    /// to `bytes`, or removes it with `None`, with `prlimit` from util-linux.
    /// Only the soft limit changes, because raising a hard limit again needs
    /// `CAP_SYS_RESOURCE`, which a container's root may lack.
    pub(crate) fn set_file_size_limit(&self, bytes: Option<u64>) {
        let soft = bytes.map_or_else(|| "unlimited".to_owned(), |bytes| bytes.to_string());
        let output = Command::new("prlimit")
            .arg("--pid")
            .arg(self.pid().to_string())
            .arg(format!("--fsize={soft}:"))
            .output()
            .expect("failed to run `prlimit`; it comes with util-linux");
        assert!(
            output.status.success(),
            "`prlimit --pid {} --fsize={soft}:` failed: {}",
            self.pid(),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs the server once more on the same data folder with `overrides`
    /// added to its environment, expecting it to exit by itself within the
    /// start timeout. Returns its exit status and everything it printed.
    /// The server must be stopped first.
    pub(crate) async fn run_to_exit(&mut self, overrides: &[(&str, &str)]) -> (ExitStatus, String) {
        assert!(self.child.is_none(), "stop the server before `run_to_exit`");
        let mut command = self.command();
        for (key, value) in overrides {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap_or_else(|error| {
            panic!("failed to spawn {}: {error}", env!("CARGO_BIN_EXE_broker"))
        });

        let deadline = Instant::now() + START_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("failed to poll the server") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not exit by itself within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };

        let mut printed = String::new();
        for stream in [
            child
                .stdout
                .take()
                .map(|out| Box::new(out) as Box<dyn Read>),
            child
                .stderr
                .take()
                .map(|err| Box::new(err) as Box<dyn Read>),
        ]
        .into_iter()
        .flatten()
        {
            let mut stream = stream;
            let _ = stream.read_to_string(&mut printed);
        }
        (status, printed)
    }

    /// Starts a new process on the same data folder, after SIGTERM if the old
    /// one still runs. The new process listens on a new port.
    pub(crate) async fn restart(&mut self) {
        if self.is_running() {
            self.terminate().await;
        } else if let Some(mut child) = self.child.take() {
            child.wait().expect("failed to reap the server");
        }
        self.spawn().await;
    }

    /// Opens an SSE connection to `GET /events` and checks for status 200.
    pub(crate) async fn subscribe(&self) -> SseClient {
        let client = SseClient::connect(self.addr, &[]).await;
        assert_eq!(
            client.status, 200,
            "GET /events: expected status 200, got {} with headers {:?}",
            client.status, client.headers
        );
        client
    }

    /// Sends `POST /insert` with a JSON value as `application/json`.
    pub(crate) async fn post_insert(&self, body: &Value) -> Reply {
        self.post_raw("application/json", body.to_string().into_bytes())
            .await
    }

    /// Sends `POST /insert` with raw bytes and the given content type.
    pub(crate) async fn post_raw(
        &self,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Reply {
        let request = self
            .http
            .post(self.url("/insert"))
            .header("content-type", content_type)
            .body(body);
        Reply::from_request(request).await
    }

    /// Inserts `body`, asserts `201` and returns the stored record.
    pub(crate) async fn insert(&self, body: &Value) -> Value {
        let reply = self.post_insert(body).await;
        assert_eq!(
            reply.status, 201,
            "POST /insert {body}: expected 201, got {} {}",
            reply.status, reply.text
        );
        reply.json()
    }

    /// Inserts an event with an explicit timestamp and returns the stored record.
    pub(crate) async fn insert_at(&self, event: &str, timestamp: u64, data: Value) -> Value {
        let body = serde_json::json!({ "event": event, "timestamp": timestamp, "data": data });
        self.insert(&body).await
    }

    /// Sends a `GET` with no extra headers.
    pub(crate) async fn get(&self, path: &str) -> Reply {
        Reply::from_request(self.http.get(self.url(path))).await
    }

    /// Returns `GET /collection/{name}` as a list, asserting status 200.
    pub(crate) async fn collection(&self, name: &str) -> Vec<Value> {
        let path = format!("/collection/{}", percent_encode(name));
        let reply = self.get(&path).await;
        assert_eq!(
            reply.status, 200,
            "GET {path}: expected 200, got {} {}",
            reply.status, reply.text
        );
        match reply.json() {
            Value::Array(records) => records,
            other => panic!("GET {path}: expected a JSON array, got {other}"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Copies the child's stdout into `output` and sends each line that contains
/// `listening` to `lines`.
fn drain_stdout(
    stdout: impl Read + Send + 'static,
    output: Arc<Mutex<String>>,
    lines: mpsc::Sender<String>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            match reader.read_until(b'\n', &mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buffer).into_owned();
            output.lock().unwrap().push_str(&line);
            if line.contains("listening") {
                let _ = lines.send(line.trim_end().to_owned());
            }
        }
    });
}

fn drain_stderr(stderr: impl Read + Send + 'static, output: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let reader = BufReader::new(stderr);
        for line in reader.split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line);
            output
                .lock()
                .unwrap()
                .push_str(&format!("stderr: {line}\n"));
        }
    });
}

/// Finds the address in a log line: the `address=IP:PORT` token of a text
/// line, or the `"address":"IP:PORT"` field of a JSON line.
fn parse_address(line: &str) -> Option<SocketAddr> {
    if let Some((_, rest)) = line.split_once("\"address\":\"") {
        return rest.split('"').next()?.parse().ok();
    }
    line.split_whitespace()
        .find_map(|token| token.strip_prefix("address="))
        .and_then(|value| value.trim_matches('"').parse().ok())
}

/// An HTTP response read in full.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) text: String,
}

impl Reply {
    pub(crate) async fn from_request(request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("HTTP request failed");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .expect("failed to read the response body");
        Reply {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// Parses the body as JSON, panicking with the body text if it is not.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|error| {
            panic!(
                "expected a JSON body with status {}, got {:?}: {error}",
                self.status, self.text
            )
        })
    }

    /// Returns every value of header `name`, joined with `, `.
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .get_all(name)
            .iter()
            .map(|value| value.to_str().unwrap_or("<not ASCII>"))
            .collect();
        if values.is_empty() {
            None
        } else {
            Some(values.join(", "))
        }
    }
}

/// Percent-encodes every byte of `text` except `A-Z a-z 0-9 - . _ ~`.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut encoded = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

pub(crate) fn now_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is before 1970")
        .as_millis()
}

pub(crate) fn now_secs() -> u64 {
    (now_millis() / 1000) as u64
}

/// Returns the first whole second at least `lead` from now, as epoch seconds.
pub(crate) fn future_second(lead: Duration) -> u64 {
    let target = now_millis() + lead.as_millis();
    target.div_ceil(1000) as u64
}

/// Polls `check` every 20 ms until it returns `true` or `timeout` passes.
pub(crate) async fn poll_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
