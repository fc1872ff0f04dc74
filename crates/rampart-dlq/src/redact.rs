//! Secrets never reach a store: headers, query parameters and URL passwords are redacted,
//! long text is truncated.

/// The replacement for a secret.
pub const REDACTED: &str = "[redacted]";

/// The default truncation length of free text (the reference design's 500 characters).
pub const DEFAULT_TRUNCATE: usize = 500;

/// Header names redacted by default (compared case-insensitively).
pub const SECRET_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-goog-api-key",
];

/// Query parameter names redacted by default (compared case-insensitively).
pub const SECRET_PARAMS: [&str; 4] = ["key", "api_key", "token", "access_token"];

/// What to redact. Users add names to the defaults.
///
/// # Example
///
/// ```
/// use rampart_dlq::Redactor;
///
/// let r = Redactor::default().header("x-internal-token");
/// assert!(r.is_secret_header("X-Internal-Token"));
/// assert_eq!(
///     r.url("https://user:hunter2@api.example/v1?key=abc&q=1"),
///     "https://user:[redacted]@api.example/v1?key=[redacted]&q=1"
/// );
/// assert_eq!(r.text("call https://x/y?token=s3cr3t failed"), "call https://x/y?token=[redacted] failed");
/// ```
#[derive(Debug, Clone)]
pub struct Redactor {
    headers: Vec<String>,
    params: Vec<String>,
    truncate: usize,
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor {
            headers: SECRET_HEADERS.iter().map(|s| (*s).to_owned()).collect(),
            params: SECRET_PARAMS.iter().map(|s| (*s).to_owned()).collect(),
            truncate: DEFAULT_TRUNCATE,
        }
    }
}

impl Redactor {
    /// Also redacts header `name`.
    #[must_use]
    pub fn header(mut self, name: &str) -> Self {
        self.headers.push(name.to_ascii_lowercase());
        self
    }

    /// Also redacts query parameter `name`.
    #[must_use]
    pub fn param(mut self, name: &str) -> Self {
        self.params.push(name.to_ascii_lowercase());
        self
    }

    /// Truncates free text to `chars` characters. Defaults to 500.
    #[must_use]
    pub fn truncate_to(mut self, chars: usize) -> Self {
        self.truncate = chars;
        self
    }

    /// `true` if header `name` is a secret.
    pub fn is_secret_header(&self, name: &str) -> bool {
        self.headers.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    fn is_secret_param(&self, name: &str) -> bool {
        self.params.iter().any(|p| p.eq_ignore_ascii_case(name))
    }

    /// A URL with its password and secret query parameters redacted.
    pub fn url(&self, url: &str) -> String {
        self.params_in(&passwords_in(url))
    }

    /// Free text (an error message) with URL passwords and secret `name=value` pairs
    /// redacted, truncated.
    pub fn text(&self, s: &str) -> String {
        self.truncate(&self.params_in(&passwords_in(s)))
    }

    /// Truncates to the configured length, marking the cut with `…`.
    pub fn truncate(&self, s: &str) -> String {
        truncate(s, self.truncate)
    }

    /// Replaces the value of every `name=value` whose name is a secret parameter, wherever it
    /// appears (query strings, form bodies, log-like text).
    fn params_in(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(eq) = rest.find('=') {
            let before = &rest[..eq];
            let name_start = before
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .map_or(0, |i| i + 1);
            let name = &before[name_start..];
            out.push_str(&rest[..=eq]);
            let after = &rest[eq + 1..];
            if !name.is_empty() && self.is_secret_param(name) {
                let end = after
                    .find(|c: char| {
                        c == '&'
                            || c == '#'
                            || c == ';'
                            || c == ','
                            || c == '"'
                            || c == '\''
                            || c.is_whitespace()
                    })
                    .unwrap_or(after.len());
                out.push_str(REDACTED);
                rest = &after[end..];
            } else {
                rest = after;
            }
        }
        out.push_str(rest);
        out
    }
}

/// Replaces the password of every `scheme://user:password@host` in `s`.
fn passwords_in(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let start = i + 3;
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let end = after
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..=colon]);
                        out.push_str(REDACTED);
                        out.push_str(&authority[at..]);
                    }
                    None => out.push_str(authority),
                }
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Truncates `s` to `max` characters, marking the cut with `…`.
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_redacted_everywhere_and_only_secrets() {
        let r = Redactor::default();
        assert_eq!(
            r.text("a?key=1&monkey=2&api_key=3"),
            "a?key=[redacted]&monkey=2&api_key=[redacted]"
        );
        assert_eq!(r.text("token=abc def"), "token=[redacted] def");
        assert_eq!(r.text("x=1 y=2"), "x=1 y=2");
        assert_eq!(r.url("http://h/p"), "http://h/p");
        assert_eq!(
            r.url("redis://:pw@127.0.0.1:6379/0"),
            "redis://:[redacted]@127.0.0.1:6379/0"
        );
        assert_eq!(r.url("http://user@h/p"), "http://user@h/p");
        assert_eq!(
            r.text("GET https://a:b@h/x failed, retry via redis://:pw@r:6379"),
            "GET https://a:[redacted]@h/x failed, retry via redis://:[redacted]@r:6379"
        );
    }

    #[test]
    fn truncation_counts_characters_not_bytes() {
        assert_eq!(truncate("héllo", 3), "hél…");
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate(&"x".repeat(600), 500).chars().count(), 501);
    }
}
