//! Contract tests with the official OpenAI SDKs, unmodified, against `tollgate mock` and
//! through `tollgate serve`.
//!
//! The suites live in `tests/python` (pytest, the pinned `openai` package in `.venv`) and
//! `tests/node` (`node --test`, the pinned `openai` npm package). Every endpoint test runs
//! twice: SDK → simulator, and SDK → gateway → simulator; gateway-only tests cover keys,
//! roles, revocation, retries, stream fidelity and usage records. Each suite starts the
//! `tollgate` binary built for this test run (`TOLLGATE_BIN`) on ephemeral ports, with a
//! fresh temporary data directory per gateway. `scripts/setup` installs both SDKs;
//! `scripts/test` runs it before `cargo test`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `program args…` from the workspace root with `TOLLGATE_BIN` set, prints its
/// output and asserts that it exited with status 0.
fn run_suite(name: &str, program: &Path, args: &[&str]) {
    let root = workspace_root();
    let output = Command::new(program)
        .args(args)
        .current_dir(&root)
        .env("TOLLGATE_BIN", env!("CARGO_BIN_EXE_tollgate"))
        .output()
        .unwrap_or_else(|err| panic!("{name}: could not run {}: {err}", program.display()));
    println!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "{name} failed ({}); its output is above",
        output.status
    );
}

fn require_setup(path: &Path) {
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup (or scripts/test) first",
        path.display()
    );
}

#[test]
fn python_sdk_contract() {
    let root = workspace_root();
    let python = root.join(".venv/bin/python");
    require_setup(&python);
    run_suite(
        "python SDK suite",
        &python,
        &["-m", "pytest", "tests/python", "-q"],
    );
}

#[test]
fn node_sdk_contract() {
    let root = workspace_root();
    require_setup(&root.join("tests/node/node_modules/openai"));
    run_suite(
        "node SDK suite",
        Path::new("node"),
        &["--test", "tests/node/"],
    );
}
