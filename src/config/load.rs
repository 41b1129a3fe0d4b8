//! Layering the configuration with figment (defaults < cfg.yaml < `XRAY_*` environment < flags),
//! validating the result into a [`Config`], and dumping it with each value's source.
//!
//! [`load`] reads nothing but the configuration file: flags and environment arrive as values, so
//! a reload is the same call with the same snapshot.
//!
//! **Zero means default, in every layer.** As in the Go daemon's `merge`, a value of `0`, `""` or
//! a zero duration means "the built-in default". This daemon applies that rule to the
//! environment and to flags as well as to the file, for simplicity: `-m 0`, `XRAY_CONCURRENCY=0`
//! and `Concurrency: 0` all select the default, overriding any lower layer (so `-m 0` picks
//! auto-sizing even when the file says 64, as in Go). Booleans have no zero: an explicit `false`
//! is always kept.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::value::{Dict, Map, Value as FigValue};
use figment::{Figment, Metadata, Profile, Provider};
use thiserror::Error;

use super::file::{self, Validation};
use super::options::{self, Kind, OptionId, OptionSpec, Value, CONFIG_FLAG, OPTIONS};
use super::{Config, Source, Sources};
use crate::cli::Flags;

/// A loaded configuration with everything needed to explain it.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// Where each value came from.
    pub sources: Sources,
    /// The configuration file that was read, if any.
    pub file: Option<PathBuf>,
    /// Accepted but dubious settings, for the caller to log as warnings.
    pub warnings: Vec<String>,
}

/// A configuration that cannot be used. `Display` is the Go daemon's message where it has one;
/// every variant exits 1.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read. The I/O error is part of the message (Go's wording) rather
    /// than a `#[source]`, so printing the chain does not repeat it.
    #[error("Error occur when using config flag: open {}: {}", .path.display(), go_io_text(.error))]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// YAML syntax or value-type errors in the file.
    #[error("Error occur when using config flag: {0}")]
    Yaml(String),
    /// A `-c` file with keys but no `Version` key.
    #[error("Config Version is missing. Use X-Ray Daemon Config Migration Script to update the config file. Please refer to AWS X-Ray Documentation for more information.")]
    VersionMissing,
    /// `Version` is missing or not 1 or 2.
    #[error("Config Version Setting is not correct. Use X-Ray Daemon Config Migration Script to update the config file. Please refer to AWS X-Ray Documentation for more information.")]
    VersionIncorrect,
    /// A `-c` file key for a feature the Go daemon removed.
    #[error("{0} flag is not supported any more. Please refer to AWS X-Ray Documentation for more information.")]
    KeyRemoved(String),
    /// A `-c` file key of the 1.x file format.
    #[error("{0} flag is not supported. Use X-Ray Daemon Config Migration Script to update the config file. Please refer to AWS X-Ray Documentation for more information.")]
    KeyNeedsMigration(String),
    /// Any other unknown key in a `-c` file.
    #[error("{0} flag is invalid. Please refer to AWS X-Ray Documentation for more information.")]
    KeyInvalid(String),
    /// An `XRAY_*` variable whose text is not a value of the option's type.
    #[error("{var}: invalid value {value:?}: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// Its text.
        value: String,
        /// What was expected instead.
        reason: &'static str,
    },
    /// A flag value of the wrong type (only possible when `Flags` were not built by `cli::parse`,
    /// which rejects these with exit 2).
    #[error("{flag}: invalid value {value:?}: {reason}")]
    Flag {
        /// The flag as typed.
        flag: String,
        /// Its value.
        value: String,
        /// What was expected instead.
        reason: &'static str,
    },
    /// A well-typed value that the daemon cannot use.
    #[error("{key}: invalid value {value:?}: {reason} (from {origin})")]
    Invalid {
        /// The option's `cfg.yaml` key.
        key: &'static str,
        /// The offending value.
        value: String,
        /// What is wrong with it.
        reason: String,
        /// Which layer set it.
        origin: Source,
    },
    /// `TotalBufferSizeMB` of 1 or 2.
    #[error("Not enough Buffers Memory Allocated. Min Buffers Memory required: 3 MB.")]
    NotEnoughMemory,
    /// `ProxyAddress` is not a URL with a scheme; Go's wording, with any credentials masked.
    #[error("Bad proxy URL: {0}")]
    BadProxyUrl(String),
    /// figment could not combine or extract the layers (a bug, since every layer is typed).
    #[error("combining the configuration layers failed: {0}")]
    Merge(Box<figment::Error>),
}

impl ConfigError {
    /// The process exit status: 1, as for every configuration error of the Go daemon.
    pub fn exit_code(&self) -> i32 {
        1
    }
}

impl From<figment::Error> for ConfigError {
    fn from(error: figment::Error) -> Self {
        ConfigError::Merge(Box::new(error))
    }
}

/// Where a file is looked for when none is named: the Go daemon's two real locations, in order.
pub fn default_search_path() -> Vec<PathBuf> {
    vec![
        PathBuf::from("/etc/amazon/xray/cfg.yaml"),
        PathBuf::from("./cfg.yaml"),
    ]
}

/// Builds the configuration from defaults, a file, the environment and the flags.
///
/// With `-c PATH` (or `XRAY_CONFIG`) only that file is read, with every Go check. Otherwise the
/// first existing file of `search_path` is read with the YAML/type and `Version` checks only.
/// Unlike the Go daemon, a search-path file is not also read when `-c` is given: Go's quirk
/// means a broken `/etc/amazon/xray/cfg.yaml` kills a daemon that was told to use another file.
pub fn load(
    flags: &Flags,
    env: &HashMap<String, String>,
    search_path: &[PathBuf],
) -> Result<Loaded, ConfigError> {
    let file = match explicit_file(flags, env) {
        Some(path) => Some((file::read(&path, Validation::Explicit)?, path)),
        None => match discover(search_path) {
            Some(path) => Some((file::read(&path, Validation::Discovered)?, path)),
            None => None,
        },
    };
    let mut warnings = Vec::new();
    let mut figment = Figment::new().merge(Layer::defaults());
    if let Some((values, path)) = &file {
        for key in &values.ignored_keys {
            warnings.push(format!("Ignoring unknown key {key} in {}", path.display()));
        }
        figment = figment.merge(Layer::file(path, &values.values));
    }
    for spec in OPTIONS {
        if let Some(text) = env.get(spec.env) {
            figment = figment.merge(Layer::env(spec, text)?);
        }
    }
    for flag in &flags.options {
        figment = figment.merge(Layer::flag(flag)?);
    }
    let (values, sources) = extract(&figment)?;
    let config = validate(&values, &sources, &mut warnings)?;
    Ok(Loaded {
        config,
        sources,
        file: file.map(|(_, path)| path),
        warnings,
    })
}

/// `-c` wins over `XRAY_CONFIG`; an empty value names no file, as `-c ""` does in Go.
fn explicit_file(flags: &Flags, env: &HashMap<String, String>) -> Option<PathBuf> {
    let from_env = CONFIG_FLAG
        .env
        .and_then(|var| env.get(var))
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    flags.config.clone().or(from_env)
}

/// The first search-path entry that exists. Like Go's `os.Stat` test, only "not found" skips an
/// entry: a file that exists but cannot be read is an error, not silently passed over.
fn discover(search_path: &[PathBuf]) -> Option<PathBuf> {
    search_path
        .iter()
        .find_map(|path| match fs::metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            _ => Some(path.clone()),
        })
}

/// One figment provider: a set of typed values under one piece of metadata. Environment
/// variables and flags get one layer each, so figment's metadata names the exact variable or
/// flag behind every value.
struct Layer {
    metadata: Metadata,
    dict: Dict,
}

impl Layer {
    fn defaults() -> Self {
        let mut dict = Dict::new();
        for spec in OPTIONS {
            insert(
                &mut dict,
                spec.key,
                to_figment(&options::default_value(spec)),
            );
        }
        Layer {
            metadata: Metadata::named(ORIGIN_DEFAULT),
            dict,
        }
    }

    fn file(path: &Path, values: &BTreeMap<OptionId, Value>) -> Self {
        let mut dict = Dict::new();
        for (id, value) in values {
            let spec = options::spec(*id);
            insert(
                &mut dict,
                spec.key,
                to_figment(&zero_to_default(spec, value.clone())),
            );
        }
        Layer {
            metadata: Metadata::named(ORIGIN_FILE)
                .source(figment::Source::File(path.to_path_buf())),
            dict,
        }
    }

    fn env(spec: &OptionSpec, text: &str) -> Result<Self, ConfigError> {
        let value = options::parse_text(spec.kind, text).map_err(|e| ConfigError::Env {
            var: spec.env,
            value: text.to_string(),
            reason: e.expected(spec.kind),
        })?;
        Ok(Self::single(spec, value, ORIGIN_ENV, spec.env))
    }

    fn flag(flag: &crate::cli::FlagValue) -> Result<Self, ConfigError> {
        let spec = options::spec(flag.id);
        let value = options::parse_text(spec.kind, &flag.value).map_err(|e| ConfigError::Flag {
            flag: flag.flag.clone(),
            value: flag.value.clone(),
            reason: e.expected(spec.kind),
        })?;
        Ok(Self::single(spec, value, ORIGIN_FLAG, &flag.flag))
    }

    fn single(spec: &OptionSpec, value: Value, origin: &'static str, name: &str) -> Self {
        let mut dict = Dict::new();
        insert(
            &mut dict,
            spec.key,
            to_figment(&zero_to_default(spec, value)),
        );
        Layer {
            metadata: Metadata::named(origin).source(figment::Source::Custom(name.to_string())),
            dict,
        }
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

const ORIGIN_DEFAULT: &str = "default";
const ORIGIN_FILE: &str = "file";
const ORIGIN_ENV: &str = "env";
const ORIGIN_FLAG: &str = "flag";

fn zero_to_default(spec: &OptionSpec, value: Value) -> Value {
    if value.is_zero() {
        options::default_value(spec)
    } else {
        value
    }
}

/// Puts `value` at a `Parent.Child` key path, creating the parent dictionary.
fn insert(dict: &mut Dict, key: &str, value: FigValue) {
    match key.split_once('.') {
        None => {
            dict.insert(key.to_string(), value);
        }
        Some((parent, child)) => {
            let entry = dict
                .entry(parent.to_string())
                .or_insert_with(|| FigValue::from(Dict::new()));
            if let FigValue::Dict(_, children) = entry {
                insert(children, child, value);
            }
        }
    }
}

/// Durations travel through figment as humantime text, which round-trips exactly.
fn to_figment(value: &Value) -> FigValue {
    match value {
        Value::Int(n) => FigValue::from(*n),
        Value::Bool(b) => FigValue::from(*b),
        Value::Str(s) => FigValue::from(s.clone()),
        Value::Duration(d) => FigValue::from(humantime::format_duration(*d).to_string()),
    }
}

/// Pulls every option's merged value and the metadata of the layer that supplied it.
fn extract(figment: &Figment) -> Result<(HashMap<OptionId, Value>, Sources), ConfigError> {
    let mut values = HashMap::new();
    let mut sources = Sources::default();
    for spec in OPTIONS {
        let value = match spec.kind {
            Kind::Int => Value::Int(figment.extract_inner::<i64>(spec.key)?),
            Kind::Bool => Value::Bool(figment.extract_inner::<bool>(spec.key)?),
            Kind::String => Value::Str(figment.extract_inner::<String>(spec.key)?),
            Kind::Duration => {
                let text = figment.extract_inner::<String>(spec.key)?;
                let duration =
                    options::parse_duration(&text).map_err(|e| ConfigError::Invalid {
                        key: spec.key,
                        value: text.clone(),
                        reason: e.expected(spec.kind).to_string(),
                        origin: Source::Default,
                    })?;
                Value::Duration(duration)
            }
        };
        let origin = figment
            .find_metadata(spec.key)
            .map_or(Source::Default, origin_of);
        values.insert(spec.id, value);
        sources.insert(spec.id, origin);
    }
    Ok((values, sources))
}

fn origin_of(metadata: &Metadata) -> Source {
    match (metadata.name.as_ref(), &metadata.source) {
        (ORIGIN_FILE, Some(figment::Source::File(path))) => Source::File(path.clone()),
        (ORIGIN_ENV, Some(figment::Source::Custom(var))) => Source::Env(var.clone()),
        (ORIGIN_FLAG, Some(figment::Source::Custom(flag))) => Source::Flag(flag.clone()),
        _ => Source::Default,
    }
}

/// Typed access to the merged values while validating.
struct Merged<'a> {
    values: &'a HashMap<OptionId, Value>,
    sources: &'a Sources,
}

impl Merged<'_> {
    fn int(&self, id: OptionId) -> i64 {
        match self.values.get(&id) {
            Some(Value::Int(n)) => *n,
            _ => 0,
        }
    }

    fn flag(&self, id: OptionId) -> bool {
        matches!(self.values.get(&id), Some(Value::Bool(true)))
    }

    fn text(&self, id: OptionId) -> String {
        match self.values.get(&id) {
            Some(Value::Str(s)) => s.clone(),
            _ => String::new(),
        }
    }

    fn optional(&self, id: OptionId) -> Option<String> {
        Some(self.text(id)).filter(|s| !s.is_empty())
    }

    fn duration(&self, id: OptionId) -> Duration {
        match self.values.get(&id) {
            Some(Value::Duration(d)) => *d,
            _ => Duration::ZERO,
        }
    }

    fn invalid(&self, id: OptionId, value: impl ToString, reason: impl ToString) -> ConfigError {
        ConfigError::Invalid {
            key: options::spec(id).key,
            value: value.to_string(),
            reason: reason.to_string(),
            origin: self.sources.get(id).cloned().unwrap_or(Source::Default),
        }
    }

    /// A `host:port` listen address (the host may be empty, as in Go's `:2000`).
    fn address(&self, id: OptionId) -> Result<String, ConfigError> {
        let text = self.text(id);
        match address_problem(&text) {
            None => Ok(text),
            Some(reason) => Err(self.invalid(id, &text, reason)),
        }
    }
}

/// Turns merged, typed values into a `Config`, rejecting what the daemon cannot use.
fn validate(
    values: &HashMap<OptionId, Value>,
    sources: &Sources,
    warnings: &mut Vec<String>,
) -> Result<Config, ConfigError> {
    use OptionId::*;
    let m = Merged { values, sources };

    let total_buffer_size_mb = match m.int(TotalBufferSizeMb) {
        n if n < 0 => {
            warnings.push(format!(
                "TotalBufferSizeMB is negative ({n}): sizing the buffer automatically, as the Go daemon does"
            ));
            0
        }
        1 | 2 => return Err(ConfigError::NotEnoughMemory),
        n => n.unsigned_abs(),
    };

    let concurrency = match m.int(Concurrency) {
        n if n < 0 => {
            let default = match options::default_value(options::spec(Concurrency)) {
                Value::Int(d) => d,
                _ => 8,
            };
            warnings.push(format!(
                "Concurrency is negative ({n}), which makes the Go daemon upload nothing: using {default}"
            ));
            default
        }
        n => n,
    };
    let concurrency = usize::try_from(concurrency)
        .map_err(|_| m.invalid(Concurrency, concurrency, "too large"))?;

    let endpoint = m.optional(Endpoint);
    if let Some(url) = &endpoint {
        if let Some(reason) = url_problem(url) {
            return Err(m.invalid(
                Endpoint,
                url,
                format!("{reason}; expected a URL such as https://xray.us-east-1.amazonaws.com"),
            ));
        }
    }

    let proxy_address = m.optional(ProxyAddress);
    if let Some(url) = &proxy_address {
        if let Some(reason) = url_problem(url) {
            return Err(ConfigError::BadProxyUrl(format!(
                "parse {:?}: {reason}; expected a URL such as http://proxy.example.com:3128",
                redact_url(url)
            )));
        }
    }

    let receive_buffer_bytes = match m.int(ReceiveBufferBytes) {
        n if n <= 0 => return Err(m.invalid(ReceiveBufferBytes, n, "must be greater than 0")),
        n => usize::try_from(n).map_err(|_| m.invalid(ReceiveBufferBytes, n, "too large"))?,
    };

    Ok(Config {
        total_buffer_size_mb,
        concurrency,
        endpoint,
        region: m.optional(Region),
        udp_address: m.address(UdpAddress)?,
        tcp_address: m.address(TcpAddress)?,
        receive_buffer_bytes,
        log_rotation: m.flag(LogRotation),
        log_level: m.text(LogLevel),
        log_path: m.optional(LogPath).map(PathBuf::from),
        local_mode: m.flag(LocalMode),
        resource_arn: m.optional(ResourceArn),
        role_arn: m.optional(RoleArn),
        no_verify_ssl: m.flag(NoVerifySsl),
        proxy_address,
        local_sink: m.optional(LocalSink),
        admin_address: m.address(AdminAddress)?,
        admin_enable_lifecycle: m.flag(AdminEnableLifecycle),
        shutdown_timeout: m.duration(ShutdownTimeout),
        retry_max_age: m.duration(RetryMaxAge),
        role_external_id: m.optional(RoleExternalId),
        role_session_name: m.text(RoleSessionName),
        disable_telemetry: m.flag(DisableTelemetry),
        tcp_ingest: m.flag(TcpIngest),
        proxy_extra_paths: proxy_paths(&m.text(ProxyExtraPaths))
            .map_err(|reason| m.invalid(ProxyExtraPaths, m.text(ProxyExtraPaths), reason))?,
        proxy_upstream_timeout: m.duration(ProxyUpstreamTimeout),
    })
}

/// Splits a comma-separated list of X-Ray API paths; each must be an absolute path of letters
/// (`/GetSamplingStatisticSummaries`), so nothing but an API name can be allowed.
fn proxy_paths(text: &str) -> Result<Vec<String>, &'static str> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|path| {
            let name = path.strip_prefix('/').ok_or("each path must start with /")?;
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err("each path must be / followed by an X-Ray API name, e.g. /GetSamplingStatisticSummaries");
            }
            Ok(path.to_owned())
        })
        .collect()
}

/// Why `text` is not a `host:port` address, or `None` if it is one. Hosts are names, IPv4
/// addresses, bracketed IPv6 addresses, or empty (all interfaces, as Go allows).
fn address_problem(text: &str) -> Option<&'static str> {
    const SHAPE: &str = "expected host:port, e.g. 127.0.0.1:2000, 0.0.0.0:2000 or :2000";
    let Some((host, port)) = text.rsplit_once(':') else {
        return Some(SHAPE);
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err()
    {
        return Some("the port must be a number from 0 to 65535");
    }
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<Ipv6Addr>().is_ok())
    } else {
        host.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    };
    (!host_ok).then_some(SHAPE)
}

/// Why `text` is not an absolute URL with a scheme and a host, or `None` if it is one.
fn url_problem(text: &str) -> Option<&'static str> {
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("contains whitespace");
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return Some("missing scheme");
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Some("invalid scheme");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() || host.starts_with(':') {
        return Some("missing host");
    }
    None
}

/// `text` with any `user:password@` replaced by `***@`, so proxy credentials never reach logs
/// or the admin endpoints.
pub fn redact_url(text: &str) -> String {
    let (prefix, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), text),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{prefix}***{}", &rest[at..]),
        None => text.to_string(),
    }
}

/// The effective configuration as YAML in `cfg.yaml` layout, each value followed by a comment
/// naming its source; proxy credentials are masked. The output is itself a valid `-c` file.
pub fn describe(config: &Config, sources: &Sources) -> String {
    let mut out = String::from(
        "# Effective configuration; the comment after each value says where it came from.\n",
    );
    let mut parents_done: Vec<&str> = Vec::new();
    for spec in OPTIONS {
        match spec.key.split_once('.') {
            None => out.push_str(&describe_line("", spec.key, spec.id, config, sources)),
            Some((parent, _)) => {
                if parents_done.contains(&parent) {
                    continue;
                }
                parents_done.push(parent);
                out.push_str(&format!("{parent}:\n"));
                for child in OPTIONS {
                    if let Some(name) = child
                        .key
                        .strip_prefix(parent)
                        .and_then(|k| k.strip_prefix('.'))
                    {
                        out.push_str(&describe_line("  ", name, child.id, config, sources));
                    }
                }
            }
        }
    }
    out.push_str("Version: 2\n");
    out
}

fn describe_line(
    indent: &str,
    name: &str,
    id: OptionId,
    config: &Config,
    sources: &Sources,
) -> String {
    let value = effective_value(config, id);
    let scalar = match value {
        Value::Int(n) => serde_yaml::Value::from(n),
        Value::Bool(b) => serde_yaml::Value::from(b),
        Value::Str(s) if id == OptionId::ProxyAddress => serde_yaml::Value::from(redact_url(&s)),
        // An external ID is a shared secret between accounts: show only that one is set.
        Value::Str(s) if id == OptionId::RoleExternalId && !s.is_empty() => {
            serde_yaml::Value::from("***")
        }
        other => serde_yaml::Value::from(other.to_string()),
    };
    let rendered = serde_yaml::to_string(&scalar).unwrap_or_default();
    // A multi-line value comes out as a block scalar, which the trailing comment would join;
    // such values (and any with a raw CR) are written as one double-quoted line instead.
    let text = match &scalar {
        serde_yaml::Value::String(value) if rendered.trim_end().contains(['\n', '\r']) => {
            yaml_double_quoted(value)
        }
        _ => rendered.trim_end().to_owned(),
    };
    let origin = sources
        .get(id)
        .map_or_else(|| Source::Default.to_string(), ToString::to_string)
        .replace(['\n', '\r'], " ");
    format!("{indent}{name}: {text} # {origin}\n")
}

/// `text` as a YAML double-quoted scalar on one line: control characters (line breaks
/// included) and the Unicode line separators are escaped.
fn yaml_double_quoted(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                quoted.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// The value `config` holds for option `id`, as the option table types it.
fn effective_value(config: &Config, id: OptionId) -> Value {
    use OptionId::*;
    let text = |s: &Option<String>| Value::Str(s.clone().unwrap_or_default());
    match id {
        TotalBufferSizeMb => {
            Value::Int(i64::try_from(config.total_buffer_size_mb).unwrap_or(i64::MAX))
        }
        Concurrency => Value::Int(i64::try_from(config.concurrency).unwrap_or(i64::MAX)),
        Region => text(&config.region),
        Endpoint => text(&config.endpoint),
        UdpAddress => Value::Str(config.udp_address.clone()),
        TcpAddress => Value::Str(config.tcp_address.clone()),
        ReceiveBufferBytes => {
            Value::Int(i64::try_from(config.receive_buffer_bytes).unwrap_or(i64::MAX))
        }
        LogRotation => Value::Bool(config.log_rotation),
        LogLevel => Value::Str(config.log_level.clone()),
        LogPath => Value::Str(
            config
                .log_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ),
        LocalMode => Value::Bool(config.local_mode),
        ResourceArn => text(&config.resource_arn),
        RoleArn => text(&config.role_arn),
        NoVerifySsl => Value::Bool(config.no_verify_ssl),
        ProxyAddress => text(&config.proxy_address),
        LocalSink => text(&config.local_sink),
        AdminAddress => Value::Str(config.admin_address.clone()),
        AdminEnableLifecycle => Value::Bool(config.admin_enable_lifecycle),
        ShutdownTimeout => Value::Duration(config.shutdown_timeout),
        RetryMaxAge => Value::Duration(config.retry_max_age),
        RoleExternalId => text(&config.role_external_id),
        RoleSessionName => Value::Str(config.role_session_name.clone()),
        DisableTelemetry => Value::Bool(config.disable_telemetry),
        TcpIngest => Value::Bool(config.tcp_ingest),
        ProxyExtraPaths => Value::Str(config.proxy_extra_paths.join(",")),
        ProxyUpstreamTimeout => Value::Duration(config.proxy_upstream_timeout),
    }
}

/// An I/O error in Go's words: `no such file or directory` rather than Rust's
/// `No such file or directory (os error 2)`.
fn go_io_text(error: &io::Error) -> String {
    let text = error.to_string();
    let text = match text.rfind(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unique temporary file holding `text`, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(text: &str) -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "xray-load-test-{}-{}.yaml",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            fs::write(&path, text).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }

    fn flags(pairs: &[(OptionId, &str, &str)]) -> Flags {
        let mut flags = Flags::default();
        for (id, flag, value) in pairs {
            flags.set(*id, *flag, *value);
        }
        flags
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn with_file(
        text: &str,
        flags: Flags,
        env: HashMap<String, String>,
    ) -> (Result<Loaded, ConfigError>, TempFile) {
        let file = TempFile::new(text);
        let mut flags = flags;
        flags.config = Some(file.0.clone());
        (load(&flags, &env, &[]), file)
    }

    /// Flags naming `path` with `-c` and nothing else.
    fn config_flag(path: &Path) -> Flags {
        Flags {
            config: Some(path.to_path_buf()),
            ..Flags::default()
        }
    }

    fn nowhere() -> Vec<PathBuf> {
        vec![std::env::temp_dir().join("xray-load-test-does-not-exist.yaml")]
    }

    #[test]
    fn defaults_without_any_layer() {
        let loaded = load(&Flags::default(), &HashMap::new(), &nowhere()).unwrap();
        let c = &loaded.config;
        assert_eq!(c.total_buffer_size_mb, 0);
        assert_eq!(c.concurrency, 8);
        assert_eq!(c.endpoint, None);
        assert_eq!(c.region, None);
        assert_eq!(c.udp_address, "127.0.0.1:2000");
        assert_eq!(c.tcp_address, "127.0.0.1:2000");
        assert_eq!(c.receive_buffer_bytes, 4_194_304);
        assert!(c.log_rotation);
        assert_eq!(c.log_level, "prod");
        assert_eq!(c.log_path, None);
        assert!(!c.local_mode && !c.no_verify_ssl && !c.admin_enable_lifecycle);
        assert_eq!(c.admin_address, "127.0.0.1:2100");
        assert_eq!(c.shutdown_timeout, Duration::from_secs(25));
        assert_eq!(loaded.file, None);
        assert!(loaded.warnings.is_empty());
        for spec in OPTIONS {
            assert_eq!(
                loaded.sources.get(spec.id),
                Some(&Source::Default),
                "{}",
                spec.key
            );
        }
    }

    #[test]
    fn precedence_default_file_env_flag_with_sources() {
        let text =
            "Version: 2\nRegion: file-region\nConcurrency: 4\nEndpoint: https://file.example\n\
                    Socket:\n  UDPAddress: 0.0.0.0:2000\nLogging:\n  LogLevel: warn\n";
        let (loaded, file) = with_file(
            text,
            flags(&[
                (OptionId::Region, "-n", "flag-region"),
                (OptionId::LogLevel, "--log-level", "error"),
            ]),
            env(&[
                ("XRAY_REGION", "env-region"),
                ("XRAY_CONCURRENCY", "6"),
                ("XRAY_LOG_LEVEL", "debug"),
            ]),
        );
        let loaded = loaded.unwrap();
        let c = &loaded.config;
        assert_eq!(c.region.as_deref(), Some("flag-region"));
        assert_eq!(c.concurrency, 6);
        assert_eq!(c.endpoint.as_deref(), Some("https://file.example"));
        assert_eq!(c.udp_address, "0.0.0.0:2000");
        assert_eq!(c.log_level, "error");
        assert_eq!(c.tcp_address, "127.0.0.1:2000");
        let s = &loaded.sources;
        assert_eq!(s.get(OptionId::Region), Some(&Source::Flag("-n".into())));
        assert_eq!(
            s.get(OptionId::LogLevel),
            Some(&Source::Flag("--log-level".into()))
        );
        assert_eq!(
            s.get(OptionId::Concurrency),
            Some(&Source::Env("XRAY_CONCURRENCY".into()))
        );
        assert_eq!(
            s.get(OptionId::Endpoint),
            Some(&Source::File(file.0.clone()))
        );
        assert_eq!(
            s.get(OptionId::UdpAddress),
            Some(&Source::File(file.0.clone()))
        );
        assert_eq!(s.get(OptionId::TcpAddress), Some(&Source::Default));
        assert_eq!(
            s.by_key("Socket.UDPAddress"),
            Some(&Source::File(file.0.clone()))
        );
        assert_eq!(s.get(OptionId::Region).unwrap().to_string(), "flag -n");
        assert_eq!(
            s.get(OptionId::Concurrency).unwrap().to_string(),
            "env XRAY_CONCURRENCY"
        );
        assert_eq!(
            s.get(OptionId::Endpoint).unwrap().to_string(),
            format!("file {}", file.0.display())
        );
        assert_eq!(loaded.file, Some(file.0.clone()));
    }

    #[test]
    fn zero_means_default_in_every_layer_but_false_is_kept() {
        let text = "Version: 2\nConcurrency: 0\nTotalBufferSizeMB: 64\nRegion: \"\"\n\
                    LocalMode: true\nNoVerifySSL: false\nLogging:\n  LogRotation: false\n  LogLevel: \"\"\n\
                    Socket:\n  UDPAddress: \"\"\n";
        let (loaded, _file) = with_file(
            text,
            flags(&[
                (OptionId::TotalBufferSizeMb, "-m", "0"),
                (OptionId::LocalMode, "-o", "false"),
            ]),
            env(&[("XRAY_SHUTDOWN_TIMEOUT", "0"), ("XRAY_BIND_TCP", "")]),
        );
        let c = loaded.unwrap().config;
        assert_eq!(c.concurrency, 8);
        assert_eq!(
            c.total_buffer_size_mb, 0,
            "-m 0 selects auto-sizing over the file's 64"
        );
        assert_eq!(c.region, None);
        assert_eq!(c.log_level, "prod");
        assert_eq!(c.udp_address, "127.0.0.1:2000");
        assert_eq!(c.tcp_address, "127.0.0.1:2000");
        assert_eq!(c.shutdown_timeout, Duration::from_secs(25));
        assert!(!c.log_rotation, "explicit false in the file is kept");
        assert!(!c.local_mode, "explicit -o=false beats the file's true");
        assert!(!c.no_verify_ssl);
    }

    #[test]
    fn v1_without_tcp_address_gets_the_default_and_v2_keeps_it() {
        let (v1, _f1) = with_file(
            "Version: 1\nSocket:\n  UDPAddress: 0.0.0.0:3000\n",
            Flags::default(),
            HashMap::new(),
        );
        let v1 = v1.unwrap().config;
        assert_eq!(v1.udp_address, "0.0.0.0:3000");
        assert_eq!(v1.tcp_address, "127.0.0.1:2000");
        let (v2, _f2) = with_file(
            "Version: 2\nSocket:\n  UDPAddress: 0.0.0.0:3000\n  TCPAddress: 0.0.0.0:3001\n",
            Flags::default(),
            HashMap::new(),
        );
        assert_eq!(v2.unwrap().config.tcp_address, "0.0.0.0:3001");
    }

    #[test]
    fn discovered_file_skips_the_key_check_and_explicit_file_replaces_it() {
        let discovered = TempFile::new("Version: 2\nMemoryLimit: 3\nRegion: found\n");
        let path = vec![nowhere().remove(0), discovered.0.clone()];
        let loaded = load(&Flags::default(), &HashMap::new(), &path).unwrap();
        assert_eq!(loaded.file.as_ref(), Some(&discovered.0));
        assert_eq!(loaded.config.region.as_deref(), Some("found"));
        assert_eq!(loaded.warnings.len(), 1);
        assert!(loaded.warnings[0].contains("MemoryLimit"));

        // The same file named with -c gets the full check.
        let explicit = config_flag(&discovered.0);
        let err = load(&explicit, &HashMap::new(), &[]).unwrap_err();
        assert!(matches!(err, ConfigError::KeyNeedsMigration(ref k) if k == "MemoryLimit"));

        // With -c, a broken search-path file is never read.
        let broken = TempFile::new("Version: 9\n");
        let good = TempFile::new("Version: 2\nRegion: chosen\n");
        let chosen = config_flag(&good.0);
        let loaded = load(&chosen, &HashMap::new(), std::slice::from_ref(&broken.0)).unwrap();
        assert_eq!(loaded.config.region.as_deref(), Some("chosen"));
        // ... while without -c it is, and fails.
        assert!(matches!(
            load(
                &Flags::default(),
                &HashMap::new(),
                std::slice::from_ref(&broken.0)
            ),
            Err(ConfigError::VersionIncorrect)
        ));
    }

    #[test]
    fn xray_config_env_names_the_file_and_the_flag_wins() {
        let a = TempFile::new("Version: 2\nRegion: from-env-file\n");
        let b = TempFile::new("Version: 2\nRegion: from-flag-file\n");
        let vars = env(&[("XRAY_CONFIG", a.0.to_str().unwrap())]);
        let loaded = load(&Flags::default(), &vars, &[]).unwrap();
        assert_eq!(loaded.config.region.as_deref(), Some("from-env-file"));
        let f = config_flag(&b.0);
        let loaded = load(&f, &vars, &[]).unwrap();
        assert_eq!(loaded.config.region.as_deref(), Some("from-flag-file"));
    }

    #[test]
    fn env_values_are_typed_and_errors_name_the_variable() {
        let vars = env(&[
            ("XRAY_LOCAL_MODE", "T"),
            ("XRAY_BUFFER_MEMORY", "0x10"),
            ("XRAY_SHUTDOWN_TIMEOUT", "1m30s"),
            ("XRAY_ADMIN_ENABLE_LIFECYCLE", "1"),
            ("XRAY_LOCAL_SINK", "-"),
        ]);
        let c = load(&Flags::default(), &vars, &nowhere()).unwrap().config;
        assert!(c.local_mode && c.admin_enable_lifecycle);
        assert_eq!(c.total_buffer_size_mb, 16);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(90));
        assert_eq!(c.local_sink.as_deref(), Some("-"));

        let cases = [
            ("XRAY_CONCURRENCY", "x", "XRAY_CONCURRENCY: invalid value \"x\": expected an integer"),
            ("XRAY_LOCAL_MODE", "yes", "XRAY_LOCAL_MODE: invalid value \"yes\": expected a boolean (true or false)"),
            ("XRAY_SHUTDOWN_TIMEOUT", "soon", "XRAY_SHUTDOWN_TIMEOUT: invalid value \"soon\": expected a duration such as 25s or 1m30s"),
            ("XRAY_BUFFER_MEMORY", "99999999999999999999", "XRAY_BUFFER_MEMORY: invalid value \"99999999999999999999\": value out of range"),
        ];
        for (var, value, want) in cases {
            let err = load(&Flags::default(), &env(&[(var, value)]), &nowhere()).unwrap_err();
            assert_eq!(err.to_string(), want);
            assert_eq!(err.exit_code(), 1);
        }
    }

    #[test]
    fn hand_built_flags_are_type_checked_too() {
        let f = flags(&[(OptionId::Concurrency, "--concurrency", "many")]);
        let err = load(&f, &HashMap::new(), &nowhere()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--concurrency: invalid value \"many\": expected an integer"
        );
    }

    #[test]
    fn validation_messages() {
        let go_memory = "Not enough Buffers Memory Allocated. Min Buffers Memory required: 3 MB.";
        let cases: Vec<(Flags, HashMap<String, String>, String)> = vec![
            (flags(&[(OptionId::TotalBufferSizeMb, "-m", "1")]), env(&[]), go_memory.into()),
            (flags(&[]), env(&[("XRAY_BUFFER_MEMORY", "2")]), go_memory.into()),
            (
                flags(&[(OptionId::ProxyAddress, "-p", "proxy.local:3128")]),
                env(&[]),
                "Bad proxy URL: parse \"proxy.local:3128\": missing scheme; expected a URL such as http://proxy.example.com:3128".into(),
            ),
            (
                flags(&[(OptionId::ProxyAddress, "-p", "user:secret@proxy.local:3128")]),
                env(&[]),
                "Bad proxy URL: parse \"***@proxy.local:3128\": missing scheme; expected a URL such as http://proxy.example.com:3128".into(),
            ),
            (
                flags(&[(OptionId::ProxyAddress, "-p", "http://")]),
                env(&[]),
                "Bad proxy URL: parse \"http://\": missing host; expected a URL such as http://proxy.example.com:3128".into(),
            ),
            (
                flags(&[]),
                env(&[("XRAY_ENDPOINT", "xray.us-east-1.amazonaws.com")]),
                "Endpoint: invalid value \"xray.us-east-1.amazonaws.com\": missing scheme; expected a URL such as https://xray.us-east-1.amazonaws.com (from env XRAY_ENDPOINT)".into(),
            ),
            (
                flags(&[(OptionId::UdpAddress, "-b", "localhost")]),
                env(&[]),
                "Socket.UDPAddress: invalid value \"localhost\": expected host:port, e.g. 127.0.0.1:2000, 0.0.0.0:2000 or :2000 (from flag -b)".into(),
            ),
            (
                flags(&[(OptionId::TcpAddress, "--bind-tcp", "1.2.3.4:99999")]),
                env(&[]),
                "Socket.TCPAddress: invalid value \"1.2.3.4:99999\": the port must be a number from 0 to 65535 (from flag --bind-tcp)".into(),
            ),
            (
                flags(&[(OptionId::AdminAddress, "--admin-address", "::1:2100")]),
                env(&[]),
                "Admin.Address: invalid value \"::1:2100\": expected host:port, e.g. 127.0.0.1:2000, 0.0.0.0:2000 or :2000 (from flag --admin-address)".into(),
            ),
            (
                flags(&[(OptionId::ReceiveBufferBytes, "--receive-buffer-bytes", "-5")]),
                env(&[]),
                "Socket.ReceiveBufferBytes: invalid value \"-5\": must be greater than 0 (from flag --receive-buffer-bytes)".into(),
            ),
        ];
        for (f, e, want) in cases {
            let err = load(&f, &e, &nowhere()).unwrap_err();
            assert_eq!(err.to_string(), want);
            assert_eq!(err.exit_code(), 1);
        }
    }

    #[test]
    fn accepted_addresses_and_urls() {
        for ok in [
            ":2000",
            "0.0.0.0:2000",
            "[::1]:2000",
            "[::]:0",
            "xray-daemon.ns.svc:2000",
            "localhost:2000",
        ] {
            assert_eq!(address_problem(ok), None, "{ok}");
        }
        for bad in [
            "2000",
            "host:",
            "host:port",
            "[::1:2000",
            "a b:1",
            "::1:2000",
        ] {
            assert!(address_problem(bad).is_some(), "{bad}");
        }
        for ok in [
            "http://p:3128",
            "https://u:p@p.example:3128/",
            "socks5://10.0.0.1:1080",
            "http://[::1]:80",
        ] {
            assert_eq!(url_problem(ok), None, "{ok}");
        }
        for bad in [
            "p:3128",
            "://p",
            "1http://p",
            "http://",
            "http://u@",
            "http://a b",
        ] {
            assert!(url_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn concurrency_and_memory_quirks_become_warnings() {
        let f = flags(&[
            (OptionId::Concurrency, "--concurrency", "-3"),
            (OptionId::TotalBufferSizeMb, "-m", "-1"),
        ]);
        let loaded = load(&f, &HashMap::new(), &nowhere()).unwrap();
        assert_eq!(loaded.config.concurrency, 8);
        assert_eq!(loaded.config.total_buffer_size_mb, 0);
        assert_eq!(loaded.warnings.len(), 2);
        assert!(loaded.warnings[0].contains("TotalBufferSizeMB"));
        assert!(loaded.warnings[1].contains("Concurrency"));
        let ok = load(
            &flags(&[(OptionId::TotalBufferSizeMb, "-m", "3")]),
            &HashMap::new(),
            &nowhere(),
        );
        assert_eq!(ok.unwrap().config.total_buffer_size_mb, 3);
    }

    #[test]
    fn file_errors_surface_from_load() {
        let (err, _f) = with_file("Concurrency: 4\n", Flags::default(), HashMap::new());
        assert!(matches!(err, Err(ConfigError::VersionMissing)));
        let missing = config_flag(&nowhere().remove(0));
        let err = load(&missing, &HashMap::new(), &[]).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("Error occur when using config flag: open "));
        assert!(err.to_string().ends_with(": no such file or directory"));
    }

    #[test]
    fn reload_with_the_same_snapshot_sees_file_changes() {
        let file = TempFile::new("Version: 2\nRegion: before\n");
        let f = config_flag(&file.0);
        let vars = env(&[("XRAY_CONCURRENCY", "3")]);
        assert_eq!(
            load(&f, &vars, &[]).unwrap().config.region.as_deref(),
            Some("before")
        );
        fs::write(&file.0, "Version: 2\nRegion: after\n").unwrap();
        let again = load(&f, &vars, &[]).unwrap();
        assert_eq!(again.config.region.as_deref(), Some("after"));
        assert_eq!(again.config.concurrency, 3);
    }

    #[test]
    fn describe_redacts_proxy_credentials_and_round_trips() {
        let f = flags(&[(
            OptionId::ProxyAddress,
            "-p",
            "http://user:s3cret@proxy.local:3128",
        )]);
        let vars = env(&[("XRAY_REGION", "eu-west-1")]);
        let loaded = load(&f, &vars, &nowhere()).unwrap();
        let text = describe(&loaded.config, &loaded.sources);
        assert!(!text.contains("s3cret") && !text.contains("user"), "{text}");
        assert!(
            text.contains("ProxyAddress: http://***@proxy.local:3128 # flag -p\n"),
            "{text}"
        );
        assert!(
            text.contains("Region: eu-west-1 # env XRAY_REGION\n"),
            "{text}"
        );
        assert!(text.contains("Concurrency: 8 # default\n"), "{text}");
        assert!(
            text.contains("Socket:\n  UDPAddress: 127.0.0.1:2000 # default\n"),
            "{text}"
        );
        assert!(
            text.contains("  ReceiveBufferBytes: 4194304 # default\n"),
            "{text}"
        );
        assert!(text.contains("ShutdownTimeout: 25s # default\n"), "{text}");
        // The dump is a valid `-c` file that loads back to the same configuration (no proxy here).
        let plain = load(&Flags::default(), &vars, &nowhere()).unwrap();
        let dump = describe(&plain.config, &plain.sources);
        let (reloaded, _f) = with_file(&dump, Flags::default(), HashMap::new());
        assert_eq!(reloaded.unwrap().config, plain.config);
    }

    #[test]
    fn redact_url_forms() {
        assert_eq!(redact_url("http://u:p@h:1/x@y"), "http://***@h:1/x@y");
        assert_eq!(redact_url("http://h:1"), "http://h:1");
        assert_eq!(redact_url("u:p@h:1"), "***@h:1");
        assert_eq!(redact_url(""), "");
    }

    #[test]
    fn go_io_wording() {
        let e = io::Error::from_raw_os_error(13);
        assert_eq!(go_io_text(&e), "permission denied");
    }
}
