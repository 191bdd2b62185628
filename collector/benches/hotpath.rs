//! Deterministic driver for `cargo xtask callgrind`: runs one fixed scenario of the userspace
//! hot path per process, with only the measured step inside `hotpath_measured`, which
//! callgrind is told to count (`--toggle-collect=hotpath_measured`). Building fixtures,
//! process start-up and tear-down are therefore not in the instruction counts.
//!
//!   hotpath --list        scenario names, one a line
//!   hotpath <scenario>    run one scenario
//!   hotpath [--bench]     run every scenario once, natively, with wall times (smoke check)

mod scenarios;

use std::{process::ExitCode, time::Instant};

use scenarios::{Aggregation, Exposition, Records, Verdicts};

/// Seed of every fixture: same records, workloads and counters on every run.
const SEED: u64 = 0x5eed_0001;

/// The one function callgrind counts. Not inlined and not mangled so the toggle finds it by
/// name whatever the compiler does around it.
#[inline(never)]
#[unsafe(no_mangle)]
pub fn hotpath_measured(step: &mut dyn FnMut()) {
    step();
}

/// A scenario: builds its fixture (not counted), runs the measured step once and describes
/// what it did (printed by the smoke run).
type Scenario = fn() -> String;

const SCENARIOS: &[(&str, &str, Scenario)] = &[
    (
        "decode_10k",
        "decode 10,000 ring-buffer records (97 % HTTP)",
        || {
            let records = Records::new(10_000, SEED);
            let mut decoded = 0;
            hotpath_measured(&mut || decoded = records.decode_all());
            assert_eq!(decoded, records.len(), "every benchmark record is valid");
            format!("{decoded} records")
        },
    ),
    (
        "aggregate_records_10k",
        "10,000 HTTP records through the aggregator, 100 pods",
        || {
            let mut agg = Aggregation::new(100, SEED);
            let mut events = Some(agg.requests(10_000));
            hotpath_measured(&mut || {
                if let Some(ev) = events.take() {
                    agg.feed(ev);
                }
            });
            String::new()
        },
    ),
    (
        "aggregate_harvest_1k",
        "one harvest of 1,000 owner keys (TCP + HTTP counters), 1,000 pods",
        || {
            let mut agg = Aggregation::new(1_000, SEED);
            agg.prepare_harvest();
            hotpath_measured(&mut || agg.harvest());
            String::new()
        },
    ),
    (
        "verdict_evaluate_1k",
        "one verdict evaluation of 1,000 workloads (default windows: 1 s x 30)",
        || {
            let mut v = Verdicts::new(1_000, SEED);
            v.fill_bucket();
            hotpath_measured(&mut || v.evaluate());
            String::new()
        },
    ),
    (
        "metrics_text_1k",
        "/metrics, Prometheus text 0.0.4, 1,000 pods",
        || {
            let e = Exposition::new(1_000, SEED);
            let mut bytes = 0;
            hotpath_measured(&mut || bytes = e.render_text());
            format!("{bytes} bytes")
        },
    ),
    (
        "metrics_openmetrics_1k",
        "/metrics, OpenMetrics text, 1,000 pods",
        || {
            let e = Exposition::new(1_000, SEED);
            let mut bytes = 0;
            hotpath_measured(&mut || bytes = e.render_openmetrics());
            format!("{bytes} bytes")
        },
    ),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--list") => {
            for (name, _, _) in SCENARIOS {
                println!("{name}");
            }
            ExitCode::SUCCESS
        }
        // `cargo bench --bench hotpath` passes --bench: a native smoke run of everything.
        None | Some("--bench") => {
            for (name, what, run) in SCENARIOS {
                let t = Instant::now();
                let detail = run();
                println!(
                    "{name:<24} {:>8.1} ms (fixture included)  {what}  {detail}",
                    t.elapsed().as_secs_f64() * 1e3
                );
            }
            ExitCode::SUCCESS
        }
        Some(name) => match SCENARIOS.iter().find(|(n, _, _)| *n == name) {
            Some((_, _, run)) => {
                run();
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("unknown scenario {name}; --list shows them");
                ExitCode::from(2)
            }
        },
    }
}
