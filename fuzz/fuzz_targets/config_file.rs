//! The cfg.yaml reader on arbitrary text: `config::file::parse` with both validation levels
//! never panics, the `-c` checks are stricter than the search-path ones, and a file that
//! parses goes through the whole loader (`config::load` with `-c`: layering, validation);
//! a valid result renders (`/debug/config`) into a file that loads back to the same config.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xray_daemon::config::file::{parse, Validation};
use xray_daemon_fuzz::{assert_describe_round_trips, load_file};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let explicit = parse(text, Validation::Explicit);
    let discovered = parse(text, Validation::Discovered);
    match &explicit {
        Ok(explicit) => {
            let discovered = discovered
                .as_ref()
                .expect("a valid -c file is a valid found file");
            assert_eq!(explicit.values, discovered.values);
            assert_eq!(explicit.version, discovered.version);
        }
        Err(error) => {
            let _ = error.to_string();
            return;
        }
    }
    match load_file("cfg.yaml", data) {
        Ok(loaded) => assert_describe_round_trips(&loaded),
        Err(error) => {
            let _ = (error.to_string(), error.exit_code());
        }
    }
});
