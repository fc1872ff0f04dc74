//! Running the real `rampart` binary, shared by the CLI's test files.

#![allow(dead_code, clippy::unwrap_used)]

use std::process::{Command, Output, Stdio};

/// `rampart --store STORE ARGS…`, with no `RAMPART_DLQ_STORE` from the environment and no
/// standard input (so destructive commands need `--yes`).
pub(crate) fn rampart(store: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rampart"))
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("RAMPART_DLQ_STORE")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Standard output, standard error and the exit code.
pub(crate) fn text(o: &Output) -> (String, String, i32) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        o.status.code().unwrap_or(-1),
    )
}

/// As [`rampart`], failing the test unless the command succeeded; its standard output.
pub(crate) fn rampart_ok(store: &str, args: &[&str]) -> String {
    let o = rampart(store, args);
    assert!(
        o.status.success(),
        "{store}: rampart {args:?} failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
