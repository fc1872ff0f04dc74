//! `rampart`: inspect, requeue, redrive and purge dead letters; simulate policies against
//! injected faults (`rampart simulate`).
//!
//! Exit codes: 0 success, 1 the operation failed (an unknown id, an unreachable store, a
//! corrupt store, a failed redrive), 2 a usage error (a bad flag or value, or a destructive
//! command without `--yes` when stdout is not a terminal).
//!
//! JSON output (`--format json`, `--format jsonl`, `show`, `export`) is the stored
//! `DeadLetterRecord` as serialised by `rampart-dlq` (format version 1): `version`, `id`,
//! `service`, `reason`, `classification`, `error`, `attempts`, `max_attempts`,
//! `first_attempt_at`, `last_attempt_at`, `redrive_count`, `request { summary, payload }`.

#[cfg(feature = "simulate")]
mod simulate;
mod simulate_args;
mod store;

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rampart_dlq::{
    DeadLetterReason, DeadLetterRecord, DeadLetterStore, ListQuery, Pushed, RecordId,
};
use store::{chain, AnyStore, DEFAULT_STORE};
use tower::{Layer, ServiceExt};

/// rampart's operator tool.
#[derive(Parser, Debug)]
#[command(name = "rampart", version, about, propagate_version = true)]
struct Cli {
    /// The dead-letter store: sqlite:PATH (or a bare path), postgres://USER@HOST/DB or
    /// redis://HOST:PORT/DB (the last two optionally #PREFIX).
    #[arg(
        long,
        global = true,
        env = "RAMPART_DLQ_STORE",
        hide_env_values = true,
        default_value = DEFAULT_STORE
    )]
    store: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Dead letters: list, show, stats, requeue, redrive, delete, purge, export, import.
    #[command(subcommand)]
    Dlq(Dlq),
    /// Run policies against a fault scenario on a virtual clock: a table and a plot.
    ///
    /// Example: rampart simulate -p tts --scenario outage-then-recovery --compare naive
    Simulate(simulate_args::SimulateArgs),
}

#[derive(Subcommand, Debug)]
enum Dlq {
    /// List dead letters, newest first.
    ///
    /// Example: rampart dlq list --limit 20 --reason circuit_open --since 2h
    List {
        #[command(flatten)]
        filter: Filter,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show one dead letter in full, as pretty JSON.
    ///
    /// Example: rampart dlq show 01a2227b-e99b-76a4-90eb-c1aca9509b29
    Show {
        /// The record's id.
        #[arg(value_parser = parse_id)]
        id: RecordId,
    },
    /// Counts by service and reason, oldest and newest, size against the cap.
    ///
    /// Example: rampart dlq stats
    Stats,
    /// Move records to the retry queue, or (with --to-queue) push job records back onto an
    /// apalis job queue for a worker to run.
    ///
    /// Example: rampart dlq requeue --all --service gemini_api --yes
    /// Example: rampart dlq requeue --all --to-queue tts --jobs sqlite://jobs.db --yes
    Requeue {
        /// Ids to requeue.
        #[arg(value_parser = parse_id, required_unless_present = "all")]
        ids: Vec<RecordId>,
        /// Requeue every record that matches the filters.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        #[command(flatten)]
        filter: Filter,
        #[command(flatten)]
        jobs: JobsTarget,
        /// Do not ask; required when stdout is not a terminal.
        #[arg(long)]
        yes: bool,
    },
    /// Replay HTTP-shaped records against a base URL; remove what succeeds.
    ///
    /// Example: rampart dlq redrive --target http://localhost:8080 --rate 50/s --reason retries_exhausted
    ///
    /// With --to-queue, job records are pushed back onto an apalis job queue instead (attempt
    /// 0, redrive count + 1, same origin); each record is removed once its job is queued.
    ///
    /// Example: rampart dlq redrive --to-queue tts --jobs redis://127.0.0.1:6379
    Redrive {
        /// The base URL to replay against (scheme, host and port replace the recorded ones).
        #[arg(
            long,
            required_unless_present = "to_queue",
            conflicts_with = "to_queue"
        )]
        target: Option<String>,
        /// At most this many requests a second, e.g. 50/s (1 to 1000000).
        #[arg(long, value_parser = parse_rate)]
        rate: Option<u32>,
        /// Retries per record (0 to 100).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=MAX_RETRIES))]
        retries: u32,
        /// Records replayed at once (1 to 1024), so that --rate is reachable when the target
        /// is slow: at most this many requests are in flight.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=MAX_CONCURRENCY))]
        concurrency: u32,
        #[command(flatten)]
        filter: Filter,
        #[command(flatten)]
        jobs: JobsTarget,
    },
    /// Delete records by id.
    ///
    /// Example: rampart dlq delete 01a2227b-e99b-76a4-90eb-c1aca9509b29 --yes
    Delete {
        /// Ids to delete.
        #[arg(value_parser = parse_id, required = true)]
        ids: Vec<RecordId>,
        /// Do not ask; required when stdout is not a terminal.
        #[arg(long)]
        yes: bool,
    },
    /// Delete records older than an age.
    ///
    /// Example: rampart dlq purge --older-than 30d --dry-run
    Purge {
        /// Age, e.g. 30d, 12h.
        #[arg(long, value_parser = parse_duration)]
        older_than: Duration,
        /// Only say how many would go.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask; required when stdout is not a terminal.
        #[arg(long)]
        yes: bool,
    },
    /// Write records as JSON lines to stdout.
    ///
    /// Example: rampart dlq export --service gemini_api > dlq.jsonl
    Export {
        #[command(flatten)]
        filter: Filter,
    },
    /// Read JSON lines written by `export`; records already present are left alone. A line
    /// longer than 2 MiB is refused (by its line number) without being read into memory.
    ///
    /// Example: rampart --store redis://127.0.0.1:6379/0 dlq import dlq.jsonl
    Import {
        /// The file (`-` for stdin).
        file: String,
    },
}

/// Where --to-queue pushes jobs.
#[derive(clap::Args, Debug, Clone)]
struct JobsTarget {
    /// Push job records onto this apalis queue (the queue a `rampart-jobs` worker consumes).
    #[arg(long, requires = "jobs")]
    to_queue: Option<String>,
    /// The job backend: sqlite://PATH, redis://HOST:PORT or postgres://HOST/DB.
    #[arg(long, env = "RAMPART_JOBS_URL")]
    jobs: Option<String>,
}

#[derive(Args, Debug, Clone, Default)]
struct Filter {
    /// At most this many records (at least 1).
    #[arg(long, value_parser = parse_limit)]
    limit: Option<usize>,
    /// Only this service.
    #[arg(long)]
    service: Option<String>,
    /// Only this reason (permanent, retries_exhausted, budget_exhausted, deadline_exceeded,
    /// circuit_open, not_replayable, rejected).
    #[arg(long, value_parser = parse_reason)]
    reason: Option<DeadLetterReason>,
    /// Only records younger than this, e.g. 2h.
    #[arg(long, value_parser = parse_duration)]
    since: Option<Duration>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
    Jsonl,
}

fn parse_id(s: &str) -> Result<RecordId, String> {
    s.parse()
        .map_err(|e: rampart_dlq::ParseIdError| e.to_string())
}

fn parse_reason(s: &str) -> Result<DeadLetterReason, String> {
    s.parse()
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. 30d, 2h, 90s"))
}

/// The most `--retries` accepted: retrying one record more often than this is a mistake, and
/// `u32::MAX` retries would never end.
const MAX_RETRIES: i64 = 100;
/// The most records `dlq redrive --concurrency` replays at once.
const MAX_CONCURRENCY: i64 = 1024;

/// The highest `--rate` accepted, in requests a second. Faster than this, pacing means
/// nothing (one request a microsecond); and above 10⁹ a second the period between requests
/// would round to zero, which `tokio::time::interval` refuses with a panic.
const MAX_RATE: u32 = 1_000_000;

fn parse_rate(s: &str) -> Result<u32, String> {
    let n = s.strip_suffix("/s").unwrap_or(s);
    let n = n
        .parse::<u32>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?} is not a rate; write e.g. 50/s"))?;
    if n > MAX_RATE {
        return Err(format!("{s:?} is too fast; at most {MAX_RATE}/s"));
    }
    Ok(n)
}

/// The time between two requests at `per_second` requests a second; never zero.
fn pace_period(per_second: u32) -> Duration {
    Duration::from_secs(1)
        .checked_div(per_second)
        .unwrap_or(Duration::from_secs(1))
        .max(Duration::from_nanos(1))
}

/// `--limit 0` is a usage error rather than "no limit" or "nothing": listing, exporting or
/// requeueing zero records is never what an operator meant.
fn parse_limit(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("--limit must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{s:?} is not a number of records ({e})")),
    }
}

/// The longest line `import` accepts, in bytes: 2 MiB, twice the largest record a store
/// accepts. A longer line is refused before more of it is read, so `import` holds at most
/// this much of its input in memory.
const MAX_IMPORT_LINE: usize = 2 * 1024 * 1024;

/// Why a line could not be read.
#[derive(Debug)]
enum LineError {
    /// Longer than the cap.
    TooLong,
    /// The input failed.
    Io(std::io::Error),
}

/// Reads the next line (without its line ending) into `buf`, reading at most `max + 1`
/// bytes of it; `Ok(false)` at the end of the input.
fn read_line_bounded<R: BufRead>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<bool, LineError> {
    buf.clear();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let n = Read::take(&mut *r, limit)
        .read_until(b'\n', buf)
        .map_err(LineError::Io)?;
    if n == 0 {
        return Ok(false);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    } else if buf.len() > max {
        return Err(LineError::TooLong);
    }
    Ok(true)
}

/// A failed command: the message and the exit code.
struct Fail(String, u8);

fn op(msg: impl Into<String>) -> Fail {
    Fail(msg.into(), 1)
}

fn usage(msg: impl Into<String>) -> Fail {
    Fail(msg.into(), 2)
}

fn store_err(e: &rampart_dlq::StoreError) -> Fail {
    op(chain(e))
}

impl Filter {
    /// The store query for these filters (the store filters; the CLI only pages).
    fn query(&self) -> ListQuery {
        let mut q = ListQuery::newest(500);
        q.service.clone_from(&self.service);
        q.reason = self.reason;
        q.since = self.since.map(|d| {
            RecordId::lower_bound(
                SystemTime::now()
                    .checked_sub(d)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            )
        });
        q
    }

    /// Every matching record, newest first, up to the limit.
    async fn collect(&self, store: &AnyStore) -> Result<(Vec<DeadLetterRecord>, usize), Fail> {
        let limit = self.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        if limit == 0 {
            return Ok((out, 0));
        }
        let mut unreadable = 0;
        let mut q = self.query();
        loop {
            let page = store.list(q.clone()).await.map_err(|e| store_err(&e))?;
            unreadable += page.unreadable.len();
            for r in page.records {
                out.push(r);
                if out.len() >= limit {
                    return Ok((out, unreadable));
                }
            }
            match page.next {
                Some(n) => q.before = Some(n),
                None => return Ok((out, unreadable)),
            }
        }
    }
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    rampart_dlq::redact::truncate(&flat, max)
}

/// Asks before a destructive command; refuses without `--yes` when stdout is not a terminal.
fn confirm(what: &str, n: usize, yes: bool) -> Result<bool, Fail> {
    if yes || n == 0 {
        return Ok(true);
    }
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(usage(format!(
            "refusing to {what} {n} record(s) without --yes (stdout is not a terminal)"
        )));
    }
    print!("{what} {n} record(s)? [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

async fn run(cli: Cli) -> Result<(), Fail> {
    let cmd = match cli.command {
        Command::Dlq(cmd) => cmd,
        // main() runs it on its own runtimes before this one starts.
        Command::Simulate(_) => return Err(usage("simulate does not run here")),
    };
    let create = matches!(cmd, Dlq::Import { .. });
    let (store, label) = store::open(&cli.store, create).await.map_err(op)?;
    let mut out = std::io::stdout().lock();
    let w = |out: &mut std::io::StdoutLock<'_>, s: String| {
        let _ = writeln!(out, "{s}");
    };
    match cmd {
        Dlq::List { filter, format } => {
            let (records, unreadable) = filter.collect(&store).await?;
            match format {
                Format::Json => w(
                    &mut out,
                    serde_json::to_string_pretty(&records).map_err(|e| op(e.to_string()))?,
                ),
                Format::Jsonl => {
                    for r in &records {
                        w(
                            &mut out,
                            serde_json::to_string(r).map_err(|e| op(e.to_string()))?,
                        );
                    }
                }
                Format::Table => {
                    w(
                        &mut out,
                        format!(
                            "{:<36}  {:<24}  {:<12}  {:<17}  {:>8}  {:<40}  {}",
                            "ID",
                            "LAST ATTEMPT",
                            "SERVICE",
                            "REASON",
                            "ATTEMPTS",
                            "ERROR",
                            "REQUEST"
                        ),
                    );
                    for r in &records {
                        w(
                            &mut out,
                            format!(
                                "{:<36}  {:<24}  {:<12}  {:<17}  {:>8}  {:<40}  {}",
                                r.id.to_string(),
                                r.last_attempt_at.to_string(),
                                one_line(&r.service, 12),
                                r.reason.as_str(),
                                format!("{}/{}", r.attempts, r.max_attempts),
                                one_line(&r.error, 40),
                                one_line(&r.request.summary, 60)
                            ),
                        );
                    }
                    w(&mut out, format!("{} record(s) in {label}", records.len()));
                    if unreadable > 0 {
                        w(
                            &mut out,
                            format!("{unreadable} unreadable entr(ies) skipped"),
                        );
                    }
                }
            }
        }
        Dlq::Show { id } => {
            let r = store
                .get(id)
                .await
                .map_err(|e| store_err(&e))?
                .ok_or_else(|| op(format!("no dead letter with id {id} in {label}")))?;
            w(
                &mut out,
                serde_json::to_string_pretty(&r).map_err(|e| op(e.to_string()))?,
            );
        }
        Dlq::Stats => {
            let s = store.stats().await.map_err(|e| store_err(&e))?;
            let (all, unreadable) = Filter::default().collect(&store).await?;
            let mut by: BTreeMap<(String, &str), usize> = BTreeMap::new();
            for r in &all {
                *by.entry((r.service.clone(), r.reason.as_str()))
                    .or_default() += 1;
            }
            w(&mut out, format!("store        {label}"));
            w(
                &mut out,
                format!(
                    "records      {} of {} (cap), {} evicted, {} requeued",
                    s.records, s.max_size, s.evictions, s.requeued
                ),
            );
            if let (Some(newest), Some(oldest)) = (all.first(), all.last()) {
                w(
                    &mut out,
                    format!(
                        "oldest       {} ({} ago)",
                        oldest.first_attempt_at,
                        humantime::format_duration(Duration::from_secs(
                            oldest.first_attempt_at.age().as_secs()
                        ))
                    ),
                );
                w(
                    &mut out,
                    format!(
                        "newest       {} ({} ago)",
                        newest.last_attempt_at,
                        humantime::format_duration(Duration::from_secs(
                            newest.last_attempt_at.age().as_secs()
                        ))
                    ),
                );
            }
            if unreadable > 0 {
                w(&mut out, format!("unreadable   {unreadable}"));
            }
            w(
                &mut out,
                format!("\n{:<20}  {:<18}  {:>7}", "SERVICE", "REASON", "RECORDS"),
            );
            for ((service, reason), n) in by {
                w(
                    &mut out,
                    format!("{:<20}  {:<18}  {:>7}", one_line(&service, 20), reason, n),
                );
            }
        }
        Dlq::Requeue {
            ids,
            all,
            filter,
            jobs,
            yes,
        } => {
            let ids: Vec<RecordId> = if all {
                filter
                    .collect(&store)
                    .await?
                    .0
                    .into_iter()
                    .map(|r| r.id)
                    .collect()
            } else {
                ids
            };
            if all && !confirm("requeue", ids.len(), yes)? {
                return Err(op("cancelled"));
            }
            if let (Some(queue), Some(url)) = (&jobs.to_queue, &jobs.jobs) {
                let mut records = Vec::new();
                let mut missing = Vec::new();
                for id in &ids {
                    match store.get(*id).await.map_err(|e| store_err(&e))? {
                        Some(r) => records.push(r),
                        None => missing.push(id.to_string()),
                    }
                }
                drop(out);
                to_queue(&store, &label, records, url, queue).await?;
                if !missing.is_empty() {
                    return Err(op(format!(
                        "no dead letter with id {} in {label}",
                        missing.join(", ")
                    )));
                }
                return Ok(());
            }
            let mut moved = 0;
            let mut missing = Vec::new();
            for id in &ids {
                match store.requeue(*id).await.map_err(|e| store_err(&e))? {
                    Some(_) => moved += 1,
                    None => missing.push(id.to_string()),
                }
            }
            w(
                &mut out,
                format!("requeued {moved} record(s) to the retry queue of {label}"),
            );
            if !missing.is_empty() {
                return Err(op(format!(
                    "no dead letter with id {} in {label}",
                    missing.join(", ")
                )));
            }
        }
        Dlq::Delete { ids, yes } => {
            if !confirm("delete", ids.len(), yes)? {
                return Err(op("cancelled"));
            }
            let mut deleted = 0;
            let mut missing = Vec::new();
            for id in &ids {
                if store.delete(*id).await.map_err(|e| store_err(&e))? {
                    deleted += 1;
                } else {
                    missing.push(id.to_string());
                }
            }
            w(
                &mut out,
                format!("deleted {deleted} record(s) from {label}"),
            );
            if !missing.is_empty() {
                return Err(op(format!(
                    "no dead letter with id {} in {label}",
                    missing.join(", ")
                )));
            }
        }
        Dlq::Purge {
            older_than,
            dry_run,
            yes,
        } => {
            let cutoff = RecordId::lower_bound(
                SystemTime::now()
                    .checked_sub(older_than)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            );
            let (all, _) = Filter::default().collect(&store).await?;
            let n = all.iter().filter(|r| r.id < cutoff).count();
            let age = humantime::format_duration(older_than);
            if dry_run {
                w(
                    &mut out,
                    format!("would purge {n} record(s) older than {age} from {label}"),
                );
                return Ok(());
            }
            if !confirm("purge", n, yes)? {
                return Err(op("cancelled"));
            }
            let purged = store
                .purge_older_than(older_than)
                .await
                .map_err(|e| store_err(&e))?;
            w(
                &mut out,
                format!("purged {purged} record(s) older than {age} from {label}"),
            );
        }
        Dlq::Export { filter } => {
            let (records, _) = filter.collect(&store).await?;
            for r in &records {
                w(
                    &mut out,
                    serde_json::to_string(r).map_err(|e| op(e.to_string()))?,
                );
            }
        }
        Dlq::Import { file } => {
            let mut reader: Box<dyn BufRead> = if file == "-" {
                Box::new(std::io::BufReader::new(std::io::stdin()))
            } else {
                Box::new(std::io::BufReader::new(
                    std::fs::File::open(&file)
                        .map_err(|e| op(format!("cannot read {file}: {e}")))?,
                ))
            };
            let (mut new, mut present) = (0, 0);
            let mut line = Vec::new();
            for number in 1u64.. {
                match read_line_bounded(&mut reader, &mut line, MAX_IMPORT_LINE) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(LineError::Io(e)) => return Err(op(format!("{file} line {number}: {e}"))),
                    Err(LineError::TooLong) => {
                        return Err(op(format!(
                            "{file} line {number}: longer than {MAX_IMPORT_LINE} bytes (2 MiB), the most import reads; not a record written by export"
                        )))
                    }
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let r = DeadLetterRecord::from_json(&line).map_err(|e| {
                    op(format!(
                        "{file} line {number}: not a dead-letter record ({e})"
                    ))
                })?;
                match store.push(r).await.map_err(|e| store_err(&e))? {
                    Pushed::Duplicate => present += 1,
                    _ => new += 1,
                }
            }
            w(
                &mut out,
                format!("imported {new} new record(s), {present} already present, into {label}"),
            );
        }
        Dlq::Redrive {
            target,
            rate,
            retries,
            concurrency,
            filter,
            jobs,
        } => {
            drop(out);
            if let (Some(queue), Some(url)) = (&jobs.to_queue, &jobs.jobs) {
                let (records, _) = filter.collect(&store).await?;
                return to_queue(&store, &label, records, url, queue).await;
            }
            let target = target.ok_or_else(|| usage("--target or --to-queue is required"))?;
            let how = Redrive {
                rate,
                retries,
                concurrency,
            };
            return redrive(&store, &label, &target, how, &filter).await;
        }
    }
    Ok(())
}

/// The request a record describes, re-aimed at `target`, byte for byte; or why it cannot be
/// replayed as it was made (truncated, changed by redaction, not an HTTP request).
fn request_of(r: &DeadLetterRecord, target: &http::Uri) -> Result<http::Request<Bytes>, String> {
    r.kept_whole().map_err(|e| e.to_string())?;
    let p = &r.request.payload;
    let method = p
        .get("method")
        .and_then(|m| m.as_str())
        .ok_or("not an HTTP request (no method)")?;
    let uri: http::Uri = p
        .get("uri")
        .and_then(|u| u.as_str())
        .ok_or("not an HTTP request (no uri)")?
        .parse()
        .map_err(|e| format!("its uri does not parse: {e}"))?;
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut parts = target.clone().into_parts();
    parts.path_and_query = Some(
        path.parse()
            .map_err(|e| format!("its path does not parse: {e}"))?,
    );
    let uri = http::Uri::from_parts(parts).map_err(|e| format!("cannot re-aim its uri: {e}"))?;
    let body = match (
        p.get("body"),
        p.get("body_encoding").and_then(|e| e.as_str()),
    ) {
        (None | Some(serde_json::Value::Null), _) => Bytes::new(),
        (Some(serde_json::Value::String(s)), None | Some("utf8")) => Bytes::from(s.clone()),
        (Some(serde_json::Value::String(s)), Some("base64")) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map(Bytes::from)
                .map_err(|e| format!("its base64 body does not decode: {e}"))?
        }
        // Records written before bodies were base64: binary bodies as `{"hex": "…"}`.
        (Some(serde_json::Value::Object(o)), _) => {
            let hex = o
                .get("hex")
                .and_then(|h| h.as_str())
                .ok_or("its body is in an unknown form")?;
            Bytes::from(decode_hex(hex).ok_or("its hex body does not decode")?)
        }
        (_, Some(other)) => return Err(format!("its body encoding {other:?} is unknown")),
        (Some(_), None) => return Err("its body is in an unknown form".into()),
    };
    let mut req = http::Request::builder().method(method).uri(uri);
    if let Some(h) = p.get("headers").and_then(|h| h.as_object()) {
        for (k, v) in h {
            let values: Vec<&str> = match v {
                serde_json::Value::String(s) => vec![s.as_str()],
                serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str()).collect(),
                _ => Vec::new(),
            };
            // A redacted header is left out; the target's own credentials apply.
            for v in values
                .into_iter()
                .filter(|v| *v != rampart_dlq::redact::REDACTED)
            {
                req = req.header(k, v);
            }
        }
    }
    req.body(body)
        .map_err(|e| format!("cannot rebuild the request: {e}"))
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let digits = s.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(text, 16).ok()
        })
        .collect()
}

/// How `dlq redrive` replays: pace, retries per record, requests in flight.
#[derive(Debug, Clone, Copy)]
struct Redrive {
    rate: Option<u32>,
    retries: u32,
    concurrency: u32,
}

/// Why a replayed request did not succeed, as it may be shown: the HTTP status, or the
/// connection error with its causes, with secrets (URL passwords, tokens, `key=value` pairs)
/// redacted.
fn why_failed<E: std::error::Error>(result: &Result<http::Response<Bytes>, E>) -> String {
    match result {
        Ok(res) => format!("HTTP {}", res.status()),
        Err(e) => rampart_dlq::Redactor::default().text(&chain(e)),
    }
}

/// Without the `jobs` feature there is no job backend to push onto: say how to get one.
#[cfg(not(feature = "jobs"))]
async fn to_queue(
    _store: &AnyStore,
    _label: &str,
    _records: Vec<DeadLetterRecord>,
    _url: &str,
    _queue: &str,
) -> Result<(), Fail> {
    Err(usage(
        "--to-queue needs the job backends: rebuild with `--features jobs` (e.g. cargo run --release -p rampart-cli --features jobs -- dlq redrive --to-queue NAME --jobs URL)",
    ))
}

/// Pushes job records onto apalis queue `queue` at `url` as jobs to run again (attempt 0,
/// redrive count + 1, same origin, so a second death names the same record), removing each
/// record once its job is queued. Records that are not jobs, or whose arguments were
/// redacted or truncated, stay.
#[cfg(feature = "jobs")]
async fn to_queue(
    store: &AnyStore,
    label: &str,
    records: Vec<DeadLetterRecord>,
    url: &str,
    queue: &str,
) -> Result<(), Fail> {
    let mut q = rampart_jobs::JobQueue::open(url, queue)
        .await
        .map_err(|e| op(store::scrub(&chain(&e), url)))?;
    let mut pushed = 0;
    let mut skipped: Vec<(RecordId, String)> = Vec::new();
    for r in records {
        match rampart_jobs::Job::from_dead_letter(&r) {
            Ok(job) => {
                // Queue first, then delete: a crash in between leaves the record, and pushing
                // it again reuses the job's idempotency key (origin#redriveN).
                q.push(job, None)
                    .await
                    .map_err(|e| op(store::scrub(&chain(&e), url)))?;
                store.delete(r.id).await.map_err(|e| store_err(&e))?;
                pushed += 1;
            }
            Err(why) => skipped.push((r.id, why.to_string())),
        }
    }
    println!("{:<16} {:>7}", "queued as jobs", pushed);
    println!("{:<16} {:>7}", "skipped", skipped.len());
    println!("({label} -> queue {queue} at {})", q.url());
    for (id, why) in &skipped {
        println!("{id:<36}  {why}");
    }
    Ok(())
}

async fn redrive(
    store: &AnyStore,
    label: &str,
    target: &str,
    how: Redrive,
    filter: &Filter,
) -> Result<(), Fail> {
    let target: http::Uri = target
        .parse()
        .ok()
        .filter(|u: &http::Uri| u.scheme().is_some() && u.authority().is_some())
        .ok_or_else(|| {
            usage(format!(
                "--target {:?} is not a base URL such as http://localhost:8080",
                rampart_dlq::Redactor::default().url(target)
            ))
        })?;
    let shown_target = rampart_dlq::Redactor::default().url(&target.to_string());
    let (records, _) = filter.collect(store).await?;
    let backoff = rampart_core::Backoff::builder()
        .max_retries(how.retries)
        .base_delay(Duration::from_millis(100))
        .max_delay(Duration::from_secs(5))
        .build()
        .map_err(|e| usage(e.to_string()))?;
    let svc = rampart_retry::RetryLayer::new(rampart::client::HttpClassifier::default())
        .name("redrive")
        .backoff(backoff)
        .layer(rampart::client::HttpClient::new());
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(records.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} records redriven  {msg}")
    {
        bar.set_style(style);
    }
    let limit = usize::try_from(how.concurrency).unwrap_or(1).max(1);
    let mut pace = how.rate.map(|n| tokio::time::interval(pace_period(n)));
    let mut in_flight = tokio::task::JoinSet::new();
    let mut ok = 0;
    let mut again: Vec<(rampart_dlq::RecordId, String)> = Vec::new();
    let mut skipped: Vec<(rampart_dlq::RecordId, String)> = Vec::new();
    let mut records = records.into_iter();
    loop {
        // Start requests while fewer than `limit` are in flight (paced by --rate), then
        // settle the first one to finish; the store is written from this task only.
        let next = if in_flight.len() < limit {
            records.next()
        } else {
            None
        };
        if let Some(r) = next {
            let req = match request_of(&r, &target) {
                Ok(req) => req,
                Err(why) => {
                    bar.inc(1);
                    skipped.push((r.id, why));
                    continue;
                }
            };
            if let Some(p) = pace.as_mut() {
                p.tick().await;
            }
            let svc = svc.clone();
            in_flight.spawn(async move {
                let result = svc.oneshot(req).await;
                let failed = match &result {
                    Ok(res) if res.status().is_success() => None,
                    other => Some(why_failed(other)),
                };
                (r, failed)
            });
            continue;
        }
        let Some(done) = in_flight.join_next().await else {
            break;
        };
        bar.inc(1);
        let (r, failed) = done.map_err(|e| op(format!("a redrive task failed: {e}")))?;
        match failed {
            None => {
                store.delete(r.id).await.map_err(|e| store_err(&e))?;
                ok += 1;
            }
            Some(why) => {
                let mut bumped = r;
                bumped.redrive_count = bumped.redrive_count.saturating_add(1);
                bumped.last_attempt_at = rampart_dlq::Timestamp::now();
                let id = bumped.id;
                store.replace(bumped).await.map_err(|e| store_err(&e))?;
                again.push((id, why));
            }
        }
    }
    bar.finish_and_clear();
    println!("{:<16} {:>7}", "redriven", ok);
    println!("{:<16} {:>7}", "failed again", again.len());
    println!("{:<16} {:>7}", "skipped", skipped.len());
    println!("({label}, target {shown_target})");
    if !again.is_empty() {
        again.sort();
        println!();
        println!(
            "{:<36}  why it failed again (the record stays)",
            "failed record"
        );
        for (id, why) in &again {
            println!("{id:<36}  {why}");
        }
    }
    if !skipped.is_empty() {
        println!();
        println!("{:<36}  why skipped (the record stays)", "skipped record");
        for (id, why) in &skipped {
            println!("{id:<36}  {why}");
        }
    }
    if !again.is_empty() {
        return Err(op(format!(
            "{} record(s) failed again; they stay, with their redrive count bumped",
            again.len()
        )));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let spec = cli.store.clone();
    if let Command::Simulate(args) = cli.command {
        // Its own paused-clock runtimes, one per policy.
        #[cfg(not(feature = "simulate"))]
        let run = {
            let _ = args;
            Err(usage(
                "simulate is not in this build: run it with `cargo run --release -p rampart-cli --features simulate -- simulate …` (plotters, the chaos layer and the config loader stay out of the default CLI, so that it reuses the demo's build)",
            ))
        };
        #[cfg(feature = "simulate")]
        let run = simulate::main(args);
        return match run {
            Ok(()) => ExitCode::SUCCESS,
            Err(Fail(msg, code)) => {
                eprintln!("rampart: error: {msg}");
                ExitCode::from(code)
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rampart: error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg, code)) => {
            eprintln!("rampart: error: {}", store::scrub(&msg, &spec));
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod request_of_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rampart_dlq::{DeadLetterReason, Extract, HttpExtractor};

    fn record_of(req: http::Request<Bytes>, x: &HttpExtractor) -> DeadLetterRecord {
        let whole = x.extract_whole(&req);
        let mut r =
            DeadLetterRecord::new("api", DeadLetterReason::RetriesExhausted).request(whole.part);
        r.truncated = whole.truncated;
        r.request_redacted = whole.redacted;
        r
    }

    fn target() -> http::Uri {
        "http://127.0.0.1:9000".parse().unwrap()
    }

    #[test]
    fn binary_and_text_bodies_replay_byte_exact() {
        let x = HttpExtractor::default()
            .keep_header("content-type")
            .keep_header("authorization");
        let binary: Vec<u8> = (0..=255u8).rev().collect();
        for body in [binary, "héllo wörld".as_bytes().to_vec(), Vec::new()] {
            let req = http::Request::put("http://gone.invalid/v1/blob?part=2")
                .header("content-type", "application/octet-stream")
                .header("authorization", "Bearer abcdefgh123")
                .body(Bytes::from(body.clone()))
                .unwrap();
            let out = request_of(&record_of(req, &x), &target()).unwrap();
            assert_eq!(out.method(), http::Method::PUT);
            assert_eq!(out.uri(), "http://127.0.0.1:9000/v1/blob?part=2");
            assert_eq!(out.body().as_ref(), body.as_slice(), "byte-exact");
            assert_eq!(out.headers()["content-type"], "application/octet-stream");
            assert!(
                out.headers().get("authorization").is_none(),
                "a redacted header is left out"
            );
        }
    }

    #[test]
    fn records_not_kept_whole_are_refused_with_the_reason() {
        let x = HttpExtractor::default().body_limit(16);
        let cut = http::Request::post("http://h/v1")
            .body(Bytes::from(vec![b'a'; 64]))
            .unwrap();
        let why = request_of(&record_of(cut, &x), &target()).unwrap_err();
        assert!(why.contains("truncated (originally 64 bytes)"), "{why}");

        let x = HttpExtractor::default();
        let secret_uri = http::Request::get("http://h/v1?api_key=abcdefgh123")
            .body(Bytes::new())
            .unwrap();
        let why = request_of(&record_of(secret_uri, &x), &target()).unwrap_err();
        assert!(why.contains("redaction (uri)"), "{why}");

        let secret_body = http::Request::post("http://h/v1")
            .body(Bytes::from_static(b"user=bob&password=hunter22"))
            .unwrap();
        let why = request_of(&record_of(secret_body, &x), &target()).unwrap_err();
        assert!(why.contains("redaction (body)"), "{why}");

        // A record from before the flags existed: its payload alone says it was cut.
        let mut old = DeadLetterRecord::new("api", DeadLetterReason::Permanent);
        old.request.payload = serde_json::json!({
            "method": "POST", "uri": "http://h/v1", "headers": {},
            "body": "aaaa", "body_truncated": true,
        });
        assert!(request_of(&old, &target())
            .unwrap_err()
            .contains("truncated"));

        let not_http = DeadLetterRecord::new("db", DeadLetterReason::Permanent);
        assert!(request_of(&not_http, &target())
            .unwrap_err()
            .contains("not an HTTP request"));
    }

    #[test]
    fn old_hex_bodies_still_replay() {
        let mut old = DeadLetterRecord::new("api", DeadLetterReason::Permanent);
        old.request.payload = serde_json::json!({
            "method": "POST", "uri": "http://h/v1", "headers": {},
            "body": { "hex": "ff00fe" }, "body_truncated": false,
        });
        let out = request_of(&old, &target()).unwrap();
        assert_eq!(out.body().as_ref(), [0xff, 0x00, 0xfe]);
        old.request.payload["body"] = serde_json::json!({ "hex": "f" });
        assert!(request_of(&old, &target()).is_err());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_rate_above_the_bound_is_refused_not_panicked_on() {
        // Issue 11: `--rate 2000000000/s` parsed, and `interval(1s / 2e9 = 0)` panicked.
        let e = parse_rate("2000000000/s").unwrap_err();
        assert!(e.contains("at most 1000000/s"), "{e}");
        assert_eq!(parse_rate("1000000/s"), Ok(MAX_RATE));
        assert_eq!(parse_rate("50/s"), Ok(50));
        assert!(parse_rate("0/s").is_err());
        assert_eq!(pace_period(u32::MAX), Duration::from_nanos(1));
        assert_eq!(pace_period(0), Duration::from_secs(1));
    }

    #[test]
    fn a_zero_limit_is_a_usage_error() {
        assert_eq!(parse_limit("0").unwrap_err(), "--limit must be at least 1");
        assert_eq!(parse_limit("3"), Ok(3));
        assert!(parse_limit("-1").unwrap_err().contains("not a number"));
    }

    #[test]
    fn lines_are_read_up_to_the_cap_and_no_further() {
        let mut input = Vec::new();
        input.extend_from_slice(b"short\r\n");
        input.extend_from_slice(&[b'x'; 10]);
        input.push(b'\n');
        input.extend_from_slice(&[b'y'; 11]);
        input.extend_from_slice(b"\nlast");
        let mut r = std::io::Cursor::new(input);
        let mut buf = Vec::new();
        assert!(read_line_bounded(&mut r, &mut buf, 10).unwrap());
        assert_eq!(buf, b"short");
        assert!(read_line_bounded(&mut r, &mut buf, 10).unwrap());
        assert_eq!(buf, [b'x'; 10]);
        assert!(matches!(
            read_line_bounded(&mut r, &mut buf, 10),
            Err(LineError::TooLong)
        ));
        assert_eq!(buf.len(), 11, "read one byte past the cap, no more");
        assert_eq!(
            r.position(),
            10 + 1 + 7 + 11,
            "the rest of the line stays unread"
        );
    }

    proptest! {
        #[test]
        fn any_rate_text_parses_to_a_bounded_rate_or_an_error(s in "\\PC{0,16}") {
            if let Ok(n) = parse_rate(&s) {
                prop_assert!((1..=MAX_RATE).contains(&n));
                prop_assert!(!pace_period(n).is_zero());
            }
        }

        #[test]
        fn any_number_of_requests_a_second(n in any::<u32>()) {
            let got = parse_rate(&format!("{n}/s"));
            prop_assert_eq!(got.is_ok(), (1..=MAX_RATE).contains(&n));
            prop_assert!(!pace_period(n).is_zero());
        }

        #[test]
        fn any_limit_text(s in "\\PC{0,24}") {
            if let Ok(n) = parse_limit(&s) {
                prop_assert!(n >= 1);
            }
        }

        #[test]
        fn any_duration_text(s in prop_oneof![
            "\\PC{0,24}",
            (any::<u64>(), prop::sample::select(vec!["ns", "s", "d", "y", "years"])).prop_map(|(n, u)| format!("{n}{u}")),
        ]) {
            if let Ok(d) = parse_duration(&s) {
                // Every command turns an age into a cutoff without overflowing.
                let _ = RecordId::lower_bound(
                    SystemTime::now().checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH),
                );
            }
        }

        #[test]
        fn any_input_splits_into_bounded_lines(
            input in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), any::<u8>()], 0..200),
            max in 0usize..40,
        ) {
            let mut r = std::io::Cursor::new(&input);
            let mut buf = Vec::new();
            let mut lines = 0;
            loop {
                match read_line_bounded(&mut r, &mut buf, max) {
                    Ok(true) => {
                        prop_assert!(buf.len() <= max);
                        lines += 1;
                    }
                    Ok(false) => break,
                    Err(LineError::TooLong) => {
                        prop_assert_eq!(buf.len(), max + 1);
                        break;
                    }
                    Err(LineError::Io(e)) => prop_assert!(false, "{}", e),
                }
            }
            prop_assert!(lines <= input.len());
        }
    }
}
