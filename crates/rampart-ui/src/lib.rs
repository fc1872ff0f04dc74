//! Compile-fail tests of rampart's compiler messages: the shapes a tower user gets wrong
//! (a `BoxService`, a streaming body or a foreign error type under a `Policy`, a
//! classifier or extractor of the wrong type), each pinned with the message rustc prints,
//! which must say what to do. The cases are in `tests/ui/`; run them with
//! `cargo test -p rampart-ui` (`TRYBUILD=overwrite` rewrites the expected `.stderr` files
//! after a deliberate change of message or of rustc).
//!
//! The crate has no code of its own.
