//! Configuration: presets, profiles, precedence, the reference environment names, and a
//! table of bad inputs, each with its own error.
#![cfg(feature = "config")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use rampart::config::Loader;
use rampart::{Jitter, Policies};

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

fn numbers(p: &Policies, name: &str) -> (u32, Duration, Duration, f64) {
    let b = p.get(name).unwrap().backoff();
    (b.max_retries(), b.base_delay(), b.max_delay(), b.factor())
}

const MS: fn(u64) -> Duration = Duration::from_millis;

#[test]
fn presets_carry_the_reference_numbers() {
    let p = Loader::new().env(env(&[])).load().unwrap();
    assert_eq!(numbers(&p, "tts"), (3, MS(1000), MS(30_000), 2.0));
    assert_eq!(numbers(&p, "gemini_api"), (5, MS(500), MS(10_000), 2.0));
    assert_eq!(numbers(&p, "database"), (3, MS(100), MS(2_000), 2.0));
    assert_eq!(numbers(&p, "redis"), (3, MS(100), MS(1_000), 2.0));
    for name in ["tts", "gemini_api", "database", "redis"] {
        let b = p.get(name).unwrap().breaker().unwrap();
        // The reference's 5 / 60 s / 3, mapped onto the rate-based breaker (docs/load.md).
        assert_eq!(
            (
                b.consecutive_failures(),
                b.minimum_calls(),
                b.recovery_timeout(),
                b.max_recovery_timeout(),
                b.success_threshold()
            ),
            (None, 20, Duration::from_secs(5), Duration::from_secs(60), 3),
            "{name}"
        );
        assert_eq!(
            p.get(name).unwrap().backoff().jitter(),
            Jitter::Proportional(0.1)
        );
        assert!(p.get(name).unwrap().dead_letter().is_some());
    }
    assert_eq!(p, Policies::presets());
}

#[test]
fn the_production_profile_applies_its_numbers() {
    let p = Loader::new()
        .env(env(&[("RAMPART_PROFILE", "production")]))
        .load()
        .unwrap();
    assert_eq!(numbers(&p, "tts"), (5, MS(2000), MS(60_000), 2.0));
    let b = p.get("tts").unwrap().breaker().unwrap();
    assert_eq!(
        (
            b.consecutive_failures(),
            b.minimum_calls(),
            b.max_recovery_timeout()
        ),
        (None, 40, Duration::from_secs(120))
    );
    assert_eq!(numbers(&p, "gemini_api"), (3, MS(1000), MS(30_000), 2.0));
    assert_eq!(
        numbers(&p, "database"),
        (3, MS(100), MS(2_000), 2.0),
        "untouched by the profile"
    );
    assert_eq!(p, Policies::production());
    // The loader's own profile setting works the same way.
    assert_eq!(
        Loader::new()
            .profile("production")
            .env(env(&[]))
            .load()
            .unwrap(),
        p
    );
}

#[test]
fn precedence_is_preset_then_profile_then_file_then_env() {
    let (_d, path) = file("[services.tts]\nmax_retries = 7\nbase_delay = \"3s\"\n");
    // file over profile over preset
    let p = Loader::new()
        .file(&path)
        .env(env(&[("RAMPART_PROFILE", "production")]))
        .load()
        .unwrap();
    assert_eq!(numbers(&p, "tts"), (7, MS(3000), MS(60_000), 2.0));
    // env over file
    let p = Loader::new()
        .file(&path)
        .env(env(&[
            ("RAMPART_PROFILE", "production"),
            ("TTS_MAX_RETRIES", "9"),
        ]))
        .load()
        .unwrap();
    assert_eq!(numbers(&p, "tts"), (9, MS(3000), MS(60_000), 2.0));
}

#[test]
fn each_reference_environment_name_is_honoured() {
    let p = Loader::new()
        .env(env(&[
            ("TTS_MAX_RETRIES", "4"),
            ("TTS_BASE_DELAY", "1.5"),
            ("GEMINI_API_MAX_RETRIES", "2"),
            ("DB_MAX_RETRIES", "6"),
            ("REDIS_MAX_DELAY", "3s"),
            ("GEMINI_API_FAILURE_THRESHOLD", "8"),
        ]))
        .load()
        .unwrap();
    assert_eq!(numbers(&p, "tts"), (4, MS(1500), MS(30_000), 2.0));
    assert_eq!(p.get("gemini_api").unwrap().backoff().max_retries(), 2);
    assert_eq!(p.get("database").unwrap().backoff().max_retries(), 6);
    assert_eq!(
        p.get("redis").unwrap().backoff().max_delay(),
        Duration::from_secs(3)
    );
    assert_eq!(
        p.get("gemini_api")
            .unwrap()
            .breaker()
            .unwrap()
            .consecutive_failures(),
        Some(8)
    );

    let off = Loader::new()
        .env(env(&[
            ("CIRCUIT_BREAKER_ENABLED", "false"),
            ("DEAD_LETTER_QUEUE_ENABLED", "false"),
        ]))
        .load()
        .unwrap();
    for (_, policy) in off.iter() {
        assert!(policy.breaker().is_none());
        assert!(policy.dead_letter().is_none());
    }
    // Unrelated variables are ignored.
    let p = Loader::new()
        .env(env(&[("REDIS_URL", "redis://x"), ("HOME", "/root")]))
        .load()
        .unwrap();
    assert_eq!(p, Policies::presets());
}

#[test]
fn the_example_file_loads_and_covers_every_key() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/rampart.example.toml");
    let p = Loader::new().file(path).env(env(&[])).load().unwrap();
    let tts = p.get("tts").unwrap();
    assert_eq!(tts.attempt_timeout(), Some(Duration::from_secs(30)));
    assert_eq!(tts.deadline(), Some(Duration::from_secs(120)));
    let b = tts.breaker().unwrap();
    assert_eq!(b.max_recovery_timeout(), Duration::from_secs(60));
    assert_eq!(b.slow_call_duration(), Some(Duration::from_secs(10)));
    assert_eq!(
        tts.dead_letter().unwrap().retention,
        Duration::from_secs(30 * 86_400)
    );
    assert_eq!(tts.budget().unwrap().max_tokens, 100);
    // Every field of the schema appears in the example (so the example stays complete).
    let text = std::fs::read_to_string(path).unwrap();
    for key in [
        "circuit_breaker_enabled",
        "dead_letter_queue_enabled",
        "max_retries",
        "base_delay",
        "max_delay",
        "backoff_factor",
        "jitter",
        "attempt_timeout",
        "deadline",
        "retry_enabled",
        "retry_budget",
        "enabled",
        "failure_threshold",
        "recovery_timeout",
        "max_recovery_timeout",
        "success_threshold",
        "permitted_probes",
        "window_calls",
        "failure_rate",
        "minimum_calls",
        "slow_call_duration",
        "slow_call_rate",
        "key",
        "max_keys",
        "idle_ttl",
        "max_size",
        "retention",
    ] {
        assert!(
            text.contains(&format!("{key} =")),
            "the example lacks {key}"
        );
    }
}

#[test]
fn bad_inputs_each_get_their_own_error_naming_key_value_and_origin() {
    struct Case {
        file: &'static str,
        env: &'static [(&'static str, &'static str)],
        field: &'static str,
        says: &'static [&'static str],
    }
    let cases = [
        Case {
            file: "[services.tts]\nmax_retries = \"many\"\n",
            env: &[],
            field: "services.tts.max_retries",
            says: &["\"many\"", "line 2"],
        },
        Case {
            file: "[services.tts]\nmax_retries = -1\n",
            env: &[],
            field: "services.tts.max_retries",
            says: &["-1", "line 2"],
        },
        Case {
            file: "[services.tts]\n\nbase_delay = \"soon\"\n",
            env: &[],
            field: "services.tts.base_delay",
            says: &["soon", "line 3"],
        },
        Case {
            file: "[services.tts]\nmax_retrys = 3\n",
            env: &[],
            field: "services.tts.max_retrys",
            says: &["max_retrys", "unknown field"],
        },
        Case {
            file: "verbose = true\n",
            env: &[],
            field: "verbose",
            says: &["unknown field"],
        },
        Case {
            file: "[services.tts]\nbackoff_factor = 0.5\n",
            env: &[],
            field: "services.tts.backoff_factor",
            says: &["0.5", ">= 1"],
        },
        Case {
            file: "[services.tts]\nbase_delay = \"10s\"\nmax_delay = \"1s\"\n",
            env: &[],
            field: "services.tts.max_delay",
            says: &["1s", "base_delay"],
        },
        Case {
            file: "[services.tts]\njitter = 1.5\n",
            env: &[],
            field: "services.tts.jitter",
            says: &["1.5"],
        },
        Case {
            file: "[services.tts]\njitter = \"wobbly\"\n",
            env: &[],
            field: "services.tts.jitter",
            says: &["wobbly"],
        },
        Case {
            file: "[services.tts]\nattempt_timeout = \"5s\"\ndeadline = \"1s\"\n",
            env: &[],
            field: "services.tts.deadline",
            says: &["attempt_timeout"],
        },
        Case {
            file: "[services.tts.circuit_breaker]\nfailure_threshold = 0\n",
            env: &[],
            field: "services.tts.circuit_breaker.consecutive_failures",
            says: &["at least 1"],
        },
        Case {
            file: "[services.tts.circuit_breaker]\nfailure_rate = 2.0\nwindow_calls = 10\n",
            env: &[],
            field: "services.tts.circuit_breaker.failure_rate",
            says: &["2"],
        },
        Case {
            file: "[services.tts.circuit_breaker]\nwindow_calls = 10\nwindow_seconds = 10\n",
            env: &[],
            field: "services.tts.circuit_breaker.window_calls",
            says: &["not both"],
        },
        Case {
            file: "[services.gemini_api.circuit_breaker]\nenabled = true\nkey = \"hots\"\n",
            env: &[],
            field: "services.gemini_api.circuit_breaker.key",
            says: &[
                "hots",
                "line 3",
                "host, authority, method, path or header:<name>",
            ],
        },
        Case {
            file: "[services.gemini_api.circuit_breaker]\nkey = \"header:x voice\"\n",
            env: &[],
            field: "services.gemini_api.circuit_breaker.key",
            says: &["header:x voice", "line 2", "header:<name>"],
        },
        Case {
            file: "[services.gemini_api.circuit_breaker]\nkey = \"header:\"\n",
            env: &[],
            field: "services.gemini_api.circuit_breaker.key",
            says: &["header:", "line 2"],
        },
        Case {
            file: "[services.tts.circuit_breaker]\nkey = \"header:Authorization\"\n",
            env: &[],
            field: "services.tts.circuit_breaker.key",
            says: &["header:Authorization", "line 2", "not a secret"],
        },
        Case {
            file: "[services.tts.circuit_breaker]\nkey = 3\n",
            env: &[],
            field: "services.tts.circuit_breaker.key",
            says: &["3", "line 2"],
        },
        Case {
            file: "[services.tts.circuit_breaker]\nkey = \"host\"\nmax_keys = 0\n",
            env: &[],
            field: "services.tts.circuit_breaker.max_keys",
            says: &["0", "between 1 and 1000000"],
        },
        Case {
            file: "[services.tts.circuit_breaker]\nmax_keys = 5000000\n",
            env: &[],
            field: "services.tts.circuit_breaker.max_keys",
            says: &["5000000", "between 1 and 1000000"],
        },
        Case {
            file: "[services.tts.circuit_breaker]\nidle_ttl = \"0s\"\n",
            env: &[],
            field: "services.tts.circuit_breaker.idle_ttl",
            says: &["must be positive"],
        },
        Case {
            file: "",
            env: &[("GEMINI_API_BREAKER_KEY", "voice")],
            field: "services.gemini_api.circuit_breaker.key",
            says: &["voice", "environment variable GEMINI_API_BREAKER_KEY"],
        },
        Case {
            file: "[services.tts.dead_letter]\nmax_size = 0\n",
            env: &[],
            field: "services.tts.dead_letter.max_size",
            says: &["at least 1"],
        },
        Case {
            file: "",
            env: &[("TTS_MAX_RETRIES", "lots")],
            field: "services.tts.max_retries",
            says: &["lots", "environment variable TTS_MAX_RETRIES"],
        },
        Case {
            file: "",
            env: &[("DB_MAX_RETRIES", "-3")],
            field: "services.database.max_retries",
            says: &["-3", "environment variable DB_MAX_RETRIES"],
        },
        Case {
            file: "",
            env: &[("TTS_BASE_DELAY", "fast")],
            field: "services.tts.base_delay",
            says: &["fast", "TTS_BASE_DELAY"],
        },
        Case {
            file: "",
            env: &[("RAMPART_PROFILE", "staging")],
            field: "profile",
            says: &["staging", "RAMPART_PROFILE"],
        },
        Case {
            file: "",
            env: &[("CIRCUIT_BREAKER_ENABLED", "maybe")],
            field: "circuit_breaker_enabled",
            says: &["maybe", "CIRCUIT_BREAKER_ENABLED"],
        },
    ];
    for c in cases {
        let (_d, path) = file(c.file);
        let err = Loader::new()
            .file(&path)
            .env(env(c.env))
            .load()
            .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.field(), c.field, "{:?} {:?}: {text}", c.file, c.env);
        for s in c.says {
            assert!(
                text.contains(s),
                "{:?} {:?}: {text:?} lacks {s:?}",
                c.file,
                c.env
            );
        }
    }
    let err = Loader::new()
        .file("/nonexistent/rampart.toml")
        .env(env(&[]))
        .load()
        .unwrap_err();
    assert!(err.to_string().contains("cannot be read"), "{err}");
}

/// A keyed breaker from the file (and the environment): the named key, `max_keys` and
/// `idle_ttl` reach the policy; services without a key keep one breaker; a service whose
/// breaker is off keeps no key.
#[test]
fn a_breaker_key_from_the_file_and_the_environment() {
    use rampart::BreakerKey;
    let (_d, path) = file(
        "[services.gemini_api.circuit_breaker]\n\
         key = \"Header:X-Voice\"\n\
         max_keys = 64\n\
         idle_ttl = \"2m\"\n\
         [services.hosts.circuit_breaker]\n\
         key = \"host\"\n\
         [services.off.circuit_breaker]\n\
         enabled = false\n\
         key = \"path\"\n",
    );
    let p = Loader::new()
        .file(&path)
        .env(env(&[
            ("TTS_BREAKER_KEY", "method"),
            ("TTS_BREAKER_MAX_KEYS", "8"),
        ]))
        .load()
        .unwrap();
    let g = p.get("gemini_api").unwrap();
    assert_eq!(g.breaker_key(), Some(&BreakerKey::Header("x-voice".into())));
    assert_eq!(
        (g.breaker_max_keys(), g.breaker_idle_ttl()),
        (64, Duration::from_secs(120))
    );
    let h = p.get("hosts").unwrap();
    assert_eq!(h.breaker_key(), Some(&BreakerKey::Host));
    assert_eq!(
        (h.breaker_max_keys(), h.breaker_idle_ttl()),
        (1_000, Duration::from_secs(600))
    );
    let tts = p.get("tts").unwrap();
    assert_eq!(tts.breaker_key(), Some(&BreakerKey::Method));
    assert_eq!(tts.breaker_max_keys(), 8);
    assert!(p.get("off").unwrap().breaker().is_none());
    assert!(p.get("off").unwrap().breaker_key().is_none());
    assert!(p.get("database").unwrap().breaker_key().is_none());
}
