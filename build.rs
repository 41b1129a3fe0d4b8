//! Stamps the binary with the git commit it was built from (`XRAY_GIT_COMMIT` overrides it,
//! for builds from a source archive without `.git`), and lays out the release binary's
//! functions in the order of `link/symbol-order.txt`.

use std::env;
use std::process::Command;

fn main() {
    symbol_order();
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

/// Puts the functions that start-up and the upload path run next to each other at the start
/// of the release binary's code (see scripts/symbol-order.sh): idle RSS falls by about 4 MB.
/// Only where the linker is known to be lld (rustc's default for x86_64 Linux since 1.90) and
/// nobody chose another; `XRAY_SYMBOL_ORDER=off` turns it off, e.g. to measure without it.
fn symbol_order() {
    const ORDER: &str = "link/symbol-order.txt";
    println!("cargo:rerun-if-changed={ORDER}");
    println!("cargo:rerun-if-env-changed=XRAY_SYMBOL_ORDER");
    let var = |name: &str| env::var(name).unwrap_or_default();
    let rustflags = var("CARGO_ENCODED_RUSTFLAGS");
    let linker_chosen = env::var_os("RUSTC_LINKER").is_some()
        || rustflags.contains("linker")
        || rustflags.contains("link-self-contained");
    if var("TARGET") != "x86_64-unknown-linux-gnu"
        || var("PROFILE") != "release"
        || var("XRAY_SYMBOL_ORDER") == "off"
        || linker_chosen
    {
        return;
    }
    let order = std::path::Path::new(&var("CARGO_MANIFEST_DIR")).join(ORDER);
    if order.is_file() {
        println!(
            "cargo:rustc-link-arg-bin=xray=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        // Names that this build does not have (another toolchain or Cargo.lock) only cost
        // memory; `scripts/symbol-order.sh check` reports them.
        println!("cargo:rustc-link-arg-bin=xray=-Wl,--no-warn-symbol-ordering");
    }
}
