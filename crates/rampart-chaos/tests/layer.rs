//! The layer injects what the spec says, measured at the caller, on tokio's paused clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::time::Duration;

use rampart_chaos::{ChaosError, ChaosLayer, ChaosSpec, FaultKind};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};

type Req = (&'static str, u32);

fn svc(
    spec: &str,
    seed: u64,
) -> (
    impl Service<Req, Response = u32, Error = ChaosError<Infallible>> + Clone,
    rampart_chaos::ChaosHandle,
) {
    let spec: ChaosSpec = spec.parse().unwrap();
    let layer = ChaosLayer::new(spec)
        .seed(seed)
        .epoch(Instant::now())
        .key_by(|r: &Req| Some(r.0));
    let h = layer.handle();
    (
        layer.layer(service_fn(|r: Req| async move { Ok::<_, Infallible>(r.1) })),
        h,
    )
}

/// The kind of each of `n` calls (None = passed), one every `every`.
async fn run(
    spec: &str,
    seed: u64,
    n: u32,
    every: Duration,
    key: &'static str,
) -> Vec<Option<FaultKind>> {
    let (s, _) = svc(spec, seed);
    let mut out = Vec::new();
    for i in 0..n {
        out.push(match s.clone().oneshot((key, i)).await {
            Ok(_) => None,
            Err(ChaosError::Injected(f)) => Some(f.kind),
            Err(ChaosError::Inner(e)) => match e {},
        });
        tokio::time::sleep(every).await;
    }
    out
}

#[tokio::test(start_paused = true)]
async fn rates_are_what_the_spec_says() {
    let kinds = run(
        "transient=20%, throttled=5%, permanent=1%",
        3,
        20_000,
        Duration::ZERO,
        "a",
    )
    .await;
    let share = |k| kinds.iter().filter(|x| **x == Some(k)).count() as f64 / 20_000.0;
    assert!(
        (share(FaultKind::Transient) - 0.20).abs() < 0.015,
        "{}",
        share(FaultKind::Transient)
    );
    assert!((share(FaultKind::Throttled) - 0.05).abs() < 0.008);
    assert!((share(FaultKind::Permanent) - 0.01).abs() < 0.004);
}

#[tokio::test(start_paused = true)]
async fn same_seed_same_faults_other_seed_others() {
    let a = run(
        "transient=30%, latency=exp(5ms)",
        42,
        500,
        Duration::from_millis(3),
        "a",
    )
    .await;
    let b = run(
        "transient=30%, latency=exp(5ms)",
        42,
        500,
        Duration::from_millis(3),
        "a",
    )
    .await;
    let c = run(
        "transient=30%, latency=exp(5ms)",
        43,
        500,
        Duration::from_millis(3),
        "a",
    )
    .await;
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[tokio::test(start_paused = true)]
async fn outage_covers_exactly_its_window() {
    // One call a second for 100 s; the outage is [30 s, 50 s).
    let kinds = run("outage=30s+20s", 1, 100, Duration::from_secs(1), "a").await;
    for (t, k) in kinds.iter().enumerate() {
        let want = (30..50).contains(&t).then_some(FaultKind::Outage);
        assert_eq!(*k, want, "second {t}");
    }
}

#[tokio::test(start_paused = true)]
async fn storm_throttles_with_its_hint() {
    let (s, h) = svc("storm=10s+5s@7s", 1);
    tokio::time::advance(Duration::from_secs(12)).await;
    match s.clone().oneshot(("a", 1)).await {
        Err(ChaosError::Injected(f)) => {
            assert_eq!(f.kind, FaultKind::Storm);
            assert_eq!(f.retry_after, Some(Duration::from_secs(7)));
        }
        other => panic!("{other:?}"),
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(s.clone().oneshot(("a", 2)).await.unwrap(), 2);
    assert_eq!(h.stats().storm, 1);
    assert_eq!(h.stats().passed, 1);
}

#[tokio::test(start_paused = true)]
async fn latency_distributions() {
    let (s, _) = svc("latency=250ms", 1);
    let t = Instant::now();
    s.clone().oneshot(("a", 1)).await.unwrap();
    assert_eq!(t.elapsed(), Duration::from_millis(250));

    let (s, _) = svc("latency=uniform(100ms..300ms)", 1);
    let mut total = Duration::ZERO;
    for i in 0..2_000 {
        let t = Instant::now();
        s.clone().oneshot(("a", i)).await.unwrap();
        let d = t.elapsed();
        assert!(
            d >= Duration::from_millis(100) && d <= Duration::from_millis(301),
            "{d:?}"
        );
        total += d;
    }
    let mean = total / 2_000;
    assert!(
        mean > Duration::from_millis(190) && mean < Duration::from_millis(210),
        "{mean:?}"
    );

    let (s, _) = svc("latency=exp(50ms)", 1);
    let mut total = Duration::ZERO;
    for i in 0..4_000 {
        let t = Instant::now();
        s.clone().oneshot(("a", i)).await.unwrap();
        total += t.elapsed();
    }
    let mean = total / 4_000;
    assert!(
        mean > Duration::from_millis(45) && mean < Duration::from_millis(55),
        "{mean:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn per_key_faults_hit_only_their_key() {
    let down = run(
        "key(b).transient=100%, transient=10%",
        5,
        2_000,
        Duration::ZERO,
        "b",
    )
    .await;
    assert!(down.iter().all(|k| *k == Some(FaultKind::Transient)));
    let other = run(
        "key(b).transient=100%, transient=10%",
        5,
        2_000,
        Duration::ZERO,
        "a",
    )
    .await;
    let share = other.iter().filter(|k| k.is_some()).count() as f64 / 2_000.0;
    assert!((share - 0.10).abs() < 0.03, "{share}");
}

#[tokio::test(start_paused = true)]
async fn the_spec_can_change_while_running() {
    let (s, h) = svc("", 1);
    assert!(s.clone().oneshot(("a", 1)).await.is_ok());
    h.set_spec("transient=100%".parse().unwrap());
    assert!(s.clone().oneshot(("a", 2)).await.is_err());
    h.set_spec(ChaosSpec::none());
    assert!(s.clone().oneshot(("a", 3)).await.is_ok());
    let st = h.stats();
    assert_eq!(
        (st.calls, st.passed, st.transient, st.faults()),
        (3, 2, 1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn an_injected_fault_never_reaches_the_inner_service() {
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let r = reached.clone();
    let layer = ChaosLayer::new("transient=50%".parse().unwrap()).seed(9);
    let h = layer.handle();
    let s = layer.layer(service_fn(move |_: u32| {
        r.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async { Ok::<_, Infallible>(()) }
    }));
    for i in 0..1_000 {
        let _ = s.clone().oneshot(i).await;
    }
    assert_eq!(
        u64::from(reached.load(std::sync::atomic::Ordering::Relaxed)),
        h.stats().passed
    );
    assert!(h.stats().passed > 400 && h.stats().passed < 600);
}
