//! The load scenarios. Each returns one JSON object of results.
//!
//! Every loop is bounded: publishing and inserting stop at their deadline,
//! waits for deliveries and connections have fixed timeouts, and any
//! connection error ends the run with a message.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::http::{EventStream, Publisher, Url};
use crate::probe::{self, ProcessTree, Processes};

/// Streams that may be connecting at once, below the listen backlog of
/// both servers (511 in nginx, 1024 in tokio).
const CONNECT_CONCURRENCY: usize = 200;

/// Time allowed for all subscribers to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Time allowed after the last publish for deliveries to arrive.
const DELIVERY_GRACE: Duration = Duration::from_secs(10);

/// Settings that every scenario shares.
#[derive(Debug)]
pub(crate) struct Target {
    /// The URLs that bodies are posted to, one per server, which publishing
    /// connections take in turn. Never empty.
    pub(crate) publish: Vec<Url>,
    /// The SSE stream on each server, which subscribers take in turn.
    /// Never empty.
    pub(crate) subscribe: Vec<Url>,
    /// Request body with `$T` standing for the send time in microseconds.
    pub(crate) body: String,
    pub(crate) servers: Processes,
    /// A database server that the servers share, whose CPU time is
    /// reported apart from theirs.
    pub(crate) database: Option<ProcessTree>,
}

impl Target {
    fn body_now(&self) -> String {
        self.body.replace("$T", &now_micros().to_string())
    }

    /// Returns the publish URL of connection `index`, round robin.
    fn publish_url(&self, index: usize) -> &Url {
        &self.publish[index % self.publish.len()]
    }

    /// Returns the subscribe URL of stream `index`, round robin.
    fn subscribe_url(&self, index: usize) -> &Url {
        &self.subscribe[index % self.subscribe.len()]
    }

    fn cpu(&self) -> Result<Cpu, String> {
        let servers = if self.servers.is_empty() {
            Vec::new()
        } else {
            self.servers.cpu_seconds_each()?
        };
        let database = match &self.database {
            Some(tree) => tree.cpu_seconds()?,
            None => f64::NAN,
        };
        Ok(Cpu {
            servers,
            database,
            client: probe::own_cpu_seconds(),
        })
    }
}

/// CPU seconds read at one moment, in user plus system time.
#[derive(Debug)]
struct Cpu {
    /// Each server process, in the order of `--pids`.
    servers: Vec<f64>,
    /// The database server and its children; NaN without `--database-pid`.
    database: f64,
    /// The load client itself.
    client: f64,
}

impl Cpu {
    /// Returns the CPU time used since `before`, as result fields:
    /// `server_cpu_seconds` sums the servers, NaN without `--pids`.
    fn since(&self, before: &Cpu) -> CpuUsed {
        let each: Vec<f64> = self
            .servers
            .iter()
            .zip(&before.servers)
            .map(|(after, before)| after - before)
            .collect();
        let servers = if each.is_empty() {
            f64::NAN
        } else {
            each.iter().sum()
        };
        CpuUsed {
            servers,
            each,
            database: self.database - before.database,
            client: self.client - before.client,
        }
    }
}

/// CPU seconds used during a run.
#[derive(Debug)]
struct CpuUsed {
    servers: f64,
    each: Vec<f64>,
    database: f64,
    client: f64,
}

impl CpuUsed {
    /// Adds the CPU fields to a result object.
    fn add_to(&self, result: &mut Value) {
        result["server_cpu_seconds"] = json!(round3(self.servers));
        result["server_cpu_seconds_each"] = json!(self
            .each
            .iter()
            .map(|&seconds| round3(seconds))
            .collect::<Vec<_>>());
        if self.database.is_finite() {
            result["database_cpu_seconds"] = json!(round3(self.database));
        }
        result["client_cpu_seconds"] = json!(round3(self.client));
    }
}

/// Microseconds since the Unix epoch, comparable across processes.
pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as u64)
        .unwrap_or(0)
}

/// Extracts the `t` number from a JSON data field such as `{"t":1733312000123456}`.
fn sent_micros(data: &str) -> Option<u64> {
    let start = data.find("\"t\":")? + 4;
    let digits = data[start..].trim_start();
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Latency percentiles in milliseconds from samples in microseconds.
pub(crate) fn percentiles(samples: &mut [i64]) -> Value {
    samples.sort_unstable();
    let pick = |q: f64| -> Value {
        if samples.is_empty() {
            return Value::Null;
        }
        let index = ((samples.len() - 1) as f64 * q).round() as usize;
        json!(round3(samples[index] as f64 / 1000.0))
    };
    json!({"p50": pick(0.5), "p99": pick(0.99), "max": pick(1.0), "min": pick(0.0), "samples": samples.len()})
}

pub(crate) fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

fn io_error(what: &str, error: std::io::Error) -> String {
    format!("{what} failed: {error}")
}

/// The messages one subscriber received during the run.
#[derive(Debug, Default)]
struct Received {
    count: u64,
    latencies: Vec<i64>,
}

/// Open streams whose tasks count messages sent since `since_micros`.
struct Subscribers {
    tasks: Vec<JoinHandle<Result<Received, String>>>,
    delivered: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    connect_seconds: f64,
}

impl Subscribers {
    /// Opens `count` streams, taking `urls` in turn, and returns once every
    /// response head is read.
    async fn open(urls: &[Url], count: usize, since_micros: u64) -> Result<Subscribers, String> {
        let started = Instant::now();
        let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
        let delivered = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = watch::channel(false);
        let (ready_sender, mut ready) = mpsc::channel(count.max(1));
        let mut tasks = Vec::with_capacity(count);
        for index in 0..count {
            let url = urls[index % urls.len()].clone();
            let gate = gate.clone();
            let ready = ready_sender.clone();
            let delivered = delivered.clone();
            let stopped = stopped.clone();
            tasks.push(tokio::spawn(async move {
                let permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
                let opened = EventStream::open(&url).await;
                drop(permit);
                let stream = match opened {
                    Ok(stream) => {
                        let _ = ready.send(Ok(())).await;
                        stream
                    }
                    Err(error) => {
                        let message = io_error(&format!("GET {}", url.target), error);
                        let _ = ready.send(Err(message.clone())).await;
                        return Err(message);
                    }
                };
                receive(stream, since_micros, delivered, stopped).await
            }));
        }
        drop(ready_sender);
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        for connected in 0..count {
            match tokio::time::timeout_at(deadline, ready.recv()).await {
                Ok(Some(Ok(()))) => {}
                Ok(Some(Err(message))) => return Err(message),
                Ok(None) => return Err("a subscriber task ended before connecting".into()),
                Err(_) => {
                    return Err(format!(
                    "only {connected} of {count} subscribers connected within {CONNECT_TIMEOUT:?}"
                ))
                }
            }
        }
        Ok(Subscribers {
            tasks,
            delivered,
            stop,
            connect_seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Stops every stream and returns what each received.
    async fn close(self) -> Result<Vec<Received>, String> {
        let _ = self.stop.send(true);
        let mut results = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            results.push(task.await.map_err(|error| error.to_string())??);
        }
        Ok(results)
    }
}

/// Counts messages whose `t` is at or after `since_micros`, with their
/// latency, until `stopped` changes.
async fn receive(
    mut stream: EventStream,
    since_micros: u64,
    delivered: Arc<AtomicU64>,
    mut stopped: watch::Receiver<bool>,
) -> Result<Received, String> {
    let mut received = Received::default();
    // One `changed` future for the whole loop, so that each message does
    // not register and drop a new waiter.
    let stop = stopped.changed();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message.map_err(|error| io_error("reading a stream", error))? else {
                    return Err("the server ended a stream during the run".into());
                };
                let now = now_micros();
                if let Some(sent) = sent_micros(&message.data).filter(|&sent| sent >= since_micros) {
                    received.count += 1;
                    received.latencies.push(now as i64 - sent as i64);
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ = &mut stop => return Ok(received),
        }
    }
}

/// Publishes at `rate` per second for `seconds` over `connections`
/// keep-alive connections that take turns, each to the publish URL of its
/// index, round robin; returns (2xx, other) counts.
async fn publish_at_rate(
    target: &Arc<Target>,
    rate: f64,
    seconds: f64,
    connections: usize,
) -> Result<(u64, u64), String> {
    let start = tokio::time::Instant::now();
    let total = (rate * seconds).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut tasks = Vec::new();
    for lane in 0..connections as u64 {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let url = target.publish_url(lane as usize).clone();
            let mut publisher = Publisher::new(url.clone());
            let (mut ok, mut failed) = (0, 0);
            let mut index = lane;
            while index < total {
                tokio::time::sleep_until(start + interval * index as u32).await;
                let status = publisher
                    .post(&target.body_now())
                    .await
                    .map_err(|error| io_error(&format!("POST {}", url.target), error))?;
                if (200..300).contains(&status) {
                    ok += 1;
                } else {
                    failed += 1;
                }
                index += connections as u64;
            }
            Ok::<_, String>((ok, failed))
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for task in tasks {
        let (lane_ok, lane_failed) = task.await.map_err(|error| error.to_string())??;
        ok += lane_ok;
        failed += lane_failed;
    }
    Ok((ok, failed))
}

/// N subscribers, one publisher at a fixed rate: delivery rate, latency,
/// server CPU per delivery and missing messages.
pub(crate) async fn fanout(
    target: Target,
    subscribers: usize,
    rate: f64,
    seconds: f64,
    connections: usize,
) -> Result<Value, String> {
    let target = Arc::new(target);
    let since = now_micros();
    let streams = Subscribers::open(&target.subscribe, subscribers, since).await?;

    let cpu_before = target.cpu()?;
    let started = Instant::now();
    let (published, failed) = publish_at_rate(&target, rate, seconds, connections).await?;
    let publish_seconds = started.elapsed().as_secs_f64();

    // Wait for the deliveries in flight, up to a fixed grace period.
    let expected = published * subscribers as u64;
    let grace_end = Instant::now() + DELIVERY_GRACE;
    while streams.delivered.load(Ordering::Relaxed) < expected && Instant::now() < grace_end {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let window = started.elapsed().as_secs_f64();
    let cpu = target.cpu()?.since(&cpu_before);
    let connect_seconds = streams.connect_seconds;

    let results = streams.close().await?;
    let delivered: u64 = results.iter().map(|r| r.count).sum();
    let missing: u64 = results
        .iter()
        .map(|r| published.saturating_sub(r.count))
        .sum();
    let extra: u64 = results
        .iter()
        .map(|r| r.count.saturating_sub(published))
        .sum();
    // Stream i used subscribe URL i % n, as `Subscribers::open` assigns them.
    let urls = target.subscribe.len();
    let mut latencies_each: Vec<Vec<i64>> = vec![Vec::new(); urls];
    for (index, received) in results.iter().enumerate() {
        latencies_each[index % urls].extend_from_slice(&received.latencies);
    }
    let latency_each: Vec<Value> = latencies_each
        .iter_mut()
        .map(|samples| percentiles(samples))
        .collect();
    let mut latencies: Vec<i64> = results.into_iter().flat_map(|r| r.latencies).collect();
    let mut result = json!({
        "subscribers": subscribers,
        "subscribe_urls": target.subscribe.len(),
        "rate": rate,
        "seconds": seconds,
        "publish_connections": connections,
        "published": published,
        "publish_failed": failed,
        "publish_rate": round3(published as f64 / publish_seconds),
        "delivered": delivered,
        "missing": missing,
        "extra": extra,
        "window_seconds": round3(window),
        "deliveries_per_second": round3(delivered as f64 / window),
        "deliveries_per_cpu_second": round3(delivered as f64 / cpu.servers),
        "connect_seconds": round3(connect_seconds),
        "latency_ms": percentiles(&mut latencies),
        "latency_ms_each": latency_each,
    });
    cpu.add_to(&mut result);
    if cpu.database.is_finite() {
        result["deliveries_per_cpu_second_with_database"] =
            json!(round3(delivered as f64 / (cpu.servers + cpu.database)));
    }
    Ok(result)
}

/// N open streams with no traffic: server memory per connection.
pub(crate) async fn idle(
    target: Target,
    connections: usize,
    settle: Duration,
) -> Result<Value, String> {
    if target.servers.is_empty() {
        return Err("idle needs --pids to read the server's memory".into());
    }
    let rss_before = target.servers.rss_kib()?;
    let pss_before = target.servers.pss_kib()?;
    let streams = Subscribers::open(&target.subscribe, connections, now_micros()).await?;
    tokio::time::sleep(settle).await;
    let rss_after = target.servers.rss_kib()?;
    let pss_after = target.servers.pss_kib()?;
    let connect_seconds = streams.connect_seconds;
    streams.close().await?;
    let per_connection =
        |before: u64, after: u64| round3((after as f64 - before as f64) / connections as f64);
    Ok(json!({
        "connections": connections,
        "connect_seconds": round3(connect_seconds),
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_per_connection_kib": per_connection(rss_before, rss_after),
        "pss_before_kib": pss_before,
        "pss_after_kib": pss_after,
        "pss_per_connection_kib": per_connection(pss_before, pss_after),
    }))
}

/// C publishers, each sending requests back to back on its own connection.
pub(crate) async fn inserts(target: Target, clients: usize, seconds: f64) -> Result<Value, String> {
    let target = Arc::new(target);
    let cpu_before = target.cpu()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);

    let mut tasks = Vec::new();
    for client in 0..clients {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let url = target.publish_url(client).clone();
            let mut publisher = Publisher::new(url.clone());
            let (mut latencies, mut failed) = (Vec::new(), 0u64);
            while Instant::now() < deadline {
                let sent = Instant::now();
                let status = publisher
                    .post(&target.body_now())
                    .await
                    .map_err(|error| io_error(&format!("POST {}", url.target), error))?;
                if (200..300).contains(&status) {
                    latencies.push(sent.elapsed().as_micros() as i64);
                } else {
                    failed += 1;
                }
            }
            Ok::<_, String>((latencies, failed))
        }));
    }

    let (mut latencies, mut failed) = (Vec::new(), 0);
    for task in tasks {
        let (lane, lane_failed) = task.await.map_err(|error| error.to_string())??;
        latencies.extend(lane);
        failed += lane_failed;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = target.cpu()?.since(&cpu_before);
    let mut result = json!({
        "clients": clients,
        "publish_urls": target.publish.len(),
        "seconds": seconds,
        "ok": latencies.len(),
        "non_2xx": failed,
        "inserts_per_second": round3(latencies.len() as f64 / elapsed),
        "latency_ms": percentiles(&mut latencies),
    });
    cpu.add_to(&mut result);
    Ok(result)
}

/// Inserts `bodies` over `clients` connections, which take `urls` in turn;
/// fails on any non-2xx.
async fn insert_all(urls: &[Url], bodies: Vec<String>, clients: usize) -> Result<(), String> {
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for client in 0..clients {
        let url = urls[client % urls.len()].clone();
        let (bodies, next) = (bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut publisher = Publisher::new(url.clone());
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(index) else {
                    return Ok::<_, String>(());
                };
                let status = publisher
                    .post(body)
                    .await
                    .map_err(|error| io_error(&format!("POST {}", url.target), error))?;
                if !(200..300).contains(&status) {
                    return Err(format!("POST {} returned {status} for {body}", url.target));
                }
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|error| error.to_string())??;
    }
    Ok(())
}

/// Returns a name prefix unique to this run, which keeps the records of
/// earlier runs on the same server apart.
fn run_prefix(kind: &str) -> String {
    format!("{kind}-{}", now_micros())
}

/// Inserts N distinct names, then times how long new subscribers take to
/// receive the current version of all of them (Broker only). The
/// subscribers connect one after another and take the subscribe URLs in
/// turn.
pub(crate) async fn sync(
    target: Target,
    names: usize,
    clients: usize,
    repeat: usize,
) -> Result<Value, String> {
    let prefix = run_prefix("sync");
    let bodies = (0..names)
        .map(|i| format!(r#"{{"event":"{prefix}-{i}","data":{{"i":{i}}}}}"#))
        .collect();
    let loading = Instant::now();
    insert_all(&target.publish, bodies, clients).await?;
    let load_seconds = loading.elapsed().as_secs_f64();

    let mut head_ms = Vec::new();
    let mut sync_ms = Vec::new();
    for run in 0..repeat {
        let url = target.subscribe_url(run);
        let started = Instant::now();
        let mut stream = EventStream::open(url)
            .await
            .map_err(|error| io_error(&format!("GET {}", url.target), error))?;
        head_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let mut seen = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while seen < names {
            let message = tokio::time::timeout_at(deadline, stream.next())
                .await
                .map_err(|_| format!("received {seen} of {names} snapshot messages in 30 s"))?
                .map_err(|error| io_error("reading the snapshot", error))?
                .ok_or_else(|| format!("stream ended after {seen} of {names} snapshot messages"))?;
            if message.event.starts_with(&prefix) {
                seen += 1;
            }
        }
        sync_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let mut sorted = sync_ms.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(json!({
        "names": names,
        "publish_urls": target.publish.len(),
        "subscribe_urls": target.subscribe.len(),
        "load_seconds": round3(load_seconds),
        "repeat": repeat,
        "headers_ms": head_ms.iter().map(|&ms| round3(ms)).collect::<Vec<_>>(),
        "sync_ms": sync_ms.iter().map(|&ms| round3(ms)).collect::<Vec<_>>(),
        "sync_median_ms": sorted.get(sorted.len() / 2).map(|&ms| round3(ms)),
        "sync_max_ms": sorted.last().map(|&ms| round3(ms)),
    }))
}

/// Inserts N events due at the same future second and measures how late
/// each arrives after the start of that second (Broker only). One stream
/// per subscribe URL receives them, and the inserts take the publish URLs
/// in turn.
pub(crate) async fn schedule(
    target: Target,
    events: usize,
    clients: usize,
) -> Result<Value, String> {
    let name = run_prefix("schedule");
    let mut streams = Vec::with_capacity(target.subscribe.len());
    for url in &target.subscribe {
        let url = url.with_query("event", &name);
        let stream = EventStream::open(&url)
            .await
            .map_err(|error| io_error(&format!("GET {}", url.target), error))?;
        streams.push(stream);
    }

    // Due at the start of the second after next, so inserts have at least
    // two seconds to finish before it.
    let due = now_micros() / 1_000_000 + 3;
    let due_micros = (due * 1_000_000) as i64;
    // Events may arrive up to 15 s after their second.
    let until_due = Duration::from_micros((due_micros - now_micros() as i64).max(0) as u64);
    let deadline = tokio::time::Instant::now() + until_due + Duration::from_secs(15);
    let readers: Vec<_> = streams
        .into_iter()
        .map(|stream| {
            let name = name.clone();
            tokio::spawn(lateness_of(stream, name, events, due_micros, deadline))
        })
        .collect();
    let bodies = (0..events)
        .map(|i| format!(r#"{{"event":"{name}","timestamp":{due},"data":{{"i":{i}}}}}"#))
        .collect();
    insert_all(&target.publish, bodies, clients).await?;
    let inserted_before_due_ms = (due_micros - now_micros() as i64) as f64 / 1000.0;

    let mut lateness = Vec::with_capacity(events * readers.len());
    let mut each = Vec::with_capacity(readers.len());
    for reader in readers {
        let mut stream_lateness = reader.await.map_err(|error| error.to_string())??;
        lateness.extend_from_slice(&stream_lateness);
        each.push(percentiles(&mut stream_lateness));
    }
    let expected = events * target.subscribe.len();
    Ok(json!({
        "events": events,
        "streams": target.subscribe.len(),
        "publish_urls": target.publish.len(),
        "received": lateness.len(),
        "missing": expected - lateness.len(),
        "inserted_before_due_ms": round3(inserted_before_due_ms),
        "lateness_ms": percentiles(&mut lateness),
        "lateness_ms_each": each,
    }))
}

/// Reads `stream` until `events` messages named `name` have arrived or
/// `deadline` passes, and returns how late each arrived after
/// `due_micros`, in microseconds.
async fn lateness_of(
    mut stream: EventStream,
    name: String,
    events: usize,
    due_micros: i64,
    deadline: tokio::time::Instant,
) -> Result<Vec<i64>, String> {
    let mut lateness = Vec::with_capacity(events);
    while lateness.len() < events {
        let message = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => break,
            Ok(message) => message
                .map_err(|error| io_error("reading the stream", error))?
                .ok_or("the server ended the stream before every event arrived")?,
        };
        if message.event == name {
            lateness.push(now_micros() as i64 - due_micros);
        }
    }
    Ok(lateness)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_time_parses_from_data() {
        assert_eq!(
            sent_micros(r#"{"t":1733312000123456}"#),
            Some(1733312000123456)
        );
        assert_eq!(sent_micros(r#"{"x":1,"t": 42}"#), Some(42));
        assert_eq!(sent_micros(r#"{"i":1}"#), None);
    }
}
