//! Live reload plumbing: the requests (SIGHUP, `POST /-/reload`, a changed config file), the
//! inputs a reload reads again, which settings changed, and the config-file watcher.
//!
//! The watcher watches the file's directory, not the file: Kubernetes updates a mounted
//! ConfigMap by writing a new `..<timestamp>` directory and atomically swapping the `..data`
//! symlink the key file points through, so the file itself is never modified in place. Events
//! are debounced, and a reload is requested only when the file's content really changed
//! (kubelet also touches the directory without changing anything).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::cli::Flags;
use crate::config::{self, Config, ConfigError, Loaded};

/// How long the watcher waits for a burst of file events to settle.
pub const DEBOUNCE: Duration = Duration::from_secs(1);

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// `POST /-/reload`.
    Http,
    /// The config file's content changed.
    FileChange,
}

impl Trigger {
    /// A short description for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::Http => "POST /-/reload",
            Trigger::FileChange => "config file change",
        }
    }
}

/// A request to reload; the reply (if wanted) carries a summary or the error.
#[derive(Debug)]
pub struct ReloadRequest {
    /// What asked.
    pub trigger: Trigger,
    /// Where the outcome goes.
    pub reply: Option<oneshot::Sender<Result<String, String>>>,
}

/// Everything `config::load` reads besides the file, kept so a reload reads the same flags
/// and environment and only the file anew.
#[derive(Debug, Clone, Default)]
pub struct ConfigInputs {
    /// The command-line flags.
    pub flags: Flags,
    /// The environment at startup.
    pub env: HashMap<String, String>,
    /// Where to look for cfg.yaml when `-c` is not given.
    pub search_path: Vec<PathBuf>,
}

impl ConfigInputs {
    /// Loads (or reloads) the configuration.
    pub fn load(&self) -> Result<Loaded, ConfigError> {
        config::load(&self.flags, &self.env, &self.search_path)
    }
}

/// The `cfg.yaml` keys whose values differ between `old` and `new`.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |key: &'static str, differs: bool| {
        if differs {
            changed.push(key);
        }
    };
    check(
        "TotalBufferSizeMB",
        old.total_buffer_size_mb != new.total_buffer_size_mb,
    );
    check("Concurrency", old.concurrency != new.concurrency);
    check("Endpoint", old.endpoint != new.endpoint);
    check("Region", old.region != new.region);
    check("Socket.UDPAddress", old.udp_address != new.udp_address);
    check("Socket.TCPAddress", old.tcp_address != new.tcp_address);
    check(
        "Socket.ReceiveBufferBytes",
        old.receive_buffer_bytes != new.receive_buffer_bytes,
    );
    check("Logging.LogRotation", old.log_rotation != new.log_rotation);
    check("Logging.LogLevel", old.log_level != new.log_level);
    check("Logging.LogPath", old.log_path != new.log_path);
    check("LocalMode", old.local_mode != new.local_mode);
    check("ResourceARN", old.resource_arn != new.resource_arn);
    check("RoleARN", old.role_arn != new.role_arn);
    check("NoVerifySSL", old.no_verify_ssl != new.no_verify_ssl);
    check("ProxyAddress", old.proxy_address != new.proxy_address);
    check("LocalSink", old.local_sink != new.local_sink);
    check("Admin.Address", old.admin_address != new.admin_address);
    check(
        "Admin.EnableLifecycle",
        old.admin_enable_lifecycle != new.admin_enable_lifecycle,
    );
    check(
        "ShutdownTimeout",
        old.shutdown_timeout != new.shutdown_timeout,
    );
    changed
}

/// Whether the upload destination must be rebuilt for `new`.
pub fn sink_changed(old: &Config, new: &Config) -> bool {
    old.endpoint != new.endpoint
        || old.region != new.region
        || old.local_mode != new.local_mode
        || old.role_arn != new.role_arn
        || old.proxy_address != new.proxy_address
        || old.no_verify_ssl != new.no_verify_ssl
        || old.local_sink != new.local_sink
        || old.role_external_id != new.role_external_id
        || old.role_session_name != new.role_session_name
}

/// Remembers the last content seen, so unchanged rewrites do not cause reloads.
#[derive(Debug, Default)]
pub struct ContentTracker {
    last: Option<u64>,
}

impl ContentTracker {
    /// A tracker that has seen `initial` (a missing file is `None`).
    pub fn new(initial: Option<&[u8]>) -> Self {
        ContentTracker {
            last: Some(fingerprint(initial)),
        }
    }

    /// Records `current` and says whether it differs from what was last seen.
    pub fn changed(&mut self, current: Option<&[u8]>) -> bool {
        let fingerprint = fingerprint(current);
        let changed = self.last != Some(fingerprint);
        self.last = Some(fingerprint);
        changed
    }
}

fn fingerprint(content: Option<&[u8]>) -> u64 {
    let mut hasher = DefaultHasher::new();
    content.hash(&mut hasher);
    hasher.finish()
}

/// Watches a config file (through its directory) and requests reloads when it changes.
pub struct ConfigWatcher {
    _watcher: notify::RecommendedWatcher,
}

impl ConfigWatcher {
    /// Starts watching `file`; requests go to `requests` until `cancel` fires.
    pub fn start(
        file: &Path,
        requests: mpsc::Sender<ReloadRequest>,
        cancel: CancellationToken,
    ) -> notify::Result<ConfigWatcher> {
        let directory = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| Path::new("."))
            .to_path_buf();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    let _ = events_tx.send(());
                }
            })?;
        watcher.watch(&directory, RecursiveMode::NonRecursive)?;
        let tracker = ContentTracker::new(std::fs::read(file).ok().as_deref());
        tokio::spawn(debounce_and_request(
            file.to_path_buf(),
            events_rx,
            tracker,
            requests,
            cancel,
        ));
        Ok(ConfigWatcher { _watcher: watcher })
    }
}

async fn debounce_and_request(
    file: PathBuf,
    mut events: mpsc::UnboundedReceiver<()>,
    mut tracker: ContentTracker,
    requests: mpsc::Sender<ReloadRequest>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            event = events.recv() => if event.is_none() { return },
            () = cancel.cancelled() => return,
        }
        // Wait until the directory has been quiet for the debounce interval.
        while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, events.recv()).await {}
        let content = tokio::fs::read(&file).await.ok();
        if tracker.changed(content.as_deref()) {
            tracing::debug!("Config file {} changed; reloading", file.display());
            let request = ReloadRequest {
                trigger: Trigger::FileChange,
                reply: None,
            };
            if requests.send(request).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_verify_ssl_is_reported_and_rebuilds_the_x_ray_transport() {
        let old = config::load(&Flags::default(), &HashMap::new(), &[])
            .unwrap()
            .config;
        let new = Config {
            no_verify_ssl: true,
            ..old.clone()
        };
        assert_eq!(changed_keys(&old, &new), ["NoVerifySSL"]);
        assert!(
            sink_changed(&old, &new),
            "uploads and the proxy get a new transport"
        );
        let quieter = Config {
            log_level: "error".into(),
            ..old.clone()
        };
        assert!(!sink_changed(&old, &quieter));
    }

    #[test]
    fn only_real_content_changes_count() {
        let mut tracker = ContentTracker::new(Some(b"Version: 2\n"));
        assert!(!tracker.changed(Some(b"Version: 2\n")));
        assert!(tracker.changed(Some(b"Version: 2\nConcurrency: 4\n")));
        assert!(!tracker.changed(Some(b"Version: 2\nConcurrency: 4\n")));
        assert!(
            tracker.changed(None),
            "a removed file is a change (the reload reports it)"
        );
    }
}
