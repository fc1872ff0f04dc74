//! Replaying `http::Request`s with streaming bodies.
#![cfg(feature = "http")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use rampart_core::{ErrorKind, Outcome};
use rampart_retry::{BufferBodyLayer, HttpReplay, ReplayBody, RetryLayer};
use tower::{ServiceBuilder, ServiceExt};

type Chunks = StreamBody<stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn streaming(chunks: &[&'static str]) -> Chunks {
    let frames: Vec<_> = chunks
        .iter()
        .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
        .collect();
    StreamBody::new(stream::iter(frames))
}

#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: http::Method,
    uri: String,
    header: Option<String>,
    ext: Option<&'static str>,
    body: Bytes,
}

#[derive(Debug)]
struct Unavailable;
impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("503")
    }
}
impl std::error::Error for Unavailable {}
rampart_core::leaf_error!(Unavailable);

/// A service that records what each attempt received, and fails the first `fail` attempts.
fn recording(
    fail: usize,
) -> (
    impl tower::Service<
            http::Request<ReplayBody<Chunks>>,
            Response = Seen,
            Error = Unavailable,
            Future = impl Send,
        > + Clone,
    Arc<Mutex<Vec<Seen>>>,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let svc = tower::service_fn(move |req: http::Request<ReplayBody<Chunks>>| {
        let log = log.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map_err(|_| Unavailable)?.to_bytes();
            let s = Seen {
                method: parts.method,
                uri: parts.uri.to_string(),
                header: parts
                    .headers
                    .get("x-goog-request")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                ext: parts.extensions.get::<&'static str>().copied(),
                body,
            };
            let mut l = log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            l.push(s.clone());
            if l.len() <= fail {
                Err(Unavailable)
            } else {
                Ok(s)
            }
        }
    });
    (svc, seen)
}

fn request(chunks: &[&'static str]) -> http::Request<Chunks> {
    let mut req = http::Request::post("http://tts.local/v1beta/models/tts:generateContent")
        .header("x-goog-request", "abc")
        .body(streaming(chunks))
        .expect("valid request");
    req.extensions_mut().insert("trace-7");
    req
}

fn transient(r: Result<&Seen, &Unavailable>) -> Outcome {
    if r.is_ok() {
        Outcome::Success
    } else {
        Outcome::TRANSIENT
    }
}

#[tokio::test(start_paused = true)]
async fn a_buffered_streaming_body_is_replayed_with_its_parts() {
    let (svc, seen) = recording(2);
    let svc = ServiceBuilder::new()
        .layer(BufferBodyLayer::new(1024))
        .layer(RetryLayer::new(transient).replay(HttpReplay))
        .service(svc);
    let ok = svc
        .oneshot(request(&["hello ", "streaming ", "world"]))
        .await
        .expect("third attempt");
    let seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|s| *s == ok),
        "every attempt saw the same request: {seen:?}"
    );
    assert_eq!(ok.body, Bytes::from("hello streaming world"));
    assert_eq!(ok.method, http::Method::POST);
    assert_eq!(ok.header.as_deref(), Some("abc"));
    assert_eq!(ok.ext, Some("trace-7"));
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_limit_streams_once_and_is_not_retried() {
    let (svc, seen) = recording(1);
    let svc = ServiceBuilder::new()
        .layer(BufferBodyLayer::new(8))
        .layer(RetryLayer::new(transient).replay(HttpReplay))
        .service(svc);
    let err = svc
        .oneshot(request(&["0123456", "789", "abc"]))
        .await
        .expect_err("not replayable");
    let seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    assert_eq!(seen.len(), 1, "sent once");
    assert_eq!(
        seen[0].body,
        Bytes::from("0123456789abc"),
        "the whole body was streamed"
    );
    match err.kind() {
        ErrorKind::NotReplayable { reason, .. } => {
            assert_eq!(
                reason.reason(),
                "request body exceeds the replay buffer limit of 8 bytes"
            )
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "request cannot be replayed: request body exceeds the replay buffer limit of 8 bytes"
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_exactly_at_the_limit_is_replayable() {
    let (svc, seen) = recording(1);
    let svc = ServiceBuilder::new()
        .layer(BufferBodyLayer::new(10))
        .layer(RetryLayer::new(transient).replay(HttpReplay))
        .service(svc);
    svc.oneshot(request(&["01234", "56789"]))
        .await
        .expect("retried once");
    assert_eq!(
        seen.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len(),
        2
    );
}

/// What a dead-letter layer keeps of a request (`Replay::keep`): the buffered body itself
/// (sharing its bytes), or, over the limit, its start marked cut, which neither replays nor
/// pretends to be whole.
#[tokio::test]
async fn keep_shares_the_buffer_or_marks_the_start_cut() {
    use rampart_retry::Replay;

    let kept = Arc::new(Mutex::new(Vec::new()));
    let log = kept.clone();
    let svc = ServiceBuilder::new()
        .layer(BufferBodyLayer::new(4))
        .service(tower::service_fn(
            move |req: http::Request<ReplayBody<Chunks>>| {
                let copy = HttpReplay
                    .keep(&req)
                    .expect("HttpReplay always keeps a copy");
                log.lock().unwrap().push((
                    copy.body().buffered().to_vec(),
                    copy.body().cut(),
                    HttpReplay.replay(&copy).is_ok(),
                ));
                async move { req.into_body().collect().await.map(|b| b.to_bytes()) }
            },
        ));

    // Within the limit: the whole body, replayable.
    let small = http::Request::post("http://x/a")
        .body(streaming(&["ab", "c"]))
        .unwrap();
    assert_eq!(
        svc.clone().oneshot(small).await.unwrap(),
        Bytes::from("abc")
    );
    // Over it: the start that was read (the first chunks past the limit), cut, not
    // replayable; the request itself still streams whole.
    let big = http::Request::post("http://x/b")
        .body(streaming(&["abc", "def", "ghi"]))
        .unwrap();
    assert_eq!(svc.oneshot(big).await.unwrap(), Bytes::from("abcdefghi"));

    let kept = kept.lock().unwrap();
    assert_eq!(kept[0], (b"abc".to_vec(), None, true));
    assert_eq!(kept[1], (b"abcdef".to_vec(), Some(6), false));
}
