//! Service names: owned strings, free to copy when known at compile time.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// The name of a downstream service (`"gemini_api"`, `"database"`), carried in errors,
/// events and metric labels.
///
/// A `Name` owns its string: a name made at run time ([`Name::new`], `From<&str>`,
/// `From<String>`) holds it in an [`Arc<str>`], shared by clones and freed with the last
/// one; a name known at compile time ([`Name::from_static`], [`Name::default`]) borrows it
/// and costs nothing to make or clone. Nothing is kept for the life of the process, so
/// building layers per tenant or per request does not grow memory. Two names are equal when
/// their strings are, however they were made.
///
/// # Example
///
/// ```
/// use rampart_core::Name;
///
/// let a = Name::new("gemini_api");
/// let b = Name::from(String::from("gemini_api"));
/// const C: Name = Name::from_static("gemini_api");
/// assert_eq!(a, b);
/// assert_eq!(a, C);
/// assert_eq!(a.as_str(), "gemini_api");
/// assert_eq!(Name::default().as_str(), "default");
/// ```
#[derive(Clone)]
pub struct Name(Repr);

#[derive(Clone)]
enum Repr {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Name {
    /// A name owning a copy of `name`.
    pub fn new(name: impl AsRef<str>) -> Name {
        Name(Repr::Shared(Arc::from(name.as_ref())))
    }

    /// A name known at compile time: no allocation, and clones are plain copies.
    pub const fn from_static(name: &'static str) -> Name {
        Name(Repr::Static(name))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Static(s) => s,
            Repr::Shared(s) => s,
        }
    }

    /// The string of a name made by [`from_static`](Name::from_static) (or
    /// [`default`](Name::default)); `None` for one made at run time.
    ///
    /// With [`to_arc`](Name::to_arc), this lets a caller hand the name to an API that takes
    /// `&'static str` or `Arc<str>` (metric labels) without copying the string.
    pub const fn as_static(&self) -> Option<&'static str> {
        match self.0 {
            Repr::Static(s) => Some(s),
            Repr::Shared(_) => None,
        }
    }

    /// The name as an `Arc<str>`: a new reference to a run-time name's string, or a new
    /// allocation for a static one.
    pub fn to_arc(&self) -> Arc<str> {
        match &self.0 {
            Repr::Static(s) => Arc::from(*s),
            Repr::Shared(s) => Arc::clone(s),
        }
    }
}

impl Default for Name {
    /// `"default"`.
    fn default() -> Self {
        Name::from_static("default")
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Name {}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Hash for Name {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Name::new(s)
    }
}

impl From<String> for Name {
    fn from(s: String) -> Self {
        Name(Repr::Shared(Arc::from(s)))
    }
}

impl From<Arc<str>> for Name {
    fn from(s: Arc<str>) -> Self {
        Name(Repr::Shared(s))
    }
}

impl From<&Name> for Name {
    fn from(s: &Name) -> Self {
        s.clone()
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn equal_strings_are_equal_names_however_made() {
        let names = [
            Name::new("db"),
            Name::from("db"),
            Name::from(String::from("db")),
            Name::from(Arc::<str>::from("db")),
            Name::from_static("db"),
        ];
        let set: HashSet<&str> = names.iter().map(Name::as_str).collect();
        assert_eq!(set.len(), 1);
        for a in &names {
            for b in &names {
                assert_eq!(a, b);
                assert_eq!(a.cmp(b), Ordering::Equal);
            }
        }
        let by_name: HashSet<Name> = names.iter().cloned().collect();
        assert_eq!(by_name.len(), 1);
        assert!(by_name.contains("db"));
        assert!(Name::new("a") < Name::from_static("b"));
    }

    #[test]
    fn a_run_time_name_is_freed_with_its_last_clone() {
        let shared: Arc<str> = Arc::from("tenant-42");
        let name = Name::from(shared.clone());
        let copy = name.clone();
        assert_eq!(name.as_static(), None);
        assert!(Arc::ptr_eq(&copy.to_arc(), &shared));
        assert_eq!(Arc::strong_count(&shared), 3);
        drop((name, copy));
        assert_eq!(Arc::strong_count(&shared), 1);
    }

    #[test]
    fn a_static_name_stays_static() {
        const DB: Name = Name::from_static("db");
        let copy = DB.clone();
        assert_eq!(copy.as_static(), Some("db"));
        assert_eq!(Name::default().as_static(), Some("default"));
        assert_eq!(&*copy.to_arc(), "db");
    }

    #[test]
    fn display_pads_like_a_str() {
        assert_eq!(format!("[{:>4}]", Name::from_static("db")), "[  db]");
        assert_eq!(format!("{:?}", Name::new("db")), "\"db\"");
    }
}
