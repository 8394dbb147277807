//! Prometheus metrics: what `GET /metrics` serves.
//!
//! Each [`Broker`](crate::Broker) owns one [`Metrics`], reachable with
//! [`Broker::metrics`](crate::Broker::metrics), so every runtime serves the
//! same text. The core thread and the runtimes update it with atomic
//! operations. Delivering a publication to a subscriber takes no lock: the
//! counters are plain atomics, and the subscriber and connection gauges are
//! read from the counts that the broker keeps anyway, at scrape time.
//!
//! The exposition is the Prometheus text format, version 0.0.4, encoded by
//! [prometheus-client](https://docs.rs/prometheus-client). Every name has
//! the prefix `broker_`.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::connection::Connections;

/// The `Content-Type` of a `GET /metrics` response: the Prometheus text
/// format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The path that serves the metrics.
pub const PATH: &str = "/metrics";

/// A route of the API, the `route` label of the request duration histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route {
    /// `POST /insert`.
    Insert,
    /// `GET /events`, timed until the stream's response head is ready.
    Events,
    /// `GET /collection/{event}`.
    Collection,
    /// `GET /health`.
    Health,
    /// `GET /metrics`.
    Metrics,
}

impl Route {
    /// Every route, in the order of the API table.
    pub const ALL: [Self; 5] = [
        Self::Insert,
        Self::Events,
        Self::Collection,
        Self::Health,
        Self::Metrics,
    ];

    /// Returns the route that serves `path`, or `None` for an unknown path.
    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            "/insert" => Some(Self::Insert),
            "/events" => Some(Self::Events),
            "/health" => Some(Self::Health),
            PATH => Some(Self::Metrics),
            _ if path.starts_with(crate::api::COLLECTION_PREFIX) => Some(Self::Collection),
            _ => None,
        }
    }

    /// Returns the value of the `route` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Insert => "insert",
            Self::Events => "events",
            Self::Collection => "collection",
            Self::Health => "health",
            Self::Metrics => "metrics",
        }
    }
}

/// The error code of a rejected request, carried in the extensions of its
/// response so that the runtime's outermost middleware can count it.
#[cfg(any(feature = "tokio-axum", feature = "async-std-tide"))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rejected(pub(crate) &'static str);

/// The label set of a family with one label.
type Label = [(&'static str, &'static str); 1];

/// The broker's metrics and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    pub(crate) inserts: Counter,
    pub(crate) publications: Counter,
    pub(crate) pending: Gauge,
    pub(crate) slow_clients_dropped: Counter,
    rejected: Family<Label, Counter>,
    request_duration: Family<Label, Histogram>,
}

impl Metrics {
    /// Creates the metrics of a broker whose connections are `connections`
    /// and whose live subscription count is `subscriptions`.
    pub(crate) fn new(connections: Connections, subscriptions: Arc<AtomicUsize>) -> Self {
        let mut registry = Registry::with_prefix("broker");
        let inserts = Counter::default();
        let publications = Counter::default();
        let pending = Gauge::default();
        let slow_clients_dropped = Counter::default();
        let rejected = Family::<Label, Counter>::default();
        // 0.5 ms to about 8 s, doubling: an insert waits for a disk sync,
        // which takes from well under a millisecond to seconds.
        let request_duration = Family::<Label, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 15))
        });

        registry.register(
            "inserts",
            "Events stored by POST /insert and Broker::insert",
            inserts.clone(),
        );
        registry.register(
            "publications",
            "Publications sent to subscribers",
            publications.clone(),
        );
        registry.register(
            "pending_events",
            "Events stored but not yet published, because their timestamp has not come",
            pending.clone(),
        );
        registry.register(
            "rejected_requests",
            "Requests answered with an error, by the error code of the JSON body",
            rejected.clone(),
        );
        registry.register(
            "slow_clients_dropped",
            "Subscribers disconnected because their queue was full",
            slow_clients_dropped.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from a request's head to its response head, by route",
            Unit::Seconds,
            request_duration.clone(),
        );
        // A route's series exists from the start, so that a dashboard shows
        // 0 rather than no data before its first request.
        for route in Route::ALL {
            drop(request_duration.get_or_create(&[("route", route.label())]));
        }
        registry.register_collector(Box::new(Counts {
            connections,
            subscriptions,
        }));

        Self {
            registry,
            inserts,
            publications,
            pending,
            slow_clients_dropped,
            rejected,
            request_duration,
        }
    }

    /// Counts a request rejected with the error code `code`, such as
    /// `invalid_json` (see [`ApiError::code`](crate::api::ApiError::code)).
    pub fn count_rejected(&self, code: &'static str) {
        self.rejected.get_or_create(&[("code", code)]).inc();
    }

    /// Records how long a request to `route` took until its response head.
    pub fn observe_request(&self, route: Route, duration: Duration) {
        self.request_duration
            .get_or_create(&[("route", route.label())])
            .observe(duration.as_secs_f64());
    }

    /// Encodes every metric in the Prometheus text format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String does not fail");
        text
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("inserts", &self.inserts.get())
            .field("publications", &self.publications.get())
            .field("pending", &self.pending.get())
            .finish_non_exhaustive()
    }
}

/// The connection and subscription counts that the broker keeps for its
/// own use, read at each scrape rather than kept twice.
#[derive(Debug)]
struct Counts {
    connections: Connections,
    subscriptions: Arc<AtomicUsize>,
}

impl Collector for Counts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        encode_gauge(
            &mut encoder,
            "subscribers",
            "Subscribers connected to GET /events.",
            self.subscriptions.load(Ordering::Acquire),
        )?;
        encode_gauge(
            &mut encoder,
            "open_connections",
            "Client connections open within the connection limit.",
            self.connections.count(),
        )?;
        let counter = ConstCounter::new(self.connections.accepted());
        let metric = encoder.encode_descriptor(
            "connections_accepted",
            "Client connections accepted, including those past the connection limit.",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

/// Encodes a gauge of `value` under `name`, which the registry prefixes.
fn encode_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: usize,
) -> Result<(), fmt::Error> {
    let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
    gauge.encode(metric)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_names_every_metric() {
        let connections = Connections::new(4);
        let subscriptions = Arc::new(AtomicUsize::new(2));
        let metrics = Metrics::new(connections.clone(), subscriptions);
        let _open = connections.open();
        metrics.inserts.inc_by(3);
        metrics.count_rejected("invalid_json");
        metrics.observe_request(Route::Insert, Duration::from_millis(2));

        let text = metrics.render();
        for line in [
            "broker_inserts_total 3",
            "broker_publications_total 0",
            "broker_pending_events 0",
            "broker_slow_clients_dropped_total 0",
            "broker_rejected_requests_total{code=\"invalid_json\"} 1",
            "broker_request_duration_seconds_count{route=\"insert\"} 1",
            "broker_subscribers 2",
            "broker_open_connections 1",
            "broker_connections_accepted_total 1",
            "# TYPE broker_request_duration_seconds histogram",
        ] {
            assert!(
                text.lines().any(|rendered| rendered == line),
                "missing line {line:?} in:\n{text}"
            );
        }
    }

    #[test]
    fn routes_from_paths() {
        assert_eq!(Route::from_path("/insert"), Some(Route::Insert));
        assert_eq!(Route::from_path("/collection/a"), Some(Route::Collection));
        assert_eq!(Route::from_path("/metrics"), Some(Route::Metrics));
        assert_eq!(Route::from_path("/nope"), None);
    }
}
