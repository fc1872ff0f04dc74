//! The same operator session — import, list with filters, stats, requeue, delete, purge —
//! against every store the CLI opens: SQLite, PostgreSQL and Redis, as the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_support;
use cli_support::{rampart, rampart_ok as ok};

#[path = "../../rampart-dlq/tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, SystemTime};

use rampart_dlq::{
    DeadLetterReason, DeadLetterRecord, DeadLetterStore, PostgresStore, RecordId, RedisStore,
};

fn ids(jsonl: &str) -> Vec<RecordId> {
    jsonl
        .lines()
        .map(|l| DeadLetterRecord::from_json(l.as_bytes()).unwrap().id)
        .collect()
}

/// One session; `store` must be empty.
fn session(store: &str, dir: &std::path::Path) {
    let mut records = Vec::new();
    let mut old = DeadLetterRecord::new("database", DeadLetterReason::Permanent);
    old.id = RecordId::lower_bound(SystemTime::now() - Duration::from_secs(40 * 86_400));
    records.push(old);
    for n in 0..6 {
        let reason = if n < 4 {
            DeadLetterReason::RetriesExhausted
        } else {
            DeadLetterReason::CircuitOpen
        };
        records.push(DeadLetterRecord::new("gemini_api", reason).error(format!("503 ({n})")));
    }
    let file = dir.join("in.jsonl");
    let lines: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8(r.to_json().unwrap()).unwrap())
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();

    let out = ok(store, &["dlq", "import", file.to_str().unwrap()]);
    assert!(
        out.contains("imported 7 new record(s), 0 already present"),
        "{store}: {out}"
    );
    let out = ok(store, &["dlq", "import", file.to_str().unwrap()]);
    assert!(
        out.contains("imported 0 new record(s), 7 already present"),
        "{store}: {out}"
    );

    let newest_first: Vec<RecordId> = records[1..].iter().rev().map(|r| r.id).collect();
    let listed = ids(&ok(
        store,
        &[
            "dlq",
            "list",
            "--service",
            "gemini_api",
            "--format",
            "jsonl",
        ],
    ));
    assert_eq!(
        listed, newest_first,
        "{store}: service filter, newest first"
    );
    let listed = ids(&ok(
        store,
        &[
            "dlq",
            "list",
            "--reason",
            "circuit_open",
            "--limit",
            "1",
            "--format",
            "jsonl",
        ],
    ));
    assert_eq!(listed, [records[6].id], "{store}: reason filter and limit");
    let listed = ids(&ok(
        store,
        &["dlq", "list", "--since", "1d", "--format", "jsonl"],
    ));
    assert_eq!(
        listed.len(),
        6,
        "{store}: since filter leaves out the 40-day-old record"
    );

    ok(
        store,
        &["dlq", "requeue", &records[1].id.to_string(), "--yes"],
    );
    ok(
        store,
        &["dlq", "delete", &records[2].id.to_string(), "--yes"],
    );
    let out = ok(store, &["dlq", "purge", "--older-than", "30d", "--yes"]);
    assert!(out.contains("purged 1 record(s)"), "{store}: {out}");
    let left = ids(&ok(store, &["dlq", "list", "--format", "jsonl"]));
    assert_eq!(
        left.len(),
        4,
        "{store}: 7 imported − requeued − deleted − purged"
    );
    let stats = ok(store, &["dlq", "stats"]);
    assert!(stats.contains("requeued"), "{store}: {stats}");
}

#[test]
fn sqlite_session() {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("sqlite:{}", dir.path().join("dlq.sqlite").display());
    session(&spec, dir.path());
}

#[test]
fn postgres_session() {
    let url = support::postgres_url();
    let prefix = format!("cli_session_{}", std::process::id());
    let spec = format!("{url}#{prefix}");
    let probe = rampart(&spec, &["dlq", "stats"]);
    if !probe.status.success() {
        return support::skip(&format!(
            "PostgreSQL is not reachable at {url}: {}",
            String::from_utf8_lossy(&probe.stderr)
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    session(&spec, dir.path());
    let _ = Command::new("psql")
        .args([&url, "-qc"])
        .arg(format!(
            "drop table if exists {prefix}_records, {prefix}_retry_queue, {prefix}_meta"
        ))
        .output();
}

#[test]
fn redis_session() {
    let spec = format!(
        "redis://127.0.0.1:6379/0#cli-session-{}",
        std::process::id()
    );
    let probe = rampart(&spec, &["dlq", "stats"]);
    if !probe.status.success() {
        return support::skip(&format!(
            "Redis is not reachable: {}",
            String::from_utf8_lossy(&probe.stderr)
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    session(&spec, dir.path());
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "redis-cli -h 127.0.0.1 -p 6379 --scan --pattern '*cli-session-{}*' | xargs -r redis-cli -h 127.0.0.1 -p 6379 del",
            std::process::id()
        ))
        .output();
}

/// The app opened `spec`'s store (`app`, through `rt`) with a cap of 3 and pushed 2 records;
/// the CLI, which sets no cap, shows the app's and its import evicts by it.
fn the_apps_cap_is_shown_and_kept<S: DeadLetterStore>(
    spec: &str,
    rt: &tokio::runtime::Runtime,
    app: &S,
    dir: &std::path::Path,
) {
    rt.block_on(async {
        for n in 0..2 {
            let r = DeadLetterRecord::new("billing", DeadLetterReason::Permanent)
                .error(format!("app {n}"));
            app.push(r).await.unwrap();
        }
    });
    let stats = ok(spec, &["dlq", "stats"]);
    assert!(
        stats.contains("records      2 of 3 (cap), 0 evicted"),
        "{spec}: {stats}"
    );
    let lines: Vec<String> = (0..3)
        .map(|n| {
            let r = DeadLetterRecord::new("billing", DeadLetterReason::Permanent)
                .error(format!("imported {n}"));
            String::from_utf8(r.to_json().unwrap()).unwrap()
        })
        .collect();
    let file = dir.join("more.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = ok(spec, &["dlq", "import", file.to_str().unwrap()]);
    assert!(out.contains("imported 3 new record(s)"), "{spec}: {out}");
    let stats = ok(spec, &["dlq", "stats"]);
    assert!(
        stats.contains("records      3 of 3 (cap), 2 evicted"),
        "{spec}: the CLI's pushes evict by the app's cap: {stats}"
    );
    let app_sees = rt.block_on(app.stats()).unwrap();
    assert_eq!((app_sees.records, app_sees.max_size), (3, 3));
}

#[test]
fn postgres_stats_show_the_apps_cap() {
    let url = support::postgres_url();
    let prefix = format!("cli_cap_{}", std::process::id());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Ok(app) = rt.block_on(PostgresStore::connect(&url, &prefix, 3)) else {
        return support::skip(&format!("PostgreSQL is not reachable at {url}"));
    };
    let dir = tempfile::tempdir().unwrap();
    the_apps_cap_is_shown_and_kept(&format!("{url}#{prefix}"), &rt, &app, dir.path());
    drop(app);
    let _ = Command::new("psql")
        .args([&url, "-qc"])
        .arg(format!(
            "drop table if exists {prefix}_records, {prefix}_retry_queue, {prefix}_meta"
        ))
        .output();
}

#[test]
fn redis_stats_show_the_apps_cap() {
    let url = "redis://127.0.0.1:6379/0";
    let prefix = format!("cli-cap-{}", std::process::id());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Ok(app) = rt.block_on(RedisStore::connect(url, &prefix, 3)) else {
        return support::skip("Redis is not reachable at 127.0.0.1:6379");
    };
    let dir = tempfile::tempdir().unwrap();
    the_apps_cap_is_shown_and_kept(&format!("{url}#{prefix}"), &rt, &app, dir.path());
    drop(app);
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "redis-cli -h 127.0.0.1 -p 6379 --scan --pattern '*{prefix}*' | xargs -r redis-cli -h 127.0.0.1 -p 6379 del"
        ))
        .output();
}
