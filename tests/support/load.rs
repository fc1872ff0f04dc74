//! A load harness: a simulated upstream, a constant-rate driver and three stacks to put in
//! front of it (a rampart policy, the reference design's naive policy, and tower's own retry
//! with a `TpsBudget`). Used by `tests/load.rs` on tokio's paused clock and by
//! `examples/load_realtime.rs` on a multi-threaded runtime in real time.
//!
//! Every duration of a [`Scenario`] and of the driver is divided by `scale`, so the same
//! scenario runs in 300 s of virtual time (scale 1) or 3 s of real time (scale 100).
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    missing_debug_implementations
)]

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use rampart::dlq::{DeadLetterStore, ListQuery, MemoryStore, RequestPart};
use rampart::{Outcome, Policy};
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{BoxError, Service, ServiceExt};

/// One logical call: its id (unique per run) and its key (voice, host, tenant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Call {
    pub id: u64,
    pub key: u8,
}

/// The upstream's answer. Failures are answers too (a 503 is `Ok`), the shape of rampart's
/// own HTTP and Gemini clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resp {
    pub status: u16,
    pub retry_after: Option<Duration>,
}

/// The classifier every stack shares: 2xx success, 429 throttled, 5xx transient (both with
/// their `Retry-After`), other 4xx rejected; an I/O error by kind.
pub fn classify(r: Result<&Resp, &io::Error>) -> Outcome {
    match r {
        Ok(Resp {
            status: 200..=299, ..
        }) => Outcome::Success,
        Ok(Resp {
            status: 429,
            retry_after,
        }) => Outcome::Throttled {
            retry_after: *retry_after,
        },
        Ok(Resp {
            status: 500..=599,
            retry_after,
        }) => Outcome::Transient {
            retry_after: *retry_after,
        },
        Ok(_) => Outcome::Rejected,
        Err(e) => rampart::classify::io_error(e),
    }
}

/// What the upstream does over the run. Times are from the start of the run, unscaled.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    /// Share of arrivals that fail with a 503, independently, by a seeded draw.
    pub transient_rate: f64,
    /// Windows in which every arrival gets a 503.
    pub outages: Vec<(Duration, Duration)>,
    /// A window in which `share` of arrivals get a 429 with `Retry-After: after`.
    pub throttle: Option<Throttle>,
    /// A key whose every arrival gets a 503 for the whole run.
    pub down_key: Option<u8>,
    /// A window in which every arrival takes `latency` before it answers.
    pub spike: Option<(Duration, Duration, Duration)>,
    /// Keys the driver spreads calls over (round robin).
    pub keys: u8,
    /// Normal latency of the upstream.
    pub latency: Duration,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    pub from: Duration,
    pub to: Duration,
    pub share: f64,
    pub after: Duration,
}

impl Scenario {
    fn base(name: &'static str) -> Self {
        Scenario {
            name,
            transient_rate: 0.0,
            outages: Vec::new(),
            throttle: None,
            down_key: None,
            spike: None,
            keys: 1,
            latency: Duration::from_millis(20),
            seed: 0x5eed,
        }
    }
    /// 20 % independent transient failures.
    pub fn transient() -> Self {
        Scenario {
            transient_rate: 0.2,
            ..Scenario::base("transient_20pct")
        }
    }
    /// The upstream is down for the whole run.
    pub fn full_outage() -> Self {
        Scenario {
            outages: vec![(Duration::ZERO, Duration::from_secs(10_000))],
            ..Scenario::base("full_outage")
        }
    }
    /// Down from 30 s to 90 s, healthy before and after.
    pub fn outage_ends() -> Self {
        Scenario {
            outages: vec![(Duration::from_secs(30), Duration::from_secs(90))],
            ..Scenario::base("outage_ends")
        }
    }
    /// From 60 s to 120 s half the arrivals get a 429 with `Retry-After: 1`.
    pub fn throttle_storm() -> Self {
        Scenario {
            throttle: Some(Throttle {
                from: Duration::from_secs(60),
                to: Duration::from_secs(120),
                share: 0.5,
                after: Duration::from_secs(1),
            }),
            ..Scenario::base("throttle_storm")
        }
    }
    /// Key 2 of three is down for the whole run.
    pub fn one_key_down() -> Self {
        Scenario {
            keys: 3,
            down_key: Some(2),
            ..Scenario::base("one_key_down")
        }
    }
    /// From 100 s to 130 s every arrival takes 5 s.
    pub fn latency_spike() -> Self {
        Scenario {
            spike: Some((
                Duration::from_secs(100),
                Duration::from_secs(130),
                Duration::from_secs(5),
            )),
            ..Scenario::base("latency_spike")
        }
    }

    pub fn all() -> Vec<Scenario> {
        vec![
            Scenario::transient(),
            Scenario::full_outage(),
            Scenario::outage_ends(),
            Scenario::throttle_storm(),
            Scenario::one_key_down(),
            Scenario::latency_spike(),
        ]
    }
}

fn within(t: Duration, (from, to): (Duration, Duration)) -> bool {
    from <= t && t < to
}

/// splitmix64: a seeded, reproducible draw per arrival.
fn draw(seed: u64, n: u64) -> f64 {
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    #[allow(clippy::cast_precision_loss)]
    let f = (z >> 11) as f64 / (1u64 << 53) as f64;
    f
}

#[derive(Debug, Default)]
struct UpstreamState {
    arrivals: u64,
    /// Arrivals per call id.
    per_call: Vec<u32>,
    /// Arrivals per whole second of (unscaled) run time.
    per_sec: Vec<u32>,
    /// The earliest instant each call may come back, from the last `Retry-After` it got.
    not_before: Vec<Option<Instant>>,
    /// Arrivals that came back before their `Retry-After`.
    early: u64,
}

/// The simulated upstream. Cloning shares it.
#[derive(Clone, Debug)]
pub struct Upstream {
    scenario: Arc<Scenario>,
    scale: f64,
    start: Instant,
    state: Arc<Mutex<UpstreamState>>,
}

impl Upstream {
    pub fn new(scenario: Scenario, calls: usize, scale: f64) -> Self {
        let secs = 400;
        Upstream {
            scenario: Arc::new(scenario),
            scale,
            start: Instant::now(),
            state: Arc::new(Mutex::new(UpstreamState {
                per_call: vec![0; calls],
                per_sec: vec![0; secs],
                not_before: vec![None; calls],
                ..UpstreamState::default()
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, UpstreamState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn scaled(&self, d: Duration) -> Duration {
        d.div_f64(self.scale)
    }

    /// Unscaled run time now.
    fn now(&self) -> Duration {
        self.start.elapsed().mul_f64(self.scale)
    }

    pub fn arrivals(&self) -> u64 {
        self.state().arrivals
    }
    pub fn arrivals_of(&self, id: u64) -> u32 {
        let s = self.state();
        usize::try_from(id)
            .ok()
            .and_then(|i| s.per_call.get(i).copied())
            .unwrap_or(0)
    }
    /// Arrivals in the unscaled run-time seconds `[from, to)`.
    pub fn arrivals_between(&self, from: u64, to: u64) -> u64 {
        let s = self.state();
        s.per_sec
            .iter()
            .enumerate()
            .filter(|(i, _)| (*i as u64) >= from && (*i as u64) < to)
            .map(|(_, n)| u64::from(*n))
            .sum()
    }
    pub fn early_retries(&self) -> u64 {
        self.state().early
    }
}

impl Service<Call> for Upstream {
    type Response = Resp;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Resp, io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let t = self.now();
        let sc = &*self.scenario;
        let (resp, latency) = {
            let mut s = self.state();
            let n = s.arrivals;
            s.arrivals += 1;
            let idx = usize::try_from(call.id).unwrap_or(usize::MAX);
            if let Some(c) = s.per_call.get_mut(idx) {
                *c += 1;
            }
            if let Some(c) = s.per_sec.get_mut(usize::try_from(t.as_secs()).unwrap_or(0)) {
                *c += 1;
            }
            let now = Instant::now();
            if let Some(Some(nb)) = s.not_before.get(idx) {
                if now < *nb {
                    s.early += 1;
                }
            }
            let r = draw(sc.seed, n);
            let resp = if sc.outages.iter().any(|w| within(t, *w)) || sc.down_key == Some(call.key)
            {
                Resp {
                    status: 503,
                    retry_after: None,
                }
            } else if let Some(th) = sc.throttle.filter(|th| within(t, (th.from, th.to))) {
                if r < th.share {
                    let after = th.after;
                    if let Some(slot) = s.not_before.get_mut(idx) {
                        *slot = Some(now + self.scaled(after));
                    }
                    Resp {
                        status: 429,
                        retry_after: Some(self.scaled(after)),
                    }
                } else {
                    Resp {
                        status: 200,
                        retry_after: None,
                    }
                }
            } else if r < sc.transient_rate {
                Resp {
                    status: 503,
                    retry_after: None,
                }
            } else {
                Resp {
                    status: 200,
                    retry_after: None,
                }
            };
            let latency = match sc.spike {
                Some((from, to, l)) if within(t, (from, to)) => l,
                _ => sc.latency,
            };
            (resp, self.scaled(latency))
        };
        Box::pin(async move {
            tokio::time::sleep(latency).await;
            Ok(resp)
        })
    }
}

/// What happened to one logical call, in unscaled run time.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    pub call: Call,
    pub start: Duration,
    pub end: Duration,
    pub ok: bool,
}

/// The stack under test, boxed so that the three kinds share one driver.
pub type Stack = BoxCloneService<Call, Resp, BoxError>;

/// Offers `rate` calls per (unscaled) second for `secs` seconds, each as its own task, and
/// waits for all of them.
pub async fn drive(stack: Stack, rate: u32, secs: u32, keys: u8, scale: f64) -> Vec<Done> {
    let total = u64::from(rate) * u64::from(secs);
    let start = Instant::now();
    let gap = Duration::from_secs(1).div_f64(f64::from(rate) * scale);
    let mut tasks = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for id in 0..total {
        let at = start + gap.mul_f64(id as f64);
        tokio::time::sleep_until(at).await;
        let call = Call {
            id,
            key: u8::try_from(id % u64::from(keys.max(1))).unwrap_or(0),
        };
        let svc = stack.clone();
        tasks.push(tokio::spawn(async move {
            let begun = Instant::now();
            let r = svc.oneshot(call).await;
            let ok = matches!(r, Ok(Resp { status: 200, .. }));
            (
                call,
                begun.duration_since(start).mul_f64(scale),
                Instant::now().duration_since(start).mul_f64(scale),
                ok,
            )
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok((call, start, end, ok)) = t.await {
            out.push(Done {
                call,
                start,
                end,
                ok,
            });
        }
    }
    out
}

/// Success rate of the calls that started in `[from, to)` seconds and pass `keep`.
pub fn success(done: &[Done], from: f64, to: f64, keep: impl Fn(&Done) -> bool) -> (f64, usize) {
    let sel: Vec<&Done> = done
        .iter()
        .filter(|d| d.start.as_secs_f64() >= from && d.start.as_secs_f64() < to && keep(d))
        .collect();
    let ok = sel.iter().filter(|d| d.ok).count();
    if sel.is_empty() {
        (1.0, 0)
    } else {
        (ok as f64 / sel.len() as f64, sel.len())
    }
}

/// The dead-letter store of a rampart stack.
pub fn store() -> MemoryStore {
    MemoryStore::new(1_000_000)
}

fn extract(call: &Call) -> RequestPart {
    RequestPart {
        summary: format!("call {} key {}", call.id, call.key),
        payload: serde_json::json!({ "id": call.id, "key": call.key }),
    }
}

/// A rampart policy in front of `upstream`, dead-lettering into `store`.
pub fn rampart_stack(policy: &Policy, upstream: Upstream, store: MemoryStore) -> Stack {
    let layer = policy.layer(classify, store, extract);
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(upstream)
        .map_err(BoxError::from);
    BoxCloneService::new(svc)
}

/// A rampart policy with a per-key breaker in front of `upstream`.
pub fn rampart_keyed_stack(policy: &Policy, upstream: Upstream, store: MemoryStore) -> Stack {
    let layer = policy.keyed_layer(classify, store, extract, |c: &Call| c.key);
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(upstream)
        .map_err(BoxError::from);
    BoxCloneService::new(svc)
}

/// A policy for HTTP requests (`Policy::http_layer`, so the policy's own `BreakerKey`
/// applies — e.g. `key = "header:x-key"` from a config file) in front of `upstream`: each
/// call travels through the policy as an `http::Request<()>` with its key in the `x-key`
/// header and the call itself in the request's extensions.
#[cfg(any(feature = "http", feature = "client", feature = "grpc"))]
pub fn rampart_http_stack(policy: &Policy, upstream: Upstream, store: MemoryStore) -> Stack {
    fn call_of(req: &http::Request<()>) -> Call {
        req.extensions().get::<Call>().copied().unwrap_or(Call {
            id: u64::MAX,
            key: 0,
        })
    }
    let layer = policy.http_layer(classify, store, |req: &http::Request<()>| {
        extract(&call_of(req))
    });
    let svc = tower::ServiceBuilder::new()
        .map_request(|call: Call| {
            let mut req = http::Request::new(());
            if let Ok(v) = http::HeaderValue::try_from(call.key.to_string()) {
                req.headers_mut().insert("x-key", v);
            }
            req.extensions_mut().insert(call);
            req
        })
        .layer(layer)
        .map_request(|req: http::Request<()>| call_of(&req))
        .service(upstream)
        .map_err(BoxError::from);
    BoxCloneService::new(svc)
}

/// The reference design's numbers taken literally: the preset's retries and backoff, no
/// retry budget, a breaker that opens after 5 consecutive failures for 60 s and closes after
/// 3 successful probes. (This was also rampart's preset before the load work.)
pub fn naive_policy(preset: &str, attempt_timeout: Option<Duration>) -> Policy {
    let breaker = rampart::breaker::CircuitBreakerConfig::builder()
        .consecutive_failures(Some(5))
        .window(None)
        .recovery_timeout(Duration::from_secs(60))
        .max_recovery_timeout(Duration::from_secs(60))
        .permitted_probes(3)
        .success_threshold(3)
        .build()
        .ok();
    let mut b = Policy::preset(preset)
        .unwrap_or_else(|| Policy::builder(preset))
        .budget(None)
        .breaker(breaker)
        .attempt_timeout(attempt_timeout)
        .seed(Some(7));
    if let Some(t) = attempt_timeout {
        b = b.deadline(Some(t * 10));
    }
    match b.build() {
        Ok(p) => p,
        Err(e) => panic!("naive policy: {e}"),
    }
}

/// tower's own retry with a `TpsBudget` (its defaults: 10 s window, 10 retries/s floor, 20 %
/// of requests), the preset's retries and exponential backoff (no jitter, hints ignored),
/// and tower's timeout per attempt.
pub fn tower_stack(preset: &Policy, upstream: Upstream, scale: f64) -> Stack {
    use tower::retry::budget::{Budget, TpsBudget};

    #[derive(Clone)]
    struct TowerPolicy {
        budget: Arc<TpsBudget>,
        left: u32,
        delay: Duration,
        max: Duration,
        factor: f64,
    }
    impl tower::retry::Policy<Call, Resp, BoxError> for TowerPolicy {
        type Future = tokio::time::Sleep;
        fn retry(
            &mut self,
            _req: &mut Call,
            r: &mut Result<Resp, BoxError>,
        ) -> Option<Self::Future> {
            let failed = match r {
                Ok(resp) => !(200..300).contains(&resp.status),
                Err(_) => true,
            };
            if !failed {
                self.budget.deposit();
                return None;
            }
            if self.left == 0 || !self.budget.withdraw() {
                return None;
            }
            self.left -= 1;
            let d = self.delay;
            self.delay = self.delay.mul_f64(self.factor).min(self.max);
            Some(tokio::time::sleep(d))
        }
        fn clone_request(&mut self, req: &Call) -> Option<Call> {
            Some(*req)
        }
    }
    let b = preset.backoff();
    let policy = TowerPolicy {
        budget: Arc::new(TpsBudget::default()),
        left: b.max_retries(),
        delay: b.base_delay().div_f64(scale),
        max: b.max_delay().div_f64(scale),
        factor: b.factor(),
    };
    let timeout = preset
        .attempt_timeout()
        .map_or(Duration::from_secs(3600), |t| t.div_f64(scale));
    let svc = tower::ServiceBuilder::new()
        .map_err(BoxError::from)
        .retry(policy)
        .timeout(timeout)
        .service(upstream);
    BoxCloneService::new(svc)
}

/// The measures of one run.
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: &'static str,
    pub stack: String,
    pub done: Vec<Done>,
    pub calls: usize,
    pub arrivals: u64,
    pub early: u64,
    pub upstream: Upstream,
    /// Dead letters: (call id, attempts recorded, reason, error text).
    pub dead: Vec<(u64, u32, String, String)>,
}

impl Report {
    pub fn success(&self) -> f64 {
        success(&self.done, 0.0, f64::MAX, |_| true).0
    }
    pub fn attempts_per_call(&self) -> f64 {
        self.arrivals as f64 / self.calls.max(1) as f64
    }
    pub fn failed(&self) -> usize {
        self.done.iter().filter(|d| !d.ok).count()
    }
    /// Dead letters whose recorded attempts differ from the upstream's count for that call.
    pub fn untrue_attempts(&self) -> usize {
        self.dead
            .iter()
            .filter(|(id, a, _, _)| self.upstream.arrivals_of(*id) != *a)
            .count()
    }
}

/// Reads every dead letter of `store`.
pub async fn dead_letters(store: &MemoryStore) -> Vec<(u64, u32, String, String)> {
    let page = store.list(ListQuery::newest(1_000_000)).await;
    let Ok(page) = page else { return Vec::new() };
    page.records
        .iter()
        .map(|r| {
            (
                r.request.payload["id"].as_u64().unwrap_or(u64::MAX),
                r.attempts,
                r.reason.as_str().to_owned(),
                r.error.clone(),
            )
        })
        .collect()
}

/// Which stack to run.
#[derive(Debug, Clone)]
pub enum Kind {
    /// The policy as given (a preset, possibly adjusted).
    Rampart(Policy),
    /// The policy with a per-key breaker.
    RampartKeyed(Policy),
    /// The policy over `http::Request`s (`Policy::http_layer`): keyed by its own
    /// `BreakerKey` if it has one (requests carry their key in `x-key`).
    #[cfg(any(feature = "http", feature = "client", feature = "grpc"))]
    RampartHttp(Policy),
    /// The reference design's naive numbers for this preset.
    Naive(Policy),
    /// tower retry + TpsBudget with this preset's retries and backoff.
    Tower(Policy),
}

/// Runs `scenario` at `rate` calls/s for `secs` seconds against `kind`.
pub async fn run(scenario: &Scenario, kind: &Kind, rate: u32, secs: u32, scale: f64) -> Report {
    let calls = usize::try_from(u64::from(rate) * u64::from(secs)).unwrap_or(0);
    let upstream = Upstream::new(scenario.clone(), calls, scale);
    let store = store();
    let (stack, label) = match kind {
        Kind::Rampart(p) => (
            rampart_stack(&scaled(p, scale), upstream.clone(), store.clone()),
            label(p),
        ),
        Kind::RampartKeyed(p) => (
            rampart_keyed_stack(&scaled(p, scale), upstream.clone(), store.clone()),
            format!("rampart {} keyed", p.name()),
        ),
        #[cfg(any(feature = "http", feature = "client", feature = "grpc"))]
        Kind::RampartHttp(p) => (
            rampart_http_stack(&scaled(p, scale), upstream.clone(), store.clone()),
            match p.breaker_key() {
                Some(k) => format!("rampart {} http keyed by {k}", p.name()),
                None => format!("rampart {} http", p.name()),
            },
        ),
        Kind::Naive(p) => (
            rampart_stack(&scaled(p, scale), upstream.clone(), store.clone()),
            format!("naive {}", p.name()),
        ),
        Kind::Tower(p) => (
            tower_stack(p, upstream.clone(), scale),
            format!("tower+TpsBudget {}", p.name()),
        ),
    };
    let done = drive(stack, rate, secs, scenario.keys, scale).await;
    // Let background work (dead-letter writes) settle.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let dead = dead_letters(&store).await;
    Report {
        scenario: scenario.name,
        stack: label,
        calls: done.len(),
        arrivals: upstream.arrivals(),
        early: upstream.early_retries(),
        done,
        upstream,
        dead,
    }
}

/// "rampart NAME", plus `max_retries=N` when it is not the preset's.
fn label(p: &Policy) -> String {
    let name = p.name();
    let preset =
        Policy::preset(name.as_str()).map(|b| b.build().map(|q| q.backoff().max_retries()));
    match preset {
        Some(Ok(n)) if n != p.backoff().max_retries() => {
            format!("rampart {name} max_retries={}", p.backoff().max_retries())
        }
        _ => format!("rampart {name}"),
    }
}

/// `p` with every duration divided by `scale` (for real-time runs).
pub fn scaled(p: &Policy, scale: f64) -> Policy {
    if (scale - 1.0).abs() < f64::EPSILON {
        return p.clone();
    }
    let d = |d: Duration| d.div_f64(scale);
    let b = p.backoff();
    let breaker = p.breaker().map(|c| {
        let mut cb = c
            .to_builder()
            .recovery_timeout(d(c.recovery_timeout()))
            .max_recovery_timeout(d(c.max_recovery_timeout()));
        if let Some(s) = c.slow_call_duration() {
            cb = cb.slow_call(d(s), c.slow_call_rate());
        }
        cb.build().unwrap_or_else(|_| c.clone())
    });
    let built = p
        .to_builder()
        .base_delay(d(b.base_delay()))
        .max_delay(d(b.max_delay()))
        .deadline(p.deadline().map(d))
        .attempt_timeout(p.attempt_timeout().map(d))
        .breaker(breaker)
        .build();
    match built {
        Ok(p) => p,
        Err(e) => panic!("scaled policy: {e}"),
    }
}
