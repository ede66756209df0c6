//! What the CLI tests share: the built binary run on a data directory as a user would
//! run it, its JSON answers, and its refusals.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// Runs `tollgate ARGS` on the data directory `dir`, as user alice.
pub fn tollgate(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env("TOLLGATE_DATA_DIR", dir)
        .env("USER", "alice")
        .env_remove("TOLLGATE_DATABASE_URL")
        .env_remove("TOLLGATE_CONFIG")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

/// Runs a command that must succeed and print JSON; returns the JSON.
pub fn json(dir: &Path, args: &[&str]) -> Value {
    let out = tollgate(dir, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs a command that must fail with `needle` in its standard error.
pub fn fails(dir: &Path, args: &[&str], needle: &str) {
    let out = tollgate(dir, args);
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "{args:?}: {err}");
}
