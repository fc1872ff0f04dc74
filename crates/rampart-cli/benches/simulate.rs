//! Wall time of `rampart simulate`: 300 virtual seconds at 100 calls/s (30,000 calls through
//! the real layers), one policy, as a real process. The goal is under 10 s in release; run
//! `cargo bench -p rampart-cli --features simulate --bench simulate`. Prints the times; fails nothing (a shared
//! machine's wall time is noisy).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::{Command, Stdio};
use std::time::Instant;

fn main() {
    for scenario in ["transient=20%", "outage-then-recovery", "flapping"] {
        let mut times = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let o = Command::new(env!("CARGO_BIN_EXE_rampart"))
                .args(["simulate", "-p", "gemini_api", "--scenario", scenario])
                .args(["--duration", "300s", "--rate", "100", "--no-plot"])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        println!(
            "simulate {scenario:<22} 300 virtual s x 100 calls/s, 1 policy: best {:.2} s, median {:.2} s (goal < 10 s)",
            times[0], times[1]
        );
    }
}
