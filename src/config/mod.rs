//! The daemon's effective configuration: one typed value built from defaults, cfg.yaml,
//! `XRAY_*` environment variables and command-line flags, in that order of precedence.
//!
//! Loading (`load`) and the Go-compatible `cfg.yaml` checks live in the submodules; the rest of
//! the daemon only ever sees a validated [`Config`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub mod file;
pub mod load;
pub mod options;

pub use load::{default_search_path, describe, load, redact_url, ConfigError, Loaded};
pub use options::OptionId;

/// Every setting the daemon runs with, after layering and validation.
///
/// Field docs name the `cfg.yaml` key first; the option table in `options.rs` maps each key to
/// its flag and environment variable.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `TotalBufferSizeMB` / `-m`: memory budget in MiB for every segment byte held.
    /// 0 means auto-size (1% of the cgroup memory limit, else of host RAM, at least 3).
    pub total_buffer_size_mb: u64,
    /// `Concurrency`: number of concurrent `PutTraceSegments` uploads (default 8).
    pub concurrency: usize,
    /// `Endpoint`: X-Ray endpoint URL override (with scheme), `None` for the regional default.
    pub endpoint: Option<String>,
    /// `Region` / `-n`: the region to send segments to, `None` to resolve it from the
    /// environment.
    pub region: Option<String>,
    /// `Socket.UDPAddress` / `-b`: UDP listen address (`host:port`).
    pub udp_address: String,
    /// `Socket.TCPAddress` / `-t`: TCP listen address for the sampling proxy.
    pub tcp_address: String,
    /// `Socket.ReceiveBufferBytes`: requested `SO_RCVBUF` of the UDP socket.
    pub receive_buffer_bytes: usize,
    /// `Logging.LogRotation`: rotate the log file at 50 MiB keeping one backup.
    pub log_rotation: bool,
    /// `Logging.LogLevel` / `-l`: one of `dev debug info warn error prod`, kept as written
    /// (the logging module maps it, including the Go daemon's handling of unknown names).
    pub log_level: String,
    /// `Logging.LogPath` / `-f`: log file, `None` for stdout.
    pub log_path: Option<PathBuf>,
    /// `LocalMode` / `-o`: do not query EC2 instance metadata.
    pub local_mode: bool,
    /// `ResourceARN` / `-a`: ARN reported in telemetry.
    pub resource_arn: Option<String>,
    /// `RoleARN` / `-r`: role assumed for uploads.
    pub role_arn: Option<String>,
    /// `NoVerifySSL`: skip TLS certificate verification towards X-Ray.
    pub no_verify_ssl: bool,
    /// `ProxyAddress` / `-p`: outbound HTTPS proxy URL.
    pub proxy_address: Option<String>,
    /// `LocalSink` / `--local-sink`: write segments as JSON lines to this path (`-` = stdout)
    /// instead of uploading them.
    pub local_sink: Option<String>,
    /// `Admin.Address` / `--admin-address`: admin HTTP server address.
    pub admin_address: String,
    /// `Admin.EnableLifecycle` / `--admin-enable-lifecycle`: allow `POST /-/reload` from
    /// non-loopback callers.
    pub admin_enable_lifecycle: bool,
    /// `ShutdownTimeout` / `--shutdown-timeout`: how long a shutdown may spend flushing.
    pub shutdown_timeout: Duration,
    /// `RetryMaxAge` / `--retry-max-age`: how long a failed batch is retried before it is
    /// dropped (`expired`).
    pub retry_max_age: Duration,
    /// `RoleExternalId` / `--role-external-id`: the external ID for assuming `RoleARN`.
    pub role_external_id: Option<String>,
    /// `RoleSessionName` / `--role-session-name`: the session name for assuming `RoleARN`.
    pub role_session_name: String,
    /// `DisableTelemetry` / `--disable-telemetry`: do not send `PutTelemetryRecords`.
    pub disable_telemetry: bool,
    /// `Socket.TCPIngest` / `--tcp-ingest`: accept newline-framed segments on the TCP address.
    pub tcp_ingest: bool,
    /// `SamplingProxy.ExtraPaths` / `--proxy-extra-paths`: X-Ray API paths the proxy forwards
    /// besides the two sampling calls.
    pub proxy_extra_paths: Vec<String>,
    /// `SamplingProxy.UpstreamTimeout` / `--proxy-upstream-timeout`: how long the proxy waits
    /// for X-Ray before answering 504.
    pub proxy_upstream_timeout: Duration,
}

/// Where one effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The configuration file at this path.
    File(PathBuf),
    /// This environment variable.
    Env(String),
    /// This flag, as typed (`-n`, `--region`).
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Env(var) => write!(f, "env {var}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// The source of every option's effective value, keyed by option (and so by `cfg.yaml` key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources(BTreeMap<OptionId, Source>);

impl Sources {
    /// Where option `id` came from.
    pub fn get(&self, id: OptionId) -> Option<&Source> {
        self.0.get(&id)
    }

    /// Where the option with `cfg.yaml` key `key` (e.g. `Socket.UDPAddress`) came from.
    pub fn by_key(&self, key: &str) -> Option<&Source> {
        options::OPTIONS
            .iter()
            .find(|s| s.key == key)
            .and_then(|s| self.get(s.id))
    }

    /// Records where option `id` came from.
    pub fn insert(&mut self, id: OptionId, source: Source) {
        self.0.insert(id, source);
    }

    /// Every option with its source, in option-table order.
    pub fn iter(&self) -> impl Iterator<Item = (OptionId, &Source)> {
        self.0.iter().map(|(id, source)| (*id, source))
    }
}
