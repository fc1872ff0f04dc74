//! Named key extractors for keyed breakers: what a config file can say instead of code.

use std::fmt;
use std::str::FromStr;

use rampart_core::ConfigError;

/// Which part of a request keys a policy's per-key circuit breakers, by name — so that a
/// keyed breaker can be chosen in a config file (`key = "host"` under a service's
/// `[circuit_breaker]`), where a key function, being code, cannot.
///
/// | name | the key | typical use |
/// |---|---|---|
/// | `host` | the URI's host, else the `Host` header's (port dropped), lower-cased | one breaker per upstream host |
/// | `authority` | the URI's `host:port` (never its userinfo), else the `Host` header, lower-cased | per host and port |
/// | `method` | the method (`GET`, `POST`) | reads failing apart from writes |
/// | `path` | the URI's path (no query) | per endpoint or model: Gemini's `/v1beta/models/MODEL:generateContent` |
/// | `header:NAME` | the first value of header `NAME` | per tenant, voice, API key class (`header:x-tenant-id`) |
///
/// Every named key reads only the request's head, never its body: the keyed breaker decides
/// in `call`, before a streaming body is read. A part the request lacks (no host, no such
/// header) is the empty key, which such requests share. A key longer than
/// [`MAX_LABEL_BYTES`](rampart_breaker::MAX_LABEL_BYTES) (256 bytes) is cut there, so a
/// client cannot make the registry hold huge keys; how many keys are held is bounded by
/// [`PolicyBuilder::breaker_max_keys`](crate::PolicyBuilder::breaker_max_keys). A key
/// anywhere else (a JSON field of the body, a tenant from a token) needs code:
/// [`Policy::keyed_layer`](crate::Policy::keyed_layer) with a closure.
///
/// With the `http` (or `client`, `grpc`) feature a `BreakerKey` is a
/// [`KeyOf`](rampart_breaker::KeyOf) for `http::Request<B>`, which is what
/// `Policy::http_layer` uses.
///
/// # Example
///
/// ```
/// use rampart::BreakerKey;
///
/// let key: BreakerKey = "header:X-Voice".parse()?;
/// assert_eq!(key, BreakerKey::Header("x-voice".into()));
/// assert_eq!(key.to_string(), "header:x-voice");
/// assert_eq!("host".parse::<BreakerKey>()?, BreakerKey::Host);
///
/// let err = "hots".parse::<BreakerKey>().unwrap_err();
/// assert_eq!((err.field(), err.value()), ("key", "hots"));
/// assert!("header:".parse::<BreakerKey>().is_err());
/// # Ok::<(), rampart::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerKey {
    /// The URI's host, else the `Host` header's, without the port, lower-cased.
    Host,
    /// The URI's host and port (without userinfo), else the `Host` header, lower-cased.
    Authority,
    /// The request method.
    Method,
    /// The URI's path, without the query.
    Path,
    /// The first value of this header (a lower-case header name).
    Header(String),
}

/// What `BreakerKey::from_str` accepts, for error messages.
pub(crate) const EXPECTED: &str = "host, authority, method, path or header:<name>";

impl BreakerKey {
    /// A header's value as the key: `BreakerKey::Header` with the name checked and
    /// lower-cased.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] (field `key`) if `name` is not a header name (an RFC 9110 token
    /// of at most 256 bytes), or names a secret (`authorization`, `cookie`, `x-api-key`, …:
    /// a key is a breaker's label in events and metrics).
    ///
    /// # Example
    ///
    /// ```
    /// use rampart::BreakerKey;
    /// assert_eq!(BreakerKey::header("X-Tenant-Id")?, BreakerKey::Header("x-tenant-id".into()));
    /// assert!(BreakerKey::header("x tenant").is_err());
    /// assert!(BreakerKey::header("Authorization").is_err());
    /// # Ok::<(), rampart::ConfigError>(())
    /// ```
    pub fn header(name: &str) -> Result<Self, ConfigError> {
        let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || name.len() > 256 || !name.bytes().all(is_tchar) {
            return Err(ConfigError::raw(
                "key",
                format!("header:{name}"),
                "expected header:<name>, a name of 1 to 256 letters, digits and !#$%&'*+-.^_`|~",
            ));
        }
        // A breaker's key is its label in transitions, snapshots and metrics: a credential
        // must not become one.
        if rampart_dlq::Redactor::default().is_secret_header(name) {
            return Err(ConfigError::raw(
                "key",
                format!("header:{name}"),
                "expected a header that is not a secret: its values would become breaker labels in events and metrics; key by one naming the tenant or voice instead",
            ));
        }
        Ok(BreakerKey::Header(name.to_ascii_lowercase()))
    }
}

impl FromStr for BreakerKey {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Some((kind, name)) = t.split_once(':') {
            if kind.trim().eq_ignore_ascii_case("header") {
                return BreakerKey::header(name.trim());
            }
        }
        match t.to_ascii_lowercase().as_str() {
            "host" => Ok(BreakerKey::Host),
            "authority" => Ok(BreakerKey::Authority),
            "method" => Ok(BreakerKey::Method),
            "path" => Ok(BreakerKey::Path),
            _ => Err(ConfigError::raw("key", s, format!("expected {EXPECTED}"))),
        }
    }
}

impl fmt::Display for BreakerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BreakerKey::Host => f.write_str("host"),
            BreakerKey::Authority => f.write_str("authority"),
            BreakerKey::Method => f.write_str("method"),
            BreakerKey::Path => f.write_str("path"),
            BreakerKey::Header(name) => write!(f, "header:{name}"),
        }
    }
}

/// `s` as an owned key, cut to `MAX_LABEL_BYTES` at a character boundary.
#[cfg(any(feature = "http", feature = "client", feature = "grpc"))]
fn bounded(s: &str) -> String {
    let max = rampart_breaker::MAX_LABEL_BYTES;
    if s.len() <= max {
        return s.to_owned();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut = cut.saturating_sub(1);
    }
    s.get(..cut).unwrap_or_default().to_owned()
}

/// The host of a `Host` header value: `example.com:8080` → `example.com`, `[::1]:80` → `[::1]`.
#[cfg(any(feature = "http", feature = "client", feature = "grpc"))]
fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => authority.get(..=end).unwrap_or(authority),
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, _port)) => host,
        None => authority,
    }
}

#[cfg(any(feature = "http", feature = "client", feature = "grpc"))]
impl<B> rampart_breaker::KeyOf<http::Request<B>> for BreakerKey {
    type Key = String;

    /// The request's key (see [`BreakerKey`]).
    ///
    /// ```
    /// use rampart::BreakerKey;
    /// use rampart::breaker::KeyOf;
    ///
    /// let req = http::Request::post("https://Api.Example.com:8443/v1/models/tts:generate?x=1")
    ///     .header("x-voice", "Kore")
    ///     .body(())?;
    /// assert_eq!(BreakerKey::Host.key_of(&req), "api.example.com");
    /// assert_eq!(BreakerKey::Authority.key_of(&req), "api.example.com:8443");
    /// // Userinfo never becomes a key.
    /// let with_creds = http::Request::get("https://user:secret@db.example:5432/").body(())?;
    /// assert_eq!(BreakerKey::Authority.key_of(&with_creds), "db.example:5432");
    /// assert_eq!(BreakerKey::Method.key_of(&req), "POST");
    /// assert_eq!(BreakerKey::Path.key_of(&req), "/v1/models/tts:generate");
    /// assert_eq!(BreakerKey::header("X-Voice")?.key_of(&req), "Kore");
    /// assert_eq!(BreakerKey::header("x-tenant")?.key_of(&req), "");
    /// // A server-side request names its host in the `Host` header.
    /// let req = http::Request::get("/status").header("host", "Svc.Local:80").body(())?;
    /// assert_eq!(BreakerKey::Host.key_of(&req), "svc.local");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn key_of(&self, req: &http::Request<B>) -> String {
        let host_header = || {
            req.headers()
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
        };
        match self {
            BreakerKey::Host => {
                let host = match req.uri().host() {
                    Some(h) => h,
                    None => host_of(host_header()),
                };
                let mut key = bounded(host);
                key.make_ascii_lowercase();
                key
            }
            BreakerKey::Authority => {
                // Host and port only: a URI's userinfo (`user:password@`) never becomes a
                // key, a label or a metric.
                let mut key = match req.uri().authority() {
                    Some(a) => match a.port_u16() {
                        Some(port) => bounded(&format!("{}:{port}", a.host())),
                        None => bounded(a.host()),
                    },
                    None => bounded(host_header()),
                };
                key.make_ascii_lowercase();
                key
            }
            BreakerKey::Method => bounded(req.method().as_str()),
            BreakerKey::Path => bounded(req.uri().path()),
            BreakerKey::Header(name) => match req.headers().get(name.as_str()) {
                Some(v) => match v.to_str() {
                    Ok(s) => bounded(s),
                    Err(_) => bounded(&String::from_utf8_lossy(v.as_bytes())),
                },
                None => String::new(),
            },
        }
    }
}
