//! Secrets never reach a store: names that look secret (headers, query and form parameters,
//! JSON fields at any depth, `name=value` / `name: value` pairs in free text) and values that
//! look like credentials (bearer and basic credentials, Google API keys, JWTs, URL passwords,
//! long high-entropy tokens) are replaced by [`REDACTED`], always before anything is encoded.
//!
//! # Names
//!
//! A name is compared in a normalised form: percent-decoded, camelCase split, case-folded and
//! with every run of `-`, `_`, `.` or other punctuation made one `_`. `X-Goog-Api-Key`,
//! `x_goog_api_key` and `xGoogApiKey` are all `x_goog_api_key`; `access%5Ftoken` is
//! `access_token`. A normalised name is secret if
//!
//! - it is one of [`SECRET_NAMES`] (`key`, `auth`, `pwd`, `sid`, …);
//! - one of its `_`-separated words is one of [`SECRET_WORDS`] (`token`, `password`,
//!   `secret`, `cookie`, `authorization`, `credential`, `signature`, `apikey`, …), so
//!   `x_auth_token`, `token_value`, `client_secret`, `set_cookie` are secret;
//! - it ends in `<qualifier>_key` (`api_key`, `private_key`, `access_key`, `secret_key`, …)
//!   or `session_id` / `session_key`;
//! - written without separators it ends in `token`, `secret`, `password`, `apikey`, `sessid`
//!   or `sessionid` (`csrftoken`, `PHPSESSID`, `jsessionid`);
//! - or it contains a name added with [`Redactor::name`] as a run of words.
//!
//! Names whose last word says they describe a secret rather than hold one are kept:
//! `max_output_tokens`, `prompt_token_count`, `token_type`, `password_min_length`. Other
//! near-misses are kept too: `voice`, `model`, `keyboard`, `monkey`, `idempotency_key`,
//! `sort_key`, `tokenizer`.
//!
//! # Values
//!
//! Anywhere in text: `Bearer …`, `Basic …`, `Digest …` and `Negotiate …` credentials, Google
//! API keys (`AIza` + 30 or more characters), JWTs, the password of `scheme://user:password@host`
//! (even one containing `/`, `#`, `?` or `@`), and the value of any `name=value`,
//! `name = value`, `name: value`, `"name": "value"` or `'name': 'value'` pair whose name is
//! secret or whose value is a long high-entropy token (24 to 512 characters of `A-Z a-z 0-9 + /
//! _ - . ~ =` mixing upper case, lower case and digits). Patterns added with
//! [`Redactor::pattern`] extend these.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use regex::bytes::Regex;

/// The replacement for a secret.
pub const REDACTED: &str = "[redacted]";

/// The default truncation length of free text (the reference design's 500 characters).
pub const DEFAULT_TRUNCATE: usize = 500;

/// The header names that were the only secret ones before names were normalised; all of
/// them are still secret (see [`Redactor::is_secret_name`]).
pub const SECRET_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-goog-api-key",
];

/// The query parameter names that were the only secret ones before names were normalised;
/// all of them are still secret (see [`Redactor::is_secret_name`]).
pub const SECRET_PARAMS: [&str; 4] = ["key", "api_key", "token", "access_token"];

/// Normalised names that are secret as a whole.
pub const SECRET_NAMES: &[&str] = &[
    "key",
    "keys",
    "auth",
    "pass",
    "pwd",
    "sid",
    "sig",
    "pin",
    "otp",
    "proxy_authorization",
    "set_cookie",
    "session",
];

/// Words that make a normalised name secret wherever they appear in it.
pub const SECRET_WORDS: &[&str] = &[
    "token",
    "password",
    "passwd",
    "passphrase",
    "secret",
    "secrets",
    "credential",
    "credentials",
    "cookie",
    "cookies",
    "authorization",
    "authentication",
    "apikey",
    "jwt",
    "bearer",
    "signature",
    "sessionid",
    "sessid",
    "privatekey",
    "accesskey",
    "secretkey",
    "refreshtoken",
    "accesstoken",
];

/// Words that, before a final `key`, make a name secret (`api_key`, `private_key`, …).
const KEY_QUALIFIERS: &[&str] = &[
    "api",
    "access",
    "secret",
    "private",
    "auth",
    "signing",
    "encryption",
    "master",
    "client",
    "subscription",
    "license",
    "app",
    "account",
    "session",
    "ssh",
    "shared",
    "hmac",
];

/// Endings of a name written without separators that make it secret.
const SECRET_ENDINGS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "apikey",
    "sessid",
    "sessionid",
];

/// Last words that make a name describe a secret rather than hold one.
const BENIGN_LAST: &[&str] = &[
    "count", "counts", "type", "types", "limit", "limits", "url", "uri", "endpoint", "expiry",
    "expires", "ttl", "length", "len", "name", "names", "size", "hint", "policy", "required",
    "enabled", "path", "domain", "format", "file", "header", "location", "field",
];

/// Names whose unquoted value runs to the end of the line (`Cookie: a=1; b=2`).
const LINE_NAMES: &[&str] = &[
    "authorization",
    "proxy_authorization",
    "cookie",
    "set_cookie",
];

/// A user-supplied redaction pattern that is not a valid regular expression.
#[derive(Debug, thiserror::Error)]
#[error("invalid redaction pattern {pattern:?}")]
pub struct PatternError {
    /// The pattern.
    pub pattern: String,
    /// Why it is invalid.
    #[source]
    pub source: regex::Error,
}

#[derive(Debug)]
struct Patterns {
    userinfo: Regex,
    scheme: Regex,
    google: Regex,
    jwt: Regex,
    pair: Regex,
}

impl Patterns {
    fn new() -> Result<Self, regex::Error> {
        Ok(Patterns {
            userinfo: Regex::new(
                r#"(?-u)[A-Za-z][A-Za-z0-9+.\-]{0,31}://[^\s:/@"'<>\[\]]*:([^\s"'<>]*)@"#,
            )?,
            scheme: Regex::new(
                r"(?i-u)\b(?:bearer|basic|digest|negotiate)[ \t]+([A-Za-z0-9._~+/\-]{6,}=*)",
            )?,
            google: Regex::new(r"(?-u)AIza[0-9A-Za-z_\-]{30,}")?,
            jwt: Regex::new(r"(?-u)eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*")?,
            pair: Regex::new(
                r#"(?-u)(?:"([^"\\\s=:&]{1,128})"|'([^'\\\s=:&]{1,128})'|([A-Za-z0-9_.%\-]{1,128}))([ \t]*[=:][ \t]*)"#,
            )?,
        })
    }
}

/// What to redact: the default names and patterns, plus any you add.
///
/// Creating one is cheap: its patterns are compiled on first use, and shared by its clones.
///
/// # Example
///
/// ```
/// use rampart_dlq::Redactor;
///
/// let r = Redactor::default().header("x-internal-ref");
/// assert!(r.is_secret_header("X-Internal-Ref"));
/// assert!(r.is_secret_name("apiKey") && r.is_secret_name("access%5Ftoken"));
/// assert!(!r.is_secret_name("voice_name"));
/// assert_eq!(
///     r.url("https://user:hunter2@api.example/v1?key=abc&q=1"),
///     "https://user:[redacted]@api.example/v1?key=[redacted]&q=1"
/// );
/// assert_eq!(r.text("call https://x/y?token=s3cr3t failed"), "call https://x/y?token=[redacted] failed");
/// assert_eq!(r.text("401: Authorization: Bearer abc.def.ghi"), "401: Authorization: [redacted]");
/// ```
#[derive(Debug, Clone)]
pub struct Redactor {
    names: Vec<Vec<String>>,
    /// Compiled on first use (a redactor that never redacts costs no compilation), shared
    /// by clones.
    patterns: Arc<OnceLock<Option<Patterns>>>,
    extra: Vec<Regex>,
    truncate: usize,
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor {
            names: Vec::new(),
            patterns: Arc::default(),
            extra: Vec::new(),
            truncate: DEFAULT_TRUNCATE,
        }
    }
}

impl Redactor {
    /// Also treats `name` as secret (normalised like every name, and matched as a run of
    /// words inside longer names: `tenant_ref` also matches `x-tenant-ref`).
    #[must_use]
    pub fn name(mut self, name: &str) -> Self {
        let words: Vec<String> = words(&normalise(name.as_bytes()));
        if !words.is_empty() {
            self.names.push(words);
        }
        self
    }

    /// Also treats header `name` as secret (the same as [`name`](Self::name)).
    #[must_use]
    pub fn header(self, name: &str) -> Self {
        self.name(name)
    }

    /// Also treats query parameter `name` as secret (the same as [`name`](Self::name)).
    #[must_use]
    pub fn param(self, name: &str) -> Self {
        self.name(name)
    }

    /// Also redacts every match of the regular expression `pattern` anywhere in text and
    /// bodies (matched on bytes, so binary bodies are covered).
    ///
    /// # Errors
    ///
    /// If `pattern` is not a valid regular expression.
    ///
    /// # Example
    ///
    /// ```
    /// let r = rampart_dlq::Redactor::default().pattern(r"acct-\d{6}")?;
    /// assert_eq!(r.text("no funds on acct-123456"), "no funds on [redacted]");
    /// # Ok::<(), rampart_dlq::redact::PatternError>(())
    /// ```
    pub fn pattern(mut self, pattern: &str) -> Result<Self, PatternError> {
        let re = Regex::new(pattern).map_err(|source| PatternError {
            pattern: pattern.to_owned(),
            source,
        })?;
        self.extra.push(re);
        Ok(self)
    }

    /// Truncates free text to `chars` characters.
    ///
    /// Defaults to 500.
    #[must_use]
    pub fn truncate_to(mut self, chars: usize) -> Self {
        self.truncate = chars;
        self
    }

    /// `true` if header `name` is a secret (the same as [`is_secret_name`](Self::is_secret_name)).
    pub fn is_secret_header(&self, name: &str) -> bool {
        self.is_secret_name(name)
    }

    /// `true` if `name` (a header, parameter or field name) is a secret.
    pub fn is_secret_name(&self, name: &str) -> bool {
        self.is_secret_bytes(name.as_bytes())
    }

    /// The built-in patterns. They are literals covered by tests; should one ever fail to
    /// compile, this is `None` and the redactor redacts everything rather than nothing.
    fn patterns(&self) -> Option<&Patterns> {
        self.patterns.get_or_init(|| Patterns::new().ok()).as_ref()
    }

    fn is_secret_bytes(&self, name: &[u8]) -> bool {
        let norm = normalise(name);
        let w: Vec<&str> = norm.split('_').filter(|w| !w.is_empty()).collect();
        if w.is_empty() {
            return false;
        }
        if self.names.iter().any(|user| {
            w.windows(user.len())
                .any(|win| win.iter().zip(user).all(|(a, b)| *a == b.as_str()))
        }) {
            return true;
        }
        if SECRET_NAMES.contains(&norm.as_str()) {
            return true;
        }
        if w.len() > 1 && w.last().is_some_and(|l| BENIGN_LAST.contains(l)) {
            return false;
        }
        if w.iter().any(|x| SECRET_WORDS.contains(x)) {
            return true;
        }
        if let [.., a, b] = w.as_slice() {
            if (*b == "key" && KEY_QUALIFIERS.contains(a))
                || (*a == "session" && (*b == "id" || *b == "key"))
            {
                return true;
            }
        }
        let joined: String = w.concat();
        SECRET_ENDINGS.iter().any(|e| joined.ends_with(e))
    }

    /// A URL with its password and secret query parameters redacted (not truncated).
    pub fn url(&self, url: &str) -> String {
        self.redact_str(url).into_owned()
    }

    /// Free text (an error message) with every secret redacted, then truncated.
    pub fn text(&self, s: &str) -> String {
        self.truncate(&self.redact_str(s))
    }

    /// Truncates to the configured length, marking the cut with `…`.
    pub fn truncate(&self, s: &str) -> String {
        truncate(s, self.truncate)
    }

    /// Text with every secret redacted (not truncated); borrowed when nothing was redacted.
    pub fn redact_str<'a>(&self, s: &'a str) -> Cow<'a, str> {
        match self.bytes(s.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(s),
            // Every replacement is ASCII and every cut lands next to an ASCII byte, so the
            // result is UTF-8; lossy conversion only guards that reasoning.
            Cow::Owned(b) => Cow::Owned(match String::from_utf8(b) {
                Ok(s) => s,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            }),
        }
    }

    /// Bytes (text or binary) with every secret redacted; borrowed when nothing was
    /// redacted. Names and patterns are matched on the bytes, so a body that is not UTF-8
    /// is redacted like text.
    pub fn bytes<'a>(&self, b: &'a [u8]) -> Cow<'a, [u8]> {
        let Some(p) = self.patterns() else {
            return if b.is_empty() {
                Cow::Borrowed(b)
            } else {
                Cow::Owned(REDACTED.as_bytes().to_vec())
            };
        };
        let mut cur: Cow<'a, [u8]> = Cow::Borrowed(b);
        cur = replace_group(cur, &p.userinfo);
        cur = replace_group(cur, &p.scheme);
        cur = replace_whole(cur, &p.google);
        cur = replace_whole(cur, &p.jwt);
        for re in &self.extra {
            cur = replace_whole(cur, re);
        }
        match self.pairs(&cur) {
            Some(v) => Cow::Owned(v),
            None => cur,
        }
    }

    /// A request body with every secret redacted; borrowed when nothing was redacted.
    ///
    /// A body that is a JSON object or array is redacted field by field at any depth (and
    /// re-serialised only if something was redacted); any other body, UTF-8 or not, as text
    /// (query strings, `application/x-www-form-urlencoded` forms, free text).
    pub fn body<'a>(&self, body: &'a [u8]) -> Cow<'a, [u8]> {
        if looks_like_json(body) {
            if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) {
                if !self.json(&mut v) {
                    return Cow::Borrowed(body);
                }
                if let Ok(out) = serde_json::to_vec(&v) {
                    return Cow::Owned(out);
                }
            }
        }
        self.bytes(body)
    }

    /// Redacts a JSON value in place: the value of every field with a secret name (at any
    /// depth) and every secret in strings. Returns `true` if anything changed.
    ///
    /// # Example
    ///
    /// ```
    /// let mut v = serde_json::json!({ "items": [{ "auth": { "apiKey": "k1" } }], "voice": "Kore" });
    /// assert!(rampart_dlq::Redactor::default().json(&mut v));
    /// assert_eq!(v, serde_json::json!({ "items": [{ "auth": "[redacted]" }], "voice": "Kore" }));
    /// ```
    pub fn json(&self, v: &mut serde_json::Value) -> bool {
        use serde_json::Value;
        match v {
            Value::String(s) => match self.redact_str(s) {
                Cow::Borrowed(_) => false,
                Cow::Owned(r) => {
                    *s = r;
                    true
                }
            },
            Value::Array(a) => a.iter_mut().fold(false, |ch, x| self.json(x) | ch),
            Value::Object(o) => {
                let mut changed = false;
                for (k, x) in o.iter_mut() {
                    if self.is_secret_name(k) {
                        let empty = match x {
                            Value::Null => true,
                            Value::String(s) => s.is_empty() || s == REDACTED,
                            _ => false,
                        };
                        if !empty {
                            *x = Value::String(REDACTED.to_owned());
                            changed = true;
                        }
                    } else {
                        changed |= self.json(x);
                    }
                }
                changed
            }
            _ => false,
        }
    }

    /// Redacts the value of every `name<sep>value` pair whose name is secret or whose value
    /// is a high-entropy token. `None` if nothing was redacted.
    fn pairs(&self, hay: &[u8]) -> Option<Vec<u8>> {
        let re = &self.patterns()?.pair;
        let mut out: Option<Vec<u8>> = None;
        let mut last = 0;
        let mut pos = 0;
        let mut locs = re.capture_locations();
        while pos < hay.len() {
            let Some(whole) = re.captures_read_at(&mut locs, hay, pos) else {
                break;
            };
            let span = |i: usize| locs.get(i).and_then(|(s, e)| hay.get(s..e));
            let (Some(name), Some(sep)) =
                (span(1).or_else(|| span(2)).or_else(|| span(3)), span(4))
            else {
                break;
            };
            let unquoted = locs.get(3).is_some();
            let secret = self.is_secret_bytes(name);
            let line =
                secret && sep.contains(&b':') && LINE_NAMES.contains(&normalise(name).as_str());
            let vstart = whole.end();
            let (vs, ve, resume) = value_span(hay, vstart, line);
            let value = hay.get(vs..ve).unwrap_or_default();
            let hide = !value.is_empty()
                && value != REDACTED.as_bytes()
                && (secret || high_entropy(value));
            if hide {
                let o = out.get_or_insert_with(|| Vec::with_capacity(hay.len()));
                o.extend_from_slice(hay.get(last..vs).unwrap_or_default());
                o.extend_from_slice(REDACTED.as_bytes());
                last = ve;
                pos = resume.max(whole.end());
            } else if unquoted {
                pos = whole.end();
            } else {
                // A quoted "name" may hold pairs of its own (`' password=v ':`).
                pos = whole.start() + 1;
            }
        }
        let mut o = out?;
        o.extend_from_slice(hay.get(last..).unwrap_or_default());
        Some(o)
    }
}

/// `true` if `body` starts (after whitespace) like a JSON object or array.
pub(crate) fn looks_like_json(body: &[u8]) -> bool {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    matches!(first, Some(b'{' | b'['))
}

/// Where the value starting at `i` lies: `(start, end, resume)`.
fn value_span(hay: &[u8], i: usize, line: bool) -> (usize, usize, usize) {
    match hay.get(i) {
        Some(&q @ (b'"' | b'\'')) => {
            let mut j = i + 1;
            while let Some(&b) = hay.get(j) {
                if b == b'\\' {
                    j += 2;
                    continue;
                }
                if b == q {
                    return (i + 1, j, j + 1);
                }
                j += 1;
            }
            let end = hay.len();
            (i + 1, end, end)
        }
        _ => {
            let rest = hay.get(i..).unwrap_or_default();
            let len = rest
                .iter()
                .position(|&b| {
                    if line {
                        b == b'\r' || b == b'\n' || b == b'"'
                    } else {
                        b.is_ascii_whitespace()
                            || matches!(
                                b,
                                b'&' | b';'
                                    | b','
                                    | b'"'
                                    | b'\''
                                    | b'<'
                                    | b'>'
                                    | b')'
                                    | b']'
                                    | b'}'
                            )
                    }
                })
                .unwrap_or(rest.len());
            (i, i + len, i + len)
        }
    }
}

/// A long token of URL-safe/base64 characters mixing upper case, lower case and digits.
fn high_entropy(v: &[u8]) -> bool {
    let v = v
        .strip_suffix(b"==")
        .or_else(|| v.strip_suffix(b"="))
        .unwrap_or(v);
    (24..=512).contains(&v.len())
        && v.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'_' | b'-' | b'.' | b'~')
        })
        && v.iter().any(u8::is_ascii_uppercase)
        && v.iter().any(u8::is_ascii_lowercase)
        && v.iter().any(u8::is_ascii_digit)
}

fn replace_whole<'a>(cur: Cow<'a, [u8]>, re: &Regex) -> Cow<'a, [u8]> {
    match cur {
        Cow::Borrowed(b) => re.replace_all(b, REDACTED.as_bytes()),
        Cow::Owned(v) => Cow::Owned(re.replace_all(&v, REDACTED.as_bytes()).into_owned()),
    }
}

/// Replaces capture group 1 of every match (keeping the text around it).
fn replace_group<'a>(cur: Cow<'a, [u8]>, re: &Regex) -> Cow<'a, [u8]> {
    let hay: &[u8] = &cur;
    let mut out: Option<Vec<u8>> = None;
    let mut last = 0;
    for c in re.captures_iter(hay) {
        let Some(g) = c.get(1).filter(|g| !g.is_empty()) else {
            continue;
        };
        let o = out.get_or_insert_with(|| Vec::with_capacity(hay.len()));
        o.extend_from_slice(hay.get(last..g.start()).unwrap_or_default());
        o.extend_from_slice(REDACTED.as_bytes());
        last = g.end();
    }
    match out {
        None => cur,
        Some(mut o) => {
            o.extend_from_slice(hay.get(last..).unwrap_or_default());
            Cow::Owned(o)
        }
    }
}

/// A name's normalised form: percent-decoded, camelCase split, lowercase, punctuation as
/// single `_`, no leading or trailing `_`.
///
/// # Example
///
/// ```
/// use rampart_dlq::redact::normalise;
/// assert_eq!(normalise(b"X-Goog-Api-Key"), "x_goog_api_key");
/// assert_eq!(normalise(b"apiKey"), "api_key");
/// assert_eq!(normalise(b"access%5Ftoken"), "access_token");
/// assert_eq!(normalise(b"APIKey"), "api_key");
/// ```
pub fn normalise(name: &[u8]) -> String {
    let decoded: Cow<'_, [u8]> = percent_encoding::percent_decode(name).into();
    let text = String::from_utf8_lossy(&decoded);
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(chars.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_alphanumeric() {
            if c.is_uppercase() && i > 0 {
                let prev = chars.get(i - 1).copied().unwrap_or('_');
                let next = chars.get(i + 1).copied().unwrap_or('_');
                if prev.is_lowercase()
                    || prev.is_ascii_digit()
                    || (prev.is_uppercase() && next.is_lowercase())
                {
                    out.push('_');
                }
            }
            out.extend(c.to_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

fn words(norm: &str) -> Vec<String> {
    norm.split('_')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Truncates `s` to `max` characters, marking the cut with `…`.
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((i, _)) => format!("{}…", s.get(..i).unwrap_or_default()),
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub(crate) fn floor_boundary(s: &str, max: usize) -> &str {
    if max >= s.len() {
        return s;
    }
    let mut i = max;
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    s.get(..i).unwrap_or_default()
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
    fn names_normalise() {
        let r = Redactor::default();
        for s in [
            "Authorization",
            "PROXY-AUTHORIZATION",
            "Cookie",
            "set-cookie",
            "X-Api-Key",
            "x_goog_api_key",
            "X-Goog-Api-Key",
            "api-key",
            "apikey",
            "apiKey",
            "APIKey",
            "x-auth-token",
            "token_value",
            "refreshToken",
            "client_secret",
            "ClientSecret",
            "password",
            "db_password",
            "passwd",
            "pwd",
            "access%5Ftoken",
            "access%5ftoken",
            "session_id",
            "sessionId",
            "PHPSESSID",
            "JSESSIONID",
            "csrftoken",
            "private_key",
            "aws_secret_access_key",
            "X-Amz-Signature",
            "X-Amz-Credential",
            "key",
            "Key",
        ] {
            assert!(r.is_secret_name(s), "{s} should be secret");
        }
        for s in [
            "voice",
            "voice_name",
            "voiceName",
            "model",
            "keyboard",
            "monkey",
            "turkey",
            "idempotency_key",
            "sort_key",
            "tokenizer",
            "max_output_tokens",
            "maxOutputTokens",
            "promptTokenCount",
            "token_type",
            "password_min_length",
            "content-type",
            "text",
            "request_id",
            "user_id",
        ] {
            assert!(!r.is_secret_name(s), "{s} should be kept");
        }
        let r = r.name("tenant-ref");
        assert!(r.is_secret_name("X-Tenant-Ref") && r.is_secret_name("tenantRef"));
        assert!(!r.is_secret_name("tenant"));
    }

    #[test]
    fn values_are_redacted_in_text() {
        let r = Redactor::default();
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl";
        for (input, secret) in [
            ("auth failed: bearer abcdef123456", "abcdef123456"),
            ("Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
            (
                "bad key AIzaSyA1234567890abcdefghijklmnopqrstu",
                "AIzaSyA1234567890abcdefghijklmnopqrstu",
            ),
            ("jwt rejected", "jwt rejected"),
            ("https://u:p/a#b?c@host/x", "p/a#b?c"),
            ("key = value1", "value1"),
            ("token:v2v2", "v2v2"),
            ("{\"api_key\": \"s3\\\"cr3t\"}", "cr3t"),
            ("Cookie: a=1; theme=dark", "theme=dark"),
            ("ref=Zm9vYmFyQmF6MTIzNDU2Nzg5MGFiY2RlZg", "Zm9vYmFyQmF6"),
        ] {
            let out = r.text(input);
            if input == "jwt rejected" {
                assert_eq!(out, input);
                continue;
            }
            assert!(!out.contains(secret), "{input} → {out}");
        }
        let out = r.text(&format!("call with {jwt} failed"));
        assert!(!out.contains("c2lnbmF0dXJl"), "{out}");
        // Benign text is kept.
        for s in [
            "POST https://h/v1beta/models/tts:generateContent (12 bytes)",
            "503 model is overloaded: retry in 2s",
            "id=0192c3a4-5b6c-7d8e-9f01-23456789abcd",
            "voice=Kore model=gemini",
        ] {
            assert_eq!(r.text(s), s);
        }
    }

    #[test]
    fn non_utf8_bytes_are_redacted() {
        let r = Redactor::default();
        let mut b = vec![0xff, 0xfe, 0x00];
        b.extend_from_slice(b"key=s3cr3t&x=1");
        b.push(0x80);
        let out = r.bytes(&b);
        assert!(!out.windows(6).any(|w| w == b"s3cr3t"));
        assert!(out.ends_with(b"&x=1\x80"));
    }

    #[test]
    fn truncation_counts_characters_not_bytes() {
        assert_eq!(truncate("héllo", 3), "hél…");
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate(&"x".repeat(600), 500).chars().count(), 501);
        assert_eq!(floor_boundary("héllo", 2), "h");
        assert_eq!(floor_boundary("héllo", 3), "hé");
    }
}
