//! No secret reaches a store: a table of secret forms (headers of every casing, query
//! parameters, form bodies, JSON at depth, camelCase and percent-encoded names, bearer/basic
//! credentials, Google keys, JWTs, URL passwords, `key = v`, `token:v`, non-UTF-8 bodies, a
//! body cut inside a UTF-8 character, …) goes through every extractor and the layer's error
//! text into every store, and the raw stored bytes are searched for each secret — plain, hex
//! and base64 at every alignment.
//!
//! Adding a store is one line in [`every_store_keeps_no_secret`]-style tests: run
//! [`record_all`] against it and hand its raw bytes to [`assert_no_secret`].

#![cfg(feature = "http")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io;

use base64::Engine as _;
use bytes::Bytes;
use rampart_core::classify::IoErrors;
use rampart_dlq::{
    DeadLetterLayer, DeadLetterStore, Extract, HttpExtractor, JsonExtractor, ListQuery,
    MemoryStore, TtsExtractor, TtsRequest,
};
use serde_json::{json, Value};
use tower::{service_fn, Layer, ServiceExt};

/// Where a case puts its secret.
#[derive(Debug, Clone)]
enum Carrier {
    /// A request header (kept by the HTTP extractor).
    Header(&'static str, String),
    /// A query string.
    Query(String),
    /// A body with its content type.
    Body(&'static str, Vec<u8>),
    /// A JSON value (nested deeper still by the JSON extractor's input).
    Json(Value),
    /// Free text (error messages, TTS text, a text body).
    Text(String),
}

#[derive(Debug, Clone)]
struct Case {
    label: &'static str,
    /// Every one of these must be absent from the stored bytes.
    secrets: Vec<String>,
    carrier: Carrier,
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The table: at least 40 forms, each with its own secret.
fn cases() -> Vec<Case> {
    let s = |n: u32| format!("Sx{n:02}q7Zp4Lw");
    let mut v = Vec::new();
    let mut add = |label: &'static str, secrets: Vec<String>, carrier: Carrier| {
        v.push(Case {
            label,
            secrets,
            carrier,
        })
    };
    use Carrier::*;
    // Headers, every casing.
    add(
        "Authorization: Bearer",
        vec![s(1)],
        Header("Authorization", format!("Bearer {}", s(1))),
    );
    add(
        "authorization: bearer (lower)",
        vec![s(2)],
        Header("authorization", format!("bearer {}", s(2))),
    );
    add(
        "AUTHORIZATION: Basic",
        vec![s(3)],
        Header(
            "AUTHORIZATION",
            format!("Basic {}", b64(&format!("alice:{}", s(3)))),
        ),
    );
    add(
        "Proxy-Authorization: Basic",
        vec![s(4)],
        Header(
            "Proxy-Authorization",
            format!("Basic {}", b64(&format!("bob:{}", s(4)))),
        ),
    );
    add(
        "Cookie",
        vec![s(5)],
        Header("Cookie", format!("theme=dark; session={}; lang=en", s(5))),
    );
    add(
        "Set-Cookie",
        vec![s(6)],
        Header("Set-Cookie", format!("sid={}; HttpOnly", s(6))),
    );
    add("X-Api-Key", vec![s(7)], Header("X-Api-Key", s(7)));
    add("x-api-key (lower)", vec![s(8)], Header("x-api-key", s(8)));
    add(
        "X-Goog-Api-Key (mixed)",
        vec![s(9)],
        Header("X-Goog-Api-Key", s(9)),
    );
    add("api-key header", vec![s(10)], Header("api-key", s(10)));
    add("X-Auth-Token", vec![s(11)], Header("X-Auth-Token", s(11)));
    add(
        "X-Amz-Security-Token",
        vec![s(12)],
        Header("X-Amz-Security-Token", s(12)),
    );
    // Query parameters.
    add("?key=", vec![s(13)], Query(format!("q=1&key={}", s(13))));
    add(
        "?api-key=",
        vec![s(14)],
        Query(format!("api-key={}&q=1", s(14))),
    );
    add("?apikey=", vec![s(15)], Query(format!("apikey={}", s(15))));
    add(
        "?api_key=",
        vec![s(16)],
        Query(format!("api_key={}", s(16))),
    );
    add(
        "?password=",
        vec![s(17)],
        Query(format!("user=bob&password={}", s(17))),
    );
    add(
        "?access%5Ftoken=",
        vec![s(18)],
        Query(format!("access%5Ftoken={}", s(18))),
    );
    add(
        "?client_secret=",
        vec![s(19)],
        Query(format!("client_secret={}", s(19))),
    );
    add(
        "?X-Amz-Signature=",
        vec![s(20)],
        Query(format!(
            "X-Amz-Signature={}&X-Amz-Credential={}",
            s(20),
            s(21)
        )),
    );
    add(
        "?PASSWORD= (upper)",
        vec![s(22)],
        Query(format!("PASSWORD={}", s(22))),
    );
    // Form bodies.
    add(
        "form password=",
        vec![s(23)],
        Body(
            "application/x-www-form-urlencoded",
            format!("username=bob&password={}", s(23)).into_bytes(),
        ),
    );
    add(
        "form refresh_token=",
        vec![s(24)],
        Body(
            "application/x-www-form-urlencoded",
            format!("grant_type=refresh_token&refresh_token={}", s(24)).into_bytes(),
        ),
    );
    add(
        "form client_secret=",
        vec![s(25)],
        Body(
            "application/x-www-form-urlencoded",
            format!("client_id=app&client_secret={}", s(25)).into_bytes(),
        ),
    );
    // JSON at any depth, every naming style.
    add(
        "JSON api_key",
        vec![s(26)],
        Json(json!({ "api_key": s(26) })),
    );
    add("JSON apiKey", vec![s(27)], Json(json!({ "apiKey": s(27) })));
    add(
        "JSON password",
        vec![s(28)],
        Json(json!({ "user": "bob", "password": s(28) })),
    );
    add(
        "JSON token_value",
        vec![s(29)],
        Json(json!({ "token_value": s(29) })),
    );
    add(
        "JSON nested X-Api-Key",
        vec![s(30)],
        Json(json!({ "a": [{ "b": { "X-Api-Key": s(30) } }] })),
    );
    add(
        "JSON credentials object",
        vec![s(31)],
        Json(json!({ "credentials": { "user": "bob", "pass": s(31) } })),
    );
    add(
        "JSON clientSecret",
        vec![s(32)],
        Json(json!({ "config": { "clientSecret": s(32) } })),
    );
    add(
        "JSON accessToken in array",
        vec![s(33)],
        Json(json!([{ "auth": { "accessToken": s(33) } }])),
    );
    add(
        "JSON Bearer in a value",
        vec![s(34)],
        Json(json!({ "note": format!("Bearer {}", s(34)) })),
    );
    add(
        "JSON numeric pin",
        vec!["98765432101".into()],
        Json(json!({ "pin": 98_765_432_101u64 })),
    );
    add(
        "JSON private_key",
        vec![s(35)],
        Json(json!({ "private_key": format!("-----BEGIN KEY-----{}", s(35)) })),
    );
    // Free text (error messages).
    add(
        "text Authorization: bearer",
        vec![s(36)],
        Text(format!(
            "401 from upstream, sent Authorization: bearer {}",
            s(36)
        )),
    );
    add(
        "text x-api-key:",
        vec![s(37)],
        Text(format!("rejected x-api-key: {}", s(37))),
    );
    add(
        "text X-Goog-Api-Key:",
        vec![s(38)],
        Text(format!("X-Goog-Api-Key: {} is invalid", s(38))),
    );
    add(
        "text Cookie:",
        vec![s(39)],
        Text(format!("Cookie: a=1; session={}", s(39))),
    );
    add(
        "text api-key=",
        vec![s(40)],
        Text(format!("GET /x?api-key={} failed", s(40))),
    );
    add(
        "text apikey=",
        vec![s(41)],
        Text(format!("apikey={} expired", s(41))),
    );
    add(
        "text password=",
        vec![s(42)],
        Text(format!("login with password={} denied", s(42))),
    );
    add(
        "text client_secret=",
        vec![s(43)],
        Text(format!("client_secret={}", s(43))),
    );
    add(
        "text access%5Ftoken=",
        vec![s(44)],
        Text(format!("https://h/p?access%5Ftoken={}", s(44))),
    );
    add(
        "text key = v",
        vec![s(45)],
        Text(format!("config key = {} rejected", s(45))),
    );
    add(
        "text token:v",
        vec![s(46)],
        Text(format!("bad token:{}", s(46))),
    );
    add(
        "text JSON \"api_key\": \"…\"",
        vec![s(47)],
        Text(format!("body was {{\"api_key\": \"{}\"}}", s(47))),
    );
    add(
        "text 'api_key': '…'",
        vec![s(48)],
        Text(format!("params {{'api_key': '{}'}}", s(48))),
    );
    add(
        "text sessionId=",
        vec![s(49)],
        Text(format!("sessionId={}", s(49))),
    );
    add(
        "text passwd= / pwd=",
        vec![s(50), s(51)],
        Text(format!("passwd={} pwd={}", s(50), s(51))),
    );
    let google = "AIzaSyB7m2Q9x4kLp0vR8sT3uW6yZ1aC5dE7fGh".to_owned();
    add(
        "text Google key",
        vec![google.clone()],
        Text(format!("quota for {google} exhausted")),
    );
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IiLCJuIjo1Mn0.Qm9iU2lnbmF0dXJlNTI".to_owned();
    add(
        "text JWT",
        vec![jwt.clone()],
        Text(format!("token {jwt} expired")),
    );
    add(
        "text Basic credential",
        vec![s(53)],
        Text(format!("sent Basic {}", b64(&format!("carol:{}", s(53))))),
    );
    add(
        "URL password with / # ?",
        vec!["pa/ss#wo?rd54Zq".into()],
        Text("connect https://bob:pa/ss#wo?rd54Zq@db.example:5432/app failed".into()),
    );
    add(
        "URL password with @",
        vec!["p@ss55Zq".into()],
        Text("postgres://app:p@ss55Zq@db:5432/test refused".into()),
    );
    add(
        "redis URL password",
        vec![s(56)],
        Text(format!("redis://:{}@127.0.0.1:6379/0 is down", s(56))),
    );
    add(
        "high-entropy after =",
        vec!["Zk3mQ9vX2bN7wR4tY8uE1oP5aS6dF0gH".into()],
        Text("ref=Zk3mQ9vX2bN7wR4tY8uE1oP5aS6dF0gH".into()),
    );
    add(
        "high-entropy after :",
        vec!["Hq8Lm2Xz7Wc4Vb9Nr3Ty6Uo1Pa5Sd0Fg".into()],
        Text("handle: Hq8Lm2Xz7Wc4Vb9Nr3Ty6Uo1Pa5Sd0Fg".into()),
    );
    // Bodies that used to be stored as unredacted hex.
    let mut binary = vec![0xff, 0xfe, 0x00, 0x01];
    binary.extend_from_slice(format!("key={}&x=1", s(57)).as_bytes());
    binary.push(0x80);
    add(
        "non-UTF-8 body with key=",
        vec![s(57)],
        Body("application/octet-stream", binary),
    );
    let mut binary = vec![0xc3, 0x28];
    binary.extend_from_slice(format!("\r\nAuthorization: Bearer {}\r\n", s(58)).as_bytes());
    add(
        "non-UTF-8 body with Authorization",
        vec![s(58)],
        Body("application/octet-stream", binary),
    );
    // A text body cut (64 KiB) inside a two-byte character.
    let head = format!("password={}&note=", s(59));
    let mut cut = head.clone();
    if (64 * 1024 - head.len()) % 2 == 0 {
        cut.push('x');
    }
    while cut.len() < 80 * 1024 {
        cut.push('é');
    }
    add(
        "body cut inside a UTF-8 char",
        vec![s(59)],
        Body("application/x-www-form-urlencoded", cut.into_bytes()),
    );
    v
}

fn text_of(c: &Carrier) -> String {
    match c {
        Carrier::Header(n, v) => format!("{n}: {v}"),
        Carrier::Query(q) => format!("https://api.example/v1/items?{q}"),
        Carrier::Body(_, b) => String::from_utf8_lossy(b).into_owned(),
        Carrier::Json(v) => v.to_string(),
        Carrier::Text(t) => t.clone(),
    }
}

fn http_request(c: &Carrier) -> http::Request<Bytes> {
    let base = "https://api.example/v1/items";
    match c {
        Carrier::Header(n, v) => http::Request::get(base)
            .header(*n, v.as_str())
            .body(Bytes::new())
            .unwrap(),
        Carrier::Query(q) => http::Request::get(format!("{base}?{q}"))
            .body(Bytes::new())
            .unwrap(),
        Carrier::Body(ct, b) => http::Request::post(base)
            .header("content-type", *ct)
            .body(Bytes::from(b.clone()))
            .unwrap(),
        Carrier::Json(v) => http::Request::post(base)
            .header("content-type", "application/json")
            .body(Bytes::from(v.to_string()))
            .unwrap(),
        Carrier::Text(t) => http::Request::post(base)
            .header("content-type", "text/plain")
            .body(Bytes::from(t.clone()))
            .unwrap(),
    }
}

fn json_input(c: &Carrier) -> Value {
    match c {
        Carrier::Header(n, v) => json!({ "headers": { *n: v } }),
        Carrier::Query(_) => json!({ "url": text_of(c) }),
        Carrier::Body(_, _) => json!({ "body": text_of(c) }),
        Carrier::Json(v) => json!({ "outer": [{ "inner": v }] }),
        Carrier::Text(t) => json!({ "message": { "detail": [t] } }),
    }
}

/// Every extractor whose headers include every header of the table.
fn http_extractor() -> HttpExtractor {
    let mut x = HttpExtractor::default().keep_header("content-type");
    for c in cases() {
        if let Carrier::Header(n, _) = c.carrier {
            x = x.keep_header(n);
        }
    }
    x
}

/// Sends every case through every extractor and, as the failing call's error text, through
/// the layer's redactor, into `store`. Returns how many records were written.
async fn record_all<St: DeadLetterStore + Clone>(store: &St) -> usize {
    // Built once: compiling the redaction patterns is the slow part in debug builds.
    let redactor = rampart_dlq::Redactor::default();
    let http = http_extractor().redactor(redactor.clone());
    let json_x = JsonExtractor::new(redactor.clone());
    let tts_x = TtsExtractor::default()
        .keep_client_info(true)
        .redactor(redactor.clone());
    let mut n = 0;
    for (i, case) in cases().into_iter().enumerate() {
        let msg = text_of(&case.carrier);
        let fail = |msg: String| move || io::Error::other(msg.clone());

        let e = fail(msg.clone());
        let layer = DeadLetterLayer::new(
            rampart_dlq::DeadLetterConfig::builder()
                .extractor(http.clone())
                .classifier(IoErrors)
                .name("http")
                .redactor(redactor.clone())
                .build()
                .unwrap(),
            store.clone(),
        );
        let svc = layer.layer(service_fn(move |_: http::Request<Bytes>| {
            let e = e();
            async move { Err::<(), _>(e) }
        }));
        assert!(svc.oneshot(http_request(&case.carrier)).await.is_err());

        let e = fail(msg.clone());
        let layer = DeadLetterLayer::new(
            rampart_dlq::DeadLetterConfig::builder()
                .extractor(json_x.clone())
                .classifier(IoErrors)
                .name("json")
                .redactor(redactor.clone())
                .build()
                .unwrap(),
            store.clone(),
        );
        let svc = layer.layer(service_fn(move |_: Value| {
            let e = e();
            async move { Err::<(), _>(e) }
        }));
        assert!(svc.oneshot(json_input(&case.carrier)).await.is_err());

        let e = fail(msg.clone());
        let layer = DeadLetterLayer::new(
            rampart_dlq::DeadLetterConfig::builder()
                .extractor(tts_x.clone())
                .classifier(IoErrors)
                .name("tts")
                .redactor(redactor.clone())
                .build()
                .unwrap(),
            store.clone(),
        );
        let svc = layer.layer(service_fn(move |_: TtsRequest| {
            let e = e();
            async move { Err::<(), _>(e) }
        }));
        let tts = TtsRequest {
            request_id: format!("req-{i}"),
            user_id: "u-1".into(),
            text: msg.clone(),
            voice_name: "Kore".into(),
            user_agent: Some(msg.clone()),
            ip: None,
        };
        assert!(svc.oneshot(tts).await.is_err());
        n += 3;
    }
    n
}

/// `needle` in `hay`, plainly, as hex (either case), or as base64 (standard or URL-safe) at
/// any of the three alignments it can have inside a longer encoded text.
fn leaked(hay: &[u8], needle: &[u8]) -> Option<&'static str> {
    let has = |n: &[u8]| !n.is_empty() && memchr::memmem::find(hay, n).is_some();
    if has(needle) {
        return Some("plain");
    }
    let hex: String = needle.iter().map(|b| format!("{b:02x}")).collect();
    if has(hex.as_bytes()) || has(hex.to_uppercase().as_bytes()) {
        return Some("hex");
    }
    for engine in [
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for shift in 0..3usize {
            let mut padded = vec![0u8; shift];
            padded.extend_from_slice(needle);
            let enc = engine.encode(&padded);
            // Skip the characters that depend on the padding bytes, and the last one,
            // which depends on what follows.
            let skip = (shift * 8).div_ceil(6);
            let end = enc.len().saturating_sub(1);
            if let Some(core) = enc.get(skip..end) {
                if core.len() >= 8 && has(core.as_bytes()) {
                    return Some("base64");
                }
            }
        }
    }
    None
}

/// Fails naming every case whose secret is in `raw`, the stored bytes of store `store`.
fn assert_no_secret(store: &str, raw: &[u8]) {
    assert!(raw.len() > 1000, "{store}: nothing stored?");
    let mut leaks = Vec::new();
    for case in cases() {
        for s in &case.secrets {
            if let Some(how) = leaked(raw, s.as_bytes()) {
                leaks.push(format!("{} ({how})", case.label));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "{store} leaks {} form(s): {leaks:#?}",
        leaks.len()
    );
}

#[test]
fn the_table_has_at_least_40_forms_with_distinct_secrets() {
    let cases = cases();
    assert!(cases.len() >= 40, "{}", cases.len());
    let mut all: Vec<&String> = cases.iter().flat_map(|c| &c.secrets).collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "secrets must be distinct");
    // The leak check itself finds every encoding.
    let s = b"Sx99q7Zp4Lw";
    for shift in 0..3 {
        let mut hay = b"xx".repeat(shift);
        hay.extend_from_slice(s);
        hay.extend_from_slice(b"tail");
        let enc = base64::engine::general_purpose::STANDARD.encode(&hay);
        assert_eq!(leaked(enc.as_bytes(), s), Some("base64"));
    }
    let hex: String = s.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(leaked(hex.as_bytes(), s), Some("hex"));
    assert_eq!(leaked(b"[redacted]", s), None);
}

#[test]
fn each_extractor_alone_keeps_no_secret() {
    // Without a store in between: the request parts themselves.
    let http = http_extractor();
    let json_x = JsonExtractor::default();
    let tts_x = TtsExtractor::default().keep_client_info(true);
    for case in cases() {
        let parts = [
            http.extract(&http_request(&case.carrier)),
            json_x.extract(&json_input(&case.carrier)),
            tts_x.extract(&TtsRequest {
                request_id: "r".into(),
                user_id: "u".into(),
                text: text_of(&case.carrier),
                voice_name: "Kore".into(),
                user_agent: Some(text_of(&case.carrier)),
                ip: None,
            }),
        ];
        for (part, which) in parts.iter().zip(["http", "json", "tts"]) {
            let raw = format!("{} {} {:?}", part.summary, part.payload, part);
            for s in &case.secrets {
                assert_eq!(
                    leaked(raw.as_bytes(), s.as_bytes()),
                    None,
                    "{which} extractor leaks {}: {raw:.400}",
                    case.label
                );
            }
        }
    }
}

#[test]
fn binary_bodies_are_base64_of_the_redacted_bytes_and_cuts_stay_utf8() {
    let cases = cases();
    let http = http_extractor();
    let binary = cases
        .iter()
        .find(|c| c.label == "non-UTF-8 body with key=")
        .unwrap();
    let part = http.extract(&http_request(&binary.carrier));
    assert_eq!(part.payload["body_encoding"], "base64");
    let body = base64::engine::general_purpose::STANDARD
        .decode(part.payload["body"].as_str().unwrap())
        .unwrap();
    assert_eq!(body, b"\xff\xfe\x00\x01key=[redacted]&x=1\x80");
    assert_eq!(part.payload["body_redacted"], true);

    let cut = cases
        .iter()
        .find(|c| c.label == "body cut inside a UTF-8 char")
        .unwrap();
    let whole = http.extract_whole(&http_request(&cut.carrier));
    let p = &whole.part.payload;
    assert_eq!(
        p["body_encoding"], "utf8",
        "a cut inside a character is not binary"
    );
    let text = p["body"].as_str().unwrap();
    assert!(text.starts_with("password=[redacted]&note="), "{text:.60}");
    assert!(text.len() <= 64 * 1024 && text.len() >= 64 * 1024 - 12);
    assert_eq!(p["body_truncated"], true);
    assert!(whole.truncated && whole.redacted);
}

#[tokio::test]
async fn memory_store_keeps_no_secret() {
    let store = MemoryStore::new(100_000);
    let n = record_all(&store).await;
    let records = store
        .list(ListQuery::newest(100_000))
        .await
        .unwrap()
        .records;
    assert_eq!(records.len(), n, "every failure recorded");
    let mut raw = Vec::new();
    for r in &records {
        raw.extend_from_slice(&r.to_json().unwrap());
        raw.extend_from_slice(format!("{r:?}").as_bytes());
    }
    assert_no_secret("memory", &raw);
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_keeps_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.sqlite");
    let store = rampart_dlq::SqliteStore::open(&path, 100_000).unwrap();
    let n = record_all(&store).await;
    assert_eq!(store.stats().await.unwrap().records, n);
    drop(store);
    // Every file the store left in its folder (database, WAL, shared memory), read raw.
    let mut raw = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        raw.extend_from_slice(&std::fs::read(entry.unwrap().path()).unwrap());
    }
    assert_no_secret("sqlite", &raw);
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_keeps_no_secret() {
    let url = "redis://127.0.0.1:6379";
    let prefix = format!("secrets-{}", rampart_dlq::RecordId::new());
    let store = match rampart_dlq::RedisStore::connect(url, &prefix, 100_000).await {
        Ok(s) => s,
        Err(e) => return support::skip(&format!("no redis at {url}: {e}")),
    };
    let client = redis::Client::open(url).unwrap();
    let mut con = match client.get_multiplexed_async_connection().await {
        Ok(c) => c,
        Err(e) => return support::skip(&format!("no redis at {url}: {e}")),
    };
    let n = record_all(&store).await;
    // Requeue one, so that the retry list holds a record too.
    let page = store.list(ListQuery::newest(1)).await.unwrap();
    store.requeue(page.records[0].id).await.unwrap();
    assert_eq!(store.stats().await.unwrap().records + 1, n);

    // Every key under the prefix, read raw, whatever its type.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{prefix}*"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(keys.len() >= 3, "{keys:?}");
    let mut raw = Vec::new();
    for key in &keys {
        let kind: String = redis::cmd("TYPE")
            .arg(key)
            .query_async(&mut con)
            .await
            .unwrap();
        let values: Vec<Vec<u8>> = match kind.as_str() {
            "hash" => redis::cmd("HGETALL")
                .arg(key)
                .query_async(&mut con)
                .await
                .unwrap(),
            "list" => redis::cmd("LRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .query_async(&mut con)
                .await
                .unwrap(),
            "zset" => redis::cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .query_async(&mut con)
                .await
                .unwrap(),
            "set" => redis::cmd("SMEMBERS")
                .arg(key)
                .query_async(&mut con)
                .await
                .unwrap(),
            _ => {
                let v: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut con)
                    .await
                    .unwrap();
                v.into_iter().collect()
            }
        };
        for v in values {
            raw.extend_from_slice(&v);
            raw.push(b'\n');
        }
    }
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_no_secret("redis", &raw);
}

mod properties {
    use proptest::prelude::*;

    const NAMES: &[&str] = &[
        "password",
        "api_key",
        "apiKey",
        "X-Api-Key",
        "access%5Ftoken",
        "client_secret",
        "token_value",
        "Authorization",
        "x-goog-api-key",
        "key",
        "refreshToken",
        "sessionId",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// A secret name's value is redacted whatever surrounds it and however it is
        /// written (`=`, `: `, ` = `, JSON), and the text around it is kept.
        #[test]
        fn a_secret_names_value_never_survives(
            before in "[ -~]{0,40}",
            after in "[ -~&;,]{0,40}",
            name in proptest::sample::select(NAMES),
            sep in proptest::sample::select(&["=", ": ", " = ", ":"][..]),
            value in "[A-Za-z0-9]{10,30}",
            quoted in any::<bool>(),
        ) {
            let r = rampart_dlq::Redactor::default();
            let pair = if quoted {
                format!("\"{name}\"{sep}\"{value}\"")
            } else {
                format!("{name}{sep}{value}")
            };
            let text = format!("{before} {pair} {after}");
            let out = r.url(&text);
            prop_assert!(!out.contains(&value), "{text:?} -> {out:?}");
            prop_assert!(out.ends_with(after.as_str()) || after.is_empty() || out.contains("[redacted]"));
        }

        /// Redacting never panics on arbitrary bytes, keeps UTF-8 text UTF-8, and is
        /// stable: redacting the output again changes nothing.
        #[test]
        fn redaction_is_total_and_stable(bytes in proptest::collection::vec(any::<u8>(), 0..400), text in "\\PC{0,300}") {
            let r = rampart_dlq::Redactor::default();
            let once = r.bytes(&bytes).into_owned();
            prop_assert_eq!(r.bytes(&once).into_owned(), once);
            let t = r.url(&text);
            prop_assert_eq!(r.url(&t), t.clone());
            let _ = r.body(text.as_bytes());
            let _ = rampart_dlq::redact::normalise(&bytes);
        }

        /// Benign names are kept with their values.
        #[test]
        fn benign_pairs_are_kept(
            name in proptest::sample::select(&["voice", "model", "keyboard", "monkey", "max_output_tokens", "sort_key", "lang"][..]),
            value in "[a-z]{1,20}",
        ) {
            let r = rampart_dlq::Redactor::default();
            let text = format!("{name}={value}&{name}: {value}");
            prop_assert_eq!(r.url(&text), text);
        }
    }
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_keeps_no_secret() {
    let url = support::postgres_url();
    let prefix = format!("secrets_{}", std::process::id());
    let store = match rampart_dlq::PostgresStore::connect(&url, &prefix, 100_000).await {
        Ok(s) => s,
        Err(e) => return support::skip(&format!("PostgreSQL is not reachable at {url}: {e}")),
    };
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let n = record_all(&store).await;
    let page = store.list(ListQuery::newest(1)).await.unwrap();
    store.requeue(page.records[0].id).await.unwrap();
    assert_eq!(store.stats().await.unwrap().records + 1, n);

    // Every row of every table the store made, every column as the server's text.
    let tables: Vec<String> = client
        .query(
            "select table_name from information_schema.tables where table_name like $1",
            &[&format!("{prefix}\\_%")],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.len() >= 2, "the store's tables: {tables:?}");
    let mut raw = Vec::new();
    for t in &tables {
        for row in client
            .query(&format!("select t::text from \"{t}\" t"), &[])
            .await
            .unwrap()
        {
            let text: String = row.get(0);
            raw.extend_from_slice(text.as_bytes());
        }
    }
    assert!(
        raw.len() > 10_000,
        "read the stored rows ({} bytes)",
        raw.len()
    );
    assert_no_secret("postgres", &raw);
    for t in &tables {
        client
            .execute(&format!("drop table if exists \"{t}\""), &[])
            .await
            .unwrap();
    }
}
