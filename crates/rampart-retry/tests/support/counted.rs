//! A request that counts its clones: the request-copy tests of rampart-retry
//! (`keep_request.rs`), rampart-dlq (`request_source.rs`) and rampart (`one_clone.rs`)
//! include this file by path.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A request whose `Clone` adds one to `clones`.
#[derive(Debug)]
pub(crate) struct Counted {
    pub(crate) id: u32,
    pub(crate) clones: Arc<AtomicUsize>,
}

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, Ordering::SeqCst);
        Counted {
            id: self.id,
            clones: self.clones.clone(),
        }
    }
}
