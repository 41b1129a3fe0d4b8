//! The real `xray` binary as a child process with an environment of its own, for what the AWS
//! SDK reads from the process environment (FIPS and dual-stack settings, web identity and
//! container credentials): in-process daemons share one environment with every other test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::fake_xray;

/// A running `xray` process; killed when dropped.
pub struct Xray {
    child: Child,
    log: PathBuf,
    /// Its working and home directory (removed when dropped).
    _dir: tempfile::TempDir,
}

impl Xray {
    /// Starts `xray -o -n us-east-1 -l debug` with `args` appended, every listener on an
    /// ephemeral loopback port, and an environment of only `env` (plus `HOME` in its own
    /// directory, so no shared config of the machine is read, and instance metadata off).
    /// Waits until it listens.
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Xray {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("xray.log");
        let child = Command::new(env!("CARGO_BIN_EXE_xray"))
            .args(["-o", "-n", fake_xray::REGION, "-l", "debug"])
            .args(["-b", "127.0.0.1:0", "-t", "127.0.0.1:0"])
            .args(["--admin-address", "127.0.0.1:0"])
            .args(["-f", log.to_str().unwrap()])
            .args(args)
            .current_dir(dir.path())
            .env_clear()
            .env("HOME", dir.path())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("xray starts");
        let xray = Xray {
            child,
            log,
            _dir: dir,
        };
        xray.wait_for_log("Listening on UDP", Duration::from_secs(15))
            .await;
        xray
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The first log line containing `needle`, waiting up to `timeout` for it.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {needle:?} in the log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The address logged right after `prefix` (e.g. `Starting admin server on `).
    async fn address(&self, prefix: &str) -> SocketAddr {
        let line = self.wait_for_log(prefix, Duration::from_secs(5)).await;
        let (_, rest) = line.split_once(prefix).unwrap();
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// Where it receives segments.
    pub async fn udp(&self) -> SocketAddr {
        self.address("Listening on UDP ").await
    }

    /// Its TCP port (the sampling proxy).
    pub async fn tcp(&self) -> SocketAddr {
        self.address("Starting proxy http server on ").await
    }

    /// Its admin server.
    pub async fn admin(&self) -> SocketAddr {
        self.address("Starting admin server on ").await
    }
}

impl Drop for Xray {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
