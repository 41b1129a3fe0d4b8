//! `xray-daemon`: a Kubernetes-native, drop-in replacement for the AWS X-Ray daemon.
//!
//! # Layout
//! Modules follow the data flow, from the command line to X-Ray:
//! - [`cli`]: the Go `flag`-compatible command line (`-n us-east-1`, `-region=x`, ...).
//! - [`config`]: defaults < cfg.yaml < `XRAY_*` environment < flags, validated into a
//!   [`config::Config`]; the Go daemon's cfg.yaml checks and messages.
//! - [`logging`]: the Go daemon's log line format, levels and file rotation.
//! - [`segment`]: the wire format: header/document split and header acceptance (pure).
//! - [`budget`]: the one memory budget every held segment is charged to.
//! - [`ingest`]: admission of received bytes into segments, the UDP listener, and the count
//!   of datagrams the kernel dropped at its socket.
//! - [`batch`]: when a batch is ready (pure, time passed in).
//! - [`upload`]: batches to X-Ray (`PutTraceSegments`) or the local sink, with retries.
//! - [`aws`]: region resolution, credentials, the outbound HTTP clients (proxy, and the
//!   `NoVerifySSL` transport for X-Ray), the X-Ray endpoint (FIPS, dual-stack, endpoint URL
//!   settings), the SDK configuration, and the X-Ray target: SigV4 signing with clock-skew
//!   correction for the calls the daemon signs itself (uploads, the sampling proxy).
//! - [`metrics`]: every Prometheus metric (names are API).
//! - [`admin`]: the admin HTTP server: probes, metrics, diagnostics, reload endpoint.
//! - [`reload`]: reload triggers (SIGHUP, HTTP, a watched config file) and what changed.
//! - [`net`]: listen addresses and binding (dual-stack wildcards).
//! - [`proxy`]: the TCP port: the SigV4 sampling proxy and TCP segment ingest.
//! - [`app`]: the daemon assembled: start (bind everything), run, ordered shutdown.
//! - [`telemetry`]: the daemon's own X-Ray telemetry (`PutTelemetryRecords`).
//! - [`signals`], [`healthcheck`]: process signals; the `xray healthcheck` probe.
//! - [`memory`]: the executable's pages that can be given back once started.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod aws;
pub mod batch;
pub mod budget;
pub mod cli;
pub mod config;
pub mod healthcheck;
pub mod ingest;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod proxy;
pub mod reload;
pub mod segment;
pub mod signals;
pub mod telemetry;
pub mod upload;

/// This build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit this build was made from (`unknown` outside a checkout).
pub const GIT_COMMIT: &str = env!("XRAY_GIT_COMMIT");
