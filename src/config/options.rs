//! The option table: one row per setting, naming its `cfg.yaml` key, flags, environment variable,
//! type, default and help text, plus the value parsers every layer shares.
//!
//! The command-line parser, the environment loader, the `cfg.yaml` key check and the help text
//! all walk [`OPTIONS`], so a new option is one new row here (plus its field on `Config`).

use std::fmt;
use std::time::Duration;

/// Identifies one option; the row in [`OPTIONS`] says everything else about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OptionId {
    /// `TotalBufferSizeMB`
    TotalBufferSizeMb,
    /// `Concurrency`
    Concurrency,
    /// `Region`
    Region,
    /// `Endpoint`
    Endpoint,
    /// `Socket.UDPAddress`
    UdpAddress,
    /// `Socket.TCPAddress`
    TcpAddress,
    /// `Socket.ReceiveBufferBytes`
    ReceiveBufferBytes,
    /// `Logging.LogRotation`
    LogRotation,
    /// `Logging.LogLevel`
    LogLevel,
    /// `Logging.LogPath`
    LogPath,
    /// `LocalMode`
    LocalMode,
    /// `ResourceARN`
    ResourceArn,
    /// `RoleARN`
    RoleArn,
    /// `NoVerifySSL`
    NoVerifySsl,
    /// `ProxyAddress`
    ProxyAddress,
    /// `LocalSink`
    LocalSink,
    /// `Admin.Address`
    AdminAddress,
    /// `Admin.EnableLifecycle`
    AdminEnableLifecycle,
    /// `ShutdownTimeout`
    ShutdownTimeout,
    /// `RetryMaxAge`
    RetryMaxAge,
    /// `RoleExternalId`
    RoleExternalId,
    /// `RoleSessionName`
    RoleSessionName,
    /// `DisableTelemetry`
    DisableTelemetry,
    /// `Socket.TCPIngest`
    TcpIngest,
    /// `SamplingProxy.ExtraPaths`
    ProxyExtraPaths,
    /// `SamplingProxy.UpstreamTimeout`
    ProxyUpstreamTimeout,
}

/// The type of an option's value, which decides how text and YAML are parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Go `int`: decimal, or `0x`/`0o`/`0b`/leading-`0` prefixed, like `strconv.ParseInt(s, 0, 64)`.
    Int,
    /// A Go `bool`: `1 t T TRUE true True 0 f F FALSE false False` on the command line and in
    /// the environment; YAML booleans in `cfg.yaml`.
    Bool,
    /// Any text.
    String,
    /// A duration: `25s`, `1m30s`, or a bare integer number of seconds.
    Duration,
}

/// One row of the option table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionSpec {
    /// The option this row describes.
    pub id: OptionId,
    /// The `cfg.yaml` key path; nested keys are written `Parent.Child` (one level, as in Go).
    pub key: &'static str,
    /// The Go daemon's one-letter flag, `None` for options only this daemon has.
    pub short: Option<&'static str>,
    /// The long flag name, without dashes.
    pub long: &'static str,
    /// The environment variable, always `XRAY_` + the long name in upper snake case.
    pub env: &'static str,
    /// The value's type.
    pub kind: Kind,
    /// The built-in default, written as it would be on the command line.
    pub default: &'static str,
    /// The help text; verbatim from the Go daemon for its flags.
    pub usage: &'static str,
}

/// Every option, in `cfg.yaml` order (which is also the order of the help text's
/// "Additional options" block and of the effective-config dump).
pub const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        id: OptionId::TotalBufferSizeMb,
        key: "TotalBufferSizeMB",
        short: Some("m"),
        long: "buffer-memory",
        env: "XRAY_BUFFER_MEMORY",
        kind: Kind::Int,
        default: "0",
        usage: "Change the amount of memory in MB that buffers can use (minimum 3).",
    },
    OptionSpec {
        id: OptionId::Concurrency,
        key: "Concurrency",
        short: None,
        long: "concurrency",
        env: "XRAY_CONCURRENCY",
        kind: Kind::Int,
        default: "8",
        usage: "Maximum number of concurrent calls to AWS X-Ray to upload segment documents (default 8).",
    },
    OptionSpec {
        id: OptionId::Region,
        key: "Region",
        short: Some("n"),
        long: "region",
        env: "XRAY_REGION",
        kind: Kind::String,
        default: "",
        usage: "Send segments to X-Ray service in a specific region.",
    },
    OptionSpec {
        id: OptionId::Endpoint,
        key: "Endpoint",
        short: None,
        long: "endpoint",
        env: "XRAY_ENDPOINT",
        kind: Kind::String,
        default: "",
        usage: "Change the X-Ray service endpoint (a URL with scheme) to which the daemon sends segment documents.",
    },
    OptionSpec {
        id: OptionId::UdpAddress,
        key: "Socket.UDPAddress",
        short: Some("b"),
        long: "bind",
        env: "XRAY_BIND",
        kind: Kind::String,
        default: "127.0.0.1:2000",
        usage: "Overrides default UDP address (127.0.0.1:2000).",
    },
    OptionSpec {
        id: OptionId::TcpAddress,
        key: "Socket.TCPAddress",
        short: Some("t"),
        long: "bind-tcp",
        env: "XRAY_BIND_TCP",
        kind: Kind::String,
        default: "127.0.0.1:2000",
        usage: "Overrides default TCP address (127.0.0.1:2000).",
    },
    OptionSpec {
        id: OptionId::ReceiveBufferBytes,
        key: "Socket.ReceiveBufferBytes",
        short: None,
        long: "receive-buffer-bytes",
        env: "XRAY_RECEIVE_BUFFER_BYTES",
        kind: Kind::Int,
        default: "4194304",
        usage: "Requested receive buffer size of the UDP socket in bytes (default 4194304).",
    },
    OptionSpec {
        id: OptionId::LogRotation,
        key: "Logging.LogRotation",
        short: None,
        long: "log-rotation",
        env: "XRAY_LOG_ROTATION",
        kind: Kind::Bool,
        default: "true",
        usage: "Rotate the log file at 50 MB keeping one backup (default true; turn off with --log-rotation=false).",
    },
    OptionSpec {
        id: OptionId::LogLevel,
        key: "Logging.LogLevel",
        short: Some("l"),
        long: "log-level",
        env: "XRAY_LOG_LEVEL",
        kind: Kind::String,
        default: "prod",
        usage: "Log level, from most verbose to least: dev, debug, info, warn, error, prod (default).",
    },
    OptionSpec {
        id: OptionId::LogPath,
        key: "Logging.LogPath",
        short: Some("f"),
        long: "log-file",
        env: "XRAY_LOG_FILE",
        kind: Kind::String,
        default: "",
        usage: "Output logs to the specified file path.",
    },
    OptionSpec {
        id: OptionId::LocalMode,
        key: "LocalMode",
        short: Some("o"),
        long: "local-mode",
        env: "XRAY_LOCAL_MODE",
        kind: Kind::Bool,
        default: "false",
        usage: "Don't check for EC2 instance metadata.",
    },
    OptionSpec {
        id: OptionId::ResourceArn,
        key: "ResourceARN",
        short: Some("a"),
        long: "resource-arn",
        env: "XRAY_RESOURCE_ARN",
        kind: Kind::String,
        default: "",
        usage: "Amazon Resource Name (ARN) of the AWS resource running the daemon.",
    },
    OptionSpec {
        id: OptionId::RoleArn,
        key: "RoleARN",
        short: Some("r"),
        long: "role-arn",
        env: "XRAY_ROLE_ARN",
        kind: Kind::String,
        default: "",
        usage: "Assume the specified IAM role to upload segments to a different account.",
    },
    OptionSpec {
        id: OptionId::NoVerifySsl,
        key: "NoVerifySSL",
        short: None,
        long: "no-verify-ssl",
        env: "XRAY_NO_VERIFY_SSL",
        kind: Kind::Bool,
        default: "false",
        usage: "Disable TLS certificate verification towards AWS X-Ray.",
    },
    OptionSpec {
        id: OptionId::ProxyAddress,
        key: "ProxyAddress",
        short: Some("p"),
        long: "proxy-address",
        env: "XRAY_PROXY_ADDRESS",
        kind: Kind::String,
        default: "",
        usage: "Proxy address through which to upload segments.",
    },
    OptionSpec {
        id: OptionId::LocalSink,
        key: "LocalSink",
        short: None,
        long: "local-sink",
        env: "XRAY_LOCAL_SINK",
        kind: Kind::String,
        default: "",
        usage: "Write segments as JSON lines to this file (- for stdout) instead of uploading them.",
    },
    OptionSpec {
        id: OptionId::AdminAddress,
        key: "Admin.Address",
        short: None,
        long: "admin-address",
        env: "XRAY_ADMIN_ADDRESS",
        kind: Kind::String,
        default: "127.0.0.1:2100",
        usage: "Address of the admin HTTP server for probes, metrics and reload (default 127.0.0.1:2100).",
    },
    OptionSpec {
        id: OptionId::AdminEnableLifecycle,
        key: "Admin.EnableLifecycle",
        short: None,
        long: "admin-enable-lifecycle",
        env: "XRAY_ADMIN_ENABLE_LIFECYCLE",
        kind: Kind::Bool,
        default: "false",
        usage: "Allow POST /-/reload from callers that are not on loopback.",
    },
    OptionSpec {
        id: OptionId::ShutdownTimeout,
        key: "ShutdownTimeout",
        short: None,
        long: "shutdown-timeout",
        env: "XRAY_SHUTDOWN_TIMEOUT",
        kind: Kind::Duration,
        default: "25s",
        usage: "Longest time a shutdown may spend flushing buffered segments, e.g. 25s or 1m30s (default 25s).",
    },
    OptionSpec {
        id: OptionId::RetryMaxAge,
        key: "RetryMaxAge",
        short: None,
        long: "retry-max-age",
        env: "XRAY_RETRY_MAX_AGE",
        kind: Kind::Duration,
        default: "5m",
        usage: "How long a batch that failed to upload is retried before it is dropped (default 5m).",
    },
    OptionSpec {
        id: OptionId::RoleExternalId,
        key: "RoleExternalId",
        short: None,
        long: "role-external-id",
        env: "XRAY_ROLE_EXTERNAL_ID",
        kind: Kind::String,
        default: "",
        usage: "External ID to pass when assuming the role given with -r.",
    },
    OptionSpec {
        id: OptionId::RoleSessionName,
        key: "RoleSessionName",
        short: None,
        long: "role-session-name",
        env: "XRAY_ROLE_SESSION_NAME",
        kind: Kind::String,
        default: "xray-daemon",
        usage: "Session name used when assuming the role given with -r (default xray-daemon).",
    },
    OptionSpec {
        id: OptionId::DisableTelemetry,
        key: "DisableTelemetry",
        short: None,
        long: "disable-telemetry",
        env: "XRAY_DISABLE_TELEMETRY",
        kind: Kind::Bool,
        default: "false",
        usage: "Do not send the daemon's own telemetry to X-Ray (PutTelemetryRecords).",
    },
    OptionSpec {
        id: OptionId::TcpIngest,
        key: "Socket.TCPIngest",
        short: None,
        long: "tcp-ingest",
        env: "XRAY_TCP_INGEST",
        kind: Kind::Bool,
        default: "true",
        usage: "Accept newline-framed segments on the TCP address besides the sampling proxy (default true).",
    },
    OptionSpec {
        id: OptionId::ProxyExtraPaths,
        key: "SamplingProxy.ExtraPaths",
        short: None,
        long: "proxy-extra-paths",
        env: "XRAY_PROXY_EXTRA_PATHS",
        kind: Kind::String,
        default: "",
        usage: "Comma-separated X-Ray API paths the TCP proxy forwards besides /GetSamplingRules and /SamplingTargets.",
    },
    OptionSpec {
        id: OptionId::ProxyUpstreamTimeout,
        key: "SamplingProxy.UpstreamTimeout",
        short: None,
        long: "proxy-upstream-timeout",
        env: "XRAY_PROXY_UPSTREAM_TIMEOUT",
        kind: Kind::Duration,
        default: "10s",
        usage: "Longest wait for X-Ray's answer to a proxied request before answering 504 (default 10s).",
    },
];

/// A flag that is not an option: it steers the program instead of setting a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaFlag {
    /// The one-letter flag name, without dash.
    pub short: &'static str,
    /// The long flag name, without dashes.
    pub long: &'static str,
    /// Environment variable with the same meaning, if any.
    pub env: Option<&'static str>,
    /// The value's type.
    pub kind: Kind,
    /// The help text, verbatim from the Go daemon.
    pub usage: &'static str,
}

/// `-c/--config`: the one file to load, instead of searching for one.
pub const CONFIG_FLAG: MetaFlag = MetaFlag {
    short: "c",
    long: "config",
    env: Some("XRAY_CONFIG"),
    kind: Kind::String,
    usage: "Load a configuration file from the specified path.",
};

/// `-v/--version`: print the version (after the configuration has loaded, as in Go).
pub const VERSION_FLAG: MetaFlag = MetaFlag {
    short: "v",
    long: "version",
    env: None,
    kind: Kind::Bool,
    usage: "Show AWS X-Ray daemon version.",
};

/// The `cfg.yaml` key that carries the file format version.
pub const VERSION_KEY: &str = "Version";

/// Keys the Go daemon accepts in a `-c` file but never reads (its `ProxyServer` struct has no
/// yaml tags, so yaml.v2 lower-cases them); accepted and ignored here too.
pub const IGNORED_KEYS: &[&str] = &[
    "proxyserver.idleconntimeout",
    "proxyserver.maxidleconnsperhost",
    "proxyserver.maxidleconns",
];

/// The row for `id`.
pub fn spec(id: OptionId) -> &'static OptionSpec {
    // Every OptionId has a row; the `every_id_has_one_row` test guards this.
    OPTIONS
        .iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| unreachable!("option {id:?} has no row in OPTIONS"))
}

/// The row whose short or long flag is `name` (given without dashes).
pub fn by_flag(name: &str) -> Option<&'static OptionSpec> {
    OPTIONS
        .iter()
        .find(|s| s.long == name || s.short == Some(name))
}

/// A typed option value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A [`Kind::Int`] value.
    Int(i64),
    /// A [`Kind::Bool`] value.
    Bool(bool),
    /// A [`Kind::String`] value.
    Str(String),
    /// A [`Kind::Duration`] value.
    Duration(Duration),
}

impl Value {
    /// True for the Go zero values (`0`, `""`, zero duration) that mean "use the default".
    /// No boolean is zero: an explicit `false` is a choice, as with Go's `*bool` fields.
    pub fn is_zero(&self) -> bool {
        match self {
            Value::Int(n) => *n == 0,
            Value::Bool(_) => false,
            Value::Str(s) => s.is_empty(),
            Value::Duration(d) => d.is_zero(),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(n) => write!(f, "{n}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Str(s) => f.write_str(s),
            Value::Duration(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

/// Why a piece of text is not a valid value of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueError {
    /// Not the right shape at all.
    Syntax,
    /// A well-formed integer that does not fit in 64 bits.
    Range,
}

impl ValueError {
    /// The Go `flag` package's wording.
    pub fn go_reason(self) -> &'static str {
        match self {
            ValueError::Syntax => "parse error",
            ValueError::Range => "value out of range",
        }
    }

    /// A friendlier wording for configuration errors, naming what was expected.
    pub fn expected(self, kind: Kind) -> &'static str {
        match (self, kind) {
            (ValueError::Range, _) => "value out of range",
            (_, Kind::Int) => "expected an integer",
            (_, Kind::Bool) => "expected a boolean (true or false)",
            (_, Kind::Duration) => "expected a duration such as 25s or 1m30s",
            (_, Kind::String) => "expected a string",
        }
    }
}

/// Parses command-line or environment text as a value of `kind`.
pub fn parse_text(kind: Kind, text: &str) -> Result<Value, ValueError> {
    match kind {
        Kind::Int => parse_go_int(text).map(Value::Int),
        Kind::Bool => parse_go_bool(text).map(Value::Bool),
        Kind::String => Ok(Value::Str(text.to_string())),
        Kind::Duration => parse_duration(text).map(Value::Duration),
    }
}

/// The built-in default of an option as a typed value.
pub fn default_value(spec: &OptionSpec) -> Value {
    // Defaults are literals in the table; the `defaults_parse` test proves each one parses.
    parse_text(spec.kind, spec.default)
        .unwrap_or_else(|_| unreachable!("default of {} does not parse", spec.key))
}

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(text: &str) -> Result<bool, ValueError> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(ValueError::Syntax),
    }
}

/// Go's `strconv.ParseInt(text, 0, 64)`: optional sign, then a `0x`, `0o`, `0b` or bare `0`
/// (octal) prefix or none, with `_` allowed between digits.
pub fn parse_go_int(text: &str) -> Result<i64, ValueError> {
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let lower = unsigned.to_ascii_lowercase();
    let (radix, digits) = if let Some(rest) = lower.strip_prefix("0x") {
        (16, rest)
    } else if let Some(rest) = lower.strip_prefix("0o") {
        (8, rest)
    } else if let Some(rest) = lower.strip_prefix("0b") {
        (2, rest)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    let digits = strip_underscores(digits).ok_or(ValueError::Syntax)?;
    let mut magnitude: u64 = 0;
    for c in digits.chars() {
        let d = c.to_digit(radix).ok_or(ValueError::Syntax)?;
        magnitude = magnitude
            .checked_mul(u64::from(radix))
            .and_then(|m| m.checked_add(u64::from(d)))
            .ok_or(ValueError::Range)?;
    }
    if negative {
        0i64.checked_sub_unsigned(magnitude)
            .ok_or(ValueError::Range)
    } else {
        i64::try_from(magnitude).map_err(|_| ValueError::Range)
    }
}

/// Removes digit-separating underscores; `None` when the digits are empty or an underscore is
/// leading, trailing or doubled (Go rejects those).
fn strip_underscores(digits: &str) -> Option<String> {
    if digits.is_empty() || digits.ends_with('_') || digits.contains("__") {
        return None;
    }
    if digits.starts_with('_') {
        return None;
    }
    Some(digits.replace('_', ""))
}

/// A duration as `humantime` writes it (`25s`, `1m 30s`, `1m30s`, `500ms`) or a bare number of
/// seconds.
pub fn parse_duration(text: &str) -> Result<Duration, ValueError> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| ValueError::Range);
    }
    humantime::parse_duration(text).map_err(|_| ValueError::Syntax)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_has_one_row() {
        let ids = [
            OptionId::TotalBufferSizeMb,
            OptionId::Concurrency,
            OptionId::Region,
            OptionId::Endpoint,
            OptionId::UdpAddress,
            OptionId::TcpAddress,
            OptionId::ReceiveBufferBytes,
            OptionId::LogRotation,
            OptionId::LogLevel,
            OptionId::LogPath,
            OptionId::LocalMode,
            OptionId::ResourceArn,
            OptionId::RoleArn,
            OptionId::NoVerifySsl,
            OptionId::ProxyAddress,
            OptionId::LocalSink,
            OptionId::AdminAddress,
            OptionId::AdminEnableLifecycle,
            OptionId::ShutdownTimeout,
            OptionId::RetryMaxAge,
            OptionId::RoleExternalId,
            OptionId::RoleSessionName,
            OptionId::DisableTelemetry,
            OptionId::TcpIngest,
            OptionId::ProxyExtraPaths,
            OptionId::ProxyUpstreamTimeout,
        ];
        assert_eq!(ids.len(), OPTIONS.len());
        for id in ids {
            assert_eq!(OPTIONS.iter().filter(|s| s.id == id).count(), 1, "{id:?}");
        }
    }

    #[test]
    fn names_are_unique_and_env_follows_the_long_flag() {
        for (i, a) in OPTIONS.iter().enumerate() {
            let derived = format!("XRAY_{}", a.long.to_uppercase().replace('-', "_"));
            assert_eq!(a.env, derived);
            for b in &OPTIONS[i + 1..] {
                assert_ne!(a.key, b.key);
                assert_ne!(a.long, b.long);
                assert!(a.short.is_none() || a.short != b.short);
            }
            for meta in [CONFIG_FLAG, VERSION_FLAG] {
                assert_ne!(a.long, meta.long);
                assert_ne!(a.short, Some(meta.short));
            }
        }
    }

    #[test]
    fn defaults_parse() {
        for spec in OPTIONS {
            assert!(parse_text(spec.kind, spec.default).is_ok(), "{}", spec.key);
        }
        assert_eq!(
            default_value(spec(OptionId::ShutdownTimeout)),
            Value::Duration(Duration::from_secs(25))
        );
    }

    #[test]
    fn go_int_forms() {
        assert_eq!(parse_go_int("42"), Ok(42));
        assert_eq!(parse_go_int("-7"), Ok(-7));
        assert_eq!(parse_go_int("+7"), Ok(7));
        assert_eq!(parse_go_int("0x1F"), Ok(31));
        assert_eq!(parse_go_int("0o17"), Ok(15));
        assert_eq!(parse_go_int("017"), Ok(15));
        assert_eq!(parse_go_int("0b101"), Ok(5));
        assert_eq!(parse_go_int("1_000"), Ok(1000));
        assert_eq!(parse_go_int("0"), Ok(0));
        assert_eq!(parse_go_int("-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(parse_go_int("9223372036854775808"), Err(ValueError::Range));
        for bad in ["", "-", "abc", "1.5", "08", "0x", "_1", "1_", "1__0", " 1"] {
            assert_eq!(parse_go_int(bad), Err(ValueError::Syntax), "{bad:?}");
        }
    }

    #[test]
    fn go_bool_forms() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_go_bool(t), Ok(true));
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_go_bool(f), Ok(false));
        }
        for bad in ["yes", "tRUE", "", "2"] {
            assert_eq!(parse_go_bool(bad), Err(ValueError::Syntax));
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("25s"), Ok(Duration::from_secs(25)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("40"), Ok(Duration::from_secs(40)));
        for bad in ["", "abc", "-5", "5x"] {
            assert_eq!(parse_duration(bad), Err(ValueError::Syntax), "{bad:?}");
        }
    }
}
