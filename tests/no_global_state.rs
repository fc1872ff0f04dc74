//! No process-global mutable state in library code: every `static` item in the library
//! sources (`src/` and `crates/*/src/`) is listed here with why it may stay, and none holds
//! state that changes at run time (no `static mut`, no `Mutex`/`RwLock`/atomics/`OnceLock`
//! registries or pools, no `thread_local!`, no `Box::leak`).
//!
//! What remains, all immutable once built:
//! - `LazyLock<redis::Script>` (the Redis store's and the idempotent enqueue's Lua scripts):
//!   a script's source and its SHA-1, computed on first use and never changed;
//! - `LazyLock<Lua>` (the Redis dead-letter store's scripts): a `redis::Script` and a
//!   `&'static` table of the key types the script checks, built once and never changed.
//!
//! One scoped thread-local, not process-global state: `rampart_core::record`'s `CURRENT`,
//! the per-call record the dead-letter future lends to the layers below *while it polls
//! them*, with the stage that says which of them may write into it (both set and restored
//! around each poll, also on unwind, nested scopes kept apart — as tracing lends its current
//! span). Nothing in it outlives a poll; the record itself lives in the call's future. Beside
//! them it caches the thread's number (`thread_slot`: std's `ThreadId`, read once), which
//! picks the cache line a call's reference count goes to — the thread's identity, not
//! state. It is the only `thread_local!` allowed, in that one file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

/// Types a `static` may have: immutable once initialised.
const ALLOWED_STATIC_TYPES: &[&str] = &["LazyLock<Script>", "LazyLock<Lua>"];

/// The one scoped thread-local allowed (see the module docs): file suffix and the line's code.
const ALLOWED_SCOPED: &[(&str, &str)] = &[
    ("crates/rampart-core/src/record.rs", "thread_local!"),
    ("crates/rampart-core/src/record.rs", "static CURRENT: Scope"),
];

/// Things library code must not contain at all.
const FORBIDDEN: &[&str] = &["static mut ", "thread_local!", "Box::leak", "lazy_static!"];

/// Words that mark a `static`'s type as mutable state.
const MUTABLE: &[&str] = &[
    "Mutex", "RwLock", "Atomic", "OnceLock", "OnceCell", "LazyLock", "Cell<", "RefCell",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The library sources: the facade's and every workspace crate's `src/`.
fn library_sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    for krate in fs::read_dir(root.join("crates")).unwrap() {
        let src = krate.unwrap().path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    assert!(files.len() > 20, "found the sources: {files:?}");
    files
}

/// The code of a line, without a trailing `//` comment (string contents are not parsed: a
/// `//` inside a string only shortens what is checked).
fn code(line: &str) -> &str {
    line.split("//").next().unwrap_or("").trim()
}

/// `static NAME: TYPE = …` → `TYPE`, with spaces removed; `None` for other lines.
fn static_type(code: &str) -> Option<String> {
    let rest = code
        .strip_prefix("pub(crate) ")
        .or_else(|| code.strip_prefix("pub "))
        .unwrap_or(code);
    let rest = rest.strip_prefix("static ")?;
    let (_, ty) = rest.split_once(':')?;
    let ty = ty.split('=').next().unwrap_or(ty);
    Some(ty.chars().filter(|c| !c.is_whitespace()).collect())
}

#[test]
fn library_code_keeps_no_process_global_mutable_state() {
    let mut found = Vec::new();
    for file in library_sources() {
        let text = fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = code(line);
            let at = format!("{}:{}: {}", file.display(), n + 1, line.trim());
            let scoped = ALLOWED_SCOPED
                .iter()
                .any(|(f, c)| file.ends_with(f) && code.contains(c));
            if scoped {
                continue;
            }
            if FORBIDDEN.iter().any(|f| code.contains(f)) {
                found.push(at);
                continue;
            }
            if let Some(ty) = static_type(code) {
                let mutable = MUTABLE.iter().any(|m| ty.contains(m));
                if mutable && !ALLOWED_STATIC_TYPES.contains(&ty.as_str()) {
                    found.push(at);
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "process-global mutable state in library code:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scanner_catches_what_it_is_meant_to() {
    // The forms the library used before its layers owned their state.
    let old = [
        "    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();",
        "static FREE: Mutex<Vec<&'static Cell>> = Mutex::new(Vec::new());",
        "        static NEXT_ID: AtomicU64 = AtomicU64::new(1);",
        "    static POOL: std::sync::OnceLock<Pool> = std::sync::OnceLock::new();",
    ];
    for line in old {
        let ty = static_type(code(line)).expect(line);
        assert!(MUTABLE.iter().any(|m| ty.contains(m)), "{line}");
        assert!(!ALLOWED_STATIC_TYPES.contains(&ty.as_str()), "{line}");
    }
    let script = "static PUSH: LazyLock<Script> = LazyLock::new(|| {";
    assert_eq!(
        static_type(code(script)).as_deref(),
        Some("LazyLock<Script>")
    );
    assert_eq!(static_type("let x = 1;"), None);
}
