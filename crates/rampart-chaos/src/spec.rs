//! The chaos spec: which faults to inject, how often, when and for which keys.
//!
//! # Grammar
//!
//! A spec is a comma-separated list of clauses; spaces around them are ignored.
//!
//! | clause | meaning |
//! |---|---|
//! | `transient=20%` | 20 % of calls fail with a transient fault (a 503, a reset) |
//! | `throttled=5%` | 5 % of calls are throttled (a 429) |
//! | `permanent=1%` | 1 % fail permanently (a 500 that will not go away) |
//! | `rejected=1%` | 1 % are the caller's fault (a 400) |
//! | `retry_after=2s` | throttled faults carry this `Retry-After` hint |
//! | `latency=50ms` | every call takes 50 ms longer |
//! | `latency=uniform(10ms..200ms)` | … a uniformly drawn extra delay |
//! | `latency=exp(40ms)` | … an exponentially drawn one with this mean (capped at 100× the mean) |
//! | `outage=60s+30s` | every call from 60 s after the start, for 30 s, fails transiently |
//! | `storm=60s+30s@5s` | every call in that window is throttled with `Retry-After: 5s` |
//! | `key(shard-3).transient=100%` | any clause above, only for calls whose key is `shard-3` |
//! | `seed=42` | the random draws' seed (the layer's own seed wins if set) |
//!
//! Rates are percentages (`20%`) or fractions (`0.2`); the rates of one key (or of all
//! calls) add up to at most 100 %. Durations are humantime (`250ms`, `2s`, `1m`), at most
//! 365 days. `outage` and `storm` may repeat. Times count from the layer's epoch (its
//! first call unless set).
//!
//! A call with a key that has clauses of its own draws from those first and, if they
//! inject nothing, from the clauses for every call; its latency is the key's if set.
//!
//! # Example
//!
//! ```
//! use rampart_chaos::ChaosSpec;
//!
//! let spec: ChaosSpec = "transient=20%, latency=exp(40ms), outage=60s+30s, key(eu).throttled=50%".parse()?;
//! assert_eq!(spec.to_string(), "transient=20%, latency=exp(40ms), outage=1m+30s, key(eu).throttled=50%");
//!
//! let err = "transient=120%".parse::<ChaosSpec>().unwrap_err();
//! assert_eq!(err.field(), "transient");
//! # Ok::<(), rampart_chaos::SpecError>(())
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rampart_core::MAX_DURATION;

/// A parsed chaos spec (see the [module docs](self) for the grammar).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChaosSpec {
    pub(crate) all: Plan,
    pub(crate) keys: Vec<(String, Plan)>,
    pub(crate) seed: Option<u64>,
}

/// The clauses for all calls, or for one key.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Plan {
    pub(crate) transient: f64,
    pub(crate) throttled: f64,
    pub(crate) permanent: f64,
    pub(crate) rejected: f64,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) latency: Option<Latency>,
    pub(crate) outages: Vec<Window>,
    pub(crate) storms: Vec<(Window, Duration)>,
}

/// A latency distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    /// Always this long.
    Fixed(Duration),
    /// Uniform between the two bounds.
    Uniform(Duration, Duration),
    /// Exponential with this mean, capped at 100× the mean.
    Exp(Duration),
}

/// A time window: from `start` after the epoch, for `len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// When it starts, after the epoch.
    pub start: Duration,
    /// How long it lasts.
    pub len: Duration,
}

impl Window {
    /// `true` if `t` (after the epoch) falls inside.
    pub fn contains(&self, t: Duration) -> bool {
        t.checked_sub(self.start)
            .is_some_and(|into| into < self.len)
    }
}

/// A spec that does not parse: which clause, which field, what value and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chaos spec: clause {clause:?}: field `{field}` = {value:?}: {message}")]
pub struct SpecError {
    clause: String,
    field: String,
    value: String,
    message: String,
}

impl SpecError {
    fn new(clause: &str, field: &str, value: &str, message: impl Into<String>) -> Self {
        SpecError {
            clause: clause.to_owned(),
            field: field.to_owned(),
            value: value.to_owned(),
            message: message.into(),
        }
    }
    /// The field at fault (`transient`, `latency`, `key(eu).outage`, …).
    pub fn field(&self) -> &str {
        &self.field
    }
    /// The bad value.
    pub fn value(&self) -> &str {
        &self.value
    }
    /// The whole clause.
    pub fn clause(&self) -> &str {
        &self.clause
    }
}

impl ChaosSpec {
    /// A spec that injects nothing.
    pub fn none() -> Self {
        ChaosSpec::default()
    }

    /// The seed named by the spec, if any.
    pub fn seed(&self) -> Option<u64> {
        self.seed
    }

    /// `true` if the spec injects nothing.
    pub fn is_quiet(&self) -> bool {
        self.all.is_quiet() && self.keys.iter().all(|(_, p)| p.is_quiet())
    }
}

impl Plan {
    fn is_quiet(&self) -> bool {
        self.transient == 0.0
            && self.throttled == 0.0
            && self.permanent == 0.0
            && self.rejected == 0.0
            && self.latency.is_none()
            && self.outages.is_empty()
            && self.storms.is_empty()
    }
}

/// Splits at top-level commas (not inside parentheses).
fn clauses(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth = depth.saturating_add(1),
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_rate(clause: &str, field: &str, v: &str) -> Result<f64, SpecError> {
    let v = v.trim();
    let (num, scale) = match v.strip_suffix('%') {
        Some(n) => (n.trim(), 100.0),
        None => (v, 1.0),
    };
    let x: f64 = num
        .parse()
        .map_err(|_| SpecError::new(clause, field, v, "expected a rate such as 20% or 0.2"))?;
    let rate = x / scale;
    if !(0.0..=1.0).contains(&rate) || rate.is_nan() {
        return Err(SpecError::new(
            clause,
            field,
            v,
            "a rate must be between 0% and 100%",
        ));
    }
    Ok(rate)
}

fn parse_dur(clause: &str, field: &str, v: &str) -> Result<Duration, SpecError> {
    let v = v.trim();
    let d = humantime::parse_duration(v).map_err(|e| {
        SpecError::new(
            clause,
            field,
            v,
            format!("expected a duration such as 250ms or 2s ({e})"),
        )
    })?;
    if d > MAX_DURATION {
        return Err(SpecError::new(
            clause,
            field,
            v,
            "a duration must be at most 365 days",
        ));
    }
    Ok(d)
}

fn parse_window(clause: &str, field: &str, v: &str) -> Result<Window, SpecError> {
    let (start, len) = v.split_once('+').ok_or_else(|| {
        SpecError::new(
            clause,
            field,
            v.trim(),
            "expected START+LENGTH such as 60s+30s",
        )
    })?;
    Ok(Window {
        start: parse_dur(clause, field, start)?,
        len: parse_dur(clause, field, len)?,
    })
}

fn parse_latency(clause: &str, field: &str, v: &str) -> Result<Latency, SpecError> {
    let v = v.trim();
    let inner = |prefix: &str| {
        v.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(')'))
            .map(str::trim)
    };
    if let Some(args) = inner("uniform(") {
        let (lo, hi) = args
            .split_once("..")
            .ok_or_else(|| SpecError::new(clause, field, v, "expected uniform(LOW..HIGH)"))?;
        let (lo, hi) = (parse_dur(clause, field, lo)?, parse_dur(clause, field, hi)?);
        if lo > hi {
            return Err(SpecError::new(
                clause,
                field,
                v,
                "the low bound is above the high bound",
            ));
        }
        return Ok(Latency::Uniform(lo, hi));
    }
    if let Some(mean) = inner("exp(") {
        return Ok(Latency::Exp(parse_dur(clause, field, mean)?));
    }
    if v.contains('(') {
        return Err(SpecError::new(
            clause,
            field,
            v,
            "expected DURATION, uniform(LOW..HIGH) or exp(MEAN)",
        ));
    }
    Ok(Latency::Fixed(parse_dur(clause, field, v)?))
}

impl FromStr for ChaosSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let mut spec = ChaosSpec::default();
        for clause in clauses(s) {
            let clause = clause.trim();
            if clause.is_empty() || clause == "none" {
                continue;
            }
            let (key, item) = match clause.strip_prefix("key(") {
                Some(rest) => {
                    let (k, item) = rest.split_once(").").ok_or_else(|| {
                        SpecError::new(clause, "key", clause, "expected key(NAME).CLAUSE")
                    })?;
                    if k.is_empty() || k.contains([',', '(', ')']) {
                        return Err(SpecError::new(
                            clause,
                            "key",
                            k,
                            "a key is a non-empty name without commas or parentheses",
                        ));
                    }
                    (Some(k), item)
                }
                None => (None, clause),
            };
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| SpecError::new(clause, item.trim(), "", "expected NAME=VALUE"))?;
            let name = name.trim();
            let field = match key {
                Some(k) => format!("key({k}).{name}"),
                None => name.to_owned(),
            };
            if name == "seed" {
                if key.is_some() {
                    return Err(SpecError::new(
                        clause,
                        &field,
                        value.trim(),
                        "the seed is for the whole spec, not for one key",
                    ));
                }
                spec.seed = Some(value.trim().parse().map_err(|_| {
                    SpecError::new(clause, &field, value.trim(), "expected a whole number")
                })?);
                continue;
            }
            let plan = match key {
                None => &mut spec.all,
                Some(k) => match spec.keys.iter().position(|(n, _)| n == k) {
                    Some(i) => &mut spec.keys[i].1,
                    None => {
                        spec.keys.push((k.to_owned(), Plan::default()));
                        let last = spec.keys.len() - 1;
                        &mut spec.keys[last].1
                    }
                },
            };
            match name {
                "transient" => plan.transient = parse_rate(clause, &field, value)?,
                "throttled" => plan.throttled = parse_rate(clause, &field, value)?,
                "permanent" => plan.permanent = parse_rate(clause, &field, value)?,
                "rejected" => plan.rejected = parse_rate(clause, &field, value)?,
                "retry_after" => plan.retry_after = Some(parse_dur(clause, &field, value)?),
                "latency" => plan.latency = Some(parse_latency(clause, &field, value)?),
                "outage" => plan.outages.push(parse_window(clause, &field, value)?),
                "storm" => {
                    let (w, hint) = value.split_once('@').ok_or_else(|| {
                        SpecError::new(
                            clause,
                            &field,
                            value.trim(),
                            "expected START+LENGTH@RETRY_AFTER such as 60s+30s@5s",
                        )
                    })?;
                    let w = parse_window(clause, &field, w)?;
                    plan.storms.push((w, parse_dur(clause, &field, hint)?));
                }
                _ => {
                    return Err(SpecError::new(
                        clause,
                        &field,
                        value.trim(),
                        "unknown field; expected transient, throttled, permanent, rejected, \
                         retry_after, latency, outage, storm, seed or key(NAME).…",
                    ))
                }
            }
            let total = plan.transient + plan.throttled + plan.permanent + plan.rejected;
            if total > 1.0 + 1e-9 {
                return Err(SpecError::new(
                    clause,
                    &field,
                    value.trim(),
                    format!("the rates add up to {:.4}%, more than 100%", total * 100.0),
                ));
            }
        }
        // A key whose clauses are all zero is no key at all.
        spec.keys.retain(|(_, p)| *p != Plan::default());
        Ok(spec)
    }
}

struct Dur(Duration);

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&humantime::format_duration(self.0), f)
    }
}

/// `20%` when that reads back to exactly `r`, else the fraction (which always does).
fn fmt_rate(r: f64) -> String {
    let pct = format!("{}", r * 100.0);
    match pct.parse::<f64>() {
        Ok(p) if p / 100.0 == r => format!("{pct}%"),
        _ => format!("{r}"),
    }
}

impl Plan {
    fn clauses(&self, prefix: &str, out: &mut Vec<String>) {
        for (name, r) in [
            ("transient", self.transient),
            ("throttled", self.throttled),
            ("permanent", self.permanent),
            ("rejected", self.rejected),
        ] {
            if r > 0.0 {
                out.push(format!("{prefix}{name}={}", fmt_rate(r)));
            }
        }
        if let Some(d) = self.retry_after {
            out.push(format!("{prefix}retry_after={}", Dur(d)));
        }
        match self.latency {
            Some(Latency::Fixed(d)) => out.push(format!("{prefix}latency={}", Dur(d))),
            Some(Latency::Uniform(a, b)) => {
                out.push(format!("{prefix}latency=uniform({}..{})", Dur(a), Dur(b)))
            }
            Some(Latency::Exp(m)) => out.push(format!("{prefix}latency=exp({})", Dur(m))),
            None => {}
        }
        for w in &self.outages {
            out.push(format!("{prefix}outage={}+{}", Dur(w.start), Dur(w.len)));
        }
        for (w, hint) in &self.storms {
            out.push(format!(
                "{prefix}storm={}+{}@{}",
                Dur(w.start),
                Dur(w.len),
                Dur(*hint)
            ));
        }
    }
}

impl fmt::Display for ChaosSpec {
    /// The canonical form, which parses back to the same spec.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        self.all.clauses("", &mut out);
        for (k, plan) in &self.keys {
            plan.clauses(&format!("key({k})."), &mut out);
        }
        if let Some(seed) = self.seed {
            out.push(format!("seed={seed}"));
        }
        if out.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&out.join(", "))
    }
}
