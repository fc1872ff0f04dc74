//! rampart's benchmarks live in `benches/` of this crate (`cargo bench -p rampart-bench --bench
//! NAME`); this library is empty. See BENCHMARKS.md at the root of the repository.
