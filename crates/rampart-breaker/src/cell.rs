//! The few atomics that a closed breaker's success path touches, in memory that lives for
//! the whole process and is recycled, so that response futures can reach them without
//! holding (and so incrementing and decrementing) a reference count on every call.
//!
//! A breaker takes a cell when it is made and gives it back when it is dropped; giving it
//! back bumps the cell's generation. A response future keeps the cell and the generation it
//! was admitted under: on success it resets the failure streak only if the generation still
//! matches. The one imprecision is a future that outlives its breaker *and* races the cell's
//! reuse by a new breaker between its generation check and its store: it may reset the new
//! breaker's failure streak once. Failures always go through the breaker itself (found
//! through the cell's weak owner), never through a stale cell.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, Weak};

use crate::breaker::Breaker;

#[derive(Debug)]
pub(crate) struct Cell {
    gen: AtomicU64,
    pub(crate) consecutive: AtomicU32,
    owner: Mutex<Weak<Breaker>>,
}

fn free() -> &'static Mutex<Vec<&'static Cell>> {
    static FREE: Mutex<Vec<&'static Cell>> = Mutex::new(Vec::new());
    &FREE
}

/// Takes a cell for `owner`; returns it with its current generation.
pub(crate) fn take(owner: Weak<Breaker>) -> (&'static Cell, u64) {
    let recycled = free().lock().unwrap_or_else(PoisonError::into_inner).pop();
    let cell: &'static Cell = match recycled {
        Some(c) => c,
        None => Box::leak(Box::new(Cell {
            gen: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            owner: Mutex::new(Weak::new()),
        })),
    };
    cell.consecutive.store(0, Ordering::Release);
    *cell.owner.lock().unwrap_or_else(PoisonError::into_inner) = owner;
    (cell, cell.gen.load(Ordering::Acquire))
}

/// Gives a cell back: futures still holding it see a new generation.
pub(crate) fn give_back(cell: &'static Cell) {
    cell.gen.fetch_add(1, Ordering::AcqRel);
    *cell.owner.lock().unwrap_or_else(PoisonError::into_inner) = Weak::new();
    cell.consecutive.store(0, Ordering::Release);
    free()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(cell);
}

impl Cell {
    /// `true` while the cell still belongs to the breaker of generation `gen`.
    #[inline(always)]
    pub(crate) fn is(&self, gen: u64) -> bool {
        self.gen.load(Ordering::Acquire) == gen
    }

    /// The breaker this cell belongs to, if it is still the one of generation `gen`.
    pub(crate) fn owner(&self, gen: u64) -> Option<std::sync::Arc<Breaker>> {
        let owner = self
            .owner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .upgrade();
        owner.filter(|_| self.is(gen))
    }
}
