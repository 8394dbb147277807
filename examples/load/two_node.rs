//! The tables of the page's second generated section: two Broker nodes on
//! one PostgreSQL database, beside one node with redb from the same run.

use serde_json::Value;

use crate::report::{number, show, Cell, Section, Table};

/// Label of the one-node system that the two-node rows are divided by.
const BASELINE: &str = "tokio-axum+redb";

pub(crate) const SECTION: Section = Section {
    begin: "<!-- two-node results:begin (written by benches/run.sh --postgres) -->",
    end: "<!-- two-node results:end -->",
    level: 3,
    baseline: BASELINE,
    ratio_note: "A ratio divides a row by the row of one tokio-axum+redb node from the same run. \
                 \"Broker CPU\" sums the broker processes, both nodes in the two-node rows. \
                 \"PostgreSQL CPU\" is that of the benchmark's own PostgreSQL cluster: its \
                 postmaster and every child process (one backend per connection, the WAL \
                 writer, the checkpointer and the rest), read from `/proc`.",
    tables: TABLES,
    targets: false,
};

/// Formats the Broker CPU seconds of each node as `0.81 + 0.64`.
fn cpu_each(line: &Value) -> String {
    line["server_cpu_seconds_each"]
        .as_array()
        .map(|each| {
            each.iter()
                .map(|seconds| show(seconds.as_f64()))
                .collect::<Vec<_>>()
                .join(" + ")
        })
        .unwrap_or_default()
}

/// Formats the number of nodes that the clients used: one per client, up
/// to the node count.
fn nodes_used(line: &Value) -> String {
    let clients = number(line, "clients");
    let nodes = number(line, "publish_urls");
    show(
        clients
            .zip(nodes)
            .map(|(clients, nodes)| clients.min(nodes)),
    )
}

/// Formats the Broker plus PostgreSQL CPU microseconds per successful insert.
fn cpu_per_insert(line: &Value) -> String {
    let database = number(line, "database_cpu_seconds").unwrap_or(0.0);
    let cpu = number(line, "server_cpu_seconds").map(|broker| broker + database);
    let inserts = number(line, "ok").filter(|&ok| ok > 0.0);
    show(cpu.zip(inserts).map(|(cpu, inserts)| cpu * 1e6 / inserts))
}

/// Formats the figure at `path` of each element of the array at `field`,
/// one per node, as `4.1, 6.3`.
fn each_node(line: &Value, field: &str, path: &str) -> String {
    line[field]
        .as_array()
        .map(|each| {
            each.iter()
                .map(|node| show(number(node, path)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// Formats the p50 latency of the subscribers of each node.
fn p50_each(line: &Value) -> String {
    each_node(line, "latency_ms_each", "p50")
}

/// Formats the p99 latency of the subscribers of each node.
fn p99_each(line: &Value) -> String {
    each_node(line, "latency_ms_each", "p99")
}

/// Formats the p99 lateness of the stream on each node.
fn lateness_p99_each(line: &Value) -> String {
    each_node(line, "lateness_ms_each", "p99")
}

const TABLES: &[Table] = &[
    Table {
        scenario: "fanout",
        key: "subscribers",
        title: "Fan-out: {key} subscribers",
        note: "One publisher at a fixed rate on node 1; the subscribers take the nodes in \
               turn, so each node has half of them. Latency is from the send time in the \
               message body to its arrival.",
        metric: "deliveries_per_cpu_second",
        columns: &[
            ("nodes", Cell::Number("subscribe_urls")),
            ("sent messages/s", Cell::Number("publish_rate")),
            ("deliveries/s", Cell::Number("deliveries_per_second")),
            ("Broker CPU s", Cell::Number("server_cpu_seconds")),
            ("per node", Cell::Computed(cpu_each)),
            (
                "deliveries per Broker CPU-s",
                Cell::Number("deliveries_per_cpu_second"),
            ),
            ("× 1 node", Cell::VsBaseline("deliveries_per_cpu_second")),
            ("each run", Cell::Runs),
            ("PostgreSQL CPU s", Cell::Number("database_cpu_seconds")),
            (
                "deliveries per CPU-s, PostgreSQL counted",
                Cell::Number("deliveries_per_cpu_second_with_database"),
            ),
            (
                "× 1 node",
                Cell::VsBaselineAt(
                    "deliveries_per_cpu_second_with_database",
                    "deliveries_per_cpu_second",
                ),
            ),
            ("p50 ms", Cell::Number("latency_ms.p50")),
            ("p50 per node", Cell::Computed(p50_each)),
            ("p99 ms", Cell::Number("latency_ms.p99")),
            ("p99 per node", Cell::Computed(p99_each)),
            ("max ms", Cell::Number("latency_ms.max")),
            ("missing", Cell::Number("missing")),
            ("client CPU s", Cell::Number("client_cpu_seconds")),
        ],
    },
    Table {
        scenario: "inserts",
        key: "clients",
        title: "Durable inserts, {key} concurrent client(s)",
        note: "Each client sends requests back to back on its own connection for 5 s; \
               the clients take the nodes in turn, so one client uses node 1 only. An insert \
               gets its reply after its commit is durable: redb's fsync, or PostgreSQL's \
               commit with `synchronous_commit = on`.",
        metric: "inserts_per_second",
        columns: &[
            ("nodes", Cell::Computed(nodes_used)),
            ("inserts/s", Cell::Number("inserts_per_second")),
            ("× 1 node", Cell::VsBaseline("inserts_per_second")),
            ("each run", Cell::Runs),
            ("p50 ms", Cell::Number("latency_ms.p50")),
            ("p99 ms", Cell::Number("latency_ms.p99")),
            ("non-2xx", Cell::Number("non_2xx")),
            ("Broker CPU s", Cell::Number("server_cpu_seconds")),
            ("per node", Cell::Computed(cpu_each)),
            ("PostgreSQL CPU s", Cell::Number("database_cpu_seconds")),
            ("CPU µs per insert, all", Cell::Computed(cpu_per_insert)),
            ("client CPU s", Cell::Number("client_cpu_seconds")),
        ],
    },
    Table {
        scenario: "sync",
        key: "names",
        title: "Sync on connect: {key} names",
        note: "The names are inserted over 32 connections that take the nodes in turn. \
               Then new subscribers connect one after another, taking the nodes in turn \
               (node 2 first), and each is timed from its TCP connect to its last \
               snapshot message.",
        metric: "sync_max_ms",
        columns: &[
            ("nodes", Cell::Number("subscribe_urls")),
            ("median ms", Cell::Number("sync_median_ms")),
            ("max ms", Cell::Number("sync_max_ms")),
            ("each run, ms", Cell::Json("sync_ms")),
            ("loading the names s", Cell::Number("load_seconds")),
        ],
    },
    Table {
        scenario: "schedule",
        key: "events",
        title: "Scheduling: {key} events due at the same second",
        note: "The events are inserted over 16 connections that take the nodes in turn, \
               and one stream on each node receives them. Lateness is from the start of \
               the second the events are due to each arrival.",
        metric: "lateness_ms.p99",
        columns: &[
            ("streams", Cell::Number("streams")),
            ("p50 ms", Cell::Number("lateness_ms.p50")),
            ("p99 ms", Cell::Number("lateness_ms.p99")),
            ("p99 per node, ms", Cell::Computed(lateness_p99_each)),
            ("max ms", Cell::Number("lateness_ms.max")),
            ("missing", Cell::Number("missing")),
            (
                "inserts done before due, ms",
                Cell::Number("inserted_before_due_ms"),
            ),
        ],
    },
];
