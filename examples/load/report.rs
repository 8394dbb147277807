//! Turns result lines into the human line of a run and into the results
//! section of `docs/benchmarks.md`.

use std::fmt::Write as _;
use std::fs;

use serde_json::Value;

use crate::args::Args;

/// Label of the comparison system in result lines.
const NCHAN: &str = "nchan";

/// A generated section of the page, between two marker lines; the text
/// outside the markers is kept as written.
pub(crate) struct Section {
    pub(crate) begin: &'static str,
    pub(crate) end: &'static str,
    /// Number of `#` of the section's top headings.
    pub(crate) level: usize,
    /// The label of the system that ratio columns divide by.
    pub(crate) baseline: &'static str,
    /// The sentence that states what a ratio divides by.
    pub(crate) ratio_note: &'static str,
    pub(crate) tables: &'static [Table],
    /// Whether the section opens with the targets table, which compares
    /// every system with nchan.
    pub(crate) targets: bool,
}

/// The section that compares every Broker pair with nchan.
const NCHAN_SECTION: Section = Section {
    begin: "<!-- results:begin (written by benches/run.sh) -->",
    end: "<!-- results:end -->",
    level: 2,
    baseline: NCHAN,
    ratio_note: "A ratio divides a system's row by nchan's row.",
    tables: TABLES,
    targets: true,
};

pub(crate) fn number(value: &Value, path: &str) -> Option<f64> {
    path.split('.')
        .try_fold(value, |value, key| value.get(key))
        .and_then(Value::as_f64)
}

pub(crate) fn show(value: Option<f64>) -> String {
    match value {
        Some(value) if value.is_finite() => {
            if value.fract() == 0.0 || value.abs() >= 100.0 {
                format!("{value:.0}")
            } else if value.abs() >= 10.0 {
                format!("{value:.1}")
            } else {
                format!("{value:.2}")
            }
        }
        _ => "n/a".into(),
    }
}

/// Formats a result line as one line for people to read.
pub(crate) fn human_line(line: &Value) -> String {
    let mut text = scenario_line(line);
    if let Some(database) = number(line, "database_cpu_seconds") {
        let _ = write!(text, ", database CPU {} s", show(Some(database)));
    }
    text
}

fn scenario_line(line: &Value) -> String {
    let get = |path: &str| show(number(line, path));
    let label = line["label"].as_str().unwrap_or_default();
    match line["scenario"].as_str().unwrap_or_default() {
        "fanout" => format!(
            "{label} fanout {} subs x {}/s: {} deliveries/s, {} per server CPU-s, p50 {} ms, p99 {} ms, max {} ms, missing {}, server CPU {} s, client CPU {} s",
            get("subscribers"), get("rate"), get("deliveries_per_second"),
            get("deliveries_per_cpu_second"), get("latency_ms.p50"), get("latency_ms.p99"),
            get("latency_ms.max"), get("missing"), get("server_cpu_seconds"), get("client_cpu_seconds")
        ),
        "idle" => format!(
            "{label} idle {} streams: RSS {} -> {} KiB, {} KiB RSS and {} KiB PSS per stream",
            get("connections"), get("rss_before_kib"), get("rss_after_kib"),
            get("rss_per_connection_kib"), get("pss_per_connection_kib")
        ),
        "inserts" => format!(
            "{label} inserts {} clients: {} per s, p50 {} ms, p99 {} ms, non-2xx {}, server CPU {} s, client CPU {} s",
            get("clients"), get("inserts_per_second"), get("latency_ms.p50"),
            get("latency_ms.p99"), get("non_2xx"), get("server_cpu_seconds"), get("client_cpu_seconds")
        ),
        "sync" => format!(
            "{label} sync {} names: median {} ms, max {} ms to the last snapshot message",
            get("names"), get("sync_median_ms"), get("sync_max_ms")
        ),
        "schedule" => format!(
            "{label} schedule {} events: lateness p50 {} ms, p99 {} ms, max {} ms, missing {}",
            get("events"), get("lateness_ms.p50"), get("lateness_ms.p99"),
            get("lateness_ms.max"), get("missing")
        ),
        "fsync" => format!(
            "{label} fsync {} x {} B appends: sync p50 {} ms, p99 {} ms, max {} ms; at most {} inserts/s for 1 one-request client, {} for 16",
            get("syncs"), get("size_bytes"), get("sync_ms.p50"), get("sync_ms.p99"),
            get("sync_ms.max"), get("insert_bound_per_second.1"), get("insert_bound_per_second.16")
        ),
        "write-floor" => format!(
            "{label} write-floor {} connections x {} rounds of {} B: {} µs CPU per write, {} writes per CPU-s, writer CPU {} s, {} full-buffer retries",
            get("connections"), get("messages"), get("size_bytes"),
            get("cpu_microseconds_per_write"), get("writes_per_cpu_second"),
            get("writer_cpu_seconds"), get("full_buffer_retries")
        ),
        other => format!("{label} {other}"),
    }
}

/// Runs the `report` sub-command: reads result lines and replaces the
/// generated section of the page.
pub(crate) fn run(args: &mut Args) -> Result<(), String> {
    let results: String = args.required("results")?;
    let page: String = args.required("page")?;
    let machine: Option<String> = args.optional("machine")?;
    let command: Option<String> = args.optional("command")?;
    let section = match args.optional::<String>("section")?.as_deref() {
        None | Some("nchan") => &NCHAN_SECTION,
        Some("two-node") => &crate::two_node::SECTION,
        Some(other) => {
            return Err(format!(
                "invalid value {other:?} for --section: use nchan or two-node"
            ))
        }
    };
    args.finish()?;

    let text =
        fs::read_to_string(&results).map_err(|error| format!("cannot read {results}: {error}"))?;
    let lines: Vec<Value> = text
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| {
            serde_json::from_str(line).map_err(|e| format!("invalid line in {results}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let machine = match machine {
        Some(path) => {
            fs::read_to_string(&path).map_err(|error| format!("cannot read {path}: {error}"))?
        }
        None => String::new(),
    };
    let text = render(section, &lines, &machine, command.as_deref());

    let old = fs::read_to_string(&page).unwrap_or_default();
    let new = match (old.find(section.begin), old.find(section.end)) {
        (Some(begin), Some(end)) if begin < end => {
            format!("{}{text}{}", &old[..begin], &old[end + section.end.len()..])
        }
        _ => format!("{old}{text}\n"),
    };
    fs::write(&page, new).map_err(|error| format!("cannot write {page}: {error}"))
}

/// The display of a result line's field in a table cell.
#[derive(Clone, Copy)]
pub(crate) enum Cell {
    /// The number at this path.
    Number(&'static str),
    /// A KiB figure at this path, shown in MiB.
    Mib(&'static str),
    /// This system's figure at the path divided by the baseline system's
    /// (nchan's in the main section).
    VsBaseline(&'static str),
    /// This system's figure at the first path divided by the baseline
    /// system's figure at the second.
    VsBaselineAt(&'static str, &'static str),
    /// The JSON at this path as written.
    Json(&'static str),
    /// The table's metric in every run, in run order.
    Runs,
    /// Text that a function makes from the line.
    Computed(fn(&Value) -> String),
}

/// One table of the page: the result lines of a scenario, one table per
/// distinct value of `key` (such as the subscriber count).
pub(crate) struct Table {
    pub(crate) scenario: &'static str,
    pub(crate) key: &'static str,
    /// Heading, with `{key}` standing for the key's value.
    pub(crate) title: &'static str,
    /// Text between the heading and the table.
    pub(crate) note: &'static str,
    /// The figure by which the median of repeated runs is chosen.
    pub(crate) metric: &'static str,
    pub(crate) columns: &'static [(&'static str, Cell)],
}

const TABLES: &[Table] = &[
    Table {
        scenario: "fanout",
        key: "subscribers",
        title: "Fan-out: {key} subscribers",
        note: "One publisher at a fixed rate; every subscriber gets every message. \
               Latency is from the send time in the message body to its arrival.",
        metric: "deliveries_per_cpu_second",
        columns: &[
            ("target messages/s", Cell::Number("rate")),
            ("sent messages/s", Cell::Number("publish_rate")),
            ("deliveries/s", Cell::Number("deliveries_per_second")),
            ("server CPU s", Cell::Number("server_cpu_seconds")),
            (
                "deliveries per server CPU-s",
                Cell::Number("deliveries_per_cpu_second"),
            ),
            ("× nchan", Cell::VsBaseline("deliveries_per_cpu_second")),
            ("each run", Cell::Runs),
            ("p50 ms", Cell::Number("latency_ms.p50")),
            ("p99 ms", Cell::Number("latency_ms.p99")),
            ("max ms", Cell::Number("latency_ms.max")),
            ("p99 × nchan", Cell::VsBaseline("latency_ms.p99")),
            ("missing", Cell::Number("missing")),
            ("client CPU s", Cell::Number("client_cpu_seconds")),
        ],
    },
    Table {
        scenario: "idle",
        key: "connections",
        title: "Idle streams: {key} open",
        note: "Server memory before the streams open and after they have been open for 2 s. \
               RSS sums every server process (nginx master and worker); PSS splits shared pages.",
        metric: "rss_per_connection_kib",
        columns: &[
            ("RSS before MiB", Cell::Mib("rss_before_kib")),
            ("RSS after MiB", Cell::Mib("rss_after_kib")),
            ("RSS KiB per stream", Cell::Number("rss_per_connection_kib")),
            ("× nchan", Cell::VsBaseline("rss_per_connection_kib")),
            ("PSS KiB per stream", Cell::Number("pss_per_connection_kib")),
            ("× nchan (PSS)", Cell::VsBaseline("pss_per_connection_kib")),
            ("connect s", Cell::Number("connect_seconds")),
        ],
    },
    Table {
        scenario: "inserts",
        key: "clients",
        title: "Inserts, {key} concurrent client(s)",
        note:
            "Each client sends requests back to back on its own connection for 5 s. \
               Broker's inserts are durable (fsync, group commit); nchan's publishes are in memory.",
        metric: "inserts_per_second",
        columns: &[
            ("inserts/s", Cell::Number("inserts_per_second")),
            ("× nchan", Cell::VsBaseline("inserts_per_second")),
            ("each run", Cell::Runs),
            ("p50 ms", Cell::Number("latency_ms.p50")),
            ("p99 ms", Cell::Number("latency_ms.p99")),
            ("non-2xx", Cell::Number("non_2xx")),
            ("server CPU s", Cell::Number("server_cpu_seconds")),
            ("client CPU s", Cell::Number("client_cpu_seconds")),
        ],
    },
    Table {
        scenario: "sync",
        key: "names",
        title: "Sync on connect: {key} names (Broker only)",
        note: "Time from a new subscriber's TCP connect to its last snapshot message, \
               for connections made one after another.",
        metric: "sync_max_ms",
        columns: &[
            ("median ms", Cell::Number("sync_median_ms")),
            ("max ms", Cell::Number("sync_max_ms")),
            ("each run, ms", Cell::Json("sync_ms")),
            ("loading the names s", Cell::Number("load_seconds")),
        ],
    },
    Table {
        scenario: "schedule",
        key: "events",
        title: "Scheduling: {key} events due at the same second (Broker only)",
        note: "Lateness of each arrival after the start of the second the events are due.",
        metric: "lateness_ms.p99",
        columns: &[
            ("p50 ms", Cell::Number("lateness_ms.p50")),
            ("p99 ms", Cell::Number("lateness_ms.p99")),
            ("max ms", Cell::Number("lateness_ms.max")),
            ("missing", Cell::Number("missing")),
            (
                "inserts done before due, ms",
                Cell::Number("inserted_before_due_ms"),
            ),
        ],
    },
];

/// Result lines of `scenario` whose `key` field equals `value`.
fn select<'a>(lines: &'a [Value], scenario: &str, key: &str, value: &Value) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|line| line["scenario"] == scenario && &line[key] == value)
        .collect()
}

/// Distinct values of `key` among the lines of a scenario, in order.
fn variants(lines: &[Value], scenario: &str, key: &str) -> Vec<Value> {
    let mut seen: Vec<Value> = Vec::new();
    for line in lines.iter().filter(|line| line["scenario"] == scenario) {
        if !seen.contains(&line[key]) {
            seen.push(line[key].clone());
        }
    }
    seen
}

/// Field added to a chosen line: the table's metric in every run.
const RUNS: &str = "runs";

/// Keeps one line per scenario, key value and system: the run with the
/// median metric (the lower middle one of an even count), with every run's
/// metric added under [`RUNS`].
fn median_runs(lines: &[Value], tables: &[Table]) -> Vec<Value> {
    let mut chosen = Vec::new();
    for table in tables {
        let mut groups: Vec<Vec<&Value>> = Vec::new();
        for line in lines
            .iter()
            .filter(|line| line["scenario"] == table.scenario)
        {
            let same = |other: &&Value| {
                other["label"] == line["label"] && other[table.key] == line[table.key]
            };
            match groups.iter_mut().find(|group| same(&group[0])) {
                Some(group) => group.push(line),
                None => groups.push(vec![line]),
            }
        }
        for group in groups {
            let runs: Vec<Value> = group
                .iter()
                .map(|line| number(line, table.metric).map_or(Value::Null, Value::from))
                .collect();
            let mut sorted = group.clone();
            sorted.sort_by(|a, b| {
                let metric = |line: &Value| number(line, table.metric).unwrap_or(f64::NAN);
                metric(a).total_cmp(&metric(b))
            });
            let mut line = sorted[(sorted.len() - 1) / 2].clone();
            line[RUNS] = Value::from(runs);
            chosen.push(line);
        }
    }
    chosen
}

fn render(section: &Section, all_lines: &[Value], machine: &str, command: Option<&str>) -> String {
    let lines = &median_runs(all_lines, section.tables);
    let probes = MachineProbes::new(all_lines);
    let heading = "#".repeat(section.level);
    let mut out = String::new();
    let _ = writeln!(out, "{}\n", section.begin);
    let _ = writeln!(out, "{heading} Machine and command\n");
    let _ = writeln!(out, "{}\n", machine.trim_end());
    if let Some(command) = command {
        let _ = writeln!(out, "Command: `{command}`\n");
    }
    let _ = writeln!(
        out,
        "Every absolute figure below is from this 2-core machine, which other work shares. \
         Where a scenario ran more than once, a row shows the run with the median of the \
         table's main figure, and the column \"each run\" lists that figure for every run. \
         {}\n",
        section.ratio_note
    );
    if section.targets {
        render_targets(&mut out, lines, &probes);
    }
    render_machine(&mut out, &probes, &heading);
    for table in section.tables {
        for value in variants(lines, table.scenario, table.key) {
            render_table(
                &mut out,
                section,
                table,
                &select(lines, table.scenario, table.key, &value),
                &value,
            );
        }
    }
    let _ = write!(out, "{}", section.end);
    out
}

fn row(out: &mut String, cells: &[String]) {
    let _ = writeln!(out, "| {} |", cells.join(" | "));
}

fn render_table(out: &mut String, section: &Section, table: &Table, lines: &[&Value], key: &Value) {
    let title = table.title.replace("{key}", &show(key.as_f64()));
    let _ = writeln!(
        out,
        "{} {title} (2-core shared machine)\n\n{}\n",
        "#".repeat(section.level),
        table.note
    );
    let mut head = vec!["system".to_string()];
    head.extend(table.columns.iter().map(|(name, _)| name.to_string()));
    row(out, &head);
    let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
    let baseline = lines
        .iter()
        .copied()
        .find(|line| line["label"] == section.baseline);
    for &line in lines {
        let mut cells = vec![line["label"].as_str().unwrap_or_default().to_string()];
        for &(_, cell) in table.columns {
            cells.push(match cell {
                Cell::Number(path) => show(number(line, path)),
                Cell::Mib(path) => show(number(line, path).map(|kib| kib / 1024.0)),
                Cell::Json(path) => line[path].to_string(),
                Cell::Runs => line[RUNS]
                    .as_array()
                    .map(|runs| {
                        runs.iter()
                            .map(|run| show(run.as_f64()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default(),
                Cell::VsBaseline(path) => ratio_cell(line, baseline, section, path, path),
                Cell::VsBaselineAt(own, theirs) => ratio_cell(line, baseline, section, own, theirs),
                Cell::Computed(text) => text(line),
            });
        }
        row(out, &cells);
    }
    let _ = writeln!(out);
}

/// Returns the figure at `own` of `line` divided by the figure at `theirs`
/// of the baseline's line, empty in the baseline's own row.
fn ratio_cell(
    line: &Value,
    baseline: Option<&Value>,
    section: &Section,
    own: &str,
    theirs: &str,
) -> String {
    match baseline {
        Some(baseline) if line["label"] != section.baseline => {
            number(line, own).zip(number(baseline, theirs)).map_or_else(
                || "n/a".into(),
                |(own, theirs)| format!("{:.2}×", own / theirs),
            )
        }
        _ => String::new(),
    }
}

/// Finds the line of `system` for `scenario` whose `key` field equals `value`
/// (any line of the scenario when `key` is empty).
fn find<'a>(
    lines: &'a [Value],
    scenario: &str,
    key: &str,
    value: &Value,
    system: &str,
) -> Option<&'a Value> {
    lines.iter().find(|line| {
        line["scenario"] == scenario
            && line["label"] == system
            && (key.is_empty() || &line[key] == value)
    })
}

/// A target's verdict for one system: whether it is met, and the figures.
type Verdict = Option<(bool, String)>;

/// Checks that `own / nchan's` of the figure at `path` is at least
/// `minimum` (or at most `maximum`), and reports by how much it misses.
fn ratio_target(
    own: &Value,
    nchan: &Value,
    path: &str,
    minimum: Option<f64>,
    maximum: Option<f64>,
) -> Verdict {
    let ratio = number(own, path)? / number(nchan, path)?;
    if let Some(minimum) = minimum {
        let met = ratio >= minimum;
        let short = (1.0 - ratio / minimum) * 100.0;
        let detail = if met {
            format!("{ratio:.2}×")
        } else {
            format!("{ratio:.2}×, {short:.0}% short of {minimum}×")
        };
        return Some((met, detail));
    }
    let maximum = maximum?;
    let met = ratio <= maximum;
    let detail = if met {
        format!("{ratio:.2}×")
    } else {
        format!(
            "{ratio:.2}×, {:.2}× the allowed {maximum}×",
            ratio / maximum
        )
    };
    Some((met, detail))
}

/// Checks that the figure at `path`, in ms, is below `limit`.
fn limit_target(line: &Value, path: &str, limit: f64) -> Verdict {
    let value = number(line, path)?;
    let met = value < limit;
    let mut detail = format!("{} ms", show(Some(value)));
    if !met {
        let _ = write!(detail, ", {:.2}× the limit", value / limit);
    }
    Some((met, detail))
}

fn render_targets(out: &mut String, lines: &[Value], probes: &MachineProbes) {
    let mut systems: Vec<&str> = Vec::new();
    for line in lines {
        let label = line["label"].as_str().unwrap_or_default();
        if label != NCHAN && !systems.contains(&label) {
            systems.push(label);
        }
    }
    // The column of machine bounds appears only when a probe ran, so that
    // a page from results without probes keeps its columns.
    let show_bounds = !probes.is_empty();
    let _ = writeln!(out, "## Targets\n");
    let mut head = vec!["target".to_string()];
    if show_bounds {
        head.push("machine bound, same run".to_string());
    }
    head.extend(systems.iter().map(|system| system.to_string()));
    row(out, &head);
    let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
    let mut target_row = |name: String, bound: Option<String>, check: &dyn Fn(&str) -> Verdict| {
        let mut cells = vec![name];
        if show_bounds {
            cells.push(bound.unwrap_or_default());
        }
        for system in &systems {
            cells.push(match check(system) {
                Some((true, detail)) => format!("met: {detail}"),
                Some((false, detail)) => format!("**missed**: {detail}"),
                None => "not measured".into(),
            });
        }
        row(out, &cells);
    };

    for subscribers in variants(lines, "fanout", "subscribers") {
        let count = show(subscribers.as_f64());
        let pair = |system: &str| {
            let own = find(lines, "fanout", "subscribers", &subscribers, system)?;
            Some((
                own,
                find(lines, "fanout", "subscribers", &subscribers, NCHAN)?,
            ))
        };
        let nchan_rate = find(lines, "fanout", "subscribers", &subscribers, NCHAN)
            .and_then(|nchan| number(nchan, "deliveries_per_cpu_second"));
        target_row(
            format!("fan-out, {count} subscribers: deliveries per server CPU-second ≥ 2× nchan's"),
            probes.delivery_bound(&subscribers, nchan_rate),
            &|system| {
                let (own, nchan) = pair(system)?;
                ratio_target(own, nchan, "deliveries_per_cpu_second", Some(2.0), None)
            },
        );
        target_row(
            format!("fan-out, {count} subscribers: p99 latency ≤ nchan's, nothing missing"),
            None,
            &|system| {
                let (own, nchan) = pair(system)?;
                let (mine, theirs) = (
                    number(own, "latency_ms.p99")?,
                    number(nchan, "latency_ms.p99")?,
                );
                let missing = number(own, "missing").unwrap_or(0.0);
                let mut detail = format!("{} ms vs {} ms", show(Some(mine)), show(Some(theirs)));
                if mine > theirs {
                    let _ = write!(detail, ", {:.2}× nchan's", mine / theirs);
                }
                if missing > 0.0 {
                    let _ = write!(detail, "; {missing} deliveries missing");
                }
                Some((mine <= theirs && missing == 0.0, detail))
            },
        );
    }
    let any = Value::Null;
    target_row(
        "idle RSS per stream ≤ ½ of nchan's".into(),
        None,
        &|system| {
            let own = find(lines, "idle", "", &any, system)?;
            ratio_target(
                own,
                find(lines, "idle", "", &any, NCHAN)?,
                "rss_per_connection_kib",
                None,
                Some(0.5),
            )
        },
    );
    let sixteen = Value::from(16);
    let nchan_inserts = find(lines, "inserts", "clients", &sixteen, NCHAN)
        .and_then(|nchan| number(nchan, "inserts_per_second"));
    target_row(
        "durable inserts at 16 clients ≥ nchan's publishes".into(),
        probes.insert_bound(16, nchan_inserts),
        &|system| {
            let own = find(lines, "inserts", "clients", &sixteen, system)?;
            let nchan = find(lines, "inserts", "clients", &sixteen, NCHAN)?;
            ratio_target(own, nchan, "inserts_per_second", Some(1.0), None)
        },
    );
    target_row(
        "sync on connect, 10,000 names: slowest run < 50 ms".into(),
        None,
        &|system| limit_target(find(lines, "sync", "", &any, system)?, "sync_max_ms", 50.0),
    );
    target_row(
        "scheduling, 1,000 events due together: p99 lateness < 10 ms".into(),
        None,
        &|system| {
            let line = find(lines, "schedule", "", &any, system)?;
            let (met, mut detail) = limit_target(line, "lateness_ms.p99", 10.0)?;
            let missing = number(line, "missing").unwrap_or(0.0);
            if missing > 0.0 {
                let _ = write!(detail, "; {missing} events missing");
            }
            Some((met && missing == 0.0, detail))
        },
    );
    let _ = writeln!(out);
}

/// Scenario name of the disk sync probe in result lines.
const FSYNC: &str = "fsync";
/// Scenario name of the loopback write probe in result lines.
const WRITE_FLOOR: &str = "write-floor";

/// The result lines of the machine probes, one per probe and size: the run
/// with the median figure when a probe ran more than once.
struct MachineProbes {
    /// The disk sync probe, chosen by its median sync time.
    sync: Option<Value>,
    /// The loopback write probe per connection count, chosen by CPU per write.
    writes: Vec<Value>,
}

impl MachineProbes {
    fn new(lines: &[Value]) -> MachineProbes {
        let sync = median_line(lines, FSYNC, "", &Value::Null, "sync_ms.p50");
        let writes = variants(lines, WRITE_FLOOR, "connections")
            .iter()
            .filter_map(|connections| {
                median_line(
                    lines,
                    WRITE_FLOOR,
                    "connections",
                    connections,
                    "cpu_microseconds_per_write",
                )
            })
            .collect();
        MachineProbes { sync, writes }
    }

    fn is_empty(&self) -> bool {
        self.sync.is_none() && self.writes.is_empty()
    }

    /// Describes the insert rate that the median sync allows `clients`
    /// one-request clients, as a multiple of nchan's rate when known.
    fn insert_bound(&self, clients: u32, nchan: Option<f64>) -> Option<String> {
        let sync = self.sync.as_ref()?;
        let bound = number(sync, &format!("insert_bound_per_second.{clients}"))?;
        let text = format!(
            "sync p50 {} ms: at most {} inserts/s at {clients} clients",
            show(number(sync, "sync_ms.p50")),
            show(Some(bound)),
        );
        Some(with_nchan_ratio(text, bound, nchan))
    }

    /// Describes the deliveries per CPU-second that one write per delivery
    /// allows with `connections` connections, as a multiple of nchan's
    /// figure when known.
    fn delivery_bound(&self, connections: &Value, nchan: Option<f64>) -> Option<String> {
        let line = self
            .writes
            .iter()
            .find(|line| &line["connections"] == connections)?;
        let bound = number(line, "writes_per_cpu_second")?;
        let text = format!(
            "one write per delivery costs {} µs of CPU: at most {} deliveries per CPU-second",
            show(number(line, "cpu_microseconds_per_write")),
            show(Some(bound)),
        );
        Some(with_nchan_ratio(text, bound, nchan))
    }
}

/// Appends `bound` as a multiple of nchan's figure, when there is one.
fn with_nchan_ratio(mut text: String, bound: f64, nchan: Option<f64>) -> String {
    if let Some(nchan) = nchan {
        let _ = write!(text, " ({:.2}× nchan's)", bound / nchan);
    }
    text
}

/// Finds the line of `scenario` whose `key` field equals `value` (any line
/// of the scenario when `key` is empty) with the median figure at `metric`,
/// the lower middle one of an even count.
fn median_line(
    lines: &[Value],
    scenario: &str,
    key: &str,
    value: &Value,
    metric: &str,
) -> Option<Value> {
    let mut matching: Vec<&Value> = lines
        .iter()
        .filter(|line| line["scenario"] == scenario && (key.is_empty() || &line[key] == value))
        .collect();
    if matching.is_empty() {
        return None;
    }
    let figure = |line: &Value| number(line, metric).unwrap_or(f64::NAN);
    matching.sort_by(|a, b| figure(a).total_cmp(&figure(b)));
    Some(matching[(matching.len() - 1) / 2].clone())
}

fn render_machine(out: &mut String, probes: &MachineProbes, heading: &str) {
    if probes.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "{heading} Machine limits (2-core shared machine)\n\n\
         Two probes of the machine itself, run once before the first round with no \
         server running. They bound the insert rate of a server that syncs before each \
         reply, and the fan-out efficiency of a server that writes once per delivery.\n"
    );
    if let Some(sync) = &probes.sync {
        let _ = writeln!(
            out,
            "{heading}# Disk sync\n\n\
             Appends of {} bytes to a new file in the folder that contains the servers' data \
             folders, each followed by `fdatasync`, timed one by one. A Broker insert replies after a sync, \
             so C clients with one request in flight each make at most C inserts per sync, \
             about C / (median sync time) per second.\n",
            show(number(sync, "size_bytes"))
        );
        row(
            out,
            &[
                "syncs",
                "p50 ms",
                "p99 ms",
                "max ms",
                "at most inserts/s, 1 client",
                "at most inserts/s, 16 clients",
            ]
            .map(String::from),
        );
        let _ = writeln!(out, "|{}", "---|".repeat(6));
        let cells = [
            "syncs",
            "sync_ms.p50",
            "sync_ms.p99",
            "sync_ms.max",
            "insert_bound_per_second.1",
            "insert_bound_per_second.16",
        ]
        .map(|path| show(number(sync, path)));
        row(out, &cells);
        let _ = writeln!(out);
    }
    if !probes.writes.is_empty() {
        let _ = writeln!(
            out,
            "{heading}# Loopback writes\n\n\
             One `write` of a frame the size of the chunk that Broker sends per delivery \
             in the fan-out scenarios, to each of N loopback TCP connections in turn, with \
             `TCP_NODELAY` and at the fan-out scenarios' rate, while another thread reads \
             every connection. The CPU time is the writing thread's own. On loopback it \
             includes the kernel's TCP receive work for the reading socket, as a server's \
             CPU time does in the fan-out scenarios. A server that makes one write per \
             delivery makes at most 1 / (CPU per write) deliveries per CPU-second.\n"
        );
        let head = [
            "connections",
            "bytes per write",
            "writes",
            "writes/s",
            "writer CPU s",
            "CPU µs per write",
            "at most writes per CPU-s",
            "full-buffer retries",
        ];
        row(out, &head.map(String::from));
        let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
        for line in &probes.writes {
            let per_second = number(line, "writes")
                .zip(number(line, "seconds"))
                .map(|(writes, seconds)| writes / seconds);
            let cells = [
                show(number(line, "connections")),
                show(number(line, "size_bytes")),
                show(number(line, "writes")),
                show(per_second),
                show(number(line, "writer_cpu_seconds")),
                show(number(line, "cpu_microseconds_per_write")),
                show(number(line, "writes_per_cpu_second")),
                show(number(line, "full_buffer_retries")),
            ];
            row(out, &cells);
        }
        let _ = writeln!(out);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Result lines of one system and nchan, without the machine probes.
    fn scenario_lines() -> Vec<Value> {
        vec![
            json!({"label": "broker", "scenario": "fanout", "subscribers": 100,
                   "deliveries_per_cpu_second": 100000.0, "latency_ms": {"p99": 5.0}}),
            json!({"label": NCHAN, "scenario": "fanout", "subscribers": 100,
                   "deliveries_per_cpu_second": 50000.0, "latency_ms": {"p99": 9.0}}),
            json!({"label": "broker", "scenario": "inserts", "clients": 16,
                   "inserts_per_second": 5000.0}),
            json!({"label": NCHAN, "scenario": "inserts", "clients": 16,
                   "inserts_per_second": 40000.0}),
        ]
    }

    fn probe_lines() -> Vec<Value> {
        vec![
            json!({"label": "machine", "scenario": FSYNC, "syncs": 1000, "size_bytes": 4096,
                   "sync_ms": {"p50": 0.8, "p99": 2.0, "max": 3.0},
                   "insert_bound_per_second": {"1": 1250.0, "16": 20000.0}}),
            json!({"label": "machine", "scenario": WRITE_FLOOR, "connections": 100,
                   "size_bytes": 60, "writes": 200000, "seconds": 2.0,
                   "writer_cpu_seconds": 0.4, "cpu_microseconds_per_write": 2.0,
                   "writes_per_cpu_second": 500000.0, "full_buffer_retries": 0}),
        ]
    }

    #[test]
    fn machine_limits_section_renders() {
        let mut lines = scenario_lines();
        lines.extend(probe_lines());
        let page = render(&NCHAN_SECTION, &lines, "", None);
        assert!(page.contains("## Machine limits"), "{page}");
        assert!(
            page.contains("| 1000 | 0.80 | 2 | 3 | 1250 | 20000 |"),
            "{page}"
        );
        assert!(
            page.contains("| 100 | 60 | 200000 | 100000 | 0.40 | 2 | 500000 | 0 |"),
            "{page}"
        );
    }

    #[test]
    fn targets_show_machine_bounds() {
        let mut lines = scenario_lines();
        lines.extend(probe_lines());
        let page = render(&NCHAN_SECTION, &lines, "", None);
        assert!(
            page.contains("| target | machine bound, same run | broker |"),
            "{page}"
        );
        assert!(
            page.contains(
                "one write per delivery costs 2 µs of CPU: at most 500000 deliveries per \
                 CPU-second (10.00× nchan's)"
            ),
            "{page}"
        );
        assert!(
            page.contains(
                "sync p50 0.80 ms: at most 20000 inserts/s at 16 clients (0.50× nchan's)"
            ),
            "{page}"
        );
    }

    #[test]
    fn no_probes_no_bound_column() {
        let page = render(&NCHAN_SECTION, &scenario_lines(), "", None);
        assert!(page.contains("| target | broker |"), "{page}");
        assert!(!page.contains("Machine limits"), "{page}");
    }

    #[test]
    fn median_line_takes_lower_middle() {
        let lines: Vec<Value> = [3.0, 1.0, 4.0, 2.0]
            .iter()
            .map(|p50| json!({"scenario": FSYNC, "sync_ms": {"p50": p50}}))
            .collect();
        let chosen = median_line(&lines, FSYNC, "", &Value::Null, "sync_ms.p50").unwrap();
        assert_eq!(chosen["sync_ms"]["p50"], 2.0);
    }

    #[test]
    fn two_node_rows_divide_by_one_node() {
        let lines = vec![
            json!({"label": "tokio-axum+redb", "scenario": "fanout", "subscribers": 100,
                   "subscribe_urls": 1, "deliveries_per_cpu_second": 100000.0,
                   "server_cpu_seconds": 5.0, "server_cpu_seconds_each": [5.0]}),
            json!({"label": "postgres-2-nodes", "scenario": "fanout", "subscribers": 100,
                   "subscribe_urls": 2, "deliveries_per_cpu_second": 50000.0,
                   "deliveries_per_cpu_second_with_database": 25000.0,
                   "server_cpu_seconds": 10.0, "server_cpu_seconds_each": [6.0, 4.0],
                   "database_cpu_seconds": 10.0}),
            json!({"label": "postgres-2-nodes", "scenario": "inserts", "clients": 1,
                   "publish_urls": 2, "ok": 1000, "inserts_per_second": 200.0,
                   "server_cpu_seconds": 1.0, "database_cpu_seconds": 2.0}),
        ];
        let page = render(&crate::two_node::SECTION, &lines, "", None);
        assert!(page.starts_with(crate::two_node::SECTION.begin), "{page}");
        assert!(page.contains("### Fan-out: 100 subscribers"), "{page}");
        assert!(
            page.contains("| postgres-2-nodes | 2 | n/a | n/a | 10 | 6 + 4 | 50000 | 0.50× |"),
            "{page}"
        );
        assert!(page.contains("| 10 | 25000 | 0.25× |"), "{page}");
        // One client uses one node; (1 + 2) CPU-s over 1000 inserts.
        assert!(page.contains("| postgres-2-nodes | 1 | 200 |"), "{page}");
        assert!(page.contains("| 3000 |"), "{page}");
        assert!(!page.contains("## Targets"), "{page}");
    }

    #[test]
    fn human_lines_of_probes() {
        let lines = probe_lines();
        assert!(human_line(&lines[0]).contains("sync p50 0.80 ms"));
        assert!(human_line(&lines[1]).contains("2 µs CPU per write"));
    }
}
