//! Hostile input never panics (issue 11, "Panics"): absurd durations from config, the
//! environment and builders are refused at build time with the field named; server hints
//! (`Retry-After`, Gemini's `retryDelay`) of any shape parse or are ignored; a policy built
//! from arbitrary durations either fails to build or completes its calls on the paused clock.
#![cfg(feature = "policy")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use proptest::prelude::*;
use rampart::Policy;

/// 1e19 s: fits in a `Duration`, overflows any `Instant` it is added to.
const HUGE: Duration = Duration::from_secs(10_000_000_000_000_000_000);

#[test]
fn a_policy_refuses_durations_beyond_a_year() {
    let cases: Vec<(rampart::PolicyBuilder, &str)> = vec![
        (Policy::builder("db").deadline(Some(HUGE)), "db.deadline"),
        (
            Policy::builder("db").attempt_timeout(Some(HUGE)),
            "db.attempt_timeout",
        ),
        (
            Policy::builder("db").base_delay(HUGE).max_delay(HUGE),
            "db.base_delay",
        ),
        (Policy::builder("db").max_delay(HUGE), "db.max_delay"),
        (
            Policy::builder("db").dead_letter(Some(rampart::DeadLetterSettings {
                max_size: 10,
                retention: HUGE,
            })),
            "db.dead_letter.retention",
        ),
    ];
    for (builder, field) in cases {
        let err = builder.build().unwrap_err();
        assert_eq!(err.field(), field, "{err}");
        assert!(err.to_string().contains("at most 365 days"), "{err}");
    }
    let year = rampart::MAX_DURATION;
    assert_eq!(year, Duration::from_secs(365 * 24 * 3600));
    assert!(Policy::builder("db").deadline(Some(year)).build().is_ok());
}

#[cfg(feature = "config")]
mod config {
    use std::collections::HashMap;

    use super::*;
    use rampart::config::Loader;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + Send + Sync + 'static {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rampart.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn tts_deadline_1e19_from_the_environment_is_refused() {
        // Issue 11: `TTS_DEADLINE=1e19` loaded, and the first call panicked.
        for value in ["1e19", "10000000000000000000", "500000000000 years"] {
            let err = Loader::new()
                .env(env(&[("TTS_DEADLINE", value)]))
                .load()
                .unwrap_err();
            assert_eq!(err.field(), "services.tts.deadline", "{value}: {err}");
            assert_eq!(
                err.origin(),
                Some("environment variable TTS_DEADLINE"),
                "{err}"
            );
            assert!(err.to_string().contains("365 days"), "{value}: {err}");
        }
    }

    #[test]
    fn endless_retries_from_the_environment_are_refused() {
        let err = Loader::new()
            .env(env(&[("TTS_MAX_RETRIES", "4294967295")]))
            .load()
            .unwrap_err();
        assert_eq!(err.field(), "services.tts.max_retries", "{err}");
        assert_eq!(err.origin(), Some("environment variable TTS_MAX_RETRIES"));
        assert!(err.to_string().contains("at most 1000"), "{err}");
    }

    #[test]
    fn absurd_durations_in_the_file_are_refused_with_their_line() {
        let cases = [
            ("deadline = \"500000000000 years\"", "services.tts.deadline"),
            ("attempt_timeout = 1e19", "services.tts.attempt_timeout"),
            (
                "base_delay = 1e19\nmax_delay = 1e19",
                "services.tts.base_delay",
            ),
            (
                "[services.tts.circuit_breaker]\nrecovery_timeout = \"400d\"",
                "services.tts.circuit_breaker.recovery_timeout",
            ),
            (
                "[services.tts.dead_letter]\nretention = 1e12",
                "services.tts.dead_letter.retention",
            ),
        ];
        for (body, field) in cases {
            let (_dir, path) = file(&format!("[services.tts]\n{body}\n"));
            let err = Loader::new().file(&path).env(env(&[])).load().unwrap_err();
            assert_eq!(err.field(), field, "{body}: {err}");
            assert!(err.to_string().contains("365 days"), "{body}: {err}");
            assert!(err.to_string().contains("line"), "{body}: {err}");
        }
    }

    #[test]
    fn non_durations_are_refused_not_panicked_on() {
        for value in [
            "-1",
            "NaN",
            "inf",
            "-inf",
            "1e400",
            "-0.5s",
            "5 fortnights",
            "",
        ] {
            let r = Loader::new().env(env(&[("TTS_BASE_DELAY", value)])).load();
            if let Err(e) = r {
                assert_eq!(e.field(), "services.tts.base_delay", "{value}: {e}");
            }
        }
    }

    fn duration_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<f64>().prop_map(|f| f.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            (
                any::<u64>(),
                prop::sample::select(vec!["ns", "ms", "s", "m", "h", "d", "w", "y", "years"])
            )
                .prop_map(|(n, u)| format!("{n}{u}")),
            (0u64..400, prop::sample::select(vec!["ms", "s", "h", "d"]))
                .prop_map(|(n, u)| format!("{n}{u}")),
            "\\PC{0,12}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Any text as any duration variable: a loaded policy whose durations are within the
        /// bound, or an error naming that variable's key.
        #[test]
        fn any_duration_variable_loads_within_bounds_or_names_its_key(
            field in prop::sample::select(vec![
                ("DEADLINE", "deadline"),
                ("ATTEMPT_TIMEOUT", "attempt_timeout"),
                ("BASE_DELAY", "base_delay"),
                ("MAX_DELAY", "max_delay"),
                ("RECOVERY_TIMEOUT", "circuit_breaker.recovery_timeout"),
            ]),
            value in duration_text(),
        ) {
            let var = format!("REDIS_{}", field.0);
            match Loader::new().env(env(&[(&var, &value)])).load() {
                Ok(p) => {
                    let p = p.get("redis").unwrap();
                    let max = rampart::MAX_DURATION;
                    prop_assert!(p.deadline().is_none_or(|d| d <= max));
                    prop_assert!(p.attempt_timeout().is_none_or(|d| d <= max));
                    prop_assert!(p.backoff().max_delay() <= max);
                    prop_assert!(p.breaker().is_none_or(|b| b.max_recovery_timeout() <= max));
                }
                Err(e) => prop_assert!(
                    e.field().starts_with("services.redis."),
                    "{:?} = {:?}: {}", var, value, e
                ),
            }
        }

        /// The same through a TOML file, any number as any duration key.
        #[test]
        fn any_duration_in_a_file_loads_within_bounds_or_names_its_key(
            key in prop::sample::select(vec!["deadline", "attempt_timeout", "base_delay", "max_delay"]),
            value in prop_oneof![
                prop_oneof![any::<f64>(), 0.0f64..1e9, 1e6f64..1e20].prop_map(|secs| {
                    if secs.is_finite() { format!("{secs:?}") } else { format!("{:?}", secs.to_string()) }
                }),
                // Any text as a TOML string (a JSON string literal is a valid TOML basic string).
                duration_text().prop_map(|t| serde_json::to_string(&t).unwrap()),
            ],
        ) {
            let (_dir, path) = file(&format!("[services.redis]\n{key} = {value}\n"));
            match Loader::new().file(&path).env(env(&[])).load() {
                Ok(p) => {
                    let p = p.get("redis").unwrap();
                    prop_assert!(p.deadline().is_none_or(|d| d <= rampart::MAX_DURATION));
                    prop_assert!(p.backoff().max_delay() <= rampart::MAX_DURATION);
                }
                Err(e) => prop_assert!(e.field().starts_with("services.redis."), "{}", e),
            }
        }
    }
}

mod layers {
    use super::*;
    use rampart::dlq::{JsonExtractor, MemoryStore};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use tower::{service_fn, Layer, ServiceExt};

    fn any_duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            (1u64..5_000).prop_map(Duration::from_millis),
            (1u64..=400 * 86_400).prop_map(Duration::from_secs),
            (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
            Just(Duration::MAX),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// A whole policy stack (dead letters, retry, breaker, attempt timeout) built from
        /// arbitrary durations: a build error naming the field, or calls that finish on the
        /// paused clock without panicking.
        #[test]
        fn a_policy_from_arbitrary_durations_builds_or_completes(
            deadline in proptest::option::of(any_duration()),
            timeout in proptest::option::of(any_duration()),
            base in any_duration(),
            max in any_duration(),
            fail_first in 0u32..4,
        ) {
            let built = Policy::builder("hostile")
                .deadline(deadline)
                .attempt_timeout(timeout)
                .base_delay(base)
                .max_delay(max)
                .max_retries(3)
                .build();
            let policy = match built {
                Ok(p) => p,
                Err(e) => {
                    prop_assert!(e.field().starts_with("hostile."), "{}", e);
                    return Ok(());
                }
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let calls = Arc::new(AtomicU32::new(0));
            let c = calls.clone();
            let inner = service_fn(move |_: u32| {
                let n = c.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < fail_first {
                        Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
                    } else {
                        Ok(n)
                    }
                }
            });
            let svc = policy
                .layer(rampart::classify::IoErrors, MemoryStore::default(), JsonExtractor::default())
                .layer(inner);
            let r = rt.block_on(svc.oneshot(1));
            prop_assert!(calls.load(Ordering::SeqCst) >= 1);
            if r.is_ok() {
                prop_assert!(calls.load(Ordering::SeqCst) == fail_first + 1);
            }
        }
    }
}

#[cfg(feature = "client")]
mod retry_after {
    use super::*;
    use rampart::client::parse_retry_after;
    use std::time::SystemTime;

    proptest! {
        #[test]
        fn any_header_text_parses_or_is_ignored(v in "\\PC{0,40}", now_s in any::<u64>()) {
            let now = SystemTime::UNIX_EPOCH
                .checked_add(Duration::from_secs(now_s / 4))
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let _ = parse_retry_after(&v, now);
        }

        #[test]
        fn delay_seconds_of_any_size_are_exact(n in any::<u64>(), pad in "[ \t]{0,3}") {
            let v = format!("{pad}{n}{pad}");
            prop_assert_eq!(parse_retry_after(&v, SystemTime::now()), Some(Duration::from_secs(n)));
        }

        #[test]
        fn http_dates_count_from_now_and_never_go_negative(
            at_s in 0u64..253_402_300_799, // up to 9999-12-31
            now_s in 0u64..253_402_300_799,
        ) {
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(at_s);
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now_s);
            let got = parse_retry_after(&httpdate::fmt_http_date(at), now);
            prop_assert_eq!(got, Some(Duration::from_secs(at_s.saturating_sub(now_s))));
        }
    }
}

#[cfg(feature = "gemini")]
mod gemini {
    use super::*;
    use rampart::gemini::{google_error_outcome, parse_proto_duration};

    proptest! {
        #[test]
        fn any_retry_delay_text_parses_or_is_ignored(v in "\\PC{0,30}") {
            if let Some(d) = parse_proto_duration(&v) {
                prop_assert!(d < Duration::MAX);
            }
        }

        #[test]
        fn any_number_of_seconds_is_a_duration_or_none(secs in any::<f64>()) {
            let got = parse_proto_duration(&format!("{secs}s"));
            if secs.is_nan() || secs < 0.0 || secs.is_infinite() {
                prop_assert!(got.is_none() || got == Some(Duration::ZERO), "{} -> {:?}", secs, got);
            } else if secs < 1e15 {
                let d = got.unwrap();
                prop_assert!((d.as_secs_f64() - secs).abs() <= secs * 1e-9 + 1e-9);
            }
        }

        #[test]
        fn any_retry_info_body_classifies_without_panicking(
            delay in prop_oneof!["\\PC{0,20}", any::<f64>().prop_map(|f| format!("{f}s"))],
        ) {
            let body = serde_json::json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]}});
            let o = google_error_outcome(body.to_string().as_bytes());
            prop_assert!(o.is_some());
        }
    }
}
