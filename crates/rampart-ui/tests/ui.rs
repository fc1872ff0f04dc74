//! rampart's compiler messages, pinned: each case in `tests/ui/` must fail to compile with
//! the `.stderr` beside it, whose first lines are rampart's own `on_unimplemented` message
//! and notes (what to do), not a bare unsatisfied bound.
//!
//! Cost: trybuild checks the cases in a project of its own, which checks rampart's
//! dependencies again (59 crates, `cargo check`) in `<target>/tests/trybuild`. Measured from
//! an empty trybuild directory without sccache, on the shared 2-core machine under load
//! (load average ~5): 48 s for this test (27 s of it that build), 38 s user + 7 s system CPU;
//! 3 s once that directory is built. After a deliberate change of a message (or of rustc),
//! `TRYBUILD=overwrite cargo test -p rampart-ui` rewrites the `.stderr` files: read the diff.

#[test]
fn compiler_messages_say_what_to_do() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
