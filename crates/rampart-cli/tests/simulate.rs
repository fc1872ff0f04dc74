//! `rampart simulate` as a real process: the table on stdout, the SVG and PNG written and
//! decodable with every series in them, the same seed giving the same table, bad input
//! refused with the field and line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output, Stdio};

fn simulate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rampart"))
        .arg("simulate")
        .args(args)
        .env_remove("RAMPART_DLQ_STORE")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn out(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn table_svg_and_png_from_a_real_run() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("plot");
    let prefix = prefix.to_str().unwrap();
    let args = [
        "-p",
        "tts",
        "-p",
        "database",
        "--scenario",
        "outage-then-recovery",
        "--duration",
        "120s",
        "--rate",
        "40",
        "--compare",
        "naive",
        "--seed",
        "3",
        "--plot",
        prefix,
    ];
    let o = simulate(&args);
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stdout.starts_with("scenario outage-then-recovery"),
        "{stdout}"
    );
    for col in [
        "policy",
        "success",
        "attempts/call",
        "peak load÷offered",
        "p50",
        "p99",
        "breaker",
        "dead letters",
    ] {
        assert!(stdout.contains(col), "{col}: {stdout}");
    }
    for row in ["tts ", "database ", "naive (reference) "] {
        assert!(
            stdout.lines().any(|l| l.starts_with(row)),
            "{row}: {stdout}"
        );
    }
    // Progress went to stderr.
    assert!(stderr.contains("tts: 4800 calls"), "{stderr}");

    // The same seed: the same table.
    let again = simulate(&args);
    assert_eq!(out(&again).0, stdout);

    let svg = std::fs::read_to_string(format!("{prefix}.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
    for s in [
        "calls per second",
        "upstream attempts",
        "offered",
        "success % of calls started",
        "breaker state",
        "naive (reference)",
        "database",
        "half-open",
    ] {
        assert!(svg.contains(s), "{s} missing from the SVG");
    }
    assert!(svg.matches("<polyline").count() >= 3 * 4, "too few series");

    let png = image::open(format!("{prefix}.png")).unwrap().to_rgb8();
    assert!(png.width() >= 3 * 500 && png.height() >= 800);
    // Every series' colour is drawn somewhere.
    for (name, rgb) in [
        ("offered", [31, 119, 180]),
        ("attempts", [214, 39, 40]),
        ("success", [44, 160, 44]),
        ("breaker", [148, 103, 189]),
    ] {
        let n = png.pixels().filter(|p| p.0 == rgb).count();
        assert!(n > 100, "{name}: {n} pixels");
    }
    // Text was rendered (dark pixels beyond the lines and axes).
    let dark = png.pixels().filter(|p| p.0.iter().all(|c| *c < 60)).count();
    assert!(dark > 5_000, "{dark}");
}

#[test]
fn a_scenario_file_runs_and_a_bad_one_names_field_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("s.toml");
    std::fs::write(
        &good,
        "duration = \"60s\"\n\n[[load]]\nat = \"0s\"\nrate = 20\n\n[[load]]\nat = \"30s\"\nrate = 60\n\n[[chaos]]\nat = \"0s\"\nspec = \"transient=10%\"\n",
    )
    .unwrap();
    let o = simulate(&[
        "-p",
        "redis",
        "--scenario",
        good.to_str().unwrap(),
        "--no-plot",
    ]);
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("redis: 2400 calls"), "{stderr}");
    assert!(stdout.lines().any(|l| l.starts_with("redis ")), "{stdout}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "duration = \"60s\"\n[[load]]\nat = \"0s\"\nrate = 20\n[[chaos]]\nat = \"0s\"\nspec = \"transient=10%, latency=uniform(9s..1s)\"\n",
    )
    .unwrap();
    let o = simulate(&[
        "-p",
        "redis",
        "--scenario",
        bad.to_str().unwrap(),
        "--no-plot",
    ]);
    let (_, stderr) = out(&o);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 7"), "{stderr}");
    assert!(stderr.contains("chaos[0].spec: latency"), "{stderr}");
}

#[test]
fn bad_arguments_are_usage_errors() {
    let o = simulate(&["-p", "nosuch", "--no-plot"]);
    let (_, stderr) = out(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr.contains("\"nosuch\"") && stderr.contains("gemini_api"),
        "{stderr}"
    );

    let o = simulate(&["--scenario", "outgae", "--no-plot"]);
    let (_, stderr) = out(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr.contains("outage-then-recovery"), "{stderr}");

    let o = simulate(&["--rate", "0", "--no-plot"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn help_explains_scenarios_and_files() {
    let o = simulate(&["--help"]);
    let (stdout, _) = out(&o);
    assert!(o.status.success());
    for s in [
        "outage-then-recovery",
        "retry-after-storm",
        "one-key-down",
        "flapping",
        "[[load]]",
        "[[chaos]]",
        "--compare",
        "naive",
    ] {
        assert!(stdout.contains(s), "{s}: {stdout}");
    }
}
