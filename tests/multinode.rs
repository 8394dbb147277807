//! Three `broker` processes on one PostgreSQL database and schema behave as
//! one broker, seen from outside over HTTP and SSE on 127.0.0.1.
//!
//! The test starts a PostgreSQL cluster of its own in a temporary folder, so
//! that it can stop and start the database without disturbing other tests,
//! and stops that cluster when it ends, even after a panic. It needs the
//! server binaries of Debian's `postgresql` package under
//! `/usr/lib/postgresql/VERSION/bin`, and takes the highest version there.
//! `initdb` does not run as root, so a test running as root runs the
//! cluster as the `postgres` OS user.
//!
//! The scenario, in [`brokers_share_one_log`]:
//!
//! 1. Subscribers open `/events` on every node, two on node A.
//! 2. Nodes B and C take interleaved inserts, some due now and some a few
//!    seconds ahead. Node C stores one more scheduled event and is killed
//!    with SIGKILL before it is due: A or B publishes it on time.
//! 3. The database stops for a few seconds and starts again. Meanwhile
//!    inserts and `/health` get `503` with a JSON body, and open streams stay
//!    open. Afterwards inserts succeed again without restarting a broker.
//!    Then `pg_ctl restart` brings the database back at once, and the next
//!    read and insert on each node succeed at the first attempt.
//! 4. Every subscriber saw every publication once, in one order, with ids
//!    1, 2, 3, ...; the histories, the snapshot of a new stream and a resume
//!    on another node agree with that order.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tempfile::TempDir;

/// Where Debian's `postgresql` packages install one folder per major version.
const POSTGRES_ROOT: &str = "/usr/lib/postgresql";

/// The schema that every node shares.
const SCHEMA: &str = "multinode";

/// Time allowed for a broker to print its `listening` line.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Time allowed for one HTTP request, or for the headers of `GET /events`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed for publications to reach every subscriber after they are
/// due.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// How late after its second a scheduled event may reach a subscriber, the
/// bound that the browser test applies too.
const ON_TIME: Duration = Duration::from_millis(1500);

/// How long the database stays down.
const OUTAGE: Duration = Duration::from_millis(2500);

/// Time allowed, after the database is back, for inserts and `/health` to
/// succeed again. A broker retries a failed write after 1, 2, 4 and then
/// up to 10 seconds, so this covers more than one full retry delay.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a stream must stay quiet after its expected messages to show
/// that nothing more follows.
const QUIET: Duration = Duration::from_millis(500);

/// The SSE keep-alive interval given to the brokers, in seconds. Its
/// comments show that a stream is still open while no publication arrives.
const KEEP_ALIVE_SECONDS: &str = "1";

/// Poll interval of every bounded wait.
const POLL: Duration = Duration::from_millis(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn brokers_share_one_log() {
    let started = Instant::now();
    let cluster = Cluster::start().await;
    let mut test = Scenario::start(&cluster).await;

    test.open_subscribers().await;
    test.insert_on_b_and_c_then_kill_c().await;
    test.restart_database().await;
    test.insert_on_a_and_b().await;
    test.restart_database_quickly().await;
    test.check_streams().await;
    test.check_collections().await;
    test.check_snapshots().await;
    test.check_resume_on_other_node().await;

    println!("multinode scenario took {:?}", started.elapsed());
}

/// A PostgreSQL cluster in a temporary folder, listening on a free loopback
/// port and on a Unix socket inside the folder. Dropping it stops the
/// server with `pg_ctl stop -m immediate`.
struct Cluster {
    /// The folder of `initdb`, `pg_ctl` and `postgres`.
    bin: PathBuf,
    /// Set when the test runs as root. The server then runs as the
    /// `postgres` OS user, because `initdb` and `postgres` reject root.
    as_postgres_user: bool,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    /// Removed after [`Drop::drop`] has stopped the server, because fields
    /// drop after it.
    folder: TempDir,
}

impl Cluster {
    /// Creates a cluster with `initdb` and starts it.
    async fn start() -> Cluster {
        let bin = find_postgres_bin();
        let folder = tempfile::Builder::new()
            .prefix("broker-multinode-")
            .tempdir()
            .expect("failed to create a temporary folder for the PostgreSQL cluster");
        let as_postgres_user = std::fs::metadata(folder.path())
            .expect("failed to read the temporary folder's metadata")
            .uid()
            == 0;
        let sockets = folder.path().join("sockets");
        std::fs::create_dir(&sockets).expect("failed to create the socket folder");
        if as_postgres_user {
            give_to_postgres_user(folder.path());
            give_to_postgres_user(&sockets);
        }
        let mut cluster = Cluster {
            bin,
            as_postgres_user,
            data: folder.path().join("data"),
            log: folder.path().join("postgres.log"),
            port: 0,
            folder,
        };

        // `--no-sync` and `fsync = off` save seconds. The test needs no
        // crash safety, because it stops the server cleanly or throws it away.
        let data = cluster.data.display().to_string();
        let mut initdb = cluster.postgres_command("initdb");
        initdb.args([
            "-D",
            &data,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        run(initdb, "initdb").await;
        let settings = format!(
            "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n",
            sockets.display()
        );
        cluster.append_setting(&settings);

        // A port found free may be taken before the server binds it. A
        // later `port` line overrides an earlier one.
        for attempt in 1..=3 {
            cluster.port = free_port();
            cluster.append_setting(&format!("port = {}\n", cluster.port));
            let output = cluster.pg_ctl_output(&["start", "-w", "-t", "30"]).await;
            if output.status.success() {
                return cluster;
            }
            let log = cluster.log_tail();
            if attempt == 3 || !log.contains("could not bind") {
                panic!(
                    "pg_ctl start failed: {}\nserver log:\n{log}",
                    describe_output(&output)
                );
            }
        }
        unreachable!("the loop returns or panics on its last attempt")
    }

    /// Returns the URL that brokers connect with.
    fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server with `pg_ctl stop -m fast`, which ends every session
    /// and waits for the server to exit.
    async fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "30"]).await;
    }

    /// Starts the stopped server again on the same port.
    async fn start_again(&self) {
        self.pg_ctl(&["start", "-w", "-t", "30"]).await;
    }

    /// Restarts the server with `pg_ctl restart -m fast`, which ends every
    /// session and returns once the new server accepts connections.
    async fn restart(&self) {
        self.pg_ctl(&["restart", "-m", "fast", "-w", "-t", "30"])
            .await;
    }

    /// Runs `pg_ctl ACTION...` and panics with its output and the server
    /// log if it fails.
    async fn pg_ctl(&self, action: &[&str]) {
        let output = self.pg_ctl_output(action).await;
        assert!(
            output.status.success(),
            "pg_ctl {} failed: {}\nserver log:\n{}",
            action.join(" "),
            describe_output(&output),
            self.log_tail()
        );
    }

    /// Runs `pg_ctl ACTION... -D DATA -l LOG` and returns its output.
    async fn pg_ctl_output(&self, action: &[&str]) -> Output {
        let mut command = self.postgres_command("pg_ctl");
        command
            .args(action)
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log);
        tokio::process::Command::from(command)
            .output()
            .await
            .expect("failed to run pg_ctl")
    }

    /// Builds a command for the program `name` of the cluster's version,
    /// run as the `postgres` OS user when the test runs as root.
    fn postgres_command(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        let mut command = if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        // The `postgres` user may not be allowed into the test's own
        // working folder.
        command.current_dir(self.folder.path()).stdin(Stdio::null());
        command
    }

    fn append_setting(&self, text: &str) {
        use std::io::Write;
        let path = self.data.join("postgresql.conf");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|error| panic!("failed to open {}: {error}", path.display()));
        file.write_all(text.as_bytes())
            .unwrap_or_else(|error| panic!("failed to write {}: {error}", path.display()));
    }

    /// Returns the last lines of the server log, for failure messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        tail(&log, 30)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // `immediate` skips the checkpoint, because the folder is removed next.
        let mut command = self.postgres_command("pg_ctl");
        command
            .args(["stop", "-m", "immediate", "-w", "-t", "30", "-D"])
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = command.status();
    }
}

/// Runs a PostgreSQL program and panics with its output if it fails.
async fn run(command: Command, name: &str) {
    let output = tokio::process::Command::from(command)
        .output()
        .await
        .unwrap_or_else(|error| panic!("failed to run {name}: {error}"));
    assert!(
        output.status.success(),
        "{name} failed: {}",
        describe_output(&output)
    );
}

/// Returns the `bin` folder of the highest PostgreSQL version installed.
fn find_postgres_bin() -> PathBuf {
    let missing = || -> ! {
        panic!(
            "no PostgreSQL server binaries (initdb, pg_ctl) under {POSTGRES_ROOT}/*/bin; \
             install Debian's `postgresql` package (apt-get install postgresql)"
        )
    };
    let Ok(entries) = std::fs::read_dir(POSTGRES_ROOT) else {
        missing()
    };
    let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version: Option<Vec<u32>> = name.split('.').map(|part| part.parse().ok()).collect();
            let bin = entry.path().join("bin");
            let complete = bin.join("initdb").is_file() && bin.join("pg_ctl").is_file();
            version.filter(|_| complete).map(|version| (version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => missing(),
    }
}

/// Makes the `postgres` OS user the owner of `path`.
fn give_to_postgres_user(path: &Path) {
    let uid = id_of_postgres_user("-u");
    let gid = id_of_postgres_user("-g");
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|error| panic!("failed to chown {} to postgres: {error}", path.display()));
}

/// Returns the user (`-u`) or group (`-g`) id of the `postgres` OS user.
fn id_of_postgres_user(flag: &str) -> u32 {
    let output = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .expect("failed to run `id`");
    assert!(
        output.status.success(),
        "the test runs as root, so it runs PostgreSQL as the `postgres` OS user, which \
         does not exist; install Debian's `postgresql` package: {}",
        describe_output(&output)
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("`id` printed a number")
}

/// Returns a loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("failed to find a free loopback port")
        .port()
}

fn describe_output(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Returns the last `count` lines of `text`.
fn tail(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

/// A `broker` process on the shared database.
struct Node {
    name: &'static str,
    runtime: &'static str,
    child: Option<Child>,
    addr: SocketAddr,
    /// Everything the process printed on stdout and stderr.
    output: Arc<Mutex<String>>,
}

impl Node {
    /// Starts a broker and waits for its `listening` line.
    async fn start(name: &'static str, runtime: &'static str, cluster: &Cluster) -> Node {
        let folder = cluster.folder.path().join(format!("node-{name}"));
        std::fs::create_dir_all(&folder).expect("failed to create the node's folder");
        // An empty environment keeps the calling shell's BROKER_* and
        // RUST_LOG out of the test.
        let mut child = Command::new(env!("CARGO_BIN_EXE_broker"))
            .env_clear()
            .env("RUST_BACKTRACE", "1")
            .env("RUST_LOG", "info")
            .env("BROKER_HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("BROKER_STORAGE", "postgres")
            .env("BROKER_RUNTIME", runtime)
            .env("BROKER_DATABASE_URL", cluster.url())
            .env("BROKER_DATABASE_SCHEMA", SCHEMA)
            .env("BROKER_DATA_DIR", folder.join("data"))
            .env("BROKER_KEEP_ALIVE", KEEP_ALIVE_SECONDS)
            .current_dir(&folder)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("failed to spawn {}: {error}", env!("CARGO_BIN_EXE_broker"))
            });

        let output = Arc::new(Mutex::new(String::new()));
        let (lines, listening) = std::sync::mpsc::channel();
        drain(
            child.stdout.take().expect("stdout is piped"),
            output.clone(),
            Some(lines),
        );
        drain(
            child.stderr.take().expect("stderr is piped"),
            output.clone(),
            None,
        );
        // From here on, dropping the node kills the process, also when
        // this start or another node's panics.
        let mut node = Node {
            name,
            runtime,
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            output,
        };

        let deadline = Instant::now() + START_TIMEOUT;
        let line: String = loop {
            if let Ok(line) = listening.try_recv() {
                break line;
            }
            let child = node.child.as_mut().expect("the node is running");
            let exited = child.try_wait().expect("failed to poll the broker");
            if exited.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                tokio::time::sleep(Duration::from_millis(100)).await;
                panic!(
                    "node {name} ({runtime}) printed no `listening` line within \
                     {START_TIMEOUT:?} (exit: {exited:?}); output:\n{}",
                    node.output.lock().unwrap()
                );
            }
            tokio::time::sleep(POLL).await;
        };
        node.addr = line
            .split_whitespace()
            .find_map(|token| token.strip_prefix("address="))
            .and_then(|value| value.trim_matches('"').parse().ok())
            .unwrap_or_else(|| panic!("node {name}: no `address=IP:PORT` in {line:?}"));
        node
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends SIGKILL and reaps the process.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("the node is running");
        child.kill().expect("failed to send SIGKILL");
        child.wait().expect("failed to reap the node");
    }

    fn output_tail(&self, lines: usize) -> String {
        tail(&self.output.lock().unwrap(), lines)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Copies a child's output into `output`, and sends each line that
/// contains `listening` to `lines`.
fn drain(
    stream: impl Read + Send + 'static,
    output: Arc<Mutex<String>>,
    lines: Option<std::sync::mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        let reader = BufReader::new(stream);
        for line in reader.split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line).into_owned();
            if let Some(lines) = &lines {
                if line.contains("listening") {
                    let _ = lines.send(line.clone());
                }
            }
            let mut output = output.lock().unwrap();
            output.push_str(&line);
            output.push('\n');
        }
    });
}

/// One SSE message as the test compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    id: u64,
    event: String,
    data: String,
}

/// What a stream's reader task has seen so far.
#[derive(Debug, Default)]
struct StreamState {
    messages: Vec<Message>,
    /// Arrival time of each message in `messages`, in epoch milliseconds.
    arrivals: Vec<u128>,
    /// When the last bytes arrived, messages and keep-alive comments alike.
    last_bytes: Option<Instant>,
    /// Why the stream ended, if it has.
    end: Option<String>,
}

/// An open `GET /events` response, read by a task of its own.
struct Stream {
    label: String,
    /// The name of the node it reads from.
    node: &'static str,
    /// The `broker-resume` response header.
    resume: Option<String>,
    state: Arc<Mutex<StreamState>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Stream {
    /// Opens `/events` on `node`, resuming after `last_event_id` if given,
    /// and checks for status `200`.
    async fn open(node: &Node, label: &str, last_event_id: Option<u64>) -> Stream {
        // No overall timeout: the response is a stream that stays open.
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(REQUEST_TIMEOUT)
            .build()
            .expect("failed to build the HTTP client");
        let mut request = client
            .get(node.url("/events"))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = tokio::time::timeout(REQUEST_TIMEOUT, request.send())
            .await
            .unwrap_or_else(|_| panic!("{label}: no response headers within {REQUEST_TIMEOUT:?}"))
            .unwrap_or_else(|error| panic!("{label}: GET /events failed: {error}"));
        assert_eq!(
            response.status().as_u16(),
            200,
            "{label}: GET /events returned {}",
            response.status()
        );
        let resume = response
            .headers()
            .get("broker-resume")
            .map(|value| value.to_str().unwrap_or("<not ASCII>").to_owned());
        let state = Arc::new(Mutex::new(StreamState::default()));
        let reader = tokio::spawn(read_stream(response, state.clone()));
        Stream {
            label: label.to_owned(),
            node: node.name,
            resume,
            state,
            reader,
        }
    }

    fn messages(&self) -> Vec<Message> {
        self.state.lock().unwrap().messages.clone()
    }

    fn count(&self) -> usize {
        self.state.lock().unwrap().messages.len()
    }

    fn end(&self) -> Option<String> {
        self.state.lock().unwrap().end.clone()
    }

    /// Returns when `message` arrived, in epoch milliseconds, if it did.
    fn arrival(&self, message: &Message) -> Option<u128> {
        let state = self.state.lock().unwrap();
        let index = state.messages.iter().position(|seen| seen == message)?;
        Some(state.arrivals[index])
    }

    /// Describes what the stream has seen, for failure messages.
    fn summary(&self) -> String {
        let state = self.state.lock().unwrap();
        let ids: Vec<u64> = state.messages.iter().map(|message| message.id).collect();
        format!(
            "{}: {} messages, ids {ids:?}, end: {:?}",
            self.label,
            ids.len(),
            state.end
        )
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Reads SSE messages from `response` into `state` until the stream ends.
async fn read_stream(mut response: reqwest::Response, state: Arc<Mutex<StreamState>>) {
    let mut buffer: Vec<u8> = Vec::new();
    let end = loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break "the server ended the stream".to_owned(),
            Err(error) => break format!("reading the stream failed: {error}"),
        };
        let arrived = now_millis();
        let mut state = state.lock().unwrap();
        state.last_bytes = Some(Instant::now());
        buffer.extend_from_slice(&chunk);
        // A blank line ends each message, comment and `retry` block.
        while let Some(end) = buffer.windows(2).position(|pair| pair == b"\n\n") {
            let block: Vec<u8> = buffer.drain(..end + 2).collect();
            let block = String::from_utf8_lossy(&block).into_owned();
            match parse_message(&block) {
                Ok(Some(message)) => {
                    state.messages.push(message);
                    state.arrivals.push(arrived);
                }
                Ok(None) => {}
                Err(problem) => {
                    state.end = Some(problem);
                    return;
                }
            }
        }
    };
    state.lock().unwrap().end = Some(end);
}

/// Parses one SSE block. Returns `Ok(None)` for a comment or `retry`
/// block, and an error for a message without a numeric id, a name or data.
fn parse_message(block: &str) -> Result<Option<Message>, String> {
    let (mut id, mut event, mut data) = (None, None, None);
    let mut fields = 0;
    for line in block.lines().filter(|line| !line.starts_with(':')) {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
        match field {
            "id" => id = Some(value),
            "event" => event = Some(value),
            "data" => data = Some(value),
            "retry" | "" => continue,
            _ => return Err(format!("unknown SSE field in {block:?}")),
        }
        fields += 1;
    }
    if fields == 0 {
        return Ok(None);
    }
    match (id.and_then(|id| id.parse().ok()), event, data) {
        (Some(id), Some(event), Some(data)) => Ok(Some(Message { id, event, data })),
        _ => Err(format!(
            "SSE message without a numeric id, a name or data: {block:?}"
        )),
    }
}

/// An insert that got `201`.
#[derive(Debug, Clone)]
struct Accepted {
    /// The `n` field of its data, unique in the test.
    n: u64,
    node: &'static str,
    event: String,
    /// Its `timestamp` field, for scheduled inserts.
    scheduled: Option<u64>,
    /// Whether the database was stopped while it was pending.
    pending_through_outage: bool,
    /// The stored record from the response.
    record: Value,
}

/// The nodes, subscribers and inserts of the scenario.
struct Scenario<'a> {
    cluster: &'a Cluster,
    nodes: Vec<Node>,
    http: reqwest::Client,
    streams: Vec<Stream>,
    accepted: Vec<Accepted>,
    /// The `n` of every insert that got `503`, none of which may be stored.
    rejected: Vec<u64>,
    next_n: u64,
}

/// Indexes of the nodes in [`Scenario::nodes`].
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

/// Event names, used in turn.
const NAMES: [&str; 4] = ["title", "score", "chat", "cursor"];

impl<'a> Scenario<'a> {
    /// Starts the three nodes together, so that they create the schema at
    /// once, on alternating runtimes when the binary has both.
    async fn start(cluster: &'a Cluster) -> Scenario<'a> {
        let mut runtimes = Vec::new();
        if cfg!(feature = "tokio-axum") {
            runtimes.push("tokio-axum");
        }
        if cfg!(feature = "async-std-tide") {
            runtimes.push("async-std-tide");
        }
        let runtime = |index: usize| runtimes[index % runtimes.len()];
        let (a, b, c) = tokio::join!(
            Node::start("A", runtime(0), cluster),
            Node::start("B", runtime(1), cluster),
            Node::start("C", runtime(2), cluster),
        );
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("failed to build the HTTP client");
        Scenario {
            cluster,
            nodes: vec![a, b, c],
            http,
            streams: Vec::new(),
            accepted: Vec::new(),
            rejected: Vec::new(),
            next_n: 1,
        }
    }

    /// Step 1: one subscriber on each node and a second one on node A,
    /// before any insert, so that every publication reaches them live.
    async fn open_subscribers(&mut self) {
        for (node, label) in [(A, "A1"), (A, "A2"), (B, "B1"), (C, "C1")] {
            let stream = Stream::open(&self.nodes[node], label, None).await;
            self.streams.push(stream);
        }
    }

    /// Step 2: 30 inserts, two at a time on nodes B and C, a third of them
    /// two or three seconds ahead. Then node C stores one more scheduled
    /// event and is killed before it is due. A or B must publish it on
    /// time.
    async fn insert_on_b_and_c_then_kill_c(&mut self) {
        self.insert_in_pairs([B, C], 15).await;

        let due = future_second(Duration::from_secs(2));
        let alarm = self.plan("alarm", Some(due));
        let reply = self.try_insert(C, &alarm).await;
        self.expect_accepted(C, alarm, reply);
        self.nodes[C].kill();
        assert!(
            now_millis() < u128::from(due) * 1000,
            "node C was killed after its scheduled event was due at {due}, but the test \
             needs it killed before"
        );
        self.wait_for_all_published("after node C was killed").await;
    }

    /// Step 3: stops the database while an event is pending, checks what
    /// clients get while it is down, starts it again and waits until every
    /// surviving node takes inserts again.
    async fn restart_database(&mut self) {
        // Pending while the database is down, and due before it is back.
        let due = future_second(Duration::from_millis(1500));
        let pending = self.plan("outage", Some(due));
        let reply = self.try_insert(A, &pending).await;
        self.expect_accepted(A, pending, reply);
        self.accepted.last_mut().unwrap().pending_through_outage = true;

        self.cluster.stop().await;
        let stopped = Instant::now();
        assert!(
            now_millis() < u128::from(due) * 1000,
            "the database took until after {due} to stop, so the event due then was \
             published before the outage"
        );

        for node in [A, B] {
            self.expect_unavailable(node, "right after the database stopped")
                .await;
        }
        tokio::time::sleep_until((stopped + OUTAGE).into()).await;
        for node in [A, B] {
            self.expect_unavailable(node, "while the database stays down")
                .await;
        }
        for stream in self.live_streams() {
            let state = stream.state.lock().unwrap();
            assert_eq!(
                state.end, None,
                "{}: the stream ended while the database was down",
                stream.label
            );
            assert!(
                state.last_bytes.is_some_and(|at| at > stopped),
                "{}: no keep-alive arrived in the {OUTAGE:?} that the database was down",
                stream.label
            );
        }

        self.cluster.start_again().await;
        let restarted = Instant::now();
        for node in [A, B] {
            self.wait_for_recovery(node, restarted).await;
        }
        self.wait_for_all_published("after the database restarted")
            .await;
    }

    /// Step 3, continued: 10 inserts, two at a time on nodes A and B, a
    /// third of them two or three seconds ahead, on the restarted database.
    async fn insert_on_a_and_b(&mut self) {
        self.insert_in_pairs([A, B], 5).await;
        self.wait_for_all_published("after the inserts on nodes A and B")
            .await;
    }

    /// Step 3, last: the database restarts within a second. Right after,
    /// reads and inserts on every surviving node succeed at the first
    /// attempt, because the server is back before anyone uses it.
    async fn restart_database_quickly(&mut self) {
        self.cluster.restart().await;
        for node in [A, B] {
            let name = self.nodes[node].name;
            let request = self.http.get(self.nodes[node].url("/collection/title"));
            let description = format!("GET /collection/title on node {name}");
            let reply = self.send(request, &description).await;
            if reply.status != 200 {
                panic!(
                    "{description} right after the database restarted: expected 200, got {} \
                     {}\n{}",
                    reply.status,
                    reply.text,
                    self.report()
                );
            }

            let request = self.http.get(self.nodes[node].url("/health"));
            let reply = self.send(request, "GET /health").await;
            assert_eq!(
                reply.status, 200,
                "GET /health on node {name} right after the database restarted: {}",
                reply.text
            );
        }
        for node in [A, B] {
            let planned = self.plan("title", None);
            let reply = self.try_insert(node, &planned).await;
            self.expect_accepted(node, planned, reply);
        }
        self.wait_for_all_published("after the database restarted quickly")
            .await;
    }

    /// Step 4: every live subscriber saw every publication once, in one
    /// order, with ids 1, 2, 3, ..., and scheduled events on time.
    async fn check_streams(&mut self) {
        let reference = self.streams[0].messages();
        let ids: Vec<u64> = reference.iter().map(|message| message.id).collect();
        let expected: Vec<u64> = (1..=self.accepted.len() as u64).collect();
        assert_eq!(
            ids, expected,
            "publication ids on {}",
            self.streams[0].label
        );

        for stream in self.live_streams() {
            let messages = stream.messages();
            if let Some(index) = (0..messages.len().max(reference.len()))
                .find(|&index| messages.get(index) != reference.get(index))
            {
                panic!(
                    "{} and {} differ at message {index}: {:?} against {:?}\n{}",
                    stream.label,
                    self.streams[0].label,
                    messages.get(index),
                    reference.get(index),
                    self.report()
                );
            }
        }

        // Node C's subscriber saw a prefix of the log until C was killed.
        let on_c = self.stream("C1");
        let seen = on_c.messages();
        assert!(
            reference.starts_with(&seen),
            "C1 saw other publications than A1 before node C was killed: {:?}",
            seen
        );
        assert!(
            on_c.end().is_some(),
            "C1 stayed open after node C was killed"
        );

        // Each accepted insert was published exactly once, with its data.
        for accepted in &self.accepted {
            let published: Vec<&Message> = reference
                .iter()
                .filter(|message| data_n(&message.data) == Some(accepted.n))
                .collect();
            assert_eq!(
                published.len(),
                1,
                "insert n={} (event {}, via node {}) was published {} times: {published:?}",
                accepted.n,
                accepted.event,
                accepted.node,
                published.len()
            );
            assert_eq!(published[0].event, accepted.event);
            assert_eq!(
                serde_json::from_str::<Value>(&published[0].data).unwrap(),
                accepted.record["data"],
                "data of insert n={}",
                accepted.n
            );
        }
        for n in &self.rejected {
            assert!(
                reference
                    .iter()
                    .all(|message| data_n(&message.data) != Some(*n)),
                "insert n={n} got 503 and was published anyway"
            );
        }

        self.check_schedule(&reference);
    }

    /// Checks that no scheduled event reached a live subscriber before its
    /// second, and that each reached it within [`ON_TIME`] after it, unless
    /// the database was down when it fell due.
    fn check_schedule(&self, reference: &[Message]) {
        let mut max_late = 0;
        for accepted in &self.accepted {
            let Some(due) = accepted.scheduled else {
                continue;
            };
            let message = reference
                .iter()
                .find(|message| data_n(&message.data) == Some(accepted.n))
                .expect("checked above");
            let due_ms = u128::from(due) * 1000;
            for stream in self.live_streams() {
                let arrived = stream.arrival(message).expect("checked above");
                assert!(
                    arrived >= due_ms,
                    "{}: insert n={} due at {due} arrived {} ms early",
                    stream.label,
                    accepted.n,
                    due_ms - arrived
                );
                if !accepted.pending_through_outage {
                    let late = arrived - due_ms;
                    if accepted.event == "alarm" {
                        println!(
                            "{}: node C's scheduled event arrived {late} ms after its second",
                            stream.label
                        );
                    }
                    max_late = max_late.max(late);
                    assert!(
                        late <= ON_TIME.as_millis(),
                        "{}: insert n={} (event {}, via node {}) due at {due} arrived \
                         {late} ms late",
                        stream.label,
                        accepted.n,
                        accepted.event,
                        accepted.node
                    );
                }
            }
        }
        println!("scheduled events arrived at most {max_late} ms after their second");
    }

    /// Step 4: `GET /collection/{name}` is identical on A and B, and lists
    /// exactly the accepted inserts of that name, all published.
    async fn check_collections(&mut self) {
        let mut names: BTreeSet<&str> = BTreeSet::new();
        names.extend(self.accepted.iter().map(|accepted| accepted.event.as_str()));
        let mut record_ids = Vec::new();
        for name in names {
            let on_a = self.collection(A, name).await;
            let on_b = self.collection(B, name).await;
            assert_eq!(on_a, on_b, "GET /collection/{name} differs between A and B");

            let mut expected: Vec<Value> = self
                .accepted
                .iter()
                .filter(|accepted| accepted.event == name)
                .map(|accepted| {
                    let mut record = accepted.record.clone();
                    record["published"] = Value::Bool(true);
                    record
                })
                .collect();
            expected.sort_by_key(|record| record["id"].as_u64());
            assert_eq!(
                on_a, expected,
                "GET /collection/{name} on A against the accepted inserts"
            );
            record_ids.extend(on_a.iter().filter_map(|record| record["id"].as_u64()));
        }
        record_ids.sort_unstable();
        let expected: Vec<u64> = (1..=self.accepted.len() as u64).collect();
        assert_eq!(
            record_ids, expected,
            "record ids across every collection: failed inserts must leave no gap"
        );
    }

    /// Step 4: a new stream on A and one on B start with the same snapshot:
    /// the latest publication of each name, in publication order.
    async fn check_snapshots(&mut self) {
        let reference = self.streams[0].messages();
        let mut latest: BTreeMap<&str, &Message> = BTreeMap::new();
        for message in &reference {
            latest.insert(&message.event, message);
        }
        let mut expected: Vec<Message> = latest.into_values().cloned().collect();
        expected.sort_by_key(|message| message.id);

        let on_a = Stream::open(&self.nodes[A], "snapshot on A", None).await;
        let on_b = Stream::open(&self.nodes[B], "snapshot on B", None).await;
        for stream in [&on_a, &on_b] {
            self.wait_for_count(stream, expected.len(), "the snapshot")
                .await;
            tokio::time::sleep(QUIET).await;
            assert_eq!(
                stream.messages(),
                expected,
                "{}: the snapshot against the latest publication of each name on A1",
                stream.label
            );
        }
    }

    /// Step 4: a client that read up to some id on one node resumes on the
    /// other with `Last-Event-ID` and gets exactly the publications after it.
    async fn check_resume_on_other_node(&mut self) {
        let reference = self.streams[0].messages();
        let total = reference.len();
        for (read_on, resume_on, position) in [("A1", B, total / 2), ("B1", A, total / 3)] {
            let last_read = self.stream(read_on).messages()[position - 1].id;
            let label = format!("resume after {last_read} on {}", self.nodes[resume_on].name);
            let stream = Stream::open(&self.nodes[resume_on], &label, Some(last_read)).await;
            assert_eq!(
                stream.resume.as_deref(),
                Some("resumed"),
                "{label}: broker-resume"
            );
            self.wait_for_count(&stream, total - position, &label).await;
            tokio::time::sleep(QUIET).await;
            assert_eq!(
                stream.messages(),
                reference[position..],
                "{label}: against A1's publications after {last_read}"
            );
        }
    }

    /// Sends `rounds` pairs of inserts, each pair at once to the two
    /// nodes, and checks that every insert gets `201`.
    async fn insert_in_pairs(&mut self, [first, second]: [usize; 2], rounds: usize) {
        for round in 0..rounds {
            let to_first = self.next_insert(round * 2);
            let to_second = self.next_insert(round * 2 + 1);
            let (first_reply, second_reply) = tokio::join!(
                self.try_insert(first, &to_first),
                self.try_insert(second, &to_second)
            );
            self.expect_accepted(first, to_first, first_reply);
            self.expect_accepted(second, to_second, second_reply);
        }
    }

    /// Plans the next insert of the rounds in steps 2 and 3: every third
    /// one is scheduled two or three seconds ahead.
    fn next_insert(&mut self, index: usize) -> Planned {
        let name = NAMES[index % NAMES.len()];
        let scheduled = match index % 6 {
            2 => Some(future_second(Duration::from_secs(2))),
            5 => Some(future_second(Duration::from_secs(3))),
            _ => None,
        };
        self.plan(name, scheduled)
    }

    /// Plans an insert of `name` whose data carries the next `n`.
    fn plan(&mut self, name: &str, scheduled: Option<u64>) -> Planned {
        let n = self.next_n;
        self.next_n += 1;
        let mut body = json!({ "event": name, "data": { "n": n, "text": format!("{name} {n}") } });
        if let Some(timestamp) = scheduled {
            body["timestamp"] = json!(timestamp);
        }
        Planned { n, body, scheduled }
    }

    /// Sends `POST /insert` to `node`.
    async fn try_insert(&self, node: usize, planned: &Planned) -> Reply {
        let request = self
            .http
            .post(self.nodes[node].url("/insert"))
            .header("content-type", "application/json")
            .body(planned.body.to_string());
        let description = format!(
            "POST /insert {} on node {}",
            planned.body, self.nodes[node].name
        );
        self.send(request, &description).await
    }

    /// Checks that `reply` is `201` with the stored record of `planned`,
    /// and records the insert as accepted.
    fn expect_accepted(&mut self, node: usize, planned: Planned, reply: Reply) {
        let name = self.nodes[node].name;
        if reply.status != 201 {
            panic!(
                "POST /insert {} on node {name}: expected 201, got {} {}\n{}",
                planned.body,
                reply.status,
                reply.text,
                self.report()
            );
        }
        let record: Value = serde_json::from_str(&reply.text)
            .unwrap_or_else(|error| panic!("node {name}: insert reply is not JSON ({error})"));
        assert_eq!(
            record["event"], planned.body["event"],
            "node {name}: {record}"
        );
        assert_eq!(
            record["data"], planned.body["data"],
            "node {name}: {record}"
        );
        assert!(
            record["id"].as_u64().is_some(),
            "node {name}: no id in {record}"
        );
        if let Some(timestamp) = planned.scheduled {
            assert_eq!(
                record["timestamp"],
                json!(timestamp),
                "node {name}: {record}"
            );
            assert_eq!(record["published"], json!(false), "node {name}: {record}");
        } else {
            assert_eq!(record["published"], json!(true), "node {name}: {record}");
        }
        self.accepted.push(Accepted {
            n: planned.n,
            node: name,
            event: planned.body["event"].as_str().unwrap().to_owned(),
            scheduled: planned.scheduled,
            pending_through_outage: false,
            record,
        });
    }

    /// Checks that an insert and `/health` on `node` get `503` with a JSON
    /// body that names the storage failure.
    async fn expect_unavailable(&mut self, node: usize, when: &str) {
        let name = self.nodes[node].name;
        let planned = self.plan("chat", None);
        let reply = self.try_insert(node, &planned).await;
        self.rejected.push(planned.n);
        println!(
            "node {name}, {when}: POST /insert got {} {}",
            reply.status, reply.text
        );
        check_storage_unavailable(&reply, &format!("POST /insert on node {name}, {when}"));

        let request = self.http.get(self.nodes[node].url("/health"));
        let reply = self.send(request, "GET /health").await;
        println!(
            "node {name}, {when}: GET /health got {} {}",
            reply.status, reply.text
        );
        check_storage_unavailable(&reply, &format!("GET /health on node {name}, {when}"));
    }

    /// Retries inserts on `node` until one gets `201`, then waits for
    /// `/health` to report `200`.
    async fn wait_for_recovery(&mut self, node: usize, restarted: Instant) {
        let name = self.nodes[node].name;
        let deadline = restarted + RECOVERY_TIMEOUT;
        let mut replies = Vec::new();
        loop {
            let planned = self.plan("score", None);
            let reply = self.try_insert(node, &planned).await;
            if reply.status == 201 {
                self.expect_accepted(node, planned, reply);
                break;
            }
            check_storage_unavailable(&reply, &format!("POST /insert on node {name}"));
            self.rejected.push(planned.n);
            replies.push(reply.text);
            if Instant::now() > deadline {
                panic!(
                    "node {name} rejected every insert for {RECOVERY_TIMEOUT:?} after the \
                     database restarted: {replies:#?}\n{}",
                    self.report()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        println!(
            "node {name}: first insert accepted {:?} after the database restarted, \
             after {} rejected: {replies:?}",
            restarted.elapsed(),
            replies.len()
        );

        let mut last = None;
        while Instant::now() < deadline {
            let request = self.http.get(self.nodes[node].url("/health"));
            let reply = self.send(request, "GET /health").await;
            if reply.status == 200 {
                return;
            }
            last = Some(reply);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!(
            "GET /health on node {name} did not return 200 within {RECOVERY_TIMEOUT:?} of \
             the database restart; last reply: {last:?}\n{}",
            self.report()
        );
    }

    /// Waits until every live subscriber has seen one publication per
    /// accepted insert, allowing [`DELIVERY_TIMEOUT`] after the latest due
    /// time.
    async fn wait_for_all_published(&self, when: &str) {
        let expected = self.accepted.len();
        let latest_due = self
            .accepted
            .iter()
            .filter_map(|accepted| accepted.scheduled)
            .max()
            .map_or(0, |due| u128::from(due) * 1000);
        let until_due = Duration::from_millis(latest_due.saturating_sub(now_millis()) as u64);
        let deadline = Instant::now() + until_due + DELIVERY_TIMEOUT;
        while Instant::now() < deadline {
            if self.live_streams().all(|stream| stream.count() >= expected) {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
        panic!(
            "{when}: expected {expected} publications on every live subscriber within \
             {DELIVERY_TIMEOUT:?} of the latest due time\n{}",
            self.report()
        );
    }

    /// Waits until `stream` has at least `count` messages.
    async fn wait_for_count(&self, stream: &Stream, count: usize, description: &str) {
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        while Instant::now() < deadline {
            if stream.count() >= count {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
        panic!(
            "{description}: expected {count} messages within {DELIVERY_TIMEOUT:?}; {}\n{}",
            stream.summary(),
            self.report()
        );
    }

    /// Returns `GET /collection/{name}` on `node`, asserting `200`.
    async fn collection(&self, node: usize, name: &str) -> Vec<Value> {
        let request = self
            .http
            .get(self.nodes[node].url(&format!("/collection/{name}")));
        let description = format!("GET /collection/{name} on node {}", self.nodes[node].name);
        let reply = self.send(request, &description).await;
        if reply.status != 200 {
            panic!(
                "{description}: expected 200, got {} {}\n{}",
                reply.status,
                reply.text,
                self.report()
            );
        }
        serde_json::from_str(&reply.text).unwrap_or_else(|error| {
            panic!("{description}: not a JSON array ({error}): {}", reply.text)
        })
    }

    /// Sends `request` and reads the whole reply.
    async fn send(&self, request: reqwest::RequestBuilder, description: &str) -> Reply {
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => panic!("{description} failed: {error}\n{}", self.report()),
        };
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .unwrap_or_else(|error| panic!("{description}: failed to read the body: {error}"));
        Reply { status, text }
    }

    /// Returns the subscribers whose node still runs.
    fn live_streams(&self) -> impl Iterator<Item = &Stream> {
        self.streams.iter().filter(|stream| {
            let node = self.nodes.iter().find(|node| node.name == stream.node);
            node.is_some_and(|node| node.child.is_some())
        })
    }

    fn stream(&self, label: &str) -> &Stream {
        self.streams
            .iter()
            .find(|stream| stream.label == label)
            .unwrap_or_else(|| panic!("no stream labelled {label}"))
    }

    /// Describes the streams, the nodes' last log lines and the server
    /// log, for failure messages.
    fn report(&self) -> String {
        let mut report = format!("accepted inserts: {}\n", self.accepted.len());
        for stream in &self.streams {
            let _ = writeln!(report, "{}", stream.summary());
        }
        for node in &self.nodes {
            let _ = writeln!(
                report,
                "--- node {} ({}, {}) ---\n{}",
                node.name,
                node.runtime,
                node.addr,
                node.output_tail(40)
            );
        }
        let _ = writeln!(
            report,
            "--- PostgreSQL log ---\n{}",
            self.cluster.log_tail()
        );
        report
    }
}

/// An insert before it is sent.
#[derive(Debug)]
struct Planned {
    /// The `n` field of its data, unique in the test.
    n: u64,
    body: Value,
    /// Its `timestamp` field, for scheduled inserts.
    scheduled: Option<u64>,
}

/// An HTTP response read in full.
#[derive(Debug)]
struct Reply {
    status: u16,
    text: String,
}

/// Checks that `reply` is `503` with a JSON error body about storage.
fn check_storage_unavailable(reply: &Reply, description: &str) {
    assert_eq!(reply.status, 503, "{description}: {}", reply.text);
    let body: Value = serde_json::from_str(&reply.text).unwrap_or_else(|error| {
        panic!(
            "{description}: the 503 body is not JSON ({error}): {}",
            reply.text
        )
    });
    assert_eq!(
        body["error"], "storage_unavailable",
        "{description}: {body}"
    );
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("storage") || message.contains("database"),
        "{description}: the message does not name the storage: {body}"
    );
}

/// Returns the `n` field of a message's data.
fn data_n(data: &str) -> Option<u64> {
    serde_json::from_str::<Value>(data).ok()?["n"].as_u64()
}

fn now_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis()
}

/// Returns the first whole second at least `lead` from now, in epoch
/// seconds.
fn future_second(lead: Duration) -> u64 {
    (now_millis() + lead.as_millis()).div_ceil(1000) as u64
}
