//! Policies from a TOML file and the environment, over the reference design's presets.
//!
//! # Precedence
//!
//! Lowest first; each layer overrides the ones before it, key by key:
//!
//! 1. the presets (`tts`, `gemini_api`, `database`, `redis`, with the reference numbers);
//! 2. the profile chosen by `RAMPART_PROFILE` (or [`Loader::profile`]): `production` applies
//!    the reference design's production numbers;
//! 3. the TOML file;
//! 4. the environment: the reference design's names (`TTS_MAX_RETRIES`, `TTS_BASE_DELAY`,
//!    `GEMINI_API_MAX_RETRIES`, `DB_MAX_RETRIES` for `database`, `CIRCUIT_BREAKER_ENABLED`,
//!    `DEAD_LETTER_QUEUE_ENABLED`) and the general pattern `<SERVICE>_<FIELD>` for every
//!    service and field below (`REDIS_MAX_DELAY=2s`, `GEMINI_API_FAILURE_THRESHOLD=8`).
//!    Variables that match no service and field are ignored.
//!
//! Durations are humantime strings (`"500ms"`, `"30s"`, `"30d"`) or numbers of seconds
//! (`1.5`; the reference design's `TTS_BASE_DELAY=1.0`), at most 365 days
//! ([`MAX_DURATION`](rampart_core::MAX_DURATION)). Unknown keys are errors, and every
//! error names the key, the bad value and where it came from — the file and line, or the
//! variable.
//!
//! # File format
//!
//! ```toml
//! circuit_breaker_enabled = true        # switch every service's breaker off
//! dead_letter_queue_enabled = true      # switch every service's dead-lettering off
//!
//! [services.gemini_api]
//! max_retries = 5
//! base_delay = "500ms"
//! max_delay = "10s"
//! backoff_factor = 2.0
//! jitter = 0.1                          # a fraction, or "none", "full", "equal", "decorrelated"
//! attempt_timeout = "30s"
//! deadline = "60s"
//! retry_enabled = true
//! retry_budget = { ratio = 0.1, min_per_sec = 10, max_tokens = 100 }
//!
//! [services.gemini_api.circuit_breaker]
//! enabled = true
//! # Rate-based unless `failure_threshold` is set without a window: the reference design's
//! # 5 failures / 60 s / 3 successes map onto >= 50 % failures over 10 s with at least 20
//! # calls, open 5 s doubling after failed probe rounds up to 60 s, 3 probes of which 2
//! # failures reopen (see `rampart::default_breaker`).
//! window_seconds = 10
//! failure_rate = 0.5
//! minimum_calls = 20
//! recovery_timeout = "5s"
//! max_recovery_timeout = "60s"
//! success_threshold = 3
//! # One breaker per voice instead of one for the service (applied by `Policy::http_layer`):
//! # "host", "authority", "method", "path" or "header:<name>" (see `rampart::BreakerKey`).
//! key = "header:x-voice"
//! max_keys = 1000                       # keys held at once (1 to 1,000,000)
//! idle_ttl = "10m"                      # an unused key's closed breaker is dropped after this
//!
//! [services.gemini_api.dead_letter]
//! enabled = true
//! max_size = 1000
//! retention = "30d"
//! ```
//!
//! `rampart.example.toml` at the repository root lists every key.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use rampart_breaker::{CircuitBreakerConfig, Window};
use rampart_core::{ConfigError, Jitter};
use serde::{Deserialize, Serialize};

use crate::breaker_key::BreakerKey;
use crate::policy::{
    production_overrides, BudgetSettings, DeadLetterSettings, Policies, Policy, PolicyBuilder,
};

/// One service's settings; every field optional (unset fields keep the layer below).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Retries after the first attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Delay before the first retry.
    #[serde(default, with = "dur", skip_serializing_if = "Option::is_none")]
    pub base_delay: Option<Duration>,
    /// Cap on every delay.
    #[serde(default, with = "dur", skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<Duration>,
    /// Growth factor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_factor: Option<f64>,
    /// A proportional jitter fraction, or `none`, `full`, `equal`, `decorrelated`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter: Option<JitterConfig>,
    /// Per-attempt timeout.
    #[serde(default, with = "dur", skip_serializing_if = "Option::is_none")]
    pub attempt_timeout: Option<Duration>,
    /// Overall deadline.
    #[serde(default, with = "dur", skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Duration>,
    /// Retries on or off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_enabled: Option<bool>,
    /// The retry budget, or `false` for none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<BudgetConfig>,
    /// The circuit breaker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<BreakerConfig>,
    /// Dead-lettering.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterConfig>,
}

/// A jitter setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JitterConfig {
    /// ± this fraction.
    Fraction(f64),
    /// `none`, `full`, `equal` or `decorrelated`.
    Named(String),
}

/// A retry budget setting: a table, or `false` for no budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BudgetConfig {
    /// `false`: no budget (`true` keeps the default budget).
    Enabled(bool),
    /// The budget's numbers; unset ones keep their defaults.
    Settings {
        /// Share of requests that may be retries.
        #[serde(default)]
        ratio: Option<f64>,
        /// Retries per second always allowed.
        #[serde(default)]
        min_per_sec: Option<u32>,
        /// Saved-up retries at most.
        #[serde(default)]
        max_tokens: Option<u32>,
    },
}

/// The circuit breaker's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// On or off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Consecutive failures that open the circuit (the reference `failure_threshold`). Set
    /// without a window, it replaces the policy's rate-based breaker with the reference's
    /// consecutive count; unset, the breaker trips on `failure_rate` over `window_seconds`
    /// (10 s) once it holds `minimum_calls` (20 — four times the reference's 5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    /// How long the circuit stays open.
    #[serde(default, with = "dur", skip_serializing_if = "Option::is_none")]
    pub recovery_timeout: Option<Duration>,
    /// The cap on the open duration, which doubles after each failed probe.
    #[serde(default, with = "dur", skip_serializing_if = "Option::is_none")]
    pub max_recovery_timeout: Option<Duration>,
    /// Successful probes that close the circuit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<u32>,
    /// Probes in flight at once while half-open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permitted_probes: Option<u32>,
    /// A failure-rate window of the last N calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_calls: Option<u32>,
    /// A failure-rate window of the last N seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<u32>,
    /// The failure rate that opens the circuit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<f64>,
    /// Calls the window must hold before rates count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum_calls: Option<u32>,
    /// Calls slower than this are slow.
    #[serde(default, with = "dur", skip_serializing_if = "Option::is_none")]
    pub slow_call_duration: Option<Duration>,
    /// The slow-call rate that opens the circuit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_call_rate: Option<f64>,
    /// One breaker per value of this part of an HTTP request: `host`, `authority`,
    /// `method`, `path` or `header:<name>` (see [`BreakerKey`]); applied by
    /// [`Policy::http_layer`](crate::Policy). Unset: one breaker for the service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<BreakerKey>,
    /// The most keys held at once (1 to [`MAX_BREAKER_KEYS`](crate::MAX_BREAKER_KEYS));
    /// 1,000 if unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<usize>,
    /// How long an unused key's closed breaker is kept; 10 minutes if unset.
    #[serde(default, with = "dur", skip_serializing_if = "Option::is_none")]
    pub idle_ttl: Option<Duration>,
}

impl Serialize for BreakerKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BreakerKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|e: ConfigError| {
            serde::de::Error::invalid_value(serde::de::Unexpected::Str(&text), &e.reason())
        })
    }
}

/// Dead-lettering's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// On or off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The store's cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_size: Option<usize>,
    /// How long records are kept.
    #[serde(default, with = "dur", skip_serializing_if = "Option::is_none")]
    pub retention: Option<Duration>,
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Switches every breaker off when `false` (`CIRCUIT_BREAKER_ENABLED`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_breaker_enabled: Option<bool>,
    /// Switches every dead-letter layer off when `false` (`DEAD_LETTER_QUEUE_ENABLED`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_queue_enabled: Option<bool>,
    /// Services by name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
}

/// Durations as humantime strings or numbers of seconds.
mod dur {
    use std::time::Duration;

    use serde::{de, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime_fmt(*d)),
            None => s.serialize_none(),
        }
    }

    fn humantime_fmt(d: Duration) -> String {
        if d.subsec_nanos() == 0 {
            format!("{}s", d.as_secs())
        } else {
            format!("{}ms", d.as_millis())
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(f64),
        Text(String),
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let parsed = parse(d)?;
        match parsed {
            Some(d) if d > rampart_core::MAX_DURATION => Err(de::Error::custom(format!(
                "{d:?} is longer than the maximum of 365 days ({}s)",
                rampart_core::MAX_DURATION.as_secs()
            ))),
            other => Ok(other),
        }
    }

    fn parse<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Secs(s)) => Duration::try_from_secs_f64(s).map(Some).map_err(|_| {
                de::Error::custom(format!(
                    "{s} is not a duration in seconds (it must be finite and not negative)"
                ))
            }),
            Some(Raw::Text(t)) => {
                if let Ok(secs) = t.trim().parse::<f64>() {
                    return Duration::try_from_secs_f64(secs).map(Some).map_err(|_| {
                        de::Error::custom(format!("{t:?} is not a duration in seconds"))
                    });
                }
                humantime::parse_duration(&t).map(Some).map_err(|e| {
                    de::Error::custom(format!(
                        "{t:?} is not a duration ({e}); write e.g. \"500ms\", \"30s\" or 1.5"
                    ))
                })
            }
        }
    }
}

fn preset_tree(profile: Option<&str>) -> Result<Config, ConfigError> {
    let mut cfg = Config::default();
    for (name, p) in Policies::presets().iter() {
        cfg.services.insert(name.to_owned(), to_config(p));
    }
    match profile {
        None | Some("default" | "development" | "") => {}
        Some("production") => {
            for (name, b) in production_overrides() {
                let p = b.build()?;
                cfg.services.insert(name.to_owned(), to_config(&p));
            }
        }
        Some(other) => {
            return Err(ConfigError::raw(
                "profile",
                other,
                "unknown profile; known: default, production",
            )
            .with_origin("environment variable RAMPART_PROFILE"));
        }
    }
    Ok(cfg)
}

fn to_config(p: &Policy) -> ServiceConfig {
    let b = p.backoff();
    let jitter = match b.jitter() {
        Jitter::Proportional(f) => JitterConfig::Fraction(f),
        Jitter::Full => JitterConfig::Named("full".into()),
        Jitter::Equal => JitterConfig::Named("equal".into()),
        Jitter::Decorrelated => JitterConfig::Named("decorrelated".into()),
        _ => JitterConfig::Named("none".into()),
    };
    // The window itself is not written: a service without `failure_threshold` or a window
    // of its own gets the policies' 10 s window (see `crate::default_breaker`), so that a
    // file may still pick `window_calls` or the reference's consecutive count.
    let breaker = p.breaker().map(|c| BreakerConfig {
        enabled: Some(true),
        failure_threshold: c.consecutive_failures(),
        recovery_timeout: Some(c.recovery_timeout()),
        max_recovery_timeout: Some(c.max_recovery_timeout()),
        success_threshold: Some(c.success_threshold()),
        permitted_probes: Some(c.permitted_probes()),
        failure_rate: c.window().map(|_| c.failure_rate()),
        minimum_calls: c.window().map(|_| c.minimum_calls()),
        ..BreakerConfig::default()
    });
    ServiceConfig {
        max_retries: Some(b.max_retries()),
        base_delay: Some(b.base_delay()),
        max_delay: Some(b.max_delay()),
        backoff_factor: Some(b.factor()),
        jitter: Some(jitter),
        attempt_timeout: p.attempt_timeout(),
        deadline: p.deadline(),
        retry_enabled: Some(p.retry_enabled()),
        retry_budget: None,
        circuit_breaker: breaker,
        dead_letter: p.dead_letter().map(|d| DeadLetterConfig {
            enabled: Some(true),
            max_size: Some(d.max_size),
            retention: Some(d.retention),
        }),
    }
}

/// Fields settable as `<SERVICE>_<FIELD>`, with their key under the service.
const ENV_FIELDS: &[(&str, &str)] = &[
    ("MAX_RETRIES", "max_retries"),
    ("BASE_DELAY", "base_delay"),
    ("MAX_DELAY", "max_delay"),
    ("BACKOFF_FACTOR", "backoff_factor"),
    ("JITTER", "jitter"),
    ("ATTEMPT_TIMEOUT", "attempt_timeout"),
    ("DEADLINE", "deadline"),
    ("RETRY_ENABLED", "retry_enabled"),
    ("FAILURE_THRESHOLD", "circuit_breaker.failure_threshold"),
    ("RECOVERY_TIMEOUT", "circuit_breaker.recovery_timeout"),
    ("SUCCESS_THRESHOLD", "circuit_breaker.success_threshold"),
    ("CIRCUIT_BREAKER_ENABLED", "circuit_breaker.enabled"),
    ("BREAKER_KEY", "circuit_breaker.key"),
    ("BREAKER_MAX_KEYS", "circuit_breaker.max_keys"),
    ("BREAKER_IDLE_TTL", "circuit_breaker.idle_ttl"),
    ("DEAD_LETTER_ENABLED", "dead_letter.enabled"),
    ("DLQ_MAX_SIZE", "dead_letter.max_size"),
];

/// The environment prefix of a service: its name upper-cased; `DB` for `database`.
fn env_prefixes(service: &str) -> Vec<String> {
    let mut v = vec![service.to_ascii_uppercase()];
    if service == "database" {
        v.push("DB".into());
    }
    v
}

/// Maps an environment variable to a config key, if it names a known service and field.
fn env_key(var: &str, services: &[String]) -> Option<String> {
    match var {
        "CIRCUIT_BREAKER_ENABLED" => return Some("circuit_breaker_enabled".into()),
        "DEAD_LETTER_QUEUE_ENABLED" => return Some("dead_letter_queue_enabled".into()),
        _ => {}
    }
    // Longest service prefix first, so `GEMINI_API_…` is not read as service `gemini`.
    let mut candidates: Vec<(String, &String)> = services
        .iter()
        .flat_map(|s| env_prefixes(s).into_iter().map(move |p| (p, s)))
        .collect();
    candidates.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    for (prefix, service) in candidates {
        let Some(rest) = var.strip_prefix(&prefix).and_then(|r| r.strip_prefix('_')) else {
            continue;
        };
        if let Some((_, key)) = ENV_FIELDS.iter().find(|(f, _)| *f == rest) {
            return Some(format!("services.{service}.{key}"));
        }
    }
    None
}

/// Looks an environment variable up.
type Lookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Loads [`Policies`] from presets, a profile, a file and the environment.
///
/// # Example
///
/// ```
/// use rampart::config::Loader;
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("rampart.toml");
/// std::fs::write(&path, "[services.tts]\nmax_retries = 7\nbase_delay = \"250ms\"\n")?;
/// let policies = Loader::new().file(&path).env(|_| None).load()?;
/// let tts = policies.get("tts").expect("the tts preset");
/// assert_eq!(tts.backoff().max_retries(), 7);
/// assert_eq!(tts.backoff().max_delay(), std::time::Duration::from_secs(30)); // from the preset
///
/// std::fs::write(&path, "[services.tts]\nmax_retries = \"many\"\n")?;
/// let err = Loader::new().file(&path).env(|_| None).load().unwrap_err();
/// assert_eq!(err.field(), "services.tts.max_retries");
/// assert!(err.to_string().contains("line 2"), "{err}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct Loader {
    file: Option<PathBuf>,
    profile: Option<String>,
    env: Lookup,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("file", &self.file)
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl Default for Loader {
    fn default() -> Self {
        Loader::new()
    }
}

impl Loader {
    /// Presets and the process environment; no file.
    pub fn new() -> Self {
        Loader {
            file: None,
            profile: None,
            env: Arc::new(|k| std::env::var(k).ok()),
        }
    }

    /// Reads `path` (TOML). A missing file is an error.
    pub fn file(mut self, path: impl AsRef<Path>) -> Self {
        self.file = Some(path.as_ref().to_path_buf());
        self
    }

    /// Uses `profile` instead of `RAMPART_PROFILE`.
    pub fn profile(mut self, profile: impl Into<String>) -> Self {
        self.profile = Some(profile.into());
        self
    }

    /// Reads variables through `lookup` instead of the process environment (for tests).
    pub fn env(mut self, lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        self.env = Arc::new(lookup);
        self
    }

    /// Every variable the loader could map for `services`, looked up through `env` (so that
    /// tests can inject an environment).
    fn vars(&self, services: &[String]) -> Vec<(String, String)> {
        let mut names = vec![
            "CIRCUIT_BREAKER_ENABLED".to_owned(),
            "DEAD_LETTER_QUEUE_ENABLED".to_owned(),
        ];
        for s in services {
            for p in env_prefixes(s) {
                for (f, _) in ENV_FIELDS {
                    names.push(format!("{p}_{f}"));
                }
            }
        }
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter_map(|n| (self.env)(&n).map(|v| (n, v)))
            .collect()
    }

    /// Loads, merges and validates.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the key (`services.tts.max_retries`), the bad value and
    /// where it came from (`rampart.toml line 12`, `environment variable TTS_MAX_RETRIES`).
    pub fn load(&self) -> Result<Policies, ConfigError> {
        let profile = self
            .profile
            .clone()
            .or_else(|| (self.env)("RAMPART_PROFILE"));
        let mut figment =
            Figment::new().merge(Serialized::defaults(preset_tree(profile.as_deref())?));
        let file_text = match &self.file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::raw(
                        "file",
                        path.display().to_string(),
                        format!("cannot be read: {e}"),
                    )
                })?;
                figment = figment.merge(Toml::string(&text));
                Some((path.clone(), text))
            }
            None => None,
        };
        // Services named in the file can be set from the environment too.
        let mut services: Vec<String> = ["tts", "gemini_api", "database", "redis"]
            .map(String::from)
            .to_vec();
        if let Some((_, text)) = &file_text {
            if let Ok(cfg) = Figment::from(Toml::string(text)).extract::<Config>() {
                services.extend(cfg.services.into_keys());
            }
        }
        let mut origin_of: HashMap<String, String> = HashMap::new();
        let mut env_dict = figment::value::Dict::new();
        for (var, value) in self.vars(&services) {
            if let Some(key) = env_key(&var, &services) {
                origin_of.insert(key.clone(), var.clone());
                let v: figment::value::Value = value
                    .parse()
                    .unwrap_or_else(|e: std::convert::Infallible| match e {});
                let nested = nest(&key, v);
                env_dict = merge_dicts(env_dict, nested);
            }
        }
        figment = figment.merge(Serialized::defaults(env_dict));

        let cfg: Config = figment
            .extract()
            .map_err(|e| from_figment(e, file_text.as_ref(), &origin_of))?;
        build(&cfg, &origin_of)
    }
}

fn nest(key: &str, v: figment::value::Value) -> figment::value::Dict {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or_default();
    let mut dict = figment::value::Dict::new();
    dict.insert(last.to_owned(), v);
    while let Some(p) = parts.pop() {
        let mut outer = figment::value::Dict::new();
        outer.insert(p.to_owned(), figment::value::Value::from(dict));
        dict = outer;
    }
    dict
}

fn merge_dicts(mut a: figment::value::Dict, b: figment::value::Dict) -> figment::value::Dict {
    for (k, v) in b {
        match (a.remove(&k), v) {
            (Some(figment::value::Value::Dict(_, x)), figment::value::Value::Dict(tag, y)) => {
                a.insert(k, figment::value::Value::Dict(tag, merge_dicts(x, y)));
            }
            (_, v) => {
                a.insert(k, v);
            }
        }
    }
    a
}

/// The line of `key` (a dotted path) in TOML `text`, found by following table headers.
fn line_of(text: &str, path: &[String]) -> Option<usize> {
    let (last, tables) = path.split_last()?;
    let want = tables.join(".");
    let mut table = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(h) = t.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            table = h.trim().to_owned();
            continue;
        }
        let Some((k, _)) = t.split_once('=') else {
            continue;
        };
        let k = k.trim().trim_matches('"');
        if table == want && k == last {
            return Some(i + 1);
        }
        // An inline table or dotted key: `retry_budget = { ratio = … }`, `a.b = …`.
        let full = if table.is_empty() {
            k.to_owned()
        } else {
            format!("{table}.{k}")
        };
        if want.starts_with(&full) && t.contains(&format!("{last} ")) || full == path.join(".") {
            return Some(i + 1);
        }
    }
    None
}

fn from_figment(
    e: figment::Error,
    file: Option<&(PathBuf, String)>,
    env: &HashMap<String, String>,
) -> ConfigError {
    let e = e
        .into_iter()
        .next()
        .unwrap_or_else(|| figment::Error::from("unknown error".to_owned()));
    let mut path = e.path.clone();
    // Make sure an unknown field is named itself, not only its parent.
    if let figment::error::Kind::UnknownField(f, _) = &e.kind {
        if path.last() != Some(f) {
            path.push(f.clone());
        }
    }
    let key = path.join(".");
    let value = match &e.kind {
        figment::error::Kind::InvalidType(actual, _)
        | figment::error::Kind::InvalidValue(actual, _) => actual.to_string(),
        figment::error::Kind::UnknownField(f, _) => f.clone(),
        _ => String::from("?"),
    };
    let origin = if let Some(var) = env.get(&key) {
        Some(format!("environment variable {var}"))
    } else {
        file.map(|(p, text)| match line_of(text, &path) {
            Some(l) => format!("{} line {l}", p.display()),
            None => p.display().to_string(),
        })
    };
    let err = ConfigError::raw(key, value, e.kind.to_string());
    match origin {
        Some(o) => err.with_origin(o),
        None => err,
    }
}

fn build(cfg: &Config, env: &HashMap<String, String>) -> Result<Policies, ConfigError> {
    let mut out = Policies::default();
    for (name, s) in &cfg.services {
        let at = |field: &str, e: ConfigError| {
            let key = format!("services.{name}.{field}");
            let origin = env.get(&key).map(|v| format!("environment variable {v}"));
            let e = e.with_field(key);
            match origin {
                Some(o) => e.with_origin(o),
                None => e,
            }
        };
        let mut b: PolicyBuilder =
            Policy::preset(name).unwrap_or_else(|| Policy::builder(name.as_str()));
        if let Some(v) = s.max_retries {
            b = b.max_retries(v);
        }
        if let Some(v) = s.base_delay {
            b = b.base_delay(v);
        }
        if let Some(v) = s.max_delay {
            b = b.max_delay(v);
        }
        if let Some(v) = s.backoff_factor {
            b = b.backoff_factor(v);
        }
        if let Some(j) = &s.jitter {
            b = b.jitter(match j {
                JitterConfig::Fraction(f) => Jitter::Proportional(*f),
                JitterConfig::Named(n) => match n.as_str() {
                    "none" => Jitter::None,
                    "full" => Jitter::Full,
                    "equal" => Jitter::Equal,
                    "decorrelated" => Jitter::Decorrelated,
                    other => {
                        return Err(at(
                            "jitter",
                            ConfigError::raw(
                                "jitter",
                                other,
                                "expected a fraction or none, full, equal, decorrelated",
                            ),
                        ))
                    }
                },
            });
        }
        if s.attempt_timeout.is_some() {
            b = b.attempt_timeout(s.attempt_timeout);
        }
        if s.deadline.is_some() {
            b = b.deadline(s.deadline);
        }
        if let Some(on) = s.retry_enabled {
            b = b.retry(on);
        }
        match &s.retry_budget {
            None | Some(BudgetConfig::Enabled(true)) => {}
            Some(BudgetConfig::Enabled(false)) => b = b.budget(None),
            Some(BudgetConfig::Settings {
                ratio,
                min_per_sec,
                max_tokens,
            }) => {
                let d = BudgetSettings::default();
                b = b.budget(Some(BudgetSettings {
                    ratio: ratio.unwrap_or(d.ratio),
                    min_per_sec: min_per_sec.unwrap_or(d.min_per_sec),
                    max_tokens: max_tokens.unwrap_or(d.max_tokens),
                }));
            }
        }
        let breaker_on = cfg.circuit_breaker_enabled.unwrap_or(true)
            && s.circuit_breaker
                .as_ref()
                .and_then(|c| c.enabled)
                .unwrap_or(true);
        if breaker_on {
            let c = s.circuit_breaker.clone().unwrap_or_default();
            // Rate-based unless the service asks for the reference's consecutive count
            // alone (a `failure_threshold` and no window).
            let mut cb = CircuitBreakerConfig::builder();
            match c.failure_threshold {
                Some(v) => cb = cb.consecutive_failures(Some(v)),
                None => {
                    let d = crate::default_breaker();
                    cb = cb
                        .consecutive_failures(None)
                        .window(d.window())
                        .failure_rate(d.failure_rate())
                        .minimum_calls(d.minimum_calls())
                        .recovery_timeout(d.recovery_timeout())
                        .max_recovery_timeout(d.max_recovery_timeout());
                }
            }
            if let Some(v) = c.recovery_timeout {
                cb = cb.recovery_timeout(v);
            }
            if let Some(v) = c.max_recovery_timeout {
                cb = cb.max_recovery_timeout(v);
            }
            if let Some(v) = c.success_threshold {
                cb = cb.success_threshold(v);
            }
            if let Some(v) = c.permitted_probes {
                cb = cb.permitted_probes(v);
            }
            match (c.window_calls, c.window_seconds) {
                (Some(n), None) => cb = cb.window(Some(Window::Count(n))),
                (None, Some(n)) => cb = cb.window(Some(Window::Time(n))),
                (Some(_), Some(_)) => {
                    return Err(at(
                        "circuit_breaker.window_calls",
                        ConfigError::raw(
                            "window_calls",
                            "set",
                            "set window_calls or window_seconds, not both",
                        ),
                    ))
                }
                (None, None) => {}
            }
            if let Some(v) = c.failure_rate {
                cb = cb.failure_rate(v);
            }
            if let Some(v) = c.minimum_calls {
                cb = cb.minimum_calls(v);
            }
            if let Some(d) = c.slow_call_duration {
                cb = cb.slow_call(d, c.slow_call_rate.unwrap_or(1.0));
            }
            if c.key.is_some() {
                b = b.breaker_key(c.key.clone());
            }
            if let Some(n) = c.max_keys {
                b = b.breaker_max_keys(n);
            }
            if let Some(d) = c.idle_ttl {
                b = b.breaker_idle_ttl(d);
            }
            let built = cb.build().map_err(|e| {
                let f = format!("circuit_breaker.{}", e.field());
                at(&f, e)
            })?;
            b = b.breaker(Some(built));
        } else {
            b = b.breaker(None);
        }
        let dlq_on = cfg.dead_letter_queue_enabled.unwrap_or(true)
            && s.dead_letter
                .as_ref()
                .and_then(|d| d.enabled)
                .unwrap_or(true);
        if dlq_on {
            let d = s.dead_letter.clone().unwrap_or_default();
            let def = DeadLetterSettings::default();
            b = b.dead_letter(Some(DeadLetterSettings {
                max_size: d.max_size.unwrap_or(def.max_size),
                retention: d.retention.unwrap_or(def.retention),
            }));
        } else {
            b = b.dead_letter(None);
        }
        let policy = b.build().map_err(|e| {
            // The builder names `<service>.<field>`; make it the config key.
            let field = e
                .field()
                .strip_prefix(&format!("{name}."))
                .unwrap_or(e.field())
                .to_owned();
            at(&field, e)
        })?;
        out.insert(policy);
    }
    Ok(out)
}

impl Policies {
    /// Loads policies from the presets, `RAMPART_PROFILE`, the TOML file at `path` and the
    /// process environment; see [`config`](crate::config) for the precedence.
    ///
    /// # Errors
    ///
    /// As [`Loader::load`].
    pub fn load(path: impl AsRef<Path>) -> Result<Policies, ConfigError> {
        Loader::new().file(path).load()
    }
}
