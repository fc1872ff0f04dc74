//! The job series through a real Prometheus recorder.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::time::Duration;

use rampart_core::BoxError;
use rampart_dlq::MemoryStore;
use rampart_jobs::apalis_core::task::builder::TaskBuilder;
use rampart_jobs::{Job, JobLayer, JobOutcome, JobPolicy, Reschedule};
use support::{classify, Act, Upstream};
use tower_layer::Layer;
use tower_service::Service;

#[derive(Clone)]
struct Accept;
impl Reschedule for Accept {
    fn schedule(
        &self,
        _: Job,
        _: Duration,
        _: String,
    ) -> futures_util::future::BoxFuture<'static, Result<(), BoxError>> {
        Box::pin(async { Ok(()) })
    }
}

#[test]
fn runs_are_counted_under_the_request_path_names() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // Job 1: fails then succeeds (a retry, then a success after the first run);
            // job 2: permanent.
            let up = Upstream::new(|n, a| match (n, a) {
                (1, 0) => Act::Transient,
                (2, _) => Act::Permanent,
                _ => Act::Ok,
            });
            let layer = JobLayer::new(
                JobPolicy::tts_task(),
                classify,
                MemoryStore::new(100),
                Accept,
            )
            .typed::<u64>();
            let mut svc = layer.layer(up);
            let mut run = |job: Job| {
                std::future::poll_fn(|cx| svc.poll_ready(cx)).now_or_never_ready();
                svc.call(TaskBuilder::new(job).build())
            };
            let first = Job::new("tts", &1u64).unwrap();
            let out = run(first.clone()).await.unwrap();
            assert!(
                matches!(
                    out,
                    JobOutcome::Retried {
                        next_attempt: 2,
                        ..
                    }
                ),
                "{out:?}"
            );
            let out = run(first.next_attempt("o1")).await.unwrap();
            assert_eq!(out, JobOutcome::Done { attempts: 2 });
            let out = run(Job::new("tts", &2u64).unwrap()).await.unwrap();
            assert!(
                matches!(out, JobOutcome::DeadLettered { attempts: 1, .. }),
                "{out:?}"
            );
        });
    });
    let text = handle.render();
    for line in [
        "retry_attempts_total{service=\"tts\",status=\"success\"} 1",
        "jobs_total{service=\"tts\",result=\"retried\"} 1",
        "jobs_total{service=\"tts\",result=\"done\"} 1",
        "jobs_total{service=\"tts\",result=\"dead_lettered\"} 1",
        "dead_letters_total{service=\"tts\",reason=\"permanent\"} 1",
        "retry_delay_seconds_count{service=\"tts\"} 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

trait NowOrNever {
    fn now_or_never_ready(self);
}

impl<F: std::future::Future<Output = Result<(), rampart_jobs::JobError>> + Unpin> NowOrNever for F {
    fn now_or_never_ready(mut self) {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match std::pin::Pin::new(&mut self).poll(&mut cx) {
            std::task::Poll::Ready(r) => r.unwrap(),
            std::task::Poll::Pending => panic!("handler not ready"),
        }
    }
}
