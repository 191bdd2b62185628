//! Go binary analysis on arbitrary bytes, through the entry the daemon uses: the bytes become a
//! file (an anonymous memfd, so the analysis reads a real descriptor with `pread` as it does for
//! `/proc/<pid>/exe`), `analyze_file` parses ELF, build info, `.symtab` and `.gopclntab`, then
//! every probe point the collector asks for is resolved and decoded, and the DWARF struct
//! offsets are read (through `/proc/self/fd/<n>`, the same file). Errors are the expected
//! outcome; a panic, an abort, a leak or a timeout is a bug.

#![no_main]

use std::{
    fs::File,
    os::{
        fd::{AsRawFd as _, FromRawFd as _},
        unix::fs::FileExt as _,
    },
    path::PathBuf,
};

use collector::probes::go_http::{analyze_file, attach, offsets};
use libfuzzer_sys::fuzz_target;

thread_local! {
    /// One memfd for every input, rewritten each time: creating and closing one per input
    /// cost a third of the executions (shmem inode set-up and eviction).
    static MEMFD: File = {
        // SAFETY: a valid NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"fuzz-input".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: a new descriptor we own.
        unsafe { File::from_raw_fd(fd) }
    };
}

/// The input as a file: the shared memfd holding exactly `bytes`, through a descriptor of
/// its own (the analysis takes and closes it).
fn memfd(bytes: &[u8]) -> File {
    MEMFD.with(|f| {
        f.set_len(0).expect("truncate memfd");
        f.write_all_at(bytes, 0).expect("write memfd");
        f.try_clone().expect("dup memfd")
    })
}

fuzz_target!(|bytes: &[u8]| {
    let file = memfd(bytes);
    let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    // DWARF alone, whether or not the file is a Go binary the analysis accepts.
    let _ = offsets::from_dwarf(&path);
    let Ok(bin) = analyze_file(&path, file) else {
        return;
    };
    for function in [
        attach::SERVE_HTTP,
        attach::WRITE_HEADER,
        attach::CONN_SERVE,
        attach::GO_PANIC,
    ] {
        let _ = bin.probe_points(function);
    }
    let _ = offsets::offsets_for(&bin);
    let _ = bin.uprobe_target();
});
