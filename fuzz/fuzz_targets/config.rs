//! The configuration as `main` builds it: command-line arguments (clap), the TOML file
//! (serde/toml) and the environment, merged and validated. An operator's typo must be a clear
//! error naming the option, never a panic. The input is the arguments (one per line), a NUL,
//! the file, a NUL, then `NAME=value` lines.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Err(e) = collector::fuzzing::config(bytes) {
        // A clear error says something.
        assert!(!e.trim().is_empty(), "an empty error message");
    }
});
