//! The arguments and help of `rampart simulate`, compiled with or without the `simulate`
//! feature, so that `rampart simulate --help` always explains scenarios and files; running a
//! simulation needs the feature (plotters, the chaos layer, the config loader and tokio's
//! paused clock are not in the CLI's default build, which reuses the demo's).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Arguments of `rampart simulate`.
#[derive(Args, Debug)]
#[command(after_long_help = AFTER_HELP)]
pub(crate) struct SimulateArgs {
    /// A policy to run: a preset (tts, gemini_api, database, redis), or a service of
    /// --config. Repeat to compare; default: every preset.
    #[arg(long = "policy", short = 'p', value_name = "NAME")]
    pub(crate) policies: Vec<String>,
    /// A rampart.toml to take the policies from (presets and the file; the environment is
    /// ignored so that a run is repeatable).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The profile to apply (e.g. production).
    #[arg(long)]
    pub(crate) profile: Option<String>,
    /// A built-in scenario, a scenario file (TOML), or a constant chaos spec.
    #[arg(long, short = 's', default_value = "transient=20%")]
    pub(crate) scenario: String,
    /// Virtual time a built-in scenario runs (a file sets its own).
    #[arg(long, default_value = "300s", value_parser = crate::parse_duration)]
    pub(crate) duration: Duration,
    /// Calls a second a built-in scenario offers (a file sets its own).
    #[arg(long, default_value_t = 100.0, value_parser = parse_rate)]
    pub(crate) rate: f64,
    /// Seeds the chaos and every policy's jitter: the same seed gives the same tables.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Adds a baseline: `naive` is the reference design's plain retry (3 retries, 1 s ×2,
    /// ±10 % jitter, every error retried, Retry-After ignored, no budget, no breaker).
    #[arg(long, value_parser = ["naive"])]
    pub(crate) compare: Vec<String>,
    /// Writes the plot to PREFIX.svg and PREFIX.png.
    #[arg(long, default_value = "rampart-simulate", value_name = "PREFIX")]
    pub(crate) plot: PathBuf,
    /// Writes no plot.
    #[arg(long, conflicts_with = "plot")]
    pub(crate) no_plot: bool,
}

const AFTER_HELP: &str = "\
Runs each policy's real layers (dead letters, retry with budget and deadline, circuit breaker,
attempt timeout) against an upstream whose faults come from a chaos spec, on tokio's paused
clock: minutes of virtual time take about a second. Prints one row per policy and writes a
plot of offered load, upstream attempts, success rate and breaker state over time.

Columns: success % of calls; upstream attempts per call; peak upstream load / offered load
over any 10 s; latency p50/p99 of calls (virtual time, failures included); dead letters by
reason; breaker transitions (and how often it opened).

Built-in scenarios (--duration, default 300s; --rate, default 100 calls/s):
  transient=20%          20 % of calls fail transiently, all the time
  outage                 down from 20 % of the run to its end
  outage-then-recovery   down for 10 % of the run (30 s of 300 s) from 20 %, then healthy
  retry-after-storm      429 with Retry-After: 5s for 20 % of the run, from 20 %
  latency-spike          exp(20ms) latency, 1-3 s for 20 % of the run, from 20 %
  one-key-down           calls spread over keys k0..k9; k3 always fails
  flapping               down 10 s of every 30 s from 20 % of the run to 80 %
Any other text is a constant chaos spec: transient=35%, latency=exp(50ms), throttled=5%,
retry_after=2s, outage=60s+30s, storm=60s+30s@5s, key(k3).transient=100%, permanent=1%.

Scenario file (TOML): offered load and chaos over time; a spec's windows count from the start.
  duration = \"300s\"
  keys = 10                     # calls go round-robin to keys k0..k9
  [[load]]
  at = \"0s\"
  rate = 100                    # calls a second from here on
  [[load]]
  at = \"120s\"
  rate = 300
  [[chaos]]
  at = \"0s\"
  spec = \"transient=2%, latency=exp(20ms)\"
  [[chaos]]
  at = \"60s\"
  spec = \"outage=60s+30s, key(k3).transient=50%\"

Example:
  rampart simulate -p tts -p gemini_api --scenario outage-then-recovery --compare naive --plot docs/simulate";

pub(crate) fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .trim_end_matches("/s")
        .parse()
        .map_err(|_| format!("{s:?} is not a number of calls a second"))?;
    if r > 0.0 && r <= 100_000.0 {
        Ok(r)
    } else {
        Err(format!(
            "{r}: calls a second must be more than 0 and at most 100000"
        ))
    }
}
