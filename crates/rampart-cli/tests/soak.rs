//! The app and the CLI on one SQLite store at the same time, as real processes: an app (this
//! test binary re-exec'd) dead-letters failed calls through a `DeadLetterLayer` and prints each
//! call's sequence number once the call returned (the record is then acknowledged), while the
//! real `rampart` binary lists, deletes, requeues, exports, imports and purges on the same file.
//! At the end every acknowledged record is present exactly once — unless the CLI deleted it
//! (then it is gone) or requeued it (then it is in the retry queue, once) — and every record the
//! CLI imported as 40 days old is purged. The second test SIGKILLs the app at random points.
//!
//! `RAMPART_SOAK_SECS` sets how long the CLI runs against the app (default 30 s and 12 s).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_support;
use cli_support::rampart_ok as rampart;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rampart_core::classify::IoErrors;
use rampart_dlq::{
    DeadLetterLayer, DeadLetterReason, DeadLetterRecord, DeadLetterStore, ListQuery, RecordId,
    RequestPart, SqliteStore,
};
use tower::{service_fn, Layer, ServiceExt};

const APP_ENV: &str = "RAMPART_SOAK_APP";
const STOP_ENV: &str = "RAMPART_SOAK_STOP";

/// Not a test of its own: the app process. Eight callers make failing calls through a
/// `DeadLetterLayer` on the SQLite store and print `ACK <seq>` once a call returned, until the
/// stop file appears.
#[test]
fn soak_app() {
    let Ok(path) = std::env::var(APP_ENV) else {
        return;
    };
    let stop = PathBuf::from(std::env::var(STOP_ENV).unwrap());
    let base: u64 = std::env::var("RAMPART_SOAK_BASE").unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = SqliteStore::open(&path, 1_000_000).unwrap();
        let layer = DeadLetterLayer::new(
            rampart_dlq::DeadLetterConfig::builder()
                .classifier(IoErrors)
                .name("soak")
                .build()
                .unwrap(),
            store,
        );
        let svc = layer.layer(service_fn(|_seq: u64| async {
            Err::<(), _>(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
        }));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        for caller in 0..8u64 {
            let svc = svc.clone();
            let tx = tx.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                for n in 0u64.. {
                    if n % 16 == 0 && stop.exists() {
                        break;
                    }
                    let seq = base + caller * 100_000_000 + n;
                    if svc.clone().oneshot(seq).await.is_err() {
                        let _ = tx.send(seq);
                    }
                }
            });
        }
        drop(tx);
        let mut out = std::io::stdout().lock();
        while let Some(seq) = rx.recv().await {
            writeln!(out, "ACK {seq}").unwrap();
            out.flush().unwrap();
        }
    });
}

fn secs(default: u64) -> Duration {
    Duration::from_secs(
        std::env::var("RAMPART_SOAK_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default),
    )
}

/// The app process and the thread collecting what it acknowledged.
struct App {
    child: Child,
    reader: std::thread::JoinHandle<()>,
}

fn start_app(path: &Path, stop: &Path, base: u64, acked: &Arc<Mutex<HashSet<u64>>>) -> App {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["soak_app", "--exact", "--nocapture", "--test-threads=1"])
        .env(APP_ENV, path)
        .env(STOP_ENV, stop)
        .env("RAMPART_SOAK_BASE", base.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let acked = acked.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(seq) = line
                .strip_prefix("ACK ")
                .and_then(|s| s.trim().parse().ok())
            {
                acked.lock().unwrap().insert(seq);
            }
        }
    });
    App { child, reader }
}

/// Waits until the app acknowledged `n` records in all (so the store exists and the app is
/// writing before the CLI starts on it).
fn wait_for_acks(acked: &Arc<Mutex<HashSet<u64>>>, n: usize) {
    let give_up = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < n {
        assert!(
            Instant::now() < give_up,
            "the app acknowledged nothing in 60 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl App {
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.reader.join().unwrap();
    }

    fn stop(mut self, stop: &Path) {
        std::fs::write(stop, b"stop").unwrap();
        let status = self.child.wait().unwrap();
        self.reader.join().unwrap();
        std::fs::remove_file(stop).unwrap();
        assert!(status.success(), "the app failed: {status}");
    }
}

fn seq_of(r: &DeadLetterRecord) -> Option<u64> {
    r.request.payload.as_u64()
}

/// What the CLI did, to check the store against at the end.
#[derive(Default)]
struct CliLog {
    deleted: HashSet<u64>,
    requeued: HashSet<u64>,
    old_imported: usize,
    commands: usize,
}

/// One round of operator commands against the live store.
fn cli_round(store: &str, round: usize, dir: &Path, log: &mut CliLog) {
    let out = rampart(
        store,
        &[
            "dlq",
            "list",
            "--service",
            "soak",
            "--limit",
            "6",
            "--format",
            "jsonl",
        ],
    );
    let listed: Vec<DeadLetterRecord> = out
        .lines()
        .map(|l| DeadLetterRecord::from_json(l.as_bytes()).unwrap())
        .collect();
    log.commands += 1;
    if listed.len() >= 3 {
        let del: Vec<String> = listed[..2].iter().map(|r| r.id.to_string()).collect();
        rampart(store, &["dlq", "delete", &del[0], &del[1], "--yes"]);
        for r in &listed[..2] {
            log.deleted.insert(seq_of(r).unwrap());
        }
        rampart(
            store,
            &["dlq", "requeue", &listed[2].id.to_string(), "--yes"],
        );
        log.requeued.insert(seq_of(&listed[2]).unwrap());
        log.commands += 2;
    }
    match round % 4 {
        0 => {
            // Old records arrive by import and leave by purge.
            let file = dir.join(format!("old-{round}.jsonl"));
            let mut lines = String::new();
            let then = SystemTime::now() - Duration::from_secs(40 * 86_400);
            for n in 0..20u64 {
                let mut r = DeadLetterRecord::new("old", DeadLetterReason::Permanent).request(
                    RequestPart {
                        summary: format!("old {round}/{n}"),
                        payload: serde_json::json!(n),
                    },
                );
                let mut bytes = *RecordId::lower_bound(then).as_bytes();
                bytes[6..14].copy_from_slice(&((round as u64) << 32 | n).to_be_bytes());
                r.id = RecordId::from_bytes(bytes);
                lines.push_str(&String::from_utf8(r.to_json().unwrap()).unwrap());
                lines.push('\n');
            }
            std::fs::write(&file, lines).unwrap();
            rampart(store, &["dlq", "import", file.to_str().unwrap()]);
            log.old_imported += 20;
            rampart(store, &["dlq", "purge", "--older-than", "30d", "--yes"]);
            log.commands += 2;
        }
        1 => {
            // Export and import the newest records back: duplicates change nothing.
            let out = rampart(
                store,
                &["dlq", "export", "--service", "soak", "--limit", "50"],
            );
            let file = dir.join(format!("export-{round}.jsonl"));
            std::fs::write(&file, &out).unwrap();
            rampart(store, &["dlq", "import", file.to_str().unwrap()]);
            log.commands += 2;
        }
        2 => {
            rampart(store, &["dlq", "stats"]);
            log.commands += 1;
        }
        _ => {
            rampart(
                store,
                &[
                    "dlq",
                    "list",
                    "--reason",
                    "retries_exhausted",
                    "--since",
                    "1h",
                    "--limit",
                    "3",
                ],
            );
            log.commands += 1;
        }
    }
}

/// Every acknowledged record is where the CLI's actions say it must be, exactly once.
fn check(path: &Path, acked: &HashSet<u64>, log: &CliLog) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = SqliteStore::open_existing(path).unwrap();
        let mut held: HashMap<u64, usize> = HashMap::new();
        let mut old_left = 0;
        let mut q = ListQuery::newest(5_000);
        loop {
            let page = store.list(q.clone()).await.unwrap();
            assert!(page.unreadable.is_empty(), "{:?}", page.unreadable);
            for r in &page.records {
                if r.service == "old" {
                    old_left += 1;
                } else {
                    *held.entry(seq_of(r).unwrap()).or_default() += 1;
                }
            }
            match page.next {
                Some(n) => q.before = Some(n),
                None => break,
            }
        }
        let queued = store.take_requeued(usize::MAX).await.unwrap();
        let mut in_queue: HashMap<u64, usize> = HashMap::new();
        for r in &queued {
            *in_queue.entry(seq_of(r).unwrap()).or_default() += 1;
        }
        assert_eq!(old_left, 0, "every imported 40-day-old record was purged");
        for seq in acked {
            let (h, q) = (
                held.get(seq).copied().unwrap_or(0),
                in_queue.get(seq).copied().unwrap_or(0),
            );
            if log.deleted.contains(seq) {
                assert_eq!((h, q), (0, 0), "record {seq} was deleted by the CLI and is back");
            } else if log.requeued.contains(seq) {
                assert_eq!((h, q), (0, 1), "record {seq} was requeued by the CLI");
            } else {
                assert_eq!((h, q), (1, 0), "acknowledged record {seq} is not held exactly once");
            }
        }
        for (seq, n) in held.iter().chain(in_queue.iter()) {
            assert_eq!(*n, 1, "record {seq} is stored {n} times");
        }
        eprintln!(
            "{} acknowledged; CLI ran {} commands: {} deleted, {} requeued, {} old imported and purged; {} records held",
            acked.len(),
            log.commands,
            log.deleted.len(),
            log.requeued.len(),
            log.old_imported,
            held.len()
        );
    });
}

#[test]
fn app_and_cli_share_one_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.sqlite");
    let stop = dir.path().join("stop");
    let spec = format!("sqlite:{}", path.display());
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let app = start_app(&path, &stop, 0, &acked);
    wait_for_acks(&acked, 1);
    let mut log = CliLog::default();
    let end = Instant::now() + secs(30);
    let mut round = 0;
    while Instant::now() < end {
        cli_round(&spec, round, dir.path(), &mut log);
        round += 1;
    }
    app.stop(&stop);
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 1_000,
        "the app acknowledged only {}",
        acked.len()
    );
    assert!(
        log.deleted.len() >= 8,
        "the CLI deleted only {}",
        log.deleted.len()
    );
    check(&path, &acked, &log);
}

#[test]
fn app_killed_at_random_points_while_the_cli_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.sqlite");
    let stop = dir.path().join("stop");
    let spec = format!("sqlite:{}", path.display());
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let mut log = CliLog::default();
    let per_life = secs(12) / 4;
    let mut round = 0;
    let mut seed = std::process::id() as u64;
    for life in 0..4u64 {
        let before = acked.lock().unwrap().len();
        let app = start_app(&path, &stop, life * 1_000_000_000, &acked);
        wait_for_acks(&acked, before + 1);
        // SIGKILL after a random share of this life's time; the CLI works meanwhile.
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let kill_at = Instant::now()
            + per_life.mul_f64(0.3 + (seed >> 40) as f64 / (1u64 << 24) as f64 * 0.7);
        while Instant::now() < kill_at {
            cli_round(&spec, round, dir.path(), &mut log);
            round += 1;
        }
        if life == 3 {
            app.stop(&stop);
        } else {
            app.kill();
        }
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 500,
        "the app acknowledged only {}",
        acked.len()
    );
    check(&path, &acked, &log);
}
