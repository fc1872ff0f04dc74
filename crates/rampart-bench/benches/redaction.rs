//! Throughput of the default [`Redactor`] over ~1 MiB bodies (the default record cap), the
//! work the dead-letter layer does once per dead letter, on the failure path only:
//!
//! - `json`: a Gemini-shaped request of 2,000 text parts and one secret field;
//! - `form`: 40,000 `fieldN=valueN&` pairs (every pair is a name/value candidate);
//! - `binary`: 1 MiB of pseudo-random bytes;
//! - `prose`: English sentences with no secret.
//!
//! Run with `cargo bench -p rampart-bench --bench redaction`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rampart::dlq::Redactor;

fn bodies() -> Vec<(&'static str, Vec<u8>)> {
    let padding = "padding ".repeat(45);
    let parts: Vec<String> = (0..2000)
        .map(|i| {
            format!(
                r#"{{"parts":[{{"text":"sentence number {i} of a long request, nothing secret here at all; {padding}"}}]}}"#
            )
        })
        .collect();
    let json = format!(r#"{{"contents":[{}],"api_key":"k"}}"#, parts.join(",")).into_bytes();
    let form: Vec<u8> = (0..40_000)
        .map(|i| format!("field{i}=value{i}&"))
        .collect::<String>()
        .into_bytes();
    let binary: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let prose: Vec<u8> =
        "The quick brown fox jumps over the lazy dog. Error: upstream said no; retry later. "
            .repeat(13_000)
            .into_bytes();
    vec![
        ("json", json),
        ("form", form),
        ("binary", binary),
        ("prose", prose),
    ]
}

fn redaction(c: &mut Criterion) {
    let r = Redactor::default();
    let mut g = c.benchmark_group("redaction");
    g.sample_size(20);
    for (label, body) in bodies() {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(label, |b| b.iter(|| black_box(r.body(black_box(&body)))));
    }
    g.finish();
}

criterion_group!(benches, redaction);
criterion_main!(benches);
