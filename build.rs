//! Stamps the binary with the git commit it was built from (`XRAY_GIT_COMMIT` overrides it,
//! for builds from a source archive without `.git`).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=XRAY_GIT_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs");
    let commit = std::env::var("XRAY_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let output = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            output
                .status
                .success()
                .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        });
    println!(
        "cargo:rustc-env=XRAY_GIT_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
}
