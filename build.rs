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
/// Opt-in with `XRAY_SYMBOL_ORDER=on` (the Makefile, the Dockerfile and the bench set it),
/// because the option is lld's: rustup's x86_64 Linux toolchains link with lld, but a
/// distribution's rustc or a chosen linker may use GNU ld, which refuses it.
fn symbol_order() {
    const ORDER: &str = "link/symbol-order.txt";
    println!("cargo:rerun-if-changed={ORDER}");
    for name in [
        "XRAY_SYMBOL_ORDER",
        "RUSTFLAGS",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER",
    ] {
        println!("cargo:rerun-if-env-changed={name}");
    }
    let var = |name: &str| env::var(name).unwrap_or_default();
    let rustflags = var("CARGO_ENCODED_RUSTFLAGS");
    let linker_chosen = env::var_os("RUSTC_LINKER").is_some()
        || ["linker", "link-self-contained", "fuse-ld"]
            .iter()
            .any(|flag| rustflags.contains(flag));
    if var("XRAY_SYMBOL_ORDER") != "on"
        || var("TARGET") != "x86_64-unknown-linux-gnu"
        || var("PROFILE") != "release"
        || linker_chosen
    {
        return;
    }
    let order = std::path::Path::new(&var("CARGO_MANIFEST_DIR")).join(ORDER);
    if order.is_file() {
        // -Xlinker rather than -Wl,: a comma in the path would split the argument.
        for arg in [
            "-Xlinker".to_owned(),
            format!("--symbol-ordering-file={}", order.display()),
            // Names that this build does not have (another toolchain or Cargo.lock) only
            // cost memory; `scripts/symbol-order.sh check` reports them.
            "-Xlinker".to_owned(),
            "--no-warn-symbol-ordering".to_owned(),
        ] {
            println!("cargo:rustc-link-arg-bin=xray={arg}");
        }
    }
}
