//! Checks shared by the fuzz targets.

use std::collections::HashMap;
use std::sync::OnceLock;

use xray_daemon::cli::Flags;
use xray_daemon::config::{self, Loaded};

/// A scratch directory for the files the targets write, kept for the process.
pub fn scratch() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// Loads `text` as the `-c` file, with no environment and no flags.
pub fn load_file(name: &str, text: &[u8]) -> Result<Loaded, config::ConfigError> {
    let path = scratch().join(name);
    std::fs::write(&path, text).unwrap();
    let flags = Flags {
        options: Vec::new(),
        config: Some(path),
    };
    config::load(&flags, &HashMap::new(), &[])
}

/// `/debug/config` promises its output "is itself a valid `-c` file": rendering a valid
/// configuration and loading the rendering gives the same configuration (values it masks
/// aside).
pub fn assert_describe_round_trips(loaded: &Loaded) {
    let described = config::describe(&loaded.config, &loaded.sources);
    let reloaded = match load_file("described.yaml", described.as_bytes()) {
        Ok(reloaded) => reloaded,
        Err(error) => panic!("describe() output does not load: {error}\n{described}"),
    };
    let mut expected = loaded.config.clone();
    let mut actual = reloaded.config;
    for config in [&mut expected, &mut actual] {
        config.proxy_address = None;
        config.role_external_id = None;
    }
    assert_eq!(actual, expected, "describe() output:\n{described}");
}
