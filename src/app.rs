//! The daemon assembled: `Daemon::start` sizes the budget, builds the sink and binds every
//! socket (the one fallible phase); `Daemon::run` moves segments until shutdown, then drains
//! in order (ingest, batcher, uploads) under the shutdown deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::Registry;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::budget::{self, MemoryBudget};
use crate::config::Config;
use crate::ingest::{udp, Admission};
use crate::metrics::{DropReason, Metrics, Transport};
use crate::upload::local::LocalSink;
use crate::upload::retry::RetryPolicy;
use crate::upload::xray::XraySink;
use crate::upload::{Sink, Uploader};

/// UDP receive tasks sharing the socket (the Go daemon runs two readers).
const UDP_RECEIVE_WORKERS: usize = 2;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listen address could not be bound.
    #[error(transparent)]
    Bind(#[from] udp::BindError),
    /// No region for uploads.
    #[error(transparent)]
    Region(#[from] crate::aws::NoRegion),
    /// The local sink could not be opened.
    #[error("Unable to open local sink {path}: {source}")]
    LocalSink {
        /// The sink path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Metrics registration failed (a programming error).
    #[error("metrics registration failed: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// What a finished run did, for the exit log and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    /// Whether everything held was flushed before the deadline.
    pub drained: bool,
}

/// A started daemon: sockets bound, sink ready.
pub struct Daemon {
    config: Config,
    metrics: Metrics,
    budget: Arc<MemoryBudget>,
    udp: Arc<UdpSocket>,
    sink: watch::Receiver<Arc<Sink>>,
    _sink_tx: watch::Sender<Arc<Sink>>,
}

impl Daemon {
    /// Sizes the budget, builds the sink and binds the UDP socket, logging the Go daemon's
    /// startup lines in its order.
    pub async fn start(config: Config, registry: Registry) -> Result<Daemon, StartError> {
        tracing::info!("Initializing AWS X-Ray daemon {} (commit {})", crate::VERSION, crate::GIT_COMMIT);
        let budget_mb = match config.total_buffer_size_mb {
            0 => budget::detect_auto_budget_mb(),
            mb => mb,
        };
        tracing::info!("Using buffer memory limit of {budget_mb} MB");
        let budget = MemoryBudget::new(budget::mb_to_bytes(budget_mb));
        let metrics = Metrics::new(registry, Arc::clone(&budget))?;
        let sink = build_sink(&config).await?;
        let udp = udp::bind(&config.udp_address, config.receive_buffer_bytes)?;
        tracing::debug!(
            "Listening on UDP {} (receive buffer {} bytes)",
            udp.local_addr().map_or_else(|_| config.udp_address.clone(), |a| a.to_string()),
            udp::receive_buffer_size(&udp).unwrap_or(0)
        );
        let (sink_tx, sink_rx) = watch::channel(Arc::new(sink));
        Ok(Daemon {
            config,
            metrics,
            budget,
            udp: Arc::new(udp),
            sink: sink_rx,
            _sink_tx: sink_tx,
        })
    }

    /// The bound UDP address.
    pub fn udp_local_addr(&self) -> SocketAddr {
        self.udp.local_addr().expect("a bound socket has an address")
    }

    /// The daemon's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The memory budget.
    pub fn budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    /// Runs until `shutdown` completes, then stops ingest and flushes what it holds within
    /// the shutdown timeout; whatever is still held then is counted as dropped (`shutdown`).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> RunSummary {
        let stop_ingest = CancellationToken::new();
        let abort_uploads = CancellationToken::new();
        let (segments_tx, segments_rx) = mpsc::unbounded_channel();
        let admission = Admission::new(Arc::clone(&self.budget), self.metrics.ingest(Transport::Udp));
        let mut receivers = JoinSet::new();
        for _ in 0..UDP_RECEIVE_WORKERS {
            receivers.spawn(udp::receive(
                Arc::clone(&self.udp),
                admission.clone(),
                segments_tx.clone(),
                stop_ingest.clone(),
            ));
        }
        // Only the receivers hold senders now: when they stop, the batcher sees the end.
        drop(segments_tx);
        let uploader = Uploader::new(
            self.sink.clone(),
            self.config.concurrency,
            RetryPolicy::default(),
            self.metrics.clone(),
            abort_uploads.clone(),
        );
        let mut pipeline = tokio::spawn(uploader.run(segments_rx));

        shutdown.await;
        tracing::debug!("Shutdown initiated: stopping ingest");
        stop_ingest.cancel();
        while receivers.join_next().await.is_some() {}
        drop(self.udp);

        let drained = tokio::time::timeout(self.config.shutdown_timeout, &mut pipeline)
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                "Shutdown timeout of {:?} reached with {} segments still held; dropping them",
                self.config.shutdown_timeout,
                self.budget.held_segments()
            );
            abort_uploads.cancel();
            let _ = pipeline.await;
        }
        tracing::debug!(
            "Trace segment: received: {}, sent: {}, dropped at shutdown: {}",
            self.metrics.total("xray_segments_received_total"),
            self.metrics.segments_sent.get(),
            self.metrics.dropped(DropReason::Shutdown).get()
        );
        RunSummary { drained }
    }
}

async fn build_sink(config: &Config) -> Result<Sink, StartError> {
    if let Some(path) = &config.local_sink {
        let sink = LocalSink::open(path).map_err(|source| StartError::LocalSink {
            path: path.clone(),
            source,
        })?;
        tracing::info!("Writing segments to local sink {} instead of uploading", sink.target());
        return Ok(Sink::Local(sink));
    }
    let (region, _source) = crate::aws::resolve_region(config.region.as_deref(), config.local_mode).await?;
    tracing::info!("Using region: {region}");
    match &config.endpoint {
        Some(endpoint) => tracing::debug!("Using Endpoint: {endpoint}"),
        None => tracing::debug!("Using default X-Ray endpoint"),
    }
    let sdk_config = crate::aws::sdk_config(&region).await;
    Ok(Sink::Xray(XraySink::new(&sdk_config, config.endpoint.as_deref())))
}
