//! The real `rampart` binary under hostile arguments and input (issue 11): no panic, no
//! wrong count, no unbounded read.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_support;
use cli_support::{rampart, text};

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use rampart_dlq::{DeadLetterReason, DeadLetterRecord, DeadLetterStore, RequestPart, SqliteStore};

fn record(n: usize, summary_len: usize) -> DeadLetterRecord {
    DeadLetterRecord::new("gemini_api", DeadLetterReason::RetriesExhausted)
        .error("503 model is overloaded")
        .request(RequestPart {
            summary: "s".repeat(summary_len),
            payload: serde_json::json!({ "n": n }),
        })
}

async fn seed(path: &Path, n: usize) {
    let store = SqliteStore::open(path, 1000).unwrap();
    for i in 0..n {
        store.push(record(i, 10)).await.unwrap();
    }
}

#[tokio::test]
async fn a_rate_of_two_billion_a_second_is_a_usage_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.sqlite");
    seed(&path, 1).await;
    let store = format!("sqlite:{}", path.display());
    let (_, err, code) = text(&rampart(
        &store,
        &[
            "dlq",
            "redrive",
            "--target",
            "http://127.0.0.1:9",
            "--rate",
            "2000000000/s",
        ],
    ));
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--rate"), "{err}");
    assert!(err.contains("at most 1000000/s"), "{err}");
}

#[tokio::test]
async fn endless_retries_are_a_usage_error() {
    // `--retries 4294967295` against a dead target retried one record for ever (the retry
    // budget's floor of 10 retries a second never runs out).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.sqlite");
    seed(&path, 0).await;
    let store = format!("sqlite:{}", path.display());
    let (_, err, code) = text(&rampart(
        &store,
        &[
            "dlq",
            "redrive",
            "--target",
            "http://127.0.0.1:9",
            "--retries",
            "4294967295",
        ],
    ));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--retries"), "{err}");
}

#[tokio::test]
async fn limit_zero_is_a_usage_error_and_requeues_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.sqlite");
    seed(&path, 3).await;
    let store = format!("sqlite:{}", path.display());
    for args in [
        &["dlq", "list", "--limit", "0"][..],
        &["dlq", "export", "--limit", "0"][..],
        &["dlq", "requeue", "--all", "--limit", "0", "--yes"][..],
    ] {
        let (out, err, code) = text(&rampart(&store, args));
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains("--limit"), "{args:?}: {err}");
        assert!(err.contains("at least 1"), "{args:?}: {err}");
    }
    let st = SqliteStore::open(&path, 1000)
        .unwrap()
        .stats()
        .await
        .unwrap();
    assert_eq!((st.records, st.requeued), (3, 0), "nothing was requeued");
    // A limit of one still means one.
    let (out, _, code) = text(&rampart(
        &store,
        &["dlq", "list", "--format", "jsonl", "--limit", "1"],
    ));
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1);
}

#[tokio::test]
async fn import_refuses_a_line_over_the_cap_by_its_number() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    {
        let mut f = std::fs::File::create(&input).unwrap();
        f.write_all(&record(0, 10).to_json().unwrap()).unwrap();
        f.write_all(b"\n\n").unwrap();
        // A well-formed record whose line is 3 MiB: the old import took it whole.
        f.write_all(&record(1, 3 * 1024 * 1024).to_json().unwrap())
            .unwrap();
        f.write_all(b"\n").unwrap();
    }
    let path = dir.path().join("dlq.sqlite");
    let store = format!("sqlite:{}", path.display());
    let (out, err, code) = text(&rampart(
        &store,
        &["dlq", "import", input.to_str().unwrap()],
    ));
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("longer than 2097152 bytes"), "{err}");
    let st = SqliteStore::open(&path, 1000)
        .unwrap()
        .stats()
        .await
        .unwrap();
    assert_eq!(st.records, 1, "the line before the long one was imported");
}

#[tokio::test]
async fn import_of_a_100_mb_line_stops_at_the_cap() {
    // 100 MB without a newline, from stdin: refused after 2 MiB + 1 bytes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.sqlite");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .arg("--store")
        .arg(format!("sqlite:{}", path.display()))
        .args(["dlq", "import", "-"])
        .env_remove("RAMPART_DLQ_STORE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'{'; 1 << 20];
        let mut written = 0usize;
        for _ in 0..100 {
            // The binary stops reading (and exits) at the cap: the pipe then breaks.
            if stdin.write_all(&chunk).is_err() {
                break;
            }
            written += chunk.len();
        }
        written
    });
    let out = child.wait_with_output().unwrap();
    let written = writer.join().unwrap();
    let (_, err, code) = text(&out);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("- line 1: longer than"), "{err}");
    assert!(
        written < 100 << 20,
        "the binary exited before the whole line was sent ({written} bytes)"
    );
}
