//! The `xray` binary: command line, configuration, logging, then the daemon until a signal;
//! every failure becomes the Go daemon's exit code (2 bad flags, 1 bad config/bind/region).

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use xray_daemon::app::{self, Daemon};
use xray_daemon::cli::{self, Command, Flags};
use xray_daemon::config::{self, Loaded, OptionId};
use xray_daemon::reload::ConfigInputs;
use xray_daemon::{healthcheck, logging, signals};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match cli::parse(&args) {
        Ok(command) => command,
        Err(error) => {
            eprintln!("{error}");
            print!("{}", cli::usage());
            return exit_code(error.exit_code());
        }
    };
    match command {
        Command::Help => {
            print!("{}", cli::usage());
            ExitCode::SUCCESS
        }
        Command::Healthcheck { url } => probe(&url),
        // Like the Go daemon, the configuration is validated before `-v` is honoured.
        Command::Version(flags) => match load_config(&flags) {
            Ok(_) => {
                println!("{}", cli::version_line(&version()));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run(flags) => match load_config(&flags) {
            Ok(loaded) => match run(inputs(flags), loaded) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    ExitCode::from(1)
                }
            },
            Err(code) => code,
        },
    }
}

fn version() -> String {
    format!(
        "{} (commit {})",
        xray_daemon::VERSION,
        xray_daemon::GIT_COMMIT
    )
}

fn inputs(flags: Flags) -> ConfigInputs {
    ConfigInputs {
        flags,
        env: std::env::vars().collect(),
        search_path: config::default_search_path(),
    }
}

/// Loads the configuration; on failure prints the Go daemon's `[Error]` line to stderr and
/// to the `-f` log file, and returns exit code 1.
fn load_config(flags: &Flags) -> Result<Loaded, ExitCode> {
    inputs(flags.clone()).load().map_err(|error| {
        let line = logging::format_line(SystemTime::now(), "Error", &error.to_string());
        eprint!("{line}");
        if let Some(log_file) = flags.get(OptionId::LogPath).filter(|f| !f.value.is_empty()) {
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_file.value)
                .and_then(|mut file| file.write_all(line.as_bytes()));
        }
        exit_code(error.exit_code())
    })
}

fn run(inputs: ConfigInputs, loaded: Loaded) -> anyhow::Result<()> {
    let config = &loaded.config;
    let (log_handle, level_warning) = logging::init(
        &config.log_level,
        config.log_path.clone(),
        config.log_rotation,
    )
    .context("Unable to set up logging")?;
    for warning in level_warning.iter().chain(&loaded.warnings) {
        tracing::warn!("{warning}");
    }
    if let Some(file) = &loaded.file {
        tracing::debug!("Using config file {}", file.display());
    }
    let runtime = app::runtime(std::env::var_os("TOKIO_WORKER_THREADS").is_some())
        .context("Unable to start the runtime")?;
    runtime.block_on(async {
        let daemon = Daemon::start(
            inputs,
            loaded,
            Some(log_handle),
            prometheus::Registry::new(),
        )
        .await?;
        release_relocation_pages();
        tokio::spawn(signals::forward_reloads(daemon.reload_sender()));
        daemon
            .run(async {
                let signal = signals::shutdown_requested().await;
                tracing::info!("Got shutdown signal: {signal}");
            })
            .await;
        tracing::debug!("Shutdown finished");
        Ok(())
    })
}

/// Gives back the pages of the executable's relocation table, read once by the loader and
/// never again (about 0.55 MB of resident memory; see `xray_daemon::memory`). Called once
/// start-up is done, so that start-up's own page faults do not map them back. They stay in
/// the page cache, as clean file pages the kernel may reclaim.
fn release_relocation_pages() {
    #[cfg(target_os = "linux")]
    match xray_daemon::memory::droppable_relocation_pages() {
        Ok(Some(pages)) => {
            let Some(start) = std::ptr::NonNull::new(pages.start as *mut std::ffi::c_void) else {
                return;
            };
            // SAFETY: `pages` are whole pages (of the kernel's page size) of a read-only
            // PT_LOAD segment of this executable, outside RELRO and every writable segment,
            // and /proc/self/maps shows them as a read-only private mapping of this very file
            // at the matching offset (`droppable_relocation_pages`). Never written, they are
            // clean file pages, which MADV_DONTNEED only unmaps: a later read faults them
            // back in from the file.
            let result = unsafe {
                nix::sys::mman::madvise(
                    start,
                    pages.len(),
                    nix::sys::mman::MmapAdvise::MADV_DONTNEED,
                )
            };
            match result {
                Ok(()) => tracing::debug!(
                    "Released {} KB of relocation table pages at {:#x}-{:#x}",
                    pages.len() / 1024,
                    pages.start,
                    pages.end
                ),
                Err(e) => tracing::debug!("Relocation table pages kept: {e}"),
            }
        }
        Ok(None) => {}
        Err(e) => tracing::debug!("{e}"),
    }
}

fn probe(url: &str) -> ExitCode {
    match healthcheck::probe(url, Duration::from_secs(3)) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("{url}: HTTP {status}");
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("{url}: {error}");
            ExitCode::from(1)
        }
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
