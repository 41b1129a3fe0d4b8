//! The daemon's Prometheus metrics (DESIGN.md section 4: the names are API), registered on a
//! registry passed in, with every label value pre-registered so series exist at 0 from the
//! start and hot paths hold resolved handles instead of looking labels up.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::budget::MemoryBudget;
use crate::segment::Rejection;

/// Why the daemon lost a segment it had accepted. The names are metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The memory budget was full when the segment arrived.
    BufferFull,
    /// The upload failed in a way retrying cannot fix (a non-retryable 4xx).
    RetriesExhausted,
    /// Retryable failures went on past the retry max age.
    Expired,
    /// Still held when the shutdown deadline passed.
    Shutdown,
}

impl DropReason {
    const ALL: [DropReason; 4] = [
        DropReason::BufferFull,
        DropReason::RetriesExhausted,
        DropReason::Expired,
        DropReason::Shutdown,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::BufferFull => "buffer_full",
            DropReason::RetriesExhausted => "retries_exhausted",
            DropReason::Expired => "expired",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// How a `PutTraceSegments` request ended. The names are metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UploadOutcome {
    /// 2xx.
    Ok,
    /// Throttling error codes or 429.
    Throttled,
    /// Any other 4xx.
    Http4xx,
    /// 5xx.
    Http5xx,
    /// No response within the request timeout.
    Timeout,
    /// Could not connect (refused, reset, DNS).
    Connection,
    /// Anything else.
    Other,
}

impl UploadOutcome {
    const ALL: [UploadOutcome; 7] = [
        UploadOutcome::Ok,
        UploadOutcome::Throttled,
        UploadOutcome::Http4xx,
        UploadOutcome::Http5xx,
        UploadOutcome::Timeout,
        UploadOutcome::Connection,
        UploadOutcome::Other,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            UploadOutcome::Ok => "ok",
            UploadOutcome::Throttled => "throttled",
            UploadOutcome::Http4xx => "http_4xx",
            UploadOutcome::Http5xx => "http_5xx",
            UploadOutcome::Timeout => "timeout",
            UploadOutcome::Connection => "connection",
            UploadOutcome::Other => "other",
        }
    }
}

/// How segments reach the daemon. The names are metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP datagrams.
    Udp,
    /// Newline-framed records over TCP.
    Tcp,
}

impl Transport {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// Resolved counters for one ingest transport (the hot path never looks labels up).
#[derive(Clone)]
pub struct IngestCounters {
    /// Segments (datagrams or records) received, valid or not.
    pub received: IntCounter,
    /// Bytes received.
    pub received_bytes: IntCounter,
    rejected: [IntCounter; 4],
    /// Segments refused because the budget was full.
    pub dropped_buffer_full: IntCounter,
    /// Segments received but not admitted because the daemon was shutting down.
    pub dropped_shutdown: IntCounter,
    /// UDP datagrams the kernel dropped at the socket (receive buffer full).
    pub kernel_drops: IntCounter,
}

impl IngestCounters {
    /// The counter for one rejection reason.
    pub fn rejected(&self, reason: Rejection) -> &IntCounter {
        &self.rejected[Rejection::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0)]
    }
}

/// Every metric the daemon exposes.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    segments_received: IntCounterVec,
    received_bytes: IntCounterVec,
    segments_rejected: IntCounterVec,
    segments_dropped: IntCounterVec,
    udp_kernel_drops: IntCounter,
    /// The UDP socket's receive buffer the kernel granted.
    pub udp_receive_buffer_bytes: IntGauge,
    /// Segments X-Ray accepted (unprocessed ones excluded).
    pub segments_sent: IntCounter,
    segments_unprocessed: IntCounterVec,
    upload_requests: IntCounterVec,
    /// Duration of each `PutTraceSegments` request.
    pub upload_duration_seconds: Histogram,
    /// Segments per uploaded batch.
    pub batch_segments: Histogram,
    /// Batches currently being uploaded or waiting to be retried.
    pub upload_in_flight_batches: IntGauge,
    /// Proxy requests by allow-listed path and status code.
    pub proxy_requests: IntCounterVec,
    /// Duration of proxied requests.
    pub proxy_duration_seconds: Histogram,
    /// `PutTelemetryRecords` records delivered.
    pub telemetry_records_sent: IntCounter,
    config_reloads: IntCounterVec,
    /// 1 if the last reload attempt succeeded.
    pub config_last_reload_successful: IntGauge,
    /// Unix time of the last successful reload (or of startup).
    pub config_last_reload_timestamp_seconds: Gauge,
}

impl Metrics {
    /// Creates and registers every metric on `registry`, plus the buffer gauges read from
    /// `budget` at scrape time and the standard `process_*` metrics.
    pub fn new(registry: Registry, budget: Arc<MemoryBudget>) -> prometheus::Result<Self> {
        let counter_vec = |name: &str, help: &str, label: &str, values: &[&str]| {
            let vec = IntCounterVec::new(Opts::new(name, help), &[label])?;
            for value in values {
                vec.with_label_values(&[value]);
            }
            registry.register(Box::new(vec.clone()))?;
            Ok::<_, prometheus::Error>(vec)
        };
        let transports = ["udp", "tcp"];
        let rejections = Rejection::ALL.map(Rejection::as_str);
        let mut rejection_labels = rejections.to_vec();
        rejection_labels.push("backend_rejected");
        let segments_received = counter_vec(
            "xray_segments_received_total",
            "Segments received (datagrams or TCP records, valid or not).",
            "transport",
            &transports,
        )?;
        let received_bytes = counter_vec(
            "xray_received_bytes_total",
            "Bytes of segment data received.",
            "transport",
            &transports,
        )?;
        let segments_rejected = counter_vec(
            "xray_segments_rejected_total",
            "Segments refused as invalid, at ingest or by X-Ray.",
            "reason",
            &rejection_labels,
        )?;
        let segments_dropped = counter_vec(
            "xray_segments_dropped_total",
            "Accepted segments the daemon lost, by reason.",
            "reason",
            &DropReason::ALL.map(DropReason::as_str),
        )?;
        let segments_unprocessed = counter_vec(
            "xray_segments_unprocessed_total",
            "Segments X-Ray returned as unprocessed.",
            "retryable",
            &["true", "false"],
        )?;
        let upload_requests = counter_vec(
            "xray_upload_requests_total",
            "PutTraceSegments requests by outcome.",
            "outcome",
            &UploadOutcome::ALL.map(UploadOutcome::as_str),
        )?;
        let config_reloads = counter_vec(
            "xray_config_reloads_total",
            "Configuration reload attempts by result.",
            "result",
            &["success", "failure"],
        )?;
        let proxy_requests = IntCounterVec::new(
            Opts::new(
                "xray_proxy_requests_total",
                "Requests to the TCP sampling proxy by path and status code.",
            ),
            &["path", "code"],
        )?;
        registry.register(Box::new(proxy_requests.clone()))?;

        let register = |collector: Box<dyn Collector>| registry.register(collector);
        // Not in xray_segments_dropped_total: these datagrams never reached the daemon, so
        // they are not in xray_segments_received_total either, and the accounting identity
        // (received = sent + rejected + dropped + buffered) holds without them.
        let udp_kernel_drops = IntCounter::new(
            "xray_udp_kernel_drops_total",
            "UDP datagrams the kernel dropped at the daemon's socket, nearly always because its \
             receive buffer was full (never received, so not in xray_segments_received_total).",
        )?;
        register(Box::new(udp_kernel_drops.clone()))?;
        let udp_receive_buffer_bytes = IntGauge::new(
            "xray_udp_receive_buffer_bytes",
            "The UDP socket's receive buffer the kernel granted (net.core.rmem_max caps the \
             requested Socket.ReceiveBufferBytes).",
        )?;
        register(Box::new(udp_receive_buffer_bytes.clone()))?;
        let segments_sent =
            IntCounter::new("xray_segments_sent_total", "Segments accepted by X-Ray.")?;
        register(Box::new(segments_sent.clone()))?;
        let upload_duration_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "xray_upload_duration_seconds",
                "Duration of PutTraceSegments requests.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        register(Box::new(upload_duration_seconds.clone()))?;
        let batch_segments = Histogram::with_opts(
            HistogramOpts::new("xray_batch_segments", "Segments per uploaded batch.")
                .buckets(vec![1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0]),
        )?;
        register(Box::new(batch_segments.clone()))?;
        let upload_in_flight_batches = IntGauge::new(
            "xray_upload_in_flight_batches",
            "Batches being uploaded or waiting for a retry.",
        )?;
        register(Box::new(upload_in_flight_batches.clone()))?;
        let proxy_duration_seconds = Histogram::with_opts(HistogramOpts::new(
            "xray_proxy_duration_seconds",
            "Duration of requests through the TCP sampling proxy.",
        ))?;
        register(Box::new(proxy_duration_seconds.clone()))?;
        let telemetry_records_sent = IntCounter::new(
            "xray_telemetry_records_sent_total",
            "Telemetry records delivered with PutTelemetryRecords.",
        )?;
        register(Box::new(telemetry_records_sent.clone()))?;
        let config_last_reload_successful = IntGauge::new(
            "xray_config_last_reload_successful",
            "Whether the last configuration reload succeeded (1) or failed (0).",
        )?;
        config_last_reload_successful.set(1);
        register(Box::new(config_last_reload_successful.clone()))?;
        let config_last_reload_timestamp_seconds = Gauge::new(
            "xray_config_last_reload_timestamp_seconds",
            "Unix time of the last successful configuration load.",
        )?;
        config_last_reload_timestamp_seconds.set(unix_now_secs());
        register(Box::new(config_last_reload_timestamp_seconds.clone()))?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "xray_build_info",
                "Build information; the value is always 1.",
            ),
            &["version", "commit"],
        )?;
        build_info
            .with_label_values(&[crate::VERSION, crate::GIT_COMMIT])
            .set(1);
        register(Box::new(build_info))?;
        register(Box::new(BudgetCollector::new(budget)?))?;
        #[cfg(target_os = "linux")]
        register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        Ok(Metrics {
            registry,
            segments_received,
            received_bytes,
            segments_rejected,
            segments_dropped,
            udp_kernel_drops,
            udp_receive_buffer_bytes,
            segments_sent,
            segments_unprocessed,
            upload_requests,
            upload_duration_seconds,
            batch_segments,
            upload_in_flight_batches,
            proxy_requests,
            proxy_duration_seconds,
            telemetry_records_sent,
            config_reloads,
            config_last_reload_successful,
            config_last_reload_timestamp_seconds,
        })
    }

    /// The registry everything is registered on.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Resolved handles for one ingest transport.
    pub fn ingest(&self, transport: Transport) -> IngestCounters {
        let t = transport.as_str();
        IngestCounters {
            received: self.segments_received.with_label_values(&[t]),
            received_bytes: self.received_bytes.with_label_values(&[t]),
            rejected: Rejection::ALL
                .map(|r| self.segments_rejected.with_label_values(&[r.as_str()])),
            dropped_buffer_full: self.dropped(DropReason::BufferFull),
            dropped_shutdown: self.dropped(DropReason::Shutdown),
            kernel_drops: self.udp_kernel_drops.clone(),
        }
    }

    /// The dropped-segments counter for `reason`.
    pub fn dropped(&self, reason: DropReason) -> IntCounter {
        self.segments_dropped.with_label_values(&[reason.as_str()])
    }

    /// Segments X-Ray refused (non-retryable unprocessed entries).
    pub fn backend_rejected(&self) -> IntCounter {
        self.segments_rejected
            .with_label_values(&["backend_rejected"])
    }

    /// Unprocessed segments by retryability.
    pub fn unprocessed(&self, retryable: bool) -> IntCounter {
        self.segments_unprocessed
            .with_label_values(&[if retryable { "true" } else { "false" }])
    }

    /// Upload requests by outcome.
    pub fn upload_request(&self, outcome: UploadOutcome) -> IntCounter {
        self.upload_requests.with_label_values(&[outcome.as_str()])
    }

    /// Records a reload attempt.
    pub fn config_reloaded(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.config_reloads.with_label_values(&[result]).inc();
        self.config_last_reload_successful.set(i64::from(success));
        if success {
            self.config_last_reload_timestamp_seconds
                .set(unix_now_secs());
        }
    }

    /// Sum of a counter family over all its label values.
    pub fn total(&self, name: &str) -> u64 {
        let families = self.registry.gather();
        families
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric())
            .map(|metric| metric.get_counter().value() as u64)
            .sum()
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode_text(&self) -> String {
        let mut out = String::new();
        // Encoding to a String cannot fail for well-formed families.
        let _ = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out);
        out
    }
}

/// Publishes the budget's state at scrape time, so the hot path only touches its atomics.
struct BudgetCollector {
    budget: Arc<MemoryBudget>,
    used: IntGauge,
    limit: IntGauge,
    segments: IntGauge,
    descs: Vec<Desc>,
}

impl BudgetCollector {
    fn new(budget: Arc<MemoryBudget>) -> prometheus::Result<Self> {
        let used = IntGauge::new(
            "xray_buffer_used_bytes",
            "Bytes of the memory budget held by segments (queued, batched, in flight).",
        )?;
        let limit = IntGauge::new("xray_buffer_limit_bytes", "The memory budget in bytes.")?;
        let segments = IntGauge::new(
            "xray_buffer_segments",
            "Segments currently held by the daemon (received but not yet sent or dropped).",
        )?;
        let descs = [&used, &limit, &segments]
            .iter()
            .flat_map(|g| g.desc().into_iter().cloned())
            .collect();
        Ok(BudgetCollector {
            budget,
            used,
            limit,
            segments,
            descs,
        })
    }
}

impl Collector for BudgetCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.used.set(self.budget.used_bytes() as i64);
        self.limit.set(self.budget.limit_bytes() as i64);
        self.segments.set(self.budget.held_segments() as i64);
        [&self.used, &self.limit, &self.segments]
            .iter()
            .flat_map(|g| g.collect())
            .collect()
    }
}

fn unix_now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_exists_at_zero_from_the_start() {
        let metrics = Metrics::new(Registry::new(), MemoryBudget::new(1 << 20)).unwrap();
        let text = metrics.encode_text();
        for series in [
            r#"xray_segments_received_total{transport="udp"} 0"#,
            r#"xray_segments_rejected_total{reason="invalid_header"} 0"#,
            r#"xray_segments_rejected_total{reason="backend_rejected"} 0"#,
            r#"xray_segments_dropped_total{reason="buffer_full"} 0"#,
            r#"xray_segments_dropped_total{reason="shutdown"} 0"#,
            r#"xray_upload_requests_total{outcome="throttled"} 0"#,
            "xray_segments_sent_total 0",
            "xray_buffer_limit_bytes 1048576",
            "xray_buffer_segments 0",
            "xray_config_last_reload_successful 1",
        ] {
            assert!(text.contains(series), "missing {series} in\n{text}");
        }
        assert!(text.contains("xray_build_info{"));
    }

    #[test]
    fn ingest_handles_count_into_the_labelled_series() {
        let metrics = Metrics::new(Registry::new(), MemoryBudget::new(1 << 20)).unwrap();
        let udp = metrics.ingest(Transport::Udp);
        udp.received.inc_by(3);
        udp.rejected(Rejection::EmptyBody).inc();
        udp.dropped_buffer_full.inc();
        let text = metrics.encode_text();
        assert!(text.contains(r#"xray_segments_received_total{transport="udp"} 3"#));
        assert!(text.contains(r#"xray_segments_rejected_total{reason="empty_body"} 1"#));
        assert!(text.contains(r#"xray_segments_dropped_total{reason="buffer_full"} 1"#));
        assert_eq!(metrics.total("xray_segments_received_total"), 3);
    }
}
