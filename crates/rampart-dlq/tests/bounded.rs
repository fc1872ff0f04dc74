//! Bounded records and faithful redrive: a record over the cap is cut (never acknowledged and
//! then lost), marked `truncated` with its original size; a request that was not kept whole
//! is never replayed, and the report says why.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use rampart_core::classify::IoErrors;
use rampart_dlq::store::encode_capped;
use rampart_dlq::{
    redrive, DeadLetterLayer, DeadLetterReason, DeadLetterRecord, DeadLetterStore, ListQuery,
    MemoryStore, NotKeptWhole, Pushed, RequestPart, SkipReason, DEFAULT_MAX_RECORD_BYTES,
    MIN_RECORD_BYTES,
};
use serde_json::{json, Value};
use tower::{service_fn, Layer, ServiceExt};

const FIVE_MIB: usize = 5 << 20;

fn huge_record() -> DeadLetterRecord {
    DeadLetterRecord::new("tts", DeadLetterReason::RetriesExhausted)
        .error("e".repeat(10_000))
        .request(RequestPart {
            summary: "big".into(),
            payload: json!({ "text": "a".repeat(FIVE_MIB), "voice": "Kore" }),
        })
}

fn assert_cut(r: &DeadLetterRecord, original_at_least: usize) {
    assert!(r.truncated, "marked truncated");
    assert!(
        r.original_size.unwrap() >= original_at_least as u64,
        "{:?}",
        r.original_size
    );
    assert!(r.to_json().unwrap().len() <= DEFAULT_MAX_RECORD_BYTES);
    assert!(matches!(
        r.kept_whole(),
        Err(NotKeptWhole::Truncated { .. })
    ));
}

#[tokio::test]
async fn a_5_mib_payload_through_the_layer_is_stored_cut_and_readable() {
    let store = MemoryStore::default();
    let layer = DeadLetterLayer::new(
        rampart_dlq::DeadLetterConfig::builder()
            .classifier(IoErrors)
            .build()
            .unwrap(),
        store.clone(),
    );
    let svc = layer.layer(service_fn(|_: Value| async {
        Err::<(), _>(io::Error::other("too big"))
    }));
    let payload = json!({ "text": "a".repeat(FIVE_MIB), "voice": "Kore" });
    assert!(svc.oneshot(payload).await.is_err());
    let page = store.list(ListQuery::newest(10)).await.unwrap();
    assert_eq!(page.records.len(), 1);
    let r = &page.records[0];
    assert_cut(r, FIVE_MIB);
    assert_eq!(
        r.request.payload["voice"], "Kore",
        "the small fields are kept"
    );
    assert!(r.error.ends_with("too big"), "{}", r.error);
}

#[tokio::test]
async fn a_record_over_the_cap_pushed_straight_to_the_memory_store_is_kept_cut() {
    let store = MemoryStore::default();
    let r = huge_record();
    assert_eq!(store.push(r.clone()).await.unwrap(), Pushed::Stored);
    let back = store.get(r.id).await.unwrap().expect("never lost");
    assert_cut(&back, FIVE_MIB);
    assert_eq!(
        back.error, r.error,
        "the error fits once the payload is cut"
    );
    // A smaller cap, configured.
    let small = MemoryStore::default().max_record_bytes(64 * 1024);
    small.push(r.clone()).await.unwrap();
    let back = small.get(r.id).await.unwrap().unwrap();
    assert!(back.to_json().unwrap().len() <= 64 * 1024 && back.truncated);
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_record_over_the_old_journal_frame_is_kept_cut_across_a_reopen() {
    // The retired file journal's frame was 16 MiB: a larger record used to be acknowledged,
    // then lost with every record after it on the next open. The SQLite store caps it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.sqlite");
    let big = DeadLetterRecord::new("tts", DeadLetterReason::Permanent).request(RequestPart {
        summary: "huge".into(),
        payload: json!({ "text": "a".repeat(17 << 20) }),
    });
    let after = DeadLetterRecord::new("tts", DeadLetterReason::Permanent);
    {
        let store = rampart_dlq::SqliteStore::open(&path, 100).unwrap();
        assert_eq!(store.push(big.clone()).await.unwrap(), Pushed::Stored);
        assert_eq!(store.push(after.clone()).await.unwrap(), Pushed::Stored);
    }
    let store = rampart_dlq::SqliteStore::open(&path, 100).unwrap();
    let back = store.get(big.id).await.unwrap().expect("never lost");
    assert_cut(&back, 17 << 20);
    assert!(store.get(after.id).await.unwrap().is_some());
}

#[cfg(feature = "http")]
#[tokio::test]
async fn a_binary_body_cut_by_the_store_stays_valid_base64() {
    use base64::Engine as _;
    use rampart_dlq::Extract;
    let body: Vec<u8> = (0..FIVE_MIB).map(|i| (i % 251) as u8 | 0x80).collect();
    let req = http::Request::post("http://h/upload")
        .body(bytes::Bytes::from(body.clone()))
        .unwrap();
    let x = rampart_dlq::HttpExtractor::default().body_limit(usize::MAX);
    let whole = x.extract_whole(&req);
    assert_eq!(whole.part.payload["body_encoding"], "base64");
    assert!(!whole.truncated, "the extractor was told to keep it all");
    let store = MemoryStore::default();
    let r = DeadLetterRecord::new("upload", DeadLetterReason::Permanent).request(whole.part);
    store.push(r.clone()).await.unwrap();
    let back = store.get(r.id).await.unwrap().unwrap();
    assert_cut(&back, FIVE_MIB);
    assert_eq!(back.request.payload["body_truncated"], true);
    let kept = base64::engine::general_purpose::STANDARD
        .decode(back.request.payload["body"].as_str().unwrap())
        .expect("still base64");
    assert!(kept.len() > 512 * 1024 && body.starts_with(&kept));
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_the_cap_pushed_to_redis_is_kept_cut() {
    let url = "redis://127.0.0.1:6379";
    let prefix = format!("bounded-{}", rampart_dlq::RecordId::new());
    let store = match rampart_dlq::RedisStore::connect(url, &prefix, 100).await {
        Ok(s) => s,
        Err(e) => return support::skip(&format!("no redis at {url}: {e}")),
    };
    let r = huge_record();
    assert_eq!(store.push(r.clone()).await.unwrap(), Pushed::Stored);
    let back = store.get(r.id).await.unwrap().expect("never lost");
    assert_cut(&back, FIVE_MIB);
    let mut con = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let raw: Vec<u8> = redis::cmd("HGET")
        .arg(store.records_key())
        .arg(r.id.to_string())
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(raw.len() <= DEFAULT_MAX_RECORD_BYTES, "{}", raw.len());
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{prefix}*"))
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut con)
        .await
        .unwrap();
}

#[test]
fn old_records_without_the_new_fields_still_read() {
    let r = DeadLetterRecord::new("db", DeadLetterReason::Permanent);
    let mut v: Value = serde_json::to_value(&r).unwrap();
    let o = v.as_object_mut().unwrap();
    for k in ["truncated", "original_size", "request_redacted"] {
        o.remove(k);
    }
    let back: DeadLetterRecord = serde_json::from_value(v).unwrap();
    assert_eq!(back, r);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the record and the cap, the encoding fits, reads back, and is marked cut
    /// exactly when something had to be cut.
    #[test]
    fn encode_capped_always_fits_and_reads_back(
        text in "\\PC{0,3000}",
        error in "\\PC{0,3000}",
        strings in proptest::collection::vec("[a-zé\"\\\\\\n]{0,500}", 0..40),
        cap in 0usize..20_000,
    ) {
        let r = DeadLetterRecord::new("svc", DeadLetterReason::Permanent)
            .error(error)
            .request(RequestPart { summary: text.clone(), payload: json!({ "text": text, "list": strings }) });
        let whole = r.to_json().unwrap();
        let json = encode_capped(&r, cap).unwrap();
        prop_assert!(json.len() <= cap.max(MIN_RECORD_BYTES));
        let back = DeadLetterRecord::from_json(&json).unwrap();
        prop_assert_eq!(back.id, r.id);
        prop_assert_eq!(back.truncated, whole.len() > cap.max(MIN_RECORD_BYTES));
        if back.truncated {
            prop_assert_eq!(back.original_size, Some(whole.len() as u64));
        } else {
            prop_assert_eq!(back, r);
        }
    }
}

#[tokio::test]
async fn redrive_skips_records_not_kept_whole_and_says_why() {
    let store = MemoryStore::default();
    let whole =
        DeadLetterRecord::new("orders", DeadLetterReason::RetriesExhausted).request(RequestPart {
            summary: "order 1".into(),
            payload: json!(1),
        });
    let mut cut =
        DeadLetterRecord::new("orders", DeadLetterReason::RetriesExhausted).request(RequestPart {
            summary: "order 2".into(),
            payload: json!(2),
        });
    cut.truncated = true;
    cut.original_size = Some(9_000_000);
    let mut redacted =
        DeadLetterRecord::new("orders", DeadLetterReason::RetriesExhausted).request(RequestPart {
            summary: "order 3".into(),
            payload: json!(3),
        });
    redacted.request_redacted = true;
    // An HTTP record from before `truncated` existed: only its payload says it was cut.
    let old_cut =
        DeadLetterRecord::new("orders", DeadLetterReason::RetriesExhausted).request(RequestPart {
            summary: "order 4".into(),
            payload: json!({ "n": 4, "body_truncated": true, "body_size": 70_000 }),
        });
    let body_redacted = DeadLetterRecord::new("orders", DeadLetterReason::RetriesExhausted)
        .request(RequestPart {
            summary: "order 5".into(),
            payload: json!({ "n": 5, "body_redacted": true }),
        });
    let ids = [whole.id, cut.id, redacted.id, old_cut.id, body_redacted.id];
    for r in [whole, cut, redacted, old_cut, body_redacted] {
        store.push(r).await.unwrap();
    }
    let sent = Arc::new(Mutex::new(Vec::new()));
    let s = sent.clone();
    let svc = service_fn(move |n: u64| {
        s.lock().unwrap().push(n);
        async { Ok::<_, io::Error>(()) }
    });
    let report = redrive(
        &store,
        &ids,
        svc,
        |r| {
            r.request
                .payload
                .as_u64()
                .or_else(|| r.request.payload["n"].as_u64())
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        *sent.lock().unwrap(),
        vec![1],
        "only the whole request is replayed"
    );
    assert_eq!(
        (report.redriven, report.failed_again, report.skipped),
        (1, 0, 4)
    );
    let why: Vec<String> = report.skips.iter().map(|s| s.reason.to_string()).collect();
    assert_eq!(
        why,
        [
            "request truncated (originally 9000000 bytes)",
            "request changed by redaction (payload)",
            "request truncated (originally 70000 bytes)",
            "request changed by redaction (body)",
        ]
    );
    assert!(report
        .skips
        .iter()
        .all(|s| matches!(s.reason, SkipReason::NotKeptWhole(_))));
    assert_eq!(
        store.stats().await.unwrap().records,
        4,
        "skipped records stay"
    );
}

#[cfg(feature = "http")]
#[test]
fn http_records_say_whether_they_were_kept_whole() {
    use rampart_dlq::{Extract, HttpExtractor};
    let x = HttpExtractor::default().keep_header("authorization");
    let rec = |req: http::Request<bytes::Bytes>| {
        DeadLetterRecord::new("api", DeadLetterReason::Permanent).request(x.extract(&req))
    };
    // A secret header alone: the rest replays (the target's own credentials apply).
    let r = rec(http::Request::post("http://h/v1")
        .header("authorization", "Bearer abcdefgh123")
        .body(bytes::Bytes::from_static(b"{\"n\":1}"))
        .unwrap());
    assert!(r.kept_whole().is_ok());
    // A secret in the URI or the body: not the request that was made.
    let r = rec(http::Request::get("http://h/v1?api_key=abcdefgh123")
        .body(bytes::Bytes::new())
        .unwrap());
    assert_eq!(r.request.payload["uri_redacted"], true);
    assert!(r.kept_whole().is_err());
}
