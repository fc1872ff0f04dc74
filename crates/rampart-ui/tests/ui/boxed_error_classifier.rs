// A typed classifier over a service whose error is a `BoxError` (a `Buffer`, tower's
// `Timeout`, an erased stack): the message names `Downcast` and `TowerErrors`.
use rampart::classify::IoErrors;
use rampart::dlq::{JsonExtractor, MemoryStore};
use rampart::{BoxError, Policy};
use tower::{service_fn, Service, ServiceBuilder};

fn serve<S: Service<u32>>(_: S) {}

fn main() {
    let policy = Policy::builder("inventory").build().unwrap();
    let svc = ServiceBuilder::new()
        .layer(policy.layer(IoErrors, MemoryStore::default(), JsonExtractor::default()))
        .service(service_fn(|n: u32| async move { Ok::<u32, BoxError>(n) }));
    serve(svc);
}
