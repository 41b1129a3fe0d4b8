//! Reading `cfg.yaml` the way the Go daemon does: its YAML/type and `Version` checks for every
//! file, and its key check (unknown, removed and legacy keys) only for a file given with `-c`.
//!
//! The result is the typed values the file sets; layering and defaults are `load`'s business.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde_yaml::{Mapping, Value as Yaml};

use super::load::ConfigError;
use super::options::{Kind, OptionId, Value, IGNORED_KEYS, OPTIONS, VERSION_KEY};

/// Which of the Go daemon's checks a file gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// A file named with `-c`/`XRAY_CONFIG`: every check, including the key check.
    Explicit,
    /// A file found on the search path: YAML/type and `Version` checks only. The Go daemon never
    /// key-checks these, so a Go-era `/etc/amazon/xray/cfg.yaml` with stray keys must still load.
    Discovered,
}

/// Keys the Go daemon rejects as removed features.
const REMOVED_KEYS: &[&str] = &[
    "Profile.CPU",
    "Profile.Memory",
    "Socket.BufferSizeKB",
    "Logging.LogFormat",
    "Processor.BatchProcessorQueueSize",
];

/// Keys of the 1.x file format, which the Go daemon's migration script converts.
const LEGACY_KEYS: &[&str] = &[
    "LogRotation",
    "Processor.Region",
    "Processor.Endpoint",
    "Processor.Routine",
    "MemoryLimit",
];

/// What a configuration file sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileValues {
    /// Values of the keys present and not null; zero values are kept (the loader maps them to
    /// defaults).
    pub values: BTreeMap<OptionId, Value>,
    /// The file's `Version` (1 or 2; both are read identically).
    pub version: i64,
    /// Keys of a discovered file that nothing reads, so the caller can warn about them.
    pub ignored_keys: Vec<String>,
}

/// Every key a `-c` file may contain: the Go daemon's set plus this daemon's options.
pub fn valid_keys() -> Vec<&'static str> {
    OPTIONS
        .iter()
        .map(|s| s.key)
        .chain([VERSION_KEY])
        .chain(IGNORED_KEYS.iter().copied())
        .collect()
}

/// Reads and checks the file at `path`.
pub fn read(path: &Path, validation: Validation) -> Result<FileValues, ConfigError> {
    let text = fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse(&text, validation)
}

/// Checks and decodes the text of a configuration file, in the Go daemon's order: YAML syntax,
/// then (for `-c` files) the keys in file order, then value types, then `Version`.
pub fn parse(text: &str, validation: Validation) -> Result<FileValues, ConfigError> {
    let doc: Yaml =
        serde_yaml::from_str(text).map_err(|e| ConfigError::Yaml(format!("yaml: {e}")))?;
    let empty = Mapping::new();
    let map = match &doc {
        Yaml::Null => &empty,
        Yaml::Mapping(map) => map,
        other => {
            return Err(ConfigError::Yaml(format!(
                "yaml: unmarshal errors:\n  cannot unmarshal {} into the configuration (a mapping)",
                describe_node(other)
            )))
        }
    };
    let keys = flatten_keys(map);
    let unknown: Vec<String> = {
        let valid = valid_keys();
        keys.iter()
            .filter(|k| !valid.contains(&k.as_str()))
            .cloned()
            .collect()
    };
    if validation == Validation::Explicit {
        check_keys(&keys, &unknown)?;
    }
    let (values, version) = decode(map)?;
    if version != 1 && version != 2 {
        return Err(ConfigError::VersionIncorrect);
    }
    let ignored_keys = match validation {
        Validation::Explicit => Vec::new(),
        Validation::Discovered => unknown,
    };
    Ok(FileValues {
        values,
        version,
        ignored_keys,
    })
}

/// The Go daemon's key list: top-level keys, and `Parent.Child` for each key of a top-level
/// mapping (one level only). A key whose value is null or a scalar stays as it is.
pub fn flatten_keys(map: &Mapping) -> Vec<String> {
    let mut keys = Vec::new();
    for (key, value) in map {
        match value {
            Yaml::Mapping(children) => {
                for child in children.keys() {
                    keys.push(format!("{}.{}", key_text(key), key_text(child)));
                }
            }
            _ => keys.push(key_text(key)),
        }
    }
    keys
}

/// `ConfigValidation`: a missing `Version` is reported first (only when the file has keys at
/// all), then the first unknown key, classified as removed, legacy or invalid.
fn check_keys(keys: &[String], unknown: &[String]) -> Result<(), ConfigError> {
    if !keys.is_empty() && !keys.iter().any(|k| k == VERSION_KEY) {
        return Err(ConfigError::VersionMissing);
    }
    match unknown.first() {
        None => Ok(()),
        Some(key) if REMOVED_KEYS.contains(&key.as_str()) => {
            Err(ConfigError::KeyRemoved(key.clone()))
        }
        Some(key) if LEGACY_KEYS.contains(&key.as_str()) => {
            Err(ConfigError::KeyNeedsMigration(key.clone()))
        }
        Some(key) => Err(ConfigError::KeyInvalid(key.clone())),
    }
}

/// Decodes every option present in the file, collecting all type errors into one message as
/// yaml.v2 does.
fn decode(map: &Mapping) -> Result<(BTreeMap<OptionId, Value>, i64), ConfigError> {
    let mut errors = Vec::new();
    let mut values = BTreeMap::new();
    let mut bad_parents: Vec<&str> = Vec::new();
    for spec in OPTIONS {
        let node = match spec.key.split_once('.') {
            None => map.get(spec.key),
            Some((parent, child)) => match map.get(parent) {
                None | Some(Yaml::Null) => None,
                Some(Yaml::Mapping(children)) => children.get(child),
                Some(other) => {
                    if !bad_parents.contains(&parent) {
                        bad_parents.push(parent);
                        errors.push(format!(
                            "{parent}: cannot unmarshal {} into a mapping",
                            describe_node(other)
                        ));
                    }
                    None
                }
            },
        };
        match node.map(|n| decode_value(spec.kind, n)) {
            None | Some(Ok(None)) => {}
            Some(Ok(Some(value))) => {
                values.insert(spec.id, value);
            }
            Some(Err(e)) => errors.push(format!("{}: {e}", spec.key)),
        }
    }
    let version = match map.get(VERSION_KEY).map(|n| decode_value(Kind::Int, n)) {
        Some(Ok(Some(Value::Int(v)))) => v,
        Some(Err(e)) => {
            errors.push(format!("{VERSION_KEY}: {e}"));
            0
        }
        _ => 0,
    };
    if errors.is_empty() {
        Ok((values, version))
    } else {
        Err(ConfigError::Yaml(format!(
            "yaml: unmarshal errors:\n  {}",
            errors.join("\n  ")
        )))
    }
}

/// One YAML node as a value of `kind`, following yaml.v2: any scalar is a string, YAML 1.1
/// booleans (`yes`, `on`, ...) are booleans, null is "not set".
fn decode_value(kind: Kind, node: &Yaml) -> Result<Option<Value>, String> {
    let node = match node {
        Yaml::Tagged(tagged) => &tagged.value,
        other => other,
    };
    if node.is_null() {
        return Ok(None);
    }
    let mismatch = || {
        format!(
            "cannot unmarshal {} into {}",
            describe_node(node),
            kind_name(kind)
        )
    };
    let value = match (kind, node) {
        (Kind::Int, Yaml::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::Int(i),
            // yaml.v2 accepts a float that is a whole number.
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.2e18 => Value::Int(f as i64),
            _ => return Err(mismatch()),
        },
        (Kind::Bool, Yaml::Bool(b)) => Value::Bool(*b),
        (Kind::Bool, Yaml::String(s)) => Value::Bool(yaml11_bool(s).ok_or_else(mismatch)?),
        (Kind::String, Yaml::String(s)) => Value::Str(s.clone()),
        (Kind::String, Yaml::Number(n)) => Value::Str(n.to_string()),
        (Kind::String, Yaml::Bool(b)) => Value::Str(b.to_string()),
        (Kind::Duration, Yaml::Number(n)) => match n.as_u64() {
            Some(secs) => Value::Duration(std::time::Duration::from_secs(secs)),
            None => return Err(mismatch()),
        },
        (Kind::Duration, Yaml::String(s)) => {
            Value::Duration(super::options::parse_duration(s).map_err(|_| mismatch())?)
        }
        _ => return Err(mismatch()),
    };
    Ok(Some(value))
}

/// The YAML 1.1 boolean words yaml.v2 resolves (serde_yaml follows YAML 1.2 and leaves them as
/// strings).
fn yaml11_bool(s: &str) -> Option<bool> {
    match s {
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE" => {
            Some(true)
        }
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False" | "FALSE" => {
            Some(false)
        }
        _ => None,
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Int => "int",
        Kind::Bool => "bool",
        Kind::String => "string",
        Kind::Duration => "a duration",
    }
}

/// A node as yaml.v2 names it in errors: the tag, then a scalar's text in backticks, cut to
/// seven characters and `...` when longer than ten.
fn describe_node(node: &Yaml) -> String {
    let (tag, text) = match node {
        Yaml::Null => ("!!null", None),
        Yaml::Bool(b) => ("!!bool", Some(b.to_string())),
        Yaml::Number(n) if n.is_f64() => ("!!float", Some(n.to_string())),
        Yaml::Number(n) => ("!!int", Some(n.to_string())),
        Yaml::String(s) => ("!!str", Some(s.clone())),
        Yaml::Sequence(_) => ("!!seq", None),
        Yaml::Mapping(_) => ("!!map", None),
        Yaml::Tagged(tagged) => return describe_node(&tagged.value),
    };
    match text {
        None => tag.to_string(),
        Some(t) if t.chars().count() > 10 => {
            format!("{tag} `{}...`", t.chars().take(7).collect::<String>())
        }
        Some(t) => format!("{tag} `{t}`"),
    }
}

/// A mapping key as Go's `fmt.Sprint` prints it.
fn key_text(key: &Yaml) -> String {
    match key {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        Yaml::Null => "<nil>".to_string(),
        Yaml::Tagged(tagged) => key_text(&tagged.value),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MIGRATE: &str = "Use X-Ray Daemon Config Migration Script to update the config file. \
                           Please refer to AWS X-Ray Documentation for more information.";
    const REFER: &str = "Please refer to AWS X-Ray Documentation for more information.";

    fn explicit_err(text: &str) -> String {
        parse(text, Validation::Explicit).unwrap_err().to_string()
    }

    #[test]
    fn shipped_samples_pass_every_check() {
        for text in [
            include_str!("../../config/cfg.yaml"),
            include_str!("../../config/cfg-v1.yaml"),
            include_str!("../../config/local-dev.yaml"),
            include_str!("../../config/kubernetes.yaml"),
        ] {
            let parsed = parse(text, Validation::Explicit);
            assert!(parsed.is_ok(), "{parsed:?}\n{text}");
        }
    }

    #[test]
    fn go_default_file_decodes_to_go_defaults() {
        let file = parse(include_str!("../../config/cfg.yaml"), Validation::Explicit).unwrap();
        assert_eq!(file.version, 2);
        assert_eq!(
            file.values.get(&OptionId::UdpAddress),
            Some(&Value::Str("127.0.0.1:2000".into()))
        );
        assert_eq!(
            file.values.get(&OptionId::LogRotation),
            Some(&Value::Bool(true))
        );
        assert_eq!(
            file.values.get(&OptionId::LocalMode),
            Some(&Value::Bool(false))
        );
        assert_eq!(
            file.values.get(&OptionId::TotalBufferSizeMb),
            Some(&Value::Int(0))
        );
    }

    #[test]
    fn version_messages() {
        assert_eq!(
            explicit_err("Region: us-east-1\n"),
            format!("Config Version is missing. {MIGRATE}")
        );
        // Missing Version outranks an unknown key, whatever the order in the file.
        assert_eq!(
            explicit_err("Bogus: 1\nRegion: x\n"),
            format!("Config Version is missing. {MIGRATE}")
        );
        let incorrect = format!("Config Version Setting is not correct. {MIGRATE}");
        assert_eq!(explicit_err("Version: 3\n"), incorrect);
        assert_eq!(explicit_err("Version: 0\n"), incorrect);
        // An empty file has no keys, so only the version-value check fires (Go does the same).
        assert_eq!(explicit_err(""), incorrect);
        assert_eq!(explicit_err("Socket: {}\n"), incorrect);
        // Discovered files skip the key check but not the version check.
        assert_eq!(
            parse("Region: x\n", Validation::Discovered)
                .unwrap_err()
                .to_string(),
            incorrect
        );
    }

    #[test]
    fn key_messages_in_file_order() {
        let cases = [
            (
                "Profile:\n  CPU: x\n",
                format!("Profile.CPU flag is not supported any more. {REFER}"),
            ),
            (
                "Profile:\n  Memory: x\n",
                format!("Profile.Memory flag is not supported any more. {REFER}"),
            ),
            (
                "Socket:\n  BufferSizeKB: 64\n",
                format!("Socket.BufferSizeKB flag is not supported any more. {REFER}"),
            ),
            (
                "Logging:\n  LogFormat: x\n",
                format!("Logging.LogFormat flag is not supported any more. {REFER}"),
            ),
            (
                "Processor:\n  BatchProcessorQueueSize: 2\n",
                format!(
                    "Processor.BatchProcessorQueueSize flag is not supported any more. {REFER}"
                ),
            ),
            (
                "LogRotation: true\n",
                format!("LogRotation flag is not supported. {MIGRATE}"),
            ),
            (
                "Processor:\n  Region: x\n",
                format!("Processor.Region flag is not supported. {MIGRATE}"),
            ),
            (
                "Processor:\n  Endpoint: x\n",
                format!("Processor.Endpoint flag is not supported. {MIGRATE}"),
            ),
            (
                "Processor:\n  Routine: 2\n",
                format!("Processor.Routine flag is not supported. {MIGRATE}"),
            ),
            (
                "MemoryLimit: 3\n",
                format!("MemoryLimit flag is not supported. {MIGRATE}"),
            ),
            ("region: x\n", format!("region flag is invalid. {REFER}")),
            ("Socket:\n", format!("Socket flag is invalid. {REFER}")),
            (
                "ProxyServer:\n  IdleConnTimeout: 3\n",
                format!("ProxyServer.IdleConnTimeout flag is invalid. {REFER}"),
            ),
            (
                "Region:\n  Nested: x\n",
                format!("Region.Nested flag is invalid. {REFER}"),
            ),
            (
                "Bogus: 1\nMemoryLimit: 3\n",
                format!("Bogus flag is invalid. {REFER}"),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(
                explicit_err(&format!("Version: 2\n{body}")),
                want,
                "{body:?}"
            );
        }
    }

    #[test]
    fn lower_case_proxyserver_keys_are_accepted_and_ignored() {
        let text = "Version: 2\nproxyserver:\n  idleconntimeout: 5\n  maxidleconnsperhost: 1\n  maxidleconns: 9\n";
        let file = parse(text, Validation::Explicit).unwrap();
        assert!(file.values.is_empty());
    }

    #[test]
    fn discovered_files_skip_the_key_check_but_report_unknown_keys() {
        let text = "Version: 2\nMemoryLimit: 3\nRegion: eu-west-1\n";
        let file = parse(text, Validation::Discovered).unwrap();
        assert_eq!(file.ignored_keys, vec!["MemoryLimit".to_string()]);
        assert_eq!(
            file.values.get(&OptionId::Region),
            Some(&Value::Str("eu-west-1".into()))
        );
    }

    #[test]
    fn type_and_syntax_errors() {
        let err = explicit_err("Version: 2\nTotalBufferSizeMB: NotExist\n");
        assert_eq!(
            err,
            "Error occur when using config flag: yaml: unmarshal errors:\n  \
             TotalBufferSizeMB: cannot unmarshal !!str `NotExist` into int"
        );
        // A scalar `Socket` fails the key check of a -c file first, so use a discovered one.
        let err = parse(
            "Version: 2\nLocalMode: 1\nSocket: 5\nConcurrency: averyverylongword\n",
            Validation::Discovered,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "Error occur when using config flag: yaml: unmarshal errors:\n  \
             Concurrency: cannot unmarshal !!str `averyve...` into int\n  \
             Socket: cannot unmarshal !!int `5` into a mapping\n  \
             LocalMode: cannot unmarshal !!int `1` into bool"
        );
        assert_eq!(
            explicit_err("Version: \"2\"\n"),
            "Error occur when using config flag: yaml: unmarshal errors:\n  \
             Version: cannot unmarshal !!str `2` into int"
        );
        assert!(explicit_err("Version: 2\nRegion: [a\n")
            .starts_with("Error occur when using config flag: yaml: "));
        assert!(explicit_err("- a\n- b\n").starts_with(
            "Error occur when using config flag: yaml: unmarshal errors:\n  cannot unmarshal !!seq"
        ));
        // Discovered files get the type check too.
        assert!(parse("Version: 2\nConcurrency: x\n", Validation::Discovered).is_err());
    }

    #[test]
    fn yaml_v2_leniency() {
        let text = "Version: 1\nRegion: 123\nLocalMode: yes\nNoVerifySSL: off\nConcurrency: 4.0\n\
                    ShutdownTimeout: 1m30s\nSocket:\n  ReceiveBufferBytes: 0x100\nLogging:\n  LogPath:\n";
        let file = parse(text, Validation::Explicit).unwrap();
        let v = |id| file.values.get(&id).cloned();
        assert_eq!(v(OptionId::Region), Some(Value::Str("123".into())));
        assert_eq!(v(OptionId::LocalMode), Some(Value::Bool(true)));
        assert_eq!(v(OptionId::NoVerifySsl), Some(Value::Bool(false)));
        assert_eq!(v(OptionId::Concurrency), Some(Value::Int(4)));
        assert_eq!(
            v(OptionId::ShutdownTimeout),
            Some(Value::Duration(Duration::from_secs(90)))
        );
        assert_eq!(v(OptionId::ReceiveBufferBytes), Some(Value::Int(256)));
        assert_eq!(v(OptionId::LogPath), None);
    }

    #[test]
    fn unreadable_file_uses_go_wording() {
        let path =
            std::env::temp_dir().join(format!("xray-cfg-missing-{}.yaml", std::process::id()));
        let err = read(&path, Validation::Explicit).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "Error occur when using config flag: open {}: no such file or directory",
                path.display()
            )
        );
    }
}
