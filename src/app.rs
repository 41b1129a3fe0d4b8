//! The daemon assembled: `Daemon::start` sizes the budget, binds every socket and builds the
//! sink (the one fallible phase); `Daemon::run` moves segments and applies reloads until
//! shutdown, then drains in order (ingest, batcher, uploads) under the shutdown deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::status::Destination;
use crate::admin::{self, AdminServer, AdminState, Latch, Readiness, StatusBoard};
use crate::aws::target::XrayTarget;
use crate::budget::{self, MemoryBudget};
use crate::config::{Config, Loaded};
use crate::ingest::udp::{self, UdpListener};
use crate::ingest::{Admission, SegmentReceiver, SegmentSender};
use crate::logging::LogHandle;
use crate::metrics::{Metrics, Transport};
use crate::net;
use crate::proxy::{ProxyPolicy, TcpPortState, TcpServer};
use crate::reload::{self, ConfigInputs, ConfigWatcher, ReloadRequest};
use crate::telemetry::{self, BackendErrors};
use crate::upload::local::LocalSink;
use crate::upload::retry::RetryPolicy;
use crate::upload::xray::XraySink;
use crate::upload::{Concurrency, Sink, Uploader};

/// How long a listener moved by a reload keeps receiving on its old address.
const REBIND_LINGER: Duration = Duration::from_secs(2);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listen address could not be bound.
    #[error(transparent)]
    Bind(#[from] net::BindError),
    /// No region for uploads.
    #[error(transparent)]
    Region(#[from] crate::aws::NoRegion),
    /// The AWS transport (outbound proxy, `NoVerifySSL` TLS) cannot be set up.
    #[error(transparent)]
    Aws(#[from] crate::aws::AwsError),
    /// No X-Ray endpoint for the region and the FIPS/dual-stack settings.
    #[error(transparent)]
    Endpoint(#[from] crate::aws::endpoint::EndpointError),
    /// The X-Ray endpoint is not a usable URL (the Go daemon exits too).
    #[error(transparent)]
    InvalidEndpoint(#[from] crate::aws::target::InvalidEndpoint),
    /// The local sink could not be opened.
    #[error("Unable to open local sink {path}: {source}")]
    LocalSink {
        /// The sink path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The admin server thread could not start.
    #[error("Unable to start the admin server: {0}")]
    Admin(std::io::Error),
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
    inputs: ConfigInputs,
    loaded: Arc<Loaded>,
    config_tx: watch::Sender<Arc<Loaded>>,
    log: Option<LogHandle>,
    metrics: Metrics,
    budget: Arc<MemoryBudget>,
    status: Arc<StatusBoard>,
    readiness: Readiness,
    pipeline_latch: Option<Latch>,
    admission: Admission,
    concurrency: Arc<Concurrency>,
    sink_tx: watch::Sender<Arc<Sink>>,
    proxy_target: watch::Sender<Option<Arc<XrayTarget>>>,
    proxy_policy: watch::Sender<ProxyPolicy>,
    tcp: TcpServer,
    tcp_state: TcpPortState,
    tcp_connections: TaskTracker,
    retry_policy: watch::Sender<RetryPolicy>,
    udp: UdpListener,
    retiring: JoinSet<()>,
    segments_tx: SegmentSender,
    segments_rx: Option<SegmentReceiver>,
    stop_ingest: CancellationToken,
    admin: AdminServer,
    admin_addr: SocketAddr,
    reload_tx: mpsc::Sender<ReloadRequest>,
    reload_rx: mpsc::Receiver<ReloadRequest>,
    _watcher: Option<ConfigWatcher>,
    backend_errors: Arc<BackendErrors>,
    telemetry: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl Daemon {
    /// Sizes the budget, starts the admin server, builds the sink and binds the UDP socket,
    /// logging the Go daemon's startup lines in its order. `inputs` are kept for reloads;
    /// `log` (if given) is adjusted by them.
    pub async fn start(
        inputs: ConfigInputs,
        loaded: Loaded,
        log: Option<LogHandle>,
        registry: Registry,
    ) -> Result<Daemon, StartError> {
        let config = loaded.config.clone();
        tracing::info!(
            "Initializing AWS X-Ray daemon {} (commit {})",
            crate::VERSION,
            crate::GIT_COMMIT
        );
        let readiness = Readiness::new();
        let udp_latch = readiness.latch("udp listener not bound");
        let tcp_latch = readiness.latch("tcp listener not bound");
        let pipeline_latch = readiness.latch("pipeline not running");
        let budget_mb = budget_mb(&config);
        tracing::info!("Using buffer memory limit of {budget_mb} MB");
        let budget = MemoryBudget::new(budget::mb_to_bytes(budget_mb));
        let metrics = Metrics::new(registry, Arc::clone(&budget))?;
        let status = Arc::new(StatusBoard::new());
        let loaded = Arc::new(loaded);
        let (config_tx, config_rx) = watch::channel(Arc::clone(&loaded));
        let (reload_tx, reload_rx) = mpsc::channel(8);

        let admin_listener = net::bind_tcp(&config.admin_address)?;
        let admin_addr = admin_listener.local_addr().map_err(StartError::Admin)?;
        let router = admin::router(AdminState {
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            status: Arc::clone(&status),
            budget: Arc::clone(&budget),
            config: config_rx,
            reload: reload_tx.clone(),
        });
        let admin = AdminServer::spawn(admin_listener, router).map_err(StartError::Admin)?;
        tracing::info!("Starting admin server on {admin_addr}");

        let env = |name: &str| inputs.env.get(name).cloned();
        let upstream = build_upstream(&config, &env, &status).await?;
        let (sink_tx, _) = watch::channel(Arc::new(upstream.sink));
        let stop_ingest = CancellationToken::new();
        let (segments_tx, segments_rx) = mpsc::unbounded_channel();
        let admission = Admission::new(
            Arc::clone(&budget),
            metrics.ingest(Transport::Udp),
            Arc::clone(&status),
        );
        let udp = UdpListener::bind(
            &config.udp_address,
            config.receive_buffer_bytes,
            &admission,
            &segments_tx,
            stop_ingest.child_token(),
        )?;
        note_listener(&udp, &metrics);
        udp_latch.release();

        let (proxy_target, _) = watch::channel(upstream.proxy);
        let proxy_policy = watch::Sender::new(ProxyPolicy::from_config(&config));
        let tcp_state = TcpPortState {
            target: proxy_target.subscribe(),
            policy: proxy_policy.subscribe(),
            metrics: metrics.clone(),
            admission: Admission::new(
                Arc::clone(&budget),
                metrics.ingest(Transport::Tcp),
                Arc::clone(&status),
            ),
            segments: segments_tx.clone(),
        };
        let tcp_connections = TaskTracker::new();
        let tcp = serve_tcp(
            net::bind_tcp(&config.tcp_address)?,
            &config.tcp_address,
            tcp_state.clone(),
            &stop_ingest,
            &tcp_connections,
        )?;
        tcp_latch.release();

        let watcher = loaded.file.as_ref().and_then(|file| {
            ConfigWatcher::start(file, reload_tx.clone(), stop_ingest.clone())
                .map_err(|e| tracing::warn!("Not watching {} for changes: {e}", file.display()))
                .ok()
        });
        Ok(Daemon {
            inputs,
            loaded,
            config_tx,
            log,
            metrics,
            budget,
            status,
            readiness,
            pipeline_latch: Some(pipeline_latch),
            admission,
            concurrency: Concurrency::new(config.concurrency),
            sink_tx,
            proxy_target,
            proxy_policy,
            tcp,
            tcp_state,
            tcp_connections,
            retry_policy: watch::Sender::new(retry_policy(&config)),
            udp,
            retiring: JoinSet::new(),
            segments_tx,
            segments_rx: Some(segments_rx),
            stop_ingest,
            admin,
            admin_addr,
            reload_tx,
            reload_rx,
            _watcher: watcher,
            backend_errors: Arc::new(BackendErrors::default()),
            telemetry: None,
        })
    }

    /// The bound UDP address.
    pub fn udp_local_addr(&self) -> SocketAddr {
        self.udp
            .local_addr()
            .expect("a bound socket has an address")
    }

    /// The TCP address (sampling proxy and segment streams).
    pub fn tcp_local_addr(&self) -> SocketAddr {
        self.tcp.local_addr()
    }

    /// The admin server's address.
    pub fn admin_local_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The daemon's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The memory budget.
    pub fn budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    /// Where reload requests go (SIGHUP forwarding).
    pub fn reload_sender(&self) -> mpsc::Sender<ReloadRequest> {
        self.reload_tx.clone()
    }

    /// Runs until `shutdown` completes, applying reloads meanwhile; then stops ingest and
    /// flushes what it holds within the shutdown timeout. Whatever is still held then is
    /// counted as dropped (`shutdown`).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> RunSummary {
        let abort_uploads = CancellationToken::new();
        let uploader = Uploader::new(
            self.sink_tx.subscribe(),
            Arc::clone(&self.concurrency),
            self.retry_policy.subscribe(),
            self.metrics.clone(),
            Arc::clone(&self.status),
            Arc::clone(&self.backend_errors),
            abort_uploads.clone(),
        );
        let segments_rx = self.segments_rx.take().expect("run is called once");
        let mut pipeline = tokio::spawn(uploader.run(segments_rx));
        drop(self.pipeline_latch.take());
        self.restart_telemetry();

        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(request) = self.reload_rx.recv() => self.reload(request).await,
            }
        }

        self.readiness.begin_shutdown();
        tracing::debug!("Shutdown initiated: stopping ingest");
        self.stop_ingest.cancel();
        self.udp.stop().await;
        self.tcp.stop_accepting().await;
        self.tcp_connections.close();
        self.tcp_connections.wait().await;
        while self.retiring.join_next().await.is_some() {}
        let telemetry = self.telemetry.take();
        // The receivers are gone; with the last senders dropped the batcher sees the end.
        drop(self.tcp_state);
        drop(self.segments_tx);

        let shutdown_timeout = self.loaded.config.shutdown_timeout;
        let drained = tokio::time::timeout(shutdown_timeout, &mut pipeline)
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                "Shutdown timeout of {shutdown_timeout:?} reached with {} segments still held; dropping them",
                self.budget.held_segments()
            );
            abort_uploads.cancel();
            let _ = pipeline.await;
        }
        let total = |name| self.metrics.total(name);
        tracing::debug!(
            "Trace segment: received: {}, sent: {}, rejected: {}, dropped: {}",
            total("xray_segments_received_total"),
            total("xray_segments_sent_total"),
            total("xray_segments_rejected_total"),
            total("xray_segments_dropped_total"),
        );
        // After the flush, so the final telemetry record counts it.
        if let Some((stop, task)) = telemetry {
            stop.cancel();
            let _ = task.await;
        }
        self.admin.stop();
        RunSummary { drained }
    }

    /// (Re)starts the telemetry reporter for the current configuration, if it is enabled.
    fn restart_telemetry(&mut self) {
        if let Some((stop, task)) = self.telemetry.take() {
            stop.cancel();
            self.retiring.spawn(async move {
                let _ = task.await;
            });
        }
        let config = &self.loaded.config;
        if !telemetry::enabled(config) {
            return;
        }
        let stop = CancellationToken::new();
        let (metrics, errors, sink) = (
            self.metrics.clone(),
            Arc::clone(&self.backend_errors),
            self.sink_tx.subscribe(),
        );
        let (env, local_mode, arn) = (
            self.inputs.env.clone(),
            config.local_mode,
            config.resource_arn.clone(),
        );
        let task_stop = stop.clone();
        let task = tokio::spawn(async move {
            let lookup = |name: &str| env.get(name).cloned();
            let identity = telemetry::resolve_identity(local_mode, arn.as_deref(), &lookup).await;
            telemetry::run(
                identity,
                metrics,
                errors,
                sink,
                telemetry::INTERVAL,
                task_stop,
            )
            .await;
        });
        self.telemetry = Some((stop, task));
    }

    async fn reload(&mut self, request: ReloadRequest) {
        let trigger = request.trigger.as_str();
        let outcome = match self.inputs.load() {
            Ok(loaded) => self.apply(loaded).await,
            Err(error) => Err(error.to_string()),
        };
        match &outcome {
            Ok(summary) => tracing::info!("Reloaded configuration ({trigger}): {summary}"),
            Err(error) => tracing::error!(
                "Reloading configuration ({trigger}) failed; keeping the current configuration: {error}"
            ),
        }
        self.metrics.config_reloaded(outcome.is_ok());
        self.status.reloaded(match &outcome {
            Ok(summary) => format!("success: {summary}"),
            Err(error) => format!("failure: {error}"),
        });
        if let Some(reply) = request.reply {
            let _ = reply.send(outcome);
        }
    }

    /// Applies `new` all-or-nothing: everything that can fail (binding new sockets, building
    /// the sink, opening the log file) happens first; only then is anything changed.
    async fn apply(&mut self, new: Loaded) -> Result<String, String> {
        let old = self.loaded.config.clone();
        let config = new.config.clone();
        let changed = reload::changed_keys(&old, &config);

        let new_udp = (old.udp_address != config.udp_address)
            .then(|| udp::bind(&config.udp_address, config.receive_buffer_bytes))
            .transpose()
            .map_err(|e| e.to_string())?;
        let new_tcp = (old.tcp_address != config.tcp_address)
            .then(|| net::bind_tcp(&config.tcp_address))
            .transpose()
            .map_err(|e| e.to_string())?;
        let new_admin = (old.admin_address != config.admin_address)
            .then(|| net::bind_tcp(&config.admin_address))
            .transpose()
            .map_err(|e| e.to_string())?;
        let new_upstream = if reload::sink_changed(&old, &config) {
            let env = |name: &str| self.inputs.env.get(name).cloned();
            let upstream = build_upstream(&config, &env, &self.status).await;
            Some(upstream.map_err(|e| e.to_string())?)
        } else {
            None
        };
        if let (Some(path), true) = (&config.log_path, old.log_path != config.log_path) {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("Logging.LogPath: cannot open {}: {e}", path.display()))?;
        }

        if let Some(log) = &self.log {
            if old.log_level != config.log_level {
                if let Some(warning) = log.set_level(&config.log_level) {
                    tracing::warn!("{warning}");
                }
            }
            if old.log_path != config.log_path || old.log_rotation != config.log_rotation {
                if let Err(error) =
                    log.set_destination(config.log_path.clone(), config.log_rotation)
                {
                    tracing::error!("Keeping the current log destination: {error}");
                }
            }
        }
        if old.total_buffer_size_mb != config.total_buffer_size_mb {
            self.budget
                .set_limit_bytes(budget::mb_to_bytes(budget_mb(&config)));
        }
        self.concurrency.set(config.concurrency);
        self.retry_policy.send_replace(retry_policy(&config));
        if let Some(upstream) = new_upstream {
            self.sink_tx.send_replace(Arc::new(upstream.sink));
            self.proxy_target.send_replace(upstream.proxy);
        }
        self.proxy_policy
            .send_replace(ProxyPolicy::from_config(&config));
        if let Some(listener) = new_tcp {
            let server = serve_tcp(
                listener,
                &config.tcp_address,
                self.tcp_state.clone(),
                &self.stop_ingest,
                &self.tcp_connections,
            )
            .map_err(|e| e.to_string())?;
            // Connections already open stay served; only new ones go to the new address.
            self.retiring
                .spawn(std::mem::replace(&mut self.tcp, server).stop_accepting());
        }
        match new_udp {
            Some(socket) => {
                // Only a thread that cannot be created fails here; the old listener stays.
                let listener = UdpListener::start(
                    socket,
                    &self.admission,
                    &self.segments_tx,
                    self.stop_ingest.child_token(),
                )
                .map_err(|e| {
                    net::BindError::new(net::Network::Udp, &config.udp_address, &e).to_string()
                })?;
                let previous = std::mem::replace(&mut self.udp, listener);
                note_listener(&self.udp, &self.metrics);
                self.retiring.spawn(previous.retire(REBIND_LINGER));
            }
            None if old.receive_buffer_bytes != config.receive_buffer_bytes => {
                udp::set_receive_buffer(
                    &socket2::SockRef::from(self.udp.socket()),
                    config.receive_buffer_bytes,
                );
                note_listener(&self.udp, &self.metrics);
            }
            None => {}
        }
        if let Some(listener) = new_admin {
            self.admin_addr = listener.local_addr().map_err(|e| e.to_string())?;
            self.admin.rebind(listener);
            tracing::info!("Admin server moved to {}", self.admin_addr);
        }
        self.loaded = Arc::new(new);
        self.config_tx.send_replace(Arc::clone(&self.loaded));
        if old.disable_telemetry != config.disable_telemetry
            || old.resource_arn != config.resource_arn
            || old.local_mode != config.local_mode
        {
            self.restart_telemetry();
        }
        Ok(if changed.is_empty() {
            "no settings changed".to_owned()
        } else {
            format!("changed {}", changed.join(", "))
        })
    }
}

fn retry_policy(config: &Config) -> RetryPolicy {
    RetryPolicy {
        max_age: config.retry_max_age,
        ..RetryPolicy::default()
    }
}

fn budget_mb(config: &Config) -> u64 {
    match config.total_buffer_size_mb {
        0 => budget::detect_auto_budget_mb(),
        mb => mb,
    }
}

/// Logs where the UDP listener is and shows its receive buffer in the metrics.
fn note_listener(listener: &UdpListener, metrics: &Metrics) {
    let buffer_bytes = udp::granted_receive_buffer(listener.socket()).unwrap_or(0);
    metrics
        .udp_receive_buffer_bytes
        .set(i64::try_from(buffer_bytes).unwrap_or(i64::MAX));
    tracing::debug!(
        "Listening on UDP {} (receive buffer {buffer_bytes} bytes)",
        listener
            .local_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string()),
    );
}

/// The runtime's worker threads unless `TOKIO_WORKER_THREADS` says otherwise. UDP is
/// received on a thread of its own, so the runtime only uploads, proxies and serves TCP: one
/// worker does that for 100,000 segments/s, and a second mostly adds wake-ups (every task it
/// could steal wakes it) that cost 10-20 % more CPU per segment (docs/performance.md).
pub const RUNTIME_WORKER_THREADS: usize = 1;

/// The daemon's tokio runtime: [`RUNTIME_WORKER_THREADS`] workers, or as many as
/// `TOKIO_WORKER_THREADS` (read by tokio itself) when `worker_threads_from_env`.
pub fn runtime(worker_threads_from_env: bool) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if !worker_threads_from_env {
        builder.worker_threads(RUNTIME_WORKER_THREADS);
    }
    builder.enable_all().build()
}

/// Where segments and proxied requests go.
struct Upstream {
    sink: Sink,
    /// `None` with the local sink: there is no X-Ray to proxy to.
    proxy: Option<Arc<XrayTarget>>,
}

/// Serves the TCP port on `listener` (bound to `address`).
fn serve_tcp(
    listener: std::net::TcpListener,
    address: &str,
    state: TcpPortState,
    stop: &CancellationToken,
    connections: &TaskTracker,
) -> Result<TcpServer, net::BindError> {
    let server = TcpServer::start(listener, state, stop.child_token(), connections.clone())
        .map_err(|e| net::BindError::new(net::Network::Tcp, address, &e))?;
    tracing::info!("Starting proxy http server on {}", server.local_addr());
    Ok(server)
}

async fn build_upstream(
    config: &Config,
    env: crate::aws::Env<'_>,
    status: &Arc<StatusBoard>,
) -> Result<Upstream, StartError> {
    if let Some(path) = &config.local_sink {
        let sink = LocalSink::open(path).map_err(|source| StartError::LocalSink {
            path: path.clone(),
            source,
        })?;
        tracing::info!(
            "Writing segments to local sink {} instead of uploading",
            sink.target()
        );
        status.set_destination(Destination {
            sink: "local".into(),
            local_sink: Some(path.clone()),
            ..Destination::default()
        });
        return Ok(Upstream {
            sink: Sink::Local(sink),
            proxy: None,
        });
    }
    let (region, source) =
        crate::aws::resolve_region(config.region.as_deref(), config.local_mode, env).await?;
    tracing::info!("Using region: {region}");
    let settings = crate::aws::AwsSettings {
        region: region.clone(),
        proxy_address: config.proxy_address.clone(),
        role_arn: config.role_arn.clone(),
        role_external_id: config.role_external_id.clone(),
        role_session_name: config.role_session_name.clone(),
        no_verify_ssl: config.no_verify_ssl,
    };
    let aws = crate::aws::setup(&settings, env).await?;
    let endpoint = xray_endpoint(config.endpoint.as_deref(), &region, &aws.sdk_config).await?;
    tracing::info!(
        "HTTP Proxy server using X-Ray Endpoint : {}",
        crate::config::redact_url(&endpoint)
    );
    let target = Arc::new(aws.xray_target(&endpoint)?);
    status.set_destination(Destination {
        sink: "xray".into(),
        region: Some(region),
        region_source: Some(source.as_str().into()),
        endpoint: Some(endpoint),
        ..Destination::default()
    });
    let probe_status = Arc::clone(status);
    let probe_config = aws.sdk_config.clone();
    tokio::spawn(async move {
        probe_status.set_credential_source(crate::aws::credential_source(&probe_config).await);
    });
    Ok(Upstream {
        sink: Sink::Xray(XraySink::new(
            Arc::clone(&target),
            &aws.sdk_config,
            aws.xray_http_client.clone(),
        )?),
        proxy: Some(target),
    })
}

/// The X-Ray endpoint for uploads, telemetry and the sampling proxy: `Endpoint` when set,
/// else the SDK's for the region, its FIPS and dual-stack settings and a configured endpoint
/// URL (`AWS_ENDPOINT_URL_XRAY`, ...).
async fn xray_endpoint(
    configured: Option<&str>,
    region: &str,
    sdk_config: &aws_config::SdkConfig,
) -> Result<String, crate::aws::endpoint::EndpointError> {
    use crate::config::redact_url;
    let variants = crate::aws::endpoint::EndpointVariants::of(sdk_config);
    if let Some(endpoint) = configured {
        let endpoint_shown = redact_url(endpoint);
        tracing::debug!("Using Endpoint: {endpoint_shown}");
        if variants.any() {
            tracing::warn!(
                "Endpoint {endpoint_shown} is set, so the SDK's {} endpoint setting does not apply",
                variants.describe()
            );
        }
        return Ok(endpoint.to_owned());
    }
    tracing::debug!("Using default X-Ray endpoint");
    let url = crate::aws::endpoint::configured_url(sdk_config);
    let endpoint = crate::aws::endpoint::resolve(region, variants, url.as_deref()).await?;
    let endpoint_shown = redact_url(&endpoint);
    if url.is_some() {
        tracing::info!("Using X-Ray endpoint {endpoint_shown} (AWS_ENDPOINT_URL_XRAY, AWS_ENDPOINT_URL or the profile's endpoint_url)");
    } else if variants.any() {
        tracing::info!(
            "Using {} X-Ray endpoint {endpoint_shown}",
            variants.describe()
        );
    } else {
        tracing::info!("Using X-Ray endpoint {endpoint_shown}");
    }
    Ok(endpoint)
}
