//! Criterion microbenchmarks of the userspace hot path: record decoding, aggregation (per
//! record and per harvest), verdict evaluation and `/metrics` rendering.
//! `cargo bench -p collector --bench micro [-- <filter>]`; figures in benches/README.md.
//!
//! Wall-clock figures are for people; the CI gate is instruction counts (`cargo xtask
//! callgrind`, same fixtures through `hotpath.rs`), which do not depend on machine load.

mod scenarios;

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use scenarios::{Aggregation, Exposition, Records, Verdicts};

const SEED: u64 = 0x5eed_0002;

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    let records = Records::new(1_000, SEED);
    g.throughput(Throughput::Elements(records.len() as u64));
    g.bench_function("mixed_1k_records", |b| {
        b.iter(|| black_box(records.decode_all()));
    });
    g.finish();
}

fn aggregate(c: &mut Criterion) {
    let mut g = c.benchmark_group("aggregate");
    // Per record: 1,000 decoded HTTP records from 100 pods, in steady state (series exist).
    let mut agg = Aggregation::new(100, SEED);
    let template = agg.requests(1_000);
    g.throughput(Throughput::Elements(template.len() as u64));
    g.bench_function("records_1k_100_pods", |b| {
        // Cloning the records is set-up: the aggregator consumes them.
        b.iter_batched(
            || template.clone(),
            |ev| agg.feed(ev),
            BatchSize::LargeInput,
        );
    });
    drop(agg);
    // Per harvest: every owner key moved since the last harvest.
    g.throughput(Throughput::Elements(1));
    for keys in [100, 1_000] {
        let mut agg = Aggregation::new(keys, SEED);
        g.bench_with_input(BenchmarkId::new("harvest", keys), &keys, |b, _| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    agg.prepare_harvest();
                    let t = Instant::now();
                    agg.harvest();
                    spent += t.elapsed();
                }
                spent
            });
        });
    }
    g.finish();
}

fn verdict(c: &mut Criterion) {
    let mut g = c.benchmark_group("verdict");
    for workloads in [100, 1_000] {
        let mut v = Verdicts::new(workloads, SEED);
        g.bench_with_input(
            BenchmarkId::new("evaluate", workloads),
            &workloads,
            |b, _| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        v.fill_bucket();
                        let t = Instant::now();
                        v.evaluate();
                        spent += t.elapsed();
                    }
                    spent
                });
            },
        );
    }
    g.finish();
}

fn metrics(c: &mut Criterion) {
    let mut g = c.benchmark_group("metrics");
    for workloads in [100, 1_000] {
        let e = Exposition::new(workloads, SEED);
        g.bench_with_input(BenchmarkId::new("text", workloads), &workloads, |b, _| {
            b.iter(|| e.render_text());
        });
        g.bench_with_input(
            BenchmarkId::new("openmetrics", workloads),
            &workloads,
            |b, _| b.iter(|| e.render_openmetrics()),
        );
    }
    g.finish();
}

fn config() -> Criterion {
    // Short runs: the machine is shared, and the statistics settle well within these.
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
}

criterion_group! {
    name = benches;
    config = config();
    targets = decode, aggregate, verdict, metrics
}
criterion_main!(benches);
