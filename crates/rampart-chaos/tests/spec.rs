//! The spec parser: canonical forms round-trip, bad input is an error naming the field,
//! no input panics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use rampart_chaos::ChaosSpec;

fn dur() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..100_000).prop_map(|n| format!("{n}ms")),
        (0u64..86_400).prop_map(|n| format!("{n}s")),
        (1u64..120).prop_map(|n| format!("{n}m")),
    ]
}

fn clause() -> impl Strategy<Value = String> {
    let plain = prop_oneof![
        (0u32..=25).prop_map(|p| format!("transient={p}%")),
        (0u32..=25).prop_map(|p| format!("throttled={p}%")),
        (0u32..=25).prop_map(|p| format!("permanent={}", f64::from(p) / 100.0)),
        (0u32..=25).prop_map(|p| format!("rejected={p}%")),
        dur().prop_map(|d| format!("retry_after={d}")),
        dur().prop_map(|d| format!("latency={d}")),
        (0u64..10_000, 0u64..10_000).prop_map(|(a, b)| format!(
            "latency=uniform({}ms..{}ms)",
            a.min(b),
            a.max(b)
        )),
        dur().prop_map(|d| format!("latency=exp({d})")),
        (dur(), dur()).prop_map(|(a, b)| format!("outage={a}+{b}")),
        (dur(), dur(), dur()).prop_map(|(a, b, c)| format!("storm={a}+{b}@{c}")),
    ];
    (prop::option::of("[a-z][a-z0-9-]{0,6}"), plain).prop_map(|(k, c)| match k {
        Some(k) => format!("key({k}).{c}"),
        None => c,
    })
}

proptest! {
    /// Any spec of valid clauses parses, prints canonically, and the canonical form parses
    /// back to the same spec.
    #[test]
    fn canonical_form_round_trips(clauses in prop::collection::vec(clause(), 0..8), seed in prop::option::of(any::<u64>())) {
        let mut text = clauses.join(" , ");
        if let Some(s) = seed { text.push_str(&format!(",seed={s}")); }
        let spec: ChaosSpec = text.parse().map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let printed = spec.to_string();
        let again: ChaosSpec = printed.parse().map_err(|e| TestCaseError::fail(format!("{printed}: {e}")))?;
        prop_assert_eq!(&again, &spec);
        prop_assert_eq!(again.to_string(), printed);
        prop_assert_eq!(spec.seed(), seed);
    }

    /// Arbitrary text never panics: it parses or says which field is wrong.
    #[test]
    fn arbitrary_text_parses_or_names_a_field(s in "\\PC{0,40}") {
        if let Err(e) = s.parse::<ChaosSpec>() {
            prop_assert!(e.to_string().contains(&format!("`{}`", e.field())), "{}", e);
        }
    }

    /// Arbitrary text built from the grammar's pieces never panics either.
    #[test]
    fn grammar_soup_never_panics(parts in prop::collection::vec(prop_oneof![
        Just("transient"), Just("="), Just("%"), Just("key("), Just(")."), Just(","), Just("+"),
        Just("@"), Just("latency"), Just("uniform("), Just("exp("), Just(".."), Just(")"),
        Just("outage"), Just("storm"), Just("99999999999999999999s"), Just("1s"), Just("-1"),
        Just("NaN"), Just("inf"), Just("1e308"), Just("seed"), Just("150%"),
    ], 0..16)) {
        let s: String = parts.concat();
        let _ = s.parse::<ChaosSpec>();
    }

    /// A rate outside 0..=100 % is refused, naming the field.
    #[test]
    fn out_of_range_rates_are_refused(p in prop_oneof![100.0001f64..1e9, -1e9f64..-0.0001], kind in prop_oneof![Just("transient"), Just("throttled"), Just("permanent"), Just("rejected")]) {
        let e = format!("{kind}={p}%").parse::<ChaosSpec>().unwrap_err();
        prop_assert_eq!(e.field(), kind);
    }
}

#[test]
fn errors_name_the_field_and_value() {
    let cases = [
        (
            "transient=20%, latency=uniform(5ms)",
            "latency",
            "uniform(5ms)",
        ),
        ("latency=uniform(2s..1s)", "latency", "uniform(2s..1s)"),
        ("outage=60s", "outage", "60s"),
        ("storm=60s+30s", "storm", "60s+30s"),
        ("key(eu).transient=lots", "key(eu).transient", "lots"),
        ("transient=60%, throttled=50%", "throttled", "50%"),
        ("retry_after=soon", "retry_after", "soon"),
        ("latency=400days", "latency", "400days"),
        ("bogus=1", "bogus", "1"),
        ("key(eu).seed=1", "key(eu).seed", "1"),
        ("seed=x", "seed", "x"),
        ("transient", "transient", ""),
        ("key().transient=1%", "key", ""),
    ];
    for (text, field, value) in cases {
        let e = text.parse::<ChaosSpec>().unwrap_err();
        assert_eq!(e.field(), field, "{text}: {e}");
        assert_eq!(e.value(), value, "{text}: {e}");
        assert!(e.to_string().contains(field), "{e}");
    }
}

#[test]
fn empty_and_none_inject_nothing() {
    for s in ["", "none", " , ", "transient=0%"] {
        let spec: ChaosSpec = s.parse().unwrap();
        assert!(spec.is_quiet(), "{s}");
    }
    assert_eq!(ChaosSpec::none().to_string(), "none");
    let w: ChaosSpec = "outage=1m+30s".parse().unwrap();
    assert_eq!(w.to_string(), "outage=1m+30s");
}
