//! Probes of the machine itself, with no server: the disk's sync latency,
//! and the CPU cost of one small write to a loopback TCP socket. They bound
//! the insert rate of a server that syncs before each reply and the fan-out
//! efficiency of a server that writes once per delivery, so the report shows
//! them next to those targets.

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::probe;
use crate::scenario::{percentiles, round3};

/// Concurrent one-request clients for which the sync probe reports the
/// insert rate that its median sync allows: one client, and the 16 of the
/// insert scenario.
const BOUND_CLIENTS: [u32; 2] = [1, 16];

/// Bytes of one chunk that Broker writes per delivery in the fan-out
/// scenarios: the 54-byte SSE message `id: 123456\nevent: bench\ndata:
/// {"t":1733312000123456}\n\n` in HTTP/1.1 chunked framing (`36\r\n` before
/// it, `\r\n` after it). A 5-digit publication id makes it 59 bytes.
pub(crate) const FANOUT_FRAME_BYTES: usize = 60;

/// Total writes per second across all connections that `write-floor`
/// paces at by default: the delivery rate of the fan-out scenarios.
pub(crate) const DEFAULT_WRITES_PER_SECOND: f64 = 100_000.0;

/// Total writes that `write-floor` makes by default: 2 s at the default
/// pace.
pub(crate) const DEFAULT_WRITES: usize = 200_000;

/// Time allowed for each loopback connect and for the reader to drain the
/// connections after the last write.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Sleep before retrying a write to a socket whose send buffer is full.
const FULL_BUFFER_RETRY: Duration = Duration::from_millis(1);

/// Appends `size` bytes to a new file in `dir` and syncs it with
/// `fdatasync`, `count` times or until `time_limit` passes, and reports the
/// latency of each sync. The file is deleted afterwards.
pub(crate) fn fsync(
    dir: &Path,
    count: usize,
    size: usize,
    time_limit: Duration,
) -> Result<Value, String> {
    if count == 0 || size == 0 {
        return Err("--count and --size must be above 0".into());
    }
    let file = tempfile::Builder::new()
        .prefix("load-fsync.")
        .tempfile_in(dir)
        .map_err(|error| format!("failed to create a file in {}: {error}", dir.display()))?;
    let block = vec![b'x'; size];
    let mut samples = Vec::with_capacity(count);
    let started = Instant::now();
    while samples.len() < count && started.elapsed() < time_limit {
        file.as_file()
            .write_all(&block)
            .map_err(|error| format!("failed to append to {}: {error}", file.path().display()))?;
        let syncing = Instant::now();
        file.as_file()
            .sync_data()
            .map_err(|error| format!("fdatasync of {} failed: {error}", file.path().display()))?;
        samples.push(syncing.elapsed().as_micros() as i64);
    }
    let seconds = started.elapsed().as_secs_f64();
    let path = file.path().display().to_string();
    file.close()
        .map_err(|error| format!("failed to delete {path}: {error}"))?;

    let sync_ms = percentiles(&mut samples);
    let median_seconds = sync_ms["p50"]
        .as_f64()
        .ok_or("the sync probe made no sync within the --seconds limit, so raise it")?
        / 1000.0;
    let mut bounds = serde_json::Map::new();
    for clients in BOUND_CLIENTS {
        let bound = round3(insert_bound(clients, median_seconds));
        bounds.insert(clients.to_string(), json!(bound));
    }
    Ok(json!({
        "dir": dir.display().to_string(),
        "size_bytes": size,
        "count": count,
        "syncs": samples.len(),
        "seconds": round3(seconds),
        "sync_ms": sync_ms,
        "insert_bound_per_second": bounds,
    }))
}

/// Inserts per second that `clients` connections with one request in
/// flight each can make when every reply waits for a sync of `sync_seconds`
/// and all of them share each sync.
fn insert_bound(clients: u32, sync_seconds: f64) -> f64 {
    f64::from(clients) / sync_seconds
}

/// Settings of the loopback write probe.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteFloor {
    /// Loopback TCP connections, each written to once per round.
    pub(crate) connections: usize,
    /// Rounds, so the probe makes `connections * messages` writes.
    pub(crate) messages: usize,
    /// Rounds per second.
    pub(crate) rate: f64,
    /// Bytes per write.
    pub(crate) size: usize,
}

/// Writes one `size`-byte frame to each of `connections` loopback TCP
/// connections in turn, `messages` rounds at `rate` rounds per second, and
/// reports the CPU time of the writing thread per write.
///
/// The writing thread is the caller's. It sets `TCP_NODELAY` like Broker,
/// and it sleeps between rounds to keep the pace, so its CPU time includes
/// about one sleep per round. Another thread reads every connection with
/// tokio, so that no socket buffer fills. On loopback the kernel usually
/// runs the receiving socket's TCP processing in the writer's context, so
/// the writer's CPU time includes it, as a server's CPU time does in the
/// fan-out scenarios.
pub(crate) fn write_floor(settings: WriteFloor) -> Result<Value, String> {
    let WriteFloor {
        connections,
        messages,
        rate,
        size,
    } = settings;
    if connections == 0 || messages == 0 || size == 0 || rate.is_nan() || rate <= 0.0 {
        return Err("--connections, --messages, --rate and --size must be above 0".into());
    }
    let planned = Duration::try_from_secs_f64(messages as f64 / rate).map_err(|_| {
        format!("invalid value {rate} for --rate: {messages} rounds would take too long")
    })?;
    // Twice the planned time plus a margin, for a busy shared machine.
    let deadline_after = planned * 2 + IO_TIMEOUT;

    let (writers, readers) = connect_pairs(connections)?;
    let expected_bytes = (connections * messages * size) as u64;
    let (reader_result, reader_done) = mpsc::channel();
    thread::Builder::new()
        .name("write-floor-reader".into())
        .spawn(move || {
            let _ = reader_result.send(read_all(readers));
        })
        .map_err(|error| format!("failed to start the reader thread: {error}"))?;

    let frame = vec![b'x'; size];
    let (cpu_before, cpu_source) = probe::thread_cpu_seconds()?;
    let started = Instant::now();
    let mut calls = 0u64;
    let mut full_buffer_retries = 0u64;
    for round in 0..messages {
        let due = started + Duration::from_secs_f64(round as f64 / rate);
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        if started.elapsed() > deadline_after {
            return Err(format!(
                "timed out after {deadline_after:?} with {round} of {messages} rounds written. Lower --rate or run on a less busy machine"
            ));
        }
        for (index, mut writer) in writers.iter().enumerate() {
            let mut written = 0;
            while written < size {
                calls += 1;
                match writer.write(&frame[written..]) {
                    Ok(0) => return Err(format!("connection {index} accepted no bytes")),
                    Ok(count) => written += count,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        full_buffer_retries += 1;
                        if started.elapsed() > deadline_after {
                            return Err(format!(
                                "timed out after {deadline_after:?} because the send buffer of connection {index} stayed full. Lower --rate so that the reader keeps up"
                            ));
                        }
                        thread::sleep(FULL_BUFFER_RETRY);
                    }
                    Err(error) => {
                        return Err(format!("write to connection {index} failed: {error}"))
                    }
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = probe::thread_cpu_seconds()?.0 - cpu_before;

    // Closing the writing sockets ends every read with end of file.
    drop(writers);
    let received = reader_done
        .recv_timeout(IO_TIMEOUT)
        .map_err(|_| format!("the reader did not finish within {IO_TIMEOUT:?}"))??;
    if received != expected_bytes {
        return Err(format!(
            "the reader received {received} bytes, expected {expected_bytes}"
        ));
    }
    let writes = (connections * messages) as f64;
    Ok(json!({
        "connections": connections,
        "messages": messages,
        "rate": rate,
        "size_bytes": size,
        "writes": connections * messages,
        "write_calls": calls,
        "full_buffer_retries": full_buffer_retries,
        "seconds": round3(seconds),
        "writer_cpu_seconds": round3(cpu),
        "cpu_source": cpu_source,
        "cpu_microseconds_per_write": round3(cpu * 1e6 / writes),
        "writes_per_cpu_second": round3(writes / cpu),
    }))
}

/// Opens `count` loopback TCP connections and returns the accepted ends,
/// set up for writing, and the connecting ends, both nonblocking.
fn connect_pairs(count: usize) -> Result<(Vec<TcpStream>, Vec<TcpStream>), String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|error| format!("failed to bind 127.0.0.1:0: {error}"))?;
    let address: SocketAddr = listener
        .local_addr()
        .map_err(|error| format!("failed to read the listener's address: {error}"))?;
    let mut writers = Vec::with_capacity(count);
    let mut readers = Vec::with_capacity(count);
    for index in 0..count {
        let failed = |what: &str, error: io::Error| {
            format!("{what} for connection {index} of {count} failed: {error}")
        };
        let reader = TcpStream::connect_timeout(&address, IO_TIMEOUT)
            .map_err(|error| failed("connect", error))?;
        // The connect has completed, so the accept does not wait.
        let (writer, _) = listener.accept().map_err(|error| failed("accept", error))?;
        writer
            .set_nodelay(true)
            .map_err(|error| failed("setting TCP_NODELAY", error))?;
        writer
            .set_nonblocking(true)
            .map_err(|error| failed("setting O_NONBLOCK", error))?;
        reader
            .set_nonblocking(true)
            .map_err(|error| failed("setting O_NONBLOCK", error))?;
        writers.push(writer);
        readers.push(reader);
    }
    Ok((writers, readers))
}

/// Reads every connection until end of file on a tokio current-thread
/// runtime and returns the bytes received in all.
fn read_all(readers: Vec<TcpStream>) -> Result<u64, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|error| format!("failed to build the reader's tokio runtime: {error}"))?;
    runtime.block_on(async move {
        let mut tasks = Vec::with_capacity(readers.len());
        for reader in readers {
            let mut reader = tokio::net::TcpStream::from_std(reader)
                .map_err(|error| format!("failed to register a reading socket: {error}"))?;
            tasks.push(tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buffer = [0u8; 4096];
                let mut total = 0u64;
                loop {
                    match reader.read(&mut buffer).await {
                        Ok(0) => return Ok(total),
                        Ok(count) => total += count as u64,
                        Err(error) => return Err(format!("read failed: {error}")),
                    }
                }
            }));
        }
        let mut total = 0;
        for task in tasks {
            total += task.await.map_err(|error| error.to_string())??;
        }
        Ok(total)
    })
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Read;

    use super::*;

    #[test]
    fn insert_bound_scales_with_clients() {
        assert_eq!(insert_bound(1, 0.002), 500.0);
        assert_eq!(insert_bound(16, 0.002), 8000.0);
    }

    #[test]
    fn fsync_reports_and_deletes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let line = fsync(dir.path(), 5, 100, Duration::from_secs(10)).unwrap();
        assert_eq!(line["syncs"], 5);
        assert_eq!(line["sync_ms"]["samples"], 5);
        assert!(line["insert_bound_per_second"]["16"].as_f64().unwrap() > 0.0);
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "files left behind: {left:?}");
    }

    #[test]
    fn fsync_stops_at_time_limit() {
        let dir = tempfile::tempdir().unwrap();
        let line = fsync(dir.path(), 1_000_000, 10, Duration::from_millis(50)).unwrap();
        assert!(line["syncs"].as_u64().unwrap() < 1_000_000);
    }

    #[test]
    fn write_floor_delivers_every_byte() {
        let settings = WriteFloor {
            connections: 4,
            messages: 20,
            rate: 1000.0,
            size: FANOUT_FRAME_BYTES,
        };
        let line = write_floor(settings).unwrap();
        assert_eq!(line["writes"], 80);
        assert!(line["write_calls"].as_u64().unwrap() >= 80);
        assert!(line["cpu_microseconds_per_write"].as_f64().unwrap() >= 0.0);
    }

    #[test]
    fn write_floor_rejects_zero_sizes() {
        let settings = WriteFloor {
            connections: 0,
            messages: 1,
            rate: 1.0,
            size: 1,
        };
        assert!(write_floor(settings).is_err());
    }

    #[test]
    fn pairs_are_connected() {
        let (writers, readers) = connect_pairs(2).unwrap();
        (&writers[1]).write_all(b"ab").unwrap();
        let mut reader = &readers[1];
        reader.set_nonblocking(false).unwrap();
        let mut buffer = [0u8; 2];
        reader.read_exact(&mut buffer).unwrap();
        assert_eq!(&buffer, b"ab");
    }
}
