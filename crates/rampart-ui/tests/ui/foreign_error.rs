// A service whose error type is foreign to rampart (`ParseIntError`): the message names
// `LeafLayer`.
use rampart::dlq::{JsonExtractor, MemoryStore};
use rampart::{Outcome, Policy};
use std::num::ParseIntError;
use tower::{service_fn, Service, ServiceBuilder};

fn serve<S: Service<String>>(_: S) {}

fn main() {
    let policy = Policy::builder("parser").build().unwrap();
    let classify = |r: Result<&u32, &ParseIntError>| match r {
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Permanent,
    };
    let svc = ServiceBuilder::new()
        .layer(policy.layer(classify, MemoryStore::default(), JsonExtractor::default()))
        .service(service_fn(|s: String| async move { s.parse::<u32>() }));
    serve(svc);
}
