// A request whose body streams, under `Policy::layer` (which clones requests): the
// messages name `Policy::layer_streaming`.
use rampart::dlq::{HttpExtractor, MemoryStore};
use rampart::{Outcome, Policy};
use tower::{service_fn, Service, ServiceBuilder};

/// A body that can be read only once (like hyper's `Incoming`).
struct Upload;

fn serve<S: Service<http::Request<Upload>>>(_: S) {}

fn main() {
    let policy = Policy::builder("blobs").build().unwrap();
    let classify = |r: Result<&u16, &std::io::Error>| match r {
        Ok(200) => Outcome::Success,
        _ => Outcome::TRANSIENT,
    };
    let svc = ServiceBuilder::new()
        .layer(policy.layer(classify, MemoryStore::default(), HttpExtractor::default()))
        .service(service_fn(|_: http::Request<Upload>| async { Ok::<u16, std::io::Error>(200) }));
    serve(svc);
}
