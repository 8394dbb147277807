//! A load client that measures Broker and nchan with identical client work.
//!
//! It speaks raw HTTP/1.1 over loopback TCP with keep-alive, runs on a
//! tokio current-thread runtime so that it uses at most about one core, and
//! prints one JSON result line and one human-readable line per run.
//! `benches/run.sh` runs every scenario against every server and writes
//! `docs/benchmarks.md` with the `report` sub-command. Two probes measure
//! the machine itself, with no server: the disk's sync latency and the CPU
//! cost of one small loopback write.
//!
//! `USAGE` below lists the sub-commands and their options, and `load --help`
//! prints it.

mod args;
mod http;
mod machine;
mod probe;
mod report;
mod scenario;
mod two_node;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

use args::Args;
use http::Url;
use probe::{ProcessTree, Processes};
use scenario::Target;

/// The usage text that `--help` prints and a usage error ends with.
const USAGE: &str = r#"usage: load SUB-COMMAND [--option value]...

load fanout      --subscribers N --rate R --seconds S [--publish-connections K]
load idle        --connections N [--settle S]
load inserts     --clients C --seconds S
load sync        --names N [--clients C] [--repeat R]      (Broker only)
load schedule    --events N [--clients C]                  (Broker only)
load fsync       --dir PATH [--count N] [--size BYTES] [--seconds S]
load write-floor --connections N [--messages M] [--rate R] [--size BYTES]
load report      --results FILE --page FILE [--machine FILE] [--command TEXT]
                 [--section nchan|two-node]                (the page's section to write)
load free-port                                             (prints a free loopback TCP port)
load --help                                                (prints this text)

Options of the load scenarios (fanout, idle, inserts, sync, schedule):
  --publish-url URL[,URL]    where bodies are POSTed, e.g. http://127.0.0.1:8080/insert;
                             with several, publishing connections take them in turn
  --subscribe-url URL[,URL]  the SSE stream, e.g. http://127.0.0.1:8080/events?event=bench;
                             with several, streams take them in turn (schedule
                             opens one stream per URL)
  --body TEMPLATE            request body; $T becomes the send time in microseconds
                             since the Unix epoch (default {"event":"bench","data":{"t":$T}})
  --pids PID,PID             server processes whose CPU time and memory are summed
  --database-pid PID         a database server's main process: the CPU time of it and
                             of all its children, ended ones included, is reported
                             apart as database_cpu_seconds (fanout and inserts)
  --label TEXT               system name written into the result line

Machine probes, which need no server (--label defaults to "machine"):
  fsync        appends BYTES (default 4096) to a new file in PATH, then calls
               fdatasync, N times (default 1000) or for S seconds (default 10),
               whichever ends first; reports sync latency and the inserts per
               second it allows 1 and 16 one-request clients; deletes the file
  write-floor  writes one BYTES-byte frame (default 60, the chunk that Broker
               sends per delivery in the fan-out scenarios) to each of N
               loopback TCP connections in turn, M rounds (default: 200,000
               writes in all) at R rounds per second (default: 100,000 writes
               per second in all); reports the writing thread's CPU time per
               write
"#;

fn main() -> ExitCode {
    let mut args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("error: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.help {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match args.scenario.as_str() {
        "report" => return finish(report::run(&mut args).map(|()| None)),
        "free-port" => return finish(free_port().map(|()| None)),
        "fsync" | "write-floor" => {
            raise_open_file_limit();
            return finish(run_machine_probe(args).map(Some));
        }
        _ => {}
    }
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("failed to build the tokio runtime");
    finish(runtime.block_on(run(args)).map(Some))
}

fn finish(result: Result<Option<Value>, String>) -> ExitCode {
    match result {
        Ok(Some(line)) => {
            println!("{line}");
            println!("# {}", report::human_line(&line));
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a TCP port that is free on 127.0.0.1 now, for a server that
/// cannot pick its own. Another process may take it before the server binds.
fn free_port() -> Result<(), String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|error| format!("failed to bind 127.0.0.1:0: {error}"))?;
    let port = listener
        .local_addr()
        .map_err(|error| error.to_string())?
        .port();
    println!("{port}");
    Ok(())
}

/// Raises the soft open-file limit to the hard limit, because each stream
/// is one file and 10,000 streams exceed the common soft limit of 1024.
fn raise_open_file_limit() {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((_, hard)) => {
            if let Err(error) = rlimit::increase_nofile_limit(hard) {
                eprintln!("warning: failed to raise the open-file limit to {hard}: {error}");
            }
        }
        Err(error) => eprintln!("warning: failed to read the open-file limit: {error}"),
    }
}

async fn run(mut args: Args) -> Result<Value, String> {
    let label = args
        .optional::<String>("label")?
        .unwrap_or_else(|| "unnamed".into());
    let target = Target {
        publish: urls(&mut args, "publish-url")?,
        subscribe: urls(&mut args, "subscribe-url")?,
        body: args
            .optional("body")?
            .unwrap_or_else(|| r#"{"event":"bench","data":{"t":$T}}"#.into()),
        servers: Processes::new(args.list("pids")?),
        database: args.optional("database-pid")?.map(ProcessTree::new),
    };
    let scenario = args.scenario.clone();
    let result = match scenario.as_str() {
        "fanout" => {
            let subscribers = args.required("subscribers")?;
            let rate: f64 = args.required("rate")?;
            let seconds: f64 = args.required("seconds")?;
            let connections = args.optional("publish-connections")?.unwrap_or(1);
            args.finish()?;
            if rate <= 0.0 || seconds <= 0.0 || connections == 0 {
                return Err("--rate, --seconds and --publish-connections must be above 0".into());
            }
            scenario::fanout(target, subscribers, rate, seconds, connections).await?
        }
        "idle" => {
            let connections = args.required("connections")?;
            let settle = args.optional("settle")?.unwrap_or(2.0);
            args.finish()?;
            scenario::idle(target, connections, Duration::from_secs_f64(settle)).await?
        }
        "inserts" => {
            let clients = args.required("clients")?;
            let seconds = args.required("seconds")?;
            args.finish()?;
            scenario::inserts(target, clients, seconds).await?
        }
        "sync" => {
            let names = args.required("names")?;
            let clients = args.optional("clients")?.unwrap_or(32);
            let repeat = args.optional("repeat")?.unwrap_or(5);
            args.finish()?;
            scenario::sync(target, names, clients, repeat.max(1)).await?
        }
        "schedule" => {
            let events = args.required("events")?;
            let clients = args.optional("clients")?.unwrap_or(16);
            args.finish()?;
            scenario::schedule(target, events, clients).await?
        }
        other => return Err(format!("unknown sub-command {other:?}; run load --help")),
    };
    Ok(result_line(label, &scenario, result))
}

/// Parses the comma-separated URLs of option `name`, of which there must
/// be at least one.
fn urls(args: &mut Args, name: &str) -> Result<Vec<Url>, String> {
    let texts: Vec<String> = args.list(name)?;
    if texts.is_empty() {
        return Err(format!("missing option --{name} for {}", args.scenario));
    }
    texts.iter().map(|text| Url::parse(text)).collect()
}

/// Runs the `fsync` or `write-floor` probe, which needs no server.
fn run_machine_probe(mut args: Args) -> Result<Value, String> {
    let label = args
        .optional::<String>("label")?
        .unwrap_or_else(|| "machine".into());
    let scenario = args.scenario.clone();
    let result = if scenario == "fsync" {
        let dir: PathBuf = args.required("dir")?;
        let count = args.optional("count")?.unwrap_or(1000);
        let size = args.optional("size")?.unwrap_or(4096);
        let seconds: f64 = args.optional("seconds")?.unwrap_or(10.0);
        args.finish()?;
        let time_limit = Duration::try_from_secs_f64(seconds)
            .ok()
            .filter(|limit| !limit.is_zero())
            .ok_or_else(|| format!("invalid value {seconds} for --seconds: it must be above 0"))?;
        machine::fsync(&dir, count, size, time_limit)?
    } else {
        let connections: usize = args.required("connections")?;
        let writes_per_round = connections.max(1);
        let messages = args
            .optional("messages")?
            .unwrap_or((machine::DEFAULT_WRITES / writes_per_round).max(1));
        let rate = args
            .optional("rate")?
            .unwrap_or(machine::DEFAULT_WRITES_PER_SECOND / writes_per_round as f64);
        let size = args
            .optional("size")?
            .unwrap_or(machine::FANOUT_FRAME_BYTES);
        args.finish()?;
        machine::write_floor(machine::WriteFloor {
            connections,
            messages,
            rate,
            size,
        })?
    };
    Ok(result_line(label, &scenario, result))
}

/// Adds the label and the scenario name to a scenario's result fields.
fn result_line(label: String, scenario: &str, result: Value) -> Value {
    let mut line = json!({"label": label, "scenario": scenario});
    if let (Value::Object(line), Value::Object(result)) = (&mut line, result) {
        line.extend(result);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_take_a_comma_separated_list() {
        let words = [
            "inserts",
            "--publish-url",
            "http://127.0.0.1:1/a,http://127.0.0.1:2/b",
        ];
        let mut args = Args::parse(words.iter().map(|word| word.to_string())).unwrap();
        let urls = urls(&mut args, "publish-url").unwrap();
        assert_eq!(urls.len(), 2);
        assert_eq!(urls[1].addr.port(), 2);
        assert_eq!(urls[1].target, "/b");
    }

    #[test]
    fn urls_are_required() {
        let mut args = Args::parse(["inserts".to_string()].into_iter()).unwrap();
        let error = urls(&mut args, "publish-url").unwrap_err();
        assert_eq!(error, "missing option --publish-url for inserts");
    }
}
