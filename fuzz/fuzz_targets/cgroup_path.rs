//! `identity::cgroup` path classification on arbitrary strings: it names the workload of every
//! process the collector sees, from paths a tenant can choose (cgroup names are theirs to pick
//! inside a delegation). Must never panic, and is a pure function of its input.
//!
//! The whole input is a path classified under the default kubelet roots; when it has a newline,
//! the part before it is also a `;`-separated list of configured roots and the rest a path
//! classified under them.

#![no_main]

use collector::identity::cgroup::{KubeletRoots, parse_cgroup_path, parse_cgroup_path_with};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let first = parse_cgroup_path(text);
    assert_eq!(first, parse_cgroup_path(text));
    if let Some((roots, path)) = text.split_once('\n') {
        let roots: Vec<&str> = roots.split(';').collect();
        if let Ok(roots) = KubeletRoots::new(&roots) {
            let first = parse_cgroup_path_with(path, &roots);
            assert_eq!(first, parse_cgroup_path_with(path, &roots));
        }
    }
});
