//! `identity::cgroup::parse_cgroup_path` on arbitrary strings: it names the workload of every
//! process the collector sees, from paths a tenant can choose (cgroup names are theirs to pick
//! inside a delegation). Must never panic; the result must be stable under re-parsing of the
//! same input.

#![no_main]

use collector::identity::cgroup::parse_cgroup_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(path) = std::str::from_utf8(bytes) else {
        return;
    };
    let first = parse_cgroup_path(path);
    // Pure function of its input.
    assert_eq!(first, parse_cgroup_path(path));
});
