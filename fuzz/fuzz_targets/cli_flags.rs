//! The Go-style flag parser on arbitrary argument vectors (NUL-separated in the input):
//! `cli::parse` never panics, its errors render and carry exit code 2, and the flags it
//! returns go through the config loader (layering, validation); a valid result renders
//! (`/debug/config`) into a file that loads back to the same config.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use xray_daemon::cli::{self, Command};
use xray_daemon_fuzz::assert_describe_round_trips;

fuzz_target!(|data: &[u8]| {
    let args: Vec<String> = if data.is_empty() {
        Vec::new()
    } else {
        data.split(|&b| b == 0)
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect()
    };
    let flags = match cli::parse(&args) {
        Ok(Command::Run(flags) | Command::Version(flags)) => flags,
        Ok(Command::Help | Command::Healthcheck { .. }) => return,
        Err(error) => {
            let _ = error.to_string();
            assert_eq!(error.exit_code(), 2, "{error}");
            return;
        }
    };
    // Files are the config_file target's business (and `-c /dev/zero` would only test the
    // operator's patience): validate the flag values alone.
    let flags = cli::Flags {
        config: None,
        ..flags
    };
    match xray_daemon::config::load(&flags, &HashMap::new(), &[]) {
        Ok(loaded) => assert_describe_round_trips(&loaded),
        Err(error) => {
            let _ = error.to_string();
        }
    }
});
