//! Log output in the Go daemon's format: `2016-11-24T06:07:06Z [Info] <message>`, level names
//! from `-l`, stdout or an appended file with 50 MiB / one-backup rotation, and live changes of
//! level and destination for config reload.
//!
//! Everything is one `tracing` [`Layer`] ([`LogLayer`]) over the standard `Registry`. The level
//! lives in an atomic shared with [`LogHandle`]; a level change rebuilds tracing's callsite
//! interest cache, so a disabled `debug!` is rejected by tracing's own global max-level check
//! before any of this code runs. The destination sits behind a `Mutex` and is written
//! synchronously, one `write_all` per line, as the Go daemon's seelog `sync` logger does.
//!
//! Decisions that differ from the Go daemon on purpose:
//! - Timestamps are always UTC (`Z`). The Go daemon uses local time, which is UTC in the
//!   containers it normally runs in; finding the local offset from a multithreaded Rust process
//!   is unsound (`localtime_r` races with `setenv`), and a fixed zone keeps lines comparable.
//! - An unknown level name selects `info` and yields a warning for the caller to log. The Go
//!   daemon silently ends up at Trace (seelog's zero value), which floods the log.
//! - Rotation always keeps the backup at `<path>.1`. seelog numbers rolls `<path>.<N+1>` and
//!   deletes the older ones, so its single backup's suffix grows; a fixed name is easier for
//!   log shippers and the result (one backup) is the same.
//! - Events from other crates (AWS SDK, hyper, ...) are capped at `warn` unless the level is
//!   `dev`; at `debug` they would drown the daemon's own lines.

use std::ffi::OsString;
use std::fmt::{self, Write as _};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};

/// Size at which a rotating log file is rolled over: 50 MiB, seelog's `maxSize` in the Go
/// daemon.
pub const ROTATE_SIZE: u64 = 50 * 1024 * 1024;

/// Target prefixes that count as "ours" and so follow the configured level unchanged: the
/// library, and the `xray` binary (whose crate name is its binary name).
const OWN_TARGETS: [&str; 2] = ["xray_daemon", "xray"];

/// The most verbose level other crates may log at unless the level is `dev`.
const FOREIGN_CAP: LevelFilter = LevelFilter::WARN;

/// Errors setting up or changing the log output.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The log file's directory could not be created; the previous destination stays in use.
    #[error("unable to create log directory {path}")]
    CreateDir {
        /// The directory that could not be created.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The log file could not be opened for appending; the previous destination stays in use.
    #[error("unable to open log file {path}")]
    Open {
        /// The file that could not be opened.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A global subscriber was already installed (only `init` returns this).
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled(#[source] tracing::subscriber::SetGlobalDefaultError),
}

/// Maps a `-l` / `LogLevel` name to a filter, exactly as the Go daemon spells them
/// (lower case only): `dev` = trace, `debug`, `info`, `warn`, `error`, `prod` = info.
///
/// An unknown name gives `info` plus a warning for the caller to log (see the module docs for
/// why this is not the Go daemon's accidental Trace).
#[must_use]
pub fn parse_level(name: &str) -> (LevelFilter, Option<String>) {
    let level = match name {
        "dev" => LevelFilter::TRACE,
        "debug" => LevelFilter::DEBUG,
        "info" | "prod" => LevelFilter::INFO,
        "warn" => LevelFilter::WARN,
        "error" => LevelFilter::ERROR,
        _ => {
            let warning = format!(
                "Invalid log level {name:?}; using info (valid: dev, debug, info, warn, error, prod)"
            );
            return (LevelFilter::INFO, Some(warning));
        }
    };
    (level, None)
}

/// The Go daemon's name for a level, as printed between the brackets.
#[must_use]
pub fn level_name(level: Level) -> &'static str {
    match level {
        Level::TRACE => "Trace",
        Level::DEBUG => "Debug",
        Level::INFO => "Info",
        Level::WARN => "Warn",
        Level::ERROR => "Error",
    }
}

/// One complete log line, newline included: `<RFC 3339 UTC, seconds> [<level>] <message>\n`.
///
/// `level` is printed as given (use [`level_name`]), so `main` can print config errors as
/// `[Error]` on stderr before logging is set up. The message is written as-is, even over
/// several lines, as the Go daemon does.
#[must_use]
pub fn format_line(now: SystemTime, level: &str, message: &str) -> String {
    // humantime panics before the epoch and refuses years past 9999; a logger must not panic
    // over a broken clock, so clamp to the printable range.
    const LAST_PRINTABLE: Duration = Duration::from_secs(253_402_300_799);
    let now = now.clamp(UNIX_EPOCH, UNIX_EPOCH + LAST_PRINTABLE);
    let mut line = String::with_capacity(32 + level.len() + message.len());
    // Writing into a String cannot fail.
    let _ = write!(
        line,
        "{} [{level}] {message}",
        humantime::format_rfc3339_seconds(now)
    );
    line.push('\n');
    line
}

/// Builds the layer for a level name and destination without installing anything, e.g. to
/// use with `tracing::subscriber::with_default` or to compose with other layers.
///
/// The layer's filter acts on the whole subscriber it is part of. The returned string is the
/// unknown-level warning from [`parse_level`], if any.
///
/// # Errors
///
/// [`LoggingError::CreateDir`] or [`LoggingError::Open`] when the log file cannot be opened.
pub fn layer(
    level: &str,
    path: Option<PathBuf>,
    rotation: bool,
) -> Result<(LogLayer, LogHandle, Option<String>), LoggingError> {
    let sink = Sink::open(path, rotation, ROTATE_SIZE)?;
    Ok(build(level, sink, ROTATE_SIZE))
}

/// Builds the layer writing to any writer (a test buffer, stderr, ...) instead of stdout or a
/// file. A later [`LogHandle::set_destination`] replaces the writer.
pub fn layer_with_writer<W>(level: &str, writer: W) -> (LogLayer, LogHandle, Option<String>)
where
    W: Write + Send + 'static,
{
    build(level, Sink::Writer(Box::new(writer)), ROTATE_SIZE)
}

/// Installs the daemon's global subscriber: the one global this crate has, since `tracing`'s
/// macros need it. Returns the handle for reload and the unknown-level warning, if any, which
/// the caller should log now that logging works.
///
/// # Errors
///
/// As [`layer`], plus [`LoggingError::AlreadyInstalled`] when called twice.
pub fn init(
    level: &str,
    path: Option<PathBuf>,
    rotation: bool,
) -> Result<(LogHandle, Option<String>), LoggingError> {
    let (layer, handle, warning) = layer(level, path, rotation)?;
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::set_global_default(subscriber).map_err(LoggingError::AlreadyInstalled)?;
    Ok((handle, warning))
}

fn build(level: &str, sink: Sink, max_size: u64) -> (LogLayer, LogHandle, Option<String>) {
    let (filter, warning) = parse_level(level);
    let shared = Arc::new(Shared {
        level: AtomicU8::new(encode(filter)),
        sink: Mutex::new(sink),
        max_size,
    });
    let handle = LogHandle {
        shared: Arc::clone(&shared),
    };
    (LogLayer { shared }, handle, warning)
}

/// State shared by the layer and its handles.
struct Shared {
    /// The configured level, encoded by [`encode`]; read on every enabled callsite.
    level: AtomicU8,
    sink: Mutex<Sink>,
    /// Rotation threshold for files opened later; [`ROTATE_SIZE`] outside tests.
    max_size: u64,
}

impl Shared {
    fn level(&self) -> LevelFilter {
        decode(self.level.load(Ordering::Relaxed))
    }

    fn write_line(&self, line: &str) {
        // A panic elsewhere while holding the lock leaves the sink usable; keep logging.
        let mut sink = self.sink.lock().unwrap_or_else(PoisonError::into_inner);
        sink.write_line(line);
    }
}

fn encode(level: LevelFilter) -> u8 {
    match level.into_level() {
        None => 0,
        Some(Level::ERROR) => 1,
        Some(Level::WARN) => 2,
        Some(Level::INFO) => 3,
        Some(Level::DEBUG) => 4,
        Some(Level::TRACE) => 5,
    }
}

fn decode(raw: u8) -> LevelFilter {
    match raw {
        0 => LevelFilter::OFF,
        1 => LevelFilter::ERROR,
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

fn is_own_target(target: &str) -> bool {
    OWN_TARGETS.iter().any(|own| {
        target
            .strip_prefix(own)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// Whether an event or span passes at `level`: ours follow the level, others are capped at
/// warn unless everything is on (`dev`).
fn passes(level: LevelFilter, meta: &Metadata<'_>) -> bool {
    let limit = if level == LevelFilter::TRACE || is_own_target(meta.target()) {
        level
    } else {
        level.min(FOREIGN_CAP)
    };
    limit >= *meta.level()
}

/// Changes the running logger; cheap to clone. Changes apply from the next event on.
#[derive(Clone)]
pub struct LogHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogHandle")
            .field("level", &self.level())
            .finish_non_exhaustive()
    }
}

impl LogHandle {
    /// The level now in effect.
    #[must_use]
    pub fn level(&self) -> LevelFilter {
        self.shared.level()
    }

    /// Switches to a level by name, with [`parse_level`]'s rules: an unknown name selects
    /// info and returns the warning to log.
    #[must_use = "an unknown level name returns a warning to log"]
    pub fn set_level(&self, name: &str) -> Option<String> {
        let (filter, warning) = parse_level(name);
        let old = self.shared.level.swap(encode(filter), Ordering::Relaxed);
        if old != encode(filter) {
            // Callsites cache "never"/"always" and tracing caches the global max level from
            // `max_level_hint`; both must be recomputed or the change would not be seen.
            tracing::callsite::rebuild_interest_cache();
        }
        warning
    }

    /// Moves output to `path` (appended, parent directories created, rotated at 50 MiB when
    /// `rotation` is set), or to stdout with `None`. The new destination is opened first, so
    /// on error nothing changes and the old one stays in use.
    ///
    /// # Errors
    ///
    /// [`LoggingError::CreateDir`] or [`LoggingError::Open`] when the file cannot be opened.
    pub fn set_destination(
        &self,
        path: Option<PathBuf>,
        rotation: bool,
    ) -> Result<(), LoggingError> {
        let sink = Sink::open(path, rotation, self.shared.max_size)?;
        let mut current = self
            .shared
            .sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // The old file is flushed and closed when it is dropped here.
        *current = sink;
        Ok(())
    }
}

/// The `tracing` layer that filters and writes the daemon's log lines. Spans are not
/// printed: the Go daemon's format has no place for them.
pub struct LogLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for LogLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogLayer")
            .field("level", &self.shared.level())
            .finish_non_exhaustive()
    }
}

impl<S: Subscriber> Layer<S> for LogLayer {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        // Cached per callsite until `set_level` rebuilds the cache, so rejected callsites
        // (foreign debug events above all) cost nothing afterwards.
        if passes(self.shared.level(), meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        passes(self.shared.level(), meta)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        // Foreign events are capped at or below this, so it bounds everything we let through.
        Some(self.shared.level())
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let message = if fields.rest.is_empty() {
            fields.message
        } else if fields.message.is_empty() {
            fields.rest.split_off(1)
        } else {
            fields.message + &fields.rest
        };
        let line = format_line(
            SystemTime::now(),
            level_name(*event.metadata().level()),
            &message,
        );
        self.shared.write_line(&line);
    }
}

/// Collects an event's message and renders its other fields as ` key=value`.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
            return;
        }
        // logfmt convention: quote only values that would be ambiguous bare.
        let bare = !value.is_empty()
            && !value.contains(|c: char| c.is_whitespace() || c == '"' || c == '=');
        let _ = if bare {
            write!(self.rest, " {}={value}", field.name())
        } else {
            write!(self.rest, " {}={value:?}", field.name())
        };
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // Print the whole `source` chain, like the Go daemon's `%v` of wrapped SDK errors.
        let _ = write!(self.rest, " {}={value}", field.name());
        let mut source = value.source();
        while let Some(cause) = source {
            let _ = write!(self.rest, ": {cause}");
            source = cause.source();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // Writing into a String cannot fail. `%x` and `?x` already chose the rendering.
        let _ = if field.name() == "message" {
            write!(self.message, "{value:?}")
        } else {
            write!(self.rest, " {}={value:?}", field.name())
        };
    }
}

/// Where lines go.
enum Sink {
    Stdout,
    File(FileSink),
    Writer(Box<dyn Write + Send>),
}

impl Sink {
    fn open(path: Option<PathBuf>, rotation: bool, max_size: u64) -> Result<Sink, LoggingError> {
        match path {
            None => Ok(Sink::Stdout),
            Some(path) => {
                let mut file = FileSink {
                    path,
                    file: None,
                    size: 0,
                    max_size: rotation.then_some(max_size),
                    failing: false,
                };
                file.reopen()?;
                Ok(Sink::File(file))
            }
        }
    }

    fn write_line(&mut self, line: &str) {
        match self {
            // Failures are ignored as in the Go daemon: there is nowhere better to report a
            // broken stdout.
            Sink::Stdout => {
                let _ = io::stdout().lock().write_all(line.as_bytes());
            }
            Sink::File(file) => file.write_line(line),
            Sink::Writer(writer) => {
                let _ = writer.write_all(line.as_bytes());
            }
        }
    }
}

/// An appended log file with optional size-based rotation to `<path>.1`.
struct FileSink {
    path: PathBuf,
    /// `None` only after a failed reopen during rotation; reopened on the next write.
    file: Option<File>,
    /// Bytes in the file: its size when opened plus what we wrote since.
    size: u64,
    /// Rotation threshold; `None` when rotation is off.
    max_size: Option<u64>,
    /// Set after reporting a write failure, so a full disk reports once, not per line.
    failing: bool,
}

impl FileSink {
    fn reopen(&mut self) -> Result<(), LoggingError> {
        self.file = None;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|source| LoggingError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let open = |path: &Path| -> io::Result<(File, u64)> {
            let file = OpenOptions::new().append(true).create(true).open(path)?;
            let size = file.metadata()?.len();
            Ok((file, size))
        };
        let (file, size) = open(&self.path).map_err(|source| LoggingError::Open {
            path: self.path.clone(),
            source,
        })?;
        self.file = Some(file);
        self.size = size;
        Ok(())
    }

    fn backup_path(&self) -> PathBuf {
        let mut name = OsString::from(self.path.as_os_str());
        name.push(".1");
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> Result<(), String> {
        // Close before renaming: Windows cannot rename an open file.
        self.file = None;
        let backup = self.backup_path();
        // `rename` replaces an existing backup, so exactly one is kept. If it fails we reopen
        // and keep appending to the same file rather than lose lines.
        let renamed = fs::rename(&self.path, &backup)
            .map_err(|e| format!("Unable to rotate log file {}: {e}", self.path.display()));
        let reopened = self.reopen().map_err(|e| error_chain(&e));
        renamed.and(reopened)
    }

    fn write_line(&mut self, line: &str) {
        let mut result = Ok(());
        if self.max_size.is_some_and(|max| self.size >= max) {
            result = self.rotate();
        }
        if self.file.is_none() {
            result = result.and(self.reopen().map_err(|e| error_chain(&e)));
        }
        if let Some(file) = &mut self.file {
            match file.write_all(line.as_bytes()) {
                Ok(()) => self.size += line.len() as u64,
                Err(e) => {
                    let failed = format!("Unable to write log file {}: {e}", self.path.display());
                    result = result.and(Err(failed));
                }
            }
        }
        match result {
            Ok(()) => self.failing = false,
            Err(message) if !self.failing => {
                self.failing = true;
                // The log itself is what broke, so stderr is the only place left to say so.
                let line = format_line(SystemTime::now(), level_name(Level::ERROR), &message);
                let _ = io::stderr().lock().write_all(line.as_bytes());
            }
            Err(_) => {}
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::{debug, error, info, trace, warn};

    /// A clonable in-memory writer to capture output.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }

        /// Lines with the timestamp cut off, so tests compare the rest exactly.
        fn lines(&self) -> Vec<String> {
            self.text()
                .lines()
                .map(|l| l.split_once(' ').expect("timestamp").1.to_owned())
                .collect()
        }
    }

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn capture(level: &str) -> (Buffer, impl Subscriber + Send + Sync, LogHandle) {
        let buffer = Buffer::default();
        let (layer, handle, _) = layer_with_writer(level, buffer.clone());
        (buffer, tracing_subscriber::registry().with(layer), handle)
    }

    #[test]
    fn line_format_matches_go_daemon() {
        let now = UNIX_EPOCH + Duration::new(1_479_967_626, 987_000_000);
        assert_eq!(
            format_line(now, "Info", "Initializing AWS X-Ray daemon 2.1.0"),
            "2016-11-24T06:07:06Z [Info] Initializing AWS X-Ray daemon 2.1.0\n"
        );
        assert_eq!(
            format_line(now, level_name(Level::ERROR), "a\ncaused by: b"),
            "2016-11-24T06:07:06Z [Error] a\ncaused by: b\n"
        );
    }

    #[test]
    fn broken_clock_does_not_panic() {
        let before = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(
            format_line(before, "Info", "x"),
            "1970-01-01T00:00:00Z [Info] x\n"
        );
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(
            format_line(far, "Info", "x"),
            "9999-12-31T23:59:59Z [Info] x\n"
        );
    }

    #[test]
    fn level_names() {
        let names: Vec<_> = [
            Level::TRACE,
            Level::DEBUG,
            Level::INFO,
            Level::WARN,
            Level::ERROR,
        ]
        .into_iter()
        .map(level_name)
        .collect();
        assert_eq!(names, ["Trace", "Debug", "Info", "Warn", "Error"]);
    }

    #[test]
    fn level_mapping() {
        let table = [
            ("dev", LevelFilter::TRACE),
            ("debug", LevelFilter::DEBUG),
            ("info", LevelFilter::INFO),
            ("warn", LevelFilter::WARN),
            ("error", LevelFilter::ERROR),
            ("prod", LevelFilter::INFO),
        ];
        for (name, want) in table {
            assert_eq!(parse_level(name), (want, None), "{name}");
        }
        for unknown in ["", "Info", "PROD", "verbose", "trace"] {
            let (level, warning) = parse_level(unknown);
            assert_eq!(level, LevelFilter::INFO, "{unknown:?}");
            assert!(warning.expect("warning").contains("Invalid log level"));
        }
    }

    #[test]
    fn own_targets() {
        assert!(is_own_target("xray_daemon"));
        assert!(is_own_target("xray_daemon::processor"));
        assert!(is_own_target("xray"));
        assert!(is_own_target("xray::main"));
        assert!(!is_own_target("xray_other"));
        assert!(!is_own_target("aws_smithy_runtime::client"));
    }

    #[test]
    fn writes_levels_and_filters() {
        let (buffer, subscriber, _handle) = capture("info");
        tracing::subscriber::with_default(subscriber, || {
            trace!(target: "xray_daemon::t", "hidden trace");
            debug!(target: "xray_daemon::t", "hidden debug");
            info!(target: "xray_daemon::t", "Using region: {}", "us-east-1");
            warn!(target: "xray_daemon::t", "w");
            error!(target: "xray_daemon::t", "e");
        });
        assert_eq!(
            buffer.lines(),
            ["[Info] Using region: us-east-1", "[Warn] w", "[Error] e"]
        );
        let line = buffer.text().lines().next().unwrap().to_owned();
        let ts = line.split_once(' ').unwrap().0;
        assert_eq!(ts.len(), "2016-11-24T06:07:06Z".len());
        assert!(ts.ends_with('Z'));
    }

    #[test]
    fn foreign_targets_capped_at_warn_unless_dev() {
        let emit = || {
            debug!(target: "aws_smithy_runtime::client", "sdk debug");
            info!(target: "hyper::proto", "hyper info");
            warn!(target: "hyper::proto", "hyper warn");
            debug!(target: "xray_daemon::t", "own debug");
        };
        let (buffer, subscriber, _) = capture("debug");
        tracing::subscriber::with_default(subscriber, emit);
        assert_eq!(buffer.lines(), ["[Warn] hyper warn", "[Debug] own debug"]);

        let (buffer, subscriber, _) = capture("dev");
        tracing::subscriber::with_default(subscriber, emit);
        assert_eq!(
            buffer.lines(),
            [
                "[Debug] sdk debug",
                "[Info] hyper info",
                "[Warn] hyper warn",
                "[Debug] own debug"
            ]
        );

        let (buffer, subscriber, _) = capture("error");
        tracing::subscriber::with_default(subscriber, emit);
        assert!(buffer.lines().is_empty());
    }

    #[test]
    fn fields_appended_after_message() {
        let (buffer, subscriber, _) = capture("info");
        let cause = io::Error::other("connection refused");
        let err = LoggingError::Open {
            path: "/x".into(),
            source: cause,
        };
        tracing::subscriber::with_default(subscriber, || {
            info!(target: "xray_daemon::t", segments = 3, "Successfully sent batch");
            info!(target: "xray_daemon::t", region = "us-east-1", note = "two words", empty = "", "m");
            warn!(target: "xray_daemon::t", error = &err as &dyn std::error::Error, "failed");
            info!(target: "xray_daemon::t", only = true);
        });
        assert_eq!(
            buffer.lines(),
            [
                "[Info] Successfully sent batch segments=3",
                r#"[Info] m region=us-east-1 note="two words" empty="""#,
                "[Warn] failed error=unable to open log file /x: connection refused",
                "[Info] only=true",
            ]
        );
    }

    #[test]
    fn set_level_takes_effect_live() {
        let (buffer, subscriber, handle) = capture("info");
        tracing::subscriber::with_default(subscriber, || {
            let emit = |n: u32| debug!(target: "xray_daemon::t", "debug {n}");
            emit(1);
            assert_eq!(handle.set_level("debug"), None);
            assert_eq!(handle.level(), LevelFilter::DEBUG);
            emit(2);
            assert_eq!(handle.set_level("warn"), None);
            emit(3);
            assert!(handle.set_level("bogus").is_some());
            assert_eq!(handle.level(), LevelFilter::INFO);
            emit(4);
            info!(target: "xray_daemon::t", "info");
        });
        assert_eq!(buffer.lines(), ["[Debug] debug 2", "[Info] info"]);
    }

    fn file_layer(path: &Path, max_size: u64) -> (impl Subscriber + Send + Sync, LogHandle) {
        let sink = Sink::open(Some(path.to_path_buf()), true, max_size).unwrap();
        let (layer, handle, _) = build("info", sink, max_size);
        (tracing_subscriber::registry().with(layer), handle)
    }

    #[test]
    fn file_appends_and_creates_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/xray.log");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, "old line\n").unwrap();
        let (subscriber, _) = file_layer(&path, ROTATE_SIZE);
        tracing::subscriber::with_default(subscriber, || {
            info!(target: "xray_daemon::t", "new line");
        });
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("old line\n"), "{text}");
        assert!(text.ends_with(" [Info] new line\n"), "{text}");

        let fresh = dir.path().join("c/d/xray.log");
        let (layer, _, _) = layer("info", Some(fresh.clone()), false).unwrap();
        drop(layer);
        assert!(fresh.is_file());
    }

    #[test]
    fn rotation_keeps_exactly_one_backup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("xray.log");
        // Existing size counts: 90 bytes already there, limit 100.
        fs::write(&path, "x".repeat(90)).unwrap();
        let (subscriber, _) = file_layer(&path, 100);
        let backup = dir.path().join("xray.log.1");
        let line = |n: u32| format!("line {n} {}", "y".repeat(20));
        tracing::subscriber::with_default(subscriber, || {
            // 90 < 100: written to the existing file, which now exceeds the limit.
            info!(target: "xray_daemon::t", "{}", line(1));
            assert!(!backup.exists());
            // Now at least 100: rotate first, then write to a fresh file.
            info!(target: "xray_daemon::t", "{}", line(2));
            let old = fs::read_to_string(&backup).unwrap();
            assert!(
                old.starts_with(&"x".repeat(90)) && old.contains("line 1"),
                "{old}"
            );
            assert!(fs::read_to_string(&path).unwrap().contains("line 2"));
            for n in 3..=6 {
                info!(target: "xray_daemon::t", "{}", line(n));
            }
        });
        // Each line is ~56 bytes, so lines 2-3 and 4-5 filled files in turn and line 6 is new;
        // the backup was replaced, never added to.
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["xray.log", "xray.log.1"]);
        let old = fs::read_to_string(&backup).unwrap();
        assert!(
            old.contains("line 4") && old.contains("line 5") && !old.contains("line 3"),
            "{old}"
        );
        let current = fs::read_to_string(&path).unwrap();
        assert!(
            current.contains("line 6") && current.lines().count() == 1,
            "{current}"
        );
    }

    #[test]
    fn no_rotation_when_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("xray.log");
        let sink = Sink::open(Some(path.clone()), false, 10).unwrap();
        let (layer, _, _) = build("info", sink, 10);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            for n in 0..3 {
                info!(target: "xray_daemon::t", "line {n}");
            }
        });
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 3);
        assert!(!dir.path().join("xray.log.1").exists());
    }

    #[test]
    fn set_destination_moves_output() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first.log");
        let second = dir.path().join("sub/second.log");
        let (subscriber, handle) = file_layer(&first, ROTATE_SIZE);
        tracing::subscriber::with_default(subscriber, || {
            info!(target: "xray_daemon::t", "one");
            handle.set_destination(Some(second.clone()), true).unwrap();
            info!(target: "xray_daemon::t", "two");
            // A destination that cannot be opened changes nothing.
            let blocked = first.join("not-a-dir.log");
            let err = handle.set_destination(Some(blocked), true).unwrap_err();
            assert!(matches!(err, LoggingError::CreateDir { .. }), "{err:?}");
            info!(target: "xray_daemon::t", "three");
        });
        let first = fs::read_to_string(&first).unwrap();
        let second = fs::read_to_string(&second).unwrap();
        assert!(
            first.ends_with(" [Info] one\n") && first.lines().count() == 1,
            "{first}"
        );
        assert!(
            second.contains(" [Info] two\n") && second.ends_with(" [Info] three\n"),
            "{second}"
        );
    }
}
