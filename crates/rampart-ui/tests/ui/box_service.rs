// A `BoxService` directly under a policy: it is not `Clone`, and each retry calls the
// service again through its own handle. The message names `Buffer` and `BoxCloneService`.
use rampart::classify::IoErrors;
use rampart::dlq::{JsonExtractor, MemoryStore};
use rampart::Policy;
use tower::util::BoxService;
use tower::{service_fn, ServiceBuilder};

fn main() {
    let policy = Policy::builder("orders").build().unwrap();
    let unique: BoxService<u32, u32, std::io::Error> =
        BoxService::new(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    let _svc = ServiceBuilder::new()
        .layer(policy.layer(IoErrors, MemoryStore::default(), JsonExtractor::default()))
        .service(unique);
}
