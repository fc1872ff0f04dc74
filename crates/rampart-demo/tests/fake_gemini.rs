//! The demo's embedded Gemini-shaped server against the library's real HTTP client and
//! Gemini classifier over loopback, and its WAV/tone helpers at their bounds.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use rampart::client::{HttpClient, HttpError};
use rampart::gemini::GeminiClassifier;
use rampart::{Classify, Outcome};
use tower::ServiceExt;

fn quiet() -> rampart_demo::FaultMix {
    "".parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_gemini_answers_in_the_real_format() {
    use rampart::gemini::{decode_audio, tts_request};
    use rampart_demo::{wav, FakeGemini, FaultMix};
    let quiet: FaultMix = "".parse().unwrap();
    let server = FakeGemini::start(quiet, 1).await.unwrap();
    let req = tts_request(
        &server.base_url(),
        rampart::gemini::DEFAULT_MODEL,
        "k",
        "hello",
        "Kore",
    )
    .unwrap();
    let res = HttpClient::new().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let pcm = decode_audio(res.body()).unwrap();
    assert_eq!(
        pcm.len(),
        24_000 / 4 * 2,
        "a quarter second of 16-bit mono at 24 kHz"
    );
    assert_eq!(&wav(&pcm, 24_000)[..4], b"RIFF");
    // Without a key: UNAUTHENTICATED, rejected.
    let mut req = tts_request(&server.base_url(), "m", "k", "hello", "Kore").unwrap();
    req.headers_mut().remove("x-goog-api-key");
    let res = HttpClient::new().oneshot(req).await.unwrap();
    assert_eq!(
        Classify::<_, HttpError>::classify(&GeminiClassifier::default(), Ok(&res)),
        Outcome::Rejected
    );
    // Bad fault mixes are refused with a reason.
    assert!("429=2"
        .parse::<FaultMix>()
        .unwrap_err()
        .contains("fraction"));
    assert!("boom=0.1"
        .parse::<FaultMix>()
        .unwrap_err()
        .contains("unknown fault"));
}

#[test]
fn long_tones_and_odd_sample_rates_do_not_overflow() {
    use rampart_demo::{tone, wav};
    // 180 s at 24 kHz is 4.32e9 > u32::MAX before the division by 1000.
    assert_eq!(tone(180_000, 440.0).len(), 24_000 * 180 * 2);
    let w = wav(&[0u8; 4], u32::MAX);
    assert_eq!(w.len(), 48);
    assert_eq!(w[28..32], u32::MAX.to_le_bytes(), "byte rate saturates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_window_past_the_end_of_time_does_not_panic_the_fake_server() {
    use rampart::client::HttpClient;
    use rampart::gemini::tts_request;
    use rampart_demo::{FakeGemini, FaultMix};
    use tower::ServiceExt;
    // `from + len` overflowed a `Duration` in the server's request handler.
    let mix = FaultMix {
        outage: Some((Duration::from_nanos(1), Duration::MAX)),
        ..quiet()
    };
    let server = FakeGemini::start(mix, 1).await.unwrap();
    for expect in [200, 503] {
        let req = tts_request(&server.base_url(), "m", "k", "hello", "Kore").unwrap();
        let res = HttpClient::new().oneshot(req).await.unwrap();
        assert_eq!(res.status(), expect);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
