//! Scenarios: offered load over time and the chaos spec over time, built in or from a file.

use std::path::Path;
use std::time::Duration;

use rampart::chaos::ChaosSpec;
use serde::Deserialize;
use toml::Spanned;

/// Virtual time a scenario may cover at most.
const MAX_SCENARIO: Duration = Duration::from_secs(24 * 3600);
/// Offered calls a second at most.
const MAX_RATE: f64 = 100_000.0;
/// Calls a whole run may offer at most (memory: one latency per call).
const MAX_CALLS: f64 = 20_000_000.0;

/// The built-in scenarios and what they do (for `--help` and errors).
pub(crate) const BUILT_IN: &[(&str, &str)] = &[
    (
        "transient=20%",
        "20 % of calls fail transiently, all the time",
    ),
    (
        "outage",
        "the upstream is down from 20 % of the run to its end",
    ),
    (
        "outage-then-recovery",
        "down for 10 % of the run (30 s of 300 s) from 20 %, then healthy",
    ),
    (
        "retry-after-storm",
        "429s with Retry-After: 5s for 20 % of the run, from 20 %",
    ),
    (
        "latency-spike",
        "exp(20ms) latency, 1-3 s for 20 % of the run from 20 %",
    ),
    (
        "one-key-down",
        "one key of ten (k3) always fails; the others are healthy",
    ),
    (
        "flapping",
        "down 10 s of every 30 s from 20 % of the run to 80 %",
    ),
];

/// Offered load and chaos over time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scenario {
    pub(crate) name: String,
    pub(crate) duration: Duration,
    /// Steps: from `at`, `rate` calls a second. Sorted, the first at zero.
    pub(crate) load: Vec<(Duration, f64)>,
    /// Steps: from `at`, this spec (its windows count from the run's start). Sorted.
    pub(crate) chaos: Vec<(Duration, ChaosSpec)>,
    /// Calls are spread round-robin over this many keys `k0`, `k1`, …
    pub(crate) keys: u32,
}

impl Scenario {
    /// The offered rate at `t`.
    #[cfg(test)]
    pub(crate) fn rate_at(&self, t: Duration) -> f64 {
        self.load
            .iter()
            .rev()
            .find(|(at, _)| *at <= t)
            .map_or(0.0, |(_, r)| *r)
    }

    /// A built-in scenario, or a constant chaos spec (`transient=35%`), over `duration` at
    /// `rate` calls a second.
    pub(crate) fn built_in(name: &str, duration: Duration, rate: f64) -> Result<Scenario, String> {
        let d = duration.as_secs_f64();
        let at = |f: f64| Duration::from_secs_f64(d * f);
        let secs = |f: f64| format!("{}ms", (d * f * 1000.0).round());
        let spec_text = match name {
            "outage" => format!("outage={}+{}", secs(0.2), secs(1.0)),
            "outage-then-recovery" => format!("outage={}+{}", secs(0.2), secs(0.1)),
            "retry-after-storm" => format!("storm={}+{}@5s", secs(0.2), secs(0.2)),
            "one-key-down" => "key(k3).transient=100%".to_owned(),
            "flapping" => {
                let mut parts = Vec::new();
                let mut t = d * 0.2;
                while t < d * 0.8 {
                    parts.push(format!("outage={}ms+10s", (t * 1000.0).round()));
                    t += 30.0;
                }
                parts.join(", ")
            }
            "latency-spike" => String::new(),
            other => other.to_owned(),
        };
        // Built-ins answer in exp(20ms), so that latency shows what retries add.
        let spec_text = if BUILT_IN.iter().any(|(n, _)| *n == name) {
            format!("{spec_text}, latency=exp(20ms)")
        } else {
            spec_text
        };
        let chaos = if name == "latency-spike" {
            let calm: ChaosSpec = "latency=exp(20ms)".parse().map_err(|e| format!("{e}"))?;
            let spike: ChaosSpec = "latency=uniform(1s..3s)"
                .parse()
                .map_err(|e| format!("{e}"))?;
            vec![
                (Duration::ZERO, calm.clone()),
                (at(0.2), spike),
                (at(0.4), calm),
            ]
        } else {
            let spec: ChaosSpec = spec_text.parse().map_err(|e| {
                let names: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
                format!(
                    "scenario {name:?} is not a built-in ({}), a file, or a chaos spec: {e}",
                    names.join(", ")
                )
            })?;
            vec![(Duration::ZERO, spec)]
        };
        let s = Scenario {
            name: name.to_owned(),
            duration,
            load: vec![(Duration::ZERO, rate)],
            chaos,
            keys: 10,
        };
        s.check_size()?;
        Ok(s)
    }

    fn check_size(&self) -> Result<(), String> {
        if self.duration.is_zero() || self.duration > MAX_SCENARIO {
            return Err(format!(
                "duration {}: must be more than 0 and at most 24h",
                humantime::format_duration(self.duration)
            ));
        }
        let max = self.load.iter().map(|(_, r)| *r).fold(0.0, f64::max);
        if max * self.duration.as_secs_f64() > MAX_CALLS {
            return Err(format!(
                "the scenario offers up to {:.0} calls; at most {MAX_CALLS:.0} are simulated (shorten it or lower the rate)",
                max * self.duration.as_secs_f64()
            ));
        }
        Ok(())
    }

    /// A scenario file (TOML; see `rampart simulate --help`).
    pub(crate) fn from_file(path: &Path) -> Result<Scenario, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot be read: {e}", path.display()))?;
        Scenario::from_toml(&path.display().to_string(), &text)
    }

    pub(crate) fn from_toml(origin: &str, text: &str) -> Result<Scenario, String> {
        let file: File = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            match line {
                Some(l) => format!("{origin} line {l}: {}", e.message()),
                None => format!("{origin}: {}", e.message()),
            }
        })?;
        let at = |span: std::ops::Range<usize>, field: &str, value: &str, why: &str| {
            format!(
                "{origin} line {}: {field} = {value:?}: {why}",
                line_of(text, span.start)
            )
        };
        let dur = |s: &Spanned<String>, field: &str| -> Result<Duration, String> {
            let d = humantime::parse_duration(s.get_ref().trim()).map_err(|e| {
                at(
                    s.span(),
                    field,
                    s.get_ref(),
                    &format!("expected a duration such as 90s or 5m ({e})"),
                )
            })?;
            Ok(d)
        };
        let duration = dur(&file.duration, "duration")?;
        if duration.is_zero() || duration > MAX_SCENARIO {
            return Err(at(
                file.duration.span(),
                "duration",
                file.duration.get_ref(),
                "must be more than 0 and at most 24h",
            ));
        }
        let keys = match &file.keys {
            Some(k) if !(1..=10_000).contains(k.get_ref()) => {
                return Err(at(
                    k.span(),
                    "keys",
                    &k.get_ref().to_string(),
                    "must be between 1 and 10000",
                ))
            }
            Some(k) => *k.get_ref(),
            None => 10,
        };
        if file.load.is_empty() {
            return Err(format!(
                "{origin}: load: at least one [[load]] step is needed (at = \"0s\", rate = 100)"
            ));
        }
        let mut load = Vec::new();
        for (i, step) in file.load.iter().enumerate() {
            let field = format!("load[{i}].at");
            let t = dur(&step.at, &field)?;
            let prev = load.last().map_or(Duration::ZERO, |(p, _)| *p);
            if t > duration || t < prev || (i == 0 && !t.is_zero()) {
                return Err(at(
                    step.at.span(),
                    &field,
                    step.at.get_ref(),
                    "steps start at 0s, go in order and end within the duration",
                ));
            }
            let r = *step.rate.get_ref();
            if !(0.0..=MAX_RATE).contains(&r) {
                return Err(at(
                    step.rate.span(),
                    &format!("load[{i}].rate"),
                    &r.to_string(),
                    "calls a second must be between 0 and 100000",
                ));
            }
            load.push((t, r));
        }
        let mut chaos = Vec::new();
        for (i, step) in file.chaos.iter().enumerate() {
            let field = format!("chaos[{i}].at");
            let t = dur(&step.at, &field)?;
            let prev = chaos.last().map_or(Duration::ZERO, |(p, _)| *p);
            if t > duration || t < prev {
                return Err(at(
                    step.at.span(),
                    &field,
                    step.at.get_ref(),
                    "steps go in order and start within the duration",
                ));
            }
            let spec: ChaosSpec =
                step.spec
                    .get_ref()
                    .parse()
                    .map_err(|e: rampart::chaos::SpecError| {
                        at(
                            step.spec.span(),
                            &format!("chaos[{i}].spec: {}", e.field()),
                            e.value(),
                            &e.to_string(),
                        )
                    })?;
            chaos.push((t, spec));
        }
        let s = Scenario {
            name: origin.to_owned(),
            duration,
            load,
            chaos,
            keys,
        };
        s.check_size()?;
        Ok(s)
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |t| t.bytes().filter(|b| *b == b'\n').count())
        + 1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    duration: Spanned<String>,
    #[serde(default)]
    keys: Option<Spanned<u32>>,
    #[serde(default)]
    load: Vec<LoadStep>,
    #[serde(default)]
    chaos: Vec<ChaosStep>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadStep {
    at: Spanned<String>,
    rate: Spanned<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChaosStep {
    at: Spanned<String>,
    spec: Spanned<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const GOOD: &str = r#"
duration = "120s"
keys = 4

[[load]]
at = "0s"
rate = 50

[[load]]
at = "60s"
rate = 200

[[chaos]]
at = "0s"
spec = "transient=5%"

[[chaos]]
at = "30s"
spec = "outage=30s+20s, latency=exp(10ms)"
"#;

    #[test]
    fn a_file_parses() {
        let s = Scenario::from_toml("s.toml", GOOD).unwrap();
        assert_eq!(s.duration, Duration::from_secs(120));
        assert_eq!(s.keys, 4);
        assert_eq!(s.rate_at(Duration::from_secs(59)), 50.0);
        assert_eq!(s.rate_at(Duration::from_secs(60)), 200.0);
        assert_eq!(s.chaos.len(), 2);
    }

    #[test]
    fn bad_fields_are_named_with_their_line() {
        let cases = [
            (
                GOOD.replace("transient=5%", "transient=500%"),
                "chaos[0].spec: transient",
                15,
            ),
            (GOOD.replace("\"120s\"", "\"soon\""), "duration", 2),
            (GOOD.replace("rate = 200", "rate = -3"), "load[1].rate", 11),
            (
                GOOD.replace("at = \"60s\"", "at = \"600s\""),
                "load[1].at",
                10,
            ),
            (
                GOOD.replace("rate = 200", "rat = 200"),
                "unknown field `rat`",
                11,
            ),
            (GOOD.replace("keys = 4", "keys = 0"), "keys", 3),
            (
                GOOD.replace("outage=30s+20s", "outage=30s"),
                "chaos[1].spec: outage",
                19,
            ),
        ];
        for (text, field, line) in cases {
            let e = Scenario::from_toml("s.toml", &text).unwrap_err();
            assert!(e.contains(field), "{field}: {e}");
            assert!(e.contains(&format!("s.toml line {line}")), "{line}: {e}");
        }
    }

    #[test]
    fn built_ins_and_inline_specs() {
        for (name, _) in BUILT_IN {
            let s = Scenario::built_in(name, Duration::from_secs(300), 100.0).unwrap();
            assert!(!s.chaos.is_empty(), "{name}");
        }
        assert!(
            Scenario::built_in("transient=35%, latency=5ms", Duration::from_secs(60), 10.0).is_ok()
        );
        let e = Scenario::built_in("outgae", Duration::from_secs(60), 10.0).unwrap_err();
        assert!(e.contains("outage-then-recovery"), "{e}");
        let e = Scenario::built_in("outage", Duration::from_secs(86_400), 100_000.0).unwrap_err();
        assert!(e.contains("at most"), "{e}");
        let e = Scenario::built_in("outage", Duration::from_secs(86_401), 0.01).unwrap_err();
        assert!(e.contains("duration"), "{e}");
    }
}
