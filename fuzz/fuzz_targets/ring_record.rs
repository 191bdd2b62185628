//! Ring-buffer records as the kernel hands them over: a sequence of records (each a `u16`
//! length and that many bytes) decoded at the daemon's one checked boundary
//! (`events::decode`), then consumed as the daemon consumes them (identity, route table,
//! verdict engine, HTTP metrics, both exposition formats). The kernel side is trusted code,
//! but a newer or older kernel object, or a bug in it, must cost a counted rejection, never
//! the collector.

#![no_main]

use collector::fuzzing::{ring_records, split_records};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let out = ring_records(bytes);
    // Every record is either decoded or rejected (counted), none vanishes.
    assert_eq!(out.decoded + out.rejected, split_records(bytes).len());
});
