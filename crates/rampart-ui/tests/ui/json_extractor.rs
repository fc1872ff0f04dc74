// `JsonExtractor` for an `http::Request` (not `Serialize`): the message names
// `HttpExtractor`.
use bytes::Bytes;
use rampart::dlq::{JsonExtractor, MemoryStore};
use rampart::{Outcome, Policy};
use tower::{service_fn, Service, ServiceBuilder};

fn serve<S: Service<http::Request<Bytes>>>(_: S) {}

fn main() {
    let policy = Policy::builder("orders").build().unwrap();
    let classify = |r: Result<&u16, &std::io::Error>| match r {
        Ok(200) => Outcome::Success,
        _ => Outcome::TRANSIENT,
    };
    let svc = ServiceBuilder::new()
        .layer(policy.layer(classify, MemoryStore::default(), JsonExtractor::default()))
        .service(service_fn(|_: http::Request<Bytes>| async { Ok::<u16, std::io::Error>(200) }));
    serve(svc);
}
