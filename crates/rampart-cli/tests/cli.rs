//! The real `rampart` binary against a SQLite store seeded through the library and a private
//! redis-server: every command's happy path, bad inputs with their messages and exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_support;
use cli_support::{rampart, text};

#[path = "../../rampart-dlq/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rampart_dlq::{
    DeadLetterReason, DeadLetterRecord, DeadLetterStore, ListQuery, RecordId, RequestPart,
    SqliteStore,
};

fn record(service: &str, reason: DeadLetterReason, n: u32) -> DeadLetterRecord {
    DeadLetterRecord::new(service, reason)
        .error(format!("503 model is overloaded ({n})"))
        .attempts(4, 4)
        .request(RequestPart {
            summary: format!("tts req-{n}"),
            payload: serde_json::json!({ "n": n }),
        })
}

/// 6 gemini_api records (4 retries_exhausted, 2 circuit_open), 3 database (permanent), and
/// one 40-day-old record.
async fn seed(path: &Path) -> Vec<DeadLetterRecord> {
    let store = SqliteStore::open(path, 1000).unwrap();
    let mut all = Vec::new();
    let mut old = record("database", DeadLetterReason::Permanent, 99);
    old.id = RecordId::lower_bound(SystemTime::now() - Duration::from_secs(40 * 86_400));
    all.push(old);
    for n in 0..4 {
        all.push(record("gemini_api", DeadLetterReason::RetriesExhausted, n));
    }
    for n in 4..6 {
        all.push(record("gemini_api", DeadLetterReason::CircuitOpen, n));
    }
    for n in 6..9 {
        all.push(record("database", DeadLetterReason::Permanent, n));
    }
    for r in &all {
        store.push(r.clone()).await.unwrap();
    }
    all
}

/// `true` if some line of `out` has exactly these whitespace-separated tokens.
fn has_row(out: &str, tokens: &[&str]) -> bool {
    out.lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == tokens)
}

fn jsonl(out: &str) -> Vec<DeadLetterRecord> {
    out.lines()
        .map(|l| DeadLetterRecord::from_json(l.as_bytes()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_on_a_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.sqlite");
    let all = seed(&path).await;
    let store = format!("sqlite:{}", path.display());

    // list: table, filters, formats
    let (out, _, code) = text(&rampart(&store, &["dlq", "list"]));
    assert_eq!(code, 0);
    assert!(out.starts_with("ID "), "{out}");
    assert!(out.contains("10 record(s)"), "{out}");
    for r in &all {
        assert!(out.contains(&r.id.to_string()));
    }
    let (out, _, _) = text(&rampart(
        &store,
        &[
            "dlq",
            "list",
            "--format",
            "jsonl",
            "--service",
            "gemini_api",
            "--reason",
            "circuit_open",
        ],
    ));
    let rs = jsonl(&out);
    assert_eq!(rs.len(), 2);
    assert!(rs
        .iter()
        .all(|r| r.service == "gemini_api" && r.reason == DeadLetterReason::CircuitOpen));
    assert!(rs[0].id > rs[1].id, "newest first");
    let (out, _, _) = text(&rampart(
        &store,
        &[
            "dlq", "list", "--format", "json", "--since", "1h", "--limit", "50",
        ],
    ));
    let rs: Vec<DeadLetterRecord> = serde_json::from_str(&out).unwrap();
    assert_eq!(rs.len(), 9, "the 40-day-old record is older than 1h");
    let (out, _, _) = text(&rampart(
        &store,
        &["dlq", "list", "--format", "jsonl", "--limit", "3"],
    ));
    assert_eq!(jsonl(&out).len(), 3);

    // show
    let (out, _, code) = text(&rampart(&store, &["dlq", "show", &all[3].id.to_string()]));
    assert_eq!(code, 0);
    let shown: DeadLetterRecord = serde_json::from_str(&out).unwrap();
    assert_eq!(shown, all[3]);
    let ghost = RecordId::new().to_string();
    let (_, err, code) = text(&rampart(&store, &["dlq", "show", &ghost]));
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("no dead letter with id {ghost}")),
        "{err}"
    );
    let (_, err, code) = text(&rampart(&store, &["dlq", "show", "not-an-id"]));
    assert_eq!(code, 2);
    assert!(err.contains("invalid record id \"not-an-id\""), "{err}");

    // stats
    let (out, _, code) = text(&rampart(&store, &["dlq", "stats"]));
    assert_eq!(code, 0);
    // The cap is the store's (set by the app that opened it with 1,000), not the CLI's.
    assert!(out.contains("records      10 of 1000 (cap)"), "{out}");
    assert!(
        has_row(&out, &["gemini_api", "retries_exhausted", "4"]),
        "{out}"
    );
    assert!(has_row(&out, &["gemini_api", "circuit_open", "2"]), "{out}");
    assert!(has_row(&out, &["database", "permanent", "4"]), "{out}");

    // requeue: exactly the selected ids
    let (a, b) = (all[1].id.to_string(), all[2].id.to_string());
    let (out, _, code) = text(&rampart(&store, &["dlq", "requeue", &a, &b]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("requeued 2 record(s)"));
    let (_, err, code) = text(&rampart(
        &store,
        &["dlq", "requeue", "--all", "--service", "database"],
    ));
    assert_eq!(
        code, 2,
        "destructive --all without --yes when stdout is a pipe"
    );
    assert!(
        err.contains("refusing to requeue 4 record(s) without --yes"),
        "{err}"
    );
    let (out, _, code) = text(&rampart(
        &store,
        &[
            "dlq",
            "requeue",
            "--all",
            "--service",
            "database",
            "--reason",
            "permanent",
            "--since",
            "1h",
            "--yes",
        ],
    ));
    assert_eq!(code, 0);
    assert!(out.contains("requeued 3 record(s)"), "{out}");
    {
        let s = SqliteStore::open(&path, 1000).unwrap();
        let st = s.stats().await.unwrap();
        assert_eq!((st.records, st.requeued), (5, 5));
        assert!(s.get(all[1].id).await.unwrap().is_none());
        assert!(
            s.get(all[0].id).await.unwrap().is_some(),
            "the old database record was outside --since"
        );
        let requeued: Vec<RecordId> = s
            .take_requeued(10)
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        let mut expect = vec![all[1].id, all[2].id, all[7].id, all[8].id, all[9].id];
        let mut got = requeued.clone();
        expect.sort();
        got.sort();
        assert_eq!(got, expect);
    }

    // delete
    let (_, err, code) = text(&rampart(&store, &["dlq", "delete", &all[3].id.to_string()]));
    assert_eq!(code, 2);
    assert!(err.contains("refusing to delete 1 record(s)"), "{err}");
    let (out, _, code) = text(&rampart(
        &store,
        &["dlq", "delete", &all[3].id.to_string(), "--yes"],
    ));
    assert_eq!((code, out.contains("deleted 1 record(s)")), (0, true));
    let (_, err, code) = text(&rampart(
        &store,
        &["dlq", "delete", &all[3].id.to_string(), "--yes"],
    ));
    assert_eq!(code, 1);
    assert!(err.contains("no dead letter with id"), "{err}");

    // purge: dry run, then for real
    let (out, _, code) = text(&rampart(
        &store,
        &["dlq", "purge", "--older-than", "30d", "--dry-run"],
    ));
    assert_eq!(code, 0);
    assert!(
        out.contains("would purge 1 record(s) older than 30days"),
        "{out}"
    );
    assert!(
        SqliteStore::open(&path, 1000)
            .unwrap()
            .get(all[0].id)
            .await
            .unwrap()
            .is_some(),
        "dry run changes nothing"
    );
    let (_, _, code) = text(&rampart(&store, &["dlq", "purge", "--older-than", "30d"]));
    assert_eq!(code, 2, "a real purge needs --yes on a pipe");
    let (out, _, code) = text(&rampart(
        &store,
        &["dlq", "purge", "--older-than", "30d", "--yes"],
    ));
    assert_eq!(code, 0);
    assert!(out.contains("purged 1 record(s)"), "{out}");
    let (_, err, code) = text(&rampart(
        &store,
        &["dlq", "purge", "--older-than", "a while"],
    ));
    assert_eq!(code, 2);
    assert!(err.contains("is not a duration"), "{err}");

    // export → import round trip
    let (exported, _, code) = text(&rampart(&store, &["dlq", "export"]));
    assert_eq!(code, 0);
    let before = jsonl(&exported);
    assert_eq!(before.len(), 3);
    let dump = dir.path().join("dump.jsonl");
    std::fs::write(&dump, &exported).unwrap();
    let other = format!("sqlite:{}", dir.path().join("other.sqlite").display());
    let (out, _, code) = text(&rampart(&other, &["dlq", "import", dump.to_str().unwrap()]));
    assert_eq!(code, 0);
    assert!(
        out.contains("imported 3 new record(s), 0 already present"),
        "{out}"
    );
    let (out, _, _) = text(&rampart(&other, &["dlq", "import", dump.to_str().unwrap()]));
    assert!(
        out.contains("imported 0 new record(s), 3 already present"),
        "idempotent on id: {out}"
    );
    let (again, _, _) = text(&rampart(&other, &["dlq", "export"]));
    assert_eq!(jsonl(&again), before, "identical records");
    std::fs::write(&dump, "{\"not\":\"a record\"}\n").unwrap();
    let (_, err, code) = text(&rampart(&other, &["dlq", "import", dump.to_str().unwrap()]));
    assert_eq!(code, 1);
    assert!(err.contains("line 1: not a dead-letter record"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_stores_get_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let (_, err, code) = text(&rampart(
        &format!("sqlite:{}", dir.path().join("none").display()),
        &["dlq", "list"],
    ));
    assert_eq!(code, 1);
    assert!(
        err.starts_with("rampart: error: no dead-letter store at"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
    let bad = dir.path().join("corrupt.sqlite");
    std::fs::write(&bad, "this is not a database, not even close to one").unwrap();
    let (_, err, code) = text(&rampart(
        &format!("sqlite:{}", bad.display()),
        &["dlq", "stats"],
    ));
    assert_eq!(code, 1);
    assert!(
        err.contains("file is not a database") && err.contains("corrupt.sqlite"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
    // The retired journal store is answered with what to use instead.
    let (_, err, code) = text(&rampart(
        &format!("file:{}", dir.path().join("dlq.journal").display()),
        &["dlq", "list"],
    ));
    assert_eq!(code, 1);
    assert!(
        err.contains("retired in favour of SQLite") && err.contains("--store sqlite:PATH"),
        "{err}"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_, err, code) = text(&rampart(
        &format!("redis://127.0.0.1:{port}/0"),
        &["dlq", "list"],
    ));
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach Redis"), "{err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"));
    let (_, err, code) = text(&rampart("sqlite:x", &["dlq", "list", "--reason", "sad"]));
    assert_eq!(code, 2);
    assert!(err.contains("unknown reason \"sad\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_list_import_and_requeue() {
    let Some(server) = support::RedisServer::start() else {
        return support::skip("redis-server is not installed");
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.sqlite");
    let all = seed(&path).await;
    let (exported, _, _) = text(&rampart(
        &format!("sqlite:{}", path.display()),
        &["dlq", "export"],
    ));
    let dump = dir.path().join("dump.jsonl");
    std::fs::write(&dump, exported).unwrap();
    let redis = format!("{}#clitest", server.url());
    let (out, err, code) = text(&rampart(&redis, &["dlq", "import", dump.to_str().unwrap()]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("imported 10 new record(s)"), "{out}");
    let (out, _, _) = text(&rampart(&redis, &["dlq", "list", "--format", "jsonl"]));
    assert_eq!(jsonl(&out).len(), 10);
    let (out, _, code) = text(&rampart(
        &redis,
        &["dlq", "requeue", &all[5].id.to_string()],
    ));
    assert_eq!(code, 0);
    assert!(out.contains("requeued 1"));
    let store = rampart_dlq::RedisStore::connect(&server.url(), "clitest", 1000)
        .await
        .unwrap();
    let st = store.stats().await.unwrap();
    assert_eq!((st.records, st.requeued), (9, 1));
    let (out, _, _) = text(&rampart(&redis, &["dlq", "stats"]));
    assert!(out.contains("records      9"), "{out}");
    let _ = store.list(ListQuery::newest(1)).await.unwrap();
}

/// A loopback HTTP target for `dlq redrive`: `401` without an `x-goog-api-key` header,
/// otherwise `200` after `delay`; it counts the requests it answered with `200` and the most
/// it held at once.
#[derive(Clone)]
struct Target {
    addr: std::net::SocketAddr,
    ok: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    most_in_flight: Arc<AtomicUsize>,
}

impl Target {
    async fn start(delay: Duration) -> Target {
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let t = Target {
            addr: listener.local_addr().unwrap(),
            ok: Arc::default(),
            in_flight: Arc::default(),
            most_in_flight: Arc::default(),
        };
        let state = t.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move {
                            let status = if req.headers().contains_key("x-goog-api-key") {
                                let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                                state.most_in_flight.fetch_max(now, Ordering::SeqCst);
                                tokio::time::sleep(delay).await;
                                state.in_flight.fetch_sub(1, Ordering::SeqCst);
                                state.ok.fetch_add(1, Ordering::SeqCst);
                                200
                            } else {
                                401
                            };
                            http::Response::builder()
                                .status(status)
                                .body(http_body_util::Full::new(bytes::Bytes::new()))
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        t
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// `n` HTTP records for `gemini_api` (recorded against a host that is gone, the api key
/// redacted) and one non-HTTP `database` record, in a fresh SQLite file.
async fn seed_http(path: &Path, n: usize) {
    use rampart_dlq::{Extract, HttpExtractor};
    let store = SqliteStore::open(path, 1000).unwrap();
    let x = HttpExtractor::default()
        .keep_header("content-type")
        .keep_header("x-goog-api-key");
    for i in 0..n {
        let req = http::Request::post("http://old-host.invalid:9/v1beta/models/m:generateContent")
            .header("content-type", "application/json")
            .header("x-goog-api-key", "secret-key")
            .body(bytes::Bytes::from(format!(r#"{{"text":"hello {i}"}}"#)))
            .unwrap();
        store
            .push(
                DeadLetterRecord::new("gemini_api", DeadLetterReason::RetriesExhausted)
                    .request(x.extract(&req)),
            )
            .await
            .unwrap();
    }
    store
        .push(record("database", DeadLetterReason::Permanent, 1))
        .await
        .unwrap();
}

/// Puts a test api key back into every HTTP record (it was redacted when recorded).
async fn restore_keys(path: &Path) {
    let s = SqliteStore::open(path, 1000).unwrap();
    for mut r in s.list(ListQuery::newest(100)).await.unwrap().records {
        if let Some(h) = r
            .request
            .payload
            .get_mut("headers")
            .and_then(|h| h.as_object_mut())
        {
            h.insert("x-goog-api-key".into(), serde_json::json!("test-key"));
            s.replace(r).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_replays_http_records_against_a_target() {
    let server = Target::start(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.sqlite");
    seed_http(&path, 4).await;
    let store = format!("sqlite:{}", path.display());
    // The api key was redacted when recorded, so the server refuses the replay: every HTTP
    // record fails again (and is kept, its redrive count bumped, the reason shown); the
    // non-HTTP one is skipped.
    let (out, err, code) = text(&rampart(
        &store,
        &[
            "dlq",
            "redrive",
            "--target",
            &server.base_url(),
            "--rate",
            "100/s",
            "--retries",
            "0",
        ],
    ));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        has_row(&out, &["failed", "again", "4"]) && has_row(&out, &["skipped", "1"]),
        "{out}"
    );
    let why: Vec<&str> = out
        .lines()
        .filter(|l| l.ends_with("HTTP 401 Unauthorized"))
        .collect();
    assert_eq!(why.len(), 4, "each failed record says why: {out}");
    let (out, _, _) = text(&rampart(
        &store,
        &[
            "dlq",
            "list",
            "--format",
            "jsonl",
            "--service",
            "gemini_api",
        ],
    ));
    assert!(jsonl(&out).iter().all(|r| r.redrive_count == 1));
    // With the key back, the same records replay fine.
    restore_keys(&path).await;
    let (out, err, code) = text(&rampart(
        &store,
        &[
            "dlq",
            "redrive",
            "--target",
            &server.base_url(),
            "--service",
            "gemini_api",
        ],
    ));
    assert_eq!(code, 0, "{out}{err}");
    assert!(has_row(&out, &["redriven", "4"]), "{out}");
    let (out, _, _) = text(&rampart(&store, &["dlq", "list", "--format", "jsonl"]));
    assert_eq!(jsonl(&out).len(), 1, "only the non-HTTP record is left");
    assert_eq!(server.ok.load(Ordering::SeqCst), 4);
    let (_, err, code) = text(&rampart(
        &store,
        &["dlq", "redrive", "--target", "not a url"],
    ));
    assert_eq!(code, 2);
    assert!(err.contains("is not a base URL"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_says_why_a_connection_failed_without_the_targets_password() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.sqlite");
    seed_http(&path, 2).await;
    restore_keys(&path).await;
    let store = format!("sqlite:{}", path.display());
    let target = format!("http://admin:hunter2@127.0.0.1:{port}");
    let (out, err, code) = text(&rampart(
        &store,
        &["dlq", "redrive", "--target", &target, "--retries", "0"],
    ));
    assert_eq!(code, 1, "{out}{err}");
    assert!(has_row(&out, &["failed", "again", "2"]), "{out}");
    let reasons: Vec<&str> = out
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("connection refused"))
        .collect();
    assert_eq!(reasons.len(), 2, "the connection error is kept: {out}");
    assert!(
        !out.contains("hunter2") && !err.contains("hunter2"),
        "{out}{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_keeps_at_most_concurrency_requests_in_flight() {
    // Each request takes 300 ms: one at a time, 8 records could not go faster than
    // 3.3 records/s whatever --rate says; four at once reach the rate's order.
    let server = Target::start(Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.sqlite");
    seed_http(&path, 8).await;
    restore_keys(&path).await;
    let store = format!("sqlite:{}", path.display());
    let started = std::time::Instant::now();
    let (out, err, code) = text(&rampart(
        &store,
        &[
            "dlq",
            "redrive",
            "--target",
            &server.base_url(),
            "--service",
            "gemini_api",
            "--rate",
            "1000/s",
            "--concurrency",
            "4",
        ],
    ));
    let took = started.elapsed();
    assert_eq!(code, 0, "{out}{err}");
    assert!(has_row(&out, &["redriven", "8"]), "{out}");
    assert_eq!(
        server.most_in_flight.load(Ordering::SeqCst),
        4,
        "four requests in flight at once, never more"
    );
    assert!(
        took < Duration::from_millis(8 * 300),
        "took {took:?}: no faster than one at a time"
    );
    let (_, err, code) = text(&rampart(
        &store,
        &[
            "dlq",
            "redrive",
            "--target",
            &server.base_url(),
            "--concurrency",
            "0",
        ],
    ));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--concurrency"), "{err}");
}
