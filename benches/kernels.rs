//! Criterion benches of every JVP kernel at MiniLM sizes: the plain forward and the JVP with
//! K = 1, 4 and 16 directions. `cargo bench --bench kernels`; `cargo test --benches` runs each
//! once as a smoke test.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

#[path = "cases/mod.rs"]
mod cases;

fn kernels(c: &mut Criterion) {
    for case in cases::all() {
        let mut group = c.benchmark_group(case.name);
        group.sample_size(10);
        for k in [None, Some(1), Some(4), Some(16)] {
            let label = k.map_or("forward".to_string(), |k| format!("jvp K={k}"));
            let mut run = (case.prepare)(k);
            group.bench_function(BenchmarkId::from_parameter(label), |b| b.iter(&mut run));
        }
        group.finish();
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
