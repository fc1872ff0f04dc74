//! Replaying a request for a retry: [`Replay`] and [`CloneReplay`] live in `rampart-core`
//! (`rampart_core::replay`), so that the dead-letter layer copies a request for its record
//! the same way the retry layer copies it for the next attempt.

pub use rampart_core::replay::{CloneReplay, KeepsRequest, Replay};
