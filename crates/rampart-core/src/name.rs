//! Interned, `Copy` service names.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Mutex, OnceLock, PoisonError};

/// The name of a downstream service (`"gemini_api"`, `"database"`), interned so that it is
/// `Copy`, costs nothing to carry in futures and errors, and can be used as a metric label.
///
/// Names are interned once per distinct string for the life of the process, so they are
/// meant for the small, bounded set of dependencies a program talks to, never for request
/// ids, URLs or other unbounded values.
///
/// # Example
///
/// ```
/// use rampart_core::Name;
///
/// let a = Name::new("gemini_api");
/// let b = Name::new(String::from("gemini_api"));
/// assert_eq!(a, b);
/// assert_eq!(a.as_str(), "gemini_api");
/// assert_eq!(Name::default().as_str(), "default");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(&'static str);

fn interned() -> &'static Mutex<HashSet<&'static str>> {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    NAMES.get_or_init(|| Mutex::new(HashSet::new()))
}

impl Name {
    /// Interns `name` (a no-op for a name seen before) and returns its handle.
    pub fn new(name: impl AsRef<str>) -> Name {
        let name = name.as_ref();
        let mut set = interned().lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = set.get(name) {
            return Name(existing);
        }
        let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
        set.insert(leaked);
        Name(leaked)
    }

    /// A name known at compile time; no interning needed.
    pub const fn from_static(name: &'static str) -> Name {
        Name(name)
    }

    /// The name as a string slice.
    pub const fn as_str(&self) -> &'static str {
        self.0
    }
}

impl Default for Name {
    /// `"default"`.
    fn default() -> Self {
        Name("default")
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.0)
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Name::new(s)
    }
}

impl From<String> for Name {
    fn from(s: String) -> Self {
        Name::new(s)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.0
    }
}
